"""Mouse tools and measurements, headless: the widget forwards canvas events here.

Every tool gets ``press / move / release`` (and ``hover`` for the angle's
third point) with canvas coordinates and acts on a
:class:`~hilum.ui.viewer.state.ViewportState`; tests drive them the same way.
Measurements live on one frame (SOP Instance UID + frame number), in image
coordinates, and compute their values in true units from that frame's pixel
spacing and modality values (:mod:`hilum.dicom.stack_measure`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hilum.dicom.stack_measure import angle_degrees, length_mm, modality_unit, roi_stats
from hilum.ui.viewer.state import ProbeResult, ViewportState

__all__ = [
    "TOOLS",
    "AngleTool",
    "EllipseTool",
    "LengthTool",
    "Measurement",
    "PanTool",
    "ProbeTool",
    "RectTool",
    "ScrollTool",
    "Tool",
    "WindowTool",
    "ZoomTool",
    "make_tool",
]

Point = tuple[float, float]


@dataclass
class Measurement:
    """A length, angle, ellipse or rect drawn on one frame (image coordinates)."""

    kind: str
    points: list[Point]
    key: tuple[str, int]
    done: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def values(self, state: ViewportState) -> dict[str, Any]:
        """Numbers of this measurement on *state*'s frame (which must be the measurement's frame)."""
        f = state.frame_info
        if f is None:
            return {}
        sp = f.spacing
        if self.kind == "length" and len(self.points) >= 2:
            return {"length": length_mm(self.points[0], self.points[1], sp), "unit": sp.unit, "note": sp.note}
        if self.kind == "angle" and len(self.points) >= 3:
            return {"angle": angle_degrees(self.points[0], self.points[1], self.points[2], sp)}
        if self.kind in ("ellipse", "rect") and len(self.points) >= 2:
            values = state.modality_frame()
            if values is None or values.ndim != 2:
                return {}
            unit = modality_unit(state.modality, f.pipeline.modality.rescale_type if f.pipeline is not None else "")
            stats = roi_stats(values, self.kind, self.points[0], self.points[1], sp, unit)
            return {"stats": stats, "note": sp.note}
        return {}

    def text(self, state: ViewportState) -> list[str]:
        v = self.values(state)
        if "length" in v:
            line = f"{v['length']:.1f} {v['unit']}"
            return [line + (f" ({v['note']})" if v["note"] else "")]
        if "angle" in v:
            return [f"{v['angle']:.1f}°"]
        if "stats" in v:
            lines = v["stats"].lines()
            return lines + ([f"({v['note']})"] if v["note"] else [])
        return []


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


class _DrawTool(Tool):
    """Tools that add a :class:`Measurement` (points in image coordinates)."""

    kind = ""
    npoints = 2

    def __init__(self) -> None:
        super().__init__()
        self.current: Measurement | None = None

    def _img(self, state: ViewportState, x: float, y: float) -> Point:
        return state.canvas_to_image(x, y)

    def press(self, state: ViewportState, x: float, y: float) -> None:
        f = state.frame_info
        if f is None:
            return
        p = self._img(state, x, y)
        self.current = Measurement(self.kind, [p, p], f.key)
        state.measurements.append(self.current)
        state.emit("measurements")

    def move(self, state: ViewportState, x: float, y: float) -> None:
        if self.current is not None:
            self.current.points[-1] = self._img(state, x, y)
            state.emit("measurements")

    def release(self, state: ViewportState, x: float, y: float) -> None:
        m = self.current
        if m is None:
            return
        m.points[-1] = self._img(state, x, y)
        p0, p1 = m.points[0], m.points[-1]
        if math.hypot(p1[0] - p0[0], p1[1] - p0[1]) < 0.5:  # a click, not a drag
            state.measurements.remove(m)
        else:
            m.done = True
        self.current = None
        state.emit("measurements")

    def cancel(self, state: ViewportState) -> None:
        if self.current is not None and self.current in state.measurements:
            state.measurements.remove(self.current)
        self.current = None
        state.emit("measurements")


class LengthTool(_DrawTool):
    name, label, kind = "length", "Length", "length"


class EllipseTool(_DrawTool):
    name, label, kind = "ellipse", "Ellipse ROI", "ellipse"


class RectTool(_DrawTool):
    name, label, kind = "rect", "Rectangle ROI", "rect"


class AngleTool(_DrawTool):
    """Drag the first arm (point → vertex), then click the end of the second arm."""

    name, label, kind = "angle", "Angle", "angle"

    def press(self, state: ViewportState, x: float, y: float) -> None:
        if self.current is not None and len(self.current.points) == 3:
            self.current.points[2] = self._img(state, x, y)
            return
        super().press(state, x, y)

    def release(self, state: ViewportState, x: float, y: float) -> None:
        m = self.current
        if m is None:
            return
        p = self._img(state, x, y)
        if len(m.points) == 2:
            m.points[1] = p
            if math.hypot(p[0] - m.points[0][0], p[1] - m.points[0][1]) < 0.5:
                self.cancel(state)
                return
            m.points.append(p)  # the second arm follows the mouse from here
        else:
            m.points[2] = p
            m.done = True
            self.current = None
        state.emit("measurements")

    def hover(self, state: ViewportState, x: float, y: float) -> None:
        if self.current is not None and len(self.current.points) == 3:
            self.current.points[2] = self._img(state, x, y)
            state.emit("measurements")

    def move(self, state: ViewportState, x: float, y: float) -> None:
        if self.current is not None:
            self.current.points[-1] = self._img(state, x, y)
            state.emit("measurements")


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
    for t in (WindowTool, PanTool, ZoomTool, ScrollTool, LengthTool, AngleTool, EllipseTool, RectTool, ProbeTool)
}


def make_tool(name: str) -> Tool:
    try:
        return TOOLS[name]()
    except KeyError:
        raise ValueError(f"unknown tool {name!r}; one of {', '.join(TOOLS)}") from None


def measurements_on_frame(state: ViewportState) -> list[Measurement]:
    f = state.frame_info
    if f is None:
        return []
    return [m for m in state.measurements if m.key == f.key]
