"""3D and curved MPR as a reader uses them (issue 23, item 7), under Xvfb with real widgets:

* the curved MPR result opens in the 2D viewer's viewport: fitted to the pane, left drag =
  window/level, Ctrl + wheel zooms, the Length tool measures in mm;
* the 3D camera fits the volume to the pane on open (its box fills ~90% of the limiting
  dimension; VTK's bounding-sphere fit left a CT at about a quarter of it);
* the 3D-only window (the viewer's "3D" button) shows no MPR-only controls;
* a window resized while the volume builds renders at the new size, fitted (no clipping).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QImage, QWheelEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QWidget  # noqa: E402

from _viewer_data import mpr_ct_series  # noqa: E402
from hilum.dicom.generator import DEFAULT_SPHERES, DOE, make_study, write_dataset  # noqa: E402
from hilum.dicom.volume import Volume, build_volume  # noqa: E402
from hilum.ui.mpr import MPRWidget  # noqa: E402

pytestmark = pytest.mark.gui
STUDY = make_study(DOE, accession="MPR3D")


def _series():  # type: ignore[no-untyped-def]
    return mpr_ct_series(STUDY)


@pytest.fixture(scope="module")
def ct() -> Volume:
    return build_volume(_series())


@pytest.fixture(scope="module")
def slab() -> Volume:
    """A CT-shaped block of bone (200 x 200 x 90 mm, wider than deep like a chest CT) that the
    bone preset shows opaque to its edges, so the rendered silhouette is the volume's box (noisy,
    so that shading has gradients to light)."""
    arr = np.random.default_rng(0).integers(900, 1600, size=(30, 50, 50)).astype(np.int16)
    return Volume.from_array(arr, spacing=(4.0, 4.0, 3.0), origin=(-100.0, -100.0, -45.0), modality="CT")


def image_of(qimage: QImage) -> np.ndarray:
    img = qimage.convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    return (
        np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h)
        .reshape(h, bpl)[:, : w * 3]
        .reshape(h, w, 3)
        .copy()
    )


def grab(widget: QWidget) -> np.ndarray:
    return image_of(widget.grab().toImage())


def screen(widget: QWidget) -> np.ndarray:
    """What the X server shows in ``widget``'s area (its window grabbed from the screen)."""
    widget.repaint()  # the last frame that arrived, painted now
    QApplication.processEvents()
    window = widget.window()
    arr = image_of(QApplication.primaryScreen().grabWindow(window.winId()).toImage())
    at = widget.mapTo(window, QPoint(0, 0))
    return arr[at.y() : at.y() + widget.height(), at.x() : at.x() + widget.width()]


