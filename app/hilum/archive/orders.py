"""Orders, scheduled and performed procedure steps: the RIS side of the archive.

DESIGN.md "Orders live in the archive": HL7 ORM creates, changes and cancels
orders; the Modality Worklist SCP answers from them (PS3.4 Annex K); MPPS
(PS3.4 Annex F) moves them along; arriving images are reconciled to them;
HL7 ADT updates and merges the archive's patients (IHE RAD TF-1 Patient
Information Reconciliation).  This module is the only place with their SQL.

Model (tables in the index database, migration ``0004_orders``):

* ``orders`` — one imaging service request with its one requested procedure
  (PS3.3 C.4.10/C.4.11): accession number, placer/filler order numbers,
  requested procedure ID, description and code, physicians, priority, and the
  Study Instance UID assigned when the order is created, so that the images a
  modality acquires from the worklist item join that study.
* ``procedure_steps`` — its scheduled procedure steps (PS3.3 C.4.10 SPS
  sequence): modality, station AE title, start date/time, performer, status.
* ``performed_steps`` — MPPS instances (N-CREATE/N-SET) and the steps they
  performed.
* ``hl7_messages`` — control IDs already applied with the ACK each got, so
  that a message sent twice is answered with the original ACK and not
  applied twice.

Status: ``SCHEDULED → IN PROGRESS → COMPLETED | DISCONTINUED``, or
``CANCELLED`` (before it started).  The MWL shows them with the DICOM terms
SCHEDULED, STARTED, COMPLETED, DISCONTINUED, CANCELED (PS3.3 C.4.10,
Scheduled Procedure Step Status); an order's status is the aggregate of its
steps'.

Reconciliation: when the first instance of a study arrives (archive event),
orders with that Study Instance UID, or with the study's Accession Number,
are marked as having images, and the study's empty fields in the index are
filled from the order (AccessionNumber, StudyDescription ← requested procedure
description, ReferringPhysicianName, StudyID ← requested procedure ID), so
C-FIND/QIDO and the browser show the order's data.  The stored files are not
rewritten.  A study whose patient differs from the order's is logged, not
moved.

All changes of one HL7 message or one DIMSE request happen in one
transaction (:meth:`OrderBook.transaction`); subscribers hear
:class:`OrderEvent` after the commit.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydicom.uid import generate_uid
from sqlalchemy import (
    Column,
    ColumnElement,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from hilum.archive.query import matcher_condition
from hilum.archive.schema import patients, studies
from hilum.dicom.matching import (
    Matcher,
    Range,
    Single,
    Universal,
    normalize_time,
    parse_key,
    pn_groups,
)
from hilum.errors import HilumError

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEDULED, IN_PROGRESS, COMPLETED, DISCONTINUED, CANCELLED = (
    "SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED", "CANCELLED")
STATUSES = (SCHEDULED, IN_PROGRESS, COMPLETED, DISCONTINUED, CANCELLED)
#: Statuses a modality's worklist shows when the query does not ask for one.
ACTIVE = (SCHEDULED, IN_PROGRESS)
FINAL = (COMPLETED, DISCONTINUED, CANCELLED)
#: Internal status → Scheduled Procedure Step Status (0040,0020) defined term (PS3.3 C.4.10).
DICOM_STATUS = {SCHEDULED: "SCHEDULED", IN_PROGRESS: "STARTED", COMPLETED: "COMPLETED",
                DISCONTINUED: "DISCONTINUED", CANCELLED: "CANCELED"}

metadata = MetaData()

orders = Table(
    "orders",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_fk", Integer, ForeignKey(patients.c.pk, ondelete="CASCADE"), nullable=False),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("accession_number", String(16), nullable=False, default=""),
    Column("placer_number", String(64), nullable=False, default=""),
    Column("filler_number", String(64), nullable=False, default=""),
    Column("requested_procedure_id", String(16), nullable=False, default=""),
    Column("description", String(64), nullable=False, default=""),
    Column("code_value", String(16), nullable=False, default=""),
    Column("code_scheme", String(16), nullable=False, default=""),
    Column("code_meaning", String(64), nullable=False, default=""),
    Column("referring_physician", String(324), nullable=False, default=""),
    Column("ref_pn", String(324), nullable=False, default=""),
    Column("requesting_physician", String(324), nullable=False, default=""),
    Column("priority", String(16), nullable=False, default=""),
    Column("reason", String(64), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("source", String(64), nullable=False, default=""),
    Column("images_at", DateTime(timezone=True), nullable=True),
    Column("performed_study_uid", String(64), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_orders_patient", "patient_fk"),
    Index("ix_orders_accession", "accession_number"),
    Index("ix_orders_placer", "placer_number"),
    Index("ix_orders_filler", "filler_number"),
    Index("ix_orders_status", "status"),
)

procedure_steps = Table(
    "procedure_steps",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("order_fk", Integer, ForeignKey(orders.c.pk, ondelete="CASCADE"), nullable=False),
    Column("sps_id", String(16), nullable=False, default=""),
    Column("modality", String(16), nullable=False, default=""),
    Column("station_aet", String(16), nullable=False, default=""),
    Column("station_name", String(16), nullable=False, default=""),
    Column("location", String(16), nullable=False, default=""),
    Column("start_date", String(8), nullable=False, default=""),
    Column("start_time", String(13), nullable=False, default=""),
    Column("start_dt", String(21), nullable=False, default=""),
    Column("performer", String(324), nullable=False, default=""),
    Column("performer_pn", String(324), nullable=False, default=""),
    Column("description", String(64), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_sps_order", "order_fk"),
    Index("ix_sps_station", "station_aet", "start_dt"),
    Index("ix_sps_modality", "modality", "start_dt"),
    Index("ix_sps_start", "start_dt"),
    Index("ix_sps_status", "status", "start_dt"),
)

performed_steps = Table(
    "performed_steps",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("mpps_uid", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("station_aet", String(16), nullable=False, default=""),
    Column("modality", String(16), nullable=False, default=""),
    Column("pps_id", String(16), nullable=False, default=""),
    Column("description", String(64), nullable=False, default=""),
    Column("start_date", String(8), nullable=False, default=""),
    Column("start_time", String(13), nullable=False, default=""),
    Column("end_date", String(8), nullable=False, default=""),
    Column("end_time", String(13), nullable=False, default=""),
    Column("study_uid", String(64), nullable=False, default=""),
    Column("accession_number", String(16), nullable=False, default=""),
    Column("scheduled_steps", Text, nullable=False, default="[]"),  # JSON list of procedure_steps.pk
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

hl7_messages = Table(
    "hl7_messages",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("sender", String(255), nullable=False),
    Column("control_id", String(199), nullable=False),
    Column("message_type", String(16), nullable=False),
    Column("ack", Text, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ux_hl7_messages_sender_control", "sender", "control_id", unique=True),
)


# --------------------------------------------------------------------------- errors and values


class OrderError(HilumError):
    """An order, patient or procedure-step change that cannot be made.

    ``code`` names the cause for the protocol adapters: ``unknown-order``,
    ``duplicate-order``, ``invalid-state``, ``invalid-value``,
    ``missing-value``, ``unknown-step``, ``duplicate-step``.
    """

    def __init__(self, code: str, message: str, *, where: str = ""):
        self.code = code
        self.where = where
        super().__init__(message)


@dataclass(slots=True)
class PatientInfo:
    """Patient demographics as a message carries them.

    ``None`` means "not sent: keep what the archive has"; ``""`` clears
    (HL7's ``""``, 2.5.3).  ``name`` is a DICOM PN (``Family^Given^Middle^Prefix^Suffix``).
    """

    patient_id: str
    issuer: str = ""
    name: str | None = None
    birth_date: str | None = None
    sex: str | None = None


@dataclass(slots=True)
class StepInfo:
    """A scheduled procedure step (PS3.3 C.4.10): where, when, with what, by whom."""

    sps_id: str = ""
    modality: str = ""
    station_aet: str = ""
    station_name: str = ""
    location: str = ""
    start_date: str = ""  # YYYYMMDD
    start_time: str = ""  # HHMMSS[.FFFFFF]
    performer: str = ""  # PN
    description: str = ""


@dataclass(slots=True)
class OrderInfo:
    """An imaging order with its requested procedure and scheduled steps.

    Empty ``accession_number``/``study_uid``/``requested_procedure_id`` are
    assigned by :meth:`OrderTx.create_order`.
    """

    placer_number: str = ""
    filler_number: str = ""
    accession_number: str = ""
    study_uid: str = ""
    requested_procedure_id: str = ""
    description: str = ""
    code_value: str = ""
    code_scheme: str = ""
    code_meaning: str = ""
    referring_physician: str = ""
    requesting_physician: str = ""
    priority: str = ""
    reason: str = ""
    source: str = ""
    steps: list[StepInfo] = field(default_factory=list)


@dataclass(slots=True)
class PerformedInfo:
    """What an MPPS N-CREATE or N-SET says (PS3.3 C.4.13/C.4.14); ``None`` = not sent."""

    status: str | None = None
    station_aet: str | None = None
    modality: str | None = None
    pps_id: str | None = None
    description: str | None = None
    start_date: str | None = None
    start_time: str | None = None
    end_date: str | None = None
    end_time: str | None = None
    #: Scheduled Step Attributes Sequence items: dicts with StudyInstanceUID,
    #: AccessionNumber, RequestedProcedureID, ScheduledProcedureStepID.
    scheduled: list[dict[str, str]] | None = None


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """What order subscribers hear after a commit.

    ``kind``: ``created``, ``changed``, ``cancelled``, ``status``, ``arrived``,
    ``patient-updated``, ``patient-merged``.
    """

    kind: str
    order_pk: int | None = None
    accession_number: str = ""
    study_uid: str = ""
    patient_id: str = ""
    status: str = ""


def _now() -> datetime:
    return datetime.now(UTC)


_DATE_RE = re.compile(r"\d{8}")


def _check_date(value: str, what: str) -> str:
    if value and not _DATE_RE.fullmatch(value):
        raise OrderError("invalid-value", f"{what}: invalid date {value!r} (expected YYYYMMDD)", where=what)
    return value


def _norm_time(value: str, what: str) -> str:
    if not value:
        return ""
    try:
        return normalize_time(value)
    except ValueError as exc:
        raise OrderError("invalid-value", f"{what}: invalid time {value!r}", where=what) from exc


def dicom_time(value: str) -> str:
    """A stored ``HHMMSS.FFFFFF`` time as the shortest DICOM TM (``HHMMSS`` when whole seconds)."""
    if value.endswith(".000000"):
        return value[:6]
    return value.rstrip("0") if "." in value else value


def _pn_values(name: str) -> dict[str, str]:
    a, i, p = pn_groups(name)
    return {"patient_name": name, "pn_a": a, "pn_i": i, "pn_p": p}


# --------------------------------------------------------------------------- worklist keys

# DICOM keyword → (column(s), kind).  PN keys match on normalised columns.
_P, _O, _S = patients.c, orders.c, procedure_steps.c
_WL_COLUMNS: dict[str, tuple[tuple[Any, ...], str]] = {
    "PatientName": ((_P.pn_a, _P.pn_i, _P.pn_p), "pn"),
    "PatientID": ((_P.patient_id,), "text"),
    "IssuerOfPatientID": ((_P.issuer,), "text"),
    "PatientBirthDate": ((_P.birth_date,), "text"),
    "PatientSex": ((_P.sex,), "text"),
    "StudyInstanceUID": ((_O.study_uid,), "text"),
    "AccessionNumber": ((_O.accession_number,), "text"),
    "RequestedProcedureID": ((_O.requested_procedure_id,), "text"),
    "RequestedProcedureDescription": ((_O.description,), "text"),
    "ReferringPhysicianName": ((_O.ref_pn,), "pn"),
    "RequestedProcedurePriority": ((_O.priority,), "text"),
    "PlacerOrderNumberImagingServiceRequest": ((_O.placer_number,), "text"),
    "FillerOrderNumberImagingServiceRequest": ((_O.filler_number,), "text"),
    "ScheduledStationAETitle": ((_S.station_aet,), "text"),
    "ScheduledStationName": ((_S.station_name,), "text"),
    "ScheduledProcedureStepLocation": ((_S.location,), "text"),
    "Modality": ((_S.modality,), "text"),
    "ScheduledProcedureStepStartDate": ((_S.start_date,), "text"),
    "ScheduledProcedureStepStartTime": ((_S.start_time,), "text"),
    "ScheduledPerformingPhysicianName": ((_S.performer_pn,), "pn"),
    "ScheduledProcedureStepID": ((_S.sps_id,), "text"),
    "ScheduledProcedureStepDescription": ((_S.description,), "text"),
}
#: Keys of the Scheduled Procedure Step Sequence item (0040,0100).
SPS_KEYS = (
    "ScheduledStationAETitle", "ScheduledStationName", "ScheduledProcedureStepLocation", "Modality",
    "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepID", "ScheduledProcedureStepDescription", "ScheduledProcedureStepStatus",
)
#: Keys a worklist row carries (top level of the MWL identifier and the SPS item).
WORKLIST_KEYS = tuple(_WL_COLUMNS) + ("ScheduledProcedureStepStatus", "RequestingPhysician",
                                      "ReasonForTheRequestedProcedure", "RequestedProcedureCodeSequence")


def _status_condition(value: Any, active_only: bool) -> ColumnElement[bool] | None:
    m = parse_key("ScheduledProcedureStepStatus", value, vr="CS")
    if isinstance(m, Universal):
        return _S.status.in_(ACTIVE) if active_only else None
    wanted = [s for s in STATUSES if m.matches(DICOM_STATUS[s]) or m.matches(s)]
    return _S.status.in_(wanted) if wanted else false()


def build_worklist_conditions(identifier: Mapping[str, Any], *, active_only: bool) -> list[ColumnElement[bool]]:
    """WHERE conditions for a worklist query (PS3.4 K.2.2 matching, C.2.2.2 semantics).

    Raises ``ValueError`` on a malformed value (→ C-FIND 0xA900).
    """
    conds: list[ColumnElement[bool]] = []
    matchers: dict[str, Matcher] = {}
    for keyword, value in identifier.items():
        if keyword == "ScheduledProcedureStepStatus":
            continue
        if keyword not in _WL_COLUMNS:
            continue  # return-only key (e.g. RequestingPhysician): not matched
        matchers[keyword] = parse_key(keyword, value)
    date_m = matchers.get("ScheduledProcedureStepStartDate")
    time_m = matchers.get("ScheduledProcedureStepStartTime")
    if isinstance(date_m, (Single, Range)):
        # Dates match on start_dt (date + time), which the (station, start) and
        # (modality, start) indexes cover; with a time range too, the two
        # combine into one span (PS3.4 C.2.2.2.5.2).
        low_d, high_d = (date_m.value, date_m.value) if isinstance(date_m, Single) else (date_m.low, date_m.high)
        combined = isinstance(time_m, Range)
        low_t = (time_m.low if isinstance(time_m, Range) else None) or "000000.000000"
        high_t = (time_m.high if isinstance(time_m, Range) else None) or "235959.999999"
        span = [_S.start_dt != ""]
        if low_d is not None:
            span.append(_S.start_dt >= low_d + low_t)
        if high_d is not None:
            span.append(_S.start_dt <= high_d + high_t)
        conds.append(and_(*span))
        matchers.pop("ScheduledProcedureStepStartDate")
        if combined:
            matchers.pop("ScheduledProcedureStepStartTime")
    for keyword, m in matchers.items():
        cond = matcher_condition(m, _WL_COLUMNS[keyword][0])
        if cond is not None:
            conds.append(cond)
    status = _status_condition(identifier.get("ScheduledProcedureStepStatus"), active_only)
    if status is not None:
        conds.append(status)
    return conds


_WL_SELECT_COLUMNS = [
    _P.patient_name.label("PatientName"), _P.patient_id.label("PatientID"), _P.issuer.label("IssuerOfPatientID"),
    _P.birth_date.label("PatientBirthDate"), _P.sex.label("PatientSex"),
    _O.study_uid.label("StudyInstanceUID"), _O.accession_number.label("AccessionNumber"),
    _O.requested_procedure_id.label("RequestedProcedureID"), _O.description.label("RequestedProcedureDescription"),
    _O.referring_physician.label("ReferringPhysicianName"), _O.requesting_physician.label("RequestingPhysician"),
    _O.priority.label("RequestedProcedurePriority"), _O.reason.label("ReasonForTheRequestedProcedure"),
    _O.placer_number.label("PlacerOrderNumberImagingServiceRequest"),
    _O.filler_number.label("FillerOrderNumberImagingServiceRequest"),
    _O.code_value.label("_code_value"), _O.code_scheme.label("_code_scheme"), _O.code_meaning.label("_code_meaning"),
    _S.station_aet.label("ScheduledStationAETitle"), _S.station_name.label("ScheduledStationName"),
    _S.location.label("ScheduledProcedureStepLocation"), _S.modality.label("Modality"),
    _S.start_date.label("ScheduledProcedureStepStartDate"), _S.start_time.label("ScheduledProcedureStepStartTime"),
    _S.performer.label("ScheduledPerformingPhysicianName"), _S.sps_id.label("ScheduledProcedureStepID"),
    _S.description.label("ScheduledProcedureStepDescription"), _S.status.label("_status"),
    _O.status.label("_order_status"), _O.pk.label("_order_pk"), _S.pk.label("_sps_pk"),
    _O.images_at.label("_images_at"), _O.performed_study_uid.label("_performed_study_uid"),
    _O.created_at.label("_created_at"),
]


def _worklist_row(r: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(r)
    row["ScheduledProcedureStepStatus"] = DICOM_STATUS.get(row["_status"], row["_status"])
    row["ScheduledProcedureStepStartTime"] = dicom_time(row["ScheduledProcedureStepStartTime"] or "")
    if row["_code_value"]:
        row["RequestedProcedureCodeSequence"] = [{"CodeValue": row["_code_value"],
                                                  "CodingSchemeDesignator": row["_code_scheme"] or "L",
                                                  "CodeMeaning": row["_code_meaning"] or row["RequestedProcedureDescription"]}]
    else:
        row["RequestedProcedureCodeSequence"] = []
    images_at = row["_images_at"]
    if images_at is not None and images_at.tzinfo is None:
        row["_images_at"] = images_at.replace(tzinfo=UTC)
    return row


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


# --------------------------------------------------------------------------- transaction

# Statements of the hot paths (HL7 intake, order creation), built once: SQLAlchemy
# then reuses their cache keys and compiled forms; values go in as parameters.
_SEEN = select(hl7_messages.c.ack).where(hl7_messages.c.sender == bindparam("sender"),
                                         hl7_messages.c.control_id == bindparam("control_id"))
_PATIENT = select(patients).where(patients.c.patient_id == bindparam("patient_id"),
                                  patients.c.issuer == bindparam("issuer"))
_PATIENT_ID = select(patients.c.patient_id).where(patients.c.pk == bindparam("pk"))
_ORDER_BY = {c: select(orders.c.pk).where(orders.c[c] == bindparam("v")).order_by(orders.c.pk.desc()).limit(1)
             for c in ("placer_number", "filler_number", "accession_number", "study_uid")}
_STUDY_FOR_ORDER = (select(studies.c.study_uid)
                    .where(or_(studies.c.study_uid == bindparam("uid"), studies.c.accession_number == bindparam("acc")))
                    .order_by(studies.c.pk).limit(1))
_PATIENT_INSERT = {
    "sqlite": sqlite_insert(patients).on_conflict_do_nothing(index_elements=["patient_id", "issuer"]),
    "postgresql": pg_insert(patients).on_conflict_do_nothing(index_elements=["patient_id", "issuer"]),
}


class OrderTx:
    """The changes one message makes, inside one database transaction.

    Obtained from :meth:`OrderBook.transaction`; every method either works or
    raises :class:`OrderError`, and an exception rolls back everything the
    transaction did.
    """

    def __init__(self, book: OrderBook, conn: Connection, events: list[OrderEvent]):
        self.book = book
        self.conn = conn
        self.events = events

    # ------------------------------------------------------------ message log

    def seen(self, sender: str, control_id: str) -> str | None:
        """The ACK sent for a message already applied, or None."""
        return self.conn.execute(_SEEN, {"sender": sender[:255], "control_id": control_id[:199]}).scalar()

    def record(self, sender: str, control_id: str, message_type: str, ack: str) -> None:
        self.conn.execute(insert(hl7_messages), {"sender": sender[:255], "control_id": control_id[:199],
                                                 "message_type": message_type[:16], "ack": ack, "received_at": _now()})

    # ------------------------------------------------------------ patients

    def _patient_row(self, patient_id: str, issuer: str) -> Any:
        return self.conn.execute(_PATIENT, {"patient_id": patient_id, "issuer": issuer}).first()

    def upsert_patient(self, info: PatientInfo, *, overwrite: bool = True) -> int:
        """The patient's pk, creating the patient if unknown (policy: create).

        ``overwrite``: sent demographics replace the archive's (ADT); else
        they only fill empty fields (an order's PID does not override ADT).
        """
        if not info.patient_id:
            raise OrderError("missing-value", "patient identifier missing", where="PID-3")
        if len(info.patient_id) > 64:
            raise OrderError("invalid-value", "patient identifier longer than 64 characters", where="PID-3")
        _check_date(info.birth_date or "", "PID-7")
        row = self._patient_row(info.patient_id, info.issuer)
        values: dict[str, Any] = {}
        if info.name is not None and (overwrite or (row is not None and not row.patient_name)):
            values.update(_pn_values(info.name[:324]))
        if info.birth_date is not None and (overwrite or (row is not None and not row.birth_date)):
            values["birth_date"] = info.birth_date[:8]
        if info.sex is not None and (overwrite or (row is not None and not row.sex)):
            values["sex"] = info.sex[:16]
        if row is None:
            base = {"patient_id": info.patient_id, "issuer": info.issuer, **_pn_values(info.name or ""),
                    "birth_date": (info.birth_date or "")[:8], "sex": (info.sex or "")[:16], "created_at": _now()}
            ins = _PATIENT_INSERT.get(self.book.dialect)
            if ins is None:
                self.conn.execute(insert(patients), base)
            else:
                self.conn.execute(ins, base)
            row = self._patient_row(info.patient_id, info.issuer)
            self.events.append(OrderEvent("patient-updated", patient_id=info.patient_id))
            return int(row.pk)
        changed = {k: v for k, v in values.items() if getattr(row, k) != v}
        if changed:
            self.conn.execute(update(patients).where(patients.c.pk == row.pk).values(**changed))
            self.events.append(OrderEvent("patient-updated", patient_id=info.patient_id))
        return int(row.pk)

    def merge_patients(self, surviving: PatientInfo, prior_id: str, prior_issuer: str = "") -> bool:
        """Merge the prior patient into the surviving one (HL7 A40, IHE RAD-12).

        Studies and orders move to the surviving patient, whose record is
        created if unknown and updated from ``surviving``; the prior record
        goes.  Returns False when the prior patient is unknown (nothing moved).
        """
        if not prior_id:
            raise OrderError("missing-value", "prior patient identifier missing", where="MRG-1")
        keep = self.upsert_patient(surviving)
        prior = self._patient_row(prior_id, prior_issuer)
        if prior is None:
            return False
        if int(prior.pk) == keep:
            return True
        self.conn.execute(update(studies).where(studies.c.patient_fk == prior.pk).values(patient_fk=keep))
        self.conn.execute(update(orders).where(orders.c.patient_fk == prior.pk).values(patient_fk=keep,
                                                                                        updated_at=_now()))
        self.conn.execute(delete(patients).where(patients.c.pk == prior.pk))
        self.events.append(OrderEvent("patient-merged", patient_id=surviving.patient_id))
        log.info("patient merged into the surviving record (%d)", keep)
        return True

    # ------------------------------------------------------------ orders

    def find_order(self, *, placer: str = "", filler: str = "", accession: str = "") -> int | None:
        """An order's pk by placer number, else filler number, else accession number."""
        for col, value in ((orders.c.placer_number, placer), (orders.c.filler_number, filler),
                           (orders.c.accession_number, accession)):
            if value:
                pk = self.conn.execute(_ORDER_BY[col.name], {"v": value}).scalar()
                if pk is not None:
                    return int(pk)
        return None

    def _new_accession(self) -> str:
        while True:
            acc = "H" + secrets.token_hex(7).upper()  # 15 characters (SH allows 16)
            if self.conn.execute(select(orders.c.pk).where(orders.c.accession_number == acc)).first() is None:
                return acc

    def create_order(self, patient_pk: int, info: OrderInfo) -> int:
        """Create an order and its steps (status SCHEDULED); returns its pk.

        Assigns what is missing: the accession number (the filler order number
        when it fits 16 characters, else a generated one), the Study Instance
        UID (PS3.5 9.1, UUID-derived ``2.25.`` root), the requested procedure ID
        (= accession number) and the step IDs.
        """
        if info.placer_number and self._order_by("placer_number", info.placer_number) is not None:
            raise OrderError("duplicate-order", f"an order with placer number {info.placer_number!r} exists",
                             where="ORC-2")
        acc = info.accession_number or (info.filler_number if 0 < len(info.filler_number) <= 16 else "")
        acc = acc or self._new_accession()
        if len(acc) > 16:
            raise OrderError("invalid-value", f"accession number {acc!r} longer than 16 characters", where="OBR-18")
        study_uid = info.study_uid or generate_uid(prefix=None)
        if len(study_uid) > 64 or not re.fullmatch(r"[0-9.]+", study_uid):
            raise OrderError("invalid-value", f"invalid Study Instance UID {study_uid!r}", where="ZDS-1")
        if self._order_by("study_uid", study_uid) is not None:
            raise OrderError("duplicate-order", f"an order with Study Instance UID {study_uid} exists", where="ZDS-1")
        now = _now()
        values = self._order_values(info)
        values.update(patient_fk=patient_pk, study_uid=study_uid, accession_number=acc,
                      requested_procedure_id=info.requested_procedure_id[:16] or acc, status=SCHEDULED,
                      source=info.source[:64], images_at=None, performed_study_uid="", created_at=now, updated_at=now)
        inserted = self.conn.execute(insert(orders), values).inserted_primary_key
        assert inserted is not None
        pk = int(inserted[0])
        steps = info.steps or [StepInfo()]
        for i, step in enumerate(steps, 1):
            self._insert_step(pk, step, default_id=f"{acc}-{i}" if len(steps) > 1 else acc)
        self._reconcile_existing(pk, study_uid, acc, patient_pk)
        self.events.append(OrderEvent("created", pk, acc, study_uid, self._patient_id(patient_pk), SCHEDULED))
        return pk

    def _order_by(self, column: str, value: str) -> Any:
        return self.conn.execute(_ORDER_BY[column], {"v": value}).first()

    @staticmethod
    def _order_values(info: OrderInfo) -> dict[str, Any]:
        ref = info.referring_physician[:324]
        return dict(
            placer_number=info.placer_number[:64], filler_number=info.filler_number[:64],
            description=info.description[:64], code_value=info.code_value[:16], code_scheme=info.code_scheme[:16],
            code_meaning=info.code_meaning[:64], referring_physician=ref, ref_pn=pn_groups(ref)[0],
            requesting_physician=info.requesting_physician[:324], priority=info.priority[:16],
            reason=info.reason[:64],
        )

    @staticmethod
    def _step_values(step: StepInfo) -> dict[str, Any]:
        date = _check_date(step.start_date, "SPS start date")
        time = _norm_time(step.start_time, "SPS start time")
        return dict(
            modality=step.modality[:16].upper(), station_aet=step.station_aet[:16], station_name=step.station_name[:16],
            location=step.location[:16], start_date=date, start_time=time,
            start_dt=(date + (time or "000000.000000")) if date else "",
            performer=step.performer[:324], performer_pn=pn_groups(step.performer)[0],
            description=step.description[:64],
        )

    def _insert_step(self, order_pk: int, step: StepInfo, *, default_id: str) -> None:
        self.conn.execute(insert(procedure_steps), {"order_fk": order_pk, "sps_id": (step.sps_id or default_id)[:16],
                                                    "status": SCHEDULED, "updated_at": _now(),
                                                    **self._step_values(step)})

    def _patient_id(self, patient_pk: int) -> str:
        return str(self.conn.execute(_PATIENT_ID, {"pk": patient_pk}).scalar() or "")

    def order(self, pk: int) -> dict[str, Any]:
        row = self.conn.execute(select(orders).where(orders.c.pk == pk)).mappings().first()
        if row is None:
            raise OrderError("unknown-order", f"no order {pk}")
        return dict(row)

    def update_order(self, pk: int, info: OrderInfo, patient_pk: int | None = None) -> None:
        """Change an order that has not finished (HL7 ORC-1 XO): fields sent replace, steps too."""
        cur = self.order(pk)
        if cur["status"] in FINAL:
            raise OrderError("invalid-state", f"order {cur['accession_number']} is {cur['status'].lower()}: "
                             "it cannot be changed", where="ORC-1")
        values = {k: v for k, v in self._order_values(info).items() if v}
        if info.referring_physician:
            values["ref_pn"] = pn_groups(info.referring_physician)[0]
        if info.requested_procedure_id:
            values["requested_procedure_id"] = info.requested_procedure_id[:16]
        if patient_pk is not None and patient_pk != cur["patient_fk"]:
            values["patient_fk"] = patient_pk
        values["updated_at"] = _now()
        self.conn.execute(update(orders).where(orders.c.pk == pk).values(**values))
        if info.steps:
            steps = self.conn.execute(select(procedure_steps.c.pk, procedure_steps.c.status)
                                      .where(procedure_steps.c.order_fk == pk)
                                      .order_by(procedure_steps.c.pk)).all()
            for row, step in zip(steps, info.steps, strict=False):
                if row.status != SCHEDULED:
                    continue
                vals = {k: v for k, v in self._step_values(step).items() if v}
                if step.sps_id:
                    vals["sps_id"] = step.sps_id[:16]
                if vals:
                    self.conn.execute(update(procedure_steps).where(procedure_steps.c.pk == row.pk)
                                      .values(updated_at=_now(), **vals))
            for i, step in enumerate(info.steps[len(steps):], len(steps) + 1):
                self._insert_step(pk, step, default_id=f"{cur['accession_number']}-{i}")
        self.events.append(OrderEvent("changed", pk, cur["accession_number"], cur["study_uid"],
                                      self._patient_id(values.get("patient_fk", cur["patient_fk"])), cur["status"]))

    def set_status(self, pk: int, status: str, *, step_pks: Sequence[int] | None = None) -> str:
        """Move an order's steps (all, or ``step_pks``) to ``status``; returns the order's new status.

        Allowed: SCHEDULED → IN PROGRESS | CANCELLED | DISCONTINUED | COMPLETED,
        IN PROGRESS → COMPLETED | DISCONTINUED (| IN PROGRESS again). Setting
        a status a step already has is a no-op; anything else out of a final
        status raises ``invalid-state``.
        """
        if status not in STATUSES:
            raise OrderError("invalid-value", f"unknown order status {status!r}")
        cur = self.order(pk)
        sel = select(procedure_steps.c.pk, procedure_steps.c.status).where(procedure_steps.c.order_fk == pk)
        if step_pks is not None:
            sel = sel.where(procedure_steps.c.pk.in_(list(step_pks)))
        steps = self.conn.execute(sel).all()
        for row in steps:
            if row.status == status:
                continue
            if row.status in FINAL or (row.status == IN_PROGRESS and status in (SCHEDULED, CANCELLED)):
                raise OrderError("invalid-state", f"order {cur['accession_number']} is {row.status.lower()}: "
                                 f"it cannot become {status.lower()}", where="ORC-1")
            self.conn.execute(update(procedure_steps).where(procedure_steps.c.pk == row.pk)
                              .values(status=status, updated_at=_now()))
        all_steps = self.conn.execute(select(procedure_steps.c.status)
                                      .where(procedure_steps.c.order_fk == pk)).scalars().all()
        new = aggregate_status(all_steps)
        if new != cur["status"]:
            self.conn.execute(update(orders).where(orders.c.pk == pk).values(status=new, updated_at=_now()))
        kind = "cancelled" if new == CANCELLED else "status"
        self.events.append(OrderEvent(kind, pk, cur["accession_number"], cur["study_uid"],
                                      self._patient_id(cur["patient_fk"]), new))
        return new

    # ------------------------------------------------------------ MPPS

    def _match_steps(self, refs: list[dict[str, str]]) -> list[tuple[int, int]]:
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
            for r in self.conn.execute(sel).all():
                if (r.pk, r.sps_pk) not in found:
                    found.append((int(r.pk), int(r.sps_pk)))
        return found

    def _apply_pps(self, status: str, links: list[tuple[int, int]]) -> None:
        target = {"IN PROGRESS": IN_PROGRESS, "COMPLETED": COMPLETED, "DISCONTINUED": DISCONTINUED}[status]
        by_order: dict[int, list[int]] = {}
        for order_pk, sps_pk in links:
            by_order.setdefault(order_pk, []).append(sps_pk)
        for order_pk, sps in by_order.items():
            try:
                self.set_status(order_pk, target, step_pks=sps)
            except OrderError as exc:
                # The MPPS itself is valid; a step already final stays so.
                log.warning("MPPS: %s", exc)

    def mpps_create(self, uid: str, info: PerformedInfo) -> int:
        """MPPS N-CREATE (PS3.4 F.7.2.1): record it, start the scheduled steps it names.

        Returns how many scheduled steps it matched (0 = unscheduled).
        """
        if info.status != "IN PROGRESS":
            raise OrderError("invalid-value", f"Performed Procedure Step Status must be IN PROGRESS, not "
                             f"{info.status!r}", where="PerformedProcedureStepStatus")
        if self.conn.execute(select(performed_steps.c.pk).where(performed_steps.c.mpps_uid == uid)).first():
            raise OrderError("duplicate-step", f"MPPS {uid} exists")
        refs = info.scheduled or []
        links = self._match_steps(refs)
        first = refs[0] if refs else {}
        now = _now()
        self.conn.execute(insert(performed_steps).values(
            mpps_uid=uid, status="IN PROGRESS", station_aet=(info.station_aet or "")[:16],
            modality=(info.modality or "")[:16], pps_id=(info.pps_id or "")[:16],
            description=(info.description or "")[:64], start_date=_check_date(info.start_date or "", "start date"),
            start_time=_norm_time(info.start_time or "", "start time"),
            end_date=_check_date(info.end_date or "", "end date"), end_time=_norm_time(info.end_time or "", "end time"),
            study_uid=first.get("StudyInstanceUID", "")[:64], accession_number=first.get("AccessionNumber", "")[:16],
            scheduled_steps=json.dumps([s for _, s in links]), created_at=now, updated_at=now))
        self._apply_pps("IN PROGRESS", links)
        return len(links)

    def mpps_set(self, uid: str, info: PerformedInfo) -> str:
        """MPPS N-SET (PS3.4 F.7.2.2): update it; COMPLETED/DISCONTINUED finish its scheduled steps.

        Returns the MPPS's status after the change.
        """
        row = self.conn.execute(select(performed_steps).where(performed_steps.c.mpps_uid == uid)).first()
        if row is None:
            raise OrderError("unknown-step", f"no MPPS {uid}")
        if row.status != "IN PROGRESS":
            raise OrderError("invalid-state", f"MPPS {uid} is {row.status}: it cannot be changed")
        status = info.status or row.status
        if status not in ("IN PROGRESS", "COMPLETED", "DISCONTINUED"):
            raise OrderError("invalid-value", f"invalid Performed Procedure Step Status {status!r}",
                             where="PerformedProcedureStepStatus")
        values: dict[str, Any] = {"status": status, "updated_at": _now()}
        for key in ("station_aet", "modality", "pps_id", "description"):
            v = getattr(info, key)
            if v is not None:
                values[key] = v[:16] if key != "description" else v[:64]
        if info.end_date is not None:
            values["end_date"] = _check_date(info.end_date, "end date")
        if info.end_time is not None:
            values["end_time"] = _norm_time(info.end_time, "end time")
        links_pks = json.loads(row.scheduled_steps or "[]")
        if info.scheduled:
            extra = [s for _, s in self._match_steps(info.scheduled)]
            links_pks = list(dict.fromkeys([*links_pks, *extra]))
            values["scheduled_steps"] = json.dumps(links_pks)
        self.conn.execute(update(performed_steps).where(performed_steps.c.pk == row.pk).values(**values))
        if links_pks and status != "IN PROGRESS":
            pairs = self.conn.execute(select(procedure_steps.c.order_fk, procedure_steps.c.pk)
                                      .where(procedure_steps.c.pk.in_(links_pks))).all()
            self._apply_pps(status, [(int(a), int(b)) for a, b in pairs])
        return status

    # ------------------------------------------------------------ reconciliation

    def _reconcile_existing(self, order_pk: int, study_uid: str, accession: str, patient_pk: int) -> None:
        """Images already here for a new order (sent before it was entered): reconcile now."""
        st = self.conn.execute(_STUDY_FOR_ORDER, {"uid": study_uid, "acc": accession}).scalar()
        if st is not None:
            self.reconcile_study(st)

    def reconcile_study(self, study_uid: str) -> int:
        """Match a stored study to its orders; returns how many orders it matched."""
        st = self.conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
        if st is None:
            return 0
        conds = [orders.c.study_uid == study_uid]
        if st["accession_number"]:
            conds.append(orders.c.accession_number == st["accession_number"])
        rows = self.conn.execute(select(orders).where(or_(*conds), orders.c.images_at.is_(None))
                                 .order_by((orders.c.study_uid == study_uid).desc(), orders.c.pk)).mappings().all()
        if not rows:
            return 0
        now = _now()
        fill: dict[str, Any] = {}
        first = rows[0]
        if not st["accession_number"]:
            fill["accession_number"] = first["accession_number"]
        if not st["study_description"] and first["description"]:
            fill["study_description"] = first["description"]
        if not st["referring_physician"] and first["referring_physician"]:
            fill["referring_physician"] = first["referring_physician"]
            fill["ref_pn_a"] = first["ref_pn"]
        if not st["study_id"] and first["requested_procedure_id"]:
            fill["study_id"] = first["requested_procedure_id"][:16]
        if fill:
            fill["updated_at"] = now
            self.conn.execute(update(studies).where(studies.c.pk == st["pk"]).values(**fill))
        for o in rows:
            self.conn.execute(update(orders).where(orders.c.pk == o["pk"]).values(
                images_at=now, performed_study_uid=study_uid, updated_at=now))
            if o["patient_fk"] != st["patient_fk"]:
                log.warning("study %s reconciled to order %s of another patient record: not moved",
                            study_uid, o["accession_number"])
            self.events.append(OrderEvent("arrived", int(o["pk"]), o["accession_number"], o["study_uid"],
                                          self._patient_id(o["patient_fk"]), o["status"]))
        return len(rows)


# --------------------------------------------------------------------------- the book

_BOOKS: weakref.WeakKeyDictionary[Any, OrderBook] = weakref.WeakKeyDictionary()
_BOOKS_LOCK = threading.Lock()


class OrderBook:
    """Orders of one archive: transactions, worklist queries, events, reconciliation.

    Use :meth:`of` to get the archive's one book (so every adapter and the
    GUI share its events).  Thread-safe.
    """

    SEEN_STUDIES = 20_000

    def __init__(self, archive: Any):
        self.archive = archive
        self.engine = archive.engine
        self.dialect = archive.dialect
        self._lock: threading.Lock = getattr(archive, "_write_lock", None) or threading.Lock()
        self._subs: list[Callable[[OrderEvent], None]] = []
        self._subs_lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_lock = threading.Lock()
        self._unsubscribe = archive.subscribe(self._on_archive_event)

    @classmethod
    def of(cls, archive: Any) -> OrderBook:
        """The archive's order book (created, and pending images reconciled, on first use)."""
        with _BOOKS_LOCK:
            book = _BOOKS.get(archive)
            if book is None:
                book = cls(archive)
                _BOOKS[archive] = book
                created = True
            else:
                created = False
        if created:
            try:
                book.reconcile_pending()
            except Exception:  # noqa: BLE001 - a catch-up failure must not stop the node
                log.exception("reconciling orders with stored studies failed")
        return book

    def close(self) -> None:
        self._unsubscribe()
        with _BOOKS_LOCK:
            if _BOOKS.get(self.archive) is self:
                del _BOOKS[self.archive]

    # ------------------------------------------------------------ events

    def subscribe(self, callback: Callable[[OrderEvent], None]) -> Callable[[], None]:
        """Call ``callback(OrderEvent)`` after each committed change; returns an unsubscribe function."""
        with self._subs_lock:
            self._subs.append(callback)

        def unsubscribe() -> None:
            with self._subs_lock:
                if callback in self._subs:
                    self._subs.remove(callback)

        return unsubscribe

    def _emit(self, events: list[OrderEvent]) -> None:
        with self._subs_lock:
            subs = list(self._subs)
        for ev in events:
            for cb in subs:
                try:
                    cb(ev)
                except Exception:  # noqa: BLE001 - a subscriber must not break a transaction's caller
                    log.exception("order event subscriber failed")

    # ------------------------------------------------------------ transactions

    @contextmanager
    def transaction(self) -> Iterator[OrderTx]:
        """One transaction: everything in the block is applied, or nothing (on an exception)."""
        events: list[OrderEvent] = []
        with self._lock, self.engine.begin() as conn:
            yield OrderTx(self, conn, events)
        self._emit(events)

    def run(self, work: Callable[[OrderTx], T]) -> T:
        with self.transaction() as tx:
            return work(tx)

    def apply_message(self, sender: str, control_id: str, message_type: str,
                      work: Callable[[OrderTx], T], make_ack: Callable[[T], str]) -> tuple[str, bool]:
        """Apply an HL7 message once: ``(ack, duplicate)``.

        A message whose (sender, control ID) was applied before is answered
        with the ACK it got then (``duplicate`` True) and not applied again.
        Otherwise ``work(tx)`` runs and its ACK (``make_ack(result)``) is
        stored with the changes, in one transaction; an exception from
        ``work`` rolls everything back and propagates (nothing is recorded,
        so a corrected resend is processed).
        """
        for attempt in (1, 2):
            try:
                with self.transaction() as tx:
                    prior = tx.seen(sender, control_id) if control_id else None
                    if prior is not None:
                        return prior, True
                    result = work(tx)
                    ack = make_ack(result)
                    if control_id:
                        tx.record(sender, control_id, message_type, ack)
                    return ack, False
            except IntegrityError:
                # The same control ID committed meanwhile by another connection: answer as a duplicate.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ queries

    def worklist(self, identifier: Mapping[str, Any] | None = None, *, active_only: bool = True,
                 limit: int | None = None, offset: int = 0) -> list[dict[str, Any]]:
        """Worklist items (one per scheduled procedure step) matching DICOM keys.

        ``identifier`` maps keywords of the MWL identifier (top level and the
        Scheduled Procedure Step Sequence item flattened: ``Modality``,
        ``ScheduledStationAETitle``, ``ScheduledProcedureStepStartDate``...)
        to query values in DICOM string form, matched per PS3.4 C.2.2.2.  Without
        a ``ScheduledProcedureStepStatus`` key, ``active_only`` limits to
        SCHEDULED and IN PROGRESS steps (the modality's view); the key accepts
        DICOM terms (``STARTED``, ``CANCELED``) and the internal ones.
        Rows carry the keywords of :data:`WORKLIST_KEYS` plus ``_status``,
        ``_order_status``, ``_order_pk``, ``_sps_pk``, ``_images_at``,
        ``_performed_study_uid``.  Raises ``ValueError`` on a malformed value.
        """
        conds = build_worklist_conditions(identifier or {}, active_only=active_only)
        stmt = (select(*_WL_SELECT_COLUMNS)
                .select_from(procedure_steps.join(orders, procedure_steps.c.order_fk == orders.c.pk)
                             .join(patients, orders.c.patient_fk == patients.c.pk)))
        if conds:
            stmt = stmt.where(and_(*conds))
        stmt = stmt.order_by(procedure_steps.c.start_dt, procedure_steps.c.pk)
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return [_worklist_row(r) for r in rows]

    def count(self, identifier: Mapping[str, Any] | None = None, *, active_only: bool = False) -> int:
        conds = build_worklist_conditions(identifier or {}, active_only=active_only)
        stmt = select(func.count()).select_from(
            procedure_steps.join(orders, procedure_steps.c.order_fk == orders.c.pk)
            .join(patients, orders.c.patient_fk == patients.c.pk))
        if conds:
            stmt = stmt.where(and_(*conds))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def order(self, *, accession: str = "", study_uid: str = "", placer: str = "") -> dict[str, Any] | None:
        """One order (row of ``orders`` with ``patient_id`` and ``steps``), or None."""
        conds = []
        if accession:
            conds.append(orders.c.accession_number == accession)
        if study_uid:
            conds.append(orders.c.study_uid == study_uid)
        if placer:
            conds.append(orders.c.placer_number == placer)
        if not conds:
            raise ValueError("give an accession number, a Study Instance UID or a placer order number")
        with self.engine.connect() as conn:
            row = conn.execute(select(orders, patients.c.patient_id, patients.c.patient_name)
                               .select_from(orders.join(patients, orders.c.patient_fk == patients.c.pk))
                               .where(and_(*conds)).order_by(orders.c.pk.desc()).limit(1)).mappings().first()
            if row is None:
                return None
            out = dict(row)
            out["steps"] = [dict(s) for s in conn.execute(select(procedure_steps).where(
                procedure_steps.c.order_fk == row["pk"]).order_by(procedure_steps.c.pk)).mappings().all()]
        return out

    def performed_step(self, uid: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(performed_steps).where(performed_steps.c.mpps_uid == uid)).mappings().first()
        return None if row is None else dict(row)

    # ------------------------------------------------------------ reconciliation

    def _on_archive_event(self, event: Any) -> None:
        if event.kind not in ("stored", "replaced") or not event.study_instance_uid:
            return
        uid = event.study_instance_uid
        with self._seen_lock:
            if uid in self._seen:
                self._seen.move_to_end(uid)
                return
            self._seen[uid] = None
            while len(self._seen) > self.SEEN_STUDIES:
                self._seen.popitem(last=False)
        try:
            self.reconcile(uid)
        except Exception:  # noqa: BLE001 - never break an ingest
            log.exception("reconciling study %s with orders failed", uid)

    def reconcile(self, study_uid: str) -> int:
        """Match one stored study to its orders (see the module docstring); returns the count."""
        # Cheap check first, outside the write lock: most studies have no order.
        with self.engine.connect() as conn:
            st = conn.execute(select(studies.c.accession_number).where(studies.c.study_uid == study_uid)).first()
            if st is None:
                return 0
            conds = [orders.c.study_uid == study_uid]
            if st.accession_number:
                conds.append(orders.c.accession_number == st.accession_number)
            if conn.execute(select(orders.c.pk).where(or_(*conds), orders.c.images_at.is_(None))
                            .limit(1)).first() is None:
                return 0
        with self.transaction() as tx:
            return tx.reconcile_study(study_uid)

    def reconcile_pending(self) -> int:
        """Reconcile orders without images whose study has arrived (start-up catch-up)."""
        with self.engine.connect() as conn:
            uids = conn.execute(select(studies.c.study_uid).select_from(
                orders.join(studies, or_(studies.c.study_uid == orders.c.study_uid,
                                         and_(orders.c.accession_number != "",
                                              studies.c.accession_number == orders.c.accession_number))))
                .where(orders.c.images_at.is_(None)).distinct()).scalars().all()
        n = 0
        for uid in uids:
            n += self.reconcile(uid)
        return n
