"""Two real `bentoml serve` instances of ganforge on one host, one BENTOML_HOME (issue 25): each one's
`/metrics` counts exactly its own requests per model, and restarting one leaves the other's series as
they were. On BentoML's shared folder the second start wiped the first one's series and each `/metrics`
then summed both (service/instance.py)."""

from __future__ import annotations

import collections
import contextlib

import httpx
import pytest
from metrics_workload import png, request_tally, samples
from service_fixtures import live_metrics_dirs, running_server, write_fixture_models

pytestmark = pytest.mark.slow


def send(base: str, plan: dict[tuple[str, str], int]) -> collections.Counter:
    """`plan`: (model, endpoint) -> how many successful requests; the tally /metrics must show."""
    tally: collections.Counter = collections.Counter()
    with httpx.Client(base_url=base, timeout=120) as client:
        for (model, endpoint), n in plan.items():
            for i in range(n):
                if endpoint == "generate":
                    r = client.post("/generate", json={"model": model, "seed": i})
                else:
                    r = client.post(f"/{endpoint}", files={"image": ("a.png", png(40, 32), "image/png")},
                                    data={"model": model})
                assert r.status_code == 200, r.text[:300]
                tally[(model, endpoint, "ok", "200")] += 1
    return tally


def counted(base: str) -> collections.Counter:
    return request_tally(samples(httpx.get(f"{base}/metrics", timeout=30).text))


def test_two_instances_count_their_own_requests_and_survive_each_others_restart(tmp_path):
    models = tmp_path / "models"
    write_fixture_models(models)
    for name in ("a", "b", "b2"):
        (tmp_path / name).mkdir()
    home = tmp_path / "shared_home"  # both instances on one BENTOML_HOME, as ~/bentoml by default
    env = {"BENTOML_HOME": str(home), "GANFORGE_WORKERS": "1", "GANFORGE_DEVICE": "cpu"}
    plan_a = {("fashion-dcgan", "generate"): 3, ("srresnet-x4", "upscale"): 1}
    plan_b = {("edges2color", "translate"): 2, ("fashion-dcgan", "generate"): 1}
    with running_server(models, tmp_path / "a", **env) as (base_a, _):
        tally_a = send(base_a, plan_a)
        assert counted(base_a) == tally_a
        with contextlib.ExitStack() as b_stack:
            base_b, _ = b_stack.enter_context(running_server(models, tmp_path / "b", **env))
            assert counted(base_a) == tally_a  # B's start wiped nothing of A's
            assert len(live_metrics_dirs(home)) == 2  # one folder per instance
            assert counted(base_b) == collections.Counter()  # and B shows none of A's
            tally_b = send(base_b, plan_b)
            assert counted(base_a) == tally_a
            assert counted(base_b) == tally_b
            b_stack.close()  # B stops ...
        with running_server(models, tmp_path / "b2", **env) as (base_b2, _):  # ... and starts again
            assert counted(base_a) == tally_a
            assert counted(base_b2) == collections.Counter()
            again = send(base_b2, {("srresnet-x4", "upscale"): 2})
            assert counted(base_b2) == again
            assert counted(base_a) == tally_a
        assert len(live_metrics_dirs(home)) == 1
