"""The DICOMweb server over real HTTP on loopback, driven by a third-party client.

``dicomweb-client`` (PyPI) searches, retrieves (instances, metadata, frames,
bulk data, rendered) and stores against a running :class:`DicomWebService`;
plain ``requests`` covers what that client does not send (malformed bodies,
WADO-URI, conditional requests, CORS).  Hilum's own client is exercised
against the same server.  Bad input must leave the stored data untouched.
"""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from PIL import Image
from pydicom import encaps
from pydicom.data import get_testdata_file

from hilum.archive import Archive
from hilum.archive.users import UserStore
from hilum.config import Config
from hilum.dicom.generator import YAMADA, generate_ct_series, make_study
from hilum.dicom.generator.syntaxes import transcode as gen_transcode
from hilum.dicom.pixels import render_frame
from hilum.dicomweb import multipart
from hilum.dicomweb.client import DicomWebClient, DicomWebError, DicomWebSource
from hilum.dicomweb.service import DicomWebService
from hilum.dicomweb.settings import WebSettings

PW = "correct horse"
EVRLE = "1.2.840.10008.1.2.1"
J2K = "1.2.840.10008.1.2.4.90"


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("dicomweb")
    archive = Archive(root / "data")
    users = UserStore.of(archive)
    users.add("ada", "admin", PW)
    users.add("rita", "radiologist", PW)
    users.add("vic", "viewer", PW)
    samples = {}
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"):
        path = get_testdata_file(name, download=False)
        assert archive.ingest(path).status == "stored"
        samples[name] = pydicom.dcmread(path)
    study = make_study(YAMADA, accession="WEB0001", date="20260301", time="101500", seed="dicomweb")
    ct = generate_ct_series(study, rows=64, columns=64, slices=4, seed=1)
    for ds in ct:
        assert archive.ingest(_bytes(ds)).status == "stored"
    cfg = Config(data_dir=root / "data", web_port=0)
    service = DicomWebService(cfg, archive, settings=WebSettings(cors_origins=["https://viewer.example"]))
    service.start()
    yield {"service": service, "archive": archive, "url": service.url, "ct": ct, "samples": samples,
           "study": study, "root": root}
    service.stop()
    archive.close()


def client(node: dict[str, Any], user: str = "vic", password: str = PW) -> DICOMwebClient:
    session = requests.Session()
    session.auth = (user, password)
    return DICOMwebClient(node["url"], session=session)


def get(node: dict[str, Any], path: str, user: str = "vic", **kw: Any) -> requests.Response:
    return requests.get(node["url"] + path, auth=(user, PW), timeout=30, **kw)


def val(obj: dict[str, Any], tag: str) -> Any:
    return obj[tag]["Value"][0]


# ------------------------------------------------------------------------ QIDO-RS


def test_qido_studies_json_model(node: dict[str, Any]) -> None:
    c = client(node)
    found = c.search_for_studies(search_filters={"PatientName": "yamada*"})
    assert len(found) == 1
    st = found[0]
    # PN groups (PS3.18 F.2.2), VRs and numbers as JSON numbers
    assert st["00100010"] == {"vr": "PN", "Value": [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}]}
    assert st["0020000D"] == {"vr": "UI", "Value": [node["study"].uid]}
    assert st["00201208"] == {"vr": "IS", "Value": [4]}
    assert st["00201206"] == {"vr": "IS", "Value": [1]}
    assert st["00080061"] == {"vr": "CS", "Value": ["CT"]}
    assert st["00080020"] == {"vr": "DA", "Value": ["20260301"]}
    assert st["00080030"] == {"vr": "TM", "Value": ["101500"]}
    assert st["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    assert val(st, "00081190") == f"{node['url']}/studies/{node['study'].uid}"
    assert list(st) == sorted(st)  # attributes in tag order (F.2.1)
    # the empty Accession-less sample has the attribute without a Value (F.2.5)
    ct_small = c.search_for_studies(search_filters={"PatientID": "1CT1"})[0]
    assert "Value" not in ct_small["00080090"] and ct_small["00080090"]["vr"] == "PN"


def test_qido_matching_keys(node: dict[str, Any]) -> None:
    c = client(node)
    assert len(c.search_for_studies()) == 4
    assert len(c.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})) == 2
    assert len(c.search_for_studies(search_filters={"ModalitiesInStudy": "CT,MR"})) == 4
    assert len(c.search_for_studies(search_filters={"StudyDate": "20260101-20261231"})) == 1
    assert len(c.search_for_studies(search_filters={"StudyDate": "-20050101"})) == 3
    assert len(c.search_for_studies(search_filters={"AccessionNumber": "WEB0001"})) == 1
    uids = [s["0020000D"]["Value"][0] for s in c.search_for_studies()]
    # UID list matching, comma separated (PS3.18 8.3.4.1)
    assert len(c.search_for_studies(search_filters={"StudyInstanceUID": ",".join(uids[:2])})) == 2
    # tag form of the attribute and case-insensitive PN
    assert len(c.search_for_studies(search_filters={"00100010": "YAMADA^TAROU"})) == 1
    # limit / offset page through the results; a Warning says there is more
    r = get(node, "/studies", params={"limit": 2})
    assert len(r.json()) == 2 and "additional results" in r.headers["Warning"]
    pages = [s["0020000D"]["Value"][0] for off in (0, 2) for s in c.search_for_studies(limit=2, offset=off)]
    assert sorted(pages) == sorted(uids)
    # fuzzymatching accepted (exact matching used, with a warning)
    r = get(node, "/studies", params={"PatientName": "Yamada*", "fuzzymatching": "true"})
    assert r.status_code == 200 and len(r.json()) == 1 and "Fuzzy" in r.headers["Warning"]


