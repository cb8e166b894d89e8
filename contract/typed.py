"""Typed JSON: plain dicts <-> dataclasses, validated by the dataclasses' own annotations.

The card (contract/card.py) is a tree of dataclasses. `from_plain` walks the
annotations (int, float, str, bool, Literal, Optional, list[X], tuple[X, X],
dict[str, X], nested dataclasses, Any) and the per-field `metadata`
(`minimum`, `pattern`, `doc`), so the one declaration gives the reader, the
writer (`to_plain`) and the JSON Schema (contract/schema.py). Every error names
the field by its dotted path: `input.channels must be 1 or 3, got 5`.

A dataclass whose class has `OPEN = True` keeps keys it does not declare in its
`extra` dict (free-form measured figures: metrics, variants); any other class
refuses unknown keys, so a typo cannot pass silently.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, Literal, Union


class CardError(ValueError):
    """A card does not follow the contract; the message names the field."""


class CardUnreadable(CardError):
    """card.json is missing, not UTF-8 JSON, or not a JSON object: no field to name."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def declared_fields(cls: type) -> list[dataclasses.Field]:
    """The fields a card document carries (not the `extra` catch-all of an open class)."""
    return [f for f in dataclasses.fields(cls) if f.name != "extra"]


def is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _optional_inner(tp: Any) -> Any | None:
    """X for Optional[X] / X | None, else None."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _check_meta(value: Any, meta: typing.Mapping[str, Any], where: str) -> None:
    if "minimum" in meta and value < meta["minimum"]:
        raise CardError(f"{where} must be >= {meta['minimum']}, got {_shown(value)}")
    if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
        rule = meta.get("rule") or f"match {meta['pattern']}"
        raise CardError(f"{where} must {rule}, got {_shown(value)}")
    if "enum" in meta and value not in meta["enum"]:
        allowed = " or ".join(str(v) for v in meta["enum"])
        raise CardError(f"{where} must be {allowed}, got {_shown(value)}")


def from_plain(tp: Any, value: Any, where: str, meta: typing.Mapping[str, Any] = types.MappingProxyType({})) -> Any:
    """`value` (parsed JSON) checked against the annotation `tp`; dataclasses built. Raises CardError."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else from_plain(inner, value, where, meta)
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            allowed = ", ".join(str(v) for v in typing.get_args(tp))
            raise CardError(f"{where} must be one of {allowed}, got {_shown(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _dataclass_from_plain(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise CardError(f"{where} must be true or false, got {_shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CardError(f"{where} must be an integer, got {_shown(value)}")
        _check_meta(value, meta, where)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CardError(f"{where} must be a finite number, got {_shown(value)}")
        _check_meta(value, meta, where)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise CardError(f"{where} must be a string, got {_shown(value)}")
        _check_meta(value, meta, where)
        return value
    if origin is list:
        if not isinstance(value, list):
            raise CardError(f"{where} must be a list, got {_shown(value)}")
        (item,) = typing.get_args(tp)
        return [from_plain(item, v, f"{where}[{i}]", meta) for i, v in enumerate(value)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise CardError(f"{where} must be a list of {len(args)}, got {_shown(value)}")
        return tuple(from_plain(a, v, f"{where}[{i}]", meta) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise CardError(f"{where} must be an object, got {_shown(value)}")
        return {str(k): from_plain(item, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (Union, types.UnionType):  # int | str (a graph dim)
        for option in typing.get_args(tp):
            try:
                return from_plain(option, value, where, meta)
            except CardError:
                continue
        raise CardError(f"{where} has the wrong type: {_shown(value)}")
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


def _dataclass_from_plain(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise CardError(f"{where or 'the card'} must be a JSON object, got {_shown(value)}")
    types_of = hints(cls)
    kwargs: dict[str, Any] = {}
    prefix = f"{where}." if where else ""
    known = set()
    for f in declared_fields(cls):
        known.add(f.name)
        if f.name not in value:
            if is_required(f):
                raise CardError(f"{prefix}{f.name} is missing")
            continue
        kwargs[f.name] = from_plain(types_of[f.name], value[f.name], f"{prefix}{f.name}", f.metadata)
    unknown = [k for k in value if k not in known]
    if getattr(cls, "OPEN", False):
        kwargs["extra"] = {k: value[k] for k in unknown}
    elif unknown:
        raise CardError(f"{prefix}{unknown[0]} is not a field of the card"
                        + (f" ({where})" if where else "") + f"; known: {', '.join(sorted(known))}")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(where)
    return obj


def to_plain(value: Any) -> Any:
    """Dataclasses -> dicts in field order, leaving out None and empty optional blocks; open extras last."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in declared_fields(type(value)):
            v = getattr(value, f.name)
            if not is_required(f) and ((v is None and not f.metadata.get("keep_null"))
                                       or (isinstance(v, (dict, list)) and not v)
                                       or (f.metadata.get("omit_default") and v == f.default)):
                continue
            out[f.name] = to_plain(v)
        for k, v in (getattr(value, "extra", None) or {}).items():
            out[k] = to_plain(v)
        return out
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
