"""Plain regression tests for what the fuzzers (tests/test_fuzz_*.py) found, each with its minimal input.

Each test names the fuzzer that found the crash, what the crash was, and the fix.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset

from hilum.archive import Archive
from hilum.dicom.attributes import MAX_SEQUENCE_DEPTH, InvalidInstance, read_instance, received_as_part10

CT = "1.2.840.10008.5.1.4.1.1.2"


def _bare(ds: Dataset, *, implicit: bool = False) -> bytes:
    buf = io.BytesIO()
    fp = DicomFileLike(buf)
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return buf.getvalue()


def _uids() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.1"
    ds.StudyInstanceUID = "1.2.3.4.2"
    ds.SeriesInstanceUID = "1.2.3.4.3"
    return ds


# ------------------------------------------------------------------ Part 10 reader (test_fuzz_part10.py)


def _deep(depth: int) -> bytes:
    """A bare data set whose (0008,1140) nests ``depth`` undefined-length sequences, then the UIDs."""
    seq = b""
    for _ in range(depth):
        seq = (
            struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
            + seq
            + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        )
    return seq


def _part10_with(seq: bytes) -> bytes:
    ds = _uids()
    buf = io.BytesIO()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CT"
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    at = raw.index(b"\x08\x00\x60\x00CS")  # (0008,1140) goes just after (0008,0060) Modality
    at += 8 + struct.unpack_from("<H", raw, at + 6)[0]
    return raw[:at] + seq + raw[at:]


def test_sequence_depth_bomb_refused_not_recursion_error() -> None:
    """test_fuzz_part10 (depth bomb): 2,000 nested undefined-length sequences (56 KB) raised
    RecursionError in the fast reader's ``_skip_items`` and escaped ``Archive.ingest`` (a C-STORE
    answered 0xC211 "internal error", STOW-RS a processing failure).  Fix: ``hilum.dicom.attributes``
    checks the nesting depth (``MAX_SEQUENCE_DEPTH``) over the bytes; deeper is ``not-dicom``."""
    data = _part10_with(_deep(2000))
    with pytest.raises(InvalidInstance) as err:
        read_instance(data)
    assert err.value.code == "not-dicom" and "nested" in str(err.value)
    assert read_instance(_part10_with(_deep(MAX_SEQUENCE_DEPTH))).SOPInstanceUID == "1.2.3.4.1"


def test_defined_length_depth_bomb_refused() -> None:
    """test_fuzz_part10 (depth bomb): defined-length sequences are kept as bytes by both readers and
    converted when first read, so 20,000 of them nested were stored and raised RecursionError in the
    next reader (WADO-RS metadata, the viewer).  Fix: the same depth check walks their bytes."""
    seq = b""
    for _ in range(20000):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(seq)) + seq
        seq = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, len(item)) + item
    with pytest.raises(InvalidInstance, match="nested"):
        read_instance(_part10_with(seq))


def test_bare_dataset_with_command_element(tmp_path: Path) -> None:
    """test_fuzz_part10 (a mutated bare data set): an element of group 0000 (a command element) in a
    bare data set was accepted by ``read_instance`` and pydicom's writer then refused it ("Command Set
    elements (0000,eeee) are not allowed when using dcmwrite()"): ValueError out of ``Archive.ingest``.
    Fix: ``received_as_part10`` refuses a data set that cannot be written back as ``not-dicom``."""
    data = _bare(_uids()) + struct.pack("<HH2sH", 0x0000, 0x0100, b"US", 2) + b"\x01\x00"
    ds = read_instance(data)
    with pytest.raises(InvalidInstance) as err:
        received_as_part10(ds)
    assert err.value.code == "not-dicom"
    with Archive(tmp_path / "data") as archive:
        res = archive.ingest(data, origin="test")
        assert res.status == "rejected" and res.code == "not-dicom", res
        assert archive.ingest(_bare(_uids()), origin="test").status == "stored"


# ------------------------------------------------------------------ HL7 (test_fuzz_hl7.py)


def test_hl7_ack_for_a_header_whose_separators_collide() -> None:
    """test_fuzz_hl7: ``MSH\\\\`` (field separator "\\", no MSH-2) got an ACK framed with that
    separator and the default encoding characters "^~\\&", which contain it: the ACK's own MSH
    then read as encoding characters "^~" and message type "" - a NAK the sender cannot read.
    Fix: ``build_ack`` answers with the standard separators when the message's cannot frame one."""
    from hilum.hl7.message import Issue, ack_code_of, build_ack, read_header

    header = read_header(b"MSH\\\\\x00\x00\x00")
    assert header is not None
    ack = build_ack(header, "AR", [Issue(100, "bad header")]).encode()
    back = read_header(ack)
    assert back is not None and back.message_type == "ACK" and back.field_sep == "|"
    assert ack_code_of(ack)[0] == "AR"
    # a header with usable separators of its own is answered in kind
    own = read_header(b"MSH#$%*@#HIS#HOSP#HILUM#RAD#2026##ADT$A01#C1#P#2.5")
    assert own is not None
    back = read_header(build_ack(own, "AA").encode())
    assert back is not None and back.field_sep == "#" and back.encoding_chars == "$%*@" and back.trigger_event == "A01"


