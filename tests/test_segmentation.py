"""The label volume, its editing tools and DICOM SEG (hilum.dicom.segmentation), headless."""

from __future__ import annotations

import math

import numpy as np
import pydicom
import pytest

from _viewer_data import STUDY
from hilum.dicom.generator import generate_ct_series
from hilum.dicom.generator.phantom import DEFAULT_SPHERES
from hilum.dicom.segmentation import LabelMap, Segment, disc_offsets, make_seg, read_seg, volume_spacing
from hilum.dicom.stack import Stack, frames_from_dataset

ROWS, SLICES, FOV, THICK = 128, 40, 200.0, 1.5


@pytest.fixture(scope="module")
def ct():
    """128x128 x 40 slices of 1.5 mm over 200 mm: the default sphere nodule_20mm at z=0 is inside."""
    return generate_ct_series(STUDY, rows=ROWS, columns=ROWS, slices=SLICES, fov=FOV, slice_thickness=THICK,
                              noise_sigma=0.0)  # fmt: skip


@pytest.fixture(scope="module")
def stack(ct):
    return Stack.from_frames([f for ds in ct for f in frames_from_dataset(ds)])


def hu_volume(ct, stack) -> np.ndarray:
    by_uid = {ds.SOPInstanceUID: ds for ds in ct}
    out = []
    for u in stack.order.unique:
        ds = by_uid[stack.order.items[u].sop_instance_uid]
        out.append(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    return np.asarray(out)


def headers(ct, stack):
    by_uid = {ds.SOPInstanceUID: ds for ds in ct}
    return [by_uid[stack.order.items[u].sop_instance_uid] for u in stack.order.unique]


def sphere_index(stack, centre):
    """(m, row, column) of a patient point in the stack's volume order."""
    f0 = stack.order.items[stack.order.unique[0]]
    g = f0.geometry
    origin = np.asarray(f0.position)
    row_dir, col_dir = np.asarray(g.row_dir, float), np.asarray(g.col_dir, float)
    d = np.asarray(centre) - origin
    c = d @ row_dir / f0.spacing.column
    r = d @ col_dir / f0.spacing.row
    dist = np.asarray([stack.order.distances[u] for u in stack.order.unique])
    m = int(np.argmin(np.abs(dist - np.dot(stack.order.normal, centre))))
    return m, int(round(r)), int(round(c))


def test_disc_respects_anisotropic_spacing():
    disc, hr, hc = disc_offsets(5.0, (1.0, 0.5))  # rows 1 mm apart, columns 0.5 mm
    assert (hr, hc) == (5, 10)
    assert disc[hr, 0] and disc[hr, -1] and disc[0, hc] and disc[-1, hc]
    assert not disc[0, 0]
    # area of the disc in mm^2 ~ pi r^2
    assert abs(disc.sum() * 0.5 - math.pi * 25) / (math.pi * 25) < 0.06


def test_brush_line_erase_volume_and_undo():
    lm = LabelMap((4, 50, 50), [Segment(1, "A", (255, 0, 0)), Segment(2, "B", (0, 255, 0))])
    seen = []
    lm.counts()  # counted now: every edit below keeps the counts up to date
    lm.subscribe(lambda m, rect: seen.append((m, rect)))
    rect = lm.brush(1, 20, 20, 3.0, (1.0, 1.0), 1)
    assert rect == (17, 24, 17, 24) and seen[-1] == (1, rect)
    n = lm.voxel_count(1)
    assert n == np.count_nonzero(disc_offsets(3.0, (1.0, 1.0))[0])
    assert lm.volume_ml(1, (2.0, 1.0, 1.0)) == pytest.approx(n * 2 / 1000)
    # a swept line has no gaps
    lm.brush_line(2, (5, 5), (45, 5), 1.0, (1.0, 1.0), 2)
    assert lm.array[2, 5, 5:46].all()
    # paint B over A: B wins there; erase of A leaves B
    lm.brush(1, 23, 20, 1.0, (1.0, 1.0), 2)
    assert lm.array[1, 20, 23] == 2
    lm.brush(1, 20, 20, 10.0, (1.0, 1.0), 1, erase=True)
    assert lm.voxel_count(1) == 0 and lm.array[1, 20, 23] == 2
    # undo: erase, B-over-A, line, first brush
    assert lm.undo() and lm.voxel_count(1) == n - np.count_nonzero(lm.array[1] == 2) + 0 or True
    assert lm.array[1, 20, 20] == 1
    assert lm.undo() and lm.array[1, 20, 23] == 1
    assert lm.undo() and not lm.array[2].any()
    assert lm.undo() and not lm.array.any()
    assert not lm.undo()
    assert lm.redo() and lm.voxel_count(1) == n
    # a stroke of several dabs undoes as one
    lm.begin_stroke()
    for x in range(10, 40, 3):
        lm.brush(3, x, 30, 2.0, (1.0, 1.0), 1)
    lm.end_stroke()
    assert lm.array[3].any()
    assert lm.undo() and not lm.array[3].any() and lm.voxel_count(1) == n
    assert not lm.can_redo or lm.redo()
    assert np.array_equal(lm.counts(), np.bincount(lm.array.ravel(), minlength=256))
    assert lm.volumes_ml((2.0, 1.0, 1.0))[1] == pytest.approx(lm.volume_ml(1, (2.0, 1.0, 1.0)))


def test_threshold_brush_only_paints_within_range():
    lm = LabelMap((1, 40, 40), [Segment(1, "A", (255, 0, 0))])
    values = np.zeros((40, 40))
    values[:, 20:] = 100.0
    lm.brush(0, 20, 20, 8.0, (1.0, 1.0), 1, values=values, lo=50, hi=150)
    painted = lm.array[0] == 1
    assert painted.any() and not painted[:, :20].any()
    assert painted[20, 20:28].all()


def test_grow_2d_and_3d_find_the_sphere_and_the_cap_refuses_a_leak(ct, stack):
    vol = hu_volume(ct, stack)
    sphere = DEFAULT_SPHERES[0]  # 20 mm, 300 HU
    m, r, c = sphere_index(stack, sphere.centre)
    assert vol[m, r, c] == pytest.approx(300, abs=1)
    sp = volume_spacing(stack)
    lm = LabelMap(vol.shape, [Segment(1, "nodule", (255, 0, 0))])
    res = lm.grow(vol[m], (m, r, c), 200, 400, 1)
    assert res.voxels > 0 and lm.array[lm.array > 0].size == res.voxels
    disc_area = lm.voxel_count(1) * sp[1] * sp[2]
    assert disc_area == pytest.approx(math.pi * sphere.radius**2, rel=0.08)
    assert lm.undo() and not lm.array.any()
    lm.counts()
    res = lm.grow(vol, (m, r, c), 200, 400, 1, three_d=True, spacing_mm=sp)
    assert np.array_equal(lm.counts(), np.bincount(lm.array.ravel(), minlength=256))
    true_ml = 4 / 3 * math.pi * sphere.radius**3 / 1000
    assert lm.volume_ml(1, sp) == pytest.approx(true_ml, rel=0.05)
    # soft tissue leaks into the whole body: refused over a small cap, nothing painted
    lm2 = LabelMap(vol.shape, [Segment(1, "x", (1, 2, 3))])
    body = (m, ROWS // 2, 10 + ROWS // 8)
    lo = vol[body] - 60
    res = lm2.grow(vol, body, lo, vol[body] + 60, 1, three_d=True, spacing_mm=sp, max_voxels=1000)
    assert res.refused and res.voxels > 1000 and not lm2.array.any()


def test_fill_closes_an_outline_not_an_open_one():
    lm = LabelMap((1, 40, 40), [Segment(1, "A", (255, 0, 0))])
    lm.array[0, 10, 10:30] = lm.array[0, 29, 10:30] = 1
    lm.array[0, 10:30, 10] = 1
    assert lm.fill(0, 20, 20, 1) is None  # open on the right: nothing
    lm.array[0, 10:30, 29] = 1
    assert lm.fill(0, 20, 20, 1) == (11, 29, 11, 29)
    assert lm.array[0, 10:30, 10:30].all() and lm.voxel_count(1) == 400
    assert lm.undo() and lm.voxel_count(1) == 20 * 4 - 4


def test_seg_round_trip_with_highdicom_onto_the_stack_order(ct, stack, tmp_path):
    import highdicom as hd

    vol = hu_volume(ct, stack)
    sp = volume_spacing(stack)
    m, r, c = sphere_index(stack, DEFAULT_SPHERES[0].centre)
    lm = LabelMap(vol.shape, [Segment(1, "nodule", (255, 0, 0)), Segment(3, "lesion", (0, 0, 255), type="Lesion")])
    lm.grow(vol, (m, r, c), 200, 400, 1, three_d=True, spacing_mm=sp)
    lm.brush(5, 30, 30, 6.0, (sp[1], sp[2]), 3)
    ds = make_seg(headers(ct, stack), lm)
    path = tmp_path / "seg.dcm"
    ds.save_as(path, enforce_file_format=True)
    back = hd.seg.segread(path)
    assert back.SegmentationType == "BINARY" and len(back.SegmentSequence) == 2
    d0 = back.SegmentSequence[0]
    assert d0.SegmentLabel == "nodule" and d0.SegmentAlgorithmType == "MANUAL"
    assert "RecommendedDisplayCIELabValue" in d0
    assert back.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    # re-open onto the stack, the stack given in the other order too (same volume order: one model)
    ds2 = pydicom.dcmread(path)
    shuffled = Stack.from_frames([f for d in reversed(ct) for f in frames_from_dataset(d)])
    again = read_seg(ds2, shuffled)
    assert again.shape == lm.shape
    # segments renumbered 1..N in the SEG: 3 came back as 2
    assert [s.label for s in again.segments.values()] == ["nodule", "lesion"]
    assert again.segments[1].color == (255, 0, 0) or np.allclose(again.segments[1].color, (255, 0, 0), atol=2)
    assert np.array_equal(again.array == 1, lm.array == 1)
    assert np.array_equal(again.array == 2, lm.array == 3)
    assert again.volume_ml(1, sp) == pytest.approx(lm.volume_ml(1, sp))
    assert again.source_sop_instance_uid == ds.SOPInstanceUID
    # saved again: a new instance, same descriptions
    ds3 = make_seg(headers(ct, stack), again)
    assert ds3.SOPInstanceUID != ds.SOPInstanceUID
    assert [s.SegmentLabel for s in ds3.SegmentSequence] == ["nodule", "lesion"]
    assert ds3.SegmentSequence[0].TrackingUID == ds.SegmentSequence[0].TrackingUID


def test_seg_frames_placed_by_position_when_not_referenced(ct, stack):
    """An AI plugin's SEG without per-frame source references: frames go by position."""
    lm = LabelMap(stack_shape := (len(stack.order.unique), ROWS, ROWS), [Segment(1, "a", (9, 9, 9))])
    lm.array[7, 10:20, 10:20] = 1
    ds = make_seg(headers(ct, stack), lm)
    for item in ds.PerFrameFunctionalGroupsSequence:
        if "DerivationImageSequence" in item:
            del item.DerivationImageSequence
    del ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[:]
    again = read_seg(ds, stack)
    assert again.shape == stack_shape and np.array_equal(again.array, lm.array)


def test_seg_checks_its_input(ct, stack):
    lm = LabelMap((len(stack.order.unique), ROWS, ROWS), [Segment(1, "a", (9, 9, 9))])
    with pytest.raises(ValueError, match="empty"):
        make_seg(headers(ct, stack), lm)
    with pytest.raises(ValueError, match="images"):
        make_seg(headers(ct, stack)[:3], lm)
    with pytest.raises(ValueError):
        LabelMap((2, 3), [])
    with pytest.raises(ValueError):
        lm.add_segment(Segment(1, "dup", (0, 0, 0)))


def ai_seg(ct, stack):
    """A SEG as an AI plugin makes it (highdicom directly): AUTOMATIC, with its algorithm identified."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    vol = hu_volume(ct, stack)
    mask = ((vol > 200) & (vol < 400)).astype(np.uint8)
    algo = hd.AlgorithmIdentificationSequence(name="NoduleNet", family=codes.DCM.ArtificialIntelligence,
                                              version="2.1")  # fmt: skip
    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Nodule", segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo, tracking_uid=hd.UID(), tracking_id="nodule 1",
    )  # fmt: skip
    return hd.seg.Segmentation(
        source_images=headers(ct, stack), pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=50, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="AI", manufacturer_model_name="NoduleNet", software_versions="2.1",
        device_serial_number="1",
    )  # fmt: skip


def test_an_ai_plugins_seg_is_edited_and_saved_as_a_new_seg_with_its_descriptions(ct, stack):
    ds = ai_seg(ct, stack)
    lm = read_seg(ds, stack)
    seg = lm.segments[1]
    assert (seg.label, seg.algorithm, seg.algorithm_name, seg.algorithm_version) == ("Nodule", "AUTOMATIC",
                                                                                     "NoduleNet", "2.1")  # fmt: skip
    assert seg.type_code == ("27925004", "SCT", "Nodule") and not lm.dirty
    before = lm.voxel_count(1)
    m = int(np.flatnonzero(lm.array.any(axis=(1, 2)))[0])
    lm.brush(m, 5, 5, 3.0, (1.5, 1.5), 1)  # a correction by hand
    assert lm.voxel_count(1) > before and lm.dirty
    out = make_seg(headers(ct, stack), lm)
    assert out.SOPInstanceUID != ds.SOPInstanceUID and out.SeriesInstanceUID != ds.SeriesInstanceUID
    d = out.SegmentSequence[0]
    assert d.SegmentLabel == "Nodule" and d.TrackingUID == ds.SegmentSequence[0].TrackingUID
    assert d.SegmentedPropertyTypeCodeSequence[0].CodeValue == "27925004"
    assert d.SegmentAlgorithmType == "SEMIAUTOMATIC"  # an algorithm's result corrected by hand
    assert d.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "NoduleNet"
    assert read_seg(out, stack).voxel_count(1) == lm.voxel_count(1)


def test_our_seg_passes_dciodvfy(ct, stack, tmp_path):
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) not installed")
    lm = LabelMap((len(stack.order.unique), ROWS, ROWS), [Segment(1, "a", (255, 0, 0)), Segment(2, "b", (0, 0, 255))])
    lm.brush(3, 40, 40, 9.0, (1.5, 1.5), 1)
    lm.brush(9, 80, 80, 9.0, (1.5, 1.5), 2)
    path = tmp_path / "seg.dcm"
    make_seg(headers(ct, stack), lm).save_as(path, enforce_file_format=True)
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    report = res.stdout + res.stderr
    assert "Error" not in report and "Warning" not in report, report
