"""Held-out evaluation through the service's pipeline: metric definitions, tiling, the classifier, every family's
figures, and an evaluated image equal to what the service answers."""
from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from contract import Tiling
from contract.folder import read_card, verify_model_dir, write_card
from core import imaging
from training import checkpoint as ckpt
from training import evaluate as ev
from training.data import FASHION_MNIST_CLASSES
from training import eval_cli
from modelops import metrics as tm
from training.classifier import ClassifierConfig, ensure_classifier, to_classifier_input

CLASSIFIER_STEPS = 20


def quiet(*args, **kwargs) -> None:
    pass


@pytest.fixture(scope="module")
def models(tiny_zoo, tmp_path_factory) -> Path:
    """A copy of the session's tiny zoo (conftest.tiny_zoo): eval writes into the cards."""
    out = tmp_path_factory.mktemp("eval-models")
    for folder in tiny_zoo.iterdir():
        if folder.is_dir() and not folder.name.startswith("."):  # the model folders, not export's lock files
            shutil.copytree(folder, out / folder.name)
    return out


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("classifier")


def verified(folder: Path, deep: bool = False) -> dict:
    """The folder's card (checked against its files by the contract) as its JSON document."""
    return verify_model_dir(folder, deep=deep).to_dict()


def evaluate(models: Path, family: str, cache: Path, **kw) -> tuple[dict, dict]:
    folder = models / f"tiny-{family}"
    before = verified(folder)
    options = ev.EvalOptions(name=folder.name, models=folder.parent, classifier_cache=cache,
                             classifier_steps=CLASSIFIER_STEPS, **kw)
    result = ev.evaluate_model(options, log=quiet)
    card = verified(folder, deep=True)  # sha256s still hold: only card.json changed
    assert card["metrics"]["heldout"] == json.loads(json.dumps(result))
    assert card["version"] == before["version"] and card["files"] == before["files"]
    assert card["metrics"]["parity_max_abs"] == before["metrics"]["parity_max_abs"]
    assert result["split"] == "test" and result["model_version"] == card["version"]
    assert "onnxruntime" in result["runtime"]
    return result, card


def finite(*values) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


# ------------------------------------------------------------------ metric definitions

def test_metric_definitions():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    assert tm.psnr(img, img) == 100.0
    off = np.clip(img.astype(int) + 1, 0, 255).astype(np.uint8)
    mse = np.mean((off.astype(float) - img) ** 2)
    assert tm.psnr(off, img) == pytest.approx(10 * math.log10(255 ** 2 / mse))
    y = tm.rgb_to_y(img)
    assert tm.ssim(y, y) == pytest.approx(1.0)
    assert tm.ssim(y, y + rng.normal(0, 20, y.shape)) < 0.9
    assert tm.rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235.0)
    assert tm.rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16.0)
    p, s = tm.y_scores(img, img, border=4)
    assert p == 100.0 and s == pytest.approx(1.0)
    grey = np.repeat(rng.integers(0, 256, (20, 20, 1), dtype=np.uint8), 3, 2)
    assert tm.colourfulness(grey) == 0.0
    assert tm.colourfulness(img) > 50
    f = rng.normal(size=(500, 6))
    assert abs(tm.frechet_distance(f, f)) < 1e-8
    shift = np.arange(6, dtype=float)
    assert tm.frechet_distance(f, f + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-6)
    assert tm.frechet_distance(f, 3 * f) > 10
    assert tm.psnr_from_mse(0.0, 2.0) == tm.PSNR_CAP == 100.0
    assert tm.psnr_from_mse(1e-30) == tm.PSNR_CAP
    assert tm.psnr_from_mse(mse) == pytest.approx(10 * math.log10(255 ** 2 / mse))
    px = rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)  # the service's pixels <-> graph values
    for p in px:
        assert np.array_equal(imaging.to_pixels(imaging.to_float(p, (-1.0, 1.0)), (-1.0, 1.0)), p)
        assert np.array_equal(imaging.to_pixels(imaging.to_float(p, (0.0, 1.0)), (0.0, 1.0)), p)


def test_classifier_input_handles_sizes():
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    out = to_classifier_input(x)
    assert out.shape == (3, 1, 28, 28) and out.dtype == np.float32
    assert np.allclose(out[:, 0], x[:, 2:30, 2:30] / 127.5 - 1, atol=1e-6)
    assert to_classifier_input(np.zeros((2, 1, 64, 64), np.float32)).shape == (2, 1, 28, 28)
    with pytest.raises(ValueError, match="grayscale"):
        to_classifier_input(np.zeros((2, 3, 28, 28), np.uint8))


# ------------------------------------------------------------------ the classifier

