"""Fuzzing DICOMweb's parsers: the multipart (STOW-RS) reader and the DICOM JSON the client reads.

- :class:`hilum.dicomweb.multipart.MultipartReader` on mutated STOW-RS bodies
  (two generated CT parts, a non-DICOM part; boundary, CRLFs, headers and
  close delimiter mutated) and random bytes: it raises only
  :class:`MultipartError`, and however the body is cut into chunks the parts
  (headers and bodies) come out the same;
- STOW-RS over real HTTP to an in-process DICOMweb service: mutated bodies and
  content types get 200/202/400/409/413/415, never a 5xx, and the service
  answers a QIDO afterwards;
- the DICOM JSON Model (PS3.18 F.2) as the client reads it: ``json_to_row``
  of any JSON object never raises, and :class:`DicomWebClient` given any body
  by a real HTTP server (mutated QIDO and metadata responses, random JSON)
  returns rows or raises :class:`DicomWebError`, nothing else.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from argon2 import PasswordHasher
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from _fuzz import fuzz_settings, hostile
from hilum.archive import Archive
from hilum.archive.users import UserStore
from hilum.config import Config
from hilum.dicom.generator import DOE, generate_ct_series, make_study
from hilum.dicomweb import multipart
from hilum.dicomweb.client import DicomWebClient, DicomWebError, DicomWebSource
from hilum.dicomweb.dicomjson import json_to_row
from hilum.dicomweb.multipart import MultipartError, MultipartReader
from hilum.dicomweb.service import DicomWebService

BOUNDARY = "fuzzfuzz"


def _instances() -> list[bytes]:
    study = make_study(DOE, accession="FUZZW", seed=2103)
    out = []
    for ds in generate_ct_series(study, rows=8, columns=8, slices=2):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


INSTANCES = _instances()
BODY = multipart.encode(
    [("application/dicom", INSTANCES[0]), ("application/dicom", INSTANCES[1]), ("text/plain", b"not dicom\r\n--fuzz")],
    BOUNDARY,
)
SMALL = multipart.encode([("application/dicom", b"0123456789"), ("application/dicom", b"")], BOUNDARY)

PIECES = [
    b"\r\n",
    b"--",
    b"--" + BOUNDARY.encode(),
    b"\r\n--" + BOUNDARY.encode() + b"--",
    b"\r\n\r\n",
    b"Content-Type: application/dicom\r\n",
    b":",
    b" \t",
    b"\r",
    b"\n",
    b"X" * 17000,
]


@st.composite
def _spliced(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([BODY, SMALL])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        piece = draw(st.sampled_from(PIECES))
        if draw(st.booleans()):
            data[at:at] = piece
        else:
            del data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


BODIES = st.one_of(hostile([BODY, SMALL], max_random=300), _spliced())


def _parts(body: bytes, cuts: list[int]) -> list[tuple[dict[str, str], bytes]] | str:
    """The parts the reader finds in ``body`` fed in chunks of the sizes ``cuts`` (cycled), or the
    error's text."""
    reader = MultipartReader(BOUNDARY)
    parts: list[tuple[dict[str, str], bytes]] = []
    cur: bytearray | None = None
    at, i = 0, 0
    try:
        while at < len(body) or i == 0:
            step = cuts[i % len(cuts)]
            for kind, value in reader.feed(body[at : at + step]):
                if kind == multipart.HEADERS:
                    assert isinstance(value, multipart.PartHeaders)
                    cur = bytearray()
                    parts.append((value.headers, b""))
                elif kind == multipart.DATA:
                    assert cur is not None and isinstance(value, bytes)
                    cur += value
                elif kind == multipart.END:
                    assert cur is not None
                    parts[-1] = (parts[-1][0], bytes(cur))
                    cur = None
            at += step
            i += 1
            # the reader holds at most one header block or one delimiter's worth beyond what it handed out
            assert len(reader._buf) <= MultipartReader.MAX_HEADER_BYTES + step + 4
        reader.finish()
    except MultipartError as exc:
        return f"error: {exc}"
    return parts


@fuzz_settings(400)
@given(BODIES, st.lists(st.integers(1, 700), min_size=1, max_size=8))
def test_multipart_reader(body: bytes, cuts: list[int]) -> None:
    whole = _parts(body, [max(len(body), 1)])
    chunked = _parts(body, cuts)
    if isinstance(whole, str) or isinstance(chunked, str):
        # Errors may be found at different points, but a body is either well-formed or not.
        assert isinstance(whole, str) and isinstance(chunked, str), (whole, chunked)
    else:
        assert whole == chunked


def test_multipart_seed() -> None:
    parts = _parts(BODY, [97])
    assert not isinstance(parts, str)
    assert [p[1] for p in parts] == [INSTANCES[0], INSTANCES[1], b"not dicom\r\n--fuzz"]


@fuzz_settings(300)
@given(
    st.one_of(
        st.text(max_size=200),
        st.sampled_from(
            [
                'multipart/related; type="application/dicom"; boundary=',
                'multipart/related; boundary="',
                "multipart/related;;;",
                'multipart/related; boundary="a\\"b"',
                "multipart/related; boundary=" + "b" * 300,
            ]
        ),
    )
)
def test_content_type_parsing(value: str) -> None:
    try:
        boundary = multipart.boundary_of(value)
    except MultipartError:
        return
    try:
        MultipartReader(boundary)
    except MultipartError:
        pass


