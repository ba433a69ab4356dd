"""Modality Performed Procedure Steps (PS3.4 Annex F): N-CREATE and N-SET moving orders along.

N-CREATE (status IN PROGRESS) records the performed step and starts the
scheduled steps its Scheduled Step Attributes Sequence names (by Study
Instance UID or Accession Number, and Scheduled Procedure Step ID); N-SET to
COMPLETED or DISCONTINUED finishes them (F.7.2.2: a step already COMPLETED
or DISCONTINUED cannot be changed any more).  An MPPS that names no known
order (unscheduled case) is kept without changing any order.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import insert, select, update

from hilum.archive.orders.lifecycle import set_status
from hilum.archive.orders.model import (
    COMPLETED,
    DISCONTINUED,
    IN_PROGRESS,
    OrderError,
    PerformedInfo,
    Tx,
    check_date,
    norm_time,
)
from hilum.archive.orders.model import now as now_
from hilum.archive.schema import orders, performed_steps, procedure_steps

log = logging.getLogger(__name__)


def _match_steps(tx: Tx, refs: list[dict[str, str]]) -> list[tuple[int, int]]:
    """(order pk, step pk) of the scheduled steps an MPPS names (PS3.4 F.7.2.1.1)."""
    found: list[tuple[int, int]] = []
    for ref in refs:
        study = ref.get("StudyInstanceUID", "")
        acc = ref.get("AccessionNumber", "")
        sps = ref.get("ScheduledProcedureStepID", "")
        if not (study or acc):
            continue
        cond = orders.c.study_uid == study if study else orders.c.accession_number == acc
        sel = select(orders.c.pk, procedure_steps.c.pk.label("sps_pk")).select_from(
            orders.join(procedure_steps, procedure_steps.c.order_fk == orders.c.pk)).where(cond)
        if sps:
            sel = sel.where(procedure_steps.c.sps_id == sps)
        for r in tx.conn.execute(sel).all():
            if (r.pk, r.sps_pk) not in found:
                found.append((int(r.pk), int(r.sps_pk)))
    return found


def _apply_pps(tx: Tx, status: str, links: list[tuple[int, int]]) -> None:
    target = {"IN PROGRESS": IN_PROGRESS, "COMPLETED": COMPLETED, "DISCONTINUED": DISCONTINUED}[status]
    by_order: dict[int, list[int]] = {}
    for order_pk, sps_pk in links:
        by_order.setdefault(order_pk, []).append(sps_pk)
    for order_pk, sps in by_order.items():
        try:
            set_status(tx, order_pk, target, step_pks=sps)
        except OrderError as exc:
            # The MPPS itself is valid; a step already final stays so.
            log.warning("MPPS: %s", exc)


def mpps_create(tx: Tx, uid: str, info: PerformedInfo) -> int:
    """MPPS N-CREATE (PS3.4 F.7.2.1): record it, start the scheduled steps it names.

    Returns how many scheduled steps it matched (0 = unscheduled).
    """
    if info.status != "IN PROGRESS":
        raise OrderError("invalid-value", f"Performed Procedure Step Status must be IN PROGRESS, not "
                         f"{info.status!r}", where="PerformedProcedureStepStatus")
    if tx.conn.execute(select(performed_steps.c.pk).where(performed_steps.c.mpps_uid == uid)).first():
        raise OrderError("duplicate-step", f"MPPS {uid} exists")
    refs = info.scheduled or []
    links = _match_steps(tx, refs)
    first = refs[0] if refs else {}
    now = now_()
    tx.conn.execute(insert(performed_steps).values(
        mpps_uid=uid, status="IN PROGRESS", station_aet=(info.station_aet or "")[:16],
        modality=(info.modality or "")[:16], pps_id=(info.pps_id or "")[:16],
        description=(info.description or "")[:64], start_date=check_date(info.start_date or "", "start date"),
        start_time=norm_time(info.start_time or "", "start time"),
        end_date=check_date(info.end_date or "", "end date"), end_time=norm_time(info.end_time or "", "end time"),
        study_uid=first.get("StudyInstanceUID", "")[:64], accession_number=first.get("AccessionNumber", "")[:16],
        scheduled_steps=json.dumps([s for _, s in links]), created_at=now, updated_at=now))
    _apply_pps(tx, "IN PROGRESS", links)
    return len(links)


def mpps_set(tx: Tx, uid: str, info: PerformedInfo) -> str:
    """MPPS N-SET (PS3.4 F.7.2.2): update it; COMPLETED/DISCONTINUED finish its scheduled steps.

    Returns the MPPS's status after the change.
    """
    row = tx.conn.execute(select(performed_steps).where(performed_steps.c.mpps_uid == uid)).first()
    if row is None:
        raise OrderError("unknown-step", f"no MPPS {uid}")
    if row.status != "IN PROGRESS":
        raise OrderError("invalid-state", f"MPPS {uid} is {row.status}: it cannot be changed")
    status = info.status or row.status
    if status not in ("IN PROGRESS", "COMPLETED", "DISCONTINUED"):
        raise OrderError("invalid-value", f"invalid Performed Procedure Step Status {status!r}",
                         where="PerformedProcedureStepStatus")
    values: dict[str, Any] = {"status": status, "updated_at": now_()}
    for key in ("station_aet", "modality", "pps_id", "description"):
        v = getattr(info, key)
        if v is not None:
            values[key] = v[:16] if key != "description" else v[:64]
    if info.end_date is not None:
        values["end_date"] = check_date(info.end_date, "end date")
    if info.end_time is not None:
        values["end_time"] = norm_time(info.end_time, "end time")
    links_pks = json.loads(row.scheduled_steps or "[]")
    if info.scheduled:
        extra = [s for _, s in _match_steps(tx, info.scheduled)]
        links_pks = list(dict.fromkeys([*links_pks, *extra]))
        values["scheduled_steps"] = json.dumps(links_pks)
    tx.conn.execute(update(performed_steps).where(performed_steps.c.pk == row.pk).values(**values))
    if links_pks and status != "IN PROGRESS":
        pairs = tx.conn.execute(select(procedure_steps.c.order_fk, procedure_steps.c.pk)
                                  .where(procedure_steps.c.pk.in_(links_pks))).all()
        _apply_pps(tx, status, [(int(a), int(b)) for a, b in pairs])
    return status
