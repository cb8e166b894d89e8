"""Inference backends: onnxruntime and OpenVINO behind one small interface, and the choice between them.

Every graph the service runs is an object with

    run(output_names, feeds) -> list[np.ndarray]     (output_names None: every output)
    get_inputs(), get_outputs()                        (objects with .name, as onnxruntime's NodeArg)
    get_providers()                                    (where it runs: onnxruntime's provider names,
                                                        or OPENVINO_CPU)
    describe() -> {"backend", "device", "precision", ...}

onnxruntime's InferenceSession fits as it is (`OrtSession` only adds `describe`); `OpenVinoSession`
compiles the same ONNX bytes with OpenVINO (a dynamic-shape model: a new input shape needs no
recompile) and serves concurrent callers from a pool of infer requests (one per OpenVINO stream).

GANFORGE_BACKEND (`choose_backend`): auto is onnxruntime where its CUDA provider works, OpenVINO on
the CPU (onnxruntime when the `openvino` package is missing). The precision of each model
(`choose_float_precision`): bf16 runs only on OpenVINO, only where the CPU has native bf16 (AMX or
AVX512-BF16, and OpenVINO's OPTIMIZATION_CAPABILITIES lists BF16), and only when the card's
`variants.bf16` gate (`python -m training bf16 NAME`) passed at >= BF16_GATE_DB; else fp32, with the
reason. INFERENCE_PRECISION_HINT is always set: OpenVINO's own default is bf16 on AMX CPUs.

That is the static rule. Where both GANFORGE_BACKEND and GANFORGE_PRECISION are auto on the CPU, the service
then measures each model's gated candidates and serves the fastest (core/autotune.py, core/tuned.py).

OpenVINO is imported only when a model is compiled with it, so onnxruntime-only use pays nothing.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .cpu import BF16_FLAGS, cpu_flags

logger = logging.getLogger("bentoml.ganforge")

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
OPENVINO_CPU = "OpenVINO:CPU"  # ServedModel.provider for a graph OpenVINO runs
CUDA_PROVIDER = "CUDAExecutionProvider"
BF16_GATE_DB = 45.0  # PSNR of bf16 against fp32 (worst measured input) a card must show for bf16 to serve
# OpenVINO INFERENCE_PRECISION_HINT per served precision (int8: the QDQ graph's float parts stay f32)
OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
# PERFORMANCE_HINT, measured on the 2-core Xeon (one stream of 2 threads vs THROUGHPUT's 2 streams of 1
# thread; srresnet-x4 128->512 bf16, interleaved): on a quiet machine a lone request took 55 ms with LATENCY
# and 100 ms with THROUGHPUT (a stream has one core), while 4 concurrent callers got 14.2 vs 12.1 req/s;
# with the other core busy THROUGHPUT was 5-10% ahead. Only the 28x28 CycleGAN, too small to split over 2
# threads, gained from 2 streams (1.5x req/s at 4 callers), and its 2 ms are small beside a request's fixed
# cost. So LATENCY: one stream per model, and concurrent requests queue for it (pool of 1 infer request).
OV_HINT = "LATENCY"
# OpenVINO's CPU plugin keeps the "graph tail" in f32 under a bf16 hint: every node reachable backwards
# from an output without passing one of OV_TAIL_ENDS. ConvTranspose is not on its list, so in a decoder made
# of ConvTranspose layers (pix2pix's U-Net, DCGAN) the whole decoder stayed f32 (PERF_COUNT on colorize
# 256x256: ConvolutionBackpropData brgconv_avx512_f32 10 of 14.5 ms, Convolution amx_bf16 1.5 ms; fashion
# ran nothing in bf16). `bf16_tail` ends the tail at ConvTranspose as well: the nodes OpenVINO would keep
# f32 only for that reason get the plugin's own `enforceBF16evenForGraphTail` (float data nodes only, never
# the shape arithmetic), and the elementwise end (Tanh, a residual Add) stays f32, as OpenVINO intends.
OV_TAIL_ENDS = frozenset({"Convolution", "GroupConvolution", "MatMul", "Interpolate"})
TAIL_ENDS = OV_TAIL_ENDS | {"ConvolutionBackpropData", "GroupConvolutionBackpropData"}
ENFORCE_BF16 = "enforceBF16evenForGraphTail"


@dataclass(frozen=True)
class IOName:
    """A graph input or output, as onnxruntime's NodeArg names it."""
    name: str


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


@functools.lru_cache(maxsize=1)
def openvino_core():
    """The process's one OpenVINO Core (its CPU plugin keeps the thread pools)."""
    import openvino

    return openvino.Core()


def openvino_version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


