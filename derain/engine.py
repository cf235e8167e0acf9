"""The inference engine: ``Derainer(...).clean(image)``.

Picks the device and numeric precision, brings large photos to the size the weights learned
drops at (and the change back up), pads to the network's size multiple, tiles what is still
large (bounded memory at any size), converts to the channel order the weights expect, and
returns an array of the caller's shape and dtype.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .allocator import keep_freed_memory
from .bokeh import remove_bokeh
from .colour import cap_colour
from .dense import combine_changes, dense_region, density_weights, enlarge, reduce_change
from .focused import remove_focused_drops
from .fusion import DEFAULT_RADIUS
from .lights import light_sources
from .model import SIZE_MULTIPLE, Generator
from .postops import fuse_for_cpu
from .tiling import Tile, plan_tiles
from .weights import load_weights

Pixels = TypeVar("Pixels", np.ndarray, torch.Tensor)  # pixels on the host or on the device

#: Overlap between neighbouring tiles, in pixels. The blend ignores the outer quarter of each
#: overlap, so 128 keeps ≥ 32 px of real context at every tile edge.
DEFAULT_OVERLAP = 128
#: Tile area on the CPU: activations cost ~1.8 kB per pixel, so ~1.8 GB at this budget, which
#: keeps a 24-megapixel photo at about 3 GiB in all (3.3 GB peak RSS measured).
CPU_TILE_PIXELS = 1_000_000
#: Peak activation bytes per pixel, measured, used to size tiles from free GPU memory.
BYTES_PER_PIXEL = {"fp32": 1900, "bf16": 1900, "fp16": 1000}
#: Fraction of free GPU memory a batch of tiles may use.
GPU_MEMORY_FRACTION = 0.5
MAX_TILE_BATCH = 8
MIN_TILE = 64
#: Bounds of ``steps``: the ConvLSTM's weights are shared across steps, so any count runs.
MAX_STEPS = 32
#: The attention gate (see :func:`gate_weights`): blur (px) that widens the final attention map
#: over each drop's soft edge, and the map level from which the network's output is taken in full.
GATE_SIGMA = 32.0
GATE_LEVEL = 0.2
#: Short side (px) at which the network sees a photo by default. The weights learned drops at
#: the size they have in 720×480 frames (renders and the Raindrop dataset alike); in a 12 MP
#: photo the same drops are six times larger, far beyond what the network repaints.
WORKING_SIZE = 480
MIN_WORKING_SIZE = 32
FOCUS = ("scene", "glass")
"""Where the camera focused: ``Derainer``'s ``focus`` values (:mod:`derain.focused`)."""


