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

Across Frames of Reference (a prior acquired another day has its own patient
coordinate system): once an :class:`~hilum.dicom.registration.Alignment`
relates two series (:meth:`ViewerModel.set_alignment`, from a registration or
made by hand), their viewports link too. The leader's slice centre is mapped
through the alignment into the follower's patient coordinates and the
follower goes to its slice nearest to it (the same parallel check, on the
mapped plane). :meth:`ViewerModel.shift_alignment` re-aligns by hand: one
viewport moves, its partner does not, and the alignment keeps the offset.

Reference lines: where the active viewport's slice cuts the image of every
other viewport of the same Frame of Reference, or of one aligned with it,
that is not parallel to it (the slice position on a localizer).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hilum.dicom.geometry import LINKED_SCROLL_TOLERANCE, PlaneGeometry, reference_line
from hilum.dicom.registration import Alignment, AlignmentStore
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
        self.allow_lossy = False
        """Measuring tools allowed on lossy pixels (a remote series' first rendition); off by default."""
        self._listeners: list[ModelListener] = []
        self._syncing = False
        self._alignments: dict[tuple[str, str], Alignment] = {}
        self._leader: ViewportState | None = None
        self.alignment_store: AlignmentStore | None = None
        """Where hand re-alignments are kept (set by the viewer); None: in this model only."""
        self._ensure(layout.count)

    # ------------------------------------------------------------ events

    def subscribe(self, callback: ModelListener) -> Callable[[], None]:
        """``callback(what)``, what in ``layout``, ``active``, ``links``, ``reference``, ``alignment``."""
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

    @staticmethod
    def _same_for(a: ViewportState, b: ViewportState) -> bool:
        fa, fb = a.frame_info, b.frame_info
        return bool(
            fa is not None and fb is not None and fa.frame_of_reference_uid
            and fa.frame_of_reference_uid == fb.frame_of_reference_uid
        )  # fmt: skip

    def linked_to(self, vp: ViewportState) -> list[ViewportState]:
        """Visible viewports whose series share *vp*'s Frame of Reference, or are aligned with
        *vp*'s series (:meth:`alignment_between`), excluding *vp*."""
        f = vp.frame_info
        if f is None or f.geometry is None:
            return []
        out = []
        for other in self.visible:
            g = other.frame_info
            if other is vp or g is None or g.geometry is None:
                continue
            if self._same_for(vp, other) or self.alignment_between(other, vp) is not None:
                out.append(other)
        return out

    def _leader_plane_in(self, follower: ViewportState, leader: ViewportState) -> PlaneGeometry | None:
        """The leader's current plane in the follower's patient coordinates (through their
        alignment when their Frames of Reference differ)."""
        g = leader.geometry
        if g is None:
            return None
        if self._same_for(follower, leader):
            return g
        a = self.alignment_between(follower, leader)
        return a.plane_to_fixed(g) if a is not None else None

    def _follow(self, other: ViewportState, leader: ViewportState) -> None:
        g, og = self._leader_plane_in(other, leader), other.geometry
        if g is None or og is None or not og.parallel_to(g, tolerance=LINKED_SCROLL_TOLERANCE):
            return  # a localizer across the stack: it gets a reference line instead
        k = other.volume.stack.nearest_index(g.centre) if other.volume is not None else None
        if k is not None:
            other.set_index(k)

    def sync_from(self, leader: ViewportState) -> None:
        """Move linked viewports to the slice nearest the leader's slice centre (mapped
        through the alignment for a viewport of another Frame of Reference)."""
        if leader.geometry is None:
            return
        self._leader = leader
        self._syncing = True
        try:
            for other in self.linked_to(leader):
                self._follow(other, leader)
        finally:
            self._syncing = False
        self._emit("reference")

    # ------------------------------------------------------------ alignments

    @property
    def alignments(self) -> list[Alignment]:
        """The alignments this model knows, as set."""
        return list(self._alignments.values())

    def set_alignment(self, a: Alignment) -> None:
        """Relate two series of different Frames of Reference (replaces what was known for
        the pair, either way round); linked viewports follow the active one at once."""
        self._alignments.pop((a.moving_series, a.fixed_series), None)
        self._alignments[(a.fixed_series, a.moving_series)] = a
        self._emit("alignment")
        if self.link_scroll:
            self.sync_from(self.active_viewport)
        else:
            self._emit("reference")

    def _stored_between(self, vp_a: ViewportState, vp_b: ViewportState) -> tuple[Alignment, bool] | None:
        """The stored alignment relating the two viewports' series, and whether it runs the other
        way (fixed = *vp_b*).  By series first, then by Frame of Reference (an alignment
        relates two patient coordinate systems, so any series pair of those two FoRs)."""
        sa, sb = vp_a.series_uid, vp_b.series_uid
        if not sa or not sb or sa == sb:
            return None
        a = self._alignments.get((sa, sb))
        if a is not None:
            return a, False
        a = self._alignments.get((sb, sa))
        if a is not None:
            return a, True
        fa, fb = vp_a.frame_info, vp_b.frame_info
        ua = fa.frame_of_reference_uid if fa is not None else ""
        ub = fb.frame_of_reference_uid if fb is not None else ""
        if not ua or not ub or ua == ub:
            return None
        for a in self._alignments.values():
            if (a.fixed_for, a.moving_for) == (ua, ub):
                return a, False
            if (a.fixed_for, a.moving_for) == (ub, ua):
                return a, True
        return None

    def alignment_between(self, vp_a: ViewportState, vp_b: ViewportState) -> Alignment | None:
        """The alignment that maps *vp_b*'s patient coordinates to *vp_a*'s (fixed = *vp_a*'s
        series), or None (same Frame of Reference needs none; none known)."""
        found = self._stored_between(vp_a, vp_b)
        if found is None:
            return None
        a, reverse = found
        return a.inverse() if reverse else a

    def _anchor(self, vp: ViewportState) -> ViewportState | None:
        """The viewport *vp* is aligned against when re-aligned by hand: one of another Frame of
        Reference whose plane is parallel to *vp*'s; the last leader, the active viewport, an
        aligned one, in that order of preference."""
        g = vp.geometry
        if g is None:
            return None
        candidates = []
        for other in self.visible:
            og = other.geometry
            if other is vp or og is None or other.volume is None or self._same_for(vp, other):
                continue
            a = self.alignment_between(vp, other)
            mapped = a.plane_to_fixed(og) if a is not None else og
            if g.parallel_to(mapped, tolerance=LINKED_SCROLL_TOLERANCE):
                candidates.append((other, a is not None))
        if not candidates:
            return None
        for preferred in (self._leader, self.active_viewport):
            for other, _ in candidates:
                if other is preferred:
                    return other
        aligned = [o for o, has in candidates if has]
        return aligned[0] if aligned else candidates[0][0]

    def shift_alignment(self, vp: ViewportState, delta_mm: float | npt.ArrayLike) -> Alignment | None:
        """Re-align *vp* by hand: it moves ``delta_mm`` (along its slice normal, or a 3-vector in
        its patient coordinates), its partner of the other Frame of Reference stays, and the
        alignment between them keeps the offset (hand-made when there was none: the slices
        shown now correspond).  Returns the alignment seen from *vp* (fixed = *vp*'s series),
        or None when *vp* has no partner to be aligned against."""
        g = vp.geometry
        anchor = self._anchor(vp)
        if g is None or anchor is None or anchor.geometry is None:
            return None
        d = np.asarray(delta_mm, dtype=np.float64)
        delta = float(d) * g.normal if d.ndim == 0 else d.reshape(3)
        found = self._stored_between(vp, anchor)
        if found is None:
            # No alignment yet: a hand one (fixed = the anchor) that puts the two centres together.
            fa, fv = anchor.frame_info, vp.frame_info
            m = np.eye(4)
            m[:3, 3] = anchor.geometry.centre - g.centre
            stored = Alignment.manual(
                fa.frame_of_reference_uid if fa is not None else "",
                fv.frame_of_reference_uid if fv is not None else "",
                anchor.series_uid,
                vp.series_uid,
                m,
            )
            reverse = True
        else:
            stored, reverse = found
        seen = (stored.inverse() if reverse else stored).shifted(delta)
        new = seen.inverse() if reverse else seen
        self._alignments.pop((new.moving_series, new.fixed_series), None)
        self._alignments[(new.fixed_series, new.moving_series)] = new
        if self.alignment_store is not None:
            try:
                self.alignment_store.put(new)
            except OSError as exc:
                logger.warning("could not keep the hand alignment: %s", exc)
        self._syncing = True
        try:
            self._follow(vp, anchor)
        finally:
            self._syncing = False
        self._emit("alignment")
        self._emit("reference")
        return seen

    def shift_alignment_slices(self, vp: ViewportState, steps: int) -> Alignment | None:
        """:meth:`shift_alignment` by ``steps`` slices "down" (negative: up) in *vp*'s stack, as
        the wheel scrolls (:attr:`ViewportState.down_step`)."""
        g = vp.geometry
        if g is None or vp.volume is None or not steps:
            return None
        n = vp.stack_size
        target = int(np.clip(vp.index + int(steps) * vp.down_step, 0, n - 1))
        if target == vp.index:
            return None
        tg = vp.volume.stack.frames[target].geometry
        if tg is None:
            return None
        return self.shift_alignment(vp, float((tg.origin - g.origin) @ g.normal))

    def alignment_text(self, vp: ViewportState) -> str:
        """What the viewport of the MOVING side of an alignment (the prior, or the one re-aligned
        by hand) says about it: ``aligned by registration, +4.0 mm by hand`` (the hand offset
        along its own slice normal); '' for the fixed side and without an alignment."""
        anchor = self._anchor(vp)
        g = vp.geometry
        if anchor is None or g is None:
            return ""
        found = self._stored_between(vp, anchor)
        if found is None or not found[1]:
            return ""
        return found[0].inverse().describe_along(g.normal)

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

        Only between different viewports of one Frame of Reference, or of two aligned ones
        (the active plane mapped through the alignment), whose planes are not parallel
        (e.g. an axial slice on a coronal localizer).
        """
        if not self.show_reference_lines:
            return []
        active = self.active_viewport
        if vp is active or vp not in self.visible:
            return []
        src, dst = active.frame_info, vp.frame_info
        if src is None or dst is None or src.geometry is None or dst.geometry is None:
            return []
        source = self._leader_plane_in(vp, active)
        if source is None:
            return []
        if source is not src.geometry and dst.geometry.parallel_to(source, tolerance=LINKED_SCROLL_TOLERANCE):
            # Across Frames of Reference a registration leaves stacks that were parallel a
            # fraction of a degree apart: they scroll together, a line would cut across the image.
            return []
        line = reference_line(dst.geometry, source)
        return [line] if line is not None else []
