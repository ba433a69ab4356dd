"""QIDO-RS, the Search transaction (PS3.18 10.6): a thin translation to ``archive.query``.

Resources: ``/studies``, ``/series``, ``/instances``, ``/studies/{s}/series``,
``/studies/{s}/instances``, ``/studies/{s}/series/{se}/instances``.

Query parameters (PS3.18 8.3.4): ``{attributeID}={value}`` with attributeID a
keyword or 8 hex digits and values in DICOM string form, matched by the one
query engine with PS3.4 C.2.2.2 semantics (single value, ``*``/``?``
wildcards, ``A-B`` date/time ranges, UID lists — comma or backslash
separated — and case-insensitive person names); ``includefield`` (repeatable,
comma-separated, or ``all``); ``limit``/``offset``; ``fuzzymatching`` is
accepted and answered with exact matching and a Warning header.

Silly values are a clear 400, never a 500: ``limit`` and ``offset`` are
decimal digits only (no ``1e23``, signs, spaces, ``_`` or non-ASCII digits,
which Python's ``int()`` would take) with ``offset`` at most
``MAX_OFFSET`` (a 64-bit SQL OFFSET overflowed on ``offset=10**23``); at
most ``MAX_PARAMETERS`` query parameters, ``MAX_INCLUDE_FIELDS`` included
attributes and ``MAX_LIST_VALUES`` values in one UID/code list.

Each result holds the attributes PS3.18 table 10.6.3-3/-4/-5 require for the
level (plus those of the levels above when the path does not fix them), the
matching keys, the included fields, and the QIDO-specific ones: RetrieveURL
(0008,1190), InstanceAvailability (0008,0056) and, for instances,
AvailableTransferSyntaxUID (0008,3002).  Included attributes the index does
not hold are read from the stored file of an instance (for studies and
series, their first instance).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pydicom
from pydicom.tag import Tag
from starlette.requests import Request
from starlette.responses import Response

from hilum.archive import keys_for_level
from hilum.archive.query import FIELDS
from hilum.dicom.attributes import HeaderCut, read_header
from hilum.dicomweb import dicomjson
from hilum.dicomweb.common import (
    Context,
    HTTPError,
    base_url,
    check_uid,
    instance_url,
    json_response,
    series_url,
    study_url,
)
from hilum.dicomweb.media import parse_accept

log = logging.getLogger(__name__)

RESERVED = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
MAX_OFFSET = 2**31 - 1
MAX_PARAMETERS = 200
MAX_INCLUDE_FIELDS = 500
MAX_LIST_VALUES = 1000
_DIGITS = re.compile(r"[0-9]{1,12}")

STUDY_KEYS = [
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
]
SERIES_KEYS = [
    "StudyInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "BodyPartExamined",
    "SeriesDate",
    "SeriesTime",
]
INSTANCE_KEYS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
]

_AVAILABILITY = {"vr": "CS", "Value": ["ONLINE"]}
_CHARSET = {"vr": "CS", "Value": ["ISO_IR 192"]}  # DICOM JSON is UTF-8 (PS3.18 F.2)
MORE_RESULTS_WARNING = '299 hilum "There are additional results that can be requested"'


def _accepts_json(request: Request) -> None:
    try:
        ranges = parse_accept(request.headers.get("accept"))
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from exc
    for r in ranges:
        if r.media_type in ("application/dicom+json", "application/json", "*/*", "application/*"):
            return
    raise HTTPError(406, "QIDO-RS answers in application/dicom+json only")


def _int_param(value: str, name: str, minimum: int, maximum: int) -> int:
    if not _DIGITS.fullmatch(value):
        raise HTTPError(400, f"{name} must be a whole number written in digits, got {value[:40]!r}")
    n = int(value)
    if not minimum <= n <= maximum:
        raise HTTPError(400, f"{name} must be between {minimum} and {maximum}, got {n}")
    return n


def parse_query(request: Request) -> tuple[dict[str, Any], list[str], bool, int | None, int, bool, list[str]]:
    """(identifier, included keywords, include all, limit, offset, fuzzy, unsupported matching keys)."""
    ident: dict[str, Any] = {}
    lists: dict[str, list[str]] = {}
    include: list[str] = []
    include_all = False
    limit: int | None = None
    offset = 0
    fuzzy = False
    unsupported: list[str] = []
    items_in = request.query_params.multi_items()
    if len(items_in) > MAX_PARAMETERS:
        raise HTTPError(400, f"more than {MAX_PARAMETERS} query parameters")
    for name, value in items_in:
        lname = name.lower()
        if lname == "includefield":
            for item in value.split(","):
                item = item.strip()
                if not item:
                    continue
                if item.lower() == "all":
                    include_all = True
                    continue
                kw = dicomjson.attribute_keyword(item)
                if kw is None:
                    if "." in item:
                        continue  # a sequence path: nothing nested is indexed; silently not included
                    raise HTTPError(400, f"includefield: unknown attribute {item!r}")
                include.append(kw)
                if len(include) > MAX_INCLUDE_FIELDS:
                    raise HTTPError(400, f"more than {MAX_INCLUDE_FIELDS} includefield attributes")
        elif lname == "limit":
            limit = _int_param(value, "limit", 1, 10**12)
        elif lname == "offset":
            offset = _int_param(value, "offset", 0, MAX_OFFSET)
        elif lname == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise HTTPError(400, f"fuzzymatching must be true or false, got {value!r}")
            fuzzy = value.lower() == "true"
        elif name.startswith("_"):
            continue  # cache busters some web clients add (e.g. "_=1700000000")
        else:
            kw = dicomjson.attribute_keyword(name)
            if kw is None:
                if "." in name and all(dicomjson.attribute_keyword(p) for p in name.split(".")):
                    unsupported.append(name)
                    continue
                raise HTTPError(400, f"unknown query parameter {name!r}")
            if kw not in FIELDS:
                unsupported.append(kw)
                include.append(kw)
                continue
            vr = dicomjson.vr_of(kw)
            # Lists: comma-separated (UIDs and code strings cannot hold commas) or repeated keys.
            items = value.replace("\\", ",").split(",") if vr in ("UI", "CS") else [value]
            values = lists.setdefault(kw, [])
            values.extend(items)
            if len(values) > MAX_LIST_VALUES:
                raise HTTPError(400, f"{kw}: more than {MAX_LIST_VALUES} values")
    for kw, items in lists.items():
        ident[kw] = items[0] if len(items) == 1 else items
    return ident, include, include_all, limit, offset, fuzzy, unsupported


def search(ctx: Context, request: Request, level: str, study: str | None = None, series: str | None = None) -> Response:
    """Answer one QIDO-RS request at ``level`` (STUDY, SERIES, IMAGE) within the path's study/series."""
    _accepts_json(request)
    ident, include, include_all, limit, offset, fuzzy, unsupported = parse_query(request)
    if study is not None:
        ident["StudyInstanceUID"] = check_uid(study, "Study Instance UID")
        if not ctx.archive.query("STUDY", {"StudyInstanceUID": study}, limit=1):
            raise HTTPError(404, "no such study")
    if series is not None:
        ident["SeriesInstanceUID"] = check_uid(series, "Series Instance UID")
        if not ctx.archive.query("SERIES", {"StudyInstanceUID": study, "SeriesInstanceUID": series}, limit=1):
            raise HTTPError(404, "no such series")

    cap = ctx.settings.max_results
    want = min(limit, cap) if limit is not None else cap
    try:
        rows = ctx.archive.query(level, ident, limit=want + 1, offset=offset)
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from exc
    more = len(rows) > want
    rows = rows[:want]

    level_keys = keys_for_level("IMAGE" if level == "INSTANCE" else level)
    keys = _return_keys(level, study is not None, series is not None)
    if include_all:
        keys += [k for k in level_keys if k not in keys]
    keys += [k for k in ident if k not in keys and k in level_keys]
    from_file = [k for k in dict.fromkeys(include) if k not in level_keys]
    keys += [k for k in include if k in level_keys and k not in keys]

    base = base_url(request, ctx.settings)
    headers_of = _InstanceHeaders(ctx, from_file) if from_file and level == "IMAGE" else None
    results = []
    for row in rows:
        extra = _qido_attributes(level, row, base)
        if from_file:
            got = headers_of(row) if headers_of is not None else _from_file(ctx, level, row, from_file)
            for tag, attr in got.items():
                extra.setdefault(tag, attr)
        results.append(dicomjson.row_to_json(row, keys, extra))

    warnings = []
    if more:
        warnings.append(MORE_RESULTS_WARNING)
    if fuzzy:
        warnings.append('299 hilum "Fuzzy matching is not supported: exact matching was used"')
    if unsupported:
        warnings.append(
            f'299 hilum "The following attributes were not supported for matching: {", ".join(unsupported)}"'
        )
    headers = {"Warning": ", ".join(warnings)} if warnings else None
    return json_response(results, headers=headers)


