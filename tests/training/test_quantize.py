"""int8 variant: exact graph rewrites, `python -m training quantize` on tiny exports, serving it (GANFORGE_PRECISION)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from contract.folder import verify_model_dir
from service.config import Settings, SettingsError
from service.registry import ModelRegistry
from service_fixtures import encode, service_client, synthetic_photo, write_fixture_models
from testkit.tiny import export_tiny_models
from modelops import quantize as mq
from modelops import rewrites
from modelops.inputs import role_inputs
from training import quantize as q
from training.calibration import dataset_images
from modelops.metrics import PSNR_CAP

# PSNR of int8 against fp32 that the tiny test networks (a few channels, 2 training steps) must reach;
# the real models' figures are in their cards (the tool's own gate there is --min-psnr 40).
TINY_MIN_PSNR = 30.0


def quiet(*args, **kwargs) -> None:
    pass


def cpu(model_or_path) -> ort.InferenceSession:
    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def one_node_model(op: str, w: np.ndarray, b: np.ndarray | None, cin: int, **attrs) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(w, "w")] + ([numpy_helper.from_array(b, "b")] if b is not None else [])
    node = helper.make_node(op, ["x", "w"] + (["b"] if b is not None else []), ["y"], name="n", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("k,s,p,op,bias", [(4, 2, 1, 0, True), (3, 2, 1, 1, False), (4, 1, 0, 0, True),
                                           (3, 1, 1, 0, True), (6, 3, 1, 2, True)])
def test_convtranspose_as_conv_is_exact(k, s, p, op, bias):
    rng = np.random.default_rng(k * 100 + s * 10 + p)
    cin, cout = 5, 3
    w = rng.standard_normal((cin, cout, k, k)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) if bias else None
    model = one_node_model("ConvTranspose", w, b, cin, strides=[s, s], pads=[p, p, p, p], output_padding=[op, op],
                           kernel_shape=[k, k])
    before = cpu(model)
    rewritten = onnx.ModelProto.FromString(model.SerializeToString())
    assert rewrites.convtranspose_as_conv(rewritten) == 1
    assert "ConvTranspose" not in {n.op_type for n in rewritten.graph.node}
    after = cpu(rewritten)
    for h, wd in ((1, 1), (7, 5), (8, 8)):
        x = rng.standard_normal((2, cin, h, wd)).astype(np.float32)
        want, got = before.run(None, {"x": x})[0], after.run(None, {"x": x})[0]
        assert got.shape == want.shape
        assert np.max(np.abs(got - want)) < 1e-4


def test_convtranspose_rewrite_skips_what_it_cannot_express():
    w = np.ones((4, 2, 3, 3), np.float32)  # group 2: left alone
    model = one_node_model("ConvTranspose", w, None, 4, strides=[2, 2], pads=[1, 1, 1, 1], group=2)
    assert rewrites.convtranspose_as_conv(model) == 0
    model = one_node_model("ConvTranspose", np.ones((2, 2, 3, 3), np.float32), None, 2, strides=[2, 2],
                           pads=[0, 0, 0, 0])  # output 2L + 1: not s x the input
    assert rewrites.convtranspose_as_conv(model) == 0
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]


def test_pad_narrow_convs_is_exact():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((3, 8, 9, 9)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    model = one_node_model("Conv", w, b, 8, pads=[4, 4, 4, 4])
    wide = one_node_model("Conv", rng.standard_normal((16, 8, 3, 3)).astype(np.float32), None, 8)
    before = cpu(model)
    assert rewrites.pad_narrow_convs(model) == 1 and rewrites.pad_narrow_convs(wide) == 0
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Conv", "Slice"]
    x = rng.standard_normal((1, 8, 12, 10)).astype(np.float32)
    want, got = before.run(None, {"x": x})[0], cpu(model).run(None, {"x": x})[0]
    assert got.shape == want.shape == (1, 3, 12, 10)
    assert np.max(np.abs(got - want)) < 1e-4


@pytest.mark.parametrize("scale,mode", [(4, "half_pixel"), (2, "pytorch_half_pixel"), (3, "half_pixel")])
def test_bicubic_resize_as_conv_is_exact(scale, mode):
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="r", mode="cubic", cubic_coeff_a=-0.75,
                            coordinate_transformation_mode=mode)
    graph = helper.make_graph([node], "g", [x_info], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([1, 1, scale, scale], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 9
    before = cpu(model)
    assert rewrites.resize_as_conv(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Pad", "Conv", "DepthToSpace"]
    after = cpu(model)
    for h, w in ((1, 1), (2, 3), (9, 6)):  # edge clamping decides the small ones
        x = np.random.default_rng(h).uniform(-1, 1, (2, 3, h, w)).astype(np.float32)
        want, got = before.run(None, {"x": x})[0], after.run(None, {"x": x})[0]
        assert got.shape == want.shape == (2, 3, h * scale, w * scale)
        assert np.max(np.abs(got - want)) < 1e-5
    linear = one_node_model("Conv", np.ones((3, 3, 1, 1), np.float32), None, 3)
    linear.graph.node[0].op_type = "Resize"  # not a cubic Resize with scales: left alone
    assert rewrites.resize_as_conv(linear) == 0


def test_psnr_definition():
    assert mq.psnr_from_mse(0.0, 2.0) == PSNR_CAP
    assert mq.psnr_from_mse(4e-4, 2.0) == pytest.approx(40.0)  # peak^2 / mse = 1e4


@pytest.fixture(scope="module")
def tiny_models(tiny_datasets, tmp_path_factory) -> Path:
    """One tiny exported model per family (TorchScript exporter, no fp16), trained 2 steps on the tiny datasets."""
    # srgan as shipped (no norm, bicubic skip): a Resize and the skip Add in the graph
    return export_tiny_models(tiny_datasets, tmp_path_factory.mktemp("q-runs"), tmp_path_factory.mktemp("q-models"),
                              quiet, srgan_generator={"norm": "none", "skip": "bicubic"})


def measured_psnr(folder: Path, card: dict, role: str, feeds: list[dict]) -> float:
    """int8 vs fp32 PSNR computed here, independently of the tool, on inputs the tool never saw."""
    fp32 = cpu(folder / card["files"][role]["path"])
    int8 = cpu(folder / card["variants"]["int8"]["files"][role]["path"])
    lo, hi = (card.get("roles", {}).get(role, {}).get("output") or card["output"])["range"]
    mse = np.mean([np.mean((np.clip(fp32.run(None, f)[0], lo, hi) - np.clip(int8.run(None, f)[0], lo, hi)) ** 2)
                   for f in feeds])
    return float(10 * np.log10((hi - lo) ** 2 / mse)) if mse > 0 else float("inf")


@pytest.mark.parametrize("family", ["dcgan", "pix2pix", "cyclegan", "srgan"])
def test_quantize_publishes_a_checked_int8_variant(family, tiny_models):
    folder = tiny_models / f"tiny-{family}"
    before = verify_model_dir(folder).to_dict()
    variant = q.quantize_model(mq.QuantizeOptions(name=folder.name, models=tiny_models, calibration=8, heldout=4,
                                                 size=32, min_psnr=TINY_MIN_PSNR, rounds=1), log=quiet)
    checked = verify_model_dir(folder, deep=True)  # every file, int8 included, matches its sha256 and loads
    card = checked.to_dict()
    assert card["variants"]["int8"] == json.loads(json.dumps(variant))
    assert card["version"] == before["version"] == variant["of_version"] and card["files"] == before["files"]
    assert set(variant["files"]) == set(card["files"])
    for role, entry in variant["files"].items():
        assert entry["path"] == f"{role}.int8.onnx"
        ops = {n.op_type for n in onnx.load(str(folder / entry["path"])).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "ConvTranspose" not in ops
        roles = variant["roles"][role]
        if family in ("dcgan", "pix2pix"):
            assert roles["convtranspose_as_conv"] > 0  # their decoders, so that they can run int8
        assert roles["rewrite_max_abs"] < 1e-3
        feeds, _ = role_inputs(checked, role, "test", 3, 40, None, seed=99, batch=3, dataset=dataset_images)
        assert measured_psnr(folder, card, role, feeds) >= TINY_MIN_PSNR
    assert variant["psnr_vs_fp32_db_min"] >= TINY_MIN_PSNR and variant["psnr_vs_fp32_db"] >= variant["psnr_vs_fp32_db_min"]
    assert variant["speedup"] > 0 and variant["timing"]["machine"]["logical_cores"] >= 1
    if family != "dcgan":
        assert "train split" in variant["calibration"][next(iter(card["files"]))]
        assert "test split" in variant["heldout"][next(iter(card["files"]))]
    assert not list(tiny_models.glob(f".{folder.name}.int8-*"))  # staging removed


def test_quantize_refuses_below_the_gate_and_writes_nothing(tiny_models, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "tiny-srgan", models / "tiny-srgan")
    card_before = (models / "tiny-srgan" / "card.json").read_bytes()
    files_before = sorted(p.name for p in (models / "tiny-srgan").iterdir())
    with pytest.raises(mq.QuantizeError, match="below --min-psnr"):
        q.quantize_model(mq.QuantizeOptions(name="tiny-srgan", models=models, calibration=2, heldout=2, size=16,
                                           min_psnr=PSNR_CAP + 1, rounds=1), log=quiet)
    assert (models / "tiny-srgan" / "card.json").read_bytes() == card_before
    assert sorted(p.name for p in (models / "tiny-srgan").iterdir()) == files_before
    assert not list(models.glob(".tiny-srgan.int8-*"))
    from training.__main__ import main
    assert main(["quantize", "tiny-srgan", "--models", str(models), "--calibration", "2", "--heldout", "2",
                 "--size", "16", "--rounds", "1", "--min-psnr", "1000"]) == 3
    assert "below --min-psnr" in capsys.readouterr().err
    assert main(["quantize", "nope", "--models", str(models)]) == 2


def test_quantize_again_replaces_the_variant(tiny_models, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "tiny-cyclegan", models / "tiny-cyclegan")
    first = q.quantize_model(mq.QuantizeOptions(name="tiny-cyclegan", models=models, calibration=4, heldout=2,
                                               min_psnr=TINY_MIN_PSNR, rounds=1), log=quiet)
    second = q.quantize_model(mq.QuantizeOptions(name="tiny-cyclegan", models=models, calibration=8, heldout=2,
                                                per_channel=False, min_psnr=TINY_MIN_PSNR, rounds=1), log=quiet)
    card = verify_model_dir(models / "tiny-cyclegan", deep=True).to_dict()
    assert card["variants"]["int8"]["per_channel"] is False and first["per_channel"] is True
    assert card["variants"]["int8"]["files"] == second["files"]


# ------------------------------------------------------------------ serving


def test_precision_setting_parses_defaults_and_per_model_entries():
    s = Settings.from_env({"GANFORGE_PRECISION": "int8, colorize:fp32"})
    assert (s.precision_for("srresnet-x4"), s.precision_for("colorize")) == ("int8", "fp32")
    s = Settings.from_env({"GANFORGE_PRECISION": "srgan-x4:int8"})
    # the default is auto (bf16 where OpenVINO, the CPU and the card's gate allow, else fp32: test_backends.py)
    assert (s.precision_for("srgan-x4"), s.precision_for("fashion")) == ("int8", "auto")
    assert Settings.from_env({}).precision_for("x") == "auto"
    for bad in ("int4", "fp32,int8", "a:int8,a:fp32", "a:"):
        with pytest.raises(SettingsError, match="GANFORGE_PRECISION"):
            Settings.from_env({"GANFORGE_PRECISION": bad})


def test_each_variant_runs_only_on_its_provider():
    """int8 is for the CPU provider, fp16 for CUDA: the other provider (or a card without the variant) gets
    the fp32 files and a note saying why. Pure file choice: no session, so the CUDA case is testable here."""
    from types import SimpleNamespace

    from contract import FileEntry, Variant
    from core.loading import variant_files
    from core.runtime import CPU, CUDA

    import hashlib
    sha = lambda path: hashlib.sha256(path.encode()).hexdigest()  # noqa: E731
    entry = lambda path: FileEntry(path=path, sha256=sha(path), bytes=1)  # noqa: E731
    card = SimpleNamespace(files={"generator": entry("generator.onnx")},
                           variants={"fp16": Variant(produced="export", files={"generator": entry("generator.fp16.onnx")}),
                                     "int8": Variant(produced="quantize", files={"generator": entry("generator.int8.onnx")})})
    roles = {"generator": "generator.onnx"}
    cuda, cpu = [(CUDA, {"device_id": "0"}), CPU], [CPU]
    assert variant_files(card, roles, "fp16", cuda) == ({"generator": ("generator.fp16.onnx", sha("generator.fp16.onnx"))}, None)
    assert variant_files(card, roles, "int8", cpu) == ({"generator": ("generator.int8.onnx", sha("generator.int8.onnx"))}, None)
    fp32 = {"generator": ("generator.onnx", sha("generator.onnx"))}
    files, note = variant_files(card, roles, "fp16", cpu)
    assert files == fp32 and "fp16 is a variant for CUDAExecutionProvider" in note
    files, note = variant_files(card, roles, "int8", cuda)
    assert files == fp32 and "int8 is a variant for CPUExecutionProvider" in note
    del card.variants["fp16"]
    files, note = variant_files(card, roles, "fp16", cuda)
    assert files == fp32 and "no fp16 variant" in note and "export" in note
    assert Settings.from_env({"GANFORGE_PRECISION": "fp16,srresnet-x4:int8"}).precision_for("fashion") == "fp16"


@pytest.fixture()
def served(tmp_path) -> Path:
    """The service's fixture models, srresnet-x4 with an int8 variant (synthetic calibration: no dataset)."""
    root = tmp_path / "models"
    write_fixture_models(root)
    variant = q.quantize_model(mq.QuantizeOptions(name="srresnet-x4", models=root, calibration=4, heldout=2, size=16,
                                                 rounds=1, min_psnr=TINY_MIN_PSNR), log=quiet)
    assert "synthetic" in variant["calibration"]["generator"]
    return root


