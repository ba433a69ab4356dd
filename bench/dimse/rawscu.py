"""A minimal C-FIND SCU on a plain socket: the benchmark's instrument for the server's own latency.

pynetdicom's SCU polls its socket every millisecond and decodes each response
with pydicom (about 0.3 ms per match on this machine), and DCMTK ``findscu``
starts a process per query; both bury the server's share of a C-FIND's time.
This one holds one association (Study Root FIND, Implicit VR Little Endian),
sends a pre-encoded request and reads the responses straight off the socket,
keeping each match's identifier as bytes (decoded after the clock stops).
It speaks just enough of PS3.8 for that: no extended negotiation, no
fragmented command sets beyond what it reassembles.  Not a library: a
measuring tool for bench/dimse/run.py.
"""

from __future__ import annotations

import socket
import struct
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

IMPLICIT_LE = "1.2.840.10008.1.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION = "1.2.826.0.1.3680043.10.1234.1"


def _uid(value: str) -> bytes:
    data = value.encode()
    return data + b"\0" if len(data) % 2 else data


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


class RawFindSCU:
    def __init__(self, host: str, port: int, called: str, model: str, calling: str = "RAWSCU"):
        self.model = model
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        context = _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, model.encode()) + _item(0x40, IMPLICIT_LE.encode()))
        user = _item(0x50, _item(0x51, struct.pack(">I", 1 << 20)) + _item(0x52, IMPLEMENTATION.encode()))
        body = (
            struct.pack(">HH", 1, 0)
            + called.encode().ljust(16)
            + calling.encode().ljust(16)
            + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT.encode())
            + context
            + user
        )
        self.sock.sendall(struct.pack(">BBI", 0x01, 0, len(body)) + body)
        kind, pdu = self._pdu()
        if kind != 0x02:
            raise RuntimeError(f"association refused (PDU type 0x{kind:02X})")
        pos = 68
        accepted = False
        while pos < len(pdu):
            item, length = pdu[pos], struct.unpack(">H", pdu[pos + 2 : pos + 4])[0]
            if item == 0x21 and pdu[pos + 6] == 0:
                accepted = True
            pos += 4 + length
        if not accepted:
            raise RuntimeError("presentation context not accepted")
        self.message_id = 0

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _pdu(self) -> tuple[int, bytes]:
        head = self._read(6)
        return head[0], self._read(struct.unpack(">I", head[2:])[0])

    def find(self, identifier: bytes) -> list[bytes]:
        """Send one C-FIND-RQ with this encoded identifier; the encoded pending identifiers."""
        self.message_id += 1
        elements = (
            _element(0x00000002, _uid(self.model))
            + _element(0x00000100, struct.pack("<H", 0x0020))
            + _element(0x00000110, struct.pack("<H", self.message_id))
            + _element(0x00000700, struct.pack("<H", 0))
            + _element(0x00000800, struct.pack("<H", 0))
        )
        command = _element(0x00000000, struct.pack("<I", len(elements))) + elements
        pdvs = (
            struct.pack(">IB", len(command) + 2, 1)
            + b"\x03"
            + command
            + struct.pack(">IB", len(identifier) + 2, 1)
            + b"\x02"
            + identifier
        )
        self.sock.sendall(struct.pack(">BBI", 0x04, 0, len(pdvs)) + pdvs)
        matches: list[bytes] = []
        cmd, data = bytearray(), bytearray()
        status = None
        while True:
            kind, pdu = self._pdu()
            if kind != 0x04:
                raise RuntimeError(f"unexpected PDU type 0x{kind:02X}")
            pos = 0
            while pos < len(pdu):
                length = struct.unpack(">I", pdu[pos : pos + 4])[0]
                header, value = pdu[pos + 5], pdu[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if header & 1:
                    cmd += value
                    if header & 2:
                        status, has_data = _status(bytes(cmd))
                        cmd = bytearray()
                        if not has_data:
                            if status in (0xFF00, 0xFF01):
                                raise RuntimeError("a pending response without an identifier")
                            if status != 0:
                                raise RuntimeError(f"C-FIND failed: 0x{status:04X}")
                            return matches
                else:
                    data += value
                    if header & 2:
                        matches.append(bytes(data))
                        data = bytearray()

    def close(self) -> None:
        try:
            self.sock.sendall(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))
            self._pdu()
        except OSError:
            pass
        self.sock.close()


def _status(command: bytes) -> tuple[int, bool]:
    """(Status, whether a data set follows) of an Implicit VR Little Endian command set."""
    pos, status, has_data = 0, -1, False
    while pos < len(command):
        group, elem, length = struct.unpack("<HHI", command[pos : pos + 8])
        value = command[pos + 8 : pos + 8 + length]
        if (group, elem) == (0, 0x0900):
            status = struct.unpack("<H", value)[0]
        elif (group, elem) == (0, 0x0800):
            has_data = struct.unpack("<H", value)[0] != 0x0101
        pos += 8 + length
    return status, has_data


def encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return fp.getvalue()


def decode(data: bytes) -> Any:
    return read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)
