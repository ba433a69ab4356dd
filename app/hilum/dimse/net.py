"""Socket options and TLS for every DICOM association Hilum opens or accepts.

``TCP_NODELAY``: DIMSE sends a command and its dataset as separate small
writes; with Nagle's algorithm on, the peer's delayed ACK stalls every
message (~20 instances/s on loopback, see ../shared/ENVIRONMENT.md).
pynetdicom never sets the option, so :func:`set_nodelay` is bound to
``EVT_CONN_OPEN`` on the server and on every SCU association.

TLS follows PS3.15 B.1 (the Basic TLS Secure Transport Connection Profile):
the node presents its certificate, and verifies the peer's against a CA file
when one is configured (mutual authentication).
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from pynetdicom import evt

from hilum.errors import ConfigError

log = logging.getLogger(__name__)


def nodelay(sock: Any) -> None:
    """Set ``TCP_NODELAY`` on ``sock`` (a socket or an SSL socket); ignore closed sockets."""
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError, ValueError):  # closed already, or not TCP
        pass


def set_nodelay(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler: turn Nagle off on the association's socket."""
    dul_socket = getattr(event.assoc.dul, "socket", None)
    nodelay(getattr(dul_socket, "socket", None))


RECEIVE_BUFFER = 4 << 20
"""Receive buffer of the node's accepted connections (bytes; the kernel caps it at net.core.rmem_max).

A modality's C-STORE of a 512x512 CT slice is ~0.5 MB; with room for all of
it the sender never stalls on a full buffer while the node writes what came
first (Linux's autotuning starts at 128 KiB and grows only with the flow)."""


def large_receive_buffer(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler of the SCP: a receive buffer that holds a whole instance."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    except (OSError, AttributeError, ValueError):
        pass


#: Event handlers every Hilum association (SCP or SCU) is bound with.
NODELAY_HANDLERS: list[tuple[Any, Any]] = [(evt.EVT_CONN_OPEN, set_nodelay)]


def server_ssl_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    """The TLS context of the node's listening port.

    With ``ca`` the peer must present a certificate signed by it (mutual TLS);
    without, any client may connect over TLS and is identified by AE title only.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
        if ca:
            ctx.load_verify_locations(cafile=ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.verify_mode = ssl.CERT_NONE
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate/key/CA: {exc}") from exc
    return ctx


def client_ssl_context(ca: str | None = None, cert: str | None = None, key: str | None = None,
                       verify: bool = True) -> ssl.SSLContext:
    """The TLS context for an association Hilum requests.

    The server's certificate is checked against ``ca`` (or the system's CAs)
    and its host name unless ``verify`` is false; ``cert``/``key`` are
    presented when the server asks for a client certificate.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if ca:
            ctx.load_verify_locations(cafile=ca)
        if cert:
            ctx.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate/key/CA: {exc}") from exc
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
