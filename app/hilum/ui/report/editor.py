"""The report editor: one study's report, section by section, keyboard first.

:class:`ReportEditor` binds :class:`hilum.archive.reports.Reports` (issue 20a) to
widgets: a header (patient, study, the state badge), the template and language
combos, one :class:`SectionEdit` (a ``QPlainTextEdit``: dictation software types
into it) per section, the insert-from-study actions, Save / Preliminary /
Sign… / Addendum, and the patient's prior reports (read-only, open on click).

- **Keyboard**: Tab / Shift+Tab go from section to section, Alt+1 … Alt+9 to
  section n; every action has a key (:data:`EDITOR_SHORTCUTS`, listed in Help).
- **Autosave**: :attr:`ReportEditor.AUTOSAVE_MS` after the last keystroke, when a
  section loses the focus, before signing and when the editor closes — through
  ``Reports.save`` (the first save creates the draft with ``Reports.create``), on a
  worker thread, in order. A draft reopens with its text (crash recovery: the
  draft is in the archive's index, not in the window).
- **Signing**: :class:`SignDialog` asks the user name (``[workstation] user`` or
  the OS user, editable) and the password; ``Reports.sign`` checks role and
  password, its refusal is shown as one sentence in the dialog. A signed report is
  read-only and offers "Addendum".
- **Spell-check**: :mod:`hilum.ui.report.spell` — the template's language or the
  combo's; suggestions and "Add to dictionary" in each section's context menu
  (right click, the Menu key or Shift+F10).

All archive work runs off the GUI thread (one worker, so saves stay in order);
results come back by signal (DESIGN.md "The GUI never waits").
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from PySide6.QtCore import QObject, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QContextMenuEvent, QFocusEvent, QKeySequence, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QScrollArea,
    QSplitter,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from hilum.archive.reports import (
    AMENDED,
    DRAFT,
    FINAL,
    PRELIMINARY,
    Report,
    ReportError,
    Reports,
    Section,
)
from hilum.ui.icons import icon
from hilum.ui.report import inserts
from hilum.ui.report.spell import SpellHighlighter
from hilum.ui.report.templates import LANGUAGES, ReportTemplate, choose_template, load_templates

__all__ = ["EDITOR_SHORTCUTS", "STATE_STYLE", "ReportEditor", "SectionEdit", "SignDialog", "default_user"]

log = logging.getLogger(__name__)

EDITOR_SHORTCUTS: list[tuple[str, str, str, str]] = [
    # (action name, keys, description, qtawesome icon)
    ("insert_measurements", "Ctrl+Alt+M", "Insert the study's measurements at the cursor", "mdi6.ruler"),
    ("insert_key_images", "Ctrl+Alt+K", "Insert the key images (series and image numbers)", "mdi6.star"),
    ("insert_comparison", "Ctrl+Alt+C", "Insert the comparison study and its date", "mdi6.compare"),
    ("insert_ai", "Ctrl+Alt+A", 'Insert the AI findings (SRs whose series is "AI: …")', "mdi6.robot-outline"),
    ("save_draft", "Ctrl+S", "Save the draft now (it also saves itself as you type)", "mdi6.content-save"),
    ("preliminary", "Ctrl+Alt+P", "Mark the report preliminary (stored, not signed)", "mdi6.file-clock-outline"),
    ("sign", "Ctrl+Shift+S", "Sign the report (asks your password; radiologists only)", "mdi6.draw-pen"),
    ("addendum", "Ctrl+Shift+A", "Write an addendum to the signed report", "mdi6.file-plus-outline"),
    ("back_to_images", "Esc", "Back to the images (the viewer's active viewport)", "mdi6.image-outline"),
]
"""The editor's own keys (active while the focus is in the editor)."""
SECTION_KEYS_HELP = [
    ("Tab / Shift+Tab", "Report: next / previous section"),
    ("Alt+1 … Alt+9", "Report: go to section 1 … 9"),
    ("Menu / Shift+F10", "Report: spelling suggestions and Add to dictionary for the word at the cursor"),
]

STATE_STYLE: dict[str, tuple[str, str]] = {
    "new": ("New", "#6c757d"),
    DRAFT: ("Draft", "#2f6fb3"),
    PRELIMINARY: ("Preliminary", "#c77c00"),
    FINAL: ("Final", "#2e8b3d"),
    AMENDED: ("Amended", "#8e44ad"),
}
"""Report state → (badge text, badge colour)."""


def default_user(config: Any = None) -> str:
    """``[workstation] user`` of hilum.toml, else the OS user."""
    extra = getattr(config, "extra", None) or {}
    ws = extra.get("workstation") if isinstance(extra, dict) else None
    if isinstance(ws, dict) and str(ws.get("user", "")).strip():
        return str(ws["user"]).strip()
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no OS user name (containers)
        return "radiologist"


