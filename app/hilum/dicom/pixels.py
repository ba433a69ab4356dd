"""Pixel pipeline: decode one frame and turn it into 8-bit display values.

One implementation for the viewer, thumbnails, rendered DICOMweb frames, the
``hilum render`` verb and AI preprocessing (see DESIGN.md, "The domain is pure").

Grayscale (PS3.4 N.2, PS3.3 C.11): stored values → Modality LUT (C.11.1:
Rescale Slope/Intercept or Modality LUT Sequence, per frame for enhanced
objects) → VOI LUT (C.11.2: Window Center/Width with LINEAR, LINEAR_EXACT or
SIGMOID, or a VOI LUT Sequence) → Presentation LUT (C.11.6: IDENTITY/INVERSE,
and MONOCHROME1 inversion, C.7.6.3.1.2) → 8-bit P-Values. For 8- and 16-bit
stored data the whole chain is folded into one lookup table over every possible
stored value, so a frame costs one ``np.take``; the table is cached per
(pipeline, VOI) and so reused while scrolling slices with equal parameters.

The stages after the Modality LUT are one :class:`DisplayTransform` (VOI and
presentation inversion, :mod:`hilum.dicom.pixels_lut`), the same object MPR and
curved MPR display volumes with (:meth:`GrayscalePipeline.display`).

Colour (C.7.6.3.1.2): RGB as is, YBR_FULL/YBR_FULL_422 converted to RGB by
pydicom while decoding, PALETTE COLOR through its Palette Color LUT (C.7.9,
pydicom's ``apply_color_lut``); samples deeper than 8 bits are scaled to 8.

8-bit quantisation: the standard's VOI formulas give a real ``y`` in
``[0, 255]``; Hilum rounds to the nearest integer (``floor(y + 0.5)``). DCMTK's
``dcmj2pnm`` truncates (``floor(y)``), so the two differ by at most one grey
level on a fraction of the pixels (measured in ``tests/test_render_dcmtk.py``).

Decoding: pydicom 3's decoders (:func:`frame_array`, :func:`iter_frames`). The series loader
takes grayscale JPEG-LS, JPEG 2000 lossless, RLE and lossless JPEG frames through
:func:`decode_encapsulated_into` instead: imagecodecs' decoders, which release the GIL, writing
the same stored values as pydicom's decode (tests/test_pixels_codecs.py) straight into the
volume; ``HILUM_FAST_DECODE=0`` turns that off.

Default VOI when the caller gives none (``render_frame(..., window=None)``): the
header's first Window Center/Width, else its first VOI LUT Sequence item, else a
min-max window over the frame's modality values with DCMTK's ``+Wm`` rule
(:meth:`Window.min_max`).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import iter_pixels as _pydicom_iter_pixels
from pydicom.pixels.utils import pixel_array as _pydicom_pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from hilum import upstream
from hilum.dicom.codec_guard import codec_guard
from hilum.dicom.pixels_lut import (
    LUT,
    VOI,
    DisplayTransform,
    ModalityTransform,
    SampledTable,
    TableCache,
    VOITable,
    Window,
    presentation_inverts,
    voi_tables_from_dataset,
    windows_from_dataset,
)
from hilum.errors import HilumError

__all__ = [
    "LUT",
    "VOI",
    "DisplayTransform",
    "FrameIndexError",
    "GrayscalePipeline",
    "ModalityTransform",
    "PixelDataError",
    "SampledTable",
    "VOITable",
    "Window",
    "decode_encapsulated_into",
    "fast_decoding_available",
    "frame_array",
    "is_grayscale",
    "iter_frames",
    "number_of_frames",
    "read_header",
    "render_frame",
    "to_uint8_color",
]

logger = logging.getLogger(__name__)

Source = Dataset | str | os.PathLike[str]
WindowArg = Window | VOITable | tuple[float, float] | None

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
_WHOLE_FILE_SYNTAXES = {DeflatedExplicitVRLittleEndian}


class PixelDataError(HilumError):
    """The object has no usable pixel data, or it cannot be decoded here."""


class FrameIndexError(PixelDataError, IndexError):
    """A frame index outside ``0 .. Number of Frames - 1``."""

    def __init__(self, frame: int, frames: int):
        self.frame = frame
        self.frames = frames
        super().__init__(f"frame index {frame} out of range: the image has {frames} frame(s) (0..{frames - 1})")


# --------------------------------------------------------------------------- reading


def read_header(source: Source) -> Dataset:
    """The dataset of *source* without its pixel data (a Dataset is returned as is).

    Raises :class:`PixelDataError` for a file that is not DICOM.
    """
    if isinstance(source, Dataset):
        return source
    try:
        return pydicom.dcmread(os.fspath(source), stop_before_pixels=True)
    except InvalidDicomError as exc:
        raise PixelDataError(
            f"{os.fspath(source)} is not a DICOM file (no DICM prefix / File Meta Information)"
        ) from exc
    except (OSError, EOFError) as exc:
        raise PixelDataError(f"cannot read {os.fspath(source)}: {exc}") from exc


def number_of_frames(ds: Dataset) -> int:
    """Number of Frames (0028,0008), 1 when absent (PS3.3 C.7.6.6)."""
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def is_grayscale(ds: Dataset) -> bool:
    """True for MONOCHROME1/MONOCHROME2 (the grayscale pipeline applies)."""
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper() in GRAYSCALE


def _decodable(source: Source, header: Dataset | None) -> tuple[Dataset, Dataset | str]:
    """Header and the source to hand to pydicom, after checking it holds an image."""
    ds = header if header is not None else read_header(source)
    if isinstance(source, Dataset) and not any(
        k in source for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
    ):
        raise PixelDataError("the object has no Pixel Data (7FE0,0010)")
    if ds.get("Rows") is None or ds.get("Columns") is None:
        raise PixelDataError("not an image: the object has no Rows/Columns/Pixel Data")
    src: Dataset | str = source if isinstance(source, Dataset) else os.fspath(source)
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if isinstance(src, str) and tsyntax in _WHOLE_FILE_SYNTAXES:
        # pydicom's frame-by-frame file reader cannot inflate a deflated data set
        src = pydicom.dcmread(src)
    return ds, src


_PREFERRED_PLUGINS = {
    # pydicom tries gdcm, then pylibjpeg, then pyjpegls: without gdcm, JPEG-LS went to libjpeg's
    # JPEG-LS codec, 17 ms per 512x512 frame against CharLS's (pyjpegls) 4 ms (both lossless to
    # the same stored values; issue 24's measurements). An unavailable plugin falls back to
    # pydicom's own choice.
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS Near-Lossless
}


@functools.cache
def _plugin_available(tsyntax: str, plugin: str) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return plugin in get_decoder(pydicom.uid.UID(tsyntax)).available_plugins
    except (NotImplementedError, ValueError):
        return False


def _decoding_plugin(ds: Dataset) -> str:
    """The decoder plugin Hilum prefers for *ds*'s transfer syntax, '' for pydicom's own choice."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    plugin = _PREFERRED_PLUGINS.get(tsyntax, "")
    return plugin if plugin and _plugin_available(tsyntax, plugin) else ""


