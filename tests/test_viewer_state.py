"""The viewer's headless logic: viewport state, tools, model (links, reference lines), presets, overlay, export."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from _viewer_data import hu_point_to_pixel, write_ct
from hilum.dicom.generator import CORONAL
from hilum.dicom.stack_load import load_series_sync
from hilum.errors import ConfigError
from hilum.ui.viewer.export import ExportError, export_cine, oriented, view_frames
from hilum.ui.viewer.model import Layout, ViewerModel
from hilum.ui.viewer.overlay import OverlayConfig, corner_texts
from hilum.ui.viewer.presets import PresetStore, WindowPreset, read_presets
from hilum.ui.viewer.state import ViewportState, ViewTransform, nice_scale_length
from hilum.ui.viewer.tools import AngleTool, EllipseTool, LengthTool, ProbeTool, ScrollTool, WindowTool

ROWS = 64


@pytest.fixture
def ct(tmp_path):
    return load_series_sync(write_ct(tmp_path / "ct", rows=ROWS, slices=8, thickness=5.0), executor="serial")


@pytest.fixture
def vp(ct):
    st = ViewportState()
    st.canvas_size = (256, 256)
    st.set_volume(ct)
    return st


def pixel(img, landmark):
    x, y = hu_point_to_pixel(*landmark, ROWS)
    return int(img[int(round(y)), int(round(x))])


def test_render_soft_tissue_window_body_bright_air_black(vp):
    img = vp.render()
    assert img.dtype == np.uint8 and img.shape == (ROWS, ROWS)
    assert vp.current_window().center == 40 and vp.current_window().width == 400  # header's first window
    assert pixel(img, (0, -150)) == 0  # air
    assert 120 < pixel(img, (0, -40)) < 140  # soft tissue 40 HU at C40/W400 -> ~128
    assert pixel(img, (0, 75)) == 255  # bone
    vp.toggle_invert()
    assert pixel(vp.render(), (0, -150)) == 255


def test_window_drag_presets_and_reset(vp):
    before = vp.render().copy()
    WindowTool().press(vp, 10, 10)
    tool = WindowTool()
    tool.press(vp, 10, 10)
    tool.release(vp, 60, 30)  # wider and higher level
    w = vp.current_window()
    assert w.width > 400 and w.center > 40
    assert not np.array_equal(before, vp.render())
    vp.set_window(-600, 1500, "Lung")
    assert 0 < pixel(vp.render(), (-70, -50)) < 128  # lung visible, not black
    vp.reset_window()
    assert np.array_equal(before, vp.render())


def test_window_changes_keep_the_function_and_inversion_as_mpr_does(tmp_path):
    """The viewer's window changes go through the one display model (DisplayTransform, as MPR's):
    a drag or a preset on a MONOCHROME1 SIGMOID series stays SIGMOID and inverted, and the pixels are
    that display of the modality values; a header window from the menu keeps its own function; a VOI
    LUT table gives way to the LINEAR window a drag starts from (VOITable.equivalent_window)."""
    import pydicom
    from pydicom.dataset import Dataset

    from hilum.dicom.pixels import DisplayTransform, VOITable, Window

    paths = write_ct(tmp_path / "sig", rows=ROWS, slices=4, thickness=5.0)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.VOILUTFunction = "SIGMOID"
        ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
        del ds.WindowCenterWidthExplanation
        ds.save_as(p)
    st = ViewportState()
    st.set_volume(load_series_sync(paths, executor="serial"))
    header = st.display()
    assert header is not None and header.invert and isinstance(header.voi, Window)
    assert (header.voi.center, header.voi.width, header.voi.function) == (40.0, 400.0, "SIGMOID")
    tool = WindowTool()
    tool.press(st, 10, 10)
    tool.release(st, 70, 35)
    assert st.display() == header.dragged(60.0, 25.0) and st.window.function == "SIGMOID"
    np.testing.assert_array_equal(st.render(), st.display().apply(st.modality_frame()))
    assert pixel(st.render(), (0, -150)) == 255  # air white: still inverted
    st.set_window(-600, 1500, "Lung")
    assert st.display() == header.with_window(-600.0, 1500.0)
    st.set_voi(Window(-600.0, 1500.0, "LINEAR_EXACT"), "Header window 2")
    assert st.display() == DisplayTransform(Window(-600.0, 1500.0, "LINEAR_EXACT"), invert=True)
    st.reset_window()
    assert st.display() == header

    table_paths = write_ct(tmp_path / "table", rows=ROWS, slices=2, thickness=5.0, series_number=3)
    for p in table_paths:
        ds = pydicom.dcmread(p)
        item = Dataset()
        item.add_new(0x00283002, "US", [4096, 65536 - 1024, 16])  # LUT Descriptor: from HU -1024
        item.add_new(0x00283006, "US", np.linspace(0, 65535, 4096).astype(int).tolist())  # LUT Data
        ds.VOILUTSequence = [item]
        del ds.WindowCenter, ds.WindowWidth
        ds.save_as(p)
    st.set_volume(load_series_sync(table_paths, executor="serial"))
    table = st.display()
    assert table is not None and isinstance(table.voi, VOITable)
    st.drag_window(20.0, -10.0)
    assert st.display() == table.dragged(20.0, -10.0) and st.window.function == "LINEAR"


def test_scroll_page_first_last_and_cine(vp):
    assert vp.index == 4
    assert vp.scroll(1) and vp.index == 5
    assert not vp.scroll(100) or vp.index == 7
    vp.first()
    assert vp.index == 0
    vp.page(1)
    assert vp.index == 1  # a tenth of 8 slices, at least one
    vp.last()
    assert vp.index == 7
    events = []
    vp.subscribe(lambda s, what: events.append(what))
    vp.first()  # the bottom of this axial stack (the feet end): the cine runs down and loops to the top
    vp.set_cine_fps(20)
    vp.set_cine(True)
    assert vp.advance_cine(0.1) == 2 and vp.index == 6  # looped past the bottom to the top
    vp.set_cine(False)
    assert vp.advance_cine(1.0) == 0
    assert "index" in events and "cine" in events


def test_scroll_tool_drag(vp):
    t = ScrollTool()
    t.press(vp, 0, 0)
    t.release(vp, 0, 2 * 256 / 8)
    assert vp.index == 2  # dragging down goes down the stack: two slices towards the feet
    z = [f.geometry.origin[2] for f in vp.volume.stack.frames]
    assert z[2] < z[4]


def test_view_matrix_round_trip_letters_and_flips(vp):
    x, y = vp.canvas_to_image(*vp.image_to_canvas(10.25, 33.5))
    assert (x, y) == pytest.approx((10.25, 33.5))
    assert vp.edge_letters() == {"right": "L", "left": "R", "bottom": "P", "top": "A"}
    vp.flip_horizontal()
    assert vp.edge_letters()["right"] == "R"
    vp.flip_horizontal()
    vp.rotate(90)  # clockwise: the image's top (anterior) goes to the right
    assert vp.edge_letters()["right"] == "A" and vp.edge_letters()["bottom"] == "L"
    vp.reset_view()
    assert vp.view == ViewTransform()
    # fit: the image fills the smaller canvas side, centred
    cx, cy = vp.image_to_canvas((ROWS - 1) / 2, (ROWS - 1) / 2)
    assert (cx, cy) == pytest.approx((128, 128))
    x0, _ = vp.image_to_canvas(-0.5, 0)
    x1, _ = vp.image_to_canvas(ROWS - 0.5, 0)
    assert x1 - x0 == pytest.approx(256)


def test_zoom_keeps_anchor_and_non_square_pixels_keep_aspect():
    t = ViewTransform()
    m = t.matrix((400, 400), (100, 100), (2.0, 1.0))  # rows 2 mm apart, columns 1 mm
    w = (m @ [99.5, 0, 1])[0] - (m @ [-0.5, 0, 1])[0]
    h = (m @ [0, 99.5, 1])[1] - (m @ [0, -0.5, 1])[1]
    assert h == pytest.approx(2 * w)


def test_zoom_by_anchor(vp):
    anchor = (50.0, 70.0)
    before = vp.canvas_to_image(*anchor)
    vp.zoom_by(2.0, anchor)
    assert vp.canvas_to_image(*anchor) == pytest.approx(before)


def test_scale_bar(vp):
    assert nice_scale_length(1.0, 64) == 50
    assert nice_scale_length(0.3, 100) == 20
    length_mm, length_px = vp.scale_bar(0.25)
    mm_per_px = (360.0 / ROWS) / (256 / ROWS)
    assert length_px * mm_per_px == pytest.approx(length_mm)


def test_probe_reports_hu_and_patient_coordinates(vp):
    x, y = hu_point_to_pixel(0, -40, ROWS)
    r = vp.probe(x, y)
    assert r.value == pytest.approx(40.0) and r.unit == "HU"
    p = vp.geometry.to_patient(r.column, r.row)
    assert r.patient == pytest.approx(tuple(p))
    assert "HU" in r.text()
    tool = ProbeTool()
    tool.press(vp, *vp.image_to_canvas(x, y))
    assert vp.probe_result.value == pytest.approx(40.0)
    assert vp.probe(-5, 3) is None


def _drag(tool, vp, a, b):
    tool.press(vp, *vp.image_to_canvas(*a))
    tool.move(vp, *vp.image_to_canvas(*b))
    tool.release(vp, *vp.image_to_canvas(*b))


def test_length_tool_measures_10_mm(vp):
    px = 10.0 / vp.frame_info.spacing.column
    _drag(LengthTool(), vp, (20, 20), (20 + px, 20))
    (m,) = vp.measurements
    assert m.kind == "length" and vp.annotation_values(m)["length"] == pytest.approx(10.0)
    assert vp.annotation_lines(m) == ["10.0 mm"]
    _drag(LengthTool(), vp, (5, 5), (5.1, 5))  # a click: nothing added
    assert len(vp.measurements) == 1


def test_ellipse_roi_tool_gives_hu_statistics(vp):
    cx, cy = hu_point_to_pixel(0, -150, ROWS)  # air
    _drag(EllipseTool(), vp, (cx - 2, cy - 2), (cx + 2, cy + 2))
    stats = vp.annotation_values(vp.measurements[-1])
    assert stats["mean"] == pytest.approx(-1000.0) and stats["unit"] == "HU" and stats["count"] >= 9
    sp = vp.frame_info.spacing
    assert stats["area"] == pytest.approx(math.pi * 2 * sp.column * 2 * sp.row)
    assert any("Mean -1000.0 HU" in line for line in vp.annotation_lines(vp.measurements[-1]))


def test_angle_tool_three_points(vp):
    t = AngleTool()
    a, v, b = (30, 10), (10, 10), (10, 40)
    t.press(vp, *vp.image_to_canvas(*a))
    t.move(vp, *vp.image_to_canvas(*v))
    t.release(vp, *vp.image_to_canvas(*v))
    t.hover(vp, *vp.image_to_canvas(20, 30))
    t.press(vp, *vp.image_to_canvas(*b))
    t.release(vp, *vp.image_to_canvas(*b))
    (m,) = vp.measurements
    assert m.kind == "angle" and vp.annotation_values(m)["angle"] == pytest.approx(90.0)


def test_measurements_belong_to_their_slice(vp):
    _drag(LengthTool(), vp, (10, 10), (30, 10))
    from hilum.ui.viewer.tools import measurements_on_frame

    assert len(measurements_on_frame(vp)) == 1
    vp.scroll(1)
    assert measurements_on_frame(vp) == []


def test_linked_scrolling_by_position_not_index(tmp_path):
    thin = load_series_sync(write_ct(tmp_path / "thin", rows=32, slices=20, thickness=2.0), executor="serial")
    thick = load_series_sync(write_ct(tmp_path / "thick", rows=32, slices=8, thickness=5.0, series_number=2,
                                      descending=True), executor="serial")  # fmt: skip
    model = ViewerModel(Layout(1, 2))
    a, b = model.viewports
    a.set_volume(thin)
    b.set_volume(thick)
    for k in (0, 5, 13, 19):
        a.set_index(k)
        za = a.geometry.centre[2]
        zb = b.geometry.centre[2]
        assert abs(za - zb) <= 2.5 + 1e-6
    model.set_links(scroll=False)
    before = b.index
    a.set_index(3)
    assert b.index == before


def test_window_and_zoom_links(ct):
    model = ViewerModel(Layout(1, 2))
    a, b = model.viewports
    a.set_volume(ct)
    b.set_volume(ct)
    a.set_window(50, 350)
    assert b.current_window().width == 400  # not linked by default
    model.set_links(window=True, zoom=True)
    a.set_window(-600, 1500, "Lung")
    assert (b.current_window().center, b.current_window().width) == (-600, 1500)
    a.set_zoom(2.5)
    assert b.view.zoom == 2.5


def test_reference_line_of_active_slice_on_localizer(tmp_path, ct):
    loc = load_series_sync(write_ct(tmp_path / "loc", rows=ROWS, slices=1, orientation=CORONAL, series_number=9),
                           executor="serial")  # fmt: skip
    model = ViewerModel(Layout(1, 2))
    a, b = model.viewports
    a.set_volume(ct)
    b.set_volume(loc)
    model.set_active(0)
    (line,) = model.reference_lines(b)
    z = a.geometry.origin[2]
    g = b.geometry
    assert line[0][1] == pytest.approx((g.origin[2] - z) / g.row_spacing)
    a.scroll(1)
    (line2,) = model.reference_lines(b)
    assert line2[0][1] != pytest.approx(line[0][1])
    assert model.reference_lines(a) == []  # not on itself
    model.show_reference_lines = False
    assert model.reference_lines(b) == []


def test_layouts():
    assert Layout.parse("2x2") == Layout(2, 2)
    assert Layout.parse(" 1 × 3 ") == Layout(1, 3)
    with pytest.raises(ValueError):
        Layout.parse("7x1")
    with pytest.raises(ValueError):
        Layout.parse("two by two")
    model = ViewerModel()
    model.set_layout("3x3")
    assert len(model.visible) == 9
    model.set_active(8)
    model.set_layout("1x2")
    assert model.active == 0 and len(model.viewports) == 9  # kept for later


def test_shipped_presets_and_user_copy(tmp_path):
    store = PresetStore(tmp_path)
    ct = {p.name: (p.center, p.width) for p in store.for_modality("CT")}
    assert ct["Brain"] == (40, 80) and ct["Lung"] == (-600, 1500) and ct["Bone"] == (400, 1800)
    assert ct["Subdural"] == (75, 215) and ct["Mediastinum"] == (50, 350) and ct["Abdomen"] == (40, 400)
    assert {"Stroke", "Liver"} <= set(ct)
    assert store.by_key("4", "CT").name == "Lung"
    assert store.for_modality("MR") == []
    assert not (tmp_path / "window_presets.toml").exists()
    store.add(WindowPreset("Temporal bone", 700, 4000, "CT", "0"))
    assert (tmp_path / "window_presets.toml").is_file()
    again = PresetStore(tmp_path)
    assert "Temporal bone" in {p.name for p in again.presets} and len(again.presets) == len(store.presets)
    bad = tmp_path / "bad.toml"
    bad.write_text("[[preset]]\nname = 'x'\ncenter = 1\nwidth = 0\n")
    with pytest.raises(ConfigError):
        read_presets(bad)


def test_overlay_corner_texts(vp):
    texts = corner_texts(OverlayConfig.load(), vp.volume.header, vp.overlay_values())
    assert texts["top_left"][0] == "Müller, Jürgen"
    assert "Im 5/8" in texts["bottom_left"]
    assert "Thk 5 mm" in texts["bottom_left"]
    assert texts["bottom_right"][0].startswith("W 400 L 40")
    assert not any(line.startswith("Cine") for line in texts["bottom_right"])  # empty fields drop the line
    custom = OverlayConfig({"top_left": ["{Modality} {NoSuchKeyword}", "{bogus"], "top_right": [], "bottom_left": [],
                            "bottom_right": []})  # fmt: skip
    assert corner_texts(custom, vp.volume.header, {})["top_left"] == ["CT"]


def test_export_gif_keeps_the_displayed_greys(vp, tmp_path):
    vp.rotate(90)
    frames = list(view_frames(vp))
    # from the top of the stack (the head end, index 7 of this axial stack) down, as the cine plays
    assert len(frames) == 8 and np.array_equal(frames[0], np.rot90(vp.render(7), -1))
    assert np.array_equal(frames[7], np.rot90(vp.render(0), -1))
    out = export_cine(iter(frames), tmp_path / "cine.gif", fps=10)
    with Image.open(out) as im:
        assert im.n_frames == 8
        im.seek(3)
        assert np.array_equal(np.asarray(im.convert("L")), frames[3])
    with pytest.raises(ExportError):
        export_cine(iter(frames), tmp_path / "cine.avi")
    with pytest.raises(ExportError):
        export_cine(iter([]), tmp_path / "none.gif")
    assert np.array_equal(oriented(np.arange(6).reshape(2, 3), 0, True, False), [[2, 1, 0], [5, 4, 3]])


def test_thumbnail_is_the_middle_of_the_stack_in_the_one_order(tmp_path):
    """A head-first series with three sagittal localizers numbered first: the middle by Instance Number
    (what the strip used to show) is not the middle of the stack the viewer and the MPR show."""
    import pydicom

    from hilum.dicom.generator import SAGITTAL
    from hilum.ui.viewer.thumbnails import ThumbnailCache, make_thumbnail

    axial = write_ct(tmp_path / "ax", rows=32, slices=9, descending=True)
    loc = write_ct(tmp_path / "loc", rows=32, slices=3, orientation=SAGITTAL, series_number=2)
    series_uid = pydicom.dcmread(axial[0], stop_before_pixels=True).SeriesInstanceUID
    for k, p in enumerate(loc):  # the localizers belong to the series and come first
        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID, ds.InstanceNumber = series_uid, k + 1
        ds.save_as(p)
    for p in axial:
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = int(ds.InstanceNumber) + 3
        ds.save_as(p)
    paths = loc + axial  # Instance Number order, as the archive lists them
    stack = load_series_sync(paths, executor="serial").stack
    middle = stack.frames[len(stack) // 2]
    assert middle.instance_number == 8 and pydicom.dcmread(paths[len(paths) // 2]).InstanceNumber == 7
    cache = ThumbnailCache(tmp_path / "thumbs", size=32)
    thumb = cache.for_series(series_uid, [str(p) for p in paths])
    assert np.array_equal(thumb, make_thumbnail(middle.path, middle.frame, 32))
    assert not np.array_equal(thumb, make_thumbnail(paths[len(paths) // 2], 0, 32))
    again = ThumbnailCache(tmp_path / "thumbs", size=32).for_series(series_uid, [str(p) for p in paths])
    assert np.array_equal(again, thumb)  # from the disk cache
