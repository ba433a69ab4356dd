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

import builtins
import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import generate_uid
from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from hilum.archive.orders import COMPLETED, OrderBook, OrderError, OrderEvent, OrderTx
from hilum.archive.orders.model import FINAL as ORDER_FINAL
from hilum.archive.schema import hl7_outbox, orders, procedure_steps, report_events, reports
from hilum.archive.users import LoginBusy, UserStore
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
    patient_name: str = ""  # DICOM PN, from the study (the archive's current demographics)
    patient_birth_date: str = ""
    patient_sex: str = ""
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


@dataclass(frozen=True)
class ReportChanged:
    """Published on the archive's event bus after a committed change of a report (state, text, DICOM copies)."""

    report_id: str
    study_uid: str
    state: str
    what: str  # created | saved | preliminary | signed | stored | addendum


@dataclass(frozen=True)
class OutboxChanged:
    """Published on the archive's event bus when an outbox message is queued, sent, or stops (``alert``)."""

    pk: int
    report_id: str
    endpoint: str
    kind: str
    state: str
    alert: bool = False
    detail: str = ""


MAX_SECTIONS = 64
MAX_TEXT = 1_000_000  # characters of all sections together
REPORT_SR_SERIES_NUMBER = 9910
REPORT_PDF_SERIES_NUMBER = 9911
RADIOLOGIST = "radiologist"
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
SR_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.88.11",
        "1.2.840.10008.5.1.4.1.1.88.22",
        "1.2.840.10008.5.1.4.1.1.88.33",
        "1.2.840.10008.5.1.4.1.1.88.34",
        "1.2.840.10008.5.1.4.1.1.88.35",
    }
)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def report_series_uids(study_uid: str) -> tuple[str, str]:
    """The Series Instance UIDs of a study's report SRs and report PDFs (the same for every report of the
    study: one report series per kind, derived from the study UID so every node agrees)."""
    return (
        generate_uid(entropy_srcs=[study_uid, "hilum-report-sr"]),
        generate_uid(entropy_srcs=[study_uid, "hilum-report-pdf"]),
    )


def parse_sections(sections: SectionsLike) -> tuple[Section, ...]:
    """Sections from :class:`Section` objects or ``{key, title, text}`` mappings, checked (raises ValueError)."""
    out: list[Section] = []
    seen: set[str] = set()
    total = 0
    for item in sections:
        if isinstance(item, Section):
            sec = item
        elif isinstance(item, Mapping):
            key, title, text = item.get("key"), item.get("title", ""), item.get("text", "")
            if not isinstance(key, str) or not isinstance(title, str) or not isinstance(text, str):
                raise ValueError("a section needs a text key, title and text")
            sec = Section(key, title or key.capitalize(), text)
        else:
            raise TypeError(f"a section is a Section or a mapping, not {type(item).__name__}")
        if not sec.key or len(sec.key) > 64:
            raise ValueError(f"section key {sec.key!r} must have 1 to 64 characters")
        if sec.key in seen:
            raise ValueError(f"section {sec.key!r} appears twice")
        seen.add(sec.key)
        total += len(sec.text) + len(sec.title)
        out.append(sec)
    if len(out) > MAX_SECTIONS:
        raise ValueError(f"a report has at most {MAX_SECTIONS} sections")
    if total > MAX_TEXT:
        raise ValueError(f"a report has at most {MAX_TEXT} characters")
    return tuple(out)


def default_sections() -> tuple[Section, ...]:
    return tuple(Section(k, t, "") for k, t in DEFAULT_SECTIONS)


