"""Load a series into a preallocated volume in the background, first image first.

How a series is loaded (the viewer's "the GUI never waits", DESIGN.md):

1. **Preview** — the middle instance by Instance Number (the middle frame of
   a multi-frame object) is decoded at once and handed out as a one-frame
   :class:`SeriesVolume`, so an image is on screen before anything else.
2. **Headers** — every file's header is parsed (without pixels), the frames
   are put in the one slice order (:func:`hilum.dicom.geometry.order_slices`,
   the MPR volume's order too), the volume is allocated once
   (``n x rows x columns`` of the stored dtype, e.g. int16 for CT: no float
   copy, the pipeline's lookup table maps stored values to the screen) and
   handed out. Parsing holds the GIL: it is serial, or for long series split
   over the caller's process pool.
3. **Pixels** — slices are decoded nearest-to-the-viewed-slice first (the
   viewer moves the focus while the user scrolls) and written in place.
   Native little-endian data is read straight from the file into the volume
   (``readinto`` at the Pixel Data offset found in step 2; the read releases
   the GIL). Compressed grayscale JPEG-LS, JPEG 2000 lossless, RLE and
   lossless JPEG frames are decoded by imagecodecs straight into the volume
   (:func:`hilum.dicom.pixels.decode_encapsulated_into`, from the fragment
   offset found in step 2): its decoders release the GIL, so a plain thread
   pool uses every core. Other compressed data goes through pydicom's decoders
   (:func:`hilum.dicom.pixels.frame_array`) on the caller's process pool
   (decoders that keep the GIL scale over cores) or threads.

The process pool belongs to the caller (the workstation's viewer controller,
a CLI command): :func:`decoder_pool` makes one, the caller passes it as
``pool=`` and shuts it down. Without one, loads use threads.

Callbacks run on the loader's threads; a GUI wraps them into signals.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from hilum.dicom.pixels import GrayscalePipeline, decode_encapsulated_into, fast_decoding_available, frame_array
from hilum.dicom.stack import FrameInfo, Stack, frames_from_dataset

__all__ = [
    "DecodeJob",
    "LoadHandle",
    "PipelineInterner",
    "SeriesVolume",
    "decode_frame",
    "decoder_pool",
    "load_series",
    "load_series_sync",
    "read_frames",
    "warm_pool",
]

logger = logging.getLogger(__name__)

_NATIVE = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)}
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


# --------------------------------------------------------------------------- headers


_PIPELINE_TAGS = (
    0x00280002,
    0x00280004,
    0x00280100,
    0x00280101,
    0x00280103,  # samples, photometric, bits, representation
    0x00281050,
    0x00281051,
    0x00281052,
    0x00281053,
    0x00281054,
    0x00281055,
    0x00281056,  # window, rescale, VOI fn
    0x20500020,  # Presentation LUT Shape
)
_PIPELINE_SEQUENCES = (0x00283000, 0x00283010, 0x52009229, 0x52009230)  # Modality/VOI LUT, functional groups


class PipelineInterner:
    """Builds grayscale pipelines and shares equal ones (600 slices → usually one object).

    The ``pipeline_factory`` of :func:`hilum.dicom.stack.frames_from_dataset` for every
    frame the workstation shows or builds a volume from (None for colour), so the 2D
    viewer, the MPR volume and its display read one :class:`GrayscalePipeline` per frame.

    Building a pipeline converts a dozen attributes; slices of a series almost
    always share them, so the raw (unconverted) values of the attributes that
    define the pipeline key a cache and each distinct pipeline is built once.
    """

    def __init__(self) -> None:
        self._by_raw: dict[Any, Any] = {}
        self._seen: dict[Any, Any] = {}

    @staticmethod
    def _raw_key(ds: Dataset) -> tuple[Any, ...] | None:
        if any(tag in ds for tag in _PIPELINE_SEQUENCES):
            return None
        key = []
        for tag in _PIPELINE_TAGS:
            elem = ds.get_item(tag) if tag in ds else None
            value = getattr(elem, "value", None)
            key.append(value if isinstance(value, (bytes, str, int, float, type(None))) else repr(value))
        return tuple(key)

    def __call__(self, ds: Dataset, frame: int) -> GrayscalePipeline | None:
        raw = self._raw_key(ds) if frame == 0 else None
        if raw is not None and raw in self._by_raw:
            return self._by_raw[raw]
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "").strip().upper()
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            p: Any = None
        else:
            try:
                p = GrayscalePipeline.from_dataset(ds, frame)
            except (ValueError, TypeError) as exc:
                logger.warning("cannot build the grayscale pipeline of %s: %s", ds.get("SOPInstanceUID"), exc)
                p = None
            if p is not None:
                try:
                    p = self._seen.setdefault(p, p)
                except TypeError:  # unhashable content: keep it unshared
                    pass
        if raw is not None:
            self._by_raw[raw] = p
        return p


def _native_offset(ds: Dataset, fp: Any) -> int | None:
    """File offset of the Pixel Data value when it can be read straight into an array."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if tsyntax not in _NATIVE:
        return None
    ba = int(ds.get("BitsAllocated", 0) or 0)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if ba not in (8, 16, 32):
        return None
    if samples != 1 and not (
        samples == 3 and ba == 8 and photometric == "RGB" and int(ds.get("PlanarConfiguration", 0) or 0) == 0
    ):
        return None
    pos = fp.tell()
    head = fp.read(12)
    if len(head) < 8 or head[:4] != _PIXEL_DATA_TAG:
        return None
    if tsyntax == str(ImplicitVRLittleEndian):
        length, start = int.from_bytes(head[4:8], "little"), pos + 8
    else:
        vr = head[4:6]
        if vr not in (b"OW", b"OB", b"UN") or len(head) < 12:
            return None
        length, start = int.from_bytes(head[8:12], "little"), pos + 12
    frames = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    need = int(ds.Rows) * int(ds.Columns) * samples * (ba // 8) * frames
    if length == 0xFFFFFFFF or length < need:
        return None
    return start


def _encapsulated_offset(ds: Dataset, fp: Any) -> int | None:
    """File offset of the Basic Offset Table item of encapsulated Pixel Data (PS3.5 A.4), when the
    frames can be taken from there by :func:`hilum.dicom.pixels.decode_encapsulated_into`."""
    meta = getattr(ds, "file_meta", None)
    tsyntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if not fast_decoding_available(tsyntax) or "ExtendedOffsetTable" in ds:
        return None
    pos = fp.tell()
    head = fp.read(12)
    if len(head) < 12 or head[:4] != _PIXEL_DATA_TAG or head[4:6] != b"OB" or head[8:12] != b"\xff\xff\xff\xff":
        return None
    return pos + 12


def read_frames(
    path: str, *, pipelines: Callable[[Dataset, int], Any] | None = None
) -> tuple[list[FrameInfo], Dataset]:
    """Parse one file's header (no pixels) into :class:`FrameInfo` objects, with native offsets (or,
    for encapsulated data the fast decoders take, ``extra["encapsulated_offset"]``)."""
    with open(path, "rb") as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
        offset = _native_offset(ds, fp)
        encapsulated = _encapsulated_offset(ds, fp) if offset is None else None
    frames = frames_from_dataset(ds, path, pipeline_factory=pipelines or PipelineInterner(), pixel_offset=offset)
    if encapsulated is not None:
        count = max(int(ds.get("NumberOfFrames", 1) or 1), 1)
        for f in frames:
            f.extra["encapsulated_offset"] = encapsulated
            f.extra["number_of_frames"] = count
    return frames, ds


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class DecodeJob:
    """The minimum to decode one frame, small enough to send to a worker process."""

    path: str
    frame: int
    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    offset: int | None
    """File offset of native pixel data (read straight into the volume)."""
    encapsulated: int | None = None
    """File offset of encapsulated pixel data the fast decoders take (:func:`decode_encapsulated_into`)."""
    number_of_frames: int = 1
    transfer_syntax: str = ""
    photometric: str = ""

    @classmethod
    def of(cls, f: FrameInfo) -> DecodeJob:
        return cls(f.path, f.frame, f.rows, f.columns, f.samples, f.bits_allocated, f.bits_stored, f.signed,
                   f.pixel_offset, f.extra.get("encapsulated_offset"), int(f.extra.get("number_of_frames", 1)),
                   f.transfer_syntax, f.photometric)  # fmt: skip

    def decode_fast_into(self, out: np.ndarray, threads: int = 1) -> bool:
        """Decode with imagecodecs straight into *out* (releases the GIL); False: use pydicom.
        *threads* > 1 splits one frame over threads where the codec can (JPEG 2000)."""
        if self.encapsulated is None or self.samples != 1:
            return False
        return decode_encapsulated_into(self.path, self.encapsulated, self.frame, out,
                                        transfer_syntax=self.transfer_syntax, number_of_frames=self.number_of_frames,
                                        bits_allocated=self.bits_allocated, bits_stored=self.bits_stored,
                                        signed=self.signed, photometric=self.photometric,
                                        threads=threads)  # fmt: skip

    @property
    def native_dtype(self) -> np.dtype:
        kind = "i" if self.signed and self.samples == 1 else "u"
        return np.dtype(f"<{kind}{self.bits_allocated // 8}")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, self.columns) if self.samples == 1 else (self.rows, self.columns, self.samples)


