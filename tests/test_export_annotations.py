"""Export with annotations (issue 16): ``hilum render FILE --gsps PR_FILE`` applies a GSPS's display
state and burns its annotations in; the display-state conversions of the viewer's persistence
(window, displayed area, rotation/flip) reproduce the view; saving and loading through the archive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from _viewer_data import write_ct
from hilum.cli import main as cli_main
from hilum.dicom.annotations import Annotation
from hilum.dicom.presentation import DisplayState, make_gsps
from hilum.ui.viewer.export import ANNOTATION_RGB, oriented, oriented_point
from hilum.ui.viewer.persistence import gsps_orientation, view_orientation

ROWS = 64


@pytest.fixture
def ct(tmp_path: Path) -> list[Path]:
    return write_ct(tmp_path / "ct", rows=ROWS, slices=2)


def _gsps(image: Path, out: Path, state: DisplayState, annotations: list[Annotation]) -> Path:
    header = pydicom.dcmread(image, stop_before_pixels=True)
    ds = make_gsps([header], annotations, {str(header.SOPInstanceUID): state})
    ds.save_as(out, enforce_file_format=True)
    return out


def test_render_with_gsps_applies_window_area_flip_and_burns_annotations(ct: Path, tmp_path: Path) -> None:
    from PIL import Image

    header = pydicom.dcmread(ct[0], stop_before_pixels=True)
    sop = str(header.SOPInstanceUID)
    length = Annotation("length", sop, 0, [(20.0, 30.0), (40.0, 30.0)])
    area = ((9.5, 9.5), (49.5, 49.5))  # image columns / rows 10..49
    state = DisplayState(window_center=40.0, window_width=400.0, displayed_area=area, rotation=90, flip_horizontal=True)
    pr = _gsps(ct[0], tmp_path / "pr.dcm", state, [length])
    plain = tmp_path / "plain.png"
    assert cli_main(["render", str(ct[0]), "--window", "40", "400", "-o", str(plain)]) == 0
    out = tmp_path / "gsps.png"
    assert cli_main(["render", str(ct[0]), "--gsps", str(pr), "-o", str(out)]) == 0
    with Image.open(plain) as p, Image.open(out) as g:
        base = np.asarray(p)
        shown = np.asarray(g)
    assert shown.shape == (40, 40, 3)
    expected = oriented(base[10:50, 10:50], 90, True, False)
    # away from the burnt line the pixels are the windowed image, cropped, rotated, flipped
    x, y = oriented_point(5 - 0, 5 - 0, (40, 40), 90, True)
    assert (shown[int(y), int(x)] == expected[int(y), int(x)]).all()
    # the length's middle pixel is the annotation colour, where the transform puts it
    mx, my = oriented_point(30 - 10, 30 - 10, (40, 40), 90, True)
    assert tuple(shown[int(round(my)), int(round(mx))]) == ANNOTATION_RGB


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gsps", "missing.dcm"], "no such file"),
        (["--gsps", "SELF"], "not a Grayscale Softcopy Presentation State"),
    ],
)
def test_render_gsps_errors_are_one_line(ct: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         args: list[str], message: str) -> None:  # fmt: skip
    args = [str(ct[0]) if a == "SELF" else (str(tmp_path / a) if a.endswith(".dcm") else a) for a in args]
    assert cli_main(["render", str(ct[0]), *args, "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_render_gsps_of_another_image_is_refused(
    ct: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = pydicom.dcmread(ct[1], stop_before_pixels=True)
    pr = _gsps(
        ct[1],
        tmp_path / "pr.dcm",
        DisplayState(40.0, 400.0),
        [Annotation("point", str(other.SOPInstanceUID), 0, [(3.0, 3.0)])],
    )
    assert cli_main(["render", str(ct[0]), "--gsps", str(pr), "-o", str(tmp_path / "x.png")]) == 1
    assert "does not reference this image" in capsys.readouterr().err


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize(("flip_h", "flip_v"), [(False, False), (True, False), (False, True), (True, True)])
def test_view_orientation_round_trip_is_the_same_screen(rotation: int, flip_h: bool, flip_v: bool) -> None:
    from hilum.ui.viewer.state import ViewTransform

    r, f = gsps_orientation(rotation, flip_h, flip_v)
    back_r, back_f = view_orientation(r, f)
    a = ViewTransform(rotation=rotation, flip_h=flip_h, flip_v=flip_v).matrix((300, 200), (64, 48), (1.0, 1.0))
    b = ViewTransform(rotation=back_r, flip_h=back_f).matrix((300, 200), (64, 48), (1.0, 1.0))
    assert np.allclose(a, b)


def test_oriented_point_follows_oriented() -> None:
    img = np.zeros((5, 7), np.uint8)
    img[1, 4] = 255
    for rot in (0, 90, 180, 270):
        for flip in (False, True):
            out = oriented(img, rot, flip, False)
            x, y = oriented_point(4, 1, img.shape, rot, flip)
            assert out[int(y), int(x)] == 255
