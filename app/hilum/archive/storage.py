"""What the storage policies share: copies elsewhere, the blob trash, protections, the policy log, last access.

The policies themselves live beside this module — compression
(:mod:`hilum.archive.compress`), tiers (:mod:`hilum.archive.tiers`),
retention and purge (:mod:`hilum.archive.retention`), the forwarding queue
(:mod:`hilum.archive.forward`) — and are read from ``hilum.toml`` by
:mod:`hilum.archive.policy`.  They change the index only through the
functions here and the index writer, in the archive's write transactions.

Crash safety of a blob replacement (a transcode, a recall, a purge) rests on
the **trash**: a key noted in ``blob_trash`` may be deleted once no
instance row refers to it.  Replace a blob as: note the *new* key in the
trash, write and rename the new file, swap the keys in one transaction that
also notes the *old* key, then :func:`reap_trash`.  A kill at any point
leaves either an unadopted new file or an unreferenced old one, both in the
trash; the next reap (at node start, at each policy pass, in ``hilum
check``) removes them, and ``hilum check`` does not count them as orphans.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.engine import Connection

from hilum.archive.schema import blob_copies, blob_trash, instances, patients, policy_log, protections, series, studies
from hilum.errors import ConfigError
from hilum.processes import pid_alive

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger("hilum.storage")

TOUCH_EVERY = 60.0
"""Seconds between two writes of one study's ``last_access`` from this process (reads are many, writes few)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """A datetime from the index as an aware UTC one (SQLite gives naive ones back)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --------------------------------------------------------------------------- the trash


def trash_key(conn: Connection, key: str, reason: str) -> None:
    """Note that the online blob ``key`` may be deleted once no instance row refers to it."""
    conn.execute(blob_trash.insert().values(key=key, reason=reason[:32], created_at=utcnow()))


def reap_trash(archive: Archive) -> int:
    """Delete the trashed blobs no instance refers to any more (and forget the ones still referred to).

    Returns how many files were deleted.  Safe to run at any time, from any
    node that shares the blob folder: a key is only deleted when the index
    says nothing refers to it, in the same transaction that forgets it.
    """
    deleted = 0
    with archive.engine.connect() as conn:
        rows = conn.execute(select(blob_trash.c.pk, blob_trash.c.key)).all()
    for pk, key in rows:
        with archive.transaction() as conn:
            # Taking the row is the claim: whoever removes it (this reaper, another node's, or a transcode
            # adopting its new key, which removes the key's row in its own transaction) decides the file.
            taken = conn.execute(delete(blob_trash).where(blob_trash.c.pk == pk)).rowcount == 1
            used = taken and conn.execute(select(exists().where(instances.c.blob_key == key))).scalar()
        if taken and not used:
            try:
                if archive.blobs.exists(key):
                    archive.blobs.delete(key)
                    deleted += 1
            except OSError as exc:
                log.warning("could not delete trashed blob %s: %s", key, exc)
                with archive.transaction() as conn:
                    trash_key(conn, key, "retry")
    return deleted


def trashed_keys(conn: Connection) -> set[str]:
    return {r[0] for r in conn.execute(select(blob_trash.c.key))}


def policy_temp(archive: Archive, suffix: str = "") -> Path:
    """A fresh path in the blob store's temporary folder for a policy's work file (a transcode, a recall).

    Same file system as the blobs (so renaming it into place is atomic); named
    ``*.<host>.<pid>.policy`` so that :func:`clear_stale_policy_temps` can tell
    a dead process's leftovers from a live one's, and so that ``hilum check``
    does not take them for a crashed ingest's temporaries.
    """
    archive.blobs.ensure()
    fd, name = tempfile.mkstemp(dir=archive.blobs.tmp, suffix=f"{suffix}.{_HOST}.{os.getpid()}.policy")
    os.close(fd)
    return Path(name)


