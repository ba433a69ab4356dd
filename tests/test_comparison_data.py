"""The comparison patient of the generator (hilum.dicom.generator.write_comparison_patient):
one patient, a current CT and three priors, prior 2 in another Frame of Reference whose
anatomy is the current one moved by a known rigid transform."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pydicom
import pytest

from hilum.dicom.generator import ComparisonSet, rigid_matrix, transform_points, write_comparison_patient

TODAY = dt.date(2026, 12, 6)


@pytest.fixture(scope="module")
def cmp_set(tmp_path_factory: pytest.TempPathFactory) -> ComparisonSet:
    return write_comparison_patient(tmp_path_factory.mktemp("cmp"), rows=96, slices=60, today=TODAY)


def _hu_volume(paths: tuple[Path, ...]) -> tuple[np.ndarray, np.ndarray]:
    """HU values (N, rows, cols) and, per voxel, patient coordinates (N, rows, cols, 3)."""
    values, points = [], []
    for p in paths:
        ds = pydicom.dcmread(p)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)
        r = np.arange(ds.Rows)[:, None, None] * dr
        c = np.arange(ds.Columns)[None, :, None] * dc
        values.append(hu)
        points.append(ipp + c * iop[:3] + r * iop[3:])
    return np.stack(values), np.stack(points)


def test_the_set_is_one_patient_with_four_studies(cmp_set: ComparisonSet) -> None:
    studies = cmp_set.studies
    assert [s.name for s in studies] == ["current", "prior1", "prior2", "prior3"]
    assert [s.study_date for s in studies] == ["20261206", "20251206", "20241206", "20231206"]
    assert len({s.study_uid for s in studies}) == 4
    assert len({s.series_uid for s in studies}) == 4
    assert [s.modality for s in studies] == ["CT", "CT", "CT", "MR"]
    assert [s.body_part for s in studies] == ["CHEST", "CHEST", "CHEST", "HEAD"]
    # Prior 1 shares the current Frame of Reference, prior 2 has its own.
    assert cmp_set.prior1.frame_of_reference_uid == cmp_set.current.frame_of_reference_uid
    assert cmp_set.prior2.frame_of_reference_uid != cmp_set.current.frame_of_reference_uid
    assert len(cmp_set.current.paths) == len(cmp_set.prior2.paths) == 60
    for s in studies:
        for p in (s.paths[0], s.paths[-1]):
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            assert ds.PatientID == cmp_set.patient_id == "CMP-0001"
            assert ds.StudyInstanceUID == s.study_uid
            assert ds.SeriesInstanceUID == s.series_uid
            assert ds.FrameOfReferenceUID == s.frame_of_reference_uid
            assert ds.StudyDate == s.study_date
            assert ds.BodyPartExamined == s.body_part
            assert ds.Modality == s.modality
    assert all(p.is_file() for p in cmp_set.paths)


def test_true_matrix_is_rigid_and_undoes_the_motion(cmp_set: ComparisonSet) -> None:
    m = cmp_set.matrix()
    r = m[:3, :3]
    assert np.allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(r), 1.0)
    motion = rigid_matrix((0.0, 0.0, 6.0), (12.0, -8.0, 15.0))
    assert np.allclose(m @ motion, np.eye(4), atol=1e-12)
    # 6 degrees about z, the phantom's origin moved by the shift.
    angle = np.degrees(np.arccos((np.trace(r) - 1) / 2))
    assert angle == pytest.approx(6.0, abs=1e-9)
    assert np.allclose(transform_points(np.array([12.0, -8.0, 15.0]), m), [0, 0, 0], atol=1e-5)


@pytest.mark.parametrize("name", ["nodule_20mm", "landmark_a", "landmark_c"])
def test_sphere_of_prior2_maps_to_the_current_one(cmp_set: ComparisonSet, name: str) -> None:
    sphere = next(s for s in cmp_set.phantom.spheres if s.name == name)
    m = cmp_set.matrix()
    expected_prior2 = transform_points(np.asarray(sphere.centre), np.linalg.inv(m))
    hu, pts = _hu_volume(cmp_set.prior2.paths)
    near = np.linalg.norm(pts - expected_prior2, axis=-1) <= sphere.radius + 6.0
    inside = near & (np.abs(hu - sphere.hu) < 45.0)
    assert inside.sum() > 20
    centroid = pts[inside].mean(axis=0)  # measured in prior 2's patient coordinates
    mapped = m[:3, :3] @ centroid + m[:3, 3]
    # Within half a voxel (3.75 mm pixels, 2.5 mm slices) of the true current centre.
    assert np.linalg.norm(mapped - np.asarray(sphere.centre)) < 1.5
    # And the same sphere in the current study sits at its centre, unmoved.
    hu0, pts0 = _hu_volume(cmp_set.current.paths)
    near0 = np.linalg.norm(pts0 - np.asarray(sphere.centre), axis=-1) <= sphere.radius + 6.0
    inside0 = near0 & (np.abs(hu0 - sphere.hu) < 45.0)
    assert np.linalg.norm(pts0[inside0].mean(axis=0) - np.asarray(sphere.centre)) < 1.5


def test_same_arguments_same_uids(cmp_set: ComparisonSet, tmp_path: Path) -> None:
    again = write_comparison_patient(tmp_path, rows=32, slices=4, today=TODAY)
    assert [s.study_uid for s in again.studies] == [s.study_uid for s in cmp_set.studies]
    assert [s.frame_of_reference_uid for s in again.studies] == [s.frame_of_reference_uid for s in cmp_set.studies]


def test_lungs_end_at_their_base_on_both_paths() -> None:
    """The lung base of the phantom: the axial fast path and the per-pixel path agree."""
    from hilum.dicom.generator import COMPARISON_PHANTOM, ct_slices, stack_geometry
    from hilum.dicom.generator.phantom import LUNG, SOFT_TISSUE

    base = COMPARISON_PHANTOM.lung_base_z
    assert base is not None
    lung = COMPARISON_PHANTOM.landmarks["lung"]
    assert COMPARISON_PHANTOM.labels(np.array([lung[0], lung[1], base + 1.0])) == LUNG
    assert COMPARISON_PHANTOM.labels(np.array([lung[0], lung[1], base - 1.0])) == SOFT_TISSUE
    g = stack_geometry(rows=48, columns=48, slices=12, fov=360.0, spacing=5.0, centre=(0.0, 0.0, base))
    fast = np.stack(list(ct_slices(g, COMPARISON_PHANTOM, noise_sigma=0.0)))
    slow = np.stack(list(ct_slices(g, COMPARISON_PHANTOM, noise_sigma=0.0, phantom_transform=np.eye(4))))
    assert np.array_equal(fast, slow)
    assert (fast == -850 + 1024).any() and (fast[0] != -850 + 1024).all()
