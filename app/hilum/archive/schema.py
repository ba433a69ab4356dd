"""The index schema (SQLAlchemy Core): patient → study → series → instance.

Columns hold every attribute that C-FIND (patient- and study-root, all
levels, PS3.4 C.6) and QIDO-RS (PS3.18 10.6, table 10.6.1-5) use as
required or matching keys, plus the computed ones kept as counters
(NumberOfStudyRelatedInstances, ModalitiesInStudy, ...).

Normalised shadow columns make matching index-friendly on both SQLite and
PostgreSQL: person names are stored upper-cased per component group
(``*_pn_a``/``_i``/``_p``), times as fixed-width ``HHMMSS.FFFFFF``, and
study date + time once more as ``study_dt`` for combined range matching
(PS3.4 C.2.2.2.5.2).  The schema is created and changed by Alembic
migrations (``archive/migrations``); this module is their reference.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

patients = Table(
    "patients",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_id", String(64), nullable=False),
    Column("issuer", String(64), nullable=False, default=""),
    Column("patient_name", String(324), nullable=False, default=""),
    Column("pn_a", String(324), nullable=False, default=""),
    Column("pn_i", String(324), nullable=False, default=""),
    Column("pn_p", String(324), nullable=False, default=""),
    Column("birth_date", String(8), nullable=False, default=""),
    Column("sex", String(16), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ux_patients_id_issuer", "patient_id", "issuer", unique=True),
    Index("ix_patients_pn_a", "pn_a", postgresql_ops={"pn_a": "text_pattern_ops"}),
)

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_fk", Integer, ForeignKey("patients.pk"), nullable=False),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("study_date", String(8), nullable=False, default=""),
    Column("study_time", String(13), nullable=False, default=""),
    Column("study_dt", String(21), nullable=False, default=""),
    Column("accession_number", String(16), nullable=False, default=""),
    Column("study_id", String(16), nullable=False, default=""),
    Column("study_description", String(64), nullable=False, default=""),
    Column("referring_physician", String(324), nullable=False, default=""),
    Column("ref_pn_a", String(324), nullable=False, default=""),
    Column("modalities", String(128), nullable=False, default=""),
    Column("num_series", Integer, nullable=False, default=0),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("size_bytes", BigInteger, nullable=False, default=0),
    Column("specific_character_set", String(128), nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_studies_patient", "patient_fk"),
    Index("ix_studies_date", "study_date"),
    Index("ix_studies_dt", "study_dt"),
    Index("ix_studies_accession", "accession_number"),
)

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_fk", Integer, ForeignKey("studies.pk"), nullable=False),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("modality", String(16), nullable=False, default=""),
    Column("series_number", Integer, nullable=True),
    Column("series_description", String(64), nullable=False, default=""),
    Column("body_part", String(16), nullable=False, default=""),
    Column("series_date", String(8), nullable=False, default=""),
    Column("series_time", String(13), nullable=False, default=""),
    Column("pps_start_date", String(8), nullable=False, default=""),
    Column("pps_start_time", String(13), nullable=False, default=""),
    Column("frame_of_reference_uid", String(64), nullable=False, default=""),
    Column("num_instances", Integer, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_series_study", "study_fk"),
    Index("ix_series_modality", "modality", "study_fk"),
)

instances = Table(
    "instances",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_fk", Integer, ForeignKey("series.pk"), nullable=False),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer, nullable=True),
    Column("transfer_syntax", String(64), nullable=False),
    Column("number_of_frames", Integer, nullable=True),
    Column("rows", Integer, nullable=True),
    Column("columns", Integer, nullable=True),
    Column("content_date", String(8), nullable=False, default=""),
    Column("content_time", String(13), nullable=False, default=""),
    Column("blob_key", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("source_aet", String(16), nullable=False, default=""),
    Column("origin", String(16), nullable=False, default=""),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ix_instances_series", "series_fk"),
)
