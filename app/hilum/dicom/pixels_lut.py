"""The grayscale transforms of the softcopy pipeline, one class each.

PS3.4 N.2 (Grayscale Transformations) orders them: stored values → Modality LUT
(PS3.3 C.11.1) → VOI LUT (C.11.2) → Presentation LUT (C.11.6) → P-Values. This
module reads each stage from a dataset (including the per-frame and shared
Functional Groups of enhanced multi-frame objects, C.7.6.16) and applies it to
numpy arrays. :mod:`hilum.dicom.pixels` composes them into a lookup table.

Conventions: every VOI stage returns *normalised* output in ``[0, 1]``, i.e.
``(y - ymin) / (ymax - ymin)`` of the standard's formulas, so that the caller
chooses the output depth (8-bit for display, :func:`p_values`).

:class:`DisplayTransform` (a VOI stage and the Presentation LUT's inversion) is
the one definition of windowing for every view: the 2D viewer, thumbnails and
rendered frames apply it through :class:`hilum.dicom.pixels.GrayscalePipeline`;
MPR (orthogonal, oblique, slab) and curved MPR apply it to the resliced modality
values (an int16 plane through :meth:`DisplayTransform.integer_table`, a float one
through :meth:`DisplayTransform.sampled`), so the same modality value shows the
same grey level in every view.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from hilum.dicom.geometry import functional_group_item  # the one functional-group lookup (PS3.3 C.7.6.16)

logger = logging.getLogger(__name__)

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
"""Defined Terms of VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3."""

_SIGMOID_REACH = math.log(509.0) / 4.0
"""Beyond ``c ± w * _SIGMOID_REACH`` the 8-bit SIGMOID output is constant (0 below, 255 above):
``floor(255 / (1 + exp(-4 (x - c) / w)) + 0.5)`` reaches 0 where ``exp(4 (c - x) / w) > 509``."""

BINS_PER_WIDTH = 1024
"""Bins per window width of a :class:`SampledTable` over non-integer values: the output then
moves by less than a sixteenth of a grey level within half a bin, so a sampled table stays
within one grey level of the formula (see :meth:`DisplayTransform.sampled`)."""


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


def p_values(y01: np.ndarray, invert: bool = False) -> np.ndarray:
    """Normalised VOI output → 8-bit P-Values, the one quantiser of every view.

    ``floor(255 y + 0.5)`` (round half up), or ``floor(255 (1 - y) + 0.5)`` when
    the Presentation LUT stage inverts (MONOCHROME1 or shape INVERSE, PS3.3
    C.11.6.1.2). NaN (float pixel data) shows as P-Value 0 either way.
    """
    y = np.asarray(y01, dtype=np.float64) * 255.0
    if invert:
        y = 255.0 - y
    y += 0.5
    np.nan_to_num(y, copy=False, nan=0.0)
    np.floor(y, out=y)
    np.clip(y, 0, 255, out=y)
    return y.astype(np.uint8)


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

    def active_range(self) -> tuple[float, float]:
        """The modality values outside which the 8-bit output is constant.

        LINEAR: ``c - 0.5 ∓ (w - 1) / 2`` (C.11.2.1.2.1); LINEAR_EXACT: ``c ∓ w / 2``
        (C.11.2.1.3.2); SIGMOID (C.11.2.1.3.1), which never reaches its limits:
        ``c ∓ w ln(509) / 4``, past which 8-bit P-Values are 0 and 255.
        """
        c, w = self.center, self.width
        if self.function == "LINEAR":
            return (c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2)
        if self.function == "LINEAR_EXACT":
            return (c - w / 2, c + w / 2)
        return (c - w * _SIGMOID_REACH, c + w * _SIGMOID_REACH)

    @property
    def resolution(self) -> float:
        """A step of modality values over which the output changes by at most 1/1024 of its
        range (the steepest slope is ``1 / (w - 1)`` for LINEAR, ``1 / w`` otherwise)."""
        ramp = self.width - 1 if self.function == "LINEAR" else self.width
        return max(ramp, 1.0) / BINS_PER_WIDTH

    def table(self, lo: float, hi: float, n: int, *, invert: bool = False) -> np.ndarray:
        """8-bit P-Values (uint8) of ``n`` modality values evenly spaced from *lo* to *hi*
        (both included), inverted when the presentation stage inverts (:func:`p_values`)."""
        if n < 1:
            raise ValueError(f"a table needs at least one entry, not {n}")
        return p_values(self.apply(np.linspace(float(lo), float(hi), int(n))), invert)

    def with_center_width(self, center: float, width: float) -> Window:
        """The same VOI LUT Function with another center/width (a window/level drag or a preset).

        The width is kept at 1 or more, the least LINEAR allows (C.11.2.1.2.1).
        """
        return Window(float(center), max(float(width), 1.0), self.function, self.explanation)

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

    def active_range(self) -> tuple[float, float]:
        """The first and last input the table maps; inputs beyond take the end entries."""
        return (float(self.lut.first_mapped), float(self.lut.first_mapped + self.lut.data.size - 1))

    @property
    def resolution(self) -> float:
        """The table maps whole input values (non-integers round to the nearest, C.11.2.1.1)."""
        return 1.0

    def table(self, lo: float, hi: float, n: int, *, invert: bool = False) -> np.ndarray:
        """8-bit P-Values of ``n`` modality values evenly spaced from *lo* to *hi* (see :meth:`Window.table`)."""
        if n < 1:
            raise ValueError(f"a table needs at least one entry, not {n}")
        return p_values(self.apply(np.linspace(float(lo), float(hi), int(n))), invert)

    def equivalent_window(self) -> Window:
        """The LINEAR window over the table's input range: where a window/level drag or a
        preset starts from when the VOI in force is a table."""
        lo, hi = self.active_range()
        return Window.min_max(lo, hi)


VOI = Window | VOITable


@dataclass(frozen=True, eq=False)
class SampledTable:
    """A VOI + presentation transform sampled into ``n`` equal bins over ``[lo, hi)``, for fast
    display of non-integer values (a float volume, an averaged slab).

    A modality value ``x`` maps to ``values[clip(floor((x - lo) * n / (hi - lo)), 0, n - 1)]``:
    values below ``lo`` take the first entry, values at or above ``hi`` the last (the rule of
    ``vtkLookupTable`` too).  Made by :meth:`DisplayTransform.sampled`.
    """

    lo: float
    hi: float
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 1 or self.values.size == 0 or self.values.dtype != np.uint8:
            raise ValueError("a sampled table holds a non-empty 1-D uint8 array")
        if not self.hi > self.lo:
            raise ValueError(f"a sampled table needs lo < hi, not {self.lo}..{self.hi}")
        self.values.setflags(write=False)

    @property
    def size(self) -> int:
        return int(self.values.size)

    def lookup(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The P-Values of modality values *x* by the bin rule above (NaN gives 0).

        float32 input is binned in float32 (the bin index is then off by at most a
        thousandth of a bin: an edge value may fall in the neighbouring bin, one grey
        level away at most); anything else in float64.  Truncating then clipping the
        index equals flooring then clipping, as every negative index clips to 0.
        """
        x = np.asarray(x)
        work = np.float32 if x.dtype == np.float32 else np.float64
        index = np.subtract(x, work(self.lo), dtype=work)
        index *= work(self.size / (self.hi - self.lo))
        np.clip(index, -1.0, float(self.size), out=index)  # keeps the integer conversion in range
        nan = np.isnan(index) if x.dtype.kind == "f" else None
        if nan is not None and nan.any():
            index[nan] = -1.0
        else:
            nan = None
        result = np.take(self.values, index.astype(np.int32), mode="clip", out=out)
        if nan is not None:
            result[nan] = 0
        return result


