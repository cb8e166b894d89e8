"""Run configuration: YAML file + `key=value` overrides -> nested dataclasses.

A run config has four parts: `data` (the reader, see data.py), `model` (the
family's network config), `loss` (the family's loss weights) and `train` (the
loop). `model` and `loss` are typed by the family's recipe (registry.py).

`init_from` (top level, optional) starts a fresh run's generator(s) from weights
made elsewhere (a file `python -m training import` reads: Real-ESRGAN/ESRGAN for
`arch: rrdb`, junyanz generators for `resnet` / `unet`): one file, or for
cyclegan a list [G_A file, G_B file]. A resumed run ignores it (its checkpoint
carries the weights). See training/recipes/init_from.py.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contract.typed import from_plain, hints

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # train.precision (training/precision.py)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16  # global: split evenly over DDP processes
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lr_decay_start: float = 1.0  # fraction of steps after which lr decays linearly to 0 (1.0 = constant)
    log_every: int = 50
    sample_every: int = 500
    ckpt_every: int = 500
    keep_ckpts: int = 3
    num_workers: int = 2
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = False  # bit-exact resume (deterministic kernels)
    out_dir: str = "runs/default"
    max_grad_norm: float = 0.0  # 0 = no clipping
    # auto: bf16 autocast where native (CPU amx_bf16 / avx512_bf16, CUDA with bf16), else fp32 | fp32 | bf16 |
    # fp16 (CUDA only, with a GradScaler). Losses, weights, optimizer state, EMA and checkpoints stay fp32.
    precision: str = "auto"

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass
class RunConfig:
    family: str
    name: str = "default"
    seed: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    model: Any = None
    loss: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    init_from: str | list[str] | None = None  # imported weights for the generator(s) at a fresh start

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)


def to_plain(obj: Any) -> Any:
    """Dataclasses / tuples / paths -> JSON- and YAML-safe plain values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def coerce(cls, values: dict[str, Any], where: str):
    """Build dataclass `cls` from a dict, refusing unknown keys (typos must not pass silently); each value is
    read against its field's annotation by the card's reader (contract.typed.from_plain: ints widened to
    floats, lists to tuples, a wrong type named by its dotted key). A field typed by a dataclass, or Any, is
    passed as given: the class's __post_init__ types it (a generator's config is chosen by its `arch`)."""
    if values is None:
        values = {}
    if dataclasses.is_dataclass(values):
        return values
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(unknown)} (known: {', '.join(sorted(names))})")
    types = hints(cls)
    return cls(**{k: v if _typed_by_the_class(types[k]) else from_plain(types[k], v, f"{where}.{k}")
                  for k, v in values.items()})


def _typed_by_the_class(tp: Any) -> bool:
    return tp is Any or dataclasses.is_dataclass(tp)


def parse_value(text: str) -> Any:
    """`key=value` override values are YAML scalars: 3, 2e-4, true, null, [1, 2], cuda."""
    return yaml.safe_load(text)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. train.steps=100)")
        key, value = item.split("=", 1)
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r}: {p!r} is not a section")
        node[parts[-1]] = parse_value(value)
    return raw


def load_config(path: str | Path | None, overrides: list[str] = (), raw: dict | None = None) -> RunConfig:
    """Read a YAML config (or a dict, e.g. from a checkpoint), apply overrides, type it by family."""
    from .registry import FAMILIES, get_recipe_class

    if raw is None:
        text = Path(path).read_text()
        raw = yaml.safe_load(text) or {}
    raw = apply_overrides(dict(raw), list(overrides))
    if "family" not in raw:
        raise ValueError(f"{path or 'config'}: missing 'family' (one of {', '.join(FAMILIES)})")
    recipe_cls = get_recipe_class(raw["family"])
    known = {"family", "name", "seed", "data", "model", "loss", "train", "init_from"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown top-level key(s): {', '.join(unknown)}")
    return RunConfig(
        family=raw["family"],
        name=raw.get("name", "default"),
        seed=int(raw.get("seed", 0)),
        data=dict(raw.get("data") or {}),
        model=coerce(recipe_cls.ModelConfig, raw.get("model"), "model"),
        loss=coerce(recipe_cls.LossConfig, raw.get("loss"), "loss"),
        train=coerce(TrainConfig, raw.get("train"), "train"),
        init_from=init_files(raw.get("init_from")),
    )


def init_files(value: Any) -> str | list[str] | None:
    """`init_from`: null, one file, or a list of files (one per generator)."""
    if value is None or value == [] or value == "":
        return None
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, Path)) and str(v) for v in value):
        return [str(v) for v in value]
    raise ValueError(f"init_from must be a file or a list of files, got {value!r}")
