"""The MPR crosshair, headless: where the three planes cross, how a drag moves or turns them,
and where each plane's reference line lies in the others.  numpy only (no VTK, no Qt).

* :class:`Crosshair` — the model the three views share: the 3D cursor (a patient
  point every plane passes through), each plane's orientation (oblique once the
  user turns the crosshair lines), slab thickness and mode per view, rulers and
  the curved-MPR path.  It emits events to subscribers (:meth:`Crosshair.subscribe`).
* :class:`CrosshairView` — the logic of one view, in its *plane coordinates*
  ``(s, t)``: mm along the plane's row direction ``u`` (screen right) and column
  direction ``v`` (screen down), measured from the projection of a fixed anchor (the
  volume's centre) on the plane, so the image stays still while the cursor moves in
  it.  It answers where the other planes' reference lines are, which line a point
  is near, what a left drag does (move the cursor or turn the other planes), and
  applies clicks, drags and scrolls to the model.

:mod:`hilum.render.mpr` binds this to VTK (display pixels ⇄ plane coordinates,
line actors); the Qt canvas binds mouse events.  Tests drive it directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from hilum.dicom.volume import Plane, SlabMode, rotation_matrix

__all__ = [
    "BASE_ORIENTATION",
    "VIEWS",
    "Crosshair",
    "CrosshairView",
    "Measurement",
    "ReferenceLine",
    "SlabSettings",
]

VIEWS = ("axial", "coronal", "sagittal")

BASE_ORIENTATION = {
    "axial": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0])),
    "coronal": (np.array([1.0, 0, 0]), np.array([0, 0, -1.0])),
    "sagittal": (np.array([0, 1.0, 0]), np.array([0, 0, -1.0])),
}
"""Standard display orientations (row direction, column direction) in patient space (LPS)."""

SLAB_MODES: tuple[SlabMode, ...] = ("mip", "minip", "mean")


def _cross(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``a x b`` for 3-vectors (``np.cross`` costs ~30 us a call; this runs on every cursor move)."""
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


@dataclass
class SlabSettings:
    """Thick-slab rendering of one view: ``thickness`` in mm (0 = a thin plane) and mode."""

    thickness: float = 0.0
    mode: SlabMode = "mip"


