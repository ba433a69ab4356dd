"""Multiplanar reformatting: axial, coronal, sagittal and oblique planes of one volume.

Three pieces, none of them Qt:

* :class:`hilum.render.crosshair.Crosshair` (re-exported here) — the MPR model:
  the 3D cursor, the orientation of each plane, slab thickness and mode per view,
  with :class:`~hilum.render.crosshair.CrosshairView`, the headless logic of one
  view (reference lines, what a drag does).  numpy only, tested without VTK.
* :class:`VolumeImage` — a :class:`hilum.dicom.volume.Volume` wrapped as a
  ``vtkImageData`` **in voxel-index space** (origin 0, spacing 1), shared by
  every viewport and the 3D view.  Patient geometry, including the shear of a
  tilted gantry, is applied by matrices: reslice axes here, the prop's user
  matrix in :mod:`hilum.render.volume3d`.
* :class:`MPRViewport` — one plane on screen: ``vtkImageReslice`` (linear
  interpolation, slab MIP/MinIP/mean; oblique planes and thick oblique slabs through
  :class:`hilum.render.slab.PlaneCacheSlab` and the compiled reslice of
  :mod:`hilum.render.reslice_kernel`, equal to VTK's pixels) → the view's
  :class:`hilum.dicom.pixels_lut.DisplayTransform` (the 2D viewer's VOI LUT and
  presentation stages: LINEAR, LINEAR_EXACT, SIGMOID or a VOI LUT table,
  MONOCHROME1 inversion), applied in numpy as the 2D viewer applies it (one
  ``np.take`` through a table) → an 8-bit grey ``vtkImageActor``, with
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
from vtkmodules.vtkImagingCore import VTK_RESLICE_LINEAR, vtkImageReslice
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

from hilum.dicom.pixels_lut import VOI, DisplayTransform, SampledTable, VOITable, Window
from hilum.dicom.volume import Plane, Volume
from hilum.render import reslice_kernel
from hilum.render.crosshair import VIEWS, Crosshair, CrosshairView, Measurement, SlabSettings
from hilum.render.gl import finalize_when_collected, finalize_window, gl_lock, release_context, weak_callback
from hilum.render.slab import PlaneCacheSlab, SlabGeometry, is_permutation

__all__ = [
    "VIEWS",
    "VIEW_COLOURS",
    "Crosshair",
    "MPRScene",
    "MPRViewport",
    "Measurement",
    "SLAB_CACHE",
    "SlabSettings",
    "VolumeImage",
    "capture_window",
    "matrix_to_vtk",
    "offscreen_window",
    "render_offscreen",
    "volume_display",
]

logger = logging.getLogger(__name__)

VIEW_COLOURS = {"axial": (0.95, 0.3, 0.3), "coronal": (0.35, 0.85, 0.35), "sagittal": (0.95, 0.85, 0.3)}
"""Colour of each plane's crosshair line where the other views show it."""

WindowSpec = DisplayTransform | Window | VOITable | tuple[float, float]
"""What a viewport's window can be given as: a display, a VOI (the volume's inversion is
added), or ``(center, width)`` (LINEAR, PS3.3 C.11.2.1.2.1)."""


def matrix_to_vtk(m: npt.ArrayLike) -> vtkMatrix4x4:
    out = vtkMatrix4x4()
    a = np.asarray(m, dtype=np.float64)
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(a[r, c]))
    return out


def offscreen_window(size: tuple[int, int] = (512, 512)) -> vtkRenderWindow:
    """A render window that draws into memory (EGL/OSMesa with the PyPI wheel; no display needed).

    Made holding the VTK lock (:mod:`hilum.render.gl`: VTK's choice of window class opens the
    display); its owner finalizes it (:func:`hilum.render.gl.finalize_window`) when done."""
    with gl_lock():
        win = vtkRenderWindow()
        win.SetOffScreenRendering(1)
        win.SetSize(*size)
        win.SetMultiSamples(0)
    return win


def render_offscreen(window: vtkRenderWindow) -> None:
    """Render ``window`` holding the VTK lock and leave its context current nowhere."""
    with gl_lock():
        window.Render()
        release_context(window)


def capture_window(window: vtkRenderWindow) -> npt.NDArray[np.uint8]:
    """The window's current pixels as an RGB array (rows top to bottom); reads them back holding
    the VTK lock and leaves the context current nowhere."""
    with gl_lock():
        grab = vtkWindowToImageFilter()
        grab.SetInput(window)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        release_context(window)
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

    @property
    def array(self) -> np.ndarray:
        """The values ``[k, j, i]`` that the image shares (C-contiguous)."""
        return self._array

    def modified(self) -> None:
        """Tell VTK that the numpy array changed in place."""
        self.image.GetPointData().GetScalars().Modified()
        self.image.Modified()


