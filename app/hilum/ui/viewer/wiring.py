"""Wire the viewer into the workstation's main window.

:func:`install_viewer` connects the main window's ``studyOpenRequested`` /
``seriesOpenRequested`` signals (double-click or Enter in the study browser)
to a :class:`ViewerController`, which opens each study in a
:class:`~hilum.ui.viewer.viewer_widget.StudyViewer` tab (or brings its tab
forward), and lists the viewer's shortcuts under Help → Keyboard shortcuts.
All viewer tabs share one volume cache, so memory stays bounded, and one
process pool for decoding (:func:`hilum.dicom.stack_load.decoder_pool`), which
the controller owns: started (and warmed) with the window, shut down when the
application quits.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject

from hilum.dicom.stack_load import decoder_pool, warm_pool
from hilum.ui.viewer.shortcuts import help_lines
from hilum.ui.viewer.study import VolumeCache
from hilum.ui.viewer.viewer_widget import StudyViewer

__all__ = ["ViewerController", "install_viewer"]

logger = logging.getLogger(__name__)


def _tab_title(archive: Any, study_uid: str) -> tuple[str, str]:
    try:
        rows = archive.query("STUDY", {"StudyInstanceUID": study_uid}, limit=1)
    except Exception:  # noqa: BLE001 - a title is not worth failing over
        rows = []
    if not rows:
        return "Study", study_uid
    row = rows[0]
    name = str(row.get("PatientName", "") or "").split("^")[0] or "Study"
    date = str(row.get("StudyDate", "") or "")
    date = f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 else date
    tip = " · ".join(x for x in (str(row.get("PatientName", "")), str(row.get("PatientID", "")), date,
                                 str(row.get("StudyDescription", "") or "")) if x)  # fmt: skip
    return f"{name} {date}".strip(), tip


class ViewerController(QObject):
    """Opens studies from the main window in viewer tabs; owns the viewers' decoder process pool."""

    def __init__(self, window: Any, *, executor: str = "auto", cache: VolumeCache | None = None,
                 pool: Executor | None = None) -> None:  # fmt: skip
        super().__init__(window)
        self.window = window
        self.executor = executor
        self.cache = cache or VolumeCache()
        self.pool = pool
        self.warmup: threading.Thread | None = None
        """The background warm-up (:func:`warm_up`) started by :func:`install_viewer`."""

    def shutdown(self) -> None:
        """Stop the decoder processes (loads still running fall back to threads)."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def viewer_for(self, study_uid: str) -> StudyViewer | None:
        for w in self.window.workspace_tabs():
            if isinstance(w, StudyViewer) and w.study_uid == study_uid:
                return w
        return None

    def open_study(self, study_uid: str) -> StudyViewer:
        viewer = self.viewer_for(study_uid)
        if viewer is not None:
            self.window.tabs.setCurrentWidget(viewer)
            return viewer
        data_dir = getattr(getattr(self.window, "config", None), "data_dir", None)
        viewer = StudyViewer(self.window.archive, study_uid, data_dir=data_dir, executor=self.executor,
                             cache=self.cache, pool=self.pool)  # fmt: skip
        title, tip = _tab_title(self.window.archive, study_uid)
        self.window.add_workspace_tab(viewer, title, tooltip=tip)
        viewer.open()
        viewer.setFocus()
        audit = getattr(self.window.archive, "audit_study_opened", None)
        if audit is not None:  # issue 21a: "DICOM Instances Accessed" (queued: the GUI does not wait)
            from hilum.archive.audit import workstation_user

            audit(study_uid, user=workstation_user(getattr(self.window, "config", None)))
        return viewer

    def open_series(self, study_uid: str, series_uid: str) -> StudyViewer:
        viewer = self.open_study(study_uid)
        if series_uid in {e.series_uid for e in viewer.session.series}:
            viewer.show_series(series_uid, viewer.model.active)
        return viewer


PRELOAD_MODULES = ("hilum.ui.mpr.mpr_widget",)
"""What the MPR and 3D windows need (VTK): imported in the background after the decoder pool is
warm, so the reader's first MPR/3D click does not import it on the GUI thread (a 0.12 s import
that stalled the event loop ~0.3 s: bench/viewer/workstation.py)."""


def warm_up(pool: Executor | None) -> threading.Thread:
    """In the background, one thing after the other (both at once on two cores made the GIL-held
    parts of each longer): the decoder pool's workers started and their code loaded (what the
    first study needs), then the MPR/3D modules imported under the VTK lock
    (:func:`hilum.render.gl.import_vtk`: an import registers VTK's object factories, which a
    render on another thread reads)."""

    def run() -> None:
        if pool is not None:
            warm_pool(pool).join()
        try:
            from hilum.render.gl import import_vtk

            import_vtk(*PRELOAD_MODULES)
        except Exception as exc:  # noqa: BLE001 - the first MPR/3D window imports them then
            logger.warning("cannot preload the MPR/3D modules: %s", exc)

    # not a daemon: an exit during the VTK import waits for it instead of finalizing under it
    thread = threading.Thread(target=run, name="hilum-viewer-warmup")
    thread.start()
    return thread


def install_viewer(window: Any, **kwargs: Any) -> ViewerController:
    """Make *window* (the workstation's ``MainWindow``) open studies in viewer tabs.

    The controller gets a decoder process pool, warmed in the background (then the
    MPR/3D modules are imported there: :func:`warm_up`), and shuts it down when the
    application quits or the window goes.
    """
    warm = "pool" not in kwargs
    if warm:
        kwargs["pool"] = decoder_pool()
    controller = ViewerController(window, **kwargs)
    controller.warmup = warm_up(kwargs["pool"] if warm else None)
    app = QCoreApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(controller.shutdown)
    window.destroyed.connect(controller.shutdown)
    window.studyOpenRequested.connect(controller.open_study)
    window.seriesOpenRequested.connect(controller.open_series)
    add_help = getattr(window, "add_shortcut_help", None)
    if add_help is not None:
        for section, keys, text in help_lines():
            add_help(section, keys, text)
    window.viewer_controller = controller
    return controller
