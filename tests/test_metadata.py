"""Photos keep what makes them theirs: colour profile, EXIF (camera, date, GPS), XMP and DPI.

The inputs are made here by Pillow (and pillow-heif for HEIC) the way cameras and phones store
them, sideways with an orientation tag; every guarantee is checked on the written file.
"""

from __future__ import annotations

import io
import re
import struct
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import PIL.ImageFile
import PIL.PngImagePlugin
import PIL.TiffImagePlugin
import pytest
import tifffile
import tifftools
from PIL import ExifTags, ImageCms, features

import derain.imageio
from derain.engine import Derainer
from derain.files import clean_file
from derain.imageio import HEIF_HINT, Image, ImageError, read_image, write_image
from derain.metadata import KEEPS

from . import test_cli
from .test_cli import assert_fails, assert_ok, files_under, run

model = test_cli.model  # the fixture: the tiny model on the CPU

ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
    'tiff:Orientation="6" dc:creator="Zoë Ångström"/></rdf:RDF></x:xmpmeta>'
).encode()
GPS = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 7.0)}
CAMERA = {271: "Apple", 272: "iPhone 15 Pro", 306: "2024:05:06 07:08:09"}  # Make, Model, DateTime
EXPOSURE = PIL.TiffImagePlugin.IFDRational(1, 120)  # ExposureTime, in the EXIF sub-IFD, a RATIONAL as cameras write
STORED = (24, 16)  # width, height as stored: sideways, so the upright photo is 16×24


def _pixels(dtype: type = np.uint8) -> np.ndarray:
    """RGB, a bright block in the stored top-left corner: its place shows the orientation applied."""
    rgb = np.full((STORED[1], STORED[0], 3), 40 * (257 if dtype == np.uint16 else 1), dtype)
    rgb[:6, :10] = np.iinfo(dtype).max
    return rgb


def _exif(orientation: int = 6) -> PIL.Image.Exif:
    exif = PIL.Image.Exif()
    exif.update({**CAMERA, 274: orientation})
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub.update({0x829A: EXPOSURE, 0x9003: CAMERA[306], 0xA002: STORED[0], 0xA003: STORED[1]})
    sub[0xA005] = {1: "R98"}  # a sub-IFD of the EXIF IFD: DCF's interoperability index
    exif.get_ifd(ExifTags.IFD.GPSInfo).update(GPS)
    return exif


def _with_thumbnail(exif: bytes, thumbnail: bytes) -> bytes:
    """Link an IFD1 holding a JPEG thumbnail after IFD0, as cameras do (Pillow never writes one)."""
    assert exif[:2] == b"MM"  # Pillow's own byte order
    (count,) = struct.unpack_from(">H", exif, 8)
    link = 8 + 2 + 12 * count
    ifd1 = len(exif)
    entries = struct.pack(">HHII", 0x0201, 4, 1, ifd1 + 30) + struct.pack(">HHII", 0x0202, 4, 1, len(thumbnail))
    return exif[:link] + struct.pack(">I", ifd1) + exif[link + 4 :] + b"\0\x02" + entries + b"\0" * 4 + thumbnail


THUMBNAIL = cv2.imencode(".jpg", np.full((4, 6, 3), 99, np.uint8))[1].tobytes()


def _phone_jpeg(path: Path) -> Path:
    exif = _with_thumbnail(_exif().tobytes()[6:], THUMBNAIL)
    PIL.Image.fromarray(_pixels()).save(
        path, quality=95, icc_profile=ICC, exif=b"Exif\0\0" + exif, xmp=XMP, dpi=(72, 72)
    )
    with PIL.Image.open(path) as made:
        assert made.getexif().get_ifd(ExifTags.IFD.IFD1)[0x0202] == len(THUMBNAIL)  # the fixture is what it claims
    return path


@pytest.fixture
def derainer(tiny_weights: Path) -> Derainer:
    return Derainer(tiny_weights, device="cpu")


