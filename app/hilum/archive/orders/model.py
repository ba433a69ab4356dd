"""The RIS side's values: statuses, what messages say about orders, steps and MPPS, events, errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.engine import Connection

from hilum.archive.patients import MessageRef, RegistryError
from hilum.dicom.matching import normalize_time

SCHEDULED, IN_PROGRESS, COMPLETED, DISCONTINUED, CANCELLED = (
    "SCHEDULED", "IN PROGRESS", "COMPLETED", "DISCONTINUED", "CANCELLED")
STATUSES = (SCHEDULED, IN_PROGRESS, COMPLETED, DISCONTINUED, CANCELLED)
#: Statuses a modality's worklist shows when the query does not ask for one.
ACTIVE = (SCHEDULED, IN_PROGRESS)
FINAL = (COMPLETED, DISCONTINUED, CANCELLED)
#: Internal status → Scheduled Procedure Step Status (0040,0020) defined term (PS3.3 C.4.10).
DICOM_STATUS = {SCHEDULED: "SCHEDULED", IN_PROGRESS: "STARTED", COMPLETED: "COMPLETED",
                DISCONTINUED: "DISCONTINUED", CANCELLED: "CANCELED"}


class OrderError(RegistryError):
    """An order, patient or procedure-step change that cannot be made.

    ``code`` names the cause for the protocol adapters: ``unknown-order``,
    ``duplicate-order``, ``invalid-state``, ``invalid-value``,
    ``missing-value``, ``unknown-step``, ``duplicate-step``.  (The patient
    registry's refusals are its base class, :class:`RegistryError`.)
    """


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
    assigned by :func:`hilum.archive.orders.lifecycle.create_order`.
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


class Tx(Protocol):
    """What the operations of one transaction work on (an :class:`~hilum.archive.orders.OrderTx`)."""

    conn: Connection
    events: list[OrderEvent]
    message: MessageRef | None


def now() -> datetime:
    return datetime.now(UTC)


_DATE_RE = re.compile(r"\d{8}")


def check_date(value: str, what: str) -> str:
    if value and not _DATE_RE.fullmatch(value):
        raise OrderError("invalid-value", f"{what}: invalid date {value!r} (expected YYYYMMDD)", where=what)
    return value


def norm_time(value: str, what: str) -> str:
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
