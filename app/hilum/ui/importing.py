"""Import into the local archive from the workstation: files, folders, demo studies.

Every file goes through the archive's one ingest call
(:meth:`hilum.archive.Archive.ingest_many`, DESIGN.md "One way in") on a
worker thread; a cancellable :class:`~PySide6.QtWidgets.QProgressDialog`
shows progress, and a summary (imported, duplicates, rejected with the first
reasons) ends it.  Finding files (folders, DICOMDIR, zip) is
:mod:`hilum.archive.importer`'s job, shared with ``hilum import``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QMessageBox, QProgressDialog, QWidget

from hilum.archive import Archive, IngestResult
from hilum.archive.importer import ImportReport
from hilum.ui.study_search import format_size
from hilum.ui.tasks import Job, TaskRunner

log = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    """What an import did, counted from the ingest results."""

    total: int = 0
    imported: int = 0
    replaced: int = 0
    duplicates: int = 0
    rejected: int = 0
    cancelled: int = 0
    bytes: int = 0
    seconds: float = 0.0
    reasons: list[tuple[str, str]] = field(default_factory=list)  # (source, reason) of rejections
    reason_counts: Counter[str] = field(default_factory=Counter)
    skipped: int = 0  # files a folder walk passed over as plainly not DICOM (README, DICOMDIR, ...)
    error: str | None = None  # the job itself failed (e.g. the demo generator)
    study_uids: list[str] = field(default_factory=list)  # studies of the files imported or already held, in order

    @classmethod
    def from_report(cls, report: ImportReport) -> ImportSummary:
        """From :func:`hilum.archive.importer.import_paths`' report."""
        s = cls.from_results(report.results, report.seconds)
        s.skipped = len(report.skipped)
        return s

    @classmethod
    def from_results(cls, results: Sequence[IngestResult], seconds: float = 0.0) -> ImportSummary:
        s = cls(total=len(results), seconds=seconds)
        for r in results:
            if r.ok and r.study_instance_uid and r.study_instance_uid not in s.study_uids:
                s.study_uids.append(r.study_instance_uid)
            if r.status == "stored":
                s.imported += 1
                s.bytes += r.size
            elif r.status == "replaced":
                s.replaced += 1
                s.bytes += r.size
            elif r.status == "duplicate":
                s.duplicates += 1
            elif r.code == "cancelled":
                s.cancelled += 1
            else:
                s.rejected += 1
                s.reason_counts[r.code or "rejected"] += 1
                s.reasons.append((_short_source(r.source), r.reason or "rejected"))
        return s

    @property
    def was_cancelled(self) -> bool:
        return self.cancelled > 0

    def headline(self) -> str:
        """One line for the status bar."""
        if self.error:
            return f"Import failed: {self.error}"
        parts = [f"{self.imported} imported"]
        if self.replaced:
            parts.append(f"{self.replaced} replaced")
        parts.append(f"{self.duplicates} duplicate{'s' if self.duplicates != 1 else ''}")
        parts.append(f"{self.rejected} rejected")
        if self.skipped:
            parts.append(f"{self.skipped} skipped (not DICOM)")
        if self.cancelled:
            parts.append(f"{self.cancelled} not done (cancelled)")
        return ", ".join(parts)

    def text(self, max_reasons: int = 5) -> str:
        """The summary dialog's text: counts, then the first few rejection reasons."""
        if self.error:
            return self.headline()
        lines = [self.headline() + f" — {format_size(self.bytes)} in {self.seconds:.1f} s."]
        if self.reasons:
            lines.append("")
            lines.append("Rejected:")
            for source, reason in self.reasons[:max_reasons]:
                lines.append(f"  • {source}: {reason}")
            if len(self.reasons) > max_reasons:
                lines.append(f"  … and {len(self.reasons) - max_reasons} more")
        return "\n".join(lines)


def _short_source(source: str | None) -> str:
    """A rejection's source as the summary shows it: the file name (``a.zip!x/y.dcm`` → ``a.zip!y.dcm``)."""
    if not source:
        return "(data)"
    outer, sep, member = source.partition("!")
    name = Path(outer).name
    return f"{name}!{PurePosixPath(member).name}" if sep else name


def ingest_paths(
    archive: Archive, paths: Iterable[str | os.PathLike[str]], job: Job | None = None, *, origin: str = "import"
) -> ImportSummary:
    """Import files, folders, DICOMDIRs and zips (worker thread); progress and cancel through ``job``.

    Finding what to import is :func:`hilum.archive.importer.import_paths`'
    business (the same rules as ``hilum import``); each instance goes
    through the archive's one ingest call.
    """
    from hilum.archive.importer import import_paths

    if job is not None:
        job.report(0, 0, "Looking for files…", force=True)

    def progress(done: int, total: int) -> None:
        if job is not None:
            job.report(done, total, f"Importing {total} file{'s' if total != 1 else ''}…")

    report = import_paths(
        archive, list(paths), origin=origin, progress=progress, cancel=job.cancel_event if job is not None else None
    )
    summary = ImportSummary.from_report(report)
    log.info("import: %s", summary.headline())
    return summary


