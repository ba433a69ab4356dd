"""MPR and 3D benchmark (issue 5): volume build, oblique reslice vs SimpleITK, slab MIP, volume rendering.

On a generated CT (default 512 x 512 x 600, 0.7 mm pixels, 0.5 mm slices) written to disk:

1. time to build the volume from the files (``hilum.dicom.volume.load_volume``), next to
   SimpleITK's ``ImageSeriesReader`` on the same files;
2. oblique reslice of one 512 x 512 plane: VTK ``vtkImageReslice`` as ``hilum.render.mpr``
   configures it (and the pure numpy path), against SimpleITK ``Resample`` of the same
   plane in the same run (median ms, and the largest difference between the two images);
3. a 20 mm MIP slab on that oblique plane;
4. one 800 x 800 volume-rendering frame of the whole volume (as the 3D view renders it: with
   software OpenGL from a block-averaged copy of at most 256^3 voxels; ``--full-res`` also
   times the full grid);
5. on a 256^3 volume at 512 x 512: frame rate while rotating at the interactive level of
   detail (whose image sample distance adapts to a 12 frames/s budget; the distance
   reached is printed), and a full-quality still frame.

Run: ``.venv/bin/python bench/mpr/run.py [--slices N] [--data DIR] [--json out.json]``.
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

    vtk_plane(0)
    sitk_plane(0)
    out.update(interleaved({"reslice_vtk": vtk_plane, "reslice_sitk": sitk_plane}, repeat))
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
    args = ap.parse_args(argv)

    import SimpleITK as sitk

    from hilum.render.volume3d import opengl_renderer

    results: dict[str, object] = {
        "load_average_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "opengl": opengl_renderer(),
        "series": f"{args.rows}x{args.rows}x{args.slices} CT, {args.fov / args.rows:.3g} mm pixels, {args.thickness} mm slices",
    }
    tmp = None
    folder = args.data
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="hilum-bench-mpr-")
        folder = Path(tmp.name)
    t = time.perf_counter()
    paths = write_series(folder, args.rows, args.slices, args.fov, args.thickness)
    results["generate_and_write_s"] = time.perf_counter() - t

    os.sync() if hasattr(os, "sync") else None
    t = time.perf_counter()
    volume = load_volume(paths)
    results["build_volume_s"] = time.perf_counter() - t
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
