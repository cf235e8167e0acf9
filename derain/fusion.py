"""Temporal fusion: what a drop hides in one frame is often visible in the frames around it.

Drops sit on the glass while the scene moves behind them, so after warping a neighbour onto the
current frame, a pixel this frame's drop map calls "drop" may land where the neighbour's says
"clear". There the pixel moves towards the neighbours' consensus, each neighbour weighted by how
clear it is there, by forward-backward flow consistency and by how well the warped neighbour
matches the frame around there; everywhere else the single-frame output stays as it was. The
drop map joins the model's attention with where the model changed the input (the attention
misses faint residue and wet-glass veils that the model still partly removed) and with what the
neighbours show: a drop the model neither saw nor touched still stays at one place in the frame
while the scene moves, so the frame differs there from its warped neighbours and matches them
unwarped. A static camera keeps the drops over the same scene in every frame, so no neighbour
sees more and the result is the single-frame output: fusion never invents change.

A drop as wide as a tenth of the frame needs the scene to move that far before a neighbour
sees behind it, which takes a slow pan many frames. So the neighbours are not the adjacent
frames only but frames 1, 2, 3, 4, 6, 8, 12 … up to the window apart on each side: the reach
of a wide window for the flow computations of a few frames. (The frames halfway between powers
of two see behind more drops than they cost: on rendered clips, fusion gained a quarter more.)
Flow to a distant frame starts from the chained camera motions to the frames in between, so
large displacements are followed.

Optical flow partly follows drops the model missed rather than the scene (they are sharper
than a background out of focus), so the camera's motion is fitted only where the flow explains
how the frames differ far better than no motion does: the glass does not change. Where the model
missed drops over half the frame, even that fit may find the camera still, or slower than it
was. Yet the frames differ all over, which the fit then leaves unexplained: then the scene's
motion is a peak of the frames' correlation away from zero shift, where the glass correlates
with itself, tried at a few zooms. Distant frames get their own correlation rather than the sum
of each step's small error. The reverse happens too: a sharp thing crossing half a still
camera's frame draws the fit to its own motion. Then whole parts of the frame are explained by
no motion alone, which a camera's motion would not leave (behind drops, the scene between them
moves everywhere), and the camera holds.

A frame's flows and its neighbours' warps are independent of each other, and OpenCV and NumPy
release the GIL for them, so they run on a pool of threads: behind a GPU, fusion on one core
was the bottleneck. Several frames are fused at once, since one frame's work waits on its
slowest flow and leaves cores idle. Each result is summed in a fixed order, so the output does
not depend on the number of threads.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import NamedTuple

import cv2
import numpy as np

DEFAULT_RADIUS = 16
"""How many frames away, on each side, a neighbour may lend pixels (½ s at 30 fps)."""
FLOW_WIDTH = 640
"""Flow is computed at most this wide (and scaled up): large frames cost no more, camera motion is smooth."""
CONSISTENCY = 1.0
"""Forward-backward flow error (pixels at flow resolution) at which a neighbour's weight falls to 1/e."""
AGREEMENT, AGREEMENT_REACH = 8.0, 0.03
"""Mean 8-bit luma difference from a warped neighbour at which its weight falls to 1/e, averaged
over a Gaussian this fraction of the frame width wide."""
WIDE_BLUR = 4.0
"""Pixels of Gaussian blur from which :func:`agreement`'s wide blurs are done on a shrunk frame."""
DROP_LOW, DROP_HIGH = 0.1, 0.35
"""Attention below DROP_LOW is clear, above DROP_HIGH a drop, smooth in between."""
CHANGE_LOW, CHANGE_HIGH = 6.0, 18.0
"""8-bit luma change from input to output below CHANGE_LOW is no drop, above CHANGE_HIGH a drop."""
CHANGE_BLUR = 1.5
"""Pixels of Gaussian blur on that change first: noise and single-pixel edges are no drops."""
DROP_GROW = 0.006
"""Drop maps are widened by this fraction of the frame width: a blob's soft rim is drop too."""
LUMA = np.float32([0.299, 0.587, 0.114])
"""Rec. 601 luma weights of RGB (as OpenCV's gray), for comparing neighbours."""
MISMATCH_BLUR = 2.0
"""Pixels (at flow resolution) of Gaussian blur on squared differences between frames: noise and
warp jitter average out."""
STUCK_FLOOR, STUCK_SPREAD = 1.6, 0.5
"""A frame differs from its warped neighbours by a drop when the RMS 8-bit colour difference
exceeds this floor and this share of the neighbours' own spread (median absolute deviation)."""
STUCK_AGREEING = 0.4
"""Share of the neighbours (at least one) that may look like the frame at a stuck drop: the near
frames see a wide drop where the frame does, since the scene moved less than its width."""
STILL_FLOOR, STILL_LOW, STILL_HIGH, STILL_VOTES = 3.2, 0.5, 0.75, 3
"""A neighbour matches unwarped better (what is stuck on the glass) by the ratio warped / (warped +
unwarped + 3.2² mean squared difference); the third highest (three neighbours agree) counts from
0.5 (nothing: what moves on its own matches neither way, about 0.5) to 0.75 (stuck). With two,
of the 16 neighbours a burned-in timestamp's strokes lost a few levels more to them."""
MOVED_FULL = 3.0
"""Pixels the scene must move between two frames before their unwarped match says anything."""
CONSENSUS_TOLERANCE = 40.0
"""8-bit luma distance from the neighbours' median at which a neighbour's weight falls to 1/e."""
CONSENSUS_CLEAR = 0.5
"""The median counts only the neighbours this clear where their pixel comes from, if any is."""
SUPPORT_HALF = 0.05
"""Summed neighbour weight at which a drop pixel moves halfway to the neighbours' consensus."""
DROP_MARGIN = 9
"""Pixels (at flow resolution) around a drop whose flow is also distrusted: DIS blocks straddle the edge."""
FIT_STEP, FIT_MIN_POINTS, FIT_TOLERANCE = 4, 40, 1.0
"""Camera-motion fit: every 4th pixel of the clear scene, at least 40 of them, RANSAC within 1 px."""
LOCK_REACH, LOCK_FLOOR, LOCK_SHARE = 1.0, 4.0, 0.1
"""A fit that moves a corner 1 px or more (flow resolution) may follow a thing crossing before a
still camera (:func:`_held`). Frames differ where they differ by more than 4 8-bit levels (after
:data:`MISMATCH_BLUR`, which noise does not survive); where they do on less than a tenth of the
frame, the fit stands."""
WELL_EXPLAINED = 0.5
"""A fit that explains (:func:`_explained`) at least half of where the frames differ stands; one
that explains less may have followed drops the model missed, and the correlation's candidates
(:func:`_scene_motion`) are tried (a right fit explains 85–95 % on rendered clips, one that
followed the glass 20–35 %)."""
GLASS_KEPT = 0.8
"""Drops the model missed draw the fit away from the scene only where they stay put, so the
frames stay the same there: the correlation's candidates are tried only where the frames differ
on less than 80 % of the frame (where they were taken on rendered clips, on 14–68 %). A cut to
another shot differs all over, and there some shift explains a third of it by chance."""
DRIFT = 0.005
"""A distant frame's own fit or correlation may differ from the chained steps by this fraction of
the width per step between them (on rendered clips, a step erred 0.2 % of the width on average;
where distant frames overlap little, a wrong motion may explain more than the chain by chance)."""
ZOOMS = tuple(1 + 0.006 * k for k in range(-4, 5))
"""Zooms per frame tried with the correlation's shifts: 0.6 % apart up to ±2.4 % (a parabola
through the best and its neighbours refines it)."""
PEAKS, PEAK_EXCLUDE, WHITENING = 3, 2, (1.0, 0.5)
"""Correlation peaks tried for the scene's motion, pixels around each (and zero) left out, and how
far the correlation is whitened (divided by its magnitude to these powers) for each set of peaks."""
LOCK_GRID, LOCK_CELL, LOCK_SPREAD = (6, 4), 0.02, 0.75
"""The scene's motion must explain the change (:func:`_explained`) in 2 % or more of each of
3/4 of the cells of a 6×4 grid over the frame."""
HOLD_SHARE, HOLD_DOMINANCE = 0.25, 10.0
"""A fit is a thing crossing before a still camera if in a quarter of the grid's cells no motion
explains the change better than the fit (:func:`_explained` the other way round) on 2 % or more
of the cell and ten times as often as the fit explains it better than no motion (on rendered
clips with a moving camera, drops on the glass did so in at most 3 of the 24 cells, the still
scene beside a thing crossing half the frame in 9)."""
STUCK_HOLE = 0.1
"""Holes in the stuck map (below 0.5) up to the area of a square this fraction of the frame width
wide, enclosed by it, are stuck too: the smooth inside of a wide clear drop."""
STUCK_BLOB = 0.05
"""Stuck drops that a disc this fraction of the frame width wide fits into are blobs: a wide drop's
blurred rim around them (:data:`DROP_MARGIN`) is no scene either. Thin ones (burned-in text) keep
their surroundings in :func:`agreement`, where the warped neighbours show them moved."""
MAX_WORKERS = 8
"""Threads fusion uses at most: a frame has 16 neighbours to work on at the default window."""
FRAMES_IN_FLIGHT = 4
"""Frames fused at once at most (never more than the threads): each holds its own sums."""