def _return_keys(level: str, study_fixed: bool, series_fixed: bool) -> list[str]:
    if level == "STUDY":
        return list(STUDY_KEYS)
    if level == "SERIES":
        return list(SERIES_KEYS) + ([] if study_fixed else STUDY_KEYS)
    keys = list(INSTANCE_KEYS)
    if not series_fixed:
        keys += SERIES_KEYS
    if not study_fixed:
        keys += STUDY_KEYS
    return list(dict.fromkeys(keys))


def _qido_attributes(level: str, row: dict[str, Any], base: str) -> dict[str, dict[str, Any]]:
    st = row["StudyInstanceUID"]
    extra: dict[str, dict[str, Any]] = {"00080005": _CHARSET}
    if level == "STUDY":
        url = study_url(base, st)
        extra["00080056"] = _AVAILABILITY
    elif level == "SERIES":
        url = series_url(base, st, row["SeriesInstanceUID"])
    else:
        url = instance_url(base, st, row["SeriesInstanceUID"], row["SOPInstanceUID"])
        extra["00080056"] = _AVAILABILITY
        if row.get("TransferSyntaxUID"):
            extra["00083002"] = {"vr": "UI", "Value": [row["TransferSyntaxUID"]]}
    extra["00081190"] = {"vr": "UR", "Value": [url]}
    return extra


