"""Indexes for study-level queries: person-name component groups.

A PatientName query matches the alphabetic, ideographic and phonetic groups
(``pn_a``/``pn_i``/``pn_p``, see ``archive/schema.py``); the query engine
asks each group through its own index and unions the matching patients, so
all three need one (``text_pattern_ops`` lets PostgreSQL use them for
prefix ``LIKE`` under any collation).  Measured by ``bench/query``.

Revision ID: 0002_query_indexes
Revises: 0001
"""

from alembic import op

revision = "0002_query_indexes"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_patients_pn_i", "patients", ["pn_i"], postgresql_ops={"pn_i": "text_pattern_ops"})
    op.create_index("ix_patients_pn_p", "patients", ["pn_p"], postgresql_ops={"pn_p": "text_pattern_ops"})


def downgrade() -> None:
    op.drop_index("ix_patients_pn_p", "patients")
    op.drop_index("ix_patients_pn_i", "patients")
