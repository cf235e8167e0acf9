"""Render raindrops stuck on a window onto clean photos: (rainy, clean, mask) training triples.

Renderer v3 is built from the optics (:mod:`derain.optics`) rather than from looks. A random
camera (phone, dash-cam or system camera: focal length, aperture, sensor) looks through a glass
plane a few centimetres away. Drops on the glass are water caps with a contact angle; merged drops
and sliding trails come from the union of their footprints. Each pixel's ray is traced through the
water, so a drop shows the scene inverted and minified, with a dark rim where the surface is too
steep for light to leave (total internal reflection) and Fresnel losses near it. Then the focus
decides: with the camera focused on the scene, the drop layer is blurred by the circle of
confusion of the glass plane (tens of pixels for real phones); focused on the glass, the drops are
sharp and the scene blurred. Night scenes get a low exposure, lamps (bright, so that drops seeing
them light up as bokeh discs) and glare; a wet-glass haze, sensor noise and JPEG finish the photo.

Scene effects (night, focus, noise, JPEG) touch the clean target too: the network learns to remove
drops, not to denoise, relight or deblur. Every number lives in :class:`RenderConfig`; lengths are
pixels of a 720-px-wide frame, scaled to the rendered width. Random draws never depend on the
photo's content, so one seed renders the same drops (and camera) on any photo of the same size.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from . import optics
from .imageio import ImageError, is_image_path, read_image, write_atomic
from .visualize import to_uint8

RENDERER_VERSION = "3.7"
"""3.1: the wet-glass veil and the night glare lie where the water is (none on dry glass).
3.2: at night every drop glows with the lamp light its wide view gathers; bokeh may have a rim.
3.3: a fainter night glow (at most 0.5, not 1.5: stronger made opaque blobs) and rims on half the shots.
3.4: drizzle: dense small round drops that stand apart (merged clusters looked crumpled, not real).
3.5: at night each drop focuses the lamp light into tiny lamp images that the defocus spreads into
bokeh discs: small drops show discs as real night photos do, large ones bright spots, not a glow.
3.6: focused on the glass, mostly a drizzle's dense beads (what makes people focus there); a drizzle
has no large drops (one large drop took a sparse drizzle's whole water).
3.7: drops stand apart: one landing on water merges only with ``merge_prob`` (any overlap, not
just a large one), as on real glass, where even dense water is a field of separate round drops;
before, dense renders merged into networks of worm-shaped water seen on no real photo."""

#: Layout of the Raindrop dataset (Qian et al.), which ``derain train`` and ``derain eval`` read.
RAIN_DIR, CLEAN_DIR, MASK_DIR = "data", "gt", "mask"

REFERENCE_WIDTH = 720
"""Lengths in :class:`RenderConfig` are pixels of a frame this wide."""

MAX_SIDE, MAX_PIXELS = 8192, 4096 * 4096
"""The largest render. The renderer holds about 0.3 kB per pixel (float copies of the scene, the
traced maps, the blur levels): some 5 GB at 16.8 MP, where 30000×30000 would need 250 GB."""

VAL_FRACTION = 0.1
"""Share of the photos :func:`split_of` keeps for validation."""


def check_size(size: tuple[int, int]) -> None:
    """Refuse a (W, H) larger than :data:`MAX_SIDE` and :data:`MAX_PIXELS` before any work, rather
    than run out of memory in the middle of a render."""
    w, h = size
    if max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
        raise ValueError(
            f"{w}x{h} is larger than the renderer takes: at most {MAX_SIDE} pixels a side "
            f"and {MAX_PIXELS / 1e6:.1f} MP in all (e.g. 4096x4096)"
        )


@dataclass(frozen=True)
class Camera:
    """A kind of camera: ranges of its focal length and f-number, its sensor width (mm)."""

    focal_mm: tuple[float, float]
    f_number: tuple[float, float]
    sensor_mm: float


PHONE = Camera(focal_mm=(3.5, 6.0), f_number=(1.6, 2.2), sensor_mm=5.6)
DASHCAM = Camera(focal_mm=(2.8, 4.0), f_number=(1.6, 2.2), sensor_mm=5.4)
SYSTEM_CAMERA = Camera(focal_mm=(18.0, 35.0), f_number=(2.8, 5.6), sensor_mm=23.5)
"""An APS-C camera with a standard zoom, as used for the Raindrop dataset."""


_FRACTIONS = {"coverage", "haze", "haze_floor", "bokeh_rim", "mask_threshold"}
"""Fields of :class:`RenderConfig` that are shares of a whole (besides the ``*_prob`` ones)."""


@dataclass(frozen=True)
class RenderConfig:
    """Renderer parameters; ranges are (low, high) of uniform draws unless noted.

    Lengths are pixels at a 720-px-wide frame (:data:`REFERENCE_WIDTH`), angles in degrees.
    """

    # The camera and the glass.
    cameras: tuple[Camera, ...] = (PHONE, DASHCAM, SYSTEM_CAMERA)
    glass_mm: tuple[float, float] = (20.0, 120.0)
    """Distance from the lens to the wet glass (lens covers, windscreens, a pane held in front)."""
    max_defocus: float = 60.0
    """Largest circle of confusion rendered (px): beyond it drops are only a faint veil."""
    drop_focus_prob: float = 0.2
    """Chance the camera focused on the glass: drops sharp, the scene blurred."""
    drop_focus_scene_blur: tuple[float, float] = (0.15, 0.5)
    """With focus on the glass, the scene's blur as a fraction of the glass's blur when focused far."""
    drop_focus_residual: tuple[float, float] = (0.0, 1.5)
    """With focus on the glass, what blur (px) the drops keep."""

    # The drops.
    coverage: tuple[float, float] = (0.03, 0.7)
    """Fraction of the frame covered by water, drawn skewed towards light rain."""
    coverage_skew: float = 1.6
    max_drops: int = 1500
    radius: tuple[float, float] = (3.0, 40.0)
    """Contact radius, drawn log-uniformly (many small, few large)."""
    large_drop_prob: float = 0.3
    """Chance that an image also gets a few large drops of ``large_radius``."""
    large_radius: tuple[float, float] = (40.0, 80.0)
    drizzle_prob: float = 0.15
    """Chance that the water is a drizzle's beading: up to ``drizzle_drops`` small, separate drops
    of ``drizzle_radius`` instead of the usual mix (dense and sharp when focused on the glass)."""
    drizzle_radius: tuple[float, float] = (1.5, 7.0)
    drizzle_drops: int = 6000
    drop_focus_drizzle_prob: float = 0.6
    """Chance of a drizzle when the camera focused on the glass: dense beading is what draws the
    focus there (real raindrop-focused photos are mostly fields of small sharp drops)."""
    contact_angle: tuple[float, float] = (25.0, 80.0)
    """Water on glass: 25–80° (clean to dirty or coated glass)."""
    flat_radius: tuple[float, float] = (12.0, 40.0)
    """Beyond this far from its edge a drop is flat on top (gravity beats surface tension)."""
    aspect: tuple[float, float] = (1.0, 1.5)
    """Height / width of a drop (gravity elongates them)."""
    blobs: tuple[int, int] = (1, 2)
    """Blobs merged into one drop (irregular outlines)."""
    shape_noise: float = 0.12
    """Amplitude of the low-frequency noise that roughens the outline."""
    merge_prob: float = 0.1
    """Chance that a drop landing on another one merges with it rather than being skipped. Water
    on real glass, however dense, is mostly separate round drops (those that touch coalesce into
    one); merging more often grows networks of worm-shaped water at high coverage."""
    trail_prob: float = 0.08
    """Chance that a drop has slid and left a thin trail of water above it."""
    surface_smoothing: float = 1.2
    """Sigma (px) smoothing the height field (real surfaces have no kinks)."""

    # Light.
    gain: tuple[float, float] = (1.0, 1.15)
    """Extra light gathered by drops from outside the frame."""
    sky_boost: tuple[float, float] = (1.0, 3.0)
    """How much brighter than white the brightest parts of a day photo really are (clipped sky)."""
    ambient: tuple[float, float] = (0.0, 0.3)
    """What a totally reflecting rim shows, times the scene's mean brightness (the dark inside)."""
    outside_light: tuple[float, float] = (1.0, 1.0)
    """Brightness of the world beyond the frame, times the frame mirrored there (1: as bright).
    Near its steep edge a drop refracts rays far off the frame; real drops that a camera focused on
    the glass shows sharp (a phone's night shot, a lit wall under a roof) are dark-rimmed because
    that wide view is mostly darker than the photo's subject. ``0.05,0.2`` gives that look (with
    ``contact_angle=70,90``); the default keeps renderer 3.7's draws."""
    specular_prob: float = 0.5
    specular_strength: tuple[float, float] = (0.3, 2.0)
    specular_power: float = 60.0
    haze_prob: float = 0.5
    haze: tuple[float, float] = (0.02, 0.3)
    """Wet-glass veil: fraction of light scattered into a milky layer, strongest among the drops."""
    haze_floor: float = 0.0
    """Share of the veil that covers the whole glass, not just the wet patches around drops. 0: the
    veil lies where the water is, so dry glass shows the scene untouched (a floor of 0.3 taught a
    model to darken every photo, drop-free ones too)."""
    haze_brightness: tuple[float, float] = (1.1, 1.6)
    """The veil's brightness, times the scene's mean (it scatters light from the whole view)."""

    # Night.
    night_prob: float = 0.12
    night_exposure: tuple[float, float] = (0.03, 0.2)
    lamps: tuple[int, int] = (2, 15)
    lamp_radius: tuple[float, float] = (0.7, 2.5)
    lamp_intensity: tuple[float, float] = (4.0, 40.0)
    """Lamp radiance, times white: far beyond what the sensor holds, as real lamps are."""
    glare: tuple[float, float] = (0.02, 0.12)
    glare_sigma: tuple[float, float] = (8.0, 40.0)
    night_glow: tuple[float, float] = (0.05, 4.0)
    """Lamp light each drop gathers at night from its wide view, per pixel of the drop (linear,
    times white; drawn log-uniformly): lamps around and behind the camera light drops far from any
    lamp in the frame. A drop focuses it into a few tiny lamp images (points); the glass's defocus
    spreads each into a bokeh disc, so a night window shows a disc for every drop, about as large
    as the blur and brighter the larger the drop, and a drop in focus shows bright points."""
    lamp_images: tuple[int, int] = (1, 3)
    """Lamp images per drop (the lamps in its view)."""
    lamp_image_spread: float = 0.6
    """Log-normal sigma of each lamp image's light (near and far, bright and dim lamps)."""

    # The lens.
    bokeh_rim_prob: float = 0.5
    bokeh_rim: tuple[float, float] = (0.2, 0.6)
    """Share of a defocus disc's light in a bright ring at its edge (lenses with spherical
    aberration): lit drops become rimmed discs."""

    # The sensor and the file.
    noise_prob: float = 0.6
    noise: tuple[float, float] = (0.002, 0.015)
    """Sensor noise sigma at mid-grey (shot-noise-like, times 3 at night), the same in both images."""
    empty_prob: float = 0.08
    """Samples with no drops at all (rainy == clean, mask all zero)."""
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (60, 95)
    """Both images are saved at the same quality, so drop-free areas stay identical."""
    mask_threshold: float = 30 / 255
    """A pixel is rain where max|I − B| exceeds this near a drop (the paper's 30 of 255)."""
    mask_close: int = 5
    """Diameter (px) of the closing that fills pinholes in the mask of a drop."""
    scale_jitter: tuple[float, float] = (1.0, 1.4)
    """Zoom of the clean photo before the random crop."""

    def __post_init__(self) -> None:
        """Refuse numbers the renderer cannot draw from, naming the field (a typo in ``--set``)."""
        for field in fields(self):
            if field.name == "cameras":
                continue
            value = getattr(self, field.name)
            values = value if isinstance(value, tuple) else (value,)
            shown = f"{field.name}={','.join(str(v) for v in values)}"
            if min(values) < 0:
                raise ValueError(f"{shown}: must not be negative")
            if len(values) == 2 and values[0] > values[1]:
                raise ValueError(f"{shown}: a range is LOW,HIGH with LOW ≤ HIGH")
            if field.name.endswith("_prob") and max(values) > 1:
                raise ValueError(f"{shown}: a probability, between 0 and 1")
            if field.name in _FRACTIONS and max(values) > 1:
                raise ValueError(f"{shown}: a fraction, between 0 and 1")
            if field.name == "jpeg_quality" and max(values) > 100:
                raise ValueError(f"{shown}: a JPEG quality, between 0 and 100")

    def to_dict(self) -> dict:
        return asdict(self)

    def with_settings(self, settings: Sequence[str]) -> RenderConfig:
        """A copy with ``NAME=VALUE`` settings applied, as typed on a command line: a number, or
        two numbers ``LOW,HIGH`` for a range (``night_prob=0.5``, ``coverage=0.3,0.7``)."""
        numbers = {f.name for f in fields(self)} - {"cameras"}
        changes = {}
        for setting in settings:
            name, sep, text = setting.partition("=")
            name = name.strip()
            if not sep or name not in numbers:
                raise ValueError(f"'{setting}': expected NAME=VALUE with NAME one of RenderConfig's numbers or ranges")
            current = getattr(self, name)
            is_range = isinstance(current, tuple)
            kind = type(current[0] if is_range else current)
            try:
                values = tuple(kind(v) for v in text.split(","))
            except ValueError:
                raise ValueError(f"'{setting}': {text!r} is not a {kind.__name__}") from None
            if len(values) != (len(current) if is_range else 1):
                raise ValueError(f"'{setting}': {name} takes {'LOW,HIGH' if is_range else 'one value'}")
            changes[name] = values if is_range else values[0]
        return replace(self, **changes)


class Rendering(NamedTuple):
    """A rendered pair: float32 RGB images in [0, 1] and the 0/255 uint8 drop mask."""

    rainy: np.ndarray
    clean: np.ndarray
    mask: np.ndarray


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """A draw between ``bounds`` even on a log scale: as many small values as large ones per octave."""
    return math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1])))


