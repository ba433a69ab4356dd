"""Prior comparison in the real workstation window (issue 15): the priors panel, side by side, links.

The generated comparison patient (``CMP-0001``: a current chest CT, prior 1 a
year earlier in the same Frame of Reference, prior 2 two years earlier in
another one, prior 3 an MR of the head) is ingested into a data folder; the
current study is opened by double-clicking it in the study browser, as a
reader would. Every step is a click, a key, a wheel turn or a drag on the real
widgets; the checks read what is on screen (the rows' labels, the rendered
overlay text, the canvases' pixels) and the viewports' slice positions.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QColor, QFont, QImage, QMouseEvent, QPainter, QWheelEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.config import Config, Peer, load_config  # noqa: E402
from hilum.dicom.generator.demo import ComparisonSet, write_comparison_patient  # noqa: E402
from hilum.ui.viewer.overlay import corner_texts  # noqa: E402
from hilum.ui.viewer.priors_panel import date_text  # noqa: E402
from hilum.ui.viewer.viewer_widget import StudyViewer  # noqa: E402

pytestmark = pytest.mark.gui
TIMEOUT = 30_000  # ms; generous for a shared 2-core machine
TODAY = dt.date(2026, 11, 20)


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> ComparisonSet:
    return write_comparison_patient(tmp_path_factory.mktemp("cmp"), rows=64, slices=48, today=TODAY)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, comparison: ComparisonSet) -> Path:
    root = tmp_path_factory.mktemp("cmp-data") / "data"
    with Archive(root) as archive:
        assert all(r.ok for r in archive.ingest_many(comparison.paths))
    return root


@pytest.fixture
def window(qtbot: Any, make_main_window: Any, template: Path, tmp_path: Path) -> Iterator[Any]:
    data = tmp_path / "data"
    shutil.copytree(template, data)
    win = make_main_window(load_config(data), Archive(data), viewer=True)
    win.resize(1500, 900)
    win.show()
    qtbot.waitExposed(win)
    qtbot.waitUntil(lambda: win.browser.model.rowCount() == 4 and not win.browser.searching, timeout=TIMEOUT)
    yield win


def _double_click_study(window: Any, study_uid: str) -> None:
    table = window.browser.table
    row = window.browser.model.find(study_uid)
    assert row >= 0
    pos = table.visualRect(table.model().index(row, 0)).center()
    QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
    QTest.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)


def _open_current(qtbot: Any, window: Any, cs: ComparisonSet) -> StudyViewer:
    _double_click_study(window, cs.current.study_uid)
    viewer = window._test_viewer.viewer_for(cs.current.study_uid)
    assert isinstance(viewer, StudyViewer) and window.tabs.currentWidget() is viewer
    qtbot.waitUntil(lambda: _complete(viewer.model.viewports[0]), timeout=TIMEOUT)
    return viewer


def _complete(vp: Any) -> bool:
    return vp.volume is not None and vp.volume.complete and not vp.volume.preview


def _wait_priors(qtbot: Any, viewer: StudyViewer, n: int) -> None:
    panel = viewer.priors_panel
    qtbot.waitUntil(lambda: panel.note.text() == f"{n} earlier studies", timeout=TIMEOUT)


def _click_prior(qtbot: Any, viewer: StudyViewer, study_uid: str) -> None:
    lst = viewer.priors_panel.list
    item = viewer.priors_panel.item(study_uid)
    assert item is not None
    rect = lst.visualItemRect(item)
    assert lst.viewport().rect().contains(rect.center())  # on screen
    QTest.mouseClick(lst.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())


def grab(widget: Any) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def _qimage_rgb(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def _top_right_text(canvas: Any) -> tuple[list[str], np.ndarray]:
    """The top-right corner's lines for what *canvas* shows, and those lines rendered as the
    canvas renders them (its text block over black: the corner of a CT is air)."""
    st = canvas.state
    lines = corner_texts(canvas.overlay, st.volume.header, st.overlay_values())["top_right"]
    font = QFont(canvas.font())
    font.setPointSizeF(max(7.0, min(10.0, canvas.height() / 45.0)))
    block = canvas._text_block(tuple(lines), True, font)
    out = QImage(block.size(), QImage.Format.Format_RGB32)
    out.fill(QColor(0, 0, 0))
    p = QPainter(out)
    p.drawImage(0, 0, block)
    p.end()
    return lines, _qimage_rgb(out)


def _shows_top_right(canvas: Any, expected: np.ndarray) -> bool:
    shot = grab(canvas)
    h, w = expected.shape[:2]
    x = canvas.width() - 6 - w
    region = shot[4 : 4 + h, x : x + w].astype(int)
    return bool(region.shape == expected.shape and np.abs(region - expected).max() <= 8)


def _wheel(canvas: Any, steps: int, modifiers: Any = Qt.KeyboardModifier.NoModifier) -> None:
    pos = QPointF(canvas.width() / 2, canvas.height() / 2)
    ev = QWheelEvent(pos, canvas.mapToGlobal(pos), QPoint(0, 0), QPoint(0, -120 * steps), Qt.MouseButton.NoButton,
                     modifiers, Qt.ScrollPhase.NoScrollPhase, False)  # fmt: skip
    QApplication.sendEvent(canvas, ev)


def _mouse(widget: Any, kind: QEvent.Type, pos: tuple[float, float], button: Any, buttons: Any) -> None:
    ev = QMouseEvent(kind, QPointF(*pos), widget.mapToGlobal(QPointF(*pos)), button, buttons,
                     Qt.KeyboardModifier.NoModifier)  # fmt: skip
    QApplication.sendEvent(widget, ev)


def _right_drag(canvas: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    r = Qt.MouseButton.RightButton
    _mouse(canvas, QEvent.Type.MouseButtonPress, start, r, r)
    _mouse(canvas, QEvent.Type.MouseMove, end, Qt.MouseButton.NoButton, r)
    _mouse(canvas, QEvent.Type.MouseButtonRelease, end, r, Qt.MouseButton.NoButton)


def _slice_z(vp: Any) -> float:
    return float(vp.geometry.centre[2])


# ---------------------------------------------------------------- tests


def test_priors_ranked_click_prior_compares_side_by_side_with_links(
    qtbot: Any, window: Any, comparison: ComparisonSet
) -> None:
    cs = comparison
    viewer = _open_current(qtbot, window, cs)
    panel = viewer.priors_panel
    assert panel.isVisible()
    _wait_priors(qtbot, viewer, 3)
    # same modality and body part first (the two chest CTs, most recent first), then the head MR
    assert panel.study_uids() == [cs.prior1.study_uid, cs.prior2.study_uid, cs.prior3.study_uid]
    assert [p.study_uid for p in viewer.priors] == panel.study_uids()
    assert "priors_local" in viewer.timings
    for prior in (cs.prior1, cs.prior2, cs.prior3):
        row = panel.row(prior.study_uid)
        assert row is not None and row.isVisible()
        assert date_text(prior.study_date) in row.title.text() and prior.modality in row.title.text()
        assert row.source.text().startswith("local") and not row.retrieve.isVisible()
        assert row.toolTip().strip()  # the ranking's reason
    assert "1 y" in panel.row(cs.prior1.study_uid).title.text()

    # click prior 1: side by side, current left, prior right
    with qtbot.waitSignal(viewer.compared, timeout=TIMEOUT):
        _click_prior(qtbot, viewer, cs.prior1.study_uid)
    assert viewer.model.layout.name == "1x2"
    left, right = viewer.model.visible
    qtbot.waitUntil(lambda: right.series_uid == cs.prior1.series_uid, timeout=TIMEOUT)
    assert left.series_uid == cs.current.series_uid
    assert set(viewer.sessions) == {cs.current.study_uid, cs.prior1.study_uid}
    qtbot.waitUntil(lambda: _complete(left) and _complete(right), timeout=TIMEOUT)
    for name in ("link_scroll", "link_window", "link_zoom"):
        assert viewer.actions_by_name[name].isChecked()
    # the strip: the current series, then prior 1 under its date header
    strip = viewer.strip
    header = strip.header_for(cs.prior1.study_uid)
    assert header is not None and header.text().split() == ["PRIOR", date_text(cs.prior1.study_date)]
    assert viewer.priors_panel.list.currentItem() is viewer.priors_panel.item(cs.prior1.study_uid)
    assert strip.series_uids() == [cs.current.series_uid, cs.prior1.series_uid]

    # the overlay names each viewport's study date, the prior marked
    c_left, c_right = viewer.viewport_widget(0).canvas, viewer.viewport_widget(1).canvas
    qtbot.waitUntil(lambda: c_left.image_paint_count > 0 and c_right.image_paint_count > 0, timeout=TIMEOUT)
    lines_l, block_l = _top_right_text(c_left)
    lines_r, block_r = _top_right_text(c_right)
    assert any(line.startswith(date_text(cs.current.study_date)) for line in lines_l)
    assert not any("PRIOR" in line for line in lines_l)
    assert any(line.startswith(f"PRIOR {date_text(cs.prior1.study_date)}") for line in lines_r)
    qtbot.waitUntil(lambda: _shows_top_right(c_left, block_l) and _shows_top_right(c_right, block_r), timeout=5000)
    assert not _shows_top_right(c_right, block_l)  # what the right one shows is not the current's text

    # scroll the current one with the wheel: the prior follows by patient position (same FoR)
    qtbot.waitUntil(lambda: abs(_slice_z(left) - _slice_z(right)) < 0.1, timeout=5000)
    before_l, before_r = left.index, right.index
    shot_r = grab(c_right)
    _wheel(c_left, 5)
    assert left.index != before_l and right.index != before_r
    assert abs(_slice_z(left) - _slice_z(right)) < 0.1  # the same table position (2.5 mm slices)
    qtbot.waitUntil(lambda: not np.array_equal(grab(c_right), shot_r), timeout=5000)

    # window/level: a right drag on the current one changes both
    w_l, w_r = left.current_window(), right.current_window()
    shot_r = grab(c_right)
    _right_drag(c_left, (100, 100), (180, 60))
    assert left.current_window() != w_l and right.current_window() != w_r
    assert (right.current_window().center, right.current_window().width) == (
        left.current_window().center,
        left.current_window().width,
    )
    qtbot.waitUntil(lambda: not np.array_equal(grab(c_right), shot_r), timeout=5000)

    # zoom: Ctrl+wheel on the prior zooms the current one too
    z = left.view.zoom
    _wheel(c_right, -2, Qt.KeyboardModifier.ControlModifier)
    assert right.view.zoom != z and abs(left.view.zoom - right.view.zoom) < 1e-6


def test_key_c_compares_with_the_most_relevant_prior_and_strip_shows_prior_series(
    qtbot: Any, window: Any, comparison: ComparisonSet
) -> None:
    cs = comparison
    viewer = _open_current(qtbot, window, cs)
    _wait_priors(qtbot, viewer, 3)
    canvas = viewer.viewport_widget(0).canvas
    assert viewer.actions_by_name["compare_prior"].shortcuts()[0].toString() == "C"
    # the reader windows and zooms the current study first: the prior comes the same
    _right_drag(canvas, (100, 100), (160, 80))
    _wheel(canvas, -3, Qt.KeyboardModifier.ControlModifier)
    current = viewer.model.viewports[0]
    window_before, zoom_before = current.current_window(), current.view.zoom
    canvas.setFocus()
    with qtbot.waitSignal(viewer.compared, timeout=TIMEOUT):
        QTest.keyClick(canvas, Qt.Key.Key_C)
    assert viewer.model.layout.name == "1x2"
    prior = viewer.model.visible[1]
    qtbot.waitUntil(lambda: prior.series_uid == cs.prior1.series_uid and _complete(prior), timeout=TIMEOUT)
    assert current.current_window() == window_before and current.view.zoom == zoom_before
    w = prior.current_window()
    assert (w.center, w.width) == (window_before.center, window_before.width)
    assert abs(prior.view.zoom - zoom_before) < 1e-9
    # the viewer menu has the comparison entries
    titles = {title for title, _ in viewer.menu_sections("viewer")}
    assert "&Priors" in titles

    # prior 2 (another Frame of Reference) by clicking it: it takes the right viewport
    with qtbot.waitSignal(viewer.compared, timeout=TIMEOUT):
        _click_prior(qtbot, viewer, cs.prior2.study_uid)
    right = viewer.model.visible[1]
    qtbot.waitUntil(lambda: right.series_uid == cs.prior2.series_uid, timeout=TIMEOUT)
    assert viewer.strip.header_for(cs.prior2.study_uid) is not None
    # prior 1's series from the strip: double-click it with the right viewport active
    QTest.mouseClick(viewer.viewport_widget(1).canvas, Qt.MouseButton.LeftButton)
    assert viewer.model.active == 1
    item = viewer.strip.item_for(cs.prior1.series_uid)
    assert item is not None
    rect = viewer.strip.visualItemRect(item)
    QTest.mouseClick(viewer.strip.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())
    QTest.mouseDClick(viewer.strip.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())
    qtbot.waitUntil(lambda: viewer.model.visible[1].series_uid == cs.prior1.series_uid, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: _complete(viewer.model.visible[1]), timeout=TIMEOUT)
    # the header is not a series: double-clicking it changes nothing
    header = viewer.strip.header_for(cs.prior2.study_uid)
    rect = viewer.strip.visualItemRect(header)
    QTest.mouseDClick(viewer.strip.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())
    assert viewer.model.visible[1].series_uid == cs.prior1.series_uid


def test_priors_panel_hides_with_its_key(qtbot: Any, window: Any, comparison: ComparisonSet) -> None:
    viewer = _open_current(qtbot, window, comparison)
    canvas = viewer.viewport_widget(0).canvas
    canvas.setFocus()
    assert viewer.priors_panel.isVisible()
    QTest.keyClick(canvas, Qt.Key.Key_P, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert not viewer.priors_panel.isVisible()
    QTest.keyClick(canvas, Qt.Key.Key_P, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert viewer.priors_panel.isVisible()


def test_remote_prior_retrieve_then_compare(
    qtbot: Any, make_main_window: Any, comparison: ComparisonSet, tmp_path: Path
) -> None:
    """Prior 1 only on a peer (a Hilum node on loopback): listed as remote with Retrieve; the click
    retrieves it (C-GET through the transfers queue) and it becomes local; a click compares."""
    from conftest import free_port
    from hilum.node import Node

    cs = comparison
    port = free_port()
    peer = Node(Config(data_dir=tmp_path / "peer", aet="PEER", dicom_port=port), only=["dimse"])
    assert all(r.ok for r in peer.archive.ingest_many(list(cs.prior1.paths)))
    peer.start()
    try:
        cfg = Config(data_dir=tmp_path / "ws", aet="HILUMWS",
                     peers={"peer": Peer(aet="PEER", host="127.0.0.1", port=port)})  # fmt: skip
        local = Archive(cfg.data_dir)
        assert all(r.ok for r in local.ingest_many(list(cs.current.paths)))
        win = make_main_window(cfg, local, viewer=True)
        win.resize(1500, 900)
        win.show()
        qtbot.waitExposed(win)
        qtbot.waitUntil(lambda: win.browser.model.rowCount() == 1 and not win.browser.searching, timeout=TIMEOUT)
        viewer = _open_current(qtbot, win, cs)
        panel = viewer.priors_panel
        qtbot.waitUntil(lambda: panel.study_uids() == [cs.prior1.study_uid], timeout=TIMEOUT)
        row = panel.row(cs.prior1.study_uid)
        assert row is not None and row.retrieve.isVisible() and "peer" in row.source.text()
        _click_prior(qtbot, viewer, cs.prior1.study_uid)  # a remote prior does not open
        assert viewer.model.layout.name == "1x1"
        QTest.mouseClick(row.retrieve, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: viewer.priors and viewer.priors[0].local, timeout=TIMEOUT)
        n = len(local.query("IMAGE", {"StudyInstanceUID": cs.prior1.study_uid}))
        assert n == len(cs.prior1.paths)
        row = panel.row(cs.prior1.study_uid)
        assert row is not None and not row.retrieve.isVisible() and row.source.text().startswith("local")
        with qtbot.waitSignal(viewer.compared, timeout=TIMEOUT):
            _click_prior(qtbot, viewer, cs.prior1.study_uid)
        qtbot.waitUntil(lambda: viewer.model.visible[1].series_uid == cs.prior1.series_uid, timeout=TIMEOUT)
    finally:
        peer.stop()


def _registration_available() -> bool:
    """Registration and the model's links across Frames of Reference (issue 15, contract B)."""
    from hilum.ui.viewer.model import ViewerModel

    try:
        from hilum.dicom import registration  # noqa: F401
    except ImportError:
        return False
    return hasattr(ViewerModel, "set_alignment") and hasattr(ViewerModel, "alignment_between")


