"""Qt widgets that show an offscreen VTK render window: the MPR planes and the 3D view.

Each canvas owns (or is given) a ``vtkRenderWindow`` with offscreen rendering
on, sized to the widget in device pixels; after :meth:`VTKCanvas.request_render`
it is rendered, its pixels read back (``vtkWindowToImageFilter``) and drawn with
``QPainter``: an MPR plane in an event-loop turn of its own (never inside a paint
event, see :class:`_RenderQueue`), the 3D view on a worker thread
(:class:`VolumeCanvas`).  This costs one read-back per frame (about
1-5 ms at 512-800 px) and buys a widget that works the same on a desktop, under
Xvfb and under the offscreen Qt platform the test-suite uses, where VTK's own
``QVTKRenderWindowInteractor`` draws nothing (see ENVIRONMENT.md), and that
``QWidget.grab()`` captures, so GUI tests check real pixels.  The GPU is still
used where there is one: VTK's offscreen contexts are EGL on the same driver.

Mouse handling is done here in Qt terms and forwarded to the headless logic
objects of :mod:`hilum.render.mpr` and :mod:`hilum.render.volume3d`.

VTK is driven by one thread at a time (:mod:`hilum.render.gl`): the GUI thread
renders a plane only when it gets the process-wide VTK lock without waiting (else
the render is tried again a few milliseconds later, and a full-quality 3D frame in
progress is aborted meanwhile); the 3D render thread holds it for one frame; the
3D view's render thread is joined before its scene is closed.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shiboken6
from PySide6.QtCore import QPointF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QPixmap,
    QPolygonF,
    QResizeEvent,
    QWheelEvent,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from hilum.render.gl import gl_lock, gl_unlock, try_gl_lock
from hilum.render.mpr import MPRViewport, capture_window
from hilum.render.volume3d import VolumeScene

__all__ = ["SliceCanvas", "VTKCanvas", "VolumeCanvas", "background_priority"]

logger = logging.getLogger(__name__)


class _RenderQueue:
    """Renders the canvases that asked for it one per event-loop turn, outside paint events.

    Rendering inside ``paintEvent`` let the three planes of an MPR window render in one
    paint pass (three frames of software OpenGL with no event handled in between); here
    each render is its own zero-timer callback, so input and timers are served between
    frames.  Hidden canvases (the planes of the 3D-only layout) are not rendered.

    The GUI thread never waits for the VTK lock here (:mod:`hilum.render.gl`): when another
    thread holds it (a 3D frame, a volume being prepared), the render is tried again a few
    milliseconds later, and a full-quality 3D frame in progress is aborted meanwhile (the 3D
    view renders it again afterwards)."""

    RETRY_MS = 4

    def __init__(self) -> None:
        self._pending: list[VTKCanvas] = []
        self._scheduled = False

    def add(self, canvas: VTKCanvas) -> None:
        if not any(c is canvas for c in self._pending):
            self._pending.append(canvas)
        self._schedule()

    def _schedule(self, delay_ms: int = 0) -> None:
        if not self._scheduled and self._pending:
            self._scheduled = True
            QTimer.singleShot(delay_ms, self._next)

    def _next(self) -> None:
        self._scheduled = False
        while self._pending:
            canvas = self._pending[0]
            if not shiboken6.isValid(canvas) or not canvas._dirty or not canvas.isVisible() or canvas.closed:
                self._pending.pop(0)
                continue
            if not try_gl_lock():
                self._schedule(self.RETRY_MS)
                return
            self._pending.pop(0)
            try:
                canvas.render_now()
            except Exception:  # a render failure must not stop the others
                logger.exception("VTK rendering failed")
                canvas._dirty = False
            finally:
                gl_unlock()
            canvas.update()
            break
        self._schedule()


_RENDERS = _RenderQueue()


def background_priority(nice: int = 10) -> None:
    """Lower the calling thread's CPU priority (Linux: per thread, inherited by the threads it
    starts, e.g. VTK's ray-casting threads and llvmpipe's rasterisers), so the GUI thread keeps
    a core when a frame or a volume build takes every core; a no-op where unsupported."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):
        pass


