"""Forwarding rules, the persistent forwarding queue, routing, and per-destination status.

The ``[[forward]]`` rules of ``hilum.toml`` say which arriving instances go
to which destination: a ``[peers.NAME]`` (sent with C-STORE) or a
``[dicomweb_sources.NAME]`` (sent with STOW-RS).  This module is the index
side of forwarding — SQL lives in the archive layer; the sending is done by
:mod:`hilum.replication`, which calls the functions here:

* :func:`route` — the router.  It never runs in the ingest thread (no
  transaction per received instance): it scans the instances from a
  persisted high-water mark (one ``forward_queue`` row per rule in the state
  ``mark``: the newest ``received_at`` in ``next_try``, the highest instance
  key in ``attempts``) and inserts one queue row per (destination, SOP
  Instance UID).  The unique index on that pair makes it idempotent, so a
  crash between the C-STORE response and the routing loses nothing (the next
  scan finds the instance again) and queues nothing twice.  A full scan goes
  back :data:`PK_OVERLAP` keys and :data:`OVERLAP` seconds before the mark:
  an ingest transaction that commits after a later one (several
  associations, several nodes on one PostgreSQL) is still seen.  Between
  full scans the service scans only the keys above the last one it saw.
* :func:`claim` — rows due for sending, marked ``claimed_by`` / ``claimed_at``
  so two nodes sharing one PostgreSQL never send the same row at once (the
  claim's UPDATE re-checks ``claimed_by`` on each row it takes).
* :func:`mark_sent`, :func:`mark_committed`, :func:`mark_retry`,
  :func:`mark_failed`, :func:`commitment_report` — the state changes.

States: ``pending`` → ``sent`` → ``committed``, or ``failed`` (refused for
good by the peer, or ``max_attempts`` reached) with ``last_error``.  A row is
``sent`` and final when the peer does not do Storage Commitment (C-STORE
success / STOW-RS 200 is then the confirmation); it is ``sent`` with a
``transaction_uid`` while a commitment report is awaited (PS3.4 J.3).  An
instance is confirmed at a peer — :func:`hilum.archive.storage.record_copy`
``peer:NAME``, verified — when committed, or sent to a peer that does not do
commitment; retention counts on those copies.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from hilum.archive.schema import blob_copies, forward_queue, instances, patients, series, studies
from hilum.archive.storage import (
    TaskReport,
    as_utc,
    log_action,
    matches,
    record_copy,
    rule_error,
    study_fully_held_elsewhere,
    utcnow,
)
from hilum.processes import pid_alive

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger("hilum.storage")

MARK = "#mark"
"""``forward_queue.destination`` of the high-water-mark rows (one per rule; ``sop_uid`` is the rule's key)."""

OVERLAP = 300.0
"""Seconds each routing scan goes back before the mark (ingests committing out of order, clocks of nodes)."""

CLAIM_STALE = 900.0
"""Seconds after which a claim of a node that went away (kill -9) may be taken over."""

SCAN_CHUNK = 2000

PK_OVERLAP = 10_000
"""Instance keys a full routing scan goes back before the mark (keys of transactions that committed late)."""
STATES = ("pending", "sent", "committed", "failed")
COMMITMENT = ("auto", "always", "never")

RULE_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "destination": str,
    "modalities": list,
    "source_aets": list,
    "sop_classes": list,
    "commitment": str,
}
SETTING_KEYS: dict[str, type | tuple[type, ...]] = {
    "retry_initial": (int, float),
    "retry_max": (int, float),
    "max_attempts": int,
    "batch": int,
    "commitment_timeout": (int, float),
    "associations": int,
}


@dataclass(frozen=True)
class ForwardRule:
    """One ``[[forward]]`` table: which instances go to ``destination`` (``kind``: ``dimse`` or ``dicomweb``)."""

    name: str
    destination: str
    kind: str
    modalities: tuple[str, ...] = ()
    source_aets: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    commitment: str = "auto"

    @property
    def key(self) -> str:
        """The rule's key in the high-water-mark rows."""
        return f"{self.name}>{self.destination}"[:64]

    def matches(self, modality: str, source_aet: str, sop_class: str) -> bool:
        return (
            matches(modality, self.modalities)
            and matches(source_aet, self.source_aets)
            and matches(sop_class, self.sop_classes)
        )


