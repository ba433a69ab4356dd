"""Bulk ingest: the pipeline behind :meth:`Archive.ingest_many`.

The same validation, blob writes, index rows and events as
:meth:`Archive.ingest` — still the one way in (../shared/DESIGN.md), and the
same index writer (:mod:`hilum.archive.index`) — but pipelined for many
instances so an import of a folder uses every core:

1. *Prepare*, on workers: read the source, validate and parse it
   (:func:`hilum.dicom.attributes.read_instance`, pixel data stays bytes),
   skip a known duplicate, checksum it and write it to a temporary blob
   (not fsynced).  For large sets on machines with many cores the workers
   are processes (a :class:`~concurrent.futures.ProcessPoolExecutor`, see
   :class:`_Processes` for how they are started and why), since parsing is
   Python and holds the GIL; otherwise they are threads.
2. *Sync*: each temporary blob's fsync starts as soon as its worker hands it
   over, on threads that keep many in flight, so the file system commits its
   journal once for many blobs (group commit) instead of once per file.
3. *Index*, on the calling thread, once a batch's fsyncs are done (the blobs
   are durable before they are indexed): up to :data:`BATCH_SIZE` prepared
   instances go to :meth:`IndexWriter.write` together, one transaction for
   the batch (a batch that fails is retried one instance at a time, so one
   bad instance never rejects its neighbours).
"""

from __future__ import annotations

import ast
import functools
import logging
import multiprocessing
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Engine, bindparam, select

from hilum.archive.blobs import FileBlobStore, blob_checksum
from hilum.archive.db import make_engine
from hilum.archive.index import IndexWriter, Prepared, duplicate_result, result_base
from hilum.archive.model import IngestResult
from hilum.archive.schema import instances
from hilum.dicom.attributes import InvalidInstance, index_record, read_instance, received_as_part10, to_part10
from hilum.errors import StorageFull

log = logging.getLogger(__name__)

PROCESS_THRESHOLD = 200
"""Below this many sources a thread pool is used: worker processes cost more to start than they save."""

PROCESS_MIN_CPUS = 4
"""Worker processes from this many CPUs on.  With the blobs' fsyncs out of the workers (they run in
batches, see the module docstring) and read_instance's own reader (0.24 ms for a CT header, pydicom's
took 0.67), a worker spends most of its time in system calls that release the GIL, and on two cores
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


def _label(source: Any) -> str | None:
    return str(source) if isinstance(source, (str, os.PathLike)) else None


def _bytes_of(source: Any) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, Dataset):
        return to_part10(source)
    return Path(source).read_bytes()


Stored = Callable[[str], "tuple[str, str] | None"]


def prepare(source: Any, *, blobs: FileBlobStore, stored: Stored | None) -> Prepared | IngestResult:
    """Step 1 of an ingest: validate, parse, skip a known duplicate, write the temporary blob.

    Mirrors :meth:`Archive.ingest` up to the index writer; ``stored`` (given
    under the ``ignore`` duplicate policy) gives the checksum and blob key of
    an instance already stored, so a duplicate is never written (and one whose
    data set differs is reported so).  The blob is not fsynced here: the
    pipeline starts its fsync as soon as it is handed over, many side by side
    (group commit), and the writer waits for it before indexing.
    """
    label = _label(source)
    try:
        data = _bytes_of(source)
        ds = read_instance(data)
        record = index_record(ds)
        if data[128:132] != b"DICM":  # a bare dataset: store it as a Part 10 file
            data = received_as_part10(ds)
        checksum = blob_checksum(data)
        known = stored(record.sop_uid) if stored is not None else None
        if known is not None:
            stored_checksum, key = known
            return duplicate_result(result_base(record, label, len(data)), stored_checksum, checksum,
                                    blobs.path(key).read_bytes, lambda: data)
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


def _failed(src: Any, exc: BaseException) -> IngestResult:
    return IngestResult("rejected", reason=f"failed: {type(exc).__name__}: {exc}", code="unreadable",
                        source=_label(src))


_STORED = select(instances.c.checksum, instances.c.blob_key).where(instances.c.sop_uid == bindparam("uid"))


class _StoredCheck:
    """The checksum and blob key of an instance already indexed, or None: an early skip of duplicates.

    One short read per call on a pooled connection, returned to the pool
    after each call so any number of worker threads shares the pool.  The
    index writer consults the index again inside its transaction.

    With ``raw`` (the ``fast`` index writer) the SELECT, compiled once, runs
    on the DB-API connection through public SQLAlchemy API only
    (``Engine.raw_connection``): a SQLAlchemy ``Connection`` costs ~0.5 ms of
    CPU per call here (it begins and rolls back a transaction around the
    SELECT), ten times the query, and once per ingested instance that was 6%
    of ``ingest_many``'s throughput.
    """

    def __init__(self, engine: Engine, *, raw: bool = True):
        self._engine = engine
        self._raw = raw
        self._sql = str(_STORED.compile(dialect=engine.dialect))
        self._positional = engine.dialect.paramstyle in ("qmark", "format", "numeric")

    def __call__(self, sop_uid: str) -> tuple[str, str] | None:
        if not self._raw:
            with self._engine.connect() as conn:
                row = conn.execute(_STORED, {"uid": sop_uid}).first()
            return None if row is None else (str(row[0]), str(row[1]))
        dbapi = self._engine.raw_connection()
        try:
            cur = dbapi.cursor()
            try:
                cur.execute(self._sql, (sop_uid,) if self._positional else {"uid": sop_uid})
                found = cur.fetchone()
            finally:
                cur.close()
                dbapi.rollback()
        finally:
            dbapi.close()  # back to the engine's pool
        return None if found is None else (str(found[0]), str(found[1]))


# ---------------------------------------------------------------- worker processes

_worker_blobs: FileBlobStore | None = None
_worker_stored: Stored | None = None


def _init_worker(blob_root: str, database_url: str | None, filters: list[Any], pydicom_level: int) -> None:
    """ProcessPoolExecutor initializer: this worker's blob store and (for duplicates) its own engine."""
    global _worker_blobs, _worker_stored
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides: it shuts the pool down
    for action, message, category, module, lineno in reversed(filters):
        # Patterns are compiled regexes, or plain strings when set by hand (as some libraries do).
        warnings.filterwarnings(action, getattr(message, "pattern", message) or "", category,
                                getattr(module, "pattern", module) or "", lineno)
    logging.getLogger("pydicom").setLevel(pydicom_level)
    _worker_blobs = FileBlobStore(Path(blob_root))
    _worker_stored = _StoredCheck(make_engine(database_url)) if database_url else None