class VTKCanvas(QWidget):
    """A widget painting an offscreen VTK render window (see the module docstring)."""

    activated = Signal()

    def __init__(self, render_window: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.render_window = render_window
        self.render_window.SetOffScreenRendering(1)
        self._image: QImage | None = None
        self._dirty = True
        self.active = False
        self.render_count = 0
        self.setMinimumSize(96, 96)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)

    # --- rendering
    def request_render(self) -> None:
        """Render soon, in an event-loop turn of its own (:class:`_RenderQueue`); several requests
        before then render once."""
        self._dirty = True
        _RENDERS.add(self)

    def grab(self, *args: Any) -> QPixmap:
        """The widget's pixels with the current scene (a pending render is done first)."""
        if self._dirty or self._image is None:
            self.render_now()
        return super().grab(*args)

    @property
    def closed(self) -> bool:
        """True once the scene shown is closed (nothing is rendered any more)."""
        return False

    def render_now(self) -> np.ndarray:
        """Render immediately and return the RGB pixels (also what is painted next); holds the VTK
        lock (:mod:`hilum.render.gl`), waiting for it if another thread renders."""
        if self.closed:  # nothing to render: the last frame, or black
            keep = getattr(self, "_keep", None)
            return keep if keep is not None else np.zeros((self.height(), self.width(), 3), np.uint8)
        with gl_lock(abort=True):
            self._sync_size()
            self._render_scene()
            rgb = capture_window(self.render_window)
        h, w = rgb.shape[:2]
        img = QImage(rgb.data, w, h, rgb.strides[0], QImage.Format.Format_RGB888)
        img.setDevicePixelRatio(self.devicePixelRatioF())
        self._image = img
        self._keep = rgb  # the QImage shares this buffer
        self._dirty = False
        self.render_count += 1
        return rgb

    def _render_scene(self) -> None:
        """Render the window (holding the VTK lock)."""
        self.render_window.Render()

    def _device_size(self) -> tuple[int, int]:
        dpr = self.devicePixelRatioF()
        return max(1, int(round(self.width() * dpr))), max(1, int(round(self.height() * dpr)))

    def _sync_size(self) -> None:
        size = self._device_size()
        if tuple(self.render_window.GetSize()) != size:
            with gl_lock(abort=True):  # resizes the window's (hidden) X window
                self.render_window.SetSize(*size)
                self.on_resized()

    def on_resized(self) -> None:
        """Hook for subclasses: the render window changed size."""

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        super().resizeEvent(event)
        self.request_render()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        if self._dirty or self._image is None:
            _RENDERS.add(self)  # never inside a paint: the planes of a window would render in one pass
        painter = QPainter(self)
        painter.fillRect(self.rect(), Qt.GlobalColor.black)
        if self._image is not None:
            if self._image.size() == self.size() * self.devicePixelRatioF():
                painter.drawImage(0, 0, self._image)
            else:  # resized: the last frame stretched over the new size until the new one is rendered
                painter.drawImage(self.rect(), self._image)
        if self.active:
            painter.setPen(Qt.GlobalColor.darkYellow)
            painter.drawRect(self.rect().adjusted(0, 0, -1, -1))
        painter.end()

    def set_active(self, active: bool) -> None:
        if active != self.active:
            self.active = active
            self.update()

    # --- coordinates
    def display_xy(self, pos: QPointF) -> tuple[float, float]:
        """VTK display coordinates (device pixels from the bottom-left) of a widget position."""
        dpr = self.devicePixelRatioF()
        _, h = self._device_size()
        return float(pos.x() * dpr), float(h - 1 - pos.y() * dpr)

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self.activated.emit()
        super().mousePressEvent(event)


@dataclass
class PlaneShape:
    """An annotation of the 2D viewer in patient coordinates (mm), for the MPR planes that hold it.

    ``points`` (n x 3): the annotation's points, or the outline of an ellipse / rectangle ROI
    (``closed``); ``lines`` the values shown next to it in the 2D viewer.
    """

    uid: str
    kind: str
    points: np.ndarray
    closed: bool = False
    text: str = ""
    lines: tuple[str, ...] = ()


ANNOTATION_COLOUR = QColor(80, 220, 80)


