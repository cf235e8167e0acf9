"""Drops on a camera focused on the glass (``focus="glass"``): what the network leaves, filled in.

When a phone is pressed to a wet window, or a dash-cam's depth of field reaches its windscreen, the
drops are sharp, dark-rimmed beads with bright centres and the scene behind them is out of focus. The
shipped weights learned drops the other way round (soft blobs over a sharp scene) and leave these
almost untouched. But a scene out of focus holds no detail smaller than a drop, so the median of
the photo over a window a little larger than most drops is that scene without them: wherever the
photo strays from its median by more than :data:`DEVIATION`, the smoothed median replaces it.
A second look, at twice the window, takes the drops too wide for the first.
Scene detail finer than a drop (thin railings, small text, foliage in focus) is softened too,
which is why it is a choice the user makes for such photos and not a default.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .lights import light_sources

#: Median window as a fraction of the short side: 15 px at 480, wider than all but the largest
#: focused drops of the Raindrop Clarity photos (3–30 px at 720×480), narrower than the scene's
#: posts and window frames, which keep their edges.
WINDOW_FRACTION = 1 / 32
#: Smallest median window (px, odd).
MIN_WINDOW = 5
#: How far (of full scale, in any channel) a pixel strays from the median to count as a drop's:
#: a focused drop's dark rim and bright centre stray 0.2–0.5, an out-of-focus scene's texture less
#: than 0.05.
DEVIATION = 0.06
#: Pixels around each drop replaced with it (its antialiased edge), and the blur (sigma, px) of
#: the replaced area's border.
MARGIN, FEATHER = 2, 1.5
#: Blur (sigma, as a fraction of the window) of the median before it fills in: a median's flat
#: patches would show as a painted look.
SMOOTHING = 1 / 6
#: Share of its bounding box a dark spot fills to count as a drop in the second, wider look
#: (a disc fills 0.79 of it, a thin dark line along a box's diagonal far less).
COMPACTNESS = 0.4


def median_window(height: int, width: int) -> int:
    """The median's window (odd, px) for a photo of this size."""
    return max(MIN_WINDOW, 2 * int(min(height, width) * WINDOW_FRACTION / 2) + 1)


def remove_focused_drops(image: np.ndarray) -> np.ndarray:
    """``image`` (H×W×3 uint8 or uint16) with the sharp drops of a glass-focused shot replaced by
    the out-of-focus scene around them; pixels no drop is near stay exactly as they were, and
    so do lamps in a night shot (:func:`~derain.lights.light_sources`)."""
    scale = float(np.iinfo(image.dtype).max)
    pixels = image.astype(np.float32) / scale
    kept = 1.0 - light_sources(torch.from_numpy(pixels).permute(2, 0, 1)).numpy()
    window = median_window(*image.shape[:2])
    median = _median(pixels, window)
    strays = (np.abs(pixels - median).max(axis=2) > DEVIATION).astype(np.uint8)
    _fill_in(pixels, median, cv2.morphologyEx(strays, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)), window, kept)
    # A drop wider than half the window outvotes the scene in its median and stays; under a median
    # twice as wide, its dark rim is a compact spot darker than the scene in every channel
    wide = 2 * window + 1
    median = _median(pixels, wide)
    _fill_in(pixels, median, _compact((median - pixels).min(axis=2) > DEVIATION, wide), wide, kept)
    return np.clip(np.rint(pixels * scale), 0.0, scale).astype(image.dtype)


def _median(pixels: np.ndarray, window: int) -> np.ndarray:
    """The median of ``pixels`` (H×W×3 float in [0, 1]) over a ``window``-px square. OpenCV takes
    only 8-bit images for windows wider than 5 px: the median fills in a blurred scene, where 8
    bits are plenty, and the test against it uses every bit of the photo."""
    return cv2.medianBlur(np.rint(pixels * 255).astype(np.uint8), window).astype(np.float32) / 255


def _compact(mask: np.ndarray, size: int) -> np.ndarray:
    """``mask``'s connected parts no wider or taller than ``size`` px that fill at least
    :data:`COMPACTNESS` of their bounding box: drops, not the edges of dark things in the scene."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    width, height, area = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT], stats[:, cv2.CC_STAT_AREA]
    keep = (np.maximum(width, height) <= size) & (area >= COMPACTNESS * width * height)
    keep[0] = False  # the background
    return keep[labels].astype(np.uint8)


def _fill_in(pixels: np.ndarray, median: np.ndarray, drops: np.ndarray, window: int, kept: np.ndarray) -> None:
    """Replace ``drops`` (H×W uint8 0/1) in ``pixels``, in place, with the ``window``-px ``median``
    blurred, feathered around each, except where ``kept`` (H×W, 1 = keep) says."""
    drops = cv2.dilate(drops, np.ones((2 * MARGIN + 1, 2 * MARGIN + 1), np.uint8))
    weight = cv2.GaussianBlur(drops.astype(np.float32), (0, 0), FEATHER) * kept
    scene = cv2.GaussianBlur(median, (0, 0), window * SMOOTHING)
    pixels += (scene - pixels) * weight[..., None]
