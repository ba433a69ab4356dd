"""WADO-RS, the Retrieve transaction (PS3.18 10.4).

* Instances (study, series, instance): ``multipart/related;
  type="application/dicom"``, each part read through
  :meth:`~hilum.archive.Archive.read_outgoing` (what leaves the archive
  carries today's demographics) one instance at a time and streamed in 2 MiB
  pieces — a study is never held in memory.  ``transfer-syntax=*`` sends
  instances as stored; a named syntax is honoured by a lossless conversion
  where pydicom can, every UID kept (else 406 before anything is sent; a
  lossy syntax is never produced from another one: that would be another
  instance); without one, Explicit VR Little Endian is the default
  (PS3.18 8.7.3.5.2).
* Metadata: a JSON array of DICOM JSON datasets (streamed, each read through
  ``read_outgoing``), binary values above ``[web] bulk_data_threshold`` and
  Pixel Data as ``BulkDataURI``.
* Frames: ``multipart/related`` of frames — ``application/octet-stream``
  (native, little endian) or the compressed bitstreams (image/jpeg, jls, jp2,
  dicom-rle...), with the transfer syntax of each part in its Content-Type.
  Frames are pixel data only (no demographics), read from the stored file at
  their offsets, so a frame of a large multi-frame object costs one frame.
* Lossy renditions on request (Hilum's adaptive streaming,
  :mod:`.adaptive`): ``?ratio=R`` (a number in [1, 200], native bytes /
  compressed bytes) with a JPEG 2000 (``1.2.840.10008.1.2.4.91``,
  ``image/jp2``) or HTJ2K (``1.2.840.10008.1.2.4.203``, ``image/jphc``)
  ``transfer-syntax`` in ``Accept`` encodes frames — or instances — on the
  fly at about that ratio (without ``ratio`` JPEG 2000 frames use 10 and
  HTJ2K is reversible; instances are never sent lossy without it).  What is
  stored never changes.  A lossy answer says so: headers
  ``X-Hilum-Lossy-Image-Compression: 01``,
  ``X-Hilum-Lossy-Image-Compression-Ratio`` (achieved) and
  ``-Method`` (PS3.3 C.7.6.1.1.5 terms), and a lossy instance carries Lossy
  Image Compression ``01`` with the ratio and method appended.  Lossless
  targets: JPEG-LS (``.4.80``, ``image/jls``), JPEG 2000 (``.4.90``),
  HTJ2K (``.4.201``, ``image/jphc``), as before.
* Bulk data: ``.../instances/{i}/bulkdata/{tag[/item/tag...]}``.
* Rendered and thumbnails: see :mod:`.rendered`.

Responses carry a weak ETag and Last-Modified (from the stored files) and
answer conditional requests with 304.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pydicom
from pydicom.tag import Tag
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hilum.dicom.pixels import FrameIndexError, PixelDataError
from hilum.dicomweb import dicomjson, multipart
from hilum.dicomweb.common import (
    Context,
    HTTPError,
    base_url,
    cache_headers,
    dumps,
    find_instances,
    instance_url,
    not_modified,
    query_dict,
    representative,
    validators,
)
from hilum.dicomweb.frames import (
    LOSSY_METHOD,
    MAX_RATIO,
    MIN_RATIO,
    RATIO_TARGETS,
    FrameError,
    achieved_ratio,
    check_frames,
    frames_as,
    is_lossy_target,
    pixel_info,
    transcode,
)
from hilum.dicomweb.media import (
    DEFAULT_FRAME_SYNTAX,
    DICOM,
    DICOM_JSON,
    EVRLE,
    FRAME_MEDIA_TYPE,
    MULTIPART,
    OCTET,
    UNCOMPRESSED,
    can_transcode,
    can_transcode_instance,
    parse_accept,
)
from hilum.dicomweb.rendered import RENDER_TYPES, RenderParamError, Viewport, parse_params, render

log = logging.getLogger(__name__)

CHUNK = 2 << 20


def _ranges(request: Request) -> tuple[Any, ...]:
    try:
        return parse_accept(request.headers.get("accept"))
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from exc


# ------------------------------------------------------------------ instances


def dicom_targets(request: Request) -> list[str]:
    """Transfer syntaxes the client accepts for application/dicom parts, best first (``*`` = as stored)."""
    targets: list[str] = []
    for r in _ranges(request):
        if r.media_type == MULTIPART:
            if (r.part_type or DICOM) != DICOM:
                continue
            targets.append(r.transfer_syntax or EVRLE)
        elif r.media_type == DICOM:
            targets.append(r.transfer_syntax or EVRLE)
        elif r.media_type in ("*/*", "multipart/*", "application/*"):
            targets.append(EVRLE)
    if not targets:
        raise HTTPError(406, 'instances are sent as multipart/related; type="application/dicom"')
    return targets


def lossy_ratio(request: Request) -> float | None:
    """The ``ratio`` query parameter (a lossy rendition asked for explicitly), or None; 400 when malformed."""
    text = request.query_params.get("ratio")
    if text in (None, ""):
        return None
    try:
        ratio = float(text)
    except ValueError:
        raise HTTPError(400, f"ratio must be a number, got {text!r}") from None
    if not MIN_RATIO <= ratio <= MAX_RATIO:
        raise HTTPError(400, f"ratio must be between {MIN_RATIO:g} and {MAX_RATIO:g}, got {text}")
    return ratio


def lossy_headers(ratio: float, target: str) -> dict[str, str]:
    """Headers that mark a lossy answer (PS3.3 C.7.6.1.1.5 values)."""
    return {"X-Hilum-Lossy-Image-Compression": "01",
            "X-Hilum-Lossy-Image-Compression-Ratio": f"{ratio:.2f}",
            "X-Hilum-Lossy-Image-Compression-Method": LOSSY_METHOD.get(target, "ISO_15444_1")}


def choose_target(rows: list[dict[str, Any]], targets: list[str], ratio: float | None = None) -> str:
    for t in targets:
        if t == "*" or all(can_transcode_instance(r["TransferSyntaxUID"], t) for r in rows):
            return t
        if ratio is not None and t in RATIO_TARGETS and all(
                can_transcode(r["TransferSyntaxUID"], t) for r in rows):
            return t
    raise HTTPError(406, f"cannot provide the instances in transfer syntax {', '.join(targets)}")


def retrieve_instances(ctx: Context, request: Request, study: str, series: str | None = None,
                       sop: str | None = None) -> Response:
    targets = dicom_targets(request)
    rows = find_instances(ctx, study, series, sop)
    ratio = lossy_ratio(request)
    target = choose_target(rows, targets, ratio)
    if target not in RATIO_TARGETS:
        ratio = None
    lossy = target != "*" and is_lossy_target(target, ratio) and ratio is not None
    etag, mtime = validators(rows, f"dicom:{target}:{ratio}")
    cached = not_modified(request, etag, mtime)
    if cached is not None:
        return cached
    boundary = multipart.new_boundary()
    headers = cache_headers(etag, mtime)
    if lossy:
        headers["X-Hilum-Lossy-Image-Compression"] = "01"
        headers["X-Hilum-Lossy-Image-Compression-Method"] = LOSSY_METHOD.get(target, "ISO_15444_1")
    # No Content-Length: what leaves is read through read_outgoing, which may differ from the
    # stored file's size (corrected demographics), so the body is sent chunked.
    return StreamingResponse(_stream_instances(ctx, rows, target, boundary, ratio), headers=headers,
                             media_type=f'{MULTIPART}; type="{DICOM}"; boundary={boundary}')


def _stream_instances(ctx: Context, rows: list[dict[str, Any]], target: str, boundary: str,
                      ratio: float | None = None) -> Iterator[bytes]:
    """The multipart body in pieces of about :data:`CHUNK`: small instances are batched
    (fewer thread hops and socket writes), large ones cut CHUNK at a time; one instance is
    held at a time, so memory stays bounded by the largest instance, whatever the study."""
    first = True
    pieces: list[bytes] = []
    size_pending = 0
    for r in rows:
        stored = r["TransferSyntaxUID"]
        try:
            data = ctx.archive.read_outgoing(r)
        except OSError as exc:
            log.error("instance %s vanished while streaming: %s", r["SOPInstanceUID"], exc)
            continue
        syntax = stored
        if target not in ("*", stored) or ratio is not None:
            try:
                data = transcode(data, target, ratio)
                syntax = target
            except Exception as exc:  # noqa: BLE001 - a failed codec must not break the stream
                log.error("cannot transcode %s from %s to %s: %s", r["SOPInstanceUID"], stored, target, exc)
                continue
        pieces.append(multipart.part_head(boundary, f"{DICOM}; transfer-syntax={syntax}", first=first,
                                          headers=[("Content-Length", str(len(data)))]))
        view = memoryview(data)
        for at in range(0, len(data), CHUNK):
            piece = view[at : at + CHUNK]
            pieces.append(bytes(piece))
            size_pending += len(piece)
            if size_pending >= CHUNK:
                yield b"".join(pieces)
                pieces, size_pending = [], 0
        del data, view
        first = False
    pieces.append(multipart.closing(boundary, empty=first))
    yield b"".join(pieces)


# ------------------------------------------------------------------- metadata


def _accept_json(request: Request) -> None:
    for r in _ranges(request):
        if r.media_type in (DICOM_JSON, "application/json", "*/*", "application/*"):
            return
    raise HTTPError(406, "metadata is sent as application/dicom+json")


def retrieve_metadata(ctx: Context, request: Request, study: str, series: str | None = None,
                      sop: str | None = None) -> Response:
    _accept_json(request)
    rows = find_instances(ctx, study, series, sop)
    base = base_url(request, ctx.settings)
    threshold = ctx.settings.bulk_data_threshold
    etag, mtime = validators(rows, f"metadata:{threshold}:{base}")
    cached = not_modified(request, etag, mtime)
    if cached is not None:
        return cached
    return StreamingResponse(_stream_metadata(ctx, rows, base, threshold), media_type=DICOM_JSON,
                             headers=cache_headers(etag, mtime))


def instance_metadata(ctx: Context, row: dict[str, Any], base: str, threshold: int) -> dict[str, Any]:
    """One instance's DICOM JSON with BulkDataURIs pointing at this server, from what leaves the
    archive (:meth:`~hilum.archive.Archive.read_outgoing`: today's demographics)."""
    url = instance_url(base, row["StudyInstanceUID"], row["SeriesInstanceUID"], row["SOPInstanceUID"])
    ds, info = pixel_info(ctx.archive.read_outgoing(row))
    obj = dicomjson.dataset_to_json(ds, bulk_data_threshold=threshold,
                                    bulk_uri=lambda path: f"{url}/bulkdata/{path}")
    obj["00083002"] = {"vr": "UI", "Value": [row["TransferSyntaxUID"]]}
    if info is not None:
        vr = "OB" if info.encapsulated or info.bits_allocated <= 8 else "OW"
        obj["7FE00010"] = {"vr": vr, "BulkDataURI": f"{url}/bulkdata/7FE00010"}
    return dict(sorted(obj.items()))


def _stream_metadata(ctx: Context, rows: list[dict[str, Any]], base: str, threshold: int) -> Iterator[bytes]:
    yield b"["
    first = True
    for r in rows:
        try:
            obj = instance_metadata(ctx, r, base, threshold)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            log.error("cannot read metadata of %s: %s", r["SOPInstanceUID"], exc)
            continue
        yield (b"" if first else b",") + dumps(obj)
        first = False
    yield b"]"


# --------------------------------------------------------------------- frames


def parse_frame_list(text: str) -> list[int]:
    try:
        numbers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise HTTPError(400, f"frame list must be comma-separated numbers, got {text!r}") from None
    if not numbers or any(n < 1 for n in numbers):
        raise HTTPError(400, f"frame numbers start at 1, got {text!r}")
    return numbers


def frame_target(request: Request, stored: str) -> tuple[str, str]:
    """(part media type, transfer syntax) for frames stored in ``stored``, or 406."""
    stored_type = FRAME_MEDIA_TYPE.get(stored, OCTET)
    native = stored in UNCOMPRESSED
    for r in _ranges(request):
        if r.media_type == MULTIPART:
            pt, ts = r.part_type or OCTET, r.transfer_syntax
            if pt in ("*/*", "*"):
                pt = "*"
        elif r.media_type in ("*/*", "multipart/*"):
            pt, ts = "*", None
        elif r.media_type == OCTET or r.media_type.startswith("image/"):
            pt, ts = r.media_type, r.transfer_syntax
        else:
            continue
        if pt == "*":
            target = EVRLE if native else stored
        elif pt == "image/*":
            if native:
                continue
            target = stored
        elif pt not in DEFAULT_FRAME_SYNTAX:
            continue
        elif ts in (None, "*"):
            if pt == stored_type:
                target = EVRLE if native else stored
            else:
                target = DEFAULT_FRAME_SYNTAX[pt]
        else:
            if FRAME_MEDIA_TYPE.get(ts) != pt:
                continue
            target = ts
        if native and target in UNCOMPRESSED:
            target = EVRLE
        if can_transcode(stored if not native else EVRLE, target):
            return FRAME_MEDIA_TYPE.get(target, OCTET), target
    raise HTTPError(406, f"cannot provide frames stored as {stored} in the accepted media types")


def retrieve_frames(ctx: Context, request: Request, study: str, series: str, sop: str, frames: str) -> Response:
    numbers = parse_frame_list(frames)
    row = find_instances(ctx, study, series, sop)[0]
    return _frames_response(request, row, numbers)


def _frames_response(request: Request, row: dict[str, Any], numbers: list[int]) -> Response:
    _, info = pixel_info(row["path"])
    try:
        info = check_frames(info, numbers)
    except FrameError as exc:
        raise HTTPError(404 if "out of range" in str(exc) else 400, str(exc)) from exc
    media_type, target = frame_target(request, info.syntax)
    ratio = lossy_ratio(request) if target in RATIO_TARGETS else None
    etag, mtime = validators([row], f"frames:{numbers}:{target}:{ratio}")
    cached = not_modified(request, etag, mtime)
    if cached is not None:
        return cached
    try:
        data = frames_as(row["path"], info, numbers, target, ratio)
    except (PixelDataError, FrameError, ValueError, RuntimeError) as exc:
        raise HTTPError(406, f"cannot provide the frames in {target}: {exc}") from exc
    boundary = multipart.new_boundary()
    ctype = f"{media_type}; transfer-syntax={target}"
    body = multipart.encode(((ctype, d) for d in data), boundary)
    headers = cache_headers(etag, mtime)
    transcoded = target != info.syntax or ratio is not None
    if transcoded and is_lossy_target(target, ratio):
        headers.update(lossy_headers(achieved_ratio(info, data), target))
    return Response(body, headers=headers,
                    media_type=f'{MULTIPART}; type="{media_type}"; boundary={boundary}')


# ------------------------------------------------------------------ bulk data


def retrieve_bulkdata(ctx: Context, request: Request, study: str, series: str, sop: str, path: str) -> Response:
    row = find_instances(ctx, study, series, sop)[0]
    parts = [p for p in path.strip("/").split("/") if p]
    if parts and parts[0].upper() in ("7FE00010",) and len(parts) == 1:
        _, info = pixel_info(row["path"])
        if info is None:
            raise HTTPError(404, "the instance has no pixel data")
        return _frames_response(request, row, list(range(1, info.frames + 1)))
    try:
        # Non-pixel bulk data may be anything in the header: read what leaves the archive.
        ds = pydicom.dcmread(io.BytesIO(ctx.archive.read_outgoing(row)), stop_before_pixels=True)
        elem: Any = ds
        for i, p in enumerate(parts):
            if i % 2 == 0:
                elem = elem[Tag(int(p, 16))]
            else:
                elem = elem.value[int(p)]
        if i % 2 == 1 or not hasattr(elem, "VR"):
            raise HTTPError(400, "a bulk data path ends with a tag")
    except (KeyError, IndexError, ValueError, UnboundLocalError):
        raise HTTPError(404, f"no bulk data at {path!r}") from None
    value = elem.value
    data = value if isinstance(value, (bytes, bytearray)) else str(value).encode("utf-8")
    accepted = [r for r in _ranges(request) if r.media_type in (MULTIPART, "*/*", OCTET)
                and (r.part_type or OCTET) in (OCTET, "*/*")]
    if not accepted:
        raise HTTPError(406, "bulk data is sent as multipart/related; type=application/octet-stream")
    boundary = multipart.new_boundary()
    body = multipart.encode([(OCTET, bytes(data))], boundary)
    return Response(body, media_type=f'{MULTIPART}; type="{OCTET}"; boundary={boundary}')


# ------------------------------------------------------------------- rendered


def render_type(request: Request) -> tuple[str, bool]:
    """(image media type, multipart?) from Accept; 406 when no rendered type is acceptable."""
    for r in _ranges(request):
        if r.media_type == MULTIPART:
            pt = r.part_type or "image/jpeg"
            if pt in RENDER_TYPES:
                return pt, True
        elif r.media_type in RENDER_TYPES:
            return r.media_type, False
        elif r.media_type in ("*/*", "image/*"):
            return "image/jpeg", False
    raise HTTPError(406, f"rendered images are {', '.join(RENDER_TYPES)}")


def retrieve_rendered(ctx: Context, request: Request, study: str, series: str | None = None,
                      sop: str | None = None, frames: str | None = None, *, thumbnail: bool = False) -> Response:
    query = query_dict(request)
    try:
        params = parse_params(query)
    except RenderParamError as exc:
        raise HTTPError(400, str(exc)) from exc
    if thumbnail and params.viewport is None:
        params.viewport = Viewport(128, 128)
    media_type, as_multipart = render_type(request)
    numbers = parse_frame_list(frames) if frames else [1]
    rows = find_instances(ctx, study, series, sop)
    if as_multipart and sop is None:
        chosen = rows
    else:
        chosen = [rows[0] if sop is not None else representative(rows)]
    variant = f"rendered:{media_type}:{as_multipart}:{sorted(query.items())}:{numbers}"
    etag, mtime = validators(chosen, variant)
    cached = not_modified(request, etag, mtime)
    if cached is not None:
        return cached
    images = []
    for r in chosen:
        for n in (numbers if sop is not None else [1]):
            try:
                images.append(render(r["path"], n - 1, params, media_type,
                                     single_frame=(r.get("NumberOfFrames") or 1) <= 1))
            except FrameIndexError as exc:
                raise HTTPError(404, str(exc)) from exc
            except PixelDataError as exc:
                if len(chosen) > 1:
                    continue  # a non-image in a rendered series is left out
                raise HTTPError(400, f"cannot render: {exc}") from exc
    if not images:
        raise HTTPError(400, "nothing renderable")
    headers = cache_headers(etag, mtime)
    if not as_multipart:
        return Response(images[0], media_type=media_type, headers=headers)
    boundary = multipart.new_boundary()
    return Response(multipart.encode(((media_type, im) for im in images), boundary), headers=headers,
                    media_type=f'{MULTIPART}; type="{media_type}"; boundary={boundary}')
