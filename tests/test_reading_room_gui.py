"""The reading room as a person uses it (issue 23): every tool chosen by its toolbar button and by
its key, a drag that measures, focus kept across layout changes, overlay text that does not collide,
icons that fit the toolbar, and every viewer action in a menu with its shortcut.

Everything goes through the path a person takes: ``QTest.mouseClick`` on the toolbar button or the
menu entry, ``QTest.keyClick`` on the widget that has the keyboard focus, press/move/release drags.
"""

from __future__ import annotations

import numpy as np
import pytest

from _viewer_data import STUDY, write_ct

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, Qt  # noqa: E402
from PySide6.QtGui import QImage, QKeySequence  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QMenu, QToolButton, QWidget  # noqa: E402

from hilum.ui.viewer.tools import TOOLS  # noqa: E402
from hilum.ui.viewer.viewer_widget import StudyViewer  # noqa: E402

pytestmark = pytest.mark.gui
ROWS = 96
L, R = Qt.MouseButton.LeftButton, Qt.MouseButton.RightButton
CTRL_SHIFT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
TOOL_KEYS = {"length": "L", "angle": "A", "ellipse": "O", "rect": "B", "probe": "Q", "pan": "P", "zoom": "Z",
             "scroll": "S", "window": "W", "select": "X", "cobb": "Shift+A", "freehand": "Shift+O",
             "arrow": "Shift+L", "text": "T", "point": "Shift+Q"}  # fmt: skip


@pytest.fixture
def study(archive, tmp_path):
    """An axial CT (10 slices, pixel spacing 360/96 = 3.75 mm) and a second series."""
    paths = write_ct(tmp_path / "ax", rows=ROWS, slices=10, thickness=5.0)
    paths += write_ct(tmp_path / "ax2", rows=ROWS, slices=6, thickness=5.0, series_number=2,
                      series_description="Second")  # fmt: skip
    assert all(r.ok for r in archive.ingest_many(paths))
    return STUDY.uid


@pytest.fixture
def viewer(qtbot, archive, data_dir, study):
    v = StudyViewer(archive, study, data_dir=data_dir, executor="thread")
    qtbot.addWidget(v)
    v.resize(1000, 700)
    v.show()
    qtbot.waitExposed(v)
    with qtbot.waitSignal(v.loadFinished, timeout=20000):
        v.open()
    v.activateWindow()
    v.viewport_widget(0).canvas.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is v.viewport_widget(0).canvas, timeout=5000)
    yield v
    v.close()


def grab(widget: QWidget) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def press_key(key: Qt.Key, modifier: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier) -> None:
    """A key press as a person makes it: to whatever widget has the keyboard focus."""
    target = QApplication.focusWidget()
    assert target is not None, "no widget has the keyboard focus"
    QTest.keyClick(target, key, modifier)


def drag(widget: QWidget, a: tuple[float, float], b: tuple[float, float], button: Qt.MouseButton = L) -> None:
    pa, pb = QPoint(round(a[0]), round(a[1])), QPoint(round(b[0]), round(b[1]))
    QTest.mousePress(widget, button, Qt.KeyboardModifier.NoModifier, pa)
    for t in (0.25, 0.5, 0.75, 1.0):
        QTest.mouseMove(widget, QPoint(round(a[0] + t * (b[0] - a[0])), round(a[1] + t * (b[1] - a[1]))))
    QTest.mouseRelease(widget, button, Qt.KeyboardModifier.NoModifier, pb)


# ---------------------------------------------------------------- 1. tools by button and by key


