"""Reading an instance for the archive: validation and the attributes it indexes.

Pure DICOM: bytes in, a validated :class:`pydicom.Dataset` and a flat
:class:`IndexRecord` out.  Nothing is decoded that the index does not need
(pixel data stays bytes).  Text is decoded with the instance's Specific
Character Set (PS3.5 6.1; ISO 2022 escapes included) by pydicom, so the index
holds Unicode.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import pydicom
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from hilum.dicom.matching import normalize_date, normalize_time, pn_groups
from hilum.errors import HilumError, RejectedInstance

__all__ = [
    "HeaderCut",
    "InvalidInstance",
    "IndexRecord",
    "PixelElement",
    "check_consistency",
    "show_value",
    "index_record",
    "is_valid_uid",
    "read_header",
    "read_instance",
    "received_as_part10",
    "to_part10",
]

_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # plain ints: `tag in` runs per element read
_PIXEL_KEYS = (BaseTag(0x7FE00010), BaseTag(0x7FE00008), BaseTag(0x7FE00009))  # Pixel Data, Float, Double Float
_TRANSFER_SYNTAX = BaseTag(0x00020010)
_CHARSET = BaseTag(0x00080005)
_ByteOrder = Literal["little", "big"]
_UNDEFINED = 0xFFFFFFFF
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


class InvalidInstance(RejectedInstance, ValueError):
    """Bytes that are not a storable DICOM instance; ``code`` names the reason (a ``ValueError`` too)."""

    def __init__(self, code: str, message: str, sop_instance_uid: str | None = None):
        super().__init__(code, message, sop_instance_uid)


@dataclass(slots=True)
class IndexRecord:
    """What the index keeps of one instance, normalised for matching."""

    patient: dict[str, Any] = field(default_factory=dict)
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)

    @property
    def sop_uid(self) -> str:
        return str(self.instance["sop_uid"])

    @property
    def study_uid(self) -> str:
        return str(self.study["study_uid"])

    @property
    def series_uid(self) -> str:
        return str(self.series["series_uid"])


def read_instance(data: bytes) -> Dataset:
    """Parse and validate one instance (a Part 10 file, or a bare dataset).

    A Part 10 file is parsed up to its pixel data only: the index needs
    nothing after it, and copying half a megabyte of pixels per instance is
    most of a parse.  The pixel data element is still checked structurally
    (its declared length, or its fragments and delimiter) so a truncated file
    is refused.  A bare dataset is read whole, since it is re-encoded as a
    Part 10 file (:func:`to_part10`); little or big endian (PS3.5 A.3).

    What the instance claims must hold together (:func:`check_consistency`),
    so that every way in - C-STORE on either path, STOW-RS, import - refuses
    the same contradictions.

    Raises :class:`InvalidInstance` with ``code`` one of ``not-dicom``,
    ``truncated``, ``missing-uid``, ``invalid-uid``, ``invalid-sop-instance-uid``,
    ``sop-class-mismatch``, ``syntax-mismatch``, ``pixel-length``.
    """
    part10 = len(data) >= 132 and data[128:132] == b"DICM"
    if not part10 and not _looks_like_dataset(data):
        # A bare dataset (no preamble/meta) is accepted only if it parses and
        # has the UIDs; anything else is not DICOM.
        raise InvalidInstance("not-dicom", "not a DICOM file (no DICM preamble)")
    parsed = _read_part10(data) if part10 and _FAST else None
    if parsed is not None:
        ds, stop = parsed
    else:
        fp = io.BytesIO(data)
        try:
            ds = pydicom.dcmread(fp, force=True, stop_before_pixels=part10)
        except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError, NotImplementedError) as exc:
            raise InvalidInstance("not-dicom", f"not a readable DICOM file: {exc}") from exc
        except Exception as exc:  # pydicom raises assorted errors on garbage
            raise InvalidInstance("not-dicom", f"not a readable DICOM file: {type(exc).__name__}: {exc}") from exc
        stop = fp.tell()
    _check_complete(ds, data)
    _check_nesting(ds)
    pixels = _check_pixel_element(ds, data, stop) if part10 else _pixels_of_dataset(ds)
    sop_uid = _text(ds, "SOPInstanceUID")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not _text(ds, keyword):
            raise InvalidInstance("missing-uid", f"missing {keyword}", sop_uid or None)
    if pixels is _DEFLATED:
        pixels = _pixels_of_deflated(data)
    check_consistency(ds, pixels)
    return ds


# ---------------------------------------------------------------- what an instance claims
#
# An instance that contradicts itself is refused at the door: once stored it
# would be served, moved and viewed as something it is not (a JPEG context's
# native bytes cannot be decoded afterwards; a data set under another
# instance's UID overwrites or hides that one; "../../x" as a UID names a
# file).  Each contradiction has its own code, which the protocol adapters
# map to DIMSE statuses (PS3.4 B.2.3) and STOW-RS failure reasons (PS3.18 I.2).

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_INDEXED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a UID as PS3.5 9.1 defines one: components of digits
    separated by dots, no empty component, no leading zero in a component of
    more than one digit, at most 64 characters."""
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class PixelElement:
    """What the encoded Pixel Data element (or Float/Double Float Pixel Data) says of itself."""

    tag: int
    length: int  # the value length; 0xFFFFFFFF when encapsulated
    fragments: int = 0  # encapsulated: fragments after the Basic Offset Table
    offsets: int = 0  # encapsulated: entries in the Basic Offset Table (0 when empty)
    head: bytes = b""  # encapsulated: the first bytes of the first fragment

    @property
    def encapsulated(self) -> bool:
        return self.length == _UNDEFINED


