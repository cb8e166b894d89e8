"""`python -m training eval NAME ...`: the command line of training/evaluate.py."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from contract import CardError
from contract.folder import ModelDirError

from modelops.cli import options_from_args
from .evaluate import DEFAULT_ANCHORS, EvalError, EvalOptions, evaluate_model


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--data takes KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training eval",
                                description="Measure a published model on its held-out split through the "
                                            "service's pipeline and write the figures into its card "
                                            "(metrics.heldout).")
    p.add_argument("name", help="model name (folder under --models)")
    p.add_argument("--models", default="models", help="the models folder (default: models)")
    p.add_argument("--data-root", help="dataset root (default: the one in the card's training config; for a model "
                                       "without one, e.g. imported: data/photos, the held-out photos of "
                                       "`python -m training prepare photos`, or a CycleGAN testA/testB root)")
    p.add_argument("--limit", type=int, help="use at most N held-out images (per domain for cyclegan)")
    p.add_argument("--crop", type=int, default=512,
                   help="upscale: centre crop of each held-out photo, in HR pixels (0 = whole photo, tiled)")
    p.add_argument("--samples-per-class", type=int, default=100, help="generate: samples per class (default 100)")
    p.add_argument("--classifier-cache", default="runs/classifier",
                   help="where the Fashion-MNIST classifier is cached (default: runs/classifier)")
    p.add_argument("--classifier-steps", type=int, help="classifier training steps (default: 1000)")
    p.add_argument("--anchors", dest="anchors_dir", metavar="DIR", default=str(DEFAULT_ANCHORS),
                   help="folder of FSRCNN/ESPCN/LapSRN .pb files")
    p.add_argument("--data", dest="data_overrides", type=_override, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="change a key of the dataset config, e.g. --data crop_size=128 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the figures, leave the card as it is")
    return p


def main(argv: list[str] | None = None) -> int:
    opts = options_from_args(EvalOptions, build_parser().parse_args(argv))
    try:
        result = evaluate_model(opts)
    except (EvalError, ModelDirError, CardError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    if not opts.dry_run:
        print(f"wrote metrics.heldout into {Path(opts.models) / opts.name / 'card.json'}")
    return 0
