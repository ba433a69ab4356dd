"""Radiology reports: drafts, signing, addenda, their DICOM copies and their HL7 outbox.

DESIGN.md seed workflow, last step: "the radiologist reads → the report goes
back out (DICOM SR in the archive, HL7 ORU to the HIS)".  A report belongs to
a study (and, through its accession number, to an order).  Its life:

``draft`` (autosaved by :meth:`Reports.save`) → ``preliminary`` (optional) →
``final`` (signed by a user with the ``radiologist`` role, password
re-checked with :mod:`hilum.archive.users`) — locked from then on: any change
raises :class:`ReportLocked`.  A correction is an addendum
(:meth:`Reports.addendum`): a new report linked to the signed original by
``parent_fk``, the original untouched; when the addendum is signed its state
is ``amended`` (it is the current version of the chain).

Every state change is one row of ``report_events`` (user, time, from, to),
written in the same transaction as the change.  On ``preliminary`` and on
signing the report is stored as DICOM through the one ingest call
(:meth:`hilum.archive.Archive.ingest`): an Enhanced SR
(:mod:`hilum.dicom.report_sr`) and an Encapsulated PDF
(:mod:`hilum.dicom.report_pdf`) in a report series of the study.  On
signing, one ``hl7_outbox`` row per configured HIS endpoint (ORU^R01, and
MDM^T02 with the PDF where configured) is queued in the signing
transaction; :mod:`hilum.hl7.outbox` composes and sends them.  The order of
the accession number moves to COMPLETED.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from hilum.errors import HilumError

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger(__name__)

DRAFT, PRELIMINARY, FINAL, AMENDED = "draft", "preliminary", "final", "amended"
STATES = (DRAFT, PRELIMINARY, FINAL, AMENDED)
LOCKED_STATES = frozenset({FINAL, AMENDED})

ORU, MDM = "ORU", "MDM"
OUTBOX_STATES = ("pending", "sent", "failed-ae", "failed-ar", "abandoned")

DEFAULT_SECTIONS: tuple[tuple[str, str], ...] = (
    ("indication", "Indication"),
    ("technique", "Technique"),
    ("comparison", "Comparison"),
    ("findings", "Findings"),
    ("impression", "Impression"),
)


class ReportError(HilumError):
    """A report operation that cannot be done; the message is one sentence for the user."""


class ReportNotFound(ReportError):
    """No report with that id."""


class ReportLocked(ReportError):
    """The report is signed (final or amended): it cannot change; write an addendum."""


class SignRefused(ReportError):
    """Signing refused: unknown user, wrong password, or a role that may not sign."""


@dataclass(frozen=True)
class Section:
    """One section of a report: ``key`` (stable, e.g. ``findings``), ``title`` (as shown), ``text``."""

    key: str
    title: str
    text: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"key": self.key, "title": self.title, "text": self.text}


SectionsLike = Iterable[Section | Mapping[str, Any]]


@dataclass(frozen=True)
class Report:
    """One row of ``reports`` (the fields of the table; ``sections`` is its ``text`` column parsed)."""

    pk: int
    report_id: str
    study_uid: str
    accession_number: str
    patient_id: str
    order_fk: int | None
    template: str
    state: str
    sections: tuple[Section, ...]
    created_by: str
    created_at: datetime
    updated_at: datetime
    signed_by: str = ""
    signed_at: datetime | None = None
    parent_fk: int | None = None
    parent_id: str = ""  # report_id of the original an addendum amends ("" for an original)
    sr_sop_uid: str = ""
    pdf_sop_uid: str = ""
    version: int = 1  # 1 for an original; n+1 for the addendum of version n
    patient_name: str = ""  # DICOM PN, from the study
    study_date: str = ""
    study_description: str = ""

    @property
    def locked(self) -> bool:
        """True once signed: no change is accepted (write an addendum)."""
        return self.state in LOCKED_STATES

    @property
    def text(self) -> str:
        """The sections as plain text ("TITLE:\\ntext" blocks), as the ORU and the PDF show them."""
        return "\n\n".join(f"{s.title.upper()}:\n{s.text}".rstrip() for s in self.sections if s.text.strip())

    def section(self, key: str) -> Section | None:
        return next((s for s in self.sections if s.key == key), None)


@dataclass(frozen=True)
class ReportEvent:
    """One state change of a report (``report_events``)."""

    pk: int
    report_id: str
    at: datetime
    user: str
    from_state: str
    to_state: str
    detail: str = ""


@dataclass(frozen=True)
class OutboxMessage:
    """One message of the HL7 outbox (``hl7_outbox``)."""

    pk: int
    kind: str  # ORU | MDM
    report_id: str
    endpoint: str
    state: str  # pending | sent | failed-ae | failed-ar | abandoned
    attempts: int
    next_try_at: datetime | None
    last_error: str
    ack_code: str
    ack_text: str
    created_at: datetime
    sent_at: datetime | None
    message: bytes = field(default=b"", repr=False)


class Reports:
    """The reports of one archive (build one per archive: ``Reports(archive)``; it holds no state).

    ``endpoints``: names of the HIS endpoints that receive an ORU^R01 of each
    signed report; ``mdm_endpoints``: those that receive an MDM^T02 with the
    PDF.  Use :meth:`from_config` to take them from ``hilum.toml`` (``[report]
    his`` / ``mdm``, or ``[hl7] his_host`` as endpoint ``his``).
    ``institution``: shown as the Verifying Organization of a signed SR.
    """

    def __init__(self, archive: Archive, *, endpoints: Sequence[str] = (), mdm_endpoints: Sequence[str] = (),
                 institution: str = ""):
        self.archive = archive
        self.endpoints = tuple(endpoints)
        self.mdm_endpoints = tuple(mdm_endpoints)
        self.institution = institution

    @classmethod
    def from_config(cls, archive: Archive, config: Any) -> Reports:
        raise NotImplementedError

    def create(self, study_uid: str, *, user: str, template: str = "generic",
               order: str | int | None = None, sections: SectionsLike | None = None) -> Report:
        """A new draft for a study.  ``order``: an accession number (str) or order pk (int); None takes
        the study's accession number.  ``sections`` default to :data:`DEFAULT_SECTIONS`, empty."""
        raise NotImplementedError

    def save(self, report_id: str, sections: SectionsLike, *, user: str) -> Report:
        """Autosave: replace the sections of a draft or preliminary report (raises :class:`ReportLocked`
        once signed).  No event row (saving is not a state change); ``updated_at`` moves."""
        raise NotImplementedError

    def set_preliminary(self, report_id: str, *, user: str) -> Report:
        """draft → preliminary; stores an SR (PARTIAL/UNVERIFIED) and a PDF marked preliminary."""
        raise NotImplementedError

    def sign(self, report_id: str, *, user: str, password: str) -> Report:
        """Sign: draft/preliminary → final (or amended for an addendum).  The user must exist, have the
        ``radiologist`` role and give the right password (:class:`SignRefused` otherwise).  Stores the SR
        (COMPLETE/VERIFIED, Verifying Observer) and the PDF, queues the HL7 messages, completes the order."""
        raise NotImplementedError

    def addendum(self, report_id: str, *, user: str) -> Report:
        """A new draft amending a signed report (its sections copied as a start); the original is untouched."""
        raise NotImplementedError

    def get(self, report_id: str) -> Report:
        """The report (raises :class:`ReportNotFound`)."""
        raise NotImplementedError

    def for_study(self, study_uid: str) -> list[Report]:
        """The reports of a study, oldest first (originals and addenda)."""
        raise NotImplementedError

    def priors(self, patient_id: str, before: datetime | str | None = None, *,
               exclude_study: str = "") -> list[Report]:
        """Signed reports of a patient, newest first; ``before``: only those of studies before that date
        (a datetime, or a DICOM date YYYYMMDD compared with the study date)."""
        raise NotImplementedError

    def status_of(self, study_uids: Iterable[str]) -> dict[str, str]:
        """The report status of each study (for the worklist): the state of its newest report, or absent."""
        raise NotImplementedError

    def events(self, report_id: str) -> list[ReportEvent]:
        """The state changes of a report, oldest first."""
        raise NotImplementedError

    def outbox(self, *, states: Iterable[str] | None = None, report_id: str | None = None) -> list[OutboxMessage]:
        """The HL7 outbox, newest first (optionally filtered)."""
        raise NotImplementedError
