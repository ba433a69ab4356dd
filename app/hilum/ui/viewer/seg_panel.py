"""The segments panel of the viewer, and how segmentation editing is put into a viewer.

:class:`SegPanel` lists the segments of the active viewport's series: a check
box shows/hides each, its colour swatch opens a colour dialog, its name is
edited in place, the selected row is the active segment (the one the brush
paints), and each row shows the segment's volume in mL, updated as voxels
change (counted on the stroke's slices only, see :meth:`SegPanel.refresh_volumes`).
Below: brush radius (mm), threshold range (modality units, for the threshold
brush and region growing), 3D growing, Undo/Redo of strokes, "Open
segmentation…" (a SEG of the archive that references the series: ours, or an
AI plugin's) and "Save segmentation" (a NEW DICOM SEG through the archive's one
ingest call; a SEG that was opened is never overwritten).

:func:`install_segmentation` adds the editor, the panel, the five tools (keys
from :data:`hilum.ui.viewer.shortcuts.SHORTCUTS`) and the undo routing to a
:class:`~hilum.ui.viewer.viewer_widget.StudyViewer`; :func:`load_seg_for`
opens a SEG dataset onto the viewer (Helper 4's study-open calls it).

Undo: while a segmentation tool is the viewer's tool, Ctrl+Z / Ctrl+Y undo
and redo the label map's strokes (:func:`route_undo`); otherwise they go to
the viewer's annotations (``viewer.annotations.undo()``, when it has them).
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction, QColor, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from hilum.dicom.segmentation import LabelMap, make_seg, read_seg, seg_references
from hilum.dicom.stack_load import SeriesVolume
from hilum.errors import HilumError
from hilum.ui.icons import icon
from hilum.ui.viewer.seg_tools import SEG_TOOLS, SegEditor
from hilum.ui.viewer.shortcuts import SHORTCUTS

__all__ = ["SegPanel", "install_segmentation", "load_seg_for", "route_undo", "save_seg", "seg_datasets_for"]

logger = logging.getLogger(__name__)

TOOL_ICONS = {
    "seg_brush": ("mdi6.brush", "Br"),
    "seg_threshold": ("mdi6.brush-variant", "Th"),
    "seg_eraser": ("mdi6.eraser", "Er"),
    "seg_grow": ("mdi6.auto-fix", "Gr"),
    "seg_fill": ("mdi6.format-color-fill", "Fi"),
}

COL_SHOW, COL_COLOUR, COL_NAME, COL_ML = range(4)


class _Bridge(QObject):
    saved = Signal(str, str)  # SOP Instance UID (or ''), error text (or '')


def seg_headers(volume: SeriesVolume) -> list[Dataset]:
    """The headers of *volume*'s frames in its volume order (what :func:`make_seg` references)."""
    order = volume.stack.order
    frames = [order.items[u] for u in order.unique]
    if any(f.frame != 0 for f in frames) or len({f.sop_instance_uid for f in frames}) != len(frames):
        raise HilumError("saving a segmentation of a multi-frame series is not supported yet")
    return [pydicom.dcmread(f.path, stop_before_pixels=True) for f in frames]


def save_seg(archive: Any, volume: SeriesVolume, labels: LabelMap, **kwargs: Any) -> str:
    """Make a new SEG of *labels* on *volume*'s series and store it through the archive's one
    ingest call; returns its SOP Instance UID (raises :class:`HilumError` when refused)."""
    ds = make_seg(seg_headers(volume), labels, **kwargs)
    res = archive.ingest(ds, origin="annotation")
    if not res.ok:
        raise HilumError(f"the archive refused the segmentation: {res.reason}")
    return str(ds.SOPInstanceUID)


def seg_datasets_for(archive: Any, study_uid: str, series_uid: str) -> list[Dataset]:
    """The SEG objects of the study (in the archive) that reference series *series_uid*."""
    out: list[Dataset] = []
    for row in archive.query("SERIES", {"StudyInstanceUID": study_uid, "Modality": "SEG"}):
        for inst in archive.instances(series_uid=row["SeriesInstanceUID"]):
            try:
                ds = pydicom.dcmread(inst["path"])
            except Exception as exc:  # noqa: BLE001 - one unreadable object does not hide the others
                logger.warning("unreadable SEG %s: %s", inst.get("SOPInstanceUID"), exc)
                continue
            if seg_references(ds)[0] == series_uid:
                out.append(ds)
    return out


