"""What makes a photo its photographer's: colour profile, EXIF, XMP and DPI, from header to encoder.

Read from Pillow's lazy view of a file (no pixel decoded), made true of pixels that are written
upright (orientation 1, the output's pixel size, no stale thumbnail, none of a TIFF source's
layout tags), and handed to each encoder in the form it takes. README.md's table says which
output format keeps what; `KEEPS` is that table.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from dataclasses import dataclass, replace
from typing import Any

from PIL import ExifTags, PngImagePlugin
from PIL import Image as PILImage

# What each output carries, at any bit depth. Pillow writes every format it can hold; it has no
# 16-bit colour mode, so 16-bit colour PNGs are encoded by OpenCV with Pillow's metadata chunks
# spliced in, and 16-bit colour TIFFs by tifffile with the EXIF added by tifftools (tifffile
# writes no EXIF or GPS sub-IFD).
KEEPS: dict[str, frozenset[str]] = {
    "JPEG": frozenset({"icc", "exif", "xmp", "dpi"}),
    "PNG": frozenset({"icc", "exif", "xmp", "dpi"}),
    "TIFF": frozenset({"icc", "exif", "xmp", "dpi"}),
    "WEBP": frozenset({"icc", "exif", "xmp"}),
    "HEIF": frozenset({"icc", "exif", "xmp"}),
    "AVIF": frozenset({"icc", "exif", "xmp"}),
    "BMP": frozenset(),
}

ORIENTATION = ExifTags.Base.Orientation
_SUB_IFDS = (ExifTags.IFD.Exif, ExifTags.IFD.GPSInfo)
_PIXEL_SIZE_TAGS = (ExifTags.Base.ExifImageWidth, ExifTags.Base.ExifImageHeight)
# Tags that say how a TIFF stores its pixels (Pillow hands a TIFF's own first IFD over as its
# EXIF) or that travel on their own (XMP, IPTC, Photoshop, ICC): never part of an output's EXIF.
_LAYOUT_TAGS = frozenset({254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284})
_LAYOUT_TAGS |= frozenset({317, 320, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347, 513, 514, 530})
_LAYOUT_TAGS |= frozenset({700, 33723, 34377, 34675})
_XMP_ORIENTATION = re.compile(rb'(tiff:Orientation(?:="|>))[2-8]')
_PNG_CHUNKS = frozenset({b"iCCP", b"pHYs", b"iTXt", b"eXIf"})
_JPEG_SEGMENT = 65533  # EXIF and XMP must each fit one JPEG segment (XMP after its 29-byte namespace)


@dataclass(frozen=True)
class Metadata:
    """Ready to write with upright pixels: EXIF orientation is already 1."""

    icc_profile: bytes | None = None  # byte for byte as read
    exif: bytes | None = None  # TIFF-structured, without the thumbnail (IFD1) or layout tags
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None


def read_exif(header: PILImage.Image) -> PILImage.Exif:
    """The parsed EXIF, empty if missing or malformed: bad metadata must not cost a photo."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exif = header.getexif()
            for tag in _SUB_IFDS:  # parse now, so that a broken block is dropped here, not when writing
                exif.get_ifd(tag)
            exif.tobytes()
    except Exception:  # Pillow raises many types on corrupt EXIF
        return PILImage.Exif()
    return exif


def from_header(header: PILImage.Image, exif: PILImage.Exif) -> Metadata:
    """What an output of this file should carry; `exif` (from :func:`read_exif`) is cleaned in place."""
    info = header.info
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode()
    dpi = info.get("dpi")
    return Metadata(
        icc_profile=info.get("icc_profile") or None,
        exif=_clean_exif(exif),
        xmp=_XMP_ORIENTATION.sub(rb"\g<1>1", xmp) if xmp else None,  # pixels are upright: say so in XMP too
        dpi=(float(dpi[0]), float(dpi[1])) if dpi and min(dpi) > 1 else None,  # Pillow says 1 for "unknown" in TIFF
    )


def _clean_exif(exif: PILImage.Exif) -> bytes | None:
    """Orientation 1 and no layout tags; serialising through Pillow also drops the thumbnail (IFD1)."""
    if not exif:
        return None
    for tag in _LAYOUT_TAGS & exif.keys():
        del exif[tag]
    if ORIENTATION in exif:
        exif[ORIENTATION] = 1
    return exif.tobytes()[6:]  # without the "Exif\0\0" of JPEG's APP1


def _parsed(exif: bytes) -> PILImage.Exif:
    parsed = PILImage.Exif()
    parsed.load(exif)
    return parsed


def for_output(metadata: Metadata | None, width: int, height: int) -> Metadata | None:
    """The metadata with EXIF's pixel-size tags set to what is written."""
    if metadata is None or metadata.exif is None:
        return metadata
    exif = _parsed(metadata.exif)
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    for tag, value in zip(_PIXEL_SIZE_TAGS, (width, height)):
        if tag in sub:
            sub[tag] = value
    return replace(metadata, exif=exif.tobytes()[6:])


