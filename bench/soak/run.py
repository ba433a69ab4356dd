"""Soak: one ``hilum serve`` node under steady mixed load for minutes (issue 21 item 5).

- 16 concurrent DCMTK ``storescu`` associations, each looping: every loop sends a
  new study (``--files`` generated CT instances, fresh Study/Series/SOP Instance
  UIDs patched into the same bytes, so the index grows as in a clinic) on one
  association;
- QIDO-RS clients (``--qido`` threads, plain HTTP keep-alive) asking for studies
  (all, by patient name with a wildcard, a study's series) in a loop;
- C-FIND clients (``--find`` loops of DCMTK ``findscu``, study level, patient
  name wildcard) in a loop;

for ``--minutes`` (default 5).  Counted:

- errors: any C-STORE response that is not Success (storescu's verbose log, per
  file), a storescu or findscu that fails, an HTTP status other than 200, an
  exception in a client;
- lost: every SOP Instance UID the node answered Success for must be in the
  index at the end (read from the stopped node's data folder);
- RSS of the node process (``/proc/PID/status`` VmRSS) every 5 s: start, peak,
  end, and the slope of a least-squares line over the second half of the run
  (MiB per minute; a leak shows as a steady positive slope).

Results go to stdout (and ``--json``); ``RESULTS.md`` beside this file keeps
the figures of one full run.  DCMTK's tools are called by full path
(``/usr/bin/storescu``: pynetdicom's same-named scripts shadow them in the
venv) with ``TCP_NODELAY=1`` (../../../shared/ENVIRONMENT.md).

Run::

    PYTHONPATH=$PWD/app .venv/bin/python bench/soak/run.py [--minutes 5] [--senders 16] [--files 20]
        [--qido 2] [--find 2] [--rows 128] [--workdir /tmp/hilum-soak] [--json out.json]
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from hilum.archive import Archive
from hilum.dicom.generator import PATIENTS, generate_ct_series, make_study

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: _common
from _common import free_port  # noqa: E402

BIN = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}
UID_LEN = 44  # "2.25." + 39 digits: every UID patched in place has the same length


def _uid(rng: random.Random) -> str:
    return "2.25." + str(rng.randrange(10**38, 10**39))


# ------------------------------------------------------------------ data


@dataclass
class Template:
    """One generated series as bytes, with the UIDs to replace in each copy."""

    files: list[bytes]
    study: str
    series: str
    sops: list[str]


def make_template(n: int, rows: int, seed: int) -> Template:
    rng = random.Random(seed)
    patient = PATIENTS[seed % len(PATIENTS)]
    study = make_study(patient, accession=f"SOAK{seed}", seed=seed)
    datasets = generate_ct_series(study, rows=rows, columns=rows, slices=n)
    study_uid, series_uid = _uid(rng), _uid(rng)
    files, sops = [], []
    for ds in datasets:
        sop = _uid(rng)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, sop
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        files.append(buf.getvalue())
        sops.append(sop)
    return Template(files, study_uid, series_uid, sops)


def copy_of(t: Template, rng: random.Random, folder: Path) -> dict[str, Path]:
    """Write a copy of the template's series as a new study into ``folder``: {SOP UID: path}."""
    study, series = _uid(rng), _uid(rng)
    out = {}
    for i, (data, old) in enumerate(zip(t.files, t.sops, strict=True)):
        sop = _uid(rng)
        new = data.replace(t.study.encode(), study.encode()).replace(t.series.encode(), series.encode())
        new = new.replace(old.encode(), sop.encode())
        path = folder / f"{i:04d}.dcm"
        path.write_bytes(new)
        out[sop] = path
    return out


# ------------------------------------------------------------------ the node


