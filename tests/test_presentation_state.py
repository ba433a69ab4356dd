"""GSPS (hilum.dicom.presentation): round trips, the PIXEL-unit convention, display state, other systems' variants.

Validity is checked with dicom3tools' ``dciodvfy`` and DCMTK's ``dcmpschk`` where installed; DCMTK's
``dcmpsmk`` (a GSPS writer that is not ours) makes a presentation state our reader must understand.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from hilum.dicom.annotations import Annotation
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study
from hilum.dicom.presentation import (
    DisplayState,
    from_pixel_units,
    make_gsps,
    make_gsps_objects,
    read_gsps,
    to_pixel_units,
)

STUDY = make_study(MUELLER, accession="ACC-GSPS", seed="gsps-tests")
COLS = ROWS = 64


def _headers(rows: int = ROWS, slices: int = 4, **kw: object) -> list[Dataset]:
    out = []
    for ds in generate_ct_series(STUDY, rows=rows, columns=rows, slices=slices, noise_sigma=0.0, **kw):  # type: ignore[arg-type]
        del ds.PixelData
        out.append(ds)
    return out


@pytest.fixture(scope="module")
def images() -> list[Dataset]:
    return _headers()


def _roundtrip(ds: Dataset, path: Path | None = None) -> Dataset:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    if path is not None:
        path.write_bytes(buf.getvalue())
    return pydicom.dcmread(BytesIO(buf.getvalue()))


def _all_kinds(uids: list[str]) -> list[Annotation]:
    return [
        Annotation("length", uids[0], 0, [(10.25, 20.5), (30.125, 40.75)], text="AP diameter"),
        Annotation("arrow", uids[0], 0, [(1.5, 2.5), (30.0, 40.0)], text="look"),
        Annotation("text", uids[0], 0, [(12.0, 13.0)], text="Befund: Rundherd\nzweite Zeile"),
        Annotation("angle", uids[1], 0, [(1.0, 1.0), (10.0, 2.0), (3.0, 30.0)]),
        Annotation("cobb", uids[1], 0, [(1.0, 1.0), (10.0, 2.0), (3.0, 30.0), (20.0, 25.0)]),
        Annotation("ellipse", uids[2], 0, [(5.5, 5.0), (20.0, 30.5)]),
        Annotation("ellipse", uids[2], 0, [(5.0, 5.0), (40.0, 10.0)], text="wide"),
        Annotation("rect", uids[2], 0, [(20.0, 30.0), (5.0, 5.0)]),
        Annotation("freehand", uids[3], 0, [(5.0, 5.0), (20.0, 30.0), (7.0, 33.0), (3.3, 12.7)]),
        Annotation("point", uids[3], 0, [(10.0, 20.0)]),
    ]


def test_pixel_units_put_the_first_pixel_corner_at_zero() -> None:
    # PS3.3 C.10.5.1.1: TLHC of the TLHC pixel is 0.0\0.0, its BRHC 1.0\1.0 -> the centre of pixel (c, r) is c+0.5\r+0.5
    assert to_pixel_units(10, 20) == (10.5, 20.5)
    assert from_pixel_units(10.5, 20.5) == (10.0, 20.0)
    assert to_pixel_units(-0.5, -0.5) == (0.0, 0.0)  # the image's top-left corner
    assert to_pixel_units(COLS - 0.5, ROWS - 0.5) == (COLS, ROWS)  # its bottom-right corner


def test_a_point_at_the_centre_of_pixel_10_20(images: list[Dataset]) -> None:
    uid = str(images[0].SOPInstanceUID)
    a = Annotation("point", uid, 0, [(10.0, 20.0)])
    gsps = _roundtrip(make_gsps(images, [a], {}))
    (item,) = gsps.GraphicAnnotationSequence
    (obj,) = item.GraphicObjectSequence
    assert obj.GraphicAnnotationUnits == "PIXEL"
    assert obj.GraphicType == "POINT"
    assert [float(v) for v in obj.GraphicData] == [10.5, 20.5]
    assert item.ReferencedImageSequence[0].ReferencedSOPInstanceUID == uid
    anns, _ = read_gsps(gsps)
    assert [x.points for x in anns] == [[(10.0, 20.0)]]


def test_every_kind_round_trips(images: list[Dataset]) -> None:
    uids = [str(d.SOPInstanceUID) for d in images]
    anns = _all_kinds(uids)
    gsps = _roundtrip(make_gsps(images, anns, {}))
    assert gsps.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"
    assert gsps.Modality == "PR"
    back, states = read_gsps(gsps)
    assert len(back) == len(anns)
    by_uid = {b.uid: b for b in back}
    for a in anns:
        b = by_uid[a.uid]
        assert b.kind == a.kind
        assert (b.sop_instance_uid, b.frame) == (a.sop_instance_uid, a.frame)
        if a.kind == "rect":  # written as its outline: the corners come back top-left, bottom-right
            assert sorted(b.points) == sorted([(20.0, 5.0), (5.0, 30.0)]) or sorted(b.points) == sorted(a.points)
        else:
            assert np.allclose(b.points, a.points, atol=1e-6), a.kind
        assert b.text == a.text
        assert b.series_uid == str(images[0].SeriesInstanceUID)
        assert b.study_uid == str(images[0].StudyInstanceUID)
        assert b.origin == f"gsps:{gsps.SOPInstanceUID}"
    assert set(states) == {(u, 0) for u in uids}


def test_rect_corners_round_trip_exactly_when_drawn_top_left_first(images: list[Dataset]) -> None:
    a = Annotation("rect", str(images[0].SOPInstanceUID), 0, [(5.25, 6.5), (20.0, 30.75)])
    (b,), _ = read_gsps(_roundtrip(make_gsps(images, [a], {})))
    assert b.kind == "rect" and np.allclose(b.points, a.points, atol=1e-6)


def test_references_every_annotated_image_across_series_and_sizes(images: list[Dataset]) -> None:
    other = _headers(rows=32, slices=2, series_number=7)  # another series, another image size
    anns = [
        Annotation("length", str(images[1].SOPInstanceUID), 0, [(1, 1), (5, 5)]),
        Annotation("point", str(other[1].SOPInstanceUID), 0, [(3, 3)]),
    ]
    gsps = _roundtrip(make_gsps([*images, *other], anns, {str(images[3].SOPInstanceUID): DisplayState(40, 400)}))
    refs = {
        (str(s.SeriesInstanceUID), str(r.ReferencedSOPInstanceUID))
        for s in gsps.ReferencedSeriesSequence
        for r in s.ReferencedImageSequence
    }
    want = {(str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in (images[1], images[3], other[1])}
    assert refs == want
    back, states = read_gsps(gsps)
    assert {b.sop_instance_uid for b in back} == {str(images[1].SOPInstanceUID), str(other[1].SOPInstanceUID)}
    small = states[(str(other[1].SOPInstanceUID), 0)]
    assert small.displayed_area == ((-0.5, -0.5), (31.5, 31.5))


@pytest.mark.parametrize(
    ("rotation", "flip", "tlhc", "brhc"),
    [
        (0, False, [11, 21], [40, 50]),
        (90, False, [11, 50], [40, 21]),  # rotated clockwise: the bottom-left pixel is shown top-left
        (180, False, [40, 50], [11, 21]),
        (270, False, [40, 21], [11, 50]),
        (0, True, [40, 21], [11, 50]),
        (90, True, [11, 21], [40, 50]),  # turned, then mirrored: the top-left pixel is back top-left
    ],
)
def test_display_state_round_trips_with_the_standard_corners(
    images: list[Dataset], rotation: int, flip: bool, tlhc: list[int], brhc: list[int]
) -> None:
    uid = str(images[0].SOPInstanceUID)
    # columns 10..39, rows 20..49 (0-based) shown: edges at half pixels
    state = DisplayState(
        window_center=-600.0,
        window_width=1500.0,
        displayed_area=((9.5, 19.5), (39.5, 49.5)),
        rotation=rotation,
        flip_horizontal=flip,
        invert=True,
    )
    gsps = _roundtrip(make_gsps(images, [], {uid: state}))
    (area,) = gsps.DisplayedAreaSelectionSequence
    # PS3.3 C.10.4: TLHC / BRHC are the 1-based pixels shown top-left / bottom-right after the spatial transformation
    assert list(area.DisplayedAreaTopLeftHandCorner) == tlhc
    assert list(area.DisplayedAreaBottomRightHandCorner) == brhc
    assert area.PresentationSizeMode == "SCALE TO FIT"
    assert gsps.ImageRotation == rotation
    assert gsps.ImageHorizontalFlip == ("Y" if flip else "N")
    assert gsps.PresentationLUTShape == "INVERSE"
    (voi,) = gsps.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (-600.0, 1500.0)
    _, states = read_gsps(gsps)
    assert states == {(uid, 0): state}


def test_states_per_image_and_image_defaults(images: list[Dataset]) -> None:
    uids = [str(d.SOPInstanceUID) for d in images]
    states = {uids[0]: DisplayState(40, 400), uids[1]: DisplayState(-600, 1500, ((-0.5, 9.5), (31.5, 41.5)))}
    anns = [Annotation("point", uids[2], 0, [(1, 1)])]
    _, back = read_gsps(_roundtrip(make_gsps(images, anns, states)))
    assert back[(uids[0], 0)].window_center == 40 and back[(uids[0], 0)].window_width == 400
    assert back[(uids[1], 0)].displayed_area == ((-0.5, 9.5), (31.5, 41.5))
    # an annotated image without a state keeps its own window (the image's first) and the whole image
    own = back[(uids[2], 0)]
    assert (own.window_center, own.window_width) == (float(images[2].WindowCenter[0]), float(images[2].WindowWidth[0]))
    assert own.displayed_area == ((-0.5, -0.5), (COLS - 0.5, ROWS - 0.5))


def test_true_size_uses_the_pixel_spacing(images: list[Dataset]) -> None:
    uid = str(images[0].SOPInstanceUID)
    gsps = _roundtrip(make_gsps(images, [], {uid: DisplayState(40, 400, size_mode="TRUE SIZE")}))
    (area,) = gsps.DisplayedAreaSelectionSequence
    assert area.PresentationSizeMode == "TRUE SIZE"
    assert [float(v) for v in area.PresentationPixelSpacing] == [float(v) for v in images[0].PixelSpacing]
    assert read_gsps(gsps)[1][(uid, 0)].size_mode == "TRUE SIZE"


def test_rotation_flip_inversion_are_one_per_gsps(images: list[Dataset]) -> None:
    uids = [str(d.SOPInstanceUID) for d in images]
    states = {uids[0]: DisplayState(40, 400, rotation=90), uids[1]: DisplayState(40, 400)}
    anns = [Annotation("point", uids[0], 0, [(1, 1)]), Annotation("point", uids[2], 0, [(2, 2)])]
    with pytest.raises(ValueError, match="make_gsps_objects"):
        make_gsps(images, anns, states)
    objs = [_roundtrip(o) for o in make_gsps_objects(images, anns, states)]
    assert len(objs) == 2
    assert len({o.SeriesInstanceUID for o in objs}) == 1
    assert len({o.SOPInstanceUID for o in objs}) == 2
    got = {}
    for o in objs:
        a, s = read_gsps(o)
        got.update({k: v.rotation for k, v in s.items()})
        for x in a:
            assert s[(x.sop_instance_uid, 0)].rotation == (90 if x.sop_instance_uid == uids[0] else 0)
    assert got[(uids[0], 0)] == 90 and got[(uids[1], 0)] == 0


def test_monochrome1_is_written_inverse_and_read_back_as_not_inverted() -> None:
    imgs = _headers(slices=1)
    imgs[0].PhotometricInterpretation = "MONOCHROME1"
    uid = str(imgs[0].SOPInstanceUID)
    gsps = _roundtrip(make_gsps(imgs, [], {uid: DisplayState(100, 200)}))
    assert gsps.PresentationLUTShape == "INVERSE"  # PS3.3 C.11.6: the GSPS pipeline ignores MONOCHROME1
    assert read_gsps(gsps, imgs)[1][(uid, 0)].invert is False


def test_multiframe_annotations_name_their_frame() -> None:
    (mf,) = _headers(slices=1)
    mf.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture
    mf.NumberOfFrames = 5
    uid = str(mf.SOPInstanceUID)
    anns = [Annotation("point", uid, 3, [(4, 5)]), Annotation("length", uid, 0, [(1, 2), (3, 4)])]
    gsps = _roundtrip(make_gsps([mf], anns, {}))
    frames = sorted(int(i.ReferencedImageSequence[0].ReferencedFrameNumber) for i in gsps.GraphicAnnotationSequence)
    assert frames == [1, 4]
    back, _ = read_gsps(gsps)
    assert sorted((b.kind, b.frame) for b in back) == [("length", 0), ("point", 3)]


def test_points_off_the_image_are_written_at_its_border(images: list[Dataset]) -> None:
    a = Annotation("length", str(images[0].SOPInstanceUID), 0, [(-10, 5), (100, 5)])
    (b,), _ = read_gsps(_roundtrip(make_gsps(images, [a], {})))
    assert b.points == [(-0.5, 5.0), (COLS - 0.5, 5.0)]


def test_unknown_image_is_refused(images: list[Dataset]) -> None:
    with pytest.raises(ValueError, match="not among the images"):
        make_gsps(images, [Annotation("point", "1.2.3.4", 0, [(1, 1)])], {})


# --------------------------------------------------------------------------- other systems


def _other_system_gsps(images: list[Dataset]) -> Dataset:
    """A GSPS as other viewers write it: no tracking ids, DISPLAY units, CIRCLE, INTERPOLATED, two layers,
    a text with only a bounding box, an annotation item without references (all images), rotation 90."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.11.1"
    ds.SOPInstanceUID = "1.2.3.999.1"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = images[0].StudyInstanceUID
    ref = Dataset()
    ref.SeriesInstanceUID = images[0].SeriesInstanceUID
    items = []
    for im in images[:2]:
        r = Dataset()
        r.ReferencedSOPClassUID = im.SOPClassUID
        r.ReferencedSOPInstanceUID = im.SOPInstanceUID
        items.append(r)
    ref.ReferencedImageSequence = DicomSequence(items)
    ds.ReferencedSeriesSequence = DicomSequence([ref])
    ds.ImageRotation = 90
    ds.ImageHorizontalFlip = "N"
    ds.PresentationLUTShape = "IDENTITY"
    area = Dataset()
    area.DisplayedAreaTopLeftHandCorner = [1, 64]  # whole image, as the standard names the corners after rotation
    area.DisplayedAreaBottomRightHandCorner = [64, 1]
    area.PresentationSizeMode = "SCALE TO FIT"
    area.PresentationPixelAspectRatio = [1, 1]
    ds.DisplayedAreaSelectionSequence = DicomSequence([area])
    voi = Dataset()
    voi.WindowCenter = "50"
    voi.WindowWidth = "350"
    ds.SoftcopyVOILUTSequence = DicomSequence([voi])

    def obj(gtype: str, data: list[float], units: str = "PIXEL") -> Dataset:
        o = Dataset()
        o.GraphicAnnotationUnits = units
        o.GraphicDimensions = 2
        o.NumberOfGraphicPoints = len(data) // 2
        o.GraphicData = data
        o.GraphicType = gtype
        o.GraphicFilled = "N"
        return o

    first = Dataset()
    first.GraphicLayer = "LAYER A"
    r0 = Dataset()
    r0.ReferencedSOPClassUID = images[0].SOPClassUID
    r0.ReferencedSOPInstanceUID = images[0].SOPInstanceUID
    first.ReferencedImageSequence = DicomSequence([r0])
    circle = obj("CIRCLE", [20.5, 30.5, 25.5, 30.5])
    closed = obj("INTERPOLATED", [1.0, 1.0, 11.0, 1.0, 6.0, 9.0, 1.0, 1.0])
    display = obj("POLYLINE", [0.0, 0.0, 0.5, 0.5], units="DISPLAY")
    first.GraphicObjectSequence = DicomSequence([circle, closed, display])
    boxed = Dataset()
    boxed.BoundingBoxAnnotationUnits = "PIXEL"
    boxed.UnformattedTextValue = "boxed"
    boxed.BoundingBoxTopLeftHandCorner = [5.5, 6.5]
    boxed.BoundingBoxBottomRightHandCorner = [30.0, 12.0]
    boxed.BoundingBoxTextHorizontalJustification = "LEFT"
    first.TextObjectSequence = DicomSequence([boxed])
    everywhere = Dataset()  # no Referenced Image Sequence: it applies to every referenced image
    everywhere.GraphicLayer = "LAYER B"
    everywhere.GraphicObjectSequence = DicomSequence([obj("POINT", [32.0, 32.0])])
    ds.GraphicAnnotationSequence = DicomSequence([first, everywhere])
    ds.GraphicLayerSequence = DicomSequence([])
    return ds


