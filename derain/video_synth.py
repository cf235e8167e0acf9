"""Render short rainy clips for measuring video deraining: a camera moving over a clean photo
behind drops that stay put on the glass.

The camera pans, zooms and shakes over the photo (or holds still); the drops come from
:func:`derain.synth.render_raindrops` called on every frame with a fresh generator from one
seed, which draws the same layout on any background of the same size, so the drops are fixed
on the glass while the scene moves behind them. Drops do not slide. Each clip is a folder in
the Raindrop layout (``data/<t>_rain.png``, ``gt/<t>_clean.png``, ``mask/<t>_mask.png``) plus
``clip.json``, so ``derain eval`` scores its frames as photos and ``derain eval --video`` as a clip.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .synth import CLEAN_DIR, MASK_DIR, RAIN_DIR, RENDERER_VERSION, render_raindrops

MOTIONS = ("moving", "static")
CLIP_FILE = "clip.json"
MARGIN = 1.6
"""The photo is scaled to this many times the frame's size, leaving room for the camera to travel."""
DROP_TRIES = 20


@dataclass(frozen=True)
class CameraPath:
    """Per-frame camera motion in pixels of a 256-px short side (scaled to the frame)."""

    pan: tuple[float, float]
    """Velocity (x, y) per frame."""
    zoom: float
    """Relative zoom change per frame (0.01 = 1 % closer each frame)."""
    shake: float
    """Standard deviation of the random jitter added to each frame's position."""

    @classmethod
    def draw(cls, rng: np.random.Generator, motion: str) -> CameraPath:
        if motion == "static":
            return cls((0.0, 0.0), 0.0, 0.0)
        speed, angle = float(rng.uniform(1.5, 5.0)), float(rng.uniform(0, 2 * np.pi))
        return cls(
            (speed * math.cos(angle), speed * math.sin(angle)),
            float(rng.uniform(-0.01, 0.01)),
            float(rng.uniform(0.2, 1.0)),
        )

    def views(
        self, rng: np.random.Generator, count: int, size: tuple[int, int], photo: tuple[int, int]
    ) -> list[np.ndarray]:
        """2×3 affine maps (frame → photo coordinates) for ``count`` frames, kept inside the photo."""
        w, h = size
        pw, ph = photo
        scale = min(w, h) / 256.0
        maps = []
        for t in range(count):
            zoom = (1.0 + self.zoom) ** (t - count / 2)
            jitter = rng.normal(0.0, self.shake, 2) * scale if self.shake else np.zeros(2)
            half_w, half_h = w / (2 * zoom), h / (2 * zoom)
            cx = np.clip(pw / 2 + (self.pan[0] * (t - count / 2)) * scale + jitter[0], half_w, pw - half_w)
            cy = np.clip(ph / 2 + (self.pan[1] * (t - count / 2)) * scale + jitter[1], half_h, ph - half_h)
            maps.append(np.array([[1 / zoom, 0, cx - half_w], [0, 1 / zoom, cy - half_h]], np.float64))
        return maps


def render_clip(
    photo_rgb: np.ndarray, size: tuple[int, int], frames: int, rng: np.random.Generator, motion: str = "moving"
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], CameraPath]:
    """(rainy, clean, mask) frames, uint8 RGB / RGB / 0-255, of the camera moving over ``photo_rgb``.

    The clean frames are the renderer's: the scene as the same camera took it (exposure, focus,
    noise and compression alike), so only the drops differ.
    """
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion '{motion}' (use {' or '.join(MOTIONS)})")
    w, h = size
    fit = MARGIN * max(w / photo_rgb.shape[1], h / photo_rgb.shape[0])
    photo = cv2.resize(photo_rgb, None, fx=fit, fy=fit, interpolation=cv2.INTER_AREA if fit < 1 else cv2.INTER_CUBIC)
    path = CameraPath.draw(rng, motion)
    views = path.views(rng, frames, size, (photo.shape[1], photo.shape[0]))
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    scenes = [
        np.clip(cv2.warpAffine(photo, m, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT), 0, 255).astype(np.uint8)
        for m in views
    ]
    drop_seed = _seed_with_drops(scenes[0], rng)
    rendered = [
        render_raindrops(scene.astype(np.float32) / 255.0, np.random.default_rng(drop_seed)) for scene in scenes
    ]
    return (
        [_to_uint8(r.rainy) for r in rendered],
        [_to_uint8(r.clean) for r in rendered],
        [r.mask for r in rendered],
        path,
    )


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _seed_with_drops(frame: np.ndarray, rng: np.random.Generator) -> int:
    """A drop-layout seed whose layout is not empty (the renderer leaves some samples dry)."""
    background = frame.astype(np.float32) / 255.0
    for _ in range(DROP_TRIES):
        seed = int(rng.integers(2**32))
        if render_raindrops(background, np.random.default_rng(seed)).mask.any():
            return seed
    raise ValueError("the renderer drew no drops in 20 tries")


def synthesize_clips(
    photos: Sequence[Path],
    out: Path,
    count: int,
    size: tuple[int, int],
    frames: int,
    motion: str = "moving",
    seed: int = 0,
    on_clip: Callable[[int], None] | None = None,
) -> None:
    """Write ``count`` clips as ``out/<i>/`` folders in the Raindrop layout with ``clip.json``."""
    if not photos:
        raise ValueError("no photos to render on")
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        photo_path = photos[int(rng.integers(len(photos)))]
        bgr = cv2.imread(str(photo_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read photo {photo_path}")
        rainy, clean, masks, path = render_clip(bgr[..., ::-1], size, frames, rng, motion)
        clip = Path(out) / str(i)
        dirs = [clip / d for d in (RAIN_DIR, CLEAN_DIR, MASK_DIR)]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        for t in range(frames):
            cv2.imwrite(str(dirs[0] / f"{t}_rain.png"), rainy[t][..., ::-1])
            cv2.imwrite(str(dirs[1] / f"{t}_clean.png"), clean[t][..., ::-1])
            cv2.imwrite(str(dirs[2] / f"{t}_mask.png"), masks[t])
        info = {"photo": photo_path.name, "motion": motion, "frames": frames, "seed": [seed, i]}
        info |= {"camera": asdict(path), "renderer_version": RENDERER_VERSION}
        (clip / CLIP_FILE).write_text(json.dumps(info, indent=2))
        if on_clip:
            on_clip(i)