def assert_kept(path: Path, keeps: frozenset[str] = KEEPS["JPEG"], size: tuple[int, int] = (16, 24)) -> None:
    """The written file is upright and carries what its format can: profile, EXIF, XMP, DPI."""
    with PIL.Image.open(path) as out:
        assert out.size == size
        assert out.info.get("icc_profile") == (ICC if "icc" in keeps else None)
        exif = out.getexif()
        if "exif" in keeps:
            assert {tag: exif.get(tag) for tag in CAMERA} == CAMERA and exif.get(274, 1) == 1
            assert dict(exif.get_ifd(ExifTags.IFD.GPSInfo)) == GPS
            sub = exif.get_ifd(ExifTags.IFD.Exif)
            assert (sub[0xA002], sub[0xA003]) == size and sub[0x9003] == CAMERA[306]
            assert float(sub[0x829A]) == pytest.approx(1 / 120)
            assert 0xA005 not in sub or exif.get_ifd(ExifTags.IFD.Interop)[1] == "R98", "no pointer to nowhere"
            assert not exif.get_ifd(ExifTags.IFD.IFD1), "the old thumbnail still shows the drops"
        else:
            assert not exif.get_ifd(ExifTags.IFD.GPSInfo)
        xmp = (out.info.get("xmp") or b"").decode()
        assert ("Zoë Ångström" in xmp) == ("xmp" in keeps)
        assert 'tiff:Orientation="6"' not in xmp  # XMP too says the pixels are upright
        if "dpi" in keeps:
            assert np.allclose(out.info["dpi"], 72, atol=0.01)
    assert THUMBNAIL not in path.read_bytes()


# --- the phone photo ----------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".jpg", ".png", ".tif", ".webp"])
def test_phone_jpeg_keeps_its_metadata_in_every_format(tmp_path: Path, derainer: Derainer, ext: str) -> None:
    src = _phone_jpeg(tmp_path / "IMG_0042.jpg")
    clean_file(derainer, src, tmp_path / f"out{ext}")
    assert_kept(tmp_path / f"out{ext}", KEEPS[derain.imageio._FORMAT_OF[ext]])
    image = read_image(tmp_path / f"out{ext}")
    assert image.rgb[:10, -6:].min() > 128, "upright: the block stored top-left is now top-right"


def test_metadata_survives_a_second_pass(tmp_path: Path, derainer: Derainer) -> None:
    clean_file(derainer, _phone_jpeg(tmp_path / "a.jpg"), tmp_path / "b.jpg")
    clean_file(derainer, tmp_path / "b.jpg", tmp_path / "c.jpg")
    assert_kept(tmp_path / "c.jpg")


