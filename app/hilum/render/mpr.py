"""Multiplanar reformatting: axial, coronal, sagittal and oblique planes of one volume.

Three pieces, none of them Qt:

* :class:`Crosshair` — the MPR model: the 3D cursor (a patient point), the
  orientation of each of the three planes (oblique once the user rotates the
  crosshair lines), slab thickness and mode per view.  Plain Python; it emits
  events to subscribers (:meth:`Crosshair.subscribe`).
* :class:`VolumeImage` — a :class:`hilum.dicom.volume.Volume` wrapped as a
  ``vtkImageData`` **in voxel-index space** (origin 0, spacing 1), shared by
  every viewport and the 3D view.  Patient geometry, including the shear of a
  tilted gantry, is applied by matrices: reslice axes here, the prop's user
  matrix in :mod:`hilum.render.volume3d`.
* :class:`MPRViewport` — one plane on screen: ``vtkImageReslice`` (linear
  interpolation, slab MIP/MinIP/mean) → window/level → ``vtkImageActor``, with
  the crosshair lines of the two other planes, orientation letters at the four
  edges (PS3.3 C.7.6.1.1.1), a scale bar, zoom/pan and mm rulers.  It renders
  into a ``vtkRenderWindow`` it is given (the Qt widget's) or its own
  offscreen one (tests, the CLI).

Viewport world coordinates are *plane coordinates* ``(s, t)`` in mm along the
plane's row direction ``u`` (screen right) and column direction ``v`` (screen
down), measured from the projection of the volume's centre on the plane, so
the image stays still while the crosshair moves within it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import vtkmodules.vtkInteractionStyle  # noqa: F401  (interactor style factory overrides)
import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text rendering)
import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (OpenGL back-end)
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import VTK_FLOAT, vtkCommand, vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkImageData, vtkPolyData
from vtkmodules.vtkCommonMath import vtkMatrix4x4
from vtkmodules.vtkImagingColor import vtkImageMapToWindowLevelColors
from vtkmodules.vtkImagingCore import vtkImageReslice
from vtkmodules.vtkRenderingCore import (
    vtkActor,
    vtkActor2D,
    vtkCoordinate,
    vtkImageActor,
    vtkPolyDataMapper,
    vtkPolyDataMapper2D,
    vtkRenderer,
    vtkRenderWindow,
    vtkTextActor,
    vtkWindowToImageFilter,
)

from hilum.dicom.volume import Plane, SlabMode, Volume

__all__ = [
    "VIEWS",
    "VIEW_COLOURS",
    "Crosshair",
    "MPRScene",
    "MPRViewport",
    "Measurement",
    "SlabSettings",
    "VolumeImage",
    "capture_window",
    "matrix_to_vtk",
    "offscreen_window",
]

logger = logging.getLogger(__name__)

VIEWS = ("axial", "coronal", "sagittal")
VIEW_COLOURS = {"axial": (0.95, 0.3, 0.3), "coronal": (0.35, 0.85, 0.35), "sagittal": (0.95, 0.85, 0.3)}
"""Colour of each plane's crosshair line where the other views show it."""

_BASE_ORIENTATION = {
    "axial": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0])),
    "coronal": (np.array([1.0, 0, 0]), np.array([0, 0, -1.0])),
    "sagittal": (np.array([0, 1.0, 0]), np.array([0, 0, -1.0])),
}
"""Standard display orientations (row direction, column direction) in patient space."""


def matrix_to_vtk(m: npt.ArrayLike) -> vtkMatrix4x4:
    out = vtkMatrix4x4()
    a = np.asarray(m, dtype=np.float64)
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(a[r, c]))
    return out


def offscreen_window(size: tuple[int, int] = (512, 512)) -> vtkRenderWindow:
    """A render window that draws into memory (EGL/OSMesa with the PyPI wheel; no display needed)."""
    win = vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.SetSize(*size)
    win.SetMultiSamples(0)
    return win


def capture_window(window: vtkRenderWindow) -> npt.NDArray[np.uint8]:
    """The window's current pixels as an RGB array (rows top to bottom)."""
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    img = grab.GetOutput()
    w, h, _ = img.GetDimensions()
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)
    return np.ascontiguousarray(arr[::-1])


# ----------------------------------------------------------------------------- the volume in VTK


