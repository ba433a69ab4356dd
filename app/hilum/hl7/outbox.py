"""The HL7 outbox: signed reports to the hospital system, ORU^R01 (and MDM^T02 with the PDF) over MLLP.

:meth:`hilum.archive.reports.Reports.sign` queues one row of ``hl7_outbox``
per endpoint in the signing transaction; this service (started by ``hilum
serve`` and the workstation) sends them.  Per message:

1. claim it (:meth:`hilum.archive.reports.Outbox.claim`: a lease, so two
   processes on one index never send it at once; the attempt is counted);
2. compose it once and store its bytes (a resend is byte-for-byte the same
   message, same MSH-10 control ID, so the receiver can recognise it);
3. send it over MLLP with a timeout (one connection per endpoint and pass,
   ``TCP_NODELAY``), read the ACK and check MSA-2 names our control ID;
4. AA/CA: ``sent``, never sent again (restart-safe: the state is in the
   index); AE/AR (CE/CR): ``failed-ae``/``failed-ar`` — the message stops,
   an error is logged and :class:`~hilum.archive.reports.OutboxChanged` with
   ``alert=True`` is published (the workstation shows it); no answer, a
   refused connection or a garbled ACK: retried with exponential backoff
   (``retry_base`` × 2^(attempts-1), at most ``retry_max`` seconds) from
   ``next_try_at``.

Configuration (``hilum.toml``)::

    [report]
    his = [{ name = "ris", host = "10.0.0.5", port = 2575, timeout = 10 }]
    mdm = [{ name = "dms", host = "10.0.0.6", port = 2576 }]   # optional
    retry_base = 5        # seconds
    retry_max = 600
    poll_seconds = 5      # also look for work signed by another process on the same index
    institution = "Clinique ..."

Without ``[report] his``, ``[hl7] his_host``/``his_port`` is the one ORU
endpoint, named ``his``.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from hilum.archive.orders import OrderBook
from hilum.archive.reports import (
    AMENDED,
    MDM,
    Endpoint,
    Outbox,
    OutboxChanged,
    OutboxMessage,
    ReportChanged,
    Reports,
    endpoints_of,
)
from hilum.archive.reports import (
    Report as ReportRow,
)
from hilum.archive.storage import WokenService
from hilum.errors import ConfigError
from hilum.hl7.mllp import MLLPError, exchange
from hilum.hl7.outbound import Document, Report, build_mdm, build_oru

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger(__name__)

ACCEPTED = ("AA", "CA")
REFUSED = ("AE", "AR", "CE", "CR")


def parse_ack(raw: bytes) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control ID, MSA-3 text) of an ACK, decoded as UTF-8 (("", "", "") without MSA)."""
    text = raw.decode("utf-8", errors="replace")
    for seg in text.replace("\n", "\r").split("\r"):
        if seg.startswith("MSA") and len(seg) > 3:
            parts = seg.split(seg[3])
            parts += [""] * 4
            return parts[1].strip(), parts[2].strip(), parts[3].strip()
    return "", "", ""


def _control_id(m: OutboxMessage) -> str:
    # MSH-10 is ST(20): unique across nodes without coordination
    return f"H{m.pk % 10**7:07d}{uuid.uuid4().hex[:12]}".upper()


