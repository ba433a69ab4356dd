"""systemd's readiness protocol (sd_notify(3)) without a dependency: one datagram to ``$NOTIFY_SOCKET``.

``hilum serve`` under ``Type=notify`` (installer/linux/hilum.service) says
``READY=1`` once every listener is bound, so ``systemctl start hilum`` returns
when the node really answers (and fails when a port is taken), and
``STOPPING=1`` when a stop begins.  The protocol is a newline-separated list of
``KEY=VALUE`` assignments sent as one datagram on the AF_UNIX socket named by
the environment variable ``NOTIFY_SOCKET`` (a path, or ``@name`` for Linux's
abstract namespace); without the variable nothing is sent (a terminal, the
workstation, Windows, launchd, a container).  See
https://www.freedesktop.org/software/systemd/man/sd_notify.html.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def notify(*assignments: str) -> bool:
    """Send ``assignments`` (``"READY=1"``, ``"STATUS=..."``) to the service manager; True when sent.

    Never raises: a manager that went away is logged once at WARNING and the node runs on.
    """
    address = os.environ.get(ENV, "")
    if not address or not hasattr(socket, "AF_UNIX"):
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:  # vsock:... and other forms systemd may use for VMs: not for a service on the host
        log.warning("%s=%r is not a socket path this node can use; not notifying", ENV, address)
        return False
    payload = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            sock.sendall(payload)
    except OSError as exc:
        log.warning("could not notify the service manager at %s: %s", address, exc)
        return False
    return True


__all__ = ["ENV", "notify"]