def _low_freq_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int = 4) -> np.ndarray:
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


@dataclass(frozen=True)
class Shot:
    """Everything drawn about one photo before its pixels are touched."""

    focal_px: float
    drop_focus: bool
    """The camera focused on the glass."""
    glass_blur: float
    """Blur (px) of the drop layer: the glass plane's circle of confusion, or little when focused on it."""
    scene_blur: float
    night: bool
    exposure: float
    glow: float
    """Lamp light every drop gathers, per pixel of the drop (0 by day)."""
    bokeh_rim: float
    sky_boost: float
    haze: float
    noise: float
    jpeg_quality: int | None


def draw_shot(rng: np.random.Generator, width: int, cfg: RenderConfig) -> Shot:
    """Draw a camera, its focus and the conditions; lengths come out in pixels of ``width``."""
    camera = cfg.cameras[int(rng.integers(len(cfg.cameras)))]
    focal_mm = _uniform(rng, camera.focal_mm)
    aperture = focal_mm / _uniform(rng, camera.f_number)
    glass = _uniform(rng, cfg.glass_mm)
    fov = math.degrees(2 * math.atan(camera.sensor_mm / (2 * focal_mm)))
    coc = optics.circle_of_confusion(aperture, focal_mm, glass, camera.sensor_mm, width)
    coc = min(coc, cfg.max_defocus * width / REFERENCE_WIDTH)
    drop_focus = rng.random() < cfg.drop_focus_prob
    focus_residual = _uniform(rng, cfg.drop_focus_residual) * width / REFERENCE_WIDTH
    scene_fraction = _uniform(rng, cfg.drop_focus_scene_blur)
    night = rng.random() < cfg.night_prob
    exposure = _uniform(rng, cfg.night_exposure) if night else 1.0
    glow = log_uniform(rng, cfg.night_glow) if night else 0.0
    rim = _uniform(rng, cfg.bokeh_rim) if rng.random() < cfg.bokeh_rim_prob else 0.0
    haze = _uniform(rng, cfg.haze) if rng.random() < cfg.haze_prob else 0.0
    noise = _uniform(rng, cfg.noise) * (3.0 if night else 1.0) if rng.random() < cfg.noise_prob else 0.0
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)) if rng.random() < cfg.jpeg_prob else None
    return Shot(
        focal_px=optics.focal_px(width, fov),
        drop_focus=drop_focus,
        glass_blur=focus_residual if drop_focus else coc,
        scene_blur=coc * scene_fraction if drop_focus else 0.0,
        night=night,
        exposure=exposure,
        glow=glow,
        bokeh_rim=rim,
        sky_boost=_uniform(rng, cfg.sky_boost),
        haze=haze,
        noise=noise,
        jpeg_quality=quality,
    )


