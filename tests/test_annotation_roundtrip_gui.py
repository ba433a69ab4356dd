"""Annotations that last, in the real main window, driven as a reader would (issue 16).

Draw measurements with the mouse, set a window by right-drag, zoom, flip, flag a key image,
Ctrl+S, close the tab with its ✕, reopen the study by double-click in the study browser:
every annotation is back on its image (patient coordinates within 0.1 mm), the window / zoom
/ flip come back from the saved GSPS, the key image is in the strip's "Key images" series;
the saved SR reads with highdicom and holds the values the viewer showed; closing with
unsaved annotations asks.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("highdicom")
from PySide6.QtCore import QEvent, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QMouseEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox, QTabBar  # noqa: E402

from _viewer_data import STUDY, write_ct  # noqa: E402
from hilum.archive import Archive  # noqa: E402
from hilum.config import load_config  # noqa: E402
from hilum.ui.viewer.persistence import GSPS_CLASSES, KEY_SERIES_UID, KOS_CLASS, SR_CLASSES  # noqa: E402
from hilum.ui.viewer.viewer_widget import StudyViewer  # noqa: E402

pytestmark = pytest.mark.gui
TIMEOUT = 30_000
ROWS = 96
L, R = Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton
NONE = Qt.MouseButton.NoButton


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("ann-src")
    root = tmp_path_factory.mktemp("ann-data") / "data"
    with Archive(root) as archive:
        assert all(r.ok for r in archive.ingest_many(write_ct(src / "ax", rows=ROWS, slices=10, thickness=5.0)))
    return root


@pytest.fixture
def window(qtbot: Any, make_main_window: Any, template: Path, tmp_path: Path) -> Iterator[Any]:
    data = tmp_path / "data"
    shutil.copytree(template, data)
    win = make_main_window(load_config(data), Archive(data), viewer=True)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    qtbot.waitUntil(lambda: win.browser.model.rowCount() == 1 and not win.browser.searching, timeout=TIMEOUT)
    yield win


def _double_click_study(window: Any) -> None:
    table = window.browser.table
    row = window.browser.model.find(STUDY.uid)
    assert row >= 0
    pos = table.visualRect(table.model().index(row, 0)).center()
    QTest.mouseClick(table.viewport(), L, Qt.KeyboardModifier.NoModifier, pos)
    QTest.mouseDClick(table.viewport(), L, Qt.KeyboardModifier.NoModifier, pos)


def _open(qtbot: Any, window: Any) -> StudyViewer:
    _double_click_study(window)
    qtbot.waitUntil(lambda: window._test_viewer.viewer_for(STUDY.uid) is not None, timeout=TIMEOUT)
    viewer = window._test_viewer.viewer_for(STUDY.uid)
    assert isinstance(viewer, StudyViewer) and window.tabs.currentWidget() is viewer
    vp = viewer.model.viewports[0]
    qtbot.waitUntil(lambda: vp.volume is not None and vp.volume.complete and not vp.volume.preview, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: viewer.loaded_objects is not None, timeout=TIMEOUT)
    return viewer


def _mouse(widget: Any, kind: QEvent.Type, pos: tuple[float, float], button: Any, buttons: Any) -> None:
    ev = QMouseEvent(kind, QPointF(*pos), widget.mapToGlobal(QPointF(*pos)), button, buttons,
                     Qt.KeyboardModifier.NoModifier)  # fmt: skip
    QApplication.sendEvent(widget, ev)


def _drag(widget: Any, a: tuple[float, float], b: tuple[float, float], button: Any = L) -> None:
    _mouse(widget, QEvent.Type.MouseButtonPress, a, button, button)
    for t in (0.25, 0.5, 0.75, 1.0):
        p = (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)
        _mouse(widget, QEvent.Type.MouseMove, p, NONE, button)
    _mouse(widget, QEvent.Type.MouseButtonRelease, b, button, NONE)


def _key(viewer: StudyViewer, key: Any, modifier: Any = Qt.KeyboardModifier.NoModifier) -> None:
    canvas = viewer.viewport_widget(viewer.model.active).canvas
    if QApplication.activeWindow() is None:  # the closed message box had it (no window manager here)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            QApplication.setActiveWindow(canvas.window())
    canvas.setFocus()
    QTest.keyClick(canvas, key, modifier)


def _patient(vp: Any, a: Any) -> np.ndarray:
    """An annotation's points in patient coordinates (mm), through its frame's geometry."""
    k = vp.volume.stack.index_of(a.sop_instance_uid, a.frame)
    g = vp.volume.stack.frames[k].geometry
    return np.array([g.to_patient(x, y) for x, y in a.points])


def _close_tab(qtbot: Any, window: Any, viewer: StudyViewer) -> None:
    """Click the tab's ✕ (as a reader closes it)."""
    bar = window.tabs.tabBar()
    i = window.tabs.indexOf(viewer)
    button = bar.tabButton(i, QTabBar.ButtonPosition.RightSide)
    assert button is not None and button.isVisible()
    QTest.mouseClick(button, L)


