"""MPR and 3D benchmark (issue 5): volume build, oblique reslice vs SimpleITK, slab MIP, volume rendering.

On a generated CT (default 512 x 512 x 600, 0.7 mm pixels, 0.5 mm slices) written to disk:

1. time to build the volume from the files (``hilum.dicom.volume.load_volume``), next to
   SimpleITK's ``ImageSeriesReader`` on the same files;
2. oblique reslice of one 512 x 512 plane: VTK ``vtkImageReslice`` as ``hilum.render.mpr``
   configured it, the compiled reslice the viewer now uses for thin oblique planes
   (``reslice_hilum``, :mod:`hilum.render.reslice_kernel`, checked equal to VTK's), and the pure
   numpy path, against SimpleITK ``Resample`` of the same plane in the same run (median ms,
   ratios, and the largest difference between VTK's and SimpleITK's images);
3. a 20 mm MIP slab on that oblique plane;
3b. scrolling a 20 mm slab in the MPR viewer (``hilum.render.mpr.MPRScene``, its own grids):
   per scroll step, the frame of the scrolled view (median and p95 over the steps) for MIP,
   MinIP and mean on an oblique and an axis-aligned plane, with the plane cache
   (``MPRViewport.slab_cache``) and with VTK's own slab (the viewer before it) in turn, and the
   whole step (all three views brought up to date); also the first frame after a change of
   mode (a refill).  ``--before DIR`` runs this part first with the ``hilum`` package of DIR
   (e.g. the main checkout's ``app``) in a subprocess: its figures are prefixed ``before_``;
4. one 800 x 800 volume-rendering frame of the whole volume (as the 3D view renders it: with
   software OpenGL from a block-averaged copy of at most 256^3 voxels; ``--full-res`` also
   times the full grid);
5. on a 256^3 volume at 512 x 512: frame rate while rotating at the interactive level of
   detail (whose image sample distance adapts to a 12 frames/s budget; the distance
   reached is printed), and a full-quality still frame.

Run: ``.venv/bin/python bench/mpr/run.py [--slices N] [--data DIR] [--json out.json] [--slab-only]
[--before /work/main/app]``.  ``hilum`` is imported from PYTHONPATH when it is there, else from
this checkout's ``app``.
Numbers are printed, never asserted (DESIGN.md, Tests).  Competing pairs are timed in turn
(interleaved) and CPU time is printed next to wall time, as the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
try:
    import hilum  # noqa: F401  (from PYTHONPATH: this checkout's app, or another one's for --before)
except ImportError:
    sys.path.insert(0, str(ROOT / "app"))

from hilum.dicom.generator import DOE, iter_ct_series, make_study, write_dataset  # noqa: E402
from hilum.dicom.volume import Plane, Volume, build_volume, load_volume  # noqa: E402


def median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def interleaved(fns: dict[str, object], repeat: int) -> dict[str, float]:  # type: ignore[type-arg]
    """Median wall and CPU milliseconds of several functions run in turn, so that a machine
    shared with other work loads each of them alike."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeat):
        for name, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn(i)  # type: ignore[operator]
            wall[name].append((time.perf_counter() - t) * 1000.0)
            cpu[name].append((time.process_time() - c) * 1000.0)
    out = {}
    for name in fns:
        out[f"{name}_ms"] = statistics.median(wall[name])
        out[f"{name}_cpu_ms"] = statistics.median(cpu[name])
    return out


def write_series(folder: Path, rows: int, slices: int, fov: float, thickness: float) -> list[Path]:
    study = make_study(DOE, accession="BENCH-MPR")
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.dcm"))
    if len(existing) == slices:
        return existing
    paths = []
    for ds in iter_ct_series(
        study, rows=rows, columns=rows, slices=slices, fov=fov, slice_thickness=thickness, descending=True
    ):
        paths.append(write_dataset(ds, folder / f"{int(ds.InstanceNumber):05d}.dcm"))
    return paths


def sitk_image(volume: Volume):  # type: ignore[no-untyped-def]
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(volume.array)
    img.SetSpacing([float(v) for v in volume.spacing])
    img.SetOrigin([float(v) for v in volume.origin])
    img.SetDirection([float(v) for v in volume.direction.reshape(-1)])
    return img


