"""The workstation opens a study on the loader's fast path (issue 23 item 5).

A double-click in the study browser of the real main window (with the viewer
installed as ``hilum gui`` installs it) must load through the same path as
``bench/viewer``: native pixels read straight into the volume on threads,
compressed ones decoded on the window's warm decoder process pool, and the
series thumbnails' header parsing done on the pool too (in the GUI's process
it competed with the event loop for the GIL while the study loaded). Speed
itself is measured by ``bench/viewer/workstation.py``, not here.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from _viewer_data import STUDY, write_ct

pytest.importorskip("pytestqt")
from pydicom.uid import RLELossless  # noqa: E402
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.config import load_config  # noqa: E402
from hilum.dicom import pixels  # noqa: E402
from hilum.dicom.generator import MUELLER, make_study  # noqa: E402
from hilum.ui.viewer.series_strip import framed, pixmap_of  # noqa: E402
from hilum.ui.viewer.thumbnails import ThumbnailCache  # noqa: E402
from hilum.ui.viewer.viewer_widget import StudyViewer  # noqa: E402

pytestmark = pytest.mark.gui

TIMEOUT = 60000
RLE_STUDY = make_study(MUELLER, accession="ACC-RLE", seed="workstation-load-rle")
LONG_STUDY = make_study(MUELLER, accession="ACC-LONG", seed="workstation-load-long")


def _double_click_study(qtbot, window, study_uid: str) -> None:  # type: ignore[no-untyped-def]
    """What a reader does: click the study's row in the browser, then double-click it."""
    model, table = window.browser.model, window.browser.table
    qtbot.waitUntil(lambda: model.find(study_uid) >= 0, timeout=TIMEOUT)
    rect = table.visualRect(model.index(model.find(study_uid), 1))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    with qtbot.waitSignal(window.studyOpenRequested, timeout=TIMEOUT):
        qtbot.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def _open_and_load(qtbot, window, study_uid: str) -> StudyViewer:  # type: ignore[no-untyped-def]
    _double_click_study(qtbot, window, study_uid)
    viewer = window.viewer_controller.viewer_for(study_uid)
    assert isinstance(viewer, StudyViewer) and window.tabs.currentWidget() is viewer
    uid = viewer.session.series[0].series_uid
    qtbot.waitUntil(lambda: not viewer.is_loading(uid), timeout=TIMEOUT)
    return viewer


def test_double_click_loads_on_the_fast_path_with_the_windows_pool(qtbot, make_main_window, data_dir, tmp_path):
    archive = Archive(data_dir)
    assert all(r.ok for r in archive.ingest_many(write_ct(tmp_path / "native", rows=64, slices=20)))
    rle = write_ct(tmp_path / "rle", rows=64, slices=20, syntax="rle", study=RLE_STUDY)
    assert all(r.ok for r in archive.ingest_many(rle))
    long = write_ct(tmp_path / "long", rows=16, slices=260, thickness=1.0, study=LONG_STUDY)
    assert all(r.ok for r in archive.ingest_many(long))
    window = make_main_window(load_config(data_dir), archive, viewer=True)
    controller = window.viewer_controller
    assert isinstance(controller.pool, ProcessPoolExecutor)  # the window's decoder processes, warmed at start
    window.show()
    qtbot.waitExposed(window)

    native = _open_and_load(qtbot, window, STUDY.uid)
    assert native.session.pool is controller.pool
    handle = native._loads[native.session.series[0].series_uid]
    assert handle.error is None and handle.volume is not None and handle.volume.complete
    assert handle.executor == "thread"  # native pixels: read straight into the volume (readinto)
    assert all(f.pixel_offset is not None for f in handle.volume.stack.frames)
    assert handle.header_executor == "serial"  # 20 files: not worth the processes
    vp = native.active_viewport()
    assert vp.volume is handle.volume and not vp.volume.preview
    # the series' thumbnail (every header parsed) is made on the same pool, the same image as made here
    assert native.strip.thumbnails.pool is controller.pool
    entry = native.session.series[0]
    made_here = ThumbnailCache(size=native.strip.thumbnails.size).for_series(entry.series_uid, entry.paths)

    def grey(img: QImage) -> np.ndarray:
        img = img.convertToFormat(QImage.Format.Format_Grayscale8)
        arr = np.frombuffer(img.constBits(), np.uint8, img.bytesPerLine() * img.height())
        return arr.reshape(img.height(), -1)[:, : img.width()].copy()  # img owns the memory

    size = native.strip.iconSize()
    expected = grey(framed(pixmap_of(made_here), size).toImage())  # as the strip frames every thumbnail

    def shown() -> np.ndarray:
        return grey(native.strip.item(0).icon().pixmap(size).toImage())

    assert made_here.max() > 0  # the strip's placeholder is black
    qtbot.waitUntil(lambda: np.array_equal(shown(), expected), timeout=TIMEOUT)

    compressed = _open_and_load(qtbot, window, RLE_STUDY.uid)
    handle = compressed._loads[compressed.session.series[0].series_uid]
    assert handle.error is None and handle.volume is not None and handle.volume.complete
    # compressed: imagecodecs releases the GIL, so threads; pydicom's decoders keep it: the window's pool
    assert handle.executor == ("thread" if pixels.fast_decoding_available(RLELossless) else "process")
    assert all(f.pixel_offset is None for f in handle.volume.stack.frames)
    # the same pixels as the native series (RLE is lossless)
    assert (handle.volume.data == native._loads[native.session.series[0].series_uid].volume.data).all()

    long_series = _open_and_load(qtbot, window, LONG_STUDY.uid)
    handle = long_series._loads[long_series.session.series[0].series_uid]
    assert handle.error is None and handle.volume is not None and handle.volume.complete
    assert handle.header_executor == "process"  # a long series' headers: parsed on the pool
    assert handle.executor == "thread" and len(handle.volume) == 260


