"""Hostile clients against a real DICOMweb server on loopback (issue 13 items 8 and 11).

Password guessing (locks, trusted addresses, bounded argon2 memory in a
``hilum serve`` subprocess), tokens after a password change, QIDO paging
garbage, requests that used to write thousands of log lines, and raw
sockets that connect and idle, trickle their headers, stall a body or stop
reading a response.  Time is injected (lockouts) or bounded by deadlines
(sockets); no test sleeps and then asserts that nothing happened.
"""

from __future__ import annotations

import base64
import http.client
import io
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from argon2 import PasswordHasher
from pydicom.data import get_testdata_file

from conftest import free_port, wait_closed
from hilum.archive import Archive
from hilum.archive.users import UserStore
from hilum.cli import main as cli_main
from hilum.config import Config
from hilum.dicomweb import multipart
from hilum.dicomweb.service import DicomWebService
from hilum.dicomweb.settings import WebSettings

PW = "correct horse"
STOW_CT = 'multipart/related; type="application/dicom"; boundary=bb'


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingHasher(PasswordHasher):
    """argon2id with small costs (fast tests) that counts the verifications it computes."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verifications = 0
        self.delay = 0.0  # seconds each verification takes at least (as a real argon2 check would)
        self._lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002 - argon2's name
        with self._lock:
            self.verifications += 1
        time.sleep(self.delay)
        return super().verify(hash, password)


@dataclass
class Web:
    service: DicomWebService
    archive: Archive
    store: UserStore
    hasher: CountingHasher
    clock: FakeClock
    data: Path

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def base(self) -> str:
        return self.service.url.removesuffix("/dicom-web")


def _start(tmp_path: Path, settings: WebSettings | None = None) -> Web:
    data = tmp_path / "data"
    archive = Archive(data)
    assert archive.ingest(get_testdata_file("CT_small.dcm", download=False)).ok
    hasher = CountingHasher()
    store = UserStore(archive.engine, hasher=hasher)
    store.add("ada", "admin", PW)
    store.add("vic", "viewer", PW)
    clock = FakeClock()
    service = DicomWebService(Config(data_dir=data, web_port=0), archive, settings=settings, clock=clock, users=store)
    service.start()
    return Web(service, archive, store, hasher, clock, data)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    w = _start(tmp_path)
    yield w
    w.service.stop()
    w.archive.close()


def http_get(url: str, *, auth: tuple[str, str] | None = None, token: str | None = None, source: str = "127.0.0.1",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET from a chosen loopback source address (127.0.0.0/8 is all local on Linux)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30, source_address=(source, 0))
    h = {"Accept": "application/dicom+json", **(headers or {})}
    if auth:
        h["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    if token:
        h["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=h)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------ password guessing


def test_200_wrong_passwords_lock_the_user_then_the_right_one_works_after_the_lock(web: Web) -> None:
    url = web.url + "/studies"
    statuses: list[int] = []
    retry_after: list[int] = []
    deadline = time.monotonic() + 120
    with requests.Session() as s:
        for i in range(200):
            assert time.monotonic() < deadline, "200 attempts took longer than 2 minutes"
            r = s.get(url, auth=("vic", f"wrong password {i}"), timeout=30)
            statuses.append(r.status_code)
            if r.status_code == 429:
                retry_after.append(int(r.headers["Retry-After"]))
                assert "too many failed logins" in r.json()["detail"]
    assert statuses[:5] == [401] * 5  # login_user_failures = 5
    assert statuses[5:] == [429] * 195
    assert all(1 <= s <= 10 for s in retry_after)  # the first lock: login_lockout_seconds = 10
    assert web.hasher.verifications <= 5  # locked attempts cost no argon2 hash
    # The right password is refused too while the lock lasts, here and from another (untrusted) address.
    assert requests.get(url, auth=("vic", PW), timeout=30).status_code == 429
    assert http_get(url, auth=("vic", PW), source="127.0.0.2")[0] == 429
    web.clock.advance(10.0)
    assert requests.get(url, auth=("vic", PW), timeout=30).status_code == 200

    # vic logged in from 127.0.0.1: that address is trusted for vic from now on.  An attacker
    # elsewhere locks vic again (the 6th failure: a doubled, 20 s lock) ...
    statuses = [http_get(url, auth=("vic", "guess"), source="127.0.0.2")[0] for _ in range(10)]
    assert statuses == [401] + [429] * 9
    # ... which does not lock vic out at the usual workstation, but does everywhere else.
    assert http_get(url, auth=("vic", PW), source="127.0.0.1")[0] == 200
    status, headers, _ = http_get(url, auth=("vic", PW), source="127.0.0.3")
    assert status == 429 and 10 < int(headers["retry-after"]) <= 20
    # Guessing from the trusted address is throttled on its own counter.
    statuses = [http_get(url, auth=("vic", "guess"), source="127.0.0.1")[0] for _ in range(7)]
    assert statuses == [401] * 5 + [429] * 2


def test_one_address_spraying_many_users_is_locked_first(web: Web) -> None:
    url = web.url + "/studies"
    statuses = [http_get(url, auth=(f"user{i}", "guess"), source="127.0.0.4")[0] for i in range(30)]
    assert statuses == [401] * 20 + [429] * 10  # login_address_failures = 20
    status, _, body = http_get(url, auth=("ada", PW), source="127.0.0.4")
    assert status == 429 and b"address" in body
    # X-Forwarded-For from a loopback client is not believed (no trusted proxies configured).
    assert http_get(url, auth=("ada", PW), source="127.0.0.4", headers={"X-Forwarded-For": "10.9.8.7"})[0] == 429
    # Nobody else is locked out: each of those user names failed once.
    assert http_get(url, auth=("ada", PW), source="127.0.0.5")[0] == 200
    assert http_get(url, auth=("user1", "guess"), source="127.0.0.5")[0] == 401
    web.clock.advance(10.0)
    assert http_get(url, auth=("ada", PW), source="127.0.0.4")[0] == 200
    # Bearer tokens are not throttled (256-bit, no argon2): a locked address still uses its token.
    for i in range(30, 60):
        http_get(url, auth=(f"user{i}", "guess"), source="127.0.0.4")
    token = web.store.issue_token("ada")
    assert http_get(url, token=token, source="127.0.0.4")[0] == 200


def test_a_parallel_burst_from_one_address_overshoots_the_limit_by_at_most_the_hashing_slots(web: Web) -> None:
    web.hasher.delay = 0.05
    url = web.url + "/studies"
    barrier = threading.Barrier(60, timeout=60)

    def guess(i: int) -> int:
        barrier.wait()
        return http_get(url, auth=(f"user{i % 12}", f"guess {i}"), source="127.0.0.6")[0]

    with ThreadPoolExecutor(60) as pool:
        statuses = list(pool.map(guess, range(60)))
    # All 60 passed the first check at once; the second one, taken with a hashing slot, stops them at
    # login_address_failures (20) plus at most login_concurrency (2) already hashing.
    assert statuses.count(401) <= 22 and web.hasher.verifications <= 22
    assert set(statuses) <= {401, 429, 503} and statuses.count(401) >= 20
    assert http_get(url, auth=("ada", PW), source="127.0.0.6")[0] == 429
    assert http_get(url, auth=("ada", PW), source="127.0.0.7")[0] == 200  # ada is not locked


def test_a_token_issued_before_a_password_change_is_refused_after(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    url = web.url + "/studies"
    token = requests.post(web.base + "/auth/token", auth=("ada", PW), timeout=30).json()["access_token"]
    assert http_get(url, token=token)[0] == 200
    # `hilum users passwd` (another process would do the same: it is the same database)
    monkeypatch.setattr("sys.stdin", io.StringIO("a new password\n"))
    assert cli_main(["users", "--data", str(web.data), "passwd", "ada", "--password-stdin"]) == 0
    assert http_get(url, token=token)[0] == 401
    assert http_get(url, auth=("ada", PW))[0] == 401
    # the API (UserStore.set_password) revokes too
    token = requests.post(web.base + "/auth/token", auth=("ada", "a new password"), timeout=30).json()["access_token"]
    assert http_get(url, token=token)[0] == 200
    assert web.store.set_password("ada", "a third password") == 1
    assert http_get(url, token=token)[0] == 401
    # and so does removing the user
    token = web.store.issue_token("vic")
    assert http_get(url, token=token)[0] == 200
    web.store.remove("vic")
    assert http_get(url, token=token)[0] == 401


# ------------------------------------------------------------------------ the node's memory under 40 parallel guesses


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


@pytest.fixture
def node_process(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """``hilum serve`` in a subprocess (with the options an indirect parameter gives); throttling
    thresholds high so that every guess is hashed."""
    options = list(getattr(request, "param", []))
    data = tmp_path / "data"
    data.mkdir()
    (data / "hilum.toml").write_text("[web]\nlogin_user_failures = 100000\nlogin_address_failures = 100000\n")
    env = {**os.environ, "HILUM_DATA": str(data)}
    subprocess.run([sys.executable, "-m", "hilum", "users", "add", "ada", "--role", "admin", "--password-stdin"],
                   input=PW.encode() + b"\n", env=env, check=True, capture_output=True, timeout=120)
    web_port = free_port()
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "hilum", "serve", *options, "--web-port", str(web_port),
                                 "--dicom-port", str(free_port()), "--hl7-port", str(free_port())],
                                env=env, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{web_port}/dicom-web"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                requests.get(url + "/studies", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "hilum serve did not answer within 60 s"
                time.sleep(0.1)
        yield proc, url, log_path
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


ARGON2_MEMORY = 64 << 20  # argon2-cffi's default memory_cost (RFC 9106 second recommendation)
#: What 40 parallel wrong passwords may add to the node's peak RSS: the two hashing slots
#: (login_concurrency = 2) plus 96 MiB for threads, buffers and allocator slack.  Before the
#: bound, the same burst added about 40 x 64 MiB (2.4 GB in the review).
RSS_GROWTH_BOUND = 2 * ARGON2_MEMORY + (96 << 20)


def test_40_parallel_wrong_passwords_keep_the_node_memory_bounded(node_process: Any) -> None:
    proc, url, _ = node_process
    # warm up: one hash done, the thread pool started
    assert requests.get(url + "/studies", auth=("ada", "wrong password"), timeout=60).status_code == 401
    try:  # reset the peak-RSS counter (Linux >= 4.0) so that VmHWM is the peak of the burst alone
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
    except OSError:
        pass
    before = _proc_status(proc.pid)
    barrier = threading.Barrier(40, timeout=60)

    def guess(i: int) -> int:
        barrier.wait()
        return requests.get(url + "/studies", auth=("ada", f"wrong password {i}"), timeout=120).status_code

    with ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(guess, range(40)))
    after = _proc_status(proc.pid)
    growth = after["VmHWM"] - before["VmRSS"]
    assert set(statuses) <= {401, 503}, statuses
    assert growth < RSS_GROWTH_BOUND, f"peak RSS grew by {growth >> 20} MiB during 40 parallel guesses"
    # the node still serves a right password afterwards
    assert requests.get(url + "/studies", auth=("ada", PW), timeout=60).status_code == 200


# ------------------------------------------------------------------------ QIDO paging garbage


def test_qido_silly_paging_and_include_values_are_400(web: Web) -> None:
    token = web.store.issue_token("vic")
    url = web.url + "/studies"
    silly = ["offset=1e23", "offset=100000000000000000000000", "offset=2147483648", "limit=1e3", "limit=1_0",
             "offset=%D9%A3", "limit=%205", "limit=+5", "offset=-0", "limit=0x10", "limit=99999999999999999999",
             "limit=", "offset=", "includefield=" + ",".join(["PatientName"] * 501),
             "StudyInstanceUID=" + ",".join(["1.2.3"] * 1001), "&".join(f"_{i}=1" for i in range(201)),
             "fuzzymatching=yes", "includefield=NotAnAttribute"]
    for query in silly:
        status, headers, body = http_get(f"{url}?{query}", token=token)
        assert status == 400, (query[:60], status, body[:200])
        assert headers["content-type"].startswith("application/json") and b'"error"' in body
    # sane paging still works
    assert http_get(f"{url}?limit=1&offset=0", token=token)[0] == 200
    assert http_get(f"{url}?offset=2147483647", token=token)[:1] == (200,)


# ------------------------------------------------------------------------ one request, bounded log lines


def _explicit_le(ds: pydicom.Dataset) -> bytes:
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, little_endian=True, implicit_vr=False)
    return buf.getvalue()


def _with_content_sequence(uid: str, items: bytes) -> bytes:
    """CT_small with a raw Content Sequence (0040,A730, undefined length) inserted before Pixel Data."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    raw = _explicit_le(ds)
    at = raw.find(b"\xe0\x7f\x10\x00")
    return raw[:at] + b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + items + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" + raw[at:]


