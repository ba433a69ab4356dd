"""A remote study in the viewer, streamed progressively (issue 18).

:class:`RemoteStudySession` is a :class:`~hilum.ui.viewer.study.StudySession`
whose series come from a DICOMweb source (QIDO-RS) and whose loads are
:class:`hilum.dicomweb.progressive.ProgressiveLoad`: a lossy first rendition of
each slice (the viewed slice first, then every Nth, then the gaps), refined to
the original pixels in the background, each full-fidelity instance written to
the cache (``put_instance``).  The viewer is the usual
:class:`~hilum.ui.viewer.viewer_widget.StudyViewer`: the same display pipeline
(lossy pixels are stored values through the frame's Modality/VOI LUTs), the
same loading callbacks; scrolling moves the load's focus
(:meth:`LoadHandle.focus`), which re-orders what is fetched next.

While the slice a viewport shows is lossy the viewport says "LOSSY", measuring
tools are refused (unless the reader ticks "Allow measuring lossy images",
:func:`install_lossy_guard`) and the pixel probe's value is marked approximate
(:mod:`hilum.ui.viewer.viewport_widget`).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction

from hilum.dicom.stack_load import LoadHandle, SeriesVolume
from hilum.dicomweb.progressive import ProgressiveLoad, ProgressiveVolume
from hilum.ui.viewer.study import SeriesEntry, StudySession, VolumeCache

__all__ = ["RemoteStudySession", "install_lossy_guard", "open_progressive", "prepare_remote"]

logger = logging.getLogger(__name__)

NON_IMAGE = {"SR", "PR", "KO", "SEG", "RTSTRUCT", "DOC", "REG", "RWV"}


class RemoteStudySession(StudySession):
    """The series of a study on a DICOMweb source, loaded progressively."""

    def __init__(self, client: Any, study_uid: str, *, archive: Any = None, store: Any = None,
                 cache: VolumeCache | None = None, force: str | None = None, workers: int = 4,
                 stride: int | None = None, on_complete: Callable[[str], None] | None = None,
                 prepared: dict[str, Any] | None = None, full_syntax: str | None = None) -> None:  # fmt: skip
        super().__init__(archive, study_uid, cache=cache)
        self.client = client
        self.store = store
        """Where full-fidelity instances go (``put_instance(study, data)``), or None."""
        self.force = force
        self.workers = workers
        self.stride = stride
        self.on_complete = on_complete
        self.loads: dict[str, ProgressiveLoad] = {}
        self.prepared = prepared
        self.full_syntax: str | None = full_syntax
        """Full-fidelity instances: ``"*"`` as stored (the default: what is cached and kept is
        byte for byte what the source stores), None: in the adaptive plan's lossless syntax (fewer
        bytes on a slow link; a lossless transcode, UIDs and pixels kept, bytes not)."""
        self.background = True
        """When the series shown are in, stream the study's other series (and its non-image objects)
        into the cache too, one at a time, so the whole study is cached (``on_complete``)."""
        self.other_series: list[str] = []
        """The study's series without images (SR, PR, KO, SEG...): fetched whole at the end."""
        self.first_stored = threading.Event()
        """Set once an instance of the study is in the cache (its archive then knows the study)."""
        self.on_first_stored: Callable[[], None] | None = None
        self._done: set[str] = set()
        self._closed = False
        self._completed = False
        self._lock = threading.Lock()

    def refresh(self) -> list[SeriesEntry]:
        """The study's series from the source (QIDO-RS; blocking — the remote source asks first off
        the GUI thread, :func:`prepare_remote`, and passes ``prepared``, used once)."""
        prepared, self.prepared = self.prepared, None
        if prepared is None:
            prepared = prepare_remote(self.client, self.study_uid)
        self.study_row = prepared["study"]
        entries = []
        self.other_series = []
        for row in prepared["series"]:
            uid = str(row.get("SeriesInstanceUID", ""))
            modality = str(row.get("Modality", "") or "")
            if uid and modality in NON_IMAGE:
                self.other_series.append(uid)
            if not uid or modality in NON_IMAGE:
                continue
            try:
                number = int(row["SeriesNumber"]) if row.get("SeriesNumber") not in (None, "") else None
            except (TypeError, ValueError):
                number = None
            try:
                count = int(row.get("NumberOfSeriesRelatedInstances") or 0)
            except (TypeError, ValueError):
                count = 0
            entries.append(SeriesEntry(series_uid=uid, number=number, modality=modality,
                                       description=str(row.get("SeriesDescription", "") or ""), paths=[],
                                       frames=count, row=row))  # fmt: skip
        entries.sort(key=lambda e: (e.number is None, e.number or 0, e.description))
        self.series = entries
        return entries

    def load(self, series_uid: str, *, in_use: set[str] | None = None,
             on_preview: Callable[[SeriesVolume], None] | None = None,
             on_ready: Callable[[SeriesVolume], None] | None = None,
             on_progress: Callable[[SeriesVolume, int, int], None] | None = None,
             on_done: Callable[[LoadHandle], None] | None = None) -> LoadHandle:  # fmt: skip
        handle = self.cache.get(series_uid)
        if handle is not None and not handle.cancelled and handle.error is None:
            return handle
        if self.entry(series_uid) is None:
            raise KeyError(f"series {series_uid} is not in study {self.study_uid}")

        def done(h: LoadHandle) -> None:
            if on_done is not None:
                on_done(h)
            if h.error is None and not h.cancelled:
                self._series_done(series_uid)

        store = _Store(self.store, self.client, self._stored)
        load = ProgressiveLoad(self.client, self.study_uid, series_uid, cache=store, workers=self.workers,
                               force=self.force, stride=self.stride, full_syntax=self.full_syntax, on_ready=on_ready,
                               on_progress=on_progress, on_done=done)  # fmt: skip
        self.loads[series_uid] = load
        handle = load.start()
        self.cache.put(series_uid, handle, in_use)
        return handle

    def _stored(self) -> None:
        if self.first_stored.is_set():
            return
        self.first_stored.set()
        if self.on_first_stored is not None:
            self.on_first_stored()

    def _series_done(self, series_uid: str) -> None:
        """A series is all in full fidelity (on its loader thread): go on with the next series not
        loaded yet, or — every image series in — the non-image objects, then ``on_complete``."""
        with self._lock:
            self._done.add(series_uid)
            if self._closed or self._completed:
                return
            pending = [e.series_uid for e in self.series if e.series_uid not in self._done]
            running = [uid for uid in pending if uid in self.loads and not self.loads[uid].handle.done.is_set()]
            nxt = next((uid for uid in pending if uid not in self.loads), None)
            complete = not pending
            if complete:
                self._completed = True
        if complete:
            self._finish()
        elif self.background and nxt is not None and not running:
            try:
                self.load(nxt)
            except Exception:  # noqa: BLE001 - the background fetch is a bonus
                logger.exception("background fetch of series %s failed", nxt)

    def _finish(self) -> None:
        store = _Store(self.store, self.client)
        try:
            for uid in self.other_series:
                for data in self.client.iter_instances(self.study_uid, uid):
                    if self._closed:
                        return
                    store.put_instance(self.study_uid, data)
        except Exception:  # noqa: BLE001 - the study stays incomplete in the cache
            logger.exception("fetching the non-image objects of study %s failed", self.study_uid)
            return
        if self.on_complete is not None:
            try:
                self.on_complete(self.study_uid)
            except Exception:  # noqa: BLE001 - bookkeeping only
                logger.exception("marking study %s complete in the cache failed", self.study_uid)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        for load in list(self.loads.values()):
            load.handle.cancel()
        super().close()