# ----------------------------------------------------------------------------- display


def volume_display(volume: Volume) -> DisplayTransform:
    """The display of a volume as the 2D viewer shows its first slice (PS3.4 N.2 after the
    Modality LUT): the header's first window (with its VOI LUT Function) or else its first
    VOI LUT table, and the inversion of MONOCHROME1 / Presentation LUT Shape INVERSE.

    The first source slice's :class:`~hilum.dicom.pixels.GrayscalePipeline`: its
    :class:`~hilum.dicom.stack.FrameInfo` carries the one the 2D viewer uses, however the
    volume was built (files, data sets, or the viewer's loaded series handed over by
    :func:`~hilum.dicom.volume.volume_from_series`, with nothing read from the files again).
    For colour or slices without a header (:func:`~hilum.dicom.volume.volume_from_planes`),
    the volume's window or a min-max window over its values (:meth:`Window.min_max`) with no
    inversion.
    """
    voi: VOI | None = None
    invert = False
    pipeline = volume.slices[0].pipeline if volume.slices else None
    if pipeline is not None:
        voi = pipeline.default_voi()
        invert = bool(pipeline.invert)
    if voi is None:
        voi = volume.window if volume.window is not None else Window.min_max(*volume.value_range())
    return DisplayTransform(voi, invert)


# ----------------------------------------------------------------------------- one viewport


SLAB_CACHE = True
"""Thick slabs of oblique planes from cached thin planes (:class:`hilum.render.slab.PlaneCacheSlab`:
one thin plane per scroll step instead of the whole slab).  False: ``vtkImageReslice``'s own
slab on every change, the reference the cache is held equal to (tests run both ways).  Each
viewport takes it when made (:attr:`MPRViewport.slab_cache`)."""

PREVIEW_SAMPLES = 4
"""While a drag turns an oblique thick slab (:meth:`MPRViewport.set_interacting`), its samples
are this many times further apart..."""
PREVIEW_PIXELS = 2
"""...and its pixels this many times larger: a refill then costs ~1/16 of a full one (a
rotation refills two views on every mouse move).  Full quality comes back on release."""

