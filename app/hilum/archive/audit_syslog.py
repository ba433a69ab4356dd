"""The audit trail sent to an audit record repository: RFC 5424 syslog over TLS (RFC 5425), IHE ATNA.

``[audit] syslog = "host:port"`` (with ``ca_file``, and ``cert_file``/``key_file`` when the repository
wants this node's certificate: ATNA's mutual node authentication) starts :class:`AuditSyslogService`
with the node.  It sends every row of ``audit_events`` whose ``sent_at`` is empty, oldest first, then
sets ``sent_at``: the table is the queue, so events recorded while the repository is down (or the
node is stopped) go out when it is back, in order, and a restart loses nothing.  After a failure it
waits ``retry_seconds``, doubling up to ten minutes.

One message per event (:func:`syslog_message`): ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG``
with facility 10 (security/authorization), severity notice (5) for a success, warning (4) for a minor
failure and error (3) for a serious or major one, MSGID ``IHE+RFC-3881``, no structured data, and
the DICOM audit message XML (PS3.15 A.5.1, :func:`hilum.archive.audit.to_xml`) as MSG, UTF-8 with a
BOM (RFC 5424 6.4).  On the wire each message is framed by octet counting (RFC 5425 4.3:
``MSG-LEN SP SYSLOG-MSG``).  Syslog has no acknowledgement: a message is marked sent once TLS took
it; one lost with a connection that broke right after is the protocol's limit (RFC 5425 4.3.1).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from typing import Any

from hilum.archive.audit import AuditLog, AuditSettings, iso_utc

log = logging.getLogger(__name__)

FACILITY = 10  # security/authorization messages (RFC 5424 table 1)
MSGID = "IHE+RFC-3881"
APP_NAME = "hilum"
MAX_BACKOFF = 600.0
BATCH = 200


def _printable(text: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, ``-`` when empty."""
    out = "".join(c for c in text if 33 <= ord(c) <= 126)[:limit]
    return out or "-"


def syslog_message(row: dict[str, Any], xml: str, *, hostname: str | None = None, procid: int | None = None) -> bytes:
    """The RFC 5424 SYSLOG-MSG of one audit row whose DICOM audit message is ``xml``."""
    outcome = int(row.get("outcome") or 0)
    severity = 5 if outcome == 0 else (4 if outcome == 4 else 3)
    header = " ".join(
        [
            f"<{FACILITY * 8 + severity}>1",
            iso_utc(row["at"]),
            _printable(hostname or socket.gethostname(), 255),
            APP_NAME,
            _printable(str(procid if procid is not None else os.getpid()), 128),
            MSGID,
            "-",
        ]
    )
    return header.encode("ascii") + b" \xef\xbb\xbf" + xml.encode("utf-8")


def frame(message: bytes) -> bytes:
    """RFC 5425 octet-counting framing: ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


class AuditSyslogService:
    """Sends the audit trail to ``[audit] syslog`` over TLS (a node service: ``start``/``stop``)."""

    name = "audit-syslog"

    def __init__(self, trail: AuditLog, settings: AuditSettings, *, timeout: float = 10.0):
        self.trail = trail
        self.settings = settings
        self.host, self.port = settings.syslog_address()
        self.timeout = timeout
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: ssl.SSLSocket | None = None
        self.sent = 0
        self.failures = 0
        self.last_error = ""

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.settings.ca_file or None)
        if self.settings.cert_file:
            ctx.load_cert_chain(self.settings.cert_file, self.settings.key_file or None)
        return ctx

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self.trail.listeners.append(self._wake.set)
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._wake.set in self.trail.listeners:
            self.trail.listeners.remove(self._wake.set)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
            self._thread = None
        self._close()

    def wake(self) -> None:
        self._wake.set()

    def _close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None

    def _connect(self) -> ssl.SSLSocket:
        if self._sock is None:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._sock = self._context().wrap_socket(raw, server_hostname=self.host)
            except BaseException:
                raw.close()
                raise
        return self._sock

    def send_pending(self) -> int:
        """Send what is unsent now (raises on a failure, after marking what went); returns how many went."""
        total = 0
        hostname = socket.gethostname()
        while not self._stop.is_set():
            rows = self.trail.unsent(BATCH)
            if not rows:
                break
            sock = self._connect()
            done: list[int] = []
            try:
                for row in rows:
                    sock.sendall(frame(syslog_message(row, self.trail.to_xml(row), hostname=hostname)))
                    done.append(int(row["pk"]))
            finally:
                self.trail.mark_sent(done)
                total += len(done)
                self.sent += len(done)
        return total

    def _run(self) -> None:
        delay = self.settings.retry_seconds
        wait = 0.0  # the first look at once
        while not self._stop.is_set():
            if wait:
                self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.send_pending()
            except Exception as exc:  # noqa: BLE001 - the repository is down or refuses: retry later
                self._close()
                self.failures += 1
                why = f"{type(exc).__name__}: {exc}"
                if why != self.last_error:
                    log.warning(
                        "cannot send the audit trail to %s:%d (%s); retrying every %.0f s or less",
                        self.host,
                        self.port,
                        why,
                        delay,
                    )
                self.last_error = why
                wait = delay
                delay = min(delay * 2, MAX_BACKOFF)
                continue
            self.last_error = ""
            delay = self.settings.retry_seconds
            wait = 60.0  # a periodic look, for rows another process of this node wrote
