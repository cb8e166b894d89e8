from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "2")
# the servers the tests start keep the static backend rule (no startup measurement: seconds per model);
# the autotune tests set their own budget, and bench/fastpath.py's "default" server the shipped one
os.environ.setdefault("GANFORGE_AUTOTUNE_BUDGET_S", "0")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_datasets(tmp_path_factory) -> dict[str, Path]:
    """One small generated dataset per standard layout, shared by the training tests."""
    import datagen

    base = tmp_path_factory.mktemp("datasets")
    return {
        "fashion": datagen.make_fashion(base / "fashion-mnist"),
        "photos": datagen.make_photo_folder(base / "photos"),
        "aligned": datagen.make_aligned_folder(base / "facades"),
        "unaligned": datagen.make_unaligned_folder(base / "horse2zebra"),
    }


@pytest.fixture(scope="session")
def tiny_runs(tiny_datasets, tmp_path_factory) -> dict[str, list[Path]]:
    """family -> the checkpoints (steps 1 and 2) of its 2-step tiny run (testkit/tiny.py), trained once per
    session for every module that needs a trained model of each family."""
    from testkit.tiny import FAMILIES, tiny_raw
    from training import checkpoint as ckpt
    from training.config import load_config
    from training.train import train

    base = tmp_path_factory.mktemp("tiny-runs")
    runs = {}
    for family in FAMILIES:
        raw = tiny_raw(family, tiny_datasets)
        raw["train"].update(steps=2, ckpt_every=1, sample_every=2)
        run = train(load_config(None, raw=raw), out_dir=base / family, log=lambda *a, **k: None)
        runs[family] = ckpt.list_checkpoints(run)
    return runs


@pytest.fixture(scope="session")
def tiny_zoo(tiny_runs, tmp_path_factory) -> Path:
    """A models folder with tiny-<family> exported from each family's last checkpoint (TorchScript exporter,
    no fp16: fast). Read it, never write into it: copy a folder out first."""
    from training import export as ex

    out = tmp_path_factory.mktemp("tiny-zoo")
    for family, checkpoints in tiny_runs.items():
        ex.export_checkpoint(ex.ExportOptions(checkpoint=checkpoints[-1], name=f"tiny-{family}", out=out,
                                              exporter="torchscript", fp16=False), log=lambda *a, **k: None)
    return out
