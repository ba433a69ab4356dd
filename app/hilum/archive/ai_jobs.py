"""The AI auto-run queue in the index (table ``ai_jobs``): the SQL side of :mod:`hilum.ai.rules`.

A job is one plugin on one series. It is queued as soon as an instance of a matching series
arrives, due ``settle`` seconds later; every further instance pushes its due time back
(:func:`enqueue`), so a series runs once it has been quiet for that long ("arrived"). Because the
queue is in the index, a node that stops with jobs queued or running picks them up when it
starts again (:func:`requeue_interrupted`). Every write goes through the index writer's
transaction (``archive.transaction()``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, select, update

from hilum.archive.schema import ai_jobs
from hilum.archive.storage import as_utc, utcnow
from hilum.processes import pid_alive

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

__all__ = [
    "STATES",
    "AIJob",
    "cancel",
    "claim_due",
    "claimer",
    "enqueue",
    "finish",
    "get",
    "jobs",
    "requeue_interrupted",
]

STATES = ("queued", "running", "done", "failed", "cancelled")
_HOST = (socket.gethostname().replace(".", "_") or "host")[:40]


def claimer() -> str:
    """Who runs a job: ``host.pid`` of this process (so a restart on this host knows its own dead claims)."""
    return f"{_HOST}.{os.getpid()}"




@dataclass(frozen=True)
class AIJob:
    pk: int
    plugin: str
    plugin_version: str
    series_uid: str
    study_uid: str
    state: str
    rule: str
    not_before: datetime
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str
    result_series_uids: tuple[str, ...]
    claimed_by: str = ""

    @classmethod
    def of(cls, row: Any) -> AIJob:
        m = row._mapping
        return cls(
            pk=int(m["pk"]), plugin=m["plugin"], plugin_version=m["plugin_version"], series_uid=m["series_uid"],
            study_uid=m["study_uid"], state=m["state"], rule=m["rule"],
            not_before=as_utc(m["not_before"]) or utcnow(), attempts=int(m["attempts"]),
            created_at=as_utc(m["created_at"]) or utcnow(), started_at=as_utc(m["started_at"]),
            finished_at=as_utc(m["finished_at"]), error=m["error"],
            result_series_uids=tuple(m["result_series_uids"].split()), claimed_by=m["claimed_by"],
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("not_before", "created_at", "started_at", "finished_at"):
            d[k] = d[k].isoformat() if d[k] is not None else None
        d["result_series_uids"] = list(self.result_series_uids)
        return d


def enqueue(archive: Archive, plugin: str, version: str, series_uid: str, study_uid: str, *,
            settle: float, rule: str = "", now: datetime | None = None) -> tuple[int, bool]:  # fmt: skip
    """Queue *plugin* on *series_uid*, due ``settle`` seconds from now; a job already queued for
    the two only has its due time pushed back. Returns ``(pk, created)``."""
    now = now or utcnow()
    due = now + timedelta(seconds=max(0.0, settle))
    with archive.transaction() as conn:
        pk = conn.execute(
            select(ai_jobs.c.pk).where(
                and_(ai_jobs.c.series_uid == series_uid, ai_jobs.c.plugin == plugin, ai_jobs.c.state == "queued")
            )  # fmt: skip
        ).scalar()
        if pk is not None:
            conn.execute(update(ai_jobs).where(ai_jobs.c.pk == pk).values(not_before=due, plugin_version=version))
            return int(pk), False
        res = conn.execute(
            ai_jobs.insert().values(
                plugin=plugin,
                plugin_version=version,
                series_uid=series_uid,
                study_uid=study_uid,
                state="queued",
                rule=rule[:64],
                not_before=due,
                created_at=now,
            )  # fmt: skip
        )
        key = res.inserted_primary_key
        assert key is not None
        return int(key[0]), True


def claim_due(archive: Archive, now: datetime | None = None) -> AIJob | None:
    """The oldest due queued job, now marked running (None when none is due)."""
    now = now or utcnow()
    with archive.transaction() as conn:
        row = conn.execute(
            select(ai_jobs).where(and_(ai_jobs.c.state == "queued", ai_jobs.c.not_before <= now))
            .order_by(ai_jobs.c.not_before, ai_jobs.c.pk).limit(1)
        ).first()  # fmt: skip
        if row is None:
            return None
        pk = int(row._mapping["pk"])
        res = conn.execute(update(ai_jobs).where(and_(ai_jobs.c.pk == pk, ai_jobs.c.state == "queued"))
                           .values(state="running", started_at=now, attempts=ai_jobs.c.attempts + 1,
                                   claimed_by=claimer()))  # fmt: skip
        if not res.rowcount:
            return None  # another node sharing this index (scale-out) took it first
        row = conn.execute(select(ai_jobs).where(ai_jobs.c.pk == pk)).first()
        return AIJob.of(row)


def finish(archive: Archive, pk: int, state: str, *, error: str = "", results: Sequence[str] = ()) -> None:
    """Record the end of a running job: ``done`` (with its result series), ``failed`` (with the
    error), ``cancelled``, or ``queued`` again (interrupted: it will run again)."""
    if state not in STATES:
        raise ValueError(f"unknown job state {state!r}")
    values: dict[str, Any] = {"state": state, "error": error[:2000], "result_series_uids": " ".join(results)}
    values["finished_at"] = None if state == "queued" else utcnow()
    values["claimed_by"] = ""
    if state == "queued":
        values["started_at"] = None
    with archive.transaction() as conn:
        conn.execute(update(ai_jobs).where(ai_jobs.c.pk == pk).values(**values))


def requeue_interrupted(archive: Archive) -> int:
    """Jobs left ``running`` by a process of this host that is gone (a node that stopped or died; or
    this process, whose service is only starting) go back to ``queued``; returns how many. Jobs of
    other hosts sharing the index (scale-out) are theirs and left alone."""
    with archive.transaction() as conn:
        rows = conn.execute(select(ai_jobs.c.pk, ai_jobs.c.claimed_by).where(ai_jobs.c.state == "running")).fetchall()
        stale = []
        for pk, who in rows:
            host, _, pid = str(who).rpartition(".")
            if not who or (host == _HOST and pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid)))):
                stale.append(pk)
        if not stale:
            return 0
        res = conn.execute(update(ai_jobs).where(and_(ai_jobs.c.pk.in_(stale), ai_jobs.c.state == "running"))
                           .values(state="queued", started_at=None, claimed_by=""))  # fmt: skip
        return int(res.rowcount or 0)


def cancel(archive: Archive, pk: int) -> bool:
    """Cancel a queued job (a running one is cancelled by its service). True if it was queued."""
    with archive.transaction() as conn:
        res = conn.execute(update(ai_jobs).where(and_(ai_jobs.c.pk == pk, ai_jobs.c.state == "queued"))
                           .values(state="cancelled", finished_at=utcnow()))  # fmt: skip
        return bool(res.rowcount)


def get(archive: Archive, pk: int) -> AIJob | None:
    with archive.engine.connect() as conn:
        row = conn.execute(select(ai_jobs).where(ai_jobs.c.pk == pk)).first()
    return AIJob.of(row) if row is not None else None


def jobs(archive: Archive, *, state: str | None = None, series_uid: str | None = None,
         limit: int = 200) -> list[AIJob]:  # fmt: skip
    """Jobs, newest first (optionally of one state or series)."""
    q = select(ai_jobs)
    if state:
        q = q.where(ai_jobs.c.state == state)
    if series_uid:
        q = q.where(ai_jobs.c.series_uid == series_uid)
    with archive.engine.connect() as conn:
        rows = conn.execute(q.order_by(ai_jobs.c.pk.desc()).limit(limit)).fetchall()
    return [AIJob.of(r) for r in rows]
