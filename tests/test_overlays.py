"""Overlay planes (60xx): the parser, burning them in, ``hilum render`` and the viewer against DCMTK.

DCMTK's ``dcmj2pnm`` (3.6.7) is the reference: it burns overlays in by default
(graphics at the maximum display value, ROI overlays by darkening the pixels
outside the region). Each comparison renders the same frame at the same VOI on
both sides (the header's first window: ``+Wi 1`` vs Hilum's default; min-max:
``+Wm`` vs ``--minmax``) with and without overlays (``-O`` / ``--no-overlays``).
Grey levels may differ by one (DCMTK truncates, Hilum rounds: see
:mod:`hilum.dicom.pixels`); overlay pixels must match exactly.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from hilum.cli import main
from hilum.dicom.overlays import OverlayLayer, composite, frame_layers, overlay_planes, read_native_frame
from hilum.dicom.pixels import read_header
from hilum.dicom.stack_load import load_series_sync
from hilum.ui.viewer.state import ViewportState

DCMJ2PNM = "/usr/bin/dcmj2pnm"
needs_dcmtk = pytest.mark.skipif(not Path(DCMJ2PNM).exists(), reason="DCMTK (dcmj2pnm) is not installed")
SAMPLES = ["examples_overlay.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"]


def sample(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} needs the pydicom-data package")
    return str(path)


# --------------------------------------------------------------------------- generated files


def packbits(mask: np.ndarray) -> bytes:
    """Overlay Data of *mask* (frames x rows x columns or rows x columns), PS3.5 8.1.2 bit order, even length."""
    b = np.packbits(mask.astype(np.uint8).reshape(-1), bitorder="little").tobytes()
    return b + b"\0" * (len(b) % 2)


def image(rows: int = 64, columns: int = 80, frames: int = 1, syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """A 12-bit MONOCHROME2 secondary capture with a diagonal ramp (frame f shifted by 500) and one window."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Overlay^Test", "OVL1", "OT"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    y, x = np.mgrid[0:rows, 0:columns]
    ds.pixels = np.stack([(x * 37 + y * 11 + f * 500) % 4096 for f in range(frames)]).astype(np.uint16)
    return ds


def add_plane(ds: Dataset, group: int = 0x6000, *, rows: int, columns: int, origin=(1, 1), kind: str = "G",
              data: bytes | None = None, frames: str | None = None, frame_origin: int | None = None,
              bits_allocated: int = 1, bit_position: int = 0) -> None:  # fmt: skip
    ds.add_new((group, 0x0010), "US", rows)
    ds.add_new((group, 0x0011), "US", columns)
    if frames is not None:
        ds.add_new((group, 0x0015), "IS", frames)
    ds.add_new((group, 0x0040), "CS", kind)
    ds.add_new((group, 0x0050), "SS", list(origin))
    if frame_origin is not None:
        ds.add_new((group, 0x0051), "US", frame_origin)
    ds.add_new((group, 0x0100), "US", bits_allocated)
    ds.add_new((group, 0x0102), "US", bit_position)
    if data is not None:
        ds.add_new((group, 0x3000), "OW", data)


def save(ds: Dataset, path: Path) -> Path:
    arr = ds.pixels
    del ds.pixels
    big = ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    ds.PixelData = arr.astype(">u2" if big else "<u2").tobytes()
    if big:
        ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=False)
    else:
        ds.save_as(path, enforce_file_format=True)
    return path


MF_MASKS = np.zeros((2, 20, 30), bool)
MF_MASKS[0, 2:5, :] = True  # overlay frame 1: three rows
MF_MASKS[1, :, 3:6] = True  # overlay frame 2: three columns


def multiframe_file(path: Path) -> Path:
    """4 frames; a 2-frame overlay at row 5, column 7 drawn on image frames 2 and 3 (Image Frame Origin 2)."""
    ds = image(frames=4)
    add_plane(ds, rows=20, columns=30, origin=(5, 7), data=packbits(MF_MASKS), frames="2", frame_origin=2)
    return save(ds, path)


