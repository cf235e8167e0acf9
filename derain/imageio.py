"""Image files as they really come: orientation, alpha, 16-bit, grayscale, metadata, size limits.

Pillow opens every file lazily: format, size, frame count and metadata (see
:mod:`derain.metadata`) come from the header without decoding a pixel, so a decompression bomb
is refused as cheaply as before. OpenCV decodes the pixels where it can (it is faster on large
JPEGs and, unlike Pillow, keeps 16-bit colour); Pillow, with pillow-heif for HEIC, decodes the
rest. Pillow encodes outputs with their metadata, except 16-bit colour, which it cannot hold:
OpenCV (PNG) and tifffile (TIFF) encode those pixels (see `_encoder`). Writes go through a
hidden temporary file renamed into place: an interrupted run never leaves half an image under
the final name.

derain applies its own pixel limit (`max_pixels`), so Pillow's is lifted here, as OpenCV's is in
derain/__init__.py.
"""

from __future__ import annotations

import functools
import io
import os
import secrets
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2  # its own pixel limit is lifted in derain/__init__.py, before any module loads OpenCV
import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError, features

from . import metadata as meta
from .metadata import Metadata

PILImage.MAX_IMAGE_PIXELS = None  # read_image checks max_pixels on the same header instead

HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", *HEIF_EXTENSIONS}
    | ({".avif"} if features.check("avif") else set())
)
DEFAULT_MAX_PIXELS = 200_000_000
HEIF_HINT = 'HEIC/HEIF images need pillow-heif: pip install "derain[heif]"'

_SUPPORTED = ", ".join(sorted(IMAGE_EXTENSIONS))
_FORMAT_OF = {  # Pillow's format name for each extension we write
    **dict.fromkeys((".jpg", ".jpeg"), "JPEG"),
    **dict.fromkeys((".tif", ".tiff"), "TIFF"),
    **dict.fromkeys(HEIF_EXTENSIONS, "HEIF"),
    ".png": "PNG",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".avif": "AVIF",
}
_OPENED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "HEIF", "AVIF")  # JPEG includes MPO (phone extras)
_OPENCV_DECODES = frozenset({"JPEG", "MPO", "PNG", "BMP", "WEBP"})
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L"})
_ALPHA_FORMATS = frozenset({"PNG", "TIFF", "WEBP", "HEIF", "AVIF"})
_GRAY_FORMATS = frozenset({"JPEG", "PNG", "TIFF", "BMP"})  # the rest store gray as colour
_16BIT_FORMATS = frozenset({"PNG", "TIFF"})
_QUALITY_FORMATS = frozenset({"JPEG", "WEBP", "HEIF", "AVIF"})
_READ_FLAGS = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION

# How to make each EXIF orientation upright; numpy views, cheap until made contiguous.
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a),
}


class ImageError(ValueError):
    """One-line, user-facing reason an image cannot be read or written."""


@dataclass
class Image:
    """Upright pixels plus what a round trip must keep: alpha, bit depth, grayscale, metadata."""

    rgb: np.ndarray  # H×W×3 uint8 or uint16, RGB order; gray files repeat the gray channel
    alpha: np.ndarray | None = None  # H×W, same dtype as rgb
    grayscale: bool = False  # the file was single-channel (gray or gray+alpha)
    metadata: Metadata | None = None  # None: write none

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), the order users and file headers speak in."""
        return self.rgb.shape[1], self.rgb.shape[0]


def is_image_path(path: Path) -> bool:
    """Whether the extension is one we read and write; the content is only checked on reading."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) as read_image returns it (upright), from the header alone: safe on decompression bombs."""
    with _opened(path) as (_, header):
        return _upright_size(header)


