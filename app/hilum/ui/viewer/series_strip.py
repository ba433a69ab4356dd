"""The series strip: one thumbnail per series, drag one onto a viewport, double-click to show it.

The current study's series come first; each prior the viewer has added follows below a
header naming its date ("PRIOR 2025-10-14"), and its series are dragged or double-clicked
into a viewport as the current study's are.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PySide6.QtCore import QMimeData, QObject, QSize, Qt, Signal
from PySide6.QtGui import QColor, QDrag, QIcon, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem, QWidget

from hilum.ui.viewer.study import SeriesEntry
from hilum.ui.viewer.thumbnails import ThumbnailCache
from hilum.ui.viewer.viewport_widget import SERIES_MIME

__all__ = ["SeriesStrip"]

logger = logging.getLogger(__name__)
UID_ROLE = Qt.ItemDataRole.UserRole + 1
STUDY_ROLE = Qt.ItemDataRole.UserRole + 2
VIRTUAL_ROLE = Qt.ItemDataRole.UserRole + 3  # a virtual series (key images), not stored as such


def pixmap_of(img: np.ndarray) -> QPixmap:
    img = np.ascontiguousarray(img)
    h, w = img.shape[:2]
    fmt = QImage.Format.Format_Grayscale8 if img.ndim == 2 else QImage.Format.Format_RGB888
    return QPixmap.fromImage(QImage(img.data, w, h, img.strides[0], fmt).copy())


def framed(pixmap: QPixmap, size: QSize) -> QPixmap:
    """*pixmap* centred on a black square of *size*: every thumbnail (and the blank one before it)
    has the same size, so an item keeps its geometry when its thumbnail arrives. A non-square
    thumbnail used to shrink its item without the list laying its items out again: the label was
    painted once where it was and once where it moved to (issue 23)."""
    out = QPixmap(size)
    out.fill(Qt.GlobalColor.black)
    p = QPainter(out)
    try:
        scaled = pixmap.scaled(size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
        p.drawPixmap((size.width() - scaled.width()) // 2, (size.height() - scaled.height()) // 2, scaled)
    finally:
        p.end()
    return out


class _Bridge(QObject):
    thumbnail = Signal(str, object)


class SeriesStrip(QListWidget):
    """Thumbnails of a study's series (made off the GUI thread, cached)."""

    seriesActivated = Signal(str)

    def __init__(self, thumbnails: ThumbnailCache, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.thumbnails = thumbnails
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setFlow(QListWidget.Flow.TopToBottom)
        self.setWrapping(False)
        self.setMovement(QListWidget.Movement.Static)
        self.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.setIconSize(QSize(thumbnails.size, thumbnails.size))
        self.setSpacing(4)
        self.setWordWrap(True)
        self.setFixedWidth(thumbnails.size + 40)
        self.setDragEnabled(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self._bridge = _Bridge(self)
        self._bridge.thumbnail.connect(self._set_thumbnail)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hilum-thumbs")
        self.itemActivated.connect(self._activated)
        self._closed = False
        self._sections: dict[str, list[SeriesEntry]] = {}  # study uid -> its series, in the order added

    def _activated(self, item: QListWidgetItem) -> None:
        uid = item.data(UID_ROLE)
        if uid:  # not a study's header
            self.seriesActivated.emit(uid)

    def set_series(self, entries: Sequence[SeriesEntry], *, later: Collection[str] = ()) -> None:
        """One item per series; thumbnails are made in the background, except for the series in
        *later*, whose thumbnail the caller asks for with :meth:`make_thumbnail` (e.g. once its
        load has sorted the headers)."""
        self.clear()
        self._sections.clear()
        self._add_items(entries, later)

    def add_study(self, study_uid: str, title: str, entries: Sequence[SeriesEntry], *, tooltip: str = "") -> None:
        """Append another study's series (a prior) below a header item showing *title*; again for
        the same study: nothing (its section is there)."""
        if study_uid in self._sections:
            return
        self._sections[study_uid] = list(entries)
        header = QListWidgetItem(title)
        header.setFlags(Qt.ItemFlag.ItemIsEnabled)  # neither selectable nor draggable
        header.setData(STUDY_ROLE, study_uid)
        font = header.font()
        font.setBold(True)
        header.setFont(font)
        header.setForeground(QColor(255, 190, 80))
        header.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
        header.setSizeHint(QSize(self.iconSize().width() + 16, 16 * (title.count("\n") + 1) + 8))
        header.setToolTip(tooltip or title)
        self.addItem(header)
        self._add_items(entries, ())

    def set_virtual(self, entry: SeriesEntry | None, text: str = "", tooltip: str = "") -> None:
        """The one virtual series (the study's key images) after the current study's series, before
        any prior's header; its thumbnail is its first image. None: no such entry."""
        for i in range(self.count()):
            if self.item(i).data(VIRTUAL_ROLE):
                self.takeItem(i)
                break
        if entry is None:
            return
        row = 0
        while row < self.count() and self.item(row).data(UID_ROLE):
            row += 1
        blank = QPixmap(self.iconSize())
        blank.fill(Qt.GlobalColor.black)
        item = QListWidgetItem(QIcon(blank), text or f"{entry.title}\n{entry.frames} im")
        item.setData(UID_ROLE, entry.series_uid)
        item.setData(VIRTUAL_ROLE, True)
        item.setToolTip(tooltip or entry.description)
        self.insertItem(row, item)
        if entry.paths:
            self._pool.submit(self._make, entry.series_uid, [str(entry.paths[0])])

    def header_for(self, study_uid: str) -> QListWidgetItem | None:
        """The header item of an added study's section."""
        for i in range(self.count()):
            if self.item(i).data(STUDY_ROLE) == study_uid:
                return self.item(i)
        return None

    def _add_items(self, entries: Sequence[SeriesEntry], later: Collection[str]) -> None:
        blank = QPixmap(self.iconSize())
        blank.fill(Qt.GlobalColor.black)
        for e in entries:
            item = QListWidgetItem(QIcon(blank), f"{e.title}\n{e.frames} im")
            item.setData(UID_ROLE, e.series_uid)
            item.setToolTip(f"Series {e.number}: {e.description}\n{e.modality}, {e.frames} images")
            self.addItem(item)
            if e.paths and e.series_uid not in later:
                self._pool.submit(self._make, e.series_uid, [str(p) for p in e.paths])

    def make_thumbnail(self, uid: str, paths: Sequence[Any], middle: tuple[str, int] | None = None) -> None:
        """Make one series' thumbnail off the GUI thread; *middle* (``(path, frame)`` of the loaded
        stack's middle slice) spares reading every header again."""
        if not self._closed and paths:
            self._pool.submit(self._make, uid, [str(p) for p in paths], middle)

    def _make(self, uid: str, paths: list[str], middle: tuple[str, int] | None = None) -> None:
        if self._closed:
            return
        try:
            img = self.thumbnails.for_series(uid, paths, middle)
        except Exception as exc:  # noqa: BLE001 - a thumbnail must never take the viewer down
            logger.warning("no thumbnail for series %s: %s", uid, exc)
            return
        if img is not None and not self._closed:
            self._bridge.thumbnail.emit(uid, img)

    def _set_thumbnail(self, uid: str, img: Any) -> None:
        for i in range(self.count()):
            item = self.item(i)
            if item.data(UID_ROLE) == uid:
                item.setIcon(QIcon(framed(pixmap_of(img), self.iconSize())))

    def item_for(self, uid: str) -> QListWidgetItem | None:
        for i in range(self.count()):
            if self.item(i).data(UID_ROLE) == uid:
                return self.item(i)
        return None

    def series_uids(self) -> list[str]:
        """Every series shown, top to bottom (the current study's, then each prior's)."""
        uids = (self.item(i).data(UID_ROLE) for i in range(self.count()))
        return [u for u in uids if u]

    def mime_for(self, uid: str) -> QMimeData:
        data = QMimeData()
        data.setData(SERIES_MIME, uid.encode("ascii"))
        return data

    def startDrag(self, supported: Any) -> None:  # noqa: N802
        item = self.currentItem()
        if item is None or not item.data(UID_ROLE):
            return
        drag = QDrag(self)
        drag.setMimeData(self.mime_for(item.data(UID_ROLE)))
        drag.setPixmap(item.icon().pixmap(self.iconSize()))
        drag.exec(Qt.DropAction.CopyAction)

    def shutdown(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
