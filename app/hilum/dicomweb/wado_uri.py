"""WADO-URI (PS3.18 9, formerly PS3.18 "WADO"): ``GET /wado?requestType=WADO&...``.

Parameters (PS3.18 9.1.2): ``requestType=WADO``, ``studyUID``, ``seriesUID``,
``objectUID`` (required); ``contentType`` (comma-separated preferences:
``application/dicom``, ``image/jpeg``, ``image/png``, ``image/gif``; default
image/jpeg for images, application/dicom otherwise); for images
``frameNumber`` (1-based), ``windowCenter`` + ``windowWidth`` (both or
neither), ``rows``/``columns`` (fit into that size), ``region``
(``x1,y1,x2,y2`` normalised 0..1), ``imageQuality``; for
``application/dicom`` ``transferSyntax`` (default Explicit VR Little Endian;
transcoded where possible, else 406).  ``anonymize=yes`` is refused (400):
this server does not de-identify on the fly.
"""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import Response

from hilum.dicom.pixels import FrameIndexError, PixelDataError, Window
from hilum.dicomweb.common import Context, HTTPError, cache_headers, find_instances, not_modified, validators
from hilum.dicomweb.frames import transcode
from hilum.dicomweb.media import DICOM, EVRLE, can_transcode_instance
from hilum.dicomweb.rendered import RENDER_TYPES, RenderParams, Viewport, apply_viewport, encode_image

_SUPPORTED = (DICOM, *RENDER_TYPES)


def _number(q: dict[str, str], name: str, kind: type = float) -> float | None:
    if name not in q or q[name] == "":
        return None
    try:
        return kind(q[name])  # type: ignore[no-any-return]
    except ValueError:
        raise HTTPError(400, f"{name} must be a number, got {q[name]!r}") from None


def wado_uri(ctx: Context, request: Request) -> Response:
    q = dict(request.query_params.items())
    if q.get("requestType") != "WADO":
        raise HTTPError(400, "requestType=WADO is required")
    missing = [k for k in ("studyUID", "seriesUID", "objectUID") if not q.get(k)]
    if missing:
        raise HTTPError(400, f"missing parameter(s): {', '.join(missing)}")
    if q.get("anonymize", "").lower() == "yes":
        raise HTTPError(400, "anonymize=yes is not supported")
    row = find_instances(ctx, q["studyUID"], q["seriesUID"], q["objectUID"])[0]
    is_image = row.get("Rows") is not None
    wanted = [t.strip().split(";")[0].lower() for t in q.get("contentType", "").split(",") if t.strip()]
    if not wanted:
        wanted = ["image/jpeg" if is_image else DICOM]
    content_type = next((t for t in wanted if t in _SUPPORTED), None)
    if content_type is None:
        raise HTTPError(406, f"contentType must be one of {', '.join(_SUPPORTED)}")
    if content_type == DICOM:
        return _dicom(ctx, request, row, q.get("transferSyntax") or EVRLE)
    if not is_image:
        raise HTTPError(400, "the object is not an image")
    return _image(request, row, q, content_type)


def _dicom(ctx: Context, request: Request, row: dict, target: str) -> Response:  # type: ignore[type-arg]
    """The instance as ``application/dicom``: read through ``read_outgoing`` (today's demographics),
    as stored or converted losslessly with every UID kept (else 406)."""
    stored = row["TransferSyntaxUID"]
    if target not in ("*", stored) and not can_transcode_instance(stored, target):
        raise HTTPError(406, f"cannot provide the object in transfer syntax {target}")
    etag, mtime = validators([row], f"wado-uri:dicom:{target}")
    cached = not_modified(request, etag, mtime)
    if cached is not None:
        return cached
    data = ctx.archive.read_outgoing(row)
    if target not in ("*", stored):
        data = transcode(data, target)
    return Response(data, media_type=DICOM, headers=cache_headers(etag, mtime))


def _image(request: Request, row: dict, q: dict[str, str], content_type: str) -> Response:  # type: ignore[type-arg]
    from hilum.dicom.pixels import render_frame

    frame = int(_number(q, "frameNumber", int) or 1)
    if frame < 1:
        raise HTTPError(400, "frameNumber starts at 1")
    center, width = _number(q, "windowCenter"), _number(q, "windowWidth")
    if (center is None) != (width is None):
        raise HTTPError(400, "windowCenter and windowWidth go together")
    window = None
    if center is not None and width is not None:
        try:
            window = Window(center, width)
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from exc
    rows, cols = _number(q, "rows", int), _number(q, "columns", int)
    quality = int(_number(q, "imageQuality", int) or 90)
    if not 1 <= quality <= 100:
        raise HTTPError(400, "imageQuality must be 1..100")
    region = None
    if q.get("region"):
        try:
            region = [float(v) for v in q["region"].split(",")]
        except ValueError:
            raise HTTPError(400, "region must be x1,y1,x2,y2") from None
        if len(region) != 4 or not all(0 <= v <= 1 for v in region) or region[0] >= region[2] or region[1] >= region[3]:
            raise HTTPError(400, "region must be x1,y1,x2,y2 with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
    etag, mtime = validators([row], f"wado-uri:{content_type}:{sorted(q.items())}")
    cached = not_modified(request, etag, mtime)
    if cached is not None:
        return cached
    try:
        arr = render_frame(os.fspath(row["path"]), frame - 1, window=window)
    except FrameIndexError as exc:
        raise HTTPError(404, str(exc)) from exc
    except PixelDataError as exc:
        raise HTTPError(400, f"cannot render: {exc}") from exc
    h, w = arr.shape[:2]
    vp = None
    if region is not None or rows or cols:
        vw = int(cols or (rows and w * rows / h) or w)
        vh = int(rows or (cols and h * cols / w) or h)
        if region is not None:
            x1, y1, x2, y2 = region
            vp = Viewport(max(vw, 1), max(vh, 1), x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h)
            if not (rows or cols):
                vp.width, vp.height = max(1, int((x2 - x1) * w)), max(1, int((y2 - y1) * h))
        else:
            vp = Viewport(max(vw, 1), max(vh, 1))
    params = RenderParams(window=window, viewport=vp, quality=quality)
    data = encode_image(apply_viewport(arr, params.viewport), content_type, quality)
    return Response(data, media_type=content_type, headers=cache_headers(etag, mtime))
