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


@numba.njit(parallel=True, cache=True, nogil=True)  # type: ignore[untyped-decorator]
def planes(vol, m, background, rounding, out):  # type: ignore[no-untyped-def]
    nk, nj, ni = vol.shape
    nz, ny, nx = out.shape
    hx = ni - 1 + 0.5
    hy = nj - 1 + 0.5
    hz = nk - 1 + 0.5
    for row in numba.prange(nz * ny):
        z = row // ny
        y = row - z * ny
        p0x = m[0, 3] + z * m[0, 2]
        p0y = m[1, 3] + z * m[1, 2]
        p0z = m[2, 3] + z * m[2, 2]
        p1x = p0x + y * m[0, 1]
        p1y = p0y + y * m[1, 1]
        p1z = p0z + y * m[2, 1]
        for x in range(nx):
            px = p1x + x * m[0, 0]
            py = p1y + x * m[1, 0]
            pz = p1z + x * m[2, 0]
            if px < -0.5 or px > hx or py < -0.5 or py > hy or pz < -0.5 or pz > hz:
                out[z, y, x] = background
                continue
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
            ix1 = min(max(ix + (fx != 0), 0), ni - 1)
            iy1 = min(max(iy + (fy != 0), 0), nj - 1)
            iz1 = min(max(iz + (fz != 0), 0), nk - 1)
            ix = min(max(ix, 0), ni - 1)
            iy = min(max(iy, 0), nj - 1)
            iz = min(max(iz, 0), nk - 1)
            rx = 1 - fx
            ry = 1 - fy
            rz = 1 - fz
            ryrz = ry * rz
            fyrz = fy * rz
            ryfz = ry * fz
            fyfz = fy * fz
            v = rx * (
                ryrz * vol[iz, iy, ix] + ryfz * vol[iz1, iy, ix] + fyrz * vol[iz, iy1, ix] + fyfz * vol[iz1, iy1, ix]
            ) + fx * (
                ryrz * vol[iz, iy, ix1]
                + ryfz * vol[iz1, iy, ix1]
                + fyrz * vol[iz, iy1, ix1]
                + fyfz * vol[iz1, iy1, ix1]
            )
            if rounding:
                out[z, y, x] = np.int64(v + (_BIAS + 0.5 + _TOL)) - _BIAS_I
            else:
                out[z, y, x] = v