def invalid_values_file(n: int) -> bytes:
    """An instance whose Content Sequence has ``n`` items holding values invalid for their VR (IS, DS)."""
    items = bytearray()
    for k in range(n):
        bad = b"x%05d" % k
        el = b"\x18\x00\x50\x00DS" + struct.pack("<H", len(bad)) + bad
        el += b"\x20\x00\x13\x00IS" + struct.pack("<H", len(bad)) + bad
        items += b"\xfe\xff\x00\xe0" + struct.pack("<I", len(el)) + el
    return _with_content_sequence(f"1.2.826.0.1.3680043.8.498.7.{n}", bytes(items))


def nested_file(depth: int) -> bytes:
    """An instance whose Content Sequence nests ``depth`` levels deep (undefined lengths)."""
    item, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    sq, sq_end = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff", b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    inner = (item + sq) * (depth - 1) + item + item_end + (sq_end + item_end) * (depth - 1)
    return _with_content_sequence(f"1.2.826.0.1.3680043.8.498.8.{depth}", inner)


def _records_of(caplog: pytest.LogCaptureFixture, action: Any, *, wait_for: str | None = None) -> list[str]:
    """The log records written while ``action()`` ran (and, when named, until a record containing ``wait_for``)."""
    caplog.clear()
    action()
    if wait_for is not None:  # the summary line is written after the response went out
        deadline = time.monotonic() + 10
        while not any(wait_for in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.02)
    return [f"{r.name}: {r.getMessage()[:300]}" for r in caplog.records]


