"""Transcode generated datasets to the transfer syntaxes of PS3.5 Annex A, and write them.

pydicom 3's :meth:`~pydicom.dataset.Dataset.compress` encodes RLE Lossless,
JPEG-LS and JPEG 2000 (with pylibjpeg-rle, pyjpegls and pylibjpeg-openjpeg);
it cannot encode JPEG Baseline, so that one is made with Pillow and
encapsulated with :func:`pydicom.encaps.encapsulate` (PS3.5 A.4.1).  Lossy
results are marked as such (Lossy Image Compression, ratio and method,
PS3.3 C.7.6.1.1.5) and their Image Type becomes DERIVED.
"""

from __future__ import annotations

import copy
import io
import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

log = logging.getLogger(__name__)

SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg-ls-near": JPEGLSNearLossless,
    "j2k": JPEG2000Lossless,
    "j2k-lossy": JPEG2000,
    "jpeg-baseline": JPEGBaseline8Bit,
}
"""Short names of the transfer syntaxes the generator writes."""

NATIVE: frozenset[str] = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})
LOSSLESS: frozenset[str] = NATIVE | {RLELossless, JPEGLSLossless, JPEG2000Lossless}
"""Syntaxes whose decoded pixels equal the source pixels exactly."""

_LOSSY_METHOD = {
    JPEG2000: "ISO_15444_1",
    JPEGLSNearLossless: "ISO_14495_1",
    JPEGBaseline8Bit: "ISO_10918_1",
}


def resolve_syntax(syntax: str) -> UID:
    """A transfer syntax UID from a short name of :data:`SYNTAXES` or a UID."""
    if syntax in SYNTAXES:
        return SYNTAXES[syntax]
    uid = UID(syntax)
    if uid not in SYNTAXES.values():
        raise ValueError(f"unsupported transfer syntax {syntax!r}; use one of {', '.join(SYNTAXES)} or their UIDs")
    return uid


def transcode(
    ds: Dataset,
    syntax: str,
    *,
    j2k_ratio: float = 10.0,
    jls_error: int = 2,
    jpeg_quality: int = 90,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A copy of native-encoded ``ds`` in transfer syntax ``syntax`` (name or UID).

    ``sop_instance_uid`` gives the copy a new SOP Instance UID; a lossy copy is
    a new instance by definition (PS3.3 C.7.6.1.1.5), so give one for lossy
    syntaxes unless the original is discarded.  JPEG Baseline needs an 8-bit
    image (see :func:`~hilum.dicom.generator.series.to_secondary_capture`).
    """
    uid = resolve_syntax(syntax)
    if ds.file_meta.TransferSyntaxUID not in NATIVE:
        raise ValueError(f"transcode needs native pixel data, not {ds.file_meta.TransferSyntaxUID.name}")
    out = copy.deepcopy(ds)
    if sop_instance_uid:
        out.SOPInstanceUID = sop_instance_uid
        out.file_meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    native_bytes = len(out.PixelData)
    if uid in NATIVE:
        out.file_meta.TransferSyntaxUID = uid
        return out
    if uid == JPEGBaseline8Bit:
        _encode_jpeg_baseline(out, jpeg_quality)
    elif uid == JPEG2000:
        out.compress(uid, generate_instance_uid=False, j2k_cr=[j2k_ratio])
    elif uid == JPEGLSNearLossless:
        out.compress(uid, generate_instance_uid=False, jls_error=jls_error)
    else:
        out.compress(uid, generate_instance_uid=False)
    if uid in _LOSSY_METHOD:
        encoded = len(out.PixelData)
        out.LossyImageCompression = "01"
        out.LossyImageCompressionRatio = f"{native_bytes / max(encoded, 1):.2f}"[:16]
        out.LossyImageCompressionMethod = _LOSSY_METHOD[uid]
        image_type = list(out.get("ImageType", ["DERIVED", "PRIMARY"]))
        image_type[0] = "DERIVED"
        out.ImageType = image_type
    return out


def _encode_jpeg_baseline(ds: Dataset, quality: int) -> None:
    """Encode 8-bit grayscale frames as JPEG Baseline (ISO 10918-1 Process 1) with Pillow."""
    from PIL import Image

    if ds.BitsAllocated != 8 or ds.SamplesPerPixel != 1 or ds.PixelRepresentation != 0:
        raise ValueError("JPEG Baseline needs 8-bit unsigned grayscale pixels (Bits Allocated 8)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    arr = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(frames, ds.Rows, ds.Columns)
    fragments = []
    for frame in arr:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality, subsampling=0)
        fragments.append(buf.getvalue())
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit


def write_dataset(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as a DICOM File (PS3.10: preamble, DICM, file meta) in its file meta's syntax."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