def prepare_remote(client: Any, study_uid: str) -> dict[str, Any]:
    """What opening a remote study asks first (blocking, run it off the GUI thread): the study's
    QIDO-RS row (``"study"``) and its series' rows (``"series"``)."""
    rows = client.search_studies({"StudyInstanceUID": study_uid}, limit=1)
    if not rows:
        raise LookupError(f"the source has no study {study_uid}")
    return {"study": rows[0], "series": list(client.search_series(study_uid))}


class _Store:
    """``put_instance`` of the cache (``RemoteCache`` takes the source's name too), or ``ingest``
    into a plain cache archive; None: nothing kept.  ``after()`` runs once an instance is stored."""

    def __init__(self, store: Any, client: Any, after: Callable[[], None] | None = None) -> None:
        self.store = store
        self.source = str(getattr(getattr(client, "source", None), "name", "") or "")
        self.after = after

    def put_instance(self, study: str, data: bytes) -> None:
        if self.store is None:
            return
        put = getattr(self.store, "put_instance", None)
        if put is None:
            self.store.ingest(data, origin="dicomweb")
        else:
            try:
                put(study, data, source=self.source)
            except TypeError:
                put(study, data)
        if self.after is not None:
            self.after()


def install_lossy_guard(viewer: Any) -> QAction:
    """The viewer's checkable "Allow measuring lossy images" action (off: measuring tools are refused
    on lossy pixels); in its toolbar and its context menu."""
    action = QAction("Allow measuring lossy images", viewer)
    action.setObjectName("allowLossyMeasure")
    action.setCheckable(True)
    action.setChecked(bool(getattr(viewer.model, "allow_lossy", False)))
    action.setToolTip("Measurements and pixel values on lossy first renditions are approximate; "
                      "they are refused until full fidelity arrives unless this is on")  # fmt: skip

    def toggled(on: bool) -> None:
        viewer.model.allow_lossy = on
        for i in range(len(viewer.model.viewports)):
            try:
                w = viewer.viewport_widget(i)
            except IndexError:
                continue
            w.canvas.update() if hasattr(w, "canvas") else w.update()

    action.toggled.connect(toggled)
    viewer.addAction(action)
    toolbar = getattr(viewer, "toolbar", None)
    if toolbar is not None and hasattr(toolbar, "addAction"):
        toolbar.addAction(action)
    viewer.actions_by_name["allow_lossy"] = action
    return action


