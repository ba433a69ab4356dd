"""DICOM peers in the workstation: search (C-FIND), open (C-GET / C-MOVE), Send to (C-STORE), transfers.

Real components on loopback, driven as a person drives them: a second
``hilum serve`` (another process) holding a study is a configured peer; the
workstation's source combo is switched with the keyboard, the search field
typed into and Enter pressed, a study double-clicked (retrieved into the local
archive, opened in a viewer tab: UIDs and pixels checked), a local study sent
with the study table's context menu, a failed send retried with the transfers
panel's Retry button once the peer is up.  Third-party peers: Orthanc answers
C-FIND and C-MOVE (to the workstation's own node), DCMTK's storescp takes a
File → Send to.
"""

from __future__ import annotations

import ctypes
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QEvent, QPoint, Qt  # noqa: E402
from PySide6.QtGui import QContextMenuEvent, QImage, QKeyEvent, QKeySequence  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QMenu  # noqa: E402

from _viewer_data import STUDY, hu_point_to_pixel, write_ct  # noqa: E402
from conftest import free_port, orthanc_process, wait_port  # noqa: E402
from hilum.archive import Archive  # noqa: E402
from hilum.config import Config, Peer  # noqa: E402
from hilum.dicom.generator import generate_ct_series, make_study  # noqa: E402
from hilum.dicom.generator.people import Patient  # noqa: E402
from hilum.dimse import scu  # noqa: E402
from hilum.node import Node  # noqa: E402
from hilum.ui.transfers import TransferState  # noqa: E402

pytestmark = pytest.mark.gui
TIMEOUT = 30_000
ROWS = 32

