"""Unit tests of the pixel pipeline (hilum.dicom.pixels), no external tools.

The standard's formulas (PS3.3 C.11.2.1.2-3) are evaluated here independently
at chosen points; the comparison with DCMTK lives in test_render_dcmtk.py.
Files come from pydicom's wheel; the ones from the optional ``pydicom-data``
package are skipped when it is not installed.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut
from pydicom.pixels import pixel_array as pydicom_pixel_array
from pydicom.sequence import Sequence

from hilum.cli import main as cli_main
from hilum.dicom.pixels import (
    LUT,
    FrameIndexError,
    GrayscalePipeline,
    ModalityTransform,
    PixelDataError,
    Window,
    frame_array,
    iter_frames,
    render_frame,
    to_uint8_color,
)
from hilum.dicom.pixels_lut import (
    DisplayTransform,
    SampledTable,
    VOITable,
    p_values,
    presentation_inverts,
    windows_from_dataset,
)


def data(name: str) -> str:
    """Path of a pydicom test file; skip when it lives in the absent pydicom-data."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} needs the pydicom-data package")
    return str(path)


def read(name: str) -> Dataset:
    return pydicom.dcmread(data(name))


# --------------------------------------------------------------------------- VOI formulas


def standard_linear(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.2.1 with ymin=0, ymax=255, written out as in the standard."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 255.0
    return ((x - (c - 0.5)) / (w - 1) + 0.5) * (255 - 0) + 0


def standard_linear_exact(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.3.2."""
    if x <= c - w / 2:
        return 0.0
    if x > c + w / 2:
        return 255.0
    return ((x - c) / w + 0.5) * (255 - 0) + 0


def standard_sigmoid(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.3.1."""
    return (255 - 0) / (1 + math.exp(-4 * (x - c) / w)) + 0


@pytest.mark.parametrize(
    ("function", "reference"),
    [("LINEAR", standard_linear), ("LINEAR_EXACT", standard_linear_exact), ("SIGMOID", standard_sigmoid)],
)
@pytest.mark.parametrize(("center", "width"), [(40, 400), (10, 3), (10.5, 2), (-100, 7.5), (2048, 4096)])
def test_window_functions_match_standard(function: str, reference, center: float, width: float) -> None:
    x = np.arange(center - width, center + width + 1, 0.25)
    got = Window(center, width, function).apply(x) * 255
    want = np.array([reference(float(v), center, width) for v in x])
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_linear_exact_differs_from_linear_at_small_width() -> None:
    # x = c: LINEAR gives 0.75 of the range at w=3, LINEAR_EXACT exactly the middle
    assert Window(10, 3, "LINEAR").apply(np.array([10.0]))[0] == pytest.approx(0.75)
    assert Window(10, 3, "LINEAR_EXACT").apply(np.array([10.0]))[0] == pytest.approx(0.5)


def test_linear_width_one_is_a_threshold() -> None:
    y = Window(0, 1).apply(np.array([-1.0, -0.5, 0.0, 1.0]))
    assert y.tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("center", "width", "function"),
    [(0, 0.5, "LINEAR"), (0, 0, "SIGMOID"), (0, -1, "LINEAR_EXACT"), (0, 10, "GAMMA"), (float("nan"), 10, "LINEAR")],
)
def test_invalid_windows_rejected(center: float, width: float, function: str) -> None:
    with pytest.raises(ValueError):
        Window(center, width, function)


def test_min_max_window_maps_ends_exactly() -> None:
    w = Window.min_max(-896, 1167)
    assert (w.center, w.width) == ((-896 + 1167 + 1) / 2, 1167 + 896 + 1)
    y = w.apply(np.array([-896.0, 1167.0]))
    assert y.tolist() == [0.0, 1.0]


# --------------------------------------------------------------------------- display transform (every view)


def test_p_values_round_half_up_invert_and_nan() -> None:
    y = np.array([0.0, 0.5 / 255, 0.499 / 255, 1.0, 0.5, np.nan])
    np.testing.assert_array_equal(p_values(y), [0, 1, 0, 255, 128, 0])
    np.testing.assert_array_equal(p_values(y, invert=True), [255, 255, 255, 0, 128, 0])  # NaN: 0 either way


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize(("center", "width"), [(40, 400), (-600, 1500), (10.5, 2), (100, 1), (3, 7.25)])
def test_output_is_constant_outside_the_active_range(function: str, center: float, width: float) -> None:
    if function != "LINEAR" and width <= 0:
        pytest.skip("not a valid window")
    w = Window(center, width, function)
    lo, hi = w.active_range()
    below = np.linspace(lo - 5 * width - 100, lo - 1e-6, 500)
    above = np.linspace(hi + 1e-6, hi + 5 * width + 100, 500)
    for invert in (False, True):
        d = DisplayTransform(w, invert)
        assert np.unique(d.apply(below)).tolist() == [255 if invert else 0]
        assert np.unique(d.apply(above)).tolist() == [0 if invert else 255]


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("invert", [False, True])
@pytest.mark.parametrize(("center", "width"), [(40, 400), (-600, 1500), (1000.5, 3), (0, 1), (7, 60000)])
def test_sampled_table_is_the_formula(function: str, invert: bool, center: float, width: float) -> None:
    """Whole-number bins give exactly the P-Value of every integer; bins over float values stay
    within one grey level; both by the vtkLookupTable bin rule (SampledTable.lookup)."""
    d = DisplayTransform(Window(center, width, function), invert)
    span = (-3024.0, 3071.0)
    ints = np.arange(-3024, 3072, dtype=np.float64)
    table = d.sampled(span, integer=True)
    np.testing.assert_array_equal(table.lookup(ints), d.apply(ints))
    assert table.lookup(np.array([-40000.0]))[0] == d.apply(np.array([-3024.0]))[0]  # clamped like VTK
    floats = np.random.default_rng(7).uniform(*span, 100_000)
    floats = np.concatenate([floats, center + np.linspace(-2, 2, 4001)])  # dense where the output moves
    if function == "LINEAR" and width == 1:
        # a threshold at c - 0.5 (C.11.2.1.2.1): the bin edge is there, and the value exactly on
        # it goes to the upper bin where the formula (x <= c - 0.5 -> ymin) says the lower one
        floats = floats[floats != center - 0.5]
    sampled = d.sampled(span, integer=False)
    assert np.abs(sampled.lookup(floats).astype(int) - d.apply(floats).astype(int)).max() <= 1
    assert sampled.size <= (1 << 17) and table.size <= (1 << 17)
    whole = np.array([round(center)], dtype=np.float64)
    unbounded = d.sampled(None, integer=True)  # 187,000 integers for 7/60000 SIGMOID: float bins then
    per_integer = unbounded.hi - unbounded.lo == unbounded.size
    a, b = d.voi.active_range()
    assert per_integer == (math.ceil(b) - math.floor(a) + 3 <= 1 << 17)
    assert abs(int(unbounded.lookup(whole)[0]) - int(d.apply(whole)[0])) <= (0 if per_integer else 1)


def test_sampled_table_outside_the_data_is_one_grey_level() -> None:
    d = DisplayTransform(Window(2000, 100), invert=False)
    t = d.sampled((-1024.0, 1000.0), integer=True)  # every value below the window
    assert t.size == 1 and t.values[0] == 0
    np.testing.assert_array_equal(t.lookup(np.array([-1024.0, 0.0, 1000.0])), [0, 0, 0])
    with pytest.raises(ValueError):
        d.sampled((5.0, 1.0), integer=True)
    with pytest.raises(ValueError):
        SampledTable(1.0, 1.0, np.zeros(3, np.uint8))
    with pytest.raises(ValueError):
        SampledTable(0.0, 1.0, np.zeros(3, np.int16))


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int8", "uint8"])
@pytest.mark.parametrize(
    "voi",
    [
        Window(40, 400, "LINEAR"),
        Window(-600, 1500, "SIGMOID"),
        Window(3.5, 2.5, "LINEAR_EXACT"),
        Window(90000, 100, "LINEAR"),  # all of the dtype below the window
        Window(-90000, 100, "SIGMOID"),  # all above
        Window(0, 200000, "LINEAR"),  # wider than the dtype
    ],
    ids=["linear", "sigmoid", "narrow-exact", "below", "above", "wide"],
)
def test_integer_table_is_the_formula_for_every_value(dtype: str, voi: Window) -> None:
    """apply() on 8/16-bit integers goes through integer_table: the same P-Values as the
    formulas for every value of the type, indexed by the unsigned bit pattern."""
    info = np.iinfo(dtype)
    every = np.arange(info.min, info.max + 1).astype(dtype)
    for invert in (False, True):
        d = DisplayTransform(voi, invert)
        formula = p_values(voi.apply(every.astype(np.float64)), invert)
        np.testing.assert_array_equal(d.apply(every), formula)
        table = d.integer_table(np.dtype(dtype))
        assert table.size == 1 << (8 * np.dtype(dtype).itemsize) and not table.flags.writeable
        np.testing.assert_array_equal(table[every.view(f"u{np.dtype(dtype).itemsize}")], formula)
    assert d.integer_table(np.dtype(dtype)) is d.integer_table(np.dtype(dtype))  # cached
    with pytest.raises(ValueError):
        d.integer_table(np.dtype("int32"))


def test_sampled_lookup_in_float32_and_nan() -> None:
    d = DisplayTransform(Window(40, 400, "SIGMOID"), invert=True)
    table = d.sampled((-1024.0, 3071.0), integer=False)
    x = np.random.default_rng(5).uniform(-1100, 3100, 50_000)
    f32 = table.lookup(x.astype(np.float32))
    assert np.abs(f32.astype(int) - d.apply(x.astype(np.float32).astype(np.float64)).astype(int)).max() <= 1
    out = np.empty(4, np.uint8)
    got = table.lookup(np.array([np.nan, -5000.0, 5000.0, 1e30], np.float32), out=out)
    assert got is out and out.tolist() == [0, 255, 0, 0]


def test_voi_lut_table_sampled_exactly_even_for_float_values() -> None:
    """A VOI LUT maps whole input values (C.11.2.1.1, non-integers to the nearest): whole-number
    bins reproduce it for any input, integer or not."""
    data = (np.arange(300) ** 2 // 9).astype(np.uint16)
    voi = VOITable(LUT(first_mapped=-100, data=data, bits=14))
    d = DisplayTransform(voi, invert=True)
    x = np.concatenate([np.arange(-150, 250, dtype=np.float64), np.random.default_rng(1).uniform(-150, 250, 5000)])
    for integer in (True, False):
        np.testing.assert_array_equal(d.sampled((-150.0, 250.0), integer=integer).lookup(x), d.apply(x))
    assert voi.active_range() == (-100.0, 199.0)
    np.testing.assert_array_equal(d.table(-100, 199, 300), p_values(data / 16383.0, invert=True))
    assert d.window == Window.min_max(-100.0, 199.0)


def test_table_samples_the_ends() -> None:
    w = Window(40, 400)
    t = w.table(-160.0, 239.0, 400)
    assert t[0] == 0 and t[-1] == 255 and t.dtype == np.uint8 and np.all(np.diff(t.astype(int)) >= 0)
    np.testing.assert_array_equal(w.table(-160.0, 239.0, 400, invert=True), 255 - t)
    np.testing.assert_array_equal(
        DisplayTransform(w).table(0, 100, 11), DisplayTransform(w).apply(np.linspace(0, 100, 11))
    )
    with pytest.raises(ValueError):
        w.table(0, 1, 0)


def test_window_changes_keep_function_and_inversion() -> None:
    d = DisplayTransform(Window(40, 400, "SIGMOID", "SOFT"), invert=True)
    assert d.with_window(60, 200) == DisplayTransform(Window(60, 200, "SIGMOID", "SOFT"), invert=True)
    assert d.with_window(60, 0.2).voi.width == 1.0  # at least 1
    dragged = d.dragged(dx=32, dy=-16)  # right widens, up (dy < 0) lowers the level
    k = 400 / 256
    assert dragged.voi == Window(40 - 16 * k, 400 + 32 * k, "SIGMOID", "SOFT") and dragged.invert
    assert DisplayTransform(Window(0, 5)).dragged(0, 256).voi.center == pytest.approx(20.0)  # narrow: 20/256 per px
    table = DisplayTransform(VOITable(LUT(first_mapped=0, data=np.arange(256, dtype=np.uint16), bits=8)))
    assert table.with_window(100, 50).voi == Window(100, 50, "LINEAR")
    start = Window.min_max(0.0, 255.0)  # a drag from a table starts at its equivalent window
    assert (table.dragged(0, 0).voi.center, table.dragged(0, 0).voi.width) == (start.center, start.width)
    assert d.label == "W 400 L 40 sigmoid" and DisplayTransform(Window(40, 400)).label == "W 400 L 40"


def test_pipeline_display_is_what_apply_uses() -> None:
    ds = read("CT_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    stored = frame_array(ds)
    pipeline = GrayscalePipeline.from_dataset(ds)
    d = pipeline.display(stored, Window(40, 400, "LINEAR_EXACT"))
    assert d.invert and d.voi == Window(40, 400, "LINEAR_EXACT")
    np.testing.assert_array_equal(pipeline.apply(stored, d.voi), d.apply(pipeline.modality_values(stored)))


# --------------------------------------------------------------------------- LUT descriptor


def lut_item(descriptor: list[int], values: list[int] | bytes, vr: str = "US", explanation: str = "") -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)
    item.add_new(0x00283006, vr, values)
    if explanation:
        item.LUTExplanation = explanation
    return item


def test_lut_descriptor_semantics() -> None:
    # 0 entries means 65536 (C.11.1.1.1)
    lut = LUT.from_item(lut_item([0, 0, 16], list(range(65536))), signed_input=False)
    assert lut.data.size == 65536
    # first value mapped read as US but the input is signed: two's complement
    lut = LUT.from_item(lut_item([4, 65534, 8], [10, 20, 30, 40]), signed_input=True)
    assert lut.first_mapped == -2
    np.testing.assert_array_equal(lut.lookup(np.array([-100, -2, -1, 0, 1, 100])), [10, 10, 20, 30, 40, 40])
    # the same descriptor on unsigned input is 65534
    assert LUT.from_item(lut_item([4, 65534, 8], [1, 2, 3, 4]), signed_input=False).first_mapped == 65534
    # fractional input (a rescaled modality value) goes to the nearest entry
    np.testing.assert_array_equal(lut.lookup(np.array([-1.6, -1.4, 0.49])), [10, 20, 30])


def test_lut_data_ow_and_packed_bytes() -> None:
    words = np.array([0, 1000, 4095], dtype="<u2").tobytes()
    lut = LUT.from_item(lut_item([3, 0, 12], words, vr="OW"), signed_input=False)
    assert lut.data.tolist() == [0, 1000, 4095]
    big = np.array([0, 1000, 4095], dtype=">u2").tobytes()
    assert LUT.from_item(lut_item([3, 0, 12], big, vr="OW"), signed_input=False, little_endian=False).data.tolist() == [
        0,
        1000,
        4095,
    ]
    packed = bytes([0, 128, 255, 0])  # 8-bit entries two per word (+ pad)
    assert LUT.from_item(lut_item([3, 0, 8], packed, vr="OW"), signed_input=False).data.tolist() == [0, 128, 255]


def test_lut_equality_and_hash() -> None:
    a = LUT(0, np.arange(10, dtype=np.uint16), 16)
    b = LUT(0, np.arange(10, dtype=np.uint16), 16)
    assert a == b and hash(a) == hash(b)
    assert a != LUT(1, np.arange(10, dtype=np.uint16), 16)


# --------------------------------------------------------------------------- modality / VOI from datasets


def enhanced_dataset() -> Dataset:
    """A 3-frame native dataset from MR_small with per-frame rescale and windows.

    Frame 0 takes its rescale and window from the shared functional groups,
    frames 1 and 2 from their own per-frame items (PS3.3 C.7.6.16).
    """
    ds = read("MR_small.dcm")
    a = ds.pixel_array
    frames = np.stack([a, a[::-1], a[:, ::-1]]).astype(np.int16)
    del ds.WindowCenter, ds.WindowWidth
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()

    def group(slope: float | None, intercept: float | None, window: tuple[float, float] | None) -> Dataset:
        item = Dataset()
        if slope is not None:
            pvt = Dataset()
            pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "US"
            item.PixelValueTransformationSequence = Sequence([pvt])
        if window is not None:
            voi = Dataset()
            voi.WindowCenter, voi.WindowWidth = window
            item.FrameVOILUTSequence = Sequence([voi])
        return item

    ds.SharedFunctionalGroupsSequence = Sequence([group(1, 0, (600, 1600))])
    ds.PerFrameFunctionalGroupsSequence = Sequence(
        [group(None, None, None), group(2, -100, (1000, 2000)), group(0.5, 50, (300, 500))]
    )
    return ds


ENHANCED_PARAMETERS = [(1.0, 0.0, (600.0, 1600.0)), (2.0, -100.0, (1000.0, 2000.0)), (0.5, 50.0, (300.0, 500.0))]


@pytest.mark.parametrize("frame", [0, 1, 2])
def test_per_frame_functional_groups(frame: int) -> None:
    ds = enhanced_dataset()
    slope, intercept, (center, width) = ENHANCED_PARAMETERS[frame]
    pipeline = GrayscalePipeline.from_dataset(ds, frame)
    assert (pipeline.modality.slope, pipeline.modality.intercept) == (slope, intercept)
    assert [(w.center, w.width) for w in pipeline.windows] == [(center, width)]
    # the frame renders like a classic image with those values at the top level
    classic = read("MR_small.dcm")
    classic.RescaleSlope, classic.RescaleIntercept = slope, intercept
    classic.WindowCenter, classic.WindowWidth = center, width
    stored = frame_array(ds, frame)
    np.testing.assert_array_equal(render_frame(ds, frame), GrayscalePipeline.from_dataset(classic).apply(stored))


def test_top_level_rescale_and_multiple_windows() -> None:
    ds = read("CT_small.dcm")
    ds.WindowCenter = [40, -600]
    ds.WindowWidth = [400, 1500]
    ds.WindowCenterWidthExplanation = ["SOFT", "LUNG"]
    ds.VOILUTFunction = "SIGMOID"
    pipeline = GrayscalePipeline.from_dataset(ds)
    assert pipeline.modality == ModalityTransform(1.0, -1024.0, rescale_type="")
    assert [(w.center, w.width, w.function, w.explanation) for w in pipeline.windows] == [
        (40, 400, "SIGMOID", "SOFT"),
        (-600, 1500, "SIGMOID", "LUNG"),
    ]
    stored = ds.pixel_array
    lung = pipeline.apply(stored, voi_index=1)
    np.testing.assert_array_equal(lung, pipeline.apply(stored, Window(-600, 1500, "SIGMOID")))
    assert not np.array_equal(lung, pipeline.apply(stored))
    with pytest.raises(IndexError):
        pipeline.apply(stored, voi_index=2)


def test_invalid_header_window_skipped() -> None:
    ds = read("CT_small.dcm")
    ds.WindowCenter = [40, 50]
    ds.WindowWidth = [0, 350]
    assert [(w.center, w.width) for w in windows_from_dataset(ds)] == [(50, 350)]


def test_modality_lut_sequence() -> None:
    ds = read("MR_small.dcm")
    table = (np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)
    ds.ModalityLUTSequence = Sequence([lut_item([4096, 0, 16], table.tolist())])
    ds.ModalityLUTSequence[0].ModalityLUTType = "US"
    pipeline = GrayscalePipeline.from_dataset(ds)
    stored = ds.pixel_array
    np.testing.assert_array_equal(pipeline.modality_values(stored), table[stored])
    # the min-max window spans the LUT outputs of the frame
    window = pipeline.min_max_window(stored)
    assert window.center - 0.5 - (window.width - 1) / 2 == table[stored].min()


def test_voi_lut_sequence_is_default_without_windows() -> None:
    ds = read("CT_small.dcm")  # no windows in the header
    values = np.linspace(0, 4095, 2048).astype(np.uint16)
    ds.VOILUTSequence = Sequence([lut_item([2048, 64512, 12], values.tolist(), explanation="CURVE")])
    pipeline = GrayscalePipeline.from_dataset(ds)
    assert len(pipeline.voi_tables) == 1
    voi = pipeline.voi_tables[0]
    assert voi.lut.first_mapped == -1024  # signed: rescale intercept is negative
    assert pipeline.default_voi() is voi and voi.explanation == "CURVE"
    stored = ds.pixel_array
    hu = stored.astype(float) - 1024
    want = np.floor(values[np.clip(hu + 1024, 0, 2047).astype(int)] / 4095 * 255 + 0.5)
    np.testing.assert_array_equal(pipeline.apply(stored), want)


@pytest.mark.parametrize(
    ("photometric", "shape", "caller_shape", "inverts"),
    [
        ("MONOCHROME2", None, None, False),
        ("MONOCHROME1", None, None, True),
        ("MONOCHROME1", "INVERSE", None, True),  # the shape accounts for MONOCHROME1: not twice
        ("MONOCHROME2", "INVERSE", None, True),
        ("MONOCHROME2", "IDENTITY", None, False),
        ("MONOCHROME1", "IDENTITY", None, True),  # inconsistent file: follow Photometric Interpretation
        ("MONOCHROME1", None, "IDENTITY", False),  # a presentation state's shape replaces the image's
        ("MONOCHROME2", None, "INVERSE", True),
    ],
)
def test_presentation_lut_shape(photometric: str, shape: str | None, caller_shape: str | None, inverts: bool) -> None:
    ds = Dataset()
    ds.PhotometricInterpretation = photometric
    if shape:
        ds.PresentationLUTShape = shape
    assert presentation_inverts(ds, caller_shape) is inverts


def test_monochrome1_is_inverse_of_monochrome2() -> None:
    ds = read("MR_small.dcm")
    m2 = render_frame(ds).astype(int)
    ds.PhotometricInterpretation = "MONOCHROME1"
    m1 = render_frame(ds).astype(int)
    assert np.abs(m1 - (255 - m2)).max() <= 1  # rounding of .5 ties only


# --------------------------------------------------------------------------- table vs direct arithmetic


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16"])
@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_lookup_table_equals_direct_computation(dtype: str, function: str) -> None:
    info = np.iinfo(dtype)
    stored = np.random.default_rng(1).integers(info.min, info.max, size=(32, 48), endpoint=True).astype(dtype)
    pipeline = GrayscalePipeline(modality=ModalityTransform(1.5, -7.25), invert=True)
    window = Window(10.0, 90.0, function)
    via_table = pipeline.apply(stored, window)
    direct = pipeline.apply(stored.astype(np.int32), window)  # 32-bit: no table
    assert pipeline.lut(np.dtype(np.int32), window) is None
    assert via_table.dtype == np.uint8 and via_table.shape == stored.shape
    np.testing.assert_array_equal(via_table, direct)


def test_float_and_32bit_data() -> None:
    ds = read("rtdose.dcm")  # 32-bit unsigned, 15 frames
    image = render_frame(ds, 7)
    assert image.dtype == np.uint8 and image.shape == (10, 10)
    assert image.min() == 0 and image.max() == 255  # min-max window by default
    floats = np.linspace(-1.0, 1.0, 100, dtype=np.float32).reshape(10, 10)
    out = GrayscalePipeline(ModalityTransform()).apply(floats)
    assert out[0, 0] == 0 and out[-1, -1] == 255
    floats[1, 1] = np.nan
    out = GrayscalePipeline(ModalityTransform()).apply(floats)
    assert out[1, 1] == 0 and out[-1, -1] == 255


def test_lut_cached_and_shared_between_equal_pipelines() -> None:
    ds = read("CT_small.dcm")
    a = GrayscalePipeline.from_dataset(ds)
    b = GrayscalePipeline.from_dataset(copy.deepcopy(ds))
    assert a == b
    window = Window(40, 400)
    assert a.lut(np.dtype(np.int16), window) is b.lut(np.dtype(np.int16), window)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_expb.dcm",
    ],
)
def test_every_syntax_decodes_like_the_native_file(name: str) -> None:
    reference = frame_array(data("MR_small.dcm"))
    np.testing.assert_array_equal(frame_array(data(name)), reference)
    np.testing.assert_array_equal(render_frame(data(name)), render_frame(data("MR_small.dcm")))


