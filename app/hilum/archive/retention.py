"""Retention and purge: rules by age, last access and modality, and disk watermarks.

Read from ``hilum.toml``::

    [retention]
    high_watermark = 90     # % of the online store used at which purging starts (0: off)
    low_watermark = 80      # purge down to this
    capacity_bytes = 0      # treat the online store as this big (0: its file system)
    require_copy = true     # drop an online copy only when a verified copy is elsewhere

    [[purge]]
    name = "old-cr"
    min_age_days = 365      # since the study arrived
    idle_days = 0           # not opened/retrieved for N days (0: ignore)
    modalities = []         # ModalitiesInStudy; empty: any
    scope = "online"        # | "everywhere"

Two kinds of purge:

* **online** — the study stays in the index; its online files go and its
  instances are marked ``online = false`` (a read brings them back from the
  tier that holds them, :mod:`hilum.archive.tiers`).  Only when every online
  instance has a verified copy elsewhere (``blob_copies.verified_at``: a tier
  copy read back with the instance's current checksum, a peer's Storage
  Commitment); with ``require_copy = false`` the instances that have none
  are deleted instead (nothing is left in the index that can no longer be
  read).
* **everywhere** — the study is deleted from the archive: its rows, its
  online files, and its copies on this node's tiers (never a write-once copy
  before its ``retain_until``: the study is then skipped).  Copies at peers
  are theirs and stay.

A study several rules match is purged by the first *everywhere* rule among
them (deleting covers dropping the online files), else by the first one.
The high watermark triggers an online purge of the least recently used
studies (``last_access``, else ``updated_at``) until the low watermark is
reached; with ``capacity_bytes`` the online bytes in the index are measured
against it (a quota; tests), else the file system of the blob store.

Never purged: a protected study, or any study of a protected patient
(``hilum protect``); a study being received (changed in the last
:data:`RECEIVING_MINUTES`); a study with instances still queued for
forwarding (the forwarder reads them here).  All of this is checked again inside
the transaction that purges, so a study that changed since it was planned is
left alone.

Crash safety: one transaction per study changes the rows and writes the
``purge`` row of the policy log; the files are deleted after it commits.
An offline row keeps its blob key and checksum (a recall writes the file
back under that key and verifies it), so the trash reaper, which deletes
only keys no row refers to, cannot delete those files: they are deleted by
:func:`_drop_online` under the tiers' recall lock (a file being recalled is
never taken for a purged one), and a kill before that leaves them for
:func:`sweep_offline` at the next pass (``hilum check`` counts such an
instance as offline, not missing).  Rows deleted (an *everywhere* purge,
``require_copy = false``) put their keys in the blob trash in the same
transaction, which the next reap (``hilum check``, the next pass) empties.
Tier objects of an *everywhere* purge are deleted after the commit: a kill
there leaves unreferenced objects in the tier (space, never a lost study).
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, delete, exists, func, or_, select
from sqlalchemy.engine import Connection

from hilum.archive import storage
from hilum.archive.index import chunks
from hilum.archive.model import ArchiveEvent
from hilum.archive.schema import blob_copies, forward_queue, instances, patients, series, studies
from hilum.errors import ConfigError

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger("hilum.storage")

RECEIVING_MINUTES = 10.0
"""A study changed (an instance arrived) less than this many minutes ago is being received: never purged."""

SCOPES = ("online", "everywhere")
WATERMARK_RULE = "watermark"

_RETENTION_KEYS: dict[str, str] = {
    "high_watermark": "percent",
    "low_watermark": "percent",
    "capacity_bytes": "count",
    "require_copy": "bool",
}
_PURGE_KEYS: dict[str, str] = {
    "name": "str",
    "min_age_days": "days",
    "idle_days": "days",
    "modalities": "list",
    "scope": "scope",
}


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class PurgeRule:
    """One ``[[purge]]`` table."""

    name: str
    min_age_days: float = 0.0
    idle_days: float = 0.0
    modalities: tuple[str, ...] = ()
    scope: str = "online"

    def matches(self, study: StudyState, now: datetime) -> bool:
        if storage.age_days(study.created_at, now) < self.min_age_days:
            return False
        if self.idle_days and storage.age_days(study.used_at, now) < self.idle_days:
            return False
        return storage.matches(study.modalities, self.modalities)


@dataclass(frozen=True)
class RetentionRules:
    """``[retention]`` and the ``[[purge]]`` rules; the defaults purge nothing."""

    high_watermark: float = 0.0
    low_watermark: float = 0.0
    capacity_bytes: int = 0
    require_copy: bool = True
    purge: tuple[PurgeRule, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.purge) or self.high_watermark > 0


def parse(doc: dict[str, Any], text: str, source: str) -> RetentionRules:
    """The ``[retention]`` table and ``[[purge]]`` rules of a parsed ``hilum.toml``.

    Raises :class:`ConfigError` naming the line for an unknown key, a value of
    the wrong type or out of range, a low watermark not below the high one, a
    purge rule with neither an age nor an idle time (it would purge every study).
    """
    table = doc.get("retention", {})
    if not isinstance(table, dict):
        raise storage.rule_error(source, text, "retention", "must be a table [retention]")
    values = {key: _value(source, text, "retention", None, key, value, _RETENTION_KEYS) for key, value in table.items()}
    high = float(values.get("high_watermark", 0.0))
    low = float(values.get("low_watermark", max(0.0, high - 10.0)))
    if high and low >= high:
        raise storage.rule_error(
            source, text, "retention", f"must be below high_watermark ({high:g}), not {low:g}", key="low_watermark"
        )
    rules_doc = doc.get("purge", [])
    if isinstance(rules_doc, dict):
        raise storage.rule_error(source, text, "purge", "must be an array of tables: write [[purge]], not [purge]")
    if not isinstance(rules_doc, list):
        raise storage.rule_error(source, text, "purge", "must be an array of tables [[purge]]")
    rules: list[PurgeRule] = []
    names: set[str] = set()
    for i, item in enumerate(rules_doc):
        if not isinstance(item, dict):
            raise storage.rule_error(source, text, "purge", "must be a table", index=i)
        got = {key: _value(source, text, "purge", i, key, value, _PURGE_KEYS) for key, value in item.items()}
        name = str(got.get("name") or f"purge-{i + 1}")
        if name in names:
            raise storage.rule_error(source, text, "purge", f"another rule is called {name!r}", key="name", index=i)
        names.add(name)
        rule = PurgeRule(
            name=name,
            min_age_days=float(got.get("min_age_days", 0.0)),
            idle_days=float(got.get("idle_days", 0.0)),
            modalities=tuple(got.get("modalities", ())),
            scope=str(got.get("scope", "online")),
        )
        if not rule.min_age_days and not rule.idle_days:
            raise storage.rule_error(
                source,
                text,
                "purge",
                "needs min_age_days or idle_days above 0 (with neither, every study would be purged)",
                index=i,
            )
        rules.append(rule)
    return RetentionRules(
        high_watermark=high,
        low_watermark=low,
        capacity_bytes=int(values.get("capacity_bytes", 0)),
        require_copy=bool(values.get("require_copy", True)),
        purge=tuple(rules),
    )


def _value(source: str, text: str, table: str, index: int | None, key: str, value: Any, known: dict[str, str]) -> Any:
    kind = known.get(key)

    def bad(message: str) -> ConfigError:
        return storage.rule_error(source, text, table, message, key=key, index=index)

    if kind is None:
        raise bad(f"unknown setting (known: {', '.join(known)})")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "percent":
        if not number or not 0 <= value <= 100:
            raise bad(f"must be a percentage from 0 to 100, not {value!r}")
    elif kind == "count":
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(f"must be a whole number of bytes >= 0, not {value!r}")
    elif kind == "days":
        if not number or not math.isfinite(value) or value < 0:
            raise bad(f"must be a number of days >= 0, not {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"must be true or false, not {value!r}")
    elif kind == "str":
        if not isinstance(value, str) or not value.strip() or len(value) > 64:
            raise bad(f"must be a name of 1 to 64 characters, not {value!r}")
        value = value.strip()
    elif kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise bad(f'must be a list of modality codes (e.g. ["CT", "MR"]), not {value!r}')
        value = [v.strip().upper() for v in value]
    elif kind == "scope":
        if value not in SCOPES:
            raise bad(f"must be one of {', '.join(repr(s) for s in SCOPES)}, not {value!r}")
    return value


# --------------------------------------------------------------------------- what the index holds


@dataclass
class StudyState:
    """One study as the planner sees it."""

    pk: int
    uid: str
    modalities: str
    created_at: datetime | None
    updated_at: datetime | None
    last_access: datetime | None
    instances: int
    size_bytes: int
    online_instances: int
    online_bytes: int

    @property
    def used_at(self) -> datetime | None:
        """When it was last opened/retrieved, else last changed (the LRU order of the watermark purge)."""
        return self.last_access or self.updated_at or self.created_at


@dataclass
class Planned:
    """A study a pass would purge (``action``) or leaves alone though a rule matched it (``skip``)."""

    study: StudyState
    rule: str
    scope: str
    reason: str

    def action(self) -> dict[str, Any]:
        online = self.scope == "online"
        return {
            "uid": self.study.uid,
            "rule": self.rule,
            "scope": self.scope,
            "instances": self.study.online_instances if online else self.study.instances,
            "bytes": self.study.online_bytes if online else self.study.size_bytes,
            "reason": self.reason,
        }


@dataclass
class Plan:
    acts: list[Planned] = field(default_factory=list)
    skips: list[Planned] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)


def _study_states(conn: Connection) -> list[StudyState]:
    on = instances.c.online.is_(True)
    stmt = (
        select(
            studies.c.pk,
            studies.c.study_uid,
            studies.c.modalities,
            studies.c.created_at,
            studies.c.updated_at,
            studies.c.last_access,
            studies.c.num_instances,
            studies.c.size_bytes,
            func.coalesce(func.sum(case((on, 1), else_=0)), 0),
            func.coalesce(func.sum(case((on, instances.c.size), else_=0)), 0),
        )
        .select_from(
            studies.outerjoin(series, series.c.study_fk == studies.c.pk).outerjoin(
                instances, instances.c.series_fk == series.c.pk
            )
        )
        .group_by(
            studies.c.pk,
            studies.c.study_uid,
            studies.c.modalities,
            studies.c.created_at,
            studies.c.updated_at,
            studies.c.last_access,
            studies.c.num_instances,
            studies.c.size_bytes,
        )
    )
    out = [
        StudyState(
            int(r[0]),
            r[1],
            r[2] or "",
            storage.as_utc(r[3]),
            storage.as_utc(r[4]),
            storage.as_utc(r[5]),
            int(r[6] or 0),
            int(r[7] or 0),
            int(r[8]),
            int(r[9]),
        )
        for r in conn.execute(stmt)
    ]
    out.sort(key=lambda s: (s.used_at or _EPOCH, s.pk))
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _held_elsewhere() -> Any:
    """Whether an instance (of the enclosing query) has a verified copy elsewhere: at a peer, or on a
    tier with the instance's current checksum (a copy of an older encoding cannot be recalled as it)."""
    c = blob_copies.c
    return exists().where(
        c.instance_fk == instances.c.pk,
        c.verified_at.is_not(None),
        or_(c.location.like("peer:%"), c.checksum == instances.c.checksum),
    )


