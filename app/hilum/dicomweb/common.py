"""What the DICOMweb routes share: the context, errors, URLs, lookups, caching headers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from hilum.archive import Archive
from hilum.archive.users import UserStore
from hilum.dicomweb.media import DICOM_JSON
from hilum.dicomweb.settings import WebSettings
from hilum.errors import HilumError, StorageFull

log = logging.getLogger(__name__)

ROOT = "/dicom-web"


class HTTPError(HilumError):
    """An error answer: status, one-line detail, optional headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        super().__init__(f"{status}: {detail}")


@dataclass
class Context:
    archive: Archive
    settings: WebSettings
    users: UserStore


def brief_traceback(exc: BaseException, frames: int = 8) -> str:
    """The exception and its innermost ``frames`` frames, without chained exceptions.

    A full traceback of a RecursionError from a deeply nested data set is
    ~1000 frames (mutual recursion defeats Python's "previous line repeated"
    folding): thousands of log lines for one request.
    """
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-frames, chain=False)
    text = "".join(lines).rstrip()
    return text if len(text) <= 8000 else text[:4000] + "\n[...]\n" + text[-4000:]


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None,
                  media_type: str = DICOM_JSON) -> Response:
    return Response(dumps(obj), status_code=status, headers=headers, media_type=media_type)


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps({"error": detail, "status": status}), status_code=status, headers=headers,
                    media_type="application/json")


def base_url(request: Request, settings: WebSettings) -> str:
    """The URL clients reach the server at (``[web] public_url`` behind a proxy)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    url = request.base_url
    server = request.scope.get("server")
    if url.port is None and server and server[1] not in (80, 443):
        # Some clients (dicomweb-client) send a Host header without the port;
        # without public_url, the port the request came in on is the best guess.
        url = url.replace(port=server[1])
    return str(url).rstrip("/")


def study_url(base: str, study: str) -> str:
    return f"{base}{ROOT}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}{ROOT}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, sop: str) -> str:
    return f"{base}{ROOT}/studies/{study}/series/{series}/instances/{sop}"


def check_uid(value: str, what: str) -> str:
    """Path UIDs go to the query engine: keep wildcards, lists and ranges out (400)."""
    if not value or len(value) > 64 or any(c in value for c in "*?\\,-"):
        raise HTTPError(400, f"invalid {what} {value!r}")
    return value


def find_instances(ctx: Context, study: str, series: str | None = None, sop: str | None = None) -> list[dict[str, Any]]:
    """IMAGE rows of a study/series/instance, ordered by series then instance number; 404 if none."""
    ident: dict[str, Any] = {"StudyInstanceUID": check_uid(study, "Study Instance UID")}
    if series is not None:
        ident["SeriesInstanceUID"] = check_uid(series, "Series Instance UID")
    if sop is not None:
        ident["SOPInstanceUID"] = check_uid(sop, "SOP Instance UID")
    rows = ctx.archive.query("IMAGE", ident, order_by=["SeriesNumber", "InstanceNumber"])
    if not rows:
        what = "instance" if sop else "series" if series else "study"
        raise HTTPError(404, f"no such {what}")
    try:
        ctx.archive.ensure_online(rows)  # on an archive tier (or another node's): brought back, verified
    except StorageFull as exc:
        log.error("cannot bring %s back online: %s", sop or series or study, exc)
        raise HTTPError(503, f"the instances are on an archive tier that cannot be reached now: {exc}",
                        {"Retry-After": "30"}) from None
    blobs = ctx.archive.blobs
    for r in rows:
        r["path"] = blobs.path(r["_blob_key"])
    return rows


def representative(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The instance that stands for a study or series: the middle one of the first series."""
    first_series = rows[0]["SeriesInstanceUID"]
    same = [r for r in rows if r["SeriesInstanceUID"] == first_series]
    return same[len(same) // 2]


def validators(rows: list[dict[str, Any]], variant: str) -> tuple[str, float]:
    """A weak ETag and the Last-Modified time of a set of stored instances.

    The ETag covers each instance's UID, size and file modification time, the
    revision of its patient's demographics (HL7 ADT changes what
    :meth:`~hilum.archive.Archive.read_outgoing` hands out without touching the
    file) and the response variant (media type, transfer syntax, parameters);
    weak, because multipart boundaries differ between two equal answers.  An
    instance whose demographics are corrected on the way out has no stable
    modification time: Last-Modified is then now, so If-Modified-Since never
    answers 304 with the old name.
    """
    h = hashlib.sha1(variant.encode())
    newest = 0.0
    for r in rows:
        try:
            st = os.stat(r["path"])
        except OSError:
            raise HTTPError(404, "instance file missing from the store") from None
        newest = max(newest, st.st_mtime)
        r["_file_size"] = st.st_size
        stored, current = r.get("_stored_rev"), r.get("_patient_rev")
        if current and stored != current:
            newest = max(newest, time.time())
        h.update(f"{r['SOPInstanceUID']}:{st.st_size}:{st.st_mtime_ns}:{stored}:{current};".encode())
    return f'W/"{h.hexdigest()}"', newest


def cache_headers(etag: str, mtime: float) -> dict[str, str]:
    return {"ETag": etag, "Last-Modified": formatdate(mtime, usegmt=True), "Cache-Control": "private, no-cache"}


def not_modified(request: Request, etag: str, mtime: float) -> Response | None:
    """A 304 when the client's copy is current (RFC 9110 13.1.2 / 13.1.3)."""
    inm = request.headers.get("if-none-match")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        bare = etag[2:] if etag.startswith("W/") else etag
        if "*" in tags or any((t[2:] if t.startswith("W/") else t) == bare for t in tags):
            return Response(status_code=304, headers=cache_headers(etag, mtime))
        return None
    ims = request.headers.get("if-modified-since")
    if ims:
        try:
            since = parsedate_to_datetime(ims).timestamp()
        except (TypeError, ValueError):
            return None
        if int(mtime) <= int(since):
            return Response(status_code=304, headers=cache_headers(etag, mtime))
    return None


def query_dict(request: Request) -> dict[str, str]:
    """Query parameters, the last of repeated ones winning (rendering parameters)."""
    return dict(request.query_params.items())


def audit(ctx: Context, request: Request, event: str, **fields: Any) -> None:
    """Record an audit event for this request (:mod:`hilum.archive.audit`): the signed-in user (or
    ``anonymous``), the client's address, and ``fields``."""
    user = request.scope.get("state", {}).get("user")
    client = request.client.host if request.client is not None else ""
    fields.setdefault("user", str(getattr(user, "name", "") or "anonymous"))
    fields.setdefault("peer", client)
    ctx.archive.audit(event, **fields)