@dataclass(frozen=True)
class Measurement:
    """A ruler between two patient points; its length is in mm whatever plane it was drawn on."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]

    @property
    def length(self) -> float:
        return float(np.linalg.norm(np.subtract(self.end, self.start)))


@dataclass
class Crosshair:
    """The linked state of the three MPR views (a headless model: tests drive it).

    ``centre`` is the 3D cursor in patient mm; every view's plane passes
    through it.  ``orientations[view]`` is the view's (row, column) direction
    pair; rotating the crosshair in one view (:meth:`rotate`) turns the other
    two planes about that view's normal, which gives oblique and double-oblique
    MPR while the three normals stay orthonormal.
    """

    centre: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    orientations: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = field(
        default_factory=lambda: {v: (u.copy(), w.copy()) for v, (u, w) in BASE_ORIENTATION.items()}
    )
    slabs: dict[str, SlabSettings] = field(default_factory=lambda: {v: SlabSettings() for v in VIEWS})
    measurements: list[Measurement] = field(default_factory=list)
    path: list[tuple[float, float, float]] = field(default_factory=list)
    """Points of a curved-MPR path (patient mm), drawn on one plane."""
    path_normal: npt.NDArray[np.float64] | None = None
    """The normal of the plane the path is drawn on (the curved MPR's ``up``)."""
    _listeners: list[Callable[[str], None]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.centre = np.asarray(self.centre, dtype=np.float64).reshape(3)

    # --- events
    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(kind)`` on every change (``"centre"``, ``"orientation"``, ``"slab"``,
        ``"measurements"``, ``"path"``); returns the function that unsubscribes."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _emit(self, kind: str) -> None:
        for cb in list(self._listeners):
            cb(kind)

    # --- state
    def plane(self, view: str) -> Plane:
        """The plane of ``view`` through the cursor."""
        u, v = self.orientations[view]
        return Plane(self.centre, u, v)

    def set_centre(self, point: npt.ArrayLike) -> None:
        p = np.asarray(point, dtype=np.float64).reshape(3)
        if not np.allclose(p, self.centre, atol=1e-9):
            self.centre = p
            self._emit("centre")

    def move_along(self, view: str, distance: float) -> None:
        """Move the cursor ``distance`` mm along the normal of ``view`` (scrolling through it)."""
        self.set_centre(self.centre + distance * self.plane(view).normal)

    def rotate(self, view: str, degrees: float) -> None:
        """Rotate the crosshair lines shown in ``view``: the two other planes turn by ``degrees``
        about this view's normal (right-handed; clockwise on screen)."""
        r = rotation_matrix(self.plane(view).normal, degrees)
        for other in VIEWS:
            if other != view:
                u, v = self.orientations[other]
                self.orientations[other] = (r @ u, r @ v)
        self._emit("orientation")

    def set_orientation(self, view: str, u: npt.ArrayLike, v: npt.ArrayLike) -> None:
        p = Plane(self.centre, np.asarray(u, float), np.asarray(v, float))
        self.orientations[view] = (p.u, p.v)
        self._emit("orientation")

    @property
    def oblique(self) -> bool:
        return any(
            not (np.allclose(self.orientations[v][0], BASE_ORIENTATION[v][0], atol=1e-9)
                 and np.allclose(self.orientations[v][1], BASE_ORIENTATION[v][1], atol=1e-9))
            for v in VIEWS
        )  # fmt: skip

    def reset(self, centre: npt.ArrayLike | None = None) -> None:
        """Back to the standard axial/coronal/sagittal planes (through ``centre`` if given)."""
        self.orientations = {v: (u.copy(), w.copy()) for v, (u, w) in BASE_ORIENTATION.items()}
        if centre is not None:
            self.centre = np.asarray(centre, dtype=np.float64).reshape(3)
        self._emit("orientation")

    def set_slab(self, view: str, thickness: float | None = None, mode: SlabMode | None = None) -> None:
        s = self.slabs[view]
        if thickness is not None:
            if thickness < 0:
                raise ValueError(f"slab thickness must be >= 0 mm, not {thickness}")
            s.thickness = float(thickness)
        if mode is not None:
            if mode not in SLAB_MODES:
                raise ValueError(f"slab mode must be 'mip', 'minip' or 'mean', not {mode!r}")
            s.mode = mode
        self._emit("slab")

    def add_measurement(self, start: npt.ArrayLike, end: npt.ArrayLike) -> Measurement:
        m = Measurement(tuple(map(float, start)), tuple(map(float, end)))  # type: ignore[arg-type]
        self.measurements.append(m)
        self._emit("measurements")
        return m

    def add_path_point(self, point: npt.ArrayLike, normal: npt.ArrayLike) -> None:
        """Extend the curved-MPR path (the first point fixes the drawing plane's normal)."""
        if not self.path:
            self.path_normal = np.asarray(normal, dtype=np.float64)
        self.path.append(tuple(map(float, np.asarray(point, dtype=np.float64).reshape(3))))  # type: ignore[arg-type]
        self._emit("path")

    def clear_path(self) -> None:
        self.path.clear()
        self.path_normal = None
        self._emit("path")

    def clear_measurements(self) -> None:
        self.measurements.clear()
        self._emit("measurements")


@dataclass(frozen=True)
class ReferenceLine:
    """Where the plane of ``view`` cuts the plane shown, in the shown plane's coordinates:
    the line through ``point`` (the cursor, ``(s, t)`` mm) along the unit ``direction``."""

    view: str
    point: tuple[float, float]
    direction: tuple[float, float]

    def distance(self, s: float, t: float) -> float:
        """Distance (mm) of plane point ``(s, t)`` from the line."""
        ds, dt = s - self.point[0], t - self.point[1]
        return abs(ds * self.direction[1] - dt * self.direction[0])

    def segment(self, length: float) -> tuple[tuple[float, float], tuple[float, float]]:
        """The two ends of the line ``length`` mm either side of the cursor."""
        (s, t), (a, b) = self.point, self.direction
        return (s - length * a, t - length * b), (s + length * a, t + length * b)


@dataclass
class CrosshairView:
    """The crosshair logic of one view, in plane coordinates (see the module docstring).

    ``anchor`` is the patient point whose projection on the plane is ``(0, 0)``
    (the volume's centre: the image stays put while the cursor moves).
    """

    crosshair: Crosshair
    view: str
    anchor: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    _frame: tuple[bytes, Plane] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, not {self.view!r}")
        self.anchor = np.asarray(self.anchor, dtype=np.float64).reshape(3)

    # --- geometry
    @property
    def plane(self) -> Plane:
        """The plane shown, centred on the cursor."""
        return self.crosshair.plane(self.view)

    @property
    def frame(self) -> Plane:
        """The plane shown, centred on the anchor's projection: plane coordinates are its ``(s, t)``.
        (Kept until the cursor or the orientation changes.)"""
        u, v = self.crosshair.orientations[self.view]
        key = self.crosshair.centre.tobytes() + np.asarray(u).tobytes() + np.asarray(v).tobytes()
        if self._frame is not None and self._frame[0] == key:
            return self._frame[1]
        base = Plane(self.anchor, u, v)
        normal = _cross(base.u, base.v)
        frame = Plane(self.anchor + float((self.crosshair.centre - self.anchor) @ normal) * normal, base.u, base.v)
        self._frame = (key, frame)
        return frame

    def to_patient(self, s: float, t: float) -> npt.NDArray[np.float64]:
        """The patient point at plane coordinates ``(s, t)``."""
        return self.frame.to_patient(s, t)

    def to_plane(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Plane coordinates ``(s, t, w)`` of patient points (``w``: mm off the plane)."""
        return self.frame.to_plane(points)

    @property
    def cursor(self) -> tuple[float, float]:
        """Where the planes cross: the cursor's ``(s, t)``."""
        frame = self.frame
        offset = self.crosshair.centre - frame.centre
        return float(offset @ frame.u), float(offset @ frame.v)

    def reference_lines(self) -> dict[str, ReferenceLine]:
        """The lines where the two other planes cut this one (both through the cursor); a plane
        parallel to this one (possible only transiently) has no line."""
        frame = self.frame
        normal = _cross(frame.u, frame.v)
        cursor = self.cursor
        out: dict[str, ReferenceLine] = {}
        for other in VIEWS:
            if other == self.view:
                continue
            u, v = self.crosshair.orientations[other]
            d3 = _cross(normal, _cross(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)))
            ds, dt = float(d3 @ frame.u), float(d3 @ frame.v)
            n = math.hypot(ds, dt)
            if n <= 1e-6:
                continue
            out[other] = ReferenceLine(other, cursor, (ds / n, dt / n))
        return out

    def line_near(self, s: float, t: float, tolerance: float) -> str | None:
        """The other view whose reference line passes within ``tolerance`` mm of ``(s, t)``."""
        best: tuple[float, str] | None = None
        for other, line in self.reference_lines().items():
            dist = line.distance(s, t)
            if dist <= tolerance and (best is None or dist < best[0]):
                best = (dist, other)
        return best[1] if best else None

    def near_cursor(self, s: float, t: float, tolerance: float) -> bool:
        """Whether ``(s, t)`` lies within ``tolerance`` mm of where the planes cross."""
        cs, ct = self.cursor
        return math.hypot(s - cs, t - ct) <= tolerance

    def drag_mode(self, s: float, t: float, *, line_tolerance: float, cursor_tolerance: float) -> str:
        """What a left drag starting at ``(s, t)`` does: ``"rotate"`` when it starts on a
        reference line away from the cursor (it turns the other planes), else ``"cursor"``
        (it moves the cursor, i.e. the two other planes, along with the mouse)."""
        if self.line_near(s, t, line_tolerance) is not None and not self.near_cursor(s, t, cursor_tolerance):
            return "rotate"
        return "cursor"

    # --- actions
    def click(self, s: float, t: float) -> None:
        """Put the cursor at ``(s, t)``: the two other planes move to pass through it."""
        self.crosshair.set_centre(self.to_patient(s, t))

    def scroll(self, distance: float) -> None:
        """Move this plane ``distance`` mm along its normal (the cursor goes with it)."""
        self.crosshair.move_along(self.view, distance)

    def rotation(self, start: tuple[float, float], end: tuple[float, float]) -> float:
        """The angle (degrees, in -180..180) swept about the cursor from ``start`` to ``end``
        (plane coordinates; positive is clockwise on screen, as ``t`` points down)."""
        cs, ct = self.cursor
        a0 = (start[0] - cs, start[1] - ct)
        a1 = (end[0] - cs, end[1] - ct)
        if math.hypot(*a0) < 1e-9 or math.hypot(*a1) < 1e-9:
            return 0.0
        angle = math.degrees(math.atan2(a1[1], a1[0]) - math.atan2(a0[1], a0[0]))
        return (angle + 180.0) % 360.0 - 180.0

    def rotate_drag(self, start: tuple[float, float], end: tuple[float, float]) -> float:
        """Turn the two other planes about this view's normal by the angle a drag from ``start``
        to ``end`` sweeps about the cursor (:meth:`rotation`); returns it."""
        angle = self.rotation(start, end)
        if angle:
            self.crosshair.rotate(self.view, angle)
        return angle