class SectionEdit(QPlainTextEdit):
    """One section's text: Tab moves to the next section; spelling in the context menu."""

    focusLost = Signal()
    focused = Signal()

    def __init__(self, key: str, title: str, language: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.key = key
        self.title = title
        self.setObjectName(f"reportSection_{key}")
        self.setTabChangesFocus(True)
        self.setAccessibleName(title)
        self.setPlaceholderText(title)
        self.setMinimumHeight(60)
        self.highlighter = SpellHighlighter(self.document(), language)

    def focusOutEvent(self, event: QFocusEvent) -> None:  # noqa: N802
        super().focusOutEvent(event)
        if event.reason() != Qt.FocusReason.PopupFocusReason:
            self.focusLost.emit()

    def focusInEvent(self, event: QFocusEvent) -> None:  # noqa: N802
        super().focusInEvent(event)
        self.focused.emit()

    # --- spelling

    def word_at(self, cursor: QTextCursor) -> tuple[int, int, str] | None:
        """The misspelt word under *cursor*: (start, length, word) in the document, or None."""
        s = self.highlighter.speller
        if s is None:
            return None
        block = cursor.block()
        col = cursor.position() - block.position()
        for start, length, word in s.misspelt(block.text()):
            if start <= col <= start + length:
                return block.position() + start, length, word
        return None

    def spelling_menu(self, pos: QPoint | None = None) -> QMenu:
        """The context menu at *pos* (viewport coordinates; None: the text cursor): suggestions for
        a misspelt word first, then "Add to dictionary", then the usual edit entries."""
        cursor = self.cursorForPosition(pos) if pos is not None else self.textCursor()
        menu = self.createStandardContextMenu()
        menu.setObjectName("reportSpellingMenu")
        found = self.word_at(cursor)
        if found is not None and not self.isReadOnly():
            start, length, word = found
            speller = self.highlighter.speller
            assert speller is not None
            first = menu.actions()[0] if menu.actions() else None
            entries: list[QAction] = []
            for sug in speller.suggestions(word):
                act = QAction(sug, menu)
                act.setObjectName("spellSuggestion")
                act.triggered.connect(partial(self.replace_range, start, length, sug))
                entries.append(act)
            if not entries:
                none = QAction("(no suggestion)", menu)
                none.setEnabled(False)
                entries.append(none)
            add = QAction(f"Add “{word}” to dictionary", menu)
            add.setObjectName("spellAddWord")
            add.triggered.connect(partial(self.add_word, word))
            entries.append(add)
            for act in entries:
                menu.insertAction(first, act)  # type: ignore[arg-type]
            menu.insertSeparator(first)  # type: ignore[arg-type]
        return menu

    def replace_range(self, start: int, length: int, text: str, _checked: bool = False) -> None:
        c = QTextCursor(self.document())
        c.setPosition(start)
        c.setPosition(start + length, QTextCursor.MoveMode.KeepAnchor)
        c.insertText(text)
        self.setTextCursor(c)

    def add_word(self, word: str, _checked: bool = False) -> None:
        if self.highlighter.speller is not None:
            self.highlighter.speller.add_word(word)
        editor = self.parent()
        while editor is not None and not isinstance(editor, ReportEditor):
            editor = editor.parent()
        if isinstance(editor, ReportEditor):
            editor.rehighlight()
        else:
            self.highlighter.rehighlight()

    def contextMenuEvent(self, event: QContextMenuEvent) -> None:  # noqa: N802
        keyboard = event.reason() == QContextMenuEvent.Reason.Keyboard
        menu = self.spelling_menu(None if keyboard else event.pos())
        menu.exec(event.globalPos())
        menu.deleteLater()

    # --- inserting

    def insert_block(self, text: str) -> None:
        """Insert *text* at the cursor on line(s) of its own."""
        if not text:
            return
        c = self.textCursor()
        before = c.block().text()[: c.positionInBlock()]
        after = c.block().text()[c.positionInBlock() :]
        out = text
        if before.strip():
            out = "\n" + out
        if after.strip():
            out += "\n"
        c.insertText(out)
        self.setTextCursor(c)


class SignDialog(QDialog):
    """User name and password for signing; the refusal shows here as one sentence."""

    def __init__(self, user: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("reportSignDialog")
        self.setWindowTitle("Sign the report")
        self.user = QLineEdit(user, self)
        self.user.setObjectName("signUser")
        self.password = QLineEdit(self)
        self.password.setObjectName("signPassword")
        self.password.setEchoMode(QLineEdit.EchoMode.Password)
        self.message = QLabel("Signing makes the report final: it cannot be changed afterwards, only amended.", self)
        self.message.setObjectName("signMessage")
        self.message.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)  # fmt: skip
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setText("Sign")
        form = QFormLayout()
        form.addRow("User", self.user)
        form.addRow("Password", self.password)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.message)
        lay.addWidget(self.buttons)
        self.buttons.rejected.connect(self.reject)
        self.password.setFocus()

    def set_busy(self, busy: bool) -> None:
        for w in (self.user, self.password, self.buttons):
            w.setEnabled(not busy)
        if busy:
            self.message.setText("Signing…")
            self.message.setStyleSheet("")

    def show_error(self, text: str) -> None:
        self.set_busy(False)
        self.message.setText(text)
        self.message.setStyleSheet("color: #b00020; font-weight: bold;")
        self.password.clear()
        self.password.setFocus()


