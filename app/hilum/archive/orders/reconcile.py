"""Reconciliation: arriving images matched to their orders (DESIGN.md "Orders live in the archive").

When the first instance of a study arrives (an archive event), orders with
that Study Instance UID, or with the study's Accession Number, are marked as
having images, and the study's empty fields in the index are filled from the
order (AccessionNumber, StudyDescription ← requested procedure description,
ReferringPhysicianName, StudyID ← requested procedure ID), so C-FIND/QIDO
and the browser show the order's data.  The stored files are not rewritten.
A study whose patient differs from the order's is logged, not moved.  An
order entered after its images is reconciled when it is created
(:func:`reconcile_existing`), and :meth:`Reconciler.start` catches up with
studies that arrived while no reconciler listened (an import without a node).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, or_, select, update

from hilum.archive.model import ArchiveEvent
from hilum.archive.orders.model import OrderEvent, Tx, now
from hilum.archive.schema import orders, patients, studies

if TYPE_CHECKING:
    from collections.abc import Callable

    from hilum.archive.orders.book import OrderBook

log = logging.getLogger(__name__)

_STUDY_FOR_ORDER = (select(studies.c.study_uid)
                    .where(or_(studies.c.study_uid == bindparam("uid"), studies.c.accession_number == bindparam("acc")))
                    .order_by(studies.c.pk).limit(1))
_PATIENT_ID = select(patients.c.patient_id).where(patients.c.pk == bindparam("pk"))


def _patient_id(tx: Tx, patient_pk: int) -> str:
    return str(tx.conn.execute(_PATIENT_ID, {"pk": patient_pk}).scalar() or "")


def reconcile_existing(tx: Tx, study_uid: str, accession: str) -> None:
    """Images already here for a new order (sent before it was entered): reconcile now."""
    st = tx.conn.execute(_STUDY_FOR_ORDER, {"uid": study_uid, "acc": accession}).scalar()
    if st is not None:
        reconcile_study(tx, st)


def reconcile_study(tx: Tx, study_uid: str) -> int:
    """Match a stored study to its orders; returns how many orders it matched."""
    st = tx.conn.execute(select(studies).where(studies.c.study_uid == study_uid)).mappings().first()
    if st is None:
        return 0
    conds = [orders.c.study_uid == study_uid]
    if st["accession_number"]:
        conds.append(orders.c.accession_number == st["accession_number"])
    rows = tx.conn.execute(select(orders).where(or_(*conds), orders.c.images_at.is_(None))
                             .order_by((orders.c.study_uid == study_uid).desc(), orders.c.pk)).mappings().all()
    if not rows:
        return 0
    stamp = now()
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
        fill["updated_at"] = stamp
        tx.conn.execute(update(studies).where(studies.c.pk == st["pk"]).values(**fill))
    for o in rows:
        tx.conn.execute(update(orders).where(orders.c.pk == o["pk"]).values(
            images_at=stamp, performed_study_uid=study_uid, updated_at=stamp))
        if o["patient_fk"] != st["patient_fk"]:
            log.warning("study %s reconciled to order %s of another patient record: not moved",
                        study_uid, o["accession_number"])
        tx.events.append(OrderEvent("arrived", int(o["pk"]), o["accession_number"], o["study_uid"],
                                      _patient_id(tx, o["patient_fk"]), o["status"]))
    return len(rows)


class Reconciler:
    """Reconciles each newly arrived study of an archive with its orders (an archive subscriber).

    Built and started by the composition root (:class:`hilum.node.Node`), one
    per node; :meth:`start` subscribes and catches up, :meth:`stop`
    unsubscribes.  Each study is looked at once per process (the first
    instance that arrives; a bounded memory of studies seen), with a cheap
    read outside the write lock, since most studies have no order.
    """

    SEEN_STUDIES = 20_000

    def __init__(self, book: OrderBook):
        self.book = book
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        """Listen to the archive's events, and reconcile what arrived while nobody listened."""
        if self._unsubscribe is None:
            self._unsubscribe = self.book.archive.subscribe(self._on_archive_event)
        try:
            self.reconcile_pending()
        except Exception:  # noqa: BLE001 - a catch-up failure must not stop the node
            log.exception("reconciling orders with stored studies failed")

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _on_archive_event(self, event: ArchiveEvent) -> None:
        if event.kind not in ("stored", "replaced") or not event.study_instance_uid:
            return
        uid = event.study_instance_uid
        with self._lock:
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
        with self.book.engine.connect() as conn:
            st = conn.execute(select(studies.c.accession_number).where(studies.c.study_uid == study_uid)).first()
            if st is None:
                return 0
            conds = [orders.c.study_uid == study_uid]
            if st.accession_number:
                conds.append(orders.c.accession_number == st.accession_number)
            if conn.execute(select(orders.c.pk).where(or_(*conds), orders.c.images_at.is_(None))
                            .limit(1)).first() is None:
                return 0
        with self.book.transaction() as tx:
            return reconcile_study(tx, study_uid)

    def reconcile_pending(self) -> int:
        """Reconcile orders without images whose study has arrived (start-up catch-up)."""
        with self.book.engine.connect() as conn:
            uids = conn.execute(select(studies.c.study_uid).select_from(
                orders.join(studies, or_(studies.c.study_uid == orders.c.study_uid,
                                         and_(orders.c.accession_number != "",
                                              studies.c.accession_number == orders.c.accession_number))))
                .where(orders.c.images_at.is_(None)).distinct()).scalars().all()
        n = 0
        for uid in uids:
            n += self.reconcile(uid)
        return n
