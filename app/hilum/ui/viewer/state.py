"""One viewport's state and logic, headless (no Qt): what the widget binds.

A :class:`ViewportState` holds a :class:`~hilum.dicom.stack_load.SeriesVolume`
(which may still be loading), the slice index, the VOI (window), the view
transform (zoom, pan, rotation, flips), invert, cine and the annotations. It
turns the current slice into 8-bit display values through the one grayscale
pipeline (:mod:`hilum.dicom.pixels`) and knows the geometry the overlays need:
the image → canvas matrix, orientation letters of the four edges, the scale
bar, the pixel probe. Models emit, views subscribe (STYLE.md §4):
``state.subscribe(callback)`` gets ``callback(state, what)`` with ``what`` one
of ``volume``, ``index``, ``window``, ``view``, ``cine``, ``loaded``,
``measurements`` (annotations, the draft, the selection), ``text`` (a text
annotation asks for its text: :attr:`ViewportState.text_request`), ``overlays``.

Annotations live in :attr:`ViewportState.annotations`, an
:class:`~hilum.dicom.annotations.AnnotationSet`: the study viewer gives all its
viewports its one set (:meth:`ViewportState.set_annotations`), so an annotation
drawn, moved or deleted in one viewport repaints every viewport showing that
frame; a viewport on its own (the curved MPR view) keeps a set of its own.

Overlay planes (60xx, :mod:`hilum.dicom.overlays`) are burnt into the 8-bit
display values by :meth:`ViewportState.render` / :meth:`ViewportState.render_rgb32`
(the one display pipeline of the viewport, so exports show them too) while
:attr:`ViewportState.show_overlay_planes` is set (the default). As DCMTK does,
they are drawn after the whole grey transform, the user's *invert* included:
graphics stay at the maximum display value (white) on an inverted image too,
where an inverted overlay would vanish into a white background.

Image coordinates are ``(x, y) = (column, row)`` of pixel centres
(:mod:`hilum.dicom.geometry`); canvas coordinates are widget pixels, y down.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.pixels import apply_color_lut

from hilum.dicom.annotations import Annotation, AnnotationSet, value_lines
from hilum.dicom.geometry import PlaneGeometry, orientation_letters
from hilum.dicom.overlays import OverlayLayer, composite, frame_layers, read_native_frame
from hilum.dicom.pixels import DisplayTransform, Window, to_uint8_color
from hilum.dicom.stack import FrameInfo
from hilum.dicom.stack_load import SeriesVolume
from hilum.dicom.stack_measure import modality_unit

__all__ = ["CANVAS_EDGES", "ProbeResult", "ViewTransform", "ViewportState", "nice_scale_length", "window_text"]

logger = logging.getLogger(__name__)

Listener = Callable[["ViewportState", str], None]
CANVAS_EDGES = ("left", "right", "top", "bottom")
MIN_ZOOM, MAX_ZOOM = 0.05, 64.0


@dataclass
class ViewTransform:
    """Zoom (1 = fit the canvas), pan (canvas px), rotation (degrees clockwise), flips.

    The flips act on the screen after rotation, so "flip horizontal" always
    mirrors left/right as the user sees it.
    """

    zoom: float = 1.0
    pan_x: float = 0.0
    pan_y: float = 0.0
    rotation: float = 0.0
    flip_h: bool = False
    flip_v: bool = False

    def matrix(
        self, canvas: tuple[float, float], image: tuple[int, int], spacing: tuple[float, float]
    ) -> npt.NDArray[np.float64]:
        """3x3 matrix mapping image ``(x, y, 1)`` to canvas coordinates.

        *image* is ``(columns, rows)``, *spacing* ``(row spacing, column
        spacing)`` so non-square pixels are shown with their true aspect.
        """
        w, h = float(canvas[0]), float(canvas[1])
        cols, rows = image
        dr, dc = spacing
        t = math.radians(self.rotation)
        c, s = math.cos(t), math.sin(t)
        width_mm, height_mm = cols * dc, rows * dr
        bw = abs(width_mm * c) + abs(height_mm * s)
        bh = abs(width_mm * s) + abs(height_mm * c)
        fit = min(w / bw, h / bh) if bw > 0 and bh > 0 and w > 0 and h > 0 else 1.0
        scale = fit * self.zoom
        centre = np.array([[1, 0, -(cols - 1) / 2.0], [0, 1, -(rows - 1) / 2.0], [0, 0, 1]])
        mm = np.diag([dc, dr, 1.0])
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        flip = np.diag([-1.0 if self.flip_h else 1.0, -1.0 if self.flip_v else 1.0, 1.0])
        zoom = np.diag([scale, scale, 1.0])
        to_canvas = np.array([[1, 0, w / 2.0 + self.pan_x], [0, 1, h / 2.0 + self.pan_y], [0, 0, 1]])
        return to_canvas @ zoom @ flip @ rot @ mm @ centre


@dataclass(frozen=True)
class ProbeResult:
    """The pixel under the cursor: indices, stored and modality value, patient position."""

    column: int
    row: int
    stored: Any
    value: float | tuple[int, ...]
    unit: str
    patient: tuple[float, float, float] | None

    def text(self) -> str:
        v = self.value if isinstance(self.value, tuple) else f"{self.value:.1f}".rstrip("0").rstrip(".")
        u = f" {self.unit}" if self.unit else ""
        pos = ""
        if self.patient is not None:
            pos = " ({:.1f}, {:.1f}, {:.1f}) mm".format(*self.patient)
        return f"[{self.column}, {self.row}] {v}{u}{pos}"


_GREY_TO_RGB32 = (np.uint32(0xFF000000) | (np.arange(256, dtype=np.uint32) * np.uint32(0x010101))).astype(np.uint32)


def rgb32_of(img: np.ndarray) -> np.ndarray:
    """uint8 grey (H×W) or RGB (H×W×3) → 0xFFRRGGBB uint32 (what a raster painter draws fastest)."""
    if img.ndim == 2:
        return np.take(_GREY_TO_RGB32, img)
    rgb = img.astype(np.uint32)
    return np.uint32(0xFF000000) | (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def nice_scale_length(mm_per_px: float, target_px: float) -> float:
    """A round length (1, 2, 5 × 10^n mm) whose bar is at most about *target_px* long."""
    if mm_per_px <= 0:
        return 0.0
    raw = mm_per_px * target_px
    exp = math.floor(math.log10(raw))
    best = 10.0**exp
    for m in (1, 2, 5, 10):
        if m * 10.0**exp <= raw:
            best = m * 10.0**exp
    return best


def window_text(center: float, width: float) -> tuple[str, str]:
    """Centre and width as the overlay shows them: as many decimals as the width needs.

    A CT or a dragged MR window reads in whole units ("W 707 L 204", not "W 706.892 L 203.676");
    a narrow window (PET in SUV, a parametric map, normalised data) keeps what tells its values
    apart: one decimal below a width of 100, two below 10. Trailing zeros go.
    """
    decimals = 2 if width < 10 else 1 if width < 100 else 0

    def fmt(v: float) -> str:
        text = f"{v:.{decimals}f}"
        if decimals:
            text = text.rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text

    return fmt(center), fmt(width)


class ViewportState:
    """Headless state of one viewport (see the module docstring)."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.volume: SeriesVolume | None = None
        self.index = 0
        self.window: Window | None = None
        """The VOI the user chose; None = each frame's header VOI (its first window or VOI LUT)."""
        self.window_label = ""
        self.view = ViewTransform()
        self.invert = False
        self.smooth = True
        self.cine_fps = 15.0
        self.cine_playing = False
        self._cine_accum = 0.0
        self.annotations = AnnotationSet()
        """The annotations this viewport paints (those of its frame): the viewer's one set of the study."""
        self._annotations_unsub = self.annotations.subscribe(self._on_annotations)
        self._shown: set[str] = set()  # annotations on the frame last painted
        self._values: dict[str, tuple[Any, dict[str, Any]]] = {}  # uid -> (what they depend on, values)
        self.draft: Any = None
        """The annotation being drawn here (:class:`hilum.ui.viewer.tools.Draft`), not yet in the set."""
        self.selected: str | None = None
        """The uid of the annotation selected in this viewport (Delete removes it; handles shown)."""
        self.text_request: Any = None
        """A text annotation waiting for its text (:class:`hilum.ui.viewer.tools.TextRequest`)."""
        self.label_rects: dict[str, list[tuple[float, float, float, float]]] = {}
        """Canvas rectangles of the text painted for each annotation (for grabbing it by its label)."""
        self.canvas_size: tuple[int, int] = (512, 512)
        self._listeners: list[Listener] = []
        self._cache_key: tuple[Any, ...] | None = None
        self._cache_img: np.ndarray | None = None
        self._lut32: tuple[np.ndarray, bool, np.ndarray] | None = None
        self.overlay_enabled = True
        self.show_overlay_planes = True
        """Burn the image's overlay planes (60xx graphics and ROI) into the display."""
        self.probe_result: ProbeResult | None = None
        self.status = ""
        """A line shown in the viewport while there is nothing else to say (e.g. "loading 40/600")."""

    # ------------------------------------------------------------ events

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def emit(self, what: str) -> None:
        for cb in list(self._listeners):
            cb(self, what)

    # ------------------------------------------------------------ annotations

    def set_annotations(self, annotations: AnnotationSet) -> None:
        """Paint and edit *annotations* (the viewer's set of the study) from now on."""
        if annotations is self.annotations:
            return
        self._annotations_unsub()
        self.annotations = annotations
        self._annotations_unsub = annotations.subscribe(self._on_annotations)
        self.selected = None
        self._values.clear()
        self.emit("measurements")

    def _on_annotations(self, what: str, uid: str) -> None:
        if what in ("remove", "clear") and (uid == self.selected or what == "clear"):
            self.selected = None
        if what == "saved":
            return
        a = self.annotations.get(uid) if uid else None
        f = self.frame_info
        if what == "clear" or uid in self._shown or (a is not None and f is not None and a.key == f.key):
            self.emit("measurements")

    @property
    def measurements(self) -> list[Annotation]:
        """The annotations on this viewport's series (all its frames)."""
        uid = self.series_uid
        keys = {f.key for f in self.volume.stack.frames} if self.volume is not None else set()
        return [a for a in self.annotations.all() if (uid and a.series_uid == uid) or a.key in keys]

    def annotations_here(self) -> list[Annotation]:
        """The annotations on the frame shown (in drawing order)."""
        f = self.frame_info
        items = self.annotations.on(*f.key) if f is not None else []
        self._shown = {a.uid for a in items}
        return items

    def select(self, uid: str | None) -> None:
        if uid != self.selected:
            self.selected = uid
            self.emit("measurements")

    def annotation_values(self, a: Annotation) -> dict[str, Any]:
        """:meth:`Annotation.values` on this viewport's frame (which must be *a*'s), cached
        while the points, the frame and its pixels stay the same."""
        f = self.frame_info
        if f is None or f.key != a.key or self.volume is None:
            return {}
        depends = (tuple(a.points), a.key, id(self.volume), bool(self.volume.loaded[self.index]))
        hit = self._values.get(a.uid)
        if hit is not None and hit[0] == depends:
            return hit[1]
        values = None
        if a.kind in ("ellipse", "rect", "freehand", "point"):
            values = self.modality_frame()
        unit = modality_unit(self.modality, f.pipeline.modality.rescale_type if f.pipeline is not None else "")
        out = a.values(values, f.spacing, unit)
        if len(self._values) > 512:
            self._values.clear()
        self._values[a.uid] = (depends, out)
        return out

    def annotation_lines(self, a: Annotation) -> list[str]:
        """The value text drawn next to *a* (mm, °, area / mean / SD, the value at a point)."""
        return value_lines(a.kind, self.annotation_values(a))

    # ------------------------------------------------------------ series

    @property
    def stack_size(self) -> int:
        return len(self.volume) if self.volume is not None else 0

    @property
    def series_uid(self) -> str:
        return self.volume.series_uid if self.volume is not None else ""

    @property
    def frame_info(self) -> FrameInfo | None:
        if self.volume is None or not len(self.volume):
            return None
        return self.volume.stack.frames[self.index]

    @property
    def geometry(self) -> PlaneGeometry | None:
        f = self.frame_info
        return f.geometry if f is not None else None

    @property
    def modality(self) -> str:
        return self.volume.modality if self.volume is not None else ""

    def set_volume(
        self, volume: SeriesVolume | None, index: int | None = None, *, keep_view: bool | None = None
    ) -> None:
        """Show *volume* (a preview, or the loading/loaded series).

        The view and window are kept when the new volume is the same series
        (preview → full volume), else reset. *index* defaults to the middle.
        """
        same = volume is not None and self.volume is not None and volume.series_uid == self.volume.series_uid
        if keep_view is None:
            keep_view = same
        self.volume = volume
        if not keep_view:
            self.view = ViewTransform()
            self.window = None
            self.window_label = ""
            self.invert = False
            self.cine_playing = False
            self.draft = self.text_request = None
            self.selected = None
        n = self.stack_size
        self.index = 0 if n == 0 else int(np.clip(n // 2 if index is None else index, 0, n - 1))
        self._cache_key = None
        if volume is not None and self.window is None:
            self._ensure_default_window()
        self.emit("volume")

    def _ensure_default_window(self) -> None:
        """Images without any VOI in the header get a fixed min-max window from the first decoded frame."""
        f = self.frame_info
        if f is None or f.pipeline is None or f.pipeline.voi_choices:
            return
        arr = self.volume.frame(self.index) if self.volume is not None else None
        if arr is not None:
            self.window = f.pipeline.min_max_window(arr)
            self.window_label = "min-max"

    def notify_loaded(self) -> None:
        """The loader decoded more frames: repaint if the current one just arrived."""
        if self.window is None:
            self._ensure_default_window()
        self.emit("loaded")

    # ------------------------------------------------------------ scrolling

    def set_index(self, index: int) -> bool:
        n = self.stack_size
        if n == 0:
            return False
        new = int(np.clip(index, 0, n - 1))
        if new == self.index:
            return False
        self.index = new
        self.emit("index")
        return True

    def scroll(self, delta: int) -> bool:
        return self.set_index(self.index + int(delta))

    def page(self, direction: int) -> bool:
        """PageUp/PageDown: a tenth of the stack (at least one slice)."""
        return self.scroll(direction * max(1, self.stack_size // 10))

    def first(self) -> bool:
        return self.set_index(0)

    def last(self) -> bool:
        return self.set_index(self.stack_size - 1)

    @property
    def down_step(self) -> int:
        """The index step of "down" (wheel towards the user, arrow down, dragging down).

        Index ``k`` follows the one slice order (ascending along the normal,
        :data:`hilum.dicom.geometry.SLICE_DIRECTION`); "down" moves towards
        ``-normal`` on a stack ordered by position — inferior on an axial stack,
        to the patient's left on a sagittal one, anterior on a coronal one, as
        OHIF, Horos/Weasis (head-first CT) and 3D Slicer scroll — whichever
        way it was acquired; forwards on a stack without geometry (a cine).
        """
        order = self.volume.stack.order if self.volume is not None else None
        if order is None or order.axis is None or order.normal is None:
            return 1
        return -1 if float(order.axis @ order.normal) > 0 else 1

    def scroll_down(self, steps: int = 1) -> bool:
        """Move *steps* slices down (negative: up); see :attr:`down_step`."""
        return self.scroll(int(steps) * self.down_step)

    def page_down(self, pages: int = 1) -> bool:
        """PageDown (negative: PageUp): a tenth of the stack, down."""
        return self.page(int(pages) * self.down_step)

    def to_top(self) -> bool:
        """Home: the slice at the top of the stack (the end "up" leads to)."""
        return self.first() if self.down_step > 0 else self.last()

    def to_bottom(self) -> bool:
        """End: the slice at the bottom of the stack."""
        return self.last() if self.down_step > 0 else self.first()

    # ------------------------------------------------------------ cine

    def set_cine(self, playing: bool) -> None:
        if self.stack_size < 2:
            playing = False
        if playing != self.cine_playing:
            self.cine_playing = playing
            self._cine_accum = 0.0
            self.emit("cine")

    def set_cine_fps(self, fps: float) -> None:
        self.cine_fps = float(np.clip(fps, 1.0, 120.0))
        self.emit("cine")

    def advance_cine(self, elapsed_s: float) -> int:
        """Advance down the stack (:attr:`down_step`) by as many frames as *elapsed_s* holds at the
        cine rate, looping from the bottom to the top; returns the number of frames advanced."""
        if not self.cine_playing or self.stack_size < 2:
            return 0
        self._cine_accum += elapsed_s * self.cine_fps
        steps = int(self._cine_accum)
        if steps:
            self._cine_accum -= steps
            n = self.stack_size
            new = (self.index + steps * self.down_step) % n
            if new != self.index:
                self.index = new
                self.emit("index")
        return steps

    # ------------------------------------------------------------ window

    def header_voi(self) -> Any:
        f = self.frame_info
        return f.pipeline.default_voi() if f is not None and f.pipeline is not None else None

    def current_window(self) -> Window | None:
        """The window in force as center/width (None for colour or a VOI LUT table)."""
        if self.window is not None:
            return self.window
        voi = self.header_voi()
        return voi if isinstance(voi, Window) else None

    def display(self, index: int | None = None) -> DisplayTransform | None:
        """The VOI and presentation stages applied to a frame (:class:`DisplayTransform`, the one
        display model MPR uses too): the user's window or the header's VOI (a min-max window
        of the decoded frame when the header has none), with the frame's presentation
        inversion (MONOCHROME1, PS3.3 C.7.6.3.1.2). None for colour, or while the frame a
        min-max window needs is not decoded yet. The user's *invert* toggle is not part of it.
        """
        k = self.index if index is None else index
        if self.volume is None or not 0 <= k < len(self.volume):
            return None
        f = self.volume.stack.frames[k]
        if f.pipeline is None:
            return None
        try:
            return f.pipeline.display(self.volume.frame(k), self.window)
        except ValueError:  # no VOI in the header and no pixels yet for a min-max window
            return None

    def set_voi(self, window: Window, label: str = "") -> None:
        """Show *window* (center, width and VOI LUT Function as given), e.g. one of the header's."""
        self.window = window
        self.window_label = label
        self._cache_key = None
        self.emit("window")

    def set_window(self, center: float, width: float, label: str = "") -> None:
        """Another center/width (a preset, a linked viewport's window) in the same display model:
        the VOI LUT Function in force stays (SIGMOID stays SIGMOID; a VOI LUT table gives way
        to LINEAR, PS3.3 C.11.2.1.2), as :meth:`DisplayTransform.with_window` does for MPR;
        the frame's inversion is untouched."""
        base = self.window if self.window is not None else self.header_voi()
        display = DisplayTransform(base if base is not None else Window(float(center), 1.0))
        voi = display.with_window(float(center), float(width)).voi
        assert isinstance(voi, Window)
        self.set_voi(voi, label)

    def reset_window(self) -> None:
        """Back to the header's VOI (key 0)."""
        self.window = None
        self.window_label = ""
        self._cache_key = None
        self._ensure_default_window()
        self.emit("window")

    def drag_window(self, dx: float, dy: float) -> None:
        """Right-drag W/L: right widens, left narrows; down raises the level (darker), up lowers it.

        :meth:`DisplayTransform.dragged` of the display in force (the MPR's rule too, so a
        drag of the same length gives both views the same window): sensitivity scales with
        the current width, so a lung window and a stroke window both respond usefully; the
        VOI LUT Function and the inversion stay.
        """
        display = self.display()
        if display is None:
            return
        voi = display.dragged(dx, dy).voi
        assert isinstance(voi, Window)
        self.set_voi(voi, "")

    def toggle_invert(self) -> None:
        self.invert = not self.invert
        self._cache_key = None
        self.emit("window")

    # ------------------------------------------------------------ view

    def _changed_view(self) -> None:
        self.emit("view")

    def set_zoom(self, zoom: float) -> None:
        self.view.zoom = float(np.clip(zoom, MIN_ZOOM, MAX_ZOOM))
        self._changed_view()

    def zoom_by(self, factor: float, anchor: tuple[float, float] | None = None) -> None:
        """Zoom by *factor*, keeping the canvas point *anchor* fixed (default: centre)."""
        old = self.view.zoom
        new = float(np.clip(old * factor, MIN_ZOOM, MAX_ZOOM))
        if anchor is not None:
            w, h = self.canvas_size
            ax, ay = anchor[0] - w / 2.0, anchor[1] - h / 2.0
            f = new / old
            self.view.pan_x = ax - (ax - self.view.pan_x) * f
            self.view.pan_y = ay - (ay - self.view.pan_y) * f
        self.view.zoom = new
        self._changed_view()

    def pan_by(self, dx: float, dy: float) -> None:
        self.view.pan_x += dx
        self.view.pan_y += dy
        self._changed_view()

    def rotate(self, degrees: float) -> None:
        self.view.rotation = (self.view.rotation + degrees) % 360.0
        self._changed_view()

    def flip_horizontal(self) -> None:
        self.view.flip_h = not self.view.flip_h
        self._changed_view()

    def flip_vertical(self) -> None:
        self.view.flip_v = not self.view.flip_v
        self._changed_view()

    def reset_view(self) -> None:
        """Fit, no pan/rotation/flip, no invert, header window."""
        self.view = ViewTransform()
        self.invert = False
        self.window = None
        self.window_label = ""
        self._cache_key = None
        self._ensure_default_window()
        self.emit("view")
        self.emit("window")

    # ------------------------------------------------------------ geometry

    def spacing(self) -> tuple[float, float]:
        f = self.frame_info
        if f is None:
            return (1.0, 1.0)
        return (f.spacing.row, f.spacing.column)

    def matrix(self, canvas: tuple[float, float] | None = None) -> npt.NDArray[np.float64]:
        """Image → canvas matrix for the current frame (see :class:`ViewTransform`)."""
        f = self.frame_info
        size = canvas or self.canvas_size
        if f is None:
            return np.eye(3)
        return self.view.matrix(size, (f.columns, f.rows), self.spacing())

    def canvas_to_image(self, x: float, y: float) -> tuple[float, float]:
        inv = np.linalg.inv(self.matrix())
        p = inv @ np.array([x, y, 1.0])
        return float(p[0]), float(p[1])

    def image_to_canvas(self, x: float, y: float) -> tuple[float, float]:
        p = self.matrix() @ np.array([x, y, 1.0])
        return float(p[0]), float(p[1])

    def _screen_direction(self, dx: float, dy: float) -> npt.NDArray[np.float64] | None:
        """Patient-space vector (mm) of a canvas direction, or None without geometry."""
        g = self.geometry
        if g is None:
            return None
        lin = np.linalg.inv(self.matrix()[:2, :2])
        d = lin @ np.array([dx, dy])
        return d[0] * g.col_spacing * g.row_dir + d[1] * g.row_spacing * g.col_dir

    def edge_letters(self) -> dict[str, str]:
        """Orientation letters at the middle of each canvas edge (PS3.3 C.7.6.1.1.1)."""
        right = self._screen_direction(1.0, 0.0)
        down = self._screen_direction(0.0, 1.0)
        if right is None or down is None:
            return {}
        return {
            "right": orientation_letters(right),
            "left": orientation_letters(-right),
            "bottom": orientation_letters(down),
            "top": orientation_letters(-down),
        }

    def mm_per_canvas_pixel(self, axis: str = "x") -> float | None:
        """Millimetres per canvas pixel along the screen's x or y axis (None when uncalibrated)."""
        f = self.frame_info
        if f is None or not f.spacing.calibrated:
            return None
        lin = np.linalg.inv(self.matrix()[:2, :2])
        d = lin @ (np.array([1.0, 0.0]) if axis == "x" else np.array([0.0, 1.0]))
        return float(math.hypot(d[0] * f.spacing.column, d[1] * f.spacing.row))

    def scale_bar(self, target_fraction: float = 0.25, axis: str = "y") -> tuple[float, float] | None:
        """``(length_mm, length_px)`` of a round-valued scale bar about *target_fraction* of the canvas.

        Along the screen's *axis* (the viewer draws it vertically at the right edge).
        """
        mpp = self.mm_per_canvas_pixel(axis)
        if not mpp:
            return None
        extent = self.canvas_size[0 if axis == "x" else 1]
        length = nice_scale_length(mpp, extent * target_fraction)
        return (length, length / mpp) if length > 0 else None

    # ------------------------------------------------------------ pixels

    def frame_pixels(self, index: int | None = None) -> np.ndarray | None:
        if self.volume is None or not len(self.volume):
            return None
        return self.volume.frame(self.index if index is None else index)

    def render(self, index: int | None = None) -> np.ndarray | None:
        """8-bit display values of a frame (rows x columns, or x 3 for colour), None while not decoded.

        Grayscale goes through the frame's pipeline with the current window
        (modality LUT → VOI → presentation, MONOCHROME1 inverted by the
        pipeline); *invert* then inverts the display. The last result is cached.
        """
        k = self.index if index is None else index
        arr = self.frame_pixels(k)
        if arr is None or self.volume is None:
            return None
        f = self.volume.stack.frames[k]
        overlays = self.show_overlay_planes and bool(f.overlays)
        key = (id(self.volume), k, bool(self.volume.loaded[k]), self.window, self.invert, id(f.pipeline), overlays)
        if key == self._cache_key and self._cache_img is not None:
            return self._cache_img
        if f.pipeline is not None:
            out = f.pipeline.apply(arr, self.window)
        elif f.photometric == "PALETTE COLOR":
            rgb = apply_color_lut(arr, self.volume.header)[..., :3]
            desc = self.volume.header.get("RedPaletteColorLookupTableDescriptor")
            out = to_uint8_color(
                np.ascontiguousarray(rgb), int(desc[2]) if desc is not None and rgb.dtype != np.uint8 else None
            )
        elif arr.ndim == 3:
            out = to_uint8_color(arr, f.bits_stored if arr.dtype != np.uint8 else None)
        else:  # grayscale without a usable pipeline: min-max to 8 bits
            lo, hi = float(arr.min()), float(arr.max())
            out = ((arr.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1.0))).astype(np.uint8)
        if self.invert:
            out = np.bitwise_not(out)
        if overlays:
            out = composite(out, self.overlay_layers(k))
        out = np.ascontiguousarray(out)
        self._cache_key, self._cache_img = key, out
        return out

    def render_rgb32(self, index: int | None = None) -> np.ndarray | None:
        """The frame as 0xFFRRGGBB uint32 for painting: like :meth:`render`, then :func:`rgb32_of`.

        For 8/16-bit grayscale the pipeline's lookup table is composed with the
        grey → RGB32 table once per (table, invert), so a frame costs a single
        ``np.take`` over its stored values. A frame with overlay planes to draw takes
        :meth:`render`'s path.
        """
        k = self.index if index is None else index
        arr = self.frame_pixels(k)
        if arr is None or self.volume is None:
            return None
        f = self.volume.stack.frames[k]
        with_overlays = self.show_overlay_planes and bool(f.overlays)
        if f.pipeline is not None and arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2 and not with_overlays:
            lut8 = f.pipeline.lut(arr.dtype, f.pipeline.resolve_voi(arr, self.window))
            if lut8 is not None:
                cached = self._lut32
                if cached is None or cached[0] is not lut8 or cached[1] != self.invert:
                    table = np.bitwise_not(lut8) if self.invert else lut8
                    cached = self._lut32 = (lut8, self.invert, np.take(_GREY_TO_RGB32, table))
                return np.take(cached[2], arr.view(np.dtype(f"u{arr.dtype.itemsize}")))
        img = self.render(k)
        return None if img is None else rgb32_of(img)

    def overlay_layers(self, index: int | None = None) -> list[OverlayLayer]:
        """The overlay planes drawn on a frame, as masks placed in the image (none while hidden or
        not decoded). An embedded plane's bits are read from the file's raw pixel values the first
        time (:func:`~hilum.dicom.overlays.read_native_frame`); masks are cached."""
        k = self.index if index is None else index
        if self.volume is None or not 0 <= k < len(self.volume):
            return []
        f = self.volume.stack.frames[k]
        if not f.overlays:
            return []

        def raw() -> np.ndarray | None:
            return read_native_frame(f.path, f.frame, rows=f.rows, columns=f.columns,
                                     bits_allocated=f.bits_allocated, offset=f.pixel_offset)  # fmt: skip

        return frame_layers(f.overlays, f.frame, f.rows, f.columns, raw)

    def set_overlay_planes(self, show: bool) -> None:
        """Show or hide the overlay planes (60xx) of the images (emits ``overlays``)."""
        if bool(show) != self.show_overlay_planes:
            self.show_overlay_planes = bool(show)
            self._cache_key = None
            self.emit("overlays")

    def probe(self, x: float, y: float) -> ProbeResult | None:
        """The pixel at image point ``(x, y)``: stored and modality value, patient coordinates."""
        f = self.frame_info
        arr = self.frame_pixels()
        if f is None or arr is None:
            return None
        col, row = int(round(x)), int(round(y))
        if not (0 <= col < f.columns and 0 <= row < f.rows):
            return None
        stored = arr[row, col]
        unit = ""
        if arr.ndim == 3:
            value: float | tuple[int, ...] = tuple(int(v) for v in stored)
        elif f.pipeline is not None:
            value = float(f.pipeline.modality_values(np.asarray([stored]))[0])
            unit = modality_unit(self.modality, f.pipeline.modality.rescale_type)
        else:
            value = float(stored)
        patient = None
        if f.geometry is not None:
            p = f.geometry.to_patient(col, row)
            patient = (float(p[0]), float(p[1]), float(p[2]))
        return ProbeResult(col, row, stored.tolist() if hasattr(stored, "tolist") else stored, value, unit, patient)

    def modality_frame(self) -> np.ndarray | None:
        """Modality values (float64) of the current frame, for ROI statistics."""
        if self.volume is None or not len(self.volume):
            return None
        return self.volume.modality_values(self.index)

    # ------------------------------------------------------------ overlay values

    def overlay_values(self) -> dict[str, Any]:
        """Values the four-corner overlay templates can use (see :mod:`.overlay`)."""
        vals: dict[str, Any] = {}
        f = self.frame_info
        if self.volume is None or f is None:
            return vals
        vals["index"] = self.index + 1
        vals["count"] = self.stack_size
        vals["frame"] = f.frame + 1
        vals["InstanceNumber"] = f.instance_number if f.instance_number is not None else ""
        vals["rows"], vals["columns"] = f.rows, f.columns
        normal = self.volume.stack.normal
        if normal is not None and f.geometry is not None:
            vals["position"] = f"{float(f.geometry.origin @ normal):.1f}"
        if f.slice_thickness is not None:
            vals["thickness"] = f"{f.slice_thickness:g}"
        w = self.current_window()
        if w is not None:
            vals["window_center"], vals["window_width"] = window_text(w.center, w.width)
        # the user's window is named by what chose it (a preset; nothing for a drag), the header's by its explanation
        vals["window_label"] = (
            self.window_label if self.window is not None else (w.explanation if w is not None else "")
        )
        vals["zoom"] = f"{self._display_zoom():.2f}"
        vals["rotation"] = f"{self.view.rotation:g}"
        vals["loaded"] = self.volume.loaded_count
        vals["fps"] = f"{self.cine_fps:g}" if self.cine_playing else ""
        return vals

    def _display_zoom(self) -> float:
        """Screen pixels per image pixel (what radiologists call zoom, 1.0 = one to one)."""
        m = self.matrix()
        return float(math.hypot(m[0, 0], m[1, 0]))