def _mask_bits(arr: np.ndarray, job: DecodeJob) -> None:
    """Keep Bits Stored and sign-extend in place (PS3.5 8.1.1, as pydicom does)."""
    ba, bs = job.bits_allocated, job.bits_stored
    if bs >= ba or arr.dtype.kind not in "iu" or job.samples != 1:
        return
    if job.signed:
        shift = ba - bs
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)
    else:
        np.bitwise_and(arr, (1 << bs) - 1, out=arr)


def decode_into(job: DecodeJob, out: np.ndarray) -> None:
    """Decode one frame into *out* (a view into the volume)."""
    if job.offset is not None and out.dtype == job.native_dtype and out.flags.c_contiguous:
        with open(job.path, "rb", buffering=0) as fp:
            fp.seek(job.offset)
            view = out.data.cast("B")
            got = fp.readinto(view)
            if got != out.nbytes:
                raise OSError(f"{job.path}: pixel data truncated ({got} of {out.nbytes} bytes)")
        _mask_bits(out, job)
        return
    if job.decode_fast_into(out):
        return
    out[...] = frame_array(job.path, job.frame)


def decode_frame(job: DecodeJob, threads: int = 1) -> np.ndarray:
    """Decode one frame to a new array (worker processes; the preview, with *threads* for one frame)."""
    if job.offset is not None or job.encapsulated is not None:
        arr = np.empty(job.shape, dtype=job.native_dtype)
        if job.offset is not None:
            decode_into(job, arr)
            return arr
        if job.decode_fast_into(arr, threads):
            return arr
    return frame_array(job.path, job.frame)


