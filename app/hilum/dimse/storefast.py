"""C-STORE requests taken straight off the connection: the hot path of ``hilum serve``.

For every P-DATA-TF PDU pynetdicom builds a PDU object, a primitive and a
state-machine event, assembles the DIMSE message in a ``BytesIO``, decodes
its command set with pydicom, queues it for the association thread, builds
an ``Event``; the handler then joins preamble, file meta and data set into
one more copy before the archive writes it.  That is about 3 ms of CPU per
instance on this machine before the archive sees a byte, and the write only
starts once the whole instance is in.

For the one message a modality sends thousands of times, :class:`StoreReceiver`
does the work in the DUL thread as the PDUs arrive:

- the command set (PS3.7 E, Implicit VR Little Endian) is decoded here;
- each data set fragment (PS3.8 E) is written to a temporary blob as it
  arrives, so only the fsync is left when the last one is in;
- the complete instance goes through the archive's one ingest call (by
  :class:`StoreHook`, which decides what a request may do and what status it
  gets), and the C-STORE-RSP (PS3.7 9.3.1.2) is sent at once.

Anything else goes through pynetdicom unchanged: other messages, a C-STORE
whose command set does not arrive whole in one PDU, or one the hook declines
(an association with debug logging or other PDU-level subscribers, a peer
that may not store).  The receiver only tracks where those messages end, so
it knows where the next one starts.  The stored file is byte for byte the one
pynetdicom's ``Event.encoded_dataset()`` gives (tests/test_dimse_storefast.py).
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Any, Protocol

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_primitives import C_STORE

log = logging.getLogger(__name__)

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101
HANDLER_FAILED = 0xC211  # as pynetdicom answers when a C-STORE handler raises

_ITEM = struct.Struct(">IBB")  # PDV item: length, presentation context ID, message control header


@dataclass(slots=True)
class StoreRequest:
    """The command set of a C-STORE-RQ (PS3.7 9.3.1.1) and its presentation context."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    priority: int = 0


class Sink(Protocol):
    """Where an arriving data set is written (:class:`hilum.archive.blobs.TempBlob`)."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def discard(self) -> None: ...


class StoreHook(Protocol):
    """What the receiver asks of the service that owns the association."""

    def take(self, assoc: Any, request: StoreRequest) -> Sink | None:
        """A sink for this request's data set, or None to leave the request to pynetdicom."""

    def store(self, assoc: Any, request: StoreRequest, data: bytearray, sink: Sink) -> tuple[int, str]:
        """Ingest the whole Part 10 file ``data`` (also in ``sink``): (status, error comment)."""


def decode_command(raw: bytes | bytearray | memoryview) -> dict[int, bytes] | None:
    """The elements of an encoded command set by element number, or None if it is not one.

    Elements must come in ascending order, each once (PS3.5 7.1, PS3.7 E.1): a command set with an
    element twice was read here as its last value where pynetdicom may take another (found by
    tests/test_fuzz_dimse.py); such a command is None, left to pynetdicom to judge."""
    out: dict[int, bytes] = {}
    at, end = 0, len(raw)
    last = -1
    while at < end:
        if at + 8 > end:
            return None
        group, elem, length = struct.unpack_from("<HHI", raw, at)
        at += 8
        if group != 0 or at + length > end or elem <= last:
            return None
        last = elem
        out[elem] = bytes(raw[at : at + length])
        at += length
    return out


def _us(cmd: dict[int, bytes], elem: int) -> int | None:
    value = cmd.get(elem)
    return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None


def _ui(cmd: dict[int, bytes], elem: int) -> str:
    value = cmd.get(elem)
    if value is None or not value.isascii():
        return ""
    return value.decode("ascii").rstrip("\0 ")


LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
"""VRs whose explicit-VR header has a 32-bit length (PS3.5 7.1.2)."""


def encode_element(tag: int, value: bytes, vr: str | None = None) -> bytes:
    """One element, little endian: Implicit VR without ``vr``, else Explicit VR (PS3.5 7.1).
    Raises :class:`struct.error` for a value too long for its VR's 16-bit length."""
    group, elem = tag >> 16, tag & 0xFFFF
    if vr is None:
        return struct.pack("<HHI", group, elem, len(value)) + value
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


