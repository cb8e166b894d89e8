"""A small Fashion-MNIST CNN: the judge for held-out evaluation of generate and translate models.

Trained on the official train split only (60k), tested on t10k; cached as a
weights-only checkpoint plus an ONNX export, so evaluation runs it through
onnxruntime like the models it judges. The cache key is the sha256 of the
train idx files and the classifier config: change either and it retrains.

    python -m training.classifier [--data-root data/fashion-mnist] [--cache runs/classifier] [--steps 1000]

Input: N x 1 x 28 x 28 in [-1, 1] (pixel / 127.5 - 1). 32 x 32 generator
output is centre-cropped by 2 px (the generator learned the 28 x 28 images
zero-padded to 32); other sizes are resized (PIL bilinear).
Outputs: `logits` [N, 10] and `features` [N, 128] (the penultimate layer,
for Frechet distances).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

CLASSIFIER_FILE = "fashion-classifier.pt"
ONNX_FILE = "fashion-classifier.onnx"
FEATURES = 128
RECIPE_VERSION = 2  # bump when the network or the training recipe changes: invalidates caches


@dataclass
class ClassifierConfig:
    steps: int = 1000  # batches; 1000 x 128 = 2.1 epochs of the train split
    batch_size: int = 128
    lr: float = 2e-3
    width: int = 32
    seed: int = 0


class FashionClassifier(nn.Module):
    """image[N, 1, 28, 28] in [-1, 1] -> (logits[N, 10], features[N, 128])."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        # strided convs instead of pooling: ~4x cheaper on CPU for the same accuracy here
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 5, 2, 2), nn.BatchNorm2d(w), nn.ReLU(),              # N x w x 14 x 14
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.BatchNorm2d(2 * w), nn.ReLU(),      # N x 2w x 7 x 7
            nn.Flatten(),
            nn.Linear(2 * w * 49, FEATURES), nn.ReLU())                          # N x 128
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(FEATURES, 10))     # N x 10

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.head(h), h