_NO_PIXELS: Any = object()  # the data set ends before any pixel data element
_DEFLATED: Any = object()  # deflated: positions in the file say nothing; read it whole to know

# The first bytes each encapsulated syntax's frames start with (PS3.5 A.4): JPEG and JPEG-LS
# (SOI marker), JPEG 2000 and HTJ2K (codestream SOC+SIZ, or a JP2 signature box), RLE (a
# segment count of 1..15, PS3.5 G.3.1).
_JPEG_SOI = (b"\xff\xd8",)
_J2K = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  ")
_FRAME_MAGIC: dict[str, tuple[bytes, ...]] = {
    **dict.fromkeys(
        (
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.4.51",
            "1.2.840.10008.1.2.4.57",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.4.80",
            "1.2.840.10008.1.2.4.81",
        ),
        _JPEG_SOI,
    ),
    **dict.fromkeys(
        (
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.4.92",
            "1.2.840.10008.1.2.4.93",
            "1.2.840.10008.1.2.4.201",
            "1.2.840.10008.1.2.4.202",
            "1.2.840.10008.1.2.4.203",
        ),
        _J2K,
    ),
}
_RLE = "1.2.840.10008.1.2.5"


def check_consistency(ds: Dataset, pixels: PixelElement | None | Any) -> None:
    """Refuse an instance whose parts contradict each other (see the codes of :func:`read_instance`).

    ``pixels`` is the pixel data element as read from the encoding
    (:data:`_NO_PIXELS` when there is none, ``None`` when unknown).
    """
    sop_uid = _text(ds, "SOPInstanceUID")
    for keyword in _INDEXED_UIDS:
        value = _uid_text(ds, keyword)
        if value is None:
            continue
        if not is_valid_uid(value):
            code = "invalid-sop-instance-uid" if keyword == "SOPInstanceUID" else "invalid-uid"
            raise InvalidInstance(
                code,
                f"{keyword} is not a valid UID (PS3.5 9.1): {show_value(value)}",
                sop_uid if keyword != "SOPInstanceUID" else None,
            )
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        # A C-STORE's meta is built from its command (the Affected SOP Class UID); a file's or a
        # STOW-RS part's is its own.  Either way the data set must be of the class it is said to be.
        # (A file whose Media Storage SOP Instance UID differs from its data set's is tolerated:
        # the data set is the instance, the meta only describes the file, and pydicom's own
        # rtplan/rtdose samples and many anonymised exports have such metas.  A C-STORE whose
        # command names another instance is refused by ``Archive.ingest``'s expected UIDs.)
        meta_class = _uid_text(meta, "MediaStorageSOPClassUID")
        sop_class = _text(ds, "SOPClassUID")
        if meta_class is not None and meta_class != sop_class:
            raise InvalidInstance(
                "sop-class-mismatch",
                f"SOP Class UID differs from the file meta's: data set "
                f"{show_value(sop_class)}, meta {show_value(meta_class)}",
                sop_uid,
            )
    ts = _uid_text(meta, "TransferSyntaxUID") if meta is not None else None
    _check_pixels(ds, pixels, ts or "", sop_uid)


