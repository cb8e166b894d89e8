"""The phases of one export, each writing into the staging folder: the roles' graphs (exported,
checked, optimized, measured against torch), the parity gate, the fp16 variant, the card.

`build_graphs` is the part that needs no recipe (export specs, options, parity cases): export's
`build` and the importer (training/importer/publish.py) both go through it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from contract import Card, Variant
from contract.folder import file_entry
from modelops.fp16 import fp16_variant
from modelops.numerics import Case, cpu_session

from .card import write_card
from .graph import check_graph, export_graph, graph_io
from .options import BuildOptions, ExportError, Exported, ExportJob, ParityError
from .parity import measure, parity_cases

# role, spec -> (parity cases, what the card says about them)
CasesFor = Callable[[str, Any], "tuple[list[Case], dict[str, Any]]"]
# path, role, spec: called on each role's written graph before its parity is measured (raise to refuse)
Probe = Callable[[Path, str, Any], None]


def optimize_role(path: Path, role: str, exported: Exported) -> None:
    """The exact rewrites for onnxruntime CPU (modelops/optimize.py); parity afterwards checks them."""
    from modelops.optimize import optimize_graph

    counts = optimize_graph(path)
    if counts:
        exported.rewrites[role] = counts
        check_graph(path, role)


def write_role(staging: Path, role: str, spec, options: BuildOptions, exported: Exported,
               cases_for: CasesFor, log, probe: Probe | None = None) -> None:
    """Write `<role>.onnx`, check it, optimize it, measure it against torch; recorded in `exported`."""
    path = staging / f"{role}.onnx"
    t0 = time.perf_counter()
    exported.used.add(export_graph(spec, path, options.exporter, log))
    check_graph(path, role)
    if options.optimize:
        optimize_role(path, role, exported)
    if probe is not None:
        probe(path, role, spec)
    cases, info = cases_for(role, spec)
    errs = measure(cpu_session(path), spec, cases)
    for kind, err in errs.items():
        exported.worst[kind] = max(exported.worst.get(kind, 0.0), err)
    exported.cases[role] = cases
    exported.parity[role] = {**errs, **info}
    log(f"{role}: exported ({', '.join(sorted(exported.used))}) in {time.perf_counter() - t0:.1f}s; "
        f"parity max abs {', '.join(f'{k} {v:.2e}' for k, v in errs.items())}")
    role_graph = graph_io(path)
    if exported.graph is not None and role_graph != exported.graph:
        raise ExportError(f"roles have different graph I/O: {exported.graph} vs {role_graph}")
    exported.graph = role_graph
    exported.files[role] = file_entry(staging, path.name)


def recipe_cases(job: ExportJob) -> CasesFor:
    """The recipe's parity cases (real held-out inputs where its family names the dataset field)."""
    def cases_for(role: str, spec) -> tuple[list[Case], dict[str, Any]]:
        return parity_cases(job.recipe.family, role, spec, job.recipe.cfg, job.options.data_root)

    return cases_for


def check_parity(name: str, exported: Exported, tolerance: float) -> float:
    """The worst torch-vs-onnxruntime error over every role and input; ParityError over the tolerance."""
    max_abs = max(exported.worst.values())
    if not max_abs <= tolerance:
        over = max_abs - tolerance
        ratio = f" ({max_abs / tolerance:.1f}x)" if tolerance > 0 else ""
        raise ParityError(f"refusing to publish {name!r}: torch vs onnxruntime max abs error {max_abs:.3e} "
                          f"exceeds the tolerance {tolerance:.1e} by {over:.3e}{ratio} "
                          f"(per role: {json.dumps(exported.per_role())})")
    return max_abs


def build_graphs(staging: Path, name: str, specs: dict[str, Any], options: BuildOptions, cases_for: CasesFor,
                 log, probe: Probe | None = None) -> tuple[Exported, dict[str, Variant]]:
    """Every role's graph, the parity gate (ParityError over the tolerance) and the fp16 variant."""
    exported = Exported()
    for role, spec in specs.items():
        write_role(staging, role, spec, options, exported, cases_for, log, probe)
    exported.max_abs = check_parity(name, exported, options.tolerance)
    variants = {}
    if options.fp16:
        variants["fp16"] = fp16_variant(staging, specs, exported.cases, options.fp16_tolerance, log)
    return exported, variants


def build(staging: Path, job: ExportJob) -> Card:
    """Write and check every file of the folder into `staging`; raises ParityError over the tolerance."""
    exported, variants = build_graphs(staging, job.name, job.specs, job.options, recipe_cases(job), job.log)
    return write_card(staging, job, exported, variants)
