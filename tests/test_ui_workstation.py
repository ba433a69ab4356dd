"""The workstation shell driven for real (pytest-qt, offscreen): main window, study browser, import, live refresh.

The archive holds real third-party files (pydicom's test and character-set
samples) and generated demo studies; every check reads the widgets (model
display text, selection, signals, the status bar) and the rendered pixels.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import shutil
import socket
import sys
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QObject, QPoint, Qt, QTimer, Signal
from PySide6.QtGui import QFontMetrics, QImage
from PySide6.QtWidgets import QApplication, QPushButton, QWidget
from pytestqt.qtbot import QtBot

from conftest import free_port
from hilum.archive import Archive
from hilum.config import load_config
from hilum.ui.main_window import MainWindow
from hilum.ui.study_search import STUDY_COLUMNS, StudyCriteria

pytestmark = pytest.mark.gui

# Real sample files: pydicom's own test files (listed by name; never a pattern download).
SAMPLE_NAMES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "JPEG2000.dcm",
    "examples_palette.dcm",
    "examples_ybr_color.dcm",
    "test-SR.dcm",
    "liver_1frame.dcm",
    "rtplan.dcm",
    "MR_truncated.dcm",
]
NAME_COL = 0
TIMEOUT = 20_000  # ms; generous for a shared 2-core machine


def _sample_sources(pydicom_files: Path) -> list[Path]:
    charset = pydicom_files.parent / "charset_files"
    files = [pydicom_files / n for n in SAMPLE_NAMES if (pydicom_files / n).exists()]
    files += sorted(p for p in charset.iterdir() if p.suffix == ".dcm")
    return files


@pytest.fixture(scope="session")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generator's small demo set (5 patients, 7 studies, non-ASCII names), written once."""
    from hilum.dicom.generator import write_demo

    out = tmp_path_factory.mktemp("demo")
    write_demo(out, small=True)
    return out


@pytest.fixture(scope="session")
def template_data(tmp_path_factory: pytest.TempPathFactory, pydicom_files: Path, demo_folder: Path) -> Path:
    """A data folder with pydicom's samples and the demo studies ingested, copied for each test."""
    from hilum.archive.importer import import_paths

    root = tmp_path_factory.mktemp("template") / "data"
    with Archive(root) as a:
        report = import_paths(a, [*_sample_sources(pydicom_files), demo_folder])
        assert report.imported > 100 and report.rejected >= 1  # MR_truncated.dcm is rejected
    return root


