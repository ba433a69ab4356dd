"""Workstation: "Send anonymised to…" and "Export to CD/USB…" for the study selected in the browser.

Both are File-menu actions with shortcuts (Ctrl+Shift+N, Ctrl+Shift+X) and entries of the study
browser's context menu.  A dialog takes the options (peer or output, PS3.15 E.3 options, project,
web page on the medium); the work runs on the window's task pool (the GUI never waits) with a
cancellable progress dialog, through the same functions as ``hilum anonymize`` and ``hilum
export-media`` (:mod:`hilum.archive.deid_store`, :mod:`hilum.archive.media`); an error is one
sentence in a message box.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QProgressDialog,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from hilum.dicom.deid import DeidResult, Options
from hilum.ui.icons import icon
from hilum.ui.tasks import Job

if TYPE_CHECKING:
    from hilum.ui.main_window import MainWindow

log = logging.getLogger(__name__)

SEND_SHORTCUT = "Ctrl+Shift+N"
EXPORT_SHORTCUT = "Ctrl+Shift+X"


class _OptionsBox(QWidget):
    """The PS3.15 E.3 options and the project name."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.dates = QCheckBox("Keep intervals between dates (dates shifted per patient)")
        self.dates.setObjectName("deidDates")
        self.device = QCheckBox("Keep device identity (serial numbers, station)")
        self.device.setObjectName("deidDevice")
        self.descriptors = QCheckBox("Keep descriptions, cleaned of identifiers")
        self.descriptors.setObjectName("deidDescriptors")
        self.pixels = QCheckBox("Black out burnt-in text (pixel rules)")
        self.pixels.setObjectName("deidPixels")
        self.project = QLineEdit()
        self.project.setObjectName("deidProject")
        self.project.setPlaceholderText("optional: pseudonyms differ per project")
        for box in (self.dates, self.device, self.descriptors, self.pixels):
            form.addRow(box)
        form.addRow("&Project:", self.project)

    def options(self) -> Options:
        return Options(retain_dates=self.dates.isChecked(), retain_device=self.device.isChecked(),
                       clean_descriptors=self.descriptors.isChecked(), clean_pixels=self.pixels.isChecked())  # fmt: skip