def test_every_tool_is_chosen_by_its_button_and_its_key_then_length_measures(viewer, qtbot):
    canvas = viewer.viewport_widget(0).canvas
    vp = viewer.active_viewport()
    with qtbot.captureExceptions() as exceptions:
        for name in TOOLS:
            act = viewer.actions_by_name[f"tool_{name}"]
            button = viewer.toolbar.widgetForAction(act)
            assert isinstance(button, QToolButton) and button.isVisible()
            QTest.mouseClick(button, L)
            assert viewer.tool_name == name and act.isChecked(), name
        canvas.setFocus()
        for name, key in TOOL_KEYS.items():
            combo = QKeySequence(key)[0]
            press_key(combo.key(), combo.keyboardModifiers())
            assert viewer.tool_name == name and viewer.actions_by_name[f"tool_{name}"].isChecked(), name
        assert set(TOOL_KEYS) == set(TOOLS)
        press_key(Qt.Key.Key_L)
        before = vp.current_window()
        sp = vp.frame_info.spacing
        assert abs(sp.column - 360.0 / ROWS) < 1e-9
        a = vp.image_to_canvas(20, 40)
        b = vp.image_to_canvas(20 + 50.0 / sp.column, 40)
        drag(canvas, a, b)
    assert not exceptions, exceptions
    (m,) = vp.measurements  # exactly one measurement, and no window/level change
    assert vp.current_window() == before
    # 50 mm apart, within the rounding of the two points to whole canvas pixels
    px_mm = sp.column / (vp.image_to_canvas(1, 0)[0] - vp.image_to_canvas(0, 0)[0])
    assert abs(vp.annotation_values(m)["length"] - 50.0) <= 1.5 * px_mm
    assert vp.annotation_lines(m)[0].endswith(" mm")
    img = grab(canvas)
    g = img.astype(int)
    green = (g[..., 1] > 110) & (g[..., 1] - g[..., 0] > 60) & (g[..., 1] - g[..., 2] > 60)
    assert green.sum() > 60  # the line (about 90 canvas pixels long) is drawn


def test_every_checkable_action_toggles_by_button_and_key(viewer, qtbot):
    """The other checkable actions (links, reference lines) take the flag their button or key gives."""
    model = viewer.model
    flags = {"link_scroll": ("link_scroll", Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier),
             "link_window": ("link_window", Qt.Key.Key_W, CTRL_SHIFT),
             "link_zoom": ("link_zoom", Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier),
             "reference_lines": ("show_reference_lines", Qt.Key.Key_R, CTRL_SHIFT)}  # fmt: skip
    with qtbot.captureExceptions() as exceptions:
        for name, (attr, key, mod) in flags.items():
            act = viewer.actions_by_name[name]
            assert act.isCheckable()
            start = getattr(model, attr)
            QTest.mouseClick(viewer.toolbar.widgetForAction(act), L)
            assert getattr(model, attr) is (not start) and act.isChecked() is (not start), name
            viewer.viewport_widget(0).canvas.setFocus()
            press_key(key, mod)
            assert getattr(model, attr) is start and act.isChecked() is start, name
    assert not exceptions, exceptions


# ---------------------------------------------------------------- 2. the keyboard focus stays on the viewport


@pytest.fixture
def workstation(qtbot, make_main_window, data_dir, tmp_path):
    """The real main window with the viewer installed, a study open in a viewer tab, focus on its canvas."""
    from hilum.archive import Archive
    from hilum.config import load_config

    archive = Archive(data_dir)
    paths = write_ct(tmp_path / "ax", rows=ROWS, slices=10, thickness=5.0)
    paths += write_ct(tmp_path / "ax2", rows=ROWS, slices=6, thickness=5.0, series_number=2,
                      series_description="Second")  # fmt: skip
    assert all(r.ok for r in archive.ingest_many(paths))
    window = make_main_window(load_config(data_dir), archive, viewer=True)
    window.resize(1900, 1000)
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    qtbot.waitActive(window)
    window.open_study(STUDY.uid)  # what Enter / a double-click in the study browser does
    viewer = window._test_viewer.viewer_for(STUDY.uid)
    assert isinstance(viewer, StudyViewer) and window.tabs.currentWidget() is viewer
    qtbot.waitUntil(lambda: viewer.active_viewport().volume is not None and viewer.active_viewport().volume.complete
                    and not viewer.is_loading(viewer.active_viewport().series_uid), timeout=20000)  # fmt: skip
    return window, viewer


