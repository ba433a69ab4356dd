"""Viewer slice k is MPR volume slice k: the same SOP Instance and frame, the same pixels.

Each case is a series written to files, acquired the usual way for a CT
(head first: Instance Number 1 at the head, positions descending) unless it
says otherwise. The 2D viewer's stack (:func:`load_series_sync`, files in
shuffled order) is compared with the MPR volume built from the same files
(:func:`build_volume`, what the MPR window does on its own) and with the one
the viewer hands to the MPR (:func:`volume_from_series`).

Only the first-order helpers of both the old and the new code are used up to
the first check, so these tests fail on the code from before the one slice
order (where the viewer followed the acquisition direction and kept
duplicates while the volume sorted ascending and dropped them) for the reason
they are about, not for a missing name.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from hilum.dicom.generator import (
    AXIAL,
    DOE,
    SAGITTAL,
    generate_ct_series,
    generate_enhanced_ct,
    make_study,
    rotate_orientation,
    write_dataset,
)
from hilum.dicom.generator.people import deterministic_uid
from hilum.dicom.stack_load import load_series_sync
from hilum.dicom.volume import build_volume

STUDY = make_study(DOE, accession="IDENT-1", seed="slice-identity")
ROWS = 40
FOV = 120.0


def ct(slices: int = 12, *, head_first: bool = True, **kw: object) -> list[Dataset]:
    kw = {"rows": ROWS, "columns": ROWS, "fov": FOV, "slice_thickness": 2.0, "noise_sigma": 0.0, **kw}
    return generate_ct_series(STUDY, slices=slices, descending=head_first, **kw)  # type: ignore[arg-type]


def _new_uid(ds: Dataset, tag: str) -> None:
    ds.SOPInstanceUID = deterministic_uid(ds.SOPInstanceUID, tag)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def case_head_first() -> list[Dataset]:
    return ct()


def case_feet_first() -> list[Dataset]:
    return ct(head_first=False)


def case_duplicate_positions() -> list[Dataset]:
    """A second phase of four slices at positions of the first (new SOP Instances, other pixels)."""
    first = ct(10)
    second = []
    for ds in ct(10)[3:7]:
        _new_uid(ds, "phase-2")
        ds.InstanceNumber = int(ds.InstanceNumber) + 100
        ds.PixelData = (np.frombuffer(ds.PixelData, dtype="<i2") + 200).astype("<i2").tobytes()
        second.append(ds)
    return first + second


def case_enhanced_per_frame() -> list[Dataset]:
    """An Enhanced CT whose frames run head first, with Pixel Measures per frame (overriding the shared)."""
    ds = generate_enhanced_ct(STUDY, rows=ROWS, columns=ROWS, frames=12, fov=FOV, slice_thickness=2.0,
                              series_number=5)  # fmt: skip
    frames = ds.PerFrameFunctionalGroupsSequence
    pixels = ds.pixel_array[::-1].copy()
    items = list(frames)[::-1]  # frame 1 now holds the top slice's position and pixels
    shared_measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    for k, item in enumerate(items):
        item.FrameContentSequence[0].InStackPositionNumber = k + 1
        measures = Dataset()
        measures.PixelSpacing = shared_measures.PixelSpacing
        measures.SliceThickness = shared_measures.SliceThickness
        item.PixelMeasuresSequence = DicomSequence([measures])
    shared_measures.PixelSpacing = ["9", "9"]  # wrong on purpose: the per-frame item wins (C.7.6.16)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    ds.PixelData = pixels.astype("<u2" if ds.PixelRepresentation == 0 else "<i2").tobytes()
    return [ds]


def case_tilted_gantry() -> list[Dataset]:
    """Planes tilted 15 degrees about x, positions stepping straight down z (head first)."""
    tilt = 15.0
    orientation = rotate_orientation(AXIAL, "x", tilt)
    datasets = ct(12, orientation=orientation)
    u, v = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    px = FOV / ROWS
    for k, ds in enumerate(datasets):
        centre = np.array([0.0, 0.0, ((len(datasets) - 1) / 2 - k) * 2.0])
        ipp = centre - (ROWS - 1) / 2 * px * u - (ROWS - 1) / 2 * px * v
        ds.ImagePositionPatient = [f"{x:.6f}" for x in ipp]
        ds.GantryDetectorTilt = f"{tilt:g}"
    return datasets


def case_mixed_orientations() -> list[Dataset]:
    """Two sagittal images in the axial series (a localizer saved with it)."""
    axial = ct(10)
    sagittal = ct(2, orientation=SAGITTAL, series_number=9)
    for k, ds in enumerate(sagittal):
        ds.SeriesInstanceUID = axial[0].SeriesInstanceUID
        ds.InstanceNumber = 50 + k
    return axial + sagittal


def case_missing_positions() -> list[Dataset]:
    """Two images without Image Position (Patient): out of the stack, and a gap in it."""
    datasets = ct(12)
    for ds in datasets[4:6]:
        del ds.ImagePositionPatient
    return datasets


CASES: dict[str, Callable[[], list[Dataset]]] = {
    "head-first": case_head_first,
    "feet-first": case_feet_first,
    "duplicate-positions": case_duplicate_positions,
    "enhanced-per-frame": case_enhanced_per_frame,
    "tilted-gantry": case_tilted_gantry,
    "mixed-orientations": case_mixed_orientations,
    "missing-positions": case_missing_positions,
}


def key(frame) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    return (frame.sop_instance_uid, frame.frame)


def pos(frame) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Image Position (Patient) of a viewer frame or a volume slice."""
    g = getattr(frame, "geometry", None)
    return np.asarray(g.origin if g is not None else frame.position, dtype=np.float64)


