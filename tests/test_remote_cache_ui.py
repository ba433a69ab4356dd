"""The workstation's remote DICOMweb source through the persistent cache (pytest-qt).

A Hilum DICOMweb server on loopback behind a counting proxy (real sockets): the study browser
opens a remote study (WADO-RS into ``<data>/remote-cache``, a viewer tab), the study is pinned
while its tab is open, reopening asks the server nothing, and neither does opening it in a new
workstation window on the same data folder (a restart).
"""

from __future__ import annotations

import io
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from PySide6.QtTest import QTest

from hilum.archive import Archive
from hilum.config import Config, load_config
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study
from hilum.dicomweb.client import DicomWebSource
from hilum.dicomweb.service import DicomWebService
from test_remote_cache import CountingProxy

pytestmark = pytest.mark.gui
TIMEOUT = 20_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    archive = Archive(tmp_path / "remote")
    study = make_study(MUELLER, accession="CACHEUI1", date="20260707", seed="ui-cache")
    series = generate_ct_series(study, rows=32, columns=32, slices=3, seed=7)
    for ds in series:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        archive.ingest(buf.getvalue())
    with DicomWebService(Config(data_dir=tmp_path / "remote", web_port=0), archive) as svc:
        port = int(svc.url.split(":")[2].split("/")[0])
        proxy = CountingProxy(port)
        try:
            yield {
                "url": f"http://127.0.0.1:{proxy.port}/dicom-web",
                "study": study.uid,
                "proxy": proxy,
                "archive": archive,
            }
        finally:
            proxy.close()
    archive.close()


def _wado(server: dict[str, Any]) -> int:
    """Requests for the study's instances (WADO-RS), not the browser's searches (QIDO-RS, with a query)."""
    prefix = f"/dicom-web/studies/{server['study']}"
    return sum(1 for p in server["proxy"].paths if p.startswith(prefix) and "?" not in p)


