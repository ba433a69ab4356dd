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

The archive's compression policy (:mod:`hilum.archive.compress`) uses
:func:`compress` and :func:`verify`: a native instance's pixels encoded to
JPEG-LS lossless (PS3.5 A.4.3), JPEG 2000 lossless (A.4.4), HTJ2K lossless
(A.4.6, when an installed encoder makes it) — every UID kept, the result
decoded again and compared with the original bit for bit — or, only where a
rule says so, JPEG 2000 lossy, which makes a new derived instance (new SOP
Instance UID, Lossy Image Compression "01" with its ratio and method, PS3.3
C.7.6.1.1.5; Derivation Code and Source Image Sequence pointing at the
original, as DCMTK's ``dcmcjpeg`` does for a lossy compression).
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    generate_uid,
)

from hilum.dicom.codec_guard import codec_guard
from hilum.errors import HilumError

log = logging.getLogger(__name__)

__all__ = [
    "ALWAYS_LOSSY",
    "COMPRESSIONS",
    "LOSSY",
    "NATIVE",
    "Compressed",
    "TranscodeError",
    "compress",
    "compressible",
    "convert",
    "encoders",
    "is_lossy",
    "to_native",
    "verify",
]

NATIVE: tuple[str, ...] = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
"""The syntaxes a conversion writes: uncompressed, little endian (PS3.5 A.1, A.2)."""

LOSSY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",  # JPEG baseline, extended
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 (may be lossy), Part 2 (may be lossy)
        "1.2.840.10008.1.2.4.203",  # HTJ2K (may be lossy)
        *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)),  # MPEG-2, MPEG-4, HEVC
    }
)
"""Transfer syntaxes whose pixel data may have lost information (PS3.5 A.4, PS3.3 C.7.6.1.1.5)."""

ALWAYS_LOSSY = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109))}
)
"""Syntaxes that cannot carry lossless data (DCT JPEG, video); the others in :data:`LOSSY` may."""

