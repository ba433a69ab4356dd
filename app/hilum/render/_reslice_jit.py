"""The compiled loop of :mod:`hilum.render.reslice_kernel` (numba; imported only when used).

``planes`` writes ``out[z, y, x]``: the linear sample of ``vol`` ([k, j, i]) at input index
``m @ (x, y, z, 1)``, computed as ``vtkImageReslice`` computes it (the module docstring of
:mod:`hilum.render.reslice_kernel` lists each step), ``background`` outside the extent widened
by half a voxel, rounded with VTK's bias when ``rounding``.
"""

from __future__ import annotations

import numba
import numpy as np

_BIAS = 103079215104.0  # 1.5 * 2**36: vtkInterpolationMath's fixed-point bias
_BIAS_I = 103079215104
_TOL = 7.62939453125e-06  # 2**-17, VTK_INTERPOLATE_FLOOR_TOL


@numba.njit(inline="always", nogil=True)  # type: ignore[untyped-decorator]
def _sample(flat, ni, nj, nk, px, py, pz):  # type: ignore[no-untyped-def]
    """VTK's linear sample at input index (px, py, pz), known to be inside."""
    nij = ni * nj
    bx = px + (_BIAS + _TOL)
    ix = np.int64(bx)
    fx = bx - ix
    ix -= _BIAS_I
    by = py + (_BIAS + _TOL)
    iy = np.int64(by)
    fy = by - iy
    iy -= _BIAS_I
    bz = pz + (_BIAS + _TOL)
    iz = np.int64(bz)
    fz = bz - iz
    iz -= _BIAS_I
    # VTK clamps both neighbours to the extent; the upper one is the lower one plus
    # (fraction != 0): a step of 0 at either edge.  Unsigned offsets: no wraparound checks.
    dx = np.uint64(1) if (fx != 0 and 0 <= ix < ni - 1) else np.uint64(0)
    dy = np.uint64(ni) if (fy != 0 and 0 <= iy < nj - 1) else np.uint64(0)
    dz = np.uint64(nij) if (fz != 0 and 0 <= iz < nk - 1) else np.uint64(0)
    b = np.uint64(max(iz, 0) * nij + max(iy, 0) * ni + max(ix, 0))
    rx = 1 - fx
    ry = 1 - fy
    rz = 1 - fz
    ryrz = ry * rz
    fyrz = fy * rz
    ryfz = ry * fz
    fyfz = fy * fz
    return rx * (ryrz * flat[b] + ryfz * flat[b + dz] + fyrz * flat[b + dy] + fyfz * flat[b + dy + dz]) + fx * (
        ryrz * flat[b + dx] + ryfz * flat[b + dz + dx] + fyrz * flat[b + dy + dx] + fyfz * flat[b + dy + dz + dx]
    )


@numba.njit(parallel=True, cache=True, nogil=True)  # type: ignore[untyped-decorator]
def planes(vol, m, background, rounding, out):  # type: ignore[no-untyped-def]
    nk, nj, ni = vol.shape
    nz, ny, nx = out.shape
    flat = vol.ravel()  # C-contiguous: a view
    hx = ni - 1 + 0.5
    hy = nj - 1 + 0.5
    hz = nk - 1 + 0.5
    # row by row; within a row pixel by pixel and, for a stack, the planes of one pixel one after
    # the other (the samples of a ray lie side by side in the volume: a stack plane after plane
    # reads it from memory n times, ~4x slower).  Each position is VTK's to the bit:
    # ((origin + z * zAxis) + y * yAxis) + x * xAxis.
    if nz == 1:  # one plane: the row's start hoisted out of the pixel loop
        for y in numba.prange(ny):
            p1x = m[0, 3] + 0 * m[0, 2] + y * m[0, 1]
            p1y = m[1, 3] + 0 * m[1, 2] + y * m[1, 1]
            p1z = m[2, 3] + 0 * m[2, 2] + y * m[2, 1]
            line = out[0, y]
            for x in range(nx):
                px = p1x + x * m[0, 0]
                py = p1y + x * m[1, 0]
                pz = p1z + x * m[2, 0]
                if px < -0.5 or px > hx or py < -0.5 or py > hy or pz < -0.5 or pz > hz:
                    line[x] = background
                    continue
                v = _sample(flat, ni, nj, nk, px, py, pz)
                if rounding:
                    line[x] = np.int64(v + (_BIAS + 0.5 + _TOL)) - _BIAS_I
                else:
                    line[x] = v
        return
    for y in numba.prange(ny):
        for x in range(nx):
            for z in range(nz):
                px = (m[0, 3] + z * m[0, 2] + y * m[0, 1]) + x * m[0, 0]
                py = (m[1, 3] + z * m[1, 2] + y * m[1, 1]) + x * m[1, 0]
                pz = (m[2, 3] + z * m[2, 2] + y * m[2, 1]) + x * m[2, 0]
                if px < -0.5 or px > hx or py < -0.5 or py > hy or pz < -0.5 or pz > hz:
                    out[z, y, x] = background
                    continue
                v = _sample(flat, ni, nj, nk, px, py, pz)
                if rounding:
                    out[z, y, x] = np.int64(v + (_BIAS + 0.5 + _TOL)) - _BIAS_I
                else:
                    out[z, y, x] = v


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]  # serial: a thread launch costs more here
def add_planes(planes, sign, total, count):  # type: ignore[no-untyped-def]
    """``total += sign * (the non-NaN samples of planes)``, ``count += sign * how many``, per pixel
    (``planes`` (k, rows, columns) float32; ``total`` float64 and ``count`` int32, (rows, columns)).
    Plane after plane, in memory order."""
    nz, ny, nx = planes.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                v = planes[z, y, x]
                if v == v:
                    total[y, x] += sign * v
                    count[y, x] += sign


@numba.njit(cache=True, nogil=True)  # type: ignore[untyped-decorator]
def trapezoid_mean(ring, order, total, count, background, out):  # type: ignore[no-untyped-def]
    """vtkImageReslice's trapezoid mean of each pixel's in-bounds samples: ``ring`` (n, rows,
    columns) float32 with NaN outside, ``order`` its slots in sample order, ``total`` / ``count``
    the running sum / number of the in-bounds samples; ``background`` where there are none."""
    n = order.shape[0]
    ny, nx = out.shape
    lo_slot = order[0]
    hi_slot = order[n - 1]
    for y in range(ny):
        for x in range(nx):
            c = count[y, x]
            if c == n:
                first = ring[lo_slot, y, x]
                last = ring[hi_slot, y, x]
            elif c == 0:
                out[y, x] = background
                continue
            elif c == 1:
                out[y, x] = total[y, x]
                continue
            else:  # the in-bounds samples are consecutive (a line through a box): find both ends
                first = np.float32(0.0)
                last = np.float32(0.0)
                for k in range(n):
                    v = ring[order[k], y, x]
                    if v == v:
                        first = v
                        break
                for k in range(n - 1, -1, -1):
                    v = ring[order[k], y, x]
                    if v == v:
                        last = v
                        break
            out[y, x] = (total[y, x] - 0.5 * (np.float64(first) + np.float64(last))) * (1.0 / (c - 1))
