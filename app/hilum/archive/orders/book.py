"""The order book of one archive: transactions, queries and events of the RIS side.

:class:`OrderBook` is built by whoever composes the application — the node
(:class:`hilum.node.Node`, for the HL7 receiver and the MWL/MPPS services),
the workstation's worklist, a CLI verb — with ``OrderBook(archive)``.  It
holds no state of its own: the write transaction is the archive's (one
writer per index database), the patients are the archive's registry, and
events travel on the archive's event bus, so every book on one archive
hears every change, whichever book made it.

:class:`OrderTx` is one transaction's worth of changes; its operations live
in the modules of this package (:mod:`.lifecycle`, :mod:`.mpps`,
:mod:`.messages`, :mod:`.reconcile`) and in THE patient registry
(:mod:`hilum.archive.patients`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import and_, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from hilum.archive.orders import lifecycle, messages, mpps, reconcile, worklist
from hilum.archive.orders.model import OrderEvent, OrderInfo, PerformedInfo
from hilum.archive.patients import MessageRef, PatientInfo, Source
from hilum.archive.schema import orders, patients, performed_steps, procedure_steps

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger(__name__)

T = TypeVar("T")


class OrderTx:
    """The changes one message or request makes, inside one database transaction.

    Obtained from :meth:`OrderBook.transaction`; every operation either works
    or raises :class:`~hilum.archive.orders.OrderError` (or the registry's
    :class:`~hilum.archive.patients.RegistryError`), and an exception rolls
    back everything the transaction did.  ``message`` names the HL7 message
    being applied, for the patient history.
    """

    def __init__(self, book: OrderBook, conn: Connection, events: list[OrderEvent],
                 message: MessageRef | None = None):
        self.book = book
        self.conn = conn
        self.events = events
        self.message = message

    # ------------------------------------------------------------ patients (THE registry)

    def upsert_patient(self, info: PatientInfo, source: Source = "adt") -> int:
        """The patient's pk, created or changed by what ``source`` says: ``adt`` (authoritative:
        sent fields replace), ``order`` (fills empty fields); see :mod:`hilum.archive.patients`."""
        pk, changed = self.book.patients.upsert_changed(self.conn, info, source, message=self.message)
        if changed:
            self.events.append(OrderEvent("patient-updated", patient_id=info.patient_id))
        return pk

    def merge_patients(self, surviving: PatientInfo, prior_id: str, prior_issuer: str = "") -> bool:
        """Merge the prior patient into the surviving one (HL7 A40, IHE RAD-12); False if the prior is unknown."""
        merged = self.book.patients.merge(self.conn, surviving, prior_id, prior_issuer, message=self.message)
        if merged:
            self.events.append(OrderEvent("patient-merged", patient_id=surviving.patient_id))
        return merged

    # ------------------------------------------------------------ the message log

    def seen(self, sender: str, control_id: str) -> str | None:
        return messages.seen(self, sender, control_id)

    def record(self, sender: str, control_id: str, message_type: str, ack: str) -> None:
        messages.record(self, sender, control_id, message_type, ack)

    # ------------------------------------------------------------ orders

    def find_order(self, *, placer: str = "", filler: str = "", accession: str = "") -> int | None:
        return lifecycle.find_order(self, placer=placer, filler=filler, accession=accession)

    def create_order(self, patient_pk: int, info: OrderInfo) -> int:
        return lifecycle.create_order(self, patient_pk, info)

    def order(self, pk: int) -> dict[str, Any]:
        return lifecycle.order(self, pk)

    def update_order(self, pk: int, info: OrderInfo, patient_pk: int | None = None) -> None:
        lifecycle.update_order(self, pk, info, patient_pk)

    def set_status(self, pk: int, status: str, *, step_pks: Sequence[int] | None = None) -> str:
        return lifecycle.set_status(self, pk, status, step_pks=step_pks)

    # ------------------------------------------------------------ MPPS

    def mpps_create(self, uid: str, info: PerformedInfo) -> int:
        return mpps.mpps_create(self, uid, info)

    def mpps_set(self, uid: str, info: PerformedInfo) -> str:
        return mpps.mpps_set(self, uid, info)

    # ------------------------------------------------------------ reconciliation

    def reconcile_study(self, study_uid: str) -> int:
        return reconcile.reconcile_study(self, study_uid)


class OrderBook:
    """Orders of one archive: transactions, worklist queries, events (see the module docstring)."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self.engine = archive.engine
        self.dialect = archive.dialect
        self.patients = archive.patients

    def close(self) -> None:
        """Nothing to release (kept so callers need not know); the archive owns what the book uses."""

    # ------------------------------------------------------------ events

    def subscribe(self, callback: Callable[[OrderEvent], None]) -> Callable[[], None]:
        """Call ``callback(OrderEvent)`` after each committed change on this archive's orders, made
        through any book; returns an unsubscribe function."""
        return self.archive.events.subscribe(OrderEvent, callback)

    def _emit(self, events: list[OrderEvent]) -> None:
        for ev in events:
            self.archive.events.publish(ev)

    # ------------------------------------------------------------ transactions

    @contextmanager
    def transaction(self, message: MessageRef | None = None) -> Iterator[OrderTx]:
        """One transaction: everything in the block is applied, or nothing (on an exception)."""
        events: list[OrderEvent] = []
        with self.archive.transaction() as conn:
            yield OrderTx(self, conn, events, message)
        self._emit(events)

    def run(self, work: Callable[[OrderTx], T]) -> T:
        with self.transaction() as tx:
            return work(tx)

    def apply_message(self, sender: str, control_id: str, message_type: str,
                      work: Callable[[OrderTx], T], make_ack: Callable[[T], str]) -> tuple[str, bool]:
        """Apply an HL7 message once: ``(ack, duplicate)`` (see :mod:`.messages`).

        A message whose (sender, control ID) was applied before is answered
        with the ACK it got then (``duplicate`` True) and not applied again.
        Otherwise ``work(tx)`` runs and its ACK (``make_ack(result)``) is
        stored with the changes, in one transaction; an exception from
        ``work`` rolls everything back and propagates (nothing is recorded,
        so a corrected resend is processed).
        """
        message = MessageRef(message_type, sender, control_id)
        for attempt in (1, 2):
            try:
                with self.transaction(message) as tx:
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
                 limit: int | None = None, offset: int = 0, fold_names: bool = False) -> list[dict[str, Any]]:
        """Worklist items matching DICOM keys: :func:`hilum.archive.orders.worklist.worklist`."""
        return worklist.worklist(self.engine, identifier, active_only=active_only, limit=limit, offset=offset,
                                 fold_names=fold_names)

    def count(self, identifier: Mapping[str, Any] | None = None, *, active_only: bool = False,
              fold_names: bool = False) -> int:
        return worklist.count(self.engine, identifier, active_only=active_only, fold_names=fold_names)

    def order(self, *, accession: str = "", study_uid: str = "", placer: str = "") -> dict[str, Any] | None:
        """One order (row of ``orders`` with ``patient_id``, ``issuer`` and ``steps``), or None."""
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
            row = conn.execute(select(orders, patients.c.patient_id, patients.c.issuer, patients.c.patient_name)
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
