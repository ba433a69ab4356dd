"""Priors benchmark (issue 15): how fast priors are listed and fetched.

Three figures, each a median (and p95) over several runs:

1. **local** — a study open request to its priors listed: :func:`hilum.priors.find_local_priors`
   for the current study of one patient among ``--patients`` (default 200) with ``--per-patient``
   studies each (default 10: 2,000 studies), real instances ingested through the one ingest call.
   Timed called directly and handed to a worker thread and back (as the viewer runs it off the GUI
   thread), beside the archive's bare STUDY query by Patient ID (the floor);
2. **remote** — :func:`hilum.priors.find_remote_priors` against a ``hilum serve`` on loopback that
   holds the same 2,000 studies: over DIMSE (C-FIND, study + series levels) and over DICOMweb (QIDO-RS);
3. **ORM to priors local** — an HL7 ORM sent over MLLP to a running node with ``[prefetch]`` on,
   for a patient of whom the node holds nothing, until the job that C-MOVEs the patient's relevant
   priors (``--max-priors``, default 2) from that ``hilum serve`` is done: the priors are local.

Target (issue 15): priors listed <= 0.5 s after the study opens (local).  Not a test: nothing
asserts a time.

    python bench/priors/run.py [--patients 200] [--per-patient 10] [--runs 200] [--remote-runs 20]
                               [--orm-runs 10] [--rows 64] [--slices 4] [--max-priors 2]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

APP = Path(__file__).resolve().parents[2] / "app"
sys.path.insert(0, str(APP))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: _common
from _common import free_port, wait_port  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.config import Config, Peer, PrefetchRules  # noqa: E402
from hilum.dicom.generator.people import Patient, make_study  # noqa: E402
from hilum.dicom.generator.series import generate_mr_series, iter_ct_series  # noqa: E402
from hilum.dicomweb.client import DicomWebSource  # noqa: E402
from hilum.priors import find_local_priors, find_remote_priors  # noqa: E402

KINDS = [("CT", "CHEST"), ("CT", "ABDOMEN"), ("MR", "HEAD"), ("CT", "HEAD"), ("MR", "KNEE")]


def patient(i: int) -> Patient:
    return Patient(f"Bench^Patient{i:04d}", f"BEN-{i:05d}", "19600101", "F" if i % 2 else "M")


def study_datasets(p: Patient, k: int, rows: int, slices: int) -> Iterator[Dataset]:
    """Study ``k`` of patient ``p``: k = 0 is the current one (a chest CT, 2026-11-02), the others
    a year apart back in time, of mixed modalities and body parts."""
    modality, part = ("CT", "CHEST") if k == 0 else KINDS[(k + int(p.patient_id[-2:])) % len(KINDS)]
    date = f"{2026 - k}1102"
    study = make_study(
        p,
        accession=f"{p.patient_id}-{k:02d}",
        date=date,
        description=f"{modality} {part}",
        body_part=part,
        seed="bench-priors",
    )
    if modality == "MR":
        yield from generate_mr_series(study, rows=rows, columns=rows, slices=slices)
    else:
        yield from iter_ct_series(study, rows=rows, columns=rows, slices=slices, noise_sigma=0.0)


def fill(
    archive: Archive, patients: int, per_patient: int, rows: int, slices: int, skip_current: bool = False
) -> dict[str, str]:
    """Ingest every study; returns {patient ID: current study UID}."""
    current: dict[str, str] = {}

    def sources() -> Iterator[Dataset]:
        for i in range(patients):
            p = patient(i)
            for k in range(per_patient):
                for ds in study_datasets(p, k, rows, slices):
                    if k == 0:
                        current[p.patient_id] = str(ds.StudyInstanceUID)
                        if skip_current:
                            continue
                    yield ds

    results = archive.ingest_many(sources(), workers=2)
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} instances refused: {bad[0].reason}")
    return current


def stats(times: list[float]) -> str:
    t = sorted(times)
    p95 = t[min(len(t) - 1, int(round(0.95 * (len(t) - 1))))]
    return f"median {statistics.median(t) * 1000:8.2f} ms   p95 {p95 * 1000:8.2f} ms   (n={len(t)})"


def timed(fn: Callable[[], Any], runs: int) -> tuple[list[float], Any]:
    out: list[float] = []
    result = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        out.append(time.perf_counter() - t0)
    return out, result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--per-patient", type=int, default=10)
    ap.add_argument("--rows", type=int, default=64, help="pixels per side of each generated image")
    ap.add_argument("--slices", type=int, default=4, help="images per series")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--remote-runs", type=int, default=20)
    ap.add_argument("--orm-runs", type=int, default=10)
    ap.add_argument("--max-priors", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hilum-bench-priors-"))
    rng = random.Random(3)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        n_studies = args.patients * args.per_patient
        print(
            f"priors benchmark: {args.patients} patients x {args.per_patient} studies = {n_studies} studies, "
            f"{args.rows}x{args.rows}x{args.slices} per series; {os.cpu_count()} CPUs"
        )
        t0 = time.perf_counter()
        big = Archive(root / "pacs")
        current = fill(big, args.patients, args.per_patient, args.rows, args.slices)
        stats_row = big.stats()
        print(
            f"  archive filled in {time.perf_counter() - t0:.1f} s: {stats_row['studies']} studies, "
            f"{stats_row['instances']} instances"
        )
        pids = list(current)

        # 1. local
        def pick() -> str:
            return current[rng.choice(pids)]

        find_local_priors(big, pick())  # warm
        direct, _ = timed(lambda: find_local_priors(big, pick()), args.runs)
        pool = ThreadPoolExecutor(max_workers=1)
        handed, _ = timed(lambda: pool.submit(find_local_priors, big, pick()).result(), args.runs)
        floor, _ = timed(lambda: big.query("STUDY", {"PatientID": rng.choice(pids)}), args.runs)
        sample = find_local_priors(big, current[pids[0]])
        print(
            "\n1. study open -> local priors listed (find_local_priors, one patient among "
            f"{n_studies} studies; {len(sample)} priors each)"
        )
        print(f"   direct               {stats(direct)}")
        print(f"   via a worker thread  {stats(handed)}")
        print(f"   floor: bare STUDY query by Patient ID   {stats(floor)}")
        print(
            f"   ratio find_local_priors / bare query: {statistics.median(direct) / statistics.median(floor):.1f}x;"
            f"   target <= 500 ms: {'met' if statistics.median(handed) <= 0.5 else 'MISSED'}"
        )
        big.close()
        pool.shutdown()

        # 2. remote: a hilum serve with the same studies
        local_port, dicom, web, hl7 = free_port(), free_port(), free_port(), free_port()
        (root / "pacs" / "hilum.toml").write_text(
            f'[node]\naet = "PACS"\n\n[peers.local]\naet = "LOCAL"\nhost = "127.0.0.1"\nport = {local_port}\n'
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")])}
        log = open(root / "serve.log", "wb")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hilum",
                    "serve",
                    "--data",
                    str(root / "pacs"),
                    "--dicom-port",
                    str(dicom),
                    "--web-port",
                    str(web),
                    "--hl7-port",
                    str(hl7),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        for port in (dicom, web):
            wait_port(port)
        local = Archive(root / "local")
        dimse_peer = {"pacs": Peer("PACS", "127.0.0.1", dicom)}
        web_peer = {"web": DicomWebSource("web", f"http://127.0.0.1:{web}/dicom-web")}
        # the local archive holds each patient's current study only
        picked = rng.sample(pids, min(len(pids), args.remote_runs + args.orm_runs + 1))
        chosen, orm_patients = picked[: args.remote_runs + 1], picked[args.remote_runs + 1 :]
        for pid in chosen:
            i = int(pid.split("-")[1])
            for ds in study_datasets(patient(i), 0, args.rows, args.slices):
                local.ingest(ds)
        print(f"\n2. remote priors from a loopback `hilum serve` holding the {n_studies} studies")
        for label, peers in (("DIMSE (C-FIND study + series)", dimse_peer), ("DICOMweb (QIDO-RS)", web_peer)):
            times: list[float] = []
            found = 0
            for pid in chosen[: args.remote_runs]:
                errors: dict[str, str] = {}
                t0 = time.perf_counter()
                got = find_remote_priors(local, current[pid], peers, timeout=30, errors=errors)
                times.append(time.perf_counter() - t0)
                if errors:
                    raise RuntimeError(f"{label}: {errors}")
                found = len(got)
            print(f"   {label:32s} {stats(times)}   ({found} priors)")
        local.close()

        # 3. ORM -> priors local, through a running node with prefetch on
        from hl7.client import MLLPClient

        from hilum.node import Node
        from hilum.priors.prefetch import PrefetchJob

        cfg = Config(
            data_dir=root / "local",
            aet="LOCAL",
            dicom_port=local_port,
            hl7_port=free_port(),
            web_port=free_port(),
            peers={"pacs": Peer("PACS", "127.0.0.1", dicom, retrieve="move")},
            prefetch=PrefetchRules(
                enabled=True,
                max_priors=args.max_priors,
                max_age_years=0,
                modalities=["CT", "MR"],
                timeout=30,
                on_study=False,
            ),
        )
        done = threading.Event()
        finished: dict[int, PrefetchJob] = {}

        def heard(job: PrefetchJob) -> None:
            if job.state in ("done", "failed"):
                finished[job.id] = job
                done.set()

        times = []
        fetched = []
        with Node(cfg) as node:
            assert node.prefetcher is not None
            node.prefetcher.subscribe(heard)
            for n, pid in enumerate(orm_patients):
                done.clear()
                msg = (
                    "\r".join(
                        [
                            f"MSH|^~\\&|HIS|HOSP|HILUM|RAD|20261201090000||ORM^O01^ORM_O01|B{n}|P|2.3.1",
                            f"PID|1||{pid}^^^HOSP^MR||Bench^Patient||19600101|F",
                            "PV1|1|O",
                            f"ORC|NW|BPL{n}|BFPL{n}||SC||^^^202612011030^^R",
                            f"OBR|1|BPL{n}|BFPL{n}|CTCHEST^CT Chest^L|||||||||||||BACC{n}|RPB{n}|SPSB{n}|||||CT|||"
                            "^^^202612011030^^R",
                        ]
                    )
                    + "\r"
                )
                t0 = time.perf_counter()
                with MLLPClient("127.0.0.1", cfg.hl7_port) as client:
                    client.send_message(msg)
                if not done.wait(120):
                    raise RuntimeError("prefetch job did not finish")
                times.append(time.perf_counter() - t0)
                job = list(finished.values())[-1]
                if job.state != "done":
                    raise RuntimeError(f"prefetch failed: {job.message}")
                fetched.append((job.fetched, job.instances))
        print(
            f"\n3. HL7 ORM sent -> its priors local (C-MOVE from the loopback `hilum serve`, "
            f"up to {args.max_priors} priors)"
        )
        print(
            f"   ORM -> priors local  {stats(times)}   (fetched per job: "
            f"{statistics.median(f for f, _ in fetched):g} studies, "
            f"{statistics.median(i for _, i in fetched):g} instances)"
        )
        return 0
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
