"""Training as users run it: the CLI in a subprocess, SIGKILL + resume, and 2-process DDP (gloo)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from testkit.tiny import tiny_raw
from training import checkpoint as ckpt
from training.config import load_config
from training.recipes.base import Recipe
from training.train import train

pytestmark = pytest.mark.slow


def _write_config(raw, path):
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(*args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=kw.pop("cwd", None), timeout=kw.pop("timeout", 300), **kw)


def _assert_same_nets(a, b, atol):
    assert a.keys() == b.keys()
    for net in a:
        for k in a[net]:
            torch.testing.assert_close(b[net][k], a[net][k], rtol=0, atol=atol, msg=f"{net}.{k}")


def test_cli_help_lists_verbs():
    out = _cli("--help")
    assert out.returncode == 0
    for verb in ("train", "prepare", "export", "eval"):
        assert verb in out.stdout


def test_cli_reports_config_errors(tiny_datasets, tmp_path):
    cfg = _write_config(tiny_raw("dcgan", tiny_datasets), tmp_path / "c.yaml")
    out = _cli("train", cfg, "train.stepz=3")
    assert out.returncode == 2 and "unknown key(s) in train: stepz" in out.stderr
    assert "Traceback" not in out.stderr
    bad = tiny_raw("dcgan", tiny_datasets)
    bad["data"]["root"] = str(tmp_path / "missing")
    out = _cli("train", _write_config(bad, tmp_path / "bad.yaml"))
    assert out.returncode == 2 and str(tmp_path / "missing") in out.stderr


def test_sigkill_then_resume_matches_straight_run(tiny_datasets, tmp_path):
    raw = tiny_raw("dcgan", tiny_datasets)
    raw["train"].update(steps=60, ckpt_every=1, keep_ckpts=3, log_every=10, sample_every=1000)
    cfg_path = _write_config(raw, tmp_path / "dcgan.yaml")
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "training", "train", str(cfg_path), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(ckpt.list_checkpoints(run)) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = ckpt.latest_valid(run)[1]["step"]
    assert proc.returncode == -signal.SIGKILL and 0 < killed_at < 60, "the run must be killed mid-way"

    out = _cli("train", cfg_path, "--resume", "--out", run)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"resuming from" in out.stdout and f"(step {killed_at})" in out.stdout

    # the straight run on the same thread count (OMP_NUM_THREADS=1): reductions split across threads
    # round differently, and 60 GAN steps amplify that past 1e-6
    straight = tmp_path / "straight"
    assert _cli("train", cfg_path, "--out", straight).returncode == 0
    _assert_same_nets(ckpt.latest_valid(straight)[1]["nets"], ckpt.latest_valid(run)[1]["nets"], atol=1e-6)
    steps = [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # no duplicated rows after the resume


def test_sigterm_saves_a_checkpoint_and_exits(tiny_datasets, tmp_path):
    raw = tiny_raw("dcgan", tiny_datasets)
    raw["train"].update(steps=100000, ckpt_every=100000, log_every=1)
    cfg_path = _write_config(raw, tmp_path / "dcgan.yaml")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "training", "train", str(cfg_path), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "metrics.csv").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    found = ckpt.latest_valid(run)
    assert found is not None and found[1]["step"] > 0


def test_ddp_two_processes_match_one(tiny_datasets, tmp_path):
    """torchrun --nproc_per_node=2 (gloo): the global batch is split, gradients averaged -> same weights."""
    raw = tiny_raw("cyclegan", tiny_datasets)  # instance norm only: per-sample, so the split is exact
    raw["loss"]["pool_size"] = 0  # the pool is per process; without it the runs are the same maths
    raw["train"].update(steps=3, ckpt_every=3, sample_every=3)
    cfg_path = _write_config(raw, tmp_path / "cyclegan.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "training", "train", str(cfg_path), "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "processes 2" in out.stdout
    single = train(load_config(None, raw=raw), out_dir=tmp_path / "single", log=lambda *a: None)
    # Compare what the networks compute, not raw weights: a conv bias just before an affine-free
    # instance norm has a zero gradient up to rounding noise, which Adam scales up to full steps.
    a = Recipe.from_checkpoint(ckpt.latest_valid(single)[1])
    b = Recipe.from_checkpoint(ckpt.latest_valid(tmp_path / "ddp")[1])
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    initial = Recipe.from_checkpoint({**ckpt.latest_valid(single)[1], "nets": {}}, init_only=True)
    for name in a.nets:
        with torch.no_grad():
            ya, yb, y0 = a.nets[name].eval()(x), b.nets[name].eval()(x), initial.nets[name].eval()(x)
        assert (ya - y0).abs().max() > 1e-3, f"{name} did not train"
        torch.testing.assert_close(yb, ya, rtol=0, atol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~1 min on an idle 2-core machine; far more when training runs beside it
def test_sigkill_at_random_steps_resumes_from_the_last_good_checkpoint(tiny_datasets, tmp_path):
    """Two SIGKILLs at random steps (the seed is in the failure message), each followed by --resume:
    the run ends with the very weights of an uninterrupted run."""
    import random

    seed = int(time.time())
    rng = random.Random(seed)
    steps = 12
    raw = tiny_raw("dcgan", tiny_datasets)
    raw["train"].update(steps=steps, ckpt_every=1, keep_ckpts=3, log_every=10, sample_every=1000)
    cfg_path = tmp_path / "dcgan.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "training", "train", str(cfg_path), "--out", str(run)]
    killed_at = []
    for kill in range(2):
        done = ckpt.latest_valid(run)[1]["step"] if ckpt.list_checkpoints(run) else 0
        target = rng.randint(done + 1, done + 4)
        proc = subprocess.Popen(cmd + (["--resume"] if kill else []), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        deadline = time.time() + 600  # generous: a busy 2-core machine starves a niced run
        while time.time() < deadline and proc.poll() is None:
            found = ckpt.list_checkpoints(run)
            if found and int(found[-1].stem.split("-")[-1]) >= target:
                break
            time.sleep(0.005)  # polling interval, not an assertion
        proc.kill()
        proc.wait(timeout=30)
        assert proc.returncode == -9, f"seed {seed}: the run ended before the kill at step {target}"
        killed_at.append(ckpt.latest_valid(run)[1]["step"])
        assert killed_at[-1] >= target, f"seed {seed}"
    out = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"(step {killed_at[-1]})" in out.stdout, (seed, out.stdout[-1000:])
    straight = train(load_config(None, raw=raw), out_dir=tmp_path / "straight", log=lambda *a: None)
    a, b = ckpt.latest_valid(straight)[1]["nets"], ckpt.latest_valid(run)[1]["nets"]
    assert ckpt.latest_valid(run)[1]["step"] == steps
    for net in a:
        for k in a[net]:
            torch.testing.assert_close(b[net][k], a[net][k], rtol=0, atol=1e-6, msg=f"seed {seed}: {net}.{k}")
