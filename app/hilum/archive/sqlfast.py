"""The index writer's fast path: its few hot statements compiled once and run on the DB-API cursor.

A fenced fast path (../shared/STYLE.md "Fast paths that step aside"; COMMON.md
"Fast paths are fenced"):

* **Setting.** ``[archive] index_writer = "fast" | "sqlalchemy"`` in
  ``hilum.toml``; without it, the environment variable ``HILUM_INDEX_WRITER``
  decides, else ``fast``.  ``sqlalchemy`` runs every statement through
  SQLAlchemy Core (``Connection.execute``), the library's own path; the test
  suite runs the archive, import and ingest tests both ways
  (``installer/test.sh``).
* **What it does.** SQLAlchemy's execution machinery (execution context,
  parameter processing, result set) costs 10-12 µs per statement here, more
  than SQLite takes to run the index writer's hot statements (0.7 µs for a
  SELECT by unique key); ingesting one instance into a known series runs four
  of them.  :class:`Compiled` compiles a statement once for the dialect and
  does, per execution, what ``DefaultExecutionContext._init_compiled`` does
  for it: the compiled defaults merged with the values, each value passed
  through its type's bind processor (SQLite's DateTime → string), positional
  parameters ordered by ``positiontup``.  Everything else (transactions,
  RETURNING, expanding IN lists) stays with SQLAlchemy, on the same
  connection and transaction — except in the commonest case, one instance
  into a series indexed before, which :class:`RawTransaction` runs on a
  pooled DB-API connection without SQLAlchemy's connection objects at all
  (stepping aside to SQLAlchemy as soon as anything else is needed).
* **Alarm.** :data:`MIRRORED` names the SQLAlchemy code this mirrors;
  ``tests/test_archive_sqlfast.py`` fails when its source differs from the
  pinned version's (``pyproject.toml`` pins SQLAlchemy exactly), and holds
  both ways to the same rows.
* **Steps aside.** A statement this class does not handle the way SQLAlchemy
  would (Python-side defaults to prefetch, expanding or literal-execute
  parameters, a schema translate map) is refused at compile time and runs
  through SQLAlchemy instead.

A proposal for SQLAlchemy that would make this unnecessary is in
``sqlfast.md`` beside this module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from sqlalchemy.engine import Connection

from hilum.errors import HilumError

log = logging.getLogger(__name__)

Mode = Literal["fast", "sqlalchemy"]
MODES: tuple[Mode, ...] = ("fast", "sqlalchemy")
ENV = "HILUM_INDEX_WRITER"

#: The SQLAlchemy code :class:`Compiled` mirrors (module:qualified name), hashed by the fence test.
MIRRORED = (
    "sqlalchemy.engine.default:DefaultExecutionContext._init_compiled",
    "sqlalchemy.sql.compiler:SQLCompiler.construct_params",
    "sqlalchemy.sql.compiler:SQLCompiler._bind_processors",
    "sqlalchemy.sql.type_api:TypeEngine._cached_bind_processor",
)


def resolve_mode(configured: str | None) -> Mode:
    """The index writer mode: the configured one, else ``$HILUM_INDEX_WRITER``, else ``fast``."""
    value = configured or os.environ.get(ENV) or "fast"
    if value not in MODES:
        raise ValueError(f"index_writer must be one of {', '.join(MODES)}, not {value!r}")
    return value  # type: ignore[return-value]


class Unsupported(HilumError):
    """A statement :class:`Compiled` would not run the way SQLAlchemy does: it goes through SQLAlchemy."""


class Compiled:
    """A statement compiled once for a dialect and run on a DB-API cursor."""

    __slots__ = ("_defaults", "_names", "_procs", "sql")

    def __init__(self, stmt: Any, dialect: Any, column_keys: list[str] | None = None):
        compiled = stmt.compile(dialect=dialect, column_keys=column_keys)
        if (compiled.insert_prefetch or compiled.update_prefetch or compiled.literal_execute_params
                or compiled.post_compile_params or compiled.schema_translate_map):
            raise Unsupported(str(stmt))
        self.sql: str = compiled.string
        self._names: tuple[str, ...] | None = tuple(compiled.positiontup) if compiled.positional else None
        self._defaults = dict(compiled.params)
        self._procs = {name: proc for name, bind in compiled.binds.items()
                       if (proc := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None}

    def parameters(self, params: Mapping[str, Any]) -> Any:
        values = {**self._defaults, **params}
        for name, proc in self._procs.items():
            if name in values:
                values[name] = proc(values[name])
        return [values[n] for n in self._names] if self._names is not None else values

    def run(self, cursor: Any, params: Mapping[str, Any]) -> Any:
        cursor.execute(self.sql, self.parameters(params))
        return cursor

    def run_many(self, cursor: Any, rows: Iterable[Mapping[str, Any]]) -> None:
        cursor.executemany(self.sql, [self.parameters(r) for r in rows])


class Statements:
    """Runs the index writer's hot statements one way or the other (see the module docstring).

    ``run``/``run_many`` take a SQLAlchemy :class:`Connection` inside its
    transaction; in ``fast`` mode the statement runs on a cursor of the same
    DB-API connection, so it is part of the same transaction.  ``run`` returns
    something with ``rowcount`` and ``fetchone()`` either way.
    """

    def __init__(self, dialect: Any, mode: Mode):
        self.dialect = dialect
        self.mode = mode
        self._compiled: dict[tuple[int, tuple[str, ...] | None], Compiled | None] = {}

    def _get(self, stmt: Any, keys: tuple[str, ...] | None) -> Compiled | None:
        k = (id(stmt), keys)
        try:
            return self._compiled[k]
        except KeyError:
            pass
        try:
            c: Compiled | None = Compiled(stmt, self.dialect, list(keys) if keys else None)
        except Unsupported:
            log.debug("not on the fast path (runs through SQLAlchemy): %s", stmt)
            c = None
        self._compiled[k] = c
        return c

    def run(self, conn: Connection | RawTransaction, stmt: Any, params: Mapping[str, Any], *,
            insert: bool = False) -> Any:
        """Execute ``stmt`` once; ``insert`` compiles it for exactly the columns ``params`` names."""
        if self.mode == "fast":
            c = self._get(stmt, tuple(params) if insert else None)
            if c is not None:
                return c.run(_cursor(conn), params)
        return conn.execute(stmt, dict(params))

    def run_many(self, conn: Connection | RawTransaction, stmt: Any, rows: list[dict[str, Any]], *,
                 insert: bool = False) -> None:
        """Execute ``stmt`` for each of ``rows`` (executemany); all rows name the same columns."""
        if not rows:
            return
        if self.mode == "fast":
            c = self._get(stmt, tuple(rows[0]) if insert else None)
            if c is not None:
                c.run_many(_cursor(conn), rows)
                return
        conn.execute(stmt, rows)


class NeedsCore(HilumError):
    """A :class:`RawTransaction` was asked for something only SQLAlchemy does: roll back, redo with it."""


class RawTransaction:
    """A transaction on a pooled DB-API connection, without SQLAlchemy's ``Connection`` (fast mode).

    For the index writer's commonest transaction — one instance into a series
    it has indexed before: four hot statements — SQLAlchemy's connection,
    transaction and event objects cost more than the statements.  This
    carrier checks a DB-API connection out of the engine's pool
    (``Engine.raw_connection``, public API), begins, runs :class:`Compiled`
    statements on its cursor and commits.  Anything else the writer would do
    (a Core statement: a lookup of rows not cached, a delete, RETURNING...)
    calls :meth:`execute`, which raises :class:`NeedsCore`: the writer rolls
    back and does the whole transaction again through SQLAlchemy.
    """

    __slots__ = ("_raw", "cursor", "dialect")

    def __init__(self, engine: Any):
        self.dialect = engine.dialect.name
        self._raw = engine.raw_connection()
        try:
            self.cursor = self._raw.cursor()
            if self.dialect == "sqlite":
                # pysqlite runs in autocommit mode here; a writer takes the write lock at once (db.write_begin)
                self.cursor.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._raw.close()
            raise

    def execute(self, *_args: Any, **_kw: Any) -> Any:
        raise NeedsCore()

    def commit(self) -> None:
        if self.dialect == "sqlite":
            self.cursor.execute("COMMIT")
        else:
            self._raw.commit()

    def close(self, rollback: bool) -> None:
        try:
            if rollback:
                self._raw.rollback()
            self.cursor.close()
        finally:
            self._raw.close()  # back to the pool


def _cursor(conn: Connection | RawTransaction) -> Any:
    """A DB-API cursor on ``conn``'s DB-API connection (so in its transaction), made once per connection."""
    if isinstance(conn, RawTransaction):
        return conn.cursor
    info = conn.info
    cur = info.get("hilum_cursor")
    if cur is None:
        cur = info["hilum_cursor"] = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    return cur
