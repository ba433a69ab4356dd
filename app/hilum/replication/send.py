"""Sending one claimed batch of the forwarding queue to a destination: C-STORE (+ Storage Commitment) or STOW-RS.

Each function takes claimed :class:`~hilum.archive.forward.QueueItem` rows and
ends every one of them in the queue: sent, committed, to retry (with
backoff), or failed for good — never left claimed.

C-STORE (PS3.4 B) goes on one association per batch with a context per
stored transfer syntax (:func:`hilum.dimse.contexts.storage_batches`) plus the
Storage Commitment Push Model (PS3.4 J) unless the rule says ``never``.  An
instance goes byte for byte from its blob file when the peer accepted its
syntax and its patient was not changed since it was stored; otherwise it is
read as it leaves the archive (:meth:`~hilum.archive.Archive.read_outgoing`:
today's demographics, recalled from a tier when offline) and converted
losslessly when the peer needs it (:func:`hilum.dimse.contexts.for_peer`).
Then N-ACTION asks the peer to commit the instances it took and the report
(N-EVENT-REPORT) is awaited on the same association for a few seconds
(:data:`SAME_ASSOCIATION_WAIT`); a peer that reports later, on an association
of its own, reaches the node's SCP (:func:`hilum.archive.forward.commitment_report`),
and rows still waiting after ``commitment_timeout`` are asked again.

STOW-RS (PS3.18 10.5) posts the batch as one multipart request (split at
:data:`STOW_BYTES`); an instance is confirmed when the response lists it in
the Referenced SOP Sequence (or, a 200 without one, when it is not in the
Failed SOP Sequence); a failure reason that means "never" fails it, others
(out of resources, processing failure) and any HTTP error are tried again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import _config, build_context, evt

from hilum.archive import forward
from hilum.archive.archive import Archive
from hilum.archive.forward import ForwardRules, QueueItem
from hilum.config import Config, Peer
from hilum.dicom.transcode import TranscodeError
from hilum.dicomweb.client import DicomWebClient, DicomWebError, DicomWebSource
from hilum.dimse import contexts as cx
from hilum.dimse import scu
from hilum.dimse.commitment import COMMITMENT_INSTANCE
from hilum.dimse.uids import STORAGE_COMMITMENT_PUSH
from hilum.errors import HilumError

log = logging.getLogger("hilum.storage")

OK_STATUSES = (0x0000, 0xB000, 0xB006, 0xB007)

SAME_ASSOCIATION_WAIT = 10.0
"""Seconds the sender holds the association for a commitment report after N-ACTION; a peer that reports later
does so on an association of its own (to the node's SCP), and rows without a report are asked again after
``commitment_timeout``."""


def permanent_status(status: int) -> bool:
    """Whether a C-STORE failure status means "never": the data set or SOP class is refused (PS3.4 B.2.3,
    PS3.7 C): 0xA9xx, 0xCxxx, SOP class not supported (0x0122), not authorised (0x0124).  Out of
    resources (0xA7xx) and anything else is worth another try."""
    return (status & 0xFF00) == 0xA900 or (status & 0xF000) == 0xC000 or status in (0x0122, 0x0124, 0x0117)


@dataclass
class Outcome:
    """What one batch came to (counts, for logs and the bench)."""

    sent: int = 0
    committed: int = 0
    retry: int = 0
    failed: int = 0
    bytes: int = 0
    errors: list[str] = field(default_factory=list)


def _gone(archive: Archive, items: Sequence[QueueItem], out: Outcome) -> list[QueueItem]:
    gone = [it for it in items if it.instance_pk is None]
    if gone:
        forward.mark_failed(archive, gone, "no longer in the archive")
        out.failed += len(gone)
    return [it for it in items if it.instance_pk is not None]


# --------------------------------------------------------------------------- C-STORE


class _Reports:
    """N-EVENT-REPORTs of Storage Commitment received on the association, by Transaction UID."""

    def __init__(self) -> None:
        self.got: dict[str, Dataset] = {}
        self.event = threading.Event()

    def handler(self, event: evt.Event) -> tuple[int, None]:
        try:
            info = event.event_information
            self.got[str(info.get("TransactionUID", ""))] = info
        finally:
            self.event.set()
        return 0x0000, None


def _report_lists(info: Dataset) -> tuple[list[str], dict[str, int]]:
    ok = [str(i.get("ReferencedSOPInstanceUID", "")) for i in info.get("ReferencedSOPSequence", []) or []]
    bad = {
        str(i.get("ReferencedSOPInstanceUID", "")): int(i.get("FailureReason", 0x0110) or 0x0110)
        for i in info.get("FailedSOPSequence", []) or []
    }
    return ok, bad


def _commitment_request(transaction_uid: str, items: Sequence[QueueItem]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    refs = []
    for it in items:
        r = Dataset()
        r.ReferencedSOPClassUID = it.sop_class_uid
        r.ReferencedSOPInstanceUID = it.sop_uid
        refs.append(r)
    ds.ReferencedSOPSequence = refs
    return ds


def _ask_commitment(
    archive: Archive,
    rules: ForwardRules,
    assoc: Any,
    reports: _Reports,
    items: Sequence[QueueItem],
    mode: str,
    out: Outcome,
) -> None:
    """N-ACTION for ``items`` (already stored at the peer) and the report on this association, if it comes."""
    if not items:
        return
    accepted = any(str(c.abstract_syntax) == STORAGE_COMMITMENT_PUSH for c in assoc.accepted_contexts)
    if mode == "never" or (mode == "auto" and not accepted):
        forward.mark_sent(archive, items)
        out.sent += len(items)
        return
    if not accepted:  # "always": stored, but not confirmed; ask again later
        forward.mark_sent(
            archive,
            items,
            transaction_uid=generate_uid(),
            wait=rules.backoff(items[0].attempts + 1),
            error="the peer does not accept Storage Commitment (rule says always)",
        )
        out.sent += len(items)
        return
    tuid = generate_uid()
    # in the queue before asking: a report on a new association must find the rows
    forward.mark_sent(archive, items, transaction_uid=tuid, wait=rules.commitment_timeout)
    out.sent += len(items)
    try:
        status, _ = assoc.send_n_action(
            _commitment_request(tuid, items), 1, STORAGE_COMMITMENT_PUSH, COMMITMENT_INSTANCE
        )
    except Exception as exc:  # noqa: BLE001 - pynetdicom raises assorted errors; the rows are asked again later
        log.warning("storage commitment request to %s failed: %s", items[0].destination, exc)
        return
    if not status or int(getattr(status, "Status", 0xFFFF)) != 0x0000:
        log.warning(
            "storage commitment request to %s refused: %s",
            items[0].destination,
            f"0x{int(status.Status):04X}" if status and "Status" in status else "no response",
        )
        return
    deadline = min(rules.commitment_timeout, SAME_ASSOCIATION_WAIT)
    waited = 0.0
    while tuid not in reports.got and waited < deadline and assoc.is_established:
        reports.event.wait(0.2)
        reports.event.clear()
        waited += 0.2
    info = reports.got.get(tuid)
    if info is None:
        log.info(
            "storage commitment %s: no report from %s on the association yet; it may come on a new one",
            tuid,
            items[0].destination,
        )
        return
    ok, bad = _report_lists(info)
    forward.commitment_report(archive, tuid, ok, bad, rules=rules)
    out.committed += len([it for it in items if it.sop_uid in set(ok)])


def send_dimse(
    archive: Archive,
    config: Config,
    peer: Peer,
    rules: ForwardRules,
    items: Sequence[QueueItem],
    *,
    mode: str = "auto",
    timeout: float = 30.0,
) -> Outcome:
    """C-STORE the claimed ``items`` to ``peer`` (and ask for commitment); every item ends in a state."""
    out = Outcome()
    items = _gone(archive, items, out)
    if not items:
        return out
    _config.STORE_SEND_CHUNKED_DATASET = True
    target = scu.peer_target(config, peer, timeout=timeout)
    recommit = [it for it in items if it.state == "sent"]
    pending = [it for it in items if it.state != "sent"]
    if recommit:
        _recommit(archive, rules, target, recommit, mode, out)
    if not pending:
        return out
    reserve = 0 if mode == "never" else 1
    batches = cx.storage_batches(((it.sop_class_uid, it.transfer_syntax) for it in pending), reserve=reserve)
    revs = _revisions_changed(archive, pending)
    transferred: list[QueueItem] = []
    for batch in batches:
        todo = [it for it in pending if it.sop_class_uid in batch.classes]
        contexts = list(batch.contexts)
        if reserve:
            contexts.append(build_context(STORAGE_COMMITMENT_PUSH))
        reports = _Reports()
        stored: list[QueueItem] = []
        try:
            with scu.associate(target, contexts, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)]) as assoc:
                while todo:
                    if not assoc.is_established:
                        break
                    it = todo.pop(0)
                    status, error = _store_one(archive, assoc, it, it.sop_uid in revs)
                    if status is None and error is None:  # lost the association mid-way
                        todo.insert(0, it)
                        break
                    if status is not None and status in OK_STATUSES:
                        stored.append(it)
                        transferred.append(it)
                        out.bytes += it.size
                    elif status is None or not permanent_status(status):
                        # out of resources, or a problem here (the blob being replaced, a tier down): later
                        forward.mark_retry(archive, rules, [it], error or f"status 0x{status or 0:04X}")
                        out.retry += 1
                    else:
                        forward.mark_failed(archive, [it], error or f"refused: status 0x{status:04X}")
                        out.failed += 1
                        out.errors.append(error or "")
                if assoc.is_established:
                    _ask_commitment(archive, rules, assoc, reports, stored, mode, out)
                    stored = []
        except scu.DimseError as exc:
            out.errors.append(str(exc))
            forward.mark_retry(archive, rules, todo, str(exc))
            out.retry += len(todo)
            todo = []
        if stored:  # the association went before the commitment request: stored, not yet confirmed
            if mode == "never":
                forward.mark_sent(archive, stored)
            else:
                forward.mark_sent(archive, stored, transaction_uid=generate_uid(), wait=0.0)
            out.sent += len(stored)
        if todo:
            forward.mark_retry(archive, rules, todo, "association lost")
            out.retry += len(todo)
    audit_transferred(archive, transferred, f"C-STORE to {peer.aet}@{peer.host}:{peer.port}")
    return out


def audit_transferred(archive: Archive, items: Sequence[QueueItem], how: str) -> None:
    """One "DICOM Instances Transferred" audit event per study the peer took (this node the source;
    the patient is filled in from the index by the audit's writer)."""
    per_study: dict[str, int] = {}
    for it in items:
        per_study[it.study_uid] = per_study.get(it.study_uid, 0) + 1
    for study_uid, n in per_study.items():
        archive.audit("DICOM Instances Transferred", action="R", user="forwarding", user_is_requestor=True,
                      role="source", study_uids=(study_uid,), instances=n,
                      detail=f"forwarded ({items[0].destination}): {how}")  # fmt: skip


def _recommit(
    archive: Archive, rules: ForwardRules, target: scu.Target, items: Sequence[QueueItem], mode: str, out: Outcome
) -> None:
    """Ask again for commitment of instances stored earlier (no report came, or the association went)."""
    reports = _Reports()
    try:
        with scu.associate(
            target, [build_context(STORAGE_COMMITMENT_PUSH)], evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handler)]
        ) as assoc:
            _ask_commitment(archive, rules, assoc, reports, items, mode, out)
    except scu.DimseError as exc:
        if mode == "auto" and "accepted none" in str(exc):
            forward.mark_sent(archive, items)  # the peer does not do commitment after all: C-STORE success counts
            return
        forward.mark_retry(archive, rules, items, f"storage commitment: {exc}", state="sent", count=True)
        out.retry += len(items)


