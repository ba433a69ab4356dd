"""Annotations that last: the viewer's Save, the study's presentation objects on open, key images.

Headless parts first (no Qt widgets), then :class:`PersistenceMixin`, the
:class:`~hilum.ui.viewer.viewer_widget.StudyViewer` methods that wire them in.

- **Display state** (:func:`display_state_of`, :func:`apply_display_state`): what
  a viewport shows of one image (window, displayed area, rotation/flip,
  invert) as the GSPS model's :class:`~hilum.dicom.presentation.DisplayState`,
  and back. The viewer's flips act on the screen after its rotation, as a GSPS's
  horizontal flip does (PS3.3 C.10.6); a vertical flip is a half turn and a
  horizontal flip (:func:`gsps_orientation`, :func:`view_orientation`). The
  displayed area is the image region the canvas shows (its edges in unrotated
  image coordinates; None while the image is fitted), fitted back into the
  canvas on apply.
- **Save** (:func:`save_objects`): a GSPS (one per rotation/flip/inversion; every annotation, and the display
  state of every image of the series the viewports show), one measurement SR
  (TID 1500) when there are measurements, one KOS when there are key images;
  per study, each through the archive's one ingest call. A save always makes
  new instances (new SOP Instance UIDs): nothing stored is overwritten.
- **Load** (:func:`load_objects`): the study's GSPS, SR, KOS and SEG instances
  (by SOP Class UID from the archive index), read through the domain readers.
  The newest GSPS gives the annotations (SR measurements that it does not
  already hold are added), the newest KOS the key images; every GSPS's display
  states are offered (the newest applied by default).

Both run off the GUI thread; the mixin hands their results back by signal.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from hilum.dicom.annotations import Annotation, KeyImage
    from hilum.dicom.presentation import DisplayState
    from hilum.ui.viewer.state import ViewportState

__all__ = [
    "GSPS_CLASSES",
    "KEY_SERIES_UID",
    "KOS_CLASS",
    "MEASUREMENT_KINDS",
    "SEG_CLASS",
    "SR_CLASSES",
    "LoadedObjects",
    "PresentationChoice",
    "SaveResult",
    "apply_display_state",
    "display_state_of",
    "gsps_orientation",
    "load_objects",
    "save_objects",
    "view_orientation",
]

logger = logging.getLogger(__name__)

GSPS_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.11.1"})
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
})  # fmt: skip
MEASUREMENT_KINDS = frozenset({"length", "angle", "cobb", "ellipse", "rect", "freehand", "point"})
KEY_SERIES_UID = "hilum:key-images"
"""The strip's virtual series of the study's key images (no such series is stored)."""
SAVE_ORIGIN = "annotation"


# ------------------------------------------------------------------ display state


def gsps_orientation(rotation: float, flip_h: bool, flip_v: bool) -> tuple[int, bool]:
    """The viewer's view (rotation clockwise, then the screen flips) as a GSPS's (rotation, then a
    horizontal flip: PS3.3 C.10.6). The vertical mirror is the horizontal one after a half turn,
    and both mirrors together are a half turn."""
    r = int(round(rotation / 90.0)) * 90 % 360
    if flip_v:
        r = (r + 180) % 360
        flip_h = not flip_h
    return r, bool(flip_h)


def view_orientation(rotation: int, flip: bool) -> tuple[float, bool]:
    """A GSPS's rotation and horizontal flip as the viewer's (rotation, flip_h) (flip_v False)."""
    return float(int(round(rotation / 90.0)) * 90 % 360), bool(flip)


def _area_corners(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0, 1.0], [x1, y0, 1.0], [x0, y1, 1.0], [x1, y1, 1.0]]).T


def display_state_of(vp: ViewportState) -> DisplayState | None:
    """What *vp* shows of its current image, as a :class:`DisplayState` (None: no image)."""
    from hilum.dicom.presentation import DisplayState

    f = vp.frame_info
    if f is None:
        return None
    w = vp.current_window()
    rotation, flip = gsps_orientation(vp.view.rotation, vp.view.flip_h, vp.view.flip_v)
    v = vp.view
    if abs(v.zoom - 1.0) < 1e-9 and abs(v.pan_x) < 1e-9 and abs(v.pan_y) < 1e-9:
        area = None  # fitted: the whole image
    else:  # the image region the canvas shows (edges, unrotated image coordinates)
        cw, ch = vp.canvas_size
        inv = np.linalg.inv(vp.matrix())
        pts = inv @ _area_corners(0.0, 0.0, float(cw), float(ch))
        xs, ys = pts[0], pts[1]
        area = ((float(xs.min()), float(ys.min())), (float(xs.max()), float(ys.max())))
    return DisplayState(
        window_center=float(w.center) if w is not None else None,
        window_width=float(w.width) if w is not None else None,
        displayed_area=area,
        rotation=rotation,
        flip_horizontal=flip,
        invert=bool(vp.invert),
    )


def apply_display_state(vp: ViewportState, state: DisplayState) -> None:
    """Show *vp*'s image as *state* says: window, rotation/flip, invert, the displayed area fitted
    into the canvas (centred, the whole area visible, as PS3.3's SCALE TO FIT)."""
    from hilum.ui.viewer.state import MAX_ZOOM, MIN_ZOOM, ViewTransform

    if state.window_center is not None and state.window_width is not None and state.window_width > 0:
        vp.set_window(float(state.window_center), float(state.window_width))
    if bool(state.invert) != bool(vp.invert):
        vp.toggle_invert()
    rotation, flip_h = view_orientation(int(state.rotation or 0), bool(state.flip_horizontal))
    vp.view = ViewTransform(rotation=rotation, flip_h=flip_h)
    f = vp.frame_info
    if state.displayed_area is not None and f is not None:
        (x0, y0), (x1, y1) = state.displayed_area
        whole = max(abs(x0 + 0.5), abs(y0 + 0.5), abs(x1 - f.columns + 0.5), abs(y1 - f.rows + 0.5)) < 1e-6
        if not whole and x1 > x0 and y1 > y0:
            cw, ch = vp.canvas_size
            pts = vp.matrix() @ _area_corners(x0, y0, x1, y1)
            bw, bh = float(np.ptp(pts[0])), float(np.ptp(pts[1]))
            if bw > 0 and bh > 0:
                z = float(np.clip(min(cw / bw, ch / bh), MIN_ZOOM, MAX_ZOOM))
                bx, by = float(pts[0].mean()), float(pts[1].mean())
                vp.view.zoom = z
                vp.view.pan_x = -z * (bx - cw / 2.0)
                vp.view.pan_y = -z * (by - ch / 2.0)
    vp.emit("view")


# ------------------------------------------------------------------ saving


@dataclass
class SaveResult:
    """What one save stored: ``(kind, SOP Instance UID)`` per object, and what failed."""

    stored: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    datasets: list[tuple[str, Dataset]] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # "headers", "<kind> build", "<kind> ingest"

    @property
    def ok(self) -> bool:
        return not self.errors


class HeaderCache:
    """Referenced instances' headers (no pixel data), read once per viewer, thread-safe."""

    def __init__(self, archive: Any) -> None:
        self.archive = archive
        self._headers: dict[str, Dataset] = {}
        self._lock = threading.Lock()

    def get(self, sop_uid: str, path: str | Path | None = None) -> Dataset | None:
        with self._lock:
            ds = self._headers.get(sop_uid)
        if ds is not None:
            return ds
        try:
            p = Path(path) if path else Path(self.archive.path(sop_uid))
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - a missing instance is reported by the caller
            logger.warning("no header for %s: %s", sop_uid, exc)
            return None
        with self._lock:
            self._headers[sop_uid] = ds
        return ds


def _values_of(ann: Annotation, where: Mapping[tuple[str, int], tuple[Any, int]]) -> dict[str, Any] | None:
    """An annotation's numbers from the loaded frame it is drawn on (None: frame not loaded)."""
    from hilum.dicom.stack_measure import modality_unit

    found = where.get((ann.sop_instance_uid, ann.frame))
    if found is None:
        return None
    volume, k = found
    values = volume.modality_values(k)
    if values is None:
        return None
    f = volume.stack.frames[k]
    unit = modality_unit(volume.modality, f.pipeline.modality.rescale_type if f.pipeline is not None else "")
    try:
        return dict(ann.values(values, f.spacing, unit))
    except Exception as exc:  # noqa: BLE001 - a measurement without numbers is still saved as graphics
        logger.warning("no values for %s %s: %s", ann.kind, ann.uid, exc)
        return None


def _one(make: Callable[..., Dataset], *args: Any) -> list[Dataset]:
    return [make(*args)]


def save_objects(
    archive: Any,
    annotations: Sequence[Annotation],
    key_images: Sequence[KeyImage],
    states: Mapping[str, DisplayState],
    *,
    headers: HeaderCache,
    paths: Mapping[str, str] | None = None,
    frames: Mapping[tuple[str, int], tuple[Any, int]] | None = None,
    series: dict[tuple[str, str], str] | None = None,
) -> SaveResult:
    """Build and ingest the GSPS, measurement SR and KOS of *annotations*, *key_images* and the
    display *states* (by SOP Instance UID), one set per study (from the referenced headers).

    *paths*: SOP Instance UID → file (the loaded stacks know them; else the archive is asked);
    *frames*: ``(SOP UID, frame) → (volume, index)`` of loaded frames, for the SR's values;
    *series*: ``(study, kind) → Series Instance UID`` reused across saves (updated here).
    Runs on a worker thread; never raises (errors are in the result).
    """
    from hilum.dicom.presentation import make_gsps_objects
    from hilum.dicom.sr import make_kos, make_measurement_sr

    t0 = time.perf_counter()
    out = SaveResult()
    paths = paths or {}
    frames = frames or {}
    series = series if series is not None else {}
    wanted = {a.sop_instance_uid for a in annotations} | {k.sop_instance_uid for k in key_images} | set(states)
    header: dict[str, Dataset] = {}
    for uid in wanted:
        ds = headers.get(uid, paths.get(uid))
        if ds is None:
            out.errors.append(f"image {uid} is not in the archive")
        else:
            header[uid] = ds
    out.timings["headers"] = time.perf_counter() - t0
    by_study: dict[str, list[str]] = {}
    for uid, ds in header.items():
        by_study.setdefault(str(ds.get("StudyInstanceUID", "")), []).append(uid)
    for study, uids in by_study.items():
        inside = set(uids)
        images = [header[u] for u in sorted(inside)]
        anns = [a for a in annotations if a.sop_instance_uid in inside]
        keys = [k for k in key_images if k.sop_instance_uid in inside]
        st = {u: s for u, s in states.items() if u in inside}
        built: list[tuple[str, Callable[[], list[Dataset]]]] = []
        if anns or st:
            built.append(("gsps", partial(make_gsps_objects, images, anns, st,
                                          series_uid=series.get((study, "gsps")))))  # fmt: skip
        measured = [a for a in anns if a.kind in MEASUREMENT_KINDS]
        if measured:
            vals = {a.uid: v for a in measured if (v := _values_of(a, frames)) is not None}
            built.append(("sr", partial(_one, make_measurement_sr, images, measured, vals)))
        if keys:
            built.append(("kos", partial(_one, make_kos, images, keys)))
        for kind, make in built:
            t1 = time.perf_counter()
            try:
                made = make()
            except Exception as exc:  # noqa: BLE001 - one object failing must not lose the others
                logger.exception("cannot build the %s", kind)
                out.errors.append(f"cannot build the {kind.upper()}: {exc}")
                continue
            t2 = time.perf_counter()
            out.timings[f"{kind} build"] = out.timings.get(f"{kind} build", 0.0) + t2 - t1
            for ds in made:
                result = archive.ingest(ds, origin=SAVE_ORIGIN)
                if not result.ok:
                    out.errors.append(f"{kind.upper()} not stored: {result.reason or result.status}")
                    continue
                series[(study, kind)] = str(ds.SeriesInstanceUID)
                out.stored.append((kind, str(ds.SOPInstanceUID)))
                out.datasets.append((kind, ds))
            out.timings[f"{kind} ingest"] = out.timings.get(f"{kind} ingest", 0.0) + time.perf_counter() - t2
    out.seconds = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------ loading


@dataclass
class PresentationChoice:
    """One GSPS of the study, as the "Presentation states" menu offers it."""

    sop_instance_uid: str
    label: str
    when: str  # Presentation Creation Date + Time (or Content / Instance Creation), for ordering
    states: dict[tuple[str, int], DisplayState] = field(default_factory=dict)


@dataclass
class LoadedObjects:
    """What :func:`load_objects` found in a study."""

    annotations: list[Annotation] = field(default_factory=list)
    presentations: list[PresentationChoice] = field(default_factory=list)  # newest first
    key_images: list[KeyImage] = field(default_factory=list)
    segs: list[tuple[str, Path]] = field(default_factory=list)  # (SOP Instance UID, file)
    seg_datasets: dict[str, Dataset] = field(default_factory=dict)  # referenced series -> its newest SEG
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _when(ds: Dataset) -> str:
    for date, tm in (("PresentationCreationDate", "PresentationCreationTime"), ("ContentDate", "ContentTime"),
                     ("InstanceCreationDate", "InstanceCreationTime"), ("SeriesDate", "SeriesTime")):  # fmt: skip
        d = str(ds.get(date, "") or "")
        if d:
            return d + str(ds.get(tm, "") or "").ljust(13, "0")
    return ""


def _seg_series(ds: Dataset) -> str:
    try:
        from hilum.dicom.segmentation import seg_references

        return str(seg_references(ds)[0] or "")
    except Exception:  # noqa: BLE001 - a SEG without references is not opened
        return ""


def _tracking_uids(ds: Dataset) -> list[str]:
    """The Tracking Unique Identifiers (DCM 112040) of an SR's content tree, read without parsing it."""
    out: list[str] = []
    stack = list(ds.get("ContentSequence", []) or [])
    while stack:
        item = stack.pop()
        if item.get("ValueType") == "UIDREF":
            names = item.get("ConceptNameCodeSequence") or []
            if names and str(names[0].get("CodeValue", "")) == "112040":
                out.append(str(item.get("UID", "")))
        stack.extend(item.get("ContentSequence", []) or [])
    return out


def _dedupe_key(a: Annotation) -> tuple[Any, ...]:
    return (a.sop_instance_uid, a.frame, a.kind, tuple((round(x, 1), round(y, 1)) for x, y in a.points))


def object_rows(archive: Any, study_uid: str) -> list[dict[str, Any]]:
    """The study's GSPS, SR, KOS and SEG instances (index rows with ``path``)."""
    wanted = GSPS_CLASSES | SR_CLASSES | {KOS_CLASS, SEG_CLASS}
    return [r for r in archive.instances(study_uid=study_uid) if str(r.get("SOPClassUID", "")) in wanted]


def load_objects(archive: Any, study_uid: str) -> LoadedObjects:
    """Read the study's presentation objects (see the module docstring). Never raises."""
    from hilum.dicom.presentation import annotation_uid, read_gsps
    from hilum.dicom.sr import read_kos, read_measurement_sr

    t0 = time.perf_counter()
    out = LoadedObjects()
    try:
        rows = object_rows(archive, study_uid)
    except Exception as exc:  # noqa: BLE001
        out.errors.append(f"cannot list the study's objects: {exc}")
        return out
    gsps: list[tuple[str, Dataset, list[Annotation], dict[tuple[str, int], DisplayState]]] = []
    srs: list[tuple[str, Dataset]] = []  # parsed after the GSPS: most are already there
    kos: list[tuple[str, list[KeyImage]]] = []
    for row in rows:
        cls, uid, path = str(row.get("SOPClassUID", "")), str(row.get("SOPInstanceUID", "")), Path(row["path"])
        if cls == SEG_CLASS:
            out.segs.append((uid, path))
            try:
                seg = pydicom.dcmread(path)
            except Exception as exc:  # noqa: BLE001 - one unreadable object must not hide the others
                out.errors.append(f"cannot read {uid}: {exc}")
                continue
            ref = _seg_series(seg)
            if ref and (ref not in out.seg_datasets or _when(seg) > _when(out.seg_datasets[ref])):
                out.seg_datasets[ref] = seg  # the newest of each referenced series
            continue
        try:
            ds = pydicom.dcmread(path)
            if cls in GSPS_CLASSES:
                anns, gsps_states = read_gsps(ds)
                gsps.append((_when(ds), ds, list(anns), dict(gsps_states)))
            elif cls == KOS_CLASS:
                kos.append((_when(ds), list(read_kos(ds))))
            else:
                srs.append((_when(ds), ds))
        except Exception as exc:  # noqa: BLE001 - one unreadable object must not hide the others
            logger.warning("cannot read %s: %s", path, exc)
            out.errors.append(f"cannot read {uid}: {exc}")
    # one save may make several GSPS (one per rotation/flip/inversion): same series, same time
    saves: dict[tuple[str, str], list[tuple[str, Dataset, list[Annotation], dict[Any, Any]]]] = {}
    for g in gsps:
        saves.setdefault((g[0], str(g[1].get("SeriesInstanceUID", ""))), []).append(g)
    for (when, _series), group in saves.items():
        first = group[0][1]
        label = str(first.get("ContentLabel", "") or "") or "GSPS"
        desc = str(first.get("ContentDescription", "") or first.get("SeriesDescription", "") or "")
        shown = f"{when[:4]}-{when[4:6]}-{when[6:8]} {when[8:10]}:{when[10:12]}:{when[12:14]}" if when else ""
        text = " ".join(t for t in (label, desc and f"({desc})", shown) if t)
        states: dict[tuple[str, int], DisplayState] = {}
        for g in group:
            states.update(g[3])
        out.presentations.append(PresentationChoice(str(first.SOPInstanceUID), text, when, states))
    out.presentations.sort(key=lambda p: p.when, reverse=True)
    seen: set[tuple[Any, ...]] = set()
    if saves:
        newest = max(saves, key=lambda k: k[0])
        for g in saves[newest]:
            for a in g[2]:
                if _dedupe_key(a) not in seen:
                    seen.add(_dedupe_key(a))
                    out.annotations.append(a)
    if srs:
        srs.sort(key=lambda s: s[0], reverse=True)
        sr = srs[0][1]
        have = {a.uid for a in out.annotations}
        tracked = _tracking_uids(sr)
        if not tracked or not all(annotation_uid(t) in have for t in tracked):  # else: all in the GSPS already
            try:
                for a in read_measurement_sr(sr):
                    if a.uid not in have and _dedupe_key(a) not in seen:
                        seen.add(_dedupe_key(a))
                        out.annotations.append(a)
            except Exception as exc:  # noqa: BLE001
                logger.warning("cannot read the SR %s: %s", sr.get("SOPInstanceUID", ""), exc)
                out.errors.append(f"cannot read {sr.get('SOPInstanceUID', '')}: {exc}")
    if kos:
        kos.sort(key=lambda k: k[0], reverse=True)
        out.key_images = kos[0][1]
    out.seconds = time.perf_counter() - t0
    return out


def frames_of(volumes: Iterable[Any]) -> dict[tuple[str, int], tuple[Any, int]]:
    """``(SOP UID, frame) → (volume, index)`` over loaded volumes (for the SR's values)."""
    out: dict[tuple[str, int], tuple[Any, int]] = {}
    for v in volumes:
        if v is None or getattr(v, "preview", False):
            continue
        for k, f in enumerate(v.stack.frames):
            out.setdefault((f.sop_instance_uid, f.frame), (v, k))
    return out


def is_finite_state(s: DisplayState) -> bool:
    vals = [s.window_center, s.window_width]
    return all(v is None or math.isfinite(v) for v in vals)


# ------------------------------------------------------------------ the viewer's side (Qt)

from PySide6.QtCore import QEvent, QObject, Qt, Signal  # noqa: E402
from PySide6.QtWidgets import QLabel, QMenu, QMessageBox, QTabWidget, QWidget  # noqa: E402


class PersistenceSignals(QObject):
    """:attr:`PersistenceMixin.persistence`: the worker threads' results, on the GUI thread."""

    saved = Signal(object)  # SaveResult
    loaded = Signal(object)  # LoadedObjects
    keyImagesChanged = Signal()  # noqa: N815
    _save_done = Signal(object, object)  # result, what the save started from
    _load_done = Signal(object)
    _seg_read = Signal(str, object, object)  # series uid, SEG dataset, LabelMap or the exception
    segOpened = Signal(str)  # noqa: N815  (series uid: its newest SEG is the panel's label map now)


class _KeyMarker(QLabel):
    """ "★ KEY" at the top centre of a viewport whose image is a key image, one line below the
    orientation letter that sits at the top centre."""

    def __init__(self, canvas: QWidget) -> None:
        super().__init__("★ KEY", canvas)
        self.setObjectName("keyImageMarker")
        self.setStyleSheet("color: rgb(255, 210, 0); font-weight: bold; background: transparent;")
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.adjustSize()
        self.hide()
        canvas.installEventFilter(self)
        self._place(canvas)

    def _place(self, canvas: QWidget) -> None:
        self.move(max(0, (canvas.width() - self.width()) // 2), 8 + self.height())

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.Resize and isinstance(obj, QWidget):
            self._place(obj)
        return False


class PersistenceMixin:
    """The study viewer's Save, presentation objects on open, key images (see the module docstring).

    Mixed into :class:`~hilum.ui.viewer.viewer_widget.StudyViewer` (which provides ``archive``,
    ``study_uid``, ``model``, ``session``, ``strip``, ``status``, ``_loads``, ``_widgets``,
    ``_assigned``, ``_action``, ``actions_by_name``, ``toolbar``, ``show_series``).
    """

    archive: Any
    study_uid: str
    model: Any
    session: Any
    strip: Any
    status: Any
    toolbar: Any
    actions_by_name: dict[str, Any]
    _loads: dict[str, Any]
    _widgets: list[Any]
    _assigned: dict[int, str]
    _action: Callable[..., Any]
    show_series: Callable[..., None]

    @property
    def _qw(self) -> QWidget:
        """This viewer as the QWidget it is (the mixin's own type does not say so)."""
        assert isinstance(self, QWidget)
        return self

    # --- set-up ----------------------------------------------------------------------------------

    def _init_persistence(self) -> None:
        from hilum.dicom.annotations import AnnotationSet

        if not hasattr(self, "annotations"):
            self.annotations = AnnotationSet()
        self.key_images: list[KeyImage] = []
        self.presentations: list[PresentationChoice] = []
        """The study's presentation states (GSPS), newest first (:meth:`choose_presentation`)."""
        self.presentation_uid: str | None = None
        """The GSPS whose display states are applied ("" none; None: the newest)."""
        self.loaded_objects: LoadedObjects | None = None
        self.last_save: SaveResult | None = None
        self.persistence = PersistenceSignals(self._qw)
        self.persistence._save_done.connect(self._on_saved)
        self.persistence._load_done.connect(self._on_objects_loaded)
        self.persistence._seg_read.connect(self._on_seg_read)
        self._segs_waiting: dict[str, Dataset] = {}  # series -> the SEG to open once its stack is there
        self._headers = HeaderCache(self.archive)
        self._save_series: dict[tuple[str, str], str] = {}
        self._saving = False
        self._close_after_save = False
        self._discard = False
        self._keys_dirty = False
        self._changes = 0
        self._applied: dict[int, tuple[str, str]] = {}  # viewport index -> (series, GSPS) applied there
        self._markers: dict[int, _KeyMarker] = {}
        self._series_states: dict[tuple[int, str], DisplayState | None] = {}  # (stack, GSPS) -> its state
        self._tab_title = ""
        self.annotations.subscribe(self._on_annotations_changed)

    def _build_persistence_actions(self) -> None:
        from hilum.ui.icons import icon
        from hilum.ui.viewer.shortcuts import SHORTCUTS

        keys = {name: k for name, k, _ in SHORTCUTS}
        texts = {name: t.split(" (")[0] for name, _, t in SHORTCUTS}
        save = self._action("save_annotations", texts["save_annotations"], self.save_annotations,
                            keys["save_annotations"])  # fmt: skip
        save.setIcon(icon("mdi6.content-save", "Save"))
        key = self._action("key_image", texts["key_image"], self.toggle_key_image, keys["key_image"])
        key.setIcon(icon("mdi6.star", "Key"))
        self.presentation_menu = QMenu("Presentation states", self._qw)
        self.presentation_menu.setObjectName("presentationStatesMenu")
        self.presentation_menu.aboutToShow.connect(self._fill_presentation_menu)
        states = self._action("presentation_states", "Presentation states", lambda: None)
        states.setMenu(self.presentation_menu)
        self.toolbar.addSeparator()
        self.toolbar.addAction(save)
        self.toolbar.addAction(key)

    def _watch_persistence(self, index: int, widget: Any) -> None:
        """A new viewport: its key-image marker, and the GSPS applied when it shows a covered image."""
        self._markers[index] = _KeyMarker(widget.canvas)
        widget.state.subscribe(partial_viewport(self, index))

    def annotations_hidden(self, index: int) -> Any:
        """``with viewer.annotations_hidden(i):`` viewport *i* paints no annotation meanwhile."""
        return _annotations_hidden(self, index)

    def write_sidecars(self, picture: Path, index: int) -> list[Path]:
        """The exported image's annotations beside *picture* as GSPS / SR files (:func:`write_sidecars`)."""
        return write_sidecars(self, picture, index)

    # --- modified state --------------------------------------------------------------------------

    @property
    def modified(self) -> bool:
        """Unsaved annotations or key images."""
        return bool(self.annotations.dirty or self._keys_dirty)

    def _on_annotations_changed(self, what: str, _uid: str) -> None:
        if what != "saved":
            self._changes += 1
        self._show_modified()

    def _tabs(self) -> tuple[QTabWidget, int] | None:
        w = self._qw.parentWidget()
        while w is not None and not isinstance(w, QTabWidget):
            w = w.parentWidget()
        if w is None:
            return None
        i = w.indexOf(self._qw)
        return (w, i) if i >= 0 else None

    def _show_modified(self) -> None:
        """ "*" after the tab's title while there is something unsaved."""
        found = self._tabs()
        if found is None:
            return
        tabs, i = found
        text = tabs.tabText(i)
        base = text[:-2] if text.endswith(" *") else text
        tabs.setTabText(i, base + (" *" if self.modified else ""))

    # --- key images ------------------------------------------------------------------------------

    def is_key_image(self, sop_uid: str, frame: int) -> bool:
        return any(k.sop_instance_uid == sop_uid and k.frame == frame for k in self.key_images)

    def toggle_key_image(self) -> bool:
        """Flag (or unflag) the active viewport's image as a key image; True when it is one now."""
        from hilum.dicom.annotations import KeyImage

        vp = self.model.viewports[self.model.active]
        f = vp.frame_info
        if f is None or vp.volume is None or getattr(vp.volume, "preview", False):
            return False
        sop, frame = f.sop_instance_uid, f.frame
        if self.is_key_image(sop, frame):
            self.key_images = [k for k in self.key_images if not (k.sop_instance_uid == sop and k.frame == frame)]
            now = False
        else:
            header = vp.volume.header  # the series' (no file read on the GUI thread); a key is one of its images
            if self._assigned.get(self.model.active) == KEY_SERIES_UID:  # images of several series: its own
                header = self._headers.get(sop, f.path)
            cls = str(header.get("SOPClassUID", "") or "") if header is not None else ""
            series = str(header.get("SeriesInstanceUID", "") or "") if header is not None else vp.series_uid
            self.key_images.append(KeyImage(sop, frame, series, cls))
            now = True
        self._keys_dirty = True
        self._key_images_changed()
        self._show_modified()
        self.status.setText("Key image" if now else "No longer a key image")
        return now

    def _key_images_changed(self) -> None:
        """The strip's "Key images" entry and every viewport's marker follow :attr:`key_images`."""
        self._update_key_series()
        for i in range(len(self.model.viewports)):
            self._update_marker(i)
        self.persistence.keyImagesChanged.emit()

    def _update_marker(self, index: int) -> None:
        marker = self._markers.get(index)
        if marker is None or index >= len(self.model.viewports):
            return
        f = self.model.viewports[index].frame_info
        marker.setVisible(f is not None and self.is_key_image(f.sop_instance_uid, f.frame))
        marker.raise_()

    def key_image_paths(self) -> list[Path]:
        """The files of the key images, in the order they were flagged (each instance once)."""
        out: list[Path] = []
        known: dict[str, Path] = {}
        for handle in self._loads.values():
            v = handle.volume
            if v is not None:
                for f in v.stack.frames:
                    known.setdefault(f.sop_instance_uid, Path(f.path))
        for k in self.key_images:
            p = known.get(k.sop_instance_uid)
            if p is None:
                try:
                    p = Path(self.archive.path(k.sop_instance_uid))
                except Exception:  # noqa: BLE001 - not stored here (a prior's, not retrieved)
                    continue
            if p not in out:
                out.append(p)
        return out

    def _update_key_series(self) -> None:
        """A virtual series of the key images in the session and the strip (gone when there are none)."""
        from hilum.ui.viewer.study import SeriesEntry

        session = self.session
        session.series = [e for e in session.series if e.series_uid != KEY_SERIES_UID]
        handle = self._loads.pop(KEY_SERIES_UID, None)
        if handle is not None:
            handle.cancel()
            session.cache.drop(KEY_SERIES_UID)
        paths = self.key_image_paths()
        if not paths:
            self.strip.set_virtual(None)
            return
        entry = SeriesEntry(KEY_SERIES_UID, None, "KO", "Key images", paths=paths, frames=len(self.key_images))
        session.series.append(entry)
        self.strip.set_virtual(entry, f"★ Key images\n{len(self.key_images)} im",
                               "The study's key images (double-click: show them)")  # fmt: skip
        for i, uid in list(self._assigned.items()):
            if uid == KEY_SERIES_UID:
                self.show_series(KEY_SERIES_UID, i)

    # --- presentation states ---------------------------------------------------------------------

    def current_presentation(self) -> PresentationChoice | None:
        if self.presentation_uid == "":
            return None
        for p in self.presentations:
            if self.presentation_uid is None or p.sop_instance_uid == self.presentation_uid:
                return p
        return None

    def choose_presentation(self, sop_uid: str) -> None:
        """Apply another of the study's GSPS ("" none: the viewports keep what they show)."""
        self.presentation_uid = sop_uid
        self._applied.clear()
        for i in range(len(self.model.viewports)):
            self._apply_presentation(i)

    def _fill_presentation_menu(self) -> None:
        menu = self.presentation_menu
        menu.clear()
        current = self.current_presentation()
        none = menu.addAction("None", lambda: self.choose_presentation(""))
        none.setCheckable(True)
        none.setChecked(current is None)
        for p in self.presentations:
            act = menu.addAction(p.label, partial(self.choose_presentation, p.sop_instance_uid))
            act.setCheckable(True)
            act.setChecked(current is not None and current.sop_instance_uid == p.sop_instance_uid)

    def _on_viewport_event(self, index: int, vp: Any, what: str) -> None:
        if what in ("volume", "index", "loaded"):
            self._apply_presentation(index)
            self._update_marker(index)
        if what in ("volume", "loaded") and self._segs_waiting:
            self._open_waiting_segs()

    def _apply_presentation(self, index: int) -> None:
        """Apply the chosen GSPS's display state to viewport *index* once per series shown there,
        when its image is one the GSPS covers."""
        if index >= len(self.model.viewports):
            return
        vp = self.model.viewports[index]
        p = self.current_presentation()
        f = vp.frame_info
        if p is None or f is None or vp.volume is None:
            return
        done = (vp.series_uid, p.sop_instance_uid)
        if self._applied.get(index) == done:
            return
        state = p.states.get((f.sop_instance_uid, f.frame))
        if state is None:  # the series' view: the state of its referenced image nearest this one
            state = self._series_state(vp, p)
        if state is None or not is_finite_state(state):
            return
        self._applied[index] = done
        apply_display_state(vp, state)

    def _series_state(self, vp: Any, p: PresentationChoice) -> DisplayState | None:
        key = (id(vp.volume.stack), p.sop_instance_uid)
        cache = self._series_states
        if key not in cache:
            best: tuple[int, DisplayState] | None = None
            for k, g in enumerate(vp.volume.stack.frames):
                s = p.states.get((g.sop_instance_uid, g.frame))
                if s is not None and (best is None or abs(k - vp.index) < best[0]):
                    best = (abs(k - vp.index), s)
            cache[key] = best[1] if best is not None else None
        return cache[key]

    # --- saving ----------------------------------------------------------------------------------

    def display_states(self) -> dict[str, DisplayState]:
        """What the visible viewports show (SOP UID → state): for the image each shows, and the
        images of its series that carry annotations or are key images. On open the state of a
        series' referenced image is applied to the series (:meth:`_apply_presentation`), so the
        GSPS need not reference every image of it (300 references cost seconds to build)."""
        marked = {k for k in self.annotations.images()} | {(k.sop_instance_uid, k.frame) for k in self.key_images}
        out: dict[str, DisplayState] = {}
        for vp in self.model.visible:
            if vp.volume is None or getattr(vp.volume, "preview", False):
                continue
            state = display_state_of(vp)
            f = vp.frame_info
            if state is None or f is None:
                continue
            out.setdefault(f.sop_instance_uid, state)
            for g in vp.volume.stack.frames:
                if (g.sop_instance_uid, g.frame) in marked:
                    out.setdefault(g.sop_instance_uid, state)
        return out

    def save_annotations(self) -> bool:
        """Save the annotations, key images and display as new GSPS / SR / KOS instances of the
        study (off the GUI thread; :attr:`persistence` ``.saved`` when done). False: a save runs."""
        if self._saving:
            return False
        volumes = [h.volume for h in self._loads.values() if h.volume is not None]
        annotations = [a for a in self.annotations.all()]
        keys = list(self.key_images)
        states = self.display_states()
        if not annotations and not keys and not states:
            self.status.setText("Nothing to save")
            return False
        paths = {f.sop_instance_uid: f.path for v in volumes for f in v.stack.frames}
        frames = frames_of(volumes)
        self._saving = True
        started = (self._changes, len(keys), keys)
        self.status.setText("Saving annotations…")
        signals, archive, headers, series = self.persistence, self.archive, self._headers, self._save_series

        def work() -> None:
            try:
                result = save_objects(archive, annotations, keys, states, headers=headers, paths=paths,
                                      frames=frames, series=series)  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - reported, never lost in a thread
                logger.exception("saving annotations failed")
                result = SaveResult(errors=[str(exc)])
            try:
                signals._save_done.emit(result, (started, states))
            except RuntimeError:  # the viewer is gone
                pass

        threading.Thread(target=work, name="hilum-save-annotations", daemon=True).start()
        return True

    def _on_saved(self, result: SaveResult, context: Any) -> None:
        (changes, _n, keys), states = context
        self._saving = False
        self.last_save = result
        if result.stored and not result.errors:
            if changes == self._changes:
                self.annotations.mark_saved()
            if keys == self.key_images:
                self._keys_dirty = False
        made = [ds for kind, ds in result.datasets if kind == "gsps"]
        if made:
            covered = {(f.sop_instance_uid, f.frame): states[f.sop_instance_uid]
                       for h in self._loads.values() if h.volume is not None
                       for f in h.volume.stack.frames if f.sop_instance_uid in states}  # fmt: skip
            choice = PresentationChoice(str(made[0].SOPInstanceUID), f"{made[0].get('ContentLabel', 'GSPS')} (saved now)",
                                        _when(made[0]), covered)  # fmt: skip
            self.presentations.insert(0, choice)
            if self.presentation_uid:
                self.presentation_uid = choice.sop_instance_uid
            for i, vp in enumerate(self.model.viewports):  # what they show is this GSPS already
                self._applied[i] = (vp.series_uid, choice.sop_instance_uid)
        names = {"gsps": "presentation state", "sr": "measurement report", "kos": "key images"}
        saved = ", ".join(names[k] for k, _ in result.stored)
        if result.errors:
            text = f"Saved {saved}; " if saved else ""
            self.status.setText(text + "not saved: " + "; ".join(result.errors))
            if self._close_after_save:
                self._close_after_save = False
                QMessageBox.warning(self._qw, "Save annotations", "Not saved: " + "; ".join(result.errors))
        else:
            self.status.setText(f"Saved {saved} as new instances in the study ({result.seconds:.2f} s)")
        self._show_modified()
        self.persistence.saved.emit(result)
        if self._close_after_save:
            self._close_after_save = False
            self._close_tab()

    def _close_tab(self) -> None:
        found = self._tabs()
        top = self._qw.window()
        if found is not None and hasattr(top, "close_workspace_tab"):
            top.close_workspace_tab(found[1])
        else:
            self._qw.close()

    def confirm_close(self) -> bool:
        """Closing with unsaved annotations asks (Save / Discard / Cancel), without blocking: False
        now, and the tab closes when Save has finished or Discard is chosen."""
        if self._discard or not self.modified:
            return True
        if self._saving:
            self._close_after_save = True
            return False
        box = QMessageBox(self._qw)
        box.setObjectName("unsavedAnnotationsBox")
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Unsaved annotations")
        box.setText("This study has annotations or key images that are not saved.")
        box.setInformativeText("Save them in the study before closing?")
        box.setStandardButtons(QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                               | QMessageBox.StandardButton.Cancel)  # fmt: skip
        box.setDefaultButton(QMessageBox.StandardButton.Save)

        def chosen(button: int) -> None:
            if button == QMessageBox.StandardButton.Save:
                self._close_after_save = True
                if not self.save_annotations():
                    self._close_after_save = self._saving
            elif button == QMessageBox.StandardButton.Discard:
                self._discard = True
                self._close_tab()
            box.deleteLater()

        box.finished.connect(chosen)
        box.open()
        return False

    # --- loading ---------------------------------------------------------------------------------

    def _load_presentation_objects(self) -> None:
        """Read the study's GSPS / SR / KOS / SEG off the GUI thread (:attr:`persistence` ``.loaded``)."""
        signals, archive, study = self.persistence, self.archive, self.study_uid

        def work() -> None:
            try:
                result = load_objects(archive, study)
            except Exception as exc:  # noqa: BLE001
                logger.exception("loading the study's presentation objects failed")
                result = LoadedObjects(errors=[str(exc)])
            try:
                signals._load_done.emit(result)
            except RuntimeError:
                pass

        threading.Thread(target=work, name="hilum-load-annotations", daemon=True).start()

    def _open_waiting_segs(self) -> None:
        """The newest SEG of each series, read onto its stack off the GUI thread once that is
        sorted (the segments panel lists and paints it then)."""
        for series_uid, ds in list(self._segs_waiting.items()):
            volume = None
            for handle in self._loads.values():
                v = handle.volume
                if v is not None and not getattr(v, "preview", False) and v.series_uid == series_uid:
                    volume = v
            if volume is None:
                continue
            del self._segs_waiting[series_uid]
            signals, stack = self.persistence, volume.stack

            def work(uid: str = series_uid, seg: Dataset = ds, stack: Any = stack, signals: Any = signals) -> None:
                from hilum.dicom.segmentation import read_seg

                t0 = time.perf_counter()
                try:
                    result: Any = read_seg(seg, stack)
                    result.counts()  # the voxels per segment (a pass over the volume), here, not on the GUI thread
                    logger.debug("SEG of %s read in %.2f s", uid, time.perf_counter() - t0)
                except Exception as exc:  # noqa: BLE001 - reported on the panel
                    result = exc
                try:
                    signals._seg_read.emit(uid, seg, result)
                except RuntimeError:
                    pass

            threading.Thread(target=work, name="hilum-read-seg", daemon=True).start()

    def _on_seg_read(self, series_uid: str, ds: Dataset, result: Any) -> None:
        editor = getattr(self, "seg", None)
        panel = getattr(self, "seg_panel", None)
        if getattr(self, "_closed", False) or editor is None:
            return
        if isinstance(result, Exception):
            if panel is not None:
                panel.status.setText(f"Cannot open the segmentation: {result}")
            return
        if series_uid in editor.labels:  # the reader started one meanwhile: theirs stays
            return
        editor.set_labels(series_uid, result)
        if panel is not None:
            panel.show_series(series_uid)
            label = ds.get("SeriesDescription", "") or "segmentation"
            panel.status.setText(f"Opened {label}: {len(result.segments)} segments")
        self.persistence.segOpened.emit(series_uid)

    def _on_objects_loaded(self, found: LoadedObjects) -> None:
        if getattr(self, "_closed", False):
            return
        self.loaded_objects = found
        for a in found.annotations:
            a.study_uid = a.study_uid or self.study_uid
        self.annotations.load(found.annotations)
        known = {(k.sop_instance_uid, k.frame) for k in self.key_images}
        self.key_images.extend(k for k in found.key_images if (k.sop_instance_uid, k.frame) not in known)
        self.presentations = list(found.presentations)
        if found.key_images:
            self._key_images_changed()
        for i in range(len(self.model.viewports)):
            self._apply_presentation(i)
        if found.seg_datasets and getattr(self, "seg", None) is not None:
            self._segs_waiting.update(found.seg_datasets)
            panel = getattr(self, "seg_panel", None)
            if panel is not None:
                n = len(found.segs)
                panel.status.setText(f"{n} segmentation{'s' if n != 1 else ''} in this study (Open segmentation…)")
            self._open_waiting_segs()
        if found.errors:
            self.status.setText("; ".join(found.errors))
        self._show_modified()
        self.persistence.loaded.emit(found)


def partial_viewport(viewer: PersistenceMixin, index: int) -> Callable[[Any, str], None]:
    def cb(vp: Any, what: str) -> None:
        viewer._on_viewport_event(index, vp, what)

    return cb


# ------------------------------------------------------------------ export beside the picture


class _Hidden:
    def __init__(self, vp: Any) -> None:
        self.vp = vp
        self.saved: Any = None

    def __enter__(self) -> None:
        from hilum.dicom.annotations import AnnotationSet

        self.saved = self.vp.annotations
        self.vp.set_annotations(AnnotationSet())

    def __exit__(self, *exc: object) -> None:
        self.vp.set_annotations(self.saved)


def _annotations_hidden(viewer: Any, index: int) -> _Hidden:
    return _Hidden(viewer.model.viewports[index])


def write_sidecars(viewer: Any, picture: Path, index: int) -> list[Path]:
    """The annotations of the exported image (and its display state) as DICOM files beside
    *picture*: ``<name>.gsps.dcm`` and, with measurements, ``<name>.sr.dcm`` (not stored in the
    archive: a Save does that)."""
    from hilum.dicom.presentation import make_gsps_objects
    from hilum.dicom.sr import make_measurement_sr
    from hilum.errors import HilumError

    vp = viewer.model.viewports[index]
    f = vp.frame_info
    if f is None:
        return []
    header = viewer._headers.get(f.sop_instance_uid, f.path)
    if header is None:
        raise HilumError(f"no header for the image {f.sop_instance_uid}")
    anns = viewer.annotations.on(f.sop_instance_uid, f.frame)
    state = display_state_of(vp)
    states = {(f.sop_instance_uid, f.frame): state} if state is not None else {}
    out: list[Path] = []
    stem = picture.with_suffix("")
    for n, ds in enumerate(make_gsps_objects([header], anns, states)):
        p = stem.with_name(stem.name + (".gsps.dcm" if n == 0 else f".gsps{n + 1}.dcm"))
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    measured = [a for a in anns if a.kind in MEASUREMENT_KINDS]
    if measured:
        frames = frames_of([vp.volume])
        vals = {a.uid: v for a in measured if (v := _values_of(a, frames)) is not None}
        try:
            sr = make_measurement_sr([header], measured, vals)
        except ValueError as exc:
            logger.info("no SR beside %s: %s", picture, exc)
        else:
            p = stem.with_name(stem.name + ".sr.dcm")
            sr.save_as(p, enforce_file_format=True)
            out.append(p)
    return out
