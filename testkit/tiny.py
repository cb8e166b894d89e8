"""Tiny run configs, one per family, over the generated datasets of tests/conftest.py's tiny_datasets
({"fashion": root, "photos": root}): a run of a few seconds that trains, exports and serves in the tests."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Mapping

from training.registry import FAMILIES as REGISTRY

TRAIN = {"steps": 4, "batch_size": 4, "log_every": 1, "sample_every": 2, "ckpt_every": 2, "num_workers": 0,
         "device": "cpu", "deterministic": True, "keep_ckpts": 10, "precision": "fp32"}


def _dcgan(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"family": "dcgan", "data": {"kind": "fashion_mnist", "root": str(data["fashion"]), "image_size": 32},
            "model": {"latent_dim": 8, "num_classes": 10, "channels": 1, "image_size": 32, "ngf": 8, "ndf": 8,
                      "embed_dim": 4, "minibatch_std": True, "spectral_norm": True, "aux_classifier": True,
                      "ema_decay": 0.9},
            "loss": {"gan_mode": "hinge", "mode_seeking": 1.0, "aux_class": 0.5}}


def _pix2pix(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"family": "pix2pix",
            "data": {"kind": "colorization", "root": str(data["photos"]), "load_size": None, "crop_size": 32},
            "model": {"generator": {"in_channels": 1, "out_channels": 3, "num_downs": 5, "ngf": 4},
                      "discriminator": {"ndf": 4, "n_layers": 2}}}


def _cyclegan(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"family": "cyclegan",
            "data": {"kind": "fashion_mnist_domains", "root": str(data["fashion"]), "class_a": 7, "class_b": 9,
                     "image_size": 28},
            "model": {"generator": {"in_channels": 1, "out_channels": 1, "ngf": 4, "n_blocks": 2},
                      "discriminator": {"ndf": 4, "n_layers": 2, "norm": "instance"}, "native_size": [28, 28]},
            "loss": {"pool_size": 4}}


def _srgan(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"family": "srgan", "data": {"kind": "hr_folder", "root": str(data["photos"]), "hr_size": 32, "scale": 4},
            "model": {"generator": {"nf": 8, "n_blocks": 2, "scale": 4}, "discriminator": {"ndf": 4}},
            "loss": {"stage": "pretrain"}}


# family -> its tiny config without `train`; tests/training/test_registry.py fails for a registered family missing here
TINY: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "dcgan": _dcgan, "pix2pix": _pix2pix, "cyclegan": _cyclegan, "srgan": _srgan}


def tiny_config(family: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The family's tiny run config, without `train` (the tests add theirs)."""
    if family not in TINY:
        raise KeyError(f"family {family!r} has no tiny config in testkit/tiny.py (add one beside its Family line)")
    return TINY[family](data)


def tiny_raw(family: str, data: dict[str, Path], out_dir: Path | None = None) -> dict:
    """The family's tiny config + a 4-step train block."""
    raw = tiny_config(family, data)
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
