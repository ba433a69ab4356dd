"""Steady-state C-STORE ingest of this checkout against another one, in ABBA pairs.

    .venv/bin/python bench/dimse/steady.py --baseline-app /path/to/old/app [--pairs 12]
                                           [--instances 1000] [--warmup 50]

``run.py`` times whole rounds from a fresh server's first instance, beside
DCMTK and Orthanc; on a shared 2-core machine whose speed drifts within a
minute, its per-round ratios of two Hilum builds spread by +-25%.  This one
measures only the two builds: each run is a fresh ``hilum serve`` (fast
engine, its own data folder) that gets ``--warmup`` instances on one
association, then the rest on another, timed, with the server's CPU time read
from /proc.  The builds alternate A B B A ..., so a drift in machine speed
falls on both alike; it prints every pair and the medians of the paired
ratios.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ctset import write_ct_set  # noqa: E402
from run import BIN, ENV, REPO, Hilum  # noqa: E402


def one_run(work: Path, app: Path, files: list[str], warmup: int) -> tuple[float, float]:
    """(instances per second, ms of server CPU per instance) of the timed part of one run."""
    data = Path(tempfile.mkdtemp(prefix="steady-", dir=work))
    server = Hilum(data / "hilum", "fast", app)
    try:
        def send(part: list[str]) -> None:
            subprocess.run([str(BIN / "storescu"), "-aec", server.aet, "127.0.0.1", str(server.port), *part],
                           env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        send(files[:warmup])
        cpu0, t0 = server.cpu_seconds(), time.perf_counter()
        send(files[warmup:])
        seconds, cpu1 = time.perf_counter() - t0, server.cpu_seconds()
        n = len(files) - warmup
        assert cpu0 is not None and cpu1 is not None, "the server is gone"
        return n / seconds, (cpu1 - cpu0) / n * 1000
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--baseline-app", required=True, metavar="DIR", help="the other checkout's app/ folder")
    ap.add_argument("--pairs", type=int, default=12, help="runs of each build (default 12)")
    ap.add_argument("--instances", type=int, default=1000, help="CT instances per run (default 1000)")
    ap.add_argument("--warmup", type=int, default=50, help="untimed instances first (default 50)")
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "hilum-bench-dimse"))
    args = ap.parse_args(argv)
    if not (BIN / "storescu").exists():
        print("DCMTK's storescu is missing (apt-get install dcmtk)", file=sys.stderr)
        return 2
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    ct, done = work / f"ct{args.instances}", work / f"ct{args.instances}.done"
    if not done.exists():
        shutil.rmtree(ct, ignore_errors=True)
        write_ct_set(ct, args.instances)
        done.touch()
    files = sorted(str(p) for p in ct.rglob("*.dcm"))
    builds = {"this": REPO / "app", "baseline": Path(args.baseline_app).resolve()}
    rates: dict[str, list[float]] = {k: [] for k in builds}
    cpu: dict[str, list[float]] = {k: [] for k in builds}
    for i in range(args.pairs):
        order = ["this", "baseline"] if i % 2 == 0 else ["baseline", "this"]
        for name in order:
            rate, ms = one_run(work, builds[name], files, args.warmup)
            rates[name].append(rate)
            cpu[name].append(ms)
        print(f"  pair {i + 1:2d}: this {rates['this'][-1]:6.1f}/s {cpu['this'][-1]:5.2f} ms CPU   "
              f"baseline {rates['baseline'][-1]:6.1f}/s {cpu['baseline'][-1]:5.2f} ms CPU   "
              f"ratio {rates['this'][-1] / rates['baseline'][-1]:.2f}", flush=True)
    for name in builds:
        print(f"  median {name:8s} {statistics.median(rates[name]):6.1f} instances/s, "
              f"{statistics.median(cpu[name]):5.2f} ms CPU per instance")
    paired = [a / b for a, b in zip(rates["this"], rates["baseline"], strict=True)]
    paired_cpu = [a / b for a, b in zip(cpu["this"], cpu["baseline"], strict=True)]
    print(f"  this / baseline, paired: rate {statistics.median(paired):.3f} "
          f"({min(paired):.2f}-{max(paired):.2f}), CPU per instance {statistics.median(paired_cpu):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
