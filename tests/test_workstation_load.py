"""The workstation opens a study on the loader's fast path (issue 23 item 5).

A double-click in the study browser of the real main window (with the viewer
installed as ``hilum gui`` installs it) must load through the same path as
``bench/viewer``: native pixels read straight into the volume on threads,
compressed ones decoded on the window's warm decoder process pool, and nothing
heavy imported on the GUI thread inside the double-click (VTK for the MPR/3D
actions was a 0.25-0.5 s event-loop stall there), and the series thumbnails'
header parsing done on the pool too (in the GUI's process it competed with the
event loop for the GIL while the study loaded). Speed itself is measured by
``bench/viewer/workstation.py``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from _viewer_data import STUDY, write_ct

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.config import load_config  # noqa: E402
from hilum.dicom.generator import MUELLER, make_study  # noqa: E402
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

    def shown() -> np.ndarray:
        img = native.strip.item(0).icon().pixmap(made_here.shape[1], made_here.shape[0]).toImage()
        img = img.convertToFormat(QImage.Format.Format_Grayscale8)
        arr = np.frombuffer(img.constBits(), np.uint8, img.bytesPerLine() * img.height())
        return arr.reshape(img.height(), -1)[:, : img.width()].copy()  # img owns the memory

    assert made_here.max() > 0  # the strip's placeholder is black
    qtbot.waitUntil(lambda: np.array_equal(shown(), made_here), timeout=TIMEOUT)

    compressed = _open_and_load(qtbot, window, RLE_STUDY.uid)
    handle = compressed._loads[compressed.session.series[0].series_uid]
    assert handle.error is None and handle.volume is not None and handle.volume.complete
    assert handle.executor == "process"  # compressed: decoded on the window's pool, not on threads
    assert all(f.pixel_offset is None for f in handle.volume.stack.frames)
    # the same pixels as the native series (RLE is lossless)
    assert (handle.volume.data == native._loads[native.session.series[0].series_uid].volume.data).all()

    long_series = _open_and_load(qtbot, window, LONG_STUDY.uid)
    handle = long_series._loads[long_series.session.series[0].series_uid]
    assert handle.error is None and handle.volume is not None and handle.volume.complete
    assert handle.header_executor == "process"  # a long series' headers: parsed on the pool
    assert handle.executor == "thread" and len(handle.volume) == 260


_OPEN_SCRIPT = textwrap.dedent(
    """
    import json, sys, threading
    from PySide6.QtCore import QEventLoop, Qt, QTimer
    from PySide6.QtTest import QTest
    from hilum.archive import Archive
    from hilum.config import load_config
    from hilum.ui.app import application, install_viewer
    from hilum.ui.main_window import MainWindow

    def main():
        app = application()
        cfg = load_config(sys.argv[1])
        archive = Archive.from_config(cfg)
        window = MainWindow(cfg, archive)
        controller = install_viewer(window)  # what hilum gui installs
        window.show()

        def wait(cond):
            loop, poll = QEventLoop(), QTimer()
            poll.timeout.connect(lambda: loop.quit() if cond() else None)
            poll.start(5)
            QTimer.singleShot(60000, loop.quit)
            loop.exec()
            return cond()

        model, table = window.browser.model, window.browser.table
        assert wait(lambda: model.find(sys.argv[2]) >= 0)
        controller.preload.join()  # the window's background import is over (a reader takes a moment)
        pos = table.visualRect(model.index(model.find(sys.argv[2]), 1)).center()
        QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
        gui = threading.get_ident()
        imported = []

        class Spy:
            def find_spec(self, name, path=None, target=None):
                if threading.get_ident() == gui:
                    imported.append(name)
                return None

        spy = Spy()
        sys.meta_path.insert(0, spy)
        QTest.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
        viewer = controller.viewer_for(sys.argv[2])
        done = []
        viewer.loadFinished.connect(done.append)
        assert wait(lambda: bool(done))
        sys.meta_path.remove(spy)
        print("IMPORTED " + json.dumps(imported))
        window.close()
        archive.close()

    if __name__ == "__main__":
        main()
    """
)


def test_double_click_imports_nothing_on_the_gui_thread(data_dir, tmp_path):
    """In a fresh workstation process (imports happen once per process): opening the first study
    imports no module on the GUI thread, VTK above all (the window preloads it in the background)."""
    archive = Archive(data_dir)
    assert all(r.ok for r in archive.ingest_many(write_ct(tmp_path / "ct", rows=32, slices=6)))
    archive.close()
    script = tmp_path / "open_study.py"
    script.write_text(_OPEN_SCRIPT)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    app_dir = str(Path(__file__).resolve().parents[1] / "app")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (app_dir, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, str(script), str(data_dir), STUDY.uid], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("IMPORTED ")), None)
    assert proc.returncode == 0 and line is not None, proc.stderr[-3000:]
    imported = json.loads(line[len("IMPORTED ") :])
    assert not [m for m in imported if m.startswith(("vtk", "hilum.ui.mpr", "hilum.render"))], imported
    assert imported == [], f"imported on the GUI thread while opening the study: {imported}"