def ingest_demo(archive: Archive, job: Job | None = None, *, small: bool = False) -> ImportSummary:
    """Generate the demo studies into a temporary folder and import them (worker thread).

    Uses :func:`hilum.dicom.generator.write_demo`; the temporary files are
    removed afterwards (the archive keeps its own copies).
    """
    from hilum.dicom.generator import write_demo

    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="hilum-demo-"))
    try:
        if job is not None:
            job.report(0, 0, "Generating demo studies…", force=True)
        files = write_demo(tmp, small=small)
        if job is not None and job.cancelled:
            return ImportSummary(total=len(files), cancelled=len(files), seconds=time.perf_counter() - start)
        summary = ingest_paths(archive, [tmp], job, origin="demo")
        summary.seconds = time.perf_counter() - start
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class ImportController(QObject):
    """Runs one import at a time with a progress dialog and a summary box.

    ``finished`` carries the :class:`ImportSummary`; :attr:`summary_box` is
    the (non-modal) message box showing it, kept so callers and tests can
    close it.
    """

    started = Signal()
    finished = Signal(object)  # ImportSummary

    def __init__(self, archive: Archive, runner: TaskRunner, parent_widget: QWidget):
        super().__init__(parent_widget)
        self._archive = archive
        self._runner = runner
        self._parent = parent_widget
        self._job: Job | None = None
        self.dialog: QProgressDialog | None = None
        self.summary_box: QMessageBox | None = None
        self.last_summary: ImportSummary | None = None
        self.show_summary = True

    @property
    def running(self) -> bool:
        return self._job is not None

    def import_paths(self, paths: Sequence[str | os.PathLike[str]], title: str = "Importing") -> bool:
        """Import files and folders; False if another import is still running."""
        return self._start(title, lambda job: ingest_paths(self._archive, list(paths), job))

    def import_demo(self, *, small: bool = False) -> bool:
        """Generate and import the demo studies; False if an import is running."""
        return self._start("Loading demo studies", lambda job: ingest_demo(self._archive, job, small=small))

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def _start(self, title: str, work: Callable[[Job], ImportSummary]) -> bool:
        if self._job is not None:
            return False
        job = Job(self)
        self._job = job
        dlg = QProgressDialog(self._parent)
        dlg.setWindowTitle(title)
        dlg.setLabelText("Starting…")
        dlg.setCancelButtonText("Cancel")
        dlg.setRange(0, 0)
        dlg.setMinimumDuration(0)
        dlg.setMinimumWidth(420)
        dlg.setAutoClose(False)
        dlg.setAutoReset(False)
        dlg.setWindowModality(Qt.WindowModality.WindowModal)
        dlg.canceled.connect(self._on_cancel_clicked)
        job.progressed.connect(self._on_progress)
        self.dialog = dlg
        dlg.show()
        self.started.emit()
        self._runner.submit(work, job, on_done=self._on_done, on_error=self._on_error)
        return True

    def _on_cancel_clicked(self) -> None:
        if self._job is not None:
            self._job.cancel()
            if self.dialog is not None:
                self.dialog.setLabelText("Cancelling…")

    def _on_progress(self, done: int, total: int, label: str) -> None:
        dlg = self.dialog
        if dlg is None:
            return
        if total > 0:
            if dlg.maximum() != total:
                dlg.setRange(0, total)
            dlg.setValue(done)
            if self._job is not None and not self._job.cancelled:
                dlg.setLabelText(f"{label}\n{done} of {total}")
        else:
            dlg.setRange(0, 0)
            dlg.setLabelText(label)

    def _on_error(self, exc: BaseException) -> None:
        log.error("import failed", exc_info=exc)
        self._finish(ImportSummary(error=str(exc) or type(exc).__name__))

    def _on_done(self, summary: Any) -> None:
        self._finish(summary)

    def _finish(self, summary: ImportSummary) -> None:
        self._job = None
        if self.dialog is not None:
            self.dialog.canceled.disconnect(self._on_cancel_clicked)
            self.dialog.close()
            self.dialog.deleteLater()
            self.dialog = None
        self.last_summary = summary
        if self.show_summary:
            self._show_summary(summary)
        self.finished.emit(summary)

    def _show_summary(self, summary: ImportSummary) -> None:
        if self.summary_box is not None:
            self.summary_box.close()
        icon = QMessageBox.Icon.Warning if (summary.error or summary.rejected) else QMessageBox.Icon.Information
        box = QMessageBox(
            icon,
            "Import finished" if not summary.error else "Import failed",
            summary.text(),
            QMessageBox.StandardButton.Ok,
            self._parent,
        )
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setWindowModality(Qt.WindowModality.NonModal)
        box.destroyed.connect(partial(self._forget_box, box))
        self.summary_box = box
        box.show()

    def _forget_box(self, box: QMessageBox, *_: object) -> None:
        if self.summary_box is box:
            self.summary_box = None

    def shutdown(self) -> None:
        """Cancel a running import (the window is closing)."""
        self.cancel()
