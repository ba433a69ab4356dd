"""Demographics revisions and their history (IHE PIR), and one head for the whole schema.

``patients.revision`` (0 until HL7 ADT creates, changes or merges the patient)
and ``instances.patient_rev`` (the revision whose demographics the stored file
carries) let :meth:`hilum.archive.Archive.read_outgoing` hand out stored files
unchanged unless ADT changed their patient since; ``patient_history`` keeps
what each ADT message changed, when and from which message.  This revision
also joins the three branches (query indexes, users, orders) into one head.

Revision ID: 0005_patient_revisions
Revises: 0002_query_indexes, 0003_users, 0004_orders
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_patient_revisions"
down_revision = ("0002_query_indexes", "0003_users", "0004_orders")
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("patients", sa.Column("revision", sa.Integer, nullable=False, server_default="0"))
    op.add_column("instances", sa.Column("patient_rev", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "patient_history",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(64), nullable=False),
        sa.Column("prior_patient_id", sa.String(64), nullable=False),
        sa.Column("prior_issuer", sa.String(64), nullable=False),
        sa.Column("before", sa.Text, nullable=False),
        sa.Column("after", sa.Text, nullable=False),
        sa.Column("message_type", sa.String(16), nullable=False),
        sa.Column("sender", sa.String(255), nullable=False),
        sa.Column("control_id", sa.String(199), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_patient_history_patient", "patient_history", ["patient_id", "issuer"])


def downgrade() -> None:
    op.drop_index("ix_patient_history_patient", table_name="patient_history")
    op.drop_table("patient_history")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("patient_rev")
    with op.batch_alter_table("patients") as batch:
        batch.drop_column("revision")