def test_qido_includefield_and_levels(node: dict[str, Any]) -> None:
    c = client(node)
    study = node["study"].uid
    series = c.search_for_series(study)
    assert len(series) == 1
    se = series[0]
    assert val(se, "00080060") == "CT" and val(se, "00201209") == 4
    assert val(se, "00081190").endswith(f"/studies/{study}/series/{val(se, '0020000E')}")
    inst = c.search_for_instances(study, val(se, "0020000E"))
    assert [val(i, "00200013") for i in inst] == [1, 2, 3, 4]
    assert val(inst[0], "00280010") == 64 and val(inst[0], "00083002") == EVRLE
    # all-instances search carries the study and series attributes too
    every = c.search_for_instances(search_filters={"PatientID": YAMADA.patient_id})
    assert len(every) == 4 and "00100010" in every[0] and "00080060" in every[0]
    # includefield=all, and attributes the index does not keep, read from the file
    r = get(node, "/studies", params={"PatientID": YAMADA.patient_id, "includefield": "all"})
    assert "00201200" in r.json()[0]  # NumberOfPatientRelatedStudies
    r = get(node, f"/studies/{study}/instances", params={"includefield": "SliceThickness,00080070"})
    first = r.json()[0]
    assert first["00180050"] == {"vr": "DS", "Value": [2.5]}
    assert val(first, "00080070") == node["ct"][0].Manufacturer
    # nested search under an unknown study is 404
    assert get(node, "/studies/1.2.3.4/series").status_code == 404


def test_qido_bad_queries_are_400(node: dict[str, Any]) -> None:
    for params in ({"limit": "abc"}, {"offset": "-1"}, {"NoSuchKeyword": "x"}, {"StudyDate": "2020-13-45x"},
                   {"fuzzymatching": "maybe"}, {"includefield": "NotAnAttribute"}):
        r = get(node, "/studies", params=params)
        assert r.status_code == 400, params
        assert r.json()["error"]
    assert get(node, "/studies", headers={"Accept": 'multipart/related; type="application/dicom+xml"'}).status_code == 406


# ------------------------------------------------------------------------ WADO-RS