def read_image(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Decode a photo upright with its alpha, bit depth and metadata, refusing one over `max_pixels` before
    decoding (None or 0: no limit, as `--max-pixels 0`)."""
    if not is_image_path(path):
        raise ImageError(_unsupported(path))
    with _opened(path) as (f, header):
        width, height = header.size
        if max_pixels and width * height > max_pixels:
            raise ImageError(
                f"{path}: image is {width}x{height} ({_pixels(width * height)}), above the limit of "
                f"{_pixels(max_pixels)}; raise it with --max-pixels"
            )
        frames = getattr(header, "n_frames", 1)
        if frames > 1 and header.format != "MPO":  # an MPO's first frame is the photo, the rest depth maps or previews
            raise ImageError(
                f"{path}: has {frames} frames (multi-page or animated); derain cleans single images, "
                "so save the frame you want as its own file"
            )
        if _opencv_decodes(header):
            f.seek(0)
            pixels = _opencv_decode(f.read(), header, path)
        else:
            pixels = _pillow_decode(header, path)
        exif = meta.read_exif(header)
        orientation = exif.get(meta.ORIENTATION, 1) if header.format != "TIFF" else 1  # TIFF decoders orient it
        if orientation in _UPRIGHT:
            pixels = _UPRIGHT[orientation](pixels)
        return _to_image(pixels, path, header.mode in _GRAY_MODES, meta.from_header(header, exif))


def write_image(path: Path, image: Image, quality: int = 95) -> None:
    """Encode by the extension, with the image's metadata, and replace `path` atomically."""
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ImageError(_unsupported(path))
    if not 1 <= quality <= 100:
        raise ImageError(f"{path}: quality must be 1-100, got {quality}")
    if image.rgb.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: cannot write {image.rgb.dtype} pixels (only 8- and 16-bit images)")
    if not path.parent.is_dir():
        raise ImageError(f"{path}: folder {path.parent} does not exist")
    fmt = _FORMAT_OF[ext]
    pixels = _to_layout(image, fmt)
    metadata = meta.for_output(image.metadata, pixels.shape[1], pixels.shape[0])
    try:
        data = _encoder(pixels, fmt)(pixels, fmt, quality, metadata)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    except Exception as exc:  # three encoders, each with its own exception types
        raise ImageError(f"{path}: could not encode the image as {ext} ({exc})") from None
    write_atomic(path, data)


def output_path_for(path: Path, suffix: str = "_derained", ext: str | None = None) -> Path:
    """`<stem><suffix><.ext>` beside the input; `ext` ("png" or ".png") forces another format."""
    if ext is None:
        return path.with_name(f"{path.stem}{suffix}{path.suffix}")
    new_ext = "." + ext.lower().removeprefix(".")
    if new_ext not in IMAGE_EXTENSIONS:
        raise ImageError(f"unsupported output format '{ext}' (supported: {_SUPPORTED})")
    return path.with_name(f"{path.stem}{suffix}{new_ext}")


# --- messages -----------------------------------------------------------------------------------


def _unsupported(path: Path) -> str:
    return f"{path}: unsupported file type '{path.suffix or '(none)'}' (supported: {_SUPPORTED})"


def _unreadable(path: Path) -> str:
    return f"{path}: not a readable image (corrupt or truncated?)"


def _pixels(count: int) -> str:
    """A pixel count as people say it: megapixels, or plain pixels where that would read 1e-05."""
    return f"{count / 1e6:g} megapixels" if count >= 10_000 else f"{count} pixels"


# --- reading ------------------------------------------------------------------------------------


@functools.cache
def _pillow_formats() -> tuple[str, ...]:
    """What Pillow may open for us; its plugins load lazily, and HEIF comes with the `heif` extra (pillow-heif)."""
    try:
        import pillow_heif
    except ImportError:
        pass
    else:
        pillow_heif.register_heif_opener()
    PILImage.init()
    return tuple(name for name in _OPENED_FORMATS if name in PILImage.OPEN)


def _heif_available() -> bool:
    return "HEIF" in _pillow_formats()


@contextmanager
def _opened(path: Path) -> Iterator[tuple[io.BufferedReader, PILImage.Image]]:
    """The open file and Pillow's lazy view of it (header only), with every failure a one-line reason."""
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    if not _heif_available() and path.suffix.lower() in HEIF_EXTENSIONS:
        raise ImageError(f"{path}: {HEIF_HINT}")
    try:
        with path.open("rb") as f:
            if not f.read(1):
                raise ImageError(f"{path}: file is empty")
            f.seek(0)
            try:
                with warnings.catch_warnings():  # an odd header is either readable or an error, never noise
                    warnings.simplefilter("ignore")
                    header = PILImage.open(f, formats=_pillow_formats())
            except UnidentifiedImageError:
                raise ImageError(
                    f"{path}: not a readable image (not a JPEG, PNG, TIFF, WebP, BMP, HEIC or AVIF file, "
                    "or its header is cut off)"
                ) from None
            with header:
                yield f, header
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None


def _upright_size(header: PILImage.Image) -> tuple[int, int]:
    width, height = header.size  # Pillow already reports a TIFF's size upright
    sideways = header.format != "TIFF" and meta.read_exif(header).get(meta.ORIENTATION) in (5, 6, 7, 8)
    return (height, width) if sideways else (width, height)


def _jpeg_is_complete(data: bytes, header: PILImage.Image) -> bool:
    """Whether an end-of-image marker follows the first scan: libjpeg decodes a cut-off file with a mere warning."""
    scan = header.tile[0].offset if header.tile else len(data)  # scan data stuffs 0xFF as FF00: FFD9 is the end
    return data.find(b"\xff\xd9", scan) != -1


def _opencv_decodes(header: PILImage.Image) -> bool:
    """OpenCV for speed (JPEG) and 16-bit colour; Pillow for the rest, and for 8-bit TIFF, whose
    unassociated alpha OpenCV premultiplies."""
    if header.format == "TIFF":
        return max(header.tag_v2.get(258, (8,))) > 8  # BitsPerSample
    return header.format in _OPENCV_DECODES


def _opencv_decode(data: bytes, header: PILImage.Image, path: Path) -> np.ndarray:
    """Pixels in RGB(A) or gray order, as stored (OpenCV ignores EXIF orientation here, except in TIFF)."""
    if header.format in ("JPEG", "MPO") and not _jpeg_is_complete(data, header):
        raise ImageError(_unreadable(path))
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _READ_FLAGS)
    except cv2.error:  # OpenCV 5 raises where 4.x returned None
        pixels = None
    if pixels is None:
        raise ImageError(_unreadable(path))
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: unsupported pixel type {pixels.dtype} (only 8- and 16-bit images)")
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels[..., ::-1]  # a view: the one copy is made once the pixels are upright
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        return pixels[..., [2, 1, 0, 3]]
    return pixels