class OutboxService(WokenService):
    """Sends the HL7 outbox (see the module docstring).  ``endpoints`` / ``mdm_endpoints`` as
    :func:`hilum.archive.reports.endpoints_of` gives them; :meth:`from_config` reads them."""

    name = "hl7-outbox"
    thread_name = "hl7-outbox"
    RECORD_BATCH = 32
    RECORD_WINDOW = 0.02  # seconds

    def __init__(
        self,
        archive: Archive,
        endpoints: Sequence[Endpoint] = (),
        mdm_endpoints: Sequence[Endpoint] = (),
        *,
        application: str = "HILUM",
        facility: str = "",
        retry_base: float = 5.0,
        retry_max: float = 600.0,
        poll: float = 5.0,
    ):
        super().__init__(archive)
        self.endpoints = {e.name: e for e in [*endpoints, *mdm_endpoints]}
        self.application = application
        self.facility = facility
        self.retry_base = max(0.01, float(retry_base))
        self.retry_max = max(self.retry_base, float(retry_max))
        self.poll = poll
        self.outbox = Outbox(archive)
        self.reports = Reports(archive, store_dicom=False)
        self.sent = 0
        self.failed = 0
        self._subs: list[Any] = []
        self._pass_lock = threading.Lock()

    @classmethod
    def from_config(cls, archive: Archive, config: Any) -> OutboxService:
        """The service for ``[report]`` (and ``[hl7]``) of ``config``; a malformed setting raises
        :class:`~hilum.errors.ConfigError` naming it (at start-up: nothing is sent to a wrong place)."""
        extra = getattr(config, "extra", None) or {}
        section = extra.get("report", {}) or {}
        hl7 = extra.get("hl7", {}) or {}
        try:
            oru, mdm = endpoints_of(config)
            timing: dict[str, float] = {}
            for key, default in (("retry_base", 5.0), ("retry_max", 600.0), ("poll_seconds", 5.0)):
                value = section.get(key, default)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"{key} must be a positive number of seconds, not {value!r}")
                timing[key] = float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{getattr(config, 'config_path', 'hilum.toml')}: [report] {exc}") from exc
        return cls(
            archive,
            oru,
            mdm,
            application=str(hl7.get("application", getattr(config, "aet", "HILUM"))),
            facility=str(hl7.get("facility", "")),
            retry_base=timing["retry_base"],
            retry_max=timing["retry_max"],
            poll=timing["poll_seconds"],
        )

    def enabled(self) -> bool:
        return bool(self.endpoints)

    def start(self) -> None:
        if self._thread is None and self.enabled():
            self._subs = [
                self.archive.events.subscribe(OutboxChanged, self._on_outbox),
                self.archive.events.subscribe(ReportChanged, self._on_report),
            ]
        super().start()

    def stop(self) -> None:
        for unsub in self._subs:
            unsub()
        self._subs = []
        super().stop()

    def _on_event(self, event: Any) -> None:  # arrivals of images do not concern the outbox
        return

    def _on_outbox(self, event: OutboxChanged) -> None:
        if event.state == "pending":
            self._wake.set()

    def _on_report(self, event: ReportChanged) -> None:
        if event.what == "stored":  # an MDM waits for the report's PDF
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # the service must outlive one bad pass (database busy, a bug)
                log.exception("HL7 outbox pass failed")
                busy = 0
            self.passes += 1
            if busy:
                continue
            due = self.outbox.next_due(self.endpoints)
            wait = self.poll
            if due is not None:
                wait = min(self.poll, max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.01)
            self._wake.wait(wait)
            self._wake.clear()

    # ------------------------------------------------------------------ one pass

    def run_once(self, *, limit: int = 100) -> int:
        """Claim and send what is due now; returns how many messages were claimed."""
        with self._pass_lock:
            claimed = self.outbox.claim(self.endpoints, limit=limit)
            by_endpoint: dict[str, list[OutboxMessage]] = {}
            for m in claimed:
                by_endpoint.setdefault(m.endpoint, []).append(m)
            for name, msgs in by_endpoint.items():
                self._send_all(self.endpoints[name], msgs)
            return len(claimed)

    def _backoff(self, attempts: int) -> datetime:
        delay = min(self.retry_max, self.retry_base * 2 ** max(0, attempts - 1))
        return datetime.now(UTC) + timedelta(seconds=delay)

    def _send_all(self, ep: Endpoint, msgs: list[OutboxMessage]) -> None:
        # compose what has no bytes yet, all in one go, and fix the bytes in one transaction
        todo = [m for m in msgs if not m.message]
        composed: dict[int, bytes] = {}
        if todo:
            reports = self.reports.get_many(m.report_id for m in todo)
            orders: dict[tuple[str, str], dict[str, Any] | None] = {}
            for m in todo:
                try:
                    composed[m.pk] = self.compose(m, ep, report=reports.get(m.report_id), orders=orders)
                except Exception as exc:  # a report that cannot be composed must not block the others
                    log.exception("HL7 %s %d: cannot compose", m.kind, m.pk)
                    self.outbox.retry_later(m.pk, f"cannot compose the message: {exc}", self._backoff(m.attempts))
            composed = self.outbox.set_messages(composed)
        ready = [(m, m.message or composed[m.pk]) for m in msgs if m.message or m.pk in composed]
        sock: socket.socket | None = None
        acked: list[tuple[OutboxMessage, str, str]] = []
        first_ack = 0.0

        def flush() -> None:
            if acked:
                self.outbox.sent_many(acked)
                self.sent += len(acked)
                acked.clear()

        try:
            for i, (m, data) in enumerate(ready):
                try:
                    if sock is None:
                        sock = socket.create_connection((ep.host, ep.port), timeout=ep.timeout)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    ack = exchange(sock, data)
                except (OSError, MLLPError) as exc:
                    flush()
                    why = f"cannot deliver to {ep.name} ({ep.host}:{ep.port}): {exc}"
                    log.warning("HL7 %s %d: %s", m.kind, m.pk, why)
                    for rest, _data in ready[i:]:  # the endpoint is down: the others wait too
                        self.outbox.retry_later(rest.pk, why, self._backoff(rest.attempts))
                    return
                code, control, text = parse_ack(ack)
                if code.upper() in ACCEPTED and (not control or control == parse_control(data)):
                    # Group commit: acceptances are recorded together, at most RECORD_BATCH messages or
                    # RECORD_WINDOW seconds after the first (the receiver is never left idle for a commit per
                    # message); a crash inside that window sends those same messages (same MSH-10) again.
                    if not acked:
                        first_ack = time.monotonic()
                    acked.append((m, code.upper(), text))
                    if len(acked) >= self.RECORD_BATCH or time.monotonic() - first_ack >= self.RECORD_WINDOW:
                        flush()
                else:
                    flush()
                    self._record(m, data, ack)
        finally:
            flush()
            if sock is not None:
                sock.close()

    def _record(self, m: OutboxMessage, data: bytes, ack: bytes) -> None:
        code, control, text = parse_ack(ack)
        ours = parse_control(data)
        if code and control and ours and control != ours:
            self.outbox.retry_later(m.pk, f"the ACK names message {control}, not {ours}", self._backoff(m.attempts))
        elif code.upper() in ACCEPTED:
            self.outbox.sent(m.pk, code.upper(), text, message=m)
            self.sent += 1
        elif code.upper() in REFUSED:
            self.outbox.stopped(m.pk, code.upper(), text)
            self.failed += 1
        else:
            self.outbox.retry_later(m.pk, f"the answer is not an ACK (MSA-1 {code!r})", self._backoff(m.attempts))

    # ------------------------------------------------------------------ composing

    def compose(
        self,
        m: OutboxMessage,
        ep: Endpoint,
        *,
        report: ReportRow | None = None,
        orders: dict[tuple[str, str], dict[str, Any] | None] | None = None,
    ) -> bytes:
        """The message of an outbox row (ORU^R01 or MDM^T02), UTF-8.  ``report`` and ``orders`` (a cache
        by accession/study) spare the look-ups when a pass composes many."""
        r = report or self.reports.get(m.report_id)
        orders = {} if orders is None else orders
        key = (r.accession_number, r.study_uid)
        if key not in orders:
            book = OrderBook(self.archive)
            found = book.order(accession=r.accession_number) if r.accession_number else None
            orders[key] = found or book.order(study_uid=r.study_uid)
        order = orders[key]
        placer = str(order.get("placer_number", "")) if order else ""
        filler = str(order.get("filler_number", "")) if order else ""
        control = _control_id(m)
        if m.kind == MDM:
            from io import BytesIO

            import pydicom

            from hilum.dicom.report_pdf import pdf_of

            pdf = pdf_of(pydicom.dcmread(BytesIO(self.archive.read(r.pdf_sop_uid))))
            doc = Document(
                patient_id=r.patient_id,
                document_id=r.report_id,
                data=pdf,
                patient_name=r.patient_name,
                birth_date=r.patient_birth_date,
                sex=r.patient_sex,
                accession_number=r.accession_number,
                placer_number=placer,
                filler_number=filler,
                author=r.signed_by,
                parent_document_id=r.parent_id,
                observed_at=r.signed_at,
            )
            text = build_mdm(
                doc,
                application=self.application,
                facility=self.facility,
                receiving_application=ep.application,
                receiving_facility=ep.facility,
                control_id=control,
            )
        else:
            rep = Report(
                patient_id=r.patient_id,
                text=r.text,
                patient_name=r.patient_name,
                birth_date=r.patient_birth_date,
                sex=r.patient_sex,
                accession_number=r.accession_number,
                study_uid=r.study_uid,
                placer_number=placer,
                filler_number=filler,
                procedure_code=str(order.get("code_value", "")) if order else "",
                procedure_text=str(
                    (order.get("code_meaning") or order.get("description", "")) if order else r.study_description
                ),
                procedure_scheme=str(order.get("code_scheme", "") or "L") if order else "L",
                status="C" if r.state == AMENDED else "F",
                author=r.signed_by,
                observed_at=r.signed_at.astimezone() if r.signed_at else None,
            )
            text = build_oru(
                rep,
                application=self.application,
                facility=self.facility,
                receiving_application=ep.application,
                receiving_facility=ep.facility,
                control_id=control,
            )
        return text.encode("utf-8")


def parse_control(message: bytes) -> str:
    """MSH-10 of a message's bytes."""
    first = message.split(b"\r", 1)[0].decode("utf-8", errors="replace")
    if not first.startswith("MSH") or len(first) < 4:
        return ""
    parts = first.split(first[3])
    return parts[9] if len(parts) > 9 else ""
