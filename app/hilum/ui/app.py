"""Start the workstation: the Qt application, the archive, the DICOM node, the main window.

``hilum`` (no verb) and ``hilum gui`` come here through
:func:`hilum.cli.workstation.run_workstation`.  The node (DICOM, DICOMweb,
HL7 listeners; issue 3) starts in the background: a port that cannot be
bound is shown in the status bar and never stops the workstation.

Ending: closing the window, SIGTERM and SIGINT (Ctrl+C in the terminal) all
end the same way — the event loop returns, the window shuts its workers
down, the node stops (its ports close), the viewer's decoder processes are
asked to finish and, after a grace period (a worker busy decoding), ended;
no process the workstation started outlives it (a second signal while that
runs ends the children and the process at once).  The exit status is 0 after
closing the window or SIGTERM (a shutdown that was asked for and done), 130
after SIGINT, as for every other ``hilum`` verb interrupted by Ctrl+C.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Collection, Sequence
from types import FrameType
from typing import Any

from PySide6.QtCore import QCoreApplication, QEvent, QObject, QSocketNotifier, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from hilum import __version__
from hilum.archive import Archive
from hilum.config import Config
from hilum.ui.main_window import MainWindow

log = logging.getLogger(__name__)


def application(argv: list[str] | None = None) -> QApplication:
    """The process's QApplication (created once)."""
    app = QApplication.instance()
    if app is None:
        app = QApplication(argv if argv is not None else sys.argv[:1])
    assert isinstance(app, QApplication)
    QGuiApplication.setApplicationName("Hilum")
    QGuiApplication.setApplicationDisplayName("Hilum")
    QGuiApplication.setApplicationVersion(__version__)
    QGuiApplication.setOrganizationName("Hilum")
    QGuiApplication.setDesktopFileName("hilum")
    return app


_SERVICE_LABELS = {"dimse": "DICOM", "dicomweb": "DICOMweb", "hl7": "HL7"}


def node_summary(config: Config, node: Any = None) -> str:
    """The status bar's node line: AE title, address and the port of each running service."""
    parts: list[str] = []
    for service in getattr(node, "services", None) or []:
        name = str(getattr(service, "name", "service"))
        port = getattr(service, "port", None)
        try:
            port = port() if callable(port) else port
        except Exception:  # noqa: BLE001 - a label is not worth an error
            port = None
        parts.append(f"{_SERVICE_LABELS.get(name, name)} {port}" if port else _SERVICE_LABELS.get(name, name))
    if not parts:
        parts = [f"DICOM {config.dicom_port}"]
    return f"Node {config.aet} on {config.bind}: " + ", ".join(parts)


CHILD_GRACE_S = 5.0
"""How long child processes get to finish their work (a decode in flight) before they are ended."""

EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}
"""The workstation's exit status after each signal that ends it (module docstring)."""


