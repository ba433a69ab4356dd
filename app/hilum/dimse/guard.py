"""Bounds on what a DICOM connection can make the node hold: memory, time, and connection slots.

Every connection the node accepts is a :class:`GuardedSocket` (or
:class:`GuardedSSLSocket` on a TLS port) handed to pynetdicom in place of
the plain socket.  It follows the PDU framing of PS3.8 9.3 in the bytes that
pass through it, so the bounds hold whatever reads them - pynetdicom's own
``DULServiceProvider._read_pdu_data`` (which trusts the announced length) or
the fast engine's reader:

- **PDU length.**  Each PDU header is checked as it arrives, before the
  reader sees it.  Until the node has sent its A-ASSOCIATE-AC the limit is
  :data:`ASSOCIATE_RQ_MAX`; after it, the maximum PDU length the node
  advertised (PS3.8 D.1: the longest variable field of a P-DATA-TF it will
  receive).  A PDU announced longer, or of an unknown type, is a lie: the
  node sends an A-ABORT (source: service provider, reason: invalid PDU
  parameter value / unrecognised PDU, PS3.8 9.3.8) and closes.  The reader
  then sees the connection end and cleans up as for any closed connection
  (pynetdicom: Evt17), so an established association ends aborted and no
  other association is touched.
- **ARTIM** (PS3.8 9.1.5).  A connection has ``artim`` seconds from its
  accept to deliver its whole A-ASSOCIATE-RQ; each read before that is given
  what is left of that time, so a PDU that stops half-way cannot hold the
  reading thread (pynetdicom's own ARTIM is only looked at between PDUs).
  On expiry the connection is closed (AA-2: no A-ABORT).  After association,
  a PDU that stops arriving for ``idle`` seconds ends the association the same
  way (the network timeout, which pynetdicom cannot look at while its reader
  is blocked).
- **Slots.**  :class:`Admission` counts connections that have not yet
  delivered an A-ASSOCIATE-RQ ("pending", at most ``max_pending``: one more
  drops the oldest) apart from associations (at most ``max_associations``,
  taken by :meth:`Admission.take_slot` when the request is answered).  So
  40 connections that each send 8 bytes cannot keep a real peer out, which
  they did while pynetdicom's ``maximum_associations`` counted every
  connection's thread.
- **TLS.**  The handshake happens in the connection's own thread within
  ARTIM, not in the listener's accept loop (pynetdicom's
  ``AssociationServer.get_request`` wraps with ``do_handshake_on_connect``,
  so one silent TCP connection to the TLS port stopped every later accept).

Memory per connection is then bounded by what is actually received up to
these lengths: the fast engine's reader grows its buffer with the bytes that
arrive (:class:`hilum.dimse.reactor.BulkSocket`), pynetdicom's reads 4 KiB at
a time.

The sockets are subclasses of :class:`socket.socket` and
:class:`ssl.SSLSocket` (the latter through ``SSLContext.sslsocket_class``),
so everything pynetdicom does with a socket (``select``, ``pending()``,
``setsockopt``) works unchanged; the server class is given to pynetdicom
through ``AE.make_server(server_class=...)``.  Nothing here touches a private
name of pynetdicom.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger(__name__)

ASSOCIATE_RQ_MAX = 1 << 20
"""The longest A-ASSOCIATE-RQ PDU accepted (bytes, PDU-length field), 1 MiB.

