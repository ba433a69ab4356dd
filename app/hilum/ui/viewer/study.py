"""A study as the viewer sees it: its series from the archive, and their volumes.

Headless (no Qt). :class:`StudySession` asks the archive for a study's series
and each series' instances (the one query engine), starts background loads
(:func:`hilum.dicom.stack_load.load_series`) and keeps loaded volumes in a
small cache bounded by bytes, so a series shown in two viewports is decoded
once and switching back to a series is instant.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hilum.dicom.stack_load import LoadHandle, SeriesVolume, load_series

__all__ = ["SeriesEntry", "StudySession", "VolumeCache"]

logger = logging.getLogger(__name__)


@dataclass
class SeriesEntry:
    """One series of the study: its archive row and its instance files in Instance Number order."""

    series_uid: str
    number: int | None
    modality: str
    description: str
    paths: list[Path] = field(default_factory=list)
    frames: int = 0
    row: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        num = f"{self.number}" if self.number is not None else "?"
        return f"{num} {self.modality} {self.description}".strip()

    @property
    def middle(self) -> tuple[Path, int] | None:
        """The instance and frame to show first, before any header is read: the middle by Instance
        Number (for a monotonic acquisition the middle of the slice order, give or take one slice
        for an even count). The thumbnail reads the headers for the ordered middle
        (:func:`hilum.dicom.stack.middle_frame`)."""
        if not self.paths:
            return None
        if len(self.paths) == 1 and self.frames > 1:
            return self.paths[0], self.frames // 2
        return self.paths[len(self.paths) // 2], 0


class VolumeCache:
    """Loads by series UID, newest first, dropping the oldest above ``max_bytes`` (not those in use)."""

    def __init__(self, max_bytes: int = 3 << 30) -> None:
        self.max_bytes = max_bytes
        self._handles: OrderedDict[str, LoadHandle] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, series_uid: str) -> LoadHandle | None:
        with self._lock:
            h = self._handles.get(series_uid)
            if h is not None:
                self._handles.move_to_end(series_uid)
            return h

    def put(self, series_uid: str, handle: LoadHandle, in_use: set[str] | None = None) -> None:
        with self._lock:
            self._handles[series_uid] = handle
            self._handles.move_to_end(series_uid)
            self._evict(in_use or set())

    def _evict(self, in_use: set[str]) -> None:
        total = sum(h.volume.nbytes for h in self._handles.values() if h.volume is not None)
        for uid in list(self._handles):
            if total <= self.max_bytes:
                break
            if uid in in_use or len(self._handles) <= 1:
                continue
            h = self._handles.pop(uid)
            h.cancel()
            if h.volume is not None:
                total -= h.volume.nbytes
            logger.debug("dropped series %s from the volume cache", uid)

    def drop(self, series_uid: str) -> None:
        """Forget (and stop loading) one series."""
        with self._lock:
            h = self._handles.pop(series_uid, None)
        if h is not None:
            h.cancel()

    def close(self) -> None:
        with self._lock:
            for h in self._handles.values():
                h.cancel()
            self._handles.clear()

    @property
    def nbytes(self) -> int:
        return sum(h.volume.nbytes for h in self._handles.values() if h.volume is not None)


class StudySession:
    """The series of one study and their loads."""

    def __init__(self, archive: Any, study_uid: str, *, cache: VolumeCache | None = None,
                 executor: str = "auto", pool: Executor | None = None) -> None:  # fmt: skip
        self.archive = archive
        self.study_uid = study_uid
        self.cache = cache or VolumeCache()
        self.executor = executor
        self.pool = pool
        """The caller's decoder process pool (None: threads only); not shut down here."""
        self.series: list[SeriesEntry] = []
        self.study_row: dict[str, Any] = {}

    def refresh(self) -> list[SeriesEntry]:
        """Read the study's series and instance paths from the archive."""
        rows = self.archive.query("STUDY", {"StudyInstanceUID": self.study_uid}, limit=1)
        self.study_row = rows[0] if rows else {}
        series_rows = self.archive.query("SERIES", {"StudyInstanceUID": self.study_uid})
        entries = []
        for row in series_rows:
            uid = str(row.get("SeriesInstanceUID", ""))
            inst = self.archive.instances(study_uid=self.study_uid, series_uid=uid)
            inst = [r for r in inst if int(r.get("Rows") or 0) > 0]  # images only (not SR, PR, ...)
            if not inst:
                continue
            inst.sort(key=lambda r: (r.get("InstanceNumber") is None, r.get("InstanceNumber") or 0))
            try:
                number = int(row["SeriesNumber"]) if row.get("SeriesNumber") not in (None, "") else None
            except (TypeError, ValueError):
                number = None
            entries.append(SeriesEntry(
                series_uid=uid, number=number, modality=str(row.get("Modality", "") or ""),
                description=str(row.get("SeriesDescription", "") or ""),
                paths=[Path(r["path"]) for r in inst],
                frames=sum(max(int(r.get("NumberOfFrames") or 1), 1) for r in inst), row=row,
            ))  # fmt: skip
        entries.sort(key=lambda e: (e.number is None, e.number or 0, e.description))
        self.series = entries
        return entries

    def entry(self, series_uid: str) -> SeriesEntry | None:
        for e in self.series:
            if e.series_uid == series_uid:
                return e
        return None

    def load(
        self,
        series_uid: str,
        *,
        in_use: set[str] | None = None,
        on_preview: Callable[[SeriesVolume], None] | None = None,
        on_ready: Callable[[SeriesVolume], None] | None = None,
        on_progress: Callable[[SeriesVolume, int, int], None] | None = None,
        on_done: Callable[[LoadHandle], None] | None = None,
    ) -> LoadHandle:
        """The load of a series: the cached one, or a new background load."""
        handle = self.cache.get(series_uid)
        if handle is not None and not handle.cancelled and (handle.error is None):
            return handle
        entry = self.entry(series_uid)
        if entry is None:
            raise KeyError(f"series {series_uid} is not in study {self.study_uid}")
        middle = entry.middle
        handle = load_series(entry.paths, preview=middle if middle is not None else False, executor=self.executor,
                             pool=self.pool, on_preview=on_preview, on_ready=on_ready, on_progress=on_progress,
                             on_done=on_done)  # fmt: skip
        self.cache.put(series_uid, handle, in_use)
        return handle

    def close(self) -> None:
        """Drop this study's series from the (possibly shared) cache."""
        for e in self.series:
            self.cache.drop(e.series_uid)
