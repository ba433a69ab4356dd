"""STOW-RS, the Store transaction (PS3.18 10.5): multipart upload → ``archive.ingest``.

The request body (``multipart/related; type="application/dicom"``) is read
as it arrives and its parts spooled one after the other into one temporary
file, kept in memory up to 64 MiB (before, each part had its own 8 MiB in
memory, so a request of many parts could hold ``max_upload_mb`` in memory
and a file descriptor per part).  At most ``MAX_PARTS`` parts (400 beyond).  Only when the whole body has parsed does anything reach the
archive, so a malformed message stores nothing (400).  Each part then goes
through the one ingest call (``origin="stow"``); the answer is a Store
Instances Response Module (PS3.18 Annex I) in DICOM JSON:

* ReferencedSOPSequence (0008,1199): stored (or already held) instances with
  their RetrieveURL;
* FailedSOPSequence (0008,1198): the others with a FailureReason (0008,1197)
  from PS3.18 table I.2-2: 0xC000 cannot understand (not DICOM, truncated,
  missing UIDs, a part that is not application/dicom, native pixel data under
  a compressed syntax), 0xA900 data set does not match SOP Class (meta and
  data set disagree, invalid UIDs, pixel data length), 0xA700 out of
  resources, 0x0110 processing failure, the implementation-specific 0xC409
  for an instance whose Study Instance UID differs from the one in the
  request path (as dcm4chee does) and 0xC410 for a duplicate whose content
  differs from the stored instance (see ``FAILURE_CODES``).

Status (PS3.18 table 10.5.3-1): 200 all stored, 202 some stored and some
failed, 409 none stored (503 when only for want of space), 400 malformed
request, 415 unsupported media type, 413 body over ``[web] max_upload_mb``.

Logging is bounded per request: the first ``LOGGED_REFUSALS`` refused parts
get a line each, the others one summary line (a body of thousands of tiny
bad parts used to write one line per part).
"""

from __future__ import annotations

import io
import logging
import tempfile
from typing import Any

import anyio.to_thread
import pydicom
from starlette.requests import Request
from starlette.responses import Response

from hilum.archive import IngestResult
from hilum.dicomweb import multipart
from hilum.dicomweb.auth import current_user
from hilum.dicomweb.common import (
    Context,
    HTTPError,
    audit,
    base_url,
    brief_traceback,
    check_uid,
    instance_url,
    json_response,
    study_url,
)
from hilum.dicomweb.media import DICOM, MULTIPART, parse_content_type

log = logging.getLogger(__name__)

SPOOL_IN_MEMORY_PER_REQUEST = 64 << 20
MAX_PARTS = 100_000
LOGGED_REFUSALS = 5

# Ingest rejection codes -> Failure Reason (0008,1197), PS3.18 I.2.2 / PS3.4 B.2.3.  A part that
# contradicts its SOP class (meta vs data set, invalid UIDs, pixel data that does not match the
# Image Pixel Module) does not match its SOP class: 0xA900; bytes that cannot be understood
# (not DICOM, cut short, native pixels under a compressed syntax): 0xC000.  A duplicate whose
# content differs from the stored instance was not stored: 0xC410, as the DIMSE side answers
# (hilum.dimse.scp.store_status), and the response is 409 Conflict when nothing else was stored.
FAILURE_CODES = {
    "not-dicom": 0xC000,
    "truncated": 0xC000,
    "missing-uid": 0xC000,
    "unreadable": 0xC000,
    "not-application-dicom": 0xC000,
    "syntax-mismatch": 0xC000,
    "sop-class-mismatch": 0xA900,
    "uid-mismatch": 0xA900,
    "invalid-uid": 0xA900,
    "invalid-sop-instance-uid": 0xA900,
    "pixel-length": 0xA900,
    "storage-full": 0xA700,
    "study-mismatch": 0xC409,
    "duplicate-differs": 0xC410,
}
PROCESSING_FAILURE = 0x0110
RETRYABLE = frozenset({"storage-full"})  # out of resources: the client may try again later


