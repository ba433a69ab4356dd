"""Backup and restore throughput beside the plain tools doing the same copy, same archive, same run.

An archive of generated 512x512 CT slices (``--instances``, default 600: ~315 MB) is imported; then, timed:

* ``hilum backup`` (called in process: no interpreter start) — hard links (same file system) and ``--copy``: the index snapshot (SQLite backup API),
  every blob linked or copied *and read back against its checksum*, the manifest;
* the peers, on the same archive: ``sqlite3 .backup`` of the index + ``cp -al`` of the blobs (links, no
  check), and + ``cp -a`` (copies, no check, no fsync);
* ``hilum restore`` (copy + checksum of every blob + fsync) beside ``cp -a`` of the backup's blobs.

The page cache is warm for every run (the files were just written): the figures compare the work each
tool does, not the disk.  Printed: seconds, MB/s, instances/s and the ratio to the peer.

    .venv/bin/python bench/storage/backup.py [--instances 600] [--repeat 3]

Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _fill(data: Path, n: int, tmp: Path) -> int:
    from hilum.archive import Archive
    from hilum.dicom.generator import MUELLER, iter_ct_series, make_study, write_dataset

    study = make_study(MUELLER, accession="BENCH-BK", seed="bench-backup")
    files = [write_dataset(ds, tmp / f"{i:05d}.dcm") for i, ds in enumerate(iter_ct_series(study, slices=n))]
    with Archive(data) as a:
        a.ingest_many(files)
        return int(a.stats()["bytes"])


def _time(fn: Callable[[], None], clean: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        clean()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    clean()
    return statistics.median(times)


def _backup(data: Path, out: Path, *, link: bool) -> Callable[[], None]:
    def run() -> None:
        from hilum.archive import Archive
        from hilum.archive.backup import backup

        with Archive(data) as a:
            backup(a, out, link=link)

    return run


def _restore(backup_dir: Path, out: Path) -> Callable[[], None]:
    def run() -> None:
        from hilum.archive.backup import restore

        restore(backup_dir, out)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=600)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hilum-bench-backup-"))
    try:
        data, out, src = root / "data", root / "out", root / "src"
        src.mkdir()
        size = _fill(data, args.instances, src)
        shutil.rmtree(src)
        mb = size / 1e6
        print(f"archive: {args.instances} instances, {mb:.0f} MB (512x512 CT), page cache warm")

        def clean() -> None:
            shutil.rmtree(out, ignore_errors=True)

        def peer(link: bool) -> Callable[[], None]:
            def run() -> None:
                out.mkdir()
                with sqlite3.connect(data / "index.sqlite") as s, sqlite3.connect(out / "index.sqlite") as d:
                    s.backup(d)
                subprocess.run(["cp", "-al" if link else "-a", str(data / "blobs"), str(out / "blobs")], check=True)

            return run

        rows = [
            (
                "backup, hard links",
                _time(_backup(data, out, link=True), clean, args.repeat),
                "sqlite3 backup + cp -al",
                _time(peer(True), clean, args.repeat),
            ),
            (
                "backup --copy",
                _time(_backup(data, out, link=False), clean, args.repeat),
                "sqlite3 backup + cp -a",
                _time(peer(False), clean, args.repeat),
            ),
        ]
        backup = root / "backup"
        _backup(data, backup, link=False)()
        rows.append(
            (
                "restore",
                _time(_restore(backup, out), clean, args.repeat),
                "cp -a of the backup",
                _time(lambda: subprocess.run(["cp", "-a", str(backup), str(out)], check=True), clean, args.repeat),
            )
        )
        print(f"{'hilum':24s} {'s':>7s} {'MB/s':>7s} {'inst/s':>7s}   {'peer':26s} {'s':>7s} {'MB/s':>7s}  ratio")
        for name, t, pname, pt in rows:
            print(
                f"{name:24s} {t:7.2f} {mb / t:7.0f} {args.instances / t:7.0f}   {pname:26s} {pt:7.2f} "
                f"{mb / pt:7.0f}  {t / pt:5.2f}x"
            )
        print(
            "hilum (in process) reads every blob back against its checksum and fsyncs what it writes; "
            "the peers check nothing and sync nothing"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
