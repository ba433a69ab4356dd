"""``Archive.ingest_many``'s pipeline (hilum.archive.batch): the same outcome as serial
``ingest`` — statuses, rows, counters, events — on threads and on worker processes,
under both duplicate policies, with cancel, on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest

from hilum.archive import Archive, ArchiveEvent, batch
from hilum.dicom.generator import write_ct_set

SAMPLES = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_truncated.dcm", "README.txt", "rtplan.dcm",
           "JPEG2000.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "no_meta.dcm")


@pytest.fixture(params=["threads", "processes"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the thread pipeline and with worker processes (forced even for few sources)."""
    monkeypatch.setattr(batch, "MODE", request.param)
    monkeypatch.setattr(batch, "BRIDGES", 0)  # every instance through a worker process, none bridged
    return str(request.param)


@pytest.fixture
def sources(tmp_path: Path, pydicom_files: Path) -> list[Any]:
    """Real files, a repeated path, a generated series, and bytes and a Dataset as sources."""
    ct = write_ct_set(tmp_path / "ct", 6, rows=32, columns=32, series_size=3, patients=1, seed=11)
    files: list[Any] = [pydicom_files / n for n in SAMPLES] + ct + [pydicom_files / "CT_small.dcm"]
    files.append((pydicom_files / "waveform_ecg.dcm").read_bytes())
    files.append(pydicom.dcmread(pydicom_files / "rtstruct.dcm", force=True))
    return files


def outcome(archive: Archive, results: list[Any]) -> dict[str, Any]:
    return {
        "results": [(r.status, r.code, r.sop_instance_uid) for r in results],
        "stats": archive.stats(),
        "studies": [{k: v for k, v in r.items()} for r in archive.query("STUDY", {})],
        "series": archive.query("SERIES", {}),
        "images": [{k: v for k, v in r.items() if k != "_blob_key"} for r in archive.query("IMAGE", {})],
    }


def test_same_outcome_as_serial_ingest(mode: str, sources: list[Any], tmp_path: Path) -> None:
    with Archive(tmp_path / "serial") as a:
        serial = outcome(a, [a.ingest(s) for s in sources])
    events: list[ArchiveEvent] = []
    progressed: list[str] = []
    with Archive(tmp_path / "many") as b:
        b.subscribe(events.append)
        results = b.ingest_many(sources, workers=2, progress=lambda r: progressed.append(r.status))
        many = outcome(b, results)
        assert b.check().clean
        # Events come after commit: each names an instance that is already readable.
        for e in events:
            assert b.path(e.uid).exists()
    assert many == serial
    statuses = [r[0] for r in many["results"]]
    assert statuses.count("stored") == 12 and statuses.count("duplicate") == 3 and statuses.count("rejected") == 3
    # The first of two files with one SOP Instance UID is the one stored, as in serial order.
    assert [r[0] for r in many["results"][1:3]] == ["stored", "duplicate"]
    assert sorted(progressed) == sorted(statuses)
    assert [e.kind for e in events] == ["stored"] * 12
    assert sorted(e.uid for e in events) == sorted(r[2] for r in many["results"] if r[0] == "stored")


def test_overwrite_policy_replaces(tmp_path: Path, pydicom_files: Path) -> None:
    ct = write_ct_set(tmp_path / "ct", 4, rows=32, columns=32, series_size=2, patients=1, seed=12)
    with Archive(tmp_path / "data", duplicate_policy="overwrite") as a:
        a.ingest(ct[0])
        events: list[ArchiveEvent] = []
        a.subscribe(events.append)
        results = a.ingest_many([ct[0], ct[1], ct[1], ct[2], ct[3], ct[2]], workers=2)
        assert [r.status for r in results] == ["replaced", "stored", "replaced", "stored", "stored", "replaced"]
        assert [e.kind for e in events] == [r.status for r in results]
        stats = a.stats()
        assert (stats["studies"], stats["series"], stats["instances"]) == (2, 2, 4)
        assert sorted(r["NumberOfStudyRelatedInstances"] for r in a.query("STUDY", {})) == [2, 2]
        assert a.check().clean


def test_cancel_stops_before_the_next_and_leaves_no_temporaries(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # "threads": in "auto" the pipeline first looks ahead (to choose threads or processes), which
    # would run this generator's side effect early.
    monkeypatch.setattr(batch, "MODE", "threads")
    ct = write_ct_set(tmp_path / "ct", 40, rows=32, columns=32, seed=13)
    cancel = threading.Event()

    def gen() -> Any:
        for i, p in enumerate(ct):
            if i == 10:
                cancel.set()  # as if the user pressed Cancel while the 11th file was being read
            yield p

    with Archive(tmp_path / "data") as a:
        results = a.ingest_many(gen(), workers=2, cancel=cancel)
        assert [r.status for r in results] == ["stored"] * 10 + ["rejected"] * 30
        assert {r.code for r in results[10:]} == {"cancelled"}
        assert [r.source for r in results[10:]] == [str(p) for p in ct[10:]]
        assert a.stats()["instances"] == 10
        assert a.check().clean  # no temporaries, no orphans


def test_lazy_sources_are_pulled_a_window_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "MODE", "threads")
    ct = write_ct_set(tmp_path / "ct", 200, rows=16, columns=16, seed=14)
    pulled = 0
    first_result_at: list[int] = []

    def gen() -> Any:
        nonlocal pulled
        for p in ct:
            pulled += 1
            yield p.read_bytes()

    with Archive(tmp_path / "data") as a:
        results = a.ingest_many(gen(), workers=2, progress=lambda r: first_result_at.append(pulled))
        assert [r.status for r in results] == ["stored"] * 200
    # Read as the work goes (32 in flight with 2 workers), not the whole list first.
    assert first_result_at[0] < 150


