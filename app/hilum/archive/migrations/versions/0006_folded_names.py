"""Patient names folded as people type them (``patients.pn_fold``), for the study browser's search.

``muller`` finds Müller and ``helene`` Hélène in the study browser and in
``hilum find --local``; the DICOM wire (C-FIND, QIDO-RS) keeps the
standard's matching and never looks at this column.  The folding is
:func:`hilum.archive.namefold.fold_name`; this revision adds the column and
its index and folds the names already in the archive.

Revision ID: 0006_folded_names
Revises: 0005_patient_revisions
"""

import sqlalchemy as sa
from alembic import op

from hilum.archive.namefold import fold_name

revision = "0006_folded_names"
down_revision = "0005_patient_revisions"
branch_labels = None
depends_on = None

_BATCH = 1000


def upgrade() -> None:
    op.add_column("patients", sa.Column("pn_fold", sa.String(324), nullable=False, server_default=sa.text("''")))
    patients = sa.table(
        "patients", sa.column("pk", sa.Integer), sa.column("patient_name", sa.String), sa.column("pn_fold", sa.String)
    )
    conn = op.get_bind()
    update = sa.update(patients).where(patients.c.pk == sa.bindparam("b_pk")).values(pn_fold=sa.bindparam("b_fold"))
    last = 0
    while True:
        rows = conn.execute(
            sa.select(patients.c.pk, patients.c.patient_name)
            .where(patients.c.pk > last)
            .order_by(patients.c.pk)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        changed = [{"b_pk": pk, "b_fold": fold_name(name or "")} for pk, name in rows]
        changed = [c for c in changed if c["b_fold"]]
        if changed:
            conn.execute(update, changed)
        last = rows[-1][0]
    op.create_index("ix_patients_pn_fold", "patients", ["pn_fold"], postgresql_ops={"pn_fold": "text_pattern_ops"})


def downgrade() -> None:
    op.drop_index("ix_patients_pn_fold", table_name="patients")
    op.drop_column("patients", "pn_fold")  # SQLite 3.35+ drops it in place (patients has dependants)