# ------------------------------------------------------------------ STOW-RS over HTTP


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DicomWebService]:
    data = tmp_path_factory.mktemp("fuzz-web") / "data"
    with Archive(data) as archive:
        users = UserStore(archive.engine, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        users.add("fuzz", "admin", "fuzz password")
        service = DicomWebService(Config(data_dir=data, web_port=0), archive, users=users)
        service.start()
        try:
            yield service
        finally:
            service.stop()


def _request(
    service: DicomWebService, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    url = service.url
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, "/dicom-web" + path, body=body, headers={**(headers or {}), "Authorization": AUTH})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


AUTH = "Basic " + base64.b64encode(b"fuzz:fuzz password").decode()
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def test_stow_seed(web: DicomWebService) -> None:
    status, body = _request(web, "POST", "/studies", BODY, {"Content-Type": STOW_TYPE})
    assert status == 202, body  # two stored, the text/plain part refused
    doc = json.loads(body)
    assert len(doc["00081199"]["Value"]) == 2 and len(doc["00081198"]["Value"]) == 1


@fuzz_settings(80)
@given(
    body=BODIES,
    ctype=st.one_of(
        st.just(STOW_TYPE),
        st.sampled_from(
            [
                "multipart/related; boundary=" + BOUNDARY,
                'multipart/related; type="application/dicom+json"; boundary=x',
                "application/dicom",
                "multipart/related",
                f"multipart/related; boundary={BOUNDARY}{BOUNDARY}",
            ]
        ),
        st.text(max_size=60).filter(lambda t: "\r" not in t and "\n" not in t),
    ),
)
def test_stow_never_fails_inside(web: DicomWebService, body: bytes, ctype: str) -> None:
    try:
        status, answer = _request(web, "POST", "/studies", body, {"Content-Type": ctype})
    except (ValueError, UnicodeEncodeError):
        return  # http.client refuses to send that header: nothing reached the server
    except (ConnectionResetError, BrokenPipeError):
        # A control character in a header: the HTTP layer answers 400 and closes at once, and the client,
        # still sending the body, may see the reset before the answer.  Only for such a header.
        assert any(ord(c) < 32 or ord(c) == 127 for c in ctype), f"a well-formed request was dropped: {ctype!r}"
        status, answer = 400, b""
    assert status in (200, 202, 400, 409, 413, 415), (status, answer[:300])
    if status in (200, 202, 409):
        json.loads(answer)
    qido, _ = _request(web, "GET", "/studies", headers={"Accept": "application/dicom+json"})
    assert qido == 200


# ------------------------------------------------------------------ DICOM JSON, client side

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=8,
)
TAGS = st.sampled_from(
    [
        "00100010",
        "00100020",
        "0020000D",
        "00080020",
        "00201208",
        "00080061",
        "00081190",
        "7FE00010",
        "00280010",
        "0008103E",
        "XXXXXXXX",
        "",
        "0010001",
        "FFFFFFFF",
    ]
)
VRS = st.sampled_from(["PN", "LO", "IS", "US", "DS", "SQ", "DA", "UI", "UN", "OB", "XX", ""])
ATTRIBUTE = st.one_of(
    st.fixed_dictionaries(
        {"vr": VRS}, optional={"Value": st.lists(JSON, max_size=4), "BulkDataURI": JSON, "InlineBinary": JSON}
    ),
    JSON,
)
DICOM_JSON_OBJECT = st.dictionaries(TAGS, ATTRIBUTE, max_size=8)


@fuzz_settings(250)
@given(DICOM_JSON_OBJECT)
def test_json_to_row(obj: dict[str, Any]) -> None:
    row = json_to_row(obj)
    assert isinstance(row, dict)


class _Replay(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the body (and status) the test set on the server."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, body = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass


@pytest.fixture(scope="module")
def replay() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Replay)
    server.answer = (200, b"[]")  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _qido_seed() -> bytes:
    return json.dumps(
        [
            {
                "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
                "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
                "00201208": {"vr": "IS", "Value": [12]},
                "00080061": {"vr": "CS", "Value": ["CT", "MR"]},
            }
        ]
    ).encode()


REMOTE_BODIES = st.one_of(
    hostile([_qido_seed()], max_random=200),
    st.lists(DICOM_JSON_OBJECT, max_size=3).map(lambda v: json.dumps(v).encode()),
    JSON.map(lambda v: json.dumps(v).encode()),
)


@fuzz_settings(200)
@given(body=REMOTE_BODIES, status=st.sampled_from([200, 200, 200, 204, 400, 500]))
def test_client_reads_any_answer(replay: http.server.ThreadingHTTPServer, body: bytes, status: int) -> None:
    replay.answer = (status, body)  # type: ignore[attr-defined]
    client = DicomWebClient(
        DicomWebSource("fuzz", f"http://127.0.0.1:{replay.server_address[1]}/dicom-web", timeout=10)
    )
    try:
        rows = client.search_studies()
        assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows)
    except DicomWebError:
        pass
    try:
        meta = client.metadata("1.2.3")
        assert isinstance(meta, list)
    except DicomWebError:
        pass
    finally:
        client.close()


def test_client_seed(replay: http.server.ThreadingHTTPServer) -> None:
    replay.answer = (200, _qido_seed())  # type: ignore[attr-defined]
    client = DicomWebClient(DicomWebSource("fuzz", f"http://127.0.0.1:{replay.server_address[1]}/dicom-web"))
    [row] = client.search_studies()
    assert row["StudyInstanceUID"] == "1.2.3" and row["PatientName"] == "Doe^Jane"
    client.close()
