"""Database engine for the index: SQLite (WAL) by default, PostgreSQL by URL.

Schema changes go through Alembic (``migrations/``), applied on open when the
database is behind.  Several migration heads are allowed (features add their
own tables on branches); ``upgrade heads`` applies them all.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

MIGRATIONS = str(Path(__file__).with_name("migrations"))


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the settings the archive relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy's BEGIN (below) control transactions, not pysqlite.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # The blob is fsynced before its row is written, and `hilum check
            # --repair` re-indexes blobs without rows: NORMAL is durable enough
            # for the index and saves an fsync per instance.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # LIKE is case-sensitive, as DICOM matching is for all but PN
            # (whose shadow columns are upper-cased); this also lets prefix
            # LIKE use the index.
            cur.execute("PRAGMA case_sensitive_like=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # pysqlite's own transaction handling defers BEGIN; be explicit.  Straight on the
            # DB-API connection: through exec_driver_sql this one word cost 30-40 µs per
            # transaction, a tenth of indexing an instance.
            # A writer's transaction (write_begin) takes SQLite's write lock at once: a deferred BEGIN
            # that reads and then writes gets SQLITE_BUSY at once, without waiting for busy_timeout,
            # when another process (a `hilum backup`, `hilum protect`...) committed in between.
            write = conn.get_execution_options().get(WRITE_OPTION)
            conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if url.startswith("postgresql"):
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        return create_engine(url, pool_size=8, max_overflow=16, pool_pre_ping=True)
    return create_engine(url, poolclass=NullPool)


def alembic_config(connection) -> AlembicConfig:  # type: ignore[no-untyped-def]
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", MIGRATIONS)
    cfg.attributes["connection"] = connection
    return cfg


WRITE_OPTION = "hilum_write"


@contextmanager
def write_begin(engine: Engine) -> Iterator[Connection]:
    """``engine.begin()`` for a transaction that writes: on SQLite, ``BEGIN IMMEDIATE``.

    SQLite's busy timeout then covers the wait for another process's writer; a
    deferred transaction that read first would fail at once (SQLITE_BUSY_SNAPSHOT)
    if another connection committed since its read.
    """
    with engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        with conn.begin():
            yield conn


def migrate(engine: Engine) -> None:
    """Bring the schema up to every head, if it is not there already."""
    script = ScriptDirectory(MIGRATIONS)
    heads = set(script.get_heads())
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current == heads:
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several nodes of a scale-out may start at once on one database: one migrates, the others
            # wait here (the lock ends with this transaction) and then find the schema up to date.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7461636)")
            if set(MigrationContext.configure(conn).get_current_heads()) == heads:
                return
        log.info("migrating index schema %s -> %s", sorted(current) or "empty", sorted(heads))
        command.upgrade(alembic_config(conn), "heads")
