"""The audit trail: who did what to which patient's data, when, from where, with what outcome.

One row of ``audit_events`` per audited action, named by its DICOM PS3.15
A.5 event id (``"Query"``, ``"DICOM Instances Transferred"``, ``"User
Authentication"``...), with the user (a user name, or the calling AE title of
a DICOM peer), the peer's address, the patient and studies, the number of
instances and the outcome (PS3.15 A.5.1 EventOutcomeIndicator: 0 success, 4
minor failure, 8 serious failure, 12 major failure).

**Append-only and hash-chained.**  Each row's ``hash`` is the SHA-256 of a
canonical serialisation of the row (its key included) and the ``prev_hash``
of the row before it (:func:`row_hash`), the first row chaining to 64 zeros.
:meth:`AuditLog.verify` recomputes the chain and names the first row that
breaks it: a modified row (its hash no longer matches), a deleted one (the
next row's ``prev_hash`` and key no longer follow), an inserted one (its
hash, or its neighbour's ``prev_hash``, is wrong).  What a chain cannot
show on its own is the removal of the *last* rows; the copy sent to the audit
repository by syslog (:mod:`hilum.archive.audit_syslog`) is what covers that.

**Cheap.**  :meth:`AuditLog.record` only queues the event (a deque append);
a background thread writes the queue in one transaction of THE index writer
(``archive.transaction()``) every :attr:`AuditLog.flush_interval` seconds,
so an audited C-STORE or QIDO request never waits for the database (measured, CPU time:
≈ 5 µs to record in the request's thread, ≈ 11 µs to hash and insert in the writer's; a QIDO-RS
request costs the node ≈ 0.8 ms: ``bench/audit/run.py``).  The
adapters aggregate what PS3.15 asks to aggregate: one "DICOM Instances
Transferred" event per study per association for DIMSE stores, one per study
per request for STOW and retrieves; WADO reads of one study by one user in a
short window are one event (``coalesce``).  When an event names studies but
not their patient, the patient is read from the index while writing.

Reading: :meth:`AuditLog.search` (``hilum audit``, the workstation's audit
view), :func:`to_xml` (the DICOM audit message, PS3.15 A.5.1 schema: the XML
sent by syslog and written by ``hilum audit export --format xml``).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import Connection

from hilum.archive.schema import audit_events, patients, studies
from hilum.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "EVENTS",
    "AuditEvent",
    "AuditLog",
    "AuditSettings",
    "Verification",
    "os_user",
    "row_hash",
    "to_xml",
    "workstation_user",
]

GENESIS = "0" * 64

# PS3.16 CID 400 "Audit Event ID" (DCM codes) and CID 401 "Audit Event Type Code".
EVENTS: dict[str, str] = {
    "Application Activity": "110100",
    "Audit Log Used": "110101",
    "Begin Transferring DICOM Instances": "110102",
    "DICOM Instances Accessed": "110103",
    "DICOM Instances Transferred": "110104",
    "DICOM Study Deleted": "110105",
    "Export": "110106",
    "Import": "110107",
    "Network Entry": "110108",
    "Order Record": "110109",
    "Patient Record": "110110",
    "Procedure Record": "110111",
    "Query": "110112",
    "Security Alert": "110113",
    "User Authentication": "110114",
}
EVENT_TYPES: dict[str, str] = {
    "Application Start": "110120",
    "Application Stop": "110121",
    "Login": "110122",
    "Logout": "110123",
    "Network Configuration": "110128",
    "Security Configuration": "110129",
    "Software Configuration": "110131",
    "Use of Restricted Function": "110132",
    "Audit Recording Stopped": "110133",
    "Audit Recording Started": "110134",
    "Security Roles Changed": "110136",
    "User security Attributes Changed": "110137",
}
ROLES = {
    "source": ("110153", "Source Role ID"),
    "destination": ("110152", "Destination Role ID"),
    "application": ("110150", "Application"),
    "launcher": ("110151", "Application Launcher"),
    "source media": ("110155", "Source Media"),
    "destination media": ("110154", "Destination Media"),
}
ACTIONS = frozenset("CRUDE")
OUTCOMES = frozenset((0, 4, 8, 12))

_HASHED = (
    "pk",
    "at",
    "event",
    "event_type",
    "action",
    "outcome",
    "user",
    "user_is_requestor",
    "ae_title",
    "peer",
    "role",
    "patient_id",
    "patient_name",
    "study_uids",
    "instances",
    "detail",
)


def os_user() -> str:
    """The name of the user running this process (the workstation's and the CLI's actor)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def workstation_user(config: Any = None) -> str:
    """Who uses the workstation: ``[workstation] user`` of ``hilum.toml`` when set, else the OS user."""
    section = (getattr(config, "extra", None) or {}).get("workstation", {}) or {}
    name = section.get("user", "") if isinstance(section, dict) else ""
    return str(name).strip() or os_user()