def _check_pixels(ds: Dataset, pixels: PixelElement | None | Any, ts: str, sop_uid: str) -> None:
    """Pixel Data against the transfer syntax and the Image Pixel Module (PS3.3 C.7.6.3, PS3.5 8.2)."""
    if pixels is None:
        return
    if pixels is _NO_PIXELS:
        # A complete object without pixel data is a non-image instance, whatever else it says
        # (Rows and Columns in a spectroscopy or a private CSA header object are not an image).
        return
    syntax = UID(ts) if ts else None
    encapsulated_ts = bool(syntax is not None and syntax.is_transfer_syntax and syntax.is_encapsulated)
    if syntax is not None and syntax.is_transfer_syntax and pixels.tag == 0x7FE00010:
        if encapsulated_ts and not pixels.encapsulated:
            raise InvalidInstance(
                "syntax-mismatch",
                f"native Pixel Data under {syntax.name}, which encapsulates compressed frames (PS3.5 A.4)",
                sop_uid,
            )
        if pixels.encapsulated and not encapsulated_ts:
            raise InvalidInstance(
                "syntax-mismatch", f"encapsulated Pixel Data under {syntax.name}, a native transfer syntax", sop_uid
            )
    if pixels.encapsulated:
        frames = max(_int(ds, "NumberOfFrames") or 1, 1)
        if pixels.fragments == 0:
            raise InvalidInstance("pixel-length", "encapsulated Pixel Data without any fragment", sop_uid)
        if pixels.offsets and pixels.offsets != frames:
            raise InvalidInstance(
                "pixel-length", f"the Basic Offset Table has {pixels.offsets} entries for {frames} frame(s)", sop_uid
            )
        magic = _FRAME_MAGIC.get(ts)
        if magic is not None and not pixels.head.startswith(magic):
            raise InvalidInstance("syntax-mismatch", f"the first frame is not a {UID(ts).name} bitstream", sop_uid)
        if ts == _RLE and not (len(pixels.head) >= 4 and 1 <= int.from_bytes(pixels.head[:4], "little") <= 15):
            raise InvalidInstance("syntax-mismatch", "the first frame is not an RLE Lossless bitstream", sop_uid)
        return
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    bits = {0x7FE00008: 32, 0x7FE00009: 64}.get(pixels.tag) or _int(ds, "BitsAllocated")
    if not rows or not columns or not bits:
        raise InvalidInstance("pixel-length", "Pixel Data without Rows, Columns and Bits Allocated", sop_uid)
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = max(_int(ds, "NumberOfFrames") or 1, 1)
    if samples == 3 and _text(ds, "PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # two luminance values share one pair of chroma values (PS3.3 C.7.6.3.1.2)
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if pixels.length != expected and not (expected % 2 and pixels.length == expected + 1):
        raise InvalidInstance(
            "pixel-length",
            f"Pixel Data has {pixels.length} bytes; {rows} rows x {columns} "
            f"columns x {samples} samples x {bits} bits x {frames} frame(s) make {expected}",
            sop_uid,
        )


def _uid_text(ds: Dataset, keyword: str) -> str | None:
    """A UI value as encoded, NUL padding (PS3.5 6.2) and surrounding spaces removed; None when absent.
    Unlike :func:`_text`, an embedded NUL or other control character is kept, to be refused."""
    tag, _ = _tag_and_vr(keyword)
    elem = ds._dict.get(tag)  # noqa: SLF001 - the raw element, unconverted
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("latin-1")
    elif isinstance(value, (list, tuple, MultiValue)):
        text = "\\".join(str(v) for v in value)
    else:
        text = "" if value is None else str(value)
    text = text.rstrip("\0").strip(" ")
    return text if text else None


def show_value(value: str) -> str:
    """A value for a one-line message: control characters escaped, long ones cut."""
    shown = value.encode("unicode_escape").decode("ascii")
    return repr(shown if len(shown) <= 70 else shown[:67] + "...")


def _pixels_of_dataset(ds: Dataset) -> PixelElement | Any:
    """The pixel data element of a data set read whole (a bare data set, no file meta)."""
    for tag in _PIXEL_KEYS:
        elem = ds._dict.get(tag)  # noqa: SLF001
        if elem is None:
            continue
        value = elem.value or b""
        length = getattr(elem, "length", None) if isinstance(elem, RawDataElement) else None
        if length == _UNDEFINED or getattr(elem, "is_undefined_length", False):
            return _encapsulated(bytes(value), tag, 0, len(value), "little")
        return PixelElement(tag, len(value) if value is not None else 0)
    return _NO_PIXELS


def _pixels_of_deflated(data: bytes) -> PixelElement | Any:
    """A deflated instance's pixel data element, read from the inflated data set (rare: read whole)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:  # noqa: BLE001 - the header parsed; the rest is the deflate stream's fault
        raise InvalidInstance("truncated", "the deflated data set cannot be inflated whole") from None
    return _pixels_of_dataset(ds)


def _encapsulated(data: bytes | bytearray, tag: int, at: int, end: int, order: _ByteOrder) -> PixelElement:
    """An encapsulated value's items from ``at`` (PS3.5 A.4): fragments, offset table entries, first bytes."""
    fragments = offsets = 0
    head = b""
    first = True
    while at + 8 <= end:
        item = int.from_bytes(data[at : at + 2], order) << 16 | int.from_bytes(data[at + 2 : at + 4], order)
        length = int.from_bytes(data[at + 4 : at + 8], order)
        if item != 0xFFFEE000 or length == _UNDEFINED:
            break
        if first:
            offsets = length // 4
            first = False
        else:
            if fragments == 0:
                head = bytes(data[at + 8 : at + 8 + min(length, 16)])
            fragments += 1
        at += 8 + length
    return PixelElement(tag, _UNDEFINED, fragments, offsets, head)


# ---------------------------------------------------------------- reading a Part 10 file
#
# pydicom's reader costs ~0.4 ms for a CT header (a generator, file reads and
# checks per element).  The common case - a Part 10 file whose data set is
# Implicit or Explicit VR Little Endian, natively or encapsulated - is read
# here into the same raw elements pydicom builds (converted lazily, by
# pydicom, when read), up to the pixel data.  Anything else (big endian,
# deflate, a data set whose VRs contradict its transfer syntax, an element
# header that makes no sense) is left to pydicom; tests/test_attributes_fast.py
# holds both readers to the same records over pydicom's sample files.

_VRS = frozenset(
    {
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FD",
        b"FL",
        b"IS",
        b"LO",
        b"LT",
        b"OB",
        b"OD",
        b"OF",
        b"OL",
        b"OV",
        b"OW",
        b"PN",
        b"SH",
        b"SL",
        b"SQ",
        b"SS",
        b"ST",
        b"SV",
        b"TM",
        b"UC",
        b"UI",
        b"UL",
        b"UN",
        b"UR",
        b"US",
        b"UT",
        b"UV",
    }
)
_NOT_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})  # big endian, deflated
_HEADER = struct.Struct("<HHI")  # implicit VR: group, element, 32-bit length
_EXPLICIT = struct.Struct("<HH2sH")  # explicit VR: group, element, VR, 16-bit length (inlined, not
# _element_header: this loop runs for every element read)
_ITEM_TAGS = (0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD)