def _box(viewer: StudyViewer) -> QMessageBox | None:
    for box in viewer.findChildren(QMessageBox, "unsavedAnnotationsBox"):
        if box.isVisible():
            return box
    return None


def _nums(ds: Any) -> list[tuple[str, float]]:
    """Every NUM item of an SR's tree: (concept name, value)."""
    out: list[tuple[str, float]] = []
    for item in ds.get("ContentSequence", []):
        if item.get("ValueType") == "NUM" and "MeasuredValueSequence" in item:
            mv = item.MeasuredValueSequence[0]
            out.append((str(item.ConceptNameCodeSequence[0].CodeMeaning), float(mv.NumericValue)))
        out += _nums(item)
    return out


def test_draw_save_close_reopen_everything_back(qtbot: Any, window: Any) -> None:
    import highdicom as hd

    viewer = _open(qtbot, window)
    vp = viewer.model.viewports[0]
    canvas = viewer.viewport_widget(0).canvas
    w, h = canvas.width(), canvas.height()
    # a length and an ellipse, drawn with the mouse
    _key(viewer, Qt.Key.Key_L)
    _drag(canvas, (w * 0.35, h * 0.4), (w * 0.6, h * 0.55))
    _key(viewer, Qt.Key.Key_O)
    _drag(canvas, (w * 0.45, h * 0.45), (w * 0.55, h * 0.6))
    drawn = viewer.annotations.all()
    assert sorted(a.kind for a in drawn) == ["ellipse", "length"]
    f = vp.frame_info
    assert all(a.key == (f.sop_instance_uid, f.frame) for a in drawn)
    before = {a.kind: _patient(vp, a) for a in drawn}
    length = next(a for a in drawn if a.kind == "length")
    shown_mm = length.values(vp.modality_frame(), f.spacing, "HU")["length"]
    # the display: window by right-drag, zoom in, flip
    _drag(canvas, (w * 0.5, h * 0.5), (w * 0.5 + 60, h * 0.5 - 30), R)
    _key(viewer, Qt.Key.Key_Plus)
    _key(viewer, Qt.Key.Key_H)
    window_seen = vp.current_window()
    matrix_seen = vp.matrix()
    assert vp.view.flip_h and vp.view.zoom > 1.0
    # key image: * (Shift+8 on a US keyboard)
    _key(viewer, Qt.Key.Key_Asterisk, Qt.KeyboardModifier.ShiftModifier)
    key = (f.sop_instance_uid, f.frame)
    assert [(k.sop_instance_uid, k.frame) for k in viewer.key_images] == [key]
    marker = viewer.viewport_widget(0).canvas.findChild(type(viewer._markers[0]), "keyImageMarker")
    assert marker is not None and marker.isVisible()
    tabs = window.tabs
    assert tabs.tabText(tabs.indexOf(viewer)).endswith(" *")  # modified
    # Ctrl+S
    with qtbot.waitSignal(viewer.persistence.saved, timeout=TIMEOUT) as saved:
        _key(viewer, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    result = saved.args[0]
    assert result.errors == [] and sorted(k for k, _ in result.stored) == ["gsps", "kos", "sr"]
    assert not tabs.tabText(tabs.indexOf(viewer)).endswith(" *")
    # the new objects are in the study
    rows = viewer.archive.instances(study_uid=STUDY.uid)
    classes = [str(r.get("SOPClassUID")) for r in rows]
    assert sum(c in GSPS_CLASSES for c in classes) == 1
    assert sum(c in SR_CLASSES for c in classes) == 1
    assert classes.count(KOS_CLASS) == 1
    # the SR reads with highdicom, its length is what the viewer showed
    sr_row = next(r for r in rows if str(r.get("SOPClassUID")) in SR_CLASSES)
    sr_ds = pydicom.dcmread(sr_row["path"])
    sr = hd.sr.Comprehensive3DSR.from_dataset(sr_ds)
    assert sr.SOPInstanceUID == sr_ds.SOPInstanceUID
    values = [v for _, v in _nums(sr_ds)]
    assert any(abs(v - shown_mm) < 0.01 for v in values), (values, shown_mm)

    # close the tab (saved: no question), reopen by double-click
    _close_tab(qtbot, window, viewer)
    qtbot.waitUntil(lambda: window._test_viewer.viewer_for(STUDY.uid) is None, timeout=TIMEOUT)
    viewer = _open(qtbot, window)
    vp = viewer.model.viewports[0]
    back = viewer.annotations.all()
    assert sorted(a.kind for a in back) == ["ellipse", "length"]
    assert not viewer.annotations.dirty and not viewer.modified
    for a in back:
        assert a.origin.startswith(("gsps:", "sr:"))
        assert np.abs(_patient(vp, a) - before[a.kind]).max() < 0.1
    # the GSPS's display state: window, zoom area, flip
    qtbot.waitUntil(lambda: vp.view.flip_h or vp.view.flip_v or vp.view.rotation != 0, timeout=TIMEOUT)
    wnd = vp.current_window()
    assert abs(wnd.center - window_seen.center) < 0.01 and abs(wnd.width - window_seen.width) < 0.01
    # same orientation (rotation, flip) and the same image region on the canvas, within the one
    # image pixel a GSPS's whole-pixel Displayed Area allows (PS3.3 C.10.4)
    m = vp.matrix()
    assert np.array_equal(np.sign(np.round(m[:2, :2], 6)), np.sign(np.round(matrix_seen[:2, :2], 6)))
    cw, ch = vp.canvas_size
    corners = np.array([[0, 0, 1], [cw, 0, 1], [0, ch, 1], [cw, ch, 1]], float).T
    seen_region = np.linalg.inv(matrix_seen) @ corners
    region = np.linalg.inv(m) @ corners
    assert np.abs(region - seen_region).max() < 1.0, (region, seen_region)
    assert vp.view.zoom > 1.0
    # the key image: in the strip's Key images series, double-click shows it
    item = viewer.strip.item_for(KEY_SERIES_UID)
    assert item is not None and "Key images" in item.text()
    rect = viewer.strip.visualItemRect(item)
    viewer.strip.scrollToItem(item)
    rect = viewer.strip.visualItemRect(item)
    QTest.mouseClick(viewer.strip.viewport(), L, Qt.KeyboardModifier.NoModifier, rect.center())
    QTest.mouseDClick(viewer.strip.viewport(), L, Qt.KeyboardModifier.NoModifier, rect.center())
    qtbot.waitUntil(lambda: viewer._assigned.get(viewer.model.active) == KEY_SERIES_UID, timeout=TIMEOUT)
    active = viewer.model.viewports[viewer.model.active]
    qtbot.waitUntil(lambda: active.frame_info is not None and not active.volume.preview, timeout=TIMEOUT)
    assert (active.frame_info.sop_instance_uid, active.frame_info.frame) == key
    marker = viewer._markers[viewer.model.active]
    qtbot.waitUntil(marker.isVisible, timeout=TIMEOUT)
    # the key again on it: no longer a key image, the entry leaves the strip, the tab is modified
    _key(viewer, Qt.Key.Key_Asterisk)
    assert viewer.key_images == [] and not marker.isVisible()
    assert viewer.strip.item_for(KEY_SERIES_UID) is None
    assert window.tabs.tabText(window.tabs.indexOf(viewer)).endswith(" *")
    viewer._discard = True


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_saved_objects_pass_dciodvfy(qtbot: Any, window: Any) -> None:
    import subprocess

    viewer = _open(qtbot, window)
    canvas = viewer.viewport_widget(0).canvas
    w, h = canvas.width(), canvas.height()
    _key(viewer, Qt.Key.Key_L)
    _drag(canvas, (w * 0.35, h * 0.4), (w * 0.6, h * 0.55))
    _key(viewer, Qt.Key.Key_Asterisk)
    with qtbot.waitSignal(viewer.persistence.saved, timeout=TIMEOUT) as saved:
        _key(viewer, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert saved.args[0].errors == []
    for kind, ds in saved.args[0].datasets:
        path = viewer.archive.path(str(ds.SOPInstanceUID))
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (kind, errors)


def test_close_with_unsaved_annotations_asks(qtbot: Any, window: Any) -> None:
    viewer = _open(qtbot, window)
    canvas = viewer.viewport_widget(0).canvas
    w, h = canvas.width(), canvas.height()
    _key(viewer, Qt.Key.Key_L)
    _drag(canvas, (w * 0.3, h * 0.3), (w * 0.6, h * 0.6))
    assert viewer.modified
    # Cancel: the tab stays
    _close_tab(qtbot, window, viewer)
    qtbot.waitUntil(lambda: _box(viewer) is not None, timeout=TIMEOUT)
    box = _box(viewer)
    assert box is not None
    QTest.mouseClick(box.button(QMessageBox.StandardButton.Cancel), L)
    qtbot.waitUntil(lambda: _box(viewer) is None, timeout=TIMEOUT)
    assert window.tabs.indexOf(viewer) >= 0
    # Save: saved, then the tab closes
    _close_tab(qtbot, window, viewer)
    qtbot.waitUntil(lambda: _box(viewer) is not None, timeout=TIMEOUT)
    box = _box(viewer)
    assert box is not None
    QTest.mouseClick(box.button(QMessageBox.StandardButton.Save), L)
    qtbot.waitUntil(lambda: window._test_viewer.viewer_for(STUDY.uid) is None, timeout=TIMEOUT)
    # reopen: the length is back; draw another, Discard: closes without saving it
    viewer = _open(qtbot, window)
    assert [a.kind for a in viewer.annotations.all()] == ["length"]
    canvas = viewer.viewport_widget(0).canvas
    _key(viewer, Qt.Key.Key_L)
    _drag(canvas, (w * 0.2, h * 0.7), (w * 0.4, h * 0.75))
    assert len(viewer.annotations.all()) == 2
    _close_tab(qtbot, window, viewer)
    qtbot.waitUntil(lambda: _box(viewer) is not None, timeout=TIMEOUT)
    QTest.mouseClick(_box(viewer).button(QMessageBox.StandardButton.Discard), L)  # type: ignore[union-attr]
    qtbot.waitUntil(lambda: window._test_viewer.viewer_for(STUDY.uid) is None, timeout=TIMEOUT)
    viewer = _open(qtbot, window)
    assert [a.kind for a in viewer.annotations.all()] == ["length"]


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_export_view_burnt_in_or_beside_as_dicom(qtbot: Any, window: Any, tmp_path: Path, monkeypatch: Any) -> None:
    from PySide6.QtWidgets import QFileDialog

    from hilum.dicom.presentation import read_gsps

    viewer = _open(qtbot, window)
    canvas = viewer.viewport_widget(0).canvas
    w, h = canvas.width(), canvas.height()
    _key(viewer, Qt.Key.Key_L)
    _drag(canvas, (w * 0.3, h * 0.5), (w * 0.7, h * 0.5))
    (drawn,) = viewer.annotations.all()
    filters = list(viewer.EXPORT_FILTERS)
    answers: list[tuple[str, str]] = [
        (str(tmp_path / "burnt.png"), filters[0]),
        (str(tmp_path / "plain.png"), filters[1]),
    ]
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: answers.pop(0)))
    _key(viewer, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier)  # Export view… (PNG, burnt in)
    _key(viewer, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier)  # again: image only + DICOM beside it
    assert not answers
    burnt, plain = tmp_path / "burnt.png", tmp_path / "plain.png"
    assert burnt.is_file() and plain.is_file()
    diff = np.abs(_rgb(burnt) - _rgb(plain)).max(axis=2) > 40
    ys, xs = np.nonzero(diff)  # the length is in one picture only: along its line
    assert len(xs) > 20 and abs(np.median(ys) - h * 0.5) < 6
    assert not (tmp_path / "burnt.gsps.dcm").exists()
    sidecar = tmp_path / "plain.gsps.dcm"
    anns, states = read_gsps(pydicom.dcmread(sidecar))
    assert [(a.kind, a.key) for a in anns] == [("length", drawn.key)]
    assert np.abs(np.array(anns[0].points) - np.array(drawn.points)).max() < 0.01
    assert (tmp_path / "plain.sr.dcm").is_file()
    viewer._discard = True  # not saved in the study: no question at teardown


