"""ganforge's per-model metrics (service/telemetry.py): exact counts from a real `bentoml serve` with two
workers (prometheus_client's multiprocess mode), outcomes the status alone cannot tell, the switch that
turns them off, and the trace spans under BentoML's request span."""

from __future__ import annotations

import asyncio
import time

import anyio
import httpx
import pytest
from prometheus_client import REGISTRY

from metrics_workload import (BROKEN, dumps, expected_tiles, models_with_a_broken_one, per_worker_requests, png,
                              request_tally, samples, send_known_requests, total)
from service import telemetry
from service.config import Settings, backstop_timeout
from service.deadline import DEADLINE, DISCONNECTED, RequestCancelled
from service.errors import ApiError
from service.middleware import GanforgeMiddleware
from service.direct import image_response
from service_fixtures import REPO, live_metrics_dirs, running_server, service_client, write_fixture_models

WORKERS = 2


# ------------------------------------------------------------------ units


@pytest.mark.parametrize("status, hint, expected", [
    (200, None, ("ok", 200)), (400, None, ("client_error", 400)), (413, None, ("client_error", 413)),
    (429, None, ("overload", 429)), (503, "overload", ("overload", 503)), (503, None, ("server_error", 503)),
    (504, "timeout", ("timeout", 504)), (504, None, ("timeout", 504)), (None, None, ("timeout", 504)),
    (503, "cancelled", ("client_error", 499)), (200, "cancelled", ("client_error", 499)),
    (500, None, ("server_error", 500)),
])
def test_outcome_of_a_status(status, hint, expected):
    assert telemetry.outcome(status, hint) == expected


@pytest.mark.parametrize("timeout_s", [1.0, 120.0, 600.0])
def test_duration_buckets_reach_the_longest_admitted_request(timeout_s):
    buckets = telemetry.duration_buckets(timeout_s)
    assert list(buckets) == sorted(set(buckets)) and buckets[0] == 0.001
    assert timeout_s in buckets and buckets[-1] == backstop_timeout(timeout_s)  # BentoML's 504 backstop
    assert buckets[-2] == timeout_s and all(b < timeout_s for b in buckets[:-2])


def test_the_switch_is_a_setting():
    assert Settings.from_env({}).metrics is True
    assert Settings.from_env({"GANFORGE_METRICS": "0"}).metrics is False


# ------------------------------------------------------------------ in-process: outcomes through the middleware


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _asgi_post(app, path: str, timeout: float | None = None) -> None:
    """One POST through `app`, body {} (application/json), answer discarded."""
    scope = {"type": "http", "method": "POST", "path": path, "headers": [(b"content-type", b"application/json")],
             "query_string": b""}
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await asyncio.sleep(3600)

    async def send(message):
        pass

    async def call():
        coroutine = app(scope, receive, send)
        if timeout is None:
            await coroutine
        else:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(coroutine, timeout)  # BentoML's TimeoutMiddleware cancels like this

    asyncio.run(call())


def _raising(exc: Exception):
    """An ASGI app that runs a handler raising `exc` through service.direct.image_response in a worker thread,
    the way BentoML runs the sync API methods."""

    def handler():
        telemetry.picked("m", "v1")
        raise exc

    async def app(scope, receive, send):
        await receive()
        response = await anyio.to_thread.run_sync(image_response, handler)
        await response(scope, receive, send)

    return app


@pytest.mark.parametrize("exc, outcome, status", [
    (ApiError(503, "waited too long", outcome="overload"), "overload", "503"),
    (RequestCancelled(504, "late", DEADLINE), "timeout", "504"),
    (RequestCancelled(503, "left", DISCONNECTED), "client_error", "499"),
    (ApiError(503, "model unavailable"), "server_error", "503"),
    (ApiError(422, "n out of range"), "client_error", "422"),
])
def test_outcomes_the_status_cannot_tell(exc, outcome, status):
    labels = {"model": "m", "version": "v1", "endpoint": "generate", "outcome": outcome}
    before = _value("ganforge_requests_total", **labels, status=status)
    _asgi_post(GanforgeMiddleware(_raising(exc), Settings()), "/generate")
    assert _value("ganforge_requests_total", **labels, status=status) == before + 1
    assert _value("ganforge_requests_in_flight", model="m", version="v1", endpoint="generate") == 0


def test_overload_and_the_backstop_timeout_are_counted():
    """The middleware's own 429 (no model), and a request BentoML's timeout cancels before it answered."""
    async def never(scope, receive, send):
        await receive()
        await asyncio.sleep(3600)

    labels = {"model": "-", "version": "-", "endpoint": "generate"}
    timeouts = _value("ganforge_requests_total", **labels, outcome="timeout", status="504")
    _asgi_post(GanforgeMiddleware(never, Settings()), "/generate", timeout=0.2)
    assert _value("ganforge_requests_total", **labels, outcome="timeout", status="504") == timeouts + 1

    full = GanforgeMiddleware(never, Settings(max_concurrency=1))
    full._in_flight = 1  # one request already holds the only slot
    overloads = _value("ganforge_requests_total", **labels, outcome="overload", status="429")
    _asgi_post(full, "/generate")
    assert _value("ganforge_requests_total", **labels, outcome="overload", status="429") == overloads + 1
    assert _value("ganforge_requests_in_flight", **labels) == 0


