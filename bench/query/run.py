"""Query benchmark: study-level queries through ``Archive.query`` over a large synthetic index.

The index (default 20,000 studies / 1,000,000 instances; 5,000 patients, 5
series of 10 instances per study) is synthesised directly with bulk inserts
into the schema's tables — no pixel files — then the four queries a
radiology front end sends most are timed through the one query engine:

- exact Patient ID;
- wildcard patient name + study date range;
- accession number;
- modality (ModalitiesInStudy) + study date range.

Each query runs ``--runs`` times with different values; p50/p95 are printed
for SQLite and PostgreSQL with the number of rows returned.  The SQLite
index is cached between runs (``--cache``).  Not a test: nothing asserts a
time.

    python bench/query/run.py [--studies 20000] [--instances 1000000] [--runs 200] [--no-pg] [--explain]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest"))

from pgserver import PgServer  # noqa: E402

FAMILY = ["SMITH", "JONES", "MUELLER", "GARCIA", "NGUYEN", "IVANOV", "YAMADA", "PAPADOPOULOU", "ROSSI", "DUBOIS",
          "SCHMIDT", "KOWALSKI", "SILVA", "KIM", "LEE", "WANG", "MARTIN", "BROWN", "TAYLOR", "WILSON"]
FAMILY += [f"{a}{b}" for a in ("AB", "BE", "CA", "DO", "EL", "FA", "GO", "HU", "IN", "JA") for b in
           ("RLOW", "NTON", "MPER", "STER", "LLIS", "RRIS", "NNER", "DLEY", "CKET", "WOOD", "FORD", "HAM")]
GIVEN = ["JOHN", "MARY", "ANNA", "PETER", "MARIA", "PAUL", "LINDA", "JAMES", "ELENA", "OLGA", "KENJI", "SOFIA",
         "LUCAS", "EMMA", "NOAH", "MIA", "ADAM", "EVA", "OSCAR", "IDA"]
MODALITIES = [("CT", 30), ("MR", 20), ("CR", 20), ("US", 10), ("DX", 10), ("MG", 5), ("PT", 3), ("NM", 2)]
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def synth_rows(n_studies: int, n_instances: int, seed: int = 7) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(table, rows) chunks for patients, studies, series and instances, in insert order, with pks."""
    rng = random.Random(seed)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    n_patients = max(1, n_studies // 4)
    series_per_study = 5
    per_series = max(1, n_instances // (n_studies * series_per_study))
    patients = []
    for p in range(1, n_patients + 1):
        fam, giv = rng.choice(FAMILY), rng.choice(GIVEN)
        name = f"{fam}^{giv}"
        patients.append(dict(pk=p, patient_id=f"P{p:07d}", issuer="", patient_name=name, pn_a=name, pn_i="",
                             pn_p="", birth_date=f"19{rng.randint(30, 99)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}",
                             sex=rng.choice("MF"), created_at=now))
    yield "patients", patients
    mods = [m for m, _ in MODALITIES]
    weights = [w for _, w in MODALITIES]
    studies, series, instances = [], [], []
    se_pk = i_pk = 0
    for s in range(1, n_studies + 1):
        mod = rng.choices(mods, weights)[0]
        day = rng.randint(0, 3650)
        date = datetime.fromordinal(datetime(2016, 1, 1).toordinal() + day).strftime("%Y%m%d")
        tm = f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}.000000"
        study_uid = f"1.2.826.0.1.3680043.10.1.{s}"
        n_series = series_per_study
        studies.append(dict(pk=s, patient_fk=rng.randint(1, n_patients), study_uid=study_uid, study_date=date,
                            study_time=tm, study_dt=date + tm, accession_number=f"A{s:08d}", study_id=str(s),
                            study_description=f"{mod} EXAM", referring_physician="WHO^DR", ref_pn_a="WHO^DR",
                            modalities=mod, num_series=n_series, num_instances=n_series * per_series,
                            size_bytes=n_series * per_series * 525_000, specific_character_set="ISO_IR 100",
                            created_at=now, updated_at=now))
        for k in range(1, n_series + 1):
            se_pk += 1
            series.append(dict(pk=se_pk, study_fk=s, series_uid=f"{study_uid}.{k}", modality=mod, series_number=k,
                               series_description=f"{mod} series {k}", body_part="CHEST", series_date=date,
                               series_time=tm, pps_start_date=date, pps_start_time=tm,
                               frame_of_reference_uid=f"{study_uid}.0", num_instances=per_series, created_at=now))
            for n in range(1, per_series + 1):
                i_pk += 1
                sop = f"{study_uid}.{k}.{n}"
                instances.append(dict(pk=i_pk, series_fk=se_pk, sop_uid=sop, sop_class_uid=CT_IMAGE,
                                      instance_number=n, transfer_syntax=EXPLICIT, number_of_frames=None, rows=512,
                                      columns=512, content_date=date, content_time=tm,
                                      blob_key=hashlib.sha1(sop.encode()).hexdigest(), size=525_000,
                                      checksum="0" * 64, source_aet="MODALITY", origin="bench", received_at=now))
        if len(instances) >= 50_000:
            yield "studies", studies
            yield "series", series
            yield "instances", instances
            studies, series, instances = [], [], []
    yield "studies", studies
    yield "series", series
    yield "instances", instances


def build(url: str | None, data_dir: Path, n_studies: int, n_instances: int) -> tuple[Any, float]:
    """An archive whose index holds the synthetic rows; returns (archive, seconds)."""
    from sqlalchemy import insert, text

    from hilum.archive import Archive
    from hilum.archive.schema import instances, patients, series, studies

    tables = {"patients": patients, "studies": studies, "series": series, "instances": instances}
    archive = Archive(data_dir, database_url=url)
    t = time.perf_counter()
    with archive.engine.begin() as conn:
        if archive.dialect == "postgresql":
            raw = conn.connection.dbapi_connection
            assert raw is not None
            for name, rows in synth_rows(n_studies, n_instances):
                if not rows:
                    continue
                cols = list(rows[0])
                with raw.cursor().copy(f"COPY {name} ({', '.join(cols)}) FROM STDIN") as cp:  # type: ignore[attr-defined]
                    for r in rows:
                        cp.write_row([r[c] for c in cols])
        else:
            for name, rows in synth_rows(n_studies, n_instances):
                if rows:
                    conn.execute(insert(tables[name]), rows)
    with archive.engine.begin() as conn:
        if archive.dialect == "postgresql":
            for name in tables:
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{name}', 'pk'), "
                                  f"(SELECT max(pk) FROM {name}))"))
    with archive.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    return archive, time.perf_counter() - t


