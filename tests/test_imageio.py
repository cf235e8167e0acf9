"""Tests for derain.imageio on tiny images made here, several of them hand-built byte by byte."""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest

from derain.imageio import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    Image,
    ImageError,
    is_image_path,
    output_path_for,
    read_image,
    read_image_size,
    write_image,
)

# --- builders -----------------------------------------------------------------------------------


def _encode(ext: str, pixels: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, encoded = cv2.imencode(ext, pixels, params or [])
    assert ok
    return encoded.tobytes()


def _marked(height: int = 16, width: int = 24) -> np.ndarray:
    """Dark RGB image with a bright, non-square block in the top-left corner: every orientation differs."""
    rgb = np.full((height, width, 3), 40, np.uint8)
    rgb[:8, :16] = 220
    return rgb


def _noise(height: int, width: int, channels: int = 3, dtype: type = np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.random.default_rng(0).integers(0, top, (height, width, channels), dtype=dtype, endpoint=True)


def _exif(orientation: int, order: str = ">") -> bytes:
    """A TIFF-structured EXIF block whose IFD0 holds only the orientation tag."""
    mark = b"MM" if order == ">" else b"II"
    entry = struct.pack(order + "HHIHxx", 0x0112, 3, 1, orientation)
    return mark + struct.pack(order + "HIH", 42, 8, 1) + entry + b"\0\0\0\0"


def _jpeg_with_exif(rgb: np.ndarray, orientation: int, exif: bytes | None = None) -> bytes:
    jpeg = _encode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])
    app1 = b"Exif\0\0" + (_exif(orientation) if exif is None else exif)
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, color_type: int, rows: list[bytes] | None = None) -> bytes:
    """An 8-bit PNG of any colour type; without rows it is a header that promises pixels it lacks."""
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
    idat = _png_chunk(b"IDAT", zlib.compress(b"".join(b"\0" + row for row in rows))) if rows else b""
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + _png_chunk(b"IEND", b"")


def _png_with_exif(rgb: np.ndarray, orientation: int) -> bytes:
    png = _encode(".png", rgb[..., ::-1])
    return png[:33] + _png_chunk(b"eXIf", _exif(orientation)) + png[33:]  # right after IHDR


def _riff_chunk(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)


