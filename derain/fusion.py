"""Temporal fusion: what a drop hides in one frame is often visible in the frames around it.

Drops sit on the glass while the scene moves behind them, so after warping a neighbour onto the
current frame (dense optical flow, OpenCV's DIS, computed on the *derained* frames so the drops
do not pin the flow to the glass), a pixel this frame's attention calls "drop" may land where the
neighbour's attention says "clear". There the neighbour's pixel is taken, weighted by how much
clearer it is and by forward-backward flow consistency; everywhere else the single-frame output
stays as it was. A static camera keeps the drops over the same scene in every frame, so nothing
is clearer anywhere and the result equals the single-frame output: fusion never invents change.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import cv2
import numpy as np

DEFAULT_RADIUS = 3
"""Neighbours on each side of a frame that may lend it pixels (a window of 2·radius + 1 frames)."""
FLOW_WIDTH = 640
"""Flow is computed at most this wide (and scaled up): large frames cost no more, camera motion is smooth."""
CONSISTENCY_PX = 2.0
"""Forward-backward flow error (pixels) at which a neighbour's weight falls to 1/e: occlusions, bad matches."""
DROP_GAIN = 1.5
"""Attention is scaled by this (and clipped to 1) to say "drop": its maps run low inside large drops."""
SELF_WEIGHT_FLOOR = 0.05
DROP_MARGIN = 9
"""Pixels (at flow resolution) around a drop whose flow is also distrusted: DIS blocks straddle the edge."""
FILL_SCALES = (0.03, 0.1, 0.3)
"""Gaussian widths, as fractions of the frame, tried in turn to fill the flow inside drops."""
"""Weight the frame's own output keeps even under full attention, so it wins where no neighbour is clearer."""


def luma8(rgb: np.ndarray) -> np.ndarray:
    """8-bit luma of an RGB uint8/uint16 frame, for flow."""
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


class FlowField:
    """Dense optical flow between the frames of a window, computed at a bounded width, cached per pair.

    Inside drops the derained frames still carry some residue that sits still on the glass, and
    DIS follows it: the flow there says "no motion" (and agrees forward and backward). So where a
    frame's drop map is high, the flow is replaced by the flow of the clear surroundings
    (normalised convolution, widening until every pixel has support): camera motion is smooth.
    """

    def __init__(self, width: int = FLOW_WIDTH) -> None:
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.width = width
        self.grays: dict[int, np.ndarray] = {}
        self.trust: dict[int, np.ndarray | None] = {}
        self.cache: dict[tuple[int, int], np.ndarray] = {}

    def add(self, index: int, gray: np.ndarray, drops: np.ndarray | None = None) -> None:
        """Frame ``index`` (8-bit luma) and, optionally, where it has drops (H×W in [0, 1])."""
        h, w = gray.shape
        scale = min(1.0, self.width / w)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else gray
        self.grays[index] = small
        self.trust[index] = None if drops is None else _trust(cv2.resize(drops, size, interpolation=cv2.INTER_AREA))

    def flow(self, a: int, b: int) -> np.ndarray:
        """H×W×2 float32 flow F with frame a at x matching frame b at x + F(x)."""
        if (a, b) not in self.cache:
            self.cache[(a, b)] = self._compute(a, b)
        return self.cache[(a, b)]

    def forget_before(self, index: int) -> None:
        """Drop frames older than ``index`` and the flows that involve them (memory stays bounded)."""
        for store in (self.grays, self.trust):
            for i in [i for i in store if i < index]:
                del store[i]
        for key in [k for k in self.cache if min(k) < index]:
            del self.cache[key]

    def _compute(self, a: int, b: int) -> np.ndarray:
        flow = self.dis.calc(self.grays[a], self.grays[b], None)
        if self.trust[a] is not None:
            flow = _fill_untrusted(flow, self.trust[a])
        return flow


def _trust(drops: np.ndarray) -> np.ndarray:
    """How far the flow at each pixel can be believed: low on and just around drops."""
    near = cv2.dilate(drops.astype(np.float32), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (DROP_MARGIN,) * 2))
    return np.clip(1.0 - 2.0 * near, 0.0, 1.0)