def frame_array(source: Source, frame: int = 0, *, header: Dataset | None = None) -> np.ndarray:
    """Decode one frame (0-based) of *source* to a numpy array of stored values.

    Uses pydicom 3's ``pydicom.pixels.pixel_array(src, index=frame)``, which for
    a path decodes only that frame's bytes/fragments, so a large multi-frame
    object is not decoded whole. Native data comes back masked to Bits Stored and
    sign-extended when Pixel Representation is 1 (PS3.5 8.1.1); YBR_FULL and
    YBR_FULL_422 colour is converted to RGB (PS3.3 C.7.6.3.1.2).

    Shape is (rows, columns) for one sample per pixel, (rows, columns, 3) for
    colour. *header* saves re-reading the header of a path. Raises
    :class:`FrameIndexError` for an out-of-range frame and
    :class:`PixelDataError` when the object has no pixel data or no installed
    decoder can decode it (pydicom's message names the package to install).
    """
    ds, src = _decodable(source, header)
    frames = number_of_frames(ds)
    if not 0 <= frame < frames:
        raise FrameIndexError(frame, frames)
    try:
        with codec_guard("decoder"):  # a CodecPanic is a RuntimeError
            return _pydicom_pixel_array(src, index=frame, as_rgb=True, decoding_plugin=_decoding_plugin(ds))
    except (AttributeError, KeyError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise PixelDataError(f"cannot decode pixel data: {exc}") from exc


def iter_frames(
    source: Source, indices: Iterable[int] | None = None, *, header: Dataset | None = None
) -> Iterator[np.ndarray]:
    """Decode frames of *source* one at a time (all, or the 0-based *indices*).

    pydicom 3's ``iter_pixels``: one frame in memory at a time, for building a
    volume or thumbnails of a large multi-frame object. Same output and errors
    as :func:`frame_array`; indices are checked before anything is decoded.
    """
    ds, src = _decodable(source, header)
    frames = number_of_frames(ds)
    wanted = list(range(frames)) if indices is None else [int(i) for i in indices]
    for index in wanted:
        if not 0 <= index < frames:
            raise FrameIndexError(index, frames)
    try:
        with codec_guard("decoder"):
            yield from _pydicom_iter_pixels(src, indices=wanted, as_rgb=True, decoding_plugin=_decoding_plugin(ds))
    except (AttributeError, KeyError, RuntimeError, NotImplementedError, ValueError) as exc:
        raise PixelDataError(f"cannot decode pixel data: {exc}") from exc


# --------------------------------------------------------------------------- fast codecs


FAST_DECODE = os.environ.get("HILUM_FAST_DECODE", "1").strip().lower() not in ("0", "false", "no", "off")
"""Decode the common compressed grayscale frames with imagecodecs (:func:`decode_encapsulated_into`).

A switch (``HILUM_FAST_DECODE=0`` in the environment, or set to False) sends every frame through
pydicom's own decoders instead; tests run both ways."""

_FAST_CODECS = {
    "1.2.840.10008.1.2.4.80": "jpegls",  # JPEG-LS Lossless (CharLS)
    "1.2.840.10008.1.2.4.81": "jpegls",  # JPEG-LS Near-Lossless (CharLS: integer decoding, exact)
    "1.2.840.10008.1.2.4.90": "j2k",  # JPEG 2000 Lossless Only (OpenJPEG, reversible 5/3 wavelet)
    "1.2.840.10008.1.2.4.57": "ljpeg",  # JPEG Lossless, Process 14 (libjpeg-turbo 3)
    "1.2.840.10008.1.2.4.70": "ljpeg",  # JPEG Lossless, Process 14 Selection Value 1 (libjpeg-turbo 3)
    "1.2.840.10008.1.2.5": "rle",  # RLE Lossless (PS3.5 Annex G)
}
"""Transfer syntaxes :func:`decode_encapsulated_into` takes. Lossy JPEG 2000 (.91) and JPEG Baseline
are left to pydicom: their float/DCT decoding may differ by a grey level between library versions."""

UPSTREAM: dict[str, str] = {
    # the corrections pydicom applies after decoding, which _fast_correct reproduces
    "pydicom.pixels.decoders.base._apply_sign_correction":
        "03b246913aaf136c4072f20906adb465432f4505ee7145ea2932a000e8cbdd4e",
    "pydicom.pixels.decoders.base._correct_unused_bits":
        "6ecf2b734cadb60c547baa10a2e0ad9df1ef4f67f1d862cb4b51c96eac63a12d",
    # which syntax gets which correction (its option defaults)
    "pydicom.pixels.decoders.base.DecodeRunner.__init__":
        "1fec5a0ee9bee37390c4ff01a158ac541f89bdda317f171cd4b8e0dcd851d006",
}  # fmt: skip
"""SHA-256 of the source of the pydicom functions whose behaviour the fast path mirrors: when one
changes, :func:`fast_decoding_available` turns the fast path off (and tests/test_pixels_codecs.py
fails until the new code is read and the digests updated)."""


def upstream_changes() -> list[str]:
    """Names in :data:`UPSTREAM` whose source differs from the digest recorded (or cannot be found)."""
    return upstream.changes(UPSTREAM)


@functools.cache
def _imagecodecs() -> object | None:
    try:
        import imagecodecs
    except ImportError:
        logger.info("imagecodecs is not installed: compressed frames are decoded by pydicom's plugins "
                    "(pip install imagecodecs for faster, multi-threaded loading)")  # fmt: skip
        return None
    changed = upstream_changes()
    if changed:
        logger.error(
            "pydicom's decoding corrections changed (%s): the imagecodecs fast path is off", ", ".join(changed)
        )
        return None
    return imagecodecs


def fast_decoding_available(transfer_syntax: str) -> bool:
    """True when :func:`decode_encapsulated_into` can take frames of *transfer_syntax* here."""
    return FAST_DECODE and str(transfer_syntax) in _FAST_CODECS and _imagecodecs() is not None


def _jpeg_precision(data: bytes, sof: int) -> int | None:
    """Sample precision P of the first start-of-frame marker *sof* (ISO 10918-1 B.2.2, 14495-1 C.2.2)."""
    i, n = 2, len(data)
    if data[:2] != b"\xff\xd8":
        return None
    while i + 4 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == sof:
            return data[i + 4]
        if marker in (0xDA, 0xD9):  # start of scan / end of image before the frame header
            return None
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def decode_encapsulated_into(
    path: str,
    offset: int,
    frame: int,
    out: np.ndarray,
    *,
    transfer_syntax: str,
    number_of_frames: int,
    bits_allocated: int,
    bits_stored: int,
    signed: bool,
    photometric: str = "MONOCHROME2",
    threads: int = 1,
) -> bool:
    """Decode frame *frame* of the encapsulated Pixel Data at file *offset* (its Basic Offset Table
    item) of *path* straight into *out* (rows x columns, one sample, the stored dtype).

    The decoders are imagecodecs' (CharLS, OpenJPEG, libjpeg-turbo 3, its own RLE), which release
    the GIL, so a plain thread pool decodes a series on every core with no copies between processes.
    Afterwards the stored values are made what pydicom's decode gives (PS3.5 8.1.1): JPEG-LS signed
    data sign-extended from the codestream's precision, JPEG 2000 sign-corrected when the codestream's
    signedness differs from Pixel Representation, RLE and lossless JPEG masked / sign-extended to Bits
    Stored (pydicom's ``_apply_sign_correction`` / ``_correct_unused_bits``, held by :data:`UPSTREAM`).

    *threads* > 1 lets OpenJPEG split one JPEG 2000 frame over that many threads (the first image
    of a series, while no other frame decodes: 27 -> 19 ms on 2 cores); the frames of a series are
    better spread one per thread.

    Returns False, with nothing decided, for anything unusual (a precision that does not fit Bits
    Allocated, a frame a decoder rejects): the caller then hands the frame to pydicom
    (:func:`frame_array`). Measured on 200 512x512 CT slices, 2 cores: JPEG-LS 3.6 ms, lossless JPEG
    1.6-2.0 ms (pydicom's libjpeg 7.8 ms), RLE 0.45 ms, JPEG 2000 27 ms per frame per core.
    """
    codecs: Any = _imagecodecs()
    kind = _FAST_CODECS.get(str(transfer_syntax))
    if codecs is None or kind is None or not FAST_DECODE or photometric not in GRAYSCALE:
        return False
    itemsize = bits_allocated // 8
    if (out.ndim != 2 or bits_allocated not in (8, 16) or out.dtype.itemsize != itemsize or out.dtype.kind != ("i" if signed else "u")
            or not out.flags.c_contiguous or not 0 < bits_stored <= bits_allocated):  # fmt: skip
        return False
    from pydicom.encaps import get_frame

    raw = out.view(f"<u{itemsize}")
    try:
        with open(path, "rb") as fp:
            fp.seek(offset)
            data = get_frame(fp, frame, number_of_frames=number_of_frames)
        if kind == "rle":
            codecs.dicomrle_decode(data, f"<u{itemsize}", out=raw.data.cast("B"))
            _shift_to_bits_stored(out, bits_allocated, bits_stored)
            return True
        if kind == "j2k":
            from pydicom.pixels.utils import get_j2k_parameters

            info = get_j2k_parameters(data)
            precision, j2k_signed = info.get("precision"), info.get("is_signed")
            if precision is None or j2k_signed is None or (precision > 8) != (itemsize == 2):
                return False
            codecs.jpeg2k_decode(data, out=raw, numthreads=threads if threads > 1 else None)
            if bool(j2k_signed) != signed and 8 * itemsize > precision:
                _shift_to_bits_stored(out, bits_allocated, precision)
            return True
        precision = _jpeg_precision(data, 0xF7 if kind == "jpegls" else 0xC3)
        if precision is None or (precision > 8) != (itemsize == 2):
            return False
        if kind == "jpegls":
            codecs.jpegls_decode(data, out=raw)
            if signed and 8 * itemsize > precision:
                _shift_to_bits_stored(out, bits_allocated, precision)
        else:
            codecs.jpeg8_decode(data, out=raw)
            _shift_to_bits_stored(out, bits_allocated, bits_stored)
    except Exception as exc:  # noqa: BLE001 - imagecodecs raises its own error classes; pydicom has the last word
        logger.debug("imagecodecs cannot decode frame %d of %s (%s): handing it to pydicom", frame, path, exc)
        return False
    return True


def _shift_to_bits_stored(arr: np.ndarray, bits_allocated: int, bits: int) -> None:
    """Keep the low *bits* of each value, sign-extended for a signed dtype (pydicom's shift pair)."""
    shift = bits_allocated - bits
    if shift > 0:
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)