EMBEDDED = np.zeros((64, 80), bool)
EMBEDDED[30:33, 5:70] = True
ROI = np.zeros((30, 40), bool)
ROI[10:20, 10:30] = True


def embedded_file(path: Path, syntax: str = ExplicitVRLittleEndian) -> Path:
    """A graphics overlay in bit 13 of the pixels (6000) and an ROI overlay half off the top edge (6002)."""
    ds = image(syntax=syntax)
    ds.pixels[0] |= EMBEDDED.astype(np.uint16) << 13
    add_plane(ds, 0x6000, rows=64, columns=80, bits_allocated=16, bit_position=13)
    data = packbits(ROI)
    if syntax == ExplicitVRBigEndian:  # OW is written in the file's byte order
        data = np.frombuffer(data, "<u2").astype(">u2").tobytes()
    add_plane(ds, 0x6002, rows=30, columns=40, origin=(-4, 50), kind="R", data=data)
    return save(ds, path)


# --------------------------------------------------------------------------- rendering helpers


def dcmtk(path: str | Path, out: Path, *options: str) -> np.ndarray:
    subprocess.run([DCMJ2PNM, "+on", "-il", *options, str(path), str(out)], check=True, capture_output=True,
                   timeout=60)  # fmt: skip
    with Image.open(out) as im:
        return np.asarray(im).astype(np.int32)


def hilum(path: str | Path, out: Path, *options: str) -> np.ndarray:
    assert main(["render", str(path), *options, "-o", str(out)]) == 0
    with Image.open(out) as im:
        return np.asarray(im).astype(np.int32)


def assert_same_overlays(tmp_path: Path, path: str | Path, hilum_opts: list[str], dcmtk_opts: list[str]) -> int:
    """Hilum's and DCMTK's renderings of *path* agree, overlays included; returns the overlay pixel count."""
    h, h_no = (
        hilum(path, tmp_path / "h.png", *hilum_opts),
        hilum(path, tmp_path / "hn.png", *hilum_opts, "--no-overlays"),
    )
    d, d_no = dcmtk(path, tmp_path / "d.png", *dcmtk_opts), dcmtk(path, tmp_path / "dn.png", *dcmtk_opts, "-O")
    assert np.abs(h_no - d_no).max() <= 1  # the same window
    assert np.abs(h - d).max() <= 1
    theirs, ours = d != d_no, h != h_no
    assert theirs.any()
    assert (h[theirs] == d[theirs]).all() and (h[theirs] == 255).all()  # every overlay pixel DCMTK draws
    assert not (theirs & ~ours).any()
    assert (d[ours] == 255).all()  # and we draw none it does not (a 254 under DCMTK's overlay may be 255 here)
    return int(ours.sum())


# --------------------------------------------------------------------------- parser


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_planes_match_pydicom(name):
    path = sample(name)
    header = read_header(path)  # stop_before_pixels keeps the 60xx groups (they come before Pixel Data)
    (plane,) = overlay_planes(header)
    assert (plane.group, plane.top, plane.left, plane.roi, plane.embedded) == (0x6000, 0, 0, False, False)
    assert (plane.rows, plane.columns) == (header.Rows, header.Columns)
    (layer,) = frame_layers([plane], 0, header.Rows, header.Columns)
    expected = pydicom.dcmread(path).overlay_array(0x6000).astype(bool)
    assert (layer.top, layer.left) == (0, 0)
    assert np.array_equal(layer.mask, expected) and expected.sum() > 100


def test_multiframe_mapping_and_origin(tmp_path):
    path = multiframe_file(tmp_path / "mf.dcm")
    (plane,) = overlay_planes(read_header(path))
    assert plane.multiframe and plane.frames == 2 and plane.first_frame == 1
    assert [plane.overlay_frame(f) for f in range(4)] == [None, 0, 1, None]
    assert frame_layers([plane], 0, 64, 80) == [] and frame_layers([plane], 3, 64, 80) == []
    for f, k in ((1, 0), (2, 1)):
        (layer,) = frame_layers([plane], f, 64, 80)
        assert (layer.top, layer.left) == (4, 6)  # Overlay Origin is 1-based (row, column)
        assert np.array_equal(layer.mask, MF_MASKS[k])
    # through the loader: each frame of the stack carries the planes drawn on it
    volume = load_series_sync([path], executor="serial")
    assert [len(f.overlays) for f in volume.stack.frames] == [0, 1, 1, 0]


