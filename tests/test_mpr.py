"""MPR (hilum.render.mpr): VTK reslice against the numpy reference, the phantom's spheres in
every plane and in the slab MIP, picking both ways on oblique planes, linked crosshair,
orientation letters, scale and rulers.  Offscreen VTK, no Qt, no display needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hilum.dicom.generator import DEFAULT_SPHERES, DOE, generate_ct_series, make_study
from hilum.dicom.volume import Plane, Volume, build_volume
from hilum.render.mpr import VIEWS, Crosshair, MPRScene, MPRViewport
from test_volume import measure_blob, sphere_threshold, tilted_ct

STUDY = make_study(DOE, accession="MPR1")


@pytest.fixture(scope="module")
def volume() -> Volume:
    return build_volume(
        generate_ct_series(STUDY, rows=128, columns=128, slices=64, fov=200.0, slice_thickness=1.0, noise_sigma=0.0)
    )


@pytest.fixture
def scene(volume: Volume):  # type: ignore[no-untyped-def]
    s = MPRScene(volume, size=(256, 256), window=(-600.0, 1500.0))
    yield s
    s.close()


def _blob_in_viewport(vp: MPRViewport, sphere) -> tuple[np.ndarray, float]:  # type: ignore[no-untyped-def]
    """Patient position of the sphere's centroid in the viewport's resliced image (searched in a
    square of 3.2 radii around where it should be), and its diameter."""
    image, plane, spacing = vp.image()
    s, t, _ = plane.to_plane(sphere.centre)
    half = int(math.ceil(1.6 * sphere.radius / spacing))
    c0, r0 = int(round(s / spacing)) - half, int(round(t / spacing)) - half
    assert c0 >= 0 and r0 >= 0
    crop = image[r0 : r0 + 2 * half + 1, c0 : c0 + 2 * half + 1]
    col, row, diameter = measure_blob(crop, spacing, sphere_threshold(sphere.name))
    return plane.to_patient((c0 + col) * spacing, (r0 + row) * spacing), diameter


def test_vtk_reslice_matches_numpy_reference(scene: MPRScene, volume: Volume) -> None:
    scene.crosshair.set_centre(DEFAULT_SPHERES[0].centre)
    scene.crosshair.rotate("axial", 25.0)
    scene.crosshair.rotate("coronal", -10.0)
    for view in VIEWS:
        image, plane, spacing = scene[view].image()
        rows, cols = image.shape
        centre = plane.to_patient((cols - 1) / 2 * spacing, (rows - 1) / 2 * spacing)
        ref = volume.reslice(Plane(centre, plane.u, plane.v), (rows, cols), spacing)
        inside = np.isfinite(ref)
        # compare away from the volume's border, where VTK and numpy treat the edge differently
        for axis in (0, 1):
            inside &= np.roll(inside, 1, axis) & np.roll(inside, -1, axis)
        assert inside.sum() > 500
        np.testing.assert_allclose(image[inside], ref[inside], atol=0.51)  # VTK rounds to int16


@pytest.mark.parametrize("oblique", [False, True], ids=["orthogonal", "oblique"])
def test_spheres_at_known_positions_in_each_plane(scene: MPRScene, oblique: bool) -> None:
    for sphere in DEFAULT_SPHERES:
        scene.crosshair.reset(sphere.centre)
        if oblique:
            scene.crosshair.rotate("axial", 30.0)
            scene.crosshair.rotate("sagittal", 20.0)
        for view in VIEWS:
            found, diameter = _blob_in_viewport(scene[view], sphere)
            assert np.linalg.norm(found - np.asarray(sphere.centre)) < 0.6, (sphere.name, view)
            assert abs(diameter - sphere.diameter) < 1.2, (sphere.name, view, diameter)


def test_slab_mip_shows_whole_sphere(scene: MPRScene) -> None:
    sphere = DEFAULT_SPHERES[0]
    scene.crosshair.reset(np.asarray(sphere.centre) + (0.0, 0.0, 7.0))  # axial plane 7 mm above the centre
    vp = scene["axial"]
    _, thin = _blob_in_viewport(vp, sphere)
    assert abs(thin - 2 * math.sqrt(10**2 - 7**2)) < 1.5
    scene.crosshair.set_slab("axial", 20.0, "mip")
    found, thick = _blob_in_viewport(vp, sphere)
    assert abs(thick - sphere.diameter) < 1.2
    assert np.linalg.norm(found[:2] - np.asarray(sphere.centre)[:2]) < 0.6

    def at_nodule() -> float:
        image, plane, spacing = vp.image()
        s, t, _ = plane.to_plane(sphere.centre)
        return float(image[int(round(t / spacing)), int(round(s / spacing))])

    mip = at_nodule()
    scene.crosshair.set_slab("axial", mode="mean")
    mean = at_nodule()
    scene.crosshair.set_slab("axial", mode="minip")
    minip = at_nodule()
    assert mip == pytest.approx(sphere.hu, abs=1.0)
    assert minip == pytest.approx(-850.0, abs=1.0)  # lung above and below the nodule
    assert minip < mean < 0.0  # 13 of the 20 mm are nodule, the rest lung: diluted
    scene.crosshair.set_slab("axial", 0.0)
    with pytest.raises(ValueError):
        scene.crosshair.set_slab("axial", -1.0)


def test_pick_maps_both_ways_on_oblique_planes(scene: MPRScene) -> None:
    point = np.array([-62.0, 14.0, 3.0])
    scene.crosshair.set_centre(point)
    scene.crosshair.rotate("axial", 35.0)
    scene.crosshair.rotate("coronal", 20.0)
    assert scene.crosshair.oblique
    rng = np.random.default_rng(3)
    for view in VIEWS:
        vp = scene[view]
        vp.set_zoom(1.7)
        vp.pan(5.0, -3.0)
        vp.render()
        x, y, w = vp.patient_to_display(point)
        assert abs(w) < 1e-9
        np.testing.assert_allclose(vp.display_to_patient(x, y), point, atol=1e-6)
        for px, py in rng.uniform(20, 230, size=(5, 2)):
            q = vp.display_to_patient(px, py)
            assert abs(vp.plane.to_plane(q)[2]) < 1e-9  # on the shown plane
            np.testing.assert_allclose(vp.patient_to_display(q)[:2], (px, py), atol=1e-6)


def test_rendered_pixels_show_the_picked_nodule(scene: MPRScene) -> None:
    sphere = DEFAULT_SPHERES[0]
    scene.crosshair.set_centre(sphere.centre)
    scene.crosshair.rotate("axial", 20.0)
    for view in VIEWS:
        vp = scene[view]
        vp.set_crosshair_visible(False)
        rgb = vp.capture()
        h = rgb.shape[0]
        x, y, _ = vp.patient_to_display(np.asarray(sphere.centre) + 3.0 * vp.plane.u)
        assert rgb[h - 1 - int(round(y)), int(round(x))].mean() > 150, view  # nodule: bright in a lung window
        x, y, _ = vp.patient_to_display(np.asarray(sphere.centre) + 16.0 * vp.plane.u)
        assert rgb[h - 1 - int(round(y)), int(round(x))].mean() < 100, view  # lung around it: darker


def test_crosshair_links_views_click_scroll_rotate(scene: MPRScene) -> None:
    events: list[str] = []
    unsubscribe = scene.crosshair.subscribe(events.append)
    ax, cor, sag = scene["axial"], scene["coronal"], scene["sagittal"]
    ax.render()
    ax.click(100.0, 140.0)
    target = ax.display_to_patient(100.0, 140.0)
    np.testing.assert_allclose(scene.crosshair.centre, target)
    assert abs(cor.plane.to_plane(target)[2]) < 1e-9 and abs(sag.plane.to_plane(target)[2]) < 1e-9
    before = scene.crosshair.centre.copy()
    ax.scroll(3)
    np.testing.assert_allclose(scene.crosshair.centre - before, (0.0, 0.0, 3.0), atol=1e-9)  # 1 mm slices
    # the coronal line in the axial view runs along x through the cursor: a point on it is "near" it
    cx, cy, _ = ax.patient_to_display(scene.crosshair.centre + (30.0, 0.0, 0.0))
    assert ax.near_crosshair_line(cx, cy + 2) == "coronal"
    c0 = ax.patient_to_display(scene.crosshair.centre)
    angle = ax.rotate_drag(c0[0] + 50, c0[1], c0[0] + 50, c0[1] + 50)  # display y is up: counter-clockwise
    assert angle == pytest.approx(-45.0, abs=1e-6)
    np.testing.assert_allclose(cor.plane.u, (math.cos(math.radians(45)), -math.sin(math.radians(45)), 0), atol=1e-9)
    np.testing.assert_allclose(ax.plane.u, (1.0, 0.0, 0.0))  # the view rotated in keeps its own plane
    for a in VIEWS:
        for b in VIEWS:
            if a < b:
                assert abs(scene[a].plane.normal @ scene[b].plane.normal) < 1e-9
    assert {"centre", "orientation"} <= set(events)
    unsubscribe()
    n = len(events)
    scene.crosshair.move_along("axial", 1.0)
    assert len(events) == n


def test_orientation_letters_and_scale_bar(scene: MPRScene) -> None:
    expected = {
        "axial": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
        "coronal": {"left": "R", "right": "L", "top": "H", "bottom": "F"},
        "sagittal": {"left": "A", "right": "P", "top": "H", "bottom": "F"},
    }
    for view in VIEWS:
        vp = scene[view]
        vp.render()
        assert {e: a.GetInput() for e, a in vp._letters.items()} == expected[view]
        assert vp._scale_text.GetInput() in ("5 cm", "2 cm", "1 cm", "5 mm")
    scene.crosshair.rotate("axial", 40.0)
    cor = scene["coronal"]
    cor.render()
    assert cor._letters["right"].GetInput() == "LP"  # its row direction turned 40 degrees about +z
    small = cor._scale_text.GetInput()
    cor.set_zoom(4.0)
    cor.render()
    assert cor._scale_text.GetInput() != small


def test_measurement_in_mm_on_oblique_plane(scene: MPRScene) -> None:
    scene.crosshair.rotate("axial", 33.0)
    vp = scene["coronal"]
    vp.set_zoom(2.0)
    vp.render()
    m = vp.measure((60.0, 80.0), (180.0, 150.0))
    expected = math.hypot(120.0, 70.0) / vp.pixels_per_mm
    assert m.length == pytest.approx(expected, rel=1e-6)
    vp.render()
    assert vp.ruler_labels() == [f"{m.length:.1f} mm"]
    # shown only where the measured points lie in the plane
    scene.crosshair.move_along("coronal", 5.0)
    assert vp.ruler_labels() == []


def test_window_level_and_zoom_per_viewport(scene: MPRScene) -> None:
    ax, cor = scene["axial"], scene["coronal"]
    ax.set_window(40.0, 400.0)
    assert ax.window == (40.0, 400.0) and cor.window == (-600.0, 1500.0)
    ax.window_drag(50, 0)
    assert ax.window[1] > 400.0
    ax.set_zoom(3.0)
    assert ax.zoom == 3.0 and cor.zoom == 1.0
    ax.render()
    assert ax.pixels_per_mm == pytest.approx(3.0 * cor.pixels_per_mm, rel=0.35)


def test_gantry_tilted_volume_reslices_in_true_position() -> None:
    vol = build_volume(tilted_ct(12.0, slices=20))
    crosshair = Crosshair(centre=np.asarray(DEFAULT_SPHERES[0].centre))
    from hilum.render.mpr import VolumeImage

    vp = MPRViewport(VolumeImage(vol), crosshair, "sagittal", size=(200, 200))
    found, diameter = _blob_in_viewport(vp, DEFAULT_SPHERES[0])
    assert np.linalg.norm(found - np.asarray(DEFAULT_SPHERES[0].centre)) < 1.0
    assert abs(diameter - DEFAULT_SPHERES[0].diameter) < 1.5
    vp.close()


def test_nearest_source_slice_follows_the_cursor(scene: MPRScene, volume: Volume) -> None:
    scene["coronal"].render()
    scene["coronal"].click(128.0, 100.0)
    idx, ref = volume.nearest_source_slice(scene.crosshair.centre)  # type: ignore[misc]
    assert ref.position is not None and abs(ref.position[2] - scene.crosshair.centre[2]) <= 0.5 + 1e-9