@dataclass
class ForwardRules:
    """The ``[[forward]]`` rules and the ``[forwarding]`` settings; no rule: forwarding does nothing."""

    rules: list[ForwardRule] = field(default_factory=list)
    retry_initial: float = 10.0
    retry_max: float = 3600.0
    max_attempts: int = 0
    batch: int = 64
    commitment_timeout: float = 120.0
    associations: int = 2  # per destination, each sending its own batches (beyond the contract: an extension)

    @property
    def destinations(self) -> dict[str, ForwardRule]:
        """Destination name → its first rule (kind and commitment setting)."""
        out: dict[str, ForwardRule] = {}
        for r in self.rules:
            out.setdefault(r.destination, r)
        return out

    def backoff(self, attempts: int) -> float:
        """Seconds before try number ``attempts + 1`` (doubling from ``retry_initial`` up to ``retry_max``)."""
        return float(min(self.retry_max, self.retry_initial * (2 ** max(0, min(attempts - 1, 30)))))


# --------------------------------------------------------------------------- parse


def parse(doc: dict[str, Any], text: str, source: str) -> ForwardRules:
    """The ``[[forward]]`` rules and ``[forwarding]`` settings of a parsed ``hilum.toml``."""
    out = ForwardRules()
    settings = doc.get("forwarding", {})
    if not isinstance(settings, dict):
        raise rule_error(source, text, "forwarding", "must be a table")
    for key, value in settings.items():
        kind = SETTING_KEYS.get(key)
        if kind is None:
            raise rule_error(source, text, "forwarding", f"unknown setting (known: {', '.join(SETTING_KEYS)})", key=key)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise rule_error(
                source,
                text,
                "forwarding",
                f"must be {'a whole number' if kind is int else 'a number'}, not {value!r}",
                key=key,
            )
    for key in ("retry_initial", "retry_max", "commitment_timeout"):
        value = settings.get(key, getattr(out, key))
        if value <= 0:
            raise rule_error(source, text, "forwarding", f"must be more than 0 seconds, not {value!r}", key=key)
        setattr(out, key, float(value))
    if out.retry_max < out.retry_initial:
        raise rule_error(
            source, text, "forwarding", f"must be at least retry_initial ({out.retry_initial:g})", key="retry_max"
        )
    out.max_attempts = int(settings.get("max_attempts", 0))
    if out.max_attempts < 0:
        raise rule_error(source, text, "forwarding", "must be 0 (forever) or more", key="max_attempts")
    out.associations = int(settings.get("associations", out.associations))
    if not 1 <= out.associations <= 16:
        raise rule_error(source, text, "forwarding", f"must be 1 to 16, not {out.associations}", key="associations")
    out.batch = int(settings.get("batch", out.batch))
    if not 1 <= out.batch <= 10000:
        raise rule_error(source, text, "forwarding", f"must be 1 to 10000, not {out.batch}", key="batch")

    tables = doc.get("forward", [])
    if not isinstance(tables, list):
        raise rule_error(source, text, "forward", "must be an array of tables: [[forward]]")
    peers = doc.get("peers", {}) if isinstance(doc.get("peers"), dict) else {}
    web = doc.get("dicomweb_sources", {}) if isinstance(doc.get("dicomweb_sources"), dict) else {}
    names: set[str] = set()
    for i, t in enumerate(tables):
        if not isinstance(t, dict):
            raise rule_error(source, text, "forward", "must be a table", index=i)
        for key, value in t.items():
            kind = RULE_KEYS.get(key)
            if kind is None:
                raise rule_error(
                    source, text, "forward", f"unknown key (known: {', '.join(RULE_KEYS)})", key=key, index=i
                )
            if not isinstance(value, kind) or isinstance(value, bool):
                want = "a list of strings" if kind is list else "a string"
                raise rule_error(source, text, "forward", f"must be {want}, not {value!r}", key=key, index=i)
            if isinstance(value, list) and not all(isinstance(v, str) and v.strip() for v in value):
                raise rule_error(source, text, "forward", "must be a list of non-empty strings", key=key, index=i)
        dest = t.get("destination")
        if not dest:
            raise rule_error(
                source, text, "forward", "a destination is required ([peers.NAME] or [dicomweb_sources.NAME])", index=i
            )
        if dest in peers:
            kind_ = "dimse"
        elif dest in web:
            kind_ = "dicomweb"
        else:
            known = ", ".join(sorted(set(peers) | set(web))) or "none"
            raise rule_error(
                source,
                text,
                "forward",
                f"no peer called {dest!r} in [peers] or [dicomweb_sources] (known: {known})",
                key="destination",
                index=i,
            )
        commitment = t.get("commitment", "auto")
        if commitment not in COMMITMENT:
            raise rule_error(
                source,
                text,
                "forward",
                f"must be one of {', '.join(COMMITMENT)}, not {commitment!r}",
                key="commitment",
                index=i,
            )
        if kind_ == "dicomweb" and commitment == "always":
            raise rule_error(
                source,
                text,
                "forward",
                "a DICOMweb destination has no Storage Commitment "
                "(STOW-RS 200 is its confirmation): use 'auto' or 'never'",
                key="commitment",
                index=i,
            )
        name = str(t.get("name") or f"forward-{i + 1}")
        if name in names:
            raise rule_error(source, text, "forward", f"a rule called {name!r} is there already", key="name", index=i)
        names.add(name)
        if len(dest) > 60 or dest.startswith("#"):
            raise rule_error(
                source,
                text,
                "forward",
                "a destination name is at most 60 characters and does not start with '#'",
                key="destination",
                index=i,
            )
        out.rules.append(
            ForwardRule(
                name=name,
                destination=dest,
                kind=kind_,
                modalities=tuple(v.strip().upper() for v in t.get("modalities", [])),
                source_aets=tuple(v.strip() for v in t.get("source_aets", [])),
                sop_classes=tuple(v.strip() for v in t.get("sop_classes", [])),
                commitment=commitment,
            )
        )
    for dest in {r.destination for r in out.rules}:
        modes = {r.commitment for r in out.rules if r.destination == dest}
        if len(modes) > 1:
            first = next(r.commitment for r in out.rules if r.destination == dest)
            i = next(n for n, r in enumerate(out.rules) if r.destination == dest and r.commitment != first)
            raise rule_error(
                source,
                text,
                "forward",
                f"rules for {dest!r} disagree on commitment ({', '.join(sorted(modes))})",
                key="commitment",
                index=i,
            )
    return out