def test_single_frame_overlay_applies_to_every_frame(tmp_path):
    ds = image(frames=3)
    mask = np.zeros((64, 80), bool)
    mask[10:12] = True
    add_plane(ds, rows=64, columns=80, data=packbits(mask))  # no Number of Frames in Overlay (CP-1974)
    (plane,) = overlay_planes(read_header(save(ds, tmp_path / "x.dcm")))
    assert not plane.multiframe
    for f in range(3):
        (layer,) = frame_layers([plane], f, 64, 80)
        assert np.array_equal(layer.mask, mask)


def test_clipping_to_the_image():
    data = packbits(np.ones((10, 10), bool))
    ds = image(rows=20, columns=20)
    add_plane(ds, 0x6000, rows=10, columns=10, origin=(-4, 16), data=data)  # 5 rows and 5 columns inside
    add_plane(ds, 0x6002, rows=10, columns=10, origin=(21, 1), data=data)  # wholly below the image
    add_plane(ds, 0x6004, rows=10, columns=10, origin=(1, -8), data=data)  # its last column is the image's first
    planes = overlay_planes(ds)
    assert [p.group for p in planes] == [0x6000, 0x6002, 0x6004]
    a, c = frame_layers(planes, 0, 20, 20)
    assert (a.top, a.left, a.mask.shape, c.top, c.left, c.mask.shape) == (0, 15, (5, 5), 0, 0, (10, 1))
    img = composite(np.zeros((20, 20), np.uint8), [a, c])
    assert int((img == 255).sum()) == 25 + 10


def test_odd_groups_and_other_groups_are_not_overlays():
    ds = image()
    ds.add_new((0x6001, 0x0010), "US", 64)  # a private group
    ds.add_new((0x6020, 0x0010), "US", 64)  # past 601E
    assert overlay_planes(ds) == ()


HOSTILE = [
    # (description, plane arguments, data length or None for a real mask)
    ("65535 x 65535 claimed, 100 bytes sent", dict(rows=0xFFFF, columns=0xFFFF), 100),
    ("a billion frames", dict(rows=64, columns=80, frames="1000000000"), 640),
    ("one byte short", dict(rows=64, columns=80), 639),
    ("zero rows", dict(rows=0, columns=80), 640),
    ("embedded in a stored bit", dict(rows=64, columns=80, bits_allocated=16, bit_position=5), None),
    ("embedded past the allocated bits", dict(rows=64, columns=80, bits_allocated=16, bit_position=16), None),
    ("embedded larger than the image", dict(rows=65, columns=80, bits_allocated=16, bit_position=15), None),
]