def response_status(referenced: int, failed_codes: list[str]) -> int:
    """The HTTP status of a STOW-RS response (PS3.18 table 10.5.3-1): 200 all stored, 202 some
    stored, 409 none stored - or 503 when none was stored only for want of space, which the
    client may retry (a full disk is Out of Resources everywhere, 0xA700 on DIMSE)."""
    if not failed_codes:
        return 200
    if referenced:
        return 202
    if all(code in RETRYABLE for code in failed_codes):
        return 503
    return 409


def _stored(res: IngestResult | None) -> bool:
    """Whether a part counts as stored: ingest said so, and it is not a different duplicate."""
    return res is not None and res.ok and res.code != "duplicate-differs"


class _Spool:
    """Every part of one request, one after the other in one temporary file (in memory up to a bound)."""

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_PER_REQUEST)
        self.size = 0

    def append(self, data: bytes) -> None:
        self.file.seek(0, io.SEEK_END)
        self.file.write(data)
        self.size += len(data)

    def read(self, offset: int, size: int) -> bytes:
        self.file.seek(offset)
        return self.file.read(size)

    def close(self) -> None:
        self.file.close()


class _Part:
    """One part: its content type and where its body lies in the request's spool."""

    def __init__(self, spool: _Spool, content_type: str):
        self.spool = spool
        self.content_type = content_type
        self.offset = spool.size
        self.size = 0

    def write(self, data: bytes) -> None:
        self.spool.append(data)
        self.size += len(data)

    def read(self) -> bytes:
        return self.spool.read(self.offset, self.size)


async def store(ctx: Context, request: Request, study: str | None = None) -> Response:
    if study is not None:
        check_uid(study, "Study Instance UID")
    ctype, params = parse_content_type(request.headers.get("content-type", ""))
    if ctype != MULTIPART:
        raise HTTPError(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    root_type = (params.get("type") or DICOM).lower()
    if root_type != DICOM:
        raise HTTPError(415, f"STOW-RS of {root_type} is not supported; send application/dicom parts")
    boundary = params.get("boundary")
    if not boundary:
        raise HTTPError(400, "multipart Content-Type without boundary")
    limit = ctx.settings.max_upload_mb << 20
    parts: list[_Part] = []
    spool = _Spool()
    try:
        try:
            reader = multipart.MultipartReader(boundary)
            received = 0
            current: _Part | None = None
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise HTTPError(413, f"request body over {ctx.settings.max_upload_mb} MB")
                for kind, value in reader.feed(chunk):
                    if kind == multipart.HEADERS:
                        assert isinstance(value, multipart.PartHeaders)
                        if len(parts) >= MAX_PARTS:
                            raise HTTPError(400, f"more than {MAX_PARTS} parts in one STOW-RS request; "
                                                 "nothing was stored")
                        current = _Part(spool, value.content_type or root_type)
                        parts.append(current)
                    elif kind == multipart.DATA and current is not None:
                        current.write(value)  # type: ignore[arg-type]
                    elif kind == multipart.END:
                        current = None
            reader.finish()
        except multipart.MultipartError as exc:
            raise HTTPError(400, f"malformed multipart body: {exc}; nothing was stored") from exc
        if not parts:
            raise HTTPError(400, "the multipart body has no parts; nothing was stored")
        user = current_user(request)
        log.info("STOW-RS of %d part(s) by %s", len(parts), user.name)
        outcomes = await anyio.to_thread.run_sync(_ingest_all, ctx, parts, study)
    finally:
        spool.close()
    _audit(ctx, request, outcomes)
    return _response(request, ctx, outcomes, study)


def _ingest_all(ctx: Context, parts: list[_Part], study: str | None) -> list[tuple[IngestResult | None, str | None]]:
    """(ingest result or None, local failure code) per part."""
    out: list[tuple[IngestResult | None, str | None]] = []
    for p in parts:
        media, _ = parse_content_type(p.content_type)
        if media != DICOM:
            out.append((None, "not-application-dicom"))
            continue
        data = p.read()
        if study is not None:
            try:
                head = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                                       specific_tags=["StudyInstanceUID", "SOPClassUID", "SOPInstanceUID"])
                found = str(head.get("StudyInstanceUID", "") or "")
            except Exception:  # noqa: BLE001 - garbage is ingest's to judge and reject
                head, found = None, study
            if found and found != study:
                res = IngestResult("rejected", sop_instance_uid=str(head.get("SOPInstanceUID", "")) if head else None,
                                   sop_class_uid=str(head.get("SOPClassUID", "")) if head else None,
                                   study_instance_uid=found, reason="Study Instance UID differs from the request's",
                                   code="study-mismatch")
                out.append((res, None))
                continue
        try:
            out.append((ctx.archive.ingest(data, origin="stow"), None))
        except Exception as exc:  # noqa: BLE001 - one failing part must not lose the others' answers
            log.error("STOW-RS ingest failed: %s", brief_traceback(exc))
            out.append((None, "processing"))
    return out


