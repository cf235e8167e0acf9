"""A stream of frames in, derained frames out: batched inference, then temporal fusion.

Frames of one size share a forward pass on GPUs (as many as fit the free memory, up to
:data:`MAX_FRAME_BATCH`); on the CPU, or when a frame needs tiles, they go one at a time
through :meth:`Derainer.run`. Only a window of frames is ever held, so a long clip costs no
more memory than a short one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from .engine import Derainer, Restoration, _check_image, _pad_to_multiple
from .fusion import DEFAULT_RADIUS, fuse
from .model import SIZE_MULTIPLE

MAX_FRAME_BATCH = 8


def frame_batch_size(derainer: Derainer, height: int, width: int) -> int:
    """Frames per forward pass: 1 on the CPU or for frames that need tiles, else what fits the memory budget."""
    ph, pw = height + -height % SIZE_MULTIPLE, width + -width % SIZE_MULTIPLE
    if derainer.device.type == "cpu" or derainer._tile_size(ph, pw) < max(ph, pw):
        return 1
    return max(1, min(MAX_FRAME_BATCH, derainer._pixel_budget() // (ph * pw)))


def _run_batch(derainer: Derainer, frames: list[np.ndarray]) -> list[Restoration]:
    """One forward pass over equal-size frames; the results match :meth:`Derainer.run` frame by frame."""
    if len(frames) == 1 or len({f.shape for f in frames}) > 1 or len({f.dtype for f in frames}) > 1:
        return [derainer.run(f, with_attention=True) for f in frames]
    scale = _check_image(frames[0])
    height, width = frames[0].shape[:2]
    batch = np.stack([_pad_to_multiple(f, SIZE_MULTIPLE) for f in frames])
    bgr = derainer.weights_info.channel_order == "BGR"
    try:
        out = derainer._forward(batch[..., ::-1] if bgr else batch, scale)
    except torch.OutOfMemoryError:  # a busy GPU: fall back to frame by frame (tiled if need be)
        torch.cuda.empty_cache()
        return [derainer.run(f, with_attention=True) for f in frames]
    images = out.image[:, :height, :width, ::-1] if bgr else out.image[:, :height, :width]
    restored = np.clip(np.rint(images * scale), 0, scale).astype(frames[0].dtype)
    return [
        Restoration(restored[k], [np.clip(m[k, :height, :width], 0.0, 1.0) for m in out.attention])
        for k in range(len(frames))
    ]


def restore_frames(derainer: Derainer, frames: Iterable[np.ndarray], batch: int | None = None) -> Iterator[Restoration]:
    """Derained frames with their attention maps, in order; ``batch`` None sizes batches from the first frame."""
    group: list[np.ndarray] = []
    for frame in frames:
        if batch is None:
            batch = frame_batch_size(derainer, *frame.shape[:2])
        group.append(frame)
        if len(group) >= batch:
            yield from _run_batch(derainer, group)
            group = []
    if group:
        yield from _run_batch(derainer, group)


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
        yield from (r.image for r in restored)
        return
    yield from fuse(((r.image, r.attention[-1]) for r in restored), radius)