@dataclass(slots=True)
class AuditEvent:
    """One audited action (see the module docstring); ``at`` defaults to the time it is recorded."""

    event: str
    action: str = "R"
    outcome: int = 0
    user: str = ""
    user_is_requestor: bool = True
    ae_title: str = ""
    peer: str = ""
    role: str = ""
    patient_id: str = ""
    patient_name: str = ""
    study_uids: tuple[str, ...] = ()
    instances: int = 0
    detail: str = ""
    event_type: str = ""
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown audit event {self.event!r} (PS3.15 A.5: {', '.join(EVENTS)})")
        if self.action not in ACTIONS:
            raise ValueError(f"audit action must be one of C R U D E, not {self.action!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"audit outcome must be 0, 4, 8 or 12, not {self.outcome!r}")
        if isinstance(self.study_uids, str):
            self.study_uids = tuple(self.study_uids.split())
        else:
            self.study_uids = tuple(dict.fromkeys(u for u in self.study_uids if u))


def iso_utc(at: datetime) -> str:
    """``at`` as the canonical UTC text of the hash (microseconds, ``Z``); a naive time is UTC (SQLite)."""
    if at.tzinfo is not None and at.utcoffset():
        at = at.astimezone(UTC)
    return at.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def row_hash(row: dict[str, Any], prev_hash: str) -> str:
    """SHA-256 (hex) of a row's canonical serialisation and the previous row's hash.

    The serialisation is a JSON array of the hashed columns in a fixed order
    (``at`` as UTC ISO 8601 with microseconds, ``user_is_requestor`` a
    boolean), UTF-8, no whitespace, then ``prev_hash``: the same bytes on
    SQLite and PostgreSQL for the same row.
    """
    values = [
        iso_utc(row["at"]) if k == "at" else (bool(row[k]) if k == "user_is_requestor" else row[k]) for k in _HASHED
    ]
    return hashlib.sha256((_JSON.encode(values) + "\n" + prev_hash).encode("utf-8")).hexdigest()


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_COLUMNS = (*_HASHED, "prev_hash", "hash")


@dataclass(frozen=True, slots=True)
class Verification:
    """What :meth:`AuditLog.verify` found: ``ok``, the rows checked, and the first bad row and why."""

    ok: bool
    rows: int
    bad_pk: int | None = None
    reason: str = ""

    def line(self) -> str:
        if self.ok:
            return f"audit trail intact: {self.rows} events, hash chain verified"
        return f"audit trail BROKEN at event {self.bad_pk}: {self.reason} ({self.rows} events checked)"


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """``[audit]`` in ``hilum.toml``: ``enabled`` (default true); ``syslog = "host:port"`` (RFC 5425, TLS),
    ``ca_file`` (the repository's CA; empty: the system's), ``cert_file``/``key_file`` (this node's client
    certificate, when the repository asks for one), ``source_id`` (AuditSourceID; empty: the node's AE title),
    ``retry_seconds`` (the wait after a failed send, doubling up to 10 minutes)."""

    enabled: bool = True
    syslog: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    source_id: str = ""
    retry_seconds: float = 5.0

    @classmethod
    def from_config(cls, cfg: Any) -> AuditSettings:
        section = (getattr(cfg, "extra", None) or {}).get("audit", {}) or {}
        if not isinstance(section, dict):
            raise ConfigError("[audit] must be a table")
        defaults = {f.name: f.default for f in fields(cls)}
        known = set(defaults)
        values: dict[str, Any] = {}
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"[audit]: unknown setting {key!r} (known: {', '.join(sorted(known))})")
            default = defaults[key]
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"[audit]: {key} must be true or false, not {value!r}")
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ConfigError(f"[audit]: {key} must be a number > 0, not {value!r}")
                value = float(value)
            elif not isinstance(value, str):
                raise ConfigError(f"[audit]: {key} must be text, not {value!r}")
            values[key] = value
        settings = cls(**values)
        if settings.syslog:
            settings.syslog_address()
        if not settings.source_id:
            settings = cls(**{**values, "source_id": str(getattr(cfg, "aet", "") or "HILUM")})
        return settings

    def syslog_address(self) -> tuple[str, int]:
        host, sep, port = self.syslog.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f'[audit]: syslog must be "host:port" (RFC 5425 uses 6514), not {self.syslog!r}')
        return host.strip("[]"), int(port)


