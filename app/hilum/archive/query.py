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
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import ColumnElement, Integer, String, and_, bindparam, exists, func, literal, or_, select, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from hilum.archive.namefold import fold_name
from hilum.archive.schema import instances, patients, series, studies
from hilum.dicom.matching import (
    AllOf,
    Matcher,
    Range,
    Single,
    UidList,
    Universal,
    Wildcard,
    normalize_pn,
    parse_key,
)

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
_SERIES_OF_STUDY = series.alias("series_of_study")  # not the queried series, at SERIES and IMAGE level

_PN_GROUP_COLUMNS = {"PatientName": (P.pn_a, P.pn_i, P.pn_p), "ReferringPhysicianName": (ST.ref_pn_a,)}

_DATETIME = "_StudyDateTime"  # the pseudo-key of a combined date and time range


def keys_for_level(level: str) -> list[str]:
    """Every attribute the engine returns at ``level`` (own level and above)."""
    depth = LEVELS.index(level)
    return [k for k, f in FIELDS.items() if LEVELS.index(f.level) <= depth]


# A query runs in two steps.  ``_plan`` turns the identifier into its *shape*
# (which keys, and how each matches: single value, wildcard, range with which
# bounds, list...) and the values to bind.  ``_statement`` builds the SELECT of
# a shape once, with bind parameters named after the keys, and keeps it:
# building a SELECT and SQLAlchemy's cache key for it cost 1.3 of 3.7 ms per
# query on PostgreSQL, more than running the whole query on SQLite (bench/query).


@dataclass(frozen=True, order=True)
class _Key:
    """How one key matches, without its value: all that the SQL depends on."""

    keyword: str
    how: str  # single | wildcard | range | list | modalities (on the study row's ModalitiesInStudy)
    low: bool = False  # which bounds a range has
    high: bool = False
    count: int = 0  # how many ModalitiesInStudy values
    below: bool = False  # a key of a level below the queried one
    group: int = -1  # PN: the component group it matches (0 alphabetic, 1 ideographic, 2 phonetic; -1 any)
    fold: str = ""  # PatientName: also match the folded name (patients.pn_fold), as single | wildcard


def _param(keyword: str, group: int) -> str:
    """The bind parameter of a key: a PN key per component group has one per group."""
    return keyword if group < 0 else f"{keyword}_g{group}"


def _pn_columns(keyword: str, cols: tuple[Any, ...], group: int) -> tuple[Any, ...]:
    """The columns a PN key of ``group`` matches: all of them for -1, else that group's (PS3.5 6.2.1)."""
    if group < 0:
        return cols
    if group >= len(cols):
        raise ValueError(f"{keyword}: only its alphabetic component group can be matched")
    return (cols[group],)


def _level(level: str) -> str:
    level = level.upper()
    if level == "INSTANCE":
        level = "IMAGE"
    if level not in LEVELS:
        raise ValueError(f"query level must be one of {', '.join(LEVELS)}, not {level!r}")
    return level


