"""Registration benchmark (issue 15 item 5): rigid registration of a prior in another Frame of
Reference onto the current CT, two generated 512 x 512 x 300 CTs (0.7 mm pixels, 1 mm slices).

The prior's anatomy is the current one moved by a known rigid motion (default 12, -8, 15 mm and
6 degrees about z, as :func:`hilum.dicom.generator.write_comparison_patient`), so the recovered
error is known: the distance at the current volume's centre between the estimated and the true
mapping, and the angle of ``R_est^T R_true``.  Prints the median of ``--runs`` runs of
:func:`hilum.dicom.registration.register_rigid` (SimpleITK, ``--threads`` threads), wall and CPU
time, against the target of 5 s, and, unless ``--no-peer``, the textbook SimpleITK recipe on the
full-resolution volumes (the same metric, optimiser and 4/2/1 pyramid, but ITK shrinking and
smoothing all 78 million voxels at each level) measured once in the same run.
Numbers are printed, never asserted (DESIGN.md, Tests).

Measured 2026-12-06 on the 2-core development machine shared with other work (load 4-7):
median 1.25 s wall / 0.83 s CPU of 3, error 0.02 mm / 0.04 deg; one run under ``nice -n 19``
beside the peer: 1.86 s, the peer 570 s (0.04 mm / 0.14 deg), about 300x.  The peer alone takes
minutes here: ``--no-peer`` skips it.

Run: ``.venv/bin/python bench/priors/registration.py [--rows 512 --slices 300 --runs 3]``
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "app"))

from hilum.dicom.generator import COMPARISON_PHANTOM, ct_slices, rigid_matrix, stack_geometry  # noqa: E402
from hilum.dicom.registration import matrices_error, register_rigid, to_sitk  # noqa: E402
from hilum.dicom.volume import Volume  # noqa: E402


def generated_volume(rows: int, slices: int, thickness: float, transform: np.ndarray | None, seed: int) -> Volume:
    """A CT volume (HU, int16) of the comparison phantom, sampled through ``transform`` if given."""
    g = stack_geometry(rows=rows, columns=rows, slices=slices, fov=360.0, spacing=thickness)
    arr = np.empty((slices, rows, rows), dtype=np.int16)
    for k, img in enumerate(ct_slices(g, COMPARISON_PHANTOM, seed=seed, phantom_transform=transform)):
        arr[k] = img - 1024
    affine = np.eye(4)
    dr, dc = g.pixel_spacing
    affine[:3, 0] = g.row_direction * dc
    affine[:3, 1] = g.column_direction * dr
    affine[:3, 2] = g.normal * thickness
    affine[:3, 3] = g.position(0)
    return Volume(arr, affine, modality="CT", frame_of_reference_uid=f"for-{seed}", series_instance_uid=f"s-{seed}")


def peer_full_resolution(fixed: Volume, moving: Volume, threads: int) -> tuple[float, np.ndarray]:
    """The textbook SimpleITK recipe on the full volumes: the same transform, metric, optimiser and
    4/2/1 pyramid (smoothing 4/2/0 mm), ITK doing the shrinking and smoothing."""
    import SimpleITK as sitk

    t0 = time.perf_counter()
    f = sitk.Cast(to_sitk(fixed), sitk.sitkFloat32)
    m = sitk.Cast(to_sitk(moving), sitk.sitkFloat32)
    f = sitk.Clamp(f, sitk.sitkFloat32, -1000.0, 1500.0)
    m = sitk.Clamp(m, sitk.sitkFloat32, -1000.0, 1500.0)
    tx = sitk.Euler3DTransform(
        sitk.CenteredTransformInitializer(
            f, m, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(threads)
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, 20261206)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(4.0, 0.01, 150, relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([4.0, 2.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(f, m)
    r = np.asarray(tx.GetMatrix()).reshape(3, 3)
    c, t = np.asarray(tx.GetCenter()), np.asarray(tx.GetTranslation())
    fixed_to_moving = np.eye(4)
    fixed_to_moving[:3, :3], fixed_to_moving[:3, 3] = r, t + c - r @ c
    return time.perf_counter() - t0, np.linalg.inv(fixed_to_moving)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--thickness", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shift", type=float, nargs=3, default=(12.0, -8.0, 15.0))
    ap.add_argument("--rotation", type=float, nargs=3, default=(0.0, 0.0, 6.0))
    ap.add_argument("--no-peer", action="store_true", help="skip the full-resolution SimpleITK run")
    args = ap.parse_args()

    import SimpleITK as sitk

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; SimpleITK {sitk.Version_VersionString()}")  # fmt: skip
    true = np.linalg.inv(rigid_matrix(tuple(args.rotation), tuple(args.shift)))
    t0 = time.perf_counter()
    current = generated_volume(args.rows, args.slices, args.thickness, None, 1)
    prior = generated_volume(args.rows, args.slices, args.thickness, true, 2)
    print(f"generated 2 x {args.rows}x{args.rows}x{args.slices} CT in {time.perf_counter() - t0:.1f} s "
          f"(prior moved by {tuple(args.shift)} mm, {tuple(args.rotation)} deg)")  # fmt: skip

    walls, cpus = [], []
    for i in range(args.runs):
        c0, w0 = time.process_time(), time.perf_counter()
        a = register_rigid(current, prior, threads=args.threads)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        mm, deg = matrices_error(a.array, true, current.center)
        walls.append(wall)
        cpus.append(cpu)
        print(f"  run {i + 1}: {wall:6.2f} s wall, {cpu:6.2f} s CPU, error {mm:.2f} mm / {deg:.2f} deg, "
              f"metric {a.metric:.1f}")  # fmt: skip
    med = statistics.median(walls)
    print(f"register_rigid ({args.threads} threads): median {med:.2f} s wall "
          f"({statistics.median(cpus):.2f} s CPU) of {args.runs}; target <= 5 s: {'met' if med <= 5 else 'MISSED'}; "
          f"error {mm:.2f} mm / {deg:.2f} deg")  # fmt: skip
    if not args.no_peer:
        peer_s, peer_m = peer_full_resolution(current, prior, args.threads)
        pmm, pdeg = matrices_error(peer_m, true, current.center)
        print(f"peer: SimpleITK textbook pyramid on the full volumes: {peer_s:.2f} s, error {pmm:.2f} mm / "
              f"{pdeg:.2f} deg; register_rigid is {peer_s / med:.1f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
