"""The workstation's icons, made in one place: Material Design Icons 6 (``mdi6``) from qtawesome.

qtawesome draws the icon font at any size and in the palette's colours, so the
toolbar stays sharp on any screen without image files. Each action has its icon
named in :data:`ACTION_ICONS`; :func:`icon` never fails: when qtawesome or one of
its glyphs is missing, the button gets a small text icon (the action's initials)
instead, so a toolbar can always be built and stays recognisable.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QIcon, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import QApplication

__all__ = ["ACTION_ICONS", "action_icon", "icon", "preload", "text_icon"]

logger = logging.getLogger(__name__)

ACTION_ICONS: dict[str, str] = {
    # left-button tools
    "tool_window": "mdi6.contrast-box",
    "tool_pan": "mdi6.cursor-move",
    "tool_zoom": "mdi6.magnify",
    "tool_scroll": "mdi6.layers-triple-outline",
    "tool_length": "mdi6.ruler",
    "tool_angle": "mdi6.angle-acute",
    "tool_ellipse": "mdi6.ellipse-outline",
    "tool_rect": "mdi6.rectangle-outline",
    "tool_probe": "mdi6.eyedropper",
    # menus on the toolbar
    "layout_menu": "mdi6.view-grid-outline",
    "preset_menu": "mdi6.circle-half-full",
    # the image
    "invert": "mdi6.invert-colors",
    "rotate_cw": "mdi6.rotate-right",
    "rotate_ccw": "mdi6.rotate-left",
    "flip_h": "mdi6.flip-horizontal",
    "flip_v": "mdi6.flip-vertical",
    "zoom_in": "mdi6.magnify-plus-outline",
    "zoom_out": "mdi6.magnify-minus-outline",
    "fit": "mdi6.fit-to-screen-outline",
    "reset": "mdi6.restore",
    "window_header": "mdi6.brightness-6",
    # stack and series
    "cine": "mdi6.play-pause",
    "next_slice": "mdi6.chevron-down",
    "prev_slice": "mdi6.chevron-up",
    "first_slice": "mdi6.format-vertical-align-top",
    "last_slice": "mdi6.format-vertical-align-bottom",
    "next_series": "mdi6.skip-next",
    "prev_series": "mdi6.skip-previous",
    # viewports and links
    "link_scroll": "mdi6.link-variant",
    "link_window": "mdi6.contrast-circle",
    "link_zoom": "mdi6.magnify-scan",
    "reference_lines": "mdi6.crosshairs",
    "overlay": "mdi6.format-text",
    "overlay_planes": "mdi6.layers-outline",
    # measurements
    "delete_measurement": "mdi6.delete-outline",
    "clear_measurements": "mdi6.delete-sweep-outline",
    # output and other views
    "export_view": "mdi6.file-image-outline",
    "export_cine": "mdi6.movie-open-outline",
    "mpr": "mdi6.axis-arrow",
    "volume_3d": "mdi6.cube-outline",
}
"""Action name (``QAction.objectName()``) → qtawesome icon name."""


def _foreground() -> QColor:
    app = QApplication.instance()
    if isinstance(app, QApplication):
        return app.palette().color(QPalette.ColorRole.ButtonText)
    return QColor(40, 40, 40)


def text_icon(text: str, size: int = 32) -> QIcon:
    """A plain icon showing up to three characters of *text* (the fallback when a glyph is missing)."""
    letters = "".join(w[0] for w in text.replace("/", " ").split() if w[:1].isalnum())[:3] or text[:2]
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    try:
        font = QFont()
        font.setPixelSize(max(8, size // (2 if len(letters) < 3 else 3)))
        font.setBold(True)
        p.setFont(font)
        p.setPen(_foreground())
        p.drawText(QRectF(0, 0, size, size), Qt.AlignmentFlag.AlignCenter, letters)
    finally:
        p.end()
    return QIcon(pix)


def icon(name: str, fallback_text: str = "") -> QIcon:
    """The qtawesome icon *name* (e.g. ``"mdi6.ruler"``), or a text icon of *fallback_text*
    (an empty icon without one) when qtawesome or the glyph is not there."""
    try:
        import qtawesome  # type: ignore[import-untyped]  # no type information shipped

        return qtawesome.icon(name, color=_foreground(), color_disabled=QColor(150, 150, 150))
    except Exception as exc:  # noqa: BLE001 - qtawesome raises a bare Exception for an unknown name
        logger.debug("no icon %s (%s): using a text icon", name, exc)
    return text_icon(fallback_text) if fallback_text else QIcon()


def action_icon(action_name: str, fallback_text: str = "") -> QIcon | None:
    """The icon of a named action (:data:`ACTION_ICONS`), None when the action has none."""
    name = ACTION_ICONS.get(action_name)
    return icon(name, fallback_text or action_name) if name is not None else None


def preload() -> None:
    """Import qtawesome and load its icon font now (~0.2 s: qtpy's module set-up), so the first
    viewer's toolbar does not: the main window calls this while it is built, before it shows,
    instead of inside the reader's first double-click on a study (an event-loop stall)."""
    icon(ACTION_ICONS["tool_window"])

