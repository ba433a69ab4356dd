"""The DICOMweb server (PS3.18) as a Starlette application.

Rooted at ``/dicom-web`` (QIDO-RS, WADO-RS, STOW-RS) and ``/wado``
(WADO-URI), as Orthanc and most clients expect, plus ``POST /auth/token``
for bearer tokens, and the web viewer (OHIF) at ``/viewer`` with its sign-in
page and links to one study (:mod:`.viewer`).  Routes are thin: they translate HTTP to archive calls
(:mod:`.qido`, :mod:`.wado`, :mod:`.stow`, :mod:`.wado_uri`).

Middleware, outermost first: CORS (when ``[web] cors_origins`` is set),
gzip for JSON (multipart and images excluded: they are incompressible or
already compressed), authentication (:mod:`.auth`).  Errors: 400 for bad
parameters, 404 for unknown UIDs, 406 for unsatisfiable Accept headers,
415 for unsupported uploads, 429 for a locked login (see :mod:`.throttle`);
an unexpected exception is logged (with a bounded traceback) and answered
500, never a dropped connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hilum.archive import Archive
from hilum.archive.metrics import metrics_for
from hilum.archive.users import StudyLinks, UserError, UserStore
from hilum.dicom.pixels import PixelDataError
from hilum.dicomweb import metrics_route, qido, stow, viewer, wado, wado_uri
from hilum.dicomweb.auth import Authenticator, AuthMiddleware, current_user, is_viewer_request
from hilum.dicomweb.common import (
    ROOT,
    Context,
    HTTPError,
    audit,
    brief_traceback,
    context,
    error_response,
    json_response,
)
from hilum.dicomweb.settings import WebSettings
from hilum.dicomweb.throttle import Clock
from hilum.errors import NotFound

log = logging.getLogger(__name__)

_NOT_COMPRESSED = (*DEFAULT_EXCLUDED_CONTENT_TYPES, "multipart/*", "application/dicom", "application/octet-stream")


def _p(request: Request, name: str) -> str:
    return str(request.path_params[name])


# --------------------------------------------------------------------- QIDO


def _for_viewer(request: Request, response: Response) -> Response:
    """The web viewer's QIDO-RS answers without what OHIF cannot read (:func:`viewer.viewer_safe_results`)."""
    return viewer.patch_for_viewer(response) if is_viewer_request(request) else response


def search_studies(request: Request) -> Response:
    return _for_viewer(request, qido.search(context(request), request, "STUDY"))


def search_series(request: Request) -> Response:
    return _for_viewer(request, qido.search(context(request), request, "SERIES",
                                            study=request.path_params.get("study")))


def search_instances(request: Request) -> Response:
    return _for_viewer(request, qido.search(context(request), request, "IMAGE",
                                            study=request.path_params.get("study"),
                                            series=request.path_params.get("series")))


# --------------------------------------------------------------------- WADO-RS


def _audit_read(request: Request, response: Response, what: str) -> Response:
    """A successful WADO read: "DICOM Instances Transferred" (this node the source, the user the
    destination), one event per user, client, study and kind of read in
    :attr:`~hilum.archive.audit.AuditLog.coalesce_window` seconds (a viewer's hundreds of frame requests
    are one event; ``instances`` counts the instances asked for by instance)."""
    if response.status_code < 400:
        pp = request.path_params
        study = str(pp.get("study") or "")
        ctx = context(request)
        user = request.scope.get("state", {}).get("user")
        name = str(getattr(user, "name", "") or "anonymous")
        client = request.client.host if request.client is not None else ""
        n = 1 if pp.get("instance") else 0
        audit(ctx, request, "DICOM Instances Transferred", action="R", role="destination",
              study_uids=(study,) if study else (), instances=n, detail=f"WADO {what}",
              coalesce=(name, client, study, what))
    return response


def get_instances(request: Request) -> Response:
    pp = request.path_params
    return _audit_read(request, wado.retrieve_instances(context(request), request, pp["study"], pp.get("series"),
                                                        pp.get("instance")), "instances")


def get_metadata(request: Request) -> Response:
    pp = request.path_params
    return _audit_read(request, wado.retrieve_metadata(context(request), request, pp["study"], pp.get("series"),
                                                       pp.get("instance")), "metadata")


def get_frames(request: Request) -> Response:
    pp = request.path_params
    return _audit_read(request, wado.retrieve_frames(context(request), request, pp["study"], pp["series"],
                                                     pp["instance"], pp["frames"]), "frames")


def get_bulkdata(request: Request) -> Response:
    pp = request.path_params
    return _audit_read(request, wado.retrieve_bulkdata(context(request), request, pp["study"], pp["series"],
                                                       pp["instance"], pp["path"]), "bulkdata")


def get_rendered(request: Request) -> Response:
    pp = request.path_params
    return _audit_read(request, wado.retrieve_rendered(context(request), request, pp["study"], pp.get("series"),
                                                       pp.get("instance"), pp.get("frames")), "rendered")


def get_thumbnail(request: Request) -> Response:
    pp = request.path_params
    return _audit_read(request, wado.retrieve_rendered(context(request), request, pp["study"], pp.get("series"),
                                                       pp.get("instance"), pp.get("frames"), thumbnail=True),
                       "thumbnail")


# --------------------------------------------------------------------- STOW, WADO-URI, auth


async def post_studies(request: Request) -> Response:
    return await stow.store(context(request), request, request.path_params.get("study"))


