"""Tiny run configs, one per family, over the generated datasets of conftest.tiny_datasets."""
from __future__ import annotations

import copy
from pathlib import Path

TRAIN = {"steps": 4, "batch_size": 4, "log_every": 1, "sample_every": 2, "ckpt_every": 2, "num_workers": 0,
         "device": "cpu", "deterministic": True, "keep_ckpts": 10}


def tiny_raw(family: str, data: dict[str, Path], out_dir: Path | None = None) -> dict:
    if family == "dcgan":
        raw = {"family": "dcgan", "data": {"kind": "fashion_mnist", "root": str(data["fashion"]), "image_size": 32},
               "model": {"latent_dim": 8, "num_classes": 10, "channels": 1, "image_size": 32, "ngf": 8, "ndf": 8,
                         "embed_dim": 4, "minibatch_std": True},
               "loss": {"real_label": 0.9, "mode_seeking": 1.0}}
    elif family == "pix2pix":
        raw = {"family": "pix2pix",
               "data": {"kind": "colorization", "root": str(data["photos"]), "load_size": None, "crop_size": 32},
               "model": {"generator": {"in_channels": 1, "out_channels": 3, "num_downs": 5, "ngf": 4},
                         "discriminator": {"ndf": 4, "n_layers": 2}}}
    elif family == "cyclegan":
        raw = {"family": "cyclegan",
               "data": {"kind": "fashion_mnist_domains", "root": str(data["fashion"]), "class_a": 7, "class_b": 9,
                        "image_size": 28},
               "model": {"generator": {"in_channels": 1, "out_channels": 1, "ngf": 4, "n_blocks": 2},
                         "discriminator": {"ndf": 4, "n_layers": 2, "norm": "instance"}, "native_size": [28, 28]},
               "loss": {"pool_size": 4}}
    elif family == "srgan":
        raw = {"family": "srgan", "data": {"kind": "hr_folder", "root": str(data["photos"]), "hr_size": 32, "scale": 4},
               "model": {"generator": {"nf": 8, "n_blocks": 2, "scale": 4}, "discriminator": {"ndf": 4}},
               "loss": {"stage": "pretrain"}}
    else:
        raise ValueError(family)
    raw["train"] = copy.deepcopy(TRAIN)
    if out_dir is not None:
        raw["train"]["out_dir"] = str(out_dir)
    return raw


FAMILIES = ["dcgan", "pix2pix", "cyclegan", "srgan"]


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
        ex.export_checkpoint(ckpt.list_checkpoints(run)[-1], f"tiny-{family}", out, exporter="torchscript",
                             fp16=False, log=log)
    return out
