"""Image files as they really come: EXIF orientation, alpha, 16-bit, grayscale, size limits.

Pixels are decoded by OpenCV in "unchanged" mode, the only mode that keeps alpha and 16-bit
samples, but that mode ignores EXIF orientation, so the orientation tag of JPEG, PNG and WebP
files is parsed here (OpenCV's TIFF decoder orients TIFF pixels itself, whatever the flags).
The size is read from the file header first, so a decompression bomb is refused before a single
pixel is decoded. Writes go through a hidden temporary file renamed into place: an interrupted
run never leaves half an image under the final name.
"""

from __future__ import annotations

import io
import os
import secrets
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2  # its own pixel limit is lifted in derain/__init__.py, before any module loads OpenCV
import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
DEFAULT_MAX_PIXELS = 200_000_000

_SUPPORTED = ", ".join(sorted(IMAGE_EXTENSIONS))
_ALPHA_EXTENSIONS = frozenset({".png", ".tif", ".tiff", ".webp"})
_16BIT_EXTENSIONS = frozenset({".png", ".tif", ".tiff"})
_READ_FLAGS = cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION
_QUALITY_PARAMS = {
    ".jpg": cv2.IMWRITE_JPEG_QUALITY,
    ".jpeg": cv2.IMWRITE_JPEG_QUALITY,
    ".webp": cv2.IMWRITE_WEBP_QUALITY,
}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ORIENTATION_TAG = 0x0112
_TIFF_WIDTH, _TIFF_HEIGHT = 256, 257
_TIFF_INT_FORMATS = {3: "H", 4: "I"}  # SHORT, LONG
_JPEG_SOS, _JPEG_EOI, _JPEG_APP1 = 0xDA, 0xD9, 0xE1
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range
_JPEG_NO_LENGTH = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no payload

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
    """Upright pixels plus what a round trip must keep: alpha, bit depth, grayscale."""

    rgb: np.ndarray  # H×W×3 uint8 or uint16, RGB order; gray files repeat the gray channel
    alpha: np.ndarray | None = None  # H×W, same dtype as rgb
    grayscale: bool = False  # the file was single-channel (gray or gray+alpha)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), the order users and file headers speak in."""
        return self.rgb.shape[1], self.rgb.shape[0]


def is_image_path(path: Path) -> bool:
    """Whether the extension is one we read and write; the content is only checked on reading."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) as stored, from the header alone: cheap on huge files, safe on decompression bombs."""
    with _opened(path) as f:
        return _header(f, path)[1]