# ------------------------------------------------------------------ DICOMweb (test_fuzz_dicomweb.py)


def test_multipart_first_delimiter_only_at_the_start() -> None:
    """test_fuzz_dicomweb: a STOW-RS body starting ``----BOUNDARY`` (two extra dashes) was read as
    preamble when it arrived in one chunk but as a first part when it arrived byte by byte: the
    reader took a dash-boundary at the start of its *buffer* (which, trimmed, moves through the
    preamble) for the start of the body.  Fix: only at the very start does it need no CRLF."""
    from hilum.dicomweb.multipart import HEADERS, MultipartReader
    from hilum.dicomweb.multipart import decode as multipart_decode

    body = b"----b\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--b\r\nContent-Type: text/plain\r\n\r\nTWO\r\n--b--"
    assert [p for _h, p in multipart_decode(body, "b")] == [b"TWO"]
    reader = MultipartReader("b")
    events = [e for byte in body for e in reader.feed(bytes([byte]))]
    reader.finish()
    assert sum(1 for kind, _ in events if kind == HEADERS) == 1
    # the first delimiter at the very start, even arriving a byte at a time, still opens a part
    reader = MultipartReader("b")
    events = [e for byte in b"--b\r\n\r\nX\r\n--b--" for e in reader.feed(bytes([byte]))]
    assert sum(1 for kind, _ in events if kind == HEADERS) == 1


@contextmanager
def _answering(answers: list[bytes], **headers: str) -> Iterator[Any]:
    """A DicomWebClient of a loopback HTTP server that answers every GET with ``answers[0]`` (the test pops
    them), with ``headers`` added (``Content_Encoding="gzip"``: underscores are dashes)."""
    import http.server
    import threading

    from hilum.dicomweb.client import DicomWebClient, DicomWebSource

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            body = answers[0]
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = DicomWebClient(DicomWebSource("x", f"http://127.0.0.1:{server.server_address[1]}/dicom-web"))
    try:
        yield client
    finally:
        client.close()
        server.shutdown()
        server.server_close()


def test_client_answer_that_is_not_json() -> None:
    """test_fuzz_dicomweb: a QIDO-RS answer that is not UTF-8 JSON (``b"\\x80"``), or JSON that is not
    an array of objects (``{}``, ``[1]``), raised UnicodeDecodeError, JSONDecodeError or AttributeError
    out of ``DicomWebClient.search_studies``/``metadata``.  Fix: a :class:`DicomWebError`."""
    from hilum.dicomweb.client import DicomWebError

    answers = [b"\x80", b"\x00", b"{}", b"[1]", b"[" * 100000 + b"]" * 100000, b'{"a": 1}']
    with _answering(answers) as client:
        while answers:
            with pytest.raises(DicomWebError):
                client.search_studies()
            with pytest.raises(DicomWebError):
                client.metadata("1.2.3")
            answers.pop(0)


