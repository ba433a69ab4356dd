"""C-FIND/C-MOVE/C-GET identifiers ⇄ the archive's ``{keyword: value}`` queries.

The archive owns matching (PS3.4 C.2.2.2); this module only translates the
wire format.  A request identifier lists the keys to match *and* the keys to
return (PS3.4 C.4.1.1.3): a response carries exactly the requested keys,
plus Query/Retrieve Level and, when a value is not ASCII, Specific Character
Set ``ISO_IR 192`` (UTF-8, PS3.5 6.1.2.3).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

from pydicom.config import IGNORE
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from hilum.dimse.storefast import encode_element
from hilum.dimse.uids import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_GET,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    STUDY_ROOT_MOVE,
)
from hilum.errors import HilumError

__all__ = [
    "MODEL_LEVELS",
    "UNIQUE_KEYS",
    "IdentifierError",
    "levels_for_model",
    "query_of",
    "retrieve_query",
    "response_for",
    "ResponsePlan",
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


class IdentifierError(HilumError, ValueError):
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


# ---------------------------------------------------------------- pending responses, encoded directly
#
# A C-FIND with many matches spends most of its time turning each match into a
# pydicom data set (0.15 ms) and pydicom encoding it again (0.25 ms).  The
# response's elements are the request's, the same for every match, so a
# ResponsePlan works them out once and then writes each match's values straight
# into bytes - the bytes response_for + pydicom give (tests/test_dimse_identifiers.py
# holds the two to that).  Values it has no plain encoding for (a number for a
# DS, a value too long for its length field, non-ASCII text in a VR without a
# character set) make it answer None: the caller uses response_for.

_CHARSET_TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_BINARY_VRS = frozenset({"AT", "OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_PACK = {"US": "<H", "UL": "<I", "SS": "<h", "SL": "<i", "FL": "<f", "FD": "<d", "UV": "<Q", "SV": "<q"}


class ResponsePlan:
    """The pending C-FIND responses to one request identifier, encoded without pydicom."""

    def __init__(self, identifier: Dataset, level: str, *, retrieve_aet: str):
        # (tag, VR, what): what is the row key, or a fixed value ("=..."), or None (always empty)
        self._elements: list[tuple[int, str, str | None]] = []
        has_level = False
        for elem in identifier:
            tag = int(elem.tag)
            if tag == _CHARSET or elem.tag.group == 0x0002:
                continue
            if tag == _QR_LEVEL:
                self._elements.append((tag, "CS", "=" + level))
                has_level = True
                continue
            vr = _vr_of(elem)
            keyword = elem.keyword
            what: str | None = keyword or None
            if vr == "SQ":
                what = None
            elif keyword == "RetrieveAETitle":
                what = "=" + retrieve_aet
            elif keyword == "InstanceAvailability":
                what = "=ONLINE"
            self._elements.append((tag, vr, what))
        if not has_level:
            self._elements.append((int(_QR_LEVEL), "CS", "=" + level))
            self._elements.sort()

    def encode(self, row: Mapping[str, Any], *, implicit: bool) -> bytes | None:
        """One match's identifier in Implicit (or Explicit) VR Little Endian, or None."""
        parts: list[tuple[int, str, bytes]] = []
        non_ascii = False
        for tag, vr, what in self._elements:
            if what is None:
                value = None
            elif what[0] == "=":
                value = what[1:]
            else:
                value = _value(vr, row.get(what))
            if value is None:
                data = b""
            elif vr in _BINARY_VRS:
                return None
            elif vr in _PACK:
                if not isinstance(value, int):
                    return None
                try:
                    data = struct.pack(_PACK[vr], value)
                except struct.error:
                    return None
            elif isinstance(value, str):
                if value.isascii():
                    data = value.encode("ascii")
                elif vr in _CHARSET_TEXT_VRS:
                    data = value.encode("utf-8")
                    non_ascii = True
                else:
                    return None
                if len(data) % 2:
                    data += b"\0" if vr == "UI" else b" "
            else:
                return None
            parts.append((tag, vr, data))
        if non_ascii:
            parts.append((int(_CHARSET), "CS", b"ISO_IR 192"))
            parts.sort(key=lambda p: p[0])
        try:
            return b"".join([encode_element(tag, data, None if implicit else vr) for tag, vr, data in parts])
        except struct.error:
            return None  # a value too long for its VR's 16-bit length
