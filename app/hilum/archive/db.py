"""Database engine for the index: SQLite (WAL) by default, PostgreSQL by URL.

Schema changes go through Alembic (``migrations/``), applied on open when the
database is behind.  Several migration heads are allowed (features add their
own tables on branches); ``upgrade heads`` applies them all.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import NullPool

from hilum.archive.blobs import fsync_dir

if TYPE_CHECKING:
    from hilum.archive.upgrade import UpgradeReport

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


ADVISORY_LOCK = 7461636
"""The PostgreSQL advisory lock key under which the schema is migrated (one node of a scale-out at a time)."""


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory(MIGRATIONS)


def code_heads() -> set[str]:
    """The schema revisions this code brings an index to (every head of ``migrations/``)."""
    return set(_script().get_heads())


def known_revisions() -> set[str]:
    """Every schema revision this code knows (an index at any other one was made by a newer Hilum)."""
    return {s.revision for s in _script().walk_revisions()}


def current_heads(conn: Connection) -> set[str]:
    """The revisions the index behind ``conn`` is at (empty for a new, empty database)."""
    return set(MigrationContext.configure(conn).get_current_heads())


def migrate(engine: Engine, *, data_dir: Path | None = None) -> UpgradeReport | None:
    """Bring the schema up to every head, if it is not there already.

    An index at a revision this code does not know (made by a newer Hilum) is refused with
    :class:`~hilum.errors.DowngradeRefused` before anything is changed.  With ``data_dir`` (the
    archive's data folder), an index that holds a schema behind this code's heads is backed up
    into ``data_dir/backups/`` first (:mod:`hilum.archive.upgrade`); without it (a new file that a
    backup or restore fills) it is migrated as it is.  Returns what the upgrade with a backup did
    (None when there was none).
    """
    heads = code_heads()
    with engine.connect() as conn:
        current = current_heads(conn)
    if current == heads:
        return None
    from hilum.archive import upgrade

    upgrade.refuse_unknown(current, data_dir, engine)
    if data_dir is not None and current:
        return upgrade.upgrade_with_backup(engine, Path(data_dir))
    with engine.connect() as conn:
        apply_migrations(conn)
    return None


def apply_migrations(conn: Connection) -> set[str]:
    """Migrate the index behind ``conn`` to this code's heads in one transaction; returns the revisions it was at.

    On PostgreSQL under the advisory lock :data:`ADVISORY_LOCK` (re-entrant for a session that holds
    it already): several nodes of a scale-out may start at once on one database, one migrates, the
    others wait here (the lock ends with this transaction) and then find the schema up to date.
    """
    from hilum.archive import upgrade

    heads = code_heads()
    with conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})")
        current = current_heads(conn)
        if current == heads:
            return current
        upgrade.refuse_unknown(current, None, conn.engine)
        log.info("migrating index schema %s -> %s", sorted(current) or "empty", sorted(heads))
        command.upgrade(alembic_config(conn), "heads")
    return current


def copy_sqlite(source: str | os.PathLike[str], dest: str | os.PathLike[str], *, read_only: bool = False) -> None:
    """Copy the SQLite database ``source`` into ``dest`` with SQLite's backup API, in one step (one read
    transaction: a node writing the live index in WAL mode goes on).  ``read_only``: ``source`` is a backup's
    file, opened read-only; otherwise the live index, waiting up to 60 s for a writer's lock."""
    if read_only:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    else:
        src = sqlite3.connect(source, timeout=60)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst, pages=-1)
    finally:
        dst.close()
        src.close()


def replace_sqlite_file(index: Path, target: Path) -> None:
    """Make ``target`` a durable copy of the SQLite file ``index`` (a backup's): copied beside it, fsynced,
    its stale -wal/-shm removed, renamed over it, the folder fsynced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".restoring")
    copy_sqlite(index, tmp, read_only=True)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    for extra in ("-wal", "-shm"):
        Path(str(target) + extra).unlink(missing_ok=True)
    os.replace(tmp, target)
    fsync_dir(target.parent)
