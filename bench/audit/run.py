"""Audit trail overhead (issue 21a): ingest and QIDO-RS with ``[audit] enabled`` true vs false, same run.

Two ``hilum serve`` nodes, identical but for ``[audit] enabled``, both running, each on a fresh data
folder per round; they take turns every ``--chunk`` files or queries, the first of each pair
alternating (so a warming disk or a busy neighbour on a shared machine hurts both alike):

1. **Ingest**: DCMTK ``storescu`` (one association, ``TCP_NODELAY=1``) sends the same files:
   ``--ct`` CT slices (512x512, 16 bit, in studies of 100) plus ``--tiny`` single-instance studies
   (8x8): with audit on, one "DICOM Instances Transferred" event per study per association, so the
   tiny studies are the worst case (an event per instance).  Instances/s, wall time of storescu.
2. **QIDO-RS**: ``--queries`` study-level searches (``PatientID=...``, anonymous on loopback) on one
   keep-alive HTTP connection, then the same from ``--clients`` threads at once: requests/s.  With
   audit on, every request is one "Query" event.

Throughput on a shared, loaded machine is noisy; the node process's CPU time per instance and per
request (user + system, from /proc: what the work costs, whatever the load) is the steadier figure.

After each node run the number of audit events is read back (a check that audit was on/off).
Prints per round and the medians, the ratio of the medians (on/off) and the median of the per-round
ratios; ``--json`` writes them.  Target (issue 21): audit on costs at most 5 %.

Run::

    .venv/bin/python bench/audit/run.py [--ct 300] [--tiny 300] [--queries 400] [--clients 4] [--repeat 5]
                                        [--workdir /tmp/hilum-bench-audit] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "bench" / "dimse"))
sys.path.insert(0, str(REPO / "app"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: _common
from _common import free_port, wait_port  # noqa: E402
from ctset import write_ct_set, write_tiny_studies  # noqa: E402

BIN = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}
PY = sys.executable


class Node:
    def __init__(self, data: Path, audit: bool):
        if data.exists():
            shutil.rmtree(data)
        data.mkdir(parents=True)
        (data / "hilum.toml").write_text(f"[audit]\nenabled = {'true' if audit else 'false'}\n", encoding="utf-8")
        self.data = data
        self.audit = audit
        self.dicom_port, self.web_port = free_port(), free_port()
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "hilum",
                "serve",
                "--data",
                str(data),
                "--aet",
                "HILUM",
                "--dicom-port",
                str(self.dicom_port),
                "--web-port",
                str(self.web_port),
                "--hl7-port",
                str(free_port()),
            ],
            env={**ENV, "PYTHONPATH": str(REPO / "app")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.dicom_port)
        wait_port(self.web_port)

    def cpu(self) -> float:
        """User + system CPU seconds the node process has used so far (all its threads), from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        self.proc.wait(60)

    def events(self) -> int:
        from hilum.archive import Archive

        with Archive(self.data) as a:
            return len(a.audit.search())


