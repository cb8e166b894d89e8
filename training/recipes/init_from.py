"""Start a run's generator(s) from weights made elsewhere: the run config's `init_from`.

    init_from: RealESRGAN_x4plus.pth                            # srgan, model.generator.arch: rrdb
    init_from: [latest_net_G_A.pth, latest_net_G_B.pth]         # cyclegan: G_A, G_B (junyanz names decide)
    init_from: latest_net_G.pth                                 # pix2pix (junyanz unet_256 / unet_128)

The file is read as `python -m training import` reads it (training.importer: weights only, the usual
wrappers and prefixes), its network detected, and checked against the recipe's generator: the same
ganforge arch (esrgan -> rrdb, junyanz-resnet -> resnet, junyanz-unet -> unet, or a detected network that
is a ganforge arch itself) with the same structural parameters and value range, or a clear error that
says what to set. Only a fresh run loads it (Recipe.on_fresh_start); a resumed run continues from its
checkpoint, which carries the weights, so the file may be gone by then.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# detected arch -> the ganforge generator arch its weights load into
ARCH_OF = {"esrgan": "rrdb", "junyanz-resnet": "resnet", "junyanz-unet": "unet"}
# config fields that leave no trace in the weights (junyanz U-Net dropout: no parameters, no index shift)
NOT_IN_WEIGHTS = {"unet": {"dropout"}}


class InitFromError(ValueError):
    """init_from weights that this run's generator cannot start from; the message says what to set."""


@dataclass
class InitWeights:
    path: Path
    arch: str  # the detected arch (esrgan, junyanz-resnet, ...)
    scale: int
    value_range: tuple[float, float]
    config: dict[str, Any]  # the ganforge generator config the weights need (arch + structural fields)
    state: dict[str, torch.Tensor]  # in that network's parameter names

    def summary(self, keys) -> str:
        what = f"{self.arch} x{self.scale}" if self.scale > 1 else self.arch
        return f"{what} with " + ", ".join(f"{k} {self.config[k]}" for k in keys) if keys else what


def read_init(path: str | Path, key: str = "init_from") -> InitWeights:
    """Load (weights only) and detect `path`; its weights in a ganforge network's names."""
    from ..importer import detect, load_weights

    path = Path(path)
    state_dict, _ = load_weights(path)
    det = detect(state_dict)
    cfg = getattr(det.module, "cfg", None)
    if det.arch == "esrgan":
        config, state = rrdb_weights(det, path, key)
    elif dataclasses.is_dataclass(cfg) and is_ganforge_arch(getattr(cfg, "arch", None)):
        config, state = dataclasses.asdict(cfg), det.module.state_dict()
    else:
        known = ", ".join(f"{a} -> {g}" for a, g in ARCH_OF.items())
        raise InitFromError(f"{key} {path.name} is {det.arch}, which no ganforge generator arch takes ({key} "
                            f"takes {known}); serve it as it is with `python -m training import`")
    return InitWeights(path, det.arch, int(det.scale), tuple(float(v) for v in det.value_range), config,
                       {k: v.detach().clone() for k, v in state.items()})


def is_ganforge_arch(arch: Any) -> bool:
    from ..networks.registry import ARCHS
    return isinstance(arch, str) and arch in ARCHS


