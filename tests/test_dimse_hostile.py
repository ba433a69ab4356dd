"""The DICOM listener under hostile input (issue 13 items 7, 8, 11): raw-socket clients on
127.0.0.1 against a real node, on both engines (``[dimse] engine``; ``HILUM_DIMSE_ENGINE``
set by the environment picks one, else each test runs on both).

- an announced PDU length is checked before anything is allocated: six bytes
  ``01 00 FF FF FF FF`` before association get an A-ABORT and the node's RSS
  (read from /proc, the node in its own process) stays flat;
- half-open connections (8 bytes of an A-ASSOCIATE-RQ) neither keep DCMTK's
  ``echoscu`` out nor stay open past the ARTIM timeout;
- a PDU longer than the node advertised aborts that association only;
- with ``require_known_peers`` a peer must call from its configured host;
- a silent connection to the TLS port does not stop the listener.

Every attack is bounded in count and in time (socket timeouts, deadlines).
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import UID
from pynetdicom import AE, build_context
from pynetdicom.sop_class import Verification

from conftest import free_port
from hilum.config import Config, Peer
from hilum.node import Node

BIN = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}
MiB = 1 << 20
ADVERTISED = MiB  # what the node advertises with max_pdu_size = 0 (hilum.dimse.scp.UNLIMITED_PDU)

needs_dcmtk = pytest.mark.skipif(not (BIN / "echoscu").exists(), reason="DCMTK (Debian package dcmtk) is needed")


def _engines() -> list[str]:
    chosen = os.environ.get("HILUM_DIMSE_ENGINE", "").strip()
    return [chosen] if chosen else ["fast", "pynetdicom"]


@pytest.fixture(params=_engines())
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("HILUM_DIMSE_ENGINE", request.param)
    return str(request.param)


def _node(tmp: Path, dimse: dict[str, Any] | None = None, **kw: Any) -> Node:
    cfg = Config(data_dir=tmp / "data", aet="HILUM", dicom_port=free_port(), extra={"dimse": dimse or {}}, **kw)
    return Node(cfg, only=["dimse"])


def _port(n: Node) -> int:
    return n.service("dimse").port  # type: ignore[attr-defined, no-any-return]


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _until_closed(sock: socket.socket, deadline: float) -> tuple[bool, bytes]:
    """Read until the node closes the connection or ``deadline``: (closed, what it sent)."""
    got = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, min(0.5, deadline - time.monotonic())))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def _echoscu(port: int, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "echoscu"), "-aet", "MODALITY", "-aec", "HILUM", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=timeout, env=ENV)


def _is_abort(data: bytes) -> bool:
    return len(data) >= 10 and data[0] == 0x07 and struct.unpack(">I", data[2:6])[0] == 4


# ------------------------------------------------------------------ before association: memory


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def served(tmp_path: Path, engine: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``hilum serve`` in its own process (so its RSS is its own), on the chosen engine."""
    data, port = tmp_path / "data", free_port()
    data.mkdir()
    (data / "hilum.toml").write_text(f'[dimse]\nengine = "{engine}"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "hilum", "serve", "--data", str(data), "--dicom-port", str(port),
         "--web-port", str(free_port()), "--hl7-port", str(free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**ENV, "HILUM_DIMSE_ENGINE": engine})
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "hilum serve did not listen"
                time.sleep(0.1)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=10)


def _many_contexts_associate(port: int) -> bool:
    """A large but honest A-ASSOCIATE-RQ: 128 contexts of 24 transfer syntaxes each (~230 KB)."""
    ae = AE("MODALITY")
    syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"] + [f"1.2.826.0.1.3680043.10.999.7.{i}" for i in range(22)]
    contexts = [build_context(Verification, syntaxes)]
    contexts += [build_context(UID(f"1.2.826.0.1.3680043.10.999.1.{i}"), syntaxes) for i in range(127)]
    assoc = ae.associate("127.0.0.1", port, ae_title="HILUM", contexts=contexts)
    try:
        return bool(assoc.is_established and assoc.send_c_echo().Status == 0)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


