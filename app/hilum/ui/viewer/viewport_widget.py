"""The viewport widget: paints a :class:`ViewportState` and forwards the mouse to its tools.

The image is the pipeline's 8-bit output wrapped in a ``QImage`` (no copy)
and drawn with the state's image → canvas matrix as a ``QTransform``; a plain
``QWidget`` painting is fast (a 512² slice in a few ms), works under the
offscreen Qt platform and can be checked with ``grab()`` in tests, which the
VTK widget cannot (it needs a real OpenGL context; see ENVIRONMENT.md). On top:
the four-corner text, orientation letters, scale bar, reference lines,
measurements, the probe, the alignment line of a prior aligned across Frames
of Reference and the active-viewport border.

Hand re-alignment: Alt+wheel or Alt+Up/Down scrolls this viewport ALONE
(:meth:`hilum.ui.viewer.model.ViewerModel.shift_alignment_slices`): its partner
of the other Frame of Reference stays, and the alignment between them keeps the
offset, shown in the viewport ("aligned by registration, +5.0 mm by hand").
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor,
    QDragEnterEvent,
    QDropEvent,
    QFont,
    QFontMetrics,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QResizeEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import QHBoxLayout, QLineEdit, QScrollBar, QSizePolicy, QToolTip, QWidget

from hilum.ui.viewer.overlay import OverlayConfig, corner_texts
from hilum.ui.viewer.seg_tools import paint_labels
from hilum.ui.viewer.state import ViewportState
from hilum.ui.viewer.tools import EditDrag, PanTool, TextRequest, Tool, WindowTool, commit_text, hit_test

__all__ = ["SERIES_MIME", "ViewportCanvas", "ViewportWidget"]

logger = logging.getLogger(__name__)

SERIES_MIME = "application/x-hilum-series-uid"
ACTIVE_COLOUR = QColor(255, 160, 0)
TEXT_COLOUR = QColor(230, 230, 230)
MEASURE_COLOUR = QColor(80, 220, 80)
LOSSY_COLOUR = QColor(255, 70, 50)
LOSSY_GUARDED = frozenset({"length", "angle", "cobb", "ellipse", "rect", "freehand"})
"""Tools that measure distances, angles or regions: refused on lossy pixels unless the reader allows
them (the pixel probe works, its value marked approximate: :meth:`ViewportCanvas.probe_text`)."""
SELECTED_COLOUR = QColor(90, 200, 255)
REFERENCE_COLOUR = QColor(255, 230, 0)
ALIGNMENT_COLOUR = QColor(120, 210, 255)


def is_lossy(state: ViewportState) -> bool:
    """True when the slice *state* shows holds lossy pixels (a remote series' first rendition,
    :class:`hilum.dicomweb.progressive.ProgressiveVolume`)."""
    lossy = getattr(state.volume, "lossy", None)
    k = state.index
    return lossy is not None and 0 <= k < len(lossy) and bool(lossy[k])


CLICK_SLOP = 4
"""A right press that moves less than this (canvas pixels, Manhattan) before release is a click."""

SETTLE_MS = 150
"""After this long without scrolling, zooming or windowing, the image is repainted with smoothing."""


def qimage_of(argb: np.ndarray) -> QImage:
    """Wrap a C-contiguous uint32 (H×W) array from ``render_rgb32`` as a QImage (shares memory:
    keep the array alive while the image is used)."""
    h, w = argb.shape
    return QImage(argb.data, w, h, argb.strides[0], QImage.Format.Format_RGB32)


class ViewportCanvas(QWidget):
    """The painting surface of one viewport."""

    activated = Signal()
    seriesDropped = Signal(str)
    doubleClicked = Signal()
    contextMenuRequested = Signal(QPoint)  # global position: a right click without a drag
    lossyRefused = Signal(str)  # a measuring tool's name: refused on lossy pixels

    def __init__(self, state: ViewportState, *, model: Any = None, overlay: OverlayConfig | None = None,
                 tool_provider: Any = None, parent: QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.state = state
        self.model = model
        self.overlay = overlay or OverlayConfig.load()
        self.tool_provider = tool_provider  # callable -> the left-button Tool
        self.active = False
        self._drag_tool: Tool | None = None
        self._right_press: QPointF | None = None  # a right press not yet a drag (a click opens the menu)
        self._right = WindowTool()
        self._middle = PanTool()
        self.setMinimumSize(64, 64)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setAcceptDrops(True)
        # the right button is ours: a drag windows, a click (press and release in place) opens the menu
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.PreventContextMenu)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._unsubscribe = state.subscribe(self._on_state)
        self._text_cache: dict[tuple[Any, ...], QImage] = {}
        self._argb_key: tuple[Any, ...] | None = None
        self._argb: np.ndarray | None = None
        self._fast = False
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(SETTLE_MS)
        self._settle.timeout.connect(self._settled)
        self.paint_count = 0
        self.image_paint_count = 0
        self.text_editor: QLineEdit | None = None
        self._editor_request: TextRequest | None = None

    def _on_state(self, _state: ViewportState, what: str) -> None:
        if what in ("index", "view", "window"):
            self._fast = True
            self._settle.start()
        if self.text_editor is not None and what in ("index", "volume"):
            self._drop_text_editor()  # the text belonged to the image that was shown
        elif what == "text":
            if self.state.text_request is None:
                self._drop_text_editor()
            else:
                self._open_text_editor()
        self.update()

    def _settled(self) -> None:
        self._fast = False
        self.update()

    def detach(self) -> None:
        self._unsubscribe()

    # ------------------------------------------------------------ geometry

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802
        self.state.canvas_size = (max(self.width(), 1), max(self.height(), 1))
        super().resizeEvent(event)

    # ------------------------------------------------------------ painting

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        self.state.canvas_size = (max(self.width(), 1), max(self.height(), 1))
        p = QPainter(self)
        try:
            p.fillRect(self.rect(), Qt.GlobalColor.black)
            self._paint_image(p)
            paint_labels(self, p)  # the segmentation's label overlay (hilum.ui.viewer.seg_tools)
            for hook in getattr(self.model, "paint_hooks", ()):  # more layers, e.g. AI heat maps (hilum.ui.ai)
                hook(self, p)
            self._paint_overlay(p)
        finally:
            p.end()
        self.paint_count += 1

    def _paint_image(self, p: QPainter) -> None:
        st = self.state
        f = st.frame_info
        if f is None:
            self._centre_text(p, "Drop a series here" if st.volume is None else "")
            return
        assert st.volume is not None  # a frame implies a volume
        key = (id(st.volume), st.index, bool(st.volume.loaded[st.index]), is_lossy(st), st.window, st.invert,
               st.show_overlay_planes)  # fmt: skip
        if self._argb is None or self._argb_key != key:
            self._argb = st.render_rgb32()
            self._argb_key = key
        if self._argb is None:
            self._centre_text(p, "Loading…")
            return
        m = st.matrix()
        p.save()
        p.setTransform(QTransform(m[0, 0], m[1, 0], m[0, 1], m[1, 1], m[0, 2], m[1, 2]))
        # nearest neighbour while the user scrolls/zooms/windows (3-6x faster), smoothed once settled
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, st.smooth and not self._fast)
        p.drawImage(QRectF(-0.5, -0.5, f.columns, f.rows), qimage_of(self._argb))
        p.restore()
        self.image_paint_count += 1

    def _centre_text(self, p: QPainter, text: str) -> None:
        if text:
            p.setPen(TEXT_COLOUR)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, text)

    def _to_canvas(self, m: np.ndarray, pt: tuple[float, float]) -> QPointF:
        v = m @ np.array([pt[0], pt[1], 1.0])
        return QPointF(float(v[0]), float(v[1]))

    def _paint_overlay(self, p: QPainter) -> None:
        st = self.state
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, min(10.0, self.height() / 45.0)))
        p.setFont(font)
        m = st.matrix()
        taken: list[QRectF] = []  # where the corner text and the orientation letters went
        if st.frame_info is not None:
            # reference lines (the active viewport's slice on this image)
            if self.model is not None:
                pen = QPen(REFERENCE_COLOUR, 1.5)
                p.setPen(pen)
                for a, b in self.model.reference_lines(st):
                    p.drawLine(self._to_canvas(m, a), self._to_canvas(m, b))
            self._paint_measurements(p, m)
            if st.overlay_enabled:
                taken += self._paint_corners(p)
                taken += self._paint_letters(p)
                self._paint_scale_bar(p)
            if st.probe_result is not None:
                p.setPen(MEASURE_COLOUR)
                p.drawText(QRectF(0, self.height() - 44, self.width(), 18), Qt.AlignmentFlag.AlignHCenter,
                           self.probe_text())  # fmt: skip
            if is_lossy(st):
                taken.append(self._paint_lossy_marker(p, taken))
        if st.status:
            rect = self.status_rect(p.fontMetrics(), st.status, taken)
            self._shadow_text(p, rect, Qt.AlignmentFlag.AlignCenter, st.status)
            taken.append(rect)
        aligned = self.alignment_text()
        if aligned and st.frame_info is not None:
            rect = self.status_rect(p.fontMetrics(), aligned, taken)
            self._shadow_text(p, rect, Qt.AlignmentFlag.AlignCenter, aligned, ALIGNMENT_COLOUR)
        if self.active:
            pen = QPen(ACTIVE_COLOUR, 2)
            p.setPen(pen)
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(QRectF(1, 1, self.width() - 2, self.height() - 2))

    def probe_text(self) -> str:
        """The pixel probe's read-out as painted: marked approximate on lossy pixels ("" without one)."""
        st = self.state
        if st.probe_result is None:
            return ""
        text = st.probe_result.text()
        return f"≈ {text} (lossy pixels: approximate)" if is_lossy(st) else text

    @property
    def lossy_shown(self) -> bool:
        """True while the slice shown holds lossy pixels (the "LOSSY" marker is on the viewport)."""
        return self.state.frame_info is not None and is_lossy(self.state)

    def _paint_lossy_marker(self, p: QPainter, taken: list[QRectF]) -> QRectF:
        """A red-framed "LOSSY" box at the top left, under the corner text (*taken*): the pixels
        shown are a lossy first rendition of a remote series, full fidelity still on its way."""
        font = QFont(p.font())
        font.setBold(True)
        font.setPointSizeF(font.pointSizeF() * 1.3)
        p.save()
        p.setFont(font)
        fm = QFontMetrics(font)
        text = "LOSSY"
        w, h = fm.horizontalAdvance(text) + 14, fm.height() + 6
        top = max((r.bottom() for r in taken if r.left() < self.width() / 2 and r.top() < self.height() / 3),
                  default=0.0)  # fmt: skip
        rect = QRectF(8, top + 8, w, h)
        p.setPen(QPen(LOSSY_COLOUR, 2))
        p.setBrush(QColor(0, 0, 0, 170))
        p.drawRect(rect)
        p.setPen(LOSSY_COLOUR)
        p.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)
        p.restore()
        return rect

    def status_rect(self, fm: QFontMetrics, text: str, taken: list[QRectF]) -> QRectF:
        """Where the status line ("Loading…") goes: centred, as near the top as it can be without
        touching the orientation letter or the corner text (*taken*); it used to cover the top letter."""
        w = fm.horizontalAdvance(text) + 8
        h = fm.height() + 2
        x = (self.width() - w) / 2
        y = 4.0
        for _ in range(64):
            rect = QRectF(x, y, w, h)
            hit = [r for r in taken if r.adjusted(-2, -2, 2, 2).intersects(rect)]
            if not hit:
                return rect
            y = max(r.bottom() for r in hit) + 3
        return QRectF(x, y, w, h)

    def _shadow_text(self, p: QPainter, rect: QRectF, flags: Any, text: str, colour: QColor = TEXT_COLOUR) -> None:
        p.setPen(QColor(0, 0, 0))
        p.drawText(rect.translated(1, 1), flags, text)
        p.setPen(colour)
        p.drawText(rect, flags, text)

    def alignment_text(self) -> str:
        """The line this viewport shows about its alignment to another Frame of Reference
        (the model's :meth:`~hilum.ui.viewer.model.ViewerModel.alignment_text`), or ''."""
        text = getattr(self.model, "alignment_text", None)
        return str(text(self.state)) if callable(text) else ""

    def realign(self, steps: int) -> bool:
        """Hand re-alignment: move this viewport alone ``steps`` slices down (negative: up) and
        keep the offset in its alignment; False when it has no partner of another Frame of
        Reference to be aligned against (then nothing moves)."""
        shift = getattr(self.model, "shift_alignment_slices", None)
        if not callable(shift) or not steps:
            return False
        if shift(self.state, steps) is None:
            return False
        self.update()
        return True

    def _text_block(self, lines: tuple[str, ...], right: bool, font: QFont) -> QImage:
        """Lines of shadowed text rendered once into a transparent image (cached: the corner
        text mostly repeats from slice to slice, and text is the costliest thing to paint)."""
        key = (lines, right, font.key())
        img = self._text_cache.get(key)
        if img is not None:
            return img
        fm = QFontMetrics(font)
        lh = fm.height()
        width = max((fm.horizontalAdvance(t) for t in lines), default=1) + 2
        img = QImage(max(width, 1), max(lh * len(lines) + 1, 1), QImage.Format.Format_ARGB32_Premultiplied)
        img.fill(QColor(0, 0, 0, 0))
        p = QPainter(img)
        p.setFont(font)
        flags = (Qt.AlignmentFlag.AlignRight if right else Qt.AlignmentFlag.AlignLeft) | Qt.AlignmentFlag.AlignVCenter
        for i, line in enumerate(lines):
            self._shadow_text(p, QRectF(0, i * lh, width - 1, lh), flags, line)
        p.end()
        if len(self._text_cache) > 64:
            self._text_cache.clear()
        self._text_cache[key] = img
        return img

    def _paint_corners(self, p: QPainter) -> list[QRectF]:
        """The four-corner text; returns where each block went."""
        st = self.state
        texts = corner_texts(self.overlay, st.volume.header if st.volume is not None else None, st.overlay_values())
        w, h = self.width(), self.height()
        font = p.font()
        out = []
        for corner, lines in texts.items():
            if not lines:
                continue
            right = corner.endswith("right")
            block = self._text_block(tuple(lines), right, font)
            x = w - 6 - block.width() if right else 6
            y = 4 if corner.startswith("top") else h - 4 - block.height()
            p.drawImage(QPointF(x, y), block)
            out.append(QRectF(x, y, block.width(), block.height()))
        return out

    def _paint_letters(self, p: QPainter) -> list[QRectF]:
        """The orientation letters at the edges' middles; returns where each went."""
        letters = self.state.edge_letters()
        if not letters:
            return []
        w, h = self.width(), self.height()
        lh = p.fontMetrics().height()
        A = Qt.AlignmentFlag
        pos = {
            "left": (QRectF(4, h / 2 - lh / 2, 40, lh), A.AlignLeft | A.AlignVCenter),
            "right": (QRectF(w - 44, h / 2 - lh / 2, 40, lh), A.AlignRight | A.AlignVCenter),
            "top": (QRectF(w / 2 - 20, 4, 40, lh), A.AlignHCenter | A.AlignTop),
            "bottom": (QRectF(w / 2 - 20, h - lh - 4, 40, lh), A.AlignHCenter | A.AlignBottom),
        }
        out = []
        for edge, text in letters.items():
            rect, flags = pos[edge]
            self._shadow_text(p, rect, flags, text)
            out.append(QRectF(p.fontMetrics().boundingRect(rect.toRect(), flags, text)))
        return out

    def _paint_scale_bar(self, p: QPainter) -> None:
        """A vertical bar with ticks every tenth, at the right edge below the orientation letter."""
        bar = self.state.scale_bar(0.25, "y")
        if bar is None:
            return
        length_mm, length_px = bar
        w, h = self.width(), self.height()
        lh = p.fontMetrics().height()
        x = w - 10
        y0 = h / 2 + lh
        p.setPen(QPen(TEXT_COLOUR, 1))
        p.drawLine(QPointF(x, y0), QPointF(x, y0 + length_px))
        for i in range(11):
            y = y0 + length_px * i / 10
            tick = 6 if i in (0, 5, 10) else 3
            p.drawLine(QPointF(x, y), QPointF(x - tick, y))
        label = f"{length_mm:g} mm" if length_mm < 10 or length_mm % 10 else f"{length_mm / 10:g} cm"
        self._shadow_text(p, QRectF(x - 90, y0 + length_px - lh / 2, 80, lh),
                          Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)  # fmt: skip

    def _paint_measurements(self, p: QPainter, m: np.ndarray) -> None:
        """The annotations of the frame shown (the study's set), the one being drawn, the selection."""
        st = self.state
        st.label_rects = {}
        for a in st.annotations_here():
            selected = a.uid == st.selected
            colour = SELECTED_COLOUR if selected else MEASURE_COLOUR
            lines = st.annotation_lines(a)
            if lines and is_lossy(st):
                lines = [f"≈ {line}" for line in lines] + ["(lossy pixels: approximate)"]
            rects = self._paint_annotation(p, m, a.kind, a.points, a.text, lines, colour)
            st.label_rects[a.uid] = rects
            if selected:
                self._paint_handles(p, m, a.kind, a.points)
        d = st.draft
        if d is not None and d.key == (st.frame_info.key if st.frame_info is not None else None):
            a = d.annotation(st)
            lines = st.annotation_lines(a) if a is not None else []
            self._paint_annotation(p, m, d.kind, d.points, "", lines, MEASURE_COLOUR, closed=False)

    def _paint_annotation(self, p: QPainter, m: np.ndarray, kind: str, points: list[tuple[float, float]],
                          text: str, lines: list[str], colour: QColor, *,
                          closed: bool = True) -> list[tuple[float, float, float, float]]:  # fmt: skip
        """One annotation in canvas coordinates; returns the rectangles of its text (for grabbing)."""
        pts = [self._to_canvas(m, q) for q in points]
        pen = QPen(colour, 1.5)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        anchor = pts[-1]
        if kind in ("length", "arrow") and len(pts) >= 2:
            p.drawLine(pts[0], pts[1])
            if kind == "arrow":
                self._arrow_head(p, pts[0], pts[1])
        elif kind == "angle":
            p.drawPolyline(pts)
            anchor = pts[1]
        elif kind == "cobb":
            p.drawLine(pts[0], pts[1])
            if len(pts) >= 4:
                p.drawLine(pts[2], pts[3])
                dashed = QPen(colour, 1.0, Qt.PenStyle.DashLine)
                p.setPen(dashed)
                mid0 = (pts[0] + pts[1]) / 2
                mid1 = (pts[2] + pts[3]) / 2
                p.drawLine(mid0, mid1)
                anchor = (mid0 + mid1) / 2
        elif kind in ("ellipse", "rect") and len(pts) >= 2:
            self._draw_shape(p, kind, points, m, colour)
            anchor = QPointF(max(q.x() for q in pts), max(q.y() for q in pts))
        elif kind == "freehand":
            if closed and len(pts) >= 3:
                p.drawPolygon(pts)
            else:
                p.drawPolyline(pts)
            anchor = QPointF(max(q.x() for q in pts), max(q.y() for q in pts))
        elif kind == "point":
            c = pts[0]
            p.drawLine(c + QPointF(-6, 0), c + QPointF(6, 0))
            p.drawLine(c + QPointF(0, -6), c + QPointF(0, 6))
            anchor = c + QPointF(2, 2)
        rects = []
        lh = p.fontMetrics().height()
        if kind == "text":
            c = pts[0]
            w = p.fontMetrics().horizontalAdvance(text) + 4
            rect = QRectF(c.x(), c.y() - lh / 2, w, lh)
            self._shadow_text(p, rect, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, text, colour)
            rects.append((rect.left(), rect.top(), rect.right(), rect.bottom()))
        for i, line in enumerate(lines):
            w = p.fontMetrics().horizontalAdvance(line) + 4
            rect = QRectF(anchor.x() + 6, anchor.y() + i * lh, w, lh)
            self._shadow_text(p, rect, Qt.AlignmentFlag.AlignLeft, line, colour)
            rects.append((rect.left(), rect.top(), rect.right(), rect.bottom()))
        return rects

    @staticmethod
    def _arrow_head(p: QPainter, tail: QPointF, head: QPointF) -> None:
        dx, dy = tail.x() - head.x(), tail.y() - head.y()
        n = math.hypot(dx, dy)
        if n < 1e-6:
            return
        ux, uy = dx / n, dy / n
        for sign in (1, -1):
            a = math.radians(25) * sign
            rx, ry = ux * math.cos(a) - uy * math.sin(a), ux * math.sin(a) + uy * math.cos(a)
            p.drawLine(head, head + QPointF(rx * 12, ry * 12))

    def _paint_handles(self, p: QPainter, m: np.ndarray, kind: str, points: list[tuple[float, float]]) -> None:
        if kind in ("text", "point") or (kind == "freehand" and len(points) > 12):
            return
        p.setPen(QPen(SELECTED_COLOUR, 1))
        p.setBrush(QColor(0, 0, 0, 160))
        for q in points:
            c = self._to_canvas(m, q)
            p.drawRect(QRectF(c.x() - 3.5, c.y() - 3.5, 7, 7))
        p.setBrush(Qt.BrushStyle.NoBrush)

    def _draw_shape(self, p: QPainter, kind: str, points: list[tuple[float, float]], m: np.ndarray,
                    colour: QColor = MEASURE_COLOUR) -> None:  # fmt: skip
        (x0, y0), (x1, y1) = points[0], points[-1]
        p.save()
        p.setTransform(QTransform(m[0, 0], m[1, 0], m[0, 1], m[1, 1], m[0, 2], m[1, 2]))
        pen = QPen(colour, 1.5)
        pen.setCosmetic(True)
        p.setPen(pen)
        rect = QRectF(QPointF(min(x0, x1), min(y0, y1)), QPointF(max(x0, x1), max(y0, y1)))
        if kind == "ellipse":
            p.drawEllipse(rect)
        else:
            p.drawRect(rect)
        p.restore()

    # ------------------------------------------------------------ text annotations

    def _open_text_editor(self) -> None:
        """The small inline editor of a text annotation (Enter: done, Esc: cancel; the focus
        going elsewhere, or another text started: what was typed is kept)."""
        req = self.state.text_request
        if req is None:
            return
        if self.text_editor is not None:
            self._commit_text_editor(self.text_editor)
        x, y = self.state.image_to_canvas(*req.point)
        edit = QLineEdit(req.text, self)
        edit.setObjectName("annotationTextEditor")
        edit.setPlaceholderText("Text, then Enter")
        edit.setMinimumWidth(160)
        edit.adjustSize()
        edit.move(int(min(max(x, 0), max(self.width() - edit.width(), 0))),
                  int(min(max(y - edit.height() / 2, 0), max(self.height() - edit.height(), 0))))  # fmt: skip
        edit.returnPressed.connect(lambda e=edit: self._commit_text_editor(e))
        edit.installEventFilter(self)
        self.text_editor = edit
        self._editor_request = req
        edit.show()
        edit.setFocus(Qt.FocusReason.OtherFocusReason)
        edit.selectAll()

    def _commit_text_editor(self, edit: QLineEdit | None = None) -> None:
        """Finish the editor *edit* (if it is still the open one): add or change its text annotation."""
        if edit is None or edit is not self.text_editor:
            return
        req, text = self._editor_request, edit.text()
        self._drop_text_editor()
        if req is not None:
            commit_text(self.state, req, text)

    def _drop_text_editor(self) -> None:
        """Close the editor, keeping nothing."""
        if self.state.text_request is self._editor_request:
            self.state.text_request = None
        self._editor_request = None
        self._close_text_editor()

    def _close_text_editor(self) -> None:
        edit = self.text_editor
        if edit is None:
            return
        self.text_editor = None
        had_focus = edit.hasFocus()
        edit.removeEventFilter(self)
        edit.hide()
        edit.deleteLater()
        if had_focus:
            self.setFocus(Qt.FocusReason.OtherFocusReason)
        self.update()

    def eventFilter(self, obj: Any, event: QEvent) -> bool:  # noqa: N802
        if obj is self.text_editor and self.text_editor is not None:
            if event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
                if event.key() == Qt.Key.Key_Escape:
                    self._drop_text_editor()
                    return True
            elif event.type() == QEvent.Type.ShortcutOverride:
                event.accept()  # every key is the editor's (the viewer's one-letter shortcuts too)
                return False
            elif event.type() == QEvent.Type.FocusOut:
                edit = self.text_editor  # clicking elsewhere keeps what was typed
                QTimer.singleShot(0, lambda: self._commit_text_editor(edit))
        return super().eventFilter(obj, event)

    # ------------------------------------------------------------ mouse

    def _tool_for(self, button: Qt.MouseButton) -> Tool | None:
        if button == Qt.MouseButton.RightButton:
            return self._right
        if button == Qt.MouseButton.MiddleButton:
            return self._middle
        if button == Qt.MouseButton.LeftButton and self.tool_provider is not None:
            return self.tool_provider()
        return None

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        self.activated.emit()
        self.setFocus(Qt.FocusReason.MouseFocusReason)
        if event.button() == Qt.MouseButton.RightButton and self._drag_tool is None:
            # window/level starts once the mouse has moved: a right click in place is the menu
            self._right_press = event.position()
            event.accept()
            return
        tool = self._tool_for(event.button())
        if event.button() == Qt.MouseButton.LeftButton and tool is not None and self._drag_tool is None:
            tool = self._grab_annotation(event.position(), tool)
        if tool is not None and self.state.frame_info is not None and self._drag_tool is None:
            if tool.name in LOSSY_GUARDED and is_lossy(self.state) and not getattr(self.model, "allow_lossy", False):
                self.refuse_on_lossy(tool.name, event.position())
                event.accept()
                return
            self._drag_tool = tool
            pos = event.position()
            tool.press(self.state, pos.x(), pos.y())
        event.accept()

    def refuse_on_lossy(self, tool: str, pos: QPointF | None = None) -> None:
        """A measurement was refused on lossy pixels: say so where the reader clicked (a tooltip),
        on the viewport's status line, and to listeners."""
        text = ("Lossy image: measurements are disabled until full fidelity arrives "
                "(Viewer menu: Allow measuring lossy images)")  # fmt: skip
        self.state.status = text
        at = self.mapToGlobal(pos.toPoint() if pos is not None else self.rect().center())
        QToolTip.showText(at, text, self)
        self.lossyRefused.emit(tool)
        self.update()

    def _grab_annotation(self, pos: QPointF, tool: Tool) -> Tool:
        """Whatever the tool, a press on an annotation (its line, outline, label or a handle)
        selects it and drags it: :class:`~hilum.ui.viewer.tools.EditDrag`. Not while the tool is
        half-way through drawing one (the angle's second arm, the Cobb angle's second line)."""
        if self.state.draft is not None or self.state.frame_info is None:
            return tool
        hit = hit_test(self.state, pos.x(), pos.y())
        if hit is None:
            return tool
        return EditDrag(*hit)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        pos = event.position()
        start = self._right_press
        if start is not None and (pos - start).manhattanLength() >= CLICK_SLOP:
            self._right_press = None
            if self.state.frame_info is not None:
                self._drag_tool = self._right
                self._right.press(self.state, start.x(), start.y())
        if self._drag_tool is not None:
            self._drag_tool.move(self.state, pos.x(), pos.y())
        elif self.tool_provider is not None:
            tool = self.tool_provider()
            if tool is not None:
                tool.hover(self.state, pos.x(), pos.y())
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.RightButton and self._right_press is not None:
            self._right_press = None
            pos = event.position()
            if self.state.draft is None and self.state.frame_info is not None:
                hit = hit_test(self.state, pos.x(), pos.y())
                self.state.select(hit[0] if hit is not None else None)  # the menu's Delete acts on it
            self.contextMenuRequested.emit(event.globalPosition().toPoint())
            event.accept()
            return
        if self._drag_tool is not None:
            pos = event.position()
            self._drag_tool.release(self.state, pos.x(), pos.y())
            self._drag_tool = None
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802
        """The Menu key and Shift+F10 open the viewport's menu (the right click's, from the keyboard)."""
        key, mods = event.key(), event.modifiers()
        if key == Qt.Key.Key_Menu or (key == Qt.Key.Key_F10 and mods == Qt.KeyboardModifier.ShiftModifier):
            self.contextMenuRequested.emit(self.mapToGlobal(self.rect().center()))
            event.accept()
            return
        alt = mods & ~Qt.KeyboardModifier.KeypadModifier == Qt.KeyboardModifier.AltModifier
        if alt and key in (Qt.Key.Key_Up, Qt.Key.Key_Down):
            self.realign(1 if key == Qt.Key.Key_Down else -1)  # Alt+Down: this viewport alone, down
            event.accept()
            return
        super().keyPressEvent(event)

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802
        """On a text annotation: edit its text; elsewhere: the viewport full size and back."""
        pos = event.position()
        st = self.state
        hit = hit_test(st, pos.x(), pos.y()) if st.frame_info is not None and st.draft is None else None
        a = st.annotations.get(hit[0]) if hit is not None else None
        if a is not None and a.kind == "text" and event.button() == Qt.MouseButton.LeftButton:
            st.select(a.uid)
            st.text_request = TextRequest(a.key, a.points[0], a.uid, a.text)
            st.emit("text")
        elif st.draft is None:
            self.doubleClicked.emit()
        event.accept()

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802
        self.activated.emit()
        delta = event.angleDelta().y()
        if event.modifiers() & Qt.KeyboardModifier.AltModifier:
            # Alt+wheel: hand re-alignment.  X11 hands Alt+wheel over as a horizontal wheel.
            delta = delta or event.angleDelta().x()
            if delta:
                self.realign(-int(delta / 120) or (-1 if delta > 0 else 1))
            event.accept()
            return
        if delta == 0:
            return
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            pos = event.position()
            self.state.zoom_by(math.pow(1.0015, delta), (pos.x(), pos.y()))
        else:
            steps = -int(delta / 120) or (-1 if delta > 0 else 1)
            self.state.scroll_down(steps)  # wheel towards the user: down the stack
        event.accept()

    # ------------------------------------------------------------ drag and drop

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802
        if event.mimeData().hasFormat(SERIES_MIME):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802
        data: QMimeData = event.mimeData()
        if data.hasFormat(SERIES_MIME):
            uid = bytes(data.data(SERIES_MIME).data()).decode("ascii", "replace")
            self.activated.emit()
            self.seriesDropped.emit(uid)
            event.acceptProposedAction()