# --------------------------------------------------------------------------- routing


def _marks(conn: Connection) -> dict[str, tuple[datetime | None, int]]:
    """Rule key -> (the newest ``received_at`` and the highest instance key its last full scan saw)."""
    q = forward_queue.c
    rows = conn.execute(select(q.sop_uid, q.next_try, q.attempts).where(q.destination == MARK)).all()
    return {r[0]: (as_utc(r[1]), int(r[2] or 0)) for r in rows}


def _candidates(conn: Connection, after_pk: int) -> list[Any]:
    i, s = instances.c, series.c
    stmt = (
        select(i.pk, i.sop_uid, i.sop_class_uid, i.source_aet, i.received_at, s.modality, studies.c.study_uid, i.size)
        .select_from(instances.join(series, series.c.pk == i.series_fk).join(studies, studies.c.pk == s.study_fk))
        .where(i.pk > after_pk)
        .order_by(i.pk)
        .limit(SCAN_CHUNK)
    )
    return list(conn.execute(stmt).all())


def route(
    archive: Archive,
    rules: ForwardRules,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    after_pk: int | None = None,
) -> TaskReport:
    """Queue the instances that arrived since the last scan for the destinations their rules name.

    A full scan (``after_pk`` None) starts :data:`PK_OVERLAP` instance keys
    before each rule's mark and skips what arrived :data:`OVERLAP` seconds
    before it (a rule never seen: every instance, a backfill), then moves
    the marks.  ``after_pk``: only instances with a higher key (the
    service's quick scan after an arrival; its periodic full scans catch
    what committed out of order).  Returns a report: ``instances`` queued
    now; in a dry run ``actions`` lists per study what would be queued
    (``uid``, ``rule``, ``instances``, ``bytes``, ``reason``) and nothing changes.
    """
    report, _ = scan(archive, rules, dry_run=dry_run, now=now, after_pk=after_pk)
    return report


def scan(
    archive: Archive,
    rules: ForwardRules,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    after_pk: int | None = None,
) -> tuple[TaskReport, int]:
    """:func:`route`, and the highest instance key it saw (``after_pk`` for the next quick scan)."""
    report = TaskReport("forwarding", dry_run=dry_run)
    if not rules.rules:
        return report, after_pk or 0
    now = now or utcnow()
    with archive.engine.connect() as conn:
        marks = _marks(conn) if after_pk is None else {}
    if after_pk is None:
        starts = [marks.get(r.key) for r in rules.rules]
        after = 0 if any(m is None for m in starts) else max(0, min(m[1] for m in starts if m) - PK_OVERLAP)
    else:
        after = after_pk
    new_marks: dict[str, tuple[datetime | None, int]] = {}
    top = after
    while True:
        with archive.engine.connect() as conn:
            rows = _candidates(conn, after)
        if not rows:
            break
        after = top = rows[-1][0]
        wanted: dict[tuple[str, str], tuple[str, int, str]] = {}  # (destination, sop) -> (study, size, rule)
        for pk, sop, cls, aet, received, modality, study_uid, size in rows:
            received = as_utc(received)
            for r in rules.rules:
                mark = marks.get(r.key)
                if mark is not None and mark[0] is not None and received is not None:
                    if received < mark[0] - timedelta(seconds=OVERLAP) and pk <= mark[1]:
                        continue
                old = new_marks.get(r.key, (None, 0))
                newest = received if old[0] is None or (received is not None and received > old[0]) else old[0]
                new_marks[r.key] = (newest, max(old[1], int(pk)))
                if r.matches(modality or "", aet or "", cls or ""):
                    if (r.destination, sop) not in wanted:
                        wanted[(r.destination, sop)] = (study_uid, int(size or 0), r.name)
        report.instances += _enqueue(archive, wanted, now, dry_run=dry_run, report=report)
    if dry_run:
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for a in report.actions:
            m = merged.setdefault((a["uid"], a["destination"]), {**a, "instances": 0, "bytes": 0})
            m["instances"] += a["instances"]
            m["bytes"] += a["bytes"]
        report.actions = list(merged.values())
    elif new_marks and after_pk is None:
        _save_marks(archive, new_marks, now)
    if report.instances and not dry_run:
        log.info("forwarding: %d instance(s) queued", report.instances)
    return report, top