def neighbour_offsets(radius: int) -> list[int]:
    """Frame offsets that lend pixels: ±1, ±2, ±3, ±4, ±6, ±8, ±12 … (powers of two and halfway
    between them) and ±radius itself."""
    if radius <= 0:
        return []
    steps = sorted({step for k in range(radius.bit_length()) for step in (1 << k, 3 << k >> 1) if step < radius})
    return [s for step in (*steps, radius) for s in (-step, step)]


def luma8(rgb: np.ndarray) -> np.ndarray:
    """8-bit luma of an RGB uint8/uint16 frame, for flow."""
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _smooth_step(x: np.ndarray, low: float, high: float) -> np.ndarray:
    t = np.clip((x - low) / (high - low), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def drop_map(rainy: np.ndarray, derained: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Where the frame has drops, 0…1 (float32): the attention's or the model's change, thresholded and widened."""
    h, w = attention.shape
    change = np.abs(luma8(rainy).astype(np.float32) - luma8(derained).astype(np.float32))
    changed = _smooth_step(cv2.GaussianBlur(change, (0, 0), CHANGE_BLUR), CHANGE_LOW, CHANGE_HIGH)
    drops = np.maximum(_smooth_step(attention.astype(np.float32), DROP_LOW, DROP_HIGH), changed)
    grow = max(1, round(DROP_GROW * w))
    return cv2.dilate(drops, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1,) * 2))


class FlowField:
    """Flow fields between the frames of a window, computed at a bounded width, cached per pair.

    The flow between two frames is the camera's motion, a homography (pans, zooms and rolls of
    a distant scene are one), fitted by RANSAC to OpenCV's DIS flow where no drop is. Chained
    fits of consecutive frames start DIS on a distant frame near the answer, so large
    displacements are found; the fit is then redone on that pair's own flow, so the chain's
    drift does not add up. DIS itself is not used pixel by pixel: the derained frames still
    carry residue that sits still on the glass and DIS follows it (on rendered clips its flow on
    the drops was 5–37× further from the truth than the refitted homography's). Where the
    homography is wrong (parallax, moving things), :func:`agreement` lowers the neighbour's weight.
    Steps that DIS got wrong since it followed the glass (:meth:`_step`) are translations found
    by correlation, those where it followed a thing crossing before a still camera are no
    motion, and their chains are not refitted: DIS would follow the glass or the thing again.
    """

    def __init__(self, width: int = FLOW_WIDTH) -> None:
        self.width = width
        self.grays: dict[int, np.ndarray] = {}
        self.trust: dict[int, np.ndarray] = {}
        self.cache: dict[tuple[int, int], np.ndarray] = {}
        self.steps: dict[tuple[int, int], np.ndarray] = {}
        self.locked: set[tuple[int, int]] = set()

    def add(self, index: int, gray: np.ndarray, drops: np.ndarray | None = None) -> None:
        """Frame ``index`` (8-bit luma) and, optionally, where it has drops (H×W in [0, 1])."""
        h, w = gray.shape
        scale = min(1.0, self.width / w)
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        small = cv2.resize(gray, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else gray
        self.grays[index] = small
        small_drops = (
            np.zeros(small.shape, np.float32)
            if drops is None
            else cv2.resize(drops, size, interpolation=cv2.INTER_AREA)
        )
        self.trust[index] = _trust(small_drops)

    def flow(self, a: int, b: int) -> np.ndarray:
        """H×W×2 float32 flow F (at flow resolution) with frame a at x matching frame b at x + F(x)."""
        if (a, b) not in self.cache:
            self.cache[(a, b)] = self._compute(a, b)
        return self.cache[(a, b)]

    def prepare(self, pairs: Iterable[tuple[int, int]], pool: Executor) -> None:
        """Compute the flows of ``pairs`` not cached yet, and the camera steps they chain, on ``pool``.

        Afterwards :meth:`flow` only reads, so threads may ask for these pairs at once.
        """
        pairs = [pair for pair in dict.fromkeys(pairs) if pair not in self.cache]
        steps = sorted({step for a, b in pairs for step in _chain(a, b)} - self.steps.keys())
        self.steps.update(zip(steps, pool.map(lambda step: self._step(*step), steps)))
        self.cache.update(zip(pairs, pool.map(lambda pair: self._compute(*pair), pairs)))

    def forget_before(self, index: int) -> None:
        """Drop frames older than ``index`` and the flows that involve them (memory stays bounded).

        Frames being fused meanwhile add flows on other threads: the keys are copied first
        (``list`` of a dict is atomic), and none of those flows involve frames before ``index``.
        """
        for store in (self.grays, self.trust):
            for i in [i for i in list(store) if i < index]:
                del store[i]
        for cache in (self.cache, self.steps):
            for key in [k for k in list(cache) if min(k) < index]:
                del cache[key]
        self.locked.difference_update([k for k in list(self.locked) if min(k) < index])

    def camera(self, a: int, b: int) -> np.ndarray:
        """3×3 homography taking frame a's pixels (flow resolution) to frame b's: consecutive fits, chained."""
        chained = np.eye(3)
        for step in _chain(a, b):
            if step not in self.steps:
                self.steps[step] = self._step(*step)
            chained = self.steps[step] @ chained
        return chained

    def _step(self, a: int, b: int) -> np.ndarray:
        """The camera's motion between consecutive frames a and b.

        Dense drops that the model missed (its drop map does not leave them out of the fit) may
        outnumber the scene between them, and DIS then follows the glass: the fit says the
        camera stood still, or moved less than it did. If the fit explains less than
        :data:`WELL_EXPLAINED` of where the frames differ, and the glass kept part of the frame
        the same (:data:`GLASS_KEPT`), the correlation's candidates for the scene's motion are
        tried (:func:`_scene_motion`); one is taken if it explains more, and all over the frame,
        as a camera's motion does and something crossing before a still camera does not.
        Conversely, a fit that moves the frame is taken for no motion if no motion explains
        whole cells of the frame far better (:func:`_held`): a thing crossed before a still
        camera, unless a candidate other than the fit (which would be the thing's motion again)
        explains the frame. Such steps are ``locked``.
        """
        pair = self._pair(a, b)
        first, second, still = pair
        fit = self._fit(a, b, pair)
        held = _reach(fit, first.shape) >= LOCK_REACH and _held(first, second, fit, still)
        base, share = (np.eye(3), 0.0) if held else (fit, float(_explained(first, second, fit, still).mean()))
        if held:
            self.locked.add((a, b))
        changed = float(np.mean(still > LOCK_FLOOR))
        if not LOCK_SHARE <= changed < GLASS_KEPT or share >= WELL_EXPLAINED * changed:
            return base
        found = _scene_motion(first, second, still, share, ZOOMS)
        if found is None or (held and _reach(found, first.shape, fit) < LOCK_REACH):  # the thing's motion again
            return base
        self.locked.add((a, b))
        return found

    def _pair(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames a and b (float32 luma at flow resolution) and how far they differ unwarped (:func:`_change`)."""
        first, second = self.grays[a].astype(np.float32), self.grays[b].astype(np.float32)
        return first, second, _change(first, second)

    def _fit(
        self, a: int, b: int, pair: tuple[np.ndarray, np.ndarray, np.ndarray], start: np.ndarray | None = None
    ) -> np.ndarray:
        """The homography that best explains DIS's flow from a to b (started at ``start``) where a has
        no drops and the flow explains the change far better than no motion (``pair``: :meth:`_pair`,
        computed once for the caller too): drops the model missed stay put on the glass, and DIS's
        flow there says so only in part (its blocks straddle them), so its fit would follow them.
        If too few pixels are left (nothing moved), the fit is of all the clear scene."""
        # A fresh DIS for each pair: one that is reused carries state from its last pair, so the flow
        # would depend on the order of the calls (and, on threads, on their timing)
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(self.grays[a], self.grays[b], start)
        h, w = flow.shape[:2]
        first, second, still = pair
        followed = np.abs(_blurred(first - warp(second, flow)[0]))
        clear = self.trust[a] > 0.9
        ys, xs = np.mgrid[0:h:FIT_STEP, 0:w:FIT_STEP]
        keep = (clear & (_better(followed, still) > 0))[ys, xs]
        if keep.sum() < FIT_MIN_POINTS:
            keep = clear[ys, xs]
        ys, xs = ys[keep], xs[keep]
        if len(xs) >= FIT_MIN_POINTS:
            src = np.stack([xs, ys], axis=1).astype(np.float32)
            homography, _ = cv2.findHomography(src, src + flow[ys, xs], cv2.RANSAC, FIT_TOLERANCE)
            if homography is not None:
                return homography
        shift = np.eye(3)  # too little clear scene to fit: the median motion
        shift[:2, 2] = np.median(flow.reshape(-1, 2), axis=0)
        return shift

    def _compute(self, a: int, b: int) -> np.ndarray:
        h, w = self.grays[a].shape
        grid = np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))).reshape(-1, 1, 2)
        camera = self.camera(a, b)
        locked = bool(self.locked.intersection(_chain(a, b)))
        if not locked or abs(b - a) > 1:
            pair = self._pair(a, b)
            first, second, still = pair
            share = float(_explained(first, second, camera, still).mean())
            if not locked:  # a locked chain: DIS would follow the glass (or the thing) again
                start = cv2.perspectiveTransform(grid, camera) - grid
                found = self._fit(a, b, pair, np.ascontiguousarray(start.reshape(h, w, 2)))
                if _explained(first, second, found, still).mean() < share:
                    found = None
            else:
                found = _scene_motion(first, second, still, share, (_scale(camera),))
            if found is not None and _reach(found, (h, w), camera) <= DRIFT * w * abs(b - a):
                camera = found
        return (cv2.perspectiveTransform(grid, camera) - grid).reshape(h, w, 2)