def rrdb_weights(det, path: Path, key: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """spandrel's ESRGAN (old-arch names, whatever the file's layout) -> BasicSR's names, as networks/rrdb.py."""
    sd = det.module.state_dict()
    if all(k.startswith("model.model.") for k in sd):  # spandrel's module wrapper
        sd = {k[len("model."):]: v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    rules = ((r"model\.0\.(weight|bias)$", r"conv_first.\1"),
             (r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", r"body.\1.rdb\2.conv\3.\4"),
             (r"model\.1\.sub\.\d+\.(weight|bias)$", r"conv_body.\1"))
    tail = sorted({int(m[1]) for k in sd if (m := re.match(r"model\.(\d+)\.weight$", k)) and int(m[1]) > 1})
    names = {i: f"conv_up{n + 1}" for n, i in enumerate(tail[:-2])} | dict(zip(tail[-2:], ("conv_hr", "conv_last")))
    for k, v in sd.items():
        new = next((re.sub(p, r, k) for p, r in rules if re.match(p, k)), None)
        m = re.match(r"model\.(\d+)\.(weight|bias)$", k)
        if new is None and m and int(m[1]) in names:
            new = f"{names[int(m[1])]}.{m[2]}"
        if new is None:
            raise InitFromError(f"{key} {path.name}: an ESRGAN variant with layers ganforge's rrdb lacks ({k})")
        out[new] = v
    ups = len(tail) - 2
    if ups != 2:
        raise InitFromError(f"{key} {path.name} is an esrgan x{det.scale} with {ups} upsampling stages; ganforge's "
                            f"rrdb has two (x4; x2 and x1 fold the input by pixel-unshuffle, as Real-ESRGAN's)")
    config = {"arch": "rrdb", "in_channels": int(det.in_channels), "out_channels": int(det.out_channels),
              "nf": int(out["conv_first.weight"].shape[0]),
              "n_blocks": len({k.split(".")[1] for k in out if k.startswith("body.")}),
              "gc": int(out["body.0.rdb1.conv1.weight"].shape[0]) if "body.0.rdb1.conv1.weight" in out else 32,
              "scale": int(det.scale)}
    return config, out


def check_fits(init: InitWeights, net: nn.Module, where: str, value_range, key: str = "init_from") -> None:
    """InitFromError unless `net` (a ganforge generator) has the arch, structure and value range of the weights."""
    have = dataclasses.asdict(net.cfg)
    want = init.config
    head = f"{key} {init.path.name}"
    if have.get("arch") != want["arch"]:
        fields = [k for k in want if k != "arch"]
        raise InitFromError(f"{head} is {init.summary(fields)}; {where} is {have.get('arch')}: set "
                            f"{where}.arch: {want['arch']} and " + ", ".join(f"{k}: {want[k]}" for k in fields))
    skip = NOT_IN_WEIGHTS.get(want["arch"], set())
    diff = [k for k in want if k not in skip and k in have and have[k] != want[k]]
    if diff:
        now = ", ".join(f"{k} {have[k]}" for k in diff)
        raise InitFromError(f"{head} is {init.summary(diff)}; {where} is {have['arch']} with {now}: set "
                            + ", ".join(f"{where}.{k}: {want[k]}" for k in diff))
    lo, hi = (float(v) for v in value_range)
    if init.value_range != (lo, hi):
        raise InitFromError(f"{head} runs on {list(init.value_range)} ({init.arch}); this run's generator on "
                            f"{[lo, hi]}: set model.value_range: {list(init.value_range)}")


def init_paths(files: str | list[str], names: tuple[str, ...], family: str, key: str) -> list[Path]:
    """One file per generator of the recipe; a pair in junyanz's names goes G_A, G_B whatever the order."""
    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    if not names:
        raise InitFromError(f"{key}: the {family} recipe has no image generator to start from imported weights")
    if len(paths) != len(names):
        example = "[" + ", ".join(f"FILE_{n}" for n in names) + "]" if len(names) > 1 else "FILE"
        raise InitFromError(f"{key}: the {family} recipe has {len(names)} generator(s) ({', '.join(names)}); "
                            f"got {len(paths)} file(s): set {key}: {example}")
    side = [m[1] if (m := re.search(r"(?:^|[^A-Za-z0-9])G_?([AB])(?:$|[^A-Za-z0-9])", p.stem)) else None
            for p in paths]
    return paths[::-1] if side == ["B", "A"] else paths  # as `import` pairs latest_net_G_B.pth latest_net_G_A.pth


def load_init(recipe, files: str | list[str], key: str = "init_from", log=print) -> None:
    """Check every file against its generator, then load them all (nothing is loaded when one does not fit)."""
    names = tuple(recipe.generator_nets)
    paths = init_paths(files, names, recipe.cfg.family, key)
    loaded = []
    for name, path in zip(names, paths):
        init = read_init(path, key)
        where = "model.generator" + (f" ({name}: its channels mirrored)" if name == "G_B" else "")
        check_fits(init, recipe.nets[name], where, recipe.generator_range(), key)
        loaded.append((name, init))
    from ..importer.detected import load_exact

    for name, init in loaded:
        load_exact(recipe.nets[name], init.state, f"{recipe.cfg.family} {name} ({init.config['arch']})")
        log(f"{key}: {name} <- {init.path.name} ({init.summary([k for k in init.config if k != 'arch'])})")