@dataclass
class StudyInfo:
    """What the editor shows of the study and chooses the template by."""

    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    description: str = ""
    modality: str = ""
    body_part: str = ""
    accession: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def study_info(archive: Any, study_uid: str) -> StudyInfo:
    rows = archive.query("STUDY", {"StudyInstanceUID": study_uid}, limit=1)
    info = StudyInfo(study_uid)
    if rows:
        r = rows[0]
        info.patient_id = str(r.get("PatientID", "") or "")
        info.patient_name = str(r.get("PatientName", "") or "")
        info.study_date = str(r.get("StudyDate", "") or "")
        info.description = str(r.get("StudyDescription", "") or "")
        info.accession = str(r.get("AccessionNumber", "") or "")
        mods = r.get("ModalitiesInStudy") or ""
        mods = mods if isinstance(mods, list | tuple) else str(mods).split("\\")
        info.modality = next((m for m in mods if m and m not in ("SR", "KO", "PR", "SEG", "DOC")), "")
    series = archive.query("SERIES", {"StudyInstanceUID": study_uid})
    for s in series:
        if not info.modality and str(s.get("Modality", "")) not in ("SR", "KO", "PR", "SEG", "DOC", ""):
            info.modality = str(s.get("Modality"))
        if not info.body_part and s.get("BodyPartExamined"):
            info.body_part = str(s.get("BodyPartExamined"))
    return info


def _person(pn: str) -> str:
    parts = pn.split("=")[0].split("^")
    return ", ".join(p for p in parts[:2] if p) if len(parts) > 1 else pn


def _date(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:]}" if len(da) == 8 and da.isdigit() else da


class _Bridge(QObject):
    done = Signal(object, object, object)  # callback, result, error