class _Unusual(Exception):
    """Something for pydicom's reader to judge."""


def _read_part10(data: bytes | bytearray) -> tuple[Dataset, int] | None:
    """(data set up to its pixel data, where that stopped) or None: let pydicom read it."""
    try:
        meta, at = _read_elements(data, 132, False, group=2)
        ts_elem = meta.get(_TRANSFER_SYNTAX)
        if ts_elem is None:
            return None
        ts = bytes(ts_elem.value or b"").decode("ascii", "replace").rstrip("\0 ")
        if ts in _NOT_LITTLE_ENDIAN:
            return None
        implicit = ts == ImplicitVRLittleEndian
        if not implicit and at + 6 <= len(data) and bytes(data[at + 4 : at + 6]) not in _VRS:
            return None  # says explicit, is not (pydicom guesses; so does it here)
        elements, stop = _read_elements(data, at, implicit)
    except _Unusual:
        return None
    ds = Dataset(elements)  # type: ignore[arg-type]  # RawDataElements only: a subset of what it takes
    ds.file_meta = FileMetaDataset(meta)  # type: ignore[arg-type]
    charset = elements.get(_CHARSET)
    encoding: Any = "iso8859"
    if charset is not None:
        try:
            encoding = convert_encodings(pydicom.dataelem.convert_raw_data_element(charset).value)
        except Exception:  # noqa: BLE001 - pydicom's reader decides what a bad one means
            return None
    ds.set_original_encoding(implicit, True, encoding)
    return ds, stop


class HeaderCut(HilumError):
    """:func:`read_header`: the bytes end before the pixel data; read more of the file."""


def read_header(head: bytes | bytearray, *, whole: bool) -> Dataset | None:
    """The data set of the first bytes of a stored Part 10 file, up to its pixel data, elements
    converted only when used; None when pydicom's reader must judge it (big endian, deflated,
    anything unusual).

    ``whole``: ``head`` is the whole file.  Otherwise raises :class:`HeaderCut` when ``head`` ends
    before the pixel data (an element cut short, or no pixel data element reached yet).  For
    listings that read a few attributes of many files (QIDO-RS includefield): a few kilobytes of
    each, parsed without pydicom's per-element file reads.
    """
    if len(head) < 132 or head[128:132] != b"DICM" or not _FAST:
        return None
    try:
        parsed = _read_part10(head)
    except InvalidInstance as exc:
        if whole:
            return None
        raise HeaderCut() from exc
    if parsed is None:
        return None
    ds, stop = parsed
    if not whole and (stop + 4 > len(head) or (int.from_bytes(head[stop : stop + 2], "little") << 16
                                               | int.from_bytes(head[stop + 2 : stop + 4], "little"))
                      not in _PIXEL_TAGS):  # fmt: skip
        raise HeaderCut()
    return ds


def _read_elements(
    data: bytes | bytearray, at: int, implicit: bool, group: int | None = None
) -> tuple[dict[BaseTag, RawDataElement], int]:
    """Top-level elements from ``at`` to the pixel data, the end, or (with ``group``) the group's end."""
    out: dict[BaseTag, RawDataElement] = {}
    end = len(data)
    last = -1
    while at + 8 <= end:
        grp, elem, length = _HEADER.unpack_from(data, at)
        tag = grp << 16 | elem
        if group is not None and grp != group:
            break
        if group is None and tag in _PIXEL_TAGS:
            break
        if implicit:
            vr = None
            value_at = at + 8
        else:
            grp, elem, raw_vr, length = _EXPLICIT.unpack_from(data, at)
            if raw_vr not in _VRS:
                raise _Unusual
            vr = raw_vr.decode()
            if vr in _LONG_VR_NAMES:
                if at + 12 > end:
                    raise InvalidInstance("truncated", "truncated: an element header is cut short")
                length = int.from_bytes(data[at + 8 : at + 12], "little")
                value_at = at + 12
            else:
                value_at = at + 8
        if tag in _ITEM_TAGS or tag <= last:
            raise _Unusual  # a delimiter out of place, or elements out of order
        last = tag
        if length == _UNDEFINED:
            # An undefined-length sequence (PS3.5 7.5.2); in implicit VR, a tag the dictionary
            # calls SQ or does not know (a private one), as pydicom reads them.
            if vr != "SQ" and not (implicit and _dictionary_vr(tag) in ("SQ", None)):
                raise _Unusual
            after = _skip_items(data, value_at, implicit)
            value = bytes(data[value_at : after - 8])  # the items, without the sequence delimiter
            out[BaseTag(tag)] = RawDataElement(BaseTag(tag), "SQ", length, value, value_at, implicit, True)
            at = after
            continue
        if value_at + length > end:
            raise InvalidInstance("truncated", f"truncated: element {BaseTag(tag)} is cut short")
        out[BaseTag(tag)] = RawDataElement(
            BaseTag(tag), vr, length, bytes(data[value_at : value_at + length]), value_at, implicit, True
        )
        at = value_at + length
    return out, at