def pillow_options(metadata: Metadata | None, fmt: str) -> dict[str, Any]:
    """Keyword arguments for Pillow's `save` in format `fmt`."""
    keeps = KEEPS[fmt] if metadata is not None else frozenset()
    wanted = {
        "icc_profile": "icc" in keeps and metadata.icc_profile,
        "dpi": "dpi" in keeps and metadata.dpi,
        "exif": "exif" in keeps and metadata.exif and b"Exif\0\0" + metadata.exif,
        "xmp": "xmp" in keeps and metadata.xmp,
    }
    # A block too large for one JPEG segment (from a PNG or TIFF) is left out rather than cost the photo.
    limits = {"exif": _JPEG_SEGMENT, "xmp": _JPEG_SEGMENT - 29} if fmt == "JPEG" else {}
    options = {key: value for key, value in wanted.items() if value and len(value) <= limits.get(key, len(value))}
    if fmt == "PNG" and "xmp" in options:  # Pillow writes PNG's XMP only as an iTXt text chunk
        options["pnginfo"] = PngImagePlugin.PngInfo()
        options["pnginfo"].add_itxt("XML:com.adobe.xmp", options.pop("xmp").decode("utf-8", "replace"))
    if fmt == "TIFF":  # Pillow's TIFF writer drops EXIF's sub-IFDs unless they come as nested tags
        options["tiffinfo"] = _tiff_tags(metadata.exif if "exif" in options else None, options.pop("xmp", None))
        options.pop("exif", None)
    return options


def _tiff_tags(exif_block: bytes | None, xmp: bytes | None) -> dict[int, Any]:
    tags: dict[int, Any] = {700: xmp} if xmp else {}
    if exif_block:
        exif = _parsed(exif_block)
        tags |= {tag: value for tag, value in exif.items() if tag not in _SUB_IFDS}
        tags |= {tag: dict(sub) for tag in _SUB_IFDS if (sub := exif.get_ifd(tag))}
        interop = exif.get_ifd(ExifTags.IFD.Interop)
        if interop and ExifTags.IFD.Exif in tags:
            tags[ExifTags.IFD.Exif][ExifTags.IFD.Interop] = dict(interop)
    return tags


def png_chunks(metadata: Metadata | None) -> bytes:
    """The PNG chunks that carry the metadata (profile, DPI, XMP, EXIF), as Pillow writes them, for
    another encoder's PNG: they may follow its IHDR directly."""
    if metadata is None:
        return b""
    chunks = PngImagePlugin.getchunks(PILImage.new("L", (1, 1)), **pillow_options(metadata, "PNG"))
    return b"".join(struct.pack(">I", len(data)) + cid + data + crc for cid, data, crc in chunks if cid in _PNG_CHUNKS)


def tifffile_options(metadata: Metadata | None) -> dict[str, Any]:
    """Keyword arguments for tifffile: profile, DPI and XMP; the EXIF follows in :func:`with_tiff_exif`."""
    metadata = metadata or Metadata()
    return {
        "iccprofile": metadata.icc_profile,
        "resolution": metadata.dpi,
        "resolutionunit": "INCH" if metadata.dpi else None,
        "extratags": [(700, 1, len(metadata.xmp), metadata.xmp, True)] if metadata.xmp else [],
        "software": False,  # the photo's own Software tag, if any, comes with the EXIF
    }


def with_tiff_exif(tiff: bytes, metadata: Metadata | None) -> bytes:
    """A one-image TIFF with the EXIF's tags added to its IFD, the exposure (Exif) and GPS sub-IFDs included.

    The EXIF block is itself a little TIFF, so tifftools reads both and writes the merged IFD
    (copying the pixel strips as they are). The Interop sub-IFD is left out: it names the DCF
    rules a camera's JPEG follows, and tifftools would copy its pointer as a plain number.
    """
    if metadata is None or metadata.exif is None:
        return tiff
    import tifftools  # pure Python, but 40 ms to import: only for 16-bit colour TIFFs

    parsed = _parsed(metadata.exif)
    parsed.get_ifd(ExifTags.IFD.Exif).pop(ExifTags.IFD.Interop, None)
    image = tifftools.read_tiff(io.BytesIO(tiff))
    exif = tifftools.read_tiff(io.BytesIO(parsed.tobytes()[6:]))
    ifd = image["ifds"][0]
    ifd["tags"] = exif["ifds"][0]["tags"] | ifd["tags"]  # tifffile's own (layout, profile, DPI, XMP) win
    out = io.BytesIO()
    tifftools.write_tiff(image, out)
    return out.getvalue()
