"""Heat maps: a FRACTIONAL SEG (highdicom) read back onto a series' volume order (hilum.dicom.heatmap)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from _viewer_data import write_ct
from hilum.dicom.heatmap import is_fractional, read_heatmap
from hilum.dicom.stack_load import load_series_sync


def _fractional(headers, heat, segmentation_type="FRACTIONAL"):  # type: ignore[no-untyped-def]
    import highdicom as hd

    desc = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Heat", segmented_property_category=hd.sr.CodedConcept("91723000", "SCT",
        "Anatomical structure"), segmented_property_type=hd.sr.CodedConcept("123037004", "SCT", "Body structure"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(name="test", version="1", family=hd.sr.CodedConcept(
            "123110", "DCM", "Artificial Intelligence")),
    )  # fmt: skip
    kw = {}
    if segmentation_type == "FRACTIONAL":
        kw = {"fractional_type": hd.seg.SegmentationFractionalTypeValues.PROBABILITY, "max_fractional_value": 255}
        arr = heat.astype(np.float32)
    else:
        arr = (heat > 0.5).astype(np.uint8)
    return hd.seg.Segmentation(
        source_images=headers, pixel_array=arr, segmentation_type=getattr(hd.seg.SegmentationTypeValues,
        segmentation_type), segment_descriptions=[desc], series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="Hilum", manufacturer_model_name="test",
        software_versions="1", device_serial_number="0", omit_empty_frames=True, **kw,
    )  # fmt: skip


@pytest.fixture
def series(tmp_path):  # type: ignore[no-untyped-def]
    volume = load_series_sync(write_ct(tmp_path / "ct", rows=32, slices=6))
    order = volume.stack.order
    headers = [pydicom.dcmread(order.items[u].path, stop_before_pixels=True) for u in order.unique]
    rng = np.random.default_rng(19)
    heat = rng.random((6, 32, 32)).astype(np.float32)
    heat[:, :8] = 0.0
    heat[2] = 0.0  # an empty frame (left out of the SEG): zeros when read back
    return volume.stack, headers, heat


def test_read_heatmap_by_source_instance(series):  # type: ignore[no-untyped-def]
    stack, headers, heat = series
    seg = _fractional(headers, heat)
    assert is_fractional(seg)
    got = read_heatmap(seg, stack)
    assert got.shape == heat.shape and got.dtype == np.float32
    assert np.abs(got - heat).max() <= 0.5 / 255 + 1e-6
    assert not got[2].any()


def test_read_heatmap_by_position_when_frames_name_no_source(series):  # type: ignore[no-untyped-def]
    stack, headers, heat = series
    seg = _fractional(headers, heat)
    for item in seg.PerFrameFunctionalGroupsSequence:  # frames that do not say which image they came from
        if "DerivationImageSequence" in item:
            del item.DerivationImageSequence
    for ref in seg.ReferencedSeriesSequence:
        ref.ReferencedInstanceSequence = []
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(seg)))
    got = read_heatmap(ds, stack)
    assert np.abs(got - heat).max() <= 0.5 / 255 + 1e-6


def test_a_binary_seg_is_not_a_heat_map(series):  # type: ignore[no-untyped-def]
    stack, headers, heat = series
    seg = _fractional(headers, heat, "BINARY")
    assert not is_fractional(seg)
    with pytest.raises(ValueError, match="FRACTIONAL"):
        read_heatmap(seg, stack)


def _bytes(ds) -> bytes:  # type: ignore[no-untyped-def]
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