def _work(src: Any) -> Prepared | IngestResult:
    """One source, in a worker process (set up by :func:`_init_worker`)."""
    assert _worker_blobs is not None
    try:
        return prepare(src, blobs=_worker_blobs, stored=_worker_stored)
    except Exception as exc:  # noqa: BLE001 - report, keep serving
        return _failed(src, exc)


def _ping() -> int:
    return os.getpid()


def _picklable_filters() -> list[Any]:
    """The caller's warning filters on built-in categories (pydicom's noise is UserWarning)."""
    return [f for f in warnings.filters if getattr(f[2], "__module__", "") == "builtins"]


@functools.cache
def _has_main_guard(path: str) -> bool:
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1 \
                and isinstance(node.test.ops[0], ast.Eq):
            sides = [node.test.left, *node.test.comparators]
            names = {s.id for s in sides if isinstance(s, ast.Name)}
            consts = {s.value for s in sides if isinstance(s, ast.Constant)}
            if names == {"__name__"} and consts == {"__main__"}:
                return True
    return False


def main_module_safe() -> bool:
    """Whether worker processes may start: they import the caller's ``__main__`` module again (as
    ``__mp_main__``, multiprocessing's "safe importing of main module" rule), which is harmless only
    where there is none (an interactive session, ``python -c``), where multiprocessing skips it (a
    package's ``__main__``: ``python -m pkg``, pytest), or where its top-level code is guarded by
    ``if __name__ == "__main__"`` (``hilum`` and every pip-made console script are).  A script
    without the guard would run again in every worker: threads are used instead."""
    main = sys.modules.get("__main__")
    if main is None:
        return True
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None and (spec_name == "__main__" or spec_name.endswith(".__main__")):
        return True
    path = getattr(main, "__file__", None)
    return path is None or _has_main_guard(os.path.abspath(path))