def to_classifier_input(images: np.ndarray) -> np.ndarray:
    """N x H x W or N x 1 x H x W (uint8 0..255, or float in [-1, 1]) -> float32 N x 1 x 28 x 28 in [-1, 1]."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected N x 1 x H x W grayscale images, got shape {x.shape}")
    x = x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float32)
    h, w = x.shape[2:]
    if (h, w) == (28, 28):
        return np.ascontiguousarray(x)
    if (h, w) == (32, 32):
        return np.ascontiguousarray(x[:, :, 2:30, 2:30])
    from PIL import Image
    out = [np.asarray(Image.fromarray(im[0]).resize((28, 28), Image.BILINEAR)) for im in x]
    return np.stack(out)[:, None].astype(np.float32)


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _train_files(root: Path) -> list[Path]:
    from .data import idx_file
    return [idx_file(root, "train-images-idx3-ubyte"), idx_file(root, "train-labels-idx1-ubyte")]


class OnnxClassifier:
    """The exported classifier on onnxruntime (CPU): predict(images) -> (logits, features)."""

    def __init__(self, onnx_path: str | Path, info: dict | None = None):
        import onnxruntime as ort
        self.path = Path(onnx_path)
        self.info = info or {}
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])

    def predict(self, images: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
        x = to_classifier_input(images)
        logits, feats = [], []
        for i in range(0, len(x), batch):
            lo, fe = self.session.run(["logits", "features"], {"image": x[i:i + batch]})
            logits.append(lo)
            feats.append(fe)
        if not logits:
            return np.zeros((0, 10), np.float32), np.zeros((0, FEATURES), np.float32)
        return np.concatenate(logits), np.concatenate(feats)

    def classify(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images)[0].argmax(1)


def _export_onnx(net: FashionClassifier, path: Path) -> None:
    from contract.folder import write_bytes_durably

    from .export.graph import quiet_exporter
    net.eval()
    example = torch.zeros(2, 1, 28, 28)
    tmp = path.with_name(path.name + ".part")
    with quiet_exporter():
        try:
            torch.onnx.export(net, (example,), str(tmp), input_names=["image"], output_names=["logits", "features"],
                              dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), dynamo=True, external_data=False)
        except Exception:  # noqa: BLE001 - fall back to the TorchScript exporter
            torch.onnx.export(net, (example,), str(tmp), input_names=["image"],
                              output_names=["logits", "features"], opset_version=18, dynamo=False,
                              dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}, "features": {0: "N"}})
    import onnx
    model = onnx.load(str(tmp), load_external_data=True)
    for p in path.parent.glob(tmp.name + "*"):
        p.unlink()
    write_bytes_durably(tmp, model.SerializeToString())
    tmp.replace(path)


def train_classifier(data_root: str | Path, cfg: ClassifierConfig, log=print) -> FashionClassifier:
    """Train on the train split; returns the torch network (eval mode)."""
    import torch.nn.functional as F

    from .data import FashionMNIST

    train = FashionMNIST(data_root, "train", image_size=28)
    x = torch.from_numpy(train.images.astype(np.float32) / 127.5 - 1.0)[:, None]
    y = torch.from_numpy(train.labels)
    torch.manual_seed(cfg.seed)
    net = FashionClassifier(cfg.width)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1))
    g = torch.Generator().manual_seed(cfg.seed)
    perm, pos = torch.randperm(len(y), generator=g), 0
    net.train()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if pos + cfg.batch_size > len(y):
            perm, pos = torch.randperm(len(y), generator=g), 0
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        logits, _ = net(x[idx])
        loss = F.cross_entropy(logits, y[idx], label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 200 == 0 or step + 1 == cfg.steps:
            log(f"classifier step {step + 1}/{cfg.steps} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f}s)")
    return net.eval()


def ensure_classifier(data_root: str | Path, cache_dir: str | Path = "runs/classifier",
                      cfg: ClassifierConfig | None = None, log=print) -> OnnxClassifier:
    """The cached classifier for this train split and config, trained (and exported) when missing or stale."""
    from . import checkpoint as ckpt

    cfg = cfg or ClassifierConfig()
    root, cache = Path(data_root), Path(cache_dir)
    key = {"recipe": RECIPE_VERSION, "train_sha256": _sha256_files(_train_files(root)), "config": dataclasses.asdict(cfg)}
    ckpt_path, onnx_path = cache / CLASSIFIER_FILE, cache / ONNX_FILE
    if ckpt_path.is_file() and onnx_path.is_file():
        try:
            payload = ckpt.load(ckpt_path)
            from contract.folder import sha256_file
            if payload.get("key") == key and payload.get("onnx_sha256") == sha256_file(onnx_path):
                return OnnxClassifier(onnx_path, _public(payload, ckpt_path))
            log(f"classifier cache {cache} is for other data or settings: retraining")
        except ckpt.CheckpointError as e:
            log(f"classifier cache unreadable ({e}): retraining")
    log(f"training the Fashion-MNIST classifier on {root} (train split, {cfg.steps} steps)")
    t0 = time.perf_counter()
    net = train_classifier(root, cfg, log)
    train_s = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    _export_onnx(net, onnx_path)
    onnx_clf = OnnxClassifier(onnx_path)
    from .data import FashionMNIST
    from contract.folder import sha256_file
    test = FashionMNIST(root, "test", image_size=28)
    accuracy = float((onnx_clf.classify(test.images) == test.labels).mean())
    payload = {"family": "classifier", "key": key, "config": dataclasses.asdict(cfg),
               "state": {k: v.detach().cpu() for k, v in net.state_dict().items()},
               "test_accuracy": accuracy, "test_count": int(len(test)), "train_seconds": round(train_s, 1),
               "onnx_sha256": sha256_file(onnx_path), "data_root": str(root)}
    ckpt.save(ckpt_path, payload)
    log(f"classifier: test accuracy {accuracy:.4f} on {len(test)} held-out images "
        f"(trained in {train_s:.0f}s); cached in {cache}")
    onnx_clf.info = _public(payload, ckpt_path)
    return onnx_clf


def _public(payload: dict, path: Path) -> dict:
    return {"test_accuracy": payload["test_accuracy"], "test_count": payload.get("test_count"),
            "steps": payload["config"]["steps"], "train_split_sha256": payload["key"]["train_sha256"],
            "onnx_sha256": payload["onnx_sha256"], "checkpoint": str(path)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.classifier", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data/fashion-mnist")
    p.add_argument("--cache", default="runs/classifier")
    p.add_argument("--steps", type=int, default=ClassifierConfig.steps)
    args = p.parse_args(argv)
    try:
        clf = ensure_classifier(args.data_root, args.cache, ClassifierConfig(steps=args.steps))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"test accuracy {clf.info['test_accuracy']:.4f} ({clf.path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
