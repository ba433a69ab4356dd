"""Hilum's DICOMweb client against a real third-party server: Orthanc with its DICOMweb plugin.

Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) runs in the foreground on
unusual loopback ports with its own temporary storage, fed through its REST
API, and is stopped at the end of the module.
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from conftest import free_port, orthanc_process
from hilum.archive import Archive
from hilum.dicom.generator import IVANOV, MUELLER, generate_ct_series, make_study
from hilum.dicomweb.client import DicomWebClient, DicomWebError, DicomWebSource

PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

pytestmark = pytest.mark.skipif(shutil.which("Orthanc") is None or not os.path.exists(PLUGIN),
                                reason="Orthanc and its DICOMweb plugin are not installed")



def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = free_port(), free_port()
    cfg = {
        "Name": "HilumTest", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
        "HttpPort": http_port, "DicomPort": dicom_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
        "Plugins": [PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }

    def ready() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=2)
        conn.request("GET", "/plugins")
        return "dicom-web" in conn.getresponse().read().decode()

    with orthanc_process(root, cfg, ready):

        def upload(data: bytes) -> None:
            c = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
            c.request("POST", "/instances", body=data, headers={"Content-Type": "application/dicom"})
            resp = c.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()

        study = make_study(MUELLER, accession="ORT0001", date="20260505", time="080000", seed="orthanc")
        ct = generate_ct_series(study, rows=48, columns=48, slices=3, seed=3)
        ct_small = Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes()
        for data in [ct_small, *(_bytes(d) for d in ct)]:
            upload(data)
        yield {"url": f"http://127.0.0.1:{http_port}/dicom-web", "ct": ct, "study": study, "ct_small": ct_small}


def test_search_matches_local_rows(orthanc: dict[str, Any], tmp_path: Path) -> None:
    hc = DicomWebClient(DicomWebSource("orthanc", orthanc["url"]))
    remote = hc.search_studies({"PatientName": "M*"})  # (Orthanc 1.10 matches non-ASCII wildcards poorly)
    assert len(remote) == 1
    # the same instances in a local archive give the same row values
    local = Archive(tmp_path / "local")
    for d in orthanc["ct"]:
        local.ingest(_bytes(d))
    row = local.query("STUDY", {"PatientID": MUELLER.patient_id})[0]
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"):
        assert remote[0][key] == row[key], key
    assert remote[0]["PatientName"] == "Müller^Jürgen"
    assert remote[0]["_source"] == "orthanc"
    assert len(hc.search_studies()) == 2
    assert len(hc.search_studies({"StudyDate": "20260101-"})) == 1
    series = hc.query("SERIES", {"StudyInstanceUID": orthanc["study"].uid})
    assert len(series) == 1 and series[0]["Modality"] == "CT" and series[0]["NumberOfSeriesRelatedInstances"] == 3
    inst = hc.search_instances(orthanc["study"].uid, series[0]["SeriesInstanceUID"])
    assert sorted(i["InstanceNumber"] for i in inst) == [1, 2, 3]
    local.close()


def test_retrieve_open_keep_frames_rendered(orthanc: dict[str, Any], tmp_path: Path) -> None:
    hc = DicomWebClient(DicomWebSource("orthanc", orthanc["url"]))
    ct = orthanc["ct"]
    st, se = orthanc["study"].uid, str(ct[0].SeriesInstanceUID)
    local = Archive(tmp_path / "local")
    results = hc.retrieve(local, st)
    assert sorted(r.status for r in results) == ["stored"] * 3
    for d in ct:
        got = pydicom.dcmread(local.path(str(d.SOPInstanceUID)))
        assert np.array_equal(got.pixel_array, d.pixel_array)
    # streamed for viewing, kept through ingest on request
    other = Archive(tmp_path / "other")
    with hc.open(st, se) as study:
        assert sorted(int(ds.InstanceNumber) for ds in study) == [1, 2, 3]
        assert [r.status for r in study.keep(other)] == ["stored"] * 3
    # frames, metadata-built datasets, rendered
    frame = hc.frames(st, se, str(ct[1].SOPInstanceUID), [1])[0]
    assert frame == ct[1].PixelData
    built = {str(d.SOPInstanceUID): d for d in hc.datasets_from_frames(st, se)}
    assert np.array_equal(built[str(ct[2].SOPInstanceUID)].pixel_array, ct[2].pixel_array)
    png = hc.rendered(st, se, str(ct[0].SOPInstanceUID), media_type="image/png")
    assert png[:4] == b"\x89PNG"
    with pytest.raises(DicomWebError) as err:
        hc.metadata("1.2.3.4.5")
    assert err.value.status == 404
    local.close()
    other.close()


def test_store_to_orthanc(orthanc: dict[str, Any]) -> None:
    hc = DicomWebClient(DicomWebSource("orthanc", orthanc["url"]))
    new = generate_ct_series(make_study(IVANOV, accession="ORT0002", seed="stow"), rows=32, columns=32,
                             slices=2, seed=4)
    resp = hc.store(new)
    refs = resp["00081199"]["Value"]
    assert {r["00081155"]["Value"][0] for r in refs} == {str(d.SOPInstanceUID) for d in new}
    found = hc.search_studies({"AccessionNumber": "ORT0002"})
    assert len(found) == 1 and found[0]["NumberOfStudyRelatedInstances"] == 2
    # (Orthanc 1.10's QIDO answers drop this ISO_IR 192 name; what it stored is intact)
    back = [pydicom.dcmread(io.BytesIO(b)) for b in hc.iter_instances(str(new[0].StudyInstanceUID))]
    assert {str(d.PatientName) for d in back} == {"Иванов^Иван^Петрович"}