def test_reads_other_systems_variants(images: list[Dataset]) -> None:
    anns, states = read_gsps(_roundtrip(_other_system_gsps(images)))
    u0, u1 = str(images[0].SOPInstanceUID), str(images[1].SOPInstanceUID)
    on0 = {a.kind: a for a in anns if a.sop_instance_uid == u0}
    assert on0["ellipse"].points == [(15.0, 25.0), (25.0, 35.0)]  # CIRCLE centre (20, 30), radius 5
    assert on0["freehand"].points == [(0.5, 0.5), (10.5, 0.5), (5.5, 8.5)]  # closed INTERPOLATED
    assert on0["text"].points == [(5.0, 6.0)] and on0["text"].text == "boxed"  # box only: its top-left corner
    # DISPLAY units through the whole image turned 90 degrees clockwise: the screen's top-left is the image's
    # bottom-left corner, the screen's centre the image's centre
    assert np.allclose(on0["length"].points, [(-0.5, 63.5), (31.5, 31.5)])
    points = sorted((a.sop_instance_uid, a.points[0]) for a in anns if a.kind == "point")
    assert points == sorted([(u0, (31.5, 31.5)), (u1, (31.5, 31.5))])
    assert len({a.uid for a in anns}) == len(anns)
    s = states[(u0, 0)]
    assert (s.window_center, s.window_width, s.rotation) == (50.0, 350.0, 90)
    assert s.displayed_area == ((-0.5, -0.5), (63.5, 63.5))


