"""Family name -> recipe class. Adding a family is one recipe file plus one line here.

Imports are lazy (by dotted path) so that nothing is scanned or imported at start-up.
"""
from __future__ import annotations

import importlib

FAMILIES = {
    "dcgan": "training.recipes.dcgan:DCGANRecipe",
    "pix2pix": "training.recipes.pix2pix:Pix2PixRecipe",
    "cyclegan": "training.recipes.cyclegan:CycleGANRecipe",
    "srgan": "training.recipes.srgan:SRGANRecipe",
}


def get_recipe_class(family: str):
    try:
        target = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})") from None
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