def test_deflated_file_decodes() -> None:
    path = data("image_dfl.dcm")
    np.testing.assert_array_equal(frame_array(path), pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize("source_kind", ["path", "dataset"])
def test_one_frame_of_a_multi_frame(source_kind: str) -> None:
    path = data("rtdose.dcm")
    whole = pydicom.dcmread(path).pixel_array
    source = path if source_kind == "path" else pydicom.dcmread(path)
    for frame in (0, 6, 14):
        np.testing.assert_array_equal(frame_array(source, frame), whole[frame])
    with pytest.raises(FrameIndexError, match="15 frame"):
        frame_array(source, 15)
    with pytest.raises(IndexError):
        frame_array(source, -1)


def test_iter_frames_decodes_one_at_a_time() -> None:
    path = data("SC_rgb_rle_2frame.dcm")
    whole = pydicom.dcmread(path).pixel_array
    frames = list(iter_frames(path))
    assert len(frames) == 2
    np.testing.assert_array_equal(np.stack(frames), whole)
    np.testing.assert_array_equal(next(iter_frames(path, [1])), whole[1])
    with pytest.raises(FrameIndexError):
        next(iter_frames(path, [0, 2]))


def test_bits_stored_masking_and_sign_extension() -> None:
    ds = read("MR_small.dcm")
    ds.Rows, ds.Columns = 2, 2
    ds.BitsStored, ds.HighBit = 12, 11
    raw = np.array([0xF800, 0x07FF, 0xAFFF, 0x0001], dtype="<u2")  # garbage above bit 11
    ds.PixelData = raw.tobytes()
    ds.PixelRepresentation = 1
    assert frame_array(ds).tolist() == [[-2048, 2047], [-1, 1]]
    ds.PixelRepresentation = 0
    assert frame_array(ds).tolist() == [[0x800, 0x7FF], [0xFFF, 1]]


def test_decoding_errors() -> None:
    with pytest.raises(PixelDataError, match="not a DICOM file"):
        frame_array(data("README.txt"))
    with pytest.raises(PixelDataError, match="not an image"):
        render_frame(data("rtplan.dcm"))
    ds = read("CT_small.dcm")
    del ds.PixelData
    with pytest.raises(PixelDataError, match="no Pixel Data"):
        frame_array(ds)


# --------------------------------------------------------------------------- colour


def test_rgb_planar_configuration() -> None:
    interleaved = render_frame(data("SC_rgb_small_odd.dcm"))
    assert interleaved.shape == (3, 3, 3) and interleaved.dtype == np.uint8
    ds = read("SC_rgb_small_odd.dcm")
    planes = np.moveaxis(ds.pixel_array, -1, 0)
    ds.PlanarConfiguration = 1
    ds.PixelData = planes.tobytes() + b"\0"  # odd length padded
    np.testing.assert_array_equal(render_frame(ds), interleaved)


def test_ybr_full_converted_with_t871_equations() -> None:
    ds = read("SC_ybr_full_422_uncompressed.dcm")
    ybr = pydicom_pixel_array(ds, raw=True).astype(float)
    y, cb, cr = ybr[..., 0], ybr[..., 1] - 128, ybr[..., 2] - 128
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    want = np.clip(np.floor(rgb + 0.5), 0, 255)
    np.testing.assert_array_equal(render_frame(ds), want)


def test_palette_color_and_16_bit_colour() -> None:
    ds = read("examples_palette.dcm")  # 16-bit palette entries holding v8 << 8
    image = render_frame(ds)
    assert image.shape == (*ds.pixel_array.shape, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, apply_color_lut(ds.pixel_array, ds) >> 8)
    rgb16 = render_frame(data("SC_rgb_rle_16bit.dcm"))
    np.testing.assert_array_equal(rgb16, render_frame(data("SC_rgb_rle.dcm")))
    assert to_uint8_color(np.array([0, 0x8000, 0xFFFF], dtype=np.uint16)).tolist() == [0, 128, 255]
    assert to_uint8_color(np.array([0, 4095], dtype=np.uint16), bits=12).tolist() == [0, 255]


# --------------------------------------------------------------------------- CLI


def test_cli_render_writes_png(tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "ct.png"
    assert cli_main(["render", data("CT_small.dcm"), "--window", "40", "400", "-o", str(out)]) == 0
    with Image.open(out) as png:
        assert png.mode == "L" and png.size == (128, 128)
        np.testing.assert_array_equal(np.asarray(png), render_frame(data("CT_small.dcm"), 0, (40, 400)))
    out = tmp_path / "rgb.png"
    assert cli_main(["render", data("SC_rgb_rle_2frame.dcm"), "--frame", "2", "-o", str(out)]) == 0
    with Image.open(out) as png:
        assert png.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(png), render_frame(data("SC_rgb_rle_2frame.dcm"), 1))
    out = tmp_path / "mr.png"
    assert cli_main(["render", data("MR_small.dcm"), "--voi", "1", "-o", str(out)]) == 0
    assert cli_main(["render", data("MR_small.dcm"), "--minmax", "-o", str(out)]) == 0
    with Image.open(out) as png:
        grey = np.asarray(png)
        assert grey.min() == 0 and grey.max() == 255


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["README.txt"], "is not a DICOM file"),
        (["CT_small.dcm", "--frame", "2"], "frame 2 out of range"),
        (["rtdose.dcm", "--frame", "0"], "frame 0 out of range"),
        (["MR_small.dcm", "--voi", "3"], "--voi 3 out of range"),
        (["CT_small.dcm", "--window", "40", "0"], "Window Width must be >= 1"),
        (["rtplan.dcm"], "not an image"),
    ],
)
def test_cli_render_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args, message) -> None:
    argv = ["render", data(args[0]), *args[1:], "-o", str(tmp_path / "x.png")]
    assert cli_main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_jpeg_ls_is_decoded_by_charls_to_the_same_stored_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JPEG-LS goes to CharLS (pyjpegls, ~4x faster than libjpeg's JPEG-LS codec that pydicom
    picks first): the stored values are those of the native original and of pydicom's default
    decoder; an unavailable preferred plugin falls back to pydicom's own choice."""
    from _viewer_data import write_ct
    from hilum.dicom import pixels as px

    native = write_ct(tmp_path / "native", rows=128, slices=3)
    jls = write_ct(tmp_path / "jls", rows=128, slices=3, syntax="jpeg-ls")
    header = pydicom.dcmread(jls[0], stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert px._decoding_plugin(header) == "pyjpegls"
    for n, j in zip(native, jls, strict=True):
        ours = px.frame_array(str(j))
        assert ours.dtype == px.frame_array(str(n)).dtype
        assert np.array_equal(ours, px.frame_array(str(n)))
        assert np.array_equal(ours, pydicom_pixel_array(str(j), decoding_plugin="pylibjpeg"))
    assert all(np.array_equal(a, px.frame_array(str(n))) for a, n in zip(
        [next(px.iter_frames(str(j))) for j in jls], native, strict=True))  # fmt: skip
    monkeypatch.setitem(px._PREFERRED_PLUGINS, "1.2.840.10008.1.2.4.80", "no-such-plugin")
    assert px._decoding_plugin(header) == ""
    assert np.array_equal(px.frame_array(str(jls[0])), px.frame_array(str(native[0])))
