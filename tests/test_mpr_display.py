"""One display pipeline: MPR and curved MPR show the 2D viewer's grey levels.

For a CT series (Rescale Intercept -1024), a generated MR, a real MR with a fractional
Rescale Slope (a float volume), a real MONOCHROME1 CR, a real image with a VOI LUT Sequence
and a CT whose header asks for SIGMOID, the MPR plane through a slice is rendered (real
offscreen VTK render, texture magnified without smoothing so each screen pixel shows one
resliced pixel) and read back at the screen position of every voxel centre; it must equal
the 2D viewer's pipeline (:func:`hilum.dicom.pixels.render_frame`: modality LUT → VOI →
presentation) for the same slice, window and VOI LUT Function within one grey level.
Curved MPR along a row of the slice likewise.  Oblique planes and slabs: the rendered pixels
are the display transform of the resliced values.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from vtkmodules.util import numpy_support

from hilum.dicom.generator import DOE, generate_ct_series, generate_mr_series, make_study, write_dataset
from hilum.dicom.pixels import (
    DisplayTransform,
    GrayscalePipeline,
    VOITable,
    Window,
    frame_array,
    read_header,
    render_frame,
)
from hilum.dicom.volume import Plane, Volume, build_volume
from hilum.render.mpr import MPRScene, MPRViewport, volume_display

STUDY = make_study(DOE, accession="MPRDISP")
FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
SIZE = (256, 256)


# --------------------------------------------------------------------------- series


def _real(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} needs the pydicom-data package")
    return pydicom.dcmread(path)


def _crop(ds: Dataset, size: int = 96, origin: tuple[int, int] | None = None) -> Dataset:
    """A ``size`` x ``size`` crop (centred, or from row/column *origin*) of a real single-frame
    image, uncompressed, with the same header; Image Position (Patient) follows the crop; an image without geometry gets an
    axial plane with 0.5 mm pixels (the 2D pipeline needs none, a volume does)."""
    arr = frame_array(ds)
    r0, c0 = origin or ((arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2)
    crop = np.ascontiguousarray(arr[r0 : r0 + size, c0 : c0 + size])
    out = copy.deepcopy(ds)
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.Rows, out.Columns = size, size
    out.PixelData = crop.astype(crop.dtype.newbyteorder("<")).tobytes()
    out["PixelData"].VR = "OW" if crop.dtype.itemsize == 2 else "OB"
    if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "PixelSpacing" in ds:
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        ipp = np.asarray(ds.ImagePositionPatient, dtype=np.float64) + c0 * dc * iop[:3] + r0 * dr * iop[3:]
        out.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
    else:
        out.ImagePositionPatient = [0, 0, 0]
        out.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        out.PixelSpacing = [0.5, 0.5]
    out.SOPInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out


def _ct() -> list[Dataset]:
    return generate_ct_series(STUDY, rows=96, columns=96, slices=12, fov=200.0, slice_thickness=2.5, noise_sigma=12.0)


def _mr() -> list[Dataset]:
    return generate_mr_series(STUDY, rows=96, columns=96, slices=8, fov=200.0, series_number=2)


def _ct_sigmoid_header() -> list[Dataset]:
    series = generate_ct_series(
        STUDY, rows=96, columns=96, slices=6, fov=200.0, slice_thickness=2.5, noise_sigma=12.0, series_number=3
    )
    for ds in series:
        ds.VOILUTFunction = "SIGMOID"
    return series


def _ct_voi_lut() -> list[Dataset]:
    """A CT whose VOI is a VOI LUT Sequence table (PS3.3 C.11.2.1.1), not a window: 4096 entries
    from HU -1024 (first mapped value, signed input: two's complement in the US descriptor),
    16-bit output along a square-root curve, so every HU has its own grey level."""
    series = generate_ct_series(
        STUDY, rows=96, columns=96, slices=6, fov=200.0, slice_thickness=2.5, noise_sigma=12.0, series_number=4
    )
    data = np.rint(65535.0 * np.sqrt(np.arange(4096) / 4095.0)).astype(np.uint16)
    for ds in series:
        item = Dataset()
        item.add_new(0x00283002, "US", [4096, 65536 - 1024, 16])  # LUT Descriptor: US, as it is written to a file
        item.LUTExplanation = "SQRT"
        item.add_new(0x00283006, "US", data.tolist())  # LUT Data
        ds.VOILUTSequence = [item]
        del ds.WindowCenter, ds.WindowWidth, ds.WindowCenterWidthExplanation
    return series


CASES = {
    # name: (series, slice index, the window centre/width to try each function with; None = header VOI only)
    "ct-rescale": (_ct, 5, (40.0, 400.0)),
    "mr": (_mr, 3, (600.0, 1400.0)),
    "mr-real-fractional-slope": (lambda: [_crop(_real("MR2_UNCR.dcm"))], 0, (1000.0, 2000.0)),
    "cr-monochrome1": (lambda: [_crop(_real("RG3_UNCR.dcm"))], 0, (550.0, 700.0)),
    "voi-lut-sequence": (lambda: [_crop(_real("vlut_04.dcm"), origin=(160, 288))], 0, None),  # a real test pattern
    "ct-voi-lut-sequence": (_ct_voi_lut, 2, None),
    "sigmoid-in-header": (_ct_sigmoid_header, 2, None),
}


class _Volumes(dict[str, Volume]):
    """The cases' volumes, built once per module from files in *folder*."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> _Volumes:
    return _Volumes(tmp_path_factory.mktemp("mpr-display"))


def _volume(cache: _Volumes, name: str) -> Volume:
    """The case's series written to files and built the way the workstation builds it
    (:func:`build_volume` of the paths: the viewer's loader, or one file parsed whole), so
    each slice's :class:`~hilum.dicom.stack.FrameInfo` names the file the 2D viewer reads."""
    if name not in cache:
        make, _, _ = CASES[name]
        paths = [str(write_dataset(ds, cache.folder / name / f"{i:03d}.dcm")) for i, ds in enumerate(make())]
        cache[name] = build_volume(paths)
    return cache[name]


def _params() -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for name, (_, _, window) in CASES.items():
        out += [(name, f) for f in FUNCTIONS] if window is not None else [(name, None)]
    return out


# --------------------------------------------------------------------------- reading the screen


def _viewport_showing_slice(volume: Volume, k: int, window: object) -> tuple[MPRScene, MPRViewport]:
    """An MPR scene whose first view shows source slice ``k`` (its plane, through a voxel centre),
    smoothing off (each screen pixel shows one resliced pixel), no overlays."""
    scene = MPRScene(volume, size=SIZE, window=window)  # type: ignore[arg-type]
    vp = scene["axial"]
    ref = volume.slices[k]
    assert ref.orientation is not None
    u, v = np.asarray(ref.orientation[:3]), np.asarray(ref.orientation[3:])
    if not (np.allclose(u, (1, 0, 0)) and np.allclose(v, (0, 1, 0))):
        scene.crosshair.set_orientation("axial", u, v)  # a real oblique acquisition: its own plane
    scene.crosshair.set_centre(volume.voxel_to_world((volume.size[0] // 2, volume.size[1] // 2, k)))
    vp.reset_camera()  # fit the plane shown
    vp.set_crosshair_visible(False)
    vp.set_annotations_visible(False)
    vp.actor.InterpolateOff()
    return scene, vp


def _screen_at(vp: MPRViewport, points: np.ndarray) -> np.ndarray:
    """The rendered grey level at the screen position of each patient point (..., 3)."""
    rgb = vp.capture()
    h, w = rgb.shape[:2]
    flat = points.reshape(-1, 3)
    out = np.empty(len(flat), dtype=np.uint8)
    for i, p in enumerate(flat):
        x, y, off = vp.patient_to_display(p)
        assert abs(off) < 1e-6
        row, col = h - 1 - int(round(y)), int(round(x))
        assert 0 <= row < h and 0 <= col < w
        pixel = rgb[row, col]
        assert pixel[0] == pixel[1] == pixel[2]  # grey, not an overlay
        out[i] = pixel[0]
    return out.reshape(points.shape[:-1])


def _voxel_centres(volume: Volume, k: int) -> np.ndarray:
    """Patient positions of slice ``k``'s pixel centres, [row, column, 3]."""
    nj, ni = volume.array.shape[1:]
    jj, ii = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
    ijk = np.stack([ii, jj, np.full_like(ii, k)], axis=-1).astype(np.float64)
    return volume.voxel_to_world(ijk)


def _viewer_pixels(volume: Volume, k: int, window: Window | None) -> np.ndarray:
    """What the 2D viewer shows for source slice ``k`` (its own pipeline, from the file's data set)."""
    ref = volume.slices[k]
    return render_frame(ref.path, ref.frame, window=window)


def _window(name: str, function: str | None) -> Window | None:
    window = CASES[name][2]
    return None if function is None or window is None else Window(window[0], window[1], function)


def _assert_close(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    diff = np.abs(ours.astype(np.int32) - theirs.astype(np.int32))
    assert diff.max() <= 1, (
        f"{what}: {int((diff > 1).sum())} pixels differ by more than one grey level (max {diff.max()})"
    )
    assert np.unique(theirs).size >= 3, f"{what}: the comparison needs more than black and white"


# --------------------------------------------------------------------------- MPR plane = 2D viewer


@pytest.mark.parametrize(("name", "function"), _params(), ids=[f"{n}-{f or 'header'}" for n, f in _params()])
def test_mpr_plane_pixels_equal_the_2d_viewer(volumes: dict[str, Volume], name: str, function: str | None) -> None:
    volume = _volume(volumes, name)
    k = CASES[name][1]
    window = _window(name, function)
    # LINEAR is also what a plain (centre, width) pair means, the MPR's oldest way to be told a window
    spec = (window.center, window.width) if window is not None and window.function == "LINEAR" else window
    scene, vp = _viewport_showing_slice(volume, k, spec)
    try:
        ours = _screen_at(vp, _voxel_centres(volume, k))
        _assert_close(ours, _viewer_pixels(volume, k, window), f"{name} {function or 'header VOI'}")
    finally:
        scene.close()


def test_default_display_is_the_headers(volumes: dict[str, Volume]) -> None:
    """The volume's display reads what the 2D viewer reads: the VOI LUT Function of the
    header, a VOI LUT table when there is no window, MONOCHROME1 inversion."""
    sig = volume_display(_volume(volumes, "sigmoid-in-header"))
    assert (
        isinstance(sig.voi, Window) and sig.voi.function == "SIGMOID" and (sig.voi.center, sig.voi.width) == (40, 400)
    )
    table = volume_display(_volume(volumes, "voi-lut-sequence"))
    assert isinstance(table.voi, VOITable) and not table.invert
    cr = volume_display(_volume(volumes, "cr-monochrome1"))
    assert cr.invert and isinstance(cr.voi, Window)
    assert not volume_display(_volume(volumes, "ct-rescale")).invert
    ct_table = volume_display(_volume(volumes, "ct-voi-lut-sequence")).voi
    assert isinstance(ct_table, VOITable) and ct_table.lut.first_mapped == -1024
    for name in ("sigmoid-in-header", "voi-lut-sequence", "ct-voi-lut-sequence", "cr-monochrome1"):
        ref = _volume(volumes, name).slices[0]
        pipeline = GrayscalePipeline.from_dataset(read_header(ref.path), ref.frame)
        assert volume_display(_volume(volumes, name)) == pipeline.display()


# --------------------------------------------------------------------------- curved MPR = 2D viewer


@pytest.mark.parametrize(("name", "function"), _params(), ids=[f"{n}-{f or 'header'}" for n, f in _params()])
def test_curved_mpr_pixels_equal_the_2d_viewer(volumes: dict[str, Volume], name: str, function: str | None) -> None:
    """A path along row ``r0`` of the slice, columns ``c0..c1``, drawn on the slice's plane:
    curved MPR row ``i`` across the path is column ``c0 + i`` of the slice, rows ``r0 - 10 .. r0 + 10``."""
    volume = _volume(volumes, name)
    k = CASES[name][1]
    window = _window(name, function)
    scene, vp = _viewport_showing_slice(volume, k, window)
    try:
        r0, c0, c1, half = 48, 20, 76, 10
        step = float(np.min(volume.spacing))
        assert np.isclose(step, volume.spacing[0]) and np.isclose(volume.spacing[0], volume.spacing[1])
        for c in (c0, c1):
            vp.crosshair.add_path_point(volume.voxel_to_world((c, r0, k)), vp.plane.normal)
        result = vp.curved_pixels(width=2 * half * step)
        assert result is not None
        curved, points = result
        assert curved.shape == (c1 - c0 + 1, 2 * half + 1)
        np.testing.assert_allclose(points[0, half], volume.voxel_to_world((c0, r0, k)), atol=1e-6)
        viewer = _viewer_pixels(volume, k, window)
        _assert_close(curved, viewer[r0 - half : r0 + half + 1, c0 : c1 + 1].T, f"curved {name} {function}")
    finally:
        scene.close()


# --------------------------------------------------------------------------- oblique planes and slabs


@pytest.mark.parametrize(
    ("name", "slab", "mode", "window"),
    [
        ("ct-rescale", 0.0, "mip", Window(40.0, 400.0, "SIGMOID")),  # oblique thin: int16 output
        ("ct-rescale", 10.0, "mip", Window(40.0, 400.0, "LINEAR_EXACT")),
        ("ct-rescale", 10.0, "minip", Window(-600.0, 1500.0, "LINEAR")),
        ("ct-rescale", 10.0, "mean", Window(40.0, 400.0, "SIGMOID")),  # float output: sampled bins
        ("mr-real-fractional-slope", 0.0, "mip", Window(1000.0, 2000.0, "LINEAR")),  # float volume
    ],
    ids=["oblique-sigmoid", "mip-linear-exact", "minip-linear", "mean-sigmoid", "float-volume"],
)
def test_oblique_and_slab_pixels_are_the_display_of_the_resliced_values(
    volumes: dict[str, Volume], name: str, slab: float, mode: str, window: Window
) -> None:
    volume = _volume(volumes, name)
    scene, vp = _viewport_showing_slice(volume, CASES[name][1], window)
    try:
        if name == "ct-rescale":
            scene.crosshair.rotate("coronal", 17.0)
            scene.crosshair.rotate("sagittal", -9.0)
        scene.crosshair.set_slab("axial", slab, mode)  # type: ignore[arg-type]
        values, plane, spacing = vp.image()
        rows, cols = values.shape
        jj, ii = np.meshgrid(np.arange(rows)[::3], np.arange(cols)[::3], indexing="ij")
        points = plane.to_patient(ii * spacing, jj * spacing)
        inside = volume.contains(points)
        assert inside.sum() > 200
        shown = _screen_at(vp, points[inside])
        expected = DisplayTransform(window, volume_display(volume).invert).apply(values[jj, ii][inside])
        _assert_close(shown, expected, f"{name} {mode} {slab} mm")
    finally:
        scene.close()


def test_window_change_keeps_function_and_inversion(volumes: dict[str, Volume]) -> None:
    """A preset or a drag changes centre/width of the same model: SIGMOID stays SIGMOID,
    MONOCHROME1 stays inverted, and the rendered pixels follow."""
    volume = _volume(volumes, "cr-monochrome1")
    scene, vp = _viewport_showing_slice(volume, 0, Window(550.0, 700.0, "SIGMOID"))
    try:
        before = _screen_at(vp, _voxel_centres(volume, 0))
        vp.set_window(600.0, 400.0)
        assert vp.display == DisplayTransform(Window(600.0, 400.0, "SIGMOID"), invert=True)
        vp.window_drag(30.0, 12.0)  # display y up: 12 px up lowers the level
        expected = DisplayTransform(Window(600.0, 400.0, "SIGMOID"), True).dragged(30.0, -12.0)
        assert vp.display == expected and vp.display.voi.center < 600.0 and vp.display.voi.width > 400.0
        after = _screen_at(vp, _voxel_centres(volume, 0))
        assert np.abs(after.astype(int) - before.astype(int)).max() > 10
        _assert_close(after, _viewer_pixels(volume, 0, expected.voi), "after the drag")  # type: ignore[arg-type]
        vp.set_display(None)
        assert vp.display == volume_display(volume)
    finally:
        scene.close()


@pytest.mark.parametrize(("slab", "mode"), [(0.0, "mip"), (10.0, "mip"), (10.0, "mean")], ids=["thin", "mip", "mean"])
def test_image_given_to_the_actor_is_the_display_of_the_resliced_values(
    volumes: dict[str, Volume], slab: float, mode: str
) -> None:
    """The 8-bit plane the actor shows: exactly the display's P-Values of the resliced int16
    values (thin, MIP), within one grey level of them for float values (an averaged slab)."""
    volume = _volume(volumes, "ct-rescale")
    scene = MPRScene(volume, size=(64, 64), window=Window(40.0, 400.0, "SIGMOID"))
    try:
        vp = scene["axial"]
        scene.crosshair.rotate("coronal", 11.0)
        scene.crosshair.set_slab("axial", slab, mode)  # type: ignore[arg-type]
        vp.render()
        values, _, _ = vp.image()
        shown = numpy_support.vtk_to_numpy(vp.grey.GetPointData().GetScalars()).reshape(values.shape)
        expected = vp.display.apply(values.astype(np.float64))
        diff = np.abs(shown.astype(int) - expected.astype(int))
        assert diff.max() <= (1 if mode == "mean" else 0)
        assert vp.grey.GetDimensions()[:2] == values.shape[::-1]
    finally:
        scene.close()


def test_plane_through_a_slice_without_window_is_the_header_default(volumes: dict[str, Volume]) -> None:
    """No window given: the MPR shows what the 2D viewer shows by default (header VOI, inversion)."""
    volume = _volume(volumes, "cr-monochrome1")
    scene, vp = _viewport_showing_slice(volume, 0, None)
    try:
        _assert_close(_screen_at(vp, _voxel_centres(volume, 0)), _viewer_pixels(volume, 0, None), "CR default")
    finally:
        scene.close()


def test_plane_spans_the_volume(volumes: dict[str, Volume]) -> None:
    """Sanity of the helper: the viewport's plane is the slice's plane."""
    volume = _volume(volumes, "mr-real-fractional-slope")
    scene, vp = _viewport_showing_slice(volume, 0, None)
    try:
        ref = volume.slices[0]
        assert ref.orientation is not None and ref.position is not None
        expected = Plane.from_orientation(ref.orientation, ref.position)
        assert abs(expected.to_plane(vp.plane.centre)[2]) < 1e-6
        np.testing.assert_allclose(np.abs(vp.plane.normal @ expected.normal), 1.0, atol=1e-9)
    finally:
        scene.close()


def test_viewers_hand_over_keeps_the_display_without_its_files(tmp_path: Path) -> None:
    """The 2D viewer hands MPR the series it loaded (:func:`volume_from_series`: its decoded
    planes and each frame's :class:`~hilum.dicom.stack.FrameInfo` with its grayscale pipeline):
    the display is the series' header's, so a MONOCHROME1 series stays inverted and a SIGMOID
    one stays SIGMOID in MPR, and its pixels are the 2D pipeline's, with the files gone by the
    time MPR opens (nothing is read from them again: a series from a cache that was cleared,
    or from memory). Planes decoded elsewhere with no header (``volume_from_planes``, e.g. AI
    output) know only the window they are given."""
    from hilum.dicom.stack_load import load_series_sync
    from hilum.dicom.volume import volume_from_planes, volume_from_series

    series = _ct_sigmoid_header()
    for ds in series:
        ds.PhotometricInterpretation = "MONOCHROME1"
    paths = [write_dataset(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate(series)]
    loaded = load_series_sync(paths)  # the viewer's loader
    for p in paths:
        p.unlink()
    volume = volume_from_series(loaded)
    pipeline = GrayscalePipeline.from_dataset(series[0])
    display = volume_display(volume)
    assert display == pipeline.display() and display.invert and display.voi.function == "SIGMOID"  # type: ignore[union-attr]
    by_uid = {ds.SOPInstanceUID: ds for ds in series}
    k = 2
    scene, vp = _viewport_showing_slice(volume, k, None)
    try:
        viewer = render_frame(by_uid[volume.slices[k].sop_instance_uid])  # the 2D pipeline, from the data set
        _assert_close(_screen_at(vp, _voxel_centres(volume, k)), viewer, "the viewer's hand-over")
    finally:
        scene.close()
    without_header = volume_from_planes(
        [pipeline.modality_values(frame_array(ds)) for ds in series],
        [ds.ImagePositionPatient for ds in series],
        series[0].ImageOrientationPatient,
        series[0].PixelSpacing,
        modality="CT",
        window=pipeline.windows[0],
    )
    assert volume_display(without_header) == DisplayTransform(pipeline.windows[0], invert=False)  # all it knows


def test_volume_changed_in_place_is_shown(volumes: dict[str, Volume]) -> None:
    """VolumeImage.modified() (the array edited in place) reaches the screen at the next render."""
    volume = build_volume(_ct()[:4])
    scene, vp = _viewport_showing_slice(volume, 1, Window(40.0, 400.0))
    try:
        centres = _voxel_centres(volume, 1)[40:56, 40:56].reshape(-1, 3)
        before = _screen_at(vp, centres)
        volume.array[1, 40:56, 40:56] = 1000  # white in this window
        scene.data.modified()
        assert (_screen_at(vp, centres) == 255).all() and (before != 255).any()
    finally:
        scene.close()
