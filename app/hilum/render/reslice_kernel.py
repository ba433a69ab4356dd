"""Oblique planes by trilinear interpolation, compiled (numba), equal to ``vtkImageReslice``'s.

``vtkImageReslice`` samples an oblique plane through its generic path: per pixel a bounds
check and an interpolator called through a function pointer, all in double.  About 21 ns a
pixel here, no faster than SimpleITK's ``ResampleImageFilter`` on the same plane (7.1 against
7.0 ms for 512 x 512, bench/mpr).  :func:`reslice_planes` is the same arithmetic in one tight
loop, compiled with numba and spread over the cores (bench/mpr: ``reslice_hilum``; 512 x 512
oblique plane on the 2-core development machine: fastest of 30 runs 2.5 ms against VTK's
6.1 ms; on a machine loaded 7-14 deep, medians 14.4 / 15.7 / 19.1 ms for it / SimpleITK / VTK,
CPU time 7.3 / 8.7 / 10.2 ms; one thread, 4.4 ms of CPU).  The first use imports numba and
compiles the loop, or loads it from numba's cache: 2-8 s, on a thread of its own
(:func:`available`).

It mirrors, operation for operation, what VTK 9 computes (``vtkImageResliceExecute`` with a
linear ``vtkImageInterpolator``, border mode clamp, ``Border`` on), so that its pixels are VTK's
bit for bit, rounding included:

* the output index -> input index matrix is ``ResliceAxes x OutputMatrix`` multiplied as
  ``vtkMatrix4x4::Multiply4x4`` does (the input matrix is the identity for
  :class:`hilum.render.mpr.VolumeImage`: origin 0, spacing 1);
* a pixel's position is ``((origin + z * zAxis) + y * yAxis) + x * xAxis``, in double;
* a sample is inside when each coordinate lies within the extent widened by half a voxel;
  outside, the pixel is the background level;
* ``vtkInterpolationMath::Floor``: the position plus a bias of ``1.5 * 2^36`` (and 2^-17),
  truncated; the fraction is what remains (16 bits of it); the upper neighbour is the lower one
  plus ``(fraction != 0)``, both clamped to the extent;
* the trilinear sum in VTK's order; then ``vtkInterpolationMath::Round`` (the same bias plus
  one half) for integer output, a plain cast for float output.

The kernel depends on the inside of VTK, so it is fenced (DESIGN: fast paths that step
aside): :data:`RESLICE_KERNEL` turns it off, and :func:`available` compares it once per process
with ``vtkImageReslice`` on a small volume and planes of several orientations; any difference
(a VTK that computes otherwise), or numba missing, leaves VTK's own path in use, with the
reason in the log.  ``tests/test_mpr_slab_fast.py`` holds it equal to VTK on real volumes.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RESLICE_KERNEL", "available", "index_matrix", "jit", "reslice_planes", "unavailable_reason"]

logger = logging.getLogger(__name__)

RESLICE_KERNEL = True
"""Use the compiled reslice where it is :func:`available`; False: ``vtkImageReslice`` everywhere."""

_TOL = 7.62939453125e-06  # 2**-17, VTK_INTERPOLATE_FLOOR_TOL

_lock = threading.Lock()  # starts the check once
_kernel_lock = threading.Lock()  # numba's default thread pool takes one caller at a time
_kernel: Any = None
_checked: str | None = None  # "" when available, else why not
_warm_up: threading.Thread | None = None
_helpers: Any = None


def _build() -> Any:
    from hilum.render import _reslice_jit  # numba: imported and compiled (~2 s, cached on disk) on first use

    return _reslice_jit.planes


def index_matrix(
    axes: npt.ArrayLike, spacing: tuple[float, float, float], origin: tuple[float, float, float]
) -> npt.NDArray[np.float64]:
    """Output index -> input voxel index, as ``vtkImageReslice`` builds it for an input with
    origin 0 and spacing 1: ``axes x diag(spacing) + origin`` by ``vtkMatrix4x4::Multiply4x4``'s
    sums (left to right), so that the positions are VTK's to the last bit."""
    a = np.asarray(axes, dtype=np.float64)
    b = np.zeros((4, 4))
    b[0, 0], b[1, 1], b[2, 2], b[3, 3] = spacing[0], spacing[1], spacing[2], 1.0
    b[:3, 3] = origin
    out = np.empty((4, 4))
    for i in range(4):
        for k in range(4):
            out[i, k] = (
                float(a[i, 0]) * b[0, k]
                + float(a[i, 1]) * b[1, k]
                + float(a[i, 2]) * b[2, k]
                + float(a[i, 3]) * b[3, k]
            )
    return out