def start_node(data: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    data.mkdir(parents=True, exist_ok=True)
    (data / "hilum.toml").write_text("[node]\nmax_associations = 64\n")
    log = open(data.parent / "node.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hilum",
            "serve",
            "--data",
            str(data),
            "--dicom-port",
            str(ports["dicom"]),
            "--web-port",
            str(ports["web"]),
            "--hl7-port",
            str(ports["hl7"]),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"hilum serve exited: see {data.parent / 'node.log'}")
        try:
            with (
                socket.create_connection(("127.0.0.1", ports["dicom"]), timeout=1),
                socket.create_connection(("127.0.0.1", ports["web"]), timeout=1),
            ):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("hilum serve did not start listening within 90 s") from None
            time.sleep(0.2)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------ the clients


@dataclass
class Counts:
    lock: threading.Lock = field(default_factory=threading.Lock)
    stored: set[str] = field(default_factory=set)  # SOP UIDs answered Success
    store_errors: list[str] = field(default_factory=list)
    store_associations: int = 0
    qido_requests: int = 0
    qido_errors: list[str] = field(default_factory=list)
    find_requests: int = 0
    find_errors: list[str] = field(default_factory=list)

    def error(self, kind: str, what: str) -> None:
        with self.lock:
            getattr(self, f"{kind}_errors").append(what[:300])


_SENDING = re.compile(r"Sending file: (\S+)")
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


def sender(k: int, t: Template, port: int, work: Path, stop: threading.Event, counts: Counts) -> None:
    rng = random.Random(1000 + k)
    folder = work / f"sender{k:02d}"
    while not stop.is_set():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        files = copy_of(t, rng, folder)
        by_path = {str(p): sop for sop, p in files.items()}
        proc = subprocess.run(
            [
                str(BIN / "storescu"),
                "-v",
                "-aet",
                f"SOAK{k:02d}",
                "-aec",
                "HILUM",
                "-to",
                "60",
                "-ta",
                "60",
                "-td",
                "60",
                "127.0.0.1",
                str(port),
                *map(str, files.values()),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            check=False,
        )
        ok: set[str] = set()
        current = None
        for line in (proc.stdout + proc.stderr).splitlines():
            if m := _SENDING.search(line):
                current = m.group(1)
            elif (m := _RESPONSE.search(line)) and current is not None:
                if m.group(1) == "Success":
                    ok.add(by_path.get(current, current))
                else:
                    counts.error("store", f"{current}: {m.group(1)}")
                current = None
        with counts.lock:
            counts.stored |= ok
            counts.store_associations += 1
        missing = len(files) - len(ok)
        if proc.returncode != 0 or missing:
            counts.error(
                "store",
                f"storescu exit {proc.returncode}, {missing} of {len(files)} without Success: "
                f"{(proc.stderr or proc.stdout)[-200:]}",
            )


def qido_client(k: int, port: int, stop: threading.Event, counts: Counts) -> None:
    conn: http.client.HTTPConnection | None = None
    paths = [
        "/dicom-web/studies?limit=50",
        "/dicom-web/studies?PatientName=D*&limit=20",
        "/dicom-web/studies?StudyDate=20200101-&includefield=StudyDescription&limit=20",
    ]
    i = 0
    while not stop.is_set():
        path = paths[i % len(paths)]
        i += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", path, headers={"Accept": "application/dicom+json"})
            resp = conn.getresponse()
            body = resp.read()
            with counts.lock:
                counts.qido_requests += 1
            if resp.status != 200:
                counts.error("qido", f"{path}: HTTP {resp.status} {body[:100]!r}")
            else:
                json.loads(body)
        except Exception as exc:  # noqa: BLE001 - counted, the loop goes on
            counts.error("qido", f"{path}: {type(exc).__name__}: {exc}")
            if conn is not None:
                conn.close()
            conn = None
        stop.wait(0.1)
    if conn is not None:
        conn.close()


def find_client(k: int, port: int, stop: threading.Event, counts: Counts) -> None:
    patterns = ["D*", "*", "Y*", "M*"]
    i = 0
    while not stop.is_set():
        pattern = patterns[i % len(patterns)]
        i += 1
        proc = subprocess.run(
            [
                str(BIN / "findscu"),
                "-S",
                "-aet",
                f"FIND{k}",
                "-aec",
                "HILUM",
                "-to",
                "60",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"PatientName={pattern}",
                "-k",
                "StudyInstanceUID=",
                "-k",
                "NumberOfStudyRelatedInstances=",
                "127.0.0.1",
                str(port),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            check=False,
        )
        with counts.lock:
            counts.find_requests += 1
        out = proc.stdout + proc.stderr
        if proc.returncode != 0 or re.search(r"^E:", out, re.M):
            counts.error("find", f"findscu exit {proc.returncode}: {out[-200:]}")
        stop.wait(0.2)


# ------------------------------------------------------------------ the run


def slope_mib_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over time (MiB/min) of the second half of the samples."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return float("nan")
    xs = [t / 60 for t, _ in half]
    ys = [r for _, r in half]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"generating {args.senders} series of {args.files} CT {args.rows}x{args.rows} ...", flush=True)
    templates = [make_template(args.files, args.rows, seed) for seed in range(args.senders)]
    ports = {"dicom": free_port(), "web": free_port(), "hl7": free_port()}
    data = work / "data"
    node = start_node(data, ports)
    counts = Counts()
    stop = threading.Event()
    samples: list[tuple[float, float]] = []
    threads = [
        threading.Thread(target=sender, args=(k, templates[k], ports["dicom"], work, stop, counts))
        for k in range(args.senders)
    ]
    threads += [threading.Thread(target=qido_client, args=(k, ports["web"], stop, counts)) for k in range(args.qido)]
    threads += [threading.Thread(target=find_client, args=(k, ports["dicom"], stop, counts)) for k in range(args.find)]
    start = time.monotonic()
    samples.append((0.0, rss_mib(node.pid)))
    for t in threads:
        t.start()
    duration = args.minutes * 60
    try:
        while (elapsed := time.monotonic() - start) < duration:
            time.sleep(min(5.0, duration - elapsed))
            samples.append((time.monotonic() - start, rss_mib(node.pid)))
            if node.poll() is not None:
                raise SystemExit(f"the node died after {time.monotonic() - start:.0f} s: see {work / 'node.log'}")
            with counts.lock:
                print(
                    f"  {samples[-1][0]:5.0f} s  stored {len(counts.stored):6d}  qido {counts.qido_requests:5d}  "
                    f"find {counts.find_requests:4d}  errors {len(counts.store_errors)}/{len(counts.qido_errors)}/"
                    f"{len(counts.find_errors)}  RSS {samples[-1][1]:.0f} MiB",
                    flush=True,
                )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    load_end = time.monotonic() - start
    samples.append((load_end, rss_mib(node.pid)))
    node.send_signal(signal.SIGTERM)
    try:
        node.wait(timeout=120)
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait()
    with Archive(data) as archive:
        indexed = {str(r["SOPInstanceUID"]) for r in archive.query("IMAGE", {"SOPInstanceUID": ""})}
    lost = sorted(counts.stored - indexed)
    rss = [r for _, r in samples]
    result = {
        "minutes": args.minutes,
        "senders": args.senders,
        "files_per_association": args.files,
        "rows": args.rows,
        "qido_clients": args.qido,
        "find_clients": args.find,
        "seconds_under_load": round(load_end, 1),
        "stored": len(counts.stored),
        "store_associations": counts.store_associations,
        "instances_per_s": round(len(counts.stored) / load_end, 1),
        "indexed": len(indexed),
        "lost": len(lost),
        "lost_examples": lost[:5],
        "qido_requests": counts.qido_requests,
        "find_requests": counts.find_requests,
        "errors": {"store": len(counts.store_errors), "qido": len(counts.qido_errors), "find": len(counts.find_errors)},
        "error_examples": (counts.store_errors + counts.qido_errors + counts.find_errors)[:10],
        "rss_mib": {
            "start": round(rss[0], 1),
            "peak": round(max(rss), 1),
            "end": round(rss[-1], 1),
            "slope_second_half_mib_per_min": round(slope_mib_per_min(samples), 2),
        },
        "rss_samples": [(round(t), round(r, 1)) for t, r in samples],
        "load_average": os.getloadavg(),
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--senders", type=int, default=16, help="concurrent storescu associations")
    ap.add_argument("--files", type=int, default=20, help="instances per association (one new study each)")
    ap.add_argument("--rows", type=int, default=128, help="CT rows = columns of the generated instances")
    ap.add_argument("--qido", type=int, default=2, help="QIDO-RS client threads")
    ap.add_argument("--find", type=int, default=2, help="findscu client loops")
    ap.add_argument("--workdir", default="/tmp/hilum-soak")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (data, node.log)")
    ap.add_argument("--json", help="write the result here too")
    args = ap.parse_args()
    if not (BIN / "storescu").exists():
        raise SystemExit("DCMTK is needed (Debian package dcmtk)")
    result = run(args)
    summary = {k: v for k, v in result.items() if k != "rss_samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    bad = result["lost"] or any(result["errors"].values())
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
