"""Stack geometry (PS3.3 C.7.6.2.1.1): the viewer's stack in the one slice order, spacing, patient
coordinates, orientation letters, reference lines, enhanced multi-frame geometry."""

from __future__ import annotations

import random

import numpy as np
import pydicom
import pytest

from _viewer_data import FOV, STUDY, write_ct
from hilum.dicom.generator import AXIAL, CORONAL, SAGITTAL, generate_enhanced_ct, rotate_orientation
from hilum.dicom.geometry import (
    Direction,
    IssueKind,
    PlaneGeometry,
    Spacing,
    order_slices,
    orientation_letters,
    pixel_spacing_of,
    reference_line,
)
from hilum.dicom.stack import Stack, frames_from_dataset


def frames_of(paths):
    out = []
    for p in paths:
        out += frames_from_dataset(pydicom.dcmread(p, stop_before_pixels=True), str(p))
    return out


def test_pixel_to_patient_follows_the_image_plane_equation():
    g = PlaneGeometry.from_values(
        [-100.0, -50.0, 20.0], [1, 0, 0, 0, 1, 0], Spacing(0.5, 0.25, "PixelSpacing"), 100, 200
    )
    # column i moves along the row cosine by Pixel Spacing[1], row j along the column cosine by Pixel Spacing[0]
    assert np.allclose(g.to_patient(10, 4), [-100 + 10 * 0.25, -50 + 4 * 0.5, 20])
    x, y, d = g.to_image([-100 + 7 * 0.25, -50 + 3 * 0.5, 25.0])
    assert (x, y, d) == pytest.approx((7, 3, 5))
    assert np.allclose(g.normal, [0, 0, 1])
    assert np.allclose(g.centre, g.to_patient(99.5, 49.5))


@pytest.mark.parametrize("descending", [False, True])
def test_stack_ascends_along_the_normal_whichever_way_it_was_acquired(tmp_path, descending):
    paths = write_ct(tmp_path, slices=9, thickness=2.5, descending=descending)
    frames = frames_of(paths)
    shuffled = frames[:]
    random.Random(4).shuffle(shuffled)
    stack = Stack.from_frames(shuffled)
    assert stack.sort_method == "position"
    z = [f.geometry.origin[2] for f in stack.frames]
    assert np.allclose(np.diff(z), 2.5)  # feet to head, for a head-first and a feet-first acquisition alike
    numbers = [f.instance_number for f in stack.frames]
    assert numbers == (list(range(9, 0, -1)) if descending else list(range(1, 10)))
    assert stack.spacing == pytest.approx(2.5)
    assert stack.uniform
    assert np.allclose(stack.positions, z)  # the normal of an axial stack is +z
    # the other policies stay available as a parameter
    acquisition = order_slices(shuffled, direction=Direction.ACQUISITION)
    assert [f.instance_number for f in acquisition] == list(range(1, 10))
    descending_order = order_slices(shuffled, direction="descending")
    assert [f.key for f in descending_order] == [f.key for f in reversed(stack.frames)]


def test_sort_ignores_misleading_instance_numbers(tmp_path):
    frames = frames_of(write_ct(tmp_path, slices=5))
    # instance numbers scrambled but positions true: spatial order wins
    nums = [1, 2, 4, 3, 5]
    frames = [type(f)(**{**f.__dict__, "instance_number": n}) for f, n in zip(frames, nums, strict=True)]
    order = order_slices(frames)
    z = [f.geometry.origin[2] for f in order]
    assert order.method == "position" and z == sorted(z)


def test_gaps_make_a_stack_non_uniform(tmp_path):
    frames = frames_of(write_ct(tmp_path, slices=6))
    del frames[3]
    stack = Stack.from_frames(frames)
    assert stack.spacing == pytest.approx(5.0)
    assert not stack.uniform
    assert stack.order.has(IssueKind.MISSING_SLICES)


def test_without_geometry_sorted_by_instance_number(tmp_path):
    frames = frames_of(write_ct(tmp_path, slices=4))
    frames = [type(f)(**{**f.__dict__, "geometry": None}) for f in reversed(frames)]
    order = order_slices(frames)
    assert order.method == "instance" and [f.instance_number for f in order] == [1, 2, 3, 4]


def test_a_localizer_in_the_series_is_left_out_of_the_stack(tmp_path):
    axial = frames_of(write_ct(tmp_path / "a", slices=6))
    coronal = frames_of(write_ct(tmp_path / "c", slices=1, orientation=CORONAL, series_number=2))
    stack = Stack.from_frames(coronal + axial)
    assert len(stack) == 6 and list(stack.excluded) == coronal
    assert [i.kind for i in stack.issues] == [IssueKind.MIXED_ORIENTATION]


