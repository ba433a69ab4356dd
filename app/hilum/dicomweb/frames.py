"""Pixel data for WADO-RS frames and bulk data, and instance transcoding.

Frames are read straight from the stored file: the header is parsed up to
Pixel Data, then a native frame is one ``seek`` + ``read`` at
``offset + index × frame size`` and an encapsulated frame is found through
the Basic/Extended Offset Table or the fragments (pydicom's ``get_frame`` on
the open file), so a frame of a large multi-frame object costs one frame's
I/O (PS3.18 10.4.1.1.4 "Frame resources").

Transcoding (PS3.18 8.7.3.5.2: the client names a Transfer Syntax, the origin
server converts when it can) uses pydicom's decoders and encoders; what is
possible here is known in advance (:mod:`.media`), so a request that cannot
be honoured gets 406 before anything is sent.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import encaps
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

from hilum.dicom.codec_guard import codec_guard
from hilum.dicom.transcode import convert, encode, to_native
from hilum.dicomweb.media import EVRLE, IVRLE, LOSSY
from hilum.errors import HilumError

log = logging.getLogger(__name__)

_PIXEL_DATA = 0x7FE00010
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}


class FrameError(HilumError, ValueError):
    """The request's frames cannot be served (no pixel data, frame out of range)."""


@dataclass
class PixelInfo:
    """Where and how an instance's Pixel Data is stored."""

    syntax: str
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric: str
    planar: int
    frames: int
    offset: int  # file offset of the value
    length: int  # 0xFFFFFFFF for encapsulated
    little_endian: bool = True

    @property
    def encapsulated(self) -> bool:
        return self.length == 0xFFFFFFFF

    @property
    def frame_size(self) -> int:
        return self.rows * self.columns * self.samples * self.bits_allocated // 8

    def encoder_kwargs(self) -> dict[str, object]:
        return dict(rows=self.rows, columns=self.columns, samples_per_pixel=self.samples,
                    bits_allocated=self.bits_allocated, bits_stored=self.bits_stored,
                    pixel_representation=self.pixel_representation,
                    photometric_interpretation=self.photometric, number_of_frames=1,
                    planar_configuration=self.planar)


def _int(ds: Dataset, kw: str, default: int = 0) -> int:
    try:
        v = ds.get(kw)
        return int(v) if v not in (None, "") else default
    except (TypeError, ValueError):
        return default


def pixel_info(path: str | os.PathLike[str] | bytes) -> tuple[Dataset, PixelInfo | None]:
    """The header (without pixel data) and where the pixel data is; None for non-images.

    ``path`` is a stored file, or the bytes of one (what leaves the archive,
    :meth:`~hilum.archive.Archive.read_outgoing`).
    """
    with (io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else open(path, "rb")) as f:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", EVRLE))
        if syntax == "1.2.840.10008.1.2.1.99":
            return ds, None  # deflated: no offsets into the file; callers decode the whole dataset
        pos = f.tell()
        head = f.read(12)
    if len(head) < 8:
        return ds, None
    little = syntax != "1.2.840.10008.1.2.2"
    e = "<" if little else ">"
    group, elem = struct.unpack(e + "HH", head[:4])
    if (group << 16 | elem) != _PIXEL_DATA:
        return ds, None
    if syntax == IVRLE:
        length = struct.unpack(e + "L", head[4:8])[0]
        offset = pos + 8
    elif head[4:6] in _LONG_VRS:
        length = struct.unpack(e + "L", head[8:12])[0]
        offset = pos + 12
    else:
        length = struct.unpack(e + "H", head[6:8])[0]
        offset = pos + 8
    if ds.get("Rows") is None or ds.get("Columns") is None:
        return ds, None
    info = PixelInfo(
        syntax=syntax, rows=_int(ds, "Rows"), columns=_int(ds, "Columns"),
        samples=_int(ds, "SamplesPerPixel", 1), bits_allocated=_int(ds, "BitsAllocated", 8),
        bits_stored=_int(ds, "BitsStored", _int(ds, "BitsAllocated", 8)),
        pixel_representation=_int(ds, "PixelRepresentation"),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2"),
        planar=_int(ds, "PlanarConfiguration"), frames=max(_int(ds, "NumberOfFrames", 1), 1),
        offset=offset, length=length, little_endian=little)
    return ds, info


