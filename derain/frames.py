"""A stream of frames in, derained frames out: batched inference, then temporal fusion.

Frames of one size share a forward pass on GPUs (as many as fit the free memory, up to
:data:`~derain.engine.MAX_TILE_BATCH`); on the CPU, or when a frame needs tiles, they go one at a time
through :meth:`Derainer.run`. Only a window of frames is ever held, so a long clip costs no
more memory than a short one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from .engine import Derainer, Restoration
from .fusion import DEFAULT_RADIUS, fuse


def restore_frames(
    derainer: Derainer, frames: Iterable[np.ndarray], batch: int | None = None
) -> Iterator[tuple[np.ndarray, Restoration]]:
    """Each frame with its restoration (image, attention maps), in order; ``batch`` None: sized from the first frame."""
    group: list[np.ndarray] = []
    for frame in frames:
        if batch is None:
            batch = derainer.batch_size(*frame.shape[:2])
        group.append(frame)
        if len(group) >= batch:
            yield from zip(group, derainer.run_batch(group))
            group = []
    if group:
        yield from zip(group, derainer.run_batch(group))


def derain_frames(
    derainer: Derainer,
    frames: Iterable[np.ndarray],
    fuse_frames: bool = True,
    radius: int = DEFAULT_RADIUS,
    batch: int | None = None,
) -> Iterator[np.ndarray]:
    """Each frame (H×W×3 RGB uint8/uint16) derained, fused with its ``radius`` neighbours on each side."""
    restored = restore_frames(derainer, frames, batch)
    if not fuse_frames:
        yield from (r.image for _, r in restored)
        return
    yield from fuse(((f, r.image, r.attention[-1]) for f, r in restored), radius)
