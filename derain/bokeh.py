"""Drops lit at night (``bokeh=True``): the bright discs the network leaves, filled in.

At night each drop on the glass gathers lamp light, and a lens focused on the scene beyond spreads
it into a disc as wide as the glass plane's circle of confusion: every drop shows as a bright disc
of the same size, which is how a field of night bokeh is told from the scene. The shipped weights
learned drops over daylit scenes and leave these discs untouched. Here the discs are found where
a centre is brighter than every sector of a ring around it, at the scale where it stands out most,
and only round, flat ones count (a lit window is square, a lamp's glow peaked); if enough share one
size, the discs of that size are filled in from around them (OpenCV's inpainting);
other bright round things of that size (a lit round sign) are filled in too, which is why it is a
choice the user makes for night shots and not a default. Lamps, clipped areas wider than the
discs, stay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from .fusion import LUMA
from .lights import CLIP_LEVEL, LIGHT_RIM

#: Radii (px, of the centre disc the detector compares with its ring) searched, as fractions of
#: the short side: 6–48 px at 480, bokeh of drops on a window a few cm to a metre from the lens;
#: never under MIN_RADIUS px, where a ring's sectors hold too few pixels to compare.
RADII = (1 / 80, 1 / 10)
MIN_RADIUS = 2.0
#: Radii from twice this (px) up are searched on the photo halved (and again, per doubling).
COARSE_RADIUS = 6.0
#: Ratio of one searched radius to the next.
RADIUS_STEP = 1.25
#: The ring a disc is compared with, from and to these multiples of its radius, in this many
#: sectors: a disc is brighter than all of them, the edge of a bright area only than some.
RING = (1.3, 2.0)
SECTORS = 8
#: How much brighter (luma, of full scale) a disc's centre is than its ring on average, and than
#: its least bright sector as a share of that.
CONTRAST = 0.02
SECTOR_SHARE = 0.4
#: ... and than the ring's own spread (standard deviation of luma) times this: a disc over a
#: scene darker and plainer than itself, not a bright fleck of texture.
TEXTURE = 2.0
#: A disc is about as bright over its whole radius as over its centre (its contrast with the ring at
#: least this share of its centre half's): not a small bright speck seen at a larger radius.
FILL = 0.6
#: Discs whose radius is within this factor of the size that holds the most disc contrast are
#: bokeh of the glass; fewer than MIN_DISCS of them, and the photo has none.
SIZE_SPREAD = 1.3
MIN_DISCS = 10
#: A disc ends where its brightness above the ring falls under this share of its peak; this many
#: px around it are filled in too, and the border of the filled area is blurred by FEATHER (sigma).
EDGE = 0.25
MARGIN, FEATHER = 1.5, 1.0
#: Rays a disc's edge is sought along. Bokeh is round, a lit window is not: the ray reaching
#: furthest but a tenth goes at most ROUNDNESS times as far as the shortest but a tenth. And it is
#: flat (or brighter at its rim), a lamp's glow peaked: halfway to its edge a disc is at least
#: FLATNESS as bright (above the scene) as at its centre.
RAYS = 16
ROUNDNESS = 1.6
FLATNESS = 0.7
#: Short side (px) the discs are sought and filled at: a larger photo gets the fill scaled up.
DETECTION_SIZE = 480


@dataclass(frozen=True)
class Disc:
    """A bright disc: its contrast with its ring (luma), detection radius and centre (px), and how
    far it reaches (px, where it fades into the scene; 0 until measured)."""

    contrast: float
    radius: float
    y: float
    x: float
    reach: float = 0.0


def remove_bokeh(image: np.ndarray) -> np.ndarray:
    """``image`` (H×W×3 RGB, uint8 or uint16) with its field of night bokeh filled in; a photo
    without one is returned unchanged, and pixels away from the discs and lamps always are."""
    scale = float(np.iinfo(image.dtype).max)
    height, width = image.shape[:2]
    shrink = min(1.0, DETECTION_SIZE / min(height, width))
    small = (
        image
        if shrink == 1.0
        else cv2.resize(image, (round(width * shrink), round(height * shrink)), interpolation=cv2.INTER_AREA)
    )
    pixels = np.rint(small.astype(np.float32) * (255 / scale)).astype(np.uint8)
    luma = pixels.astype(np.float32) @ (LUMA / 255)
    discs = find_discs(luma)
    size = bokeh_size(discs)
    if size is None:
        return image
    discs = [d for d in discs if abs(np.log(d.radius / size)) < np.log(SIZE_SPREAD)]
    mask = _disc_mask(luma, discs) & (lamps(pixels, size) == 0)
    filled = cv2.inpaint(pixels, mask.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    weight = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), FEATHER)
    if shrink != 1.0:
        filled = cv2.resize(filled, (width, height), interpolation=cv2.INTER_CUBIC)
        weight = cv2.resize(weight, (width, height), interpolation=cv2.INTER_LINEAR)
    out = image.astype(np.float32)
    out += (filled.astype(np.float32) * (scale / 255) - out) * weight[..., None]
    return np.clip(np.rint(out), 0.0, scale).astype(image.dtype)


def find_discs(luma: np.ndarray) -> list[Disc]:
    """Round, flat bright discs in ``luma`` (H×W float in [0, 1]), strongest first, none
    overlapping another: maxima over position and radius of the centre's contrast with its ring,
    where the centre is brighter than every sector of the ring too."""
    short = min(luma.shape)
    # One radius either side of the range: a spot smaller than the range peaks at its smallest
    # radius, and only a maximum between two radii is a disc of that size
    radii = [max(short * RADII[0], MIN_RADIUS) / RADIUS_STEP]
    while radii[-1] <= short * RADII[1]:
        radii.append(radii[-1] * RADIUS_STEP)
    contrast = np.stack([_disc_contrast_coarse(luma, r) for r in radii])
    # A maximum over its 3×3 neighbours at its own radius and at the radii either side
    around = np.stack([cv2.dilate(c, np.ones((3, 3), np.uint8)) for c in contrast])
    neighbours = np.maximum(np.maximum(around[:-2], around[1:-1]), around[2:])
    inside = contrast[1:-1]
    found = sorted(
        (
            Disc(float(inside[s, y, x]), radii[s + 1], float(y), float(x))
            for s, y, x in np.argwhere((inside > 0) & (inside >= neighbours))
        ),
        key=lambda d: -d.contrast,
    )
    kept: list[Disc] = []
    for disc in found:
        if all((disc.y - k.y) ** 2 + (disc.x - k.x) ** 2 > (0.8 * (disc.radius + k.radius)) ** 2 for k in kept):
            kept.append(disc)
    return [d for d in (_outlined(luma, _centred(luma, d)) for d in kept) if d.reach > 0]


def bokeh_size(discs: list[Disc]) -> float | None:
    """The radius the most disc contrast lies at, within :data:`SIZE_SPREAD` (the glass's blur),
    if at least :data:`MIN_DISCS` discs have it; else None: no field of bokeh."""
    if not discs:
        return None
    log_radii = np.log([d.radius for d in discs])
    contrasts = np.array([d.contrast for d in discs])
    near = np.abs(log_radii[:, None] - log_radii[None]) < np.log(SIZE_SPREAD)
    best = int(np.argmax(near @ contrasts))
    return float(np.exp(log_radii[best])) if near[best].sum() >= MIN_DISCS else None


def _disc_contrast(luma: np.ndarray, radius: float) -> np.ndarray:
    """How much brighter a disc of ``radius`` around each pixel is than its ring, where it is also
    brighter than every sector of it by :data:`SECTOR_SHARE` of that, stands out of the ring's
    texture (:data:`TEXTURE`) and fills its radius (:data:`FILL`); 0 elsewhere."""
    inner = _mean(luma, _ring(0.0, radius))
    core = _mean(luma, _ring(0.0, radius / 2))
    sectors = np.stack([inner - _mean(luma, s) for s in _sectors(radius * RING[0], radius * RING[1])])
    contrast = sectors.mean(axis=0)
    ring = _ring(radius * RING[0], radius * RING[1])
    spread = np.sqrt(np.maximum(_mean(luma * luma, ring) - _mean(luma, ring) ** 2, 0.0))
    disc = (contrast > CONTRAST) & (sectors.min(axis=0) > SECTOR_SHARE * contrast) & (contrast > TEXTURE * spread)
    disc &= contrast >= FILL * (core - inner + contrast)  # the centre's own contrast with the ring
    return np.where(disc, contrast, 0.0).astype(np.float32)


def _disc_contrast_coarse(luma: np.ndarray, radius: float) -> np.ndarray:
    """:func:`_disc_contrast` of a large ``radius`` on ``luma`` halved until the radius is under
    2 × :data:`COARSE_RADIUS` px, scaled back up: a disc that wide holds no detail a pixel the
    smaller photo misses would change, and the filters cost a quarter each halving."""
    halvings = max(0, int(np.log2(radius / COARSE_RADIUS)))
    if halvings == 0:
        return _disc_contrast(luma, radius)
    height, width = luma.shape
    factor = 2**halvings
    small = cv2.resize(
        luma, (max(1, round(width / factor)), max(1, round(height / factor))), interpolation=cv2.INTER_AREA
    )
    return cv2.resize(_disc_contrast(small, radius / factor), (width, height), interpolation=cv2.INTER_LINEAR)


def _mean(luma: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    return cv2.filter2D(luma, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def _offsets(outer: float) -> tuple[np.ndarray, np.ndarray]:
    half = int(np.ceil(outer))
    return np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)


def _ring(inner: float, outer: float) -> np.ndarray:
    dy, dx = _offsets(outer)
    distance = np.hypot(dy, dx)
    return ((distance >= inner) & (distance <= outer)).astype(np.float32)


def _sectors(inner: float, outer: float) -> list[np.ndarray]:
    dy, dx = _offsets(outer)
    sector = np.floor((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * SECTORS).astype(int) % SECTORS
    ring = _ring(inner, outer)
    return [ring * (sector == k) for k in range(SECTORS)]


def _window(luma: np.ndarray, disc: Disc, reach: float) -> tuple[slice, slice, np.ndarray]:
    """Rows, columns and each pixel's distance from ``disc``'s centre, within ``reach`` px of it."""
    height, width = luma.shape
    y0, y1 = max(0, int(disc.y - reach)), min(height, int(disc.y + reach) + 2)
    x0, x1 = max(0, int(disc.x - reach)), min(width, int(disc.x + reach) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    return slice(y0, y1), slice(x0, x1), np.hypot(yy - disc.y, xx - disc.x)


def _centred(luma: np.ndarray, disc: Disc) -> Disc:
    """``disc`` moved to the centroid of its brightness above its ring: the detector's grid is a
    pixel and its scales a quarter of a radius apart, coarser than a sharp disc's edge."""
    rows, cols, distance = _window(luma, disc, disc.radius * RING[1])
    patch = luma[rows, cols]
    ring = (distance > disc.radius * RING[0]) & (distance <= disc.radius * RING[1])
    excess = np.maximum(patch - np.median(patch[ring]), 0.0) * (distance <= disc.radius * RING[0])
    total = excess.sum()
    if total <= 0:
        return disc
    yy, xx = np.mgrid[rows, cols]
    return replace(disc, y=float((excess * yy).sum() / total), x=float((excess * xx).sum() / total))


def _outlined(luma: np.ndarray, disc: Disc) -> Disc:
    """``disc`` with how far it reaches: the furthest but a tenth of :data:`RAYS` rays from its
    centre reach before it falls under :data:`EDGE` of its peak brightness above the scene; 0 if it
    is not round (:data:`ROUNDNESS`) or not flat (:data:`FLATNESS`). The detector's radius is where
    the ring clears a disc, not its edge."""
    steps = np.arange(0.0, 2 * disc.radius, 0.5, dtype=np.float32)
    angles = np.arange(RAYS, dtype=np.float32) * (2 * np.pi / RAYS)
    xs = disc.x + np.cos(angles)[:, None] * steps
    ys = disc.y + np.sin(angles)[:, None] * steps
    rays = cv2.remap(luma, xs, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    rows, cols, distance = _window(luma, disc, 3 * disc.radius)
    outside = (distance > 2 * disc.radius) & (distance <= 3 * disc.radius)
    excess = rays - (np.median(luma[rows, cols][outside]) if outside.any() else rays[:, -1].mean())
    peak = excess[:, steps <= disc.radius].mean(axis=0).max()
    beyond = (excess < EDGE * peak) & (steps > disc.radius / 2)
    reach = np.where(beyond.any(axis=1), steps[np.argmax(beyond, axis=1)], 2 * disc.radius)
    near, edge, far = np.quantile(reach, (0.1, 0.5, 0.9))
    centre = excess[:, steps <= edge / 3].mean()
    halfway = excess[:, (steps > edge / 2) & (steps <= 0.85 * edge)].mean()
    bokeh = far <= ROUNDNESS * near and centre > 0 and halfway >= FLATNESS * centre
    return replace(disc, reach=float(far) if bokeh else 0.0)


def lamps(pixels: np.ndarray, size: float) -> np.ndarray:
    """H×W uint8, 1 over the lamps of ``pixels`` (H×W×3, 8-bit) and their glow: clipped areas wider
    than a disc of the field's radius ``size`` (px). The brightest bokeh clips too, so the night
    rule of :mod:`derain.lights` (keep every clipped area) would keep it."""
    clipped = (pixels.min(axis=2) >= round(CLIP_LEVEL * 255)).astype(np.uint8)
    wider = 2 * round(size * SIZE_SPREAD) + 1
    wide = cv2.morphologyEx(clipped, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (wider, wider)))
    return cv2.dilate(wide, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * LIGHT_RIM + 1, 2 * LIGHT_RIM + 1)))


def _disc_mask(luma: np.ndarray, discs: list[Disc]) -> np.ndarray:
    """H×W uint8, 1 inside each of ``discs`` and :data:`MARGIN` px beyond its reach."""
    mask = np.zeros(luma.shape, np.uint8)
    sub = 4  # OpenCV draws at quarter-pixel precision with shift=2
    for disc in discs:
        cv2.circle(mask, (round(disc.x * sub), round(disc.y * sub)), round((disc.reach + MARGIN) * sub), 1, -1, shift=2)
    return mask