def _enqueue(
    archive: Archive,
    wanted: Mapping[tuple[str, str], tuple[str, int, str]],
    now: datetime,
    *,
    dry_run: bool,
    report: TaskReport,
) -> int:
    q = forward_queue.c
    for attempt in (1, 2, 3):
        with archive.engine.connect() as conn:
            have: set[tuple[str, str]] = set()
            by_dest: dict[str, list[str]] = {}
            for dest, sop in wanted:
                by_dest.setdefault(dest, []).append(sop)
            for dest, sops in by_dest.items():
                for start in range(0, len(sops), 500):
                    chunk = sops[start : start + 500]
                    have |= {
                        (dest, r[0])
                        for r in conn.execute(select(q.sop_uid).where(q.destination == dest, q.sop_uid.in_(chunk)))
                    }
        missing = [(k, v) for k, v in wanted.items() if k not in have]
        if dry_run:
            studies_: dict[tuple[str, str], dict[str, Any]] = {}
            for (dest, _sop), (study, size, rule) in missing:
                a = studies_.setdefault(
                    (study, dest),
                    {
                        "uid": study,
                        "rule": rule,
                        "destination": dest,
                        "instances": 0,
                        "bytes": 0,
                        "reason": f"not yet queued for {dest}",
                    },
                )
                a["instances"] += 1
                a["bytes"] += size
            report.actions += list(studies_.values())
            return len(missing)
        if not missing:
            return 0
        try:
            with archive.transaction() as conn:
                conn.execute(
                    forward_queue.insert(),
                    [
                        {
                            "destination": dest,
                            "sop_uid": sop,
                            "study_uid": study,
                            "state": "pending",
                            "attempts": 0,
                            "next_try": now,
                            "last_error": "",
                            "transaction_uid": "",
                            "claimed_by": "",
                            "created_at": now,
                            "updated_at": now,
                        }
                        for (dest, sop), (study, _size, _rule) in missing
                    ],
                )
            return len(missing)
        except IntegrityError:
            if attempt == 3:
                raise
            log.debug("forwarding: another node queued some of these at the same time; again")
    return 0


def _save_marks(archive: Archive, marks: Mapping[str, tuple[datetime | None, int]], now: datetime) -> None:
    q = forward_queue.c
    with archive.transaction() as conn:
        for key, (at, pk) in marks.items():
            row = conn.execute(
                select(q.pk, q.next_try, q.attempts).where(q.destination == MARK, q.sop_uid == key)
            ).first()
            if row is None:
                conn.execute(
                    forward_queue.insert().values(
                        destination=MARK,
                        sop_uid=key,
                        study_uid="",
                        state="mark",
                        attempts=pk,
                        next_try=at or now,
                        last_error="",
                        transaction_uid="",
                        claimed_by="",
                        created_at=now,
                        updated_at=now,
                    )
                )
                continue
            old_at = as_utc(row[1])
            newest = at if at is not None and (old_at is None or at > old_at) else old_at
            conn.execute(
                update(forward_queue)
                .where(q.pk == row[0])
                .values(next_try=newest or now, attempts=max(int(row[2] or 0), pk), updated_at=now)
            )


def run_once(
    archive: Archive, rules: ForwardRules, *, dry_run: bool = False, now: datetime | None = None
) -> TaskReport:
    """The policy interface: one routing scan (the sending is :class:`hilum.replication.ForwardService`'s)."""
    return route(archive, rules, dry_run=dry_run, now=now)


# --------------------------------------------------------------------------- claiming and states


_HOST = socket.gethostname().replace(".", "_")[:32] or "host"


