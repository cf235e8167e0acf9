"""The dense-drop pass: a second look at twice the size where drops crowd together.

Small drops packed over a surface (drizzle on a dark car, a fine spray on the glass) are a few
pixels across at the size the weights learned drops at, and the network leaves most of them in
place; at twice the size it removes them. But a whole photo at 2× also takes isolated bright
spots for drops (the highlights on a dashboard's knobs, glints on metal, a lamp grid): the worst
drop-free validation photo falls from 38.4 to 32.0 dB. What tells the two apart is density: real
drops come in fields, a highlight comes alone. So the 2× change is taken only where the final
attention map marks drops over a good part of the neighbourhood, and not near a drop that is
already large at 1×, which at 2× is beyond what the network repaints (:func:`density_weights`);
there, only where it changes a pixel more than the 1× pass did (:func:`combine_changes`).
Elsewhere the photo comes out exactly as the 1× pass left it.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Enlargement of the second pass: at 2× the real pairs' smallest drops reach the size the
#: weights learned (1.5× removes fewer; both together gain 0.03 dB more for 2.25× the work).
DENSE_SCALE = 2.0
#: A map value from which a pixel counts as a drop when measuring density.
DENSE_LEVEL = 0.5
#: Radius (Gaussian σ, px at the network's size) of the neighbourhood whose drop share is measured:
#: wide enough that a cluster of highlights on one object stays a small share.
DENSE_SIGMA = 64.0
#: Drop share at which the 2× change starts to be taken, and from which it is taken in full.
DENSE_RAMP = (0.1, 0.3)
#: Radius (px at the network's size) from which a drop is left to the 1× pass: the largest drops the
#: weights learned have twice this radius, so at 2× a larger drop is beyond what the network repaints
#: (it paints such a drop darker, in a mottled patch).
LARGE_DROP_RADIUS = 20
#: How far (px) the drop mask reaches into :func:`near_large_drops`: 2 radii for the opening, 1 for
#: the dilation, 2 for the blur (OpenCV cuts a float Gaussian at 4σ). A crop this much larger than
#: where the answer is needed gives the same answer there as the whole mask.
LARGE_DROP_REACH = 5 * LARGE_DROP_RADIUS
#: Weight below which the 2× change is not worth a pass: it would move no pixel by a quarter level.
MIN_WEIGHT = 1e-3
#: Context (px at the network's size) around the dense region that the second pass also sees.
DENSE_MARGIN = 64


def density_weights(attention: np.ndarray) -> np.ndarray:
    """How much of the 2× change to allow at each pixel (float32 H×W in [0, 1]) from the final
    attention map (H×W): the share of the pixels within about :data:`DENSE_SIGMA` that the map marks
    as drops (measured at a quarter of the size: the blur is smooth), ramped over :data:`DENSE_RAMP`,
    and none near a large drop (:func:`near_large_drops`).

    Most photos have no dense drops, and the large-drop search is most of the work (16 ms at
    720×480 on two cores, about as long as a GPU's whole forward pass), so it runs only near
    where the ramp is on."""
    height, width = attention.shape
    drops = attention > DENSE_LEVEL
    small_size = (max(1, width // 4), max(1, height // 4))
    share = cv2.GaussianBlur(
        cv2.resize(drops.astype(np.float32), small_size, interpolation=cv2.INTER_AREA), (0, 0), DENSE_SIGMA / 4
    )
    low, high = DENSE_RAMP
    ramp = np.clip((share - low) / (high - low), 0.0, 1.0)
    if not ramp.any():  # bilinear enlargement makes nothing of zeros
        return np.zeros((height, width), np.float32)
    ramp = cv2.resize(ramp, (width, height), interpolation=cv2.INTER_LINEAR)
    rows, cols = _bounds(ramp > 0, LARGE_DROP_REACH)
    ramp[rows, cols] *= 1.0 - near_large_drops(drops[rows, cols])
    return ramp


def near_large_drops(drops: np.ndarray) -> np.ndarray:
    """Where the 2× pass must not go (float32 H×W in [0, 1], from a boolean drop mask): within
    :data:`LARGE_DROP_RADIUS` of a drop that a disc of that radius fits inside, with a soft edge.
    Fields of small drops, even merged ones, hold no such disc."""
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * LARGE_DROP_RADIUS + 1,) * 2)
    large = cv2.dilate(cv2.morphologyEx(drops.astype(np.uint8), cv2.MORPH_OPEN, disc), disc)
    return np.sqrt(np.clip(cv2.GaussianBlur(large.astype(np.float32), (0, 0), LARGE_DROP_RADIUS / 2), 0.0, 1.0))


def dense_region(weights: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns that the second pass must see (where ``weights`` reach
    :data:`MIN_WEIGHT`, with :data:`DENSE_MARGIN` of context), or None where there is nothing dense."""
    dense = weights >= MIN_WEIGHT
    return _bounds(dense, DENSE_MARGIN) if dense.any() else None


def _bounds(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The rows and columns of the box around a mask's pixels (not all False), ``margin`` wider on
    each side, within the mask's bounds."""
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    height, width = mask.shape
    return (
        slice(max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)),
        slice(max(0, cols[0] - margin), min(width, cols[-1] + 1 + margin)),
    )


def enlarge(image: np.ndarray) -> np.ndarray:
    """``image`` at :data:`DENSE_SCALE`, bicubic (drops stay round discs)."""
    height, width = image.shape[:2]
    size = (round(width * DENSE_SCALE), round(height * DENSE_SCALE))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)


def reduce_change(change: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A change made at :data:`DENSE_SCALE` (float32 H×W×3) brought to ``shape``, area-averaged."""
    return cv2.resize(change, shape[::-1], interpolation=cv2.INTER_AREA)


def combine_changes(first: np.ndarray, second: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The 1× change ``first`` and, where ``weights`` allow it, the 2× change ``second`` where it
    moves the pixel more (both float32 H×W×3): drops either pass removed are removed, and
    neither pass's restraint is averaged away."""
    larger = np.abs(second).sum(2) > np.abs(first).sum(2)
    taken = np.where(larger[..., None], second, first)
    return first + weights[..., None] * (taken - first)