def test_retrieve_study_as_stored_and_transcoded(node: dict[str, Any]) -> None:
    c = client(node)
    archive: Archive = node["archive"]
    mr = node["samples"]["MR_small_RLE.dcm"]
    st = str(mr.StudyInstanceUID)
    # transfer-syntax=* sends the stored bytes
    got = c.retrieve_study(st, media_types=(("application/dicom", "*"),))
    assert len(got) == 1 and got[0].file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    stored = archive.read(str(mr.SOPInstanceUID))
    r = get(node, f"/studies/{st}", headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    parts = multipart.decode(r.content, multipart.boundary_of(r.headers["content-type"]))
    assert parts[0][1] == stored and "transfer-syntax=1.2.840.10008.1.2.5" in parts[0][0]["content-type"]
    # the default (no transfer-syntax) is Explicit VR Little Endian: decoded on the server
    evr = c.retrieve_study(st)[0]
    assert evr.file_meta.TransferSyntaxUID == EVRLE
    assert np.array_equal(evr.pixel_array, mr.pixel_array)
    # transcoding to JPEG 2000 lossless on request
    j2k = c.retrieve_instance(st, str(mr.SeriesInstanceUID), str(mr.SOPInstanceUID), media_types=(("application/dicom", J2K),))
    assert j2k.file_meta.TransferSyntaxUID == J2K and np.array_equal(j2k.pixel_array, mr.pixel_array)
    # impossible: JPEG Lossless (Process 14) cannot be encoded here → 406 before anything is sent
    r = get(node, f"/studies/{st}", headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.57'})
    assert r.status_code == 406
    # a whole series, in instance order
    ct = node["ct"]
    series = c.retrieve_series(node["study"].uid, str(ct[0].SeriesInstanceUID), media_types=(("application/dicom", "*"),))
    assert [int(d.InstanceNumber) for d in series] == [1, 2, 3, 4]


def test_metadata_and_bulkdata(node: dict[str, Any]) -> None:
    c = client(node)
    ct = node["ct"]
    meta = c.retrieve_series_metadata(node["study"].uid, str(ct[0].SeriesInstanceUID))
    assert len(meta) == 4
    m = meta[0]
    assert m["00100010"]["Value"][0]["Ideographic"] == "山田^太郎"
    uri = m["7FE00010"]["BulkDataURI"]
    assert m["7FE00010"]["vr"] == "OW" and uri.endswith("/bulkdata/7FE00010")
    ds = pydicom.Dataset.from_json(m, bulk_data_uri_handler=lambda tag, vr, uri: b"")
    assert ds.SOPInstanceUID == ct[0].SOPInstanceUID and ds.Rows == 64
    bulk = c.retrieve_bulkdata(uri)
    assert bulk[0] == ct[0].PixelData
    # gzip for JSON, never for multipart
    r = get(node, f"/studies/{node['study'].uid}/metadata", headers={"Accept-Encoding": "gzip"}, stream=True)
    assert r.headers.get("content-encoding") == "gzip"
    assert len(r.json()) == 4
    r = get(node, f"/studies/{node['study'].uid}", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in r.headers
    assert get(node, "/studies/1.2.3/metadata").status_code == 404


def test_frames_native_compressed_transcoded(node: dict[str, Any]) -> None:
    c = client(node)
    em = node["samples"]["emri_small_jpeg_2k_lossless.dcm"]
    args = (str(em.StudyInstanceUID), str(em.SeriesInstanceUID), str(em.SOPInstanceUID))
    # as stored (*/*): the JPEG 2000 bitstreams
    frames = c.retrieve_instance_frames(*args, frame_numbers=[1, 3])
    assert frames[0] == encaps.get_frame(em.PixelData, 0, number_of_frames=10)
    assert frames[1] == encaps.get_frame(em.PixelData, 2, number_of_frames=10)
    # native: decoded on the server
    native = c.retrieve_instance_frames(*args, frame_numbers=[2], media_types=(("application/octet-stream", EVRLE),))
    expect = em.pixel_array[1]
    assert np.array_equal(np.frombuffer(native[0], dtype=expect.dtype).reshape(expect.shape), expect)
    # transcoded to JPEG-LS lossless
    jls = c.retrieve_instance_frames(*args, frame_numbers=[2], media_types=(("image/jls", "1.2.840.10008.1.2.4.80"),))
    import jpeg_ls

    assert np.array_equal(jpeg_ls.decode(np.frombuffer(jls[0], dtype=np.uint8)), expect)
    # native source: frames are slices of the stored pixel data
    ct = node["ct"][1]
    f1 = c.retrieve_instance_frames(node["study"].uid, str(ct.SeriesInstanceUID), str(ct.SOPInstanceUID), [1])
    assert f1[0] == ct.PixelData
    base = f"/studies/{args[0]}/series/{args[1]}/instances/{args[2]}"
    assert get(node, base + "/frames/11").status_code == 404
    assert get(node, base + "/frames/0").status_code == 400
    assert get(node, base + "/frames/x").status_code == 400


def test_rendered_through_the_pixel_pipeline(node: dict[str, Any]) -> None:
    c = client(node)
    archive: Archive = node["archive"]
    ct = node["ct"][2]
    ids = (node["study"].uid, str(ct.SeriesInstanceUID), str(ct.SOPInstanceUID))
    png = c.retrieve_instance_rendered(*ids, media_types=("image/png",), params={"window": "40,400,linear"})
    got = np.asarray(Image.open(io.BytesIO(png)))
    expect = render_frame(archive.path(str(ct.SOPInstanceUID)), 0, window=(40, 400))
    assert np.array_equal(got, expect)
    # viewport keeps the aspect ratio; JPEG is the default
    jpg = get(node, f"/studies/{ids[0]}/series/{ids[1]}/instances/{ids[2]}/rendered", params={"viewport": "32,16"})
    assert jpg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpg.content)).size == (16, 16)
    frame = c.retrieve_instance_frames_rendered(*ids, frame_numbers=[1], media_types=("image/png",))
    assert Image.open(io.BytesIO(frame)).size == (64, 64)
    thumb = get(node, f"/studies/{ids[0]}/thumbnail")
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) == 128
    series_img = c.retrieve_series_rendered(ids[0], ids[1], media_types=("image/jpeg",))
    assert series_img[:2] == b"\xff\xd8"
    # conditional GET: unchanged → 304
    r = get(node, f"/studies/{ids[0]}/thumbnail", headers={"If-None-Match": thumb.headers["etag"]})
    assert r.status_code == 304
    assert get(node, f"/studies/{ids[0]}/series/{ids[1]}/instances/{ids[2]}/rendered",
               params={"window": "40"}).status_code == 400
    assert get(node, f"/studies/{ids[0]}/rendered", params={"viewport": "0,0"}).status_code == 400