def test_classifier_trains_on_train_split_and_caches(tiny_datasets, classifier_cache):
    logs: list[str] = []
    clf = ensure_classifier(tiny_datasets["fashion"], classifier_cache, ClassifierConfig(steps=CLASSIFIER_STEPS),
                            log=logs.append)
    assert any("training the Fashion-MNIST classifier" in m for m in logs)
    info = clf.info
    assert 0.0 <= info["test_accuracy"] <= 1.0 and info["test_count"] == 32 and info["steps"] == CLASSIFIER_STEPS
    assert (classifier_cache / "fashion-classifier.onnx").is_file()
    payload = ckpt.load(classifier_cache / "fashion-classifier.pt")  # weights-only loadable
    assert payload["family"] == "classifier"
    logits, feats = clf.predict(np.zeros((5, 32, 32), np.uint8))
    assert logits.shape == (5, 10) and feats.shape == (5, 128)
    logs.clear()
    again = ensure_classifier(tiny_datasets["fashion"], classifier_cache, ClassifierConfig(steps=CLASSIFIER_STEPS),
                              log=logs.append)
    assert not logs and again.info == info  # cached: no retraining


# ------------------------------------------------------------------ every family

def test_eval_upscale(models, classifier_cache, tmp_path):
    result, card = evaluate(models, "srgan", classifier_cache, crop=48, anchors_dir=tmp_path / "no-anchors")
    assert finite(result["psnr_y"], result["ssim_y"], result["bicubic_psnr_y"], result["bicubic_ssim_y"])
    assert result["images"] == 6 and result["border"] == 4 and result["hr_crop"] == [48, 48]
    assert -1 <= result["ssim_y"] <= 1 and result["bicubic_psnr_y"] > 15
    assert "anchors_note" in result and "anchors" not in result
    full, _ = evaluate(models, "srgan", classifier_cache, crop=0, limit=2, anchors_dir=None)
    assert full["images"] == 2 and full["hr_crop"] == "full"


def test_eval_upscale_is_what_the_service_answers(models, tmp_path):
    """The SR image eval scores is, pixel for pixel, what POST /upscale answers for the same LR photo (tiled)."""
    from PIL import Image
    from service_fixtures import encode, service_client

    folder = tmp_path / "models" / "tiny-srgan"
    shutil.copytree(models / "tiny-srgan", folder)
    card = read_card(folder)
    card.tiling = Tiling(tile=8, overlap=2)  # smaller than the held-out LR images: both sides tile
    write_card(folder, card)
    served = ev.load_served(folder)
    assert served.image_spec.tile == 8
    pairs = list(ev.heldout_pairs(ev.data_config(served.card, None), 3, 0, served.image_spec.scale))
    assert pairs and all(min(lr.shape[:2]) > 8 for _, _, lr in pairs)
    with service_client(folder.parent, GANFORGE_DEVICE="cpu") as client:
        for _, hr, lr in pairs:
            mine = ev.super_resolve(served, lr)
            resp = client.post("/upscale", files={"image": ("lr.png", encode(Image.fromarray(lr)), "image/png")},
                               data={"model": "tiny-srgan"})
            assert resp.status_code == 200, resp.text
            answer = np.asarray(Image.open(io.BytesIO(resp.content)).convert("RGB"))
            assert mine.shape == hr.shape and np.array_equal(answer, mine)


def test_eval_colorize(models, classifier_cache):
    result, _ = evaluate(models, "pix2pix", classifier_cache)
    for key in ("l1", "psnr", "input_l1", "input_psnr", "colourfulness", "target_colourfulness",
                "input_colourfulness"):
        assert finite(result[key]), key
    assert 0 <= result["l1"] <= 1 and result["input_colourfulness"] == 0.0
    assert 0 < result["input_psnr"] < 100 and 0 < result["psnr"] < 100
    assert result["target_colourfulness"] > 0
    assert result["images"] == 6 and result["crops"] == 36  # 6 photos x 6 crops (>= 32 crops in all)
    limited, _ = evaluate(models, "pix2pix", classifier_cache, limit=3)
    assert limited["crops"] == 3


