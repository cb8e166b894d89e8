"""argparse -> options dataclass: the one way a `python -m training VERB` hands its arguments to its function.

Every verb's parser names its destinations after the fields of the verb's options dataclass
(`@dataclass(frozen=True, kw_only=True)`), so the parsed namespace becomes the options by keyword,
and a field that no argument fills fails here rather than reaching the function as a default.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import TypeVar

T = TypeVar("T")


def options_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """`cls` built by keyword from the namespace's attributes named like its fields."""
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [name for name in names if not hasattr(args, name)]
    if missing:
        raise TypeError(f"{cls.__name__}: the parser fills no {', '.join(missing)}")
    return cls(**{name: getattr(args, name) for name in names})
