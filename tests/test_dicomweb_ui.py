"""A DICOMweb server as a study source in the workstation (pytest-qt, offscreen).

A Hilum DICOMweb server on loopback holds a study; the workstation's study
browser switches to it, finds the study over QIDO-RS, opens it (WADO-RS into
the cache, a viewer tab) and keeps it locally through ingest.
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
from hilum.dicomweb.client import DicomWebSource, load_sources
from hilum.dicomweb.service import DicomWebService

pytestmark = pytest.mark.gui
TIMEOUT = 20_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    archive = Archive(tmp_path / "remote")
    study = make_study(MUELLER, accession="REMOTE01", date="20260707", seed="ui-remote")
    series = generate_ct_series(study, rows=32, columns=32, slices=3, seed=6)
    for ds in series:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        archive.ingest(buf.getvalue())
    # No users on a loopback server: anonymous reading (the default "auto" mode).
    with DicomWebService(Config(data_dir=tmp_path / "remote", web_port=0), archive) as svc:
        yield {"url": svc.url, "study": study.uid, "series": str(series[0].SeriesInstanceUID), "archive": archive}
    archive.close()


def test_remote_source_search_open_keep(qtbot, make_main_window, server: dict[str, Any], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(tmp_path / "ws")
    local = Archive(cfg.data_dir)
    window = make_main_window(cfg, local)
    try:
        ctl = window.remote_sources
        assert ctl is not None and ctl.selector.combo.count() == 2  # local + "Add…"
        assert window.browser.model.rowCount() == 0
        with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
            ctl.add_source(DicomWebSource("pacs", server["url"]))
        assert ctl.selector.current() == "pacs"
        assert window.browser.model.rowCount() == 1
        row = window.browser.model.row(0)
        assert row["StudyInstanceUID"] == server["study"] and row["PatientName"] == "Müller^Jürgen"
        assert row["NumberOfStudyRelatedInstances"] == 3
        # the source is saved (without a password) for the next session
        assert [s.url for s in load_sources(load_config(cfg.data_dir))] == [server["url"]]

        # open: streamed into the cache, shown in a tab; nothing stored locally yet
        tabs = window.tabs.count()
        with qtbot.waitSignal(ctl.fetched, timeout=TIMEOUT):
            window.browser.openRequested.emit(server["study"])
        assert ctl.cache.has(server["study"])
        assert local.stats()["instances"] == 0
        assert window.tabs.count() == tabs + 1

        # keep locally through ingest
        assert window.browser.select_study(server["study"])
        with qtbot.waitSignal(ctl.kept, timeout=TIMEOUT) as kept:
            ctl.keep_selected()
        assert kept.args == [server["study"], 3]
        assert local.stats()["instances"] == 3
        sop = server["archive"].query("IMAGE", {"StudyInstanceUID": server["study"]})[0]["SOPInstanceUID"]
        assert local.read(sop) == server["archive"].read(sop)

        # back to the local archive: the kept study is found there
        with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
            ctl.select(None)
        assert window.browser.model.rowCount() == 1 and window.browser.logic.archive is local
    finally:
        window.close()  # the fixture deletes it, closes ``local`` and checks for leaked widgets


def test_source_dialog_validation(qtbot) -> None:  # type: ignore[no-untyped-def]
    from hilum.ui.remote_source import SourceDialog
    from hilum.ui.tasks import TaskRunner

    runner = TaskRunner(max_workers=1)
    dialog = SourceDialog(runner, taken={"pacs"})
    qtbot.addWidget(dialog)
    dialog.name_edit.setText("pacs")
    dialog.url_edit.setText("http://127.0.0.1:1/dicom-web")
    assert "already" in (dialog.problem() or "")
    dialog.name_edit.setText("other")
    dialog.url_edit.setText("ftp://nowhere")
    assert "http" in (dialog.problem() or "")
    dialog.url_edit.setText("https://pacs.example.org/dicom-web")
    dialog.user_edit.setText("rad")
    dialog.password_edit.setText("secret")
    assert dialog.problem() is None
    s = dialog.source()
    assert (s.name, s.url, s.username, s.password, s.verify_tls) == (
        "other", "https://pacs.example.org/dicom-web", "rad", "secret", True)
    assert "password" not in s.to_toml()
    runner.shutdown()
