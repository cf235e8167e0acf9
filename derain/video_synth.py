"""Render short rainy clips for measuring video deraining: a camera moving over a clean photo
behind drops that stay put on the glass, a few of them sliding slowly down.

The camera moves as footage from dash-cams, drones and robots does: a pan of 1.5–20 px per
frame at a 720-px-wide frame (a drone yawing, a robot turning), a zoom of up to 2.5 % per frame
(driving forward), and a little shake; or it holds still. The drops come from
:func:`derain.synth.render_raindrops` called on every frame with a fresh generator from one
seed, which draws the same layout (and the same camera, focus and light) on any background of
the same size, so the drops are fixed on the glass while the scene moves behind them. Sliding
drops are the same layout rendered on a canvas shifted down a little more each frame, cut out
around the drops chosen to slide. Sensor noise is drawn afresh for every frame, as a sensor's
is. Each clip is a folder in the Raindrop layout (``data/<t>_rain.png``, ``gt/<t>_clean.png``,
``mask/<t>_mask.png``) plus ``clip.json``, so ``derain eval`` scores its frames as photos and
``derain eval --video`` as a clip.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from .imageio import write_atomic
from .synth import (
    CLEAN_DIR,
    MASK_DIR,
    RAIN_DIR,
    REFERENCE_WIDTH,
    RENDERER_VERSION,
    RenderConfig,
    Rendering,
    check_size,
    log_uniform,
    render_raindrops,
    write_png,
)

MOTIONS = ("moving", "static")
CLIP_FILE = "clip.json"
PAN_SPEED = (1.5, 20.0)
"""Pan speed range (px per frame at a 720-px-wide frame), drawn log-uniformly."""
ZOOM = (-0.005, 0.025)
"""Zoom per frame (0.01 = the scene 1 % larger each frame): mostly forward, as a dash-cam drives."""
SHAKE = (0.3, 2.0)
"""Jitter of the camera's position (px at 720 wide, standard deviation per frame)."""
SLIDE_SPEED = (0.5, 3.0)
"""How fast a sliding drop creeps down the glass (px per frame at 720 wide)."""
SLIDE_SHARE = 0.3
"""Share of the stand-alone drops that slide, in a clip that has sliding drops."""
DROP_TRIES = 20
#: The clip's drops are rendered without the renderer's sensor noise, which is drawn per frame here.
CLIP_RENDER = replace(RenderConfig(), noise_prob=0.0)


@dataclass(frozen=True)
class CameraPath:
    """Per-frame camera motion, lengths in pixels of a 720-px-wide frame (scaled to the frame)."""

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
        speed = log_uniform(rng, PAN_SPEED)
        angle = float(rng.uniform(0, 2 * np.pi))
        return cls(
            (speed * math.cos(angle), speed * math.sin(angle)), float(rng.uniform(*ZOOM)), float(rng.uniform(*SHAKE))
        )

    def views(self, rng: np.random.Generator, count: int, size: tuple[int, int]) -> list[np.ndarray]:
        """2×3 affine maps, frame → scene coordinates (centred on the clip's middle view), one per frame."""
        w, h = size
        scale = w / REFERENCE_WIDTH
        maps = []
        for t in range(count):
            k = t - (count - 1) / 2
            zoom = (1.0 + self.zoom) ** k
            jitter = rng.normal(0.0, self.shake, 2) * scale if self.shake else np.zeros(2)
            cx, cy = self.pan[0] * k * scale + jitter[0], self.pan[1] * k * scale + jitter[1]
            maps.append(np.array([[1 / zoom, 0, cx - w / (2 * zoom)], [0, 1 / zoom, cy - h / (2 * zoom)]]))
        return maps


class Clip(NamedTuple):
    """A rendered clip: uint8 RGB rainy and clean frames, 0/255 masks, and how the camera moved."""

    rainy: list[np.ndarray]
    clean: list[np.ndarray]
    masks: list[np.ndarray]
    camera: CameraPath
    views: list[np.ndarray]
    """Per frame, the 2×3 map from frame to photo pixels (so the true flow between frames is known)."""
    slide: float
    """Speed (px per frame at 720 wide) of the drops that slide; 0 when none do."""