def openvino_capabilities() -> tuple[str, ...]:
    return tuple(openvino_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def bf16_support(flags: Iterable[str], capabilities: Iterable[str] | None) -> tuple[bool, str]:
    """(native bf16 here?, why): a BF16_FLAGS flag and, where OpenVINO was asked, BF16 in its capabilities."""
    native = [f for f in BF16_FLAGS if f in set(flags)]
    if not native:
        return False, "this CPU has no native bf16 (neither AMX nor AVX512-BF16)"
    if capabilities is not None and "BF16" not in set(capabilities):
        return False, f"OpenVINO does not list BF16 for this CPU ({'+'.join(native)})"
    return True, f"native bf16 ({'+'.join(native)})"


@functools.lru_cache(maxsize=1)
def native_bf16() -> tuple[bool, str]:
    """This machine's `bf16_support`, asked once per process."""
    capabilities = None
    if openvino_installed():
        try:
            capabilities = openvino_capabilities()
        except Exception as exc:  # noqa: BLE001 - no usable CPU plugin: the flags alone decide nothing
            return False, f"OpenVINO's CPU plugin is not usable ({type(exc).__name__})"
    return bf16_support(cpu_flags(), capabilities)


# ------------------------------------------------------------------ choices


def choose_backend(requested: str, providers: list, openvino_ok: bool) -> tuple[str, str]:
    """GANFORGE_BACKEND -> (backend, why). `providers`: runtime.resolve_providers' list."""
    first = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if requested == ONNXRUNTIME:
        return ONNXRUNTIME, "GANFORGE_BACKEND=onnxruntime"
    if requested == OPENVINO:
        if not openvino_ok:
            raise RuntimeError("GANFORGE_BACKEND=openvino but the openvino package is not installed")
        return OPENVINO, "GANFORGE_BACKEND=openvino (the CPU)"
    if first == CUDA_PROVIDER:
        return ONNXRUNTIME, "auto: onnxruntime's CUDA provider works here"
    if not openvino_ok:
        return ONNXRUNTIME, "auto: the CPU, but the openvino package is not installed"
    return OPENVINO, "auto: the CPU, so OpenVINO"


def gate_result(variant: Any, version: str | None = None) -> tuple[bool, str]:
    """Did the card's `variants.bf16` measurement pass the gate, on these graphs (`version`: the card's)?"""
    if variant is None:
        return False, "the card has no bf16 measurement (python -m training bf16 NAME makes one)"
    extra = getattr(variant, "extra", None) or {}
    measured = extra.get("of_version")
    if version is not None and measured is not None and measured != version:
        return False, (f"the card's bf16 measurement is of version {measured}, the graphs are {version} "
                       "(python -m training bf16 NAME measures them again)")
    worst = extra.get("psnr_vs_fp32_db_min")
    if not isinstance(worst, (int, float)) or isinstance(worst, bool):
        return False, "the card's bf16 entry has no psnr_vs_fp32_db_min"
    gate = max(float(extra.get("gate_db") or BF16_GATE_DB), BF16_GATE_DB)
    if extra.get("passed") is not True or worst < gate:
        return False, f"bf16 measured {worst:.1f} dB against fp32 (worst input), under the {gate:g} dB gate"
    return True, f"the card's bf16 gate passed ({worst:.1f} dB >= {gate:g} dB)"


def choose_float_precision(wanted: str, backend: str, bf16_here: tuple[bool, str], variant: Any,
                           version: str | None = None) -> tuple[str, str, str | None]:
    """GANFORGE_PRECISION auto | fp32 | bf16 -> (precision, reason, note). `note` is set when an explicit
    `bf16` cannot be honoured (logged as a warning); `auto` falling back to fp32 is no surprise."""
    if wanted == "fp32":
        return "fp32", "GANFORGE_PRECISION=fp32", None
    said = "GANFORGE_PRECISION=bf16" if wanted == "bf16" else "auto"
    if backend != OPENVINO:
        why = f"bf16 runs on OpenVINO only, this model runs on {backend}"
    elif not bf16_here[0]:
        why = bf16_here[1]
    else:
        passed, why = gate_result(variant, version)
        if passed:
            return "bf16", f"{said}: {bf16_here[1]} and {why}", None
    return "fp32", f"{said}: fp32 because {why}", (why if wanted == "bf16" else None)


# ------------------------------------------------------------------ sessions


class OrtSession:
    """An onnxruntime InferenceSession with `describe`; `run` is the session's own."""

    def __init__(self, session: Any, precision: str = "fp32") -> None:
        self.session = session
        self.precision = precision
        self.run = session.run
        self.get_inputs = session.get_inputs
        self.get_outputs = session.get_outputs
        self.get_providers = session.get_providers

    def describe(self) -> dict[str, Any]:
        provider = self.session.get_providers()[0]
        return {"backend": ONNXRUNTIME, "device": "cuda" if provider == CUDA_PROVIDER else "cpu",
                "precision": self.precision, "provider": provider}


class OpenVinoSession:
    """A compiled OpenVINO model with InferenceSession's `run`, safe for concurrent callers.

    Each call takes an idle infer request from a pool (OPTIMAL_NUMBER_OF_INFER_REQUESTS of them: one per
    stream, so one under OV_HINT's LATENCY), runs it synchronously and gives it back; more callers than
    requests wait for one. Outputs are copied out of the request before it is handed to the next caller.
    """

    def __init__(self, compiled: Any, precision: str, graph: Any = None,
                 on_wait: Callable[[float], None] | None = None) -> None:
        """`graph`: the ov.Model as read, whose tensor names are the ONNX file's (compiling can merge an
        output's name with its producer's and report that one). `on_wait(seconds)`: told how long each run
        waited for an idle infer request (the service's per-request metrics)."""
        self.compiled = compiled
        self.on_wait = on_wait
        self.precision = precision
        named = graph if graph is not None else compiled
        self._inputs = [IOName(port.get_any_name()) for port in named.inputs]
        self._outputs = [IOName(port.get_any_name()) for port in named.outputs]
        self._index = {name: i for i, port in enumerate(compiled.outputs) for name in port.get_names()}
        self._index.update((o.name, i) for i, o in enumerate(self._outputs))
        self._input_index = {io.name: i for i, io in enumerate(self._inputs)}
        self.requests = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._idle: queue.LifoQueue = queue.LifoQueue()
        for _ in range(self.requests):
            self._idle.put(compiled.create_infer_request())

    def get_inputs(self) -> list[IOName]:
        return list(self._inputs)

    def get_outputs(self) -> list[IOName]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [OPENVINO_CPU]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        names = output_names or [o.name for o in self._outputs]
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise ValueError(f"no output named {unknown[0]!r}; outputs: {[o.name for o in self._outputs]}")
        try:
            inputs = {self._input_index[name]: value for name, value in feeds.items()}
        except KeyError as exc:
            raise ValueError(f"no input named {exc.args[0]!r}; inputs: {list(self._input_index)}") from None
        waiting = time.perf_counter()
        request = self._idle.get()  # another request of this model may hold the only one (LATENCY hint)
        if self.on_wait is not None:
            self.on_wait(time.perf_counter() - waiting)
        try:
            request.infer(inputs, share_inputs=True)
            return [request.get_output_tensor(self._index[n]).data.copy() for n in names]
        finally:
            self._idle.put(request)

    def describe(self) -> dict[str, Any]:
        get = self.compiled.get_property
        inference = get("INFERENCE_PRECISION_HINT")
        return {"backend": OPENVINO, "device": "cpu", "precision": self.precision,
                "inference_precision": getattr(inference, "get_type_name", lambda: str(inference))(),
                "hint": str(get("PERFORMANCE_HINT")),
                "streams": int(get("NUM_STREAMS")), "threads": int(get("INFERENCE_NUM_THREADS")),
                "infer_requests": self.requests}


def openvino_config(precision: str, threads: int = 0, hint: str = OV_HINT) -> dict[str, str]:
    """The CPU plugin's settings: the inference precision always explicit (OpenVINO defaults to bf16 on AMX)."""
    config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision], "PERFORMANCE_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def graph_tail(model: Any, ends: frozenset[str]) -> set[str]:
    """Names of the ops reachable backwards from `model`'s outputs without passing an op of type `ends`."""
    tail: set[str] = set()
    stack = list(model.get_results())
    while stack:
        node = stack.pop()
        for port in node.inputs():
            parent = port.get_source_output().get_node()
            if parent.get_type_name() in ends or parent.get_name() in tail:
                continue
            tail.add(parent.get_name())
            stack.append(parent)
    return tail