# --------------------------------------------------------------------------- volume


def _volume_dtype(frames: Sequence[FrameInfo]) -> np.dtype:
    types = set()
    for f in frames:
        if f.samples != 1:
            types.add(np.dtype(np.uint8) if f.bits_allocated <= 8 or f.photometric != "RGB" else np.dtype(np.uint16))
            continue
        kind = "i" if f.signed else "u"
        types.add(np.dtype(f"{kind}{max(f.bits_allocated, 8) // 8}"))
    return np.result_type(*types) if types else np.dtype(np.int16)


class SeriesVolume:
    """A stack of frames and their pixels, filled in as slices decode.

    ``data[k]`` holds the stored values of frame ``k`` of ``stack`` (int16 for
    signed CT: modality values come from each frame's pipeline), valid once
    ``loaded[k]`` is set. Memory is the raw volume plus small per-frame records.
    """

    def __init__(self, stack: Stack, header: Dataset, data: np.ndarray | None = None, *,
                 series_uid: str = "", preview: bool = False) -> None:  # fmt: skip
        self.stack = stack
        self.header = header
        self.series_uid = series_uid or str(header.get("SeriesInstanceUID", "") or "")
        self.preview = preview
        if data is None:
            f0 = stack.frames[0]
            shape: tuple[int, ...] = (len(stack), f0.rows, f0.columns)
            if f0.samples != 1:
                shape = (*shape, f0.samples)
            data = np.empty(shape, dtype=_volume_dtype(stack.frames))
        self.data = data
        self.loaded = np.zeros(len(stack), dtype=bool)
        self._lock = threading.Lock()
        self.errors: dict[int, str] = {}
        """Frames that could not be decoded (index -> reason); they show as zeros."""
        self.skipped: list[str] = []
        """Files of the series that could not be read (left out)."""

    def __len__(self) -> int:
        return len(self.stack)

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", "") or "")

    @property
    def complete(self) -> bool:
        return bool(self.loaded.all())

    @property
    def loaded_count(self) -> int:
        return int(self.loaded.sum())

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def frame(self, k: int) -> np.ndarray | None:
        """Stored values of frame *k*, or None while it is not decoded yet."""
        return self.data[k] if self.loaded[k] else None

    def set_frame(self, k: int, values: npt.ArrayLike) -> None:
        self.data[k] = values
        self.loaded[k] = True

    def modality_values(self, k: int) -> np.ndarray | None:
        """Modality values (e.g. HU, float64) of frame *k* through its Modality LUT."""
        arr = self.frame(k)
        if arr is None:
            return None
        pipe = self.stack.frames[k].pipeline
        return pipe.modality_values(arr) if pipe is not None else arr.astype(np.float64)


