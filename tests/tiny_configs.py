"""Tiny run configs, one per family, over the generated datasets of conftest.tiny_datasets."""
from __future__ import annotations

import copy
from pathlib import Path

from training.registry import FAMILIES as REGISTRY
from training.registry import get_family

TRAIN = {"steps": 4, "batch_size": 4, "log_every": 1, "sample_every": 2, "ckpt_every": 2, "num_workers": 0,
         "device": "cpu", "deterministic": True, "keep_ckpts": 10}


def tiny_raw(family: str, data: dict[str, Path], out_dir: Path | None = None) -> dict:
    """The family's own tiny config (training/registry.py -> its recipe's tiny_config) + a 4-step train block."""
    raw = get_family(family).tiny_config(data)
    raw["train"] = copy.deepcopy(TRAIN)
    if out_dir is not None:
        raw["train"]["out_dir"] = str(out_dir)
    return raw


FAMILIES = list(REGISTRY)


def export_tiny_models(data: dict[str, Path], runs: Path, out: Path, log, srgan_generator: dict | None = None) -> Path:
    """One tiny model per family, trained 2 steps and exported as OUT/tiny-<family> (TorchScript, no fp16: fast)."""
    from training import checkpoint as ckpt
    from training import export as ex
    from training.config import load_config
    from training.train import train

    for family in FAMILIES:
        raw = tiny_raw(family, data)
        raw["train"].update(steps=2, ckpt_every=2, sample_every=2)
        if family == "srgan" and srgan_generator:
            raw["model"]["generator"].update(srgan_generator)
        run = train(load_config(None, raw=raw), out_dir=runs / family, log=log)
        ex.export_checkpoint(ex.ExportOptions(checkpoint=ckpt.list_checkpoints(run)[-1], name=f"tiny-{family}",
                                              out=out, exporter="torchscript", fp16=False), log=log)
    return out


def drift_onnxruntime(monkeypatch, by: float) -> None:
    """Export's parity sessions (training.export.build.cpu_session) answer `by` off onnxruntime's output."""
    from training.export import build as export_build

    real_session = export_build.cpu_session

    class Drifting:
        def __init__(self, path):
            self.inner = real_session(path)

        def run(self, names, feeds):
            return [y + by for y in self.inner.run(names, feeds)]

    monkeypatch.setattr(export_build, "cpu_session", Drifting)