def _lamps(shape: tuple[int, ...], rng: np.random.Generator, cfg: RenderConfig, scale: float) -> np.ndarray:
    """Street lamps and lit windows: small discs far brighter than white, mostly in the upper part."""
    h, w = shape[:2]
    lamps = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(cfg.lamps[0], cfg.lamps[1] + 1))):
        cy, cx = h * rng.beta(1.5, 2.5), w * rng.random()
        radius = _uniform(rng, cfg.lamp_radius) * scale
        colour = _lamp_colours(rng, 1)[0] * _uniform(rng, cfg.lamp_intensity)
        centre, r16 = (round(cx * 16), round(cy * 16)), max(8, round(radius * 16))  # 4 bits of sub-pixel
        cv2.circle(lamps, centre, r16, colour.tolist(), -1, cv2.LINE_AA, 4)
    return lamps


def _lamp_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """Relative RGB of ``count`` lamps (count×3): sodium and tungsten lamps are orange, LEDs white."""
    warm = rng.uniform(0.0, 1.0, count).astype(np.float32)
    return np.stack([np.ones_like(warm), 1.0 - 0.45 * warm, 1.0 - 0.8 * warm], axis=1)


def lamp_images(region: np.ndarray, glow: float, rng: np.random.Generator, cfg: RenderConfig) -> np.ndarray:
    """The tiny images of the lamps each drop sees at night (H×W×3 linear light, points).

    A drop is a strong lens: the lamps in its wide view come out as points inside it, carrying
    the light the whole drop gathers (``glow`` per pixel of the drop). Defocus turns each point
    into a disc of the glass's blur, which is why a night window shows a field of equal-sized bokeh
    discs: a drop smaller than the blur lights the whole disc, a larger one shows bright spots.
    """
    count, labels = cv2.connectedComponents(region, connectivity=8)
    images = np.zeros((*region.shape, 3), np.float32)
    flat = labels.ravel()
    pixels = np.flatnonzero(flat)
    area = np.bincount(flat, minlength=count).astype(np.float32)
    per_drop = rng.integers(cfg.lamp_images[0], cfg.lamp_images[1] + 1, count)
    for k in range(cfg.lamp_images[1]):
        shuffled = rng.permutation(pixels)
        drops, first = np.unique(flat[shuffled], return_index=True)  # a random pixel of each drop
        lit = per_drop[drops] > k
        drops, points = drops[lit], shuffled[first[lit]]
        flux = glow * area[drops] / per_drop[drops] * rng.lognormal(0.0, cfg.lamp_image_spread, drops.size)
        images.reshape(-1, 3)[points] += flux[:, None] * _lamp_colours(rng, drops.size)
    return images