@pytest.mark.parametrize("what,plane,length", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_malformed_planes_are_left_out_with_a_warning(tmp_path, caplog, what, plane, length):
    ds = image()
    add_plane(ds, 0x6000, **plane, data=None if length is None else bytes(length))
    add_plane(ds, 0x6002, rows=64, columns=80, data=packbits(EMBEDDED))  # a good one beside it
    with caplog.at_level(logging.WARNING, logger="hilum.dicom.overlays"):
        planes = overlay_planes(ds, source="x.dcm")
    assert [p.group for p in planes] == [0x6002]
    assert any("overlay 6000 left out" in r.getMessage() for r in caplog.records)
    # the image still loads, and shows the good plane
    path = save(ds, tmp_path / "bad.dcm")
    vp = ViewportState()
    vp.set_volume(load_series_sync([path], executor="serial"))
    with_planes = vp.render()
    vp.set_overlay_planes(False)
    assert int((with_planes != vp.render()).sum()) == int((EMBEDDED & (vp.render() != 255)).sum()) > 0


def test_embedded_overlay_needs_native_pixels():
    ds = image()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    add_plane(ds, rows=64, columns=80, bits_allocated=16, bit_position=13)
    assert overlay_planes(ds) == ()


def test_random_headers_never_fail_and_masks_stay_inside():
    """Random (often nonsensical) overlay attributes: parsing never raises, masks lie inside the image."""
    rng = np.random.default_rng(23)
    for _ in range(300):
        ds = image(rows=16, columns=24)
        rows, columns = (int(v) for v in rng.choice([0, 1, 7, 16, 24, 40, 0xFFFF], 2))
        origin = [int(v) for v in rng.integers(-40, 40, 2)]
        frames = str(int(rng.choice([-2, 0, 1, 2, 3, 10**9])))
        length = int(rng.integers(0, 300)) if rng.random() < 0.8 else None
        data = None if length is None else rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        add_plane(ds, rows=rows, columns=columns, origin=origin, data=data, frames=frames,
                  frame_origin=int(rng.integers(0, 4)), bits_allocated=int(rng.choice([1, 16])),
                  bit_position=int(rng.integers(0, 17)))  # fmt: skip
        planes = overlay_planes(ds)
        for f in range(3):
            for layer in frame_layers(planes, f, 16, 24, lambda d=ds: d.pixels[0]):
                h, w = layer.mask.shape
                assert 0 <= layer.top and layer.top + h <= 16 and 0 <= layer.left and layer.left + w <= 24


# --------------------------------------------------------------------------- composite


def test_composite_graphics_and_roi_on_grey_and_rgb():
    mask = np.array([[True, False], [False, True]])
    grey = np.full((3, 3), 200, np.uint8)
    out = composite(grey, [OverlayLayer(mask, 1, 1)])
    assert out.tolist() == [[200, 200, 200], [200, 255, 200], [200, 200, 255]] and grey.max() == 200
    out = composite(grey, [OverlayLayer(mask, 0, 0, roi=True)])  # outside the region: darkened to 1/16
    assert out.tolist() == [[200, 12, 200], [12, 200, 200], [200, 200, 200]]
    rgb = np.zeros((3, 3, 3), np.uint8)
    assert composite(rgb, [OverlayLayer(mask, 0, 0)])[1, 1].tolist() == [255, 255, 255]
    assert composite(grey, []) is grey


# --------------------------------------------------------------------------- hilum render vs dcmj2pnm


@needs_dcmtk
@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("voi", [([], ["+Wi", "1"]), (["--minmax"], ["+Wm"])], ids=["header-window", "min-max"])
def test_render_sample_matches_dcmj2pnm(tmp_path, name, voi):
    path = sample(name)
    drawn = assert_same_overlays(tmp_path, path, *voi)
    expected = pydicom.dcmread(path).overlay_array(0x6000).astype(bool)
    under = hilum(path, tmp_path / "u.png", *voi[0], "--no-overlays")
    assert drawn == int((expected & (under != 255)).sum()) > 100


@needs_dcmtk
@pytest.mark.parametrize("frame", [1, 2, 3, 4])
def test_render_multiframe_overlay_matches_dcmj2pnm(tmp_path, frame):
    path = multiframe_file(tmp_path / "mf.dcm")
    opts = ["--frame", str(frame)]
    if frame in (2, 3):
        assert assert_same_overlays(tmp_path, path, opts, ["+F", str(frame), "+Wi", "1"]) > 0
    else:  # no overlay frame on these image frames: identical with and without
        with_ = hilum(path, tmp_path / "a.png", *opts)
        assert np.array_equal(with_, hilum(path, tmp_path / "b.png", *opts, "--no-overlays"))
        assert np.array_equal(dcmtk(path, tmp_path / "c.png", "+F", str(frame)),
                              dcmtk(path, tmp_path / "d.png", "+F", str(frame), "-O"))  # fmt: skip


@needs_dcmtk
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ExplicitVRBigEndian], ids=["little", "big-endian"])
def test_render_embedded_and_roi_overlays_match_dcmj2pnm(tmp_path, syntax):
    path = embedded_file(tmp_path / "emb.dcm", syntax)
    h, h_no = hilum(path, tmp_path / "h.png"), hilum(path, tmp_path / "hn.png", "--no-overlays")
    d = dcmtk(path, tmp_path / "d.png", "+Wi", "1")
    assert np.abs(h - d).max() <= 1
    assert (h[EMBEDDED] == 255).all() and (d[EMBEDDED] == 255).all()  # the graphics in the pixels' bit 13
    roi_rect = np.zeros_like(EMBEDDED)
    roi_rect[0:25, 49:80] = True  # the ROI plane's rows 5.. and columns 0..30 fall inside the image
    inside = np.zeros_like(EMBEDDED)
    inside[5:15, 59:79] = True  # the region itself (plane rows 10..19, columns 10..29)
    darkened = roi_rect & ~inside & ~EMBEDDED
    assert (h[darkened] == h_no[darkened] >> 4).all()
    assert (h[inside & ~EMBEDDED] == h_no[inside & ~EMBEDDED]).all()
    assert (h[~roi_rect & ~EMBEDDED] == h_no[~roi_rect & ~EMBEDDED]).all()


