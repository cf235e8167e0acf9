"""Files in, files out: the steps every command shares, on top of :class:`Derainer`.

Reading applies EXIF orientation and the pixel limit; alpha, grayscale and metadata (colour
profile, EXIF, XMP, DPI) pass through, and every write is atomic (see :mod:`derain.imageio`).
The input is never overwritten.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engine import Derainer, Restoration
from .imageio import DEFAULT_MAX_PIXELS, Image, ImageError, read_image, write_image
from .visualize import attention_overlay, attention_to_gray

PathLike = str | os.PathLike[str]  # the public functions take what open() takes, not only Path


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when both paths name one file (also through links or ``..``)."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (b.exists() and a.samefile(b))
    except OSError:
        return False


def refuse_overwriting_input(src: PathLike, dst: PathLike) -> None:
    if same_file(src, dst):
        raise ImageError(f"{dst}: refusing to overwrite the input; choose another output path")


def derained_image(image: Image, restored: np.ndarray, keep_metadata: bool = True) -> Image:
    """Wrap the restored pixels with the input's alpha, grayscale-ness and (unless stripped) metadata."""
    if image.grayscale:  # the model answers in colour; a gray photo stays gray
        gray = restored.astype(np.float32).mean(axis=2)
        restored = np.repeat(np.rint(gray).astype(restored.dtype)[..., None], 3, axis=2)
    return Image(restored, image.alpha, image.grayscale, image.metadata if keep_metadata else None)


def overlay_image(image: Image, attention: np.ndarray) -> Image:
    """A diagnostic picture, so it carries no metadata (no camera, date or place of its own)."""
    return Image(rgb=attention_overlay(image.rgb, attention), alpha=None, grayscale=False)


def overlay_path_for(dst: PathLike) -> Path:
    """Where ``--attention`` puts the overlay of an output: ``<stem>_overlay.png`` beside it."""
    dst = Path(dst)
    return dst.with_name(dst.stem + "_overlay.png")


def clean_file(
    derainer: Derainer,
    src: PathLike,
    dst: PathLike,
    quality: int = 95,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    overlay: PathLike | None = None,
    keep_metadata: bool = True,
) -> None:
    """Derain ``src`` into ``dst``; with ``overlay``, also write the attention overlay there."""
    src = Path(src)
    refuse_overwriting_input(src, dst)
    if overlay is not None:  # before anything is written
        refuse_overwriting_input(src, overlay)
    image = read_image(src, max_pixels)
    result = derainer.run(image.rgb, with_attention=overlay is not None)
    write_outputs(image, result, dst, quality, overlay, keep_metadata)


def write_outputs(
    image: Image,
    result: Restoration,
    dst: PathLike,
    quality: int = 95,
    overlay: PathLike | None = None,
    keep_metadata: bool = True,
) -> None:
    """Write what the model made of ``image``: the cleaned photo and, with ``overlay``, the attention overlay."""
    write_image(Path(dst), derained_image(image, result.image, keep_metadata), quality)
    if overlay is not None:
        write_image(Path(overlay), overlay_image(image, result.attention[-1]))


@dataclass(frozen=True)
class AttentionFiles:
    maps: list[Path]
    overlay: Path


def attention_paths(src: PathLike, out_dir: PathLike, steps: int) -> AttentionFiles:
    stem, out_dir = Path(src).stem, Path(out_dir)
    return AttentionFiles(
        [out_dir / f"{stem}_att{i}.png" for i in range(1, steps + 1)], out_dir / f"{stem}_overlay.png"
    )


def attention_files(
    derainer: Derainer, src: PathLike, out_dir: PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> AttentionFiles:
    """Write the N attention maps as 8-bit PNGs and a heat-map overlay of the last one."""
    src = Path(src)
    paths = attention_paths(src, out_dir, derainer.steps)
    for path in (*paths.maps, paths.overlay):  # before the model runs: a slip should not cost its time
        refuse_overwriting_input(src, path)
    if not Path(out_dir).is_dir():
        raise ImageError(f"{out_dir}: no such folder")
    image = read_image(src, max_pixels)
    maps = derainer.attention(image.rgb)
    for path, attention in zip(paths.maps, maps):
        write_image(
            path, Image(rgb=np.repeat(attention_to_gray(attention)[..., None], 3, 2), alpha=None, grayscale=True)
        )
    write_image(paths.overlay, overlay_image(image, maps[-1]))
    return paths
