"""The DICOM JSON Model (PS3.18 Annex F.2) for query rows and datasets.

* :func:`row_to_json` turns a row of :meth:`hilum.archive.Archive.query`
  (keyword → DICOM string form) into a DICOM JSON object with the VR of each
  attribute from the data dictionary: numbers for IS/DS/US..., person names as
  ``{"Alphabetic", "Ideographic", "Phonetic"}`` (F.2.2), multi-valued strings
  split on backslash, empty attributes as ``{"vr": ...}`` without ``Value``
  (F.2.5), keys sorted by tag (F.2.1).
* :func:`dataset_to_json` wraps pydicom's ``to_json_dict`` so that large
  binary values become ``BulkDataURI`` with a path the server can resolve
  (F.2.6), nested sequence items included.
* :func:`json_to_row` is the inverse of :func:`row_to_json` for the client,
  so remote QIDO results look like local query rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

_INT_VRS = frozenset({"IS", "SL", "SS", "UL", "US", "SV", "UV"})
_FLOAT_VRS = frozenset({"DS", "FL", "FD"})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})  # backslash is a character, not a separator


@lru_cache(maxsize=4096)
def tag_hex(keyword: str) -> str | None:
    """``PatientName`` → ``00100010`` (None for unknown keywords)."""
    tag = tag_for_keyword(keyword)
    return None if tag is None else f"{tag:08X}"


@lru_cache(maxsize=4096)
def vr_of(keyword: str) -> str:
    try:
        vr = dictionary_VR(keyword)
    except KeyError:
        return "UN"
    # Ambiguous dictionary VRs: the usual choice for a header value.
    return {"US or SS": "US", "OB or OW": "OW", "US or OW": "US", "US or SS or OW": "US"}.get(vr, vr)


def attribute_keyword(name: str) -> str | None:
    """A QIDO ``attributeID`` (keyword or 8 hex digits, PS3.18 8.3.4.1) → keyword, None if unknown."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        try:
            return keyword_for_tag(Tag(int(name, 16))) or None
        except (ValueError, OverflowError):
            return None
    return name if tag_for_keyword(name) is not None else None


def pn_to_json(value: str) -> dict[str, str]:
    """``Alpha=Ideo=Phon`` → the F.2.2 object, empty groups left out."""
    groups = value.split("=")
    out: dict[str, str] = {}
    for name, g in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if g:
            out[name] = g
    return out


