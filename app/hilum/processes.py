"""Is a process alive?  One answer for every caller, safe on Windows.

The archive's claims (forwarding, AI jobs, temporary blobs), the remote cache's
locks and ``hilum status`` ask whether the process that wrote a pid is still
running.  On POSIX that is ``os.kill(pid, 0)``; on Windows it must not be:
there signal 0 is ``CTRL_C_EVENT``, which *interrupts* the process (a running
node would stop), so the process is looked up through the Win32 API instead.
"""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (without signalling it)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - Windows only
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (the service user's node seen by an admin)
        return True
    except OSError:
        return True  # cannot tell: alive, so that nothing of a live process is taken from it
    return True


def _windows_pid_alive(pid: int) -> bool:  # pragma: no cover - Windows only
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined,unused-ignore]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return bool(kernel32.GetLastError() == 5)  # ERROR_ACCESS_DENIED: it exists, another user's
    try:
        code = ctypes.c_ulong()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)
