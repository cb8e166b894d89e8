"""Service settings, read from environment variables (all optional).

| variable                    | default              | meaning |
| --------------------------- | -------------------- | ------- |
| GANFORGE_MODELS_DIR         | <repo>/models        | folder of model folders (docs/model-card.md). In a Bento the bundled `models/` sits next to `service/`, so the default finds it there too. |
| GANFORGE_DEVICE             | auto                 | auto: CUDA when onnxruntime can use it, else CPU. cpu: never CUDA. cuda: refuse to start without a working CUDA provider. |
| GANFORGE_CUDA_DEVICE_ID     | 0                    | GPU index for the CUDA provider. |
| GANFORGE_AUTH_TOKEN         | (unset)              | when set, every request except /livez, /readyz, /healthz, /metrics needs `Authorization: Bearer <token>`. |
| GANFORGE_MAX_UPLOAD_BYTES   | 20971520 (20 MiB)    | largest request body; larger -> 413. |
| GANFORGE_MAX_INPUT_PIXELS   | 16777216 (4096^2)    | largest decoded input image (width*height); checked from the header before decoding -> 413. |
| GANFORGE_MAX_OUTPUT_PIXELS  | 67108864 (8192^2)    | largest image the service will produce -> 413. |
| GANFORGE_MAX_N              | 64                   | largest `n` (and interpolation `steps`) for /generate. |
| GANFORGE_TILE               | 0                    | tile edge in input pixels for /upscale and /translate; 0 = the card's `tiling.tile` (256 if the card has none). |
| GANFORGE_TILE_OVERLAP       | -1                   | tile overlap in input pixels; -1 = the card's `tiling.overlap` (16 if none). |
| GANFORGE_ORT_THREADS        | 0                    | inference threads per graph: onnxruntime's intra-op threads, OpenVINO's INFERENCE_NUM_THREADS; 0 = the runtime's default (one per physical core). |
| GANFORGE_WORKERS            | 1                    | BentoML worker processes (each loads every model once). |
| GANFORGE_THREADS            | 4                    | requests a worker runs at once (BentoML `threads`): decode/encode of one overlaps another's graph run, concurrent same-shaped requests batch, and a long upscale does not hold up small requests. 1 = strictly one at a time (least memory). |
| GANFORGE_BATCH_MAX          | 0                    | adaptive batching: most rows one graph run may merge from queued same-shaped requests (service/batching.py); 1 = off. 0 = auto: 16 on the CUDA provider, off on the CPU provider (measured, make bench: on the CPU a merged run is no faster per row for these models, and over four bench runs 16 clients got 0-10% fewer requests/s through with it). Needs GANFORGE_THREADS > 1 to see concurrent requests. |
| GANFORGE_MAX_CONCURRENCY    | 32                   | /generate, /translate, /upscale requests in flight per worker (uploads included) before 429. |
| GANFORGE_TIMEOUT_S          | 120                  | per-request limit: an image request that cannot finish in it at its model's measured speed is refused at once (413, naming the size it can take); one whose deadline passes or whose client leaves stops within one tile (504 / 503); BentoML's own timeout is a backstop above it. |
| GANFORGE_LOG_FORMAT         | text                 | text: BentoML's log lines. json: one JSON object per line (service/logs.py); the container image sets json. |
| GANFORGE_RELOAD_POLL_S      | 0                    | every this many seconds each worker re-scans the models dir and swaps in changed models (0 = off; `POST /admin/reload` reloads on demand). |
| GANFORGE_READY_REQUIRES_ALL | 0                    | 1: /readyz answers 503 while any model is unavailable. 0: /readyz is 200 once the worker is up; unavailable models are named in /models. |
| GANFORGE_BACKEND            | auto                 | which runtime runs the graphs: `auto` = onnxruntime where its CUDA provider works, OpenVINO on the CPU (onnxruntime if the `openvino` package is missing); `onnxruntime` (CUDA or CPU, as GANFORGE_DEVICE says); `openvino` (the CPU; not with GANFORGE_DEVICE=cuda). A graph OpenVINO cannot compile runs on onnxruntime (logged). /models says per model: backend, device, precision and why. |
| GANFORGE_METRICS            | 1                    | 1: ganforge's own per-model Prometheus metrics and trace spans (service/telemetry.py, README "Metrics") beside BentoML's. 0: not recorded (BentoML's `/metrics` stays): for measuring what they cost (`python -m bench --only telemetry`). |
| GANFORGE_PRECISION          | auto                 | which precision of each model runs. `auto`: bf16 where the backend is OpenVINO, the CPU has native bf16 (AMX or AVX512-BF16) and the card's `variants.bf16` gate passed (>= 45 dB PSNR against fp32 on the worst input, `python -m training bf16 NAME`), else fp32. `fp32`: always fp32 (the opt-out). `bf16`: as auto, but a fallback is a warning. `int8`: the card's `variants.int8` (made by `python -m training quantize`) on the CPU, through OpenVINO when it is the backend (its QDQ graph measured 4x faster than onnxruntime's int8 here), else onnxruntime's CPU provider. `fp16`: the card's `variants.fp16` on the CUDA provider. Comma list of a default and/or `NAME:PRECISION` entries, e.g. `int8,colorize:fp32` or `srresnet-x4:int8`. A model without a usable variant (none, missing/corrupt file, the other device) serves fp32 and logs why; /models says what runs and why. |
| GANFORGE_JOBS_DIR           | <repo>/jobs          | where jobs live (service/jobs/): `jobs.sqlite3` (SQLite, WAL mode), `inputs/<id>/` (uploads, written atomically, so a restarted server can run the job again) and `results/<id>` (written atomically). Every worker and every restart must see the same folder (a volume in the container); the startup log and GET /models name it. |
| GANFORGE_JOBS_TTL_S         | 86400                | a finished job and its result are removed this many seconds after it finished (`expires_at`); the service sweeps them itself. |
| GANFORGE_JOBS_MAX_QUEUED    | 100                  | jobs waiting to run (all workers) before a `Prefer: respond-async` request is answered 429. |
| GANFORGE_WEBHOOK_HOSTS      | (none)               | comma list of host names (or host:port) a job's `webhook` may call; none: a request with `webhook` is refused 422. |
| GANFORGE_WEBHOOK_SECRET     | (unset)              | the Standard Webhooks signing secret, `whsec_<base64>`; needed for webhooks. |

Invalid values stop the service at startup with a message naming the variable.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .logs import LOG_FORMATS

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "int8", "fp16")


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not value >= minimum:
        raise SettingsError(f"{name}={value} must be >= {minimum}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} must be 0 or 1")


def _precision(env: Mapping[str, str], name: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`int8`, `name:int8,other:fp32` or `int8,name:fp32` -> (default, ((model, precision), ...))."""
    default, per_model = None, {}
    for item in env.get(name, "").replace(" ", "").split(","):
        if not item:
            continue
        model, _, value = item.rpartition(":")
        value = value.lower()
        if value not in PRECISIONS:
            raise SettingsError(f"{name}: {item!r} must be PRECISION or NAME:PRECISION, PRECISION one of "
                                f"{', '.join(PRECISIONS)}")
        if not model:
            if default is not None:
                raise SettingsError(f"{name}={env.get(name)!r} gives more than one default precision")
            default = value
        elif model in per_model:
            raise SettingsError(f"{name}: model {model!r} is named twice")
        else:
            per_model[model] = value
    return default or "auto", tuple(sorted(per_model.items()))


