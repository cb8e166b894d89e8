"""How each kind of GANFORGE_* variable is parsed (service/config.py declares the variables): one reader per
`Variable.kind`, given the variable (its name, default, minimum, choices) and the raw text; SettingsError names
the variable when the text is unusable."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any, Callable


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def read_path(var: Any, raw: str) -> Path:
    raw = raw.strip()
    return Path(raw).expanduser().resolve() if raw else var.default


def read_text(var: Any, raw: str) -> str | None:
    return raw if raw.strip() else var.default


def read_choice(var: Any, raw: str) -> str:
    value = raw.strip().lower() or var.default
    if value not in var.choices:
        raise SettingsError(f"{var.name}={value!r} must be one of {', '.join(var.choices)}")
    return value


def read_number(var: Any, raw: str, parse: Callable[[str], Any], what: str) -> Any:
    """`parse(raw)` held to the variable's minimum (NaN fails it too); the default when empty."""
    raw = raw.strip()
    if not raw:
        return var.default
    try:
        value = parse(raw)
    except ValueError:
        raise SettingsError(f"{var.name}={raw!r} is not {what}") from None
    if not value >= var.minimum:
        raise SettingsError(f"{var.name}={value} must be >= {var.minimum}")
    return value


def read_int(var: Any, raw: str) -> int:
    return read_number(var, raw, lambda text: int(text.replace("_", "")), "an integer")


def read_float(var: Any, raw: str) -> float:
    return read_number(var, raw, float, "a number")


def read_bool(var: Any, raw: str) -> bool:
    raw = raw.strip().lower()
    if not raw:
        return var.default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{var.name}={raw!r} must be 0 or 1")


def read_precision(var: Any, raw: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`int8`, `name:int8,other:fp32` or `int8,name:fp32` -> (default, ((model, precision), ...))."""
    default, per_model = None, {}
    for item in raw.replace(" ", "").split(","):
        if not item:
            continue
        model, _, value = item.rpartition(":")
        value = value.lower()
        if value not in var.choices:
            raise SettingsError(f"{var.name}: {item!r} must be PRECISION or NAME:PRECISION, PRECISION one of "
                                f"{', '.join(var.choices)}")
        if not model:
            if default is not None:
                raise SettingsError(f"{var.name}={raw!r} gives more than one default precision")
            default = value
        elif model in per_model:
            raise SettingsError(f"{var.name}: model {model!r} is named twice")
        else:
            per_model[model] = value
    return default or var.default, tuple(sorted(per_model.items()))


def read_hosts(var: Any, raw: str) -> tuple[str, ...]:
    """`a.example, b.example:8080` -> ("a.example", "b.example:8080"), lower case."""
    hosts = []
    for item in raw.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if "/" in item or "@" in item or " " in item:
            raise SettingsError(f"{var.name}: {item!r} must be a host name or host:port, not a URL")
        hosts.append(item)
    return tuple(hosts)


def read_webhook_secret(var: Any, raw: str) -> str | None:
    """Standard Webhooks' secret form: `whsec_` + base64 of the key (24 to 64 bytes)."""
    raw = raw.strip()
    if not raw:
        return None
    if not raw.startswith("whsec_"):
        raise SettingsError(f"{var.name} must be in the form whsec_<base64 key>")
    try:
        key = base64.b64decode(raw[len("whsec_"):], validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(f"{var.name}: the part after whsec_ is not base64") from None
    if not 24 <= len(key) <= 64:
        raise SettingsError(f"{var.name}: the key must be 24 to 64 bytes, got {len(key)}")
    return raw


def read_db_url(var: Any, raw: str) -> str | None:
    """A PostgreSQL URL, or None (unset: the embedded SQLite store)."""
    raw = raw.strip()
    if raw and not raw.startswith(("postgresql://", "postgres://")):
        raise SettingsError(f"{var.name} must be a postgresql:// URL (unset: SQLite in GANFORGE_JOBS_DIR)")
    return raw or None


READERS: dict[str, Callable[[Any, str], Any]] = {
    "path": read_path, "text": read_text, "choice": read_choice, "int": read_int, "float": read_float,
    "bool": read_bool, "precision": read_precision, "hosts": read_hosts, "webhook_secret": read_webhook_secret,
    "db_url": read_db_url,
}