_NO_VTK_SCRIPT = r"""
import sys
import threading
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

on_gui_thread = []


class Watch:
    "Records every VTK module imported on the GUI thread (first imports only: later ones are cached)."

    def find_spec(self, name, path=None, target=None):
        if name.startswith("vtkmodules") and threading.current_thread() is threading.main_thread():
            on_gui_thread.append(name)
        return None


sys.meta_path.insert(0, Watch())

from hilum.archive import Archive
from hilum.config import load_config
from hilum.ui.main_window import MainWindow
from hilum.ui.viewer.wiring import install_viewer

app = QApplication([])
data = Path(sys.argv[1])
archive = Archive(data)
window = MainWindow(load_config(data), archive)
controller = install_viewer(window)
window.show()
model, table = window.browser.model, window.browser.table


def wait(cond, what):
    for _ in range(600):
        if cond():
            return
        QTest.qWait(100)
    raise SystemExit(f"timed out: {what}")


wait(lambda: model.rowCount() == 1, "the study row")
rect = table.visualRect(model.index(0, 1))
QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
QTest.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
viewer = window.tabs.currentWidget()
wait(lambda: getattr(viewer, "session", None) is not None and viewer.session.series
     and not viewer.is_loading(viewer.session.series[0].series_uid), "the load")
wait(lambda: not controller.warmup.is_alive(), "the warm-up")
print("preloaded:", "vtkmodules.vtkRenderingOpenGL2" in sys.modules)
button = viewer.toolbar.widgetForAction(viewer.actions_by_name["mpr"])
QTest.mouseClick(button, Qt.MouseButton.LeftButton)
wait(lambda: getattr(viewer, "_mpr_windows", None), "the MPR window")
print("imported on the GUI thread:", on_gui_thread)
for w in viewer._mpr_windows:
    w.close()
window.close()
archive.close()
"""


def test_vtk_is_not_imported_on_the_gui_thread(data_dir, tmp_path):
    """VTK (a 0.12 s import holding the GIL: a ~0.3 s event-loop stall) is imported by the
    window's background warm-up, after the decoder pool: in a fresh workstation process, a study
    opened by double-click and the MPR opened by its button import no VTK module on the GUI thread."""
    import os
    import subprocess
    import sys

    with Archive(data_dir) as archive:
        assert all(r.ok for r in archive.ingest_many(write_ct(tmp_path / "ct", rows=64, slices=12)))
    env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
    out = subprocess.run([sys.executable, "-c", _NO_VTK_SCRIPT, str(data_dir)], capture_output=True, text=True,
                         timeout=300, env=env)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "preloaded: True" in out.stdout, out.stdout + out.stderr
    assert "imported on the GUI thread: []" in out.stdout, out.stdout + out.stderr
