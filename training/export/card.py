"""The card of an exported folder, as a contract `Card` (docs/model-card.md).

What is family-specific comes from the recipe (`card_fields()`: classes, domains;
`batch_norm_note`; `description_extra()`) and from its export specs (`input`, `output`,
`tiling`, `latent_dim`); nothing here names a family.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from contract import SCHEMA_VERSION, Card, CardError, Metrics, RoleIO, Training, Variant
from contract.folder import content_version, sha256_file, utc_now, utc_stamp, write_card_durably
from contract.typed import from_plain, hints

from .graph import opset_of, runtimes
from .options import ExportError, Exported, ExportJob

SPEC_BLOCKS = ("input", "output", "tiling", "latent_dim")  # card fields an export spec gives


def typed(key: str, value: Any) -> Any:
    """`value` as the card's field `key` holds it (validated; CardError names the field)."""
    types = hints(Card)
    if key not in types:
        raise CardError(f"{key} is not a field of the card")
    return from_plain(types[key], value, key)


def dataset_block(cfg, meta: dict[str, Any]) -> dict[str, Any]:
    ds = dict(meta.get("dataset") or {})
    source = ds.get("source")
    if isinstance(source, list):
        source = ", ".join(f"debian:{p.get('package')} {p.get('version')}" if isinstance(p, dict) else str(p)
                           for p in source)
    block = {"name": ds.get("name") or Path(str(cfg.data.get("root", ""))).name or cfg.data.get("kind"),
             "kind": cfg.data.get("kind"), "root": cfg.data.get("root"), "source": source}
    if ds.get("manifest_sha256"):
        block["manifest_sha256"] = ds["manifest_sha256"]
    return block


def training_block(job: ExportJob) -> Training:
    payload, meta = job.payload, job.payload.get("meta") or {}
    return Training(dataset=dataset_block(job.recipe.cfg, meta), config=payload.get("config"),
                    steps=int(payload.get("step", 0)), git_commit=meta.get("git_commit", "unknown"),
                    torch=meta.get("torch"), extra={"precision": meta["precision"]} if meta.get("precision") else {},
                    checkpoint={"path": str(job.checkpoint), "sha256": sha256_file(Path(job.checkpoint))})


def default_description(job: ExportJob) -> str:
    recipe, meta = job.recipe, job.payload.get("meta") or {}
    data = (meta.get("dataset") or {}).get("name") or recipe.cfg.data.get("kind")
    steps = int(job.payload.get("step", 0))
    return (f"{recipe.family}{recipe.description_extra()} '{recipe.cfg.name}' ({recipe.endpoint}), "
            f"{steps} steps on {data}")


def eval_mode_notes(specs: dict[str, Any], batch_norm_note: str = "") -> list[str]:
    """What eval mode means for the specs' modules (batch norm statistics, dropout)."""
    import torch
    modules = [m for s in specs.values() for m in s.module.modules()]
    notes = []
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in modules):
        notes.append("batch norm is exported in eval mode with its running statistics" + batch_norm_note)
    if any(isinstance(m, torch.nn.Dropout) for m in modules):
        notes.append("dropout is off (eval mode): the graph is deterministic")
    return notes


def io_fields(specs: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The export specs' blocks (input, output, tiling, latent_dim), `extra` card blocks, and a `roles`
    block when the roles' I/O differ; typed (CardError names the field)."""
    first = next(iter(specs.values()))
    fields = {key: typed(key, first.card[key]) for key in SPEC_BLOCKS if key in first.card}
    fields.update({key: typed(key, value) for key, value in (extra or {}).items()})
    io = {role: (s.card.get("input"), s.card.get("output")) for role, s in specs.items()}
    if len(set(map(json.dumps, io.values()))) > 1:
        fields["roles"] = {role: from_plain(RoleIO, {"input": i, "output": o}, f"roles.{role}")
                           for role, (i, o) in io.items()}
    return fields


def spec_fields(job: ExportJob) -> dict[str, Any]:
    """`io_fields` with the recipe's `card_fields()` (classes only for a graph with a `label` input)."""
    extra = dict(job.recipe.card_fields())
    if "label" not in next(iter(job.specs.values())).input_names:  # class names label a graph's `label` input
        extra.pop("classes", None)
    return io_fields(job.specs, extra)


def parity_block(exported: Exported, tolerance: float) -> dict[str, Any]:
    """metrics.parity: the worst figures over the roles, the inputs they were measured on."""
    first = next(iter(exported.parity.values()))
    block: dict[str, Any] = {"random": exported.worst["random"], "real": exported.worst.get("real"),
                             "tolerance": tolerance, "exporter": exported.exporter}
    for key in ("sizes", "batches", "labels", "real_source", "real_note"):
        if key in first:
            block[key] = first[key]
    if len(exported.parity) > 1:
        block["roles"] = exported.per_role()
    return block


def graph_fields(staging: Path, exported: Exported, variants: dict[str, Variant], tolerance: float,
                 when) -> dict[str, Any]:
    """The card fields every exported folder has, from its files: version, opset, exporter, runtimes,
    files, variants, rewrites, graph I/O and the parity metrics."""
    onnx_files = [e.path for e in exported.files.values()]
    onnx_files += [e.path for v in variants.values() for e in v.files.values()]
    first_file = staging / next(iter(exported.files.values())).path
    return dict(
        schema=SCHEMA_VERSION, version=content_version(staging, onnx_files, when), exported_at=utc_stamp(when),
        opset=opset_of(first_file), exporter=exported.exporter, runtimes=runtimes(), files=exported.files,
        variants=variants,
        optimized={"rewrites": exported.rewrites, "at": utc_stamp(when)} if exported.rewrites else None,
        graph=typed("graph", exported.graph),
        metrics=Metrics(parity_max_abs=exported.max_abs, parity=parity_block(exported, tolerance)))


def build_card(job: ExportJob, exported: Exported, variants: dict[str, Variant], staging: Path) -> Card:
    """The folder's card; CardError (naming the field) when something breaks the contract."""
    recipe, options = job.recipe, job.options
    notes = eval_mode_notes(job.specs, recipe.batch_norm_note)
    return Card(
        name=job.name, endpoint=recipe.endpoint, family=recipe.family, default=options.default,
        description=options.description or default_description(job),
        **graph_fields(staging, exported, variants, options.tolerance, utc_now()), **spec_fields(job),
        notes=notes or None, training=training_block(job))


def publish_card(staging: Path, name: str, make: Callable[[], Card]) -> Card:
    """Build (`make()`), validate and write card.json into `staging`; a card that breaks the contract
    is an ExportError naming the field."""
    try:
        card = make()
        write_card_durably(staging, card)
    except CardError as e:
        raise ExportError(f"refusing to publish {name!r}: the card breaks the contract: {e}") from e
    return card


def write_card(staging: Path, job: ExportJob, exported: Exported, variants: dict[str, Variant]) -> Card:
    """Build, validate and write card.json into `staging`; a card that breaks the contract is an ExportError."""
    return publish_card(staging, job.name, lambda: build_card(job, exported, variants, staging))
