"""The archive core: one ingest call, one query engine, delete, check — on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from hilum.archive import Archive


def make_instance(
    *,
    patient_id: str = "P1",
    name: str = "Doe^John",
    charset: str | list[str] | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "CT",
    study_date: str = "20240115",
    study_time: str = "101500",
    accession: str = "ACC1",
    number: int = 1,
    description: str = "CT HEAD",
) -> bytes:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyDescription = description
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(16, dtype=np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def arch(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    a = Archive(tmp_path / "data", database_url=url)
    yield a
    a.close()


def test_ingest_stores_and_indexes(arch: Archive):
    data = make_instance()
    res = arch.ingest(data)
    assert res.status == "stored" and res.ok
    ds = pydicom.dcmread(arch.path(res.sop_instance_uid))
    assert ds.SOPInstanceUID == res.sop_instance_uid
    assert arch.read(res.sop_instance_uid) == data  # stored as received
    [study] = arch.query("STUDY", {"PatientID": "P1"})
    assert study["NumberOfStudyRelatedInstances"] == 1
    assert study["NumberOfStudyRelatedSeries"] == 1
    assert study["ModalitiesInStudy"] == "CT"
    assert arch.stats()["instances"] == 1


def test_duplicates_ignored_by_default_and_overwrite_policy(arch: Archive, tmp_path: Path):
    data = make_instance(sop_uid="1.2.3.4.5")
    assert arch.ingest(data).status == "stored"
    other = make_instance(sop_uid="1.2.3.4.5", description="CHANGED")
    assert arch.ingest(other).status == "duplicate"
    assert arch.read("1.2.3.4.5") == data
    over = Archive(arch.data_dir, database_url=arch.database_url, duplicate_policy="overwrite")
    try:
        assert over.ingest(other).status == "replaced"
        assert over.read("1.2.3.4.5") == other
        assert over.stats()["instances"] == 1
    finally:
        over.close()


def test_rejections_carry_reasons_and_change_nothing(arch: Archive, tmp_path: Path, pydicom_files: Path):
    good = arch.ingest(make_instance())
    before = arch.stats()
    not_dicom = arch.ingest(b"hello, this is not DICOM" * 10)
    assert not_dicom.status == "rejected" and not_dicom.code == "not-dicom"
    full = make_instance()
    truncated = arch.ingest(full[: len(full) - 10])
    assert truncated.code == "truncated"
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    del ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf)
    missing = arch.ingest(buf.getvalue())
    assert missing.code == "missing-uid" and "SOPInstanceUID" in missing.reason
    mismatch = arch.ingest(make_instance(), expected_sop_class=MRImageStorage)
    assert mismatch.code == "sop-class-mismatch"
    real_truncated = arch.ingest(pydicom_files / "MR_truncated.dcm")
    assert real_truncated.code == "truncated"
    assert arch.stats() == before
    assert arch.check().clean
    assert arch.read(good.sop_instance_uid)


def test_query_matching_through_the_index(arch: Archive):
    st1, st2, st3 = generate_uid(), generate_uid(), generate_uid()
    arch.ingest(make_instance(patient_id="A1", name="Smith^John", study_uid=st1, study_date="20240110",
                              study_time="0930", accession="X1"))
    arch.ingest(make_instance(patient_id="A1", name="Smith^John", study_uid=st1, modality="MR",
                              study_date="20240110", accession="X1"))
    arch.ingest(make_instance(patient_id="B2", name="Smythe^Anna", study_uid=st2, study_date="20240301",
                              study_time="1415", accession="X2", modality="MR"))
    arch.ingest(make_instance(patient_id="C3", name="Müller^Jürgen", charset="ISO_IR 100", study_uid=st3,
                              study_date="20231201", accession="X3"))

    def uids(level: str, **keys: object) -> set[str]:
        return {r["StudyInstanceUID"] for r in arch.query(level, keys)}

    assert uids("STUDY") == {st1, st2, st3}
    assert uids("STUDY", PatientID="A1") == {st1}
    assert uids("STUDY", PatientName="sm*") == {st1, st2}
    assert uids("STUDY", PatientName="SM?TH*") == {st1, st2}
    assert uids("STUDY", PatientName="smith^john") == {st1}
    assert uids("STUDY", PatientName="müller*") == {st3}
    assert uids("STUDY", StudyDate="20240101-") == {st1, st2}
    assert uids("STUDY", StudyDate="-20240110") == {st1, st3}
    assert uids("STUDY", StudyDate="20240101-20240228") == {st1}
    assert uids("STUDY", AccessionNumber="X2") == {st2}
    assert uids("STUDY", ModalitiesInStudy="MR") == {st1, st2}
    assert uids("STUDY", ModalitiesInStudy="MR", StudyDate="20240201-") == {st2}
    # Matched on the study row's own ModalitiesInStudy: whole values only, case-sensitive,
    # LIKE's own wildcards taken literally; lists and DICOM wildcards too.
    assert uids("STUDY", ModalitiesInStudy="CT") == {st1, st3}
    assert uids("STUDY", ModalitiesInStudy="US\\MR") == {st1, st2}
    assert uids("STUDY", ModalitiesInStudy=["CT", "US"]) == {st1, st3}
    for no_match in ("M", "R", "mr", "C_", "%"):
        assert uids("STUDY", ModalitiesInStudy=no_match) == set(), no_match
    assert uids("STUDY", ModalitiesInStudy="M?") == {st1, st2}
    assert uids("STUDY", ModalitiesInStudy="*T") == {st1, st3}
    assert uids("STUDY", StudyInstanceUID=f"{st1}\\{st3}") == {st1, st3}
    assert uids("STUDY", Modality="CT") == {st1, st3}  # a series-level key at study level
    # Combined date+time range (PS3.4 C.2.2.2.5.2): 2024-01-10 10:00 to 2024-03-01 14:00.
    assert uids("STUDY", StudyDate="20240110-20240301", StudyTime="1000-1400") == set()
    assert uids("STUDY", StudyDate="20240110-20240301", StudyTime="0900-1500") == {st1, st2}
    assert uids("STUDY", StudyTime="1400-1500") == {st2}
    [mixed] = arch.query("STUDY", {"StudyInstanceUID": st1})
    assert mixed["ModalitiesInStudy"] == "CT\\MR"
    assert mixed["NumberOfStudyRelatedSeries"] == 2
    assert {r["Modality"] for r in arch.query("SERIES", {"StudyInstanceUID": st1})} == {"CT", "MR"}
    assert len(arch.query("IMAGE", {"StudyInstanceUID": st1})) == 2
    [pat] = arch.query("PATIENT", {"PatientID": "A1"})
    assert pat["NumberOfPatientRelatedStudies"] == 1 and pat["NumberOfPatientRelatedInstances"] == 2
    assert arch.query("STUDY", {"PatientName": "Müller*"})[0]["PatientName"] == "Müller^Jürgen"
    # Paging and ordering.
    page1 = arch.query("STUDY", {}, limit=2, order_by=["StudyDate"])
    page2 = arch.query("STUDY", {}, limit=2, offset=2, order_by=["StudyDate"])
    assert [r["StudyInstanceUID"] for r in page1 + page2] == [st3, st1, st2]
    assert arch.count("STUDY", {"PatientName": "S*"}) == 2
    with pytest.raises(ValueError):
        arch.query("STUDY", {"StudyDate": "not-a-date"})
    with pytest.raises(ValueError):
        arch.query("WHATEVER", {})


def test_character_sets_decoded_into_the_index(arch: Archive, pydicom_files: Path):
    arch.ingest(make_instance(patient_id="J1", charset=["", "ISO 2022 IR 87"],
                              name="Yamada^Tarou=山田^太郎=やまだ^たろう"))
    arch.ingest(make_instance(patient_id="G1", charset="ISO_IR 192", name="Γιάννης^Παπαδόπουλος"))
    [r] = arch.query("STUDY", {"PatientName": "山田*"})
    assert r["PatientName"] == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    [r] = arch.query("STUDY", {"PatientName": "γιάννης*"})
    assert r["PatientID"] == "G1"
    # A real third-party file in ISO 2022 IR 87 (pydicom's charset test files).
    res = arch.ingest(pydicom_files.parent / "charset_files" / "chrH31.dcm")
    assert res.ok
    [r] = arch.query("STUDY", {"StudyInstanceUID": res.study_instance_uid})
    assert "山田" in r["PatientName"]


def test_real_third_party_files(arch: Archive, pydicom_files: Path):
    names = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm",
             "rtdose.dcm", "rtplan.dcm"]
    results = [arch.ingest(pydicom_files / n) for n in names]
    assert all(r.ok for r in results), [(r.source, r.reason) for r in results if not r.ok]
    rows = arch.query("IMAGE", {"SOPInstanceUID": [r.sop_instance_uid for r in results]})
    by_uid = {r["SOPInstanceUID"]: r for r in rows}
    assert by_uid[results[5].sop_instance_uid]["NumberOfFrames"] == 15
    assert by_uid[results[2].sop_instance_uid]["TransferSyntaxUID"] == "1.2.840.10008.1.2.4.91"


def test_delete_removes_rows_and_blobs(arch: Archive):
    st = generate_uid()
    se1, se2 = generate_uid(), generate_uid()
    r1 = arch.ingest(make_instance(study_uid=st, series_uid=se1))
    r2 = arch.ingest(make_instance(study_uid=st, series_uid=se2, modality="MR"))
    other = arch.ingest(make_instance(patient_id="P2"))
    p1 = arch.path(r1.sop_instance_uid)
    assert arch.delete("SERIES", se1) == 1
    assert not p1.exists()
    [study] = arch.query("STUDY", {"StudyInstanceUID": st})
    assert study["ModalitiesInStudy"] == "MR" and study["NumberOfStudyRelatedInstances"] == 1
    assert arch.query("STUDY", {"StudyInstanceUID": st, "ModalitiesInStudy": "CT"}) == []
    assert len(arch.query("STUDY", {"StudyInstanceUID": st, "ModalitiesInStudy": "MR"})) == 1
    assert arch.delete("STUDY", st) == 1
    assert arch.query("STUDY", {"StudyInstanceUID": st}) == []
    assert arch.path(other.sop_instance_uid).exists()
    assert arch.delete("PATIENT", "P2") == 1
    assert arch.stats()["instances"] == 0
    from hilum.errors import NotFound

    with pytest.raises(NotFound):
        arch.delete("STUDY", st)
    assert r2.ok


def test_concurrent_ingest_from_many_threads(arch: Archive):
    study = generate_uid()
    series = generate_uid()
    payloads = [make_instance(study_uid=study, series_uid=series, number=i) for i in range(60)]
    payloads += [make_instance(patient_id=f"T{i}") for i in range(20)]
    results: list = []
    lock = threading.Lock()

    def worker(chunk: list[bytes]) -> None:
        for p in chunk:
            r = arch.ingest(p, origin="dimse")
            with lock:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(payloads[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results].count("stored") == 80
    [row] = arch.query("STUDY", {"StudyInstanceUID": study})
    assert row["NumberOfStudyRelatedInstances"] == 60 and row["NumberOfStudyRelatedSeries"] == 1
    assert arch.stats()["instances"] == 80
    assert arch.check().clean


def test_events_emitted_once_per_change(arch: Archive):
    seen = []
    unsubscribe = arch.subscribe(seen.append)
    r = arch.ingest(make_instance())
    arch.ingest(arch.read(r.sop_instance_uid))  # duplicate: no event
    arch.delete("IMAGE", r.sop_instance_uid)
    unsubscribe()
    arch.ingest(make_instance())
    assert [(e.kind, e.uid) for e in seen] == [("stored", r.sop_instance_uid), ("deleted", r.sop_instance_uid)]


def test_check_and_repair(arch: Archive):
    keep = arch.ingest(make_instance())
    gone = arch.ingest(make_instance())
    bad = arch.ingest(make_instance())
    arch.path(gone.sop_instance_uid).unlink()
    p = arch.path(bad.sop_instance_uid)
    p.write_bytes(p.read_bytes()[:-4] + b"XXXX")
    orphan = make_instance()
    orphan_uid = pydicom.dcmread(io.BytesIO(orphan)).SOPInstanceUID
    key = arch.blobs.key_for(orphan_uid)
    arch.blobs.path(key).parent.mkdir(parents=True, exist_ok=True)
    arch.blobs.path(key).write_bytes(orphan)
    (arch.blobs.tmp / "stale.part").write_bytes(b"x")
    report = arch.check()
    assert report.missing == [gone.sop_instance_uid]
    assert report.corrupt == [bad.sop_instance_uid]
    assert report.orphans == [key]
    assert len(report.temporaries) == 1
    fixed = arch.check(repair=True)
    assert len(fixed.repaired) >= 4
    after = arch.check()
    assert after.clean, after
    uids = {r["SOPInstanceUID"] for r in arch.query("IMAGE", {})}
    assert uids == {keep.sop_instance_uid, orphan_uid}
    assert (arch.data_dir / "quarantine").exists()


def _rows(a: Archive) -> dict[str, list[tuple]]:  # type: ignore[type-arg]
    from sqlalchemy import select

    from hilum.archive.schema import instances, series, studies

    skip = {"pk", "received_at", "updated_at", "created_at", "series_fk", "study_fk", "patient_fk"}
    out = {}
    with a.engine.connect() as conn:
        for t, key in ((instances, "sop_uid"), (series, "series_uid"), (studies, "study_uid")):
            cols = [c for c in t.c if c.name not in skip]
            out[t.name] = sorted(tuple(r) for r in conn.execute(select(*cols).order_by(t.c[key])))
    return out


def test_known_series_fast_index_writes_what_the_general_way_writes(arch: Archive, tmp_path: Path):
    """Instances of a series already indexed take the cached keys (and, with index_writer "fast",
    the compiled statements on the DB-API cursor); the rows (and the study/series counters, sizes
    and timestamps) are those of SQLAlchemy Core with every row looked up again."""
    from datetime import datetime

    study, series_uid = generate_uid(), generate_uid()
    blobs = [make_instance(study_uid=study, series_uid=series_uid, number=i) for i in range(6)]
    for data in blobs:
        assert arch.ingest(data).status == "stored"
    assert arch.ingest(blobs[3]).status == "duplicate"  # found by the hot SELECT
    general = Archive(tmp_path / "general", index_writer="sqlalchemy")
    try:
        for data in blobs:
            general.writer.forget()  # every instance looks its rows up
            assert general.ingest(data).status == "stored"
        assert _rows(arch) == _rows(general)
    finally:
        general.close()
    [row] = arch.query("STUDY", {"StudyInstanceUID": study})
    assert row["NumberOfStudyRelatedInstances"] == 6
    with arch.engine.connect() as conn:
        from sqlalchemy import select

        from hilum.archive.schema import instances, studies

        received = conn.execute(select(instances.c.received_at)).scalars().all()
        updated = conn.execute(select(studies.c.updated_at)).scalar_one()
    assert all(isinstance(t, datetime) for t in received) and isinstance(updated, datetime)
    assert arch.check().clean


def test_stale_series_cache_falls_back_to_the_general_way(arch: Archive, tmp_path: Path):
    """Another node sharing the database deleted the series this one has cached."""
    study, series_uid = generate_uid(), generate_uid()
    arch.ingest(make_instance(study_uid=study, series_uid=series_uid, number=1))
    other = Archive(arch.data_dir, database_url=arch.database_url)
    try:
        assert other.delete("SERIES", series_uid) == 1
    finally:
        other.close()
    result = arch.ingest(make_instance(study_uid=study, series_uid=series_uid, number=2))
    assert result.status == "stored", result
    [row] = arch.query("STUDY", {"StudyInstanceUID": study})
    assert row["NumberOfStudyRelatedInstances"] == 1
    assert arch.stats()["instances"] == 1


def test_one_statement_per_query_shape_serves_every_value(arch: Archive):
    """The engine builds the SELECT of a query shape once; other values bind into it."""
    from hilum.archive import query as q

    uids = {}
    for pid, date, mod in (("S1", "20240105", "CT"), ("S2", "20240210", "MR"), ("S3", "20240315", "CT")):
        r = arch.ingest(make_instance(patient_id=pid, name=f"Shape^{pid}", study_date=date, modality=mod))
        uids[pid] = r.study_instance_uid

    def found(**keys: object) -> set[str]:
        return {r["StudyInstanceUID"] for r in arch.query("STUDY", keys)}

    found(PatientID="S1")  # the shape is built (if no earlier test built it)
    before = q._statement.cache_info()
    assert found(PatientID="S2") == {uids["S2"]}
    assert found(PatientID="S3") == {uids["S3"]}
    assert found(PatientID="nobody") == set()
    after = q._statement.cache_info()
    assert after.hits == before.hits + 3 and after.misses == before.misses
    # Ranges with other bounds, lists of other lengths, patterns: each its own values.
    assert found(PatientName="shape*", StudyDate="20240201-") == {uids["S2"], uids["S3"]}
    assert found(PatientName="shape*", StudyDate="20240301-") == {uids["S3"]}
    assert found(PatientName="shape^s1", StudyDate="20240101-") == {uids["S1"]}
    assert found(PatientID=["S1", "S2"]) == {uids["S1"], uids["S2"]}
    assert found(PatientID=["S1", "S2", "S3"]) == set(uids.values())
    assert found(PatientID=["S1", "S3"], ModalitiesInStudy="CT\\MR") == {uids["S1"], uids["S3"]}
    assert found(PatientID=["S1", "S3"], ModalitiesInStudy="MR\\US") == set()
    # Paging binds its numbers too.
    ident = {"PatientName": "SHAPE*"}
    pages = [arch.query("STUDY", ident, limit=1, offset=i, order_by=["StudyDate"]) for i in range(4)]
    assert [p[0]["StudyInstanceUID"] for p in pages[:3]] == [uids["S1"], uids["S2"], uids["S3"]] and pages[3] == []
    assert arch.count("STUDY", {"PatientName": "SHAPE*", "ModalitiesInStudy": "CT"}) == 2
    assert arch.count("STUDY", {"PatientName": "SHAPE*", "ModalitiesInStudy": "MR"}) == 1


def test_study_keys_match_at_every_level(arch: Archive):
    """Relational queries (PS3.4 C.4.1.2.1): study keys filter patients, series and images too."""
    arch.ingest(make_instance(patient_id="A1", modality="CT", study_date="20240110", study_time="0930"))
    arch.ingest(make_instance(patient_id="B2", modality="MR", study_date="20240301", study_time="1415"))
    expected = {
        "A1": [{"StudyDate": "20240101-20240201"}, {"StudyDate": "20240101-20240201", "StudyTime": "0900-1000"},
               {"ModalitiesInStudy": "CT"}, {"ModalitiesInStudy": "C?"}, {"Modality": "CT"},
               {"StudyDate": "20240110", "StudyTime": "09-10"}],
        "B2": [{"StudyDate": "20240201-"}, {"StudyDate": "20240201-", "StudyTime": "1400-"},
               {"ModalitiesInStudy": "MR\\US"}, {"ModalitiesInStudy": "M*"}, {"Modality": "MR"}],
        "": [{"StudyDate": "20240110", "StudyTime": "1000-1100"}, {"ModalitiesInStudy": "US"}],
    }
    for patient, idents in expected.items():
        for ident in idents:
            for level in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
                got = [r["PatientID"] for r in arch.query(level, ident)]
                assert got == ([patient] if patient else []), (level, ident)
