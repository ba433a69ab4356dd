"""A data folder as the first release made it: the index at migration ``0001`` only, real blobs, an unstamped hilum.toml.

Used by ``tests/test_upgrade.py`` and ``bench/upgrade/run.py``.  The rows are what
``migrations/versions/0001_initial.py`` defines (patients, studies, series,
instances), filled from real generated CT instances whose files are the blobs
(under :meth:`FileBlobStore.key_for` keys, with the first schema's SHA-256 checksum).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from sqlalchemy import Engine, MetaData, Table

from hilum.archive.blobs import FileBlobStore
from hilum.archive.db import alembic_config, make_engine

OLD_CONFIG = """# The clinic's node (a comment the upgrade must keep)
[node]
aet = "OLDPACS"   # our AE title
dicom_port = 11112

[archive]
duplicate_policy = "ignore"
"""


def part10(ds: Dataset) -> bytes:
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def schema_0001(engine: Engine) -> None:
    """Create the first release's schema (``alembic upgrade 0001``) in the empty database behind ``engine``."""
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0001")


def _pn(value: object) -> str:
    return str(value or "")


def insert_0001(engine: Engine, blobs_root: Path, datasets: Iterable[Dataset]) -> list[str]:
    """Index ``datasets`` in a 0001 schema (rows as that schema wants) with their blobs; returns the SOP UIDs."""
    md = MetaData()
    patients, studies, series, instances = (
        Table(n, md, autoload_with=engine) for n in ("patients", "studies", "series", "instances")
    )
    store = FileBlobStore(blobs_root)
    store.ensure()
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    pats: dict[str, int] = {}
    stus: dict[str, int] = {}
    sers: dict[str, int] = {}
    sops: list[str] = []
    inst_rows: list[dict[str, object]] = []
    with engine.begin() as conn:
        for ds in datasets:
            data = part10(ds)
            key = store.key_for(ds.SOPInstanceUID)
            path = store.path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            pid = str(ds.PatientID)
            if pid not in pats:
                name = _pn(ds.PatientName)
                pats[pid] = conn.execute(
                    patients.insert().values(
                        patient_id=pid,
                        issuer="",
                        patient_name=name,
                        pn_a=name.upper(),
                        pn_i="",
                        pn_p="",
                        birth_date=str(ds.get("PatientBirthDate", "")),
                        sex=str(ds.get("PatientSex", "")),
                        created_at=now,
                    )
                ).inserted_primary_key[0]
            st = str(ds.StudyInstanceUID)
            if st not in stus:
                ref = _pn(ds.get("ReferringPhysicianName", ""))
                stus[st] = conn.execute(
                    studies.insert().values(
                        patient_fk=pats[pid],
                        study_uid=st,
                        study_date=str(ds.get("StudyDate", "")),
                        study_time=str(ds.get("StudyTime", "")),
                        study_dt=str(ds.get("StudyDate", "")) + str(ds.get("StudyTime", "")),
                        accession_number=str(ds.get("AccessionNumber", "")),
                        study_id=str(ds.get("StudyID", "")),
                        study_description=str(ds.get("StudyDescription", "")),
                        referring_physician=ref,
                        ref_pn_a=ref.upper(),
                        modalities=str(ds.Modality),
                        num_series=0,
                        num_instances=0,
                        size_bytes=0,
                        specific_character_set=str(ds.get("SpecificCharacterSet", "")),
                        created_at=now,
                        updated_at=now,
                    )
                ).inserted_primary_key[0]
            se = str(ds.SeriesInstanceUID)
            if se not in sers:
                sers[se] = conn.execute(
                    series.insert().values(
                        study_fk=stus[st],
                        series_uid=se,
                        modality=str(ds.Modality),
                        series_number=int(ds.get("SeriesNumber", 0) or 0),
                        series_description=str(ds.get("SeriesDescription", "")),
                        body_part=str(ds.get("BodyPartExamined", "")),
                        series_date=str(ds.get("SeriesDate", "")),
                        series_time=str(ds.get("SeriesTime", "")),
                        pps_start_date="",
                        pps_start_time="",
                        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
                        num_instances=0,
                        created_at=now,
                    )
                ).inserted_primary_key[0]
                conn.execute(
                    studies.update().where(studies.c.pk == stus[st]).values(num_series=studies.c.num_series + 1)
                )
            inst_rows.append(
                dict(
                    series_fk=sers[se],
                    sop_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    instance_number=int(ds.get("InstanceNumber", 0) or 0),
                    transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                    number_of_frames=None,
                    rows=int(ds.Rows),
                    columns=int(ds.Columns),
                    content_date=str(ds.get("ContentDate", "")),
                    content_time=str(ds.get("ContentTime", "")),
                    blob_key=key,
                    size=len(data),
                    checksum=hashlib.sha256(data).hexdigest(),
                    source_aet="MODALITY",
                    origin="dimse",
                    received_at=now,
                )
            )
            conn.execute(
                series.update().where(series.c.pk == sers[se]).values(num_instances=series.c.num_instances + 1)
            )
            conn.execute(
                studies.update()
                .where(studies.c.pk == stus[st])
                .values(num_instances=studies.c.num_instances + 1, size_bytes=studies.c.size_bytes + len(data))
            )
            sops.append(str(ds.SOPInstanceUID))
            if len(inst_rows) >= 1000:
                conn.execute(instances.insert(), inst_rows)
                inst_rows = []
        if inst_rows:
            conn.execute(instances.insert(), inst_rows)
    return sops


def make_old_folder(data: Path, datasets: Iterable[Dataset], *, config: str = OLD_CONFIG) -> list[str]:
    """A data folder at ``data`` as the first release left it (SQLite index at 0001); returns the SOP UIDs."""
    data.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{data / 'index.sqlite'}")
    try:
        schema_0001(engine)
        sops = insert_0001(engine, data / "blobs", datasets)
    finally:
        engine.dispose()
    (data / "hilum.toml").write_text(config, encoding="utf-8")
    return sops
