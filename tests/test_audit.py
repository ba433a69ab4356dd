"""The audit trail (issue 21a): every audited action leaves exactly one event with the right user and patient.

Driven by real peers on 127.0.0.1: DCMTK's storescu, findscu, movescu (to a DCMTK storescp) and getscu
against an in-process node; QIDO-RS and WADO-RS with a user's bearer token and a wrong password over
HTTP; HL7 ORM/ADT over MLLP; ``hilum users add`` and ``hilum audit verify`` as subprocesses of the real
CLI; a delete.  Then the hash chain: a modified, deleted or inserted row fails ``hilum audit verify``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import text

from conftest import free_port, wait_port
from hilum.archive import Archive
from hilum.archive.audit import AuditEvent, row_hash, to_xml
from hilum.archive.users import UserStore
from hilum.config import Config, Peer
from hilum.node import Node

BIN = Path("/usr/bin")
dcmtk_needed = pytest.mark.skipif(not (BIN / "storescu").exists(), reason="DCMTK (Debian package dcmtk) is needed")
ROOT = "1.2.826.0.1.3680043.10.999.21."
ENV = {**os.environ, "TCP_NODELAY": "1"}
PW = "correct horse battery"
APP = str(Path(__file__).resolve().parents[1] / "app")


def dcmtk(tool: str, *args: str | int, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def hilum(*args: str, data: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": APP + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "hilum", "--data", str(data), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=120,
        env=env,
    )


def tiny_study(folder: Path, patient: str, pid: str, n: int) -> str:
    study, series = generate_uid(ROOT), generate_uid(ROOT)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ds = Dataset()
        sop = generate_uid(ROOT)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient, pid, "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260102", "101500", f"A{pid}"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 1, i + 1
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(range(64))
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    return study


def events(
    archive: Archive, *, settle: float = 0.3, expect: int = 1, timeout: float = 10.0, **filters: Any
) -> list[dict[str, Any]]:
    """The events matching ``filters`` once ``expect`` of them are there (or ``timeout``), after ``settle``
    seconds more (so that a second, wrong event would show)."""
    deadline = time.monotonic() + timeout
    found = archive.audit.search(**filters)
    while len(found) < expect and time.monotonic() < deadline:
        time.sleep(0.1)
        found = archive.audit.search(**filters)
    time.sleep(settle)
    return archive.audit.search(**filters)


@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    out = tmp_path_factory.mktemp("storescp")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "storescp"), "-aet", "STORESCP", "-od", str(out), "+xa", str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, storescp: int) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("audit")
    data = root / "data"
    cfg = Config(
        data_dir=data,
        dicom_port=free_port(),
        web_port=free_port(),
        hl7_port=free_port(),
        peers={"STORESCP": Peer("STORESCP", "127.0.0.1", storescp)},
    )
    n = Node(cfg, only=["dimse", "dicomweb", "hl7"])
    users = UserStore.of(n.archive)
    users.add("rita", "radiologist", PW)
    token = users.issue_token("rita")
    n.start()
    a = tiny_study(root / "a", "Audit^Anna", "AUD-1", 3)
    b = tiny_study(root / "b", "Audit^Bob", "AUD-2", 2)
    try:
        yield {
            "node": n,
            "archive": n.archive,
            "cfg": cfg,
            "root": root,
            "data": data,
            "token": token,
            "a": a,
            "b": b,
            "url": f"http://127.0.0.1:{cfg.web_port}/dicom-web",
        }
    finally:
        n.stop()


# ------------------------------------------------------------------ DIMSE


@dcmtk_needed
def test_storescu_is_one_event_per_study_per_association(node: dict[str, Any]) -> None:
    root, port = node["root"], node["cfg"].dicom_port
    # one association carrying two studies (five instances): two events, not five
    dcmtk("storescu", "-aet", "MODALITY1", "-aec", "HILUM", "+sd", "127.0.0.1", port, root / "a", root / "b")
    found = events(node["archive"], user="MODALITY1", event="DICOM Instances Transferred", expect=2)
    assert len(found) == 2
    by_study = {e["study_uids"]: e for e in found}
    ea, eb = by_study[node["a"]], by_study[node["b"]]
    assert (ea["patient_id"], ea["patient_name"], ea["instances"]) == ("AUD-1", "Audit^Anna", 3)
    assert (eb["patient_id"], eb["instances"]) == ("AUD-2", 2)
    for e in found:
        assert e["ae_title"] == "MODALITY1" and e["peer"] == "127.0.0.1" and e["outcome"] == 0
        assert e["action"] == "C" and e["role"] == "source"


@dcmtk_needed
def test_findscu_is_one_query_event(node: dict[str, Any]) -> None:
    dcmtk("storescu", "-aet", "LOADER", "-aec", "HILUM", "+sd", "127.0.0.1", node["cfg"].dicom_port, node["root"] / "a")
    dcmtk(
        "findscu",
        "-S",
        "-aet",
        "FINDER",
        "-aec",
        "HILUM",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientID=AUD-1",
        "-k",
        "StudyInstanceUID",
        "127.0.0.1",
        node["cfg"].dicom_port,
    )
    [e] = events(node["archive"], user="FINDER")
    assert e["event"] == "Query" and e["action"] == "E" and e["patient_id"] == "AUD-1"
    assert e["patient_name"] == "Audit^Anna" and "PatientID=AUD-1" in e["detail"] and "1 match" in e["detail"]


@dcmtk_needed
def test_movescu_and_getscu_are_one_event_each(node: dict[str, Any], tmp_path: Path) -> None:
    port = node["cfg"].dicom_port
    dcmtk("storescu", "-aet", "LOADER", "-aec", "HILUM", "+sd", "127.0.0.1", port, node["root"] / "b")
    dcmtk(
        "movescu",
        "-S",
        "-aet",
        "MOVER",
        "-aec",
        "HILUM",
        "-aem",
        "STORESCP",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={node['b']}",
        "127.0.0.1",
        port,
    )
    [m] = events(node["archive"], user="MOVER")
    assert m["event"] == "DICOM Instances Transferred" and m["action"] == "R" and m["patient_id"] == "AUD-2"
    assert m["study_uids"] == node["b"] and m["instances"] == 2 and "C-MOVE to STORESCP" in m["detail"]
    dcmtk(
        "getscu",
        "-S",
        "-aet",
        "GETTER",
        "-aec",
        "HILUM",
        "-od",
        tmp_path,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={node['b']}",
        "127.0.0.1",
        port,
    )
    [g] = events(node["archive"], user="GETTER")
    assert g["patient_id"] == "AUD-2" and g["instances"] == 2 and g["detail"].startswith("C-GET")


# ------------------------------------------------------------------ DICOMweb


def test_qido_and_wado_with_a_token_are_one_event_each(node: dict[str, Any]) -> None:
    archive = node["archive"]
    archive.ingest(next((node["root"] / "a").iterdir()))
    headers = {"Authorization": f"Bearer {node['token']}"}
    r = requests.get(node["url"] + "/studies", params={"PatientID": "AUD-1"}, headers=headers, timeout=30)
    assert r.status_code == 200 and len(r.json()) == 1
    [q] = events(archive, user="rita", event="Query")
    assert q["patient_id"] == "AUD-1" and q["peer"] == "127.0.0.1" and q["detail"].startswith("QIDO-RS STUDY")
    # a study's metadata then its instances, twice: one event per kind of read
    for _ in range(2):
        assert requests.get(node["url"] + f"/studies/{node['a']}/metadata", headers=headers, timeout=30).ok
    found = events(archive, user="rita", event="DICOM Instances Transferred")
    assert len(found) == 1 and found[0]["patient_id"] == "AUD-1" and found[0]["detail"] == "WADO metadata"
    assert found[0]["study_uids"] == node["a"] and found[0]["role"] == "destination"


def test_wrong_password_is_a_failed_login_event(node: dict[str, Any]) -> None:
    r = requests.get(node["url"] + "/studies", auth=("rita", "not her password"), timeout=30)
    assert r.status_code == 401
    [e] = events(node["archive"], user="rita", event="Login")
    assert e["event"] == "User Authentication" and e["outcome"] == 4 and e["peer"] == "127.0.0.1"


# ------------------------------------------------------------------ HL7, users, delete


def test_hl7_orm_over_mllp_is_one_order_record(node: dict[str, Any]) -> None:
    from hl7.client import MLLPClient

    msg = (
        "\r".join(
            [
                "MSH|^~\\&|RIS|HOSP|HILUM|RAD|20260301120000||ORM^O01^ORM_O01|AUD-ORM-1|P|2.3.1|||||||UNICODE UTF-8",
                "PID|1||AUD-9^^^HOSP^MR||Ordré^Olga||19800202|F",
                "PV1|1|O",
                "ORC|NW|PLA9|FPLA9||SC||^^^202603011030^^R",
                "OBR|1|PLA9|FPLA9|CTCHEST^CT Chest^L||||||||||||||ACC9||||||CT",
            ]
        )
        + "\r"
    )
    with MLLPClient("127.0.0.1", node["cfg"].hl7_port, encoding="utf-8") as client:
        ack = client.send_message(msg)
    assert b"MSA|AA" in ack
    [e] = events(node["archive"], event="Order Record")
    assert e["action"] == "C" and e["user"] == "RIS^HOSP" and e["patient_id"] == "AUD-9"
    assert e["patient_name"] == "Ordré^Olga" and "ACC9" in e["detail"] and e["peer"] == "127.0.0.1"


@dcmtk_needed
def test_worklist_query_and_mpps_are_one_event_each(node: dict[str, Any]) -> None:
    """A modality's worklist C-FIND is one "Query"; its MPPS N-CREATE one "Procedure Record" (the extensions
    the node answers through, beside the archive's own C-FIND)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityPerformedProcedureStep

    port = node["cfg"].dicom_port
    dcmtk("findscu", "-W", "-aet", "WLMODALITY", "-aec", "HILUM", "-k", "PatientID=AUD-77", "-k", "PatientName",
          "-k", "ScheduledProcedureStepSequence[0].Modality=CT", "127.0.0.1", port)  # fmt: skip
    [e] = events(node["archive"], user="WLMODALITY")
    assert e["event"] == "Query" and e["patient_id"] == "AUD-77" and "worklist" in e["detail"]
    assert e["peer"] == "127.0.0.1" and e["outcome"] == 0

    ds = Dataset()
    ds.PatientID, ds.PatientName = "AUD-78", "Mpps^Marc"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.Modality = "CT"
    ae = AE(ae_title="MPPSMOD")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title="HILUM")
    assert assoc.is_established
    try:
        assoc.send_n_create(ds, ModalityPerformedProcedureStep, generate_uid())
    finally:
        assoc.release()
    [e] = events(node["archive"], user="MPPSMOD")
    assert e["event"] == "Procedure Record" and e["action"] == "C" and e["patient_id"] == "AUD-78"
    assert e["patient_name"] == "Mpps^Marc" and "N-CREATE" in e["detail"]


