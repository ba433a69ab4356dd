"""The audit trail (``audit_events``, :mod:`hilum.archive.audit`): issue 21a.

One row per audited action (DICOM PS3.15 A.5 event ids), append-only and
hash-chained (``prev_hash`` → ``hash``) so that ``hilum audit verify`` finds
a modified, deleted or inserted row; ``sent_at`` marks rows sent to the
audit repository by syslog (RFC 5424 over TLS, :mod:`hilum.archive.audit_syslog`).

Revision ID: 0011_audit
Revises: 0008_storage
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_audit"
down_revision = "0009_ai"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("pk", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(48), nullable=False),
        sa.Column("event_type", sa.String(48), nullable=False, server_default=sa.text("''")),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("outcome", sa.Integer, nullable=False, server_default="0"),
        sa.Column("user", sa.String(128), nullable=False, server_default=sa.text("''")),
        sa.Column("user_is_requestor", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("ae_title", sa.String(16), nullable=False, server_default=sa.text("''")),
        sa.Column("peer", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("role", sa.String(20), nullable=False, server_default=sa.text("''")),
        sa.Column("patient_id", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("patient_name", sa.String(324), nullable=False, server_default=sa.text("''")),
        sa.Column("study_uids", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("detail", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_patient", "audit_events", ["patient_id"])
    op.create_index("ix_audit_events_user", "audit_events", ["user"])
    op.create_index("ix_audit_events_unsent", "audit_events", ["sent_at"])


def downgrade() -> None:
    for name in ("ix_audit_events_unsent", "ix_audit_events_user", "ix_audit_events_patient", "ix_audit_events_at"):
        op.drop_index(name, table_name="audit_events")
    op.drop_table("audit_events")
