"""Start the workstation: the Qt application, the archive, the DICOM node, the main window.

``hilum`` (no verb) and ``hilum gui`` come here through
:func:`hilum.cli.workstation.run_workstation`.  The node (DICOM, DICOMweb,
HL7 listeners; issue 3) starts in the background: a port that cannot be
bound is shown in the status bar and never stops the workstation.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QEvent, QObject, Signal
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
        self.stateChanged.connect(window.set_node_status)

    def start(self) -> None:
        from hilum.node import Node  # imported when started: `hilum gui --no-node` never loads the services

        self.stateChanged.emit("DICOM node: starting…", True)
        self.window.tasks.submit(self._start_node, Node, on_done=self._started, on_error=self._failed)

    def _start_node(self, node_class: Any) -> Any:
        node = node_class(self.config, archive=self.archive)
        self.node = node  # set before start() so that stop() finds it even if the window closed meanwhile
        node.start()
        return node

    def _started(self, node: Any) -> None:
        self.stateChanged.emit(node_summary(self.config, node), True)

    def _failed(self, exc: BaseException) -> None:
        log.warning("DICOM node did not start: %s", exc)
        self.stateChanged.emit(f"DICOM node not running: {exc}", False)

    def stop(self) -> None:
        node, self.node = self.node, None
        if node is not None:
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - closing down: log and go on
                log.exception("stopping the DICOM node failed")


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


def run_gui(
    config: Config,
    *,
    demo: bool = False,
    demo_small: bool = False,
    start_node: bool = True,
    on_ready: Callable[[MainWindow], None] | None = None,
) -> int:
    """Open the archive and the main window, run the event loop, close everything after.

    ``demo`` imports the demo studies at once (without asking); otherwise an
    empty archive shows an info bar offering them.  ``on_ready`` is called
    with the shown window (used by tests and scripted screenshots).
    """
    app = application()
    archive = Archive.from_config(config)
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
        if on_ready is not None:
            on_ready(window)
        code = app.exec()
        window.close()
        return int(code)
    finally:
        if node is not None:
            node.stop()
        if window is not None:
            # The window (its viewers, menus, popups) goes with the session: a caller that runs
            # the workstation again in this process (tests, a scripted screenshot) gets no stray
            # top-level widgets, and nothing holds the archive closed below.
            window.deleteLater()
            QApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        archive.close()
