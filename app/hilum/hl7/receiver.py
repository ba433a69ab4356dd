"""Inbound HL7: ADT and ORM/OMI messages applied to the archive's patients and orders.

:class:`Receiver` turns one message's bytes into one ACK's bytes; the MLLP
service (``service.py``) only frames.  Each message is applied in one
transaction (:meth:`OrderBook.apply_message`), so an error anywhere leaves
nothing half-applied, and a control ID already applied from the same sender
gets its original ACK back without being applied again.

Field mapping (IHE RAD TF-2 RAD-1/RAD-12 for ADT, RAD-4 for ORM; HL7 v2.3.1-2.5):

ADT
  A01, A04, A05 register, A08, A31, A28 update: PID-3 (first repetition of
  type MR, else the first; its assigning authority only with the
  ``keep_issuer`` setting, since modalities rarely send Issuer of Patient
  ID), PID-5 name (XPN → DICOM PN ``family^given^middle^prefix^suffix``),
  PID-7 birth date, PID-8 sex.  An empty field keeps the archive's value,
  ``""`` clears it.  A40 merges MRG-1 (prior) into PID-3 (surviving): its
  studies and orders move.  A02, A03, A06, A07, A11, A12, A13 are
  acknowledged without change: a PACS keeps no visit state.
ORM^O01 / OMI^O23
  One order per ORC(+OBR) group; ORC-1 NW new, CA/OC cancel, DC
  discontinue, XO/XX change, SC status (ORC-5 IP, CM, DC, CA).  Orders are
  found by placer (ORC-2/OBR-2), filler (ORC-3/OBR-3) or accession number.
  Accession number OBR-18 (else the filler number, else assigned),
  requested procedure ID OBR-19, SPS ID OBR-20, modality OBR-24, procedure
  OBR-4 (code^text^scheme), start ORC-7.4/OBR-27.4 or TQ1-7, priority
  ORC-7.6/OBR-27.6 or TQ1-9 (S→STAT, A→HIGH, R→ROUTINE), technician OBR-34
  → scheduled performing physician, reason OBR-31, referring physician
  PV1-8 (else OBR-16), requesting physician ORC-12/OBR-16, Study Instance
  UID ZDS-1 (else assigned), station AE ORC-18 (dcm4chee convention), else
  the ``[hl7.stations]`` modality → AE setting.  OMI's IPC segment gives
  accession (IPC-1), requested procedure ID (IPC-2), Study UID (IPC-3),
  SPS ID (IPC-4), modality (IPC-5), station name (IPC-7), location
  (IPC-8), station AE (IPC-9).  An order for an unknown patient creates the
  patient; a known patient's demographics are only filled where empty (ADT
  is the authority).

Patients: every change goes through THE patient registry
(:mod:`hilum.archive.patients`) with its source — ``adt`` for ADT (sent
fields replace, each change kept in the patient history with this message's
type, sender and control ID), ``order`` for ORM/OMI (fills empty fields).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import hl7  # type: ignore[import-untyped]

from hilum.archive.orders import (
    CANCELLED,
    COMPLETED,
    DISCONTINUED,
    IN_PROGRESS,
    OrderBook,
    OrderInfo,
    OrderTx,
    PatientInfo,
    RegistryError,
    StepInfo,
)
from hilum.hl7.message import (
    Header,
    HL7Error,
    Issue,
    build_ack,
    decode,
    encode,
    get,
    parse,
    read_header,
    repetitions,
    segments,
)

log = logging.getLogger(__name__)

ADT_UPDATE = {"A01", "A04", "A05", "A08", "A28", "A31"}
ADT_NO_CHANGE = {"A02", "A03", "A06", "A07", "A11", "A12", "A13"}
ORDER_MESSAGES = {("ORM", "O01"), ("OMI", "O23")}
PRIORITIES = {"S": "STAT", "A": "HIGH", "R": "ROUTINE", "P": "HIGH", "C": "MEDIUM", "T": "MEDIUM"}
#: HL7 table 0074 diagnostic service sections that are not DICOM modality codes.
MODALITY_ALIASES = {"NMR": "MR", "NMS": "NM", "CUS": "US"}
#: Error code of each :class:`OrderError` code (HL7 table 0357).
ORDER_ERROR_CODES = {"unknown-order": 204, "duplicate-order": 205, "invalid-state": 207, "invalid-value": 102,
                     "missing-value": 101}
SUPPORTED_VERSIONS = ("2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8", "2.9")


@dataclass
class ReceiverSettings:
    """The ``[hl7]`` settings the receiver uses (from ``Config.extra["hl7"]``)."""

    application: str = "HILUM"
    facility: str = ""
    default_charset: str = ""
    keep_issuer: bool = False
    stations: dict[str, str] = field(default_factory=dict)  # modality → station AE title

    @classmethod
    def from_config(cls, cfg: Any) -> ReceiverSettings:
        extra = (getattr(cfg, "extra", None) or {}).get("hl7", {}) or {}
        return cls(application=str(extra.get("application", getattr(cfg, "aet", "HILUM"))),
                   facility=str(extra.get("facility", "")),
                   default_charset=str(extra.get("default_charset", "")),
                   keep_issuer=bool(extra.get("keep_issuer", False)),
                   stations={str(k).upper(): str(v) for k, v in (extra.get("stations", {}) or {}).items()})


@dataclass
class Outcome:
    """What applying a message found worth telling the sender (warnings → ERR with severity W)."""

    warnings: list[Issue] = field(default_factory=list)
    audit: list[dict[str, Any]] = field(default_factory=list)  # what changed, for the audit trail


def _null(value: str) -> str | None:
    """HL7 field semantics: empty = not sent (None), ``""`` = delete (empty string)."""
    if value == '""':
        return ""
    return value or None


def _pn_from_xpn(seg: Any, field_no: int, rep: int = 1) -> str:
    """An XPN/XCN name as a DICOM PN: family^given^middle^prefix^suffix (trailing ^ dropped)."""
    family = get(seg, field_no, 1, 1, rep)
    given, middle, suffix, prefix = (get(seg, field_no, c, 1, rep) for c in (2, 3, 4, 5))
    if family == '""':
        return '""'
    return "^".join([family, given, middle, prefix, suffix]).rstrip("^")


def _pn_from_xcn(seg: Any, field_no: int) -> str:
    """An XCN (ID number first) as a DICOM PN."""
    family, given, middle, suffix, prefix = (get(seg, field_no, c) for c in (2, 3, 4, 5, 6))
    if not family and not given:
        return get(seg, field_no, 1) if not get(seg, field_no, 1).isdigit() else ""
    return "^".join([family, given, middle, prefix, suffix]).rstrip("^")


def _technician(seg: Any, field_no: int) -> str:
    """OBR-34 (NDL/CM: the name in subcomponents id&family&given)."""
    family, given = get(seg, field_no, 1, 2), get(seg, field_no, 1, 3)
    if family or given:
        return "^".join([family, given]).rstrip("^")
    return _pn_from_xcn(seg, field_no)


def _date(ts: str) -> str:
    return ts[:8] if len(ts) >= 8 and ts[:8].isdigit() else ""


def _time(ts: str) -> str:
    t = ts[8:].split("+")[0].split("-")[0]
    return t if t and t[:2].isdigit() else ""


class Receiver:
    """Apply HL7 messages to an archive's patients and orders; one ACK per message."""

    def __init__(self, book: OrderBook, settings: ReceiverSettings | None = None):
        self.book = book
        self.settings = settings or ReceiverSettings()

    # ------------------------------------------------------------------ entry

    def handle(self, raw: bytes, peer: str = "") -> bytes:
        """The ACK (encoded bytes, unframed) for one message's bytes (unframed); ``peer``: the sender's
        address, for the audit trail (one "Patient Record"/"Order Record" event per patient or order changed)."""
        header = read_header(raw)
        applied: list[Outcome] = []
        try:
            if header is None:
                raise HL7Error("AR", 100, "message does not start with an MSH segment", "MSH-1")
            text = decode(raw, header, self.settings.default_charset)
            self._check_header(header)
            msg = parse(text)
            ack, duplicate = self.book.apply_message(
                header.sender, header.control_id, header.kind,
                lambda tx: _kept(applied, self._apply(tx, header, msg)),
                lambda outcome: build_ack(header, "AA", outcome.warnings, application=self.settings.application,
                                          facility=self.settings.facility))
            if duplicate:
                log.info("HL7 %s control ID %s from %s seen before: original ACK resent", header.kind,
                         header.control_id, header.sender)
            else:
                log.info("HL7 %s %s from %s: accepted", header.kind, header.control_id, header.sender)
                self._audit(header, applied[-1] if applied else None, peer)
            return encode(ack, header)
        except HL7Error as exc:
            return self._nak(header, exc.ack_code, Issue(exc.code, str(exc), exc.where))
        except RegistryError as exc:  # an OrderError, or the patient registry's refusal
            return self._nak(header, "AE", Issue(ORDER_ERROR_CODES.get(exc.code, 207), str(exc), exc.where))
        except Exception as exc:  # noqa: BLE001 - any failure is a NAK, never a dead connection
            log.exception("HL7 message failed")
            return self._nak(header, "AE", Issue(207, f"internal error: {type(exc).__name__}: {exc}"))

    def _audit(self, h: Header, outcome: Outcome | None, peer: str) -> None:
        audit = getattr(getattr(self.book, "archive", None), "audit", None)
        if audit is None or outcome is None:
            return
        user = "^".join(filter(None, (h.sending_application, h.sending_facility))) or h.sender or "HL7"
        for item in outcome.audit:
            try:
                audit(item.pop("event"), user=user[:128], peer=peer,
                      detail=f"HL7 {h.kind} {h.control_id}: {item.pop('what')}"[:1000], **item)
            except Exception:  # noqa: BLE001 - the audit never breaks the ACK
                log.exception("cannot record the audit event of HL7 %s", h.kind)

    FRAME_ERRORS = {
        "truncated": "truncated MLLP frame: it did not end with <FS><CR> (before the next frame or in time)",
        "no-start": "data outside an MLLP frame (no start block <VT>)",
        "too-large": "MLLP frame too large",
    }

    def reject_frame(self, data: bytes, error: str) -> bytes:
        """The NAK (AR) for a broken frame; MSA-2 names its control ID when its MSH is readable."""
        text = self.FRAME_ERRORS.get(error, f"broken MLLP frame ({error})")
        return self._nak(read_header(data), "AR", Issue(207, text))

    def _nak(self, header: Header | None, code: str, issue: Issue) -> bytes:
        what = header.kind if header else "message"
        log.warning("HL7 %s %s rejected (%s): %s", what, header.control_id if header else "", code, issue.text)
        return encode(build_ack(header, code, [issue], application=self.settings.application,
                                facility=self.settings.facility), header)

    @staticmethod
    def _check_header(h: Header) -> None:
        if not h.message_type:
            raise HL7Error("AR", 101, "MSH-9 (message type) missing", "MSH-9")
        if not h.control_id:
            raise HL7Error("AR", 101, "MSH-10 (message control ID) missing", "MSH-10")
        if h.processing_id and h.processing_id not in ("P", "D", "T"):
            raise HL7Error("AR", 202, f"unsupported processing ID {h.processing_id!r}", "MSH-11")
        if h.version and not h.version.startswith(SUPPORTED_VERSIONS):
            raise HL7Error("AR", 203, f"unsupported HL7 version {h.version!r}", "MSH-12")

    def _apply(self, tx: OrderTx, h: Header, msg: hl7.Message) -> Outcome:
        if h.message_type == "ADT":
            return self._adt(tx, h, msg)
        if (h.message_type, h.trigger_event) in ORDER_MESSAGES:
            return self._order(tx, h, msg)
        if h.message_type in ("ORM", "OMI"):
            raise HL7Error("AR", 201, f"unsupported event {h.kind}", "MSH-9")
        raise HL7Error("AR", 200, f"unsupported message type {h.kind or '(none)'}", "MSH-9")

    # ------------------------------------------------------------------ patients

    def _patient(self, msg: hl7.Message, *, required: bool = True) -> PatientInfo:
        pids = segments(msg, "PID")
        if not pids:
            raise HL7Error("AE", 100, "PID segment missing", "PID")
        return self._cx_patient(pids[0], 3, demographics=True, required=required)

    def _cx_patient(self, seg: Any, field_no: int, *, demographics: bool, required: bool = True) -> PatientInfo:
        where = f"{str(seg[0])}-{field_no}"
        reps = max(repetitions(seg, field_no), 1)
        chosen = 1
        for r in range(1, reps + 1):
            if get(seg, field_no, 5, 1, r).upper() == "MR" and get(seg, field_no, 1, 1, r):
                chosen = r
                break
        pid = get(seg, field_no, 1, 1, chosen)
        if not pid and field_no == 3 and str(seg[0]) == "PID":
            pid = get(seg, 2, 1)  # PID-2, the v2.3 external ID, when PID-3 is empty
        if not pid and required:
            raise HL7Error("AE", 101, f"patient identifier ({where}) missing", where)
        issuer = get(seg, field_no, 4, 1, chosen) if self.settings.keep_issuer else ""
        info = PatientInfo(patient_id=pid, issuer=issuer)
        if demographics:
            info.name = _null(_pn_from_xpn(seg, 5))
            birth = _null(get(seg, 7))
            info.birth_date = _date(birth) if birth else birth
            if birth and not info.birth_date:
                raise HL7Error("AE", 102, f"invalid birth date {birth!r}", "PID-7")
            sex = _null(get(seg, 8).upper())
            info.sex = {"U": "", "A": "O", "N": ""}.get(sex, sex) if sex is not None else None
        return info

    def _adt(self, tx: OrderTx, h: Header, msg: hl7.Message) -> Outcome:
        ev = h.trigger_event
        out = Outcome()
        if ev in ADT_UPDATE:
            info = self._patient(msg)
            tx.upsert_patient(info, "adt")
            out.audit.append(dict(event="Patient Record", action="U", patient_id=info.patient_id,
                                  patient_name=info.name or "", what="patient registered or updated"))
        elif ev == "A40":
            mrgs = segments(msg, "MRG")
            if not mrgs:
                raise HL7Error("AE", 100, "MRG segment missing", "MRG")
            surviving = self._patient(msg)
            prior = self._cx_patient(mrgs[0], 1, demographics=False)
            if not tx.merge_patients(surviving, prior.patient_id, prior.issuer):
                out.warnings.append(Issue(204, f"prior patient {prior.patient_id} unknown: nothing to merge",
                                          "MRG-1", "W"))
            else:
                out.audit.append(dict(event="Patient Record", action="U", patient_id=surviving.patient_id,
                                      patient_name=surviving.name or "",
                                      what=f"patient {prior.patient_id} merged into it"))
        elif ev in ADT_NO_CHANGE:
            log.debug("ADT^%s acknowledged without change", ev)
        else:
            raise HL7Error("AR", 201, f"unsupported event ADT^{ev or '(none)'}", "MSH-9")
        return out

    # ------------------------------------------------------------------ orders

    def _groups(self, msg: hl7.Message) -> list[dict[str, list[Any]]]:
        groups: list[dict[str, list[Any]]] = []
        for seg in msg:
            sid = str(seg[0])
            if sid == "ORC":
                groups.append({"ORC": [seg]})
            elif groups and sid in ("OBR", "TQ1", "ZDS", "IPC", "NTE", "OBX"):
                groups[-1].setdefault(sid, []).append(seg)
            elif sid == "OBR":
                raise HL7Error("AE", 100, "OBR without a preceding ORC", "OBR")
        if not groups:
            raise HL7Error("AE", 100, "ORC segment missing", "ORC")
        return groups

    def _order(self, tx: OrderTx, h: Header, msg: hl7.Message) -> Outcome:
        out = Outcome()
        pv1 = (segments(msg, "PV1") or [None])[0]
        patient: PatientInfo | None = None
        patient_pk: int | None = None
        for group in self._groups(msg):
            orc = group["ORC"][0]
            obr = (group.get("OBR") or [None])[0]
            control = get(orc, 1).upper()
            placer = get(orc, 2) or get(obr, 2)
            filler = get(orc, 3) or get(obr, 3)
            accession = get(obr, 18)
            ipcs = group.get("IPC") or []
            if ipcs and not accession:
                accession = get(ipcs[0], 1)
            if control == "NW":
                if obr is None and not ipcs:
                    raise HL7Error("AE", 100, "new order without OBR", "OBR")
                if patient_pk is None:
                    patient = self._patient(msg)
                    patient_pk = tx.upsert_patient(patient, "order")
                tx.create_order(patient_pk, self._order_info(h, orc, obr, pv1, group))
                out.audit.append(dict(event="Order Record", action="C", patient_id=patient.patient_id if patient else "",
                                      patient_name=(patient.name or "") if patient else "",
                                      what=f"new order (placer {placer or '-'}, accession {accession or '-'})"))
                continue
            if control not in ("CA", "OC", "DC", "OD", "XO", "XX", "SC"):
                raise HL7Error("AE", 103, f"unsupported order control {control or '(none)'!r}", "ORC-1")
            pk = tx.find_order(placer=placer, filler=filler, accession=accession)
            if pk is None:
                ids = ", ".join(f"{k} {v}" for k, v in (("placer", placer), ("filler", filler),
                                                        ("accession", accession)) if v) or "no identifier"
                raise HL7Error("AE", 204, f"unknown order ({ids})", "ORC-2")
            if control in ("CA", "OC"):
                tx.set_status(pk, CANCELLED)
            elif control in ("DC", "OD"):
                tx.set_status(pk, DISCONTINUED)
            elif control in ("XO", "XX"):
                if patient_pk is None and segments(msg, "PID"):
                    patient_pk = tx.upsert_patient(self._patient(msg), "order")
                tx.update_order(pk, self._order_info(h, orc, obr, pv1, group), patient_pk)
            else:  # SC
                status = get(orc, 5).upper()
                target = {"IP": IN_PROGRESS, "CM": COMPLETED, "DC": DISCONTINUED, "CA": CANCELLED}.get(status)
                if target is None:
                    if status in ("SC", ""):
                        continue
                    raise HL7Error("AE", 103, f"unsupported order status {status!r}", "ORC-5")
                tx.set_status(pk, target)
            who = self._patient(msg, required=False) if segments(msg, "PID") else None
            out.audit.append(dict(event="Order Record", action="U", patient_id=who.patient_id if who else "",
                                  patient_name=(who.name or "") if who else "",
                                  what=f"order control {control} (placer {placer or '-'}, accession "
                                       f"{accession or '-'})"))
        return out

    def _order_info(self, h: Header, orc: Any, obr: Any, pv1: Any, group: Mapping[str, list[Any]]) -> OrderInfo:
        tq1 = (group.get("TQ1") or [None])[0]
        zds = (group.get("ZDS") or [None])[0]
        ipcs = group.get("IPC") or []
        start = get(tq1, 7) or get(orc, 7, 4) or get(obr, 27, 4)
        priority = get(tq1, 9) or get(orc, 7, 6) or get(obr, 27, 6)
        modality = get(obr, 24).upper()
        station = get(orc, 18)
        referring = _pn_from_xcn(pv1, 8) if pv1 is not None else ""
        requesting = _pn_from_xcn(orc, 12) or _pn_from_xcn(obr, 16)
        info = OrderInfo(
            placer_number=get(orc, 2) or get(obr, 2),
            filler_number=get(orc, 3) or get(obr, 3),
            accession_number=get(obr, 18),
            study_uid=get(zds, 1),
            requested_procedure_id=get(obr, 19),
            description=get(obr, 4, 2) or get(obr, 4, 1),
            code_value=get(obr, 4, 1), code_scheme=get(obr, 4, 3), code_meaning=get(obr, 4, 2),
            referring_physician=referring or _pn_from_xcn(obr, 16),
            requesting_physician=requesting,
            priority=PRIORITIES.get(priority[:1].upper(), "") if priority else "",
            reason=get(obr, 31, 2) or get(obr, 31, 1),
            source=h.sender,
        )
        base = StepInfo(sps_id=get(obr, 20), modality=MODALITY_ALIASES.get(modality, modality),
                        station_aet=station, start_date=_date(start), start_time=_time(start),
                        performer=_technician(obr, 34), description=get(obr, 4, 2) or get(obr, 4, 1))
        if start and not base.start_date:
            raise HL7Error("AE", 102, f"invalid start date/time {start!r}", "OBR-27")
        steps: list[StepInfo] = []
        for ipc in ipcs:
            if not info.accession_number:
                info.accession_number = get(ipc, 1)
            info.requested_procedure_id = info.requested_procedure_id or get(ipc, 2)
            info.study_uid = info.study_uid or get(ipc, 3)
            mod = get(ipc, 5).upper() or base.modality
            steps.append(StepInfo(sps_id=get(ipc, 4) or base.sps_id, modality=MODALITY_ALIASES.get(mod, mod),
                                  station_aet=get(ipc, 9) or base.station_aet, station_name=get(ipc, 7),
                                  location=get(ipc, 8), start_date=base.start_date, start_time=base.start_time,
                                  performer=base.performer, description=base.description))
        if not steps:
            steps = [base]
        for step in steps:
            if not step.station_aet and step.modality:
                step.station_aet = self.settings.stations.get(step.modality, "")
        info.steps = steps
        return info


def _kept(into: list[Outcome], outcome: Outcome) -> Outcome:
    into.append(outcome)
    return outcome


def receiver_for(archive: Any, config: Any = None, *, orders: OrderBook | None = None) -> Receiver:
    """A :class:`Receiver` on an order book (``orders``, else one on ``archive``) with the config's
    ``[hl7]`` settings."""
    settings = ReceiverSettings.from_config(config) if config is not None else ReceiverSettings()
    return Receiver(orders if orders is not None else OrderBook(archive), settings)
