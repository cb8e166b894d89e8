"""`python -m training export`: exit 0 on success, 2 on an error, 3 when parity refuses to publish."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.folder import ModelDirError, check_name, verify_model_dir

from modelops.cli import options_from_args
from .options import DEFAULT_FP16_TOLERANCE, DEFAULT_TOLERANCE, EXPORTERS, ExportError, ExportOptions, ParityError
from .publish import export_checkpoint, rollback


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training export",
        description="Export a checkpoint to ONNX, check it against torch, and publish it atomically as "
                    "OUT/NAME (docs/model-card.md). --rollback NAME swaps the previous version back; "
                    "--verify NAME re-checks a published folder.")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint (runs/fashion/checkpoints/ckpt-00006000.pt), "
                                                 "or a run folder (runs/fashion: its newest valid checkpoint)")
    p.add_argument("--name", help="model name (folder under --out; ^[a-z0-9][a-z0-9._-]{0,63}$)")
    p.add_argument("--out", default="models", help="the models folder (default: models)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="max abs torch-vs-onnxruntime error allowed (default: 1e-4)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                   help="also write <role>.fp16.onnx for the CUDA provider (default: on)")
    p.add_argument("--fp16-tolerance", type=float, default=DEFAULT_FP16_TOLERANCE,
                   help="max abs fp16-vs-fp32 error allowed for the fp16 variant (default: 0.02)")
    p.add_argument("--description", help="one line for the card (default: from the config)")
    p.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="auto: dynamo, falling back to torchscript (default)")
    p.add_argument("--data-root", help="dataset root for the real parity inputs (default: the run config's)")
    p.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the measured exact rewrites for onnxruntime CPU (modelops/optimize.py; default: on)")
    p.add_argument("--default", action="store_true",
                   help="card `default: true`: the service serves this model when a request to its endpoint "
                        "names none (default: false)")
    p.add_argument("--rollback", metavar="NAME", help="swap OUT/.NAME.prev back into OUT/NAME")
    p.add_argument("--verify", metavar="NAME", help="re-check OUT/NAME: every file against the card's sha256")
    return p


MODES = ("rollback", "verify")  # the other things `export` does, each on a published NAME (not ExportOptions)


def verify(name: str, out: str) -> None:
    folder = Path(out) / check_name(name)
    card = verify_model_dir(folder, deep=True)
    print(f"{folder}: ok (version {card.version}, {len(card.file_names())} file(s) match the card)")


def main(argv: list[str] | None = None) -> int:
    from ..checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        if args.rollback:
            rollback(args.rollback, args.out)
            return 0
        if args.verify:
            verify(args.verify, args.out)
            return 0
        if not args.checkpoint or not args.name:
            print("error: give CHECKPOINT and --name NAME (or --rollback NAME / --verify NAME)", file=sys.stderr)
            return 2
        export_checkpoint(options_from_args(ExportOptions, args))
        return 0
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ExportError, ModelDirError, CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