def _pillow_decode(header: PILImage.Image, path: Path) -> np.ndarray:
    """8-bit RGB(A) or gray(+alpha); Pillow applies a TIFF's orientation itself."""
    try:
        if header.mode not in ("L", "LA", "RGB", "RGBA", "I;16"):
            return np.asarray(header.convert("RGBA" if header.has_transparency_data else "RGB"))
        return np.asarray(header)
    except (OSError, ValueError, SyntaxError):
        raise ImageError(_unreadable(path)) from None


def _to_image(pixels: np.ndarray, path: Path, gray_file: bool, metadata: Metadata) -> Image:
    """RGB(A), gray or gray+alpha pixels as RGB plus optional alpha."""
    planes = pixels[..., None] if pixels.ndim == 2 else pixels
    channels = planes.shape[2]
    if channels not in (1, 2, 3, 4):
        raise ImageError(f"{path}: unsupported {channels}-channel image")
    rgb = planes[..., [0, 0, 0]] if channels < 3 else planes[..., :3]
    alpha = np.ascontiguousarray(planes[..., -1]) if channels in (2, 4) else None
    # OpenCV expands gray+alpha PNGs to BGRA, so the header tells whether the file was gray.
    return Image(np.ascontiguousarray(rgb), alpha, channels < 3 or gray_file, metadata)


# --- writing ------------------------------------------------------------------------------------


def _to_layout(image: Image, fmt: str) -> np.ndarray:
    """Gray, gray+alpha, RGB or RGBA in a depth and channel layout that `fmt` holds."""
    alpha = image.alpha if fmt in _ALPHA_FORMATS else None
    wide_gray_alpha = alpha is not None and image.rgb.dtype == np.uint16  # no library writes it: RGBA instead
    color = image.rgb[..., :1] if image.grayscale and fmt in _GRAY_FORMATS and not wide_gray_alpha else image.rgb
    pixels = color if alpha is None else np.dstack([color, alpha])
    if pixels.dtype == np.uint16 and fmt not in _16BIT_FORMATS:
        pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(value / 257)
    return np.ascontiguousarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def _encoder(pixels: np.ndarray, fmt: str) -> Callable[[np.ndarray, str, int, Metadata | None], bytes]:
    """Pillow holds 16-bit samples only as plain gray: OpenCV and tifffile encode 16-bit colour."""
    if pixels.dtype == np.uint8 or pixels.ndim == 2:
        return _pillow_encode
    return _tifffile_encode if fmt == "TIFF" else _opencv_encode


def _pillow_encode(pixels: np.ndarray, fmt: str, quality: int, metadata: Metadata | None) -> bytes:
    if fmt == "HEIF" and not _heif_available():
        raise ImageError(HEIF_HINT)
    quality_option = {"quality": quality} if fmt in _QUALITY_FORMATS else {}
    out = io.BytesIO()
    PILImage.fromarray(pixels).save(out, fmt, **quality_option, **meta.pillow_options(metadata, fmt))
    return out.getvalue()


def _opencv_encode(pixels: np.ndarray, fmt: str, quality: int, metadata: Metadata | None) -> bytes:
    """16-bit colour PNG, with Pillow's metadata chunks after the IHDR (8-byte signature, 25-byte IHDR chunk)."""
    bgr = np.concatenate([pixels[..., 2::-1], pixels[..., 3:]], axis=2)
    ok, encoded = cv2.imencode(".png", bgr)
    if not ok:
        raise ImageError("could not encode the image as .png")
    png = encoded.tobytes()
    return png[:33] + meta.png_chunks(metadata) + png[33:]


def _tifffile_encode(pixels: np.ndarray, fmt: str, quality: int, metadata: Metadata | None) -> bytes:
    """16-bit colour TIFF, the EXIF added by tifftools (see :func:`derain.metadata.with_tiff_exif`)."""
    import tifffile

    out = io.BytesIO()
    tifffile.imwrite(
        out,
        pixels,
        photometric="rgb",
        extrasamples=("unassalpha",) if pixels.shape[2] == 4 else None,
        compression="zlib",
        predictor=True,
        metadata=None,  # no JSON description of its own
        **meta.tifffile_options(metadata),
    )
    return meta.with_tiff_exif(out.getvalue(), metadata)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a hidden temp file beside `path`, fsync, rename it over `path`; never leave the temp file behind."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:  # os.open rather than mkstemp: mode 0o666 minus the umask, like any other new file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise ImageError(f"{path}: cannot write in {path.parent} ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise ImageError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        tmp.unlink(missing_ok=True)
