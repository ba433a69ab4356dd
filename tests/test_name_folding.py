"""Names searched as people type them: "muller" finds Müller, "helene" finds Hélène — in the study
browser (the real widget, typed into) and in ``hilum find --local``; on the DICOM wire (C-FIND with
DCMTK's findscu, QIDO-RS) matching stays as the standard says, so ``muller*`` does not find Müller.

Both index writers (the compiled-statement one and SQLAlchemy's) write the folded column, and the
migration folds the names an older archive already holds."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from conftest import free_port
from hilum.archive import Archive
from hilum.archive.namefold import fold_name

ROOT = "1.2.826.0.1.3680043.10.999.23."
TIMEOUT = 20_000

# (PatientName as stored, PatientID)
PEOPLE = [
    ("Müller^Hans", "NF-1"),
    ("Hélène^Claire", "NF-2"),
    ("MÜLLER^ANNA", "NF-3"),
    ("Muller^Otto", "NF-4"),
    ("Miller^John", "NF-5"),
    ("Groß^Jürgen", "NF-6"),
    ("O'Brien^Seán", "NF-7"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "NF-8"),
]
MULLERS = {"NF-1", "NF-3", "NF-4"}


def _instance(name: str, pid: str) -> Dataset:
    ds = Dataset()
    sop = generate_uid(ROOT)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(ROOT), generate_uid(ROOT)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = name, pid, "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.StudyDescription, ds.AccessionNumber = "20260101", "101500", "Fold", pid
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 1, 1
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(range(64))
    return ds


def _fill(archive: Archive) -> None:
    for name, pid in PEOPLE:
        result = archive.ingest(_instance(name, pid))
        assert result.ok, result


def _ids(rows: list[dict[str, Any]]) -> set[str]:
    return {r["PatientID"] for r in rows}


# ---------------------------------------------------------------- the folding


@pytest.mark.parametrize(
    ("name", "folded"),
    [
        ("Müller^Hans", "muller hans"),
        ("MÜLLER", "muller"),
        ("Hélène", "helene"),
        ("Groß^Jürgen", "gross jurgen"),
        ("O'Brien^Seán", "obrien sean"),
        ("Łukasz^Øster-Ærø", "lukasz oster aero"),
        ("Doe , J ", "doe j"),
        ("ＹＡＭＡＤＡ^Ｔａｒｏｕ", "yamada tarou"),  # full-width letters (NFKD)
        ("Yamada^Tarou=山田^太郎", "yamada tarou"),  # the alphabetic group only
        ("müll*^h?ns", "mull* h?ns"),  # the user's wildcards stay
        ("", ""),
    ],
)
def test_fold_name(name: str, folded: str) -> None:
    assert fold_name(name) == folded


# ---------------------------------------------------------------- the query engine, both writers


@pytest.fixture(params=["fast", "sqlalchemy", pytest.param("postgres", marks=pytest.mark.postgres)])
def filled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    writer = "fast" if request.param == "postgres" else request.param
    with Archive(tmp_path / "data", database_url=url, index_writer=writer) as a:
        _fill(a)
        yield a


def test_folded_matching_finds_names_as_typed(filled: Archive) -> None:
    def folded(value: str) -> set[str]:
        rows = filled.query("STUDY", {"PatientName": value}, fold_names=True)
        assert filled.count("STUDY", {"PatientName": value}, fold_names=True) == len(rows)
        return _ids(rows)

    assert folded("muller*") == MULLERS
    assert folded("MULLER*") == MULLERS
    assert folded("helene*") == {"NF-2"}
    assert folded("Helene^Claire") == {"NF-2"}  # a single value: the whole folded name
    assert folded("muller hans") == {"NF-1"}
    assert folded("gross*") == {"NF-6"}
    assert folded("obrien*") == {"NF-7"}
    assert folded("m?ller*") == MULLERS | {"NF-5"}
    assert folded("*jurgen") == {"NF-6"}
    # What the standard matching found is still found: other component groups, the name as stored.
    assert folded("山田*") == {"NF-8"}
    assert folded("==やまだ*") == {"NF-8"}
    assert folded("Müller^Hans") == {"NF-1"}
    # LIKE's own wildcards are literal characters of a name
    assert folded("mul%") == set() and folded("mul_er*") == set()


def test_wire_matching_stays_standard(filled: Archive) -> None:
    """Without fold_names (C-FIND, QIDO-RS): PN case-insensitive, accents significant (PS3.4 C.2.2.2)."""

    def standard(value: str) -> set[str]:
        return _ids(filled.query("STUDY", {"PatientName": value}))

    assert standard("muller*") == {"NF-4"}
    assert standard("müller*") == {"NF-1", "NF-3"}
    assert standard("helene*") == set()
    assert standard("Hélène*") == {"NF-2"}


def test_the_browser_logic_folds_names_of_the_local_archive_only(filled: Archive, tmp_path: Path) -> None:
    """The same search on the local archive folds names; on a DICOMweb source (QIDO-RS, a real
    server over the same archive) the server matches as the standard says."""
    from hilum.config import Config
    from hilum.dicomweb.client import DicomWebClient, DicomWebSource, RemoteArchiveView
    from hilum.dicomweb.service import DicomWebService
    from hilum.ui.study_search import StudyCriteria, StudySearch

    local = StudySearch(filled)
    assert _ids(local.studies(StudyCriteria(patient_name="muller")).rows) == MULLERS
    assert _ids(local.studies(StudyCriteria(patient_name="Muller, Hans")).rows) == {"NF-1"}
    with DicomWebService(Config(data_dir=tmp_path / "web", web_port=0), filled) as svc:
        remote = StudySearch(RemoteArchiveView(DicomWebClient(DicomWebSource("pacs", svc.url))))
        assert _ids(remote.studies(StudyCriteria(patient_name="muller")).rows) == {"NF-4"}
        assert _ids(remote.studies(StudyCriteria(patient_name="Müller")).rows) == {"NF-1", "NF-3"}
        assert _ids(remote.studies(StudyCriteria(patient_name="helene")).rows) == set()


def test_adt_rename_refolds(filled: Archive) -> None:
    """A name changed by the patient registry (HL7 ADT) is folded again."""
    from hilum.archive.patients import PatientInfo

    with filled.engine.begin() as conn:
        filled.writer.patients.upsert(conn, PatientInfo("NF-5", "", "Mïller^John", None, None), "adt")
    assert _ids(filled.query("STUDY", {"PatientName": "miller*"}, fold_names=True)) == {"NF-5"}
    assert _ids(filled.query("STUDY", {"PatientName": "miller*"})) == set()


def test_migration_folds_the_names_already_there(tmp_path: Path) -> None:
    from alembic import command

    from hilum.archive.db import alembic_config

    data = tmp_path / "data"
    with Archive(data) as a:
        _fill(a)
        with a.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0005_patient_revisions")
        with a.engine.connect() as conn:
            assert "pn_fold" not in {c["name"] for c in __import__("sqlalchemy").inspect(conn).get_columns("patients")}
    with Archive(data) as a:  # opening upgrades to the head
        assert _ids(a.query("STUDY", {"PatientName": "muller*"}, fold_names=True)) == MULLERS
        assert _ids(a.query("STUDY", {"PatientName": "helene"}, fold_names=True)) == set()  # exact: "helene claire"
        assert _ids(a.query("STUDY", {"PatientName": "helene*"}, fold_names=True)) == {"NF-2"}


# ---------------------------------------------------------------- the wire: DCMTK findscu


def test_cfind_with_findscu_matches_as_the_standard_says(tmp_path: Path) -> None:
    from hilum.config import Config
    from hilum.node import Node

    data = tmp_path / "node"
    with Archive(data) as a:
        _fill(a)
    cfg = Config(data_dir=data, aet="HILUM", dicom_port=free_port())
    node = Node(cfg, only=["dimse"])
    node.start()
    try:

        def findscu(name: str) -> set[str]:
            out = tmp_path / f"find{time.monotonic_ns()}"
            out.mkdir()
            subprocess.run(
                ["/usr/bin/findscu", "-S", "-aet", "FINDER", "-aec", "HILUM", "-X", "-od", str(out),
                 "-k", "QueryRetrieveLevel=STUDY", "-k", "SpecificCharacterSet=ISO_IR 192",
                 "-k", f"PatientName={name}", "-k", "PatientID", "127.0.0.1", str(cfg.dicom_port)],
                check=True, capture_output=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"},
            )  # fmt: skip
            return {str(pydicom.dcmread(p).PatientID) for p in out.glob("rsp*.dcm")}

        assert findscu("muller*") == {"NF-4"}  # Müller and MÜLLER are not "muller"
        assert findscu("helene*") == set()
        assert findscu("MÜLLER*") == {"NF-1", "NF-3"}
    finally:
        node.stop()


# ---------------------------------------------------------------- hilum find --local


def _hilum(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HILUM_DATA": "/nonexistent/must-not-be-used"}
    return subprocess.run([sys.executable, "-m", "hilum", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip


def test_hilum_find_local_folds_names(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Archive(data) as a:
        _fill(a)
    proc = _hilum("find", "--local", "-k", "PatientName=muller", "--json", "--data", data)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["PatientID"] for r in rows} == MULLERS
    assert {r["PatientName"] for r in rows} == {"Müller^Hans", "MÜLLER^ANNA", "Muller^Otto"}
    proc = _hilum("find", "--local", "-k", "PatientName=helene", "-k", "StudyDescription", "--data", data)
    assert proc.returncode == 0, proc.stderr
    assert "PatientName=Hélène^Claire" in proc.stdout and "StudyDescription=Fold" in proc.stdout
    assert proc.stdout.strip().endswith("1 match at STUDY level from the local archive")
    wrong = _hilum("find", "--local", "127.0.0.1", "-k", "PatientName=x", "--data", data)
    assert wrong.returncode != 0 and "--local" in wrong.stderr
    none = _hilum("find", "-k", "PatientName=x", "--data", data)
    assert none.returncode != 0 and "--local" in none.stderr


# ---------------------------------------------------------------- the study browser, typed into


@pytest.mark.gui
def test_study_browser_finds_names_as_typed(qtbot: Any, make_main_window: Any, tmp_path: Path) -> None:
    from PySide6.QtCore import Qt

    from hilum.config import load_config

    data = tmp_path / "data"
    archive = Archive(data)
    _fill(archive)
    window = make_main_window(load_config(data), archive)
    window.resize(1280, 800)
    window.show()
    qtbot.waitUntil(lambda: window.stats is not None and not window.browser.searching, timeout=TIMEOUT)
    browser = window.browser
    assert browser.model.rowCount() == len(PEOPLE)

    def type_and_enter(text: str) -> set[str]:
        qtbot.mouseClick(browser.name_edit, Qt.MouseButton.LeftButton)
        browser.name_edit.selectAll()
        qtbot.keyClick(browser.name_edit, Qt.Key.Key_Delete)
        qtbot.keyClicks(browser.name_edit, text)
        with qtbot.waitSignal(browser.searchFinished, timeout=TIMEOUT):
            qtbot.keyClick(browser.name_edit, Qt.Key.Key_Return)
        qtbot.waitUntil(lambda: not browser.searching and not browser._typing_timer.isActive(), timeout=TIMEOUT)
        m = browser.model
        return {m.display_text(r, 0) for r in range(m.rowCount())}

    assert type_and_enter("muller") == {"Müller, Hans", "MÜLLER, ANNA", "Muller, Otto"}
    assert type_and_enter("helene") == {"Hélène, Claire"}
    assert type_and_enter("MULLER, h") == {"Müller, Hans"}
    assert type_and_enter("gross") == {"Groß, Jürgen"}
    assert type_and_enter("obrien") == {"O'Brien, Seán"}
    assert type_and_enter("nobody") == set()
    assert browser.result_label.text() == "No studies match"


# ---------------------------------------------------------------- the worklist tab, typed into


@pytest.mark.gui
def test_worklist_tab_finds_names_as_typed_and_the_mwl_stays_standard(qtbot: Any, tmp_path: Path) -> None:
    from datetime import date

    from PySide6.QtCore import Qt

    from hilum.archive.orders import OrderBook, OrderInfo, PatientInfo, StepInfo
    from hilum.ui.worklist import WorklistBrowser

    with Archive(tmp_path / "data") as archive:
        book = OrderBook(archive)
        for acc, name in (("W1", "Müller^Hans"), ("W2", "Miller^John"), ("W3", "Hélène^Claire")):
            with book.transaction() as tx:
                p = tx.upsert_patient(PatientInfo(f"P{acc}", name=name))
                step = StepInfo(modality="CT", station_aet="ST1", start_date=date.today().strftime("%Y%m%d"))
                tx.create_order(p, OrderInfo(accession_number=acc, description="CT", steps=[step]))
        # The MWL SCP's matching (the wire) is the standard's.
        assert [r["AccessionNumber"] for r in book.worklist({"PatientName": "*muller*"})] == []
        assert [r["AccessionNumber"] for r in book.worklist({"PatientName": "*muller*"}, fold_names=True)] == ["W1"]

        w = WorklistBrowser(archive)
        qtbot.addWidget(w)
        w.show()
        qtbot.waitUntil(lambda: w.model.rowCount() == 3, timeout=TIMEOUT)

        def shows_after_typing(text: str, expected: list[str]) -> None:
            qtbot.mouseClick(w.search, Qt.MouseButton.LeftButton)
            w.search.selectAll()
            qtbot.keyClick(w.search, Qt.Key.Key_Delete)
            qtbot.keyClicks(w.search, text)
            qtbot.waitUntil(lambda: sorted(r["AccessionNumber"] for r in w.model.rows()) == expected, timeout=TIMEOUT)

        shows_after_typing("muller", ["W1"])
        shows_after_typing("helene", ["W3"])
        shows_after_typing("ller", ["W1", "W2"])
        w.close()