def _revisions_changed(archive: Archive, items: Sequence[QueueItem]) -> set[str]:
    """SOP Instance UIDs whose patient changed (HL7 ADT) since they were stored: sent as read_outgoing makes them."""
    return forward.patient_changed(archive, [it.sop_uid for it in items])


def _store_one(archive: Archive, assoc: Any, it: QueueItem, changed: bool) -> tuple[int | None, str | None]:
    """C-STORE one instance: (status, error); (None, error) for a local problem; (None, None) when the
    association went."""
    path = archive.blobs.path(it.blob_key) if it.blob_key else None
    try:
        if (
            not changed
            and path is not None
            and path.exists()
            and it.transfer_syntax in cx.accepted_syntaxes(assoc, it.sop_class_uid)
        ):
            status = assoc.send_c_store(Path(path))
        else:
            data = archive.read_outgoing({"_blob_key": it.blob_key, "SOPInstanceUID": it.sop_uid})
            status = assoc.send_c_store(cx.for_peer(assoc, data))
    except (cx.NoContext, TranscodeError) as exc:
        return 0xC000, f"cannot be sent to this peer: {str(exc).splitlines()[0][:200]}"
    except (OSError, HilumError) as exc:  # a blob replaced meanwhile (transcode), a tier that is down
        return None, f"cannot read: {exc}"
    except Exception as exc:  # noqa: BLE001 - pynetdicom raises assorted errors when the association goes
        if not assoc.is_established:
            return None, None
        return None, f"{type(exc).__name__}: {exc}"[:300]
    if not status or "Status" not in status:
        return None, None
    code = int(status.Status)
    if code in OK_STATUSES:
        return code, None
    comment = str(status.get("ErrorComment", "") or "")
    return code, f"refused by the peer: status 0x{code:04X}" + (f" ({comment})" if comment else "")


