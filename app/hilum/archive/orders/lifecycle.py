"""An order's life: created (HL7 ORM/OMI), changed, cancelled, moved along by its steps' statuses.

``SCHEDULED → IN PROGRESS → COMPLETED | DISCONTINUED``, or ``CANCELLED``
(before it started); an order's status is the aggregate of its scheduled
procedure steps' (PS3.3 C.4.10).  Every function works inside one
transaction (a :class:`~hilum.archive.orders.model.Tx`) and queues the
:class:`OrderEvent` its change makes, heard after the commit.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import bindparam, insert, select, update

from hilum.archive.orders.model import (
    CANCELLED,
    COMPLETED,
    DISCONTINUED,
    FINAL,
    IN_PROGRESS,
    SCHEDULED,
    STATUSES,
    OrderError,
    OrderEvent,
    OrderInfo,
    StepInfo,
    Tx,
    check_date,
    norm_time,
)
from hilum.archive.orders.model import now as now_
from hilum.archive.orders.reconcile import reconcile_existing
from hilum.archive.schema import orders, patients, procedure_steps
from hilum.dicom.matching import pn_groups

_PATIENT_ID = select(patients.c.patient_id).where(patients.c.pk == bindparam("pk"))
_ORDER_BY = {c: select(orders.c.pk).where(orders.c[c] == bindparam("v")).order_by(orders.c.pk.desc()).limit(1)
             for c in ("placer_number", "filler_number", "accession_number", "study_uid")}


def find_order(tx: Tx, *, placer: str = "", filler: str = "", accession: str = "") -> int | None:
    """An order's pk by placer number, else filler number, else accession number."""
    for col, value in ((orders.c.placer_number, placer), (orders.c.filler_number, filler),
                       (orders.c.accession_number, accession)):
        if value:
            pk = tx.conn.execute(_ORDER_BY[col.name], {"v": value}).scalar()
            if pk is not None:
                return int(pk)
    return None


def _new_accession(tx: Tx) -> str:
    while True:
        acc = "H" + secrets.token_hex(7).upper()  # 15 characters (SH allows 16)
        if tx.conn.execute(select(orders.c.pk).where(orders.c.accession_number == acc)).first() is None:
            return acc


def create_order(tx: Tx, patient_pk: int, info: OrderInfo) -> int:
    """Create an order and its steps (status SCHEDULED); returns its pk.

    Assigns what is missing: the accession number (the filler order number
    when it fits 16 characters, else a generated one), the Study Instance
    UID (PS3.5 9.1, UUID-derived ``2.25.`` root), the requested procedure ID
    (= accession number) and the step IDs.
    """
    if info.placer_number and _order_by(tx, "placer_number", info.placer_number) is not None:
        raise OrderError("duplicate-order", f"an order with placer number {info.placer_number!r} exists",
                         where="ORC-2")
    acc = info.accession_number or (info.filler_number if 0 < len(info.filler_number) <= 16 else "")
    acc = acc or _new_accession(tx)
    if len(acc) > 16:
        raise OrderError("invalid-value", f"accession number {acc!r} longer than 16 characters", where="OBR-18")
    study_uid = info.study_uid or generate_uid(prefix=None)
    if len(study_uid) > 64 or not re.fullmatch(r"[0-9.]+", study_uid):
        raise OrderError("invalid-value", f"invalid Study Instance UID {study_uid!r}", where="ZDS-1")
    if _order_by(tx, "study_uid", study_uid) is not None:
        raise OrderError("duplicate-order", f"an order with Study Instance UID {study_uid} exists", where="ZDS-1")
    now = now_()
    values = _order_values(info)
    values.update(patient_fk=patient_pk, study_uid=study_uid, accession_number=acc,
                  requested_procedure_id=info.requested_procedure_id[:16] or acc, status=SCHEDULED,
                  source=info.source[:64], images_at=None, performed_study_uid="", created_at=now, updated_at=now)
    inserted = tx.conn.execute(insert(orders), values).inserted_primary_key
    assert inserted is not None
    pk = int(inserted[0])
    steps = info.steps or [StepInfo()]
    for i, step in enumerate(steps, 1):
        _insert_step(tx, pk, step, default_id=f"{acc}-{i}" if len(steps) > 1 else acc)
    reconcile_existing(tx, study_uid, acc)
    tx.events.append(OrderEvent("created", pk, acc, study_uid, _patient_id(tx, patient_pk), SCHEDULED))
    return pk


def _order_by(tx: Tx, column: str, value: str) -> Any:
    return tx.conn.execute(_ORDER_BY[column], {"v": value}).first()


def _order_values(info: OrderInfo) -> dict[str, Any]:
    ref = info.referring_physician[:324]
    return dict(
        placer_number=info.placer_number[:64], filler_number=info.filler_number[:64],
        description=info.description[:64], code_value=info.code_value[:16], code_scheme=info.code_scheme[:16],
        code_meaning=info.code_meaning[:64], referring_physician=ref, ref_pn=pn_groups(ref)[0],
        requesting_physician=info.requesting_physician[:324], priority=info.priority[:16],
        reason=info.reason[:64],
    )


def _step_values(step: StepInfo) -> dict[str, Any]:
    date = check_date(step.start_date, "SPS start date")
    time = norm_time(step.start_time, "SPS start time")
    return dict(
        modality=step.modality[:16].upper(), station_aet=step.station_aet[:16], station_name=step.station_name[:16],
        location=step.location[:16], start_date=date, start_time=time,
        start_dt=(date + (time or "000000.000000")) if date else "",
        performer=step.performer[:324], performer_pn=pn_groups(step.performer)[0],
        description=step.description[:64],
    )