class SliceCanvas(VTKCanvas):
    """One MPR plane.  Mouse: left click/drag moves the 3D cursor; left drag starting on a
    crosshair line (or with Ctrl) rotates the other planes about this one (oblique MPR);
    Shift + left drag measures (mm); Alt + left click adds a point to the curved-MPR path;
    right drag: window/level (the 2D viewer's rule, :meth:`DisplayTransform.dragged`); middle
    drag: pan; wheel: move through the plane; Ctrl + wheel: zoom.  What a drag does is decided
    by the headless :class:`hilum.render.crosshair.CrosshairView` (:meth:`MPRViewport.drag_mode`)."""

    def __init__(self, viewport: MPRViewport, parent: QWidget | None = None) -> None:
        super().__init__(viewport.render_window, parent)
        self.viewport = viewport
        self.setObjectName(f"mpr-{viewport.view}")
        self._mode: str | None = None
        self._last: tuple[float, float] | None = None
        self._start: tuple[float, float] | None = None
        self.seg_brush: Any = None
        """The segmentation brush (:class:`hilum.ui.mpr.seg_hook.MPRSegBrush`): while it is on, a
        plain left drag paints labels instead of moving the cursor."""
        self._unsubscribe = viewport.crosshair.subscribe(lambda _kind: self.request_render())
        self.annotation_shapes: list[PlaneShape] = []
        """The 2D viewer's annotations of this series (:func:`hilum.ui.mpr.viewer_hook.annotation_shapes`),
        drawn on this plane where they lie in it."""
        self._map: tuple[Any, np.ndarray, float, float, int] | None = None

    def on_resized(self) -> None:
        self.viewport._apply_camera()

    @property
    def closed(self) -> bool:
        return self.viewport.closed

    def _render_scene(self) -> None:
        self.viewport.render()
        self._map = self._display_map()

    def _display_map(self) -> tuple[Any, np.ndarray, float, float, int]:
        """The shown plane, its (s, t) -> display-pixel affine, the in-plane tolerance (mm), the
        device pixel ratio and height, as of the render the widget paints (so the annotations
        drawn over it match the image even while the next render is pending)."""
        vp = self.viewport
        plane = vp.display_plane
        o = vp.patient_to_display(plane.to_patient(0.0, 0.0))
        ex = vp.patient_to_display(plane.to_patient(1.0, 0.0))
        ey = vp.patient_to_display(plane.to_patient(0.0, 1.0))
        affine = np.array([[ex[0] - o[0], ey[0] - o[0], o[0]], [ex[1] - o[1], ey[1] - o[1], o[1]]])
        tol = max(0.5, vp.crosshair.slabs[vp.view].thickness / 2)
        return plane, affine, tol, self.devicePixelRatioF(), self._device_size()[1]

    def _on_plane(self, shape: PlaneShape) -> list[QPointF] | None:
        """Widget points of *shape* when all its points lie within the plane's tolerance, else None."""
        if self._map is None or not len(shape.points):
            return None
        plane, affine, tol, dpr, height = self._map
        stw = plane.to_plane(shape.points)
        if np.any(np.abs(stw[:, 2]) > tol):
            return None
        xy = np.c_[stw[:, :2], np.ones(len(stw))] @ affine.T
        return [QPointF(float(x) / dpr, float(height - 1 - y) / dpr) for x, y in xy]

    def shown_annotations(self) -> list[str]:
        """The uids of the annotations drawn on this plane (they lie in it)."""
        return [s.uid for s in self.annotation_shapes if self._on_plane(s) is not None]

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        super().paintEvent(event)
        if not self.annotation_shapes or self._image is None:
            return
        p = QPainter(self)
        try:
            p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            p.setPen(QPen(ANNOTATION_COLOUR, 1.5))
            lh = p.fontMetrics().height()
            for shape in self.annotation_shapes:
                pts = self._on_plane(shape)
                if pts is None:
                    continue
                self._paint_shape(p, shape, pts)
                anchor = pts[-1]
                labels = ([shape.text] if shape.text else []) + list(shape.lines)
                for i, line in enumerate(labels):
                    p.drawText(QPointF(anchor.x() + 6, anchor.y() + (i + 1) * lh), line)
        finally:
            p.end()

    @staticmethod
    def _paint_shape(p: QPainter, shape: PlaneShape, pts: list[QPointF]) -> None:
        k = shape.kind
        if k == "cobb" and len(pts) == 4:
            p.drawLine(pts[0], pts[1])
            p.drawLine(pts[2], pts[3])
        elif k == "point":
            c = pts[0]
            p.drawLine(c + QPointF(-6, 0), c + QPointF(6, 0))
            p.drawLine(c + QPointF(0, -6), c + QPointF(0, 6))
        elif k == "text":
            return
        elif shape.closed:
            p.drawPolygon(QPolygonF(pts))
        else:
            p.drawPolyline(QPolygonF(pts))
            if k == "arrow" and len(pts) == 2:
                tail, head = pts
                dx, dy = tail.x() - head.x(), tail.y() - head.y()
                n = math.hypot(dx, dy) or 1.0
                for a in (math.radians(25), -math.radians(25)):
                    rx = (dx * math.cos(a) - dy * math.sin(a)) / n
                    ry = (dx * math.sin(a) + dy * math.cos(a)) / n
                    p.drawLine(head, head + QPointF(rx * 12, ry * 12))

    def close_viewport(self) -> None:
        self._unsubscribe()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        super().mousePressEvent(event)
        self._sync_size()
        x, y = self.display_xy(event.position())
        self._last = self._start = (x, y)
        mods = event.modifiers()
        button = event.button()
        if button == Qt.MouseButton.LeftButton:
            if mods & Qt.KeyboardModifier.AltModifier:
                self._mode = None
                self.viewport.add_path_point(x, y)
            elif mods & Qt.KeyboardModifier.ShiftModifier:
                self._mode = "measure"
            elif mods & Qt.KeyboardModifier.ControlModifier:
                self._mode = "rotate"
            elif self.seg_brush is not None and self.seg_brush.active:
                self._mode = "seg"
                self.seg_brush.press(self.viewport, x, y)
            else:
                dpr = self.devicePixelRatioF()
                self._mode = self.viewport.drag_mode(x, y, line_px=6.0 * dpr, cursor_px=12.0 * dpr)
                if self._mode == "cursor":
                    self.viewport.click(x, y)
            if self._mode == "rotate":
                self.viewport.set_interacting(True)  # coarse thick slabs while the planes turn
        elif button == Qt.MouseButton.RightButton:
            self._mode = "window"
        elif button == Qt.MouseButton.MiddleButton:
            self._mode = "pan"
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._mode is None or self._last is None:
            return
        x, y = self.display_xy(event.position())
        lx, ly = self._last
        vp = self.viewport
        if self._mode == "cursor":
            vp.click(x, y)
        elif self._mode == "seg":
            self.seg_brush.move(vp, x, y)
        elif self._mode == "rotate":
            vp.rotate_drag(lx, ly, x, y)
        elif self._mode == "window":
            vp.window_drag(x - lx, y - ly)
            self.request_render()
        elif self._mode == "pan":
            s0, t0 = vp.display_to_plane(lx, ly)
            s1, t1 = vp.display_to_plane(x, y)
            vp.pan(s0 - s1, t0 - t1)
            self.request_render()
        elif self._mode == "measure":
            self.request_render()
        self._last = (x, y)
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._mode == "measure" and self._start is not None:
            x, y = self.display_xy(event.position())
            if math.hypot(x - self._start[0], y - self._start[1]) > 3:
                self.viewport.measure(self._start, (x, y))
        if self._mode == "rotate":
            self.viewport.set_interacting(False)  # full quality again
        if self._mode == "seg":
            self.seg_brush.move(self.viewport, *self.display_xy(event.position()))
            self.seg_brush.release()
        self._mode = None
        self._last = None
        event.accept()

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        steps = event.angleDelta().y() / 120.0
        if not steps:
            return
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.viewport.set_zoom(self.viewport.zoom * (1.15**steps))
            self.request_render()
        else:
            self.viewport.scroll(steps)
        event.accept()