def _skip_items(data: bytes | bytearray, at: int, implicit: bool, depth: int = 1) -> int:
    """The offset just past the sequence delimiter of an undefined-length sequence whose items start at ``at``
    (``depth``: how deep this sequence is nested, 1 at the top level)."""
    if depth > MAX_SEQUENCE_DEPTH:
        raise _too_deep()
    end = len(data)
    while True:
        if at + 8 > end:
            raise InvalidInstance("truncated", "truncated: a sequence is cut short")
        grp, elem, length = _HEADER.unpack_from(data, at)
        tag = grp << 16 | elem
        if tag == 0xFFFEE0DD:
            return at + 8
        if tag != 0xFFFEE000:
            raise _Unusual
        at += 8
        if length != _UNDEFINED:
            at += length
            continue
        at = _skip_item_elements(data, at, implicit, depth)


def _skip_item_elements(data: bytes | bytearray, at: int, implicit: bool, depth: int = 1) -> int:
    """The offset just past the item delimiter of an undefined-length item whose elements start at ``at``."""
    end = len(data)
    while True:
        if at + 8 > end:
            raise InvalidInstance("truncated", "truncated: a sequence item is cut short")
        grp, elem, length = _HEADER.unpack_from(data, at)
        if grp << 16 | elem == 0xFFFEE00D:
            return at + 8
        raw_vr = b"" if implicit else bytes(data[at + 4 : at + 6])
        if not implicit and raw_vr not in _VRS:
            raise _Unusual
        length, value_at = _element_header(data, at, implicit, "little", "a sequence item")
        if length == _UNDEFINED and not implicit and raw_vr != b"SQ":
            raise _Unusual  # e.g. UN of undefined length: implicit VR inside (PS3.5 6.2.2)
        at = _skip_items(data, value_at, implicit, depth + 1) if length == _UNDEFINED else value_at + length


# ---------------------------------------------------------------- nesting depth
#
# Sequences nest (PS3.5 7.5) and every reader of them recurses: pydicom converts a sequence's
# bytes into items of data sets into sequences... when an attribute is read, and so do the
# DICOM JSON encoder, the viewer and the exporters.  A few kilobytes nesting sequences
# thousands deep made a RecursionError wherever the instance was next read - in the fast
# reader at ingest, or once stored, in WADO-RS metadata - so the depth is checked at the door,
# over the bytes, before anything converts them (tests/test_fuzz_part10.py, depth bombs).
# Real objects nest a dozen levels at most (an SR content tree, TID 1500); 64 is far above that.

MAX_SEQUENCE_DEPTH = 64
"""The deepest nesting of sequences an instance may have (a top-level sequence is depth 1)."""


def _too_deep() -> InvalidInstance:
    return InvalidInstance("not-dicom", f"sequences nested more than {MAX_SEQUENCE_DEPTH} levels deep")


