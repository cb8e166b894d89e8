"""Service settings, read from GANFORGE_* environment variables (all optional), once per process.

Every variable is declared once, on the `Settings` field it sets: its name, default, minimum
or choices, and help text. `Settings.from_env` parses by that declaration (service/env_readers.py: one
reader per kind), and the README's
configuration table and this module's CLI are generated from it:

    python -m service.config              # every variable: default and meaning
    python -m service.config --markdown   # the same as the README table
    python -m service.config --write      # rewrite README.md's <!-- env-table --> block
    python -m service.config --check      # exit 1 when that block is stale

The table: README.md, "Configuration". Invalid values stop the service at startup with a
message naming the variable. The service reads its settings through `settings()`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .env_readers import READERS, SettingsError
from .logs import LOG_FORMATS

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
TABLE_START, TABLE_END = "<!-- env-table -->", "<!-- /env-table -->"
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16", "int8", "fp16")


@dataclass(frozen=True)
class Variable:
    """One GANFORGE_* variable: what `Settings.from_env` parses and the docs print.

    `kind` follows the default's type (path, text, bool, int, float; a str default with
    `choices` is a choice) unless given; `shown` is the default as the docs write it."""

    name: str
    default: Any
    help: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    shown: str | None = None
    kind: str = ""
    field: str = ""  # the Settings field it sets

    def read(self, env: Mapping[str, str]) -> Any:
        return READERS[self.kind](self, env.get(self.name, ""))

    def default_text(self) -> str:
        """The default in Markdown: the value as it would be written in the variable, or `shown`."""
        if self.shown is not None:
            return self.shown
        if isinstance(self.default, bool):
            return "`1`" if self.default else "`0`"
        if isinstance(self.default, float) and self.default.is_integer():
            return f"`{int(self.default)}`"
        return f"`{self.default}`"


def _kind(default: Any) -> str:
    if isinstance(default, Path):
        return "path"
    if default is None:
        return "text"
    for kind in (bool, int, float, str):  # bool before int: True is an int
        if isinstance(default, kind):
            return "choice" if kind is str else kind.__name__
    raise TypeError(f"no variable kind for a default of {default!r}")


def env_var(name: str, default: Any, help: str, **declared: Any) -> Any:
    """A Settings field set by the environment variable `name` (see `Variable`)."""
    var = Variable(name, default, " ".join(help.split()), **declared)
    return dataclasses.field(default=default, metadata={"env": dataclasses.replace(var, kind=var.kind or _kind(default))})


def backstop_timeout(timeout_s: float) -> float:
    """BentoML's traffic.timeout: a backstop a little after GANFORGE_TIMEOUT_S. The request's own
    deadline (service/deadline.py) answers first and stops the work; BentoML's answers 504 but
    lets the sync work go on, so it only catches what the deadline cannot interrupt (an encode)."""
    return timeout_s + max(10.0, 0.1 * timeout_s)


@dataclass(frozen=True)
class Settings:
    models_dir: Path = env_var(
        "GANFORGE_MODELS_DIR", REPO_ROOT / "models", shown="`models/` beside `service/`",
        help="""the folder of model folders to serve (docs/model-card.md). In a Bento the bundled `models/`
        sits next to `service/`, so the default finds it there too""")
    device: str = env_var(
        "GANFORGE_DEVICE", "auto", choices=DEVICES,
        help="""`auto`: CUDA when onnxruntime can use it, else the CPU; `cpu`: never CUDA; `cuda`: refuse
        to start without a working CUDA provider. One info line at startup says why CUDA was or was not
        tried""")
    cuda_device_id: int = env_var("GANFORGE_CUDA_DEVICE_ID", 0, minimum=0, help="which GPU the CUDA provider uses")
    auth_token: str | None = env_var(
        "GANFORGE_AUTH_TOKEN", None, shown="unset",
        help="""when set, every request needs `Authorization: Bearer <token>`, except health (`/livez`,
        `/readyz`, `/healthz`), `/metrics` and the demo page's own files""")
    max_upload_bytes: int = env_var(
        "GANFORGE_MAX_UPLOAD_BYTES", 20 * 1024 * 1024, minimum=1, shown="`20971520` (20 MiB)",
        help="largest request body; a larger one: 413")
    max_media_bytes: int = env_var(
        "GANFORGE_MAX_MEDIA_BYTES", 200 * 1024 * 1024, minimum=1, shown="`209715200` (200 MiB)",
        help="""largest request body on `/upscale` and `/translate` when its file is a `video` or an `archive`
        (an `image` stays under `GANFORGE_MAX_UPLOAD_BYTES`); the body is held in memory while it is checked,
        then kept in `GANFORGE_JOBS_DIR`: 413""")
    max_video_s: float = env_var(
        "GANFORGE_MAX_VIDEO_S", 600.0, minimum=0.1,
        help="longest `video` accepted (its streams' duration, read at submit): 413")
    max_video_frames: int = env_var(
        "GANFORGE_MAX_VIDEO_FRAMES", 36000, minimum=1,
        help="""most frames a `video` may hold (counted from its packets at submit); each frame is also held to
        `GANFORGE_MAX_INPUT_PIXELS` and its output to `GANFORGE_MAX_OUTPUT_PIXELS`: 413""")
    archive_max_entries: int = env_var(
        "GANFORGE_ARCHIVE_MAX_ENTRIES", 1000, minimum=1,
        help="most entries (files and folders) an `archive` (a zip of images) may hold: 413")
    archive_max_bytes: int = env_var(
        "GANFORGE_ARCHIVE_MAX_BYTES", 2 * 1024**3, minimum=1, shown="`2147483648` (2 GiB)",
        help="""most bytes an `archive`'s files may expand to, as its directory declares them (each file is
        also held to `GANFORGE_MAX_UPLOAD_BYTES`, and one that expands over 100 times is a zip bomb): 413""")
    max_input_pixels: int = env_var(
        "GANFORGE_MAX_INPUT_PIXELS", 4096 * 4096, minimum=1, shown="`16777216` (4096²)",
        help="largest input image (width x height), checked from the image header before decoding: 413")
    max_output_pixels: int = env_var(
        "GANFORGE_MAX_OUTPUT_PIXELS", 8192 * 8192, minimum=1, shown="`67108864` (8192²)",
        help="largest image the service will produce: 413")
    max_n: int = env_var("GANFORGE_MAX_N", 64, minimum=1,
                         help="largest `n` (and interpolation `steps`) for `/generate`")
    tile: int = env_var(
        "GANFORGE_TILE", 0, minimum=0,
        help="""tile edge in input pixels for large images on `/upscale` and `/translate`, every image in
        that square tile. 0: measured at load (within `GANFORGE_AUTOTUNE_BUDGET_S`, cached): each model's
        cost per pixel at tiles around its card's `tiling.tile`, and each image then runs in the tiles that
        curve predicts cheapest for its size (`core/tileplan.py`; `/models` shows the curve as `tiles`);
        with the budget 0, the card's tile (256 if the card has none)""")
    tile_overlap: int = env_var(
        "GANFORGE_TILE_OVERLAP", -1, minimum=-1,
        help="tile overlap in input pixels; -1: the card's `tiling.overlap` (16 if the card has none)")
    ort_threads: int = env_var(
        "GANFORGE_ORT_THREADS", 0, minimum=0,
        help="""inference threads per graph: onnxruntime's intra-op threads, OpenVINO's
        INFERENCE_NUM_THREADS; 0: the runtime's default (one per physical core)""")
    workers: int = env_var("GANFORGE_WORKERS", 1, minimum=1,
                           help="BentoML worker processes (each loads every model once)")
    threads: int = env_var(
        "GANFORGE_THREADS", 4, minimum=1,
        help="""requests a worker runs at once (BentoML `threads`): the decode and encode of one overlap
        another's graph run, concurrent same-shaped requests batch, and a long upscale does not hold up
        small requests (measured, make bench: 16 clients served 1.1-1.2x faster than with 1, the same
        latency for one client); 1: strictly one at a time (least memory)""")
    batch_max: int = env_var(
        "GANFORGE_BATCH_MAX", 0, minimum=0, shown="`0` (auto)",
        help="""adaptive batching: the most rows one graph run may merge from queued same-shaped requests
        (`service/batching.py`; needs `GANFORGE_THREADS` > 1 to see them); 1: off; 0: auto, 16 on the
        CUDA provider and off on the CPU provider (measured, make bench: there a merged run is no faster
        per row for these models, and 16 clients got 0-10% fewer requests/s through with it)""")
    max_concurrency: int = env_var(
        "GANFORGE_MAX_CONCURRENCY", 32, minimum=1,
        help="`/generate`, `/translate` and `/upscale` requests in flight per worker (uploads included) before 429")
    timeout_s: float = env_var(
        "GANFORGE_TIMEOUT_S", 120.0, minimum=1.0,
        help="""the time an image request may take from its arrival ([Reliability](#reliability)): one that
        its model's measured speed says cannot finish in it is refused at once (413 naming the size that
        fits; 503 when it only waited too long), and one that runs past it, or whose client disconnects,
        stops within one tile (504 / 503). BentoML's own timeout is a backstop above it""")
    log_format: str = env_var(
        "GANFORGE_LOG_FORMAT", "text", choices=LOG_FORMATS,
        help="""`text`: BentoML's log lines; `json`: one JSON object per line with its `trace_id` and
        `span_id` (`service/logs.py`). The container image sets `json`""")
    reload_poll_s: float = env_var(
        "GANFORGE_RELOAD_POLL_S", 0.0, minimum=0.0, shown="`0` (off)",
        help="""every this many seconds each worker re-scans the models folder and swaps in changed models
        ([Reliability](#reliability)); 0: off, `POST /admin/reload` reloads on demand""")
    ready_requires_all: bool = env_var(
        "GANFORGE_READY_REQUIRES_ALL", False,
        help="""1: `/readyz` answers 503 while any model is unavailable; 0: ready once the worker is up,
        unavailable models named in `/models`""")
    backend: str = env_var(
        "GANFORGE_BACKEND", "auto", choices=BACKENDS,
        help="""what runs the graphs: `auto`: onnxruntime where its CUDA provider works, OpenVINO on the CPU
        (onnxruntime if the `openvino` package is missing); `onnxruntime` (CUDA or CPU, as
        `GANFORGE_DEVICE` says); `openvino` (the CPU; not with `GANFORGE_DEVICE=cuda`). A graph OpenVINO
        cannot compile runs on onnxruntime (logged). `/models` says per model: backend, device, precision
        and why""")
    precision: str = env_var(
        "GANFORGE_PRECISION", "auto", choices=PRECISIONS, kind="precision",
        help="""which precision of each model runs. `auto`: bf16 where the backend is OpenVINO, the CPU has
        native bf16 (AMX or AVX512-BF16) and the model's card has a passed bf16 gate (`variants.bf16`: >= 45
        dB PSNR against fp32 on the worst measured input, written by `python -m training bf16 NAME`), else
        fp32. `fp32`: always fp32 (the opt-out). `bf16`: as auto, but a fallback is logged as a warning.
        `int8`: each model's int8 variant (made by `python -m training quantize NAME`) on the CPU, through
        OpenVINO when it is the backend (4x onnxruntime's int8 here), else onnxruntime's CPU provider.
        `fp16`: its fp16 variant on the CUDA provider (made by export; `make fp16` in a git clone). A comma
        list sets it per model: `int8,colorize:fp32`, `srresnet-x4:int8`. A model without a usable
        variant, or on the other device, serves fp32 and logs why; `/models` shows each model's `backend`,
        `device`, `precision` and `precision_reason`""")
    model_precision: tuple[tuple[str, str], ...] = ()  # GANFORGE_PRECISION's NAME:PRECISION entries
    autotune_budget_s: float = env_var(
        "GANFORGE_AUTOTUNE_BUDGET_S", 5.0, minimum=0.0,
        help="""with `GANFORGE_BACKEND` and `GANFORGE_PRECISION` both `auto` on the CPU, each model runs its
        fastest candidate that passes its quality gate (onnxruntime fp32, OpenVINO fp32, OpenVINO bf16 where
        the card's gate passed and the CPU has native bf16, int8 where the card has a passed variant), per
        input-size class, measured at load on the model's own input shapes within this many seconds per model
        and cached (`GANFORGE_AUTOTUNE_DIR`), so a restart measures nothing (`core/autotune.py`; `/models`
        shows the table, the choice and why). 0: no measurement, the static rule (OpenVINO, bf16 where the
        gate passed). Either variable set by hand forces its choice and nothing is measured. The same budget
        again bounds each image model's tile measurement (see `GANFORGE_TILE`)""")
    autotune_dir: Path | None = env_var(
        "GANFORGE_AUTOTUNE_DIR", None, kind="path", shown="`<GANFORGE_MODELS_DIR>/.autotune`",
        help="""where the autotune tables are cached, one JSON file per model, keyed by the model's version,
        the CPU model and flags and the onnxruntime / OpenVINO versions (written atomically; a corrupt or
        stale file is measured again). Where it cannot be written, every start measures""")
    metrics: bool = env_var(
        "GANFORGE_METRICS", True,
        help="""1: ganforge's own per-model Prometheus series and trace spans (`service/telemetry.py`,
        [Metrics](#metrics)) beside BentoML's; 0: not recorded (BentoML's `/metrics` stays), for measuring
        what they cost (`python -m bench --only telemetry`)""")
    # jobs (service/jobs/, issue 23)
    jobs_dir: Path = env_var(
        "GANFORGE_JOBS_DIR", REPO_ROOT / "jobs", shown="`jobs/` beside `service/`",
        help="""where jobs live (`service/jobs/`): `jobs.sqlite3` (SQLite, WAL mode), `inputs/<id>/` (uploads,
        written atomically, so a restarted server can run the job again) and `results/<id>` (written
        atomically). Every worker and every restart must see the same folder (a volume in the container);
        the startup log and `GET /models` name it""")
    jobs_db: str | None = env_var(
        "GANFORGE_JOBS_DB", None, kind="db_url", shown="unset: SQLite",
        help="""a `postgresql://user:password@host:port/db` URL: the job store that replicas share
        (`service/jobs/postgres.py`; its schema is made at start). GANFORGE_JOBS_DIR must then be one folder
        that every replica mounts (inputs and results stay files). Unset: `jobs.sqlite3` in GANFORGE_JOBS_DIR""")
    jobs_ttl_s: float = env_var(
        "GANFORGE_JOBS_TTL_S", 86400.0, minimum=1.0,
        help="""a finished job and its result are removed this many seconds after it finished (`expires_at`);
        the service sweeps them itself""")
    jobs_max_queued: int = env_var(
        "GANFORGE_JOBS_MAX_QUEUED", 100, minimum=1,
        help="jobs waiting to run (all workers) before a `Prefer: respond-async` request is answered 429")
    webhook_hosts: tuple[str, ...] = env_var(
        "GANFORGE_WEBHOOK_HOSTS", (), kind="hosts", shown="none",
        help="""comma list of host names (or host:port) a job's `webhook` may call; none: a request with
        `webhook` is refused 422""")
    webhook_secret: str | None = env_var(
        "GANFORGE_WEBHOOK_SECRET", None, kind="webhook_secret", shown="unset",
        help="the Standard Webhooks signing secret, `whsec_<base64>`; needed for webhooks")

    def precision_for(self, name: str) -> str:
        """The precision GANFORGE_PRECISION asks for model `name`."""
        return dict(self.model_precision).get(name, self.precision)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        values = {var.field: var.read(env) for var in VARIABLES}
        values["precision"], values["model_precision"] = values["precision"]
        if values["backend"] == "openvino" and values["device"] == "cuda":
            raise SettingsError("GANFORGE_BACKEND=openvino runs on the CPU; it cannot be combined with "
                                "GANFORGE_DEVICE=cuda (use GANFORGE_BACKEND=auto or onnxruntime)")
        return cls(**values)