class VolumeCanvas(VTKCanvas):
    """The 3D view.  Left drag rotates (at the interactive level of detail, full quality on
    release), right drag or wheel zooms, middle drag pans.

    Frames are rendered on a worker thread (:meth:`VolumeScene.render_frame`; VTK releases the
    GIL while it casts rays), so a first frame that computes gradients, or a full-quality
    frame of a big volume in software OpenGL, never holds up the event loop: the canvas shows
    the last frame (scaled to a new size until the next one arrives) meanwhile; the first frame
    is a quick unshaded preview (:meth:`VolumeScene.render_preview`), the full-quality one
    follows.  Changes to
    the scene (camera moves from the mouse, presets, clipping... :meth:`change`) are made at
    once when the scene is free, else queued and made by the worker just before its next
    frame, so the GUI never waits for a frame either.
    """

    _frame_ready = Signal(object, bool)  # worker -> GUI thread: RGB pixels, whether a still frame
    _op_done = Signal(object, object)  # worker -> GUI thread: a change's callback and its result

    def __init__(self, scene: VolumeScene, parent: QWidget | None = None) -> None:
        super().__init__(scene.render_window, parent)
        self.scene = scene
        self.setObjectName("mpr-3d")
        self._mode: str | None = None
        self._last: QPointF | None = None
        self.still_count = 0
        self._last_still = False
        self._cv = threading.Condition()
        self._requested = False
        self._busy = False
        self._closed = False
        self._size = self._device_size()
        self._ops: list[tuple[Callable[[], Any], Callable[[Any], None] | None]] = []
        self._frame_ready.connect(self._on_frame)
        self._op_done.connect(lambda done, result: done(result))
        self._thread = threading.Thread(target=self._work, name="hilum-3d-render", daemon=True)
        self._thread.start()
        cv = self._cv

        scene_ = scene

        def stop(*_: object) -> None:  # also when deleted with its window, without a close: let the worker end
            with cv:
                self._closed = True
                cv.notify()
            if scene_.rendering == "still":
                scene_.render_window.SetAbortRender(1)

        self._stop = stop
        self.destroyed.connect(stop)

    # --- rendering on the worker
    def request_render(self) -> None:
        """Render a new frame on the worker (requests made while it renders are merged into one)."""
        self._dirty = True
        size = self._device_size()
        with self._cv:
            self._size = size
            self._requested = True
            self._cv.notify()

    def change(self, op: Callable[[], Any], done: Callable[[Any], None] | None = None) -> None:
        """Change the scene with ``op()`` and render it: now when the scene is free and no change
        waits before this one, else (a frame is being rendered; the first, which computes
        gradients, takes seconds in software) queued for the worker to make before its next
        frame.  ``done(result)`` then runs on the GUI thread."""
        with self._cv:
            if self._ops or not try_gl_lock(abort=False):
                self._ops.append((op, done))
                if self.scene.rendering == "still":
                    self.render_window.SetAbortRender(1)  # come back for the change sooner
                queued = True
            else:
                queued = False
        if not queued:
            try:
                result = op()
            finally:
                gl_unlock()
            if done is not None:
                done(result)
        self.request_render()

    def _apply_ops(self, ops: list[tuple[Callable[[], Any], Callable[[Any], None] | None]]) -> list[Any]:
        """Make queued changes (holding the scene); the callbacks and results to report."""
        out = []
        for op, done in ops:
            try:
                result = op()
            except Exception:  # one bad change must not stop the others or the worker
                logger.exception("3D view: a change failed")
                continue
            if done is not None:
                out.append((done, result))
        return out

    def _work(self) -> None:
        background_priority()
        previewed = False
        while True:
            with self._cv:
                while not self._requested and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                self._requested = False
                self._busy = True
                size = self._size
                ops, self._ops = self._ops, []
            rgb = None
            still = False
            reports: list[Any] = []
            try:
                with self.scene.hold(abort=False):
                    reports = self._apply_ops(ops)
                    still = not self.scene._interacting
                    if still and not previewed:  # a quick look first, full quality right after
                        previewed, still = True, False
                        rgb = self.scene.render_preview(size)
                        with self._cv:
                            self._requested = True
                    else:
                        previewed = True
                        rgb = self.scene.render_frame(size)
            except Exception:  # a render failure must not kill the worker
                logger.exception("3D rendering failed")
            with self._cv:
                self._busy = False
                if rgb is None and self.scene.last_frame_aborted and not self._closed:
                    self._requested = True  # aborted by a change: render the changed scene
                if self._closed:
                    return
            try:
                for done, result in reports:
                    self._op_done.emit(done, result)
                if rgb is not None:
                    self._frame_ready.emit(rgb, still)
            except RuntimeError:  # the widget is gone
                return

    def _on_frame(self, rgb: np.ndarray, still: bool) -> None:
        h, w = rgb.shape[:2]
        img = QImage(rgb.data, w, h, rgb.strides[0], QImage.Format.Format_RGB888)
        img.setDevicePixelRatio(self.devicePixelRatioF())
        self._image = img
        self._keep = rgb
        self.render_count += 1
        self._last_still = still
        if still:
            self.still_count += 1
        with self._cv:
            self._dirty = self._requested or self._busy
        self.update()

    @property
    def closed(self) -> bool:
        return self.scene.closed

    def settled(self) -> bool:
        """True when the frame shown is a full-quality frame of the current scene at the current size."""
        with self._cv:
            idle = not self._requested and not self._busy
        return idle and self._image is not None and self._last_still and not self._dirty

    def render_now(self) -> np.ndarray:
        """Render on this thread, now, and return the RGB pixels (also what is painted next)."""
        if self.closed:
            return super().render_now()
        with self._cv:
            ops, self._ops = self._ops, []
        with self.scene.hold():
            reports = self._apply_ops(ops)
            rgb = self.scene.render_frame(self._device_size())
        assert rgb is not None  # nothing else renders while this thread holds the scene
        for done, result in reports:
            done(result)
        self._on_frame(rgb, not self.scene._interacting)
        self._dirty = False
        return rgb

    def shutdown(self) -> None:
        """Stop the worker (aborting a frame in progress); call before closing the scene."""
        self._stop()
        self._thread.join(timeout=10.0)

    def worker(self) -> tuple[Callable[[], None], threading.Thread]:
        """The function that stops the render thread and the thread, for an owner that must stop
        it without this widget (Qt may have deleted it: :class:`hilum.ui.mpr.mpr_widget.MPRWidget`)."""
        return self._stop, self._thread

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        QWidget.resizeEvent(self, event)
        self.request_render()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        if self._image is None and not self._requested_once():
            self.request_render()
        painter = QPainter(self)
        painter.fillRect(self.rect(), Qt.GlobalColor.black)
        if self._image is not None:
            if self._image.size() == self.size() * self.devicePixelRatioF():
                painter.drawImage(0, 0, self._image)
            else:  # resized: the last frame stretched over the new size until the new one arrives
                painter.drawImage(self.rect(), self._image)
        else:
            painter.setPen(Qt.GlobalColor.lightGray)
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Rendering…")
        if self.active:
            painter.setPen(Qt.GlobalColor.darkYellow)
            painter.drawRect(self.rect().adjusted(0, 0, -1, -1))
        painter.end()

    def _requested_once(self) -> bool:
        with self._cv:
            return self._requested or self._busy

    # --- mouse
    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        super().mousePressEvent(event)
        self._last = event.position()
        self._mode = {
            Qt.MouseButton.LeftButton: "rotate",
            Qt.MouseButton.RightButton: "zoom",
            Qt.MouseButton.MiddleButton: "pan",
        }.get(event.button())
        if self._mode == "rotate":
            scene = self.scene
            self.change(lambda: scene.set_interacting(True))
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._mode is None or self._last is None:
            return
        pos = event.position()
        dx, dy = pos.x() - self._last.x(), pos.y() - self._last.y()
        scene = self.scene
        if self._mode == "rotate":
            self.change(lambda: scene.rotate(azimuth=-0.5 * dx, elevation=0.5 * dy))
        elif self._mode == "zoom":
            self.change(lambda: scene.zoom(1.01 ** (-dy)))
        elif self._mode == "pan":
            height = max(self.height(), 1)

            def pan() -> None:
                cam = scene.renderer.GetActiveCamera()
                mm_per_px = 2.0 * cam.GetDistance() * math.tan(math.radians(cam.GetViewAngle() / 2)) / height
                scene.pan(-dx * mm_per_px, dy * mm_per_px)

            self.change(pan)
        self._last = pos
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if self._mode == "rotate":
            scene = self.scene
            self.change(lambda: scene.set_interacting(False))  # then a full-quality frame
        self._mode = None
        self._last = None
        event.accept()

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        steps = event.angleDelta().y() / 120.0
        if steps:
            scene = self.scene
            self.change(lambda: scene.zoom(1.1**steps))
        event.accept()
