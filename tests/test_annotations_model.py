"""The annotation model (hilum.dicom.annotations) and the new measurement math (Cobb, freehand)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hilum.dicom.annotations import KINDS, Annotation, AnnotationSet, KeyImage, value_lines
from hilum.dicom.geometry import Spacing
from hilum.dicom.stack_measure import (
    cobb_degrees,
    ellipse_mask,
    polygon_area,
    polygon_mask,
    polygon_stats,
    rect_mask,
    roi_stats,
)

MM = Spacing(0.5, 0.5, "PixelSpacing")
PX = Spacing()

POINTS = {
    "arrow": [(10, 10), (20, 20)],
    "text": [(5, 5)],
    "length": [(0, 0), (30, 40)],
    "angle": [(10, 0), (0, 0), (0, 10)],
    "cobb": [(0, 0), (10, 0), (0, 5), (10, 15)],
    "ellipse": [(2, 2), (12, 8)],
    "rect": [(2, 2), (12, 8)],
    "freehand": [(2, 2), (12, 2), (12, 8), (2, 8)],
    "point": [(3, 4)],
}


def ann(kind: str, sop: str = "1.2.3", frame: int = 0, **kw: object) -> Annotation:
    return Annotation(kind, sop, frame, list(POINTS[kind]), **kw)  # type: ignore[arg-type]


# --- measurement math ----------------------------------------------------------------------------


def test_cobb_is_the_angle_between_two_lines_whatever_their_direction() -> None:
    h = [(0.0, 0.0), (10.0, 0.0)]
    d = [(0.0, 0.0), (10.0, 10.0)]
    assert cobb_degrees(*h, *d, PX) == pytest.approx(45.0)
    assert cobb_degrees(*h, d[1], d[0], PX) == pytest.approx(45.0)  # reversed line: same angle
    assert cobb_degrees(h[1], h[0], *d, PX) == pytest.approx(45.0)
    steep = [(0.0, 0.0), (1.0, 10.0)]
    assert cobb_degrees(*h, *steep, PX) == pytest.approx(math.degrees(math.atan(10.0)))
    # lines that do not cross on the image (two endplates far apart), parallel: 0
    assert cobb_degrees((0, 0), (10, 1), (50, 100), (70, 102), PX) == pytest.approx(0.0, abs=1e-9)
    # physical space: rows twice as far apart as columns
    assert cobb_degrees(*h, *d, Spacing(2.0, 1.0, "PixelSpacing")) == pytest.approx(math.degrees(math.atan(2.0)))
    assert cobb_degrees((0, 0), (0, 0), *d, PX) == 0.0


def test_polygon_mask_matches_rect_mask_for_an_axis_aligned_square() -> None:
    shape = (20, 30)
    for x0, y0, x1, y1 in [(2.0, 3.0, 12.0, 9.0), (2.5, 3.5, 12.5, 9.5), (-4.0, -4.0, 5.2, 6.7)]:
        poly = polygon_mask(shape, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
        rect = rect_mask(shape, (x0, y0), (x1, y1))
        # half-open rule: the right and bottom edges are outside when they fall on pixel centres
        rect_half = rect.copy()
        if float(x1).is_integer():
            rect_half[:, int(x1)] = False
        if float(y1).is_integer():
            rect_half[int(y1), :] = False
        assert np.array_equal(poly, rect_half), (x0, y0, x1, y1)


def test_polygon_mask_of_a_fine_circle_is_the_ellipse_mask() -> None:
    shape = (64, 64)
    cx, cy, r = 31.3, 30.6, 17.2
    t = np.linspace(0, 2 * math.pi, 2000, endpoint=False)
    poly = list(zip(cx + r * np.cos(t), cy + r * np.sin(t), strict=True))
    got = polygon_mask(shape, poly)
    want = ellipse_mask(shape, (cx - r, cy - r), (cx + r, cy + r))
    assert abs(int(got.sum()) - int(want.sum())) <= 2
    assert int((got ^ want).sum()) <= 4  # only centres within a hair of the outline can differ


def test_polygon_mask_concave_and_self_overlapping() -> None:
    # an L shape: the notch is outside
    L = [(0, 0), (10, 0), (10, 4), (4, 4), (4, 10), (0, 10)]
    m = polygon_mask((12, 12), L)
    assert m[1, 8] and m[8, 1] and not m[8, 8]
    assert polygon_area(L, PX) == pytest.approx(10 * 4 + 4 * 6)
    assert polygon_area(list(reversed(L)), PX) == pytest.approx(64.0)  # orientation does not matter
    assert polygon_area(L, MM) == pytest.approx(64.0 * 0.25)
    assert not polygon_mask((5, 5), [(1, 1), (3, 3)]).any()
    assert not polygon_mask((5, 5), [(10, 10), (20, 10), (20, 20)]).any()  # off the image


def test_polygon_stats_over_known_values() -> None:
    values = np.zeros((20, 20), dtype=np.int16)
    values[5:10, 5:10] = 100
    s = polygon_stats(values, [(4.5, 4.5), (9.5, 4.5), (9.5, 9.5), (4.5, 9.5)], MM, "HU")
    assert s.count == 25 and s.mean == 100.0 and s.sd == 0.0 and s.min == s.max == 100.0
    assert s.area == pytest.approx(25 * 0.25) and s.area_unit == "mm²" and s.unit == "HU"
    # the same square as a rect ROI gives the same statistics
    r = roi_stats(values, "rect", (4.5, 4.5), (9.5, 9.5), MM, "HU")
    assert (r.count, r.mean, r.area) == (s.count, s.mean, s.area)
    empty = polygon_stats(values, [(0.1, 0.1), (0.4, 0.1), (0.4, 0.4)], PX)
    assert empty.count == 0 and math.isnan(empty.mean) and empty.area_unit == "px²"
    with pytest.raises(ValueError):
        polygon_stats(np.zeros((2, 2, 3)), [(0, 0), (1, 0), (1, 1)], PX)


# --- Annotation ------------------------------------------------------------------------------------


def test_every_kind_is_constructible_and_checked() -> None:
    assert set(KINDS) == set(POINTS)
    for kind in KINDS:
        a = ann(kind)
        assert a.kind == kind and a.key == ("1.2.3", 0) and a.origin == "user"
        assert all(isinstance(c, float) for p in a.points for c in p)
        assert len(a.uid) == 32
    assert ann("length").uid != ann("length").uid
    with pytest.raises(ValueError, match="kind"):
        Annotation("circle", "1", 0, [(0, 0), (1, 1)])
    with pytest.raises(ValueError, match="3 points"):
        Annotation("angle", "1", 0, [(0, 0), (1, 1)])
    with pytest.raises(ValueError, match="at least 3"):
        Annotation("freehand", "1", 0, [(0, 0), (1, 1)])
    with pytest.raises(ValueError):
        Annotation("cobb", "1", 0, [(0, 0), (1, 1), (2, 2)])


def test_values_for_every_kind() -> None:
    values = np.zeros((16, 16), dtype=np.int16)
    values[2:9, 2:13] = 40
    values[4, 3] = 77
    got = {k: ann(k).values(values, MM, "HU") for k in KINDS}
    assert got["arrow"] == {} and got["text"] == {}
    assert got["length"]["length"] == pytest.approx(25.0) and got["length"]["unit"] == "mm"
    assert got["angle"] == {"angle": pytest.approx(90.0), "unit": "deg"}
    assert got["cobb"]["angle"] == pytest.approx(45.0)
    rect = got["rect"]
    assert rect["count"] == 11 * 7 and rect["area"] == pytest.approx(10 * 6 * 0.25)
    assert rect["area_unit"] == "mm²" and rect["unit"] == "HU"
    assert rect["max"] == 77 and rect["min"] == 40
    ell = got["ellipse"]
    assert ell["area"] == pytest.approx(math.pi * 5 * 3 * 0.25) and 0 < ell["count"] < rect["count"]
    fh = got["freehand"]
    assert fh["area"] == pytest.approx(rect["area"]) and fh["count"] == 10 * 6  # half-open edges
    assert got["point"] == {"value": 77.0, "unit": "HU", "column": 3, "row": 4}
    # uncalibrated: px; without values: area only; point outside: NaN
    assert ann("length").values(None, PX)["unit"] == "px"
    assert set(ann("rect").values(None, MM)) == {"area", "area_unit", "note"}
    assert set(ann("freehand").values(None, PX)) == {"area", "area_unit", "note"}
    off = Annotation("point", "1", 0, [(99, 99)])
    assert math.isnan(off.values(values, MM)["value"])


def test_value_lines() -> None:
    values = np.full((16, 16), 40, dtype=np.int16)
    assert value_lines("length", ann("length").values(values, MM)) == ["25.0 mm"]
    assert value_lines("angle", ann("angle").values(values, MM)) == ["90.0°"]
    assert value_lines("cobb", ann("cobb").values(values, MM)) == ["Cobb 45.0°"]
    rect = value_lines("rect", ann("rect").values(values, MM, "HU"))
    assert rect[0] == "Area 15.0 mm²" and rect[1].startswith("Mean 40.0 HU")
    assert value_lines("point", ann("point").values(values, MM, "HU")) == ["40 HU"]
    assert value_lines("text", {}) == []


def test_key_image_fields() -> None:
    k = KeyImage("1.2", 0, "1.3", "1.2.840.10008.5.1.4.1.1.2")
    assert (k.sop_instance_uid, k.frame, k.series_uid) == ("1.2", 0, "1.3")


# --- AnnotationSet ---------------------------------------------------------------------------------


def test_set_add_on_remove_and_events() -> None:
    s = AnnotationSet()
    events: list[tuple[str, str]] = []
    unsub = s.subscribe(lambda what, uid: events.append((what, uid)))
    a, b, c = ann("length"), ann("rect", frame=1), ann("text", sop="9.9")
    for x in (a, b, c):
        s.add(x)
    assert len(s) == 3 and s.all() == [a, b, c]
    assert s.on("1.2.3", 0) == [a] and s.on("1.2.3", 1) == [b] and s.on("9.9", 0) == [c] and s.on("x", 0) == []
    assert s.get(a.uid) is a and a.uid in s
    assert events == [("add", a.uid), ("add", b.uid), ("add", c.uid)]
    s.remove(b.uid)
    assert s.on("1.2.3", 1) == [] and events[-1] == ("remove", b.uid)
    with pytest.raises(KeyError):
        s.remove(b.uid)
    with pytest.raises(ValueError):
        s.add(a)  # same uid twice
    unsub()
    s.remove(a.uid)
    assert events[-1] == ("remove", b.uid)


def test_set_update_moves_between_images_and_is_checked() -> None:
    s = AnnotationSet()
    a = s.add(ann("length"))
    s.update(a.uid, points=[(1, 1), (2, 2)], text="L1")
    assert a.points == [(1.0, 1.0), (2.0, 2.0)] and a.text == "L1"
    s.update(a.uid, frame=3)
    assert s.on("1.2.3", 0) == [] and s.on("1.2.3", 3) == [a]
    with pytest.raises(ValueError):
        s.update(a.uid, points=[(1, 1)])
    with pytest.raises(ValueError):
        s.update(a.uid, kind="rect")
    with pytest.raises(ValueError):
        s.update(a.uid, colour="red")
    with pytest.raises(KeyError):
        s.update("nope", text="x")


def test_undo_redo_every_step() -> None:
    s = AnnotationSet()
    events: list[str] = []
    s.subscribe(lambda what, uid: events.append(what))
    assert not s.undo() and not s.redo() and not s.dirty
    a = s.add(ann("length"))
    b = s.add(ann("angle"))
    s.update(a.uid, points=[(5, 5), (6, 6)])
    s.remove(b.uid)
    assert s.all() == [a] and s.dirty
    assert s.undo()  # remove undone: b back in its place
    assert [x.uid for x in s.all()] == [a.uid, b.uid] and events[-1] == "add"
    assert s.undo()  # update undone
    assert s.get(a.uid).points == [(0.0, 0.0), (30.0, 40.0)] and events[-1] == "update"  # type: ignore[union-attr]
    assert s.undo() and s.undo()  # both adds undone
    assert len(s) == 0 and not s.undo() and not s.dirty
    assert s.redo() and s.redo() and s.redo()
    assert s.get(a.uid).points == [(5.0, 5.0), (6.0, 6.0)]  # type: ignore[union-attr]
    assert s.redo() and s.get(b.uid) is None and not s.redo()
    # a new step drops the redo history
    s.undo()
    s.add(ann("point"))
    assert not s.redo()


def test_drag_updates_with_one_merge_token_are_one_step() -> None:
    s = AnnotationSet()
    a = s.add(ann("length"))
    for _ in range(5):
        s.update(a.uid, points=a.moved(1, 0), merge="drag-1")
    assert a.points[0] == (5.0, 0.0)
    s.update(a.uid, points=a.moved(0, 1), merge="drag-2")  # another drag: another step
    assert s.undo() and a.points[0] == (5.0, 0.0)
    assert s.undo() and a.points[0] == (0.0, 0.0)
    assert s.redo() and a.points[0] == (5.0, 0.0)
    assert s.undo() and s.undo() and len(s) == 0


def test_dirty_and_mark_saved() -> None:
    s = AnnotationSet()
    seen: list[str] = []
    s.subscribe(lambda what, uid: seen.append(what))
    a = s.add(ann("length"))
    assert s.dirty
    s.mark_saved()
    assert not s.dirty and seen[-1] == "saved"
    s.update(a.uid, text="x")
    assert s.dirty
    s.undo()
    assert not s.dirty  # back to what was saved
    s.undo()
    assert s.dirty  # before the save
    s.redo()
    assert not s.dirty


def test_load_is_not_undoable_and_keeps_clean() -> None:
    s = AnnotationSet()
    read = [ann("length", origin="gsps:1.2"), ann("text", text="hello")]
    added = s.load(read)
    assert added == read and len(s) == 2 and not s.dirty and not s.can_undo
    assert s.load(read) == []  # already there
    s.add(ann("point"))
    assert s.dirty
    s.clear()
    assert len(s) == 0 and s.dirty and not s.can_undo


def test_remove_many_is_one_step() -> None:
    s = AnnotationSet()
    items = [s.add(ann(k)) for k in ("length", "rect", "point")]
    seen: list[tuple[str, str]] = []
    s.subscribe(lambda what, uid: seen.append((what, uid)))
    assert s.remove_many([items[0].uid, "nope", items[2].uid]) == [items[0], items[2]]
    assert s.all() == [items[1]] and seen == [("remove", items[0].uid), ("remove", items[2].uid)]
    assert s.undo() and [a.uid for a in s.all()] == [a.uid for a in items]  # back in their places
    assert s.redo() and [a.uid for a in s.all()] == [items[1].uid]
    assert s.remove_many([]) == [] and s.undo() and len(s) == 3
