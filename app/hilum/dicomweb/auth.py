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
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from typing import Any

import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from hilum.archive.users import ANONYMOUS_READER, User, UserStore
from hilum.dicomweb.settings import WebSettings

log = logging.getLogger(__name__)

REALM = "Hilum DICOMweb"
_WRITE_METHODS = frozenset({"POST", "PUT", "DELETE", "PATCH"})


class Authenticator:
    """Turns request credentials into a :class:`User` (blocking: call from a worker thread)."""

    USERS_CACHE_SECONDS = 2.0

    def __init__(self, users: UserStore, settings: WebSettings, *, loopback: bool):
        self.users = users
        self.settings = settings
        self.loopback = loopback
        self._has_users: tuple[float, bool] = (0.0, True)

    def anonymous_read_allowed(self) -> bool:
        mode = self.settings.anonymous
        if mode == "read":
            return True
        if mode == "never" or not self.loopback:
            return False
        now = time.monotonic()
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
        if time.monotonic() - at > self.USERS_CACHE_SECONDS:
            return None
        return not has

    def authenticate(self, authorization: str | None) -> tuple[User | None, str]:
        """(user or None, reason when None).  No header → (None, "no credentials")."""
        if not authorization:
            return None, "no credentials"
        scheme, _, cred = authorization.strip().partition(" ")
        scheme = scheme.lower()
        cred = cred.strip()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(cred, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None, "malformed Basic credentials"
            name, sep, password = decoded.partition(":")
            if not sep:
                return None, "malformed Basic credentials"
            user = self.users.authenticate(name, password)
            return (user, "") if user else (None, f"wrong user name or password for {name!r}")
        if scheme == "bearer":
            user = self.users.verify_token(cred)
            return (user, "") if user else (None, "invalid or expired token")
        return None, f"unsupported authorization scheme {scheme!r}"


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
        authorization = None
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                authorization = v.decode("latin-1")
                break
        method, path = scope["method"], scope.get("path", "")
        need = required_permission(method, path)
        if authorization is None:
            user, reason = None, "no credentials"
        else:
            user, reason = await anyio.to_thread.run_sync(self.auth.authenticate, authorization)
        if user is None:
            if authorization is None and need == "read" and await self._anonymous_ok():
                user = ANONYMOUS_READER
            else:
                if authorization is None:
                    reason = "authentication required" if need != "read" else "anonymous access not allowed"
                await self._deny(scope, send, 401, reason, None)
                return
        if need in ("read", "write") and not user.can(need):
            await self._deny(scope, send, 403, f"role {user.role} may not {need}", user)
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send)

    async def _anonymous_ok(self) -> bool:
        cached = self.auth.anonymous_read_cached()
        if cached is not None:
            return cached
        return await anyio.to_thread.run_sync(self.auth.anonymous_read_allowed)

    async def _deny(self, scope: Scope, send: Send, status: int, reason: str, user: User | None) -> None:
        client = scope.get("client") or ("?", 0)
        log.warning("denied %s %s %s from %s (user %s): %s", status, scope["method"], scope.get("path", ""),
                    client[0], user.name if user else "-", reason)
        body = json.dumps({"error": "Unauthorized" if status == 401 else "Forbidden", "detail": reason}).encode()
        headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                              (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()))
            headers.append((b"www-authenticate", f'Bearer realm="{REALM}"'.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def current_user(request: Any) -> User:
    """The user the middleware let in (anonymous reader when none was set)."""
    user = request.scope.get("state", {}).get("user")
    return user if isinstance(user, User) else ANONYMOUS_READER
