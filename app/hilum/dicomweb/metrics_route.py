"""``GET /metrics``: the node's Prometheus metrics (:mod:`hilum.archive.metrics`), for administrators only.

Who may scrape:

- a user with the ``admin`` role (HTTP Basic or a bearer token, as for DICOMweb:
  ``hilum users token NAME`` makes one for Prometheus' ``authorization`` setting);
- any other authenticated user: **403**; no or wrong credentials: **401**;
- nobody authenticated (anonymous reading let in by ``[web] anonymous``): only
  when the node has **no users at all** and the request comes **from the
  loopback address** — a fresh single-machine install scraped by a local
  Prometheus or ``curl``.  Otherwise 401: ``[web] anonymous = "read"`` opens
  the images to everyone, not the node's internals (queue lengths, paths).

:class:`CountRequests` counts every answered HTTP request for ``hilum_http_requests_total``.
"""

from __future__ import annotations

import ipaddress

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hilum.archive.metrics import CONTENT_TYPE, NodeMetrics, metrics_for
from hilum.archive.users import ANONYMOUS_READER
from hilum.dicomweb.auth import REALM, current_user
from hilum.dicomweb.common import context

PATH = "/metrics"


def _loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


def _refuse(status: int, detail: str) -> Response:
    headers = {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'} if status == 401 else None
    error = "Unauthorized" if status == 401 else "Forbidden"
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


async def get_metrics(request: Request) -> Response:
    ctx = context(request)
    user = current_user(request)
    if user is ANONYMOUS_READER:  # let in by [web] anonymous: no credentials were given
        client = request.client.host if request.client else ""
        has_users = await anyio.to_thread.run_sync(ctx.users.count)
        if has_users or not _loopback(client):
            return _refuse(401, "metrics need an administrator's credentials")
    elif not user.can("admin"):
        return _refuse(403, f"role {user.role} may not read the metrics")
    metrics = metrics_for(ctx.archive)
    body = await anyio.to_thread.run_sync(metrics.render)
    return Response(
        body, media_type=CONTENT_TYPE.split(";")[0], headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
    )


class CountRequests:
    """Pure ASGI middleware: one count per answered HTTP request (method, status)."""

    def __init__(self, app: ASGIApp, metrics: NodeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.http_request(str(scope.get("method", "")), status)
