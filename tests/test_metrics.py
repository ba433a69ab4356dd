"""``/metrics`` (issue 22): Prometheus text from a real node, counters moved by a real C-STORE (storescu) and a
STOW-RS, admin only (401/403), the anonymous case, one registry per node."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _ops import BIN, ENV, serving, write_ct
from hilum import __version__
from hilum.archive import Archive
from hilum.archive.metrics import NodeMetrics, metrics_for
from hilum.archive.users import UserStore

ADMIN, VIEWER = ("root", "admin-pass-1"), ("reader", "viewer-pass-1")


def scrape(port: int, auth: str | None = None, path: str = "/metrics") -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(), _headers(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), _headers(exc.headers)


def _headers(msg: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in msg.items():
        out[k.lower()] = f"{out[k.lower()]}, {v}" if k.lower() in out else v
    return out


def basic(user: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def stow(port: int, auth: str, path: Path) -> int:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    req = urllib.request.Request(f"http://127.0.0.1:{port}/dicom-web/studies", data=body, method="POST")
    req.add_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}')
    req.add_header("Accept", "application/dicom+json")
    req.add_header("Authorization", auth)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return int(resp.status)


@pytest.mark.skipif(not (BIN / "storescu").exists(), reason="DCMTK is needed")
def test_metrics_of_a_running_node(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Archive(data) as a:
        users = UserStore.of(a)
        users.add(ADMIN[0], "admin", ADMIN[1])
        users.add(VIEWER[0], "viewer", VIEWER[1])
        token = users.issue_token(ADMIN[0])
        viewer_token = users.issue_token(VIEWER[0])
    files = write_ct(tmp_path / "in", slices=3)
    extra = write_ct(tmp_path / "stow", slices=1, accession="OPS2")
    with serving(data) as node:
        store = subprocess.run([str(BIN / "storescu"), "-aec", node.aet, "127.0.0.1", str(node.dicom),
                                *map(str, files)], capture_output=True, env=ENV, timeout=60)  # fmt: skip
        assert store.returncode == 0, store.stderr
        refused = subprocess.run([str(BIN / "echoscu"), "-aec", "NOTME", "127.0.0.1", str(node.dicom)],
                                 capture_output=True, env=ENV, timeout=60)  # fmt: skip
        assert refused.returncode != 0
        assert stow(node.web, basic(ADMIN), extra[0]) == 200

        # who may scrape
        code, _, headers = scrape(node.web)
        assert code == 401 and "Basic" in headers.get("www-authenticate", "")
        assert scrape(node.web, basic((ADMIN[0], "wrong-password")))[0] == 401
        assert scrape(node.web, basic(VIEWER))[0] == 403
        assert scrape(node.web, f"Bearer {viewer_token}")[0] == 403
        code, text, headers = scrape(node.web, f"Bearer {token}")
        assert code == 200, text
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        code, text, _ = scrape(node.web, basic(ADMIN))
        assert code == 200
        rc, err = node.stop()
    assert rc == 0, err

    m = samples(text)
    assert m[("hilum_up", ())] == 1
    assert m[("hilum_build_info", (("version", __version__),))] == 1
    assert m[("hilum_instances_received_total", (("protocol", "dimse"),))] == 3
    assert m[("hilum_instances_received_total", (("protocol", "stow"),))] == 1
    assert m[("hilum_instances_received_total", (("protocol", "import"),))] == 0
    assert m[("hilum_instances_per_second", ())] == pytest.approx(4 / 60)
    assert m[("hilum_associations_total", (("result", "accepted"),))] == 1
    assert m[("hilum_associations_total", (("result", "rejected"),))] == 1
    assert m[("hilum_associations_active", ())] == 0
    assert m[("hilum_archive_instances", ())] == 4
    assert m[("hilum_archive_bytes", ())] == sum(p.stat().st_size for p in (data / "blobs").rglob("*") if p.is_file())
    for queue in ("forward", "report_outbox", "ai_jobs", "prefetch"):
        assert m[("hilum_queue_length", (("queue", queue),))] == 0
    assert m[("hilum_disk_free_bytes", (("path", str(data)),))] > 0
    assert m[("hilum_http_requests_total", (("method", "POST"), ("status", "200")))] == 1
    assert m[("hilum_http_requests_total", (("method", "GET"), ("status", "401")))] == 2
    assert m[("hilum_http_requests_total", (("method", "GET"), ("status", "403")))] == 2


def _asgi_get(app: Any, path: str, client: str) -> int:
    """One GET through the ASGI app from ``client`` (no HTTP client library needed)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "headers": [], "client": (client, 5000),
             "server": ("127.0.0.1", 8042), "root_path": ""}  # fmt: skip

    async def run() -> None:
        async with _lifespan(app):
            await app(scope, receive, send)

    asyncio.run(run())
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


