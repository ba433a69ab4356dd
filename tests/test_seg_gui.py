"""Segmentation editing in the real viewer: keys, drags on the canvas, the panel, SEG save/open."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _viewer_data import STUDY
from hilum.dicom.generator import iter_ct_series, write_dataset
from hilum.dicom.generator.demo import instance_path
from hilum.dicom.generator.phantom import DEFAULT_SPHERES

pytest.importorskip("pytestqt")
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QImage, QMouseEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from hilum.ui.viewer.viewer_widget import StudyViewer  # noqa: E402

pytestmark = pytest.mark.gui
ROWS, SLICES, FOV, THICK = 256, 24, 360.0, 1.5
SPHERE = DEFAULT_SPHERES[0]  # 20 mm, 300 HU, centre (-70, 10, 0): in the right lung
TRUE_ML = 4 / 3 * math.pi * SPHERE.radius**3 / 1000


@pytest.fixture
def study(archive, tmp_path):
    paths = [write_dataset(ds, instance_path(tmp_path, ds))
             for ds in iter_ct_series(STUDY, rows=ROWS, columns=ROWS, slices=SLICES, fov=FOV,
                                      slice_thickness=THICK, noise_sigma=0.0)]  # fmt: skip
    assert all(r.ok for r in archive.ingest_many(paths))
    return STUDY.uid


def open_viewer(qtbot, archive, data_dir, study):
    v = StudyViewer(archive, study, data_dir=data_dir, executor="thread")
    qtbot.addWidget(v)
    v.resize(1000, 700)
    v.show()
    qtbot.waitExposed(v)
    with qtbot.waitSignal(v.loadFinished, timeout=30000):
        v.open()
    return v


@pytest.fixture
def viewer(qtbot, archive, data_dir, study):
    v = open_viewer(qtbot, archive, data_dir, study)
    yield v
    v.close()


def grab(widget) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def send_mouse(widget, kind, pos, button, buttons):
    ev = QMouseEvent(kind, QPointF(*pos), widget.mapToGlobal(QPointF(*pos)), button, buttons,
                     Qt.KeyboardModifier.NoModifier)  # fmt: skip
    QApplication.sendEvent(widget, ev)


def drag(canvas, points):
    L = Qt.MouseButton.LeftButton
    send_mouse(canvas, QEvent.Type.MouseButtonPress, points[0], L, L)
    for p in points[1:]:
        send_mouse(canvas, QEvent.Type.MouseMove, p, Qt.MouseButton.NoButton, L)
    send_mouse(canvas, QEvent.Type.MouseButtonRelease, points[-1], L, Qt.MouseButton.NoButton)


def click(canvas, pos):
    drag(canvas, [pos])


def key(widget, k, mods=Qt.KeyboardModifier.NoModifier):
    QTest.keyClick(widget, k, mods)


def type_into(box, text):
    box.setFocus()
    box.selectAll()
    QTest.keyClicks(box, text)
    QTest.keyClick(box, Qt.Key.Key_Return)


def to_z(viewer, canvas, z_mm: float) -> None:
    """Page with the Up/Down keys (as a person does) to the slice whose position is nearest *z_mm*."""
    vp = viewer.active_viewport()
    zs = [f.position[2] for f in vp.volume.stack.frames]
    target = int(np.argmin(np.abs(np.asarray(zs) - z_mm)))
    step = Qt.Key.Key_Down
    for _ in range(2 * len(zs) + 2):
        if vp.index == target:
            return
        canvas.setFocus()
        before = vp.index
        key(canvas, step)
        if abs(vp.index - target) > abs(before - target):
            step = Qt.Key.Key_Up  # the other way
    assert vp.index == target


def sphere_canvas_point(vp, dz: float = 0.0):
    """Canvas position of the sphere's centre (x, y) on the current slice."""
    f = vp.frame_info
    g = f.geometry
    d = np.asarray(SPHERE.centre) - np.asarray(f.position)
    col = d @ np.asarray(g.row_dir) / f.spacing.column
    row = d @ np.asarray(g.col_dir) / f.spacing.row
    return vp.image_to_canvas(col, row)


def sphere_slices(vp):
    zc = SPHERE.centre[2]
    return sorted({round(f.position[2], 3) for f in vp.volume.stack.frames if abs(f.position[2] - zc) < SPHERE.radius})


def panel_ml(viewer) -> float:
    panel = viewer.seg_panel
    n = viewer.seg.active_segment(panel.series_uid)
    return float(panel.volume_text(n))