def _audit(ctx: Context, request: Request, outcomes: list[tuple[IngestResult | None, str | None]]) -> None:
    """One "DICOM Instances Transferred" event per study of the request (the user the source); parts
    refused without a study are counted on an event of their own."""
    per_study: dict[str, list[int]] = {}
    for res, _local in outcomes:
        uid = (res.study_instance_uid if res is not None else None) or ""
        per_study.setdefault(uid, [0, 0])[0 if _stored(res) else 1] += 1
    for uid, (stored, failed) in per_study.items():
        audit(ctx, request, "DICOM Instances Transferred", action="C" if stored else "R",
              outcome=0 if not failed else (4 if stored else 8), role="source", study_uids=(uid,) if uid else (),
              instances=stored, detail="STOW-RS" + (f", {failed} refused" if failed else ""))


def _ref_item(res: IngestResult | None) -> dict[str, Any]:
    item: dict[str, Any] = {"00081150": {"vr": "UI"}, "00081155": {"vr": "UI"}}
    if res is not None:
        if res.sop_class_uid:
            item["00081150"] = {"vr": "UI", "Value": [res.sop_class_uid]}
        if res.sop_instance_uid:
            item["00081155"] = {"vr": "UI", "Value": [res.sop_instance_uid]}
    return item


def _response(request: Request, ctx: Context, outcomes: list[tuple[IngestResult | None, str | None]],
              study: str | None) -> Response:
    base = base_url(request, ctx.settings)
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: set[str] = set()
    refused = 0
    failed_codes: list[str] = []
    for res, local in outcomes:
        if _stored(res):
            assert res is not None
            item = _ref_item(res)
            assert res.study_instance_uid and res.series_instance_uid and res.sop_instance_uid
            item["00081190"] = {"vr": "UR", "Value": [instance_url(base, res.study_instance_uid,
                                                                   res.series_instance_uid, res.sop_instance_uid)]}
            referenced.append(dict(sorted(item.items())))
            studies.add(res.study_instance_uid)
            continue
        reason_code = local or (res.code if res else "") or ""
        failed_codes.append(reason_code)
        code = FAILURE_CODES.get(reason_code, PROCESSING_FAILURE)
        item = _ref_item(res)
        item["00081197"] = {"vr": "US", "Value": [code]}
        failed.append(dict(sorted(item.items())))
        refused += 1
        if refused <= LOGGED_REFUSALS:
            log.info("STOW-RS part refused (0x%04X): %s", code, res.reason if res else local)
    if refused > LOGGED_REFUSALS:
        log.info("STOW-RS: %d more part(s) refused, %d refused of %d", refused - LOGGED_REFUSALS, refused,
                 len(outcomes))
    body: dict[str, Any] = {}
    target_study = study or (next(iter(studies)) if len(studies) == 1 else None)
    if target_study and referenced:
        body["00081190"] = {"vr": "UR", "Value": [study_url(base, target_study)]}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    return json_response(body, status=response_status(len(referenced), failed_codes))