def load_seg_for(viewer: Any, ds: Dataset, volume: SeriesVolume | None = None) -> LabelMap:
    """Open the SEG *ds* onto the viewer: as the editable label map of the series it references
    (*volume*, or the viewer's loaded volume of that series)."""
    editor: SegEditor = viewer.seg
    uid = seg_references(ds)[0]
    if volume is None:
        volume = viewer.series_volume(uid) if uid else None
        if volume is None:
            vp = viewer.active_viewport()
            volume = vp.volume
    if volume is None:
        raise HilumError(f"the series {uid} this segmentation references is not loaded")
    lm = read_seg(ds, volume.stack)
    editor.set_labels(volume.series_uid, lm)
    return lm


class SegPanel(QWidget):
    """Segments of the active series: list, settings, undo/redo, open and save."""

    def __init__(self, viewer: Any, editor: SegEditor, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("segPanel")
        self.viewer = viewer
        self.editor = editor
        self.series_uid = ""
        self._filling = False
        self._bridge = _Bridge(self)
        self._bridge.saved.connect(self._on_saved)
        self.saving: threading.Thread | None = None
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)
        title = QLabel("<b>Segmentation</b>", self)
        lay.addWidget(title)
        self.table = QTableWidget(0, 4, self)
        self.table.setObjectName("segTable")
        self.table.setHorizontalHeaderLabels(["", "", "Segment", "mL"])
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setStretchLastSection(False)
        self.table.setColumnWidth(COL_SHOW, 24)
        self.table.setColumnWidth(COL_COLOUR, 24)
        self.table.setColumnWidth(COL_NAME, 120)
        self.table.setColumnWidth(COL_ML, 60)
        self.table.itemChanged.connect(self._item_changed)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.cellDoubleClicked.connect(self._cell_double_clicked)
        lay.addWidget(self.table, 1)
        row = QHBoxLayout()
        self.add_btn = self._button("Add", self.add_segment, row)
        self.remove_btn = self._button("Remove", self.remove_segment, row)
        self.colour_btn = self._button("Colour…", self.choose_colour, row)
        lay.addLayout(row)
        form = QFormLayout()
        self.radius = QDoubleSpinBox(self)
        self.radius.setObjectName("segRadius")
        self.radius.setRange(0.5, 100.0)
        self.radius.setSuffix(" mm")
        self.radius.setValue(editor.radius_mm)
        self.radius.valueChanged.connect(lambda v: setattr(editor, "radius_mm", float(v)))
        form.addRow("Brush radius", self.radius)
        self.lo = QDoubleSpinBox(self)
        self.lo.setObjectName("segLo")
        self.hi = QDoubleSpinBox(self)
        self.hi.setObjectName("segHi")
        for box, value, attr in ((self.lo, editor.lo, "lo"), (self.hi, editor.hi, "hi")):
            box.setRange(-100000.0, 100000.0)
            box.setDecimals(0)
            box.setValue(value)
            box.valueChanged.connect(partial(lambda a, v: setattr(editor, a, float(v)), attr))
        form.addRow("Threshold from", self.lo)
        form.addRow("to", self.hi)
        self.grow3d = QCheckBox("Grow in 3D", self)
        self.grow3d.setObjectName("segGrow3d")
        self.grow3d.toggled.connect(lambda on: setattr(editor, "grow_3d", bool(on)))
        form.addRow(self.grow3d)
        lay.addLayout(form)
        row = QHBoxLayout()
        self.undo_btn = self._button("Undo", lambda: self.editor.undo(self.series_uid), row)
        self.redo_btn = self._button("Redo", lambda: self.editor.redo(self.series_uid), row)
        lay.addLayout(row)
        self.open_btn = self._button("Open segmentation…", self.open_dialog, lay)
        self.save_btn = self._button("Save segmentation", self.save, lay)
        self.status = QLabel("", self)
        self.status.setObjectName("segStatus")
        self.status.setWordWrap(True)
        lay.addWidget(self.status)
        self.setMinimumWidth(250)
        self._unsub = editor.subscribe(self._on_editor)

    def _button(self, text: str, slot: Any, layout: Any) -> QPushButton:
        b = QPushButton(text, self)
        b.setObjectName("seg" + "".join(w.capitalize() for w in text.strip("…").split()))
        b.clicked.connect(lambda _c=False: slot())
        layout.addWidget(b)
        return b

    # ------------------------------------------------------------ model -> view

    def _on_editor(self, what: str, uid: str) -> None:
        if uid != self.series_uid and what != "labels":
            return
        if what == "segments" and self._update_rows():
            return
        if what in ("labels", "segments", "active"):
            self.show_series(self.series_uid or uid)
        elif what == "voxels":
            self.refresh_volumes()

    def _volume(self) -> SeriesVolume | None:
        v = self.viewer.series_volume(self.series_uid) if self.series_uid else None
        return v if v is not None else self.viewer.active_viewport().volume

    def show_series(self, series_uid: str) -> None:
        """List the segments of *series_uid* (the active viewport's series)."""
        self.series_uid = series_uid
        lm = self.editor.labels.get(series_uid)
        self._filling = True
        try:
            self.table.setRowCount(0)
            if lm is None:
                return
            active = self.editor.active_segment(series_uid)
            for n, seg in sorted(lm.segments.items()):
                r = self.table.rowCount()
                self.table.insertRow(r)
                show = QTableWidgetItem()
                show.setFlags(
                    Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
                )
                show.setCheckState(Qt.CheckState.Checked if seg.visible else Qt.CheckState.Unchecked)
                show.setData(Qt.ItemDataRole.UserRole, n)
                self.table.setItem(r, COL_SHOW, show)
                swatch = QTableWidgetItem()
                pm = QPixmap(14, 14)
                pm.fill(QColor(*seg.color))
                swatch.setIcon(pm)
                swatch.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                self.table.setItem(r, COL_COLOUR, swatch)
                name = QTableWidgetItem(seg.label)
                self.table.setItem(r, COL_NAME, name)
                ml = QTableWidgetItem("")
                ml.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                ml.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, COL_ML, ml)
                if n == active:
                    self.table.selectRow(r)
        finally:
            self._filling = False
        self.refresh_volumes()

    def _update_rows(self) -> bool:
        """Names, colours and check boxes updated in place (the rows the user is clicking stay);
        False when the segments are not those listed (then the list is rebuilt)."""
        lm = self.editor.labels.get(self.series_uid)
        if lm is None or [self.number_at(r) for r in range(self.table.rowCount())] != sorted(lm.segments):
            return False
        self._filling = True
        try:
            for r in range(self.table.rowCount()):
                seg = lm.segments[self.number_at(r)]
                state = Qt.CheckState.Checked if seg.visible else Qt.CheckState.Unchecked
                show, swatch, name = (self.table.item(r, c) for c in (COL_SHOW, COL_COLOUR, COL_NAME))
                if show is None or swatch is None or name is None:
                    return False
                if show.checkState() != state:
                    show.setCheckState(state)
                pm = QPixmap(14, 14)
                pm.fill(QColor(*seg.color))
                swatch.setIcon(pm)
                if name.text() != seg.label:
                    name.setText(seg.label)
        finally:
            self._filling = False
        return True

    def refresh_volumes(self) -> None:
        """The mL column from the label map's voxel counts (kept up to date stroke by stroke)."""
        lm = self.editor.labels.get(self.series_uid)
        v = self._volume()
        if lm is None or v is None:
            return
        vols = self.editor.volumes_ml(self.series_uid, v)
        for r in range(self.table.rowCount()):
            n = self.number_at(r)
            item = self.table.item(r, COL_ML)
            if item is not None and n in vols:
                item.setText(f"{vols[n]:.2f}")

    def number_at(self, row: int) -> int:
        item = self.table.item(row, COL_SHOW)
        return int(item.data(Qt.ItemDataRole.UserRole)) if item is not None else 0

    def volume_text(self, number: int) -> str:
        """The mL shown for segment *number* (what a person reads in the panel)."""
        for r in range(self.table.rowCount()):
            if self.number_at(r) == number:
                item = self.table.item(r, COL_ML)
                return item.text() if item is not None else ""
        return ""

    # ------------------------------------------------------------ view -> model

    def _item_changed(self, item: QTableWidgetItem) -> None:
        if self._filling:
            return
        lm = self.editor.labels.get(self.series_uid)
        if lm is None:
            return
        n = self.number_at(item.row())
        if item.column() == COL_SHOW:
            lm.update_segment(n, visible=item.checkState() == Qt.CheckState.Checked)
        elif item.column() == COL_NAME and item.text() != lm.segments[n].label:
            lm.update_segment(n, label=item.text())

    def _selection_changed(self) -> None:
        if self._filling:
            return
        rows = {i.row() for i in self.table.selectedItems()}
        if rows:
            n = self.number_at(min(rows))
            if n and n != self.editor.active.get(self.series_uid):
                self.editor.active[self.series_uid] = n

    def _cell_double_clicked(self, row: int, column: int) -> None:
        if column == COL_COLOUR:
            self.choose_colour()

    def _ensure_labels(self) -> LabelMap | None:
        v = self._volume()
        if v is None:
            return None
        self.series_uid = v.series_uid
        return self.editor.labels_for(v)

    def add_segment(self) -> None:
        lm = self.editor.labels.get(self.series_uid)
        if lm is None:
            self._ensure_labels()  # comes with a first segment
            self.show_series(self.series_uid)
            return
        self.editor.add_segment(self.series_uid)

    def remove_segment(self) -> None:
        lm = self.editor.labels.get(self.series_uid)
        n = self.editor.active_segment(self.series_uid)
        if lm is not None and n is not None:
            lm.remove_segment(n)

    def choose_colour(self) -> None:
        lm = self.editor.labels.get(self.series_uid)
        n = self.editor.active_segment(self.series_uid)
        if lm is None or n is None:
            return
        c = QColorDialog.getColor(QColor(*lm.segments[n].color), self, "Segment colour")
        if c.isValid():
            lm.update_segment(n, color=(c.red(), c.green(), c.blue()))

    # ------------------------------------------------------------ open / save

    def open_dialog(self) -> None:
        v = self._volume()
        if v is None:
            return
        found = seg_datasets_for(self.viewer.archive, self.viewer.study_uid, v.series_uid)
        if not found:
            self.status.setText("No segmentation of this series in the archive")
            return
        names = [f"{ds.get('SeriesDescription', '') or ds.get('ContentLabel', 'SEG')} — "
                 f"{ds.get('ContentDate', '')} {str(ds.get('ContentTime', ''))[:6]} "
                 f"({len(ds.SegmentSequence)} segments)" for ds in found]  # fmt: skip
        if len(found) == 1:
            choice = 0
        else:
            text, ok = QInputDialog.getItem(self, "Open segmentation", "Segmentation", names, len(names) - 1, False)
            if not ok:
                return
            choice = names.index(text)
        self.open_dataset(found[choice], v)

    def open_dataset(self, ds: Dataset, volume: SeriesVolume | None = None) -> LabelMap | None:
        try:
            lm = load_seg_for(self.viewer, ds, volume)
        except (HilumError, ValueError) as exc:
            self.status.setText(f"Cannot open the segmentation: {exc}")
            return None
        self.show_series(lm.series_uid)
        self.status.setText(f"Opened {ds.get('SeriesDescription', 'segmentation')}: {len(lm.segments)} segments")
        return lm

    def save(self) -> None:
        """Save a NEW SEG of the series' label map through the archive's ingest, off the GUI
        thread (a 512x512x300 SEG takes seconds); :attr:`saved` tells when it is done."""
        lm = self.editor.labels.get(self.series_uid)
        v = self._volume()
        if lm is None or v is None or (self.saving is not None and self.saving.is_alive()):
            return
        snapshot = LabelMap(lm.shape, [type(s)(**vars(s)) for s in lm.segments.values()])
        snapshot.array[:] = lm.array  # what was on screen when Save was pressed
        archive, bridge = self.viewer.archive, self._bridge
        self.status.setText("Saving the segmentation…")
        self.save_btn.setEnabled(False)

        def tell(uid: str, error: str) -> None:
            try:
                bridge.saved.emit(uid, error)
            except RuntimeError:  # the panel closed meanwhile: the SEG is stored (or logged) all the same
                logger.info("segmentation saved after its viewer closed: %s %s", uid, error)

        def work() -> None:
            try:
                tell(save_seg(archive, v, snapshot), "")
            except Exception as exc:  # noqa: BLE001 - reported in the panel, never lost
                logger.exception("saving a segmentation failed")
                tell("", str(exc))

        self.saving = threading.Thread(target=work, name="seg-save", daemon=True)
        self.saving.start()

    @property
    def saved(self) -> Any:
        """Signal ``(sop_instance_uid, error)`` when a save ends."""
        return self._bridge.saved

    def _on_saved(self, uid: str, error: str) -> None:
        self.save_btn.setEnabled(True)
        if error:
            self.status.setText(f"Not saved: {error}")
            return
        lm = self.editor.labels.get(self.series_uid)
        if lm is not None:
            lm.mark_saved()
        self.status.setText("Segmentation saved as a new DICOM SEG")

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self._unsub()
        super().closeEvent(event)


