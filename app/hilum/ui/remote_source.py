"""Remote DICOMweb servers and DICOM peers as study sources in the study browser.

A row of widgets above the browser (:class:`SourceSelector`) picks where the
browser searches: the local archive, a DICOMweb server (PS3.18) added
with :class:`SourceDialog` (URL, user and password or a token, TLS
verification), or a DICOM peer configured in ``hilum.toml``'s ``[peers]``
(DIMSE, :mod:`hilum.ui.dimse_source`).  With a DICOMweb source selected:

* the browser's searches go to the server as QIDO-RS through
  :class:`hilum.dicomweb.client.RemoteArchiveView` — same query call, same rows;
* opening a study (double-click, Enter) streams it with WADO-RS into the
  persistent bounded cache (:class:`hilum.dicomweb.cache.RemoteCache`,
  ``<data>/remote-cache/``, ``[remote_cache]`` in ``hilum.toml``) off the GUI
  thread, with progress in the status bar, and opens it in a viewer tab like
  a local study; a study already cached opens without asking the server; the
  study is pinned (never evicted) while its tab is open;
* a DICOMweb study not in the cache opens at once, streamed progressively
  (:mod:`hilum.ui.viewer.progressive_view`, :mod:`hilum.dicomweb.progressive`):
  a lossy first rendition of the slices the reader looks at ("LOSSY" on the
  viewport, measurements refused on it unless allowed), refined to the
  original pixels in the background, each instance into the cache as stored;
* "Keep locally" stores the selected study in the local archive through the
  one ingest call (from the cache when it is there, else fetched).

With a DICOM peer selected, searches are C-FIND (:class:`hilum.ui.dimse_source.PeerArchiveView`);
opening a study retrieves it into the local archive (C-GET, or C-MOVE to this
node, as the peer's ``retrieve`` setting says) through the transfers queue
(:mod:`hilum.ui.transfers`, progress and errors in its panel) and then opens
it like any local study; "Keep locally" retrieves without opening.  A peer
whose studies go to the remote cache (``open_into = "cache"``, the default
for a TLS peer retrieved from by C-GET: a PACS afar) opens like a DICOMweb
source instead: C-GET into the cache, pinned while open, "Keep locally" from
the cache.

The logic lives in :mod:`hilum.dicomweb.client` and :mod:`hilum.ui.dimse_source`;
this module only binds it.
Sources are saved in ``hilum.toml`` (``[dicomweb_sources.NAME]``) without
passwords, which are asked once per session.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from typing import Any

from PySide6.QtCore import QEvent, QObject, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from hilum.dicomweb.cache import RemoteCache
from hilum.dicomweb.client import (
    DicomWebClient,
    DicomWebSource,
    RemoteArchiveView,
    load_sources,
    save_sources,
)
from hilum.dimse.scu import retrieve_study
from hilum.errors import HilumError
from hilum.ui.dimse_source import PeerArchiveView, peer_target
from hilum.ui.study_search import StudySearchResult, format_person_name
from hilum.ui.tasks import Job, TaskRunner

log = logging.getLogger(__name__)

LOCAL = "Local archive"
ADD = "__add__"
PEER_PREFIX = "dimse:"
"""Combo data of a DICOM peer (``dimse:NAME``), apart from DICOMweb sources (their bare names)."""


def check_connection(source: DicomWebSource) -> str:
    """One QIDO-RS request to see that the server answers and the credentials work (blocking)."""
    client = DicomWebClient(source)
    try:
        rows = client.search_studies(limit=1)
    finally:
        client.close()
    return "Connected." + (" The server holds studies." if rows else " No studies on the server yet.")


class SourceDialog(QDialog):
    """Add (or edit) a DICOMweb source: name, base URL, credentials, TLS verification."""

    def __init__(self, runner: TaskRunner, parent: QWidget | None = None, *, source: DicomWebSource | None = None,
                 taken: set[str] | None = None):
        super().__init__(parent)
        self.setWindowTitle("DICOMweb source")
        self.setObjectName("dicomwebSourceDialog")
        self.runner = runner
        self.taken = taken or set()
        s = source or DicomWebSource(name="", url="")
        self.name_edit = QLineEdit(s.name, self)
        self.name_edit.setPlaceholderText("e.g. Clinic PACS")
        self.url_edit = QLineEdit(s.url, self)
        self.url_edit.setPlaceholderText("https://pacs.example.org/dicom-web")
        self.user_edit = QLineEdit(s.username, self)
        self.password_edit = QLineEdit(s.password, self)
        self.password_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit = QLineEdit(s.token, self)
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setPlaceholderText("instead of user and password")
        self.verify_check = QCheckBox("Verify the server's TLS certificate", self)
        self.verify_check.setChecked(s.verify_tls)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        self.test_button = QPushButton("Test connection", self)
        self.test_button.clicked.connect(self.test)

        form = QFormLayout()
        form.addRow("Name", self.name_edit)
        form.addRow("URL", self.url_edit)
        form.addRow("User", self.user_edit)
        form.addRow("Password", self.password_edit)
        form.addRow("Token", self.token_edit)
        form.addRow("", self.verify_check)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        row = QHBoxLayout()
        row.addWidget(self.test_button)
        row.addWidget(self.status, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(row)
        layout.addWidget(buttons)

    def source(self) -> DicomWebSource:
        return DicomWebSource(name=self.name_edit.text().strip(), url=self.url_edit.text().strip(),
                              username=self.user_edit.text().strip(), password=self.password_edit.text(),
                              token=self.token_edit.text().strip(), verify_tls=self.verify_check.isChecked())

    def problem(self) -> str | None:
        """Why the entered source cannot be used, or None."""
        s = self.source()
        if not s.name:
            return "Give the source a name."
        if s.name in self.taken or s.name == LOCAL:
            return f"There is already a source called {s.name!r}."
        if s.name.startswith(PEER_PREFIX):
            return f"A source name cannot start with {PEER_PREFIX!r}."
        try:
            DicomWebClient(s)
        except ValueError as exc:
            return str(exc)
        return None

    def test(self) -> None:
        problem = self.problem()
        if problem and "already" not in problem:
            self.status.setText(problem)
            return
        self.status.setText("Connecting…")
        self.test_button.setEnabled(False)
        self.runner.submit(check_connection, self.source(), on_done=self._tested, on_error=self._test_failed)

    def _tested(self, text: str) -> None:
        self.test_button.setEnabled(True)
        self.status.setText(text)

    def _test_failed(self, exc: BaseException) -> None:
        self.test_button.setEnabled(True)
        self.status.setText(f"Failed: {exc}")

    def accept(self) -> None:
        problem = self.problem()
        if problem:
            self.status.setText(problem)
            return
        super().accept()


class SourceSelector(QWidget):
    """``Source: [Local archive ▾]  [Keep locally]  [Remove]`` above the study browser."""

    sourceChosen = Signal(object)  # source name, or None for the local archive
    addRequested = Signal()
    keepRequested = Signal()
    removeRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("studySourceSelector")
        self.combo = QComboBox(self)
        self.combo.setObjectName("studySourceCombo")
        self.combo.setToolTip("Where the study browser searches: this workstation's archive, a DICOMweb server "
                              "or a DICOM peer (C-FIND)")
        self.keep_button = QPushButton("Keep locally", self)
        self.keep_button.setToolTip("Store the selected remote study in the local archive")
        self.remove_button = QPushButton("Remove source", self)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 6)
        layout.addWidget(QLabel("Source:", self))
        layout.addWidget(self.combo)
        layout.addWidget(self.keep_button)
        layout.addWidget(self.remove_button)
        layout.addStretch(1)
        self._names: list[str] = []
        self._peers: list[tuple[str, str]] = []
        self._updating = False
        self.combo.currentIndexChanged.connect(self._on_index)
        self.keep_button.clicked.connect(self.keepRequested)
        self.remove_button.clicked.connect(self._remove_clicked)
        self.set_sources([], None)

    def _remove_clicked(self) -> None:
        name = self.current()
        if name is not None:
            self.removeRequested.emit(name)

    def set_sources(self, names: list[str], current: str | None,
                    peers: list[tuple[str, str]] | None = None) -> None:
        """DICOMweb source ``names``, then DICOM ``peers`` as ``(name, label)`` (kept when None);
        ``current`` is a source name or ``dimse:`` + a peer name."""
        self._updating = True
        try:
            self._names = list(names)
            if peers is not None:
                self._peers = list(peers)
            self.combo.clear()
            self.combo.addItem(LOCAL, None)
            for n in names:
                self.combo.addItem(n, n)
            for name, label in self._peers:
                self.combo.addItem(label, PEER_PREFIX + name)
                self.combo.setItemData(self.combo.count() - 1, f"DICOM peer {name} (C-FIND, C-GET/C-MOVE)",
                                       Qt.ItemDataRole.ToolTipRole)
            self.combo.addItem("Add DICOMweb source…", ADD)
            index = self.combo.findData(current) if current is not None else 0
            self.combo.setCurrentIndex(max(index, 0))
        finally:
            self._updating = False
        self._update_buttons()

    def current(self) -> str | None:
        data = self.combo.currentData()
        return data if data not in (None, ADD) else None

    def _update_buttons(self) -> None:
        current = self.current()
        remote = current is not None
        self.keep_button.setEnabled(remote)
        # Peers live in hilum.toml's [peers] (shared with `hilum serve`): not removed from here.
        self.remove_button.setEnabled(remote and not str(current).startswith(PEER_PREFIX))

    def _on_index(self, _index: int) -> None:
        if self._updating:
            return
        data = self.combo.currentData()
        if data == ADD:
            self._updating = True
            self.combo.setCurrentIndex(0)
            self._updating = False
            self._update_buttons()
            self.sourceChosen.emit(None)
            self.addRequested.emit()
            return
        self._update_buttons()
        self.sourceChosen.emit(data)


class RemoteSourceController(QObject):
    """Binds remote sources to a workstation :class:`~hilum.ui.main_window.MainWindow`."""

    fetched = Signal(str)  # study UID now in the cache (and opened)
    kept = Signal(str, int)  # study UID, instances stored locally
    retrieved = Signal(str)  # study UID retrieved from a DICOM peer into the local archive
    progressiveOpened = Signal(object)  # the StudyViewer of a remote study being streamed
    _complete_bridge = Signal(str)  # a streamed study is all in the cache (from a loader thread)

    def __init__(self, window: Any):
        super().__init__(window)
        self.window = window
        self.sources: list[DicomWebSource] = load_sources(window.config)
        self.active: DicomWebSource | None = None
        self.client: DicomWebClient | None = None
        self.active_peer: str | None = None  # a DICOM peer's name in [peers]
        self._search_note: str | None = None  # the "Searching …" status message, until results come
        self._closed = False
        self._cache_tmp: str | None = None
        try:
            self.cache = RemoteCache.shared(window.config)  # one per data folder: the prefetch shares it
        except (HilumError, OSError) as exc:
            # e.g. encrypt = true without the cryptography package: nothing is kept across sessions
            log.error("remote cache: %s; remote studies are cached for this session only", exc)
            self._cache_tmp = tempfile.mkdtemp(prefix="hilum-remote-cache-")
            self.cache = RemoteCache(self._cache_tmp)
        self.progressive = True
        """Open remote studies not in the cache progressively (lossy first, then full fidelity, each
        full instance into the cache) instead of fetching them first."""
        self.progressive_force: str | None = None
        """``"lossy"`` / ``"lossless"``: the first pass whatever the link; None: by the measured link."""
        self.progressive_full_syntax: str | None = None
        """``"*"``: full-fidelity instances always as stored (kept byte for byte).  None (default):
        as the link says — the adaptive plan's lossless syntax (JPEG-LS/HTJ2K lossless transcoded by
        the server: about 2.5x fewer bytes; UIDs and pixels kept, the bytes kept locally differ from
        the server's file) on a measured link under 400 Mbit/s, as stored on faster ones (loopback)."""
        self._partial: set[str] = set()  # studies being streamed: not all in the cache yet
        self._complete_bridge.connect(self._on_progressive_complete)
        self.runner = TaskRunner(max_workers=2, name="hilum-remote", parent=self)
        self.selector = SourceSelector(window.browser_page)
        layout = window.browser_page.layout()
        layout.insertWidget(layout.indexOf(window.browser), self.selector)
        self.selector.set_sources([s.name for s in self.sources], None, self._peer_items())
        self.selector.sourceChosen.connect(self.select)
        self.selector.addRequested.connect(self.add_dialog)
        self.selector.keepRequested.connect(self.keep_selected)
        self.selector.removeRequested.connect(self.remove_source)
        # Opening from the browser goes through here, so remote studies are fetched first.
        browser = window.browser
        browser.openRequested.disconnect(window.open_study)
        browser.seriesOpenRequested.disconnect(window.open_series)
        browser.openRequested.connect(self.open_study)
        browser.seriesOpenRequested.connect(self.open_series)
        browser.searchFinished.connect(self._on_search_finished)
        window.installEventFilter(self)

    # ------------------------------------------------------------ sources

    def _peer_items(self) -> list[tuple[str, str]]:
        peers = getattr(self.window.config, "peers", {}) or {}
        return [(name, f"{name} (DICOM {p.aet})") for name, p in sorted(peers.items())]

    def _show_sources(self, current: str | None) -> None:
        self.selector.set_sources([s.name for s in self.sources], current, self._peer_items())

    def source(self, name: str) -> DicomWebSource:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def add_source(self, source: DicomWebSource, *, select: bool = True) -> None:
        self.sources = [s for s in self.sources if s.name != source.name] + [source]
        self._save()
        self._show_sources(source.name if select else None)
        if select:
            self.select(source.name)

    def remove_source(self, name: str) -> None:
        self.sources = [s for s in self.sources if s.name != name]
        self._save()
        self._show_sources(None)
        self.select(None)

    def _save(self) -> None:
        try:
            save_sources(self.window.config, self.sources)
        except OSError as exc:
            self._message(f"Could not save the sources to hilum.toml: {exc}")
            return
        archive = getattr(self.window, "archive", None)
        if archive is not None and hasattr(archive, "audit"):  # issue 21a: a configuration change
            from hilum.archive.audit import workstation_user

            archive.audit("Security Alert", action="U", event_type="Network Configuration",
                          user=workstation_user(self.window.config),
                          detail="DICOMweb sources in hilum.toml: " + (", ".join(s.name for s in self.sources) or "none"))

    def add_dialog(self) -> SourceDialog:
        dialog = SourceDialog(self.runner, self.window, taken={s.name for s in self.sources})
        dialog.accepted.connect(lambda: self.add_source(dialog.source()))
        dialog.open()
        return dialog

    def select(self, name: str | None) -> None:
        """Search ``name``'s server from now on (None: the local archive; ``dimse:PEER``: a DICOM peer)."""
        browser = self.window.browser
        if self.client is not None:
            self.client.close_all()
        self._end_search_note()
        self.active_peer = None
        if name is None:
            self.active, self.client = None, None
            browser.logic.archive = self.window.archive
            self._show_sources(None)
        elif name.startswith(PEER_PREFIX):
            peer_name = name[len(PEER_PREFIX):]
            peer = self.window.config.peers.get(peer_name)
            if peer is None:
                self._message(f"No DICOM peer called {peer_name!r} in hilum.toml.")
                self.select(None)
                return
            self.active, self.client = None, None
            self.active_peer = peer_name
            target = peer_target(self.window.config, peer)
            browser.logic.archive = PeerArchiveView(target, peer_name)
            self._show_sources(name)
            self._searching(f"Searching {peer_name} ({target}) …")
        else:
            source = self.source(name)
            if source.username and not source.password and not source.token:
                password, ok = QInputDialog.getText(self.window, "DICOMweb", f"Password of {source.username} "
                                                    f"on {source.name}:", QLineEdit.EchoMode.Password)
                if not ok:
                    self.select(None)
                    return
                source.password = password
            self.active, self.client = source, DicomWebClient(source)
            browser.logic.archive = RemoteArchiveView(self.client)
            self._show_sources(name)
            self._searching(f"Searching {source.name} ({source.url}) …")
        browser.search()

    def source_name(self) -> str:
        """The name of the source the browser shows (peer, DICOMweb source, or the local archive)."""
        if self.active_peer is not None:
            return self.active_peer
        return self.active.name if self.active is not None else LOCAL

    def _searching(self, text: str) -> None:
        self._search_note = text
        self._message(text)

    def _end_search_note(self) -> None:
        note, self._search_note = self._search_note, None
        bar = self.window.statusBar()
        if note is not None and bar.currentMessage() == note:
            bar.clearMessage()

    def _on_search_finished(self, result: StudySearchResult) -> None:
        """Replace "Searching …" with what the search found (or why it failed)."""
        note, self._search_note = self._search_note, None
        if note is None or self.window.statusBar().currentMessage() != note:
            return  # nothing said, or something newer was said since
        name = self.source_name()
        if result.error:
            self._message(f"Search on {name} failed: {result.error}")
        else:
            n = len(result.rows)
            more = f" (first {n:,} of {result.total:,})" if result.truncated else ""
            self._message(f"{n:,} stud{'y' if n == 1 else 'ies'} found on {name}{more}.")

    # ------------------------------------------------------------ opening and keeping

    def peer_uses_cache(self, name: str | None = None) -> bool:
        """Whether studies opened from DICOM peer ``name`` (default: the selected one) go into the remote
        cache rather than the archive: ``[peers.X] open_into``; by default a TLS peer (a PACS afar) that
        is retrieved from by C-GET does.  C-MOVE always goes to the archive (this node's listener)."""
        name = name or self.active_peer
        peer = (getattr(self.window.config, "peers", {}) or {}).get(name) if name else None
        if peer is None or peer.retrieve != "get":
            return False
        mode = getattr(peer, "open_into", "") or ("cache" if peer.tls else "archive")
        return mode == "cache"

    def open_study(self, study_uid: str) -> None:
        if self.active_peer is not None and self.peer_uses_cache():
            self._fetch_and_open(study_uid, None)
        elif self.active_peer is not None:
            self.retrieve_from_peer(study_uid, None, open_after=True)
        elif self.active is None:
            self.window.open_study(study_uid)
        else:
            self._fetch_and_open(study_uid, None)

    def open_series(self, study_uid: str, series_uid: str) -> None:
        if self.active_peer is not None and self.peer_uses_cache():
            self._fetch_and_open(study_uid, series_uid)
        elif self.active_peer is not None:
            self.retrieve_from_peer(study_uid, series_uid, open_after=True)
        elif self.active is None:
            self.window.open_series(study_uid, series_uid)
        else:
            self._fetch_and_open(study_uid, series_uid)

    def retrieve_from_peer(self, study_uid: str, series_uid: str | None, *, open_after: bool) -> Any:
        """Retrieve a study (or series) from the selected peer into the local archive, through the
        transfers queue; then open it in the viewer (``open_after``) like a local study."""
        transfers = getattr(self.window, "transfers", None)
        peer = self.active_peer
        if transfers is None or peer is None:
            self._message("Retrieving from DICOM peers is not available in this window.")
            return None
        browser = self.window.browser
        row = browser.model.find(study_uid)
        label, expected = study_uid, None
        if row >= 0:
            r = browser.model.row(row)
            label = format_person_name(r.get("PatientName")) or "study"
            if r.get("StudyDescription"):
                label += f" — {r['StudyDescription']}"
            expected = r.get("NumberOfStudyRelatedInstances")
        if series_uid:
            srow = browser.series_model.find(series_uid)
            s = browser.series_model.row(srow) if srow >= 0 else {}
            number = s.get("SeriesNumber")
            label += f", series {number}" if number not in (None, "") else ", one series"
            expected = s.get("NumberOfSeriesRelatedInstances")

        def then(_t: Any) -> None:
            self.retrieved.emit(study_uid)
            if not open_after:
                self._message(f"{label}: retrieved from {peer} into the local archive.")
            elif series_uid:
                self.window.open_series(study_uid, series_uid)
            else:
                self.window.open_study(study_uid)

        self._message(f"Retrieving {label} from {peer}…")
        count = expected if isinstance(expected, int) and expected > 0 else None
        return transfers.retrieve(peer, study_uid, series_uid, label=label, expected=count, then=then)

    def _fetch_and_open(self, study_uid: str, series_uid: str | None) -> None:
        """Open a remote study through the cache: fetched (WADO-RS) unless cached, pinned while its tab is
        open.  A series opens its whole study (the cache holds studies) and shows that series.  A
        DICOMweb study not cached and :attr:`progressive`: streamed into a viewer at once
        (:meth:`_open_progressive`)."""
        if self.active_peer is None and self.progressive and not self.cache.has(study_uid):
            self._open_progressive(study_uid, series_uid)
            return
        client: Any
        if self.active_peer is not None:
            peer = self.window.config.peers[self.active_peer]
            client = _PeerFetch(peer_target(self.window.config, peer), self.active_peer)
        else:
            assert self.client is not None
            client = self.client
        job = Job(self)
        name = self.source_name()
        cached = self.cache.has(study_uid)
        if not cached:
            job.progressed.connect(lambda done, _t, _l: self._message(f"Fetching from {name}: {done} image(s)…"))
            self._message(f"Fetching study from {name}…")

        def progress(n: int, _res: Any) -> None:
            if not cached:
                job.report(n, 0, "")

        def failed(exc: BaseException) -> None:
            self._message(f"Could not fetch the study from {name}: {exc}")

        self.runner.submit(self.cache.open, client, study_uid, progress=progress, cancel=job.cancel_event,
                           on_done=lambda _a: self._open_cached(study_uid, series_uid, cached=cached),
                           on_error=failed)

    def _release(self, study_uid: str) -> None:
        if self._closed:
            return
        try:
            self.cache.release(study_uid)
        except Exception:  # noqa: BLE001 - a tab closing must not fail on the cache
            log.exception("remote cache: releasing %s", study_uid)

    def _open_progressive(self, study_uid: str, series_uid: str | None) -> Any:
        """Open the remote study at once: a lossy first rendition of the viewed slices, refined to
        full fidelity in the background, each full instance into the cache
        (:mod:`hilum.ui.viewer.progressive_view`, :mod:`hilum.dicomweb.progressive`)."""
        try:
            from hilum.ui.viewer.progressive_view import prepare_remote
        except ImportError:
            self._message("This build has no viewer.")
            return None
        assert self.client is not None and self.active is not None
        source, client = self.active.name, self.client
        self._message(f"Opening the study from {source}…")
        return self.runner.submit(prepare_remote, client, study_uid,
                                  on_done=lambda prepared: self._show_progressive(study_uid, series_uid, prepared,
                                                                                  client, source),
                                  on_error=lambda exc: self._message(f"Could not open the study from {source}: {exc}"))

    def _show_progressive(self, study_uid: str, series_uid: str | None, prepared: dict[str, Any], client: Any,
                          source: str) -> Any:
        """The study's series are known (:func:`prepare_remote`, off the GUI thread): its tab now."""
        from hilum.ui.viewer.progressive_view import open_progressive

        controller = getattr(self.window, "viewer_controller", None)
        kwargs: dict[str, Any] = {"data_dir": getattr(self.window.config, "data_dir", None)}
        if controller is not None:
            kwargs.update(executor=controller.executor, cache=controller.cache, pool=controller.pool)
        self._partial.add(study_uid)
        self._pin(study_uid)  # never evicted while its tab is open (released with the tab)
        store = self.cache
        bridge = self._complete_bridge

        def complete(uid: str) -> None:  # on a loader thread
            try:
                bridge.emit(uid)
            except RuntimeError:  # the window went meanwhile
                pass

        viewer = open_progressive(client, study_uid, archive=self.cache.archive, store=store,
                                  force=self.progressive_force, on_complete=complete, prepared=prepared,
                                  full_syntax=self.progressive_full_syntax, **kwargs)  # fmt: skip
        viewer.destroyed.connect(lambda *_a: self._release(study_uid))
        row = self.window.browser.model.find(study_uid)
        name = "Study"
        if row >= 0:
            name = str(self.window.browser.model.row(row).get("PatientName", "") or "").split("^")[0] or name
        self.window.add_workspace_tab(viewer, f"{name} ({source})",
                                      tooltip=f"Streamed from the DICOMweb source {source}; {study_uid}")
        viewer.open()
        if series_uid and series_uid in {e.series_uid for e in viewer.session.series}:
            viewer.show_series(series_uid, viewer.model.active)
        self._message(f"Streaming the study from {source}: lossy first, full fidelity on its way.")
        self.progressiveOpened.emit(viewer)
        return viewer

    def _pin(self, study_uid: str) -> None:
        """Pin a study being streamed in the cache (released with its tab), as :meth:`RemoteCache.open`
        pins one it opens; encrypted mode: its instances go to the viewing archive at once."""
        self.cache.pin(study_uid)

    def _on_progressive_complete(self, study_uid: str) -> None:
        self._partial.discard(study_uid)
        mark = getattr(self.cache, "mark_complete", None)
        if callable(mark):
            mark(study_uid)
        self.fetched.emit(study_uid)

    def _open_cached(self, study_uid: str, series_uid: str | None, *, cached: bool = False) -> None:
        """Show the study (pinned in the cache by :meth:`RemoteCache.open`) in a tab; the pin goes
        with the tab."""
        try:
            from hilum.ui.viewer.viewer_widget import StudyViewer
        except ImportError:
            self._release(study_uid)
            self._message("The study was fetched, but this build has no viewer.")
            self.fetched.emit(study_uid)
            return
        controller = getattr(self.window, "viewer_controller", None)
        kwargs: dict[str, Any] = {"data_dir": getattr(self.window.config, "data_dir", None)}
        if controller is not None:
            kwargs.update(executor=controller.executor, cache=controller.cache, pool=controller.pool)
        viewer = StudyViewer(self.cache.archive, study_uid, **kwargs)
        viewer.destroyed.connect(lambda *_a: self._release(study_uid))
        row = self.cache.archive.query("STUDY", {"StudyInstanceUID": study_uid}, limit=1)
        name = str(row[0].get("PatientName", "") or "").split("^")[0] if row else "Study"
        self.window.add_workspace_tab(viewer, f"{name} ({self.source_name()})",
                                      tooltip=f"Opened from the remote source {self.source_name()}; {study_uid}")
        viewer.open()
        if series_uid and series_uid in {e.series_uid for e in viewer.session.series}:
            viewer.show_series(series_uid, viewer.model.active)
        where = "from the local cache" if cached else "from the remote source"
        self._message(f"Study opened {where} (not kept locally: use Keep locally).")
        self.fetched.emit(study_uid)

    def keep_selected(self) -> None:
        """Store the study selected in the browser in the local archive (through ingest)."""
        study_uid = self.window.browser.selected_study_uid()
        if study_uid and self.active_peer is not None and not self.cache.has(study_uid):
            self.retrieve_from_peer(study_uid, None, open_after=False)
            return
        if not study_uid or (self.client is None and self.active_peer is None):
            self._message("Select a remote study first.")
            return
        archive = self.window.archive
        if self.cache.has(study_uid):
            task: Any = (self.cache.keep, archive, study_uid)
        else:
            assert self.client is not None
            task = (self.client.retrieve, archive, study_uid)
        self._message("Keeping the study locally…")
        self.runner.submit(*task, on_done=lambda results: self._kept(study_uid, results),
                           on_error=lambda exc: self._message(f"Could not keep the study: {exc}"))

    def _kept(self, study_uid: str, results: list[Any]) -> None:
        stored = sum(1 for r in results if r.ok)
        failed = len(results) - stored
        self._message(f"Kept {stored} image(s) locally" + (f", {failed} refused" if failed else "") + ".")
        self.kept.emit(study_uid, stored)

    # ------------------------------------------------------------ housekeeping

    def _message(self, text: str) -> None:
        log.info("%s", text)
        self.window.statusBar().showMessage(text, 8000)

    def shutdown(self) -> None:
        self.runner.shutdown(wait=False)
        if self.client is not None:
            self.client.close_all()
        if not self._closed:
            self._closed = True
            self.cache.close()
            if self._cache_tmp is not None:
                shutil.rmtree(self._cache_tmp, ignore_errors=True)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.window and event.type() == QEvent.Type.Close:
            self.shutdown()
        return False


class _PeerFetch:
    """A DICOM peer as a source of the remote cache: C-GET, each instance into the cache's sink
    (:meth:`hilum.dicomweb.cache.RemoteCache.sink`) through the one retrieve call."""

    def __init__(self, target: Any, name: str):
        self.target = target
        self.name = name

    def fetch_into(self, sink: Any, study: str, *, cancel: Any = None) -> None:
        retrieve_study(sink, self.target, study, method="get", cancel=cancel)

    def close(self) -> None:
        pass


def install_remote_sources(window: Any) -> RemoteSourceController | None:
    """Add the source selector to *window*'s study browser; never fatal (the browser stays usable)."""
    try:
        controller = RemoteSourceController(window)
    except Exception:  # noqa: BLE001 - a broken remote source must not take the workstation down
        log.exception("remote DICOMweb sources could not be installed")
        return None
    window.remote_sources = controller
    return controller