class AuditLog:
    """The audit trail of one index database (``archive.audit``); thread-safe.

    ``transaction`` is THE index writer's (``archive.transaction``).  ``archive.audit(...)`` and
    ``archive.audit.record(...)`` are the same call.
    """

    flush_interval = 0.5
    """Seconds the writer gathers events before it writes them in one transaction (an event waits at
    most about twice this; a search or verify writes the queue first)."""

    coalesce_window = 30.0
    """Seconds a coalesced event (``record(..., coalesce=key)``) collects further ones before it is written."""

    def __init__(
        self,
        engine: Engine,
        transaction: Callable[[], AbstractContextManager[Connection]],
        *,
        enabled: bool = True,
        source_id: str = "HILUM",
    ):
        self.engine = engine
        self._transaction = transaction
        self.enabled = enabled
        self.source_id = source_id
        self._queue: deque[AuditEvent] = deque()
        self._coalesced: dict[Hashable, tuple[AuditEvent, float]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.written = 0
        self._insert_sql: str | None = None
        self.listeners: list[Callable[[], None]] = []  # called after rows were written (the syslog sender)

    # ------------------------------------------------------------------ recording

    def record(self, event: AuditEvent | str, *, coalesce: Hashable | None = None, **fields: Any) -> None:
        """Queue one event: an :class:`AuditEvent`, or its event id and fields (``record("Query", user=...)``).

        Never raises for a database problem (it is logged when the queue is written); raises
        ``ValueError`` for an unknown event id, action or outcome (a programming error).
        ``coalesce``: events with the same key within :attr:`coalesce_window` seconds become one
        (their instance counts added): many WADO requests of one study by one user.
        """
        if not self.enabled:
            return
        ev = event if isinstance(event, AuditEvent) else AuditEvent(event, **fields)
        with self._lock:
            if self._closed:
                log.warning("audit event after close, not recorded: %s", ev.event)
                return
            if coalesce is not None:
                held = self._coalesced.get(coalesce)
                if held is not None:
                    held[0].instances += ev.instances
                    if ev.outcome > held[0].outcome:
                        held[0].outcome = ev.outcome
                    return
                self._coalesced[coalesce] = (ev, time.monotonic())
            else:
                self._queue.append(ev)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()
        if not self._wake.is_set():
            self._wake.set()

    __call__ = record

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            time.sleep(self.flush_interval)  # gather: a transaction costs ~1-2 ms, an event ~12 µs
            try:
                self.flush(force=False)
            except Exception:  # noqa: BLE001 - the queue is kept; tried again next time
                log.exception("cannot write the audit trail; will retry")
            with self._lock:
                if self._closed and not self._queue and not self._coalesced:
                    self._thread = None
                    return
                if not self._queue and not self._coalesced:
                    self._wake.clear()

    def flush(self, force: bool = True) -> int:
        """Write what is queued now (``force``: coalesced events too, however young); returns rows written."""
        with self._write_lock:
            with self._lock:
                now = time.monotonic()
                take = list(self._queue)
                self._queue.clear()
                for key, (ev, since) in list(self._coalesced.items()):
                    if force or self._closed or now - since >= self.coalesce_window:
                        take.append(ev)
                        del self._coalesced[key]
            if not take:
                return 0
            take.sort(key=lambda e: e.at)
            try:
                self._write(take)
            except Exception:
                with self._lock:
                    self._queue.extendleft(reversed(take))
                raise
        for cb in list(self.listeners):
            try:
                cb()
            except Exception:  # noqa: BLE001 - a listener never breaks the trail
                log.exception("audit listener failed")
        return len(take)

    def _write(self, events: list[AuditEvent]) -> None:
        with self._transaction() as conn:
            if self.engine.dialect.name == "postgresql":  # one chain across the nodes sharing the database
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7461637)")
            last = conn.execute(
                select(audit_events.c.pk, audit_events.c.hash).order_by(audit_events.c.pk.desc()).limit(1)
            ).first()
            pk, prev = (int(last[0]), str(last[1])) if last is not None else (0, GENESIS)
            patients_of = self._patients(conn, {u for e in events if not e.patient_id for u in e.study_uids[:1]})
            dialect = self.engine.dialect
            fast = dialect.name in ("sqlite", "postgresql") and dialect.paramstyle in ("qmark", "format", "pyformat")
            sqlite = dialect.name == "sqlite"
            rows: list[Any] = []
            for ev in events:
                pk += 1
                pid, pname = ev.patient_id, ev.patient_name
                if not pid and ev.study_uids:
                    pid, pname = patients_of.get(ev.study_uids[0], ("", ""))
                at = ev.at if ev.at.tzinfo is not None and not ev.at.utcoffset() else ev.at.astimezone(UTC)
                iso = iso_utc(at)
                # the hashed values, in _HASHED order (row_hash computes the same from a row read back)
                values: list[Any] = [
                    pk,
                    iso,
                    ev.event[:48],
                    (ev.event_type or "")[:48],
                    ev.action,
                    int(ev.outcome),
                    (ev.user or "")[:128],
                    bool(ev.user_is_requestor),
                    (ev.ae_title or "")[:16],
                    (ev.peer or "")[:64],
                    (ev.role or "")[:20],
                    (pid or "")[:64],
                    (pname or "")[:324],
                    " ".join(ev.study_uids),
                    int(ev.instances),
                    (ev.detail or "")[:1000],
                ]
                digest = hashlib.sha256((_JSON.encode(values) + "\n" + prev).encode("utf-8")).hexdigest()
                # stored: at as SQLAlchemy's DateTime stores it on SQLite (and reads back), else the datetime
                values[1] = f"{iso[:10]} {iso[11:26]}" if sqlite else at
                if sqlite:
                    values[7] = 1 if values[7] else 0
                values += [prev, digest]
                prev = digest
                rows.append(tuple(values) if fast else dict(zip(_COLUMNS, values, strict=True)))
            if fast:
                if self._insert_sql is None:
                    quote = dialect.identifier_preparer.quote
                    mark = "?" if dialect.paramstyle == "qmark" else "%s"
                    self._insert_sql = (
                        f"INSERT INTO audit_events ({', '.join(quote(c) for c in _COLUMNS)}) "
                        f"VALUES ({', '.join([mark] * len(_COLUMNS))})"
                    )
                # one executemany on the DB-API cursor: SQLAlchemy's per-row parameter processing cost
                # more than the hashing (and the writer holds the GIL the protocol threads need)
                conn.exec_driver_sql(self._insert_sql, rows)
            else:  # another database: through SQLAlchemy (values[1] is the datetime there)
                conn.execute(audit_events.insert(), rows)
        self.written += len(rows)

    @staticmethod
    def _patients(conn: Connection, study_uids: set[str]) -> dict[str, tuple[str, str]]:
        if not study_uids:
            return {}
        res = conn.execute(
            select(studies.c.study_uid, patients.c.patient_id, patients.c.patient_name)
            .select_from(studies.join(patients, studies.c.patient_fk == patients.c.pk))
            .where(studies.c.study_uid.in_(sorted(study_uids)))
        )
        return {r[0]: (r[1] or "", r[2] or "") for r in res}

    def close(self) -> None:
        """Write everything queued (coalesced events included) and stop the writer thread."""
        with self._lock:
            self._closed = True
        try:
            self.flush(force=True)
        except Exception:  # noqa: BLE001 - closing anyway: say what is lost
            log.exception("audit events lost at close")
        self._wake.set()

    def reopen(self) -> None:
        with self._lock:
            self._closed = False

    # ------------------------------------------------------------------ reading

    def search(
        self,
        *,
        user: str | None = None,
        patient: str | None = None,
        study: str | None = None,
        event: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Events matching every filter given (after writing what is queued), oldest first.

        ``user`` matches the user or the AE title; ``patient`` the patient ID or (case-insensitive for ASCII letters,
        ``*`` wildcards) the name; ``study`` one of the study UIDs; ``event`` the event id or type.
        """
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - show what is written
            log.exception("cannot write the audit queue before searching")
        c = audit_events.c
        stmt = select(audit_events)
        if user:
            stmt = stmt.where((c.user == user) | (c.ae_title == user))
        if patient:
            pattern = patient.replace("*", "%")
            stmt = stmt.where((c.patient_id == patient) | func.upper(c.patient_name).like(func.upper(pattern)))
        if study:
            stmt = stmt.where((" " + c.study_uids + " ").like(f"% {study} %"))
        if event:
            stmt = stmt.where((c.event == event) | (c.event_type == event))
        if since is not None:
            stmt = stmt.where(c.at >= since)
        if until is not None:
            stmt = stmt.where(c.at <= until)
        stmt = stmt.order_by(c.pk.desc() if newest_first else c.pk)
        if limit:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            return [self._out(dict(r._mapping)) for r in conn.execute(stmt)]

    @staticmethod
    def _out(row: dict[str, Any]) -> dict[str, Any]:
        for k in ("at", "sent_at"):
            if row.get(k) is not None and row[k].tzinfo is None:
                row[k] = row[k].replace(tzinfo=UTC)
        return row

    def rows(self, batch: int = 2000) -> Iterator[dict[str, Any]]:
        """Every row in key order, read in batches."""
        after = 0
        while True:
            with self.engine.connect() as conn:
                chunk = [
                    self._out(dict(r._mapping))
                    for r in conn.execute(
                        select(audit_events).where(audit_events.c.pk > after).order_by(audit_events.c.pk).limit(batch)
                    )
                ]
            if not chunk:
                return
            yield from chunk
            after = chunk[-1]["pk"]

    def verify(self) -> Verification:
        """Recompute the hash chain; the first row that breaks it and why (see the module docstring)."""
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - verify what is written
            log.exception("cannot write the audit queue before verifying")
        prev, expected_pk, n = GENESIS, 1, 0
        for row in self.rows():
            n += 1
            pk = int(row["pk"])
            if pk != expected_pk:
                return Verification(
                    False,
                    n,
                    pk,
                    f"events {expected_pk}..{pk - 1} are missing (deleted)"
                    if pk > expected_pk
                    else f"key {pk} out of order",
                )
            if row["prev_hash"] != prev:
                return Verification(
                    False,
                    n,
                    pk,
                    "its prev_hash is not the hash of the event before it (an event was deleted, inserted or replaced)",
                )
            if row_hash(row, prev) != row["hash"]:
                return Verification(False, n, pk, "its content does not match its hash (the row was modified)")
            prev, expected_pk = row["hash"], pk + 1
        return Verification(True, n)

    # ------------------------------------------------------------------ export

    def unsent(self, limit: int = 100) -> list[dict[str, Any]]:
        """Rows not yet sent to the audit repository, oldest first."""
        with self.engine.connect() as conn:
            return [
                self._out(dict(r._mapping))
                for r in conn.execute(
                    select(audit_events)
                    .where(audit_events.c.sent_at.is_(None))
                    .order_by(audit_events.c.pk)
                    .limit(limit)
                )
            ]

    def mark_sent(self, pks: Iterable[int]) -> None:
        keys = list(pks)
        if not keys:
            return
        with self._transaction() as conn:
            conn.execute(audit_events.update().where(audit_events.c.pk.in_(keys)).values(sent_at=datetime.now(UTC)))

    def to_xml(self, row: dict[str, Any]) -> str:
        return to_xml(row, self.source_id)


# ----------------------------------------------------------------------------- DICOM audit message XML


def _code(tag: str, code: str, meaning: str, scheme: str = "DCM") -> str:
    return f"<{tag} csd-code={quoteattr(code)} codeSystemName={quoteattr(scheme)} originalText={quoteattr(meaning)}/>"


def to_xml(row: dict[str, Any], source_id: str = "HILUM") -> str:
    """The DICOM audit message of one row (PS3.15 A.5.1 schema, the RFC 3881 successor).

    ``EventIdentification`` (event id and type codes of CID 400/401, action, time, outcome),
    ``ActiveParticipant`` for the user or peer (AE title as AlternativeUserID, address as
    NetworkAccessPointID, role codes of CID 402) and one for this application,
    ``AuditSourceIdentification``, and ``ParticipantObjectIdentification`` for each study
    (Study Instance UID, type 2 system object, role 3 report) and the patient (type 1, role 1).
    """
    at = iso_utc(row["at"])
    event = str(row["event"])
    parts = [
        "<AuditMessage>",
        f"<EventIdentification EventActionCode={quoteattr(row['action'])} EventDateTime={quoteattr(at)} "
        f"EventOutcomeIndicator={quoteattr(str(row['outcome']))}>",
        _code("EventID", EVENTS.get(event, "110100"), event),
    ]
    etype = str(row.get("event_type") or "")
    if etype in EVENT_TYPES:
        parts.append(_code("EventTypeCode", EVENT_TYPES[etype], etype))
    parts.append("</EventIdentification>")
    user = str(row.get("user") or row.get("ae_title") or "unknown")
    attrs = f"UserID={quoteattr(user)}"
    if row.get("ae_title"):
        attrs += f" AlternativeUserID={quoteattr('AETITLES=' + str(row['ae_title']))}"
    attrs += f" UserIsRequestor={quoteattr('true' if row.get('user_is_requestor', True) else 'false')}"
    peer = str(row.get("peer") or "")
    if peer:
        kind = "2" if peer.replace(".", "").isdigit() or ":" in peer else "1"  # 2: IP address, 1: machine name
        attrs += f" NetworkAccessPointID={quoteattr(peer)} NetworkAccessPointTypeCode={quoteattr(kind)}"
    role = ROLES.get(str(row.get("role") or ""))
    if role:
        parts += [f"<ActiveParticipant {attrs}>", _code("RoleIDCode", *role), "</ActiveParticipant>"]
    else:
        parts.append(f"<ActiveParticipant {attrs}/>")
    parts.append(
        f'<ActiveParticipant UserID={quoteattr(source_id)} UserIsRequestor="false" '
        f'NetworkAccessPointID={quoteattr(socket.gethostname())} NetworkAccessPointTypeCode="1">'
        + _code("RoleIDCode", *ROLES["application"])
        + "</ActiveParticipant>"
    )
    parts.append(
        f"<AuditSourceIdentification AuditSourceID={quoteattr(source_id)}>"
        '<AuditSourceTypeCode csd-code="4" codeSystemName="DCM" originalText="Application Server '
        'Process"/></AuditSourceIdentification>'
    )
    detail = str(row.get("detail") or "")
    for uid in str(row.get("study_uids") or "").split():
        parts.append(
            f"<ParticipantObjectIdentification ParticipantObjectID={quoteattr(uid)} "
            'ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3">'
            + _code("ParticipantObjectIDTypeCode", "110180", "Study Instance UID")
            + (f"<ParticipantObjectDescription>{escape(detail)}</ParticipantObjectDescription>" if detail else "")
            + "</ParticipantObjectIdentification>"
        )
    if row.get("patient_id"):
        parts.append(
            f"<ParticipantObjectIdentification ParticipantObjectID={quoteattr(str(row['patient_id']))} "
            'ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1">'
            + _code("ParticipantObjectIDTypeCode", "2", "Patient Number", "RFC-3881")
            + (
                f"<ParticipantObjectName>{escape(str(row.get('patient_name') or ''))}</ParticipantObjectName>"
                if row.get("patient_name")
                else ""
            )
            + "</ParticipantObjectIdentification>"
        )
    elif detail and not row.get("study_uids"):
        parts.append(
            f"<ParticipantObjectIdentification ParticipantObjectID={quoteattr(detail[:64])} "
            'ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="13">'
            + _code("ParticipantObjectIDTypeCode", "110182", "Node ID")
            + f"<ParticipantObjectDescription>{escape(detail)}</ParticipantObjectDescription>"
            "</ParticipantObjectIdentification>"
        )
    parts.append("</AuditMessage>")
    return "".join(parts)


# ----------------------------------------------------------------------------- helpers for the adapters


def query_detail(kind: str, level: str, keys: Any, matches: int | None = None) -> str:
    """``"C-FIND STUDY PatientID=123 StudyDate=2024* -> 3 matches"``: what a query asked, for ``detail``."""
    shown = " ".join(f"{k}={v}" for k, v in (keys or {}).items() if str(v or "").strip())[:700]
    tail = f" -> {matches} match{'es' if matches != 1 else ''}" if matches is not None else ""
    return f"{kind} {level}{' ' + shown if shown else ''}{tail}"


def query_subject(keys: Any, rows: Iterable[Any] = ()) -> tuple[str, str, tuple[str, ...]]:
    """``(patient_id, patient_name, study_uids)`` a query is about: the keys it named exactly, else what
    every match has in common (one patient), else nothing."""
    keys = keys or {}

    def exact(name: str) -> str:
        v = str(keys.get(name) or "").strip()
        return "" if any(c in v for c in "*?-") else v

    pid = exact("PatientID")
    studies_asked = tuple(u for u in exact("StudyInstanceUID").split("\\") if u)
    pname = ""
    found = {(str(r.get("PatientID") or ""), str(r.get("PatientName") or "")) for r in rows}
    if len(found) == 1:
        only = next(iter(found))
        if not pid or pid == only[0]:
            pid, pname = only
    return pid, pname, studies_asked


def group_by_patient(rows: Iterable[Any]) -> dict[tuple[str, str], tuple[list[str], int]]:
    """Instance rows (``PatientID``, ``PatientName``, ``StudyInstanceUID``) grouped per patient:
    ``{(id, name): ([study uids], instances)}``."""
    out: dict[tuple[str, str], tuple[list[str], int]] = {}
    for r in rows:
        key = (str(r.get("PatientID") or ""), str(r.get("PatientName") or ""))
        uids, n = out.get(key, ([], 0))
        uid = str(r.get("StudyInstanceUID") or "")
        if uid and uid not in uids:
            uids.append(uid)
        out[key] = (uids, n + 1)
    return out
