"""The viewer's headless model: layout, viewports, the active one, links, reference lines.

:class:`ViewerModel` owns one :class:`~hilum.ui.viewer.state.ViewportState`
per cell of the layout and keeps the ones beyond the current layout, so going
from 2x2 back to 1x1 and again to 2x2 finds the series where they were. It
links viewports:

* scrolling by patient position (not by index) among viewports whose series
  share a Frame of Reference UID (PS3.3 C.7.4.1: same FoR = same patient
  coordinate system): each follower shows its slice nearest to the centre of
  the leader's slice;
* optionally window/level and zoom.

Reference lines: where the active viewport's slice cuts the image of every
other viewport of the same Frame of Reference that is not parallel to it (the
slice position on a localizer).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from hilum.dicom.geometry import LINKED_SCROLL_TOLERANCE, reference_line
from hilum.ui.viewer.state import ViewportState

__all__ = ["LAYOUTS", "Layout", "ViewerModel"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """A grid of ``rows x columns`` viewports."""

    rows: int
    columns: int

    def __post_init__(self) -> None:
        if not (1 <= self.rows <= 6 and 1 <= self.columns <= 6):
            raise ValueError(f"a layout has 1 to 6 rows and columns, not {self.rows}x{self.columns}")

    @property
    def count(self) -> int:
        return self.rows * self.columns

    @property
    def name(self) -> str:
        return f"{self.rows}x{self.columns}"

    @classmethod
    def parse(cls, text: str) -> Layout:
        """``"2x2"``, ``"1×3"``, ``"3 x 3"`` → Layout (rows first)."""
        m = re.fullmatch(r"\s*(\d+)\s*[xX×*]\s*(\d+)\s*", text or "")
        if not m:
            raise ValueError(f"a layout is written ROWSxCOLUMNS, e.g. 2x2, not {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))


LAYOUTS = [Layout(1, 1), Layout(1, 2), Layout(2, 1), Layout(2, 2), Layout(1, 3), Layout(3, 3)]
"""The standard layouts (Ctrl+1 … Ctrl+6); any other is a custom layout."""

ModelListener = Callable[[str], None]


class ViewerModel:
    """Layout, viewports, active viewport, link settings (see the module docstring)."""

    def __init__(self, layout: Layout = Layout(1, 1)) -> None:
        self.layout = layout
        self.viewports: list[ViewportState] = []
        self.active = 0
        self.link_scroll = True
        self.link_window = False
        self.link_zoom = False
        self.show_reference_lines = True
        self._listeners: list[ModelListener] = []
        self._syncing = False
        self._ensure(layout.count)

    # ------------------------------------------------------------ events

    def subscribe(self, callback: ModelListener) -> Callable[[], None]:
        """``callback(what)``, what in ``layout``, ``active``, ``links``, ``reference``."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def _emit(self, what: str) -> None:
        for cb in list(self._listeners):
            cb(what)

    # ------------------------------------------------------------ viewports

    def _ensure(self, n: int) -> None:
        while len(self.viewports) < n:
            vp = ViewportState(name=f"viewport{len(self.viewports) + 1}")
            vp.subscribe(self._on_viewport)
            self.viewports.append(vp)

    @property
    def visible(self) -> list[ViewportState]:
        return self.viewports[: self.layout.count]

    @property
    def active_viewport(self) -> ViewportState:
        return self.viewports[self.active]

    def set_layout(self, layout: Layout | str) -> None:
        if isinstance(layout, str):
            layout = Layout.parse(layout)
        self.layout = layout
        self._ensure(layout.count)
        if self.active >= layout.count:
            self.active = 0
        self._emit("layout")

    def set_active(self, index: int) -> None:
        index = max(0, min(index, self.layout.count - 1))
        if index != self.active:
            self.active = index
            self._emit("active")
            self._emit("reference")

    def cycle_active(self, step: int = 1) -> None:
        self.set_active((self.active + step) % self.layout.count)

    def first_empty(self) -> int | None:
        for i, vp in enumerate(self.visible):
            if vp.volume is None:
                return i
        return None

    def set_links(self, *, scroll: bool | None = None, window: bool | None = None, zoom: bool | None = None) -> None:
        if scroll is not None:
            self.link_scroll = scroll
        if window is not None:
            self.link_window = window
        if zoom is not None:
            self.link_zoom = zoom
        self._emit("links")
        if self.link_scroll:
            self.sync_from(self.active_viewport)

    # ------------------------------------------------------------ sync

    def _on_viewport(self, vp: ViewportState, what: str) -> None:
        if self._syncing:
            return
        if what in ("index", "volume") and self.link_scroll:
            self.sync_from(vp)
        elif what == "window" and self.link_window:
            self._sync_window(vp)
        elif what == "view" and self.link_zoom:
            self._sync_zoom(vp)
        if what in ("index", "volume") and vp is self.active_viewport:
            self._emit("reference")

    def linked_to(self, vp: ViewportState) -> list[ViewportState]:
        """Visible viewports whose series share *vp*'s Frame of Reference (excluding *vp*)."""
        f = vp.frame_info
        if f is None or not f.frame_of_reference_uid or f.geometry is None:
            return []
        out = []
        for other in self.visible:
            g = other.frame_info
            if other is vp or g is None or g.geometry is None:
                continue
            if g.frame_of_reference_uid == f.frame_of_reference_uid:
                out.append(other)
        return out

    def sync_from(self, leader: ViewportState) -> None:
        """Move linked viewports to the slice nearest the leader's slice centre."""
        g = leader.geometry
        if g is None:
            return
        centre = g.centre
        self._syncing = True
        try:
            for other in self.linked_to(leader):
                og = other.geometry
                if og is None or not og.parallel_to(g, tolerance=LINKED_SCROLL_TOLERANCE):
                    continue  # a localizer across the stack: it gets a reference line instead
                k = other.volume.stack.nearest_index(centre) if other.volume is not None else None
                if k is not None:
                    other.set_index(k)
        finally:
            self._syncing = False
        self._emit("reference")

    def _sync_window(self, leader: ViewportState) -> None:
        w = leader.current_window()
        self._syncing = True
        try:
            for other in self.visible:
                if other is leader or other.volume is None or other.modality != leader.modality:
                    continue
                if w is None:
                    other.reset_window()
                else:
                    other.set_window(w.center, w.width, leader.window_label)
                if other.invert != leader.invert:
                    other.toggle_invert()
        finally:
            self._syncing = False

    def _sync_zoom(self, leader: ViewportState) -> None:
        self._syncing = True
        try:
            for other in self.visible:
                if other is not leader and other.volume is not None:
                    other.set_zoom(leader.view.zoom)
        finally:
            self._syncing = False

    # ------------------------------------------------------------ reference lines

    def reference_lines(self, vp: ViewportState) -> list[tuple[tuple[float, float], tuple[float, float]]]:
        """Lines (image coordinates of *vp*) where the active viewport's slice cuts *vp*'s image.

        Only between different viewports of one Frame of Reference whose
        planes are not parallel (e.g. an axial slice on a coronal localizer).
        """
        if not self.show_reference_lines:
            return []
        active = self.active_viewport
        if vp is active or vp not in self.visible:
            return []
        src, dst = active.frame_info, vp.frame_info
        if src is None or dst is None or src.geometry is None or dst.geometry is None:
            return []
        if not src.frame_of_reference_uid or src.frame_of_reference_uid != dst.frame_of_reference_uid:
            return []
        line = reference_line(dst.geometry, src.geometry)
        return [line] if line is not None else []
