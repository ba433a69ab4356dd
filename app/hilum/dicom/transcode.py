"""Lossless transfer syntax conversion of a stored instance: what leaves is what came in.

A peer (or a web client) that does not take an instance's stored transfer
syntax gets it in an uncompressed little-endian one instead, converted here:

* encapsulated (RLE, JPEG, JPEG-LS, JPEG 2000...) pixel data is decoded frame
  by frame (pydicom's decoders, PS3.5 8.2 and A.4);
* Explicit VR Big Endian (retired, PS3.5 A.3) is byte-swapped value by value,
  as DCMTK's ``storescu`` does when a peer refuses it: the VR of each element
  says how wide its words are (OW 2, OF/OL 4, OD/OV 8; numbers and tags are
  re-encoded by pydicom), Pixel Data by its Bits Allocated;
* deflated data sets are inflated (pydicom reads them so), and Explicit and
  Implicit VR Little Endian are re-encoded into each other.

Every conversion keeps every UID: a lossless conversion is the same instance
(PS3.5 Annex A; pydicom 3's ``decompress()`` would make a new SOP Instance
UID unless told not to).  Decoding a lossy stream adds no loss, but the
result no longer shows it came from one, so Lossy Image Compression (0028,2110)
is set to ``01`` where the stored syntax is always lossy (DCT JPEG, video) and
the attribute was absent (PS3.3 C.7.6.1.1.5); a JPEG 2000 or JPEG-LS stream
may be lossless, and its instance's own attribute is left to say so.  Nothing here ever *compresses* lossily: that would make
a new instance (derived, new UID, Lossy Image Compression set) and is not done
on the way out of the archive at all.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from hilum.errors import HilumError

log = logging.getLogger(__name__)

__all__ = ["ALWAYS_LOSSY", "LOSSY", "NATIVE", "TranscodeError", "convert", "is_lossy", "to_native"]

NATIVE: tuple[str, ...] = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
"""The syntaxes a conversion writes: uncompressed, little endian (PS3.5 A.1, A.2)."""

LOSSY = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",  # JPEG baseline, extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93",  # JPEG 2000 (may be lossy), Part 2 (may be lossy)
    "1.2.840.10008.1.2.4.203",  # HTJ2K (may be lossy)
    *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)),  # MPEG-2, MPEG-4, HEVC
})
"""Transfer syntaxes whose pixel data may have lost information (PS3.5 A.4, PS3.3 C.7.6.1.1.5)."""

ALWAYS_LOSSY = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                          *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109))})
"""Syntaxes that cannot carry lossless data (DCT JPEG, video); the others in :data:`LOSSY` may."""

_METHOD = {  # Lossy Image Compression Method (0028,2114) (PS3.3 C.7.6.1.1.5.1)
    "1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
}

_WORD = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}  # bytes per word of the binary VRs


class TranscodeError(HilumError):
    """An instance that cannot be converted here (no decoder, corrupt frames, unknown syntax)."""


def is_lossy(ts: str) -> bool:
    """Whether pixel data in ``ts`` may have lost information."""
    return str(ts) in LOSSY


def convert(data: bytes | bytearray, target: str = ExplicitVRLittleEndian) -> bytes:
    """The Part 10 file ``data`` re-encoded in ``target`` (one of :data:`NATIVE`), every UID kept.

    Raises :class:`TranscodeError` when it cannot be done (and never returns
    something else instead).
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(bytes(data)))
    except Exception as exc:  # noqa: BLE001 - pydicom raises assorted errors on bad files
        raise TranscodeError(f"cannot read the instance: {exc}") from exc
    return encode(to_native(ds, target))


def to_native(ds: Dataset, target: str = ExplicitVRLittleEndian) -> Dataset:
    """``ds`` (read from a Part 10 file) converted in place to ``target``; returns it.

    The result is ready for :func:`encode`; its SOP Instance UID, and every
    other UID, are the ones it had.
    """
    target = str(target)
    if target not in NATIVE:
        raise TranscodeError(f"conversion writes {' or '.join(UID(t).name for t in NATIVE)}, not {UID(target).name}")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise TranscodeError("the instance has no transfer syntax (no file meta)")
    stored = UID(str(meta.TransferSyntaxUID))
    if not stored.is_transfer_syntax:
        raise TranscodeError(f"unknown transfer syntax {stored}")
    uids = _uids(ds)
    if stored.is_encapsulated:
        _decode(ds, stored)
    elif stored == ExplicitVRBigEndian:
        _swap_to_little_endian(ds)
    elif stored not in (*NATIVE, DeflatedExplicitVRLittleEndian):
        raise TranscodeError(f"cannot convert from {stored.name}")
    ds.file_meta.TransferSyntaxUID = UID(target)
    if _uids(ds) != uids:  # a guard on ourselves and the libraries: identity is not negotiable
        raise TranscodeError("conversion changed a UID; not sent")
    return ds


def encode(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file in the transfer syntax its meta names."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _uids(ds: Dataset) -> tuple[str, ...]:
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    return (str(ds.get("SOPInstanceUID", "")), str(ds.get("SOPClassUID", "")), str(ds.get("StudyInstanceUID", "")),
            str(ds.get("SeriesInstanceUID", "")), str(meta.get("MediaStorageSOPInstanceUID", "")))


def _decode(ds: Dataset, stored: UID) -> None:
    """Encapsulated pixel data decoded to native (frame by frame, pydicom's decoders), UIDs kept."""
    if "PixelData" not in ds:
        return  # an encapsulated syntax says nothing of a data set without pixels
    try:
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # noqa: BLE001 - missing codec, corrupt frames: this instance only
        raise TranscodeError(f"cannot decode {stored.name}: {exc}") from exc
    if stored in ALWAYS_LOSSY and ds.get("LossyImageCompression") in (None, ""):
        ds.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" not in ds and str(stored) in _METHOD:
            ds.LossyImageCompressionMethod = _METHOD[str(stored)]


def _swap_to_little_endian(ds: Dataset) -> None:
    """Byte-swap every binary value of a data set read as big endian (PS3.5 7.3).

    Numbers (US, SS, UL, FL, FD, AT...) are converted values that pydicom
    re-encodes in the file's byte order; OW/OF/OL/OD/OV values are bytes and
    are swapped here, word by word.  UN is left alone: nothing says how wide
    its words are.
    """
    bits = int(ds.get("BitsAllocated", 16) or 16)
    for elem in _elements(ds):
        if elem.VR not in _WORD or not isinstance(elem.value, (bytes, bytearray)) or not elem.value:
            continue
        width = _WORD[elem.VR]
        if elem.tag == 0x7FE00010 and bits > 16 and bits % 8 == 0:
            width = bits // 8  # 32-bit pixels are one 32-bit word each, as pydicom reads them
        value = bytes(elem.value)
        cut = len(value) - len(value) % width
        swapped = np.frombuffer(value[:cut], dtype=f">u{width}").astype(f"<u{width}").tobytes()
        elem.value = swapped + value[cut:]


def _elements(ds: Dataset) -> Any:
    """Every element, converted from its raw form, nested sequences included."""
    for elem in ds:  # iterating converts raw elements (pydicom decodes them in the data set's byte order)
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _elements(item)
