"""A weights file -> (state dict, how it was wrapped), without ever running code from the file.

`.pth` / `.pt` / `.ckpt` / `.bin` go through `torch.load(weights_only=True)`: a pickle that names any
Python object beyond tensors and plain containers is refused (`UnsafeCheckpoint`), and nothing in it
runs. `.safetensors` holds no code at all. When torch refuses a file, the pickle stream is walked with
`pickletools` (a disassembler: it reads opcodes, never resolves or calls anything) to tell a file that
carries objects/code from one that is merely truncated or corrupt.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import NotACheckpoint, UnsafeCheckpoint

SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")
# where trainers keep the weights, most preferred first (BasicSR/Real-ESRGAN save both params_ema and params)
WRAPPERS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "net",
            "netG", "generator")
PREFIXES = ("module.", "netG.")  # DataParallel / DistributedDataParallel, and netG-wrapped generators
REFUSED_MESSAGE = "refused: the file carries Python objects/code, not just weights (weights-only loading)"
# globals a plain tensor checkpoint names; anything else is an object the weights-only loader refuses
_TENSOR_GLOBALS = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                   "torch._utils._rebuild_parameter_with_state", "torch._tensor._rebuild_from_type_v2",
                   "torch.Size", "torch.device", "_codecs.encode", "builtins.set", "__builtin__.set"}
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of a checkpoint file and `{"wrapper": ..., "prefix_stripped": ...}`."""
    path = Path(path)
    if not path.is_file():
        raise NotACheckpoint(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    if path.suffix.lower() not in SUFFIXES:
        raise NotACheckpoint(f"{path.name}: unsupported file type {path.suffix or '(none)'!r} "
                             f"(accepted: {', '.join(SUFFIXES)})")
    head = path.open("rb").read(16)
    if path.suffix.lower() == ".safetensors" or looks_like_safetensors(head, path.stat().st_size):
        raw: Any = read_safetensors(path)
    elif head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save zip / legacy pickle
        raw = read_torch(path)
    else:
        raise NotACheckpoint(f"{path.name}: not a checkpoint (neither a torch.save zip or pickle nor safetensors)")
    return unwrap(raw, path.name)


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise NotACheckpoint(f"{path.name}: unreadable safetensors file, truncated or corrupt ({e})") from None


def read_torch(path: Path) -> Any:
    try:
        with warnings.catch_warnings():  # protocol / TorchScript notices: the errors below say it better
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        found = refused_globals(path)
        if found:
            raise UnsafeCheckpoint(f"{path.name}: {REFUSED_MESSAGE}; it names {', '.join(found[:5])}. "
                                   "If you trust it, load it yourself and save its state_dict() or a "
                                   ".safetensors file") from None
        raise NotACheckpoint(f"{path.name}: not a readable checkpoint, truncated or corrupt "
                             "(its pickle stream breaks off)") from None
    except Exception as e:  # noqa: BLE001 - zip/stream errors of a damaged file come in many types
        if "TorchScript" in str(e):
            raise UnsafeCheckpoint(f"{path.name}: {REFUSED_MESSAGE}; it is a TorchScript archive "
                                   "(a program, not a weights file)") from None
        raise NotACheckpoint(f"{path.name}: not a readable checkpoint, truncated or corrupt "
                             f"({type(e).__name__}: {first_line(e)})") from None


def first_line(e: BaseException) -> str:
    return " ".join(str(e).split(". ")[0].split())[:200]


def pickle_streams(path: Path) -> list[bytes]:
    """The pickle bytes of a torch file: `*/data.pkl` of a zip, else the file itself (legacy format)."""
    data = path.read_bytes()
    if not data.startswith(b"PK\x03\x04"):
        return [data]
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return [zf.read(n) for n in zf.namelist() if n.endswith(".pkl")]
    except (zipfile.BadZipFile, OSError, EOFError):
        return []


def refused_globals(path: Path) -> list[str]:
    """Python objects (module.name) a pickle names beyond tensors; read by disassembly, nothing resolved."""
    found: list[str] = []
    for stream in pickle_streams(path):
        buf = io.BytesIO(stream)
        for _ in range(5):  # the legacy format is a few pickles in a row (magic, version, info, object, keys)
            if buf.tell() >= len(stream) or not scan_pickle(buf, found):
                break
    return [g for g in dict.fromkeys(found) if g not in _TENSOR_GLOBALS and not is_storage(g)]


def is_storage(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return module == "torch" and (attr.endswith("Storage") or attr in {"float32", "float16", "bfloat16"})


def scan_pickle(buf: io.BytesIO, found: list[str]) -> bool:
    """Append the globals of one pickle; False where the stream ends or breaks before its STOP."""
    strings: list[str] = []
    memo: dict[int, str] = {}
    n_memo, last = 0, None  # MEMOIZE numbers every object; only strings matter here
    try:
        for op, arg, _ in pickletools.genops(buf):
            name = op.name
            if name in _STRING_OPS:
                strings.append(str(arg))
            elif name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
                key = n_memo if name == "MEMOIZE" else int(arg)
                n_memo += name == "MEMOIZE"
                if last in _STRING_OPS or last in ("BINGET", "LONG_BINGET", "GET"):
                    memo[key] = strings[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET") and int(arg) in memo:
                strings.append(memo[int(arg)])
            elif name in ("INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE") and not found:
                found.append(f"<{name}>")
            last = name
    except (ValueError, EOFError, pickle.UnpicklingError, UnicodeDecodeError):
        return False
    return True


def unwrap(raw: Any, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Descend the usual wrappers, strip a common `module.` / `netG.` prefix, keep the tensors."""
    if not isinstance(raw, dict):
        raise NotACheckpoint(f"{name}: holds a {type(raw).__name__}, not a dict of weights")
    chain: list[str] = []
    node: dict = raw
    for _ in range(4):
        tensors = sum(isinstance(v, torch.Tensor) for v in node.values())
        if tensors and tensors * 2 >= len(node):
            break
        key = next((k for k in WRAPPERS if isinstance(node.get(k), dict)), None)
        if key is None and len(node) == 1 and isinstance(next(iter(node.values())), dict):
            key = next(iter(node))
        if key is None:
            break
        chain.append(str(key))
        node = node[key]
    sd = {str(k): v for k, v in node.items() if isinstance(v, torch.Tensor)}
    stripped = ""
    for _ in range(3):
        prefix = next((p for p in PREFIXES if sd and all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            break
        stripped += prefix
        sd = {k[len(prefix):]: v for k, v in sd.items()}
    if not sd:
        where = f" under {'/'.join(chain)}" if chain else ""
        raise NotACheckpoint(f"{name}: no tensors found{where} (keys: {', '.join(map(str, list(node)[:8]))})")
    return sd, {"wrapper": "/".join(chain) or None, "prefix_stripped": stripped or None}