class ReportEditor(QWidget):
    """One study's report (see the module docstring).

    ``context``: an object with optional ``live_measurements()`` → ``[(annotation, values)]``,
    ``live_key_images()`` → ``[KeyImage]`` and ``comparison_prior()`` → ``Prior | None``
    (the viewer's view of the study; without it the archive's saved objects are used).
    """

    stateChanged = Signal(str)
    """The report's state after a load, save, preliminary, sign or addendum ("new" before the first save)."""
    saved = Signal(str)
    """A save finished (the report id)."""
    loaded = Signal()
    """The first load finished (report, study, templates, prior reports)."""
    inserted = Signal(str, str)
    """An insert finished: (what, text inserted)."""
    failed = Signal(str)
    """An operation failed: the sentence shown."""
    backRequested = Signal()

    AUTOSAVE_MS = 2000

    def __init__(self, archive: Any, study_uid: str, *, reports: Reports | None = None, user: str = "",
                 config: Any = None, context: Any = None, templates: Sequence[ReportTemplate] | None = None,
                 language: str = "", parent: QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.setObjectName("reportEditor")
        self.archive = archive
        self.study_uid = study_uid
        self.config = config
        self.reports = reports if reports is not None else _reports_for(archive, config)
        self.user = user or default_user(config)
        self.context = context
        self.templates: list[ReportTemplate] = list(templates) if templates is not None else load_templates()
        self.language = language or _config_language(config) or "en"
        self.report: Report | None = None
        self.info = StudyInfo(study_uid)
        self.prior_reports: list[Report] = []
        self.sections: list[SectionEdit] = []
        self.template: ReportTemplate | None = None
        self._dirty = False
        self._generation = 0  # edits since the start; a save records the generation it wrote
        self._saved_generation = 0
        self._last_focus: SectionEdit | None = None
        self._closed = False
        self._loading = True
        self._applying = False
        self.sign_dialog: SignDialog | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hilum-report")
        self._pending: list[Future[Any]] = []
        self._bridge = _Bridge(self)
        self._bridge.done.connect(self._on_done)
        self._build_ui()
        self._build_actions()
        self._autosave = QTimer(self)
        self._autosave.setSingleShot(True)
        self._autosave.setInterval(self.AUTOSAVE_MS)
        self._autosave.timeout.connect(self.save)
        self._set_state("new")
        self._update_actions()

    # ------------------------------------------------------------ building

    def _build_ui(self) -> None:
        self.title = QLabel("Report", self)
        self.title.setObjectName("reportTitle")
        self.title.setWordWrap(True)
        self.badge = QLabel(self)
        self.badge.setObjectName("reportStateBadge")
        self.badge.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.badge.setMinimumWidth(90)
        head = QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.badge)

        self.template_combo = QComboBox(self)
        self.template_combo.setObjectName("reportTemplate")
        self.template_combo.setToolTip("Template: the sections and their starting text (Alt+T)")
        for t in self.templates:
            self.template_combo.addItem(t.label, t.id)
        self.language_combo = QComboBox(self)
        self.language_combo.setObjectName("reportLanguage")
        self.language_combo.setToolTip("Spell-checking language (Alt+L)")
        for code, name in LANGUAGES.items():
            self.language_combo.addItem(name, code)
        t_label = QLabel("&Template", self)
        t_label.setBuddy(self.template_combo)
        l_label = QLabel("&Language", self)
        l_label.setBuddy(self.language_combo)
        choose = QHBoxLayout()
        choose.addWidget(t_label)
        choose.addWidget(self.template_combo, 1)
        choose.addWidget(l_label)
        choose.addWidget(self.language_combo)

        self.sections_host = QWidget(self)
        self.sections_layout = QVBoxLayout(self.sections_host)
        self.sections_layout.setContentsMargins(2, 2, 2, 2)
        self.scroll_area = QScrollArea(self)
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setWidget(self.sections_host)

        self.priors_list = QListWidget(self)
        self.priors_list.setObjectName("reportPriors")
        self.priors_list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.priors_list.setToolTip("The patient's earlier signed reports: click (or Enter) to read one")
        self.priors_list.itemActivated.connect(self._open_prior)
        self.priors_list.itemClicked.connect(self._open_prior)
        priors_box = QWidget(self)
        pl = QVBoxLayout(priors_box)
        pl.setContentsMargins(0, 0, 0, 0)
        self.priors_label = QLabel("Prior reports", self)
        pl.addWidget(self.priors_label)
        pl.addWidget(self.priors_list)
        self.splitter = QSplitter(Qt.Orientation.Vertical, self)
        self.splitter.addWidget(self.scroll_area)
        self.splitter.addWidget(priors_box)
        self.splitter.setStretchFactor(0, 4)
        self.splitter.setStretchFactor(1, 1)

        self.buttons = QHBoxLayout()
        self.insert_button = QToolButton(self)
        self.insert_button.setObjectName("reportInsert")
        self.insert_button.setText("Insert")
        self.insert_button.setIcon(icon("mdi6.text-box-plus-outline", "Ins"))
        self.insert_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.insert_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.insert_menu = QMenu(self.insert_button)
        self.insert_button.setMenu(self.insert_menu)
        self.buttons.addWidget(self.insert_button)
        self.buttons.addStretch(1)
        self.status = QLabel("", self)
        self.status.setObjectName("reportStatus")
        self.status.setWordWrap(True)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addLayout(head)
        lay.addLayout(choose)
        lay.addLayout(self.buttons)
        lay.addWidget(self.splitter, 1)
        lay.addWidget(self.status)
        self.template_combo.activated.connect(self._template_chosen)
        self.language_combo.currentIndexChanged.connect(lambda _i: self.set_language(self.language_combo.currentData()))

    def _build_actions(self) -> None:
        self.actions_by_name: dict[str, QAction] = {}
        slots: dict[str, Callable[[], Any]] = {
            "insert_measurements": self.insert_measurements,
            "insert_key_images": self.insert_key_images,
            "insert_comparison": self.insert_comparison,
            "insert_ai": self.insert_ai_findings,
            "save_draft": self.save,
            "preliminary": self.set_preliminary,
            "sign": self.sign_dialog_open,
            "addendum": self.addendum,
            "back_to_images": self.backRequested.emit,
        }
        for name, keys, text, glyph in EDITOR_SHORTCUTS:
            label = text.split(" (")[0]
            act = QAction(label, self)
            act.setObjectName(f"report_{name}")
            act.setShortcut(QKeySequence(keys))
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            act.setIcon(icon(glyph, label))
            shown = QKeySequence(keys).toString(QKeySequence.SequenceFormat.NativeText)
            act.setToolTip(f"{text} ({shown})")
            act.setStatusTip(text)
            slot = slots[name]
            act.triggered.connect(lambda _c=False, s=slot: s())
            self.addAction(act)
            self.actions_by_name[name] = act
        for name in ("insert_measurements", "insert_key_images", "insert_comparison", "insert_ai"):
            self.insert_menu.addAction(self.actions_by_name[name])
        self.actions_by_name["sign"].setText("Sign…")
        for name in ("save_draft", "preliminary", "sign", "addendum"):
            b = QToolButton(self)
            b.setObjectName(f"reportButton_{name}")
            b.setDefaultAction(self.actions_by_name[name])
            b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            self.buttons.addWidget(b)
        for n in range(1, 10):
            act = QAction(f"Section {n}", self)
            act.setShortcut(QKeySequence(f"Alt+{n}"))
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            act.triggered.connect(lambda _c=False, i=n - 1: self.focus_section(i))
            self.addAction(act)

    # ------------------------------------------------------------ worker

    def _submit(self, work: Callable[[], Any], done: Callable[[Any, BaseException | None], None]) -> None:
        bridge = self._bridge

        def run() -> None:
            result: Any = None
            error: BaseException | None = None
            try:
                result = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the GUI thread
                error = exc
            try:
                bridge.done.emit(done, result, error)
            except RuntimeError:  # the editor is gone
                pass

        fut = self._pool.submit(run)
        self._pending = [f for f in self._pending if not f.done()] + [fut]

    def _on_done(self, callback: Callable[[Any, BaseException | None], None], result: Any,
                 error: BaseException | None) -> None:  # fmt: skip
        if self._closed and callback is not self._after_final_save:
            return
        callback(result, error)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until the worker has run everything queued (tests, closing)."""
        for f in list(self._pending):
            f.result(timeout=timeout)

    # ------------------------------------------------------------ loading

    def open(self) -> None:
        """Load the study's report (a draft reopens with its text), the study and the prior reports."""
        archive, reports, uid = self.archive, self.reports, self.study_uid

        def work() -> tuple[StudyInfo, list[Report], list[Report]]:
            info = study_info(archive, uid)
            mine = reports.for_study(uid)
            priors: list[Report] = []
            if info.patient_id:
                try:
                    priors = reports.priors(info.patient_id, before=info.study_date or None, exclude_study=uid)
                except Exception as exc:  # noqa: BLE001 - the editor works without them
                    log.warning("prior reports of the patient: %s", exc)
            return info, mine, priors

        self.status.setText("Loading the report…")
        self._submit(work, self._on_loaded)

    def _on_loaded(self, result: Any, error: BaseException | None) -> None:
        self._loading = False
        if error is not None:
            self._fail(f"Cannot load the report: {error}")
            self._apply_template(self._choose_default())
            self.loaded.emit()
            return
        info, mine, priors = result
        self.info = info
        self.title.setText(
            f"<b>{_person(info.patient_name) or 'Unknown patient'}</b> · {info.patient_id}<br>"
            f"{_date(info.study_date)} {info.modality} {info.description}".strip()
        )
        current = _current(mine)
        self.set_prior_reports(priors, [r for r in mine if r.locked and r is not current])
        if current is not None:
            self._show_report(current)
            self.status.setText("Draft reopened" if not current.locked else "Signed report")
        else:
            self._apply_template(self._choose_default())
            self.status.setText("New report: type, or choose a template")
        self.loaded.emit()
        self._update_actions()

    def _choose_default(self) -> ReportTemplate | None:
        return choose_template(self.templates, modality=self.info.modality, body_part=self.info.body_part,
                               description=self.info.description, language=self.language)  # fmt: skip

    def set_prior_reports(self, priors: Sequence[Report], versions: Sequence[Report] = ()) -> None:
        """List the patient's earlier reports (*priors*) and this study's signed versions that the
        editor does not show (*versions*: the original of an addendum), each read-only on click."""
        self.prior_reports = list(versions) + list(priors)
        self.priors_list.clear()
        for r in versions:
            item = QListWidgetItem(f"This study · v{r.version} {STATE_STYLE.get(r.state, (r.state, ''))[0]} · "
                                   f"{r.signed_by} {_when(r.signed_at)}")  # fmt: skip
            item.setData(Qt.ItemDataRole.UserRole, r.report_id)
            item.setToolTip("The signed version this addendum amends: click to read")
            self.priors_list.addItem(item)
        for r in priors:
            when = r.study_date or (r.signed_at.strftime("%Y%m%d") if r.signed_at else "")
            item = QListWidgetItem(f"{_date(when)} · {r.study_description or r.template} · {r.state}")
            item.setData(Qt.ItemDataRole.UserRole, r.report_id)
            item.setToolTip(f"Signed by {r.signed_by or '?'}; click to read")
            self.priors_list.addItem(item)
        n = len(self.prior_reports)
        self.priors_label.setText(f"Prior reports ({n})" if n else "Prior reports: none")

    # ------------------------------------------------------------ sections and templates

    def _build_sections(self, sections: Sequence[Section], language: str) -> None:
        while self.sections_layout.count():
            item = self.sections_layout.takeAt(0)
            old = item.widget() if item is not None else None
            if old is not None:
                old.hide()
                old.deleteLater()
        self.sections = []
        for i, s in enumerate(sections):
            label = QLabel(f"<b>{s.title}</b>", self.sections_host)
            label.setObjectName(f"reportSectionTitle_{s.key}")
            edit = SectionEdit(s.key, s.title, language, self.sections_host)
            edit.setToolTip(f"{s.title} (Alt+{i + 1})" if i < 9 else s.title)
            label.setBuddy(edit)
            edit.setPlainText(s.text)
            edit.textChanged.connect(self._on_edited)
            edit.focusLost.connect(self._on_focus_lost)
            edit.focused.connect(partial(self._remember_focus, edit))
            self.sections_layout.addWidget(label)
            self.sections_layout.addWidget(edit)
            if self.sections_host.isVisible():  # else the layout shows them later: focus would miss them
                label.show()
                edit.show()
            self.sections.append(edit)
        self.sections_layout.addStretch(1)
        self._set_read_only(self.report is not None and self.report.locked)

    def _apply_template(self, template: ReportTemplate | None) -> None:
        self._applying = True
        try:
            self.template = template
            if template is not None:
                i = self.template_combo.findData(template.id)
                if i >= 0:
                    self.template_combo.setCurrentIndex(i)
                self._set_language_combo(template.language)
                sections = [Section(s.key, s.title, s.text) for s in template.sections]
            else:
                from hilum.archive.reports import DEFAULT_SECTIONS

                sections = [Section(k, t) for k, t in DEFAULT_SECTIONS]
            self._build_sections(sections, self.language)
        finally:
            self._applying = False

    def _template_chosen(self, index: int) -> None:
        tid = self.template_combo.itemData(index)
        template = next((t for t in self.templates if t.id == tid), None)
        if template is None or (self.report is not None and self.report.locked):
            return
        if self._has_own_text() and self.template is not None and template.id != self.template.id:
            answer = QMessageBox.question(self, "Change the template",
                                          "Replace the report's text with the template's? What you typed is lost.")  # fmt: skip
            if answer != QMessageBox.StandardButton.Yes:
                self._select_template_combo()
                return
        self.choose_template(template)

    def choose_template(self, template: ReportTemplate | str) -> None:
        """Start the report from *template* (an id or a template): its sections and its language."""
        if isinstance(template, str):
            found = next((t for t in self.templates if t.id == template), None)
            if found is None:
                raise ValueError(f"no report template {template!r}")
            template = found
        self._apply_template(template)
        self._on_edited()
        if self.sections:
            self.sections[0].setFocus()

    def _select_template_combo(self) -> None:
        if self.template is not None:
            self.template_combo.setCurrentIndex(max(0, self.template_combo.findData(self.template.id)))

    def _has_own_text(self) -> bool:
        """Whether the sections differ from the current template's text."""
        if self.template is None:
            return any(e.toPlainText().strip() for e in self.sections)
        start = {s.key: s.text for s in self.template.sections}
        return any(e.toPlainText().strip() != start.get(e.key, "").strip() for e in self.sections)

    def _set_language_combo(self, language: str) -> None:
        i = self.language_combo.findData(language)
        if i >= 0 and i != self.language_combo.currentIndex():
            self.language_combo.setCurrentIndex(i)  # -> set_language
        else:
            self.set_language(language)

    def set_language(self, language: str) -> None:
        """The spell-checking language (and the words of inserted text)."""
        if not language:
            return
        self.language = language
        for e in self.sections:
            e.highlighter.set_language(language)
        i = self.language_combo.findData(language)
        if i >= 0 and i != self.language_combo.currentIndex():
            self.language_combo.blockSignals(True)
            self.language_combo.setCurrentIndex(i)
            self.language_combo.blockSignals(False)

    def rehighlight(self) -> None:
        for e in self.sections:
            e.highlighter.rehighlight()

    def focus_section(self, index: int) -> bool:
        if 0 <= index < len(self.sections):
            self.sections[index].moveCursor(QTextCursor.MoveOperation.End)  # dictation goes on at the end
            self.sections[index].setFocus(Qt.FocusReason.ShortcutFocusReason)
            self.scroll_area.ensureWidgetVisible(self.sections[index])
            return True
        return False

    def section(self, key: str) -> SectionEdit | None:
        return next((e for e in self.sections if e.key == key), None)

    def current_sections(self) -> list[Section]:
        return [Section(e.key, e.title, e.toPlainText()) for e in self.sections]

    def text(self) -> str:
        """The report as plain text ("Title:\\ntext" blocks)."""
        return "\n\n".join(f"{s.title}:\n{s.text}" for s in self.current_sections())

    def _remember_focus(self, edit: SectionEdit) -> None:
        self._last_focus = edit

    # ------------------------------------------------------------ state

    def _set_state(self, state: str, addendum: bool = False) -> None:
        text, colour = STATE_STYLE.get(state, (state, "#6c757d"))
        if addendum and state in ("new", DRAFT, PRELIMINARY):
            text = f"Addendum · {text}"
        self.badge.setText(text)
        self.badge.setToolTip(f"Report state: {text}")
        self.badge.setStyleSheet(
            f"QLabel#reportStateBadge {{ background: {colour}; color: white; border-radius: 9px;"
            " padding: 2px 10px; font-weight: bold; }"
        )
        self.state = state
        self.stateChanged.emit(state)

    def _show_report(self, report: Report) -> None:
        self.report = report
        tpl = next((t for t in self.templates if t.id == report.template), None)
        self.template = tpl
        if tpl is not None:
            self._applying = True
            self._select_template_combo()
            self._applying = False
            self._set_language_combo(tpl.language)
        self._applying = True
        try:
            self._build_sections(report.sections, self.language)
        finally:
            self._applying = False
        self._dirty = False
        self._saved_generation = self._generation
        self._set_state(report.state, addendum=bool(report.parent_id or report.parent_fk))
        self._update_actions()

    def _set_read_only(self, ro: bool) -> None:
        for e in self.sections:
            e.setReadOnly(ro)
            e.highlighter.set_enabled(not ro)
        self.template_combo.setEnabled(not ro)

    def _update_actions(self) -> None:
        locked = self.report is not None and self.report.locked
        busy = self._loading
        for name in ("insert_measurements", "insert_key_images", "insert_comparison", "insert_ai", "save_draft"):
            self.actions_by_name[name].setEnabled(not locked and not busy)
        self.actions_by_name["preliminary"].setEnabled(not locked and not busy and self.state != PRELIMINARY)
        self.actions_by_name["sign"].setEnabled(not locked and not busy)
        self.actions_by_name["addendum"].setEnabled(locked and not busy and self._is_newest())
        self._set_read_only(locked)

    def _is_newest(self) -> bool:
        return True

    @property
    def read_only(self) -> bool:
        return self.report is not None and self.report.locked

    def _fail(self, text: str) -> None:
        log.warning("report editor: %s", text)
        self.status.setText(text)
        self.status.setStyleSheet("color: #b00020;")
        self.failed.emit(text)

    def _note(self, text: str) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("")

    # ------------------------------------------------------------ autosave

    def _on_edited(self) -> None:
        if self._applying or self._loading or self.read_only:
            return
        self._generation += 1
        self._dirty = True
        self._autosave.start()

    def _on_focus_lost(self) -> None:
        if self._dirty and not self._closed:
            self.save()

    @property
    def dirty(self) -> bool:
        return self._dirty

    def save(self) -> bool:
        """Save now (create the draft first if there is none); False when there is nothing to save."""
        self._autosave.stop()
        if self.read_only or self._loading or not self._dirty:
            return False
        self._submit(*self._save_job())
        return True

    def _save_job(self) -> tuple[Callable[[], Report], Callable[[Any, BaseException | None], None]]:
        sections = self.current_sections()
        generation = self._generation
        reports, uid, user = self.reports, self.study_uid, self.user
        template = self.template.id if self.template is not None else "generic"
        holder = self  # the report id may be set by an earlier queued save: read it in the worker

        def work() -> Report:
            current = holder.report
            if current is None:
                report = reports.create(uid, user=user, template=template, sections=sections)
                holder.report = report  # the next queued save updates it (the worker runs them in order)
                return report
            return reports.save(current.report_id, sections, user=user)

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self._fail(f"The draft was not saved: {error}")
                return
            self.report = result
            self._saved_generation = max(self._saved_generation, generation)
            self._dirty = self._generation != self._saved_generation
            if self.state != result.state:
                self._set_state(result.state, addendum=bool(result.parent_id or result.parent_fk))
            self._note(f"Saved {datetime.now().strftime('%H:%M:%S')}")
            self._update_actions()
            self.saved.emit(result.report_id)

        return work, done

    # ------------------------------------------------------------ state changes

    def set_preliminary(self) -> None:
        if self.read_only:
            return
        self.save()
        reports, user = self.reports, self.user

        def work() -> Report:
            if self.report is None:
                raise ReportError("there is no report yet: type something first")
            return reports.set_preliminary(self.report.report_id, user=user)

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self._fail(_sentence(error))
                return
            self.report = result
            self._set_state(result.state, addendum=bool(result.parent_id or result.parent_fk))
            self._note("Preliminary: stored in the archive, not signed")
            self._update_actions()

        self._note("Storing the preliminary report…")
        self._submit(work, done)

    def sign_dialog_open(self) -> SignDialog | None:
        """Sign…: the dialog (non-modal in tests' eyes; Sign runs :meth:`sign`)."""
        if self.read_only:
            return None
        if self.sign_dialog is not None:
            self.sign_dialog.raise_()
            self.sign_dialog.activateWindow()
            return self.sign_dialog
        dlg = SignDialog(self.user, self)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.buttons.accepted.connect(lambda: self.sign(dlg.user.text().strip(), dlg.password.text()))
        dlg.finished.connect(lambda _r: setattr(self, "sign_dialog", None))
        self.sign_dialog = dlg
        dlg.show()
        dlg.password.setFocus()
        return dlg

    def sign(self, user: str, password: str) -> None:
        """Save, then sign as *user* (``Reports.sign`` checks the role and the password)."""
        if self.read_only:
            return
        if self._dirty or self.report is None:
            self._dirty = True  # a new report is created even if nothing was typed
            self.save()
        dlg = self.sign_dialog
        if dlg is not None:
            dlg.set_busy(True)
        reports = self.reports

        def work() -> Report:
            if self.report is None:
                raise ReportError("The report could not be saved, so it cannot be signed.")
            return reports.sign(self.report.report_id, user=user, password=password)

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                text = _sentence(error)
                if self.sign_dialog is not None:
                    self.sign_dialog.show_error(text)
                self._fail(text)
                return
            self.report = result
            self.user = user
            self._set_state(result.state, addendum=bool(result.parent_id or result.parent_fk))
            self._note(f"Signed by {result.signed_by} at {_when(result.signed_at)}: the report is final")
            self._update_actions()
            if self.sign_dialog is not None:
                self.sign_dialog.accept()
            self.window().activateWindow()
            self.focus_section(0)  # read-only, but the editor's keys (Addendum) work from here

        self._submit(work, done)

    def addendum(self) -> None:
        """A new draft amending the signed report (the original is kept as it is)."""
        if self.report is None or not self.report.locked:
            return
        reports, user, original = self.reports, self.user, self.report

        def work() -> Report:
            return reports.addendum(original.report_id, user=user)

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self._fail(_sentence(error))
                return
            self._show_report(result)
            versions = [r for r in self.prior_reports if r.study_uid == self.study_uid]
            others = [r for r in self.prior_reports if r.study_uid != self.study_uid]
            self.set_prior_reports(others, [original, *[v for v in versions if v.report_id != original.report_id]])
            self._note(f"Addendum to the report signed by {original.signed_by}: type the correction")
            if self.sections:
                self.focus_section(len(self.sections) - 1)

        self._submit(work, done)

    # ------------------------------------------------------------ inserting

    def _target(self, prefer: str = "") -> SectionEdit | None:
        focused = next((e for e in self.sections if e.hasFocus()), None)
        if focused is not None:
            return focused
        if prefer and (e := self.section(prefer)) is not None:
            return e
        return self._last_focus if self._last_focus in self.sections else (self.sections[0] if self.sections else None)

    def _insert(self, what: str, target: SectionEdit | None, text: str, empty: str) -> None:
        if target is None or self.read_only:
            return
        if not text:
            self._note(empty)
            self.inserted.emit(what, "")
            return
        if what == "comparison":
            tpl = {s.key: s.text for s in self.template.sections} if self.template is not None else {}
            start = tpl.get(target.key, "").strip()
            if (
                target.toPlainText().strip() in (start, "None.", "Aucun examen antérieur.")
                and target.key == "comparison"
            ):
                target.setPlainText("")
        target.insert_block(text)
        target.setFocus()
        self._note(f"Inserted {what.replace('_', ' ')}")
        self.inserted.emit(what, text)

    def _insert_async(self, what: str, prefer: str, work: Callable[[], str], empty: str) -> None:
        if self.read_only:
            return
        target = self._target(prefer)

        def done(result: Any, error: BaseException | None) -> None:
            if error is not None:
                self._fail(f"Cannot insert the {what.replace('_', ' ')}: {error}")
                return
            self._insert(what, target, str(result or ""), empty)

        self._submit(work, done)

    def insert_measurements(self) -> None:
        """The study's measurements, one a line, at the cursor (findings when no section has the focus)."""
        live = _call(self.context, "live_measurements")
        archive, uid, lang = self.archive, self.study_uid, self.language

        def work() -> str:
            index = inserts.image_index(archive, uid)
            items = live if live else inserts.archive_measurements(archive, uid)
            return "\n".join(inserts.measurement_lines(items, index, lang))

        self._insert_async("measurements", "findings", work, "No measurements in this study")

    def insert_key_images(self) -> None:
        live = _call(self.context, "live_key_images")
        archive, uid, lang = self.archive, self.study_uid, self.language

        def work() -> str:
            keys = live if live else inserts.archive_key_images(archive, uid)
            return inserts.key_image_text(keys, inserts.image_index(archive, uid), lang)

        self._insert_async("key_images", "findings", work, "No key images in this study")

    def insert_comparison(self) -> None:
        prior = _call(self.context, "comparison_prior")
        archive, uid, lang = self.archive, self.study_uid, self.language
        current_date = self.info.study_date

        def work() -> str:
            p = prior
            if p is None:
                from hilum.priors import find_local_priors

                found = [x for x in find_local_priors(archive, uid) if x.study_uid != uid]
                p = found[0] if found else None
            return inserts.comparison_text(p, current_date, lang)

        self._insert_async("comparison", "comparison", work, "No earlier study to compare with")

    def insert_ai_findings(self) -> None:
        archive, uid, lang = self.archive, self.study_uid, self.language

        def work() -> str:
            return "\n".join(inserts.ai_finding_lines(archive, uid, lang))

        self._insert_async("ai_findings", "findings", work, "No AI results in this study")

    # ------------------------------------------------------------ prior reports

    def _open_prior(self, item: QListWidgetItem) -> QDialog | None:
        rid = item.data(Qt.ItemDataRole.UserRole)
        report = next((r for r in self.prior_reports if r.report_id == rid), None)
        if report is None:
            return None
        return show_report_dialog(report, self)

    # ------------------------------------------------------------ closing

    def flush(self, timeout: float = 10.0) -> None:
        """Save what is not saved yet and wait for it (closing the editor or the window)."""
        if self._dirty and not self.read_only and not self._loading:
            work, done = self._save_job()
            self._autosave.stop()
            fut = self._pool.submit(work)
            try:
                result = fut.result(timeout=timeout)
                done(result, None)
            except Exception as exc:  # noqa: BLE001 - logged; the draft of the last autosave stays
                log.warning("the report draft was not saved on closing: %s", exc)
        self.wait_idle(timeout)

    def _after_final_save(self, result: Any, error: BaseException | None) -> None:
        pass

    def shutdown(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._autosave.stop()
            self._pool.shutdown(wait=True)
            if self.sign_dialog is not None:
                self.sign_dialog.close()

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self.shutdown()
        super().closeEvent(event)


def show_report_dialog(report: Report, parent: QWidget | None = None) -> QDialog:
    """A signed (or any) report, read-only, in a dialog of its own."""
    dlg = QDialog(parent)
    dlg.setObjectName("reportReadDialog")
    dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    when = _date(report.study_date) or ""
    dlg.setWindowTitle(f"Report {when} {report.study_description}".strip())
    view = QTextBrowser(dlg)
    view.setObjectName("reportReadText")
    import html

    parts = [f"<p><b>{html.escape(_person(report.patient_name))}</b> · {html.escape(report.patient_id)} · "
             f"{html.escape(when)} {html.escape(report.study_description)}</p>"]  # fmt: skip
    for s in report.sections:
        if s.text.strip():
            parts.append(f"<h4>{html.escape(s.title)}</h4><p>{html.escape(s.text).replace(chr(10), '<br>')}</p>")
    state = STATE_STYLE.get(report.state, (report.state, ""))[0]
    parts.append(f"<p><i>{state}; signed by {html.escape(report.signed_by or '—')} {_when(report.signed_at)}</i></p>")
    view.setHtml("".join(parts))
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, dlg)
    buttons.rejected.connect(dlg.close)
    lay = QVBoxLayout(dlg)
    lay.addWidget(view)
    lay.addWidget(buttons)
    dlg.resize(560, 600)
    dlg.show()
    return dlg