def test_metrics_off_records_nothing(tmp_path):
    write_fixture_models(tmp_path / "models")
    labels = {"model": "fashion-dcgan", "endpoint": "generate", "outcome": "ok", "status": "200"}

    def count() -> float:
        return sum(s.value for m in REGISTRY.collect() if m.name == "ganforge_requests" for s in m.samples
                   if s.name == "ganforge_requests_total" and labels.items() <= s.labels.items())

    with service_client(tmp_path / "models", GANFORGE_METRICS="0") as client:
        before = count()
        assert client.post("/generate", json={"model": "fashion-dcgan", "seed": 1}).status_code == 200
        assert count() == before
    with service_client(tmp_path / "models") as client:
        assert client.post("/generate", json={"model": "fashion-dcgan", "seed": 1}).status_code == 200
        assert count() == before + 1


# ------------------------------------------------------------------ tracing


def test_spans_nest_under_the_request_span(tmp_path):
    """BentoML's tracer provider with an in-memory exporter; a sampled `traceparent` (an upstream that
    samples) makes BentoML's request span, and ganforge's stages are its children."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    BentoMLContainer.tracer_provider.get().add_span_processor(SimpleSpanProcessor(exporter))
    write_fixture_models(tmp_path / "models")
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    with service_client(tmp_path / "models") as client:
        r = client.post("/upscale", files={"image": ("a.png", png(300, 200))},
                        headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
        assert r.status_code == 200
    spans = [s for s in exporter.get_finished_spans() if f"{s.context.trace_id:032x}" == trace_id]
    exporter.shutdown()
    (request,) = [s for s in spans if s.name == "POST /upscale"]
    assert request.attributes["ganforge.model"] == "srresnet-x4" and request.attributes["http.status_code"] == 200
    stages = {s.name: s for s in spans if s.name.startswith("ganforge.")}
    assert set(stages) == {"ganforge.decode", "ganforge.compute", "ganforge.encode"}
    for span in stages.values():
        assert span.parent.span_id == request.context.span_id
        assert request.start_time <= span.start_time <= span.end_time <= request.end_time
    assert stages["ganforge.decode"].end_time <= stages["ganforge.compute"].start_time
    assert stages["ganforge.compute"].end_time <= stages["ganforge.encode"].start_time
    assert stages["ganforge.compute"].attributes["ganforge.tiles"] > 1  # 300x200 is tiled


# ------------------------------------------------------------------ a real server, two workers


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """(base URL, the server's prometheus multiprocess dir)"""
    tmp = tmp_path_factory.mktemp("metrics")
    models = models_with_a_broken_one(tmp / "models")
    with running_server(models, tmp, GANFORGE_WORKERS=str(WORKERS), GANFORGE_DEVICE="cpu") as (base, log):
        deadline = time.monotonic() + 120  # /readyz answers once one worker is up: wait for the other's warm-up
        while log.read_text(errors="replace").count("Service ganforge initialized") < WORKERS:
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.2)
        (multiproc_dir,) = live_metrics_dirs(tmp / "bentoml_home")  # this instance's own (service/instance.py)
        yield base, multiproc_dir


