"""The HL7 outbox (hilum.hl7.outbox) against a real MLLP receiver (an asyncio listener on 127.0.0.1): the ORU of
a signed report (PID/ORC/OBR/OBX in UTF-8, accents), exactly once; receiver down → waits, then goes once;
AE/AR → stops and alerts; the queue survives a restart of the service and of the archive; MDM^T02 with the PDF."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from tests._report_support import Receiver
from tests.conftest import free_port

from hilum.archive import Archive
from hilum.archive.orders import OrderBook, OrderInfo, PatientInfo, StepInfo
from hilum.archive.reports import Endpoint, Outbox, OutboxChanged, Reports, Section, endpoints_of
from hilum.archive.users import UserStore
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study
from hilum.hl7.outbox import OutboxService, parse_ack

STUDY = make_study(MUELLER, accession="ACC-HL7", seed="outbox-tests")
PASSWORD = "correct horse 1"


def _wait(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def setup(archive: Archive) -> Iterator[dict]:
    for ds in generate_ct_series(STUDY, rows=16, columns=16, slices=2, noise_sigma=0.0):
        assert archive.ingest(ds).ok
    with OrderBook(archive).transaction() as tx:
        p = tx.upsert_patient(PatientInfo(MUELLER.patient_id, name=MUELLER.name))
        tx.create_order(
            p,
            OrderInfo(
                placer_number="PL-77",
                accession_number=STUDY.accession,
                study_uid=STUDY.uid,
                code_value="CTCHEST",
                code_scheme="L",
                code_meaning="CT thorax",
                steps=[StepInfo(modality="CT", start_date="20261102")],
            ),
        )
    users = UserStore.of(archive, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    users.add("drhouse", "radiologist", PASSWORD)
    port = free_port()
    yield {"users": users, "port": port}


SECTIONS = [
    Section("findings", "Findings", "Épanchement pleural droit, modéré."),
    Section("impression", "Impression", "Pas d'embolie — contrôle dans 3 mois."),
]


def _sign(archive: Archive, users: UserStore, *, mdm: bool = False) -> str:
    rep = Reports(archive, users=users, endpoints=["his"], mdm_endpoints=["dms"] if mdm else [], store_dicom=mdm)
    r = rep.create(STUDY.uid, user="drhouse", sections=SECTIONS)
    rep.sign(r.report_id, user="drhouse", password=PASSWORD)
    return r.report_id


def _service(archive: Archive, port: int, mdm_port: int | None = None) -> OutboxService:
    mdm = [Endpoint("dms", "127.0.0.1", mdm_port, timeout=5)] if mdm_port else []
    return OutboxService(
        archive, [Endpoint("his", "127.0.0.1", port, timeout=5)], mdm, retry_base=0.05, retry_max=0.2, poll=0.5
    )


def _segments(msg: bytes) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for seg in msg.decode("utf-8").split("\r"):
        if seg:
            out.setdefault(seg[:3], []).append(seg.split("|"))
    return out


def test_signed_report_goes_as_oru_in_utf8_exactly_once(archive: Archive, setup: dict) -> None:
    rx = Receiver(setup["port"]).start()
    svc = _service(archive, setup["port"])
    svc.start()
    try:
        report_id = _sign(archive, setup["users"])
        _wait(lambda: Outbox(archive).list()[0].state == "sent")
        time.sleep(0.5)  # more passes: nothing goes twice
        svc.wake()
        time.sleep(0.3)
    finally:
        svc.stop()
        rx.stop()
    assert len(rx.messages) == 1
    seg = _segments(rx.messages[0])
    msh = seg["MSH"][0]
    assert msh[8] == "ORU^R01^ORU_R01" and msh[11] == "2.5" and msh[17] == "UNICODE UTF-8"
    assert seg["PID"][0][3] == MUELLER.patient_id and seg["PID"][0][5].startswith("Müller^Jürgen")
    assert seg["ORC"][0][1] == "RE" and seg["ORC"][0][2] == "PL-77"
    obr = seg["OBR"][0]
    assert obr[2] == "PL-77" and obr[4].startswith("CTCHEST^CT thorax") and obr[18] == STUDY.accession
    assert obr[25] == "F"
    texts = [o[5] for o in seg["OBX"] if o[2] == "TX"]
    assert "Épanchement pleural droit, modéré." in texts and "Pas d'embolie — contrôle dans 3 mois." in texts
    assert [o[5] for o in seg["OBX"] if o[2] == "ST"] == [STUDY.uid]
    m = Outbox(archive).list()[0]
    assert (m.report_id, m.state, m.ack_code, m.attempts) == (report_id, "sent", "AA", 1)
    assert m.sent_at is not None and m.message == rx.messages[0]


def test_receiver_down_then_back_sends_once(archive: Archive, setup: dict) -> None:
    svc = _service(archive, setup["port"])
    svc.start()
    rx = None
    try:
        _sign(archive, setup["users"])
        _wait(lambda: Outbox(archive).list()[0].attempts >= 2)
        m = Outbox(archive).list()[0]
        assert m.state == "pending" and "cannot deliver" in m.last_error and m.next_try_at is not None
        rx = Receiver(setup["port"]).start()
        _wait(lambda: Outbox(archive).list()[0].state == "sent")
        time.sleep(0.6)
    finally:
        svc.stop()
        if rx is not None:
            rx.stop()
    assert rx is not None and len(rx.messages) == 1
    assert Outbox(archive).list()[0].ack_code == "AA"


@pytest.mark.parametrize("code,state", [("AE", "failed-ae"), ("AR", "failed-ar")])
def test_refusal_stops_the_message_and_alerts(archive: Archive, setup: dict, code: str, state: str) -> None:
    rx = Receiver(setup["port"], code=code).start()
    alerts: list[OutboxChanged] = []
    unsub = archive.events.subscribe(OutboxChanged, lambda ev: alerts.append(ev) if ev.alert else None)
    svc = _service(archive, setup["port"])
    svc.start()
    try:
        _sign(archive, setup["users"])
        _wait(lambda: Outbox(archive).list()[0].state == state)
        time.sleep(0.5)
    finally:
        svc.stop()
        rx.stop()
        unsub()
    assert len(rx.messages) == 1  # stopped: not retried
    m = Outbox(archive).list()[0]
    assert m.ack_code == code and "Unknown patient" in m.ack_text and "Unknown patient" in m.last_error
    assert [(a.state, a.alert) for a in alerts] == [(state, True)]
    # by hand: retried once more, and delivered when the receiver accepts
    Outbox(archive).retry(m.pk)
    rx2 = Receiver(setup["port"], code="AA").start()
    svc2 = _service(archive, setup["port"])
    svc2.start()
    try:
        _wait(lambda: Outbox(archive).list()[0].state == "sent")
    finally:
        svc2.stop()
        rx2.stop()
    assert len(rx2.messages) == 1 and rx2.messages[0] == rx.messages[0]  # the same message, same control ID
    with pytest.raises(Exception, match="delivered already"):
        Outbox(archive).retry(m.pk)


def test_outbox_survives_a_restart(archive: Archive, setup: dict, data_dir: Path) -> None:
    svc = _service(archive, setup["port"])
    svc.start()
    _sign(archive, setup["users"])
    _wait(lambda: Outbox(archive).list()[0].attempts >= 1 and Outbox(archive).list()[0].last_error != "")
    svc.stop()
    first = Outbox(archive).list()[0]
    assert first.state == "pending" and first.message  # composed once, before the failed send
    archive.close()
    rx = Receiver(setup["port"]).start()
    with Archive(data_dir) as again:
        svc2 = _service(again, setup["port"])
        svc2.start()
        try:
            _wait(lambda: Outbox(again).list()[0].state == "sent")
            time.sleep(0.5)
        finally:
            svc2.stop()
            rx.stop()
        assert rx.messages == [first.message]
        # a third start sends nothing
        rx3 = Receiver(setup["port"]).start()
        svc3 = _service(again, setup["port"])
        svc3.start()
        time.sleep(0.5)
        svc3.stop()
        rx3.stop()
        assert rx3.messages == []


def test_mdm_carries_the_pdf(archive: Archive, setup: dict) -> None:
    mdm_port = free_port()
    rx = Receiver(setup["port"]).start()
    rx_mdm = Receiver(mdm_port).start()
    svc = _service(archive, setup["port"], mdm_port)
    svc.start()
    try:
        report_id = _sign(archive, setup["users"], mdm=True)
        _wait(lambda: all(m.state == "sent" for m in Outbox(archive).list()) and len(Outbox(archive).list()) == 2)
    finally:
        svc.stop()
        rx.stop()
        rx_mdm.stop()
    assert len(rx.messages) == 1 and len(rx_mdm.messages) == 1
    seg = _segments(rx_mdm.messages[0])
    assert seg["MSH"][0][8] == "MDM^T02^MDM_T02" and seg["TXA"][0][12] == report_id and seg["TXA"][0][17] == "AU"
    obx = seg["OBX"][0]
    assert obx[2] == "ED"
    _src, kind, sub, enc, data = obx[5].split("^")
    assert (kind, sub, enc) == ("application", "pdf", "Base64")
    assert base64.b64decode(data).startswith(b"%PDF-")


def test_endpoints_from_config() -> None:
    class Cfg:
        extra = {
            "report": {
                "his": [{"name": "ris", "host": "h", "port": 2575}],
                "mdm": [{"name": "dms", "host": "d", "port": 2576, "timeout": 3}],
            }
        }

    oru, mdm = endpoints_of(Cfg())
    assert oru == [Endpoint("ris", "h", 2575)] and mdm == [Endpoint("dms", "d", 2576, 3.0)]

    class Old:
        extra = {"hl7": {"his_host": "x", "his_port": 2600}}

    assert endpoints_of(Old()) == ([Endpoint("his", "x", 2600)], [])

    class Bad:
        extra = {"report": {"his": [{"name": "ris", "host": "h", "port": "no"}]}}

    with pytest.raises(ValueError, match=r"his\[0\]\.port"):
        endpoints_of(Bad())


def test_bad_report_settings_are_a_config_error(archive: Archive) -> None:
    from hilum.errors import ConfigError

    class Bad:
        extra = {"report": {"his": [{"name": "ris", "host": "h", "port": 1}], "retry_base": "soon"}}

    with pytest.raises(ConfigError, match=r"\[report\] retry_base must be a positive number"):
        OutboxService.from_config(archive, Bad())


def test_parse_ack() -> None:
    assert parse_ack(b"MSH|^~\\&|A\rMSA|AE|C1|Patient inconnu \xc3\xa9\r") == ("AE", "C1", "Patient inconnu é")
    assert parse_ack(b"garbage") == ("", "", "")
