"""The MPR crosshair logic (hilum.render.crosshair) without VTK or Qt: where the planes cross,
the reference lines, what a drag does to the other planes.  Pure numpy: no render window."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from hilum.render.crosshair import VIEWS, Crosshair, CrosshairView

ANCHOR = np.array([10.0, -20.0, 35.0])  # a volume's centre


@pytest.fixture
def crosshair() -> Crosshair:
    return Crosshair(centre=np.array([-30.0, 12.0, 40.0]))


def views(c: Crosshair) -> dict[str, CrosshairView]:
    return {v: CrosshairView(c, v, anchor=ANCHOR) for v in VIEWS}


def on_plane(view: CrosshairView, point: np.ndarray) -> float:
    """Distance of a patient point from the view's plane."""
    return abs(float(view.plane.to_plane(point)[2]))


def test_module_imports_neither_vtk_nor_qt() -> None:
    code = (
        "import sys, hilum.render.crosshair; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('vtkmodules', 'vtk', 'PySide6', 'shiboken6')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_frame_coordinates_keep_the_image_still(crosshair: Crosshair) -> None:
    ax = views(crosshair)["axial"]
    assert ax.frame.to_plane(ANCHOR)[:2] == pytest.approx((0.0, 0.0))
    np.testing.assert_allclose(ax.to_patient(*ax.cursor), crosshair.centre, atol=1e-9)
    assert ax.cursor == pytest.approx((-40.0, 32.0))  # axial: s along +x, t along +y from the anchor
    crosshair.set_centre((5.0, 6.0, 7.0))
    assert ax.cursor == pytest.approx((-5.0, 26.0))
    assert ax.frame.to_plane(ANCHOR)[2] == pytest.approx(35.0 - 7.0)  # the frame moved along the normal only
    assert ax.frame.to_plane(ANCHOR)[:2] == pytest.approx((0.0, 0.0))


def test_standard_reference_lines(crosshair: Crosshair) -> None:
    vs = views(crosshair)
    lines = vs["axial"].reference_lines()
    assert set(lines) == {"coronal", "sagittal"}
    assert abs(lines["coronal"].direction[1]) == pytest.approx(0.0, abs=1e-12)  # coronal: horizontal line
    assert abs(lines["sagittal"].direction[0]) == pytest.approx(0.0, abs=1e-12)  # sagittal: vertical line
    assert lines["coronal"].point == pytest.approx(vs["axial"].cursor)
    lines = vs["sagittal"].reference_lines()
    assert abs(lines["axial"].direction[1]) == pytest.approx(0.0, abs=1e-12)  # axial: horizontal in sagittal


@pytest.mark.parametrize("seed", range(6))
def test_reference_lines_are_where_the_planes_cross(crosshair: Crosshair, seed: int) -> None:
    """On any (double-)oblique set of planes, every point of a view's reference line for another
    view lies on both planes, and the lines pass through the cursor."""
    rng = np.random.default_rng(seed)
    vs = views(crosshair)
    for _ in range(3):
        crosshair.rotate(str(rng.choice(VIEWS)), float(rng.uniform(-170, 170)))
    crosshair.set_centre(crosshair.centre + rng.uniform(-20, 20, 3))
    for name, view in vs.items():
        lines = view.reference_lines()
        assert set(lines) == set(VIEWS) - {name}
        for other, line in lines.items():
            assert math.hypot(*line.direction) == pytest.approx(1.0)
            for lam in (-50.0, 0.0, 13.0, 80.0):
                s, t = line.point[0] + lam * line.direction[0], line.point[1] + lam * line.direction[1]
                p = view.to_patient(s, t)
                assert on_plane(view, p) < 1e-9
                assert on_plane(vs[other], p) < 1e-9, (name, other, lam)
    # the three planes stay mutually perpendicular
    for a in VIEWS:
        for b in VIEWS:
            if a < b:
                assert abs(crosshair.plane(a).normal @ crosshair.plane(b).normal) < 1e-9


def test_click_moves_the_other_planes_not_this_one(crosshair: Crosshair) -> None:
    vs = views(crosshair)
    crosshair.rotate("axial", 25.0)
    events: list[str] = []
    crosshair.subscribe(events.append)
    ax = vs["axial"]
    before = ax.plane
    ax.click(17.0, -9.0)
    target = ax.to_patient(17.0, -9.0)
    np.testing.assert_allclose(crosshair.centre, target, atol=1e-9)
    assert ax.cursor == pytest.approx((17.0, -9.0))
    assert on_plane(vs["coronal"], target) < 1e-9 and on_plane(vs["sagittal"], target) < 1e-9
    np.testing.assert_allclose(ax.plane.normal, before.normal)
    assert abs(before.to_plane(ax.plane.centre)[2]) < 1e-9  # the axial plane itself did not move
    assert events == ["centre"]
    for other, line in ax.reference_lines().items():  # the lines now cross at the click
        assert line.point == pytest.approx((17.0, -9.0)), other


def test_rotate_drag_turns_the_other_planes_about_the_cursor(crosshair: Crosshair) -> None:
    vs = views(crosshair)
    ax = vs["axial"]
    cs, ct = ax.cursor
    coronal_u = crosshair.plane("coronal").u.copy()
    axial_before = ax.plane
    angle = ax.rotate_drag((cs + 10.0, ct), (cs, ct + 10.0))  # from screen right to screen down
    assert angle == pytest.approx(90.0)  # clockwise on screen
    rotated = crosshair.plane("coronal").u
    assert rotated @ coronal_u == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(rotated, (0.0, 1.0, 0.0), atol=1e-9)  # x turned to y about the axial normal (+z)
    np.testing.assert_allclose(ax.plane.u, axial_before.u)  # the view turned in keeps its plane
    np.testing.assert_allclose(crosshair.centre, ax.to_patient(cs, ct))  # about the cursor
    lines = ax.reference_lines()
    assert abs(lines["coronal"].direction[0]) == pytest.approx(0.0, abs=1e-9)  # the coronal line is now vertical
    assert ax.rotation((cs + 10.0, ct), (cs + 10.0, ct - 10.0)) == pytest.approx(-45.0)
    assert ax.rotation((cs, ct), (cs + 5.0, ct)) == 0.0  # from the cursor itself: no angle
    assert ax.rotation((cs - 10.0, ct + 0.1), (cs - 10.0, ct - 0.1)) == pytest.approx(1.1459, abs=1e-3)  # across +-180


def test_drag_mode_and_line_hit_test(crosshair: Crosshair) -> None:
    ax = views(crosshair)["axial"]
    cs, ct = ax.cursor
    assert ax.line_near(cs + 40.0, ct + 1.5, tolerance=2.0) == "coronal"  # horizontal line, 1.5 mm below it
    assert ax.line_near(cs - 1.0, ct + 30.0, tolerance=2.0) == "sagittal"
    assert ax.line_near(cs + 40.0, ct + 3.0, tolerance=2.0) is None
    assert ax.line_near(cs + 1.0, ct + 0.5, tolerance=2.0) == "coronal"  # nearest of the two
    kw = {"line_tolerance": 2.0, "cursor_tolerance": 4.0}
    assert ax.drag_mode(cs + 40.0, ct + 1.0, **kw) == "rotate"  # on a line, away from the cursor
    assert ax.drag_mode(cs + 1.0, ct + 1.0, **kw) == "cursor"  # at the cursor: move it
    assert ax.drag_mode(cs + 40.0, ct + 30.0, **kw) == "cursor"  # off the lines
    crosshair.rotate("axial", 30.0)
    d = np.array([math.cos(math.radians(30.0)), math.sin(math.radians(30.0))])  # the coronal line turned 30 deg
    s, t = np.array([cs, ct]) + 40.0 * d
    assert ax.line_near(float(s), float(t), tolerance=0.5) == "coronal"
    assert ax.drag_mode(float(s), float(t), **kw) == "rotate"


def test_scroll_moves_this_plane_and_the_cursor(crosshair: Crosshair) -> None:
    vs = views(crosshair)
    crosshair.rotate("coronal", 20.0)
    sag = vs["sagittal"]
    before = crosshair.centre.copy()
    cursor = sag.cursor
    sag.scroll(3.0)
    np.testing.assert_allclose(crosshair.centre - before, 3.0 * sag.plane.normal, atol=1e-9)
    assert sag.cursor == pytest.approx(cursor)  # still under the same point of the image
    assert vs["axial"].reference_lines()["sagittal"].distance(*vs["axial"].to_plane(before)[:2]) == pytest.approx(3.0)


def test_view_name_is_checked(crosshair: Crosshair) -> None:
    with pytest.raises(ValueError, match="view must be one of"):
        CrosshairView(crosshair, "oblique")