def test_clean_file_takes_plain_strings_as_the_readme_does(
    tmp_path: Path, derainer: Derainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _phone_jpeg(tmp_path / "a.jpg")
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    clean_file(derainer, "a.jpg", "out/b.jpg", overlay="out/b_overlay.png")
    assert_kept(tmp_path / "out" / "b.jpg")
    assert read_image(tmp_path / "out" / "b_overlay.png").rgb.shape == (24, 16, 3)
    with pytest.raises(ImageError, match="refusing to overwrite the input"):
        clean_file(derainer, "a.jpg", "out/../a.jpg")


def test_strip_metadata(tmp_path: Path, derainer: Derainer) -> None:
    clean_file(derainer, _phone_jpeg(tmp_path / "a.jpg"), tmp_path / "out.jpg", keep_metadata=False)
    with PIL.Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (16, 24)  # still upright
        assert "icc_profile" not in out.info and "xmp" not in out.info and not out.getexif()
    assert b"Apple" not in (tmp_path / "out.jpg").read_bytes()


def test_png_with_iccp_and_exif_chunks(tmp_path: Path, derainer: Derainer) -> None:
    src = tmp_path / "shot.png"
    PIL.Image.fromarray(_pixels()).save(src, icc_profile=ICC, exif=_exif(), dpi=(72, 72))
    assert b"iCCP" in src.read_bytes() and b"eXIf" in src.read_bytes()
    clean_file(derainer, src, tmp_path / "out.png")
    assert_kept(tmp_path / "out.png", KEEPS["PNG"] - {"xmp"})


def _16bit_tiff(path: Path, exif: PIL.Image.Exif) -> Path:
    """A sideways 16-bit RGB TIFF as raw converters write it: profile, XMP, DPI and EXIF with its sub-IFDs.

    tifffile writes no EXIF, so tifftools adds the EXIF block's IFD, sub-IFDs included.
    """
    tiff = io.BytesIO()
    tifffile.imwrite(
        tiff, _pixels(np.uint16), photometric="rgb", iccprofile=ICC, resolution=(72, 72), resolutionunit="INCH",
        extratags=[(700, 1, len(XMP), XMP, True)], metadata=None,
    )  # fmt: skip
    info = tifftools.read_tiff(io.BytesIO(tiff.getvalue()))
    info["ifds"][0]["tags"].update(tifftools.read_tiff(io.BytesIO(exif.tobytes()[6:]))["ifds"][0]["tags"])
    tifftools.write_tiff(info, path)  # (without an Interop sub-IFD: tifftools would copy its pointer as a number)
    with PIL.Image.open(path) as made:  # the fixture is what it claims
        assert made.size == (16, 24) and dict(made.getexif().get_ifd(ExifTags.IFD.GPSInfo)) == GPS
    return path


def _exif_without_interop() -> PIL.Image.Exif:
    exif = _exif()
    del exif.get_ifd(ExifTags.IFD.Exif)[0xA005]
    return exif


def test_16bit_tiff_with_a_profile(tmp_path: Path, derainer: Derainer) -> None:
    src = _16bit_tiff(tmp_path / "scan.tif", _exif_without_interop())
    clean_file(derainer, src, tmp_path / "out.tif")
    out = read_image(tmp_path / "out.tif")
    assert out.rgb.dtype == np.uint16 and out.size == (16, 24) and out.rgb[:10, -6:].min() > 32768, "16-bit, upright"
    assert_kept(tmp_path / "out.tif", KEEPS["TIFF"])
    with tifffile.TiffFile(tmp_path / "out.tif") as written:  # a second reader: the tags where TIFF puts them
        tags = written.pages[0].tags
        assert written.pages[0].dtype == np.uint16 and written.pages[0].shape == (24, 16, 3)
        assert tags["InterColorProfile"].value == ICC and tags["Orientation"].value == 1
        assert tags["ExifTag"].value["ExposureTime"] == (1, 120)
        gps = tags["GPSTag"].value
        assert (gps["GPSLatitudeRef"], gps["GPSLatitude"]) == ("N", (48, 1, 51, 1, 24, 1))
        assert (gps["GPSLongitudeRef"], gps["GPSLongitude"]) == ("E", (2, 1, 21, 1, 7, 1))
    clean_file(derainer, src, tmp_path / "out.jpg")  # and into an 8-bit format
    assert_kept(tmp_path / "out.jpg")


def test_16bit_tiff_strip_metadata(tmp_path: Path, derainer: Derainer) -> None:
    src = _16bit_tiff(tmp_path / "scan.tif", _exif_without_interop())
    clean_file(derainer, src, tmp_path / "out.tif", keep_metadata=False)
    with tifffile.TiffFile(tmp_path / "out.tif") as written:
        assert written.pages[0].dtype == np.uint16 and written.pages[0].shape == (24, 16, 3)
        assert not {"ExifTag", "GPSTag", "InterColorProfile", "XMP", "Make"} & set(written.pages[0].tags.keys())


@pytest.mark.parametrize("ext", [".png", ".tif"])  # OpenCV and tifffile encode these, not Pillow
def test_16bit_colour_output_keeps_the_phone_metadata(tmp_path: Path, ext: str) -> None:
    metadata = read_image(_phone_jpeg(tmp_path / "a.jpg")).metadata
    pixels = np.rot90(_pixels(np.uint16), -1).copy()
    pixels[0, 0] = (1, 2, 65534)  # values no 8-bit file holds
    write_image(tmp_path / f"out{ext}", Image(pixels, metadata=metadata))
    assert np.array_equal(read_image(tmp_path / f"out{ext}").rgb, pixels)
    assert_kept(tmp_path / f"out{ext}", KEEPS[derain.imageio._FORMAT_OF[ext]])


def test_xmp_too_large_for_jpeg_is_left_out_not_the_photo(tmp_path: Path) -> None:
    src = tmp_path / "edited.png"
    big = XMP.replace(b"</rdf:RDF>", b"<!--" + b"history " * 9000 + b"--></rdf:RDF>")  # 72 kB: over a JPEG segment
    PIL.Image.fromarray(_pixels()).save(src, icc_profile=ICC, exif=_exif(), pnginfo=_png_xmp(big))
    image = read_image(src)
    assert image.metadata.xmp == big.replace(b'Orientation="6"', b'Orientation="1"')
    write_image(tmp_path / "out.jpg", image)
    write_image(tmp_path / "out.png", image)
    assert_kept(tmp_path / "out.jpg", KEEPS["JPEG"] - {"xmp", "dpi"})
    assert_kept(tmp_path / "out.png", KEEPS["PNG"] - {"dpi"})


def _png_xmp(xmp: bytes) -> PIL.PngImagePlugin.PngInfo:
    info = PIL.PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    return info


def test_8bit_tiff_keeps_exif_sub_ifds_and_xmp(tmp_path: Path, derainer: Derainer) -> None:
    src = tmp_path / "a.tif"
    exif = _exif()
    tiffinfo = {**exif, 34665: exif.get_ifd(34665), 34853: exif.get_ifd(34853), 700: XMP}
    PIL.Image.fromarray(_pixels()).save(src, tiffinfo=tiffinfo, icc_profile=ICC, dpi=(72, 72))
    clean_file(derainer, src, tmp_path / "out.tif")
    assert_kept(tmp_path / "out.tif", KEEPS["TIFF"])


# --- HEIC and AVIF ------------------------------------------------------------------------------


@pytest.fixture
def heic(tmp_path: Path) -> Path:
    """An iPhone-style HEIC: the rotation in the container (pillow-heif takes it from XMP), profile, EXIF, GPS."""
    pytest.importorskip("pillow_heif")
    assert derain.imageio._heif_available()
    path = tmp_path / "in" / "IMG_0042.HEIC"
    path.parent.mkdir()
    PIL.Image.fromarray(_pixels()).save(path, "HEIF", quality=90, icc_profile=ICC, exif=_exif(), xmp=XMP)
    with PIL.Image.open(path) as made:
        assert made.size == (16, 24)  # libheif applies the container's rotation
    return path


@pytest.mark.parametrize("ext", [".heic", ".jpg"])
def test_heic_photo_goes_through_clean(tmp_path: Path, heic: Path, derainer: Derainer, ext: str) -> None:
    clean_file(derainer, heic, tmp_path / f"out{ext}")
    assert_kept(tmp_path / f"out{ext}", KEEPS["HEIF" if ext == ".heic" else "JPEG"] - {"dpi"})
    assert read_image(tmp_path / f"out{ext}").rgb[:10, -6:].min() > 128, "upright"


def test_heic_photo_goes_through_batch(tmp_path: Path, heic: Path, model: list[str]) -> None:
    assert_ok(run("batch", heic.parent, "-o", tmp_path / "clean", *model))
    assert files_under(tmp_path / "clean") == {"IMG_0042.HEIC"}
    assert_kept(tmp_path / "clean" / "IMG_0042.HEIC", KEEPS["HEIF"])


def test_heic_without_pillow_heif_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(derain.imageio, "_heif_available", lambda: False)
    (tmp_path / "a.heic").write_bytes(b"\0\0\0\x18ftypheic")
    with pytest.raises(ImageError, match=r"a\.heic: HEIC/HEIF images need pillow-heif: pip install \"derain\[heif\]\""):
        read_image(tmp_path / "a.heic")
    with pytest.raises(ImageError, match=r"out\.heic: .*" + HEIF_HINT.split(":")[0]):
        write_image(tmp_path / "out.heic", Image(_pixels()))


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF")
def test_avif_round_trip_keeps_metadata(tmp_path: Path, derainer: Derainer) -> None:
    clean_file(derainer, _phone_jpeg(tmp_path / "a.jpg"), tmp_path / "out.avif")
    assert_kept(tmp_path / "out.avif", KEEPS["AVIF"])
    assert read_image(tmp_path / "out.avif").size == (16, 24)


# --- several frames -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["TIFF", "WEBP"])
def test_multi_frame_files_are_refused_in_one_line(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"pages.{fmt.lower()}"
    frames = [PIL.Image.fromarray(_pixels()), PIL.Image.fromarray(255 - _pixels())]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match=r"pages\.\w+: has 2 frames \(multi-page or animated\)"):
        read_image(path)


def test_phone_mpo_reads_its_first_frame(tmp_path: Path) -> None:
    """Phones store a depth map or preview after the photo (MPO); the photo is the first frame."""
    path = tmp_path / "portrait.jpg"
    frames = [PIL.Image.fromarray(_pixels()), PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8))]
    frames[0].save(path, "MPO", save_all=True, append_images=frames[1:], exif=_exif())
    with PIL.Image.open(path) as made:
        assert made.format == "MPO" and made.n_frames == 2
    assert read_image(path).size == (16, 24)


