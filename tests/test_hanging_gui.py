"""Hanging protocols in the real workstation window (issue 15 item 4).

A CT chest study (localizer, axial, coronal and sagittal reformats) opened by a double-click in the
study browser hangs as the shipped "CT chest with reformats" protocol says — 2x2, each series in
its viewport, the axial one in the mediastinal window — and the FIRST image each viewport paints is
already the protocol's (recorded at the canvases' paint events). N / Shift+N step the stages; "Save
layout as protocol" (its key, its name dialog) writes a protocol that the next opening picks; a
protocol file with a typo is reported in the viewer's status and skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hilum.dicom.generator import CORONAL, MUELLER, SAGITTAL, iter_ct_series, make_study, write_dataset
from hilum.dicom.generator.demo import instance_path

pytest.importorskip("pytestqt")
from PySide6.QtCore import QEvent, QObject, Qt, QTimer  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QInputDialog, QLineEdit, QTabBar, QWidget  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.config import load_config  # noqa: E402
from hilum.ui.viewer.hanging import FOLDER  # noqa: E402
from hilum.ui.viewer.viewer_widget import StudyViewer  # noqa: E402
from hilum.ui.viewer.viewport_widget import ViewportCanvas  # noqa: E402

pytestmark = pytest.mark.gui

TIMEOUT = 60000
ROWS = 64
HANG = make_study(MUELLER, accession="ACC-HANG", seed="hanging-protocols")
CTRL_SHIFT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
BROKEN = 'name = "Broken"\n[[stage]]\nlayout = "1x1"\n[[stage.viewport]]\nplaen = "axial"\n'


def write_chest_ct(out: Path, study=HANG) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Series 1: a localizer (coronal, one image, Image Type LOCALIZER), 2: axial 5 mm, 3: coronal
    reformat, 4: sagittal reformat. Returns description -> path folder."""
    kw = {"rows": ROWS, "columns": ROWS, "fov": 360.0, "noise_sigma": 0.0}
    specs = [
        (1, "Topogram", CORONAL, 1, 5.0),
        (2, "Thorax 5 mm", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), 16, 5.0),
        (3, "Coronal MPR", CORONAL, 12, 4.0),
        (4, "Sagittal MPR", SAGITTAL, 12, 4.0),
    ]
    for number, description, orientation, slices, thickness in specs:
        for ds in iter_ct_series(study, slices=slices, slice_thickness=thickness, orientation=orientation,
                                 series_number=number, series_description=description, **kw):  # fmt: skip
            if number == 1:
                ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            write_dataset(ds, instance_path(out, ds))
    return {}


class FirstPaint(QObject):
    """Records, per viewport canvas, the series (and window) of the first image it paints: a Paint
    event is seen here before the canvas paints it, so the state is what that paint shows."""

    def __init__(self) -> None:
        super().__init__()
        self.first: dict[int, tuple[str, str]] = {}  # id(canvas state) -> (series uid, window label)
        self.paints_before_image: dict[int, int] = {}

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.Paint and isinstance(obj, ViewportCanvas):
            st = obj.state
            key = id(st)
            if key not in self.first:
                if st.frame_info is not None:
                    self.first[key] = (st.series_uid, st.window_label)
                else:
                    self.paints_before_image[key] = self.paints_before_image.get(key, 0) + 1
        return False


def _double_click_study(qtbot, window, study_uid: str) -> None:  # type: ignore[no-untyped-def]
    model, table = window.browser.model, window.browser.table
    qtbot.waitUntil(lambda: model.find(study_uid) >= 0, timeout=TIMEOUT)
    rect = table.visualRect(model.index(model.find(study_uid), 1))
    QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    with qtbot.waitSignal(window.studyOpenRequested, timeout=TIMEOUT):
        QTest.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


def _loaded(viewer: StudyViewer) -> bool:
    """Every viewport given a series of the current study shows it whole (the loads' last signals
    have reached the GUI thread)."""
    for i, uid in viewer._assigned.items():
        vp = viewer.model.viewports[i]
        if i < viewer.model.layout.count and viewer.session.entry(uid) is not None:
            if vp.series_uid != uid or vp.volume is None or vp.volume.preview or not vp.volume.complete:
                return False
    return True