def _stamp_drop(
    region: np.ndarray,
    rng: np.random.Generator,
    cy: float,
    cx: float,
    radius: float,
    cfg: RenderConfig,
    apart: bool = False,
) -> int:
    """Add one drop's footprint (and maybe its trail) to ``region``; returns the pixels it added.

    ``apart``: a single round blob that lands only on dry glass (a drizzle's beads, too small for
    gravity to deform, stay round and apart)."""
    ry, rx = radius * (1.0 if apart else _uniform(rng, cfg.aspect)), radius
    trail = rng.random() < cfg.trail_prob
    trail_up = ry * _uniform(rng, (2.0, 6.0)) if trail else 0.0
    h, w = region.shape
    y0, y1 = int(max(0, cy - ry * 1.6 - trail_up - 2)), int(min(h, cy + ry * 1.6 + 2))
    x0, x1 = int(max(0, cx - rx * 1.6 - 2)), int(min(w, cx + rx * 1.6 + 2))
    if y1 - y0 < 2 or x1 - x0 < 2:
        return 0
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    field = np.zeros(yy.shape, np.float32)
    for _ in range(1 if apart else int(rng.integers(cfg.blobs[0], cfg.blobs[1] + 1))):
        oy, ox = rng.normal(0, 0.2, 2) * (ry, rx)
        oy = abs(oy)  # water gathers at the bottom of a drop
        sy, sx = ry * rng.uniform(0.6, 1.0), rx * rng.uniform(0.6, 1.0)
        field += np.exp(-(((yy - cy - oy) / sy) ** 2 + ((xx - cx - ox) / sx) ** 2))
    if trail:
        width = rx * rng.uniform(0.1, 0.25)
        wobble = rx * 0.15 * _low_freq_noise(rng, field.shape, cells=3)
        along = np.clip((cy - yy) / trail_up, 0.0, 1.0)
        field += np.exp(-(((xx - cx - wobble) / width) ** 2)) * ((yy < cy) & (along < 1.0)) * (1.0 - 0.5 * along)
    field *= 1.0 + cfg.shape_noise * _low_freq_noise(rng, field.shape)
    patch = region[y0:y1, x0:x1]
    footprint = (field > 0.45).astype(np.uint8)
    overlap = int((patch & footprint).sum())
    if overlap and (apart or rng.random() >= cfg.merge_prob):
        return 0
    before = int(patch.sum())
    np.maximum(patch, footprint, out=patch)
    return int(patch.sum()) - before