def _plan(level: str, identifier: Mapping[str, Any],
          fold_names: bool = False) -> tuple[tuple[_Key, ...], dict[str, Any]]:
    """The shape of a query at ``level``, and the values of its bind parameters.

    ``fold_names``: see :func:`run_query`.  Raises ``ValueError`` on a malformed value.
    """
    depth = LEVELS.index(level)
    matchers: dict[str, Matcher] = {}
    for keyword, value in identifier.items():
        field = FIELDS.get(keyword)
        if field is None:
            if value not in (None, "", [], ()):
                log.debug("query key %s is not indexed: ignored for matching", keyword)
            continue
        own_level = LEVELS.index(field.level) <= depth
        if own_level and (keyword.startswith("Number") or keyword == "SpecificCharacterSet"):
            continue  # computed return keys are not matched (PS3.4 C.3.4)
        m = parse_key(keyword, value)
        if not isinstance(m, Universal):
            matchers[keyword] = m
    keys: list[_Key] = []
    params: dict[str, Any] = {}
    date_m, time_m = matchers.get("StudyDate"), matchers.get("StudyTime")
    if isinstance(date_m, (Single, Range)) and isinstance(time_m, Range):
        # PS3.4 C.2.2.2.5.2: StudyDate and StudyTime ranges combine into one span.
        low, high = (date_m.value, date_m.value) if isinstance(date_m, Single) else (date_m.low, date_m.high)
        if low is not None:
            params[f"{_DATETIME}_low"] = low + (time_m.low or "000000.000000")
        if high is not None:
            params[f"{_DATETIME}_high"] = high + (time_m.high or "235959.999999")
        keys.append(_Key(_DATETIME, "range", low=low is not None, high=high is not None))
        del matchers["StudyDate"], matchers["StudyTime"]
    for keyword, m in matchers.items():  # a PN key naming several component groups is a key per group
        parts = m.parts if isinstance(m, AllOf) else (m,)
        for part in parts:
            key = _bind(part, FIELDS[keyword].kind, params)
            if (fold_names and keyword == "PatientName" and len(parts) == 1 and key.group in (-1, 0)
                    and key.how in ("single", "wildcard")):
                key = replace(key, fold=_bind_folded(keyword, identifier[keyword], params))
            keys.append(key)
    return tuple(sorted(replace(k, below=LEVELS.index(_field(k.keyword).level) > depth) for k in keys)), params


_FOLDED = "_folded"  # the suffix of a folded name's bind parameter


def _bind_folded(keyword: str, value: Any, params: dict[str, Any]) -> str:
    """A PN value folded as :mod:`hilum.archive.namefold` folds the stored names; how it matches
    (single | wildcard), its value bound in ``params``; ``""`` when it folds to nothing."""
    folded = fold_name(value) if isinstance(value, str) else ""
    if not folded.strip("*"):
        return ""
    if "*" in folded or "?" in folded:
        params[keyword + _FOLDED] = Wildcard(keyword, "PN", pattern=folded).like()
        return "wildcard"
    params[keyword + _FOLDED] = folded
    return "single"


def _field(keyword: str) -> Field:
    """The field a key of a shape matches on (the combined date and time: StudyDate's level)."""
    return FIELDS["StudyDate" if keyword == _DATETIME else keyword]


def _bind(m: Matcher, kind: str, params: dict[str, Any]) -> _Key:
    """The shape of one key; its values go into ``params`` under the names ``_condition`` binds."""
    kw = m.keyword
    if kw == "ModalitiesInStudy" and isinstance(m, (Single, UidList)):
        values = [m.value] if isinstance(m, Single) else list(m.values)
        for i, v in enumerate(values):  # "\CT\" anywhere in "\CT\MR\", with LIKE's own wildcards escaped
            params[f"{kw}_{i}"] = "%\\" + _LIKE_SPECIAL.sub(r"/\g<0>", v) + "\\%"
        return _Key(kw, "modalities", count=len(values))
    group = -1 if getattr(m, "group", None) is None else int(m.group)  # type: ignore[attr-defined]
    if group >= 0 and kw in FIELDS:  # ValueError now (0xA900 / 400) when the key has no such column
        _pn_columns(kw, _PN_GROUP_COLUMNS.get(kw, (FIELDS[kw].column,)), group)
    if isinstance(m, Single):
        params[_param(kw, group)] = _number(kw, m.value) if kind == "int" else m.value
        return _Key(kw, "single", group=group)
    if isinstance(m, Wildcard):
        if kind == "int":
            raise ValueError(f"{kw}: wildcards are not allowed on numbers")
        params[_param(kw, group)] = m.like()
        return _Key(kw, "wildcard", group=group)
    if isinstance(m, Range):
        if m.low is not None:
            params[f"{kw}_low"] = m.low
        if m.high is not None:
            params[f"{kw}_high"] = m.high
        return _Key(kw, "range", low=m.low is not None, high=m.high is not None)
    if not isinstance(m, UidList):
        raise TypeError(f"{kw}: no SQL for {type(m).__name__}")
    if kind == "int":
        params[kw] = [_number(kw, v) for v in m.values]
    elif m.vr == "PN":
        params[kw] = [normalize_pn(v) for v in m.values]
    else:
        params[kw] = list(m.values)
    return _Key(kw, "list")


