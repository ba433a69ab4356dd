"""The audit trail sent as RFC 5424 syslog over TLS (RFC 5425) to a real TLS listener on 127.0.0.1.

The listener is Python's ``ssl`` with a self-signed certificate made by ``cryptography``; the node
trusts it through ``[audit] ca_file``.  Frames are read by octet counting, each message is checked
against the RFC 5424 header grammar, and its MSG (after the BOM) parsed as the DICOM audit message.
Events recorded while the repository is down are sent when it comes back, once each.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import free_port
from hilum.archive import Archive
from hilum.archive.audit import AuditSettings
from hilum.archive.audit_syslog import AuditSyslogService
from hilum.config import Config
from hilum.node import Node

HEADER = re.compile(
    rb"^<(\d{1,3})>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (\S{1,255}) (\S{1,48}) (\S{1,128}) "
    rb"(\S{1,32}) (-|\[.*?\]) "
)


def make_cert(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "repo.pem", folder / "repo.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Repository:
    """A TLS syslog receiver (RFC 5425): collects the messages of every connection."""

    def __init__(self, cert: Path, key: Path, port: int):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.port = port
        self.messages: list[bytes] = []
        self.errors: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", port))
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._read, args=(raw,), daemon=True).start()

    def _read(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(10)
            conn = self.ctx.wrap_socket(raw, server_side=True)
            buf = b""
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                buf += chunk
                while True:  # MSG-LEN SP SYSLOG-MSG
                    sp = buf.find(b" ")
                    if sp < 0:
                        break
                    length = int(buf[:sp])
                    if len(buf) < sp + 1 + length:
                        break
                    self.messages.append(buf[sp + 1 : sp + 1 + length])
                    buf = buf[sp + 1 + length :]
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(exc))

    def wait(self, n: int, timeout: float = 15.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(5)


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    return make_cert(tmp_path)


def parse(message: bytes) -> tuple[int, ET.Element]:
    m = HEADER.match(message)
    assert m is not None, message[:200]
    assert m.group(4) == b"hilum" and m.group(6) == b"IHE+RFC-3881"
    body = message[m.end() :]
    assert body.startswith(b"\xef\xbb\xbf")  # RFC 5424 6.4: UTF-8 MSG with a BOM
    return int(m.group(1)), ET.fromstring(body[3:].decode("utf-8"))


def test_events_reach_a_tls_syslog_repository_as_rfc5424(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    port = free_port()
    repo = Repository(*certs, port)
    try:
        cfg = Config(
            data_dir=tmp_path / "data",
            aet="AUDITNODE",
            extra={"audit": {"syslog": f"localhost:{port}", "ca_file": str(certs[0])}},
        )
        node = Node(cfg, services=[])
        [svc] = node._audit_services()
        node.services = [svc]
        with node:
            node.archive.audit(
                "Query",
                action="E",
                user="FINDER",
                ae_title="FINDER",
                peer="127.0.0.1",
                patient_id="P1",
                patient_name="Ünï^Code",
                detail="C-FIND STUDY",
            )
            node.archive.audit(
                "User Authentication",
                action="E",
                outcome=4,
                event_type="Login",
                user="eve",
                detail="wrong user name or password",
            )
            got = repo.wait(3)  # Application Start + the two
        assert not repo.errors
        assert len(got) >= 3
        parsed = [parse(m) for m in got]
        kinds = {
            root.find("EventIdentification/EventID").get("originalText"): (pri, root)  # type: ignore[union-attr]
            for pri, root in parsed
        }
        pri, query = kinds["Query"]
        assert pri == 10 * 8 + 5
        objs = query.findall("ParticipantObjectIdentification")
        assert objs[-1].get("ParticipantObjectID") == "P1" and objs[-1].findtext("ParticipantObjectName") == "Ünï^Code"
        assert query.find("AuditSourceIdentification").get("AuditSourceID") == "AUDITNODE"  # type: ignore[union-attr]
        pri, login = kinds["User Authentication"]
        assert pri == 10 * 8 + 4
        assert login.find("EventIdentification").get("EventOutcomeIndicator") == "4"  # type: ignore[union-attr]
        with Archive(tmp_path / "data") as archive:
            assert all(r["sent_at"] is not None for r in archive.audit.search()[:3])
    finally:
        repo.close()


def test_repository_down_then_back_gets_every_event_once(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    port = free_port()
    archive = Archive(tmp_path / "data")
    settings = AuditSettings(syslog=f"127.0.0.1:{port}", ca_file=str(certs[0]), retry_seconds=0.2)
    svc = AuditSyslogService(archive.audit, settings, timeout=3)
    svc.start()
    try:
        for i in range(5):
            archive.audit("Query", user=f"u{i}", detail=f"q{i}")
        archive.audit.flush()
        deadline = time.monotonic() + 10
        while svc.failures == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert svc.failures >= 1 and len(archive.audit.unsent()) == 5  # down: kept, not lost
        repo = Repository(*certs, port)
        try:
            got = repo.wait(5)
            time.sleep(0.5)
            assert len(got) == 5 and not repo.errors
            users = [parse(m)[1].find("ActiveParticipant").get("UserID") for m in got]  # type: ignore[union-attr]
            assert users == [f"u{i}" for i in range(5)]  # in order, once each
            assert archive.audit.unsent() == []
            archive.audit("Query", user="late")
            archive.audit.flush()
            assert len(repo.wait(6)) == 6
        finally:
            repo.close()
    finally:
        svc.stop()
        archive.close()


def test_untrusted_repository_certificate_is_refused(tmp_path: Path, certs: tuple[Path, Path]) -> None:
    (tmp_path / "other").mkdir()
    other_ca, _ = make_cert(tmp_path / "other")
    port = free_port()
    repo = Repository(*certs, port)
    archive = Archive(tmp_path / "data")
    svc = AuditSyslogService(
        archive.audit, AuditSettings(syslog=f"127.0.0.1:{port}", ca_file=str(other_ca), retry_seconds=5), timeout=3
    )
    try:
        archive.audit("Query", user="x")
        archive.audit.flush()
        with pytest.raises(ssl.SSLCertVerificationError):
            svc.send_pending()
        assert repo.messages == [] and len(archive.audit.unsent()) == 1
    finally:
        svc.stop()
        archive.close()
        repo.close()