class ViewportWidget(QWidget):
    """A canvas with a stack scrollbar on its right edge."""

    def __init__(self, state: ViewportState, **kwargs: Any) -> None:
        parent = kwargs.pop("parent", None)
        super().__init__(parent)
        self.state = state
        self.canvas = ViewportCanvas(state, parent=self, **kwargs)
        self.scrollbar = QScrollBar(Qt.Orientation.Vertical, self)
        self.scrollbar.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addWidget(self.canvas, 1)
        lay.addWidget(self.scrollbar)
        self.scrollbar.valueChanged.connect(self._on_scrollbar)
        self._unsubscribe = state.subscribe(self._on_state)
        self._sync_scrollbar()

    def _on_scrollbar(self, value: int) -> None:
        if value != self.state.index:
            self.state.set_index(value)

    def _on_state(self, _state: ViewportState, what: str) -> None:
        if what in ("volume", "index", "loaded"):
            self._sync_scrollbar()

    def _sync_scrollbar(self) -> None:
        n = self.state.stack_size
        self.scrollbar.blockSignals(True)
        # the bar's top is the top of the stack: index n-1 of a stack ordered up the normal
        inverted = self.state.down_step < 0
        if self.scrollbar.invertedAppearance() != inverted:
            self.scrollbar.setInvertedAppearance(inverted)
            self.scrollbar.setInvertedControls(inverted)
        self.scrollbar.setRange(0, max(n - 1, 0))
        self.scrollbar.setPageStep(max(1, n // 10))
        self.scrollbar.setValue(self.state.index)
        self.scrollbar.setVisible(n > 1)
        self.scrollbar.blockSignals(False)

    def set_active(self, active: bool) -> None:
        if self.canvas.active != active:
            self.canvas.active = active
            self.canvas.update()

    def export_view(self, path: str, quality: int = 92) -> bool:
        """Save what the viewport shows (image and overlays) as PNG or JPEG (by suffix)."""
        self.canvas._fast = False  # the settled (smoothed) rendering
        pix = self.canvas.grab()
        fmt = "JPEG" if path.lower().endswith((".jpg", ".jpeg")) else "PNG"
        return bool(pix.save(path, fmt, quality if fmt == "JPEG" else -1))

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self._unsubscribe()
        self.canvas.detach()
        self.canvas._settle.stop()
        super().closeEvent(event)