_METHOD = {  # Lossy Image Compression Method (0028,2114) (PS3.3 C.7.6.1.1.5.1)
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",
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
    return (
        str(ds.get("SOPInstanceUID", "")),
        str(ds.get("SOPClassUID", "")),
        str(ds.get("StudyInstanceUID", "")),
        str(ds.get("SeriesInstanceUID", "")),
        str(meta.get("MediaStorageSOPInstanceUID", "")),
    )


def _decode(ds: Dataset, stored: UID) -> None:
    """Encapsulated pixel data decoded to native (frame by frame, pydicom's decoders), UIDs kept."""
    if "PixelData" not in ds:
        return  # an encapsulated syntax says nothing of a data set without pixels
    try:
        with codec_guard("decoder"):
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


# --------------------------------------------------------------------------- compression (the storage policy's)

COMPRESSIONS: dict[str, str] = {
    "jpeg-ls-lossless": str(JPEGLSLossless),  # PS3.5 A.4.3
    "jpeg2000-lossless": str(JPEG2000Lossless),  # PS3.5 A.4.4 (reversible 5/3 wavelet)
    "htj2k-lossless": str(HTJ2KLossless),  # PS3.5 A.4.6 (High-Throughput block coder, reversible)
    "jpeg2000-lossy": str(JPEG2000),  # PS3.5 A.4.4 (irreversible 9/7 wavelet at a target ratio)
}
"""The compressions a storage rule may name, by their name in ``hilum.toml``, and the syntax each writes."""

LOSSY_COMPRESSIONS = frozenset({"jpeg2000-lossy"})
"""Those that lose information: a new instance, only where a rule explicitly allows it."""

SUFFIX = {"jpeg-ls-lossless": "jls", "jpeg2000-lossless": "j2k", "htj2k-lossless": "htj2k", "jpeg2000-lossy": "j2kl"}
"""A short tag per compression, for the names of the files it writes."""

_NATIVE_IN = frozenset({*NATIVE, str(ExplicitVRBigEndian)})
_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB"})
_LOSSY_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2"})  # lossy: not PALETTE COLOR indices, not RGB here


MAX_PIXEL_BYTES = 512 << 20
"""Larger images are left as they are: encoding and verifying hold the original, the new stream and two
decoded copies in memory at once."""


@dataclass(frozen=True)
class Compressed:
    """One instance encoded by :func:`compress`."""

    data: bytes  # the Part 10 file
    transfer_syntax: str
    sop_uid: str  # the original's for a lossless compression; a new one for a lossy
    lossy: bool
    ratio: float  # native pixel bytes / compressed pixel bytes


@functools.cache
def encoders() -> tuple[str, ...]:
    """The compressions (keys of :data:`COMPRESSIONS`) an installed encoder makes here.

    JPEG-LS and JPEG 2000 through pydicom's encoders (pyjpegls,
    pylibjpeg-openjpeg); HTJ2K through ``imagecodecs.htj2k_encode`` (OpenJPH),
    which pydicom does not encode — tried once on a small image and decoded
    back by pydicom's decoder, so a broken build is not offered.
    """
    from pydicom.pixels import get_encoder  # noqa: PLC0415 - pydicom's plugin registry, loaded when asked

    out = []
    for name, ts in COMPRESSIONS.items():
        if name == "htj2k-lossless":
            if _htj2k_works():
                out.append(name)
            continue
        try:
            if get_encoder(ts).is_available:
                out.append(name)
        except (NotImplementedError, ValueError):
            pass
    return tuple(out)


def _htj2k_works() -> bool:
    try:
        import imagecodecs  # noqa: PLC0415 - optional back-end
        from pydicom.pixels import get_decoder  # noqa: PLC0415

        if not get_decoder(HTJ2KLossless).is_available:
            return False
        a = (np.arange(64 * 64, dtype=np.int32).reshape(64, 64) % 4096 - 1024).astype(np.int16)
        back = imagecodecs.htj2k_decode(imagecodecs.htj2k_encode(a, reversible=True))
        return bool(np.array_equal(back, a))
    except Exception:  # noqa: BLE001 - missing or broken back-end: not offered
        return False


def compressible(ds: Dataset, name: str) -> str | None:
    """Why ``ds`` (read from a Part 10 file) cannot be compressed with ``name``; None when it can.

    Only native (uncompressed) images with integer pixels the codecs take:
    Bits Allocated 8 or 16 with Bits Stored 2..16 (JPEG-LS and JPEG 2000
    lossless go up to 16 bits a sample, PS3.5 A.4.3/A.4.4), 1 or 3 samples
    per pixel.  Float pixels, 1- and 32-bit images, YBR native data are left
    as they are, with the reason.
    """
    if name not in COMPRESSIONS:
        return f"unknown compression {name!r}"
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if ts not in _NATIVE_IN:
        return f"not uncompressed ({UID(ts).name if ts else 'no transfer syntax'})"
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return "float pixel data"
    if "PixelData" not in ds:
        return "no pixel data"
    try:
        allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        samples, rows, cols = int(ds.SamplesPerPixel), int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return "image pixel module incomplete"
    if allocated not in (8, 16) or not 2 <= stored <= allocated:
        return f"bit depth the codec cannot take (Bits Allocated {allocated}, Bits Stored {stored})"
    if samples not in (1, 3) or rows < 1 or cols < 1:
        return f"{samples} samples per pixel, {rows}x{cols}"
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    allowed = _LOSSY_PHOTOMETRIC if name in LOSSY_COMPRESSIONS else _PHOTOMETRIC
    if photometric not in allowed or (samples == 3) != (photometric == "RGB"):
        return f"photometric interpretation {photometric or 'missing'} with {samples} sample(s) per pixel"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if rows * cols * samples * (allocated // 8) * frames > MAX_PIXEL_BYTES:
        return f"larger than {MAX_PIXEL_BYTES >> 20} MiB of pixels (compressed in memory, verified by decoding)"
    if name == "htj2k-lossless" and samples != 1:
        return "HTJ2K is done for grayscale images only"
    return None


def compress(data: bytes | bytearray, name: str, *, ratio: float = 10.0, new_uid: str | None = None) -> Compressed:
    """The native Part 10 file ``data`` with its pixels encoded by compression ``name``.

    Lossless: every attribute and UID is kept; only the pixel data and the
    transfer syntax change.  Lossy (``jpeg2000-lossy`` at ``ratio``): a new
    instance — ``new_uid`` (generated when None) with the lossy attributes
    and a reference to the original (see :func:`_mark_lossy`).  Raises
    :class:`TranscodeError` when it cannot be done; the caller then keeps
    the original.  Nothing is verified here: :func:`verify` does that on
    the file as written.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(bytes(data)))
    except Exception as exc:  # noqa: BLE001 - pydicom raises assorted errors on bad files
        raise TranscodeError(f"cannot read the instance: {exc}") from exc
    why = compressible(ds, name)
    if why is not None:
        raise TranscodeError(why)
    if name not in encoders():
        raise TranscodeError(f"no installed encoder makes {name}")
    if str(ds.file_meta.TransferSyntaxUID) == str(ExplicitVRBigEndian):
        to_native(ds)
    uids = _uids(ds)
    original_class, original_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    native_bytes = _native_pixel_bytes(ds)
    ts = COMPRESSIONS[name]
    lossy = name in LOSSY_COMPRESSIONS
    try:
        with warnings.catch_warnings(), codec_guard("encoder"):
            warnings.simplefilter("ignore")  # the codecs' advice (Bits Stored vs precision) is checked by verify
            if name == "htj2k-lossless":
                _compress_htj2k(ds)
            elif name == "jpeg2000-lossless" and str(ds.PhotometricInterpretation) == "RGB":
                # The reversible colour transform (PS3.5 8.2.4: Photometric Interpretation YBR_RCT) halves
                # an RGB ultrasound's size against three independent components (US1_UNCR: 154 vs 336 kB).
                arr = ds.pixel_array
                ds.PhotometricInterpretation = "YBR_RCT"
                ds.PlanarConfiguration = 0  # the array is colour-by-pixel (and J2K has no planes, PS3.5 8.2.4)
                ds.compress(ts, arr, generate_instance_uid=False, use_mct=True)
            elif name == "jpeg2000-lossless":
                ds.compress(ts, generate_instance_uid=False, use_mct=False)
            elif lossy:
                ds.compress(ts, generate_instance_uid=False, j2k_cr=[float(ratio)], use_mct=False)
            else:
                ds.compress(ts, generate_instance_uid=False)
    except TranscodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - a codec refusing this image: this instance only
        raise TranscodeError(f"cannot encode {name}: {type(exc).__name__}: {exc}") from exc
    achieved = native_bytes / max(1, _encapsulated_bytes(ds))
    if lossy:
        _mark_lossy(ds, new_uid or generate_uid(), original_class, original_uid, achieved)
    elif _uids(ds) != uids:
        raise TranscodeError("compression changed a UID")  # a guard on ourselves and the libraries
    return Compressed(encode(ds), ts, str(ds.SOPInstanceUID), lossy, achieved)


def _compress_htj2k(ds: Dataset) -> None:
    """HTJ2K lossless through imagecodecs (OpenJPH), one codestream per frame, encapsulated (PS3.5 A.4.6)."""
    import imagecodecs  # noqa: PLC0415 - optional back-end, checked by encoders()

    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames == 1:
        arr = arr[None, ...]
    streams = [bytes(imagecodecs.htj2k_encode(np.ascontiguousarray(f), reversible=True)) for f in arr]
    ds.PixelData = encapsulate(streams)
    ds["PixelData"].is_undefined_length = True
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless


def _native_pixel_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * (int(ds.BitsAllocated) // 8) * frames


def _encapsulated_bytes(ds: Dataset) -> int:
    return sum(len(f) for f in generate_fragments(ds.PixelData))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _mark_lossy(ds: Dataset, new_uid: str, original_class: str, original_uid: str, ratio: float) -> None:
    """Make ``ds`` the lossy derivative of the original (PS3.3 C.7.6.1.1.5, C.7.6.1.1.3, C.7.6.1.1.2).

    A new SOP Instance UID (in the data set and the file meta); Lossy Image
    Compression "01"; the achieved ratio and the method ``ISO_15444_1``
    appended to any earlier ones (the attributes are multi-valued, one per
    lossy step); Image Type value 1 DERIVED; Derivation Description and
    Derivation Code Sequence (DCM 113040 "Lossy Compression"); Source Image
    Sequence pointing at the original with purpose (DCM 121320 "Uncompressed
    predecessor").  Study and series are kept: the derivative replaces the
    original in its series.
    """
    ds.SOPInstanceUID = new_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(new_uid)
    ds.LossyImageCompression = "01"
    ratios = [str(v) for v in _as_list(ds.get("LossyImageCompressionRatio"))]
    methods = [str(v) for v in _as_list(ds.get("LossyImageCompressionMethod"))]
    ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"[:16]] if ratios else f"{ratio:.2f}"[:16]
    ds.LossyImageCompressionMethod = [*methods, "ISO_15444_1"] if methods else "ISO_15444_1"
    if "ImageType" in ds:
        values = [str(v) for v in _as_list(ds.ImageType)]
        if values:
            values[0] = "DERIVED"
            ds.ImageType = values
    ds.DerivationDescription = f"Lossy compression JPEG 2000 (ISO_15444_1), ratio {ratio:.1f}:1"[:1024]
    ds.DerivationCodeSequence = Sequence([_code("113040", "DCM", "Lossy Compression")])
    source = Dataset()
    source.ReferencedSOPClassUID = original_class
    source.ReferencedSOPInstanceUID = original_uid
    source.PurposeOfReferenceCodeSequence = Sequence([_code("121320", "DCM", "Uncompressed predecessor")])
    ds.SourceImageSequence = Sequence([*(ds.get("SourceImageSequence") or []), source])


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)
    return [value]


_LOSSY_CHANGES = frozenset(
    {
        0x00080008,
        0x00080018,
        0x00082111,
        0x00089215,
        0x00082112,
        0x00282110,
        0x00282112,
        0x00282114,
    }
)  # Image Type, SOP Instance UID, Derivation Description/Code, Source Image Sequence, Lossy Image Compression *


def verify(original: bytes | bytearray, compressed: bytes | bytearray, *, lossless: bool) -> float:
    """Check a compressed file against its original; raises :class:`TranscodeError` when it is not right.

    Both are decoded from their bytes (``compressed`` as read back from
    disk).  Lossless: every attribute outside the file meta and the pixel
    data is equal, every UID is the original's, and the pixels decode to the
    same array — same shape, type and values, bit for bit.  Lossy: the
    same image geometry and type, a new SOP Instance UID, Lossy Image
    Compression "01", the other attributes unchanged.  Returns the largest
    absolute pixel difference (0 for lossless).
    """
    try:
        a = pydicom.dcmread(io.BytesIO(bytes(original)))
        b = pydicom.dcmread(io.BytesIO(bytes(compressed)))
        big_endian = None
        if str(a.file_meta.get("TransferSyntaxUID", "")) == str(ExplicitVRBigEndian):
            # Compared with its little-endian conversion (what compress() encoded); the pixels also with the
            # original's own, below.
            big_endian = a.pixel_array
            a = pydicom.dcmread(io.BytesIO(convert(original)))
    except TranscodeError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise TranscodeError(f"cannot read back: {exc}") from exc
    if str(b.file_meta.TransferSyntaxUID) not in COMPRESSIONS.values():
        raise TranscodeError(f"written in {b.file_meta.TransferSyntaxUID}, not a compressed syntax")
    skip = {0x7FE00010} | (_LOSSY_CHANGES if not lossless else set())
    if (str(a.get("PhotometricInterpretation", "")), str(b.get("PhotometricInterpretation", ""))) == ("RGB", "YBR_RCT"):
        if str(b.file_meta.TransferSyntaxUID) != str(JPEG2000Lossless):
            raise TranscodeError("YBR_RCT outside JPEG 2000 lossless")
        skip.add(0x00280004)  # RGB coded with the reversible colour transform; decodes to the same RGB
    if int(a.get("SamplesPerPixel", 1) or 1) > 1:
        skip.add(0x00280006)  # Planar Configuration: how native bytes lay out; the decoded pixels are compared
    # Group lengths (gggg,0000) are retired outside the file meta (PS3.5 7.2) and pydicom does not write them.
    tags_a = {e.tag for e in a if e.tag.group != 0x0002 and e.tag.element != 0 and e.tag not in skip}
    tags_b = {e.tag for e in b if e.tag.group != 0x0002 and e.tag.element != 0 and e.tag not in skip}
    if tags_a != tags_b:
        raise TranscodeError(f"attributes differ: {sorted(str(t) for t in tags_a ^ tags_b)[:5]}")
    for tag in sorted(tags_a):
        if a[tag].value != b[tag].value:
            raise TranscodeError(f"attribute {a[tag].keyword or tag} differs")
    if lossless:
        if _uids(a) != _uids(b):
            raise TranscodeError("a UID differs")
    else:
        if str(b.SOPInstanceUID) == str(a.SOPInstanceUID) or str(b.get("LossyImageCompression", "")) != "01":
            raise TranscodeError("a lossy compression without a new SOP Instance UID and Lossy Image Compression")
        if str(b.file_meta.MediaStorageSOPInstanceUID) != str(b.SOPInstanceUID):
            raise TranscodeError("file meta and data set name different instances")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pa, pb = a.pixel_array, b.pixel_array
    except Exception as exc:  # noqa: BLE001 - a stream the decoder refuses: not verified
        raise TranscodeError(f"cannot decode: {type(exc).__name__}: {exc}") from exc
    if pa.shape != pb.shape or pa.dtype != pb.dtype:
        raise TranscodeError(f"decodes to {pb.dtype}{pb.shape}, not {pa.dtype}{pa.shape}")
    if lossless:
        if pa.tobytes() != pb.tobytes():
            raise TranscodeError("pixels differ after decoding")
        if big_endian is not None and not np.array_equal(big_endian, pb):
            raise TranscodeError("pixels differ from the big-endian original's")
        return 0.0
    return float(np.max(np.abs(pa.astype(np.int64) - pb.astype(np.int64)))) if pa.size else 0.0