def active_canvas(viewer: StudyViewer) -> QWidget:
    return viewer.viewport_widget(viewer.model.active).canvas


def test_layout_keys_keep_the_focus_on_the_active_viewport(workstation, qtbot):
    window, viewer = workstation
    qtbot.waitUntil(lambda: QApplication.focusWidget() is active_canvas(viewer), timeout=5000)
    press_key(Qt.Key.Key_4, Qt.KeyboardModifier.ControlModifier)
    assert viewer.model.layout.name == "2x2"
    assert QApplication.focusWidget() is active_canvas(viewer)
    press_key(Qt.Key.Key_2, Qt.KeyboardModifier.ControlModifier)
    assert viewer.model.layout.name == "1x2"
    assert QApplication.focusWidget() is active_canvas(viewer)
    vp = viewer.active_viewport()
    canvas = active_canvas(viewer)
    qtbot.waitUntil(lambda: canvas.image_paint_count > 0, timeout=5000)
    index, before = vp.index, grab(canvas)
    press_key(Qt.Key.Key_Down)
    assert vp.index != index
    assert not np.array_equal(before, grab(canvas))
    # maximise one viewport (double-click) and restore it: the keys still reach the viewport
    for _ in range(2):
        QTest.mouseDClick(active_canvas(viewer), L, Qt.KeyboardModifier.NoModifier, QPoint(60, 60))
        assert QApplication.focusWidget() is active_canvas(viewer)
        index = vp.index
        press_key(Qt.Key.Key_Up)
        assert vp.index != index
    # the window maximised and restored: the same
    for show in (window.showMaximized, window.showNormal):
        window.tabs.tabBar().setFocus()  # where the focus went before the fix
        show()
        qtbot.waitUntil(lambda: QApplication.focusWidget() is active_canvas(viewer), timeout=5000)
        index = vp.index
        press_key(Qt.Key.Key_Down)
        assert vp.index != index


# ---------------------------------------------------------------- 4. icons, menus, right-click menu, shortcuts


def open_menubar_menu(qtbot, window, menu: QMenu) -> None:
    """Click the menu's title in the menu bar, as a person does, and wait for it to open."""
    bar = window.menuBar()
    rect = bar.actionGeometry(menu.menuAction())
    assert rect.isValid() and rect.width() > 0
    QTest.mouseClick(bar, L, Qt.KeyboardModifier.NoModifier, rect.center())
    qtbot.waitUntil(menu.isVisible, timeout=3000)


def click_entry(qtbot, menu: QMenu, action) -> None:  # type: ignore[no-untyped-def]
    """Click an entry of an open menu (opens a submenu, or triggers the action)."""
    assert menu.isVisible()
    rect = menu.actionGeometry(action)
    assert rect.isValid() and rect.height() > 0, action.text()
    QTest.mouseMove(menu, rect.center())
    QTest.mouseClick(menu, L, Qt.KeyboardModifier.NoModifier, rect.center())
    if action.menu() is not None:
        qtbot.waitUntil(action.menu().isVisible, timeout=3000)


def entry(menu: QMenu, name: str = "", title: str = ""):  # type: ignore[no-untyped-def]
    for a in menu.actions():
        if (name and a.objectName() == name) or (title and a.menu() is not None and a.text() == title):
            return a
    raise AssertionError(f"no entry {name or title!r} in {[a.text() for a in menu.actions()]}")


def walk(menu: QMenu) -> list:  # type: ignore[type-arg]
    out = []
    for a in menu.actions():
        out.append(a)
        if a.menu() is not None:
            out += walk(a.menu())
    return out


def close_popups() -> None:
    while (popup := QApplication.activePopupWidget()) is not None:
        popup.close()


