"""ganforge training CLI: `python -m training {train,prepare,export,import,eval,quantize,optimize,bf16,fp16,sheets} ...`."""
from __future__ import annotations

import argparse
import importlib
import sys

# verb -> (the module whose `main(argv)` runs it: its parser -> its options dataclass -> its function, help)
VERBS = {
    "train": ("training.train", "train a model from a YAML config"),
    "prepare": ("training.prepare", "build a default dataset from Debian packages"),
    "export": ("training.export", "export a checkpoint to ONNX and publish it into models/ (--rollback, --verify)"),
    "import": ("training.importer.cli",
               "publish someone else's generator weights (junyanz, ESRGAN, spandrel archs) as a model"),
    "eval": ("training.eval_cli", "measure a published model on held-out data (writes its card)"),
    "quantize": ("training.quantize", "write an int8 (QDQ) variant of a published model for the CPU provider"),
    "optimize": ("modelops.optimize",
                 "apply the measured exact graph rewrites to a published model (export does it too)"),
    "bf16": ("training.bf16",
             "measure OpenVINO bf16 against fp32 on a published model and record the gate in its card"),
    "fp16": ("modelops.fp16", "make the fp16 files the cards list as built (not in git) from the fp32 graphs"),
    "sheets": ("training.sheets", "sample sheets (PNG) of published models on held-out data, and a metrics table"),
}


def build_parser() -> argparse.ArgumentParser:
    """The verbs and their one-line help; each verb's own arguments are its module's (`VERB --help`)."""
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, (_, text) in VERBS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in VERBS:
        build_parser().parse_args(argv)  # --help, or the usage and exit 2
        return 2
    module, _ = VERBS[argv[0]]
    try:
        return importlib.import_module(module).main(argv[1:]) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # CheckpointError, DataError included
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
