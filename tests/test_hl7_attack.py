"""Hostile MLLP clients against a real HL7 listener on loopback (issue 13 item 8).

A connection that sends nothing, one that trickles bytes, a message far over
the size bound, more connections than allowed: each is dealt with (closed,
NAK'd, refused) within a deadline while a normal sender is still served.
Plus the deframer's bound: whatever the chunking, the same frames come out
and the buffer never holds more than the limit and one read.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hl7.client import MLLPClient

from conftest import wait_closed
from hilum.config import Config
from hilum.errors import ConfigError
from hilum.hl7.message import ack_code_of, frame
from hilum.hl7.mllp import FrameBuffer, MLLPSettings
from hilum.hl7.service import HL7Service

LIMIT = 64 * 1024


def adt(control: str, pid: str) -> bytes:
    return ("\r".join([f"MSH|^~\\&|HIS|HOSP|HILUM|RAD|20260301120000||ADT^A04^ADT_A01|{control}|P|2.5",
                       "EVN|A04", f"PID|1||{pid}^^^HOSP^MR||Doe^Jane||19700101|F", "PV1|1|O"]) + "\r").encode()


def send_ok(port: int, control: str, pid: str) -> str:
    with MLLPClient("127.0.0.1", port) as client:
        raw = client.send_message(adt(control, pid).decode())
    return ack_code_of(raw.strip(b"\x0b\x1c\r"))[0]


def read_frame(sock: socket.socket, seconds: float) -> bytes | None:
    """One answer frame's content, or None if none came within ``seconds`` (or the peer closed)."""
    deadline = time.monotonic() + seconds
    buf = b""
    while b"\x1c\r" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf.split(b"\x1c\r", 1)[0].lstrip(b"\x0b")



def _service(archive, tmp_path: Path, **hl7: object) -> HL7Service:  # type: ignore[no-untyped-def]
    svc = HL7Service(Config(data_dir=tmp_path, extra={"hl7": hl7}), archive, host="127.0.0.1", port=0)
    svc.start()
    return svc


@pytest.fixture
def quick(archive, tmp_path: Path) -> Iterator[HL7Service]:  # type: ignore[no-untyped-def]
    svc = _service(archive, tmp_path, idle_timeout=1.0, frame_timeout=0.5, max_message_bytes=LIMIT)
    yield svc
    svc.stop()


def test_idle_and_trickling_mllp_connections_are_closed(quick: HL7Service) -> None:
    stop = threading.Event()
    idle = socket.create_connection(("127.0.0.1", quick.port), timeout=10)
    slow = socket.create_connection(("127.0.0.1", quick.port), timeout=10)

    def trickle() -> None:  # a frame that never ends, one byte every 50 ms (at most 400 bytes, 20 s)
        for b in b"\x0b" + adt("SLOW1", "P9")[:399]:
            if stop.is_set():
                return
            try:
                slow.send(bytes([b]))
            except OSError:
                return
            stop.wait(0.05)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        assert send_ok(quick.port, "OK1", "P1") == "AA"  # a normal sender is served meanwhile
        assert wait_closed(idle, 15.0), "a silent MLLP connection stayed open"
        assert wait_closed(slow, 15.0), "a trickling MLLP connection stayed open"
        assert send_ok(quick.port, "OK2", "P2") == "AA"
    finally:
        stop.set()
        t.join(5)
        idle.close()
        slow.close()


def test_an_oversized_message_is_refused_before_its_end(quick: HL7Service, archive) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as s:
        s.sendall(b"\x0b" + adt("BIG1", "P5")[:-1] + b"|" + b"x" * (2 * LIMIT))  # no end block yet
        nak = read_frame(s, 10.0)
        assert nak is not None, "no NAK while the oversized frame was still open"
        assert ack_code_of(nak)[0] == "AR" and b"too large" in nak and b"MSA|AR|BIG1" in nak
        # The rest of it (1 MiB) is skipped as it comes, then the connection carries on.
        for _ in range(16):
            s.sendall(b"y" * 65536)
        s.sendall(b"\x1c\r" + frame(adt("AFTER1", "P6")))
        answer = read_frame(s, 10.0)
        assert answer is not None and b"MSA|AA|AFTER1" in answer  # one NAK for the big frame, then this ACK
    ids = {p["PatientID"] for p in archive.query("PATIENT", {})}
    assert ids == {"P6"}


def test_mllp_connections_are_capped(archive, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    svc = _service(archive, tmp_path, idle_timeout=60.0, max_connections=3)
    held = [socket.create_connection(("127.0.0.1", svc.port), timeout=10) for _ in range(3)]
    try:
        for i, s in enumerate(held):  # each has been served once: all three are open on the server side
            s.sendall(frame(adt(f"H{i}", f"P{i}")))
            assert b"MSA|AA" in (read_frame(s, 10.0) or b"")
        extra = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
        assert wait_closed(extra, 10.0), "a connection over max_connections was kept"
        extra.close()
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the freed slot is usable again (the server notices the close asynchronously)
            try:
                if send_ok(svc.port, "AGAIN", "P7") == "AA":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "no MLLP slot came free"
            time.sleep(0.05)
    finally:
        for s in held:
            s.close()
        svc.stop()


def test_mllp_settings_are_checked() -> None:
    assert MLLPSettings.from_config(Config(data_dir=Path("."))) == MLLPSettings()
    got = MLLPSettings.from_config(Config(data_dir=Path("."), extra={"hl7": {"idle_timeout": 5, "stations": {}}}))
    assert got.idle_timeout == 5.0
    for bad in ({"idle_timeout": 0}, {"max_message_bytes": -1}, {"max_connections": 2.5}, {"frame_timeout": "x"},
                {"idle_timeout": True}):
        with pytest.raises(ConfigError):
            MLLPSettings.from_config(Config(data_dir=Path("."), extra={"hl7": bad}))


@pytest.mark.parametrize("step", [1, 2, 3, 7, 99, 100, 101, 1000, 100000])
def test_deframer_bounded_and_chunking_independent(step: int) -> None:
    limit = 100

    def msg(body: bytes) -> bytes:
        return b"\x0b" + body + b"\x1c\r"

    stream = (msg(b"MSH|a") + msg(b"x" * 500) + msg(b"MSH|b") + b"junk\x1c\r" + b"\x0b" + b"y" * 300 +
              msg(b"MSH|c") + msg(b"z" * limit) + msg(b"z" * (limit + 1)) + b"\x0b" + b"w" * 5000 + b"\x1c" +
              b"\r" + msg(b"MSH|d"))
    fb = FrameBuffer(limit)
    got = []
    for i in range(0, len(stream), step):
        got += [(f.data[:5], f.error) for f in fb.feed(stream[i : i + step])]
        assert len(fb.buf) <= limit + step + 2
    assert got == [(b"MSH|a", ""), (b"xxxxx", "too-large"), (b"MSH|b", ""), (b"junk", "no-start"),
                   (b"yyyyy", "too-large"), (b"MSH|c", ""), (b"zzzzz", ""), (b"zzzzz", "too-large"),
                   (b"wwwww", "too-large"), (b"MSH|d", "")]
    assert not fb.pending
