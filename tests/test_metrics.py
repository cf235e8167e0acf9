import cv2
import numpy as np
import pytest

from derain.metrics import align, attention_overlap, luma, pooled_iou, psnr, score, ssim


def test_psnr_on_known_values():
    a = np.zeros((8, 8), np.uint8)
    assert abs(psnr(a, a + 10) - 10 * np.log10(255**2 / 100)) < 1e-9
    assert psnr(a, a) == float("inf")


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Direct per-window SSIM with sample covariance, valid windows only (the old skimage default)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0] - 6):
        for j in range(x.shape[1] - 6):
            a, b = x[i : i + 7, j : j + 7].ravel(), y[i : i + 7, j : j + 7].ravel()
            ma, mb = a.mean(), b.mean()
            va, vb = a.var(ddof=1), b.var(ddof=1)
            cov = ((a - ma) * (b - mb)).sum() / 48
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_hand_computation():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (13, 15)).astype(np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-40, 40, x.shape), 0, 255).astype(np.uint8)
    assert abs(ssim(x, y) - _ssim_by_hand(x, y)) < 1e-10
    assert abs(ssim(x, x) - 1.0) < 1e-12


def test_protocol_crops_to_multiples_of_four_and_uses_opencv_luma():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (11, 18, 3)).astype(np.uint8)
    b = rng.integers(0, 256, (11, 18, 3)).astype(np.uint8)
    assert align(a).shape == (8, 16, 3)
    ya, yb = (
        cv2.cvtColor(a[:8, :16], cv2.COLOR_BGR2YCrCb)[..., 0],
        cv2.cvtColor(b[:8, :16], cv2.COLOR_BGR2YCrCb)[..., 0],
    )
    assert np.array_equal(luma(a[:8, :16]), ya)
    p, s = score(a, b)
    assert p == psnr(ya, yb) and s == ssim(ya, yb)


def test_attention_overlap_counts_pixels_at_the_threshold():
    attention = np.array([[0.0, 0.49, 0.5], [0.9, 1.0, 0.2]], np.float32)
    mask = np.array([[255, 255, 0], [255, 0, 0]], np.uint8)
    # predicted: (0,2) (1,0) (1,1); truth: (0,0) (0,1) (1,0)
    assert attention_overlap(attention, mask) == (1, 5)
    assert attention_overlap(attention, mask, threshold=0.4) == (2, 5)
    with pytest.raises(ValueError, match="size mismatch"):
        attention_overlap(attention, mask[:, :2])


def test_pooled_iou_weighs_images_by_their_pixels():
    assert pooled_iou([(1, 5), (9, 10)]) == pytest.approx(10 / 15)  # not the mean of 0.2 and 0.9
    assert pooled_iou([(0, 0)]) == 1.0  # nothing predicted, nothing there