_LIKE_SPECIAL = re.compile(r"[/%_]")


def _number(keyword: str, value: str) -> int:
    try:
        return int(float(value))
    except ValueError as exc:
        raise ValueError(f"{keyword}: {value!r} is not a number") from exc


def _condition(key: _Key, level: str, dialect: str) -> ColumnElement[bool]:
    """The SQL of one key of a shape, its values left to bind parameters named after the key."""
    kw = key.keyword
    field = _field(kw)
    cond: ColumnElement[bool]
    if kw == _DATETIME:
        cond = _match(key, ST.study_dt, kw, dialect)
    elif key.how == "modalities":
        # studies.modalities holds the distinct modalities of the study's series, sorted and
        # joined by "\" (kept by ingest and delete).  Testing it on the rows the other keys
        # found costs next to nothing, where an EXISTS visits the series index once per
        # candidate study: "modality + date range" over 20,000 studies went from p95 9.4 to
        # 4.3 ms on PostgreSQL (bench/query).  Case-sensitive: db.py sets SQLite's LIKE so.
        wrapped = literal("\\", String()) + ST.modalities + literal("\\", String())
        cond = or_(*[wrapped.like(bindparam(f"{kw}_{i}", type_=String()), escape="/") for i in range(key.count)])
    elif kw == "ModalitiesInStudy":  # a wildcard: tested on the Modality of each of the study's series
        se = _SERIES_OF_STUDY.c
        cond = exists(select(1).select_from(_SERIES_OF_STUDY)
                      .where(se.study_fk == ST.pk, _match(key, se.modality, kw, dialect)))
    elif kw == "PatientName" and key.how != "range":
        # PatientName asks each component group through its own index and unions the
        # matching patients: an OR over three columns defeats the indexes, and the
        # planner would scan studies (e.g. by date) and test every patient instead.
        pn = _PN_MATCH.c
        selects = [select(pn.pk).where(_match(key, col, _param(kw, key.group), dialect))
                   for col in _pn_columns(kw, (pn.pn_a, pn.pn_i, pn.pn_p), key.group)]
        if key.fold:  # the names as people type them too: "muller" finds Müller (namefold.py)
            selects.append(select(pn.pk).where(_match(replace(key, how=key.fold), pn.pn_fold, kw + _FOLDED, dialect)))
        cond = P.pk.in_(selects[0] if len(selects) == 1 else union_all(*selects))
    else:
        cols = _pn_columns(kw, _PN_GROUP_COLUMNS.get(kw, (field.column,)), key.group)
        parts = [_match(key, col, _param(kw, key.group), dialect) for col in cols]
        cond = parts[0] if len(parts) == 1 else or_(*parts)
    return _below(level, field, cond) if key.below else cond