def test_registry_runs_the_configured_variant_and_falls_back(served, caplog):
    settings = Settings(models_dir=served, device="cpu", precision="int8", model_precision=(("edges2color", "fp32"),))
    with caplog.at_level("WARNING", logger="bentoml.ganforge"):
        registry = ModelRegistry.load(settings)
    sr = registry.get("srresnet-x4")
    assert sr.ready and sr.precision == "int8" and sr.precision_note is None
    ops = {n.op_type for n in onnx.ModelProto.FromString(
        (served / "srresnet-x4" / "generator.int8.onnx").read_bytes()).graph.node}
    assert "QuantizeLinear" in ops
    shoe = registry.get("shoe2boot")  # no int8 variant: fp32, with the reason, logged
    assert shoe.ready and shoe.precision == "fp32" and "no int8 variant" in shoe.precision_note
    assert any("shoe2boot: int8 requested, serving fp32" in r.getMessage() for r in caplog.records)
    assert registry.get("edges2color").precision == "fp32" and registry.get("edges2color").precision_note is None
    listed = {m["name"]: m for m in registry.describe()["models"]}
    assert listed["srresnet-x4"]["precision"] == "int8"
    assert listed["srresnet-x4"]["variants"]["int8"]["psnr_vs_fp32_db"] >= TINY_MIN_PSNR
    assert listed["shoe2boot"]["precision"] == "fp32" and "precision_note" in listed["shoe2boot"]
    fp32 = ModelRegistry.load(Settings(models_dir=served, device="cpu")).get("srresnet-x4")
    assert fp32.precision == "fp32" and fp32.precision_note is None
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32)
    a = fp32.sessions["generator"].run(None, {"image": x})[0]
    b = sr.sessions["generator"].run(None, {"image": x})[0]
    assert a.shape == b.shape and not np.array_equal(a, b)  # a different graph ran
    assert 10 * np.log10(4 / np.mean((a - b) ** 2)) >= TINY_MIN_PSNR

    (served / "srresnet-x4" / "generator.int8.onnx").write_bytes(b"corrupt")  # the variant fails: fp32 serves
    broken = ModelRegistry.load(settings).get("srresnet-x4")
    assert broken.ready and broken.precision == "fp32" and "sha256 mismatch" in broken.precision_note
    (served / "srresnet-x4" / "generator.int8.onnx").unlink()
    gone = ModelRegistry.load(settings).get("srresnet-x4")
    assert gone.ready and gone.precision == "fp32" and "missing" in gone.precision_note


def test_http_serves_int8_when_configured(served):
    from PIL import Image
    png = encode(Image.fromarray(synthetic_photo(20, 16, seed=4)))
    outputs = {}
    for precision in ("fp32", "int8"):
        with service_client(served, GANFORGE_DEVICE="cpu", GANFORGE_PRECISION=f"srresnet-x4:{precision}") as client:
            models = {m["name"]: m for m in client.get("/models").json()["models"]}
            assert models["srresnet-x4"]["precision"] == precision
            assert models["shoe2boot"]["precision"] == "fp32"
            r = client.post("/upscale", files={"image": ("x.png", png, "image/png")}, data={"model": "srresnet-x4"})
            assert r.status_code == 200, r.text
            outputs[precision] = r.content
    import io
    a, b = (np.asarray(Image.open(io.BytesIO(outputs[k])), dtype=np.float64) for k in ("fp32", "int8"))
    assert a.shape == b.shape == (64, 80, 3)
    mse = np.mean((a - b) ** 2)
    assert mse > 0 and 10 * np.log10(255 ** 2 / mse) >= TINY_MIN_PSNR