def check_frames(info: PixelInfo | None, numbers: list[int]) -> PixelInfo:
    if info is None:
        raise FrameError("the instance has no pixel data frames")
    bad = [n for n in numbers if not 1 <= n <= info.frames]
    if bad:
        raise FrameError(f"frame {bad[0]} out of range: the instance has {info.frames} frame(s)")
    return info


def stored_frames(path: str | os.PathLike[str], info: PixelInfo, numbers: list[int]) -> list[bytes]:
    """Frames (1-based numbers) as stored: native little-endian bytes or one compressed bitstream each."""
    out: list[bytes] = []
    with open(path, "rb") as f:
        for n in numbers:
            if info.encapsulated:
                f.seek(info.offset)
                out.append(encaps.get_frame(f, n - 1, number_of_frames=info.frames))
            elif info.bits_allocated == 1:
                out.append(_one_bit_frame(f, info, n))
            else:
                f.seek(info.offset + (n - 1) * info.frame_size)
                data = f.read(info.frame_size)
                if len(data) != info.frame_size:
                    raise FrameError(f"frame {n} is truncated in the stored file")
                if not info.little_endian and info.bits_allocated > 8:
                    data = np.frombuffer(data, dtype=f">u{info.bits_allocated // 8}").astype(
                        f"<u{info.bits_allocated // 8}").tobytes()
                out.append(data)
    return out


