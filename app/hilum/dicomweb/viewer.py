"""The web viewer served by the node: OHIF's prebuilt files at ``/viewer``, behind the node's users.

``hilum serve`` serves the OHIF viewer (``@ohif/app``, its prebuilt ``dist/``
as pinned and checked by ``installer/fetch_viewer.py``; or ``[web]
viewer_dir``) on the same origin as its DICOMweb service, so the browser's
requests need no CORS and carry the viewer's cookies:

* ``/viewer/app-config.js`` is generated here: one DICOMweb data source,
  ``/dicom-web`` on the page's own origin (QIDO-RS, WADO-RS with bulk data
  URIs), the router under ``/viewer``; nothing is fetched from elsewhere.
* ``/viewer/login`` (GET: the form; POST ``name`` + ``password``) signs in
  with the node's users — the same throttled password check as HTTP Basic
  (:class:`~hilum.dicomweb.auth.Authenticator`) — and sets the session
  cookie ``hilum_session`` (HttpOnly, SameSite=Strict, Secure under TLS;
  ``[web] session_hours``), which :mod:`.auth` accepts for reading only.
  ``POST /viewer/logout`` revokes it.
* ``/viewer/link/{token}`` opens a time-limited, read-only link to one study
  (:class:`~hilum.archive.users.StudyLinks`): it sets the ``hilum_link``
  cookie (until the link expires) and opens OHIF on that study.  The holder
  reads that study only (:func:`~hilum.dicomweb.auth.link_allows`).
* Every other path under ``/viewer`` is a static file of OHIF's, or else
  OHIF's page (its router handles ``/viewer/viewer?StudyInstanceUIDs=…``);
  the page itself is shown only to a signed-in user, a link holder, or
  anyone when anonymous reading is allowed — others are sent to the sign-in
  page.  The static files hold no patient data and are served to anyone.

OHIF 3.13's study list throws on a study whose ModalitiesInStudy is empty
(``{"vr":"CS"}``, valid PS3.18 F.2 JSON that Orthanc sends too: its
``getModalities`` reads ``ModalitiesInStudy.Value.length``).
:func:`viewer_safe_results` leaves such empty attributes out of QIDO-RS
answers to the viewer's requests only; every other client gets the standard
answer unchanged.
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import socket
import sys
import threading
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from hilum.archive.users import StudyLinks, UserError
from hilum.dicomweb.auth import LINK_COOKIE, SESSION_COOKIE, VIEWER_PREFIX, Authenticator, Outcome, parse_cookies
from hilum.dicomweb.settings import WebSettings

log = logging.getLogger(__name__)

OHIF_PACKAGE = "@ohif/app"
MAX_FORM_BYTES = 8192
_EMPTY_NOT_FOR_VIEWER = ("00080061",)  # ModalitiesInStudy: OHIF reads .Value.length without a check
_NO_STORE = {"Cache-Control": "no-store"}
_STATIC_CACHE = {"Cache-Control": "public, max-age=3600"}
_TEXT_TYPES = {".js": "application/javascript", ".css": "text/css", ".json": "application/json",
               ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml", ".map": "application/json",
               ".txt": "text/plain; charset=utf-8", ".wasm": "application/wasm"}  # fmt: skip
"""Static files sent gzip-compressed (from :meth:`WebViewer._gzipped`'s cache) to browsers that accept it."""
GZIP_CACHE_BYTES = 64 << 20
# OHIF's build puts itself at "/": webpack's runtime (in the app and in each web worker's bundle) loads chunks
# from a public path fixed at build time, and the PWA manifest names its icons from "/".  Served at /viewer,
# these few strings are rewritten as the files go out (the files on disk stay as the registry's tarball has them).
_REWRITES: dict[str, tuple[tuple[bytes, bytes], ...]] = {
    ".js": ((b'__webpack_require__.p = "/";', f'__webpack_require__.p = "{VIEWER_PREFIX}/";'.encode()),),
    ".json": ((b'"/assets/', f'"{VIEWER_PREFIX}/assets/'.encode()),),
    ".css": ((b"url(/", f"url({VIEWER_PREFIX}/".encode()),),
}


# --------------------------------------------------------------------- where things are


def default_viewer_dirs() -> list[Path]:
    """Where setup puts OHIF's prebuilt files: the virtualenv's ``npm/node_modules/@ohif/app/dist``."""
    rel = Path("npm/node_modules") / OHIF_PACKAGE / "dist"
    out = [Path(sys.prefix) / rel]
    project = Path(__file__).resolve().parents[3]  # app/hilum/dicomweb/viewer.py → the checkout
    out.append(project / ".venv" / rel)
    return out


def viewer_dir(settings: WebSettings) -> Path | None:
    """The folder of OHIF's ``index.html``, or None when the viewer is not installed."""
    candidates = [Path(settings.viewer_dir).expanduser()] if settings.viewer_dir else default_viewer_dirs()
    for c in candidates:
        if (c / "index.html").is_file():
            return c.resolve()
    return None


def node_base_url(bind: str, port: int, settings: WebSettings) -> str:
    """The URL a person's browser reaches this node's web service at (for links the workstation hands out)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = bind or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = socket.getfqdn() or socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.tls else "http"
    return f"{scheme}://{host}:{port}"


def study_viewer_path(study_uid: str) -> str:
    """OHIF's route showing one study (its basic viewer mode)."""
    return f"{VIEWER_PREFIX}/viewer?{urlencode({'StudyInstanceUIDs': study_uid})}"


def link_path(token: str) -> str:
    return f"{VIEWER_PREFIX}/link/{token}"


# --------------------------------------------------------------------- the study list fix


def viewer_safe_results(results: list[Any]) -> list[Any]:
    """QIDO-RS results without the empty attributes OHIF cannot read (viewer requests only)."""
    for r in results:
        if isinstance(r, dict):
            for tag in _EMPTY_NOT_FOR_VIEWER:
                attr = r.get(tag)
                if isinstance(attr, dict) and not attr.get("Value"):
                    del r[tag]
    return results


def patch_for_viewer(response: Response) -> Response:
    """The same QIDO-RS answer with :func:`viewer_safe_results` applied (headers kept)."""
    if response.status_code != 200:
        return response
    try:
        results = json.loads(bytes(response.body))
    except (ValueError, UnicodeDecodeError):
        return response
    if not isinstance(results, list):
        return response
    body = json.dumps(viewer_safe_results(results), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return Response(body, status_code=200, headers=headers, media_type=response.media_type)


# --------------------------------------------------------------------- pages


def app_config_js(settings: WebSettings) -> str:
    """OHIF's ``window.config``: one DICOMweb data source on this origin (or ``public_url``)."""
    origin = json.dumps(settings.public_url.rstrip("/")) if settings.public_url else "window.location.origin"
    return f"""/* Generated by Hilum (hilum.dicomweb.viewer): OHIF reads this node's DICOMweb, same origin. */
(function () {{
  var origin = {origin};
  var root = origin + '/dicom-web';
  window.config = {{
    name: 'hilum',
    routerBasename: '{VIEWER_PREFIX}',
    extensions: [],
    modes: [],
    customizationService: {{}},
    showStudyList: true,
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    groupEnabledModesFirst: true,
    investigationalUseDialog: {{ option: 'never' }},
    maxNumRequests: {{ interaction: 100, thumbnail: 5, prefetch: 10 }},
    showErrorDetails: 'production',
    defaultDataSourceName: 'hilum',
    dataSources: [
      {{
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'hilum',
        configuration: {{
          friendlyName: 'Hilum',
          name: 'hilum',
          wadoUriRoot: origin + '/wado',
          qidoRoot: root,
          wadoRoot: root,
          qidoSupportsIncludeField: true,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          staticWado: false,
          singlepart: 'bulkdata,video',
          bulkDataURI: {{ enabled: true, relativeResolution: 'studies' }},
          omitQuotationForMultipartRequest: true,
          dicomUploadEnabled: false,
        }},
      }},
    ],
  }};
}})();
"""


_STYLE = """body{margin:0;background:#090c29;color:#e7f0ff;font:15px/1.4 system-ui,sans-serif;display:flex;
min-height:100vh;align-items:center;justify-content:center}form{background:#141a3d;padding:28px 32px;
border-radius:8px;width:300px;box-shadow:0 4px 24px #0008}h1{font-size:20px;margin:0 0 16px}label{display:block;
margin:10px 0 4px}input{width:100%;box-sizing:border-box;padding:8px;border-radius:4px;border:1px solid #3a4a8a;
background:#0b1030;color:#fff}button{margin-top:18px;width:100%;padding:9px;border:0;border-radius:4px;
background:#5acce6;color:#061024;font-weight:600;cursor:pointer}.err{color:#ff9a9a;margin:8px 0 0}
.note{color:#9fb3d9;font-size:13px;margin-top:14px}"""


def login_page(next_path: str, error: str = "", name: str = "") -> str:
    err = f'<p class="err" id="login-error" role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Hilum — sign in</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_STYLE}</style></head><body>
<form method="post" action="{VIEWER_PREFIX}/login" id="login-form" autocomplete="on">
<h1>Hilum web viewer</h1>
<label for="name">User name</label><input id="name" name="name" autocomplete="username" required autofocus
 value="{html.escape(name)}">
<label for="password">Password</label><input id="password" name="password" type="password"
 autocomplete="current-password" required>
<input type="hidden" name="next" value="{html.escape(next_path)}">
{err}<button type="submit" id="sign-in">Sign in</button>
<p class="note">The node's own users (<code>hilum users add</code>).</p>
</form></body></html>"""


def _message_page(title: str, text: str, status: int) -> HTMLResponse:
    body = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><form><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
        f'<p class="note"><a style="color:#5acce6" href="{VIEWER_PREFIX}/login">Sign in</a></p></form>'
        "</body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=_NO_STORE)


def _session_bar(label: str, signed_in: bool) -> str:
    """A small fixed bar over OHIF's page: who is reading, and Sign out."""
    out = ""
    if signed_in:
        out = (
            f'<form method="post" action="{VIEWER_PREFIX}/logout" style="display:inline;margin:0">'
            '<button id="hilum-sign-out" type="submit" style="margin-left:8px;background:#5acce6;border:0;'
            'border-radius:3px;padding:1px 8px;cursor:pointer;font:inherit">Sign out</button></form>'
        )
    return (
        '<div id="hilum-session" style="position:fixed;right:8px;bottom:6px;z-index:100000;font:12px '
        'system-ui,sans-serif;color:#cfe3ff;background:#0009;padding:3px 8px;border-radius:4px">'
        f"{html.escape(label)}{out}</div>"
    )


def rewrite_index(text: str, bar: str) -> str:
    """OHIF's ``index.html`` rooted at ``/viewer/`` (its build assumes ``/``), with the session bar."""
    text = text.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{VIEWER_PREFIX}/"')
    text = text.replace('src="/', f'src="{VIEWER_PREFIX}/').replace('href="/', f'href="{VIEWER_PREFIX}/')
    return text.replace("</body>", bar + "</body>", 1)


def _safe_next(value: str | None) -> str:
    """Only a path of the viewer's own (no open redirect)."""
    if not value or not value.startswith(VIEWER_PREFIX) or value.startswith("//") or "\\" in value:
        return VIEWER_PREFIX + "/"
    if any(c in value for c in "\r\n"):
        return VIEWER_PREFIX + "/"
    rest = value[len(VIEWER_PREFIX) :]
    if rest and not rest.startswith(("/", "?")):
        return VIEWER_PREFIX + "/"
    return value


# --------------------------------------------------------------------- the routes


class WebViewer:
    """The ``/viewer`` routes of one DICOMweb app (see the module's docstring)."""

    def __init__(self, settings: WebSettings, authenticator: Authenticator, links: StudyLinks):
        self.settings = settings
        self.auth = authenticator
        self.links = links
        self.dir = viewer_dir(settings)
        self._index: str | None = None
        self._rewritten: dict[Path, tuple[tuple[int, int], bytes | None]] = {}  # by (mtime, size)
        self._gz: OrderedDict[Path, tuple[tuple[int, int], bytes]] = OrderedDict()
        self._gz_bytes = 0
        self._gz_lock = threading.Lock()
        if self.dir is None:
            log.warning(
                "the web viewer's files are not installed (run installer/setup.sh, or set [web] viewer_dir):"
                " /viewer answers 503"
            )

    def routes(self) -> list[Route]:
        v = VIEWER_PREFIX
        return [
            Route(v, self.root, methods=["GET"]),
            Route(v + "/login", self.login_form, methods=["GET"]),
            Route(v + "/login", self.login, methods=["POST"]),
            Route(v + "/logout", self.logout, methods=["POST"]),
            Route(v + "/link/{token}", self.open_link, methods=["GET"]),
            Route(v + "/app-config.js", self.app_config, methods=["GET"]),
            Route(v + "/{path:path}", self.page_or_file, methods=["GET", "HEAD"]),
        ]

    # -- helpers

    def _cookie(self, request: Request, response: Response, name: str, value: str, max_age: int) -> None:
        secure = self.settings.tls or request.url.scheme == "https"
        response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict", secure=secure)

    async def _who(self, request: Request) -> Outcome:
        cookies = parse_cookies(request.scope)
        if cookies.get(SESSION_COOKIE) or cookies.get(LINK_COOKIE):
            outcome = await self.auth.cookie_outcome(cookies)
            if outcome.user is not None:
                return outcome
        if await anyio.to_thread.run_sync(self.auth.anonymous_read_allowed):
            return Outcome(None, "anonymous")
        return Outcome(None, "no credentials")

    def _index_html(self) -> str:
        if self._index is None:
            assert self.dir is not None
            self._index = (self.dir / "index.html").read_text(encoding="utf-8")
        return self._index

    def _rewrite(self, path: Path) -> bytes | None:
        rules = _REWRITES.get(path.suffix)
        if not rules:
            return None
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._rewritten.get(path)
        if hit is None or hit[0] != stamp:
            data = path.read_bytes()
            changed = data
            for old, new in rules:
                changed = changed.replace(old, new)
            hit = self._rewritten[path] = (stamp, changed if changed != data else None)
        return hit[1]

    async def _static(self, path: Path, request: Request) -> Response:
        media = _TEXT_TYPES.get(path.suffix)
        if media is not None and "gzip" in request.headers.get("accept-encoding", "").lower():
            body = await anyio.to_thread.run_sync(self._gzipped, path)
            headers = {**_STATIC_CACHE, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
            return Response(body, media_type=media, headers=headers)
        data = await anyio.to_thread.run_sync(self._rewrite, path) if path.suffix in _REWRITES else None
        if data is None:
            return FileResponse(path, headers=_STATIC_CACHE)
        return Response(data, media_type=media, headers=_STATIC_CACHE)

    def _gzipped(self, path: Path) -> bytes:
        """The file (rewritten where it must be) gzip-compressed once, then from memory: OHIF's 17 MB of
        JavaScript cost ~0.25 s of CPU per request through the gzip middleware.  Kept while the file's
        mtime and size are unchanged, up to :data:`GZIP_CACHE_BYTES` (least recently used first out)."""
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        with self._gz_lock:
            hit = self._gz.get(path)
            if hit is not None and hit[0] == stamp:
                self._gz.move_to_end(path)
                return hit[1]
        raw = self._rewrite(path) if path.suffix in _REWRITES else None
        body = gzip.compress(raw if raw is not None else path.read_bytes(), compresslevel=6, mtime=0)
        with self._gz_lock:
            old = self._gz.pop(path, None)
            self._gz_bytes -= len(old[1]) if old else 0
            if len(body) <= GZIP_CACHE_BYTES:
                self._gz[path] = (stamp, body)
                self._gz_bytes += len(body)
            while self._gz_bytes > GZIP_CACHE_BYTES and self._gz:
                _, (_, gone) = self._gz.popitem(last=False)
                self._gz_bytes -= len(gone)
        return body

    # -- routes

    async def root(self, request: Request) -> Response:
        return RedirectResponse(VIEWER_PREFIX + "/", status_code=307)

    async def login_form(self, request: Request) -> Response:
        nxt = _safe_next(request.query_params.get("next"))
        return HTMLResponse(login_page(nxt), headers=_NO_STORE)

    async def login(self, request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return _message_page("Sign-in refused", "The form is too large.", 413)
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        name, password = form.get("name", "").strip(), form.get("password", "")
        nxt = _safe_next(form.get("next"))
        if not name or not password:
            return HTMLResponse(login_page(nxt, "Enter a user name and a password.", name), 400, headers=_NO_STORE)
        client = (request.scope.get("client") or ("?", 0))[0]
        outcome = await self.auth.password_login(name, password, client)
        if outcome.user is None:
            log.warning("viewer sign-in of %r from %s refused: %s", name[:64], client, outcome.reason)
            text = outcome.reason if outcome.status != 401 else "Wrong user name or password."
            return HTMLResponse(login_page(nxt, text, name), outcome.status, headers={**_NO_STORE, **outcome.headers})
        user = outcome.user
        if not user.can("read"):
            return HTMLResponse(login_page(nxt, "This user may not read studies.", name), 403, headers=_NO_STORE)
        ttl = timedelta(hours=self.settings.session_hours)
        try:
            token = await anyio.to_thread.run_sync(
                lambda: self.auth.users.issue_token(user.name, ttl=ttl, label="viewer session")
            )
        except UserError as exc:
            return HTMLResponse(login_page(nxt, str(exc), name), 403, headers=_NO_STORE)
        log.info("viewer sign-in of %s from %s", user.name, client)
        response = RedirectResponse(nxt, status_code=303, headers=_NO_STORE)
        self._cookie(request, response, SESSION_COOKIE, token, int(ttl.total_seconds()))
        return response

    async def logout(self, request: Request) -> Response:
        token = parse_cookies(request.scope).get(SESSION_COOKIE)
        if token:
            await anyio.to_thread.run_sync(self.auth.users.revoke_token, token)
        response = RedirectResponse(VIEWER_PREFIX + "/login", status_code=303, headers=_NO_STORE)
        for name in (SESSION_COOKIE, LINK_COOKIE):
            response.delete_cookie(name, path="/", httponly=True, samesite="strict")
        return response

    async def open_link(self, request: Request) -> Response:
        token = str(request.path_params["token"])
        grant = self.links.verify(token)
        if grant is None:
            return _message_page(
                "Link not valid",
                "This link has expired, was revoked, or is not a link of this node. Ask for a new one, or sign in.",
                401,
            )
        target = study_viewer_path(grant.study_uid)
        # A page that moves on by itself rather than a redirect: a SameSite=Strict cookie set while following a
        # link from another site (an e-mail, a chat) is only sent on the next, same-site navigation.
        body = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Hilum — opening study</title>'
            f'<meta http-equiv="refresh" content="0;url={html.escape(target)}"><style>{_STYLE}</style></head>'
            f'<body><form><h1>Opening the study…</h1><p><a style="color:#5acce6" id="open-study" '
            f'href="{html.escape(target)}">Open it</a> (read only, until '
            f"{grant.expires_at.strftime('%Y-%m-%d %H:%M')} UTC)</p></form></body></html>"
        )
        response = HTMLResponse(body, headers=_NO_STORE)
        left = int((grant.expires_at - datetime.now(UTC)).total_seconds())
        self._cookie(request, response, LINK_COOKIE, token, max(left, 1))
        return response

    async def app_config(self, request: Request) -> Response:
        return Response(app_config_js(self.settings), media_type="application/javascript", headers=_NO_STORE)

    async def page_or_file(self, request: Request) -> Response:
        if self.dir is None:
            return _message_page(
                "Web viewer not installed",
                "Run installer/setup.sh on the node (it fetches the "
                "OHIF viewer with npm), or set [web] viewer_dir in hilum.toml.",
                503,
            )
        rel = str(request.path_params.get("path", ""))
        if rel and rel != "index.html":
            path = (self.dir / rel).resolve()
            if path.is_relative_to(self.dir) and path.is_file():
                return await self._static(path, request)
            if "." in rel.rsplit("/", 1)[-1]:  # a file OHIF does not have; anything else is one of its routes
                return Response("not found", status_code=404, media_type="text/plain")
        who = await self._who(request)
        if who.user is None and who.reason != "anonymous":
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(
                f"{VIEWER_PREFIX}/login?next={quote(target, safe='')}", status_code=303, headers=_NO_STORE
            )
        if who.link is not None:
            label = f"Read-only link to one study, until {who.link.expires_at.strftime('%Y-%m-%d %H:%M')} UTC"
            if not rel.startswith("viewer"):  # the link holder has no study list: straight to their study
                return RedirectResponse(study_viewer_path(who.link.study_uid), status_code=303, headers=_NO_STORE)
            bar = _session_bar(label, signed_in=False)
        elif who.user is not None:
            bar = _session_bar(f"Signed in as {who.user.name}", signed_in=True)
        else:
            bar = ""
        return HTMLResponse(rewrite_index(self._index_html(), bar), headers=_NO_STORE)


def link_url(base: str, token: str) -> str:
    return base.rstrip("/") + link_path(token)


class WebViewerLinks:
    """The workstation's side (Qt-free): the web viewer's URL for a study, and links to share.

    ``base_url`` is where a browser reaches this node's web service
    (:func:`node_base_url`); links are signed with the node's key in
    ``data_dir`` (:class:`~hilum.archive.users.StudyLinks`), so the node
    serving that data folder accepts them.
    """

    def __init__(self, base_url: str, links: StudyLinks, *, minutes: float = 1440.0, issuer: str = "workstation"):
        self.base_url = base_url.rstrip("/")
        self.links = links
        self.minutes = minutes
        self.issuer = issuer

    @classmethod
    def from_config(cls, cfg: Any) -> WebViewerLinks | None:
        """For the node a :class:`~hilum.config.Config` describes; None when its web service or viewer is off."""
        settings = WebSettings.from_config(cfg)
        if not settings.enabled or not settings.viewer:
            return None
        base = node_base_url(cfg.bind, cfg.web_port, settings)
        return cls(base, StudyLinks(cfg.data_dir), minutes=settings.link_minutes)

    def open_url(self, study_uid: str) -> str:
        """OHIF on this study (the browser signs in first when it has no session)."""
        return self.base_url + study_viewer_path(study_uid)

    def share(self, study_uid: str) -> tuple[str, datetime]:
        """A new read-only link to this study and when it expires."""
        token = self.links.issue(study_uid, minutes=self.minutes, issuer=self.issuer)
        grant = self.links.verify(token)
        assert grant is not None
        return link_url(self.base_url, token), grant.expires_at
