"""Every family, with everything family-specific, in one table; networks come from networks/registry.py.

A family is one recipe file (its networks' wiring, losses, training step and export specs) plus one
`Family(...)` line below: the CLI, export, evaluation and the sample sheets find it all here (the
tests' tiny run config of each family lives in testkit/tiny.py, outside the product). Entries are dotted paths, imported when first used, so that nothing is
scanned or imported at start-up (and this module needs no torch).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Family:
    name: str
    endpoint: str  # generate | translate | upscale
    recipe: str  # "module:Class" of the Recipe
    evaluate: str  # "module:function" computing the card's metrics.heldout (training/evaluate.py)
    sheet: str  # "module:function" drawing its sample sheet (training/sheets.py)
    # role -> the dataset sample field that feeds that graph (parity at export, int8 calibration, eval)
    real_inputs: Mapping[str, str] = field(default_factory=dict)

    def recipe_class(self) -> type:
        return load(self.recipe)

    def evaluator(self) -> Callable[..., Any]:
        return load(self.evaluate)

    def sheet_maker(self) -> Callable[..., Any]:
        return load(self.sheet)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("dcgan", "generate", "training.recipes.dcgan:DCGANRecipe",
           "training.evaluate:eval_generate", "training.sheets:sheet_generate"),
    Family("pix2pix", "translate", "training.recipes.pix2pix:Pix2PixRecipe",
           "training.evaluate:eval_pix2pix", "training.sheets:sheet_pix2pix", {"generator": "A"}),
    Family("cyclegan", "translate", "training.recipes.cyclegan:CycleGANRecipe",
           "training.evaluate:eval_cyclegan", "training.sheets:sheet_cyclegan", {"a2b": "A", "b2a": "B"}),
    Family("srgan", "upscale", "training.recipes.srgan:SRGANRecipe",
           "training.evaluate:eval_upscale", "training.sheets:sheet_upscale", {"generator": "lr"}),
)}


def load(target: str) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r} (known: {', '.join(FAMILIES)})") from None


def get_recipe_class(family: str):
    return get_family(family).recipe_class()