def _match(key: _Key, col: Any, name: str, dialect: str,
           values: Mapping[str, Any] | None = None) -> ColumnElement[bool]:
    """``col`` matched as ``key`` says, against the bind parameter(s) called ``name``: left to bind
    at execution, or bound here to ``values`` (as ``_bind`` named them) when given."""

    def param(n: str, **kw: Any) -> Any:
        return bindparam(n, **kw) if values is None else bindparam(n, values[n], unique=True, **kw)

    if key.how == "single":
        return col == param(name)  # type: ignore[no-any-return]
    if key.how == "wildcard":
        # On PostgreSQL the pattern goes into the SQL text (quoted by SQLAlchemy, so
        # still safe): a prepared statement's generic plan cannot use an index for
        # "LIKE $1", and psycopg prepares after a few executions (bench/query: 2x
        # slower).  SQLite plans LIKE with the bound value itself.
        pattern = param(name, type_=String(), literal_execute=dialect == "postgresql")
        return col.like(pattern, escape="\\")  # type: ignore[no-any-return]
    if key.how == "range":
        bounds = [col != ""]
        if key.low:
            bounds.append(col >= param(f"{name}_low"))
        if key.high:
            bounds.append(col <= param(f"{name}_high"))
        return and_(*bounds)
    if key.how == "list":
        return col.in_(param(name, expanding=True))  # type: ignore[no-any-return]
    raise ValueError(f"{name}: no SQL for {key.how!r} matching")


def matcher_condition(m: Matcher, cols: tuple[Any, ...]) -> ColumnElement[bool] | None:
    """One parsed key as SQL on ``cols`` (a match in any of them counts), its values bound: the
    same matching for tables outside the four levels, e.g. the worklist (``orders.py``)."""
    if isinstance(m, Universal):
        return None
    if isinstance(m, AllOf):
        conds = [c for c in (matcher_condition(part, cols) for part in m.parts) if c is not None]
        return and_(*conds) if conds else None
    params: dict[str, Any] = {}
    key = _bind(m, "text", params)
    parts = [_match(key, col, _param(m.keyword, key.group), "", params)
             for col in _pn_columns(m.keyword, cols, key.group)]
    return parts[0] if len(parts) == 1 else or_(*parts)


def folded_name_condition(value: Any, col: Any) -> ColumnElement[bool] | None:
    """A PN value folded as people type names (:mod:`hilum.archive.namefold`) matched on ``col``
    (a folded column, ``patients.pn_fold``), its value bound; None when it folds to nothing.  For
    tables outside the four levels that join the patients, e.g. the workstation's worklist."""
    params: dict[str, Any] = {}
    how = _bind_folded("PatientName", value, params)
    if not how:
        return None
    return _match(_Key("PatientName", how), col, "PatientName" + _FOLDED, "", params)


def _below(level: str, field: Field, cond: ColumnElement[bool]) -> ColumnElement[bool]:
    """A condition on a lower level's attribute (e.g. Modality in a STUDY query), as an EXISTS:
    the entities that have such a child match, as in Orthanc and dcm4chee."""
    if level == "PATIENT":
        if field.level == "STUDY":
            return exists(select(1).select_from(studies).where(ST.patient_fk == P.pk, cond))
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


@functools.cache
def _base_select(level: str) -> Select[Any]:
    """The SELECT of every returned attribute of ``level``, joined up to the patient."""
    depth = LEVELS.index(level)
    cols = [FIELDS[k].column.label(k) for k in keys_for_level(level)]
    if level == "IMAGE":
        # _stored_rev/_patient_rev: whether the file still carries the registry's demographics
        # (Archive.read_outgoing; see schema.py).
        cols += [I.blob_key.label("_blob_key"), I.size.label("_size"), I.patient_rev.label("_stored_rev"),
                 P.revision.label("_patient_rev")]
    stmt = select(*cols)
    if depth >= 3:
        return stmt.select_from(
            instances.join(series, I.series_fk == SE.pk).join(studies, SE.study_fk == ST.pk).join(patients, ST.patient_fk == P.pk)
        )
    if depth == 2:
        return stmt.select_from(series.join(studies, SE.study_fk == ST.pk).join(patients, ST.patient_fk == P.pk))
    if depth == 1:
        return stmt.select_from(studies.join(patients, ST.patient_fk == P.pk))
    return stmt.select_from(patients)