def _insert_step(tx: Tx, order_pk: int, step: StepInfo, *, default_id: str) -> None:
    tx.conn.execute(insert(procedure_steps), {"order_fk": order_pk, "sps_id": (step.sps_id or default_id)[:16],
                                                "status": SCHEDULED, "updated_at": now_(),
                                                **_step_values(step)})


def _patient_id(tx: Tx, patient_pk: int) -> str:
    return str(tx.conn.execute(_PATIENT_ID, {"pk": patient_pk}).scalar() or "")


def order(tx: Tx, pk: int) -> dict[str, Any]:
    row = tx.conn.execute(select(orders).where(orders.c.pk == pk)).mappings().first()
    if row is None:
        raise OrderError("unknown-order", f"no order {pk}")
    return dict(row)


def update_order(tx: Tx, pk: int, info: OrderInfo, patient_pk: int | None = None) -> None:
    """Change an order that has not finished (HL7 ORC-1 XO): fields sent replace, steps too."""
    cur = order(tx, pk)
    if cur["status"] in FINAL:
        raise OrderError("invalid-state", f"order {cur['accession_number']} is {cur['status'].lower()}: "
                         "it cannot be changed", where="ORC-1")
    values = {k: v for k, v in _order_values(info).items() if v}
    if info.referring_physician:
        values["ref_pn"] = pn_groups(info.referring_physician)[0]
    if info.requested_procedure_id:
        values["requested_procedure_id"] = info.requested_procedure_id[:16]
    if patient_pk is not None and patient_pk != cur["patient_fk"]:
        values["patient_fk"] = patient_pk
    values["updated_at"] = now_()
    tx.conn.execute(update(orders).where(orders.c.pk == pk).values(**values))
    if info.steps:
        steps = tx.conn.execute(select(procedure_steps.c.pk, procedure_steps.c.status)
                                  .where(procedure_steps.c.order_fk == pk)
                                  .order_by(procedure_steps.c.pk)).all()
        for row, step in zip(steps, info.steps, strict=False):
            if row.status != SCHEDULED:
                continue
            vals = {k: v for k, v in _step_values(step).items() if v}
            if step.sps_id:
                vals["sps_id"] = step.sps_id[:16]
            if vals:
                tx.conn.execute(update(procedure_steps).where(procedure_steps.c.pk == row.pk)
                                  .values(updated_at=now_(), **vals))
        for i, step in enumerate(info.steps[len(steps):], len(steps) + 1):
            _insert_step(tx, pk, step, default_id=f"{cur['accession_number']}-{i}")
    tx.events.append(OrderEvent("changed", pk, cur["accession_number"], cur["study_uid"],
                                  _patient_id(tx, values.get("patient_fk", cur["patient_fk"])), cur["status"]))


def set_status(tx: Tx, pk: int, status: str, *, step_pks: Sequence[int] | None = None) -> str:
    """Move an order's steps (all, or ``step_pks``) to ``status``; returns the order's new status.

    Allowed: SCHEDULED → IN PROGRESS | CANCELLED | DISCONTINUED | COMPLETED,
    IN PROGRESS → COMPLETED | DISCONTINUED (| IN PROGRESS again). Setting
    a status a step already has is a no-op; anything else out of a final
    status raises ``invalid-state``.
    """
    if status not in STATUSES:
        raise OrderError("invalid-value", f"unknown order status {status!r}")
    cur = order(tx, pk)
    sel = select(procedure_steps.c.pk, procedure_steps.c.status).where(procedure_steps.c.order_fk == pk)
    if step_pks is not None:
        sel = sel.where(procedure_steps.c.pk.in_(list(step_pks)))
    steps = tx.conn.execute(sel).all()
    for row in steps:
        if row.status == status:
            continue
        if row.status in FINAL or (row.status == IN_PROGRESS and status in (SCHEDULED, CANCELLED)):
            raise OrderError("invalid-state", f"order {cur['accession_number']} is {row.status.lower()}: "
                             f"it cannot become {status.lower()}", where="ORC-1")
        tx.conn.execute(update(procedure_steps).where(procedure_steps.c.pk == row.pk)
                          .values(status=status, updated_at=now_()))
    all_steps = tx.conn.execute(select(procedure_steps.c.status)
                                  .where(procedure_steps.c.order_fk == pk)).scalars().all()
    new = aggregate_status(all_steps)
    if new != cur["status"]:
        tx.conn.execute(update(orders).where(orders.c.pk == pk).values(status=new, updated_at=now_()))
    kind = "cancelled" if new == CANCELLED else "status"
    tx.events.append(OrderEvent(kind, pk, cur["accession_number"], cur["study_uid"],
                                  _patient_id(tx, cur["patient_fk"]), new))
    return new


def aggregate_status(step_statuses: Sequence[str]) -> str:
    """An order's status from its steps' (any started → IN PROGRESS; all final → the strongest final)."""
    s = set(step_statuses)
    if not s:
        return SCHEDULED
    if s <= set(FINAL):
        for final in (COMPLETED, DISCONTINUED, CANCELLED):
            if final in s:
                return final
    if IN_PROGRESS in s or (s & {COMPLETED, DISCONTINUED} and SCHEDULED in s):
        return IN_PROGRESS
    return SCHEDULED