def test_toolbar_has_icons_and_fits_in_1900_px(workstation):
    window, viewer = workstation
    assert window.width() == 1900
    bar = viewer.toolbar
    hidden = [a.objectName() or a.text() for a in bar.actions() if not bar.widgetForAction(a).isVisible()]
    assert not hidden, f"behind the toolbar's extension button: {hidden}"
    extension = bar.findChild(QToolButton, "qt_toolbar_ext_button")
    assert extension is None or not extension.isVisible()
    names = []
    for act in bar.actions():
        w = bar.widgetForAction(act)
        if act.isSeparator() or not isinstance(w, QToolButton):
            continue
        names.append(act.objectName() or w.objectName())
        assert not w.icon().isNull() or not act.icon().isNull(), act.objectName()
        assert w.toolButtonStyle() == Qt.ToolButtonStyle.ToolButtonIconOnly
    for needed in ("mpr", "volume_3d", "export_view", "export_cine", "link_scroll", "link_window", "link_zoom",
                   "reference_lines", "layoutButton", "presetButton", *(f"tool_{n}" for n in TOOLS)):  # fmt: skip
        assert needed in names, needed
    # a tooltip names the shortcut
    assert viewer.actions_by_name["tool_length"].toolTip().endswith("(L)")
    assert viewer.actions_by_name["mpr"].toolTip().endswith("(M)")
    assert viewer.actions_by_name["next_slice"].toolTip().endswith("(Down or J)")


def test_every_shortcut_is_in_a_menu_with_its_keys(workstation, qtbot):
    from hilum.ui.viewer.shortcuts import SHORTCUTS

    window, viewer = workstation
    in_menus: dict[str, list[str]] = {}
    for menu in (window.viewer_menu, window.tools_menu):
        open_menubar_menu(qtbot, window, menu)
        for a in walk(menu):
            if a.objectName():
                in_menus[a.objectName()] = [k.toString() for k in a.shortcuts()]
        close_popups()
    for name, keys, _text in SHORTCUTS:
        assert name in in_menus, f"{name} is in no menu"
        expected = [QKeySequence(k).toString() for k in keys.split(";")]
        assert in_menus[name] == expected, name
    # every viewer action is in a menu, even those without a key
    assert set(viewer.actions_by_name) <= set(in_menus)
    # one key, one action: no shortcut of the viewer is bound twice, nor clashes with the window's
    seen: dict[str, str] = {}
    for name, act in viewer.actions_by_name.items():
        for k in act.shortcuts():
            assert k.toString() not in seen, f"{k.toString()} is {seen.get(k.toString())} and {name}"
            seen[k.toString()] = name
    for act in window.actions():
        for k in act.shortcuts():
            assert k.toString() not in seen, f"{k.toString()} is {seen[k.toString()]} and the window's {act.text()}"


def test_menus_act_on_the_current_viewer_and_are_off_elsewhere(workstation, qtbot):
    window, viewer = workstation
    vp = viewer.active_viewport()
    canvas = active_canvas(viewer)
    before = grab(canvas)
    with qtbot.captureExceptions() as exceptions:
        open_menubar_menu(qtbot, window, window.viewer_menu)
        image = entry(window.viewer_menu, title="&Image")
        click_entry(qtbot, window.viewer_menu, image)
        click_entry(qtbot, image.menu(), entry(image.menu(), "invert"))
        assert vp.invert
        assert not window.viewer_menu.isVisible()  # the menus closed
        assert not np.array_equal(before, grab(canvas))
        open_menubar_menu(qtbot, window, window.tools_menu)
        click_entry(qtbot, window.tools_menu, entry(window.tools_menu, "tool_length"))
        assert viewer.tool_name == "length" and viewer.actions_by_name["tool_length"].isChecked()
        open_menubar_menu(qtbot, window, window.viewer_menu)
        layout = entry(window.viewer_menu, title="&Layout")
        click_entry(qtbot, window.viewer_menu, layout)
        click_entry(qtbot, layout.menu(), entry(layout.menu(), "layout_4"))
        assert viewer.model.layout.name == "2x2"
        assert QApplication.focusWidget() is active_canvas(viewer)
    assert not exceptions, exceptions
    press_key(Qt.Key.Key_B, Qt.KeyboardModifier.ControlModifier)  # the study browser
    assert window.tabs.currentWidget() is window.browser_page
    assert not window.viewer_menu.menuAction().isEnabled() and not window.tools_menu.menuAction().isEnabled()
    window.tabs.setCurrentWidget(viewer)
    assert window.viewer_menu.menuAction().isEnabled() and window.tools_menu.menuAction().isEnabled()
    assert QApplication.focusWidget() is active_canvas(viewer)