@pytest.mark.skipif(shutil.which("dcmpsmk") is None, reason="DCMTK's dcmpsmk is not installed")
def test_a_gsps_made_by_dcmtk_is_applied_on_open(qtbot: Any, window: Any, tmp_path: Path) -> None:
    """A presentation state written by another program (DCMTK's dcmpsmk), imported into the
    study, is applied when the study opens: its window on the image it references; the
    "Presentation states" menu offers it and "None"."""
    import subprocess

    viewer = _open(qtbot, window)
    vp = viewer.model.viewports[0]
    f = vp.frame_info
    image = pydicom.dcmread(f.path)
    image.WindowCenter, image.WindowWidth = 123, 456  # what the other program's reader chose
    image.save_as(tmp_path / "ct.dcm")
    _close_tab(qtbot, window, viewer)
    qtbot.waitUntil(lambda: window._test_viewer.viewer_for(STUDY.uid) is None, timeout=TIMEOUT)
    subprocess.run(["dcmpsmk", "+Vw", str(tmp_path / "ct.dcm"), str(tmp_path / "ps.dcm")], check=True, timeout=60)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.move(tmp_path / "ps.dcm", incoming / "ps.dcm")
    assert window.import_paths([incoming])  # File ▸ Import, as a reader brings a file in
    qtbot.waitUntil(lambda: any(str(r.get("SOPClassUID")) in GSPS_CLASSES
                                for r in window.archive.instances(study_uid=STUDY.uid)), timeout=TIMEOUT)  # fmt: skip
    viewer = _open(qtbot, window)
    vp = viewer.model.viewports[0]
    assert (vp.frame_info.sop_instance_uid, vp.frame_info.frame) == (f.sop_instance_uid, f.frame)
    qtbot.waitUntil(lambda: vp.current_window() is not None and vp.current_window().center == 123.0, timeout=TIMEOUT)
    assert vp.current_window().width == 456.0
    assert viewer.annotations.all() == [] and not viewer.modified
    assert [p.sop_instance_uid for p in viewer.presentations] != []
    # the Viewer menu has Save, Key image and the Presentation states submenu, which offers it and "None"
    window.viewer_menu.aboutToShow.emit()
    entries = {a.text(): a for a in window.viewer_menu.actions()}
    assert {"Save annotations, key images and the display in the study", "Key image: flag / unflag the current image",
            "Presentation states"} <= set(entries)  # fmt: skip
    menu = entries["Presentation states"].menu()
    assert menu is viewer.presentation_menu
    menu.aboutToShow.emit()
    texts = [a.text() for a in menu.actions()]
    assert texts[0] == "None" and len(texts) == 2 and texts[1].startswith(("GSPS", "Hilum", "Presentation", "UNNAMED"))


