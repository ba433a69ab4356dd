"""Synthetic axial chest-CT slices with a known lung mask: the training data of the plugin.

Each case is the project's analytic chest phantom (:class:`hilum.dicom.generator.Phantom`)
with its parameters drawn at random — body ellipse size, fat layer, lung ellipses
(size, position; small near the apex and base, absent below the diaphragm), aorta,
spine, ribs — seen through a random rigid in-plane motion (shift up to +-40 mm,
tilt up to +-12 degrees) at a random pixel size (0.5 to 1.5 mm), with additions the
phantom does not have: a trachea (air inside the mediastinum, not lung), lung
nodules and vessels (soft-tissue discs inside the lungs, not lung), bowel gas below
the diaphragm (air inside the body, not lung), a CT couch under the patient, a
dependent density gradient across the lungs, random tissue CT numbers around their
nominal values, Gaussian noise of sigma 3 to 40 HU and sometimes a partial-volume
blur.

The ground truth is the aerated lung parenchyma: pixels whose tissue is lung,
without the nodules and vessels inside it.  That is the phantom's own ``LUNG``
label, so a series made by :func:`hilum.dicom.generator.generate_ct_series` is a
held-out case whose truth is known exactly (``Phantom.labels(points) == LUNG``).

This is the whole of the data the network has seen: geometric shapes of
plausible CT numbers, never a patient.  Everything is seeded numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hilum.dicom.generator.phantom import (
    AIR,
    AORTA,
    CANCELLOUS_BONE,
    CORTICAL_BONE,
    FAT,
    LUNG,
    RIB,
    SOFT_TISSUE,
    Phantom,
)

WINDOW = (-700.0, 700.0)
"""(centre, width) in HU applied before scaling to 0..1 (the manifest's ``window``): -1050 HU -> 0,
-350 HU -> 1.  A lung window: air (0.07) and aerated lung (0.2 to 0.6) far apart, everything denser
than lung (fat, soft tissue, nodules, vessels, bone) saturates at 1."""

_EXTRA = 8  # first label of the additions (nodule, vessel, trachea, gas, couch)
NODULE, VESSEL, TRACHEA, GAS, COUCH = range(_EXTRA, _EXTRA + 5)


def window01(hu: npt.NDArray[np.floating], window: tuple[float, float] = WINDOW) -> npt.NDArray[np.float32]:
    """The plugin's normalisation: clip to the window, scale to 0..1 (manifest ``normalise = "window01"``)."""
    centre, width = window
    low = centre - width / 2.0
    return np.clip((np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(width), 0.0, 1.0)


@dataclass(frozen=True)
class Case:
    """One random patient cross-section: a phantom and the additions, in patient mm."""

    phantom: Phantom
    below_lungs: bool
    shift: tuple[float, float]
    tilt_deg: float
    hu: dict[int, float]
    lung_gradient: float
    """HU added across a lung from its anterior to its posterior edge (dependent density)."""
    discs: tuple[tuple[int, float, float, float, float], ...]
    """(label, x, y, radius, hu) of the additions, in phantom coordinates."""
    couch_y: float
    """Top of the couch (phantom y, mm); the couch is 8 mm thick and spans the body's width."""
    noise_sigma: float
    blur: bool


def random_case(rng: np.random.Generator) -> Case:
    """A random cross-section (see the module docstring for what varies and by how much)."""
    a = rng.uniform(120.0, 190.0)
    b = rng.uniform(0.55, 0.85) * a
    fat = rng.uniform(3.0, 25.0)
    ai, bi = a - fat, b - fat
    scale = 1.0 if rng.random() < 0.65 else rng.uniform(0.25, 1.0)  # apex/base: smaller lungs
    la = rng.uniform(0.22, 0.32) * a * scale
    lb = rng.uniform(0.45, 0.7) * bi * scale
    lx = rng.uniform(0.36, 0.48) * a
    ly = rng.uniform(-0.2, 0.05) * bi
    # keep the lungs inside the ribs and apart from each other
    la = min(la, ai - 14.0 - lx, lx - 14.0)
    lb = min(lb, bi - 14.0 - abs(ly))
    la, lb = max(la, 6.0), max(lb, 6.0)
    spine_r = rng.uniform(13.0, 22.0)
    spine_y = bi - spine_r - rng.uniform(8.0, 25.0)
    n_ribs = int(rng.integers(0, 11))
    ribs = tuple(float(d) for d in rng.uniform(-180.0, 180.0, n_ribs))
    phantom = Phantom(
        body_axes=(a, b),
        fat_thickness=fat,
        lung_centre=(lx, ly),
        lung_axes=(la, lb),
        aorta_centre=(rng.uniform(-5.0, 25.0), rng.uniform(0.2, 0.6) * spine_y),
        aorta_radius=rng.uniform(8.0, 15.0),
        spine_centre=(0.0, spine_y),
        spine_radius=spine_r,
        cortex_thickness=rng.uniform(2.0, 6.0),
        rib_radius=rng.uniform(3.0, 7.0),
        rib_angles_deg=ribs,
        spheres=(),
    )
    below = bool(rng.random() < 0.12)
    hu = {
        AIR: -1000.0,
        FAT: rng.uniform(-120.0, -80.0),
        SOFT_TISSUE: rng.uniform(20.0, 70.0),
        LUNG: rng.uniform(-920.0, -720.0),
        AORTA: rng.uniform(30.0, 300.0),
        CORTICAL_BONE: rng.uniform(700.0, 1500.0),
        CANCELLOUS_BONE: rng.uniform(150.0, 600.0),
        RIB: rng.uniform(300.0, 1200.0),
        COUCH: rng.uniform(-400.0, 200.0),
    }
    discs: list[tuple[int, float, float, float, float]] = []
    if not below:
        for side in (-1.0, 1.0):
            cx = side * lx
            for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.4 else 0):  # nodules
                r = rng.uniform(2.0, min(12.0, 0.4 * min(la, lb)))
                t, q = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0, 0.6))
                discs.append(
                    (NODULE, cx + q * la * math.cos(t), ly + q * lb * math.sin(t), r, rng.uniform(-100.0, 300.0))
                )
            for _ in range(int(rng.integers(0, 12))):  # vessels seen end-on
                r = rng.uniform(1.0, 3.0)
                t, q = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0, 0.8))
                discs.append(
                    (VESSEL, cx + q * la * math.cos(t), ly + q * lb * math.sin(t), r, rng.uniform(-50.0, 200.0))
                )
        if rng.random() < 0.6:  # trachea or a main bronchus, between the lungs
            discs.append(
                (TRACHEA, rng.uniform(-6.0, 6.0), rng.uniform(-0.3, 0.3) * bi, rng.uniform(6.0, 11.0), -1000.0)
            )
    else:
        for _ in range(int(rng.integers(0, 8))):  # bowel gas
            t, q = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0, 0.7))
            discs.append((GAS, q * ai * math.cos(t), q * bi * math.sin(t), rng.uniform(3.0, 15.0), -1000.0))
    return Case(
        phantom=phantom,
        below_lungs=below,
        shift=(rng.uniform(-40.0, 40.0), rng.uniform(-40.0, 40.0)),
        tilt_deg=rng.uniform(-12.0, 12.0),
        hu=hu,
        lung_gradient=rng.uniform(0.0, 100.0),
        discs=tuple(discs),
        couch_y=b + rng.uniform(2.0, 30.0) if rng.random() < 0.7 else math.inf,
        noise_sigma=rng.uniform(3.0, 40.0),
        blur=bool(rng.random() < 0.5),
    )