def _one_bit_frame(f: io.BufferedReader, info: PixelInfo, n: int) -> bytes:
    """A 1-bit frame, re-packed to start on a byte boundary (frames of 1-bit data need not)."""
    bits = info.rows * info.columns * info.samples
    start_bit = (n - 1) * bits
    f.seek(info.offset + start_bit // 8)
    raw = f.read((start_bit % 8 + bits + 7) // 8)
    unpacked = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    frame = unpacked[start_bit % 8: start_bit % 8 + bits]
    return np.packbits(frame, bitorder="little").tobytes()


#: Lossy targets a ``ratio`` applies to (JPEG 2000, HTJ2K: irreversible wavelet at a target ratio).
RATIO_TARGETS = frozenset({"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"})
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K = "1.2.840.10008.1.2.4.203"
#: Lossy JPEG 2000 ratio when the client names the syntax but no ``ratio``.
DEFAULT_RATIO = 10.0
MIN_RATIO = 1.0
MAX_RATIO = 200.0


def is_lossy_target(target: str, ratio: float | None) -> bool:
    """Whether frames sent in ``target`` (at ``ratio``) lose information.

    JPEG 2000 (.91) is always encoded irreversibly here; HTJ2K (.203) only
    with a ``ratio`` (without one it is written reversibly); JPEG-LS near
    lossless (.81) and the DCT JPEGs always lose.
    """
    if target == HTJ2K:
        return ratio is not None
    return target in LOSSY


def frames_as(path: str | os.PathLike[str], info: PixelInfo, numbers: list[int], target: str,
              ratio: float | None = None) -> list[bytes]:
    """Frames in ``target`` syntax: as stored when it matches, else decoded and (re-)encoded.

    ``ratio`` (native bytes / compressed bytes) is the target of a lossy
    JPEG 2000 / HTJ2K encoding (:data:`RATIO_TARGETS`); ignored otherwise.
    Nothing stored changes: the frames are encoded in memory for this answer.
    """
    if (target == info.syntax and ratio is None) or (target == EVRLE and info.syntax in (IVRLE, EVRLE)):
        return stored_frames(path, info, numbers)
    from hilum.dicom.pixels import frame_array

    out: list[bytes] = []
    for n in numbers:
        arr = frame_array(path, n - 1)
        if target in (EVRLE, IVRLE):
            dtype = arr.dtype.newbyteorder("<")
            out.append(np.ascontiguousarray(arr, dtype=dtype).tobytes())
        else:
            out.append(encode_frame(arr, info, target, ratio))
    return out


def encode_frame(arr: np.ndarray, info: PixelInfo, target: str, ratio: float | None = None) -> bytes:
    """One decoded frame compressed to ``target`` (pydicom's encoders; HTJ2K through imagecodecs)."""
    if target in (HTJ2K_LOSSLESS, HTJ2K):
        return _encode_htj2k(arr, info, ratio if target == HTJ2K else None)
    from pydicom.pixels import get_encoder

    kwargs = info.encoder_kwargs()
    if arr.ndim == 3:
        kwargs["photometric_interpretation"] = "RGB"
        kwargs["planar_configuration"] = 0
    if kwargs["photometric_interpretation"] not in ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL"):
        kwargs["photometric_interpretation"] = "RGB" if arr.ndim == 3 else "MONOCHROME2"
    extra: dict[str, object] = {}
    if target == "1.2.840.10008.1.2.4.91":
        extra["j2k_cr"] = [ratio or DEFAULT_RATIO]
    elif target == "1.2.840.10008.1.2.4.81":
        extra["jls_error"] = 2
    encoder = get_encoder(UID(target))
    return bytes(encoder.encode(np.ascontiguousarray(arr), **kwargs, **extra))  # type: ignore[arg-type]


def _encode_htj2k(arr: np.ndarray, info: PixelInfo, ratio: float | None) -> bytes:
    """HTJ2K (OpenJPH through imagecodecs): reversible, or irreversible near ``ratio``.

    OpenJPH takes a quantisation step, not a rate: the step is bisected (in
    log scale, a few fast encodes) until the stream is within 15% of
    ``native bytes / ratio`` or the search ends; the smallest stream not
    above the target is kept (the last one tried if none is).
    """
    import imagecodecs  # noqa: PLC0415 - optional back-end (media.can_encode checks it)

    a = np.ascontiguousarray(arr)
    if ratio is None:
        return bytes(imagecodecs.htj2k_encode(a, reversible=True))
    goal = a.nbytes / ratio
    lo, hi = -5.0, 0.0  # log10 of the quantisation step
    best: bytes | None = None
    last = b""
    for _ in range(10):
        mid = (lo + hi) / 2
        last = bytes(imagecodecs.htj2k_encode(a, level=10**mid, reversible=False))
        if len(last) > goal:
            lo = mid  # too big: coarser step
        else:
            best = last
            hi = mid
            if len(last) >= goal * 0.85:
                break
    return best if best is not None else last


def achieved_ratio(info: PixelInfo, data: list[bytes]) -> float:
    """Native bytes / bytes sent for ``data``, frames of ``info``."""
    sent = sum(len(d) for d in data)
    return info.frame_size * len(data) / sent if sent else 0.0


def transcode(data: bytes | Path, target: str, ratio: float | None = None) -> bytes:
    """A Part 10 instance re-encoded in ``target`` (callers check :func:`media.can_transcode_instance` first).

    Lossless, every UID kept (PS3.5 Annex A; :mod:`hilum.dicom.transcode`):
    to an uncompressed syntax the pixel data is decoded, byte-swapped or
    inflated; to a lossless compressed one it is then encoded again (HTJ2K
    through imagecodecs, the rest through pydicom).  A lossy target other
    than the stored syntax is refused (``ValueError``) unless the client
    asked for a lossy rendition explicitly with a ``ratio`` (JPEG 2000 /
    HTJ2K, :data:`RATIO_TARGETS`): then the instance is sent for display
    with Lossy Image Compression ``01``, the ratio achieved and the method
    appended (PS3.3 C.7.6.1.1.5) — UIDs unchanged, since it is a rendition
    of this instance on the wire, never stored (the client must not file
    it as the original).  Objects without pixel data only change their
    (uncompressed) encoding; asked for a compressed syntax they are sent as
    Explicit VR Little Endian, since a compressed Transfer Syntax says
    nothing about non-pixel data.  A codec that crashes on the data (a Rust panic) raises
    :class:`~hilum.dicom.codec_guard.CodecPanic`, a RuntimeError.
    """
    with codec_guard("codec"):
        return _transcode(data, target, ratio)


def _transcode(data: bytes | Path, target: str, ratio: float | None) -> bytes:
    raw = data if isinstance(data, (bytes, bytearray)) else Path(data).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(raw))
    stored = str(ds.file_meta.get("TransferSyntaxUID", EVRLE))
    if ratio is not None and target not in RATIO_TARGETS:
        ratio = None
    if target == stored and ratio is None:
        return bytes(raw)
    lossy = is_lossy_target(target, ratio)
    if lossy and ratio is None:
        raise ValueError(f"{UID(target).name} is lossy: that would be a new instance, not this one")
    has_pixels = "PixelData" in ds
    if target in (EVRLE, IVRLE) or not has_pixels:
        return convert(raw, target if target in (EVRLE, IVRLE) else EVRLE)
    native = to_native(ds, EVRLE)
    if target in (HTJ2K_LOSSLESS, HTJ2K) or lossy:
        info = _native_info(native)
        arr = native.pixel_array
        frames = [arr] if info.frames == 1 else list(arr)
        streams = [encode_frame(f, info, target, ratio) for f in frames]
        native.PixelData = encaps.encapsulate(streams)
        native["PixelData"].VR = "OB"
        native["PixelData"].is_undefined_length = True
        native.file_meta.TransferSyntaxUID = UID(target)
        if arr.ndim == 4 or (arr.ndim == 3 and info.samples == 3):
            native.PhotometricInterpretation = "RGB" if info.photometric != "YBR_FULL" else info.photometric
            native.PlanarConfiguration = 0
        if lossy:
            mark_lossy(native, achieved_ratio(info, streams), target)
    else:
        native.compress(UID(target), generate_instance_uid=False)
    return encode(native)


def _native_info(ds: Dataset) -> PixelInfo:
    return PixelInfo(
        syntax=EVRLE, rows=_int(ds, "Rows"), columns=_int(ds, "Columns"), samples=_int(ds, "SamplesPerPixel", 1),
        bits_allocated=_int(ds, "BitsAllocated", 8), bits_stored=_int(ds, "BitsStored", _int(ds, "BitsAllocated", 8)),
        pixel_representation=_int(ds, "PixelRepresentation"),
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2"),
        planar=_int(ds, "PlanarConfiguration"), frames=max(_int(ds, "NumberOfFrames", 1), 1), offset=0, length=0)


LOSSY_METHOD = {"1.2.840.10008.1.2.4.91": "ISO_15444_1", "1.2.840.10008.1.2.4.203": "ISO_15444_15",
                "1.2.840.10008.1.2.4.81": "ISO_14495_1", "1.2.840.10008.1.2.4.50": "ISO_10918_1",
                "1.2.840.10008.1.2.4.51": "ISO_10918_1"}


def mark_lossy(ds: Dataset, ratio: float, target: str) -> None:
    """Lossy Image Compression ``01`` with this step's ratio and method appended (PS3.3 C.7.6.1.1.5)."""
    ratios = _values(ds.get("LossyImageCompressionRatio"))
    methods = _values(ds.get("LossyImageCompressionMethod"))
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"]
    ds.LossyImageCompressionMethod = [*methods, LOSSY_METHOD.get(target, "ISO_15444_1")]


def _values(v: Any) -> list[str]:
    if v is None or v == "":
        return []
    if isinstance(v, (list, tuple, MultiValue)):
        return [str(x) for x in v]
    return [str(v)]
