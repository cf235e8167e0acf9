"""The paper's evaluation protocol: PSNR and SSIM on the Y channel of OpenCV's YCrCb.

Both images are cropped to multiples of 4 (bottom/right, as the official code aligns its
input), converted from 8-bit BGR to YCrCb with OpenCV, and scored on Y. SSIM is the old
scikit-image default: 7×7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, data
range 255, averaged over the map without its 3-pixel border.
"""

from __future__ import annotations

import cv2
import numpy as np

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 255.0
ALIGN = 4
ATTENTION_THRESHOLD = 0.5
"""An attention value at or above this marks a pixel as raindrop when scoring against a mask."""


def align(image: np.ndarray, multiple: int = ALIGN) -> np.ndarray:
    """Crop bottom/right so height and width are multiples of ``multiple``."""
    h, w = image.shape[:2]
    return image[: h - h % multiple, : w - w % multiple]


def luma(bgr: np.ndarray) -> np.ndarray:
    """Y of OpenCV's YCrCb for an 8-bit BGR (or already single-channel) image."""
    if bgr.ndim == 2:
        return bgr
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)[..., 0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two 8-bit single-channel images (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(DATA_RANGE**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two 8-bit single-channel images, 7×7 uniform window."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    n = SSIM_WINDOW * SSIM_WINDOW
    cov_norm = n / (n - 1)

    def mean(img: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(img, cv2.CV_64F, (SSIM_WINDOW, SSIM_WINDOW), borderType=cv2.BORDER_REFLECT)

    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (SSIM_WINDOW - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def score(pred_bgr: np.ndarray, gt_bgr: np.ndarray) -> tuple[float, float]:
    """(PSNR, SSIM) of a prediction against its ground truth, both 8-bit BGR, paper protocol."""
    if pred_bgr.shape[:2] != gt_bgr.shape[:2]:
        raise ValueError(
            f"size mismatch: {pred_bgr.shape[1]}×{pred_bgr.shape[0]} vs {gt_bgr.shape[1]}×{gt_bgr.shape[0]}"
        )
    p, g = luma(align(pred_bgr)), luma(align(gt_bgr))
    return psnr(p, g), ssim(p, g)


def attention_overlap(
    attention: np.ndarray, mask: np.ndarray, threshold: float = ATTENTION_THRESHOLD
) -> tuple[int, int]:
    """(intersection, union) in pixels of the thresholded attention map and a 0/255 drop mask.

    Counts rather than a ratio, so a dataset's IoU can pool them: one per-image ratio would
    let an image with a few drop pixels weigh as much as one covered in drops.
    """
    if attention.shape != mask.shape:
        raise ValueError(f"size mismatch: attention {attention.shape} vs mask {mask.shape}")
    pred, truth = attention >= threshold, mask > 127
    return int((pred & truth).sum()), int((pred | truth).sum())


def pooled_iou(overlaps: list[tuple[int, int]]) -> float:
    """IoU over a whole set from per-image (intersection, union) counts; 1.0 when both are empty."""
    union = sum(u for _, u in overlaps)
    return sum(i for i, _ in overlaps) / union if union else 1.0
