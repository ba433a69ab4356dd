"""C-STORE ingest over 1, 4 and 16 parallel associations: Hilum vs DCMTK storescp vs Orthanc.

Issue 24 item 6: the ingest rate on one association against the floor
(DCMTK ``storescp`` writes files and indexes nothing) and how it scales when
several senders store at once.  One run measures, for each number of
parallel ``storescu`` associations (the same CT set split between them, one
``storescu`` process each):

- ``hilum serve`` of this checkout (fast DIMSE engine; ``--workers N`` sets
  ``[dimse] workers`` through ``$HILUM_DIMSE_WORKERS``, also given as several
  values, each measured as its own server: ``--workers 0,2``),
- optionally ``hilum serve`` of another checkout (``--baseline-app DIR/app``:
  before/after in the same run),
- DCMTK ``storescp`` and Orthanc (``TCP_NODELAY=1`` for both, as Hilum sets
  it on its own sockets; ../../../shared/ENVIRONMENT.md).

``--repeat N`` rounds; each round starts every server afresh (new data
folder) in a rotating order.  Printed: per association count, the median
instances/s of each server, the CPU each server process used per instance,
and the ratios Hilum / storescp, Hilum / Orthanc, Hilum / baseline as the
median of the ratios measured within one round (the load of a shared
machine drifts between rounds; the ratio within a round is steadier).

Measured 2026-12-06 on the 2-core development machine under other load (load average 6-11),
``--repeat 3 --baseline-app /work/main/app`` (main = before), median instances/s (CPU ms per
instance), same-round ratio medians:

=====  ===============  ============  ===========  ===========  =====================
assoc  storescp         Orthanc       Hilum        before       Hilum/before, /storescp
=====  ===============  ============  ===========  ===========  =====================
1      281 (0.61)       170 (3.01)    210 (2.25)   152 (2.82)   1.13, 0.45
4      516 (0.79)       225 (2.88)    313 (2.46)   294 (2.62)   0.91, 0.76
16     455 (0.77)       217 (2.70)    303 (2.50)   242 (3.19)   1.26, 0.68
=====  ===============  ============  ===========  ===========  =====================

One association has a floor storescp does not: the blob is fsynced before the C-STORE-RSP
("nothing lost"), and a new 512 KiB file's write + fsync took 1.2-1.5 ms here (median of
150), more than storescp's whole time per instance (0.92 ms at 1,087/s, measured unloaded);
a sender that waits for each response cannot go faster than 1 / (peer + fsync), about
0.43x storescp, whatever the node does meanwhile.

Run (data generated once into WORKDIR)::

    PYTHONPATH=$PWD/app .venv/bin/python bench/dimse/parallel.py [--instances 1000] [--senders 1,4,16]
        [--repeat 3] [--workers 0] [--baseline-app /work/main/app] [--workdir /tmp/hilum-bench-parallel]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ctset import write_ct_set  # noqa: E402
from run import ENV, PY, REPO, Hilum, Orthanc, Server, StoreSCP, free_port, orthanc_binary, storescu, wait_port  # noqa: E402


class HilumWorkers(Hilum):
    """``hilum serve`` (fast engine) from ``app`` with ``[dimse] workers`` set by the environment."""

    def __init__(self, data: Path, app: Path, label: str, workers: int | None):
        self.data = data
        self.port = free_port()
        self.name = label
        env = {**ENV, "PYTHONPATH": str(app), "HILUM_DIMSE_ENGINE": "fast"}
        if workers is not None:
            env["HILUM_DIMSE_WORKERS"] = str(workers)
        self.proc = subprocess.Popen(
            [
                PY,
                "-m",
                "hilum",
                "serve",
                "--data",
                str(data),
                "--aet",
                self.aet,
                "--dicom-port",
                str(self.port),
                "--web-port",
                str(free_port()),
                "--hl7-port",
                str(free_port()),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def cpu_seconds(self) -> float | None:
        """This process and its children (worker processes), from /proc."""
        own = super().cpu_seconds()
        if own is None or self.proc is None:
            return own
        total = own
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            children = []
        for pid in children:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total


def servers(
    scratch: Path, orthanc: str | None, workers: list[int | None], baseline: Path | None, peers: bool
) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if peers:
        out.append(("storescp", lambda: StoreSCP(scratch)))
        if orthanc:
            out.append(("orthanc", lambda: Orthanc(scratch, orthanc)))
    for w in workers:
        key = "hilum" if w is None else f"hilum_w{w}"
        label = "Hilum" if w is None else f"Hilum (workers={w})"
        out.append((key, lambda w=w, key=key, label=label: HilumWorkers(scratch / key, REPO / "app", label, w)))
    if baseline is not None:
        out.append(("baseline", lambda: HilumWorkers(scratch / "baseline", baseline, "Hilum baseline", None)))
    return out


def one_round(
    work: Path,
    ct: Path,
    n: int,
    senders: int,
    factories: list[tuple[str, Any]],
    shift: int,
    runs: dict[str, list[float]],
    cpu: dict[str, list[float]],
    names: dict[str, str],
) -> None:
    k = shift % len(factories)
    for key, make in factories[k:] + factories[:k]:
        server: Server = make()
        try:
            before = server.cpu_seconds()
            seconds = storescu(server, ct, senders)
            after = server.cpu_seconds()
            if before is not None and after is not None:
                cpu.setdefault(key, []).append((after - before) / n * 1000)
            if isinstance(server, Hilum):
                server.stop()  # Hilum's count is read from its archive once the node is down
            stored = server.count()
        finally:
            server.stop()
        if stored != n:
            raise RuntimeError(f"{server.name} holds {stored} instances, expected {n}")
        runs.setdefault(key, []).append(n / seconds)
        names[key] = server.name
        print(f"    {server.name:26s} {n / seconds:7.1f} instances/s  ({seconds:5.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=1000)
    ap.add_argument("--senders", default="1,4,16", help="comma-separated parallel association counts")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--workers",
        default="",
        help="comma-separated [dimse] workers values to measure (default: the node's own setting)",
    )
    ap.add_argument("--baseline-app", metavar="DIR", help="also measure hilum serve from this app/ folder")
    ap.add_argument("--skip-peers", action="store_true")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "hilum-bench-parallel"))
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ct = work / f"ct{args.instances}"
    if not (work / f"ct{args.instances}.done").exists():
        shutil.rmtree(ct, ignore_errors=True)
        write_ct_set(ct, args.instances)
        (work / f"ct{args.instances}.done").touch()
    orthanc = orthanc_binary()
    workers: list[int | None] = [int(w) for w in args.workers.split(",") if w.strip()] or [None]
    baseline = Path(args.baseline_app).resolve() if args.baseline_app else None
    counts = [int(x) for x in args.senders.split(",")]
    figures: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "instances": args.instances,
        "by_senders": {},
    }
    per: dict[int, tuple[dict[str, list[float]], dict[str, list[float]], dict[str, str]]] = {
        s: ({}, {}, {}) for s in counts
    }
    for round_ in range(args.repeat):
        for senders in counts:
            print(f"round {round_ + 1}, {senders} association(s), {args.instances} CT 512x512:", flush=True)
            scratch = Path(tempfile.mkdtemp(prefix="par-", dir=work))
            try:
                runs, cpu, names = per[senders]
                one_round(
                    work,
                    ct,
                    args.instances,
                    senders,
                    servers(scratch, orthanc, workers, baseline, not args.skip_peers),
                    round_,
                    runs,
                    cpu,
                    names,
                )
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nmedians of {args.repeat} rounds, {args.instances} CT 512x512, {os.cpu_count()} CPUs:")
    for senders in counts:
        runs, cpu, names = per[senders]
        print(f"  {senders} association(s):")
        fig: dict[str, Any] = {"median": {}, "runs": runs, "cpu_ms_per_instance": {}, "paired_ratios": {}}
        for key, values in runs.items():
            rate = statistics.median(values)
            ms = statistics.median(cpu[key]) if cpu.get(key) else float("nan")
            fig["median"][key], fig["cpu_ms_per_instance"][key] = rate, ms
            print(
                f"    {names[key]:26s} {rate:7.1f} instances/s  {ms:5.2f} ms CPU/instance  "
                f"(runs {', '.join(f'{r:.0f}' for r in values)})"
            )
        for key in runs:
            if not key.startswith("hilum"):
                continue
            for peer in ("storescp", "orthanc", "baseline"):
                if peer in runs:
                    ratios = [a / b for a, b in zip(runs[key], runs[peer], strict=True)]
                    fig["paired_ratios"][f"{key}/{peer}"] = statistics.median(ratios)
                    print(
                        f"    {names[key]} / {names[peer]}: {statistics.median(ratios):.2f} "
                        f"(same-round ratios {', '.join(f'{r:.2f}' for r in ratios)})"
                    )
        figures["by_senders"][senders] = fig
    if len(counts) > 1:
        print("  scaling (median rate / median rate on the fewest associations):")
        base = counts[0]
        for key in per[base][0]:
            r0 = statistics.median(per[base][0][key])
            line = ", ".join(f"{s}: {statistics.median(per[s][0][key]) / r0:.2f}x" for s in counts if key in per[s][0])
            print(f"    {per[base][2][key]:26s} {line}")
    figures["load_avg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
