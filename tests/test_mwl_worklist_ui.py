"""The worklist browser widget: filters, status colours, live refresh on HL7/MPPS changes, open study."""

from __future__ import annotations

from datetime import date, timedelta

import pydicom
import pytest
from pydicom.data import get_testdata_file

from hilum.archive.orders import OrderBook, OrderInfo, PatientInfo, PerformedInfo, Reconciler, StepInfo

pytestmark = pytest.mark.gui

TODAY = date.today()


def _da(d: date) -> str:
    return d.strftime("%Y%m%d")


def _order(book: OrderBook, acc: str, day: date, modality: str = "CT", name: str = "Test^Pat") -> None:
    with book.transaction() as tx:
        p = tx.upsert_patient(PatientInfo(f"P{acc}", name=name))
        tx.create_order(p, OrderInfo(accession_number=acc, description=f"{modality} study",
                                     steps=[StepInfo(modality=modality, station_aet="ST1", start_date=_da(day),
                                                     start_time="0900")]))


@pytest.fixture
def browser(qtbot, archive):  # type: ignore[no-untyped-def]
    from hilum.ui.worklist import WorklistBrowser

    book = OrderBook(archive)
    reconciler = Reconciler(book)  # as the node builds it: arriving images matched to their orders
    reconciler.start()
    _order(book, "TODAY1", TODAY, name="Ångström^Anders")
    _order(book, "TOMORROW1", TODAY + timedelta(days=1), modality="MR")
    _order(book, "YESTERDAY1", TODAY - timedelta(days=1))
    w = WorklistBrowser(archive)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.model.rowCount() == 2, timeout=5000)
    yield w
    w.close()
    reconciler.stop()


def _accessions(w) -> list[str]:  # type: ignore[no-untyped-def]
    return [r["AccessionNumber"] for r in w.model.rows()]


def test_filters(qtbot, browser) -> None:  # type: ignore[no-untyped-def]
    assert _accessions(browser) == ["TODAY1", "TOMORROW1"]  # today and upcoming
    with qtbot.waitSignal(browser.refreshed, timeout=5000):
        browser.modality.setCurrentText("MR")
    assert _accessions(browser) == ["TOMORROW1"]
    with qtbot.waitSignal(browser.refreshed, timeout=5000):
        browser.modality.setCurrentText("All")
    with qtbot.waitSignal(browser.refreshed, timeout=5000):
        browser.span.setCurrentText("All dates")
    assert _accessions(browser) == ["YESTERDAY1", "TODAY1", "TOMORROW1"]
    with qtbot.waitSignal(browser.refreshed, timeout=5000):
        browser.search.setText("ångs")  # case-insensitive name match
    assert _accessions(browser) == ["TODAY1"]
    with qtbot.waitSignal(browser.refreshed, timeout=5000):
        browser.search.setText("TOMORROW1")  # an accession number
    assert _accessions(browser) == ["TOMORROW1"]
    assert browser.model.data(browser.model.index(0, 5)) == "Test, Pat"


def test_live_refresh_colours_and_open(qtbot, browser, archive) -> None:  # type: ignore[no-untyped-def]
    book = OrderBook(archive)  # another book on the same archive: the browser hears its changes too
    # A new order (as an HL7 ORM would make) appears without user action.
    with qtbot.waitSignal(browser.refreshed, timeout=5000):
        _order(book, "NEW1", TODAY)
    assert "NEW1" in _accessions(browser)
    # MPPS starts the exam: the status changes colour.
    row = next(r for r in browser.model.rows() if r["AccessionNumber"] == "TODAY1")
    ref = [{"StudyInstanceUID": row["StudyInstanceUID"]}]
    with qtbot.waitSignal(browser.refreshed, timeout=5000):
        with book.transaction() as tx:
            tx.mpps_create("1.2.3.99", PerformedInfo(status="IN PROGRESS", scheduled=ref))
    i = next(n for n, r in enumerate(browser.model.rows()) if r["AccessionNumber"] == "TODAY1")
    status_cell = browser.model.index(i, 0)
    assert browser.model.data(status_cell) == "In progress"
    from PySide6.QtCore import Qt

    assert browser.model.data(status_cell, Qt.ItemDataRole.BackgroundRole).color().name() == "#c77c00"
    # No images yet: opening does nothing.
    browser.table.selectRow(i)
    assert not browser.open_button.isEnabled()
    assert not browser.open_selected()
    # Images arrive (reconciled to the order): the row says so and opens the study.
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.AccessionNumber, ds.PatientID = row["StudyInstanceUID"], "TODAY1", "PTODAY1"
    ds.SOPInstanceUID = pydicom.uid.generate_uid(prefix=None)
    with qtbot.waitSignal(browser.refreshed, timeout=5000):
        assert archive.ingest(ds).ok
    i = next(n for n, r in enumerate(browser.model.rows()) if r["AccessionNumber"] == "TODAY1")
    assert browser.model.data(browser.model.index(i, 10)) == "Images"
    browser.table.selectRow(i)
    assert browser.open_button.isEnabled()
    with qtbot.waitSignal(browser.openRequested, timeout=2000) as blocker:
        browser.open_button.click()
    assert blocker.args == [row["StudyInstanceUID"]]
    # The rendered table shows the status colour (unselected rows: no highlight on top).
    browser.table.clearSelection()
    image = browser.table.viewport().grab().toImage()
    rect = browser.table.visualRect(browser.model.index(i, 0))
    pixel = image.pixelColor(rect.left() + 3, rect.center().y())
    assert pixel.name() == "#c77c00"