def test_right_click_opens_the_viewport_menu_and_right_drag_still_windows(viewer, qtbot):
    canvas = viewer.viewport_widget(0).canvas
    vp = viewer.active_viewport()
    window_before = vp.current_window()
    with qtbot.captureExceptions() as exceptions:
        QTest.mouseClick(canvas, R, Qt.KeyboardModifier.NoModifier, QPoint(200, 200))
        qtbot.waitUntil(lambda: isinstance(QApplication.activePopupWidget(), QMenu), timeout=3000)
        menu = QApplication.activePopupWidget()
        assert menu.objectName() == "viewportContextMenu"
        assert vp.current_window() == window_before  # a click is no window/level drag
        names = {a.objectName() for a in walk(menu)}
        assert {"tool_length", "mpr", "volume_3d", "invert", "reset", "export_view", "layout_4"} <= names
        click_entry(qtbot, menu, entry(menu, "tool_angle"))
        assert viewer.tool_name == "angle"
        assert QApplication.activePopupWidget() is None
        # a right drag windows and opens no menu
        before = grab(canvas)
        drag(canvas, (300, 300), (380, 260), R)
        assert QApplication.activePopupWidget() is None
        w = vp.current_window()
        assert w.width > window_before.width and w.center < window_before.center
        assert not np.array_equal(before, grab(canvas))
        # from the keyboard: the Menu key, then Escape closes it; Shift+F10 too
        for key, mod in (
            (Qt.Key.Key_Menu, Qt.KeyboardModifier.NoModifier),
            (Qt.Key.Key_F10, Qt.KeyboardModifier.ShiftModifier),
        ):
            press_key(key, mod)
            qtbot.waitUntil(lambda: isinstance(QApplication.activePopupWidget(), QMenu), timeout=3000)
            QTest.keyClick(QApplication.activePopupWidget(), Qt.Key.Key_Escape)
            qtbot.waitUntil(lambda: QApplication.activePopupWidget() is None, timeout=3000)
            assert QApplication.focusWidget() is canvas
    assert not exceptions, exceptions


# ---------------------------------------------------------------- 3. overlay text


def settled_grab(qtbot, canvas) -> np.ndarray:  # type: ignore[no-untyped-def]
    qtbot.waitUntil(lambda: not canvas._fast, timeout=3000)  # the smoothed rendering, not the scrolling one
    return grab(canvas)


def text_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).max(axis=2) > 40


def test_status_text_never_covers_the_letters_or_the_corner_text(viewer, qtbot):
    from hilum.ui.viewer.overlay import corner_texts

    for layout in ("1x1", "2x2"):
        viewer.set_layout(layout)
        vp = viewer.active_viewport()
        canvas = active_canvas(viewer)
        qtbot.waitUntil(lambda: canvas.image_paint_count > 0, timeout=5000)  # noqa: B023
        assert vp.edge_letters().get("top") == "A"
        assert corner_texts(canvas.overlay, vp.volume.header, vp.overlay_values())["top_left"]
        for status in ("Loading…", "Loading 3/10", "Loading a long series: 1234/5678 images"):
            vp.status = status  # what the viewer sets while a series loads
            with_status = settled_grab(qtbot, canvas)
            vp.status = ""
            plain = settled_grab(qtbot, canvas)
            vp.overlay_enabled = False
            bare = settled_grab(qtbot, canvas)
            vp.overlay_enabled = True
            status_px = text_pixels(with_status, plain)
            overlay_px = text_pixels(plain, bare)  # letters, corner text, scale bar
            assert status_px.sum() > 20 and overlay_px.sum() > 200
            grown = overlay_px.copy()  # a pixel of air around every glyph
            grown[1:] |= overlay_px[:-1]
            grown[:-1] |= overlay_px[1:]
            grown[:, 1:] |= overlay_px[:, :-1]
            grown[:, :-1] |= overlay_px[:, 1:]
            assert not (status_px & grown).any(), (layout, status)


