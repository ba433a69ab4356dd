"""DIMSE benchmark: C-STORE ingest rate and C-FIND latency, Hilum vs DCMTK vs Orthanc.

What it measures (issue 3, "Measure"), all on this machine in one run:

1. **Ingest**: DCMTK ``storescu`` (one association) sends the same generated
   2,000-instance CT set (512x512, 16 bit) to
   - ``hilum serve`` (validates, writes the blob, fsyncs, indexes) on its fast
     DIMSE engine (``[dimse] engine = "fast"``),
   - ``hilum serve`` on pynetdicom's own engine (``engine = "pynetdicom"``:
     the gain of the fast engine, reproducible),
   - optionally ``hilum serve`` from another checkout (``--baseline-app
     DIR/app``, e.g. a ``git worktree`` of an older commit: before/after),
   - DCMTK ``storescp`` (writes files, indexes nothing: the floor),
   - Orthanc (Debian package, default SQLite index, its own storage folder);
   ``--repeat N`` rounds, the servers in a rotating order each round;
   the median instances/s of each, the ratios of the medians, and the median
   of the ratios measured within one round (steadier on a loaded machine)
   are printed, and the CPU time each server process used per instance
   (user + system, from /proc: what the work costs, whatever the load).
2. **C-FIND**: the same 10,000 single-instance studies are loaded into Hilum
   (through ``Archive.ingest_many``, the one way in; served by both engines,
   each from its own copy of the data folder) and Orthanc (REST
   ``POST /instances``); then DCMTK ``findscu`` runs the same study-level
   queries (names with wildcards, IDs, accession numbers, date ranges,
   modality + date) against each, alternating, and p50/p95 latencies are
   printed (each includes starting ``findscu``, the same for both).

3. **C-FIND on a held association** (``--held-studies 5000,20000``): the first
   N of the tiny studies plus one study of 500 images, loaded into Hilum
   (``ingest_many``; ``--baseline-app`` too, by its own code) and Orthanc
   (REST); then ``--held-queries`` study-level (the findscu mix) and
   image-level (by study, series or instance UID) queries over ONE
   association per server, servers alternating query by query, timed from
   two clients: pynetdicom's SCU (what the issue asks for; it costs ~0.3 ms
   per match itself and polls its socket every millisecond) and
   ``rawscu.RawFindSCU`` (a bare socket, the server's own latency); every
   answer is compared across servers and clients.  Then the 500-match
   image-level answer, streamed from both clients and from DCMTK
   ``findscu --repeat`` (one association, a client in C), with the server
   process's CPU time per query.

Every peer gets ``TCP_NODELAY=1`` in its environment (DCMTK and Orthanc honour
it; Hilum sets it on its own sockets), see ../../../shared/ENVIRONMENT.md.

Run (about 5 minutes; the data sets are generated once and cached in WORKDIR)::

    .venv/bin/python bench/dimse/run.py [--instances 2000] [--studies 10000] [--queries 100]
                                        [--senders 1,4] [--repeat 1] [--baseline-app DIR/app]
                                        [--skip-peers] [--workdir /tmp/hilum-bench-dimse] [--json out.json]
                                        [--held-studies 5000,20000] [--held-queries 200] [--held-pynetdicom]
                                        [--skip-ingest] [--skip-find]

Needs DCMTK (``/usr/bin/storescu``, ``storescp``, ``findscu``) and Orthanc
(``/usr/sbin/Orthanc`` or on PATH).  Nothing here is a test: figures vary with
the machine and its load; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "app"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: _common
from _common import free_port, wait_port  # noqa: E402
from ctset import write_ct_set, write_tiny_series, write_tiny_studies  # noqa: E402

BIN = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}
PY = sys.executable


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or (("/usr/sbin/Orthanc") if Path("/usr/sbin/Orthanc").exists() else None)


# ------------------------------------------------------------------ servers


class Server:
    name = "?"
    aet = "?"
    port = 0
    proc: subprocess.Popen[bytes] | None = None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time the server process has used so far (all its threads), from /proc."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


class StoreSCP(Server):
    name, aet = "DCMTK storescp", "STORESCP"

    def __init__(self, root: Path):
        self.out = root / "storescp"
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir(parents=True)
        self.port = free_port()
        self.proc = subprocess.Popen([str(BIN / "storescp"), "-aet", self.aet, "-od", str(self.out), "+xa",
                                      str(self.port)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def count(self) -> int:
        return sum(1 for _ in self.out.iterdir())


class Orthanc(Server):
    name, aet = "Orthanc", "ORTHANC"

    def __init__(self, root: Path, binary: str):
        self.root = root / "orthanc"
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.port, self.http = free_port(), free_port()
        cfg = {
            "Name": "HilumBench", "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"), "DicomAet": self.aet, "DicomPort": self.port,
            "HttpPort": self.http, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True,
            "Plugins": [],
        }
        (self.root / "orthanc.json").write_text(json.dumps(cfg))
        self.proc = subprocess.Popen([binary, str(self.root / "orthanc.json")], env=ENV, cwd=self.root,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.rest("/system")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def rest(self, path: str, data: bytes | None = None) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=data,
                                     headers={"Content-Type": "application/dicom"} if data else {})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"null")

    def count(self) -> int:
        return int(self.rest("/statistics")["CountInstances"])


class Hilum(Server):
    name, aet = "Hilum (hilum serve)", "HILUM"

    def __init__(self, data: Path, engine: str = "fast", app: Path = REPO / "app", label: str | None = None):
        self.data = data
        self.port = free_port()
        self.name = label or f"Hilum ({engine} engine)"
        self.proc = subprocess.Popen(
            [PY, "-m", "hilum", "serve", "--data", str(data), "--aet", self.aet, "--dicom-port", str(self.port),
             "--web-port", str(free_port()), "--hl7-port", str(free_port())],
            env={**ENV, "PYTHONPATH": str(app), "HILUM_DIMSE_ENGINE": engine},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def count(self) -> int:
        from hilum.archive import Archive

        with Archive(self.data) as a:
            return int(a.stats()["instances"])


# ------------------------------------------------------------------ ingest


def storescu(server: Server, folder: Path, senders: int = 1) -> float:
    """Send every file under ``folder`` with ``senders`` storescu processes (one association each)."""
    files = sorted(str(p) for p in folder.rglob("*.dcm"))
    start = time.perf_counter()
    procs = [subprocess.Popen([str(BIN / "storescu"), "-aec", server.aet, "127.0.0.1", str(server.port),
                               *files[i::senders]], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for i in range(senders)]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - start
    if any(codes):
        raise RuntimeError(f"storescu to {server.name} failed: exit codes {codes}")
    return elapsed


def ingest_servers(scratch: Path, orthanc: str | None, baseline_app: Path | None,
                   peers: bool = True) -> list[tuple[str, Any]]:
    """(key, factory) of every server the ingest is measured against."""
    servers: list[tuple[str, Any]] = []
    if peers:
        servers.append(("storescp", lambda: StoreSCP(scratch)))
        if orthanc:
            servers.append(("orthanc", lambda: Orthanc(scratch, orthanc)))
    servers.append(("hilum", lambda: Hilum(scratch / "hilum", "fast")))
    servers.append(("hilum_pynetdicom", lambda: Hilum(scratch / "hilum-pynetdicom", "pynetdicom")))
    if baseline_app is not None:
        servers.append(("hilum_baseline", lambda: Hilum(scratch / "hilum-baseline", "fast", baseline_app,
                                                         label=f"Hilum baseline ({baseline_app.parent.name})")))
    return servers


def bench_ingest(work: Path, ct: Path, n: int, orthanc: str | None, senders: int = 1, repeat: int = 1,
                 baseline_app: Path | None = None, peers: bool = True) -> dict[str, Any]:
    """Median instances/s of each server over ``repeat`` rounds (each server once per round, the
    order rotating, a fresh data folder each time)."""
    runs: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    names: dict[str, str] = {}
    for round_ in range(repeat):
        scratch = Path(tempfile.mkdtemp(prefix="ingest-", dir=work))
        try:
            servers = ingest_servers(scratch, orthanc, baseline_app, peers)
            k = round_ % len(servers)
            for key, make in servers[k:] + servers[:k]:
                server = make()
                try:
                    cpu_before = server.cpu_seconds()
                    seconds = storescu(server, ct, senders)
                    cpu_after = server.cpu_seconds()
                    if cpu_before is not None and cpu_after is not None:
                        cpu.setdefault(key, []).append((cpu_after - cpu_before) / n * 1000)
                    if key.startswith("hilum"):
                        server.stop()  # Hilum's count is read from its archive once the node is down
                    stored = server.count()
                finally:
                    server.stop()
                if stored != n:
                    raise RuntimeError(f"{server.name} holds {stored} instances, expected {n}")
                runs.setdefault(key, []).append(n / seconds)
                names[key] = server.name
                print(f"  round {round_ + 1}: {server.name:32s} {n} instances in {seconds:6.1f} s = "
                      f"{n / seconds:7.1f} instances/s", flush=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    rates = {key: statistics.median(v) for key, v in runs.items()}
    cpu_ms = {key: statistics.median(v) for key, v in cpu.items()}
    for key, rate in rates.items():
        print(f"  median {names[key]:32s} {rate:7.1f} instances/s, "
              f"{cpu_ms.get(key, float('nan')):5.2f} ms CPU per instance  (runs: "
              f"{', '.join(f'{r:.1f}' for r in runs[key])})", flush=True)
    # The load of a shared machine drifts between rounds: the ratio of two servers measured in the
    # same round, then the median of those ratios, is steadier than the ratio of the medians.
    paired = {}
    for other in ("hilum_pynetdicom", "hilum_baseline"):
        if other in runs:
            ratios = [a / b for a, b in zip(runs["hilum"], runs[other], strict=True)]
            paired[other] = {"median": statistics.median(ratios), "rounds": ratios}
            print(f"  Hilum fast / {names[other]}, same round: median {statistics.median(ratios):.2f}  "
                  f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
            if "hilum" in cpu_ms and other in cpu_ms:
                print(f"  CPU per instance, Hilum fast / {names[other]}: {cpu_ms['hilum'] / cpu_ms[other]:.2f}",
                      flush=True)
    return {"median": rates, "runs": runs, "paired_ratio": paired, "cpu_ms_per_instance": cpu_ms, "cpu_runs": cpu}


# ------------------------------------------------------------------ C-FIND


def queries(n: int, seed: int = 3) -> list[list[str]]:
    """Study-level findscu key sets over the tiny studies (see ctset.write_tiny_studies)."""
    rnd = random.Random(seed)
    out = []
    ret = ["-k", "StudyInstanceUID", "-k", "PatientName", "-k", "PatientID", "-k", "StudyDate",
           "-k", "AccessionNumber", "-k", "ModalitiesInStudy", "-k", "StudyDescription"]
    for i in range(n):
        kind = i % 5
        if kind == 0:
            keys = [f"PatientName={'ABCDEFGHIJKLMNOPQRST'[rnd.randrange(20)]}{rnd.randrange(97):02d}*"]
        elif kind == 1:
            keys = [f"PatientID=P{rnd.randrange(5000):05d}"]
        elif kind == 2:
            keys = [f"AccessionNumber=ACC{rnd.randrange(10000):06d}"]
        elif kind == 3:
            y, m = 2010 + rnd.randrange(16), 1 + rnd.randrange(12)
            keys = [f"StudyDate={y}{m:02d}01-{y}{m:02d}07"]
        else:
            y = 2010 + rnd.randrange(16)
            keys = [f"StudyDate={y}0101-{y}0331", "ModalitiesInStudy=MR"]
        args = ["-k", "QueryRetrieveLevel=STUDY"]
        for k in keys:
            args += ["-k", k]
        for j in range(0, len(ret), 2):
            if not any(k.startswith(ret[j + 1] + "=") for k in keys):
                args += ret[j : j + 2]
        out.append(args)
    return out


def findscu(server: Server, keys: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "findscu"), "-v", "-S", "-aec", server.aet, *keys, "127.0.0.1",
                           str(server.port)], env=ENV, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    matches = (proc.stdout + proc.stderr).count("(Pending)")
    return elapsed, matches


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def bench_find(work: Path, tiny: Path, n_studies: int, n_queries: int, orthanc: str | None,
               baseline_app: Path | None = None) -> dict[str, Any]:
    from hilum.archive import Archive

    scratch = Path(tempfile.mkdtemp(prefix="find-", dir=work))
    files = sorted(tiny.glob("*.dcm"))
    servers: list[Server] = []
    try:
        t = time.perf_counter()
        with Archive(scratch / "hilum") as a:
            res = a.ingest_many(files, origin="import")
        assert sum(r.ok for r in res) == n_studies, "Hilum did not take every tiny study"
        print(f"  loaded {n_studies} studies into Hilum (ingest_many) in {time.perf_counter() - t:.1f} s", flush=True)
        shutil.copytree(scratch / "hilum", scratch / "hilum-pynetdicom")  # the same index, its own copy
        servers.append(Hilum(scratch / "hilum", "fast"))
        servers.append(Hilum(scratch / "hilum-pynetdicom", "pynetdicom"))
        if baseline_app is not None:
            # Its own index, written by its own code (an older schema cannot open a newer database).
            load = ("import sys; from pathlib import Path; from hilum.archive import Archive\n"
                    "with Archive(Path(sys.argv[1])) as a:\n"
                    "    assert all(r.ok for r in a.ingest_many(sorted(Path(sys.argv[2]).glob('*.dcm')), origin='import'))")
            subprocess.run([PY, "-c", load, str(scratch / "hilum-baseline"), str(tiny)],
                           env={**ENV, "PYTHONPATH": str(baseline_app)}, check=True)
            servers.append(Hilum(scratch / "hilum-baseline", "fast", baseline_app,
                                 label=f"Hilum baseline ({baseline_app.parent.name})"))
        orth = None
        if orthanc:
            orth = Orthanc(scratch, orthanc)
            servers.append(orth)
            t = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda p: orth.rest("/instances", p.read_bytes()), files))
            assert orth.count() == n_studies
            print(f"  loaded {n_studies} studies into Orthanc (REST) in {time.perf_counter() - t:.1f} s", flush=True)
        times: dict[str, list[float]] = {s.name: [] for s in servers}
        mismatches = 0
        qs = queries(n_queries)
        for s in servers:  # warm-up: first association, caches
            findscu(s, qs[0])
        for i, q in enumerate(qs):
            order = servers if i % 2 == 0 else list(reversed(servers))
            counts = []
            for s in order:
                elapsed, matches = findscu(s, q)
                times[s.name].append(elapsed)
                counts.append(matches)
            if len(set(counts)) > 1:
                mismatches += 1
        out: dict[str, Any] = {"queries": n_queries, "mismatched_answers": mismatches}
        for s in servers:
            v = times[s.name]
            out[s.name] = {"p50_ms": pct(v, 50) * 1000, "p95_ms": pct(v, 95) * 1000,
                           "mean_ms": statistics.fmean(v) * 1000}
            print(f"  {s.name:24s} C-FIND p50 {out[s.name]['p50_ms']:6.1f} ms   p95 {out[s.name]['p95_ms']:6.1f} ms",
                  flush=True)
        return out
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(scratch, ignore_errors=True)


# ------------------------------------------------------------------ C-FIND on a held association

STUDY_RETURN = ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber",
                "ModalitiesInStudy", "StudyDescription")
IMAGE_RETURN = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber")
MANY = 500  # instances of the one big study: the streamed response


def held_queries(level: str, n: int, n_studies: int, seed: int = 5) -> list[dict[str, str]]:
    """``n`` identifiers as {keyword: value}: the findscu study-level mix, or image-level lookups
    by study, series or instance UID (Orthanc answers those from its index alone)."""
    from ctset import ROOT

    if level == "STUDY":
        out = []
        for args in queries(n, seed):
            keys = dict(a.split("=", 1) if "=" in a else (a, "") for a in args[1::2])
            out.append(keys)
        return out
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        j = rnd.randrange(n_studies) + 1
        keys = {"QueryRetrieveLevel": "IMAGE", **{k: "" for k in IMAGE_RETURN}}
        uid = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")[i % 3]
        keys[uid] = f"{ROOT}9.{j}.{1 + i % 3}"
        out.append(keys)
    return out


def identifier(keys: dict[str, str]) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


class HeldSCU:
    """One pynetdicom association per server, kept open for every query (TCP_NODELAY set)."""

    def __init__(self, server: Server):
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

        self.model = StudyRootQueryRetrieveInformationModelFind
        ae = AE(ae_title="BENCHSCU")
        ae.add_requested_context(self.model)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 300

        def nodelay(event: Any) -> None:
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        self.assoc = ae.associate("127.0.0.1", server.port, ae_title=server.aet,
                                  evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        if not self.assoc.is_established:
            raise RuntimeError(f"no association with {server.name}")

    def find(self, keys: dict[str, str], ret: tuple[str, ...]) -> tuple[float, list[tuple[str, ...]]]:
        """(seconds, the returned keys of every match)."""
        ds = identifier(keys)
        start = time.perf_counter()
        rows = []
        for status, ident in self.assoc.send_c_find(ds, self.model):
            if status is None or "Status" not in status:
                raise RuntimeError("C-FIND: no response")
            if status.Status in (0xFF00, 0xFF01):
                rows.append(ident)
            elif status.Status != 0:
                raise RuntimeError(f"C-FIND failed: 0x{status.Status:04X}")
        elapsed = time.perf_counter() - start
        return elapsed, sorted(tuple(str(r.get(k, "") or "") for k in ret) for r in rows)

    def close(self) -> None:
        self.assoc.release()


class RawHeld:
    """The same queries from :class:`rawscu.RawFindSCU` (one held association, responses read
    straight off the socket and decoded after the clock stops): the server's own latency."""

    def __init__(self, server: Server):
        from rawscu import RawFindSCU

        self.scu = RawFindSCU("127.0.0.1", server.port, server.aet, "1.2.840.10008.5.1.4.1.2.2.1")

    def find(self, keys: dict[str, str], ret: tuple[str, ...]) -> tuple[float, list[tuple[str, ...]]]:
        from rawscu import decode, encode

        data = encode(identifier(keys))
        start = time.perf_counter()
        matches = self.scu.find(data)
        elapsed = time.perf_counter() - start
        rows = [decode(m) for m in matches]
        return elapsed, sorted(tuple(str(r.get(k, "") or "") for k in ret) for r in rows)

    def close(self) -> None:
        self.scu.close()