class _lifespan:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


def test_anonymous_scrape_only_from_loopback_with_no_users(data_dir: Path) -> None:
    from hilum.dicomweb.server import create_app
    from hilum.dicomweb.settings import WebSettings

    with Archive(data_dir) as a:
        app = create_app(a, WebSettings(anonymous="read"), loopback=False)
        assert _asgi_get(app, "/metrics", "127.0.0.1") == 200  # no users at all, from this machine
        assert _asgi_get(app, "/metrics", "::1") == 200
        assert _asgi_get(app, "/metrics", "10.1.2.3") == 401  # anonymous reading open, metrics not
        UserStore.of(a).add("boss", "admin", "admin-pass-2")
        assert _asgi_get(app, "/metrics", "127.0.0.1") == 401  # users exist: credentials needed
        auto = create_app(a, WebSettings(), loopback=True)  # the default: anonymous only while no users
        assert _asgi_get(auto, "/metrics", "127.0.0.1") == 401


def test_one_registry_per_node_and_cached_counts(tmp_path: Path) -> None:
    files = write_ct(tmp_path / "in", slices=2)
    with Archive(tmp_path / "a") as a, Archive(tmp_path / "b") as b:
        ma, mb = metrics_for(a), metrics_for(b)
        assert ma is not mb and metrics_for(a) is ma and ma.registry is not mb.registry
        for f in files:
            assert a.ingest(f, origin="import").status == "stored"
        ma_now, mb_now = samples(ma.render().decode()), samples(mb.render().decode())
        assert ma_now[("hilum_instances_received_total", (("protocol", "import"),))] == 2
        assert mb_now[("hilum_instances_received_total", (("protocol", "import"),))] == 0
        assert (ma_now[("hilum_archive_instances", ())], mb_now[("hilum_archive_instances", ())]) == (2, 0)

        now = [100.0]
        cached = NodeMetrics(b, ttl=5, clock=lambda: now[0])
        try:
            assert samples(cached.render().decode())[("hilum_archive_instances", ())] == 0
            assert b.ingest(files[0], origin="dimse").status == "stored"
            now[0] += 4.9
            assert samples(cached.render().decode())[("hilum_archive_instances", ())] == 0, "counted once per ttl"
            now[0] += 0.2
            assert samples(cached.render().decode())[("hilum_archive_instances", ())] == 1
        finally:
            cached.close()


def test_open_associations_are_counted(data_dir: Path) -> None:
    from pynetdicom import AE

    from conftest import free_port
    from hilum.config import Config
    from hilum.node import Node

    cfg = Config(data_dir=data_dir, aet="GAUGE", dicom_port=free_port())
    with Archive(data_dir) as a, Node(cfg, a, only=["dimse"]):
        m = metrics_for(a)
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", cfg.dicom_port, ae_title="GAUGE")
        try:
            assert assoc.is_established
            now = samples(m.render().decode())
            assert now[("hilum_associations_active", ())] == 1
            assert now[("hilum_associations_total", (("result", "accepted"),))] == 1
        finally:
            assoc.release()
        for _ in range(100):  # the acceptor's thread ends just after the release
            if samples(m.render().decode())[("hilum_associations_active", ())] == 0:
                break
            time.sleep(0.05)
        assert samples(m.render().decode())[("hilum_associations_active", ())] == 0
    assert samples(m.render().decode())[("hilum_associations_active", ())] == 0, "a stopped service counts none"


def test_disk_free_of_folder_tiers(tmp_path: Path) -> None:
    from hilum.config import load_config

    data, cold = tmp_path / "data", tmp_path / "cold"
    cold.mkdir()
    data.mkdir()
    (data / "hilum.toml").write_text(f'[tiers.cold]\ntype = "filesystem"\npath = "{cold}"\n')
    a = Archive.from_config(load_config(data))
    try:
        m = NodeMetrics(a)
        try:
            now = samples(m.render().decode())
        finally:
            m.close()
    finally:
        a.close()
    assert now[("hilum_disk_free_bytes", (("path", str(data)),))] > 0
    assert now[("hilum_disk_free_bytes", (("path", str(cold)),))] > 0
