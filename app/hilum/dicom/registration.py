"""Rigid registration of two volumes in different Frames of Reference, and its cache.

Two series of one Frame of Reference UID share a patient coordinate system
(PS3.3 C.7.4.1): the viewer links them by patient position as they are. A
prior acquired on another day, on another scanner or with the patient lying
differently has its own Frame of Reference, and its patient coordinates say
nothing about the current ones; only the anatomy relates them. Hilum then
finds the rigid motion (rotation + translation) that brings the prior's
anatomy onto the current one with SimpleITK (ITK's v4 registration
framework): an :class:`~SimpleITK.Euler3DTransform`, mean squares of the
Hounsfield units between two CTs (calibrated values: the sharpest optimum)
or Mattes mutual information otherwise (across modalities, MR's arbitrary
scale), a regular-step gradient descent, on a three-level pyramid of copies
reduced to about 5 mm voxels (block means, :meth:`Volume.downsampled`),
started from the two volumes' centres of mass (image moments).  On the
generated comparison patient it recovers the known motion to about 0.1 mm
and 0.1 degree; two 512x512x300 CTs take about a second on two threads
(``bench/priors/registration.py``).

The result is an :class:`Alignment`: a 4x4 matrix from the MOVING series'
patient coordinates to the FIXED series' patient coordinates (the viewer
maps the leader's slice centre through it to scroll a linked prior), where
it came from, and the hand adjustments composed into it
(:meth:`Alignment.shifted`).  :class:`AlignmentStore` keeps them on disk
(``data_dir/cache/alignments``) so a study opened again does not register
again, and :class:`RegistrationJobs` runs registrations one at a time on a
background worker, cancellable, for the GUI (which must never wait).

Pure domain: numpy and SimpleITK, no Qt, no database.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hilum.dicom.geometry import PlaneGeometry
from hilum.dicom.volume import Volume
from hilum.errors import HilumError

__all__ = [
    "SOURCES",
    "Alignment",
    "AlignmentStore",
    "matrices_error",
    "RegistrationCancelled",
    "RegistrationError",
    "RegistrationJob",
    "RegistrationJobs",
    "register_rigid",
    "rotation_angle_deg",
    "to_sitk",
]

logger = logging.getLogger(__name__)

SOURCES = ("registration", "manual", "registration+manual")
"""Where an alignment came from: found by :func:`register_rigid`, set by hand, or both."""

REGISTRATION_VOXEL_MM = 5.0
"""The volumes are reduced (block means) to voxels of about this size before registering:
mutual information with linear interpolation still fits a rigid motion to a fraction of a
millimetre, and a 512x512x300 CT becomes about 300,000 voxels."""

REGISTRATION_VOXELS = 1_000_000
"""...and to at most this many voxels (a very long scan gets coarser voxels)."""

Matrix = tuple[tuple[float, ...], ...]


class RegistrationError(HilumError):
    """Two volumes that cannot be registered (empty, no overlap, the optimiser failed)."""


class RegistrationCancelled(RegistrationError):
    """The registration was cancelled by its :class:`threading.Event`."""


def _as_matrix(m: npt.ArrayLike) -> Matrix:
    a = np.asarray(m, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"an alignment matrix is 4x4, not {a.shape}")
    return tuple(tuple(float(v) for v in row) for row in a)


def _translation(delta: npt.ArrayLike) -> npt.NDArray[np.float64]:
    t = np.eye(4)
    t[:3, 3] = np.asarray(delta, dtype=np.float64).reshape(3)
    return t


def rotation_angle_deg(rotation: npt.ArrayLike) -> float:
    """The angle (degrees) of a 3x3 rotation matrix: how far apart two orientations are
    when given ``R_a.T @ R_b``."""
    r = np.asarray(rotation, dtype=np.float64)[:3, :3]
    c = (float(np.trace(r)) - 1.0) / 2.0
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


@dataclass(frozen=True)
class Alignment:
    """How a MOVING series lies in a FIXED series' patient coordinates.

    ``matrix`` (4x4, row-major) maps a point in the moving series' patient
    coordinates (mm, LPS) to the fixed series' patient coordinates.
    ``manual_offset`` is the part of it added by hand (mm, in fixed
    coordinates, composed after the registration's matrix), so the viewer can
    say "aligned by registration, +4.0 mm by hand".  ``metric`` is the final
    value of the registration's metric (Mattes MI: more negative is better;
    0 for a hand alignment) and ``seconds`` how long it took.
    """

    fixed_for: str
    moving_for: str
    fixed_series: str
    moving_series: str
    matrix: Matrix
    source: str = "registration"
    metric: float = 0.0
    seconds: float = 0.0
    manual_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    _array: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)
    _inverse: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"an alignment's source is one of {SOURCES}, not {self.source!r}")
        m = np.asarray(_as_matrix(self.matrix), dtype=np.float64)
        if abs(np.linalg.det(m[:3, :3])) < 1e-9 or not np.allclose(m[3], (0, 0, 0, 1)):
            raise ValueError("an alignment matrix is an invertible affine (last row 0 0 0 1)")
        object.__setattr__(self, "matrix", _as_matrix(m))
        object.__setattr__(self, "manual_offset", tuple(float(v) for v in self.manual_offset))
        object.__setattr__(self, "_array", m)
        object.__setattr__(self, "_inverse", np.linalg.inv(m))

    # ------------------------------------------------------------ construction

    @classmethod
    def manual(
        cls,
        fixed_for: str,
        moving_for: str,
        fixed_series: str,
        moving_series: str,
        matrix: npt.ArrayLike | None = None,
    ) -> Alignment:
        """A hand alignment (identity unless ``matrix``): two Frames of Reference the user lines
        up himself, before or without a registration."""
        m = np.eye(4) if matrix is None else np.asarray(matrix, dtype=np.float64)
        return cls(fixed_for, moving_for, fixed_series, moving_series, _as_matrix(m), source="manual")

    # ------------------------------------------------------------ mapping

    @property
    def array(self) -> npt.NDArray[np.float64]:
        """:attr:`matrix` as a (copied) numpy array."""
        return self._array.copy()

    def to_fixed(self, p: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Fixed patient coordinates (..., 3) of moving patient coordinates (..., 3)."""
        a = np.asarray(p, dtype=np.float64)
        return a @ self._array[:3, :3].T + self._array[:3, 3]

    def to_moving(self, p: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Moving patient coordinates (..., 3) of fixed patient coordinates (..., 3)."""
        a = np.asarray(p, dtype=np.float64)
        return a @ self._inverse[:3, :3].T + self._inverse[:3, 3]

    def direction_to_fixed(self, v: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """A direction (no translation) of the moving space in the fixed space."""
        return np.asarray(v, dtype=np.float64) @ self._array[:3, :3].T

    def direction_to_moving(self, v: npt.ArrayLike) -> npt.NDArray[np.float64]:
        return np.asarray(v, dtype=np.float64) @ self._inverse[:3, :3].T

    def plane_to_fixed(self, plane: PlaneGeometry) -> PlaneGeometry:
        """An image plane of the moving series placed in fixed patient coordinates (a rigid
        alignment keeps its pixel spacing and size), e.g. for a reference line."""
        return self._plane(plane, self._array)

    def plane_to_moving(self, plane: PlaneGeometry) -> PlaneGeometry:
        return self._plane(plane, self._inverse)

    @staticmethod
    def _plane(plane: PlaneGeometry, m: npt.NDArray[np.float64]) -> PlaneGeometry:
        r = m[:3, :3]
        return PlaneGeometry(
            origin=r @ plane.origin + m[:3, 3],
            row_dir=r @ plane.row_dir,
            col_dir=r @ plane.col_dir,
            row_spacing=plane.row_spacing,
            col_spacing=plane.col_spacing,
            rows=plane.rows,
            columns=plane.columns,
        )

    # ------------------------------------------------------------ changes

    def shifted(self, delta_fixed_mm: npt.ArrayLike) -> Alignment:
        """This alignment with a hand adjustment composed in: the moving series lands
        ``delta_fixed_mm`` (a 3-vector in fixed patient coordinates) further along."""
        d = np.asarray(delta_fixed_mm, dtype=np.float64).reshape(3)
        source = "manual" if self.source == "manual" else "registration+manual"
        offset = np.asarray(self.manual_offset) + d
        return replace(
            self,
            matrix=_as_matrix(_translation(d) @ self._array),
            source=source,
            manual_offset=(float(offset[0]), float(offset[1]), float(offset[2])),
        )

    def inverse(self) -> Alignment:
        """The same alignment seen the other way round (fixed and moving swapped)."""
        r_inv = self._inverse[:3, :3]
        offset = -(r_inv @ np.asarray(self.manual_offset))
        return replace(
            self,
            fixed_for=self.moving_for,
            moving_for=self.fixed_for,
            fixed_series=self.moving_series,
            moving_series=self.fixed_series,
            matrix=_as_matrix(self._inverse),
            manual_offset=(float(offset[0]), float(offset[1]), float(offset[2])),
        )

    def describe(self) -> str:
        """A short line for the viewport: ``aligned by registration, +4.0 mm by hand``."""
        how = "by hand" if self.source == "manual" else "by registration"
        text = f"aligned {how}"
        off = float(np.linalg.norm(self.manual_offset))
        if self.source == "registration+manual" and off > 1e-6:
            text += f", {off:.1f} mm by hand"
        return text

    def describe_along(self, normal_fixed: npt.ArrayLike) -> str:
        """:meth:`describe` with the hand offset signed along a fixed-space direction (the
        slice normal of the viewport): ``aligned by registration, +4.0 mm by hand``."""
        how = "by hand" if self.source == "manual" else "by registration"
        text = f"aligned {how}"
        off = np.asarray(self.manual_offset)
        if self.source == "registration+manual" and float(np.linalg.norm(off)) > 1e-6:
            n = np.asarray(normal_fixed, dtype=np.float64)
            n = n / (np.linalg.norm(n) or 1.0)
            along = float(off @ n)
            rest = float(np.linalg.norm(off - along * n))
            text += f", {along:+.1f} mm by hand"
            if rest > 0.05:
                text += f" (+{rest:.1f} mm in plane)"
        return text

    # ------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        return {
            "fixed_for": self.fixed_for,
            "moving_for": self.moving_for,
            "fixed_series": self.fixed_series,
            "moving_series": self.moving_series,
            "matrix": [list(row) for row in self.matrix],
            "source": self.source,
            "metric": self.metric,
            "seconds": self.seconds,
            "manual_offset": list(self.manual_offset),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alignment:
        off = data.get("manual_offset", (0.0, 0.0, 0.0))
        return cls(
            fixed_for=str(data["fixed_for"]),
            moving_for=str(data["moving_for"]),
            fixed_series=str(data["fixed_series"]),
            moving_series=str(data["moving_series"]),
            matrix=_as_matrix(data["matrix"]),
            source=str(data.get("source", "registration")),
            metric=float(data.get("metric", 0.0)),
            seconds=float(data.get("seconds", 0.0)),
            manual_offset=(float(off[0]), float(off[1]), float(off[2])),
        )


# ---------------------------------------------------------------------------- SimpleITK


def to_sitk(volume: Volume, *, dtype: npt.DTypeLike | None = None) -> Any:
    """A SimpleITK image of ``volume``: same voxels, origin, spacing and direction.

    The volume's ``[k, j, i]`` array is SimpleITK's ``GetArrayFromImage`` layout and its
    affine columns are ITK's direction times spacing (:mod:`hilum.dicom.volume`), so
    ``TransformIndexToPhysicalPoint`` equals :meth:`Volume.voxel_to_world`.  A sheared
    (gantry-tilt) grid, which ITK's direction cannot hold, is resampled first
    (:meth:`Volume.deskewed`).
    """
    import SimpleITK as sitk

    vol = volume if volume.is_orthogonal else volume.deskewed()
    arr = vol.array if dtype is None else vol.array.astype(dtype, copy=False)
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetOrigin(tuple(float(v) for v in vol.origin))
    img.SetSpacing(tuple(float(v) for v in vol.spacing))
    img.SetDirection(tuple(float(v) for v in vol.direction.ravel()))
    return img


def _factors(volume: Volume, voxel_mm: float, max_voxels: int) -> tuple[int, int, int]:
    """Block sizes that make voxels about ``voxel_mm`` along each axis, or coarser when the
    volume would still hold more than ``max_voxels``."""
    f = np.maximum(1, np.round(voxel_mm / volume.spacing)).astype(int)
    g = np.asarray(volume.factors_for(max_voxels))
    if float(np.prod(np.asarray(volume.size) // f)) > max_voxels:
        f = np.maximum(f, g)
    return (int(f[0]), int(f[1]), int(f[2]))


CT_RANGE = (-1000.0, 1500.0)
"""HU range two CTs are compared in (the same for both, so mean squares compares like with like)."""


def _prepared(volume: Volume, voxel_mm: float, max_voxels: int, value_range: tuple[float, float] | None = None) -> Any:
    """The registration's copy of a volume as a SimpleITK image: reduced to voxels of about
    ``voxel_mm`` by block means, float32, values clipped to ``value_range`` (default: their
    own 0.5-99.5 percentiles) and shifted to start at 0 (so image moments are a centre of
    mass)."""
    small = volume.downsampled(_factors(volume, voxel_mm, max_voxels))
    arr = small.array.astype(np.float32)
    if value_range is None:
        sample = arr.ravel()[:: max(1, arr.size // 200_000)]
        lo, hi = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    else:
        lo, hi = value_range
    if not hi > lo or float(arr.max()) <= lo or float(arr.min()) >= hi:
        raise RegistrationError(f"volume {volume.series_instance_uid or '?'} has no contrast to register")
    np.clip(arr, lo, hi, out=arr)
    arr -= lo
    return to_sitk(Volume(arr, small.affine))


def _euler_matrix(transform: Any) -> npt.NDArray[np.float64]:
    """4x4 matrix of a SimpleITK Euler3D transform (maps fixed points to moving points)."""
    r = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(transform.GetCenter(), dtype=np.float64)
    t = np.asarray(transform.GetTranslation(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = t + c - r @ c
    return m


def register_rigid(
    fixed: Volume,
    moving: Volume,
    *,
    threads: int = 2,
    cancel: threading.Event | None = None,
    voxel_mm: float = REGISTRATION_VOXEL_MM,
    max_voxels: int = REGISTRATION_VOXELS,
    progress: Callable[[int, float], None] | None = None,
    metric: str = "auto",
    shrink: Sequence[int] = (4, 2, 1),
    sigmas: Sequence[float] | None = None,
) -> Alignment:
    """The rigid motion that brings ``moving``'s anatomy onto ``fixed``'s.

    Euler3D transform (3 rotations, 3 translations); ``metric`` ``"meansquares"``,
    ``"mattes"`` (mutual information, 32 bins) or ``"auto"`` (mean squares when both
    volumes are CT, else Mattes), either on 25 % of the voxels sampled with a fixed seed
    (the same volumes give the same result); regular-step gradient descent scaled by
    physical shift; ``shrink`` factors 4/2/1 with Gaussian smoothing ``sigmas`` (mm; default
    4/2/0 for mean squares, 8/4/1 for Mattes, whose optimum is narrower and noisier),
    on copies reduced to voxels of about ``voxel_mm`` (at most ``max_voxels``);
    initialised by the two volumes' centres of mass.  ``threads`` is the number of ITK
    threads.  ``cancel`` is checked at every optimiser iteration (and between the steps
    before it): once set, :class:`RegistrationCancelled` is raised.
    ``progress(iteration, metric)`` is called from the calling thread at each
    iteration.  Raises :class:`RegistrationError` for volumes it cannot register.
    """
    import SimpleITK as sitk

    t0 = time.perf_counter()

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise RegistrationCancelled("registration cancelled")

    if metric == "auto":
        metric = "meansquares" if fixed.modality == moving.modality == "CT" else "mattes"
    if metric not in ("meansquares", "mattes"):
        raise ValueError(f"metric is 'auto', 'mattes' or 'meansquares', not {metric!r}")
    value_range = CT_RANGE if metric == "meansquares" and fixed.modality == moving.modality == "CT" else None
    check()
    fixed_img = _prepared(fixed, voxel_mm, max_voxels, value_range)
    check()
    moving_img = _prepared(moving, voxel_mm, max_voxels, value_range)
    check()

    try:
        initial = sitk.CenteredTransformInitializer(
            fixed_img, moving_img, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
    except RuntimeError:  # an image of one value has no moments
        initial = sitk.CenteredTransformInitializer(
            fixed_img, moving_img, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
    transform = sitk.Euler3DTransform(initial)

    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(max(1, int(threads)))
    if metric == "meansquares":
        reg.SetMetricAsMeanSquares()
    else:
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.25, 20261206)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=4.0,
        minStep=0.01,
        numberOfIterations=150,
        relaxationFactor=0.6,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    if sigmas is None:
        sigmas = (4.0, 2.0, 0.0) if metric == "meansquares" else (8.0, 4.0, 1.0)
    reg.SetSmoothingSigmasPerLevel(list(sigmas))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(transform, inPlace=True)

    iterations = [0]

    def on_iteration() -> None:
        iterations[0] += 1
        if cancel is not None and cancel.is_set():
            reg.StopRegistration()
        elif progress is not None:
            progress(iterations[0], reg.GetMetricValue())

    reg.AddCommand(sitk.sitkIterationEvent, on_iteration)
    try:
        reg.Execute(fixed_img, moving_img)
    except RuntimeError as exc:
        raise RegistrationError(f"registration failed: {exc}") from exc
    check()
    fixed_to_moving = _euler_matrix(transform)
    value = float(reg.GetMetricValue())
    seconds = time.perf_counter() - t0
    logger.info(
        "registered %s onto %s in %.2f s, %d iterations, metric %.4f (%s)",
        moving.series_instance_uid or "?",
        fixed.series_instance_uid or "?",
        seconds,
        iterations[0],
        value,
        reg.GetOptimizerStopConditionDescription(),
    )
    return Alignment(
        fixed_for=fixed.frame_of_reference_uid,
        moving_for=moving.frame_of_reference_uid,
        fixed_series=fixed.series_instance_uid,
        moving_series=moving.series_instance_uid,
        matrix=_as_matrix(np.linalg.inv(fixed_to_moving)),
        source="registration",
        metric=value,
        seconds=seconds,
    )


# ---------------------------------------------------------------------------- store


class AlignmentStore:
    """Alignments on disk, one JSON file per (fixed series, moving series) pair.

    Files live in ``data_dir/cache/alignments/`` (named by a hash of the two Series
    Instance UIDs, so no UID is a file name) and are written atomically (a temporary
    file in the same folder, then :func:`os.replace`).  Without ``data_dir`` the
    store keeps them in memory only.  :meth:`get` also answers for the pair the other
    way round (the stored alignment inverted).  Thread-safe.
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(data_dir) / "cache" / "alignments" if data_dir else None
        self._memory: dict[tuple[str, str], Alignment] = {}
        self._lock = threading.Lock()

    def _path(self, fixed_series: str, moving_series: str) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.sha256(f"{fixed_series}\n{moving_series}".encode()).hexdigest()[:40]
        return self.folder / f"{digest}.json"

    def _load(self, fixed_series: str, moving_series: str) -> Alignment | None:
        key = (fixed_series, moving_series)
        if key in self._memory:
            return self._memory[key]
        path = self._path(fixed_series, moving_series)
        if path is None or not path.is_file():
            return None
        try:
            a = Alignment.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            logger.warning("ignoring unreadable alignment %s: %s", path, exc)
            return None
        if (a.fixed_series, a.moving_series) != key:
            logger.warning("ignoring alignment %s: it is for another pair of series", path)
            return None
        self._memory[key] = a
        return a

    def get(self, fixed_series: str, moving_series: str) -> Alignment | None:
        """The alignment of ``moving_series`` onto ``fixed_series``, or None."""
        with self._lock:
            a = self._load(fixed_series, moving_series)
            if a is not None:
                return a
            b = self._load(moving_series, fixed_series)
            return b.inverse() if b is not None else None

    def put(self, a: Alignment) -> None:
        """Keep ``a`` (replacing what was stored for its pair, and for the reverse pair)."""
        with self._lock:
            self._memory[(a.fixed_series, a.moving_series)] = a
            self._memory.pop((a.moving_series, a.fixed_series), None)
            path = self._path(a.fixed_series, a.moving_series)
            if path is None:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".alignment-", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(a.to_json(), fh, indent=1)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            reverse = self._path(a.moving_series, a.fixed_series)
            if reverse is not None:
                reverse.unlink(missing_ok=True)

    def remove(self, fixed_series: str, moving_series: str) -> None:
        """Forget the alignment of a pair (both ways)."""
        with self._lock:
            for key in ((fixed_series, moving_series), (moving_series, fixed_series)):
                self._memory.pop(key, None)
                path = self._path(*key)
                if path is not None:
                    path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- background jobs

VolumeSource = Volume | Callable[[], Volume]


@dataclass
class RegistrationJob:
    """One queued or running registration: its future, and the event that cancels it."""

    fixed_series: str
    moving_series: str
    future: Future[Alignment]
    cancel_event: threading.Event

    def cancel(self) -> None:
        """Stop it: a queued job never starts, a running one stops at its next iteration."""
        self.cancel_event.set()
        self.future.cancel()

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> Alignment:
        return self.future.result(timeout)


class RegistrationJobs:
    """Registrations on one background worker (``concurrent.futures``), never the caller's thread.

    :meth:`submit` returns at once with a :class:`RegistrationJob`.  The worker loads
    the volumes (a volume or a callable that returns one), answers from the
    :class:`AlignmentStore` when it holds the pair, else runs :func:`register_rigid`
    and stores the result.  ``on_done(alignment)`` or ``on_error(exception)`` is
    called ON THE WORKER THREAD (a GUI hands it to its own thread, e.g. by a queued
    signal); a cancelled job calls neither.  A second submit of a pair already
    queued or running returns the same job.
    """

    def __init__(self, store: AlignmentStore | None = None, *, threads: int = 2) -> None:
        self.store = store
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hilum-registration")
        self._jobs: dict[tuple[str, str], RegistrationJob] = {}
        self._lock = threading.Lock()
        self._closed = False

    def submit(
        self,
        fixed: VolumeSource,
        moving: VolumeSource,
        *,
        fixed_series: str = "",
        moving_series: str = "",
        on_done: Callable[[Alignment], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> RegistrationJob:
        """Queue the registration of ``moving`` onto ``fixed`` (see the class docstring).

        ``fixed_series``/``moving_series`` name the pair before the volumes are loaded
        (default: the volumes' own Series Instance UIDs)."""
        fs = fixed_series or (fixed.series_instance_uid if isinstance(fixed, Volume) else "")
        ms = moving_series or (moving.series_instance_uid if isinstance(moving, Volume) else "")
        with self._lock:
            if self._closed:
                raise RuntimeError("RegistrationJobs is shut down")
            key = (fs, ms)
            old = self._jobs.get(key) if fs and ms else None
            if old is not None and not old.done():
                return old
            event = threading.Event()
            future: Future[Alignment] = self._pool.submit(self._run, fixed, moving, fs, ms, event, on_done, on_error)
            job = RegistrationJob(fs, ms, future, event)
            if fs and ms:
                self._jobs[key] = job
            return job

    def _run(
        self,
        fixed: VolumeSource,
        moving: VolumeSource,
        fs: str,
        ms: str,
        event: threading.Event,
        on_done: Callable[[Alignment], None] | None,
        on_error: Callable[[BaseException], None] | None,
    ) -> Alignment:
        try:
            if event.is_set():
                raise RegistrationCancelled("registration cancelled")
            cached = self.store.get(fs, ms) if self.store is not None and fs and ms else None
            if cached is None:
                fv = fixed() if callable(fixed) else fixed
                mv = moving() if callable(moving) else moving
                if event.is_set():
                    raise RegistrationCancelled("registration cancelled")
                cached = self.store.get(fv.series_instance_uid, mv.series_instance_uid) if self.store else None
                if cached is None:
                    cached = register_rigid(fv, mv, threads=self.threads, cancel=event)
                    if self.store is not None:
                        self.store.put(cached)
        except RegistrationCancelled:
            raise
        except BaseException as exc:
            logger.warning("registration of %s onto %s failed: %s", ms or "?", fs or "?", exc)
            if on_error is not None:
                on_error(exc)
            raise
        if on_done is not None and not event.is_set():
            on_done(cached)
        return cached

    def pending(self) -> list[RegistrationJob]:
        """Jobs queued or running."""
        with self._lock:
            return [j for j in self._jobs.values() if not j.done()]

    def cancel_all(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel()

    def shutdown(self, *, wait: bool = True) -> None:
        """Cancel what is queued or running and stop the worker."""
        with self._lock:
            self._closed = True
        self.cancel_all()
        self._pool.shutdown(wait=wait, cancel_futures=True)


def matrices_error(estimated: npt.ArrayLike, true: npt.ArrayLike, at: Sequence[float]) -> tuple[float, float]:
    """How far an estimated 4x4 alignment is from the true one: (mm at point ``at``, degrees)."""
    e = np.asarray(estimated, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    p = np.append(np.asarray(at, dtype=np.float64), 1.0)
    mm = float(np.linalg.norm((e @ p - t @ p)[:3]))
    deg = rotation_angle_deg(e[:3, :3].T @ t[:3, :3])
    return mm, deg
