"""Qt starts headless: one check for ``hilum selftest`` (issue 22), run in a child process.

A missing Qt platform plugin makes Qt abort the process (it does not raise), so
``hilum selftest`` runs :func:`offscreen_grab` in a child ``hilum selftest
--qt-child`` and reads its one JSON line; here only the check itself.
"""

from __future__ import annotations

import os
from typing import Any


def offscreen_grab() -> dict[str, Any]:
    """Start a QApplication on the offscreen platform, grab one widget, and say what was drawn.

    The widget is a plain label with a black background and white text: the grab
    must be its size and hold both dark and light pixels (Qt drew, fonts loaded).
    """
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PySide6.QtGui import QImage
    from PySide6.QtWidgets import QApplication, QLabel

    app = QApplication.instance() or QApplication(["hilum-selftest"])
    label = QLabel("Hilum selftest 0123456789")
    label.setStyleSheet("QLabel { background: black; color: white; font-size: 20px; }")
    label.resize(320, 60)
    label.show()
    app.processEvents()
    image = label.grab().toImage().convertToFormat(QImage.Format.Format_Grayscale8)
    width, height = image.width(), image.height()
    values = set()
    for y in range(0, height, 2):
        for x in range(0, width, 2):
            values.add(image.pixelColor(x, y).value())
    label.close()
    label.deleteLater()
    app.processEvents()
    return {
        "platform": app.platformName(),  # type: ignore[attr-defined]
        "width": width,
        "height": height,
        "dark": min(values) if values else None,
        "light": max(values) if values else None,
        "levels": len(values),
    }