def render(
    case: Case,
    xs: npt.NDArray[np.floating],
    ys: npt.NDArray[np.floating],
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """HU image and lung mask of ``case`` sampled at pixel centres ``xs`` (columns) x ``ys`` (rows), in mm."""
    t = math.radians(case.tilt_deg)
    c, s = math.cos(t), math.sin(t)
    x = np.asarray(xs, dtype=np.float32)[None, :] - np.float32(case.shift[0])
    y = np.asarray(ys, dtype=np.float32)[:, None] - np.float32(case.shift[1])
    px, py = c * x + s * y, -s * x + c * y  # phantom coordinates
    labels = case.phantom.background_labels(px, py, below_lungs=case.below_lungs)
    a, b = case.phantom.body_axes
    inside = (px / a) ** 2 + (py / b) ** 2 <= 1.0
    labels[(py >= case.couch_y) & (py <= case.couch_y + 8.0) & (np.abs(px) <= 0.9 * a) & ~inside] = COUCH
    table = np.zeros(_EXTRA + 5, dtype=np.float32)
    for label, value in case.hu.items():
        table[label] = value
    img = table[labels]
    lung = labels == LUNG
    if case.lung_gradient:
        lx, ly = case.phantom.lung_centre
        lb = case.phantom.lung_axes[1]
        img = img + np.where(lung, np.float32(case.lung_gradient) * np.clip((py - ly + lb) / (2 * lb), 0, 1), 0)
    for label, dx, dy, r, value in case.discs:
        d = (px - dx) ** 2 + (py - dy) ** 2 <= r * r
        if label in (NODULE, VESSEL):
            d &= lung  # only where it is inside a lung
        elif label == TRACHEA:
            d &= labels == SOFT_TISSUE
        elif label == GAS:
            d &= (labels == SOFT_TISSUE) | (labels == FAT)
        img = np.where(d, np.float32(value), img)
        lung &= ~d
    if case.blur:
        img = _box3(img)
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(case.noise_sigma)
    return np.clip(img, -1024.0, 3071.0).astype(np.float32), lung.astype(np.uint8)


def _box3(img: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    p = np.pad(img, 1, mode="edge")
    h, w = img.shape
    out = np.zeros_like(img)
    for dy in range(3):
        for dx in range(3):
            out += p[dy : dy + h, dx : dx + w]
    return out / np.float32(9.0)


def sample(
    rng: np.random.Generator, size: int, *, crop: bool = True
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8], float]:
    """One training example: a ``size`` x ``size`` HU image, its lung mask, and its pixel size (mm).

    ``crop``: a window of a larger slice around a random point of the body (a random part of
    the chest at full resolution); otherwise the whole cross-section in a random field of view.
    """
    case = random_case(rng)
    a, b = case.phantom.body_axes
    if crop:
        px = rng.uniform(0.5, 1.5)
        cx = case.shift[0] + rng.uniform(-a, a)
        cy = case.shift[1] + rng.uniform(-b, b)
    else:
        px = rng.uniform(1.05, 1.6) * 2 * max(a, b) / size  # the whole body in view
        cx, cy = case.shift[0] + rng.uniform(-20, 20), case.shift[1] + rng.uniform(-20, 20)
    offs = (np.arange(size, dtype=np.float32) - (size - 1) / 2.0) * np.float32(px)
    img, mask = render(case, cx + offs, cy + offs, rng)
    return img, mask, float(px)


def batch(
    rng: np.random.Generator, n: int, size: int, *, whole: float = 0.0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``n`` examples as network input (N, 1, size, size) in 0..1 and targets (N, 1, size, size)."""
    xs = np.empty((n, 1, size, size), dtype=np.float32)
    ys = np.empty((n, 1, size, size), dtype=np.float32)
    for i in range(n):
        img, mask, _ = sample(rng, size, crop=bool(rng.random() >= whole))
        xs[i, 0] = window01(img)
        ys[i, 0] = mask
    return xs, ys