def draw_footprints(
    rng: np.random.Generator, height: int, width: int, cfg: RenderConfig, drop_focus: bool = False
) -> np.ndarray:
    """Where water touches the glass: a 0/1 uint8 map. Overlapping drops merge into one.

    ``drop_focus``: the camera focused on the glass, which makes a drizzle likelier."""
    scale = width / REFERENCE_WIDTH
    u = rng.random() ** cfg.coverage_skew
    target = (cfg.coverage[0] + u * (cfg.coverage[1] - cfg.coverage[0])) * height * width
    drizzle = rng.random() < (cfg.drop_focus_drizzle_prob if drop_focus else cfg.drizzle_prob)
    sizes, count = (cfg.drizzle_radius, cfg.drizzle_drops) if drizzle else (cfg.radius, cfg.max_drops)
    radii = [log_uniform(rng, sizes) * scale for _ in range(count)]
    if not drizzle and rng.random() < cfg.large_drop_prob:
        big = int(rng.integers(1, 5))
        radii[:big] = [_uniform(rng, cfg.large_radius) * scale for _ in range(big)]
    region = np.zeros((height, width), np.uint8)
    area = 0
    for radius in radii:
        if area >= target:
            break
        area += _stamp_drop(region, rng, rng.uniform(0, height), rng.uniform(0, width), radius, cfg, drizzle)
    return region


def height_field(region: np.ndarray, rng: np.random.Generator, cfg: RenderConfig) -> np.ndarray:
    """Water height (px) over the glass: each connected footprint is a cap that meets the glass at
    its own contact angle and flattens on top beyond ``flat_radius`` from its edge."""
    scale = region.shape[1] / REFERENCE_WIDTH
    count, labels = cv2.connectedComponents(region, connectivity=8)
    edge_distance = np.maximum(cv2.distanceTransform(region, cv2.DIST_L2, 5) - 0.5, 0.0)
    inradius = np.zeros(count, np.float32)
    np.maximum.at(inradius, labels.ravel(), edge_distance.ravel())
    angle = np.radians(rng.uniform(*cfg.contact_angle, count)).astype(np.float32)
    flat = rng.uniform(*cfg.flat_radius, count).astype(np.float32) * scale
    contact = np.minimum(inradius, flat)
    height = optics.cap_height(edge_distance, contact[labels], angle[labels]) * region
    return cv2.GaussianBlur(height.astype(np.float32), (0, 0), cfg.surface_smoothing * scale)


