"""The event-driven acceptor (hilum.dimse.reactor): its hand-made C-STORE-RSP
must be byte for byte what pynetdicom encodes, and its socket must read PDUs
whole, or short when the peer goes away."""

from __future__ import annotations

import socket
import threading

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from hilum.dimse.reactor import BulkSocket, encode_store_response


def _rsp(status: int, **extra: object) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.10.999.1.2.3"  # odd length: padded
    rsp.Status = status
    for k, v in extra.items():
        setattr(rsp, k, v)
    return rsp


def _pynetdicom_bytes(rsp: C_STORE) -> bytes:
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    (pdata,) = list(msg.encode_msg(1, 0))
    ((cx, pdv),) = pdata.presentation_data_value_list
    assert cx == 1 and pdv[0] == 0x03
    return pdv[1:]


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB007])
def test_store_response_matches_pynetdicom(status: int) -> None:
    rsp = _rsp(status)
    assert encode_store_response(rsp) == _pynetdicom_bytes(rsp)


def test_store_response_with_error_comment_is_left_to_pynetdicom() -> None:
    assert encode_store_response(_rsp(0xC000, ErrorComment="cannot understand")) is None


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