def _webp_with_exif(rgb: np.ndarray, orientation: int) -> bytes:
    """A lossless WebP rewrapped in the extended (VP8X) layout, which is the one that carries EXIF."""
    webp = _encode(".webp", rgb[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, 101])
    height, width = rgb.shape[:2]
    vp8x = bytes([0x08, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + _riff_chunk(b"VP8X", vp8x) + webp[12:] + _riff_chunk(b"EXIF", _exif(orientation, "<"))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _tiff(rgb: np.ndarray, orientation: int, order: str = "<") -> bytes:
    """An uncompressed one-strip RGB TIFF: OpenCV cannot write the orientation tag, so build it by hand."""
    height, width = rgb.shape[:2]
    data = rgb.tobytes()
    shorts = {256: width, 257: height, 258: 8, 259: 1, 262: 2, 274: orientation, 277: 3, 278: height}
    longs = {273: 8, 279: len(data)}
    entries = [struct.pack(order + "HHIHxx", tag, 3, 1, value) for tag, value in shorts.items()]
    entries += [struct.pack(order + "HHII", tag, 4, 1, value) for tag, value in longs.items()]
    entries.sort(key=lambda entry: struct.unpack(order + "H", entry[:2]))
    ifd = struct.pack(order + "H", len(entries)) + b"".join(entries) + b"\0\0\0\0"
    return (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8 + len(data)) + data + ifd


def _os2_bmp(width: int, height: int) -> bytes:
    """A BMP with the old 12-byte OS/2 header, whose sizes are 16-bit."""
    row = bytes((3 * width + 3) // 4 * 4)
    info = struct.pack("<IHHHH", 12, width, height, 1, 24)
    return b"BM" + struct.pack("<IHHI", 26 + len(row) * height, 0, 0, 26) + info + row * height


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _must_not_decode(*_: object) -> None:
    raise AssertionError("the image was decoded")


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp"])
def test_rgb_round_trip_is_exact_for_lossless_formats(tmp_path: Path, ext: str) -> None:
    rgb = _noise(5, 7)
    write_image(tmp_path / f"out{ext}", Image(rgb))
    image = read_image(tmp_path / f"out{ext}")
    assert image.size == (7, 5) and image.alpha is None and not image.grayscale
    assert image.rgb.dtype == np.uint8 and np.array_equal(image.rgb, rgb)


@pytest.mark.parametrize("ext", [".png", ".tiff"])
def test_alpha_round_trip_is_exact(tmp_path: Path, ext: str) -> None:
    rgb, alpha = _noise(6, 4), _noise(6, 4, 1)[..., 0]
    write_image(tmp_path / f"out{ext}", Image(rgb, alpha))
    image = read_image(tmp_path / f"out{ext}")
    assert np.array_equal(image.rgb, rgb) and np.array_equal(image.alpha, alpha)


def test_webp_keeps_alpha(tmp_path: Path) -> None:
    alpha = np.zeros((8, 8), np.uint8)
    alpha[:, 4:] = 255
    write_image(tmp_path / "out.webp", Image(_noise(8, 8), alpha))
    assert np.array_equal(read_image(tmp_path / "out.webp").alpha, alpha)


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff"])
def test_16bit_round_trip_keeps_values_above_255(tmp_path: Path, ext: str) -> None:
    rgb, alpha = _noise(4, 5, dtype=np.uint16), _noise(4, 5, 1, np.uint16)[..., 0]
    assert rgb.max() > 255
    write_image(tmp_path / f"out{ext}", Image(rgb, alpha))
    image = read_image(tmp_path / f"out{ext}")
    assert image.rgb.dtype == np.uint16
    assert np.array_equal(image.rgb, rgb) and np.array_equal(image.alpha, alpha)


@pytest.mark.parametrize(("ext", "dtype"), [(".png", np.uint8), (".tif", np.uint16)])
def test_grayscale_is_written_single_channel_and_read_back_gray(tmp_path: Path, ext: str, dtype: type) -> None:
    gray = _noise(4, 6, 1, dtype)
    path = tmp_path / f"gray{ext}"
    write_image(path, Image(np.repeat(gray, 3, axis=2), grayscale=True))
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ndim == 2
    image = read_image(path)
    assert image.grayscale and image.rgb.shape == (4, 6, 3) and image.rgb.dtype == dtype
    assert all(np.array_equal(image.rgb[..., c], gray[..., 0]) for c in range(3))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_gray_alpha_is_written_gray_alpha(tmp_path: Path, ext: str) -> None:
    path = _file(tmp_path, "ga.png", _png(2, 1, 4, [bytes([10, 200, 20, 100])]))  # gray, alpha, gray, alpha
    image = read_image(path)
    assert image.grayscale
    assert image.rgb.tolist() == [[[10, 10, 10], [20, 20, 20]]] and image.alpha.tolist() == [[200, 100]]
    write_image(tmp_path / f"out{ext}", image)
    with PIL.Image.open(tmp_path / f"out{ext}") as written:
        assert written.mode == "LA"
    again = read_image(tmp_path / f"out{ext}")
    assert again.grayscale and np.array_equal(again.rgb, image.rgb) and np.array_equal(again.alpha, image.alpha)


def test_16bit_gray_alpha_is_written_as_16bit_rgba(tmp_path: Path) -> None:
    gray, alpha = _noise(3, 4, 1, np.uint16), _noise(3, 4, 1, np.uint16)[..., 0]
    write_image(tmp_path / "out.png", Image(np.repeat(gray, 3, axis=2), alpha, grayscale=True))
    pixels = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)  # no library writes 16-bit gray+alpha
    assert pixels.dtype == np.uint16 and pixels.shape == (3, 4, 4)
    assert np.array_equal(pixels[..., 0], gray[..., 0]) and np.array_equal(pixels[..., 3], alpha)


def test_jpeg_quality_changes_file_size(tmp_path: Path) -> None:
    image = Image(_noise(64, 64))
    write_image(tmp_path / "low.jpg", image, quality=20)
    write_image(tmp_path / "high.jpg", image, quality=95)
    assert (tmp_path / "low.jpg").stat().st_size < (tmp_path / "high.jpg").stat().st_size


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".bmp"])
def test_formats_without_alpha_drop_it(tmp_path: Path, ext: str) -> None:
    write_image(tmp_path / f"out{ext}", Image(_noise(8, 8), np.full((8, 8), 128, np.uint8)))
    image = read_image(tmp_path / f"out{ext}")
    assert image.alpha is None and image.rgb.shape == (8, 8, 3)