class SendAnonymisedDialog(QDialog):
    """Peer, options and project for "Send anonymised to…"."""

    def __init__(self, peers: list[tuple[str, str]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sendAnonymisedDialog")
        self.setWindowTitle("Send anonymised to…")
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.peer = QComboBox()
        self.peer.setObjectName("deidPeer")
        for name, label in peers:
            self.peer.addItem(label, name)
        form.addRow("&Peer:", self.peer)
        layout.addLayout(form)
        self.options_box = _OptionsBox(self)
        layout.addWidget(self.options_box)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("&Send")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)


class ExportMediaDialog(QDialog):
    """Output (folder, zip, ISO), web page, de-identification for "Export to CD/USB…"."""

    def __init__(self, default_dir: Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("exportMediaDialog")
        self.setWindowTitle("Export to CD/USB…")
        layout = QVBoxLayout(self)
        kinds = QHBoxLayout()
        self.as_folder = QRadioButton("&Folder (USB stick)")
        self.as_zip = QRadioButton("&ZIP file")
        self.as_iso = QRadioButton("&ISO image (CD/DVD)")
        self.as_iso.setChecked(True)
        for w, name in ((self.as_folder, "mediaFolder"), (self.as_zip, "mediaZip"), (self.as_iso, "mediaIso")):
            w.setObjectName(name)
            kinds.addWidget(w)
            w.toggled.connect(self._kind_changed)
        layout.addLayout(kinds)
        row = QHBoxLayout()
        self.path = QLineEdit(str(default_dir / "hilum.iso"))
        self.path.setObjectName("mediaPath")
        browse = QPushButton("&Browse…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        layout.addLayout(row)
        self.viewer = QCheckBox("Add a &web page listing the contents (INDEX.HTM, AUTORUN.INF)")
        self.viewer.setObjectName("mediaViewer")
        self.viewer.setChecked(True)
        self.anonymise = QCheckBox("&Anonymise (PS3.15 Basic Profile)")
        self.anonymise.setObjectName("mediaAnonymise")
        layout.addWidget(self.viewer)
        layout.addWidget(self.anonymise)
        self.options_box = _OptionsBox(self)
        self.options_box.setEnabled(False)
        self.anonymise.toggled.connect(self.options_box.setEnabled)
        layout.addWidget(self.options_box)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("&Export")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _kind_changed(self) -> None:
        p = Path(self.path.text() or "hilum")
        base = p.with_suffix("") if p.suffix.lower() in (".zip", ".iso") else p
        suffix = ".zip" if self.as_zip.isChecked() else ".iso" if self.as_iso.isChecked() else ""
        self.path.setText(str(base.with_suffix(suffix) if suffix else base))

    def _browse(self) -> None:
        if self.as_folder.isChecked():
            chosen = QFileDialog.getExistingDirectory(self, "Export to a folder")
        else:
            chosen, _ = QFileDialog.getSaveFileName(self, "Export to a file", self.path.text())
        if chosen:
            self.path.setText(chosen)


class DeidMediaController(QObject):
    """Owns the two actions, their dialogs and the running job (one at a time)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.job: Job | None = None
        self.progress: QProgressDialog | None = None
        self.last_result: Any = None  # MediaReport or a send summary (tests and the status bar)
        self.last_error: str = ""

    # -- actions --------------------------------------------------------------------------------------

    def send_dialog(self) -> SendAnonymisedDialog | None:
        study = self.window.browser.selected_study_uid()
        if not study:
            self._error("Select a study in the browser first.")
            return None
        peers = [(name, f"{name} ({p.aet}@{p.host}:{p.port})") for name, p in self.window.config.peers.items()
                 if p.may_store]  # fmt: skip
        if not peers:
            self._error("No DICOM peer that may receive studies is configured in hilum.toml.")
            return None
        dlg = SendAnonymisedDialog(peers, self.window)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.accepted.connect(lambda: self.send(study, str(dlg.peer.currentData()), dlg.options_box.options(),
                                               dlg.options_box.project.text().strip()))  # fmt: skip
        dlg.open()
        return dlg

    def export_dialog(self) -> ExportMediaDialog | None:
        study = self.window.browser.selected_study_uid()
        if not study:
            self._error("Select a study in the browser first.")
            return None
        dlg = ExportMediaDialog(Path.home(), self.window)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.accepted.connect(lambda: self.export(
            study, Path(dlg.path.text().strip()), viewer=dlg.viewer.isChecked(),
            options=dlg.options_box.options() if dlg.anonymise.isChecked() else None,
            project=dlg.options_box.project.text().strip()))  # fmt: skip
        dlg.open()
        return dlg

    # -- the work (off the GUI thread) ---------------------------------------------------------------------

    def send(self, study_uid: str, peer_name: str, options: Options, project: str = "") -> Job | None:
        from hilum.archive.deid_store import DeidStore, audit_export, deidentified
        from hilum.dimse.scu import peer_target, send

        archive, config = self.window.archive, self.window.config
        peer = config.peers[peer_name]

        def work(job: Job) -> dict[str, Any]:
            store = DeidStore.from_config(archive, config)
            deid = store.deidentifier(options, project=project)
            with tempfile.TemporaryDirectory(prefix="hilum-anon-") as tmp:
                files: list[Path] = []
                results: list[DeidResult] = []
                for data, result in deidentified(archive, [study_uid], deid, store=store, cancel=job.cancel_event,
                                                 progress=lambda d, t: job.report(d, 2 * t, "Anonymising…")):  # fmt: skip
                    path = Path(tmp) / f"{len(files):06d}.dcm"
                    path.write_bytes(data)
                    files.append(path)
                    results.append(result)
                if job.cancelled:
                    return {"cancelled": True, "sent": 0}
                total = len(files)
                sent = send(peer_target(config, peer), files, cancel=job.cancel_event,
                            progress=lambda item: job.report(total + 1, 2 * total, f"Sending to {peer_name}…"))  # fmt: skip
            audit_export(archive, [study_uid], destination=f"{peer.aet}@{peer.host}:{peer.port}", instances=sent.sent,
                         anonymised=True, outcome=4 if sent.failed else 0)  # fmt: skip
            return {"cancelled": job.cancelled, "sent": sent.sent, "failed": sent.failed, "peer": peer_name,
                    "patient": results[0].patient_id if results else ""}  # fmt: skip

        return self._run("Send anonymised", work)

    def export(self, study_uid: str, out: Path, *, viewer: bool = True, options: Options | None = None,
               project: str = "") -> Job | None:  # fmt: skip
        from hilum.archive.deid_store import DeidStore
        from hilum.archive.media import export_media

        archive, config = self.window.archive, self.window.config

        def work(job: Job) -> Any:
            store = deid = None
            if options is not None:
                store = DeidStore.from_config(archive, config)
                deid = store.deidentifier(options, project=project)
            return export_media(archive, [study_uid], out, viewer=viewer, deid=deid, store=store,
                                progress=lambda d, t: job.report(d, t, "Writing the medium…"), cancel=job.cancel_event)  # fmt: skip

        return self._run("Export to CD/USB", work)

    def _run(self, title: str, work: Any) -> Job | None:
        if self.job is not None:
            self._error("Another export is running; wait for it or cancel it.")
            return None
        job = self.job = Job(self)
        dlg = self.progress = QProgressDialog(title + "…", "Cancel", 0, 0, self.window)
        dlg.setObjectName("deidMediaProgress")
        dlg.setWindowTitle(title)
        dlg.setMinimumDuration(0)
        dlg.setAutoClose(False)
        dlg.setAutoReset(False)
        dlg.canceled.connect(job.cancel)

        def progressed(done: int, total: int, label: str) -> None:
            if self.progress is dlg:
                dlg.setMaximum(max(total, 0))
                dlg.setValue(min(done, total) if total else 0)
                if label:
                    dlg.setLabelText(label)

        job.progressed.connect(progressed)
        dlg.show()
        self.window.tasks.submit(lambda: work(job), on_done=lambda r: self._done(title, r),
                                 on_error=lambda exc: self._failed(title, exc))  # fmt: skip
        return job

    def _finish(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress.deleteLater()
        self.progress = None
        self.job = None

    def _done(self, title: str, result: Any) -> None:
        self._finish()
        self.last_result, self.last_error = result, ""
        if isinstance(result, dict):
            text = "Cancelled." if result.get("cancelled") else (
                f"Sent {result['sent']} anonymised instances to {result['peer']}"
                + (f" ({result['failed']} failed)" if result.get("failed") else "") + ".")  # fmt: skip
        else:
            text = "Cancelled." if result.cancelled else (
                f"Wrote {result.instances} instances to {result.out}" + (" (anonymised)." if result.anonymised else "."))  # fmt: skip
        self.window.statusBar().showMessage(f"{title}: {text}", 10_000)

    def _failed(self, title: str, exc: BaseException) -> None:
        self._finish()
        log.warning("%s failed: %s", title, exc)
        self._error(f"{title} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")

    def _error(self, text: str) -> None:
        self.last_error = text
        box = QMessageBox(QMessageBox.Icon.Warning, "Hilum", text, QMessageBox.StandardButton.Ok, self.window)
        box.setObjectName("deidMediaError")
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()


def install(window: MainWindow) -> DeidMediaController:
    """Add the File-menu actions, shortcuts, icons, tooltips, context-menu entries and Help lines."""
    ctl = DeidMediaController(window)
    before = getattr(window, "quit_action", None)  # the two go just above Quit, separated from it
    actions: list[QAction] = []
    for text, slot, keys, tip, name, glyph in (
        ("Send &anonymised to…", ctl.send_dialog, SEND_SHORTCUT,
         "Send a de-identified copy of the selected study to a DICOM peer (PS3.15 Basic Profile)",
         "sendAnonymisedAction", "mdi6.incognito"),
        ("E&xport to CD/USB…", ctl.export_dialog, EXPORT_SHORTCUT,
         "Write the selected study as DICOM media with a DICOMDIR: a folder, a ZIP or an ISO image",
         "exportMediaAction", "mdi6.disc"),
    ):  # fmt: skip
        act = QAction(icon(glyph, text[0]), text, window)
        act.setShortcut(QKeySequence(keys))
        act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        act.setToolTip(tip)
        act.setStatusTip(tip)
        act.setObjectName(name)
        act.triggered.connect(lambda _checked=False, s=slot: s())
        if before is not None:
            window.file_menu.insertAction(before, act)
        else:
            window.file_menu.addAction(act)
        window.addAction(act)
        window.add_shortcut_help("Study browser", keys, text.replace("&", "").rstrip("…") + " (the selected study)")
        actions.append(act)
    if before is not None:
        window.file_menu.insertSeparator(before)
    window.send_anonymised_action, window.export_media_action = actions  # type: ignore[attr-defined]
    extra = getattr(window.browser, "extra_study_actions", None)
    if extra is not None:
        extra.extend(actions)
    return ctl