@needs_dcmtk
def test_render_monochrome1_overlay_is_white_as_in_dcmj2pnm(tmp_path):
    """MONOCHROME1 inverts the grey levels, not the overlay: both draw it at the maximum display value."""
    ds = image()
    ds.PhotometricInterpretation = "MONOCHROME1"
    add_plane(ds, rows=64, columns=80, data=packbits(EMBEDDED))
    path = save(ds, tmp_path / "m1.dcm")
    assert assert_same_overlays(tmp_path, path, [], ["+Wi", "1"]) > 0
    assert (hilum(path, tmp_path / "x.png")[EMBEDDED] == 255).all()


def test_render_burns_overlays_into_colour_images(tmp_path):
    """DCMTK draws no overlay on colour images; Hilum draws graphics white there too."""
    ds = image()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    rgb = np.zeros((64, 80, 3), np.uint8)
    rgb[..., 0] = 200
    del ds.pixels, ds.WindowCenter, ds.WindowWidth
    add_plane(ds, rows=64, columns=80, data=packbits(EMBEDDED))
    ds.PixelData = rgb.tobytes()
    ds.save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    out = hilum(tmp_path / "rgb.dcm", tmp_path / "x.png")
    assert (out[EMBEDDED] == 255).all() and (out[~EMBEDDED] == [200, 0, 0]).all()
    assert (hilum(tmp_path / "rgb.dcm", tmp_path / "y.png", "--no-overlays") == [200, 0, 0]).all()


def test_read_native_frame_keeps_the_high_bits(tmp_path):
    path = embedded_file(tmp_path / "emb.dcm")
    raw = read_native_frame(path, 0, rows=64, columns=80, bits_allocated=16)
    assert raw is not None and ((raw >> 13) & 1).astype(bool).tolist() == EMBEDDED.tolist()
    assert read_native_frame(path, 1, rows=64, columns=80, bits_allocated=16) is None  # no second frame


# --------------------------------------------------------------------------- the viewport's display


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ExplicitVRBigEndian], ids=["little", "big-endian"])
def test_viewport_render_equals_hilum_render(tmp_path, syntax):
    """The viewport's display pipeline and ``hilum render`` burn the same overlays in (the loader's
    native offset for little endian, a whole-file read for big endian), and the toggle removes them."""
    path = embedded_file(tmp_path / "emb.dcm", syntax)
    vp = ViewportState()
    vp.set_volume(load_series_sync([path], executor="serial"))
    assert np.array_equal(vp.render(), hilum(path, tmp_path / "h.png"))
    argb = vp.render_rgb32()
    assert argb is not None and np.array_equal(argb & 0xFF, vp.render())
    vp.set_overlay_planes(False)
    assert np.array_equal(vp.render(), hilum(path, tmp_path / "hn.png", "--no-overlays"))
    assert np.array_equal(vp.render_rgb32() & 0xFF, vp.render())
    vp.set_overlay_planes(True)
    vp.toggle_invert()  # drawn after the user's inversion: graphics stay white
    assert (vp.render()[EMBEDDED] == 255).all()


