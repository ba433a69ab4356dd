"""HL7 over real MLLP sockets: ADT/ORM intake, ACK/NAK, duplicates, character sets, broken frames, ORU out."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import hl7.mllp
import pydicom
import pytest
from hl7.client import MLLPClient
from pydicom.data import get_testdata_file

from hilum.archive.orders import OrderBook
from hilum.cli import main as cli_main
from hilum.config import Config
from hilum.hl7.message import ack_code_of
from hilum.hl7.outbound import HL7SendError, Report, send_oru
from hilum.hl7.service import HL7Service


def seg(name: str, fields: dict[int, str]) -> str:
    """One segment from {field number: value}, numbered as HL7 counts (MSH-1 is the separator)."""
    top = max(fields) if fields else 0
    if name == "MSH":
        return "|".join(["MSH", "^~\\&"] + [fields.get(i, "") for i in range(3, top + 1)])
    return "|".join([name] + [fields.get(i, "") for i in range(1, top + 1)])


def msh(kind: str, control: str, *, charset: str = "", version: str = "2.5") -> str:
    f = {3: "HIS", 4: "HOSP", 5: "HILUM", 6: "RAD", 7: "20260301120000", 9: kind, 10: control, 11: "P", 12: version}
    if charset:
        f[18] = charset
    return seg("MSH", f)


def message(*segments: str) -> str:
    return "\r".join(segments) + "\r"


def adt(event: str, control: str, pid: str, name: str, *, birth: str = "19700101", sex: str = "M",
        charset: str = "UNICODE UTF-8", extra: tuple[str, ...] = ()) -> str:
    return message(msh(f"ADT^{event}^ADT_A01", control, charset=charset), seg("EVN", {1: event}),
                   seg("PID", {1: "1", 3: f"{pid}^^^HOSP^MR", 5: name, 7: birth, 8: sex}),
                   seg("PV1", {1: "1", 2: "O"}), *extra)


def orm(control: str, pid: str, name: str, *, order_control: str = "NW", placer: str = "PL1", accession: str = "ACC1",
        modality: str = "CT", station: str = "CT01", start: str = "202603011030", procedure: str = "CTCHEST^CT Chest^L",
        study_uid: str = "", extra_groups: tuple[str, ...] = ()) -> str:
    segs = [msh("ORM^O01^ORM_O01", control, charset="UNICODE UTF-8", version="2.3.1"),
            seg("PID", {1: "1", 3: f"{pid}^^^HOSP^MR", 5: name, 7: "19800202", 8: "F"}),
            seg("PV1", {1: "1", 2: "O", 8: "1234^Referrer^Rita"}),
            seg("ORC", {1: order_control, 2: placer, 3: f"F{placer}", 5: "SC", 7: f"^^^{start}^^R", 12: "55^Orderer^Otto",
                        18: station}),
            seg("OBR", {1: "1", 2: placer, 3: f"F{placer}", 4: procedure, 16: "55^Orderer^Otto", 18: accession,
                        19: f"RP{accession}", 20: f"SPS{accession}", 24: modality, 27: f"^^^{start}^^R",
                        31: "^Cough", 34: "77&Tech&Tina"})]
    if study_uid:
        segs.append(seg("ZDS", {1: f"{study_uid}^100^Application^DICOM"}))
    return message(*segs, *extra_groups)


@pytest.fixture
def node(archive, tmp_path: Path) -> Iterator[HL7Service]:  # type: ignore[no-untyped-def]
    cfg = Config(data_dir=tmp_path, extra={"hl7": {"stations": {"MR": "MR_STATION"}}})
    svc = HL7Service(cfg, archive, host="127.0.0.1", port=0, frame_timeout=0.5)
    svc.start()
    yield svc
    svc.stop()


def send(svc: HL7Service, text: str | bytes, encoding: str = "utf-8") -> tuple[str, str, bytes]:
    """Send one message with python-hl7's MLLP client; returns (MSA-1, MSA-3, ACK bytes)."""
    with MLLPClient("127.0.0.1", svc.port, encoding=encoding) as client:
        raw = client.send_message(text)
    body = raw.strip(b"\x0b\x1c\r")
    code, why = ack_code_of(body)
    return code, why, body


