"""Pieces of the DICOMweb layer without a server: multipart framing, Accept negotiation, DICOM JSON."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file

from hilum.dicomweb import dicomjson, multipart
from hilum.dicomweb.frames import pixel_info, stored_frames, transcode
from hilum.dicomweb.media import can_transcode, parse_accept
from hilum.dicomweb.settings import WebSettings, is_loopback
from hilum.dicomweb.throttle import LoginThrottle, ThrottlePolicy, address_key
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
    assert not can_transcode("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.57")  # JPEG Lossless: no encoder


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
    for bad in ({"login_user_failures": 0}, {"header_timeout": -1}, {"idle_timeout": float("inf")},
                {"max_connections_per_client": -1}, {"login_concurrency": True}, {"trusted_proxies": "1.2.3.4"},
                {"keep_alive_timeout": "30"}):
        Cfg.extra = {"web": bad}
        with pytest.raises(ConfigError):
            WebSettings.from_config(Cfg())
    Cfg.extra = {"web": {"max_connections_per_client": 0, "login_lockout_seconds": 1.5}}
    assert WebSettings.from_config(Cfg()).max_connections_per_client == 0


class _Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_throttle_locks_double_cap_and_forget() -> None:
    clock = _Clock()
    t = LoginThrottle(ThrottlePolicy(user_failures=3, address_failures=100, lockout_seconds=10,
                                     lockout_max_seconds=60, reset_seconds=300), clock=clock)
    assert [t.failure("ann", "10.0.0.1") for _ in range(2)] == [None, None]
    lock = t.failure("ann", "10.0.0.1")
    assert lock is not None and lock.scope == "user" and lock.retry_after == 10 and lock.retry_after_header == "10"
    assert t.check("ann", "10.0.0.2") is not None  # a user lock holds from any untrusted address
    assert t.check("bob", "10.0.0.1") is None  # and only for that user
    clock.now += 10
    assert t.check("ann", "10.0.0.1") is None
    waits = []
    for _ in range(4):  # each failure after a lock ends doubles the next lock, up to the maximum
        lock = t.failure("ann", "10.0.0.1")
        assert lock is not None
        waits.append(lock.retry_after)
        clock.now += lock.retry_after
    assert waits == [20, 40, 60, 60]
    clock.now += 300  # quiet for reset_seconds after the lock: forgotten
    assert t.failure("ann", "10.0.0.1") is None


def test_throttle_address_limit_trust_and_ipv6() -> None:
    clock = _Clock()
    t = LoginThrottle(ThrottlePolicy(user_failures=5, address_failures=8, lockout_seconds=10), clock=clock)
    t.success("ann", "10.0.0.9")  # ann's usual workstation
    for i in range(8):  # one address spraying eight names: locks no user, locks the address
        lock = t.failure(f"user{i}", "10.0.0.1")
    assert lock is not None and lock.scope == "address"
    refusal = t.check("ann", "10.0.0.1")
    assert refusal is not None and refusal.scope == "address"
    for _ in range(5):
        t.failure("ann", "10.0.0.2")
    assert t.check("ann", "10.0.0.3") is not None and t.check("ann", "10.0.0.3").scope == "user"  # type: ignore[union-attr]
    assert t.check("ann", "10.0.0.9") is None  # trusted: only failures from there count
    assert t.check("ann", "::ffff:10.0.0.3") is not None  # IPv4-mapped counts as the IPv4 address
    for i in range(8):  # IPv6: one /64 is one address
        t.failure(f"x{i}", f"2001:db8:1:2::{i + 1}")
    assert t.check("y", "2001:db8:1:2:ffff::1") is not None
    assert t.check("y", "2001:db8:1:3::1") is None
    assert address_key("2001:db8:1:2::7") == "2001:db8:1:2::/64" and address_key("not an ip") == "not an ip"


def test_throttle_tables_are_bounded() -> None:
    clock = _Clock()
    t = LoginThrottle(ThrottlePolicy(max_entries=50), clock=clock)
    for i in range(1000):
        t.failure(f"u{i}", f"10.0.{i // 256}.{i % 256}")
        t.success(f"u{i}", "10.1.0.1")
    sizes = [len(t._addresses.items), len(t._users.items), len(t._pairs.items), len(t._trusted)]
    assert max(sizes) <= 50
