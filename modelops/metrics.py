"""The project's image-quality figures, numpy only: one PSNR, one SSIM, for eval, quantize, training logs and bench.

Definitions are in docs/model-card.md ("Held-out metrics"):

- `psnr` / `psnr_from_mse`: 10 log10(peak^2 / MSE), capped at PSNR_CAP (identical outputs, MSE 0, are
  recorded as PSNR_CAP, not inf: JSON has no inf). `peak` is the value range (255 for 8-bit pixels,
  hi - lo for graph values).
- `ssim`: Wang et al. 2004, 11x11 Gaussian window (sigma 1.5), K = (0.01, 0.03), valid region.
- `rgb_to_y` / `y_scores`: PSNR and SSIM on the Y channel (ITU-R BT.601, as MATLAB rgb2ycbcr), the
  super-resolution convention.
- `colourfulness`: Hasler & Suesstrunk (2003).
- `frechet_distance`: between Gaussians fitted to two feature sets (FID's formula).
"""
from __future__ import annotations

import math

import numpy as np

PSNR_CAP = 100.0  # dB recorded for identical outputs (MSE 0), and the most any PSNR reads


def psnr_from_mse(mse: float, peak: float = 255.0) -> float:
    """10 log10(peak^2 / mse) in dB, at most PSNR_CAP (PSNR_CAP when mse <= 0)."""
    if mse <= 0:
        return PSNR_CAP
    return min(PSNR_CAP, float(10.0 * math.log10(peak * peak / mse)))


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference, in float64."""
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR of two same-shaped arrays whose values span `data_range` (255 for uint8 pixels)."""
    return psnr_from_mse(mse(a, b), data_range)


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> Y in [16, 235] (ITU-R BT.601, as MATLAB rgb2ycbcr), float64."""
    x = rgb.astype(np.float64) / 255.0
    return 16.0 + 65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    k = np.exp(-((np.arange(size) - size // 2) ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def filter_valid(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation with the 1-D kernel `k` (MATLAB filter2(k k', img, 'valid'))."""
    n = len(k)
    h, w = img.shape
    rows = sum(k[i] * img[i:h - n + 1 + i] for i in range(n))
    return sum(k[i] * rows[:, i:w - n + 1 + i] for i in range(n))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM (Wang et al. 2004) of two 2-D arrays: 11x11 Gaussian window, sigma 1.5, K = (0.01, 0.03), valid region."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    k = gaussian_window()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = filter_valid(a, k), filter_valid(b, k)
    saa = filter_valid(a * a, k) - mu_a ** 2
    sbb = filter_valid(b * b, k) - mu_b ** 2
    sab = filter_valid(a * b, k) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return float(m.mean())


def y_scores(out: np.ndarray, ref: np.ndarray, border: int) -> tuple[float, float]:
    """(PSNR, SSIM) on the Y channel of two H x W x 3 uint8 images, `border` px cropped on every side."""
    ya, yb = rgb_to_y(out), rgb_to_y(ref)
    if border:
        ya, yb = ya[border:-border, border:-border], yb[border:-border, border:-border]
    return psnr(ya, yb), ssim(ya, yb)


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) M: sigma_rgyb + 0.3 * mu_rgyb, on 0..255 RGB."""
    x = rgb.astype(np.float64)
    rg = x[..., 0] - x[..., 1]
    yb = 0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) of Gaussians fitted to two feature sets."""
    f1, f2 = f1.astype(np.float64), f2.astype(np.float64)
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.atleast_2d(np.cov(f1, rowvar=False)), np.atleast_2d(np.cov(f2, rowvar=False))
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S1^1/2
    m = r1 @ s2 @ r1  # Tr((S1 S2)^1/2) = Tr((S1^1/2 S2 S1^1/2)^1/2), a symmetric PSD matrix
    tr = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)
