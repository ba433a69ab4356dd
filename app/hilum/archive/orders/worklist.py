"""The Modality Worklist's query: scheduled procedure steps matched with DICOM rules (PS3.4 K).

One row per scheduled procedure step, with the MWL identifier's keys (top
level and the Scheduled Procedure Step Sequence item flattened), matched by
the query engine's :func:`hilum.archive.query.matcher_condition` (PS3.4
C.2.2.2: single value, ``*``/``?`` wildcards, ranges, UID lists,
case-insensitive person names), so the worklist and C-FIND/QIDO match alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, false, func, or_, select

from hilum.archive.orders.model import ACTIVE, DICOM_STATUS, STATUSES, dicom_time
from hilum.archive.query import folded_name_condition, matcher_condition
from hilum.archive.schema import orders, patients, procedure_steps
from hilum.dicom.matching import Matcher, Range, Single, Universal, parse_key

# DICOM keyword → (column(s), kind).  PN keys match on normalised columns.
_P, _O, _S = patients.c, orders.c, procedure_steps.c
_WL_COLUMNS: dict[str, tuple[tuple[Any, ...], str]] = {
    "PatientName": ((_P.pn_a, _P.pn_i, _P.pn_p), "pn"),
    "PatientID": ((_P.patient_id,), "text"),
    "IssuerOfPatientID": ((_P.issuer,), "text"),
    "PatientBirthDate": ((_P.birth_date,), "text"),
    "PatientSex": ((_P.sex,), "text"),
    "StudyInstanceUID": ((_O.study_uid,), "text"),
    "AccessionNumber": ((_O.accession_number,), "text"),
    "RequestedProcedureID": ((_O.requested_procedure_id,), "text"),
    "RequestedProcedureDescription": ((_O.description,), "text"),
    "ReferringPhysicianName": ((_O.ref_pn,), "pn"),
    "RequestedProcedurePriority": ((_O.priority,), "text"),
    "PlacerOrderNumberImagingServiceRequest": ((_O.placer_number,), "text"),
    "FillerOrderNumberImagingServiceRequest": ((_O.filler_number,), "text"),
    "ScheduledStationAETitle": ((_S.station_aet,), "text"),
    "ScheduledStationName": ((_S.station_name,), "text"),
    "ScheduledProcedureStepLocation": ((_S.location,), "text"),
    "Modality": ((_S.modality,), "text"),
    "ScheduledProcedureStepStartDate": ((_S.start_date,), "text"),
    "ScheduledProcedureStepStartTime": ((_S.start_time,), "text"),
    "ScheduledPerformingPhysicianName": ((_S.performer_pn,), "pn"),
    "ScheduledProcedureStepID": ((_S.sps_id,), "text"),
    "ScheduledProcedureStepDescription": ((_S.description,), "text"),
}
#: Keys of the Scheduled Procedure Step Sequence item (0040,0100).
SPS_KEYS = (
    "ScheduledStationAETitle", "ScheduledStationName", "ScheduledProcedureStepLocation", "Modality",
    "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime", "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepID", "ScheduledProcedureStepDescription", "ScheduledProcedureStepStatus",
)
#: Keys a worklist row carries (top level of the MWL identifier and the SPS item).
WORKLIST_KEYS = tuple(_WL_COLUMNS) + ("ScheduledProcedureStepStatus", "RequestingPhysician",
                                      "ReasonForTheRequestedProcedure", "RequestedProcedureCodeSequence")


def _status_condition(value: Any, active_only: bool) -> ColumnElement[bool] | None:
    m = parse_key("ScheduledProcedureStepStatus", value, vr="CS")
    if isinstance(m, Universal):
        return _S.status.in_(ACTIVE) if active_only else None
    wanted = [s for s in STATUSES if m.matches(DICOM_STATUS[s]) or m.matches(s)]
    return _S.status.in_(wanted) if wanted else false()


def build_worklist_conditions(identifier: Mapping[str, Any], *, active_only: bool,
                              fold_names: bool = False) -> list[ColumnElement[bool]]:
    """WHERE conditions for a worklist query (PS3.4 K.2.2 matching, C.2.2.2 semantics).

    ``fold_names``: a PatientName also matches as people type names (``muller``
    finds Müller, :mod:`hilum.archive.namefold`): the workstation's worklist
    tab, never the MWL SCP.  Raises ``ValueError`` on a malformed value (→ C-FIND 0xA900).
    """
    conds: list[ColumnElement[bool]] = []
    matchers: dict[str, Matcher] = {}
    for keyword, value in identifier.items():
        if keyword == "ScheduledProcedureStepStatus":
            continue
        if keyword not in _WL_COLUMNS:
            continue  # return-only key (e.g. RequestingPhysician): not matched
        matchers[keyword] = parse_key(keyword, value)
    date_m = matchers.get("ScheduledProcedureStepStartDate")
    time_m = matchers.get("ScheduledProcedureStepStartTime")
    if isinstance(date_m, (Single, Range)):
        # Dates match on start_dt (date + time), which the (station, start) and
        # (modality, start) indexes cover; with a time range too, the two
        # combine into one span (PS3.4 C.2.2.2.5.2).
        low_d, high_d = (date_m.value, date_m.value) if isinstance(date_m, Single) else (date_m.low, date_m.high)
        combined = isinstance(time_m, Range)
        low_t = (time_m.low if isinstance(time_m, Range) else None) or "000000.000000"
        high_t = (time_m.high if isinstance(time_m, Range) else None) or "235959.999999"
        span = [_S.start_dt != ""]
        if low_d is not None:
            span.append(_S.start_dt >= low_d + low_t)
        if high_d is not None:
            span.append(_S.start_dt <= high_d + high_t)
        conds.append(and_(*span))
        matchers.pop("ScheduledProcedureStepStartDate")
        if combined:
            matchers.pop("ScheduledProcedureStepStartTime")
    for keyword, m in matchers.items():
        cond = matcher_condition(m, _WL_COLUMNS[keyword][0])
        if cond is not None and fold_names and keyword == "PatientName" and "=" not in str(identifier[keyword]):
            folded = folded_name_condition(identifier[keyword], _P.pn_fold)
            cond = cond if folded is None else or_(cond, folded)
        if cond is not None:
            conds.append(cond)
    status = _status_condition(identifier.get("ScheduledProcedureStepStatus"), active_only)
    if status is not None:
        conds.append(status)
    return conds


_WL_SELECT_COLUMNS = [
    _P.patient_name.label("PatientName"), _P.patient_id.label("PatientID"), _P.issuer.label("IssuerOfPatientID"),
    _P.birth_date.label("PatientBirthDate"), _P.sex.label("PatientSex"),
    _O.study_uid.label("StudyInstanceUID"), _O.accession_number.label("AccessionNumber"),
    _O.requested_procedure_id.label("RequestedProcedureID"), _O.description.label("RequestedProcedureDescription"),
    _O.referring_physician.label("ReferringPhysicianName"), _O.requesting_physician.label("RequestingPhysician"),
    _O.priority.label("RequestedProcedurePriority"), _O.reason.label("ReasonForTheRequestedProcedure"),
    _O.placer_number.label("PlacerOrderNumberImagingServiceRequest"),
    _O.filler_number.label("FillerOrderNumberImagingServiceRequest"),
    _O.code_value.label("_code_value"), _O.code_scheme.label("_code_scheme"), _O.code_meaning.label("_code_meaning"),
    _S.station_aet.label("ScheduledStationAETitle"), _S.station_name.label("ScheduledStationName"),
    _S.location.label("ScheduledProcedureStepLocation"), _S.modality.label("Modality"),
    _S.start_date.label("ScheduledProcedureStepStartDate"), _S.start_time.label("ScheduledProcedureStepStartTime"),
    _S.performer.label("ScheduledPerformingPhysicianName"), _S.sps_id.label("ScheduledProcedureStepID"),
    _S.description.label("ScheduledProcedureStepDescription"), _S.status.label("_status"),
    _O.status.label("_order_status"), _O.pk.label("_order_pk"), _S.pk.label("_sps_pk"),
    _O.images_at.label("_images_at"), _O.performed_study_uid.label("_performed_study_uid"),
    _O.created_at.label("_created_at"),
]


def _worklist_row(r: Mapping[str, Any]) -> dict[str, Any]:
    row = dict(r)
    row["ScheduledProcedureStepStatus"] = DICOM_STATUS.get(row["_status"], row["_status"])
    row["ScheduledProcedureStepStartTime"] = dicom_time(row["ScheduledProcedureStepStartTime"] or "")
    if row["_code_value"]:
        row["RequestedProcedureCodeSequence"] = [{"CodeValue": row["_code_value"],
                                                  "CodingSchemeDesignator": row["_code_scheme"] or "L",
                                                  "CodeMeaning": row["_code_meaning"] or row["RequestedProcedureDescription"]}]
    else:
        row["RequestedProcedureCodeSequence"] = []
    images_at = row["_images_at"]
    if images_at is not None and images_at.tzinfo is None:
        row["_images_at"] = images_at.replace(tzinfo=UTC)
    return row



_FROM = procedure_steps.join(orders, procedure_steps.c.order_fk == orders.c.pk).join(
    patients, orders.c.patient_fk == patients.c.pk)


def worklist(engine: Engine, identifier: Mapping[str, Any] | None = None, *, active_only: bool = True,
             limit: int | None = None, offset: int = 0, fold_names: bool = False) -> list[dict[str, Any]]:
    """Worklist items (one per scheduled procedure step) matching DICOM keys.

    ``identifier`` maps keywords of the MWL identifier (top level and the
    Scheduled Procedure Step Sequence item flattened: ``Modality``,
    ``ScheduledStationAETitle``, ``ScheduledProcedureStepStartDate``...)
    to query values in DICOM string form, matched per PS3.4 C.2.2.2.  Without
    a ``ScheduledProcedureStepStatus`` key, ``active_only`` limits to
    SCHEDULED and IN PROGRESS steps (the modality's view); the key accepts
    DICOM terms (``STARTED``, ``CANCELED``) and the internal ones.
    Rows carry the keywords of :data:`WORKLIST_KEYS` plus ``_status``,
    ``_order_status``, ``_order_pk``, ``_sps_pk``, ``_images_at``,
    ``_performed_study_uid``.  ``fold_names``: see :func:`build_worklist_conditions`.
    Raises ``ValueError`` on a malformed value.
    """
    conds = build_worklist_conditions(identifier or {}, active_only=active_only, fold_names=fold_names)
    stmt = select(*_WL_SELECT_COLUMNS).select_from(_FROM)
    if conds:
        stmt = stmt.where(and_(*conds))
    stmt = stmt.order_by(procedure_steps.c.start_dt, procedure_steps.c.pk)
    if limit is not None:
        stmt = stmt.limit(limit)
    if offset:
        stmt = stmt.offset(offset)
    with engine.connect() as conn:
        result = conn.execute(stmt)
        columns = list(result.keys())
        rows = result.fetchall()  # plain tuples zipped with the keys: a third of the cost of .mappings()
    return [_worklist_row(dict(zip(columns, r, strict=True))) for r in rows]


def count(engine: Engine, identifier: Mapping[str, Any] | None = None, *, active_only: bool = False,
          fold_names: bool = False) -> int:
    """How many worklist items match (see :func:`worklist`)."""
    conds = build_worklist_conditions(identifier or {}, active_only=active_only, fold_names=fold_names)
    stmt = select(func.count()).select_from(_FROM)
    if conds:
        stmt = stmt.where(and_(*conds))
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())