def test_a_saved_segmentation_is_back_in_the_segments_panel_on_reopen(qtbot: Any, window: Any) -> None:
    viewer = _open(qtbot, window)
    canvas = viewer.viewport_widget(0).canvas
    w, h = canvas.width(), canvas.height()
    _key(viewer, Qt.Key.Key_G, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    panel = viewer.seg_panel
    assert panel.isVisible()
    _key(viewer, Qt.Key.Key_B, Qt.KeyboardModifier.ShiftModifier)  # the brush
    assert viewer.tool_name == "seg_brush"
    _drag(canvas, (w * 0.4, h * 0.5), (w * 0.6, h * 0.5))
    series = viewer.model.viewports[0].series_uid
    painted = viewer.seg.labels[series].counts()[1:].sum()
    assert painted > 0
    with qtbot.waitSignal(panel.saved, timeout=TIMEOUT) as sig:
        QTest.mouseClick(panel.save_btn, L)
    assert sig.args[1] == ""
    _close_tab(qtbot, window, viewer)
    qtbot.waitUntil(lambda: window._test_viewer.viewer_for(STUDY.uid) is None, timeout=TIMEOUT)
    viewer = _open(qtbot, window)
    qtbot.waitUntil(lambda: series in viewer.seg.labels, timeout=TIMEOUT)  # opened from the archive by itself
    assert viewer.seg.labels[series].counts()[1:].sum() == painted
    panel = viewer.seg_panel
    qtbot.waitUntil(lambda: panel.table.rowCount() == 1, timeout=TIMEOUT)


def test_presentation_states_menu_newest_wins_older_or_none_chosen(qtbot: Any, window: Any) -> None:
    viewer = _open(qtbot, window)
    vp = viewer.model.viewports[0]
    canvas = viewer.viewport_widget(0).canvas
    w, h = canvas.width(), canvas.height()
    windows = []
    for dx in (80, -60):  # two saves, each after a right-drag: two presentation states
        _drag(canvas, (w * 0.5, h * 0.5), (w * 0.5 + dx, h * 0.5), R)
        windows.append((vp.current_window().center, vp.current_window().width))
        with qtbot.waitSignal(viewer.persistence.saved, timeout=TIMEOUT) as saved:
            _key(viewer, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
        assert saved.args[0].errors == []
    assert windows[0] != windows[1]
    _close_tab(qtbot, window, viewer)
    qtbot.waitUntil(lambda: window._test_viewer.viewer_for(STUDY.uid) is None, timeout=TIMEOUT)
    viewer = _open(qtbot, window)
    vp = viewer.model.viewports[0]
    canvas = viewer.viewport_widget(0).canvas

    def shown() -> tuple[float, float]:
        wnd = vp.current_window()
        return (round(wnd.center, 2), round(wnd.width, 2))

    newest, older = (tuple(round(v, 2) for v in x) for x in reversed(windows))
    qtbot.waitUntil(lambda: shown() == newest, timeout=TIMEOUT)  # the newest GSPS wins
    menu = viewer.presentation_menu
    menu.aboutToShow.emit()
    actions = menu.actions()
    assert [a.text() for a in actions][0] == "None" and len(actions) == 3
    assert actions[1].isChecked()
    actions[2].trigger()  # the older one
    assert shown() == older
    menu.aboutToShow.emit()
    menu.actions()[0].trigger()  # None: the view stays as it is, nothing applied on top
    _drag(canvas, (w * 0.5, h * 0.5), (w * 0.5 + 30, h * 0.5), R)
    mine = shown()
    _key(viewer, Qt.Key.Key_Down)
    assert shown() == mine
    viewer._discard = True