_SCENE_LEVELS = (0.0, 1.0, 2.5, 6.0, 15.0)
"""Blur sigmas (px) of the scene copies a drop samples: a minifying drop averages many scene pixels."""


def _seen_through(scene: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """The scene at the traced positions, pre-filtered by how much the drop minifies it."""
    needed = np.clip(0.5 * optics.minification(map_x, map_y), 0.0, _SCENE_LEVELS[-1])
    weight = np.interp(needed, _SCENE_LEVELS, np.arange(len(_SCENE_LEVELS))).astype(np.float32)
    seen = np.zeros_like(scene)
    for i, sigma in enumerate(_SCENE_LEVELS):
        share = np.clip(1.0 - np.abs(weight - i), 0.0, 1.0)
        if not share.any():
            continue
        level = cv2.GaussianBlur(scene, (0, 0), sigma) if sigma else scene
        sampled = cv2.remap(level, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        seen += share[..., None] * sampled
    return seen


OUTSIDE_FADE = 0.15
"""How far beyond the frame (a fraction of its width) the world takes its own brightness."""


def _drop_radiance(
    scene: np.ndarray, heights: np.ndarray, shot: Shot, rng: np.random.Generator, cfg: RenderConfig
) -> np.ndarray:
    """Linear light leaving each drop pixel towards the camera."""
    map_x, map_y, transmittance, normal = optics.trace_drops(heights, shot.focal_px)
    luminance = scene.mean(axis=2, keepdims=True)
    bright = np.clip((luminance - 0.6) / 0.4, 0.0, 1.0)  # what the photo clipped was brighter still
    boosted = scene * (1.0 + (shot.sky_boost - 1.0) * bright)
    gain = _uniform(rng, cfg.gain)
    ambient = _uniform(rng, cfg.ambient) * float(luminance.mean())
    t = transmittance[..., None]
    seen = _seen_through(boosted, map_x, map_y)
    if cfg.outside_light != (1.0, 1.0):
        outside = _uniform(rng, cfg.outside_light)
        seen *= optics.light_beyond_frame(map_x, map_y, outside, OUTSIDE_FADE * heights.shape[1])[..., None]
    radiance = t * gain * seen + (1.0 - t) * ambient
    if rng.random() < cfg.specular_prob:  # a light behind the camera mirrored in the drop's surface
        light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.8, -0.2), -1.0], np.float32)
        light /= np.linalg.norm(light)
        rays = optics.camera_rays(*heights.shape, shot.focal_px)
        mirrored = rays - 2.0 * np.sum(rays * normal, axis=-1, keepdims=True) * normal
        glint = np.clip(np.sum(mirrored * light, axis=-1), 0.0, 1.0) ** cfg.specular_power
        radiance += _uniform(rng, cfg.specular_strength) * glint[..., None]
    return radiance


