"""3D rendering of a volume: ray-cast volume rendering and isosurfaces, without Qt.

:class:`VolumeScene` shows one :class:`hilum.dicom.volume.Volume` in true
patient geometry (the prop's user matrix is the volume's affine, so oblique
and gantry-tilted acquisitions are placed exactly, see
:mod:`hilum.render.mpr`'s :class:`VolumeImage`):

* volume rendering with ``vtkGPUVolumeRayCastMapper`` (ray casting in an
  OpenGL shader: on the real GPU where there is one, on Mesa's llvmpipe in
  software where not; ``vtkFixedPointVolumeRayCastMapper`` on the CPU on
  request) and the colour/opacity transfer functions of a :class:`VRPreset`
  (shipped in ``resources/vr_presets.toml``: CT bone, soft tissue, lung,
  angio, MR default; users' own in ``<data dir>/vr_presets.toml``);
* shading (Phong, gradient normals), a clipping box (voxel-index bounds), a
  cut plane (patient space), an isosurface (``vtkFlyingEdges3D``) at a chosen
  threshold;
* level of detail: while the user rotates (:meth:`VolumeScene.interaction`)
  rays are cast on a coarser image and sample grid, so software OpenGL stays
  interactive; the still frame after it is full quality;
* capture to PNG and turntable frames / an animated GIF, offscreen;
* rendering on another thread: every method holds :attr:`VolumeScene.lock`
  (:meth:`VolumeScene.hold`: the process-wide VTK lock of :mod:`hilum.render.gl`,
  as VTK and OpenGL are driven by one thread at a time; the OpenGL context is
  released after each frame), VTK releases the GIL while it renders, so a GUI
  can render frames on a worker thread (:meth:`VolumeScene.render_frame`) and
  keep its event loop running; a change made while a full-quality frame is
  being cast aborts that frame (it is discarded) instead of waiting for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: F401  (GPU/smart volume mapper factories)
from vtkmodules.vtkCommonCore import vtkCommand
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPiecewiseFunction, vtkPlane, vtkPlaneCollection
from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D
from vtkmodules.vtkFiltersSources import vtkSphereSource
from vtkmodules.vtkImagingCore import vtkExtractVOI, vtkImageShrink3D
from vtkmodules.vtkIOImage import vtkPNGWriter
from vtkmodules.vtkRenderingCore import (
    vtkActor,
    vtkColorTransferFunction,
    vtkPolyDataMapper,
    vtkRenderer,
    vtkRenderWindow,
    vtkRenderWindowInteractor,
    vtkVolume,
    vtkVolumeProperty,
    vtkWindowToImageFilter,
)
from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper, vtkGPUVolumeRayCastMapper

from hilum.dicom.volume import Volume
from hilum.render.gl import (
    VTK_LOCK,
    finalize_when_collected,
    finalize_window,
    gl_lock,
    release_context,
    rendering_still,
    weak_callback,
)
from hilum.render.mpr import VolumeImage, capture_window, matrix_to_vtk, offscreen_window
from hilum.resources import resource

__all__ = [
    "INTERACTIVE",
    "LOD",
    "PREVIEW",
    "STILL",
    "VRPreset",
    "VolumeScene",
    "default_preset_id",
    "load_presets",
    "opengl_renderer",
    "save_presets",
    "software_opengl",
]

logger = logging.getLogger(__name__)

USER_PRESETS = "vr_presets.toml"
FIT_FILL = 0.9
"""On reset the volume's bounding box fills this fraction of the pane's limiting dimension."""

_F = TypeVar("_F", bound=Callable[..., Any])


def _held(method: _F) -> _F:
    """Run a :class:`VolumeScene` method holding the scene (see :meth:`VolumeScene.hold`)."""

    @functools.wraps(method)
    def wrapper(self: VolumeScene, *args: Any, **kwargs: Any) -> Any:
        with self.hold():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


# ----------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class VRPreset:
    """Colour and opacity transfer functions with lighting, for one kind of volume.

    ``colour`` points are ``(value, r, g, b)``, ``opacity`` points ``(value, a)``;
    values are modality values (HU), or fractions of the volume's value range
    when ``relative``.  ``scalar_opacity_unit_distance`` (mm) is the path length
    over which an opacity applies, so the look does not depend on voxel size.
    """

    id: str
    name: str
    colour: tuple[tuple[float, float, float, float], ...]
    opacity: tuple[tuple[float, float], ...]
    modality: str = ""
    gradient_opacity: tuple[tuple[float, float], ...] = ()
    relative: bool = False
    shade: bool = True
    ambient: float = 0.2
    diffuse: float = 0.9
    specular: float = 0.2
    specular_power: float = 10.0
    scalar_opacity_unit_distance: float = 1.0

    def __post_init__(self) -> None:
        if len(self.colour) < 2 or len(self.opacity) < 2:
            raise ValueError(f"preset {self.id!r}: colour and opacity need at least two points each")
        for pts, width in ((self.colour, 4), (self.opacity, 2), (self.gradient_opacity, 2)):
            for p in pts:
                if len(p) != width:
                    raise ValueError(f"preset {self.id!r}: a point {p!r} should have {width} numbers")
                if any(not 0.0 <= c <= 1.0 for c in p[1:]):
                    raise ValueError(f"preset {self.id!r}: colours and opacities must lie in 0..1, not {p!r}")
        object.__setattr__(self, "colour", tuple(sorted(tuple(map(float, p)) for p in self.colour)))
        object.__setattr__(self, "opacity", tuple(sorted(tuple(map(float, p)) for p in self.opacity)))
        object.__setattr__(self, "gradient_opacity", tuple(sorted(tuple(map(float, p)) for p in self.gradient_opacity)))

    def absolute(self, value_range: tuple[float, float]) -> VRPreset:
        """The preset with relative values mapped onto ``value_range`` (as is when not relative)."""
        if not self.relative:
            return self
        lo, hi = value_range
        span = (hi - lo) or 1.0
        return replace(
            self,
            relative=False,
            colour=tuple((lo + v * span, r, g, b) for v, r, g, b in self.colour),
            opacity=tuple((lo + v * span, a) for v, a in self.opacity),
        )

    def with_opacity(self, points: Sequence[tuple[float, float]]) -> VRPreset:
        return replace(self, opacity=tuple((float(v), float(a)) for v, a in points))

    def with_colour(self, points: Sequence[tuple[float, float, float, float]]) -> VRPreset:
        return replace(self, colour=tuple(tuple(map(float, p)) for p in points))  # type: ignore[misc]

    def shifted(self, offset: float, scale: float = 1.0) -> VRPreset:
        """Move (and stretch about the first opacity point) every value: window/level-like editing."""
        pivot = self.opacity[0][0]

        def f(v: float) -> float:
            return pivot + (v - pivot) * scale + offset

        return replace(
            self,
            colour=tuple((f(v), r, g, b) for v, r, g, b in self.colour),
            opacity=tuple((f(v), a) for v, a in self.opacity),
        )

    def to_toml_table(self) -> dict[str, Any]:
        d = asdict(self)
        d["colour"] = [list(p) for p in self.colour]
        d["opacity"] = [list(p) for p in self.opacity]
        d["gradient_opacity"] = [list(p) for p in self.gradient_opacity]
        if not self.gradient_opacity:
            del d["gradient_opacity"]
        return d


def _parse_presets(text: str, origin: str) -> dict[str, VRPreset]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{origin}: not valid TOML: {exc}") from exc
    out: dict[str, VRPreset] = {}
    for table in doc.get("preset", []):
        try:
            p = VRPreset(
                id=str(table["id"]),
                name=str(table.get("name", table["id"])),
                colour=tuple(tuple(x) for x in table["colour"]),  # type: ignore[misc]
                opacity=tuple(tuple(x) for x in table["opacity"]),  # type: ignore[misc]
                modality=str(table.get("modality", "")),
                gradient_opacity=tuple(tuple(x) for x in table.get("gradient_opacity", ())),  # type: ignore[misc]
                relative=bool(table.get("relative", False)),
                shade=bool(table.get("shade", True)),
                ambient=float(table.get("ambient", 0.2)),
                diffuse=float(table.get("diffuse", 0.9)),
                specular=float(table.get("specular", 0.2)),
                specular_power=float(table.get("specular_power", 10.0)),
                scalar_opacity_unit_distance=float(table.get("scalar_opacity_unit_distance", 1.0)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{origin}: preset {table.get('id', '?')!r} is incomplete: {exc}") from exc
        out[p.id] = p
    return out


def load_presets(data_dir: str | os.PathLike[str] | None = None) -> dict[str, VRPreset]:
    """The shipped presets, then the user's from ``<data_dir>/vr_presets.toml`` (same id replaces)."""
    path = resource("vr_presets.toml")
    presets = _parse_presets(path.read_text(encoding="utf-8"), str(path))
    if data_dir is not None:
        user = Path(data_dir) / USER_PRESETS
        if user.is_file():
            presets.update(_parse_presets(user.read_text(encoding="utf-8"), str(user)))
    return presets