def test_eval_cyclegan(models, classifier_cache):
    result, _ = evaluate(models, "cyclegan", classifier_cache)
    assert finite(result["cycle_l1_a"], result["cycle_l1_b"])
    assert 0 <= result["cycle_l1_a"] <= 1 and 0 <= result["cycle_l1_b"] <= 1
    for key in ("a2b_target_share", "b2a_target_share", "real_a_share", "real_b_share",
                "unchanged_a2b_share", "unchanged_b2a_share"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["domains"] == {"a": "Sneaker", "b": "Ankle boot"}
    assert result["images_a"] >= 1 and result["images_b"] >= 1
    assert 0 <= result["classifier"]["test_accuracy"] <= 1


def test_eval_generate(models, classifier_cache):
    result, card = evaluate(models, "dcgan", classifier_cache, samples_per_class=4, limit=20)
    assert result["samples"] == 40 and result["heldout_images"] == 20
    assert set(result["class_match_per_class"]) == set(card["classes"])
    assert 0 <= result["class_match"] <= 1
    assert result["class_match"] == pytest.approx(np.mean(list(result["class_match_per_class"].values())))
    assert finite(result["frechet_distance"], result["frechet_distance_real_train"])
    assert result["frechet_distance_real_train"] >= -1e-6
    assert "test_accuracy" in result["classifier"]


def test_eval_cli(models, classifier_cache, capsys, tmp_path):
    name = "tiny-dcgan"
    args = ["--models", str(models), "--classifier-cache", str(classifier_cache),
            "--classifier-steps", str(CLASSIFIER_STEPS), "--samples-per-class", "2", "--limit", "10"]
    before = (models / name / "card.json").read_text()
    assert eval_cli.main([name, *args, "--dry-run"]) == 0
    assert (models / name / "card.json").read_text() == before
    assert eval_cli.main([name, *args]) == 0
    assert json.loads((models / name / "card.json").read_text())["metrics"]["heldout"]["samples"] == 20
    capsys.readouterr()
    assert eval_cli.main([name, *args, "--dry-run", "--data", "classes=[0, 3]"]) == 0  # the dataset config, changed
    out = capsys.readouterr().out
    shown = json.loads(out[out.index("{\n"):])
    assert shown["samples"] == 4 and shown["data_overrides"] == {"classes": [0, 3]}
    assert sorted(shown["class_match_per_class"]) == sorted([FASHION_MNIST_CLASSES[0], FASHION_MNIST_CLASSES[3]])
    assert eval_cli.main(["no-such-model", *args]) == 2
    assert "card.json is missing" in capsys.readouterr().err
    assert eval_cli.main([name, *args, "--data-root", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_sample_sheets_and_metrics_table(models, tiny_datasets, classifier_cache, tmp_path, capsys) -> None:
    """`python -m training sheets` draws every family from its ONNX graph on held-out data; the table reads the cards."""
    from PIL import Image

    from training import sheets

    evaluate(models, "cyclegan", classifier_cache)
    out = tmp_path / "sheets"
    names = [f"tiny-{f}" for f in ("dcgan", "pix2pix", "cyclegan", "srgan")]
    assert sheets.main([*names, "--models", str(models), "--out", str(out), "--n", "3", "--crop", "64"]) == 0
    printed = capsys.readouterr().out
    for name in names:
        img = Image.open(out / f"{name}.png")
        px = np.asarray(img.convert("L"), np.float64)
        assert img.width > 64 and img.height > 32 and px.std() > 5, name  # drawn, not blank
        assert f"| `{name}` |" in printed
    cards = {n: verified(models / n) for n in names}
    # a row shows the held-out figures the card carries, or says it was not evaluated
    row = sheets.metrics_row(cards["tiny-cyclegan"])
    share = cards["tiny-cyclegan"]["metrics"]["heldout"]["a2b_target_share"]
    assert f"{100 * share:.1f}%" in row
    assert "not evaluated" in sheets.metrics_row({**cards["tiny-dcgan"], "metrics": {}})
    # the generate sheet has one row of samples per class: its height grows with the class count
    dc = Image.open(out / "tiny-dcgan.png")
    classes = len(cards["tiny-dcgan"]["classes"])
    assert dc.height >= classes * cards["tiny-dcgan"]["output"]["size"][0] * 2
    # an unknown model is a clear error, not a traceback
    assert sheets.main(["nope", "--models", str(models), "--out", str(out)]) == 2


def test_data_config_defaults_only_for_models_without_a_training_run(tmp_path):
    """A card with a training block but no data section stays an error; a card without one (imported) gets the
    held-out photos by endpoint (tests/training/test_import_eval.py measures such models)."""
    from testkit.fixtures import write_fixture_models

    folders = write_fixture_models(tmp_path / "models")
    card = read_card(folders["srresnet-x4"])
    with pytest.raises(ev.EvalError, match="no data section"):
        ev.data_config(card, None)
    card.training = None
    (tmp_path / "photos").mkdir()
    assert ev.data_config(card, str(tmp_path / "photos")) == {"kind": "hr_folder", "root": str(tmp_path / "photos"),
                                                               "scale": 4, "hr_size": None}
    assert ev.evaluator_for(card, {}) is ev.eval_upscale
    with pytest.raises(ev.EvalError, match="does not exist.*prepare photos"):
        ev.data_config(card, str(tmp_path / "nowhere"))


def test_generate_figures_name_the_class_furthest_below_its_bar():
    from training.sheets import generate_figures

    h = {"class_match": 0.9, "frechet_distance": 3.0, "frechet_distance_real_train": 1.5,
         "class_match_per_class": {"Shirt": 0.7, "Sandal": 0.8, "Bag": 1.0},
         "classifier_real_per_class": {"Shirt": 0.68, "Sandal": 0.97, "Bag": 0.98}}
    text = generate_figures(h)
    assert text.startswith("90.0% class match; Frechet distance 3.0 (real-data floor 1.5)")
    assert text.endswith("furthest class: Sandal 80% (real images 97%)")
    assert "furthest" not in generate_figures({"class_match": 0.8})  # an older card: no per-class bar