# --------------------------------------------------------------------------- STOW-RS


STOW_BYTES = 64 << 20
"""Bytes of instances per STOW-RS request at most (a batch of large multi-frame instances is split)."""


def send_stow(archive: Archive, source: DicomWebSource, rules: ForwardRules, items: Sequence[QueueItem]) -> Outcome:
    """STOW-RS the claimed ``items`` (one request per :data:`STOW_BYTES`); every item ends in a state."""
    out = Outcome()
    items = _gone(archive, items, out)
    client = DicomWebClient(source)
    try:
        part: list[QueueItem] = []
        size = 0
        for it in items:
            if part and size + it.size > STOW_BYTES:
                _stow_part(archive, client, rules, part, out)
                part, size = [], 0
            part.append(it)
            size += it.size
        if part:
            _stow_part(archive, client, rules, part, out)
    finally:
        client.close()
    return out


def _stow_part(
    archive: Archive, client: DicomWebClient, rules: ForwardRules, items: Sequence[QueueItem], out: Outcome
) -> None:
    datas: list[bytes] = []
    ready: list[QueueItem] = []
    for it in items:
        try:
            datas.append(archive.read_outgoing({"_blob_key": it.blob_key, "SOPInstanceUID": it.sop_uid}))
            ready.append(it)
        except Exception as exc:  # noqa: BLE001 - a missing blob (or a tier down): retry that one later
            forward.mark_retry(archive, rules, [it], f"cannot read: {exc}")
            out.retry += 1
    if not ready:
        return
    try:
        response = client.store(datas)
    except Exception as exc:  # noqa: BLE001 - DicomWebError, an unreadable response...: nothing is lost, later
        error = str(exc) if isinstance(exc, DicomWebError) else f"{type(exc).__name__}: {exc}"
        forward.mark_retry(archive, rules, ready, error)
        out.retry += len(ready)
        out.errors.append(error)
        return
    failed = _stow_failed(response)
    listed = _stow_stored(response)
    ok = [it for it in ready if it.sop_uid not in failed and (listed is None or it.sop_uid in listed)]
    unsure = [it for it in ready if it.sop_uid not in failed and listed is not None and it.sop_uid not in listed]
    forward.mark_sent(archive, ok)
    audit_transferred(archive, ok, f"STOW-RS to {client.source.url}")
    out.sent += len(ok)
    out.bytes += sum(len(d) for d, it in zip(datas, ready, strict=True) if it in ok)
    for it in [it for it in ready if it.sop_uid in failed]:
        reason = failed[it.sop_uid]
        error = f"refused by the STOW-RS server: failure reason 0x{reason:04X}"
        if permanent_status(reason):
            forward.mark_failed(archive, [it], error)
            out.failed += 1
        else:  # out of resources (0xA7xx), processing failure (0x0110)...
            forward.mark_retry(archive, rules, [it], error)
            out.retry += 1
    if unsure:
        forward.mark_retry(archive, rules, unsure, "not in the STOW-RS response (neither stored nor failed)")
        out.retry += len(unsure)


def _stow_stored(response: Any) -> set[str] | None:
    """SOP Instance UIDs of the Referenced SOP Sequence (0008,1199) of a Store Instances Response (None: the
    response lists none, as some servers answer a 200)."""
    if not isinstance(response, dict) or "00081199" not in response:
        return None
    out: set[str] = set()
    for item in (response.get("00081199") or {}).get("Value") or []:
        uid = ((item.get("00081155") or {}).get("Value") or [""])[0]
        if uid:
            out.add(str(uid))
    return out


def _stow_failed(response: Any) -> dict[str, int]:
    """SOP Instance UID → Failure Reason of the Failed SOP Sequence (0008,1198) of a Store Instances Response."""
    out: dict[str, int] = {}
    if not isinstance(response, dict):
        return out
    seq = (response.get("00081198") or {}).get("Value") or []
    for item in seq:
        uid = ((item.get("00081155") or {}).get("Value") or [""])[0]
        reason = ((item.get("00081197") or {}).get("Value") or [0x0110])[0]
        if uid:
            out[str(uid)] = int(reason)
    return out