@pytest.mark.skipif(shutil.which("dcmpsmk") is None, reason="DCMTK's dcmpsmk is not installed")
def test_reads_a_gsps_made_by_dcmtk(tmp_path: Path) -> None:
    (ct,) = generate_ct_series(STUDY, rows=ROWS, columns=COLS, slices=1, noise_sigma=0.0)
    ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    subprocess.run(["dcmpsmk", str(tmp_path / "ct.dcm"), str(tmp_path / "ps.dcm")], check=True, timeout=30)
    ps = pydicom.dcmread(tmp_path / "ps.dcm")
    anns, states = read_gsps(ps)
    assert anns == []
    s = states[(str(ct.SOPInstanceUID), 0)]
    assert s.displayed_area == ((-0.5, -0.5), (COLS - 0.5, ROWS - 0.5))
    assert (s.window_center, s.window_width) == (float(ct.WindowCenter[0]), float(ct.WindowWidth[0]))
    assert (s.rotation, s.flip_horizontal, s.invert) == (0, False, False)


# --------------------------------------------------------------------------- validity


@pytest.fixture(scope="module")
def saved_gsps(images: list[Dataset], tmp_path_factory: pytest.TempPathFactory) -> Path:
    uids = [str(d.SOPInstanceUID) for d in images]
    path = tmp_path_factory.mktemp("gsps") / "gsps.dcm"
    state = DisplayState(40, 400, ((9.5, 9.5), (40.5, 50.5)), rotation=270, flip_horizontal=True)
    anns = _all_kinds(uids)
    values = {a.uid: {"angle": 33.3, "unit": "deg"} for a in anns if a.kind in ("angle", "cobb")}
    _roundtrip(make_gsps(images, anns, {u: copy.copy(state) for u in uids}, values=values), path)
    return path


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_dciodvfy_finds_no_error(saved_gsps: Path) -> None:
    out = subprocess.run(["dciodvfy", str(saved_gsps)], capture_output=True, text=True, timeout=60)
    report = out.stdout + out.stderr
    assert "GrayscaleSoftcopyPresentationState" in report
    assert "Error" not in report, report


