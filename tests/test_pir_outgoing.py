"""What leaves carries today's demographics, end to end (issue 13 item 5, IHE RAD PIR).

A real node on 127.0.0.1 (DIMSE, HL7 MLLP, DICOMweb) holds a study of patient P1; the HIS sends
ADT^A08 (rename) and then ADT^A40 (merge P9 into P1) over a real MLLP socket; then

* a C-MOVE to DCMTK ``storescp`` delivers files with the new name and ID and the same UIDs,
* a C-GET receives the same,
* WADO-RS answers 200 with the new name to a client holding the ETag from before the ADT
  (not 304 with the old name), and If-Modified-Since does not keep the old name either.

The stored files are never rewritten.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from hl7.client import MLLPClient
from pydicom.uid import generate_uid

from conftest import free_port, wait_port
from hilum.config import Config, Peer
from hilum.dimse import scu
from hilum.hl7.message import ack_code_of
from hilum.node import Node
from test_archive_outgoing import ct
from test_hl7 import adt, seg

BIN = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}

pytestmark = pytest.mark.skipif(not (BIN / "storescp").exists(), reason="DCMTK (Debian package dcmtk) is needed")



@pytest.fixture
def site(tmp_path: Path) -> Iterator[dict[str, Any]]:
    out = tmp_path / "received"
    out.mkdir()
    scp_port = free_port()
    storescp = subprocess.Popen([str(BIN / "storescp"), "-aet", "STORESCP", "-od", str(out), str(scp_port)],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = Config(data_dir=tmp_path / "data", aet="HILUM", dicom_port=free_port(), hl7_port=free_port(), web_port=0,
                 peers={"scp": Peer(aet="STORESCP", host="127.0.0.1", port=scp_port),
                        "modality": Peer(aet="MODALITY", host="127.0.0.1", port=free_port())})
    try:
        wait_port(scp_port)
        with Node(cfg) as node:
            study = generate_uid()
            sops = []
            for _ in range(3):
                res = node.archive.ingest(ct("P1", "Nowak^Jan", study=study))
                assert res.status == "stored", res.reason
                sops.append(res.sop_instance_uid)
            prior = node.archive.ingest(ct("P9", "Nowak^J", study=generate_uid()))
            assert prior.status == "stored"
            yield {"node": node, "study": study, "sops": sops, "prior": prior, "out": out,
                   "stored": {s: node.archive.read(s) for s in [*sops, prior.sop_instance_uid]}}
    finally:
        storescp.terminate()
        storescp.wait(10)


def _hl7(node: Node, message: str) -> None:
    port = node.service("hl7").port  # type: ignore[attr-defined]
    with MLLPClient("127.0.0.1", port) as client:
        answer = client.send_message(message.replace("\n", "\r"))
    assert ack_code_of(answer)[0] == "AA", answer


def _dimse(node: Node) -> scu.Target:
    return scu.Target("127.0.0.1", node.service("dimse").port, "HILUM", "MODALITY", timeout=60)  # type: ignore[attr-defined]


def _moved(site: dict[str, Any], study: str) -> dict[str, pydicom.Dataset]:
    for f in site["out"].iterdir():
        f.unlink()
    result = scu.move(_dimse(site["node"]), "STORESCP", "STUDY", {"StudyInstanceUID": study})
    assert result.status == 0x0000 and result.failed == 0, result
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in site["out"].iterdir())}


def _got(site: dict[str, Any], study: str) -> dict[str, pydicom.Dataset]:
    received: list[pydicom.Dataset] = []

    def store(event: Any) -> int:
        received.append(event.dataset)
        return 0x0000

    result = scu.get(_dimse(site["node"]), "STUDY", {"StudyInstanceUID": study}, store)
    assert result.status == 0x0000 and result.failed == 0, result
    return {str(ds.SOPInstanceUID): ds for ds in received}


def _wado(site: dict[str, Any], sop: str, **headers: str) -> requests.Response:
    node = site["node"]
    [row] = node.archive.query("IMAGE", {"SOPInstanceUID": sop})
    url = (f"{node.service('dicomweb').url}/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}"
           f"/instances/{sop}")
    return requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"', **headers}, timeout=30)


def _single_part(resp: requests.Response) -> pydicom.Dataset:
    body = resp.content
    start = body.index(b"\r\n\r\n") + 4
    end = body.rindex(b"\r\n--")
    return pydicom.dcmread(io.BytesIO(body[start:end]))


def test_adt_update_and_merge_are_carried_by_move_get_and_wado(site: dict[str, Any]) -> None:
    node, study, sops = site["node"], site["study"], site["sops"]
    # Stored a minute ago: Last-Modified has one-second resolution, and "now" must differ from it.
    past = time.time() - 60
    os.utime(node.archive.path(sops[0]), (past, past))
    before = _wado(site, sops[0])
    assert before.status_code == 200 and str(_single_part(before).PatientName) == "Nowak^Jan"
    etag, last_modified = before.headers["ETag"], before.headers["Last-Modified"]
    assert _wado(site, sops[0], **{"If-None-Match": etag}).status_code == 304  # caching works at all

    # ADT^A08: the HIS corrects the name.
    _hl7(node, adt("A08", "PIR-1", "P1", "Nowak^Janusz", birth="19650405", sex="M"))

    moved = _moved(site, study)
    assert set(moved) == set(sops), "C-MOVE changed the set of SOP Instance UIDs"
    for ds in moved.values():
        assert (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate) == ("Nowak^Janusz", "P1", "19650405")
        assert ds.StudyInstanceUID == study
    got = _got(site, study)
    assert set(got) == set(sops)
    assert {str(ds.PatientName) for ds in got.values()} == {"Nowak^Janusz"}

    cached = _wado(site, sops[0], **{"If-None-Match": etag})
    assert cached.status_code == 200, "the pre-ADT ETag still matched: the client keeps the old name"
    assert str(_single_part(cached).PatientName) == "Nowak^Janusz"
    since = _wado(site, sops[0], **{"If-Modified-Since": last_modified})
    assert since.status_code == 200, "If-Modified-Since answered 304: the client keeps the old name"
    assert str(_single_part(since).PatientName) == "Nowak^Janusz"

    # ADT^A40: P9 (the prior record) is merged into P1; its study now leaves as P1's.
    merge = adt("A40", "PIR-2", "P1", "Nowak^Janusz", birth="19650405",
                extra=(seg("MRG", {1: "P9^^^HOSP^MR"}),))
    _hl7(node, merge)
    prior = site["prior"]
    merged = _moved(site, prior.study_instance_uid)
    assert set(merged) == {prior.sop_instance_uid}
    [ds] = merged.values()
    assert (ds.PatientID, str(ds.PatientName)) == ("P1", "Nowak^Janusz")

    # The stored files are as they came in; only what leaves changed.
    for sop, data in site["stored"].items():
        assert node.archive.read(sop) == data
