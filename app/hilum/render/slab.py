"""Thick oblique slabs from a cache of thin planes: one new plane per scroll step.

``vtkImageReslice`` makes a slab of ``n`` samples by interpolating all ``n`` of them
for every pixel, every frame.  On an oblique plane (its generic path; axis-aligned
planes take its fast permutation path and stay with it) that is ``n`` trilinear
samples per pixel: a 20 mm slab at 0.5 mm is 40 of them, 71 ms for 512 x 512 on a
quiet 2-core machine, 150-600 ms for the three views of the MPR layout when they
all re-ran on every scroll step (bench/mpr).

:class:`PlaneCacheSlab` keeps the ``n`` thin planes of the slab in a ring and combines
them.  The thin planes come from the compiled reslice (:mod:`hilum.render.reslice_kernel`,
``vtkImageReslice``'s own pixels bit for bit) once it is available, else from a
``vtkImageReslice`` configured like the view's (same interpolation, same positions to
rounding).  The mean's sums and its trapezoid use two compiled helpers likewise
(:mod:`hilum.render._reslice_jit`), or numpy.  Scrolling the view by whole
sample steps shifts the set of planes by one: one thin plane is resliced and the
ring is reduced again (MIP / MinIP: one ``np.max`` / ``np.min`` over the ring;
mean: running sums).  A thicker or thinner slab of the same sample lattice reuses
the planes it shares.  Anything else (a rotation, a zoom of the grid, another mode
or a step that is not a whole multiple of half a sample) refills the ring: one 3D
reslice of ``n`` planes (bench/mpr: ``first_frame``).

What it computes is ``vtkImageReslice``'s slab (VTK 9, ``vtkImageResliceExecute``):

* only the samples inside the volume (its bounds check, half a voxel of border)
  are combined; a pixel with none is the background level.  The thin planes mark
  the samples outside with a sentinel background (MIP: the background itself,
  which no sample is below; MinIP: the type's largest value; mean: NaN);
* MIP / MinIP: the extreme sample, rounded to the output type once.  Rounding is
  monotonic, so the extreme of the rounded thin planes is the same number;
* mean, with trapezoid integration (the viewer's setting): the in-bounds samples
  along a ray are consecutive (a line through a box), the first and last weigh
  one half and the sum is divided by their count less one.  VTK sums doubles; the
  thin planes are float32, so the result is within float32 rounding of VTK's
  (a few 1e-4 HU on CT), not bit for bit.

The sample positions are those of VTK's slab up to floating-point rounding of the
plane origin (about 1e-13 voxel), so MIP / MinIP pixels are equal unless a sample
lies within ~1e-10 of a rounding tie.  ``tests/test_mpr_slab_fast.py`` holds the
viewer's slabs with and without the cache to each other, and to VTK's slab made
afresh, over scroll steps, thickness and mode changes.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import VTK_FLOAT
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkImagingCore import VTK_RESLICE_LINEAR, vtkImageReslice

from hilum.render import reslice_kernel

__all__ = ["PlaneCacheSlab", "SlabGeometry", "is_permutation"]

SlabGeometry = tuple[npt.NDArray[np.float64], float, float, int, int, float, float, int, str]
"""What a view's slab is made of: reslice axes (4x4, output mm -> voxel index; the plane's
``u``, ``v``, normal and origin), output origin ``s0``, ``t0`` (mm), columns, rows, pixel
size (mm), sample step (mm), number of samples and mode (``mip``, ``minip``, ``mean``)."""

_RAYS_FROM = 8
"""Runs of at least this many planes are resliced ray by ray (:attr:`PlaneCacheSlab.rays`)."""

_TOLERANCE = 1e-9
"""How close (voxel index units, mm) two geometries must be to count as the same plane or grid."""


def is_permutation(m: npt.ArrayLike) -> bool:
    """Whether a 3x3 matrix has exactly one non-zero in each column: ``vtkImageReslice``
    then takes its permutation path (axis-aligned planes), which is fast for slabs too."""
    a = np.asarray(m, dtype=np.float64)[:3, :3]
    return bool(np.all(np.count_nonzero(a, axis=0) == 1))


def _matrix(m: npt.NDArray[np.float64]) -> vtkMatrix4x4:
    out = vtkMatrix4x4()
    out.DeepCopy(np.asarray(m, dtype=np.float64).ravel().tolist())
    return out


class PlaneCacheSlab:
    """The slab of one view made from cached thin planes (see the module docstring).

    ``image`` is the view's ``vtkImageData`` (voxel-index space); ``interpolation`` a
    ``vtkImageReslice`` interpolation mode; ``background`` the level of pixels with no
    sample inside the volume; ``value_range`` the volume's ``(min, max)``; ``array`` the
    image's values as numpy ``[k, j, i]``: with it, linear thin planes come from the compiled
    reslice (:mod:`hilum.render.reslice_kernel`, VTK's pixels bit for bit) once it is available.
    """

    def __init__(
        self,
        image: object,
        *,
        interpolation: int,
        background: float,
        value_range: tuple[float, float],
        array: np.ndarray | None = None,
    ) -> None:
        self.reslice = self._make(image, interpolation)
        """Thin planes one by one (a scroll step)."""
        self.rays = self._make(image, interpolation)
        """Many planes at once, written ray by ray (the samples of one pixel side by side, as
        VTK's slab reads the volume; a plane after plane fill runs 1.3x longer)."""
        self.interpolation = interpolation
        self.array = array
        """The volume ([k, j, i], the image's memory) for the compiled reslice, where it may be used."""
        self.background = float(background)
        self.value_range = (float(value_range[0]), float(value_range[1]))
        scalars = image.GetPointData().GetScalars()  # type: ignore[attr-defined]
        self.dtype = np.dtype(numpy_support.get_numpy_array_type(scalars.GetDataType()))
        self._ref: SlabGeometry | None = None  # the grid and the plane that q = 0 is
        self._ref_inv: npt.NDArray[np.float64] | None = None
        self._buf: np.ndarray | None = None  # (n, rows, columns): the ring of thin planes
        self._held: list[int | None] = []  # the half-step index q of the plane in each slot
        self._sum: npt.NDArray[np.float64] | None = None  # mean: sum of the in-bounds samples
        self._count: npt.NDArray[np.int32] | None = None  # mean: how many samples are in bounds
        self.result: np.ndarray | None = None
        self.planes_resliced = 0
        """Thin planes resliced so far (tests and the benchmark read it)."""

    @staticmethod
    def _make(image: object, interpolation: int) -> vtkImageReslice:
        r = vtkImageReslice()
        r.SetInputData(image)
        r.SetOutputDimensionality(3)
        r.AutoCropOutputOff()
        r.TransformInputSamplingOff()
        r.SetInterpolationMode(interpolation)
        r.SetSlabNumberOfSlices(1)
        return r

    # --- what it can do
    def supports(self, mode: str) -> bool:
        """Whether the sentinel of ``mode`` cannot be a value of the volume."""
        if mode not in ("mip", "minip", "mean"):
            return False
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            if mode == "mip":
                return self.background <= self.value_range[0] or self.value_range[0] > info.min
            if mode == "minip":
                return self.value_range[1] < info.max
        return True

    def _sentinel(self, mode: str) -> float:
        """The background of the thin planes: a value no sample inside the volume can take
        (the MIP's own background where it is the volume's minimum, as in the viewer)."""
        integer = self.dtype.kind in "iu"
        if mode == "mip":
            if self.background <= self.value_range[0]:
                return self.background
            return float(np.iinfo(self.dtype).min) if integer else -math.inf
        if mode == "minip":
            return float(np.iinfo(self.dtype).max) if integer else math.inf
        return math.nan

    def _plane_dtype(self, mode: str) -> np.dtype:
        return np.dtype(np.float32) if mode == "mean" else self.dtype

    # --- the slab
    def update(self, geometry: SlabGeometry) -> np.ndarray:
        """The slab of ``geometry`` as a ``(rows, columns)`` array: the input's type for
        MIP / MinIP, float32 for the mean.  Reuses the planes it holds where it can."""
        axes, s0, t0, nx, ny, sp, step, n, mode = geometry
        qc = self._offset(geometry)
        if qc is None:
            self._reset(geometry)
            qc = 0
        want = [qc - (n - 1) + 2 * k for k in range(n)]
        self._arrange(want, n, ny, nx, mode)
        missing = [q for q in want if q not in self._held]
        for run in _runs(missing):
            self._reslice(run, n)
        return self._reduce(want, mode)

    def _offset(self, geometry: SlabGeometry) -> int | None:
        """The half-step index of ``geometry``'s plane on the reference lattice, or None when
        it is not a plane of that lattice (another orientation, grid, mode or phase)."""
        ref = self._ref
        if ref is None or self._ref_inv is None:
            return None
        axes, s0, t0, nx, ny, sp, step, _n, mode = geometry
        if (nx, ny, mode) != (ref[3], ref[4], ref[8]) or sp != ref[5] or step != ref[6]:
            return None
        if abs(s0 - ref[1]) > _TOLERANCE or abs(t0 - ref[2]) > _TOLERANCE:
            return None
        if not np.allclose(axes[:3, :3], ref[0][:3, :3], rtol=0.0, atol=_TOLERANCE):
            return None
        a, b, d = self._ref_inv @ (axes[:3, 3] - ref[0][:3, 3])  # plane mm along u, v and the normal
        q = 2.0 * d / step
        if abs(a) > _TOLERANCE or abs(b) > _TOLERANCE or abs(q - round(q)) * step > _TOLERANCE:
            return None
        return int(round(q))

    def _reset(self, geometry: SlabGeometry) -> None:
        self._ref = geometry
        self._ref_inv = np.asarray(np.linalg.inv(geometry[0][:3, :3]), dtype=np.float64)
        self._held = []
        self._buf = None
        axes, _s0, _t0, _nx, _ny, sp, step, _n, mode = geometry
        rays = axes[:, [2, 0, 1, 3]]  # output x along the normal, y along u, z along v
        for r, m, spacing in ((self.reslice, axes, (sp, sp, step)), (self.rays, rays, (step, sp, sp))):
            r.SetResliceAxes(_matrix(m))
            r.SetOutputSpacing(*spacing)
            r.SetBackgroundLevel(self._sentinel(mode))
            r.SetOutputScalarType(VTK_FLOAT if mode == "mean" else -1)

    def _arrange(self, want: list[int], n: int, ny: int, nx: int, mode: str) -> None:
        """A ring of ``n`` slots holding the planes of ``want`` it already has, each at slot
        ``(q // 2) % n`` (consecutive planes of one lattice fill every slot once)."""
        buf = self._buf
        if buf is not None and buf.shape[0] == n:
            return  # a plane not wanted sits in the slot of one that is missing: it is overwritten
        keep = {q: i for i, q in enumerate(self._held) if q is not None and q in want}
        new = np.empty((n, ny, nx), dtype=self._plane_dtype(mode))
        held: list[int | None] = [None] * n
        for q, i in keep.items():
            assert buf is not None
            new[(q // 2) % n] = buf[i]
            held[(q // 2) % n] = q
        self._buf, self._held = new, held
        if mode == "mean":
            self._sum = np.zeros((ny, nx), dtype=np.float64)
            self._count = np.zeros((ny, nx), dtype=np.int32)
            for i, h in enumerate(held):
                if h is not None:
                    self._add(new[i], 1)

    def _add(self, plane: npt.NDArray[np.float32], sign: int) -> None:
        assert self._sum is not None and self._count is not None
        valid = ~np.isnan(plane)
        if sign > 0:
            np.add(self._sum, plane, out=self._sum, where=valid)
            self._count += valid
        else:
            np.subtract(self._sum, plane, out=self._sum, where=valid)
            self._count -= valid

    def _add_block(self, planes: np.ndarray, sign: int = 1) -> None:
        """Add (or take away) the in-bounds samples of ``planes`` (k, rows, columns) to the running sums."""
        assert self._sum is not None and self._count is not None
        jit = reslice_kernel.jit()
        if jit is not None:
            jit.add_planes(planes, sign, self._sum, self._count)
        elif planes.shape[0] == 1:
            self._add(planes[0], sign)
        else:
            valid = ~np.isnan(planes)
            self._sum += sign * np.where(valid, planes, np.float32(0)).sum(axis=0, dtype=np.float64)
            self._count += sign * valid.sum(axis=0, dtype=np.int32)

    def _reslice(self, run: list[int], n: int) -> None:
        """Reslice the planes of ``run`` (consecutive on the lattice) in one call into their slots."""
        ref = self._ref
        assert ref is not None and self._buf is not None
        _axes, s0, t0, nx, ny, _sp, step, _n, mode = ref
        if self._compiled():
            self._reslice_compiled(run, n)
            return
        w0 = run[0] * step / 2.0
        if len(run) >= _RAYS_FROM:
            r = self.rays
            r.SetOutputOrigin(w0, s0, t0)
            r.SetOutputExtent(0, len(run) - 1, 0, nx - 1, 0, ny - 1)
        else:
            r = self.reslice
            r.SetOutputOrigin(s0, t0, w0)
            r.SetOutputExtent(0, nx - 1, 0, ny - 1, 0, len(run) - 1)
        r.Update()
        flat = numpy_support.vtk_to_numpy(r.GetOutput().GetPointData().GetScalars())
        out = flat.reshape(ny, nx, len(run)).transpose(2, 0, 1) if r is self.rays else flat.reshape(len(run), ny, nx)
        self.planes_resliced += len(run)
        for i, j, block in self._vacate(run, n, mode):
            np.copyto(block, out[i:j])
        if mode == "mean":
            self._add_block(out)
        del out, flat
        r.GetOutput().ReleaseData()  # the ring has them: do not hold a second copy (up to n planes)

    def _compiled(self) -> bool:
        return (
            self.array is not None
            and self.interpolation == VTK_RESLICE_LINEAR
            and self.array.dtype.kind in "iuf"
            and reslice_kernel.available()
        )

    def _reslice_compiled(self, run: list[int], n: int) -> None:
        """The planes of ``run`` by the compiled reslice, straight into their slots."""
        ref = self._ref
        assert ref is not None and self._buf is not None and self.array is not None
        axes, s0, t0, nx, ny, sp, step, _n, mode = ref
        for i, _j, block in self._vacate(run, n, mode):
            reslice_kernel.reslice_planes(
                self.array, axes, (sp, sp, step), (s0, t0, run[i] * step / 2.0), block.shape,
                background=self._sentinel(mode), dtype=block.dtype, out=block,
            )  # fmt: skip
            if mode == "mean":
                self._add_block(block)
        self.planes_resliced += len(run)

    def _vacate(self, run: list[int], n: int, mode: str) -> list[tuple[int, int, np.ndarray]]:
        """The ring's slots for the planes of ``run``, emptied (a mean takes their old planes out
        of its sums) and marked as holding them: ``(i, j, block)`` for each stretch of consecutive
        slots, ``block`` the ring's view for ``run[i:j]`` (a run wraps around the ring at most once)."""
        buf = self._buf
        assert buf is not None
        slots = [(q // 2) % n for q in run]
        if mode == "mean":
            for slot in slots:
                if self._held[slot] is not None:
                    self._add_block(buf[slot : slot + 1], -1)
        for slot, q in zip(slots, run, strict=True):
            self._held[slot] = q
        stretches = []
        i = 0
        while i < len(run):
            j = i + 1
            while j < len(run) and slots[j] == slots[j - 1] + 1:
                j += 1
            stretches.append((i, j, buf[slots[i] : slots[j - 1] + 1]))
            i = j
        return stretches

    def _reduce(self, want: list[int], mode: str) -> np.ndarray:
        buf = self._buf
        assert buf is not None
        n, ny, nx = buf.shape
        if self.result is None or self.result.shape != (ny, nx) or self.result.dtype != self._plane_dtype(mode):
            self.result = np.empty((ny, nx), dtype=self._plane_dtype(mode))
        out = self.result
        if mode == "mean":
            self._mean(want, out)
            return out
        (np.max if mode == "mip" else np.min)(buf, axis=0, out=out)
        sentinel = self._sentinel(mode)
        if sentinel != self.background:
            out[out == sentinel] = self.background
        return out

    def _mean(self, want: list[int], out: npt.NDArray[np.float32]) -> None:
        """VTK's trapezoid mean over the in-bounds samples of each pixel."""
        buf, total, count = self._buf, self._sum, self._count
        assert buf is not None and total is not None and count is not None
        n = buf.shape[0]
        jit = reslice_kernel.jit()
        if jit is not None:
            order = np.array([(q // 2) % n for q in want], dtype=np.int64)
            jit.trapezoid_mean(buf, order, total, count, self.background, out)
            return
        first, last = buf[(want[0] // 2) % n], buf[(want[-1] // 2) % n]
        with np.errstate(invalid="ignore"):
            mean = (total - 0.5 * (first.astype(np.float64) + last)) * (1.0 / (n - 1))
        partial = np.flatnonzero((count.ravel() < n) & (count.ravel() > 0))
        flat = mean.ravel()
        if partial.size:
            slots = [(q // 2) % n for q in want]
            vals = buf.reshape(n, -1)[:, partial][slots]  # (n, k) in sample order
            ok = ~np.isnan(vals)
            cols = np.arange(partial.size)
            lo = vals[ok.argmax(axis=0), cols]
            hi = vals[n - 1 - ok[::-1].argmax(axis=0), cols]
            c = count.ravel()[partial]
            s = total.ravel()[partial]
            with np.errstate(invalid="ignore", divide="ignore"):
                flat[partial] = np.where(c > 1, (s - 0.5 * (lo.astype(np.float64) + hi)) * (1.0 / (c - 1)), s)
        flat[count.ravel() == 0] = self.background
        np.copyto(out, mean, casting="same_kind")


def _runs(qs: list[int]) -> list[list[int]]:
    """``qs`` (ascending, step 2 within a run) split into runs of consecutive lattice planes."""
    runs: list[list[int]] = []
    for q in qs:
        if runs and q == runs[-1][-1] + 2:
            runs[-1].append(q)
        else:
            runs.append([q])
    return runs