def clear_stale_policy_temps(archive: Archive) -> int:
    """Remove the policy work files of processes of this host that are gone (a kill -9 mid-transcode)."""
    removed = 0
    tmp = archive.blobs.tmp
    if not tmp.exists():
        return 0
    for p in tmp.glob("*.policy"):
        parts = p.name.split(".")
        if len(parts) < 3 or parts[-3] != _HOST:
            continue
        try:
            pid = int(parts[-2])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            try:
                p.unlink()
                removed += 1
            except OSError:
                pass
    return removed


_HOST = socket.gethostname().replace(".", "_")[:32] or "host"




# --------------------------------------------------------------------------- copies elsewhere


def record_copy(conn: Connection, instance_pk: int, location: str, *, key: str = "", checksum: str = "",
                size: int = 0, verified: bool = True, retain_until: datetime | None = None) -> None:
    """Note (or update) the copy of instance ``instance_pk`` at ``location`` (``tier:NAME`` / ``peer:NAME``)."""
    now = utcnow()
    values = {"key": key, "checksum": checksum, "size": int(size), "verified_at": now if verified else None,
              "retain_until": retain_until}
    res = conn.execute(update(blob_copies).where(blob_copies.c.instance_fk == instance_pk,
                                                 blob_copies.c.location == location).values(**values))
    if not res.rowcount:
        conn.execute(blob_copies.insert().values(instance_fk=instance_pk, location=location, created_at=now,
                                                 **values))


def forget_copy(conn: Connection, instance_pk: int, location: str) -> None:
    conn.execute(delete(blob_copies).where(blob_copies.c.instance_fk == instance_pk,
                                           blob_copies.c.location == location))


def copies_of(conn: Connection, instance_pk: int) -> list[dict[str, Any]]:
    """The copies of one instance: ``location``, ``key``, ``checksum``, ``size``, ``verified_at``, ``retain_until``."""
    c = blob_copies.c
    rows = conn.execute(select(c.location, c.key, c.checksum, c.size, c.verified_at, c.retain_until)
                        .where(c.instance_fk == instance_pk).order_by(c.pk)).all()
    return [{"location": r[0], "key": r[1], "checksum": r[2], "size": int(r[3]), "verified_at": as_utc(r[4]),
             "retain_until": as_utc(r[5])} for r in rows]


def verified_elsewhere(conn: Connection, study_pk: int) -> dict[str, int]:
    """For one study: how many of its instances each location holds a verified copy of (``{location: n}``)."""
    c = blob_copies.c
    stmt = (select(c.location, c.instance_fk)
            .select_from(blob_copies.join(instances, instances.c.pk == c.instance_fk)
                         .join(series, series.c.pk == instances.c.series_fk))
            .where(series.c.study_fk == study_pk, c.verified_at.is_not(None)))
    out: dict[str, int] = {}
    for loc, _ in conn.execute(stmt):
        out[loc] = out.get(loc, 0) + 1
    return out


def study_fully_held_elsewhere(conn: Connection, study_pk: int) -> list[str]:
    """The locations that hold a verified copy of *every* instance of the study (empty: none does)."""
    total = conn.execute(select(studies.c.num_instances).where(studies.c.pk == study_pk)).scalar() or 0
    if not total:
        return []
    return sorted(loc for loc, n in verified_elsewhere(conn, study_pk).items() if n >= total)


# --------------------------------------------------------------------------- protections


def protect(archive: Archive, level: str, uid: str, *, issuer: str = "", reason: str = "") -> bool:
    """Protect a study (``STUDY``, StudyInstanceUID) or a patient (``PATIENT``, PatientID) from every purge.

    False when it was protected already.
    """
    level = _protect_level(level)
    with archive.transaction() as conn:
        if _protection(conn, level, uid, issuer) is not None:
            return False
        conn.execute(protections.insert().values(level=level, uid=uid, issuer=issuer, reason=reason[:255],
                                                 created_at=utcnow()))
    log.info("protected %s %s%s", level.lower(), uid, f" ({reason})" if reason else "")
    return True