def paint_sphere_with_threshold_brush(viewer, qtbot):
    canvas = viewer.viewport_widget(0).canvas
    vp = viewer.active_viewport()
    canvas.setFocus()
    key(canvas, Qt.Key.Key_T, Qt.KeyboardModifier.ShiftModifier)  # Shift+T: threshold brush
    assert viewer.tool_name == "seg_threshold"
    panel = viewer.seg_panel
    assert panel.isVisible()
    type_into(panel.radius, "14")
    type_into(panel.lo, "200")
    type_into(panel.hi, "400")
    assert viewer.seg.radius_mm == 14 and (viewer.seg.lo, viewer.seg.hi) == (200, 400)
    for z in sphere_slices(vp):
        to_z(viewer, canvas, z)
        x, y = sphere_canvas_point(vp)
        drag(canvas, [(x - 2, y), (x, y + 1), (x + 2, y)])
    return canvas, vp


def test_threshold_brush_a_sphere_save_close_reopen_same_volume(qtbot, archive, data_dir, study):
    import highdicom as hd

    viewer = open_viewer(qtbot, archive, data_dir, study)
    canvas, vp = paint_sphere_with_threshold_brush(viewer, qtbot)
    ml = panel_ml(viewer)
    assert ml == pytest.approx(TRUE_ML, rel=0.05)
    # the overlay is on screen: the sphere's centre is tinted with the segment's colour
    to_z(viewer, canvas, SPHERE.centre[2])
    x, y = sphere_canvas_point(vp)
    qtbot.wait(20)
    img = grab(canvas)
    pix = img[int(round(y)), int(round(x))].astype(int)
    assert pix[0] != pix[2] or pix[1] != pix[2]  # not grey: coloured by the label overlay
    key(canvas, Qt.Key.Key_G, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert not viewer.seg_panel.isVisible()  # Ctrl+Shift+G hides the panel
    key(canvas, Qt.Key.Key_G, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    panel = viewer.seg_panel
    with qtbot.waitSignal(panel.saved, timeout=30000) as sig:
        QTest.mouseClick(panel.save_btn, Qt.MouseButton.LeftButton)
    uid, error = sig.args
    assert error == "" and uid
    path = archive.path(uid)
    seg = hd.seg.segread(path)
    assert seg.SegmentationType == "BINARY" and seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == vp.series_uid
    viewer.close()
    # reopen: a new viewer, "Open segmentation…" in the panel
    again = open_viewer(qtbot, archive, data_dir, study)
    try:
        c2 = again.viewport_widget(0).canvas
        c2.setFocus()
        key(c2, Qt.Key.Key_G, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
        QTest.mouseClick(again.seg_panel.open_btn, Qt.MouseButton.LeftButton)
        assert panel_ml(again) == pytest.approx(ml, abs=1e-6)
        # edit it and save: a NEW SEG, the one opened stays
        key(c2, Qt.Key.Key_E)
        assert again.tool_name == "seg_eraser"
        vp2 = again.active_viewport()
        to_z(again, c2, SPHERE.centre[2])
        x, y = sphere_canvas_point(vp2)
        drag(c2, [(x - 30, y), (x + 30, y)])
        assert panel_ml(again) < ml
        with qtbot.waitSignal(again.seg_panel.saved, timeout=30000) as sig2:
            QTest.mouseClick(again.seg_panel.save_btn, Qt.MouseButton.LeftButton)
        assert sig2.args[0] and sig2.args[0] != uid
        assert archive.path(uid).exists()
        segs = archive.query("IMAGE", {"StudyInstanceUID": study, "Modality": "SEG"})
        assert len(segs) == 2
    finally:
        again.close()


def test_grow_in_3d_eraser_undo_redo(viewer, qtbot):
    canvas = viewer.viewport_widget(0).canvas
    vp = viewer.active_viewport()
    canvas.setFocus()
    key(canvas, Qt.Key.Key_G)  # G: region growing
    assert viewer.tool_name == "seg_grow"
    panel = viewer.seg_panel
    type_into(panel.lo, "200")
    type_into(panel.hi, "400")
    QTest.mouseClick(panel.grow3d, Qt.MouseButton.LeftButton, pos=QPoint(8, panel.grow3d.height() // 2))
    assert viewer.seg.grow_3d
    to_z(viewer, canvas, SPHERE.centre[2])
    click(canvas, sphere_canvas_point(vp))
    ml = panel_ml(viewer)
    assert ml == pytest.approx(TRUE_ML, rel=0.05)
    # eraser across the middle slice, Ctrl+Z puts it back, Ctrl+Y erases again
    key(canvas, Qt.Key.Key_E)
    type_into(panel.radius, "4")
    canvas.setFocus()
    x, y = sphere_canvas_point(vp)
    drag(canvas, [(x - 40, y), (x, y), (x + 40, y)])
    erased = panel_ml(viewer)
    assert erased < ml
    key(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert panel_ml(viewer) == pytest.approx(ml)
    key(canvas, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    assert panel_ml(viewer) == pytest.approx(erased)


def test_brush_paints_a_disc_of_the_radius_in_mm_and_a_new_segment(viewer, qtbot):
    canvas = viewer.viewport_widget(0).canvas
    vp = viewer.active_viewport()
    canvas.setFocus()
    key(canvas, Qt.Key.Key_B, Qt.KeyboardModifier.ShiftModifier)  # Shift+B: brush (B is the rectangle ROI)
    assert viewer.tool_name == "seg_brush"
    panel = viewer.seg_panel
    type_into(panel.radius, "10")
    canvas.setFocus()
    x, y = vp.image_to_canvas(ROWS / 2, ROWS / 2)
    click(canvas, (x, y))
    ml = panel_ml(viewer)
    sp = vp.spacing()
    disc_ml = math.pi * 100 * vp.volume.stack.spacing / 1000
    assert ml == pytest.approx(disc_ml, rel=0.05)
    assert sp[0] > 0
    QTest.mouseClick(panel.add_btn, Qt.MouseButton.LeftButton)
    assert panel.table.rowCount() == 2
    n2 = viewer.seg.active_segment(vp.series_uid)
    assert n2 == 2
    canvas.setFocus()
    x2, y2 = vp.image_to_canvas(ROWS / 2 + 40, ROWS / 2)
    click(canvas, (x2, y2))
    assert float(panel.volume_text(2)) == pytest.approx(disc_ml, rel=0.05)
    assert float(panel.volume_text(1)) == pytest.approx(ml)
    # hide segment 2 with its check box: its colour leaves the screen
    before = grab(canvas)[int(y2), int(x2)].astype(int)
    item = panel.table.item(1, 0)
    rect = panel.table.visualItemRect(item)
    QTest.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    if item.checkState() == Qt.CheckState.Checked:  # the click landed beside the box: toggle by key
        panel.table.setCurrentItem(item)
        QTest.keyClick(panel.table, Qt.Key.Key_Space)
    assert item.checkState() == Qt.CheckState.Unchecked
    assert not viewer.seg.labels[vp.series_uid].segments[2].visible
    qtbot.wait(20)
    after = grab(canvas)[int(y2), int(x2)].astype(int)
    assert not np.array_equal(before, after) and after[0] == after[1] == after[2]


def qt_pos(canvas, display_xy):
    """Widget position of VTK display coordinates (the inverse of ``canvas.display_xy``)."""
    dpr = canvas.devicePixelRatioF()
    _, h = canvas._device_size()
    return (display_xy[0] / dpr, (h - 1 - display_xy[1]) / dpr)


def test_mpr_brush_on_a_coronal_plane_writes_the_label_volume(viewer, qtbot):
    """Brush labels on the MPR's coronal plane through the sphere: the voxels written lie on that
    coronal plane (one row of every volume slice it crosses, over ±radius along z), the 2D viewer
    shows them on its axial slice, the MPR planes show the colour."""
    vp = viewer.active_viewport()
    canvas2d = viewer.viewport_widget(0).canvas
    canvas2d.setFocus()
    to_z(viewer, canvas2d, SPHERE.centre[2])
    key(canvas2d, Qt.Key.Key_M)  # M: MPR
    mpr = viewer._mpr_windows[-1]
    # as a reader does: click once the planes are on screen (shown and drawn), not as soon as the volume is set
    qtbot.waitUntil(lambda: mpr.volume is not None and len(mpr.slice_canvases) == 3
                    and all(c.isVisible() and c.render_count > 0 for c in mpr.slice_canvases.values()),
                    timeout=30000)  # fmt: skip
    vol = mpr.volume
    axial, coronal = mpr.slice_canvases["axial"], mpr.slice_canvases["coronal"]
    # a click in the axial plane on the sphere's centre puts the cursor there (the coronal plane goes through it)
    axial.render_now()
    ax, ay, _ = axial.viewport.patient_to_display(SPHERE.centre)
    click(axial, qt_pos(axial, (ax, ay)))
    centre = np.asarray(mpr.scene.crosshair.centre)
    assert np.allclose(centre[:2], SPHERE.centre[:2], atol=1.5)
    # Brush labels (the toolbar toggle), radius 5 mm in the panel, a drag left to right across the sphere
    QTest.mouseClick(mpr.toolbar.widgetForAction(mpr.seg_actions["brush"]), Qt.MouseButton.LeftButton)
    assert mpr.seg_brush.mode == "brush"
    viewer.seg.radius_mm = 5.0
    coronal.render_now()
    p0 = coronal.viewport.patient_to_display(np.asarray(SPHERE.centre) + (-15.0, 0.0, 0.0))
    p1 = coronal.viewport.patient_to_display(np.asarray(SPHERE.centre) + (15.0, 0.0, 0.0))
    drag(coronal, [qt_pos(coronal, p0[:2]), qt_pos(coronal, ((p0[0] + p1[0]) / 2, p0[1])), qt_pos(coronal, p1[:2])])
    lm = viewer.seg.labels[vp.series_uid]
    k, j, i = np.nonzero(lm.array)
    assert len(k) > 0
    row = float(vol.world_to_voxel(mpr.scene.crosshair.centre)[1])
    assert set(j.tolist()) == {int(round(row))}  # one coronal row: the plane, one voxel thick
    zs = vol.voxel_to_world(np.stack([i, j, k], axis=1).astype(float))
    assert np.abs(zs[:, 2] - SPHERE.centre[2]).max() <= 5.0 + 0.75  # ± the radius along z
    assert zs[:, 0].min() < SPHERE.centre[0] - 14 and zs[:, 0].max() > SPHERE.centre[0] + 14
    # the coronal plane shows the colour on the stroke, the 2D viewer its row on the axial slice
    shot = coronal.render_now()
    mx, my = qt_pos(coronal, ((p0[0] + p1[0]) / 2, p0[1]))
    dpr = coronal.devicePixelRatioF()
    px = shot[int(round(my * dpr)), int(round(mx * dpr))].astype(int)
    assert not (px[0] == px[1] == px[2])
    qtbot.wait(20)
    f = vp.frame_info
    m = vp.volume.stack.order.volume_index[vp.index]
    rows, cols = np.nonzero(lm.array[m])
    assert len(rows) and set(rows.tolist()) == set(j.tolist())
    x2, y2 = vp.image_to_canvas(float(cols[len(cols) // 2]), float(rows[0]))
    img = grab(canvas2d)[int(round(y2)), int(round(x2))].astype(int)
    assert not (img[0] == img[1] == img[2])
    # one stroke: Ctrl+Z in the viewer (a segmentation tool chosen) takes it all back
    mpr.close()
    viewer.activateWindow()
    qtbot.waitUntil(viewer.isActiveWindow, timeout=5000)
    canvas2d.setFocus()
    key(canvas2d, Qt.Key.Key_B, Qt.KeyboardModifier.ShiftModifier)
    key(canvas2d, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert not lm.array.any() and f is not None


def test_fill_a_closed_outline_drawn_with_the_brush(viewer, qtbot):
    """Draw a ring with the brush (a closed drag), Shift+G (fill) and a click inside: the inside is
    painted; a click outside the ring (its region reaches the edge) paints nothing."""
    canvas = viewer.viewport_widget(0).canvas
    vp = viewer.active_viewport()
    canvas.setFocus()
    key(canvas, Qt.Key.Key_B, Qt.KeyboardModifier.ShiftModifier)
    type_into(viewer.seg_panel.radius, "2")
    canvas.setFocus()
    cx, cy, r = ROWS / 2, ROWS / 2 - 20, 15.0
    ring = [vp.image_to_canvas(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 40)]
    drag(canvas, ring)
    ring_ml = panel_ml(viewer)
    assert ring_ml > 0
    key(canvas, Qt.Key.Key_G, Qt.KeyboardModifier.ShiftModifier)
    assert viewer.tool_name == "seg_fill"
    click(canvas, vp.image_to_canvas(5, 5))  # outside: open to the edge, nothing
    assert panel_ml(viewer) == pytest.approx(ring_ml)
    click(canvas, vp.image_to_canvas(cx, cy))
    filled = panel_ml(viewer)
    sp = vp.spacing()
    inner_ml = math.pi * (r * sp[0]) ** 2 * vp.volume.stack.spacing / 1000
    assert filled > ring_ml + 0.7 * inner_ml  # the inside of the ring (less the ring itself)
    lm = viewer.seg.labels[vp.series_uid]
    m = vp.volume.stack.order.volume_index[vp.index]
    assert lm.array[m, int(cy), int(cx)] == viewer.seg.active_segment(vp.series_uid)