def test_adt_registers_updates_and_acks(node: HL7Service, archive) -> None:  # type: ignore[no-untyped-def]
    code, _, ack = send(node, adt("A01", "M1", "P100", "Müller^Jürgen^^^Dr"))
    assert code == "AA"
    parsed = hl7.parse(ack.decode("utf-8"))
    assert str(parsed.segment("MSA")(2)) == "M1"
    assert str(parsed["MSH.F9.R1.C1"]) == "ACK" and str(parsed["MSH.F9.R1.C2"]) == "A01"
    [p] = archive.query("PATIENT", {"PatientID": "P100"})
    assert p["PatientName"] == "Müller^Jürgen^^Dr" and p["PatientBirthDate"] == "19700101"
    # A08 in ISO 8859-1: demographics follow; empty fields keep, "" clears.
    a08 = adt("A08", "M2", "P100", "Müller^Jürgen", birth="", sex='""', charset="8859/1")
    code, _, _ = send(node, a08.encode("latin-1"))
    assert code == "AA"
    [p] = archive.query("PATIENT", {"PatientID": "P100"})
    assert p["PatientName"] == "Müller^Jürgen" and p["PatientBirthDate"] == "19700101" and p["PatientSex"] == ""
    assert archive.query("PATIENT", {"PatientName": "MÜLLER*"})  # the index matches the new name
    # A03 (discharge) is acknowledged and changes nothing.
    assert send(node, adt("A03", "M3", "P100", "Other^Name"))[0] == "AA"
    assert archive.query("PATIENT", {"PatientID": "P100"})[0]["PatientName"] == "Müller^Jürgen"


def test_duplicate_control_id_gets_the_original_ack(node: HL7Service, archive) -> None:  # type: ignore[no-untyped-def]
    msg = orm("D1", "P200", "Dup^Dora")
    c1, _, ack1 = send(node, msg)
    c2, _, ack2 = send(node, msg)
    assert c1 == c2 == "AA" and ack1 == ack2
    book = OrderBook(archive)
    assert len(book.worklist({"PatientID": "P200"})) == 1  # applied once
    # The same order under a new control ID is a duplicate order: AE, code 205.
    code, why, ack = send(node, orm("D2", "P200", "Dup^Dora"))
    assert code == "AE" and "placer number" in why
    assert b"205^Duplicate key identifier^HL70357" in ack


def test_orm_creates_order_and_unknown_patient(node: HL7Service, archive) -> None:  # type: ignore[no-untyped-def]
    assert archive.query("PATIENT", {"PatientID": "P300"}) == []
    uid = "1.2.826.0.1.3680043.9.7.300"
    assert send(node, orm("O1", "P300", "Nowak^Zofia", study_uid=uid))[0] == "AA"
    [p] = archive.query("PATIENT", {"PatientID": "P300"})  # policy: create the patient
    assert p["PatientName"] == "Nowak^Zofia" and p["PatientSex"] == "F"
    [row] = OrderBook(archive).worklist({"AccessionNumber": "ACC1"})
    assert row["StudyInstanceUID"] == uid
    assert row["Modality"] == "CT" and row["ScheduledStationAETitle"] == "CT01"
    assert (row["ScheduledProcedureStepStartDate"], row["ScheduledProcedureStepStartTime"]) == ("20260301", "103000")
    assert row["RequestedProcedureID"] == "RPACC1" and row["ScheduledProcedureStepID"] == "SPSACC1"
    assert row["RequestedProcedureDescription"] == "CT Chest"
    assert row["ReferringPhysicianName"] == "Referrer^Rita" and row["RequestingPhysician"] == "Orderer^Otto"
    assert row["ScheduledPerformingPhysicianName"] == "Tech^Tina" and row["RequestedProcedurePriority"] == "ROUTINE"
    assert row["ReasonForTheRequestedProcedure"] == "Cough"
    # MR without ORC-18: the [hl7.stations] setting gives the station AE title.
    assert send(node, orm("O2", "P300", "Nowak^Zofia", placer="PL2", accession="ACC2", modality="MR",
                          station=""))[0] == "AA"
    assert OrderBook(archive).worklist({"AccessionNumber": "ACC2"})[0]["ScheduledStationAETitle"] == "MR_STATION"
    # Change (XO), status (SC IP), cancel (CA).
    xo = orm("O3", "P300", "Nowak^Zofia", order_control="XO", start="202603021500")
    assert send(node, xo)[0] == "AA"
    assert OrderBook(archive).worklist({"AccessionNumber": "ACC1"})[0]["ScheduledProcedureStepStartDate"] == "20260302"
    assert send(node, orm("O4", "P300", "Nowak^Zofia", placer="PL2", accession="ACC2", order_control="CA"))[0] == "AA"
    assert OrderBook(archive).order(accession="ACC2")["status"] == "CANCELLED"
    assert OrderBook(archive).worklist({"PatientID": "P300"})[0]["AccessionNumber"] == "ACC1"


