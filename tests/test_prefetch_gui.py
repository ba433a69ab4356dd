"""The prefetch of priors in the workstation, driven as a person would: the worklist tab clicked starts a
prefetch from a second real ``hilum serve`` on loopback; the job is watched in View → Prefetch (Ctrl+Shift+F)
until done and the worklist's Priors column says so; a peer that is down shows a red failed row with its
reason and a Retry; a prefetched study opened in the viewer is held (the cache limit spares it) and released
when its tab's close button is clicked."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor, QImage
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QTabBar

from conftest import free_port
from hilum.archive import Archive
from hilum.archive.orders import OrderBook, OrderInfo, PatientInfo, StepInfo
from hilum.config import Config, Peer, PrefetchRules
from test_prefetch import instances_of, remote_priors
from test_priors_remote import serve_peer

pytestmark = pytest.mark.gui

TIMEOUT = 60_000
CTRL_SHIFT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, int], dict[str, str]]]:
    """The remote PACS (a real ``hilum serve``, AE REMOTE) holding the patient's history."""
    uids: dict[str, str] = {}

    def fill(a: Archive) -> None:
        uids.update(remote_priors(a))

    with serve_peer(tmp_path_factory.mktemp("pacs"), "REMOTE", fill=fill) as ports:
        yield ports, uids


def _order_today(archive: Archive) -> str:
    """A CT ordered for today for the patient whose priors the PACS holds (as an HL7 ORM makes it)."""
    book = OrderBook(archive)
    with book.transaction() as tx:
        p = tx.upsert_patient(PatientInfo("PRI-0001", name="Prior^Paula"))
        tx.create_order(
            p,
            OrderInfo(
                accession_number="ACC-NEW",
                description="CT chest",
                steps=[
                    StepInfo(
                        modality="CT", station_aet="CT1", start_date=date.today().strftime("%Y%m%d"), start_time="2359"
                    )
                ],
            ),
        )
    order = book.order(accession="ACC-NEW")
    assert order is not None
    return str(order["study_uid"])


def _workstation(qtbot: Any, make_main_window: Any, data: Path, peers: dict[str, Peer], *, viewer: bool = False) -> Any:
    """The main window with its node running (as ``hilum`` starts it), prefetch on."""
    from hilum.ui.app import NodeRunner

    archive = Archive(data)
    _order_today(archive)
    cfg = Config(
        data_dir=data,
        aet="WS",
        dicom_port=free_port(),
        web_port=free_port(),
        hl7_port=free_port(),
        peers=peers,
        prefetch=PrefetchRules(enabled=True, max_priors=2, max_age_years=0, timeout=10),
    )
    window = make_main_window(cfg, archive, viewer=viewer)
    window.show()
    qtbot.waitExposed(window)
    runner = NodeRunner(cfg, archive, window)
    runner.start()
    qtbot.waitUntil(lambda: window.prefetch.prefetcher is not None, timeout=TIMEOUT)
    assert "DICOM" in window.node_label.text()
    window._test_runner = runner
    return window


def _click_tab(qtbot: Any, window: Any, widget: Any) -> None:
    bar = window.tabs.tabBar()
    qtbot.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(window.tabs.indexOf(widget)).center())
    qtbot.waitUntil(lambda: window.tabs.currentWidget() is widget, timeout=5000)


def _show_prefetch_panel(qtbot: Any, window: Any) -> Any:
    if QApplication.activeWindow() is not window:  # a shortcut needs its window active
        window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
    qtbot.keyClick(window, Qt.Key.Key_F, CTRL_SHIFT)
    qtbot.waitUntil(window.prefetch.dock.isVisible, timeout=5000)
    return window.prefetch.panel


def _priors_cell(window: Any) -> tuple[str, str, Any]:
    """The worklist's Priors cell of the order: text, tooltip, its rectangle in the table."""
    from hilum.ui.worklist import COLUMNS

    model = window.worklist.model
    col = next(i for i, c in enumerate(COLUMNS) if c.key == "_priors")
    row = next(i for i, r in enumerate(model.rows()) if r["AccessionNumber"] == "ACC-NEW")
    index = model.index(row, col)
    return (
        str(model.data(index) or ""),
        str(model.data(index, Qt.ItemDataRole.ToolTipRole) or ""),
        window.worklist.table.visualRect(index),
    )


