"""Orders, scheduled and performed procedure steps: the RIS side of the archive.

DESIGN.md "Orders live in the archive": HL7 ORM creates, changes and cancels
orders; the Modality Worklist SCP answers from them (PS3.4 Annex K); MPPS
(PS3.4 Annex F) moves them along; arriving images are reconciled to them;
HL7 ADT updates and merges the archive's patients through THE patient
registry (:mod:`hilum.archive.patients`; IHE RAD TF-1 Patient Information
Reconciliation).  Their tables are in THE schema (:mod:`hilum.archive.schema`:
``orders``, ``procedure_steps``, ``performed_steps``, ``hl7_messages``).

One module per concern:

* :mod:`.model` — statuses, what messages say (orders, steps, MPPS), events, errors;
* :mod:`.lifecycle` — an order's life: create, change, cancel, status from its steps;
* :mod:`.worklist` — the MWL query (one row per scheduled step, DICOM matching);
* :mod:`.mpps` — MPPS N-CREATE/N-SET moving orders along;
* :mod:`.messages` — the HL7 message log (each control ID applied once);
* :mod:`.reconcile` — arriving studies matched to their orders (:class:`Reconciler`);
* :mod:`.book` — :class:`OrderBook` (transactions, queries, events) and :class:`OrderTx`.

Status: ``SCHEDULED → IN PROGRESS → COMPLETED | DISCONTINUED``, or
``CANCELLED`` (before it started).  The MWL shows them with the DICOM terms
SCHEDULED, STARTED, COMPLETED, DISCONTINUED, CANCELED (PS3.3 C.4.10,
Scheduled Procedure Step Status); an order's status is the aggregate of its
steps'.  All changes of one HL7 message or one DIMSE request happen in one
transaction (:meth:`OrderBook.transaction`); subscribers hear
:class:`OrderEvent` after the commit.
"""

from hilum.archive.orders.book import OrderBook, OrderTx
from hilum.archive.orders.lifecycle import aggregate_status
from hilum.archive.orders.model import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    DICOM_STATUS,
    DISCONTINUED,
    FINAL,
    IN_PROGRESS,
    SCHEDULED,
    STATUSES,
    OrderError,
    OrderEvent,
    OrderInfo,
    PerformedInfo,
    StepInfo,
    dicom_time,
)
from hilum.archive.orders.reconcile import Reconciler
from hilum.archive.orders.worklist import SPS_KEYS, WORKLIST_KEYS, build_worklist_conditions
from hilum.archive.patients import MessageRef, PatientInfo, RegistryError

__all__ = [
    "ACTIVE", "CANCELLED", "COMPLETED", "DICOM_STATUS", "DISCONTINUED", "FINAL", "IN_PROGRESS", "SCHEDULED",
    "SPS_KEYS", "STATUSES", "WORKLIST_KEYS", "MessageRef", "OrderBook", "OrderError", "OrderEvent", "OrderInfo",
    "OrderTx", "PatientInfo", "PerformedInfo", "Reconciler", "RegistryError", "StepInfo", "aggregate_status",
    "build_worklist_conditions", "dicom_time",
]