_DEFAULT_ORDER: dict[str, list[Any]] = {
    "PATIENT": [P.pk],
    "STUDY": [ST.study_date.desc(), ST.study_time.desc(), ST.pk],
    "SERIES": [SE.series_number, SE.pk],
    "IMAGE": [I.instance_number, I.pk],
}


@functools.lru_cache(maxsize=512)
def _statement(level: str, dialect: str, keys: tuple[_Key, ...], order_by: tuple[str, ...] | None = None,
               paged: tuple[bool, bool] = (False, False), count: bool = False) -> Select[Any]:
    """The SELECT of a query shape (built once): ordered and paged with ``:_limit``/``:_offset``,
    or its COUNT(*).  ``dialect`` tunes the SQL for that database without changing what matches."""
    stmt = _base_select(level)
    conds = [_condition(key, level, dialect) for key in keys]
    if conds:
        stmt = stmt.where(and_(*conds))
    if count:
        return select(func.count()).select_from(stmt.subquery())
    if order_by:
        returned = keys_for_level(level)
        clauses = []
        for key in order_by:
            name = key.lstrip("-")
            if name not in FIELDS or name not in returned:
                raise ValueError(f"cannot sort by {name!r} at {level} level")
            clauses.append(FIELDS[name].column.desc() if key.startswith("-") else FIELDS[name].column)
        stmt = stmt.order_by(*clauses, *_DEFAULT_ORDER[level][-1:])
    else:
        stmt = stmt.order_by(*_DEFAULT_ORDER[level])
    if paged[0]:
        stmt = stmt.limit(bindparam("_limit", type_=Integer()))
    if paged[1]:
        stmt = stmt.offset(bindparam("_offset", type_=Integer()))
    return stmt


def build_select(level: str, identifier: Mapping[str, Any], *, dialect: str | None = None,
                 fold_names: bool = False) -> tuple[Select[Any], list[str]]:
    """The SELECT of a query with its values bound, and the keywords it returns (for EXPLAIN and tests)."""
    level = _level(level)
    keys, params = _plan(level, identifier, fold_names)
    return _statement(level, dialect or "", keys).params(params), keys_for_level(level)


def run_query(
    conn: Connection,
    level: str,
    identifier: Mapping[str, Any],
    *,
    limit: int | None = None,
    offset: int = 0,
    order_by: list[str] | None = None,
    fold_names: bool = False,
) -> list[dict[str, Any]]:
    """The rows matching ``identifier`` at ``level`` (PS3.4 C.2.2.2 matching, module docstring).

    ``fold_names``: a PatientName value also matches the names as people type
    them — accents, case and separators folded (:mod:`hilum.archive.namefold`):
    ``muller*`` finds Müller, ``helene`` Hélène.  For the study browser and
    ``hilum find --local``; C-FIND and QIDO-RS never ask for it.
    """
    level = _level(level)
    keys, params = _plan(level, identifier, fold_names)
    stmt = _statement(level, conn.dialect.name, keys, tuple(order_by) if order_by else None,
                      (limit is not None, bool(offset)))
    if limit is not None:
        params["_limit"] = limit
    if offset:
        params["_offset"] = offset
    _single_statement_read(conn)
    result = conn.execute(stmt, params)
    columns = list(result.keys())
    return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


def _single_statement_read(conn: Connection) -> None:
    """On PostgreSQL run a query's one SELECT outside a transaction: it sees one snapshot all the
    same, and the BEGIN and ROLLBACK round trips around it cost more than the query (bench/query)."""
    if conn.dialect.name == "postgresql" and not conn.in_transaction():
        conn.execution_options(isolation_level="AUTOCOMMIT")


def count_query(conn: Connection, level: str, identifier: Mapping[str, Any], *, fold_names: bool = False) -> int:
    level = _level(level)
    keys, params = _plan(level, identifier, fold_names)
    _single_statement_read(conn)
    return int(conn.execute(_statement(level, conn.dialect.name, keys, count=True), params).scalar_one())