# ---- jobs (service/jobs/, issue 23)


def _path(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser().resolve() if raw else default


def _hosts(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """`a.example, b.example:8080` -> ("a.example", "b.example:8080"), lower case."""
    hosts = []
    for item in env.get(name, "").split(","):
        item = item.strip().lower()
        if not item:
            continue
        if "/" in item or "@" in item or " " in item:
            raise SettingsError(f"{name}: {item!r} must be a host name or host:port, not a URL")
        hosts.append(item)
    return tuple(hosts)


def _webhook_secret(env: Mapping[str, str], name: str) -> str | None:
    """Standard Webhooks' secret form: `whsec_` + base64 of the key (24 to 64 bytes)."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.startswith("whsec_"):
        raise SettingsError(f"{name} must be in the form whsec_<base64 key>")
    try:
        key = base64.b64decode(raw[len("whsec_"):], validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(f"{name}: the part after whsec_ is not base64") from None
    if not 24 <= len(key) <= 64:
        raise SettingsError(f"{name}: the key must be 24 to 64 bytes, got {len(key)}")
    return raw


# ---- end jobs


def backstop_timeout(timeout_s: float) -> float:
    """BentoML's traffic.timeout: a backstop a little after GANFORGE_TIMEOUT_S. The request's own
    deadline (service/deadline.py) answers first and stops the work; BentoML's answers 504 but
    lets the sync work go on, so it only catches what the deadline cannot interrupt (an encode)."""
    return timeout_s + max(10.0, 0.1 * timeout_s)


@dataclass(frozen=True)
class Settings:
    models_dir: Path = REPO_ROOT / "models"
    device: str = "auto"
    cuda_device_id: int = 0
    auth_token: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    max_input_pixels: int = 4096 * 4096
    max_output_pixels: int = 8192 * 8192
    max_n: int = 64
    tile: int = 0
    tile_overlap: int = -1
    ort_threads: int = 0
    workers: int = 1
    threads: int = 4  # measured (make bench, serving): > 1 serves 16 clients 1.1-1.2x faster, same 1-client latency
    batch_max: int = 0  # 0: AUTO_BATCH_MAX on CUDA, off on the CPU provider (service/loading.py)
    max_concurrency: int = 32
    timeout_s: float = 120.0
    log_format: str = "text"
    reload_poll_s: float = 0.0
    ready_requires_all: bool = False
    backend: str = "auto"  # GANFORGE_BACKEND
    precision: str = "auto"  # GANFORGE_PRECISION's default
    model_precision: tuple[tuple[str, str], ...] = ()  # its NAME:PRECISION entries
    metrics: bool = True  # GANFORGE_METRICS
    # jobs (service/jobs/, issue 23)
    jobs_dir: Path = REPO_ROOT / "jobs"  # GANFORGE_JOBS_DIR
    jobs_ttl_s: float = 86400.0  # GANFORGE_JOBS_TTL_S
    jobs_max_queued: int = 100  # GANFORGE_JOBS_MAX_QUEUED
    webhook_hosts: tuple[str, ...] = ()  # GANFORGE_WEBHOOK_HOSTS
    webhook_secret: str | None = None  # GANFORGE_WEBHOOK_SECRET (whsec_...)

    def precision_for(self, name: str) -> str:
        """The precision GANFORGE_PRECISION asks for model `name`."""
        return dict(self.model_precision).get(name, self.precision)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        device = env.get("GANFORGE_DEVICE", "auto").strip().lower() or "auto"
        if device not in DEVICES:
            raise SettingsError(f"GANFORGE_DEVICE={device!r} must be one of {', '.join(DEVICES)}")
        models_dir = env.get("GANFORGE_MODELS_DIR", "").strip()
        token = env.get("GANFORGE_AUTH_TOKEN", "")
        log_format = env.get("GANFORGE_LOG_FORMAT", "text").strip().lower() or "text"
        precision, model_precision = _precision(env, "GANFORGE_PRECISION")
        backend = env.get("GANFORGE_BACKEND", "auto").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise SettingsError(f"GANFORGE_BACKEND={backend!r} must be one of {', '.join(BACKENDS)}")
        if backend == "openvino" and device == "cuda":
            raise SettingsError("GANFORGE_BACKEND=openvino runs on the CPU; it cannot be combined with "
                                "GANFORGE_DEVICE=cuda (use GANFORGE_BACKEND=auto or onnxruntime)")
        if log_format not in LOG_FORMATS:
            raise SettingsError(f"GANFORGE_LOG_FORMAT={log_format!r} must be one of {', '.join(LOG_FORMATS)}")
        return cls(
            models_dir=Path(models_dir).expanduser().resolve() if models_dir else REPO_ROOT / "models",
            device=device,
            cuda_device_id=_int(env, "GANFORGE_CUDA_DEVICE_ID", 0, 0),
            auth_token=token if token.strip() else None,
            max_upload_bytes=_int(env, "GANFORGE_MAX_UPLOAD_BYTES", cls.max_upload_bytes, 1),
            max_input_pixels=_int(env, "GANFORGE_MAX_INPUT_PIXELS", cls.max_input_pixels, 1),
            max_output_pixels=_int(env, "GANFORGE_MAX_OUTPUT_PIXELS", cls.max_output_pixels, 1),
            max_n=_int(env, "GANFORGE_MAX_N", cls.max_n, 1),
            tile=_int(env, "GANFORGE_TILE", 0, 0),
            tile_overlap=_int(env, "GANFORGE_TILE_OVERLAP", -1, -1),
            ort_threads=_int(env, "GANFORGE_ORT_THREADS", 0, 0),
            workers=_int(env, "GANFORGE_WORKERS", 1, 1),
            threads=_int(env, "GANFORGE_THREADS", cls.threads, 1),
            batch_max=_int(env, "GANFORGE_BATCH_MAX", cls.batch_max, 0),
            max_concurrency=_int(env, "GANFORGE_MAX_CONCURRENCY", cls.max_concurrency, 1),
            timeout_s=_float(env, "GANFORGE_TIMEOUT_S", cls.timeout_s, 1.0),
            log_format=log_format,
            reload_poll_s=_float(env, "GANFORGE_RELOAD_POLL_S", 0.0, 0.0),
            ready_requires_all=_bool(env, "GANFORGE_READY_REQUIRES_ALL", False),
            backend=backend,
            precision=precision,
            model_precision=model_precision,
            metrics=_bool(env, "GANFORGE_METRICS", True),
            # jobs (service/jobs/, issue 23)
            jobs_dir=_path(env, "GANFORGE_JOBS_DIR", cls.jobs_dir),
            jobs_ttl_s=_float(env, "GANFORGE_JOBS_TTL_S", cls.jobs_ttl_s, 1.0),
            jobs_max_queued=_int(env, "GANFORGE_JOBS_MAX_QUEUED", cls.jobs_max_queued, 1),
            webhook_hosts=_hosts(env, "GANFORGE_WEBHOOK_HOSTS"),
            webhook_secret=_webhook_secret(env, "GANFORGE_WEBHOOK_SECRET"),
        )