def unprotect(archive: Archive, level: str, uid: str, *, issuer: str = "") -> bool:
    level = _protect_level(level)
    with archive.transaction() as conn:
        res = conn.execute(delete(protections).where(protections.c.level == level, protections.c.uid == uid,
                                                     protections.c.issuer == issuer))
    if res.rowcount:
        log.info("unprotected %s %s", level.lower(), uid)
    return bool(res.rowcount)


def protections_list(archive: Archive) -> list[dict[str, Any]]:
    p = protections.c
    with archive.engine.connect() as conn:
        rows = conn.execute(select(p.level, p.uid, p.issuer, p.reason, p.created_at).order_by(p.pk)).all()
    return [{"level": r[0], "uid": r[1], "issuer": r[2], "reason": r[3], "created_at": as_utc(r[4])} for r in rows]


def protected_study_pks(conn: Connection) -> set[int]:
    """Keys of every study that is protected, itself or through its patient."""
    p = protections.c
    by_study = select(studies.c.pk).join(protections, (p.level == "STUDY") & (p.uid == studies.c.study_uid))
    by_patient = (select(studies.c.pk).join(patients, patients.c.pk == studies.c.patient_fk)
                  .join(protections, (p.level == "PATIENT") & (p.uid == patients.c.patient_id)
                        & ((p.issuer == "") | (p.issuer == patients.c.issuer))))
    return {r[0] for r in conn.execute(by_study)} | {r[0] for r in conn.execute(by_patient)}


def _protection(conn: Connection, level: str, uid: str, issuer: str) -> int | None:
    p = protections.c
    return conn.execute(select(p.pk).where(p.level == level, p.uid == uid, p.issuer == issuer)).scalar()


def _protect_level(level: str) -> str:
    level = level.upper()
    if level not in ("STUDY", "PATIENT"):
        raise ValueError("protect a STUDY or a PATIENT")
    return level


# --------------------------------------------------------------------------- the policy log


def log_action(conn: Connection, action: str, uid: str, *, level: str = "STUDY", rule: str = "", instances: int = 0,
               bytes_before: int = 0, bytes_after: int = 0, detail: str = "", node: str = "") -> None:
    """Record what a policy did (in the caller's transaction) and say it in the node's log."""
    conn.execute(policy_log.insert().values(at=utcnow(), action=action[:16], level=level[:8], uid=uid[:64],
                                            rule=rule[:64], instances=int(instances),
                                            bytes_before=int(bytes_before), bytes_after=int(bytes_after),
                                            detail=detail, node=node[:64]))
    log.info("%s %s %s%s: %d instance(s), %d -> %d bytes%s", action, level.lower(), uid,
             f" (rule {rule})" if rule else "", instances, bytes_before, bytes_after,
             f"; {detail}" if detail else "")


