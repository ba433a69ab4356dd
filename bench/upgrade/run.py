"""Upgrade time of a first-release data folder (issue 22, part D): backup part and migration part.

Builds once a data folder as the first release left it (``tests/_old_release.py``: the index at
migration ``0001`` only, ``--instances`` instances in studies of ``--per-study`` over patients of
``--per-patient`` studies, each with a real CT blob of 64x64 pixels; blobs are not read by the
upgrade), then ``--repeat`` times: a fresh copy of that folder (index copied with SQLite's backup
API, blobs hard-linked) opened by today's code (``Archive``: backup, then migration to heads),
with the two parts timed by :mod:`hilum.archive.upgrade` itself, plus the whole open's wall time;
and the same through a real ``hilum check --no-checksums`` subprocess (the first start of a verb:
interpreter start, upgrade, a check without reading blobs).  With ``--postgres`` the same index is
made in a PostgreSQL database of a server started as the test suite does (tests/conftest.py) and
upgraded there (dump to JSON lines, then migration).

Prints medians; ``--json`` writes every figure.

Run::

    .venv/bin/python bench/upgrade/run.py [--instances 10000] [--repeat 3] [--postgres] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "app"))

from pydicom.uid import generate_uid  # noqa: E402

from _old_release import insert_0001, make_old_folder, schema_0001  # noqa: E402
from hilum.archive import Archive  # noqa: E402
from hilum.archive.db import make_engine  # noqa: E402
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study  # noqa: E402

ROOT = "1.2.826.0.1.3680043.10.999.22."


def datasets(n: int, per_study: int, per_patient: int):  # type: ignore[no-untyped-def]
    """``n`` CT instances: copies of one generated slice with their own UIDs, patients and studies."""
    base = generate_ct_series(make_study(MUELLER, accession="B-1", seed="bench"), rows=64, columns=64, slices=1)[0]
    study = series = ""
    for i in range(n):
        ds = copy.deepcopy(base)
        if i % per_study == 0:
            study, series = generate_uid(ROOT), generate_uid(ROOT)
        ds.PatientID = f"P{i // (per_study * per_patient):05d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.AccessionNumber = f"A{i // per_study:06d}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(ROOT)
        ds.InstanceNumber = i % per_study + 1
        yield ds


def fresh_copy(template: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    src = sqlite3.connect(template / "index.sqlite")
    dst = sqlite3.connect(dest / "index.sqlite")
    src.backup(dst)
    dst.close()
    src.close()
    shutil.copytree(template / "blobs", dest / "blobs", copy_function=os.link)
    shutil.copy2(template / "hilum.toml", dest / "hilum.toml")


def one_in_process(folder: Path, database_url: str | None = None) -> dict[str, float]:
    start = time.perf_counter()
    with Archive(folder, database_url=database_url) as a:
        report = a.upgraded
        wall = time.perf_counter() - start
        instances = a.stats()["instances"]
    assert report is not None, "no upgrade happened"
    assert instances == report.counts["instances"], (instances, report.counts)  # every row came through
    return {"backup_s": report.backup_seconds, "migrate_s": report.migrate_seconds, "open_wall_s": round(wall, 3)}


def one_cli(folder: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "app")}
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "hilum", "check", "--no-checksums", "--data", str(folder), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - start
    if run.returncode != 0 or "upgraded from schema" not in run.stderr:
        raise SystemExit(f"hilum check failed: {run.stderr[-2000:]}")
    manifest = json.loads(next((folder / "backups").glob("pre-upgrade-*/manifest.json")).read_text())
    return {
        "backup_s": manifest["upgrade"]["backup_seconds"],
        "migrate_s": manifest["upgrade"]["migrate_seconds"],
        "cli_wall_s": round(wall, 3),
    }


def medians(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=10000)
    ap.add_argument("--per-study", type=int, default=100)
    ap.add_argument("--per-patient", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--postgres", action="store_true", help="also on PostgreSQL (a server started here)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hilum-bench-upgrade-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"instances": args.instances}
    try:
        template = work / "template"
        start = time.perf_counter()
        make_old_folder(template, datasets(args.instances, args.per_study, args.per_patient))
        result["index_0001_bytes"] = (template / "index.sqlite").stat().st_size
        print(
            f"first-release folder: {args.instances} instances, index {result['index_0001_bytes'] >> 10} KiB "
            f"(built in {time.perf_counter() - start:.1f} s)"
        )
        rows = []
        for i in range(args.repeat):
            folder = work / f"run{i}"
            fresh_copy(template, folder)
            rows.append(one_in_process(folder))
            print(f"  sqlite in-process run {i + 1}: {rows[-1]}")
            shutil.rmtree(folder)
        result["sqlite_in_process"] = {"runs": rows, "median": medians(rows)}
        rows = []
        for i in range(args.repeat):
            folder = work / f"cli{i}"
            fresh_copy(template, folder)
            rows.append(one_cli(folder))
            print(f"  sqlite hilum check run {i + 1}: {rows[-1]}")
            shutil.rmtree(folder)
        result["sqlite_cli"] = {"runs": rows, "median": medians(rows)}
        if args.postgres:
            result["postgresql"] = postgres(work, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        json.dumps(
            {k: v["median"] if isinstance(v, dict) and "median" in v else v for k, v in result.items()}, indent=2
        )
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def postgres(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    from conftest import PostgresServer

    server = PostgresServer()
    server.start()
    rows = []
    try:
        for i in range(args.repeat):
            name = f"bench_upgrade_{i}"
            with psycopg.connect(
                f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres", autocommit=True
            ) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            url = server.url(name)
            engine = make_engine(url)
            folder = work / f"pg{i}"
            try:
                schema_0001(engine)
                insert_0001(engine, folder / "blobs", datasets(args.instances, args.per_study, args.per_patient))
            finally:
                engine.dispose()
            rows.append(one_in_process(folder, url))
            print(f"  postgresql in-process run {i + 1}: {rows[-1]}")
            shutil.rmtree(folder)
    finally:
        server.stop()
    return {"runs": rows, "median": medians(rows)}


if __name__ == "__main__":
    sys.exit(main())