def test_bad_messages_get_clear_naks_and_nothing_is_lost(node: HL7Service, archive) -> None:  # type: ignore[no-untyped-def]
    book = OrderBook(archive)
    # Cancel of an unknown order: AE 204, nothing changes.
    code, why, ack = send(node, orm("B1", "P400", "Un^Known", placer="NOPE", accession="NOPE", order_control="CA"))
    assert code == "AE" and "unknown order" in why and b"204^Unknown key identifier" in ack
    assert archive.query("PATIENT", {"PatientID": "P400"}) == []  # nothing half-applied
    # No MSH: AR.
    code, why, _ = send(node, "PID|1||X\rPV1|1\r")
    assert code == "AR" and "MSH" in why
    # Unsupported message type: AR 200.
    code, _, ack = send(node, message(msh("SIU^S12", "B2"), seg("SCH", {1: "1"})))
    assert code == "AR" and b"200^Unsupported message type" in ack
    # A message naming a character set it is not in: AR, not applied.
    code, _, _ = send(node, adt("A04", "B3", "P401", "Zoë^Ann", charset="UNICODE UTF-8").encode("utf-8")
                      .replace("Zoë".encode(), "Zo\xeb".encode("latin-1")))
    assert code == "AR" and archive.query("PATIENT", {"PatientID": "P401"}) == []
    # Second group fails: the first group's order is not created either.
    bad_second = orm("B4", "P402", "Two^Groups", placer="G1", accession="G1", extra_groups=(
        seg("ORC", {1: "CA", 2: "MISSING"}),))
    code, _, _ = send(node, bad_second)
    assert code == "AE"
    assert book.order(accession="G1") is None and archive.query("PATIENT", {"PatientID": "P402"}) == []
    # The corrected message under the same control ID is processed (NAKs are not remembered).
    assert send(node, orm("B4", "P402", "Two^Groups", placer="G1", accession="G1"))[0] == "AA"
    assert book.order(accession="G1") is not None


def _raw_exchange(port: int, data: bytes, n_answers: int, timeout: float = 5.0) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        deadline = time.monotonic() + timeout
        while buf.count(b"\x1c\r") < n_answers and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return [f.strip(b"\x0b") for f in buf.split(b"\x1c\r") if f.strip()]


