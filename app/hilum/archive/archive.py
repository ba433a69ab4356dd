"""The archive: index + blob store behind one ingest call and one query call.

Every instance that enters Hilum — C-STORE, STOW-RS, import, retrieve, AI
results, saved annotations — goes through :meth:`Archive.ingest` (or
:meth:`Archive.ingest_many` for many, the same steps pipelined)
(../shared/DESIGN.md "One way in"): validate, write the blob atomically,
index it in one transaction, emit one event.  Every search goes through
:meth:`Archive.query`; every instance that leaves goes through
:meth:`Archive.read_outgoing`.

Who does what inside ``archive/``: THE index writer is
:mod:`hilum.archive.index` (a single ingest is a batch of one), THE patient
registry :mod:`hilum.archive.patients`, THE schema :mod:`hilum.archive.schema`,
the bulk pipeline :mod:`hilum.archive.batch`, the query engine
:mod:`hilum.archive.query`, orders/MPPS/worklist :mod:`hilum.archive.orders`.

Thread-safe: many threads may ingest at once (the DICOM server does).  The
parse, checksum and blob write run in the calling thread; only the short
index transaction is serialised per process (SQLite has one writer anyway;
on PostgreSQL upserts use ON CONFLICT so several nodes can share a database).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Engine, bindparam, func, select
from sqlalchemy.engine import Connection

from hilum.archive import outgoing, storage
from hilum.archive import query as q
from hilum.archive import tiers as tiers_mod
from hilum.archive.audit import AuditLog, AuditSettings, os_user
from hilum.archive.batch import run_ingest_many
from hilum.archive.blobs import FileBlobStore, TempBlob, blob_checksum, file_checksum
from hilum.archive.db import make_engine, migrate
from hilum.archive.index import IndexWriter, Prepared
from hilum.archive.model import ArchiveEvent, EventBus, IngestResult, Status
from hilum.archive.patients import PatientRegistry
from hilum.archive.policy import Policies, load_policies
from hilum.archive.schema import blob_copies, instances, patients, prefetched_studies, series, studies
from hilum.archive.sqlfast import resolve_mode
from hilum.archive.upgrade import upgrade_config
from hilum.dicom.attributes import (
    IndexRecord,
    InvalidInstance,
    index_record,
    read_instance,
    received_as_part10,
    show_value,
    to_part10,
)
from hilum.errors import NotFound, StorageFull

log = logging.getLogger(__name__)

__all__ = ["Archive", "ArchiveEvent", "CheckReport", "IngestResult", "Received", "Status"]


@dataclass(frozen=True, slots=True)
class Received:
    """A Part 10 file that arrived piece by piece and was written to ``blob`` as it came.

    ``data`` holds the same bytes, for validation and indexing; ``blob`` (from
    :meth:`Archive.open_temp`) is synced and renamed into place by
    :meth:`Archive.ingest`, or discarded if the instance is refused.
    """

    data: bytes | bytearray
    blob: TempBlob


@dataclass
class CheckReport:
    """What :meth:`Archive.check` found (and, with ``repair``, fixed).

    ``unchecked`` lists what could not be checked or repaired and was left
    as it is — ``"<SOP UID or blob key>: <why>"``: an I/O error, a
    permission, a full disk while repairing — as opposed to ``corrupt`` (a
    blob whose checksum differs) and a quarantined orphan (a file that is
    not a valid instance).
    """

    instances: int = 0
    blobs: int = 0
    missing: list[str] = field(default_factory=list)  # SOP UIDs indexed without a blob
    orphans: list[str] = field(default_factory=list)  # blob keys without an index row
    corrupt: list[str] = field(default_factory=list)  # SOP UIDs whose checksum differs
    temporaries: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    offline: int = 0  # instances not in the online store here but held on a tier (recalled when read) or purged

    @property
    def clean(self) -> bool:
        return not (self.missing or self.orphans or self.corrupt or self.temporaries or self.unchecked)


class Archive:
    """A local DICOM archive in a data folder (or PostgreSQL + a blob folder)."""

    folds_names = True
    """:meth:`query` and :meth:`count` take ``fold_names`` (a remote source's view does not)."""

    index_while_syncing = True
    """A lone received instance is indexed while its blob syncs (:meth:`_ingest_alone`); False
    (tests, benchmarks): always the serial order (sync, then index)."""

    ALONE_AFTER = 1.0
    """Seconds since two received instances were last in flight at once before one is "alone":
    senders on several associations take turns (one's instance in flight while another's
    response is on the wire), and one of them holding the writer through its fsync made the
    others wait (4 associations: 15-20% fewer instances/s)."""

    def __init__(self, data_dir: str | os.PathLike[str], *, database_url: str | None = None,
                 duplicate_policy: str = "ignore", index_writer: str | None = None):
        """``index_writer``: ``fast`` or ``sqlalchemy`` (see :mod:`hilum.archive.sqlfast`); None
        takes ``$HILUM_INDEX_WRITER``, else ``fast``."""
        if duplicate_policy not in ("ignore", "overwrite"):
            raise ValueError("duplicate_policy must be 'ignore' or 'overwrite'")
        mode = resolve_mode(index_writer)
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
        self.upgraded = migrate(self.engine, data_dir=self.data_dir)
        """The upgrade (backup, then migration) this open made of an older index (None: none was needed)."""
        self.events = EventBus()
        self.writer = IndexWriter(self.engine, self.blobs, duplicate_policy=duplicate_policy, mode=mode,
                                  emit=self.events.publish)
        self._io = ThreadPoolExecutor(max_workers=4, thread_name_prefix="blob-io")
        self._receiving = 0  # ingests of Received files in flight (see _ingest_alone)
        self._together_at = -float("inf")  # when two were last in flight at once
        self._receiving_lock = threading.Lock()
        self.policies = Policies()
        self.tiers = tiers_mod.Tiers(self)
        self.storage_configured = False  # configure_storage called (from_config does)
        self.audit = AuditLog(self.engine, self.transaction)
        """The audit trail (:mod:`hilum.archive.audit`): ``archive.audit("Query", user=...)`` records an event."""
        self.audit_settings = AuditSettings()

    @classmethod
    def from_config(cls, cfg: Any) -> Archive:
        """Open the archive a :class:`hilum.config.Config` describes, with its storage policies and tiers.

        The policies of ``hilum.toml`` are read first: a rule with a typo raises
        :class:`~hilum.errors.ConfigError` (its line and why) before anything is opened.
        """
        policies = load_policies(cfg)
        archive = cls(cfg.data_dir, database_url=cfg.database_url, duplicate_policy=cfg.duplicate_policy,
                      index_writer=getattr(cfg, "index_writer", None))
        archive.configure_storage(policies)
        archive.configure_audit(AuditSettings.from_config(cfg))
        upgrade_config(cfg, archive.upgraded)  # an older hilum.toml stamped with this format (hilum.archive.upgrade)
        return archive

    def configure_audit(self, settings: AuditSettings) -> None:
        """Use the ``[audit]`` settings: on or off, the AuditSourceID of the messages."""
        self.audit_settings = settings
        self.audit.enabled = settings.enabled
        self.audit.source_id = settings.source_id or "HILUM"

    def configure_storage(self, policies: Policies) -> None:
        """Use ``policies`` (:func:`hilum.archive.policy.parse_policies`): sets :attr:`policies` and
        :attr:`tiers` (the ``[tiers.*]`` of the rules; none: an empty :class:`~hilum.archive.tiers.Tiers`)."""
        self.policies = policies
        self.storage_configured = True
        rules = policies.get("tiers")
        self.tiers = tiers_mod.Tiers(self, rules if isinstance(rules, tiers_mod.TierRules) else None)

    @property
    def index_writer(self) -> str:
        """The index writer's mode: ``fast`` or ``sqlalchemy``."""
        return self.writer.mode

    @property
    def patients(self) -> PatientRegistry:
        """THE patient registry of this archive's index (see :mod:`hilum.archive.patients`)."""
        return self.writer.patients

    def patient_aliases(self, patient_id: str, issuer: str = "") -> list[tuple[str, str]]:
        """``(patient_id, issuer)`` and every ID HL7 ADT merged with it, itself first
        (:meth:`hilum.archive.patients.PatientRegistry.aliases`)."""
        with self.engine.connect() as conn:
            return self.patients.aliases(conn, patient_id, issuer)

    def close(self) -> None:
        self.audit.close()
        self._io.shutdown(wait=True)
        self.blobs.close()
        self.engine.dispose()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction on the index database, serialised with ingest (SQLite has one writer).

        For the other writers of this database (orders, MPPS, HL7 ADT through
        the patient registry): everything in the block commits, or nothing.
        """
        with self.writer.transaction() as conn:
            yield conn

    # ------------------------------------------------------------------ events

    def subscribe(self, callback: Callable[[ArchiveEvent], None]) -> Callable[[], None]:
        """Call ``callback`` after each change (from the thread that made it).

        Returns a function that unsubscribes.  Callbacks must be quick; a
        failing callback is logged, never propagated into the ingest.
        """
        return self.events.subscribe(ArchiveEvent, callback)

    def _emit(self, event: ArchiveEvent) -> None:
        self.events.publish(event)

    # ------------------------------------------------------------------ ingest

    def ingest(self, source: bytes | bytearray | memoryview | str | os.PathLike[str] | Dataset | Received, *,
               origin: str = "import", source_aet: str = "",
               expected_sop_class: str | None = None, expected_sop_instance: str | None = None) -> IngestResult:
        """Store one instance: the single way into the archive.

        ``source`` is a Part 10 file's bytes, a path to one, a dataset, or a
        :class:`Received` file already written to a temporary blob.
        Never raises for a bad instance, a duplicate or a full disk (blob
        store or index): the result says ``rejected`` with a ``code`` and a
        one-line ``reason`` (``storage-full`` for a full disk, see
        :class:`IngestResult`); nothing already stored is changed by a
        rejection, and nothing of it is left behind.

        ``expected_sop_class`` and ``expected_sop_instance`` are what a
        request said it carries (a C-STORE-RQ's Affected SOP Class and
        Instance UIDs, PS3.7 9.3.1.1): a data set that is another instance or
        class is refused (``uid-mismatch``, ``sop-class-mismatch``), as it
        would be stored as something the sender never asked to store.
        """
        label = str(source) if isinstance(source, (str, os.PathLike)) else None
        if isinstance(source, Received) and self.index_while_syncing:
            with self._receiving_lock:
                self._receiving += 1
                now = time.monotonic()
                if self._receiving > 1:
                    self._together_at = now
                alone = self._receiving == 1 and now - self._together_at > self.ALONE_AFTER
            try:
                if alone:
                    return self._ingest_alone(source, origin, source_aet, expected_sop_class,
                                              expected_sop_instance)
            finally:
                with self._receiving_lock:
                    self._receiving -= 1
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
            _expected(record, expected_sop_class, expected_sop_instance)
            if pending is None:  # a bare dataset: store it as a Part 10 file
                data = received_as_part10(ds)
                pending = self._io.submit(self.blobs.write_temp, data)
            checksum = blob_checksum(bytes(data) if isinstance(data, bytearray) else data)
            temp = pending.result()  # raises StorageFull when the write failed
            pending = None  # the writer owns the temporary now: it renames or removes it
            prepared = Prepared(record, temp, checksum, len(data), label)
            return self.writer.write([(0, prepared)], origin=origin, source_aet=source_aet)[0][1]
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

    def _ingest_alone(self, source: Received, origin: str, source_aet: str, expected_sop_class: str | None,
                      expected_sop_instance: str | None) -> IngestResult:
        """:meth:`ingest` of a :class:`Received` file while no other is in flight: the fsync of its
        blob (in this thread) overlaps with everything else, index statements included.

        One C-STORE association is a sender waiting for each response before it
        sends the next instance, so what the node does between the last byte
        in and the response out is the rate.  The fsync is most of it (about
        1 ms for a 512x512 CT on this machine, more than DCMTK ``storescp``'s
        whole time per instance); here parsing, checksumming and the index
        statements run on an I/O thread meanwhile, and only the renaming of the
        blob into place and the commit wait for the fsync
        (:meth:`IndexWriter.write` with ``sync_inside``).  With several
        ingests in flight the writer must not be held through an fsync, and
        :meth:`ingest`'s own order applies.
        """
        synced: Future[str] = Future()
        job = self._io.submit(self._index_received, source, synced, origin, source_aet, expected_sop_class,
                              expected_sop_instance)
        try:
            synced.set_result(source.blob.finish())
        except StorageFull as exc:
            synced.set_exception(exc)
        return job.result()

    def _index_received(self, source: Received, synced: Future[str], origin: str, source_aet: str,
                        expected_sop_class: str | None, expected_sop_instance: str | None) -> IngestResult:
        data = source.data
        try:
            _ds, record = _read_record(data)
            _expected(record, expected_sop_class, expected_sop_instance)
            checksum = blob_checksum(data)  # xxhash reads the bytearray itself: no copy
        except InvalidInstance as exc:
            self._discard_pending(synced)
            return IngestResult("rejected", sop_instance_uid=exc.sop_instance_uid, reason=str(exc), code=exc.code)
        except BaseException:
            self._discard_pending(synced)
            raise
        prepared = Prepared(record, source.blob.name, checksum, len(data), None, synced=synced)
        return self.writer.write([(0, prepared)], origin=origin, source_aet=source_aet, sync_inside=True)[0][1]

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
        return run_ingest_many(self.writer, self.database_url, sources, origin=origin, workers=workers,
                               progress=progress, cancel=cancel)

    # ------------------------------------------------------------------ query

    def query(self, level: str, identifier: Mapping[str, Any] | None = None, *, limit: int | None = None,
              offset: int = 0, order_by: list[str] | None = None, fold_names: bool = False) -> list[dict[str, Any]]:
        """Find patients, studies, series or instances (PS3.4 C.2.2.2 matching).

        ``identifier`` maps DICOM keywords to query values in DICOM string
        form (``""`` = universal, ``*``/``?`` wildcards, ``A-B`` ranges,
        ``uid1\\uid2`` lists).  Each result is a dict keyed by keyword with
        every attribute of the level and the levels above, plus computed
        attributes (``NumberOfStudyRelatedInstances``, ``ModalitiesInStudy``...).
        ``fold_names``: a PatientName also matches as people type names
        (``muller`` finds Müller; :func:`hilum.archive.query.run_query`), for
        the study browser and ``hilum find --local``, never for the wire.
        Raises ``ValueError`` on malformed values.
        """
        with self.engine.connect() as conn:
            return q.run_query(conn, level, identifier or {}, limit=limit, offset=offset, order_by=order_by,
                               fold_names=fold_names)

    def count(self, level: str, identifier: Mapping[str, Any] | None = None, *, fold_names: bool = False) -> int:
        with self.engine.connect() as conn:
            return q.count_query(conn, level, identifier or {}, fold_names=fold_names)

    def instances(self, *, study_uid: str | None = None, series_uid: str | None = None) -> list[dict[str, Any]]:
        """Instance rows (with ``path``) of a study or series, ordered by instance number."""
        ident: dict[str, Any] = {}
        if study_uid:
            ident["StudyInstanceUID"] = study_uid
        if series_uid:
            ident["SeriesInstanceUID"] = series_uid
        rows = self.query("IMAGE", ident)
        self.ensure_online(rows)
        for r in rows:
            r["path"] = self.blobs.path(r["_blob_key"])
        if study_uid and rows:
            storage.touch_study(self, study_uid)
        return rows

    def ensure_online(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Make sure the files of IMAGE-level query rows (``_blob_key``, ``SOPInstanceUID``) are in the online
        store: those that are not (moved to a tier, another node's in a scale-out) are brought back, verified
        (:meth:`hilum.archive.tiers.Tiers.bring_online`).  Raises :class:`~hilum.archive.tiers.TierError` (a
        :class:`StorageFull` and an :class:`OSError`) when some cannot be."""
        if not self.tiers:
            return  # nothing to bring anything back from: a missing file is missing (hilum check says so)
        missing = [r for r in rows if not self.blobs.exists(str(r["_blob_key"]))]
        if missing:
            self.tiers.bring_online(missing)

    def path(self, sop_uid: str) -> Path:
        """Where an instance's file is, brought back online first if it is not (raises :class:`NotFound`,
        :class:`~hilum.archive.tiers.TierError`)."""
        with self.engine.connect() as conn:
            key = conn.execute(select(instances.c.blob_key).where(instances.c.sop_uid == sop_uid)).scalar()
        if key is None:
            raise NotFound("instance", sop_uid)
        self.ensure_online([{"_blob_key": key, "SOPInstanceUID": sop_uid}])
        return self.blobs.path(key)

    def read(self, sop_uid: str) -> bytes:
        """The stored bytes of an instance, as received (for what stays inside; see :meth:`read_outgoing`)."""
        return self.path(sop_uid).read_bytes()

    def read_outgoing(self, row: Mapping[str, Any]) -> bytes:
        """The Part 10 bytes of an instance as it leaves the archive (C-MOVE, C-GET, WADO, export).

        ``row`` is an IMAGE-level :meth:`query` row (``_blob_key``, ``SOPInstanceUID``,
        and ``_stored_rev``/``_patient_rev``, which the query engine adds).  Every path that
        hands a stored instance to someone else reads it here, so that what leaves carries
        today's demographics (IHE RAD TF-2 RAD-12, Patient Information Reconciliation): when
        HL7 ADT changed or merged the patient after the file was stored, its patient module
        (PatientName, PatientID, IssuerOfPatientID, PatientBirthDate, PatientSex) is set to
        the registry's current values (:mod:`hilum.archive.outgoing`).  Cheap when nothing
        changed: the revisions of the row say so without opening more than the file, which
        then goes out byte for byte.  UIDs are never touched.
        """
        try:
            data = self.blobs.read(row["_blob_key"])
        except FileNotFoundError:  # on a tier (or another node's): bring it back, then read
            self.ensure_online([row])
            data = self.blobs.read(row["_blob_key"])
        if row.get("StudyInstanceUID"):
            storage.touch_study(self, str(row["StudyInstanceUID"]))
        stored_rev, current = row.get("_stored_rev"), row.get("_patient_rev")
        if stored_rev is None or current is None:
            found = self._revisions(str(row["SOPInstanceUID"]))
            if found is None:
                return data
            stored_rev, current = found
        if not current or stored_rev == current:
            return data
        with self.engine.connect() as conn:
            pk = conn.execute(_PATIENT_OF_INSTANCE, {"uid": str(row["SOPInstanceUID"])}).scalar()
            state = None if pk is None else self.patients.state(conn, int(pk), fresh=True)
        if state is None:
            return data
        return outgoing.corrected(data, state)

    def _revisions(self, sop_uid: str) -> tuple[int, int] | None:
        with self.engine.connect() as conn:
            row = conn.execute(_REVISIONS, {"uid": sop_uid}).first()
        return None if row is None else (int(row[0]), int(row[1]))

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

    def delete(self, level: str, uid: str, *, user: str | None = None, peer: str = "", reason: str = "") -> int:
        """Delete a patient (by PatientID), study, series or instance: rows and blobs.

        Returns how many instances went.  Raises :class:`NotFound`.  Audited: one "DICOM Study
        Deleted" event per study touched (``user``: who asked; default the OS user).
        """
        level = level.upper()
        with self.transaction() as conn:
            sel = select(instances.c.pk, instances.c.blob_key, studies.c.study_uid, patients.c.patient_id,
                         patients.c.patient_name).select_from(
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
            self.writer.delete_instances(conn, [r.pk for r in rows])
            if level == "PATIENT":
                conn.execute(patients.delete().where(patients.c.patient_id == uid))
        for r in rows:
            self.blobs.delete(r.blob_key)
        self._emit(ArchiveEvent("deleted", level, uid))
        per_study: dict[str, list[Any]] = {}
        for r in rows:
            per_study.setdefault(r.study_uid, []).append(r)
        for study_uid, of_study in per_study.items():
            what = f"{level.lower()} {uid}" if level not in ("STUDY", "PATIENT") else f"{level.lower()} deleted"
            self.audit("DICOM Study Deleted", action="D", user=user or os_user(), peer=peer,
                       patient_id=of_study[0].patient_id, patient_name=of_study[0].patient_name,
                       study_uids=(study_uid,), instances=len(of_study),
                       detail=f"{what}{': ' + reason if reason else ''}")
        return len(rows)

    # ------------------------------------------------------------------ audit helpers

    def audit_export(self, study_uids: Iterable[str], *, destination: str, user: str | None = None,
                     instances: int = 0, outcome: int = 0, media: bool = False, anonymised: bool = False,
                     patient_id: str = "", patient_name: str = "", detail: str = "") -> None:
        """Record an export of studies out of the archive (PS3.15 A.5.3.6 "Export"), one event per patient.

        For ``hilum export``, ``hilum export-media`` (``media=True``: CD/USB/zip/ISO) and
        ``hilum anonymize`` (``anonymised=True``).  ``destination`` is where it went (a folder,
        file or peer AE title); ``outcome`` 0 success, 4 partly failed, 8 failed.  The patient
        of each study is read from the index unless given.
        """
        uids = tuple(dict.fromkeys(u for u in study_uids if u))
        note = " ".join(filter(None, ["anonymised" if anonymised else "", f"to {destination}", detail]))
        groups: dict[tuple[str, str], list[str]] = {}
        if patient_id:
            groups[(patient_id, patient_name)] = list(uids)
        else:
            with self.engine.connect() as conn:
                found = self.audit._patients(conn, set(uids))
            for u in uids:
                groups.setdefault(found.get(u, ("", "")), []).append(u)
        for (pid, pname), of_patient in groups.items():
            self.audit("Export", action="R", outcome=outcome, user=user or os_user(),
                       role="destination media" if media else "destination", patient_id=pid, patient_name=pname,
                       study_uids=tuple(of_patient), instances=instances if len(groups) == 1 else 0,
                       detail=note)

    def audit_study_opened(self, study_uid: str, *, user: str | None = None, instances: int = 0,
                           detail: str = "opened in the workstation") -> None:
        """Record that a user opened a study (PS3.15 A.5.3.3 "DICOM Instances Accessed", action R)."""
        self.audit("DICOM Instances Accessed", action="R", user=user or os_user(), study_uids=(study_uid,),
                   instances=instances, detail=detail)

    # ------------------------------------------------------------------ prefetched priors

    def record_prefetched(self, study_uid: str, source: str = "") -> bool:
        """Note that prefetch brings ``study_uid`` in (before its instances arrive), so that the cache
        limit may remove it later; False if it was noted already.  Only prefetch calls this, and only
        for a study that is not in the archive yet: nothing that arrived another way is ever listed."""
        now = datetime.now(UTC)
        with self.transaction() as conn:
            if conn.execute(select(prefetched_studies.c.pk).where(
                    prefetched_studies.c.study_uid == study_uid)).first() is not None:
                return False
            conn.execute(prefetched_studies.insert().values(study_uid=study_uid, source=source[:64], fetched_at=now,
                                                            last_access=now))
        return True

    def forget_prefetched(self, study_uid: str) -> bool:
        """Take ``study_uid`` off the prefetched list (it stays in the archive, for good); True if it was on it."""
        with self.transaction() as conn:
            res = conn.execute(prefetched_studies.delete().where(prefetched_studies.c.study_uid == study_uid))
        return bool(res.rowcount)

    def touch_prefetched(self, study_uid: str) -> bool:
        """Mark a prefetched study as just used (its place in the LRU order); False if it is not one."""
        with self.transaction() as conn:
            res = conn.execute(prefetched_studies.update().where(prefetched_studies.c.study_uid == study_uid)
                               .values(last_access=datetime.now(UTC)))
        return bool(res.rowcount)

    def prefetched(self) -> list[dict[str, Any]]:
        """The prefetched studies, least recently accessed first: ``study_uid``, ``source``,
        ``fetched_at``, ``last_access``, ``size_bytes`` and ``instances`` (0 and ``present`` False
        when the study is no longer in the archive)."""
        p = prefetched_studies.c
        stmt = (select(p.study_uid, p.source, p.fetched_at, p.last_access, studies.c.size_bytes,
                       studies.c.num_instances, studies.c.pk)
                .select_from(prefetched_studies.outerjoin(studies, studies.c.study_uid == p.study_uid))
                .order_by(p.last_access, p.pk))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [{"study_uid": r[0], "source": r[1], "fetched_at": r[2], "last_access": r[3],
                 "size_bytes": int(r[4] or 0), "instances": int(r[5] or 0), "present": r[6] is not None}
                for r in rows]

    # ------------------------------------------------------------------ check

    def check(self, *, repair: bool = False, verify_checksums: bool = True,
              progress: Callable[[int, int], None] | None = None) -> CheckReport:
        """Verify index ⇄ blobs: missing files, orphan files, checksums, temporaries.

        With ``repair``: orphan blobs are indexed again where they lie (they
        are kept aside in ``quarantine/`` when they are not valid instances),
        rows of missing blobs are removed, corrupt blobs are moved to
        ``quarantine/`` and their rows removed, stale temporaries deleted.

        What cannot be checked — a blob or folder that cannot be read (an I/O
        error, a permission), a repair that cannot be written (a full disk) —
        is listed in ``unchecked`` and left as it is: never reported missing
        or corrupt, never quarantined, its row never removed.
        """
        report = CheckReport()
        # What a killed transcode, recall or purge left behind is the storage policies' to clean, not a finding.
        storage.clear_stale_policy_temps(self)
        storage.reap_trash(self)
        bc = blob_copies.c
        tier_copy = (select(bc.pk).where(bc.instance_fk == instances.c.pk, bc.location.like("tier:%"),
                                         bc.checksum == instances.c.checksum, bc.verified_at.is_not(None))
                     .exists().label("tier_copy"))
        any_copy = (select(bc.pk).where(bc.instance_fk == instances.c.pk, bc.verified_at.is_not(None))
                    .exists().label("any_copy"))
        with self.engine.connect() as conn:
            rows = conn.execute(select(instances.c.pk, instances.c.sop_uid, instances.c.blob_key,
                                       instances.c.checksum, instances.c.online, tier_copy, any_copy)).all()
        # A shared index (several nodes, one database): a file that is not here may be another node's,
        # not yet on the write-through tier.  It is left alone (never "repaired" away), and said.
        shared = self.dialect != "sqlite" and bool(self.tiers.rules.write_through)
        report.instances = len(rows)
        indexed = {r.blob_key for r in rows}
        on_disk = set(self.blobs.keys(on_error=lambda where, exc: report.unchecked.append(
            f"{where}: cannot list ({exc.strerror or exc})")))
        report.blobs = len(on_disk)
        report.orphans = sorted(on_disk - indexed)
        report.temporaries = [str(p) for p in self.blobs.temporaries()]
        bad_pks: list[int] = []
        quarantine: list[str] = []
        for i, r in enumerate(rows):
            path = self.blobs.path(r.blob_key)
            if r.blob_key not in on_disk:
                try:
                    os.stat(path)
                except FileNotFoundError:
                    if r.tier_copy or (not r.online and r.any_copy):
                        report.offline += 1  # on a tier (brought back when read), or purged with a copy elsewhere
                    elif shared and r.online:
                        report.unchecked.append(f"{r.sop_uid}: not on this node and not yet on a write-through "
                                                "tier (another node's?)")
                    else:
                        report.missing.append(r.sop_uid)
                        bad_pks.append(r.pk)
                except OSError as exc:
                    report.unchecked.append(f"{r.sop_uid}: cannot check ({exc.strerror or exc})")
            elif verify_checksums:
                try:
                    intact = file_checksum(path, r.checksum)
                except OSError as exc:
                    report.unchecked.append(f"{r.sop_uid}: cannot read ({exc.strerror or exc})")
                else:
                    if not intact:
                        report.corrupt.append(r.sop_uid)
                        bad_pks.append(r.pk)
                        quarantine.append(r.blob_key)
            if progress is not None:
                progress(i + 1, len(rows))
        if repair:
            self._repair(report, bad_pks, quarantine)
        return report

    def _repair(self, report: CheckReport, bad_pks: list[int], quarantine: list[str]) -> None:
        qdir = self.data_dir / "quarantine"
        if bad_pks:
            try:
                with self.transaction() as conn:
                    self.writer.delete_instances(conn, bad_pks)
            except Exception as exc:  # noqa: BLE001 - the index cannot be written (a full disk...): leave all as is
                report.unchecked += [f"{u}: cannot repair ({_why(exc)})" for u in report.missing + report.corrupt]
                quarantine = []
            else:
                report.repaired += [f"removed index row of {u}" for u in report.missing + report.corrupt]
        for key in quarantine:
            try:
                _move_aside(self.blobs.path(key), qdir)
            except OSError as exc:
                report.unchecked.append(f"{key}: cannot quarantine ({exc.strerror or exc})")
            else:
                report.repaired.append(f"quarantined corrupt blob {key}")
        for key in report.orphans:
            self._repair_orphan(key, qdir, report)
        for t in report.temporaries:
            try:
                Path(t).unlink(missing_ok=True)
            except OSError as exc:
                report.unchecked.append(f"{t}: cannot delete ({exc.strerror or exc})")
            else:
                report.repaired.append(f"deleted temporary {t}")

    def _repair_orphan(self, key: str, qdir: Path, report: CheckReport) -> None:
        """Index an orphan blob where it lies: a hard link is handed to the index writer, which
        renames it into place (no copy, so a full disk does not stop it); a file that is not a
        valid instance goes to quarantine; anything else leaves it where it is."""
        path = self.blobs.path(key)
        try:
            data = path.read_bytes()
        except OSError as exc:
            report.unchecked.append(f"{key}: cannot read ({exc.strerror or exc})")
            return
        try:
            _ds, record = _read_record(data)
        except InvalidInstance as exc:
            try:
                _move_aside(path, qdir)
            except OSError as err:
                report.unchecked.append(f"{key}: unreadable ({exc}) but cannot quarantine ({err.strerror or err})")
            else:
                report.repaired.append(f"quarantined unreadable orphan {key}: {exc}")
            return
        try:
            temp = self.blobs.link_temp(path)
        except StorageFull as exc:
            report.unchecked.append(f"{key}: cannot re-index ({exc})")
            return
        res = self.writer.write([(0, Prepared(record, temp, blob_checksum(data), len(data), str(path)))],
                                origin="repair")[0][1]
        # Renaming a link onto the file it links to does nothing (POSIX rename): drop the link.
        self.blobs.discard_temp(temp)
        if not res.ok:
            report.unchecked.append(f"{key}: cannot re-index ({res.reason})")
            return
        if res.code == "duplicate-differs":  # another version of a stored instance: keep it aside
            try:
                _move_aside(path, qdir)
            except OSError as exc:
                report.unchecked.append(f"{key}: differs from the stored instance, cannot quarantine "
                                        f"({exc.strerror or exc})")
            else:
                report.repaired.append(f"quarantined orphan {key}: {res.reason}")
            return
        if self.blobs.key_for(record.sop_uid) != key:
            path.unlink(missing_ok=True)  # indexed under its own key (or a copy of one stored)
        report.repaired.append(f"re-indexed orphan {key}" if res.status != "duplicate"
                               else f"removed orphan {key}: a copy of a stored instance")


_REVISIONS = (select(instances.c.patient_rev, patients.c.revision)
              .select_from(instances.join(series, instances.c.series_fk == series.c.pk)
                           .join(studies, series.c.study_fk == studies.c.pk)
                           .join(patients, studies.c.patient_fk == patients.c.pk))
              .where(instances.c.sop_uid == bindparam("uid")))
_PATIENT_OF_INSTANCE = (select(studies.c.patient_fk)
                        .select_from(instances.join(series, instances.c.series_fk == series.c.pk)
                                     .join(studies, series.c.study_fk == studies.c.pk))
                        .where(instances.c.sop_uid == bindparam("uid")))


def _why(exc: BaseException) -> str:
    return (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]


def _expected(record: IndexRecord, sop_class: str | None, sop_instance: str | None) -> None:
    """Refuse a data set that is not the instance a request named (see :meth:`Archive.ingest`)."""
    if sop_instance and record.sop_uid != sop_instance:
        raise InvalidInstance("uid-mismatch", f"SOP Instance UID differs from the request's: data set "
                              f"{show_value(record.sop_uid)}, request {show_value(sop_instance)}", None)
    actual = record.instance["sop_class_uid"]
    if sop_class and actual != sop_class:
        raise InvalidInstance("sop-class-mismatch", f"SOP Class UID differs from the request's: data set "
                              f"{show_value(actual)}, request {show_value(sop_class)}", record.sop_uid)


def _read_record(data: bytes | bytearray) -> tuple[Dataset, IndexRecord]:
    ds = read_instance(data)  # type: ignore[arg-type]  # reads bytearrays as well (a C-STORE's buffer)
    return ds, index_record(ds)


def _move_aside(path: Path, qdir: Path) -> None:
    qdir.mkdir(parents=True, exist_ok=True)
    if path.exists():
        os.replace(path, qdir / path.name)
