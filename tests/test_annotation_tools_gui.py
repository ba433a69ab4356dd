"""The annotation tools as a person uses them (issue 16): real mouse drags and key presses on the
real viewer's canvas, values checked against the generated phantom's known geometry, pixels
checked on screen, one AnnotationSet painted on every viewport that shows the image.

The series: the generator's noise-free chest CT, 96 x 96 over 360 mm (3.75 mm pixels), so the
air in front of the body is -1000 HU, the lung -850, the mediastinum 40 and the 20 mm nodule
(centre x -70, y 10 mm) 300 HU.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from _viewer_data import STUDY, hu_point_to_pixel, write_ct

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QImage, QKeySequence, QWheelEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QLineEdit, QWidget  # noqa: E402

from hilum.dicom.geometry import Spacing  # noqa: E402
from hilum.dicom.stack_measure import polygon_area  # noqa: E402
from hilum.ui.viewer.shortcuts import SHORTCUTS  # noqa: E402
from hilum.ui.viewer.tools import TOOLS  # noqa: E402
from hilum.ui.viewer.viewer_widget import StudyViewer  # noqa: E402

pytestmark = pytest.mark.gui
ROWS = 96
PX_MM = 360.0 / ROWS
L, R = Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton
NO = Qt.KeyboardModifier.NoModifier
CTRL = Qt.KeyboardModifier.ControlModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier
KEYS = {name[5:]: keys for name, keys, _ in SHORTCUTS if name.startswith("tool_")}


@pytest.fixture
def study(archive, tmp_path):
    paths = write_ct(tmp_path / "ax", rows=ROWS, slices=10, thickness=5.0)
    assert all(r.ok for r in archive.ingest_many(paths))
    return STUDY.uid


@pytest.fixture
def viewer(qtbot, archive, data_dir, study):
    v = StudyViewer(archive, study, data_dir=data_dir, executor="thread")
    qtbot.addWidget(v)
    v.resize(900, 700)
    v.show()
    qtbot.waitExposed(v)
    with qtbot.waitSignal(v.loadFinished, timeout=20000):
        v.open()
    v.activateWindow()
    v.viewport_widget(0).canvas.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is v.viewport_widget(0).canvas, timeout=5000)
    yield v
    v.close()


# ---------------------------------------------------------------- helpers: what a person does


def grab(widget: QWidget) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def green(img: np.ndarray) -> np.ndarray:
    """Where the annotation colour (green) is painted."""
    g = img.astype(int)
    return (g[..., 1] > 150) & (g[..., 1] - g[..., 0] > 60) & (g[..., 1] - g[..., 2] > 60)


def blue(img: np.ndarray) -> np.ndarray:
    """Where the selection colour (light blue) is painted."""
    g = img.astype(int)
    return (g[..., 2] > 200) & (g[..., 1] > 150) & (g[..., 2] - g[..., 0] > 80)


def ink(img: np.ndarray) -> np.ndarray:
    """Where an annotation is painted, selected or not."""
    return green(img) | blue(img)


def near(mask: np.ndarray, xy: tuple[float, float], r: int = 5) -> int:
    x, y = round(xy[0]), round(xy[1])
    return int(mask[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1].sum())


def visible_editor(canvas: QWidget) -> QLineEdit | None:
    shown = [e for e in canvas.findChildren(QLineEdit, "annotationTextEditor") if e.isVisible()]
    return shown[0] if shown else None


def key(k: Qt.Key, mod: Qt.KeyboardModifier = NO) -> None:
    """A key press to whatever has the keyboard focus."""
    target = QApplication.focusWidget()
    assert target is not None, "no widget has the keyboard focus"
    QTest.keyClick(target, k, mod)


def tool_key(name: str) -> None:
    combo = QKeySequence(KEYS[name])[0]
    key(combo.key(), combo.keyboardModifiers())


def qp(p: tuple[float, float]) -> QPoint:
    return QPoint(round(p[0]), round(p[1]))


def drag(canvas: QWidget, a: tuple[float, float], b: tuple[float, float], button: Qt.MouseButton = L,
         steps: int = 4) -> None:  # fmt: skip
    QTest.mousePress(canvas, button, NO, qp(a))
    for i in range(1, steps + 1):
        t = i / steps
        QTest.mouseMove(canvas, qp((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))))
    QTest.mouseRelease(canvas, button, NO, qp(b))


def drag_path(canvas: QWidget, path: list[tuple[float, float]]) -> None:
    QTest.mousePress(canvas, L, NO, qp(path[0]))
    for p in path[1:]:
        QTest.mouseMove(canvas, qp(p))
    QTest.mouseRelease(canvas, L, NO, qp(path[-1]))


def click(canvas: QWidget, p: tuple[float, float], button: Qt.MouseButton = L) -> None:
    QTest.mouseClick(canvas, button, NO, qp(p))


def snapped(vp, p: tuple[float, float]) -> tuple[float, float]:
    """The image point a click at *p* lands on (the canvas point rounded to a whole pixel)."""
    return vp.canvas_to_image(*map(float, (round(vp.image_to_canvas(*p)[0]), round(vp.image_to_canvas(*p)[1]))))


def image_px_in_mm_per_canvas_px(vp) -> float:
    return PX_MM / (vp.image_to_canvas(1, 0)[0] - vp.image_to_canvas(0, 0)[0])


def only_new(viewer, before: set[str]):
    new = [a for a in viewer.annotations.all() if a.uid not in before]
    assert len(new) == 1, new
    return new[0]


# ---------------------------------------------------------------- 1. every kind, drawn and measured


def test_every_kind_drawn_with_the_mouse_measures_the_phantom(viewer, qtbot):
    canvas = viewer.viewport_widget(0).canvas
    vp = viewer.active_viewport()
    c = vp.image_to_canvas
    tol = 1.5 * image_px_in_mm_per_canvas_px(vp)  # two points each within half a canvas pixel
    uids: set[str] = set()
    assert vp.frame_info.spacing.column == pytest.approx(PX_MM)

    def new():
        a = only_new(viewer, uids)
        uids.add(a.uid)
        return a

    with qtbot.captureExceptions() as exceptions:
        # length: 50 mm along a row
        tool_key("length")
        assert viewer.tool_name == "length"
        drag(canvas, c(60, 80), c(60 + 50 / PX_MM, 80))
        length = new()
        assert length.kind == "length" and vp.annotation_values(length)["length"] == pytest.approx(50.0, abs=tol)
        # angle: one arm along +x, the other along -y: 90 degrees
        tool_key("angle")
        drag(canvas, c(82, 30), c(72, 30))
        click(canvas, c(72, 20))
        angle = new()
        assert angle.kind == "angle" and vp.annotation_values(angle)["angle"] == pytest.approx(90.0, abs=1.0)
        # Cobb: a horizontal line, then one at 30 degrees to it
        tool_key("cobb")
        drag(canvas, c(8, 60), c(20, 60))
        assert viewer.annotations.all()[-1].uid in uids  # the first line alone is not an annotation yet
        drag(canvas, c(8, 75), c(8 + 12 * math.cos(math.radians(30)), 75 - 12 * math.sin(math.radians(30))))
        cobb = new()
        assert cobb.kind == "cobb" and len(cobb.points) == 4
        assert vp.annotation_values(cobb)["angle"] == pytest.approx(30.0, abs=1.0)
        # ellipse in the air in front of the body: -1000 HU
        tool_key("ellipse")
        drag(canvas, c(41, 4), c(54, 9))
        ell = new()
        v = vp.annotation_values(ell)
        assert v["mean"] == pytest.approx(-1000.0) and v["sd"] == 0.0 and v["unit"] == "HU"
        (x0, y0), (x1, y1) = ell.points
        assert v["area"] == pytest.approx(math.pi * abs(x1 - x0) * abs(y1 - y0) / 4 * PX_MM**2)
        # rectangle in the right lung: -850 HU
        tool_key("rect")
        drag(canvas, c(25.5, 31.5), c(30.5, 36.5))
        rect = new()
        v = vp.annotation_values(rect)
        assert v["mean"] == pytest.approx(-850.0) and v["min"] == v["max"] == -850.0
        assert v["count"] == 5 * 5  # pixel centres 26..30 x 32..36 (the corners are between them)
        # freehand: a diamond inside the 20 mm nodule, 300 HU; area = the drawn polygon's
        tool_key("freehand")
        cx, cy = 29.0, 50.0
        ring = [(cx + 1.6 * math.cos(t), cy + 1.6 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 25)]
        drag_path(canvas, [c(*p) for p in ring])
        fh = new()
        v = vp.annotation_values(fh)
        assert fh.kind == "freehand" and len(fh.points) >= 8
        assert v["mean"] == pytest.approx(300.0) and v["sd"] == 0.0 and v["count"] == 9
        assert v["area"] == pytest.approx(polygon_area(fh.points, Spacing(PX_MM, PX_MM, "PixelSpacing")))
        assert v["area"] == pytest.approx(math.pi * (1.6 * PX_MM) ** 2, rel=0.08)
        # point in the mediastinum: 40 HU
        tool_key("point")
        click(canvas, c(*hu_point_to_pixel(0, -40, ROWS)))
        point = new()
        assert vp.annotation_values(point)["value"] == pytest.approx(40.0)
        assert vp.annotation_lines(point) == ["40 HU"]
        # arrow: tail to head
        tool_key("arrow")
        drag(canvas, c(80, 48), c(88, 58))
        arrow = new()
        assert arrow.kind == "arrow" and arrow.points[1] == pytest.approx(snapped(vp, (88, 58)), abs=1e-6)
        # text: click, type, Enter
        tool_key("text")
        click(canvas, c(60, 90))
        editor = visible_editor(canvas)
        assert editor is not None
        qtbot.waitUntil(lambda: QApplication.focusWidget() is editor, timeout=3000)
        QTest.keyClicks(QApplication.focusWidget(), "Nodule LUL")  # the viewer's letter keys stay out
        key(Qt.Key.Key_Return)
        text = new()
        assert text.kind == "text" and text.text == "Nodule LUL" and viewer.tool_name == "text"
        assert visible_editor(canvas) is None
        assert QApplication.focusWidget() is canvas
    assert not exceptions, exceptions

    kinds = sorted(a.kind for a in viewer.annotations.all())
    assert kinds == sorted(["length", "angle", "cobb", "ellipse", "rect", "freehand", "point", "arrow", "text"])
    assert all(a.sop_instance_uid == vp.frame_info.sop_instance_uid for a in viewer.annotations.all())
    assert all(a.series_uid == vp.series_uid and a.study_uid == STUDY.uid for a in viewer.annotations.all())
    # on screen: each one drawn where it is, with its value next to it
    img = grab(canvas)
    g = green(img)
    for a in viewer.annotations.all():
        assert near(g, c(*a.points[0]), 8) > 3, a.kind
    assert near(g, c(60 + 50 / PX_MM, 80), 40) > 30  # "50.0 mm" next to the length's end
    # another slice: none of them; back: all of them
    key(Qt.Key.Key_Down)
    assert green(grab(canvas)).sum() < 20
    key(Qt.Key.Key_Up)
    assert green(grab(canvas)).sum() == g.sum()


# ---------------------------------------------------------------- 2. select, move, edit, delete, undo, redo


def test_select_move_edit_delete_undo_redo_with_mouse_and_keys(viewer, qtbot):
    canvas = viewer.viewport_widget(0).canvas
    vp = viewer.active_viewport()
    c = vp.image_to_canvas
    aset = viewer.annotations
    with qtbot.captureExceptions() as exceptions:
        tool_key("length")
        drag(canvas, c(30, 70), c(60, 70))
        (a,) = aset.all()
        drawn = list(a.points)
        length0 = vp.annotation_values(a)["length"]
        # the pointer: a click on the line selects it (drawn in the selection colour, with handles)
        tool_key("select")
        assert viewer.tool_name == "select"
        click(canvas, c(45, 70))
        assert vp.selected == a.uid and aset.all() == [a] and a.points == drawn
        assert near(blue(grab(canvas)), c(30, 70), 6) > 5  # a handle at the end
        # drag the body: it moves, length unchanged, one undoable step
        drag(canvas, c(45, 70), c(45, 60), steps=6)
        assert a.points[0][1] == pytest.approx(drawn[0][1] - 10, abs=0.3)
        assert a.points[1][0] - a.points[0][0] == pytest.approx(drawn[1][0] - drawn[0][0])
        assert vp.annotation_values(a)["length"] == pytest.approx(length0)
        moved = list(a.points)
        # drag a handle: that end only; with any tool (here the length tool) over an annotation
        tool_key("length")
        drag(canvas, c(*moved[1]), c(moved[1][0] + 10, moved[1][1]))
        assert len(aset) == 1, "dragging a handle must not draw a new length"
        assert a.points[0] == moved[0] and a.points[1][0] == pytest.approx(moved[1][0] + 10, abs=0.3)
        assert vp.annotation_values(a)["length"] == pytest.approx(length0 + 10 * PX_MM, abs=1.5)
        # undo (Ctrl+Z) twice: the handle, then the move; redo with Ctrl+Y and Ctrl+Shift+Z
        key(Qt.Key.Key_Z, CTRL)
        assert a.points == moved
        key(Qt.Key.Key_Z, CTRL)
        assert a.points == drawn
        assert near(ink(grab(canvas)), c(30, 70), 4) > 3 and near(ink(grab(canvas)), c(30, 60), 3) == 0
        key(Qt.Key.Key_Y, CTRL)
        assert a.points == moved
        key(Qt.Key.Key_Z, CTRL | SHIFT)
        assert a.points[1][0] == pytest.approx(moved[1][0] + 10, abs=0.3)
        # Delete removes the selected one; Ctrl+Z brings it back
        assert vp.selected == a.uid
        key(Qt.Key.Key_Delete)
        assert len(aset) == 0 and near(ink(grab(canvas)), c(*a.points[0]), 6) == 0
        key(Qt.Key.Key_Z, CTRL)
        assert len(aset) == 1 and aset.all()[0].points == a.points
        a = aset.all()[0]

        # text: drawn, then double-clicked and edited; undo gives the old text back
        tool_key("text")
        click(canvas, c(20, 20))
        qtbot.waitUntil(lambda: isinstance(QApplication.focusWidget(), QLineEdit), timeout=3000)
        QTest.keyClicks(QApplication.focusWidget(), "old")
        key(Qt.Key.Key_Return)
        t = next(x for x in aset.all() if x.kind == "text")
        tool_key("select")
        grab(canvas)  # on screen (its label is where a person double-clicks)
        QTest.mouseDClick(canvas, L, NO, qp((c(20, 20)[0] + 8, c(20, 20)[1])))
        editor = visible_editor(canvas)
        assert editor is not None
        qtbot.waitUntil(lambda: QApplication.focusWidget() is editor, timeout=3000)
        assert editor.text() == "old"
        editor.selectAll()
        QTest.keyClicks(editor, "new text")
        key(Qt.Key.Key_Return)
        assert t.text == "new text" and len(aset) == 2
        assert viewer._maximized is None  # the double-click edited, it did not maximise the viewport
        key(Qt.Key.Key_Z, CTRL)
        assert t.text == "old"
        # Esc in the editor: nothing changes
        QTest.mouseDClick(canvas, L, NO, qp((c(20, 20)[0] + 8, c(20, 20)[1])))
        qtbot.waitUntil(lambda: isinstance(QApplication.focusWidget(), QLineEdit), timeout=3000)
        QTest.keyClicks(QApplication.focusWidget(), "zzz")
        key(Qt.Key.Key_Escape)
        assert t.text == "old"

        # the context menu: a right click on the length selects it and offers Delete
        mid = c((a.points[0][0] + a.points[1][0]) / 2, a.points[0][1])
        click(canvas, mid, R)
        menu = viewer._context_menu
        qtbot.waitUntil(menu.isVisible, timeout=3000)
        assert vp.selected == a.uid
        delete = viewer.actions_by_name["delete_measurement"]
        assert delete in menu.actions()
        QTest.mouseClick(menu, L, NO, menu.actionGeometry(delete).center())
        qtbot.waitUntil(lambda: not menu.isVisible(), timeout=3000)
        assert [x.kind for x in aset.all()] == ["text"]
        # the Edit section of the viewer menu has undo and redo with icons; undo brings it back
        sections = dict(viewer.menu_sections("viewer"))
        assert sections["&Edit"][:2] == ["undo", "redo"]
        for name in ("undo", "redo", *(f"tool_{n}" for n in TOOLS)):
            assert not viewer.actions_by_name[name].icon().isNull(), name
        viewer.actions_by_name["undo"].trigger()
        assert len(aset) == 2
        # Shift+Del: every annotation of the series, one step; Ctrl+Z: all back
        canvas.setFocus()
        key(Qt.Key.Key_Delete, SHIFT)
        assert len(aset) == 0 and ink(grab(canvas)).sum() == 0
        key(Qt.Key.Key_Z, CTRL)
        assert len(aset) == 2 and ink(grab(canvas)).sum() > 0
    assert not exceptions, exceptions


def test_escape_cancels_a_half_drawn_annotation(viewer, qtbot):
    canvas = viewer.viewport_widget(0).canvas
    vp = viewer.active_viewport()
    c = vp.image_to_canvas
    tool_key("cobb")
    drag(canvas, c(10, 60), c(25, 60))
    assert vp.draft is not None and len(viewer.annotations) == 0
    assert near(green(grab(canvas)), c(17, 60), 3) > 2  # the first line is shown while drawing
    key(Qt.Key.Key_Escape)
    assert vp.draft is None and green(grab(canvas)).sum() == 0
    tool_key("angle")
    drag(canvas, c(40, 30), c(50, 30))
    key(Qt.Key.Key_Escape)
    assert vp.draft is None and len(viewer.annotations) == 0
    # a text being typed: Esc drops it; scrolling to another slice drops it too
    tool_key("text")
    click(canvas, c(40, 40))
    qtbot.waitUntil(lambda: visible_editor(canvas) is not None and QApplication.focusWidget() is visible_editor(canvas),
                    timeout=3000)  # fmt: skip
    QTest.keyClicks(QApplication.focusWidget(), "gone")
    key(Qt.Key.Key_Escape)
    assert visible_editor(canvas) is None and len(viewer.annotations) == 0 and QApplication.focusWidget() is canvas
    # typing, then a click elsewhere with the text tool: the first text is kept, a second editor opens
    click(canvas, c(60, 40))
    qtbot.waitUntil(lambda: visible_editor(canvas) is not None, timeout=3000)
    first = visible_editor(canvas)
    QTest.keyClicks(first, "kept")
    click(canvas, c(60, 60))
    qtbot.waitUntil(lambda: visible_editor(canvas) not in (None, first), timeout=3000)
    qtbot.wait(20)  # the first editor's focus-out (queued) has run
    assert [a.text for a in viewer.annotations.all()] == ["kept"] and visible_editor(canvas) is not None
    key(Qt.Key.Key_Escape)
    assert visible_editor(canvas) is None and len(viewer.annotations) == 1
    click(canvas, c(40, 40))
    qtbot.waitUntil(lambda: visible_editor(canvas) is not None, timeout=3000)
    QTest.keyClicks(visible_editor(canvas), "gone too")
    index = vp.index
    pos = QPointF(50, 50)  # the mouse wheel on the image: another slice
    QApplication.sendEvent(canvas, QWheelEvent(pos, canvas.mapToGlobal(pos), QPoint(0, 0), QPoint(0, -120),
                                               Qt.MouseButton.NoButton, NO, Qt.ScrollPhase.NoScrollPhase, False))  # fmt: skip
    assert vp.index != index
    assert visible_editor(canvas) is None and [a.text for a in viewer.annotations.all()] == ["kept"]


# ---------------------------------------------------------------- 3. one set, every viewport


def test_the_same_annotation_is_painted_on_every_viewport_showing_the_image(viewer, qtbot):
    key(Qt.Key.Key_2, CTRL)  # layout 1x2; the second viewport is empty (one series), then the same series
    qtbot.waitUntil(lambda: viewer.viewport_widget(1).isVisible(), timeout=3000)
    left, right = viewer.model.viewports[0], viewer.model.viewports[1]
    c0, c1 = viewer.viewport_widget(0).canvas, viewer.viewport_widget(1).canvas
    assert right.volume is None
    click(c1, (40, 40))
    assert viewer.model.active == 1
    strip = viewer.strip
    at = strip.visualItemRect(strip.item_for(left.series_uid)).center()
    QTest.mouseClick(strip.viewport(), L, NO, at)
    QTest.mouseDClick(strip.viewport(), L, NO, at)
    qtbot.waitUntil(lambda: right.frame_info is not None and right.volume.complete, timeout=10000)
    assert right.series_uid == left.series_uid
    assert right.frame_info.key == left.frame_info.key  # the same image (both in the middle, linked)
    key(Qt.Key.Key_Plus)  # another view of the same image: the annotation follows the image, not the canvas
    assert right.view.zoom > 1.1 and left.view.zoom == 1.0
    assert left.annotations is right.annotations is viewer.annotations
    assert green(grab(c1)).sum() == 0
    with qtbot.captureExceptions() as exceptions:
        click(c0, (5, 5))  # the left viewport active, the keys its
        tool_key("rect")
        drag(c0, left.image_to_canvas(40, 40), left.image_to_canvas(56, 52))
        (a,) = viewer.annotations.all()
        img1 = grab(c1)
        g1 = green(img1)
        for corner in [(a.points[0][0], a.points[0][1]), (a.points[1][0], a.points[1][1])]:
            assert near(g1, right.image_to_canvas(*corner), 4) > 3, corner
        # the statistics are the same numbers in both
        assert right.annotation_lines(a) == left.annotation_lines(a)
        # moved in the right one (drag on its edge), it moves in the left one
        before = list(a.points)
        edge = right.image_to_canvas(48, a.points[0][1])
        drag(c1, edge, (edge[0] + 30, edge[1] + 30), steps=5)
        assert a.points != before
        g0 = green(grab(c0))
        assert near(g0, left.image_to_canvas(*a.points[0]), 4) > 3
        assert near(g0, left.image_to_canvas(*before[0]), 2) == 0
        # another slice (Down on the right one; scrolling is linked: both move): on neither
        click(c1, (5, 5))  # a click (no drag) with the rect tool draws nothing
        assert len(viewer.annotations) == 1 and viewer.model.active == 1
        key(Qt.Key.Key_Down)
        assert right.frame_info.key != a.key and left.frame_info.key != a.key
        assert ink(grab(c1)).sum() == 0 and ink(grab(c0)).sum() == 0
        key(Qt.Key.Key_Up)
        assert right.frame_info.key == left.frame_info.key == a.key
        # undo (in either viewport) changes both
        key(Qt.Key.Key_Z, CTRL)
        assert a.points == before
        key(Qt.Key.Key_Z, CTRL)
        assert len(viewer.annotations) == 0
        assert green(grab(c0)).sum() == 0 and green(grab(c1)).sum() == 0
        key(Qt.Key.Key_Y, CTRL)
        assert near(green(grab(c0)), left.image_to_canvas(*before[0]), 4) > 3
        assert near(green(grab(c1)), right.image_to_canvas(*before[0]), 4) > 3
    assert not exceptions, exceptions


def test_shortcuts_have_no_conflicts_and_the_annotation_tools_are_listed():
    seen: dict[str, str] = {}
    for name, keys, _ in SHORTCUTS:
        for k in keys.split(";"):
            norm = QKeySequence(k).toString()
            assert norm not in seen, f"{k} is both {seen[norm]} and {name}"
            seen[norm] = name
    for tool in ("select", "arrow", "text", "cobb", "freehand", "point"):
        assert f"tool_{tool}" in {n for n, _, _ in SHORTCUTS}
    assert seen["Ctrl+Z"] == "undo" and seen["Ctrl+Y"] == seen["Ctrl+Shift+Z"] == "redo"
    # K: prev slice; B: rect ROI; E, G: the segmentation tools (eraser, region growing)
    assert seen.get("K") == "prev_slice" and seen.get("B") == "tool_rect"
    assert seen.get("E") in (None, "tool_seg_eraser") and seen.get("G") in (None, "tool_seg_grow")


# ---------------------------------------------------------------- 4. MPR: lengths where the plane coincides


def test_annotations_are_drawn_on_the_mpr_plane_of_their_image_only(viewer, qtbot):
    """The MPR opened from the viewer draws the study's annotations on the plane that holds them
    (the axial plane through the annotated slice), not on another axial slice nor on the coronal
    plane across them, and follows the set (deleted, undone). Pixels are checked on the plane."""
    canvas = viewer.viewport_widget(0).canvas
    vp = viewer.active_viewport()
    c = vp.image_to_canvas
    tool_key("length")
    drag(canvas, c(30, 30), c(30 + 40 / PX_MM, 30))
    tool_key("rect")
    drag(canvas, c(25.5, 40.5), c(30.5, 45.5))
    length, rect = viewer.annotations.all()
    viewer.actions_by_name["mpr"].trigger()
    mpr = viewer._mpr_windows[-1]
    qtbot.waitUntil(lambda: mpr.volume is not None and len(mpr.slice_canvases) == 3
                    and all(c.isVisible() and c.render_count > 0 for c in mpr.slice_canvases.values()),
                    timeout=20000)  # fmt: skip
    axial, coronal = mpr.slice_canvases["axial"], mpr.slice_canvases["coronal"]
    axial.viewport.set_crosshair_visible(False)  # only the annotations in green-ish colours
    frames = vp.volume.stack.frames
    k = next(i for i, f in enumerate(frames) if f.key == length.key)
    g = frames[k].geometry
    other = frames[k + 1 if k + 1 < len(frames) else k - 1].geometry

    def green_on(widget, patient_point) -> int:
        img = grab(widget)  # renders the pending frame first, then paints it with the annotations
        x, y, _ = widget.viewport.patient_to_display(patient_point)  # device pixels from the bottom left
        return near(green(img), (x, img.shape[0] - 1 - y), 4)

    mid = g.to_patient(30 + 20 / PX_MM, 30)
    corner = g.to_patient(25.5, 43)
    # the cursor on the annotated slice, away from the annotations' rows (the coronal plane misses them)
    mpr.set_cursor(g.to_patient(48.0, 70.0))
    assert green_on(axial, mid) > 3 and green_on(axial, corner) > 3
    assert sorted(axial.shown_annotations()) == sorted([length.uid, rect.uid])
    assert coronal.shown_annotations() == []
    # another axial slice: they are not on it
    mpr.set_cursor(other.to_patient(48.0, 70.0))
    assert green_on(axial, mid) == 0 and axial.shown_annotations() == []
    mpr.set_cursor(g.to_patient(48.0, 70.0))
    assert green_on(axial, mid) > 3
    # deleted in the viewer (Delete on the viewport: the last one, the rectangle), gone from the MPR; Ctrl+Z: back
    viewer.activateWindow()
    canvas.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is canvas, timeout=3000)
    assert vp.frame_info.key == length.key  # the viewer follows the MPR cursor
    key(Qt.Key.Key_Delete)
    assert axial.shown_annotations() == [length.uid] and green_on(axial, corner) == 0
    key(Qt.Key.Key_Z, CTRL)
    assert sorted(axial.shown_annotations()) == sorted([length.uid, rect.uid]) and green_on(axial, corner) > 3
    mpr.close()
