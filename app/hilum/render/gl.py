"""One lock for all of VTK's OpenGL work in the process, and the rules that go with it.

VTK's OpenGL render windows, GLX/EGL and Mesa are not safe to drive from several
threads at once, even with a window (and an X connection) per thread: native
backtraces of the crashes in the GUI tests showed the GUI thread in
``glXMakeCurrent`` (an MPR plane's ``Render``) while a build thread was in
``glXChooseFBConfig`` creating the next window (Mesa's driver-config parsing),
and VTK itself keeps process-wide state (the OpenGL function loader, the text
renderer's FreeType cache, the object factories).  So, in this process:

* every call that may reach OpenGL or the window system — creating a render
  window, ``Render``, reading pixels back, removing a prop (it releases its
  graphics resources), ``Finalize`` — runs holding :data:`VTK_LOCK`
  (:func:`gl_lock`, or :func:`try_gl_lock` on the GUI thread, which re-schedules
  instead of waiting);
* no OpenGL context stays current after the lock is released
  (:func:`release_context` after each frame), so the next frame of a window may
  be rendered by another thread;
* every window is finalized explicitly (:func:`finalize_window`) by its owner's
  ``close`` once nothing renders it any more (the 3D view's render thread
  joined), so that the garbage collector, on whatever thread it runs, never
  frees a live OpenGL context; :func:`finalize_when_collected` covers owners
  that are dropped without a close (a finalize that finds the lock busy is left
  to whoever holds it next, never waited for, so the collector cannot deadlock).

A long full-quality 3D frame holds the lock for up to seconds in software OpenGL:
:func:`rendering_still` registers its window so that a thread that needs the lock
on behalf of the user (``abort=True``) aborts that frame rather than wait for it
(the 3D view renders the changed scene again right after).
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

__all__ = [
    "VTK_LOCK",
    "finalize_when_collected",
    "finalize_window",
    "gl_lock",
    "gl_unlock",
    "import_vtk",
    "release_context",
    "rendering_still",
    "try_gl_lock",
    "weak_callback",
]

VTK_LOCK = threading.RLock()
"""Held by the one thread that talks to OpenGL / the window system through VTK."""

_still: list[Any] = []  # windows rendering an abortable (full-quality) frame now
_pending: list[Any] = []  # windows whose owner was collected while the lock was busy
_depth = 0  # how many times the holder holds VTK_LOCK (only the holder reads or writes it)
_owner = 0  # the holder's thread id (0: none)
_gui_wants_at = 0.0  # time.monotonic() when the main (GUI) thread last failed to get the lock
GUI_FIRST_S = 0.05
"""A background thread about to take the lock (not holding it yet) lets the GUI thread have it
first when the GUI asked for it less than this long ago: the lock is not fair, and a render
thread that renders again at once (an aborted frame) would otherwise starve the GUI's retries."""


def _gui_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _let_the_gui_first() -> None:
    if _owner == threading.get_ident() or _gui_thread():
        return
    deadline = time.monotonic() + 1.0
    while time.monotonic() - _gui_wants_at < GUI_FIRST_S and time.monotonic() < deadline:
        time.sleep(0.002)


def _gui_waits() -> None:
    global _gui_wants_at
    if _gui_thread():
        _gui_wants_at = time.monotonic()


def _abort_still_frames() -> None:
    """Abort the full-quality frames being rendered, for the GUI thread only (what the user waits
    on): a background thread waits its turn."""
    if _gui_thread():
        for window in list(_still):
            window.SetAbortRender(1)


def _acquired() -> None:
    """Just acquired :data:`VTK_LOCK`; at the outermost level (no frame half-drawn on this thread,
    no context current) finalize the windows left for the next holder."""
    global _depth, _owner, _gui_wants_at
    _depth += 1
    _owner = threading.get_ident()
    if _gui_thread():
        _gui_wants_at = 0.0
    if _depth == 1:
        while _pending:
            _finalize(_pending.pop())


def gl_unlock() -> None:
    """Release :data:`VTK_LOCK` taken with :func:`try_gl_lock`."""
    global _depth, _owner
    _depth -= 1
    if _depth == 0:
        _owner = 0
    VTK_LOCK.release()


@contextlib.contextmanager
def gl_lock(*, abort: bool = False) -> Iterator[None]:
    """Hold :data:`VTK_LOCK` (re-entrant).  ``abort``: on the GUI thread, a full-quality frame
    being rendered on another thread is aborted instead of waited for (work the user waits on).  A background
    thread lets the GUI thread go first when it is waiting (:data:`GUI_FIRST_S`)."""
    _let_the_gui_first()
    if not VTK_LOCK.acquire(blocking=False):
        while not VTK_LOCK.acquire(timeout=0.002):
            _gui_waits()
            if abort:
                _abort_still_frames()
    try:
        _acquired()
    except BaseException:
        gl_unlock()
        raise
    try:
        yield
    finally:
        gl_unlock()


def try_gl_lock(*, abort: bool = True) -> bool:
    """Take :data:`VTK_LOCK` if free (release it with :func:`gl_unlock`); if not, return False
    and, with ``abort`` (the caller tries again soon), abort a full-quality frame in progress
    elsewhere and have background threads let this one go first (:data:`GUI_FIRST_S`)."""
    _let_the_gui_first()
    if VTK_LOCK.acquire(blocking=False):
        try:
            _acquired()
        except BaseException:
            gl_unlock()
            raise
        return True
    if abort:  # the caller will try again soon (not so a change queued for the render thread)
        _gui_waits()
        _abort_still_frames()
    return False


@contextlib.contextmanager
def rendering_still(window: Any) -> Iterator[None]:
    """Mark ``window`` as rendering a frame that others may abort (:func:`gl_lock`)."""
    _still.append(window)
    try:
        yield
    finally:
        _still.remove(window)


def release_context(window: Any) -> None:
    """Leave ``window``'s OpenGL context current in no thread (holding the lock)."""
    release = getattr(window, "ReleaseCurrent", None)
    if release is not None:
        with gl_lock():
            release()


def _finalize(window: Any) -> None:
    if window is not None:
        window.Finalize()  # releases every prop's graphics resources, the context, the X connection


def finalize_window(window: Any) -> None:
    """Free ``window``'s OpenGL context and window-system resources now (holding the lock); the
    VTK object may then be freed by any thread.  Nothing may render the window any more."""
    with gl_lock(abort=True):
        _finalize(window)


def _finalize_soon(window: Any) -> None:
    if _depth == 0 and try_gl_lock(abort=False):
        try:
            _finalize(window)
        finally:
            gl_unlock()
    else:  # busy, or collected in the middle of this thread's own VTK work: the next holder does it
        _pending.append(window)


def finalize_when_collected(owner: object, window: Any) -> Any:
    """Finalize ``window`` when ``owner`` is garbage-collected without having closed it; returns the
    :class:`weakref.finalize` (call ``.detach()`` once the owner finalized the window itself)."""
    return weakref.finalize(owner, _finalize_soon, window)


def weak_callback(method: Any) -> Any:
    """A VTK observer for a bound method that does not keep its object alive (an observer holds
    its callable, the object holds the VTK object: a cycle through C++ that the garbage
    collector cannot see, so the object, its windows and their contexts would never be freed)."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> None:
        m = ref()
        if m is not None:
            m(*args)

    return call


def import_vtk(*modules: str) -> None:
    """Import VTK modules holding the lock: importing one registers object factories (process-wide
    lists that a render on another thread reads), so a background import must not overlap VTK
    work elsewhere.  Use this to preload VTK off the GUI thread."""
    with gl_lock():
        for name in modules:
            importlib.import_module(name)
