"""The annotation model of a study, headless (no Qt): what the viewer draws and saves.

An :class:`Annotation` is one graphic a reader drew on one frame of one
instance (SOP Instance UID + 0-based frame): an arrow, a text, a length, an
angle, a Cobb angle, an ellipse / rectangle / freehand ROI or a point. Points
are image coordinates ``(x, y) = (column, row)`` with pixel centres at integers
(:mod:`hilum.dicom.geometry`), so they survive any zoom, pan, rotation or flip
of the view and map onto GSPS graphic annotations (PS3.3 C.10.5, PIXEL units
with the 0.5 offset applied by the writer) and TID 1500 measurements
(PS3.16 TID 1500 / TID 1501 / TID 300).

:meth:`Annotation.values` computes the numbers in true units through
:mod:`hilum.dicom.stack_measure` (lengths in mm, or px when uncalibrated;
angles in degrees; ROI area, mean, SD, min, max in modality units — HU for
CT; the modality value at a point).

An :class:`AnnotationSet` is the one store of a study's annotations in the
viewer: every viewport showing an image paints :meth:`AnnotationSet.on` of
its SOP instance and frame and repaints when the set tells its subscribers
(STYLE.md §4, model → view by events). Every add / remove / update is one
undoable step (consecutive updates sharing a ``merge`` token, such as the
mouse moves of one drag, are one step); :attr:`AnnotationSet.dirty` says
whether the set changed since :meth:`AnnotationSet.mark_saved`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from hilum.dicom.geometry import Spacing
from hilum.dicom.stack_measure import (
    angle_degrees,
    cobb_degrees,
    length_mm,
    polygon_area,
    polygon_stats,
    roi_area,
    roi_stats,
)

__all__ = [
    "KINDS",
    "ROI_KINDS",
    "Annotation",
    "AnnotationSet",
    "KeyImage",
    "point_count_ok",
    "value_lines",
]

KINDS = ("arrow", "text", "length", "angle", "cobb", "ellipse", "rect", "freehand", "point")
ROI_KINDS = ("ellipse", "rect", "freehand")

#: Number of points of each kind (freehand: at least 3).
_NPOINTS = {"arrow": 2, "text": 1, "length": 2, "angle": 3, "cobb": 4, "ellipse": 2, "rect": 2, "point": 1}

Point = tuple[float, float]
Listener = Callable[[str, str], None]


def point_count_ok(kind: str, n: int) -> bool:
    """Whether *n* points make an annotation of *kind* (freehand: a polygon of >= 3)."""
    if kind == "freehand":
        return n >= 3
    return _NPOINTS.get(kind) == n


def _new_uid() -> str:
    return uuid.uuid4().hex


@dataclass
class Annotation:
    """One graphic on one frame: *kind* (one of :data:`KINDS`) and its points.

    Points per kind: arrow 2 (tail, head), text 1 (anchor), length 2, angle 3
    (the vertex in the middle), cobb 4 (two lines: p0-p1 and p2-p3),
    ellipse / rect 2 (opposite corners of the bounding box), freehand >= 3 (a
    closed polygon), point 1. ``origin`` is ``"user"`` or where it was read
    from (``"gsps:<SOP UID>"``, ``"sr:<SOP UID>"``).
    """

    kind: str
    sop_instance_uid: str
    frame: int
    points: list[Point]
    text: str = ""
    uid: str = field(default_factory=_new_uid)
    series_uid: str = ""
    study_uid: str = ""
    origin: str = "user"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"annotation kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        self.points = [(float(p[0]), float(p[1])) for p in self.points]
        if not point_count_ok(self.kind, len(self.points)):
            want = "at least 3" if self.kind == "freehand" else str(_NPOINTS[self.kind])
            raise ValueError(f"a {self.kind} annotation needs {want} points, got {len(self.points)}")
        self.frame = int(self.frame)

    @property
    def key(self) -> tuple[str, int]:
        """``(SOP Instance UID, frame)``: the image this annotation is drawn on."""
        return (self.sop_instance_uid, self.frame)

    def copy(self) -> Annotation:
        """An independent copy (same uid)."""
        return Annotation(**{f.name: getattr(self, f.name) for f in fields(self)})

    def moved(self, dx: float, dy: float) -> list[Point]:
        """The points shifted by ``(dx, dy)`` image pixels."""
        return [(x + dx, y + dy) for x, y in self.points]

    def values(self, frame_values: npt.ArrayLike | None, spacing: Spacing, unit: str = "") -> dict[str, Any]:
        """The numbers of this annotation in true units.

        *frame_values* are the modality values of the annotated frame (rows x
        columns; needed only for ROI statistics and the point value; ``None``
        leaves those out), *spacing* its pixel spacing, *unit* the modality
        unit (``stack_measure.modality_unit``: HU for CT). Keys by kind:

        * length: ``length``, ``unit`` ("mm" or "px"), ``note`` (spacing note);
        * angle, cobb: ``angle`` (degrees), ``unit`` ("deg");
        * ellipse, rect, freehand: ``area``, ``area_unit`` ("mm²"/"px²"), and with
          values ``count``, ``mean``, ``sd`` (n - 1), ``min``, ``max``, ``unit``;
        * point: ``value`` (NaN outside the image), ``unit``, ``column``, ``row``;
        * arrow, text: nothing (``{}``).
        """
        pts = self.points
        k = self.kind
        if k == "length":
            return {"length": length_mm(pts[0], pts[1], spacing), "unit": spacing.unit, "note": spacing.note}
        if k == "angle":
            return {"angle": angle_degrees(pts[0], pts[1], pts[2], spacing), "unit": "deg"}
        if k == "cobb":
            return {"angle": cobb_degrees(pts[0], pts[1], pts[2], pts[3], spacing), "unit": "deg"}
        if k in ROI_KINDS:
            area_unit = "mm²" if spacing.calibrated else "px²"
            arr = None if frame_values is None else np.asarray(frame_values)
            if arr is None or arr.ndim != 2:
                if k == "freehand":
                    area = polygon_area(pts, spacing)
                else:
                    area = roi_area(k, pts[0], pts[1], spacing)
                return {"area": area, "area_unit": area_unit, "note": spacing.note}
            if k == "freehand":
                s = polygon_stats(arr, pts, spacing, unit)
            else:
                s = roi_stats(arr, k, pts[0], pts[1], spacing, unit)
            return {
                "area": s.area,
                "area_unit": s.area_unit,
                "count": s.count,
                "mean": s.mean,
                "sd": s.sd,
                "min": s.min,
                "max": s.max,
                "unit": unit,
                "note": spacing.note,
            }
        if k == "point":
            col, row = round(pts[0][0]), round(pts[0][1])
            arr = None if frame_values is None else np.asarray(frame_values)
            value = float("nan")
            if arr is not None and arr.ndim == 2 and 0 <= row < arr.shape[0] and 0 <= col < arr.shape[1]:
                value = float(arr[row, col])
            return {"value": value, "unit": unit, "column": col, "row": row}
        return {}


def value_lines(kind: str, values: dict[str, Any]) -> list[str]:
    """Short text lines showing *values* (from :meth:`Annotation.values`) next to the graphic."""
    if not values:
        return []
    if kind == "length":
        line = f"{values['length']:.1f} {values['unit']}"
        return [line + (f" ({values['note']})" if values.get("note") else "")]
    if kind in ("angle", "cobb"):
        return [("Cobb " if kind == "cobb" else "") + f"{values['angle']:.1f}°"]
    if kind in ROI_KINDS:
        lines = [f"Area {values['area']:.1f} {values['area_unit']}"]
        if "mean" in values and values.get("count"):
            u = f" {values['unit']}" if values.get("unit") else ""
            lines.append(f"Mean {values['mean']:.1f}{u}  SD {values['sd']:.1f}")
            lines.append(f"Min {values['min']:.0f}  Max {values['max']:.0f}{u}")
        if values.get("note"):
            lines.append(f"({values['note']})")
        return lines
    if kind == "point":
        v = values["value"]
        if math.isnan(v):
            return []
        u = f" {values['unit']}" if values.get("unit") else ""
        return [f"{v:.1f}{u}" if v != round(v) else f"{v:.0f}{u}"]
    return []


@dataclass
class KeyImage:
    """An image flagged as key (a Key Object Selection reference, PS3.3 C.17.6)."""

    sop_instance_uid: str
    frame: int
    series_uid: str
    sop_class_uid: str


@dataclass
class _Step:
    """One undoable change: ``op`` add / remove / update of one annotation."""

    op: str
    uid: str
    ann: Annotation | None = None  # add / remove: the annotation (a copy)
    index: int = 0  # remove: its position in the set, to put it back there
    before: dict[str, Any] = field(default_factory=dict)  # update: old field values
    after: dict[str, Any] = field(default_factory=dict)  # update: new field values
    merge: object = None
    serial: int = 0
    steps: list[_Step] = field(default_factory=list)  # group: its steps, in order


class AnnotationSet:
    """All annotations of one study: the viewer's single store, headless.

    Subscribers get ``callback(what, uid)`` with *what* ``"add"``, ``"remove"``
    or ``"update"`` (also on undo / redo, which replay as those), ``"clear"``
    (uid ``""``) and ``"saved"`` (uid ``""``, from :meth:`mark_saved`).
    """

    def __init__(self, items: Iterable[Annotation] = ()) -> None:
        self._items: dict[str, Annotation] = {}
        self._by_image: dict[tuple[str, int], list[str]] = {}
        self._undo: list[_Step] = []
        self._redo: list[_Step] = []
        self._listeners: list[Listener] = []
        self._serial = 0
        self._saved_serial = 0
        for a in items:
            self._insert(a.copy())

    # --- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Annotation]:
        return iter(list(self._items.values()))

    def __contains__(self, uid: object) -> bool:
        return uid in self._items

    def get(self, uid: str) -> Annotation | None:
        return self._items.get(uid)

    def all(self) -> list[Annotation]:
        """Every annotation, in the order they were added."""
        return list(self._items.values())

    def on(self, sop_uid: str, frame: int) -> list[Annotation]:
        """The annotations drawn on one frame of one instance (in drawing order)."""
        uids = self._by_image.get((sop_uid, int(frame)))
        return [self._items[u] for u in uids] if uids else []

    def images(self) -> list[tuple[str, int]]:
        """The ``(SOP Instance UID, frame)`` pairs carrying at least one annotation."""
        return [k for k, v in self._by_image.items() if v]

    # --- events --------------------------------------------------------------------------------

    def subscribe(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(what, uid)`` on every change; returns the unsubscribe function."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def _emit(self, what: str, uid: str) -> None:
        for cb in list(self._listeners):
            cb(what, uid)

    # --- low-level edits (no undo record) ---------------------------------------------------

    def _insert(self, a: Annotation, index: int | None = None) -> None:
        if a.uid in self._items:
            raise ValueError(f"an annotation with uid {a.uid} is already in the set")
        if index is None or index >= len(self._items):
            self._items[a.uid] = a
        else:
            items = list(self._items.items())
            items.insert(index, (a.uid, a))
            self._items = dict(items)
        self._reindex()

    def _reindex(self) -> None:
        by: dict[tuple[str, int], list[str]] = {}
        for a in self._items.values():
            by.setdefault(a.key, []).append(a.uid)
        self._by_image = by

    def _delete(self, uid: str) -> tuple[Annotation, int]:
        index = list(self._items).index(uid)
        a = self._items.pop(uid)
        lst = self._by_image.get(a.key)
        if lst is not None and uid in lst:
            lst.remove(uid)
        return a, index

    def _apply(self, uid: str, changes: dict[str, Any]) -> None:
        a = self._items[uid]
        key = a.key
        for k, v in changes.items():
            setattr(a, k, list(v) if k == "points" else v)
        if a.key != key:
            self._reindex()

    def _record(self, step: _Step) -> None:
        self._serial += 1
        step.serial = self._serial
        self._undo.append(step)
        self._redo.clear()

    # --- edits (each one undoable step) -----------------------------------------------------

    def add(self, a: Annotation) -> Annotation:
        """Add *a* (stored as given; returns it). One undoable step."""
        if not isinstance(a, Annotation):
            raise TypeError(f"AnnotationSet.add takes an Annotation, not {type(a).__name__}")
        self._insert(a)
        self._record(_Step("add", a.uid, ann=a.copy()))
        self._emit("add", a.uid)
        return a

    def remove(self, uid: str) -> Annotation:
        """Remove the annotation *uid* (KeyError if absent); returns it. One undoable step."""
        if uid not in self._items:
            raise KeyError(uid)
        a, index = self._delete(uid)
        self._record(_Step("remove", uid, ann=a.copy(), index=index))
        self._emit("remove", uid)
        return a

    def update(self, uid: str, *, merge: object = None, **changes: Any) -> Annotation:
        """Change fields of the annotation *uid* (``points=``, ``text=``, ...). One undoable step.

        Consecutive updates of the same annotation with the same non-``None``
        *merge* token are merged into one step (a drag: one token per drag).
        ``uid`` cannot change; ``points`` are checked against the kind.
        """
        a = self._items.get(uid)
        if a is None:
            raise KeyError(uid)
        names = {f.name for f in fields(Annotation)}
        bad = [k for k in changes if k not in names or k in ("uid", "kind")]
        if bad:
            raise ValueError(f"cannot update annotation field(s) {', '.join(bad)}")
        if "points" in changes:
            pts = [(float(p[0]), float(p[1])) for p in changes["points"]]
            if not point_count_ok(a.kind, len(pts)):
                raise ValueError(f"a {a.kind} annotation cannot have {len(pts)} points")
            changes["points"] = pts
        before = {k: (list(getattr(a, k)) if k == "points" else getattr(a, k)) for k in changes}
        self._apply(uid, changes)
        top = self._undo[-1] if self._undo else None
        if (
            merge is not None
            and top is not None
            and top.op == "update"
            and top.uid == uid
            and top.merge == merge
            and not self._redo
        ):
            for k, v in before.items():
                top.before.setdefault(k, v)
            top.after.update(changes)
        else:
            self._record(_Step("update", uid, before=before, after=dict(changes), merge=merge))
        self._emit("update", uid)
        return a

    def remove_many(self, uids: Iterable[str]) -> list[Annotation]:
        """Remove several annotations as ONE undoable step (unknown uids are skipped)."""
        group = _Step("group", "")
        removed = []
        for uid in list(uids):
            if uid not in self._items:
                continue
            a, index = self._delete(uid)
            group.steps.append(_Step("remove", uid, ann=a.copy(), index=index))
            removed.append(a)
        if removed:
            self._record(group)
            for a in removed:
                self._emit("remove", a.uid)
        return removed

    def load(self, items: Iterable[Annotation]) -> list[Annotation]:
        """Add annotations read from saved objects: not undoable, the set stays clean if it was."""
        added = []
        for a in items:
            if a.uid in self._items:
                continue
            self._insert(a)
            added.append(a)
        for a in added:
            self._emit("add", a.uid)
        return added

    def clear(self) -> None:
        """Forget every annotation and the undo history (not undoable)."""
        had = bool(self._items) or self.dirty
        self._items.clear()
        self._by_image.clear()
        self._undo.clear()
        self._redo.clear()
        self._saved_serial = -1 if had else 0  # dirty until saved when something was dropped
        self._emit("clear", "")

    # --- undo / redo ---------------------------------------------------------------------------

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def _revert(self, s: _Step) -> None:
        if s.op == "group":
            for sub in reversed(s.steps):
                self._revert(sub)
        elif s.op == "add":
            self._delete(s.uid)
            self._emit("remove", s.uid)
        elif s.op == "remove":
            assert s.ann is not None
            self._insert(s.ann.copy(), s.index)
            self._emit("add", s.uid)
        else:
            self._apply(s.uid, s.before)
            self._emit("update", s.uid)

    def _replay(self, s: _Step) -> None:
        if s.op == "group":
            for sub in s.steps:
                self._replay(sub)
        elif s.op == "add":
            assert s.ann is not None
            self._insert(s.ann.copy())
            self._emit("add", s.uid)
        elif s.op == "remove":
            self._delete(s.uid)
            self._emit("remove", s.uid)
        else:
            self._apply(s.uid, s.after)
            self._emit("update", s.uid)

    def undo(self) -> bool:
        """Undo the last step; ``False`` when there is nothing to undo."""
        if not self._undo:
            return False
        s = self._undo.pop()
        self._redo.append(s)
        self._revert(s)
        return True

    def redo(self) -> bool:
        """Redo the last undone step; ``False`` when there is nothing to redo."""
        if not self._redo:
            return False
        s = self._redo.pop()
        self._undo.append(s)
        self._replay(s)
        return True

    # --- saved state ---------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        """Whether the set changed since the last :meth:`mark_saved` (undoing back to it: clean)."""
        top = self._undo[-1].serial if self._undo else 0
        return top != self._saved_serial

    def mark_saved(self) -> None:
        """The current content is saved: :attr:`dirty` becomes ``False``."""
        self._saved_serial = self._undo[-1].serial if self._undo else 0
        self._emit("saved", "")


def annotations_on(items: Sequence[Annotation], sop_uid: str, frame: int) -> list[Annotation]:
    """Filter *items* to one frame of one instance."""
    return [a for a in items if a.sop_instance_uid == sop_uid and a.frame == frame]
