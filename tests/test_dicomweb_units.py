"""Pieces of the DICOMweb layer without a server: multipart framing, Accept negotiation, DICOM JSON."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from hilum.dicomweb import dicomjson, multipart
from hilum.dicomweb.frames import pixel_info, stored_frames, transcode
from hilum.dicomweb.media import can_transcode, parse_accept
from hilum.dicomweb.settings import WebSettings, is_loopback
from hilum.errors import ConfigError


def _parts(body: bytes, boundary: str, step: int) -> list[tuple[dict[str, str], bytes]]:
    reader = multipart.MultipartReader(boundary)
    parts: list[tuple[dict[str, str], bytes]] = []
    cur = bytearray()
    hdr: dict[str, str] = {}
    for i in range(0, len(body), step):
        for kind, value in reader.feed(body[i : i + step]):
            if kind == multipart.HEADERS:
                hdr, cur = value.headers, bytearray()  # type: ignore[attr-defined]
            elif kind == multipart.DATA:
                cur += value  # type: ignore[operator]
            else:
                parts.append((hdr, bytes(cur)))
    reader.finish()
    return parts


@pytest.mark.parametrize("step", [1, 3, 7, 64, 100000])
def test_multipart_roundtrip_any_chunking(step: int) -> None:
    payloads = [b"", b"\r\n--notit\r\n", b"x" * 5000 + b"\r\n--bou", bytes(range(256)) * 4]
    body = b"preamble to ignore\r\n" + multipart.encode([("application/dicom", p) for p in payloads], "boun") + b"epilogue"
    got = _parts(body, "boun", step)
    assert [p for _, p in got] == payloads
    assert all(h["content-type"] == "application/dicom" for h, _ in got)


def test_multipart_errors() -> None:
    body = multipart.encode([("application/dicom", b"abc")], "b")
    with pytest.raises(multipart.MultipartError):
        _parts(body[:-8], "b", 10)  # no close delimiter
    with pytest.raises(multipart.MultipartError):
        _parts(b"--b\r\nno colon here\r\n\r\ndata\r\n--b--", "b", 100)
    with pytest.raises(multipart.MultipartError):
        _parts(b"no boundary anywhere", "b", 100)
    with pytest.raises(multipart.MultipartError):
        multipart.boundary_of("multipart/related; type=application/dicom")
    assert multipart.boundary_of('multipart/related; type="application/dicom"; boundary="a;b"') == "a;b"


def test_accept_parsing() -> None:
    ranges = parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*;q=0.5, '
                          'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90')
    assert [r.transfer_syntax for r in ranges] == ["1.2.840.10008.1.2.4.90", "*"]
    assert ranges[0].part_type == "application/dicom"
    assert parse_accept(None)[0].media_type == "*/*"
    with pytest.raises(ValueError):
        parse_accept("image/png;q=high")
    assert can_transcode("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1")
    assert can_transcode("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.80")
    assert not can_transcode("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.201")  # HTJ2K: no encoder


def test_row_to_json_and_back() -> None:
    row = {"PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう", "PatientID": "X1", "StudyDate": "20260102",
           "StudyTime": "101500.000000", "ModalitiesInStudy": "CT\\MR", "NumberOfStudyRelatedInstances": 3,
           "AccessionNumber": "", "SeriesNumber": None}
    obj = dicomjson.row_to_json(row, list(row))
    assert obj["00100010"]["Value"] == [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎",
                                         "Phonetic": "やまだ^たろう"}]
    assert obj["00080061"] == {"vr": "CS", "Value": ["CT", "MR"]}
    assert obj["00201208"] == {"vr": "IS", "Value": [3]}
    assert obj["00080030"] == {"vr": "TM", "Value": ["101500"]}
    assert obj["00080050"] == {"vr": "SH"} and obj["00200011"] == {"vr": "IS"}
    back = dicomjson.json_to_row(obj)
    assert back["PatientName"] == row["PatientName"] and back["ModalitiesInStudy"] == "CT\\MR"
    assert back["NumberOfStudyRelatedInstances"] == 3 and back["SeriesNumber"] is None
    # pydicom reads what we write
    ds = pydicom.Dataset.from_json(obj)
    assert ds.PatientName.ideographic == "山田^太郎" and ds.ModalitiesInStudy == ["CT", "MR"]
    assert dicomjson.attribute_keyword("0020000d") == "StudyInstanceUID"
    assert dicomjson.attribute_keyword("NotAKeyword") is None


def test_dataset_json_bulk_uris_with_paths() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False), stop_before_pixels=True)
    item = pydicom.Dataset()
    item.RedPaletteColorLookupTableData = b"\x01" * 2000
    ds.ReferencedImageSequence = [pydicom.Dataset(), item]
    obj = dicomjson.dataset_to_json(ds, bulk_data_threshold=1024, bulk_uri=lambda p: f"bulk/{p}")
    nested = obj["00081140"]["Value"][1]["00281201"]
    assert nested == {"vr": "OW", "BulkDataURI": "bulk/00081140/1/00281201"}


def test_frames_from_files_and_transcoding() -> None:
    path = get_testdata_file("SC_rgb_rle_2frame.dcm", download=False)
    ds = pydicom.dcmread(path)
    _, info = pixel_info(path)
    assert info is not None and info.encapsulated and info.frames == 2
    assert stored_frames(path, info, [2])[0] == pydicom.encaps.get_frame(ds.PixelData, 1, number_of_frames=2)
    evr = pydicom.dcmread(__import__("io").BytesIO(transcode(path, "1.2.840.10008.1.2.1")))
    assert evr.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (evr.pixel_array == ds.pixel_array).all()
    ivr = transcode(get_testdata_file("CT_small.dcm", download=False), "1.2.840.10008.1.2")
    assert pydicom.dcmread(__import__("io").BytesIO(ivr)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"


def test_web_settings() -> None:
    class Cfg:
        extra = {"web": {"anonymous": "never", "cors_origins": ["https://a.example"], "max_results": 50}}

    s = WebSettings.from_config(Cfg())
    assert s.anonymous == "never" and s.max_results == 50 and not s.tls
    Cfg.extra = {"web": {"anonymous": "always"}}
    with pytest.raises(ConfigError):
        WebSettings.from_config(Cfg())
    Cfg.extra = {"web": {"typo": 1}}
    with pytest.raises(ConfigError):
        WebSettings.from_config(Cfg())
    Cfg.extra = {"web": {"tls_cert": "c.pem"}}
    with pytest.raises(ConfigError):
        WebSettings.from_config(Cfg())
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
