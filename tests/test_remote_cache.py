"""The persistent bounded cache of remote studies (:mod:`hilum.dicomweb.cache`).

The remote is a second real ``hilum serve`` on loopback; the client reaches it through a small
counting HTTP proxy (real sockets both sides) so that "the second open asks nothing of the remote"
is a count of requests, not a belief.  Limits and LRU eviction by last open, pinning while open,
survival across a restart (a new ``RemoteCache`` on the same folder), "Keep locally" into the
archive through ingest, and AES-GCM at rest (no plaintext on disk, key file 0600, plaintext gone
after release, a wrong key cannot read).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from hilum.archive import Archive
from hilum.config import Config
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study
from hilum.dicomweb.cache import CacheError, RemoteCache, RemoteCacheSettings
from hilum.dicomweb.client import DicomWebClient, DicomWebSource
from hilum.errors import ConfigError
from test_priors_remote import APP, serve_peer

SLICES = 3


class CountingProxy:
    """An HTTP/1.1 forwarder on loopback that counts the requests it passes to ``upstream``."""

    def __init__(self, upstream_port: int):
        self.count = 0
        self.paths: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                proxy.count += 1
                proxy.paths.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_POST = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _fill(studies: dict[str, dict[str, Any]]) -> Any:
    def fill(archive: Archive) -> None:
        for i, name in enumerate(("A", "B", "C")):
            st = make_study(MUELLER, accession=f"CACHE0{i}", date=f"2026070{i + 1}", seed=f"cache-{name}")
            series = generate_ct_series(st, rows=32, columns=32, slices=SLICES, seed=10 + i)
            pixels = {}
            for ds in series:
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                archive.ingest(buf.getvalue())
                pixels[str(ds.SOPInstanceUID)] = ds.pixel_array.copy()
            studies[name] = {"uid": st.uid, "pixels": pixels}

    return fill


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    studies: dict[str, dict[str, Any]] = {}
    with serve_peer(tmp_path_factory.mktemp("remote"), "REMOTE", fill=_fill(studies)) as ports:
        proxy = CountingProxy(ports["web"])
        try:
            yield {"proxy": proxy, "studies": studies}
        finally:
            proxy.close()


@pytest.fixture
def client(remote: dict[str, Any]) -> Iterator[DicomWebClient]:
    c = DicomWebClient(DicomWebSource("remote", f"http://127.0.0.1:{remote['proxy'].port}/dicom-web"))
    yield c
    c.close_all()


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])  # noqa: S603,S607
    proc.wait()
    return proc.pid


def _pixels_equal(archive: Archive, study: dict[str, Any]) -> None:
    rows = archive.instances(study_uid=study["uid"])
    assert len(rows) == SLICES
    for r in rows:
        ds = pydicom.dcmread(r["path"])
        assert np.array_equal(ds.pixel_array, study["pixels"][str(ds.SOPInstanceUID)])


def _study_size(remote: dict[str, Any], client: DicomWebClient, tmp_path: Path) -> int:
    with RemoteCache(tmp_path / "probe", 100) as probe:
        probe.open(client, remote["studies"]["A"]["uid"])
        return probe.total_bytes()


def test_second_open_is_local_and_survives_restart(
    remote: dict[str, Any], client: DicomWebClient, tmp_path: Path
) -> None:
    proxy, a = remote["proxy"], remote["studies"]["A"]
    cache = RemoteCache(tmp_path, limit_mb=100)
    assert not cache.has(a["uid"])
    before = proxy.count
    seen: list[int] = []
    archive = cache.open(client, a["uid"], progress=lambda n, _r: seen.append(n))
    assert proxy.count > before, "the first open fetches from the remote"
    assert seen == list(range(1, SLICES + 1))
    assert cache.has(a["uid"]) and cache.pinned(a["uid"])
    _pixels_equal(archive, a)
    cache.release(a["uid"])
    assert not cache.pinned(a["uid"])
    cache.close()

    # A restart: a new cache on the same data folder.
    cache = RemoteCache(tmp_path, limit_mb=100)
    assert cache.has(a["uid"])
    (row,) = cache.studies()
    assert row["study_uid"] == a["uid"] and row["instances"] == SLICES and row["complete"] and row["source"] == "remote"
    before = proxy.count
    archive = cache.open(client, a["uid"])
    assert proxy.count == before, f"the second open asked the remote: {proxy.paths[before:]}"
    _pixels_equal(archive, a)
    cache.release(a["uid"])
    cache.close()


def test_limit_evicts_least_recently_opened_whole_studies_and_spares_pinned(
    remote: dict[str, Any], client: DicomWebClient, tmp_path: Path
) -> None:
    size = _study_size(remote, client, tmp_path)
    a, b, c = (remote["studies"][k]["uid"] for k in "ABC")
    # Room for two studies, not three.
    cache = RemoteCache(tmp_path / "data", limit_mb=(2.5 * size) / (1024 * 1024))
    for uid in (a, b):
        cache.open(client, uid)
        cache.release(uid)
    cache.open(client, a)  # A is now the most recently opened
    cache.release(a)
    cache.open(client, c)
    cache.release(c)
    held = {r["study_uid"] for r in cache.studies()}
    assert held == {a, c}, "B, the least recently opened, went whole"
    assert cache.total_bytes() <= cache.limit_bytes
    assert not cache.archive.query("STUDY", {"StudyInstanceUID": b}), "B's instances left the cache archive"
    assert not cache.archive.instances(study_uid=b)
    blobs = tmp_path / "data" / "remote-cache" / "archive" / "blobs"
    on_disk = sum(p.stat().st_size for p in blobs.rglob("*") if p.is_file())
    assert 0 < on_disk <= cache.limit_bytes, "the files went with the index rows"

    # Pinned: A and C stay open while B comes back; the cache goes over its limit rather than
    # evict what a viewer shows, and shrinks when they are released.
    cache.open(client, a)
    cache.open(client, c)
    cache.open(client, b)
    assert {r["study_uid"] for r in cache.studies()} == {a, b, c}
    assert all(r["pinned"] for r in cache.studies())
    cache.release(c)  # C is unpinned; LRU among unpinned → C goes
    assert {r["study_uid"] for r in cache.studies()} == {a, b}
    cache.release(a)
    cache.release(b)
    # A second pin holds as long as one viewer still has it.
    cache.open(client, a)
    cache.open(client, a)
    cache.release(a)
    assert cache.pinned(a)
    cache.release(a)
    assert not cache.pinned(a)
    assert cache.evict(limit_bytes=0) and cache.studies() == []
    cache.close()


def test_put_instance_and_keep_locally(remote: dict[str, Any], client: DicomWebClient, tmp_path: Path) -> None:
    proxy, b = remote["proxy"], remote["studies"]["B"]
    cache = RemoteCache(tmp_path, limit_mb=100)
    # What a prefetcher / progressive loader does: instance by instance, then complete.
    for data in client.iter_instances(b["uid"]):
        assert cache.put_instance(b["uid"], data, source="remote") is not None
        assert cache.put_instance(b["uid"], data) is None  # a duplicate is ignored
        assert not cache.has(b["uid"])
    cache.mark_complete(b["uid"])
    assert cache.has(b["uid"])
    with pytest.raises(CacheError):
        cache.put_instance(remote["studies"]["A"]["uid"], data)  # not an instance of A
    before = proxy.count
    cache.open(client, b["uid"])
    assert proxy.count == before
    cache.release(b["uid"])
    with Archive(tmp_path / "local") as local:
        results = cache.keep(local, b["uid"])
        assert [r.status for r in results] == ["stored"] * SLICES
        _pixels_equal(local, b)
    assert not cache.has(b["uid"]) and cache.studies() == []
    cache.close()


def test_encrypted_at_rest(
    remote: dict[str, Any], client: DicomWebClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cryptography")
    monkeypatch.delenv("HILUM_CACHE_KEY", raising=False)
    proxy, a = remote["proxy"], remote["studies"]["A"]
    cache = RemoteCache(tmp_path, limit_mb=100, encrypt=True)
    key_file = tmp_path / "remote-cache" / "cache.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    archive = cache.open(client, a["uid"])
    _pixels_equal(archive, a)
    session = Path(archive.data_dir)
    assert session.stat().st_mode & 0o777 == 0o700
    cache.release(a["uid"])
    assert not archive.instances(study_uid=a["uid"]), "the plaintext went with the release"
    cache.close()
    assert not session.exists(), "the private session folder went on close"

    # A crashed process's plaintext (its pid gone) is deleted by the next cache on the folder.
    gone_pid = _dead_pid()
    stale = tmp_path / "remote-cache" / "sessions" / f"{gone_pid}-stale"
    stale.mkdir(parents=True)
    (stale / "x.dcm").write_bytes(b"plaintext")
    RemoteCache(tmp_path, limit_mb=100, encrypt=True).close()
    assert not stale.exists()
    assert not any((tmp_path / "remote-cache" / "sessions").iterdir()), "no plaintext left after close"

    # Nothing under the cache folder carries the patient's name or the pixel bytes in clear.
    name = "Müller".encode("latin-1")
    some_pixels = next(iter(a["pixels"].values())).tobytes()[:64]
    files = [p for p in (tmp_path / "remote-cache").rglob("*") if p.is_file()]
    sealed = [p for p in files if p.suffix == ".bin"]
    assert len(sealed) == SLICES
    for p in sealed:
        blob = p.read_bytes()
        assert name not in blob and some_pixels not in blob and b"DICM" not in blob

    # Restart: same key from the key file, second open is local.
    cache = RemoteCache(tmp_path, limit_mb=100, encrypt=True)
    before = proxy.count
    _pixels_equal(cache.open(client, a["uid"]), a)
    assert proxy.count == before
    clear = cache.read(a["uid"])  # decrypted in memory: the probes above would have matched it
    assert len(clear) == SLICES and all(name in d and some_pixels in d for d in clear[:1])
    cache.release(a["uid"])
    with Archive(tmp_path / "local") as local:
        cache.keep(local, a["uid"])
        _pixels_equal(local, a)
    cache.close()

    # A key from the environment; a wrong key cannot read what another key sealed.
    other = tmp_path / "other"
    monkeypatch.setenv("HILUM_CACHE_KEY", base64.b64encode(os.urandom(32)).decode())
    cache = RemoteCache(other, limit_mb=100, encrypt=True)
    assert not (other / "remote-cache" / "cache.key").exists()
    cache.open(client, a["uid"])
    cache.release(a["uid"])
    cache.close()
    monkeypatch.setenv("HILUM_CACHE_KEY", base64.b64encode(os.urandom(32)).decode())
    cache = RemoteCache(other, limit_mb=100, encrypt=True)
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        cache.open(client, a["uid"])
    assert not cache.pinned(a["uid"])
    cache.close()


def test_settings_from_hilum_toml(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path, extra={"remote_cache": {"limit_mb": 512, "encrypt": False}})
    s = RemoteCacheSettings.from_config(cfg)
    assert (s.limit_mb, s.encrypt) == (512, False)
    assert RemoteCacheSettings.from_config(Config(data_dir=tmp_path)).limit_mb == 2048
    for bad in ({"limit_mb": -1}, {"limit_mb": "big"}, {"encrypt": "yes"}, {"limti_mb": 1}):
        with pytest.raises(ConfigError):
            RemoteCacheSettings.from_config(Config(data_dir=tmp_path, extra={"remote_cache": bad}))
    with RemoteCache.from_config(cfg) as cache:
        assert cache.limit_bytes == 512 * 1024 * 1024 and cache.root == tmp_path / "remote-cache"


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
def test_pin_while_a_progressive_loader_writes(
    remote: dict[str, Any], client: DicomWebClient, tmp_path: Path, encrypt: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A progressive viewer pins the study it streams (nothing fetched by the cache itself) and writes
    each full-fidelity instance with put_instance: the instances are in the viewing archive at once,
    the streamed study is never evicted for room, the older study is."""
    if encrypt:
        pytest.importorskip("cryptography")
        monkeypatch.delenv("HILUM_CACHE_KEY", raising=False)
    proxy = remote["proxy"]
    a, b = remote["studies"]["A"], remote["studies"]["B"]
    size = _study_size(remote, client, tmp_path)
    cache = RemoteCache(tmp_path / "data", limit_mb=(1.5 * size) / (1024 * 1024), encrypt=encrypt)
    cache.open(client, a["uid"])
    cache.release(a["uid"])
    before = proxy.count
    archive = cache.pin(b["uid"])
    assert proxy.count == before, "pin fetches nothing"
    for i, data in enumerate(client.iter_instances(b["uid"]), 1):
        cache.put_instance(b["uid"], data, source="remote")
        assert len(archive.instances(study_uid=b["uid"])) == i
    cache.mark_complete(b["uid"])
    assert [r["study_uid"] for r in cache.studies()] == [b["uid"]], "A went for room, B (pinned) stayed"
    _pixels_equal(archive, b)
    cache.release(b["uid"])
    if encrypt:
        assert not archive.instances(study_uid=b["uid"])
    before = proxy.count
    _pixels_equal(cache.open(client, b["uid"]), b)
    assert proxy.count == before
    cache.release(b["uid"])
    cache.close()


