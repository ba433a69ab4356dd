"""De-identification mapping table (issue 21b): original and replacement UIDs and patient IDs per project.

Revision ID: 0012_deid
Revises: 0008_storage (the lead chains the issue 19-21 migrations at merge)
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_deid"
down_revision = "0010_reports"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deid_map",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("project", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("original", sa.String(128), nullable=False),
        sa.Column("replacement", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ux_deid_map_project_kind_original", "deid_map", ["project", "kind", "original"], unique=True)
    op.create_index("ix_deid_map_replacement", "deid_map", ["replacement"])


def downgrade() -> None:
    op.drop_index("ix_deid_map_replacement", table_name="deid_map")
    op.drop_index("ux_deid_map_project_kind_original", table_name="deid_map")
    op.drop_table("deid_map")
