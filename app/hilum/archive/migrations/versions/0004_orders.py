"""Orders, scheduled and performed procedure steps, HL7 message log (``hilum.archive.orders``).

Revision ID: 0004_orders
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_orders"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("patient_fk", sa.Integer, sa.ForeignKey("patients.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("accession_number", sa.String(16), nullable=False),
        sa.Column("placer_number", sa.String(64), nullable=False),
        sa.Column("filler_number", sa.String(64), nullable=False),
        sa.Column("requested_procedure_id", sa.String(16), nullable=False),
        sa.Column("description", sa.String(64), nullable=False),
        sa.Column("code_value", sa.String(16), nullable=False),
        sa.Column("code_scheme", sa.String(16), nullable=False),
        sa.Column("code_meaning", sa.String(64), nullable=False),
        sa.Column("referring_physician", sa.String(324), nullable=False),
        sa.Column("ref_pn", sa.String(324), nullable=False),
        sa.Column("requesting_physician", sa.String(324), nullable=False),
        sa.Column("priority", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("images_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("performed_study_uid", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_orders_patient", "orders", ["patient_fk"])
    op.create_index("ix_orders_accession", "orders", ["accession_number"])
    op.create_index("ix_orders_placer", "orders", ["placer_number"])
    op.create_index("ix_orders_filler", "orders", ["filler_number"])
    op.create_index("ix_orders_status", "orders", ["status"])
    op.create_table(
        "procedure_steps",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("order_fk", sa.Integer, sa.ForeignKey("orders.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("sps_id", sa.String(16), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("station_aet", sa.String(16), nullable=False),
        sa.Column("station_name", sa.String(16), nullable=False),
        sa.Column("location", sa.String(16), nullable=False),
        sa.Column("start_date", sa.String(8), nullable=False),
        sa.Column("start_time", sa.String(13), nullable=False),
        sa.Column("start_dt", sa.String(21), nullable=False),
        sa.Column("performer", sa.String(324), nullable=False),
        sa.Column("performer_pn", sa.String(324), nullable=False),
        sa.Column("description", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_sps_order", "procedure_steps", ["order_fk"])
    op.create_index("ix_sps_station", "procedure_steps", ["station_aet", "start_dt"])
    op.create_index("ix_sps_modality", "procedure_steps", ["modality", "start_dt"])
    op.create_index("ix_sps_start", "procedure_steps", ["start_dt"])
    op.create_index("ix_sps_status", "procedure_steps", ["status", "start_dt"])
    op.create_table(
        "performed_steps",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("mpps_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("station_aet", sa.String(16), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("pps_id", sa.String(16), nullable=False),
        sa.Column("description", sa.String(64), nullable=False),
        sa.Column("start_date", sa.String(8), nullable=False),
        sa.Column("start_time", sa.String(13), nullable=False),
        sa.Column("end_date", sa.String(8), nullable=False),
        sa.Column("end_time", sa.String(13), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("accession_number", sa.String(16), nullable=False),
        sa.Column("scheduled_steps", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "hl7_messages",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("control_id", sa.String(199), nullable=False),
        sa.Column("message_type", sa.String(16), nullable=False),
        sa.Column("ack", sa.Text, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ux_hl7_messages_sender_control", "hl7_messages", ["sender", "control_id"], unique=True)


def downgrade() -> None:
    op.drop_table("hl7_messages")
    op.drop_table("performed_steps")
    op.drop_table("procedure_steps")
    op.drop_table("orders")