def test_truncated_frames(node: HL7Service, archive, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, logger="hilum.hl7.service")
    full = adt("A04", "T2", "P501", "Whole^Frame").encode()
    cut = adt("A04", "T1", "P500", "Cut^Short").encode()[:-20]
    # A frame abandoned by the next start block: NAK for it (with its control ID), then the ACK.
    answers = _raw_exchange(node.port, b"\x0b" + cut + b"\x0b" + full + b"\x1c\r", 2)
    assert [ack_code_of(a)[0] for a in answers] == ["AR", "AA"]
    assert b"MSA|AR|T1|truncated MLLP frame" in answers[0] and b"MSA|AA|T2" in answers[1]
    # A frame that never ends: NAK after the frame timeout.
    [answer] = _raw_exchange(node.port, b"\x0b" + adt("A04", "T3", "P502", "Never^Ends").encode(), 1)
    assert b"MSA|AR|T3|" in answer
    # A connection closed inside a frame: nothing applied; data outside frames: NAK.
    with socket.create_connection(("127.0.0.1", node.port)) as s:
        s.sendall(b"\x0b" + adt("A04", "T4", "P503", "Closed^Early").encode()[:40])
    [answer] = _raw_exchange(node.port, b"garbage\x1c\r", 1)
    assert ack_code_of(answer)[0] == "AR"
    # Only once the node has seen that connection end (it says so) does "nothing applied" mean anything.
    deadline = time.monotonic() + 10
    while not any("closed inside a frame" in r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, "the node never noticed the connection closed inside a frame"
        time.sleep(0.01)
    ids = {p["PatientID"] for p in archive.query("PATIENT", {})}
    assert ids == {"P501"}


def _ct(study_uid: str, accession: str, patient_id: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.AccessionNumber, ds.PatientID = study_uid, accession, patient_id
    ds.SOPInstanceUID = pydicom.uid.generate_uid(prefix=None)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid(prefix=None)
    return ds


def test_merge_moves_studies_to_surviving_patient(node: HL7Service, archive) -> None:  # type: ignore[no-untyped-def]
    assert send(node, adt("A04", "G1", "TEMP1", "Unknown^Emergency"))[0] == "AA"
    assert send(node, orm("G2", "TEMP1", "Unknown^Emergency", placer="EM1", accession="EM1"))[0] == "AA"
    uid = OrderBook(archive).order(accession="EM1")["study_uid"]
    assert archive.ingest(_ct(uid, "EM1", "TEMP1")).ok
    a40 = adt("A40", "G3", "MRN9", "Kowalski^Jan", extra=(seg("MRG", {1: "TEMP1^^^HOSP^MR"}),))
    assert send(node, a40)[0] == "AA"
    assert archive.query("PATIENT", {"PatientID": "TEMP1"}) == []
    [study] = archive.query("STUDY", {"PatientID": "MRN9"})
    assert study["StudyInstanceUID"] == uid and study["PatientName"] == "Kowalski^Jan"
    assert OrderBook(archive).worklist({"AccessionNumber": "EM1"})[0]["PatientID"] == "MRN9"
    # Merging an unknown prior patient: accepted with a warning.
    code, why, ack = send(node, adt("A40", "G4", "MRN9", "Kowalski^Jan", extra=(seg("MRG", {1: "NOBODY"}),)))
    assert code == "AA" and b"|W|" in ack


def test_python_hl7_asyncio_client_many_messages(node: HL7Service, archive) -> None:  # type: ignore[no-untyped-def]
    async def run() -> list[str]:
        reader, writer = await hl7.mllp.open_hl7_connection("127.0.0.1", node.port, encoding="utf-8")
        codes = []
        for i in range(20):
            writer.writemessage(hl7.parse(adt("A04", f"AS{i}", f"AS{i}", f"Async^Patient{i}")))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readmessage(), 10)
            codes.append(str(ack.segment("MSA")(1)))
        writer.close()
        return codes

    assert asyncio.run(run()) == ["AA"] * 20
    assert len(archive.query("PATIENT", {"PatientID": "AS*"})) == 20


class _HisListener:
    """A stand-in HIS: python-hl7's asyncio MLLP server that records messages and ACKs them."""

    def __init__(self, ack_code: str = "AA"):
        self.received: list[hl7.Message] = []
        self.ack_code = ack_code
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()

        async def handle(reader, writer):  # type: ignore[no-untyped-def]
            try:
                while True:
                    msg = await reader.readmessage()
                    self.received.append(msg)
                    writer.writemessage(msg.create_ack(self.ack_code))
                    await writer.drain()
            except asyncio.IncompleteReadError:
                writer.close()

        async def start():  # type: ignore[no-untyped-def]
            return await hl7.mllp.start_hl7_server(handle, "127.0.0.1", 0, encoding="utf-8")

        self.server = self.loop.run_until_complete(start())
        self.port = self.server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> _HisListener:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


def test_oru_goes_to_the_configured_his(tmp_path: Path) -> None:
    report = Report(patient_id="P100", patient_name="Müller^Jürgen", accession_number="ACC1",
                    study_uid="1.2.3.4", procedure_code="CTCHEST", procedure_text="CT Chest",
                    text="No acute findings.\nLungs clear | no effusion.", author="Rad^Ruth")
    with pytest.raises(HL7SendError, match="no HIS endpoint"):
        send_oru(Config(data_dir=tmp_path), report)
    with _HisListener() as his:
        cfg = Config(data_dir=tmp_path, extra={"hl7": {"his_host": "127.0.0.1", "his_port": his.port}})
        ack = send_oru(cfg, report, timeout=10)
        assert ack_code_of(ack)[0] == "AA"
        [msg] = his.received
        assert str(msg["MSH.F9.R1.C1"]) == "ORU" and str(msg["MSH.F18"]) == "UNICODE UTF-8"
        assert str(msg["PID.F5.R1.C1"]) == "Müller" and str(msg["OBR.F18"]) == "ACC1"
        assert str(msg["OBR.F25"]) == "F"
        obx = msg.segments("OBX")
        assert msg.unescape(str(obx[1](5))) == "Lungs clear | no effusion."
        assert str(obx[2](5)) == "1.2.3.4"
    with _HisListener(ack_code="AE") as his:
        cfg = Config(data_dir=tmp_path, extra={"hl7": {"his_host": "127.0.0.1", "his_port": his.port}})
        with pytest.raises(HL7SendError, match="answered AE"):
            send_oru(cfg, report, timeout=10)


def test_cli_send(node: HL7Service, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    good = tmp_path / "good.hl7"
    good.write_bytes((adt("A04", "C1", "P700", "Cli^One").replace("\r", "\n") +
                      adt("A04", "C2", "P701", "Cli^Two")).encode())
    bad = tmp_path / "bad.hl7"
    bad.write_bytes(orm("C3", "P702", "Cli^Three", order_control="CA", placer="X", accession="X").encode())
    assert cli_main(["hl7", "send", "127.0.0.1", str(node.port), str(good)]) == 0
    assert capsys.readouterr().out.count(": AA") == 2
    assert cli_main(["hl7", "send", "127.0.0.1", str(node.port), str(bad)]) == 1
    assert ": AE unknown order" in capsys.readouterr().out
    assert cli_main(["hl7", "send", "127.0.0.1", "1", str(good)]) == 1
    assert "cannot connect" in capsys.readouterr().err
    proc = subprocess.run([sys.executable, "-m", "hilum", "hl7", "send", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "MLLP" in proc.stdout