class VolumeImage:
    """A :class:`Volume` as ``vtkImageData`` in voxel-index space, sharing its memory.

    ``patient_matrix`` is the volume's affine (index → patient mm) for props;
    the numpy array is kept referenced here, as VTK only borrows it.
    """

    def __init__(self, volume: Volume) -> None:
        self.volume = volume
        self._array = np.ascontiguousarray(volume.array)
        k, j, i = self._array.shape
        image = vtkImageData()
        image.SetDimensions(i, j, k)
        image.SetOrigin(0.0, 0.0, 0.0)
        image.SetSpacing(1.0, 1.0, 1.0)
        scalars = numpy_support.numpy_to_vtk(self._array.reshape(-1), deep=False)
        scalars.SetName("values")
        image.GetPointData().SetScalars(scalars)
        self.image = image
        self.patient_matrix = matrix_to_vtk(volume.affine)
        lo, hi = volume.value_range()
        self.value_range = (lo, hi)

    def modified(self) -> None:
        """Tell VTK that the numpy array changed in place."""
        self.image.GetPointData().GetScalars().Modified()
        self.image.Modified()


# ----------------------------------------------------------------------------- the model


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
    """The linked state of the three MPR views (a headless logic object: tests drive it).

    ``centre`` is the 3D cursor in patient mm; every view's plane passes
    through it.  ``orientations[view]`` is the view's (row, column) direction
    pair; rotating the crosshair in one view (:meth:`rotate`) turns the other
    two planes about that view's normal, which gives oblique and double-oblique
    MPR while the three normals stay orthonormal.
    """

    centre: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    orientations: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]] = field(
        default_factory=lambda: {v: (u.copy(), w.copy()) for v, (u, w) in _BASE_ORIENTATION.items()}
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
        ``"measurements"``); returns the function that unsubscribes."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _emit(self, kind: str) -> None:
        for cb in list(self._listeners):
            cb(kind)

    # --- state
    def plane(self, view: str) -> Plane:
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
        from hilum.dicom.volume import rotation_matrix

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
            not (np.allclose(self.orientations[v][0], _BASE_ORIENTATION[v][0], atol=1e-9)
                 and np.allclose(self.orientations[v][1], _BASE_ORIENTATION[v][1], atol=1e-9))
            for v in VIEWS
        )  # fmt: skip

    def reset(self, centre: npt.ArrayLike | None = None) -> None:
        """Back to the standard axial/coronal/sagittal planes (through ``centre`` if given)."""
        self.orientations = {v: (u.copy(), w.copy()) for v, (u, w) in _BASE_ORIENTATION.items()}
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
            if mode not in ("mip", "minip", "mean"):
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


# ----------------------------------------------------------------------------- one viewport


_SLAB_MODES = {"mip": "SetSlabModeToMax", "minip": "SetSlabModeToMin", "mean": "SetSlabModeToMean"}


def _nice_length(mm: float) -> float:
    """The largest 1, 2 or 5 times a power of ten not above ``mm``."""
    if mm <= 0:
        return 0.0
    exp = math.floor(math.log10(mm))
    for m in (5, 2, 1):
        if m * 10**exp <= mm:
            return float(m * 10**exp)
    return float(10**exp)


