"""Volumes from series (hilum.dicom.volume): geometry against SimpleITK on the same files,
the phantom's spheres at their known positions and sizes, and the reported irregularities."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from hilum.dicom.generator import (
    AXIAL,
    DEFAULT_SPHERES,
    DOE,
    OBLIQUE,
    SAGITTAL,
    Phantom,
    generate_ct_series,
    generate_enhanced_ct,
    generate_mr_series,
    make_study,
    rotate_orientation,
    write_dataset,
)
from hilum.dicom.generator.phantom import plane_points
from hilum.dicom.geometry import IssueKind, order_slices
from hilum.dicom.stack import frames_from_dataset
from hilum.dicom.volume import (
    Plane,
    Volume,
    VolumeError,
    build_volume,
    load_volume,
    volume_from_planes,
)

STUDY = make_study(DOE, accession="VOL1")
SMALL = dict(rows=128, columns=128, slices=64, fov=200.0, slice_thickness=1.0, noise_sigma=0.0)
"""128x128x64 axial CT, 1.5625 mm pixels, 1 mm slices: holds every default sphere whole."""


def small_ct(**overrides: object) -> list[Dataset]:
    return generate_ct_series(STUDY, **{**SMALL, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ct_volume() -> Volume:
    return build_volume(small_ct(descending=True))


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    return [write_dataset(ds, folder / f"{i:04d}.dcm") for i, ds in enumerate(datasets)]


# --------------------------------------------------------------------- blob measurement (shared with test_mpr)


def measure_blob(
    image: np.ndarray, spacing: float, threshold: float, *, above: bool = True
) -> tuple[float, float, float]:
    """``(column, row, diameter_mm)`` of the pixels beyond ``threshold`` in ``image``:
    centroid in pixels and the diameter of the circle of equal area."""
    mask = np.nan_to_num(image, nan=-1e9 if above else 1e9)
    mask = mask > threshold if above else mask < threshold
    area = float(mask.sum())
    assert area > 0, "no blob in the image"
    rows, cols = np.nonzero(mask)
    return float(cols.mean()), float(rows.mean()), 2.0 * math.sqrt(area / math.pi) * spacing


def sphere_threshold(name: str) -> float:
    """Half way between a sphere's HU and its surroundings (lung for the nodules, soft tissue for the lesion)."""
    sphere = next(s for s in DEFAULT_SPHERES if s.name == name)
    background = -850.0 if name.startswith("nodule") else 40.0
    return (sphere.hu + background) / 2


# --------------------------------------------------------------------- geometry against SimpleITK


def _sitk_series(folder: Path, series_uid: str):  # type: ignore[no-untyped-def]
    sitk = pytest.importorskip("SimpleITK")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_uid))
    return sitk, reader.Execute()