# --------------------------------------------------------------------------- loader


def decoder_pool(workers: int | None = None) -> ProcessPoolExecutor:
    """A process pool for :func:`load_series` (header parsing and decoding), owned by the caller.

    Worker processes start from a fork server (no copy of a GUI process's
    threads or memory) when first used; the caller keeps the pool for many
    loads (workers stay warm between series) and shuts it down.
    """
    import multiprocessing

    return ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 2,
                               mp_context=multiprocessing.get_context("forkserver"))  # fmt: skip


def _warm_worker(_: int) -> int:
    """Nothing: a worker that runs it has imported this module (and pydicom, numpy, the pixel
    pipeline) to find it, which a worker started from the fork server had not."""
    return os.getpid()


def warm_pool(pool: Executor) -> threading.Thread:
    """Start *pool*'s worker processes in the background and load the decoders' code in them (the
    workstation does this once at start, so the first long or compressed series pays for neither:
    ~0.2 s of imports per worker on its first task otherwise)."""

    def warm() -> None:
        try:
            list(pool.map(_warm_worker, range(2 * (os.cpu_count() or 2))))
        except Exception as exc:  # noqa: BLE001 - loading falls back to threads
            logger.debug("cannot start decoder processes: %s", exc)

    thread = threading.Thread(target=warm, name="hilum-pool-warmup", daemon=True)
    thread.start()
    return thread


class LoadHandle:
    """A running load: its volumes, progress, focus and cancel switch."""

    def __init__(self) -> None:
        self.volume: SeriesVolume | None = None
        self.preview: SeriesVolume | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._cancel = threading.Event()
        self._focus = 0
        self._lock = threading.Lock()
        self.timings: dict[str, float] = {}
        self.thread: threading.Thread | None = None
        self.executor = ""
        """Where the pixels were decoded: ``"serial"``, ``"thread"`` or ``"process"`` (set when decoding
        starts; ``"thread"`` after a fall-back from a broken pool)."""
        self.header_executor = ""
        """Where the headers were parsed: ``"serial"`` or ``"process"``."""

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def focus(self, index: int) -> None:
        """Decode near frame *index* next (the slice the user is looking at)."""
        self._focus = int(index)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def _claim(self, claimed: np.ndarray) -> int | None:
        with self._lock:
            free = np.flatnonzero(~claimed)
            if free.size == 0:
                return None
            k = int(free[np.argmin(np.abs(free - self._focus))])
            claimed[k] = True
            return k


def _choose_executor(executor: str, frames: Sequence[FrameInfo], pool: Executor | None) -> str:
    if executor == "process" and pool is None:
        raise ValueError("executor='process' needs a process pool (pool=decoder_pool())")
    if executor != "auto":
        return executor
    # frames imagecodecs decodes release the GIL: threads use every core with no copies between
    # processes; only the decoders that keep it (pydicom's plugins) are worth the process pool
    held = sum(1 for f in frames if f.pixel_offset is None and "encapsulated_offset" not in f.extra)
    if pool is not None and held >= 16 and (os.cpu_count() or 1) > 1:
        return "process"
    return "thread"


