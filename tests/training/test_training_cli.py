"""`python -m training VERB`: argparse -> one frozen, keyword-only options dataclass -> the verb's function."""
from __future__ import annotations

import dataclasses
import importlib
import inspect

import pytest

from training.__main__ import VERBS
from training.__main__ import main as cli
from modelops.cli import options_from_args

# verb -> (its options dataclass, its work function, arguments that set options away from their defaults,
#          the namespace's other destinations: modes of the verb that are not options of its function)
CASES = {
    "train": ("training.train:TrainOptions", "training.train:train_from_options",
              ["c.yaml", "train.steps=3", "model.ngf=8", "--resume", "--out", "runs/x"], ()),
    "prepare": ("training.prepare:PrepareOptions", "training.prepare:prepare",
                ["photos", "--out", "d", "--force"], ()),
    "export": ("training.export:ExportOptions", "training.export:export_checkpoint",
               ["runs/x", "--name", "n", "--out", "m", "--tolerance", "0.5", "--no-fp16", "--fp16-tolerance", "0.1",
                "--description", "d", "--exporter", "torchscript", "--data-root", "r", "--no-optimize", "--default"],
               ("rollback", "verify")),
    "import": ("training.importer.publish:ImportOptions", "training.importer.publish:import_weights",
               ["a.pth", "b.pth", "--name", "n", "--out", "m", "--arch", "esrgan", "--license", "MIT",
                "--batch-stats", "--default", "--no-fp16", "--fp16-tolerance", "0.1", "--tolerance", "0.5",
                "--description", "d", "--no-optimize"], ()),
    "eval": ("training.evaluate:EvalOptions", "training.evaluate:evaluate_model",
             ["n", "--models", "m", "--data-root", "r", "--limit", "3", "--crop", "64", "--samples-per-class", "2",
              "--classifier-cache", "c", "--classifier-steps", "5", "--anchors", "a", "--data", "crop_size=128",
              "--data", "flip=false", "--seed", "4", "--dry-run"], ()),
    "quantize": ("modelops.quantize:QuantizeOptions", "training.quantize:quantize_model",
                 ["n", "--models", "m", "--calibration", "2", "--heldout", "3", "--size", "16", "--no-per-channel",
                  "--min-psnr", "30", "--data-root", "r", "--rounds", "1", "--dry-run"], ()),
    "optimize": ("modelops.optimize:OptimizeOptions", "modelops.optimize:optimize_model",
                 ["n", "--models", "m", "--dry-run"], ()),
    "bf16": ("modelops.bf16:Bf16Options", "training.bf16:record_bf16",
             ["a", "b", "--models", "m", "--count", "2", "--rounds", "3", "--gate", "50", "--data-root", "r",
              "--dry-run"], ()),
    "fp16": ("modelops.fp16:Fp16Options", "modelops.fp16:materialize_models",
             ["a", "b", "--models", "m"], ()),
    "sheets": ("training.sheets:SheetsOptions", "training.sheets:draw_sheets",
               ["a", "--models", "m", "--out", "o", "--data-root", "r", "--n", "2", "--crop", "32", "--seed", "1",
                "--table"], ()),
}


def named(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def test_every_verb_has_a_case():
    assert set(CASES) == set(VERBS)


@pytest.mark.parametrize("verb", sorted(CASES))
def test_help_of_every_verb(verb, capsys):
    with pytest.raises(SystemExit) as e:
        cli([verb, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m training {verb}")


def test_top_level_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as e:
        cli(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(verb in out for verb in VERBS)


@pytest.mark.parametrize("verb", sorted(CASES))
def test_options_are_frozen_and_keyword_only(verb):
    cls = named(CASES[verb][0])
    params = dataclasses.fields(cls)
    assert dataclasses.is_dataclass(cls) and all(f.kw_only for f in params)
    with pytest.raises(TypeError):
        cls(*[f"value-{f.name}" for f in params])  # positional: refused, so a reordered field cannot mis-wire
    args = importlib.import_module(VERBS[verb][0]).build_parser().parse_args(CASES[verb][2])
    opts = options_from_args(cls, args)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(opts, params[0].name, None)


@pytest.mark.parametrize("verb", sorted(CASES))
def test_parsed_arguments_become_the_options(verb):
    """Every destination of the verb's parser is a field of its options (or a declared mode), and every
    field comes from the parser with the value given on the command line."""
    cls_ref, _, argv, modes = CASES[verb]
    cls = named(cls_ref)
    parser = importlib.import_module(VERBS[verb][0]).build_parser()
    args = parser.parse_args(argv)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(vars(args)) == fields | set(modes)
    opts = options_from_args(cls, args)
    assert {name: getattr(opts, name) for name in fields} == {name: getattr(args, name) for name in fields}
    unset = {f.name for f in dataclasses.fields(cls)
             if f.default is not dataclasses.MISSING and getattr(opts, f.name) == f.default}
    assert not unset, f"{verb}: the case leaves {unset} at the default, so their wiring goes untested"


def test_options_from_args_names_a_field_no_argument_fills():
    import argparse

    from modelops.optimize import OptimizeOptions

    with pytest.raises(TypeError, match="fills no dry_run"):
        options_from_args(OptimizeOptions, argparse.Namespace(name="n", models="m"))


@pytest.mark.parametrize("verb", sorted(CASES))
def test_the_work_function_takes_the_options(verb):
    """One positional parameter, the options; anything else (a log callback, a test's fake) has a default."""
    cls_ref, fn_ref, _, _ = CASES[verb]
    params = list(inspect.signature(named(fn_ref)).parameters.values())
    assert params[0].annotation in (named(cls_ref).__name__, named(cls_ref))
    assert all(p.default is not inspect.Parameter.empty for p in params[1:]), params


def test_the_options_reach_the_function(monkeypatch, tmp_path):
    """The CLI hands its function the dataclass the parser built (here: quantize's, the function stubbed)."""
    from training import quantize

    seen = []
    monkeypatch.setattr(quantize, "quantize_model", lambda opts, log=print: seen.append(opts) or {})
    assert cli(["quantize", "n", "--models", str(tmp_path), "--rounds", "2"]) == 0
    assert seen == [quantize.QuantizeOptions(name="n", models=str(tmp_path), rounds=2)]


def test_the_function_checks_its_options(tmp_path, capsys):
    assert cli(["quantize", "n", "--models", str(tmp_path), "--rounds", "0"]) == 2
    assert "--rounds and --size must be >= 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