@pytest.mark.postgres
def test_postgresql_worker_processes(pg_url: str, tmp_path: Path, pydicom_files: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch, "MODE", "processes")
    monkeypatch.setattr(batch, "BRIDGES", 0)
    ct = write_ct_set(tmp_path / "ct", 8, rows=32, columns=32, series_size=4, seed=15)
    with Archive(tmp_path / "data", database_url=pg_url) as a:
        first = a.ingest_many([*ct, pydicom_files / "CT_small.dcm"], workers=2)
        assert [r.status for r in first] == ["stored"] * 9
        again = a.ingest_many([*ct, pydicom_files / "MR_truncated.dcm"], workers=2)
        assert [r.status for r in again] == ["duplicate"] * 8 + ["rejected"]
        assert a.stats()["instances"] == 9
        assert sorted(r["NumberOfStudyRelatedInstances"] for r in a.query("STUDY", {})) == [1, 4, 4]
        assert a.check().clean
    shutil.rmtree(tmp_path / "data")


def test_a_dying_worker_process_does_not_stop_the_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill the worker processes mid-import: the pool breaks (BrokenProcessPool) and what it held,
    and everything after, is served in-process; nothing is lost."""
    import os
    import signal

    monkeypatch.setattr(batch, "MODE", "processes")
    monkeypatch.setattr(batch, "BRIDGES", 0)
    ct = write_ct_set(tmp_path / "ct", 60, rows=32, columns=32, seed=16)
    killed: list[int] = []

    def children(parent: int) -> list[tuple[int, bytes]]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append((int(pid), cmd))
        return found

    def workers() -> list[int]:
        """The pool's worker processes: forked by the fork server this process started."""
        servers = [pid for pid, cmd in children(os.getpid()) if b"forkserver" in cmd]
        return [pid for server in servers for pid, _ in children(server)]

    def progress(_r: Any) -> None:
        if not killed:
            for pid in workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    with Archive(tmp_path / "data") as a:
        results = a.ingest_many(ct, workers=2, progress=progress)
        assert killed
        assert [r.status for r in results] == ["stored"] * 60
        report = a.check()
        # A worker killed in the middle of a write may leave its temporary (``check --repair`` removes it).
        assert not (report.missing or report.orphans or report.corrupt) and len(report.temporaries) <= 2
    assert workers() == []


def test_more_threads_than_the_connection_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The early duplicate check borrows a connection per call: 24 threads share a pool of 15."""
    monkeypatch.setattr(batch, "MODE", "threads")
    files = write_ct_set(tmp_path / "ct", 60, rows=16, columns=16, series_size=20, patients=1, seed=5)
    with Archive(tmp_path / "a") as a:
        first = a.ingest_many(files[:30], workers=24)
        again = a.ingest_many(files, workers=24)
    assert [r.status for r in first] == ["stored"] * 30
    assert [r.status for r in again] == ["duplicate"] * 30 + ["stored"] * 30


def test_batch_blobs_are_synced_before_indexing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers write blobs without fsync; each is fsynced as it arrives and waited for before its
    batch is indexed, and a blob that cannot be synced rejects only its own instance."""
    monkeypatch.setattr(batch, "MODE", "threads")
    files = write_ct_set(tmp_path / "ct", 8, rows=16, columns=16, series_size=8, patients=1, seed=6)
    synced: list[str] = []
    with Archive(tmp_path / "a") as a:
        real = a.blobs.sync_later

        def spy(temp: str) -> Any:
            synced.append(temp)
            return real(temp)

        monkeypatch.setattr(a.blobs, "sync_later", spy)
        real_prepare = batch.prepare
        victim = str(files[3])

        def prepare(src: Any, **kw: Any) -> Any:
            out = real_prepare(src, **kw)
            if str(src) == victim:  # this one's temporary is lost before its fsync
                Path(out.temp).unlink()
            return out

        monkeypatch.setattr(batch, "prepare", prepare)
        results = a.ingest_many(files, workers=2)
        assert a.check().clean
    assert len(synced) == 8
    assert [r.status for r in results].count("stored") == 7
    bad = results[3]
    assert bad.status == "rejected" and bad.code == "storage-full"


