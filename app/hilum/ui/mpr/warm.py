"""Spare MPR render windows, made and warmed off the GUI thread before a reader asks for MPR.

A plane's first frame in a new offscreen window costs 35-90 ms in software OpenGL (the context,
and the shaders of its image, lines and text compiled for that window), the window itself
20 ms more: about 0.25 s for the three planes of an MPR, which is most of the time between a
click on "MPR" and the planes when the volume needs no copy (:func:`hilum.dicom.volume.volume_from_series`).
A window that has rendered an MPR plane once keeps its context and compiled shaders (VTK's
per-window shader cache), so a new plane in it renders in 5-15 ms.

So when the viewer has loaded a series (what comes before MPR), :func:`warm_in_background` makes
one spare set of three windows on a thread of its own, renders a tiny MPR scene in them and
takes it out again; :class:`hilum.ui.mpr.mpr_widget.MPRWidget` takes the set (:func:`take`) for
its planes and closes it with its scene. Made and rendered holding the VTK lock like every other
VTK use (:mod:`hilum.render.gl`); VTK is imported on that thread, never on the GUI thread.
``HILUM_MPR_WARM=0`` turns it off (windows are then made with each MPR, as before).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any

__all__ = ["WarmWindows", "discard", "enabled", "make", "ready", "take", "warm_in_background"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_spare: WarmWindows | None = None
_thread: threading.Thread | None = None


def enabled() -> bool:
    return os.environ.get("HILUM_MPR_WARM", "1").strip() != "0"


class WarmWindows:
    """Three offscreen render windows, one per MPR view, that have rendered an MPR plane.  Their
    owner (the scene's widget) frees them with :meth:`close` after closing the scene that used
    them; a set dropped unclosed is freed when collected (:func:`hilum.render.gl.finalize_when_collected`)."""

    def __init__(self, windows: dict[str, Any]) -> None:
        from hilum.render.gl import finalize_when_collected

        self.windows = windows
        self._finalizers = [finalize_when_collected(self, w) for w in windows.values()]
        self.closed = False

    def close(self) -> None:
        """Free the windows (nothing may render them any more)."""
        if self.closed:
            return
        self.closed = True
        from hilum.render.gl import finalize_window

        for w in self.windows.values():
            finalize_window(w)
        for f in self._finalizers:
            f.detach()


def make() -> WarmWindows:
    """A warmed set, made on the calling thread (VTK is imported here)."""
    import numpy as np

    from hilum.render.gl import import_vtk

    # VTK imported holding the VTK lock, as the viewer's own warm-up does (hilum.render.gl.import_vtk):
    # imported beside that one, each thread waited for a module the other was importing (a deadlock)
    import_vtk("hilum.render.mpr")
    from hilum.dicom.volume import Volume
    from hilum.render.mpr import VIEWS, MPRScene, offscreen_window

    warm = WarmWindows({v: offscreen_window((384, 384)) for v in VIEWS})
    ramp = np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8) - 100
    scene = MPRScene(Volume.from_array(ramp), windows=warm.windows, window=(40.0, 400.0))
    try:
        scene.render()
    finally:
        scene.close()  # leaves the windows (not its own), with their contexts and compiled shaders
    return warm


def _run() -> None:
    global _spare
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # the GUI keeps a core
    except (AttributeError, OSError):
        pass
    try:
        made: WarmWindows | None = make()
    except Exception:  # only a head start is lost: the MPR makes its own windows
        logger.debug("could not warm MPR windows", exc_info=True)
        return
    with _lock:
        if _spare is None:
            _spare, made = made, None
    if made is not None:
        made.close()


def warm_in_background() -> None:
    """Make a spare set on a thread of its own, unless one is ready or being made (or it is off)."""
    global _thread
    if not enabled():
        return
    with _lock:
        if _spare is not None or (_thread is not None and _thread.is_alive()):
            return
        # not a daemon: at exit the interpreter waits for it (a fraction of a second) instead of
        # finalizing while the thread is inside VTK
        _thread = threading.Thread(target=_run, name="hilum-mpr-warm")
        _thread.start()


def ready() -> bool:
    """True when a spare set is waiting to be taken."""
    with _lock:
        return _spare is not None


def take() -> WarmWindows | None:
    """The spare set, now the caller's (None when there is none ready)."""
    global _spare
    with _lock:
        spare, _spare = _spare, None
    return spare


def discard(timeout: float = 30.0) -> None:
    """Wait for a set being made (at most *timeout* s) and free the spare set, if any: what was
    warmed for one viewer's session is not handed to the next (tests start without one)."""
    thread = _thread
    if thread is not None and thread.is_alive() and thread is not threading.current_thread():
        thread.join(timeout)
    spare = take()
    if spare is not None:
        spare.close()


@atexit.register
def _discard() -> None:
    """Free an unused spare set before the interpreter finalizes (after non-daemon threads ended)."""
    spare = take()
    if spare is not None:
        spare.close()
