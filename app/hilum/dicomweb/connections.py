"""Bounds on the DICOMweb server's connections and on what one request may log.

What uvicorn (0.3x–0.5x, h11 protocol) enforces by itself, checked against
its source and by ``tests/test_dicomweb_attack.py``:

* ``timeout_keep_alive``: a keep-alive connection idle *after a response* is
  closed — but the timer is only armed after a response, and any byte
  received cancels it;
* h11's ``max_incomplete_event_size``: a request head larger than that is
  answered 400 and the connection closed — but only while the head is still
  *incomplete*: a 20 KiB head that arrives in one read passes (found by the
  test), so the guard counts head bytes itself;
* ``limit_concurrency``: requests beyond it are answered 503 — counting idle
  connections as well, so forty idle sockets would make every real request
  fail.

What it does not do: time out a client that connects and sends nothing,
that sends its request head one byte every few seconds (slowloris), or that
stops in the middle of a request body or stops reading a response; cap the
number of accepted connections.  This module adds those, with public
interfaces only (an :class:`asyncio.Protocol` that wraps uvicorn's h11
protocol object and an ASGI wrapper around the application; no uvicorn
internals are touched):

* **header timeout** — a request head must be complete ``header_timeout``
  seconds after the connection opened, or ``keep_alive_timeout +
  header_timeout`` after the previous response; bytes trickling in do not
  restart it (Apache's ``mod_reqtimeout`` and nginx's
  ``client_header_timeout`` work the same way);
* **idle timeout** — while the application waits for request body bytes, or
  while a response write waits for the client to read, ``idle_timeout``
  seconds without progress close the connection (nginx's
  ``client_body_timeout`` / ``send_timeout``);
* **head size** — a request line plus headers over ``max_header_bytes`` is
  answered ``431 Request Header Fields Too Large`` (RFC 6585) and closed;
* **connection caps** — beyond ``max_connections`` open connections, or
  ``max_connections_per_client`` from one address, a new connection is
  answered ``503`` with ``Retry-After`` and closed at once, before anything
  is read;
* **log budget** — each request may write ``log_records_per_request``
  records (from any logger: Hilum, pydicom, the libraries) and Python
  warnings; the rest are counted and reported in one line when the request
  ends.  A stored instance with 6,000 values invalid for their VR used to
  make a single WADO-RS metadata request write 6,000 lines to the node's log
  (pydicom logs each one and also ``warnings.warn``-s it).

TLS handshakes are bounded by asyncio's own ``ssl_handshake_timeout``
(60 s) before this protocol sees the connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hilum.dicomweb.settings import WebSettings

log = logging.getLogger(__name__)

_REFUSAL_LOG_INTERVAL = 10.0


# --------------------------------------------------------------------- log budget


class _Budget:
    """How many log records the current request may still write, and how many it was denied."""

    __slots__ = ("limit", "used", "dropped", "_lock")

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.used < self.limit:
                self.used += 1
                return True
            self.dropped += 1
            return False


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("hilum_request_log_budget", default=None)


class _BudgetFilter(logging.Filter):
    """Lets a record through unless the request it belongs to (context variable) has used its budget.

    Worker threads started with anyio (Starlette's thread pool) run in a copy
    of the request's context, so records logged there count too; code outside
    any request (DIMSE, HL7, timers) has no budget and is never filtered.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        b = _budget.get()
        return True if b is None else b.take()


_FILTER = _BudgetFilter()
_installed_on = -1
_install_lock = threading.Lock()


def _budgeted_showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                          file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` that counts against the current request's budget (the module's own hook)."""
    b = _budget.get()
    if b is not None and not b.take():
        return
    _budgeted_showwarning.original(message, category, filename, lineno, file, line)  # type: ignore[attr-defined]


def install_log_budget() -> None:
    """Put the budget filter on every existing logger (a logger's filters do not apply to its children's records).

    Called when the server starts and after each request; it only walks the
    loggers again when new ones were created since (a lazily imported module).
    Python warnings are budgeted through ``warnings.showwarning``.
    """
    global _installed_on
    if warnings.showwarning is not _budgeted_showwarning:
        # The documented hook ("you may replace this function"); whoever replaced it before is kept.
        _budgeted_showwarning.original = warnings.showwarning  # type: ignore[attr-defined]
        warnings.showwarning = _budgeted_showwarning
    manager = logging.Logger.manager
    if len(manager.loggerDict) == _installed_on:
        return
    with _install_lock:
        loggers = [logging.getLogger()] + [obj for obj in list(manager.loggerDict.values())
                                           if isinstance(obj, logging.Logger)]
        for logger in loggers:
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
        _installed_on = len(manager.loggerDict)


# --------------------------------------------------------------------- connections


class _Guard:
    """The timers of one connection."""

    def __init__(self, limits: ConnectionLimits, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 peer: tuple[str, int]):
        self.limits = limits
        self.transport = transport
        self.loop = loop
        self.peer = peer
        self._head: asyncio.TimerHandle | None = None
        self._body: asyncio.TimerHandle | None = None
        self._send: asyncio.TimerHandle | None = None
        self.head_bytes = 0  # bytes of the request head received so far (until its blank line)
        self.head_open = True
        self._head_tail = b""
        self.arm_head(limits.header_timeout)

    def count_head(self, data: bytes) -> bool:
        """Count the head bytes in ``data``; False when the head is over ``max_header_bytes``."""
        if not self.head_open:
            return True
        window = self._head_tail + data
        end = window.find(b"\r\n\r\n")
        if end == -1:
            self.head_bytes += len(data)
            self._head_tail = window[-3:]
        else:
            self.head_bytes += end + 4 - len(self._head_tail)
            self.head_open = False
            self._head_tail = b""
        return self.head_bytes <= self.limits.max_header_bytes

    def _expire(self, what: str) -> None:
        if not self.transport.is_closing():
            self.limits.timed_out[what] += 1
            log.debug("HTTP connection from %s:%d closed: %s", self.peer[0], self.peer[1], what)
            self.transport.abort()  # nothing worth flushing to a client that stalls

    def arm_head(self, seconds: float) -> None:
        """Expect a (new) request head within ``seconds``; its size is counted from here."""
        self.cancel_head()
        self.head_bytes = 0
        self.head_open = True
        self._head_tail = b""
        self._head = self.loop.call_later(seconds, self._expire, "request head not complete in time")

    def cancel_head(self) -> None:
        if self._head is not None:
            self._head.cancel()
            self._head = None

    def arm_body(self) -> None:
        self.cancel_body()
        self._body = self.loop.call_later(self.limits.idle_timeout, self._expire, "request body stalled")

    def cancel_body(self) -> None:
        if self._body is not None:
            self._body.cancel()
            self._body = None

    def arm_send(self) -> None:
        self.cancel_send()
        self._send = self.loop.call_later(self.limits.idle_timeout, self._expire, "client stopped reading")

    def cancel_send(self) -> None:
        if self._send is not None:
            self._send.cancel()
            self._send = None

    def close(self) -> None:
        self.cancel_head()
        self.cancel_body()
        self.cancel_send()


class ConnectionLimits:
    """The connection caps and timeouts of one server, shared by its protocol objects and its ASGI wrapper.

    Used only on the server's event loop thread.
    """

    def __init__(self, settings: WebSettings, *, clock: Callable[[], float] = time.monotonic):
        self.max_connections = settings.max_connections
        self.max_per_client = settings.max_connections_per_client
        self.header_timeout = float(settings.header_timeout)
        self.keep_alive_timeout = float(settings.keep_alive_timeout)
        self.idle_timeout = float(settings.idle_timeout)
        self.max_header_bytes = settings.max_header_bytes
        self.clock = clock
        self.guards: dict[tuple[str, int], _Guard] = {}
        self.per_client: Counter[str] = Counter()
        self.refused = 0
        self.timed_out: Counter[str] = Counter()
        self._refused_unlogged = 0
        self._last_refusal_log = -float("inf")

    @property
    def open(self) -> int:
        return len(self.guards)

    def admit(self, host: str) -> str | None:
        """None when a new connection from ``host`` may open, else why not."""
        if len(self.guards) >= self.max_connections:
            return f"{len(self.guards)} connections open (limit {self.max_connections})"
        if self.max_per_client and self.per_client[host] >= self.max_per_client:
            return f"{self.per_client[host]} connections open from {host} (limit {self.max_per_client})"
        return None

    def refused_one(self, why: str) -> None:
        self.refused += 1
        self._refused_unlogged += 1
        now = self.clock()
        if now - self._last_refusal_log >= _REFUSAL_LOG_INTERVAL:
            log.warning("refused %d HTTP connection(s): %s", self._refused_unlogged, why)
            self._refused_unlogged = 0
            self._last_refusal_log = now

    def opened(self, peer: tuple[str, int], transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> _Guard:
        guard = _Guard(self, transport, loop, peer)
        self.guards[peer] = guard
        self.per_client[peer[0]] += 1
        return guard

    def closed(self, guard: _Guard) -> None:
        guard.close()
        if self.guards.get(guard.peer) is guard:
            del self.guards[guard.peer]
            self.per_client[guard.peer[0]] -= 1
            if self.per_client[guard.peer[0]] <= 0:
                del self.per_client[guard.peer[0]]


def _peer(transport: asyncio.BaseTransport) -> tuple[str, int]:
    info = transport.get_extra_info("peername")
    if isinstance(info, (tuple, list)) and len(info) >= 2:
        return str(info[0]), int(info[1])
    return str(info or "?"), 0


_REFUSAL_BODY = b'{"error":"too many connections; try again","status":503}'
_SERVICE_UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY))


_HEAD_BODY = b'{"error":"request line and headers too large","status":431}'
_HEAD_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                   b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_HEAD_BODY), _HEAD_BODY))


def guarded_protocol(limits: ConnectionLimits, inner: type[asyncio.Protocol] | None = None) -> type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` that wraps uvicorn's h11 protocol with ``limits``.

    uvicorn builds its protocol as ``cls(config=..., server_state=..., app_state=..., _loop=...)``; the
    wrapper builds the inner protocol the same way and forwards every :class:`asyncio.Protocol` call.
    """
    if inner is None:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        inner = H11Protocol

    inner_class = inner

    class GuardedProtocol(asyncio.Protocol):
        def __init__(self, config: Any, server_state: Any, app_state: Any,
                     _loop: asyncio.AbstractEventLoop | None = None):
            self.loop = _loop or asyncio.get_event_loop()
            self.inner: Any = inner_class(config=config, server_state=server_state,  # type: ignore[call-arg]
                                          app_state=app_state, _loop=_loop)
            self.guard: _Guard | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            peer = _peer(transport)
            why = limits.admit(peer[0])
            if why is not None:
                limits.refused_one(why)
                transport.write(_SERVICE_UNAVAILABLE)
                transport.close()
                return
            self.guard = limits.opened(peer, transport, self.loop)
            self.inner.connection_made(transport)

        def data_received(self, data: bytes) -> None:
            guard = self.guard
            if guard is None:
                return
            if not guard.count_head(data):
                limits.timed_out["request head too large"] += 1
                guard.transport.write(_HEAD_TOO_LARGE)
                guard.transport.close()
                self.guard = None
                limits.closed(guard)
                self.inner.connection_lost(None)
                return
            self.inner.data_received(data)

        def eof_received(self) -> bool | None:
            if self.guard is not None:
                return self.inner.eof_received()  # type: ignore[no-any-return]
            return None

        def connection_lost(self, exc: Exception | None) -> None:
            if self.guard is not None:
                limits.closed(self.guard)
                self.inner.connection_lost(exc)

        def pause_writing(self) -> None:
            if self.guard is not None:
                self.inner.pause_writing()

        def resume_writing(self) -> None:
            if self.guard is not None:
                self.inner.resume_writing()

    GuardedProtocol.__qualname__ = f"Guarded{inner_class.__name__}"
    return GuardedProtocol


class GuardedApp:
    """ASGI wrapper: tells a connection's guard where its request is, and gives each request a log budget.

    Outermost, so it also sees what Starlette's error middleware re-raises
    after answering 500 (already logged, with a short traceback, by the
    application's handler): that is swallowed here instead of being logged
    again, in full, by uvicorn.
    """

    def __init__(self, app: ASGIApp, limits: ConnectionLimits | None, *, log_records: int):
        self.app = app
        self.limits = limits
        self.log_records = log_records
        install_log_budget()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        guard = None
        if self.limits is not None and client:
            guard = self.limits.guards.get((str(client[0]), int(client[1])))
        if guard is not None:
            guard.cancel_head()
        budget = _Budget(self.log_records)
        token = _budget.set(budget)
        body_done = False
        started = False

        async def guarded_receive() -> Message:
            nonlocal body_done
            timed = guard is not None and not body_done
            if timed:
                guard.arm_body()  # type: ignore[union-attr]
            try:
                message = await receive()
            finally:
                if timed:
                    guard.cancel_body()  # type: ignore[union-attr]
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            if guard is None:
                await send(message)
                return
            guard.arm_send()
            try:
                await send(message)
            finally:
                guard.cancel_send()

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception as exc:  # noqa: BLE001 - the app's handler has logged it; answer if nobody did
            if not started:
                body = b'{"error":"internal error","status":500}'
                try:
                    await send({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                except Exception:  # noqa: BLE001 - the client is gone
                    pass
            log.debug("%s %s ended with %s", scope.get("method"), scope.get("path"), type(exc).__name__)
        finally:
            _budget.reset(token)
            if budget.dropped:
                log.warning("%s %s: %d more log record(s) suppressed (at most %d per request)",
                            scope.get("method"), scope.get("path"), budget.dropped, self.log_records)
            if guard is not None and not guard.transport.is_closing():
                guard.arm_head(self.limits.keep_alive_timeout + self.limits.header_timeout)  # type: ignore[union-attr]
            install_log_budget()
