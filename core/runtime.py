"""onnxruntime: which providers work here, and the one session factory.

`resolve_providers` checks that CUDA really initialises before any model is loaded
(`get_available_providers()` lists CUDA whenever the GPU build is installed). It first asks
the NVIDIA driver itself (`nvidia_gpu`: libcuda.so.1, cuInit, cuDeviceGetCount) and touches
onnxruntime's CUDA side (`preload_dlls`, a probe session) only where a GPU is there, so a
CPU-only machine logs one info line instead of onnxruntime's red CUDA library errors.
Every onnxruntime session of the project (the service's, and the offline checks of training/
and bench/) comes from `make_session`, so what is measured and checked is configured as
what is served; OpenVINO's come from `backends.make_openvino_session`.
"""

from __future__ import annotations

import base64
import ctypes
import logging
from pathlib import Path

import onnxruntime as ort

from .settings import RuntimeConfig

logger = logging.getLogger("bentoml.ganforge")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

# A 65-byte ONNX model (one Identity node, opset 18) used only to ask
# onnxruntime whether the CUDA provider really initialises on this machine:
# `get_available_providers()` lists CUDA whenever the GPU build is installed.
_PROBE_MODEL = base64.b64decode(
    "CAk6NwoQCgF4EgF5IghJZGVudGl0eRIBcFoPCgF4EgoKCAgBEgQKAggBYg8KAXkSCgoICAESBAoCCAFCBAoAEBI="
)


def cuda_options(settings: RuntimeConfig) -> dict[str, str]:
    # HEURISTIC: the graphs take dynamic H, W, and EXHAUSTIVE would re-benchmark
    # every new input shape. kSameAsRequested: the arena does not double past need.
    return {
        "device_id": str(settings.cuda_device_id),
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
    }


def preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the nvidia-* pip wheels when they are installed.

    The GPU Bento installs `onnxruntime-gpu[cuda,cudnn]`, whose CUDA 13 runtime
    lives in site-packages, not on the loader path; `preload_dlls` finds it.
    Harmless where the libraries are on the system path or absent.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception:  # noqa: BLE001 - a failed preload only means the probe decides
        logger.info("onnxruntime.preload_dlls() could not load the CUDA libraries", exc_info=True)


def nvidia_gpu(library: str = "libcuda.so.1") -> tuple[bool, str]:
    """(a usable NVIDIA GPU is here?, why), asked of the driver's own library, without onnxruntime.

    No driver library (every CPU-only machine and container), a driver that fails to initialise, or
    zero devices (CUDA_VISIBLE_DEVICES="", say) all mean no.
    """
    try:
        driver = ctypes.CDLL(library)
    except OSError:
        return False, f"no NVIDIA driver ({library} is not loadable)"
    try:
        status = driver.cuInit(0)
        if status != 0:
            return False, f"the NVIDIA driver does not initialise (cuInit error {status})"
        count = ctypes.c_int(0)
        status = driver.cuDeviceGetCount(ctypes.byref(count))
    except AttributeError:
        return False, f"{library} is not the CUDA driver library"
    if status != 0 or count.value < 1:
        return False, "the NVIDIA driver sees no GPU"
    return True, f"{count.value} NVIDIA GPU(s)"


def cpu_only(settings: RuntimeConfig, why: str) -> list:
    """[CPU] with one info line saying why; RuntimeError for GANFORGE_DEVICE=cuda."""
    if settings.device == "cuda":
        raise RuntimeError(f"GANFORGE_DEVICE=cuda but onnxruntime cannot use the CUDA provider here ({why}); "
                           "use GANFORGE_DEVICE=auto or cpu")
    logger.info("onnxruntime: CUDA not tried (%s); running on the CPU", why)
    return [CPU]


def resolve_providers(settings: RuntimeConfig) -> list:
    """The provider list every session gets, after checking CUDA really works here.

    Raises RuntimeError for GANFORGE_DEVICE=cuda when CUDA cannot be used.
    """
    if settings.device == "cpu":
        return [CPU]
    if settings.backend == "openvino":
        return cpu_only(settings, "GANFORGE_BACKEND=openvino runs on the CPU")
    if CUDA not in ort.get_available_providers():
        return cpu_only(settings, f"this onnxruntime {ort.__version__} build has no CUDA provider")
    present, why = nvidia_gpu()
    if not present:
        return cpu_only(settings, why)
    # the GPU is there: now onnxruntime's CUDA provider must really initialise on it
    cuda_entry = (CUDA, cuda_options(settings))
    preload_cuda_libraries()
    try:
        probe = ort.InferenceSession(_PROBE_MODEL, providers=[cuda_entry, CPU])
        works = CUDA in probe.get_providers()
    except Exception:  # noqa: BLE001 - any failure means: no CUDA
        logger.exception("onnxruntime CUDA probe failed")
        works = False
    if works:
        logger.info("onnxruntime: CUDA provider works (device %d; %s)", settings.cuda_device_id, why)
        return [cuda_entry, CPU]
    if settings.device == "cuda":
        raise RuntimeError(
            "GANFORGE_DEVICE=cuda but onnxruntime cannot use the CUDA provider here "
            "(CUDA/cuDNN libraries missing or not matching the driver); use GANFORGE_DEVICE=auto or cpu"
        )
    logger.warning("onnxruntime: %s, but its CUDA provider does not work; running on the CPU", why)
    return [CPU]


def session_options(threads: int = 0) -> ort.SessionOptions:
    """The options of every onnxruntime session: all graph optimisations, `threads` intra-op threads
    (GANFORGE_ORT_THREADS; 0 = one per physical core), one inter-op thread."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def make_session(model: bytes | str | Path, options: ort.SessionOptions | None = None,
                 providers: list | tuple = (CPU,)) -> ort.InferenceSession:
    """An onnxruntime session on `model` (the ONNX bytes, or a path); CPU unless `providers` says otherwise."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=list(providers))
