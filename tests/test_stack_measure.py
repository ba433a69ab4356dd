"""Measurement math in true units: lengths in mm, angles with non-square pixels, ROI statistics in HU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _viewer_data import hu_point_to_pixel, write_ct
from hilum.dicom.geometry import Spacing
from hilum.dicom.stack_load import load_series_sync
from hilum.dicom.stack_measure import (
    angle_degrees,
    ellipse_mask,
    length_mm,
    modality_unit,
    rect_mask,
    roi_area,
    roi_stats,
)

MM = Spacing(0.5, 0.25, "PixelSpacing")


def test_a_10_mm_line_measures_10_mm():
    assert length_mm((0, 0), (40, 0), MM) == pytest.approx(10.0)  # 40 columns x 0.25 mm
    assert length_mm((3, 1), (3, 21), MM) == pytest.approx(10.0)  # 20 rows x 0.5 mm
    assert length_mm((0, 0), (3, 4), Spacing()) == pytest.approx(5.0)  # uncalibrated: pixels


def test_angle_is_measured_in_millimetres():
    # 4 columns right and 2 rows down are both 1 mm: a right angle in the patient
    assert angle_degrees((4, 0), (0, 0), (0, 2), MM) == pytest.approx(90.0)
    # in pixels the same three points would give atan(2/4) + ... ; here 45°:
    assert angle_degrees((4, 0), (0, 0), (4, 2), MM) == pytest.approx(45.0)
    assert angle_degrees((1, 1), (1, 1), (2, 2), MM) == 0.0


def test_masks_take_pixel_centres_inside():
    assert rect_mask((10, 10), (1.5, 2.5), (4.5, 3.5)).sum() == 3 * 1
    assert rect_mask((10, 10), (4, 3), (1, 2)).sum() == 4 * 2  # corners inclusive, any order
    m = ellipse_mask((41, 41), (0, 0), (40, 40))
    assert abs(m.sum() - math.pi * 20 * 20) < 0.02 * math.pi * 400
    assert roi_area("ellipse", (0, 0), (40, 40), MM) == pytest.approx(math.pi * 5 * 10)
    assert roi_area("rect", (0, 0), (40, 40), MM) == pytest.approx(10 * 20)


def test_roi_stats_of_known_values():
    values = np.zeros((20, 20))
    values[5:10, 5:10] = np.arange(25).reshape(5, 5)
    s = roi_stats(values, "rect", (5, 5), (9, 9), MM, "HU")
    assert s.count == 25 and s.mean == pytest.approx(12.0) and s.min == 0 and s.max == 24
    assert s.sd == pytest.approx(np.arange(25).std(ddof=1))
    assert s.unit == "HU" and s.area_unit == "mm²"
    empty = roi_stats(values, "ellipse", (0.1, 0.1), (0.2, 0.2), MM)
    assert empty.count == 0 and math.isnan(empty.mean)


def test_roi_on_uniform_regions_of_a_generated_ct_gives_their_hu(tmp_path):
    rows = 128
    vol = load_series_sync(write_ct(tmp_path, rows=rows, slices=3), executor="serial")
    hu = vol.modality_values(0)
    sp = vol.stack.frames[0].spacing
    for landmark, expected in (((0.0, -150.0), -1000.0), ((0.0, -40.0), 40.0), ((-70.0, -50.0), -850.0)):
        cx, cy = hu_point_to_pixel(*landmark, rows)
        s = roi_stats(hu, "ellipse", (cx - 3, cy - 3), (cx + 3, cy + 3), sp, "HU")
        assert s.count > 20
        assert s.mean == pytest.approx(expected) and s.sd == pytest.approx(0.0)
    # a 10 mm line between two pixel centres 10 mm apart (pixel spacing 360/128 mm)
    px = 10.0 / sp.column
    assert length_mm((10, 10), (10 + px, 10), sp) == pytest.approx(10.0)


def test_modality_unit():
    assert modality_unit("CT") == "HU"
    assert modality_unit("PT", "BQML") == "BQML"
    assert modality_unit("MR") == ""
    assert modality_unit("CT", "US") == "HU"