@pytest.mark.skipif(not _registration_available(), reason="contract B (registration, model alignment) not merged")
def test_prior_in_another_frame_of_reference_is_registered_in_the_background(
    qtbot: Any, window: Any, comparison: ComparisonSet
) -> None:
    cs = comparison
    viewer = _open_current(qtbot, window, cs)
    _wait_priors(qtbot, viewer, 3)
    seen: list[str] = []  # the prior viewport's status when its stack is whole: registering (off this thread)
    viewer.loadFinished.connect(lambda uid: seen.append(viewer.model.viewports[1].status))
    with qtbot.waitSignal(viewer.alignmentReady, timeout=120_000):
        _click_prior(qtbot, viewer, cs.prior2.study_uid)
    assert "Registering…" in seen
    left, right = viewer.model.visible
    assert right.series_uid == cs.prior2.series_uid and right.status == ""
    assert viewer.model.alignment_between(left, right) is not None
    assert list((Path(window.config.data_dir) / "cache" / "alignments").glob("*.json"))  # kept for next time
    # scrolling the current one moves the prior to the same anatomy (through the alignment)
    _wheel(viewer.viewport_widget(0).canvas, 4)
    a = viewer.model.alignment_between(left, right)
    centre = np.asarray(left.geometry.centre)
    moved = np.asarray(a.to_moving(centre)) if a.fixed_series == left.series_uid else np.asarray(a.to_fixed(centre))
    normal = right.volume.stack.normal
    assert abs(float((moved - np.asarray(right.geometry.centre)) @ normal)) <= 2.5


