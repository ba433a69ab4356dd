"""Fuzzing the DICOM upper layer and DIMSE decoding: over a real socket to an in-process node, and directly.

The seed is a whole, valid association as a modality sends it: A-ASSOCIATE-RQ
(Verification and CT Image Storage), a C-STORE-RQ of a generated CT instance
(command and data set in separate P-DATA-TF PDUs), a C-ECHO-RQ, an
A-RELEASE-RQ.  Mutations hit its PDU lengths, PDV item lengths, the
association items' lengths, the command elements' lengths and the data set's,
as well as random bytes anywhere (tests/_fuzz.py).

Against the node (both engines: ``[dimse] engine = "fast"`` reads PDUs with
:class:`hilum.dimse.reactor.BulkSocket` and takes C-STOREs off the wire with
:class:`hilum.dimse.storefast.StoreReceiver`; ``"pynetdicom"`` is pynetdicom's
own DUL behind :mod:`hilum.dimse.guard`): after the bytes are sent and the
client's side is shut, the node must close the connection within a deadline
(no hang), and a C-ECHO must then succeed; at the end no connection is left
pending or holding a slot.

Directly: :func:`hilum.dimse.storefast.decode_command` (a command set or
None, and what it returns re-encodes to the input), the PDV splitter, and
:class:`~hilum.dimse.storefast.StoreReceiver` fed mutated P-DATA-TF PDUs
(it hands back what it does not take, or queues the invalid-PDU event; it
never raises).
"""

from __future__ import annotations

import io
import queue
import socket
import struct
import time
import tracemalloc
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import build_context

from _fuzz import dicom_length_fields, fuzz_settings, hostile
from conftest import free_port
from hilum.config import Config
from hilum.dicom.generator import DOE, generate_ct_series, make_study
from hilum.dimse import scu, storefast
from hilum.dimse.storefast import command_set, command_ui, command_us, decode_command, p_data_tf
from hilum.node import Node

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
CLOSE_WITHIN = 15.0  # seconds for the node to close a connection whose client has shut its side


def _dataset() -> tuple[bytes, str]:
    study = make_study(DOE, accession="FUZZD", seed=2121)
    [ct] = generate_ct_series(study, rows=16, columns=16, slices=1)
    buf = io.BytesIO()
    del ct.file_meta
    ct.save_as(buf, implicit_vr=False, little_endian=True)
    return buf.getvalue(), str(ct.SOPInstanceUID)


DATASET, SOP_UID = _dataset()


def _associate_rq() -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = "1.2.840.10008.3.1.1.1"
    prim.calling_ae_title = "FUZZ"
    prim.called_ae_title = "HILUM"
    echo = build_context(VERIFICATION)
    echo.context_id = 1
    store = build_context(CT, [ExplicitVRLittleEndian])
    store.context_id = 3
    prim.presentation_context_definition_list = [echo, store]
    ml = MaximumLengthNotification()
    ml.maximum_length_received = 16384
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.9.7156.21"
    prim.user_information = [ml, impl]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(prim)
    return bytes(pdu.encode())


def _store_command(message_id: int = 1) -> bytes:
    return command_set(
        command_ui(0x0002, CT),
        command_us(0x0100, 0x0001),
        command_us(0x0110, message_id),
        command_us(0x0700, 0),
        command_us(0x0800, 0x0000),
        command_ui(0x1000, SOP_UID),
    )


def _echo_command(message_id: int = 2) -> bytes:
    return command_set(
        command_ui(0x0002, VERIFICATION),
        command_us(0x0100, 0x0030),
        command_us(0x0110, message_id),
        command_us(0x0800, 0x0101),
    )


RELEASE_RQ = struct.pack(">BBIi", 0x05, 0, 4, 0)
PDUS = [
    _associate_rq(),
    p_data_tf(3, 0x03, _store_command()),
    p_data_tf(3, 0x02, DATASET),
    p_data_tf(1, 0x03, _echo_command()),
    RELEASE_RQ,
]
SESSION = b"".join(PDUS)


def _session_fields(data: bytes) -> list[tuple[int, int, str]]:
    """The length fields of the seed session: PDU lengths, PDV item lengths, A-ASSOCIATE-RQ items and
    sub-items, command and data set element lengths (offsets in the unmutated seed)."""
    out: list[tuple[int, int, str]] = []
    at = 0
    for pdu in PDUS:
        out.append((at + 2, 4, ">"))
        if pdu[0] == 0x01:
            item = at + 74
            while item + 4 <= at + len(pdu):
                out.append((item + 2, 2, ">"))
                kind = data[item]
                length = struct.unpack_from(">H", data, item + 2)[0]
                if kind in (0x20, 0x50):  # presentation context / user information: sub-items
                    sub = item + (8 if kind == 0x20 else 4)
                    while sub + 4 <= item + 4 + length:
                        out.append((sub + 2, 2, ">"))
                        sub += 4 + struct.unpack_from(">H", data, sub + 2)[0]
                item += 4 + length
        elif pdu[0] == 0x04:
            out.append((at + 6, 4, ">"))
            value = at + 12
            fields = dicom_length_fields(pdu[12:], 0, implicit=pdu[11] & 1 == 1)
            out.extend((value + off, width, order) for off, width, order in fields)
        at += len(pdu)
    return out