@needs_dcmtk
def test_six_bytes_before_association_allocate_nothing(served: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = served
    assert _echoscu(port).returncode == 0  # warm: the association code paths are loaded
    before = _rss(proc.pid)
    attack = bytes.fromhex("0100FFFFFFFF")  # an A-ASSOCIATE-RQ of 4 GiB
    held: list[socket.socket] = []
    results = []
    try:
        for _ in range(2):  # one connection, then two at once
            s = _connect(port)
            held.append(s)
            s.sendall(attack)
            results.append(_until_closed(s, time.monotonic() + 5))
        during = _rss(proc.pid)
    finally:
        for s in held:
            s.close()
    grown = during - before
    assert grown < 32 * MiB, f"the node's RSS grew by {grown / MiB:.0f} MiB"
    for closed, sent in results:
        assert closed and _is_abort(sent), sent  # A-ABORT (PS3.8 9.3.8), then the connection closes
        assert sent[8:10] == b"\x02\x06"  # service provider: invalid PDU parameter value
    assert _echoscu(port).returncode == 0
    assert _many_contexts_associate(port)  # the cap is far above what an honest request needs
    assert _rss(proc.pid) - before < 32 * MiB


# ------------------------------------------------------------------ before association: slots, ARTIM

HALF_RQ = bytes.fromhex("010000000100") + b"\x00\x01"  # A-ASSOCIATE-RQ header (256 bytes) + protocol version


@needs_dcmtk
def test_half_open_connections_do_not_keep_peers_out(tmp_path: Path, engine: str) -> None:
    with _node(tmp_path) as n:
        port = _port(n)
        held = []
        try:
            for _ in range(40):
                s = _connect(port)
                s.sendall(HALF_RQ)
                held.append(s)
            proc = _echoscu(port)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            proc = _echoscu(port)  # and again: the slots were given back
            assert proc.returncode == 0, proc.stdout + proc.stderr
        finally:
            for s in held:
                s.close()


def test_half_open_connections_are_dropped_after_artim(tmp_path: Path, engine: str) -> None:
    with _node(tmp_path, dimse={"artim_timeout": 1}) as n:
        port = _port(n)
        half, silent = _connect(port), _connect(port)
        try:
            half.sendall(HALF_RQ)
            deadline = time.monotonic() + 15
            half_closed, half_sent = _until_closed(half, deadline)
            silent_closed, silent_sent = _until_closed(silent, deadline)
        finally:
            half.close()
            silent.close()
        assert half_closed and half_sent == b""  # PS3.8 9.1.5 AA-2: closed, no A-ABORT
        assert silent_closed and silent_sent == b""
        ae = AE("MODALITY")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="HILUM")
        try:
            assert assoc.is_established and assoc.send_c_echo().Status == 0
        finally:
            assoc.release()
            ae.shutdown()


# ------------------------------------------------------------------ after association


@pytest.mark.parametrize("announced", [ADVERTISED + 1, 0xFFFFFFFF])
def test_a_lying_length_aborts_that_association_only(tmp_path: Path, engine: str, announced: int) -> None:
    with _node(tmp_path) as n:
        ae = AE("MODALITY")
        ae.add_requested_context(Verification)
        liar = ae.associate("127.0.0.1", _port(n), ae_title="HILUM")
        honest = ae.associate("127.0.0.1", _port(n), ae_title="HILUM")
        try:
            assert liar.is_established and honest.is_established
            assert liar.acceptor.maximum_length == ADVERTISED
            raw = liar.dul.socket.socket
            raw.sendall(struct.pack(">BBI", 0x04, 0, announced) + b"\x00\x00\x00\x10\x01\x03")
            deadline = time.monotonic() + 10
            while not liar.is_aborted and time.monotonic() < deadline:
                time.sleep(0.02)
            assert liar.is_aborted
            assert honest.is_established and honest.send_c_echo().Status == 0
        finally:
            if honest.is_established:
                honest.release()
            ae.shutdown()


# ------------------------------------------------------------------ known peers: host and AE title


def test_a_known_peer_must_call_from_its_host(tmp_path: Path, engine: str) -> None:
    peers = {"ct": Peer(aet="MODALITY", host="127.0.0.2", port=free_port()),
             "local": Peer(aet="LOCALWS", host="localhost", port=free_port())}
    with _node(tmp_path, require_known_peers=True, peers=peers) as n:

        def associate(aet: str, source: str) -> Any:
            ae = AE(aet)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", _port(n), ae_title="HILUM", bind_address=(source, 0))
            ok = assoc.is_established
            rejected = assoc.is_rejected
            if ok:
                assoc.release()
            ae.shutdown()
            return ok, rejected

        assert associate("MODALITY", "127.0.0.1") == (False, True)  # the right AE title, the wrong host
        assert associate("MODALITY", "127.0.0.2") == (True, False)
        assert associate("LOCALWS", "127.0.0.1") == (True, False)  # a host name, resolved at start
        assert associate("LOCALWS", "127.0.0.2") == (False, True)
        assert associate("STRANGER", "127.0.0.1") == (False, True)


# ------------------------------------------------------------------ TLS


def test_a_silent_connection_does_not_stop_the_tls_listener(tmp_path: Path, engine: str) -> None:
    from hilum.dimse import scu
    from hilum.dimse.net import client_ssl_context

    key, cert = tmp_path / "node.key", tmp_path / "node.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    with _node(tmp_path, tls_cert=str(cert), tls_key=str(key)) as n:
        silent = _connect(_port(n))  # a TCP connection that never says hello
        try:
            target = scu.Target("127.0.0.1", _port(n), "HILUM", "MODALITY", tls=client_ssl_context(ca=str(cert)),
                                timeout=10)
            scu.echo(target)
        finally:
            silent.close()