def storescu(node: Node, files: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [str(BIN / "storescu"), "-aec", "HILUM", "127.0.0.1", str(node.dicom_port), *files],
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def qido(node: Node, ids: list[str], clients: int) -> float:
    """Requests/s of QIDO-RS study searches by PatientID from ``clients`` threads (one connection each)."""
    import http.client

    per = [ids[i::clients] for i in range(clients)]
    errors: list[str] = []

    def run(batch: list[str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", node.web_port, timeout=30)
        for pid in batch:
            conn.request("GET", f"/dicom-web/studies?PatientID={pid}", headers={"Accept": "application/dicom+json"})
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or not body:
                errors.append(f"{r.status}")
        conn.close()

    threads = [threading.Thread(target=run, args=(b,)) for b in per]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"QIDO errors: {errors[:5]}")
    return len(ids) / took


def micro(n: int = 20000, batch: int = 100) -> dict[str, float]:
    """CPU microseconds (this process's CPU time: independent of other processes' load) per audit event
    recorded (the caller's share: a protocol thread) and written (the writer thread: hash + insert), beside
    one ``archive.query`` of a study by PatientID (the core of a QIDO-RS request)."""
    import tempfile

    from hilum.archive import Archive

    with tempfile.TemporaryDirectory() as d, Archive(d) as a:
        a.audit.flush_interval = 1e6  # no background writes during the timing
        record = write = 0.0
        for start in range(0, n, batch):  # batches of what the writer gathers in 0.5 s at ~200 requests/s
            t = time.process_time()
            for i in range(start, min(start + batch, n)):
                a.audit(
                    "Query",
                    action="E",
                    user="anonymous",
                    peer="127.0.0.1",
                    role="source",
                    patient_id=f"P{i}",
                    patient_name="Bench^Patient",
                    detail="QIDO-RS STUDY PatientID=P1 -> 1 match",
                )
            t1 = time.process_time()
            a.audit.flush()
            record += t1 - t
            write += time.process_time() - t1
        record, write = 1e6 * record / n, 1e6 * write / n
        t = time.process_time()
        for _ in range(500):
            a.query("STUDY", {"PatientID": "BENCH001"})
        query = 1e6 * (time.process_time() - t) / 500
        assert a.audit.verify().ok
    return {"record_us": record, "write_us": write, "query_us": query}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", type=int, default=300, help="CT slices (512x512) in studies of 100")
    ap.add_argument("--tiny", type=int, default=300, help="single-instance studies (worst case: an event each)")
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=50, help="files or queries per turn (the nodes alternate)")
    ap.add_argument("--workdir", default="/tmp/hilum-bench-audit")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--micro-only", action="store_true", help="only the in-process cost per event")
    args = ap.parse_args()
    if args.micro_only:
        print(json.dumps(micro(), indent=1))
        return 0
    work = Path(args.workdir)
    ct_dir, tiny_dir = work / f"ct{args.ct}", work / f"tiny{args.tiny}"
    if not ct_dir.exists():
        write_ct_set(ct_dir, args.ct, series_size=100)
    if not tiny_dir.exists():
        write_tiny_studies(tiny_dir, args.tiny)
    ct_files = sorted(str(p) for p in ct_dir.rglob("*.dcm"))
    tiny_files = sorted(str(p) for p in tiny_dir.rglob("*.dcm"))
    import pydicom

    ids = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).PatientID) for f in tiny_files})
    queries = [ids[i % len(ids)] for i in range(args.queries)]
    keys = ("ct", "tiny", "qido1", "qidoN", "cpu_ct", "cpu_tiny", "cpu_qido")
    results: dict[str, dict[str, list[float]]] = {m: {k: [] for k in keys} for m in ("on", "off")}
    events: dict[str, list[int]] = {"on": [], "off": []}
    print(
        f"{len(ct_files)} CT slices, {len(tiny_files)} tiny studies, {len(queries)} QIDO queries; {args.repeat} rounds",
        flush=True,
    )
    chunk = args.chunk
    for r in range(args.repeat):
        nodes = {mode: Node(work / f"data-{mode}", audit=mode == "on") for mode in ("on", "off")}
        wall = {m: {"ct": 0.0, "tiny": 0.0, "qido1": 0.0, "qidoN": 0.0} for m in nodes}
        cpu = {m: {"ct": 0.0, "tiny": 0.0, "qido": 0.0} for m in nodes}
        try:
            # the two nodes take turns chunk by chunk, the first of each pair alternating: a load that
            # comes and goes on a shared machine falls on both
            steps: list[tuple[str, str, list[str]]] = []
            steps += [("ct", "ct", ct_files[i : i + chunk]) for i in range(0, len(ct_files), chunk)]
            steps += [("tiny", "tiny", tiny_files[i : i + chunk]) for i in range(0, len(tiny_files), chunk)]
            steps += [("qido1", "qido", queries[i : i + chunk]) for i in range(0, len(queries), chunk)]
            steps += [
                ("qidoN", "qido", queries[i : i + chunk * args.clients])
                for i in range(0, len(queries), chunk * args.clients)
            ]
            for j, (phase, cpu_key, items) in enumerate(steps):
                for mode in ("on", "off") if (j + r) % 2 == 0 else ("off", "on"):
                    node = nodes[mode]
                    c0 = node.cpu()
                    if phase in ("ct", "tiny"):
                        wall[mode][phase] += storescu(node, items)
                    else:
                        clients = 1 if phase == "qido1" else args.clients
                        wall[mode][phase] += len(items) / qido(node, items, clients)
                    time.sleep(0.7)  # the audit writer's batch (every 0.5 s) is part of the cost
                    cpu[mode][cpu_key] += node.cpu() - c0
        finally:
            for node in nodes.values():
                node.stop()
        for mode, node in nodes.items():
            n = node.events()
            events[mode].append(n)
            w, c = wall[mode], cpu[mode]
            row = {
                "ct": len(ct_files) / w["ct"],
                "tiny": len(tiny_files) / w["tiny"],
                "qido1": len(queries) / w["qido1"],
                "qidoN": len(queries) / w["qidoN"],
                "cpu_ct": 1e3 * c["ct"] / len(ct_files),
                "cpu_tiny": 1e3 * c["tiny"] / len(tiny_files),
                "cpu_qido": 1e3 * c["qido"] / (2 * len(queries)),
            }
            for k, v in row.items():
                results[mode][k].append(v)
            print(
                f"round {r + 1} audit {mode:3}: CT {row['ct']:7.1f} inst/s ({row['cpu_ct']:.2f} ms CPU)  tiny "
                f"{row['tiny']:7.1f} inst/s ({row['cpu_tiny']:.2f} ms CPU)  QIDO 1 client {row['qido1']:7.1f} "
                f"req/s  {args.clients} clients {row['qidoN']:7.1f} req/s ({row['cpu_qido']:.2f} ms CPU/request)"
                f"  ({n} audit events)",
                flush=True,
            )
    summary: dict[str, Any] = {
        "rounds": args.repeat,
        "ct": len(ct_files),
        "tiny": len(tiny_files),
        "queries": len(queries),
        "clients": args.clients,
        "events": events,
    }
    print("\nmedians (audit on / off; ratio of medians; median of per-round ratios):")
    for k, label, unit in (
        ("ct", "ingest CT 512x512", "inst/s"),
        ("tiny", "ingest tiny studies", "inst/s"),
        ("qido1", "QIDO-RS 1 client", "req/s"),
        ("qidoN", f"QIDO-RS {args.clients} clients", "req/s"),
        ("cpu_ct", "node CPU per CT instance", "ms"),
        ("cpu_tiny", "node CPU per tiny study", "ms"),
        ("cpu_qido", "node CPU per QIDO request", "ms"),
    ):
        on, off = statistics.median(results["on"][k]), statistics.median(results["off"][k])
        per_round = statistics.median(a / b for a, b in zip(results["on"][k], results["off"][k], strict=True))
        summary[k] = {
            "on": results["on"][k],
            "off": results["off"][k],
            "median_on": on,
            "median_off": off,
            "ratio": on / off,
            "median_round_ratio": per_round,
        }
        print(f"  {label:24} {on:8.1f} / {off:8.1f} {unit}   ratio {on / off:.3f}   per-round {per_round:.3f}")
    m = micro()
    summary["micro"] = m
    print(
        f"\nin-process CPU per audit event: record {m['record_us']:.1f} us (the request's thread) + write "
        f"{m['write_us']:.1f} us (the writer thread) = {m['record_us'] + m['write_us']:.1f} us; one "
        f"archive.query of a study by PatientID: {m['query_us']:.1f} us"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