# --------------------------------------------------------------------------- grayscale


_LUTS = TableCache(32)


@dataclass(frozen=True)
class GrayscalePipeline:
    """The grayscale transforms of one frame (PS3.4 N.2), ready to apply repeatedly.

    Build it once with :meth:`from_dataset` (cheap: reads attributes only) and
    call :meth:`apply` on each decoded frame and each window change. For 8- and
    16-bit stored values it builds a 256/65536-entry uint8 table over every
    possible stored value (indexed through an unsigned view, so signed data
    needs no arithmetic) and caches it, so applying costs one ``np.take``.
    Other data (32-bit, float) is computed directly in float64.
    """

    modality: ModalityTransform
    windows: tuple[Window, ...] = ()
    voi_tables: tuple[VOITable, ...] = ()
    invert: bool = False
    photometric: str = "MONOCHROME2"

    @classmethod
    def from_dataset(
        cls, ds: Dataset, frame: int = 0, *, presentation_lut_shape: str | None = None
    ) -> GrayscalePipeline:
        """Read the pipeline that applies to *frame* (0-based) of *ds*.

        Per-frame values of enhanced objects (Pixel Value Transformation and
        Frame VOI LUT functional groups, PS3.3 C.7.6.16.2.9-10) are honoured.
        *presentation_lut_shape* (IDENTITY/INVERSE) overrides the image's own,
        e.g. from a presentation state.
        """
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
        if photometric not in GRAYSCALE:
            raise ValueError(f"the grayscale pipeline needs MONOCHROME1/2, not {photometric}")
        modality = ModalityTransform.from_dataset(ds, frame)
        return cls(
            modality=modality,
            windows=windows_from_dataset(ds, frame),
            voi_tables=voi_tables_from_dataset(ds, frame, modality),
            invert=presentation_inverts(ds, presentation_lut_shape),
            photometric=photometric,
        )

    # ---- VOI choice

    @property
    def voi_choices(self) -> tuple[VOI, ...]:
        """The header's VOI transforms in order: each window, then each VOI LUT."""
        return (*self.windows, *self.voi_tables)

    def default_voi(self, voi_index: int = 0) -> VOI | None:
        """The header VOI at *voi_index* of :attr:`voi_choices`, None if there is none.

        With the default index 0 this is the first Window Center/Width if any,
        else the first VOI LUT Sequence item (C.11.2 lets the application choose;
        windows are what radiologists tune). None means "use a min-max window".
        """
        choices = self.voi_choices
        if not choices:
            if voi_index:
                raise IndexError(f"VOI index {voi_index} out of range: the image has no VOI in its header")
            return None
        if not 0 <= voi_index < len(choices):
            raise IndexError(
                f"VOI index {voi_index} out of range: the image has {len(choices)} (0..{len(choices) - 1})"
            )
        return choices[voi_index]

    def min_max_window(self, stored: np.ndarray) -> Window:
        """Window covering the modality values present in *stored* (DCMTK ``+Wm`` rule)."""
        lo_s, hi_s = (
            (np.nanmin(stored), np.nanmax(stored)) if stored.dtype.kind == "f" else (stored.min(), stored.max())
        )
        if self.modality.lut is None:
            ends = self.modality.apply(np.array([lo_s, hi_s]))
        else:  # a LUT need not be monotonic: look at every value in the range
            ends = self.modality.apply(np.arange(int(lo_s), int(hi_s) + 1))
        lo, hi = float(np.min(ends)), float(np.max(ends))
        return Window.min_max(lo, hi)

    def resolve_voi(self, stored: np.ndarray | None, window: WindowArg = None, voi_index: int = 0) -> VOI:
        """The VOI actually applied for *window*: given, header's, or min-max of *stored*."""
        if isinstance(window, (Window, VOITable)):
            return window
        if window is not None:
            center, width = window
            return Window(float(center), float(width))
        voi = self.default_voi(voi_index)
        if voi is not None:
            return voi
        if stored is None:
            raise ValueError("no window given and the header has none: pass the frame for a min-max window")
        return self.min_max_window(stored)

    def display(
        self, stored: np.ndarray | None = None, window: WindowArg = None, voi_index: int = 0
    ) -> DisplayTransform:
        """The stages after the Modality LUT for *window* (see :meth:`resolve_voi`) with this
        image's presentation inversion: what MPR and every other view apply to modality values."""
        return DisplayTransform(self.resolve_voi(stored, window, voi_index), self.invert)

    # ---- apply

    def modality_values(self, stored: np.ndarray) -> np.ndarray:
        """Modality values (e.g. Hounsfield units) of *stored*, float64."""
        return self.modality.apply(stored)

    def lut(self, dtype: np.dtype, voi: VOI) -> np.ndarray | None:
        """The uint8 table over all values of an 8/16-bit integer *dtype*, or None.

        Entry ``i`` is the P-Value of the stored value whose bit pattern, read
        as *dtype*, is ``i`` (two's complement for signed types).
        """
        dtype = np.dtype(dtype)
        if dtype.kind not in "iu" or dtype.itemsize > 2:
            return None
        key = (self.modality, self.invert, voi, dtype.str)
        table = _LUTS.get(key)
        if table is not None:
            return table
        unsigned = np.dtype(f"u{dtype.itemsize}")
        domain = np.arange(1 << (8 * dtype.itemsize), dtype=np.int64).astype(unsigned).view(dtype)
        return _LUTS.put(key, DisplayTransform(voi, self.invert).apply(self.modality.apply(domain)))

    def apply(self, stored: np.ndarray, window: WindowArg = None, voi_index: int = 0) -> np.ndarray:
        """8-bit P-Values of *stored* (any shape) through modality → VOI → presentation.

        *window*: ``(center, width)`` (LINEAR), a :class:`Window`, a
        :class:`VOITable`, or None for the default (see module docstring).
        """
        stored = np.asarray(stored)
        voi = self.resolve_voi(stored, window, voi_index)
        table = self.lut(stored.dtype, voi)
        if table is not None:
            unsigned = np.dtype(f"u{stored.dtype.itemsize}")
            return np.take(table, stored.view(unsigned))
        return DisplayTransform(voi, self.invert).apply(self.modality.apply(stored))


