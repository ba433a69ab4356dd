"""Overlay planes (60xx): read them from a header, turn them into per-frame masks, burn them in.

PS3.3 C.9.2 (Overlay Plane module) and C.9.3 (Multi-frame Overlay module):
up to 16 overlays in the even groups 6000-601E, each a 1-bit plane of Overlay
Rows x Overlay Columns (60xx,0010/0011) placed at Overlay Origin (60xx,0050,
row and column of its first pixel, **1-based**, may be < 1 or run past the
image: only the part inside is drawn), of Overlay Type (60xx,0040) ``G``
(graphics: annotations, text) or ``R`` (a region of interest). The bits are in
Overlay Data (60xx,3000), packed little-endian (pixel *i* is bit ``i % 16`` of
16-bit word ``i // 16``, PS3.5 8.1.2), frame after frame.

Multi-frame overlays (C.9.3): Number of Frames in Overlay (60xx,0015) frames of
bits, the first drawn on image frame Image Frame Origin (60xx,0051, 1-based,
default 1) and the next ones on the frames after it; an overlay without Number
of Frames in Overlay applies to every frame of the image (CP-1974).

Embedded overlays (retired since 2004, still written by old modalities): no
Overlay Data; the plane is bit Overlay Bit Position (60xx,0102) of each stored
pixel value, a bit above (or below) the Bits Stored ones. pydicom masks pixel
values to Bits Stored while decoding (so does :mod:`hilum.dicom.stack_load`'s
native reader), so the bit is read from the raw frame bytes when a frame with
such a plane is first drawn (:func:`read_native_frame`, native transfer syntaxes
only, as DCMTK does); nothing is added to the load path of the other 99.9% of
images.

Every size read from the file is checked before anything is allocated: the
plane's bits (rows x columns x frames) must fit in the Overlay Data read, an
embedded plane must fit in the image frame, and a mask is only ever made for
the part of a plane inside the image. A malformed plane is left out with a
logged warning; the image is still shown.

Display (:func:`composite`), as DCMTK's ``dcmj2pnm`` does by default
(``dcmimgle`` ``DiMonoOutputPixelTemplate::overlay``, overlay mode "Replace" for
graphics, "Region of Interest" for ROI overlays): after the whole grayscale
transform, on the 8-bit display values, a graphics overlay's set bits become
the maximum display value (255, white, also on a MONOCHROME1 or inverted
image), and inside an ROI overlay's rectangle the pixels *outside* the region
are darkened to a sixteenth (``v >> 4``), so the region stands out. Planes are
drawn in group order. Colour images get the same (white, darkened), which DCMTK
does not draw at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from hilum.dicom.pixels_lut import TableCache, is_little_endian

__all__ = [
    "OVERLAY_GROUPS",
    "OverlayLayer",
    "OverlayPlane",
    "composite",
    "frame_layers",
    "overlay_planes",
    "read_native_frame",
]

logger = logging.getLogger(__name__)

OVERLAY_GROUPS = tuple(range(0x6000, 0x6020, 2))
"""The 16 repeating groups of the Overlay Plane module (PS3.3 C.9.2: even groups 6000-601E)."""

_ROWS_TAGS = tuple((g << 16) | 0x0010 for g in OVERLAY_GROUPS)
_NATIVE = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian),
           str(DeflatedExplicitVRLittleEndian)}  # fmt: skip
ROI_DIM_SHIFT = 4
"""ROI overlays darken the pixels outside the region by this right shift (DCMTK: half the output bits)."""


class _Malformed(ValueError):
    """An overlay plane that cannot be drawn (the reason is logged)."""


@dataclass(frozen=True, eq=False)
class OverlayPlane:
    """One overlay group of a header, checked, its bits not unpacked yet (see the module docstring).

    ``top``/``left`` are the 0-based image row/column of the plane's first pixel
    (Overlay Origin minus one); ``first_frame`` is the 0-based image frame its
    first overlay frame is drawn on. ``data`` is the Overlay Data in
    little-endian byte order, None for a plane embedded in the pixel data's
    bit ``bit_position``. Compared by identity (a cache key of its masks).
    """

    group: int
    rows: int
    columns: int
    top: int = 0
    left: int = 0
    roi: bool = False
    frames: int = 1
    multiframe: bool = False
    first_frame: int = 0
    data: bytes | None = None
    bit_position: int = 0
    label: str = ""
    description: str = ""

    @property
    def embedded(self) -> bool:
        return self.data is None

    def overlay_frame(self, image_frame: int) -> int | None:
        """The 0-based overlay frame drawn on 0-based *image_frame*, None when the plane skips it."""
        if not self.multiframe:
            return 0
        k = image_frame - self.first_frame
        return k if 0 <= k < self.frames else None


@dataclass(frozen=True)
class OverlayLayer:
    """The part of one plane inside an image frame, ready to draw.

    ``mask[i, j]`` is the plane's bit at image row ``top + i``, column ``left + j``
    (``top``/``left`` >= 0; the mask lies wholly inside the image).
    """

    mask: np.ndarray
    top: int
    left: int
    roi: bool = False
    group: int = 0x6000


# --------------------------------------------------------------------------- parsing


def _element(ds: Dataset, tag: int) -> Any:
    elem = ds.get(tag)
    return None if elem is None else elem.value


def _first(value: Any) -> Any:
    if isinstance(value, (list, tuple, MultiValue)):
        return value[0] if len(value) else None
    return value


def _int(ds: Dataset, tag: int, name: str, default: int | None = None) -> int:
    value = _first(_element(ds, tag))
    if value is None or value == "":
        if default is None:
            raise _Malformed(f"no {name}")
        return default
    try:
        return int(float(value)) if isinstance(value, str) else int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _Malformed(f"{name} {value!r} is not a number") from exc


def _text(ds: Dataset, tag: int) -> str:
    value = _first(_element(ds, tag))
    return "" if value is None else str(value).strip()


def _native_pixels(ds: Dataset) -> bool:
    """Whether the pixel data is stored uncompressed (so an embedded plane's bits can be read)."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    return not tsyntax or tsyntax in _NATIVE


def _has_overlay(ds: Dataset) -> bool:
    keys = getattr(ds, "_dict", ds)  # pydicom's element dict: ~1 µs for the 16 look-ups, per header
    return any(tag in keys for tag in _ROWS_TAGS)


def overlay_planes(ds: Dataset, *, source: str = "") -> tuple[OverlayPlane, ...]:
    """The drawable overlay planes of *ds* (a header read with or without pixel data), in group order.

    Cheap when there are none (16 dictionary look-ups). Each plane is checked
    (module docstring); a malformed one is logged with *source* (a file name)
    and left out.
    """
    if not _has_overlay(ds):
        return ()
    planes = []
    for group in OVERLAY_GROUPS:
        if ((group << 16) | 0x0010) not in getattr(ds, "_dict", ds):
            continue
        try:
            planes.append(_plane(ds, group))
        except _Malformed as exc:
            logger.warning("%soverlay %04X left out: %s", f"{source}: " if source else "", group, exc)
        except Exception as exc:  # noqa: BLE001 - hostile input: anything pydicom raises converting a value
            logger.warning("%soverlay %04X left out: unreadable (%s)", f"{source}: " if source else "", group, exc)
    return tuple(planes)


def _plane(ds: Dataset, group: int) -> OverlayPlane:
    tag = group << 16
    rows = _int(ds, tag | 0x0010, "Overlay Rows")
    columns = _int(ds, tag | 0x0011, "Overlay Columns")
    if not (0 < rows <= 0xFFFF and 0 < columns <= 0xFFFF):
        raise _Malformed(f"size {rows} x {columns} (Overlay Rows/Columns must be 1..65535)")
    origin = _element(ds, tag | 0x0050)
    try:
        if origin is None:
            values: list[int] = []
        elif isinstance(origin, (int, float)):
            values = [int(origin)]
        elif isinstance(origin, (bytes, bytearray, str)):
            raise TypeError("not a list of numbers")
        else:
            values = [int(v) for v in origin]
    except (TypeError, ValueError, OverflowError) as exc:
        raise _Malformed(f"Overlay Origin {origin!r} is not two numbers") from exc
    if len(values) < 2:
        logger.info("overlay %04X: Overlay Origin %r incomplete, assuming 1\\1", group, origin)
        values = (values + [1, 1])[:2]
    top, left = values[0] - 1, values[1] - 1
    if not (-0x8000 <= top < 0x8000 and -0x8000 <= left < 0x8000):
        raise _Malformed(f"Overlay Origin {origin!r} out of range")
    multiframe = (tag | 0x0015) in ds
    frames = _int(ds, tag | 0x0015, "Number of Frames in Overlay", 1)
    if frames < 1:
        logger.info("overlay %04X: Number of Frames in Overlay %d, assuming 1", group, frames)
        frames = 1
    first_frame = max(_int(ds, tag | 0x0051, "Image Frame Origin", 1), 1) - 1
    roi = _text(ds, tag | 0x0040).upper() == "R"
    data = _element(ds, tag | 0x3000)
    label, description = _text(ds, tag | 0x1500), _text(ds, tag | 0x0022)
    if data:
        if not isinstance(data, (bytes, bytearray)):
            raise _Malformed(f"Overlay Data is {type(data).__name__}, not bytes")
        bits = _int(ds, tag | 0x0100, "Overlay Bits Allocated", 1)
        if bits != 1:  # DCMTK: separate data is always 1 bit (CP-87)
            logger.info("overlay %04X: Overlay Bits Allocated %d with Overlay Data, assuming 1", group, bits)
        need = -(-rows * columns * frames // 8)
        if need > len(data):
            raise _Malformed(
                f"{rows} x {columns} x {frames} frame(s) need {need} bytes of Overlay Data, it has {len(data)}"
            )
        vr = getattr(ds.get(tag | 0x3000), "VR", "OW")
        if not is_little_endian(ds) and vr == "OW":
            data = np.frombuffer(bytes(data[: len(data) // 2 * 2]), dtype=">u2").astype("<u2").tobytes()
        return OverlayPlane(group, rows, columns, top, left, roi, frames, multiframe, first_frame,
                            bytes(data), 0, label, description)  # fmt: skip
    return _embedded_plane(ds, group, rows, columns, top, left, roi, frames, multiframe, label, description)


def _embedded_plane(ds: Dataset, group: int, rows: int, columns: int, top: int, left: int, roi: bool,
                    frames: int, multiframe: bool, label: str, description: str) -> OverlayPlane:  # fmt: skip
    tag = group << 16
    ba = _int(ds, 0x00280100, "Bits Allocated", 0)
    bs = _int(ds, 0x00280101, "Bits Stored", ba)
    hb = _int(ds, 0x00280102, "High Bit", bs - 1)
    samples = _int(ds, 0x00280002, "Samples per Pixel", 1)
    if ba not in (8, 16, 32) or samples != 1:
        raise _Malformed(f"no Overlay Data, and pixels of {samples} x {ba} bits cannot embed an overlay")
    if not _native_pixels(ds):
        raise _Malformed("no Overlay Data, and the pixel data is compressed (an embedded overlay needs native data)")
    bit = _int(ds, tag | 0x0102, "Overlay Bit Position")
    if not 0 <= bit < ba:
        raise _Malformed(f"Overlay Bit Position {bit} outside the {ba} allocated bits")
    if hb - bs < bit <= hb:
        raise _Malformed(f"Overlay Bit Position {bit} is one of the stored bits ({hb - bs + 1}..{hb})")
    image_rows, image_columns = _int(ds, 0x00280010, "Rows", 0), _int(ds, 0x00280011, "Columns", 0)
    if rows * columns > image_rows * image_columns:
        raise _Malformed(f"embedded plane {rows} x {columns} larger than the {image_rows} x {image_columns} image")
    # DCMTK (supplement 4): an embedded plane's frames are the image's own, from the first
    return OverlayPlane(group, rows, columns, top, left, roi, frames, multiframe, 0, None, bit, label, description)


# --------------------------------------------------------------------------- masks


_MASKS = TableCache(64)


def _clip(plane: OverlayPlane, image_rows: int, image_columns: int) -> tuple[int, int, int, int] | None:
    """Plane rows ``pr0:pr1`` and columns ``pc0:pc1`` that fall inside the image, None if none do."""
    pr0, pc0 = max(0, -plane.top), max(0, -plane.left)
    pr1 = min(plane.rows, image_rows - plane.top)
    pc1 = min(plane.columns, image_columns - plane.left)
    if pr1 <= pr0 or pc1 <= pc0:
        return None
    return pr0, pr1, pc0, pc1


def _separate_mask(plane: OverlayPlane, k: int, pr0: int, pr1: int, pc0: int, pc1: int) -> np.ndarray:
    assert plane.data is not None
    start = (k * plane.rows + pr0) * plane.columns  # bit offsets (bounded: checked against the data's length)
    count = (pr1 - pr0) * plane.columns
    first, last = start // 8, -(-(start + count) // 8)
    bits = np.unpackbits(np.frombuffer(plane.data, dtype=np.uint8, count=last - first, offset=first),
                         bitorder="little")  # fmt: skip
    block = bits[start - first * 8 : start - first * 8 + count].reshape(pr1 - pr0, plane.columns)
    return block[:, pc0:pc1].astype(bool)


def _embedded_mask(plane: OverlayPlane, raw: np.ndarray, pr0: int, pr1: int, pc0: int, pc1: int) -> np.ndarray:
    flat = np.ascontiguousarray(raw).reshape(-1)
    if flat.dtype.kind not in "iu":
        raise _Malformed(f"pixel values of type {flat.dtype} cannot embed an overlay")
    if flat.dtype.kind == "i":  # the bits as written: the same bytes read unsigned
        flat = flat.view(flat.dtype.str.replace("i", "u"))
    n = plane.rows * plane.columns
    if flat.size < n:
        raise _Malformed(f"frame of {flat.size} pixels smaller than the {plane.rows} x {plane.columns} plane")
    block = flat[:n].reshape(plane.rows, plane.columns)[pr0:pr1, pc0:pc1]
    return ((block >> plane.bit_position) & 1).astype(bool)


def frame_layers(
    planes: Sequence[OverlayPlane],
    image_frame: int,
    image_rows: int,
    image_columns: int,
    raw_frame: Callable[[], np.ndarray | None] | None = None,
) -> list[OverlayLayer]:
    """The layers of *planes* drawn on 0-based *image_frame* of an image of that size, in group order.

    *raw_frame* gives the frame's stored values before any masking to Bits
    Stored (:func:`read_native_frame`), called at most once and only for an
    embedded plane; without it embedded planes are left out. Masks are cached
    (64 most recent), so scrolling back and forth unpacks each frame's bits once.
    """
    layers: list[OverlayLayer] = []
    raw: list[np.ndarray | None] = []
    for plane in planes:
        k = plane.overlay_frame(image_frame)
        clip = _clip(plane, image_rows, image_columns)
        if k is None or clip is None:
            continue
        key = (plane, image_frame if plane.embedded else k, image_rows, image_columns)
        mask = _MASKS.get(key)
        if mask is None:
            try:
                if plane.embedded:
                    if not raw:
                        raw.append(raw_frame() if raw_frame is not None else None)
                    if raw[0] is None:
                        continue
                    mask = _embedded_mask(plane, raw[0], *clip)
                else:
                    mask = _separate_mask(plane, k, *clip)
            except (_Malformed, ValueError, OSError) as exc:
                logger.warning("overlay %04X not drawn on frame %d: %s", plane.group, image_frame + 1, exc)
                continue
            mask = _MASKS.put(key, mask)
        pr0, _pr1, pc0, _pc1 = clip
        layers.append(OverlayLayer(mask, plane.top + pr0, plane.left + pc0, plane.roi, plane.group))
    return layers


def composite(image: np.ndarray, layers: Sequence[OverlayLayer]) -> np.ndarray:
    """*image* (uint8 grey H x W or RGB H x W x 3 display values) with *layers* burnt in.

    Graphics: set bits become 255 (all channels). ROI: inside the plane's
    rectangle, pixels outside the region are darkened (``v >> 4``). DCMTK's
    default modes (module docstring). Returns a new array when there is
    something to draw, *image* itself otherwise.
    """
    if not layers:
        return image
    out = np.array(image, dtype=np.uint8, copy=True)
    for layer in layers:
        h, w = layer.mask.shape
        region = out[layer.top : layer.top + h, layer.left : layer.left + w]
        if layer.roi:
            outside = ~layer.mask
            region[outside] = region[outside] >> ROI_DIM_SHIFT
        else:
            region[layer.mask] = 255
    return out


# --------------------------------------------------------------------------- raw pixels


def read_native_frame(
    path: str | os.PathLike[str],
    frame: int,
    *,
    rows: int,
    columns: int,
    bits_allocated: int,
    offset: int | None = None,
) -> np.ndarray | None:
    """Stored values of 0-based *frame* as written in the file (no masking to Bits Stored), or None.

    For embedded overlays. *offset* is the file offset of the frame's first byte
    (the loader's :attr:`~hilum.dicom.stack.FrameInfo.pixel_offset`); without it
    the file is read whole with pydicom and the frame sliced from its (native)
    Pixel Data. None for compressed data, a short file, or an unreadable one.
    """
    if bits_allocated not in (8, 16, 32) or rows <= 0 or columns <= 0 or frame < 0:
        return None
    dtype = np.dtype(f"<u{bits_allocated // 8}")
    n = rows * columns
    try:
        if offset is not None:
            with open(os.fspath(path), "rb") as fp:
                fp.seek(offset)
                buf = fp.read(n * dtype.itemsize)
        else:
            ds = pydicom.dcmread(os.fspath(path))
            if not _native_pixels(ds) or "PixelData" not in ds:
                return None
            if not is_little_endian(ds):
                dtype = dtype.newbyteorder(">")
            pixels = ds.PixelData
            start = frame * n * dtype.itemsize
            buf = pixels[start : start + n * dtype.itemsize]
    except (OSError, EOFError, InvalidDicomError) as exc:
        logger.warning("cannot read the raw pixels of %s frame %d: %s", os.fspath(path), frame + 1, exc)
        return None
    if len(buf) < n * dtype.itemsize:
        return None
    return np.frombuffer(buf, dtype=dtype).reshape(rows, columns)