def lit_box(rgb: np.ndarray, threshold: int = 20) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of the pixels brighter than ``threshold``."""
    mask = rgb.max(axis=2) > threshold
    ys, xs = np.nonzero(mask)
    assert len(xs), "nothing rendered"
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def click_action(toolbar, text: str) -> None:  # type: ignore[no-untyped-def]
    """Click the toolbar button of the action called ``text``, as a person would."""
    (action,) = [a for a in toolbar.actions() if a.text() == text]
    button = toolbar.widgetForAction(action)
    assert button is not None and button.isVisible(), f"{text!r} is not on screen"
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)


def wheel(widget: QWidget, steps: int, modifiers=Qt.KeyboardModifier.NoModifier) -> None:  # type: ignore[no-untyped-def]
    centre = QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(
        centre, widget.mapToGlobal(centre), QPoint(0, 0), QPoint(0, 120 * steps),
        Qt.MouseButton.NoButton, modifiers, Qt.ScrollPhase.NoScrollPhase, False,
    )  # fmt: skip
    QApplication.sendEvent(widget, event)


def drag(widget: QWidget, start: QPoint, end: QPoint, button=Qt.MouseButton.LeftButton) -> None:  # type: ignore[no-untyped-def]
    QTest.mousePress(widget, button, Qt.KeyboardModifier.NoModifier, start)
    for t in (0.25, 0.5, 0.75, 1.0):
        QTest.mouseMove(widget, start + (end - start) * t)
    QTest.mouseRelease(widget, button, Qt.KeyboardModifier.NoModifier, end)


def open_3d(qtbot, volume: Volume, size: tuple[int, int] = (900, 600)) -> MPRWidget:  # type: ignore[no-untyped-def]
    w = MPRWidget(volume, layout="3d")
    qtbot.addWidget(w)
    w.resize(*size)
    w.show()
    qtbot.waitExposed(w)
    assert w.volume_canvas is not None
    qtbot.waitUntil(w.volume_canvas.settled, timeout=30000)
    return w


# --------------------------------------------------------------------------- curved MPR


def test_curved_mpr_opens_in_the_viewer_viewport(qtbot, ct: Volume) -> None:  # type: ignore[no-untyped-def]
    mpr = MPRWidget(ct, with_3d=False)
    qtbot.addWidget(mpr)
    mpr.resize(1000, 700)
    mpr.show()
    qtbot.waitExposed(mpr)
    axial = mpr.slice_canvases["axial"]
    grab(axial)
    sphere = np.asarray(DEFAULT_SPHERES[0].centre)
    mpr.set_cursor(sphere)
    grab(axial)
    for offset in ((-30.0, 0.0, 0.0), (0.0, 10.0, 0.0), (30.0, 0.0, 0.0)):  # Alt + clicks draw the path
        x, y, _ = axial.viewport.patient_to_display(sphere + offset)
        pos = QPoint(int(round(x)), int(round(axial.height() - 1 - y)))
        QTest.mouseClick(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.AltModifier, pos)
    click_action(mpr.toolbar, "Curved MPR…")
    view = mpr.curved
    assert view is not None and view.isVisible()
    qtbot.waitExposed(view)
    canvas, state = view.canvas, view.state
    f = state.frame_info
    assert f is not None and f.spacing.calibrated and state.modality == "CT"

    # fitted to the pane: the image's limiting side spans the canvas, not a small unscaled copy
    m = state.matrix((canvas.width(), canvas.height()))
    corners = np.array([m @ (x, y, 1.0) for x in (-0.5, f.columns - 0.5) for y in (-0.5, f.rows - 0.5)])
    extent = corners.max(axis=0)[:2] - corners.min(axis=0)[:2]
    assert max(extent[0] / canvas.width(), extent[1] / canvas.height()) == pytest.approx(1.0, abs=0.01)
    x0, y0, x1, y1 = lit_box(grab(canvas))
    assert (x1 - x0) > 0.9 * extent[0] or (y1 - y0) > 0.9 * extent[1]

    # left drag: window/level (the default left tool), the pixels change
    before = grab(canvas)
    window0 = state.current_window()
    c = QPoint(canvas.width() // 2, canvas.height() // 2)
    drag(canvas, c, c + QPoint(120, 60))
    assert state.current_window() != window0
    after = grab(canvas)
    assert np.abs(after.astype(int) - before.astype(int)).max() > 30

    # Ctrl + wheel zooms about the pointer; the image grows on screen
    zoom0 = state.view.zoom
    wheel(canvas, 2, Qt.KeyboardModifier.ControlModifier)
    assert state.view.zoom > zoom0 * 1.2
    m2 = state.matrix((canvas.width(), canvas.height()))
    assert m2[0, 0] > m[0, 0] * 1.2

    # middle drag pans; "Fit" puts it back; the Length tool measures in mm (pixel spacing = the reformat's step)
    drag(canvas, c, c + QPoint(40, -30), Qt.MouseButton.MiddleButton)
    assert state.view.pan_x != 0.0 and state.view.pan_y != 0.0
    click_action(view.toolbar, "Fit")
    assert (state.view.zoom, state.view.pan_x, state.view.pan_y) == (1.0, 0.0, 0.0)
    click_action(view.toolbar, "Length")
    drag(canvas, c - QPoint(100, 0), c + QPoint(100, 0))
    (measurement,) = state.measurements
    values = state.annotation_values(measurement)
    mm_per_px = state.mm_per_canvas_pixel("x")
    assert values["unit"] == "mm" and mm_per_px is not None
    assert values["length"] == pytest.approx(200 * mm_per_px, rel=0.02)
    # the path's true arc length is the image height: about 63 mm at 1.5 mm per row
    assert f.rows * f.spacing.row == pytest.approx(63.0, abs=4.0)
    # "Clear path": the view says how to draw one instead of showing an image
    click_action(mpr.toolbar, "Clear path")
    assert view.image is None and view.hint.isVisible() and not canvas.isVisible()
    view.close()
    mpr.close()


# --------------------------------------------------------------------------- 3D camera fit


def test_3d_camera_fits_the_volume_to_the_pane(qtbot, slab: Volume) -> None:  # type: ignore[no-untyped-def]
    w = open_3d(qtbot, slab, (1000, 650))
    canvas = w.volume_canvas
    assert canvas is not None
    assert canvas.still_count >= 1 and canvas.render_count > canvas.still_count  # a quick preview came first
    x0, y0, x1, y1 = lit_box(screen(canvas))
    fill = max((x1 - x0 + 1) / canvas.width(), (y1 - y0 + 1) / canvas.height())
    assert 0.85 <= fill <= 0.95, fill
    assert abs((x0 + x1) / 2 - canvas.width() / 2) < 0.05 * canvas.width()  # centred
    assert abs((y0 + y1) / 2 - canvas.height() / 2) < 0.05 * canvas.height()
    # a narrower pane keeps the fit (the camera was not moved yet) ...
    w.resize(600, 800)
    qtbot.waitUntil(lambda: canvas.settled() and canvas._image is not None and canvas._image.width() == canvas.width(),
                    timeout=30000)  # fmt: skip
    x0, y0, x1, y1 = lit_box(screen(canvas))
    fill = max((x1 - x0 + 1) / canvas.width(), (y1 - y0 + 1) / canvas.height())
    assert 0.85 <= fill <= 0.95, fill
    # ... and the wheel zoom is the user's: no refit on the next resize
    wheel(canvas, 2)
    qtbot.waitUntil(canvas.settled, timeout=30000)
    w.resize(620, 800)
    qtbot.waitUntil(lambda: canvas.settled() and canvas._image is not None and canvas._image.width() == canvas.width(),
                    timeout=30000)  # fmt: skip
    x0, y0, x1, y1 = lit_box(screen(canvas))
    assert (x1 - x0 + 1) / canvas.width() > 0.95
    w.close()


# --------------------------------------------------------------------------- 3D-only window


def test_3d_window_from_the_viewer_shows_only_3d_controls(qtbot, archive, data_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hilum.ui.viewer.viewer_widget import StudyViewer

    results = archive.ingest_many([write_dataset(ds, tmp_path / f"{i:03d}.dcm") for i, ds in enumerate(_series()[:24])])
    assert all(r.ok for r in results)
    viewer = StudyViewer(archive, STUDY.uid, data_dir=data_dir, executor="thread")
    qtbot.addWidget(viewer)
    viewer.resize(1400, 800)
    viewer.show()
    qtbot.waitExposed(viewer)
    with qtbot.waitSignal(viewer.loadFinished, timeout=20000):
        viewer.open()
    button = viewer.toolbar.widgetForAction(viewer.actions_by_name["volume_3d"])
    assert button is not None
    if not button.isVisible():  # the toolbar overflowed: the action is still one click away
        viewer.actions_by_name["volume_3d"].trigger()
    else:
        QTest.mouseClick(button, Qt.MouseButton.LeftButton)
    w = viewer._mpr_windows[-1]
    qtbot.waitUntil(lambda: w.volume_canvas is not None, timeout=20000)
    qtbot.waitExposed(w)
    assert w.volume_canvas is not None
    qtbot.waitUntil(w.volume_canvas.settled, timeout=30000)
    assert w.volume_canvas.isVisible()
    assert not any(c.isVisible() for c in w.slice_canvases.values())
    # MPR-only controls are not shown
    for widget in (w.slab_mode, w.slab_thickness, w.window_preset, w.cut_plane, w.cut_flip):
        assert not widget.isVisible(), widget.objectName()
    visible = {a.text() for a in w.toolbar.actions() if a.isVisible() and a.text()}
    assert not visible & {"Reset", "Crosshair", "Annotations", "Clear rulers", "Curved MPR…", "Clear path"}, visible
    assert "Capture…" in visible
    # the 3D controls are
    for widget in (w.vr_preset, w.shading, w.iso_on, w.iso_threshold, *w.clip_sliders):
        assert widget.isVisible(), widget.objectName()
    tf = w.panel.findChild(QWidget, "tf-button")
    assert tf is not None and tf.isVisible()
    QTest.mouseClick(tf, Qt.MouseButton.LeftButton)
    assert w.tf_editor is not None and w.tf_editor.isVisible()
    # no MPR cursor sphere in a view without planes
    assert w.volume_scene is not None
    assert w.volume_scene._cursor is None or not w.volume_scene._cursor[1].GetVisibility()
    worker = w.volume_canvas._thread
    assert worker.is_alive()
    w.close()
    assert not worker.is_alive()  # closing the window ends its render thread
    viewer.close()


# --------------------------------------------------------------------------- resize while loading


def test_resize_while_the_volume_builds_renders_at_the_new_size(qtbot, slab: Volume) -> None:  # type: ignore[no-untyped-def]
    gate = threading.Event()

    def build() -> Volume:
        assert gate.wait(30)
        return slab

    w = MPRWidget(layout="3d")
    qtbot.addWidget(w)
    w.resize(500, 400)
    w.show()
    qtbot.waitExposed(w)
    w.build_async(build)
    QApplication.processEvents()
    w.resize(1200, 850)  # the reader enlarges the window while the volume is still being built
    QApplication.processEvents()
    with qtbot.waitSignal(w.volumeLoaded, timeout=30000):
        gate.set()
    canvas = w.volume_canvas
    assert canvas is not None
    qtbot.waitUntil(canvas.settled, timeout=30000)
    assert canvas.width() > 800 and canvas.height() > 600
    assert canvas._image is not None and (canvas._image.width(), canvas._image.height()) == (
        canvas.width(),
        canvas.height(),
    )
    assert w.volume_scene is not None
    assert tuple(w.volume_scene.render_window.GetSize()) == (canvas.width(), canvas.height())
    shot = screen(canvas)
    x0, y0, x1, y1 = lit_box(shot)
    fill = max((x1 - x0 + 1) / canvas.width(), (y1 - y0 + 1) / canvas.height())
    assert 0.85 <= fill <= 0.95, fill  # the whole volume, fitted to the new pane
    assert x1 > 0.6 * canvas.width() and y1 > 0.6 * canvas.height()  # not confined to the old 500 x 400 corner
    w.close()