VARIABLES: tuple[Variable, ...] = tuple(
    dataclasses.replace(f.metadata["env"], field=f.name) for f in dataclasses.fields(Settings) if "env" in f.metadata)


@functools.cache
def settings() -> Settings:
    """This process's settings: the environment read at the first call (SettingsError when a value is bad)."""
    return Settings.from_env()


# ------------------------------------------------------------------ the docs, generated


def _cell(text: str) -> str:
    return text.replace("|", r"\|")


def markdown_table() -> str:
    """The README's configuration table."""
    rows = [f"| `{v.name}` | {v.default_text()} | {_cell(v.help)} |" for v in VARIABLES]
    return "\n".join(["| variable | default | meaning |", "| --- | --- | --- |", *rows]) + "\n"


def plain_text(width: int = 100) -> str:
    """Every variable for a terminal: name, default, and the help without Markdown links."""
    out = []
    for v in VARIABLES:
        text = re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", v.help).replace("`", "")
        default = v.default_text().replace("`", "")
        out.append(f"{v.name} [{default}]\n" + textwrap.fill(text, width, initial_indent="    ",
                                                               subsequent_indent="    "))
    return "\n".join(out) + "\n"


def with_table(readme: str) -> str:
    """`readme` with the block between the env-table markers replaced by `markdown_table()`."""
    start, end = readme.find(TABLE_START), readme.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {TABLE_START} ... {TABLE_END} block")
    return readme[:start + len(TABLE_START)] + "\n" + markdown_table() + readme[end:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.config", description=__doc__.split("\n\n")[0])
    what = p.add_mutually_exclusive_group()
    what.add_argument("--markdown", action="store_true", help="print the README table")
    what.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    what.add_argument("--check", action="store_true", help="exit 1 when README.md's table is stale")
    p.add_argument("--readme", type=Path, default=README)
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
    elif args.write or args.check:
        current = args.readme.read_text()
        try:
            fresh = with_table(current)
        except ValueError as exc:
            print(f"{args.readme}: {exc}", file=sys.stderr)
            return 1
        if args.check:
            if fresh != current:
                print(f"{args.readme}: the configuration table is stale: run python -m service.config --write",
                      file=sys.stderr)
                return 1
            print(f"{args.readme}: the configuration table is up to date")
        else:
            args.readme.write_text(fresh)
            print(f"wrote the configuration table in {args.readme}")
    else:
        print(plain_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
