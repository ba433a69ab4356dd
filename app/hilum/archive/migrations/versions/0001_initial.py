"""The first index schema: patients, studies, series, instances.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _now_cols() -> list[sa.Column]:
    return [sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)]


def upgrade() -> None:
    op.create_table(
        "patients",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(64), nullable=False),
        sa.Column("patient_name", sa.String(324), nullable=False),
        sa.Column("pn_a", sa.String(324), nullable=False),
        sa.Column("pn_i", sa.String(324), nullable=False),
        sa.Column("pn_p", sa.String(324), nullable=False),
        sa.Column("birth_date", sa.String(8), nullable=False),
        sa.Column("sex", sa.String(16), nullable=False),
        *_now_cols(),
    )
    op.create_index("ux_patients_id_issuer", "patients", ["patient_id", "issuer"], unique=True)
    op.create_index("ix_patients_pn_a", "patients", ["pn_a"], postgresql_ops={"pn_a": "text_pattern_ops"})

    op.create_table(
        "studies",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("patient_fk", sa.Integer, sa.ForeignKey("patients.pk"), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("study_date", sa.String(8), nullable=False),
        sa.Column("study_time", sa.String(13), nullable=False),
        sa.Column("study_dt", sa.String(21), nullable=False),
        sa.Column("accession_number", sa.String(16), nullable=False),
        sa.Column("study_id", sa.String(16), nullable=False),
        sa.Column("study_description", sa.String(64), nullable=False),
        sa.Column("referring_physician", sa.String(324), nullable=False),
        sa.Column("ref_pn_a", sa.String(324), nullable=False),
        sa.Column("modalities", sa.String(128), nullable=False),
        sa.Column("num_series", sa.Integer, nullable=False),
        sa.Column("num_instances", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("specific_character_set", sa.String(128), nullable=False),
        *_now_cols(),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_studies_patient", "studies", ["patient_fk"])
    op.create_index("ix_studies_date", "studies", ["study_date"])
    op.create_index("ix_studies_dt", "studies", ["study_dt"])
    op.create_index("ix_studies_accession", "studies", ["accession_number"])

    op.create_table(
        "series",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("study_fk", sa.Integer, sa.ForeignKey("studies.pk"), nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("series_number", sa.Integer, nullable=True),
        sa.Column("series_description", sa.String(64), nullable=False),
        sa.Column("body_part", sa.String(16), nullable=False),
        sa.Column("series_date", sa.String(8), nullable=False),
        sa.Column("series_time", sa.String(13), nullable=False),
        sa.Column("pps_start_date", sa.String(8), nullable=False),
        sa.Column("pps_start_time", sa.String(13), nullable=False),
        sa.Column("frame_of_reference_uid", sa.String(64), nullable=False),
        sa.Column("num_instances", sa.Integer, nullable=False),
        *_now_cols(),
    )
    op.create_index("ix_series_study", "series", ["study_fk"])
    op.create_index("ix_series_modality", "series", ["modality", "study_fk"])

    op.create_table(
        "instances",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("series_fk", sa.Integer, sa.ForeignKey("series.pk"), nullable=False),
        sa.Column("sop_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer, nullable=True),
        sa.Column("transfer_syntax", sa.String(64), nullable=False),
        sa.Column("number_of_frames", sa.Integer, nullable=True),
        sa.Column("rows", sa.Integer, nullable=True),
        sa.Column("columns", sa.Integer, nullable=True),
        sa.Column("content_date", sa.String(8), nullable=False),
        sa.Column("content_time", sa.String(13), nullable=False),
        sa.Column("blob_key", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("source_aet", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_instances_series", "instances", ["series_fk"])


def downgrade() -> None:
    for table in ("instances", "series", "studies", "patients"):
        op.drop_table(table)
