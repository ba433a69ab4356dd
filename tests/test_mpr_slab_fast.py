"""Thick slabs from the plane cache (hilum.render.slab) held to vtkImageReslice's own slab.

The viewer's slab before the cache (``MPRViewport.slab_cache = False``: VTK's slab made
afresh on every change) is the reference.  The same crosshair moves are made in a scene with
the cache and in one without, and after each the resliced values (and the shown grey pixels)
are compared: MIP and MinIP equal to the last bit, the mean within float32 rounding (VTK sums
the samples as doubles, the cache sums float32 thin planes).  Scroll steps must cost one thin
plane each (the cache is really used), a scroll in one view must not reslice the others, and
whatever the cache cannot do (an axis-aligned plane, a MinIP whose sentinel is a value of the
volume) goes to VTK's slab.  The thin planes come from the compiled reslice (hilum.render.reslice_kernel) or from
``vtkImageReslice``: every test runs both ways, and the compiled one is also held to VTK's
pixels directly, thin oblique planes of the viewer included.  Offscreen VTK, no Qt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest

from hilum.dicom.generator import DOE, generate_ct_series, make_study
from hilum.dicom.volume import Volume, build_volume
from hilum.render import mpr, reslice_kernel
from hilum.render.mpr import VIEWS, MPRScene, MPRViewport
from hilum.render.slab import PlaneCacheSlab, is_permutation
from test_volume import tilted_ct

STUDY = make_study(DOE, accession="SLABFAST")
MEAN_TOLERANCE = 1e-3  # HU: float32 rounding of ~40 summed samples of a few thousand HU


@pytest.fixture(autouse=True, params=["compiled", "vtk"])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test both ways: thin planes by the compiled reslice, and by vtkImageReslice."""
    if request.param == "compiled":
        assert reslice_kernel.available(wait=True), reslice_kernel.unavailable_reason()
    else:
        monkeypatch.setattr(reslice_kernel, "RESLICE_KERNEL", False)
    return str(request.param)


@pytest.fixture(scope="module")
def ct() -> Volume:
    """A noisy CT (noise makes ties and flat regions rare, as in a real one)."""
    return build_volume(generate_ct_series(STUDY, rows=96, columns=96, slices=60, fov=200.0, slice_thickness=1.0))


@pytest.fixture(scope="module")
def tilted() -> Volume:
    """Gantry tilt: a sheared affine, so that even the axial view is not axis-aligned in voxels."""
    return build_volume(tilted_ct(12.0, slices=40, spacing=1.5))


def make_scene(volume: Volume, cache: bool, monkeypatch: pytest.MonkeyPatch) -> MPRScene:
    with monkeypatch.context() as m:
        m.setattr(mpr, "SLAB_CACHE", cache)
        scene = MPRScene(volume, size=(200, 200), window=(40.0, 400.0))
    assert all(vp.slab_cache is cache for vp in scene.viewports.values())
    return scene


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Volume], tuple[MPRScene, MPRScene]]]:
    made: list[MPRScene] = []

    def make(volume: Volume) -> tuple[MPRScene, MPRScene]:
        fast, ref = make_scene(volume, True, monkeypatch), make_scene(volume, False, monkeypatch)
        made.extend((fast, ref))
        return fast, ref

    yield make
    for scene in made:
        scene.close()


def both(fast: MPRScene, ref: MPRScene, op: Callable[[MPRScene], object]) -> None:
    op(fast)
    op(ref)


def assert_same(fast: MPRViewport, ref: MPRViewport, mode: str, what: str) -> None:
    a, plane_a, _ = fast.image()
    b, plane_b, _ = ref.image()
    assert a.shape == b.shape, what
    np.testing.assert_allclose(plane_a.centre, plane_b.centre, atol=1e-9)
    if mode == "mean":
        assert np.max(np.abs(a.astype(np.float64) - b)) <= MEAN_TOLERANCE, what
    else:
        assert np.array_equal(a, b), f"{what}: {int(np.sum(a != b))} pixels differ"
        fast.update_image()
        ref.update_image()
        assert fast._grey_values is not None and ref._grey_values is not None
        assert np.array_equal(fast._grey_values, ref._grey_values), what  # the grey pixels shown