HEAD_BYTES = 16384
"""What is read first of each file for an instance listing's included attributes (doubled until the
header is whole: a CT's header is 2-4 KB)."""


class _InstanceHeaders:
    """Included attributes the index does not keep, of every instance of one listing (the includefield
    of a viewer placing each slice: position, orientation, spacing, scaling).

    Each file's first kilobytes are parsed without pydicom's per-element reads
    (:func:`hilum.dicom.attributes.read_header`, pydicom's reader where it must judge), and an
    element's JSON is made once per distinct stored value: most repeat from slice to slice (a 600-slice
    CT: 1.0 s -> 0.15 s here; the first image of a remote open waits on this listing).  The same
    answer as :func:`_from_file`, which it falls back on for a file it cannot read this way.
    """

    def __init__(self, ctx: Context, keywords: list[str]):
        self.ctx = ctx
        self.keywords = keywords
        self.wanted = [(kw, t, dicomjson.tag_hex(kw)) for kw in keywords
                       if (t := pydicom.datadict.tag_for_keyword(kw)) is not None]  # fmt: skip
        self.json: dict[tuple[int, str | None, bytes, Any], dict[str, Any]] = {}

    def __call__(self, row: dict[str, Any]) -> dict[str, dict[str, Any]]:
        key = row.get("_blob_key")
        if not key:
            return {}
        try:
            self.ctx.archive.ensure_online([{"_blob_key": key, "SOPInstanceUID": row.get("SOPInstanceUID")}])
            ds = self._read(self.ctx.archive.blobs.path(key))
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            log.warning("cannot read %s for includefield: %s", key, exc)
            return {}
        if ds is None:
            return _from_file(self.ctx, "IMAGE", row, self.keywords)
        out: dict[str, dict[str, Any]] = {}
        bad: list[str] = []
        charset = ds.get_item(0x00080005)
        encoding = getattr(charset, "value", None) or b""
        for kw, tag, hex_tag in self.wanted:
            if hex_tag is None:
                continue
            raw = ds.get_item(tag)  # the stored element, raw until used
            if raw is None:
                out[hex_tag] = {"vr": dicomjson.vr_of(kw)}
                continue
            value = getattr(raw, "value", None)
            memo = (tag, getattr(raw, "VR", None), value, encoding) if isinstance(value, bytes) else None
            if memo is not None and memo in self.json:
                out[hex_tag] = self.json[memo]
                continue
            try:
                out[hex_tag] = ds[tag].to_json_dict(None, 1 << 30)
            except (ValueError, TypeError, OverflowError, RecursionError):
                out[hex_tag] = {"vr": dicomjson.vr_of(kw)}
                bad.append(kw)  # a stored value that is not valid for its VR: sent empty, not a 500
                continue
            if memo is not None and len(self.json) < 65536:
                self.json[memo] = out[hex_tag]
        if bad:
            log.warning("%s: stored value(s) of %s not valid for their VR; sent without a value", key, ", ".join(bad))
        return out

    @staticmethod
    def _read(path: Any) -> pydicom.Dataset | None:
        size = HEAD_BYTES
        with open(path, "rb") as f:
            while True:
                f.seek(0)
                head = f.read(size)
                whole = len(head) < size
                try:
                    return read_header(head, whole=whole)
                except HeaderCut:
                    if whole or size >= 1 << 22:
                        return None
                    size *= 4