# --------------------------------------------------------------------------- install


def route_undo(viewer: Any, redo: bool = False) -> bool:
    """Ctrl+Z / Ctrl+Y: the label map's strokes while a segmentation tool is the viewer's tool (or
    the panel has the focus), else the viewer's annotations when it has them; True when handled."""
    editor: SegEditor | None = getattr(viewer, "seg", None)
    panel = getattr(viewer, "seg_panel", None)
    seg_first = editor is not None and (
        viewer.tool_name in SEG_TOOLS or (panel is not None and panel.isVisible() and panel.hasFocus())
    )
    if seg_first and editor is not None:
        vp = viewer.active_viewport()
        uid = vp.series_uid or editor.current_series
        return editor.redo(uid) if redo else editor.undo(uid)
    annotations = getattr(viewer, "annotations", None)
    if annotations is not None:
        return bool(annotations.redo() if redo else annotations.undo())
    return False


def install_segmentation(viewer: Any) -> SegEditor:
    """Put segmentation editing into *viewer*: ``viewer.seg`` (the editor, also
    ``viewer.model.seg_editor`` for the viewports' paint hook), ``viewer.seg_panel`` (hidden
    until a segmentation tool is chosen or "Segments panel" is checked), the five tools in the
    toolbar and the tool group, with their keys, and Ctrl+Z/Ctrl+Y routing."""
    editor = SegEditor()
    viewer.seg = editor
    viewer.model.seg_editor = editor
    panel = SegPanel(viewer, editor, viewer)
    panel.hide()
    viewer.seg_panel = panel
    layout = viewer.layout()
    if layout is not None:
        layout.addWidget(panel)
    keys = {name: k for name, k, _ in SHORTCUTS}
    texts = {name: t for name, _, t in SHORTCUTS}
    group = viewer.actions_by_name["tool_window"].actionGroup()
    viewer.toolbar.addSeparator()
    for name, cls in SEG_TOOLS.items():
        viewer.tools[name] = cls(editor)
        act: QAction = viewer._action(f"tool_{name}", cls.label, keys=keys.get(f"tool_{name}", ""),
                                      toggled=partial(_seg_tool_toggled, viewer, name))  # fmt: skip
        icon_name, fallback = TOOL_ICONS[name]
        act.setIcon(icon(icon_name, fallback))
        shown = " or ".join(k.toString(QKeySequence.SequenceFormat.NativeText) for k in act.shortcuts())
        tip = texts.get(f"tool_{name}", cls.label)
        act.setToolTip(f"{tip} ({shown})" if shown else tip)
        act.setStatusTip(tip)
        if group is not None:
            group.addAction(act)
        viewer.toolbar.addAction(act)
    show = viewer._action("show_segments", "Segments panel", keys=keys.get("show_segments", ""),
                          toggled=lambda on: _show_panel(viewer, on))  # fmt: skip
    show.setToolTip(texts.get("show_segments", "Segments panel"))
    for name, redo, k in (("undo", False, "Ctrl+Z"), ("redo", True, "Ctrl+Y")):
        if name not in viewer.actions_by_name:  # the annotations' undo routes here itself (route_undo)
            viewer._action(name, "Redo" if redo else "Undo", partial(route_undo, viewer, redo), k)
    viewer.model.subscribe(lambda what: _follow_active(viewer) if what == "active" else None)
    viewer.seriesShown.connect(lambda *_: _follow_active(viewer))
    return editor


def _follow_active(viewer: Any) -> None:
    vp = viewer.active_viewport()
    if vp.series_uid and vp.series_uid != viewer.seg_panel.series_uid:
        viewer.seg_panel.show_series(vp.series_uid)


def _show_panel(viewer: Any, on: bool) -> None:
    panel: SegPanel = viewer.seg_panel
    panel.setVisible(on)
    if on:
        vp = viewer.active_viewport()
        if vp.volume is not None:
            panel.show_series(vp.volume.series_uid)
    act = viewer.actions_by_name.get("show_segments")
    if act is not None and act.isChecked() != on:
        act.setChecked(on)


def _seg_tool_toggled(viewer: Any, name: str, checked: bool) -> None:
    if not checked:
        return
    viewer.set_tool(name)
    vp = viewer.active_viewport()
    if vp.volume is not None:
        viewer.seg.labels_for(vp.volume)  # a label map with a first segment, ready to paint
        viewer.seg.current_series = vp.volume.series_uid
    _show_panel(viewer, True)