def _check_nesting(ds: Dataset) -> None:
    """Raise :class:`InvalidInstance` if ``ds``'s sequences nest deeper than :data:`MAX_SEQUENCE_DEPTH`,
    looking at the encoded bytes of sequences not yet converted (nothing is converted here)."""
    stack: list[tuple[Dataset, int]] = [(ds, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_SEQUENCE_DEPTH:
            raise _too_deep()
        for elem in current._dict.values():  # noqa: SLF001 - the raw elements, unconverted
            value = elem.value
            if isinstance(elem, RawDataElement):
                if not value or not (elem.VR == "SQ" or (elem.VR is None and _dictionary_vr(elem.tag) == "SQ")):
                    continue
                order: _ByteOrder = "little" if elem.is_little_endian else "big"
                _sequence_end(value, 0, len(value), elem.is_implicit_VR, order, depth)
            elif isinstance(value, Sequence):
                stack.extend((item, depth + 1) for item in value)


def _sequence_end(data: bytes | bytearray, at: int, end: int, implicit: bool, order: _ByteOrder, depth: int) -> int:
    """Walk the items of a sequence value starting at ``at`` (``end``: its end, or the data's for an undefined
    length) checking the depth; return where the sequence ends.  Anything that is not well-formed is left
    to the readers (they refuse or convert it): the walk only stops early."""
    if depth > MAX_SEQUENCE_DEPTH:
        raise _too_deep()
    while at + 8 <= end:
        tag = int.from_bytes(data[at : at + 2], order) << 16 | int.from_bytes(data[at + 2 : at + 4], order)
        length = int.from_bytes(data[at + 4 : at + 8], order)
        at += 8
        if tag == 0xFFFEE0DD:
            return at
        if tag != 0xFFFEE000:
            return end
        if length == _UNDEFINED:
            at = _item_end(data, at, end, implicit, order, depth)
        else:
            _item_end(data, at, min(at + length, end), implicit, order, depth)
            at += length
    return end


def _item_end(data: bytes | bytearray, at: int, end: int, implicit: bool, order: _ByteOrder, depth: int) -> int:
    """Walk the elements of an item from ``at`` (to its delimiter, or ``end``); return where it ends."""
    while at + 8 <= end:
        tag = int.from_bytes(data[at : at + 2], order) << 16 | int.from_bytes(data[at + 2 : at + 4], order)
        if tag == 0xFFFEE00D:
            return at + 8
        inner_implicit = implicit
        if implicit:
            length, value_at = int.from_bytes(data[at + 4 : at + 8], order), at + 8
            nested = length == _UNDEFINED or _dictionary_vr(tag) == "SQ"
        else:
            vr = bytes(data[at + 4 : at + 6])
            if vr in _LONG_VRS:
                if at + 12 > end:
                    return end
                length, value_at = int.from_bytes(data[at + 8 : at + 12], order), at + 12
            else:
                length, value_at = int.from_bytes(data[at + 6 : at + 8], order), at + 8
            nested = vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED)
            inner_implicit = vr == b"UN"  # UN of undefined length: implicit VR inside (PS3.5 6.2.2)
        if nested:
            stop = end if length == _UNDEFINED else min(value_at + length, end)
            after = _sequence_end(data, value_at, stop, inner_implicit, order, depth + 1)
            at = after if length == _UNDEFINED else value_at + length
        elif length == _UNDEFINED:
            return end
        else:
            at = value_at + length
    return end


def _dictionary_vr(tag: int) -> str | None:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


def _looks_like_dataset(data: bytes) -> bool:
    # A bare dataset starts with a group 0x0008 (or 0x0002) element, little or big endian
    # (pydicom tells the two apart by the group number, as DCMTK does).
    if len(data) < 8:
        return False
    return (data[1] == 0x00 and data[0] in (0x02, 0x08)) or (data[0] == 0x00 and data[1] in (0x02, 0x08))


def _check_complete(ds: Dataset, data: bytes) -> None:
    """Reject a truncated instance: an element shorter than its declared length,
    or encapsulated pixel data without its sequence delimiter (when read)."""
    for elem in ds._dict.values():
        if not isinstance(elem, RawDataElement) or elem.value is None:
            continue
        if elem.length != _UNDEFINED:
            if len(elem.value) < elem.length:
                raise InvalidInstance("truncated", f"truncated: element {elem.tag} is cut short", None)
        elif elem.tag in _PIXEL_TAGS:
            if data.rfind(_SEQ_DELIMITER) < 0 or not _fragments_complete(elem.value):
                raise InvalidInstance("truncated", "truncated: encapsulated pixel data is cut short", None)


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_LONG_VR_NAMES = frozenset(v.decode() for v in _LONG_VRS)


def _check_pixel_element(ds: Dataset, data: bytes, pos: int) -> PixelElement | Any:
    """Check the pixel data element at ``pos`` (where a stop-before-pixels parse
    ended) is complete, without copying its value (PS3.5 7.1, A.4), and say what
    it is: a :class:`PixelElement`, :data:`_NO_PIXELS`, :data:`_DEFLATED`, or None
    (the parse stopped at something else)."""
    end = len(data)
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is not None and ts == "1.2.840.10008.1.2.1.99":
        return _DEFLATED  # deflated: pydicom parsed an inflated copy; positions do not apply
    if pos >= end:
        return _NO_PIXELS  # no pixel data (an SR, a presentation state, a non-image header object)
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        implicit, little = False, True
    order: _ByteOrder = "little" if little else "big"
    if pos + 8 > end:
        raise InvalidInstance("truncated", "truncated: pixel data element header is cut short")
    group = int.from_bytes(data[pos : pos + 2], order)
    elem = int.from_bytes(data[pos + 2 : pos + 4], order)
    tag = group << 16 | elem
    if tag not in _PIXEL_TAGS:
        return None  # stopped at something else: nothing of ours to check
    length, value_at = _element_header(data, pos, implicit, order, "pixel data element header")
    if length != _UNDEFINED:
        if value_at + length > end:
            raise InvalidInstance("truncated", f"truncated: pixel data has {end - value_at} of {length} bytes")
        _check_trailing(data, value_at + length, implicit, order)
        return PixelElement(tag, length)
    # Encapsulated: items (FFFE,E000) up to the sequence delimiter (FFFE,E0DD).
    at = value_at
    while True:
        if at + 8 > end:
            raise InvalidInstance("truncated", "truncated: encapsulated pixel data is cut short")
        item = int.from_bytes(data[at : at + 2], order) << 16 | int.from_bytes(data[at + 2 : at + 4], order)
        item_len = int.from_bytes(data[at + 4 : at + 8], order)
        if item == 0xFFFEE0DD:
            _check_trailing(data, at + 8, implicit, order)
            return _encapsulated(data, tag, value_at, at, order)
        if item != 0xFFFEE000 or item_len == _UNDEFINED:
            raise InvalidInstance("truncated", "corrupt encapsulated pixel data (bad item)")
        at += 8 + item_len


def _element_header(data: bytes | bytearray, at: int, implicit: bool, order: _ByteOrder, what: str) -> tuple[int, int]:
    """(value length, value offset) of the element whose header starts at ``at`` (PS3.5 7.1)."""
    long_vr = not implicit and bytes(data[at + 4 : at + 6]) in _LONG_VRS
    if at + (12 if long_vr else 8) > len(data):
        raise InvalidInstance("truncated", f"truncated: {what} is cut short")
    if implicit:
        return int.from_bytes(data[at + 4 : at + 8], order), at + 8
    if long_vr:
        return int.from_bytes(data[at + 8 : at + 12], order), at + 12
    return int.from_bytes(data[at + 6 : at + 8], order), at + 8


def _check_trailing(data: bytes, at: int, implicit: bool, order: _ByteOrder) -> None:
    """Elements after the pixel data (usually Data Set Trailing Padding) must be whole too."""
    end = len(data)
    while at < end:
        length, value_at = _element_header(data, at, implicit, order, "an element after the pixel data")
        if length == _UNDEFINED:
            return  # a sequence after the pixels: leave it to readers
        if value_at + length > end:
            raise InvalidInstance("truncated", "truncated: an element after the pixel data is cut short")
        at = value_at + length


def _fragments_complete(value: bytes) -> bool:
    pos, n = 0, len(value)
    while pos + 8 <= n:
        if value[pos : pos + 4] != b"\xfe\xff\x00\xe0":
            return False
        length = int.from_bytes(value[pos + 4 : pos + 8], "little")
        pos += 8 + length
    return pos == n


# ---------------------------------------------------------------- attribute values
#
# ``index_record`` reads about thirty attributes per instance.  Through pydicom
# each read converts a raw element (hooks, value objects, character sets):
# about 40% of an ingest's Python time.  The common case - one ASCII value of
# a string VR, or a little-endian US - is decoded here straight from the raw
# bytes; anything else (several values, non-ASCII text, ISO 2022 escapes, an
# unusual VR, a converted element) still goes through pydicom, and
# tests/test_attributes_fast.py holds the two paths to the same answers.

_STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT"}
)
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})  # decoded per Specific Character Set
_PLAIN_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})  # ASCII is ASCII in each
_FAST = True  # tests turn the raw path off to compare it with pydicom's