@dataclass(frozen=True)
class _Options:
    """How one load runs (see :func:`load_series`)."""

    executor: str
    workers: int | None
    header_workers: str
    pool: Executor | None
    progress_interval: float
    on_preview: Callable[[SeriesVolume], None] | None
    on_ready: Callable[[SeriesVolume], None] | None
    on_progress: Callable[[SeriesVolume, int, int], None] | None


def load_series(
    paths: Sequence[str | os.PathLike[str]],
    *,
    preview: tuple[str | os.PathLike[str], int] | None | bool = True,
    executor: str = "auto",
    workers: int | None = None,
    pool: Executor | None = None,
    on_preview: Callable[[SeriesVolume], None] | None = None,
    on_ready: Callable[[SeriesVolume], None] | None = None,
    on_progress: Callable[[SeriesVolume, int, int], None] | None = None,
    on_done: Callable[[LoadHandle], None] | None = None,
    progress_interval: float = 0.05,
    header_workers: str = "auto",
) -> LoadHandle:
    """Start loading the instances at *paths* (one series) on a background thread.

    *paths* should be in Instance Number order when known (the archive gives
    them so); *preview* is ``True`` (the middle path), a ``(path, frame)``, or
    False. *pool* is the caller's process pool (:func:`decoder_pool`; the
    caller shuts it down), used for long series' headers and compressed
    frames whose decoders keep the GIL; without it everything runs on threads.
    *executor*: ``"thread"``, ``"process"`` (needs *pool*), ``"serial"`` or
    ``"auto"`` (the process pool for ≥ 16 frames only pydicom's decoders take,
    on a multi-core machine, when there is one; threads otherwise, and for
    all that imagecodecs decodes). Callbacks: ``on_preview(volume)`` with the one-frame
    preview, ``on_ready(volume)`` once the sorted volume exists (no pixels yet
    except the preview's), ``on_progress(volume, loaded, total)`` at most
    every *progress_interval* seconds and at the end, ``on_done(handle)``
    always last (``handle.error`` set on failure). *header_workers*:
    ``"serial"``, ``"process"`` (needs *pool*) or ``"auto"`` (the process pool
    from 256 files when there is one).
    """
    if executor not in ("auto", "thread", "process", "serial"):
        raise ValueError(f"executor must be auto, thread, process or serial, not {executor!r}")
    if header_workers not in ("auto", "serial", "process"):
        raise ValueError(f"header_workers must be auto, serial or process, not {header_workers!r}")
    if pool is None and "process" in (executor, header_workers):
        raise ValueError("a process load needs the caller's process pool (pool=decoder_pool())")
    handle = LoadHandle()
    files = [os.fspath(p) for p in paths]
    if not files:
        raise ValueError("load_series needs at least one file")
    if preview is True:
        preview_target: tuple[str, int] | None = (files[len(files) // 2], -1)
    elif preview:
        preview_target = (os.fspath(preview[0]), int(preview[1]))  # type: ignore[index]
    else:
        preview_target = None
    options = _Options(executor, workers, header_workers, pool, progress_interval, on_preview, on_ready, on_progress)

    def run() -> None:
        t0 = time.perf_counter()
        try:
            _run_load(handle, files, preview_target, options, t0)
        except BaseException as exc:  # noqa: BLE001 - reported through the handle
            logger.exception("loading a series failed")
            handle.error = exc
        finally:
            handle.timings["total"] = time.perf_counter() - t0
            handle.done.set()
            if on_done is not None:
                on_done(handle)

    handle.thread = threading.Thread(target=run, name="hilum-series-loader", daemon=True)
    handle.thread.start()
    return handle


def _header_chunk(paths: list[str]) -> list[list[FrameInfo]]:
    """Parse a chunk of headers in a worker process (frames only: datasets stay there)."""
    pipelines = PipelineInterner()
    out = []
    for path in paths:
        try:
            out.append(read_frames(path, pipelines=pipelines)[0])
        except Exception as exc:  # noqa: BLE001 - one bad file does not stop the series
            logger.warning("skipping %s: %s", path, exc)
            out.append([])
    return out


def _read_all_headers(
    handle: LoadHandle,
    files: list[str],
    parsed: dict[str, tuple[list[FrameInfo], Dataset]],
    pipelines: PipelineInterner,
    options: _Options,
    skipped: list[str],
) -> Iterator[tuple[str, tuple[list[FrameInfo], Dataset | None]]]:
    """Each file's frames (and the header of the first), in file order.

    Parsing holds the GIL, so threads do not help; for long series on a
    multi-core machine chunks go to the caller's process pool (``header_workers``
    ``"auto"``: from 256 files) and pipelines are shared again afterwards.
    """
    pool = options.pool
    use_pool = pool is not None and (
        options.header_workers == "process"
        or (options.header_workers == "auto" and len(files) >= 256 and (os.cpu_count() or 1) > 1)
    )
    pooled: list[list[list[FrameInfo]]] | None = None
    if use_pool:
        assert pool is not None
        first = files[0]
        if first not in parsed:
            parsed[first] = read_frames(first, pipelines=pipelines)
        rest = files[1:]
        n = max(16, -(-len(rest) // (4 * (os.cpu_count() or 2))))
        chunks = [rest[i : i + n] for i in range(0, len(rest), n)]
        try:
            pooled = list(pool.map(_header_chunk, chunks))
        except Exception as exc:  # noqa: BLE001 - e.g. a broken pool, or a script without a __main__ guard
            logger.warning("decoder processes unavailable (%s); parsing headers in this process", exc)
    handle.header_executor = "serial" if pooled is None else "process"
    if pooled is None:
        for path in files:
            if handle.cancelled:
                return
            got = parsed.get(path)
            if got is None:
                try:
                    got = read_frames(path, pipelines=pipelines)
                except Exception as exc:  # noqa: BLE001 - one bad file does not stop the series
                    logger.warning("skipping %s: %s", path, exc)
                    skipped.append(path)
                    continue
            yield path, got
        return
    yield first, parsed[first]
    shared: dict[Any, Any] = {}
    for chunk, results in zip(chunks, pooled, strict=True):
        for path, frames in zip(chunk, results, strict=True):
            if not frames:  # the worker could not read it (read_frames gives at least one frame)
                skipped.append(path)
            for i, f in enumerate(frames):
                if f.pipeline is not None:
                    try:
                        frames[i] = _with_pipeline(f, shared.setdefault(f.pipeline, f.pipeline))
                    except TypeError:
                        pass
            yield path, (frames, None)


def _with_pipeline(f: FrameInfo, pipeline: Any) -> FrameInfo:
    object.__setattr__(f, "pipeline", pipeline)  # a fresh unpickled copy: nobody else holds it
    return f


def _run_load(
    handle: LoadHandle,
    files: list[str],
    preview_target: tuple[str, int] | None,
    options: _Options,
    t0: float,
) -> None:
    pipelines = PipelineInterner()
    preview_key: tuple[str, int] | None = None
    preview_pixels: np.ndarray | None = None
    parsed: dict[str, tuple[list[FrameInfo], Dataset]] = {}
    if preview_target is not None:
        path, frame = preview_target
        frames, ds = read_frames(path, pipelines=pipelines)
        parsed[path] = (frames, ds)
        info = frames[len(frames) // 2 if frame < 0 else min(frame, len(frames) - 1)]
        preview_pixels = decode_frame(DecodeJob.of(info), threads=os.cpu_count() or 1)
        pv = SeriesVolume(Stack.from_frames([info]), ds, preview_pixels[None, ...], preview=True)
        pv.loaded[:] = True
        preview_key = info.key
        handle.preview = pv
        handle.timings["preview"] = time.perf_counter() - t0
        if options.on_preview is not None:
            options.on_preview(pv)
    all_frames: list[FrameInfo] = []
    header: Dataset | None = None
    skipped: list[str] = []
    for _path, got in _read_all_headers(handle, files, parsed, pipelines, options, skipped):
        if handle.cancelled:
            return
        frames, maybe_ds = got
        if header is None and maybe_ds is not None:
            header = maybe_ds
        all_frames.extend(f for f in frames if f.rows and f.columns)
    if header is None and all_frames:
        header = pydicom.dcmread(all_frames[0].path, stop_before_pixels=True)
    if header is None or not all_frames:
        raise ValueError("no displayable frames in the series")
    stack = Stack.from_frames(all_frames)
    for issue in stack.issues:
        logger.info("series %s: %s", header.get("SeriesInstanceUID", ""), issue.message)
    volume = SeriesVolume(stack, header)
    volume.skipped = skipped
    handle.volume = volume
    handle.timings["headers"] = time.perf_counter() - t0
    if preview_key is not None and preview_pixels is not None:
        k = stack.index_of(*preview_key)
        if k is not None:
            volume.set_frame(k, preview_pixels)
            handle.focus(k)
    else:
        handle.focus(len(stack) // 2)
    if options.on_ready is not None:
        options.on_ready(volume)
    _decode_all(handle, volume, options)
    handle.timings["pixels"] = time.perf_counter() - t0


def _decode_all(handle: LoadHandle, volume: SeriesVolume, options: _Options) -> None:
    frames = volume.stack.frames
    total = len(frames)
    claimed = volume.loaded.copy()
    kind = handle.executor = _choose_executor(options.executor, frames, options.pool)
    nworkers = options.workers or min(os.cpu_count() or 1, 8)
    on_progress = options.on_progress
    last = [time.perf_counter()]

    def progress(final: bool = False) -> None:
        if on_progress is None:
            return
        now = time.perf_counter()
        if final or now - last[0] >= options.progress_interval:
            last[0] = now
            on_progress(volume, volume.loaded_count, total)

    def fail(k: int, exc: BaseException) -> None:
        logger.warning("cannot decode frame %d (%s): %s", k, frames[k].path, exc)
        volume.errors[k] = str(exc)
        volume.data[k] = 0
        volume.loaded[k] = True

    if kind == "process":
        procs = options.pool
        assert procs is not None
        try:
            inflight: dict[Future[np.ndarray], int] = {}
            depth = 2 * (os.cpu_count() or 2)  # keep every worker busy
            while True:
                while not handle.cancelled and len(inflight) < depth and (k := handle._claim(claimed)) is not None:
                    inflight[procs.submit(decode_frame, DecodeJob.of(frames[k]))] = k
                if not inflight:
                    break
                finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for done_future in finished:
                    k = inflight.pop(done_future)
                    try:
                        volume.set_frame(k, done_future.result())
                    except BrokenProcessPool:
                        raise
                    except Exception as exc:  # noqa: BLE001
                        fail(k, exc)
                progress()
        except (BrokenProcessPool, RuntimeError) as exc:
            # e.g. a broken pool, or a script without an ``if __name__ == "__main__"`` guard: decode here
            logger.warning("decoder processes unavailable (%s); decoding on threads", exc)
            claimed[:] = volume.loaded
            kind = handle.executor = "thread"
    if kind == "serial" or (kind == "thread" and nworkers == 1):
        while not handle.cancelled and (k := handle._claim(claimed)) is not None:
            try:
                decode_into(DecodeJob.of(frames[k]), volume.data[k])
                volume.loaded[k] = True
            except Exception as exc:  # noqa: BLE001
                fail(k, exc)
            progress()
    elif kind == "thread":
        lock = threading.Lock()

        def worker() -> None:
            while not handle.cancelled and (k := handle._claim(claimed)) is not None:
                try:
                    decode_into(DecodeJob.of(frames[k]), volume.data[k])
                    volume.loaded[k] = True
                except Exception as exc:  # noqa: BLE001
                    fail(k, exc)
                with lock:
                    progress()

        with ThreadPoolExecutor(nworkers, thread_name_prefix="hilum-decode") as threads:
            for fut in [threads.submit(worker) for _ in range(nworkers)]:
                fut.result()
    progress(final=True)


def load_series_sync(paths: Sequence[str | os.PathLike[str]], **kwargs: Any) -> SeriesVolume:
    """Load a series and wait for it (tests, scripts, the CLI)."""
    handle = load_series(paths, **kwargs)
    handle.wait()
    if handle.error is not None:
        raise handle.error
    assert handle.volume is not None
    return handle.volume
