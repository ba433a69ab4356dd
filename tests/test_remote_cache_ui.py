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

import pytest

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


def _open(qtbot: Any, window: Any, server: dict[str, Any]) -> Any:
    ctl = window.remote_sources
    tabs = window.tabs.count()
    with qtbot.waitSignal(ctl.fetched, timeout=TIMEOUT):
        window.browser.openRequested.emit(server["study"])
    assert window.tabs.count() == tabs + 1
    return window.tabs.widget(window.tabs.count() - 1)


def test_remote_study_cached_pinned_and_reopened_without_requests(  # type: ignore[no-untyped-def]
    qtbot, make_main_window, server: dict[str, Any], tmp_path: Path
) -> None:
    cfg = load_config(tmp_path / "ws")
    window = make_main_window(cfg, Archive(cfg.data_dir))
    ctl = window.remote_sources
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        ctl.add_source(DicomWebSource("pacs", server["url"]))
    assert window.browser.model.rowCount() == 1

    viewer = _open(qtbot, window, server)
    assert _wado(server) > 0
    assert ctl.cache.has(server["study"]) and ctl.cache.pinned(server["study"])
    assert (cfg.data_dir / "remote-cache").is_dir()
    assert viewer.archive is ctl.cache.archive
    assert window.archive.stats()["instances"] == 0, "nothing in the local archive until Keep locally"

    # Closing the tab unpins the study (the cache may evict it from now on).
    assert window.close_workspace_tab(window.tabs.indexOf(viewer))
    qtbot.waitUntil(lambda: not ctl.cache.pinned(server["study"]), timeout=TIMEOUT)

    # Reopening: from the cache, no WADO request.
    before = _wado(server)
    _open(qtbot, window, server)
    assert _wado(server) == before
    assert "local cache" in window.statusBar().currentMessage()
    window.close()

    # A restart: a new workstation on the same data folder; the source is saved, the study cached.
    cfg2 = load_config(tmp_path / "ws")
    window2 = make_main_window(cfg2, Archive(cfg2.data_dir))
    ctl2 = window2.remote_sources
    with qtbot.waitSignal(window2.browser.searchFinished, timeout=TIMEOUT):
        ctl2.select("pacs")
    assert ctl2.cache.has(server["study"])
    before = _wado(server)
    _open(qtbot, window2, server)
    assert _wado(server) == before, server["proxy"].paths[-5:]
    assert ctl2.cache.pinned(server["study"])
    window2.close()
