"""Known requests across models and outcomes, and reading ganforge's series back (tests/test_metrics*.py).

`send_known_requests` sends each case, checks the status it expects, and returns the client's own
tally per (model, endpoint, outcome, status): what the server's `ganforge_requests_total` must say.
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from core.tiling import tile_grid
from service_fixtures import encode, synthetic_photo, write_fixture_models

BROKEN = "broken-x4"  # a model folder whose card cannot be read: unavailable, 503 when asked for
TILED = (300, 200)  # an /upscale input larger than srresnet-x4's fixture tile


def models_with_a_broken_one(root: Path) -> Path:
    write_fixture_models(root)
    broken = root / BROKEN
    shutil.copytree(root / "srresnet-x4", broken)
    (broken / "card.json").write_text("{ not json")
    return root


def png(w: int, h: int, seed: int = 0) -> bytes:
    return encode(Image.fromarray(synthetic_photo(w, h, seed)))


def cases() -> list[tuple[str, dict, tuple[str, str, str, int]]]:
    """(path, httpx keyword arguments, (model, endpoint, outcome, status) expected)."""
    small, tiled = png(40, 30, 1), png(*TILED, seed=2)
    up = lambda png, **data: {"files": {"image": ("a.png", png, "image/png")}, "data": data}  # noqa: E731
    return [
        *[("/generate", {"json": {"model": "fashion-dcgan", "seed": s}}, ("fashion-dcgan", "generate", "ok", 200))
          for s in range(3)],
        ("/generate", {"json": {"model": "fashion-dcgan", "n": 4, "seed": 9}}, ("fashion-dcgan", "generate", "ok", 200)),
        ("/generate", {"json": {"model": "fashion-dcgan", "n": 0}}, ("fashion-dcgan", "generate", "client_error", 422)),
        *[("/upscale", up(small, model="srresnet-x4"), ("srresnet-x4", "upscale", "ok", 200)) for _ in range(2)],
        ("/upscale", up(tiled), ("srresnet-x4", "upscale", "ok", 200)),
        *[("/upscale", up(b"not an image", model="srresnet-x4"), ("srresnet-x4", "upscale", "client_error", 400))
          for _ in range(2)],
        *[("/translate", up(png(45, 27, 3), model="edges2color"), ("edges2color", "translate", "ok", 200))
          for _ in range(2)],
        ("/translate", up(small, model="shoe2boot", direction="b2a"), ("shoe2boot", "translate", "ok", 200)),
        ("/translate", up(small, model="nope"), ("-", "translate", "client_error", 404)),
        ("/generate", {"content": b"seed=1", "headers": {"Content-Type": "text/plain"}},
         ("-", "generate", "client_error", 415)),
        ("/upscale", up(small, model=BROKEN), (BROKEN, "upscale", "server_error", 503)),
    ]


def send_known_requests(client) -> collections.Counter:
    """Send every case once (`client`: an httpx.Client on the server); the tally of what was answered."""
    tally: collections.Counter = collections.Counter()
    for path, kwargs, (model, endpoint, outcome, status) in cases():
        r = client.post(path, **kwargs)
        assert r.status_code == status, (path, r.status_code, r.text[:300])
        tally[(model, endpoint, outcome, str(status))] += 1
    return tally


def per_worker_requests(multiproc_dir: Path) -> dict[str, float]:
    """ganforge_requests_total per worker, from each worker's own counter file (prometheus_client's
    multiprocess files, counter_<pid>.db, read one at a time)."""
    import tempfile

    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    counts = {}
    for db in sorted(multiproc_dir.glob("counter_*.db")):
        with tempfile.TemporaryDirectory() as one:
            shutil.copy(db, one)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, one)
            counts[db.stem] = sum(s.value for m in registry.collect() for s in m.samples
                                  if s.name == "ganforge_requests_total")
    return {pid: n for pid, n in counts.items() if n}


def expected_tiles(models: dict) -> int:
    """Graph runs (tiles) the /upscale cases cost srresnet-x4, from its tiling in GET /models."""
    tiling = models["srresnet-x4"]["tiling"]
    ys, xs, _, _ = tile_grid(TILED[1], TILED[0], tiling["tile"], tiling["overlap"])
    return 2 + len(ys) * len(xs)  # two small ones (one tile each) and the tiled one


def samples(text: str) -> dict[tuple, float]:
    """/metrics text -> {(sample name, sorted label items): value} for the ganforge_ series."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("ganforge_"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(series: dict[tuple, float], name: str, **labels: str) -> float:
    """Sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, items), v in series.items() if n == name and want <= set(items))


def request_tally(series: dict[tuple, float]) -> collections.Counter:
    """ganforge_requests_total as the client's tally: (model, endpoint, outcome, status) -> count."""
    tally: collections.Counter = collections.Counter()
    for (name, items), value in series.items():
        if name == "ganforge_requests_total" and value:
            d = dict(items)
            tally[(d["model"], d["endpoint"], d["outcome"], d["status"])] += int(value)
    return tally


def dumps(tally: collections.Counter) -> str:
    return json.dumps(sorted([list(k) + [v] for k, v in tally.items()]))
