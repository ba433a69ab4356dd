"""MPR and 3D: three linked planes of one volume and a volume-rendered view (Qt widgets).

:class:`MPRWidget` is the layout; :func:`open_mpr` opens it as a window for a
series (a built :class:`hilum.dicom.volume.Volume` or the series' files),
which is what the viewer's "MPR" and "3D" actions call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from PySide6.QtWidgets import QWidget

from hilum.dicom.volume import Volume

if TYPE_CHECKING:
    from hilum.ui.mpr.canvas import SliceCanvas, VolumeCanvas, VTKCanvas
    from hilum.ui.mpr.mpr_widget import MPRWidget
    from hilum.ui.mpr.tf_editor import TransferFunctionEditor

__all__ = ["MPRWidget", "SliceCanvas", "TransferFunctionEditor", "VTKCanvas", "VolumeCanvas", "open_mpr"]

# VTK comes with these modules (a 0.25-0.5 s import): the package gives them on first use (PEP 562),
# so that the 2D viewer, which imports hilum.ui.mpr.viewer_hook for its MPR/3D actions, opens a
# study without importing VTK on the GUI thread (bench/viewer/workstation.py: the first
# double-click stalled the event loop ~0.2 s on that import).
_LAZY = {
    "MPRWidget": "hilum.ui.mpr.mpr_widget",
    "SliceCanvas": "hilum.ui.mpr.canvas",
    "VolumeCanvas": "hilum.ui.mpr.canvas",
    "VTKCanvas": "hilum.ui.mpr.canvas",
    "TransferFunctionEditor": "hilum.ui.mpr.tf_editor",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def open_mpr(
    source: Volume | Sequence[str | os.PathLike[str]],
    *,
    layout: str = "mpr",
    parent: QWidget | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    runner: Any = None,
    title: str = "",
) -> MPRWidget:
    """Open an MPR (``layout="mpr"``) or 3D-only (``"3d"``) window for a volume or the files of a
    series; files are built into a volume off the GUI thread."""
    from hilum.ui.mpr.mpr_widget import MPRWidget

    widget = MPRWidget(layout=layout, data_dir=data_dir, parent=parent)
    if parent is not None:
        from PySide6.QtCore import Qt

        widget.setWindowFlag(Qt.WindowType.Window, True)
    if title:
        widget.setWindowTitle(title)
    widget.resize(1200, 800)
    if isinstance(source, Volume):
        widget.set_volume(source)
    else:
        widget.load(list(source), runner=runner)
    widget.show()
    return widget