def render_clip(
    photo_rgb: np.ndarray,
    size: tuple[int, int],
    frames: int,
    rng: np.random.Generator,
    motion: str = "moving",
    sliding: bool = False,
) -> Clip:
    """The camera moving over ``photo_rgb`` (uint8 RGB) behind drops on the glass; ``sliding``: some slide.

    The clean frames are the renderer's: the scene as the same camera took it (exposure, focus,
    noise and compression alike), so only the drops differ.
    """
    if motion not in MOTIONS:
        raise ValueError(f"unknown motion '{motion}' (use {' or '.join(MOTIONS)})")
    w, h = size
    camera = CameraPath.draw(rng, motion)
    slide = log_uniform(rng, SLIDE_SPEED) if sliding else 0.0
    offsets = [round(slide * t * w / REFERENCE_WIDTH) for t in range(frames)]
    pad = offsets[-1]  # rows of glass above the frame that sliding drops come from
    photo_rgb, views = _fit_photo(photo_rgb, camera.views(rng, frames, size), (w, h), pad)
    canvases = [_view(photo_rgb, m, (w, h + pad), pad) for m in views]
    seed = _seed_with_drops(canvases[0], rng)
    rendered = [_render(c, seed) for c in canvases]
    frames_out = [_crop(r, pad, h) for r in rendered]
    movers = _sliding_drops(rendered[0].mask, rng, w) if pad else None
    if movers is not None and movers.any():
        frames_out = [
            _slid(still, _render(_shifted(c, d), seed), movers, pad, d, h)
            for still, c, d in zip(frames_out, canvases, offsets)
        ]
    else:
        slide = 0.0
    noise = _noise_level(rng)
    rainy, clean = [], []
    for r in frames_out:
        grain = rng.standard_normal((h, w, 3)).astype(np.float32) * noise
        rainy.append(_to_uint8(r.rainy + grain * np.sqrt(np.maximum(r.rainy, 0.02) / 0.5)))
        clean.append(_to_uint8(r.clean + grain * np.sqrt(np.maximum(r.clean, 0.02) / 0.5)))
    return Clip(rainy, clean, [r.mask for r in frames_out], camera, views, slide)