def test_users_add_and_delete_are_one_event_each(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = hilum("users", "add", "bob", "--role", "viewer", "--password-stdin", data=data, stdin=PW + "\n")
    assert proc.returncode == 0, proc.stderr
    with Archive(data) as archive:
        [e] = events(archive, event="Security Alert")
        assert e["event_type"] == "User security Attributes Changed" and "bob added" in e["detail"]
        assert e["action"] == "C" and e["user"]
        study = tiny_study(tmp_path / "s", "Del^Dora", "DEL-1", 2)
        for f in (tmp_path / "s").iterdir():
            assert archive.ingest(f).status == "stored"
        assert archive.delete("STUDY", study, user="admin1") == 2
        [d] = events(archive, event="DICOM Study Deleted")
        assert (d["user"], d["patient_id"], d["study_uids"], d["instances"], d["action"]) == (
            "admin1",
            "DEL-1",
            study,
            2,
            "D",
        )


def test_import_and_export_hook(tmp_path: Path) -> None:
    from hilum.archive.importer import import_paths

    study = tiny_study(tmp_path / "s", "Imp^Ida", "IMP-1", 2)
    with Archive(tmp_path / "data") as archive:
        report = import_paths(archive, [tmp_path / "s"], user="importer")
        assert report.imported == 2
        [i] = events(archive, event="Import")
        assert (i["user"], i["patient_id"], i["study_uids"], i["instances"]) == ("importer", "IMP-1", study, 2)
        archive.audit_export([study], destination="/media/cd", user="burner", media=True, instances=2)
        [x] = events(archive, event="Export")
        assert (x["user"], x["patient_id"], x["role"], x["instances"]) == ("burner", "IMP-1", "destination media", 2)


# ------------------------------------------------------------------ the hash chain


def _trail(data: Path, n: int = 6) -> None:
    with Archive(data) as archive:
        for i in range(n):
            archive.audit("Query", user=f"u{i}", detail=f"query {i}", patient_id=f"P{i}")


@pytest.mark.parametrize(
    "tamper, bad",
    [
        ("UPDATE audit_events SET patient_id = 'X' WHERE pk = 3", 3),  # modified
        ("DELETE FROM audit_events WHERE pk = 4", 5),  # deleted: the next one breaks
        ("UPDATE audit_events SET pk = pk + 10 WHERE pk >= 4", 14),  # renumbered to make room for an insert
    ],
)
def test_tampering_fails_hilum_audit_verify(tmp_path: Path, tamper: str, bad: int) -> None:
    data = tmp_path / "data"
    _trail(data)
    ok = hilum("audit", "verify", data=data)
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stderr
    with Archive(data) as archive, archive.engine.begin() as conn:
        conn.execute(text(tamper))
    broken = hilum("audit", "verify", data=data)
    assert broken.returncode == 1
    assert f"BROKEN at event {bad}" in broken.stderr


def test_an_inserted_row_with_a_forged_hash_fails_verify(tmp_path: Path) -> None:
    """A row slipped in whose own hash is right still breaks its successor's prev_hash."""
    data = tmp_path / "data"
    _trail(data, 3)
    with Archive(data) as archive:
        rows = list(archive.audit.rows())
        with archive.engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET pk = pk + 1 WHERE pk >= 3"))  # room after event 2
            forged = dict(rows[1], pk=3, detail="never happened")
            forged["prev_hash"] = rows[1]["hash"]
            forged["hash"] = row_hash(forged, forged["prev_hash"])
            from hilum.archive.schema import audit_events

            conn.execute(audit_events.insert(), [forged])
        result = archive.audit.verify()
    assert not result.ok and result.bad_pk == 4 and "prev_hash" in result.reason


def test_hash_is_canonical_and_the_xml_parses() -> None:
    import xml.etree.ElementTree as ET
    from datetime import UTC, datetime

    ev = AuditEvent(
        "DICOM Instances Transferred",
        action="C",
        user="CT1",
        ae_title="CT1",
        peer="10.0.0.5",
        role="source",
        patient_id="P<1>",
        patient_name="Ünïcode^Näme",
        study_uids=("1.2", "1.3"),
        instances=4,
        at=datetime(2026, 1, 2, 3, 4, 5, 6789, tzinfo=UTC),
    )
    row = {k: getattr(ev, k) for k in ev.__slots__}  # type: ignore[attr-defined]
    row.update(pk=1, study_uids="1.2 1.3")
    naive = dict(row, at=row["at"].replace(tzinfo=None))  # as SQLite gives it back
    assert row_hash(row, "0" * 64) == row_hash(naive, "0" * 64)
    assert row_hash(row, "0" * 64) != row_hash(dict(row, instances=5), "0" * 64)
    root = ET.fromstring(to_xml(row, "NODE1"))
    assert root.tag == "AuditMessage"
    eid = root.find("EventIdentification")
    assert eid is not None and eid.get("EventActionCode") == "C" and eid.get("EventOutcomeIndicator") == "0"
    assert eid.find("EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == "NODE1"  # type: ignore[union-attr]
    objs = root.findall("ParticipantObjectIdentification")
    assert [o.get("ParticipantObjectID") for o in objs] == ["1.2", "1.3", "P<1>"]
    assert objs[2].findtext("ParticipantObjectName") == "Ünïcode^Näme"


def test_audit_can_be_turned_off(tmp_path: Path) -> None:
    from hilum.archive.audit import AuditSettings
    from hilum.errors import ConfigError

    cfg = Config(data_dir=tmp_path, extra={"audit": {"enabled": False}})
    assert AuditSettings.from_config(cfg).enabled is False
    with pytest.raises(ConfigError, match="unknown setting"):
        AuditSettings.from_config(Config(data_dir=tmp_path, extra={"audit": {"enable": True}}))
    with pytest.raises(ConfigError, match="host:port"):
        AuditSettings.from_config(Config(data_dir=tmp_path, extra={"audit": {"syslog": "nohost"}}))
    archive = Archive.from_config(cfg)
    try:
        archive.audit("Query", user="x")
        assert archive.audit.search() == []
    finally:
        archive.close()


def test_the_chain_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """The same hashes on PostgreSQL (timestamptz, the reserved column name "user"), tampering found."""
    with Archive(tmp_path / "data", database_url=pg_url) as archive:
        for i in range(4):
            archive.audit("Query", user=f"pg{i}", patient_id=f"P{i}", patient_name="Ünï^Code", detail=f"q{i}")
        assert archive.audit.verify().ok
        assert [e["user"] for e in archive.audit.search(patient="Ünï*")] == ["pg0", "pg1", "pg2", "pg3"]
        with archive.engine.begin() as conn:
            conn.execute(text("UPDATE audit_events SET \"user\" = 'x' WHERE pk = 2"))
        result = archive.audit.verify()
        assert not result.ok and result.bad_pk == 2


@dcmtk_needed
@pytest.mark.parametrize("peers", ["unknown AE", "known AE from another host"])
def test_a_refused_association_is_one_security_alert(tmp_path: Path, peers: str) -> None:
    known = {"KNOWN": Peer("KNOWN", "127.0.0.1" if peers == "unknown AE" else "10.254.254.254", 104)}
    cfg = Config(data_dir=tmp_path / "data", dicom_port=free_port(), require_known_peers=True, peers=known)
    with Node(cfg, only=["dimse"]) as n:
        caller = "INTRUDER" if peers == "unknown AE" else "KNOWN"
        proc = dcmtk("echoscu", "-aet", caller, "-aec", "HILUM", "127.0.0.1", cfg.dicom_port, check=False)
        assert proc.returncode != 0
        [e] = events(n.archive, event="Security Alert")
    assert e["user"] == caller and e["peer"] == "127.0.0.1" and e["outcome"] == 4
    assert "association refused" in e["detail"]