def open_progressive(client: Any, study_uid: str, *, archive: Any, store: Any = None,
                     data_dir: str | Path | None = None, force: str | None = None,
                     on_complete: Callable[[str], None] | None = None, workers: int = 4,
                     stride: int | None = None, prepared: dict[str, Any] | None = None, full_syntax: str | None = None,
                     **viewer_kwargs: Any) -> Any:  # fmt: skip
    """A :class:`StudyViewer` of a remote study, streamed progressively (call its ``open()``).

    *archive* is the local archive the viewer keeps its own objects with (the cache's);
    *store* takes the full-fidelity instances (``put_instance``).
    """
    from hilum.ui.viewer.viewer_widget import StudyViewer

    viewer = StudyViewer(archive, study_uid, data_dir=data_dir, **viewer_kwargs)
    session = RemoteStudySession(client, study_uid, archive=archive, store=store, cache=viewer.session.cache,
                                 force=force, workers=workers, stride=stride, on_complete=on_complete,
                                 prepared=prepared, full_syntax=full_syntax)  # fmt: skip
    viewer.session = session
    viewer.sessions[study_uid] = session
    viewer.destroyed.connect(lambda *_a: session.close())  # background series stop with the tab
    _defer_priors(viewer, session)
    _remote_thumbnails(viewer, session)
    install_lossy_guard(viewer)
    return viewer


class _StoredBridge(QObject):
    stored = Signal()


def _defer_priors(viewer: Any, session: RemoteStudySession) -> None:
    """The priors search reads the study's patient from the cache archive: it starts once the first
    instance is there (before, it would say the study is unknown)."""
    start = viewer._start_priors
    bridge = _StoredBridge(viewer)
    bridge.stored.connect(start)

    def later() -> None:
        if session.first_stored.is_set():
            start()
            return
        viewer.priors_panel.set_priors([], searching=True)

        def emit() -> None:  # on a loader thread
            try:
                bridge.stored.emit()
            except RuntimeError:  # the viewer went meanwhile
                pass

        session.on_first_stored = emit

    viewer._start_priors = later


def _remote_thumbnails(viewer: Any, session: RemoteStudySession) -> None:
    """The series strip's thumbnails from the source (WADO-RS series ``/thumbnail``, a few KB each,
    off the GUI thread) once :meth:`StudyViewer.open` has listed the series: there are no local
    files to make them from yet."""
    open_viewer = viewer.open
    strip = viewer.strip
    size = strip.iconSize()

    def work(uids: list[str]) -> None:
        from PIL import Image

        for uid in uids:
            if session._closed:
                return
            try:
                data = session.client.rendered(session.study_uid, uid, thumbnail=True, media_type="image/png",
                                               viewport=(size.width(), size.height()))  # fmt: skip
                img = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
            except Exception as exc:  # noqa: BLE001 - a thumbnail is never worth an error
                logger.debug("no thumbnail of remote series %s: %s", uid, exc)
                continue
            try:
                strip._bridge.thumbnail.emit(uid, img)
            except RuntimeError:  # the viewer went meanwhile
                return

    def opened() -> None:
        open_viewer()
        uids = [e.series_uid for e in session.series]
        if uids:
            threading.Thread(target=work, args=(uids,), name="hilum-remote-thumbnails", daemon=True).start()

    viewer.open = opened


def lossy_slices(volume: Any) -> int:
    """How many slices of *volume* still hold lossy pixels (0 for a volume that never had any)."""
    return int(volume.lossy.sum()) if isinstance(volume, ProgressiveVolume) else 0