def test_nearest_index_by_patient_position(tmp_path):
    stack = Stack.from_frames(frames_of(write_ct(tmp_path, slices=8, thickness=5.0)))
    target = stack.frames[5].geometry.centre + np.array([3.0, -2.0, 1.0])
    assert stack.nearest_index(target) == 5
    assert stack.nearest_index(target + np.array([0, 0, 500.0])) is None


def test_orientation_letters():
    assert orientation_letters([1, 0, 0]) == "L"
    assert orientation_letters([-1, 0, 0]) == "R"
    assert orientation_letters([0, 1, 0]) == "P"
    assert orientation_letters([0, 0, -1]) == "F"
    assert orientation_letters([0.8, -0.6, 0]) == "LA"
    assert orientation_letters([0.999, 0.01, 0]) == "L"  # below the obliquity threshold


def test_reference_line_of_an_axial_slice_on_a_coronal_localizer(tmp_path):
    rows = 64
    axial = Stack.from_frames(frames_of(write_ct(tmp_path / "ax", slices=8, thickness=5.0, rows=rows)))
    loc = frames_of(write_ct(tmp_path / "loc", slices=1, rows=rows, orientation=CORONAL, series_number=2))[0]
    src = axial.frames[2].geometry
    line = reference_line(loc.geometry, src)
    assert line is not None
    (x0, y0), (x1, y1) = line
    # a horizontal line on the coronal image at the row of the axial slice's z
    z = src.origin[2]
    g = loc.geometry
    expected_row = (z - g.origin[2]) / (-g.row_spacing)
    assert y0 == pytest.approx(expected_row) and y1 == pytest.approx(expected_row)
    # clipped to both images (same field of view): the whole width
    assert sorted([x0, x1]) == pytest.approx([-0.5, rows - 0.5])
    # parallel planes have no reference line
    assert reference_line(axial.frames[0].geometry, src) is None
    # a sagittal plane cuts the axial image along a vertical line at x = 0 (the middle column)
    sag = frames_of(write_ct(tmp_path / "sag", slices=1, rows=rows, orientation=SAGITTAL, series_number=3))[0]
    (sx0, _), (sx1, _) = reference_line(src, sag.geometry)
    assert sx0 == pytest.approx((rows - 1) / 2) and sx1 == pytest.approx((rows - 1) / 2)


def test_oblique_reference_line_lies_in_both_planes(tmp_path):
    axial = frames_of(write_ct(tmp_path / "ax", slices=1))[0].geometry
    obl = frames_of(write_ct(tmp_path / "ob", slices=1, orientation=rotate_orientation(CORONAL, "x", 20),
                             series_number=2))[0].geometry  # fmt: skip
    (x0, y0), (x1, y1) = reference_line(axial, obl)
    for x, y in ((x0, y0), (x1, y1)):
        p = axial.to_patient(x, y)
        assert abs(obl.distance(p)) < 1e-6


def test_enhanced_ct_per_frame_geometry():
    ds = generate_enhanced_ct(STUDY, rows=32, columns=32, frames=6, slice_thickness=3.0, seed=1)
    frames = frames_from_dataset(ds, "enh.dcm")
    assert len(frames) == 6
    assert all(f.geometry is not None for f in frames)
    stack = Stack.from_frames(frames)
    assert stack.spacing == pytest.approx(3.0)
    assert stack.frames[0].spacing.source == "PixelSpacing"
    assert stack.frames[0].slice_thickness == pytest.approx(3.0)


def test_spacing_prefers_pixel_spacing_and_notes_imager_spacing():
    ds = pydicom.Dataset()
    ds.ImagerPixelSpacing = [0.2, 0.2]
    sp = pixel_spacing_of(ds)
    assert sp.source == "ImagerPixelSpacing" and "detector" in sp.note and sp.unit == "mm"
    ds.PixelSpacing = [0.15, 0.16]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    sp = pixel_spacing_of(ds)
    assert (sp.row, sp.column, sp.source) == (0.15, 0.16, "PixelSpacing") and "geometry" in sp.note
    assert pixel_spacing_of(pydicom.Dataset()).unit == "px"


def test_pixel_spacing_is_fov_over_matrix(tmp_path):
    f = frames_of(write_ct(tmp_path, slices=1, rows=64))[0]
    assert f.spacing.row == pytest.approx(FOV / 64) and f.spacing.column == pytest.approx(FOV / 64)
    assert np.allclose(f.geometry.row_dir, AXIAL[:3])