class Precision(str, Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


def pick_device(name: str = "auto") -> torch.device:
    """'auto' → CUDA, then MPS, then CPU; otherwise the named device, checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("CUDA was requested but is not available on this machine (try --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"no CUDA device {device.index}: this machine has {torch.cuda.device_count()}")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("MPS was requested but is not available on this machine (try --device cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device '{name}' (use auto, cpu, cuda, cuda:N or mps)")
    return device


def cpu_supports_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 / AMX); emulated bf16 is slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_precision(name: str, device: torch.device, bf16_native: bool | None = None) -> Precision:
    """'auto' → fp16 on GPUs, bf16 on CPUs that support it natively, else fp32. Never fp16 on CPU."""
    if name == "auto":
        if device.type in ("cuda", "mps"):
            return Precision.FP16
        native = cpu_supports_bf16() if bf16_native is None else bf16_native
        return Precision.BF16 if native else Precision.FP32
    try:
        precision = Precision(name)
    except ValueError:
        raise ValueError(f"unknown precision '{name}' (use auto, fp32, bf16 or fp16)") from None
    if precision is Precision.FP16 and device.type == "cpu":
        raise ValueError("fp16 is not supported on the CPU (use bf16 or fp32)")
    return precision


@dataclass
class Restoration:
    image: np.ndarray
    """The derained image, same shape and dtype as the input."""
    attention: list[np.ndarray] | None
    """A_1 … A_N as float32 H×W in [0, 1], when asked for."""


class Derainer:
    """Removes adherent raindrops from photos with the Attentive GAN generator.

    >>> derainer = Derainer()                      # shipped weights, best device and precision
    >>> clean = derainer.clean(rgb)                # H×W×3 uint8 or uint16 in, same out
    >>> maps = derainer.attention(rgb)             # N float32 maps in [0, 1]

    ``weights``: None for the shipped default, a shipped name, or a path (ours, a training
    checkpoint, or the official ``gen.pkl``). ``tile``: "auto" bounds memory, 0 never tiles,
    N forces N-pixel tiles. ``tile_overlap``: pixels shared by neighbouring tiles. ``steps``:
    attentive-recurrent steps to run instead of the weights' own count (fewer is faster).
    ``working_size``: a photo whose short side is larger is derained at this short side and the
    change scaled back up onto it (:func:`_scale_back`); None runs the network at full size.
    ``gate``: blend the output with the input by the final attention map (:func:`gate_weights`),
    so pixels the model saw no drop in, and light sources it would paint over (:mod:`derain.lights`),
    stay as they were; False gives the network's raw output;
    None does what the weights were validated with (on for the shipped ones, off for ``gen.pkl``).
    ``dense_pass``: where the gate's map finds drops crowded together, derain that region again at
    twice the size and keep the larger change (:mod:`derain.dense`); it needs the gate, and None
    follows it. Photos without dense drops cost nothing more; a photo covered in them, up to 6×.
    ``compile``: run the generator through ``torch.compile`` on NHWC tensors (CUDA only), which
    fuses the ConvLSTM's element-wise work: on an H200, 30 MP/s for 720×480 frames in batches and
    33 MP/s for one 1080p photo, after 20–30 s of compiling at the first size and again once
    sizes vary. For video and large batches, not for one photo. ``focus``: where the camera
    focused; "glass" (drops sharp, the scene behind them blurred) replaces the drops the network
    leaves with the out-of-focus scene around them (:mod:`derain.focused`), softening scene detail
    finer than a drop; "scene", the default, runs the network alone. ``bokeh``: fill in the bright
    discs of one size that drops lit at night make when the scene is in focus (:mod:`derain.bokeh`),
    which fills in other bright round things of that size too.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str = "auto",
        precision: str = "auto",
        tile: int | str = "auto",
        tile_overlap: int = DEFAULT_OVERLAP,
        steps: int | None = None,
        gate: bool | None = None,
        working_size: int | None = WORKING_SIZE,
        dense_pass: bool | None = None,
        compile: bool = False,
        focus: str = "scene",
        bokeh: bool = False,
    ) -> None:
        for name, value in (("steps", steps), ("tile_overlap", tile_overlap), ("working_size", working_size)):
            _check_whole(name, value, none_ok=name != "tile_overlap")
        for name, value in (("gate", gate), ("dense_pass", dense_pass)):
            if value not in (None, True, False):
                raise TypeError(f"{name} must be True, False or None (the default)")
        for name, value in (("compile", compile), ("bokeh", bokeh)):
            if value not in (True, False):
                raise TypeError(f"{name} must be True or False")
        if focus not in FOCUS:
            raise ValueError(f"focus must be one of {', '.join(FOCUS)}, not {focus!r}")
        self.focus, self.bokeh = focus, bokeh
        self.device = pick_device("auto" if device is None else device)
        self.precision = pick_precision("auto" if precision is None else precision, self.device)
        if compile and self.device.type != "cuda":
            raise ValueError(
                f"compiling the model pays on CUDA GPUs only, not on {self.device.type} (on the CPU it runs no "
                "faster): leave out --compile"
            )
        if compile and importlib.util.find_spec("triton") is None:
            raise ValueError("compiling the model on CUDA needs Triton: pip install triton, or leave out --compile")
        if steps is not None and not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, not {steps}")
        if self.device.type == "cpu":
            keep_freed_memory()
            if "OMP_NUM_THREADS" not in os.environ:  # else the count its user chose (a shared machine) stands
                visible = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
                torch.set_num_threads(len(visible))
        self.tile = _parse_tile(tile)
        if tile_overlap < 0:
            raise ValueError("tile overlap must be ≥ 0")
        self.tile_overlap = tile_overlap
        if working_size is not None and working_size < MIN_WORKING_SIZE:
            raise ValueError(f"working size must be at least {MIN_WORKING_SIZE} pixels, not {working_size}")
        self.working_size = working_size
        model, self.weights_info = load_weights(weights)  # config, channel order, provenance
        self.gate = self.weights_info.gate if gate is None else gate
        if dense_pass and not self.gate:
            raise ValueError("the dense pass needs the attention gate: turn the gate on, or the dense pass off")
        self.dense_pass = self.gate if dense_pass is None else dense_pass
        if steps is not None:
            model.set_steps(steps)
        # NHWC tensors: oneDNN's convolutions on the CPU are fastest on them, and so is the compiled
        # model on CUDA (the network alone on 8 frames of 720×480: 3.1× eager NCHW on an H200,
        # scripts/gpu_compile.py). Eager CUDA stays NCHW: one 720×480 photo took 0.063 s NHWC,
        # 0.023 s NCHW (README, Performance)
        self.channels_last = self.device.type == "cpu" or compile
        self.compiled = compile
        self.model = self._prepare(model)
        self._network = self.model
        if compile:
            # dynamic=None: one static graph for the first size, one dynamic graph once sizes vary
            # (the last, smaller batch of a video; the dense pass's regions), not a compilation each
            self._network = torch.compile(self.model, dynamic=None)
            logging.getLogger("torch.utils._sympy.interp").setLevel(logging.ERROR)  # dynamic shapes' noise

    @property
    def steps(self) -> int:
        return self.model.config.steps

    def _prepare(self, model: Generator) -> Generator:
        model = model.to(self.device).eval().requires_grad_(False)
        if self.precision is Precision.FP16:
            model = model.half()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.device.type == "cpu" and self.precision is not Precision.FP16:
            fuse_for_cpu(model, torch.bfloat16 if self.precision is Precision.BF16 else torch.float32)
        return model

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision is Precision.BF16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- public API -------------------------------------------------------------------------

    def clean(self, image: np.ndarray) -> np.ndarray:
        """The image without raindrops: H×W×3 RGB uint8/uint16 in, same shape and dtype out."""
        return self.run(image).image

    def attention(self, image: np.ndarray) -> list[np.ndarray]:
        """The N raindrop attention maps, float32 H×W clamped to [0, 1] (later = more refined)."""
        return self._run(image, with_attention=True, dense_pass=False).attention  # the first pass's maps in any case

    def clean_frames(
        self, frames: Iterable[np.ndarray], fuse: bool = True, window: int = DEFAULT_RADIUS, find_missed: bool = True
    ) -> Iterator[np.ndarray]:
        """Clean a stream of video frames (H×W×3 RGB), one out per frame in, in order.

        With ``fuse``, pixels a drop hides are taken from frames up to ``window`` away on each
        side where those saw them clearly (see :mod:`derain.fusion`); only a window of frames is held.
        ``find_missed=False`` fuses only where the model saw drops. Each frame is copied as it comes
        (a camera may refill one buffer), and fusion starts afresh where the frame size changes.
        """
        from .frames import derain_frames  # frames builds on this module

        return derain_frames(self, frames, fuse, window, find_missed=find_missed)

    def run(self, image: np.ndarray, with_attention: bool = False) -> Restoration:
        """Clean an image and, optionally, return the attention maps from the same pass."""
        return self._run(image, with_attention, self.dense_pass)

    def batch_size(self, height: int, width: int) -> int:
        """Images of this size that share a forward pass: 1 on the CPU or when they need tiles,
        else as many as the free memory allows (up to :data:`MAX_TILE_BATCH`)."""
        if self.device.type == "cpu" or self._needs_tiles(height, width):
            return 1
        ph, pw = self._network_shape(height, width)
        return max(1, min(MAX_TILE_BATCH, self._pixel_budget() // (ph * pw)))

    def run_batch(self, images: Iterable[np.ndarray], all_maps: bool = True) -> list[Restoration]:
        """:meth:`run` with attention on each image, in shared forward passes of :meth:`batch_size`
        images when they share a size and dtype and need no tiles (video frames). Same results,
        image by image. ``all_maps=False`` returns the final map alone (all video needs): on a GPU
        the others never leave it."""
        images = list(images)
        scales = [_check_image(image) for image in images]  # every one, before any work
        shapes = {(i.shape, i.dtype) for i in images}
        if len(images) <= 1 or len(shapes) > 1 or self._needs_tiles(*images[0].shape[:2]):
            return [self._run(i, True, self.dense_pass, all_maps) for i in images]
        per_pass = self.batch_size(*images[0].shape[:2])  # memory for one such pass, not for the whole list
        chunks = (images[k : k + per_pass] for k in range(0, len(images), per_pass))
        return [r for chunk in chunks for r in self._run_pass(chunk, scales[0], all_maps)]

    # --- internals --------------------------------------------------------------------------

    def _run_pass(self, images: list[np.ndarray], scale: float, all_maps: bool) -> list[Restoration]:
        """:meth:`run_batch` of images of one size and dtype that need no tiles, in one forward pass."""
        size = self._working_shape(*images[0].shape[:2])
        small = images if size is None else [_resize(i, size) for i in images]
        results = [
            self._after_network(i, scale, r, True, self.dense_pass)
            for i, r in zip(small, self._run_same_size(small, scale, all_maps))
        ]
        return results if size is None else [_scale_back(*args) for args in zip(images, small, results)]

    def _run(self, image: np.ndarray, with_attention: bool, dense_pass: bool, all_maps: bool = True) -> Restoration:
        """:meth:`run`, with or without the dense pass, with all maps or the final one."""
        scale = _check_image(image)
        size = self._working_shape(*image.shape[:2])
        small = image if size is None else _resize(image, size)
        # The dense pass needs the final map alone: on a GPU the others stay there
        result = self._run_one(small, scale, with_attention or dense_pass, with_attention and all_maps)
        result = self._after_network(small, scale, result, with_attention, dense_pass)
        return result if size is None else _scale_back(image, small, result)

    def _run_one(self, image: np.ndarray, scale: float, with_attention: bool, all_maps: bool = True) -> Restoration:
        """:meth:`run` at the image's own size: whole, or in tiles (smaller ones if a GPU runs out)."""
        padded = self._model_order(_pad_to_multiple(image, SIZE_MULTIPLE))
        tile = self._tile_size(*padded.shape[:2])
        while True:
            try:
                if tile >= max(padded.shape[:2]):
                    return self._run_whole(padded[None], scale, image, with_attention, all_maps)[0]
                return self._run_tiled(padded, scale, tile, image, with_attention, all_maps)
            except torch.OutOfMemoryError:
                if self.device.type != "cuda" or tile <= MIN_TILE:
                    raise
                torch.cuda.empty_cache()
                tile = max(MIN_TILE, (min(tile, max(padded.shape[:2])) // 2) // SIZE_MULTIPLE * SIZE_MULTIPLE)

    def _dense_pass(self, image: np.ndarray, scale: float, result: Restoration, with_attention: bool) -> Restoration:
        """``result`` (of ``image`` at the network's size, with its maps) with the dense drops that
        a second pass at 2× removes (:mod:`derain.dense`); its maps are the first pass's, if asked for.
        A photo the network sees with a short side over :data:`WORKING_SIZE` (``working_size=None``
        or a larger one) has drops large enough already, and is left as it is."""
        maps = result.attention if with_attention else None
        if min(image.shape[:2]) > WORKING_SIZE:
            return Restoration(result.image, maps)
        weights = density_weights(result.attention[-1])
        region = dense_region(weights)
        if region is None:
            return Restoration(result.image, maps)
        # A copy where torch cannot share the caller's array: a view with negative strides (BGR
        # flipped to RGB) or a read-only one (Pillow's pixels through np.asarray)
        image = np.require(image, requirements=("C", "W"))
        # Lamps as the whole frame tells them (a crop of a night shot may look like day)
        weights *= 1.0 - light_sources(torch.from_numpy(image).permute(2, 0, 1).float().div_(scale)).numpy()
        crop = image[region].astype(np.float32)
        big = enlarge(image[region])
        second = self._run_one(big, scale, with_attention=False).image.astype(np.float32) - big
        change = combine_changes(result.image[region] - crop, reduce_change(second, crop.shape[:2]), weights[region])
        pixels = result.image.copy()
        pixels[region] = np.clip(np.rint(crop + change), 0.0, float(np.iinfo(image.dtype).max))
        return Restoration(pixels, maps)

    def _after_network(
        self, image: np.ndarray, scale: float, result: Restoration, with_attention: bool, dense_pass: bool
    ) -> Restoration:
        """What follows the network's pass over ``image`` (at the working size): the dense pass, if
        asked for, then, where the camera focused on the glass, the drops :mod:`derain.focused` finds,
        and, if asked for, the bokeh of drops lit at night (:mod:`derain.bokeh`)."""
        if dense_pass:
            result = self._dense_pass(image, scale, result, with_attention)
        if self.focus == "glass":
            result = Restoration(remove_focused_drops(result.image), result.attention)
        if self.bokeh:
            result = Restoration(remove_bokeh(result.image), result.attention)
        return result

    def _run_same_size(self, images: list[np.ndarray], scale: float, all_maps: bool) -> list[Restoration]:
        """:meth:`run_batch` at the images' own size."""
        batch = self._model_order(np.stack([_pad_to_multiple(i, SIZE_MULTIPLE) for i in images]))
        try:
            return self._run_whole(batch, scale, images[0], with_attention=True, all_maps=all_maps)
        except torch.OutOfMemoryError:  # a busy GPU: image by image instead (tiled if need be)
            torch.cuda.empty_cache()
            return [self._run_one(i, scale, True, all_maps) for i in images]

    def _network_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the network sees an image of this size at: its working size, padded."""
        height, width = self._working_shape(height, width) or (height, width)
        return height + -height % SIZE_MULTIPLE, width + -width % SIZE_MULTIPLE

    def _needs_tiles(self, height: int, width: int) -> bool:
        """Whether an image of this size is derained in tiles."""
        ph, pw = self._network_shape(height, width)
        return self._tile_size(ph, pw) < max(ph, pw)

    def _working_shape(self, height: int, width: int) -> tuple[int, int] | None:
        """(height, width) to derain an image of this size at, or None for its own size."""
        if self.working_size is None or min(height, width) <= self.working_size:
            return None
        factor = self.working_size / min(height, width)
        return max(1, round(height * factor)), max(1, round(width * factor))

    def _model_order(self, pixels: Pixels) -> Pixels:
        """RGB pixels (…×H×W×3, an array or a tensor) in the channel order the weights were trained
        on, or such pixels back in RGB: the swap is its own inverse."""
        if self.weights_info.channel_order != "BGR":
            return pixels
        return pixels.flip(-1) if isinstance(pixels, torch.Tensor) else pixels[..., ::-1]

    def _run_whole(
        self, batch: np.ndarray, scale: float, like: np.ndarray, with_attention: bool, all_maps: bool = True
    ) -> list[Restoration]:
        """Untiled: a batch of whole padded images (N×H×W×3 integers) through one forward pass,
        gated and rounded on the device, so only the finished pixels (and the maps asked for) come back."""
        x = self._to_device(batch, scale)
        image, maps = self._infer(x)
        return self._finish(image, x, maps if with_attention and all_maps else maps[-1:], like, with_attention)

    def _run_tiled(
        self, padded: np.ndarray, scale: float, tile: int, like: np.ndarray, with_attention: bool, all_maps: bool
    ) -> Restoration:
        """Tiles stitched on the host, then gated and rounded there, as a whole image."""
        out, maps = self._run_tiles(padded, scale, tile, with_attention and all_maps)
        x = self._to_device(padded[None], scale, torch.device("cpu")) if self.gate else None
        image = torch.from_numpy(out).permute(2, 0, 1)[None]
        return self._finish(image, x, [torch.from_numpy(m)[None] for m in maps], like, with_attention)[0]

    @torch.inference_mode()
    def _finish(
        self,
        image: torch.Tensor,
        x: torch.Tensor | None,
        maps: list[torch.Tensor],
        like: np.ndarray,
        with_attention: bool,
    ) -> list[Restoration]:
        """Gate (if on) the model's float output (N×3×H×W, on its device) against its input ``x``
        (needed only then) by the last of ``maps`` (N×H×W), crop it to ``like``'s size, put it
        back in RGB, round it to ``like``'s dtype; the maps come back clipped to [0, 1] when asked for."""
        if self.gate:
            apply_gate(image, x, maps[-1])
        height, width = like.shape[:2]
        scale = float(np.iinfo(like.dtype).max)
        pixels = image[..., :height, :width].permute(0, 2, 3, 1).mul(scale).round_().clamp_(0.0, scale)
        # In RGB and laid out as N×H×W×3 where they were computed (a GPU transposes 8 1080p frames
        # in far less time than the host would), so only the copy back remains
        pixels = self._model_order(pixels).to(torch.uint8 if scale == 255 else torch.int32).contiguous().cpu().numpy()
        pixels = pixels.astype(like.dtype, copy=False)
        kept = [m[:, :height, :width].clamp(0.0, 1.0).cpu().numpy() for m in maps] if with_attention else None
        return [Restoration(pixels[k], None if kept is None else [m[k] for m in kept]) for k in range(len(pixels))]

    def _tile_size(self, height: int, width: int) -> int:
        """Edge of the square tiles to use for an image of this (padded) size."""
        if self.tile == 0:
            return max(height, width)
        if self.tile is not None:
            return self.tile
        budget = self._pixel_budget()
        if height * width <= budget:
            return max(height, width)
        return max(MIN_TILE, int(math.sqrt(budget)) // SIZE_MULTIPLE * SIZE_MULTIPLE)

    def _pixel_budget(self) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * GPU_MEMORY_FRACTION / BYTES_PER_PIXEL[self.precision.value])
        return CPU_TILE_PIXELS

    def _batches(self, tiles: list[Tile]) -> Iterator[list[Tile]]:
        """Groups of equal-size tiles that share one forward pass (on GPUs; one at a time on CPU)."""
        per_batch = 1
        if self.device.type != "cpu" and tiles:
            area = tiles[0].rows.size * tiles[0].cols.size
            per_batch = max(1, min(MAX_TILE_BATCH, self._pixel_budget() // area))
        for i in range(0, len(tiles), per_batch):
            yield tiles[i : i + per_batch]

    def _run_tiles(
        self, image: np.ndarray, scale: float, tile: int, all_maps: bool
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        height, width = image.shape[:2]
        tiles = plan_tiles(height, width, tile, self.tile_overlap, SIZE_MULTIPLE)
        out = np.zeros((height, width, 3), np.float32)
        kept = self.steps if all_maps else 1  # the final map always: the gate needs it
        maps = [np.zeros((height, width), np.float32) for _ in range(kept)]
        for group in self._batches(tiles):
            batch = np.stack([image[t.region] for t in group])
            result = self._forward(batch, scale, kept)
            for k, t in enumerate(group):
                w = t.weight
                out[t.region] += result.image[k] * w[..., None]
                for acc, m in zip(maps, result.attention):
                    acc[t.region] += m[k] * w
        return out, maps

    def _to_device(self, batch: np.ndarray, scale: float, device: torch.device | None = None) -> torch.Tensor:
        """N×H×W×3 integer pixels as an N×3×H×W float32 tensor in [0, 1] on the device."""
        x = torch.from_numpy(np.require(batch, requirements=("C", "W"))).to(device or self.device).permute(0, 3, 1, 2)
        return x.float().div_(scale)

    def _infer(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The generator on ``x`` (N×3×H×W float32 in [0, 1]): the float32 image (N×3×H×W) and
        maps (N×H×W), on the device."""
        if self.precision is Precision.FP16:
            x = x.half()
        if self.device.type == "cpu":
            torch.set_flush_denormal(True)  # a per-thread flag: set on whichever thread runs the model
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast():
            out = self._network(x, side_outputs=False)
        return out.image.float(), [a.float()[:, 0] for a in out.attention]

    def _forward(self, batch: np.ndarray, scale: float, kept: int) -> Restoration:
        """Run the generator on an N×H×W×3 integer batch; float32 N×H×W×3 and the last ``kept``
        N×H×W maps out (the others stay on the device)."""
        image, maps = self._infer(self._to_device(batch, scale))
        return Restoration(image.permute(0, 2, 3, 1).cpu().numpy(), [m.cpu().numpy() for m in maps[-kept:]])


def gate_weights(attention: torch.Tensor, sigma: float = GATE_SIGMA, level: float = GATE_LEVEL) -> torch.Tensor:
    """How much of the network's output to take at each pixel (0–1), from the final attention map
    (…×H×W, on any device; the same shape out, float32).

    The generator repaints the whole photo, so away from drops it still softens edges and shifts
    colours a little; the attention map says where the drops are. The map itself covers each
    drop, its blur the soft halo around it that the map marks faintly; from ``level`` up the
    output is taken in full, and where both are near zero the input comes through unchanged.
    """
    attention = attention.float().clamp(0.0, 1.0)
    halo = (_halo_on_host if attention.device.type == "cpu" else _halo_on_device)(attention, sigma)
    return (torch.maximum(attention, halo) / level).clamp_(0.0, 1.0)


def _halo_on_host(attention: torch.Tensor, sigma: float) -> torch.Tensor:
    """The map's Gaussian blur, computed at a quarter of its size (a wide blur is smooth: 1/60 of
    the cost) with OpenCV, 30× faster on the CPU than torch's kernels for one-channel maps."""
    height, width = attention.shape[-2:]
    small_size = (max(1, width // 4), max(1, height // 4))
    halos = [
        cv2.resize(
            cv2.GaussianBlur(cv2.resize(m, small_size, interpolation=cv2.INTER_AREA), (0, 0), sigma / 4),
            (width, height),
            interpolation=cv2.INTER_LINEAR,
        )
        for m in attention.reshape(-1, height, width).numpy()
    ]
    return torch.from_numpy(np.stack(halos)).reshape(attention.shape)


def _halo_on_device(attention: torch.Tensor, sigma: float) -> torch.Tensor:
    """:func:`_halo_on_host` in torch ops, on the map's device (a GPU batch is gated where it was
    computed): area resize, separable Gaussian of ±4σ reflected at the border, bilinear back. The
    same within 1e-4, except on maps under 132 px, where the kernel is cut to fit the reflection."""
    height, width = attention.shape[-2:]
    small_size = (max(1, height // 4), max(1, width // 4))
    small = F.interpolate(attention.reshape(-1, 1, height, width), size=small_size, mode="area")
    blur = sigma / 4
    radius = min(math.ceil(4 * blur), small.shape[-2] - 1, small.shape[-1] - 1)
    if radius >= 1:
        taps = torch.arange(-radius, radius + 1, device=small.device, dtype=torch.float32)
        kernel = torch.exp(-(taps**2) / (2 * blur**2))
        kernel /= kernel.sum()
        small = F.conv2d(F.pad(small, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
        small = F.conv2d(F.pad(small, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    halo = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    return halo.reshape(attention.shape)


def apply_gate(output: torch.Tensor, image: torch.Tensor, attention: torch.Tensor) -> None:
    """Blend the network's ``output`` (…×3×H×W float) with its input ``image`` (the same, in
    [0, 1]) by :func:`gate_weights` of the final attention map (…×H×W), in place (at 24 MP each
    image is 290 MB); the output is clipped to [0, 1] and kept from colours stronger than the
    input's nearby (:func:`~derain.colour.cap_colour`) first. Light sources in the input
    (:func:`~derain.lights.light_sources`) stay as they were: the network paints lamps over."""
    weights = gate_weights(attention).mul_(1.0 - light_sources(image))
    cap_colour(output.clamp_(0.0, 1.0), image)
    output.sub_(image).mul_(weights.unsqueeze(-3)).add_(image)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` at (height, width) ``size``, area-averaged (no aliasing of fine texture)."""
    return cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)


def _scale_back(image: np.ndarray, small: np.ndarray, result: Restoration) -> Restoration:
    """The change the network made to ``small`` (``image`` at the working size), scaled up onto
    ``image`` bilinearly: pixels it left alone stay exactly as they were, and only what it
    repainted (the drops, behind which there is no detail to keep) is at the working size's."""
    height, width = image.shape[:2]
    change = result.image.astype(np.float32)
    change -= small
    change = cv2.resize(change, (width, height), interpolation=cv2.INTER_LINEAR)
    change += image
    top = float(np.iinfo(image.dtype).max)
    pixels = np.clip(np.rint(change, out=change), 0.0, top, out=change).astype(image.dtype)
    maps = result.attention
    if maps is not None:
        maps = [cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps]
    return Restoration(pixels, maps)


def _check_whole(name: str, value: object, none_ok: bool) -> None:
    """Refuse a non-integer where a count of pixels or steps belongs (``2.5``, ``'4'``, ``True``)."""
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        full = " (None: the photo's own size, the CLI's 'full')" if name == "working_size" else ""
        raise TypeError(f"{name} must be a whole number{full}, not {value!r}")


def _parse_tile(tile: int | str) -> int | None:
    """None for automatic tiling, 0 for none, else a positive multiple of the size multiple."""
    if tile == "auto" or tile is None:
        return None
    try:
        size = int(tile)
    except (TypeError, ValueError):
        raise ValueError(f"tile must be 'auto', 0 or a size in pixels, not '{tile}'") from None
    if size == 0:
        return 0
    if size < MIN_TILE:
        raise ValueError(f"tile must be 0 (no tiling) or at least {MIN_TILE} pixels, not {size}")
    return size // SIZE_MULTIPLE * SIZE_MULTIPLE


def _check_image(image: np.ndarray) -> float:
    """Validate the API's input contract; returns the dtype's full-scale value."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError("image is empty")
    if image.dtype == np.uint8:
        return 255.0
    if image.dtype == np.uint16:
        return 65535.0
    raise ValueError(f"expected uint8 or uint16 pixels, got {image.dtype}")


def _pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad bottom/right to a multiple (symmetric for images too small to reflect)."""
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return image
    mode = "reflect" if h > ph and w > pw else "symmetric"
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)