def test_one_request_writes_a_bounded_number_of_log_lines(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    token = web.store.issue_token("ada")
    auth = {"Authorization": f"Bearer {token}"}
    bound = WebSettings().log_records_per_request + 3
    res = web.archive.ingest(invalid_values_file(3000))
    assert res.ok, res.reason
    inst = f"{web.url}/studies/{res.study_instance_uid}/series/{res.series_instance_uid}/instances/" \
           f"{res.sop_instance_uid}"
    caplog.set_level(logging.INFO, logger="pydicom")  # other tests may have quietened pydicom (hilum import does)
    with caplog.at_level(logging.INFO):
        # WADO-RS metadata of an instance with 6,000 values invalid for their VR: one pydicom line per value before
        records = _records_of(caplog, lambda: requests.get(inst + "/metadata", headers=auth, timeout=60).raise_for_status(),
                              wait_for="suppressed")
        assert len(records) <= bound, records[:5] + [f"... {len(records)} records"]
        assert any("more log record(s) suppressed" in r for r in records)
        # QIDO includefield of the same sequence: 200 with the attribute (it was a 500 and two tracebacks)
        r = requests.get(web.url + "/instances", params={"SOPInstanceUID": res.sop_instance_uid,
                                                         "includefield": "ContentSequence"}, headers=auth, timeout=60)
        assert r.status_code == 200 and "0040A730" in r.json()[0]
        # STOW-RS of 3,000 tiny parts that are not DICOM: one line per part before
        body = multipart.encode([("application/dicom", b"not dicom %d" % i) for i in range(3000)], "bb")
        records = _records_of(caplog, lambda: requests.post(web.url + "/studies", data=body, timeout=120,
                                                            headers={**auth, "Content-Type": STOW_CT}))
        assert len(records) <= bound, records[:5] + [f"... {len(records)} records"]
        # STOW-RS of a 3,000-level deep sequence: refused, a line or two
        body = multipart.encode([("application/dicom", nested_file(3000))], "bb")
        records = _records_of(caplog, lambda: requests.post(web.url + "/studies", data=body, timeout=120,
                                                            headers={**auth, "Content-Type": STOW_CT}))
        assert len(records) <= bound


@pytest.mark.parametrize("node_process", [["-v"]], indirect=True)
def test_hilum_serve_log_stays_short_for_a_request_over_thousands_of_invalid_values(node_process: Any) -> None:
    """The node's real log (stderr of ``hilum serve``): pydicom logs *and* ``warnings.warn``-s each invalid value.
    With ``-v`` (without it ``hilum serve`` keeps pydicom quiet altogether), so the per-request budget is
    what bounds them."""
    _, url, log_path = node_process
    body = multipart.encode([("application/dicom", invalid_values_file(3000))], "bb")
    r = requests.post(url + "/studies", auth=("ada", PW), data=body, headers={"Content-Type": STOW_CT}, timeout=120)
    assert r.status_code == 200, r.text[:300]
    inst = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    study = inst.split("/series/")[0]
    before = log_path.read_bytes().count(b"\n")
    assert requests.get(study + "/metadata", auth=("ada", PW), timeout=120).status_code == 200
    deadline = time.monotonic() + 20
    while b"suppressed" not in log_path.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    new = log_path.read_bytes().splitlines()[before:]
    # the budget (20 records or warnings, a warning being two lines) and the summary line
    assert len(new) <= 2 * WebSettings().log_records_per_request + 2, [x[:100] for x in new[:5]] + [len(new)]
    assert any(b"more log record(s) suppressed" in x for x in new)


# ------------------------------------------------------------------------ idle, slow and too many connections



def trickle(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> None:
    """Send ``data`` one byte every ``every`` seconds until it is sent, the socket fails or ``stop`` is set."""
    for b in data:
        if stop.is_set():
            return
        try:
            sock.send(bytes([b]))
        except OSError:
            return
        stop.wait(every)


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def _wait(predicate: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Web]:
    """A server with one-second timeouts and anonymous reading (no hashing in the way)."""
    w = _start(tmp_path, WebSettings(anonymous="read", header_timeout=1.0, keep_alive_timeout=1.0, idle_timeout=1.0))
    yield w
    w.service.stop()
    w.archive.close()


def test_idle_slow_and_stalled_http_connections_are_closed(quick: Web) -> None:
    port = quick.service.port
    assert port is not None
    stop = threading.Event()
    idle = _connect(port)
    slow = _connect(port)
    slow_head = b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400
    slow_thread = threading.Thread(target=trickle, args=(slow, slow_head, 0.05, stop), daemon=True)
    slow_thread.start()
    stalled = _connect(port)
    token = quick.store.issue_token("ada")
    stalled.sendall(b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                    b"Authorization: Bearer " + token.encode() + b"\r\nContent-Type: " + STOW_CT.encode() +
                    b"\r\n\r\n--bb\r\nContent-Type: application/dicom\r\n\r\nDICM")
    keep = _connect(port)
    keep.sendall(b"GET /dicom-web/studies HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        # a normal client is served meanwhile
        assert requests.get(quick.url + "/studies", timeout=10).status_code == 200
        # a request head over max_header_bytes (16 KiB), even when it arrives in one read: 431
        assert requests.get(quick.url + "/studies", headers={"X-Big": "b" * 20000}, timeout=10).status_code == 431
        assert requests.get(quick.url + "/studies", headers={"X-Big": "b" * 15000}, timeout=10).status_code == 200
        for name, sock in (("idle", idle), ("slowloris", slow), ("stalled body", stalled), ("keep-alive", keep)):
            assert wait_closed(sock, 15.0), f"{name} connection still open after 15 s"
        assert quick.service.limits is not None and quick.service.limits.timed_out["request body stalled"] == 1
        assert requests.get(quick.url + "/studies", timeout=10).status_code == 200
    finally:
        stop.set()
        slow_thread.join(5)
        for sock in (idle, slow, stalled, keep):
            sock.close()


def test_a_client_that_stops_reading_is_dropped(tmp_path: Path) -> None:
    w = _start(tmp_path, WebSettings(anonymous="read", idle_timeout=1.0))
    try:
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.9.1"
        ds.Rows, ds.Columns, ds.NumberOfFrames = 1024, 1024, 8
        ds.PixelData = bytes(1024 * 1024 * 2 * 8)  # 16 MiB: more than loopback's socket buffers hold
        res = w.archive.ingest(_explicit_le(ds))
        assert res.ok, res.reason
        path = f"/dicom-web/studies/{res.study_instance_uid}/series/{res.series_instance_uid}/instances/" \
               f"{res.sop_instance_uid}"
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", w.service.port))
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: multipart/related; "
                     f'type="application/dicom"; transfer-syntax=*\r\n\r\n'.encode())
        limits = w.service.limits
        assert limits is not None
        # not reading: the server's writes stall, and after idle_timeout it drops the connection
        assert _wait(lambda: limits.timed_out["client stopped reading"] == 1 and limits.open == 0, 20.0)
        got = 0
        try:
            while chunk := sock.recv(1 << 20):
                got += len(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        sock.close()
        assert got < 16 << 20
        assert requests.get(w.url + "/studies", timeout=10).status_code == 200
    finally:
        w.service.stop()
        w.archive.close()


def test_connections_are_capped_globally_and_per_client(tmp_path: Path) -> None:
    w = _start(tmp_path, WebSettings(anonymous="read", max_connections=4, max_connections_per_client=3,
                                     header_timeout=60.0))
    limits = w.service.limits
    assert limits is not None and w.service.port is not None
    port = w.service.port
    held: list[socket.socket] = []
    try:
        held += [_connect(port) for _ in range(3)]
        assert _wait(lambda: limits.open == 3)
        # a 4th from the same address: per-client cap
        extra = _connect(port)
        extra.settimeout(10)
        assert extra.recv(100).startswith(b"HTTP/1.1 503")
        assert wait_closed(extra, 10.0)
        extra.close()
        # another address still gets in
        assert http_get(w.url + "/studies", source="127.0.0.2")[0] == 200
        held.append(_connect(port, "127.0.0.3"))
        assert _wait(lambda: limits.open == 4)
        # the global cap: a 5th connection from anywhere is answered 503 and closed
        status, headers, _ = http_get(w.url + "/studies", source="127.0.0.4")
        assert status == 503 and headers["retry-after"] == "1"
        assert limits.refused == 2
    finally:
        for s in held:
            s.close()
    assert _wait(lambda: limits.open == 0)
    assert requests.get(w.url + "/studies", timeout=10).status_code == 200
    w.service.stop()
    w.archive.close()