def _to_8bit_and_back(image: np.ndarray, quality: int | None) -> np.ndarray:
    """Quantise to 8 bits, through a JPEG file when ``quality`` is given."""
    image8 = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    if quality is not None:
        _, buf = cv2.imencode(".jpg", image8[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        image8 = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return image8.astype(np.float32) / 255.0


def render_raindrops(clean: np.ndarray, rng: np.random.Generator, cfg: RenderConfig = RenderConfig()) -> Rendering:
    """Photograph ``clean`` (H×W×3 float32 RGB in [0, 1], the scene) through a wet window.

    Returns the rainy photo, the clean photo as the same camera took it (night exposure, focus,
    noise and file format applied alike) and the drop mask, all quantised to 8 bits.
    """
    h, w = clean.shape[:2]
    scale = w / REFERENCE_WIDTH
    shot = draw_shot(rng, w, cfg)
    empty = rng.random() < cfg.empty_prob
    scene = optics.srgb_to_linear(clean.astype(np.float32))
    lamps = None
    if shot.night:
        scene = scene * shot.exposure
        lamps = _lamps(scene.shape, rng, cfg, scale)
        scene = scene + lamps
    scene = optics.defocus(scene, shot.scene_blur, shot.bokeh_rim)
    rainy = scene
    mask = np.zeros((h, w), np.uint8)
    if not empty:
        region = draw_footprints(rng, h, w, cfg, shot.drop_focus)
        heights = height_field(region, rng, cfg)
        drops = _drop_radiance(scene, heights, shot, rng, cfg)
        if shot.glow:
            drops += lamp_images(region, shot.glow, rng, cfg)
        alpha = cv2.GaussianBlur(region.astype(np.float32), (0, 0), 0.6)  # anti-aliased contact line
        alpha_blurred = optics.defocus(alpha, shot.glass_blur, shot.bokeh_rim)
        lit_drops = optics.defocus(drops * alpha[..., None], shot.glass_blur, shot.bokeh_rim)
        rainy = scene * (1.0 - alpha_blurred[..., None]) + lit_drops
        near = cv2.dilate((alpha_blurred > 0.02).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2)
        wet = optics.defocus(alpha, max(shot.glass_blur, 20.0 * scale) * 2)  # share of the glass wet nearby
        if shot.haze:
            veil = float(scene.mean()) * _uniform(rng, cfg.haze_brightness)
            patchy = wet * (1.0 + 0.5 * _low_freq_noise(rng, (h, w)))
            amount = shot.haze * np.clip(cfg.haze_floor + patchy, 0.0, 1.5)
            rainy = rainy * (1.0 - amount[..., None]) + amount[..., None] * veil
            near |= (amount > 0.01).astype(np.uint8)  # a strong veil is rain too: the map may cover it
        if lamps is not None:
            # light scattered around each lamp by the water in front of it: peak ≈ glare × the lamp's
            # radiance where the glass is all wet, none through dry glass
            sigma = _uniform(rng, cfg.glare_sigma) * scale
            spread = 2.0 * sigma**2 / (np.mean(cfg.lamp_radius) * scale) ** 2
            halo = _uniform(rng, cfg.glare) * spread * cv2.GaussianBlur(lamps, (0, 0), sigma) * wet[..., None]
            rainy = rainy + halo
            near |= (halo.max(axis=2) > 0.001).astype(np.uint8)
    rainy_srgb, clean_srgb = optics.linear_to_srgb(rainy), optics.linear_to_srgb(scene)
    if not empty:
        mask = _visible_change(rainy_srgb, clean_srgb, near, cfg)
    noise = rng.standard_normal((h, w, 3)).astype(np.float32) * shot.noise
    grain = noise * np.sqrt(np.maximum(rainy_srgb, 0.02) / 0.5)
    return Rendering(
        _to_8bit_and_back(rainy_srgb + grain, shot.jpeg_quality),
        _to_8bit_and_back(clean_srgb + grain, shot.jpeg_quality),
        mask,
    )


def _visible_change(rainy: np.ndarray, clean: np.ndarray, near: np.ndarray, cfg: RenderConfig) -> np.ndarray:
    """The paper's M: near a drop, where it changed the pixel by more than the threshold. Drops
    that happen to match their background stay out: no network could find them."""
    visible = ((np.abs(rainy - clean).max(axis=2) >= cfg.mask_threshold) & (near > 0)).astype(np.uint8)
    close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.mask_close,) * 2)
    return (cv2.morphologyEx(visible, cv2.MORPH_CLOSE, close) | visible) * 255


