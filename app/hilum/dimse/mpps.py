"""MPPS SCP: Modality Performed Procedure Step N-CREATE / N-SET updating the archive's orders.

PS3.4 Annex F (Procedure Step SOP Classes), Modality Performed Procedure
Step SOP Class (1.2.840.10008.3.1.2.3.3).  N-CREATE (status IN PROGRESS)
records the performed step and starts the scheduled steps its Scheduled
Step Attributes Sequence names (by Study Instance UID or Accession Number,
and Scheduled Procedure Step ID); N-SET to COMPLETED or DISCONTINUED
finishes them (F.7.2.2: a step already COMPLETED/DISCONTINUED cannot be
changed any more).  An MPPS that names no known order (unscheduled case) is
kept without changing any order.

Statuses: 0x0111 duplicate SOP instance, 0x0112 no such SOP instance,
0x0106 invalid attribute value, 0x0110 processing failure (with an error
comment).
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from hilum.archive.orders import OrderBook, OrderError, PerformedInfo

log = logging.getLogger(__name__)

MODALITY_PERFORMED_PROCEDURE_STEP = "1.2.840.10008.3.1.2.3.3"
SOP_CLASSES = (MODALITY_PERFORMED_PROCEDURE_STEP,)

SUCCESS = 0x0000
INVALID_VALUE, PROCESSING_FAILURE, DUPLICATE_INSTANCE, NO_SUCH_INSTANCE = 0x0106, 0x0110, 0x0111, 0x0112
_STATUS_OF = {"duplicate-step": DUPLICATE_INSTANCE, "unknown-step": NO_SUCH_INSTANCE,
              "invalid-value": INVALID_VALUE, "invalid-state": PROCESSING_FAILURE}


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def _get(ds: Dataset, keyword: str) -> str | None:
    """A text attribute if present (``None`` when absent, ``""`` when sent empty)."""
    if keyword not in ds:
        return None
    value = ds[keyword].value
    return "" if value is None else str(value).strip()


def performed_info(ds: Dataset) -> PerformedInfo:
    """The parts of an MPPS attribute list (PS3.3 C.4.13, C.4.14) that the orders use."""
    scheduled = None
    if "ScheduledStepAttributesSequence" in ds:
        scheduled = []
        for item in ds.ScheduledStepAttributesSequence:
            scheduled.append({k: _get(item, k) or "" for k in ("StudyInstanceUID", "AccessionNumber",
                                                               "RequestedProcedureID", "ScheduledProcedureStepID")})
    status = _get(ds, "PerformedProcedureStepStatus")
    return PerformedInfo(
        status=status.upper() if status else status,
        station_aet=_get(ds, "PerformedStationAETitle"),
        modality=_get(ds, "Modality"),
        pps_id=_get(ds, "PerformedProcedureStepID"),
        description=_get(ds, "PerformedProcedureStepDescription"),
        start_date=_get(ds, "PerformedProcedureStepStartDate"),
        start_time=_get(ds, "PerformedProcedureStepStartTime"),
        end_date=_get(ds, "PerformedProcedureStepEndDate"),
        end_time=_get(ds, "PerformedProcedureStepEndTime"),
        scheduled=scheduled,
    )


class MppsSCP:
    """MPPS handlers on an archive's order book: bind :meth:`on_n_create` / :meth:`on_n_set`."""

    sop_classes = SOP_CLASSES
    kind = "store"  # the peer right it needs (``may_query`` / ``may_store``)

    def __init__(self, archive: Any, *, orders: OrderBook | None = None):
        """``orders``: the order book the composition root built (:class:`hilum.node.Node`), else one
        on ``archive`` (books share the archive's transactions and events)."""
        self.book = orders if orders is not None else OrderBook(archive)

    def handles(self, sop_class_uid: str) -> bool:
        return str(sop_class_uid) in SOP_CLASSES

    def on_n_create(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """``EVT_N_CREATE`` handler: a new performed procedure step (IN PROGRESS)."""
        req = event.request
        if str(req.AffectedSOPClassUID) not in SOP_CLASSES:
            return _status(0x0118, "SOP class not supported"), None
        try:
            ds = event.attribute_list
            info = performed_info(ds)
            uid = str(req.AffectedSOPInstanceUID or "") or generate_uid(prefix=None)
            matched = self.book.run(lambda tx: tx.mpps_create(uid, info))
        except OrderError as exc:
            log.warning("MPPS N-CREATE refused: %s", exc)
            return _status(_STATUS_OF.get(exc.code, PROCESSING_FAILURE), str(exc)), None
        except Exception as exc:  # noqa: BLE001 - a status, never a dead association
            log.exception("MPPS N-CREATE failed")
            return _status(PROCESSING_FAILURE, str(exc)), None
        log.info("MPPS %s IN PROGRESS (%d scheduled step(s))", uid, matched)
        out = Dataset()
        if req.AffectedSOPInstanceUID is None:
            out.AffectedSOPInstanceUID = uid
        return SUCCESS, out

    def on_n_set(self, event: Any) -> tuple[int | Dataset, Dataset | None]:
        """``EVT_N_SET`` handler: progress or end of a performed procedure step."""
        req = event.request
        if str(req.RequestedSOPClassUID) not in SOP_CLASSES:
            return _status(0x0118, "SOP class not supported"), None
        uid = str(req.RequestedSOPInstanceUID)
        try:
            ds = event.modification_list
            info = performed_info(ds)
            status = self.book.run(lambda tx: tx.mpps_set(uid, info))
        except OrderError as exc:
            log.warning("MPPS N-SET refused: %s", exc)
            return _status(_STATUS_OF.get(exc.code, PROCESSING_FAILURE), str(exc)), None
        except Exception as exc:  # noqa: BLE001
            log.exception("MPPS N-SET failed")
            return _status(PROCESSING_FAILURE, str(exc)), None
        log.info("MPPS %s %s", uid, status)
        return SUCCESS, Dataset()