def _from_file(ctx: Context, level: str, row: dict[str, Any], keywords: list[str]) -> dict[str, dict[str, Any]]:
    """Included attributes the index does not keep, from the stored file (first instance of a study/series)."""
    if level == "IMAGE":
        key = row.get("_blob_key")
    else:
        ident = {"StudyInstanceUID": row["StudyInstanceUID"]}
        if level == "SERIES":
            ident["SeriesInstanceUID"] = row["SeriesInstanceUID"]
        first = ctx.archive.query("IMAGE", ident, limit=1)
        key = first[0]["_blob_key"] if first else None
    if not key:
        return {}
    tags = [Tag(t) for t in (pydicom.datadict.tag_for_keyword(k) for k in keywords) if t is not None]
    try:
        uid = row.get("SOPInstanceUID") if level == "IMAGE" else first[0]["SOPInstanceUID"]
        ctx.archive.ensure_online([{"_blob_key": key, "SOPInstanceUID": uid}])  # on a tier: brought back
        ds = pydicom.dcmread(ctx.archive.blobs.path(key), stop_before_pixels=True, specific_tags=tags)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        log.warning("cannot read %s for includefield: %s", key, exc)
        return {}
    out: dict[str, dict[str, Any]] = {}
    bad: list[str] = []
    for kw in keywords:
        tag = dicomjson.tag_hex(kw)
        if tag is None:
            continue
        out[tag] = {"vr": dicomjson.vr_of(kw)}
        if kw in ds:
            try:
                out[tag] = ds[kw].to_json_dict(None, 1 << 30)
            except (ValueError, TypeError, OverflowError, RecursionError):
                bad.append(kw)  # a stored value that is not valid for its VR: sent empty, not a 500
    if bad:
        log.warning("%s: stored value(s) of %s not valid for their VR; sent without a value", key, ", ".join(bad))
    return out
