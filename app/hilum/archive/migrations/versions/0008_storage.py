"""Storage policies: copies on tiers and peers, the blob trash, protections, the forwarding queue, the policy log.

``instances.online`` (False when the online file was moved to another tier or
purged), ``studies.last_access`` (opened or retrieved, for rules by last
access), and the tables of :mod:`hilum.archive.storage` and the policies that
use them (compression, tiers, retention, forwarding).

Revision ID: 0008_storage
Revises: 0007_prefetched
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_storage"
down_revision = "0007_prefetched"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("online", sa.Boolean, nullable=False, server_default=sa.text("true")))
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("last_access", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "blob_copies",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("instance_fk", sa.Integer, sa.ForeignKey("instances.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("location", sa.String(80), nullable=False),
        sa.Column("key", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("checksum", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retain_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ux_blob_copies_instance_location", "blob_copies", ["instance_fk", "location"], unique=True)
    op.create_index("ix_blob_copies_location", "blob_copies", ["location"])
    op.create_table(
        "blob_trash",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False, server_default=sa.text("''")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "protections",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("reason", sa.String(255), nullable=False, server_default=sa.text("''")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ux_protections_level_uid", "protections", ["level", "uid", "issuer"], unique=True)
    op.create_table(
        "forward_queue",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("sop_uid", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_try", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("transaction_uid", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("claimed_by", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ux_forward_queue_destination_sop", "forward_queue", ["destination", "sop_uid"], unique=True)
    op.create_index("ix_forward_queue_state", "forward_queue", ["state", "next_try"])
    op.create_table(
        "policy_log",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("level", sa.String(8), nullable=False, server_default=sa.text("'STUDY'")),
        sa.Column("uid", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("rule", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("bytes_before", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_after", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("detail", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("node", sa.String(64), nullable=False, server_default=sa.text("''")),
    )
    op.create_index("ix_policy_log_action_at", "policy_log", ["action", "at"])


def downgrade() -> None:
    op.drop_index("ix_policy_log_action_at", table_name="policy_log")
    op.drop_table("policy_log")
    op.drop_index("ix_forward_queue_state", table_name="forward_queue")
    op.drop_index("ux_forward_queue_destination_sop", table_name="forward_queue")
    op.drop_table("forward_queue")
    op.drop_index("ux_protections_level_uid", table_name="protections")
    op.drop_table("protections")
    op.drop_table("blob_trash")
    op.drop_index("ix_blob_copies_location", table_name="blob_copies")
    op.drop_index("ux_blob_copies_instance_location", table_name="blob_copies")
    op.drop_table("blob_copies")
    # ALTER TABLE ... DROP COLUMN in place (SQLite >= 3.35): recreating these tables would break the
    # foreign keys that point at them.
    with op.batch_alter_table("studies", recreate="never") as batch:
        batch.drop_column("last_access")
    with op.batch_alter_table("instances", recreate="never") as batch:
        batch.drop_column("online")