def oblique(scene: MPRScene) -> None:
    scene.crosshair.rotate("axial", 23.0)
    scene.crosshair.rotate("coronal", -31.0)


@pytest.mark.parametrize("mode", ["mip", "minip", "mean"])
def test_oblique_slab_scrolled_equals_vtk_slab(pair, ct: Volume, mode: str) -> None:  # type: ignore[no-untyped-def]
    fast, ref = pair(ct)
    both(fast, ref, oblique)
    both(fast, ref, lambda s: s.crosshair.set_slab("sagittal", 12.0, mode))
    vp = fast["sagittal"]
    assert not is_permutation(vp._geometry[0])  # type: ignore[index]
    assert_same(vp, ref["sagittal"], mode, "first frame")
    cache = vp._cache
    assert cache is not None and cache.planes_resliced == 12 / 1.0  # the fill: one plane per sample
    for i, steps in enumerate([1, 1, 1, -1, -1, -1, -1, 2, -3]):
        before = cache.planes_resliced
        both(fast, ref, lambda s: s["sagittal"].scroll(steps))  # noqa: B023
        assert_same(vp, ref["sagittal"], mode, f"scroll {i} by {steps}")
        assert cache.planes_resliced - before == abs(steps)  # one new thin plane per step
    # a thicker and a thinner slab on the same lattice reuse the planes they share
    before = cache.planes_resliced
    both(fast, ref, lambda s: s.crosshair.set_slab("sagittal", 16.0))
    assert_same(vp, ref["sagittal"], mode, "16 mm")
    assert cache.planes_resliced - before == 4
    both(fast, ref, lambda s: s.crosshair.set_slab("sagittal", 8.0))
    assert_same(vp, ref["sagittal"], mode, "8 mm")
    assert cache.planes_resliced - before == 4
    # an odd number of samples is another lattice: a refill
    both(fast, ref, lambda s: s.crosshair.set_slab("sagittal", 9.0))
    assert_same(vp, ref["sagittal"], mode, "9 mm")
    assert cache.planes_resliced - before == 4 + 9


@pytest.mark.parametrize("mode", ["mip", "minip", "mean"])
def test_slab_leaving_the_volume_equals_vtk_slab(pair, ct: Volume, mode: str) -> None:  # type: ignore[no-untyped-def]
    """Near the edge part of each pixel's samples lies outside: VTK combines only those inside
    (the mean with its own end weights), and a pixel with none is the background."""
    fast, ref = pair(ct)
    both(fast, ref, oblique)
    both(fast, ref, lambda s: s.crosshair.set_slab("axial", 20.0, mode))
    corner = ct.voxel_to_world(np.array(ct.size) - 4)
    both(fast, ref, lambda s: s.crosshair.set_centre(corner))
    for steps in (0, 2, 2, 2, 2, 2):
        both(fast, ref, lambda s: s["axial"].scroll(steps))  # noqa: B023
        assert_same(fast["axial"], ref["axial"], mode, f"at the edge, +{steps}")
    image, _, _ = fast["axial"].image()
    background = fast.data.value_range[0]
    assert np.any(image == background) and np.any(image != background)


@pytest.mark.parametrize("mode", ["mip", "mean"])
def test_sheared_volume_and_mode_changes(pair, tilted: Volume, mode: str) -> None:  # type: ignore[no-untyped-def]
    fast, ref = pair(tilted)
    both(fast, ref, lambda s: s.crosshair.set_slab("axial", 9.0, mode))
    assert not is_permutation(fast["axial"]._geometry[0])  # type: ignore[index]
    for steps in (1, 1, -2):
        both(fast, ref, lambda s: s["axial"].scroll(steps))  # noqa: B023
        assert_same(fast["axial"], ref["axial"], mode, f"tilted, scroll {steps}")
    for other in ("minip", "mip", "mean"):
        both(fast, ref, lambda s: s.crosshair.set_slab("axial", mode=other))  # noqa: B023
        assert_same(fast["axial"], ref["axial"], other, f"tilted, mode {other}")