class SignalQuit(QObject):
    """SIGTERM and SIGINT end the event loop, as closing the window does.

    A Python signal handler only runs when the interpreter gets control, and
    Qt's event loop runs in C++ for as long as nothing happens: the C-level
    handler writes the signal to a socket (:func:`signal.set_wakeup_fd`)
    whose notifier wakes the loop, the Python handler then runs and asks the
    loop to quit (queued, so a signal that comes before the loop runs quits
    it as soon as it starts).  A second signal during the shutdown ends the
    process at once, its child processes first (the usual "press Ctrl+C
    again").  :meth:`restore` puts the previous handlers back.
    """

    def __init__(self, app: QApplication):
        super().__init__(app)
        self.app = app
        self.signum: int | None = None
        self._quitting = False
        self._previous: dict[int, Any] = {}
        self._reader, self._writer = socket.socketpair()
        for sock in (self._reader, self._writer):
            sock.setblocking(False)
        self._notifier = QSocketNotifier(self._reader.fileno(), QSocketNotifier.Type.Read, self)
        self._notifier.activated.connect(self._drain)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for sig in EXIT_CODES:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    @classmethod
    def install(cls, app: QApplication) -> SignalQuit | None:
        """The handler, or None off the main thread (where Python allows no signal handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return None
        return cls(app)

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else EXIT_CODES.get(signal.Signals(self.signum), 128 + self.signum)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._quitting:
            # A second signal while the first one's shutdown is still under way (a peer that does
            # not let the node stop, a task that does not end): end now, the children first.
            log.warning("%s again: ending at once", signal.Signals(signum).name)
            stop_child_processes(0.0)
            os._exit(self.exit_code if self.exit_code is not None else 128 + signum)
        log.info("%s: closing the workstation", signal.Signals(signum).name)
        self.signum = signum
        self._quitting = True
        QTimer.singleShot(0, self.app.quit)

    def _drain(self) -> None:
        try:
            while self._reader.recv(64):
                pass
        except OSError:  # nothing more to read (EAGAIN)
            pass

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        signal.set_wakeup_fd(self._previous_fd)
        self._notifier.setEnabled(False)
        self._reader.close()
        self._writer.close()


def stop_child_processes(grace: float = CHILD_GRACE_S, *, spare: Collection[Any] = ()) -> list[int]:
    """End the processes this one started through :mod:`multiprocessing` (the viewer's decoder pool,
    an import's workers) that have not ended by themselves within ``grace`` seconds; those in
    ``spare`` (children from before the workstation started, in a test process) are left alone.

    Their pools were shut down first, so idle workers are already on their way
    out; one still busy (decoding a large frame) is terminated (SIGTERM), then
    killed if it does not go.  With the workers gone, the fork server and the
    resource tracker they shared end when this process does (they hold only
    its pipes).  Returns the pids that had to be terminated.
    """
    children = [c for c in multiprocessing.active_children() if c not in spare]
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    stuck = [c for c in children if c.is_alive()]
    for child in stuck:
        log.warning("ending child process %s (pid %s): still busy after %.0f s", child.name, child.pid, grace)
        child.terminate()
    for child in stuck:
        child.join(2.0)
        if child.is_alive():
            child.kill()
            child.join(2.0)
    return [c.pid for c in stuck if c.pid is not None]


class NodeRunner(QObject):
    """Starts and stops the workstation's :class:`hilum.node.Node` off the GUI thread and reports
    to the status bar (a port in use is reported there; the workstation goes on without the node)."""

    stateChanged = Signal(str, bool)  # text, ok

    def __init__(self, config: Config, archive: Archive, window: MainWindow):
        super().__init__(window)
        self.config = config
        self.archive = archive
        self.window = window
        self.node: Any = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self.stateChanged.connect(window.set_node_status)

    def start(self) -> None:
        from hilum.node import Node  # imported when started: `hilum gui --no-node` never loads the services

        self.stateChanged.emit("DICOM node: starting…", True)
        self.window.tasks.submit(self._start_node, Node, on_done=self._started, on_error=self._failed)

    def _start_node(self, node_class: Any) -> Any:
        with self._lock:  # not after stop(): the workstation is closing (a SIGTERM during start-up)
            if self._stopped.is_set():
                raise RuntimeError("the workstation is closing")
            node = node_class(self.config, archive=self.archive)
            self.node = node  # set before start() so that stop() finds it even if the window closed meanwhile
        node.start()
        return node

    def _started(self, node: Any) -> None:
        self.stateChanged.emit(node_summary(self.config, node), True)
        self.window.attach_node(node)  # the prefetch of priors, when the node runs one

    def _failed(self, exc: BaseException) -> None:
        log.warning("DICOM node did not start: %s", exc)
        self.stateChanged.emit(f"DICOM node not running: {exc}", False)

    def stop(self) -> None:
        """Stop the node (waits for a start under way: Node.start and stop take one lock)."""
        with self._lock:
            self._stopped.set()
            node, self.node = self.node, None
        if node is not None:
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - closing down: log and go on
                log.exception("stopping the DICOM node failed")


def _audit_activity(archive: Archive, config: Config, kind: str) -> None:
    """The workstation starting or stopping: "Application Activity" (PS3.15 A.5.3.1), its user the launcher."""
    from hilum.archive.audit import workstation_user

    archive.audit("Application Activity", action="E", event_type=kind, user=workstation_user(config),
                  role="launcher", detail=f"workstation {config.aet} {'started' if kind.endswith('Start') else 'stopped'}")


def install_viewer(window: MainWindow) -> Any:
    """Connect the viewer (issue 4) to the window, if the package has it; never fatal.

    Returns the viewer's controller, or None when there is no viewer.
    """
    try:
        from hilum.ui.viewer.wiring import install_viewer as install
    except ImportError as exc:
        log.info("no viewer in this build (%s): studies open nowhere", exc)
        return None
    try:
        return install(window)
    except Exception as exc:  # noqa: BLE001 - the browser must stay usable without the viewer
        log.exception("the viewer could not be installed")
        window.statusBar().showMessage(f"The viewer could not be loaded: {exc}")
        return None


def open_after_import(window: MainWindow, paths: Sequence[str]) -> bool:
    """Import ``paths`` through the window's importer (progress dialog), then open the first study.

    The first study is that of the first file imported or already held (a
    file opened twice is a duplicate, and its study opens all the same).
    Returns False when the import could not start.
    """

    def done(summary: Any) -> None:
        window.importFinished.disconnect(done)
        uids = list(getattr(summary, "study_uids", []) or [])
        if uids:
            window.open_study(uids[0])
        elif not getattr(summary, "error", None):
            window.statusBar().showMessage("No DICOM image found in " + ", ".join(paths), 10000)

    window.importFinished.connect(done)
    if not window.import_paths(list(paths)):
        window.importFinished.disconnect(done)
        return False
    return True


def run_gui(
    config: Config,
    *,
    demo: bool = False,
    demo_small: bool = False,
    start_node: bool = True,
    on_ready: Callable[[MainWindow], None] | None = None,
    open_paths: Sequence[str] = (),
) -> int:
    """Open the archive and the main window, run the event loop, close everything after.

    ``demo`` imports the demo studies at once (without asking); otherwise an
    empty archive shows an info bar offering them.  ``on_ready`` is called
    with the shown window (used by tests and scripted screenshots).
    ``open_paths`` (files, folders, DICOMDIRs given on the command line, e.g. by
    a file manager) are imported with a progress bar, then the first study is
    opened in a viewer tab (:func:`open_after_import`).
    """
    app = application()
    archive = Archive.from_config(config)
    _audit_activity(archive, config, "Application Start")
    signals = SignalQuit.install(app)  # from here on, the finally below puts the handlers back
    children_before = multiprocessing.active_children()
    node: NodeRunner | None = None
    window: MainWindow | None = None
    try:
        window = MainWindow(config, archive)
        window.setWindowTitle(f"Hilum — {config.aet}")
        install_viewer(window)
        window.show()
        if start_node:
            node = NodeRunner(config, archive, window)
            node.start()
        else:
            window.set_node_status("DICOM node: off (--no-node)", True)
        if demo:
            window.load_demo(small=demo_small)
        elif open_paths:
            open_after_import(window, open_paths)
        if on_ready is not None:
            on_ready(window)
        code = app.exec()
        window.close()
        # Closing the last window after the loop ended posts a Quit event (Qt 6) that would end the
        # next event loop of this process at once: a caller that runs the workstation again in
        # this process (tests, a scripted screenshot) would find its loops dead.
        QCoreApplication.removePostedEvents(app, QEvent.Type.Quit)
        if signals is not None and signals.exit_code is not None:
            return signals.exit_code
        return int(code)
    finally:
        if node is not None:
            node.stop()
        _audit_activity(archive, config, "Application Stop")
        viewers = getattr(window, "viewer_controller", None)
        if viewers is not None:
            viewers.shutdown()  # the decoder pool's workers are told to finish (idempotent)
        if window is not None:
            # The window (its viewers, menus, popups) goes with the session: a caller that runs
            # the workstation again in this process (tests, a scripted screenshot) gets no stray
            # top-level widgets, and nothing holds the archive closed below.
            window.deleteLater()
            QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        archive.close()
        stop_child_processes(spare=children_before)
        if signals is not None:
            signals.restore()