@pytest.mark.skipif(shutil.which("dcmpschk") is None, reason="DCMTK's dcmpschk is not installed")
def test_dcmtk_checks_the_presentation_state(saved_gsps: Path) -> None:
    out = subprocess.run(["dcmpschk", str(saved_gsps)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Test passed" in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("dcmp2pgm") is None, reason="DCMTK's dcmp2pgm is not installed")
@pytest.mark.parametrize(("rotation", "flip"), [(0, False), (90, False), (180, True), (270, False), (90, True)])
def test_dcmtk_renders_our_window_rotation_and_flip(tmp_path: Path, rotation: int, flip: bool) -> None:
    """DCMTK applies our GSPS to the image (VOI, rotation, flip) as numpy says the standard means it.

    (dcmp2pgm renders the whole image: it does not crop to the displayed area.)"""
    from PIL import Image

    (ct,) = generate_ct_series(STUDY, rows=ROWS, columns=COLS, slices=1, noise_sigma=0.0)
    ct.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    state = DisplayState(40.0, 400.0, ((9.5, 19.5), (39.5, 49.5)), rotation=rotation, flip_horizontal=flip)
    make_gsps([ct], [], {str(ct.SOPInstanceUID): state}).save_as(tmp_path / "ps.dcm", enforce_file_format=True)
    run = [str(tmp_path / n) for n in ("ps.dcm", "ct.dcm", "out.pgm")]
    subprocess.run(["dcmp2pgm", "-p", *run], check=True, capture_output=True, timeout=60)
    shown = np.asarray(Image.open(tmp_path / "out.pgm")).astype(float)
    hu = ct.pixel_array.astype(float) * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    want = np.clip((hu - 39.5) / 399.0 + 0.5, 0.0, 1.0) * 255.0  # PS3.3 C.11.2.1.2.1, linear window
    want = np.rot90(want, k=-(rotation // 90))  # clockwise
    if flip:
        want = np.fliplr(want)
    assert shown.shape == want.shape
    assert np.abs(shown - want).max() < 1.5


def test_displayed_area_is_kept_to_the_image(images: list[Dataset]) -> None:
    """A viewport wider than the image (margins left and right) keeps the image part: SCALE TO FIT renders
    the specified area as large as possible, margins included when the aspects differ (C.10.4)."""
    uid = str(images[0].SOPInstanceUID)
    state = DisplayState(40, 400, ((-40.5, 9.5), (100.5, 49.5)), rotation=90)
    gsps = _roundtrip(make_gsps(images, [], {uid: state}))
    (area,) = gsps.DisplayedAreaSelectionSequence
    assert list(area.DisplayedAreaTopLeftHandCorner) == [1, 50]
    assert list(area.DisplayedAreaBottomRightHandCorner) == [64, 11]
    assert read_gsps(gsps)[1][(uid, 0)].displayed_area == ((-0.5, 9.5), (63.5, 49.5))


def test_measurement_numbers_are_shown_to_other_viewers_and_skipped_by_ours(images: list[Dataset]) -> None:
    a = Annotation("length", str(images[0].SOPInstanceUID), 0, [(10.0, 10.0), (40.0, 50.0)])
    values = {a.uid: {"length": 35.0, "unit": "mm", "note": ""}}
    gsps = _roundtrip(make_gsps(images, [a], {}, values=values))
    texts = [t.UnformattedTextValue for i in gsps.GraphicAnnotationSequence for t in i.get("TextObjectSequence", [])]
    assert texts == ["35.0 mm"]
    (b,), _ = read_gsps(gsps)
    assert (b.uid, b.kind, b.text) == (a.uid, "length", "")


def test_malformed_items_are_skipped_not_fatal(images: list[Dataset]) -> None:
    ds = _other_system_gsps(images)
    ds.DisplayedAreaSelectionSequence[0].DisplayedAreaTopLeftHandCorner = None
    broken = Dataset()
    broken.GraphicAnnotationUnits = "PIXEL"
    broken.GraphicDimensions = 2
    broken.GraphicType = "POLYLINE"
    broken.GraphicData = [1.0, 2.0, 3.0]  # an odd number of values
    ds.GraphicAnnotationSequence[1].GraphicObjectSequence.append(broken)
    stray = Dataset()
    stray.ReferencedSOPClassUID = images[0].SOPClassUID  # no SOP Instance UID
    ds.ReferencedSeriesSequence[0].ReferencedImageSequence.append(stray)
    anns, states = read_gsps(_roundtrip(ds))
    assert len([a for a in anns if a.kind == "point"]) == 2
    assert all(s.displayed_area is None for s in states.values())
