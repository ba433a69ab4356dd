"""The viewer inside the workstation: the study browser's open request shows the study in a viewer tab."""

from __future__ import annotations

import numpy as np
import pytest

from _viewer_data import STUDY, hu_point_to_pixel, write_ct

pytest.importorskip("pytestqt")
from PySide6.QtGui import QImage  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.config import load_config  # noqa: E402
from hilum.ui.viewer.viewer_widget import StudyViewer  # noqa: E402

pytestmark = pytest.mark.gui


def test_open_request_shows_the_study_in_a_viewer_tab(qtbot, make_main_window, data_dir, tmp_path):
    archive = Archive(data_dir)
    assert all(r.ok for r in archive.ingest_many(write_ct(tmp_path / "ct", rows=64, slices=6)))
    window = make_main_window(load_config(data_dir), archive, viewer=True)
    controller = window._test_viewer
    assert any(s.section.startswith("Viewer") and "Window/level" in s.description or "Next slice" in s.description
               for s in window.shortcut_help())  # fmt: skip
    window.show()
    qtbot.waitExposed(window)
    window.open_study(STUDY.uid)  # what a double-click / Enter in the study browser does
    viewer = controller.viewer_for(STUDY.uid)
    assert isinstance(viewer, StudyViewer) and window.tabs.currentWidget() is viewer
    qtbot.waitUntil(lambda: viewer.active_viewport().volume is not None
                    and viewer.active_viewport().volume.complete and not viewer.active_viewport().volume.preview,
                    timeout=20000)  # fmt: skip
    vp = viewer.active_viewport()
    canvas = viewer.viewport_widget(0).canvas
    qtbot.waitUntil(lambda: canvas.image_paint_count > 0, timeout=5000)
    img = canvas.grab().toImage().convertToFormat(QImage.Format.Format_Grayscale8)
    arr = np.frombuffer(img.constBits(), np.uint8, img.bytesPerLine() * img.height()).reshape(img.height(), -1)
    x, y = vp.image_to_canvas(*hu_point_to_pixel(0, -40, 64))
    assert 100 < arr[int(y), int(x)] < 160  # soft tissue through the header's window
    x, y = vp.image_to_canvas(*hu_point_to_pixel(0, -150, 64))
    assert arr[int(y), int(x)] == 0
    window.open_study(STUDY.uid)  # again: the same tab comes forward
    assert len([w for w in window.workspace_tabs() if isinstance(w, StudyViewer)]) == 1
    index = window.tabs.indexOf(viewer)
    assert window.close_workspace_tab(index)
