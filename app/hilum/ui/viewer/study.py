"""A study as the viewer sees it: its series from the archive, and their volumes.

Headless (no Qt). :class:`StudySession` asks the archive for a study's series
and each series' instances (the one query engine), starts background loads
(:func:`hilum.dicom.stack_load.load_series`) and keeps loaded volumes in a
small cache bounded by bytes, so a series shown in two viewports is decoded
once and switching back to a series is instant.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hilum.dicom.geometry import image_orientation_of, normal_of, slice_thickness_of
from hilum.dicom.stack_load import LoadHandle, SeriesVolume, load_series

__all__ = ["SeriesEntry", "SeriesHint", "StudySession", "VolumeCache", "best_match"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesHint:
    """What the comparison needs to pair a prior's series with a current one, from one header:
    the plane (``"AX"``, ``"COR"``, ``"SAG"``, ``""`` unknown) and the slice thickness."""

    plane: str = ""
    thickness: float | None = None


def _read_hint(path: Path) -> SeriesHint:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable file only loses the hint
        logger.debug("no series hint from %s: %s", path, exc)
        return SeriesHint()
    plane = ""
    iop = image_orientation_of(ds)
    if iop is not None:
        n = [abs(float(v)) for v in normal_of(iop)]
        k = max(range(3), key=lambda i: n[i])
        plane = ("SAG", "COR", "AX")[k] if n[k] > 0.8 else "OBL"
    return SeriesHint(plane, slice_thickness_of(ds))


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
    _hint: SeriesHint | None = field(default=None, repr=False, compare=False)

    @property
    def title(self) -> str:
        num = f"{self.number}" if self.number is not None else "?"
        return f"{num} {self.modality} {self.description}".strip()

    def hint(self) -> SeriesHint:
        """Plane and slice thickness from the middle instance's header (read once, a few ms)."""
        if self._hint is None:
            middle = self.middle
            self._hint = _read_hint(middle[0]) if middle is not None else SeriesHint()
        return self._hint

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


def best_match(
    reference: SeriesEntry, candidates: list[SeriesEntry], *, exclude: set[str] | None = None
) -> SeriesEntry | None:
    """The candidate (a prior's series) that best matches *reference* (a current series): same
    modality first, then same plane (axial/coronal/sagittal), then the closest description and
    slice thickness, then the closest number of images. None when there is no candidate."""
    pool = [c for c in candidates if c.series_uid not in (exclude or set())] or list(candidates)
    if not pool:
        return None
    ref = reference.hint()
    ref_desc = reference.description.lower()

    def score(c: SeriesEntry) -> float:
        h = c.hint()
        s = 8.0 if c.modality == reference.modality else 0.0
        s += 4.0 if ref.plane and h.plane == ref.plane else 0.0
        s += 2.0 * difflib.SequenceMatcher(None, ref_desc, c.description.lower()).ratio()
        if ref.thickness and h.thickness:
            s += 1.0 / (1.0 + abs(ref.thickness - h.thickness))
        s += 0.5 / (1.0 + abs(reference.frames - c.frames) / max(reference.frames, 1))
        return s

    return max(pool, key=score)


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

    @property
    def study_date(self) -> str:
        """The study's date, YYYYMMDD ("" unknown; after :meth:`refresh`)."""
        return str(self.study_row.get("StudyDate") or "")

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
