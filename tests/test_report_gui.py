"""The report editor in the real main window, driven by the keyboard (issue 20b).

A generated CT study with a saved measurement (SR), a key image (KOS) and an AI result (a TID 1500
SR in a series "AI: …"), a prior study of the same patient with a signed report, and two orders
(one STAT). The tests open the study and its report with Ctrl+Shift+D, choose a template, type,
press the insert keys and check the text, sign through the dialog (a wrong password, then the
right one), check the badge's text and pixels and that typing no longer changes the text, write an
addendum; a viewer-role user is refused; a draft survives the window closing without a save and
reopens; a misspelt word is underlined (the QTextCharFormat of its range) and a suggestion from
the context menu replaces it; the worklist shows the report status, the turnaround and STAT first.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import shutil
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

pytest.importorskip("pytestqt")
from argon2 import PasswordHasher  # noqa: E402
from pydicom.sr.coding import Code  # noqa: E402
from PySide6.QtCore import Qt, QTimer  # noqa: E402
from PySide6.QtGui import QColor, QContextMenuEvent, QTextCharFormat  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QDialog, QMenu, QTextBrowser  # noqa: E402

from _viewer_data import STUDY, write_ct  # noqa: E402
from hilum.archive import Archive  # noqa: E402
from hilum.archive.orders import OrderBook, OrderInfo, PatientInfo, StepInfo  # noqa: E402
from hilum.archive.orders.reconcile import Reconciler  # noqa: E402
from hilum.archive.reports import AMENDED, DRAFT, FINAL, PRELIMINARY, Reports, Section  # noqa: E402
from hilum.archive.users import UserStore  # noqa: E402
from hilum.config import load_config  # noqa: E402
from hilum.dicom.annotations import Annotation, KeyImage  # noqa: E402
from hilum.dicom.generator import MUELLER, make_study  # noqa: E402
from hilum.dicom.geometry import Spacing  # noqa: E402
from hilum.dicom.sr import make_kos, make_measurement_sr  # noqa: E402
from hilum.ui.report import inserts  # noqa: E402
from hilum.ui.report.editor import STATE_STYLE, ReportEditor  # noqa: E402
from hilum.ui.report.spell import forget_spellers  # noqa: E402

pytestmark = pytest.mark.gui
TIMEOUT = 30_000
PASSWORD = "correct horse 1"
FAST_HASH = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PRIOR = make_study(MUELLER, accession="ACC-PRIOR", date="20250301", seed="report-gui-prior")
CTRL_ALT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier
CTRL_SHIFT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
ALT = Qt.KeyboardModifier.AltModifier


def _ai_sr(heads: list[pydicom.Dataset]) -> pydicom.Dataset:
    """What an AI plugin stores (issue 19a): a TID 1500 SR, Series Description "AI: <title> <version>"."""
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="Lung", uid=hd.UID()),
        finding_type=Code("39607008", "SCT", "Lung structure"),
        measurements=[
            hd.sr.Measurement(
                name=Code("118565006", "SCT", "Volume"), value=3400.0, unit=Code("mL", "UCUM", "milliliter")
            )
        ],  # fmt: skip
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=Code("121007", "DCM", "Device"),
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=hd.UID(), name="lung"),
            )
        ),
        procedure_reported=Code("77477000", "SCT", "CT"),
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=heads, content=report, series_instance_uid=hd.UID(), series_number=100,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="Hilum AI",
        series_description="AI: Lung fields 1.0.0",
    )  # fmt: skip


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("report-src")
    root = tmp_path_factory.mktemp("report-data") / "data"
    with Archive(root) as archive:
        book = OrderBook(archive)
        with book.transaction() as tx:
            p = tx.upsert_patient(PatientInfo(MUELLER.patient_id, name=MUELLER.name))
            tx.create_order(p, OrderInfo(accession_number="ACC-ROUTINE", description="CR chest", priority="ROUTINE",
                                         steps=[StepInfo(modality="CR", station_aet="CR1", start_date="20261102",
                                                         start_time="080000")]))  # fmt: skip
            tx.create_order(p, OrderInfo(accession_number=STUDY.accession, study_uid=STUDY.uid, description="CT chest",
                                         priority="STAT", steps=[StepInfo(modality="CT", station_aet="CT1",
                                                                          start_date="20261102", start_time="100000")]))  # fmt: skip
        paths = write_ct(src / "ax", rows=64, slices=8, thickness=5.0)
        paths += write_ct(src / "prior", rows=32, slices=3, thickness=5.0, study=PRIOR)
        assert all(r.ok for r in archive.ingest_many(paths))
        assert Reconciler(book).reconcile(STUDY.uid) == 1  # as the node does: the images meet their order
        heads = [pydicom.dcmread(BytesIO(archive.read(r["SOPInstanceUID"])), stop_before_pixels=True)
                 for r in archive.instances(study_uid=STUDY.uid)]  # fmt: skip
        heads.sort(key=lambda d: int(d.InstanceNumber))
        ann = Annotation("length", str(heads[3].SOPInstanceUID), 0, [(10.0, 20.0), (40.0, 20.0)], text="nodule")
        spacing = Spacing(float(heads[3].PixelSpacing[0]), float(heads[3].PixelSpacing[1]), "PixelSpacing")
        assert archive.ingest(make_measurement_sr(heads, [ann], {ann.uid: ann.values(None, spacing, "HU")})).ok
        assert archive.ingest(make_kos(heads, [KeyImage(str(heads[5].SOPInstanceUID), 0, "", "")])).ok
        assert archive.ingest(_ai_sr(heads)).ok
        users = UserStore.of(archive, hasher=FAST_HASH)
        users.add("drhouse", "radiologist", PASSWORD)
        users.add("viewer1", "viewer", PASSWORD)
        reports = Reports(archive, users=users)
        old = reports.create(PRIOR.uid, user="drhouse", template="ct_chest.en",
                             sections=[Section("findings", "Findings", "Small nodule, 4 mm.")])  # fmt: skip
        reports.sign(old.report_id, user="drhouse", password=PASSWORD)
    return root


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "config"
    monkeypatch.setenv("HILUM_CONFIG_DIR", str(folder))
    forget_spellers()
    yield folder
    forget_spellers()


@pytest.fixture
def data(template: Path, tmp_path: Path, config_dir: Path) -> Path:
    d = tmp_path / "data"
    shutil.copytree(template, d)
    cfg = d / "hilum.toml"
    cfg.write_text('[workstation]\nuser = "drhouse"\n', encoding="utf-8")
    return d


def _window(qtbot: Any, make_main_window: Any, data: Path) -> Any:
    archive = Archive(data)
    win = make_main_window(load_config(data), archive, viewer=True)
    win.reporting.reports = Reports(archive, users=UserStore.of(archive, hasher=FAST_HASH))
    win.resize(1500, 950)
    win.show()
    qtbot.waitExposed(win)
    _activate(qtbot, win)
    qtbot.waitUntil(lambda: win.browser.model.rowCount() == 2 and not win.browser.searching, timeout=TIMEOUT)
    return win


@pytest.fixture
def window(qtbot: Any, make_main_window: Any, data: Path) -> Any:
    return _window(qtbot, make_main_window, data)


def _activate(qtbot: Any, win: Any) -> None:
    """The window active (no window manager under Xvfb: nothing else activates it), so its shortcuts work."""
    win.activateWindow()
    win.raise_()
    qtbot.waitUntil(win.isActiveWindow, timeout=TIMEOUT)


def _open_report(qtbot: Any, win: Any) -> ReportEditor:
    """Select the study in the browser, press Ctrl+Shift+D: the viewer and the Report dock open."""
    table = win.browser.table
    row = win.browser.model.find(STUDY.uid)
    table.setFocus()
    table.selectRow(row)
    _activate(qtbot, win)
    QTest.keyClick(table, Qt.Key.Key_D, CTRL_SHIFT)
    qtbot.waitUntil(lambda: STUDY.uid in win.reporting.editors, timeout=TIMEOUT)
    editor = win.reporting.editors[STUDY.uid]
    qtbot.waitUntil(lambda: not editor._loading and bool(editor.sections), timeout=TIMEOUT)
    viewer = win._test_viewer.viewer_for(STUDY.uid)
    assert viewer is not None and win.tabs.currentWidget() is viewer
    assert win.reporting.dock.isVisible()
    qtbot.waitUntil(lambda: editor.sections[0].hasFocus(), timeout=TIMEOUT)
    return editor


def _type(widget: Any, text: str) -> None:
    """Type *text* as a keyboard (or dictation software) does: a key press and release per character
    (QTest.keyClicks takes ASCII only; accents come as events carrying their text)."""
    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QKeyEvent

    for ch in text:
        if ch.isascii():
            QTest.keyClicks(widget, ch)
            continue
        for kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
            QApplication.sendEvent(widget, QKeyEvent(kind, 0, Qt.KeyboardModifier.NoModifier, ch))


def _key(qtbot: Any, editor: ReportEditor, key: Qt.Key, mods: Any = Qt.KeyboardModifier.NoModifier) -> None:
    w = QApplication.focusWidget() or editor
    QTest.keyClick(w, key, mods)


def _badge_has(editor: ReportEditor, colour: str) -> bool:
    """The badge, as painted, shows its state's colour (the pixels, not the style sheet)."""
    img = editor.badge.grab().toImage()
    want = QColor(colour)
    hits = 0
    for x in range(0, img.width(), 2):
        c = img.pixelColor(x, img.height() // 2)
        if abs(c.red() - want.red()) + abs(c.green() - want.green()) + abs(c.blue() - want.blue()) < 30:
            hits += 1
    return hits >= 5


def _underlined(edit: Any, word: str) -> bool:
    """Whether *word* of the section is drawn with the spell-check underline (the highlighter's format)."""
    doc = edit.document()
    block = doc.begin()
    while block.isValid():
        start = block.text().find(word)
        if start >= 0:
            for r in block.layout().formats():
                if r.start <= start and start + len(word) <= r.start + r.length:
                    if r.format.underlineStyle() == QTextCharFormat.UnderlineStyle.SpellCheckUnderline:
                        return True
        block = block.next()
    return False


# ------------------------------------------------------------------ the round trip


def test_report_by_keyboard_insert_sign_addendum(qtbot: Any, window: Any) -> None:
    editor = _open_report(qtbot, window)
    assert editor.template is not None and editor.template.id == "ct_chest.en"  # CT, CHEST, "CT Thorax"
    help_text = window.shortcuts_html()  # Help -> Keyboard shortcuts lists the editor's keys
    for keys in (
        "Ctrl+Shift+D",
        "Ctrl+Alt+M",
        "Ctrl+Alt+K",
        "Ctrl+Alt+C",
        "Ctrl+Alt+A",
        "Ctrl+Shift+S",
        "Ctrl+Shift+A",
    ):
        assert keys in help_text
    assert window.findChild(QMenu, "reportMenu") is not None
    assert editor.badge.text() == "New"
    # the patient's prior report is listed beside
    assert editor.priors_list.count() == 1 and "2025-03-01" in editor.priors_list.item(0).text()
    item = editor.priors_list.item(0)
    QTest.mouseClick(editor.priors_list.viewport(), Qt.MouseButton.LeftButton,
                     pos=editor.priors_list.visualItemRect(item).center())  # fmt: skip
    qtbot.waitUntil(lambda: editor.findChild(QDialog, "reportReadDialog") is not None, timeout=TIMEOUT)
    prior_dialog = editor.findChild(QDialog, "reportReadDialog")
    assert "Small nodule, 4 mm." in prior_dialog.findChild(QTextBrowser).toPlainText()
    assert "signed by drhouse" in prior_dialog.findChild(QTextBrowser).toPlainText()
    prior_dialog.close()
    _activate(qtbot, window)
    editor.focus_section(0)

    # choose the French template with the keyboard: Alt+T to the combo, then the arrow keys
    _key(qtbot, editor, Qt.Key.Key_T, ALT)
    assert editor.template_combo.hasFocus()
    target = editor.template_combo.findData("ct_chest.fr")
    while editor.template_combo.currentIndex() != target:
        QTest.keyClick(editor.template_combo, Qt.Key.Key_Down if editor.template_combo.currentIndex() < target
                       else Qt.Key.Key_Up)  # fmt: skip
    qtbot.waitUntil(lambda: editor.template is not None and editor.template.id == "ct_chest.fr", timeout=TIMEOUT)
    assert [e.title for e in editor.sections] == ["Indication", "Technique", "Comparaison", "Résultats", "Conclusion"]
    assert editor.language == "fr" and editor.language_combo.currentData() == "fr"

    # Alt+1: indication; type as dictation software would
    _key(qtbot, editor, Qt.Key.Key_1, ALT)
    assert editor.sections[0].hasFocus()
    QTest.keyClicks(editor.sections[0], "Toux chronique.")
    # Tab goes to the next section (technique), Alt+4 to findings
    _key(qtbot, editor, Qt.Key.Key_Tab)
    assert editor.sections[1].hasFocus()
    _key(qtbot, editor, Qt.Key.Key_4, ALT)
    findings = editor.section("findings")
    assert findings is not None and findings.hasFocus()
    findings.moveCursor(findings.textCursor().MoveOperation.End)
    QTest.keyClick(findings, Qt.Key.Key_Return)

    with qtbot.waitSignal(editor.inserted, timeout=TIMEOUT) as got:
        _key(qtbot, editor, Qt.Key.Key_M, CTRL_ALT)
    assert got.args[0] == "measurements"
    spacing = 360.0 / 64
    assert got.args[1] == f"nodule : Longueur {30 * spacing:.1f} mm (série 1, image 4)".replace(".", ",")
    with qtbot.waitSignal(editor.inserted, timeout=TIMEOUT) as got:
        _key(qtbot, editor, Qt.Key.Key_K, CTRL_ALT)
    assert got.args[1] == "Images clés : série 1 image 6."
    with qtbot.waitSignal(editor.inserted, timeout=TIMEOUT) as got:
        _key(qtbot, editor, Qt.Key.Key_A, CTRL_ALT)
    assert got.args[1].startswith("AI (Lung fields 1.0.0): Lung structure")
    assert "Volume 3400 mL" in got.args[1] and "(série 100)" in got.args[1]
    text = findings.toPlainText()
    assert "nodule : Longueur" in text and "Images clés" in text and "AI (Lung fields 1.0.0)" in text
    # the comparison: into the comparison section, replacing the template's "none"
    _key(qtbot, editor, Qt.Key.Key_3, ALT)
    with qtbot.waitSignal(editor.inserted, timeout=TIMEOUT) as got:
        _key(qtbot, editor, Qt.Key.Key_C, CTRL_ALT)
    comparison = editor.section("comparison")
    assert comparison is not None
    assert comparison.toPlainText() == got.args[1]
    assert got.args[1].startswith("CT du 2025-03-01 (CT Thorax), 1 an 8 mois auparavant.")

    # sign: Ctrl+Shift+S, a wrong password first
    _key(qtbot, editor, Qt.Key.Key_S, CTRL_SHIFT)
    qtbot.waitUntil(lambda: editor.sign_dialog is not None and editor.sign_dialog.isVisible(), timeout=TIMEOUT)
    dlg = editor.sign_dialog
    assert dlg is not None and dlg.user.text() == "drhouse"
    QTest.keyClicks(dlg.password, "wrong password")
    with qtbot.waitSignal(editor.failed, timeout=TIMEOUT):
        QTest.keyClick(dlg.password, Qt.Key.Key_Return)
    assert dlg.isVisible() and "password" in dlg.message.text().lower()
    assert editor.state == DRAFT and editor.badge.text() == "Draft"
    assert _badge_has(editor, STATE_STYLE[DRAFT][1])
    QTest.keyClicks(dlg.password, PASSWORD)
    QTest.keyClick(dlg.password, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: editor.state == FINAL, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: editor.sign_dialog is None, timeout=TIMEOUT)
    assert editor.badge.text() == "Final"
    assert _badge_has(editor, STATE_STYLE[FINAL][1]) and not _badge_has(editor, STATE_STYLE[DRAFT][1])
    signed = window.reporting.reports.get(editor.report.report_id)
    assert signed.state == FINAL and signed.signed_by == "drhouse"
    stored = {s.key: s.text for s in signed.sections}
    assert stored["indication"] == "Toux chronique." and "Images clés" in stored["findings"]
    assert stored["comparison"].startswith("CT du 2025-03-01")

    # read-only: typing changes nothing; the insert keys are off; Addendum is on
    _activate(qtbot, window)  # the dialog was the active window (no window manager under Xvfb)
    qtbot.waitUntil(lambda: editor.sections[0].hasFocus(), timeout=TIMEOUT)  # the editor took the focus back
    before = findings.toPlainText()
    findings.setFocus()
    QTest.keyClicks(findings, "more text")
    QTest.keyClick(findings, Qt.Key.Key_M, CTRL_ALT)
    qtbot.wait(200)
    assert findings.toPlainText() == before and findings.isReadOnly()
    assert not editor.actions_by_name["insert_measurements"].isEnabled()
    assert editor.actions_by_name["addendum"].isEnabled()

    # addendum: Ctrl+Shift+A; the original stays as it is and is listed beside
    original = editor.report.report_id
    _key(qtbot, editor, Qt.Key.Key_A, CTRL_SHIFT)
    qtbot.waitUntil(lambda: editor.report.report_id != original, timeout=TIMEOUT)
    assert editor.badge.text() == "Addendum · Draft"
    assert [e.key for e in editor.sections] == ["addendum"]
    assert editor.priors_list.item(0).text().startswith("This study · v1 Final")
    add = editor.sections[0]
    qtbot.waitUntil(add.hasFocus, timeout=TIMEOUT)
    _type(add, "Correction : nodule de 9 mm, lobe supérieur.")
    _key(qtbot, editor, Qt.Key.Key_S, CTRL_SHIFT)
    qtbot.waitUntil(lambda: editor.sign_dialog is not None, timeout=TIMEOUT)
    QTest.keyClicks(editor.sign_dialog.password, PASSWORD)
    QTest.keyClick(editor.sign_dialog.password, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: editor.state == AMENDED, timeout=TIMEOUT)
    assert editor.badge.text() == "Amended" and _badge_has(editor, STATE_STYLE[AMENDED][1])
    reports = window.reporting.reports
    assert reports.get(original).state == FINAL
    assert {s.key: s.text for s in reports.get(original).sections} == stored
    assert reports.get(editor.report.report_id).sections[0].text == "Correction : nodule de 9 mm, lobe supérieur."


def test_viewer_role_cannot_sign(qtbot: Any, window: Any) -> None:
    editor = _open_report(qtbot, window)
    _type(editor.sections[0], "Douleur thoracique, fièvre.")
    _key(qtbot, editor, Qt.Key.Key_S, CTRL_SHIFT)
    qtbot.waitUntil(lambda: editor.sign_dialog is not None and editor.sign_dialog.isVisible(), timeout=TIMEOUT)
    dlg = editor.sign_dialog
    dlg.user.selectAll()
    QTest.keyClicks(dlg.user, "viewer1")
    QTest.keyClicks(dlg.password, PASSWORD)
    with qtbot.waitSignal(editor.failed, timeout=TIMEOUT) as failed:
        QTest.keyClick(dlg.password, Qt.Key.Key_Return)
    assert "radiologist" in failed.args[0]
    assert "radiologist" in dlg.message.text() and dlg.isVisible()
    assert editor.state == DRAFT and not editor.read_only
    assert window.reporting.reports.get(editor.report.report_id).state == DRAFT
    QTest.keyClick(dlg, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: editor.sign_dialog is None, timeout=TIMEOUT)
    # Ctrl+Alt+P: preliminary (stored, not signed; the viewer-role user may not sign, the draft goes on)
    _activate(qtbot, window)
    editor.focus_section(0)
    _key(qtbot, editor, Qt.Key.Key_P, CTRL_ALT)
    qtbot.waitUntil(lambda: editor.state == PRELIMINARY, timeout=TIMEOUT)
    assert editor.badge.text() == "Preliminary" and _badge_has(editor, STATE_STYLE[PRELIMINARY][1])
    assert not editor.read_only and not editor.actions_by_name["preliminary"].isEnabled()
    assert window.reporting.reports.get(editor.report.report_id).state == PRELIMINARY


def test_draft_survives_closing_the_window_and_autosaves(qtbot: Any, make_main_window: Any, data: Path) -> None:
    win = _window(qtbot, make_main_window, data)
    editor = _open_report(qtbot, win)
    # the autosave timer alone (no focus change): the draft is in the archive
    with qtbot.waitSignal(editor.saved, timeout=TIMEOUT):
        _type(editor.sections[0], "Fièvre.")
    rid = editor.report.report_id
    assert win.reporting.reports.get(rid).sections[0].text == "Fièvre."
    # leaving a section saves at once (the timer made too long to be the one that saves)
    editor._autosave.setInterval(600_000)
    QTest.keyClick(editor.sections[0], Qt.Key.Key_2, ALT)
    assert editor.sections[1].hasFocus()
    _type(editor.sections[1], "CT sans injection.")
    with qtbot.waitSignal(editor.saved, timeout=5000):
        QTest.keyClick(editor.sections[1], Qt.Key.Key_Tab)
    assert editor.sections[2].hasFocus()
    assert win.reporting.reports.get(rid).sections[1].text.endswith("CT sans injection.")
    # more typing, then the window closes at once (before the autosave's delay)
    QTest.keyClicks(editor.sections[0], " Toux depuis 3 semaines.")
    assert editor.dirty
    win.close()
    QApplication.processEvents()
    win2 = _window(qtbot, make_main_window, data)
    editor2 = _open_report(qtbot, win2)
    assert editor2.report is not None and editor2.report.report_id == rid
    assert editor2.sections[0].toPlainText() == "Fièvre. Toux depuis 3 semaines."
    assert editor2.badge.text() == "Draft" and editor2.status.text() == "Draft reopened"


def test_spellcheck_underlines_and_suggestion_replaces(qtbot: Any, window: Any, config_dir: Path) -> None:
    editor = _open_report(qtbot, window)
    assert editor.language == "en"
    findings = editor.section("findings")
    assert findings is not None
    findings.setFocus()
    findings.selectAll()
    QTest.keyClicks(findings, "Small pleural efusion on the right.")
    qtbot.waitUntil(lambda: _underlined(findings, "efusion"), timeout=TIMEOUT)
    assert not _underlined(findings, "pleural") and not _underlined(findings, "Small")
    # the cursor in the word, the context menu: the first entries are the suggestions
    cursor = findings.textCursor()
    cursor.setPosition(findings.toPlainText().index("efusion") + 2)
    findings.setTextCursor(cursor)
    seen: list[str] = []

    def choose() -> None:
        menu = QApplication.activePopupWidget()
        assert isinstance(menu, QMenu)
        seen.extend(a.text() for a in menu.actions())
        act = next(a for a in menu.actions() if a.text() == "effusion")
        menu.setActiveAction(act)
        QTest.keyClick(menu, Qt.Key.Key_Return)

    QTimer.singleShot(300, choose)
    # what Qt sends for the Menu key (or Shift+F10) on the word at the cursor (QTest's key events go
    # to the widget, not through the window, which turns that key into this event)
    pos = findings.cursorRect().center()
    QApplication.sendEvent(findings.viewport(), QContextMenuEvent(QContextMenuEvent.Reason.Keyboard, pos,
                                                                  findings.viewport().mapToGlobal(pos)))  # fmt: skip
    qtbot.waitUntil(lambda: "effusion" in findings.toPlainText(), timeout=TIMEOUT)
    assert findings.toPlainText() == "Small pleural effusion on the right."
    assert "Add “efusion” to dictionary" in seen
    qtbot.waitUntil(lambda: not _underlined(findings, "effusion"), timeout=TIMEOUT)

    # French: chosen in the language combo; a word added to the dictionary is no longer underlined
    editor.language_combo.setFocus()
    QTest.keyClick(editor.language_combo, Qt.Key.Key_Down)
    assert editor.language == "fr"
    impression = editor.section("impression")
    impression.setFocus()
    _type(impression, "Épanchement pleural droit, poumonn gauche normal, hilumome.")
    qtbot.waitUntil(lambda: _underlined(impression, "poumonn") and _underlined(impression, "hilumome"),
                    timeout=TIMEOUT)  # fmt: skip
    assert not _underlined(impression, "Épanchement") and not _underlined(impression, "pleural")
    menu = impression.spelling_menu(impression.cursorRect(_cursor_at(impression, "hilumome")).center())
    add = next(a for a in menu.actions() if a.objectName() == "spellAddWord")
    add.trigger()
    menu.deleteLater()
    qtbot.waitUntil(lambda: not _underlined(impression, "hilumome"), timeout=TIMEOUT)
    assert _underlined(impression, "poumonn")
    assert "hilumome" in (config_dir / "words.fr.txt").read_text(encoding="utf-8")


def _cursor_at(edit: Any, word: str) -> Any:
    c = edit.textCursor()
    c.setPosition(edit.toPlainText().index(word) + 1)
    return c


# ------------------------------------------------------------------ the worklist


def test_worklist_report_status_turnaround_and_stat_first(qtbot: Any, window: Any) -> None:
    wl = window.worklist
    window.show_worklist()
    wl.span.setCurrentText("All dates")
    wl.status.setCurrentText("All")
    qtbot.waitUntil(lambda: wl.model.rowCount() == 2, timeout=TIMEOUT)
    rows = wl.model.rows()
    assert [r["AccessionNumber"] for r in rows] == [STUDY.accession, "ACC-ROUTINE"]  # STAT first, though later
    cols = {c.key: i for i, c in enumerate(__import__("hilum.ui.worklist", fromlist=["COLUMNS"]).COLUMNS)}

    def cell(r: int, key: str) -> str:
        return str(wl.model.data(wl.model.index(r, cols[key])) or "")

    assert cell(0, "RequestedProcedurePriority") == "STAT"
    assert cell(0, "_report") == "" and cell(0, "_since_images").endswith("min")
    assert cell(0, "_since_order").endswith("min") and cell(1, "_since_images") == ""
    # Report on the selected row (the button): the study opens with its report
    wl.table.selectRow(0)
    assert wl.report_button.isEnabled()
    QTest.mouseClick(wl.report_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: STUDY.uid in window.reporting.editors, timeout=TIMEOUT)
    editor = window.reporting.editors[STUDY.uid]
    qtbot.waitUntil(lambda: not editor._loading and bool(editor.sections), timeout=TIMEOUT)
    with qtbot.waitSignal(editor.saved, timeout=TIMEOUT):
        _type(editor.sections[0], "Dyspnée.")
    window.show_worklist()  # the worklist follows the report's changes by itself (no refresh here)
    qtbot.waitUntil(lambda: cell(0, "_report") == "Draft", timeout=TIMEOUT)
    window.reporting.reports.sign(editor.report.report_id, user="drhouse", password=PASSWORD)
    qtbot.waitUntil(lambda: cell(0, "_report") == "Final", timeout=TIMEOUT)
    colour = wl.model.data(wl.model.index(0, cols["_report"]), Qt.ItemDataRole.ForegroundRole).color()
    assert colour == QColor(STATE_STYLE[FINAL][1])


# ------------------------------------------------------------------ headless parts


def test_templates_shipped_user_and_choice(tmp_path: Path, config_dir: Path) -> None:
    from hilum.ui.report.templates import TemplateError, choose_template, load_template, load_templates

    shipped = load_templates()
    ids = {t.id for t in shipped}
    for exam in ("ct_chest", "ct_head", "mr_brain", "cr_chest", "generic"):
        assert {f"{exam}.en", f"{exam}.fr"} <= ids
    for t in shipped:
        assert [s.key for s in t.sections] == ["indication", "technique", "comparison", "findings", "impression"]
    pick = lambda **kw: choose_template(shipped, **kw).id  # noqa: E731
    assert pick(modality="CT", body_part="HEAD", description="") == "ct_head.en"
    assert pick(modality="CT", body_part="", description="Scanner thoracique", language="fr") == "ct_chest.fr"
    assert pick(modality="MR", body_part="BRAIN", language="fr") == "mr_brain.fr"
    assert pick(modality="DX", body_part="CHEST") == "cr_chest.en"
    assert pick(modality="US", body_part="ABDOMEN") == "generic.en"
    # the user's own folder: a file of the same name replaces the shipped one; a bad one is reported
    mine = config_dir / "report_templates"
    mine.mkdir(parents=True)
    (mine / "ct_chest.en.toml").write_text(
        'name = "My chest"\nlanguage = "en"\nmodalities = ["CT"]\nbody_parts = ["CHEST"]\n'
        '[[sections]]\nkey = "findings"\ntitle = "Findings"\ntext = "Normal."\n',
        encoding="utf-8",
    )
    (mine / "broken.toml").write_text('name = "x"\nlanguage = "de"\n[[sections]]\nkey="a"\ntitle="A"\n')
    problems: list[str] = []
    again = {t.id: t for t in load_templates(problems=problems)}
    assert again["ct_chest.en"].name == "My chest" and again["ct_chest.en"].user
    assert problems == ["broken.toml: language must be one of en, fr, not 'de'"]
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ncolour = 1\n[[sections]]\nkey = "a"\ntitle = "A"\n')
    with pytest.raises(TemplateError, match="unknown key"):
        load_template(bad)


def test_insert_formatting() -> None:
    f = inserts.format_measurement
    assert (
        f("length", {"length": 23.44, "unit": "mm"}, where="series 3, image 45")
        == "Length 23.4 mm (series 3, image 45)"
    )
    assert f("length", {"length": 23.44, "unit": "mm"}, where="série 3, image 45", language="fr") == (
        "Longueur 23,4 mm (série 3, image 45)"
    )
    assert f("ellipse", {"area": 120.5, "area_unit": "mm²", "mean": 35.24, "sd": 4.1, "unit": "HU"},
             label="liver") == "liver: Area 120.5 mm², mean 35.2 HU, SD 4.1"  # fmt: skip
    assert f("angle", {"angle": 32.06, "unit": "deg"}) == "Angle 32.1°"
    assert f("arrow", {}) == ""
    ref = inserts.ImageRef(3, 45, "Axial")
    keys = [KeyImage("b", 0, "", ""), KeyImage("a", 2, "", "")]
    index = {"a": inserts.ImageRef(3, 10), "b": ref}
    assert inserts.key_image_text(keys, index) == "Key images: series 3 image 10 frame 3; series 3 image 45."
    assert inserts.comparison_text(None) == "None."


def test_speller_french_english_and_user_words(config_dir: Path) -> None:
    from hilum.ui.report.spell import Speller

    fr = Speller("fr")
    text = "Pas d'épanchement pleural ; l'hémorragie T2 en hypersignal FLAIR, poumonn sous-dural."
    assert [w for _s, _n, w in fr.misspelt(text)] == ["poumonn"]
    start, length, word = fr.misspelt(text)[0]
    assert text[start : start + length] == word
    assert "poumon" in [s.lower() for s in fr.suggestions("Poumonn")] or "poumons" in fr.suggestions("poumonn")
    en = Speller("en")
    assert [w for _s, _n, w in en.misspelt("No lymphadenopathy, a pleural efusion; CT C5-C6.")] == ["efusion"]
    en.add_word("Hilumoma")
    assert en.misspelt("A hilumoma.") == []
    assert Speller("en").misspelt("A hilumoma.") == []  # kept in the user's list
    assert (config_dir / "words.en.txt").read_text(encoding="utf-8").split() == ["Hilumoma"]
