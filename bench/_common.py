"""Helpers every benchmark shares: a free loopback port, waiting for a listener.

The benchmarks are scripts, not a package: each puts ``bench/`` on ``sys.path``
and imports from here (``from _common import free_port, wait_port``).  The
test suite's twins live in ``tests/conftest.py``.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, below the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` may be handed out again as the
    source port of an outgoing connection before the server under test binds
    it; one below the ephemeral range is not (as ``tests/conftest.py``).
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(1024, min(low, 65536) - 12000)
    for _ in range(200):
        port = random.randrange(low, low + 12000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` now."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 60.0, host: str = "127.0.0.1") -> None:
    """Return once ``host:port`` accepts connections; RuntimeError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f} s")