class TableCache:
    """The last *size* read-only lookup tables made, by key (least recently used goes first);
    shared by threads (the viewer's decoder threads, the MPR's)."""

    def __init__(self, size: int):
        self._size = size
        self._tables: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
            return table

    def put(self, key: Hashable, table: np.ndarray) -> np.ndarray:
        """Keep *table* (made read-only) under *key*; returns it."""
        table.setflags(write=False)
        with self._lock:
            self._tables[key] = table
            while len(self._tables) > self._size:
                self._tables.popitem(last=False)
        return table


_TABLES = TableCache(16)


@dataclass(frozen=True)
class DisplayTransform:
    """The stages after the Modality LUT (PS3.4 N.2): a VOI (window or VOI LUT table) and
    whether the Presentation LUT inverts (MONOCHROME1 / shape INVERSE, :func:`presentation_inverts`).

    The one definition of windowing for every view (see the module docstring): it maps
    modality values to 8-bit P-Values (:meth:`apply`), samples itself into a table for a
    renderer (:meth:`table`, :meth:`sampled`) and makes the display that a window/level
    drag or a preset asks for (:meth:`with_window`, :meth:`dragged`), keeping the VOI LUT
    Function and the inversion.
    """

    voi: VOI
    invert: bool = False

    def apply(self, values: np.ndarray) -> np.ndarray:
        """8-bit P-Values (uint8, same shape) of modality values.

        8- and 16-bit integer arrays (an int16 volume's planes) go through
        :meth:`integer_table`, one ``np.take``; anything else through the formulas.
        """
        values = np.asarray(values)
        if values.dtype.kind in "iu" and values.dtype.itemsize <= 2:
            table = self.integer_table(values.dtype)
            return np.take(table, values.view(np.dtype(f"u{values.dtype.itemsize}")))
        return p_values(self.voi.apply(values), self.invert)

    def integer_table(self, dtype: np.dtype | type) -> np.ndarray:
        """The P-Values of every value of an 8/16-bit integer *dtype*, indexed by its bit
        pattern read as unsigned (two's complement for signed types), as
        :meth:`hilum.dicom.pixels.GrayscalePipeline.lut` indexes stored values.

        Only the active range is computed (the output is constant outside it), so a new
        window costs microseconds, not a pass over 65536 values; tables are cached.
        """
        dtype = np.dtype(dtype)
        if dtype.kind not in "iu" or dtype.itemsize > 2:
            raise ValueError(f"integer tables are for 8/16-bit integers, not {dtype}")
        key = (self, dtype.str)
        table = _TABLES.get(key)
        if table is not None:
            return table
        info = np.iinfo(dtype)
        a, b = self.voi.active_range()
        i0 = int(min(max(math.floor(a) - 1, info.min), info.max))  # below a: the output of i0
        i1 = int(min(max(math.ceil(b) + 1, i0), info.max))  # above b: the output of i1
        ramp = self._p(np.arange(i0, i1 + 1, dtype=np.float64))
        table = np.empty(1 << (8 * dtype.itemsize), dtype=np.uint8)
        # fill by value: index = value mod 2**bits; signed values below 0 sit in the upper half
        for lo, hi, fill in ((info.min, i0 - 1, ramp[0]), (i0, i1, ramp), (i1 + 1, info.max, ramp[-1])):
            if lo > hi:
                continue
            if lo < 0 <= hi:  # a signed run across zero: its negative part, then the rest
                table[lo % table.size :] = fill if np.ndim(fill) == 0 else fill[:-lo]
                table[: hi + 1] = fill if np.ndim(fill) == 0 else fill[-lo:]
            else:
                table[lo % table.size : hi % table.size + 1] = fill
        return _TABLES.put(key, table)

    def _p(self, values: np.ndarray) -> np.ndarray:
        return p_values(self.voi.apply(values), self.invert)

    def table(self, lo: float, hi: float, n: int) -> np.ndarray:
        """P-Values of ``n`` modality values evenly spaced from *lo* to *hi* (both included)."""
        return self.voi.table(lo, hi, n, invert=self.invert)

    @property
    def window(self) -> Window:
        """The window in force: the VOI itself, or a table's :meth:`VOITable.equivalent_window`."""
        return self.voi if isinstance(self.voi, Window) else self.voi.equivalent_window()

    def with_window(self, center: float, width: float) -> DisplayTransform:
        """This display with another center/width: a window keeps its VOI LUT Function, a VOI
        LUT table gives way to a LINEAR window; the inversion stays."""
        base = self.voi if isinstance(self.voi, Window) else Window(float(center), 1.0)
        return DisplayTransform(base.with_center_width(center, width), self.invert)

    def dragged(self, dx: float, dy: float) -> DisplayTransform:
        """Window/level by a mouse drag of ``(dx, dy)`` screen pixels (``dy`` positive downwards).

        Right widens the window, down raises the level (the image darkens), as in the 2D
        viewer; one pixel moves by ``max(width, 20) / 256`` so that a lung and a stroke window
        both respond usefully.
        """
        w = self.window
        k = max(w.width, 20.0) / 256.0
        return self.with_window(w.center + dy * k, w.width + dx * k)

    def sampled(
        self, value_range: tuple[float, float] | None = None, *, integer: bool, max_entries: int = 1 << 17
    ) -> SampledTable:
        """This display as a :class:`SampledTable` for values in *value_range* (e.g. a volume's
        minimum and maximum; None: every value).

        With *integer* values (int16 volumes) and for VOI LUT tables, bins are one wide and
        centred on whole numbers, so each integer maps to exactly the P-Value of :meth:`apply`
        (and a non-integer to that of the nearest integer, as C.11.2.1.1 has tables do).
        Otherwise bins are :attr:`Window.resolution` wide over the window's active range and
        hold the P-Value of their centre, which is within one grey level of the formula for
        every value in the bin. Outside the active range the output is constant, so the end
        bins stand for everything beyond.
        """
        a, b = self.voi.active_range()
        if value_range is not None:
            vlo, vhi = float(value_range[0]), float(value_range[1])
            if not vlo <= vhi:
                raise ValueError(f"value range must be low..high, not {value_range}")
            if b < vlo or a > vhi:  # every value on one side of the window: one grey level
                return SampledTable(vlo - 0.5, vhi + 0.5, self.apply(np.array([vlo])))
            a, b = max(a, vlo), min(b, vhi)
        if integer or isinstance(self.voi, VOITable):
            i0, i1 = math.floor(a) - 1, math.ceil(b) + 1
            if i1 - i0 + 1 <= max_entries:
                return SampledTable(i0 - 0.5, i1 + 0.5, self.apply(np.arange(i0, i1 + 1, dtype=np.float64)))
        step = self.voi.resolution
        n = math.ceil((b - a) / step) + 2
        if n > max_entries:
            n = max_entries
            step = (b - a) / (n - 2)
        lo = a - step
        return SampledTable(lo, lo + n * step, self.apply(lo + (np.arange(n) + 0.5) * step))

    @property
    def label(self) -> str:
        """A short text for an overlay: ``W 400 L 40``, the function when not LINEAR, or the table."""
        if isinstance(self.voi, VOITable):
            return f"VOI LUT {self.voi.explanation}".strip()
        w = self.voi
        text = f"W {w.width:.0f} L {w.center:.0f}"
        return text if w.function == "LINEAR" else f"{text} {w.function.replace('_', ' ').lower()}"


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