def _fit_photo(
    photo: np.ndarray, views: list[np.ndarray], size: tuple[int, int], pad: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The photo (shrunk if it is larger than needed) and the views scaled and moved into it, so
    that every frame of the path, and ``pad`` rows above it, lie inside the photo."""
    w, h = size
    corners = np.array([[0, -pad, 1], [w, -pad, 1], [0, h, 1], [w, h, 1]], np.float64).T
    seen = np.concatenate([m @ corners for m in views], axis=1)
    low, high = seen.min(axis=1), seen.max(axis=1)
    fit = min((photo.shape[1] - 1) / (high[0] - low[0]), (photo.shape[0] - 1) / (high[1] - low[1]))
    if fit > 1:  # more photo than frame pixels: shrink it first rather than alias
        photo = cv2.resize(photo, None, fx=1 / fit, fy=1 / fit, interpolation=cv2.INTER_AREA)
        fit = min((photo.shape[1] - 1) / (high[0] - low[0]), (photo.shape[0] - 1) / (high[1] - low[1]))
    centre = (np.array(photo.shape[1::-1], np.float64) - 1) / 2 - fit * (low + high) / 2
    return photo, [np.hstack([fit * m[:, :2], (fit * m[:, 2] + centre)[:, None]]) for m in views]


def _view(photo: np.ndarray, view: np.ndarray, size: tuple[int, int], pad: int) -> np.ndarray:
    """What the camera sees through ``view``, with ``pad`` rows of the scene above the frame."""
    above = view @ np.array([[1, 0, 0], [0, 1, -pad], [0, 0, 1]], np.float64)
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    return np.clip(cv2.warpAffine(photo, above, size, flags=flags, borderMode=cv2.BORDER_REFLECT), 0, 255).astype(
        np.uint8
    )


def _render(canvas: np.ndarray, seed: int) -> Rendering:
    """The drop layout of ``seed`` on a uint8 canvas (the same layout on any canvas of one size)."""
    return render_raindrops(canvas.astype(np.float32) / 255.0, np.random.default_rng(seed), CLIP_RENDER)


def _shifted(canvas: np.ndarray, rows: int) -> np.ndarray:
    """The canvas moved up by ``rows`` (the glass moved down over the scene), its bottom rows repeated."""
    if not rows:
        return canvas
    return np.concatenate([canvas[rows:], np.repeat(canvas[-1:], rows, axis=0)])


def _crop(r: Rendering, pad: int, height: int) -> Rendering:
    return Rendering(r.rainy[pad : pad + height], r.clean[pad : pad + height], r.mask[pad : pad + height])


def _sliding_drops(mask: np.ndarray, rng: np.random.Generator, width: int) -> np.ndarray:
    """A 0/1 float map (canvas size) around the stand-alone drops chosen to slide, feathered at its edge."""
    margin = max(3, round(12 * width / REFERENCE_WIDTH))
    wet = (mask > 0).astype(np.uint8)
    grown = cv2.dilate(wet, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2))
    count, around = cv2.connectedComponents(grown)
    _, drops = cv2.connectedComponents(wet)
    alone = [i for i in range(1, count) if len(np.unique(drops[(around == i) & (wet > 0)])) == 1]
    chosen = [i for i in alone if rng.random() < SLIDE_SHARE] or alone[:1]  # at least one, if any stands alone
    return cv2.GaussianBlur(np.isin(around, chosen).astype(np.float32), (0, 0), margin / 3)


def _slid(still: Rendering, moved: Rendering, movers: np.ndarray, pad: int, rows: int, height: int) -> Rendering:
    """Frame ``still`` with the sliding drops taken out of their place and put ``rows`` lower (from ``moved``)."""
    gone = movers[pad : pad + height, :, None]
    now = movers[pad - rows : pad - rows + height, :, None]
    moved = _crop(moved, pad - rows, height)
    rainy = still.rainy * (1 - gone) + still.clean * gone
    rainy = rainy * (1 - now) + moved.rainy * now
    mask = np.where(gone[..., 0] > 0.5, 0, still.mask)
    mask = np.where(now[..., 0] > 0.5, moved.mask, mask).astype(np.uint8)
    return Rendering(rainy, still.clean, mask)


def _noise_level(rng: np.random.Generator, cfg: RenderConfig = RenderConfig()) -> float:
    """The clip's sensor noise (sigma at mid-grey), drawn as the photo renderer draws it."""
    return float(rng.uniform(*cfg.noise)) if rng.random() < cfg.noise_prob else 0.0


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _seed_with_drops(frame: np.ndarray, rng: np.random.Generator) -> int:
    """A drop-layout seed whose layout is not empty (the renderer leaves some samples dry)."""
    for _ in range(DROP_TRIES):
        seed = int(rng.integers(2**32))
        if _render(frame, seed).mask.any():
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
    sliding: float = 0.0,
    on_clip: Callable[[int], None] | None = None,
) -> None:
    """Write ``count`` clips as ``out/<i>/`` folders in the Raindrop layout with ``clip.json``.

    ``sliding``: the share of clips in which some drops slide slowly down the glass. Every file is
    written atomically and ``clip.json`` last, so a clip cut short by a failed write is no clip.
    """
    if not photos:
        raise ValueError("no photos to render on")
    check_size(size)
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        photo_path = photos[int(rng.integers(len(photos)))]
        bgr = cv2.imread(str(photo_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read photo {photo_path}")
        clip = render_clip(bgr[..., ::-1], size, frames, rng, motion, sliding=bool(rng.random() < sliding))
        folder = Path(out) / str(i)
        dirs = [folder / d for d in (RAIN_DIR, CLEAN_DIR, MASK_DIR)]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        for t in range(frames):
            write_png(dirs[0] / f"{t}_rain.png", clip.rainy[t])
            write_png(dirs[1] / f"{t}_clean.png", clip.clean[t])
            write_png(dirs[2] / f"{t}_mask.png", clip.masks[t])
        info = {"photo": photo_path.name, "motion": motion, "frames": frames, "seed": [seed, i]}
        info |= {"camera": asdict(clip.camera), "slide": clip.slide, "renderer_version": RENDERER_VERSION}
        info["views"] = [m.round(4).tolist() for m in clip.views]
        write_atomic(folder / CLIP_FILE, json.dumps(info, indent=2).encode())
        if on_clip:
            on_clip(i)