def reslice_planes(
    volume: np.ndarray,
    axes: npt.ArrayLike,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    shape: tuple[int, int, int],
    *,
    background: float,
    dtype: npt.DTypeLike,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """``vtkImageReslice``'s linear output ``(planes, rows, columns)`` of ``volume`` ([k, j, i],
    voxel-index space) for reslice ``axes`` (4x4), output ``spacing``, ``origin`` and ``shape``,
    in ``dtype`` (the input's type, rounded, or float32).  Call only when :func:`available`."""
    global _kernel
    target = np.dtype(dtype)
    if out is None or out.shape != tuple(shape) or out.dtype != target:
        out = np.empty(shape, dtype=target)
    m = index_matrix(axes, spacing, origin)
    rounding = target.kind in "iu"
    bg: float | int = background
    if rounding:
        info = np.iinfo(target)
        bg = int(np.floor(min(max(background, info.min), info.max) + 0.5 + _TOL))  # vtkResliceClamp + Round
    with _kernel_lock:
        if _kernel is None:
            _kernel = _build()
        _kernel(volume, m, bg, rounding, out)
    return out


def available(*, wait: bool = False) -> bool:
    """Whether :func:`reslice_planes` may stand in for ``vtkImageReslice`` (linear): the setting
    is on, numba imports, and the kernel gave VTK's pixels on the self-check.  The first call
    starts the check (import, compile or load from numba's cache, compare: 2-8 s) on a thread
    of its own and answers False until it is done, so that nothing waits for it; ``wait``
    waits for it."""
    global _warm_up
    if not RESLICE_KERNEL:
        return False
    if _checked is None:
        with _lock:
            if _warm_up is None:
                # not a daemon: a process must not end while the thread is inside VTK or numba
                _warm_up = threading.Thread(target=_check, name="hilum-reslice-kernel", daemon=False)
                _warm_up.start()
        if wait:
            _warm_up.join()
    return _checked == ""


def _check() -> None:
    global _checked
    reason = _self_check()
    if reason:
        logger.error("compiled reslice not used, vtkImageReslice instead: %s", reason)
    _checked = reason


class _Locked:
    """The compiled helpers of :mod:`hilum.render._reslice_jit`, one caller at a time."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._module, name)

        def call(*args: Any) -> Any:
            with _kernel_lock:
                return fn(*args)

        return call


def jit() -> Any:
    """The compiled helpers (:mod:`hilum.render._reslice_jit`: ``add_planes``,
    ``trapezoid_mean``) when :func:`available`, else None."""
    global _helpers
    if not available():
        return None
    if _helpers is None:
        from hilum.render import _reslice_jit

        _helpers = _Locked(_reslice_jit)
    return _helpers


def unavailable_reason() -> str:
    """Why :func:`available` said no ("" when it said yes or was not asked)."""
    return "setting RESLICE_KERNEL off" if not RESLICE_KERNEL else (_checked or "")


def _self_check() -> str:
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        return f"numba is not installed ({exc}); pip install numba"
    try:
        from vtkmodules.util import numpy_support
        from vtkmodules.vtkCommonCore import VTK_FLOAT
        from vtkmodules.vtkCommonDataModel import vtkImageData
        from vtkmodules.vtkCommonMath import vtkMatrix4x4
        from vtkmodules.vtkImagingCore import vtkImageReslice

        rng = np.random.default_rng(24)
        vol = rng.integers(-1024, 3000, size=(9, 11, 13)).astype(np.int16)
        image = vtkImageData()
        image.SetDimensions(13, 11, 9)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(vol.reshape(-1), deep=True))
        for angle in (0.0, 17.0, 33.0, 61.0):
            c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
            axes = np.array([[c, 0.0, s, 6.1], [s * s, c, -s * c, 5.3], [-s * c, s, c * c, 4.2], [0, 0, 0, 1.0]])
            for float_out in (False, True):
                r = vtkImageReslice()
                r.SetInputData(image)
                r.SetInterpolationModeToLinear()
                r.SetBackgroundLevel(-1024.0)
                r.AutoCropOutputOff()
                r.TransformInputSamplingOff()
                mat = vtkMatrix4x4()
                mat.DeepCopy(axes.ravel().tolist())
                r.SetResliceAxes(mat)
                r.SetOutputSpacing(0.7, 0.9, 0.8)
                r.SetOutputOrigin(-8.3, -7.9, -2.0)
                r.SetOutputExtent(0, 23, 0, 19, 0, 5)
                if float_out:
                    r.SetOutputScalarType(VTK_FLOAT)
                r.Update()
                want = numpy_support.vtk_to_numpy(r.GetOutput().GetPointData().GetScalars()).reshape(6, 20, 24)
                got = reslice_planes(
                    vol, axes, (0.7, 0.9, 0.8), (-8.3, -7.9, -2.0), (6, 20, 24), background=-1024.0,
                    dtype=np.float32 if float_out else np.int16,
                )  # fmt: skip
                if not np.array_equal(got, want):
                    return f"its pixels differ from vtkImageReslice's ({int(np.sum(got != want))} of {got.size}, angle {angle})"
        # compile (or load) the slab helpers here too, off the GUI thread, and hold one to numpy
        from hilum.render import _reslice_jit

        ring = rng.normal(0.0, 100.0, size=(4, 3, 5)).astype(np.float32)
        ring[:2, 0, :2] = np.nan
        total = np.zeros((3, 5))
        count = np.zeros((3, 5), dtype=np.int32)
        with _kernel_lock:
            _reslice_jit.add_planes(ring, 1, total, count)
        valid = ~np.isnan(ring)
        if not (np.allclose(total, np.where(valid, ring, 0).sum(axis=0)) and np.array_equal(count, valid.sum(axis=0))):
            return "its slab sums differ from numpy's"
        out = np.empty((3, 5), dtype=np.float32)
        with _kernel_lock:
            _reslice_jit.trapezoid_mean(ring, np.arange(4), total, count, -1024.0, out)
    except Exception as exc:  # a numba that cannot compile here, a VTK without these calls
        return f"self-check failed: {exc!r}"
    return ""
