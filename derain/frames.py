"""A stream of frames in, derained frames out: batched inference, then temporal fusion.

Frames of one size share a forward pass on GPUs (as many as fit the free memory, up to
:data:`~derain.engine.MAX_TILE_BATCH`); on the CPU, or when a frame needs tiles, they go one at a time
through :meth:`Derainer.run`. Only a window of frames is ever held, so a long clip costs no
more memory than a short one. The model runs on a thread ahead of fusion, so a GPU's forward
passes and fusion's CPU work overlap.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterable, Iterator

import numpy as np

from .engine import Derainer, Restoration
from .fusion import DEFAULT_RADIUS, fuse

QUEUE_FRAMES = 8
"""Frames one stage of a pipeline (decoding, the model, encoding) may run ahead of the next."""


class Prefetch:
    """Runs an iterator on a thread, a bounded queue ahead of the consumer; its exceptions surface in the consumer."""

    _DONE = object()

    def __init__(self, items: Iterator, name: str, size: int = QUEUE_FRAMES) -> None:
        self.q: queue.Queue = queue.Queue(size)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(items,), name=name, daemon=True)
        self.thread.start()

    def _put(self, item) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _work(self, items: Iterator) -> None:
        try:
            for item in items:
                if self.stop.is_set():
                    return
                self._put(item)
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consumer
            self._put(exc)

    def __iter__(self) -> Iterator:
        while (item := self.q.get()) is not self._DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def restore_frames(
    derainer: Derainer, frames: Iterable[np.ndarray], batch: int | None = None
) -> Iterator[tuple[np.ndarray, Restoration]]:
    """Each frame with its restoration (image, final attention map), in order; ``batch`` None: sized
    from the first frame. A compiled model gets the last batch filled up with copies of its last
    frame, so that a clip's end costs no second compilation for a smaller batch."""
    group: list[np.ndarray] = []
    for frame in frames:
        if batch is None:
            batch = derainer.batch_size(*frame.shape[:2])
        group.append(np.array(frame))  # a copy: a camera may hand out one buffer, refilled for each frame
        if len(group) >= batch:
            yield from zip(group, derainer.run_batch(group, all_maps=False))
            group = []
    if group:
        filler = [group[-1]] * (batch - len(group)) if derainer.compiled else []
        yield from zip(group, derainer.run_batch(group + filler, all_maps=False))  # zip drops the filler's


def derain_frames(
    derainer: Derainer,
    frames: Iterable[np.ndarray],
    fuse_frames: bool = True,
    radius: int = DEFAULT_RADIUS,
    batch: int | None = None,
    find_missed: bool = True,
) -> Iterator[np.ndarray]:
    """Each frame (H×W×3 RGB uint8/uint16) derained, fused with its ``radius`` neighbours on each
    side (``find_missed``: see :func:`~derain.fusion.fuse`). Where the frame size changes (another
    camera, a resized stream), fusion starts afresh: frames of other sizes show no common scene."""
    restored = restore_frames(derainer, frames, batch)
    if not fuse_frames:
        yield from (r.image for _, r in restored)
        return
    ahead = Prefetch(((f, r.image, r.attention[-1]) for f, r in restored), "derain-model")
    try:
        for _, run in itertools.groupby(ahead, key=lambda item: item[0].shape):
            yield from fuse(run, radius, find_missed=find_missed)
    finally:
        ahead.close()
