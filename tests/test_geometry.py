"""The one geometry and slice-order module (hilum.dicom.geometry): planes from headers and functional
groups, the tolerances, and order_slices' order, duplicates, groups and issues."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from hilum.dicom import geometry
from hilum.dicom.generator import AXIAL, CORONAL, DOE, generate_enhanced_ct, make_study, rotate_orientation
from hilum.dicom.geometry import (
    ORIENTATION_TOLERANCE,
    POSITION_TOLERANCE,
    SLICE_DIRECTION,
    Direction,
    IssueKind,
    PlaneGeometry,
    Spacing,
    functional_group_item,
    image_orientation_of,
    image_position_of,
    normal_of,
    order_slices,
    slice_position,
    stack_id_of,
)

STUDY = make_study(DOE, accession="GEOM-1", seed="geometry")
PX = Spacing(0.5, 0.5, "PixelSpacing")


@dataclass(frozen=True)
class Item:
    """The least a frame needs to be ordered (what a prior registration would pass)."""

    geometry: PlaneGeometry | None
    instance_number: int | None
    sop_instance_uid: str
    frame: int = 0
    rows: int = 8
    columns: int = 8
    stack_id: str = ""
    slice_thickness: float | None = None
    slice_spacing: float | None = None


def plane(position, orientation=AXIAL, spacing: Spacing = PX, rows: int = 8) -> PlaneGeometry:  # type: ignore[no-untyped-def]
    return PlaneGeometry.from_values(position, orientation, spacing, rows, rows)


def axial_items(zs, numbers=None, **kw) -> list[Item]:  # type: ignore[no-untyped-def]
    numbers = numbers or list(range(1, len(zs) + 1))
    return [Item(plane((0.0, 0.0, z)), n, f"1.2.{n}", **kw) for z, n in zip(zs, numbers, strict=True)]


# --------------------------------------------------------------------------- planes and headers


def test_normal_and_position_along_it() -> None:
    np.testing.assert_allclose(normal_of(AXIAL), (0, 0, 1))
    np.testing.assert_allclose(normal_of(CORONAL), (0, 1, 0))  # row x column: posterior
    g = plane((3.0, -4.0, 12.5))
    assert slice_position(g) == pytest.approx(12.5)
    # one normal for two series in one Frame of Reference: positions compare directly
    tilted = plane((0.0, 0.0, 10.0), rotate_orientation(AXIAL, "x", 30))
    assert slice_position(tilted, normal=(0, 0, 1)) == pytest.approx(10.0)
    assert slice_position(tilted) == pytest.approx(10.0 * math.cos(math.radians(30)))
    with pytest.raises(ValueError):
        normal_of((1, 0, 0, 1, 0, 0))


def test_plane_of_a_classic_header_needs_position_orientation_and_spacing() -> None:
    ds = Dataset()
    ds.Rows, ds.Columns = 4, 6
    ds.ImagePositionPatient = ["1", "2", "3"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    assert PlaneGeometry.of(ds) is None  # no Pixel Spacing: not a plane in mm
    ds.PixelSpacing = ["0.5", "0.25"]
    g = PlaneGeometry.of(ds)
    assert g is not None and (g.row_spacing, g.col_spacing) == (0.5, 0.25)
    np.testing.assert_allclose(g.origin, (1, 2, 3))
    with pytest.warns(UserWarning):  # pydicom warns about the invalid DS, and keeps it
        ds.ImagePositionPatient = ["1", "2", "nan"]
    assert image_position_of(ds) is None and PlaneGeometry.of(ds) is None


def test_functional_groups_per_frame_wins_over_shared() -> None:
    ds = generate_enhanced_ct(STUDY, rows=16, columns=16, frames=4, slice_thickness=3.0)
    per_frame = ds.PerFrameFunctionalGroupsSequence
    shared = ds.SharedFunctionalGroupsSequence[0]
    assert functional_group_item(ds, 2, "PlanePositionSequence") is per_frame[2].PlanePositionSequence[0]
    assert functional_group_item(ds, 2, "PlaneOrientationSequence") is shared.PlaneOrientationSequence[0]
    assert functional_group_item(ds, 2, "NoSuchSequence") is None
    oblique = rotate_orientation(AXIAL, "y", 20)
    item = Dataset()
    item.ImageOrientationPatient = [f"{v:.6f}" for v in oblique]
    per_frame[1].PlaneOrientationSequence = DicomSequence([item])
    np.testing.assert_allclose(image_orientation_of(ds, 1), oblique, atol=1e-6)
    np.testing.assert_allclose(image_orientation_of(ds, 0), AXIAL)
    positions = [image_position_of(ds, f) for f in range(4)]
    assert [p[2] for p in positions] == pytest.approx([-4.5, -1.5, 1.5, 4.5])
    assert stack_id_of(ds, 3) == "1" and stack_id_of(pydicom.Dataset(), 0) == ""
    assert geometry.slice_thickness_of(ds, 0) == pytest.approx(3.0)


# --------------------------------------------------------------------------- the order


def test_the_workstation_orders_ascending_along_the_normal() -> None:
    assert SLICE_DIRECTION is Direction.ASCENDING
    head_first = axial_items([10.0, 8.0, 6.0, 4.0])  # Instance Number 1 at the head
    order = order_slices(head_first)
    assert [f.instance_number for f in order] == [4, 3, 2, 1]
    np.testing.assert_allclose(order.distances, [4, 6, 8, 10])
    np.testing.assert_allclose(order.step, (0, 0, 2))
    assert order.spacing == pytest.approx(2.0) and order.regular and order.issues == ()
    descending = order_slices(head_first, direction="descending")
    assert [f.instance_number for f in descending] == [1, 2, 3, 4]
    np.testing.assert_allclose(descending.step, (0, 0, -2))
    np.testing.assert_allclose(descending.positions, [10, 8, 6, 4])  # positions stay along the normal
    acquisition = order_slices(head_first, direction=Direction.ACQUISITION)
    assert acquisition.direction is Direction.DESCENDING and [f.instance_number for f in acquisition] == [1, 2, 3, 4]
    feet_first = axial_items([4.0, 6.0, 8.0, 10.0])
    assert order_slices(feet_first, direction=Direction.ACQUISITION).direction is Direction.ASCENDING


def test_duplicates_stay_adjacent_and_map_onto_one_volume_slice() -> None:
    items = axial_items([0.0, 2.0, 4.0, 6.0]) + axial_items([2.0, 4.0 + POSITION_TOLERANCE / 2], numbers=[7, 5])
    order = order_slices(items)
    assert [f.instance_number for f in order] == [1, 2, 7, 3, 5, 4]  # lowest Instance Number first at a position
    assert order.unique == (0, 1, 3, 5)
    assert order.volume_index == (0, 1, 1, 2, 2, 3)
    assert [f.instance_number for f in order.slices] == [1, 2, 3, 4]
    dup = next(i for i in order.issues if i.kind == IssueKind.DUPLICATE_POSITION)
    assert dup.excluded == 2
    assert order.regular  # the unique positions are evenly spaced
    # beyond the tolerance it is another position (here: an irregular one)
    apart = order_slices(axial_items([0.0, 2.0, 4.0, 6.0]) + axial_items([2.0 + 3 * POSITION_TOLERANCE], numbers=[9]))
    assert len(apart.unique) == 5 and apart.has(IssueKind.IRREGULAR_SPACING)


def test_orientation_tolerance_decides_the_stack() -> None:
    slightly = rotate_orientation(AXIAL, "x", math.degrees(ORIENTATION_TOLERANCE) * 0.5)
    clearly = rotate_orientation(AXIAL, "x", 5.0)
    items = axial_items([0.0, 2.0, 4.0])
    items.append(Item(plane((0.0, 0.0, 6.0), slightly), 4, "1.2.4"))
    items += [Item(plane((0.0, 0.0, z), clearly), n, f"1.3.{n}") for n, z in ((5, 0.0), (6, 5.0))]
    order = order_slices(items)
    assert [f.instance_number for f in order] == [1, 2, 3, 4]
    assert [f.instance_number for f in order.excluded] == [5, 6]
    assert [(i.kind, i.excluded) for i in order.issues] == [(IssueKind.MIXED_ORIENTATION, 2)]


def test_sizes_spacings_and_stacks_make_their_own_groups() -> None:
    items = axial_items([0.0, 2.0, 4.0, 6.0])
    items.append(Item(plane((0.0, 0.0, 8.0), rows=16), 5, "1.2.5", rows=16, columns=16))
    items.append(Item(plane((0.0, 0.0, 9.0), spacing=Spacing(0.6, 0.6, "PixelSpacing")), 6, "1.2.6"))
    items += [Item(plane((0.0, 0.0, z)), n, f"1.4.{n}", stack_id="2") for n, z in ((7, 0.0), (8, 2.0))]
    order = order_slices(items)
    assert [f.instance_number for f in order] == [1, 2, 3, 4]
    kinds = {i.kind: i.excluded for i in order.issues}
    assert kinds == {IssueKind.MIXED_SIZE: 2, IssueKind.MULTIPLE_STACKS: 2}
    second = order_slices(items, stack_id="2")
    assert [f.instance_number for f in second] == [7, 8]
    with pytest.raises(ValueError, match="Stack ID"):
        order_slices(items, stack_id="9")


def test_gaps_irregular_steps_and_a_single_slice() -> None:
    gappy = order_slices(axial_items([0.0, 2.0, 4.0, 10.0, 12.0]))
    missing = next(i for i in gappy.issues if i.kind == IssueKind.MISSING_SLICES)
    assert "2 slice(s) missing" in missing.message and not gappy.regular
    assert not gappy.has(IssueKind.IRREGULAR_SPACING)
    within = order_slices(axial_items([0.0, 2.0, 4.0 + 0.5 * geometry.SPACING_TOLERANCE * 2.0, 6.0]))
    assert within.regular
    one = order_slices([Item(plane((0.0, 0.0, 1.0)), 1, "1.2.1", slice_thickness=3.0, slice_spacing=2.5)])
    assert one.spacing == 2.5 and [i.kind for i in one.issues] == [IssueKind.SINGLE_SLICE]
    np.testing.assert_allclose(one.step, (0, 0, 2.5))


def test_gantry_tilt_is_measured_and_the_step_keeps_it() -> None:
    tilt = 12.0
    orientation = rotate_orientation(AXIAL, "x", tilt)
    items = [Item(plane((0.0, 0.0, 3.0 * k), orientation), 10 - k, f"1.2.{k}") for k in range(6)]
    order = order_slices(items)
    assert order.tilt_degrees == pytest.approx(tilt, abs=1e-6)
    np.testing.assert_allclose(order.step, (0, 0, 3.0), atol=1e-9)  # the table feed, obliquely to the planes
    assert order.spacing == pytest.approx(3.0 * math.cos(math.radians(tilt)))
    assert order.has(IssueKind.GANTRY_TILT) and order.regular
    assert [f.instance_number for f in order] == [10, 9, 8, 7, 6, 5]


def test_missing_geometry_is_left_out_or_ordered_by_instance_number() -> None:
    items = axial_items([0.0, 2.0, 4.0, 6.0]) + [Item(None, 3, "1.9.3"), Item(None, 1, "1.9.1")]
    order = order_slices(items)
    assert len(order) == 4 and [f.sop_instance_uid for f in order.excluded] == ["1.9.1", "1.9.3"]
    assert [i.kind for i in order.issues] == [IssueKind.NO_GEOMETRY]
    bare = order_slices([Item(None, 2, "b"), Item(None, None, "c"), Item(None, 1, "a", frame=1), Item(None, 1, "a")])
    assert bare.method == "instance" and bare.normal is None and bare.distances is None
    assert [(f.sop_instance_uid, f.frame) for f in bare] == [("a", 0), ("a", 1), ("b", 0), ("c", 0)]
    assert bare.unique == bare.volume_index == (0, 1, 2, 3)
    with pytest.raises(ValueError):
        order_slices([])


def test_the_order_does_not_depend_on_the_input_order() -> None:
    items = axial_items([0.0, 2.0, 4.0, 6.0, 8.0]) + axial_items([4.0, 8.0], numbers=[20, 21])
    reference = [(f.sop_instance_uid, f.frame) for f in order_slices(items)]
    rng = np.random.default_rng(3)
    for _ in range(5):
        shuffled = [items[i] for i in rng.permutation(len(items))]
        assert [(f.sop_instance_uid, f.frame) for f in order_slices(shuffled)] == reference