def _claim_token() -> str:
    """``host.pid.random``: who holds a row, so that the claims of a process of this host that died (kill -9)
    can be taken back at once (:func:`release_dead_claims`) rather than after :data:`CLAIM_STALE`."""
    return f"{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:12]}"[:64]




def release_dead_claims(archive: Archive) -> int:
    """Give back the rows claimed by processes of this host that are gone; returns how many."""
    q = forward_queue.c
    with archive.engine.connect() as conn:
        holders = [r[0] for r in conn.execute(select(q.claimed_by).where(q.claimed_by != "").distinct())]
    dead = []
    for h in holders:
        parts = h.split(".")
        if len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit():
            pid = int(parts[1])
            if pid != os.getpid() and not pid_alive(pid):
                dead.append(h)
    if not dead:
        return 0
    with archive.transaction() as conn:
        res = conn.execute(update(forward_queue).where(q.claimed_by.in_(dead)).values(claimed_by="", claimed_at=None))
    n = int(res.rowcount or 0)
    if n:
        log.info("forwarding: %d row(s) claimed by a process that is gone are due again", n)
    return n


@dataclass
class QueueItem:
    """A claimed queue row, with what the sender needs of its instance (None when it is gone)."""

    pk: int
    destination: str
    sop_uid: str
    study_uid: str
    state: str
    attempts: int
    transaction_uid: str
    instance_pk: int | None = None
    sop_class_uid: str = ""
    transfer_syntax: str = ""
    blob_key: str = ""
    size: int = 0


def claim(archive: Archive, destination: str, limit: int, *, now: datetime | None = None) -> list[QueueItem]:
    """Claim up to ``limit`` due rows of ``destination`` for this process; returns them.

    Due: ``pending`` rows, and ``sent`` rows still waiting for a commitment
    report (a ``transaction_uid``) whose wait is over (they are asked again).

    A row is due when its ``next_try`` has come and nobody holds it (or the
    holder's claim is older than :data:`CLAIM_STALE`).  The UPDATE re-checks
    the claim on every row it takes, so of two nodes racing for a row only
    one gets it (PostgreSQL re-evaluates the WHERE of a row updated
    concurrently; SQLite has one writer).
    """
    now = now or utcnow()
    q = forward_queue.c
    token = _claim_token()
    free = or_(q.claimed_by == "", q.claimed_at.is_(None), q.claimed_at < now - timedelta(seconds=CLAIM_STALE))
    with archive.transaction() as conn:
        pks = [
            r[0]
            for r in conn.execute(
                select(q.pk)
                .where(q.destination == destination, _due_state(), q.next_try <= now, free)
                .order_by(q.next_try, q.pk)
                .limit(limit)
            )
        ]
        if not pks:
            return []
        conn.execute(update(forward_queue).where(q.pk.in_(pks), free).values(claimed_by=token, claimed_at=now))
        rows = conn.execute(
            select(q.pk, q.destination, q.sop_uid, q.study_uid, q.state, q.attempts, q.transaction_uid)
            .where(q.claimed_by == token)
            .order_by(q.pk)
        ).all()
    items = [QueueItem(int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), r[6]) for r in rows]
    i = instances.c
    by_sop = {it.sop_uid: it for it in items}
    with archive.engine.connect() as conn:
        sops = list(by_sop)
        for start in range(0, len(sops), 500):
            for r in conn.execute(
                select(i.pk, i.sop_uid, i.sop_class_uid, i.transfer_syntax, i.blob_key, i.size).where(
                    i.sop_uid.in_(sops[start : start + 500])
                )
            ):
                it = by_sop[r[1]]
                it.instance_pk, it.sop_class_uid, it.transfer_syntax, it.blob_key, it.size = (
                    int(r[0]),
                    r[2],
                    r[3],
                    r[4],
                    int(r[5]),
                )
    return items


def _due_state() -> Any:
    q = forward_queue.c
    return or_(q.state == "pending", and_(q.state == "sent", q.transaction_uid != ""))


def patient_changed(archive: Archive, sop_uids: Sequence[str]) -> set[str]:
    """Those of ``sop_uids`` whose patient HL7 ADT changed since they were stored (sent as
    :meth:`Archive.read_outgoing` corrects them, not byte for byte)."""
    i = instances.c
    out: set[str] = set()
    with archive.engine.connect() as conn:
        for start in range(0, len(sop_uids), 500):
            stmt = (
                select(i.sop_uid)
                .select_from(
                    instances.join(series, series.c.pk == i.series_fk)
                    .join(studies, studies.c.pk == series.c.study_fk)
                    .join(patients, patients.c.pk == studies.c.patient_fk)
                )
                .where(
                    i.sop_uid.in_(list(sop_uids[start : start + 500])),
                    patients.c.revision != 0,
                    patients.c.revision != i.patient_rev,
                )
            )
            out |= {r[0] for r in conn.execute(stmt)}
    return out