def volume_plane(volume, m: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The volume's plane through its source slice *m* (at a whole k, also in a resampled volume)."""
    k = float(volume.world_to_voxel(pos(volume.slices[m]))[2])
    assert abs(k - round(k)) < 1e-6, k
    return volume.array[int(round(k))]


def first_at_each_position(frames) -> list[int]:  # type: ignore[no-untyped-def]
    """Indices of the frames that start a new position along the stack (duplicates are adjacent)."""
    out = []
    for k, f in enumerate(frames):
        if not out or np.linalg.norm(pos(f) - pos(frames[out[-1]])) > 1e-2:
            out.append(k)
    return out


def assert_viewer_k_is_volume_k(viewer, volume) -> None:  # type: ignore[no-untyped-def]
    frames = viewer.stack.frames
    unique = first_at_each_position(frames)
    # volume slice m is viewer slice unique[m]: the same SOP Instance and frame, the same pixels
    assert [key(s) for s in volume.slices] == [key(frames[k]) for k in unique]
    for m, k in enumerate(unique):
        np.testing.assert_array_equal(volume_plane(volume, m), viewer.modality_values(k))
    if len(unique) == len(frames):  # no duplicates: the two indices are one
        assert len(volume.slices) == len(frames)
    # every viewer slice maps onto the volume slice at its position, and back through the MPR cursor
    for k, f in enumerate(frames):
        m = viewer.stack.volume_index(k)
        assert key(volume.slices[m]) == key(frames[unique[m]])
        np.testing.assert_allclose(pos(volume.slices[m]), pos(f), atol=1e-2)
        idx, ref = volume.nearest_source_slice(f.geometry.centre)
        assert idx == m and key(ref) == key(frames[unique[m]])


@pytest.mark.parametrize("case", sorted(CASES))
def test_viewer_slice_k_is_mpr_volume_slice_k(tmp_path: Path, case: str) -> None:
    datasets = CASES[case]()
    paths = [write_dataset(ds, tmp_path / f"{i:03d}.dcm") for i, ds in enumerate(datasets)]
    shuffled = paths[:]
    random.Random(7).shuffle(shuffled)
    viewer = load_series_sync(shuffled, executor="serial")
    assert viewer.complete and not viewer.errors
    from_files = build_volume(paths)
    assert_viewer_k_is_volume_k(viewer, from_files)

    from hilum.dicom.volume import volume_from_series

    handed = volume_from_series(viewer)  # the viewer's own stack, handed to the MPR
    assert_viewer_k_is_volume_k(viewer, handed)
    np.testing.assert_allclose(handed.affine, from_files.affine, atol=1e-9)
    np.testing.assert_array_equal(handed.array, from_files.array)
    assert handed.array.dtype == from_files.array.dtype
    assert [i.kind for i in handed.issues] == [i.kind for i in from_files.issues]


def test_the_cases_are_what_they_say(tmp_path: Path) -> None:
    """Each case has the irregularity it is named after (so the test above covers them)."""
    from hilum.dicom.geometry import IssueKind

    expect = {
        "head-first": set(),
        "feet-first": set(),
        "duplicate-positions": {IssueKind.DUPLICATE_POSITION},
        "enhanced-per-frame": set(),
        "tilted-gantry": {IssueKind.GANTRY_TILT},
        "mixed-orientations": {IssueKind.MIXED_ORIENTATION},
        "missing-positions": {IssueKind.NO_GEOMETRY, IssueKind.MISSING_SLICES, IssueKind.RESAMPLED},
    }
    for case, kinds in expect.items():
        volume = build_volume(CASES[case]())
        assert {i.kind for i in volume.issues} == kinds, case
    enhanced = build_volume(case_enhanced_per_frame())
    np.testing.assert_allclose(enhanced.spacing[:2], FOV / ROWS)  # the per-frame Pixel Measures, not the shared 9 mm


def test_head_first_and_feet_first_page_alike(tmp_path: Path) -> None:
    """The order does not depend on the acquisition direction: the same anatomy at the same index."""
    head = load_series_sync([write_dataset(ds, tmp_path / "h" / f"{i}.dcm") for i, ds in enumerate(ct())],
                            executor="serial")  # fmt: skip
    feet = load_series_sync([write_dataset(ds, tmp_path / "f" / f"{i}.dcm") for i, ds in enumerate(ct(head_first=False))],
                            executor="serial")  # fmt: skip
    for k in range(len(head)):
        np.testing.assert_allclose(pos(head.stack.frames[k]), pos(feet.stack.frames[k]))
        np.testing.assert_array_equal(head.data[k], feet.data[k])
    assert [f.instance_number for f in head.stack.frames] == list(range(12, 0, -1))
    assert [f.instance_number for f in feet.stack.frames] == list(range(1, 13))