def _when(dt: datetime | None) -> str:
    return dt.astimezone().strftime("%Y-%m-%d %H:%M") if dt is not None else ""


def _sentence(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text if text.endswith((".", "!", "?")) else text + "."


def _call(obj: Any, name: str) -> Any:
    fn = getattr(obj, name, None) if obj is not None else None
    if not callable(fn):
        return None
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - fall back to the archive's saved objects
        log.warning("report context %s: %s", name, exc)
        return None


def _current(reports: Sequence[Report]) -> Report | None:
    """The report the editor shows: the newest of the study (an addendum over its original)."""
    if not reports:
        return None
    return max(reports, key=lambda r: (r.version, r.created_at, r.pk))


def _config_language(config: Any) -> str:
    extra = getattr(config, "extra", None) or {}
    rep = extra.get("report") if isinstance(extra, dict) else None
    lang = str(rep.get("language", "")) if isinstance(rep, dict) else ""
    return lang if lang in LANGUAGES else ""


def _reports_for(archive: Any, config: Any) -> Reports:
    if config is not None:
        try:
            return Reports.from_config(archive, config)
        except NotImplementedError:
            pass
        except Exception as exc:  # noqa: BLE001 - the HL7 endpoints are the back end's business
            log.warning("[report] configuration: %s; reports without HL7 endpoints", exc)
    return Reports(archive)