def test_switching_encryption_drops_the_other_modes_cache(
    remote: dict[str, Any], client: DicomWebClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("cryptography")
    monkeypatch.delenv("HILUM_CACHE_KEY", raising=False)
    a = remote["studies"]["A"]
    with RemoteCache(tmp_path, 100) as cache:
        cache.open(client, a["uid"])
        cache.release(a["uid"])
    assert (tmp_path / "remote-cache" / "archive").exists()
    with RemoteCache(tmp_path, 100, encrypt=True) as cache:
        assert not cache.has(a["uid"]) and cache.studies() == []
        assert not (tmp_path / "remote-cache" / "archive").exists(), "the plaintext cache went"
        _pixels_equal(cache.open(client, a["uid"]), a)
        cache.release(a["uid"])
    with RemoteCache(tmp_path, 100) as cache:
        assert cache.studies() == [] and not (tmp_path / "remote-cache" / "sealed").exists()
        _pixels_equal(cache.open(client, a["uid"]), a)
        cache.release(a["uid"])
    # A lower limit applies when the cache opens.
    with RemoteCache(tmp_path, 0.001) as cache:
        assert cache.studies() == []


def test_cli_list_and_clear(remote: dict[str, Any], client: DicomWebClient, tmp_path: Path) -> None:
    a, b = remote["studies"]["A"]["uid"], remote["studies"]["B"]["uid"]
    with RemoteCache(tmp_path, 100) as cache:
        for uid in (a, b):
            cache.open(client, uid)
            cache.release(uid)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")])}

    def hilum(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hilum", "--data", str(tmp_path), "remote-cache", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    out = hilum("list")
    assert out.returncode == 0, out.stderr
    assert "2 studies" in out.stdout and a in out.stdout and b in out.stdout and "complete" in out.stdout
    listed = json.loads(hilum("list", "--json").stdout)
    assert [s["study_uid"] for s in listed["studies"]] == [a, b] and listed["limit_bytes"] == 2048 * 1024 * 1024
    assert hilum("clear", "--study", "1.2.3").returncode != 0
    assert hilum("clear", "--study", a).returncode == 0
    with RemoteCache(tmp_path, 100) as cache:
        assert [s["study_uid"] for s in cache.studies()] == [b]
    assert hilum("clear").returncode == 0
    with RemoteCache(tmp_path, 100) as cache:
        assert cache.studies() == []


def test_one_shared_cache_per_data_folder(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path)
    one = RemoteCache.shared(cfg)
    two = RemoteCache.shared(Config(data_dir=tmp_path / "."))
    assert one is two
    one.close()
    assert RemoteCache.shared(cfg) is two  # still open: one close per caller
    two.close()
    two.close()
    three = RemoteCache.shared(cfg)
    assert three is not one
    three.close()
