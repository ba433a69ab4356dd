"""Operations figures (issue 22, Part B): ``hilum selftest`` wall time, ``hilum status`` time and ``/metrics``
scrape time with 10,000 instances in the index.

1. **selftest** — ``hilum selftest --json`` in a subprocess, ``--repeat`` times: wall time of the process
   (what an installer or a bundle test waits for) and the checks' own times.  ``hilum --version`` is timed the
   same way: the start-up every verb pays (Python, the verb discovery).
2. **index of N instances** — ``--instances`` CT slices (16x16, 250 per series) generated and imported through
   the one ingest (``hilum import``) into a fresh data folder, with an admin user and a bearer token.
3. **status** — ``hilum status --json`` against ``hilum serve`` running on that folder (``--repeat`` times):
   process wall time, and the in-process work (:func:`hilum.cli.status.node_state` + ``archive_state``).
4. **scrape** — ``GET /metrics`` with the bearer token on one keep-alive connection: the first scrape (the
   index counted) and ``--scrapes`` more within the cache's 5 s (cached); and the uncached count alone
   (:func:`hilum.archive.health.figures`) in-process.

Medians are printed; ``--json`` writes everything.  Run::

    .venv/bin/python bench/ops/run.py [--instances 10000] [--repeat 5] [--scrapes 20] [--workdir /tmp/hilum-bench-ops]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
APP = REPO / "app"
sys.path.insert(0, str(APP))
ENV = {**os.environ, "PYTHONPATH": str(APP), "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed_run(args: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hilum", *args], capture_output=True, text=True, env=ENV, timeout=600)
    return time.perf_counter() - t0, proc


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def bench_selftest(repeat: int) -> dict[str, Any]:
    walls, checks = [], {}
    for _ in range(repeat):
        wall, proc = timed_run(["selftest", "--json"])
        if proc.returncode != 0:
            raise SystemExit(f"selftest failed: {proc.stdout}{proc.stderr}")
        walls.append(wall)
        for c in json.loads(proc.stdout)["checks"]:
            checks.setdefault(c["name"], []).append(c["seconds"])
    version = [timed_run(["--version"])[0] for _ in range(repeat)]
    return {"wall_s": walls, "wall_median_s": median(walls), "version_median_s": median(version),
            "checks_median_s": {k: median(v) for k, v in checks.items()}}  # fmt: skip


def fill(data: Path, work: Path, n: int) -> dict[str, Any]:
    from hilum.archive import Archive
    from hilum.archive.users import UserStore
    from hilum.dicom.generator import write_ct_set

    src = work / "ct"
    t0 = time.perf_counter()
    write_ct_set(src, n, rows=16, columns=16, series_size=250, patients=20)
    generated = time.perf_counter() - t0
    wall, proc = timed_run(["import", "--data", str(data), "--json", str(src)])
    if proc.returncode != 0:
        raise SystemExit(f"import failed: {proc.stderr}")
    shutil.rmtree(src)
    with Archive(data) as a:
        users = UserStore.of(a)
        users.add("bench", "admin", "bench-admin-pw")
        token = users.issue_token("bench")
        count = a.stats()["instances"]
    return {"instances": count, "generate_s": generated, "import_s": wall, "token": token}


def bench_node(data: Path, token: str, repeat: int, scrapes: int) -> dict[str, Any]:
    from hilum.archive.health import figures, open_index
    from hilum.cli.status import archive_state, node_state
    from hilum.config import load_config

    dicom, web, hl7 = free_port(), free_port(), free_port()
    serve = subprocess.Popen([sys.executable, "-m", "hilum", "serve", "--data", str(data), "--dicom-port", str(dicom),
                              "--web-port", str(web), "--hl7-port", str(hl7)], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (data / "run" / "node.json").exists():
            if serve.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("hilum serve did not start")
            time.sleep(0.1)
        status_walls = []
        for _ in range(repeat):
            wall, proc = timed_run(["status", "--data", str(data), "--json"])
            if proc.returncode != 0:
                raise SystemExit(f"status says down: {proc.stdout}")
            status_walls.append(wall)
        cfg = load_config(data)
        inproc = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            node_state(data, 2.0)
            archive_state(cfg)
            inproc.append(time.perf_counter() - t0)
        conn = http.client.HTTPConnection("127.0.0.1", web, timeout=60)
        headers = {"Authorization": f"Bearer {token}"}

        def scrape() -> float:
            t0 = time.perf_counter()
            conn.request("GET", "/metrics", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or b"hilum_archive_instances" not in body:
                raise SystemExit(f"scrape failed: {resp.status} {body[:200]!r}")
            return time.perf_counter() - t0

        time.sleep(5.5)  # let the cache of any earlier count expire
        first = scrape()
        cached = [scrape() for _ in range(scrapes)]
        engine = open_index(data)
        assert engine is not None
        counts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            figures(engine)
            counts.append(time.perf_counter() - t0)
        engine.dispose()
        conn.close()
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
    return {"status_wall_s": status_walls, "status_wall_median_s": median(status_walls),
            "status_inprocess_median_s": median(inproc), "scrape_first_s": first,
            "scrape_cached_median_s": median(cached), "count_uncached_median_s": median(counts)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--scrapes", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hilum-bench-ops"))
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    a.workdir.mkdir(parents=True)
    out: dict[str, Any] = {"selftest": bench_selftest(a.repeat)}
    s = out["selftest"]
    print(f"selftest: wall {s['wall_median_s']:.2f} s (median of {a.repeat}; hilum --version "
          f"{s['version_median_s']:.2f} s); checks: "
          + ", ".join(f"{k} {v:.2f}" for k, v in s["checks_median_s"].items()), flush=True)  # fmt: skip
    data = a.workdir / "data"
    filled = fill(data, a.workdir, a.instances)
    token = filled.pop("token")
    out["index"] = filled
    print(f"index: {filled['instances']} instances (generated in {filled['generate_s']:.1f} s, imported in "
          f"{filled['import_s']:.1f} s)", flush=True)  # fmt: skip
    n = bench_node(data, token, a.repeat, a.scrapes)
    out["node"] = n
    print(
        f"status: {n['status_wall_median_s']:.2f} s per hilum status --json (median of {a.repeat}), "
        f"{n['status_inprocess_median_s'] * 1000:.1f} ms of it the checks and counts",
        flush=True,
    )
    print(
        f"scrape: first {n['scrape_first_s'] * 1000:.1f} ms (index counted), cached "
        f"{n['scrape_cached_median_s'] * 1000:.1f} ms (median of {a.scrapes}); the count alone "
        f"{n['count_uncached_median_s'] * 1000:.1f} ms",
        flush=True,
    )
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
