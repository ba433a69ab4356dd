"""The reading viewer: viewports, layouts, tools, series strip, cine, measurements.

Headless logic (no Qt, usable from tests, scripts and the CLI) lives in
:mod:`.state` (one viewport), :mod:`.model` (layout, active viewport, links,
reference lines), :mod:`.tools` (mouse tools and measurements),
:mod:`.presets`, :mod:`.overlay`, :mod:`.thumbnails`, :mod:`.export` and
:mod:`.study`; the Qt widgets that bind them are :mod:`.viewport_widget`,
:mod:`.series_strip` and :mod:`.viewer_widget`; :func:`install_viewer` wires
the viewer into the workstation's main window.
"""

from __future__ import annotations

from typing import Any


def install_viewer(window: Any) -> Any:
    """Open studies in viewer tabs of *window* (see :mod:`.wiring`)."""
    from hilum.ui.viewer.wiring import install_viewer as _install

    return _install(window)