def test_16bit_becomes_rounded_8bit_where_the_format_needs_it(tmp_path: Path) -> None:
    rgb = np.array([[[0, 128, 129], [257 * 200, 257 * 200 + 128, 65535]]], np.uint16)
    write_image(tmp_path / "out.bmp", Image(rgb))
    assert read_image(tmp_path / "out.bmp").rgb.tolist() == [[[0, 0, 1], [200, 200, 255]]]
    write_image(tmp_path / "out.jpg", Image(_noise(8, 8, dtype=np.uint16)))
    assert read_image(tmp_path / "out.jpg").rgb.dtype == np.uint8


def test_non_ascii_path(tmp_path: Path) -> None:
    path = tmp_path / "pluie été 雨.png"
    write_image(path, Image(_marked()))
    assert np.array_equal(read_image(path).rgb, _marked())


# --- EXIF orientation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "upright"),
    [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))],
)
def test_jpeg_exif_orientation_is_applied(
    tmp_path: Path, orientation: int, upright: Callable[[np.ndarray], np.ndarray]
) -> None:
    rgb = _marked()
    image = read_image(_file(tmp_path, "o.jpg", _jpeg_with_exif(rgb, orientation)))
    assert np.array_equal(image.rgb[..., 0] > 128, upright(rgb[..., 0] > 128))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    ("ext", "build"), [(".jpg", _jpeg_with_exif), (".png", _png_with_exif), (".webp", _webp_with_exif)]
)
def test_every_orientation_matches_opencvs_own_exif_handling(
    tmp_path: Path, ext: str, build: Callable[[np.ndarray, int], bytes], orientation: int
) -> None:
    data = build(_marked(), orientation)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]  # applies EXIF itself
    assert np.array_equal(read_image(_file(tmp_path, f"o{ext}", data)).rgb, expected)


@pytest.mark.parametrize("order", ["<", ">"])
def test_tiff_orientation_is_applied_once(tmp_path: Path, order: str) -> None:
    rgb = _marked()
    image = read_image(_file(tmp_path, "o.tif", _tiff(rgb, 6, order)))
    assert np.array_equal(image.rgb, np.rot90(rgb, -1))


def test_malformed_exif_is_ignored(tmp_path: Path) -> None:
    exif = _exif(6)
    broken = [exif[:cut] for cut in range(len(exif) - 4)]  # cut anywhere before the (unused) next-IFD link
    broken += [_exif(0), _exif(9), exif[:4] + b"\xff\xff\xff\xff" + exif[8:], b"XX" + exif[2:]]
    for n, block in enumerate(broken):
        image = read_image(_file(tmp_path, f"{n}.jpg", _jpeg_with_exif(_marked(), 1, block)))
        assert image.size == (24, 16)