def release(archive: Archive, items: Iterable[QueueItem]) -> None:
    """Give claimed rows back untouched (the service is stopping)."""
    pks = [it.pk for it in items]
    if not pks:
        return
    with archive.transaction() as conn:
        conn.execute(update(forward_queue).where(forward_queue.c.pk.in_(pks)).values(claimed_by="", claimed_at=None))


def _confirm(conn: Connection, items: Sequence[QueueItem], destination: str, detail: str) -> None:
    """Record the ``peer:`` copies of confirmed instances and log each study that became fully replicated."""
    location = f"peer:{destination}"
    touched: dict[str, int] = {}
    pks = [it.instance_pk for it in items if it.instance_pk is not None]
    for it in items:
        if it.instance_pk is not None:
            touched[it.study_uid] = touched.get(it.study_uid, 0) + 1
    _record_copies(conn, pks, location)
    for study_uid, n in touched.items():
        pk = conn.execute(select(studies.c.pk).where(studies.c.study_uid == study_uid)).scalar()
        if pk is not None and location in study_fully_held_elsewhere(conn, int(pk)):
            total = conn.execute(select(studies.c.num_instances).where(studies.c.pk == pk)).scalar() or 0
            log_action(
                conn,
                "forward",
                study_uid,
                rule=destination,
                instances=int(total),
                detail=f"replicated to {location} ({detail}; last {n} instance(s))",
            )


def _record_copies(conn: Connection, pks: Sequence[int], location: str) -> None:
    """:func:`hilum.archive.storage.record_copy` (verified, now) for many instances in three statements."""
    if len(pks) == 1:
        record_copy(conn, pks[0], location, verified=True)
        return
    c = blob_copies.c
    now = utcnow()
    have = {r[0] for r in conn.execute(select(c.instance_fk).where(c.location == location, c.instance_fk.in_(pks)))}
    if have:
        conn.execute(
            update(blob_copies)
            .where(c.location == location, c.instance_fk.in_(list(have)))
            .values(verified_at=now, key="", checksum="", size=0, retain_until=None)
        )
    new = [pk for pk in pks if pk not in have]
    if new:
        conn.execute(
            blob_copies.insert(),
            [
                {
                    "instance_fk": pk,
                    "location": location,
                    "key": "",
                    "checksum": "",
                    "size": 0,
                    "verified_at": now,
                    "retain_until": None,
                    "created_at": now,
                }
                for pk in new
            ],
        )


def mark_sent(
    archive: Archive,
    items: Sequence[QueueItem],
    *,
    transaction_uid: str = "",
    wait: float = 0.0,
    error: str = "",
    now: datetime | None = None,
) -> None:
    """The peer took these instances.  Without ``transaction_uid`` that is the confirmation (the copy is
    recorded, the row final); with one, a commitment report is awaited (asked again after ``wait`` seconds)."""
    if not items:
        return
    now = now or utcnow()
    q = forward_queue.c
    with archive.transaction() as conn:
        conn.execute(
            update(forward_queue)
            .where(q.pk.in_([it.pk for it in items]))
            .values(
                state="sent",
                transaction_uid=transaction_uid,
                last_error=error,
                claimed_by="",
                claimed_at=None,
                next_try=now + timedelta(seconds=wait),
                updated_at=now,
            )
        )
        if not transaction_uid:
            _confirm(conn, items, items[0].destination, "C-STORE/STOW-RS success")


def mark_committed(archive: Archive, items: Sequence[QueueItem], *, now: datetime | None = None) -> None:
    if not items:
        return
    now = now or utcnow()
    q = forward_queue.c
    with archive.transaction() as conn:
        conn.execute(
            update(forward_queue)
            .where(q.pk.in_([it.pk for it in items]))
            .values(state="committed", last_error="", claimed_by="", claimed_at=None, updated_at=now)
        )
        _confirm(conn, items, items[0].destination, "storage commitment")


def mark_retry(
    archive: Archive,
    rules: ForwardRules,
    items: Sequence[QueueItem],
    error: str,
    *,
    state: str = "pending",
    count: bool = True,
    now: datetime | None = None,
) -> None:
    """Try these again later (backoff by attempts); ``failed`` at once when ``max_attempts`` is reached."""
    if not items:
        return
    now = now or utcnow()
    q = forward_queue.c
    groups: dict[int, list[int]] = {}
    for it in items:
        groups.setdefault(it.attempts + (1 if count else 0), []).append(it.pk)
    with archive.transaction() as conn:
        for attempts, pks in groups.items():
            gave_up = bool(rules.max_attempts) and attempts >= rules.max_attempts
            conn.execute(
                update(forward_queue)
                .where(q.pk.in_(pks))
                .values(
                    state="failed" if gave_up else state,
                    attempts=attempts,
                    last_error=error[:2000],
                    claimed_by="",
                    claimed_at=None,
                    next_try=now + timedelta(seconds=rules.backoff(attempts)),
                    updated_at=now,
                )
            )
    log.warning("forwarding to %s: %d instance(s) to retry: %s", items[0].destination, len(items), error)


