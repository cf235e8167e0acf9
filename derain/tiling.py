"""Overlapping tiles and seamless blending, so memory stays bounded at any image size.

Tiles along an axis are balanced (equal sizes, no thin last tile) and overlap by at least the
requested amount. In each overlap the two tiles' outputs are cross-faded with a raised-cosine
ramp across the middle half of the overlap: the outer quarter of every tile edge, where the
network saw padding instead of image, gets no weight at all. Weights sum to exactly one, so
blending is a plain weighted sum without a normalisation pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size


def axis_spans(length: int, tile: int, overlap: int, multiple: int = 1) -> list[Span]:
    """Balanced spans covering ``[0, length)``, each at most ``tile`` (rounded to ``multiple``)."""
    if tile >= length:
        return [Span(0, length)]
    overlap = min(overlap, tile // 2)
    count = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count)
    size = min(length, math.ceil(size / multiple) * multiple)
    return [Span(round(i * (length - size) / (count - 1)), size) for i in range(count)]


def _ramp(n: int) -> np.ndarray:
    """Weight of the later tile across an overlap of ``n`` pixels: 0 → 1 over the middle half."""
    t = (np.arange(n, dtype=np.float32) + 0.5) / n
    u = np.clip((t - 0.25) / 0.5, 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * u)).astype(np.float32)


def axis_weights(spans: list[Span]) -> list[np.ndarray]:
    """Per-span 1-D blending weights; at every position the weights of all spans sum to 1."""
    weights = [np.ones(s.size, np.float32) for s in spans]
    for i in range(len(spans) - 1):
        a, b = spans[i], spans[i + 1]
        shared = a.stop - b.start
        if shared <= 0:
            continue
        ramp = _ramp(shared)
        weights[i][a.size - shared :] *= 1.0 - ramp
        weights[i + 1][:shared] *= ramp
    return weights


@dataclass(frozen=True)
class Tile:
    rows: Span
    cols: Span
    weight: np.ndarray
    """H×W blending weight of this tile's output."""

    @property
    def region(self) -> tuple[slice, slice]:
        return slice(self.rows.start, self.rows.stop), slice(self.cols.start, self.cols.stop)


def plan_tiles(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> list[Tile]:
    """Tiles of at most ``tile``² pixels covering the image, with their blending weights."""
    rows = axis_spans(height, tile, overlap, multiple)
    cols = axis_spans(width, tile, overlap, multiple)
    row_w, col_w = axis_weights(rows), axis_weights(cols)
    return [Tile(r, c, np.outer(rw, cw)) for r, rw in zip(rows, row_w) for c, cw in zip(cols, col_w)]