@cache
def _tag_and_vr(keyword: str) -> tuple[BaseTag, str]:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return BaseTag(tag), dictionary_VR(tag)


def _raw_text(ds: Dataset, keyword: str, plain_charset: bool) -> str | None:
    """The value of ``keyword`` decoded from its raw bytes, "" if absent; None: ask pydicom."""
    if not _FAST:
        return None
    tag, dict_vr = _tag_and_vr(keyword)
    elem = ds._dict.get(tag)  # noqa: SLF001 - the raw element, unconverted
    if elem is None:
        return ""
    if not isinstance(elem, RawDataElement):
        return None
    value = elem.value
    vr = elem.VR or dict_vr
    if value is None or vr not in _STRING_VRS or (vr in _CHARSET_VRS and not plain_charset):
        return None
    if not value.isascii() or b"\\" in value or b"\x1b" in value:
        return None
    text = value.decode("ascii")
    if vr == "UI":
        text = text.rstrip("\0")
    if "\0" in text:
        return None
    return text.strip()


def _plain_charset(ds: Dataset) -> bool:
    """Whether ASCII text in ``ds`` reads the same whatever its Specific Character Set says."""
    raw = _raw_text(ds, "SpecificCharacterSet", True)
    return raw is not None and raw in _PLAIN_CHARSETS


def _text(ds: Dataset, keyword: str, plain_charset: bool = False) -> str:
    raw = _raw_text(ds, keyword, plain_charset)
    if raw is not None:
        return raw
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v).strip() for v in value)  # several values, as DICOM writes them
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    if _FAST:
        tag, dict_vr = _tag_and_vr(keyword)
        elem = ds._dict.get(tag)  # noqa: SLF001
        if elem is None:
            return None
        if isinstance(elem, RawDataElement) and elem.value is not None:
            vr = elem.VR or dict_vr
            if vr == "US" and len(elem.value) == 2 and elem.is_little_endian:
                return int.from_bytes(elem.value, "little")
            if vr == "IS":
                text = _raw_text(ds, keyword, True)
                if text is not None and text.lstrip("+-").isdigit():
                    return int(text)
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except Exception:  # noqa: BLE001 - as _text: pydicom's NotImplementedError for an unknown VR, bad values...
        return None


