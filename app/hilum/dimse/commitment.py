"""Storage Commitment Push Model SCP (PS3.4 Annex J).

A modality sends N-ACTION (Request Storage Commitment, Action Type 1) with a
Transaction UID and the instances it wants committed; the node answers the
N-ACTION at once, checks each instance in the archive, and reports with
N-EVENT-REPORT (Event Type 1: all committed, 2: some failed, J.3.3).  The
report goes on the same association when the requester is still there
(J.3.3.1), otherwise on a new association to the requester's AE title as
configured in the peers, proposing the SCP role (J.3.3.2, PS3.7 D.3.3.4).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role

from hilum.archive import Archive
from hilum.dimse.reactor import wait_responded
from hilum.dimse.uids import STORAGE_COMMITMENT_PUSH

log = logging.getLogger(__name__)

#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110


@dataclass
class CommitmentResult:
    transaction_uid: str
    committed: list[tuple[str, str]] = field(default_factory=list)  # (class, instance)
    failed: list[tuple[str, str, int]] = field(default_factory=list)  # (class, instance, reason)

    @property
    def event_type(self) -> int:
        return 2 if self.failed else 1

    def dataset(self, retrieve_aet: str) -> Dataset:
        """The Event Information of the N-EVENT-REPORT (PS3.4 Table J.3-2)."""
        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        ds.RetrieveAETitle = retrieve_aet
        if self.committed:
            items = []
            for cls, inst in self.committed:
                item = Dataset()
                item.ReferencedSOPClassUID = cls
                item.ReferencedSOPInstanceUID = inst
                items.append(item)
            ds.ReferencedSOPSequence = items
        if self.failed:
            items = []
            for cls, inst, reason in self.failed:
                item = Dataset()
                item.ReferencedSOPClassUID = cls
                item.ReferencedSOPInstanceUID = inst
                item.FailureReason = reason
                items.append(item)
            ds.FailedSOPSequence = items
        return ds


def check_commitment(archive: Archive, request: Dataset) -> CommitmentResult:
    """Which referenced instances the archive holds, with the SOP class they were sent as."""
    result = CommitmentResult(str(request.get("TransactionUID", "")))
    refs = list(request.get("ReferencedSOPSequence", []) or [])
    wanted = [(str(r.get("ReferencedSOPClassUID", "")), str(r.get("ReferencedSOPInstanceUID", ""))) for r in refs]
    held: dict[str, str] = {}
    uids = [inst for _, inst in wanted if inst]
    for start in range(0, len(uids), 500):
        chunk = uids[start : start + 500]
        for row in archive.query("IMAGE", {"SOPInstanceUID": chunk}):
            held[row["SOPInstanceUID"]] = row["SOPClassUID"]
    for cls, inst in wanted:
        if inst not in held:
            result.failed.append((cls, inst, NO_SUCH_OBJECT_INSTANCE))
        elif cls and held[inst] != cls:
            result.failed.append((cls, inst, CLASS_INSTANCE_CONFLICT))
        else:
            result.committed.append((cls or held[inst], inst))
    return result


class CommitmentReporter:
    """Sends N-EVENT-REPORTs, on the same association when possible."""

    def __init__(self, ae_title: str, resolve_peer: Callable[[str], Any],
                 associate_kwargs: Callable[[Any], dict[str, Any]]):
        self.ae_title = ae_title
        self._resolve_peer = resolve_peer
        self._associate_kwargs = associate_kwargs
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def report_later(self, assoc: Any, result: CommitmentResult, message_id: int) -> None:
        """Report ``result`` from a background thread once the response to N-ACTION ``message_id`` is out."""
        t = threading.Thread(target=self._report, args=(assoc, result, message_id), name="commitment-report",
                             daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def join(self, timeout: float = 10.0) -> None:
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)

    def _report(self, assoc: Any, result: CommitmentResult, message_id: int) -> None:
        try:
            # the handler runs before pynetdicom sends its response: an N-EVENT-REPORT sent
            # at once could reach the peer ahead of the N-ACTION-RSP it is waiting for
            wait_responded(assoc, message_id)
            self._report_now(assoc, result)
        except Exception:  # noqa: BLE001 - a background thread must log, not die silently
            log.exception("storage commitment %s: report failed", result.transaction_uid)

    def _report_now(self, assoc: Any, result: CommitmentResult) -> None:
        info = result.dataset(self.ae_title)
        calling = str(assoc.requestor.ae_title).strip()
        if assoc.is_established and self._send(assoc, info, result):
            log.info("storage commitment %s reported to %s on the same association (%d ok, %d failed)",
                     result.transaction_uid, calling, len(result.committed), len(result.failed))
            return
        peer = self._resolve_peer(calling)
        if peer is None:
            log.warning("storage commitment %s: %s left before the report and is not a configured peer",
                        result.transaction_uid, calling)
            return
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
        kwargs = self._associate_kwargs(peer)
        kwargs["ext_neg"] = [build_role(STORAGE_COMMITMENT_PUSH, scp_role=True)]
        try:
            new = ae.associate(peer.host, peer.port, ae_title=peer.aet, **kwargs)
            if not new.is_established:
                log.warning("storage commitment %s: cannot associate with %s at %s:%s",
                            result.transaction_uid, peer.aet, peer.host, peer.port)
                return
            ok = self._send(new, info, result)
            new.release()
            log.info("storage commitment %s reported to %s on a new association: %s",
                     result.transaction_uid, peer.aet, "ok" if ok else "failed")
        finally:
            ae.shutdown()

    @staticmethod
    def _send(assoc: Any, info: Dataset, result: CommitmentResult) -> bool:
        try:
            status, _ = assoc.send_n_event_report(info, result.event_type, STORAGE_COMMITMENT_PUSH,
                                                  COMMITMENT_INSTANCE)
        except Exception as exc:  # noqa: BLE001 - association gone, no context...: fall back
            log.debug("N-EVENT-REPORT failed: %s", exc)
            return False
        return bool(status) and getattr(status, "Status", 0xFFFF) == 0x0000
