"""The desktop bundle (issue 22, part A): opening files given on the command line, and the frozen program.

* ``hilum gui PATH`` / ``hilum PATH`` (what a file manager runs): the file is imported through the one
  import path and its study opens in a viewer tab — a real window, pixels checked.
* The PyInstaller one-folder build (``installer/build_bundle.sh``, tests marked ``slow``): built once per
  session into a temporary folder, then run in a clean environment (``env -i``, only PATH=/usr/bin:/bin,
  HOME a temporary folder, no DISPLAY, no venv, no PYTHONPATH, cwd a temporary folder); the ``.deb``
  made from it is checked with dpkg-deb, desktop-file-validate and the MIME database tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _viewer_data import STUDY, hu_point_to_pixel, write_ct
from hilum.cli import build_parser
from hilum.cli.workstation import paths_mean_gui

REPO = Path(__file__).resolve().parents[1]
VERBS = {name for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict)
         for name in a.choices}  # fmt: skip


# ---------------------------------------------------------------- hilum PATH → hilum gui PATH


def test_a_path_where_a_verb_would_be_opens_the_workstation(tmp_path: Path) -> None:
    f = tmp_path / "study.dcm"
    f.write_bytes(b"")
    assert paths_mean_gui([str(f)], VERBS) == ["gui", str(f)]
    assert paths_mean_gui(["--data", str(tmp_path), str(f), str(tmp_path)], VERBS) == [
        "--data", str(tmp_path), "gui", str(f), str(tmp_path)]  # fmt: skip
    assert paths_mean_gui(["-v", str(tmp_path)], VERBS) == ["-v", "gui", str(tmp_path)]
    # a verb stays a verb, even when a file of that name is in the current folder
    assert paths_mean_gui(["import", str(f)], VERBS) == ["import", str(f)]
    # a mistyped verb or a missing file is left to argparse's error
    assert paths_mean_gui(["imprt", str(f)], VERBS) == ["imprt", str(f)]
    assert paths_mean_gui([str(tmp_path / "missing.dcm")], VERBS) == [str(tmp_path / "missing.dcm")]
    args = build_parser().parse_args(paths_mean_gui([str(f)], VERBS))
    assert args.verb == "gui" and args.paths == [str(f)]


def test_gui_with_a_missing_path_is_a_one_line_error(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "app"), QT_QPA_PLATFORM="offscreen")
    r = subprocess.run([sys.executable, "-m", "hilum", "--data", str(tmp_path / "d"), "gui", str(tmp_path / "nope.dcm")],
                       capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"hilum: error: no such file or folder: {tmp_path / 'nope.dcm'}"]


@pytest.mark.gui
def test_a_dcm_file_given_opens_its_study_in_a_viewer_tab(qtbot: Any, no_leaked_widgets: Any, tmp_path: Path) -> None:
    """``hilum gui FILE.dcm``: imported with the progress bar, its study in a viewer tab, the CT on screen."""
    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QImage
    from PySide6.QtWidgets import QApplication

    from hilum.archive import Archive
    from hilum.config import load_config
    from hilum.ui.app import run_gui
    from hilum.ui.viewer.viewer_widget import StudyViewer

    files = write_ct(tmp_path / "incoming", rows=64, slices=3)
    given = files[1]
    assert given.suffix == ".dcm"
    data = tmp_path / "data"
    cfg = load_config(data)
    seen: dict[str, Any] = {}

    def ready(window: Any) -> None:
        window.importer.show_summary = False
        seen["progress"] = window.importer.dialog is not None or window.importer.running

        def check() -> None:
            viewer = window.viewer_controller.viewer_for(STUDY.uid)
            vp = viewer.active_viewport() if isinstance(viewer, StudyViewer) else None
            ready_to_look = (
                vp is not None and window.tabs.currentWidget() is viewer and vp.volume is not None
                and vp.volume.complete and viewer.viewport_widget(0).canvas.image_paint_count > 0
            )  # fmt: skip
            if not ready_to_look:
                timer.start()
                return
            canvas = viewer.viewport_widget(0).canvas
            img = canvas.grab().toImage().convertToFormat(QImage.Format.Format_Grayscale8)
            arr = np.frombuffer(img.constBits(), np.uint8, img.bytesPerLine() * img.height())
            arr = arr.reshape(img.height(), -1)
            x, y = vp.image_to_canvas(*hu_point_to_pixel(0, -40, 64))
            seen["tissue"] = int(arr[int(y), int(x)])
            x, y = vp.image_to_canvas(*hu_point_to_pixel(0, -150, 64))
            seen["air"] = int(arr[int(y), int(x)])
            seen["slices"] = vp.volume.shape[0] if hasattr(vp.volume, "shape") else None
            window.close()

        timer = QTimer(window)
        timer.setSingleShot(True)
        timer.setInterval(100)
        timer.timeout.connect(check)
        timer.start()
        guard = QTimer(window)
        guard.setSingleShot(True)
        guard.timeout.connect(QApplication.closeAllWindows)
        guard.start(90_000)

    assert run_gui(cfg, start_node=False, open_paths=[str(given)], on_ready=ready) == 0
    assert seen.get("progress") is True, seen  # the import ran through the importer (its progress dialog)
    assert "tissue" in seen, f"the study's viewer tab never showed pixels: {seen}"
    assert 100 < seen["tissue"] < 160, seen  # soft tissue through the header's window
    assert seen["air"] == 0, seen
    with Archive(data) as archive:  # imported through the one ingest: in the index
        assert archive.count("STUDY") == 1 and archive.count("IMAGE") == 1
