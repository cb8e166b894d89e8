"""ganforge training CLI: `python -m training {train,prepare,export,import,eval,quantize,optimize,bf16,fp16,sheets} ...`."""
from __future__ import annotations

import argparse
import sys


def _train(args) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.overrides)
    train(cfg, resume=args.resume, out_dir=args.out)
    return 0


def _export(argv: list[str]) -> int:
    from . import export
    return export.main(argv) or 0


def _import(argv: list[str]) -> int:
    from .importer import cli
    return cli.main(argv) or 0


def _eval(argv: list[str]) -> int:
    from . import eval_cli
    return eval_cli.main(argv) or 0


def _quantize(argv: list[str]) -> int:
    from . import quantize
    return quantize.main(argv) or 0


def _optimize(argv: list[str]) -> int:
    from . import optimize
    return optimize.main(argv) or 0


def _bf16(argv: list[str]) -> int:
    from . import bf16
    return bf16.main(argv) or 0


def _fp16(argv: list[str]) -> int:
    from .export import fp16
    return fp16.main(argv) or 0


def _sheets(argv: list[str]) -> int:
    from . import sheets
    return sheets.main(argv) or 0


# verbs whose module parses its own arguments (so `export --rollback NAME` and `eval --help` work)
DELEGATED = {
    "export": (_export, "export a checkpoint to ONNX and publish it into models/ (--rollback, --verify)"),
    "import": (_import, "publish someone else's generator weights (junyanz, ESRGAN, spandrel archs) as a model"),
    "eval": (_eval, "measure a published model on held-out data (writes its card)"),
    "quantize": (_quantize, "write an int8 (QDQ) variant of a published model for the CPU provider"),
    "optimize": (_optimize, "apply the measured exact graph rewrites to a published model (export does it too)"),
    "bf16": (_bf16, "measure OpenVINO bf16 against fp32 on a published model and record the gate in its card"),
    "fp16": (_fp16, "make the fp16 files the cards list as built (not in git) from the fp32 graphs"),
    "sheets": (_sheets, "sample sheets (PNG) of published models on held-out data, and a metrics table"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    t = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train (or resume) a run. Overrides are dotted key=value pairs, "
                                   "e.g. train.steps=200 train.device=cpu data.root=data/photos.")
    t.add_argument("config", help="YAML config, e.g. training/configs/fashion.yaml")
    t.add_argument("overrides", nargs="*", metavar="key=value")
    t.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in the run dir")
    t.add_argument("--out", help="run folder (default: train.out_dir of the config)")
    t.set_defaults(func=_train)

    from . import prepare
    pr = sub.add_parser("prepare", help="build a default dataset from Debian packages",
                        description="Build a default dataset (fashion-mnist, photos) from Debian packages, "
                                    "with a held-out split and a manifest.")
    prepare.add_arguments(pr)
    pr.set_defaults(func=prepare.run)

    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATED:
            return DELEGATED[argv[0]][0](argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # CheckpointError, DataError included
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
