"""Bulk ingest: the pipeline behind :meth:`Archive.ingest_many`.

The same validation, blob writes, index rows and events as
:meth:`Archive.ingest` — still the one way in (../shared/DESIGN.md) — but
pipelined for many instances so an import of a folder uses every core:

1. *Prepare*, on workers: read the source, validate and parse it
   (:func:`hilum.dicom.attributes.read_instance`, pixel data stays bytes),
   skip a known duplicate, checksum it and write it to a temporary blob
   (not fsynced).  For large sets the workers are processes, since parsing
   is Python and holds the GIL; for small ones (or in-memory databases) they
   are threads.
2. *Sync*: each temporary blob's fsync starts as soon as its worker hands it
   over, on threads that keep many in flight, so the file system commits its
   journal once for many blobs (group commit) instead of once per file.
3. *Index*, on the calling thread, once a batch's fsyncs are done (the blobs
   are durable before they are indexed): what the workers prepared is indexed in
   batches — one transaction per batch instead of one per instance, patient /
   study / series rows looked up once per batch, instance rows inserted with
   one executemany, counters updated once per series — then the temporaries
   are renamed into place, the transaction commits, and one event per
   instance is emitted.  A batch that fails is retried one instance at a
   time, so one bad instance never rejects its neighbours.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from sqlalchemy import Engine, bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from hilum.archive.blobs import FileBlobStore, blob_checksum
from hilum.archive.db import make_engine
from hilum.archive.schema import instances, patients, series, studies
from hilum.dicom.attributes import IndexRecord, InvalidInstance, index_record, read_instance, to_part10
from hilum.errors import StorageFull

if TYPE_CHECKING:
    from hilum.archive.archive import Archive, ArchiveEvent, IngestResult

log = logging.getLogger(__name__)

PROCESS_THRESHOLD = 200
"""Below this many sources a thread pool is used: starting processes costs about a second of CPU each."""

PROCESS_MIN_CPUS = 4
"""Worker processes from this many CPUs on.  With the blobs' fsyncs out of the workers (they run in
batches, see index_batch) and read_instance's own reader (0.24 ms for a CT header, pydicom's took
0.67), a worker spends most of its time in system calls that release the GIL, and on two cores
threads came out ahead: SQLite 546-604 vs 472 instances/s, bench/ingest medians 478 vs 442 (2,000
CT).  Processes pay off where parsing is still the limit, with more cores than this."""

BRIDGES = 2
"""Threads that serve in-process while the worker processes start (0: wait for the workers)."""

MODE = "auto"
"""``auto`` (processes from PROCESS_THRESHOLD sources on), ``threads`` or ``processes``: for tests and benchmarks."""

BATCH_SIZE = 64
"""Most instances indexed in one transaction."""

BATCH_WAIT = 0.1
"""Seconds a prepared instance may wait for others to share its transaction."""

WINDOW_PER_WORKER = 16
"""Sources in flight per worker (at least 32): bounds memory when sources are bytes."""


@dataclass(slots=True)
class Prepared:
    """An instance a worker validated and wrote to a temporary blob, ready to index."""

    record: IndexRecord
    temp: str
    checksum: str
    size: int
    source: str | None
    synced: Future[None] | None = None  # its fsync, started as it arrived (see run_ingest_many)


def _label(source: Any) -> str | None:
    return str(source) if isinstance(source, (str, os.PathLike)) else None


def _bytes_of(source: Any) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, Dataset):
        return to_part10(source)
    return Path(source).read_bytes()


def prepare(source: Any, *, blobs: FileBlobStore, exists: Callable[[str], bool] | None) -> Prepared | IngestResult:
    """Step 1 of an ingest: validate, parse, skip a known duplicate, write the temporary blob.

    Mirrors :meth:`Archive.ingest` up to its index transaction; ``exists``
    (given under the ``ignore`` duplicate policy) says whether a SOP Instance
    UID is already stored, so a duplicate is never written.  The blob is not
    fsynced here: the pipeline starts its fsync as soon as it is handed over,
    many side by side (group commit), and :func:`index_batch` waits for the
    batch's fsyncs before indexing it.
    """
    from hilum.archive.archive import IngestResult

    label = _label(source)
    try:
        data = _bytes_of(source)
        ds = read_instance(data)
        record = index_record(ds)
        if data[128:132] != b"DICM":  # a bare dataset: store it as a Part 10 file
            data = to_part10(ds)
        if exists is not None and exists(record.sop_uid):
            return IngestResult("duplicate", **_base(record, label, len(data)))
        checksum = blob_checksum(data)
        temp = blobs.write_temp(data, sync=False)
        try:
            # The blob's folder, made here on a worker so that moving the blob into place
            # (in the indexing transaction, on one thread) is a rename and nothing more.
            blobs.path(blobs.key_for(record.sop_uid)).parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # committing the blob will say what is wrong
        return Prepared(record, temp, checksum, len(data), label)
    except InvalidInstance as exc:
        return IngestResult("rejected", sop_instance_uid=exc.sop_instance_uid, reason=str(exc), code=exc.code,
                            source=label)
    except StorageFull as exc:
        return IngestResult("rejected", reason=str(exc), code="storage-full", source=label)
    except OSError as exc:
        return IngestResult("rejected", reason=f"cannot read: {exc.strerror or exc}", code="unreadable", source=label)


def _base(record: IndexRecord, label: str | None, size: int) -> dict[str, Any]:
    return dict(sop_instance_uid=record.sop_uid, study_instance_uid=record.study_uid,
                series_instance_uid=record.series_uid, sop_class_uid=record.instance["sop_class_uid"],
                source=label, size=size)


class _ExistsCheck:
    """Whether a SOP Instance UID is already indexed: one raw DB-API query per call.

    A plain SELECT on a pooled DB-API connection, since the full SQLAlchemy
    round trip costs more than the query.  The connection goes back to the
    pool after each call, so any number of worker threads shares the pool.
    The index itself is consulted again inside the indexing transaction, so
    this is only an early skip for duplicates.
    """

    _PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric": ":1", "named": ":sop"}

    def __init__(self, engine: Engine):
        self._engine = engine
        style = engine.dialect.paramstyle
        self._sql = f"SELECT 1 FROM {instances.name} WHERE sop_uid = {self._PLACEHOLDERS[style]}"
        self._named = style == "named"

    def __call__(self, sop_uid: str) -> bool:
        conn = self._engine.raw_connection()
        try:
            cur = conn.cursor()
            try:
                cur.execute(self._sql, {"sop": sop_uid} if self._named else (sop_uid,))
                return cur.fetchone() is not None
            finally:
                cur.close()
                conn.rollback()
        finally:
            conn.close()  # back to the engine's pool


# ---------------------------------------------------------------- worker processes
#
# Worker processes are plain ``python -c`` children speaking pickle over
# their stdin/stdout, not multiprocessing: "spawn" and "forkserver" would run
# the caller's ``__main__`` script again in every child (a script without an
# ``if __name__ == "__main__"`` guard would import twice, or worse), and "fork"
# is unsafe in a process with threads (the workstation, the server).

_WORKER_CMD = "from hilum.archive.batch import _worker_main; _worker_main()"

_worker_blobs: FileBlobStore | None = None
_worker_exists: Callable[[str], bool] | None = None


def _init_worker(blob_root: str, database_url: str | None, filters: list[Any], pydicom_level: int) -> None:
    """Set up a worker process: its own blob store handle and (for duplicates) its own engine."""
    global _worker_blobs, _worker_exists
    for action, message, category, module, lineno in reversed(filters):
        # Patterns are compiled regexes, or plain strings when set by hand (as some libraries do).
        warnings.filterwarnings(action, getattr(message, "pattern", message) or "", category,
                                getattr(module, "pattern", module) or "", lineno)
    logging.getLogger("pydicom").setLevel(pydicom_level)
    _worker_blobs = FileBlobStore(Path(blob_root))
    _worker_exists = _ExistsCheck(make_engine(database_url)) if database_url else None


def _worker_main() -> None:
    """A worker process: read init args then sources from stdin, write results to stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it closes stdin to stop us
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the result stream
    _init_worker(*pickle.load(inp))
    assert _worker_blobs is not None
    pickle.dump("ready", out)
    out.flush()
    while True:
        try:
            src = pickle.load(inp)
        except EOFError:
            return
        try:
            res: Any = prepare(src, blobs=_worker_blobs, exists=_worker_exists)
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            res = _failed(src, exc)
        pickle.dump(res, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


def _failed(src: Any, exc: BaseException) -> IngestResult:
    from hilum.archive.archive import IngestResult

    return IngestResult("rejected", reason=f"failed: {type(exc).__name__}: {exc}", code="unreadable",
                        source=_label(src))


def _picklable_filters() -> list[Any]:
    """The caller's warning filters on built-in categories (pydicom's noise is UserWarning)."""
    return [f for f in warnings.filters if getattr(f[2], "__module__", "") == "builtins"]


class _Workers:
    """A small pool: one feeding thread per worker process, a shared task queue.

    Worker processes take about a second to start (they import pydicom and
    SQLAlchemy); until every one has said it is ready, ``bridges`` threads
    serve tasks in this process, so no time is lost waiting.  A feeding thread
    whose process dies (or cannot start) serves tasks itself with
    ``fallback``, so an import never stops because a worker did.
    """

    def __init__(self, n: int, init_args: tuple[Any, ...], fallback: Callable[[Any], Prepared | IngestResult],
                 bridges: int):
        self._tasks: queue.SimpleQueue[tuple[Future[Any], Any] | None] = queue.SimpleQueue()
        self._fallback = fallback
        self._procs: list[subprocess.Popen[bytes]] = []
        self._ready: set[int] = set()
        self._lock = threading.Lock()
        self._starting = n
        self._all_started = threading.Event()
        self._closing = False
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        self._threads: list[threading.Thread] = []
        for i in range(n):
            proc: subprocess.Popen[bytes] | None
            try:
                proc = subprocess.Popen([sys.executable, "-c", _WORKER_CMD], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)
                assert proc.stdin is not None
                pickle.dump(init_args, proc.stdin)
                proc.stdin.flush()
                self._procs.append(proc)
            except OSError as exc:
                log.warning("cannot start an ingest worker process (%s); working in-process", exc)
                proc = None
            self._spawn(self._serve, (proc,), f"ingest-feed-{i}")
        for i in range(bridges if n else 0):
            self._spawn(self._bridge, (), f"ingest-bridge-{i}")

    def _spawn(self, target: Callable[..., None], args: tuple[Any, ...], name: str) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def submit(self, src: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self._tasks.put((fut, src))
        return fut

    def _run(self, task: tuple[Future[Any], Any], fn: Callable[[Any], Any]) -> None:
        fut, src = task
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(src))
        except BaseException as exc:  # noqa: BLE001 - hand any failure to the waiting caller
            fut.set_exception(exc)

    def _bridge(self) -> None:
        """Serve tasks in this process until every worker process is ready."""
        while not self._all_started.is_set():
            try:
                task = self._tasks.get(timeout=0.05)
            except queue.Empty:
                continue
            if task is None:
                return
            self._run(task, self._fallback)

    def _started(self) -> None:
        with self._lock:
            self._starting -= 1
            if self._starting <= 0:
                self._all_started.set()

    def _serve(self, proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None:
            try:
                assert proc.stdout is not None
                if pickle.load(proc.stdout) != "ready":
                    raise pickle.UnpicklingError("no handshake")
                with self._lock:
                    self._ready.add(proc.pid)
            except (OSError, EOFError, pickle.UnpicklingError) as exc:
                if not self._closing:
                    log.warning("ingest worker process %s did not start (%s); working in-process", proc.pid, exc)
                _stop(proc)
                proc = None
        self._started()
        while True:
            task = self._tasks.get()
            if task is None:
                break
            if proc is None:
                self._run(task, self._fallback)
                continue
            fut, src = task
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(_round_trip(proc, src))
                continue
            except _WorkerDied as exc:
                log.warning("ingest worker process %s failed (%s); working in-process", proc.pid, exc.__cause__)
                _stop(proc)
                proc = None
            try:
                fut.set_result(self._fallback(src))
            except BaseException as exc:  # noqa: BLE001 - hand any failure to the waiting caller
                fut.set_exception(exc)
        if proc is not None:
            _stop(proc)

    def shutdown(self) -> None:
        self._closing = True
        with self._lock:
            for proc in self._procs:
                if proc.pid not in self._ready:
                    proc.kill()  # still starting: it has done nothing yet
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join()
        for proc in self._procs:
            _stop(proc)


class _WorkerDied(Exception):
    pass


def _round_trip(proc: subprocess.Popen[bytes], src: Any) -> Any:
    try:
        assert proc.stdin is not None and proc.stdout is not None
        pickle.dump(src, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.flush()
        return pickle.load(proc.stdout)
    except (OSError, EOFError, pickle.UnpicklingError) as exc:
        raise _WorkerDied from exc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Close a worker's input (it exits on EOF); kill it if it does not."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# ---------------------------------------------------------------- the pipeline


def run_ingest_many(archive: Archive, sources: Iterable[Any], *, origin: str, workers: int | None,
                    progress: Callable[[IngestResult], None] | None,
                    cancel: threading.Event | None) -> list[IngestResult]:
    """See :meth:`Archive.ingest_many`."""
    from hilum.archive.archive import IngestResult

    it: Iterator[Any] = iter(sources)
    cpus = os.cpu_count() or 1
    in_memory = archive.database_url in ("sqlite://", "sqlite:///:memory:")
    possible = cpus > 1 and (workers is None or workers > 1) and not in_memory
    head: list[Any] = []
    if MODE == "auto" and possible and cpus >= PROCESS_MIN_CPUS:
        for src in it:  # look ahead just far enough to know whether processes pay off
            head.append(src)
            if len(head) >= PROCESS_THRESHOLD:
                break
    use_processes = possible and (MODE == "processes" or (MODE == "auto" and len(head) >= PROCESS_THRESHOLD
                                                          and cpus >= PROCESS_MIN_CPUS))
    check_dups = archive.duplicate_policy == "ignore"
    thread_exists = _ExistsCheck(archive.engine) if check_dups else None

    def thread_prepare(src: Any) -> Prepared | IngestResult:
        return prepare(src, blobs=archive.blobs, exists=thread_exists)

    pool: Any
    if use_processes:
        n = workers or cpus
        pool = _Workers(n, (str(archive.blobs.root), archive.database_url if check_dups else None,
                            _picklable_filters(), logging.getLogger("pydicom").getEffectiveLevel()), thread_prepare,
                        bridges=BRIDGES)
    else:
        n = workers or max(2, cpus)  # the blobs' fsyncs wait in index_batch, not in the workers
        pool = _ThreadWorkers(n, thread_prepare)
    window = max(32, n * WINDOW_PER_WORKER)

    results: dict[int, IngestResult] = {}
    pending: dict[Future[Any], tuple[int, Any]] = {}
    numbered = enumerate(_chain(head, it))
    exhausted = False

    def finish(idx: int, res: IngestResult) -> None:
        results[idx] = res
        if progress is not None:
            progress(res)

    def submit(idx: int, src: Any) -> None:
        if use_processes and isinstance(src, Dataset):
            src = _bytes_of(src)
        pending[pool.submit(src)] = (idx, src)

    def refill() -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < window:
            try:
                idx, src = next(numbered)
            except StopIteration:
                exhausted = True
                return
            if cancel is not None and cancel.is_set():
                finish(idx, IngestResult("rejected", reason="cancelled", code="cancelled", source=_label(src)))
                continue
            submit(idx, src)

    # Prepared instances are indexed in the order of ``sources`` (so the first
    # of two files with one SOP Instance UID is the one stored, as with
    # serial ingest): an instance waits until every earlier one is resolved.
    ready: dict[int, tuple[Prepared, float]] = {}
    try:
        refill()
        while pending or ready:
            low = min((i for i, _ in pending.values()), default=None)
            eligible = sorted(i for i in ready if low is None or i < low)
            if eligible and (len(eligible) >= BATCH_SIZE or low is None
                             or time.monotonic() >= min(ready[i][1] for i in eligible) + BATCH_WAIT):
                batch = [(i, ready.pop(i)[0]) for i in eligible]
                for idx, res in index_batch(archive, batch, origin=origin):
                    finish(idx, res)
                continue
            timeout = None
            if eligible:
                timeout = max(0.0, min(ready[i][1] for i in eligible) + BATCH_WAIT - time.monotonic())
            done, _ = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
            now = time.monotonic()
            for fut in done:
                idx, src = pending.pop(fut)
                try:
                    out = fut.result()
                except Exception as exc:  # noqa: BLE001 - one source must not stop the others
                    log.exception("ingest of %s failed", _label(src) or "data")
                    out = _failed(src, exc)
                if isinstance(out, Prepared):
                    # start its fsync now: it runs while the batch fills and the one
                    # before is indexed, side by side with the others (group commit)
                    out.synced = archive.blobs.sync_later(out.temp)
                    ready[idx] = (out, now)
                else:
                    finish(idx, out)
            refill()  # keep the workers busy while a batch is indexed
    finally:
        pool.shutdown()
        # Interrupted (KeyboardInterrupt, a failing callback): leave no temporaries behind.
        leftovers = [p for p, _ in ready.values()]
        for fut in pending:
            if fut.done() and not fut.cancelled() and fut.exception() is None and isinstance(fut.result(), Prepared):
                leftovers.append(fut.result())
        for p in leftovers:
            archive.blobs.discard_temp(p.temp)
    return [results[i] for i in range(len(results))]


class _ThreadWorkers:
    def __init__(self, n: int, fn: Callable[[Any], Prepared | IngestResult]):
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ingest")
        self._fn = fn

    def submit(self, src: Any) -> Future[Any]:
        return self._pool.submit(self._fn, src)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _chain(head: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from head
    yield from rest


# ---------------------------------------------------------------- indexing


def index_batch(archive: Archive, batch: list[tuple[int, Prepared]], *, origin: str,
                source_aet: str = "") -> list[tuple[int, IngestResult]]:
    """Index prepared instances in one transaction; retry one by one if it fails."""
    from hilum.archive.archive import IngestResult

    moved: list[tuple[str, str]] = []
    try:
        # Durable before indexed: the batch's fsyncs (most already started), outside the write lock.
        archive.blobs.sync_temps([p.temp for _, p in batch if p.synced is None])
        for _, p in batch:
            if p.synced is not None:
                p.synced.result()  # raises StorageFull: the batch is retried one by one
        with archive._write_lock, archive.engine.begin() as conn:
            out, events, renames = _index(archive, conn, batch, origin=origin, source_aet=source_aet)
            for temp, key in renames:
                archive.blobs.commit_temp(temp, key)
                moved.append((temp, key))
    except (StorageFull, OSError, SQLAlchemyError) as exc:
        _unmove(archive, moved)
        if len(batch) > 1:
            log.info("batch of %d failed (%s); indexing one by one", len(batch), exc)
            return [r for item in batch for r in index_batch(archive, [item], origin=origin, source_aet=source_aet)]
        idx, p = batch[0]
        archive.blobs.discard_temp(p.temp)
        code, reason = _db_failure(exc)
        return [(idx, IngestResult("rejected", reason=reason, code=code, **_base(p.record, p.source, p.size)))]
    except BaseException:
        _unmove(archive, moved)
        for _, p in batch:
            archive.blobs.discard_temp(p.temp)
        raise
    for ev in events:
        archive._emit(ev)
    return out


def _unmove(archive: Archive, moved: list[tuple[str, str]]) -> None:
    """Put renamed blobs back to their temporaries after a failed commit (new instances only)."""
    for temp, key in reversed(moved):
        try:
            os.replace(archive.blobs.path(key), temp)
        except OSError:
            log.warning("could not take back blob %s after a failed commit", key)


def _db_failure(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, StorageFull):
        return "storage-full", str(exc)
    if isinstance(exc, OSError):
        return "storage-full", f"cannot write blob: {exc.strerror or exc}"
    msg = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    low = msg.lower()
    if "full" in low or "readonly" in low or "read-only" in low or "no space" in low:
        return "storage-full", f"cannot write the index: {msg}"
    return "index-error", f"cannot index: {msg}"


def _index(archive: Archive, conn: Connection, batch: list[tuple[int, Prepared]], *, origin: str,
           source_aet: str) -> tuple[list[tuple[int, IngestResult]], list[ArchiveEvent], list[tuple[str, str]]]:
    """Index a batch in the open transaction ``conn``, a few statements for the whole batch: the
    patients, studies and series are looked up one query per table and the missing ones inserted
    together, the instances inserted together, the counters updated once per series and study."""
    from hilum.archive.archive import ArchiveEvent, IngestResult, _now

    ignore = archive.duplicate_policy == "ignore"
    existing = _pks_by_key(conn, _INSTANCE_PKS, sorted({p.record.sop_uid for _, p in batch}))

    # Duplicates: skipped (policy ignore), or the last copy indexed in place of the others.
    keep: dict[str, tuple[int, Prepared]] = {}
    out: list[tuple[int, IngestResult]] = []
    events: list[ArchiveEvent] = []
    for idx, p in batch:
        rec = p.record
        sop = rec.sop_uid
        base = _base(rec, p.source, p.size)
        status = "stored"
        if sop in existing or sop in keep:
            if ignore:
                archive.blobs.discard_temp(p.temp)
                out.append((idx, IngestResult("duplicate", **base)))
                continue
            status = "replaced"
            if sop in keep:  # an earlier copy in this batch, replaced before it was indexed
                archive.blobs.discard_temp(keep[sop][1].temp)
        keep[sop] = (idx, p)
        out.append((idx, IngestResult(status, **base)))  # type: ignore[arg-type]
        events.append(ArchiveEvent(status, "IMAGE", sop, rec.study_uid, rec.series_uid, rec.patient["patient_id"],
                                   origin))
    replaced = [existing[sop] for sop in keep if sop in existing]
    if replaced:
        archive._delete_instances(conn, replaced)  # may drop emptied series and studies, looked up below
    items = [p for _, p in sorted(keep.values(), key=lambda item: item[0])]
    if not items:
        return out, events, []

    now = _now()
    patient_pks = _patients(archive, conn, [p.record for p in items], now)
    study_rows = {}
    for p in items:
        rec = p.record
        if rec.study_uid not in study_rows:
            patient_pk = patient_pks[(rec.patient["patient_id"], rec.patient["issuer"])]
            study_rows[rec.study_uid] = archive.new_study_row(patient_pk, rec.study, now)
    study_pks, _ = _find_or_insert(archive, conn, studies, study_rows)
    series_rows = {}
    for p in items:
        if p.record.series_uid not in series_rows:
            series_rows[p.record.series_uid] = archive.new_series_row(study_pks[p.record.study_uid],
                                                                      p.record.series, now)
    series_pks, new_series = _find_or_insert(archive, conn, series, series_rows)

    rows: list[dict[str, Any]] = []
    renames: list[tuple[str, str]] = []
    per_series: dict[int, int] = {}
    per_study: dict[int, list[int]] = {}  # pk -> [instances, bytes, new series]
    for p in items:
        rec = p.record
        key = archive.blobs.key_for(rec.sop_uid)
        series_pk = series_pks[rec.series_uid]
        rows.append(dict(series_fk=series_pk, blob_key=key, size=p.size, checksum=p.checksum,
                         source_aet=source_aet[:16], origin=origin[:16], received_at=now, **rec.instance))
        renames.append((p.temp, key))
        per_series[series_pk] = per_series.get(series_pk, 0) + 1
        counts = per_study.setdefault(study_pks[rec.study_uid], [0, 0, 0])
        counts[0] += 1
        counts[1] += p.size
    for uid in new_series:
        per_study[series_rows[uid]["study_fk"]][2] += 1
    conn.execute(insert(instances), rows)
    conn.execute(_ADD_SERIES_INSTANCES, [{"spk": pk, "n": n} for pk, n in per_series.items()])
    conn.execute(_ADD_STUDY_COUNTS, [{"stpk": pk, "n": n, "size": size, "new": new, "now": now}
                                     for pk, (n, size, new) in per_study.items()])
    if new_series:
        archive._refresh_modalities(conn, *sorted({series_rows[uid]["study_fk"] for uid in new_series}))
    return out, events, renames


_INSTANCE_PKS = select(instances.c.sop_uid, instances.c.pk).where(
    instances.c.sop_uid.in_(bindparam("keys", expanding=True)))
_PKS = {t.name: select(uid, t.c.pk).where(uid.in_(bindparam("keys", expanding=True)))
        for t, uid in ((studies, studies.c.study_uid), (series, series.c.series_uid))}
_PATIENT_PKS = select(patients.c.patient_id, patients.c.issuer, patients.c.pk, patients.c.patient_name).where(
    patients.c.patient_id.in_(bindparam("keys", expanding=True)))
_ADD_SERIES_INSTANCES = (update(series).where(series.c.pk == bindparam("spk"))
                         .values(num_instances=series.c.num_instances + bindparam("n")))
_ADD_STUDY_COUNTS = (update(studies).where(studies.c.pk == bindparam("stpk"))
                     .values(num_instances=studies.c.num_instances + bindparam("n"),
                             size_bytes=studies.c.size_bytes + bindparam("size"),
                             num_series=studies.c.num_series + bindparam("new"), updated_at=bindparam("now")))


def _pks_by_key(conn: Connection, stmt: Any, keys: list[str]) -> dict[str, int]:
    """``{key: pk}`` of the rows ``stmt`` finds for ``keys`` (500 to a query)."""
    from hilum.archive.archive import _chunks

    found: dict[str, int] = {}
    for chunk in _chunks(keys, 500):
        for key, pk in conn.execute(stmt, {"keys": chunk}):
            found[key] = int(pk)
    return found


def _find_or_insert(archive: Archive, conn: Connection, table: Any,
                    rows: dict[str, dict[str, Any]]) -> tuple[dict[str, int], list[str]]:
    """The pks of the study or series rows keyed by UID, inserting those not there; and the UIDs inserted."""
    uids = list(rows)
    pks = _pks_by_key(conn, _PKS[table.name], uids)
    missing = [uid for uid in uids if uid not in pks]
    if not missing:
        return pks, []
    uid_column = _PKS[table.name].selected_columns[0].name
    inserted: list[str] = []
    for uid, pk in conn.execute(archive.insert_ignoring(table, (uid_column, "pk")), [rows[uid] for uid in missing]):
        pks[uid] = int(pk)
        inserted.append(uid)
    if len(inserted) < len(missing):  # inserted meanwhile by another node sharing the database
        pks.update(_pks_by_key(conn, _PKS[table.name], [uid for uid in missing if uid not in pks]))
    return pks, inserted


def _patients(archive: Archive, conn: Connection, records: list[IndexRecord], now: Any) -> dict[tuple[str, str], int]:
    """The pks of the records' patients (by Patient ID and issuer), inserting those not there.  A
    patient is inserted with, and an existing one without a name takes, the demographics of its
    first record that has a name."""
    from hilum.archive.archive import _UPDATE_PATIENT, DEMOGRAPHICS, _chunks

    wanted: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        p = rec.patient
        key = (p["patient_id"], p["issuer"])
        if key not in wanted or (not wanted[key]["patient_name"] and p["patient_name"]):
            wanted[key] = p
    pks: dict[tuple[str, str], int] = {}
    for chunk in _chunks(sorted({pid for pid, _ in wanted}), 500):
        for pid, issuer, pk, name in conn.execute(_PATIENT_PKS, {"keys": chunk}):
            p = wanted.get((pid, issuer))
            if p is None:
                continue
            pks[(pid, issuer)] = int(pk)
            if not name and p["patient_name"]:
                conn.execute(_UPDATE_PATIENT, {"ppk": pk, **{k: p[k] for k in DEMOGRAPHICS}})
    missing = [key for key in wanted if key not in pks]
    if missing:
        stmt = archive.insert_ignoring(patients, ("patient_id", "issuer", "pk"))
        for pid, issuer, pk in conn.execute(stmt, [{**wanted[key], "created_at": now} for key in missing]):
            pks[(pid, issuer)] = int(pk)
        if len(pks) < len(wanted):  # inserted meanwhile by another node sharing the database
            for pid, issuer, pk, _ in conn.execute(_PATIENT_PKS, {"keys": sorted({k[0] for k in missing})}):
                pks.setdefault((pid, issuer), int(pk))
    return pks