Sized from PS3.8 9.3.2 and Annex D: at most 128 presentation contexts (odd
context IDs 1-255), each an item of 4 + 4 bytes with an abstract syntax
sub-item (4 + at most 64) and its transfer syntax sub-items (4 + at most 64
each); an application context item (4 + 64); one user information item,
whose 16-bit length caps it at 4 + 65,535 bytes (maximum length,
implementation UID and version, asynchronous operations, 128 role selections,
SOP class (common) extended negotiation, user identity with a Kerberos/SAML/
JWT token).  128 contexts x 64 transfer syntaxes of maximum-length UIDs is
128 x 4,428 = 566,784 bytes; with the largest user information item and the
fixed 68-byte header, 632,395 bytes.  DCMTK's ``storescu`` proposing 128
storage contexts with three syntaxes each sends about 25 KiB.  1 MiB leaves
room and still bounds what a connection that never associates can make the
node hold."""

DEFAULT_ARTIM = 10.0
"""Seconds a connection has to deliver its A-ASSOCIATE-RQ (``[dimse] artim_timeout``)."""

DEFAULT_MAX_PENDING = 32

_ABORT_INVALID_PARAMETER = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06))
_ABORT_UNRECOGNISED_PDU = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x01))
_ABORT_NO_REASON = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x00))

# connection states, as seen on the wire
PENDING = 0      # accepted; the A-ASSOCIATE-RQ is not in yet (ARTIM running)
REQUESTED = 1    # the A-ASSOCIATE-RQ is in; the node has not answered
ESTABLISHED = 2  # the node sent its A-ASSOCIATE-AC
ENDING = 3       # the node sent an A-ASSOCIATE-RJ or an A-ABORT


@dataclass(frozen=True)
class Limits:
    """The bounds one listener enforces (see the module docstring)."""

    max_pdu: int                                  # the maximum PDU length the node advertises (bytes)
    associate_rq_max: int = ASSOCIATE_RQ_MAX
    artim: float = DEFAULT_ARTIM
    idle: float | None = 120.0                    # after association: longest silence inside a PDU (s)
    max_pending: int = DEFAULT_MAX_PENDING
    max_associations: int = 32

    @property
    def max_dropped(self) -> int:
        """Connections the node has dropped but whose reader has not yet let go (pynetdicom's
        acceptor thread waits out its ACSE timeout): beyond this, new connections are refused."""
        return 4 * self.max_pending + self.max_associations


class Admission:
    """Who holds what on one node: pending connections, association slots, dropped connections.

    Thread-safe; shared by every listener of a :class:`hilum.dimse.scp.DimseService`
    (plain and TLS ports count together).
    """

    def __init__(self, limits: Limits):
        self.limits = limits
        self._lock = threading.Lock()
        self._pending: dict[_Guard, None] = {}  # insertion order: oldest first
        self._slots: set[_Guard] = set()
        self._dropped: set[_Guard] = set()
        self.evicted = 0   # pending connections dropped to make room
        self.refused = 0   # connections refused at accept
        self.aborted = 0   # connections dropped for a PDU that broke the bounds
        self._told = (0.0, 0, 0)  # when the last summary was logged, and the counts then

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"pending": len(self._pending), "associations": len(self._slots),
                    "dropped": len(self._dropped), "evicted": self.evicted, "refused": self.refused,
                    "aborted": self.aborted}

    def admit(self, conn: _Guard) -> bool:
        """A connection was accepted: count it as pending; False to refuse it outright."""
        victim = None
        with self._lock:
            if len(self._dropped) >= self.limits.max_dropped:
                self.refused += 1
                return False
            if len(self._pending) >= self.limits.max_pending:
                victim = next(iter(self._pending))
                self.evicted += 1
            self._pending[conn] = None
        if victim is not None:
            victim.drop("dropped to make room: more than "
                        f"{self.limits.max_pending} connections without an A-ASSOCIATE-RQ", level=logging.DEBUG)
            self._summarise()
        return True

    def refuse(self, address: str) -> None:
        """Note a connection refused at accept (too many dropped connections still held)."""
        log.debug("DICOM connection from %s refused", address)
        self._summarise()

    def _summarise(self, every: float = 10.0) -> None:
        """One warning per ``every`` seconds at most about evicted and refused connections: a flood
        of connections must not become a flood of log lines."""
        now = time.monotonic()
        with self._lock:
            at, evicted, refused = self._told
            if now - at < every:
                return
            self._told = (now, self.evicted, self.refused)
            new_evicted, new_refused = self.evicted - evicted, self.refused - refused
        log.warning("DICOM listener under connection pressure: %d half-open connection(s) dropped to make room "
                    "(more than %d pending), %d connection(s) refused (%d dropped ones still held)",
                    new_evicted, self.limits.max_pending, new_refused, self.limits.max_dropped)

    def requested(self, conn: _Guard) -> None:
        with self._lock:
            self._pending.pop(conn, None)

    def take_slot(self, conn: _Guard) -> bool:
        """Count ``conn`` as an association if there is room (``max_associations``)."""
        with self._lock:
            if conn in self._slots:
                return True
            if len(self._slots) >= self.limits.max_associations:
                return False
            self._slots.add(conn)
            return True

    def dropped(self, conn: _Guard) -> None:
        with self._lock:
            self._pending.pop(conn, None)
            self._slots.discard(conn)
            self._dropped.add(conn)

    def closed(self, conn: _Guard) -> None:
        with self._lock:
            self._pending.pop(conn, None)
            self._slots.discard(conn)
            self._dropped.discard(conn)


class _Framer:
    """Follows PDU boundaries (PS3.8 9.3.1: type, reserved, 32-bit length) in a byte stream."""

    __slots__ = ("head", "left", "pdu_type")

    def __init__(self) -> None:
        self.head = bytearray()
        self.left = 0
        self.pdu_type = 0

    def take_header(self, data: bytes | bytearray | memoryview, at: int, end: int) -> tuple[int, tuple[int, int] | None]:
        """Add ``data[at:end]``'s first bytes to the header being read: (where reading stopped,
        (PDU type, length) once all six bytes are in, else None)."""
        need = 6 - len(self.head)
        self.head += data[at : at + need]
        at += min(need, end - at)
        if len(self.head) < 6:
            return at, None
        header = self.head[0], int.from_bytes(self.head[2:6], "big")
        self.head.clear()
        return at, header


class _Guard:
    """The bounds of one accepted connection; mixed into a socket class (see the module docstring).

    Without :meth:`_g_init` (a socket made elsewhere) the methods pass straight through.
    """

    _g_adm: Admission | None = None

    def _g_init(self, admission: Admission, peer: Any) -> None:
        self._g_adm = admission
        self._g_limits = admission.limits
        self._g_peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        self._g_state = PENDING
        self._g_deadline = time.monotonic() + admission.limits.artim
        self._g_in = _Framer()
        self._g_out = _Framer()
        self._g_dead = False
        self._g_dead_lock = threading.Lock()
        self._g_handshaken = not isinstance(self, ssl.SSLSocket)

    # ------------------------------------------------------------ reading

    # The socket methods underneath (socket.socket's or ssl.SSLSocket's), set by each subclass.
    _g_base_recv: Any
    _g_base_recv_into: Any

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if self._g_adm is None:
            return self._g_base_recv(bufsize, flags)  # type: ignore[no-any-return]
        if self._g_dead or (self._g_state != ESTABLISHED and not self._g_ready()):
            return b""
        try:
            data: bytes = self._g_base_recv(bufsize, flags)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            self._g_timed_out()
            return b""
        except (OSError, ValueError):
            if self._g_dead:
                return b""
            raise
        f = self._g_in
        n = len(data)
        if 0 < n <= f.left:  # inside a PDU body: the common case, kept short
            f.left -= n
            if not f.left:
                self._g_pdu_in(f.pdu_type)
            return data
        if n and not self._g_feed(data):
            return b""
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if self._g_adm is None:
            return self._g_base_recv_into(buffer, nbytes, flags)  # type: ignore[no-any-return]
        if self._g_dead or (self._g_state != ESTABLISHED and not self._g_ready()):
            return 0
        try:
            n: int = self._g_base_recv_into(buffer, nbytes, flags)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            self._g_timed_out()
            return 0
        except (OSError, ValueError):
            if self._g_dead:
                return 0
            raise
        f = self._g_in
        if 0 < n <= f.left:
            f.left -= n
            if not f.left:
                self._g_pdu_in(f.pdu_type)
            return n
        if n and not self._g_feed(memoryview(buffer)[:n]):
            return 0
        return n

    def _g_ready(self) -> bool:
        """Before a read until association: False when ARTIM has run out; else the socket carries
        the time left (and a TLS connection has done its handshake)."""
        left = self._g_deadline - time.monotonic()
        if left <= 0:
            self._g_timed_out()
            return False
        self.settimeout(left)  # type: ignore[attr-defined]
        if not self._g_handshaken:
            try:
                self.do_handshake()  # type: ignore[attr-defined]
            except (OSError, ValueError) as exc:  # timeout, TLS alert, reset
                self.drop(f"TLS handshake failed: {exc}", level=logging.INFO)
                return False
            self._g_handshaken = True
        return True

    def _g_feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Follow the PDUs in received ``data``; False (connection dropped) on a lie."""
        f = self._g_in
        at, end = 0, len(data)
        while at < end:
            if f.left:
                take = min(f.left, end - at)
                f.left -= take
                at += take
                if not f.left:
                    self._g_pdu_in(f.pdu_type)
                continue
            at, header = f.take_header(data, at, end)
            if header is None:
                break
            pdu_type, length = header
            if not 0x01 <= pdu_type <= 0x07:
                self._g_lie(f"unknown PDU type 0x{pdu_type:02X}", _ABORT_UNRECOGNISED_PDU)
                return False
            limit = self._g_limits.max_pdu if self._g_state == ESTABLISHED else self._g_limits.associate_rq_max
            if length > limit:
                what = "after association" if self._g_state == ESTABLISHED else "before association"
                self._g_lie(f"PDU type 0x{pdu_type:02X} of {length} bytes announced {what} "
                            f"(at most {limit})", _ABORT_INVALID_PARAMETER)
                return False
            f.pdu_type, f.left = pdu_type, length
            if not length:
                self._g_pdu_in(pdu_type)
        return True

    def _g_pdu_in(self, pdu_type: int) -> None:
        if pdu_type == 0x01 and self._g_state == PENDING:
            self._g_state = REQUESTED
            assert self._g_adm is not None
            self._g_adm.requested(self)
            self._g_idle_timeouts()  # the answer is not held to what is left of ARTIM (reads still are)

    def _g_lie(self, what: str, abort: bytes) -> None:
        assert self._g_adm is not None
        with self._g_adm._lock:
            self._g_adm.aborted += 1
        self.drop(what, abort=abort)

    def _g_timed_out(self) -> None:
        if self._g_state == ESTABLISHED:
            self.drop(f"no data for {self._g_limits.idle} s in the middle of a PDU", abort=_ABORT_NO_REASON)
        elif self._g_state == PENDING:
            self.drop(f"no complete A-ASSOCIATE-RQ within the ARTIM timeout ({self._g_limits.artim} s)",
                      level=logging.INFO)  # PS3.8 AA-2: close, no A-ABORT
        else:
            self.drop("timed out", level=logging.INFO)

    # ------------------------------------------------------------ writing

    def send(self, data: Any, flags: int = 0) -> int:
        n: int = super().send(data, flags)  # type: ignore[misc]
        if self._g_adm is not None and self._g_state < ESTABLISHED and n:
            self._g_sent(memoryview(data)[:n])
        return n

    def sendall(self, data: Any, flags: int = 0) -> None:
        super().sendall(data, flags)  # type: ignore[misc]
        if self._g_adm is not None and self._g_state < ESTABLISHED:
            self._g_sent(memoryview(data))

    def _g_sent(self, data: memoryview) -> None:
        """Follow the node's own PDUs until it has answered the association request."""
        f = self._g_out
        at, end = 0, len(data)
        while at < end and self._g_state < ESTABLISHED:
            if f.left:
                take = min(f.left, end - at)
                f.left -= take
                at += take
                continue
            at, header = f.take_header(data, at, end)
            if header is None:
                break
            pdu_type, f.left = header
            if pdu_type == 0x02:  # A-ASSOCIATE-AC: from now on the negotiated limits apply
                self._g_state = ESTABLISHED
                self._g_idle_timeouts()
            elif pdu_type in (0x03, 0x07):  # A-ASSOCIATE-RJ, A-ABORT
                self._g_state = ENDING

    def _g_idle_timeouts(self) -> None:
        """After association: a blocking socket whose reads and writes give up after ``idle``
        seconds without progress (SO_RCVTIMEO / SO_SNDTIMEO: the kernel keeps the time, so a
        read costs no extra ``poll`` as with Python's own socket timeout)."""
        self.settimeout(None)  # type: ignore[attr-defined]
        idle = self._g_limits.idle
        if not idle:
            return
        tv = struct.pack("ll", int(idle), int((idle % 1) * 1_000_000))
        try:
            self.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)  # type: ignore[attr-defined]
            self.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)  # type: ignore[attr-defined]
        except OSError:
            pass

    # ------------------------------------------------------------ ending

    def drop(self, why: str, abort: bytes | None = None, level: int = logging.WARNING) -> None:
        """End the connection now: an A-ABORT first if ``abort``, then shut the socket down
        (the reader sees the connection closed; its owner still closes it)."""
        if self._g_adm is None:
            return
        with self._g_dead_lock:
            if self._g_dead:
                return
            self._g_dead = True
        log.log(level, "DICOM connection from %s dropped: %s", self._g_peer, why)
        if abort is not None and self._g_handshaken:
            try:
                self.settimeout(1.0)  # type: ignore[attr-defined]
                super().sendall(abort)  # type: ignore[misc]
            except (OSError, ValueError):
                pass
        try:
            socket.socket.shutdown(self, socket.SHUT_RDWR)  # type: ignore[arg-type]  # the TCP stream itself
        except (OSError, ValueError):
            pass
        self._g_adm.dropped(self)

    def close(self) -> None:
        if self._g_adm is not None:
            self._g_adm.closed(self)
        super().close()  # type: ignore[misc]

    @property
    def guarded_state(self) -> int:
        return self._g_state if self._g_adm is not None else ESTABLISHED