# --------------------------------------------------------------------------- the real viewer


@pytest.mark.gui
@needs_dcmtk
@pytest.mark.parametrize("name", SAMPLES)
def test_viewer_shows_overlays_and_the_key_hides_them(qtbot, archive, data_dir, tmp_path, name):
    """The sample opened in the real viewer: on screen, every image pixel shows what ``dcmj2pnm`` draws at
    the header's first window (overlays white); Ctrl+Shift+O on the viewport hides them and brings them back."""
    pytest.importorskip("pytestqt")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage
    from PySide6.QtTest import QTest

    from hilum.ui.viewer.shortcuts import help_lines
    from hilum.ui.viewer.viewer_widget import StudyViewer

    path = sample(name)
    d, d_no = dcmtk(path, tmp_path / "d.png", "+Wi", "1"), dcmtk(path, tmp_path / "dn.png", "+Wi", "1", "-O")
    theirs = d != d_no  # the overlay pixels DCMTK draws (white) over a darker image
    assert theirs.sum() > 100
    assert all(r.ok for r in archive.ingest_many([path]))
    viewer = StudyViewer(archive, str(read_header(path).StudyInstanceUID), data_dir=data_dir, executor="thread")
    qtbot.addWidget(viewer)
    viewer.resize(900, 700)
    viewer.show()
    qtbot.waitExposed(viewer)
    with qtbot.waitSignal(viewer.loadFinished, timeout=20000):
        viewer.open()
    vp = viewer.active_viewport()
    vp.smooth, vp.overlay_enabled = False, False  # one image pixel per sampled screen pixel, no corner text
    canvas = viewer.viewport_widget(0).canvas
    canvas.setFocus()
    # 1:1, image pixels on screen pixels (fractional scales let Qt's fixed-point sampling drift a row)
    vp.set_zoom(vp.view.zoom / vp.matrix()[0, 0])
    m = vp.matrix()
    vp.pan_by(round(m[0, 2] - 0.5) - (m[0, 2] - 0.5), round(m[1, 2] - 0.5) - (m[1, 2] - 0.5))
    m = vp.matrix()
    assert np.allclose(m[:2, :2], np.eye(2)) and np.allclose(m[:2, 2] - 0.5, np.round(m[:2, 2] - 0.5))
    rows, cols = np.mgrid[0 : d.shape[0], 0 : d.shape[1]]
    xs, ys = (cols + round(m[0, 2] - 0.5)), (rows + round(m[1, 2] - 0.5))
    assert xs.min() >= 0 and ys.min() >= 0 and xs.max() < canvas.width() and ys.max() < canvas.height()

    def screen() -> np.ndarray:
        img = canvas.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
        w, h, bpl = img.width(), img.height(), img.bytesPerLine()
        arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
        shot = arr[:, : w * 3].reshape(h, w, 3)
        assert (shot[ys, xs, 0] == shot[ys, xs, 2]).all()  # grey
        return shot[ys, xs, 0].astype(np.int32)

    shown = screen()
    assert np.abs(shown - d).max() <= 1  # the image at the same window, overlays included
    assert (shown[theirs] == 255).all()
    act = viewer.actions_by_name["overlay_planes"]
    assert act.isCheckable() and act.isChecked() and act.shortcut().toString() == "Ctrl+Shift+O"
    assert ("Viewer", "Ctrl+Shift+O", "Show / hide overlay planes (60xx)") in help_lines()

    ctrl_shift = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
    QTest.keyClick(canvas, Qt.Key.Key_O, ctrl_shift)
    assert not act.isChecked() and not vp.show_overlay_planes
    hidden = screen()
    assert np.abs(hidden - d_no).max() <= 1  # as dcmj2pnm -O: gone
    assert (hidden[theirs] < 255).all()

    QTest.keyClick(canvas, Qt.Key.Key_O, ctrl_shift)
    assert act.isChecked()
    assert np.array_equal(screen(), shown)
    viewer.close()