class MPRViewport:
    """One MPR plane rendered with VTK (see the module docstring for its coordinates).

    ``window`` is (centre, width) in modality units; ``zoom`` multiplies the
    fit-to-volume scale.  Display coordinates are VTK's: pixels from the
    bottom-left corner of the render window.
    """

    def __init__(
        self,
        data: VolumeImage,
        crosshair: Crosshair,
        view: str,
        *,
        render_window: vtkRenderWindow | None = None,
        size: tuple[int, int] = (512, 512),
        window: tuple[float, float] | None = None,
        interpolation: str = "linear",
    ) -> None:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, not {view!r}")
        self.data = data
        self.volume = data.volume
        self.crosshair = crosshair
        self.view = view
        self.render_window = render_window or offscreen_window(size)
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(0, 0, 0)
        self.render_window.AddRenderer(self.renderer)
        self.spacing = float(np.min(self.volume.spacing[:2]))
        self.show_crosshair = True
        self.show_annotations = True
        self._zoom = 1.0
        self._pan = np.zeros(2)

        self.reslice = vtkImageReslice()
        self.reslice.SetInputData(data.image)
        self.reslice.SetOutputDimensionality(2)
        self.reslice.SetBackgroundLevel(data.value_range[0])
        self.reslice.AutoCropOutputOff()
        self.reslice.TransformInputSamplingOff()
        if interpolation == "cubic":
            self.reslice.SetInterpolationModeToCubic()
        elif interpolation == "nearest":
            self.reslice.SetInterpolationModeToNearestNeighbor()
        else:
            self.reslice.SetInterpolationModeToLinear()

        self.colours = vtkImageMapToWindowLevelColors()
        self.colours.SetInputConnection(self.reslice.GetOutputPort())
        self.colours.SetOutputFormatToRGB()
        self.actor = vtkImageActor()
        self.actor.GetMapper().SetInputConnection(self.colours.GetOutputPort())
        self.actor.InterpolateOn()
        self.renderer.AddActor(self.actor)
        if window is None:
            w = self.volume.window
            window = (w.center, w.width) if w is not None else self._auto_window()
        self.set_window(*window)

        self._lines: dict[str, tuple[vtkPoints, vtkActor]] = {}
        for other in VIEWS:
            if other == view:
                continue
            pts, actor = self._make_line(VIEW_COLOURS[other])
            self._lines[other] = (pts, actor)
            self.renderer.AddActor(actor)
        self._rulers: list[tuple[vtkActor, vtkTextActor]] = []
        self._path_points = vtkPoints()
        self._path_poly = vtkPolyData()
        self._path_poly.SetPoints(self._path_points)
        path_mapper = vtkPolyDataMapper()
        path_mapper.SetInputData(self._path_poly)
        self._path_actor = vtkActor()
        self._path_actor.SetMapper(path_mapper)
        self._path_actor.GetProperty().SetColor(1.0, 0.45, 0.9)
        self._path_actor.GetProperty().SetLineWidth(2)
        self._path_actor.GetProperty().SetPointSize(5)
        self._path_actor.GetProperty().RenderPointsAsSpheresOn()
        self._path_actor.GetProperty().LightingOff()
        self.renderer.AddActor(self._path_actor)
        self._letters = {edge: self._make_text(18, bold=True) for edge in ("left", "right", "top", "bottom")}
        self._info = self._make_text(13)
        self._info.GetTextProperty().SetJustificationToLeft()
        self._info.GetTextProperty().SetVerticalJustificationToTop()
        self._scale_points = vtkPoints()
        self._scale_actor, self._scale_text = self._make_scale_bar()
        self.renderer.AddObserver(vtkCommand.StartEvent, lambda *_: self._update_overlays())

        self._unsubscribe = crosshair.subscribe(self._on_model)
        self._display_plane = self._compute_display_plane()
        self._update_reslice()
        self.reset_camera()

    # --- construction helpers
    def _auto_window(self) -> tuple[float, float]:
        lo, hi = self.data.value_range
        return ((lo + hi) / 2, max(hi - lo, 1.0))

    def _make_line(self, colour: tuple[float, float, float]) -> tuple[vtkPoints, vtkActor]:
        pts = vtkPoints()
        pts.SetNumberOfPoints(2)
        lines = vtkCellArray()
        lines.InsertNextCell(2)
        lines.InsertCellPoint(0)
        lines.InsertCellPoint(1)
        poly = vtkPolyData()
        poly.SetPoints(pts)
        poly.SetLines(lines)
        mapper = vtkPolyDataMapper()
        mapper.SetInputData(poly)
        actor = vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*colour)
        actor.GetProperty().SetLineWidth(1.5)
        actor.GetProperty().LightingOff()
        return pts, actor

    def _make_text(self, size: int, bold: bool = False) -> vtkTextActor:
        t = vtkTextActor()
        prop = t.GetTextProperty()
        prop.SetFontSize(size)
        prop.SetBold(bold)
        prop.SetColor(1.0, 1.0, 0.6)
        prop.SetJustificationToCentered()
        prop.SetVerticalJustificationToCentered()
        prop.SetShadow(1)
        t.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
        self.renderer.AddViewProp(t)
        return t

    def _make_scale_bar(self) -> tuple[vtkActor2D, vtkTextActor]:
        self._scale_points.SetNumberOfPoints(4)
        cells = vtkCellArray()
        cells.InsertNextCell(4)
        for i in range(4):
            cells.InsertCellPoint(i)
        poly = vtkPolyData()
        poly.SetPoints(self._scale_points)
        poly.SetLines(cells)
        coord = vtkCoordinate()
        coord.SetCoordinateSystemToDisplay()
        mapper = vtkPolyDataMapper2D()
        mapper.SetInputData(poly)
        mapper.SetTransformCoordinate(coord)
        actor = vtkActor2D()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(1.0, 1.0, 0.6)
        actor.GetProperty().SetLineWidth(2)
        self.renderer.AddViewProp(actor)
        text = self._make_text(12)
        text.GetPositionCoordinate().SetCoordinateSystemToDisplay()
        text.GetTextProperty().SetVerticalJustificationToBottom()
        return actor, text

    # --- model -> view
    def _on_model(self, kind: str) -> None:
        if kind == "orientation":
            self._display_plane = self._compute_display_plane()
        self._update_reslice()

    def close(self) -> None:
        """Stop listening to the crosshair and leave the render window."""
        self._unsubscribe()
        self.render_window.RemoveRenderer(self.renderer)

    @property
    def plane(self) -> Plane:
        """The plane shown, through the crosshair centre."""
        return self.crosshair.plane(self.view)

    def _compute_display_plane(self) -> Plane:
        """The plane's frame anchored at the volume centre (projected onto the plane later)."""
        p = self.plane
        return Plane(self.volume.center, p.u, p.v)

    @property
    def display_plane(self) -> Plane:
        """The shown plane with its origin at the projection of the volume centre: viewport
        world coordinates ``(s, t)`` are plane coordinates of this plane."""
        base = self._display_plane
        w = float((self.crosshair.centre - base.centre) @ base.normal)
        return base.shifted(w)

    def _extent(self) -> tuple[float, float, float, float]:
        base = self._display_plane
        st = base.to_plane(self.volume.corners())
        pad = self.spacing
        return (st[:, 0].min() - pad, st[:, 0].max() + pad, st[:, 1].min() - pad, st[:, 1].max() + pad)

    def _update_reslice(self) -> None:
        plane = self.display_plane
        axes = np.linalg.inv(self.volume.affine) @ plane.matrix()
        self.reslice.SetResliceAxes(matrix_to_vtk(axes))
        s0, s1, t0, t1 = self._extent()
        sp = self.spacing
        nx = max(1, int(math.ceil((s1 - s0) / sp)) + 1)
        ny = max(1, int(math.ceil((t1 - t0) / sp)) + 1)
        slab = self.crosshair.slabs[self.view]
        step = float(np.min(self.volume.spacing))
        n_slab = max(1, int(round(slab.thickness / step))) if slab.thickness > 0 else 1
        self.reslice.SetOutputSpacing(sp, sp, step)
        self.reslice.SetOutputOrigin(s0, t0, 0.0)
        self.reslice.SetOutputExtent(0, nx - 1, 0, ny - 1, 0, 0)
        self.reslice.SetSlabNumberOfSlices(n_slab)
        getattr(self.reslice, _SLAB_MODES[slab.mode])()
        self.reslice.SetSlabTrapezoidIntegration(1 if slab.mode == "mean" else 0)
        self.reslice.SetOutputScalarType(VTK_FLOAT if slab.mode == "mean" and n_slab > 1 else -1)
        self._update_lines()

    def _update_lines(self) -> None:
        plane = self.display_plane
        c = plane.to_plane(self.crosshair.centre)
        length = 4.0 * float(np.max(self.volume.spacing * np.asarray(self.volume.size)))
        for other, (pts, actor) in self._lines.items():
            d3 = np.cross(plane.normal, self.crosshair.plane(other).normal)
            d = np.array([d3 @ plane.u, d3 @ plane.v])
            n = float(np.linalg.norm(d))
            actor.SetVisibility(self.show_crosshair and n > 1e-6)
            if n <= 1e-6:
                continue
            d /= n
            a = c[:2] - length * d
            b = c[:2] + length * d
            pts.SetPoint(0, a[0], a[1], -0.5)
            pts.SetPoint(1, b[0], b[1], -0.5)
            pts.Modified()
        self._update_rulers()
        self._update_path()

    def _update_path(self) -> None:
        """The curved-MPR path, where it lies on this plane."""
        path = self.crosshair.path
        plane = self.display_plane
        st = plane.to_plane(np.asarray(path, dtype=np.float64)) if path else np.zeros((0, 3))
        show = bool(path) and bool(np.all(np.abs(st[:, 2]) <= max(1.0, self.crosshair.slabs[self.view].thickness / 2)))
        self._path_actor.SetVisibility(show)
        if not show:
            return
        self._path_points.Reset()
        verts = vtkCellArray()
        line = vtkCellArray()
        line.InsertNextCell(len(st))
        for i, (x, y, _) in enumerate(st):
            self._path_points.InsertNextPoint(float(x), float(y), -0.7)
            verts.InsertNextCell(1)
            verts.InsertCellPoint(i)
            line.InsertCellPoint(i)
        self._path_poly.SetVerts(verts)
        self._path_poly.SetLines(line if len(st) > 1 else vtkCellArray())
        self._path_points.Modified()
        self._path_poly.Modified()

    def curved_image(self, *, width: float = 80.0) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]] | None:
        """The straightened curved MPR of the crosshair's path (see :meth:`Volume.curved_reslice`)."""
        c = self.crosshair
        if len(c.path) < 2 or c.path_normal is None:
            return None
        return self.volume.curved_reslice(c.path, c.path_normal, width=width, fill=self.data.value_range[0])

    def add_path_point(self, x: float, y: float) -> None:
        """Extend the curved-MPR path with the point under display ``(x, y)`` on this plane."""
        self.crosshair.add_path_point(self.display_to_patient(x, y), self.plane.normal)

    def _update_rulers(self) -> None:
        for actor, text in self._rulers:
            self.renderer.RemoveActor(actor)
            self.renderer.RemoveViewProp(text)
        self._rulers = []
        plane = self.display_plane
        for m in self.crosshair.measurements:
            st = plane.to_plane(np.array([m.start, m.end]))
            if np.any(np.abs(st[:, 2]) > max(0.5, self.crosshair.slabs[self.view].thickness / 2)):
                continue
            pts, actor = self._make_line((0.3, 0.9, 1.0))
            pts.SetPoint(0, st[0, 0], st[0, 1], -0.6)
            pts.SetPoint(1, st[1, 0], st[1, 1], -0.6)
            self.renderer.AddActor(actor)
            text = self._make_text(13)
            text.GetPositionCoordinate().SetCoordinateSystemToWorld()
            text.SetPosition(float(st[1, 0]), float(st[1, 1]))
            text.SetInput(f"{m.length:.1f} mm")
            self._rulers.append((actor, text))

    def _update_overlays(self) -> None:
        """Letters, scale bar and info text, recomputed before each render (zoom changes them)."""
        visible = self.show_annotations
        letters = self.display_plane.edge_letters()
        for edge, pos in (("left", (0.03, 0.5)), ("right", (0.97, 0.5)), ("top", (0.5, 0.97)), ("bottom", (0.5, 0.03))):
            actor = self._letters[edge]
            actor.SetInput(letters[edge])
            actor.SetPosition(*pos)
            actor.SetVisibility(visible)
        w, h = self.renderer.GetSize()
        slab = self.crosshair.slabs[self.view]
        lines = [self.view.capitalize() + (" (oblique)" if self.crosshair.oblique else "")]
        if slab.thickness > 0:
            lines.append(f"{ {'mip': 'MIP', 'minip': 'MinIP', 'mean': 'Average'}[slab.mode] } {slab.thickness:g} mm")
        c, ww = self.window
        lines.append(f"W {ww:.0f} L {c:.0f}")
        self._info.SetInput("\n".join(lines))
        self._info.SetPosition(0.02, 0.98)
        self._info.SetVisibility(visible)
        px_per_mm = self.pixels_per_mm
        if w <= 0 or h <= 0 or px_per_mm <= 0:
            return
        length = _nice_length(0.25 * w / px_per_mm)
        bar = length * px_per_mm
        x1, y = w - 20.0, 20.0
        x0 = x1 - bar
        for i, (x, yy) in enumerate(((x0, y + 6), (x0, y), (x1, y), (x1, y + 6))):
            self._scale_points.SetPoint(i, x, yy, 0)
        self._scale_points.Modified()
        self._scale_text.SetInput(f"{length / 10:g} cm" if length >= 10 else f"{length:g} mm")
        self._scale_text.SetPosition((x0 + x1) / 2, y + 8)
        self._scale_actor.SetVisibility(visible)
        self._scale_text.SetVisibility(visible)

    def set_crosshair_visible(self, visible: bool) -> None:
        self.show_crosshair = bool(visible)
        self._update_lines()

    def set_annotations_visible(self, visible: bool) -> None:
        """Orientation letters, scale bar and the info text."""
        self.show_annotations = bool(visible)

    # --- camera, window/level
    def reset_camera(self) -> None:
        """Fit the whole volume's projection, zoom 1, no pan."""
        self._zoom = 1.0
        self._pan = np.zeros(2)
        self._apply_camera()

    def _apply_camera(self) -> None:
        s0, s1, t0, t1 = self._extent()
        cam = self.renderer.GetActiveCamera()
        cam.ParallelProjectionOn()
        cx = (s0 + s1) / 2 + self._pan[0]
        cy = (t0 + t1) / 2 + self._pan[1]
        cam.SetFocalPoint(cx, cy, 0.0)
        cam.SetPosition(cx, cy, -1000.0)
        cam.SetViewUp(0.0, -1.0, 0.0)
        w, h = self.render_window.GetSize()
        aspect = (w / h) if h else 1.0
        half_h = max((t1 - t0) / 2, (s1 - s0) / 2 / max(aspect, 1e-6))
        cam.SetParallelScale(half_h / self._zoom)
        self.renderer.ResetCameraClippingRange(s0 - 1, s1 + 1, t0 - 1, t1 + 1, -10, 10)

    @property
    def zoom(self) -> float:
        return self._zoom

    def set_zoom(self, zoom: float) -> None:
        self._zoom = float(np.clip(zoom, 0.05, 50.0))
        self._apply_camera()

    def pan(self, ds: float, dt: float) -> None:
        """Move the view by ``(ds, dt)`` mm along the plane (the image moves the other way)."""
        self._pan += (ds, dt)
        self._apply_camera()

    @property
    def pixels_per_mm(self) -> float:
        h = self.renderer.GetSize()[1] or self.render_window.GetSize()[1]
        scale = self.renderer.GetActiveCamera().GetParallelScale()
        return float(h / (2 * scale)) if scale > 0 else 0.0

    @property
    def window(self) -> tuple[float, float]:
        return (self.colours.GetLevel(), self.colours.GetWindow())

    def set_window(self, centre: float, width: float) -> None:
        """Window centre/width in modality units (a linear ramp, as VOI LINEAR, PS3.3 C.11.2.1.2)."""
        self.colours.SetLevel(float(centre))
        self.colours.SetWindow(max(float(width), 1.0))

    # --- picking
    def display_to_plane(self, x: float, y: float) -> tuple[float, float]:
        """Plane coordinates ``(s, t)`` (mm) under display pixel ``(x, y)``."""
        r = self.renderer
        r.SetDisplayPoint(float(x), float(y), 0.0)
        r.DisplayToWorld()
        wx, wy, _, ww = r.GetWorldPoint()
        if ww:
            wx, wy = wx / ww, wy / ww
        return float(wx), float(wy)

    def display_to_patient(self, x: float, y: float) -> npt.NDArray[np.float64]:
        """The patient point on the shown plane under display pixel ``(x, y)``."""
        s, t = self.display_to_plane(x, y)
        return self.display_plane.to_patient(s, t)

    def patient_to_display(self, point: npt.ArrayLike) -> tuple[float, float, float]:
        """Display ``(x, y)`` of a patient point and its distance ``w`` (mm) off the plane."""
        s, t, w = self.display_plane.to_plane(point)
        r = self.renderer
        r.SetWorldPoint(float(s), float(t), 0.0, 1.0)
        r.WorldToDisplay()
        x, y, _ = r.GetDisplayPoint()
        return float(x), float(y), float(w)

    # --- interaction (the Qt widget binds mouse events to these)
    def click(self, x: float, y: float) -> None:
        """Put the 3D cursor at the point under display ``(x, y)`` (all views follow)."""
        self.crosshair.set_centre(self.display_to_patient(x, y))

    def scroll(self, steps: float) -> None:
        """Move through this view by ``steps`` voxel-sized steps along its normal."""
        self.crosshair.move_along(self.view, steps * float(np.min(self.volume.spacing)))

    def rotate_drag(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Rotate the crosshair lines by the angle swept about the cursor from ``(x0, y0)`` to
        ``(x1, y1)``; returns the angle in degrees."""
        c = self.display_plane.to_plane(self.crosshair.centre)
        a0 = np.subtract(self.display_to_plane(x0, y0), c[:2])
        a1 = np.subtract(self.display_to_plane(x1, y1), c[:2])
        if np.linalg.norm(a0) < 1e-9 or np.linalg.norm(a1) < 1e-9:
            return 0.0
        angle = math.degrees(math.atan2(a1[1], a1[0]) - math.atan2(a0[1], a0[0]))
        angle = (angle + 180.0) % 360.0 - 180.0
        if angle:
            self.crosshair.rotate(self.view, angle)
        return angle

    def near_crosshair_line(self, x: float, y: float, tolerance_px: float = 6.0) -> str | None:
        """The other view whose crosshair line passes within ``tolerance_px`` of display ``(x, y)``."""
        c = self.display_plane.to_plane(self.crosshair.centre)[:2]
        p = np.asarray(self.display_to_plane(x, y))
        tol = tolerance_px / max(self.pixels_per_mm, 1e-9)
        plane = self.display_plane
        best: tuple[float, str] | None = None
        for other in self._lines:
            d3 = np.cross(plane.normal, self.crosshair.plane(other).normal)
            d = np.array([d3 @ plane.u, d3 @ plane.v])
            if np.linalg.norm(d) < 1e-9:
                continue
            d /= np.linalg.norm(d)
            off = p - c
            dist = abs(off[0] * d[1] - off[1] * d[0])
            if dist <= tol and (best is None or dist < best[0]):
                best = (dist, other)
        return best[1] if best else None

    def window_drag(self, dx: float, dy: float) -> None:
        """Mouse W/L: right = wider window, up = higher level (scaled to the value range)."""
        c, w = self.window
        lo, hi = self.data.value_range
        k = max(hi - lo, 1.0) / 500.0
        self.set_window(c + dy * k, w + dx * k)

    def measure(self, p0: tuple[float, float], p1: tuple[float, float]) -> Measurement:
        """A ruler between two display points, stored in patient mm (so it stays true on oblique planes)."""
        return self.crosshair.add_measurement(self.display_to_patient(*p0), self.display_to_patient(*p1))

    # --- output
    def image(self) -> tuple[npt.NDArray[np.float32], Plane, float]:
        """The resliced plane as modality values ``[row, column]`` (rows down the screen), the
        plane whose centre is pixel ``[0, 0]`` (:meth:`image_plane`) and the pixel size in mm."""
        self.reslice.Update()
        out = self.reslice.GetOutput()
        nx, ny, _ = out.GetDimensions()
        arr = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(ny, nx)
        return arr.astype(np.float32), self.image_plane(), self.spacing

    def image_plane(self) -> Plane:
        """A plane whose centre is the patient position of pixel ``[0, 0]`` of :meth:`image`."""
        s0, _, t0, _ = self._extent()
        p = self.display_plane
        return Plane(p.to_patient(s0, t0), p.u, p.v)

    def render(self) -> None:
        self.render_window.Render()

    def capture(self) -> npt.NDArray[np.uint8]:
        """Render and return the window's RGB pixels (top row first)."""
        self.render()
        return capture_window(self.render_window)


class MPRScene:
    """Three linked :class:`MPRViewport` s over one volume, with their crosshair: the MPR
    layout without Qt (offscreen windows unless ``windows`` are given)."""

    def __init__(
        self,
        volume: Volume,
        *,
        size: tuple[int, int] = (384, 384),
        windows: dict[str, vtkRenderWindow] | None = None,
        window: tuple[float, float] | None = None,
    ) -> None:
        self.volume = volume
        self.data = VolumeImage(volume)
        self.crosshair = Crosshair(centre=volume.center)
        self.viewports = {
            v: MPRViewport(self.data, self.crosshair, v, render_window=(windows or {}).get(v), size=size, window=window)
            for v in VIEWS
        }

    def __getitem__(self, view: str) -> MPRViewport:
        return self.viewports[view]

    def set_window(self, centre: float, width: float) -> None:
        for vp in self.viewports.values():
            vp.set_window(centre, width)

    def render(self) -> None:
        for vp in self.viewports.values():
            vp.render()

    def close(self) -> None:
        for vp in self.viewports.values():
            vp.close()

    def info(self) -> dict[str, Any]:
        return {
            "centre": self.crosshair.centre.tolist(),
            "oblique": self.crosshair.oblique,
            "views": {v: self.crosshair.plane(v).orientation() for v in VIEWS},
        }
