"""Ingest benchmark: import a generated CT set into an empty archive, beside the copy floor.

The floor is the least a durable store must do: copy the same files one by
one, each written and fsynced (read, write, fsync).  Ingest adds parsing,
an XXH3-128 checksum, an atomic rename and the index rows (its blobs fsynced a batch at a time).  Printed: instances/s
and MB/s for the floor and for ``Archive.ingest_many`` (the path ``hilum
import`` takes) on SQLite and PostgreSQL, and the ratio ingest/floor.  Runs
are interleaved — each round times the floor and then every ingest path — and
each figure is the median over ``--repeat`` rounds (the ratio: the median of
the per-round ratios), since the machine may be shared.  The page cache is
flushed (``sync``) before each run so one run's dirty pages do not slow the next.

    python bench/ingest/run.py [--n 2000] [--repeat 3] [--no-pg] [--modes auto,threads] [--serial]
                               [--baseline OTHER_CHECKOUT/app]

``--baseline`` times another checkout's code (e.g. the commit before a change,
``git worktree add /tmp/base COMMIT``) in the same rounds: each ingest path
runs once with this checkout and once with the other, each in a fresh
interpreter with that checkout first on ``PYTHONPATH``, and the ratio
this/baseline is printed per path (the median of the per-round ratios).

Not a test: nothing here asserts a time (DESIGN.md "Tests").
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
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pgserver import PgServer  # noqa: E402


def ct_set(cache: Path, n: int) -> list[Path]:
    """The generated CT set (512×512, explicit VR LE), made once and cached."""
    from hilum.dicom.generator import write_ct_set

    marker = cache / f".complete-{n}"
    if not marker.exists():
        shutil.rmtree(cache, ignore_errors=True)
        t = time.perf_counter()
        write_ct_set(cache, n)
        marker.write_text("ok")
        print(f"generated {n} CT instances in {time.perf_counter() - t:.1f} s into {cache}", flush=True)
    files = sorted(p for p in cache.rglob("*.dcm"))
    assert len(files) == n, f"{cache} holds {len(files)} files, expected {n}"
    return files


def copy_floor(files: list[Path], work: Path) -> float:
    """Seconds to copy ``files`` one by one, each fsynced, into a fresh folder."""
    dest = work / "copy"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    os.sync()
    t = time.perf_counter()
    for i, f in enumerate(files):
        data = f.read_bytes()
        with open(dest / f"{i:06d}.dcm", "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    seconds = time.perf_counter() - t
    shutil.rmtree(dest)
    return seconds


def ingest(files: list[Path], work: Path, database_url: str | None, mode: str) -> float:
    """Seconds for ``Archive.ingest_many`` (or a serial ``ingest`` loop) into an empty archive."""
    from hilum.archive import Archive, batch

    data = work / "data"
    shutil.rmtree(data, ignore_errors=True)
    archive = Archive(data, database_url=database_url)
    default_mode = batch.MODE
    if mode in ("threads", "processes"):
        batch.MODE = mode
    os.sync()
    try:
        t = time.perf_counter()
        if mode == "serial":
            results = [archive.ingest(f) for f in files]
        else:
            results = archive.ingest_many(files)
        seconds = time.perf_counter() - t
    finally:
        batch.MODE = default_mode
    counts = Counter(r.status for r in results)
    assert counts == {"stored": len(files)}, counts
    assert archive.stats()["instances"] == len(files)
    archive.close()
    shutil.rmtree(data)
    return seconds


def ingest_in(app: Path, files_dir: Path, n: int, work: Path, database_url: str | None, mode: str) -> float:
    """:func:`ingest` in a fresh interpreter running the checkout whose package folder is ``app``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(app), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    out = subprocess.run([sys.executable, str(HERE / "run.py"), "--child", json.dumps(
        {"files": str(files_dir), "n": n, "work": str(work), "url": database_url, "mode": mode})],
        env=env, check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def child(spec: str) -> int:
    """``--child``: one timed ingest, its seconds printed as JSON (for ``--baseline`` comparisons)."""
    job = json.loads(spec)
    files = ct_set(Path(job["files"]), int(job["n"]))
    print(json.dumps({"seconds": ingest(files, Path(job["work"]), job["url"], job["mode"])}))
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        return child(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="CT instances (default 2000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is printed (default 3)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "hilum-bench-ct",
                    help="where the generated set is kept between runs")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--modes", default="auto", help="ingest_many modes to time: auto,threads,processes (default auto)")
    ap.add_argument("--serial", action="store_true", help="also time a plain serial ingest() loop")
    ap.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    ap.add_argument("--pg-port", type=int, default=55432)
    ap.add_argument("--baseline", type=Path, default=None, metavar="APP_DIR",
                    help="another checkout's app/ folder, timed in the same rounds (see above)")
    args = ap.parse_args()

    files = ct_set(args.cache / str(args.n), args.n)
    mb = sum(f.stat().st_size for f in files) / 1e6
    work = args.work or Path(tempfile.mkdtemp(prefix="hilum-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{len(files)} CT instances 512x512, {mb:.0f} MB; {os.cpu_count()} CPUs; median of {args.repeat}",
          flush=True)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] + (["serial"] if args.serial else [])
    targets: list[tuple[str, str | None]] = [(m, None) for m in modes]
    pg = None
    if not args.no_pg:
        pg = PgServer(args.pg_port).start()
        targets += [(m, "pg") for m in modes]

    def label(mode: str, db: str | None) -> str:
        name = "PostgreSQL" if db else "SQLite"
        return f"{name} serial ingest()" if mode == "serial" else f"{name} ingest_many [{mode}]"

    this_app = HERE.parents[1] / "app"
    checkouts: list[tuple[str, Path | None]] = [("", None)]
    if args.baseline is not None:
        checkouts = [("", this_app), (" (baseline)", args.baseline.resolve())]

    # Interleaved: each round times the copy floor, then every ingest path right after it, so
    # each ratio compares figures taken under the same conditions (this machine is shared).
    floor_runs: list[float] = []
    names = [label(m, d) + suffix for m, d in targets for suffix, _ in checkouts]
    runs: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    versus: dict[str, list[float]] = {label(m, d): [] for m, d in targets}
    try:
        for rnd in range(args.repeat):
            floor = copy_floor(files, work)
            floor_runs.append(floor)
            print(f"round {rnd + 1}: copy floor {len(files) / floor:.0f} inst/s", flush=True)
            for mode, db in targets:
                order = checkouts if rnd % 2 == 0 else list(reversed(checkouts))  # alternate who goes first
                took: dict[str, float] = {}
                for suffix, app in order:
                    url = pg.create_db() if (db and pg) else None
                    if app is None:
                        secs = ingest(files, work, url, mode)
                    else:
                        secs = ingest_in(app, args.cache / str(args.n), args.n, work, url, mode)
                    name = label(mode, db) + suffix
                    took[suffix] = secs
                    runs[name].append(secs)
                    ratios[name].append(floor / secs)
                    print(f"  {name:<43} {len(files) / secs:6.0f} inst/s  ingest/copy {floor / secs:.2f}",
                          flush=True)
                if len(took) == 2:
                    versus[label(mode, db)].append(took[" (baseline)"] / took[""])
    finally:
        if pg is not None:
            pg.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    floor = statistics.median(floor_runs)
    print(f"\nmedians of {args.repeat} rounds; {mb:.0f} MB in {len(files)} files")
    print(f"{'path':<45}{'inst/s':>8}{'MB/s':>8}{'ingest/copy':>13}")
    print(f"{'copy + fsync per file (floor)':<45}{len(files) / floor:8.0f}{mb / floor:8.1f}{1.0:13.2f}")
    for name, secs in runs.items():
        med = statistics.median(secs)
        print(f"{name:<45}{len(files) / med:8.0f}{mb / med:8.1f}{statistics.median(ratios[name]):13.2f}")
    if args.baseline is not None:
        print("\nthis checkout vs baseline (speed ratio, median of per-round ratios; > 1: this one is faster)")
        for name, r in versus.items():
            print(f"{name:<45}{statistics.median(r):8.2f}   rounds: {', '.join(f'{x:.2f}' for x in r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
