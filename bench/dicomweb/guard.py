"""What the DICOMweb connection guard and login throttling cost, measured in one run.

    python bench/dicomweb/guard.py [--studies 2000] [--slices 100] [--queries 200] [--logins 20]

Two servers over the same archive, requests alternating between them so that
machine load affects both alike:

* ``guarded`` — :class:`hilum.dicomweb.service.DicomWebService` as the node
  runs it: the connection guard (header/body/send timers, connection caps,
  per-request log budget) around uvicorn's h11 protocol;
* ``plain`` — the same Starlette application on uvicorn's own h11 protocol,
  nothing around it (what the node ran before issue 13).

Figures: QIDO-RS latency p50/p95 on one keep-alive connection (which
server runs a query first alternates: they share one archive and its
caches); QIDO-RS requests/s with 16 parallel keep-alive clients; WADO-RS retrieve of a CT
series (``transfer-syntax=*``), MB/s best of 4.  Then, on the guarded server,
the price of a login: a wrong password (one argon2id check), a refused
attempt while locked (429, no hash), a cached right password and a bearer
token, p50 each.  Nothing is asserted (DESIGN.md: benchmarks print ratios).
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvicorn  # noqa: E402
from run import Http, bench_wado, pct, queries, tiny_studies, write_ct  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.archive.users import UserStore  # noqa: E402
from hilum.config import Config  # noqa: E402
from hilum.dicomweb.server import create_app  # noqa: E402
from hilum.dicomweb.service import DicomWebService  # noqa: E402
from hilum.dicomweb.settings import WebSettings  # noqa: E402


class PlainServer:
    """The application on uvicorn's h11 protocol with uvicorn's defaults, in a thread."""

    def __init__(self, archive: Archive, settings: WebSettings):
        app = create_app(archive, settings, loopback=True)
        cfg = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="off",
                             http="h11", timeout_keep_alive=30)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("plain server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/dicom-web"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def alternating_qido(conns: dict[str, Http], qs: list[str]) -> dict[str, list[float]]:
    """Latencies per server; each query goes to both servers, who goes first alternating (both servers
    share one archive, so the second to run a query finds warmer caches)."""
    times: dict[str, list[float]] = {name: [] for name in conns}
    names = list(conns)
    for q in qs[:10]:
        for h in conns.values():
            h.get(q, "application/dicom+json")
    for i, q in enumerate(qs):
        for name in names if i % 2 == 0 else names[::-1]:
            status, _, dt = conns[name].get(q, "application/dicom+json")
            assert status == 200, (name, status, q)
            times[name].append(dt)
    return times


def parallel_qido(base: str, qs: list[str], clients: int = 16, per_client: int = 25) -> float:
    """Requests per second with ``clients`` keep-alive connections, each sending ``per_client`` queries."""
    barrier = threading.Barrier(clients)

    def run(i: int) -> None:
        h = Http(base)
        barrier.wait()
        for k in range(per_client):
            status, _, _ = h.get(qs[(i * per_client + k) % len(qs)], "application/dicom+json")
            assert status == 200, status

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    return clients * per_client / (time.perf_counter() - t)


def login_costs(base: str, token: str, n: int) -> dict[str, float]:
    """p50 seconds of: wrong password, locked attempt, cached right password, bearer token (one connection)."""
    def timed(auth: str, expect: int) -> float:
        h = Http(base)
        t = time.perf_counter()
        h.conn.request("GET", h.prefix + "/studies?limit=1", headers={"Authorization": auth})
        r = h.conn.getresponse()
        r.read()
        dt = time.perf_counter() - t
        assert r.status == expect, (r.status, expect)
        h.conn.close()
        return dt

    def basic(name: str, pw: str) -> str:
        return "Basic " + base64.b64encode(f"{name}:{pw}".encode()).decode()

    out = {}
    # Wrong passwords for distinct unknown names stay under the per-user limit; the address limit is
    # set high for this measurement (see main).
    out["wrong password (argon2id)"] = statistics.median(timed(basic(f"nobody{i}", "wrong"), 401) for i in range(n))
    for _ in range(5):
        timed(basic("victim", "wrong"), 401)
    out["locked attempt (429, no hash)"] = statistics.median(timed(basic("victim", "wrong"), 429) for _ in range(n))
    timed(basic("ada", "bench password"), 200)
    out["right password, cached"] = statistics.median(timed(basic("ada", "bench password"), 200) for _ in range(n))
    out["bearer token"] = statistics.median(timed(f"Bearer {token}", 200) for _ in range(n))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=2000)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--logins", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hilum-bench-guard-"))
    archive = Archive(tmp / "data")
    ct_paths, ct_study, ct_series = write_ct(tmp / "ct", args.slices)
    bad = [r for r in archive.ingest_many([*tiny_studies(args.studies), *ct_paths], workers=2) if not r.ok]
    assert not bad, bad[:3]
    settings = WebSettings(anonymous="read", login_address_failures=100000)
    guarded = DicomWebService(Config(data_dir=tmp / "data", web_port=0), archive, settings=settings)
    guarded.start()
    plain = PlainServer(archive, settings)
    try:
        servers = {"guarded": guarded.url, "plain": plain.url}
        qs = queries(args.queries)
        conns = {name: Http(url) for name, url in servers.items()}
        qido = alternating_qido(conns, qs)
        wado = bench_wado(conns, ct_study, ct_series)
        rates: dict[str, list[float]] = {name: [] for name in servers}
        for k in range(4):
            for name, url in (servers.items() if k % 2 == 0 else list(servers.items())[::-1]):
                rates[name].append(parallel_qido(url, qs))
        print(f"{'':34} {'guarded':>10} {'plain':>10} {'ratio':>7}")
        for label, get in (("QIDO p50 (ms)", lambda n: pct(qido[n], 50) * 1e3),
                           ("QIDO p95 (ms)", lambda n: pct(qido[n], 95) * 1e3),
                           ("QIDO 16 clients (req/s, median)", lambda n: statistics.median(rates[n])),
                           ("WADO-RS series (MB/s, best of 4)", lambda n: wado[n][1] / wado[n][0] / 1e6)):
            g, p = get("guarded"), get("plain")
            print(f"{label:34} {g:10.1f} {p:10.1f} {g / p:7.2f}")
        store = UserStore.of(archive)
        store.add("ada", "admin", "bench password")
        token = store.issue_token("ada")
        for label, seconds in login_costs(guarded.url, token, args.logins).items():
            print(f"login: {label:34} {seconds * 1e3:8.1f} ms")
    finally:
        plain.stop()
        guarded.stop()
        archive.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