def _reach(homography: np.ndarray, shape: tuple[int, int], than: np.ndarray | None = None) -> float:
    """Pixels the farthest corner of a frame of ``shape`` moves under ``homography`` (from where ``than`` takes it)."""
    h, w = shape
    corners = np.float32([[0, 0], [w, 0], [0, h], [w, h]]).reshape(-1, 1, 2)
    start = corners if than is None else cv2.perspectiveTransform(corners, than)
    return float(np.abs(cv2.perspectiveTransform(corners, homography) - start).max())


def _change(first: np.ndarray, second: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
    """How far ``first`` differs from ``second`` (warped by ``motion``, if given): the absolute
    difference, blurred first so that noise averages out and what moved stands out."""
    if motion is not None:
        h, w = first.shape
        flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
        second = cv2.warpPerspective(second, motion, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return np.abs(_blurred(first - second))


def _explained(first: np.ndarray, second: np.ndarray, motion: np.ndarray, still: np.ndarray) -> np.ndarray:
    """Where ``motion`` explains the change from ``first`` to ``second`` far better than zero
    motion (whose :func:`_change` is ``still``), 0 or 1 (float32). A camera's motion does in the
    scene between the drops, all over the frame; something that moves on its own in front of a
    still camera does only where it is."""
    return _better(_change(first, second, motion), still)


def _better(change: np.ndarray, than: np.ndarray) -> np.ndarray:
    """Where a motion whose :func:`_change` is ``change`` explains it far better than one whose
    change is ``than``, 0 or 1 (float32)."""
    return ((change < than / 2) & (than > LOCK_FLOOR)).astype(np.float32)


def _cells(where: np.ndarray) -> np.ndarray:
    """The share of each cell of the :data:`LOCK_GRID` over the frame that ``where`` marks."""
    return cv2.resize(where, LOCK_GRID, interpolation=cv2.INTER_AREA)


def _held(first: np.ndarray, second: np.ndarray, fit: np.ndarray, still: np.ndarray) -> bool:
    """Whether the camera held still and ``fit`` followed a thing crossing before it: no motion
    (whose :func:`_change` is ``still``) explains whole cells of the frame far better than the fit
    (:data:`HOLD_SHARE`), the still scene beside the thing. Drops on the glass do so in a cell
    only in part, since the scene between them moves with the camera."""
    moved = _change(first, second, fit)
    by_zero, by_fit = _cells(_better(still, moved)), _cells(_better(moved, still))
    return bool(np.mean((by_zero > LOCK_CELL) & (by_fit * HOLD_DOMINANCE < by_zero)) >= HOLD_SHARE)


def _scene_motion(
    first: np.ndarray, second: np.ndarray, still: np.ndarray, share: float, zooms: tuple[float, ...]
) -> np.ndarray | None:
    """Of the candidate motions (:func:`_zoomed_candidate`) at each of ``zooms`` and where a parabola
    through the best zoom's share and its neighbours' peaks, the one that explains (:func:`_explained`)
    the most of the change from ``first`` to ``second``, if that is more than ``share`` and all over
    the frame (:data:`LOCK_SPREAD`); else None."""
    found = [_zoomed_candidate(first, second, still, zoom) for zoom in zooms]
    shares = [float(where.mean()) for _, where in found]
    best = int(np.argmax(shares))
    if 0 < best < len(zooms) - 1:
        offset = _vertex(*shares[best - 1 : best + 2])
        if offset is not None:
            refined = _zoomed_candidate(first, second, still, zooms[best] + offset * (zooms[best + 1] - zooms[best]))
            if refined[1].mean() > shares[best]:
                found[best] = refined
    motion, where = found[best]
    if where.mean() <= share or np.mean(_cells(where) > LOCK_CELL) < LOCK_SPREAD:
        return None
    return motion


def _zoomed_candidate(
    first: np.ndarray, second: np.ndarray, still: np.ndarray, zoom: float
) -> tuple[np.ndarray, np.ndarray]:
    """The motion, a zoom about the frame's centre after a shift (:func:`_shifts_beyond_zero` of
    ``first`` against ``second`` zoomed back), that explains the most of the change, and where it does."""
    h, w = first.shape
    scaling = np.array([[zoom, 0, (w - 1) / 2 * (1 - zoom)], [0, zoom, (h - 1) / 2 * (1 - zoom)], [0, 0, 1]])
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    back = (
        second
        if zoom == 1
        else cv2.warpPerspective(second, scaling, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    )
    motions = [scaling @ shift for shift in _shifts_beyond_zero(first, back, still)]
    explained = [_explained(first, second, motion, still) for motion in motions]
    best = int(np.argmax([where.mean() for where in explained]))  # a tie: the highest peak
    return motions[best], explained[best]


def _scale(homography: np.ndarray) -> float:
    """The zoom of a homography: the square root of its linear part's determinant."""
    return float(np.sqrt(abs(np.linalg.det(homography[:2, :2]))))


def _shifts_beyond_zero(first: np.ndarray, second: np.ndarray, still: np.ndarray) -> list[np.ndarray]:
    """3×3 translations of ``second`` against ``first``: candidates for the scene's motion.

    They are the highest peaks (:func:`_peaks`) of the correlation of what changed between the
    frames (``still``, their :func:`_change`): the glass, where nothing changed, is weighted out.
    The correlation is whitened fully (phase correlation, where sharp detail counts) and in part
    (where smooth scenes count too): either may find the glass's own pattern instead, whose drops
    of one size repeat at their width.
    """
    changed = np.clip(still / LOCK_FLOOR - 0.5, 0.0, 1.0)
    window = cv2.createHanningWindow(first.shape[::-1], cv2.CV_32F) * _blurred(changed)
    spectra = [np.fft.rfft2((image - image.mean()) * window) for image in (first, second)]
    cross = np.conj(spectra[0]) * spectra[1]
    surfaces = [np.fft.irfft2(cross / (np.abs(cross) ** power + 1e-6), s=first.shape) for power in WHITENING]
    return [shift for surface in surfaces for shift in _peaks(np.fft.fftshift(surface))]


def _peaks(surface: np.ndarray) -> list[np.ndarray]:
    """The :data:`PEAKS` highest peaks of a correlation ``surface`` (zero shift at its centre) beyond
    :data:`PEAK_EXCLUDE` pixels of zero and of each other, as 3×3 translations to a fraction of a pixel."""
    centre = np.array(surface.shape) // 2
    left_out = np.zeros(surface.shape, bool)
    peak, shifts = centre, []
    for _ in range(PEAKS):
        top, left = np.maximum(peak - PEAK_EXCLUDE, 0)
        left_out[top : peak[0] + PEAK_EXCLUDE + 1, left : peak[1] + PEAK_EXCLUDE + 1] = True
        peak = np.array(np.unravel_index(np.argmax(np.where(left_out, -np.inf, surface)), surface.shape))
        shift = np.eye(3)
        shift[1::-1, 2] = _subpixel(surface, peak) - centre  # (y, x) to (x, y)
        shifts.append(shift)
    return shifts


def _subpixel(surface: np.ndarray, peak: np.ndarray) -> np.ndarray:
    """``peak`` (y, x) of ``surface`` refined by a parabola through it and its neighbours on each axis."""
    refined = peak.astype(np.float64)
    for axis in (0, 1):
        if 0 < peak[axis] < surface.shape[axis] - 1:
            step = np.eye(2, dtype=int)[axis]
            offset = _vertex(surface[tuple(peak - step)], surface[tuple(peak)], surface[tuple(peak + step)])
            refined[axis] += offset or 0.0
    return refined


def _vertex(before: float, at: float, after: float) -> float | None:
    """Where, in steps from the middle, a parabola through three equally spaced values peaks; None if it does not."""
    curvature = before - 2 * at + after
    return 0.5 * (before - after) / curvature if curvature < 0 else None


def _chain(a: int, b: int) -> list[tuple[int, int]]:
    """The consecutive frame pairs from a to b, either way: the camera steps a's motion to b chains."""
    direction = 1 if b > a else -1
    return [(t, t + direction) for t in range(a, b, direction)]


def _trust(drops: np.ndarray) -> np.ndarray:
    """How far the flow at each pixel can be believed: low on and just around drops."""
    near = cv2.dilate(drops.astype(np.float32), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (DROP_MARGIN,) * 2))
    return np.clip(1.0 - 2.0 * near, 0.0, 1.0)


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


def consistency(flows: FlowField, a: int, b: int) -> np.ndarray:
    """0…1 per pixel of frame a (flow resolution): does b's flow lead back, and does x + F(x) lie inside b?"""
    forward = flows.flow(a, b)
    backward, inside = warp(flows.flow(b, a), forward)
    error = np.sqrt(_sum_of_squares(forward + backward))
    return np.exp(-((error / CONSISTENCY) ** 2)) * inside


def agreement(flows: FlowField, a: int, b: int, unstuck: np.ndarray | None = None) -> np.ndarray:
    """0…1 per pixel of frame a (flow resolution): does frame b, warped onto a, look like a around here?

    The luma difference where both frames are clear, averaged over a neighbourhood the size of a
    large drop, so a drop's pixels are judged by their surroundings. A homography is wrong where
    the scene has depth (parallax) or moves on its own, and forward-backward consistency of two
    homographies cannot see it; this can. ``unstuck`` (flow resolution, :func:`_unstuck`): how far
    a's pixels are scene by the drops that only the neighbours found.
    """
    seen, _ = warp(flows.grays[b].astype(np.float32), flows.flow(a, b))
    clear = flows.trust[a] * warp(flows.trust[b], flows.flow(a, b))[0]
    if unstuck is not None:
        clear *= unstuck
    difference = np.abs(flows.grays[a].astype(np.float32) - seen)
    sigma = AGREEMENT_REACH * flows.grays[a].shape[1]
    support = _wide_blur(clear, sigma)
    local = _wide_blur(difference * clear, sigma) / np.maximum(support, 1e-4)
    overall = float((difference * clear).sum() / clear.sum()) if clear.sum() > 0 else np.inf
    local = np.where(support > 1e-4, local, overall)  # beyond the blur's reach: the whole frame's figure
    return np.exp(-((local / AGREEMENT) ** 2)).astype(np.float32)


def _wide_blur(plane: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of ``sigma`` pixels, done on ``plane`` shrunk to where the blur is
    :data:`WIDE_BLUR` pixels wide and scaled back up: a blur that wide keeps nothing the
    shrinking loses (0.7 % of the range at most, on a random 0/1 plane), and at 640 px wide the
    19-px blur costs a fourteenth (0.4 ms instead of 5.5)."""
    shrink = int(sigma // WIDE_BLUR)
    if shrink < 2:
        return cv2.GaussianBlur(plane, (0, 0), sigma)
    h, w = plane.shape
    small = cv2.resize(plane, (round(w / shrink), round(h / shrink)), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / shrink), (w, h), interpolation=cv2.INTER_LINEAR)


def _unstuck(stuck: np.ndarray) -> np.ndarray:
    """0…1: how far each pixel is scene by a :func:`stuck_map`: not stuck, nor on the blurred rim
    around a wide stuck drop (one a disc :data:`STUCK_BLOB` of the width wide fits into), which
    the map misses; judged by that rim, no neighbour would lend a wide drop the scene it saw
    behind it."""
    size = max(3, round(STUCK_BLOB * stuck.shape[1]) | 1)
    blobs = cv2.morphologyEx(stuck, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    return (1.0 - stuck) * _trust(blobs)


class Neighbour(NamedTuple):
    """A neighbour frame as the current frame sees it.

    The image is at the frame's size; its weights and the statistics that find stuck drops are
    at flow resolution (they are smooth anyway, and a 720p frame's cost a quarter as much).
    """

    seen: np.ndarray
    """The neighbour warped onto the current frame (H×W×3, in its own dtype rather than float32: less memory)."""
    clear: np.ndarray
    """0…1: it saw the scene there clear (its drop map) and the flow leads back (forward-backward;
    flow resolution)."""
    mismatch: np.ndarray
    """Mean squared colour difference from the current frame, blurred (flow resolution)."""
    still: np.ndarray
    """0…1: how much better it matches the current frame unwarped than warped (what stays put on
    the glass matches unwarped), times how far the scene moved in between (up to :data:`MOVED_FULL`)."""
    luma: np.ndarray
    """Luma of ``seen`` (flow resolution)."""


def _levels(image: np.ndarray) -> np.ndarray:
    """A uint8/uint16 frame as float32 in 8-bit levels: fusion's thresholds hold for both."""
    return image.astype(np.float32) * np.float32(255 / np.iinfo(image.dtype).max)


def _resized(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``image`` at ``shape``'s height and width (area-averaged down, linear up); as it is if it has that size."""
    h, w = shape[:2]
    if image.shape[:2] == (h, w):
        return image
    shrink = w < image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _blurred(plane: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(plane, (0, 0), MISMATCH_BLUR)


def _sum_of_squares(vectors: np.ndarray) -> np.ndarray:
    """The sum of squares over the last axis, the same bits that ``np.linalg.norm`` and ``np.mean``
    sum, in a third of their time for a few channels (they reduce each pixel's short axis apart)."""
    return np.einsum("...c,...c->...", vectors, vectors)


def _mean_square(difference: np.ndarray) -> np.ndarray:
    return _blurred(_sum_of_squares(difference) / difference.shape[2])


def _neighbour(
    own: np.ndarray,
    own_small: np.ndarray,
    current: int,
    other: int,
    frames: dict[int, np.ndarray],
    drops: dict[int, np.ndarray],
    flows: FlowField,
) -> Neighbour:
    """Frame ``other`` as frame ``current`` sees it (``own``: float32 in 8-bit levels, and at flow resolution)."""
    flow = flows.flow(current, other)
    forward = full_size(flow, *own.shape[:2])
    seen, _ = warp(frames[other], forward)
    covered, _ = warp(_resized(drops[other], flow.shape), flow)
    seen_small = _levels(_resized(seen, flow.shape))
    mismatch = _mean_square(own_small - seen_small)
    pixels = own.shape[1] / flow.shape[1]  # frame pixels per flow pixel
    moved = np.clip(np.sqrt(_sum_of_squares(flow)) * (pixels / MOVED_FULL), 0.0, 1.0)
    unwarped = _mean_square(own_small - _levels(_resized(frames[other], flow.shape)))
    still = moved * mismatch / (mismatch + unwarped + STILL_FLOOR**2)
    clear = (1.0 - covered) * consistency(flows, current, other)
    return Neighbour(seen, clear, mismatch, still, seen_small @ LUMA)


def stuck_map(neighbours: list[Neighbour], lumas: np.ndarray, typical: np.ndarray) -> np.ndarray:
    """Where the frame shows something that stays on the glass while the scene moves, 0…1 (float32,
    flow resolution).

    These are the drops the model left in place and did not see (its attention and its change
    are blind to them, so :func:`drop_map` is too): the frame differs there from most of its
    warped neighbours (all but :data:`STUCK_AGREEING` of them) by more than they differ among
    themselves (their ``lumas``, N×h×w, about the median ``typical``), and at least :data:`STILL_VOTES`
    neighbours that moved match it far better unwarped — the thing stayed at the same place in
    the frame. Something moving on its own matches neither way, so it stays. Something that
    moves with the camera (a car's bonnet, a burned-in timestamp) is stuck in this sense too:
    its inside stays, since every neighbour shows it there as well, but along its sharp edges
    the warped neighbours disagree with the frame and a fringe may appear (``find_missed=False``
    in :func:`fuse` turns this map off).
    """
    if len(neighbours) < max(2, STILL_VOTES):
        return np.zeros_like(neighbours[0].mismatch)
    rank = max(1, int(STUCK_AGREEING * len(neighbours)))
    mismatch = np.partition(np.stack([n.mismatch for n in neighbours]), rank, axis=0)[rank]
    deviation = np.median(np.abs(lumas - typical), axis=0)
    spread = _blurred(deviation)
    expected = STUCK_SPREAD**2 * spread * spread + STUCK_FLOOR**2
    outlier = np.clip(1.0 - expected / np.maximum(mismatch, 1e-6), 0.0, 1.0)
    stillness = np.partition(np.stack([n.still for n in neighbours]), -STILL_VOTES, axis=0)[-STILL_VOTES]
    return (outlier * _smooth_step(stillness, STILL_LOW, STILL_HIGH)).astype(np.float32)


def _holes_filled(stuck: np.ndarray) -> np.ndarray:
    """``stuck`` with its holes (:data:`STUCK_HOLE`) stuck too. A wide clear drop's inside is a
    smooth, minified view that looks the same a few pixels further on, so the near neighbours,
    which still show the drop there, match it and the map finds only the drop's rim."""
    h, w = stuck.shape
    _, labels, stats, _ = cv2.connectedComponentsWithStats((stuck < 0.5).astype(np.uint8), connectivity=4)
    left, top, width, height, area = stats.T
    enclosed = (left > 0) & (top > 0) & (left + width < w) & (top + height < h) & (area <= (STUCK_HOLE * w) ** 2)
    enclosed[0] = False  # label 0: the stuck pixels themselves
    return np.maximum(stuck, enclosed[labels].astype(np.float32))


def _median_where(values: np.ndarray, keep: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """The median over axis 0 of the ``values`` that ``keep`` marks; ``fallback`` where it marks none."""
    count = keep.sum(axis=0)[None]
    ordered = np.sort(np.where(keep, values, np.inf), axis=0)
    low = np.take_along_axis(ordered, np.maximum(count - 1, 0) // 2, axis=0)[0]
    high = np.take_along_axis(ordered, np.minimum(count // 2, len(values) - 1), axis=0)[0]
    return np.where(count[0] > 0, (low + high) / 2, fallback).astype(np.float32)


def fuse_frame(
    current: int,
    frames: dict[int, np.ndarray],
    drops: dict[int, np.ndarray],
    flows: FlowField,
    pool: Executor,
    find_missed: bool = True,
) -> np.ndarray:
    """Frame ``current`` with drop pixels taken from the neighbours in ``frames`` that saw them clear.

    Drops are where this frame's drop map (:func:`drop_map`) or, with ``find_missed``, the
    neighbours (:func:`stuck_map`, its holes filled: :func:`_holes_filled`) say so. There the
    frame's pixel moves towards the neighbours' consensus: their warped pixels weighted by how far
    each saw the spot clear, its flow holds and its look agrees with this frame's around there
    (:func:`agreement`, which leaves out the frame's stuck drops and the blurred rims of the wide
    ones), and by how close each is to the neighbours' median (a neighbour's own missed drop is
    outvoted). That median leaves out the neighbours whose warped pixel comes from their own drops
    or from where this frame has stuck drops: drops stay on the glass, so those neighbours show the
    same drop there, and the near frames of a slow pan would outvote the few that see behind a wide
    drop. The more weight the neighbours bring, the further it moves; elsewhere the output is the
    frame's own. The ``pool``'s threads compute the flows and the neighbours' warps.
    """
    image = frames[current]
    others = [other for other in frames if other != current]
    if not others or not (find_missed or drops[current].any()):
        return image
    flows.prepare([pair for other in others for pair in ((current, other), (other, current))], pool)
    own = _levels(image)
    own_small = _resized(own, flows.grays[current].shape)
    neighbours = list(pool.map(lambda other: _neighbour(own, own_small, current, other, frames, drops, flows), others))
    lumas = np.stack([n.luma for n in neighbours])
    typical = np.median(lumas, axis=0)
    stuck = _holes_filled(stuck_map(neighbours, lumas, typical)) if find_missed else np.zeros_like(typical)
    drop = np.maximum(drops[current], _resized(stuck, own.shape))
    if not drop.any():
        return image
    scene = _unstuck(stuck) if find_missed else None  # once: the same for every neighbour
    agrees = pool.map(lambda other: agreement(flows, current, other, scene), others)
    if find_missed:  # the consensus of the neighbours that see the scene where the frame has stuck drops
        behind = [n.clear * (1.0 - warp(stuck, flows.flow(current, other))[0]) for n, other in zip(neighbours, others)]
        typical = _median_where(lumas, np.stack(behind) > CONSENSUS_CLEAR, typical)
    total = np.zeros_like(own)
    support = np.zeros_like(drop)
    for n, agree in zip(neighbours, agrees):  # in the neighbours' order, whatever the threads' timing
        close = np.exp(-(((n.luma - typical) / CONSENSUS_TOLERANCE) ** 2))
        weight = _resized(n.clear * agree * close, own.shape)
        total += weight[..., None] * _levels(n.seen)
        support += weight
    consensus = total / np.maximum(support, 1e-6)[..., None]
    share = drop * support / (support + SUPPORT_HALF)
    fused = (own + share[..., None] * (consensus - own)) * np.float32(np.iinfo(image.dtype).max / 255)
    return np.clip(np.rint(fused), 0, np.iinfo(image.dtype).max).astype(image.dtype)


def fuse(
    restorations: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    radius: int = DEFAULT_RADIUS,
    workers: int | None = None,
    find_missed: bool = True,
) -> Iterator[np.ndarray]:
    """Fused frames, one per input, in order, from (input frame, derained frame, attention map) triples.

    Holds at most 2·radius + :data:`FRAMES_IN_FLIGHT` frames: each frame is released once its
    farthest neighbour arrived and the frames before it are out. ``radius`` 0 returns the derained
    frames unchanged. ``workers`` threads (default: the CPU count, at most :data:`MAX_WORKERS`)
    share the work of up to as many frames at once (at most :data:`FRAMES_IN_FLIGHT`); the output
    is the same for any number. ``find_missed`` also fuses where the neighbours show drops the
    model missed (:func:`stuck_map`); without it, only where the model saw drops.
    """
    if radius < 0:
        raise ValueError("the fusion radius must be ≥ 0")
    if radius == 0:
        yield from (image for _, image, _ in restorations)
        return
    workers = workers or min(MAX_WORKERS, os.cpu_count() or 1)
    in_flight = min(FRAMES_IN_FLIGHT, workers)
    with (
        ThreadPoolExecutor(workers, "derain-fuse") as pool,
        ThreadPoolExecutor(in_flight, "derain-fuse-frame") as frame_pool,
    ):
        yield from _fuse(restorations, radius, pool, frame_pool, in_flight, find_missed)


def _fuse(
    restorations: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    radius: int,
    pool: Executor,
    frame_pool: Executor,
    in_flight: int,
    find_missed: bool,
) -> Iterator[np.ndarray]:
    frames: dict[int, np.ndarray] = {}
    drops: dict[int, np.ndarray] = {}
    flows = FlowField()
    ready: deque[int] = deque()  # frames whose neighbours have all arrived, not yet started
    running: deque[tuple[int, Future[np.ndarray]]] = deque()
    offsets = neighbour_offsets(radius)

    def start(current: int) -> None:
        near = {i: frames[i] for i in [current, *(current + k for k in offsets)] if i in frames}
        near_drops = {i: drops[i] for i in near}
        running.append((current, frame_pool.submit(fuse_frame, current, near, near_drops, flows, pool, find_missed)))

    def finish() -> np.ndarray:
        """The oldest running frame's output; what no later frame needs is released."""
        current, future = running.popleft()
        fused = future.result()
        oldest = current - radius + 1  # every later frame's farthest neighbour back
        for store in (frames, drops):
            for i in [i for i in store if i < oldest]:
                del store[i]
        flows.forget_before(oldest)
        return fused

    try:
        for index, (rainy, image, att) in enumerate(restorations):
            frames[index], drops[index] = image, drop_map(rainy, image, att)
            flows.add(index, luma8(image), drops[index])
            ready.append(index)
            if ready[0] + radius <= index:
                start(ready.popleft())
            if len(running) >= in_flight:
                yield finish()
        while ready or running:
            while ready and len(running) < in_flight:
                start(ready.popleft())
            yield finish()
    finally:
        for _, future in running:  # a consumer that stops early: nothing left running on its frames
            future.cancel()