def get_wado_uri(request: Request) -> Response:
    response = wado_uri.wado_uri(context(request), request)
    if response.status_code < 400:
        q = request.query_params
        study = q.get("studyUID", "")
        audit(context(request), request, "DICOM Instances Transferred", action="R", role="destination",
              study_uids=(study,) if study else (), instances=1, detail="WADO-URI",
              coalesce=(str(getattr(request.scope.get("state", {}).get("user"), "name", "")),
                        request.client.host if request.client else "", study, "wado-uri"))
    return response


def post_token(request: Request) -> Response:
    ctx = context(request)
    user = current_user(request)
    hours = ctx.settings.token_hours
    try:
        token = ctx.users.issue_token(user.name, ttl=timedelta(hours=hours), label="auth/token")
    except UserError as exc:
        raise HTTPError(403, str(exc)) from exc
    audit(ctx, request, "User Authentication", action="E", event_type="Login", detail="bearer token issued (auth/token)")
    return json_response({"access_token": token, "token_type": "Bearer", "expires_in": int(hours * 3600)},
                         media_type="application/json", headers={"Cache-Control": "no-store"})


# --------------------------------------------------------------------- errors


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.detail)
    else:
        log.info("%s %s → %d: %s", request.method, request.url.path, exc.status, exc.detail)
    return error_response(exc.status, exc.detail, exc.headers)


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(404, str(exc))


async def _pixel_error(request: Request, exc: Exception) -> Response:
    return error_response(400, str(exc))


async def _unexpected(request: Request, exc: Exception) -> Response:
    # A short traceback: a RecursionError's full one is thousands of lines (see common.brief_traceback).
    log.error("%s %s failed: %s", request.method, request.url.path, brief_traceback(exc))
    return error_response(500, f"internal error: {type(exc).__name__}")


# --------------------------------------------------------------------- app


def routes() -> list[Route]:
    s = ROOT + "/studies/{study}"
    se = s + "/series/{series}"
    i = se + "/instances/{instance}"
    return [
        Route(ROOT + "/studies", search_studies, methods=["GET"]),
        Route(ROOT + "/studies", post_studies, methods=["POST"]),
        Route(ROOT + "/series", search_series, methods=["GET"]),
        Route(ROOT + "/instances", search_instances, methods=["GET"]),
        Route(s, get_instances, methods=["GET"]),
        Route(s, post_studies, methods=["POST"]),
        Route(s + "/metadata", get_metadata, methods=["GET"]),
        Route(s + "/rendered", get_rendered, methods=["GET"]),
        Route(s + "/thumbnail", get_thumbnail, methods=["GET"]),
        Route(s + "/series", search_series, methods=["GET"]),
        Route(s + "/instances", search_instances, methods=["GET"]),
        Route(se, get_instances, methods=["GET"]),
        Route(se + "/metadata", get_metadata, methods=["GET"]),
        Route(se + "/rendered", get_rendered, methods=["GET"]),
        Route(se + "/thumbnail", get_thumbnail, methods=["GET"]),
        Route(se + "/instances", search_instances, methods=["GET"]),
        Route(i, get_instances, methods=["GET"]),
        Route(i + "/metadata", get_metadata, methods=["GET"]),
        Route(i + "/rendered", get_rendered, methods=["GET"]),
        Route(i + "/thumbnail", get_thumbnail, methods=["GET"]),
        Route(i + "/frames/{frames}", get_frames, methods=["GET"]),
        Route(i + "/frames/{frames}/rendered", get_rendered, methods=["GET"]),
        Route(i + "/frames/{frames}/thumbnail", get_thumbnail, methods=["GET"]),
        Route(i + "/bulkdata/{path:path}", get_bulkdata, methods=["GET"]),
        Route("/wado", get_wado_uri, methods=["GET"]),
        Route("/auth/token", post_token, methods=["POST"]),
    ]


def create_app(archive: Archive, settings: WebSettings | None = None, *, loopback: bool = True,
               users: UserStore | None = None, clock: Clock = time.monotonic) -> Starlette:
    """The ASGI application serving ``archive``.

    ``loopback`` says whether the server only listens on a loopback address
    (it decides, with ``settings.anonymous``, whether anonymous reading is allowed).
    ``clock`` drives login lockouts and the has-users cache (tests inject one).
    """
    settings = settings or WebSettings()
    users = users or UserStore.of(archive, max_concurrent_hashes=settings.login_concurrency,
                                  hash_wait=settings.login_wait_seconds)
    middleware = []
    if settings.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type", "If-None-Match", "If-Modified-Since"],
            expose_headers=["ETag", "Last-Modified", "Warning", "Content-Location"],
            allow_credentials="*" not in settings.cors_origins, max_age=600))
    middleware.append(Middleware(GZipMiddleware, minimum_size=settings.gzip_min_size, compresslevel=5,
                                 exclude_content_types=_NOT_COMPRESSED))
    links = StudyLinks(archive.data_dir)
    authenticator = Authenticator(users, settings, loopback=loopback, clock=clock, links=links)
    authenticator.audit = archive.audit
    middleware.append(Middleware(AuthMiddleware, authenticator=authenticator))
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        HTTPError: _http_error,
        NotFound: _not_found,
        PixelDataError: _pixel_error,
        Exception: _unexpected,
    }
    all_routes = routes()
    if settings.viewer:
        all_routes += viewer.WebViewer(settings, authenticator, links).routes()
    # issue 22: /metrics (admins; see metrics_route) and the count of HTTP requests, outermost
    all_routes.append(Route(metrics_route.PATH, metrics_route.get_metrics, methods=["GET"]))
    middleware.insert(0, Middleware(metrics_route.CountRequests, metrics=metrics_for(archive)))
    app = Starlette(routes=all_routes, middleware=middleware, exception_handlers=handlers)
    app.state.ctx = Context(archive=archive, settings=settings, users=users)
    return app