# --- command line -------------------------------------------------------------------------------


def test_cli_strip_metadata(tmp_path: Path, model: list[str]) -> None:
    (tmp_path / "in").mkdir()
    src = _phone_jpeg(tmp_path / "in" / "a.jpg")
    assert_ok(run("clean", src, "-o", tmp_path / "kept.jpg", *model))
    assert_kept(tmp_path / "kept.jpg")
    assert_ok(run("clean", src, "-o", tmp_path / "bare.jpg", "--strip-metadata", *model))
    assert_ok(run("batch", tmp_path / "in", "-o", tmp_path / "out", "--strip-metadata", *model))
    for bare in (tmp_path / "bare.jpg", tmp_path / "out" / "a.jpg"):
        with PIL.Image.open(bare) as out:
            assert out.size == (16, 24) and not out.getexif() and "icc_profile" not in out.info


def test_batch_attention_writes_overlays_beside_the_outputs(tmp_path: Path, model: list[str]) -> None:
    for name in ("a.jpg", "sub/b.png"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(_pixels()).save(tmp_path / "in" / name)
    assert_ok(run("batch", tmp_path / "in", "-o", tmp_path / "out", *model))
    assert files_under(tmp_path / "out") == {"a.jpg", "sub/b.png"}
    result = run("batch", tmp_path / "in", "-o", tmp_path / "out", "--attention", *model)
    assert_ok(result)  # outputs without their overlay are redone, not skipped
    assert "2 done, 0 skipped" in result.output
    assert files_under(tmp_path / "out") == {"a.jpg", "a_overlay.png", "sub/b.png", "sub/b_overlay.png"}
    with PIL.Image.open(tmp_path / "out" / "sub" / "b_overlay.png") as overlay:
        assert overlay.mode == "RGB" and overlay.size == STORED
    assert "0 done, 2 skipped" in run("batch", tmp_path / "in", "-o", tmp_path / "out", "--attention", *model).output


def test_batch_attention_reports_an_overlay_name_taken_by_an_input(tmp_path: Path, model: list[str]) -> None:
    (tmp_path / "in").mkdir()
    for name in ("a.png", "a_overlay.png"):
        PIL.Image.fromarray(_pixels()).save(tmp_path / "in" / name)
    result = run("batch", tmp_path / "in", "-o", tmp_path / "out", "--attention", *model)
    assert result.exit_code == 1 and "its output a_overlay.png is already taken by a.png" in result.output


def test_clean_a_folder_suggests_batch(tmp_path: Path, model: list[str]) -> None:
    (tmp_path / "my photos").mkdir()
    assert_fails(run("clean", tmp_path / "my photos", *model), 1, "is a folder", f"derain batch '{tmp_path}/my photos'")


def test_clean_makes_the_output_folder(tmp_path: Path, model: list[str]) -> None:
    src = _phone_jpeg(tmp_path / "a.jpg")
    assert_ok(run("clean", src, "-o", tmp_path / "new" / "sub" / "out.jpg", *model))
    assert_kept(tmp_path / "new" / "sub" / "out.jpg")


def test_broken_weights_file_says_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "gen.pkl").write_bytes(b"hello, world\n")
    src = tmp_path / "a.png"
    PIL.Image.fromarray(_pixels()).save(src)
    error = assert_fails(run("clean", src, "--weights", tmp_path / "gen.pkl", "--device", "cpu"), 2)
    assert "gen.pkl: not a loadable weights file (neither a PyTorch nor a safetensors file)" in error
    assert not re.search(r"\(\d+\)", error), "an internal number is no reason"


def test_jpeg_pixels_are_decoded_once_by_opencv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow reads only the header and metadata of a JPEG; OpenCV, faster on large photos, decodes it."""
    src = _phone_jpeg(tmp_path / "a.jpg")
    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", lambda self: pytest.fail("Pillow decoded the pixels"))
    image = read_image(src)
    assert image.size == (16, 24) and image.metadata.icc_profile == ICC and image.metadata.dpi == (72.0, 72.0)