# --------------------------------------------------------------------------- colour


def to_uint8_color(rgb: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Reduce colour samples of nominal depth *bits* to 8 bits by keeping the top 8.

    ``v >> (bits - 8)``: exact for both common ways of widening 8-bit colour to
    16 bits (``v8 << 8``, as in most 16-bit palettes, and ``v8 * 257``), and the
    same as DCMTK. *bits* is Bits Stored or a palette's LUT depth; 8-bit input
    is returned unchanged.
    """
    if rgb.dtype == np.uint8:
        return rgb
    if bits is None:
        bits = 8 * rgb.dtype.itemsize
    if rgb.dtype.kind == "f":
        out = np.clip(np.floor(rgb * (255.0 / float((1 << bits) - 1)) + 0.5), 0, 255)
        return out.astype(np.uint8)
    values = rgb.astype(np.int64)
    if bits > 8:
        values >>= bits - 8
    return np.clip(values, 0, 255).astype(np.uint8)


def _render_color(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "PALETTE COLOR":
        # C.7.6.3.1.5 / C.7.9: stored value → R, G, B through the palette LUTs.
        rgb = apply_color_lut(arr, ds)
        if rgb.shape[-1] == 4:  # alpha palette: drop alpha for display
            rgb = rgb[..., :3]
        desc = ds.get("RedPaletteColorLookupTableDescriptor")
        bits = int(desc[2]) if desc is not None and rgb.dtype != np.uint8 else None
        return to_uint8_color(np.ascontiguousarray(rgb), bits)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise PixelDataError(f"unsupported colour layout {arr.shape} for {photometric}")
    bits_stored = int(ds.get("BitsStored", 8) or 8)
    return to_uint8_color(arr, bits_stored if arr.dtype != np.uint8 else None)


# --------------------------------------------------------------------------- render


def render_frame(
    source: Source,
    frame: int = 0,
    window: WindowArg = None,
    voi_index: int = 0,
    *,
    presentation_lut_shape: str | None = None,
) -> np.ndarray:
    """Render frame *frame* (0-based) of *source* to 8-bit display values.

    Returns H×W uint8 for grayscale (P-Values through :class:`GrayscalePipeline`)
    or H×W×3 uint8 RGB for colour. *window* is ``(center, width)`` (LINEAR,
    PS3.3 C.11.2.1.2.1), a :class:`Window`, a :class:`VOITable`, or None for the
    header's VOI at *voi_index* (windows first, then VOI LUTs) falling back to a
    min-max window. *source* is a dataset or a path (a path decodes only the
    requested frame).
    """
    ds = read_header(source)
    arr = frame_array(source, frame, header=ds)
    if not is_grayscale(ds):
        return _render_color(ds, arr)
    pipeline = GrayscalePipeline.from_dataset(ds, frame, presentation_lut_shape=presentation_lut_shape)
    return pipeline.apply(arr, window, voi_index)