def _ink(image: QImage, rect: Any, want: str) -> int:
    """Pixels of the rectangle near the colour ``want`` (the text's colour, antialiased edges aside)."""
    target = QColor(want)
    n = 0
    for x in range(rect.left(), rect.right()):
        for y in range(rect.top(), rect.bottom()):
            c = image.pixelColor(x, y)
            if abs(c.red() - target.red()) + abs(c.green() - target.green()) + abs(c.blue() - target.blue()) < 60:
                n += 1
    return n


def _stop(window: Any) -> None:
    window._test_runner.stop()


def test_worklist_shown_prefetches_the_priors_shown_in_the_panel(qtbot, make_main_window, tmp_path, pacs) -> None:  # type: ignore[no-untyped-def]
    ports, uids = pacs
    window = _workstation(
        qtbot, make_main_window, tmp_path / "ws", {"pacs": Peer("REMOTE", "127.0.0.1", ports["dicom"])}, viewer=True
    )
    pf = window.prefetch.prefetcher
    archive = window.archive
    try:
        assert pf.jobs() == []  # the worklist has not been looked at yet
        panel = _show_prefetch_panel(qtbot, window)
        assert panel.table.rowCount() == 0 and "on; peers: pacs" in panel.state_label.text()
        _click_tab(qtbot, window, window.worklist)
        qtbot.waitUntil(lambda: bool(panel.jobs) and panel.jobs[-1].state == "done", timeout=TIMEOUT)
        [job] = panel.jobs
        assert (panel.text(0, "Trigger"), panel.text(0, "State")) == ("worklist", "Done")
        assert panel.text(0, "Patient") == "PRI-0001"
        assert panel.text(0, "Priors") == "2 relevant, 2 of 2 fetched (4 images)", panel.text(0, "Priors")
        assert "2 fetched (4 instances)" in panel.text(0, "Message")
        # The two chest CTs are local now; the MR (another modality) and the other patient's study are not.
        assert instances_of(archive, uids["ct_1y"]) == 2 and instances_of(archive, uids["ct_2y"]) == 2
        assert instances_of(archive, uids["mr_3y"]) == 0 and instances_of(archive, uids["other"]) == 0
        # The worklist row says so, in green on screen.
        text, tip, rect = _priors_cell(window)
        assert (text, "2 relevant prior(s)" in tip) == ("ready (2)", True)
        window.worklist.table.clearSelection()
        image = window.worklist.table.viewport().grab().toImage()
        assert _ink(image, rect, "#2e8b3d") > 5
        # The worklist's refresh (a poll, an order change) does not ask the peers again at once.
        window.worklist.refresh_button.click()
        qtbot.wait(500)
        assert len(pf.jobs()) == 1 and job.id == pf.jobs()[0].id

        # Opening a prefetched prior holds it: the cache limit removes the other one, not the open one.
        qtbot.keyClick(window, Qt.Key.Key_B, Qt.KeyboardModifier.ControlModifier)
        browser = window.browser
        qtbot.waitUntil(lambda: browser.model.find(uids["ct_1y"]) >= 0, timeout=TIMEOUT)
        table = browser.table
        rect = table.visualRect(browser.model.index(browser.model.find(uids["ct_1y"]), 1))
        QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())
        QTest.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center())
        qtbot.waitUntil(lambda: len(window.workspace_tabs()) == 1, timeout=TIMEOUT)
        viewer = window.workspace_tabs()[0]
        assert viewer.study_uid == uids["ct_1y"]
        qtbot.waitUntil(lambda: pf.held() == {uids["ct_1y"]}, timeout=TIMEOUT)
        window.config.prefetch.cache_limit_mb = 1e-6  # room for nothing
        assert pf.enforce_cache() == [uids["ct_2y"]]
        assert instances_of(archive, uids["ct_1y"]) == 2 and instances_of(archive, uids["ct_2y"]) == 0
        # Its tab's close button clicked: released, and the next cache run may remove it.
        bar = window.tabs.tabBar()
        close = bar.tabButton(window.tabs.indexOf(viewer), QTabBar.ButtonPosition.RightSide)
        assert close is not None
        qtbot.mouseClick(close, Qt.MouseButton.LeftButton, pos=QPoint(close.width() // 2, close.height() // 2))
        qtbot.waitUntil(lambda: window.workspace_tabs() == [], timeout=TIMEOUT)
        qtbot.waitUntil(lambda: pf.held() == set(), timeout=TIMEOUT)
        assert pf.enforce_cache() == [uids["ct_1y"]]
        assert archive.prefetched() == []
    finally:
        _stop(window)


def test_a_peer_that_is_down_shows_a_failed_job_with_its_reason_and_retry(qtbot, make_main_window, tmp_path) -> None:  # type: ignore[no-untyped-def]
    window = _workstation(qtbot, make_main_window, tmp_path / "ws", {"dead": Peer("DEAD", "127.0.0.1", free_port())})
    try:
        _click_tab(qtbot, window, window.worklist)
        panel = _show_prefetch_panel(qtbot, window)
        qtbot.waitUntil(lambda: bool(panel.jobs) and panel.jobs[-1].state == "failed", timeout=TIMEOUT)
        assert panel.text(0, "State") == "Failed"
        message = panel.text(0, "Message")
        assert message.startswith("no peer answered: dead: cannot connect to 127.0.0.1:"), message
        assert panel.table.item(0, 5).foreground().color() == QColor(Qt.GlobalColor.darkRed)
        assert "Prefetch of priors failed: no peer answered" in window.statusBar().currentMessage()
        # The worklist's Priors column: "failed" in red, the reason in its tooltip.
        _click_tab(qtbot, window, window.worklist)
        text, tip, rect = _priors_cell(window)
        assert text == "failed" and "cannot connect" in tip
        window.worklist.table.clearSelection()
        assert _ink(window.worklist.table.viewport().grab().toImage(), rect, "#b00020") > 5
        # The failed row, clicked, can be retried: a new job, which fails the same way.
        assert not panel.retry_button.isEnabled()
        rect = panel.table.visualRect(panel.table.model().index(0, 1))
        qtbot.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
        qtbot.waitUntil(panel.retry_button.isEnabled, timeout=5000)
        qtbot.mouseClick(panel.retry_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: len(panel.jobs) == 2 and panel.jobs[1].state == "failed", timeout=TIMEOUT)
        assert panel.text(1, "Trigger") == "by hand" and "no peer answered" in panel.text(1, "Message")
    finally:
        _stop(window)


def test_without_a_node_the_worklist_hands_nothing_over(qtbot, make_main_window, tmp_path) -> None:  # type: ignore[no-untyped-def]
    archive = Archive(tmp_path / "ws")
    _order_today(archive)
    window = make_main_window(Config(data_dir=tmp_path / "ws"), archive)
    window.show()
    qtbot.waitExposed(window)
    _click_tab(qtbot, window, window.worklist)
    qtbot.waitUntil(lambda: window.worklist.model.rowCount() == 1, timeout=TIMEOUT)
    panel = _show_prefetch_panel(qtbot, window)
    assert window.prefetch.prefetcher is None and panel.table.rowCount() == 0
    assert "off" in panel.state_label.text()
    assert _priors_cell(window)[0] == ""


def test_a_prior_added_to_an_open_viewer_is_held_with_its_tab(qtbot, make_main_window, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A viewer that shows a prior beside its study (``StudyViewer.sessions``, contract C) announces it through
    ``window.prefetch.study_opened``: the prior is held while the tab is open, released when it closes."""
    from PySide6.QtWidgets import QWidget

    class Viewer(QWidget):  # the two attributes of StudyViewer the wiring reads
        def __init__(self, study_uid: str) -> None:
            super().__init__()
            self.study_uid = study_uid
            self.sessions: dict[str, object] = {study_uid: object()}

    window = _workstation(qtbot, make_main_window, tmp_path / "ws", {})
    pf = window.prefetch.prefetcher
    try:
        viewer = Viewer("1.2.3.1")
        window.add_workspace_tab(viewer, "Study")
        qtbot.waitUntil(lambda: pf.held() == {"1.2.3.1"}, timeout=TIMEOUT)
        viewer.sessions["1.2.3.2"] = object()  # what StudyViewer.add_study does, then tells the window
        window.prefetch.study_opened("1.2.3.2")
        qtbot.waitUntil(lambda: pf.held() == {"1.2.3.1", "1.2.3.2"}, timeout=TIMEOUT)
        window.prefetch.study_opened("1.2.3.9")  # opened elsewhere (no tab shows it): touched, not held
        bar = window.tabs.tabBar()
        close = bar.tabButton(window.tabs.indexOf(viewer), QTabBar.ButtonPosition.RightSide)
        qtbot.mouseClick(close, Qt.MouseButton.LeftButton, pos=QPoint(close.width() // 2, close.height() // 2))
        qtbot.waitUntil(lambda: pf.held() == set(), timeout=TIMEOUT)
    finally:
        _stop(window)