def _small_instance(patient: str, name: str, study: str, series: str, sop: str, modality: str) -> bytes:
    """A tiny instance (4x4 pixels) with the given patient, study, series and modality."""
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = patient, name, "F" if name else "", "19800101"
    ds.StudyDate, ds.StudyTime, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "20250101", "1200", modality, 1, 1
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.zeros(16, dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_many_small_studies_in_batches_as_serial(db: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches full of new patients, studies and series (indexed a table at a time) give the rows,
    counters, ModalitiesInStudy and demographics that serial ingest gives."""
    monkeypatch.setattr(batch, "MODE", "threads")
    monkeypatch.setattr(batch, "BATCH_SIZE", 16)
    root = "1.2.826.0.1.3680043.10.543"
    srcs: list[Any] = []
    for i in range(60):  # one-instance studies; every third patient has two
        srcs.append(_small_instance(f"P{i // 3 * 2 + i % 2}", f"Small^{i}", f"{root}.1.{i}", f"{root}.2.{i}",
                                    f"{root}.3.{i}", ("CR", "DX", "CT")[i % 3]))
    # A patient first seen without a name, then named; a study whose series arrive far apart,
    # in two modalities; a copy of an instance already sent.
    srcs.insert(5, _small_instance("NONAME", "", f"{root}.1.100", f"{root}.2.100", f"{root}.3.100", "MR"))
    srcs.append(_small_instance("NONAME", "Late^Name", f"{root}.1.101", f"{root}.2.101", f"{root}.3.101", "MR"))
    srcs.insert(2, _small_instance("P0", "Small^0", f"{root}.1.0", f"{root}.2.200", f"{root}.3.200", "MR"))
    srcs.append(_small_instance("P0", "Small^0", f"{root}.1.0", f"{root}.2.201", f"{root}.3.201", "PR"))
    srcs.append(srcs[10])

    def url(name: str) -> str | None:
        if db != "postgres":
            return None
        import psycopg

        server = request.getfixturevalue("pg_server")
        name = f"{request.getfixturevalue('pg_url').rsplit('/', 1)[1]}_{name}"
        with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return str(server.url(name))

    def outcome_with_patients(a: Archive, results: list[Any]) -> dict[str, Any]:
        return {**outcome(a, results), "patients": a.query("PATIENT", {})}

    with Archive(tmp_path / "serial", database_url=url("serial")) as a:
        serial = outcome_with_patients(a, [a.ingest(s) for s in srcs])
    with Archive(tmp_path / "many", database_url=url("many")) as b:
        many = outcome_with_patients(b, b.ingest_many(srcs, workers=2))
        assert b.check().clean
    assert many == serial
    assert [r[0] for r in many["results"]].count("duplicate") == 1
    by_id = {p["PatientID"]: p for p in many["patients"]}
    assert by_id["NONAME"]["PatientName"] == "Late^Name" and by_id["NONAME"]["NumberOfPatientRelatedStudies"] == 2
    [mixed] = [s for s in many["studies"] if s["StudyInstanceUID"] == f"{root}.1.0"]
    assert mixed["ModalitiesInStudy"] == "CR\\MR\\PR" and mixed["NumberOfStudyRelatedSeries"] == 3


def _children_named(parent: int, word: bytes) -> list[int]:
    import os

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and word in cmd:
            found.append(int(pid))
    return found


@pytest.mark.parametrize("guarded", [False, True])
def test_worker_processes_never_run_an_unguarded_main_again(guarded: bool, tmp_path: Path) -> None:
    """Workers import the caller's __main__ (multiprocessing's rule for every start method but fork):
    a script whose top level is guarded gets worker processes; one that is not is never run again in
    a worker — its import is served by threads — and still imports everything."""
    import subprocess
    import sys

    files = write_ct_set(tmp_path / "ct", 6, rows=16, columns=16, seed=31)
    body = '''
import os, sys
from pathlib import Path
from hilum.archive import Archive, batch
batch.MODE, batch.BRIDGES = "processes", 0
with Archive(sys.argv[1]) as a:
    results = a.ingest_many(sys.argv[2:], workers=2)
servers = [p for p in os.listdir("/proc") if p.isdigit() and b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes()
           and int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid()]
print("RESULT", sorted({r.status for r in results}), batch.main_module_safe(), bool(servers))
'''
    script = tmp_path / "script.py"
    if guarded:
        script.write_text('if __name__ == "__main__":\n    print("TOP", flush=True)\n'
                          + "".join(f"    {line}\n" for line in body.strip().splitlines()))
    else:
        script.write_text('print("TOP", flush=True)\n' + body)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "data"), *map(str, files)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    top = [line for line in lines if line == "TOP"]
    [result] = [line for line in lines if line.startswith("RESULT")]
    assert top == ["TOP"]  # workers imported the guarded script as __mp_main__: nothing ran again
    assert result == ("RESULT ['stored'] True True" if guarded else "RESULT ['stored'] False False")
