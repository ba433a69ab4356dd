"""The one query engine: DICOM matching (``hilum.dicom.matching``) compiled to SQL.

C-FIND, QIDO-RS, the study browser and the CLI call :func:`run_query` through
:meth:`hilum.archive.Archive.query`; adapters only translate their wire
format to ``{keyword: value}`` and back.  Queries are relational: keys of
any level above the queried one filter too (PS3.4 C.4.1.2.1: an SCP may
support relational queries; hierarchical callers simply send fewer keys).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, String, and_, bindparam, exists, func, or_, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from hilum.archive.schema import instances, patients, series, studies
from hilum.dicom.matching import Matcher, Range, Single, UidList, Universal, Wildcard, parse_key

log = logging.getLogger(__name__)

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


@dataclass(frozen=True)
class Field:
    keyword: str
    column: Any  # a Column, or a scalar expression for computed attributes
    level: str
    kind: str = "text"  # text | int | pn | computed


P, ST, SE, I = patients.c, studies.c, series.c, instances.c  # noqa: E741 - the four index levels, as in the SQL

_st2 = studies.alias("st2")  # so the patient counters never correlate with an outer studies
_patient_studies = select(func.count()).where(_st2.c.patient_fk == P.pk).scalar_subquery()
_patient_series = select(func.coalesce(func.sum(_st2.c.num_series), 0)).where(_st2.c.patient_fk == P.pk).scalar_subquery()
_patient_instances = (
    select(func.coalesce(func.sum(_st2.c.num_instances), 0)).where(_st2.c.patient_fk == P.pk).scalar_subquery()
)

FIELDS: dict[str, Field] = {
    f.keyword: f
    for f in [
        Field("PatientName", P.patient_name, "PATIENT", "pn"),
        Field("PatientID", P.patient_id, "PATIENT"),
        Field("IssuerOfPatientID", P.issuer, "PATIENT"),
        Field("PatientBirthDate", P.birth_date, "PATIENT"),
        Field("PatientSex", P.sex, "PATIENT"),
        Field("NumberOfPatientRelatedStudies", _patient_studies, "PATIENT", "computed"),
        Field("NumberOfPatientRelatedSeries", _patient_series, "PATIENT", "computed"),
        Field("NumberOfPatientRelatedInstances", _patient_instances, "PATIENT", "computed"),
        Field("StudyInstanceUID", ST.study_uid, "STUDY"),
        Field("StudyDate", ST.study_date, "STUDY"),
        Field("StudyTime", ST.study_time, "STUDY"),
        Field("AccessionNumber", ST.accession_number, "STUDY"),
        Field("StudyID", ST.study_id, "STUDY"),
        Field("StudyDescription", ST.study_description, "STUDY"),
        Field("ReferringPhysicianName", ST.referring_physician, "STUDY", "pn"),
        Field("ModalitiesInStudy", ST.modalities, "STUDY", "computed"),
        Field("NumberOfStudyRelatedSeries", ST.num_series, "STUDY", "computed"),
        Field("NumberOfStudyRelatedInstances", ST.num_instances, "STUDY", "computed"),
        Field("SpecificCharacterSet", ST.specific_character_set, "STUDY", "computed"),
        Field("SeriesInstanceUID", SE.series_uid, "SERIES"),
        Field("Modality", SE.modality, "SERIES"),
        Field("SeriesNumber", SE.series_number, "SERIES", "int"),
        Field("SeriesDescription", SE.series_description, "SERIES"),
        Field("BodyPartExamined", SE.body_part, "SERIES"),
        Field("SeriesDate", SE.series_date, "SERIES"),
        Field("SeriesTime", SE.series_time, "SERIES"),
        Field("PerformedProcedureStepStartDate", SE.pps_start_date, "SERIES"),
        Field("PerformedProcedureStepStartTime", SE.pps_start_time, "SERIES"),
        Field("FrameOfReferenceUID", SE.frame_of_reference_uid, "SERIES"),
        Field("NumberOfSeriesRelatedInstances", SE.num_instances, "SERIES", "computed"),
        Field("SOPInstanceUID", I.sop_uid, "IMAGE"),
        Field("SOPClassUID", I.sop_class_uid, "IMAGE"),
        Field("InstanceNumber", I.instance_number, "IMAGE", "int"),
        Field("NumberOfFrames", I.number_of_frames, "IMAGE", "int"),
        Field("Rows", I.rows, "IMAGE", "int"),
        Field("Columns", I.columns, "IMAGE", "int"),
        Field("ContentDate", I.content_date, "IMAGE"),
        Field("ContentTime", I.content_time, "IMAGE"),
        Field("TransferSyntaxUID", I.transfer_syntax, "IMAGE"),
    ]
}

_PN_MATCH = patients.alias("pn_match")  # the patients a PatientName matches, looked up per group

_PN_GROUP_COLUMNS = {"PatientName": (P.pn_a, P.pn_i, P.pn_p), "ReferringPhysicianName": (ST.ref_pn_a,)}


def keys_for_level(level: str) -> list[str]:
    """Every attribute the engine returns at ``level`` (own level and above)."""
    depth = LEVELS.index(level)
    return [k for k, f in FIELDS.items() if LEVELS.index(f.level) <= depth]


def _condition(m: Matcher, field: Field, inline_patterns: bool = False) -> ColumnElement[bool] | None:
    if isinstance(m, Universal):
        return None
    if m.keyword == "ModalitiesInStudy":
        inner = _condition(_retarget(m, "Modality"), FIELDS["Modality"], inline_patterns)
        return exists().where(series.c.study_fk == ST.pk, inner)  # type: ignore[arg-type]
    # PatientName asks each component group through its own index and unions the
    # matching patients: an OR over three columns defeats the indexes, and the
    # planner would scan studies (e.g. by date) and test every patient instead.
    pn_union = m.keyword == "PatientName" and not isinstance(m, Range)
    pn_match = _PN_MATCH
    if pn_union:
        cols: tuple[Any, ...] = (pn_match.c.pn_a, pn_match.c.pn_i, pn_match.c.pn_p)
    else:
        cols = _PN_GROUP_COLUMNS.get(m.keyword, (field.column,))
    parts: list[ColumnElement[bool]] = []
    for col in cols:
        if isinstance(m, Single):
            value: Any = m.value
            if field.kind == "int":
                try:
                    value = int(float(m.value))
                except ValueError as exc:
                    raise ValueError(f"{m.keyword}: {m.value!r} is not a number") from exc
            parts.append(col == value)
        elif isinstance(m, Wildcard):
            if field.kind == "int":
                raise ValueError(f"{m.keyword}: wildcards are not allowed on numbers")
            # On PostgreSQL the pattern goes into the SQL text (quoted by SQLAlchemy, so
            # still safe): a prepared statement's generic plan cannot use an index for
            # "LIKE $1", and psycopg prepares after a few executions (bench/query: 2x
            # slower).  SQLite plans LIKE with the bound value itself.
            pattern = bindparam(None, m.like(), type_=String(), literal_execute=inline_patterns)
            parts.append(col.like(pattern, escape="\\"))
        elif isinstance(m, Range):
            bounds = [col != ""]
            if m.low is not None:
                bounds.append(col >= m.low)
            if m.high is not None:
                bounds.append(col <= m.high)
            parts.append(and_(*bounds))
        elif isinstance(m, UidList):
            vals: list[Any] = list(m.values)
            if field.kind == "int":
                vals = [int(float(v)) for v in vals]
            elif m.vr == "PN":
                from hilum.dicom.matching import normalize_pn

                vals = [normalize_pn(v) for v in vals]
            parts.append(col.in_(vals))
    if pn_union and parts:
        return P.pk.in_(union_all(*[select(pn_match.c.pk).where(part) for part in parts]))
    return parts[0] if len(parts) == 1 else or_(*parts)


def _retarget(m: Matcher, keyword: str) -> Matcher:
    if isinstance(m, Single):
        return Single(keyword, "CS", value=m.value)
    if isinstance(m, Wildcard):
        return Wildcard(keyword, "CS", pattern=m.pattern)
    if isinstance(m, UidList):
        return UidList(keyword, "CS", values=m.values)
    return Universal(keyword, "CS")


def _combined_datetime(date_m: Matcher, time_m: Matcher) -> ColumnElement[bool] | None:
    """PS3.4 C.2.2.2.5.2: StudyDate and StudyTime ranges combine into one span."""
    d_low: str | None
    d_high: str | None
    if isinstance(date_m, Single):
        d_low = d_high = date_m.value
    elif isinstance(date_m, Range):
        d_low, d_high = date_m.low, date_m.high
    else:
        return None
    if not isinstance(time_m, Range):
        return None
    conds = [ST.study_dt != ""]
    if d_low is not None:
        conds.append(ST.study_dt >= d_low + (time_m.low or "000000.000000"))
    if d_high is not None:
        conds.append(ST.study_dt <= d_high + (time_m.high or "235959.999999"))
    return and_(*conds)


@functools.cache
def _base_select(level: str) -> tuple[Select[Any], tuple[str, ...]]:
    """The SELECT of every returned attribute of ``level``, joined up to the patient (built once)."""
    depth = LEVELS.index(level)
    returned = keys_for_level(level)
    cols = [FIELDS[k].column.label(k) for k in returned]
    if level == "IMAGE":
        cols += [I.blob_key.label("_blob_key"), I.size.label("_size")]
    stmt = select(*cols)
    # Joins from the queried level up to the patient.
    if depth >= 3:
        stmt = stmt.select_from(
            instances.join(series, I.series_fk == SE.pk).join(studies, SE.study_fk == ST.pk).join(patients, ST.patient_fk == P.pk)
        )
    elif depth == 2:
        stmt = stmt.select_from(series.join(studies, SE.study_fk == ST.pk).join(patients, ST.patient_fk == P.pk))
    elif depth == 1:
        stmt = stmt.select_from(studies.join(patients, ST.patient_fk == P.pk))
    else:
        stmt = stmt.select_from(patients)
    return stmt, tuple(returned)


def build_select(level: str, identifier: Mapping[str, Any], *,
                 dialect: str | None = None) -> tuple[Select[Any], list[str]]:
    """The SELECT for a query, and the keywords it returns (in order).

    ``dialect`` (the engine's dialect name) tunes the SQL for that database without
    changing what matches.
    """
    level = level.upper()
    if level == "INSTANCE":
        level = "IMAGE"
    if level not in LEVELS:
        raise ValueError(f"query level must be one of {', '.join(LEVELS)}, not {level!r}")
    depth = LEVELS.index(level)
    stmt, returned_keys = _base_select(level)
    returned = list(returned_keys)

    matchers: dict[str, Matcher] = {}
    for keyword, value in identifier.items():
        field = FIELDS.get(keyword)
        if field is None:
            if value not in (None, "", [], ()):
                log.debug("query key %s is not indexed: ignored for matching", keyword)
            continue
        if LEVELS.index(field.level) > depth:
            # A key below the queried level (e.g. Modality in a STUDY query):
            # match studies having such a series, as Orthanc and dcm4chee do.
            m = parse_key(keyword, value)
            if isinstance(m, Universal):
                continue
            matchers[keyword] = m
            continue
        if keyword.startswith("Number") or keyword == "SpecificCharacterSet":
            continue  # computed return keys are not matched (PS3.4 C.3.4)
        matchers[keyword] = parse_key(keyword, value)

    conds: list[ColumnElement[bool]] = []
    date_m, time_m = matchers.get("StudyDate"), matchers.get("StudyTime")
    if date_m is not None and time_m is not None and not isinstance(date_m, Universal):
        combined = _combined_datetime(date_m, time_m)
        if combined is not None:
            conds.append(combined)
            matchers.pop("StudyDate")
            matchers.pop("StudyTime")
    for keyword, m in matchers.items():
        field = FIELDS[keyword]
        cond = _condition(m, field, inline_patterns=dialect == "postgresql")
        if cond is None:
            continue
        if LEVELS.index(field.level) > depth:
            cond = _below(level, field, cond)
        conds.append(cond)
    if conds:
        stmt = stmt.where(and_(*conds))
    return stmt, returned


def _below(level: str, field: Field, cond: ColumnElement[bool]) -> ColumnElement[bool]:
    """A condition on a lower level's attribute, as an EXISTS from ``level``."""
    if level == "PATIENT":
        sub = select(1).select_from(studies.join(series, SE.study_fk == ST.pk))
        if field.level == "IMAGE":
            sub = sub.join(instances, I.series_fk == SE.pk)
        return exists(sub.where(ST.patient_fk == P.pk, cond))
    if level == "STUDY":
        sub = select(1).select_from(series)
        if field.level == "IMAGE":
            sub = sub.join(instances, I.series_fk == SE.pk)
        return exists(sub.where(SE.study_fk == ST.pk, cond))
    return exists(select(1).select_from(instances).where(I.series_fk == SE.pk, cond))


_DEFAULT_ORDER: dict[str, list[Any]] = {
    "PATIENT": [P.pk],
    "STUDY": [ST.study_date.desc(), ST.study_time.desc(), ST.pk],
    "SERIES": [SE.series_number, SE.pk],
    "IMAGE": [I.instance_number, I.pk],
}


def run_query(
    conn: Connection,
    level: str,
    identifier: Mapping[str, Any],
    *,
    limit: int | None = None,
    offset: int = 0,
    order_by: list[str] | None = None,
) -> list[dict[str, Any]]:
    stmt, returned = build_select(level, identifier, dialect=conn.dialect.name)
    _single_statement_read(conn)
    lvl = "IMAGE" if level.upper() == "INSTANCE" else level.upper()
    if order_by:
        clauses = []
        for key in order_by:
            desc = key.startswith("-")
            field = FIELDS.get(key.lstrip("-"))
            if field is None or key.lstrip("-") not in returned:
                raise ValueError(f"cannot sort by {key.lstrip('-')!r} at {lvl} level")
            clauses.append(field.column.desc() if desc else field.column)
        stmt = stmt.order_by(*clauses, *_DEFAULT_ORDER[lvl][-1:])
    else:
        stmt = stmt.order_by(*_DEFAULT_ORDER[lvl])
    if limit is not None:
        stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    rows = conn.execute(stmt).mappings().all()
    return [dict(r) for r in rows]


def _single_statement_read(conn: Connection) -> None:
    """On PostgreSQL run a query's one SELECT outside a transaction: it sees one snapshot all the
    same, and the BEGIN and ROLLBACK round trips around it cost more than the query (bench/query)."""
    if conn.dialect.name == "postgresql" and not conn.in_transaction():
        conn.execution_options(isolation_level="AUTOCOMMIT")


def count_query(conn: Connection, level: str, identifier: Mapping[str, Any]) -> int:
    stmt, _ = build_select(level, identifier, dialect=conn.dialect.name)
    _single_statement_read(conn)
    return int(conn.execute(select(func.count()).select_from(stmt.subquery())).scalar_one())