def _rle_pair() -> tuple[bytes, bytes, str]:
    """An RLE Lossless CT slice, good and with one byte of its RLE header damaged (the second segment's
    offset points past the data: pylibjpeg-rle panics on it), and its SOP Instance UID."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    from hilum.dicom.generator import DOE, generate_ct_series, make_study

    [ct] = generate_ct_series(make_study(DOE, accession="FUZZ1", seed=21), rows=16, columns=16, slices=1)
    ct.file_meta = FileMetaDataset()
    ct.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ct.file_meta.MediaStorageSOPClassUID = ct.SOPClassUID
    ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
    ct.compress(RLELossless, generate_instance_uid=False)
    buf = io.BytesIO()
    ct.save_as(buf, enforce_file_format=True)
    good = buf.getvalue()
    fragment = good.rfind(b"\xfe\xff\x00\xe0") + 8  # the frame's RLE header: segment count, offsets
    bad = bytearray(good)
    bad[fragment + 8] = 0x7F
    return good, bytes(bad), str(ct.SOPInstanceUID)


def test_duplicate_with_a_corrupt_rle_stream(tmp_path: Path) -> None:
    """test_fuzz_part10 (``Archive.ingest``): a second copy of a stored RLE instance whose RLE header
    was damaged (one byte of a segment offset) is compared with the stored one by decoding both;
    pylibjpeg-rle panicked (pyo3 ``PanicException``, a BaseException, not an Exception) and the
    panic escaped ``Archive.ingest``.  Fix: ``content_difference`` treats it as "cannot compare"
    (the stored instance is kept, the copy reported ``duplicate-differs``)."""
    good, bad, uid = _rle_pair()
    with Archive(tmp_path / "data") as archive:
        assert archive.ingest(good, origin="test").status == "stored"
        res = archive.ingest(bytes(bad), origin="test")
        assert res.status == "duplicate" and res.code == "duplicate-differs", res
        assert archive.read(uid) == good


def test_codec_panic_is_an_error_everywhere_pixels_are_decoded(tmp_path: Path) -> None:
    """The same panic outside ingest: the viewer's and WADO's frame decode, a transcode, and WADO-RS /
    rendered over real HTTP each let pyo3's PanicException pass their ``except Exception`` (it is a
    BaseException).  Fix: :func:`hilum.dicom.codec_guard.codec_guard` around each call into the codecs
    turns it into CodecPanic (a RuntimeError): a clear error for this instance, the service serving on."""
    import base64
    import http.client

    from argon2 import PasswordHasher
    from pydicom.uid import ExplicitVRLittleEndian

    from hilum.archive.users import UserStore
    from hilum.config import Config
    from hilum.dicom import pixels, transcode
    from hilum.dicom.codec_guard import CodecPanic
    from hilum.dicomweb import frames
    from hilum.dicomweb.service import DicomWebService

    good, bad, uid = _rle_pair()
    path = tmp_path / "bad.dcm"
    path.write_bytes(bad)
    with pytest.raises(pixels.PixelDataError, match="decoder failed"):
        pixels.frame_array(str(path))
    with pytest.raises(pixels.PixelDataError, match="decoder failed"):
        list(pixels.iter_frames(str(path)))
    with pytest.raises(transcode.TranscodeError, match="decoder failed"):
        transcode.convert(bad, ExplicitVRLittleEndian)
    with pytest.raises((CodecPanic, transcode.TranscodeError)):
        frames.transcode(bad, "1.2.840.10008.1.2.4.90")  # decode, then encode as JPEG 2000
    data = tmp_path / "data"
    with Archive(data) as archive:
        assert archive.ingest(bad, origin="test").status == "stored"  # ingest does not decode pixels
        [row] = archive.query("IMAGE", {"SOPInstanceUID": uid, "StudyInstanceUID": "", "SeriesInstanceUID": ""})
        study, series = row["StudyInstanceUID"], row["SeriesInstanceUID"]
        users = UserStore(archive.engine, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        users.add("fuzz", "admin", "fuzz password")
        service = DicomWebService(Config(data_dir=data, web_port=0), archive, users=users)
        service.start()
        try:
            host, port = service.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
            auth = {"Authorization": "Basic " + base64.b64encode(b"fuzz:fuzz password").decode()}

            def get(path: str, accept: str) -> tuple[int, bytes]:
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    conn.request("GET", "/dicom-web" + path, headers={**auth, "Accept": accept})
                    resp = conn.getresponse()
                    return resp.status, resp.read()
                finally:
                    conn.close()

            base = f"/studies/{study}/series/{series}/instances/{uid}"
            accept_native = f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}'
            for path, accept in (
                (base, accept_native),
                (base + "/rendered", "image/png"),
                (base + "/frames/1", "multipart/related; type=application/octet-stream"),
            ):
                status, body = get(path, accept)
                assert status != 500 or b"PanicException" not in body, (path, status, body[:300])
                assert status in (200, 400, 404, 406, 415, 422, 500), (path, status)
            status, _ = get(f"/studies/{study}/series", "application/dicom+json")
            assert status == 200  # still serving
        finally:
            service.stop()


# ------------------------------------------------------------------ DIMSE (test_fuzz_dimse.py)


def test_store_receiver_empty_p_data_tf() -> None:
    """test_fuzz_dimse (StoreReceiver, 5x examples): a P-DATA-TF of no PDV item (``04 00 00000000``)
    made ``StoreReceiver.feed`` raise IndexError (it read the first PDV of an empty list) in the DUL
    thread, which logged "Exception in DUL.run()" and aborted.  Fix: handed to pynetdicom as any
    malformed PDU, which answers per PS3.8."""
    import queue
    from types import SimpleNamespace

    from hilum.dimse.storefast import StoreReceiver

    dul = SimpleNamespace(assoc=SimpleNamespace(_accepted_cx={}), event_queue=queue.Queue())
    receiver = StoreReceiver(dul, hook=None)  # type: ignore[arg-type]  # not reached for this PDU
    empty = bytearray(b"\x04\x00\x00\x00\x00\x00")
    assert receiver.feed(empty) is empty


def test_progressive_metadata_gzip_bomb_and_garbage() -> None:
    """Found beside test_fuzz_dicomweb's client fuzzing, in the progressive loader's own reader of
    (gzip-compressed) DICOM JSON: ``gzip.decompress`` inflated whatever the server sent (a 300 KB
    answer of zeros became 300 MB in the workstation) and ``json.loads`` errors escaped.  Fix:
    inflation bounded by ``MAX_JSON_BYTES``; anything not an array of objects is a DicomWebError."""
    import zlib

    from hilum.dicomweb import progressive
    from hilum.dicomweb.client import DicomWebError

    def gzipped(data: bytes, repeat: int = 1) -> bytes:
        deflater = zlib.compressobj(9, zlib.DEFLATED, 31)
        return b"".join(deflater.compress(data) for _ in range(repeat)) + deflater.flush()

    bomb = gzipped(b"\0" * (1 << 20), (progressive.MAX_JSON_BYTES >> 20) + 8)
    answers = [bomb, b"\x1f\x8b\x08\x00garbage", gzipped(b"\x80"), gzipped(b"{}"), gzipped(b"[1]")]
    assert len(bomb) < 1 << 20

    with _answering(answers, Content_Encoding="gzip") as client:
        while answers:
            with pytest.raises(DicomWebError):
                progressive._get_json_gz(client, "/studies/1.2.3/series/4.5.6/metadata")
            answers.pop(0)
        answers.append(gzipped(b'[{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}]'))
        assert progressive._get_json_gz(client, "/studies/1.2.3/metadata")[0]["0020000D"]["Value"] == ["1.2.3"]


def test_unknown_vr_on_an_integer_the_index_keeps(tmp_path: Path) -> None:
    """test_fuzz_part10 (CI, 2026-12-06): Series Number with the VR "HS" (no such VR). The reader
    accepts the file (it decodes values lazily); the index record's integer reader asked pydicom for
    the value, which raised NotImplementedError("Unknown Value Representation") — only TypeError and
    ValueError were caught, so it escaped ingest.  Fix: the integer reader treats any failure to convert
    as "no value", as the text reader already did; the instance is stored with no series number."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from hilum.dicom.attributes import index_record

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.8"  # RT Plan: no pixels, as in the case found
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "HS1", "RTPLAN", 1, 1
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    tag = b"\x20\x00\x11\x00IS"  # (0020,0011) Series Number, explicit VR little endian
    assert buf.getvalue().count(tag) == 1
    data = buf.getvalue().replace(tag, b"\x20\x00\x11\x00HS")
    record = index_record(read_instance(data))
    assert record.series["series_number"] is None and record.series["series_uid"] == ds.SeriesInstanceUID
    with Archive(tmp_path / "data") as archive:
        res = archive.ingest(data, origin="test")
        assert res.status == "stored", res
        assert archive.read(str(ds.SOPInstanceUID)) == data
