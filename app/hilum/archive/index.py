"""THE index writer: every instance row, and the patient, study and series rows above it, is written here.

``Archive.ingest`` (a batch of one) and ``Archive.ingest_many``'s pipeline
(batches of up to ``batch.BATCH_SIZE``) both end in :meth:`IndexWriter.write`:

1. the instances already indexed are looked up (duplicates: skipped under
   ``duplicate_policy = "ignore"`` — reported ``duplicate-differs`` when
   their data set is not the stored one — or replaced under ``overwrite``);
2. the rows above each new instance: for a series this process has indexed
   before, the cached (patient, study, series) keys; for the others the
   patients go through THE patient registry
   (:meth:`hilum.archive.patients.PatientRegistry.upsert_many`, source
   ``image``: create, or fill empty fields), then the studies and series are
   looked up one query per table and the missing ones inserted together
   (``INSERT .. ON CONFLICT DO NOTHING RETURNING``, so several nodes can
   share a PostgreSQL database);
3. the instance rows are inserted together, each with the patient revision
   its header carries (see ``schema.py``), and the series and study counters
   updated once per series and study (ModalitiesInStudy when a series is new);
4. the temporary blobs are renamed into place, then the transaction commits
   (an overwritten blob is kept aside until then), then one event per
   instance is published.

The blobs are durable before they are indexed (their fsyncs are awaited
first).  Anything that fails leaves nothing behind: renamed blobs go back,
temporaries are removed, and a batch that fails is retried one instance at a
time so one bad instance never rejects its neighbours.  A full disk under
the index (SQLite ``SQLITE_FULL``, PostgreSQL class 53 "insufficient
resources") is ``storage-full``, as a full blob store is.

The hot statements (step 1 for one instance, step 3) run on the
``index_writer`` setting's path: compiled once on the DB-API cursor
(``fast``), or through SQLAlchemy Core (``sqlalchemy``); see
:mod:`hilum.archive.sqlfast`.  One transaction at a time per process (SQLite
has one writer anyway): :meth:`IndexWriter.transaction` is also the one
every other change of the index database (deletes, orders, ADT) runs in.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy
import pydicom
from sqlalchemy import Engine, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from hilum.archive.blobs import FileBlobStore, blob_checksum
from hilum.archive.db import write_begin
from hilum.archive.model import ArchiveEvent, IngestResult, Status
from hilum.archive.patients import PatientInfo, PatientRegistry
from hilum.archive.schema import blob_copies, blob_trash, instances, series, studies
from hilum.archive.sqlfast import Mode, NeedsCore, RawTransaction, Statements
from hilum.dicom.attributes import IndexRecord
from hilum.errors import StorageFull

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Prepared:
    """An instance validated, checksummed and written to a temporary blob: ready to index."""

    record: IndexRecord
    temp: str
    checksum: str
    size: int
    source: str | None
    synced: Future[str] | None = None  # its pending fsync (None: the temporary is durable already)


def _now() -> datetime:
    return datetime.now(UTC)


def chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def result_base(record: IndexRecord, source: str | None, size: int) -> dict[str, Any]:
    """The fields every :class:`IngestResult` of an instance carries."""
    return dict(sop_instance_uid=record.sop_uid, study_instance_uid=record.study_uid,
                series_instance_uid=record.series_uid, sop_class_uid=record.instance["sop_class_uid"],
                source=source, size=size)


# ----------------------------------------------------------------------------- duplicates

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def dataset_offset(data: bytes | memoryview) -> int:
    """Where the data set of a Part 10 file starts: after its File Meta Information (PS3.10 7.1).

    The meta is always Explicit VR Little Endian; 0 for a bare data set.
    """
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        return 0
    pos = 132
    while pos + 8 <= len(data):
        group, = struct.unpack_from("<H", data, pos)
        if group != 0x0002:
            break
        vr = bytes(data[pos + 4:pos + 6])
        if vr in _LONG_VRS:
            length, = struct.unpack_from("<L", data, pos + 8)
            pos += 12 + length
        else:
            length, = struct.unpack_from("<H", data, pos + 6)
            pos += 8 + length
    return min(pos, len(data))


def same_dataset(a: bytes, b: bytes) -> bool:
    """Whether two Part 10 files hold the same data set, byte for byte (their meta may differ)."""
    da, db = memoryview(a)[dataset_offset(a):], memoryview(b)[dataset_offset(b):]
    return len(da) == len(db) and blob_checksum(da) == blob_checksum(db)


_SKIP_GROUPS = (0x0002, 0x7FE0, 0xFFFC)  # file meta; pixel data (compared decoded); trailing padding


def content_difference(a: bytes, b: bytes) -> str | None:
    """How two encodings of one instance differ in content, or None when they do not.

    The same data set in another transfer syntax (RLE or JPEG-LS lossless of
    an uncompressed instance, Big Endian of a Little Endian one) is the same
    content: every attribute outside the file meta has the same value, and the
    pixel data decode to the same values.  Only called when the bytes differ.
    """
    if same_dataset(a, b):
        return None
    try:
        da = pydicom.dcmread(io.BytesIO(a), force=True)
        db = pydicom.dcmread(io.BytesIO(b), force=True)
        tags_a = {e.tag for e in da if e.tag.group not in _SKIP_GROUPS}
        tags_b = {e.tag for e in db if e.tag.group not in _SKIP_GROUPS}
        if tags_a != tags_b:
            names = sorted(str(da[t].keyword if t in da else db[t].keyword) or str(t) for t in tags_a ^ tags_b)
            return f"attributes present in one only: {', '.join(names[:5])}"
        for tag in sorted(tags_a):
            if da[tag].value != db[tag].value:
                return f"{da[tag].keyword or tag} differs"
        if ("PixelData" in da) != ("PixelData" in db):
            return "pixel data present in one only"
        if "PixelData" in da:
            syntax = [getattr(getattr(d, "file_meta", None), "TransferSyntaxUID", None) for d in (da, db)]
            same_bytes = syntax[0] == syntax[1] and da.PixelData == db.PixelData
            if not same_bytes and not numpy.array_equal(da.pixel_array, db.pixel_array):
                return "pixel data differ"
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - cannot decode one of them: cannot say they are the same
        # BaseException: the Rust codecs (pylibjpeg-rle, pyjpegls...) panic on a corrupt stream with
        # pyo3's PanicException, which is not an Exception - it escaped ingest for a duplicate whose
        # RLE segment was damaged (tests/test_fuzz_regressions.py).
        return f"cannot compare ({type(exc).__name__}: {str(exc)[:100]})"
    return None


def duplicate_result(base: dict[str, Any], stored_checksum: str, checksum: str,
                     read_stored: Callable[[], bytes], read_new: Callable[[], bytes]) -> IngestResult:
    """The result for an instance already stored (policy ``ignore``, the stored one is kept):
    ``duplicate``, with code ``duplicate-differs`` when its content is not the stored one's
    (:func:`content_difference`; the files are read only when their checksums differ)."""
    if stored_checksum == checksum:
        return IngestResult("duplicate", **base)
    try:
        why = content_difference(read_stored(), read_new())
    except OSError as exc:
        why = f"cannot compare: {exc.strerror or exc}"
    if why is None:
        return IngestResult("duplicate", **base)
    log.warning("duplicate of a stored instance with other content: %s", why)
    return IngestResult("duplicate", code="duplicate-differs",
                        reason=f"stored already with other content ({why}); the stored one is kept"[:200], **base)


# ----------------------------------------------------------------------------- failures


def storage_failure(exc: BaseException) -> tuple[str, str]:
    """``(code, one-line reason)`` of a failure to write a blob or the index.

    ``storage-full`` for what a later retry may get past: a full disk or
    quota, a read-only file system, an I/O error, an index still locked by
    another writer after the busy timeout (SQLite ``SQLITE_FULL``,
    ``SQLITE_IOERR``, ``SQLITE_READONLY``, ``SQLITE_BUSY``, ``SQLITE_LOCKED``;
    PostgreSQL class 53 "insufficient resources", 58030 ``io_error``, 25006
    ``read_only_sql_transaction``, 40001/40P01 serialization failure and
    deadlock, 55P03 lock not available);
    ``index-error`` for anything else the index refused.
    """
    if isinstance(exc, StorageFull):
        return "storage-full", str(exc)
    if isinstance(exc, OSError):
        return "storage-full", f"cannot write blob: {exc.strerror or exc}"
    orig = getattr(exc, "orig", None) or exc
    msg = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    name = str(getattr(orig, "sqlite_errorname", "") or "")
    state = str(getattr(orig, "sqlstate", "") or "")
    if (name.startswith(("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_BUSY",
                         "SQLITE_LOCKED"))
            or state.startswith("53") or state in ("58030", "25006", "40001", "40P01", "55P03")):
        return "storage-full", f"cannot write the index: {msg}"
    low = msg.lower()
    if ("disk is full" in low or "no space" in low or "readonly" in low or "read-only" in low
            or "database is locked" in low):
        return "storage-full", f"cannot write the index: {msg}"
    return "index-error", f"cannot index: {msg}"


class _Retry(Exception):
    """A cached study/series row was deleted meanwhile (by another node): look everything up again."""


# ----------------------------------------------------------------------------- statements

# Built once, values bound at execution: building a statement and its cache key costs
# SQLAlchemy more than SQLite takes to run it.
_INSTANCE = select(instances.c.pk, instances.c.checksum, instances.c.blob_key).where(
    instances.c.sop_uid == bindparam("uid"))
_INSTANCES = select(instances.c.sop_uid, instances.c.pk, instances.c.checksum, instances.c.blob_key).where(
    instances.c.sop_uid.in_(bindparam("keys", expanding=True)))
_INSERT_INSTANCE = instances.insert()
_ADD_SERIES_INSTANCES = (update(series).where(series.c.pk == bindparam("spk"))
                         .values(num_instances=series.c.num_instances + bindparam("n")))
_ADD_STUDY_COUNTS = (update(studies).where(studies.c.pk == bindparam("stpk"))
                     .values(num_instances=studies.c.num_instances + bindparam("n"),
                             size_bytes=studies.c.size_bytes + bindparam("size"),
                             num_series=studies.c.num_series + bindparam("new"), updated_at=bindparam("now")))
_STUDIES = select(studies.c.study_uid, studies.c.pk, studies.c.patient_fk).where(
    studies.c.study_uid.in_(bindparam("keys", expanding=True)))
_SERIES = select(series.c.series_uid, series.c.pk, series.c.study_fk).where(
    series.c.series_uid.in_(bindparam("keys", expanding=True)))
_UPDATE_STUDY = update(studies).where(studies.c.pk == bindparam("stpk"))
_STUDY_MODALITIES = (select(series.c.study_fk, series.c.modality).distinct()
                     .where(series.c.study_fk.in_(bindparam("stpks", expanding=True)), series.c.modality != ""))


class IndexWriter:
    """The one writer of an index database (see the module docstring).  Thread-safe."""

    SERIES_CACHE = 4096

    def __init__(self, engine: Engine, blobs: FileBlobStore, *, duplicate_policy: str, mode: Mode,
                 emit: Callable[[ArchiveEvent], None]):
        self.engine = engine
        self.blobs = blobs
        self.duplicate_policy = duplicate_policy
        self.mode = mode
        self.dialect = engine.dialect.name
        self.patients = PatientRegistry(self.dialect, on_merge=self.forget)
        self.statements = Statements(engine.dialect, mode)
        self._emit = emit
        self._lock = threading.Lock()
        # series UID -> (patient pk, study pk, series pk) of rows known to exist; cleared on every delete.
        self._series: dict[str, tuple[int, int, int]] = {}
        dbapi: Any = engine.dialect.loaded_dbapi
        self._db_errors: tuple[type[BaseException], ...] = (SQLAlchemyError, dbapi.Error)
        self._integrity: tuple[type[BaseException], ...] = (IntegrityError, dbapi.IntegrityError)
        ins = pg_insert if self.dialect == "postgresql" else sqlite_insert
        self._insert_study = ins(studies).on_conflict_do_nothing().returning(
            studies.c.study_uid, studies.c.pk, studies.c.patient_fk)
        self._insert_series = ins(series).on_conflict_do_nothing().returning(
            series.c.series_uid, series.c.pk, series.c.study_fk)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction on the index database, one at a time in this process."""
        with self._lock, write_begin(self.engine) as conn:
            yield conn

    def forget(self) -> None:
        """Drop the cached row keys (after deletes and merges)."""
        self._series.clear()

    # ------------------------------------------------------------------ writing

    def write(self, batch: list[tuple[int, Prepared]], *, origin: str, source_aet: str = "",
              sync_inside: bool = False) -> list[tuple[int, IngestResult]]:
        """Index prepared instances in one transaction (see the module docstring); results by index.

        Never raises for a storage or index failure: the instance is
        ``rejected`` with its code.  Owns the temporaries: each is renamed
        into place or removed.

        The blobs' pending fsyncs (``Prepared.synced``) are awaited before the
        transaction begins; with ``sync_inside`` they are awaited inside it,
        after the rows are written and before the blobs are renamed into
        place and the transaction commits, so the index statements run while
        the disk syncs (a lone C-STORE: the sender waits for both).  Either
        way a blob is durable before it is in place and before its row
        commits.  ``sync_inside`` holds the writer (and SQLite's write lock)
        through the fsync: for an ingest with no other in flight.
        """
        moved: list[tuple[str, str, str | None]] = []
        failures: tuple[type[BaseException], ...] = (StorageFull, OSError, *self._db_errors)
        try:
            if not sync_inside:
                _await_synced(batch)
            out, events, discards = self._transact(batch, origin, source_aet, moved)
            _await_synced(batch)  # (done already: the renames waited for them)
        except failures as exc:
            self._unmove(moved)
            if len(batch) > 1:
                log.info("batch of %d failed (%s); indexing one by one", len(batch), exc)
                return [r for item in batch for r in self.write([item], origin=origin, source_aet=source_aet)]
            idx, p = batch[0]
            _settle(p)
            self.blobs.discard_temp(p.temp)
            code, reason = storage_failure(exc)
            if code == "storage-full":
                log.warning("cannot index an instance: %s", reason)
            else:
                log.error("cannot index an instance: %s", reason)
            return [(idx, IngestResult("rejected", reason=reason, code=code,
                                       **result_base(p.record, p.source, p.size)))]
        except BaseException:
            self._unmove(moved)
            for _, p in batch:
                _settle(p)
                self.blobs.discard_temp(p.temp)
            raise
        for _, _, backup in moved:
            if backup is not None:
                self.blobs.discard_temp(backup)
        for temp in discards:
            self.blobs.discard_temp(temp)
        for ev in events:
            self._emit(ev)
        return out

    def _transact(self, batch: list[tuple[int, Prepared]], origin: str, source_aet: str,
                  moved: list[tuple[str, str, str | None]]) -> tuple[list[tuple[int, IngestResult]],
                                                                     list[ArchiveEvent], list[str]]:
        if self.mode == "fast" and len(batch) == 1 and batch[0][1].record.series_uid in self._series:
            # One instance into a known series, the commonest case: on the DB-API connection alone,
            # unless anything but the hot statements is needed (sqlfast.RawTransaction).
            raw: RawTransaction | None = None
            step_aside: tuple[type[BaseException], ...] = (NeedsCore, *self._integrity)
            try:
                with self._lock:
                    raw = RawTransaction(self.engine)
                    out, events, renames, discards = self._index(raw, batch, origin, source_aet)
                    _await_synced(batch)
                    self._commit_blobs(renames, moved)
                    raw.commit()
                    raw.close(rollback=False)
                    raw = None
                return out, events, discards
            except step_aside as exc:
                self._unmove(moved)
                moved.clear()
                if not isinstance(exc, NeedsCore):
                    self.forget()  # a cached row went (another node): look everything up again
            finally:
                if raw is not None:
                    raw.close(rollback=True)
        for attempt in (1, 2):
            try:
                with self.transaction() as conn:
                    out, events, renames, discards = self._index(conn, batch, origin, source_aet)
                    _await_synced(batch)
                    self._commit_blobs(renames, moved)
                return out, events, discards
            except self._integrity:
                # A cached study/series row deleted by another node sharing the database, or
                # the same instance indexed meanwhile: look everything up again, once.
                self._unmove(moved)
                moved.clear()
                self.forget()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _commit_blobs(self, renames: list[tuple[str, str, bool]], moved: list[tuple[str, str, str | None]]) -> None:
        """Rename the temporaries into place (inside the transaction, before it commits)."""
        for temp, key, replacing in renames:
            backup = self._keep_aside(key) if replacing else None
            try:
                self.blobs.commit_temp(temp, key)
            except BaseException:
                if backup is not None:
                    os.replace(backup, self.blobs.path(key))
                raise
            moved.append((temp, key, backup))

    def _keep_aside(self, key: str) -> str | None:
        """A hard link to the blob an overwrite replaces, so a failed commit can put it back."""
        path = self.blobs.path(key)
        aside = f"{self.blobs.tmp}/{os.path.basename(key)}.{os.getpid()}.{threading.get_ident()}.aside.part"
        try:
            os.link(path, aside)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageFull(f"cannot keep the replaced blob aside: {exc.strerror or exc}") from exc
        return aside

    def _unmove(self, moved: list[tuple[str, str, str | None]]) -> None:
        """Undo the renames of a failed commit: new blobs back to their temporaries, replaced ones restored."""
        for temp, key, backup in reversed(moved):
            try:
                os.replace(self.blobs.path(key), temp)
                if backup is not None:
                    os.replace(backup, self.blobs.path(key))
            except OSError:
                log.warning("could not take back blob %s after a failed commit", key)

    def _existing(self, conn: Connection | RawTransaction, sops: list[str]) -> dict[str, tuple[int, str, str]]:
        """``{SOP Instance UID: (pk, checksum, blob key)}`` of those already indexed."""
        if len(sops) == 1:
            row = self.statements.run(conn, _INSTANCE, {"uid": sops[0]}).fetchone()
            return {} if row is None else {sops[0]: (int(row[0]), row[1], row[2])}
        found: dict[str, tuple[int, str, str]] = {}
        for chunk in chunks(sorted(set(sops)), 500):
            for sop, pk, checksum, key in conn.execute(_INSTANCES, {"keys": chunk}):
                found[sop] = (int(pk), checksum, key)
        return found

    def _index(self, conn: Any, batch: list[tuple[int, Prepared]], origin: str, source_aet: str
               ) -> tuple[list[tuple[int, IngestResult]], list[ArchiveEvent], list[tuple[str, str, bool]], list[str]]:
        ignore = self.duplicate_policy == "ignore"
        existing = self._existing(conn, [p.record.sop_uid for _, p in batch])
        keep: dict[str, tuple[int, Prepared]] = {}
        out: list[tuple[int, IngestResult]] = []
        events: list[ArchiveEvent] = []
        discards: list[str] = []
        for idx, p in batch:
            rec = p.record
            sop = rec.sop_uid
            base = result_base(rec, p.source, p.size)
            status: Status = "stored"
            if sop in existing or sop in keep:
                if ignore:
                    discards.append(p.temp)
                    if sop in existing:
                        _, checksum, key = existing[sop]
                        stored_path: str | os.PathLike[str] = self.blobs.path(key)
                    else:
                        first = keep[sop][1]
                        checksum, stored_path = first.checksum, first.temp
                    out.append((idx, duplicate_result(base, checksum, p.checksum,
                                                      functools.partial(_read, stored_path),
                                                      functools.partial(_read, p.temp))))
                    continue
                status = "replaced"
                if sop in keep:  # an earlier copy in this batch, replaced before it was indexed
                    discards.append(keep[sop][1].temp)
            keep[sop] = (idx, p)
            out.append((idx, IngestResult(status, **base)))
            events.append(ArchiveEvent(status, "IMAGE", sop, rec.study_uid, rec.series_uid,
                                       rec.patient["patient_id"], origin))
        replaced = [existing[sop][0] for sop in keep if sop in existing]
        if replaced:
            self.delete_instances(conn, replaced)  # may drop emptied series and studies, looked up below
            # A blob a transcode wrote beside the usual key (hilum.archive.compress) is not overwritten by the
            # new one: note it in the blob trash (hilum.archive.storage) so that it goes once this commits.
            stale = [existing[sop][2] for sop in keep
                     if sop in existing and existing[sop][2] != self.blobs.key_for(sop)]
            if stale:
                conn.execute(blob_trash.insert(), [{"key": k, "reason": "overwritten", "created_at": _now()}
                                                   for k in stale])
        items = [p for _, p in sorted(keep.values(), key=lambda item: item[0])]
        if not items:
            return out, events, [], discards

        now = _now()
        keys, new_series = self._rows_above(conn, [p.record for p in items], now)
        rows: list[dict[str, Any]] = []
        renames: list[tuple[str, str, bool]] = []
        per_series: dict[int, int] = {}
        per_study: dict[int, list[int]] = {}  # pk -> [instances, bytes, new series]
        for p in items:
            rec = p.record
            patient_pk, study_pk, series_pk = keys[rec.series_uid]
            key = self.blobs.key_for(rec.sop_uid)
            rows.append({**rec.instance, "series_fk": series_pk, "blob_key": key, "size": p.size,
                         "checksum": p.checksum, "source_aet": source_aet[:16], "origin": origin[:16],
                         "received_at": now,
                         "patient_rev": self.patients.revision_for(conn, patient_pk, rec.patient)})
            renames.append((p.temp, key, rec.sop_uid in existing))
            per_series[series_pk] = per_series.get(series_pk, 0) + 1
            counts = per_study.setdefault(study_pk, [0, 0, 0])
            counts[0] += 1
            counts[1] += p.size
        for uid in new_series:
            per_study[keys[uid][1]][2] += 1
        if len(rows) == 1:
            self.statements.run(conn, _INSERT_INSTANCE, rows[0], insert=True)
        else:
            self.statements.run_many(conn, _INSERT_INSTANCE, rows, insert=True)
        self._run_each(conn, _ADD_SERIES_INSTANCES, [{"spk": pk, "n": n} for pk, n in per_series.items()])
        self._run_each(conn, _ADD_STUDY_COUNTS, [{"stpk": pk, "n": n, "size": size, "new": new, "now": now}
                                                 for pk, (n, size, new) in per_study.items()])
        if new_series:
            self.refresh_modalities(conn, *sorted({keys[uid][1] for uid in new_series}))
        if len(self._series) > self.SERIES_CACHE:
            self._series.clear()
        self._series.update(keys)
        return out, events, renames, discards

    def _run_each(self, conn: Connection | RawTransaction, stmt: Any, rows: list[dict[str, Any]]) -> None:
        if len(rows) == 1:
            self.statements.run(conn, stmt, rows[0])
        else:
            self.statements.run_many(conn, stmt, rows)

    def _rows_above(self, conn: Connection, records: list[IndexRecord], now: datetime
                    ) -> tuple[dict[str, tuple[int, int, int]], list[str]]:
        """``{series UID: (patient pk, study pk, series pk)}`` for ``records``, inserting what is
        missing; and the UIDs of the series inserted."""
        keys: dict[str, tuple[int, int, int]] = {}
        todo: list[IndexRecord] = []
        for rec in records:
            cached = self._series.get(rec.series_uid)
            if cached is not None:
                keys[rec.series_uid] = cached
            elif rec.series_uid not in keys:
                todo.append(rec)
                keys[rec.series_uid] = (0, 0, 0)
        if not todo:
            return keys, []
        patient_pks = self.patients.upsert_many(conn, [PatientInfo.from_record(r.patient) for r in todo], "image")
        study_rows: dict[str, dict[str, Any]] = {}
        for rec in todo:
            if rec.study_uid not in study_rows:
                patient_pk = patient_pks[(rec.patient["patient_id"], rec.patient["issuer"])]
                study_rows[rec.study_uid] = new_study_row(patient_pk, rec.study, now)
        found_studies, _ = self._find_or_insert(conn, _STUDIES, self._insert_study, study_rows)
        series_rows: dict[str, dict[str, Any]] = {}
        for rec in todo:
            if rec.series_uid not in series_rows:
                series_rows[rec.series_uid] = new_series_row(found_studies[rec.study_uid][0], rec.series, now)
        found_series, inserted = self._find_or_insert(conn, _SERIES, self._insert_series, series_rows)
        patient_of_study = {pk: patient_fk for pk, patient_fk in found_studies.values()}
        for rec in todo:
            series_pk, study_pk = found_series[rec.series_uid]
            # The patient of an instance is its study's (a study keeps the patient it was first stored with).
            keys[rec.series_uid] = (patient_of_study.get(study_pk) or self._patient_of(conn, study_pk), study_pk,
                                    series_pk)
        return keys, inserted

    @staticmethod
    def _patient_of(conn: Connection, study_pk: int) -> int:
        return int(conn.execute(select(studies.c.patient_fk).where(studies.c.pk == study_pk)).scalar_one())

    @staticmethod
    def _find_or_insert(conn: Connection, lookup: Any, insert_stmt: Any, rows: dict[str, dict[str, Any]]
                        ) -> tuple[dict[str, tuple[int, int]], list[str]]:
        """``{uid: (pk, parent pk)}`` of the study or series rows keyed by UID, inserting those not
        there; and the UIDs inserted."""
        uids = list(rows)
        found: dict[str, tuple[int, int]] = {}
        for chunk in chunks(uids, 500):
            for uid, pk, parent in conn.execute(lookup, {"keys": chunk}):
                found[uid] = (int(pk), int(parent))
        missing = [uid for uid in uids if uid not in found]
        if not missing:
            return found, []
        inserted: list[str] = []
        for uid, pk, parent in conn.execute(insert_stmt, [rows[uid] for uid in missing]):
            found[uid] = (int(pk), int(parent))
            inserted.append(uid)
        if len(inserted) < len(missing):  # inserted meanwhile by another node sharing the database
            for chunk in chunks([uid for uid in missing if uid not in found], 500):
                for uid, pk, parent in conn.execute(lookup, {"keys": chunk}):
                    found[uid] = (int(pk), int(parent))
        return found, inserted

    @staticmethod
    def refresh_modalities(conn: Connection, *study_pks: int) -> None:
        """Set the studies' ModalitiesInStudy from their series (sorted, ``\\``-joined)."""
        found: dict[int, list[str]] = {pk: [] for pk in study_pks}
        for chunk in chunks(list(found), 500):
            for st_pk, modality in conn.execute(_STUDY_MODALITIES, {"stpks": chunk}):
                found[st_pk].append(modality)
        if found:
            conn.execute(_UPDATE_STUDY, [{"stpk": pk, "modalities": "\\".join(sorted(mods))}
                                         for pk, mods in found.items()])

    # ------------------------------------------------------------------ replacing a blob (compression)

    def replace_blob(self, conn: Connection, pk: int, *, expected_checksum: str, key: str, size: int, checksum: str,
                     transfer_syntax: str, sop_uid: str | None = None) -> str | None:
        """Point instance ``pk`` at a new blob (a transcode of its file), inside the caller's transaction.

        Only if the row still has ``expected_checksum`` (the file the
        transcode read; a duplicate overwrite or another node may have
        changed it meanwhile): else nothing changes and None is returned.
        Returns the old blob key (the caller trashes it).  The study's
        ``size_bytes`` follows the new size.  ``sop_uid``: a lossy transcode's
        new instance UID (PS3.3 C.7.6.1.1.5); the copies of the original held
        elsewhere (``blob_copies``) are then not copies of this instance and
        are forgotten.
        """
        row = conn.execute(select(instances.c.blob_key, instances.c.size, instances.c.series_fk)
                           .where(instances.c.pk == pk, instances.c.checksum == expected_checksum)).first()
        if row is None:
            return None
        values: dict[str, Any] = {"blob_key": key, "size": int(size), "checksum": checksum,
                                  "transfer_syntax": transfer_syntax}
        if sop_uid is not None:
            values["sop_uid"] = sop_uid
        res = conn.execute(update(instances).where(instances.c.pk == pk, instances.c.checksum == expected_checksum)
                           .values(**values))
        if res.rowcount != 1:
            return None
        if sop_uid is not None:
            conn.execute(delete(blob_copies).where(blob_copies.c.instance_fk == pk))
        st_pk = conn.execute(select(series.c.study_fk).where(series.c.pk == row.series_fk)).scalar_one()
        conn.execute(update(studies).where(studies.c.pk == st_pk)
                     .values(size_bytes=studies.c.size_bytes - int(row.size) + int(size)))
        return str(row.blob_key)

    # ------------------------------------------------------------------ deleting

    def set_online(self, conn: Connection, pks: list[int], online: bool) -> None:
        """Mark instances as held in this node's online store or not (a tier move, a recall; inside a
        transaction).  Nothing else changes: the blob key stays, counts and sizes stay."""
        for chunk in chunks(pks, 500):
            conn.execute(update(instances).where(instances.c.pk.in_(chunk)).values(online=online))

    def delete_instances(self, conn: Connection, pks: list[int]) -> None:
        """Remove instance rows, keep counters right, drop emptied parents (inside a transaction)."""
        if not pks:
            return
        self.forget()  # emptied series/studies go: forget their keys
        touched_series: set[int] = set()
        for chunk in chunks(pks, 500):
            rows = conn.execute(select(instances.c.series_fk, instances.c.size)
                                .where(instances.c.pk.in_(chunk))).all()
            conn.execute(delete(instances).where(instances.c.pk.in_(chunk)))
            per_series: dict[int, tuple[int, int]] = {}
            for r in rows:
                n, b = per_series.get(r.series_fk, (0, 0))
                per_series[r.series_fk] = (n + 1, b + int(r.size))
            for se_pk, (n, b) in per_series.items():
                conn.execute(update(series).where(series.c.pk == se_pk)
                             .values(num_instances=series.c.num_instances - n))
                st_pk = conn.execute(select(series.c.study_fk).where(series.c.pk == se_pk)).scalar_one()
                conn.execute(update(studies).where(studies.c.pk == st_pk).values(
                    num_instances=studies.c.num_instances - n, size_bytes=studies.c.size_bytes - b,
                    updated_at=_now()))
                touched_series.add(se_pk)
        for se_pk in touched_series:
            row = conn.execute(select(series.c.num_instances, series.c.study_fk).where(series.c.pk == se_pk)).first()
            if row is None or row.num_instances > 0:
                continue
            conn.execute(delete(series).where(series.c.pk == se_pk))
            conn.execute(update(studies).where(studies.c.pk == row.study_fk)
                         .values(num_series=studies.c.num_series - 1))
            self.refresh_modalities(conn, row.study_fk)
            st = conn.execute(select(studies.c.num_series, studies.c.patient_fk)
                              .where(studies.c.pk == row.study_fk)).first()
            if st is not None and st.num_series <= 0:
                conn.execute(delete(studies).where(studies.c.pk == row.study_fk))


def _await_synced(batch: list[tuple[int, Prepared]]) -> None:
    """Wait for the pending fsyncs of ``batch``: durable before indexed; raises StorageFull."""
    for _, p in batch:
        if p.synced is not None:
            p.synced.result()


def _settle(p: Prepared) -> None:
    """Wait for ``p``'s pending fsync, whatever its outcome, before its temporary is removed."""
    if p.synced is not None:
        try:
            p.synced.result()
        except Exception:  # noqa: BLE001 - the failure is reported by whoever indexes it
            pass


def _read(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def new_study_row(patient_pk: int, s: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {**s, "patient_fk": patient_pk, "modalities": "", "num_series": 0, "num_instances": 0,
            "size_bytes": 0, "created_at": now, "updated_at": now}


def new_series_row(study_pk: int, s: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {**s, "study_fk": study_pk, "num_instances": 0, "created_at": now}