def _assert_same_geometry(vol: Volume, image, sitk) -> None:  # type: ignore[no-untyped-def]
    assert vol.size == tuple(image.GetSize())
    np.testing.assert_allclose(vol.spacing, image.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(vol.origin, image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(vol.direction, np.reshape(image.GetDirection(), (3, 3)), atol=1e-4)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(image))


@pytest.mark.parametrize(
    "kind",
    ["ct-descending", "mr-oblique", "mr-sagittal"],
)
def test_geometry_matches_simpleitk(tmp_path: Path, kind: str) -> None:
    if kind == "ct-descending":
        datasets = small_ct(rows=96, columns=80, slices=24, descending=True, centre=(5.0, -12.0, 30.0))
    elif kind == "mr-oblique":
        datasets = generate_mr_series(STUDY, rows=64, columns=72, slices=12, orientation=OBLIQUE, series_number=2)
    else:
        datasets = generate_mr_series(
            STUDY, rows=64, columns=64, slices=10, orientation=SAGITTAL, series_number=3, descending=True
        )
    paths = write_series(datasets[::-1], tmp_path)  # file order must not matter
    vol = load_volume(paths)
    assert vol.issues == ()
    sitk, image = _sitk_series(tmp_path, datasets[0].SeriesInstanceUID)
    _assert_same_geometry(vol, image, sitk)
    # the affine and its inverse agree with SimpleITK's index <-> physical point mapping
    for ijk in [(0, 0, 0), (3, 5, 7), (vol.size[0] - 1, vol.size[1] - 1, vol.size[2] - 1)]:
        np.testing.assert_allclose(vol.voxel_to_world(ijk), image.TransformIndexToPhysicalPoint(ijk), atol=1e-4)
    point = (1.5, -2.25, 3.0)
    np.testing.assert_allclose(
        vol.world_to_voxel(point), image.TransformPhysicalPointToContinuousIndex(point), atol=1e-4
    )


def test_enhanced_ct_matches_simpleitk_and_classic_series(tmp_path: Path) -> None:
    enhanced = generate_enhanced_ct(STUDY, rows=64, columns=64, frames=20, series_number=7)
    path = write_dataset(enhanced, tmp_path / "enhanced.dcm")
    vol = load_volume([path])
    assert vol.issues == ()
    assert len(vol.slices) == 20 and {r.frame for r in vol.slices} == set(range(20))
    sitk = pytest.importorskip("SimpleITK")
    _assert_same_geometry(vol, sitk.ReadImage(str(path)), sitk)
    classic = build_volume(generate_ct_series(STUDY, rows=64, columns=64, slices=20, slice_thickness=2.5))
    np.testing.assert_allclose(vol.affine, classic.affine, atol=1e-6)
    np.testing.assert_array_equal(vol.array, classic.array)
    assert vol.array.dtype == np.int16 and vol.rescale_type == "HU"


def test_enhanced_ct_from_dataset_in_memory() -> None:
    enhanced = generate_enhanced_ct(STUDY, rows=32, columns=32, frames=8)
    vol = build_volume(enhanced)
    assert vol.shape == (8, 32, 32)
    assert vol.window is not None and vol.window.center == 40.0


# --------------------------------------------------------------------- the phantom's spheres


def test_volume_values_in_hu(ct_volume: Volume) -> None:
    assert ct_volume.array.dtype == np.int16
    phantom = Phantom()
    for name, (x, y) in phantom.landmarks.items():
        if name == "cortical_bone" or not ct_volume.contains((x, y, -25.0)):
            continue
        value = float(ct_volume.sample((x, y, -25.0)))
        assert abs(value - phantom.hu(np.array([x, y, -25.0]))) < 1.0, name
    for sphere in DEFAULT_SPHERES:
        assert abs(float(ct_volume.sample(sphere.centre)) - sphere.hu) < 1.0


PLANES = {
    "axial": Plane.axial,
    "coronal": Plane.coronal,
    "sagittal": Plane.sagittal,
    "oblique": lambda c: Plane.from_orientation(OBLIQUE, c),
}


@pytest.mark.parametrize("plane_name", sorted(PLANES))
@pytest.mark.parametrize("sphere", DEFAULT_SPHERES, ids=lambda s: s.name)
def test_spheres_at_known_position_and_diameter(ct_volume: Volume, plane_name: str, sphere) -> None:  # type: ignore[no-untyped-def]
    plane = PLANES[plane_name](sphere.centre)
    n = 64
    image = ct_volume.reslice(plane, (n, n), 0.5)
    col, row, diameter = measure_blob(image, 0.5, sphere_threshold(sphere.name))
    found = plane.to_patient((col - (n - 1) / 2) * 0.5, (row - (n - 1) / 2) * 0.5)
    assert np.linalg.norm(found - np.asarray(sphere.centre)) < 0.5
    assert abs(diameter - sphere.diameter) < 1.0, (diameter, sphere.diameter)


def test_mip_slab_shows_whole_sphere(ct_volume: Volume) -> None:
    sphere = DEFAULT_SPHERES[0]  # 20 mm
    plane = Plane.coronal(sphere.centre).rotated((0, 0, 1), 25).shifted(6.0)
    threshold = sphere_threshold(sphere.name)
    single = ct_volume.reslice(plane, (64, 64), 0.5)
    mip = ct_volume.reslice(plane, (64, 64), 0.5, slab=20.0, mode="mip")
    mean = ct_volume.reslice(plane, (64, 64), 0.5, slab=20.0, mode="mean")
    minip = ct_volume.reslice(plane, (64, 64), 0.5, slab=20.0, mode="minip")
    assert abs(measure_blob(single, 0.5, threshold)[2] - 2 * math.sqrt(10**2 - 6**2)) < 1.0
    assert abs(measure_blob(mip, 0.5, threshold)[2] - sphere.diameter) < 1.0
    assert np.nanmax(mean) < np.nanmax(mip) and np.nanmin(minip) <= np.nanmin(single)
    with pytest.raises(ValueError):
        ct_volume.reslice(plane, (8, 8), 1.0, slab=5.0, mode="sum")  # type: ignore[arg-type]


def test_outside_is_fill(ct_volume: Volume) -> None:
    assert np.isnan(ct_volume.sample((0.0, 0.0, 500.0)))
    assert not ct_volume.contains((0.0, 0.0, 500.0)) and ct_volume.contains((0.0, 0.0, 0.0))


# --------------------------------------------------------------------- world <-> voxel, planes


def test_world_voxel_round_trip_oblique() -> None:
    vol = build_volume(generate_mr_series(STUDY, rows=32, columns=40, slices=6, orientation=OBLIQUE))
    rng = np.random.default_rng(1)
    ijk = rng.uniform(0, 30, size=(50, 3))
    np.testing.assert_allclose(vol.world_to_voxel(vol.voxel_to_world(ijk)), ijk, atol=1e-9)
    assert vol.is_orthogonal
    np.testing.assert_allclose(vol.normal, np.cross(OBLIQUE[:3], OBLIQUE[3:]), atol=1e-6)


def test_oblique_plane_maps_both_ways() -> None:
    plane = Plane.axial((10.0, -20.0, 5.0)).rotated((1, 0, 0), 30).rotated((0, 0, 1), -15)
    points = np.array([[3.0, 4.0, 0.0], [-12.5, 7.25, 2.0]])
    patient = plane.to_patient(points[:, 0], points[:, 1], points[:, 2])
    np.testing.assert_allclose(plane.to_plane(patient), points, atol=1e-12)
    np.testing.assert_allclose(plane.matrix()[:3, :3].T @ plane.matrix()[:3, :3], np.eye(3), atol=1e-12)


def test_orientation_letters() -> None:
    assert Plane.axial().edge_letters() == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert Plane.coronal().edge_letters() == {"left": "R", "right": "L", "top": "H", "bottom": "F"}
    assert Plane.sagittal().edge_letters() == {"left": "A", "right": "P", "top": "H", "bottom": "F"}
    oblique = Plane.coronal().rotated((0, 0, 1), 10.0).edge_letters()
    assert oblique["right"] == "LP" and oblique["top"] == "H"  # 10 degrees is enough for a second letter


def test_nearest_source_slice(ct_volume: Volume) -> None:
    idx, ref = ct_volume.nearest_source_slice((0.0, 0.0, 3.2))  # type: ignore[misc]
    assert ref.position is not None and abs(ref.position[2] - 3.5) < 1e-6
    assert ct_volume.slices[idx] is ref


# --------------------------------------------------------------------- irregular stacks


def test_missing_slices_are_reported_and_resampled() -> None:
    datasets = small_ct(slices=32, centre=(0.0, 0.0, -4.0))
    del datasets[10:12]
    vol = build_volume(datasets)
    kinds = [i.kind for i in vol.issues]
    assert IssueKind.MISSING_SLICES in kinds and IssueKind.RESAMPLED in kinds
    assert "2 slice(s) missing" in next(i.message for i in vol.issues if i.kind == IssueKind.MISSING_SLICES)
    assert vol.shape[0] == 32 and np.allclose(vol.spacing[2], 1.0)
    assert vol.source_distances is not None and len(vol.source_distances) == 30
    sphere = DEFAULT_SPHERES[0]
    assert abs(float(vol.sample(sphere.centre)) - sphere.hu) < 1.0
    unregular = build_volume(datasets, regularize=False)
    assert unregular.shape[0] == 30 and IssueKind.RESAMPLED not in [i.kind for i in unregular.issues]


def test_irregular_spacing_is_reported() -> None:
    datasets = small_ct(slices=16, slice_thickness=2.0)
    pos = [float(v) for v in datasets[5].ImagePositionPatient]
    datasets[5].ImagePositionPatient = [pos[0], pos[1], pos[2] + 0.7]
    stack = order_slices(f for ds in datasets for f in frames_from_dataset(ds))
    assert stack.has(IssueKind.IRREGULAR_SPACING) and not stack.regular
    assert not stack.has(IssueKind.MISSING_SLICES)


def tilted_ct(tilt_deg: float, slices: int = 24, spacing: float = 2.0) -> list[Dataset]:
    """An axial CT acquired with the gantry tilted by ``tilt_deg`` about x: the image planes
    are tilted, but successive slices step straight along z (the table feed)."""
    phantom = Phantom()
    orientation = rotate_orientation(AXIAL, "x", tilt_deg)
    datasets = small_ct(slices=slices, slice_thickness=spacing, orientation=orientation)
    u, v = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    rows, cols, px = 128, 128, 200.0 / 128
    for k, ds in enumerate(datasets):
        centre = np.array([0.0, 0.0, (k - (slices - 1) / 2) * spacing])
        ipp = centre - (cols - 1) / 2 * px * u - (rows - 1) / 2 * px * v
        ds.ImagePositionPatient = [f"{x:.6f}" for x in ipp]
        ds.GantryDetectorTilt = f"{tilt_deg:g}"
        hu = phantom.hu(plane_points(ipp, u, v, rows, cols, (px, px)))
        ds.PixelData = (np.rint(hu) + 1024).astype("<i2").tobytes()
    return datasets


def test_gantry_tilt_gives_sheared_affine_in_true_position() -> None:
    vol = build_volume(tilted_ct(15.0))
    tilt = next(i for i in vol.issues if i.kind == IssueKind.GANTRY_TILT)
    assert "15.00 degrees" in tilt.message
    assert not vol.is_orthogonal
    np.testing.assert_allclose(vol.affine[:3, 2], [0.0, 0.0, 2.0], atol=1e-5)  # steps along z
    for sphere in DEFAULT_SPHERES:
        assert abs(float(vol.sample(sphere.centre)) - sphere.hu) < 1.0, sphere.name
    straight = vol.deskewed()
    assert straight.is_orthogonal
    for sphere in DEFAULT_SPHERES[:2]:
        assert abs(float(straight.sample(sphere.centre)) - sphere.hu) < 40.0, sphere.name


def test_mixed_orientations_duplicates_and_sizes_are_left_out() -> None:
    axial = small_ct(slices=20)
    sagittal = small_ct(slices=3, orientation=SAGITTAL, series_number=2)
    duplicate = small_ct(slices=2, series_number=3)
    other_size = small_ct(slices=2, rows=64, columns=64, centre=(0.0, 0.0, 40.0), series_number=4)
    stack = order_slices(f for ds in axial + sagittal + duplicate + other_size for f in frames_from_dataset(ds))
    kinds = {i.kind: i for i in stack.issues}
    assert kinds[IssueKind.MIXED_ORIENTATION].excluded == 3
    assert kinds[IssueKind.DUPLICATE_POSITION].excluded == 2
    assert kinds[IssueKind.MIXED_SIZE].excluded == 2
    assert len(stack.slices) == 20 and len(stack.excluded) == 5
    assert len(stack) == 22  # the stack keeps both images at the two shared positions, the volume one
    assert stack.regular
    vol = build_volume(axial + sagittal + duplicate + other_size)
    assert vol.shape[0] == 20 and [f.key for f in vol.slices] == [f.key for f in stack.slices]


def test_single_slice_and_no_geometry() -> None:
    one = build_volume(small_ct(slices=1))
    assert one.shape == (1, 128, 128) and one.spacing[2] == pytest.approx(1.0)
    assert [i.kind for i in one.issues] == [IssueKind.SINGLE_SLICE]
    assert np.isfinite(one.sample((0.0, 0.0, 0.0)))
    bare = small_ct(slices=2)
    for ds in bare:
        del ds.ImagePositionPatient
    with pytest.raises(VolumeError):
        build_volume(bare)


def test_float_volume_for_fractional_rescale() -> None:
    datasets = small_ct(slices=4)
    for ds in datasets:
        ds.RescaleSlope = "0.5"
    vol = build_volume(datasets)
    assert vol.array.dtype == np.float32
    assert float(vol.sample((95.0, -95.0, 0.0))) == pytest.approx(0.5 * 24 - 1024, abs=0.01)


def test_volume_from_decoded_planes_equals_build_volume() -> None:
    datasets = small_ct(slices=12, descending=True)
    reference = build_volume(datasets)
    order = np.random.default_rng(5).permutation(len(datasets))
    planes = [datasets[i].pixel_array.astype(np.int32) - 1024 for i in order]
    vol = volume_from_planes(
        planes,
        [[float(v) for v in datasets[i].ImagePositionPatient] for i in order],
        [float(v) for v in datasets[0].ImageOrientationPatient],
        [float(v) for v in datasets[0].PixelSpacing],
        sop_instance_uids=[datasets[i].SOPInstanceUID for i in order],
        modality="CT",
    )
    np.testing.assert_allclose(vol.affine, reference.affine, atol=1e-9)
    np.testing.assert_array_equal(vol.array, reference.array)
    assert vol.array.dtype == np.int16
    assert [r.sop_instance_uid for r in vol.slices] == [r.sop_instance_uid for r in reference.slices]
    gappy = volume_from_planes(
        [p.astype(np.float32) + 0.5 for p in planes[:5]] + [p.astype(np.float32) for p in planes[6:]],
        [[float(v) for v in datasets[i].ImagePositionPatient] for i in list(order[:5]) + list(order[6:])],
        [float(v) for v in datasets[0].ImageOrientationPatient],
        [float(v) for v in datasets[0].PixelSpacing],
    )
    assert gappy.array.dtype == np.float32 and gappy.shape[0] in (11, 12)


def test_curved_mpr_keeps_arc_length_and_shows_the_sphere(ct_volume: Volume) -> None:
    sphere = DEFAULT_SPHERES[0]
    cx, cy, cz = sphere.centre
    # an L-shaped path in the axial plane of the sphere: 30 mm along -y to the centre, then 40 mm along +x
    path = [(cx, cy - 30.0, cz), (cx, cy, cz), (cx + 40.0, cy, cz)]
    image, points = ct_volume.curved_reslice(path, (0.0, 0.0, 1.0), width=40.0, spacing=0.5)
    assert image.shape == (141, 81)  # 70 mm of path every 0.5 mm, 40 mm across
    np.testing.assert_allclose(points[60, 40], sphere.centre, atol=1e-9)  # 30 mm along: the corner
    along = np.linalg.norm(np.diff(points[:, 40], axis=0), axis=1)
    assert np.allclose(along, 0.5, atol=1e-9)
    # the first leg runs straight at the sphere: its profile along the path is 20 mm of nodule
    profile = image[:60, 40]
    inside = profile > sphere_threshold(sphere.name)
    assert abs(inside.sum() * 0.5 - 10.0) <= 1.0  # the 10 mm before the centre
    with pytest.raises(ValueError):
        ct_volume.curved_reslice([(0, 0, 0), (0, 0, 10)], (0, 0, 1))


def test_downsampled_keeps_patient_geometry(ct_volume: Volume) -> None:
    small = ct_volume.downsampled((2, 2, 3))
    assert small.shape == (64 // 3, 64, 64) and small.array.dtype == np.int16
    np.testing.assert_allclose(small.voxel_to_world((0, 0, 0)), ct_volume.voxel_to_world((0.5, 0.5, 1.0)))
    np.testing.assert_allclose(small.spacing, ct_volume.spacing * (2, 2, 3))
    block = ct_volume.array[3:6, 40:42, 20:22].astype(np.float64).mean()
    assert small.array[1, 20, 10] == np.rint(block)
    sphere = DEFAULT_SPHERES[0]
    assert abs(float(small.sample(sphere.centre)) - sphere.hu) < 5.0
    f = ct_volume.factors_for(100_000)
    assert np.prod(np.asarray(ct_volume.size) // f) <= 100_000 and ct_volume.factors_for(10**9) == (1, 1, 1)


def test_volume_from_files_is_the_viewers_stack_and_strict(tmp_path: Path) -> None:
    """A series of files goes through the viewer's loader: the same volume as decoding each dataset whole;
    an unreadable file or an undecodable slice is an error there, an issue in the viewer's hand-off."""
    from hilum.dicom.geometry import IssueKind as Kind
    from hilum.dicom.stack_load import load_series_sync
    from hilum.dicom.volume import volume_from_series

    datasets = small_ct(slices=10, descending=True)
    paths = write_series(datasets, tmp_path / "ok")
    from_files, whole = load_volume(paths), build_volume(datasets)
    np.testing.assert_allclose(from_files.affine, whole.affine, atol=1e-9)
    np.testing.assert_array_equal(from_files.array, whole.array)
    assert [f.key for f in from_files.slices] == [f.key for f in whole.slices]

    junk = tmp_path / "ok" / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(VolumeError, match="cannot read 1 file"):
        load_volume([*paths, junk])
    junk.unlink()
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) - 1000])  # a slice whose pixel data is cut short
    with pytest.raises(VolumeError, match="could not be decoded"):
        load_volume(paths)
    series = load_series_sync(paths, executor="serial")
    lenient = volume_from_series(series)
    assert [i.kind for i in lenient.issues] == [Kind.UNDECODABLE] and lenient.shape == whole.shape