def test_scrolling_one_view_reslices_no_other(pair, ct: Volume) -> None:  # type: ignore[no-untyped-def]
    """The two other planes only move within themselves: nothing of theirs is resliced (VTK's
    pipeline would have run their whole slabs again, for the same pixels)."""
    fast, ref = pair(ct)
    both(fast, ref, oblique)
    for view in VIEWS:
        both(fast, ref, lambda s: s.crosshair.set_slab(view, 10.0, "mip"))  # noqa: B023
    for scene in (fast, ref):
        for vp in scene.viewports.values():
            vp.update_image()
    outputs = {v: fast[v]._cached for v in ("axial", "coronal")}
    mtimes = {v: ref[v].reslice.GetOutput().GetMTime() for v in ("axial", "coronal")}
    counts = {v: fast[v]._cache.planes_resliced for v in VIEWS}  # type: ignore[union-attr]
    for _ in range(3):
        both(fast, ref, lambda s: s["sagittal"].scroll(1))
        for scene in (fast, ref):
            for vp in scene.viewports.values():
                vp.update_image()
    for v in ("axial", "coronal"):
        assert fast[v]._cached is outputs[v]
        assert fast[v]._cache.planes_resliced == counts[v]  # type: ignore[union-attr]
        assert ref[v].reslice.GetOutput().GetMTime() == mtimes[v]
        assert_same(fast[v], ref[v], "mip", v)
    assert fast["sagittal"]._cache.planes_resliced == counts["sagittal"] + 3  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["mip", "mean"])
def test_axis_aligned_slab_stays_with_vtk(pair, ct: Volume, mode: str) -> None:  # type: ignore[no-untyped-def]
    """Axis-aligned planes take VTK's permutation path, already fast for slabs: no cache."""
    fast, ref = pair(ct)
    both(fast, ref, lambda s: s.crosshair.set_slab("coronal", 10.0, mode))
    both(fast, ref, lambda s: s["coronal"].scroll(1))
    assert fast["coronal"]._cache is None
    assert_same(fast["coronal"], ref["coronal"], mode, "axis-aligned")