def test_wado_uri(node: dict[str, Any]) -> None:
    ct = node["ct"][0]
    base = node["url"].replace("/dicom-web", "/wado")
    q = {"requestType": "WADO", "studyUID": node["study"].uid, "seriesUID": str(ct.SeriesInstanceUID),
         "objectUID": str(ct.SOPInstanceUID)}
    r = requests.get(base, params=q, auth=("vic", PW))
    assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    r = requests.get(base, params={**q, "contentType": "image/png", "windowCenter": "40", "windowWidth": "400",
                                   "rows": "32"}, auth=("vic", PW))
    img = Image.open(io.BytesIO(r.content))
    assert img.size == (32, 32)
    r = requests.get(base, params={**q, "contentType": "application/dicom", "transferSyntax": "*"}, auth=("vic", PW))
    assert r.content == node["archive"].read(str(ct.SOPInstanceUID))
    r = requests.get(base, params={**q, "contentType": "application/dicom", "transferSyntax": J2K}, auth=("vic", PW))
    assert pydicom.dcmread(io.BytesIO(r.content)).file_meta.TransferSyntaxUID == J2K
    assert requests.get(base, params={**q, "requestType": "XYZ"}, auth=("vic", PW)).status_code == 400
    assert requests.get(base, params={**q, "objectUID": "1.2.3"}, auth=("vic", PW)).status_code == 404
    assert requests.get(base, params={**q, "windowCenter": "40"}, auth=("vic", PW)).status_code == 400


# ------------------------------------------------------------------------ STOW-RS


def _new_study(accession: str, n: int = 2) -> list[pydicom.Dataset]:
    study = make_study(YAMADA, accession=accession, date="20260401", seed=accession)
    return generate_ct_series(study, rows=32, columns=32, slices=n, seed=2)