class Reports:
    """The reports of one archive (build one per archive: ``Reports(archive)``; it holds no state).

    ``endpoints``: names of the HIS endpoints that receive an ORU^R01 of each
    signed report; ``mdm_endpoints``: those that receive an MDM^T02 with the
    PDF; ``institution``: the Verifying Organization of a signed SR and the PDF's
    header.  Left None (the default) they are read from the ``hilum.toml`` of the
    archive's data folder (``[report] his`` / ``mdm`` / ``institution``, or
    ``[hl7] his_host`` as endpoint ``his``: :func:`endpoints_of`) when first needed;
    :meth:`from_config` takes them from a loaded config.
    ``users``: the store whose passwords signing checks (default: the archive's).
    ``store_dicom``: False stores no SR/PDF (tests of the state machine alone).
    """

    def __init__(
        self,
        archive: Archive,
        *,
        endpoints: Sequence[str] | None = None,
        mdm_endpoints: Sequence[str] | None = None,
        institution: str | None = None,
        users: UserStore | None = None,
        store_dicom: bool = True,
    ):
        self.archive = archive
        self._endpoints = None if endpoints is None else tuple(endpoints)
        self._mdm_endpoints = None if mdm_endpoints is None else tuple(mdm_endpoints)
        self._institution = institution
        self.users = users or UserStore.of(archive)
        self.store_dicom_copies = store_dicom

    @classmethod
    def from_config(cls, archive: Archive, config: Any, **kwargs: Any) -> Reports:
        """Reports with the endpoints of ``config`` (:func:`endpoints_of`) and ``[report] institution``."""
        oru, mdm = endpoints_of(config)
        section = (getattr(config, "extra", None) or {}).get("report", {}) or {}
        return cls(
            archive,
            endpoints=[e.name for e in oru],
            mdm_endpoints=[e.name for e in mdm],
            institution=str(section.get("institution", "")),
            **kwargs,
        )

    def _configure(self) -> None:
        """Fill what was left None from the data folder's ``hilum.toml``."""
        oru: list[str] = []
        mdm: list[str] = []
        institution = ""
        try:
            from hilum.config import load_config

            cfg = load_config(self.archive.data_dir)
            found = endpoints_of(cfg)
            oru, mdm = [e.name for e in found[0]], [e.name for e in found[1]]
            institution = str(((cfg.extra or {}).get("report", {}) or {}).get("institution", ""))
        except (HilumError, ValueError, OSError) as exc:
            log.error("the [report] settings of hilum.toml are unusable (%s): signed reports go to no HIS", exc)
        if self._endpoints is None:
            self._endpoints = tuple(oru)
        if self._mdm_endpoints is None:
            self._mdm_endpoints = tuple(mdm)
        if self._institution is None:
            self._institution = institution

    @property
    def endpoints(self) -> tuple[str, ...]:
        if self._endpoints is None:
            self._configure()
        return self._endpoints or ()

    @property
    def mdm_endpoints(self) -> tuple[str, ...]:
        if self._mdm_endpoints is None:
            self._configure()
        return self._mdm_endpoints or ()

    @property
    def institution(self) -> str:
        if self._institution is None:
            self._configure()
        return self._institution or ""

    # ------------------------------------------------------------------ helpers

    @contextmanager
    def _tx(self) -> Iterator[tuple[Connection, list[Any]]]:
        """The archive's write transaction and a list of events to publish once it committed."""
        events: list[Any] = []
        with self.archive.transaction() as conn:
            yield conn, events
        for ev in events:
            self.archive.events.publish(ev)

    def _row(self, conn: Connection, report_id: str) -> Any:
        row = conn.execute(select(reports).where(reports.c.report_id == report_id)).mappings().first()
        if row is None:
            raise ReportNotFound(f"no report {report_id!r}")
        return row

    def _study(self, study_uid: str) -> dict[str, Any]:
        rows = self.archive.query("STUDY", {"StudyInstanceUID": study_uid})
        if not rows:
            raise ReportError(f"study {study_uid} is not in the archive")
        return rows[0]

    def _to_report(self, conn: Connection, row: Any, study: Mapping[str, Any] | None = None) -> Report:
        try:
            raw = json.loads(row["text"] or "[]")
            sections = parse_sections(raw if isinstance(raw, list) else [])
        except (ValueError, TypeError):
            log.warning("report %s: its sections do not parse; shown empty", row["report_id"])
            sections = ()
        parent_id = ""
        if row["parent_fk"] is not None:
            parent_id = conn.execute(select(reports.c.report_id).where(reports.c.pk == row["parent_fk"])).scalar() or ""
        if study is None:
            found = self.archive.query("STUDY", {"StudyInstanceUID": row["study_uid"]})
            study = found[0] if found else {}
        return Report(
            pk=row["pk"],
            report_id=row["report_id"],
            study_uid=row["study_uid"],
            accession_number=row["accession_number"],
            patient_id=row["patient_id"],
            order_fk=row["order_fk"],
            template=row["template"],
            state=row["state"],
            sections=sections,
            created_by=row["created_by"],
            created_at=_aware(row["created_at"]) or _now(),
            updated_at=_aware(row["updated_at"]) or _now(),
            signed_by=row["signed_by"],
            signed_at=_aware(row["signed_at"]),
            parent_fk=row["parent_fk"],
            parent_id=parent_id,
            sr_sop_uid=row["sr_sop_uid"],
            pdf_sop_uid=row["pdf_sop_uid"],
            version=row["version"],
            patient_name=str(study.get("PatientName", "") or ""),
            patient_birth_date=str(study.get("PatientBirthDate", "") or ""),
            patient_sex=str(study.get("PatientSex", "") or ""),
            study_date=str(study.get("StudyDate", "") or ""),
            study_description=str(study.get("StudyDescription", "") or ""),
        )

    def _reports(self, where: Any, order: Any) -> list[Report]:
        with self.archive.engine.connect() as conn:
            rows = conn.execute(select(reports).where(where).order_by(*order)).mappings().all()
            studies: dict[str, dict[str, Any]] = {}
            out = []
            for r in rows:
                if r["study_uid"] not in studies:
                    found = self.archive.query("STUDY", {"StudyInstanceUID": r["study_uid"]})
                    studies[r["study_uid"]] = found[0] if found else {}
                out.append(self._to_report(conn, r, studies[r["study_uid"]]))
        return out

    @staticmethod
    def _event(conn: Connection, pk: int, user: str, from_state: str, to_state: str, detail: str = "") -> None:
        conn.execute(
            insert(report_events).values(
                report_fk=pk, at=_now(), user=user, from_state=from_state, to_state=to_state, detail=detail[:2000]
            )
        )

    @staticmethod
    def _check_user(user: str) -> str:
        if not isinstance(user, str) or not user.strip() or len(user) > 64:
            raise ValueError("give the user's name (1 to 64 characters)")
        return user.strip()

    def _order_pk(self, conn: Connection, order: str | int | None, study: Mapping[str, Any]) -> tuple[int | None, str]:
        """(order pk, accession number) for a new report."""
        accession = str(study.get("AccessionNumber", "") or "")
        if isinstance(order, int) and not isinstance(order, bool):
            row = conn.execute(select(orders.c.pk, orders.c.accession_number).where(orders.c.pk == order)).first()
            if row is None:
                raise ReportError(f"no order {order}")
            return row.pk, row.accession_number or accession
        if isinstance(order, str) and order:
            row = conn.execute(
                select(orders.c.pk).where(orders.c.accession_number == order).order_by(orders.c.pk.desc()).limit(1)
            ).first()
            return (row.pk if row else None), order
        conds = [
            orders.c.study_uid == study["StudyInstanceUID"],
            orders.c.performed_study_uid == study["StudyInstanceUID"],
        ]
        if accession:
            conds.append(orders.c.accession_number == accession)
        row = conn.execute(
            select(orders.c.pk, orders.c.accession_number).where(or_(*conds)).order_by(orders.c.pk.desc()).limit(1)
        ).first()
        if row is None:
            return None, accession
        return row.pk, accession or row.accession_number

    # ------------------------------------------------------------------ life of a report

    def create(
        self,
        study_uid: str,
        *,
        user: str,
        template: str = "generic",
        order: str | int | None = None,
        sections: SectionsLike | None = None,
    ) -> Report:
        """A new draft for a study.  ``order``: an accession number (str) or order pk (int); None takes
        the study's order (by Study Instance UID or accession number), if any.  ``sections`` default to
        :data:`DEFAULT_SECTIONS`, empty."""
        user = self._check_user(user)
        secs = parse_sections(sections) if sections is not None else default_sections()
        study = self._study(study_uid)
        report_id = str(uuid.uuid4())
        now = _now()
        with self._tx() as (conn, events):
            order_pk, accession = self._order_pk(conn, order, study)
            pk = conn.execute(
                insert(reports).values(
                    report_id=report_id,
                    study_uid=study_uid,
                    accession_number=accession[:16],
                    patient_id=str(study.get("PatientID", "") or ""),
                    order_fk=order_pk,
                    template=template[:64],
                    state=DRAFT,
                    text=json.dumps([s.as_dict() for s in secs], ensure_ascii=False),
                    created_by=user,
                    created_at=now,
                    updated_at=now,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            self._event(conn, pk, user, "", DRAFT, f"created from template {template}")
            events.append(ReportChanged(report_id, study_uid, DRAFT, "created"))
            return self._to_report(conn, self._row(conn, report_id), study)

    def save(self, report_id: str, sections: SectionsLike, *, user: str) -> Report:
        """Autosave: replace the sections of a draft or preliminary report (raises :class:`ReportLocked`
        once signed).  No event row (saving is not a state change); ``updated_at`` moves."""
        user = self._check_user(user)
        secs = parse_sections(sections)
        with self._tx() as (conn, events):
            row = self._row(conn, report_id)
            if row["state"] in LOCKED_STATES:
                raise ReportLocked(
                    f"the report is {row['state']} (signed by {row['signed_by']}): it cannot change; write an addendum"
                )
            conn.execute(
                update(reports)
                .where(reports.c.pk == row["pk"])
                .values(text=json.dumps([s.as_dict() for s in secs], ensure_ascii=False), updated_at=_now())
            )
            events.append(ReportChanged(report_id, row["study_uid"], row["state"], "saved"))
            return self._to_report(conn, self._row(conn, report_id))

    def set_preliminary(self, report_id: str, *, user: str) -> Report:
        """draft → preliminary; stores an SR (PARTIAL/UNVERIFIED) and a PDF marked preliminary."""
        user = self._check_user(user)
        with self._tx() as (conn, events):
            row = self._row(conn, report_id)
            if row["state"] in LOCKED_STATES:
                raise ReportLocked(f"the report is {row['state']}: it cannot become preliminary")
            if row["state"] == PRELIMINARY:
                raise ReportError("the report is preliminary already")
            conn.execute(update(reports).where(reports.c.pk == row["pk"]).values(state=PRELIMINARY, updated_at=_now()))
            self._event(conn, row["pk"], user, row["state"], PRELIMINARY)
            events.append(ReportChanged(report_id, row["study_uid"], PRELIMINARY, "preliminary"))
        self._store_copies(report_id, author=user)
        return self.get(report_id)

    def check_signer(self, user: str, password: str) -> None:
        """Raise :class:`SignRefused` unless ``user`` exists, has the password and the radiologist role."""
        try:
            who = self.users.authenticate(user, password)
        except LoginBusy as exc:
            raise SignRefused(f"the password could not be checked now ({exc}): try again") from exc
        if who is None:
            raise SignRefused(f"unknown user or wrong password for {user!r}: the report was not signed")
        if who.role != RADIOLOGIST:
            raise SignRefused(f"user {user!r} has the role {who.role}: only a radiologist may sign a report")

    def sign(self, report_id: str, *, user: str, password: str) -> Report:
        """Sign: draft/preliminary → final (or amended for an addendum).  The user must exist, have the
        ``radiologist`` role and give the right password (:class:`SignRefused` otherwise).  Stores the SR
        (COMPLETE/VERIFIED, Verifying Observer) and the PDF, queues the HL7 messages, completes the order."""
        user = self._check_user(user)
        with self.archive.engine.connect() as conn:
            row = self._row(conn, report_id)
        if row["state"] in LOCKED_STATES:
            raise ReportLocked(f"the report is {row['state']} already (signed by {row['signed_by']})")
        self.check_signer(user, password)
        order_events: list[OrderEvent] = []
        with self._tx() as (conn, events):
            row = self._row(conn, report_id)  # again, inside the writer's lock: nobody signed meanwhile
            if row["state"] in LOCKED_STATES:
                raise ReportLocked(f"the report is {row['state']} already (signed by {row['signed_by']})")
            new = AMENDED if row["parent_fk"] is not None else FINAL
            now = _now()
            conn.execute(
                update(reports)
                .where(reports.c.pk == row["pk"])
                .values(state=new, signed_by=user, signed_at=now, updated_at=now)
            )
            self._event(conn, row["pk"], user, row["state"], new, "signed")
            for kind, names in ((ORU, self.endpoints), (MDM, self.mdm_endpoints)):
                for name in names:
                    pk = conn.execute(
                        insert(hl7_outbox).values(
                            kind=kind,
                            report_fk=row["pk"],
                            endpoint=name,
                            message=b"",
                            state="pending",
                            attempts=0,
                            next_try_at=now,
                            created_at=now,
                        )
                    ).inserted_primary_key[0]  # type: ignore[index]
                    events.append(OutboxChanged(pk, report_id, name, kind, "pending"))
            if row["order_fk"] is not None:
                self._complete_order(conn, row["order_fk"], order_events)
            events.append(ReportChanged(report_id, row["study_uid"], new, "signed"))
        for ev in order_events:
            self.archive.events.publish(ev)
        self._store_copies(report_id, author=row["created_by"])
        return self.get(report_id)

    def _complete_order(self, conn: Connection, order_pk: int, order_events: list[OrderEvent]) -> None:
        status = conn.execute(select(orders.c.status).where(orders.c.pk == order_pk)).scalar()
        if status is None or status in ORDER_FINAL:
            return
        # the steps not finished yet (a discontinued step stays discontinued): set_status cannot refuse them
        open_steps = (
            conn.execute(
                select(procedure_steps.c.pk).where(
                    procedure_steps.c.order_fk == order_pk, procedure_steps.c.status.not_in(list(ORDER_FINAL))
                )
            )
            .scalars()
            .all()
        )
        if not open_steps:
            return
        try:
            OrderTx(OrderBook(self.archive), conn, order_events).set_status(order_pk, COMPLETED, step_pks=open_steps)
        except OrderError as exc:  # cannot happen for open steps; never let it undo the signature
            log.warning("order %s stays %s after signing: %s", order_pk, status, exc)

    def addendum(self, report_id: str, *, user: str) -> Report:
        """A new draft amending a signed report (one empty "Addendum" section); the original is untouched.
        Only the newest signed version of a chain can be amended, and only one addendum at a time is open."""
        user = self._check_user(user)
        with self._tx() as (conn, events):
            row = self._row(conn, report_id)
            if row["state"] not in LOCKED_STATES:
                raise ReportError("only a signed report takes an addendum: edit this one instead")
            child = conn.execute(
                select(reports.c.report_id, reports.c.state).where(reports.c.parent_fk == row["pk"])
            ).first()
            if child is not None:
                if child.state in LOCKED_STATES:
                    raise ReportError(f"the report has a newer version {child.report_id}: amend that one")
                raise ReportError(f"an addendum {child.report_id} is open already: finish it first")
            new_id = str(uuid.uuid4())
            now = _now()
            secs = (Section("addendum", "Addendum", ""),)
            pk = conn.execute(
                insert(reports).values(
                    report_id=new_id,
                    study_uid=row["study_uid"],
                    accession_number=row["accession_number"],
                    patient_id=row["patient_id"],
                    order_fk=row["order_fk"],
                    template=row["template"],
                    state=DRAFT,
                    text=json.dumps([s.as_dict() for s in secs]),
                    created_by=user,
                    created_at=now,
                    updated_at=now,
                    parent_fk=row["pk"],
                    version=row["version"] + 1,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            self._event(conn, pk, user, "", DRAFT, f"addendum to {report_id}")
            events.append(ReportChanged(new_id, row["study_uid"], DRAFT, "addendum"))
            return self._to_report(conn, self._row(conn, new_id))

    # ------------------------------------------------------------------ DICOM copies

    def _header(self, row: Mapping[str, Any]) -> Dataset:
        data = self.archive.read_outgoing(row)
        return pydicom.dcmread(BytesIO(data), stop_before_pixels=True, force=True)

    def _ref(self, base: Dataset, row: Mapping[str, Any]) -> Dataset:
        """A header for highdicom's evidence: the study's patient/study modules + this instance's UIDs."""
        ds = Dataset()
        for el in base:
            if el.tag.group in (0x0008, 0x0010, 0x0020) and el.keyword in (
                "SpecificCharacterSet",
                "PatientName",
                "PatientID",
                "PatientBirthDate",
                "PatientSex",
                "IssuerOfPatientID",
                "StudyInstanceUID",
                "StudyDate",
                "StudyTime",
                "AccessionNumber",
                "StudyID",
                "ReferringPhysicianName",
                "StudyDescription",
            ):
                ds.add(el)
        ds.SOPClassUID = row["SOPClassUID"]
        ds.SOPInstanceUID = row["SOPInstanceUID"]
        ds.SeriesInstanceUID = row["SeriesInstanceUID"]
        ds.Modality = row.get("Modality") or "OT"
        return ds

    def store_dicom(self, report_id: str) -> Report:
        """Store (again) the SR and PDF of a preliminary or signed report (e.g. after an ingest failure)."""
        report = self.get(report_id)
        if report.state == DRAFT:
            raise ReportError("a draft is not stored as DICOM: make it preliminary or sign it")
        self._store_copies(report_id, author=report.created_by)
        return self.get(report_id)

    def _store_copies(self, report_id: str, *, author: str) -> None:
        if not self.store_dicom_copies:
            return
        try:
            self._store_copies_now(report_id, author)
        except Exception as exc:  # the report's state is committed; its DICOM copy can be stored again
            log.exception("report %s: storing its SR/PDF failed", report_id)
            with self._tx() as (conn, _events):
                row = self._row(conn, report_id)
                self._event(
                    conn, row["pk"], author, row["state"], row["state"], f"storing the DICOM copies failed: {exc}"
                )

    def _store_copies_now(self, report_id: str, author: str) -> None:
        from hilum.dicom.report_pdf import make_encapsulated_pdf, make_report_pdf
        from hilum.dicom.report_sr import make_report_sr

        report = self.get(report_id)
        sr_series, pdf_series = report_series_uids(report.study_uid)
        rows = self.archive.instances(study_uid=report.study_uid)
        by_uid = {r["SOPInstanceUID"]: r for r in rows}
        ours = {sr_series, pdf_series}
        source = next(
            (
                r
                for r in rows
                if r["SeriesInstanceUID"] not in ours
                and r["SOPClassUID"] not in SR_CLASSES
                and r["SOPClassUID"] != KOS_CLASS
            ),
            None,
        )
        source = source or next((r for r in rows if r["SeriesInstanceUID"] not in ours), None)
        if source is None:
            raise ReportError(f"study {report.study_uid} has no instance to take the patient from")
        header = self._header(source)
        keys: list[Dataset] = []
        measurements: list[Dataset] = []
        from hilum.dicom.sr import read_kos

        for r in rows:
            if r["SeriesInstanceUID"] in ours:
                continue
            if r["SOPClassUID"] == KOS_CLASS:
                try:
                    kos = self._header(r)
                    for k in read_kos(kos):
                        ref = by_uid.get(k.sop_instance_uid)
                        if ref is not None and all(str(d.SOPInstanceUID) != k.sop_instance_uid for d in keys):
                            keys.append(self._ref(header, ref))
                except (InvalidDicomError, ValueError, AttributeError, KeyError) as exc:
                    log.warning("key object %s unreadable: %s", r["SOPInstanceUID"], exc)
            elif r["SOPClassUID"] in SR_CLASSES:
                measurements.append(self._ref(header, r))
        predecessors: list[Dataset] = []
        if report.sr_sop_uid and report.sr_sop_uid in by_uid:
            predecessors.append(self._ref(header, by_uid[report.sr_sop_uid]))
        if report.parent_id:
            parent = self.get(report.parent_id)
            if parent.sr_sop_uid and parent.sr_sop_uid in by_uid:
                predecessors.append(self._ref(header, by_uid[parent.sr_sop_uid]))
        signed = report.locked
        sections = [(s.key, s.title, s.text) for s in report.sections]
        number = sum(1 for r in rows if r["SeriesInstanceUID"] == sr_series) + 1
        when = datetime.now()
        label = "Report" + (f" addendum {report.version - 1}" if report.parent_id else "")
        sr = make_report_sr(
            header,
            sections,
            author=author,
            series_uid=sr_series,
            sop_instance_uid=generate_uid(),
            instance_number=number,
            series_number=REPORT_SR_SERIES_NUMBER,
            signed=signed,
            verifier=report.signed_by if signed else "",
            organization=self.institution or "Unknown",
            institution=self.institution,
            key_images=keys,
            measurement_srs=measurements,
            predecessors=predecessors,
            description=label,
            when=when,
        )
        pdf = make_report_pdf(
            header,
            sections,
            signed_by=report.signed_by if signed else "",
            signed_at=report.signed_at,
            preliminary=not signed,
            author=author,
            institution=self.institution,
            addendum_of=report.parent_id,
        )
        number_pdf = sum(1 for r in rows if r["SeriesInstanceUID"] == pdf_series) + 1
        doc = make_encapsulated_pdf(
            header,
            pdf,
            series_uid=pdf_series,
            sop_instance_uid=generate_uid(),
            instance_number=number_pdf,
            series_number=REPORT_PDF_SERIES_NUMBER,
            description=label + " (PDF)",
            when=when,
            institution=self.institution,
        )
        results = [self.archive.ingest(sr, origin="report"), self.archive.ingest(doc, origin="report")]
        bad = [r for r in results if not r.ok]
        if bad:
            raise ReportError(f"the archive refused the report's DICOM copy: {bad[0].reason}")
        with self._tx() as (conn, events):
            conn.execute(
                update(reports)
                .where(reports.c.report_id == report_id)
                .values(sr_sop_uid=str(sr.SOPInstanceUID), pdf_sop_uid=str(doc.SOPInstanceUID))
            )
            events.append(ReportChanged(report_id, report.study_uid, report.state, "stored"))

    # ------------------------------------------------------------------ queries

    def get(self, report_id: str) -> Report:
        """The report (raises :class:`ReportNotFound`)."""
        with self.archive.engine.connect() as conn:
            return self._to_report(conn, self._row(conn, report_id))

    def for_study(self, study_uid: str) -> list[Report]:
        """The reports of a study, oldest first (originals and addenda)."""
        return self._reports(reports.c.study_uid == study_uid, (reports.c.created_at, reports.c.pk))

    def priors(self, patient_id: str, before: datetime | str | None = None, *, exclude_study: str = "") -> list[Report]:
        """Signed reports of a patient, newest first; ``before``: only those of studies before that date
        (a datetime, or a DICOM date YYYYMMDD compared with the study date)."""
        out = self._reports(
            and_(reports.c.patient_id == patient_id, reports.c.state.in_(list(LOCKED_STATES))),
            (reports.c.signed_at.desc(), reports.c.pk.desc()),
        )
        if exclude_study:
            out = [r for r in out if r.study_uid != exclude_study]
        if before is not None:
            limit = before.strftime("%Y%m%d") if isinstance(before, datetime) else str(before)[:8]
            out = [r for r in out if (r.study_date or (r.signed_at.strftime("%Y%m%d") if r.signed_at else "")) < limit]
        return out

    def get_many(self, report_ids: Iterable[str]) -> dict[str, Report]:
        """Several reports by id (missing ones left out), reading each study's demographics once."""
        ids = list(dict.fromkeys(report_ids))
        return {r.report_id: r for r in self._reports(reports.c.report_id.in_(ids), (reports.c.pk,))} if ids else {}

    def search(self, *, study_uid: str = "", patient_id: str = "", state: str = "", limit: int = 200) -> list[Report]:
        """Reports, newest first, filtered by study, patient and state (for ``hilum report list``)."""
        conds = [reports.c.pk > 0]
        if study_uid:
            conds.append(reports.c.study_uid == study_uid)
        if patient_id:
            conds.append(reports.c.patient_id == patient_id)
        if state:
            if state not in STATES:
                raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
            conds.append(reports.c.state == state)
        return self._reports(and_(*conds), (reports.c.updated_at.desc(), reports.c.pk.desc()))[: max(1, limit)]

    def status_of(self, study_uids: Iterable[str]) -> dict[str, str]:
        """The report status of each study (for the worklist): the state of its newest report, or absent."""
        uids = list(dict.fromkeys(study_uids))
        out: dict[str, str] = {}
        with self.archive.engine.connect() as conn:
            for i in range(0, len(uids), 500):
                chunk = uids[i : i + 500]
                rows = conn.execute(
                    select(reports.c.study_uid, reports.c.state)
                    .where(reports.c.study_uid.in_(chunk))
                    .order_by(reports.c.version, reports.c.pk)
                ).all()
                for r in rows:
                    out[r.study_uid] = r.state
        return out

    def events(self, report_id: str) -> list[ReportEvent]:
        """The state changes of a report, oldest first."""
        with self.archive.engine.connect() as conn:
            row = self._row(conn, report_id)
            rows = (
                conn.execute(
                    select(report_events).where(report_events.c.report_fk == row["pk"]).order_by(report_events.c.pk)
                )
                .mappings()
                .all()
            )
        return [
            ReportEvent(
                r["pk"], report_id, _aware(r["at"]) or _now(), r["user"], r["from_state"], r["to_state"], r["detail"]
            )
            for r in rows
        ]

    def outbox(self, *, states: Iterable[str] | None = None, report_id: str | None = None) -> list[OutboxMessage]:
        """The HL7 outbox, newest first (optionally filtered)."""
        return Outbox(self.archive).list(states=states, report_id=report_id)


# ---------------------------------------------------------------------------------------------- outbox


@dataclass(frozen=True)
class Endpoint:
    """A HIS endpoint of ``[report] his`` (or ``[hl7] his_host``/``his_port`` as ``his``)."""

    name: str
    host: str
    port: int
    timeout: float = 10.0
    application: str = ""
    facility: str = ""


def endpoints_of(config: Any) -> tuple[list[Endpoint], list[Endpoint]]:
    """The (ORU, MDM) endpoints of a config: ``[report] his = [{name, host, port, timeout?, application?,
    facility?}]`` and ``[report] mdm = [...]``; without ``[report] his``, ``[hl7] his_host``/``his_port``
    as one endpoint named ``his``.  Raises ValueError on a malformed entry."""
    extra = getattr(config, "extra", None) or {}
    section = extra.get("report", {}) or {}

    def parse(items: Any, what: str) -> list[Endpoint]:
        if not isinstance(items, list):
            raise ValueError(f"[report] {what} must be a list of {{name, host, port}} tables")
        out: list[Endpoint] = []
        for i, it in enumerate(items):
            if not isinstance(it, Mapping):
                raise ValueError(f"[report] {what}[{i}] must be a table {{name, host, port}}")
            name, host, port = it.get("name"), it.get("host"), it.get("port")
            if not isinstance(name, str) or not name or len(name) > 64:
                raise ValueError(f"[report] {what}[{i}].name must be a name of 1 to 64 characters")
            if not isinstance(host, str) or not host:
                raise ValueError(f"[report] {what}[{i}].host must be a host name or address")
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"[report] {what}[{i}].port must be a port number")
            if any(e.name == name for e in out):
                raise ValueError(f"[report] {what}: the name {name!r} appears twice")
            out.append(
                Endpoint(
                    name,
                    host,
                    port,
                    float(it.get("timeout", 10.0)),
                    str(it.get("application", "")),
                    str(it.get("facility", "")),
                )
            )
        return out

    if "his" in section:
        oru = parse(section["his"], "his")
    else:
        hl7 = extra.get("hl7", {}) or {}
        host, port = hl7.get("his_host"), hl7.get("his_port")
        oru = (
            [
                Endpoint(
                    "his",
                    str(host),
                    int(port),
                    application=str(hl7.get("his_application", "")),
                    facility=str(hl7.get("his_facility", "")),
                )
            ]
            if host and port
            else []
        )
    mdm = parse(section.get("mdm", []), "mdm")
    return oru, mdm


def _message(row: Any, report_id: str) -> OutboxMessage:
    return OutboxMessage(
        pk=row["pk"],
        kind=row["kind"],
        report_id=report_id,
        endpoint=row["endpoint"],
        state=row["state"],
        attempts=row["attempts"],
        next_try_at=_aware(row["next_try_at"]),
        last_error=row["last_error"],
        ack_code=row["ack_code"],
        ack_text=row["ack_text"],
        created_at=_aware(row["created_at"]) or _now(),
        sent_at=_aware(row["sent_at"]),
        message=bytes(row["message"] or b""),
    )


class Outbox:
    """The ``hl7_outbox`` table: what :mod:`hilum.hl7.outbox` sends, and its bookkeeping (SQL stays here).

    Delivery: a sender :meth:`claim` s a due message (its ``next_try_at`` moves a lease ahead, compare-and-set,
    so two processes on one index never send it at once), fixes its bytes once (:meth:`set_message`: a resend is
    the same message with the same MSH-10 control ID, so a receiver can drop a duplicate), sends, and records
    the outcome (:meth:`sent`, :meth:`stopped`, :meth:`retry_later`).  A message ACKed AA/CA is ``sent`` and
    never selected again.  The one window left is a crash after the peer's ACK and before :meth:`sent` commits:
    the same message (same control ID) goes again after the lease.
    """

    LEASE = timedelta(seconds=60)

    def __init__(self, archive: Archive):
        self.archive = archive

    def _publish(self, ev: OutboxChanged) -> None:
        self.archive.events.publish(ev)

    def list(
        self, *, states: Iterable[str] | None = None, report_id: str | None = None, limit: int | None = None
    ) -> list[OutboxMessage]:
        q = select(hl7_outbox, reports.c.report_id.label("rid")).select_from(
            hl7_outbox.join(reports, hl7_outbox.c.report_fk == reports.c.pk)
        )
        if states is not None:
            q = q.where(hl7_outbox.c.state.in_(list(states)))
        if report_id is not None:
            q = q.where(reports.c.report_id == report_id)
        q = q.order_by(hl7_outbox.c.pk.desc())
        if limit:
            q = q.limit(limit)
        with self.archive.engine.connect() as conn:
            return [_message(r, r["rid"]) for r in conn.execute(q).mappings().all()]

    def get(self, pk: int) -> OutboxMessage:
        with self.archive.engine.connect() as conn:
            r = (
                conn.execute(
                    select(hl7_outbox, reports.c.report_id.label("rid"))
                    .select_from(hl7_outbox.join(reports, hl7_outbox.c.report_fk == reports.c.pk))
                    .where(hl7_outbox.c.pk == pk)
                )
                .mappings()
                .first()
            )
        if r is None:
            raise ReportError(f"no outbox message {pk}")
        return _message(r, r["rid"])

    def counts(self) -> dict[str, int]:
        with self.archive.engine.connect() as conn:
            return {
                s: n
                for s, n in conn.execute(select(hl7_outbox.c.state, func.count()).group_by(hl7_outbox.c.state)).all()
            }

    def next_due(self, endpoints: Iterable[str] | None = None) -> datetime | None:
        """When the earliest pending message is due (None: nothing pending)."""
        q = select(func.min(hl7_outbox.c.next_try_at)).where(hl7_outbox.c.state == "pending")
        if endpoints is not None:
            q = q.where(hl7_outbox.c.endpoint.in_(list(endpoints)))
        with self.archive.engine.connect() as conn:
            return _aware(conn.execute(q).scalar())

    def claim(
        self, endpoints: Iterable[str], *, limit: int = 50, now: datetime | None = None
    ) -> builtins.list[OutboxMessage]:
        """Due pending messages of these endpoints, oldest first, each leased to the caller for :attr:`LEASE`
        (attempts counted).  ``kind`` MDM waits for the report's PDF."""
        now = now or _now()
        names = list(endpoints)
        if not names:
            return []
        out: builtins.list[OutboxMessage] = []
        with self.archive.transaction() as conn:
            rows = (
                conn.execute(
                    select(hl7_outbox, reports.c.report_id.label("rid"), reports.c.pdf_sop_uid)
                    .select_from(hl7_outbox.join(reports, hl7_outbox.c.report_fk == reports.c.pk))
                    .where(
                        hl7_outbox.c.state == "pending",
                        hl7_outbox.c.endpoint.in_(names),
                        hl7_outbox.c.next_try_at <= now,
                    )
                    .order_by(hl7_outbox.c.pk)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
            wanted = {r["pk"]: r for r in rows if r["kind"] != MDM or r["pdf_sop_uid"]}
            if not wanted:
                return out
            # One statement for the lot; its WHERE is evaluated again under the row locks (PostgreSQL, READ
            # COMMITTED), so a row another node claimed meanwhile (next_try_at moved ahead) is not taken twice.
            lease = now + self.LEASE + timedelta(microseconds=uuid.uuid4().int % 1000)  # this claim's own mark
            conn.execute(
                update(hl7_outbox)
                .where(
                    hl7_outbox.c.pk.in_(list(wanted)),
                    hl7_outbox.c.state == "pending",
                    hl7_outbox.c.next_try_at <= now,
                )
                .values(next_try_at=lease, attempts=hl7_outbox.c.attempts + 1)
            )
            got = conn.execute(
                select(hl7_outbox.c.pk).where(hl7_outbox.c.pk.in_(list(wanted)), hl7_outbox.c.next_try_at == lease)
            ).scalars()
            for pk in sorted(got):
                d = dict(wanted[pk])
                d["next_try_at"], d["attempts"] = lease, wanted[pk]["attempts"] + 1
                out.append(_message(d, wanted[pk]["rid"]))
        return out

    def set_message(self, pk: int, message: bytes) -> bytes:
        """Fix the bytes of a message once; returns the bytes now stored (an earlier composition wins)."""
        return self.set_messages({pk: message})[pk]

    def set_messages(self, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """:meth:`set_message` for several messages in one transaction."""
        out: dict[int, bytes] = {}
        if not messages:
            return out
        with self.archive.transaction() as conn:
            stored = dict(
                conn.execute(
                    select(hl7_outbox.c.pk, hl7_outbox.c.message).where(hl7_outbox.c.pk.in_(list(messages)))
                ).all()
            )
            fresh = []
            for pk, data in messages.items():
                cur = stored.get(pk)
                if cur:
                    out[pk] = bytes(cur)
                else:
                    fresh.append({"b_pk": pk, "b_message": data})
                    out[pk] = data
            if fresh:
                conn.execute(
                    update(hl7_outbox)
                    .where(hl7_outbox.c.pk == bindparam("b_pk"))
                    .values(message=bindparam("b_message")),
                    fresh,
                )
        return out

    def sent(self, pk: int, ack_code: str, ack_text: str = "", *, message: OutboxMessage | None = None) -> None:
        """Record the acceptance (AA/CA) of a message: ``sent``, never selected again.  ``message``: the claimed
        row, to name it in the event without reading it again."""
        with self.archive.transaction() as conn:
            conn.execute(
                update(hl7_outbox)
                .where(hl7_outbox.c.pk == pk, hl7_outbox.c.state == "pending")
                .values(
                    state="sent",
                    ack_code=ack_code[:4],
                    ack_text=ack_text[:2000],
                    sent_at=_now(),
                    last_error="",
                    next_try_at=None,
                )
            )
        m = message or self.get(pk)
        self._publish(OutboxChanged(pk, m.report_id, m.endpoint, m.kind, "sent"))

    def sent_many(self, acks: Sequence[tuple[OutboxMessage, str, str]]) -> None:
        """:meth:`sent` for several messages ``(message, ack code, ack text)`` in one transaction (group commit)."""
        if not acks:
            return
        now = _now()
        stmt = (
            update(hl7_outbox)
            .where(hl7_outbox.c.pk == bindparam("b_pk"), hl7_outbox.c.state == "pending")
            .values(
                state="sent",
                ack_code=bindparam("b_code"),
                ack_text=bindparam("b_text"),
                sent_at=now,
                last_error="",
                next_try_at=None,
            )
        )
        with self.archive.transaction() as conn:
            conn.execute(stmt, [{"b_pk": m.pk, "b_code": code[:4], "b_text": text[:2000]} for m, code, text in acks])
        for m, _code, _text in acks:
            self._publish(OutboxChanged(m.pk, m.report_id, m.endpoint, m.kind, "sent"))

    def stopped(self, pk: int, ack_code: str, ack_text: str = "") -> None:
        """The receiver refused (AE: application error, AR: rejected): the message stops and alerts."""
        state = "failed-ar" if ack_code.upper().endswith("R") else "failed-ae"
        with self.archive.transaction() as conn:
            conn.execute(
                update(hl7_outbox)
                .where(hl7_outbox.c.pk == pk)
                .values(
                    state=state,
                    ack_code=ack_code[:4],
                    ack_text=ack_text[:2000],
                    next_try_at=None,
                    last_error=f"the receiver answered {ack_code}" + (f": {ack_text}" if ack_text else ""),
                )
            )
        m = self.get(pk)
        log.error("HL7 %s of report %s to %s stopped: %s", m.kind, m.report_id, m.endpoint, m.last_error)
        self._publish(OutboxChanged(pk, m.report_id, m.endpoint, m.kind, m.state, alert=True, detail=m.last_error))

    def retry_later(self, pk: int, error: str, at: datetime) -> None:
        with self.archive.transaction() as conn:
            conn.execute(
                update(hl7_outbox)
                .where(hl7_outbox.c.pk == pk, hl7_outbox.c.state == "pending")
                .values(last_error=error[:2000], next_try_at=at)
            )

    def retry(self, pk: int) -> OutboxMessage:
        """Send a stopped (or abandoned) message again now — by hand (``hilum report retry``)."""
        with self.archive.transaction() as conn:
            state = conn.execute(select(hl7_outbox.c.state).where(hl7_outbox.c.pk == pk)).scalar()
            if state is None:
                raise ReportError(f"no outbox message {pk}")
            if state == "sent":
                raise ReportError(f"outbox message {pk} was delivered already: it is not sent twice")
            conn.execute(
                update(hl7_outbox)
                .where(hl7_outbox.c.pk == pk)
                .values(state="pending", next_try_at=_now(), last_error="")
            )
        m = self.get(pk)
        self._publish(OutboxChanged(pk, m.report_id, m.endpoint, m.kind, m.state))
        return m

    def abandon(self, pk: int) -> OutboxMessage:
        with self.archive.transaction() as conn:
            n = conn.execute(
                update(hl7_outbox)
                .where(hl7_outbox.c.pk == pk, hl7_outbox.c.state != "sent")
                .values(state="abandoned", next_try_at=None)
            ).rowcount
        if not n:
            raise ReportError(f"outbox message {pk} does not exist or was delivered")
        m = self.get(pk)
        self._publish(OutboxChanged(pk, m.report_id, m.endpoint, m.kind, m.state))
        return m
