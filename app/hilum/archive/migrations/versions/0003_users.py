"""Users and API tokens of the web services (``hilum.archive.users``).

Revision ID: 0003_users
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_users"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "api_tokens",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("user_fk", sa.Integer, sa.ForeignKey("users.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_tokens_user_fk", "api_tokens", ["user_fk"])


def downgrade() -> None:
    op.drop_index("ix_api_tokens_user_fk", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("users")
