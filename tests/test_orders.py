"""Orders in the archive: creation, worklist matching, status transitions, MPPS, reconciliation, merge."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from hilum.archive.orders import (
    CANCELLED,
    COMPLETED,
    IN_PROGRESS,
    SCHEDULED,
    OrderBook,
    OrderError,
    OrderInfo,
    PatientInfo,
    PerformedInfo,
    Reconciler,
    StepInfo,
    aggregate_status,
)


@pytest.fixture
def book(archive):  # type: ignore[no-untyped-def]
    """An order book and, as the node builds them, the reconciler that matches arriving studies."""
    b = OrderBook(archive)
    reconciler = Reconciler(b)
    reconciler.start()
    yield b
    reconciler.stop()


def _order(book: OrderBook, pid: str, name: str, *, modality: str = "CT", station: str = "CT1",
           date: str = "20260301", time: str = "0930", placer: str = "", accession: str = "") -> int:
    with book.transaction() as tx:
        p = tx.upsert_patient(PatientInfo(pid, name=name, birth_date="19800101", sex="F"))
        return tx.create_order(p, OrderInfo(placer_number=placer, accession_number=accession,
                                            description=f"{modality} exam", referring_physician="Ref^Rita",
                                            steps=[StepInfo(modality=modality, station_aet=station,
                                                            start_date=date, start_time=time)]))


def test_worklist_matching_uses_dicom_rules(book: OrderBook) -> None:
    _order(book, "P1", "Müller^Jürgen", accession="A1")
    _order(book, "P2", "Smith^Anna", modality="MR", station="MR1", date="20260302", time="1400", accession="A2")
    _order(book, "P3", "Smythe^Bob", date="20260303", time="0800", accession="A3")

    def acc(ident: dict) -> list[str]:
        return [r["AccessionNumber"] for r in book.worklist(ident)]

    assert acc({}) == ["A1", "A2", "A3"]
    assert acc({"PatientName": "mül*"}) == ["A1"]  # case-insensitive PN wildcard, non-ASCII
    assert acc({"PatientName": "SM?TH^*"}) == ["A2"]
    assert acc({"Modality": "CT"}) == ["A1", "A3"]
    assert acc({"ScheduledStationAETitle": "MR1"}) == ["A2"]
    assert acc({"ScheduledProcedureStepStartDate": "20260302-"}) == ["A2", "A3"]
    assert acc({"ScheduledProcedureStepStartDate": "-20260302"}) == ["A1", "A2"]
    assert acc({"ScheduledProcedureStepStartDate": "20260301-20260303",
                "ScheduledProcedureStepStartTime": "0900-1500"}) == ["A1", "A2", "A3"]  # combined range
    assert acc({"ScheduledProcedureStepStartDate": "20260301", "ScheduledProcedureStepStartTime": "1000-"}) == []
    assert acc({"AccessionNumber": "A3"}) == ["A3"]
    assert acc({"ReferringPhysicianName": "ref^rita"}) == ["A1", "A2", "A3"]
    assert acc({"StudyInstanceUID": [r["StudyInstanceUID"] for r in book.worklist({"AccessionNumber": "A2"})]}) \
        == ["A2"]
    with pytest.raises(ValueError):
        book.worklist({"ScheduledProcedureStepStartDate": "2026-13"})
    row = book.worklist({"AccessionNumber": "A1"})[0]
    assert row["ScheduledProcedureStepStartTime"] == "093000"
    assert row["ScheduledProcedureStepStatus"] == "SCHEDULED"
    assert row["StudyInstanceUID"].startswith("2.25.")  # assigned at order time
    assert row["PatientName"] == "Müller^Jürgen"


def test_status_transitions_and_worklist_status_filter(book: OrderBook) -> None:
    pk1 = _order(book, "P1", "A^B", accession="A1")
    pk2 = _order(book, "P1", "A^B", accession="A2")
    with book.transaction() as tx:
        assert tx.set_status(pk1, IN_PROGRESS) == IN_PROGRESS
        assert tx.set_status(pk2, CANCELLED) == CANCELLED
    assert [r["AccessionNumber"] for r in book.worklist({})] == ["A1"]  # active only by default
    assert [r["AccessionNumber"] for r in book.worklist({"ScheduledProcedureStepStatus": "CANCELED"})] == ["A2"]
    assert [r["AccessionNumber"] for r in book.worklist({"ScheduledProcedureStepStatus": "STARTED"})] == ["A1"]
    assert len(book.worklist({}, active_only=False)) == 2
    with pytest.raises(OrderError) as err, book.transaction() as tx:
        tx.set_status(pk1, CANCELLED)  # cannot cancel a started exam
    assert err.value.code == "invalid-state"
    with book.transaction() as tx:
        assert tx.set_status(pk1, COMPLETED) == COMPLETED
        assert tx.set_status(pk1, COMPLETED) == COMPLETED  # idempotent


def test_aggregate_status() -> None:
    assert aggregate_status([SCHEDULED, SCHEDULED]) == SCHEDULED
    assert aggregate_status([COMPLETED, SCHEDULED]) == IN_PROGRESS
    assert aggregate_status([COMPLETED, CANCELLED]) == COMPLETED
    assert aggregate_status([CANCELLED]) == CANCELLED


def test_failed_transaction_leaves_nothing(book: OrderBook, archive) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OrderError), book.transaction() as tx:
        p = tx.upsert_patient(PatientInfo("PX", name="Half^Applied"))
        tx.create_order(p, OrderInfo(accession_number="AX"))
        tx.create_order(p, OrderInfo(steps=[StepInfo(start_date="2026-01-01")]))  # invalid date
    assert archive.query("PATIENT", {"PatientID": "PX"}) == []
    assert book.worklist({}, active_only=False) == []


def test_mpps_moves_the_order(book: OrderBook) -> None:
    _order(book, "P1", "A^B", accession="A1")
    row = book.worklist({"AccessionNumber": "A1"})[0]
    ref = [{"StudyInstanceUID": row["StudyInstanceUID"], "ScheduledProcedureStepID": row["ScheduledProcedureStepID"]}]
    with book.transaction() as tx:
        assert tx.mpps_create("1.2.3.4", PerformedInfo(status="IN PROGRESS", scheduled=ref)) == 1
    assert book.order(accession="A1")["status"] == IN_PROGRESS
    with pytest.raises(OrderError) as err, book.transaction() as tx:
        tx.mpps_create("1.2.3.4", PerformedInfo(status="IN PROGRESS", scheduled=ref))
    assert err.value.code == "duplicate-step"
    with book.transaction() as tx:
        tx.mpps_set("1.2.3.4", PerformedInfo(status="COMPLETED", end_date="20260301", end_time="1000"))
    assert book.order(accession="A1")["status"] == COMPLETED
    with pytest.raises(OrderError) as err, book.transaction() as tx:
        tx.mpps_set("1.2.3.4", PerformedInfo(status="DISCONTINUED"))
    assert err.value.code == "invalid-state"
    with pytest.raises(OrderError) as err, book.transaction() as tx:
        tx.mpps_set("9.9.9", PerformedInfo(status="COMPLETED"))
    assert err.value.code == "unknown-step"
    with book.transaction() as tx:  # unscheduled: kept, no order touched
        assert tx.mpps_create("1.2.3.5", PerformedInfo(status="IN PROGRESS", scheduled=[])) == 0


def _ct(study_uid: str, accession: str, patient_id: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID = study_uid
    ds.AccessionNumber = accession
    ds.PatientID = patient_id
    ds.StudyDescription = ""
    ds.ReferringPhysicianName = ""
    ds.SOPInstanceUID = pydicom.uid.generate_uid(prefix=None)
    ds.SeriesInstanceUID = study_uid + ".1"
    return ds


def test_arriving_images_are_reconciled(book: OrderBook, archive) -> None:  # type: ignore[no-untyped-def]
    events = []
    book.subscribe(events.append)
    _order(book, "P1", "A^B", accession="A1")
    _order(book, "P1", "A^B", accession="A2")
    uid1 = book.order(accession="A1")["study_uid"]
    # Modality used the worklist's Study Instance UID but no accession number.
    assert archive.ingest(_ct(uid1, "", "P1")).ok
    # Another used its own study UID but the accession number.
    other = pydicom.uid.generate_uid(prefix=None)
    assert archive.ingest(_ct(other, "A2", "P1")).ok
    o1, o2 = book.order(accession="A1"), book.order(accession="A2")
    assert o1["images_at"] is not None and o1["performed_study_uid"] == uid1
    assert o2["images_at"] is not None and o2["performed_study_uid"] == other
    st = archive.query("STUDY", {"StudyInstanceUID": uid1})[0]
    assert st["AccessionNumber"] == "A1"  # filled from the order
    assert st["StudyDescription"] == "CT exam"
    assert st["ReferringPhysicianName"] == "Ref^Rita"
    assert [e.kind for e in events].count("arrived") == 2


def test_order_after_images_reconciles_at_once(book: OrderBook, archive) -> None:  # type: ignore[no-untyped-def]
    uid = pydicom.uid.generate_uid(prefix=None)
    assert archive.ingest(_ct(uid, "LATE1", "P9")).ok
    _order(book, "P9", "Late^Order", accession="LATE1")
    assert book.order(accession="LATE1")["images_at"] is not None


def test_merge_moves_studies_and_orders(book: OrderBook, archive) -> None:  # type: ignore[no-untyped-def]
    _order(book, "OLD", "Doe^Jane", accession="M1")
    uid = book.order(accession="M1")["study_uid"]
    assert archive.ingest(_ct(uid, "M1", "OLD")).ok
    with book.transaction() as tx:
        assert tx.merge_patients(PatientInfo("NEW", name="Doe^Jane^Q"), "OLD")
    assert archive.query("PATIENT", {"PatientID": "OLD"}) == []
    st = archive.query("STUDY", {"StudyInstanceUID": uid})[0]
    assert st["PatientID"] == "NEW" and st["PatientName"] == "Doe^Jane^Q"
    assert book.worklist({"AccessionNumber": "M1"})[0]["PatientID"] == "NEW"
    with book.transaction() as tx:
        assert not tx.merge_patients(PatientInfo("NEW"), "NOBODY")


def test_message_log_answers_duplicates_once(book: OrderBook) -> None:
    calls = []

    def work(tx):  # type: ignore[no-untyped-def]
        calls.append(1)
        tx.upsert_patient(PatientInfo("D1", name="Dup^Licate"))
        return "ok"

    ack1, dup1 = book.apply_message("HIS|H", "C1", "ADT^A04", work, lambda r: f"ACK-{r}-{len(calls)}")
    ack2, dup2 = book.apply_message("HIS|H", "C1", "ADT^A04", work, lambda r: f"ACK-{r}-{len(calls)}")
    assert (ack1, dup1, dup2) == ("ACK-ok-1", False, True)
    assert ack2 == ack1 and len(calls) == 1
    _, dup3 = book.apply_message("OTHER|H", "C1", "ADT^A04", work, lambda r: "x")  # another sender
    assert not dup3


@pytest.mark.postgres
def test_orders_on_postgresql(pg_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same model on PostgreSQL: migration, intake, worklist matching, duplicates, MPPS, merge."""
    from hilum.archive import Archive

    with Archive(tmp_path / "pg", database_url=pg_url) as archive:
        book = OrderBook(archive)
        _order(book, "PG1", "Łódź^Ewa", accession="PGA1")
        ack, dup = book.apply_message("HIS|H", "PGC1", "ADT^A04",
                                      lambda tx: tx.upsert_patient(PatientInfo("PG2", name="Two^Pg")),
                                      lambda _r: "ACK1")
        assert (ack, dup) == ("ACK1", False)
        assert book.apply_message("HIS|H", "PGC1", "ADT^A04", lambda tx: 1 / 0, lambda _r: "x") == ("ACK1", True)
        assert [r["AccessionNumber"] for r in book.worklist({"PatientName": "łódź*", "Modality": "CT",
                                                              "ScheduledProcedureStepStartDate": "20260301-"})] \
            == ["PGA1"]
        row = book.worklist({"AccessionNumber": "PGA1"})[0]
        with book.transaction() as tx:
            tx.mpps_create("1.2.9", PerformedInfo(status="IN PROGRESS",
                                                  scheduled=[{"StudyInstanceUID": row["StudyInstanceUID"]}]))
            tx.merge_patients(PatientInfo("PG2"), "PG1")
        o = book.order(accession="PGA1")
        assert o["status"] == IN_PROGRESS and o["patient_id"] == "PG2"