def test_volume_from_files_with_mixed_rescale_matches_the_datasets(tmp_path: Path) -> None:
    """The files path converts the loaded int16 buffer in place until a slice needs floats (here the
    sixth, Rescale Slope 0.5), then goes on in float32: the same values as decoding each dataset."""
    datasets = small_ct(slices=8, descending=True)
    datasets[5].RescaleSlope = "0.5"
    paths = write_series(datasets, tmp_path)
    from_files, whole = load_volume(paths), build_volume(datasets)
    assert from_files.array.dtype == whole.array.dtype == np.float32
    np.testing.assert_array_equal(from_files.array, whole.array)
    big = small_ct(slices=4)
    big[2].RescaleIntercept = "40000"  # beyond int16 after rescaling
    paths = write_series(big, tmp_path / "big")
    np.testing.assert_array_equal(load_volume(paths).array, build_volume(big).array)


def test_every_way_to_a_volume_carries_the_viewers_pipeline(tmp_path: Path) -> None:
    """Each slice of a volume carries its frame's grayscale pipeline as the viewer's loader reads it,
    whichever way the volume was built (files through the loader, one multi-frame file, data sets in
    memory): MPR takes its display from it (hilum.render.mpr.volume_display), so a MONOCHROME1 or
    SIGMOID series looks in MPR as in the 2D viewer however it arrived."""
    from hilum.dicom.pixels import GrayscalePipeline
    from hilum.dicom.stack_load import load_series_sync

    datasets = small_ct(slices=6, rows=32, columns=32)
    for ds in datasets:
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.VOILUTFunction = "SIGMOID"
    enhanced = generate_enhanced_ct(STUDY, rows=32, columns=32, frames=4, series_number=8)
    enhanced.PhotometricInterpretation = "MONOCHROME1"
    paths = write_series(datasets, tmp_path / "classic")
    one_file = write_dataset(enhanced, tmp_path / "enhanced.dcm")
    viewer = {f.key: f.pipeline for f in load_series_sync(paths, executor="serial").stack.frames}
    viewer |= {f.key: f.pipeline for f in load_series_sync([one_file], executor="serial").stack.frames}
    for name, volume in (
        ("files", load_volume(paths)),
        ("one file", load_volume([one_file])),
        ("datasets", build_volume(datasets)),
        ("a data set", build_volume(enhanced)),
    ):
        assert volume.slices, name
        for f in volume.slices:
            assert f.pipeline is not None and f.pipeline == viewer[f.key], (name, f.key)
            assert f.pipeline.invert, name
        source = {ds.SOPInstanceUID: ds for ds in (*datasets, enhanced)}[volume.slices[0].sop_instance_uid]
        assert volume.slices[0].pipeline == GrayscalePipeline.from_dataset(source, volume.slices[0].frame), name
    assert build_volume(datasets).slices[0].pipeline.default_voi().function == "SIGMOID"