def _fill_untrusted(flow: np.ndarray, trust: np.ndarray) -> np.ndarray:
    """Flow where ``trust`` is low replaced by the trusted flow around it."""
    h, w = trust.shape
    filled = flow.copy()
    known = np.zeros(trust.shape, bool)
    weighted = np.dstack([flow * trust[..., None], trust])
    for fraction in FILL_SCALES:
        sigma = fraction * max(h, w)
        step = max(1.0, sigma / 4.0)  # blur a reduced copy: wide Gaussians cost little there
        size = (max(1, round(w / step)), max(1, round(h / step)))
        small = cv2.resize(weighted, size, interpolation=cv2.INTER_AREA)
        blurred = cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / step), (w, h), interpolation=cv2.INTER_LINEAR)
        support = blurred[..., 2]
        fresh = (support > 0.05) & ~known
        filled[fresh] = blurred[fresh, :2] / support[fresh, None]
        known |= fresh
    return trust[..., None] * flow + (1.0 - trust[..., None]) * filled


def full_size(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """A flow computed at a reduced size, scaled up to ``height`` × ``width`` pixels."""
    if flow.shape[:2] == (height, width):
        return flow
    scale = width / flow.shape[1]
    return cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR) * scale


def warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``image`` at x + flow(x) (bilinear); also the mask of positions inside the frame."""
    h, w = flow.shape[:2]
    map_x = flow[..., 0] + np.arange(w, dtype=np.float32)[None, :]
    map_y = flow[..., 1] + np.arange(h, dtype=np.float32)[:, None]
    warped = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inside = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return warped, inside


def fuse_frame(
    current: int, frames: dict[int, np.ndarray], attention: dict[int, np.ndarray], flows: FlowField
) -> np.ndarray:
    """Frame ``current`` with drop pixels replaced where a neighbour in ``frames`` saw them clearer."""
    image = frames[current]
    h, w = image.shape[:2]
    att = attention[current]
    own = np.maximum(1.0 - att, SELF_WEIGHT_FLOOR)
    total = own[..., None] * image.astype(np.float32)
    weight = own.copy()
    for other in frames:
        if other == current:
            continue
        forward = full_size(flows.flow(current, other), h, w)
        backward, _ = warp(full_size(flows.flow(other, current), h, w), forward)
        error = np.linalg.norm(forward + backward, axis=2)
        seen, inside = warp(frames[other].astype(np.float32), forward)
        their_att, _ = warp(attention[other], forward)
        gain = np.clip(att - their_att, 0.0, 1.0) * np.exp(-((error / CONSISTENCY_PX) ** 2)) * inside
        total += gain[..., None] * seen
        weight += gain
    top = np.iinfo(image.dtype).max
    return np.clip(np.rint(total / weight[..., None]), 0, top).astype(image.dtype)


def fuse(restorations: Iterable[tuple[np.ndarray, np.ndarray]], radius: int = DEFAULT_RADIUS) -> Iterator[np.ndarray]:
    """Fused frames, one per input, in order, from (derained frame, attention map) pairs.

    Holds at most 2·radius + 1 frames: each frame is released once its last neighbour arrived.
    ``radius`` 0 returns the derained frames unchanged.
    """
    if radius < 0:
        raise ValueError("the fusion radius must be ≥ 0")
    frames: dict[int, np.ndarray] = {}
    attention: dict[int, np.ndarray] = {}
    flows = FlowField()
    pending: deque[int] = deque()

    def emit(current: int) -> np.ndarray:
        near = {i: frames[i] for i in range(current - radius, current + radius + 1) if i in frames}
        fused = fuse_frame(current, near, {i: attention[i] for i in near}, flows)
        oldest = current - radius + 1
        for store in (frames, attention):
            for i in [i for i in store if i < oldest]:
                del store[i]
        flows.forget_before(oldest)
        return fused

    for index, (image, att) in enumerate(restorations):
        if radius == 0:
            yield image
            continue
        frames[index], attention[index] = image, np.clip(att.astype(np.float32) * DROP_GAIN, 0.0, 1.0)
        flows.add(index, luma8(image), attention[index])
        pending.append(index)
        if pending[0] + radius <= index:
            yield emit(pending.popleft())
    while pending:
        yield emit(pending.popleft())