def bf16_tail(model: Any) -> int:
    """Mark for bf16 the float ops OpenVINO keeps f32 only because ConvTranspose does not end its graph tail."""
    extra = graph_tail(model, OV_TAIL_ENDS) - graph_tail(model, TAIL_ENDS)
    marked = 0
    for op in model.get_ordered_ops():
        if op.get_name() in extra and op.get_type_name() not in ("Parameter", "Constant", "ShapeOf") and all(
                op.get_output_element_type(i).get_type_name() == "f32" for i in range(op.get_output_size())):
            op.get_rt_info()[ENFORCE_BF16] = "true"
            marked += 1
    return marked


def make_openvino_session(model: bytes | str | Path, precision: str = "fp32", threads: int = 0,
                          hint: str = OV_HINT, on_wait: Callable[[float], None] | None = None) -> OpenVinoSession:
    """An OpenVINO CPU model compiled from `model` (the ONNX bytes, or a path) at `precision` (fp32, bf16, int8:
    a QDQ graph); `on_wait` as OpenVinoSession's."""
    core = openvino_core()
    graph = core.read_model(model=model if isinstance(model, bytes) else str(model))
    config = openvino_config(precision, threads, hint)
    if precision == "bf16" and bf16_tail(graph):
        # one stream: the plugin reads the marks (strings, as Python sets them) while it builds each stream's
        # graph, and building several at once crashed (OpenVINO's Any caches the string's conversion unlocked)
        config["NUM_STREAMS"] = "1"
    return OpenVinoSession(core.compile_model(graph, "CPU", config), precision, graph, on_wait)