def policy_history(archive: Archive, *, action: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The newest policy log rows first."""
    c = policy_log.c
    stmt = select(c.at, c.action, c.level, c.uid, c.rule, c.instances, c.bytes_before, c.bytes_after, c.detail,
                  c.node).order_by(c.pk.desc()).limit(limit)
    if action:
        stmt = stmt.where(c.action == action)
    with archive.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [{"at": as_utc(r[0]), "action": r[1], "level": r[2], "uid": r[3], "rule": r[4], "instances": int(r[5]),
             "bytes_before": int(r[6]), "bytes_after": int(r[7]), "detail": r[8], "node": r[9]} for r in rows]


# --------------------------------------------------------------------------- last access

_touched: dict[tuple[int, str], float] = {}
_touched_lock = threading.Lock()


def touch_study(archive: Archive, study_uid: str, *, force: bool = False) -> None:
    """Note that ``study_uid`` was just opened or retrieved (at most one write a minute per study and process)."""
    now = time.monotonic()
    slot = (id(archive), study_uid)
    with _touched_lock:
        if not force and now - _touched.get(slot, -TOUCH_EVERY) < TOUCH_EVERY:
            return
        _touched[slot] = now
        if len(_touched) > 100_000:
            _touched.clear()
    try:
        with archive.transaction() as conn:
            conn.execute(update(studies).where(studies.c.study_uid == study_uid).values(last_access=utcnow()))
    except Exception:  # noqa: BLE001 - a read never fails because its bookkeeping did
        log.exception("could not note the access to study %s", study_uid)


# --------------------------------------------------------------------------- rules in hilum.toml


def config_line(text: str, table: str, key: str | None = None, index: int | None = None) -> int | None:
    """The line (1-based) of ``key`` in ``[table]`` (or of the table's header) in the TOML ``text``.

    ``index`` picks the n-th ``[[table]]`` of an array of tables (0-based).
    Best effort: None when it cannot be found (the error then names the
    table and key without a line).
    """
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    key_re = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=") if key else None
    current: str | None = None
    seen = -1
    found_header: int | None = None
    for n, line in enumerate(text.splitlines(), start=1):
        m = header.match(line)
        if m:
            current = m.group(1).replace('"', "").replace("'", "")
            if current == table:
                seen += 1
                if index is None or seen == index:
                    found_header = n
            continue
        if key_re is not None and current == table and (index is None or seen == index) and key_re.match(line):
            return n
    return found_header


def rule_error(source: str | None, text: str, table: str, message: str, *, key: str | None = None,
               index: int | None = None) -> ConfigError:
    """A :class:`ConfigError` that names the file, the line, the table and the key: ``hilum.toml line 12: [[tiering]] #1
    min_age_days: must be a number >= 0, not 'x'``."""
    line = config_line(text, table, key, index) if text else None
    where = f"{source or 'hilum.toml'}" + (f" line {line}" if line else "")
    label = f"[[{table}]] #{index + 1}" if index is not None else f"[{table}]"
    return ConfigError(f"{where}: {label}{' ' + key if key else ''}: {message}")


@dataclass
class TaskReport:
    """What one policy pass did (or, in a dry run, would do)."""

    task: str
    dry_run: bool = False
    actions: list[dict[str, Any]] = field(default_factory=list)  # one per study: uid, rule, instances, bytes...
    instances: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "dry_run": self.dry_run, "instances": self.instances,
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after, "saved": self.saved,
                "actions": [_plain(a) for a in self.actions], "errors": list(self.errors)}


def _plain(a: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in a.items()}


def age_days(value: datetime | None, now: datetime) -> float:
    value = as_utc(value)
    return float("inf") if value is None else (now - value).total_seconds() / 86400.0


def matches(value: str, allowed: Iterable[str]) -> bool:
    """Whether ``value`` (a modality, an AE title, a SOP class...) is in ``allowed`` (empty: anything).

    Multi-valued ``value`` (``CT\\\\PT``, ModalitiesInStudy) matches when any of its values does.
    """
    allowed = list(allowed)
    if not allowed:
        return True
    values = {v.strip().upper() for v in str(value).split("\\") if v.strip()}
    return bool(values & {a.upper() for a in allowed})


class WokenService:
    """A node service whose one background thread is woken by arrivals (``stored``/``replaced`` events) and by
    :meth:`wake`: the lifecycle the policy pass (:class:`hilum.archive.policy.PolicyService`) and the tiers'
    write-through (:class:`hilum.archive.tiers.TierService`) share.  Subclasses give :meth:`_run` (a loop until
    ``self._stop`` is set, waiting on ``self._wake``), :attr:`thread_name`, and :meth:`enabled`."""

    name = ""
    thread_name = ""

    def __init__(self, archive: Archive):
        self.archive = archive
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Any = None
        self.passes = 0

    def enabled(self) -> bool:
        """Whether :meth:`start` starts the thread (False: the service stays idle)."""
        return True

    def start(self) -> None:
        if self._thread is not None or not self.enabled():
            return
        self._stop.clear()
        self._unsubscribe = self.archive.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

    def wake(self) -> None:
        """Run a pass soon (new instances arrived, a rule changed, the user asked)."""
        self._wake.set()

    def _on_event(self, event: Any) -> None:
        if getattr(event, "kind", "") in ("stored", "replaced"):
            self._wake.set()

    def _run(self) -> None:
        raise NotImplementedError