# --- header sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "channels", "params", "webp_chunk"),
    [
        (".png", 3, [], None),
        (".jpg", 3, [], None),
        (".bmp", 3, [], None),
        (".tif", 4, [], None),
        (".webp", 3, [cv2.IMWRITE_WEBP_QUALITY, 80], b"VP8 "),
        (".webp", 3, [cv2.IMWRITE_WEBP_QUALITY, 101], b"VP8L"),
        (".webp", 4, [cv2.IMWRITE_WEBP_QUALITY, 80], b"VP8X"),
    ],
)
def test_read_image_size_from_header(
    tmp_path: Path, ext: str, channels: int, params: list[int], webp_chunk: bytes | None
) -> None:
    data = _encode(ext, _noise(23, 37, channels), params)
    if webp_chunk:
        assert data[12:16] == webp_chunk
    assert read_image_size(_file(tmp_path, f"x{ext}", data)) == (37, 23)


def test_read_image_size_of_hand_built_headers(tmp_path: Path) -> None:
    assert read_image_size(_file(tmp_path, "os2.bmp", _os2_bmp(5, 3))) == (5, 3)
    assert read_image(tmp_path / "os2.bmp").size == (5, 3)
    assert read_image_size(_file(tmp_path, "mm.tif", _tiff(_marked(), 1, ">"))) == (24, 16)


@pytest.mark.parametrize(("name", "build"), [("o.tif", _tiff), ("o.jpg", _jpeg_with_exif)])
def test_read_image_size_is_upright_like_the_pixels(tmp_path: Path, name: str, build: Callable) -> None:
    path = _file(tmp_path, name, build(_marked(), 6))
    assert read_image_size(path) == read_image(path).size == (16, 24)


def test_read_image_size_refuses_bad_headers(tmp_path: Path) -> None:
    png = _encode(".png", _noise(4, 4))
    with pytest.raises(ImageError, match=r"cut\.png: not a readable image \(.*header is cut off\)"):
        read_image_size(_file(tmp_path, "cut.png", png[:12]))
    with pytest.raises(ImageError, match="not a JPEG, PNG, TIFF, WebP, BMP, HEIC or AVIF file"):
        read_image_size(_file(tmp_path, "text.png", b"hello, world"))
    with pytest.raises(ImageError, match="no such file"):
        read_image_size(tmp_path / "missing.png")


# --- bad input ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"nope\.jpg: no such file"):
        read_image(tmp_path / "nope.jpg")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path / "folder.png")


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"empty\.png: file is empty"):
        read_image(_file(tmp_path, "empty.png", b""))


