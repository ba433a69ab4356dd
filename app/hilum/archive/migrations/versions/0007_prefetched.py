"""Studies brought in by prefetch (``prefetched_studies``), for the LRU cache of fetched priors.

:mod:`hilum.priors.prefetch` retrieves a patient's priors from peers before
the radiologist opens the case; what it brought is recorded here with when
it was last looked at, so that the cache limit removes the least recently
used fetched priors and never a study that arrived any other way.

Revision ID: 0007_prefetched
Revises: 0006_folded_names
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_prefetched"
down_revision = "0006_folded_names"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prefetched_studies",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("study_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("source", sa.String(64), nullable=False, server_default=sa.text("''")),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_access", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_prefetched_last_access", "prefetched_studies", ["last_access"])


def downgrade() -> None:
    op.drop_index("ix_prefetched_last_access", table_name="prefetched_studies")
    op.drop_table("prefetched_studies")
