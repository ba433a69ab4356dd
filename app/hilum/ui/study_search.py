"""The study browser's logic, without Qt: search criteria → one archive query → rows.

The widget in :mod:`hilum.ui.study_browser` only binds this object (STYLE.md §3
"logic runs headless"), so tests and the command line can run exactly the
searches the browser runs.  All matching is the archive's one query engine
(PS3.4 C.2.2.2, see :mod:`hilum.dicom.matching`); this module only turns
what a user types into DICOM query values and query rows into display text.

Nothing here imports Qt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("CT", "MR", "CR", "DX", "US", "NM", "PT", "XA", "MG", "OT", "SR", "SEG")
"""The modality filter's choices (PS3.3 C.7.3.1.1.1 defined terms), besides "any"."""

DEFAULT_LIMIT = 2000
"""Rows fetched per search; a browser does not need more on screen (the total is still counted)."""


class QueryableArchive(Protocol):
    """The part of :class:`hilum.archive.Archive` the browser uses."""

    def query(
        self,
        level: str,
        identifier: Mapping[str, Any] | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        order_by: list[str] | None = None,
    ) -> list[dict[str, Any]]: ...

    def count(self, level: str, identifier: Mapping[str, Any] | None = None) -> int: ...


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def prefix_pattern(text: str) -> str:
    """What a user typed → a DICOM wildcard value matching it as a prefix.

    ``""`` stays universal; text that already holds ``*`` or ``?`` is taken
    as the user's own pattern (PS3.4 C.2.2.2.4); otherwise ``*`` is appended
    so typing the first letters finds the rest.
    """
    text = text.strip()
    if not text or _has_wildcard(text):
        return text
    return text + "*"


def name_pattern(text: str) -> str:
    """A person-name search value: ``"Müller, J"`` → ``"Müller^J*"``.

    PN components are separated by ``^`` (PS3.5 6.2.1); users type a comma
    the way names are usually written, so ``,`` becomes ``^``.  Case does not
    matter: the archive matches person names case-insensitively, and the
    local archive folds accents too (``muller`` finds Müller, ``Muller, H``
    finds ``Müller^Hans``: :mod:`hilum.archive.namefold`).
    """
    text = text.strip()
    if not text:
        return ""
    parts = [p.strip() for p in text.split(",")]
    return prefix_pattern("^".join(parts))


def _da(d: date) -> str:
    return d.strftime("%Y%m%d")


@dataclass(frozen=True)
class StudyCriteria:
    """What the browser's search fields hold; empty fields match everything."""

    patient_name: str = ""
    patient_id: str = ""
    date_from: date | None = None
    date_to: date | None = None
    modality: str = ""  # "" = any
    accession: str = ""

    def identifier(self) -> dict[str, str]:
        """The STUDY-level query identifier (keyword → DICOM query value)."""
        ident: dict[str, str] = {}
        if self.patient_name.strip():
            ident["PatientName"] = name_pattern(self.patient_name)
        if self.patient_id.strip():
            ident["PatientID"] = prefix_pattern(self.patient_id)
        if self.accession.strip():
            ident["AccessionNumber"] = prefix_pattern(self.accession)
        lo, hi = self.date_from, self.date_to
        if lo is not None and hi is not None and lo > hi:
            lo, hi = hi, lo
        if lo is not None or hi is not None:
            # A DA range, open-ended on a missing side (PS3.4 C.2.2.2.5.1).
            ident["StudyDate"] = f"{_da(lo) if lo else ''}-{_da(hi) if hi else ''}"
        if self.modality.strip():
            # Matched against every series of the study (ModalitiesInStudy, PS3.4 C.6.2.1.2).
            ident["ModalitiesInStudy"] = self.modality.strip().upper()
        return ident

    @property
    def empty(self) -> bool:
        return not self.identifier()


# ---------------------------------------------------------------- display text


def format_person_name(value: str | None) -> str:
    """A PN value as people read it: ``Müller^Jürgen`` → ``Müller, Jürgen``.

    Components (PS3.5 6.2.1.1) family^given^middle^prefix^suffix; component
    groups alphabetic=ideographic=phonetic (PS3.5 6.2.1.2).  The alphabetic
    group leads, an ideographic one follows in parentheses; when only the
    ideographic or phonetic group is present it is shown alone.
    """
    if not value:
        return ""
    groups = [g for g in str(value).split("=")]

    def one(group: str, comma: bool) -> str:
        comps = [c.strip() for c in group.split("^")] + [""] * 5
        family, given, middle, prefix, suffix = comps[:5]
        rest = " ".join(p for p in (given, middle) if p)
        if family and rest:
            text = f"{family}, {rest}" if comma else f"{family} {rest}"
        else:
            text = family or rest
        if prefix:
            text = f"{prefix} {text}".strip()
        if suffix:
            text = f"{text}, {suffix}" if text else suffix
        return text

    alphabetic = one(groups[0], comma=True)
    ideographic = one(groups[1], comma=False) if len(groups) > 1 else ""
    phonetic = one(groups[2], comma=False) if len(groups) > 2 else ""
    if alphabetic and ideographic:
        return f"{alphabetic} ({ideographic})"
    return alphabetic or ideographic or phonetic


def format_date(value: str | None) -> str:
    """DA ``YYYYMMDD`` → ``YYYY-MM-DD`` (ISO 8601); anything else as stored."""
    v = (value or "").strip()
    if len(v) == 8 and v.isdigit():
        return f"{v[:4]}-{v[4:6]}-{v[6:]}"
    return v


def format_time(value: str | None) -> str:
    """TM ``HHMMSS.FFFFFF`` → ``HH:MM``."""
    v = (value or "").strip()
    if len(v) >= 4 and v[:4].isdigit():
        return f"{v[:2]}:{v[2:4]}"
    return ""


