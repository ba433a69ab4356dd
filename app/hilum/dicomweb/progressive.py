"""Progressive streaming of a remote series: a small rendition first, full fidelity after.

Headless (no Qt): the viewer (:mod:`hilum.ui.viewer.progressive_view`) wraps
the callbacks into signals.  How a series from a DICOMweb source is shown:

1. **Headers** — a QIDO-RS listing of the series' instances (gzip), with the
   attributes that place and scale each slice (:data:`PER_INSTANCE`), and one
   instance's WADO-RS ``/metadata`` for the rest of the header (not the whole
   series' ``/metadata``: slow to build on the server for hundreds of slices and
   large on the wire; it stays the fallback, gzip, for servers that do not
   answer those attributes and for enhanced multi-frame objects).  The frames
   are put in the one slice order (:class:`hilum.dicom.stack.Stack`) and the
   volume is allocated (:class:`ProgressiveVolume`, a
   :class:`~hilum.dicom.stack_load.SeriesVolume` with a per-slice ``lossy``
   flag).  Each full-fidelity instance brings its own complete header later.
2. **Plan** — :func:`plan_for` asks the adaptive policy
   (:func:`hilum.dicomweb.adaptive.choose` when present) whether a lossy first
   pass is worth it on this link.  The lossy pass is a small *rendered*
   rendition (PS3.18 ``/rendered`` with ``viewport=`` and a wide
   ``window=…,linear-exact`` of known centre and width), mapped back to stored
   values through the inverse of that window and of the Modality LUT, so the
   lossy pixels go through the one display pipeline (the viewer's window and
   level work on them) — or, when the plan names a lossy transfer syntax the
   server encodes on the fly, that frame decoded.
3. **Full fidelity** — each instance in the adaptive plan's lossless syntax
   (JPEG-LS / HTJ2K lossless transcoded by the server: UIDs and pixels
   unchanged, about 2.5x fewer bytes) once the workers have measured a link
   under :data:`AS_STORED_ABOVE_BPS`; as stored (``transfer-syntax=*``: byte
   for byte the server's file) before that measurement and on faster links
   (loopback, a LAN), where transcoding costs more than it saves.  Handed to
   the bounded cache (``RemoteCache.put_instance``) when there is one, decoded
   by the same decoders as local files, written over the lossy slice; the
   slice's ``lossy`` flag drops.

Order (:class:`FetchOrder`): the slice being viewed, then every *N*-th slice
(a coarse pass so scrolling anywhere shows something), then the gaps nearest
first; full fidelity for the viewed slice straight after its lossy one, then
nearest the viewed slice first.  :meth:`ProgressiveLoad.focus` re-prioritises
while the user scrolls.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from hilum.dicom.pixels import frame_array
from hilum.dicom.stack import Stack, frames_from_dataset
from hilum.dicom.stack_load import LoadHandle, PipelineInterner, SeriesVolume
from hilum.dicomweb.client import DicomWebError

__all__ = [
    "FetchOrder",
    "FirstPass",
    "ProgressiveLoad",
    "ProgressiveVolume",
    "ThroughputMeter",
    "datasets_from_metadata",
    "plan_for",
    "start_progressive",
]

logger = logging.getLogger(__name__)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
LOSSY_BELOW_BPS = 60e6 / 8
PER_INSTANCE = (
    "SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "SliceLocation", "Rows", "Columns", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth", "ImageType",
    "FrameOfReferenceUID", "GantryDetectorTilt", "AcquisitionNumber", "EchoNumbers", "TemporalPositionIdentifier",
)  # fmt: skip
"""What places and scales each slice: asked per instance in the QIDO-RS listing (the rest of the header
is one instance's metadata)."""
PER_INSTANCE_TAGS = frozenset(f"{pydicom.datadict.tag_for_keyword(k):08X}" for k in PER_INSTANCE)
REPLAN_EVERY = 8
AS_STORED_ABOVE_BPS = 400e6
"""Bits/s above which whole instances are fetched as stored (byte for byte what the server holds):
a lossless transcode on the server costs more than it saves on such a link (loopback, a LAN)."""
MAX_WORKERS = 12
ALL_LOSSY_BUDGET_S = 4.0
"""Wire time aimed at for the lossy pass of the whole series (every slice viewable): the lossy ratio is
raised (up to 60) until the series fits, the viewed slice keeping the plan's ratio."""
"""The fetch plan is asked again every this many fetched slices (the link measured meanwhile)."""
"""Without the adaptive policy: a lossy first pass below 60 Mbit/s."""


# --------------------------------------------------------------------------- link


class ThroughputMeter:
    """Bytes per second (exponentially weighted over responses) and the round trip (the smallest
    time to a response's first byte).  Thread-safe."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.bps: float | None = None
        self.rtt_s: float | None = None
        self.total_bytes = 0
        self.responses = 0
        self.full_syntax = "*"
        """The syntax the adaptive plan wants whole instances in (set by :func:`plan_for`)."""
        self.batch = 1
        """Requests the adaptive plan wants in flight to amortise the round trip (set by :func:`plan_for`)."""
        self._lock = threading.Lock()

    def add(self, nbytes: int, seconds: float, first_byte_s: float | None = None) -> None:
        with self._lock:
            self.total_bytes += nbytes
            self.responses += 1
            if first_byte_s is not None and first_byte_s > 0:
                self.rtt_s = first_byte_s if self.rtt_s is None else min(self.rtt_s, first_byte_s)
            transfer = seconds - (self.rtt_s or 0.0) if nbytes > 16384 else seconds
            if transfer <= 0 or nbytes <= 0:
                return
            rate = nbytes / transfer
            self.bps = rate if self.bps is None else (1 - self.alpha) * self.bps + self.alpha * rate


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class FirstPass:
    """How the lossy first pass is fetched: ``"rendered"`` (a PNG rendition at 1/``scale`` of the
    size) or ``"frames"`` (a lossy transfer syntax the server encodes, with query ``params``)."""

    kind: str = "rendered"
    scale: int = 2
    transfer_syntax: str = ""
    media_type: str = ""
    params: tuple[tuple[str, str], ...] = ()


def _adaptive_choose() -> Callable[..., Any] | None:
    """:func:`hilum.dicomweb.adaptive.choose` (the link policy), None where that module is absent."""
    try:
        module = importlib.import_module("hilum.dicomweb.adaptive")
    except ImportError:
        return None
    choose = getattr(module, "choose", None)
    return choose if callable(choose) else None


def _value_key(tag: str, value: dict[str, Any]) -> Any:
    """A hashable key of one DICOM JSON attribute (numbers, strings; JSON text for the rest)."""
    v = value.get("Value")
    if v is None or all(isinstance(x, str | int | float) for x in v):
        return (
            tag,
            value.get("vr"),
            None if v is None else tuple(v),
            value.get("InlineBinary"),
            value.get("BulkDataURI"),
        )
    return (tag, json.dumps(value, sort_keys=True))


def _first_from_plan(first: Any) -> FirstPass | None:
    """Read the adaptive plan's ``first`` (duck-typed: None, a :class:`FirstPass`, a string or an
    object with ``transfer_syntax`` / ``quality`` / ``ratio`` / ``media_type``)."""
    if first is None or first is False:
        return None
    if isinstance(first, FirstPass):
        return first
    if isinstance(first, str):
        if first in ("rendered", "thumbnail"):
            return FirstPass("rendered", 4 if first == "thumbnail" else 2)
        if first.lower() in ("", "none", "lossless", "native"):
            return None
        return FirstPass("frames", transfer_syntax=first)
    ts = str(getattr(first, "transfer_syntax", "") or "")
    if not ts:
        return FirstPass()
    if not bool(getattr(first, "lossy", True)):
        return None
    params = []
    for name in ("quality", "ratio"):
        value = getattr(first, name, None)
        if value is not None:
            params.append((name, str(value)))
    return FirstPass(
        "frames", transfer_syntax=ts, media_type=str(getattr(first, "media_type", "") or ""), params=tuple(params)
    )


def plan_for(meter: ThroughputMeter, *, force: str | None = None, slice_bytes: int | None = None) -> FirstPass | None:
    """The first pass for this link (None: straight to full fidelity).  ``force``: ``"lossy"`` or
    ``"lossless"`` overrides the measurement (tests, the user's setting).  The adaptive policy
    (:func:`hilum.dicomweb.adaptive.choose`, bits/s and seconds; None: not measured) decides when
    present; else a lossy first pass below :data:`LOSSY_BELOW_BPS`."""
    if force == "lossy":
        return FirstPass()
    if force == "lossless":
        return None
    bps, rtt = meter.bps, meter.rtt_s
    choose = _adaptive_choose()
    if choose is not None:
        try:
            kwargs = {"slice_bytes": int(slice_bytes)} if slice_bytes else {}
            plan = choose(bps * 8 if bps else None, rtt, **kwargs)
            meter.full_syntax = _full_from_plan(getattr(plan, "full", None))
            if bps is not None and bps * 8 >= AS_STORED_ABOVE_BPS:
                meter.full_syntax = "*"  # transcoding costs more server time than it saves on the wire
            meter.batch = int(getattr(plan, "batch", 1) or 1)
            return _first_from_plan(getattr(plan, "first", None))
        except Exception as exc:  # noqa: BLE001 - the policy's failure only loses its choice
            logger.warning("adaptive policy failed (%s); using the built-in one", exc)
    return FirstPass() if bps is None or bps < LOSSY_BELOW_BPS else None


def _full_from_plan(full: Any) -> str:
    """The transfer syntax to ask whole instances in for the full-fidelity pass: the plan's lossless
    compressed one (a lossless transcode keeps every UID and pixel), ``*`` (as stored) otherwise."""
    ts = str(getattr(full, "transfer_syntax", "") or "")
    if not ts or bool(getattr(full, "lossy", False)) or ts in (EXPLICIT_LE, IMPLICIT_LE):
        return "*"
    return ts


# --------------------------------------------------------------------------- order


class FetchOrder:
    """Which slice to fetch next, in which fidelity.

    ``lossy`` pass (when there is one): the focus, then every ``stride``-th slice outwards from
    the focus, then the rest nearest the focus first.  ``full`` pass: the focus slice straight
    after its lossy one, then nearest the focus first.  :meth:`focus` re-orders what is left.
    """

    def __init__(self, n: int, *, lossy: bool, stride: int | None = None, focus: int = 0) -> None:
        self.n = n
        self.stride = max(int(stride or max(n // 16, 1)), 1)
        self.need_lossy = np.full(n, lossy, dtype=bool)
        self.need_full = np.ones(n, dtype=bool)
        self.claimed_lossy = np.zeros(n, dtype=bool)
        self.claimed_full = np.zeros(n, dtype=bool)
        self._focus = min(max(int(focus), 0), max(n - 1, 0))
        self._lock = threading.Lock()

    def focus(self, index: int) -> None:
        with self._lock:
            self._focus = min(max(int(index), 0), max(self.n - 1, 0))

    @property
    def current_focus(self) -> int:
        return self._focus

    def _nearest(self, free: np.ndarray, f: int) -> int:
        return int(free[np.argmin(np.abs(free - f) * 2 + (free < f))])  # ties: the next slice first

    def next(self) -> tuple[str, int] | None:
        """Claim the next task: ``("lossy", k)`` or ``("full", k)``; None when all are claimed."""
        with self._lock:
            f = self._focus
            # 1. the viewed slice: something on screen, then the real thing
            if self.need_lossy[f] and not self.claimed_lossy[f] and self.need_full[f] and not self.claimed_full[f]:
                return self._claim("lossy", f)
            if self.need_full[f] and not self.claimed_full[f]:
                return self._claim("full", f)
            # 2. the coarse lossy pass: every stride-th slice (aligned on the focus), nearest first
            lossy_free = np.flatnonzero(self.need_lossy & ~self.claimed_lossy & self.need_full)
            if lossy_free.size:
                coarse = lossy_free[(lossy_free - f) % self.stride == 0]
                if coarse.size:
                    return self._claim("lossy", self._nearest(coarse, f))
                # 3. the neighbours of the focus in full, then the gaps in lossy
                full_free = np.flatnonzero(self.need_full & ~self.claimed_full)
                near = full_free[np.abs(full_free - f) <= 2]
                if near.size:
                    return self._claim("full", self._nearest(near, f))
                return self._claim("lossy", self._nearest(lossy_free, f))
            full_free = np.flatnonzero(self.need_full & ~self.claimed_full)
            if full_free.size:
                return self._claim("full", self._nearest(full_free, f))
            return None

    def set_lossy(self, lossy: bool) -> None:
        """Re-plan: a lossy pass for the slices neither claimed nor in full yet (or none any more)."""
        with self._lock:
            free = ~self.claimed_lossy & ~self.claimed_full & self.need_full
            self.need_lossy[free] = lossy

    def _claim(self, kind: str, k: int) -> tuple[str, int]:
        (self.claimed_lossy if kind == "lossy" else self.claimed_full)[k] = True
        return kind, k

    def finished(self, kind: str, k: int, ok: bool = True) -> None:
        """A task ended: done (``ok``) or to be tried again (not ok: claimable again)."""
        with self._lock:
            if kind == "lossy":
                if ok:
                    self.need_lossy[k] = False
                else:
                    self.claimed_lossy[k] = False
                    self.need_lossy[k] = False  # a failed lossy rendition is not worth a retry
            else:
                if ok:
                    self.need_full[k] = False
                    self.need_lossy[k] = False
                else:
                    self.claimed_full[k] = False

    @property
    def done(self) -> bool:
        return not bool(self.need_full.any())


# --------------------------------------------------------------------------- volume


class ProgressiveVolume(SeriesVolume):
    """A series volume whose slices may hold lossy pixels for a while.

    ``loaded[k]``: slice *k* has pixels to show; ``lossy[k]``: they are the lossy first pass, not
    yet the original values (measurements and HU read-outs on them are approximate).
    """

    def __init__(self, stack: Stack, header: Dataset, **kwargs: Any) -> None:
        super().__init__(stack, header, **kwargs)
        if "data" not in kwargs:  # zeros where nothing came yet, without touching every page now
            self.data = np.zeros(self.data.shape, dtype=self.data.dtype)
        self.lossy = np.zeros(len(stack), dtype=bool)
        self.source = ""
        """Where the pixels come from (the DICOMweb source's name), for the viewer's marker."""

    def set_lossy_frame(self, k: int, values: np.ndarray) -> bool:
        """Write lossy pixels of slice *k* unless its full-fidelity pixels are already there."""
        with self._lock:
            if self.loaded[k] and not self.lossy[k]:
                return False
            self.data[k] = values
            self.lossy[k] = True
            self.loaded[k] = True
            return True

    def set_frame(self, k: int, values: Any) -> None:
        with self._lock:
            self.data[k] = values
            self.lossy[k] = False
            self.loaded[k] = True

    def is_lossy(self, k: int) -> bool:
        return bool(self.lossy[k])

    @property
    def full_count(self) -> int:
        return int((self.loaded & ~self.lossy).sum())

    @property
    def any_lossy(self) -> bool:
        return bool(self.lossy.any())


# --------------------------------------------------------------------------- loading


def datasets_from_metadata(objects: list[dict[str, Any]]) -> list[Dataset]:
    """Headers (no pixels) from WADO-RS metadata (DICOM JSON), bulk data left out."""
    out = []
    for obj in objects:
        obj = dict(obj)
        obj.pop("7FE00010", None)
        ds = Dataset.from_json(obj, bulk_data_uri_handler=lambda _t, _v, _u: b"")
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.append(ds)
    return out


def _stored_range(f: Any) -> tuple[float, float]:
    if f.signed:
        return -(2 ** (f.bits_stored - 1)), 2 ** (f.bits_stored - 1) - 1
    return 0, 2**f.bits_stored - 1


class ProgressiveLoad:
    """One series streamed from a DICOMweb server into a :class:`ProgressiveVolume` (see the module).

    Used through :func:`start_progressive`; :attr:`handle` is a
    :class:`~hilum.dicom.stack_load.LoadHandle` (the viewer's contract:
    ``volume``, ``done``, ``cancel``, ``focus``).
    """

    def __init__(self, client: Any, study: str, series: str, *, cache: Any = None, workers: int = 4,
                 force: str | None = None, stride: int | None = None,
                 on_ready: Callable[[ProgressiveVolume], None] | None = None,
                 on_progress: Callable[[ProgressiveVolume, int, int], None] | None = None,
                 on_done: Callable[[LoadHandle], None] | None = None,
                 progress_interval: float = 0.05, metadata: list[dict[str, Any]] | None = None,
                 full_syntax: str | None = None) -> None:  # fmt: skip
        self.client = client
        self.study = study
        self.series = series
        self.cache = cache
        self.workers = max(int(workers), 1)
        self.force = force
        self.stride = stride
        self.on_ready = on_ready
        self.on_progress = on_progress
        self.on_done = on_done
        self.progress_interval = progress_interval
        self.metadata = metadata
        self.full_syntax = full_syntax
        """Transfer syntax of the full-fidelity instances (``*``: as stored; a lossless one: transcoded
        by the server, fewer bytes on a slow link); None: as the adaptive plan says."""
        self.meter = ThroughputMeter()
        self.first: FirstPass | None = None
        self.order: FetchOrder | None = None
        self.log: list[tuple[str, int]] = []
        """The tasks in the order they were started (``("lossy"|"full", slice)``)."""
        self.timings: dict[str, float] = {}
        self.handle = LoadHandle()
        self.handle.executor = "dicomweb"
        self._focus_from_handle = self.handle.focus
        self.handle.focus = self.focus  # type: ignore[method-assign]
        self._last_progress = 0.0
        self._lock = threading.Lock()
        self._instances: dict[str, Dataset] = {}
        self._sop_slices: dict[str, list[int]] = {}
        self._fetching: dict[str, threading.Event] = {}
        self._completed = 0
        self._pool_t0 = 0.0
        self._pool_bytes0 = 0
        self._adaptive_full = False
        self.workers_started = 0
        self._prefetched: tuple[str, np.ndarray] | None = None

    # -------------------------------------------------------------- public

    def focus(self, index: int) -> None:
        """The slice the user looks at: fetched next (and its neighbours)."""
        self._focus_from_handle(index)
        if self.order is not None:
            self.order.focus(index)

    @property
    def volume(self) -> ProgressiveVolume | None:
        return self.handle.volume  # type: ignore[return-value]

    def start(self) -> LoadHandle:
        def run() -> None:
            t0 = time.perf_counter()
            try:
                self._run(t0)
            except BaseException as exc:  # noqa: BLE001 - reported through the handle
                logger.exception("progressive load of series %s failed", self.series)
                self.handle.error = exc
            finally:
                self.handle.timings.update(self.timings)
                self.handle.timings["total"] = time.perf_counter() - t0
                self.handle.done.set()
                if self.on_done is not None:
                    self.on_done(self.handle)

        self.handle.thread = threading.Thread(target=run, name="hilum-progressive", daemon=True)
        self.handle.thread.start()
        return self.handle

    # -------------------------------------------------------------- stages

    def _run(self, t0: float) -> None:
        datasets: list[Dataset] = []
        if self.metadata is None:
            datasets = self._headers_from_listing()
            if datasets:
                self.timings["listing"] = time.perf_counter() - t0
        if not datasets:
            if self.metadata is None:
                t = time.perf_counter()
                self.metadata = _get_json_gz(self.client, self.client._path(self.study, self.series) + "/metadata")
                elapsed = time.perf_counter() - t
                self.meter.add(0, elapsed, first_byte_s=elapsed)
            datasets = [ds for ds in datasets_from_metadata(self.metadata) if int(ds.get("Rows", 0) or 0) > 0]
        if not datasets:
            raise ValueError(f"series {self.series} has no images on the server")
        pipelines = PipelineInterner()
        frames = []
        for ds in datasets:
            sop = str(ds.get("SOPInstanceUID", ""))
            self._instances[sop] = ds
            frames.extend(frames_from_dataset(ds, f"dicomweb:{sop}", pipeline_factory=pipelines))
        stack = Stack.from_frames(frames)
        volume = ProgressiveVolume(stack, datasets[0], series_uid=self.series)
        volume.source = str(getattr(getattr(self.client, "source", None), "name", "") or "")
        for k, f in enumerate(stack.frames):
            self._sop_slices.setdefault(f.sop_instance_uid, []).append(k)
        f0 = stack.frames[0]
        slice_bytes = f0.rows * f0.columns * f0.samples * max(f0.bits_allocated // 8, 1)
        self.first = plan_for(self.meter, force=self.force, slice_bytes=slice_bytes)
        if self.first is not None:
            self.first = _ratio_for_series(self.first, len(stack), slice_bytes, self.meter.bps)
        self.handle.timings["lossy_first_pass"] = float(self.first is not None)
        self._adaptive_full = self.full_syntax is None
        if self._adaptive_full:
            # as stored until the pool has measured the link with real transfers (the first re-plan):
            # a few small JSON answers say little about the link
            self.full_syntax = "*"
        nworkers = max(self.workers, min(MAX_WORKERS, self.meter.batch)) if self.force is None else self.workers
        self.workers_started = nworkers
        pre = self._prefetched
        pre_k = self._sop_slices.get(pre[0], [None])[0] if pre is not None else None
        if self.handle._focus:
            start_focus = min(max(self.handle._focus, 0), len(stack) - 1)
        else:
            start_focus = pre_k if pre_k is not None else len(stack) // 2
        self.order = FetchOrder(len(stack), lossy=self.first is not None, stride=self.stride, focus=start_focus)
        if pre is not None and pre_k is not None:  # the viewed slice's lossy frame, fetched beside the listing
            try:
                volume.set_lossy_frame(pre_k, np.asarray(pre[1]).reshape(volume.data[pre_k].shape))
                with self.order._lock:
                    self.order.need_lossy[pre_k] = False
                self.timings["first_image"] = time.perf_counter() - t0
            except ValueError as exc:
                logger.info("prefetched lossy slice not usable (%s)", exc)
        self.handle.volume = volume
        self.timings["metadata"] = time.perf_counter() - t0
        if self.on_ready is not None:
            self.on_ready(volume)
        self._pool_t0, self._pool_bytes0 = time.perf_counter(), self.meter.total_bytes
        threads = [threading.Thread(target=self._worker, args=(t0,), name=f"hilum-progressive-{i}", daemon=True)
                   for i in range(nworkers)]  # fmt: skip
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if self.handle.cancelled:
            return
        missing = int((~volume.loaded | volume.lossy).sum())
        if missing:
            raise RuntimeError(f"{missing} slice(s) of series {self.series} could not be fetched in full fidelity")
        self._report(force=True)

    def _headers_from_listing(self) -> list[Dataset]:
        """Every instance's header without the series ``/metadata`` (slow to build on the server, large
        on the wire): a QIDO-RS listing of the instances (gzip) with the attributes that place and
        scale each slice (:data:`PER_INSTANCE`), and one instance's full metadata for the rest.
        Empty (the caller falls back on the series metadata) when the server does not answer these
        attributes or the series holds enhanced multi-frame objects."""
        path = f"/studies/{self.study}/series/{self.series}/instances"

        def listing(params: dict[str, Any]) -> list[dict[str, Any]]:
            t = time.perf_counter()
            rows: list[dict[str, Any]] = []
            while True:
                page = _get_json_gz(self.client, path, {**params, "limit": 1000, "offset": len(rows)})
                rows.extend(page)
                if len(page) < 1000:
                    break
            self.meter.add(0, time.perf_counter() - t, first_byte_s=time.perf_counter() - t)
            rows = [r for r in rows if (r.get("00080018") or {}).get("Value")]
            rows.sort(key=lambda r: float(((r.get("00200013") or {}).get("Value") or [0])[0] or 0))
            return rows

        pool = ThreadPoolExecutor(2)
        try:
            # the instances' UIDs (the index: fast), then — beside the listing with every slice's
            # geometry (the server reads each file) — the middle instance's metadata and lossy frame
            # (the listing with the geometry asked at once: the server's slowest answer)
            include = ",".join(PER_INSTANCE)
            pages = [pool.submit(_get_json_gz, self.client, path, {"includefield": include, "limit": 1000})]
            plain = listing({})
            if not plain:
                return []
            pages += [pool.submit(_get_json_gz, self.client, path, {"includefield": include, "limit": 1000, "offset": off})
                      for off in range(1000, len(plain), 1000)]  # fmt: skip
            sop = plain[len(plain) // 2]["00080018"]["Value"][0]
            t = time.perf_counter()
            meta = _get_json_gz(self.client, self.client._path(self.study, self.series, sop) + "/metadata")
            self.meter.add(0, time.perf_counter() - t, first_byte_s=time.perf_counter() - t)
            if not meta:
                return []
            self._prefetch_focus(sop, meta[0])
            rows = [r for page in pages for r in page.result() if (r.get("00080018") or {}).get("Value")]
            if len(rows) != len(plain):
                return []
            rows.sort(key=lambda r: float(((r.get("00200013") or {}).get("Value") or [0])[0] or 0))
            if not rows or any("00200032" not in r or "00280010" not in r for r in rows):
                self._prefetched = None
                return []
            base = dict(meta[0])
            if "52009230" in base or "52009229" in base:  # enhanced multi-frame: per-frame groups
                return []
            for tag in (*PER_INSTANCE_TAGS, "7FE00010"):
                base.pop(tag, None)
            # the shared part read once (its elements shared, read-only), each row's own attributes over it
            [shared] = datasets_from_metadata([base])
            shared_elements = {elem.tag: elem for elem in shared}  # converted once
            out = []
            parsed: dict[Any, list[Any]] = {}  # most values repeat from row to row: read once
            for r in rows:
                elements: dict[Any, Any] = dict(shared_elements)
                for tag, value in r.items():
                    if tag not in PER_INSTANCE_TAGS:
                        continue
                    key = _value_key(tag, value)
                    one = parsed.get(key)
                    if one is None:
                        one = parsed[key] = list(Dataset.from_json({tag: value}))
                    for elem in one:
                        elements[elem.tag] = elem
                ds = Dataset(elements)  # a Dataset over its own dict of (shared, read-only) elements
                ds.file_meta = shared.file_meta
                out.append(ds)
            return out
        except Exception as exc:  # noqa: BLE001 - a server without these answers: the series metadata
            logger.info("instance listing of series %s not usable (%s); reading the series metadata", self.series, exc)
            return []
        finally:
            pool.shutdown(wait=False)

    def _prefetch_focus(self, sop: str, meta: dict[str, Any]) -> None:
        """The middle instance's first frame in the plan's lossy syntax, before the volume exists (the
        first image does not wait for the other slices' headers).  Failures only lose the head start."""
        try:
            [ds] = datasets_from_metadata([meta])
            f = frames_from_dataset(ds, f"dicomweb:{sop}")[0]
            if f.samples != 1 or "52009230" in meta or "52009229" in meta:
                return
            slice_bytes = f.rows * f.columns * max(f.bits_allocated // 8, 1)
            first = plan_for(self.meter, force=self.force, slice_bytes=slice_bytes)
            if first is None or first.kind != "frames":
                return
            t = time.perf_counter()
            arr, nbytes = self._lossy_frame(f, ds, first)
            self.meter.add(nbytes, time.perf_counter() - t)
            self._prefetched = (sop, arr)
        except Exception as exc:  # noqa: BLE001
            logger.info("lossy frame of the middle slice not prefetched (%s)", exc)

    def _worker(self, t0: float) -> None:
        assert self.order is not None and self.handle.volume is not None
        failures = 0
        while not self.handle.cancelled:
            task = self.order.next()
            if task is None:
                return
            kind, k = task
            with self._lock:
                self.log.append(task)
            try:
                if kind == "lossy":
                    self._fetch_lossy(k)
                else:
                    self._fetch_full(k)
            except Exception as exc:  # noqa: BLE001 - one slice's failure: tried again (full) or skipped (lossy)
                logger.warning("fetching %s slice %d of series %s failed: %s", kind, k, self.series, exc)
                self.order.finished(kind, k, ok=False)
                if kind == "full":
                    failures += 1
                    if failures > 3:
                        self.handle.volume.errors[k] = str(exc)
                        with self.order._lock:
                            self.order.need_full[k] = False
                        failures = 0
                continue
            self.order.finished(kind, k, ok=True)
            if kind == "lossy" and "first_image" not in self.timings:
                self.timings["first_image"] = time.perf_counter() - t0
            if kind == "full" and "first_full" not in self.timings:
                self.timings["first_full"] = time.perf_counter() - t0
            if "all_viewable" not in self.timings and bool(self.handle.volume.loaded.all()):
                self.timings["all_viewable"] = time.perf_counter() - t0  # every slice shows something
            with self._lock:
                self._completed += 1
                replan = self.force is None and self._completed % REPLAN_EVERY == 0
            if replan:
                self._replan()
            self._report()

    def _replan(self) -> None:
        """Ask the policy again with the throughput the pool has seen (all workers together: bytes
        over the wall time since the pool started): a fast link drops the lossy slices not fetched
        yet, a slow one starts a lossy pass for the slices not yet shown."""
        assert self.order is not None
        elapsed = time.perf_counter() - self._pool_t0
        nbytes = self.meter.total_bytes - self._pool_bytes0
        if elapsed <= 0 or nbytes <= 0:
            return
        link = ThroughputMeter()
        link.add(nbytes, elapsed)
        link.rtt_s = self.meter.rtt_s
        vol = self.volume
        f0 = vol.stack.frames[0] if vol is not None else None
        slice_bytes = f0.rows * f0.columns * f0.samples * max(f0.bits_allocated // 8, 1) if f0 is not None else None
        first = plan_for(link, slice_bytes=slice_bytes)
        if self._adaptive_full and self.full_syntax != link.full_syntax:
            logger.info("series %s: full-fidelity instances in %s", self.series, link.full_syntax)
            self.full_syntax = link.full_syntax
        if (first is None) == (self.first is None):
            return
        logger.info("series %s: link %.1f Mbit/s, %s", self.series, nbytes * 8 / elapsed / 1e6,
                    "lossy first pass" if first is not None else "no lossy pass any more")  # fmt: skip
        if first is not None and self.first is None:
            self.first = first
        self.order.set_lossy(first is not None)
        self.timings["replanned"] = time.perf_counter() - self._pool_t0

    def _report(self, force: bool = False) -> None:
        vol = self.volume
        if vol is None or self.on_progress is None:
            return
        now = time.perf_counter()
        with self._lock:
            if not force and now - self._last_progress < self.progress_interval:
                return
            self._last_progress = now
        self.on_progress(vol, vol.full_count, len(vol))

    def _fetch_lossy(self, k: int) -> None:
        vol = self.volume
        assert vol is not None and self.first is not None
        f = vol.stack.frames[k]
        if f.samples != 1:
            raise ValueError("lossy first pass only for grayscale")
        ds = self._instances[f.sop_instance_uid]
        t = time.perf_counter()
        first = self.first
        if first.kind == "frames":
            try:
                arr, nbytes = self._lossy_frame(f, ds, first)
            except Exception as exc:  # noqa: BLE001 - a server without lossy frames: the rendered pass
                logger.info("lossy frames refused (%s); using rendered renditions", exc)
                self.first = first = FirstPass("rendered")
        if first.kind != "frames":
            arr, nbytes = self._rendered(f, ds, first)
        self.meter.add(nbytes, time.perf_counter() - t)
        vol.set_lossy_frame(k, arr)

    def _lossy_frame(self, f: Any, ds: Dataset, first: FirstPass) -> tuple[np.ndarray, int]:
        """One frame in the plan's lossy transfer syntax, decoded by the same decoders as a file."""
        media = first.media_type or "application/octet-stream"
        accept = f'multipart/related; type="{media}"; transfer-syntax={first.transfer_syntax}'
        path = self.client._path(self.study, self.series, f.sop_instance_uid) + f"/frames/{f.frame + 1}"
        parts = [b"".join(c) for _h, c in self.client._multipart(path, accept, dict(first.params))]
        if not parts:
            raise RuntimeError("no frame in the answer")
        data = parts[0]
        from pydicom.encaps import encapsulate

        tmp = Dataset()
        tmp.update(ds)
        tmp.file_meta = FileMetaDataset()
        tmp.file_meta.TransferSyntaxUID = UID(first.transfer_syntax)
        tmp.NumberOfFrames = 1
        tmp.PixelData = encapsulate([data])
        tmp["PixelData"].VR = "OB"
        return np.asarray(frame_array(tmp, 0)), len(data)

    def _rendered(self, f: Any, ds: Dataset, first: FirstPass) -> tuple[np.ndarray, int]:
        """A small PNG rendition under a known wide linear window, mapped back to stored values."""
        from PIL import Image

        lo, hi = _stored_range(f)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        m_lo, m_hi = sorted((lo * slope + intercept, hi * slope + intercept))
        centre, width = (m_lo + m_hi) / 2, max(m_hi - m_lo, 1.0)
        wc, ww = ds.get("WindowCenter"), ds.get("WindowWidth")
        if wc is not None and ww is not None:
            wc = float(wc[0] if isinstance(wc, pydicom.multival.MultiValue) else wc)
            ww = float(ww[0] if isinstance(ww, pydicom.multival.MultiValue) else ww)
            # a window around the reading one, four times as wide (and at least 2000 units): 8 bits over it
            width = min(max(4 * ww, 2000.0), width)
            centre = min(max(wc, m_lo + width / 2), m_hi - width / 2)
        s = max(int(first.scale), 1)
        vw, vh = max(f.columns // s, 16), max(f.rows // s, 16)
        path = self.client._path(self.study, self.series, f.sop_instance_uid) + f"/frames/{f.frame + 1}/rendered"
        resp = self.client.request(
            "GET",
            path,
            headers={"Accept": "image/png"},
            params={"window": f"{centre:.8g},{width:.8g},linear-exact", "viewport": f"{vw},{vh}"},
        )
        data = resp.read()
        img = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
        if f.photometric == "MONOCHROME1":
            img = 255.0 - img
        values = (img / 255.0 - 0.5) * width + centre  # inverse of linear-exact
        stored = (values - intercept) / slope
        rows = (np.arange(f.rows) * img.shape[0]) // f.rows
        cols = (np.arange(f.columns) * img.shape[1]) // f.columns
        big = stored[rows[:, None], cols[None, :]]
        dtype = self.volume.data.dtype if self.volume is not None else np.int16
        info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
        if info is not None:
            big = np.clip(np.rint(big), max(info.min, lo), min(info.max, hi))
        return big.astype(dtype), len(data)

    def _instance(self, sop: str) -> list[bytes]:
        """One instance's Part 10 bytes in :attr:`full_syntax`; a server that will not transcode (406,
        400): as stored from then on."""
        syntax = self.full_syntax or "*"
        try:
            return list(self.client.iter_instances(self.study, self.series, sop, transfer_syntax=syntax))
        except Exception as exc:
            if syntax == "*" or _status_of(exc) not in (400, 406, 415):
                raise
            logger.info("instances in %s refused (%s); fetching them as stored", syntax, exc)
            self.full_syntax = "*"
            self._adaptive_full = False
            return list(self.client.iter_instances(self.study, self.series, sop))

    def _fetch_full(self, k: int) -> None:
        """The instance holding slice *k* as stored (cached and decoded once for all its frames)."""
        vol = self.volume
        assert vol is not None and self.order is not None
        sop = vol.stack.frames[k].sop_instance_uid
        with self._lock:
            event = self._fetching.get(sop)
            mine = event is None
            if mine:
                event = self._fetching[sop] = threading.Event()
        assert event is not None
        if not mine:  # another worker fetches this instance (a multi-frame object): wait for it
            event.wait()
            if not (vol.loaded[k] and not vol.lossy[k]):
                raise RuntimeError(f"instance {sop} was not fetched")
            return
        try:
            t = time.perf_counter()
            parts = self._instance(sop)
            if not parts:
                raise RuntimeError(f"the server sent no instance {sop}")
            data = parts[0]
            self.meter.add(len(data), time.perf_counter() - t)
            if self.cache is not None:
                self.cache.put_instance(self.study, data)
            ds = pydicom.dcmread(io.BytesIO(data))
            for j in self._sop_slices.get(sop, [k]):
                frame = vol.stack.frames[j].frame
                vol.set_frame(j, frame_array(ds, frame))
                if j != k:
                    self.order.finished("full", j, ok=True)
        except BaseException:
            with self._lock:
                self._fetching.pop(sop, None)
            raise
        finally:
            event.set()


def _get_json_gz(client: Any, path: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A DICOM JSON answer asked gzip-compressed (a series' headers shrink about tenfold on the wire)."""
    resp = client.request("GET", path, params=params,
                          headers={"Accept": "application/dicom+json", "Accept-Encoding": "gzip"}, ok=(200, 204))  # fmt: skip
    body = resp.read()
    if body and (resp.getheader("Content-Encoding") or "").lower() == "gzip":
        body = _gunzip(body, path)
    if resp.status == 204 or not body.strip():
        return []
    try:
        result = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise DicomWebError(0, f"the server's answer is not JSON: {exc}"[:300], path) from None
    if not isinstance(result, list) or not all(isinstance(obj, dict) for obj in result):
        raise DicomWebError(0, "the server's answer is not an array of DICOM JSON objects", path)
    return result


MAX_JSON_BYTES = 256 << 20
"""The most a gzip-compressed DICOM JSON answer may inflate to (bytes).  A series' metadata is
about 10 KB per instance: 256 MiB is some 25,000 instances.  Without a bound, a few hundred
kilobytes of gzip from a broken or hostile server inflated to gigabytes in the workstation."""


def _gunzip(body: bytes, path: str) -> bytes:
    """``body`` inflated (one gzip member), at most :data:`MAX_JSON_BYTES`; a DicomWebError otherwise."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(body, MAX_JSON_BYTES)
    except zlib.error as exc:
        raise DicomWebError(0, f"the server's gzip answer is corrupt: {exc}", path) from None
    if inflater.unconsumed_tail:
        raise DicomWebError(0, f"the server's gzip answer inflates to more than {MAX_JSON_BYTES >> 20} MiB", path)
    if not inflater.eof:
        raise DicomWebError(0, "the server's gzip answer is cut short", path)
    return out


def _ratio_for_series(first: FirstPass, n: int, slice_bytes: int, bps: float | None) -> FirstPass:
    """The lossy pass at a ratio that brings the whole series in :data:`ALL_LOSSY_BUDGET_S` on this link
    (bytes/s, taken as at least the adaptive policy's default 10 Mbit/s), never below the plan's, at most 60."""
    params = dict(first.params)
    try:
        ratio = float(params.get("ratio", ""))
    except ValueError:
        return first
    rate = max(bps or 0.0, 10e6 / 8)  # a latency-bound first measurement must not drive the ratio up
    need = n * slice_bytes / (rate * ALL_LOSSY_BUDGET_S)
    if need <= ratio:
        return first
    params["ratio"] = f"{min(60.0, round(need)):g}"
    return replace(first, params=tuple(params.items()))


def _status_of(exc: BaseException) -> int:
    return int(getattr(exc, "status", 0) or 0)


def start_progressive(client: Any, study: str, series: str, **kwargs: Any) -> ProgressiveLoad:
    """Start streaming *series* of *study* from *client* (a :class:`~hilum.dicomweb.client.DicomWebClient`)
    on background threads; returns the running :class:`ProgressiveLoad` (``.handle`` for the viewer)."""
    load = ProgressiveLoad(client, study, series, **kwargs)
    load.start()
    return load