def test_stow_then_qido_then_wado(node: dict[str, Any]) -> None:
    datasets = _new_study("STOW0001")
    datasets[1] = gen_transcode(datasets[1], "jpeg-ls")
    c = client(node, "rita")
    resp = c.store_instances(datasets)  # the Store Instances Response Module as a dataset
    refs = resp.ReferencedSOPSequence
    assert len(refs) == 2 and "FailedSOPSequence" not in resp
    st = str(datasets[0].StudyInstanceUID)
    assert resp.RetrieveURL == f"{node['url']}/studies/{st}"
    assert {r.ReferencedSOPInstanceUID for r in refs} == {str(d.SOPInstanceUID) for d in datasets}
    assert refs[0].RetrieveURL.startswith(f"{node['url']}/studies/{st}/series/")
    found = c.search_for_studies(search_filters={"AccessionNumber": "STOW0001"})
    assert len(found) == 1 and val(found[0], "00201208") == 2
    back = c.retrieve_study(st, media_types=(("application/dicom", "*"),))
    by_uid = {str(d.SOPInstanceUID): d for d in back}
    for d in datasets:
        got = by_uid[str(d.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == d.file_meta.TransferSyntaxUID
        assert np.array_equal(got.pixel_array, d.pixel_array)
    # storing again is not an error (the archive already holds them)
    r = requests.post(node["url"] + "/studies", auth=("rita", PW), data=multipart.encode(
        [("application/dicom", _bytes(datasets[0]))], "b1"),
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'})
    assert r.status_code == 200


def test_stow_bad_input_leaves_archive_alone(node: dict[str, Any]) -> None:
    archive: Archive = node["archive"]
    before = archive.stats()
    good = _new_study("STOW0002", 1)[0]
    ctype = 'multipart/related; type="application/dicom"; boundary=XyZ'
    body = multipart.encode([("application/dicom", _bytes(good))], "XyZ")
    post = lambda data, user="rita", path="/studies", ct=ctype: requests.post(  # noqa: E731
        node["url"] + path, data=data, auth=(user, PW), headers={"Content-Type": ct})
    # malformed multipart (no close delimiter): 400, nothing stored
    r = post(body[: -len(b"--XyZ--\r\n") - 2])
    assert r.status_code == 400 and "nothing was stored" in r.json()["error"]
    r = post(b"this is not multipart at all")
    assert r.status_code == 400
    assert archive.stats() == before
    # wrong password: 401; read-only user: 403; nothing stored
    assert post(body, user="nobody").status_code == 401
    assert requests.post(node["url"] + "/studies", data=body, auth=("rita", "wrong password"),
                         headers={"Content-Type": ctype}).status_code == 401
    assert post(body, user="vic").status_code == 403
    # unsupported media types: 415
    assert post(body, ct="application/dicom").status_code == 415
    assert post(body, ct='multipart/related; type="application/dicom+xml"; boundary=XyZ').status_code == 415
    assert archive.stats() == before
    # a non-DICOM part next to a good one: the good one is stored, the other fails with 0xC000 → 202
    mixed = multipart.encode([("application/dicom", b"\x00" * 300), ("application/dicom", _bytes(good)),
                              ("text/plain", b"hello")], "XyZ")
    r = post(mixed)
    assert r.status_code == 202
    body_json = r.json()
    failed = body_json["00081198"]["Value"]
    assert [val(f, "00081197") for f in failed] == [0xC000, 0xC000]
    assert val(body_json["00081199"]["Value"][0], "00081155") == str(good.SOPInstanceUID)
    assert archive.stats()["instances"] == before["instances"] + 1
    # every part failing: 409; an instance of another study posted to /studies/{uid}: 0xC409
    other = _new_study("STOW0003", 1)[0]
    r = post(multipart.encode([("application/dicom", _bytes(other))], "XyZ"), path="/studies/1.2.826.0.1.999")
    assert r.status_code == 409 and val(r.json()["00081198"]["Value"][0], "00081197") == 0xC409
    assert archive.stats()["instances"] == before["instances"] + 1
    # the earlier data is intact
    assert len(client(node).search_for_instances(node["study"].uid)) == 4


# ------------------------------------------------------------------------ security


def test_authentication(node: dict[str, Any]) -> None:
    url = node["url"]
    assert requests.get(url + "/studies").status_code == 401  # users exist: no anonymous access
    r = requests.get(url + "/studies", auth=("vic", "bad password"))
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
    # bearer tokens from POST /auth/token
    r = requests.post(url.replace("/dicom-web", "/auth/token"), auth=("rita", PW))
    token = r.json()["access_token"]
    assert r.json()["token_type"] == "Bearer"
    assert requests.get(url + "/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert requests.get(url + "/studies", headers={"Authorization": "Bearer hlm_forged"}).status_code == 401
    assert requests.post(url.replace("/dicom-web", "/auth/token")).status_code == 401
    # CORS for a web viewer on another origin
    r = requests.options(url + "/studies", headers={"Origin": "https://viewer.example",
                                                    "Access-Control-Request-Method": "GET",
                                                    "Access-Control-Request-Headers": "authorization"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://viewer.example"
    r = requests.get(url + "/studies", auth=("vic", PW), headers={"Origin": "https://viewer.example"})
    assert r.headers["access-control-allow-origin"] == "https://viewer.example"


def test_denied_requests_are_logged(node: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="hilum.dicomweb.auth"):
        requests.get(node["url"] + "/studies", auth=("vic", "nope nope"))
        requests.post(node["url"] + "/studies", auth=("vic", PW), data=b"x",
                      headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=a'})
    msgs = [r.getMessage() for r in caplog.records]
    assert any("denied 401 GET /dicom-web/studies" in m for m in msgs)
    assert any("denied 403 POST /dicom-web/studies" in m and "user vic" in m for m in msgs)
    assert not any("nope nope" in m for m in msgs)


def test_anonymous_modes_and_https(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "anon")
    archive.ingest(get_testdata_file("CT_small.dcm", download=False))
    cfg = Config(data_dir=tmp_path / "anon", web_port=0)
    body = multipart.encode([("application/dicom", b"x")], "b")
    ct = 'multipart/related; type="application/dicom"; boundary=b'
    # a fresh node on loopback without users: anonymous read, never anonymous write
    now = [100.0]
    with DicomWebService(cfg, archive, clock=lambda: now[0]) as svc:
        assert requests.get(svc.url + "/studies").status_code == 200
        assert requests.post(svc.url + "/studies", data=body, headers={"Content-Type": ct}).status_code == 401
        UserStore.of(archive).add("ada", "admin", PW)
        now[0] += 2.5  # the has-users answer is cached for 2 s (injected clock: no sleep)
        assert requests.get(svc.url + "/studies").status_code == 401
    with DicomWebService(cfg, archive, settings=WebSettings(anonymous="read")) as svc:
        assert requests.get(svc.url + "/studies").status_code == 200
    # HTTPS with a configured certificate and key
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    with DicomWebService(cfg, archive, settings=WebSettings(tls_cert=str(cert), tls_key=str(key))) as svc:
        assert svc.url.startswith("https://")
        hc = DicomWebClient(DicomWebSource("tls", svc.url, "ada", PW, ca_file=str(cert)))
        assert hc.search_studies()[0]["PatientID"] == "1CT1"
        with pytest.raises(DicomWebError):
            DicomWebClient(DicomWebSource("tls", svc.url, "ada", PW)).search_studies()  # unknown CA
    archive.close()


# ------------------------------------------------------------------------ Hilum's client


def test_hilum_client_against_hilum(node: dict[str, Any], tmp_path: Path) -> None:
    hc = DicomWebClient(DicomWebSource("self", node["url"], "vic", PW))
    archive: Archive = node["archive"]
    remote = hc.search_studies({"PatientName": "Yamada*", "AccessionNumber": "WEB0001"})
    local = archive.query("STUDY", {"PatientName": "Yamada*", "AccessionNumber": "WEB0001"})
    assert len(remote) == len(local) == 1
    for key in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "ModalitiesInStudy",
                "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries", "AccessionNumber"):
        assert remote[0][key] == local[0][key], key
    assert hc.query("SERIES", {"StudyInstanceUID": node["study"].uid})[0]["Modality"] == "CT"
    # stream a study for viewing, then keep it locally through ingest
    mine = Archive(tmp_path / "local")
    with hc.open(node["study"].uid) as study:
        shown = [int(ds.InstanceNumber) for ds in study]
        assert shown == [1, 2, 3, 4]
        results = study.keep(mine)
    assert [r.status for r in results] == ["stored"] * 4
    assert mine.read(str(node["ct"][0].SOPInstanceUID)) == archive.read(str(node["ct"][0].SOPInstanceUID))
    # frames for a viewer: datasets from metadata + frames
    series = str(node["ct"][0].SeriesInstanceUID)
    built = list(hc.datasets_from_frames(node["study"].uid, series))
    assert np.array_equal(built[0].pixel_array, node["ct"][0].pixel_array)
    assert hc.rendered(node["study"].uid, thumbnail=True)[:4] == b"\x89PNG"
    with pytest.raises(DicomWebError) as err:
        hc.store([node["ct"][0]])
    assert err.value.status == 403
    with pytest.raises(DicomWebError) as err:
        hc.metadata("1.2.3.4")
    assert err.value.status == 404
    mine.close()


def test_gzip_json_roundtrip(node: dict[str, Any]) -> None:
    r = requests.get(node["url"] + "/studies", auth=("vic", PW), headers={"Accept-Encoding": "gzip"}, stream=True)
    raw = r.raw.read(decode_content=False)
    assert r.headers["content-encoding"] == "gzip"
    assert len(__import__("json").loads(gzip.decompress(raw))) >= 4