_SLAB_MODES = {"mip": "SetSlabModeToMax", "minip": "SetSlabModeToMin", "mean": "SetSlabModeToMean"}
_SLAB_NAMES = {"mip": "MIP", "minip": "MinIP", "mean": "Average"}


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

    ``window`` sets the display (:data:`WindowSpec`; default: :func:`volume_display`, the 2D
    viewer's display of the volume's first slice); ``zoom`` multiplies the fit-to-volume
    scale.  Display coordinates are VTK's: pixels from the bottom-left corner of the render
    window.  The crosshair logic is :attr:`logic` (:class:`CrosshairView`); the methods here
    convert display pixels to its plane coordinates.
    """

    def __init__(
        self,
        data: VolumeImage,
        crosshair: Crosshair,
        view: str,
        *,
        render_window: vtkRenderWindow | None = None,
        size: tuple[int, int] = (512, 512),
        window: WindowSpec | None = None,
        interpolation: str = "linear",
    ) -> None:
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, not {view!r}")
        self.data = data
        self.volume = data.volume
        self.crosshair = crosshair
        self.view = view
        self.logic = CrosshairView(crosshair, view, anchor=self.volume.center)
        self._own_window = render_window is None
        self.render_window = render_window or offscreen_window(size)
        self._closed = False
        self._finalizer = finalize_when_collected(self, self.render_window) if self._own_window else None
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

        self.slab_cache = SLAB_CACHE
        """Whether thick oblique slabs come from the plane cache (:data:`SLAB_CACHE`)."""
        self.interacting = False
        """A drag is under way (:meth:`set_interacting`): thick oblique slabs are previewed coarse."""
        self.interaction_group: list[MPRViewport] = [self]
        """The viewports whose planes one drag moves (an :class:`MPRScene`'s three)."""
        self._geometry: SlabGeometry | None = None  # what the image was last resliced for
        self._cache: PlaneCacheSlab | None = None  # thick oblique slabs (SLAB_CACHE)
        self._cached: tuple[int, np.ndarray] | None = None  # (version, values) from the cache
        self._cache_version = 0
        self._cache_due = False  # the geometry changed: the cache's slab is to be made

        self.grey = vtkImageData()
        """The plane's P-Values (8-bit grey, one per resliced pixel) that the actor shows."""
        self._grey_values: npt.NDArray[np.uint8] | None = None
        self._mapped: tuple[tuple[str, int], DisplayTransform] | None = None  # (values key, display) shown
        self.actor = vtkImageActor()
        self.actor.SetInputData(self.grey)
        self.actor.InterpolateOn()
        self.renderer.AddActor(self.actor)
        self._default_display = volume_display(self.volume)
        self._display = self._default_display
        self._sampled: tuple[DisplayTransform, SampledTable] | None = None
        self._display_listeners: list[Callable[[], None]] = []
        if window is not None:
            self._display = self._as_display(window)

        self._lines: dict[str, tuple[vtkPoints, vtkActor]] = {}
        for other in VIEWS:
            if other == view:
                continue
            pts, actor = self._make_line(VIEW_COLOURS[other])
            self._lines[other] = (pts, actor)
            self.renderer.AddActor(actor)
        self._rulers: list[tuple[vtkPoints, vtkActor, vtkTextActor]] = []  # a pool: hidden, never removed
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
        self.renderer.AddObserver(vtkCommand.StartEvent, weak_callback(self._before_render))

        self._labels: _LabelLayer | None = None
        """The segmentation's label volume shown over the plane (:meth:`set_labels`)."""

        self._unsubscribe = crosshair.subscribe(self._on_model)
        self._update_reslice()
        self.reset_camera()

    # --- construction helpers
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
        self._update_reslice()

    def close(self) -> None:
        """Stop listening to the crosshair, leave the render window and (when it made it) free it
        (:func:`hilum.render.gl.finalize_window`).  Nothing may render the window afterwards."""
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        with gl_lock(abort=True):
            self.render_window.RemoveRenderer(self.renderer)  # releases the props' graphics resources
            if self._own_window:
                finalize_window(self.render_window)
        if self._finalizer is not None:
            self._finalizer.detach()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def plane(self) -> Plane:
        """The plane shown, through the crosshair centre."""
        return self.logic.plane

    @property
    def display_plane(self) -> Plane:
        """The shown plane with its origin at the projection of the volume centre: viewport
        world coordinates ``(s, t)`` are plane coordinates of this plane (:attr:`CrosshairView.frame`)."""
        return self.logic.frame

    def _extent(self) -> tuple[float, float, float, float]:
        st = self.display_plane.to_plane(self.volume.corners())
        pad = self.spacing
        return (st[:, 0].min() - pad, st[:, 0].max() + pad, st[:, 1].min() - pad, st[:, 1].max() + pad)

    def _update_reslice(self) -> None:
        """Set the reslice for the shown plane and slab, when they changed (a plane that only
        moved within itself, e.g. when another view scrolls, is not resliced again).  Thick
        slabs of oblique planes go to the plane cache (:data:`SLAB_CACHE`)."""
        plane = self.display_plane
        axes = np.linalg.inv(self.volume.affine) @ plane.matrix()
        s0, s1, t0, t1 = self._extent()
        sp = self.spacing
        nx = max(1, int(math.ceil((s1 - s0) / sp)) + 1)
        ny = max(1, int(math.ceil((t1 - t0) / sp)) + 1)
        slab = self.crosshair.slabs[self.view]
        step = float(np.min(self.volume.spacing))
        n_slab = max(1, int(round(slab.thickness / step))) if slab.thickness > 0 else 1
        self._update_lines()
        turning = self._geometry is None or not np.allclose(axes[:3, :3], self._geometry[0][:3, :3], rtol=0.0, atol=1e-9)
        if self.interacting and turning and n_slab >= 2 * PREVIEW_SAMPLES and not is_permutation(axes):
            # preview while a drag turns this plane: a quarter of the samples on a grid half as fine
            step *= PREVIEW_SAMPLES
            n_slab = max(2, int(round(slab.thickness / step)))
            sp *= PREVIEW_PIXELS
            nx = max(1, int(math.ceil((s1 - s0) / sp)) + 1)
            ny = max(1, int(math.ceil((t1 - t0) / sp)) + 1)
        geometry: SlabGeometry = (axes, s0, t0, nx, ny, sp, step, n_slab, slab.mode)
        if self._labels is not None:
            self._labels.set_geometry(axes, s0, t0, nx, ny, sp)
        if n_slab == 1:
            geometry = (*geometry[:8], "mip")  # a thin plane: the mode does not matter
        if self._geometry is not None and _same_geometry(geometry, self._geometry):
            return
        self._geometry = geometry
        compiled = self.reslice.GetInterpolationMode() == VTK_RESLICE_LINEAR and reslice_kernel.available()
        if self.slab_cache and (n_slab > 1 or compiled) and not is_permutation(axes):
            if self._cache is None:
                self._cache = PlaneCacheSlab(
                    self.data.image,
                    interpolation=self.reslice.GetInterpolationMode(),
                    background=self.reslice.GetBackgroundLevel(),
                    value_range=self.data.value_range,
                    array=self.data.array,
                )
            if self._cache.supports(geometry[8]):
                self._cache_due = True
                return
        self._cache_due = False
        self._cached = None
        self.reslice.SetResliceAxes(matrix_to_vtk(axes))
        self.reslice.SetOutputSpacing(sp, sp, step)
        self.reslice.SetOutputOrigin(s0, t0, 0.0)
        self.reslice.SetOutputExtent(0, nx - 1, 0, ny - 1, 0, 0)
        self.reslice.SetSlabNumberOfSlices(n_slab)
        getattr(self.reslice, _SLAB_MODES[slab.mode])()
        self.reslice.SetSlabTrapezoidIntegration(1 if slab.mode == "mean" else 0)
        self.reslice.SetOutputScalarType(VTK_FLOAT if slab.mode == "mean" and n_slab > 1 else -1)

    def _resliced(self) -> tuple[np.ndarray, tuple[str, int], tuple[float, float, float], tuple[float, float, float]]:
        """The plane's modality values ``(rows, columns)`` (the reslice output's type), a key
        that changes when they do, and their origin and spacing (plane mm)."""
        if self._cache_due or self._cached is not None:
            assert self._geometry is not None and self._cache is not None
            _axes, s0, t0, _nx, _ny, sp, step, _n, _mode = self._geometry
            if self._cache_due:
                self._cache_version += 1
                self._cached = (self._cache_version, self._cache.update(self._geometry))
                self._cache_due = False
            assert self._cached is not None
            version, values = self._cached
            return values, ("cache", version), (s0, t0, 0.0), (sp, sp, step)
        self.reslice.Update()  # VTK's pipeline: re-executes only when the plane, slab or volume changed
        out = self.reslice.GetOutput()
        nx, ny, _ = out.GetDimensions()
        values = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(ny, nx)
        return values, ("vtk", out.GetMTime()), out.GetOrigin(), out.GetSpacing()

    def set_interacting(self, interacting: bool) -> None:
        """A drag that turns the planes starts (True) or ends (False), for every viewport of
        :attr:`interaction_group`: meanwhile thick oblique slabs are previewed coarse
        (:data:`PREVIEW_SAMPLES`, :data:`PREVIEW_PIXELS`); at the end they are made again at
        full quality and the views are told to render (the crosshair emits ``"slab"``)."""
        interacting = bool(interacting)
        if all(vp.interacting == interacting for vp in self.interaction_group):
            return
        for vp in self.interaction_group:
            vp.interacting = interacting
        if not interacting:
            self.crosshair.set_slab(self.view)  # no change: every view re-checks its geometry and renders

    def _before_render(self, *_: object) -> None:
        """The renderer is about to draw: bring the grey image and the overlays up to date."""
        self.update_image()
        if self._labels is not None:
            self._labels.update()
        self._update_overlays()

    # --- segmentation labels (hilum.dicom.segmentation.LabelMap) over the plane
    def set_labels(self, labels: npt.NDArray[np.uint8] | None, colours: npt.NDArray[np.uint8] | None = None) -> None:
        """Show a label volume (uint8 ``[k, j, i]``, the volume's shape; shared, not copied: edits
        show after :meth:`labels_modified`) coloured by *colours* (256 x RGBA, alpha 0 = not
        shown) over the plane, resliced with nearest neighbour on the plane's grid (thin: a
        slab shows the labels of its centre plane); None removes it."""
        if self._labels is not None:
            self.renderer.RemoveActor(self._labels.actor)
            self._labels = None
        if labels is None:
            return
        if labels.shape != self.volume.array.shape[:3]:
            raise ValueError(f"labels {labels.shape} do not match the volume {self.volume.array.shape[:3]}")
        self._labels = _LabelLayer(labels, colours if colours is not None else default_label_colours())
        self.renderer.AddActor(self._labels.actor)
        self._geometry = None  # set the label reslice too
        self._update_reslice()

    def labels_modified(self, colours: npt.NDArray[np.uint8] | None = None) -> None:
        """The label volume (or, given, its colours) changed: shown at the next render."""
        if self._labels is not None:
            self._labels.modified(colours)

    def label_pixels(self) -> npt.NDArray[np.uint8] | None:
        """The label values on the plane's grid as shown (rows x columns), None without labels."""
        if self._labels is None:
            return None
        self._labels.reslice.Update()
        out = self._labels.reslice.GetOutput()
        nx, ny, _ = out.GetDimensions()
        return numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(ny, nx).copy()

    def brush_voxels(
        self, x: float, y: float, radius_mm: float
    ) -> list[tuple[int, npt.NDArray[np.bool_], tuple[int, int, int, int]]]:
        """The voxels a brush of ``radius_mm`` at display ``(x, y)`` covers on this plane: those
        whose centre is within the radius of the point in the plane and within half a voxel
        (along the plane's normal) of the plane — a disc one voxel thick, on any plane, oblique
        too. Per volume slice ``k``: ``(k, mask, (j0, j1, i0, i1))`` for
        :meth:`hilum.dicom.segmentation.LabelMap.write_slice`."""
        vol = self.volume
        centre = self.display_to_patient(x, y)
        normal = np.asarray(self.display_plane.normal, dtype=np.float64)
        inv = np.linalg.inv(vol.affine)
        c_ijk = (inv @ np.append(centre, 1.0))[:3]
        sp = vol.spacing
        half_n = 0.5 * float(np.abs(vol.affine[:3, :3].T @ normal).max())  # half a voxel along the normal
        reach = np.ceil((radius_mm + half_n) / sp).astype(int) + 1
        nk, nj, ni = vol.array.shape[:3]
        lo = np.maximum(np.floor(c_ijk).astype(int) - reach, 0)
        hi = np.minimum(np.floor(c_ijk).astype(int) + reach + 1, (ni, nj, nk))
        if np.any(hi <= lo):
            return []
        ii, jj, kk = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]), np.arange(lo[2], hi[2]),
                                 indexing="ij")  # fmt: skip
        pts = np.stack([ii, jj, kk], axis=-1).astype(np.float64) @ vol.affine[:3, :3].T + vol.affine[:3, 3]
        d = pts - centre
        along = d @ normal
        inplane = np.sqrt(np.maximum((d * d).sum(axis=-1) - along * along, 0.0))
        hit = (np.abs(along) <= half_n + 1e-6) & (inplane <= radius_mm + 1e-6)
        out = []
        for kz in range(hit.shape[2]):
            plane = hit[:, :, kz].T  # [j, i]
            if not plane.any():
                continue
            rows = np.flatnonzero(plane.any(axis=1))
            cols = np.flatnonzero(plane.any(axis=0))
            j0, j1, i0, i1 = int(rows[0]), int(rows[-1] + 1), int(cols[0]), int(cols[-1] + 1)
            out.append((int(lo[2] + kz), plane[j0:j1, i0:i1],
                        (int(lo[1] + j0), int(lo[1] + j1), int(lo[0] + i0), int(lo[0] + i1))))  # fmt: skip
        return out

    def update_image(self) -> None:
        """Reslice (if the plane, slab or volume changed) and map the values to P-Values through
        the display (if either changed): what the actor shows.  Runs before every render.

        Integer planes (an int16 volume, thin or MIP/MinIP) go through
        :meth:`DisplayTransform.apply` (one ``np.take`` through its integer table: the
        exact P-Values of the 2D viewer); float planes (a float volume, an averaged slab)
        through :meth:`DisplayTransform.sampled` bins (within one grey level).  About 0.4 ms
        for 512 x 512 int16, against 1.4 ms for VTK's own window/level filter and 1.8 ms
        for ``vtkImageMapToColors`` with a lookup table (bench/mpr/interaction.py).
        """
        values2d, key, origin, spacing = self._resliced()
        if self._mapped == (key, self._display):
            return
        ny, nx = values2d.shape
        values = values2d.reshape(-1)
        if self._grey_values is None or self._grey_values.size != values.size:
            self._grey_values = np.empty(values.size, dtype=np.uint8)
            self.grey.SetDimensions(nx, ny, 1)
            self.grey.GetPointData().SetScalars(numpy_support.numpy_to_vtk(self._grey_values, deep=False))
        elif self.grey.GetDimensions()[:2] != (nx, ny):
            self.grey.SetDimensions(nx, ny, 1)
        self.grey.SetOrigin(origin)
        self.grey.SetSpacing(spacing)
        if values.dtype.kind in "iu" and values.dtype.itemsize <= 2:
            table = self._display.integer_table(values.dtype)
            np.take(table, values.view(np.dtype(f"u{values.dtype.itemsize}")), out=self._grey_values)
        else:
            if self._sampled is None or self._sampled[0] != self._display:
                self._sampled = (self._display, self._display.sampled(self.data.value_range, integer=False))
            self._sampled[1].lookup(values, out=self._grey_values)
        self.grey.GetPointData().GetScalars().Modified()
        self.grey.Modified()
        self._mapped = (key, self._display)

    def _update_lines(self) -> None:
        length = 4.0 * float(np.max(self.volume.spacing * np.asarray(self.volume.size)))
        lines = self.logic.reference_lines()
        for other, (pts, actor) in self._lines.items():
            line = lines.get(other)
            actor.SetVisibility(self.show_crosshair and line is not None)
            if line is None:
                continue
            (a0, a1), (b0, b1) = line.segment(length)
            pts.SetPoint(0, a0, a1, -0.5)
            pts.SetPoint(1, b0, b1, -0.5)
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

    def curved_pixels(self, *, width: float = 80.0) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]] | None:
        """The curved MPR as 8-bit P-Values through this view's display (the same
        :class:`DisplayTransform` as the plane and the 2D viewer), and its pixels' patient points."""
        result = self.curved_image(width=width)
        if result is None:
            return None
        values, points = result
        return np.ascontiguousarray(self._display.apply(values)), points

    def add_path_point(self, x: float, y: float) -> None:
        """Extend the curved-MPR path with the point under display ``(x, y)`` on this plane."""
        self.crosshair.add_path_point(self.display_to_patient(x, y), self.plane.normal)

    def _update_rulers(self) -> None:
        """The rulers on this plane.  Their props are pooled and hidden, never removed: removing a
        prop releases its graphics resources, i.e. OpenGL calls outside a render (and off the
        VTK lock, :mod:`hilum.render.gl`), from whichever thread moved the crosshair."""
        plane = self.display_plane
        shown = 0
        for m in self.crosshair.measurements:
            st = plane.to_plane(np.array([m.start, m.end]))
            if np.any(np.abs(st[:, 2]) > max(0.5, self.crosshair.slabs[self.view].thickness / 2)):
                continue
            if shown == len(self._rulers):
                pts, actor = self._make_line((0.3, 0.9, 1.0))
                self.renderer.AddActor(actor)
                text = self._make_text(13)
                text.GetPositionCoordinate().SetCoordinateSystemToWorld()
                self._rulers.append((pts, actor, text))
            pts, actor, text = self._rulers[shown]
            pts.SetPoint(0, st[0, 0], st[0, 1], -0.6)
            pts.SetPoint(1, st[1, 0], st[1, 1], -0.6)
            pts.Modified()
            text.SetPosition(float(st[1, 0]), float(st[1, 1]))
            text.SetInput(f"{m.length:.1f} mm")
            actor.SetVisibility(True)
            text.SetVisibility(True)
            shown += 1
        for _, actor, text in self._rulers[shown:]:
            actor.SetVisibility(False)
            text.SetVisibility(False)

    def ruler_labels(self) -> list[str]:
        """The labels of the rulers shown on this plane (lengths in mm)."""
        return [text.GetInput() for _, actor, text in self._rulers if actor.GetVisibility()]

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
            lines.append(f"{_SLAB_NAMES[slab.mode]} {slab.thickness:g} mm")
        lines.append(self._display.label)
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
    def display(self) -> DisplayTransform:
        """The VOI and presentation stages this view applies (:class:`DisplayTransform`)."""
        return self._display

    def set_display(self, window: WindowSpec | None) -> None:
        """Show the plane through another display (None: back to :func:`volume_display`)."""
        display = self._default_display if window is None else self._as_display(window)
        if display == self._display:
            return
        self._display = display
        for callback in list(self._display_listeners):
            callback()

    def subscribe_display(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` whenever :attr:`display` changes; returns the function that unsubscribes."""
        self._display_listeners.append(callback)
        return lambda: self._display_listeners.remove(callback) if callback in self._display_listeners else None

    def _as_display(self, window: WindowSpec) -> DisplayTransform:
        if isinstance(window, DisplayTransform):
            return window
        if isinstance(window, (Window, VOITable)):
            return DisplayTransform(window, self._default_display.invert)
        centre, width = window
        return DisplayTransform(Window(float(centre), max(float(width), 1.0)), self._default_display.invert)

    @property
    def window(self) -> tuple[float, float]:
        """Centre and width of the window in force (a VOI LUT table's equivalent window)."""
        w = self._display.window
        return (w.center, w.width)

    def set_window(self, centre: float, width: float) -> None:
        """Window centre/width in modality units, keeping the VOI LUT Function and inversion
        (:meth:`DisplayTransform.with_window`; a VOI LUT table gives way to LINEAR)."""
        self.set_display(self._display.with_window(centre, width))

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

    # --- interaction (the Qt widget binds mouse events to these; the logic is :attr:`logic`)
    def _mm(self, pixels: float) -> float:
        return pixels / max(self.pixels_per_mm, 1e-9)

    def click(self, x: float, y: float) -> None:
        """Put the 3D cursor at the point under display ``(x, y)`` (all views follow)."""
        self.logic.click(*self.display_to_plane(x, y))

    def scroll(self, steps: float) -> None:
        """Move through this view by ``steps`` voxel-sized steps along its normal."""
        self.logic.scroll(steps * float(np.min(self.volume.spacing)))

    def rotate_drag(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Rotate the crosshair lines by the angle swept about the cursor from ``(x0, y0)`` to
        ``(x1, y1)``; returns the angle in degrees (:meth:`CrosshairView.rotate_drag`)."""
        return self.logic.rotate_drag(self.display_to_plane(x0, y0), self.display_to_plane(x1, y1))

    def near_crosshair_line(self, x: float, y: float, tolerance_px: float = 6.0) -> str | None:
        """The other view whose crosshair line passes within ``tolerance_px`` of display ``(x, y)``."""
        return self.logic.line_near(*self.display_to_plane(x, y), self._mm(tolerance_px))

    def drag_mode(self, x: float, y: float, *, line_px: float = 6.0, cursor_px: float = 12.0) -> str:
        """What a left drag from display ``(x, y)`` does: ``"rotate"`` or ``"cursor"``
        (:meth:`CrosshairView.drag_mode`, tolerances in display pixels)."""
        s, t = self.display_to_plane(x, y)
        return self.logic.drag_mode(s, t, line_tolerance=self._mm(line_px), cursor_tolerance=self._mm(cursor_px))

    def window_drag(self, dx: float, dy: float) -> None:
        """Mouse W/L by ``(dx, dy)`` display pixels (``dy`` up): :meth:`DisplayTransform.dragged`,
        the 2D viewer's rule (right widens, down raises the level)."""
        self.set_display(self._display.dragged(dx, -dy))

    def measure(self, p0: tuple[float, float], p1: tuple[float, float]) -> Measurement:
        """A ruler between two display points, stored in patient mm (so it stays true on oblique planes)."""
        return self.crosshair.add_measurement(self.display_to_patient(*p0), self.display_to_patient(*p1))

    # --- output
    def image(self) -> tuple[npt.NDArray[np.float32], Plane, float]:
        """The resliced plane as modality values ``[row, column]`` (rows down the screen), the
        plane whose centre is pixel ``[0, 0]`` (:meth:`image_plane`) and the pixel size in mm."""
        values, _key, _origin, spacing = self._resliced()
        return values.astype(np.float32), self.image_plane(), float(spacing[0])  # coarser in a preview

    def image_plane(self) -> Plane:
        """A plane whose centre is the patient position of pixel ``[0, 0]`` of :meth:`image`."""
        s0, _, t0, _ = self._extent()
        p = self.display_plane
        return Plane(p.to_patient(s0, t0), p.u, p.v)

    def render(self) -> None:
        """Render the plane (holding the VTK lock; the renderer's StartEvent updates the image,
        :meth:`update_image`); nothing once closed."""
        with gl_lock():
            if not self._closed:
                render_offscreen(self.render_window)

    def capture(self) -> npt.NDArray[np.uint8]:
        """Render and return the window's RGB pixels (top row first)."""
        with gl_lock():
            self.render()
            return capture_window(self.render_window)


def _same_geometry(a: SlabGeometry, b: SlabGeometry) -> bool:
    """Whether two slab geometries are the same to rounding (1e-9 voxel / mm): the plane
    recomputed after a move within itself differs from the last one by ~1e-14."""
    return a[3:] == b[3:] and abs(a[1] - b[1]) <= 1e-9 and abs(a[2] - b[2]) <= 1e-9 and bool(
        np.allclose(a[0], b[0], rtol=0.0, atol=1e-9)
    )


class MPRScene:
    """Three linked :class:`MPRViewport` s over one volume, with their crosshair: the MPR
    layout without Qt (offscreen windows unless ``windows`` are given)."""

    def __init__(
        self,
        volume: Volume,
        *,
        size: tuple[int, int] = (384, 384),
        windows: dict[str, vtkRenderWindow] | None = None,
        window: WindowSpec | None = None,
    ) -> None:
        self.volume = volume
        self.data = VolumeImage(volume)
        self.crosshair = Crosshair(centre=volume.center)
        self.viewports = {
            v: MPRViewport(self.data, self.crosshair, v, render_window=(windows or {}).get(v), size=size, window=window)
            for v in VIEWS
        }
        for vp in self.viewports.values():
            vp.interaction_group = list(self.viewports.values())

    def __getitem__(self, view: str) -> MPRViewport:
        return self.viewports[view]

    def set_interacting(self, interacting: bool) -> None:
        """Coarse thick-slab previews while a drag turns the planes (:meth:`MPRViewport.set_interacting`)."""
        next(iter(self.viewports.values())).set_interacting(interacting)

    def set_window(self, centre: float, width: float) -> None:
        """The same center/width in every view (each keeps its VOI LUT Function)."""
        for vp in self.viewports.values():
            vp.set_window(centre, width)

    def set_display(self, window: WindowSpec | None) -> None:
        """The same display in every view (None: the volume's default)."""
        for vp in self.viewports.values():
            vp.set_display(window)

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


def default_label_colours(opacity: float = 0.5) -> npt.NDArray[np.uint8]:
    """256 x RGBA: label 0 transparent, the others in turn of a few distinct colours."""
    base = [(241, 214, 145), (216, 101, 79), (128, 174, 128), (111, 184, 210), (221, 130, 101)]
    out = np.zeros((256, 4), dtype=np.uint8)
    for n in range(1, 256):
        out[n, :3] = base[(n - 1) % len(base)]
        out[n, 3] = int(round(255 * opacity))
    return out


class _LabelLayer:
    """A label volume resliced (nearest neighbour) on a plane's grid and shown in colour.

    The label array is shared with its owner (a :class:`hilum.dicom.segmentation.LabelMap`),
    wrapped as a ``vtkImageData`` in voxel-index space like :class:`VolumeImage`; the plane's
    labels go through a 256-entry RGBA table in numpy into an RGBA image actor a hair in front
    of the grey one (towards the camera), drawn translucent."""

    def __init__(self, labels: npt.NDArray[np.uint8], colours: npt.NDArray[np.uint8]) -> None:
        self.labels = labels
        self.colours = np.ascontiguousarray(colours, dtype=np.uint8)
        nk, nj, ni = labels.shape
        self.image = vtkImageData()
        self.image.SetDimensions(ni, nj, nk)
        self.image.SetOrigin(0.0, 0.0, 0.0)
        self.image.SetSpacing(1.0, 1.0, 1.0)
        self.image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(labels.reshape(-1), deep=False))
        self.reslice = vtkImageReslice()
        self.reslice.SetInputData(self.image)
        self.reslice.SetOutputDimensionality(2)
        self.reslice.SetInterpolationModeToNearestNeighbor()
        self.reslice.SetBackgroundLevel(0)
        self.reslice.AutoCropOutputOff()
        self.reslice.TransformInputSamplingOff()
        self.rgba = vtkImageData()
        self._rgba_values: npt.NDArray[np.uint8] | None = None
        self.actor = vtkImageActor()
        self.actor.SetInputData(self.rgba)
        self.actor.InterpolateOff()
        self.actor.ForceTranslucentOn()
        self.actor.SetPosition(0.0, 0.0, -0.05)  # the camera looks from -z: a hair in front of the grey image
        self._params: tuple[Any, ...] | None = None
        self._shown: tuple[int, int] | None = None
        self._version = 0

    def set_geometry(self, axes: npt.NDArray[np.float64], s0: float, t0: float, nx: int, ny: int, sp: float) -> None:
        params = (axes.round(12).tobytes(), round(s0, 9), round(t0, 9), nx, ny, round(sp, 12))
        if params == self._params:
            return
        self._params = params
        self.reslice.SetResliceAxes(matrix_to_vtk(axes))
        self.reslice.SetOutputSpacing(sp, sp, 1.0)
        self.reslice.SetOutputOrigin(s0, t0, 0.0)
        self.reslice.SetOutputExtent(0, nx - 1, 0, ny - 1, 0, 0)

    def modified(self, colours: npt.NDArray[np.uint8] | None = None) -> None:
        if colours is not None:
            self.colours = np.ascontiguousarray(colours, dtype=np.uint8)
            self._version += 1
        self.image.GetPointData().GetScalars().Modified()
        self.image.Modified()

    def update(self) -> None:
        self.reslice.Update()
        out = self.reslice.GetOutput()
        key = (out.GetMTime(), self._version)
        if key == self._shown:
            return
        nx, ny, _ = out.GetDimensions()
        values = numpy_support.vtk_to_numpy(out.GetPointData().GetScalars()).reshape(-1)
        if self._rgba_values is None or self._rgba_values.shape[0] != values.size:
            self._rgba_values = np.empty((values.size, 4), dtype=np.uint8)
            self.rgba.SetDimensions(nx, ny, 1)
            self.rgba.GetPointData().SetScalars(numpy_support.numpy_to_vtk(self._rgba_values, deep=False))
        elif self.rgba.GetDimensions()[:2] != (nx, ny):
            self.rgba.SetDimensions(nx, ny, 1)
        np.take(self.colours, values, axis=0, out=self._rgba_values)
        self.rgba.SetOrigin(out.GetOrigin())
        self.rgba.SetSpacing(out.GetSpacing())
        self.rgba.GetPointData().GetScalars().Modified()
        self.rgba.Modified()
        self._shown = key