def _pdu_fields(pdu: bytes) -> list[tuple[int, int, str]]:
    """The length fields of one P-DATA-TF (or other) PDU: its length, its first PDV's, its elements'."""
    out = [(2, 4, ">")]
    if pdu[:1] == b"\x04" and len(pdu) > 12:
        out.append((6, 4, ">"))
        out += [(12 + o, w, b) for o, w, b in dicom_length_fields(pdu[12:], 0, implicit=pdu[11] & 1 == 1)][:60]
    return out


HOT = _session_fields(SESSION)
assert len(HOT) > 30


def _engines() -> list[str]:
    return ["fast", "pynetdicom"]


@pytest.fixture(scope="module", params=_engines())
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    engine = str(request.param)
    mp = pytest.MonkeyPatch()
    mp.setenv("HILUM_DIMSE_ENGINE", engine)
    tmp = tmp_path_factory.mktemp(f"fuzz-dimse-{engine}")
    # Short timeouts: a fuzz case that leaves a PDU half-sent must not hold a thread for long.
    cfg = Config(
        data_dir=tmp / "data",
        aet="HILUM",
        dicom_port=free_port(),
        extra={"dimse": {"engine": engine, "artim_timeout": 5}},
    )
    n = Node(cfg, only=["dimse"])
    n.start()
    try:
        yield n
    finally:
        n.stop()
        mp.undo()


def _port(n: Node) -> int:
    return n.service("dimse").port  # type: ignore[attr-defined, no-any-return]


def _exchange(port: int, data: bytes, split: int = len(PDUS[0])) -> tuple[bool, bytes]:
    """Send ``data`` on a fresh connection as a peer would - its first ``split`` bytes (the
    A-ASSOCIATE-RQ), then, once the node has answered (or a second passed), the rest - shut the
    sending side after a moment, and read until the node closes: (closed within CLOSE_WITHIN, what it sent)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(data[:split])
            if len(data) > split:
                sock.settimeout(1.0)
                try:
                    got = sock.recv(65536)
                except TimeoutError:
                    pass
                if got:
                    sock.sendall(data[split:])
            sock.settimeout(0.15)  # what the node answers at once (an A-RELEASE-RP), before the half-close
            try:
                while chunk := sock.recv(65536):
                    got += chunk
                return True, got
            except TimeoutError:
                pass
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return True, got  # the node closed first (an abort for a lie in the first bytes)
        deadline = time.monotonic() + CLOSE_WITHIN
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return True, got
            if not chunk:
                return True, got
            got += chunk
    return False, got


def _echo(port: int) -> None:
    scu.echo(scu.Target("127.0.0.1", port, "HILUM", "FUZZECHO", timeout=20))


# What the node logs only when something raised that its code did not expect (an exception that
# reached the DUL thread's catch-all, or a C-STORE hook that failed): a crash it survived.
UNEXPECTED = ("Exception in DUL.run()", "C-STORE of ", "Traceback")


def _unexpected(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()[:200]
        for r in caplog.records
        if r.levelname in ("ERROR", "CRITICAL")
        and r.getMessage().startswith(UNEXPECTED)
        and "abandoned" not in r.getMessage()
    ]


def _settled(n: Node, seconds: float = 20.0) -> dict[str, int]:
    admission = n.service("dimse").admission  # type: ignore[attr-defined]
    deadline = time.monotonic() + seconds
    while True:
        counts = admission.counts()
        if (
            counts["pending"] == 0 and counts["associations"] == 0 and counts["dropped"] == 0
        ) or time.monotonic() > deadline:
            return dict(counts)
        time.sleep(0.05)


def test_seed_session_stores_and_echoes(node: Node) -> None:
    """The unmutated session is a real one: the instance is stored, both requests answered, released."""
    closed, got = _exchange(_port(node), SESSION)
    assert closed
    assert got[:1] == b"\x02"  # A-ASSOCIATE-AC
    assert b"\x06\x00" in got  # A-RELEASE-RP
    assert SOP_UID in {r["SOPInstanceUID"] for r in node.archive.instances()}


@fuzz_settings(90)
@given(data=hostile([SESSION], lambda _seed: HOT, max_random=400))
def test_node_survives_mutated_sessions(node: Node, data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    port = _port(node)
    closed, _got = _exchange(port, data)
    assert closed, "the node kept the connection open after the client shut its side"
    _echo(port)
    _settled(node, 5)  # the case's association threads have ended (and logged what they would)
    assert not _unexpected(caplog), _unexpected(caplog)


@fuzz_settings(40)
@given(data=hostile(PDUS[1:], lambda seed: _pdu_fields(seed), max_random=200))
def test_node_survives_mutated_pdus_after_association(
    node: Node, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A valid association, then one mutated P-DATA-TF / A-RELEASE-RQ (or random bytes)."""
    caplog.clear()
    port = _port(node)
    closed, _got = _exchange(port, PDUS[0] + data + RELEASE_RQ)
    assert closed
    _echo(port)
    _settled(node, 5)  # the case's association threads have ended (and logged what they would)
    assert not _unexpected(caplog), _unexpected(caplog)


