"""``hilum.processes.pid_alive``: the one liveness check behind claims, locks and ``hilum status``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hilum import processes
from hilum.processes import pid_alive


def test_live_and_dead_processes() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now (unless reused at once, which Linux does not do)
    assert not pid_alive(child.pid)
    assert not pid_alive(0) and not pid_alive(-1)


def test_windows_never_signals(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Windows ``os.kill(pid, 0)`` sends CTRL_C_EVENT: asking whether a node is alive would stop it.
    The Windows branch asks the Win32 API instead and never calls ``os.kill``."""
    asked: list[int] = []

    def no_kill(*_args: object) -> None:
        raise AssertionError("os.kill called on Windows")

    monkeypatch.setattr(os, "name", "nt")
    monkeypatch.setattr(os, "kill", no_kill)
    monkeypatch.setattr(processes, "_windows_pid_alive", lambda pid: asked.append(pid) or True)
    assert pid_alive(4242) and asked == [4242]
