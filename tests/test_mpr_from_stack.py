"""MPR and 3D from what the viewer already holds (issue 24 items 3 and 4).

The volume the viewer hands to the MPR (:func:`hilum.dicom.volume.volume_from_series`) equals the
volume built from the files (geometry, spacing, direction, values, the one slice order of
:func:`hilum.dicom.geometry.order_slices`) and SimpleITK's reading of the same files; where the
viewer's buffer already holds the modality values it is that buffer (a read-only view, no copy).
Through the real main window: MPR and 3D open from the toolbar with every file of the series
deleted (nothing can be read twice), and the 3D view shows a quick preview first, then the
full-quality frame that a headless render of the file-built volume gives. Speed is measured by
``bench/mpr/stall.py`` and ``bench/viewer/workstation.py``, not here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from _viewer_data import STUDY, write_ct
from hilum.dicom.geometry import order_slices
from hilum.dicom.stack_load import load_series_sync
from hilum.dicom.volume import Volume, build_volume, volume_from_series

TIMEOUT = 60000


def _intercept_zero(paths: list[Path]) -> None:
    """Rewrite a CT of HU = stored - 1024 as HU = stored (signed, Rescale Intercept 0): the same HU."""
    for p in paths:
        ds = pydicom.dcmread(p)
        hu = ds.pixel_array.astype(np.int32) - 1024
        ds.PixelData = hu.astype("<i2").tobytes()
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        ds.save_as(p)


def _duplicate_first(paths: list[Path], out: Path) -> list[Path]:
    """A second instance at the first slice's position (another SOP Instance UID): one viewer slice
    more, the volume keeps one per position."""
    ds = pydicom.dcmread(paths[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(out), "duplicate"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 999
    ds.save_as(out)
    return [*paths, out]


def assert_same_volume(got: Volume, want: Volume) -> None:
    assert got.array.dtype == want.array.dtype and got.shape == want.shape
    assert np.array_equal(got.array, want.array)
    assert np.allclose(got.affine, want.affine, atol=1e-9)
    assert np.allclose(got.spacing, want.spacing) and np.allclose(got.direction, want.direction)
    assert np.allclose(got.origin, want.origin)
    assert [f.key for f in got.slices] == [f.key for f in want.slices]
    assert got.modality == want.modality and got.series_instance_uid == want.series_instance_uid


@pytest.mark.parametrize("kind", ["intercept-1024", "intercept-0", "duplicate-position"])
def test_volume_from_the_stack_equals_the_volume_from_files(tmp_path: Path, kind: str) -> None:
    paths = write_ct(tmp_path / "ct", rows=48, slices=14, thickness=2.0)
    if kind != "intercept-1024":
        _intercept_zero(paths)
    if kind == "duplicate-position":
        paths = _duplicate_first(paths, tmp_path / "ct" / "dup.dcm")
    series = load_series_sync([str(p) for p in paths], preview=False)
    from_files = build_volume([str(p) for p in paths])
    got = volume_from_series(series)
    assert_same_volume(got, from_files)
    # the one slice order: along the normal, one frame per position, as order_slices gives it
    order = order_slices(series.stack.frames)
    assert [f.key for f in got.slices] == [f.key for f in order.slices]
    assert np.all(np.diff([float(f.geometry.origin @ got.normal) for f in got.slices]) > 0)
    shared = np.shares_memory(got.array, series.data)
    if kind == "intercept-0":  # the viewer's buffer holds HU already: it is the volume, read-only
        assert shared and not got.array.flags.writeable
        with pytest.raises(ValueError):
            got.array[0, 0, 0] = 1
        assert series.data.flags.writeable  # the viewer's own array is left as it was
    else:  # HU = stored - 1024, or a duplicate slice to leave out: the volume needs its own buffer
        assert not shared
    assert np.array_equal(got.array, volume_from_series(series).array)  # the series is left intact


def test_volume_from_the_stack_equals_simpleitk(tmp_path: Path) -> None:
    """The oracle: SimpleITK's ImageSeriesReader (GDCM) over the files in the volume's slice order."""
    sitk = pytest.importorskip("SimpleITK")
    paths = write_ct(tmp_path / "ct", rows=40, slices=12, thickness=2.5)
    _intercept_zero(paths)
    series = load_series_sync([str(p) for p in paths], preview=False)
    got = volume_from_series(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([f.path for f in got.slices])
    ref = reader.Execute()
    assert np.array_equal(got.array, sitk.GetArrayFromImage(ref).astype(np.int16))
    assert np.allclose(got.origin, ref.GetOrigin(), atol=1e-4)
    assert np.allclose(got.spacing, ref.GetSpacing(), atol=1e-4)
    assert np.allclose(got.direction.reshape(-1), ref.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("factors", [(2, 2, 3), (3, 2, 2), (2, 2, 2), (1, 3, 1), (4, 4, 4)])
def test_block_average_is_the_rounded_mean(factors: tuple[int, int, int]) -> None:
    """The int16 block average of the software 3D view (strided sums in int32) equals numpy's mean of
    each block, rounded (float64: the exact reference), edge voxels that fill no block dropped."""
    rng = np.random.default_rng(sum(factors))
    array = rng.integers(-1024, 3072, size=(23, 30, 29)).astype(np.int16)
    array[0, :4, :4] = 32767  # extremes: no overflow in the sums
    array[1, :4, :4] = -32768
    volume = Volume.from_array(array, spacing=(0.7, 0.7, 1.5), origin=(-10.0, -20.0, 30.0))
    small = volume.downsampled(factors)
    fi, fj, fk = factors
    mk, mj, mi = 23 // fk, 30 // fj, 29 // fi
    blocks = array[: mk * fk, : mj * fj, : mi * fi].reshape(mk, fk, mj, fj, mi, fi).astype(np.float64)
    assert small.array.dtype == np.int16
    assert np.array_equal(small.array, np.rint(blocks.mean(axis=(1, 3, 5))).astype(np.int16))
    assert np.allclose(
        small.voxel_to_world((0, 0, 0)), volume.voxel_to_world(((fi - 1) / 2, (fj - 1) / 2, (fk - 1) / 2))
    )
    floats = Volume.from_array(array.astype(np.float32)).downsampled(factors)  # float volumes: the float32 mean
    assert floats.array.dtype == np.float32
    assert np.allclose(floats.array, blocks.mean(axis=(1, 3, 5)), atol=1e-3)


# ------------------------------------------------------------------------------ the real main window

pytest.importorskip("pytestqt")


def _open_in_main_window(qtbot, make_main_window, data_dir, paths):  # type: ignore[no-untyped-def]
    """The study opened as a reader opens it: a double-click on its row, then loaded."""
    from PySide6.QtCore import Qt

    from hilum.archive import Archive
    from hilum.config import load_config
    from hilum.ui.viewer.viewer_widget import StudyViewer

    archive = Archive(data_dir)
    assert all(r.ok for r in archive.ingest_many(paths))
    window = make_main_window(load_config(data_dir), archive, viewer=True)
    window.resize(1600, 1000)
    window.show()
    qtbot.waitExposed(window)
    model, table = window.browser.model, window.browser.table
    qtbot.waitUntil(lambda: model.find(STUDY.uid) >= 0, timeout=TIMEOUT)
    rect = table.visualRect(model.index(model.find(STUDY.uid), 1))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    with qtbot.waitSignal(window.studyOpenRequested, timeout=TIMEOUT):
        qtbot.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    viewer = window.viewer_controller.viewer_for(STUDY.uid)
    assert isinstance(viewer, StudyViewer)
    uid = viewer.session.series[0].series_uid
    qtbot.waitUntil(lambda: not viewer.is_loading(uid) and viewer.series_volume(uid) is not None, timeout=TIMEOUT)
    return window, viewer, viewer.series_volume(uid)


def _click(qtbot, viewer, name: str):  # type: ignore[no-untyped-def]
    """Click the viewer's toolbar button for action *name* (its key when the button is in the overflow);
    the MPR/3D window it opened."""
    from PySide6.QtCore import Qt

    act = viewer.actions_by_name[name]
    before = list(getattr(viewer, "_mpr_windows", []))
    button = viewer.toolbar.widgetForAction(act)
    if button is not None and button.isVisible():
        qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    else:
        canvas = viewer.viewport_widget(0).canvas
        viewer.window().activateWindow()  # no window manager under Xvfb: shortcuts need the window active
        qtbot.waitUntil(viewer.window().isActiveWindow, timeout=10_000)
        canvas.setFocus()
        combo = act.shortcut()[0]  # the key as a key code ("D" as a string is a shifted D)
        qtbot.keyClick(canvas, combo.key(), combo.keyboardModifiers())
    opened = [w for w in getattr(viewer, "_mpr_windows", []) if w not in before]
    assert len(opened) == 1, f"{name} opened no window"
    return opened[0]


@pytest.mark.gui
def test_mpr_and_3d_open_from_the_loaded_stack_in_the_main_window(qtbot, make_main_window, data_dir, tmp_path):  # type: ignore[no-untyped-def]
    from hilum.render.volume3d import VolumeScene, load_presets

    paths = write_ct(tmp_path / "ct", rows=64, slices=40, thickness=2.0)
    _intercept_zero(paths)
    window, viewer, series = _open_in_main_window(qtbot, make_main_window, data_dir, paths)
    from_files = build_volume([f.path for f in series.stack.frames])  # before the files go
    for f in series.stack.frames:  # nothing of the series can be read again: MPR and 3D use what is loaded
        os.remove(f.path)

    from hilum.ui.mpr import warm

    # the loaded series had the MPR's windows made and warmed in the background
    qtbot.waitUntil(warm.ready, timeout=TIMEOUT)
    mpr = _click(qtbot, viewer, "mpr")
    qtbot.waitUntil(lambda: mpr.volume is not None and len(mpr.slice_canvases) == 3, timeout=TIMEOUT)
    assert "Cannot" not in mpr.status.text()
    used = mpr._owned.warm  # the planes render in the warmed windows, freed with the MPR
    assert used is not None and not warm.ready()
    assert [mpr.scene[v].render_window for v in ("axial", "coronal", "sagittal")] == list(used.windows.values())
    assert_same_volume(mpr.volume, from_files)
    assert np.shares_memory(mpr.volume.array, series.data)  # the viewer's own pixels, not a copy
    qtbot.waitUntil(lambda: all(c.render_count > 0 for c in mpr.slice_canvases.values()), timeout=TIMEOUT)
    # the MPR layout's 3D pane follows the planes
    qtbot.waitUntil(lambda: mpr.volume_canvas is not None and mpr.volume_canvas.render_count > 0, timeout=TIMEOUT)
    assert mpr.volume_canvas.isVisible()
    mpr.close()
    assert used.closed and mpr.scene is None
    qtbot.waitUntil(warm.ready, timeout=TIMEOUT)  # closing it warmed a set for the next MPR

    frames: list[tuple[np.ndarray, bool]] = []
    three_d = _click(qtbot, viewer, "volume_3d")

    def watch(_volume: Volume) -> None:  # before the canvas renders anything (its frames come queued)
        assert three_d.volume_canvas is not None
        three_d.volume_canvas._frame_ready.connect(lambda rgb, still: frames.append((rgb.copy(), still)))

    three_d.volumeLoaded.connect(watch)
    qtbot.waitUntil(lambda: three_d.volume_canvas is not None and three_d.volume_canvas.settled(), timeout=TIMEOUT)
    assert_same_volume(three_d.volume, from_files)
    canvas = three_d.volume_canvas
    assert len(frames) >= 2
    first, first_still = frames[0]
    last, last_still = frames[-1]
    assert not first_still and last_still  # a quick preview first, the full-quality frame last
    assert first.shape == last.shape and np.abs(first.astype(int) - last.astype(int)).mean() > 0.5
    assert last.max() > 100  # the bone preset shows the spheres
    # the full-quality frame is today's rendering of the volume built from the files
    scene = VolumeScene(from_files, presets=dict(load_presets(data_dir)))
    try:
        ref = scene.render_frame((last.shape[1], last.shape[0]))
    finally:
        scene.close()
    assert ref is not None
    diff = np.abs(ref.astype(int) - last.astype(int))
    assert diff.mean() < 0.5 and np.percentile(diff, 99.9) <= 8, (diff.mean(), diff.max())
    assert canvas.still_count >= 1
    three_d.close()


def test_the_preview_is_coarse_and_leaves_the_scene_as_it_was(tmp_path: Path) -> None:
    """The 3D view's first look (render_preview): unshaded at the PREVIEW level of detail, a picture
    of the same volume in the same place as the full-quality frame, and the scene's sampling and
    shading afterwards exactly as before (the full frame after it is today's full frame)."""
    from hilum.render.volume3d import PREVIEW, VolumeScene

    volume = build_volume([str(p) for p in write_ct(tmp_path / "ct", rows=64, slices=40, thickness=2.0)])
    scene = VolumeScene(volume, size=(320, 240), preset="ct-bone")
    try:
        before = (scene.mapper.GetImageSampleDistance(), scene.mapper.GetSampleDistance(), scene.shading)
        reference = scene.render_frame()
        preview = scene.render_preview()
        assert scene.mapper.GetImageSampleDistance() == before[0] and scene.shading == before[2]
        assert scene.mapper.GetSampleDistance() == before[1] and not scene._interacting
        full = scene.render_frame()
        assert preview is not None and full is not None and reference is not None
        assert np.array_equal(full, reference)  # the preview changed nothing for the frames after it
        assert np.abs(preview.astype(int) - full.astype(int)).mean() > 0.5  # coarser and unshaded
        lit = [np.argwhere(a.max(axis=2) > 20) for a in (preview, full)]
        assert all(len(x) for x in lit)
        assert np.abs(lit[0].mean(axis=0) - lit[1].mean(axis=0)).max() < 6  # the same object, same place
        assert PREVIEW.image_sample_distance > scene.interactive_lod.image_sample_distance
    finally:
        scene.close()


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_value_range_in_pieces_is_the_whole_arrays(dtype: type) -> None:
    rng = np.random.default_rng(3)
    array = rng.integers(-2000, 3000, size=(9, 256, 251)).astype(dtype)  # more than one piece, a ragged last
    array[8, 255, 250], array[0, 0, 0] = 3171, -2017
    assert Volume.from_array(array).value_range() == (-2017.0, 3171.0)
    if dtype is np.float32:
        array[4, 3, 2] = np.nan  # as numpy's own min/max: NaN wins
        lo, hi = Volume.from_array(array).value_range()
        assert np.isnan(lo) and np.isnan(hi)


def test_planes_in_warmed_windows_equal_planes_in_new_windows(tmp_path: Path) -> None:
    """A window that rendered the warm-up scene (its context and shaders kept) renders a volume's
    planes exactly as a new window does."""
    from hilum.render.mpr import MPRScene
    from hilum.ui.mpr.warm import make

    volume = build_volume([str(p) for p in write_ct(tmp_path / "ct", rows=64, slices=30, thickness=2.0)])
    warmed = make()
    assert not warmed.closed
    scenes = [MPRScene(volume, windows=warmed.windows), MPRScene(volume)]
    try:
        for view in ("axial", "coronal", "sagittal"):
            a, b = (s[view].capture() for s in scenes)
            assert a.shape == b.shape and a.max() > 50
            assert np.array_equal(a, b), view
    finally:
        for s in scenes:
            s.close()
        warmed.close()
    assert warmed.closed


@pytest.mark.gui
def test_mpr_planes_come_before_the_3d_pane_which_takes_the_panels_settings(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The MPR layout shows its planes first (volumeLoaded: no 3D pane yet), the 3D scene follows
    from the build thread; a surface asked for in the 3D panel in between is made on the scene."""
    from PySide6.QtWidgets import QLabel

    from hilum.ui.mpr.mpr_widget import MPRWidget

    volume = build_volume([str(p) for p in write_ct(tmp_path / "ct", rows=48, slices=24, thickness=2.0)])
    w = MPRWidget(layout="mpr")
    qtbot.addWidget(w)
    w.resize(900, 650)
    w.show()
    qtbot.waitExposed(w)
    seen: list[bool] = []

    def planes_shown(_v: Volume) -> None:  # on the GUI thread: the 3D scene's hand-over waits behind this
        seen.append(w.volume_canvas is None and len(w.slice_canvases) == 3)
        w.iso_on.setChecked(True)  # the reader asks for a surface before the 3D view is there
        QApplication.processEvents()  # laid out: the planes as the reader first sees them
        places.extend(c.geometry() for c in w.slice_canvases.values())

    from PySide6.QtWidgets import QApplication

    places: list = []  # type: ignore[type-arg]

    w.volumeLoaded.connect(planes_shown)
    w.build_async(lambda: volume)
    qtbot.waitUntil(lambda: w.volume_canvas is not None, timeout=TIMEOUT)
    assert seen == [True]
    assert w.volume_scene is not None
    qtbot.waitUntil(lambda: w.volume_scene.isosurface_threshold == 300.0, timeout=TIMEOUT)
    qtbot.waitUntil(w.volume_canvas.settled, timeout=TIMEOUT)
    assert w.volume_canvas.isVisible() and w.grid.indexOf(w.volume_canvas) >= 0
    assert w.findChild(QLabel, "mpr-3d-pending") is None  # the place holder made way
    QApplication.processEvents()
    assert [c.geometry() for c in w.slice_canvases.values()] == places  # the planes did not move
    axial, coronal, sagittal = places  # the 3D pane: coronal's column, sagittal's row
    assert w.volume_canvas.width() == coronal.width() and w.volume_canvas.height() == sagittal.height()
    w.close()
    assert w.volume_scene is None and w.scene is None


@pytest.mark.parametrize("brightest", [4095, 40000])
def test_unsigned_mr_from_the_stack_is_its_buffer_when_it_fits(tmp_path: Path, brightest: int) -> None:
    """12-bit unsigned MR (slope 1, intercept 0): the viewer's uint16 buffer seen as int16 is the volume
    (the same bits below 32768); a value above 32767 needs the float32 volume the files give."""
    from hilum.dicom.generator import OBLIQUE, generate_mr_series, write_dataset

    series = generate_mr_series(STUDY, rows=40, columns=40, slices=10, orientation=OBLIQUE)
    series[3].PixelData = (
        np.where(  # the brightest value of the series in one slice's corner
            np.arange(40 * 40).reshape(40, 40) == 0, brightest, series[3].pixel_array
        )
        .astype("<u2")
        .tobytes()
    )
    if brightest > 4095:  # 16-bit unsigned, not 12: the value is stored as it is
        for ds in series:
            ds.BitsStored, ds.HighBit = 16, 15
    paths = [str(write_dataset(ds, tmp_path / f"{i:02d}.dcm")) for i, ds in enumerate(series)]
    loaded = load_series_sync(paths, preview=False)
    assert loaded.data.dtype == np.uint16
    got = volume_from_series(loaded)
    from_files = build_volume(paths)
    if brightest < 32768:
        assert_same_volume(got, from_files)
        assert np.shares_memory(got.array, loaded.data) and got.array.dtype == np.int16
        assert not got.array.flags.writeable
    else:
        assert not np.shares_memory(got.array, loaded.data)
        assert got.array.dtype == from_files.array.dtype == np.float32
        assert_same_volume(got, from_files)
    assert got.value_range()[1] == brightest


@pytest.mark.parametrize("populate_from", [0, 1 << 40])
def test_the_copied_volume_equals_the_files_with_its_memory_mapped_at_once_or_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, populate_from: int
) -> None:
    """HU = stored - 1024 needs a buffer of its own: mapped ahead of the writes (for big volumes; here
    from 0 bytes) or plain np.empty, the same volume."""
    import mmap
    import sys

    import hilum.dicom.volume as volume_module

    monkeypatch.setattr(volume_module, "POPULATE_BYTES", populate_from)
    paths = [str(p) for p in write_ct(tmp_path / "ct", rows=40, slices=12, thickness=2.0)]
    series = load_series_sync(paths, preview=False)
    got = volume_from_series(series)
    assert_same_volume(got, build_volume(paths))
    assert got.array.flags.writeable and not np.shares_memory(got.array, series.data)
    owner = got.array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    mapped = isinstance(owner, memoryview) and isinstance(owner.obj, mmap.mmap)
    assert mapped == (populate_from == 0 and sys.platform.startswith("linux"))
    if mapped:  # on a transparent huge page's boundary, so that the kernel can map it in 2 MB pages
        assert got.array.ctypes.data % (2 << 20) == 0


@pytest.mark.parametrize(
    ("dtype", "values", "intercept", "fits"),
    [
        (np.int16, [0, 3071], -1024, True),  # CT stored as HU + 1024
        (np.int16, [-32000, 10], -1024, False),  # would wrap below int16
        (np.int16, [0, 32000], 1024, False),  # would wrap above int16
        (np.int16, [-32768, 31743], 1024, True),
        (np.uint16, [0, 33791], -1024, True),  # uint16 just fitting after the shift
        (np.uint16, [0, 33792], -1024, False),
        (np.uint16, [0, 4095], 0, True),
        (np.uint8, [0, 255], -1024, True),
        (np.int32, [0, 10], 0, False),  # wider than int16: the general path
    ],
)
def test_shift_fits_checks_the_bound_the_intercept_moves_towards(dtype, values, intercept, fits) -> None:
    """The one-reduction range check of the HU + 1024 fast path agrees with adding in int64."""
    from hilum.dicom.pixels import ModalityTransform
    from hilum.dicom.volume import _shift_fits

    stored = np.array(values, dtype=dtype).reshape(1, -1)
    t = ModalityTransform(slope=1.0, intercept=float(intercept), lut=None, rescale_type="HU")
    assert _shift_fits(stored, t) is fits
    if fits:
        exact = stored.astype(np.int64) + intercept
        assert exact.min() >= -32768 and exact.max() <= 32767
