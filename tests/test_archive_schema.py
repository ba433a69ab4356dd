"""One schema: every table in one ``MetaData`` (hilum.archive.schema), and the migrations build
exactly it — Alembic's autogenerate finds no difference on SQLite nor on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from hilum.archive import Archive, schema


def _diff(archive: Archive) -> list[Any]:
    with archive.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True,
                                                     "target_metadata": schema.metadata})
        return list(compare_metadata(ctx, schema.metadata))


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_autogenerate_finds_no_difference_between_models_and_migrations(db: str, tmp_path: Path,
                                                                        request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_url") if db == "postgres" else None
    with Archive(tmp_path / "data", database_url=url) as a:
        assert _diff(a) == []
        with a.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    assert tables == set(schema.metadata.tables) | {"alembic_version"}


def test_every_table_is_in_the_one_metadata() -> None:
    """Orders, MPPS, the HL7 log and the web users are in the schema module, not beside it."""
    from hilum.archive import orders, users  # noqa: F401 - importing them must not add a MetaData

    assert {"patients", "studies", "series", "instances", "patient_history", "orders", "procedure_steps",
            "performed_steps", "hl7_messages", "users", "api_tokens", "prefetched_studies", "blob_copies", "blob_trash",
            "protections", "forward_queue", "policy_log",
            "reports", "report_events", "hl7_outbox",  # issue 20a
            "deid_map",  # issue 21b
            "ai_jobs",  # issue 19a
            } == set(schema.metadata.tables)
    assert users.users is schema.users and users.api_tokens is schema.api_tokens
    assert not hasattr(users, "metadata")


def test_migrations_have_one_head() -> None:
    from alembic.script import ScriptDirectory

    from hilum.archive.db import MIGRATIONS

    assert ScriptDirectory(MIGRATIONS).get_heads() == ["0009_ai"]
