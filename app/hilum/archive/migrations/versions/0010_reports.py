"""Radiology reports (``reports``), their state changes (``report_events``) and the HL7 outbox (``hl7_outbox``).

:mod:`hilum.archive.reports` keeps the reports (draft → preliminary → final /
amended), every state change with user and time, and the outgoing ORU^R01 /
MDM^T02 messages of signed reports that :mod:`hilum.hl7.outbox` sends.

Revision ID: 0010_reports
Revises: 0008_storage
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_reports"
down_revision = "0008_storage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reports",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("report_id", sa.String(64), nullable=False, unique=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("accession_number", sa.String(16), nullable=False, server_default=sa.text("''")),
        sa.Column("patient_id", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("order_fk", sa.Integer, sa.ForeignKey("orders.pk", ondelete="SET NULL"), nullable=True),
        sa.Column("template", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("text", sa.Text, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("created_by", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signed_by", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parent_fk", sa.Integer, sa.ForeignKey("reports.pk", ondelete="RESTRICT"), nullable=True),
        sa.Column("sr_sop_uid", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("pdf_sop_uid", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_index("ix_reports_study", "reports", ["study_uid"])
    op.create_index("ix_reports_patient", "reports", ["patient_id"])
    op.create_index("ix_reports_accession", "reports", ["accession_number"])
    op.create_table(
        "report_events",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("report_fk", sa.Integer, sa.ForeignKey("reports.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("from_state", sa.String(16), nullable=False, server_default=sa.text("''")),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=sa.text("''")),
    )
    op.create_index("ix_report_events_report", "report_events", ["report_fk"])
    op.create_table(
        "hl7_outbox",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("report_fk", sa.Integer, sa.ForeignKey("reports.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("message", sa.LargeBinary, nullable=False, server_default=sa.text("''")),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("ack_code", sa.String(4), nullable=False, server_default=sa.text("''")),
        sa.Column("ack_text", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ux_hl7_outbox_report_kind_endpoint", "hl7_outbox", ["report_fk", "kind", "endpoint"], unique=True)
    op.create_index("ix_hl7_outbox_state", "hl7_outbox", ["state", "next_try_at"])


def downgrade() -> None:
    op.drop_index("ix_hl7_outbox_state", table_name="hl7_outbox")
    op.drop_index("ux_hl7_outbox_report_kind_endpoint", table_name="hl7_outbox")
    op.drop_table("hl7_outbox")
    op.drop_index("ix_report_events_report", table_name="report_events")
    op.drop_table("report_events")
    op.drop_index("ix_reports_accession", table_name="reports")
    op.drop_index("ix_reports_patient", table_name="reports")
    op.drop_index("ix_reports_study", table_name="reports")
    op.drop_table("reports")