def findscu_repeat(server: Server, keys: dict[str, str], n: int) -> float:
    """Seconds per query of ``keys`` sent ``n`` times by one findscu on one association (the
    time of a single query, process start and association included, subtracted)."""
    args = [str(BIN / "findscu"), "-q", "-S", "-aec", server.aet]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}" if v else k]
    runs = []
    for repeat in (1, n + 1):
        start = time.perf_counter()
        subprocess.run([*args, "--repeat", str(repeat), "127.0.0.1", str(server.port)], env=ENV, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs.append(time.perf_counter() - start)
    return (runs[1] - runs[0]) / n


def _load_hilum(data: Path, files: list[Path], app: Path) -> None:
    """Index ``files`` into a Hilum data folder with the archive's own ingest_many (the code of ``app``)."""
    load = ("import sys; from pathlib import Path; from hilum.archive import Archive\n"
            "files = [Path(p) for p in Path(sys.argv[2]).read_text().split(chr(10)) if p]\n"
            "with Archive(Path(sys.argv[1])) as a:\n"
            "    assert all(r.ok for r in a.ingest_many(files, origin='import'))")
    listing = data.with_suffix(".files")
    listing.write_text("\n".join(str(p) for p in files))
    subprocess.run([PY, "-c", load, str(data), str(listing)], env={**ENV, "PYTHONPATH": str(app)}, check=True)


def bench_held(work: Path, files: list[Path], many: list[Path], n_studies: int, n_queries: int, orthanc: str | None,
               baseline_app: Path | None = None, pynetdicom_engine: bool = False,
               stream_repeat: int = 20) -> dict[str, Any]:
    """p50/p95 of ``n_queries`` study- and image-level C-FINDs over one held association per
    server, the servers alternating query by query; then the 500-match image-level response
    streamed ``stream_repeat`` times (matches/s of the median).  Every answer is compared."""
    scratch = Path(tempfile.mkdtemp(prefix="held-", dir=work))
    servers: list[Server] = []
    scus: dict[str, HeldSCU] = {}
    raws: dict[str, RawHeld] = {}
    everything = files + many
    try:
        t = time.perf_counter()
        _load_hilum(scratch / "hilum", everything, REPO / "app")
        print(f"  loaded {len(everything)} instances into Hilum (ingest_many) in {time.perf_counter() - t:.1f} s",
              flush=True)
        servers.append(Hilum(scratch / "hilum", "fast"))
        if pynetdicom_engine:
            shutil.copytree(scratch / "hilum", scratch / "hilum-pynetdicom")
            servers.append(Hilum(scratch / "hilum-pynetdicom", "pynetdicom"))
        if baseline_app is not None:
            _load_hilum(scratch / "hilum-baseline", everything, baseline_app)
            servers.append(Hilum(scratch / "hilum-baseline", "fast", baseline_app,
                                 label=f"Hilum baseline ({baseline_app.parent.name})"))
        if orthanc:
            orth = Orthanc(scratch, orthanc)
            t = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda p: orth.rest("/instances", p.read_bytes()), everything))
            assert orth.count() == len(everything)
            print(f"  loaded {len(everything)} instances into Orthanc (REST) in {time.perf_counter() - t:.1f} s",
                  flush=True)
            servers.append(orth)
        for s in servers:
            scus[s.name] = HeldSCU(s)
            raws[s.name] = RawHeld(s)
        out: dict[str, Any] = {"studies": n_studies, "queries": n_queries}
        for level, ret in (("STUDY", STUDY_RETURN), ("IMAGE", IMAGE_RETURN)):
            qs = held_queries(level, n_queries, n_studies)
            times: dict[str, list[float]] = {s.name: [] for s in servers}
            raw_times: dict[str, list[float]] = {s.name: [] for s in servers}
            mismatches = matches = 0
            for s in servers:  # warm-up
                scus[s.name].find(qs[0], ret)
                raws[s.name].find(qs[0], ret)
            for i, q in enumerate(qs):
                order = servers if i % 2 == 0 else list(reversed(servers))
                answers = []
                for s in order:
                    elapsed, rows = scus[s.name].find(q, ret)
                    times[s.name].append(elapsed)
                    answers.append(rows)
                    elapsed, rows = raws[s.name].find(q, ret)
                    raw_times[s.name].append(elapsed)
                    answers.append(rows)
                matches += len(answers[0])
                if any(a != answers[0] for a in answers[1:]):
                    mismatches += 1
            res: dict[str, Any] = {"mismatched_answers": mismatches, "matches": matches}
            for s in servers:
                v, r = times[s.name], raw_times[s.name]
                res[s.name] = {"p50_ms": pct(v, 50) * 1000, "p95_ms": pct(v, 95) * 1000,
                               "raw_p50_ms": pct(r, 50) * 1000, "raw_p95_ms": pct(r, 95) * 1000}
                print(f"  {level:5s} {s.name:36s} pynetdicom SCU p50 {res[s.name]['p50_ms']:6.2f} ms  "
                      f"p95 {res[s.name]['p95_ms']:6.2f} ms;  raw SCU p50 {res[s.name]['raw_p50_ms']:6.2f} ms  "
                      f"p95 {res[s.name]['raw_p95_ms']:6.2f} ms", flush=True)
            print(f"  {level:5s} {n_queries} queries, {matches} matches; answers that differed: {mismatches}",
                  flush=True)
            out[level] = res
        from ctset import ROOT

        q = {"QueryRetrieveLevel": "IMAGE", **{k: "" for k in IMAGE_RETURN}, "StudyInstanceUID": f"{ROOT}8.1"}
        stream: dict[str, list[float]] = {s.name: [] for s in servers}
        cpu: dict[str, float] = {s.name: 0.0 for s in servers}
        answers = {}
        for r in range(stream_repeat + 1):
            for s in servers if r % 2 == 0 else list(reversed(servers)):
                before = s.cpu_seconds()
                elapsed, rows = scus[s.name].find(q, IMAGE_RETURN)
                after = s.cpu_seconds()
                if len(rows) != len(many):
                    raise RuntimeError(f"{s.name}: {len(rows)} matches, expected {len(many)}")
                answers[s.name] = rows
                if r:
                    stream[s.name].append(elapsed)
                    if before is not None and after is not None:
                        cpu[s.name] += after - before
        raw: dict[str, list[float]] = {s.name: [] for s in servers}
        for r in range(stream_repeat + 1):
            for s in servers if r % 2 == 0 else list(reversed(servers)):
                elapsed, rows = raws[s.name].find(q, IMAGE_RETURN)
                if rows != answers[s.name]:
                    raise RuntimeError(f"{s.name}: the raw SCU got another answer")
                if r:
                    raw[s.name].append(elapsed)
        # The same query from DCMTK findscu, N times on one association (--repeat): a client in C,
        # so the figure is the server's more than pynetdicom's (its process start subtracted).
        dcmtk: dict[str, list[float]] = {s.name: [] for s in servers}
        for r in range(3):
            for s in servers if r % 2 == 0 else list(reversed(servers)):
                dcmtk[s.name].append(findscu_repeat(s, q, stream_repeat))
        res: dict[str, Any] = {"matches": len(many), "differed": len({tuple(a) for a in answers.values()}) > 1}
        for s in servers:
            med = statistics.median(stream[s.name])
            dmed = statistics.median(dcmtk[s.name])
            rmed = statistics.median(raw[s.name])
            res[s.name] = {"median_ms": med * 1000, "matches_per_s": len(many) / med,
                           "raw_ms": rmed * 1000, "raw_matches_per_s": len(many) / rmed,
                           "server_cpu_ms": cpu[s.name] / stream_repeat * 1000,
                           "findscu_ms": dmed * 1000, "findscu_matches_per_s": len(many) / dmed}
            print(f"  {len(many)}-match {s.name:32s} pynetdicom SCU {med * 1000:7.1f} ms = {len(many) / med:6.0f} "
                  f"matches/s; raw SCU {rmed * 1000:6.1f} ms = {len(many) / rmed:6.0f} matches/s; "
                  f"findscu --repeat {dmed * 1000:6.1f} ms = {len(many) / dmed:6.0f} matches/s; "
                  f"server CPU {res[s.name]['server_cpu_ms']:5.1f} ms per query", flush=True)
        out["stream"] = res
        return out
    finally:
        for scu in [*scus.values(), *raws.values()]:
            try:
                scu.close()
            except Exception:  # noqa: BLE001 - a server gone already
                pass
        for s in servers:
            s.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def report_held(found: dict[str, Any]) -> None:
    hilum = "Hilum (fast engine)"
    for name in [k for k in found["STUDY"] if isinstance(found["STUDY"][k], dict) and k != hilum]:
        for level in ("STUDY", "IMAGE"):
            h, o = found[level][hilum], found[level][name]
            print(f"  {level:5s} Hilum / {name}: pynetdicom SCU p50 {h['p50_ms'] / o['p50_ms']:.2f}  "
                  f"p95 {h['p95_ms'] / o['p95_ms']:.2f};  raw SCU p50 {h['raw_p50_ms'] / o['raw_p50_ms']:.2f}  "
                  f"p95 {h['raw_p95_ms'] / o['raw_p95_ms']:.2f}" + ("   (target p95 <= 0.50)" if name == "Orthanc" else ""))
        h, o = found["stream"][hilum], found["stream"][name]
        print(f"  {found['stream']['matches']}-match matches/s Hilum / {name}: pynetdicom SCU "
              f"{h['matches_per_s'] / o['matches_per_s']:.2f}, raw SCU "
              f"{h['raw_matches_per_s'] / o['raw_matches_per_s']:.2f}, findscu --repeat "
              f"{h['findscu_matches_per_s'] / o['findscu_matches_per_s']:.2f}"
              + ("   (target >= 2.00)" if name == "Orthanc" else "")
              + f"; server CPU per query {h['server_cpu_ms'] / o['server_cpu_ms']:.2f}")


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=2000, help="CT instances to send (default 2000)")
    ap.add_argument("--studies", type=int, default=10000, help="studies for the C-FIND test (default 10000)")
    ap.add_argument("--queries", type=int, default=100, help="findscu queries per server (default 100)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "hilum-bench-dimse"))
    ap.add_argument("--senders", default="1", help="comma-separated numbers of parallel storescu senders "
                    "to measure (default 1: one association, as a modality sends)")
    ap.add_argument("--repeat", type=int, default=1, help="ingest rounds; medians are reported (default 1)")
    ap.add_argument("--baseline-app", metavar="DIR", help="also measure hilum serve run from this app/ folder "
                    "(another checkout, e.g. a git worktree of an older commit)")
    ap.add_argument("--skip-peers", action="store_true", help="ingest: measure Hilum only (no storescp/Orthanc)")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-find", action="store_true")
    ap.add_argument("--held-studies", default="5000,20000", help="comma-separated archive sizes for the C-FIND "
                    "column over one held association (default 5000,20000; empty: skip)")
    ap.add_argument("--held-queries", type=int, default=200, help="held-association queries per level (default 200)")
    ap.add_argument("--held-pynetdicom", action="store_true", help="held association: also Hilum's pynetdicom engine")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    for tool in ("storescu", "storescp", "findscu"):
        if not (BIN / tool).exists():
            print(f"DCMTK's {tool} is missing (apt-get install dcmtk)", file=sys.stderr)
            return 2
    orthanc = orthanc_binary()
    if orthanc is None:
        print("Orthanc is missing (apt-get install orthanc): comparing with DCMTK only", file=sys.stderr)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}}

    if not args.skip_ingest:
        ct = work / f"ct{args.instances}"
        done = work / f"ct{args.instances}.done"
        if not done.exists():
            shutil.rmtree(ct, ignore_errors=True)
            t = time.perf_counter()
            write_ct_set(ct, args.instances)
            done.touch()
            print(f"generated {args.instances} CT instances in {time.perf_counter() - t:.0f} s", flush=True)
        for senders in (int(x) for x in args.senders.split(",")):
            what = "one storescu association" if senders == 1 else f"{senders} parallel storescu associations"
            print(f"C-STORE ingest, {what}, {args.instances} CT 512x512:", flush=True)
            baseline = Path(args.baseline_app).resolve() if args.baseline_app else None
            result = bench_ingest(work, ct, args.instances, orthanc, senders, max(1, args.repeat), baseline,
                                  peers=not args.skip_peers)
            rates = result["median"]
            figures[f"ingest_instances_per_s_{senders}_senders"] = result
            print(f"  Hilum fast / pynetdicom engine = {rates['hilum'] / rates['hilum_pynetdicom']:.2f}")
            if "hilum_baseline" in rates:
                print(f"  Hilum fast / baseline          = {rates['hilum'] / rates['hilum_baseline']:.2f}   "
                      "(target >= 1.00)")
            if "storescp" in rates:
                print(f"  Hilum / storescp = {rates['hilum'] / rates['storescp']:.2f}   (target >= 0.30)")
            if "orthanc" in rates:
                print(f"  Hilum / Orthanc  = {rates['hilum'] / rates['orthanc']:.2f}   (target >= 1.00)")

    if not args.skip_find:
        tiny = work / f"tiny{args.studies}"
        done = work / f"tiny{args.studies}.done"
        if not done.exists():
            shutil.rmtree(tiny, ignore_errors=True)
            write_tiny_studies(tiny, args.studies)
            done.touch()
        print(f"C-FIND, study level, findscu, {args.studies} studies, {args.queries} queries each:", flush=True)
        found = bench_find(work, tiny, args.studies, args.queries, orthanc,
                           Path(args.baseline_app).resolve() if args.baseline_app else None)
        figures["find"] = found
        h, p = found["Hilum (fast engine)"], found["Hilum (pynetdicom engine)"]
        print(f"  p50 Hilum fast / pynetdicom engine = {h['p50_ms'] / p['p50_ms']:.2f}")
        for name, b in found.items():
            if name.startswith("Hilum baseline"):
                print(f"  p50 Hilum fast / baseline = {h['p50_ms'] / b['p50_ms']:.2f}   "
                      f"p95 {h['p95_ms'] / b['p95_ms']:.2f}")
        if orthanc:
            h, o = found["Hilum (fast engine)"], found["Orthanc"]
            print(f"  p95 Hilum / Orthanc = {h['p95_ms'] / o['p95_ms']:.2f}   (target <= 1.00); "
                  f"answers that differed: {found['mismatched_answers']}")
    held = [int(x) for x in args.held_studies.split(",") if x.strip()]
    for n_held in held:
        tiny = work / f"tiny{max(held)}"  # the first n of the largest set: the same studies for each size
        done = work / f"tiny{max(held)}.done"
        if not done.exists():
            shutil.rmtree(tiny, ignore_errors=True)
            write_tiny_studies(tiny, max(held))
            done.touch()
        many = work / f"many{MANY}"
        if not (work / f"many{MANY}.done").exists():
            shutil.rmtree(many, ignore_errors=True)
            write_tiny_series(many, MANY)
            (work / f"many{MANY}.done").touch()
        print(f"C-FIND over one held association (pynetdicom SCU), {n_held} studies + one of {MANY} images, "
              f"{args.held_queries} queries per level:", flush=True)
        files = sorted(tiny.glob("*.dcm"))[:n_held]
        found = bench_held(work, files, sorted(many.glob("*.dcm")), n_held, args.held_queries, orthanc,
                           Path(args.baseline_app).resolve() if args.baseline_app else None, args.held_pynetdicom)
        figures[f"held_find_{n_held}"] = found
        report_held(found)
    figures["machine"]["load_avg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