def test_text_named_jpg(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(_file(tmp_path, "notes.jpg", b"just some text\n"))


def test_truncated_png(tmp_path: Path) -> None:
    data = _encode(".png", _noise(64, 64))
    with pytest.raises(ImageError, match=r"cut\.png: not a readable image \(corrupt or truncated\?\)"):
        read_image(_file(tmp_path, "cut.png", data[: len(data) // 2]))


@pytest.mark.parametrize("keep", [0.6, -2])
def test_truncated_jpeg_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: float
) -> None:
    data = _encode(".jpg", _noise(64, 64))
    monkeypatch.setattr(cv2, "imdecode", _must_not_decode)  # libjpeg may decode a cut-off file, gray-filled
    cut = data[: int(len(data) * keep)] if keep > 0 else data[:keep]
    with pytest.raises(ImageError, match=r"cut\.jpg: not a readable image \(corrupt or truncated\?\)"):
        read_image(_file(tmp_path, "cut.jpg", cut))


def test_unsupported_extension(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"unsupported file type '\.gif' \(supported: .*\.png"):
        read_image(_file(tmp_path, "anim.gif", b"GIF89a"))


def test_unsupported_pixel_type(tmp_path: Path) -> None:
    path = _file(tmp_path, "float.tif", _encode(".tif", np.zeros((4, 4), np.float32)))
    with pytest.raises(ImageError, match="float32"):
        read_image(path)


def test_max_pixels_is_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _file(tmp_path, "x.png", _encode(".png", _noise(10, 10)))
    assert read_image(path, max_pixels=100).size == (10, 10)
    assert read_image(path, max_pixels=None).size == (10, 10)
    assert read_image(path, max_pixels=0).size == (10, 10)  # 0: no limit, as --max-pixels 0
    monkeypatch.setattr(cv2, "imdecode", _must_not_decode)
    with pytest.raises(ImageError, match=r"10x10 \(100 pixels\).*limit of 99 pixels.*--max-pixels"):
        read_image(path, max_pixels=99)


def test_header_promising_a_huge_image_is_refused_by_the_pixel_limit(tmp_path: Path) -> None:
    path = _file(tmp_path, "bomb.png", _png(100_000, 100_000, 0))  # header only, no pixel data
    with pytest.raises(ImageError, match=r"10000 megapixels\), above the limit of 200 megapixels"):
        read_image(path)
    assert DEFAULT_MAX_PIXELS == 200_000_000


# --- writing ------------------------------------------------------------------------------------


def test_write_leaves_only_the_final_file(tmp_path: Path) -> None:
    write_image(tmp_path / "out.png", Image(_marked()))
    write_image(tmp_path / "out.png", Image(_marked()))  # replacing works too
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_written_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    write_image(tmp_path / "out.png", Image(_marked()))
    assert stat.S_IMODE((tmp_path / "out.png").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])  # Pillow, then OpenCV (16-bit colour)
def test_failed_encoding_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: type) -> None:
    monkeypatch.setattr(PIL.Image.Image, "save", _must_not_decode)
    monkeypatch.setattr(cv2, "imencode", lambda *_: (False, None))
    with pytest.raises(ImageError, match=r"out\.png: could not encode the image as \.png"):
        write_image(tmp_path / "out.png", Image(_marked().astype(dtype)))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_encoding_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(PIL.Image.Image, "save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", Image(_marked()))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_the_old_file_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _file(tmp_path, "out.png", b"old")
    temps = []

    def replace(src: str, dst: str) -> None:
        temps.append(Path(src).name)
        assert Path(src).exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_image(out, Image(_marked()))
    assert temps[0].startswith(".out.png.") and temps[0].endswith(".tmp")
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_write_refuses_bad_targets(tmp_path: Path) -> None:
    image = Image(_marked())
    with pytest.raises(ImageError, match="does not exist"):
        write_image(tmp_path / "missing" / "out.png", image)
    with pytest.raises(ImageError, match="unsupported file type '.gif'"):
        write_image(tmp_path / "out.gif", image)
    with pytest.raises(ImageError, match="quality must be 1-100"):
        write_image(tmp_path / "out.jpg", image, quality=0)
    with pytest.raises(ImageError, match="float64"):
        write_image(tmp_path / "out.png", Image(np.zeros((2, 2, 3))))
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(ImageError, match="cannot write"):
        write_image(tmp_path / "taken.png", image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]


# --- paths --------------------------------------------------------------------------------------


def test_output_path_for() -> None:
    assert output_path_for(Path("in/photo.JPG")) == Path("in/photo_derained.JPG")
    assert output_path_for(Path("in/a.b.jpg"), "_x") == Path("in/a.b_x.jpg")
    assert output_path_for(Path("photo.jpg"), ext="png") == Path("photo_derained.png")
    assert output_path_for(Path("photo.jpg"), "", ".TIF") == Path("photo.tif")
    with pytest.raises(ImageError, match="unsupported output format 'gif'"):
        output_path_for(Path("photo.jpg"), ext="gif")


def test_is_image_path() -> None:
    assert all(is_image_path(Path(f"x{ext.upper()}")) for ext in IMAGE_EXTENSIONS)
    assert not is_image_path(Path("x.gif")) and not is_image_path(Path("jpg"))


def test_library_pixel_limits_are_lifted() -> None:
    assert int(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"]) > DEFAULT_MAX_PIXELS
    assert PIL.Image.MAX_IMAGE_PIXELS is None  # read_image applies max_pixels instead