def pn_from_json(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    if not isinstance(obj, Mapping):
        return ""
    groups = [str(obj.get(k, "") or "") for k in ("Alphabetic", "Ideographic", "Phonetic")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _tm(value: str) -> str:
    """The archive's normalised ``HHMMSS.FFFFFF`` without an all-zero fraction."""
    if value.endswith(".000000"):
        return value[:-7]
    return value


def value_to_json(keyword: str, vr: str, value: Any) -> dict[str, Any]:
    """One attribute's JSON (``{"vr": ..., "Value": [...]}``) from a python/DICOM-string value."""
    obj: dict[str, Any] = {"vr": vr}
    if value is None or value == "" or value == []:
        return obj
    if vr == "PN":
        names = value if isinstance(value, list) else str(value).split("\\")
        obj["Value"] = [pn_to_json(str(v)) for v in names]
    elif vr in _INT_VRS:
        values: Any = value if isinstance(value, (list, tuple)) else str(value).split("\\") if isinstance(value, str) else [value]
        try:
            obj["Value"] = [int(float(v)) for v in values if str(v).strip() != ""]
        except ValueError:
            obj["Value"] = [str(v) for v in values]
    elif vr in _FLOAT_VRS:
        values = value if isinstance(value, (list, tuple)) else str(value).split("\\") if isinstance(value, str) else [value]
        try:
            nums = [float(v) for v in values if str(v).strip() != ""]
            obj["Value"] = [int(n) if n.is_integer() and vr == "DS" else n for n in nums]
        except ValueError:
            obj["Value"] = [str(v) for v in values]
    elif vr in _SINGLE_TEXT_VRS:
        obj["Value"] = [str(value)]
    elif vr == "TM":
        obj["Value"] = [_tm(v) for v in str(value).split("\\")]
    else:
        obj["Value"] = value if isinstance(value, list) else str(value).split("\\")
    if not obj.get("Value"):
        obj.pop("Value", None)
    return obj


def _converter(kw: str, vr: str) -> Callable[[Any], dict[str, Any]]:
    """A fast converter for the common plain-string case; :func:`value_to_json` for the rest."""
    empty = {"vr": vr}
    if vr in ("AE", "AS", "CS", "DA", "LO", "SH", "UI", "DT"):
        def plain(v: Any) -> dict[str, Any]:
            if v is None or v == "":
                return empty
            if isinstance(v, str):
                return {"vr": vr, "Value": v.split("\\") if "\\" in v else [v]}
            return value_to_json(kw, vr, v)
        return plain

    def general(v: Any) -> dict[str, Any]:
        return empty if v is None or v == "" else value_to_json(kw, vr, v)
    return general


@lru_cache(maxsize=256)
def _plan(keywords: tuple[str, ...]) -> tuple[tuple[str, str, Callable[[Any], dict[str, Any]]], ...]:
    """(tag, keyword, converter) for each returnable keyword, computed once per key list."""
    plan = []
    for kw in dict.fromkeys(keywords):
        if kw.startswith("_"):
            continue
        tag = tag_hex(kw)
        if tag is not None:
            plan.append((tag, kw, _converter(kw, vr_of(kw))))
    return tuple(plan)


def row_to_json(row: Mapping[str, Any], keywords: Iterable[str], extra: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A query row as a DICOM JSON object holding ``keywords`` (absent ones empty) plus ``extra``.

    ``extra`` maps tag hex → ready JSON attributes (RetrieveURL, values read from a file...);
    it does not override the row's own values.
    """
    out: dict[str, Any] = dict(extra) if extra else {}
    get = row.get
    for tag, kw, conv in _plan(tuple(keywords)):
        out[tag] = conv(get(kw))
    return dict(sorted(out.items()))


# -------------------------------------------------------------------- datasets


def dataset_to_json(ds: Dataset, *, bulk_data_threshold: int,
                    bulk_uri: Callable[[str], str] | None) -> dict[str, Any]:
    """A dataset in DICOM JSON with ``BulkDataURI`` for binary values over the threshold.

    ``bulk_uri(path)`` gets the attribute path of the value (``"00282000"``,
    or ``"00540016/0/00181074"`` inside sequences, PS3.18 10.4.1.1.5's
    ``bulkdata`` resource) and returns the URI to put in the JSON.
    """
    paths: dict[int, str] = {}

    def walk(d: Dataset, prefix: str) -> None:
        for elem in d:
            path = f"{prefix}{elem.tag:08X}"
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value or []):
                    walk(item, f"{path}/{i}/")
            else:
                paths[id(elem)] = path

    if bulk_uri is not None:
        walk(ds, "")

    def handler(elem: DataElement) -> str:
        path = paths.get(id(elem), f"{elem.tag:08X}")
        return bulk_uri(path) if bulk_uri is not None else ""

    return ds.to_json_dict(bulk_data_threshold=bulk_data_threshold,
                           bulk_data_element_handler=handler if bulk_uri is not None else None,
                           suppress_invalid_tags=True)


# ------------------------------------------------------------------- client side


def json_value_to_string(attr: Mapping[str, Any]) -> Any:
    """A DICOM JSON attribute → the archive's row form: str (``\\``-joined), int or None."""
    vr = attr.get("vr", "")
    values = attr.get("Value")
    if values is None:
        return None if vr in _INT_VRS else ""
    if vr == "PN":
        return "\\".join(pn_from_json(v) for v in values)
    if vr in _INT_VRS:
        if len(values) == 1:
            try:
                return int(values[0])
            except (TypeError, ValueError):
                return None
        return "\\".join(str(v) for v in values)
    if vr == "SQ":
        return values
    return "\\".join("" if v is None else str(v) for v in values)


def json_to_row(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A DICOM JSON object → ``{keyword: value}`` like a row of :meth:`Archive.query`."""
    row: dict[str, Any] = {}
    for tag, attr in obj.items():
        try:
            kw = keyword_for_tag(Tag(int(tag, 16)))
        except (ValueError, OverflowError):
            continue
        if not kw or not isinstance(attr, Mapping):
            continue
        row[kw] = json_value_to_string(attr)
    return row