@pytest.mark.slow
def test_counts_are_exact_across_two_workers(two_workers):
    base, multiproc_dir = two_workers
    # a new connection per request: the kernel hands each to either worker
    with httpx.Client(base_url=base, timeout=120, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        before = samples(client.get("/metrics").text)
        tally = send_known_requests(client)
        for seed in range(60):  # until both workers counted some (each one is in the tally too)
            if len(per_worker_requests(multiproc_dir)) == WORKERS:
                break
            assert client.post("/generate", json={"model": "fashion-dcgan", "seed": seed}).status_code == 200
            tally[("fashion-dcgan", "generate", "ok", "200")] += 1
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        deadline = time.monotonic() + 10  # a worker counts a request as its answer goes out: scrape until
        while True:  # both workers' last counts are in (the assertion below is on the last scrape)
            after = samples(client.get("/metrics").text)
            if request_tally(after) - request_tally(before) == tally or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    workers = per_worker_requests(multiproc_dir)
    assert len(workers) == WORKERS, workers  # so the counts below are sums over both
    assert request_tally(after) - request_tally(before) == tally, dumps(request_tally(after))
    assert sum(workers.values()) == sum(request_tally(after).values())
    extra = tally[("fashion-dcgan", "generate", "ok", "200")] - 4

    delta = lambda name, **labels: total(after, name, **labels) - total(before, name, **labels)  # noqa: E731
    assert total(after, "ganforge_requests_in_flight") == 0
    # stages of every request that reached a handler (all with a model): measured one by one, they add up
    for model in ("fashion-dcgan", "srresnet-x4", "edges2color", "shoe2boot"):
        requests = delta("ganforge_request_duration_seconds_sum", model=model)
        stages = delta("ganforge_stage_duration_seconds_sum", model=model)
        assert 0.98 * requests <= stages <= requests * 1.0001, (model, stages, requests)
        assert delta("ganforge_stage_duration_seconds_sum", model=model, stage="compute") > 0
        assert delta("ganforge_stage_duration_seconds_count", model=model, stage="queue") == \
            delta("ganforge_request_duration_seconds_count", model=model)
    # graph runs and rows: 3 + 1 runs of /generate (1, 1, 1 and 4 rows); one run per tile of /upscale
    assert delta("ganforge_graph_run_rows_count", model="fashion-dcgan") == 4 + extra
    assert delta("ganforge_graph_run_rows_sum", model="fashion-dcgan") == 7 + extra
    tiles = expected_tiles(models)
    assert delta("ganforge_tiles_per_request_sum", model="srresnet-x4") == tiles
    assert delta("ganforge_tiles_per_request_count", model="srresnet-x4") == 3
    assert delta("ganforge_graph_run_rows_count", model="srresnet-x4") == tiles
    assert delta("ganforge_output_megapixels_sum", model="srresnet-x4") == pytest.approx(
        (2 * 160 * 120 + 1200 * 800) / 1e6)
    assert delta("ganforge_input_megapixels_count", model="srresnet-x4") == 3
    assert delta("ganforge_stage_duration_seconds_count", model="fashion-dcgan", stage="decode") == 0
    # the models: what serves them, what cannot, and how often they were loaded (once per worker)
    for name, model in models.items():
        if name == BROKEN:
            continue
        labels = dict(model=name, version=model["version"], backend=model["backend"], device=model["device"],
                      precision=model["precision"], provider=model["provider"])
        assert total(after, "ganforge_model_info", **labels) == 1, name
        assert total(after, "ganforge_model_unavailable", model=name) == 0
        assert total(after, "ganforge_model_loads_total", model=name, result="ready") == WORKERS
    assert total(after, "ganforge_model_unavailable", model=BROKEN) == 1
    assert total(after, "ganforge_model_loads_total", model=BROKEN, result="failed") == WORKERS
    assert total(after, "ganforge_request_duration_seconds_bucket", le="132.0") > 0  # 120 s + the backstop
    assert total(after, "ganforge_request_duration_seconds_bucket", le="+Inf") == \
        total(after, "ganforge_request_duration_seconds_count")


class _OtlpReceiver:
    """A stand-in OpenTelemetry collector: OTLP/HTTP on a loopback port, keeps the spans it is sent."""

    def __init__(self) -> None:
        import http.server
        import threading

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        self.spans: list = []
        spans = self.spans

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                request = ExportTraceServiceRequest()
                request.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
                spans.extend(s for r in request.resource_spans for scope in r.scope_spans for s in scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.slow
def test_tracing_configured_as_documented_exports_nested_spans(tmp_path):
    """README's tracing configuration on a real `bentoml serve`: BentoML's request span and ganforge's
    stage spans reach an OTLP collector, the stages as children of the request span."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the OTLP exporter is a serving "
                        "dependency (pyproject.toml): pip install -e .")
    receiver = _OtlpReceiver()
    write_fixture_models(tmp_path / "models")
    options = " ".join(f"services.ganforge.tracing.{k}={v}" for k, v in
                       {"exporter_type": "otlp", "sample_rate": "1.0", "otlp.protocol": "http",
                        "otlp.endpoint": receiver.url}.items())
    with running_server(tmp_path / "models", tmp_path, BENTOML_CONFIG_OPTIONS=options,
                        OTEL_BSP_SCHEDULE_DELAY="100") as (base, _):
        r = httpx.post(f"{base}/upscale", files={"image": ("a.png", png(300, 200))}, timeout=120)
        assert r.status_code == 200
        deadline = time.monotonic() + 30
        while not any(s.name == "ganforge.encode" for s in receiver.spans):
            assert time.monotonic() < deadline, [s.name for s in receiver.spans]
            time.sleep(0.1)
    receiver.server.shutdown()
    (request,) = [s for s in receiver.spans if s.name == "POST /upscale"]
    attributes = {a.key: a.value.string_value for a in request.attributes}
    assert attributes["ganforge.model"] == "srresnet-x4"
    stages = {s.name: s for s in receiver.spans if s.name.startswith("ganforge.")}
    assert set(stages) == {"ganforge.decode", "ganforge.compute", "ganforge.encode"}
    for span in stages.values():
        assert (span.trace_id, span.parent_span_id) == (request.trace_id, request.span_id)
        assert request.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano \
            <= request.end_time_unix_nano


def test_bench_measures_the_recording_in_worker_mode():
    """bench/telemetry.py's direct figure: a fresh process in prometheus_client's multiprocess mode."""
    import subprocess
    import sys

    code = "from bench.telemetry import record_cost_in_worker_mode as f; print(f(50))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 0 < float(out.stdout.strip()) < 0.01  # seconds per request's recording
