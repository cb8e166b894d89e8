from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OMP_NUM_THREADS", "2")


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
