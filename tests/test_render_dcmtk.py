"""Hilum's rendering against DCMTK's ``dcmj2pnm`` (and ``dcml2pnm`` for JPEG-LS).

Each case renders the same frame at the same VOI with Hilum and with DCMTK 3.6.7
(Debian) and bounds the largest difference in grey/colour levels. Accepted
differences, all documented in :mod:`hilum.dicom.pixels`:

* 1 level everywhere in grayscale: DCMTK truncates the VOI output to an integer,
  Hilum rounds the standard's real ``y`` to the nearest integer.
* 2 for YBR_FULL: pydicom converts with the exact ITU-T T.871 equations and
  rounds; DCMTK uses an integer approximation.
* 2 for 12-bit lossy JPEG and 3 for 4:2:2 lossy colour JPEG: the JPEG decoders
  (libjpeg via pylibjpeg vs DCMTK's IJG copy) differ in IDCT and chroma
  upsampling by a level or so before any windowing.

Where DCMTK 3.6.7 does not implement the standard, the comparison is against an
equivalent DCMTK rendering instead: LINEAR_EXACT (DCMTK treats it as LINEAR),
per-frame Pixel Value Transformation and Frame VOI LUT functional groups
(DCMTK reads only the shared/first item and no Frame VOI LUT windows), and
MONOCHROME1 with a contradictory Presentation LUT Shape IDENTITY (DCMTK follows
the shape; Hilum follows MONOCHROME1). DCMTK 3.6.7 cannot decode JPEG 2000, so
J2K files are compared with DCMTK's rendering of the matching uncompressed file.

Files from the optional ``pydicom-data`` package are skipped when it is absent.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from hilum.dicom.pixels import GrayscalePipeline, Window, frame_array, render_frame

DCMJ2PNM = "/usr/bin/dcmj2pnm"
DCML2PNM = "/usr/bin/dcml2pnm"

pytestmark = pytest.mark.skipif(not Path(DCMJ2PNM).exists(), reason="DCMTK (dcmj2pnm) is not installed")


def data(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} needs the pydicom-data package")
    return str(path)


def dcmtk_render(path: str | Path, options: list[str], out: Path, tool: str = DCMJ2PNM) -> np.ndarray:
    """Render with DCMTK to a non-interlaced 8-bit PNG and read it back."""
    if not Path(tool).exists():
        pytest.skip(f"{tool} is not installed")
    result = subprocess.run(
        [tool, "+on", "-il", *options, str(path), str(out)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    with Image.open(out) as png:
        return np.asarray(png)


def max_abs_diff(ours: np.ndarray, theirs: np.ndarray) -> int:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return int(np.abs(ours.astype(np.int32) - theirs.astype(np.int32)).max())


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=False)
    return path


# --------------------------------------------------------------------------- real files

# (file, 0-based frame, Hilum window or None, Hilum VOI index, DCMTK options, tolerance)
GRAYSCALE_CASES = [
    ("CT_small.dcm", 0, (40, 400), 0, ["+Ww", "40", "400"], 1),  # signed CT, rescale
    ("CT_small.dcm", 0, (-600, 1500), 0, ["+Ww", "-600", "1500"], 1),
    ("CT_small.dcm", 0, None, 0, ["+Wm"], 1),  # no header window: min-max
    ("MR_small.dcm", 0, None, 0, ["+Wi", "1"], 1),
    ("MR_small_bigendian.dcm", 0, None, 0, ["+Wi", "1"], 1),
    ("MR_small_implicit.dcm", 0, None, 0, ["+Wi", "1"], 1),
    ("MR_small_RLE.dcm", 0, None, 0, ["+Wi", "1"], 1),  # RLE
    ("MR_small_jpeg_ls_lossless.dcm", 0, None, 0, ["+Wi", "1"], 1),  # JPEG-LS (dcml2pnm)
    ("JPEGLSNearLossless_16.dcm", 0, None, 0, ["+Wm"], 1),
    ("JPGExtended.dcm", 0, None, 0, ["+Wm"], 2),  # JPEG extended 12-bit lossy
    ("examples_overlay.dcm", 0, None, 1, ["+Wi", "2", "-O"], 1),  # second header window
    ("image_dfl.dcm", 0, None, 0, ["+Wm"], 1),  # deflated
    ("rtdose.dcm", 5, None, 0, ["+F", "6", "+Wm"], 1),  # multi-frame, 32-bit
    # pydicom-data
    ("JPEG-LL.dcm", 0, None, 0, ["+Wm"], 1),  # JPEG lossless
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", 0, None, 0, ["+Wi", "1"], 1),
    ("693_UNCR.dcm", 0, None, 0, ["+Wi", "1"], 1),  # 14-bit signed CT
    ("RG3_UNCR.dcm", 0, None, 0, ["+Wi", "1"], 1),  # real MONOCHROME1 CR
    ("RG3_UNCR.dcm", 0, (600, 1000), 0, ["+Ww", "600", "1000"], 1),
    ("vlut_04.dcm", 0, None, 0, ["+Wl", "1"], 1),  # VOI LUT Sequence
    ("mlut_18.dcm", 0, None, 0, ["+Wm"], 1),  # Modality LUT Sequence
    ("mlut_18.dcm", 0, (30000, 20000), 0, ["+Ww", "30000", "20000"], 1),
    ("MR2_UNCR.dcm", 0, None, 0, ["+Wi", "1"], 1),  # fractional rescale slope
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", 0, None, 1, ["+Wi", "2", "-O"], 1),
    ("emri_small.dcm", 3, None, 0, ["+F", "4", "+Wm"], 1),  # enhanced MR multi-frame
    ("emri_small_RLE.dcm", 9, None, 0, ["+F", "10", "+Wm"], 1),
    ("emri_small_jpeg_ls_lossless.dcm", 5, None, 0, ["+F", "6", "+Wm"], 1),
    ("eCT_Supplemental.dcm", 1, (40, 400), 0, ["+F", "2", "+Ww", "40", "400"], 1),  # shared rescale
]


def _id(case: tuple) -> str:
    name, frame, window, voi, options, _ = case
    return f"{name}-f{frame}-{'_'.join(options)}"


@pytest.mark.parametrize("case", GRAYSCALE_CASES, ids=[_id(c) for c in GRAYSCALE_CASES])
def test_grayscale_matches_dcmtk(case: tuple, tmp_path: Path, record_property) -> None:
    name, frame, window, voi_index, options, tolerance = case
    path = data(name)
    tool = DCML2PNM if "jpeg_ls" in name or "JPEGLS" in name else DCMJ2PNM
    theirs = dcmtk_render(path, options, tmp_path / "dcmtk.png", tool)
    if "+Wm" in options:  # explicit min-max, even where the header has a window
        stored = frame_array(path, frame)
        pipeline = GrayscalePipeline.from_dataset(pydicom.dcmread(path, stop_before_pixels=True), frame)
        ours = pipeline.apply(stored, pipeline.min_max_window(stored))
    else:
        ours = render_frame(path, frame, window, voi_index)
    diff = max_abs_diff(ours, theirs)
    record_property("max_abs_diff", diff)
    assert diff <= tolerance


@pytest.mark.parametrize(
    ("name", "uncompressed", "frame", "options"),
    [
        ("MR_small_jp2klossless.dcm", "MR_small.dcm", 0, ["+Wi", "1"]),
        ("693_J2KR.dcm", "693_UNCR.dcm", 0, ["+Wi", "1"]),
        ("693_J2KI.dcm", "693_UNCI.dcm", 0, ["+Wi", "1"]),
        ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm", 7, ["+F", "8", "+Wm"]),
    ],
)
def test_jpeg2000_matches_dcmtk_on_uncompressed_twin(name, uncompressed, frame, options, tmp_path, record_property):
    theirs = dcmtk_render(data(uncompressed), options, tmp_path / "dcmtk.png")
    path = data(name)
    if "+Wm" in options:
        stored = frame_array(path, frame)
        pipeline = GrayscalePipeline.from_dataset(pydicom.dcmread(path, stop_before_pixels=True), frame)
        ours = pipeline.apply(stored, pipeline.min_max_window(stored))
    else:
        ours = render_frame(path, frame)
    diff = max_abs_diff(ours, theirs)
    record_property("max_abs_diff", diff)
    assert diff <= 1


COLOUR_CASES = [
    ("SC_rgb_small_odd.dcm", 0, [], 0),  # RGB
    ("ExplVR_BigEnd.dcm", 0, [], 0),  # RGB, planar configuration 1, big endian
    ("SC_rgb_rle.dcm", 0, [], 0),
    ("SC_rgb_rle_2frame.dcm", 1, ["+F", "2"], 0),
    ("SC_rgb_rle_16bit.dcm", 0, [], 0),  # 16-bit RGB
    ("SC_rgb_jpeg_gdcm.dcm", 0, [], 0),  # JPEG lossless RGB
    ("SC_rgb_jpeg_dcmtk.dcm", 0, [], 0),  # JPEG baseline, YBR_FULL
    ("SC_rgb_dcmtk_+eb+cr.dcm", 0, [], 1),  # JPEG baseline, RGB
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", 0, [], 3),  # JPEG baseline, YBR_FULL_422
    ("examples_ybr_color.dcm", 5, ["+F", "6"], 3),  # multi-frame JPEG YBR_FULL_422
    ("SC_ybr_full_422_uncompressed.dcm", 0, [], 2),  # native YBR_FULL_422
    ("SC_rgb_jls_lossy_line.dcm", 0, [], 0),  # JPEG-LS near-lossless colour (dcml2pnm)
    ("examples_palette.dcm", 0, [], 0),  # PALETTE COLOR, 16-bit entries
    # pydicom-data
    ("SC_ybr_full_uncompressed.dcm", 0, [], 2),
    ("color-pl.dcm", 0, [], 0),
    ("US1_UNCR.dcm", 0, [], 0),
    ("OBXXXX1A.dcm", 0, [], 0),  # PALETTE COLOR
    ("OBXXXX1A_rle.dcm", 0, [], 0),
]


@pytest.mark.parametrize(("name", "frame", "options", "tolerance"), COLOUR_CASES, ids=[c[0] for c in COLOUR_CASES])
def test_colour_matches_dcmtk(name, frame, options, tolerance, tmp_path, record_property) -> None:
    path = data(name)
    tool = DCML2PNM if "jls" in name else DCMJ2PNM
    theirs = dcmtk_render(path, options, tmp_path / "dcmtk.png", tool)
    ours = render_frame(path, frame)
    assert ours.ndim == 3 and ours.shape[-1] == 3
    diff = max_abs_diff(ours, theirs)
    record_property("max_abs_diff", diff)
    assert diff <= tolerance


# --------------------------------------------------------------------------- synthesised from wheel files


def _wheel(name: str) -> Dataset:
    return pydicom.dcmread(data(name))


def _lut_item(descriptor: list[int], values: np.ndarray, vr_first: str = "US") -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US" if vr_first == "US" else "SS", descriptor)
    item.add_new(0x00283006, "US", values.astype(int).tolist())
    return item


@pytest.mark.parametrize("function", ["LINEAR", "SIGMOID"])
def test_header_voi_function(function: str, tmp_path: Path) -> None:
    ds = _wheel("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = [40, -600], [400, 1500]
    ds.VOILUTFunction = function
    path = save(ds, tmp_path / "ct.dcm")
    for index in (0, 1):
        theirs = dcmtk_render(path, ["+Wi", str(index + 1)], tmp_path / "dcmtk.png")
        assert max_abs_diff(render_frame(path, 0, None, index), theirs) <= 1
    # the same through dcmj2pnm's option instead of the header
    theirs = dcmtk_render(path, ["+Ww", "100", "700"] + (["+Wfs"] if function == "SIGMOID" else []), tmp_path / "d.png")
    assert max_abs_diff(render_frame(path, 0, Window(100, 700, function)), theirs) <= 1


def test_voi_lut_sequence_synthesised(tmp_path: Path) -> None:
    ds = _wheel("CT_small.dcm")  # signed CT, intercept -1024: first value mapped is SS
    curve = (np.sqrt(np.linspace(0, 1, 2048)) * 4095).astype(np.uint16)
    ds.VOILUTSequence = Sequence([_lut_item([2048, -1024 & 0xFFFF, 12], curve)])
    path = save(ds, tmp_path / "voi.dcm")
    theirs = dcmtk_render(path, ["+Wl", "1"], tmp_path / "dcmtk.png")
    assert max_abs_diff(render_frame(path), theirs) <= 1


def test_modality_lut_sequence_synthesised(tmp_path: Path) -> None:
    ds = _wheel("MR_small.dcm")
    table = (np.linspace(0, 1, 4096) ** 0.7 * 65535).astype(np.uint16)
    ds.ModalityLUTSequence = Sequence([_lut_item([4096, 0, 16], table)])
    ds.ModalityLUTSequence[0].ModalityLUTType = "US"
    del ds.WindowCenter, ds.WindowWidth
    path = save(ds, tmp_path / "mlut.dcm")
    theirs = dcmtk_render(path, ["+Wm"], tmp_path / "dcmtk.png")
    assert max_abs_diff(render_frame(path), theirs) <= 1
    theirs = dcmtk_render(path, ["+Ww", "30000", "40000"], tmp_path / "dcmtk.png")
    assert max_abs_diff(render_frame(path, 0, (30000, 40000)), theirs) <= 1


@pytest.mark.parametrize("shape", [None, "INVERSE"])
def test_monochrome1_synthesised(shape: str | None, tmp_path: Path) -> None:
    ds = _wheel("MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    if shape:
        ds.PresentationLUTShape = shape
    path = save(ds, tmp_path / "m1.dcm")
    theirs = dcmtk_render(path, ["+Wi", "1"], tmp_path / "dcmtk.png")
    ours = render_frame(path)
    assert max_abs_diff(ours, theirs) <= 1
    assert int(ours[ds.pixel_array == ds.pixel_array.max()].max()) == 0  # highest value shown black


def test_monochrome1_with_identity_shape_follows_photometric(tmp_path: Path) -> None:
    """Contradictory file: DCMTK follows the shape (no inversion), Hilum MONOCHROME1."""
    ds = _wheel("MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    plain = save(ds, tmp_path / "plain.dcm")
    ds.PresentationLUTShape = "IDENTITY"
    contradictory = save(ds, tmp_path / "contradictory.dcm")
    theirs = dcmtk_render(plain, ["+Wi", "1"], tmp_path / "dcmtk.png")
    assert max_abs_diff(render_frame(contradictory), theirs) <= 1


def test_presentation_lut_shape_inverse_on_monochrome2(tmp_path: Path) -> None:
    ds = _wheel("MR_small.dcm")
    ds.PresentationLUTShape = "INVERSE"
    path = save(ds, tmp_path / "inv.dcm")
    theirs = dcmtk_render(path, ["+Wi", "1"], tmp_path / "dcmtk.png")
    assert max_abs_diff(render_frame(path), theirs) <= 1


def test_enhanced_per_frame_groups_render_like_classic_images(tmp_path: Path) -> None:
    """Frame f of an enhanced object = DCMTK's rendering of a classic image with f's values.

    DCMTK 3.6.7 applies only one Pixel Value Transformation item to all frames
    and ignores Frame VOI LUT windows, so it cannot render the multi-frame
    object itself correctly; the classic twin checks the same arithmetic.
    """
    mr = _wheel("MR_small.dcm")
    a = mr.pixel_array
    frames = [a, a[::-1].copy(), a[:, ::-1].copy()]
    params = [(1.0, 0.0, 600, 1600), (2.0, -100.0, 1000, 2000), (0.5, 50.0, 300, 500)]
    enhanced = mr.copy()
    del enhanced.WindowCenter, enhanced.WindowWidth
    enhanced.NumberOfFrames = 3
    enhanced.PixelData = np.stack(frames).astype(np.int16).tobytes()
    per_frame = []
    for slope, intercept, center, width in params:
        item, pvt, voi = Dataset(), Dataset(), Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "US"
        voi.WindowCenter, voi.WindowWidth = center, width
        item.PixelValueTransformationSequence = Sequence([pvt])
        item.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(item)
    enhanced.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    enhanced.SharedFunctionalGroupsSequence = Sequence([Dataset()])
    path = save(enhanced, tmp_path / "enhanced.dcm")
    for index, (slope, intercept, center, width) in enumerate(params):
        classic = mr.copy()
        classic.PixelData = frames[index].astype(np.int16).tobytes()
        classic.RescaleSlope, classic.RescaleIntercept = slope, intercept
        classic.WindowCenter, classic.WindowWidth = center, width
        twin = save(classic, tmp_path / f"classic{index}.dcm")
        theirs = dcmtk_render(twin, ["+Wi", "1"], tmp_path / "dcmtk.png")
        assert max_abs_diff(render_frame(path, index), theirs) <= 1


def test_enhanced_ct_frame_voi_lut(tmp_path: Path) -> None:
    """eCT_Supplemental: window 49/102 only in the Frame VOI LUT functional group."""
    path = data("eCT_Supplemental.dcm")
    pipeline = GrayscalePipeline.from_dataset(pydicom.dcmread(path, stop_before_pixels=True), 1)
    assert [(w.center, w.width) for w in pipeline.windows] == [(49.0, 102.0)]
    theirs = dcmtk_render(path, ["+F", "2", "+Ww", "49", "102"], tmp_path / "dcmtk.png")
    assert max_abs_diff(render_frame(path, 1), theirs) <= 1


def test_cli_render_matches_dcmtk(tmp_path: Path) -> None:
    from hilum.cli import main

    path = data("rtdose.dcm")
    out = tmp_path / "hilum.png"
    assert main(["render", path, "--frame", "9", "--minmax", "-o", str(out)]) == 0
    theirs = dcmtk_render(path, ["+F", "9", "+Wm"], tmp_path / "dcmtk.png")
    with Image.open(out) as png:
        assert max_abs_diff(np.asarray(png), theirs) <= 1