def test_no_connection_left_behind(node: Node) -> None:
    """After the fuzzing, every connection has been closed and counted out."""
    counts = _settled(node)
    assert counts["pending"] == 0 and counts["associations"] == 0 and counts["dropped"] == 0, counts
    _echo(_port(node))


# ------------------------------------------------------------------ the decoders, directly


@fuzz_settings(400)
@given(hostile([_store_command(), _echo_command()], lambda seed: dicom_length_fields(seed, 0, implicit=True)))
def test_decode_command(raw: bytes) -> None:
    cmd = decode_command(raw)
    if cmd is None:
        return
    again = b"".join(struct.pack("<HHI", 0, elem, len(v)) + v for elem, v in cmd.items())
    # what it decoded is exactly what it was given (elements in order, none dropped, none invented)
    assert again == raw


@fuzz_settings(400)
@given(hostile(PDUS[1:4], _pdu_fields))
def test_pdv_splitter(pdu: bytes) -> None:
    pdvs = storefast._pdvs(bytearray(pdu))
    if pdvs is None:
        return
    at = 6
    for _cid, _control, start, end in pdvs:
        assert start == at + 6 and start <= end <= len(pdu)
        at = end
    assert at == len(pdu) or not pdvs and len(pdu) <= 6


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.discarded = False

    def write(self, data: Any) -> None:
        self.data += data

    def discard(self) -> None:
        self.discarded = True


class _Hook:
    """A store hook that takes every request and says what it was given."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []

    def take(self, assoc: Any, request: storefast.StoreRequest) -> _Sink:
        return _Sink()

    def store(self, assoc: Any, request: storefast.StoreRequest, data: bytearray, sink: Any) -> tuple[int, str]:
        self.stored.append(bytes(data))
        return 0x0000, ""


class _Wire:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def _receiver() -> tuple[storefast.StoreReceiver, Any, _Hook]:
    """A StoreReceiver on the parts of an established association it touches (context 3 accepted)."""
    cx = SimpleNamespace(transfer_syntax=[ExplicitVRLittleEndian])
    assoc = SimpleNamespace(_accepted_cx={3: cx}, requestor=SimpleNamespace(maximum_length=16384))
    dul = SimpleNamespace(
        assoc=assoc, event_queue=queue.Queue(), socket=_Wire(), state_machine=SimpleNamespace(current_state="Sta6")
    )
    hook = _Hook()
    return storefast.StoreReceiver(dul, hook), dul, hook


@fuzz_settings(400)
@given(st.lists(hostile(PDUS[1:4], _pdu_fields), min_size=1, max_size=4))
def test_store_receiver(pdus: list[bytes]) -> None:
    receiver, dul, hook = _receiver()
    for pdu in pdus:
        if len(pdu) < 6 or pdu[0] != 0x04:
            continue
        back = receiver.feed(bytearray(pdu))
        assert back is None or isinstance(back, bytearray)
    while not dul.event_queue.empty():
        assert dul.event_queue.get() == "Evt19"
    for stored in hook.stored:  # whatever was stored starts with the Part 10 header made for it
        assert stored[128:132] == b"DICM"
    receiver.reset()


def test_store_receiver_takes_the_seed() -> None:
    receiver, dul, hook = _receiver()
    for pdu in PDUS[1:3]:
        assert receiver.feed(bytearray(pdu)) is None
    assert len(hook.stored) == 1 and hook.stored[0].endswith(DATASET)
    assert dul.socket.sent and dul.socket.sent[0][0] == 0x04  # the C-STORE-RSP


# ------------------------------------------------------------------ declared lengths are not allocated


@pytest.mark.parametrize("declared", [0x000FFFF0, 0x7FFFFFFF, 0xFFFFFFFF])
def test_huge_declared_pdu_length_allocates_nothing(node: Node, declared: int) -> None:
    """After a real association, a P-DATA-TF announcing ``declared`` bytes (up to the node's maximum,
    or far beyond it) followed by a few bytes and a close: the node's Python allocations during it
    stay far below the announced length (tracemalloc traces every thread of the in-process node)."""
    port = _port(node)
    head = struct.pack(">BBI", 0x04, 0, declared) + struct.pack(">IBB", declared - 6 if declared > 6 else 2, 3, 0)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        closed, _ = _exchange(port, PDUS[0] + head + b"\0" * 1000)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert closed
    assert peak < (4 << 20), f"{peak} bytes allocated for a PDU announcing {declared}"
    _echo(port)