def mark_failed(archive: Archive, items: Sequence[QueueItem], error: str, *, now: datetime | None = None) -> None:
    """Refused for good (the peer said so, or the instance is gone): no more tries."""
    if not items:
        return
    now = now or utcnow()
    q = forward_queue.c
    with archive.transaction() as conn:
        for it in items:
            conn.execute(
                update(forward_queue)
                .where(q.pk == it.pk)
                .values(
                    state="failed",
                    attempts=it.attempts + 1,
                    last_error=error[:2000],
                    claimed_by="",
                    claimed_at=None,
                    updated_at=now,
                )
            )
    log.warning("forwarding to %s: %d instance(s) failed for good: %s", items[0].destination, len(items), error)


def commitment_report(
    archive: Archive,
    transaction_uid: str,
    committed: Iterable[str],
    failed: Mapping[str, int] | None = None,
    *,
    rules: ForwardRules | None = None,
    destinations: Sequence[str] | None = None,
    now: datetime | None = None,
) -> int:
    """A Storage Commitment report (N-EVENT-REPORT, PS3.4 J.3.3) for ``transaction_uid``: the committed
    SOP Instance UIDs become ``committed``, the failed ones go back to ``pending`` to be sent again.

    Called by the sender (report on its association) and by the node's DIMSE SCP (report on a new
    association; ``destinations``: only rows queued for these).  Returns how many rows it changed
    (0: not one of our transactions).
    """
    if not transaction_uid:
        return 0
    now = now or utcnow()
    failed = dict(failed or {})
    committed = set(committed)
    q = forward_queue.c
    stmt = select(q.pk, q.destination, q.sop_uid, q.study_uid, q.state, q.attempts, q.transaction_uid).where(
        q.transaction_uid == transaction_uid, q.state == "sent"
    )
    if destinations is not None:
        stmt = stmt.where(q.destination.in_(list(destinations)))
    with archive.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    items = [QueueItem(int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), r[6]) for r in rows]
    if not items:
        return 0
    i = instances.c
    with archive.engine.connect() as conn:
        pks = dict(conn.execute(select(i.sop_uid, i.pk).where(i.sop_uid.in_([it.sop_uid for it in items]))).all())
    for it in items:
        it.instance_pk = pks.get(it.sop_uid)
    ok = [it for it in items if it.sop_uid in committed]
    bad = [it for it in items if it.sop_uid in failed]
    mark_committed(archive, ok, now=now)
    if bad:
        reasons = sorted({f"0x{failed[it.sop_uid]:04X}" for it in bad})
        mark_retry(
            archive, rules or ForwardRules(), bad, f"storage commitment failed (reason {', '.join(reasons)})", now=now
        )
    log.info(
        "storage commitment %s from %s: %d committed, %d failed",
        transaction_uid,
        items[0].destination,
        len(ok),
        len(bad),
    )
    return len(ok) + len(bad)


def retry(
    archive: Archive, destination: str | None = None, *, failed_only: bool = False, now: datetime | None = None
) -> int:
    """Make failed (and, unless ``failed_only``, waiting pending) rows due now; returns how many."""
    now = now or utcnow()
    q = forward_queue.c
    states = ["failed"] if failed_only else ["failed", "pending"]
    cond = and_(q.state.in_(states), q.destination != MARK)
    if destination:
        cond = and_(cond, q.destination == destination)
    with archive.transaction() as conn:
        res = conn.execute(
            update(forward_queue)
            .where(cond)
            .values(state="pending", next_try=now, attempts=0, claimed_by="", claimed_at=None, updated_at=now)
        )
    return int(res.rowcount or 0)


