"""A refusal to open the data folder, shown in a window: the workstation is started from a desktop
entry, where nobody reads stderr (a newer Hilum's data folder, a backup before an upgrade that failed)."""

from __future__ import annotations

import os
import sys

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QMessageBox


def can_show() -> bool:
    """Whether a window can be shown at all (on Linux without a display Qt would abort the process)."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def show_startup_error(title: str, message: str) -> None:
    """A modal error box with ``message`` (the one line the CLI prints), until the user closes it."""
    _app = QApplication.instance() or QApplication(sys.argv[:1])
    box = QMessageBox(QMessageBox.Icon.Critical, title, message, QMessageBox.StandardButton.Close)
    box.setObjectName("startupError")
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # the paths can be copied
    box.exec()
