"""Authentication and authorisation of DICOMweb requests (an ASGI middleware).

Credentials: HTTP Basic (RFC 7617) or a bearer token (RFC 6750) from
``POST /auth/token`` or ``hilum users token NAME``.  Permissions by role
(:mod:`hilum.archive.users`): reading (GET/HEAD: QIDO-RS, WADO-RS, WADO-URI)
needs ``read``, storing (POST to ``/dicom-web``: STOW-RS) needs ``write``.
Anonymous reading follows ``[web] anonymous`` (see :mod:`.settings`).

Every denied request is logged (method, path, client address, user, reason)
at WARNING — never the password or token.  Answers: 401 with a
``WWW-Authenticate`` challenge when credentials are missing or wrong, 403 when
the user may not do this.

Password guessing (issue 13): a Basic password is checked only when the
:class:`~hilum.dicomweb.throttle.LoginThrottle` allows it — otherwise 429
Too Many Requests with ``Retry-After``, no hash computed — and at most
``[web] login_concurrency`` argon2 checks run at once; a login that waits
``login_wait_seconds`` for a slot gets 503 with ``Retry-After``.  The wait is
on the event loop (an anyio semaphore), not in a worker thread, so a burst
of guesses neither holds the thread pool that serves every other request
nor grows memory by one 64 MiB hash per guess.  A password verified
recently (the store's cache) is accepted without a slot.

The web viewer (issue 18, :mod:`.viewer`): its sign-in page sets an HttpOnly,
SameSite=Strict session cookie (``hilum_session``, a token of the user's
with ``[web] session_hours`` to live), accepted here for *reading* only
(GET/HEAD) — a cookie never authorises a write, so a forged cross-site form
cannot store anything.  A link to one study (``hlk_…``, see
:class:`~hilum.archive.users.StudyLinks`), as the ``hilum_link`` cookie or a
bearer token, lets its holder read that study and nothing else: a QIDO-RS
search must name the study (``StudyInstanceUID=``), WADO-RS paths must be
under ``/studies/{that study}``; anything else is 403, and 401 once expired.
Requests under ``/viewer`` are not checked here: the viewer's routes gate
its page themselves (its static files hold no patient data).  A refusal of a
browser's request (a cookie, or a page of the viewer as Referer) challenges
with ``HilumSession`` rather than ``Basic``, so the browser shows no password
dialog of its own over the viewer.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from hilum.archive.users import ANONYMOUS_READER, LINK_PREFIX, LoginBusy, StudyLink, StudyLinks, User, UserStore
from hilum.dicomweb.settings import WebSettings
from hilum.dicomweb.throttle import Clock, LoginThrottle, Refusal, ThrottlePolicy

log = logging.getLogger(__name__)

REALM = "Hilum DICOMweb"
_WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})
SESSION_COOKIE = "hilum_session"
LINK_COOKIE = "hilum_link"
VIEWER_PREFIX = "/viewer"
DICOMWEB_ROOT = "/dicom-web"
_SEARCHES = frozenset({DICOMWEB_ROOT + "/studies", DICOMWEB_ROOT + "/series", DICOMWEB_ROOT + "/instances"})
_STUDY_KEYS = frozenset({"studyinstanceuid", "0020000d"})
MAX_COOKIE_HEADER = 8192


def parse_cookies(scope: Scope) -> dict[str, str]:
    """The request's cookies (RFC 6265 5.4), the first of each name; empty when none or oversized."""
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        if k != b"cookie" or len(v) > MAX_COOKIE_HEADER:
            continue
        for part in v.decode("latin-1").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name and name not in out:
                out[name] = value.strip().strip('"')
    return out


def in_viewer(path: str) -> bool:
    return path == VIEWER_PREFIX or path.startswith(VIEWER_PREFIX + "/")


def link_allows(method: str, path: str, query: bytes | str, study: str) -> bool:
    """Whether the holder of a link to ``study`` may make this request (read that study only)."""
    if method not in ("GET", "HEAD"):
        return False
    own = f"{DICOMWEB_ROOT}/studies/{study}"
    if path == own or path.startswith(own + "/"):
        return True
    if path in _SEARCHES:
        text = query.decode("latin-1") if isinstance(query, bytes) else query
        values = [v for k, v in parse_qsl(text, keep_blank_values=True) if k.lower() in _STUDY_KEYS]
        return bool(values) and all(v == study for v in values)
    return False


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return str(v.decode("latin-1"))
    return None


def _from_viewer_page(scope: Scope) -> bool:
    """A request made by a page of the web viewer (same-origin Referer under /viewer)."""
    referer = _header(scope, b"referer")
    if not referer:
        return False
    try:
        parts = urlsplit(referer)
    except ValueError:
        return False
    host = _header(scope, b"host")
    return in_viewer(parts.path) and (host is None or parts.netloc == host)


@dataclass
class Outcome:
    """What authenticating a request gave: the user, or the refusal (status, reason, extra headers)."""

    user: User | None
    reason: str = ""
    status: int = 401
    headers: dict[str, str] = field(default_factory=dict)
    link: StudyLink | None = None