def bench_reslice(volume: Volume, repeat: int, size: int = 512) -> dict[str, float]:
    import SimpleITK as sitk
    from vtkmodules.vtkImagingCore import vtkImageReslice

    from hilum.render.mpr import VolumeImage, matrix_to_vtk

    out: dict[str, float] = {}
    sp = float(np.min(volume.spacing[:2]))
    base = Plane.axial(volume.center).rotated((1, 0, 0), 30.0).rotated((0, 0, 1), 20.0)

    def plane_at(i: int) -> Plane:
        return base.shifted((i % 7 - 3) * 2.0)  # a different plane each time: nothing cached

    data = VolumeImage(volume)
    reslice = vtkImageReslice()
    reslice.SetInputData(data.image)
    reslice.SetOutputDimensionality(2)
    reslice.SetInterpolationModeToLinear()
    reslice.SetBackgroundLevel(-1024.0)
    reslice.SetOutputSpacing(sp, sp, float(np.min(volume.spacing)))
    half = (size - 1) / 2 * sp
    reslice.SetOutputOrigin(-half, -half, 0.0)
    reslice.SetOutputExtent(0, size - 1, 0, size - 1, 0, 0)
    inv = np.linalg.inv(volume.affine)

    def vtk_plane(i: int, slab_slices: int = 1) -> np.ndarray:
        from vtkmodules.util import numpy_support

        reslice.SetResliceAxes(matrix_to_vtk(inv @ plane_at(i).matrix()))
        reslice.SetSlabNumberOfSlices(slab_slices)
        reslice.SetSlabModeToMax()
        reslice.Update()
        return numpy_support.vtk_to_numpy(reslice.GetOutput().GetPointData().GetScalars()).reshape(size, size)

    image = sitk_image(volume)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([size, size, 1])
    resampler.SetOutputSpacing([sp, sp, 1.0])
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(-1024)
    resampler.SetOutputPixelType(sitk.sitkInt16)

    def sitk_plane(i: int) -> np.ndarray:
        p = plane_at(i)
        d = np.stack([p.u, p.v, p.normal], axis=1)
        resampler.SetOutputDirection([float(x) for x in d.reshape(-1)])
        resampler.SetOutputOrigin([float(x) for x in p.to_patient(-half, -half)])
        return sitk.GetArrayViewFromImage(resampler.Execute(image))[0]

    fns = {"reslice_vtk": vtk_plane, "reslice_sitk": sitk_plane}
    try:
        from hilum.render import reslice_kernel
    except ImportError:  # a checkout without the compiled reslice (--before)
        reslice_kernel = None  # type: ignore[assignment]
    if reslice_kernel is not None and reslice_kernel.available(wait=True):
        array = data.array
        kernel_out = np.empty((1, size, size), dtype=array.dtype)

        def hilum_plane(i: int) -> np.ndarray:  # as the viewer makes a thin oblique plane
            axes = inv @ plane_at(i).matrix()
            return reslice_kernel.reslice_planes(
                array, axes, (sp, sp, float(np.min(volume.spacing))), (-half, -half, 0.0), (1, size, size),
                background=-1024.0, dtype=array.dtype, out=kernel_out,
            )[0]  # fmt: skip

        fns["reslice_hilum"] = hilum_plane
        out["reslice_hilum_equals_vtk"] = bool(np.array_equal(hilum_plane(5), vtk_plane(5)))
    elif reslice_kernel is not None:
        out["reslice_hilum_unavailable"] = reslice_kernel.unavailable_reason()
    for fn in fns.values():
        fn(0)
    out.update(interleaved(fns, repeat))
    if "reslice_hilum_ms" in out:
        out["reslice_ratio_hilum_over_sitk"] = out["reslice_hilum_ms"] / out["reslice_sitk_ms"]
        out["reslice_ratio_hilum_over_vtk"] = out["reslice_hilum_ms"] / out["reslice_vtk_ms"]
    out["reslice_numpy_ms"] = median_ms(
        lambda i: volume.reslice(plane_at(i), (size, size), sp, fill=-1024.0), max(3, repeat // 4)
    )
    a = vtk_plane(1).astype(np.float64)
    b = np.asarray(sitk_plane(1), dtype=np.float64)
    inside = (a > -1024) & (b > -1024)
    out["reslice_vtk_vs_sitk_max_diff_hu"] = float(np.max(np.abs(a - b)[inside])) if inside.any() else float("nan")
    out["reslice_vtk_vs_sitk_mean_diff_hu"] = float(np.mean(np.abs(a - b)[inside])) if inside.any() else float("nan")
    n_slab = max(1, int(round(20.0 / float(np.min(volume.spacing)))))
    out["slab_mip_20mm_slices"] = n_slab
    out.update(interleaved({"slab_mip_20mm_vtk": lambda i: vtk_plane(i, n_slab)}, max(3, repeat // 2)))
    out["slab_mip_20mm_numpy_ms"] = median_ms(
        lambda i: volume.reslice(plane_at(i), (size, size), sp, slab=20.0, mode="mip", fill=-1024.0), 2
    )
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_slab_scroll(volume: Volume, steps: int, thickness: float = 20.0) -> dict[str, object]:
    """Scrolling a slab in the viewer: per step the scrolled view's frame, with the plane cache
    and with VTK's slab, in turn on two scenes that make the same moves (see the docstring, 3b)."""
    from hilum.render import mpr

    out: dict[str, object] = {}
    has_cache = hasattr(mpr, "SLAB_CACHE")
    try:
        from hilum.render import reslice_kernel

        out["slab_thin_planes_by"] = "compiled" if reslice_kernel.available(wait=True) else "vtkImageReslice"
    except ImportError:
        pass
    paths = ("cache", "vtk") if has_cache else ("vtk",)
    kinds = {"oblique": ("axial", True), "orthogonal": ("axial", False)}
    for kind, (view, tilt) in kinds.items():
        scenes = {}
        for path in paths:
            if has_cache:
                mpr.SLAB_CACHE = path == "cache"  # type: ignore[attr-defined]
            scene = mpr.MPRScene(volume, size=(512, 512))
            if tilt:
                scene.crosshair.rotate("coronal", 30.0)
                scene.crosshair.rotate("sagittal", 20.0)
            scenes[path] = scene
        if has_cache:
            mpr.SLAB_CACHE = True  # type: ignore[attr-defined]
        for mode in ("mip", "minip", "mean"):
            frame: dict[str, list[float]] = {p: [] for p in paths}
            whole: dict[str, list[float]] = {p: [] for p in paths}
            fill: dict[str, float] = {}
            for path, scene in scenes.items():
                for v in mpr.VIEWS:
                    scene.crosshair.set_slab(v, thickness, mode)  # type: ignore[arg-type]
                t = time.perf_counter()
                scene[view].update_image()
                fill[path] = (time.perf_counter() - t) * 1000.0
                for vp in scene.viewports.values():
                    vp.update_image()
            for i in range(steps):
                direction = 1 if (i // 5) % 2 == 0 else -1  # back and forth, five steps each way
                for path, scene in scenes.items():
                    scene[view].scroll(direction)
                    t = time.perf_counter()
                    scene[view].update_image()
                    frame[path].append((time.perf_counter() - t) * 1000.0)
                    for vp in scene.viewports.values():
                        vp.update_image()  # the other views: nothing to reslice where only the cursor moved
                    whole[path].append((time.perf_counter() - t) * 1000.0)
            vp = scenes[paths[0]][view]
            image, _, _ = vp.image()
            out[f"slab_scroll_{kind}_grid"] = "x".join(map(str, image.shape[::-1]))
            for path in paths:
                key = f"slab_scroll_{kind}_{mode}_{path}"
                out[f"{key}_frame_median_ms"] = statistics.median(frame[path])
                out[f"{key}_frame_p95_ms"] = pct(frame[path], 95)
                out[f"{key}_step_all_views_median_ms"] = statistics.median(whole[path])
                out[f"{key}_first_frame_ms"] = fill[path]
            if len(paths) == 2:
                a = scenes["cache"][view].image()[0].astype(np.float64)
                b = scenes["vtk"][view].image()[0].astype(np.float64)
                out[f"slab_scroll_{kind}_{mode}_cache_vs_vtk_max_diff"] = f"{float(np.max(np.abs(a - b))):.3g}"
                out[f"slab_scroll_{kind}_{mode}_frame_ratio_cache_over_vtk"] = statistics.median(
                    frame["cache"]
                ) / statistics.median(frame["vtk"])
        if tilt:  # a rotation drag in the axial view turns the two others: both thick slabs are made again
            for path, scene in scenes.items():
                for v in mpr.VIEWS:
                    scene.crosshair.set_slab(v, thickness, "mip")
                for vp in scene.viewports.values():
                    vp.update_image()
                preview = path == "cache" and hasattr(scene, "set_interacting")
                if preview:
                    scene.set_interacting(True)
                drag = []
                for _ in range(max(3, steps // 4)):
                    t = time.perf_counter()
                    scene.crosshair.rotate(view, 1.0)
                    for vp in scene.viewports.values():
                        vp.update_image()
                    drag.append((time.perf_counter() - t) * 1000.0)
                key = f"slab_rotate_drag_mip_{path}"
                out[f"{key}_step_all_views_median_ms"] = statistics.median(drag)
                out[f"{key}_step_all_views_p95_ms"] = pct(drag, 95)
                if preview:
                    t = time.perf_counter()
                    scene.set_interacting(False)
                    for vp in scene.viewports.values():
                        vp.update_image()
                    out[f"{key}_release_full_quality_ms"] = (time.perf_counter() - t) * 1000.0
        for scene in scenes.values():
            scene.close()
    if has_cache:
        out["slab_note"] = (
            "a change of mode or orientation refills the cache (first_frame: all n thin planes); a rotation "
            "drag previews the turning slabs coarse (1/4 of the samples, pixels 2x larger: rotate_drag_mip_cache) "
            "and makes them at full quality on release (release_full_quality); rotate_drag_mip_vtk: full VTK slabs"
        )
    return out


def bench_vr(
    volume: Volume, size: tuple[int, int], mapper: str, frames: int, prefix: str, max_voxels: int | None = None
) -> dict[str, object]:
    from hilum.render.volume3d import VolumeScene

    out: dict[str, object] = {}
    t = time.perf_counter()
    scene = VolumeScene(volume, size=size, mapper=mapper, preset="ct-bone", max_voxels=max_voxels)
    scene.render()
    out[f"{prefix}_first_frame_ms"] = (time.perf_counter() - t) * 1000.0
    out[f"{prefix}_rendered_grid"] = "x".join(map(str, scene.volume.size)) + f" ({scene.mapper_kind})"

    def still(_i: int) -> None:
        scene.rotate(azimuth=5.0)
        scene.render()

    out.update(interleaved({f"{prefix}_still": still}, frames))
    scene.set_interacting(True)
    still(0)
    res = interleaved({f"{prefix}_interactive": still}, max(frames, 10))
    out.update(res)
    out[f"{prefix}_interactive_fps"] = 1000.0 / res[f"{prefix}_interactive_ms"]
    out[f"{prefix}_interactive_image_sample_distance"] = float(scene.mapper.GetImageSampleDistance())
    scene.set_interacting(False)
    scene.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--slices", type=int, default=600)
    ap.add_argument("--fov", type=float, default=360.0)
    ap.add_argument("--thickness", type=float, default=0.5)
    ap.add_argument("--repeat", type=int, default=20, help="repetitions for reslice medians")
    ap.add_argument("--frames", type=int, default=5, help="frames for rendering medians")
    ap.add_argument("--data", type=Path, default=None, help="folder for the generated series (kept, reused)")
    ap.add_argument("--mappers", default="cpu,gpu", help="volume mappers to time on the 256^3 volume (cpu, gpu)")
    ap.add_argument("--full-res", action="store_true", help="also time an 800x800 frame of the full-resolution volume")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--steps", type=int, default=30, help="scroll steps per slab mode")
    ap.add_argument(
        "--slab-only",
        action="store_true",
        help="only the volume build, the reslices (2, 3) and the slab scrolling (3b)",
    )
    ap.add_argument("--before", type=Path, default=None, help="an app folder whose hilum runs 3b first (before_)")
    args = ap.parse_args(argv)

    import SimpleITK as sitk

    from hilum.render.volume3d import opengl_renderer

    results: dict[str, object] = {
        "load_average_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "opengl": opengl_renderer(),
        "series": f"{args.rows}x{args.rows}x{args.slices} CT, {args.fov / args.rows:.3g} mm pixels, {args.thickness} mm slices",
        "hilum_from": str(Path(sys.modules["hilum"].__file__ or "").parent.parent),
    }
    tmp = None
    folder = args.data
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="hilum-bench-mpr-")
        folder = Path(tmp.name)
    t = time.perf_counter()
    paths = write_series(folder, args.rows, args.slices, args.fov, args.thickness)
    results["generate_and_write_s"] = time.perf_counter() - t

    if args.before is not None:
        import subprocess

        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, __file__, "--slab-only", "--data", str(folder), "--json", f"{d}/b.json"]
            cmd += ["--rows", str(args.rows), "--slices", str(args.slices), "--fov", str(args.fov)]
            cmd += ["--thickness", str(args.thickness), "--steps", str(args.steps)]
            env = dict(os.environ, PYTHONPATH=str(args.before))
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            before = json.loads(Path(f"{d}/b.json").read_text())
        keep = ("slab_", "reslice_", "hilum_from", "load_average")
        results.update({f"before_{k}": v for k, v in before.items() if k.startswith(keep)})

    os.sync() if hasattr(os, "sync") else None
    t = time.perf_counter()
    volume = load_volume(paths)
    results["build_volume_s"] = time.perf_counter() - t
    if args.slab_only:
        results.update(bench_reslice(volume, args.repeat))
        results["reslice_ratio_vtk_over_sitk"] = results["reslice_vtk_ms"] / results["reslice_sitk_ms"]  # type: ignore[operator]
        results.update(bench_slab_scroll(volume, args.steps))
        return _report(results, args, tmp)
    reader = sitk.ImageSeriesReader()
    t = time.perf_counter()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    ref = reader.Execute()
    results["build_sitk_series_reader_s"] = time.perf_counter() - t
    results["build_ratio_hilum_over_sitk"] = results["build_volume_s"] / results["build_sitk_series_reader_s"]  # type: ignore[operator]
    results["geometry_matches_sitk"] = bool(
        np.allclose(volume.origin, ref.GetOrigin(), atol=1e-4)
        and np.allclose(volume.spacing, ref.GetSpacing(), atol=1e-4)
        and np.allclose(volume.direction.reshape(-1), ref.GetDirection(), atol=1e-4)
    )
    del ref

    results.update(bench_reslice(volume, args.repeat))
    results.update(bench_slab_scroll(volume, args.steps))
    results["reslice_ratio_vtk_over_sitk"] = results["reslice_vtk_ms"] / results["reslice_sitk_ms"]  # type: ignore[operator]

    mappers = [m.strip() for m in args.mappers.split(",") if m.strip()]
    results.update(bench_vr(volume, (800, 800), "auto", max(3, args.frames), "vr_800_default"))
    if args.full_res:
        results.update(bench_vr(volume, (800, 800), "cpu", 2, "vr_800_fullres_cpu", max_voxels=0))
    if "gpu" in mappers:
        try:
            results.update(bench_vr(volume, (800, 800), "gpu", 2, "vr_800_gpu"))
        except Exception as exc:  # e.g. a 3D texture too large for the driver
            results["vr_800_gpu_error"] = str(exc)
    del volume
    # a 256^3 volume for the interactive target
    small = build_volume(
        list(
            iter_ct_series(
                make_study(DOE, accession="BENCH-MPR-256"), rows=256, columns=256, slices=256, fov=args.fov,
                slice_thickness=args.fov / 256,
            )
        )
    )  # fmt: skip
    for mapper in mappers:
        results.update(bench_vr(small, (512, 512), mapper, args.frames, f"vr_256_512_{mapper}"))
    return _report(results, args, tmp)


def _report(results: dict[str, object], args: argparse.Namespace, tmp: tempfile.TemporaryDirectory[str] | None) -> int:
    results["load_average_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