def _date(ds: Dataset, keyword: str) -> str:
    v = _text(ds, keyword, True)
    try:
        return normalize_date(v) if v else ""
    except ValueError:
        return ""


def _time(ds: Dataset, keyword: str) -> str:
    v = _text(ds, keyword, True)
    try:
        return normalize_time(v) if v else ""
    except ValueError:
        return ""


def index_record(ds: Dataset) -> IndexRecord:
    """The attributes the index keeps of ``ds`` (which :func:`read_instance` validated)."""
    plain = _plain_charset(ds)
    name = _text(ds, "PatientName", plain)
    pn_a, pn_i, pn_p = pn_groups(name)
    ref = _text(ds, "ReferringPhysicianName", plain)
    study_date = _date(ds, "StudyDate")
    study_time = _time(ds, "StudyTime")
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not ts:
        ts = str(_own_syntax(ds))  # a bare data set: the syntax to_part10 stores it in
    charset = _text(ds, "SpecificCharacterSet")  # several values joined with "\\"; never raises
    nframes = _int(ds, "NumberOfFrames")
    return IndexRecord(
        patient={
            "patient_id": _text(ds, "PatientID", plain),
            "issuer": _text(ds, "IssuerOfPatientID", plain),
            "patient_name": name,
            "pn_a": pn_a,
            "pn_i": pn_i,
            "pn_p": pn_p,
            "birth_date": _date(ds, "PatientBirthDate"),
            "sex": _text(ds, "PatientSex", plain),
        },
        study={
            "study_uid": _text(ds, "StudyInstanceUID", plain),
            "study_date": study_date,
            "study_time": study_time,
            "study_dt": (study_date + (study_time or "000000.000000")) if study_date else "",
            "accession_number": _text(ds, "AccessionNumber", plain),
            "study_id": _text(ds, "StudyID", plain),
            "study_description": _text(ds, "StudyDescription", plain),
            "referring_physician": ref,
            "ref_pn_a": pn_groups(ref)[0],
            "specific_character_set": str(charset or ""),
        },
        series={
            "series_uid": _text(ds, "SeriesInstanceUID", plain),
            "modality": _text(ds, "Modality", plain),
            "series_number": _int(ds, "SeriesNumber"),
            "series_description": _text(ds, "SeriesDescription", plain),
            "body_part": _text(ds, "BodyPartExamined", plain),
            "series_date": _date(ds, "SeriesDate"),
            "series_time": _time(ds, "SeriesTime"),
            "pps_start_date": _date(ds, "PerformedProcedureStepStartDate"),
            "pps_start_time": _time(ds, "PerformedProcedureStepStartTime"),
            "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID", plain),
        },
        instance={
            "sop_uid": _text(ds, "SOPInstanceUID", plain),
            "sop_class_uid": _text(ds, "SOPClassUID", plain),
            "instance_number": _int(ds, "InstanceNumber"),
            "transfer_syntax": ts,
            "number_of_frames": nframes,
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "content_date": _date(ds, "ContentDate"),
            "content_time": _time(ds, "ContentTime"),
        },
    )


def _own_syntax(ds: Dataset) -> UID:
    """The transfer syntax a data set read without file meta is encoded in: it keeps its own
    encoding (a big-endian one stays Explicit VR Big Endian, PS3.5 A.3), so the bytes stored are
    the bytes that came, with a meta header in front."""
    implicit = getattr(ds, "is_implicit_VR", None)
    little = True
    original = getattr(ds, "original_encoding", None)
    if original and original[0] is not None:
        implicit = original[0]
    if original and original[1] is not None:
        little = original[1]
    if not little:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def received_as_part10(ds: Dataset) -> bytes:
    """:func:`to_part10` of a bare data set :func:`read_instance` accepted from received bytes.

    pydicom writes back most of what it reads, not all: a data set holding command elements
    (group 0000, which ``dcmwrite`` refuses) or a value its VR cannot encode made ingest raise
    (tests/test_fuzz_regressions.py).  Such a data set is refused as ``not-dicom`` instead.
    """
    try:
        return to_part10(ds)
    except InvalidInstance:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom's writer raises assorted errors on what it cannot encode
        raise InvalidInstance("not-dicom", f"the data set cannot be written as a Part 10 file: "
                                           f"{type(exc).__name__}: {show_value(str(exc))}",
                              _text(ds, "SOPInstanceUID") or None) from exc


def to_part10(ds: Dataset) -> bytes:
    """Encode ``ds`` as a Part 10 file (adding file meta where it lacks one)."""
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        meta = FileMetaDataset(meta or {})
        meta.TransferSyntaxUID = _own_syntax(ds)
    meta.MediaStorageSOPClassUID = UID(str(ds.SOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    if "ImplementationClassUID" not in meta:
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