def _open(qtbot, window, study_uid: str) -> StudyViewer:  # type: ignore[no-untyped-def]
    _double_click_study(qtbot, window, study_uid)
    viewer = window.viewer_controller.viewer_for(study_uid)
    assert isinstance(viewer, StudyViewer) and window.tabs.currentWidget() is viewer
    qtbot.waitUntil(lambda: _loaded(viewer), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: QApplication.focusWidget() is viewer.viewport_widget(viewer.model.active).canvas,
                    timeout=TIMEOUT)  # fmt: skip
    return viewer


def _shown(viewer: StudyViewer) -> list[str | None]:
    """The Series Description shown in each viewport of the layout, row by row (None: empty)."""
    out: list[str | None] = []
    for vp in viewer.model.visible:
        e = viewer.session.entry(vp.series_uid) if vp.volume is not None else None
        out.append(e.description if e is not None else None)
    return out


def _grab(widget: QWidget) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_Grayscale8)
    arr = np.frombuffer(img.constBits(), np.uint8, img.bytesPerLine() * img.height())
    return arr.reshape(img.height(), -1)[:, : img.width()].copy()


def _press(key: Qt.Key, modifier: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> None:
    target = QApplication.focusWidget()
    assert target is not None, "no widget has the keyboard focus"
    QTest.keyClick(target, key, modifier)


def _save_as(window, name: str) -> None:  # type: ignore[no-untyped-def]
    """Ctrl+Shift+H (Save layout as protocol…), the name typed into its dialog, Enter."""

    def answer() -> None:
        dialog = QApplication.activeModalWidget()
        if not isinstance(dialog, QInputDialog):
            QTimer.singleShot(50, answer)
            return
        edit = dialog.findChild(QLineEdit)
        edit.selectAll()
        QTest.keyClicks(edit, name)
        QTest.keyClick(edit, Qt.Key.Key_Return)

    QTimer.singleShot(50, answer)
    _press(Qt.Key.Key_H, CTRL_SHIFT)
    # Xvfb has no window manager to give the window back its activation when the dialog closes
    window.activateWindow()


def _close_tab(qtbot, window, viewer) -> None:  # type: ignore[no-untyped-def]
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=TIMEOUT)
    index = window.tabs.indexOf(viewer)
    button = window.tabs.tabBar().tabButton(index, QTabBar.ButtonPosition.RightSide)
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.viewer_controller.viewer_for(viewer.study_uid) is None, timeout=TIMEOUT)


@pytest.fixture
def workstation(qtbot, make_main_window, data_dir, tmp_path):  # type: ignore[no-untyped-def]
    archive = Archive(data_dir)
    write_chest_ct(tmp_path / "chest")
    paths = sorted((tmp_path / "chest").rglob("*.dcm"))
    assert paths and all(r.ok for r in archive.ingest_many(paths))
    folder = data_dir / FOLDER
    folder.mkdir(parents=True)
    (folder / "broken.toml").write_text(BROKEN, encoding="utf-8")
    window = make_main_window(load_config(data_dir), archive, viewer=True)
    window.resize(1400, 900)
    window.show()
    qtbot.waitExposed(window)
    spy = FirstPaint()
    app = QApplication.instance()
    app.installEventFilter(spy)
    yield window, spy
    app.removeEventFilter(spy)


