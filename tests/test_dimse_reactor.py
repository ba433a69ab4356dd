"""The event-driven acceptor (hilum.dimse.reactor): its hand-made C-STORE-RSP
must be byte for byte what pynetdicom encodes, and its socket must read PDUs
whole, or short when the peer goes away."""

from __future__ import annotations

import socket
import threading
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.dimse_messages import C_FIND_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_FIND, C_STORE

from hilum.dimse.reactor import BulkSocket, encode_response, response_pdvs


def _rsp(status: int, **extra: object) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.10.999.1.2.3"  # odd length: padded
    rsp.Status = status
    for k, v in extra.items():
        setattr(rsp, k, v)
    return rsp


def _pynetdicom_pdvs(msg: object, rsp: object, max_pdu: int = 100) -> list[tuple[int, bytes]]:
    msg.primitive_to_message(rsp)  # type: ignore[attr-defined]
    pdvs = []
    for pdata in msg.encode_msg(1, max_pdu):  # type: ignore[attr-defined]
        pdvs += pdata.presentation_data_value_list
    return pdvs


def _ours(rsp: object, max_pdu: int = 100) -> list[tuple[int, bytes]]:
    pdvs = response_pdvs(rsp, 1, max_pdu)
    assert pdvs is not None
    return pdvs


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB007])
def test_store_response_matches_pynetdicom(status: int) -> None:
    rsp = _rsp(status)
    assert encode_response(rsp)[1] is None  # type: ignore[index]
    assert _ours(rsp, max_pdu=1 << 20) == _pynetdicom_pdvs(C_STORE_RSP(), rsp, max_pdu=1 << 20)


def _find_rsp(status: int, identifier: Dataset | None) -> C_FIND:
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 3
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    rsp.Status = status
    if identifier is not None:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, True
        write_dataset(fp, identifier)
        rsp.Identifier = BytesIO(fp.getvalue())
    return rsp


def test_find_responses_match_pynetdicom() -> None:
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientName = "Yamada^Tarou"
    ident.StudyInstanceUID = "1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19"
    ident.StudyDescription = "a description long enough to need several PDVs at this PDU size"
    pending = _find_rsp(0xFF00, ident)
    assert _ours(pending) == _pynetdicom_pdvs(C_FIND_RSP(), pending)  # several data set fragments
    final = _find_rsp(0x0000, None)
    assert _ours(final) == _pynetdicom_pdvs(C_FIND_RSP(), final)


def test_responses_with_more_than_a_status_are_left_to_pynetdicom() -> None:
    assert encode_response(_rsp(0xC000, ErrorComment="cannot understand")) is None
    failed = _find_rsp(0xA900, None)
    failed.ErrorComment = "bad identifier"
    assert encode_response(failed) is None


def test_bulk_socket_reads_whole_pdus_and_short_on_close() -> None:
    a, b = socket.socketpair()
    sock = BulkSocket.__new__(BulkSocket)
    sock.socket = a
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one recv can return

    def send() -> None:
        b.sendall(payload[:600_000])
        b.sendall(payload[600_000:])
        b.sendall(b"tail")
        b.close()

    t = threading.Thread(target=send)
    t.start()
    assert sock.recv(len(payload)) == payload
    assert sock.recv(100) == b"tail"  # the peer closed: what arrived, no more
    t.join()
    a.close()


def test_bulk_socket_memory_follows_the_bytes_that_arrive() -> None:
    """A length a peer announces is no reason to allocate it: 10 bytes of an announced 256 MiB."""
    import tracemalloc

    a, b = socket.socketpair()
    sock = BulkSocket.__new__(BulkSocket)
    sock.socket = a
    b.sendall(b"0123456789")
    b.close()
    tracemalloc.start()
    try:
        got = sock.recv(256 << 20)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        a.close()
    assert got == b"0123456789"
    assert peak < 1 << 20, f"{peak} bytes allocated for 10 received"
