"""Generator architectures by name: a recipe builds `model.generator.arch` from here, so one recipe
can train another network without a fork (the SRGAN recipe with an RRDB generator: `arch: rrdb`).

Each entry is "module:Network" whose class attribute `Config` is its dataclass config. Adding an
architecture is one network file plus one line.
"""
from __future__ import annotations

import importlib
from typing import Any

ARCHS: dict[str, str] = {
    "unet": "training.networks.pix2pix:UNetGenerator",
    "resnet": "training.networks.cyclegan:ResnetGenerator",
    "srresnet": "training.networks.srgan:SRResNet",
    "rrdb": "training.networks.rrdb:RRDBNet",
}


def network_class(arch: str) -> type:
    try:
        module, name = ARCHS[arch].split(":")
    except KeyError:
        raise ValueError(f"unknown generator arch {arch!r} (known: {', '.join(ARCHS)})") from None
    return getattr(importlib.import_module(module), name)


def arch_config(values: Any, default_arch: str, where: str = "generator"):
    """`model.generator` as its arch's typed config (`arch` picks the network; absent: the recipe's default)."""
    from ..config import coerce

    if values is not None and not isinstance(values, dict):
        return values  # already typed
    values = dict(values or {})
    arch = values.get("arch", default_arch)
    cls = network_class(arch).Config
    values["arch"] = arch
    return coerce(cls, values, where)


def build_generator(config) -> Any:
    """The network of a typed generator config (its `arch` field names it)."""
    return network_class(config.arch)(config)