def _thick_copy(paths: tuple[Path, ...], out: Path, tag: str) -> list[Path]:
    """A second series of the same study: every other slice, 5 mm, described "Thorax 5 mm"."""
    import pydicom
    from pydicom.uid import generate_uid

    series_uid = generate_uid(entropy_srcs=[tag, "thick"])
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(sorted(paths)[::2]):
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.SeriesDescription = "Thorax 5 mm"
        ds.SliceThickness = 5.0
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[tag, str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = out / f"{tag}-{i:03d}.dcm"
        ds.save_as(target)
        written.append(target)
    return written


def test_shift_c_compares_two_series_each_with_its_match_2x2(
    qtbot: Any, window: Any, comparison: ComparisonSet, tmp_path: Path
) -> None:
    cs = comparison
    extra = _thick_copy(cs.current.paths, tmp_path / "extra", "cur") + _thick_copy(
        cs.prior1.paths, tmp_path / "extra", "p1"
    )
    assert all(r.ok for r in window.archive.ingest_many(extra))
    viewer = _open_current(qtbot, window, cs)
    _wait_priors(qtbot, viewer, 3)
    canvas = viewer.viewport_widget(0).canvas
    canvas.setFocus()
    with qtbot.waitSignal(viewer.compared, timeout=TIMEOUT):
        QTest.keyClick(canvas, Qt.Key.Key_C, Qt.KeyboardModifier.ShiftModifier)
    assert viewer.model.layout.name == "2x2"
    vps = viewer.model.visible
    qtbot.waitUntil(lambda: all(_complete(vp) for vp in vps), timeout=TIMEOUT)
    # current on the left, prior 1 on the right; each row a pair of the same kind (2.5 mm, 5 mm)
    assert vps[0].series_uid == cs.current.series_uid and vps[1].series_uid == cs.prior1.series_uid
    assert viewer.session.entry(vps[2].series_uid) is not None  # the current's 5 mm series
    assert viewer.sessions[cs.prior1.study_uid].entry(vps[3].series_uid).description == "Thorax 5 mm"
    assert vps[2].stack_size == vps[3].stack_size == 24


def test_a_prior_open_in_its_own_tab_survives_closing_the_comparison(
    qtbot: Any, window: Any, comparison: ComparisonSet
) -> None:
    """The volume cache is shared between tabs: closing the tab that compared with prior 1 must
    not stop or drop prior 1 in the tab where it is the study opened."""
    cs = comparison
    viewer = _open_current(qtbot, window, cs)
    _wait_priors(qtbot, viewer, 3)
    with qtbot.waitSignal(viewer.compared, timeout=TIMEOUT):
        _click_prior(qtbot, viewer, cs.prior1.study_uid)
    window.show_browser()
    _double_click_study(window, cs.prior1.study_uid)
    other = window._test_viewer.viewer_for(cs.prior1.study_uid)
    assert isinstance(other, StudyViewer) and other is not viewer
    qtbot.waitUntil(lambda: _complete(other.model.viewports[0]), timeout=TIMEOUT)
    assert window.close_workspace_tab(window.tabs.indexOf(viewer))
    qtbot.wait(50)
    vp = other.model.viewports[0]
    assert _complete(vp) and vp.series_uid == cs.prior1.series_uid
    other.show_series(cs.prior1.series_uid, 0)  # shown again: from the cache, not reloaded
    assert other.series_volume(cs.prior1.series_uid) is vp.volume and not other.is_loading(cs.prior1.series_uid)
    # the other tab's own priors: the current study is a later one, listed after the earlier CT
    qtbot.waitUntil(lambda: len(other.priors) == 3, timeout=TIMEOUT)
    order = [p.study_uid for p in other.priors]
    assert order.index(cs.prior2.study_uid) < order.index(cs.current.study_uid)


def test_a_prior_of_another_body_part_is_shown_but_not_registered(
    qtbot: Any, window: Any, comparison: ComparisonSet
) -> None:
    """Prior 3 (an MR of the head) beside the chest CT: side by side, no registration asked for
    (nothing in common to align), the overlay still dates it."""
    cs = comparison
    viewer = _open_current(qtbot, window, cs)
    _wait_priors(qtbot, viewer, 3)
    seen: list[str] = []
    viewer.loadFinished.connect(lambda uid: seen.append(viewer.model.viewports[1].status))
    with qtbot.waitSignal(viewer.loadFinished, timeout=TIMEOUT, check_params_cb=lambda u: u == cs.prior3.series_uid):
        _click_prior(qtbot, viewer, cs.prior3.study_uid)
    left, right = viewer.model.visible
    assert right.series_uid == cs.prior3.series_uid and right.modality == "MR"
    assert "Registering…" not in seen and viewer.model.alignment_between(left, right) is None
    lines, block = _top_right_text(viewer.viewport_widget(1).canvas)
    assert any(line.startswith(f"PRIOR {date_text(cs.prior3.study_date)}") for line in lines)


def test_mpr_of_the_prior_on_spare_windows_warmed_while_another_mpr_was_open(
    qtbot: Any, window: Any, comparison: ComparisonSet
) -> None:
    """The spare MPR windows (hilum.ui.mpr.warm) made when the prior finished loading — while the
    current study's MPR was open — serve the prior's MPR after that one is closed: its axial plane
    maps a click to the patient point under the mouse (the flaky MPR tests of this stop took spare
    sets made in an earlier test; the same reuse within one session, as a reader does it)."""
    from hilum.ui.mpr import warm

    cs = comparison
    viewer = _open_current(qtbot, window, cs)
    _wait_priors(qtbot, viewer, 3)
    qtbot.waitUntil(warm.ready, timeout=TIMEOUT)
    canvas = viewer.viewport_widget(0).canvas
    canvas.setFocus()

    def open_mpr(c: Any) -> Any:
        QTest.keyClick(c, Qt.Key.Key_M)
        mpr = viewer._mpr_windows[-1]
        qtbot.waitUntil(lambda: mpr.volume is not None
                        and all(cv.render_count > 0 for cv in mpr.slice_canvases.values()), timeout=TIMEOUT)  # fmt: skip
        return mpr

    first = open_mpr(canvas)
    assert not warm.ready()  # the current study's MPR took the spare set
    window.activateWindow()  # back to the main window (the MPR opened a window of its own)
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    with qtbot.waitSignal(viewer.compared, timeout=TIMEOUT):
        canvas.setFocus()
        QTest.keyClick(canvas, Qt.Key.Key_C)
    prior = viewer.model.visible[1]
    qtbot.waitUntil(lambda: _complete(prior), timeout=TIMEOUT)
    qtbot.waitUntil(warm.ready, timeout=TIMEOUT)  # made while the first MPR is open
    first.close()
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    right = viewer.viewport_widget(1).canvas
    QTest.mouseClick(right, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(5, 5))
    assert viewer.model.active == 1
    second = open_mpr(right)
    assert not warm.ready()  # it took the set warmed while the first was open
    axial = second.slice_canvases["axial"]
    z = float(second.scene.crosshair.centre[2])
    for x, y in ((-30.0, 20.0), (40.0, -25.0), (10.0, 30.0)):
        axial.render_now()
        dx, dy, _ = axial.viewport.patient_to_display(np.array([x, y, z]))
        dpr = axial.devicePixelRatioF()
        _, h = axial._device_size()
        where = QPoint(int(round(dx / dpr)), int(round((h - 1 - dy) / dpr)))
        QTest.mouseClick(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, where)
        qtbot.waitUntil(lambda x=x, y=y: np.allclose(second.scene.crosshair.centre[:2], (x, y), atol=2.0), timeout=5000)
    second.close()