def format_study_datetime(row: Mapping[str, Any]) -> str:
    d = format_date(row.get("StudyDate"))
    t = format_time(row.get("StudyTime"))
    return f"{d} {t}".strip() if d else ""


def format_modalities(value: str | None) -> str:
    """ModalitiesInStudy ``CT\\MR`` → ``CT, MR``."""
    return ", ".join(m for m in (value or "").split("\\") if m)


def format_size(n: int | float) -> str:
    """A byte count in decimal units (kB, MB, GB) with three significant figures."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(size)} B"
            return f"{size:.3g} {unit}" if size < 100 else f"{size:.0f} {unit}"
        size /= 1000
    return f"{size:.0f} TB"  # pragma: no cover - loop always returns


def _int(value: Any) -> int | str:
    if value in (None, ""):
        return ""
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


@dataclass(frozen=True)
class Column:
    """One column of a result table: title, how to show a row, what to sort by."""

    title: str
    sort_key: str | None  # keyword for the query's order_by; None = not sortable
    text: Callable[[Mapping[str, Any]], Any]
    align: Literal["left", "right", "center"] = "left"
    tooltip: str = ""


STUDY_COLUMNS: tuple[Column, ...] = (
    Column("Patient name", "PatientName", lambda r: format_person_name(r.get("PatientName"))),
    Column("Patient ID", "PatientID", lambda r: r.get("PatientID") or ""),
    Column("Birth date", "PatientBirthDate", lambda r: format_date(r.get("PatientBirthDate"))),
    Column("Sex", "PatientSex", lambda r: r.get("PatientSex") or "", "center"),
    Column("Study date", "StudyDate", format_study_datetime),
    Column("Description", "StudyDescription", lambda r: r.get("StudyDescription") or ""),
    Column("Modalities", "ModalitiesInStudy", lambda r: format_modalities(r.get("ModalitiesInStudy"))),
    Column("Accession", "AccessionNumber", lambda r: r.get("AccessionNumber") or ""),
    Column(
        "Series",
        "NumberOfStudyRelatedSeries",
        lambda r: _int(r.get("NumberOfStudyRelatedSeries")),
        "right",
        "Number of series in the study",
    ),
    Column(
        "Images",
        "NumberOfStudyRelatedInstances",
        lambda r: _int(r.get("NumberOfStudyRelatedInstances")),
        "right",
        "Number of instances in the study",
    ),
)
"""The study table's columns, left to right."""

SERIES_COLUMNS: tuple[Column, ...] = (
    Column("#", "SeriesNumber", lambda r: _int(r.get("SeriesNumber")), "right", "Series number"),
    Column("Modality", "Modality", lambda r: r.get("Modality") or "", "center"),
    Column("Series description", "SeriesDescription", lambda r: r.get("SeriesDescription") or ""),
    Column("Body part", "BodyPartExamined", lambda r: r.get("BodyPartExamined") or ""),
    Column(
        "Series date",
        "SeriesDate",
        lambda r: f"{format_date(r.get('SeriesDate'))} {format_time(r.get('SeriesTime'))}".strip(),
    ),
    Column(
        "Images",
        "NumberOfSeriesRelatedInstances",
        lambda r: _int(r.get("NumberOfSeriesRelatedInstances")),
        "right",
        "Number of instances in the series",
    ),
)
"""The series table's columns, left to right."""


def order_by_for(columns: tuple[Column, ...], column: int, descending: bool) -> list[str] | None:
    """The query's ``order_by`` for sorting by a table column (None: default order)."""
    if not 0 <= column < len(columns):
        return None
    key = columns[column].sort_key
    if key is None:
        return None
    extra = ["-StudyTime"] if key == "StudyDate" and descending else ["StudyTime"] if key == "StudyDate" else []
    return [f"-{key}" if descending else key, *extra]


@dataclass
class StudySearchResult:
    """One search's outcome: the rows shown, the total matching, and how long it took."""

    criteria: StudyCriteria
    order_by: list[str] | None
    rows: list[dict[str, Any]]
    total: int
    seconds: float
    error: str | None = None

    @property
    def truncated(self) -> bool:
        return self.total > len(self.rows)


@dataclass
class StudySearch:
    """Runs the browser's searches against an archive (any thread; the archive is thread-safe)."""

    archive: QueryableArchive
    limit: int = DEFAULT_LIMIT

    def studies(self, criteria: StudyCriteria, order_by: list[str] | None = None) -> StudySearchResult:
        """Studies matching ``criteria``, at most :attr:`limit`, newest first unless ``order_by``.

        A malformed value (the query engine raises ``ValueError``) gives an
        empty result with ``error`` set: a typing mistake in a search field
        is not a crash.
        """
        start = time.perf_counter()
        ident = criteria.identifier()
        # The local archive matches names as people type them ("muller" finds Müller); a remote
        # source is asked over the wire, where the standard's matching holds.
        fold: dict[str, Any] = {"fold_names": True} if getattr(self.archive, "folds_names", False) else {}
        try:
            rows = self.archive.query("STUDY", ident, limit=self.limit, order_by=order_by, **fold)
            total = len(rows) if len(rows) < self.limit else self.archive.count("STUDY", ident, **fold)
        except ValueError as exc:
            return StudySearchResult(criteria, order_by, [], 0, time.perf_counter() - start, error=str(exc))
        seconds = time.perf_counter() - start
        log.debug("study search %s: %d rows in %.1f ms", list(ident), len(rows), seconds * 1000)
        return StudySearchResult(criteria, order_by, rows, total, seconds)

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        """The series of one study, by series number."""
        return self.archive.query("SERIES", {"StudyInstanceUID": study_uid})