def queries(n_studies: int, rng: random.Random) -> dict[str, Callable[[], dict[str, str]]]:
    n_patients = max(1, n_studies // 4)

    def month() -> str:
        y, m = rng.randint(2016, 2025), rng.randint(1, 12)
        return f"{y}{m:02d}01-{y}{m:02d}28"

    def year() -> str:
        y = rng.randint(2016, 2025)
        return f"{y}0101-{y}1231"

    return {
        "exact PatientID": lambda: {"PatientID": f"P{rng.randint(1, n_patients):07d}"},
        "name* + date range": lambda: {"PatientName": rng.choice(FAMILY)[:3] + "*",
                                       "StudyDate": year()},
        "accession": lambda: {"AccessionNumber": f"A{rng.randint(1, n_studies):08d}"},
        "modality + date range": lambda: {"ModalitiesInStudy": rng.choice(["CT", "MR", "US", "MG"]),
                                          "StudyDate": month()},
    }


def time_queries(archive: Any, n_studies: int, runs: int, explain: bool) -> list[tuple[str, float, float, float]]:
    rng = random.Random(1)
    out = []
    for label, make in queries(n_studies, rng).items():
        times, counts = [], []
        for i in range(runs + 5):
            ident = make()
            t = time.perf_counter()
            rows = archive.query("STUDY", ident)
            dt = (time.perf_counter() - t) * 1000
            if i >= 5:  # the first few warm caches
                times.append(dt)
                counts.append(len(rows))
        times.sort()
        p50 = statistics.median(times)
        p95 = times[min(len(times) - 1, int(round(0.95 * len(times))) - 1)]
        out.append((label, p50, p95, statistics.mean(counts)))
        if explain:
            explain_query(archive, make())
    return out


def explain_query(archive: Any, ident: dict[str, str]) -> None:
    from hilum.archive.query import build_select

    stmt, _ = build_select("STUDY", ident, dialect=archive.dialect)
    sql = str(stmt.compile(archive.engine, compile_kwargs={"literal_binds": True}))
    prefix = "EXPLAIN QUERY PLAN " if archive.dialect == "sqlite" else "EXPLAIN "
    with archive.engine.connect() as conn:
        plan = conn.exec_driver_sql(prefix + sql).all()
    print(f"    {ident}:")
    for row in plan:
        print("      " + " | ".join(str(x) for x in row))


def report(label: str, results: list[tuple[str, float, float, float]]) -> None:
    print(f"  {label}")
    print(f"    {'query':<24}{'p50 ms':>9}{'p95 ms':>9}{'rows':>8}")
    for q, p50, p95, rows in results:
        print(f"    {q:<24}{p50:9.2f}{p95:9.2f}{rows:8.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=20_000)
    ap.add_argument("--instances", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=200, help="timed queries of each kind (default 200)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "hilum-bench-query",
                    help="where the SQLite index is kept between runs")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached SQLite index")
    ap.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    ap.add_argument("--no-sqlite", action="store_true", help="skip SQLite")
    ap.add_argument("--pg-port", type=int, default=55433)
    ap.add_argument("--explain", action="store_true", help="print each query's plan")
    args = ap.parse_args()

    from hilum.archive import Archive

    print(f"index: {args.studies} studies, {args.instances} instances, {args.studies // 4} patients; "
          f"{args.runs} queries of each kind", flush=True)
    if not args.no_sqlite:
        data = args.cache / f"{args.studies}-{args.instances}"
        marker = data / ".complete"
        if args.rebuild or not marker.exists():
            shutil.rmtree(data, ignore_errors=True)
            archive, secs = build(None, data, args.studies, args.instances)
            marker.write_text("ok")
            print(f"  SQLite index built in {secs:.0f} s", flush=True)
        else:
            archive = Archive(data)
        size = (data / "index.sqlite").stat().st_size / 1e6
        print(f"  SQLite index {size:.0f} MB: {archive.stats()}", flush=True)
        report("SQLite", time_queries(archive, args.studies, args.runs, args.explain))
        archive.close()

    if not args.no_pg:
        with PgServer(args.pg_port) as pg, tempfile.TemporaryDirectory() as tmp:
            archive, secs = build(pg.create_db(), Path(tmp), args.studies, args.instances)
            print(f"  PostgreSQL index built in {secs:.0f} s: {archive.stats()}", flush=True)
            report("PostgreSQL", time_queries(archive, args.studies, args.runs, args.explain))
            archive.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