def test_minip_whose_sentinel_is_a_value_goes_to_vtk(pair, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    array = np.random.default_rng(3).integers(-1000, 1000, size=(30, 40, 40)).astype(np.int16)
    array[5, 5, 5] = np.iinfo(np.int16).max
    volume = Volume.from_array(array, spacing=(1.0, 1.0, 1.0))
    fast, ref = pair(volume)
    both(fast, ref, oblique)
    both(fast, ref, lambda s: s.crosshair.set_slab("axial", 6.0, "minip"))
    vp = fast["axial"]
    assert vp._cache is not None and not vp._cache.supports("minip") and vp._cached is None
    assert_same(vp, ref["axial"], "minip", "sentinel in the volume")
    both(fast, ref, lambda s: s.crosshair.set_slab("axial", mode="mip"))
    assert_same(vp, ref["axial"], "mip", "then a MIP from the cache")
    assert vp._cached is not None


def test_float_volume(pair) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    volume = Volume.from_array(rng.normal(100.0, 40.0, size=(30, 48, 48)).astype(np.float32), spacing=(0.9, 0.9, 1.2))
    fast, ref = pair(volume)
    both(fast, ref, oblique)
    for mode in ("mip", "minip", "mean"):
        both(fast, ref, lambda s: s.crosshair.set_slab("coronal", 6.0, mode))  # noqa: B023
        both(fast, ref, lambda s: s["coronal"].scroll(1))
        assert_same(fast["coronal"], ref["coronal"], mode, f"float {mode}")
        assert fast["coronal"]._cached is not None


def test_setting_off_is_vtk_only(ct: Volume, monkeypatch: pytest.MonkeyPatch) -> None:
    scene = make_scene(ct, False, monkeypatch)
    try:
        oblique(scene)
        scene.crosshair.set_slab("axial", 10.0, "mip")
        scene["axial"].scroll(1)
        scene["axial"].update_image()
        assert all(vp._cache is None and vp._cached is None for vp in scene.viewports.values())
        assert scene["axial"].reslice.GetSlabNumberOfSlices() == 10
    finally:
        scene.close()


def test_cache_alone_equals_vtk_slab_of_the_same_geometry(ct: Volume) -> None:
    """The cache on its own (no viewport): its slab equals a vtkImageReslice slab set up with
    the same geometry, and a plane of another orientation refills it."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkImagingCore import vtkImageReslice

    data = mpr.VolumeImage(ct)
    cache = PlaneCacheSlab(data.image, interpolation=1, background=data.value_range[0], value_range=data.value_range)
    plane = mpr.Plane.axial(ct.center).rotated((0, 1, 0), 35.0)
    for k, shift in enumerate((0.0, 1.0, 2.0, 1.0)):
        axes = np.linalg.inv(ct.affine) @ plane.shifted(shift).matrix()
        got = cache.update((axes, -60.0, -50.0, 90, 80, 1.3, 1.0, 7, "mip"))
        r = vtkImageReslice()
        r.SetInputData(data.image)
        r.SetOutputDimensionality(2)
        r.SetInterpolationModeToLinear()
        r.SetBackgroundLevel(data.value_range[0])
        r.SetResliceAxes(mpr.matrix_to_vtk(axes))
        r.SetOutputSpacing(1.3, 1.3, 1.0)
        r.SetOutputOrigin(-60.0, -50.0, 0.0)
        r.SetOutputExtent(0, 89, 0, 79, 0, 0)
        r.SetSlabNumberOfSlices(7)
        r.SetSlabModeToMax()
        r.Update()
        want = numpy_support.vtk_to_numpy(r.GetOutput().GetPointData().GetScalars()).reshape(80, 90)
        assert np.array_equal(got, want), shift
        assert cache.planes_resliced == (7 if k == 0 else 7 + k)


# --------------------------------------------------------------------------- the compiled reslice


def vtk_planes(data: mpr.VolumeImage, axes: np.ndarray, spacing, origin, shape, background: float, float_out: bool):  # type: ignore[no-untyped-def]
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import VTK_FLOAT
    from vtkmodules.vtkImagingCore import vtkImageReslice

    r = vtkImageReslice()
    r.SetInputData(data.image)
    r.SetInterpolationModeToLinear()
    r.SetBackgroundLevel(background)
    r.AutoCropOutputOff()
    r.TransformInputSamplingOff()
    r.SetResliceAxes(mpr.matrix_to_vtk(axes))
    r.SetOutputSpacing(*spacing)
    r.SetOutputOrigin(*origin)
    nz, ny, nx = shape
    r.SetOutputExtent(0, nx - 1, 0, ny - 1, 0, nz - 1)
    if float_out:
        r.SetOutputScalarType(VTK_FLOAT)
    r.Update()
    return numpy_support.vtk_to_numpy(r.GetOutput().GetPointData().GetScalars()).reshape(shape)


@pytest.mark.parametrize("float_out", [False, True], ids=["input-type", "float32"])
def test_compiled_reslice_equals_vtk_bit_for_bit(kernel: str, ct: Volume, tilted: Volume, float_out: bool) -> None:
    if kernel != "compiled":
        pytest.skip("the compiled reslice itself")
    rng = np.random.default_rng(11)
    floats = Volume.from_array(rng.normal(50.0, 30.0, size=(20, 30, 40)).astype(np.float32), spacing=(0.8, 0.8, 1.3))
    for volume in (ct, tilted, floats):
        data = mpr.VolumeImage(volume)
        for _ in range(6):
            axis = rng.normal(size=3)
            extent = float(np.max(volume.spacing * np.asarray(volume.size)))  # a grid a little larger than the volume
            centre = volume.center + rng.normal(0, 0.05 * extent, 3)
            plane = mpr.Plane(centre, (1, 0, 0), (0, 1, 0)).rotated(axis, rng.uniform(5, 80))
            axes = np.linalg.inv(volume.affine) @ plane.matrix()
            spacing = (float(rng.uniform(0.4, 2.0)), float(rng.uniform(0.4, 2.0)), float(rng.uniform(0.3, 1.5)))
            shape = (3, int(rng.integers(60, 200)), int(rng.integers(60, 200)))
            spacing = (1.3 * extent / shape[2], 1.3 * extent / shape[1], spacing[2])
            origin = (
                -0.65 * extent + float(rng.uniform(-3, 3)),
                -0.65 * extent + float(rng.uniform(-3, 3)),
                float(rng.uniform(-0.05, 0.05) * extent),
            )
            background = data.value_range[0]
            want = vtk_planes(data, axes, spacing, origin, shape, background, float_out)
            got = reslice_kernel.reslice_planes(
                data.array, axes, spacing, origin, shape, background=background,
                dtype=np.float32 if float_out else data.array.dtype,
            )  # fmt: skip
            assert got.dtype == want.dtype
            assert np.array_equal(got, want, equal_nan=True), f"{int(np.sum(got != want))} of {got.size} differ"
            assert np.any(got == background) and np.any(got != background)  # the edge of the volume is in view


def test_thin_oblique_planes_of_the_viewer(pair, ct: Volume, kernel: str) -> None:  # type: ignore[no-untyped-def]
    """Thin oblique planes go through the compiled reslice when it is there, equal to VTK's."""
    fast, ref = pair(ct)
    both(fast, ref, oblique)
    for view in VIEWS:
        assert_same(fast[view], ref[view], "mip", f"thin {view}")
        assert (fast[view]._cached is not None) == (kernel == "compiled")
    for steps in (1, 1, -3):
        both(fast, ref, lambda s: s["coronal"].scroll(steps))  # noqa: B023
        assert_same(fast["coronal"], ref["coronal"], "mip", f"thin, scroll {steps}")


def test_self_check_failure_falls_back_to_vtk(
    kernel: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if kernel != "compiled":
        pytest.skip("the compiled reslice's fence")
    monkeypatch.setattr(reslice_kernel, "_checked", None)
    monkeypatch.setattr(reslice_kernel, "_warm_up", None)
    monkeypatch.setattr(reslice_kernel, "_self_check", lambda: "its pixels differ from vtkImageReslice's (1 of 2)")
    with caplog.at_level("ERROR", logger="hilum.render.reslice_kernel"):
        assert not reslice_kernel.available(wait=True)
    assert "vtkImageReslice instead" in caplog.text and "differ" in caplog.text
    assert "differ" in reslice_kernel.unavailable_reason()


def test_rotation_drag_previews_coarse_then_refines(pair, ct: Volume) -> None:  # type: ignore[no-untyped-def]
    """While a drag turns the planes, the turning views' thick slabs are previewed with a quarter
    of the samples on a grid half as fine; on release they are made at full quality, equal to
    VTK's slab, and the view being dragged in never changes its own slab."""
    fast, ref = pair(ct)
    both(fast, ref, lambda s: s.crosshair.set_slab("axial", 16.0, "mip"))
    both(fast, ref, lambda s: s.crosshair.set_slab("coronal", 16.0, "mip"))
    both(fast, ref, lambda s: s.crosshair.set_slab("sagittal", 16.0, "mip"))
    for scene in (fast, ref):
        for vp in scene.viewports.values():
            vp.update_image()
    full = fast["coronal"].image()[0].shape
    axial_key = fast["axial"]._geometry
    events: list[str] = []
    fast.crosshair.subscribe(events.append)
    fast["axial"].set_interacting(True)
    assert all(vp.interacting for vp in fast.viewports.values())
    for _ in range(3):
        both(fast, ref, lambda s: s.crosshair.rotate("axial", 7.0))
        image, _, spacing = fast["coronal"].image()
        assert spacing == pytest.approx(2 * fast["coronal"].spacing) and image.shape[1] < full[1]
        assert fast["coronal"]._geometry[7] == 4  # type: ignore[index]
        assert fast["axial"]._geometry is axial_key  # the plane being dragged in: untouched
    events.clear()
    fast["axial"].set_interacting(False)
    assert events == ["slab"] and not any(vp.interacting for vp in fast.viewports.values())
    for view in VIEWS:
        assert_same(fast[view], ref[view], "mip", f"after the drag, {view}")