def read_image(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Decode a photo upright with its alpha and bit depth, refusing one over `max_pixels` before decoding."""
    if not is_image_path(path):
        raise ImageError(_unsupported(path))
    with _opened(path) as f:
        kind, (width, height) = _header(f, path)
        if max_pixels is not None and width * height > max_pixels:
            raise ImageError(
                f"{path}: image is {width}x{height} ({_megapixels(width * height)} megapixels), above the limit of "
                f"{_megapixels(max_pixels)} megapixels; raise it with --max-pixels"
            )
        f.seek(0)
        data = f.read()
    stream = io.BytesIO(data)
    if kind == "jpeg" and not _jpeg_is_complete(stream, data):
        raise ImageError(_unreadable(path))
    pixels = _decode(data, path)
    orientation = _orientation(stream, kind)
    if orientation != 1:
        pixels = _UPRIGHT[orientation](pixels)
    return _to_image(pixels, path, gray_file=kind == "png" and data[25:26] in (b"\x00", b"\x04"))


def write_image(path: Path, image: Image, quality: int = 95) -> None:
    """Encode by the extension and replace `path` atomically, so nobody ever sees half a file."""
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ImageError(_unsupported(path))
    if not 1 <= quality <= 100:
        raise ImageError(f"{path}: quality must be 1-100, got {quality}")
    if image.rgb.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: cannot write {image.rgb.dtype} pixels (only 8- and 16-bit images)")
    if not path.parent.is_dir():
        raise ImageError(f"{path}: folder {path.parent} does not exist")
    _write_atomic(path, _encode(_to_opencv(image, ext), ext, quality, path))


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


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:g}"


# --- reading ------------------------------------------------------------------------------------


@contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    """The file open for reading, with OS errors turned into one-line reasons that name it."""
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    try:
        with path.open("rb") as f:
            yield f
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None


def _header(f: BinaryIO, path: Path) -> tuple[str, tuple[int, int]]:
    """The format, told by its magic bytes rather than the extension, and (width, height)."""
    head = f.read(12)
    if not head:
        raise ImageError(f"{path}: file is empty")
    kind = _sniff(head)
    if kind is None:
        raise ImageError(f"{path}: not a readable image (not a PNG, JPEG, BMP, TIFF or WebP file)")
    try:
        return kind, _SIZE_READERS[kind](f)
    except EOFError:
        raise ImageError(f"{path}: not a readable image (truncated header)") from None
    except ValueError as e:
        raise ImageError(f"{path}: not a readable image ({e})") from None


def _sniff(head: bytes) -> str | None:
    if head.startswith(_PNG_MAGIC):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """`n` bytes or EOFError: a short read means a truncated file, never values made of nothing."""
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return data


def _png_size(f: BinaryIO) -> tuple[int, int]:
    f.seek(len(_PNG_MAGIC))
    _, chunk, width, height = struct.unpack(">I4sII", _read_exact(f, 16))
    if chunk != b"IHDR":
        raise ValueError("PNG without an IHDR header")
    return width, height


def _jpeg_segments(f: BinaryIO) -> Iterator[tuple[int, int]]:
    """(marker, payload length) of each segment up to the first scan, with `f` at the payload."""
    f.seek(2)
    while True:
        if _read_exact(f, 1) != b"\xff":
            raise ValueError("corrupt JPEG marker")
        marker = 0xFF
        while marker == 0xFF:  # fill bytes may pad any marker
            marker = _read_exact(f, 1)[0]
        if marker in _JPEG_NO_LENGTH:
            continue
        if marker == _JPEG_EOI:
            raise ValueError("JPEG without image data")
        (length,) = struct.unpack(">H", _read_exact(f, 2))
        if length < 2:
            raise ValueError("corrupt JPEG segment")
        start = f.tell()
        yield marker, length - 2
        if marker == _JPEG_SOS:
            return
        f.seek(start + length - 2)


def _jpeg_size(f: BinaryIO) -> tuple[int, int]:
    for marker, _ in _jpeg_segments(f):
        if marker in _JPEG_SOF:
            _, height, width = struct.unpack(">BHH", _read_exact(f, 5))
            return width, height
    raise ValueError("JPEG without a frame header")


def _bmp_size(f: BinaryIO) -> tuple[int, int]:
    f.seek(14)
    (info_size,) = struct.unpack("<I", _read_exact(f, 4))
    if info_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack("<HH", _read_exact(f, 4))
    else:
        width, height = struct.unpack("<ii", _read_exact(f, 8))
    return abs(width), abs(height)  # a negative height means rows stored top-down


def _tiff_tags(f: BinaryIO) -> dict[int, int]:
    """Single SHORT/LONG values of the first IFD, of a TIFF file or an EXIF block (same layout)."""
    f.seek(0)
    head = _read_exact(f, 8)
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None or struct.unpack(order + "H", head[2:4])[0] != 42:
        raise ValueError("corrupt TIFF header")
    f.seek(struct.unpack(order + "I", head[4:])[0])
    (count,) = struct.unpack(order + "H", _read_exact(f, 2))
    tags = {}
    for tag, kind, n, value in struct.iter_unpack(order + "HHI4s", _read_exact(f, 12 * count)):
        if n == 1 and kind in _TIFF_INT_FORMATS:
            tags[tag] = struct.unpack_from(order + _TIFF_INT_FORMATS[kind], value)[0]
    return tags


def _tiff_size(f: BinaryIO) -> tuple[int, int]:
    tags = _tiff_tags(f)
    if _TIFF_WIDTH not in tags or _TIFF_HEIGHT not in tags:
        raise ValueError("TIFF without an image size")
    return tags[_TIFF_WIDTH], tags[_TIFF_HEIGHT]


def _webp_size(f: BinaryIO) -> tuple[int, int]:
    f.seek(12)
    chunk = _read_exact(f, 8)[:4]
    if chunk == b"VP8 ":  # lossy: frame tag, start code, then 14-bit sizes
        data = _read_exact(f, 10)
        if data[3:6] != b"\x9d\x01\x2a":
            raise ValueError("corrupt WebP header")
        width, height = struct.unpack("<HH", data[6:])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature byte, then 14-bit sizes minus one
        data = _read_exact(f, 5)
        if data[0] != 0x2F:
            raise ValueError("corrupt WebP header")
        (bits,) = struct.unpack("<I", data[1:])
        return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: flags, then 24-bit canvas sizes minus one
        data = _read_exact(f, 10)
        return int.from_bytes(data[4:7], "little") + 1, int.from_bytes(data[7:], "little") + 1
    raise ValueError(f"unknown WebP chunk {chunk!r}")


_SIZE_READERS: dict[str, Callable[[BinaryIO], tuple[int, int]]] = {
    "png": _png_size,
    "jpeg": _jpeg_size,
    "bmp": _bmp_size,
    "tiff": _tiff_size,
    "webp": _webp_size,
}


def _jpeg_is_complete(f: BinaryIO, data: bytes) -> bool:
    """Whether an end-of-image marker follows the first scan: libjpeg decodes a cut-off file with a mere warning."""
    try:
        for marker, _ in _jpeg_segments(f):
            if marker == _JPEG_SOS:  # scan data stuffs 0xFF as FF00, so FFD9 there is the real end
                return data.find(b"\xff\xd9", f.tell()) != -1
    except (EOFError, ValueError):
        pass
    return False


def _decode(data: bytes, path: Path) -> np.ndarray:
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _READ_FLAGS)
    except cv2.error:  # OpenCV 5 raises where 4.x returned None
        pixels = None
    if pixels is None:
        raise ImageError(_unreadable(path))
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{path}: unsupported pixel type {pixels.dtype} (only 8- and 16-bit images)")
    return pixels


def _jpeg_exif(f: BinaryIO) -> bytes | None:
    for marker, length in _jpeg_segments(f):
        if marker == _JPEG_APP1:
            payload = f.read(length)
            if payload.startswith(b"Exif\x00\x00"):
                return payload
    return None


def _png_exif(f: BinaryIO) -> bytes | None:
    f.seek(len(_PNG_MAGIC))
    while len(head := f.read(8)) == 8:
        length, chunk = struct.unpack(">I4s", head)
        if chunk == b"eXIf":
            return f.read(length)
        f.seek(length + 4, io.SEEK_CUR)  # payload and CRC
    return None


def _webp_exif(f: BinaryIO) -> bytes | None:
    f.seek(12)
    while len(head := f.read(8)) == 8:
        chunk, length = struct.unpack("<4sI", head)
        if chunk == b"EXIF":
            return f.read(length)
        f.seek(length + (length & 1), io.SEEK_CUR)  # payloads are padded to even sizes
    return None


# TIFF is left out on purpose: OpenCV's TIFF decoder already applies the orientation tag.
_EXIF_READERS: dict[str, Callable[[BinaryIO], bytes | None]] = {
    "jpeg": _jpeg_exif,
    "png": _png_exif,
    "webp": _webp_exif,
}


def _orientation(f: BinaryIO, kind: str) -> int:
    """EXIF orientation 1-8, and 1 for anything missing or malformed: bad metadata must not cost a photo."""
    reader = _EXIF_READERS.get(kind)
    try:
        exif = reader(f) if reader else None
        tags = _tiff_tags(io.BytesIO(exif.removeprefix(b"Exif\x00\x00"))) if exif else {}
    except (EOFError, ValueError):
        return 1
    value = tags.get(_ORIENTATION_TAG, 1)
    return value if value in _UPRIGHT else 1


def _to_image(pixels: np.ndarray, path: Path, gray_file: bool) -> Image:
    """OpenCV's gray, gray+alpha, BGR and BGRA layouts as RGB plus optional alpha."""
    planes = pixels[..., None] if pixels.ndim == 2 else pixels
    channels = planes.shape[2]
    if channels not in (1, 2, 3, 4):
        raise ImageError(f"{path}: unsupported {channels}-channel image")
    rgb = planes[..., [0, 0, 0]] if channels < 3 else planes[..., 2::-1]
    alpha = np.ascontiguousarray(planes[..., -1]) if channels in (2, 4) else None
    # OpenCV expands gray+alpha PNGs to BGRA, so the header tells whether the file was gray.
    return Image(np.ascontiguousarray(rgb), alpha, grayscale=channels < 3 or gray_file)


# --- writing ------------------------------------------------------------------------------------


def _to_opencv(image: Image, ext: str) -> np.ndarray:
    """BGR(A) or gray in a depth `ext` holds; OpenCV cannot encode gray+alpha, so that becomes BGRA."""
    alpha = image.alpha if ext in _ALPHA_EXTENSIONS else None
    if image.grayscale and alpha is None:
        pixels = image.rgb[..., 0]
    else:
        color = image.rgb[..., [0, 0, 0]] if image.grayscale else image.rgb[..., ::-1]
        pixels = color if alpha is None else np.dstack([color, alpha])
    if pixels.dtype == np.uint16 and ext not in _16BIT_EXTENSIONS:
        pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(value / 257)
    return np.ascontiguousarray(pixels)


def _encode(pixels: np.ndarray, ext: str, quality: int, path: Path) -> np.ndarray:
    params = [_QUALITY_PARAMS[ext], quality] if ext in _QUALITY_PARAMS else []
    try:
        ok, encoded = cv2.imencode(ext, pixels, params)
    except cv2.error:
        ok = False
    if not ok:
        raise ImageError(f"{path}: could not encode the image as {ext}")
    return encoded


def _write_atomic(path: Path, data: np.ndarray) -> None:
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
