"""Prefetch to this station in the workstation, driven as a person would.

A second real ``hilum serve`` on loopback holds today's CTs; the workstation has it as a DICOMweb
source and ``[station_prefetch] enabled`` with a cap.  The window opens, Ctrl+Alt+F shows the queue,
the studies of the remote worklist appear and fetch; the Pause button holds the transfer (the row says
Paused, its bytes stop), the cap is lifted by typing 0 in its box, Resume finishes both studies into
the remote cache; the panel's pixels show the rows.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from hilum.archive import Archive
from hilum.config import Config
from test_priors import PATIENT, small_study, store
from test_priors_remote import serve_peer
from test_station_prefetch import BIG_SLICES, _big, _day

pytestmark = pytest.mark.gui

TIMEOUT = 60_000
CTRL_ALT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    uids: dict[str, str] = {}

    def fill(a: Archive) -> None:
        uids["big"] = store(a, _big("GUI-BIG", 0))
        uids["small"] = store(a, small_study(PATIENT, "GUI-SMALL", _day(0)))

    with serve_peer(tmp_path_factory.mktemp("clinic"), "CLINIC", fill=fill) as ports:
        yield {"uids": uids, "url": f"http://127.0.0.1:{ports['web']}/dicom-web"}


def test_queue_pause_cap_resume(qtbot: Any, make_main_window: Any, clinic: dict[str, Any], tmp_path: Path) -> None:
    data = tmp_path / "ws"
    cfg = Config(data_dir=data)
    cfg.extra = {
        "dicomweb_sources": {"clinic": {"url": clinic["url"]}},
        "station_prefetch": {"enabled": True, "max_rate_mbit": 1.6, "priors": False, "modalities": ["CT"]},
    }
    window = make_main_window(cfg, Archive(data))
    window.show()
    qtbot.waitExposed(window)
    ctl = window.station_prefetch
    assert ctl is not None and ctl.prefetcher is not None
    panel = ctl.panel
    assert panel.rate_spin.value() == pytest.approx(1.6)
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)
    qtbot.keyClick(window, Qt.Key.Key_F, CTRL_ALT)
    qtbot.waitUntil(ctl.dock.isVisible, timeout=5000)

    # The remote worklist (today's CTs) is looked up at start; the big study is fetching under the cap.
    def row(key: str) -> int:
        return next((i for i, j in enumerate(panel.jobs) if j.study_uid == clinic["uids"][key]), -1)

    qtbot.waitUntil(lambda: row("big") >= 0 and panel.text(row("big"), "State") == "Fetching", timeout=TIMEOUT)
    qtbot.waitUntil(lambda: panel.jobs[row("big")].bytes > 50_000, timeout=TIMEOUT)
    assert "1.6 Mbit/s" in panel.state_label.text() and "clinic" in panel.state_label.text()

    # Pause: the row says so, its bytes stop, the button offers Resume.
    qtbot.mouseClick(panel.pause_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: panel.text(row("big"), "State") == "Paused", timeout=10_000)
    assert panel.pause_button.text() == "Resume" and "PAUSED" in panel.state_label.text()
    held = panel.text(row("big"), "Bytes")
    qtbot.wait(800)
    assert panel.text(row("big"), "Bytes") == held
    assert ctl.prefetcher.job(panel.jobs[row("big")].id).state == "paused"

    # Lift the cap by typing 0 in its box, then Resume: both studies finish into the remote cache.
    panel.rate_spin.setFocus()
    panel.rate_spin.selectAll()
    qtbot.keyClicks(panel.rate_spin, "0")
    qtbot.keyClick(panel.rate_spin, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: ctl.prefetcher.bucket.rate == 0, timeout=5000)
    qtbot.mouseClick(panel.pause_button, Qt.MouseButton.LeftButton)
    assert panel.pause_button.text() == "Pause"
    qtbot.waitUntil(
        lambda: row("small") >= 0 and all(panel.text(row(k), "State") == "Done" for k in ("big", "small")),
        timeout=TIMEOUT,
    )
    assert panel.text(row("big"), "Images") == f"{BIG_SLICES}/{BIG_SLICES}"
    assert panel.text(row("big"), "Why") == "worklist"
    cache = ctl.prefetcher.cache
    assert cache.has(clinic["uids"]["big"]) and cache.has(clinic["uids"]["small"])

    # A done row: nothing to cancel or retry; Clear finished empties the list.
    rect = panel.table.visualRect(panel.table.model().index(row("big"), 0))
    qtbot.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: panel.selected() is not None, timeout=5000)
    assert not panel.cancel_button.isEnabled() and not panel.retry_button.isEnabled()
    # The rows are drawn: the table's pixels are not a blank field.
    image = panel.table.viewport().grab().toImage()
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, min(image.height(), 60), 3)}
    assert len(colours) > 3
    qtbot.mouseClick(panel.clear_button, Qt.MouseButton.LeftButton)
    assert panel.jobs == []
    window.close()


def test_a_prefetched_study_opens_from_the_station_without_asking_the_remote(
    qtbot: Any, make_main_window: Any, clinic: dict[str, Any], tmp_path: Path
) -> None:
    """The point of it all: after the prefetch, a double-click on the remote study in the study browser
    opens it in a viewer tab with no WADO-RS request to the remote (counted by a proxy), pixels on screen."""
    from test_remote_cache import CountingProxy
    from test_remote_cache_ui import _pixels

    port = int(clinic["url"].split(":")[2].split("/")[0])
    proxy = CountingProxy(port)
    try:
        data = tmp_path / "ws2"
        cfg = Config(data_dir=data)
        cfg.extra = {
            "dicomweb_sources": {"clinic": {"url": f"http://127.0.0.1:{proxy.port}/dicom-web"}},
            "station_prefetch": {"enabled": True, "priors": False},
        }
        window = make_main_window(cfg, Archive(data))
        window.resize(1280, 800)
        window.show()
        qtbot.waitExposed(window)
        pf = window.station_prefetch.prefetcher
        uid = clinic["uids"]["big"]
        qtbot.waitUntil(lambda: (j := pf.job_of(uid)) is not None and j.state == "done", timeout=TIMEOUT)
        assert pf.cache is window.remote_sources.cache  # one cache per data folder, shared
        wado = lambda: sum(1 for p in proxy.paths if p.startswith(f"/dicom-web/studies/{uid}") and "?" not in p)  # noqa: E731
        before = wado()
        assert before > 0  # the prefetch fetched it
        ctl = window.remote_sources
        with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
            ctl.select("clinic")
        browser = window.browser
        row = browser.model.find(uid)
        assert row >= 0
        rect = browser.table.visualRect(browser.model.index(row, 1))
        with qtbot.waitSignal(ctl.fetched, timeout=TIMEOUT):
            QTest.mouseClick(browser.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
            QTest.mouseDClick(browser.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
        viewer = window.tabs.widget(window.tabs.count() - 1)
        assert wado() == before, "opened from the station's cache"
        assert _pixels(qtbot, viewer).std() > 5, "the viewer shows the image"
        window.close()
    finally:
        proxy.close()
