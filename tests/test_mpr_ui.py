"""The MPR / 3D widgets (pytest-qt, offscreen Qt): rendered pixels, linked crosshair by mouse,
oblique rotation, slab and 3D controls, the transfer-function editor, loading from files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QImage, QWheelEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from _viewer_data import mpr_ct_series  # noqa: E402
from hilum.dicom.generator import DEFAULT_SPHERES, DOE, make_study, write_dataset  # noqa: E402
from hilum.dicom.pixels_lut import DisplayTransform, Window  # noqa: E402
from hilum.dicom.volume import Volume, build_volume  # noqa: E402
from hilum.ui.mpr import MPRWidget, TransferFunctionEditor  # noqa: E402

pytestmark = pytest.mark.gui
STUDY = make_study(DOE, accession="MPRUI")


def _series():  # type: ignore[no-untyped-def]
    return mpr_ct_series(STUDY)


@pytest.fixture(scope="module")
def volume() -> Volume:
    return build_volume(_series())


@pytest.fixture
def mpr(qtbot, volume: Volume, tmp_path: Path) -> MPRWidget:  # type: ignore[no-untyped-def]
    w = MPRWidget(volume, data_dir=tmp_path)
    qtbot.addWidget(w)
    w.resize(1000, 700)
    w.show()
    qtbot.waitExposed(w)
    QApplication.processEvents()
    return w


def grab(widget) -> np.ndarray:  # type: ignore[no-untyped-def]
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def widget_pos(canvas, point) -> QPoint:  # type: ignore[no-untyped-def]
    """Widget position of a patient point in a slice canvas (device pixel ratio 1 offscreen), as
    the canvas shows it: its pending frame (at the widget's size) is drawn first, as a person
    sees the plane before clicking on it (planes render in event-loop turns of their own, later
    when another thread holds the VTK lock)."""
    canvas.grab()
    x, y, _ = canvas.viewport.patient_to_display(point)
    return QPoint(int(round(x)), int(round(canvas.height() - 1 - y)))


def wheel(widget, steps: int, modifiers=Qt.KeyboardModifier.NoModifier) -> None:  # type: ignore[no-untyped-def]
    centre = QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(
        centre, widget.mapToGlobal(centre), QPoint(0, 0), QPoint(0, 120 * steps),
        Qt.MouseButton.NoButton, modifiers, Qt.ScrollPhase.NoScrollPhase, False,
    )  # fmt: skip
    QApplication.sendEvent(widget, event)


def test_layout_renders_three_planes_and_3d(qtbot, mpr: MPRWidget) -> None:  # type: ignore[no-untyped-def]
    assert set(mpr.slice_canvases) == {"axial", "coronal", "sagittal"} and mpr.volume_canvas is not None
    qtbot.waitUntil(mpr.volume_canvas.settled, timeout=20000)  # the 3D frame comes from a worker thread
    for view, canvas in mpr.slice_canvases.items():
        img = grab(canvas)
        assert img.shape[:2] == (canvas.height(), canvas.width())
        assert img.mean() > 10, view
        assert canvas.viewport.render_window.GetSize() == (canvas.width(), canvas.height())
    img3d = grab(mpr.volume_canvas)
    assert img3d.max() > 100  # the bone preset shows the spine
    assert "96x96x48" in mpr.status.text()


def test_click_moves_cursor_in_all_planes_and_reports_source_slice(qtbot, mpr: MPRWidget) -> None:  # type: ignore[no-untyped-def]
    axial = mpr.slice_canvases["axial"]
    coronal = mpr.slice_canvases["coronal"]
    grab(coronal)
    before = coronal.render_count
    target = np.array(DEFAULT_SPHERES[0].centre) + (0.0, 0.0, mpr.scene.crosshair.centre[2])
    pos = widget_pos(axial, target)
    with qtbot.waitSignal(mpr.cursorMoved, timeout=2000) as signal:
        QTest.mouseClick(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
    point, sop, frame = signal.args
    np.testing.assert_allclose(point[:2], target[:2], atol=1.5)  # within a screen pixel
    assert sop and frame == 0
    assert mpr.active_view == "axial" and axial.active
    grab(coronal)
    assert coronal.render_count > before  # the other planes followed
    assert abs(mpr.scene["coronal"].plane.to_plane(point)[2]) < 1e-6


def test_wheel_scrolls_and_ctrl_wheel_zooms(mpr: MPRWidget) -> None:
    axial = mpr.slice_canvases["axial"]
    z0 = mpr.scene.crosshair.centre[2]
    wheel(axial, 2)
    assert mpr.scene.crosshair.centre[2] == pytest.approx(z0 + 2 * 1.5)  # smallest voxel size: 1.5 mm slices
    zoom = axial.viewport.zoom
    wheel(axial, 1, Qt.KeyboardModifier.ControlModifier)
    assert axial.viewport.zoom > zoom and mpr.slice_canvases["coronal"].viewport.zoom == 1.0


def test_ctrl_drag_rotates_the_other_planes(mpr: MPRWidget) -> None:
    axial = mpr.slice_canvases["axial"]
    grab(axial)
    c = widget_pos(axial, mpr.scene.crosshair.centre)
    start, end = c + QPoint(80, 0), c + QPoint(80, 80)
    QTest.mousePress(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, start)
    QTest.mouseMove(axial, end)
    QTest.mouseRelease(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, end)
    assert mpr.scene.crosshair.oblique
    u = mpr.scene["coronal"].plane.u
    assert abs(np.degrees(np.arctan2(u[1], u[0]))) == pytest.approx(45.0, abs=1.5)
    mpr.reset()
    assert not mpr.scene.crosshair.oblique


def test_right_drag_windows_one_plane(mpr: MPRWidget) -> None:
    coronal = mpr.slice_canvases["coronal"]
    before = mpr.scene["axial"].window
    QTest.mousePress(coronal, Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier, QPoint(50, 50))
    QTest.mouseMove(coronal, QPoint(150, 50))
    QTest.mouseRelease(coronal, Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier, QPoint(150, 50))
    assert mpr.scene["coronal"].window[1] > before[1]
    assert mpr.scene["axial"].window == before


def test_shift_drag_measures_in_mm(mpr: MPRWidget) -> None:
    sag = mpr.slice_canvases["sagittal"]
    grab(sag)
    QTest.mousePress(sag, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, QPoint(40, 60))
    QTest.mouseMove(sag, QPoint(140, 60))
    QTest.mouseRelease(sag, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ShiftModifier, QPoint(140, 60))
    (m,) = mpr.scene.crosshair.measurements
    assert m.length == pytest.approx(100.0 / sag.viewport.pixels_per_mm, rel=0.02)


def test_slab_controls_apply_to_all_planes(mpr: MPRWidget) -> None:
    mpr.set_slab(20.0, "mip")
    assert all(s.thickness == 20.0 and s.mode == "mip" for s in mpr.scene.crosshair.slabs.values())
    mpr.slab_mode.setCurrentIndex(3)
    assert all(s.mode == "mean" for s in mpr.scene.crosshair.slabs.values())
    mpr.slab_mode.setCurrentIndex(0)
    assert all(s.thickness == 0.0 for s in mpr.scene.crosshair.slabs.values())
    lung = mpr.window_preset.findText("Lung", Qt.MatchFlag.MatchStartsWith)
    assert lung >= 0
    mpr.window_preset.setCurrentIndex(lung)
    mpr.window_preset.activated.emit(lung)
    assert mpr.scene["sagittal"].window == (-600.0, 1500.0)


def test_3d_controls(qtbot, mpr: MPRWidget, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # changes made while the 3D view renders (its first frame may still be on the worker) are
    # queued and made before the next frame: the controls never wait for a frame
    scene = mpr.volume_scene
    assert scene is not None and mpr.volume_canvas is not None
    mpr.vr_preset.setCurrentIndex(mpr.vr_preset.findData("ct-soft-tissue"))
    qtbot.waitUntil(lambda: scene.preset.id == "ct-soft-tissue", timeout=20000)
    mpr.iso_threshold.setValue(500.0)
    mpr.iso_on.setChecked(True)
    qtbot.waitUntil(lambda: "triangles" in mpr.status.text(), timeout=20000)
    assert scene.isosurface_threshold == 500.0
    mpr.cut_plane.setCurrentIndex(1)  # axial plane through the cursor
    qtbot.waitUntil(lambda: scene._cut is not None, timeout=20000)
    np.testing.assert_allclose(scene._cut.GetNormal(), (0.0, 0.0, 1.0))
    mpr.clip_sliders[5].setValue(500)
    qtbot.waitUntil(lambda: scene.clip_box is not None and scene.clip_box[5] == round(0.5 * 47), timeout=20000)
    # dragging in the 3D view rotates at the interactive level of detail, full quality after
    # (frames are rendered on the canvas's worker thread: wait for them as a person would)
    canvas = mpr.volume_canvas
    qtbot.waitUntil(canvas.settled, timeout=20000)
    stills, azimuth = canvas.still_count, scene.renderer.GetActiveCamera().GetPosition()
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(100, 100))
    qtbot.waitUntil(lambda: scene._interacting, timeout=5000)
    frames = canvas.render_count
    QTest.mouseMove(canvas, QPoint(160, 110))
    qtbot.waitUntil(lambda: canvas.render_count > frames, timeout=5000)
    assert canvas.still_count == stills  # the frames while dragging are interactive ones
    assert scene.renderer.GetActiveCamera().GetPosition() != azimuth
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(160, 110))
    qtbot.waitUntil(lambda: canvas.settled() and canvas.still_count > stills, timeout=20000)
    assert not scene._interacting
    out = mpr.capture(tmp_path / "3d.png", view="3d")
    assert out.stat().st_size > 100
    assert mpr.capture(tmp_path / "ax.png").stat().st_size > 100


def test_transfer_function_editor(qtbot, mpr: MPRWidget, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    editor = mpr.show_tf_editor()
    assert isinstance(editor, TransferFunctionEditor)
    editor.resize(300, 150)
    scene = mpr.volume_scene
    assert scene is not None
    n = len(editor.points)
    v, a = editor.points[2]
    handle = editor.to_widget(v, a).toPoint()
    with qtbot.waitSignal(editor.changed, timeout=1000):
        QTest.mousePress(editor, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, handle)
        QTest.mouseMove(editor, handle + QPoint(0, -30))
        QTest.mouseRelease(editor, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, handle + QPoint(0, -30))
    assert editor.points[2][1] > a
    qtbot.waitUntil(lambda: scene.preset.opacity == editor.preset.opacity, timeout=20000)  # applied to the 3D view
    empty = editor.to_widget(editor.value_range[0] + 0.95 * (editor.value_range[1] - editor.value_range[0]), 0.05)
    QTest.mouseDClick(editor, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, empty.toPoint())
    assert len(editor.points) == n + 1
    v, a = editor.points[0]
    QTest.mouseClick(
        editor, Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier, editor.to_widget(v, a).toPoint()
    )
    assert len(editor.points) == n
    assert grab(editor).mean() > 20
    from dataclasses import replace

    path = mpr.save_user_preset(replace(editor.preset, id="user-test", name="Test"))
    assert path == tmp_path / "vr_presets.toml" and "user-test" in path.read_text()
    assert mpr.vr_preset.findData("user-test") >= 0


def test_load_from_files_and_3d_only_layout(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = [write_dataset(ds, tmp_path / f"{i:03d}.dcm") for i, ds in enumerate(_series()[:20])]
    w = MPRWidget(layout="3d")
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.volumeLoaded, timeout=20000):
        w.load(paths)
    assert w.volume is not None and w.volume.size == (96, 96, 20)
    w.resize(500, 400)
    w.show()
    qtbot.waitExposed(w)
    assert w.volume_canvas is not None and w.volume_canvas.isVisible()
    assert not any(c.isVisible() for c in w.slice_canvases.values())
    bad = MPRWidget()
    qtbot.addWidget(bad)
    with qtbot.waitSignal(bad.loadFailed, timeout=5000):
        bad.load([tmp_path / "missing.dcm"])
    assert "Cannot build" in bad.status.text()


def test_viewer_mpr_action_links_cursor_and_stack(qtbot, archive, data_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hilum.ui.viewer.viewer_widget import StudyViewer

    results = archive.ingest_many([write_dataset(ds, tmp_path / f"{i:03d}.dcm") for i, ds in enumerate(_series()[:24])])
    assert all(r.ok for r in results)
    viewer = StudyViewer(archive, STUDY.uid, data_dir=data_dir, executor="thread")
    qtbot.addWidget(viewer)
    viewer.resize(800, 600)
    viewer.show()
    qtbot.waitExposed(viewer)
    with qtbot.waitSignal(viewer.loadFinished, timeout=20000):
        viewer.open()
    vp = viewer.active_viewport()
    assert vp.volume is not None and vp.volume.complete
    assert {"mpr", "volume_3d"} <= set(viewer.actions_by_name)
    viewer.actions_by_name["mpr"].trigger()
    (mpr,) = viewer._mpr_windows
    qtbot.waitUntil(lambda: mpr.volume is not None and len(mpr.slice_canvases) == 3
                    and all(c.isVisible() and c.render_count > 0 for c in mpr.slice_canvases.values()),
                    timeout=20000)  # fmt: skip
    assert mpr.volume.size == (96, 96, 24)  # built from the viewer's decoded stack
    reference = build_volume(_series()[:24])
    np.testing.assert_allclose(mpr.volume.affine, reference.affine, atol=1e-6)
    np.testing.assert_array_equal(mpr.volume.array, reference.array)
    # the 3D cursor drives the 2D stack ...
    target = mpr.volume.voxel_to_world((40, 50, 5))
    mpr.set_cursor(target)
    frame = vp.frame_info
    assert frame is not None and abs(frame.geometry.distance(target)) < 0.76
    # ... and scrolling the 2D stack moves the cursor to that slice
    vp.set_index(15)
    assert abs(vp.geometry.distance(mpr.scene.crosshair.centre)) < 1e-6
    mpr.close()
    viewer.close()


def test_curved_mpr_from_alt_clicks(mpr: MPRWidget) -> None:
    axial = mpr.slice_canvases["axial"]
    grab(axial)
    sphere = DEFAULT_SPHERES[0]
    mpr.scene.crosshair.set_centre(sphere.centre)
    grab(axial)
    for offset in ((0.0, -25.0, 0.0), (0.0, 0.0, 0.0), (30.0, 0.0, 0.0)):
        pos = widget_pos(axial, np.asarray(sphere.centre) + offset)
        QTest.mouseClick(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.AltModifier, pos)
    assert len(mpr.scene.crosshair.path) == 3
    np.testing.assert_allclose(mpr.scene.crosshair.path_normal, (0.0, 0.0, 1.0))
    view = mpr.show_curved()
    assert view is not None and view.image is not None
    assert view.image.shape[0] == pytest.approx(55.0 / 1.5 + 1, abs=2)  # 55 mm of path every 1.5 mm
    assert view.image.max() == 255  # the nodule, white in the header window
    assert "Path 5" in view.info.text()  # about 55 mm
    mpr._clear_path()
    assert view.image is None


# --------------------------------------------------------------------------- pixels on screen follow the logic


def screen(canvas) -> np.ndarray:  # type: ignore[no-untyped-def]
    """What the screen shows in ``canvas``'s area: its top-level window grabbed from the screen
    (``QScreen.grabWindow``; under Xvfb this reads the X server's pixels)."""
    window = canvas.window()
    img = QApplication.primaryScreen().grabWindow(window.winId()).toImage()
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)[:, : w * 3].reshape(h, w, 3)
    at = canvas.mapTo(window, QPoint(0, 0))
    return arr[at.y() : at.y() + canvas.height(), at.x() : at.x() + canvas.width()].copy()


def settled(qtbot, canvas) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The canvas's area on screen once its latest render has been painted there."""
    qtbot.waitUntil(lambda: not canvas._dirty and canvas._image is not None, timeout=5000)
    # the last render reached the screen (inside the 1 px frame an active view draws round itself)
    qtbot.waitUntil(lambda: np.array_equal(screen(canvas)[1:-1, 1:-1], canvas._keep[1:-1, 1:-1]), timeout=5000)
    return screen(canvas)


def on_screen(canvas, shot: np.ndarray, points: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The RGB on screen at the position of each patient point (N, 3) of the canvas's plane."""
    out = []
    for p in points:
        x, y, off = canvas.viewport.patient_to_display(p)
        assert abs(off) < 1e-6
        out.append(shot[canvas.height() - 1 - int(round(y)), int(round(x))])
    return np.asarray(out)


def plane_samples(canvas) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Patient points of every second resliced pixel of the canvas's plane that lie in the volume,
    and the grey levels the view's display gives their resliced values (the logic's answer)."""
    vp = canvas.viewport
    values, plane, spacing = vp.image()
    jj, ii = np.meshgrid(np.arange(values.shape[0])[::2], np.arange(values.shape[1])[::2], indexing="ij")
    points = plane.to_patient(ii * spacing, jj * spacing)
    inside = vp.volume.contains(points)
    return points[inside], vp.display.apply(values[jj, ii][inside])


def assert_screen_shows(canvas, shot: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The grey pixels on screen are the view's display of its resliced values (within one level);
    the few that are not grey are the crosshair lines.  Returns the grey levels on screen."""
    points, expected = plane_samples(canvas)
    rgb = on_screen(canvas, shot, points).astype(int)
    grey = (rgb[:, 0] == rgb[:, 1]) & (rgb[:, 1] == rgb[:, 2])
    assert grey.mean() > 0.9 and grey.sum() > 400
    assert np.abs(rgb[grey, 0] - expected[grey].astype(int)).max() <= 1
    return rgb[:, 0]


def is_line_colour(rgb: np.ndarray, view: str) -> bool:
    from hilum.render.mpr import VIEW_COLOURS

    return bool(np.abs(rgb.astype(float) - 255.0 * np.asarray(VIEW_COLOURS[view])).max() <= 40)


def line_pixels_on_screen(canvas, shot: np.ndarray, other: str) -> list[bool]:  # type: ignore[no-untyped-def]
    """For points along the logic's reference line of ``other`` (away from the cursor), whether the
    screen shows that line's colour there (or at a pixel next to it: the line is 1.5 px wide)."""
    vp = canvas.viewport
    line = vp.logic.reference_lines()[other]
    found = []
    for lam in (-30.0, -18.0, 18.0, 30.0):
        s, t = line.point[0] + lam * line.direction[0], line.point[1] + lam * line.direction[1]
        x, y, _ = vp.patient_to_display(vp.logic.to_patient(s, t))
        r, c = canvas.height() - 1 - int(round(y)), int(round(x))
        found.append(any(is_line_colour(shot[r + dr, c + dc], other) for dr in (-1, 0, 1) for dc in (-1, 0, 1)))
    return found


def test_mouse_drags_change_the_pixels_on_screen_as_the_logic_says(qtbot, mpr: MPRWidget) -> None:  # type: ignore[no-untyped-def]
    axial, coronal = mpr.slice_canvases["axial"], mpr.slice_canvases["coronal"]
    for canvas in (axial, coronal):
        canvas.viewport.actor.InterpolateOff()  # one resliced pixel per block of screen pixels
        canvas.viewport.set_annotations_visible(False)
        canvas.request_render()
    sphere = DEFAULT_SPHERES[0]
    mpr.set_cursor(sphere.centre)
    coronal_before = assert_screen_shows(coronal, settled(qtbot, coronal))

    # 1. right drag in the coronal view: window/level of that view's display, by the 2D viewer's rule
    display = coronal.viewport.display
    start = QPoint(100, 120)
    QTest.mousePress(coronal, Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier, start)
    QTest.mouseMove(coronal, start + QPoint(60, 25))
    QTest.mouseRelease(coronal, Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier, start + QPoint(60, 25))
    assert coronal.viewport.display == display.dragged(60.0, 25.0)  # wider, level up: darker
    assert mpr.slice_canvases["axial"].viewport.display == display  # the other views keep theirs
    after = assert_screen_shows(coronal, settled(qtbot, coronal))
    assert (np.abs(after - coronal_before) > 10).sum() > 50 and after.mean() < coronal_before.mean()

    # 2. left drag from the cursor in the axial view: the cursor follows, the coronal plane moves
    shot = settled(qtbot, axial)
    assert all(line_pixels_on_screen(axial, shot, "coronal")) and all(line_pixels_on_screen(axial, shot, "sagittal"))
    old_line = axial.viewport.logic.reference_lines()["coronal"]
    press = widget_pos(axial, mpr.scene.crosshair.centre)
    target = np.asarray(sphere.centre) + (0.0, 30.0, 0.0)  # 30 mm posterior: off the nodule
    drop = widget_pos(axial, target)
    QTest.mousePress(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, press)
    QTest.mouseMove(axial, (press + drop) / 2)
    QTest.mouseMove(axial, drop)
    QTest.mouseRelease(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, drop)
    np.testing.assert_allclose(mpr.scene.crosshair.centre[:2], target[:2], atol=1.5)  # within a screen pixel
    assert abs(coronal.viewport.plane.to_plane(mpr.scene.crosshair.centre)[2]) < 1e-9
    moved = assert_screen_shows(coronal, settled(qtbot, coronal))  # a new plane, same display
    assert (np.abs(moved - after) > 10).sum() > 50
    shot = settled(qtbot, axial)
    assert all(line_pixels_on_screen(axial, shot, "coronal"))  # the line is where the logic says
    x, y, _ = axial.viewport.patient_to_display(axial.viewport.logic.to_patient(*old_line.point) + (20.0, 0.0, 0.0))
    r, c = axial.height() - 1 - int(round(y)), int(round(x))
    assert not any(is_line_colour(shot[r + d, c], "coronal") for d in (-1, 0, 1))  # ... and no longer where it was

    # 3. Ctrl + left drag sweeping 30 degrees about the cursor turns the other planes
    centre = widget_pos(axial, mpr.scene.crosshair.centre)
    a = centre + QPoint(60, 0)
    b = centre + QPoint(int(round(60 * np.cos(np.radians(30)))), int(round(60 * np.sin(np.radians(30)))))
    QTest.mousePress(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, a)
    QTest.mouseMove(axial, b)
    QTest.mouseRelease(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, b)
    u = mpr.scene["coronal"].plane.u
    assert np.degrees(np.arctan2(u[1], u[0])) == pytest.approx(30.0, abs=1.5)  # clockwise on screen
    line = axial.viewport.logic.reference_lines()["coronal"]
    assert np.degrees(np.arctan2(line.direction[1], line.direction[0])) % 180.0 == pytest.approx(30.0, abs=1.5)
    shot = settled(qtbot, axial)
    assert all(line_pixels_on_screen(axial, shot, "coronal")) and all(line_pixels_on_screen(axial, shot, "sagittal"))
    assert_screen_shows(coronal, settled(qtbot, coronal))  # the oblique coronal plane, still through the display


def test_window_preset_keeps_the_function_and_curved_mpr_follows(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A SIGMOID series: the CT presets of resources/window_presets.toml change centre/width and keep
    SIGMOID; "Header" restores the series' display; the curved MPR shows the same grey levels."""
    series = _series()
    for ds in series:
        ds.VOILUTFunction = "SIGMOID"
    volume = build_volume(series)
    w = MPRWidget(volume, data_dir=tmp_path, with_3d=False)
    qtbot.addWidget(w)
    w.resize(900, 700)
    w.show()
    qtbot.waitExposed(w)
    header = w.scene["axial"].display
    assert header.voi.function == "SIGMOID" and w.window_preset.itemText(0).startswith("Header")
    lung = w.window_preset.findText("Lung", Qt.MatchFlag.MatchStartsWith)
    w.window_preset.setCurrentIndex(lung)
    w.window_preset.activated.emit(lung)
    for view in ("axial", "coronal", "sagittal"):
        assert w.scene[view].display.voi == Window(-600.0, 1500.0, "SIGMOID", header.voi.explanation)
    axial = w.slice_canvases["axial"]
    for offset in ((-30.0, 0.0, 0.0), (30.0, 0.0, 0.0)):
        pos = widget_pos(axial, np.asarray(DEFAULT_SPHERES[0].centre) + offset)
        QTest.mouseClick(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.AltModifier, pos)
    view = w.show_curved()
    assert view is not None and view.image is not None
    values, _ = axial.viewport.curved_image(width=view.width_mm)  # type: ignore[misc]
    np.testing.assert_array_equal(view.image, DisplayTransform(Window(-600.0, 1500.0, "SIGMOID")).apply(values))
    w.window_preset.setCurrentIndex(0)
    w.window_preset.activated.emit(0)
    assert w.scene["axial"].display == header
    np.testing.assert_array_equal(view.image, header.apply(values))  # the curved view followed the display
    w.close()