class _Processes:
    """Worker processes: a :class:`ProcessPoolExecutor` with an initializer, falling back to threads.

    Start method: ``forkserver``, chosen deliberately.  ``fork`` copies the
    caller's threads' state without the threads (the workstation, the server
    and the archive itself run threads: a lock held by one of them at the
    moment of the fork stays held forever in the child — logging, SQLAlchemy's
    pool, the import lock).  ``spawn`` starts each worker from nothing (each
    imports pydicom, SQLAlchemy, the codecs: about a second of CPU).  The
    fork server is one fresh, single-threaded interpreter that imports this
    module (and with it pydicom and SQLAlchemy) once, with the caller's
    ``sys.path`` and not its ``__main__``; workers are forked from it in
    milliseconds and inherit nothing of the caller.  Workers still import the
    caller's ``__main__`` as multiprocessing does for every start method but
    ``fork``; :func:`main_module_safe` decides before any is started.

    Until the first worker answers, ``bridges`` threads serve sources in this
    process, so the server's start costs no time.  If a worker dies (killed,
    out of memory) the executor is broken (``BrokenProcessPool``): what it
    held and everything after is served in-process by threads, so an import
    never stops because a worker did.
    """

    def __init__(self, n: int, init_args: tuple[Any, ...], fallback: Callable[[Any], Prepared | IngestResult],
                 bridges: int):
        self._fallback = fallback
        self._threads = ThreadPoolExecutor(max_workers=max(1, bridges, n), thread_name_prefix="ingest")
        self._bridges = bridges
        self._lock = threading.Lock()
        self._broken = False
        self._pool: ProcessPoolExecutor | None = None
        self._ready: Future[int] | None = None
        try:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker,
                                             initargs=init_args)
            self._ready = self._pool.submit(_ping)
        except (OSError, ValueError, BrokenProcessPool) as exc:
            log.warning("cannot start ingest worker processes (%s); working in-process", exc)
            self._broken = True

    def submit(self, src: Any) -> Future[Any]:
        if not self._broken and self._pool is not None:
            ready = self._ready
            if self._bridges == 0 or (ready is not None and ready.done()):
                try:
                    inner = self._pool.submit(_work, src)
                except (BrokenProcessPool, RuntimeError) as exc:
                    self._break(exc)
                else:
                    return self._guarded(inner, src)
        return self._threads.submit(self._fallback, src)

    def _guarded(self, inner: Future[Any], src: Any) -> Future[Any]:
        """``inner``'s result; a dead worker's source served again in-process."""
        outer: Future[Any] = Future()

        def done(f: Future[Any]) -> None:
            try:
                outer.set_result(f.result())
                return
            except BrokenProcessPool as exc:
                self._break(exc)
            except BaseException as exc:  # noqa: BLE001 - hand any failure to the waiting caller
                outer.set_exception(exc)
                return
            again = self._threads.submit(self._fallback, src)
            again.add_done_callback(lambda g: _copy(g, outer))

        inner.add_done_callback(done)
        return outer

    def _break(self, exc: BaseException) -> None:
        with self._lock:
            if self._broken:
                return
            self._broken = True
        log.warning("an ingest worker process failed (%s); working in-process", exc)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._threads.shutdown(wait=True, cancel_futures=True)


def _copy(src: Future[Any], dst: Future[Any]) -> None:
    try:
        dst.set_result(src.result())
    except BaseException as exc:  # noqa: BLE001
        dst.set_exception(exc)


class _Threads:
    def __init__(self, n: int, fn: Callable[[Any], Prepared | IngestResult]):
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ingest")
        self._fn = fn

    def submit(self, src: Any) -> Future[Any]:
        return self._pool.submit(self._fn, src)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- the pipeline


def run_ingest_many(writer: IndexWriter, database_url: str, sources: Iterable[Any], *, origin: str,
                    workers: int | None, progress: Callable[[IngestResult], None] | None,
                    cancel: threading.Event | None) -> list[IngestResult]:
    """See :meth:`Archive.ingest_many`: prepare on workers, index through ``writer`` in batches."""
    it: Iterator[Any] = iter(sources)
    blobs = writer.blobs
    cpus = os.cpu_count() or 1
    in_memory = database_url in ("sqlite://", "sqlite:///:memory:")
    possible = cpus > 1 and (workers is None or workers > 1) and not in_memory
    head: list[Any] = []
    if MODE == "auto" and possible and cpus >= PROCESS_MIN_CPUS:
        for src in it:  # look ahead just far enough to know whether processes pay off
            head.append(src)
            if len(head) >= PROCESS_THRESHOLD:
                break
    use_processes = possible and (MODE == "processes" or (MODE == "auto" and len(head) >= PROCESS_THRESHOLD
                                                          and cpus >= PROCESS_MIN_CPUS))
    if use_processes and not main_module_safe():
        log.info("the main module has no __main__ guard: ingest workers are threads, not processes")
        use_processes = False
    check_dups = writer.duplicate_policy == "ignore"
    thread_stored = _StoredCheck(writer.engine, raw=writer.mode == "fast") if check_dups else None

    def thread_prepare(src: Any) -> Prepared | IngestResult:
        return prepare(src, blobs=blobs, stored=thread_stored)

    pool: _Processes | _Threads
    if use_processes:
        n = workers or cpus
        pool = _Processes(n, (str(blobs.root), database_url if check_dups else None, _picklable_filters(),
                              logging.getLogger("pydicom").getEffectiveLevel()), thread_prepare, bridges=BRIDGES)
    else:
        n = workers or max(2, cpus)  # the blobs' fsyncs wait in the writer, not in the workers
        pool = _Threads(n, thread_prepare)
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
                for chunk_start in range(0, len(eligible), BATCH_SIZE):
                    batch = [(i, ready.pop(i)[0]) for i in eligible[chunk_start:chunk_start + BATCH_SIZE]]
                    for idx, res in writer.write(batch, origin=origin):
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
                    out.synced = blobs.sync_later(out.temp)
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
            blobs.discard_temp(p.temp)
    return [results[i] for i in range(len(results))]


def _chain(head: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from head
    yield from rest
