"""The models the bench measures: every model in models/, plus the zoo's five from the default configs.

The zoo is fashion (dcgan), colorize (pix2pix), sneaker2boot (cyclegan),
srresnet-x4 and srgan-x4 (srgan). A name missing from models/ is made here:
its default config from training/configs (the zoo's architecture), random
init, saved as a checkpoint in the format train.py writes, and exported with
`training.export.export_checkpoint` like a trained one. Compute does not
depend on the weights' values, so these time what the trained models will.

Exports are cached in bench/.cache/ (keyed by the config, the network sources
and the torch version), so only the first run pays for them. `tiny=True`
narrows every network (same layer structure, a few channels): the smoke test's
models. The bench then serves one folder of symlinks, `<work>/models/`.

For the torch side of the compute figures each model is rebuilt from the run
config its card carries (`training.config`): with the trained weights when the
checkpoint the card names is still there and its sha256 matches, else at its
initialisation (`torch_weights` says which).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "training" / "configs"
CACHE = Path(__file__).resolve().parent / ".cache"
ZOO = ("fashion", "colorize", "sneaker2boot", "srresnet-x4", "srgan-x4")
# same layer structure, a few channels: fast enough for a smoke test
TINY_OVERRIDES = {
    "fashion": ["model.ngf=8", "model.ndf=8", "model.embed_dim=8", "model.latent_dim=16"],
    "colorize": ["model.generator.ngf=4", "model.discriminator.ndf=4"],
    "sneaker2boot": ["model.generator.ngf=4", "model.generator.n_blocks=2", "model.discriminator.ndf=4"],
    "srresnet-x4": ["model.generator.nf=8", "model.generator.n_blocks=2"],
    "srgan-x4": ["model.generator.nf=8", "model.generator.n_blocks=2", "model.discriminator.ndf=4"],
}


@dataclass
class BenchModel:
    name: str
    folder: Path  # the model folder (card.json + ONNX)
    card: dict[str, Any]
    source: str  # "models/" | "default config, random init" (+ ", tiny")
    torch_weights: str = ""  # filled by torch_generators()

    @property
    def endpoint(self) -> str:
        return self.card["endpoint"]

    @property
    def family(self) -> str:
        return self.card["family"]

    @property
    def roles(self) -> list[str]:
        return list(self.card["files"])

    def onnx_path(self, role: str) -> Path:
        return self.folder / self.card["files"][role]["path"]


@dataclass
class BenchModels:
    models_dir: Path  # serve this folder
    models: dict[str, BenchModel] = field(default_factory=dict)

    def of(self, endpoint: str, family: str | None = None) -> list[BenchModel]:
        return [m for m in self.models.values() if m.endpoint == endpoint and (family is None or m.family == family)]

    def first(self, endpoint: str, family: str | None = None, prefer: str | None = None) -> BenchModel | None:
        if prefer in self.models and self.models[prefer].endpoint == endpoint:
            return self.models[prefer]
        found = self.of(endpoint, family)
        return found[0] if found else None


def _cache_key(name: str, overrides: list[str], exporter: str) -> str:
    import torch

    h = hashlib.sha256()
    h.update((CONFIGS / f"{name}.yaml").read_bytes())
    h.update(json.dumps([overrides, exporter, torch.__version__]).encode())
    exporter_sources = sorted((REPO / "training" / "export").glob("*.py")) + [
        REPO / "modelops" / name for name in ("optimize.py", "rewrites.py", "fp16.py", "numerics.py")]
    for src in sorted((REPO / "training" / "networks").glob("*.py")) + exporter_sources:
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def export_default(name: str, out: Path, tiny: bool, exporter: str, log=print) -> Path:
    """models/<name> as the default config builds it, randomly initialised, exported into `out`."""
    import torch

    from training import checkpoint as ckpt
    from training.config import load_config
    from training.export import ExportOptions, export_checkpoint
    from training.registry import get_recipe_class
    from training.train import init_seed

    overrides = ["train.device=cpu"] + (TINY_OVERRIDES[name] if tiny else [])
    key = _cache_key(name, overrides, exporter)
    stamp = out / f".bench-{name}.key"
    if (out / name / "card.json").is_file() and stamp.is_file() and stamp.read_text() == key:
        return out / name
    log(f"  exporting {name} from {CONFIGS / name}.yaml ({'tiny, ' if tiny else ''}random init, {exporter})")
    cfg = load_config(CONFIGS / f"{name}.yaml", overrides)
    torch.manual_seed(init_seed(cfg.seed))
    with contextlib.redirect_stdout(io.StringIO()):  # srgan-x4 says which content loss it would train with
        recipe = get_recipe_class(cfg.family)(cfg, torch.device("cpu"))
    path = out / ".checkpoints" / name / "ckpt-00000000.pt"
    meta = {"git_commit": "bench", "torch": str(torch.__version__),
            "dataset": {"name": "none: random init for the bench", "manifest_sha256": None}}
    ckpt.save(path, {"family": cfg.family, "config": cfg.to_dict(), "step": 0, "meta": meta, **recipe.state_dict()})
    # data_root: a path that does not exist, so parity runs on random inputs only (no dataset needed)
    with contextlib.redirect_stdout(io.StringIO()):
        export_checkpoint(ExportOptions(checkpoint=path, name=name, out=out, exporter=exporter, fp16=False,
                                        data_root=str(out / ".no-data"),
                                        description=f"bench: {name} default config{' (tiny)' if tiny else ''}, "
                                                    "random init"),
                          log=lambda *a: None)
    shutil.rmtree(out / f".{name}.prev", ignore_errors=True)  # export keeps the replaced version for rollback
    stamp.write_text(key)
    return out / name


def prepare(work: Path, models_src: Path | None = REPO / "models", tiny: bool = False, exporter: str = "auto",
            log=print) -> BenchModels:
    """A folder of every servable model: models/ (unless tiny) plus the zoo's missing names, exported."""
    work = Path(work)
    served = work / "models"
    if served.exists():
        shutil.rmtree(served)
    served.mkdir(parents=True)
    found: dict[str, BenchModel] = {}
    if models_src is not None and not tiny and Path(models_src).is_dir():
        for folder in sorted(Path(models_src).iterdir()):
            card_path = folder / "card.json"
            if folder.name.startswith(".") or not card_path.is_file():
                continue
            try:
                card = json.loads(card_path.read_text())
            except (OSError, ValueError):
                log(f"  skipping {folder}: unreadable card.json")
                continue
            found[folder.name] = BenchModel(folder.name, folder.resolve(), card, "models/")
    cache = CACHE / ("models-tiny" if tiny else "models")
    cache.mkdir(parents=True, exist_ok=True)
    for name in ZOO:
        if name in found:
            continue
        folder = export_default(name, cache, tiny, exporter, log)
        card = json.loads((folder / "card.json").read_text())
        found[name] = BenchModel(name, folder.resolve(), card,
                                 "default config, random init" + (", tiny" if tiny else ""))
    for name, model in found.items():
        (served / name).symlink_to(model.folder, target_is_directory=True)
    return BenchModels(served, found)


def torch_generators(model: BenchModel) -> dict[str, Any]:
    """role -> the torch network (eval mode) behind the ONNX file, from the card's run config."""
    from contract.folder import sha256_file
    from training import checkpoint as ckpt
    from training.recipes.base import Recipe

    training = model.card.get("training") or {}
    config = training.get("config")
    if not config:
        raise ValueError(f"{model.name}: the card carries no training.config; cannot rebuild the torch network")
    saved = (training.get("checkpoint") or {})
    path = Path(saved.get("path") or "")
    if not path.is_absolute():
        path = REPO / path
    if saved.get("path") and path.is_file() and sha256_file(path) == saved.get("sha256"):
        with contextlib.redirect_stdout(io.StringIO()):
            recipe = Recipe.from_checkpoint(ckpt.load(path), "cpu")
        model.torch_weights = "checkpoint (the exported weights)"
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            recipe = Recipe.from_checkpoint({"config": config}, "cpu", init_only=True)
        model.torch_weights = "initialisation (checkpoint not found; same architecture, timing is weight-independent)"
    specs = recipe.export_specs()
    out = {}
    for role, spec in specs.items():
        spec.module.eval()
        for p in spec.module.parameters():
            p.requires_grad_(False)
        out[role] = spec.module
    return out