def _recallable() -> Any:
    """Whether an instance (of the enclosing query) can be brought back here: a verified copy on a tier
    with its current checksum.  A copy only at a peer cannot (nothing here retrieves from a peer), so an
    online purge takes such an instance out of this archive altogether, logged with the peer that holds it."""
    c = blob_copies.c
    return exists().where(
        c.instance_fk == instances.c.pk,
        c.verified_at.is_not(None),
        c.location.like("tier:%"),
        c.checksum == instances.c.checksum,
    )


def _online_without_copy(conn: Connection, study_pk: int) -> int:
    """How many of the study's online instances have no verified copy anywhere else."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(instances.join(series, series.c.pk == instances.c.series_fk))
            .where(series.c.study_fk == study_pk, instances.c.online.is_(True), ~_held_elsewhere())
        ).scalar_one()
    )


def usage(archive: Archive, rules: RetentionRules, *, online_bytes: int | None = None) -> dict[str, Any]:
    """How full the online store is: ``used``, ``capacity`` (bytes), ``percent``, the watermarks, and
    ``measured`` (``capacity_bytes``: the online bytes in the index against the configured size;
    ``filesystem``: the blob store's file system)."""
    if rules.capacity_bytes:
        if online_bytes is None:
            with archive.engine.connect() as conn:
                online_bytes = int(
                    conn.execute(
                        select(func.coalesce(func.sum(instances.c.size), 0)).where(instances.c.online.is_(True))
                    ).scalar_one()
                )
        used, capacity, measured = int(online_bytes), int(rules.capacity_bytes), "capacity_bytes"
    else:
        du = shutil.disk_usage(archive.blobs.root)
        used, capacity, measured = int(du.total - du.free), int(du.total), "filesystem"
    percent = 100.0 * used / capacity if capacity else 0.0
    return {
        "used": used,
        "capacity": capacity,
        "percent": round(percent, 3),
        "high_watermark": rules.high_watermark,
        "low_watermark": rules.low_watermark,
        "measured": measured,
        "above_high": bool(rules.high_watermark) and percent >= rules.high_watermark,
    }


def plan(archive: Archive, rules: RetentionRules, *, now: datetime | None = None) -> Plan:
    """What a pass would do now: the studies to purge (each once, with its rule and reason) and the
    studies a rule matched but that are left alone (protected, being received, no copy elsewhere...)."""
    now = now or storage.utcnow()
    result = Plan()
    with archive.engine.connect() as conn:
        states = _study_states(conn)
        protected = storage.protected_study_pks(conn)
        chosen: set[int] = set()

        def guard(st: StudyState, scope: str) -> str | None:
            """Why ``st`` may not be purged with ``scope`` now (None: it may)."""
            if st.pk in protected:
                return "protected"
            if _receiving(st.updated_at, now):
                return "being received"
            if scope == "everywhere":
                return _everywhere_blocker(archive, conn, st.pk, now)
            if not st.online_instances:
                return "nothing online"
            if rules.require_copy and _online_without_copy(conn, st.pk):
                return "no verified copy elsewhere (require_copy)"
            return _forwarding(conn, st.pk)

        for st in states:
            matched = [r for r in rules.purge if r.matches(st, now)]
            if not matched:
                continue
            rule = next((r for r in matched if r.scope == "everywhere"), matched[0])
            if rule.scope == "online" and not st.online_instances:
                continue  # purged already: nothing to report
            why = guard(st, rule.scope)
            entry = Planned(st, rule.name, rule.scope, why or _rule_reason(rule, st, now))
            if why:
                result.skips.append(entry)
            else:
                result.acts.append(entry)
                chosen.add(st.pk)

        if rules.high_watermark:
            online_total = sum(st.online_bytes for st in states)
            use = usage(archive, rules, online_bytes=online_total)
            result.usage = use
            if use["above_high"]:
                target = rules.low_watermark * use["capacity"] / 100.0
                need = use["used"] - target
                need -= sum(p.study.online_bytes for p in result.acts)
                for st in states:  # least recently used first
                    if need <= 0:
                        break
                    if st.pk in chosen or not st.online_instances:
                        continue
                    why = guard(st, "online")
                    reason = (
                        f"online store {use['percent']:.1f}% >= high watermark {rules.high_watermark:g}%: "
                        f"down to {rules.low_watermark:g}%"
                    )
                    if why:
                        if all(q.study.pk != st.pk for q in result.skips):  # said once per study
                            result.skips.append(Planned(st, WATERMARK_RULE, "online", why))
                        continue
                    result.acts.append(Planned(st, WATERMARK_RULE, "online", reason))
                    chosen.add(st.pk)
                    need -= st.online_bytes
    return result


def _rule_reason(rule: PurgeRule, st: StudyState, now: datetime) -> str:
    parts = [f"arrived {storage.age_days(st.created_at, now):.0f} days ago (>= {rule.min_age_days:g})"]
    if rule.idle_days:
        parts.append(f"not used for {storage.age_days(st.used_at, now):.0f} days (>= {rule.idle_days:g})")
    if rule.modalities:
        parts.append(f"modalities {st.modalities or '-'}")
    return "; ".join(parts)


def _receiving(updated_at: datetime | None, now: datetime) -> bool:
    updated_at = storage.as_utc(updated_at)
    return updated_at is not None and now - updated_at < timedelta(minutes=RECEIVING_MINUTES)


def _tier_copies(conn: Connection, study_pk: int) -> list[tuple[int, str, str, datetime | None]]:
    """``(instance pk, tier name, tier key, retain_until)`` of the study's copies on tiers."""
    c = blob_copies.c
    stmt = (
        select(c.instance_fk, c.location, c.key, c.retain_until)
        .select_from(
            blob_copies.join(instances, instances.c.pk == c.instance_fk).join(
                series, series.c.pk == instances.c.series_fk
            )
        )
        .where(series.c.study_fk == study_pk, c.location.like("tier:%"))
    )
    return [(int(r[0]), r[1][len("tier:") :], r[2], storage.as_utc(r[3])) for r in conn.execute(stmt)]


def _everywhere_blocker(archive: Archive, conn: Connection, study_pk: int, now: datetime) -> str | None:
    """Why a study may not be deleted everywhere now: a write-once copy, a tier not configured here,
    instances still queued for forwarding (:func:`_forwarding`)."""
    tiers = getattr(archive, "tiers", None)
    names = set(tiers.names()) if tiers is not None else set()
    for _pk, name, _key, retain_until in _tier_copies(conn, study_pk):
        if retain_until is not None and retain_until > now:
            return f"write-once copy on tier {name} until {retain_until:%Y-%m-%d}"
        if name not in names:
            return f"a copy is on tier {name}, which this node does not configure: cannot delete it"
        config = getattr(tiers, "config", None)
        if retain_until is None and config is not None and getattr(config(name), "write_once", False):
            return f"write-once copy on tier {name}, kept for good"
    return _forwarding(conn, study_pk)


def _forwarding(conn: Connection, study_pk: int) -> str | None:
    """Why not now: instances of the study still queued for forwarding (pending, or sent and awaiting the
    peer's commitment) — the forwarder reads them from here."""
    uid = conn.execute(select(studies.c.study_uid).where(studies.c.pk == study_pk)).scalar()
    sops = (
        select(instances.c.sop_uid)
        .select_from(instances.join(series, series.c.pk == instances.c.series_fk))
        .where(series.c.study_fk == study_pk)
    )
    fq = forward_queue.c
    queued = conn.execute(
        select(fq.destination)
        .where(or_(fq.study_uid == uid, fq.sop_uid.in_(sops)), fq.state.in_(("pending", "sent")))
        .limit(1)
    ).scalar()
    return f"still being forwarded to {queued}" if queued is not None else None


# --------------------------------------------------------------------------- applying


class _Skip(Exception):
    """The study changed since it was planned: leave it (the transaction rolls back)."""


def run_once(
    archive: Archive,
    rules: RetentionRules,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> storage.TaskReport:
    """One retention pass: plan, then purge each study in its own transaction (or only list, ``dry_run``)."""
    report = storage.TaskReport("retention", dry_run=dry_run)
    if not dry_run:
        try:
            swept = sweep_offline(archive)
        except Exception as exc:  # noqa: BLE001 - the next pass tries again
            log.warning("retention: sweeping the files of purged instances failed: %s", exc)
        else:
            if swept:
                log.info("retention: deleted %d online file(s) a purge had left behind", swept)
    if not rules.active:
        return report
    now = now or storage.utcnow()
    todo = plan(archive, rules, now=now)
    for p in todo.skips:
        log.debug("retention: leaving study %s (rule %s): %s", p.study.uid, p.rule, p.reason)
    if dry_run:
        for p in todo.acts:
            a = p.action()
            report.actions.append(a)
            report.instances += a["instances"]
            report.bytes_before += a["bytes"]
        return report
    node = str(getattr(getattr(archive, "policies", None), "node_name", "") or "")
    for i, p in enumerate(todo.acts):
        try:
            if p.scope == "everywhere":
                done = _purge_everywhere(archive, p, now, node, report)
            else:
                done = _purge_online(archive, p, rules.require_copy, now, node)
        except _Skip as why:
            log.info("retention: study %s left alone: %s", p.study.uid, why)
            continue
        except Exception as exc:  # noqa: BLE001 - one study's failure does not stop the others
            log.exception("retention: purging study %s failed", p.study.uid)
            report.errors.append(f"{p.study.uid}: {type(exc).__name__}: {exc}")
            continue
        report.actions.append(done)
        report.instances += int(done["instances"])
        report.bytes_before += int(done["bytes"])
        try:
            storage.reap_trash(archive)
        except Exception as exc:  # noqa: BLE001 - the next reap deletes them
            log.warning("retention: reaping the trash failed: %s", exc)
        if progress is not None:
            progress(i + 1, len(todo.acts))
    return report


def _check_again(conn: Connection, p: Planned, now: datetime) -> None:
    row = conn.execute(select(studies.c.updated_at).where(studies.c.pk == p.study.pk)).first()
    if row is None:
        raise _Skip("gone")
    if _receiving(row[0], now):
        raise _Skip("being received")
    if p.study.pk in storage.protected_study_pks(conn):
        raise _Skip("protected")


def _purge_online(archive: Archive, p: Planned, require_copy: bool, now: datetime, node: str) -> dict[str, Any]:
    """Drop the online files of one study whose instances are held elsewhere.

    One transaction marks them offline (``IndexWriter.set_online``; the row keeps its key and
    checksum, which a recall writes back and verifies) and writes the log row; the files are
    deleted after it commits (:func:`_drop_online`).  With ``require_copy = false`` the instances
    held nowhere else are deleted in that transaction, their files by the trash.
    """
    st = p.study
    with archive.transaction() as conn:
        _check_again(conn, p, now)
        rows = conn.execute(
            select(instances.c.pk, instances.c.blob_key, instances.c.size, _held_elsewhere().label("held"),
                   _recallable().label("recallable"))
            .select_from(instances.join(series, series.c.pk == instances.c.series_fk))
            .where(series.c.study_fk == st.pk, instances.c.online.is_(True))
        ).all()
        if not rows:
            raise _Skip("nothing online")
        queued = _forwarding(conn, st.pk)
        if queued:
            raise _Skip(queued)
        held = [r for r in rows if r.held and r.recallable]
        at_peer = [r for r in rows if r.held and not r.recallable]
        unheld = [r for r in rows if not r.held]
        if unheld and require_copy:
            raise _Skip(f"{len(unheld)} instance(s) without a verified copy elsewhere")
        nbytes = sum(int(r.size) for r in rows)
        where = sorted(storage.verified_elsewhere(conn, st.pk))
        archive.writer.set_online(conn, [int(r.pk) for r in held], False)
        detail = f"online copy dropped; held at {', '.join(where) or '-'}; {p.reason}"
        if at_peer:  # held only by a peer: nothing here could bring it back, so it leaves this archive
            pks = [int(r.pk) for r in at_peer]
            conn.execute(delete(blob_copies).where(blob_copies.c.instance_fk.in_(pks)))
            archive.writer.delete_instances(conn, pks)
            for r in at_peer:
                storage.trash_key(conn, r.blob_key, "purge")
            detail += f"; {len(at_peer)} instance(s) held only at a peer removed from this archive"
        if unheld:  # require_copy = false: an instance held nowhere else cannot stay in the index, unreadable
            pks = [int(r.pk) for r in unheld]
            conn.execute(delete(blob_copies).where(blob_copies.c.instance_fk.in_(pks)))
            archive.writer.delete_instances(conn, pks)
            for r in unheld:
                storage.trash_key(conn, r.blob_key, "purge")
            detail = (
                f"online copy dropped; {len(unheld)} instance(s) held nowhere else deleted "
                f"(require_copy = false); {p.reason}"
            )
        storage.log_action(
            conn,
            "purge",
            st.uid,
            rule=p.rule,
            instances=len(rows),
            bytes_before=nbytes,
            bytes_after=0,
            detail=detail[:1000],
            node=node,
        )
    _drop_online(archive, [int(r.pk) for r in held])
    if unheld or at_peer:
        archive.events.publish(ArchiveEvent("deleted", "STUDY", st.uid, st.uid))
    return {
        "uid": st.uid,
        "rule": p.rule,
        "scope": "online",
        "instances": len(rows),
        "bytes": nbytes,
        "reason": p.reason,
    }


def _recall_lock(archive: Archive) -> Any:
    """The lock a recall holds while it brings files back (``archive.tiers.recall_lock``), so that a
    file being recalled is never taken for a purged one; a lock of this module without tiers."""
    lock = getattr(getattr(archive, "tiers", None), "recall_lock", None)
    return lock if lock is not None else _LOCK


_LOCK = threading.RLock()


def _drop_online(archive: Archive, pks: list[int]) -> int:
    """Delete the online files of the instances ``pks`` that are still offline (a reader may have
    brought one back meanwhile) and held elsewhere; how many were deleted."""
    deleted = 0
    with _recall_lock(archive), archive.engine.connect() as conn:
        for chunk in chunks(pks, 500):
            keys = (
                conn.execute(
                    select(instances.c.blob_key).where(
                        instances.c.pk.in_(chunk), instances.c.online.is_(False), _recallable()
                    )
                )
                .scalars()
                .all()
            )
            for key in keys:
                try:
                    if key and archive.blobs.exists(key):
                        archive.blobs.delete(key)
                        deleted += 1
                except OSError as exc:
                    log.warning("retention: could not delete the online file %s (next pass): %s", key, exc)
    return deleted


def sweep_offline(archive: Archive) -> int:
    """Delete the online files left behind by a purge killed between its commit and its deletes
    (offline instances held elsewhere whose file is still here); how many were deleted."""
    with archive.engine.connect() as conn:
        rows = conn.execute(
            select(instances.c.pk, instances.c.blob_key).where(instances.c.online.is_(False), _recallable())
        ).all()
    left = [int(r.pk) for r in rows if r.blob_key and archive.blobs.exists(r.blob_key)]
    return _drop_online(archive, left) if left else 0


def _purge_everywhere(
    archive: Archive, p: Planned, now: datetime, node: str, report: storage.TaskReport
) -> dict[str, Any]:
    """Delete one study from the archive: rows, online files (by the trash), tier copies (after the commit)."""
    st = p.study
    with archive.transaction() as conn:
        _check_again(conn, p, now)
        blocker = _everywhere_blocker(archive, conn, st.pk, now)
        if blocker:
            raise _Skip(blocker)
        tier_copies = _tier_copies(conn, st.pk)
        who = conn.execute(select(patients.c.patient_id, patients.c.patient_name)
                           .select_from(studies.join(patients, studies.c.patient_fk == patients.c.pk))
                           .where(studies.c.pk == st.pk)).first()
        rows = conn.execute(
            select(instances.c.pk, instances.c.blob_key, instances.c.size)
            .select_from(instances.join(series, series.c.pk == instances.c.series_fk))
            .where(series.c.study_fk == st.pk)
        ).all()
        pks = [int(r.pk) for r in rows]
        peers = sorted(loc for loc in storage.verified_elsewhere(conn, st.pk) if loc.startswith("peer:"))
        for chunk in chunks(pks, 500):
            conn.execute(delete(blob_copies).where(blob_copies.c.instance_fk.in_(chunk)))
        archive.writer.delete_instances(conn, pks)
        for r in rows:
            if r.blob_key:
                storage.trash_key(conn, r.blob_key, "purge")
        nbytes = sum(int(r.size) for r in rows)
        detail = (
            f"deleted everywhere: online files, {len(tier_copies)} tier object(s)"
            + (f"; copies at {', '.join(peers)} stay theirs" if peers else "")
            + f"; {p.reason}"
        )
        storage.log_action(
            conn,
            "purge",
            st.uid,
            rule=p.rule,
            instances=len(rows),
            bytes_before=nbytes,
            bytes_after=0,
            detail=detail[:1000],
            node=node,
        )
    audit = getattr(archive, "audit", None)
    if audit is not None:  # issue 21a: a purge everywhere deletes the study
        audit("DICOM Study Deleted", action="D", user=f"retention rule {p.rule}"[:128], study_uids=(st.uid,),
              patient_id=who[0] if who else "", patient_name=who[1] if who else "", instances=len(rows),
              detail=f"purged everywhere: {p.reason}"[:1000])
    tiers = getattr(archive, "tiers", None)
    for _pk, name, key, retain_until in tier_copies:
        try:
            tiers.delete(name, key, retain_until)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - the study is gone from the index; the object is left over
            log.warning("retention: could not delete %s from tier %s (left in the tier): %s", key, name, exc)
            report.errors.append(f"{st.uid}: tier {name} object {key} not deleted: {exc}")
    archive.events.publish(ArchiveEvent("deleted", "STUDY", st.uid, st.uid))
    return {
        "uid": st.uid,
        "rule": p.rule,
        "scope": "everywhere",
        "instances": len(rows),
        "bytes": nbytes,
        "reason": p.reason,
    }


# --------------------------------------------------------------------------- protections (hilum protect)


def protection_target(archive: Archive, level: str, uid: str, issuer: str = "") -> dict[str, int] | None:
    """What a protection of ``level`` (``STUDY``/``PATIENT``) ``uid`` covers now: ``studies`` and
    ``instances`` in the archive; None when no such study or patient is in it (yet)."""
    from hilum.archive.schema import patients

    level = level.upper()
    with archive.engine.connect() as conn:
        if level == "STUDY":
            row = conn.execute(
                select(func.count(), func.coalesce(func.sum(studies.c.num_instances), 0)).where(
                    studies.c.study_uid == uid
                )
            ).first()
            found = bool(row and row[0])
        elif level == "PATIENT":
            who = patients.c.patient_id == uid
            if issuer:
                who = who & (patients.c.issuer == issuer)
            found = conn.execute(select(func.count()).select_from(patients).where(who)).scalar_one() > 0
            row = conn.execute(
                select(func.count(studies.c.pk), func.coalesce(func.sum(studies.c.num_instances), 0))
                .select_from(studies.join(patients, patients.c.pk == studies.c.patient_fk))
                .where(who)
            ).first()
        else:
            raise ValueError("protect a STUDY or a PATIENT")
    if not found or row is None:
        return None
    return {"studies": int(row[0]), "instances": int(row[1])}
