"""ganforge's own Prometheus metrics and trace spans, beside BentoML's (`/metrics`, README "Metrics").

BentoML's `/metrics` counts requests per HTTP path. These say, per model and version (the labels
Triton's per-model metrics carry), what each request cost and how it ended:

  ganforge_requests_total{model,version,endpoint,outcome,status}      every POST to an image endpoint, once
  ganforge_request_duration_seconds{model,version,endpoint,outcome}   arrival -> last byte of the answer
  ganforge_stage_duration_seconds{model,version,endpoint,stage}       queue, decode, compute, encode, process,
                                                                      respond
  ganforge_requests_in_flight{model,version,endpoint}                 arrived and not yet answered
  ganforge_tiles_per_request / ganforge_input_megapixels / ganforge_output_megapixels   per request
  ganforge_graph_run_rows{model,version}                              rows per graph run (_count: graph runs)
  ganforge_model_info{model,version,backend,device,precision,provider} 1 while served, 0 once replaced
  ganforge_model_unavailable{model}                                   1 while the model cannot serve
  ganforge_model_loads_total{model,result} / ganforge_reloads_total   loads (ready | failed), folder re-scans

`model="-"` (and `version="-"`) is a request that never reached a model: refused by the middleware
(401, 413 body, 415, 400 multipart, 429) or naming no served model (404).

Outcomes: ok (< 400); client_error (4xx, `status` says which; a client that left before its answer is
`status="499"`, nginx's "client closed request"); overload (429, and admission's 503 "waited too
long"); timeout (504: the request's deadline, or BentoML's backstop); server_error (5xx, a model
unavailable included).

Stages of a request that reached its handler, one after another from its arrival to its answer's
last byte (so they sum to its duration):
  queue    arrival -> the handler starts in a worker thread (upload, BentoML's parsing, waiting for a
           thread), plus waiting for a busy session (the batcher's queue, OpenVINO's infer request)
  decode   reading and decoding the upload;  compute  the graph runs;  encode  the answer's image
  process  the rest of the handler: pre/post-processing, tiling blend, resizes, the grid
  respond  the handler returned -> the answer's last byte is sent (BentoML, the middlewares, the socket)

Multiprocess: `bentoml serve` sets PROMETHEUS_MULTIPROC_DIR for its workers before they import
anything, and serves `/metrics` from every worker's files, so counters and histograms sum over the
workers; gauges say how (`livesum` in flight, `livemax` info and unavailable). The metric objects are
made once per process, on first use (never at import: the `bentoml serve` parent imports this module
too). GANFORGE_METRICS=0 records none of this (BentoML's own metrics stay): for measuring its cost.

Spans (BentoML's OpenTelemetry tracing, off unless configured): `ganforge.decode`, `ganforge.compute`
(the pipeline: graph runs, tiling, pre/post-processing) and `ganforge.encode`, children of BentoML's
request span, which gets the attributes `ganforge.model` and `ganforge.version`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
import time
from typing import Any, Iterator

from opentelemetry import trace

from .config import backstop_timeout, settings

NONE = "-"  # the model/version label of a request that never reached a model
STAGES = ("queue", "decode", "compute", "encode", "process", "respond")
OUTCOMES = ("ok", "client_error", "overload", "timeout", "server_error")
CLIENT_CLOSED = 499  # nginx's status for a client that closed the request before its answer
# graph rows per run and tiles per request: powers of two (a 4096x4096 input at tile 128 is ~1300 tiles)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
TILE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
MPX_BUCKETS = (0.001, 0.004, 0.016, 0.0625, 0.25, 1, 4, 16, 64)  # powers of 4 up to GANFORGE_MAX_OUTPUT_PIXELS


def duration_buckets(timeout_s: float) -> tuple[float, ...]:
    """1-2-5 steps from 1 ms up to the limit, then the limit and BentoML's backstop: the longest
    request the service can answer falls in a finite bucket."""
    ladder = [m * 10.0 ** e for e in range(-3, 5) for m in (1, 2, 5)]
    return tuple(round(v, 6) for v in ladder if v < timeout_s) + (timeout_s, backstop_timeout(timeout_s))


def outcome(status: int | None, hint: str | None = None) -> tuple[str, int]:
    """(outcome, status label) of an answered request; `hint` is what the code that refused it knew
    (ApiError.outcome): overload, timeout or cancelled (the client left). No status: BentoML's
    TimeoutMiddleware cancelled the request before it answered (its 504)."""
    if status is None:
        return "timeout", 504
    if hint == "cancelled":
        return "client_error", CLIENT_CLOSED
    if status < 400:
        return "ok", status
    if hint in ("overload", "timeout"):
        return hint, status
    if status == 429:
        return "overload", status
    if status == 504:
        return "timeout", status
    return ("client_error", status) if status < 500 else ("server_error", status)


class Metrics:
    """The metric families, made once per process (prometheus_client registers them globally)."""

    def __init__(self, timeout_s: float) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        per_request = ["model", "version", "endpoint"]
        self.requests = Counter("ganforge_requests", "Requests to /generate, /translate, /upscale by how they "
                                "ended", per_request + ["outcome", "status"])
        self.duration = Histogram("ganforge_request_duration_seconds", "Arrival to the answer's last byte",
                                  per_request + ["outcome"], buckets=duration_buckets(timeout_s))
        self.stage = Histogram("ganforge_stage_duration_seconds", "Time of one request in one stage (queue, "
                               "decode, compute, encode, process, respond)", per_request + ["stage"],
                               buckets=duration_buckets(timeout_s))
        self.in_flight = Gauge("ganforge_requests_in_flight", "Requests arrived and not yet answered",
                               per_request, multiprocess_mode="livesum")
        self.tiles = Histogram("ganforge_tiles_per_request", "Graph runs (tiles) of one /translate or /upscale "
                               "request", per_request, buckets=TILE_BUCKETS)
        self.input_mpx = Histogram("ganforge_input_megapixels", "Decoded input image size", per_request,
                                   buckets=MPX_BUCKETS)
        self.output_mpx = Histogram("ganforge_output_megapixels", "Answered image size", per_request,
                                    buckets=MPX_BUCKETS)
        self.rows = Histogram("ganforge_graph_run_rows", "Rows (batch size) of one graph run; _count is the "
                              "number of graph runs", ["model", "version"], buckets=ROW_BUCKETS)
        self.info = Gauge("ganforge_model_info", "1 while this model version is served (by any worker), with "
                          "what runs it; 0 once replaced or removed",
                          ["model", "version", "backend", "device", "precision", "provider"],
                          multiprocess_mode="livemax")
        self.unavailable = Gauge("ganforge_model_unavailable", "1 while a worker has this model unavailable "
                                 "(bad file, card, runtime)", ["model"], multiprocess_mode="livemax")
        self.loads = Counter("ganforge_model_loads", "Model folder loads by result (ready | failed)",
                             ["model", "result"])
        self.reloads = Counter("ganforge_reloads", "Re-scans of the models folder (POST /admin/reload, the "
                               "file watch)")
        self._lock = threading.Lock()
        self._served: dict[str, tuple[str, ...]] = {}  # model -> the info labels last set to 1
        self._children: dict[tuple, Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: a dict lookup instead of prometheus_client's validation
        under a lock, ~10 times per request (the label sets are few: models x endpoints x outcomes)."""
        key = (metric._name, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children.setdefault(key, metric.labels(*labels))
        return found

    def models_served(self, models: dict[str, Any]) -> None:
        """Set the model gauges from the registry's models (ServedModel by name)."""
        with self._lock:
            current: dict[str, tuple[str, ...]] = {}
            for name, model in models.items():
                self.unavailable.labels(name).set(0 if model.ready else 1)
                if model.ready:
                    current[name] = (name, model.version or NONE, model.backend or NONE, model.device or NONE,
                                     model.precision or NONE, model.provider or NONE)
            for name, labels in self._served.items():
                if current.get(name) != labels:
                    self.info.labels(*labels).set(0)
                if name not in models:
                    self.unavailable.labels(name).set(0)
            for labels in current.values():
                self.info.labels(*labels).set(1)
            self._served = current


@functools.cache
def metrics() -> Metrics:
    """This process's metric families; the duration buckets reach this worker's GANFORGE_TIMEOUT_S."""
    return Metrics(settings().timeout_s)


@functools.cache
def tracer() -> Any:
    """A tracer on BentoML's provider (the one its request spans use; a no-op one without tracing)."""
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.tracer_provider.get().get_tracer("ganforge")


# ------------------------------------------------------------------ one request


class RequestRecord:
    """What one image request cost, filled in as it goes (middleware, handler, pipeline), then
    recorded once by `finish`. Its thread-safe parts: `add_wait` / `add_compute` from one worker
    thread at a time, `finish` from the event loop after the handler returned."""

    def __init__(self, endpoint: str) -> None:
        self.metrics = metrics()
        self.endpoint = endpoint
        self.arrived = time.perf_counter()
        self.model, self.version = NONE, NONE
        self.handler_started: float | None = None
        self.handler_seconds = 0.0
        self.stages = dict.fromkeys(STAGES, 0.0)
        self.compute_seconds = 0.0  # around each graph run, waits included (taken out in `finish`)
        self.wait_seconds = 0.0
        self.tiles = 0
        self.input_mpx: float | None = None
        self.output_mpx: float | None = None
        self.hint: str | None = None
        self._gauge = self.metrics.child(self.metrics.in_flight, NONE, NONE, endpoint)
        self._gauge.inc()

    def picked(self, name: str, version: str | None) -> None:
        """The request now belongs to model `name`: its in-flight count moves there."""
        self._gauge.dec()
        self.model, self.version = name, version or NONE
        self._gauge = self.metrics.child(self.metrics.in_flight, self.model, self.version, self.endpoint)
        self._gauge.inc()

    def finish(self, status: int | None) -> None:
        """Record the request once: counters, durations, stages; `status` is what was answered."""
        took = time.perf_counter() - self.arrived
        self._gauge.dec()
        kind, code = outcome(status, self.hint)
        m, labels = self.metrics, (self.model, self.version, self.endpoint)
        m.child(m.duration, *labels, kind).observe(took)
        if self.handler_started is not None:
            self._observe_stages(labels, took)
        m.child(m.requests, *labels, kind, str(code)).inc()

    def _observe_stages(self, labels: tuple[str, str, str], took: float) -> None:
        m = self.metrics
        stages = self.stages
        stages["queue"] = self.handler_started - self.arrived + self.wait_seconds
        stages["compute"] = max(self.compute_seconds - self.wait_seconds, 0.0)
        stages["process"] = max(self.handler_seconds - self.compute_seconds - stages["decode"]
                                - stages["encode"], 0.0)
        stages["respond"] = max(took - (self.handler_started - self.arrived) - self.handler_seconds, 0.0)
        for stage, seconds in stages.items():
            if seconds > 0 or stage in ("queue", "process", "respond"):  # no decode stage for /generate, ...
                m.child(m.stage, *labels, stage).observe(seconds)
        if self.tiles:
            m.child(m.tiles, *labels).observe(self.tiles)
        if self.input_mpx is not None:
            m.child(m.input_mpx, *labels).observe(self.input_mpx)
        if self.output_mpx is not None:
            m.child(m.output_mpx, *labels).observe(self.output_mpx)


_CURRENT: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar("ganforge_record", default=None)


def current() -> RequestRecord | None:
    """The record of the request this thread works for (None outside one, or with GANFORGE_METRICS=0)."""
    return _CURRENT.get()


@contextlib.contextmanager
def bound(record: RequestRecord | None) -> Iterator[None]:
    """Make `record` the current one here (and in the worker thread anyio copies this context into)."""
    if record is None:
        yield
        return
    reset = _CURRENT.set(record)
    try:
        yield
    finally:
        _CURRENT.reset(reset)


# ------------------------------------------------------------------ calls from the request path


@contextlib.contextmanager
def handler() -> Iterator[None]:
    """Around the handler in its worker thread: marks the end of `queue` and times the handler."""
    record = _CURRENT.get()
    if record is None:
        yield
        return
    record.handler_started = started = time.perf_counter()
    try:
        yield
    finally:
        record.handler_seconds = time.perf_counter() - started


def failed(exc: Exception) -> None:
    """The handler refused the request with `exc` (an ApiError): note what its status cannot say."""
    record = _CURRENT.get()
    if record is not None:
        record.hint = record.hint or getattr(exc, "outcome", None)  # a client that left stays "cancelled"


def client_left() -> None:
    """The client disconnected before its answer began: counted as status 499 whatever was answered."""
    record = _CURRENT.get()
    if record is not None:
        record.hint = "cancelled"


def picked(name: str, version: str | None) -> None:
    """The request resolved to model `name` (registry.pick): labels and the request span say so."""
    record = _CURRENT.get()
    if record is None:
        return
    record.picked(name, version)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("ganforge.model", name)
        span.set_attribute("ganforge.version", version or NONE)


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Time `name` (decode, encode) for the request and open its span; `compute` opens the span only
    (the compute stage is the graph runs' own time, `add_compute`). The span only where the request's
    own span records (BentoML samples parent-based: a child of an unsampled span is never sampled)."""
    record = _CURRENT.get()
    if record is None:
        yield
        return
    started = time.perf_counter()
    try:
        if not trace.get_current_span().is_recording():
            yield
        else:
            with tracer().start_as_current_span(f"ganforge.{name}") as span:
                yield
                if name == "compute":
                    span.set_attribute("ganforge.tiles", record.tiles)
                    span.set_attribute("ganforge.graph_seconds", record.compute_seconds)
    finally:
        if name != "compute":
            record.stages[name] += time.perf_counter() - started


def add_compute(seconds: float, tile: bool = False) -> None:
    """A graph run of this request took `seconds` (waiting for the session included); `tile`: one of
    its /translate or /upscale tiles (not a speed probe)."""
    record = _CURRENT.get()
    if record is not None:
        record.compute_seconds += seconds
        record.tiles += int(tile)


def add_wait(seconds: float) -> None:
    """This request waited `seconds` for a busy session (batcher queue, OpenVINO infer request)."""
    record = _CURRENT.get()
    if record is not None:
        record.wait_seconds += seconds


def images(input_pixels: int | None = None, output_pixels: int | None = None) -> None:
    """The request's decoded input or answered output size, in pixels (what is given)."""
    record = _CURRENT.get()
    if record is None:
        return
    if input_pixels is not None:
        record.input_mpx = input_pixels / 1e6
    if output_pixels is not None:
        record.output_mpx = output_pixels / 1e6


# ------------------------------------------------------------------ models (not per request)


def graph_run_observer(name: str, version: str | None):
    """`observe(rows)` for every graph run of one model version (batcher or direct), warm-up included."""
    child = metrics().rows.labels(name, version or NONE)
    return child.observe


def model_loaded(name: str, ready: bool) -> None:
    metrics().loads.labels(name, "ready" if ready else "failed").inc()


def reloaded() -> None:
    metrics().reloads.inc()


def models_served(models: dict[str, Any]) -> None:
    """After a load or reload: `ganforge_model_info` 1 for what each model now serves (0 for what it
    served before), `ganforge_model_unavailable` per model (0 for models no longer in the folder)."""
    metrics().models_served(models)