def save_presets(presets: Sequence[VRPreset], path: str | os.PathLike[str]) -> Path:
    """Write presets (e.g. edited in the transfer-function editor) as a user preset file."""
    import tomli_w

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(tomli_w.dumps({"preset": [p.to_toml_table() for p in presets]}), encoding="utf-8")
    return out


def default_preset_id(volume: Volume) -> str:
    """CT bone for CT, MR default (relative values) for anything else."""
    return "ct-bone" if volume.modality.upper() == "CT" else "mr-default"


# ----------------------------------------------------------------------------- the scene

SOFTWARE_MAX_VOXELS = 256**3
"""With software OpenGL the 3D view renders volumes above this many voxels from a block-averaged
copy (a 512 x 512 x 600 CT of 0.7 x 0.7 x 0.5 mm becomes 256 x 256 x 200): at full resolution
a frame there costs seconds and the first one tens of seconds (gradients for shading over
157 M voxels)."""
HARDWARE_MAX_VOXELS = 1024**3


@functools.cache
def opengl_renderer() -> str:
    """The OpenGL renderer string of an offscreen context (e.g. ``"llvmpipe (LLVM 15.0.6, 256 bits)"``
    or an NVIDIA/AMD name); probed once per process, "" when no context could be made."""
    try:
        with gl_lock():
            win = offscreen_window((4, 4))
            win.AddRenderer(vtkRenderer())
            win.Render()
            report = win.ReportCapabilities()
            win.Finalize()
    except Exception:  # pragma: no cover - no OpenGL at all
        logger.exception("could not create an OpenGL context")
        return ""
    for line in report.splitlines():
        if line.lower().startswith("opengl renderer string"):
            return line.split(":", 1)[1].strip()
    return ""


