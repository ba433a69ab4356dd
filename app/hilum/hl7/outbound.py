"""Outbound HL7: results (ORU^R01) to the hospital information system.

The hook reporting uses to send a signed report back (DESIGN.md seed
workflow: "the report goes back out ... HL7 ORU to the HIS").  The HIS
endpoint is ``[hl7] his_host`` / ``his_port`` in ``hilum.toml``
(``Config.extra["hl7"]``).  The message is HL7 v2.5 ORU^R01 (7.3.1) in
UTF-8 (MSH-18 ``UNICODE UTF-8``): PID, ORC (``RE``, placer/filler numbers),
OBR (procedure, accession number in OBR-18, result status in OBR-25), one
OBX per report line (TX) and one OBX carrying the Study Instance UID (DICOM
code 110180, as IHE uses).  :func:`send_oru` returns the ACK and raises
:class:`HL7SendError` when there is no endpoint, the HIS cannot be reached
or it does not accept (AE/AR).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from typing import Any

from hilum.errors import HilumError
from hilum.hl7.message import Header, ack_code_of, escape_text
from hilum.hl7.mllp import MLLPError, send

log = logging.getLogger(__name__)

_ids = count(1)
_H = Header()


class HL7SendError(HilumError):
    """An outbound HL7 message could not be delivered or was not accepted."""

    def __init__(self, message: str, ack: bytes = b""):
        self.ack = ack
        super().__init__(message)


@dataclass
class Report:
    """What an ORU^R01 carries: the patient, the order, and the report text."""

    patient_id: str
    text: str
    patient_name: str = ""  # DICOM PN
    birth_date: str = ""
    sex: str = ""
    accession_number: str = ""
    study_uid: str = ""
    placer_number: str = ""
    filler_number: str = ""
    procedure_code: str = ""
    procedure_text: str = ""
    procedure_scheme: str = "L"
    status: str = "F"  # OBR-25/OBX-11: P preliminary, F final, C corrected
    author: str = ""  # DICOM PN of the signing radiologist
    observed_at: datetime | None = None


def his_endpoint(config: Any) -> tuple[str, int] | None:
    """The configured HIS (host, port), or None."""
    extra = (getattr(config, "extra", None) or {}).get("hl7", {}) or {}
    host, port = extra.get("his_host"), extra.get("his_port")
    if not host or not port:
        return None
    return str(host), int(port)


_SPECIAL = frozenset("|^~\\&\r\n")


def _e(text: str) -> str:
    if not text or _SPECIAL.isdisjoint(text):  # the common case: nothing to escape
        return text or ""
    return escape_text(text, _H)


def _xpn(pn: str) -> str:
    """A DICOM PN (family^given^middle^prefix^suffix) as HL7 XPN (family^given^middle^suffix^prefix)."""
    parts = (pn.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (_e(p) for p in parts)
    return "^".join([family, given, middle, suffix, prefix]).rstrip("^")


def build_oru(report: Report, *, application: str = "HILUM", facility: str = "", receiving_application: str = "",
              receiving_facility: str = "", control_id: str | None = None) -> str:
    """The ORU^R01 message text (segments separated by CR)."""
    now = datetime.now()
    ts = now.strftime("%Y%m%d%H%M%S")
    observed = (report.observed_at or now).strftime("%Y%m%d%H%M%S")
    control = control_id or f"ORU{ts}{next(_ids):06d}"
    procedure = "^".join([_e(report.procedure_code), _e(report.procedure_text),
                          _e(report.procedure_scheme) if report.procedure_code else ""]).rstrip("^")
    # OBR-32 (NDL): the name as subcomponents ID&family&given&middle&suffix&prefix.
    a = (report.author.split("=")[0].split("^") + [""] * 5)[:5]
    author = "&".join(["", _e(a[0]), _e(a[1]), _e(a[2]), _e(a[4]), _e(a[3])]).rstrip("&")
    segs = [
        "|".join(["MSH", "^~\\&", _e(application), _e(facility), _e(receiving_application), _e(receiving_facility),
                  ts, "", "ORU^R01^ORU_R01", control, "P", "2.5", "", "", "", "", "", "UNICODE UTF-8"]),
        "|".join(["PID", "1", "", _e(report.patient_id), "", _xpn(report.patient_name), "", report.birth_date,
                  report.sex]),
        "|".join(["ORC", "RE", _e(report.placer_number), _e(report.filler_number or report.accession_number)]),
        "|".join(["OBR", "1", _e(report.placer_number), _e(report.filler_number or report.accession_number),
                  procedure, "", "", observed] + [""] * 10 + [_e(report.accession_number)] + [""] * 3
                 + [ts, "", "", report.status] + [""] * 6 + [author]),
    ]
    n = 0
    for line in (report.text or "").splitlines() or [""]:
        n += 1
        segs.append("|".join(["OBX", str(n), "TX", "REPORT^Report text^L", "1", _e(line), "", "", "", "", "",
                              report.status, "", "", observed]))
    if report.study_uid:
        n += 1
        segs.append("|".join(["OBX", str(n), "ST", "110180^Study Instance UID^DCM", "", _e(report.study_uid), "", "",
                              "", "", "", report.status]))
    return "\r".join(segs) + "\r"


def send_oru(config: Any, report: Report, *, timeout: float = 30.0) -> bytes:
    """Send a report as ORU^R01 to the configured HIS; returns its ACK (raises :class:`HL7SendError`)."""
    endpoint = his_endpoint(config)
    if endpoint is None:
        raise HL7SendError("no HIS endpoint configured: set [hl7] his_host and his_port in hilum.toml")
    extra = (getattr(config, "extra", None) or {}).get("hl7", {}) or {}
    text = build_oru(report, application=str(extra.get("application", getattr(config, "aet", "HILUM"))),
                     facility=str(extra.get("facility", "")),
                     receiving_application=str(extra.get("his_application", "")),
                     receiving_facility=str(extra.get("his_facility", "")))
    host, port = endpoint
    try:
        ack = send(host, port, text.encode("utf-8"), timeout=timeout)
    except (OSError, MLLPError) as exc:
        raise HL7SendError(f"cannot deliver ORU to {host}:{port}: {exc}") from exc
    code, why = ack_code_of(ack)
    if code not in ("AA", "CA"):
        raise HL7SendError(f"HIS at {host}:{port} answered {code or 'no MSA'}{': ' + why if why else ''}", ack)
    log.info("ORU^R01 for accession %s delivered to %s:%d", report.accession_number, host, port)
    return ack


@dataclass
class Document:
    """What an MDM^T02 carries: the patient, the order, and one document (a PDF) with its metadata."""

    patient_id: str
    document_id: str  # TXA-12 Unique Document Number
    data: bytes
    mime_subtype: str = "pdf"
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    accession_number: str = ""
    placer_number: str = ""
    filler_number: str = ""
    title: str = "Radiology report"
    author: str = ""
    status: str = "AU"  # TXA-17 completion status: AU authenticated (signed), PA pre-authenticated, DI dictated
    parent_document_id: str = ""  # TXA-13: the document an addendum follows
    observed_at: datetime | None = None


def build_mdm(doc: Document, *, application: str = "HILUM", facility: str = "", receiving_application: str = "",
              receiving_facility: str = "", control_id: str | None = None) -> str:
    """The MDM^T02 message text (HL7 v2.5 9.6.2, original document notification and content): MSH, EVN, PID,
    PV1, TXA, and one OBX of type ED carrying the document in Base64 (``^application^pdf^Base64^...``)."""
    import base64

    now = datetime.now()
    ts = now.strftime("%Y%m%d%H%M%S")
    observed = (doc.observed_at or now).strftime("%Y%m%d%H%M%S")
    control = control_id or f"MDM{ts}{next(_ids):06d}"
    a = (doc.author.split("=")[0].split("^") + [""] * 5)[:5]
    author = "^".join(["", _e(a[0]), _e(a[1]), _e(a[2]), _e(a[4]), _e(a[3])]).rstrip("^")
    payload = base64.b64encode(doc.data).decode("ascii")
    segs = [
        "|".join(["MSH", "^~\\&", _e(application), _e(facility), _e(receiving_application), _e(receiving_facility),
                  ts, "", "MDM^T02^MDM_T02", control, "P", "2.5", "", "", "", "", "", "UNICODE UTF-8"]),
        "|".join(["EVN", "T02", ts]),
        "|".join(["PID", "1", "", _e(doc.patient_id), "", _xpn(doc.patient_name), "", doc.birth_date, doc.sex]),
        "|".join(["PV1", "1", "O"]),
        # TXA-1 set ID, -2 type, -3 presentation, -4 activity time, -5 provider, -6 origination time, -9
        # originator, -12 unique document number, -13 parent document, -14/-15 placer/filler order, -17 status
        "|".join(["TXA", "1", "RAD^Radiology report^HL70270", "AP^Other application data^HL70191", observed,
                  author, observed, "", "", author, "", "", _e(doc.document_id), _e(doc.parent_document_id),
                  _e(doc.placer_number), _e(doc.filler_number or doc.accession_number), "", doc.status]),
        "|".join(["OBX", "1", "ED", "PDF^" + _e(doc.title) + "^L", "1",
                  f"^application^{doc.mime_subtype}^Base64^{payload}", "", "", "", "", "", "F", "", "", observed]),
    ]
    return "\r".join(segs) + "\r"