def _crop_photo(photo: np.ndarray, size: tuple[int, int], rng: np.random.Generator, cfg: RenderConfig) -> np.ndarray:
    """Zoom the photo to cover ``size`` (W, H) with a random jitter, crop at random, maybe mirror."""
    tw, th = size
    ph, pw = photo.shape[:2]
    zoom = max(tw / pw, th / ph) * rng.uniform(*cfg.scale_jitter)
    nw, nh = max(tw, int(math.ceil(pw * zoom))), max(th, int(math.ceil(ph * zoom)))
    interp = cv2.INTER_AREA if zoom < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(photo, (nw, nh), interpolation=interp)
    y, x = int(rng.integers(0, nh - th + 1)), int(rng.integers(0, nw - tw + 1))
    crop = resized[y : y + th, x : x + tw]
    if rng.random() < 0.5:  # horizontal only: drops hang with gravity and invert the scene
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def make_triple(
    photo_rgb: np.ndarray, size: tuple[int, int], rng: np.random.Generator, cfg: RenderConfig = RenderConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training triple from a uint8 RGB photo: (rainy, clean) uint8 RGB and the 0/255 mask."""
    scene = _crop_photo(photo_rgb, size, rng, cfg).astype(np.float32) / 255.0
    rainy, clean, mask = render_raindrops(scene, rng, cfg)
    return _to_uint8(rainy), _to_uint8(clean), mask


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.round(image * 255.0).astype(np.uint8))


def split_of(name: str, val_fraction: float = VAL_FRACTION) -> str:
    """'val' or 'train' for a photo, decided by a hash of its file name (stable, order-free)."""
    digest = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    return "val" if digest / 0xFFFFFFFF < val_fraction else "train"


def list_photos(folder: Path, split: str = "all") -> list[Path]:
    """Image files under ``folder``, sorted; ``split`` 'train' or 'val' keeps one side of :func:`split_of`."""
    photos = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_path(p))
    if split != "all":
        photos = [p for p in photos if split_of(p.name) == split]
    return photos


def render_samples(
    photos: Sequence[Path], count: int, size: tuple[int, int], seed: int = 0, cfg: RenderConfig = RenderConfig()
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Triples :func:`make_triple` draws from ``photos``; sample ``i`` depends only on (seed, i).

    Bad arguments are refused here, at the call, before any photo is read."""
    if not photos:
        raise ValueError("no photos to render on")
    check_size(size)
    return _render_samples(photos, count, size, seed, cfg)


def _render_samples(
    photos: Sequence[Path], count: int, size: tuple[int, int], seed: int, cfg: RenderConfig
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    cache: dict[int, np.ndarray] = {}
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        index = int(rng.integers(len(photos)))
        if index not in cache:  # upright, 8-bit RGB, whatever the file's format (HEIC too)
            cache[index] = to_uint8(read_image(photos[index], max_pixels=None).rgb)
        yield make_triple(cache[index], size, rng, cfg)


def synthesize_dataset(
    photos: Sequence[Path],
    out: Path,
    count: int,
    size: tuple[int, int],
    seed: int = 0,
    cfg: RenderConfig = RenderConfig(),
    on_sample: Callable[[int], None] | None = None,
) -> None:
    """Write ``count`` triples in Raindrop layout: data/<i>_rain.png, gt/<i>_clean.png, mask/<i>_mask.png.

    Triples already in ``out`` are replaced, those numbered ``count`` or more left: clear them
    first (:func:`triple_files`) for a set of this render alone."""
    dirs = [Path(out) / d for d in (RAIN_DIR, CLEAN_DIR, MASK_DIR)]
    samples = render_samples(photos, count, size, seed, cfg)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    for i, (rainy, clean, mask) in enumerate(samples):
        write_png(dirs[0] / f"{i}_rain.png", rainy)
        write_png(dirs[1] / f"{i}_clean.png", clean)
        write_png(dirs[2] / f"{i}_mask.png", mask)
        if on_sample:
            on_sample(i)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB or gray uint8 image as PNG, atomically: a full disk or a folder in the way is
    an :class:`~derain.imageio.ImageError`, never a missing or truncated file in a training set."""
    ok, data = cv2.imencode(".png", image[..., ::-1] if image.ndim == 3 else image)
    if not ok:
        raise ImageError(f"{path}: cannot encode as PNG")
    write_atomic(path, data.tobytes())


_TRIPLE_FILE = {
    RAIN_DIR: re.compile(r"\d+_rain"),
    CLEAN_DIR: re.compile(r"\d+_clean"),
    MASK_DIR: re.compile(r"\d+_mask"),
}


def triple_files(out: Path) -> list[Path]:
    """The files of ``out`` that ``derain train`` reads as triples (data/<i>_rain.*, gt/<i>_clean.*,
    mask/<i>_mask.*), whoever wrote them: a smaller render over them would leave the rest mixed in."""
    found = []
    for folder, name in _TRIPLE_FILE.items():
        if (Path(out) / folder).is_dir():
            files = (Path(out) / folder).iterdir()
            found += sorted(p for p in files if name.fullmatch(p.stem) and is_image_path(p) and p.is_file())
    return found


def blind_test(
    renders: Sequence[np.ndarray], real: Sequence[tuple[str, np.ndarray]], size: tuple[int, int], seed: int = 0
) -> tuple[list[np.ndarray], list[str]]:
    """Renders and real rainy photos (name, RGB uint8) in one shuffled list, the real ones cropped
    to the renders' ``size`` as the renderer crops its photos, and what each is ("render" or the
    photo's name): if a reader cannot tell them apart, the renderer looks real."""
    rng = np.random.default_rng(seed)
    same_crop = replace(RenderConfig(), scale_jitter=(1.0, 1.0))
    tiles = [("render", image) for image in renders] + [(n, _crop_photo(i, size, rng, same_crop)) for n, i in real]
    order = rng.permutation(len(tiles))
    return [tiles[k][1] for k in order], [tiles[k][0] for k in order]


def contact_sheet(images: Sequence[np.ndarray], columns: int = 4, thumb_width: int = 360) -> np.ndarray:
    """Tile RGB uint8 images into one sheet, each scaled to ``thumb_width`` (for looking at renders)."""
    thumbs = []
    for image in images:
        h, w = image.shape[:2]
        th = round(h * thumb_width / w)
        thumbs.append(cv2.resize(image, (thumb_width, th), interpolation=cv2.INTER_AREA))
    cell_h = max(t.shape[0] for t in thumbs)
    rows = math.ceil(len(thumbs) / columns)
    sheet = np.zeros((rows * cell_h, columns * thumb_width, 3), np.uint8)
    for k, thumb in enumerate(thumbs):
        y, x = (k // columns) * cell_h, (k % columns) * thumb_width
        sheet[y : y + thumb.shape[0], x : x + thumb_width] = thumb
    return sheet