class Authenticator:
    """Turns request credentials into a :class:`User`, throttling password guesses.

    ``clock`` (monotonic seconds) drives the lockout periods and the has-users
    cache; tests inject one and advance it instead of sleeping.
    """

    USERS_CACHE_SECONDS = 2.0

    def __init__(self, users: UserStore, settings: WebSettings, *, loopback: bool, clock: Clock = time.monotonic,
                 throttle: LoginThrottle | None = None, links: StudyLinks | None = None):
        self.users = users
        self.links = links
        self.settings = settings
        self.loopback = loopback
        self.clock = clock
        self.throttle = throttle or LoginThrottle(ThrottlePolicy.from_settings(settings), clock=clock)
        self._has_users: tuple[float, bool] = (-float("inf"), True)
        self._slots: anyio.Semaphore | None = None
        self.audit: Any = None
        """``archive.audit`` (set by the server): failed logins and lockouts are recorded there."""

    def audit_event(self, event: str, **fields: Any) -> None:
        if self.audit is not None:
            try:
                self.audit(event, **fields)
            except Exception:  # noqa: BLE001 - the audit never breaks a request
                log.exception("cannot record audit event %s", event)

    def anonymous_read_allowed(self) -> bool:
        mode = self.settings.anonymous
        if mode == "read":
            return True
        if mode == "never" or not self.loopback:
            return False
        now = self.clock()
        at, has = self._has_users
        if now - at > self.USERS_CACHE_SECONDS:
            has = self.users.count() > 0
            self._has_users = (now, has)
        return not has

    def anonymous_read_cached(self) -> bool | None:
        """The answer of :meth:`anonymous_read_allowed` when it needs no database access, else None."""
        mode = self.settings.anonymous
        if mode == "read":
            return True
        if mode == "never" or not self.loopback:
            return False
        at, has = self._has_users
        if self.clock() - at > self.USERS_CACHE_SECONDS:
            return None
        return not has

    async def authenticate(self, authorization: str, client: str) -> Outcome:
        """Check an ``Authorization`` header sent from address ``client`` (call on the event loop)."""
        scheme, _, cred = authorization.strip().partition(" ")
        scheme = scheme.lower()
        cred = cred.strip()
        if scheme == "bearer":
            if cred.startswith(LINK_PREFIX):
                return self.link_outcome(cred)
            user = await anyio.to_thread.run_sync(self.users.verify_token, cred)
            if user is None:
                self.audit_event("User Authentication", action="E", outcome=4, event_type="Login", user="unknown",
                                 peer=client, detail="invalid or expired bearer token")
            return Outcome(user) if user else Outcome(None, "invalid or expired token")
        if scheme != "basic":
            return Outcome(None, f"unsupported authorization scheme {scheme[:20]!r}")
        try:
            decoded = base64.b64decode(cred, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return Outcome(None, "malformed Basic credentials")
        name, sep, password = decoded.partition(":")
        if not sep:
            return Outcome(None, "malformed Basic credentials")
        return await self.password_login(name, password, client)

    def link_outcome(self, token: str) -> Outcome:
        grant = self.links.verify(token) if self.links is not None else None
        if grant is None:
            return Outcome(None, "invalid or expired link")
        return Outcome(grant.user, link=grant)

    async def cookie_outcome(self, cookies: dict[str, str]) -> Outcome:
        """The web viewer's cookies: a signed-in session first, else a link to one study."""
        session = cookies.get(SESSION_COOKIE)
        if session:
            user = await anyio.to_thread.run_sync(self.users.verify_token, session)
            if user is not None:
                return Outcome(user)
        link = cookies.get(LINK_COOKIE)
        if link:
            return self.link_outcome(link)
        if session:
            return Outcome(None, "the viewer session has expired or was signed out")
        return Outcome(None, "no credentials")

    async def password_login(self, name: str, password: str, client: str) -> Outcome:
        """A Basic login: throttle check, cached verification, else one argon2 check in a bounded slot."""
        refusal = self.throttle.check(name, client)
        if refusal is not None:
            return self._locked(refusal)
        user = await anyio.to_thread.run_sync(self.users.cached_login, name, password)
        if user is None:
            if self._slots is None:
                self._slots = anyio.Semaphore(self.settings.login_concurrency)
            try:
                with anyio.fail_after(self.settings.login_wait_seconds):
                    await self._slots.acquire()
            except TimeoutError:
                return self._busy()
            try:
                # Again, now that a slot is ours: a burst of parallel guesses all passed the first
                # check before any of them failed; only login_concurrency of them may overshoot a limit.
                refusal = self.throttle.check(name, client)
                if refusal is not None:
                    return self._locked(refusal)
                user = await anyio.to_thread.run_sync(self.users.authenticate, name, password)
            except LoginBusy:
                return self._busy()
            finally:
                self._slots.release()
        if user is not None:
            self.throttle.success(name, client)
            return Outcome(user)
        lock = self.throttle.failure(name, client)
        self.audit_event("User Authentication", action="E", outcome=4, event_type="Login", user=name[:128],
                         peer=client, detail="wrong user name or password")
        if lock is not None:
            self.audit_event("Security Alert", action="E", outcome=4, event_type="Use of Restricted Function",
                             user=name[:128], peer=client,
                             detail=f"login locked for {lock.retry_after_header} s after repeated wrong "
                                    f"passwords ({lock.scope} lock)")
            log.warning("login of %r from %s locked for %s s after repeated wrong passwords (%s lock)", name[:64],
                        client, lock.retry_after_header, lock.scope)
        return Outcome(None, f"wrong user name or password for {name[:64]!r}")

    @staticmethod
    def _locked(refusal: Refusal) -> Outcome:
        return Outcome(None, f"too many failed logins for this {refusal.scope}; try again in "
                             f"{refusal.retry_after_header} s", 429, {"Retry-After": refusal.retry_after_header})

    def _busy(self) -> Outcome:
        return Outcome(None, f"{self.settings.login_concurrency} password checks already running; try again",
                       503, {"Retry-After": "1"})


def required_permission(method: str, path: str) -> str:
    """``read`` / ``write`` / ``login`` for a request."""
    if path.rstrip("/") == "/auth/token":
        return "login"
    if method in _WRITE_METHODS:
        return "write"
    return "read"


class AuthMiddleware:
    """Pure ASGI middleware: checks every HTTP request before it reaches a route."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator):
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope.get("path", "")
        if in_viewer(path):  # the viewer's own routes gate its page (hilum.dicomweb.viewer)
            await self.app(scope, receive, send)
            return
        authorization = _header(scope, b"authorization")
        need = required_permission(method, path)
        client = (scope.get("client") or ("?", 0))[0]
        cookies = parse_cookies(scope) if authorization is None else {}
        browser = bool(cookies.get(SESSION_COOKIE) or cookies.get(LINK_COOKIE)) or _from_viewer_page(scope)
        if authorization is not None:
            outcome = await self.auth.authenticate(authorization, client)
        elif need == "read" and (SESSION_COOKIE in cookies or LINK_COOKIE in cookies):
            outcome = await self.auth.cookie_outcome(cookies)  # cookies authorise reading only
        else:
            outcome = Outcome(None, "no credentials")
        user = outcome.user
        if user is None:
            if authorization is None and need == "read" and await self._anonymous_ok():
                user = ANONYMOUS_READER
            else:
                reason = outcome.reason
                if authorization is None and reason == "no credentials":
                    reason = "authentication required" if need != "read" else "anonymous access not allowed"
                await self._deny(scope, send, outcome.status, reason, None, outcome.headers, browser=browser)
                return
        if need in ("read", "write") and not user.can(need):
            self.auth.audit_event("Security Alert", action="E", outcome=4, event_type="Use of Restricted Function",
                                  user=user.name, peer=client, detail=f"role {user.role} may not {need}: "
                                  f"{method} {path}"[:300])
            await self._deny(scope, send, 403, f"role {user.role} may not {need}", user, browser=browser)
            return
        if outcome.link is not None and not link_allows(method, path, scope.get("query_string", b""),
                                                        outcome.link.study_uid):
            await self._deny(scope, send, 403, "this link grants reading one other study only", user,
                             browser=browser)
            return
        state = scope.setdefault("state", {})
        state["user"] = user
        state["viewer_request"] = browser
        await self.app(scope, receive, send)

    async def _anonymous_ok(self) -> bool:
        cached = self.auth.anonymous_read_cached()
        if cached is not None:
            return cached
        return await anyio.to_thread.run_sync(self.auth.anonymous_read_allowed)

    async def _deny(self, scope: Scope, send: Send, status: int, reason: str, user: User | None,
                    extra: dict[str, str] | None = None, *, browser: bool = False) -> None:
        client = scope.get("client") or ("?", 0)
        # A locked login is refused without work; one log line per lock (in Authenticator), not per refusal.
        log.log(logging.DEBUG if status == 429 else logging.WARNING, "denied %s %s %s from %s (user %s): %s", status,
                scope["method"], scope.get("path", ""), client[0], user.name if user else "-", reason)
        body = json.dumps({"error": _TITLES.get(status, "Forbidden"), "detail": reason}).encode()
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                              (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
        if status == 401 and browser:  # no Basic challenge: the browser would pop its own password dialog
            headers.append((b"www-authenticate", f'HilumSession realm="{REALM}"'.encode()))
        elif status == 401:
            headers.append((b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()))
            headers.append((b"www-authenticate", f'Bearer realm="{REALM}"'.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_TITLES = {401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


def is_viewer_request(request: Any) -> bool:
    """Whether the web viewer made this request (its cookie, or one of its pages as Referer)."""
    return bool(request.scope.get("state", {}).get("viewer_request"))


def current_user(request: Any) -> User:
    """The user the middleware let in (anonymous reader when none was set)."""
    user = request.scope.get("state", {}).get("user")
    return user if isinstance(user, User) else ANONYMOUS_READER