@pytest.fixture
def data_copy(template_data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(template_data, dst)
    return dst


def _open_window(qtbot: QtBot, make_main_window: Any, data: Path) -> Iterator[MainWindow]:
    window = make_main_window(load_config(data), Archive(data))
    window.demo_small = True
    window.resize(1280, 800)
    window.show()
    qtbot.waitUntil(lambda: window.stats is not None and not window.browser.searching, timeout=TIMEOUT)
    try:
        yield window
    finally:
        for box in (window.importer.summary_box,):
            if box is not None:
                box.close()


@pytest.fixture
def window(qtbot: QtBot, make_main_window: Any, data_copy: Path) -> Iterator[MainWindow]:
    yield from _open_window(qtbot, make_main_window, data_copy)


@pytest.fixture
def empty_window(qtbot: QtBot, make_main_window: Any, data_dir: Path) -> Iterator[MainWindow]:
    yield from _open_window(qtbot, make_main_window, data_dir)


def _search(qtbot: QtBot, window: MainWindow, criteria: StudyCriteria) -> list[dict[str, Any]]:
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        window.browser.set_criteria(criteria)
    return window.browser.model.rows()


def _names(window: MainWindow) -> list[str]:
    m = window.browser.model
    return [m.display_text(r, NAME_COL) for r in range(m.rowCount())]


# ---------------------------------------------------------------- browsing


def test_lists_every_study_with_decoded_names(window: MainWindow) -> None:
    archive = window.archive
    model = window.browser.model
    assert model.rowCount() == archive.count("STUDY") > 20
    assert [c.title for c in STUDY_COLUMNS] == [
        model.headerData(i, Qt.Orientation.Horizontal) for i in range(model.columnCount())
    ]
    names = set(_names(window))
    # Specific Character Sets decoded into the index and shown as text (ISO_IR 100, 192, 2022 IR 87...).
    for expected in (
        "Müller, Jürgen",
        "Παπαδοπούλου, Ελένη",
        "Иванов, Иван Петрович",
        "Buc, Jérôme",
        "Äneas, Rüdiger",
        "Yamada, Tarou (山田 太郎)",
        "Wang, XiaoDong (王 小东)",
    ):
        assert expected in names
    # Newest first by default.
    dates = [r["StudyDate"] for r in model.rows() if r["StudyDate"]]
    assert dates == sorted(dates, reverse=True)
    assert window.tabs.tabText(0) == "Studies"
    assert "studies" in window.browser.result_label.text()


def test_status_bar_shows_archive_and_folder(window: MainWindow) -> None:
    stats = window.archive.stats()
    text = window.archive_label.text()
    assert f"{stats['patients']:,} patients" in text and f"{stats['studies']:,} studies" in text
    assert f"{stats['instances']:,} images" in text and "MB" in text
    assert window.folder_label.toolTip().endswith(str(window.config.data_dir))
    assert window.banner.isHidden()  # not empty: no demo offer


def test_search_by_name_wildcard_case_insensitive(qtbot: QtBot, window: MainWindow) -> None:
    rows = _search(qtbot, window, StudyCriteria(patient_name="müll"))
    assert len(rows) == 2 and set(_names(window)) == {"Müller, Jürgen"}
    rows = _search(qtbot, window, StudyCriteria(patient_name="ΠΑΠΑΔ"))
    assert len(rows) == 2 and set(_names(window)) == {"Παπαδοπούλου, Ελένη"}
    rows = _search(qtbot, window, StudyCriteria(patient_name="*xiao*"))
    assert len(rows) == 2
    rows = _search(qtbot, window, StudyCriteria(patient_name="nobody-by-that-name"))
    assert rows == [] and window.browser.result_label.text() == "No studies match"
    # Typing in the field searches by itself (debounced), off the GUI thread.
    window.browser.name_edit.clear()
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        qtbot.keyClicks(window.browser.name_edit, "buc")  # QTest types ASCII only
    assert set(_names(window)) == {"Buc, Jérôme"}


def test_search_by_date_range(qtbot: QtBot, window: MainWindow) -> None:
    everything = window.archive.query("STUDY", {})
    expected = {r["StudyInstanceUID"] for r in everything if "20261103" <= r["StudyDate"] <= "20261105"}
    assert len(expected) == 3
    rows = _search(qtbot, window, StudyCriteria(date_from=date(2026, 11, 3), date_to=date(2026, 11, 5)))
    assert {r["StudyInstanceUID"] for r in rows} == expected
    assert window.browser.date_from.text() == "2026-11-03"
    # Open-ended: from a date on.
    rows = _search(qtbot, window, StudyCriteria(date_from=date(2026, 11, 4)))
    assert {r["StudyInstanceUID"] for r in rows} == {
        r["StudyInstanceUID"] for r in everything if r["StudyDate"] >= "20261104"
    }
    # The "Any" button clears the range again.
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        qtbot.mouseClick(window.browser.any_date_button, Qt.MouseButton.LeftButton)
    assert window.browser.model.rowCount() == len(everything)
    assert window.browser.date_from.text() == "any"


def test_search_by_modality_and_accession(qtbot: QtBot, window: MainWindow) -> None:
    everything = window.archive.query("STUDY", {})
    for modality in ("MR", "US", "SR", "SEG", "CT"):
        expected = {r["StudyInstanceUID"] for r in everything if modality in r["ModalitiesInStudy"].split("\\")}
        rows = _search(qtbot, window, StudyCriteria(modality=modality))
        assert expected and {r["StudyInstanceUID"] for r in rows} == expected, modality
        assert window.browser.modality_combo.currentText() == modality
    rows = _search(qtbot, window, StudyCriteria(accession="ACC-100"))
    assert sorted(r["AccessionNumber"] for r in rows) == ["ACC-1001", "ACC-1002", "ACC-1003", "ACC-1004", "ACC-1005"]


def test_sort_by_clicking_headers(qtbot: QtBot, window: MainWindow) -> None:
    browser = window.browser
    header = browser.table.horizontalHeader()
    # A click on "Patient ID" sorts ascending through the query's order_by.
    with qtbot.waitSignal(browser.searchFinished, timeout=TIMEOUT):
        x = header.sectionViewportPosition(1) + header.sectionSize(1) // 2
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=_point(x, header.height() // 2))
    ids = [r["PatientID"] for r in browser.model.rows()]
    assert header.sortIndicatorSection() == 1
    assert ids == sorted(ids, reverse=header.sortIndicatorOrder() == Qt.SortOrder.DescendingOrder)
    # Images, descending.
    with qtbot.waitSignal(browser.searchFinished, timeout=TIMEOUT):
        browser.sort_by(9, descending=True)
    counts = [r["NumberOfStudyRelatedInstances"] for r in browser.model.rows()]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    # Patient name, ascending; a search keeps the chosen order.
    with qtbot.waitSignal(browser.searchFinished, timeout=TIMEOUT):
        browser.sort_by(0)
    rows = _search(qtbot, window, StudyCriteria(modality="CT"))
    names = [r["PatientName"] for r in rows]
    assert names == sorted(names) and len(names) > 3


def _point(x: int, y: int) -> QPoint:
    return QPoint(x, y)


def test_double_click_and_enter_open_the_study(qtbot: QtBot, window: MainWindow) -> None:
    table = window.browser.table
    model = window.browser.model
    row = 2
    uid = model.uid(row)
    rect = table.visualRect(model.index(row, 1))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())  # as a real double-click
    with qtbot.waitSignal(window.studyOpenRequested, timeout=TIMEOUT, check_params_cb=lambda u: u == uid):
        qtbot.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert window.browser.selected_study_uid() == uid
    # Enter on the current row.
    table.setFocus()
    qtbot.keyClick(table, Qt.Key.Key_Down)
    uid2 = model.uid(row + 1)
    assert window.browser.selected_study_uid() == uid2
    with qtbot.waitSignal(window.studyOpenRequested, timeout=TIMEOUT, check_params_cb=lambda u: u == uid2):
        qtbot.keyClick(table, Qt.Key.Key_Return)
    # open_study() itself is the public way in.
    with qtbot.waitSignal(window.studyOpenRequested, timeout=TIMEOUT, check_params_cb=lambda u: u == "1.2.3"):
        window.open_study("1.2.3")


def test_series_list_of_the_selected_study(qtbot: QtBot, window: MainWindow) -> None:
    _search(qtbot, window, StudyCriteria(patient_name="yamada"))
    browser = window.browser
    yamada = [i for i, r in enumerate(browser.model.rows()) if r["PatientID"] == "HIL-0003"]
    assert len(yamada) == 1
    uid = browser.model.uid(yamada[0])
    expected = window.archive.query("SERIES", {"StudyInstanceUID": uid})
    if browser.series_model.rowCount() != len(expected) or browser.selected_study_uid() != uid:
        with qtbot.waitSignal(browser.seriesLoaded, timeout=TIMEOUT):
            browser.select_study(uid)
    assert browser.series_model.rowCount() == len(expected) == 2
    assert {browser.series_model.uid(i) for i in range(2)} == {r["SeriesInstanceUID"] for r in expected}
    assert "Yamada, Tarou" in browser.series_title.text()
    # Double-clicking a series asks for that series.
    series_uid = browser.series_model.uid(1)
    rect = browser.series_table.visualRect(browser.series_model.index(1, 2))
    qtbot.mouseClick(browser.series_table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    with qtbot.waitSignal(
        window.seriesOpenRequested, timeout=TIMEOUT, check_params_cb=lambda s, se: (s, se) == (uid, series_uid)
    ):
        qtbot.mouseDClick(browser.series_table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())


# ---------------------------------------------------------------- import and live refresh


def test_import_with_progress_and_summary(
    qtbot: QtBot, empty_window: MainWindow, pydicom_files: Path, tmp_path: Path
) -> None:
    window = empty_window
    folder = tmp_path / "incoming" / "nested"
    folder.mkdir(parents=True)
    good = [pydicom_files / n for n in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")]
    for p in good:
        shutil.copy(p, folder / p.name)
    shutil.copy(pydicom_files / "MR_truncated.dcm", folder / "MR_truncated.dcm")
    (folder / "garbage.dcm").write_bytes(b"this is not DICOM at all" * 20)
    progress: list[tuple[int, int]] = []
    with qtbot.waitSignal(window.importFinished, timeout=60_000) as blocker:
        assert window.import_paths([tmp_path / "incoming"])
        assert window.importer.dialog is not None and window.importer.dialog.isVisible()
        window.importer._job.progressed.connect(lambda d, t, _label: progress.append((d, t)))  # type: ignore[union-attr]
        assert not window.import_paths([folder])  # one import at a time
    summary = blocker.args[0]
    assert (summary.imported, summary.duplicates, summary.rejected) == (3, 0, 2)
    assert {name for name, _ in summary.reasons} == {"MR_truncated.dcm", "garbage.dcm"}
    assert progress and progress[-1] == (5, 5)
    assert window.importer.dialog is None  # closed
    box = window.importer.summary_box
    assert box is not None and box.isVisible()
    assert "3 imported" in box.text() and "2 rejected" in box.text() and "garbage.dcm" in box.text()
    assert "3 imported" in window.statusBar().currentMessage()
    qtbot.waitUntil(lambda: window.browser.model.rowCount() == window.archive.count("STUDY") == 3, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: "3 images" in window.archive_label.text(), timeout=TIMEOUT)
    # Importing the same files again: all duplicates.
    with qtbot.waitSignal(window.importFinished, timeout=60_000) as blocker:
        window.import_paths([folder])
    assert (blocker.args[0].imported, blocker.args[0].duplicates, blocker.args[0].rejected) == (0, 3, 2)


def test_import_can_be_cancelled(qtbot: QtBot, empty_window: MainWindow, demo_folder: Path) -> None:
    window = empty_window
    window.importer.show_summary = False
    with qtbot.waitSignal(window.importFinished, timeout=60_000) as blocker:
        window.import_paths([demo_folder])
        dialog = window.importer.dialog
        assert dialog is not None
        cancel_button = dialog.findChild(QPushButton)
        qtbot.mouseClick(cancel_button, Qt.MouseButton.LeftButton)
    summary = blocker.args[0]
    assert summary.cancelled > 0
    assert summary.imported + summary.cancelled + summary.duplicates + summary.rejected == summary.total
    assert window.archive.count("IMAGE") == summary.imported < summary.total


def test_live_refresh_after_ingest_from_another_thread(qtbot: QtBot, window: MainWindow, pydicom_files: Path) -> None:
    before = window.browser.model.rowCount()
    instances_before = window.archive.stats()["instances"]
    # A file whose study is not in the archive yet, stored from another thread (as the DICOM node does).
    source = pydicom_files / "SC_rgb_small_odd.dcm"
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(window.archive.ingest(source, origin="dimse")))
    t.start()
    t.join()
    assert result[0].status == "stored"
    qtbot.waitUntil(lambda: window.browser.model.rowCount() == before + 1, timeout=TIMEOUT)
    assert result[0].study_instance_uid in {window.browser.model.uid(i) for i in range(before + 1)}
    qtbot.waitUntil(lambda: f"{instances_before + 1:,} images" in window.archive_label.text(), timeout=TIMEOUT)
    # A delete shows too.
    window.archive.delete("STUDY", result[0].study_instance_uid)
    qtbot.waitUntil(lambda: window.browser.model.rowCount() == before, timeout=TIMEOUT)


def test_empty_archive_offers_demo_studies(qtbot: QtBot, empty_window: MainWindow) -> None:
    window = empty_window
    assert window.banner.isVisible()
    assert window.browser.model.rowCount() == 0
    assert window.browser.result_label.text() == "No studies yet"
    with qtbot.waitSignal(window.importFinished, timeout=120_000) as blocker:
        qtbot.mouseClick(window.banner.demo_button, Qt.MouseButton.LeftButton)
    assert blocker.args[0].imported > 50 and blocker.args[0].rejected == 0
    qtbot.waitUntil(lambda: window.browser.model.rowCount() == 7, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: not window.banner.isVisible(), timeout=TIMEOUT)
    assert "Müller, Jürgen" in _names(window)


# ---------------------------------------------------------------- on screen


def _ink(image: QImage, background: int) -> int:
    """How many pixels of ``image`` differ clearly from the background colour (text, lines)."""
    img = image.convertToFormat(QImage.Format.Format_RGB32)
    bg = (background >> 16 & 255, background >> 8 & 255, background & 255)
    count = 0
    for y in range(0, img.height()):
        for x in range(0, img.width()):
            c = img.pixel(x, y)
            if abs((c >> 16 & 255) - bg[0]) + abs((c >> 8 & 255) - bg[1]) + abs((c & 255) - bg[2]) > 120:
                count += 1
    return count


def test_rendered_window_shows_the_names(qtbot: QtBot, window: MainWindow, tmp_path: Path) -> None:
    _search(qtbot, window, StudyCriteria(patient_id="HIL-"))
    table = window.browser.table
    model = window.browser.model
    shot = window.grab().toImage()
    assert shot.width() >= 1000 and shot.height() >= 600
    assert not shot.isNull()
    shot.save(str(tmp_path / "main.png"))
    # Every name cell has ink; an empty cell of the same row height has none.
    font = QFontMetrics(table.font())
    viewport = table.viewport().grab().toImage()
    rendered = 0
    for row in range(model.rowCount()):
        text = model.display_text(row, NAME_COL)
        rect = table.visualRect(model.index(row, NAME_COL))
        cell = viewport.copy(rect.adjusted(2, 2, -2, -2))
        base = cell.pixel(cell.width() - 1, cell.height() // 2)  # right of the text: the row's background
        ink = _ink(cell, base)
        assert ink > 20, f"row {row} ({text!r}) looks blank"
        if all(font.inFontUcs4(ord(ch)) for ch in text):  # CJK needs a font this machine may lack
            assert font.horizontalAdvance(text) <= rect.width() + 2, f"{text!r} is clipped"
        rendered += 1
    assert rendered == 7
    below = table.visualRect(model.index(model.rowCount() - 1, NAME_COL)).translated(0, 40 * 6)
    if below.bottom() < viewport.height():
        empty = viewport.copy(below)
        assert _ink(empty, empty.pixel(1, 1)) == 0
    # Greek and Cyrillic glyphs exist in the font used (not drawn as boxes).
    for name in ("Παπαδοπούλου, Ελένη", "Иванов, Иван Петрович", "Müller, Jürgen"):
        assert name in _names(window)
        assert all(font.inFontUcs4(ord(ch)) for ch in name)


# ---------------------------------------------------------------- menus, shortcuts, tabs


def test_shortcuts_and_help(qtbot: QtBot, window: MainWindow) -> None:
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=TIMEOUT)
    window.browser.table.setFocus()
    qtbot.keyClick(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: window.browser.name_edit.hasFocus(), timeout=TIMEOUT)
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        qtbot.keyClick(window, Qt.Key.Key_F5)
    keys = {a.objectName(): a.shortcut().toString() for a in window.actions() if a.objectName()}
    assert keys["importFilesAction"] == "Ctrl+I"
    assert keys["importFolderAction"] == "Ctrl+Shift+I"
    assert keys["findAction"] == "Ctrl+F"
    assert keys["refreshAction"] == "F5"
    assert keys["quitAction"] == "Ctrl+Q"
    window.add_shortcut_help("Viewer", "Ctrl+1", "Layout 1x1")
    dlg = window.show_shortcuts()
    try:
        html = window.shortcuts_html()
        for k in ("Ctrl+I", "Ctrl+F", "F5", "Enter", "Ctrl+Q", "Viewer", "Layout 1x1"):
            assert k in html
        assert dlg.isVisible()
    finally:
        dlg.close()
    about = window.show_about()
    assert "Hilum" in about.text()
    about.close()
    menus = [a.text() for a in window.menuBar().actions()]
    assert menus == ["&File", "&View", "Vie&wer", "&Tools", "&Report", "AI", "&Help"]  # Viewer and Tools: the viewer tab's actions; Report: issue 20; AI: issue 19
    file_items = [a.text() for a in window.file_menu.actions() if a.text()]
    assert file_items[:2] == ["&Import files…", "Import &folder…"] and file_items[-1] == "&Quit"


class _Closing(QWidget):
    closed = Signal()

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self.closed.emit()
        super().closeEvent(event)


def test_workspace_tabs(qtbot: QtBot, window: MainWindow) -> None:
    fixed = window.tabs.count()
    page = _Closing()
    index = window.add_workspace_tab(page, "Viewer", tooltip="a study")
    assert index == fixed and window.tabs.currentWidget() is page
    assert window.workspace_tabs() == [page]
    assert not window.close_workspace_tab(0)  # the browser stays
    with qtbot.waitSignal(page.closed, timeout=TIMEOUT):
        assert window.close_workspace_tab(index)
    assert window.workspace_tabs() == [] and window.tabs.count() == fixed
    # Ctrl+B brings the browser back; tabs left open are closed with the window (fixture).
    window.add_workspace_tab(_Closing(), "Another")
    window.show_browser()
    assert window.tabs.currentIndex() == 0


# ---------------------------------------------------------------- start-up


def test_run_gui_with_demo_and_node(qtbot: QtBot, no_leaked_widgets: Any, tmp_path: Path) -> None:
    """``hilum gui --demo`` on an empty folder: demo studies listed, the node's ports in the status bar."""
    from hilum.ui.app import run_gui

    data = tmp_path / "fresh"
    cfg = load_config(data)
    cfg.dicom_port, cfg.web_port, cfg.hl7_port = free_port(), free_port(), free_port()
    seen: dict[str, object] = {}

    def ready(win: MainWindow) -> None:
        win.importer.show_summary = False

        def finished(summary: object) -> None:
            seen["summary"] = summary

        def check() -> None:
            if "summary" in seen and win.browser.model.rowCount() == 7 and "DICOM" in win.node_label.text():
                seen["rows"] = win.browser.model.rowCount()
                seen["node"] = win.node_label.text()
                # Closing the last window ends app.exec(), as Ctrl+Q does.  (An extra app.quit() would
                # leave a second Quit event pending that breaks pytest-qt's waits in later tests.)
                win.close()
            else:
                timer.start()

        timer = QTimer(win)
        timer.setSingleShot(True)
        timer.setInterval(100)
        timer.timeout.connect(check)
        win.importFinished.connect(finished)
        timer.start()
        guard = QTimer(win)
        guard.setSingleShot(True)
        guard.timeout.connect(QApplication.closeAllWindows)
        guard.start(120_000)

    assert run_gui(cfg, demo=True, demo_small=True, start_node=True, on_ready=ready) == 0
    assert seen.get("rows") == 7, seen
    assert f"DICOM {cfg.dicom_port}" in str(seen["node"])
    with Archive(data) as a:
        assert a.count("STUDY") == 7


def test_node_port_in_use_does_not_stop_the_workstation(qtbot: QtBot, make_main_window: Any, data_copy: Path) -> None:
    from hilum.ui.app import NodeRunner

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = load_config(data_copy)
        cfg.dicom_port = busy.getsockname()[1]
        cfg.web_port, cfg.hl7_port = free_port(), free_port()
        archive = Archive(data_copy)
        window = make_main_window(cfg, archive)
        runner = NodeRunner(cfg, archive, window)
        try:
            window.show()
            runner.start()
            qtbot.waitUntil(lambda: "not running" in window.node_label.text(), timeout=TIMEOUT)
            assert window.browser.model.rowCount() > 0 or window.browser.searching
            qtbot.waitUntil(lambda: window.browser.model.rowCount() == archive.count("STUDY"), timeout=TIMEOUT)
        finally:
            runner.stop()


def test_cli_registers_gui_verb() -> None:
    from hilum.cli import build_parser
    from hilum.cli.workstation import run_workstation

    args = build_parser().parse_args(["gui", "--data", "/tmp/x", "--demo", "--small-demo", "--no-node"])
    assert args.handler is run_workstation
    assert (args.data, args.demo, args.small_demo, args.no_node) == ("/tmp/x", True, True, True)


def test_signal_emit_keeps_reference_counts() -> None:
    """PySide6 6.12.0 drops a reference to ``True`` on every Python-side ``Signal.emit`` (Python 3.11,
    where bools are not immortal); a few thousand emits later the interpreter aborts with
    "bool_dealloc: deallocating True or False".  Pin a PySide6 without the bug."""

    class Probe(QObject):
        ping = Signal(object)

    probe = Probe()
    before = sys.getrefcount(True)
    for _ in range(50):
        probe.ping.emit(None)
    lost = before - sys.getrefcount(True)
    import PySide6

    assert lost < 25, (
        f"PySide6 {PySide6.__version__} loses a reference to True per Signal.emit "
        f"({lost} in 50 emits): pin PySide6-Essentials != 6.12.0 (6.11.3 is good)"
    )
