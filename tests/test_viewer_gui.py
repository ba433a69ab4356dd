"""The viewer's real widgets (pytest-qt): open a study from the archive and check rendered pixels."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest

from _viewer_data import STUDY, hu_point_to_pixel, write_ct
from hilum.dicom.generator import CORONAL

pytest.importorskip("pytestqt")
from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QMouseEvent, QWheelEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from hilum.ui.viewer.viewer_widget import StudyViewer  # noqa: E402
from hilum.ui.viewer.viewport_widget import SERIES_MIME  # noqa: E402

pytestmark = pytest.mark.gui
ROWS = 96


@pytest.fixture
def study(archive, tmp_path):
    """CT axial (series 1), a coronal localizer (2) and a MONOCHROME1 copy of the axial series (3)."""
    paths = write_ct(tmp_path / "ax", rows=ROWS, slices=10, thickness=5.0)
    paths += write_ct(tmp_path / "loc", rows=ROWS, slices=1, orientation=CORONAL, series_number=2,
                      series_description="Localizer")  # fmt: skip
    for p in (write_ct(tmp_path / "m1", rows=ROWS, slices=10, thickness=5.0, series_number=3,
                                   series_description="Mono1")):  # fmt: skip
        ds = pydicom.dcmread(p)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(p), "m1"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(p)
        paths.append(p)
    results = archive.ingest_many(paths)
    assert all(r.ok for r in results)
    return STUDY.uid


def grab(widget) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def at(canvas_img: np.ndarray, state, landmark) -> int:
    x, y = state.image_to_canvas(*hu_point_to_pixel(*landmark, ROWS))
    return int(canvas_img[int(round(y)), int(round(x))].mean())


@pytest.fixture
def viewer(qtbot, archive, data_dir, study):
    v = StudyViewer(archive, study, data_dir=data_dir, executor="thread")
    qtbot.addWidget(v)
    v.resize(800, 600)
    v.show()
    qtbot.waitExposed(v)
    with qtbot.waitSignal(v.loadFinished, timeout=20000):
        v.open()
    yield v
    v.close()


def test_open_study_renders_body_bright_and_air_black(viewer, qtbot):
    vp = viewer.active_viewport()
    assert vp.stack_size == 10 and vp.volume.complete
    assert [e.description for e in viewer.session.series] == ["Axial 5 mm", "Localizer", "Mono1"]
    assert viewer.strip.count() == 3
    assert viewer.timings["first_image"] <= viewer.timings["full_load"]
    canvas = viewer.viewport_widget(0).canvas
    img = grab(canvas)
    assert at(img, vp, (0, -150)) == 0  # air black at the soft-tissue window
    assert 100 < at(img, vp, (0, -40)) < 160  # soft tissue mid grey
    assert at(img, vp, (0, 75)) == 255  # bone white
    # thumbnails arrive from the same pipeline
    qtbot.waitUntil(lambda: not viewer.strip.item(0).icon().pixmap(96, 96).toImage().isNull(), timeout=5000)


def send_mouse(widget, kind, pos, button, buttons):
    ev = QMouseEvent(kind, QPointF(*pos), widget.mapToGlobal(QPointF(*pos)), button, buttons,
                     Qt.KeyboardModifier.NoModifier)  # fmt: skip
    from PySide6.QtWidgets import QApplication

    QApplication.sendEvent(widget, ev)


def test_right_drag_changes_window_and_pixels(viewer):
    canvas = viewer.viewport_widget(0).canvas
    before = grab(canvas)
    R = Qt.MouseButton.RightButton
    send_mouse(canvas, QEvent.Type.MouseButtonPress, (100, 100), R, R)
    send_mouse(canvas, QEvent.Type.MouseMove, (180, 60), Qt.MouseButton.NoButton, R)
    send_mouse(canvas, QEvent.Type.MouseButtonRelease, (180, 60), R, Qt.MouseButton.NoButton)
    w = viewer.active_viewport().current_window()
    assert w.width > 400 and w.center < 40
    after = grab(canvas)
    assert not np.array_equal(before, after)
    assert viewer.apply_preset_key("4")  # lung
    assert viewer.active_viewport().current_window().center == -600


def test_scrolling_changes_the_slice_shown(viewer, qtbot):
    """Index k runs up the normal (feet to head on this axial stack); scrolling "down" — wheel towards
    the user, arrow down, the scrollbar's handle downwards — goes towards the feet, as in OHIF, Horos,
    Weasis and 3D Slicer, and the bar's top is the head end."""
    vp = viewer.active_viewport()
    canvas = viewer.viewport_widget(0).canvas
    z = [f.geometry.origin[2] for f in vp.volume.stack.frames]
    assert z == sorted(z) and len(z) == 10
    vp.set_index(9)  # the head end
    first = grab(canvas)
    pos = QPointF(50, 50)
    wheel = QWheelEvent(pos, canvas.mapToGlobal(pos), QPoint(0, 0), QPoint(0, -120 * 4), Qt.MouseButton.NoButton,
                        Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)  # fmt: skip
    from PySide6.QtWidgets import QApplication

    QApplication.sendEvent(canvas, wheel)
    assert vp.index == 5  # four slices towards the feet
    assert not np.array_equal(first, grab(canvas))  # other spheres cut, other overlay text
    canvas.setFocus()
    viewer.activateWindow()
    QTest.keyClick(canvas, Qt.Key.Key_End)  # the bottom of the stack: the feet
    assert vp.index == 0
    QTest.keyClick(canvas, Qt.Key.Key_Up)
    assert vp.index == 1
    QTest.keyClick(canvas, Qt.Key.Key_Down)
    assert vp.index == 0
    QTest.keyClick(canvas, Qt.Key.Key_Home)  # the top: the head
    assert vp.index == 9
    bar = viewer.viewport_widget(0).scrollbar
    assert bar.invertedAppearance()  # the highest index (the head) at the top of the bar
    bar.setValue(6)
    assert vp.index == 6
    QTest.keyClick(canvas, Qt.Key.Key_I)  # invert
    assert vp.invert


