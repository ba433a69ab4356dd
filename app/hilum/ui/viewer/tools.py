"""Mouse tools and annotations, headless: the widget forwards canvas events here.

Every tool gets ``press / move / release`` (and ``hover`` for the angle's
third point) with canvas coordinates and acts on a
:class:`~hilum.ui.viewer.state.ViewportState`; tests drive them the same way.
Annotations (arrow, text, length, angle, Cobb angle, ellipse / rectangle /
freehand ROI, point) live on one frame (SOP Instance UID + frame number) in
image coordinates, in the study's one :class:`~hilum.dicom.annotations.AnnotationSet`
(``state.annotations``, shared by every viewport of a viewer), and compute their
values in true units from that frame's pixel spacing and modality values
(:meth:`hilum.dicom.annotations.Annotation.values`). While one is being drawn it
is a :class:`Draft` on the viewport drawing it; finished, it joins the set (one
undoable step) and every viewport showing that frame paints it.

:func:`hit_test` finds the annotation under the mouse (a handle or the body):
the widget then drags it with :class:`EditDrag` whatever the current tool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hilum.dicom.annotations import Annotation, point_count_ok
from hilum.ui.viewer.state import ProbeResult, ViewportState

__all__ = [
    "DRAW_TOOLS",
    "TOOLS",
    "AngleTool",
    "ArrowTool",
    "CobbTool",
    "Draft",
    "EditDrag",
    "EllipseTool",
    "FreehandTool",
    "LengthTool",
    "PanTool",
    "PointTool",
    "ProbeTool",
    "RectTool",
    "ScrollTool",
    "SelectTool",
    "TextRequest",
    "TextTool",
    "Tool",
    "WindowTool",
    "ZoomTool",
    "commit_text",
    "hit_test",
    "make_tool",
]

Point = tuple[float, float]


@dataclass
class Draft:
    """An annotation being drawn on one frame (image coordinates), before it joins the set.

    Its points may be fewer than the finished kind needs (the angle's first arm,
    the Cobb angle's first line, a freehand outline so far).
    """

    kind: str
    points: list[Point]
    key: tuple[str, int]

    def annotation(self, state: ViewportState) -> Annotation | None:
        """The finished annotation (None while the points do not make one yet)."""
        if not point_count_ok(self.kind, len(self.points)):
            return None
        vol = state.volume
        return Annotation(self.kind, self.key[0], self.key[1], list(self.points),
                          series_uid=state.series_uid,
                          study_uid=str(getattr(vol.header, "StudyInstanceUID", "") or "") if vol is not None else "")  # fmt: skip


@dataclass
class TextRequest:
    """Ask the widget for a text: a new text annotation at *point* (uid ``""``) or edit *uid*'s."""

    key: tuple[str, int]
    point: Point
    uid: str = ""
    text: str = ""


def commit_text(state: ViewportState, request: TextRequest, text: str) -> Annotation | None:
    """Finish a :class:`TextRequest`: add the text annotation, change its text (empty: remove it)."""
    text = text.strip()
    aset = state.annotations
    if request.uid:
        if request.uid not in aset:
            return None
        if not text:
            aset.remove(request.uid)
            return None
        if text != request.text:
            aset.update(request.uid, text=text)
        return aset.get(request.uid)
    if not text:
        return None
    draft = Draft("text", [request.point], request.key)
    a = draft.annotation(state)
    if a is None:
        return None
    a.text = text
    return aset.add(a)


class Tool:
    """Base: a drag with the mouse button the tool is bound to."""

    name = ""
    label = ""

    def __init__(self) -> None:
        self.last: Point | None = None
        self.start: Point | None = None

    def press(self, state: ViewportState, x: float, y: float) -> None:
        self.start = self.last = (x, y)

    def move(self, state: ViewportState, x: float, y: float) -> None:
        if self.last is not None:
            self.drag(state, x - self.last[0], y - self.last[1], x, y)
            self.last = (x, y)

    def release(self, state: ViewportState, x: float, y: float) -> None:
        self.move(state, x, y)
        self.start = self.last = None

    def hover(self, state: ViewportState, x: float, y: float) -> None:
        pass

    def cancel(self, state: ViewportState) -> None:
        self.start = self.last = None

    def drag(self, state: ViewportState, dx: float, dy: float, x: float, y: float) -> None:
        pass


class WindowTool(Tool):
    name, label = "window", "Window/level"

    def drag(self, state: ViewportState, dx: float, dy: float, x: float, y: float) -> None:
        state.drag_window(dx, dy)


class PanTool(Tool):
    name, label = "pan", "Pan"

    def drag(self, state: ViewportState, dx: float, dy: float, x: float, y: float) -> None:
        state.pan_by(dx, dy)


class ZoomTool(Tool):
    name, label = "zoom", "Zoom"

    def drag(self, state: ViewportState, dx: float, dy: float, x: float, y: float) -> None:
        state.zoom_by(math.exp(-dy / 150.0), self.start)


class ScrollTool(Tool):
    """Drag up/down to page through the stack (the whole stack over about the canvas height)."""

    name, label = "scroll", "Scroll"

    def __init__(self) -> None:
        super().__init__()
        self._accum = 0.0

    def press(self, state: ViewportState, x: float, y: float) -> None:
        super().press(state, x, y)
        self._accum = 0.0

    def drag(self, state: ViewportState, dx: float, dy: float, x: float, y: float) -> None:
        step = max(2.0, state.canvas_size[1] / max(state.stack_size, 1))
        self._accum += dy
        n = int(self._accum / step)
        if n:
            self._accum -= n * step
            state.scroll_down(n)  # dragging down goes down the stack


def _dist_segment(p: Point, a: Point, b: Point) -> float:
    ax, ay, bx, by = a[0], a[1], b[0], b[1]
    dx, dy = bx - ax, by - ay
    n = dx * dx + dy * dy
    t = 0.0 if n == 0 else max(0.0, min(1.0, ((p[0] - ax) * dx + (p[1] - ay) * dy) / n))
    return math.hypot(p[0] - (ax + t * dx), p[1] - (ay + t * dy))


def outline(kind: str, pts: list[Point]) -> list[tuple[Point, Point]]:
    """The segments a person can grab an annotation by (image coordinates)."""
    if kind in ("arrow", "length"):
        return [(pts[0], pts[1])]
    if kind == "angle":
        return [(pts[0], pts[1]), (pts[1], pts[2])]
    if kind == "cobb":
        return [(pts[0], pts[1]), (pts[2], pts[3])]
    if kind == "rect":
        (x0, y0), (x1, y1) = pts[0], pts[1]
        c = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        return [(c[i], c[(i + 1) % 4]) for i in range(4)]
    if kind == "ellipse":
        (x0, y0), (x1, y1) = pts[0], pts[1]
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
        ring = [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in (i * math.pi / 24 for i in range(48))]
        return [(ring[i], ring[(i + 1) % 48]) for i in range(48)]
    if kind == "freehand":
        return [(pts[i], pts[(i + 1) % len(pts)]) for i in range(len(pts))]
    return []


HIT_RADIUS = 6.0
"""How near (canvas pixels) the mouse must be to an annotation's line or handle to grab it."""


def hit_test(state: ViewportState, x: float, y: float, radius: float = HIT_RADIUS) -> tuple[str, int | None] | None:
    """The annotation under the canvas point ``(x, y)`` on the current frame: ``(uid, handle)``.

    *handle* is the index of the point grabbed (its handle), or None for the body (a line,
    the outline of an ROI, the text or value label). The topmost (last drawn) wins.
    """
    items = list(reversed(state.annotations_here()))
    to_c = state.image_to_canvas
    for a in items:  # handles first: a corner on top of another's line is the corner
        if a.kind in ("text", "point"):
            continue
        for i, q in enumerate(a.points):
            cx, cy = to_c(*q)
            if math.hypot(cx - x, cy - y) <= radius:
                return a.uid, i
    for a in items:
        if a.kind in ("point", "text"):  # the text: its anchor, or the painted label (below)
            cx, cy = to_c(*a.points[0])
            if math.hypot(cx - x, cy - y) <= radius:
                return a.uid, None
        for p0, p1 in outline(a.kind, a.points):
            if _dist_segment((x, y), to_c(*p0), to_c(*p1)) <= radius:
                return a.uid, None
        for r in state.label_rects.get(a.uid, ()):
            if r[0] - 2 <= x <= r[2] + 2 and r[1] - 2 <= y <= r[3] + 2:
                return a.uid, None
    return None


class EditDrag(Tool):
    """Select an annotation and drag it (the body: move; a handle: that point).

    The whole drag is ONE undoable step (the set merges the updates of one drag).
    """

    name, label = "edit", "Move / edit annotation"

    def __init__(self, uid: str, handle: int | None) -> None:
        super().__init__()
        self.uid, self.handle = uid, handle
        self.origin: Point | None = None
        self.points: list[Point] = []
        self.token = object()

    def press(self, state: ViewportState, x: float, y: float) -> None:
        a = state.annotations.get(self.uid)
        if a is None:
            return
        state.select(self.uid)
        self.origin = state.canvas_to_image(x, y)
        self.points = list(a.points)

    def move(self, state: ViewportState, x: float, y: float) -> None:
        if self.origin is None or self.uid not in state.annotations:
            return
        px, py = state.canvas_to_image(x, y)
        dx, dy = px - self.origin[0], py - self.origin[1]
        if self.handle is None:
            pts = [(qx + dx, qy + dy) for qx, qy in self.points]
        else:
            pts = list(self.points)
            qx, qy = pts[self.handle]
            pts[self.handle] = (qx + dx, qy + dy)
        a = state.annotations.get(self.uid)
        if a is not None and pts != a.points:
            state.annotations.update(self.uid, points=pts, merge=self.token)

    def release(self, state: ViewportState, x: float, y: float) -> None:
        self.move(state, x, y)
        self.origin = None


class SelectTool(Tool):
    """The pointer: a click on an annotation selects it (and a drag moves it); elsewhere, deselects."""

    name, label = "select", "Select / move annotations"

    def press(self, state: ViewportState, x: float, y: float) -> None:
        state.select(None)


class _DrawTool(Tool):
    """Tools that draw an annotation: a :class:`Draft` while drawing, then one added to the set."""

    kind = ""

    def _img(self, state: ViewportState, x: float, y: float) -> Point:
        return state.canvas_to_image(x, y)

    @property
    def current(self) -> Draft | None:
        return self._draft

    def __init__(self) -> None:
        super().__init__()
        self._draft: Draft | None = None

    def _start(self, state: ViewportState, x: float, y: float) -> Draft | None:
        f = state.frame_info
        if f is None:
            return None
        p = self._img(state, x, y)
        self._draft = Draft(self.kind, [p, p], f.key)
        state.select(None)
        state.draft = self._draft
        state.emit("measurements")
        return self._draft

    def _finish(self, state: ViewportState) -> Annotation | None:
        d = self._draft
        self._draft = None
        state.draft = None
        a = d.annotation(state) if d is not None else None
        if a is not None:
            state.annotations.add(a)
        state.emit("measurements")
        return a

    def press(self, state: ViewportState, x: float, y: float) -> None:
        self._start(state, x, y)

    def move(self, state: ViewportState, x: float, y: float) -> None:
        if self._draft is not None:
            self._draft.points[-1] = self._img(state, x, y)
            state.emit("measurements")

    def release(self, state: ViewportState, x: float, y: float) -> None:
        d = self._draft
        if d is None:
            return
        d.points[-1] = self._img(state, x, y)
        if self._is_click(state, d.points[-2], d.points[-1]):
            self.cancel(state)
            return
        self._finish(state)

    @staticmethod
    def _is_click(state: ViewportState, p0: Point, p1: Point) -> bool:
        a, b = state.image_to_canvas(*p0), state.image_to_canvas(*p1)
        return math.hypot(b[0] - a[0], b[1] - a[1]) < 2.0  # canvas pixels: a click, not a drag

    def cancel(self, state: ViewportState) -> None:
        self._draft = None
        if state.draft is not None:
            state.draft = None
        state.emit("measurements")


class LengthTool(_DrawTool):
    name, label, kind = "length", "Length", "length"


class ArrowTool(_DrawTool):
    """Drag from the tail to the head."""

    name, label, kind = "arrow", "Arrow", "arrow"


class EllipseTool(_DrawTool):
    name, label, kind = "ellipse", "Ellipse ROI", "ellipse"


class RectTool(_DrawTool):
    name, label, kind = "rect", "Rectangle ROI", "rect"


class AngleTool(_DrawTool):
    """Drag the first arm (point → vertex), then click the end of the second arm."""

    name, label, kind = "angle", "Angle", "angle"

    def press(self, state: ViewportState, x: float, y: float) -> None:
        d = self._draft
        if d is not None and len(d.points) == 3:
            d.points[2] = self._img(state, x, y)
            return
        self._start(state, x, y)

    def release(self, state: ViewportState, x: float, y: float) -> None:
        d = self._draft
        if d is None:
            return
        p = self._img(state, x, y)
        if len(d.points) == 2:
            d.points[1] = p
            if self._is_click(state, d.points[0], p):
                self.cancel(state)
                return
            d.points.append(p)  # the second arm follows the mouse from here
            state.emit("measurements")
        else:
            d.points[2] = p
            self._finish(state)

    def hover(self, state: ViewportState, x: float, y: float) -> None:
        d = self._draft
        if d is not None and len(d.points) == 3:
            d.points[2] = self._img(state, x, y)
            state.emit("measurements")


class CobbTool(_DrawTool):
    """Drag the first line (an endplate), then drag the second: the angle between them."""

    name, label, kind = "cobb", "Cobb angle", "cobb"

    def press(self, state: ViewportState, x: float, y: float) -> None:
        d = self._draft
        if d is not None and len(d.points) == 2:
            p = self._img(state, x, y)
            d.points += [p, p]
            state.emit("measurements")
            return
        self._start(state, x, y)

    def release(self, state: ViewportState, x: float, y: float) -> None:
        d = self._draft
        if d is None:
            return
        d.points[-1] = self._img(state, x, y)
        if self._is_click(state, d.points[-2], d.points[-1]):
            if len(d.points) == 4:
                del d.points[2:]  # a click instead of the second line: draw it again
                state.emit("measurements")
            else:
                self.cancel(state)
            return
        if len(d.points) == 4:
            self._finish(state)
        else:
            state.emit("measurements")  # the first line stays; the second is dragged next


class FreehandTool(_DrawTool):
    """Drag a closed outline: the polygon closes itself on release (area, mean, SD, min, max inside)."""

    name, label, kind = "freehand", "Freehand ROI", "freehand"
    STEP = 2.0
    """A new vertex when the mouse has moved this far (canvas pixels) from the last one."""

    def press(self, state: ViewportState, x: float, y: float) -> None:
        d = self._start(state, x, y)
        if d is not None:
            del d.points[1:]

    def move(self, state: ViewportState, x: float, y: float) -> None:
        d = self._draft
        if d is None:
            return
        lx, ly = state.image_to_canvas(*d.points[-1])
        if math.hypot(x - lx, y - ly) >= self.STEP:
            d.points.append(self._img(state, x, y))
            state.emit("measurements")

    def release(self, state: ViewportState, x: float, y: float) -> None:
        d = self._draft
        if d is None:
            return
        self.move(state, x, y)
        canvas = [state.image_to_canvas(*q) for q in d.points]
        area = 0.5 * abs(sum(canvas[i][0] * canvas[i - 1][1] - canvas[i - 1][0] * canvas[i][1]
                             for i in range(len(canvas))))  # fmt: skip
        if len(d.points) < 3 or area < 4.0:  # a click or a line: no outline
            self.cancel(state)
            return
        self._finish(state)


class PointTool(_DrawTool):
    """Click: a point annotation showing the value there (modality units)."""

    name, label, kind = "point", "Point (value)", "point"

    def press(self, state: ViewportState, x: float, y: float) -> None:
        d = self._start(state, x, y)
        if d is not None:
            del d.points[1:]

    def move(self, state: ViewportState, x: float, y: float) -> None:
        if self._draft is not None:
            self._draft.points[0] = self._img(state, x, y)
            state.emit("measurements")

    def release(self, state: ViewportState, x: float, y: float) -> None:
        if self._draft is not None:
            self._draft.points[0] = self._img(state, x, y)
            self._finish(state)


class TextTool(Tool):
    """Click where the text goes, type it (the viewport opens a small editor), Enter."""

    name, label = "text", "Text"

    def release(self, state: ViewportState, x: float, y: float) -> None:
        f = state.frame_info
        super().release(state, x, y)
        if f is None:
            return
        state.select(None)
        state.text_request = TextRequest(f.key, state.canvas_to_image(x, y))
        state.emit("text")


class ProbeTool(Tool):
    """Press and drag: show the pixel value (modality units) and patient coordinates."""

    name, label = "probe", "Pixel probe"

    def __init__(self) -> None:
        super().__init__()
        self.result: ProbeResult | None = None

    def _probe(self, state: ViewportState, x: float, y: float) -> None:
        self.result = state.probe(*state.canvas_to_image(x, y))
        state.probe_result = self.result
        state.emit("measurements")

    def press(self, state: ViewportState, x: float, y: float) -> None:
        super().press(state, x, y)
        self._probe(state, x, y)

    def drag(self, state: ViewportState, dx: float, dy: float, x: float, y: float) -> None:
        self._probe(state, x, y)


TOOLS: dict[str, type[Tool]] = {
    t.name: t
    for t in (
        WindowTool,
        PanTool,
        ZoomTool,
        ScrollTool,
        SelectTool,
        LengthTool,
        AngleTool,
        CobbTool,
        EllipseTool,
        RectTool,
        FreehandTool,
        ArrowTool,
        TextTool,
        PointTool,
        ProbeTool,
    )
}
DRAW_TOOLS = ("length", "angle", "cobb", "ellipse", "rect", "freehand", "arrow", "text", "point")
"""The tools that make annotations (the rest only look at the image)."""


def make_tool(name: str) -> Tool:
    try:
        return TOOLS[name]()
    except KeyError:
        raise ValueError(f"unknown tool {name!r}; one of {', '.join(TOOLS)}") from None


def measurements_on_frame(state: ViewportState) -> list[Annotation]:
    """The annotations on the frame *state* shows (the study's set, :meth:`ViewportState.annotations_here`)."""
    return state.annotations_here()