OTHER = Patient("Okafor^Ada", "HIL-0777", "19700102", "F", ("ISO_IR 100",))


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies (a crashed test leaves no server behind)."""
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    """A server in its own process, quiet, ended with the test process (:func:`_die_with_parent`)."""
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TCP_NODELAY": "1"}, preexec_fn=_die_with_parent)  # fmt: skip


def _serve(data: Path, port: int, aet: str) -> subprocess.Popen[bytes]:
    """``hilum serve`` in its own process (this checkout's code: PYTHONPATH is passed on)."""
    return _spawn([sys.executable, "-m", "hilum", "serve", "--data", str(data), "--aet", aet,
                   "--dicom-port", str(port), "--web-port", str(free_port()), "--hl7-port", str(free_port())])  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def peer_serve(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A second Hilum node (``hilum serve``) on loopback holding :data:`STUDY` (a CT of 3 slices)."""
    data = tmp_path / "peer"
    with Archive(data) as archive:
        assert all(r.ok for r in archive.ingest_many(write_ct(tmp_path / "ct", rows=ROWS, slices=3)))
        sops = sorted(r["SOPInstanceUID"] for r in archive.query("IMAGE", {"StudyInstanceUID": STUDY.uid}))
        pixels = {sop: pydicom.dcmread(io.BytesIO(archive.read(sop))).PixelData for sop in sops}
    port = free_port()
    proc = _serve(data, port, "PEER")
    try:
        wait_port(port, 60)
        yield {"port": port, "sops": sops, "pixels": pixels, "proc": proc}
    finally:
        _stop(proc)


def _local_study(tmp_path: Path, archive: Archive) -> tuple[str, list[str]]:
    """Another patient's study in the workstation's own archive (to send): two CT series, 2 + 3 slices."""
    study = make_study(OTHER, accession="SEND01", date="20260401", seed="ui-dimse-send")
    instances = generate_ct_series(study, rows=ROWS, columns=ROWS, slices=2, seed=3) + generate_ct_series(
        study, rows=ROWS, columns=ROWS, slices=3, seed=4, series_number=2, series_description="Second"
    )
    for ds in instances:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        assert archive.ingest(buf.getvalue()).ok
    return study.uid, sorted(str(ds.SOPInstanceUID) for ds in instances)


def _pick_source(qtbot: Any, window: Any, label_start: str) -> None:
    """Choose a source with the keyboard on the focused combo (Down until its label shows)."""
    combo = window.remote_sources.selector.combo
    combo.setFocus()
    qtbot.waitUntil(combo.hasFocus, timeout=5000)
    key = (
        Qt.Key.Key_Down
        if combo.currentIndex() < combo.findText(label_start, Qt.MatchFlag.MatchStartsWith)
        else Qt.Key.Key_Up
    )
    for _ in range(combo.count()):
        if combo.currentText().startswith(label_start):
            return
        with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
            QTest.keyClick(combo, key)
    assert combo.currentText().startswith(label_start), combo.currentText()


def _type_search(qtbot: Any, window: Any, text: str) -> Any:
    edit = window.browser.name_edit
    edit.setFocus()
    edit.clear()
    for ch in text:  # QTest.keyClicks asserts on non-ASCII text: a key event per character instead
        for kind in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
            QApplication.sendEvent(
                edit,
                QKeyEvent(
                    kind,
                    Qt.Key.Key_unknown if not ch.isascii() else QKeySequence(ch.upper())[0].key(),
                    Qt.KeyboardModifier.NoModifier,
                    ch,
                ),
            )
    assert edit.text() == text
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT) as found:
        QTest.keyClick(edit, Qt.Key.Key_Return)
    return found.args[0]


def _row_center(table: Any, row: int) -> QPoint:
    return table.visualRect(table.model().index(row, 0)).center()  # type: ignore[no-any-return]


def _double_click_study(window: Any, study_uid: str) -> None:
    table = window.browser.table
    row = window.browser.model.find(study_uid)
    assert row >= 0
    pos = _row_center(table, row)
    QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)  # as a real
    QTest.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)  # double-click


def _click_menu_path(qtbot: Any, menu: QMenu, *names: str) -> None:
    """Click through a shown menu: each name is a submenu's or (last) an action's object name."""
    qtbot.waitUntil(menu.isVisible, timeout=5000)
    name, rest = names[0], names[1:]
    for act in menu.actions():
        sub = act.menu()
        if act.objectName() == name or (sub is not None and sub.objectName() == name):
            QTest.mouseClick(
                menu, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, menu.actionGeometry(act).center()
            )
            if rest:
                assert sub is not None, name
                _click_menu_path(qtbot, sub, *rest)
            return
    raise AssertionError(f"no {name!r} in {[a.text() for a in menu.actions()]}")


def _context_menu(browser: Any, study_uid: str) -> QMenu:
    """Right-click a study row: the browser's context menu, shown."""
    row = browser.model.find(study_uid)
    assert row >= 0
    viewport, pos = browser.table.viewport(), _row_center(browser.table, row)
    QTest.mouseClick(viewport, Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier, pos)
    # ... and the context-menu event the window system sends with a right click (QTest sends none).
    QApplication.sendEvent(viewport, QContextMenuEvent(QContextMenuEvent.Reason.Mouse, pos, viewport.mapToGlobal(pos)))
    assert browser.context_menu is not None and browser.selected_study_uid() == study_uid
    return browser.context_menu  # type: ignore[no-any-return]


def _send_with_context_menu(qtbot: Any, window: Any, study_uid: str, peer: str) -> None:
    _click_menu_path(qtbot, _context_menu(window.browser, study_uid), "sendToSubmenu", f"sendTo:{peer}")


def _panel_row(window: Any, transfer: Any) -> int:
    return window.transfers.panel.row_of(transfer)  # type: ignore[no-any-return]


def _wait_finished(qtbot: Any, window: Any, count: int) -> Any:
    queue = window.transfers.queue
    qtbot.waitUntil(lambda: len(queue.transfers) >= count and queue.transfers[count - 1].finished, timeout=TIMEOUT)
    return queue.transfers[count - 1]


def _peer_studies(port: int, aet: str, study_uid: str) -> list[dict[str, Any]]:
    target = scu.Target("127.0.0.1", port, aet, "CHECKER", timeout=30)
    return [
        scu.dataset_to_dict(ds)
        for ds in scu.find(target, "IMAGE", {"StudyInstanceUID": study_uid, "SOPInstanceUID": ""})
    ]


def _check_viewer_pixels(qtbot: Any, window: Any, study_uid: str) -> None:
    """The study opened in a viewer tab from the local archive, and its soft tissue shows as such."""
    from hilum.ui.viewer.viewer_widget import StudyViewer

    qtbot.waitUntil(
        lambda: any(isinstance(w, StudyViewer) and w.study_uid == study_uid for w in window.workspace_tabs()),
        timeout=TIMEOUT,
    )
    viewer = next(w for w in window.workspace_tabs() if isinstance(w, StudyViewer) and w.study_uid == study_uid)
    assert viewer.archive is window.archive and window.tabs.currentWidget() is viewer
    qtbot.waitUntil(lambda: viewer.active_viewport().volume is not None
                    and viewer.active_viewport().volume.complete and not viewer.active_viewport().volume.preview,
                    timeout=TIMEOUT)  # fmt: skip
    vp = viewer.active_viewport()
    canvas = viewer.viewport_widget(0).canvas
    qtbot.waitUntil(lambda: canvas.image_paint_count > 0, timeout=5000)
    img = canvas.grab().toImage().convertToFormat(QImage.Format.Format_Grayscale8)
    arr = np.frombuffer(img.constBits(), np.uint8, img.bytesPerLine() * img.height()).reshape(img.height(), -1)
    x, y = vp.image_to_canvas(*hu_point_to_pixel(0, -40, ROWS))
    assert 100 < arr[int(y), int(x)] < 160  # soft tissue through the header's window
    x, y = vp.image_to_canvas(*hu_point_to_pixel(0, -150, ROWS))
    assert arr[int(y), int(x)] == 0  # air outside the body


def test_peer_search_open_send_and_retry(
    qtbot: Any, make_main_window: Any, peer_serve: dict[str, Any], tmp_path: Path
) -> None:
    down_port = free_port()
    cfg = Config(
        data_dir=tmp_path / "ws",
        aet="HILUMWS",
        peers={
            "peer": Peer(aet="PEER", host="127.0.0.1", port=peer_serve["port"]),
            "later": Peer(aet="LATER", host="127.0.0.1", port=down_port),
        },
    )
    local = Archive(cfg.data_dir)
    other_uid, other_sops = _local_study(tmp_path, local)
    window = make_main_window(cfg, local, viewer=True)
    window.show()
    qtbot.waitExposed(window)
    qtbot.waitUntil(lambda: window.browser.model.rowCount() == 1, timeout=TIMEOUT)

    # The peers are sources beside the local archive (and the DICOMweb ones).
    combo = window.remote_sources.selector.combo
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert labels[:3] == ["Local archive", "later (DICOM LATER)", "peer (DICOM PEER)"], labels

    # Pick the peer: its studies are listed by C-FIND, and "Searching …" gives way to the result.
    _pick_source(qtbot, window, "peer")
    assert window.remote_sources.active_peer == "peer"
    assert window.browser.model.rowCount() == 1
    message = window.statusBar().currentMessage()
    assert "Searching" not in message and "1 study found on peer" in message, message
    assert not window.remote_sources.selector.remove_button.isEnabled()  # peers live in hilum.toml

    # Search by name: typed, Enter.
    result = _type_search(qtbot, window, "mül")
    assert not result.error and len(result.rows) == 1
    row = window.browser.model.row(0)
    assert row["StudyInstanceUID"] == STUDY.uid and row["PatientName"] == "Müller^Jürgen"
    assert row["NumberOfStudyRelatedInstances"] == 3
    assert window.browser.model.display_text(0, 0) == "Müller, Jürgen"
    qtbot.waitUntil(lambda: window.browser.series_model.rowCount() == 1, timeout=TIMEOUT)  # SERIES-level C-FIND
    assert _type_search(qtbot, window, "nobody").rows == []
    _type_search(qtbot, window, "Mü")

    # Double-click: retrieved (C-GET) into the local archive through the transfers queue, then opened.
    assert local.count("IMAGE", {"StudyInstanceUID": STUDY.uid}) == 0
    _double_click_study(window, STUDY.uid)
    retrieve = _wait_finished(qtbot, window, 1)
    assert retrieve.state is TransferState.DONE, retrieve.error
    assert (retrieve.kind, retrieve.state, retrieve.done, retrieve.total) == ("retrieve", TransferState.DONE, 3, 3)
    assert "3 retrieved by C-GET" in retrieve.summary
    assert window.transfers.dock.isVisible()
    got = sorted(r["SOPInstanceUID"] for r in local.query("IMAGE", {"StudyInstanceUID": STUDY.uid}))
    assert got == peer_serve["sops"]
    for sop in got:
        assert pydicom.dcmread(io.BytesIO(local.read(sop))).PixelData == peer_serve["pixels"][sop]
    _check_viewer_pixels(qtbot, window, STUDY.uid)
    # Again: all of it is here already, so the peer is not asked (the viewer tab comes forward).
    window.show_browser()
    _double_click_study(window, STUDY.uid)
    again = _wait_finished(qtbot, window, 2)
    assert again.state is TransferState.DONE and again.summary == "all 3 already in the local archive"
    qtbot.waitUntil(lambda: window.tabs.currentWidget() is not window.browser_page, timeout=TIMEOUT)

    # Back to the local archive (keyboard), then Send to… the peer from the study table's context menu.
    window.show_browser()
    _pick_source(qtbot, window, "Local archive")
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        QTest.mouseClick(window.browser.clear_button, Qt.MouseButton.LeftButton)
    assert window.browser.model.rowCount() == 2
    _send_with_context_menu(qtbot, window, other_uid, "peer")
    sent = _wait_finished(qtbot, window, 3)
    panel = window.transfers.panel
    assert sent.state is TransferState.DONE, sent.error
    r = _panel_row(window, sent)
    assert panel.status_text(r).startswith("Done: 5 sent to PEER@127.0.0.1")
    assert (panel.progress_bar(r).value(), panel.progress_bar(r).maximum()) == (5, 5)
    assert sorted(x["SOPInstanceUID"] for x in _peer_studies(peer_serve["port"], "PEER", other_uid)) == other_sops

    # A peer that is down: the transfer fails with the reason; Retry once it is up succeeds.
    _send_with_context_menu(qtbot, window, other_uid, "later")
    failed = _wait_finished(qtbot, window, 4)
    assert failed.state is TransferState.FAILED
    r = _panel_row(window, failed)
    assert "cannot connect" in panel.status_text(r) and "refused" in panel.status_text(r), panel.status_text(r)
    QTest.mouseClick(
        panel.table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, _row_center(panel.table, r)
    )
    assert panel.retry_button.isEnabled() and not panel.cancel_button.isEnabled()
    later = Node(Config(data_dir=tmp_path / "later", aet="LATER", dicom_port=down_port), only=["dimse"])
    later.start()
    try:
        QTest.mouseClick(panel.retry_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: failed.finished, timeout=TIMEOUT)
        assert failed.state is TransferState.DONE and failed.attempts == 2, failed.error
        assert panel.status_text(r).startswith("Done: 5 sent")
        assert (
            sorted(x["SOPInstanceUID"] for x in later.archive.query("IMAGE", {"StudyInstanceUID": other_uid}))
            == other_sops
        )
    finally:
        later.stop()
    # Clear finished: the done transfers leave the list.
    QTest.mouseClick(panel.clear_button, Qt.MouseButton.LeftButton)
    assert panel.table.rowCount() == 0


def test_searching_message_gives_way_to_an_error(qtbot: Any, make_main_window: Any, tmp_path: Path) -> None:
    """A peer that does not answer: the browser says why, and "Searching …" does not stay."""
    cfg = Config(
        data_dir=tmp_path / "ws", aet="HILUMWS", peers={"gone": Peer(aet="GONE", host="127.0.0.1", port=free_port())}
    )
    window = make_main_window(cfg, Archive(cfg.data_dir))
    window.show()
    qtbot.waitExposed(window)
    _pick_source(qtbot, window, "gone")
    message = window.statusBar().currentMessage()
    assert message.startswith("Search on gone failed:") and "refused" in message, message
    assert window.browser.result_label.text().startswith("Search failed")


def _rest(port: int, method: str, path: str, body: bytes | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    data = resp.read()
    assert resp.status == 200, (path, resp.status, data[:200])
    return json.loads(data)


@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Orthanc is not installed")
def test_orthanc_peer_search_and_open_by_c_move(qtbot: Any, make_main_window: Any, tmp_path: Path) -> None:
    """Orthanc as the peer: C-FIND from the browser, C-MOVE to the workstation's own node on open."""
    orthanc_port, http_port, ws_port = free_port(), free_port(), free_port()
    files = write_ct(tmp_path / "ct", rows=ROWS, slices=3)
    ocfg = {
        "Name": "HilumQR",
        "StorageDirectory": str(tmp_path / "ostorage"),
        "IndexDirectory": str(tmp_path / "oindex"),
        "HttpPort": http_port,
        "DicomPort": orthanc_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True,
        "DefaultEncoding": "Utf8",
        "DicomModalities": {"ws": ["HILUMWS", "127.0.0.1", ws_port]},
    }
    cfg = Config(
        data_dir=tmp_path / "ws",
        aet="HILUMWS",
        dicom_port=ws_port,
        peers={"orthanc": Peer(aet="ORTHANC", host="127.0.0.1", port=orthanc_port, retrieve="move")},
    )
    local = Archive(cfg.data_dir)
    node = Node(cfg, archive=local, only=["dimse"])  # what the workstation starts beside its window
    with orthanc_process(tmp_path, ocfg, lambda: _rest(http_port, "GET", "/system")["DicomAet"] == "ORTHANC"):
        for f in files:
            _rest(http_port, "POST", "/instances", f.read_bytes())
        node.start()
        try:
            window = make_main_window(cfg, local, viewer=True)
            window.show()
            qtbot.waitExposed(window)
            _pick_source(qtbot, window, "orthanc")
            result = _type_search(qtbot, window, "Mül")
            assert [r["StudyInstanceUID"] for r in result.rows] == [STUDY.uid]
            assert window.browser.model.row(0)["NumberOfStudyRelatedInstances"] == 3
            with qtbot.waitSignal(window.remote_sources.retrieved, timeout=TIMEOUT):
                _double_click_study(window, STUDY.uid)
            t = window.transfers.queue.transfers[0]
            assert t.state is TransferState.DONE and "3 retrieved by C-MOVE" in t.summary, t.error
            expected = sorted(str(pydicom.dcmread(f).SOPInstanceUID) for f in files)
            assert (
                sorted(r["SOPInstanceUID"] for r in local.query("IMAGE", {"StudyInstanceUID": STUDY.uid})) == expected
            )
            _check_viewer_pixels(qtbot, window, STUDY.uid)
        finally:
            node.stop()


def test_dcmtk_dcmqrscp_peer_search_and_open_by_c_get(qtbot: Any, make_main_window: Any, tmp_path: Path) -> None:
    """DCMTK's dcmqrscp as the peer (filled by DCMTK's storescu): C-FIND from the browser, C-GET on open."""
    if not Path("/usr/bin/dcmqrscp").exists():
        pytest.skip("DCMTK is not installed")
    port, db = free_port(), tmp_path / "qrdb"
    db.mkdir()
    (tmp_path / "dcmqrscp.cfg").write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQR {db} RW (200, 1024mb) ANY\nAETable END\n"
    )
    qr = _spawn(["/usr/bin/dcmqrscp", "-c", str(tmp_path / "dcmqrscp.cfg"), str(port)])
    try:
        wait_port(port)
        files = write_ct(tmp_path / "ct", rows=ROWS, slices=3)
        subprocess.run(
            ["/usr/bin/storescu", "-aec", "DCMQR", "127.0.0.1", str(port), *map(str, files)], check=True, timeout=60
        )
        cfg = Config(
            data_dir=tmp_path / "ws", aet="HILUMWS", peers={"dcmqr": Peer(aet="DCMQR", host="127.0.0.1", port=port)}
        )
        local = Archive(cfg.data_dir)
        window = make_main_window(cfg, local, viewer=True)
        window.show()
        qtbot.waitExposed(window)
        _pick_source(qtbot, window, "dcmqr")
        result = _type_search(qtbot, window, "Müller")
        assert [r["StudyInstanceUID"] for r in result.rows] == [STUDY.uid]
        assert window.browser.model.display_text(0, 0) == "Müller, Jürgen"
        # A peer's study is not in the local archive: its context menu's "Send study to" is disabled.
        menu = _context_menu(window.browser, STUDY.uid)
        sub = next(a.menu() for a in menu.actions() if a.menu() is not None)
        assert sub.objectName() == "sendToSubmenu" and not sub.isEnabled()
        QTest.keyClick(menu, Qt.Key.Key_Escape)
        qtbot.waitUntil(lambda: window.browser.context_menu is None, timeout=5000)
        # Double-click the series: a SERIES-level C-GET, then the series opens.
        qtbot.waitUntil(lambda: window.browser.series_model.rowCount() == 1, timeout=TIMEOUT)
        series_table = window.browser.series_table
        pos = _row_center(series_table, 0)
        QTest.mouseClick(series_table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
        QTest.mouseDClick(series_table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
        t = _wait_finished(qtbot, window, 1)
        assert t.state is TransferState.DONE and t.summary == "3 retrieved by C-GET", t.error
        assert t.what == "Müller, Jürgen — CT Thorax, series 1"
        stored = {r["SOPInstanceUID"]: r for r in local.query("IMAGE", {"StudyInstanceUID": STUDY.uid})}
        for f in files:
            ds = pydicom.dcmread(f)
            assert pydicom.dcmread(io.BytesIO(local.read(str(ds.SOPInstanceUID)))).PixelData == ds.PixelData
        assert len(stored) == 3
        _check_viewer_pixels(qtbot, window, STUDY.uid)
    finally:
        _stop(qr)  # type: ignore[arg-type]


def test_file_send_to_dcmtk_storescp(qtbot: Any, make_main_window: Any, tmp_path: Path) -> None:
    """File → Send to ▸ a DCMTK storescp: from a viewer tab the shown series, from the browser the whole
    study; every instance arrives with its UIDs and pixels as stored."""
    from hilum.ui.viewer.viewer_widget import StudyViewer

    if not Path("/usr/bin/storescp").exists():
        pytest.skip("DCMTK is not installed")
    port, out = free_port(), tmp_path / "received"
    out.mkdir()
    scp = _spawn(["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out), "+xa", str(port)])
    try:
        wait_port(port)
        cfg = Config(
            data_dir=tmp_path / "ws", aet="HILUMWS", peers={"dcmtk": Peer(aet="STORESCP", host="127.0.0.1", port=port)}
        )
        local = Archive(cfg.data_dir)
        study_uid, sops = _local_study(tmp_path, local)
        window = make_main_window(cfg, local, viewer=True)
        window.show()
        qtbot.waitExposed(window)
        qtbot.waitUntil(lambda: window.browser.model.rowCount() == 1, timeout=TIMEOUT)

        def received() -> dict[str, Any]:
            return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in out.iterdir())}

        # A viewer tab: File → Send to ▸ (shown series) dcmtk.
        _double_click_study(window, study_uid)
        qtbot.waitUntil(lambda: isinstance(window.tabs.currentWidget(), StudyViewer), timeout=TIMEOUT)
        viewer = window.tabs.currentWidget()
        qtbot.waitUntil(lambda: bool(viewer.active_viewport().series_uid), timeout=TIMEOUT)
        shown = viewer.active_viewport().series_uid
        series_sops = sorted(r["SOPInstanceUID"] for r in local.query("IMAGE", {"SeriesInstanceUID": shown}))
        _open_file_menu(window)
        _click_menu_path(qtbot, window.file_menu, "sendToMenu", "sendSeriesTo:dcmtk")
        t = _wait_finished(qtbot, window, 1)
        assert t.state is TransferState.DONE, t.error
        assert t.summary == f"{len(series_sops)} sent to STORESCP@127.0.0.1:{port}" and len(series_sops) < len(sops)
        assert sorted(received()) == series_sops

        # The study browser: File → Send to ▸ dcmtk sends the selected study.
        window.show_browser()
        _open_file_menu(window)
        _click_menu_path(qtbot, window.file_menu, "sendToMenu", "sendTo:dcmtk")
        t = _wait_finished(qtbot, window, 2)
        assert t.state is TransferState.DONE, t.error
        assert t.summary == f"{len(sops)} sent to STORESCP@127.0.0.1:{port}"
        got = received()
        assert sorted(got) == sops
        for sop in sops:
            assert got[sop].PixelData == pydicom.dcmread(io.BytesIO(local.read(sop))).PixelData
        assert QApplication.activePopupWidget() is None
    finally:
        _stop(scp)  # type: ignore[arg-type]


def _open_file_menu(window: Any) -> None:
    bar = window.menuBar()
    QTest.mouseClick(
        bar,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
        bar.actionGeometry(window.file_menu.menuAction()).center(),
    )


def test_cancel_a_transfer_to_a_peer_that_does_not_answer(qtbot: Any, make_main_window: Any, tmp_path: Path) -> None:
    """A peer that takes the connection and never answers: the send runs until Cancel, then shows so
    (and can be retried)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # connections complete in the backlog; nobody reads the A-ASSOCIATE-RQ
    try:
        port = silent.getsockname()[1]
        cfg = Config(
            data_dir=tmp_path / "ws", aet="HILUMWS", peers={"silent": Peer(aet="SILENT", host="127.0.0.1", port=port)}
        )
        local = Archive(cfg.data_dir)
        study_uid, _sops = _local_study(tmp_path, local)
        window = make_main_window(cfg, local)
        window.show()
        qtbot.waitExposed(window)
        qtbot.waitUntil(lambda: window.browser.model.rowCount() == 1, timeout=TIMEOUT)
        _send_with_context_menu(qtbot, window, study_uid, "silent")
        queue, panel = window.transfers.queue, window.transfers.panel
        qtbot.waitUntil(lambda: bool(queue.transfers) and queue.transfers[0].state is TransferState.RUNNING)
        t = queue.transfers[0]
        r = _panel_row(window, t)
        QTest.mouseClick(
            panel.table.viewport(),
            Qt.MouseButton.LeftButton,
            Qt.KeyboardModifier.NoModifier,
            _row_center(panel.table, r),
        )
        assert panel.cancel_button.isEnabled() and not panel.retry_button.isEnabled()
        QTest.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
        assert t.state is TransferState.CANCELLED and panel.status_text(r) == "Cancelled"
        assert panel.retry_button.isEnabled() and not panel.cancel_button.isEnabled()
        assert t.cancel_event.is_set()
        # View → Transfers (Ctrl+Shift+T) hides the panel and shows it again (a shortcut needs its window
        # active: under Xvfb without a window manager a shown window is not always made so by itself).
        assert window.transfers.dock.isVisible() and window.transfers.show_action.isChecked()
        window.activateWindow()
        qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=TIMEOUT)
        QTest.keyClick(window, Qt.Key.Key_T, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
        assert not window.transfers.dock.isVisible()
        QTest.keyClick(window, Qt.Key.Key_T, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
        assert window.transfers.dock.isVisible()
    finally:
        silent.close()  # the association attempt in flight ends (connection reset)


def test_peer_rows_read_as_the_archive_rows(tmp_path: Path) -> None:
    """Oracle: what the browser shows of a peer's studies and series (C-FIND rows through the table
    columns) reads exactly as what it shows of the same archive searched locally; series sort by number."""
    from hilum.ui.dimse_source import PeerArchiveView, peer_target
    from hilum.ui.study_search import SERIES_COLUMNS, STUDY_COLUMNS, StudyCriteria, StudySearch

    port = free_port()
    node = Node(Config(data_dir=tmp_path / "peer", aet="PEER", dicom_port=port), only=["dimse"])
    node.start()
    try:
        study = make_study(OTHER, accession="SORT01", date="20250101", seed="ui-dimse-sort")
        for number in (10, 2):
            for ds in generate_ct_series(study, rows=8, columns=8, slices=1, seed=number, series_number=number):
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                assert node.archive.ingest(buf.getvalue()).ok
        assert all(r.ok for r in node.archive.ingest_many(write_ct(tmp_path / "ct", rows=8, slices=2)))
        cfg = Config(
            data_dir=tmp_path / "ws", aet="HILUMWS", peers={"p": Peer(aet="PEER", host="127.0.0.1", port=port)}
        )
        view = PeerArchiveView(peer_target(cfg, cfg.peers["p"]), "p")
        for criteria in (StudyCriteria(), StudyCriteria(patient_name="oka"), StudyCriteria(modality="CT")):
            remote = StudySearch(view).studies(criteria, ["PatientName"])
            here = StudySearch(node.archive).studies(criteria, ["PatientName"])
            assert remote.total == here.total > 0
            assert [[c.text(r) for c in STUDY_COLUMNS] for r in remote.rows] == [
                [c.text(r) for c in STUDY_COLUMNS] for r in here.rows
            ]
        remote_series = StudySearch(view).series(study.uid)
        assert [r["SeriesNumber"] for r in remote_series] == [2, 10]
        assert [[c.text(r) for c in SERIES_COLUMNS] for r in remote_series] == [
            [c.text(r) for c in SERIES_COLUMNS] for r in StudySearch(node.archive).series(study.uid)
        ]
    finally:
        node.stop()


def test_c_move_from_a_peer_that_does_not_know_this_node_fails_with_the_reason(
    qtbot: Any, make_main_window: Any, tmp_path: Path
) -> None:
    """Open by C-MOVE from a peer that has no [peers] entry for this workstation: the transfer fails,
    says so, and nothing is opened."""
    port = free_port()
    node = Node(Config(data_dir=tmp_path / "peer", aet="PEER", dicom_port=port), only=["dimse"])
    node.start()
    try:
        assert all(r.ok for r in node.archive.ingest_many(write_ct(tmp_path / "ct", rows=8, slices=2)))
        cfg = Config(
            data_dir=tmp_path / "ws",
            aet="HILUMWS",
            peers={"mover": Peer(aet="PEER", host="127.0.0.1", port=port, retrieve="move")},
        )
        local = Archive(cfg.data_dir)
        window = make_main_window(cfg, local)
        window.show()
        qtbot.waitExposed(window)
        _pick_source(qtbot, window, "mover")
        assert window.browser.model.rowCount() == 1
        tabs = window.tabs.count()
        _double_click_study(window, STUDY.uid)
        t = _wait_finished(qtbot, window, 1)
        assert t.state is TransferState.FAILED
        assert t.error.startswith("C-MOVE to HILUMWS from PEER@127.0.0.1") and "status 0xA801" in t.error, t.error
        assert "know AE title HILUMWS" in t.error
        assert window.transfers.panel.status_text(0) == f"Failed: {t.error}"
        assert window.tabs.count() == tabs and local.stats()["instances"] == 0
    finally:
        node.stop()