def _open(qtbot: Any, window: Any, server: dict[str, Any], *, mouse: bool = False) -> Any:
    """Open the remote study: a double-click on its row in the study browser (``mouse``), else the
    browser's open signal."""
    ctl = window.remote_sources
    tabs = window.tabs.count()
    with qtbot.waitSignal(ctl.fetched, timeout=TIMEOUT):
        if mouse:
            browser = window.browser
            window.show_browser()
            row = browser.model.find(server["study"])
            assert row >= 0
            rect = browser.table.visualRect(browser.model.index(row, 1))
            QTest.mouseClick(browser.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
            QTest.mouseDClick(browser.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
        else:
            window.browser.openRequested.emit(server["study"])
    assert window.tabs.count() == tabs + 1
    return window.tabs.widget(window.tabs.count() - 1)


def _pixels(qtbot: Any, viewer: Any) -> np.ndarray:
    """What the viewer's first viewport shows, once painted (smooth rendering, not the scrolling one)."""
    canvas = viewer.viewport_widget(0).canvas
    qtbot.waitUntil(lambda: canvas.image_paint_count > 0 and not canvas._fast, timeout=TIMEOUT)
    qtbot.wait(100)
    img = canvas.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def test_remote_study_cached_pinned_and_reopened_without_requests(  # type: ignore[no-untyped-def]
    qtbot, make_main_window, server: dict[str, Any], tmp_path: Path
) -> None:
    cfg = load_config(tmp_path / "ws")
    window = make_main_window(cfg, Archive(cfg.data_dir))
    window.resize(1280, 800)
    window.show()
    qtbot.waitExposed(window)
    ctl = window.remote_sources
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        ctl.add_source(DicomWebSource("pacs", server["url"]))
    assert window.browser.model.rowCount() == 1

    viewer = _open(qtbot, window, server, mouse=True)
    assert _wado(server) > 0
    first = _pixels(qtbot, viewer)
    assert first.std() > 5, "the viewer shows the image"
    assert ctl.cache.has(server["study"]) and ctl.cache.pinned(server["study"])
    assert (cfg.data_dir / "remote-cache").is_dir()
    assert viewer.archive is ctl.cache.archive
    assert window.archive.stats()["instances"] == 0, "nothing in the local archive until Keep locally"

    # Closing the tab unpins the study (the cache may evict it from now on).
    assert window.close_workspace_tab(window.tabs.indexOf(viewer))
    qtbot.waitUntil(lambda: not ctl.cache.pinned(server["study"]), timeout=TIMEOUT)

    # Reopening: from the cache, no WADO request; the same pixels on screen.
    before = _wado(server)
    viewer = _open(qtbot, window, server, mouse=True)
    assert _wado(server) == before
    assert "local cache" in window.statusBar().currentMessage()
    again = _pixels(qtbot, viewer)
    assert again.shape == first.shape and np.abs(again.astype(int) - first.astype(int)).mean() < 1.0
    window.close()

    # A restart: a new workstation on the same data folder; the source is saved, the study cached.
    cfg2 = load_config(tmp_path / "ws")
    window2 = make_main_window(cfg2, Archive(cfg2.data_dir))
    window2.resize(1280, 800)
    window2.show()
    qtbot.waitExposed(window2)
    ctl2 = window2.remote_sources
    with qtbot.waitSignal(window2.browser.searchFinished, timeout=TIMEOUT):
        ctl2.select("pacs")
    assert ctl2.cache.has(server["study"])
    before = _wado(server)
    viewer2 = _open(qtbot, window2, server, mouse=True)
    assert _wado(server) == before, server["proxy"].paths[-5:]
    after = _pixels(qtbot, viewer2)
    assert after.shape == first.shape and np.abs(after.astype(int) - first.astype(int)).mean() < 1.0
    assert ctl2.cache.pinned(server["study"])
    window2.close()


def test_encrypted_cache_plaintext_only_while_the_tab_is_open(  # type: ignore[no-untyped-def]
    qtbot, make_main_window, server: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cryptography")
    monkeypatch.delenv("HILUM_CACHE_KEY", raising=False)
    cfg = load_config(tmp_path / "ws")
    cfg.extra["remote_cache"] = {"limit_mb": 64, "encrypt": True}
    cfg.save()
    cfg = load_config(tmp_path / "ws")
    window = make_main_window(cfg, Archive(cfg.data_dir))
    ctl = window.remote_sources
    assert ctl.cache.encrypt and ctl.cache.limit_bytes == 64 * 1024 * 1024
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        ctl.add_source(DicomWebSource("pacs", server["url"]))
    viewer = _open(qtbot, window, server)
    session = Path(viewer.archive.data_dir)
    assert session.parent == cfg.data_dir / "remote-cache" / "sessions"
    assert len(viewer.archive.instances(study_uid=server["study"])) == 3
    assert len(list((cfg.data_dir / "remote-cache" / "sealed").rglob("*.bin"))) == 3
    archive = viewer.archive
    assert window.close_workspace_tab(window.tabs.indexOf(viewer))
    qtbot.waitUntil(lambda: not ctl.cache.pinned(server["study"]), timeout=TIMEOUT)
    assert not archive.instances(study_uid=server["study"]), "the decrypted copy went with the tab"
    window.close()
    assert not session.exists()


def test_bad_cache_settings_fall_back_to_a_session_cache(  # type: ignore[no-untyped-def]
    qtbot, make_main_window, server: dict[str, Any], tmp_path: Path
) -> None:
    cfg = load_config(tmp_path / "ws")
    cfg.extra["remote_cache"] = {"limit_mb": "lots"}
    window = make_main_window(cfg, Archive(cfg.data_dir))
    ctl = window.remote_sources
    tmp_root = Path(ctl._cache_tmp)
    assert ctl.cache.root.parent == tmp_root
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        ctl.add_source(DicomWebSource("pacs", server["url"]))
    _open(qtbot, window, server)  # remote studies still open
    window.close()
    assert not tmp_root.exists()