def _uid(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b"\0" if len(data) % 2 else data


def _text(value: str) -> bytes:
    data = value.encode("ascii", "replace")
    return data + b" " if len(data) % 2 else data


_VERSION = encode_element(0x00020001, b"\x00\x01", "OB")
_IMPLEMENTATION = (encode_element(0x00020012, _uid(PYNETDICOM_IMPLEMENTATION_UID), "UI")
                   + encode_element(0x00020013, _text(PYNETDICOM_IMPLEMENTATION_VERSION), "SH"))


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and File Meta Information (PS3.10 7.1) for a received data set.

    The same bytes as pynetdicom's ``Event.encoded_dataset()`` puts before the
    data set: version 00\\01, the request's SOP Class and Instance UIDs, the
    context's transfer syntax, pynetdicom's implementation UID and version.
    """
    body = b"".join((
        _VERSION,
        encode_element(0x00020002, _uid(sop_class_uid), "UI"),
        encode_element(0x00020003, _uid(sop_instance_uid), "UI"),
        encode_element(0x00020010, _uid(transfer_syntax), "UI"),
        _IMPLEMENTATION,
    ))
    return b"\0" * 128 + b"DICM" + encode_element(0x00020000, struct.pack("<I", len(body)), "UL") + body


def command_ui(elem: int, value: str) -> bytes:
    """A UI element of a command set (group 0000, Implicit VR Little Endian, PS3.7 E)."""
    return encode_element(elem, _uid(value))


def command_us(elem: int, value: int) -> bytes:
    """A US element of a command set."""
    return encode_element(elem, struct.pack("<H", value))


def command_set(*elements: bytes) -> bytes:
    """A command set of ``elements`` (in tag order), led by its Command Group Length."""
    body = b"".join(elements)
    return encode_element(0x00000000, struct.pack("<I", len(body))) + body


def store_response(request: StoreRequest, status: int, comment: str = "") -> bytes:
    """The command set of the C-STORE-RSP to ``request`` (PS3.7 9.3.1.2, no data set)."""
    return command_set(
        command_ui(0x0002, request.sop_class_uid),
        command_us(0x0100, C_STORE_RSP),
        command_us(0x0120, request.message_id),
        command_us(0x0800, NO_DATA_SET),
        command_us(0x0900, status),
        encode_element(0x00000902, _text(comment[:64])) if comment else b"",  # Error Comment, LO
        command_ui(0x1000, request.sop_instance_uid),
    )


def p_data_tf(context_id: int, control: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU carrying one PDV (PS3.8 9.3.5)."""
    return struct.pack(">BBI", 0x04, 0, 6 + len(data)) + _ITEM.pack(2 + len(data), context_id, control) + data


def _pdvs(pdu: bytearray) -> list[tuple[int, int, int, int]] | None:
    """(context ID, control header, value start, value end) of each PDV in a P-DATA-TF PDU."""
    out = []
    at, end = 6, len(pdu)
    while at < end:
        if at + 6 > end:
            return None
        length, context_id, control = _ITEM.unpack_from(pdu, at)
        if length < 2 or at + 4 + length > end:
            return None
        out.append((context_id, control, at + 6, at + 4 + length))
        at += 4 + length
    return out


class _Incoming:
    """A C-STORE being received on the fast path."""

    __slots__ = ("data", "request", "sink")

    def __init__(self, request: StoreRequest, sink: Sink, header: bytes):
        self.request = request
        self.sink = sink
        self.data = bytearray(header)
        sink.write(header)

    def add(self, fragment: memoryview) -> None:
        self.sink.write(fragment)  # the GIL is released while the page cache takes it
        self.data += fragment


class StoreReceiver:
    """Receives C-STORE requests from an established association's P-DATA-TF PDUs.

    :meth:`feed` is given each P-DATA-TF PDU the DUL reads while the
    association is established; it returns ``None`` when it dealt with the
    PDU, else the PDU for pynetdicom to decode as usual.  :meth:`reset`
    abandons a request cut short (an A-ABORT, a closed connection).
    """

    def __init__(self, dul: Any, hook: StoreHook):
        self.dul = dul
        self.assoc = dul.assoc
        self.hook = hook
        self._incoming: _Incoming | None = None
        # pynetdicom's message in progress: None (none), "command" (its command set is still
        # arriving), "data" (its data set is)
        self._theirs: str | None = None
        self._their_command = bytearray()

    def reset(self) -> None:
        """Forget the message in progress; a half-received instance is discarded."""
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            incoming.sink.discard()
            log.info("C-STORE of %s abandoned mid-transfer", incoming.request.sop_instance_uid)
        self._theirs = None
        self._their_command.clear()

    def feed(self, pdu: bytearray) -> bytearray | None:
        pdvs = _pdvs(pdu)
        if not pdvs:
            # Malformed, or no PDV at all (PS3.8 9.3.5 wants one or more; an empty P-DATA-TF raised
            # IndexError here and the DUL thread aborted on it: tests/test_fuzz_regressions.py):
            # pynetdicom's decoder says what it is.
            self.reset()
            return pdu
        if self._incoming is not None:
            return self._data(pdu, pdvs)
        if self._theirs is None:
            context_id, control, start, end = pdvs[0]
            if control & 3 == 3 and (request := self._request(context_id, memoryview(pdu)[start:end])):
                sink = self.hook.take(self.assoc, request)
                if sink is not None:
                    header = part10_header(request.sop_class_uid, request.sop_instance_uid,
                                           request.transfer_syntax)
                    self._incoming = _Incoming(request, sink, header)
                    return self._data(pdu, pdvs[1:])
        self._track(pdu, pdvs)
        return pdu

    # ------------------------------------------------------------ ours

    def _request(self, context_id: int, raw: memoryview) -> StoreRequest | None:
        cmd = decode_command(raw)
        if cmd is None or _us(cmd, 0x0100) != C_STORE_RQ or _us(cmd, 0x0800) in (None, NO_DATA_SET):
            return None
        message_id = _us(cmd, 0x0110)
        sop_class, sop_instance = _ui(cmd, 0x0002), _ui(cmd, 0x1000)
        context = self.assoc._accepted_cx.get(context_id)  # noqa: SLF001 - pynetdicom's negotiated contexts
        if message_id is None or not sop_class or not sop_instance or context is None:
            return None  # pynetdicom answers (or aborts) as it would
        return StoreRequest(context_id, message_id, sop_class, sop_instance, str(context.transfer_syntax[0]),
                            _us(cmd, 0x0700) or 0)

    def _data(self, pdu: bytearray, pdvs: list[tuple[int, int, int, int]]) -> bytearray | None:
        incoming = self._incoming
        assert incoming is not None
        view = memoryview(pdu)
        for i, (context_id, control, start, end) in enumerate(pdvs):
            if control & 1 or context_id != incoming.request.context_id:
                # a command, or another context, before the data set ended: PS3.8 E.2 forbids it
                log.error("C-STORE data set interrupted by another message; aborting the association")
                self.reset()
                self.dul.event_queue.put("Evt19")  # an invalid PDU: pynetdicom sends the A-ABORT (AA-8)
                return None
            incoming.add(view[start:end])
            if control & 2:
                self._incoming = None
                self._finish(incoming)
                if i + 1 < len(pdvs):  # PS3.8 allows the next message to start in the same PDU
                    item_at = pdvs[i + 1][2] - 6
                    more = bytearray(struct.pack(">BBI", 0x04, 0, len(pdu) - item_at)) + view[item_at:]
                    return self.feed(more)
                return None
        return None

    def _finish(self, incoming: _Incoming) -> None:
        request = incoming.request
        try:
            status, comment = self.hook.store(self.assoc, request, incoming.data, incoming.sink)
        except Exception:  # noqa: BLE001 - as pynetdicom: a failing handler is a failure status
            log.exception("C-STORE of %s failed", request.sop_instance_uid)
            incoming.sink.discard()
            status, comment = HANDLER_FAILED, "internal error while storing"
        # The DUL's own state, not assoc.is_established: pynetdicom sets that only after its
        # EVT_ACCEPTED handlers have run, and a peer's first C-STORE can be in and stored by then
        # (the response was skipped and the peer waited forever).  Only this thread moves the state.
        if self.dul.state_machine.current_state != "Sta6":
            return
        pdu = p_data_tf(request.context_id, 0x03, store_response(request, status, comment))
        limit = self.assoc.requestor.maximum_length  # the peer's largest PDU (0: no limit)
        if not limit or len(pdu) - 6 <= limit:
            self.dul.socket.send(pdu)
            return
        rsp: Any = C_STORE()  # a peer with tiny PDUs: pynetdicom fragments the response
        rsp.MessageIDBeingRespondedTo = request.message_id
        rsp.AffectedSOPClassUID = request.sop_class_uid
        rsp.AffectedSOPInstanceUID = request.sop_instance_uid
        rsp.Status = status
        if comment:
            rsp.ErrorComment = comment[:64]
        self.assoc.dimse.send_msg(rsp, request.context_id)

    # ------------------------------------------------------------ pynetdicom's

    def _track(self, pdu: bytearray, pdvs: list[tuple[int, int, int, int]]) -> None:
        """Follow pynetdicom's message to its end, as its DIMSE decoder does (it stops at the
        fragment that completes a message and ignores the rest of that PDU)."""
        for _context_id, control, start, end in pdvs:
            if control & 1:
                self._theirs = "command"
                self._their_command += pdu[start:end]
                if control & 2:
                    cmd = decode_command(self._their_command)
                    self._their_command.clear()
                    if cmd is None or _us(cmd, 0x0800) == NO_DATA_SET:
                        self._theirs = None
                        return
                    self._theirs = "data"
            else:
                self._theirs = "data"
                if control & 2:
                    self._theirs = None
                    return


__all__ = ["LONG_VRS", "StoreHook", "StoreReceiver", "StoreRequest", "command_set", "command_ui", "command_us",
           "decode_command", "encode_element", "p_data_tf", "part10_header", "store_response"]
