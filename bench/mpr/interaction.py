"""MPR interaction benchmark (issue 14 item 5): frame time of reslice + window/level at 512 x 512,
this checkout against another (the code before a change) in the same run.

A generated CT (default 512 x 512 x 200, 0.7 mm pixels, 1 mm slices) is written once as a numpy
file; each code base then runs in its own Python process (``PYTHONPATH`` = its ``app`` folder) and
times, on one offscreen 512 x 512 ``MPRViewport``:

* ``scroll``: the cursor moves one slice along the axial normal, then reslice + window + render;
* ``window``: the window centre changes by 1 HU (a W/L drag frame), then window + render;
* ``oblique``: the cursor moves along the normal of a double-oblique plane, then reslice + window + render;
* ``pipeline``: as ``scroll`` and ``window`` together but only up to the image the actor shows
  (reslice, then window/level: VTK's ``vtkImageMapToWindowLevelColors`` before issue 14, the
  :class:`DisplayTransform` table after), no OpenGL draw: what the display change costs;
* ``window_map``: the window changes on a plane already resliced: only the window/level step
  (the one part issue 14 replaced).

Processes alternate (A, B, B, A, A, B ...) for ``--rounds`` rounds so that a machine shared with
other work loads both alike; medians over all frames of all rounds are printed with CPU time and the
ratio this/baseline.  Numbers are printed, never asserted (DESIGN.md, Tests).

Run: ``.venv/bin/python bench/mpr/interaction.py --baseline /path/to/old/checkout/app``
(without ``--baseline`` only this checkout is timed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_volume_file(path: Path, rows: int, slices: int, fov: float, thickness: float) -> None:
    """A generated CT series (the project's phantom), decoded to HU, saved as array + affine."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "app"))
    from hilum.dicom.generator import DOE, iter_ct_series, make_study
    from hilum.dicom.volume import build_volume

    study = make_study(DOE, accession="BENCH-MPR-INTERACTION")
    volume = build_volume(
        list(iter_ct_series(study, rows=rows, columns=rows, slices=slices, fov=fov, slice_thickness=thickness))
    )
    np.savez(path, array=volume.array, affine=volume.affine)


def worker(volume_file: str, frames: int, size: int) -> dict[str, list[float]]:
    """Time the frames in this process (whatever ``hilum`` PYTHONPATH gives); wall and CPU ms."""
    import numpy as np

    from hilum.dicom.volume import Volume
    from hilum.render.mpr import Crosshair, MPRViewport, VolumeImage

    data = np.load(volume_file)
    volume = Volume(data["array"], data["affine"], modality="CT")
    crosshair = Crosshair(centre=volume.center)
    vp = MPRViewport(VolumeImage(volume), crosshair, "axial", size=(size, size), window=(40.0, 400.0))
    vp.render()
    step = float(np.min(volume.spacing))
    out: dict[str, list[float]] = {}

    def timed(name: str, action, render: bool = True) -> None:  # type: ignore[no-untyped-def]
        wall, cpu = [], []
        for i in range(frames):
            t, c = time.perf_counter(), time.process_time()
            action(i)
            if render:
                vp.render()
            wall.append((time.perf_counter() - t) * 1000.0)
            cpu.append((time.process_time() - c) * 1000.0)
        out[f"{name}_ms"] = wall
        out[f"{name}_cpu_ms"] = cpu

    def scroll(i: int) -> None:
        crosshair.move_along("axial", step if (i // 20) % 2 == 0 else -step)

    def window(i: int) -> None:
        vp.set_window(40.0 + (i % 50), 400.0 + (i % 7))

    def pipeline(i: int) -> None:
        scroll(i)
        window(i)
        if hasattr(vp, "update_image"):  # reslice, then the display in numpy (this change)
            vp.update_image()
        else:  # reslice, then VTK's window/level filter (before it)
            vp.reslice.Update()
            vp.colours.Update()

    def window_map(i: int) -> None:
        window(i)
        if hasattr(vp, "update_image"):
            vp.update_image()
        else:
            vp.colours.Update()

    timed("scroll", scroll)
    timed("window", window)
    timed("pipeline", pipeline, render=False)
    timed("window_map", window_map, render=False)
    crosshair.rotate("axial", 30.0)
    crosshair.rotate("coronal", 20.0)
    vp.render()
    timed("oblique", scroll)
    vp.close()
    return out


def run_worker(app: Path, volume_file: Path, frames: int, size: int) -> dict[str, list[float]]:
    env = dict(os.environ, PYTHONPATH=str(app))
    cmd = [sys.executable, __file__, "--worker", str(volume_file), "--frames", str(frames), "--size", str(size)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"worker for {app} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", type=Path, default=None, help="the 'app' folder of the code to compare with")
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--fov", type=float, default=360.0)
    ap.add_argument("--thickness", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=512, help="render window edge (pixels)")
    ap.add_argument("--frames", type=int, default=60, help="frames per measure per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.frames, args.size)))
        return 0

    codes = {"this": ROOT / "app"}
    if args.baseline is not None:
        codes["baseline"] = args.baseline.resolve()
    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_before": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "volume": f"{args.rows}x{args.rows}x{args.slices} CT, {args.fov / args.rows:.3g} mm pixels, {args.thickness} mm slices",
        "window": f"{args.size}x{args.size}",
        "frames": f"{args.frames} per measure x {args.rounds} rounds, processes alternating",
    }
    with tempfile.TemporaryDirectory(prefix="hilum-bench-mpr-int-") as tmp:
        volume_file = Path(tmp) / "volume.npz"
        t = time.perf_counter()
        make_volume_file(volume_file, args.rows, args.slices, args.fov, args.thickness)
        results["generate_s"] = time.perf_counter() - t
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in codes}
        for r in range(args.rounds):
            order = list(codes.items())
            for name, app in order if r % 2 == 0 else order[::-1]:  # A, B then B, A: no side is always second
                for key, values in run_worker(app, volume_file, args.frames, args.size).items():
                    samples[name].setdefault(key, []).extend(values)
    for name, by_key in samples.items():
        for key, values in by_key.items():
            results[f"{name}_{key}_median"] = statistics.median(values)
    if "baseline" in samples:
        for key in samples["this"]:
            if not key.endswith("_cpu_ms"):
                results[f"ratio_this_over_baseline_{key}"] = statistics.median(
                    samples["this"][key]
                ) / statistics.median(samples["baseline"][key])
    results["load_average_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:<{width}}  {v:.3f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
