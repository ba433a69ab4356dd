"""C-FIND/C-MOVE/C-GET identifiers ⇄ the archive's ``{keyword: value}`` queries.

The archive owns matching (PS3.4 C.2.2.2); this module only translates the
wire format.  A request identifier lists the keys to match *and* the keys to
return (PS3.4 C.4.1.1.3): a response carries exactly the requested keys,
plus Query/Retrieve Level and, when a value is not ASCII, Specific Character
Set ``ISO_IR 192`` (UTF-8, PS3.5 6.1.2.3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.config import IGNORE
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from hilum.dimse.uids import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)

__all__ = [
    "MODEL_LEVELS",
    "UNIQUE_KEYS",
    "IdentifierError",
    "levels_for_model",
    "query_of",
    "retrieve_query",
    "response_for",
]

_PATIENT_ROOT = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_STUDY_ROOT = ("STUDY", "SERIES", "IMAGE")

#: Query/Retrieve levels each information model supports (PS3.4 C.3.1, C.3.2).
MODEL_LEVELS: dict[str, tuple[str, ...]] = {
    PATIENT_ROOT_FIND: _PATIENT_ROOT,
    PATIENT_ROOT_MOVE: _PATIENT_ROOT,
    PATIENT_ROOT_GET: _PATIENT_ROOT,
    STUDY_ROOT_FIND: _STUDY_ROOT,
    STUDY_ROOT_MOVE: _STUDY_ROOT,
    STUDY_ROOT_GET: _STUDY_ROOT,
}

#: The unique key of each level (PS3.4 C.3, Tables C.6-1 to C.6-5).
UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}

_QR_LEVEL = Tag(0x0008, 0x0052)
_CHARSET = Tag(0x0008, 0x0005)


class IdentifierError(ValueError):
    """An identifier that does not fit its SOP class (DIMSE status 0xA900)."""


def levels_for_model(sop_class_uid: str) -> tuple[str, ...]:
    return MODEL_LEVELS.get(str(sop_class_uid), _PATIENT_ROOT)


def _text(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1", errors="replace")
    return str(value)


def query_of(identifier: Dataset, sop_class_uid: str) -> tuple[str, dict[str, str]]:
    """The level and ``{keyword: value}`` of a request identifier.

    Sequences, private and unknown attributes are not matched (they are still
    returned, empty, by :func:`response_for`).  Raises :class:`IdentifierError`
    when the level is missing or not one of the model's levels.
    """
    raw_level = identifier.get("QueryRetrieveLevel", "")
    level = str(raw_level or "").strip().upper()
    if level == "INSTANCE":
        level = "IMAGE"
    allowed = levels_for_model(sop_class_uid)
    if level not in allowed:
        raise IdentifierError(
            f"Query/Retrieve Level {level or '(missing)'} not in {'/'.join(allowed)}"
        )
    keys: dict[str, str] = {}
    for elem in identifier:
        if elem.tag in (_QR_LEVEL, _CHARSET) or elem.tag.group == 0x0002 or elem.tag.is_private:
            continue
        if elem.VR == "SQ" or not elem.keyword:
            continue
        keys[elem.keyword] = _text(elem)
    return level, keys


def retrieve_query(identifier: Dataset, sop_class_uid: str) -> tuple[str, dict[str, str]]:
    """The IMAGE-level archive query selecting what a C-MOVE/C-GET retrieves.

    PS3.4 C.4.2.2.1/C.4.3.2.1: the identifier holds the unique keys of the
    retrieve level and the levels above.  The level's own unique key is
    required; every non-empty key filters (relational, lenient about extra
    keys).  Raises :class:`IdentifierError`.
    """
    level, keys = query_of(identifier, sop_class_uid)
    unique = UNIQUE_KEYS[level]
    if not keys.get(unique, "").strip():
        raise IdentifierError(f"a {level} retrieve needs {unique}")
    return level, {k: v for k, v in keys.items() if v.strip()}


def _vr_of(elem: DataElement) -> str:
    vr = str(elem.VR)
    if " or " in vr or vr == "UN":
        try:
            vr = dictionary_VR(elem.tag)
        except KeyError:
            return "UN"
        if " or " in vr:
            vr = vr.split(" or ")[0]
    return vr


_NUMERIC_VRS = {"US", "UL", "SS", "SL", "FL", "FD", "UV", "SV"}


def _value(vr: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if vr == "TM" and isinstance(value, str):
        # The index normalises times to HHMMSS.FFFFFF; drop an all-zero fraction.
        return value[:-7] if value.endswith(".000000") else value
    if vr in _NUMERIC_VRS:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if vr in ("IS",):
        return str(int(value)) if isinstance(value, (int, float)) else str(value)
    return value if isinstance(value, (int, float)) and vr in ("DS",) else str(value)


def response_for(identifier: Dataset, level: str, row: Mapping[str, Any], *, retrieve_aet: str) -> Dataset:
    """A pending C-FIND response: the requested keys filled from one archive row."""
    rsp = Dataset()
    non_ascii = False
    for elem in identifier:
        tag = elem.tag
        if tag == _CHARSET or tag.group == 0x0002:
            continue
        if tag == _QR_LEVEL:
            rsp.add_new(tag, "CS", level)
            continue
        vr = _vr_of(elem)
        if vr == "SQ":
            rsp.add_new(tag, "SQ", [])
            continue
        keyword = elem.keyword
        value: Any = row.get(keyword) if keyword else None
        if keyword == "RetrieveAETitle":
            value = retrieve_aet
        elif keyword == "InstanceAvailability":
            value = "ONLINE"
        value = _value(vr, value)
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        # the index's values are already normalised: skip pydicom's per-value regex checks,
        # a third of the cost of each match
        rsp.add(DataElement(tag, vr, value, validation_mode=IGNORE))
    if "QueryRetrieveLevel" not in rsp:
        rsp.QueryRetrieveLevel = level
    if non_ascii:
        rsp.SpecificCharacterSet = "ISO_IR 192"
    return rsp