def software_opengl() -> bool:
    """True when OpenGL is a software rasteriser (Mesa llvmpipe/softpipe, swrast, Microsoft GDI)."""
    name = opengl_renderer().lower()
    return not name or any(k in name for k in ("llvmpipe", "softpipe", "swrast", "software", "gdi generic"))


@dataclass(frozen=True)
class LOD:
    """Sampling of one quality level.

    ``image_sample_distance``: 1 casts one ray per pixel, 2 one per 2x2 pixels (the image is
    interpolated between them).  Along a ray, samples are ``sample_factor`` times the mean
    voxel size apart, but never more than ``max_samples`` across the volume's diagonal, so a
    600-slice volume costs what a 256^3 one does, not 2-3 times more.
    """

    image_sample_distance: float = 1.0
    sample_factor: float = 0.5
    max_samples: int = 1000


STILL = LOD(1.0, 0.5, 1000)
"""Full quality: a ray per pixel, two samples per voxel (at most 1000 along the diagonal)."""
INTERACTIVE = LOD(2.0, 1.0, 400)
"""While rotating: one ray per 2x2 pixels, one sample per voxel (at most 400 along the diagonal)."""
PREVIEW = LOD(3.0, 1.5, 300)
"""The first look at a new volume (:meth:`VolumeScene.render_preview`), unshaded: one ray per 3x3
pixels, a sample every 1.5 voxels (at most 300 along the diagonal).  256^3 CT at 928 x 745 in
software OpenGL: 0.17-0.22 s, where the interactive level took 0.38 s on the same (busy) machine."""


@dataclass
class _Iso:
    threshold: float
    colour: tuple[float, float, float]
    opacity: float
    shrink: int
    actor: vtkActor = field(repr=False)
    extract: vtkExtractVOI = field(repr=False)


