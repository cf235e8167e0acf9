"""Make the shipped example: a procedurally drawn street scene with rendered raindrops.

Nothing is downloaded or copied: the scene is drawn here and the drops come from
:mod:`derain.synth`. Run from the repository root: ``python examples/make_example.py``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from derain.synth import RenderConfig, render_raindrops

WIDTH, HEIGHT = 720, 480
SEED = 7
HERE = Path(__file__).resolve().parent


def _texture(rng: np.random.Generator, shape: tuple[int, int], scale: int, amount: float) -> np.ndarray:
    coarse = rng.standard_normal((shape[0] // scale + 2, shape[1] // scale + 2)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)[..., None] * amount


def draw_scene(rng: np.random.Generator) -> np.ndarray:
    """A street under an overcast sky: buildings with windows, trees, a road with markings."""
    h, w = HEIGHT, WIDTH
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to((0.92 - 0.25 * y) * np.array([0.78, 0.84, 0.93], np.float32), (h, w, 3)).copy()

    horizon = int(h * 0.62)
    x = np.arange(w)
    hills = (horizon - 40 - 25 * np.sin(x / 90.0) - 15 * np.sin(x / 37.0 + 1)).astype(int)
    for col in range(w):
        img[hills[col] : horizon, col] = (0.45, 0.55, 0.5)

    left = 0
    while left < w:
        bw, bh = int(rng.integers(70, 160)), int(rng.integers(120, 300))
        top = horizon - bh
        colour = rng.uniform(0.3, 0.85, 3).astype(np.float32)
        img[top:horizon, left : left + bw] = colour
        for wy in range(top + 12, horizon - 20, 26):
            for wx in range(left + 10, left + bw - 16, 22):
                lit = rng.random() < 0.3
                img[wy : wy + 14, wx : wx + 12] = (0.95, 0.85, 0.55) if lit else (0.2, 0.25, 0.32)
        left += bw + int(rng.integers(0, 30))

    img[horizon:] = (0.32, 0.32, 0.34)
    img[horizon : horizon + 10] = (0.7, 0.7, 0.68)  # kerb
    for lx in range(0, w, 90):
        pts = np.array([[lx, h - 60], [lx + 50, h - 60], [lx + 44, h - 50], [lx - 6, h - 50]], np.int32)
        cv2.fillConvexPoly(img, pts, (0.95, 0.95, 0.9))

    for _ in range(6):
        cx, cy, r = int(rng.integers(0, w)), horizon - int(rng.integers(20, 60)), int(rng.integers(25, 50))
        cv2.rectangle(img, (cx - 4, cy), (cx + 4, horizon + 5), (0.25, 0.18, 0.12), -1)
        cv2.circle(img, (cx, cy - r // 2), r, (0.2, 0.42, 0.18), -1)

    img += _texture(rng, (h, w), 3, 0.03) + _texture(rng, (h, w), 40, 0.04)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 0.7), 0, 1)


def main() -> None:
    rng = np.random.default_rng(SEED)
    scene = draw_scene(rng)
    # a daylight shot through a lens cover 8 cm away, focused on the street: no noise, no JPEG yet
    cfg = RenderConfig(
        coverage=(0.2, 0.2),
        glass_mm=(80.0, 80.0),
        drop_focus_prob=0.0,
        night_prob=0.0,
        empty_prob=0.0,
        noise_prob=0.0,
        jpeg_prob=0.0,
    )
    rainy, clean, _ = render_raindrops(scene.astype(np.float32), rng, cfg)
    for name, img in (("rainy.jpg", rainy), ("clean.jpg", clean)):
        cv2.imwrite(str(HERE / name), np.rint(img[..., ::-1] * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])


if __name__ == "__main__":
    main()
