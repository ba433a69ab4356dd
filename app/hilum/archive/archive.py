"""The archive: index + blob store behind one ingest call and one query call.

Every instance that enters Hilum — C-STORE, STOW-RS, import, retrieve, AI
results, saved annotations — goes through :meth:`Archive.ingest`
(../shared/DESIGN.md "One way in"): validate, write the blob atomically,
index it in one transaction, emit one event.  Every search goes through
:meth:`Archive.query`.

Thread-safe: many threads may ingest at once (the DICOM server does).  The
parse, checksum and blob write run in the calling thread; only the short
index transaction is serialised per process (SQLite has one writer anyway;
on PostgreSQL upserts use ON CONFLICT so several nodes can share a database).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydicom.dataset import Dataset
from sqlalchemy import Engine, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from hilum.archive import query as q
from hilum.archive.blobs import FileBlobStore, TempBlob, blob_checksum, file_checksum
from hilum.archive.db import make_engine, migrate
from hilum.archive.schema import instances, patients, series, studies
from hilum.dicom.attributes import IndexRecord, InvalidInstance, index_record, read_instance, to_part10
from hilum.errors import NotFound, StorageFull

log = logging.getLogger(__name__)

Status = Literal["stored", "duplicate", "replaced", "rejected"]


@dataclass(slots=True)
class IngestResult:
    """The outcome of one :meth:`Archive.ingest` call.

    ``code`` names a rejection's cause for protocol adapters: ``not-dicom``,
    ``truncated``, ``missing-uid``, ``sop-class-mismatch``, ``storage-full``,
    ``unreadable``.
    """

    status: Status
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_class_uid: str | None = None
    reason: str | None = None
    code: str | None = None
    source: str | None = None
    size: int = 0

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "duplicate", "replaced")


@dataclass(frozen=True, slots=True)
class Received:
    """A Part 10 file that arrived piece by piece and was written to ``blob`` as it came.

    ``data`` holds the same bytes, for validation and indexing; ``blob`` (from
    :meth:`Archive.open_temp`) is synced and renamed into place by
    :meth:`Archive.ingest`, or discarded if the instance is refused.
    """

    data: bytes | bytearray
    blob: TempBlob


@dataclass(frozen=True, slots=True)
class ArchiveEvent:
    """What subscribers hear: ``kind`` is ``stored``, ``replaced`` or ``deleted``."""

    kind: str
    level: str
    uid: str
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    origin: str = ""


@dataclass
class CheckReport:
    """What :meth:`Archive.check` found (and, with ``repair``, fixed)."""

    instances: int = 0
    blobs: int = 0
    missing: list[str] = field(default_factory=list)  # SOP UIDs indexed without a blob
    orphans: list[str] = field(default_factory=list)  # blob keys without an index row
    corrupt: list[str] = field(default_factory=list)  # SOP UIDs whose checksum differs
    temporaries: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.orphans or self.corrupt or self.temporaries)


def _now() -> datetime:
    return datetime.now(UTC)


# The ingest hot path's statements, built once (SQLAlchemy caches their compiled form).
_SELECT_INSTANCE = select(instances.c.pk, instances.c.blob_key).where(instances.c.sop_uid == bindparam("uid"))
_INSERT_INSTANCE = insert(instances)
_BUMP_SERIES = (update(series).where(series.c.pk == bindparam("spk"))
                .values(num_instances=series.c.num_instances + 1))
_BUMP_STUDY = (update(studies).where(studies.c.pk == bindparam("stpk"))
               .values(num_instances=studies.c.num_instances + 1,
                       size_bytes=studies.c.size_bytes + bindparam("size"), updated_at=bindparam("now")))
_BUMP_STUDY_NEW_SERIES = _BUMP_STUDY.values(num_series=studies.c.num_series + 1)
# Built once, values bound at execution: building a statement and its cache key costs
# SQLAlchemy more than SQLite takes to run it.
_PATIENT_BY_ID = select(patients.c.pk, patients.c.patient_name).where(
    patients.c.patient_id == bindparam("pid"), patients.c.issuer == bindparam("issuer"))
_STUDY_PK = select(studies.c.pk).where(studies.c.study_uid == bindparam("uid"))
_SERIES_PK = select(series.c.pk).where(series.c.series_uid == bindparam("uid"))
_UPDATE_PATIENT = update(patients).where(patients.c.pk == bindparam("ppk"))  # sets the columns it is given
_UPDATE_STUDY = update(studies).where(studies.c.pk == bindparam("stpk"))
_STUDY_MODALITIES = (select(series.c.study_fk, series.c.modality).distinct()
                     .where(series.c.study_fk.in_(bindparam("stpks", expanding=True)), series.c.modality != ""))
DEMOGRAPHICS = ("patient_name", "pn_a", "pn_i", "pn_p", "birth_date", "sex")


class _Compiled:
    """A statement compiled once for a dialect and run on the DB-API cursor.

    SQLAlchemy's execution machinery costs ~0.1 ms per statement, more than
    SQLite takes to run one of these; the ingest of one instance into a known
    series runs four.  Bind values go through the column types' processors
    (the DateTimes), as SQLAlchemy would pass them.
    """

    __slots__ = ("_defaults", "_names", "_procs", "sql")

    def __init__(self, stmt: Any, dialect: Any, column_keys: list[str] | None = None):
        compiled = stmt.compile(dialect=dialect, column_keys=column_keys)
        self.sql = compiled.string
        self._names = compiled.positiontup  # None for named parameter styles
        self._defaults = dict(compiled.params)
        self._procs = {name: proc for name, bind in compiled.binds.items()
                       if (proc := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None}

    def run(self, cursor: Any, params: Mapping[str, Any]) -> Any:
        values = {**self._defaults, **params}
        for name, proc in self._procs.items():
            if name in values:
                values[name] = proc(values[name])
        cursor.execute(self.sql, [values[n] for n in self._names] if self._names is not None else values)
        return cursor


class Archive:
    """A local DICOM archive in a data folder (or PostgreSQL + a blob folder)."""

    def __init__(self, data_dir: str | os.PathLike[str], *, database_url: str | None = None,
                 duplicate_policy: str = "ignore"):
        if duplicate_policy not in ("ignore", "overwrite"):
            raise ValueError("duplicate_policy must be 'ignore' or 'overwrite'")
        self.data_dir = Path(data_dir)
        self.duplicate_policy = duplicate_policy
        self.blobs = FileBlobStore(self.data_dir / "blobs")
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.blobs.ensure()
        except OSError as exc:
            raise StorageFull(f"cannot use data folder {self.data_dir}: {exc.strerror}") from exc
        self.database_url = database_url or f"sqlite:///{self.data_dir / 'index.sqlite'}"
        self.engine: Engine = make_engine(self.database_url)
        self.dialect = self.engine.dialect.name
        migrate(self.engine)
        self._write_lock = threading.Lock()
        # series UID -> (study pk, series pk) of rows known to exist; cleared on every delete.
        self._pk_cache: dict[str, tuple[int, int]] = {}
        self._hot: dict[Any, _Compiled] = {}  # see _index_known_series
        self._insert_ignore: dict[tuple[str, tuple[str, ...]], Any] = {}  # see insert_ignoring
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="blob-io")
        self._subscribers: list[Callable[[ArchiveEvent], None]] = []
        self._sub_lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Any) -> Archive:
        """Open the archive a :class:`hilum.config.Config` describes."""
        return cls(cfg.data_dir, database_url=cfg.database_url, duplicate_policy=cfg.duplicate_policy)

    def close(self) -> None:
        self._io.shutdown(wait=True)
        self.blobs.close()
        self.engine.dispose()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ events

    def subscribe(self, callback: Callable[[ArchiveEvent], None]) -> Callable[[], None]:
        """Call ``callback`` after each change (from the thread that made it).

        Returns a function that unsubscribes.  Callbacks must be quick; a
        failing callback is logged, never propagated into the ingest.
        """
        with self._sub_lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._sub_lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _emit(self, event: ArchiveEvent) -> None:
        with self._sub_lock:
            subs = list(self._subscribers)
        for cb in subs:
            try:
                cb(event)
            except Exception:  # noqa: BLE001 - a subscriber must not break ingest
                log.exception("archive event subscriber failed")

    # ------------------------------------------------------------------ ingest

    def ingest(self, source: bytes | bytearray | memoryview | str | os.PathLike[str] | Dataset | Received, *,
               origin: str = "import", source_aet: str = "",
               expected_sop_class: str | None = None) -> IngestResult:
        """Store one instance: the single way into the archive.

        ``source`` is a Part 10 file's bytes, a path to one, a dataset, or a
        :class:`Received` file already written to a temporary blob.
        Never raises for a bad instance or a full disk: the result says
        ``rejected`` with a ``code`` and a one-line ``reason``; nothing
        already stored is changed by a rejection.
        """
        label = str(source) if isinstance(source, (str, os.PathLike)) else None
        pending: Future[str] | None = None
        try:
            if isinstance(source, Received):
                # Written already: the file is parsed on an I/O thread while this one waits in
                # its fsync (which releases the GIL at once, where a thread started for the fsync
                # would queue for the GIL behind the parse).
                data = source.data
                parsing = self._io.submit(_read_record, data)
                pending = Future()
                try:
                    pending.set_result(source.blob.finish())
                except StorageFull as exc:
                    pending.set_exception(exc)
                ds, record = parsing.result()
            else:
                data = self._bytes_of(source)
                if data[128:132] == b"DICM":
                    # Write and fsync the blob on an I/O thread (the GIL is released)
                    # while this thread validates and indexes: the fsync overlaps the
                    # parsing instead of adding to it.  Discarded if the instance is
                    # rejected or a duplicate.
                    pending = self._io.submit(self.blobs.write_temp, data)
                ds, record = _read_record(data)
            sop_class = record.instance["sop_class_uid"]
            if expected_sop_class and sop_class != expected_sop_class:
                raise InvalidInstance(
                    "sop-class-mismatch",
                    f"SOP Class UID {sop_class} does not match the request's {expected_sop_class}",
                    record.sop_uid,
                )
            if pending is None:  # a bare dataset: store it as a Part 10 file
                data = to_part10(ds)
                pending = self._io.submit(self.blobs.write_temp, data)
            result = self._store(record, data, pending, origin=origin, source_aet=source_aet, label=label)
            pending = None  # _store owns the temporary now
            return result
        except InvalidInstance as exc:
            return IngestResult("rejected", sop_instance_uid=exc.sop_instance_uid, reason=str(exc),
                                code=exc.code, source=label)
        except StorageFull as exc:
            return IngestResult("rejected", reason=str(exc), code="storage-full", source=label)
        except OSError as exc:
            return IngestResult("rejected", reason=f"cannot read: {exc.strerror or exc}", code="unreadable",
                                source=label)
        finally:
            if pending is not None:
                self._discard_pending(pending)

    def open_temp(self, sop_uid: str | None = None) -> TempBlob:
        """A temporary blob to write an arriving instance into, for ``ingest(Received(...))``.

        ``sop_uid``, the instance it announces itself as (a C-STORE request's
        Affected SOP Instance UID), lets the blob's folder be made meanwhile.
        """
        if sop_uid:
            self._io.submit(self.blobs.prepare, self.blobs.key_for(sop_uid))
        return self.blobs.open_temp()

    def _discard_pending(self, pending: Future[str]) -> None:
        try:
            temp = pending.result()
        except (StorageFull, OSError):
            return
        self.blobs.discard_temp(temp)

    @staticmethod
    def _bytes_of(source: Any) -> bytes:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return bytes(source)
        if isinstance(source, Dataset):
            return to_part10(source)
        return Path(source).read_bytes()

    def ingest_many(self, sources: Iterable[Any], *, origin: str = "import", workers: int | None = None,
                    progress: Callable[[IngestResult], None] | None = None,
                    cancel: threading.Event | None = None) -> list[IngestResult]:
        """Ingest many sources: the same checks, blobs, rows and events as :meth:`ingest`, pipelined.

        Workers (processes for large sets, so parsing uses every core; threads
        otherwise) validate, checksum and write the blobs while the calling
        thread indexes them in batched transactions (see
        :mod:`hilum.archive.batch`).  ``sources`` is consumed lazily, a
        bounded number at a time.  Results come back in the order of
        ``sources``; ``progress`` is called for each as it finishes; setting
        ``cancel`` stops before the next one (those not started come back
        ``rejected`` with code ``cancelled``).
        """
        from hilum.archive.batch import run_ingest_many

        return run_ingest_many(self, sources, origin=origin, workers=workers, progress=progress, cancel=cancel)

    def _store(self, record: IndexRecord, data: bytes, pending: Future[str], *, origin: str, source_aet: str,
               label: str | None) -> IngestResult:
        sop_uid = record.sop_uid
        base = dict(sop_instance_uid=sop_uid, study_instance_uid=record.study_uid,
                    series_instance_uid=record.series_uid, sop_class_uid=record.instance["sop_class_uid"],
                    source=label, size=len(data))
        checksum = blob_checksum(data)
        key = self.blobs.key_for(sop_uid)
        row = {**record.instance, "blob_key": key, "size": len(data), "checksum": checksum,
               "source_aet": source_aet[:16], "origin": origin[:16]}
        temp = pending.result()  # raises StorageFull when the write failed
        try:
            with self._write_lock:
                outcome = self._index_known_series(record, row, temp, key)
            if outcome == "duplicate":
                return IngestResult("duplicate", **base)
            existing = None
            if outcome is None:  # a new series, an overwrite, a stale cache: the general way
                for attempt in (1, 2):
                    try:
                        with self._write_lock, self.engine.begin() as conn:
                            existing = conn.execute(_SELECT_INSTANCE, {"uid": sop_uid}).first()
                            if existing is not None and self.duplicate_policy == "ignore":
                                self.blobs.discard_temp(temp)
                                return IngestResult("duplicate", **base)
                            if existing is not None:
                                self._delete_instances(conn, [existing.pk])
                            self._index_row(conn, record, row)
                            self.blobs.commit_temp(temp, key)
                        break
                    except IntegrityError:
                        # A cached study/series row was deleted by another node
                        # sharing the database: look everything up again, once.
                        self._pk_cache.clear()
                        if attempt == 2:
                            raise
        except BaseException:
            self.blobs.discard_temp(temp)
            raise
        status: Status = "replaced" if existing is not None else "stored"
        self._emit(ArchiveEvent(status, "IMAGE", sop_uid, record.study_uid, record.series_uid,
                                record.patient["patient_id"], origin))
        return IngestResult(status, **base)

    def _hot_statement(self, stmt: Any, column_keys: tuple[str, ...] | None = None) -> _Compiled:
        key = (id(stmt), column_keys)
        hot = self._hot.get(key)
        if hot is None:
            hot = self._hot[key] = _Compiled(stmt, self.engine.dialect, list(column_keys) if column_keys else None)
        return hot

    def _index_known_series(self, record: IndexRecord, row: dict[str, Any], temp: str, key: str) -> str | None:
        """The index transaction of an instance of a series already indexed (the common case),
        on the DB-API connection: "stored", "duplicate", or None to go the general way (a new
        series, a duplicate to overwrite, a row that changed under us).  Call with _write_lock."""
        cached = self._pk_cache.get(record.series_uid)
        if cached is None:
            return None
        study_pk, series_pk = cached
        now = _now()
        params = {**row, "series_fk": series_pk, "received_at": now}
        insert_one = self._hot_statement(_INSERT_INSTANCE, tuple(params))
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            sqlite = self.dialect == "sqlite"
            try:
                if sqlite:
                    cur.execute("BEGIN")  # pysqlite runs in autocommit mode here (db.py)
                existing = self._hot_statement(_SELECT_INSTANCE).run(cur, {"uid": record.sop_uid}).fetchone()
                if existing is not None:
                    raw.rollback()
                    if self.duplicate_policy == "ignore":
                        self.blobs.discard_temp(temp)
                        return "duplicate"
                    return None
                insert_one.run(cur, params)
                self._hot_statement(_BUMP_SERIES).run(cur, {"spk": series_pk})
                if cur.rowcount != 1:
                    raise LookupError("series row gone")
                self._hot_statement(_BUMP_STUDY).run(cur, {"stpk": study_pk, "size": row["size"], "now": now})
                if cur.rowcount != 1:
                    raise LookupError("study row gone")
                self.blobs.commit_temp(temp, key)
                if sqlite:
                    cur.execute("COMMIT")
                else:
                    raw.commit()
            except (LookupError, self.engine.dialect.dbapi.IntegrityError):
                # The cached study/series row was deleted (by another node sharing the
                # database): the general way looks everything up again.
                raw.rollback()
                self._pk_cache.pop(record.series_uid, None)
                return None
            except BaseException:
                raw.rollback()
                raise
            finally:
                cur.close()
        finally:
            raw.close()
        return "stored"

    def _index_row(self, conn: Connection, record: IndexRecord, row: dict[str, Any]) -> None:
        """Insert one instance row and keep its series/study counters right (inside a transaction)."""
        cached = self._pk_cache.get(record.series_uid)
        if cached is None:
            patient_pk = self._upsert_patient(conn, record.patient)
            study_pk = self._upsert_study(conn, patient_pk, record.study)
            series_pk, new_series = self._upsert_series(conn, study_pk, record.series)
        else:
            study_pk, series_pk = cached
            new_series = False
        now = _now()
        conn.execute(_INSERT_INSTANCE, {**row, "series_fk": series_pk, "received_at": now})
        conn.execute(_BUMP_SERIES, {"spk": series_pk})
        conn.execute(_BUMP_STUDY_NEW_SERIES if new_series else _BUMP_STUDY,
                     {"stpk": study_pk, "size": row["size"], "now": now})
        if new_series:
            self._refresh_modalities(conn, study_pk)
        if len(self._pk_cache) > 4096:
            self._pk_cache.clear()
        self._pk_cache[record.series_uid] = (study_pk, series_pk)

    def insert_ignoring(self, table: Any, returning: tuple[str, ...] = ()) -> Any:
        """INSERT INTO ``table`` that skips rows whose unique key exists, values bound at execution;
        ``returning`` names columns of the rows it did insert (for many rows too)."""
        stmt = self._insert_ignore.get((table.name, returning))
        if stmt is None:
            ins = pg_insert(table) if self.dialect == "postgresql" else sqlite_insert(table)
            stmt = ins.on_conflict_do_nothing()
            if returning:
                stmt = stmt.returning(*[table.c[name] for name in returning])
            self._insert_ignore[(table.name, returning)] = stmt
        return stmt

    @staticmethod
    def new_study_row(patient_pk: int, s: dict[str, Any], now: datetime) -> dict[str, Any]:
        return {**s, "patient_fk": patient_pk, "modalities": "", "num_series": 0, "num_instances": 0,
                "size_bytes": 0, "created_at": now, "updated_at": now}

    @staticmethod
    def new_series_row(study_pk: int, s: dict[str, Any], now: datetime) -> dict[str, Any]:
        return {**s, "study_fk": study_pk, "num_instances": 0, "created_at": now}

    def _upsert_patient(self, conn: Connection, p: dict[str, Any]) -> int:
        key = {"pid": p["patient_id"], "issuer": p["issuer"]}
        row = conn.execute(_PATIENT_BY_ID, key).first()
        if row is not None:
            # Demographics follow the newest instance where the old record was empty.
            if not row.patient_name and p["patient_name"]:
                conn.execute(_UPDATE_PATIENT, {"ppk": row.pk, **{k: p[k] for k in DEMOGRAPHICS}})
            return int(row.pk)
        conn.execute(self.insert_ignoring(patients), {**p, "created_at": _now()})
        return int(conn.execute(_PATIENT_BY_ID, key).scalar_one())

    def _upsert_study(self, conn: Connection, patient_pk: int, s: dict[str, Any]) -> int:
        pk = conn.execute(_STUDY_PK, {"uid": s["study_uid"]}).scalar()
        if pk is not None:
            return int(pk)
        conn.execute(self.insert_ignoring(studies), self.new_study_row(patient_pk, s, _now()))
        return int(conn.execute(_STUDY_PK, {"uid": s["study_uid"]}).scalar_one())

    def _upsert_series(self, conn: Connection, study_pk: int, s: dict[str, Any]) -> tuple[int, bool]:
        pk = conn.execute(_SERIES_PK, {"uid": s["series_uid"]}).scalar()
        if pk is not None:
            return int(pk), False
        res = conn.execute(self.insert_ignoring(series), self.new_series_row(study_pk, s, _now()))
        pk = conn.execute(_SERIES_PK, {"uid": s["series_uid"]}).scalar_one()
        return int(pk), bool(res.rowcount)

    @staticmethod
    def _refresh_modalities(conn: Connection, *study_pks: int) -> None:
        """Set the studies' ModalitiesInStudy from their series (sorted, ``\\``-joined)."""
        found: dict[int, list[str]] = {pk: [] for pk in study_pks}
        for chunk in _chunks(list(found), 500):
            for st_pk, modality in conn.execute(_STUDY_MODALITIES, {"stpks": chunk}):
                found[st_pk].append(modality)
        if found:
            conn.execute(_UPDATE_STUDY, [{"stpk": pk, "modalities": "\\".join(sorted(mods))}
                                         for pk, mods in found.items()])

    # ------------------------------------------------------------------ query

    def query(self, level: str, identifier: Mapping[str, Any] | None = None, *, limit: int | None = None,
              offset: int = 0, order_by: list[str] | None = None) -> list[dict[str, Any]]:
        """Find patients, studies, series or instances (PS3.4 C.2.2.2 matching).

        ``identifier`` maps DICOM keywords to query values in DICOM string
        form (``""`` = universal, ``*``/``?`` wildcards, ``A-B`` ranges,
        ``uid1\\uid2`` lists).  Each result is a dict keyed by keyword with
        every attribute of the level and the levels above, plus computed
        attributes (``NumberOfStudyRelatedInstances``, ``ModalitiesInStudy``...).
        Raises ``ValueError`` on malformed values.
        """
        with self.engine.connect() as conn:
            return q.run_query(conn, level, identifier or {}, limit=limit, offset=offset, order_by=order_by)

    def count(self, level: str, identifier: Mapping[str, Any] | None = None) -> int:
        with self.engine.connect() as conn:
            return q.count_query(conn, level, identifier or {})

    def instances(self, *, study_uid: str | None = None, series_uid: str | None = None) -> list[dict[str, Any]]:
        """Instance rows (with ``path``) of a study or series, ordered by instance number."""
        ident: dict[str, Any] = {}
        if study_uid:
            ident["StudyInstanceUID"] = study_uid
        if series_uid:
            ident["SeriesInstanceUID"] = series_uid
        rows = self.query("IMAGE", ident)
        for r in rows:
            r["path"] = self.blobs.path(r["_blob_key"])
        return rows

    def path(self, sop_uid: str) -> Path:
        """Where an instance's file is (raises :class:`NotFound`)."""
        with self.engine.connect() as conn:
            key = conn.execute(select(instances.c.blob_key).where(instances.c.sop_uid == sop_uid)).scalar()
        if key is None:
            raise NotFound("instance", sop_uid)
        return self.blobs.path(key)

    def read(self, sop_uid: str) -> bytes:
        return self.path(sop_uid).read_bytes()

    def read_outgoing(self, row: Mapping[str, Any]) -> bytes:
        """The Part 10 bytes of an instance as it leaves the archive (C-MOVE, C-GET, WADO, export).

        ``row`` is an IMAGE-level :meth:`query` row (``_blob_key``, ``SOPInstanceUID``,
        ``StudyInstanceUID`` and the patient's attributes as the registry holds them now).
        Every path that hands a stored instance to someone else reads it here, so that what
        leaves carries today's demographics (IHE PIR): the stored bytes, with the patient
        module corrected where HL7 ADT changed the patient after the instance was stored.
        UIDs are never touched.
        """
        return self.blobs.read(row["_blob_key"])

    def stats(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                "patients": int(conn.execute(select(func.count()).select_from(patients)).scalar_one()),
                "studies": int(conn.execute(select(func.count()).select_from(studies)).scalar_one()),
                "series": int(conn.execute(select(func.count()).select_from(series)).scalar_one()),
                "instances": int(conn.execute(select(func.count()).select_from(instances)).scalar_one()),
                "bytes": int(conn.execute(select(func.coalesce(func.sum(instances.c.size), 0))).scalar_one()),
            }

    # ------------------------------------------------------------------ delete

    def delete(self, level: str, uid: str) -> int:
        """Delete a patient (by PatientID), study, series or instance: rows and blobs.

        Returns how many instances went.  Raises :class:`NotFound`.
        """
        level = level.upper()
        with self._write_lock, self.engine.begin() as conn:
            sel = select(instances.c.pk, instances.c.blob_key).select_from(
                instances.join(series, instances.c.series_fk == series.c.pk)
                .join(studies, series.c.study_fk == studies.c.pk)
                .join(patients, studies.c.patient_fk == patients.c.pk))
            if level == "PATIENT":
                sel = sel.where(patients.c.patient_id == uid)
                found = conn.execute(select(patients.c.pk).where(patients.c.patient_id == uid)).first()
            elif level == "STUDY":
                sel = sel.where(studies.c.study_uid == uid)
                found = conn.execute(select(studies.c.pk).where(studies.c.study_uid == uid)).first()
            elif level == "SERIES":
                sel = sel.where(series.c.series_uid == uid)
                found = conn.execute(select(series.c.pk).where(series.c.series_uid == uid)).first()
            elif level in ("IMAGE", "INSTANCE"):
                sel = sel.where(instances.c.sop_uid == uid)
                found = conn.execute(select(instances.c.pk).where(instances.c.sop_uid == uid)).first()
            else:
                raise ValueError(f"cannot delete at level {level!r}")
            if found is None:
                raise NotFound(level.lower(), uid)
            rows = conn.execute(sel).all()
            self._delete_instances(conn, [r.pk for r in rows])
            if level == "PATIENT":
                conn.execute(delete(patients).where(patients.c.patient_id == uid))
        for r in rows:
            self.blobs.delete(r.blob_key)
        self._emit(ArchiveEvent("deleted", level, uid))
        return len(rows)

    def _delete_instances(self, conn: Connection, pks: list[int]) -> None:
        """Remove instance rows, keep counters right, drop emptied parents."""
        if not pks:
            return
        self._pk_cache.clear()  # emptied series/studies go: forget their keys
        touched_series: set[int] = set()
        for chunk in _chunks(pks, 500):
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
            self._refresh_modalities(conn, row.study_fk)
            st = conn.execute(select(studies.c.num_series, studies.c.patient_fk)
                              .where(studies.c.pk == row.study_fk)).first()
            if st is not None and st.num_series <= 0:
                conn.execute(delete(studies).where(studies.c.pk == row.study_fk))

    # ------------------------------------------------------------------ check

    def check(self, *, repair: bool = False, verify_checksums: bool = True,
              progress: Callable[[int, int], None] | None = None) -> CheckReport:
        """Verify index ⇄ blobs: missing files, orphan files, checksums, temporaries.

        With ``repair``: orphan blobs are indexed again through :meth:`ingest`
        (they are kept aside in ``quarantine/`` when unreadable), rows of
        missing blobs are removed, corrupt blobs are moved to ``quarantine/``
        and their rows removed, stale temporaries deleted.
        """
        report = CheckReport()
        with self.engine.connect() as conn:
            rows = conn.execute(select(instances.c.pk, instances.c.sop_uid, instances.c.blob_key,
                                       instances.c.checksum)).all()
        report.instances = len(rows)
        indexed = {r.blob_key for r in rows}
        on_disk = set(self.blobs.keys())
        report.blobs = len(on_disk)
        report.orphans = sorted(on_disk - indexed)
        report.temporaries = [str(p) for p in self.blobs.temporaries()]
        bad_pks: list[int] = []
        quarantine: list[str] = []
        for i, r in enumerate(rows):
            if r.blob_key not in on_disk:
                report.missing.append(r.sop_uid)
                bad_pks.append(r.pk)
            elif verify_checksums:
                if not file_checksum(self.blobs.path(r.blob_key), r.checksum):
                    report.corrupt.append(r.sop_uid)
                    bad_pks.append(r.pk)
                    quarantine.append(r.blob_key)
            if progress is not None:
                progress(i + 1, len(rows))
        if not repair:
            return report
        qdir = self.data_dir / "quarantine"
        if bad_pks:
            with self._write_lock, self.engine.begin() as conn:
                self._delete_instances(conn, bad_pks)
            report.repaired += [f"removed index row of {u}" for u in report.missing + report.corrupt]
        for key in quarantine:
            _move_aside(self.blobs.path(key), qdir)
            report.repaired.append(f"quarantined corrupt blob {key}")
        for key in report.orphans:
            path = self.blobs.path(key)
            data = path.read_bytes()
            tmp_copy = path.with_suffix(".orphan")
            os.replace(path, tmp_copy)
            res = self.ingest(data, origin="repair")
            if res.ok:
                tmp_copy.unlink()
                report.repaired.append(f"re-indexed orphan {key}")
            else:
                _move_aside(tmp_copy, qdir)
                report.repaired.append(f"quarantined unreadable orphan {key}: {res.reason}")
        for t in report.temporaries:
            Path(t).unlink(missing_ok=True)
            report.repaired.append(f"deleted temporary {t}")
        return report


def _read_record(data: bytes | bytearray) -> tuple[Dataset, IndexRecord]:
    ds = read_instance(data)
    return ds, index_record(ds)


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _move_aside(path: Path, qdir: Path) -> None:
    qdir.mkdir(parents=True, exist_ok=True)
    if path.exists():
        os.replace(path, qdir / path.name)