def drop_series(viewer, index, uid):
    canvas = viewer.viewport_widget(index).canvas
    mime = QMimeData()
    mime.setData(SERIES_MIME, uid.encode())
    pos = QPointF(20, 20)
    from PySide6.QtWidgets import QApplication

    args = (Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    import warnings

    with warnings.catch_warnings():  # PySide6 marks this (only) constructor deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        enter = QDragEnterEvent(pos.toPoint(), *args)
    QApplication.sendEvent(canvas, enter)
    assert enter.isAccepted()
    QApplication.sendEvent(canvas, QDropEvent(pos, *args))


def test_monochrome1_is_shown_inverted(viewer, qtbot):
    viewer.set_layout("1x2")
    m1 = viewer.session.series[2].series_uid
    a, b = viewer.model.viewports[:2]
    drop_series(viewer, 1, m1)
    qtbot.waitUntil(lambda: b.series_uid == m1 and not b.volume.preview and b.volume.complete, timeout=20000)
    assert b.frame_info.photometric == "MONOCHROME1"
    b.set_index(a.index)
    qtbot.wait(10)
    assert np.array_equal(b.render(), 255 - a.render())
    img_a, img_b = grab(viewer.viewport_widget(0).canvas), grab(viewer.viewport_widget(1).canvas)
    assert at(img_a, a, (0, -150)) == 0 and at(img_b, b, (0, -150)) == 255


def test_layout_reference_line_on_localizer_and_linked_scroll(viewer, qtbot):
    viewer.set_layout("2x2")
    qtbot.waitUntil(lambda: all(vp.volume is not None and not vp.volume.preview and vp.volume.complete
                                for vp in viewer.model.visible[:3]), timeout=20000)  # fmt: skip
    ax, loc, mono = viewer.model.visible[:3]
    assert loc.frame_info.geometry is not None and loc.stack_size == 1
    viewer.model.set_active(0)
    lines = viewer.model.reference_lines(loc)
    assert len(lines) == 1
    img = grab(viewer.viewport_widget(1).canvas)
    yellow = (img[..., 0] > 200) & (img[..., 1] > 200) & (img[..., 2] < 80)
    assert yellow.sum() > 50  # the reference line is drawn
    ax.set_index(2)
    assert mono.index == 2  # same Frame of Reference, same positions: linked by position
    assert viewer.viewport_widget(0).canvas.active


def test_measure_length_with_the_mouse(viewer):
    vp = viewer.active_viewport()
    viewer.set_tool("length")
    canvas = viewer.viewport_widget(0).canvas
    sp = vp.frame_info.spacing
    a = vp.image_to_canvas(20, 40)
    b = vp.image_to_canvas(20 + 50.0 / sp.column, 40)
    L = Qt.MouseButton.LeftButton
    send_mouse(canvas, QEvent.Type.MouseButtonPress, a, L, L)
    send_mouse(canvas, QEvent.Type.MouseMove, b, Qt.MouseButton.NoButton, L)
    send_mouse(canvas, QEvent.Type.MouseButtonRelease, b, L, Qt.MouseButton.NoButton)
    (m,) = vp.measurements
    assert abs(vp.annotation_values(m)["length"] - 50.0) < 50.0 * 0.01  # within a canvas pixel of 50 mm
    img = grab(canvas)
    green = (img[..., 1] > 180) & (img[..., 0] < 120)
    assert green.sum() > 40


def test_export_view_png_and_jpeg(viewer, tmp_path):
    from PIL import Image

    png = viewer.export_view(tmp_path / "view.png")
    jpg = viewer.export_view(tmp_path / "view.jpg")
    with Image.open(png) as im:
        assert im.size == (viewer.viewport_widget(0).canvas.width(), viewer.viewport_widget(0).canvas.height())
    with Image.open(jpg) as im:
        assert im.format == "JPEG"
    gif = viewer.export_cine(tmp_path / "cine.gif", fps=5)
    with Image.open(gif) as im:  # Pillow merges identical consecutive frames (noise-free slices) into one
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
        assert sum(durations) == 10 * 200


def test_cine_plays(viewer, qtbot):
    vp = viewer.active_viewport()
    vp.set_index(0)
    viewer.set_cine_fps(50)
    viewer.toggle_cine()
    qtbot.waitUntil(lambda: vp.index >= 3, timeout=3000)
    viewer.toggle_cine()
    assert not vp.cine_playing


def test_mpr_opened_from_the_viewer_has_the_viewers_slices(qtbot, archive, data_dir, tmp_path, monkeypatch):
    """A head-first CT: the MPR window built from the viewer's stack shows at volume slice k the image of
    viewer slice k, scrolling the viewer moves the 3D cursor to that slice and back; an MPR opened while
    the series loads is built from the viewer's stack when the load finishes (no second read)."""
    paths = write_ct(tmp_path / "hf", rows=48, slices=12, thickness=2.5, descending=True, series_number=7,
                     series_description="Head first")  # fmt: skip
    assert all(r.ok for r in archive.ingest_many(paths))
    viewer = StudyViewer(archive, STUDY.uid, data_dir=data_dir, executor="thread")
    qtbot.addWidget(viewer)
    viewer.resize(800, 600)
    viewer.show()
    qtbot.waitExposed(viewer)
    with qtbot.waitSignal(viewer.loadFinished, timeout=20000):
        viewer.open()
    vp = viewer.active_viewport()
    series = vp.volume
    assert series.complete and len(series) == 12
    viewer.actions_by_name["mpr"].trigger()
    (mpr,) = viewer._mpr_windows
    qtbot.waitUntil(lambda: mpr.volume is not None and len(mpr.slice_canvases) == 3
                    and all(c.isVisible() and c.render_count > 0 for c in mpr.slice_canvases.values()),
                    timeout=20000)  # fmt: skip
    vol = mpr.volume
    assert [(s.sop_instance_uid, s.frame) for s in vol.slices] == [f.key for f in series.stack.frames]
    for k in range(12):
        np.testing.assert_array_equal(vol.array[k], series.modality_values(k))
    vp.set_index(3)
    assert round(float(vol.world_to_voxel(mpr.scene.crosshair.centre)[2])) == 3
    mpr.set_cursor(vol.voxel_to_world((10.0, 12.0, 8.0)))
    assert vp.index == 8
    mpr.close()

    monkeypatch.setattr(viewer, "is_loading", lambda uid: True)  # as if the load were still running
    viewer.actions_by_name["mpr"].trigger()
    waiting = viewer._mpr_windows[-1]
    assert waiting is not mpr and waiting.volume is None and "Waiting" in waiting.status.text()
    viewer.loadFinished.emit("another series")
    assert waiting.volume is None
    viewer.loadFinished.emit(series.series_uid)
    qtbot.waitUntil(lambda: waiting.volume is not None, timeout=20000)
    np.testing.assert_array_equal(waiting.volume.array, vol.array)
    waiting.close()
    viewer.close()


# --------------------------------------------------------------------------- the 2D viewer and its MPR show alike


def _open_series(qtbot, archive, data_dir, paths):  # type: ignore[no-untyped-def]
    """The study in a viewer (1x1, fully loaded, nearest-neighbour painting and no overlay text, so each
    screen pixel inside the image shows one image pixel)."""
    assert all(r.ok for r in archive.ingest_many(paths))
    viewer = StudyViewer(archive, STUDY.uid, data_dir=data_dir, executor="thread")
    qtbot.addWidget(viewer)
    viewer.resize(800, 600)
    viewer.show()
    qtbot.waitExposed(viewer)
    with qtbot.waitSignal(viewer.loadFinished, timeout=20000):
        viewer.open()
    vp = viewer.active_viewport()
    assert vp.volume is not None and vp.volume.complete
    vp.smooth, vp.overlay_enabled = False, False
    return viewer, vp


def _open_mpr(qtbot, viewer, vp):  # type: ignore[no-untyped-def]
    """The MPR opened from the viewer with its action (the viewer's loaded stack handed over), its axial
    view through the viewer's slice on a voxel centre, smoothing, crosshair and annotations off."""
    viewer.actions_by_name["mpr"].trigger()
    mpr = viewer._mpr_windows[-1]
    qtbot.waitUntil(lambda: mpr.volume is not None and len(mpr.slice_canvases) == 3
                    and all(c.isVisible() and c.render_count > 0 for c in mpr.slice_canvases.values()),
                    timeout=20000)  # fmt: skip
    volume = mpr.volume
    k = vp.index
    m = vp.volume.stack.volume_index(k)
    assert (volume.slices[m].sop_instance_uid, volume.slices[m].frame) == vp.frame_info.key
    mpr.set_cursor(volume.voxel_to_world((volume.size[0] // 2, volume.size[1] // 2, m)))
    assert vp.index == k  # the cursor, linked to the viewer, stays on the viewer's slice
    axial = mpr.slice_canvases["axial"]
    axial.viewport.actor.InterpolateOff()
    axial.viewport.set_crosshair_visible(False)
    axial.viewport.set_annotations_visible(False)
    axial.request_render()
    return mpr, axial


def _viewer_screen(viewer, vp, pixels: np.ndarray) -> np.ndarray:
    """The grey level on screen at image pixels (N, 2) = (column, row) of the viewer's slice."""
    shot = grab(viewer.viewport_widget(0).canvas)
    out = []
    for c, r in pixels:
        x, y = vp.image_to_canvas(float(c), float(r))
        rgb = shot[int(y), int(x)]
        assert rgb[0] == rgb[1] == rgb[2]
        out.append(rgb[0])
    return np.asarray(out, dtype=np.int32)


def _mpr_screen(axial, points: np.ndarray) -> np.ndarray:
    """The grey level on screen in the MPR's axial view at patient points (N, 3)."""
    shot = grab(axial)
    out = []
    for p in points:
        x, y, off = axial.viewport.patient_to_display(p)
        assert abs(off) < 1e-6
        rgb = shot[axial.height() - 1 - int(round(y)), int(round(x))]
        assert rgb[0] == rgb[1] == rgb[2]
        out.append(rgb[0])
    return np.asarray(out, dtype=np.int32)


def _samples(vp) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Image pixels (column, row) inside the viewer's slice and their patient positions."""
    f = vp.frame_info
    cc, rr = np.meshgrid(np.arange(6, f.columns - 6, 3), np.arange(6, f.rows - 6, 3))
    pixels = np.stack([cc.ravel(), rr.ravel()], axis=-1)
    return pixels, np.asarray([f.geometry.to_patient(int(c), int(r)) for c, r in pixels])


def _sigmoid_mono1(paths) -> None:  # type: ignore[no-untyped-def]
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.VOILUTFunction = "SIGMOID"
        ds.save_as(p)


def test_window_drag_in_the_viewer_keeps_the_function_and_inversion_like_the_mpr(
    qtbot, archive, data_dir, tmp_path
):  # type: ignore[no-untyped-def]
    """A MONOCHROME1 CT whose header asks for SIGMOID: the same right drag in the 2D viewer and in the
    MPR opened from it gives both the same display (DisplayTransform.dragged: SIGMOID, inverted), and
    the grey levels on screen at the slice's pixels are equal (within one level) before and after;
    the viewer's are the 2D pipeline of the file with the dragged window (render_frame)."""
    from hilum.dicom.pixels import render_frame

    paths = write_ct(tmp_path / "sig", rows=64, slices=8, thickness=3.0, series_number=5)
    _sigmoid_mono1(paths)
    viewer, vp = _open_series(qtbot, archive, data_dir, paths)
    mpr, axial = _open_mpr(qtbot, viewer, vp)
    header = vp.display()
    assert header is not None and header.voi.function == "SIGMOID" and header.invert
    assert axial.viewport.display == header
    pixels, points = _samples(vp)
    before = _viewer_screen(viewer, vp, pixels)
    assert np.abs(_mpr_screen(axial, points) - before).max() <= 1 and np.unique(before).size > 5

    canvas = viewer.viewport_widget(0).canvas
    R = Qt.MouseButton.RightButton
    send_mouse(canvas, QEvent.Type.MouseButtonPress, (200, 200), R, R)
    send_mouse(canvas, QEvent.Type.MouseMove, (260, 225), Qt.MouseButton.NoButton, R)
    send_mouse(canvas, QEvent.Type.MouseButtonRelease, (260, 225), R, Qt.MouseButton.NoButton)
    dragged = header.dragged(60.0, 25.0)  # wider, level up: darker (before inversion)
    assert vp.display() == dragged and vp.window.function == "SIGMOID"
    QTest.mousePress(axial, R, Qt.KeyboardModifier.NoModifier, QPoint(200, 200))
    QTest.mouseMove(axial, QPoint(260, 225))
    QTest.mouseRelease(axial, R, Qt.KeyboardModifier.NoModifier, QPoint(260, 225))
    assert axial.viewport.display == dragged

    after = _viewer_screen(viewer, vp, pixels)
    assert (np.abs(after - before) > 10).sum() > 20  # the drag shows
    f = vp.frame_info
    expected = render_frame(f.path, f.frame, window=vp.window)[pixels[:, 1], pixels[:, 0]]
    np.testing.assert_array_equal(after, expected)  # the viewer shows the 2D pipeline of the file
    diff = np.abs(_mpr_screen(axial, points) - after)
    assert diff.max() <= 1, f"{int((diff > 1).sum())} of {diff.size} pixels differ (max {diff.max()})"

    viewer.apply_preset_key("4")  # lung: a preset keeps the function and the inversion too
    assert vp.display() == header.with_window(-600.0, 1500.0)
    mpr.close()
    viewer.close()


@pytest.mark.parametrize("kind", ["monochrome1-sigmoid", "voi-lut-table"])
def test_mpr_opened_from_the_viewer_shows_its_display_without_the_files(
    qtbot, archive, data_dir, tmp_path, kind
):  # type: ignore[no-untyped-def]
    """The MPR opened from the viewer gets the viewer's loaded series with each frame's grayscale
    pipeline (volume_from_series): with every file of the series deleted once the viewer has loaded
    it (as a cleared remote-study cache would be), the MPR's display is still the header's —
    MONOCHROME1 inverted with SIGMOID, or the VOI LUT Sequence table — and its grey levels on screen
    equal the viewer's at the slice's pixels."""
    from pydicom.dataset import Dataset

    from hilum.dicom.pixels import VOITable

    paths = write_ct(tmp_path / kind, rows=64, slices=8, thickness=3.0, series_number=6)
    if kind == "monochrome1-sigmoid":
        _sigmoid_mono1(paths)
    else:
        for p in paths:
            ds = pydicom.dcmread(p)
            item = Dataset()
            item.add_new(0x00283002, "US", [4096, 65536 - 1024, 16])  # LUT Descriptor: from HU -1024
            item.add_new(0x00283006, "US", np.rint(65535 * np.sqrt(np.arange(4096) / 4095)).astype(int).tolist())
            ds.VOILUTSequence = [item]
            del ds.WindowCenter, ds.WindowWidth
            ds.save_as(p)
    viewer, vp = _open_series(qtbot, archive, data_dir, paths)
    files = {f.path for f in vp.volume.stack.frames}
    assert len(files) == 8
    for path in files:
        os.remove(path)
    mpr, axial = _open_mpr(qtbot, viewer, vp)
    shown = vp.display()
    assert shown == vp.frame_info.pipeline.display()
    if kind == "monochrome1-sigmoid":
        assert shown.invert and shown.voi.function == "SIGMOID"
    else:
        assert isinstance(shown.voi, VOITable) and not shown.invert
    assert all(mpr.scene[view].display == shown for view in ("axial", "coronal", "sagittal"))
    pixels, points = _samples(vp)
    ours, theirs = _mpr_screen(axial, points), _viewer_screen(viewer, vp, pixels)
    assert np.unique(theirs).size > 5
    assert np.abs(ours - theirs).max() <= 1
    mpr.close()
    viewer.close()
