"""The grayscale transforms of the softcopy pipeline, one class each.

PS3.4 N.2 (Grayscale Transformations) orders them: stored values → Modality LUT
(PS3.3 C.11.1) → VOI LUT (C.11.2) → Presentation LUT (C.11.6) → P-Values. This
module reads each stage from a dataset (including the per-frame and shared
Functional Groups of enhanced multi-frame objects, C.7.6.16) and applies it to
numpy arrays. :mod:`hilum.dicom.pixels` composes them into a lookup table.

Conventions: every VOI stage returns *normalised* output in ``[0, 1]``, i.e.
``(y - ymin) / (ymax - ymin)`` of the standard's formulas, so that the caller
chooses the output depth (8-bit for display).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from hilum.dicom.geometry import functional_group_item  # the one functional-group lookup (PS3.3 C.7.6.16)

logger = logging.getLogger(__name__)

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
"""Defined Terms of VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3."""


# --------------------------------------------------------------------------- helpers


def is_little_endian(ds: Dataset) -> bool:
    """Byte order the dataset was encoded in (needed to unpack OW LUT Data)."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is not None:
        try:
            return bool(tsyntax.is_little_endian)
        except (AttributeError, ValueError):  # unknown/private transfer syntax
            pass
    encoding = getattr(ds, "original_encoding", (None, None))
    return encoding[1] is not False