class GuardedSocket(_Guard, socket.socket):
    """An accepted TCP connection under the bounds of its :class:`Admission`."""

    _g_base_recv = socket.socket.recv
    _g_base_recv_into = socket.socket.recv_into


class GuardedSSLSocket(_Guard, ssl.SSLSocket):  # type: ignore[misc]  # recv's parameter is buflen there
    """An accepted TLS connection under the bounds of its :class:`Admission` (PS3.15 B.1)."""

    _g_base_recv = ssl.SSLSocket.recv
    _g_base_recv_into = ssl.SSLSocket.recv_into


def guard_of(assoc: Any) -> _Guard | None:
    """The guarded socket under a pynetdicom association, if it has one."""
    dul = getattr(assoc, "dul", None)
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    return sock if isinstance(sock, _Guard) and sock._g_adm is not None else None


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server, accepting :class:`GuardedSocket` connections.

    Given to ``AE.make_server(server_class=...)``; the admission is set on the
    class made by :func:`server_class`.  It is not registered with the AE
    (``ae.shutdown()`` does not stop it): its owner calls :meth:`shutdown`.
    """

    admission: Admission
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.ssl_context is not None:
            self.ssl_context.sslsocket_class = GuardedSSLSocket

    def get_request(self) -> tuple[Any, Any]:
        assert self.socket is not None
        raw, address = self.socket.accept()
        conn: _Guard
        if self.ssl_context is not None:
            # the handshake happens in the connection's own thread, under ARTIM (see _Guard._g_ready)
            conn = self.ssl_context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)  # type: ignore[assignment]
        else:
            conn = GuardedSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
        conn._g_init(self.admission, address)
        return conn, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if self.admission.admit(request):
            return True
        self.admission.refuse(str(client_address[0]))
        return False

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket."""
        import socketserver

        socketserver.BaseServer.shutdown(self)
        self.server_close()


