"""An analytic chest phantom in patient coordinates, sampled as CT (HU) or MR signal.

The phantom lives in the DICOM patient coordinate system (LPS: +x towards the
patient's left, +y posterior, +z superior; PS3.3 C.7.6.2.1.1).  Its body, fat
layer, lungs, aorta, spine and ribs are infinite cylinders along z, so an
axial cross-section is the same at every z and is computed once per series;
spheres with a known centre and diameter are added per slice analytically.
That keeps a 2,000-slice 512x512 series to a few milliseconds per slice, and
gives MPR / 3D tests objects whose true size and position are known.

Labels are small integers; a lookup table maps each label to HU (CT) or to an
arbitrary T1-like signal (MR).  Everything is vectorised numpy and seeded, so
the same arguments give the same pixels.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

# Tissue labels (indices into the HU / MR lookup tables).
AIR = 0
FAT = 1
SOFT_TISSUE = 2
LUNG = 3
AORTA = 4
CORTICAL_BONE = 5
CANCELLOUS_BONE = 6
RIB = 7
SPHERE_BASE = 16
"""Sphere ``i`` of a phantom has label ``SPHERE_BASE + i``."""

#: Nominal CT numbers of the background tissues, in HU.
TISSUE_HU: dict[int, float] = {
    AIR: -1000.0,
    FAT: -100.0,
    SOFT_TISSUE: 40.0,
    LUNG: -850.0,
    AORTA: 180.0,
    CORTICAL_BONE: 1100.0,
    CANCELLOUS_BONE: 750.0,
    RIB: 900.0,
}

#: Nominal T1-weighted-like MR signal of the background tissues (arbitrary units, 12 bit).
TISSUE_MR: dict[int, float] = {
    AIR: 0.0,
    FAT: 1500.0,
    SOFT_TISSUE: 700.0,
    LUNG: 60.0,
    AORTA: 250.0,
    CORTICAL_BONE: 80.0,
    CANCELLOUS_BONE: 1100.0,
    RIB: 120.0,
}


@dataclass(frozen=True)
class Sphere:
    """A sphere of uniform value: centre in patient mm (LPS), diameter in mm."""

    name: str
    centre: tuple[float, float, float]
    diameter: float
    hu: float
    mr: float

    @property
    def radius(self) -> float:
        return self.diameter / 2.0


DEFAULT_SPHERES: tuple[Sphere, ...] = (
    Sphere("nodule_20mm", (-70.0, 10.0, 0.0), 20.0, hu=300.0, mr=1900.0),
    Sphere("nodule_10mm", (70.0, 10.0, 12.0), 10.0, hu=300.0, mr=1900.0),
    Sphere("lesion_16mm", (0.0, -70.0, -8.0), 16.0, hu=120.0, mr=1200.0),
)
"""Spheres of the default phantom: two lung nodules (right 20 mm, left 10 mm) and a
mediastinal lesion, all within z in [-16, 17] mm so that a series centred on
z = 0 that covers +-22.5 mm (10 slices of 5 mm) holds them whole."""


@dataclass(frozen=True)
class Phantom:
    """The chest phantom.  All lengths in mm, patient coordinates (LPS).

    ``landmarks`` name (x, y) points, valid at any z away from the spheres, that
    tests can sample: ``air``, ``fat``, ``soft_tissue``, ``lung``, ``bone`` (centre
    of the vertebral body), ``cortical_bone`` and ``aorta``.
    """

    body_axes: tuple[float, float] = (160.0, 110.0)
    fat_thickness: float = 12.0
    lung_centre: tuple[float, float] = (70.0, -10.0)
    """Centre of the left lung; the right lung mirrors it in x."""
    lung_axes: tuple[float, float] = (50.0, 70.0)
    aorta_centre: tuple[float, float] = (15.0, 50.0)
    aorta_radius: float = 11.0
    spine_centre: tuple[float, float] = (0.0, 75.0)
    spine_radius: float = 18.0
    cortex_thickness: float = 5.0
    rib_radius: float = 5.0
    rib_angles_deg: tuple[float, ...] = (-150.0, -30.0, 0.0, 30.0, 60.0, 120.0, 150.0, 180.0)
    spheres: tuple[Sphere, ...] = DEFAULT_SPHERES
    lung_base_z: float | None = None
    """Where the lungs end below (z, mm): under it soft tissue takes their place (a flat
    diaphragm).  ``None``: lungs at every z, the cross-section the same along the whole body."""
    landmarks: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "air": (0.0, -150.0),
            "fat": (0.0, -104.0),
            "soft_tissue": (0.0, -40.0),
            "lung": (-70.0, -50.0),
            "bone": (0.0, 75.0),
            "cortical_bone": (0.0, 59.5),
            "aorta": (15.0, 50.0),
        }
    )

    def with_spheres(self, spheres: tuple[Sphere, ...]) -> Phantom:
        """A copy with other spheres (e.g. a prior where a nodule was smaller)."""
        return dataclasses.replace(self, spheres=tuple(spheres))

    def with_lung_base(self, z: float | None) -> Phantom:
        """A copy whose lungs end at ``z`` (mm) below."""
        return dataclasses.replace(self, lung_base_z=z)

    # ------------------------------------------------------------------ labels
    def background_labels(
        self, x: npt.NDArray[np.floating], y: npt.NDArray[np.floating], *, below_lungs: bool = False
    ) -> npt.NDArray[np.uint8]:
        """Tissue label of each (x, y) point, ignoring spheres, above :attr:`lung_base_z`
        (or, ``below_lungs``, under it, where soft tissue replaces the lungs)."""
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.float32)
        labels = np.full(np.broadcast_shapes(x.shape, y.shape), AIR, dtype=np.uint8)
        a, b = self.body_axes
        labels[(x / a) ** 2 + (y / b) ** 2 <= 1.0] = FAT
        ai, bi = a - self.fat_thickness, b - self.fat_thickness
        labels[(x / ai) ** 2 + (y / bi) ** 2 <= 1.0] = SOFT_TISSUE
        lx, ly = self.lung_centre
        la, lb = self.lung_axes
        for cx in (lx, -lx):
            labels[((x - cx) / la) ** 2 + ((y - ly) / lb) ** 2 <= 1.0] = SOFT_TISSUE if below_lungs else LUNG
        ax, ay = self.aorta_centre
        labels[(x - ax) ** 2 + (y - ay) ** 2 <= self.aorta_radius**2] = AORTA
        sx, sy = self.spine_centre
        r2 = (x - sx) ** 2 + (y - sy) ** 2
        labels[r2 <= self.spine_radius**2] = CORTICAL_BONE
        labels[r2 <= (self.spine_radius - self.cortex_thickness) ** 2] = CANCELLOUS_BONE
        ra, rb = ai - 10.0, bi - 10.0
        for deg in self.rib_angles_deg:
            t = math.radians(deg)
            cx, cy = ra * math.cos(t), rb * math.sin(t)
            labels[(x - cx) ** 2 + (y - cy) ** 2 <= self.rib_radius**2] = RIB
        return labels

    def labels(self, points: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
        """Tissue label of each point of an ``(..., 3)`` array of patient coordinates."""
        pts = np.asarray(points, dtype=np.float32)
        labels = self.background_labels(pts[..., 0], pts[..., 1])
        if self.lung_base_z is not None:
            labels[(labels == LUNG) & (pts[..., 2] < self.lung_base_z)] = SOFT_TISSUE
        for i, s in enumerate(self.spheres):
            d2 = ((pts - np.asarray(s.centre, dtype=np.float32)) ** 2).sum(axis=-1)
            labels[d2 <= s.radius**2] = SPHERE_BASE + i
        return labels

    def lookup(self, modality: str) -> npt.NDArray[np.float32]:
        """Label -> value table: HU for ``"CT"``, signal for ``"MR"``."""
        table = np.zeros(SPHERE_BASE + max(len(self.spheres), 1), dtype=np.float32)
        base = TISSUE_HU if modality == "CT" else TISSUE_MR
        table[:] = base[AIR]
        for label, value in base.items():
            table[label] = value
        for i, s in enumerate(self.spheres):
            table[SPHERE_BASE + i] = s.hu if modality == "CT" else s.mr
        return table

    def hu(self, points: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        """Noise-free CT number (HU) at each point of an ``(..., 3)`` array."""
        return self.lookup("CT")[self.labels(points)]


def plane_points(
    top_left: npt.ArrayLike,
    row_direction: npt.ArrayLike,
    column_direction: npt.ArrayLike,
    rows: int,
    columns: int,
    pixel_spacing: tuple[float, float],
) -> npt.NDArray[np.float32]:
    """Patient coordinates of every pixel centre of an image plane, shape (rows, columns, 3).

    Implements the mapping of PS3.3 C.7.6.2.1.1: ``P = S + c * dc * X + r * dr * Y``
    where ``S`` is Image Position (Patient), ``X``/``Y`` the row/column direction
    cosines and ``(dr, dc)`` Pixel Spacing (row spacing first).
    """
    s = np.asarray(top_left, dtype=np.float64)
    u = np.asarray(row_direction, dtype=np.float64)
    v = np.asarray(column_direction, dtype=np.float64)
    dr, dc = pixel_spacing
    r = np.arange(rows, dtype=np.float64)[:, None, None] * dr
    c = np.arange(columns, dtype=np.float64)[None, :, None] * dc
    return (s + c * u + r * v).astype(np.float32)


def rigid_matrix(
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> npt.NDArray[np.float64]:
    """4x4 matrix of a rigid motion: rotation about ``centre`` then a shift, in patient mm.

    The rotation is about the patient x axis by ``rotation_deg[0]``, then about y,
    then about z (right-handed, ``R = Rz @ Ry @ Rx``), so a point ``p`` moves to
    ``R @ (p - centre) + centre + shift_mm``.
    """
    ax, ay, az = (math.radians(float(a)) for a in rotation_deg)
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    r = rz @ ry @ rx
    c = np.asarray(centre, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c - r @ c + np.asarray(shift_mm, dtype=np.float64)
    return m


def transform_points(points: npt.NDArray[np.floating], matrix: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Apply a 4x4 affine ``matrix`` to an ``(..., 3)`` array of points."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    return (p @ m[:3, :3].T + m[:3, 3]).astype(np.float32)


def noise_bank(shape: tuple[int, int], sigma: float, count: int, seed: int) -> npt.NDArray[np.float32]:
    """``count`` seeded Gaussian noise fields of ``shape``, reused across slices for speed."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((count, *shape), dtype=np.float32) * np.float32(sigma)).astype(np.float32)