def test_protocol_hangs_the_study_before_its_first_image_and_stages_step_by_key(workstation, qtbot):
    window, spy = workstation
    viewer = _open(qtbot, window, HANG.uid)
    assert viewer.hanging is not None and viewer.hanging.name == "CT chest with reformats"
    assert viewer.model.layout.name == "2x2"
    assert _shown(viewer) == ["Thorax 5 mm", "Coronal MPR", "Sagittal MPR", "Topogram"]
    assert viewer.model.link_scroll and viewer.actions_by_name["link_scroll"].isChecked()
    # the first image each viewport painted was already the protocol's (and in the protocol's window)
    qtbot.waitUntil(lambda: all(id(vp) in spy.first for vp in viewer.model.visible), timeout=TIMEOUT)
    for vp in viewer.model.visible:
        assert spy.first[id(vp)][0] == vp.series_uid
    assert spy.first[id(viewer.model.viewports[0])][1] == "Mediastinum"
    assert viewer.model.viewports[0].window_label == "Mediastinum"
    assert (viewer.model.viewports[0].current_window().center, viewer.model.viewports[0].current_window().width) == (
        50, 350)  # fmt: skip
    # without the protocol the series strip's first series (the topogram) would have come first
    assert viewer.session.series[0].description == "Topogram"
    # each canvas shows an image (the phantom: more than the black background)
    for i in range(4):
        assert _grab(viewer.viewport_widget(i).canvas).max() > 100, i
    # the broken protocol file is reported (file, line, key, reason) and skipped; the others applied
    status = viewer.findChild(QWidget, "hangingStatus")
    assert status is viewer.hanging_label and status.isVisible()
    text = status.text()
    assert "CT chest with reformats" in text and "stage 1/3" in text
    assert "broken.toml: line 5, stage[1].viewport[1].plaen: unknown key 'plaen'" in text
    assert viewer.timings["hanging"] < viewer.timings["first_image"]

    # N: stage 2, the axial series in a mediastinal and a lung window, side by side
    _press(Qt.Key.Key_N)
    assert viewer.hanging_stage == 1 and viewer.model.layout.name == "1x2"
    assert _shown(viewer) == ["Thorax 5 mm", "Thorax 5 mm"]
    labels = [vp.window_label for vp in viewer.model.visible]
    assert labels == ["Mediastinum", "Lung"]
    qtbot.waitUntil(lambda: viewer.viewport_widget(1).canvas.isVisible(), timeout=TIMEOUT)
    assert not np.array_equal(_grab(viewer.viewport_widget(0).canvas), _grab(viewer.viewport_widget(1).canvas))
    assert "stage 2/3" in status.text()
    _press(Qt.Key.Key_N)
    assert viewer.model.layout.name == "1x1" and viewer.active_viewport().window_label == "Lung"
    _press(Qt.Key.Key_N)  # the last stage: stays
    assert viewer.hanging_stage == 2 and "Last stage" in viewer.status.text()
    _press(Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    _press(Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert viewer.hanging_stage == 0 and viewer.model.layout.name == "2x2"
    assert _shown(viewer) == ["Thorax 5 mm", "Coronal MPR", "Sagittal MPR", "Topogram"]
    # the stage keys are in the viewer menu, with their keys and icons
    for name, key in (("next_stage", "N"), ("prev_stage", "Shift+N"), ("save_protocol", "Ctrl+Shift+H")):
        act = viewer.actions_by_name[name]
        assert [k.toString() for k in act.shortcuts()] == [key] and not act.icon().isNull()
    layout_menu = dict(viewer.menu_sections("viewer"))["&Layout"]
    assert {"next_stage", "prev_stage", "save_protocol"} <= set(layout_menu)


def test_save_layout_as_protocol_is_picked_next_time(workstation, qtbot, data_dir):
    window, _spy = workstation
    viewer = _open(qtbot, window, HANG.uid)
    assert viewer.model.layout.name == "2x2"
    # the reader makes their own layout: 1x2 (Ctrl+2), the second viewport on the sagittal series
    # (Tab, Right: the next series) in the lung window (4)
    _press(Qt.Key.Key_2, Qt.KeyboardModifier.ControlModifier)
    assert viewer.model.layout.name == "1x2" and _shown(viewer) == ["Thorax 5 mm", "Coronal MPR"]
    _press(Qt.Key.Key_Tab)
    assert viewer.model.active == 1
    _press(Qt.Key.Key_Right)
    qtbot.waitUntil(lambda: _shown(viewer)[1] == "Sagittal MPR", timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not viewer.is_loading(viewer.model.viewports[1].series_uid), timeout=TIMEOUT)
    _press(Qt.Key.Key_4)
    assert viewer.model.viewports[1].window_label == "Lung"

    _save_as(window, "My chest")
    saved = data_dir / FOLDER / "My_chest.toml"
    assert saved.is_file(), viewer.status.text()
    assert str(saved) in viewer.status.text()
    text = saved.read_text(encoding="utf-8")
    assert 'layout = "1x2"' in text and 'plane = "sagittal"' in text and 'window = "Lung"' in text

    _close_tab(qtbot, window, viewer)
    again = _open(qtbot, window, HANG.uid)
    assert again is not viewer
    assert again.hanging is not None and again.hanging.name == "My chest" and again.hanging.user
    assert again.model.layout.name == "1x2"
    assert _shown(again) == ["Thorax 5 mm", "Sagittal MPR"]
    assert [vp.window_label for vp in again.model.visible] == ["Mediastinum", "Lung"]


CURRENT_AND_PRIOR = """
schema_version = 1
name = "CT chest: current and prior"

[[match]]
modality = "CT"
weight = 10
required = true

[[match]]
min_priors = 1
weight = 4
required = true

[[stage]]
name = "Current and prior 1"
layout = "1x2"
link_scroll = true

[[stage.viewport]]
plane = "axial"
pick = "largest"

[[stage.viewport]]
study = "prior 1"
plane = "axial"
pick = "largest"

[[stage]]
name = "Prior 2 and a prior that is not there"
layout = "1x3"

[[stage.viewport]]
plane = "axial"

[[stage.viewport]]
study = "prior 2"
plane = "axial"

[[stage.viewport]]
study = "prior 4"
"""


def test_a_protocol_hangs_the_current_study_first_and_prior_n_when_found(qtbot, make_main_window, data_dir,
                                                                          tmp_path):  # fmt: skip
    import datetime as dt

    from hilum.dicom.generator.demo import write_comparison_patient

    cmp = write_comparison_patient(tmp_path / "cmp", rows=48, slices=40, today=dt.date(2026, 11, 20))
    archive = Archive(data_dir)
    assert all(r.ok for r in archive.ingest_many(cmp.paths))
    (data_dir / FOLDER).mkdir(parents=True)
    (data_dir / FOLDER / "current_and_prior.toml").write_text(CURRENT_AND_PRIOR, encoding="utf-8")
    window = make_main_window(load_config(data_dir), archive, viewer=True)
    window.resize(1400, 900)
    window.show()
    qtbot.waitExposed(window)
    spy = FirstPaint()
    QApplication.instance().installEventFilter(spy)
    try:
        viewer = _open(qtbot, window, cmp.current.study_uid)
        assert viewer.hanging is not None and viewer.hanging.name == "CT chest: current and prior"
        assert viewer.model.layout.name == "1x2"
        current = viewer.model.viewports[0]
        assert current.series_uid == cmp.current.series_uid
        assert spy.first[id(current)][0] == cmp.current.series_uid  # the first image: the current study's
        # prior 1 (the chest CT a year earlier: same modality and body part, most recent) once the search finds it
        prior_vp = viewer.model.viewports[1]
        qtbot.waitUntil(lambda: prior_vp.series_uid == cmp.prior1.series_uid, timeout=TIMEOUT)
        assert viewer.priors[0].study_uid == cmp.prior1.study_uid
        assert cmp.prior1.study_uid in viewer.sessions
        qtbot.waitUntil(lambda: id(prior_vp) in spy.first, timeout=TIMEOUT)
        assert spy.first[id(prior_vp)][0] == cmp.prior1.series_uid  # never another series first
        assert "stage 1/2" in viewer.hanging_label.text() and "viewport 2" not in viewer.hanging_label.text()
        # N: prior 2 beside the current study, and "prior 4" (there are 3) left empty, said in the status
        _press(Qt.Key.Key_N)
        assert viewer.model.layout.name == "1x3"
        assert viewer._assigned.get(1) == cmp.prior2.series_uid and 2 not in viewer._assigned
        qtbot.waitUntil(lambda: viewer.model.viewports[1].series_uid == cmp.prior2.series_uid, timeout=TIMEOUT)
        assert [vp.series_uid for vp in viewer.model.visible] == [cmp.current.series_uid, cmp.prior2.series_uid, ""]
        assert "viewport 3: prior 4 not found" in viewer.hanging_label.text()
        qtbot.waitUntil(lambda: not viewer.is_loading(cmp.prior2.series_uid), timeout=TIMEOUT)
        assert _grab(viewer.viewport_widget(1).canvas).max() > 100
        # saved as a protocol: the prior's viewport says "prior 2"; reopened, it hangs the same way
        _save_as(window, "Compare two years")
        text = (data_dir / FOLDER / "Compare_two_years.toml").read_text(encoding="utf-8")
        assert 'study = "prior 2"' in text and 'layout = "1x3"' in text and "min_priors = 2" in text
        assert "empty = true" in text  # the third viewport was empty: it stays so
        _close_tab(qtbot, window, viewer)
        again = _open(qtbot, window, cmp.current.study_uid)
        assert again.hanging is not None and again.hanging.name == "Compare two years"
        assert again.model.layout.name == "1x3"
        qtbot.waitUntil(lambda: again.model.viewports[1].series_uid == cmp.prior2.series_uid, timeout=TIMEOUT)
        assert again.model.viewports[0].series_uid == cmp.current.series_uid and 2 not in again._assigned
    finally:
        QApplication.instance().removeEventFilter(spy)
