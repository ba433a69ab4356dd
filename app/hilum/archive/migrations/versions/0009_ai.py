"""AI plugins (issue 19): the persistent auto-run queue ``ai_jobs``.

Revision ID: 0009_ai
Revises: 0012_deid
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_ai"
down_revision = "0012_deid"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ai_jobs",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("plugin", sa.String(64), nullable=False),
        sa.Column("plugin_version", sa.String(32), nullable=False, server_default=sa.text("''")),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("claimed_by", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text, nullable=False, server_default=sa.text("''")),
        sa.Column("result_series_uids", sa.Text, nullable=False, server_default=sa.text("''")),
    )
    op.create_index("ix_ai_jobs_state", "ai_jobs", ["state", "not_before"])
    op.create_index("ix_ai_jobs_series", "ai_jobs", ["series_uid", "plugin"])


def downgrade() -> None:
    op.drop_index("ix_ai_jobs_series", table_name="ai_jobs")
    op.drop_index("ix_ai_jobs_state", table_name="ai_jobs")
    op.drop_table("ai_jobs")
