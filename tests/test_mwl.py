"""The seed workflow on a real node: HL7 in, DCMTK findscu -W, MPPS, storescu, reconciled C-FIND.

HL7 ADT/ORM arrive over MLLP (python-hl7's client); a modality asks the
Modality Worklist with DCMTK's ``findscu -W``; MPPS N-CREATE/N-SET come from
pynetdicom; the image comes with DCMTK's ``storescu`` and the study-root
C-FIND (``findscu -S``) shows it matched to its order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hl7.client import MLLPClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE

from conftest import free_port
from hilum.cli import main as cli_main
from hilum.config import Config
from hilum.dimse.mpps import MODALITY_PERFORMED_PROCEDURE_STEP
from hilum.dimse.mwl import MODALITY_WORKLIST_FIND
from hilum.hl7.message import ack_code_of
from hilum.node import Node
from test_hl7 import adt, orm

FINDSCU, STORESCU = "/usr/bin/findscu", "/usr/bin/storescu"
pytestmark = pytest.mark.skipif(not (os.path.exists(FINDSCU) and os.path.exists(STORESCU)),
                                reason="DCMTK (findscu, storescu) not installed")
ENV = {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture
def node(archive, tmp_path: Path) -> Iterator[Node]:  # type: ignore[no-untyped-def]
    cfg = Config(data_dir=tmp_path / "cfg", aet="HILUM", dicom_port=free_port(), hl7_port=free_port(),
                 web_port=free_port())
    n = Node(cfg, archive)
    n.start()
    yield n
    n.stop()


def hl7_send(node: Node, text: str) -> str:
    with MLLPClient("127.0.0.1", node.config.hl7_port) as client:
        raw = client.send_message(text)
    return ack_code_of(raw.strip(b"\x0b\x1c\r"))[0]


def findscu(node: Node, out: Path, model: str, keys: list[str], aet: str = "CT01") -> list[Dataset]:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    args = [FINDSCU, model, "-aet", aet, "-aec", node.config.aet, "-X", "-od", str(out)]
    for k in keys:
        args += ["-k", k]
    proc = subprocess.run([*args, "127.0.0.1", str(node.config.dicom_port)], capture_output=True, text=True,
                          timeout=60, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


SPS = "ScheduledProcedureStepSequence[0]."
WL_KEYS = ["SpecificCharacterSet=ISO_IR 192", "PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
           "RequestedProcedureID", "RequestedProcedureDescription", "ReferringPhysicianName",
           f"{SPS}Modality", f"{SPS}ScheduledStationAETitle", f"{SPS}ScheduledProcedureStepStartDate",
           f"{SPS}ScheduledProcedureStepStartTime", f"{SPS}ScheduledProcedureStepID",
           f"{SPS}ScheduledProcedureStepStatus", f"{SPS}ScheduledPerformingPhysicianName"]


def _with(keys: list[str], **values: str) -> list[str]:
    out = []
    for k in keys:
        name = k.split(".")[-1]
        out.append(f"{k}={values[name]}" if name in values else k)
    return out


def mpps(node: Node, request: str, ds: Dataset, uid: str | None) -> tuple[int, Dataset | None]:
    ae = AE(ae_title="CT01")
    ae.add_requested_context(MODALITY_PERFORMED_PROCEDURE_STEP)
    assoc = ae.associate("127.0.0.1", node.config.dicom_port, ae_title=node.config.aet)
    assert assoc.is_established
    try:
        if request == "create":
            status, attrs = assoc.send_n_create(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
        else:
            status, attrs = assoc.send_n_set(ds, MODALITY_PERFORMED_PROCEDURE_STEP, uid)
    finally:
        assoc.release()
    return int(status.Status), attrs


def test_hl7_to_worklist_to_mpps_to_reconciled_study(node: Node, archive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert hl7_send(node, adt("A04", "W1", "PW1", "Łukasiewicz^Zoë", birth="19610505", sex="F")) == "AA"
    assert hl7_send(node, orm("W2", "PW1", "Łukasiewicz^Zoë", placer="WPL1", accession="WACC1",
                              station="CT01", start="202603011030")) == "AA"
    assert hl7_send(node, orm("W3", "PW9", "Other^Patient", placer="WPL2", accession="WACC2",
                              station="CT02", start="202603011100")) == "AA"
    order = node.orders.order(accession="WACC1")
    assert order is not None

    # The modality asks: its station, CT, a date range, a name wildcard.
    found = findscu(node, tmp_path / "wl1", "-W", _with(WL_KEYS, ScheduledStationAETitle="CT01", Modality="CT",
                                                        ScheduledProcedureStepStartDate="20260301-20260302",
                                                        PatientName="łuk*"))
    assert len(found) == 1
    rsp = found[0]
    assert str(rsp.PatientName) == "Łukasiewicz^Zoë" and rsp.PatientID == "PW1"
    assert rsp.AccessionNumber == "WACC1" and rsp.StudyInstanceUID == order["study_uid"]
    assert rsp.RequestedProcedureDescription == "CT Chest"
    item = rsp.ScheduledProcedureStepSequence[0]
    assert (item.Modality, item.ScheduledStationAETitle) == ("CT", "CT01")
    assert (item.ScheduledProcedureStepStartDate, item.ScheduledProcedureStepStartTime) == ("20260301", "103000")
    assert item.ScheduledProcedureStepStatus == "SCHEDULED" and item.ScheduledProcedureStepID == "SPSWACC1"
    assert str(item.ScheduledPerformingPhysicianName) == "Tech^Tina"
    # Other keys select the other order or nothing.
    assert [r.AccessionNumber for r in findscu(node, tmp_path / "wl2", "-W", _with(WL_KEYS, AccessionNumber="WACC2"))] \
        == ["WACC2"]
    assert findscu(node, tmp_path / "wl3", "-W", _with(WL_KEYS, Modality="MR")) == []

    # MPPS: IN PROGRESS, then the worklist shows the step STARTED.
    create = Dataset()
    create.PerformedProcedureStepStatus = "IN PROGRESS"
    create.PerformedStationAETitle = "CT01"
    create.Modality = "CT"
    create.PerformedProcedureStepStartDate, create.PerformedProcedureStepStartTime = "20260301", "103500"
    ref = Dataset()
    ref.StudyInstanceUID, ref.AccessionNumber = rsp.StudyInstanceUID, "WACC1"
    ref.ScheduledProcedureStepID = "SPSWACC1"
    create.ScheduledStepAttributesSequence = [ref]
    mpps_uid = pydicom.uid.generate_uid(prefix=None)
    assert mpps(node, "create", create, mpps_uid)[0] == 0x0000
    assert node.orders.order(accession="WACC1")["status"] == "IN PROGRESS"
    [started] = findscu(node, tmp_path / "wl4", "-W", _with(WL_KEYS, AccessionNumber="WACC1"))
    assert started.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"

    # The image arrives (storescu) with the worklist's UIDs and accession number, no description.
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.AccessionNumber = rsp.StudyInstanceUID, "WACC1"
    ds.PatientID, ds.PatientName = "PW1", "Lukasiewicz^Zoe"
    ds.StudyDescription = ""
    ds.ReferringPhysicianName = ""
    ds.SOPInstanceUID = pydicom.uid.generate_uid(prefix=None)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid(prefix=None)
    img = tmp_path / "ct.dcm"
    ds.save_as(img, enforce_file_format=True)
    proc = subprocess.run([STORESCU, "-aet", "CT01", "-aec", node.config.aet, "127.0.0.1",
                           str(node.config.dicom_port), str(img)], capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    order = node.orders.order(accession="WACC1")
    assert order["images_at"] is not None and order["performed_study_uid"] == rsp.StudyInstanceUID

    # MPPS COMPLETED: the order is done and leaves the modality's worklist.
    done = Dataset()
    done.PerformedProcedureStepStatus = "COMPLETED"
    done.PerformedProcedureStepEndDate, done.PerformedProcedureStepEndTime = "20260301", "104500"
    assert mpps(node, "set", done, mpps_uid)[0] == 0x0000
    assert node.orders.order(accession="WACC1")["status"] == "COMPLETED"
    assert findscu(node, tmp_path / "wl5", "-W", _with(WL_KEYS, AccessionNumber="WACC1")) == []

    # A08 renames the patient: the study-root C-FIND shows the order's data and the new name.
    assert hl7_send(node, adt("A08", "W4", "PW1", "Łukasiewicz-Nowak^Zoë")) == "AA"
    [study] = findscu(node, tmp_path / "st", "-S", ["QueryRetrieveLevel=STUDY", "AccessionNumber=WACC1",
                                                     "StudyInstanceUID", "PatientName", "PatientID",
                                                     "StudyDescription", "ReferringPhysicianName",
                                                     "NumberOfStudyRelatedInstances"])
    assert study.StudyInstanceUID == rsp.StudyInstanceUID
    assert str(study.PatientName) == "Łukasiewicz-Nowak^Zoë"
    assert study.StudyDescription == "CT Chest"  # filled from the order
    assert str(study.ReferringPhysicianName) == "Referrer^Rita"
    assert int(study.NumberOfStudyRelatedInstances) == 1


def test_mwl_and_mpps_refusals(node: Node, archive) -> None:  # type: ignore[no-untyped-def]
    assert hl7_send(node, orm("R1", "PR1", "Ref^Usal", placer="RPL1", accession="RACC1")) == "AA"
    ae = AE(ae_title="CT01")
    ae.add_requested_context(MODALITY_WORKLIST_FIND)
    assoc = ae.associate("127.0.0.1", node.config.dicom_port, ae_title=node.config.aet)
    assert assoc.is_established
    try:
        bad = Dataset()
        bad.PatientName = ""
        item = Dataset()
        with warnings.catch_warnings():  # pydicom warns about the malformed value we mean to send
            warnings.simplefilter("ignore")
            item.ScheduledProcedureStepStartDate = "2026-13-45"
        bad.ScheduledProcedureStepSequence = [item]
        statuses = [int(s.Status) for s, _ in assoc.send_c_find(bad, MODALITY_WORKLIST_FIND)]
        assert statuses == [0xA900]
        empty_item = Dataset()
        good = Dataset()
        good.AccessionNumber = "RACC1"
        good.ScheduledProcedureStepSequence = [empty_item]  # universal: every SPS attribute returned
        answers = [(int(s.Status), ds) for s, ds in assoc.send_c_find(good, MODALITY_WORKLIST_FIND)]
        assert [s for s, _ in answers] == [0xFF00, 0x0000]
        assert answers[0][1].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "SCHEDULED"
    finally:
        assoc.release()

    attrs = Dataset()
    attrs.PerformedProcedureStepStatus = "COMPLETED"
    assert mpps(node, "create", attrs, "1.2.3.4.5")[0] == 0x0106  # must start IN PROGRESS
    attrs.PerformedProcedureStepStatus = "IN PROGRESS"
    attrs.ScheduledStepAttributesSequence = []
    status, created = mpps(node, "create", attrs, None)  # the SCP assigns the instance UID
    assert status == 0x0000
    assert mpps(node, "create", attrs, "1.2.3.4.6")[0] == 0x0000  # unscheduled, accepted
    assert mpps(node, "create", attrs, "1.2.3.4.6")[0] == 0x0111  # duplicate instance
    assert mpps(node, "set", attrs, "9.9.9.9")[0] == 0x0112  # no such instance
    done = Dataset()
    done.PerformedProcedureStepStatus = "DISCONTINUED"
    assert mpps(node, "set", done, "1.2.3.4.6")[0] == 0x0000
    assert mpps(node, "set", done, "1.2.3.4.6")[0] == 0x0110  # final: no more changes
    assert node.orders.order(accession="RACC1")["status"] == "SCHEDULED"  # untouched


def test_order_via_cli_is_listed(node: Node, archive, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    msg = tmp_path / "orm.hl7"
    msg.write_text(orm("C1", "PC1", "Cli^Created", placer="CPL1", accession="CACC1", modality="MR"))
    assert cli_main(["hl7", "send", "127.0.0.1", str(node.config.hl7_port), str(msg)]) == 0
    assert ": AA" in capsys.readouterr().out
    assert archive.query("PATIENT", {"PatientID": "PC1"})  # unknown patient: created
    assert hl7_send(node, orm("C2", "PC1", "Cli^Created", placer="CPL1", accession="CACC1",
                              order_control="CA")) == "AA"
    assert cli_main(["hl7", "orders", "--data", str(archive.data_dir), "--all", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["AccessionNumber"], row["Status"], row["Modality"]) == ("CACC1", "CANCELLED", "MR")
    assert cli_main(["hl7", "orders", "--data", str(archive.data_dir), "--date", "2026-13"]) == 1


def test_worklist_verb_queries_the_node(node: Node, archive, capsys) -> None:  # type: ignore[no-untyped-def]
    """``hilum worklist`` (the DIMSE client verb of the CLI contract) against the node's MWL SCP."""
    assert hl7_send(node, orm("V1", "PV1", "Ørsted^Hans", placer="VPL1", accession="VACC1",
                              station="CT01", start="202603021000")) == "AA"
    assert hl7_send(node, orm("V2", "PV2", "Other^Olga", placer="VPL2", accession="VACC2",
                              station="CT02", start="202603021100")) == "AA"
    port = str(node.config.dicom_port)
    capsys.readouterr()
    assert cli_main(["worklist", "127.0.0.1", port, "-aet", "CT01", "-aec", node.config.aet,
                     "-k", "ScheduledStationAETitle=CT01", "-k", "PatientName=ørs*", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["AccessionNumber"] for r in rows] == ["VACC1"]
    assert rows[0]["PatientName"] == "Ørsted^Hans"
    step = rows[0]["ScheduledProcedureStepSequence"][0]
    assert (step["ScheduledStationAETitle"], step["ScheduledProcedureStepStartDate"]) == ("CT01", "20260302")
    assert cli_main(["worklist", "127.0.0.1", port, "-aec", node.config.aet,
                     "-k", "ScheduledProcedureStepStartDate=20260302"]) == 0
    out = capsys.readouterr().out
    assert "VACC1" in out and "VACC2" in out and "2 scheduled steps" in out
    assert cli_main(["worklist", "127.0.0.1", port, "-k", "NoSuchKeyword=1"]) == 1
