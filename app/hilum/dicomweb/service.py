"""The DICOMweb server as a node service: uvicorn on a background thread.

``DicomWebService(config, archive).start()`` listens on
``config.bind:config.web_port`` (HTTPS when ``[web] tls_cert``/``tls_key``
are set) and returns once the socket is bound; ``stop()`` finishes open
requests briefly and joins the thread.  Port 0 picks a free port
(see :attr:`port` after start) — the tests use that.

The application runs behind :class:`~hilum.dicomweb.connections.GuardedApp`
and uvicorn's h11 protocol wrapped by
:func:`~hilum.dicomweb.connections.guarded_protocol`: header, body and send
timeouts, connection caps and a per-request log budget (``[web]`` settings,
see :mod:`.settings`).  ``X-Forwarded-For`` is believed only from
``[web] trusted_proxies`` (uvicorn's default trusts 127.0.0.1, which would let
any local client pick the address that login throttling counts).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn

from hilum.archive import Archive
from hilum.archive.users import UserStore
from hilum.dicomweb.connections import ConnectionLimits, GuardedApp, guarded_protocol
from hilum.dicomweb.server import create_app
from hilum.dicomweb.settings import WebSettings, is_loopback
from hilum.dicomweb.throttle import Clock
from hilum.errors import HilumError

log = logging.getLogger(__name__)


class DicomWebService:
    """Start/stop the DICOMweb HTTP server of a node."""

    name = "dicomweb"

    def __init__(self, config: Any, archive: Archive, *, settings: WebSettings | None = None,
                 host: str | None = None, port: int | None = None, clock: Clock = time.monotonic,
                 users: UserStore | None = None):
        self.config = config
        self.clock = clock
        self.users = users
        self.limits: ConnectionLimits | None = None
        self.archive = archive
        self.settings = settings or WebSettings.from_config(config)
        self.host = host if host is not None else config.bind
        self.requested_port = port if port is not None else config.web_port
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    @property
    def url(self) -> str:
        """Base URL of the DICOMweb root (``.../dicom-web``)."""
        scheme = "https" if self.settings.tls else "http"
        host = self.host if ":" not in self.host else f"[{self.host}]"
        return f"{scheme}://{host}:{self.port}/dicom-web"

    def start(self, timeout: float = 15.0) -> None:
        if self._thread is not None:
            return
        if not self.settings.enabled:
            log.info("DICOMweb disabled ([web] enabled = false)")
            return
        s = self.settings
        app: Any = create_app(self.archive, s, loopback=is_loopback(self.host), clock=self.clock, users=self.users)
        if s.trusted_proxies:
            from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

            app = ProxyHeadersMiddleware(app, trusted_hosts=s.trusted_proxies)
        self.limits = limits = ConnectionLimits(s)
        app = GuardedApp(app, limits, log_records=s.log_records_per_request)
        kwargs: dict[str, Any] = {}
        if s.tls:
            kwargs.update(ssl_certfile=s.tls_cert, ssl_keyfile=s.tls_key)
        cfg = uvicorn.Config(app, host=self.host, port=self.requested_port, log_config=None, access_log=False,
                             lifespan="off", ws="none", http=guarded_protocol(limits), proxy_headers=False,
                             timeout_keep_alive=s.keep_alive_timeout,  # type: ignore[arg-type]
                             h11_max_incomplete_event_size=s.max_header_bytes, server_header=False, **kwargs)
        server = uvicorn.Server(cfg)
        thread = threading.Thread(target=self._run, args=(server,), name="dicomweb", daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self._server = self._thread = None
                server.should_exit = True
                raise HilumError(f"DICOMweb server could not listen on {self.host}:{self.requested_port}")
            time.sleep(0.02)
        sockets = [s for srv in getattr(server, "servers", []) for s in srv.sockets]
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.requested_port
        log.info("DICOMweb listening on %s", self.url)

    @staticmethod
    def _run(server: uvicorn.Server) -> None:
        try:
            server.run()
        except SystemExit:  # uvicorn exits when it cannot bind; start() reports it
            log.error("DICOMweb server stopped at startup")
        except Exception:  # noqa: BLE001 - report, never kill the node's main thread
            log.exception("DICOMweb server failed")

    def stop(self, timeout: float = 10.0) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(2.0)
        self._server = self._thread = None
        log.info("DICOMweb stopped")

    def __enter__(self) -> DicomWebService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
