"""The node's side of de-identification: its secret, the mapping table, and de-identified copies of studies.

:mod:`hilum.dicom.deid` does the work on one dataset; here the node keeps

* its **secret** (32 random bytes in ``<data>/deid.secret``, mode 0600, or the file
  ``[deid] secret_file`` of ``hilum.toml`` names — share that file between the nodes of a
  scale-out so they give a patient the same pseudonym), from which every replacement UID,
  pseudonym and date offset is derived;
* the **mapping table** ``deid_map`` (original → replacement UIDs and Patient IDs per project,
  with when it was first made), written through the index writer's transaction and read only
  through :meth:`DeidStore.mapping` (the admin CLI ``hilum anonymize --mapping``): it is the one
  place that re-identifies, so nothing else (query, DICOMweb, the GUI) reads it.

:func:`deidentified` streams de-identified copies of archived studies (read as every outgoing path
reads them, :meth:`~hilum.archive.Archive.read_outgoing`) and records their mapping.  The copies are
new objects for someone else (a research peer, a folder, a medium); they are not put back into this
archive, whose originals keep every UID.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, insert, select
from sqlalchemy.exc import IntegrityError

from hilum.archive.schema import deid_map
from hilum.dicom.deid import Deidentifier, DeidError, DeidResult, Options
from hilum.errors import HilumError, NotFound

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

__all__ = ["DeidStore", "deidentified"]

SECRET_FILE = "deid.secret"


class DeidStore:
    """The de-identification secret and mapping table of one archive."""

    def __init__(self, archive: Archive, *, secret_file: str | os.PathLike[str] | None = None) -> None:
        self.archive = archive
        self.secret_path = Path(secret_file) if secret_file else archive.data_dir / SECRET_FILE
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, archive: Archive, cfg: Any) -> DeidStore:
        section = (getattr(cfg, "extra", None) or {}).get("deid", {}) or {}
        return cls(archive, secret_file=section.get("secret_file") or None)

    def secret(self) -> bytes:
        """The node's secret, made (32 random bytes, readable by the owner only) on first use."""
        with self._lock:
            try:
                data = self.secret_path.read_bytes()
            except FileNotFoundError:
                data = secrets.token_bytes(32)
                self.secret_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.secret_path.with_name(self.secret_path.name + f".{os.getpid()}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                try:
                    os.link(tmp, self.secret_path)  # never replaces a secret another process made meanwhile
                except FileExistsError:
                    data = self.secret_path.read_bytes()
                except OSError:  # a file system without hard links: exclusive create instead
                    try:
                        fd = os.open(self.secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    except FileExistsError:
                        data = self.secret_path.read_bytes()
                    else:
                        try:
                            os.write(fd, data)
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                finally:
                    tmp.unlink(missing_ok=True)
            if len(data) < 16:
                raise HilumError(f"the de-identification secret {self.secret_path} is shorter than 16 bytes")
            return data

    def deidentifier(self, options: Options | None = None, *, project: str = "") -> Deidentifier:
        """A :class:`~hilum.dicom.deid.Deidentifier` with this node's secret."""
        return Deidentifier(self.secret(), options or Options(), project=project)

    def record(self, project: str, results: Iterable[DeidResult]) -> int:
        """Keep the pairs of ``results`` (those not yet known); returns how many rows were added."""
        pairs: dict[tuple[str, str], str] = {}
        for r in results:
            if r.original_patient_id or r.patient_id:
                pairs[("patient", r.original_patient_id)] = r.patient_id
            for orig, new in r.uids.items():
                pairs[("uid", orig)] = new
        if not pairs:
            return 0
        for _attempt in range(3):
            try:
                return self._insert(project, pairs)
            except IntegrityError:  # another writer added some of them meanwhile: look again
                continue
        raise HilumError("could not record the de-identification mapping (the table kept changing)")

    def _insert(self, project: str, pairs: dict[tuple[str, str], str]) -> int:
        now = dt.datetime.now(dt.UTC)
        added = 0
        with self.archive.transaction() as conn:
            for kind in ("patient", "uid"):
                wanted = [o for (k, o) in pairs if k == kind]
                known: set[str] = set()
                for i in range(0, len(wanted), 500):
                    chunk = wanted[i : i + 500]
                    known.update(conn.execute(select(deid_map.c.original).where(and_(
                        deid_map.c.project == project, deid_map.c.kind == kind,
                        deid_map.c.original.in_(chunk)))).scalars())  # fmt: skip
                rows = [{"project": project, "kind": kind, "original": o, "replacement": pairs[(kind, o)],
                         "created_at": now} for o in wanted if o not in known]  # fmt: skip
                if rows:
                    conn.execute(insert(deid_map), rows)
                    added += len(rows)
        return added

    def mapping(self, *, project: str | None = None, kind: str | None = None, original: str | None = None,
                replacement: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """Rows of the mapping table (admin only: this re-identifies)."""
        q = select(deid_map.c.project, deid_map.c.kind, deid_map.c.original, deid_map.c.replacement,
                   deid_map.c.created_at).order_by(deid_map.c.pk)  # fmt: skip
        if project is not None:
            q = q.where(deid_map.c.project == project)
        if kind is not None:
            q = q.where(deid_map.c.kind == kind)
        if original is not None:
            q = q.where(deid_map.c.original == original)
        if replacement is not None:
            q = q.where(deid_map.c.replacement == replacement)
        if limit is not None:
            q = q.limit(limit)
        with self.archive.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]


def audit_export(archive: Archive, study_uids: Iterable[str], *, destination: str, instances: int,
                 anonymised: bool, media: bool = False, outcome: int = 0) -> None:  # fmt: skip
    """Record the export in the audit trail (PS3.15 A.5.3.6 "Export") through the archive's hook
    (``Archive.audit_export``, issue 21a); a no-op on an archive without one."""
    hook = getattr(archive, "audit_export", None)
    if hook is None:
        return
    try:
        hook(list(study_uids), destination=destination, instances=instances, outcome=outcome, media=media,
             anonymised=anonymised)  # fmt: skip
    except Exception:  # noqa: BLE001 - the audit trail reports its own failures; the export is done
        logging.getLogger(__name__).exception("could not record the export in the audit trail")


def study_uids_of(archive: Archive, *, studies: Iterable[str] = (), patients: Iterable[str] = ()) -> list[str]:
    """The Study Instance UIDs named, and those of the patients named (by Patient ID); raises NotFound."""
    out: list[str] = []
    for uid in studies:
        if not archive.query("STUDY", {"StudyInstanceUID": uid}):
            raise NotFound("study", uid)
        out.append(uid)
    for pid in patients:
        rows = archive.query("STUDY", {"PatientID": pid})
        if not rows:
            raise NotFound("patient", pid)
        out += [str(r["StudyInstanceUID"]) for r in rows]
    return list(dict.fromkeys(out))


def deidentified(archive: Archive, study_uids: Iterable[str], deid: Deidentifier, *,
                 store: DeidStore | None = None, dry_run: bool = False,
                 progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None) -> Iterator[tuple[bytes, DeidResult]]:  # fmt: skip
    """De-identified copies of every instance of the studies, as (Part 10 bytes, result).

    Mapping pairs go into ``store`` per study (not on a dry run).  Stops quietly when ``cancel`` is set.
    An instance that cannot be de-identified raises :class:`~hilum.dicom.deid.DeidError` naming it.
    """
    rows = [r for uid in study_uids for r in archive.instances(study_uid=uid)]
    total, done = len(rows), 0
    pending: list[DeidResult] = []
    for row in rows:
        if cancel is not None and cancel.is_set():
            break
        try:
            data, result = deid.deidentify_bytes(archive.read_outgoing(row), dry_run=dry_run)
        except DeidError as exc:
            raise DeidError(f"instance {row['SOPInstanceUID']}: {exc}") from exc
        pending.append(result)
        if store is not None and not dry_run and len(pending) >= 200:
            store.record(deid.project, pending)
            pending = []
        done += 1
        if progress is not None:
            progress(done, total)
        yield data, result
    if store is not None and not dry_run and pending:
        store.record(deid.project, pending)
