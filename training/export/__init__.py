"""Export a checkpoint's generator(s) to ONNX and publish them as a model folder.

    python -m training export CHECKPOINT --name NAME [--out models] [--tolerance 1e-4] [--no-fp16] [--default]
    python -m training export --rollback NAME [--out models]
    python -m training export --verify NAME [--out models]
    export_checkpoint(ExportOptions(checkpoint=..., name=..., ...)) -> ExportResult

The folder follows docs/model-card.md: one self-contained ONNX file per role
(`generator`, or `a2b` + `b2a`), an optional fp16 variant per role, and
card.json (contract.Card, schema 2; `default: false` unless --default). Nothing is published unless every graph passes
`onnx.checker.check_model(full_check=True)`, loads in onnxruntime (CPU), and
matches the torch network (eval mode) within `tolerance` on random and real
inputs at two spatial sizes (one non-square) and two batch sizes.

Graphs come from the torch.export-based exporter (`dynamo`, the default in
torch >= 2.9) with dynamic batch and spatial axes; if it cannot trace a
network, the TorchScript exporter (`torchscript`, deprecated upstream) is the
fallback. Either way the symbolic dims are renamed to the card's names
("N", "H", "W", "H*4", ...), so the graph and its card say the same thing.

Publishing is atomic: everything is written into `OUT/.NAME.tmp-XXXX`
(fsynced), then swapped with `OUT/NAME` in one `renameat2(RENAME_EXCHANGE)`
where the OS offers it (else two renames), and the replaced version is kept
as `OUT/.NAME.prev` for `--rollback`. A running service never sees a
half-written folder, and a crash before the swap leaves the old model as it
was (contract.folder.staged_version). A card that breaks the contract is
refused (ExportError naming the field): nothing is published.

    graph.py    torch -> ONNX (dynamo / TorchScript), dims, graph I/O, opset, checks
    parity.py   parity inputs and measurements (torch vs onnxruntime, graph vs graph)
    fp16.py     the fp16 variant
    card.py     the card, from the recipe and the export specs
    build.py    the phases of one export into a staging folder
    options.py  ExportOptions (the command's, by keyword only), BuildOptions (what import shares), errors
    publish.py  export_checkpoint (staged, locked, atomic) and rollback
    cli.py      `python -m training export`: argparse -> ExportOptions -> export_checkpoint
"""

from .cli import build_parser, main
from .graph import TORCHSCRIPT_OPSET, quiet_exporter
from .options import (DEFAULT_FP16_TOLERANCE, DEFAULT_TOLERANCE, EXPORTERS, BuildOptions, ExportError,
                      ExportOptions, ParityError)
from .publish import ExportResult, export_checkpoint, rollback

__all__ = ["BuildOptions", "DEFAULT_FP16_TOLERANCE", "DEFAULT_TOLERANCE", "EXPORTERS", "ExportError",
           "ExportOptions", "ExportResult", "ParityError", "TORCHSCRIPT_OPSET", "build_parser", "export_checkpoint",
           "main", "quiet_exporter", "rollback"]
