"""The workstation's "Send anonymised to…" and "Export to CD/USB…", driven by keyboard and mouse (offscreen):
a real DCMTK storescp receives the anonymised study; the medium is read back by dcmdump."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QDialog, QDialogButtonBox, QMenu

from conftest import free_port, wait_port
from hilum.archive import Archive
from hilum.archive.importer import import_paths
from hilum.config import Peer, load_config

pytestmark = pytest.mark.gui
TIMEOUT = 60_000
CTRL_SHIFT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hilum.dicom.generator import write_demo

    src = tmp_path_factory.mktemp("demo")
    write_demo(src, small=True)
    return src


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(["/usr/bin/storescp", "-aet", "RESEARCH", "-od", str(out), "+xa", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TCP_NODELAY": "1"})  # fmt: skip
    try:
        wait_port(port)
        yield port, out
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def window(qtbot: Any, make_main_window: Any, demo: Path, tmp_path: Path, storescp: tuple[int, Path]) -> Any:
    data = tmp_path / "data"
    archive = Archive(data)
    import_paths(archive, [demo / "HIL-0004", demo / "HIL-0001"])
    config = load_config(data)
    config.peers["research"] = Peer(aet="RESEARCH", host="127.0.0.1", port=storescp[0])
    win = make_main_window(config, archive)
    win.resize(1200, 800)
    win.show()
    qtbot.waitExposed(win)
    qtbot.waitUntil(lambda: win.browser.model.rowCount() == 3 and not win.browser.searching, timeout=TIMEOUT)
    return win


def _study(window: Any, patient_id: str) -> str:
    uid = str(window.archive.query("STUDY", {"PatientID": patient_id})[0]["StudyInstanceUID"])
    assert window.browser.select_study(uid)
    return uid


def _dialog(qtbot: Any, name: str) -> QDialog:
    found: list[QDialog] = []

    def visible() -> bool:
        found[:] = [w for w in QApplication.topLevelWidgets() if isinstance(w, QDialog) and w.objectName() == name
                    and w.isVisible()]  # fmt: skip
        return bool(found)

    qtbot.waitUntil(visible, timeout=TIMEOUT)
    return found[0]


def _click_ok(dlg: QDialog) -> None:
    box = dlg.findChild(QDialogButtonBox)
    button = box.button(QDialogButtonBox.StandardButton.Ok)
    QTest.mouseClick(button, Qt.MouseButton.LeftButton)


def test_menu_shortcuts_context_menu_and_help(qtbot: Any, window: Any) -> None:
    actions = {a.objectName(): a for a in window.file_menu.actions()}
    send, export = actions["sendAnonymisedAction"], actions["exportMediaAction"]
    assert send.shortcut().toString() == "Ctrl+Shift+N" and export.shortcut().toString() == "Ctrl+Shift+X"
    assert not send.icon().isNull() and send.toolTip() and export.toolTip()
    keys = {s.keys for s in window.shortcut_help()}
    assert {"Ctrl+Shift+N", "Ctrl+Shift+X"} <= keys
    # no other action of the window has those keys
    mine = {send, export}
    others = [a.shortcut().toString() for a in window.findChildren(type(send)) if a not in mine]
    assert "Ctrl+Shift+N" not in others and "Ctrl+Shift+X" not in others
    # the study browser's context menu offers both
    _study(window, "HIL-0004")
    table = window.browser.table
    row = window.browser.model.find(window.browser.selected_study_uid())
    pos = table.visualRect(table.model().index(row, 0)).center()
    table.customContextMenuRequested.emit(pos)
    menu = window.browser.context_menu
    assert isinstance(menu, QMenu)
    names = [a.objectName() for a in menu.actions()]
    assert "sendAnonymisedAction" in names and "exportMediaAction" in names
    menu.close()


def test_export_to_usb_folder_by_keyboard(qtbot: Any, window: Any, tmp_path: Path) -> None:
    study = _study(window, "HIL-0001")
    window.activateWindow()
    QTest.keyClick(window, Qt.Key.Key_X, CTRL_SHIFT)
    dlg = _dialog(qtbot, "exportMediaDialog")
    QTest.mouseClick(dlg.findChild(object, "mediaFolder"), Qt.MouseButton.LeftButton)
    path = dlg.findChild(object, "mediaPath")
    out = tmp_path / "usb"
    path.setText(str(out))
    _click_ok(dlg)
    ctl = window.deid_media
    qtbot.waitUntil(lambda: ctl.last_result is not None or bool(ctl.last_error), timeout=TIMEOUT)
    assert not ctl.last_error, ctl.last_error
    assert ctl.last_result.instances == 10 and (out / "DICOMDIR").exists() and (out / "INDEX.HTM").exists()
    dump = subprocess.run(["dcmdump", str(out / "DICOMDIR")], capture_output=True, encoding="latin-1", timeout=60)
    assert dump.stdout.count("[IMAGE]") == 10 and study in dump.stdout
    assert "Wrote 10 instances" in window.statusBar().currentMessage()


def test_send_anonymised_to_a_real_peer(qtbot: Any, window: Any, storescp: tuple[int, Path]) -> None:
    study = _study(window, "HIL-0004")
    window.activateWindow()
    QTest.keyClick(window, Qt.Key.Key_N, CTRL_SHIFT)
    dlg = _dialog(qtbot, "sendAnonymisedDialog")
    QTest.mouseClick(dlg.findChild(object, "deidDates"), Qt.MouseButton.LeftButton)
    QTest.keyClicks(dlg.findChild(object, "deidProject"), "lung")
    _click_ok(dlg)
    ctl = window.deid_media
    qtbot.waitUntil(lambda: ctl.last_result is not None or bool(ctl.last_error), timeout=TIMEOUT)
    assert not ctl.last_error, ctl.last_error
    assert ctl.last_result["sent"] == 10 and not ctl.last_result["failed"]
    files = list(storescp[1].iterdir())
    assert len(files) == 10
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.PatientIdentityRemoved == "YES" and ds.StudyInstanceUID != study
        assert ds.LongitudinalTemporalInformationModified == "MODIFIED" and ds.ClinicalTrialProtocolID == "lung"
        assert "Иванов" not in str(ds.PatientName)
    from hilum.archive.deid_store import DeidStore

    assert DeidStore(window.archive).mapping(project="lung", original=study)[0]["replacement"] == ds.StudyInstanceUID


def test_no_selection_is_one_clear_sentence(qtbot: Any, window: Any) -> None:
    window.browser.table.clearSelection()
    window.browser.table.setCurrentIndex(window.browser.table.model().index(-1, -1))
    if window.browser.selected_study_uid():
        pytest.skip("the browser keeps a current study")
    window.deid_media.export_dialog()
    assert window.deid_media.last_error == "Select a study in the browser first."
    for w in QApplication.topLevelWidgets():
        if w.objectName() == "deidMediaError":
            w.close()
