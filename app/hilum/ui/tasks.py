"""Background work for the GUI: run a callable off the GUI thread, get its result back by signal.

DESIGN.md "The GUI never waits": queries, imports, decoding run on worker
threads; their results (or exceptions) are delivered to callbacks on the
thread that owns the :class:`TaskRunner` — the GUI thread — through a queued
Qt signal, so callbacks may touch widgets.  Long jobs report progress and
can be cancelled through a :class:`Job`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

log = logging.getLogger(__name__)

Callback = Callable[[Any], None] | None


class TaskRunner(QObject):
    """A thread pool whose results come back on the owner's (GUI) thread.

    ``submit(fn, *args, on_done=cb, on_error=eb)`` runs ``fn`` on a worker;
    ``cb(result)`` or ``eb(exception)`` then runs on the GUI thread.  After
    :meth:`shutdown` nothing more is delivered (the window is closing).
    """

    _finished = Signal(object, object, object, object)  # on_done, on_error, result, exception

    def __init__(self, max_workers: int = 2, name: str = "hilum-ui", parent: QObject | None = None):
        super().__init__(parent)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self._closed = False
        self._lock = threading.Lock()
        self._active = 0
        self._finished.connect(self._deliver)

    @property
    def active(self) -> int:
        """How many submitted tasks have not yet been delivered."""
        return self._active

    def submit(
        self, fn: Callable[..., Any], *args: Any, on_done: Callback = None, on_error: Callback = None, **kwargs: Any
    ) -> Future[Any]:
        if self._closed:
            raise RuntimeError("TaskRunner is shut down")
        with self._lock:
            self._active += 1
        future = self._pool.submit(fn, *args, **kwargs)
        future.add_done_callback(partial(self._relay, on_done, on_error))
        return future

    def _relay(self, on_done: Callback, on_error: Callback, future: Future[Any]) -> None:
        # Runs on the worker thread (or the caller's, if already done).
        if self._closed:
            return
        if future.cancelled():
            result, exc = None, None
            on_done = on_error = None
        else:
            exc = future.exception()
            result = None if exc is not None else future.result()
        try:
            self._finished.emit(on_done, on_error, result, exc)
        except RuntimeError:  # the C++ object is gone: the window closed meanwhile
            pass

    @Slot(object, object, object, object)
    def _deliver(self, on_done: Callback, on_error: Callback, result: Any, exc: BaseException | None) -> None:
        with self._lock:
            self._active -= 1
        if self._closed:
            return
        if exc is not None:
            if on_error is not None:
                on_error(exc)
            else:
                log.error("background task failed", exc_info=exc)
        elif on_done is not None:
            on_done(result)

    def shutdown(self, wait: bool = True) -> None:
        """Stop delivering results; cancel queued tasks; optionally wait for running ones."""
        self._closed = True
        self._pool.shutdown(wait=wait, cancel_futures=True)


class Job(QObject):
    """A long task's progress and cancellation, shared by the worker and the GUI.

    The worker calls :meth:`report` (thread-safe, throttled so a 100,000-file
    import does not flood the event loop) and checks :attr:`cancel_event`;
    the GUI listens to :attr:`progressed` and calls :meth:`cancel`.
    """

    progressed = Signal(int, int, str)  # done, total (0 = unknown), label

    def __init__(self, parent: QObject | None = None, min_interval: float = 0.05):
        super().__init__(parent)
        self.cancel_event = threading.Event()
        self._min_interval = min_interval
        self._last = 0.0
        self._label = ""

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def cancel(self) -> None:
        self.cancel_event.set()

    def report(self, done: int, total: int, label: str | None = None, *, force: bool = False) -> None:
        now = time.monotonic()
        if label is not None and label != self._label:
            self._label = label
            force = True
        if not force and done != total and now - self._last < self._min_interval:
            return
        self._last = now
        try:
            self.progressed.emit(done, total, self._label)
        except RuntimeError:  # the GUI side is gone
            pass