def server_class(admission: Admission) -> type[GuardedServer]:
    """A :class:`GuardedServer` class bound to ``admission`` (pynetdicom instantiates it)."""
    return type("GuardedServer", (GuardedServer,), {"admission": admission})


def serve(ae: Any, address: tuple[str, int], admission: Admission, *, ssl_context: ssl.SSLContext | None = None,
          evt_handlers: list[Any] | None = None, request_handler: Any = None) -> GuardedServer:
    """Start a guarded listener for ``ae`` on ``address`` in a daemon thread and return it.

    ``request_handler`` is pynetdicom's own unless given (the fast engine gives
    :class:`hilum.dimse.reactor.RequestHandler`).
    """
    kwargs: dict[str, Any] = {"ssl_context": ssl_context, "evt_handlers": evt_handlers,
                              "server_class": server_class(admission)}
    if request_handler is not None:
        kwargs["request_handler"] = request_handler
    server: GuardedServer = ae.make_server(address, **kwargs)
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{address[1]}", daemon=True)
    thread.start()
    return server


__all__ = ["ASSOCIATE_RQ_MAX", "DEFAULT_ARTIM", "DEFAULT_MAX_PENDING", "Admission", "GuardedSSLSocket",
           "GuardedServer", "GuardedSocket", "Limits", "guard_of", "serve", "server_class"]