def enqueue(
    archive: Archive, destination: str, sop_uids: Iterable[str], *, now: datetime | None = None, again: bool = False
) -> int:
    """Queue instances for ``destination`` by hand (``hilum forward send``); ``again``: even those sent before."""
    now = now or utcnow()
    i, s = instances.c, series.c
    sops = list(dict.fromkeys(sop_uids))
    wanted: dict[tuple[str, str], tuple[str, int, str]] = {}
    with archive.engine.connect() as conn:
        for start in range(0, len(sops), 500):
            for sop, study_uid, size in conn.execute(
                select(i.sop_uid, studies.c.study_uid, i.size)
                .select_from(
                    instances.join(series, series.c.pk == i.series_fk).join(studies, studies.c.pk == s.study_fk)
                )
                .where(i.sop_uid.in_(sops[start : start + 500]))
            ):
                wanted[(destination, sop)] = (study_uid, int(size), "by hand")
    n = _enqueue(archive, wanted, now, dry_run=False, report=TaskReport("forwarding"))
    if again:
        q = forward_queue.c
        with archive.transaction() as conn:
            for start in range(0, len(sops), 500):
                res = conn.execute(
                    update(forward_queue)
                    .where(q.destination == destination, q.sop_uid.in_(sops[start : start + 500]), q.state != "pending")
                    .values(
                        state="pending",
                        next_try=now,
                        attempts=0,
                        transaction_uid="",
                        claimed_by="",
                        claimed_at=None,
                        updated_at=now,
                    )
                )
                n += int(res.rowcount or 0)
    return n


# --------------------------------------------------------------------------- status


def status(archive: Archive, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per destination: ``pending``, ``sent``, ``committed``, ``failed`` counts, ``last_error`` (newest),
    ``next_try`` (earliest due pending row), ``oldest_pending`` (when the oldest pending row was queued),
    and ``awaiting_commitment`` (sent rows with a commitment report outstanding)."""
    q = forward_queue.c
    out: dict[str, dict[str, Any]] = {}
    with archive.engine.connect() as conn:
        for dest, state, n in conn.execute(
            select(q.destination, q.state, func.count()).where(q.destination != MARK).group_by(q.destination, q.state)
        ):
            d = out.setdefault(dest, empty_status(dest))
            if state in STATES:
                d[state] = int(n)
        for dest, n in conn.execute(
            select(q.destination, func.count())
            .where(q.destination != MARK, q.state == "sent", q.transaction_uid != "")
            .group_by(q.destination)
        ):
            out.setdefault(dest, empty_status(dest))["awaiting_commitment"] = int(n)
        for dest, nt, created in conn.execute(
            select(q.destination, func.min(q.next_try), func.min(q.created_at))
            .where(q.destination != MARK, q.state == "pending")
            .group_by(q.destination)
        ):
            d = out.setdefault(dest, empty_status(dest))
            d["next_try"] = as_utc(nt)
            d["oldest_pending"] = as_utc(created)
        for dest in list(out):
            row = conn.execute(
                select(q.last_error, q.updated_at)
                .where(q.destination == dest, q.last_error != "")
                .order_by(q.updated_at.desc(), q.pk.desc())
                .limit(1)
            ).first()
            if row is not None:
                out[dest]["last_error"] = row[0]
                out[dest]["last_error_at"] = as_utc(row[1])
    return [out[k] for k in sorted(out)]


def empty_status(dest: str) -> dict[str, Any]:
    return {
        "destination": dest,
        "pending": 0,
        "sent": 0,
        "committed": 0,
        "failed": 0,
        "awaiting_commitment": 0,
        "last_error": "",
        "last_error_at": None,
        "next_try": None,
        "oldest_pending": None,
    }


def rows(
    archive: Archive, destination: str | None = None, state: str | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Queue rows (newest change first), for ``hilum forward status --rows`` and tests."""
    q = forward_queue.c
    stmt = (
        select(
            q.destination,
            q.sop_uid,
            q.study_uid,
            q.state,
            q.attempts,
            q.next_try,
            q.last_error,
            q.transaction_uid,
            q.updated_at,
        )
        .where(q.destination != MARK)
        .order_by(q.updated_at.desc(), q.pk.desc())
        .limit(limit)
    )
    if destination:
        stmt = stmt.where(q.destination == destination)
    if state:
        stmt = stmt.where(q.state == state)
    with archive.engine.connect() as conn:
        return [
            {
                "destination": r[0],
                "sop_uid": r[1],
                "study_uid": r[2],
                "state": r[3],
                "attempts": int(r[4]),
                "next_try": as_utc(r[5]),
                "last_error": r[6],
                "transaction_uid": r[7],
                "updated_at": as_utc(r[8]),
            }
            for r in conn.execute(stmt)
        ]


def next_due(archive: Archive) -> datetime | None:
    """When the next row of any destination comes due (None: nothing waits)."""
    q = forward_queue.c
    with archive.engine.connect() as conn:
        nt = conn.execute(
            select(func.min(q.next_try)).where(
                q.destination != MARK, or_(q.state == "pending", and_(q.state == "sent", q.transaction_uid != ""))
            )
        ).scalar()
    return as_utc(nt)