def test_window_level_after_a_drag_reads_in_whole_units(viewer, qtbot):
    from hilum.ui.viewer.overlay import corner_texts

    canvas = viewer.viewport_widget(0).canvas
    vp = viewer.active_viewport()
    drag(canvas, (300, 300), (373, 247), R)
    w = vp.current_window()
    assert w.width != round(w.width) or w.center != round(w.center)  # the drag made fractions
    lines = corner_texts(canvas.overlay, vp.volume.header, vp.overlay_values())["bottom_right"]
    line = next(t for t in lines if t.startswith("W "))
    assert line.split()[:4] == ["W", str(round(w.width)), "L", str(round(w.center))], line
    # narrow windows keep the decimals that tell their values apart (SUV, parametric maps)
    from hilum.ui.viewer.state import window_text

    assert window_text(2.345, 4.567) == ("2.35", "4.57") or window_text(2.345, 4.567) == ("2.34", "4.57")
    assert window_text(12.25, 57.3)[1] == "57.3"
    assert window_text(-0.2, 350.0) == ("0", "350")
    vp.set_window(0.5, 3.25)
    lines = corner_texts(canvas.overlay, vp.volume.header, vp.overlay_values())["bottom_right"]
    assert next(t for t in lines if t.startswith("W ")).split()[:4] == ["W", "3.25", "L", "0.5"]


def test_series_strip_labels_stay_put_when_thumbnails_arrive(qtbot, archive, data_dir, tmp_path):
    """A wide thumbnail (a 64 × 128 series) used to shrink its item without a new layout: its label
    was drawn where it was and again where it moved to."""
    from hilum.dicom.generator import iter_ct_series, write_dataset
    from hilum.dicom.generator.demo import instance_path

    paths = write_ct(tmp_path / "ax", rows=ROWS, slices=4)
    for ds in iter_ct_series(STUDY, rows=64, columns=128, slices=3, slice_thickness=5.0, fov=360.0,
                             noise_sigma=0.0, series_number=2, series_description="Wide field"):  # fmt: skip
        paths.append(write_dataset(ds, instance_path(tmp_path / "wide", ds)))
    paths += write_ct(tmp_path / "ax3", rows=ROWS, slices=2, series_number=3, series_description="Third series")
    assert all(r.ok for r in archive.ingest_many(paths))
    v = StudyViewer(archive, STUDY.uid, data_dir=data_dir, executor="thread")
    qtbot.addWidget(v)
    v.resize(900, 700)
    v.show()
    qtbot.waitExposed(v)
    strip = v.strip
    import threading

    hold = threading.Event()
    strip._pool.submit(hold.wait, 30)  # the thumbnail thread is busy: the blank icons show first
    with qtbot.waitSignal(v.loadFinished, timeout=20000):
        v.open()
    assert strip.count() == 3
    before = [strip.visualItemRect(strip.item(i)) for i in range(strip.count())]
    first = grab(strip.viewport())
    hold.set()
    blank = [strip.item(i).icon().cacheKey() for i in range(strip.count())]
    qtbot.waitUntil(lambda: all(strip.item(i).icon().cacheKey() != blank[i] for i in range(strip.count())),
                    timeout=10000)  # fmt: skip
    strip.doItemsLayout()  # what the list does on its next layout
    after = [strip.visualItemRect(strip.item(i)) for i in range(strip.count())]
    assert after == before
    for i in range(strip.count()):
        assert strip.item(i).icon().availableSizes() == [strip.iconSize()], i
    second = grab(strip.viewport())
    # the labels (below each icon) are the same pixels before and after the thumbnails
    for rect in before:
        label = (slice(rect.top() + strip.iconSize().height() + 4, rect.bottom()), slice(rect.left(), rect.right()))
        assert np.array_equal(first[label], second[label])
    v.close()