def _floats(value: Any) -> list[float]:
    """A DS value of VM 1-n as a list of floats (empty when absent/blank)."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [float(v) for v in value if v is not None and v != ""]
    return [float(value)]


def _strings(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return [str(value)]


# --------------------------------------------------------------------------- LUT


@dataclass(frozen=True, eq=False)
class LUT:
    """A lookup table given by LUT Descriptor + LUT Data (PS3.3 C.11.1.1.1, C.11.2.1.1).

    ``first_mapped`` is the input value mapped to ``data[0]``; inputs below it map
    to the first entry and inputs past the last entry to the last entry.
    ``bits`` is the descriptor's third value: the output range is
    ``0 .. 2**bits - 1``.
    """

    first_mapped: int
    data: np.ndarray
    bits: int
    explanation: str = ""
    _key: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if self.data.ndim != 1 or self.data.size == 0:
            raise ValueError("LUT Data must be a non-empty 1-D array")
        if not 1 <= self.bits <= 16:
            raise ValueError(f"LUT Descriptor bits per entry must be 1..16, not {self.bits}")
        self.data.setflags(write=False)
        object.__setattr__(self, "_key", hash((self.first_mapped, self.bits, self.data.tobytes())))

    def __hash__(self) -> int:
        return self._key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LUT):
            return NotImplemented
        return (
            self._key == other._key
            and self.first_mapped == other.first_mapped
            and self.bits == other.bits
            and np.array_equal(self.data, other.data)
        )

    @property
    def max_output(self) -> int:
        """Largest output value the descriptor allows (``2**bits - 1``)."""
        return (1 << self.bits) - 1

    def lookup(self, values: np.ndarray) -> np.ndarray:
        """Map input *values* through the table (C.11.1.1.1 / C.11.2.1.1).

        Non-integer inputs (a rescaled Modality output feeding a VOI LUT) are
        rounded to the nearest entry; out-of-range inputs are clamped to the
        first / last entry as the standard requires.
        """
        values = np.asarray(values)
        if values.dtype.kind == "f":
            idx = np.floor(values + 0.5)
            idx -= self.first_mapped
            np.clip(idx, 0, self.data.size - 1, out=idx)
            index = idx.astype(np.intp)
        else:
            index = np.clip(values.astype(np.int64) - self.first_mapped, 0, self.data.size - 1)
        return self.data[index]

    @classmethod
    def from_item(cls, item: Dataset, *, signed_input: bool, little_endian: bool = True) -> LUT:
        """Read one Modality/VOI LUT Sequence item.

        LUT Descriptor semantics (C.11.1.1.1): first value = number of entries,
        0 meaning 65536; second = first input value mapped, US or SS depending on
        whether the input is signed (*signed_input*) -- a value read as US above
        32767 is taken as two's complement when the input is signed; third = bits
        per entry. LUT Data is US (a list) or OW (bytes in the dataset's byte
        order; 8-bit entries may be packed two per word by some writers).
        """
        desc = [int(v) for v in item.LUTDescriptor]
        if len(desc) != 3:
            raise ValueError(f"LUT Descriptor must have 3 values, not {desc}")
        entries, first, bits = desc
        if entries < 0:  # read as SS by an over-eager VR fixer
            entries += 65536
        entries = entries or 65536
        if signed_input and first > 32767:
            first -= 65536
        elif not signed_input and first < 0:
            first += 65536
        elem = item["LUTData"]
        raw = elem.value
        if isinstance(raw, (bytes, bytearray)):
            if len(raw) >= 2 * entries:
                dtype = np.dtype("<u2" if little_endian else ">u2")
                data = np.frombuffer(bytes(raw[: 2 * entries]), dtype=dtype).astype(np.uint16)
            elif len(raw) >= entries:  # 8-bit entries packed two per 16-bit word
                data = np.frombuffer(bytes(raw[:entries]), dtype=np.uint8).astype(np.uint16)
            else:
                raise ValueError(f"LUT Data holds {len(raw)} bytes for {entries} entries")
        else:
            values = [raw] if isinstance(raw, int) else list(raw)
            data = np.asarray(values, dtype=np.int64).astype(np.uint16)
        if data.size < entries:
            raise ValueError(f"LUT Data has {data.size} entries, descriptor says {entries}")
        data = data[:entries]
        if bits < 16:
            data = data & np.uint16((1 << bits) - 1)
        explanation = str(item.get("LUTExplanation", "") or "")
        return cls(first_mapped=first, data=data, bits=bits, explanation=explanation)


# --------------------------------------------------------------------------- Modality LUT


@dataclass(frozen=True)
class ModalityTransform:
    """The Modality LUT stage, PS3.3 C.11.1: stored values → modality values (e.g. HU).

    Either a linear rescale (Rescale Slope/Intercept, C.11.1.1.2) or a Modality
    LUT Sequence table (``lut``); never both (the table wins if a file has both,
    as the module's conditions make them mutually exclusive).
    """

    slope: float = 1.0
    intercept: float = 0.0
    lut: LUT | None = None
    rescale_type: str = ""

    @property
    def is_identity(self) -> bool:
        return self.lut is None and self.slope == 1.0 and self.intercept == 0.0

    def apply(self, stored: np.ndarray) -> np.ndarray:
        """Modality values of *stored* as float64 (int-valued for a LUT)."""
        if self.lut is not None:
            return self.lut.lookup(stored).astype(np.float64)
        out = np.asarray(stored, dtype=np.float64)
        if self.slope != 1.0:
            out = out * self.slope
        if self.intercept != 0.0:
            out = out + self.intercept
        return out

    @classmethod
    def from_dataset(cls, ds: Dataset, frame: int = 0) -> ModalityTransform:
        """Read the Modality LUT stage that applies to *frame*.

        Enhanced multi-frame objects carry Rescale Slope/Intercept in the Pixel
        Value Transformation Sequence (0028,9145) of the per-frame or shared
        functional groups (C.7.6.16.2.9); other objects in the Modality LUT module
        at the top level (C.11.1).
        """
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        seq = ds.get("ModalityLUTSequence")
        if seq:
            item = seq[0]
            lut = LUT.from_item(item, signed_input=signed, little_endian=is_little_endian(ds))
            return cls(lut=lut, rescale_type=str(item.get("ModalityLUTType", "") or ""))
        source: Dataset = ds
        group = functional_group_item(ds, frame, "PixelValueTransformationSequence")
        if group is not None and ("RescaleSlope" in group or "RescaleIntercept" in group):
            source = group
        slope = _floats(source.get("RescaleSlope"))
        intercept = _floats(source.get("RescaleIntercept"))
        s = slope[0] if slope else 1.0
        if s == 0.0 or not math.isfinite(s):
            logger.warning("ignoring invalid Rescale Slope %r", s)
            s = 1.0
        i = intercept[0] if intercept else 0.0
        return cls(slope=s, intercept=i, rescale_type=str(source.get("RescaleType", "") or ""))


# --------------------------------------------------------------------------- VOI LUT


@dataclass(frozen=True)
class Window:
    """A VOI window: Window Center/Width with a VOI LUT Function (PS3.3 C.11.2.1.2-3).

    ``apply`` implements the standard's formulas exactly, returning the output
    normalised to ``[0, 1]`` (i.e. with ``ymin = 0, ymax = 1``):

    * LINEAR (C.11.2.1.2.1): ``x <= c - 0.5 - (w-1)/2`` → 0;
      ``x > c - 0.5 + (w-1)/2`` → 1; else ``(x - (c - 0.5)) / (w - 1) + 0.5``.
      Requires ``w >= 1``.
    * LINEAR_EXACT (C.11.2.1.3.2): ``x <= c - w/2`` → 0; ``x > c + w/2`` → 1;
      else ``(x - c) / w + 0.5``. Requires ``w > 0``.
    * SIGMOID (C.11.2.1.3.1): ``1 / (1 + exp(-4 (x - c) / w))``. Requires ``w > 0``.
    """

    center: float
    width: float
    function: str = "LINEAR"
    explanation: str = ""

    def __post_init__(self) -> None:
        function = (self.function or "LINEAR").strip().upper()
        object.__setattr__(self, "function", function)
        if function not in VOI_FUNCTIONS:
            raise ValueError(f"VOI LUT Function must be one of {VOI_FUNCTIONS}, not {self.function!r}")
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise ValueError(f"window center/width must be finite, not {self.center}/{self.width}")
        if function == "LINEAR" and self.width < 1:
            raise ValueError(f"Window Width must be >= 1 for LINEAR (PS3.3 C.11.2.1.2.1), not {self.width}")
        if function != "LINEAR" and self.width <= 0:
            raise ValueError(f"Window Width must be > 0 for {function} (PS3.3 C.11.2.1.3), not {self.width}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalised VOI output in [0, 1] for modality values *x* (float64)."""
        x = np.asarray(x, dtype=np.float64)
        c, w = self.center, self.width
        if self.function == "SIGMOID":
            exponent = np.clip(-4.0 * (x - c) / w, -700.0, 700.0)  # exp overflows past ~709
            return 1.0 / (1.0 + np.exp(exponent))
        if self.function == "LINEAR":
            lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
            if w == 1:  # degenerate: a threshold at c - 0.5
                return (x > lo).astype(np.float64)
            y = (x - (c - 0.5)) / (w - 1) + 0.5
        else:  # LINEAR_EXACT
            lo, hi = c - w / 2, c + w / 2
            y = (x - c) / w + 0.5
        y = np.where(x <= lo, 0.0, np.where(x > hi, 1.0, y))
        return np.clip(y, 0.0, 1.0)

    @classmethod
    def min_max(cls, lo: float, hi: float) -> Window:
        """The window that maps modality values ``lo..hi`` onto the full output range.

        Same rule as DCMTK's ``+Wm`` (after Supplement 33: "a Window Center of
        2^n-1 and a Window Width of 2^n selects the range of input values from 0
        to 2^n-1"): ``center = (lo + hi + 1) / 2``, ``width = hi - lo + 1``, with
        LINEAR, so ``lo`` → 0 and ``hi`` → maximum exactly.
        """
        return cls(center=(lo + hi + 1) / 2, width=max(hi - lo + 1, 1.0), function="LINEAR", explanation="MIN-MAX")


@dataclass(frozen=True)
class VOITable:
    """A VOI LUT Sequence item (PS3.3 C.11.2.1.1) used as the VOI stage.

    Output is the table value over its nominal range ``2**bits - 1`` (the LUT
    Descriptor's third value), normalised to ``[0, 1]``.
    """

    lut: LUT

    @property
    def explanation(self) -> str:
        return self.lut.explanation

    def apply(self, x: np.ndarray) -> np.ndarray:
        return self.lut.lookup(x).astype(np.float64) / float(self.lut.max_output)


VOI = Window | VOITable


def windows_from_dataset(ds: Dataset, frame: int = 0) -> tuple[Window, ...]:
    """The Window Center/Width pairs that apply to *frame*, in header order.

    From the Frame VOI LUT Sequence (0028,9132) of the per-frame/shared functional
    groups for enhanced objects (C.7.6.16.2.10), else from the VOI LUT module at
    the top level (C.11.2). VOI LUT Function (0028,1056) applies to every pair.
    Invalid pairs (e.g. width < 1 for LINEAR) are skipped with a warning.
    """
    source: Dataset = ds
    group = functional_group_item(ds, frame, "FrameVOILUTSequence")
    if group is not None and "WindowCenter" in group:
        source = group
    centers = _floats(source.get("WindowCenter"))
    widths = _floats(source.get("WindowWidth"))
    explanations = _strings(source.get("WindowCenterWidthExplanation"))
    function = str(source.get("VOILUTFunction", "") or "LINEAR")
    if len(centers) != len(widths):
        logger.warning("Window Center has %d values but Window Width %d", len(centers), len(widths))
    out: list[Window] = []
    for i, (c, w) in enumerate(zip(centers, widths, strict=False)):
        try:
            out.append(Window(c, w, function, explanations[i] if i < len(explanations) else ""))
        except ValueError as exc:
            logger.warning("skipping window %d: %s", i + 1, exc)
    return tuple(out)


def voi_tables_from_dataset(ds: Dataset, frame: int, modality: ModalityTransform) -> tuple[VOITable, ...]:
    """The VOI LUT Sequence (0028,3010) items that apply to *frame* (C.11.2).

    The first-mapped value of a VOI LUT is signed when the Modality LUT stage can
    output negative values (signed stored values or a rescale that goes below 0).
    """
    seq: Sequence[Dataset] | None = None
    group = functional_group_item(ds, frame, "FrameVOILUTSequence")
    if group is not None and group.get("VOILUTSequence"):
        seq = group.VOILUTSequence
    elif ds.get("VOILUTSequence"):
        seq = ds.VOILUTSequence
    if not seq:
        return ()
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1 or modality.intercept < 0 or modality.slope < 0
    if modality.lut is not None:
        signed = False
    little = is_little_endian(ds)
    out: list[VOITable] = []
    for i, item in enumerate(seq):
        try:
            out.append(VOITable(LUT.from_item(item, signed_input=signed, little_endian=little)))
        except (ValueError, AttributeError, KeyError) as exc:
            logger.warning("skipping VOI LUT %d: %s", i + 1, exc)
    return tuple(out)


# --------------------------------------------------------------------------- Presentation LUT


def presentation_inverts(ds: Dataset, shape: str | None = None) -> bool:
    """Whether the Presentation LUT stage inverts the VOI output (P-Values).

    PS3.3 C.7.6.3.1.2: MONOCHROME1 means the minimum sample value is displayed
    as white, so its VOI output is inverted. Presentation LUT Shape (2050,0020),
    C.11.6.1.2: INVERSE means "output after inversion is in P-Values". In image
    IODs that carry both (e.g. DX, C.8.11.1.1) the shape exists to account for
    Photometric Interpretation (INVERSE ⇔ MONOCHROME1), so the two are not
    compounded: the result inverts if the image is MONOCHROME1 or the shape is
    INVERSE. A *shape* given by the caller (e.g. from a presentation state,
    PS3.4 N.2) replaces the image's own.
    """
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if shape is None:
        shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper() or None
        if shape == "IDENTITY" and photometric == "MONOCHROME1":
            logger.warning("MONOCHROME1 image with Presentation LUT Shape IDENTITY: following MONOCHROME1")
            return True
        return photometric == "MONOCHROME1" or shape == "INVERSE"
    shape = shape.strip().upper()
    if shape not in ("IDENTITY", "INVERSE"):
        raise ValueError(f"Presentation LUT Shape must be IDENTITY or INVERSE, not {shape!r}")
    return shape == "INVERSE"