class VolumeScene:
    """A 3D view of one volume (volume rendering and/or an isosurface), offscreen or in a given window.

    ``mapper``: ``"gpu"`` (``vtkGPUVolumeRayCastMapper``, ray casting in an OpenGL
    shader), ``"cpu"`` (``vtkFixedPointVolumeRayCastMapper``, multi-threaded on the
    CPU) or ``"auto"`` (default): the GPU mapper on a hardware OpenGL driver, the
    CPU mapper on a software one (Mesa llvmpipe), where it was measured 4-10x
    faster (see :func:`software_opengl`).  ``HILUM_VR_MAPPER=gpu|cpu`` overrides.

    ``max_voxels``: a bigger volume is rendered from a block-averaged copy
    (:meth:`Volume.downsampled`; default :data:`SOFTWARE_MAX_VOXELS` with software
    OpenGL, :data:`HARDWARE_MAX_VOXELS` on a GPU, 0 = never).  ``volume`` is then
    that copy (clip-box indices refer to it), ``full_volume`` the original.

    While interacting the image sample distance starts at the interactive
    :class:`LOD` and adapts, frame by frame, so that frames take about
    ``1 / interactive_fps`` s (coarser on a busy or slow machine, never finer
    than the LOD's; 0 turns this off).
    """

    def __init__(
        self,
        volume: Volume | VolumeImage,
        *,
        render_window: vtkRenderWindow | None = None,
        size: tuple[int, int] = (512, 512),
        preset: str | VRPreset | None = None,
        presets: dict[str, VRPreset] | None = None,
        mapper: str = "auto",
        still: LOD = STILL,
        interactive: LOD = INTERACTIVE,
        max_voxels: int | None = None,
        interactive_fps: float = 12.0,
    ) -> None:
        full = volume.volume if isinstance(volume, VolumeImage) else volume
        if mapper == "auto":
            mapper = os.environ.get("HILUM_VR_MAPPER", "").strip().lower() or ("cpu" if software_opengl() else "gpu")
        if max_voxels is None:
            max_voxels = SOFTWARE_MAX_VOXELS if software_opengl() else HARDWARE_MAX_VOXELS
        factors = full.factors_for(max_voxels) if max_voxels > 0 else (1, 1, 1)
        self.full_volume = full
        self.factors = factors
        if factors != (1, 1, 1):
            logger.info("3D view of a %s volume shrunk by %s for rendering", full.size, factors)
            self.data = VolumeImage(full.downsampled(factors))
        else:
            self.data = volume if isinstance(volume, VolumeImage) else VolumeImage(volume)
        self.volume = self.data.volume
        self.presets = presets if presets is not None else load_presets()
        self._own_window = render_window is None
        self.render_window = render_window or offscreen_window(size)
        self._closed = False
        self._finalizer = finalize_when_collected(self, self.render_window) if self._own_window else None
        self.renderer = vtkRenderer()
        self.renderer.SetBackground(0.0, 0.0, 0.0)
        self.render_window.AddRenderer(self.renderer)
        self.still_lod = still
        self.interactive_lod = interactive
        self.preview_lod = PREVIEW
        self._interacting = False
        self.lock: threading.RLock = VTK_LOCK  # type: ignore[assignment]
        """Held while the scene renders or changes (:meth:`hold`): the process-wide VTK lock
        (:mod:`hilum.render.gl`), as VTK and OpenGL may be driven by one thread at a time."""
        self._rendering: str | None = None  # "still" / "interactive" while a frame is being rendered
        self._fit_view: str | None = None  # the reset view while the camera still fits the volume to the pane
        self.last_frame_aborted = False

        if mapper == "cpu":
            self.mapper: Any = vtkFixedPointVolumeRayCastMapper()
        elif mapper == "gpu":
            self.mapper = vtkGPUVolumeRayCastMapper()
            self.mapper.SetLockSampleDistanceToInputSpacing(0)
        else:
            raise ValueError(f"mapper must be 'auto', 'gpu' or 'cpu', not {mapper!r}")
        self.mapper_kind = mapper
        self.mapper.SetInputData(self._physical_image())
        self.mapper.SetBlendModeToComposite()
        self.mapper.SetAutoAdjustSampleDistances(0)
        self.property = vtkVolumeProperty()
        self.property.SetInterpolationTypeToLinear()
        self.property.IndependentComponentsOn()
        self.prop = vtkVolume()
        self.prop.SetMapper(self.mapper)
        self.prop.SetProperty(self.property)
        self.prop.SetUserMatrix(self._direction_matrix())
        self.renderer.AddVolume(self.prop)

        self.interactive_fps = interactive_fps
        self._adaptive_isd: float | None = None
        self.renderer.AddObserver(vtkCommand.EndEvent, weak_callback(self._after_render))
        self._cut: vtkPlane | None = None
        self._clip_box: tuple[int, int, int, int, int, int] | None = None
        self._iso: _Iso | None = None
        self._cursor: tuple[vtkSphereSource, vtkActor] | None = None
        self.preset: VRPreset = self.presets["ct-bone"]
        self.set_preset(preset if preset is not None else default_preset_id(self.volume))
        self._apply_lod(still)
        self.reset_camera()

    def _physical_image(self) -> vtkImageData:
        """The volume's scalars (shared, not copied) on a grid with its voxel size in mm, so that
        sample distances and opacity unit distances are millimetres for every mapper."""
        image = vtkImageData()
        image.SetDimensions(*self.volume.size)
        image.SetSpacing(*map(float, self.volume.spacing))
        image.SetOrigin(0.0, 0.0, 0.0)
        image.GetPointData().SetScalars(self.data.image.GetPointData().GetScalars())
        return image

    def _direction_matrix(self) -> Any:
        """Rotation (and, for a tilted gantry, shear) plus translation to patient space."""
        m = np.eye(4)
        m[:3, :3] = self.volume.direction
        m[:3, 3] = self.volume.origin
        return matrix_to_vtk(m)

    # --- transfer functions
    @_held
    def set_preset(self, preset: str | VRPreset) -> VRPreset:
        """Apply a preset (an id of :attr:`presets` or a :class:`VRPreset`, e.g. from the editor)."""
        if isinstance(preset, str):
            if preset not in self.presets:
                raise KeyError(f"no volume-rendering preset {preset!r} (have {', '.join(sorted(self.presets))})")
            preset = self.presets[preset]
        self.preset = preset
        p = preset.absolute(self.data.value_range)
        ctf = vtkColorTransferFunction()
        for v, r, g, b in p.colour:
            ctf.AddRGBPoint(v, r, g, b)
        otf = vtkPiecewiseFunction()
        for v, a in p.opacity:
            otf.AddPoint(v, a)
        self.property.SetColor(ctf)
        self.property.SetScalarOpacity(otf)
        if p.gradient_opacity:
            gtf = vtkPiecewiseFunction()
            for v, a in p.gradient_opacity:
                gtf.AddPoint(v, a)
            self.property.SetGradientOpacity(gtf)
        else:
            self.property.DisableGradientOpacityOn()
        self.property.SetScalarOpacityUnitDistance(p.scalar_opacity_unit_distance)
        self.property.SetAmbient(p.ambient)
        self.property.SetDiffuse(p.diffuse)
        self.property.SetSpecular(p.specular)
        self.property.SetSpecularPower(p.specular_power)
        self.property.SetShade(1 if p.shade else 0)
        return preset

    @property
    def shading(self) -> bool:
        return bool(self.property.GetShade())

    @_held
    def set_shading(self, on: bool) -> None:
        self.property.SetShade(1 if on else 0)

    @_held
    def show_volume(self, visible: bool) -> None:
        self.prop.SetVisibility(visible)

    # --- clipping
    @_held
    def set_clip_box(self, box: Sequence[float] | None) -> None:
        """Show only voxels with ``i0 <= i <= i1``, ``j0 <= j <= j1``, ``k0 <= k <= k1``
        (``box = (i0, i1, j0, j1, k0, k1)``, clamped to the volume); None removes the box."""
        if box is None:
            self._clip_box = None
            self.mapper.SetCropping(0)
        else:
            n = self.volume.size
            b = [float(x) for x in box]
            lo = [max(0.0, min(b[2 * a], b[2 * a + 1])) for a in range(3)]
            hi = [min(float(n[a] - 1), max(b[2 * a], b[2 * a + 1])) for a in range(3)]
            self._clip_box = tuple(int(round(x)) for pair in zip(lo, hi, strict=True) for x in pair)  # type: ignore[assignment]
            self.mapper.SetCropping(1)
            sp = self.volume.spacing  # cropping planes are in the mapper's data coordinates (mm from voxel 0)
            self.mapper.SetCroppingRegionPlanes(
                *[x * float(sp[a]) for a, pair in enumerate(zip(lo, hi, strict=True)) for x in pair]
            )
            self.mapper.SetCroppingRegionFlagsToSubVolume()
        if self._iso is not None:
            self._update_iso_extract()

    @_held
    def clip_box_patient(self, lo: Sequence[float], hi: Sequence[float]) -> None:
        """A clipping box from two patient-space corners (the voxel box that covers them)."""
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        ijk = self.volume.world_to_voxel(corners)
        mn, mx = np.floor(ijk.min(axis=0)), np.ceil(ijk.max(axis=0))
        self.set_clip_box((mn[0], mx[0], mn[1], mx[1], mn[2], mx[2]))

    @property
    def clip_box(self) -> tuple[int, int, int, int, int, int] | None:
        return self._clip_box

    @_held
    def set_cut_plane(self, origin: npt.ArrayLike | None, normal: npt.ArrayLike | None = None) -> None:
        """Cut the volume (and the surface) with a patient-space plane, keeping the side the
        ``normal`` points to; ``None`` removes the cut."""
        planes = vtkPlaneCollection()
        if origin is None:
            self._cut = None
        else:
            if normal is None:
                raise ValueError("a cut plane needs a normal")
            plane = vtkPlane()
            plane.SetOrigin(*map(float, np.asarray(origin, dtype=np.float64).reshape(3)))
            n = np.asarray(normal, dtype=np.float64)
            plane.SetNormal(*(n / np.linalg.norm(n)))
            self._cut = plane
            planes.AddItem(plane)
        self.mapper.SetClippingPlanes(planes)
        if self._iso is not None:
            self._iso.actor.GetMapper().SetClippingPlanes(planes)

    # --- isosurface
    @_held
    def set_isosurface(
        self,
        threshold: float | None,
        *,
        colour: tuple[float, float, float] = (0.95, 0.92, 0.85),
        opacity: float = 1.0,
        shrink: int = 1,
    ) -> int:
        """Show the surface where values cross ``threshold`` (``vtkFlyingEdges3D``), or remove it
        with None.  ``shrink`` > 1 subsamples the volume first (faster, coarser).  Returns
        the number of triangles."""
        if self._iso is not None:
            self.renderer.RemoveActor(self._iso.actor)
            self._iso = None
        if threshold is None:
            return 0
        extract = vtkExtractVOI()
        extract.SetInputData(self.data.image)
        source: Any = extract
        if shrink > 1:
            sh = vtkImageShrink3D()
            sh.SetShrinkFactors(shrink, shrink, shrink)
            sh.AveragingOn()
            sh.SetInputConnection(extract.GetOutputPort())
            source = sh
        fe = vtkFlyingEdges3D()
        fe.SetInputConnection(source.GetOutputPort())
        fe.SetValue(0, float(threshold))
        fe.ComputeNormalsOn()
        fe.ComputeScalarsOff()
        mapper = vtkPolyDataMapper()
        mapper.SetInputConnection(fe.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtkActor()
        actor.SetMapper(mapper)
        actor.SetUserMatrix(self.data.patient_matrix)
        prop = actor.GetProperty()
        prop.SetColor(*colour)
        prop.SetOpacity(opacity)
        prop.SetSpecular(0.3)
        prop.SetSpecularPower(20)
        self._iso = _Iso(float(threshold), colour, opacity, shrink, actor, extract)
        self._update_iso_extract()
        if self._cut is not None:
            planes = vtkPlaneCollection()
            planes.AddItem(self._cut)
            mapper.SetClippingPlanes(planes)
        self.renderer.AddActor(actor)
        fe.Update()
        return int(fe.GetOutput().GetNumberOfCells())

    def _update_iso_extract(self) -> None:
        assert self._iso is not None
        n = self.volume.size
        box = self._clip_box or (0, n[0] - 1, 0, n[1] - 1, 0, n[2] - 1)
        self._iso.extract.SetVOI(*box)
        self._iso.extract.Modified()

    @property
    def isosurface_threshold(self) -> float | None:
        return self._iso.threshold if self._iso else None

    def isosurface_polydata(self) -> Any:
        """The current isosurface (vtkPolyData in voxel-index space; the actor maps it to patient mm)."""
        if self._iso is None:
            return None
        m = self._iso.actor.GetMapper()
        m.Update()
        return m.GetInput()

    # --- the 3D cursor
    @_held
    def set_cursor(self, point: npt.ArrayLike | None, *, radius: float | None = None) -> None:
        """Show the MPR's 3D cursor as a small sphere at a patient point (None hides it)."""
        if point is None:
            if self._cursor is not None:
                self._cursor[1].SetVisibility(False)
            return
        if self._cursor is None:
            src = vtkSphereSource()
            src.SetThetaResolution(16)
            src.SetPhiResolution(12)
            mapper = vtkPolyDataMapper()
            mapper.SetInputConnection(src.GetOutputPort())
            actor = vtkActor()
            actor.SetMapper(mapper)
            actor.GetProperty().SetColor(1.0, 0.85, 0.2)
            self.renderer.AddActor(actor)
            self._cursor = (src, actor)
        src, actor = self._cursor
        src.SetRadius(radius or 2.5 * float(np.min(self.volume.spacing)))
        src.SetCenter(*map(float, np.asarray(point, dtype=np.float64).reshape(3)))
        actor.SetVisibility(True)

    # --- camera
    VIEWS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
        # name: (direction from the focal point to the camera, view up), patient LPS
        "anterior": ((0.0, -1.0, 0.0), (0.0, 0.0, 1.0)),
        "posterior": ((0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
        "left": ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
        "right": ((-1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
        "superior": ((0.0, 0.0, 1.0), (0.0, -1.0, 0.0)),
        "inferior": ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0)),
    }

    @_held
    def reset_camera(self, view: str = "anterior", fill: float = FIT_FILL) -> None:
        """Look at the whole volume from the patient's ``view`` side (anterior: as facing the patient),
        from the distance at which its bounding box (the eight corners, in perspective) fills
        ``fill`` of the pane's limiting dimension (VTK's own ``ResetCamera`` fits the bounding
        sphere, which leaves a CT at about a quarter of the pane).  Until the camera is moved,
        :meth:`fit_to_window` keeps the fit when the pane changes size."""
        if view not in self.VIEWS:
            raise ValueError(f"view must be one of {sorted(self.VIEWS)}, not {view!r}")
        direction, up = (np.asarray(v, dtype=np.float64) for v in self.VIEWS[view])
        c = self.volume.center
        rel = self.volume.corners() - c
        right = np.cross(-direction, up)
        w, h = (max(int(v), 1) for v in self.render_window.GetSize())
        view_angle = 30.0
        t = math.tan(math.radians(view_angle / 2.0)) * float(fill)
        # a corner at depth z in front of the focal point, x/y off the axis, is inside the
        # filled part of the view when the camera is at least z + |x|/(t*aspect), z + |y|/t away
        need = rel @ direction + np.maximum(np.abs(rel @ right) / (t * w / h), np.abs(rel @ up) / t)
        distance = max(float(need.max()), 1e-3)
        cam = self.renderer.GetActiveCamera()
        cam.SetFocalPoint(*c)
        cam.SetPosition(*(c + distance * direction))
        cam.SetViewUp(*up)
        cam.SetViewAngle(view_angle)
        self.renderer.ResetCameraClippingRange()
        self._fit_view = view

    @_held
    def fit_to_window(self) -> bool:
        """After a resize: fit the volume again if the user has not moved the camera since the
        last reset (True), else leave the camera alone (False)."""
        if self._fit_view is None:
            return False
        self.reset_camera(self._fit_view)
        return True

    def projected_box(self) -> tuple[float, float, float, float]:
        """The volume's bounding box on screen: ``(x0, y0, x1, y1)`` in display pixels (y up)."""
        r = self.renderer
        xs, ys = [], []
        for p in self.volume.corners():
            r.SetWorldPoint(float(p[0]), float(p[1]), float(p[2]), 1.0)
            r.WorldToDisplay()
            x, y, _ = r.GetDisplayPoint()
            xs.append(x)
            ys.append(y)
        return min(xs), min(ys), max(xs), max(ys)

    @_held
    def rotate(self, azimuth: float = 0.0, elevation: float = 0.0) -> None:
        """Orbit the camera about the focal point (degrees)."""
        self._fit_view = None
        cam = self.renderer.GetActiveCamera()
        cam.Azimuth(azimuth)
        cam.Elevation(elevation)
        cam.OrthogonalizeViewUp()
        self.renderer.ResetCameraClippingRange()

    @_held
    def zoom(self, factor: float) -> None:
        self._fit_view = None
        self.renderer.GetActiveCamera().Zoom(factor)
        self.renderer.ResetCameraClippingRange()

    @_held
    def pan(self, dx: float, dy: float) -> None:
        """Move the camera and focal point by ``(dx, dy)`` mm along the screen axes."""
        self._fit_view = None
        cam = self.renderer.GetActiveCamera()
        up = np.asarray(cam.GetViewUp())
        dop = np.asarray(cam.GetDirectionOfProjection())
        right = np.cross(dop, up)
        delta = dx * right + dy * up
        cam.SetFocalPoint(*(np.asarray(cam.GetFocalPoint()) + delta))
        cam.SetPosition(*(np.asarray(cam.GetPosition()) + delta))
        self.renderer.ResetCameraClippingRange()

    # --- level of detail
    def _apply_lod(self, lod: LOD) -> None:
        corners = self.volume.corners()
        diagonal = float(np.linalg.norm(corners.max(axis=0) - corners.min(axis=0)))
        sample = max(lod.sample_factor * float(np.mean(self.volume.spacing)), diagonal / max(lod.max_samples, 1))
        m = self.mapper
        m.SetImageSampleDistance(lod.image_sample_distance)
        m.SetSampleDistance(sample)
        if isinstance(m, vtkFixedPointVolumeRayCastMapper):
            m.SetInteractiveSampleDistance(sample)

    @_held
    def set_interacting(self, interacting: bool) -> None:
        """Switch to the interactive level of detail (True) or back to full quality (False)."""
        if interacting != self._interacting:
            self._interacting = interacting
            self._apply_lod(self.interactive_lod if interacting else self.still_lod)
            if interacting and self._adaptive_isd is not None:
                self.mapper.SetImageSampleDistance(self._adaptive_isd)

    def _after_render(self, *_: object) -> None:
        """While interacting, steer the image sample distance towards ``interactive_fps``:
        frame time scales with the number of rays, i.e. with 1 / distance squared."""
        if not self._interacting or self.interactive_fps <= 0:
            return
        took = float(self.renderer.GetLastRenderTimeInSeconds())
        if took <= 0:
            return
        isd = float(self.mapper.GetImageSampleDistance())
        wanted = isd * math.sqrt(took * self.interactive_fps)
        wanted = float(np.clip(0.7 * isd + 0.3 * wanted, self.interactive_lod.image_sample_distance, 6.0))
        self._adaptive_isd = wanted
        self.mapper.SetImageSampleDistance(wanted)

    @contextlib.contextmanager
    def interaction(self) -> Iterator[None]:
        """Interactive quality inside the block; one full-quality render after it."""
        self.set_interacting(True)
        try:
            yield
        finally:
            self.set_interacting(False)
            self.render()

    def attach_interactor(self, interactor: vtkRenderWindowInteractor) -> None:
        """Drop to the interactive level of detail while the user drags (Start/EndInteractionEvent)."""
        interactor.AddObserver(vtkCommand.StartInteractionEvent, lambda *_: self.set_interacting(True))

        def end(*_: object) -> None:
            self.set_interacting(False)
            self.render()

        interactor.AddObserver(vtkCommand.EndInteractionEvent, end)

    # --- rendering, on any one thread at a time
    @contextlib.contextmanager
    def hold(self, *, abort: bool = True) -> Iterator[None]:
        """Hold the scene (re-entrant; the process-wide VTK lock, :func:`hilum.render.gl.gl_lock`)
        to change (or, ``abort=False``, render) it.  To change it while another thread renders a
        full-quality frame, that frame is aborted (:attr:`last_frame_aborted`) rather than
        waited for; an interactive frame (a fraction of a second at most) is waited for."""
        with gl_lock(abort=abort):
            yield

    @property
    def rendering(self) -> str | None:
        """``"still"`` or ``"interactive"`` while a frame is being rendered, else None."""
        return self._rendering

    def render(self) -> bool:
        """Render a frame; False when it was aborted by a change from another thread."""
        with self.hold(abort=False):
            if self._closed:
                self.last_frame_aborted = True
                return False
            self._rendering = "interactive" if self._interacting else "still"
            try:
                if self._rendering == "still":
                    with rendering_still(self.render_window):
                        self.render_window.Render()
                else:
                    self.render_window.Render()
            finally:
                self._rendering = None
            self.last_frame_aborted = bool(self.render_window.GetAbortRender())
            self.render_window.SetAbortRender(0)
            self._release_context()
            return not self.last_frame_aborted

    def render_preview(self, size: tuple[int, int] | None = None) -> npt.NDArray[np.uint8] | None:
        """A quick first look (like :meth:`render_frame`, rendered as an interactive frame: a change
        waits for it rather than aborting it): the :data:`PREVIEW` level of detail without shading,
        so no gradients are computed yet (0.1-0.2 s where the first shaded full-quality frame of a
        256^3 CT takes 1.2-1.5 s in software); the scene is left as it was."""
        with self.hold(abort=False):
            shade, interacting, adaptive = self.property.GetShade(), self._interacting, self._adaptive_isd
            self.property.SetShade(0)
            self._interacting = True
            self._apply_lod(self.preview_lod)
            try:
                return self.render_frame(size)
            finally:
                self.property.SetShade(shade)
                self._interacting, self._adaptive_isd = interacting, adaptive
                self._apply_lod(self.interactive_lod if interacting else self.still_lod)
                if interacting and adaptive is not None:
                    self.mapper.SetImageSampleDistance(adaptive)

    def _release_context(self) -> None:
        """Leave the OpenGL context current in no thread, so that the next render may run on another."""
        release_context(self.render_window)

    def render_frame(self, size: tuple[int, int] | None = None) -> npt.NDArray[np.uint8] | None:
        """Render (at ``size`` pixels, keeping the fit of :meth:`reset_camera` on a resize) and
        return the RGB pixels, or None when the frame was aborted.  Callable from a worker
        thread: the OpenGL context is released afterwards, for the next thread to take."""
        with self.hold(abort=False):
            if size is not None and tuple(self.render_window.GetSize()) != tuple(size):
                self.render_window.SetSize(*size)
                self.fit_to_window()
            if not self.render():
                return None
            try:
                return capture_window(self.render_window)
            finally:
                self._release_context()

    @_held
    def capture(self) -> npt.NDArray[np.uint8]:
        """Render and return RGB pixels (top row first)."""
        self._check_open()
        self.render()
        try:
            return capture_window(self.render_window)
        finally:
            self._release_context()

    @_held
    def save_png(self, path: str | os.PathLike[str]) -> Path:
        """Render and write the view as a PNG."""
        self._check_open()
        self.render()
        grab = vtkWindowToImageFilter()
        grab.SetInput(self.render_window)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        writer = vtkPNGWriter()
        writer.SetInputConnection(grab.GetOutputPort())
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        writer.SetFileName(str(out))
        writer.Write()
        self._release_context()
        return out

    def turntable(self, frames: int = 36, *, degrees: float = 360.0) -> Iterator[npt.NDArray[np.uint8]]:
        """Frames of a full turn about the view-up axis (the camera comes back where it started)."""
        if frames < 1:
            raise ValueError("a turntable needs at least one frame")
        step = degrees / frames
        for _ in range(frames):
            yield self.capture()
            self.rotate(azimuth=step)

    def save_turntable(
        self, path: str | os.PathLike[str], frames: int = 36, *, degrees: float = 360.0, fps: float = 12.0
    ) -> Path:
        """A turntable movie: an animated GIF when ``path`` ends in ``.gif``, else a folder of PNG frames."""
        out = Path(path)
        images = list(self.turntable(frames, degrees=degrees))
        if out.suffix.lower() == ".gif":
            from PIL import Image

            pics = [Image.fromarray(a) for a in images]
            out.parent.mkdir(parents=True, exist_ok=True)
            pics[0].save(out, save_all=True, append_images=pics[1:], duration=int(1000 / fps), loop=0)
            return out
        from PIL import Image

        out.mkdir(parents=True, exist_ok=True)
        width = max(3, int(math.log10(frames)) + 1)
        for i, a in enumerate(images):
            Image.fromarray(a).save(out / f"frame_{i:0{width}d}.png")
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the 3D scene is closed")

    def close(self) -> None:
        """Leave the render window and (when the scene made it) free it
        (:func:`hilum.render.gl.finalize_window`); a render afterwards does nothing.  Stop any
        thread that renders the scene first."""
        with self.hold():
            if self._closed:
                return
            self._closed = True
            self.render_window.RemoveRenderer(self.renderer)  # releases the props' graphics resources
            if self._own_window:
                finalize_window(self.render_window)
        if self._finalizer is not None:
            self._finalizer.detach()
