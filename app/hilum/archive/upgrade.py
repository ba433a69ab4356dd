"""Upgrades keep data: a backup before every schema migration of an index, and no downgrade.

When a newer Hilum opens a data folder whose index is behind this code's
schema heads (``Archive`` → :func:`hilum.archive.db.migrate` with the data
folder), it

1. takes the upgrade lock of that index (a file lock beside a SQLite index —
   ``fcntl`` on POSIX, ``msvcrt`` on Windows; PostgreSQL's advisory lock that
   ``migrate`` uses, held for the session), and looks again: a process that
   waited finds the schema current and goes on, so of the workstation and
   ``hilum serve`` (or two nodes on one PostgreSQL) starting at once, exactly
   one backs up and migrates;
2. **backs the index up** into ``DATA/backups/pre-upgrade-<from>-to-<to>-<UTC time>/``
   (written under a temporary name, renamed when complete):

   * SQLite: a consistent copy of ``index.sqlite`` made with SQLite's online
     backup API (one read transaction: right under WAL, where a file copy is
     not), checked with ``PRAGMA quick_check``;
   * PostgreSQL: a schema-agnostic dump of every table found by SQLAlchemy
     reflection (``alembic_version`` included), read in one ``REPEATABLE READ``
     transaction, one ``tables/<name>.jsonl`` file per table (a JSON object a
     row) and ``schema.json`` (columns, types, keys);

   plus the data folder's ``hilum.toml`` as it was and ``manifest.json``
   (format, Hilum version, schema before and after, row counts, sha256 of
   every file).  **Blobs are not copied**: they are immutable files that a
   migration never touches (the manifest and ``installer/UPGRADING.md`` say so);
3. only when the backup is complete, **migrates** (one transaction: a failed
   migration leaves the index as it was), and logs once, at INFO on a logger
   that speaks at INFO even under the CLI's WARNING default: "data folder
   upgraded from schema X to Y; backup before the upgrade in ...".

A backup that fails (a full disk, a permission, a damaged index) stops the
upgrade before anything is migrated: :class:`UpgradeError` says why, and what
the backup had written is removed.  A new, empty index takes no backup.

An index at a revision this code does not know was written by a newer Hilum:
:func:`refuse_unknown` raises :class:`~hilum.errors.DowngradeRefused` naming
the folder, the revisions, this Hilum's version and schema, and the backups
taken before earlier upgrades (one of which the older release can use).
``hilum.toml`` has the same pair (a format stamp, :mod:`hilum.config`), and
:func:`upgrade_config` stamps an older file once the index is open.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as dtime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, select

from hilum import __version__
from hilum.archive.blobs import fsync_dir
from hilum.archive.db import (
    ADVISORY_LOCK,
    apply_migrations,
    code_heads,
    copy_sqlite,
    current_heads,
    known_revisions,
    replace_sqlite_file,
)
from hilum.errors import DowngradeRefused, HilumError

log = logging.getLogger(__name__)
if log.level == logging.NOTSET:
    # "print once on the CLI": the CLI's handler shows WARNING and above unless -v; this one line
    # (an upgrade happens once per release) is shown anyway, and goes to `hilum serve`'s log file too.
    log.setLevel(logging.INFO)

BACKUPS = "backups"
PREFIX = "pre-upgrade-"
MANIFEST = "manifest.json"
FORMAT = "hilum-pre-upgrade"
VERSION = 1
BLOB_NOTE = (
    "blobs are not copied: they are immutable files in DATA/blobs that a schema migration never changes; "
    "this backup is the index (and hilum.toml) as it was before the upgrade"
)
LOCK_NAME = ".upgrade.lock"
SPACE_MARGIN = 16 << 20


class UpgradeError(HilumError):
    """An upgrade that did not happen (the backup before it failed): nothing was migrated."""


@dataclass
class UpgradeReport:
    """What :func:`upgrade_with_backup` did: from and to which schema, where the backup is, how long each part took."""

    data_dir: str
    from_schema: list[str]
    to_schema: list[str]
    backup: str
    backup_seconds: float = 0.0
    migrate_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


# --------------------------------------------------------------------------- refusal


def _where(data_dir: Path | None, engine: Engine | None) -> str:
    if data_dir is not None:
        return str(data_dir)
    if engine is not None:
        if engine.dialect.name == "sqlite" and engine.url.database:
            return str(Path(engine.url.database).parent)
        return engine.url.render_as_string(hide_password=True)
    return "the index"


def _data_dir_of(engine: Engine) -> Path | None:
    if engine.dialect.name == "sqlite" and engine.url.database and engine.url.database != ":memory:":
        return Path(engine.url.database).parent
    return None


def pre_upgrade_backups(data_dir: Path | None) -> list[Path]:
    """The complete backups taken before earlier upgrades of ``data_dir``, newest first."""
    if data_dir is None:
        return []
    root = Path(data_dir) / BACKUPS
    try:
        found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / MANIFEST).is_file()]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.name.rsplit("-", 1)[-1], reverse=True)


def _usable_here(backup: Path) -> bool:
    """Whether this code knows the schema a pre-upgrade backup was taken at (so that it can roll back to it)."""
    try:
        return set(read_manifest(backup).get("from_schema", [])) <= known_revisions()
    except UpgradeError:
        return False


def refuse_unknown(current: set[str], data_dir: Path | None, engine: Engine | None) -> None:
    """:class:`DowngradeRefused` when ``current`` holds revisions this code does not know (a newer Hilum's)."""
    unknown = sorted(current - known_revisions())
    if not unknown:
        return
    folder = data_dir if data_dir is not None else (_data_dir_of(engine) if engine is not None else None)
    backups = [b for b in pre_upgrade_backups(folder) if _usable_here(b)]
    hint = (
        f"; or put the index back as it was before that upgrade (what was recorded since is lost; "
        f"installer/UPGRADING.md): hilum rollback {backups[0]} --data {folder}"
        + (f" (older ones: {', '.join(map(str, backups[1:]))})" if len(backups) > 1 else "")
        if backups
        else "; or restore a backup made with this version (hilum restore)"
    )
    raise DowngradeRefused(
        f"{_where(folder, engine)}: the index is at schema {', '.join(unknown)}, written by a newer Hilum; "
        f"this is Hilum {__version__} (schema {', '.join(sorted(code_heads()))}) and will not open it: "
        f"install that newer release again{hint}",
        data_dir=str(_where(folder, engine)),
        found=unknown,
        backups=[str(b) for b in backups],
    )


# --------------------------------------------------------------------------- the upgrade


def upgrade_with_backup(engine: Engine, data_dir: Path) -> UpgradeReport | None:
    """Back up the index of ``data_dir`` and migrate it to this code's heads (module docstring).

    Returns None when another process did it while this one waited for the lock (or there was
    nothing to do); :class:`UpgradeError` when the backup failed (nothing migrated),
    :class:`~hilum.errors.DowngradeRefused` for a newer index.
    """
    heads = code_heads()
    data_dir = Path(data_dir)
    with _upgrade_lock(engine, data_dir) as lock_conn:
        with engine.connect() as conn:
            current = current_heads(conn)
        if current == heads:
            log.info("index of %s found at schema %s (upgraded by another process)", data_dir, sorted(heads))
            return None
        refuse_unknown(current, data_dir, engine)
        if not current:  # a new, empty index: nothing to keep
            with contextlib.ExitStack() as stack:
                conn = lock_conn or stack.enter_context(engine.connect())
                apply_migrations(conn)
            return None
        started = time.perf_counter()
        report = take_backup(engine, data_dir, current, heads)
        backed_up = time.perf_counter()
        try:
            with contextlib.ExitStack() as stack:
                conn = lock_conn or stack.enter_context(engine.connect())
                apply_migrations(conn)
        except HilumError:
            raise
        except Exception as exc:  # one transaction: the index is still at its old schema
            reason = str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__]
            raise UpgradeError(
                f"{data_dir}: the migration of the index from schema {_schema_name(current)} to "
                f"{_schema_name(heads)} failed ({reason[0]}); it was undone, the index is still at "
                f"{_schema_name(current)} (backup in {report.backup}): keep running the release you had "
                "and report this"
            ) from exc
        done = time.perf_counter()
    report.backup_seconds = round(backed_up - started, 3)
    report.migrate_seconds = round(done - backed_up, 3)
    _note_migrated(Path(report.backup), report)
    log.info(
        "data folder %s upgraded from schema %s to %s in %.2f s (backup %.2f s, migration %.2f s); "
        "backup before the upgrade in %s",
        data_dir,
        "+".join(report.from_schema),
        "+".join(report.to_schema),
        report.backup_seconds + report.migrate_seconds,
        report.backup_seconds,
        report.migrate_seconds,
        report.backup,
    )
    return report


@contextlib.contextmanager
def _upgrade_lock(engine: Engine, data_dir: Path) -> Iterator[Connection | None]:
    """Hold the index's upgrade lock; yields the connection that holds it on PostgreSQL (None for SQLite)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({ADVISORY_LOCK})")
            conn.commit()
            try:
                yield conn
            finally:
                with contextlib.suppress(Exception):
                    conn.rollback()
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({ADVISORY_LOCK})")
                    conn.commit()
        return
    folder = _data_dir_of(engine) or data_dir
    path = folder / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UpgradeError(f"cannot take the upgrade lock {path}: {exc.strerror or exc}; nothing was changed") from exc
    try:
        waited = _lock_file(fd, path)
        if waited:
            log.info("waited %.1f s for another process upgrading %s", waited, folder)
        yield None
    finally:
        os.close(fd)  # closing the file releases the lock (flock / msvcrt) as well


def _lock_file(fd: int, path: Path) -> float:
    """Block until this process holds the exclusive lock on ``fd``; returns the seconds waited."""
    start = time.monotonic()
    if sys.platform == "win32":  # pragma: no cover - Windows only
        import msvcrt

        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                time.sleep(0.2)
    else:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return 0.0
        except BlockingIOError:
            log.info("another process is upgrading the index; waiting (lock %s)", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
    return time.monotonic() - start


# --------------------------------------------------------------------------- the backup


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _schema_name(revisions: set[str] | list[str]) -> str:
    return "+".join(sorted(revisions)) or "empty"


def take_backup(engine: Engine, data_dir: Path, current: set[str], heads: set[str]) -> UpgradeReport:
    """Back up the index (and ``hilum.toml``) of ``data_dir`` before migrating it from ``current`` to ``heads``.

    Written into a hidden temporary folder, renamed into ``DATA/backups/`` when complete; on any
    failure that folder is removed and :class:`UpgradeError` raised.
    """
    root = data_dir / BACKUPS
    name = f"{PREFIX}{_schema_name(current)}-to-{_schema_name(heads)}-{_stamp()}"
    final = root / name
    partial = root / f".{name}.partial"
    made_root = not root.exists()
    what = f"schema {_schema_name(current)} to {_schema_name(heads)}"
    try:
        if root.is_dir():  # what a backup cut short (a crash, a power cut) left: this process holds the lock
            for stale in root.glob(f".{PREFIX}*.partial"):
                shutil.rmtree(stale, ignore_errors=True)
        partial.mkdir(parents=True)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "hilum_version": __version__,
            "created_at": datetime.now(UTC).isoformat(),
            "data_dir": str(data_dir),
            "database": engine.dialect.name,
            "from_schema": sorted(current),
            "to_schema": sorted(heads),
            "blobs": {"copied": False, "note": BLOB_NOTE},
        }
        if engine.dialect.name == "sqlite":
            manifest.update(_backup_sqlite(engine, partial))
        else:
            manifest.update(_dump_tables(engine, partial))
        config = data_dir / "hilum.toml"
        if config.is_file():
            shutil.copy2(config, partial / "hilum.toml")
            manifest["config"] = {"file": "hilum.toml", "sha256": _sha256(partial / "hilum.toml")}
        _write_json(partial / MANIFEST, manifest)
        fsync_dir(partial)
        os.replace(partial, final)
        fsync_dir(root)
    except Exception as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if made_root:
            with contextlib.suppress(OSError):
                root.rmdir()
        reason = str(getattr(exc, "strerror", None) or getattr(exc, "orig", None) or exc).splitlines()
        raise UpgradeError(
            f"{data_dir}: the backup before upgrading the index from {what} failed "
            f"({(reason or [type(exc).__name__])[0]}); nothing was migrated: free disk space or fix the "
            f"permission of {root} and start Hilum again"
        ) from exc
    counts = manifest.get("counts", {})
    return UpgradeReport(str(data_dir), sorted(current), sorted(heads), str(final), counts=counts)


def _backup_sqlite(engine: Engine, dest: Path) -> dict[str, Any]:
    """A consistent copy of the SQLite index into ``dest/index.sqlite`` (SQLite's backup API), checked and counted."""
    source = engine.url.database
    if not source or source == ":memory:":
        raise UpgradeError("an in-memory index has nothing to back up")
    src = Path(source)
    need = sum(p.stat().st_size for p in (src, Path(f"{src}-wal")) if p.exists())
    free = shutil.disk_usage(dest).free
    if free < need + SPACE_MARGIN:
        raise OSError(28, f"not enough disk space: the index needs {need >> 20} MiB, {free >> 20} MiB free")
    copy_path = dest / "index.sqlite"
    copy_sqlite(source, copy_path)  # one step: one read transaction
    copy = sqlite3.connect(copy_path)
    try:
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        check = copy.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise UpgradeError(f"the copy of the index fails SQLite's check: {check}")
        names = [
            r[0]
            for r in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        ]
        counts = {n: int(copy.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0]) for n in sorted(names)}
        revisions = sorted(r[0] for r in copy.execute("SELECT version_num FROM alembic_version"))
    finally:
        copy.close()
    with open(copy_path, "rb+") as f:
        os.fsync(f.fileno())
    return {
        "index": {
            "file": "index.sqlite",
            "size": copy_path.stat().st_size,
            "sha256": _sha256(copy_path),
            "schema": revisions,
        },
        "counts": counts,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _dump_tables(engine: Engine, dest: Path) -> dict[str, Any]:
    """Every table of the (PostgreSQL) index, as reflected, into ``dest/tables/<name>.jsonl`` in one snapshot."""
    tables_dir = dest / "tables"
    tables_dir.mkdir()
    counts: dict[str, int] = {}
    files: dict[str, str] = {}
    schema: dict[str, Any] = {}
    with engine.connect() as raw:
        conn = raw.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            md = MetaData()
            md.reflect(conn)
            for table in md.sorted_tables:
                schema[table.name] = {
                    "columns": [
                        {"name": c.name, "type": str(c.type), "nullable": bool(c.nullable)} for c in table.columns
                    ],
                    "primary_key": [c.name for c in table.primary_key.columns],
                    "foreign_keys": sorted(f"{fk.parent.name} -> {fk.target_fullname}" for fk in table.foreign_keys),
                }
                path = tables_dir / f"{table.name}.jsonl"
                n = 0
                order = list(table.primary_key.columns) or list(table.columns)
                result = conn.execution_options(stream_results=True, yield_per=2000).execute(
                    select(table).order_by(*order)
                )
                with open(path, "w", encoding="utf-8") as f:
                    for part in result.mappings().partitions(2000):
                        f.writelines(json.dumps(dict(r), default=_jsonable, ensure_ascii=False) + "\n" for r in part)
                        n += len(part)
                    f.flush()
                    os.fsync(f.fileno())
                counts[table.name] = n
                files[f"tables/{table.name}.jsonl"] = _sha256(path)
            revisions = sorted(str(r[0]) for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version"))
    _write_json(dest / "schema.json", schema)
    files["schema.json"] = _sha256(dest / "schema.json")
    return {
        "index": {"dump": "tables/<table>.jsonl, one JSON object a row", "schema": revisions, "sha256": files},
        "counts": counts,
    }


def _note_migrated(folder: Path, report: UpgradeReport) -> None:
    """Add to the backup's manifest that the migration it preceded was done, and how long each part took."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["upgrade"] = {
            "migrated_at": datetime.now(UTC).isoformat(),
            "backup_seconds": report.backup_seconds,
            "migrate_seconds": report.migrate_seconds,
        }
        _write_json(path, manifest)
    except (OSError, ValueError):
        log.warning("could not note the finished migration in %s", path, exc_info=True)


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a pre-upgrade backup folder (:class:`UpgradeError` when it is not one)."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UpgradeError(f"{folder} is not a pre-upgrade backup: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UpgradeError(f"{folder} is not a pre-upgrade backup (no {FORMAT} manifest)")
    return manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)




# --------------------------------------------------------------------------- rolling back


@dataclass
class RollbackReport:
    """What :func:`rollback` did: the schema the index is at again, where what the upgrade had made was kept."""

    data_dir: str
    backup: str
    schema: list[str]
    counts: dict[str, int]
    kept: str

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def verify_backup(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists has its sha256; :class:`UpgradeError` naming the first that does not."""
    index = manifest.get("index", {})
    sums = dict(index.get("sha256", {})) if isinstance(index.get("sha256"), dict) else {}
    if isinstance(index.get("sha256"), str):
        sums[index.get("file", "index.sqlite")] = index["sha256"]
    if "config" in manifest:
        sums[manifest["config"]["file"]] = manifest["config"]["sha256"]
    if not sums:
        raise UpgradeError(f"{folder}: the manifest lists no file to check")
    for name, digest in sums.items():
        path = folder / name
        if not path.is_file() or _sha256(path) != digest:
            raise UpgradeError(f"{path}: missing or fails its sha256: this backup cannot be used to roll back")


def rollback(
    folder: str | os.PathLike[str], data_dir: str | os.PathLike[str], *, database_url: str | None = None
) -> RollbackReport:
    """Put the index (and ``hilum.toml``) of ``data_dir`` back as the pre-upgrade backup ``folder`` holds them.

    For going back to the release that made that index (``installer/UPGRADING.md``); run with the
    node stopped.  Nothing is destroyed: on SQLite the current index, its ``-wal``/``-shm`` and
    ``hilum.toml`` are moved into ``DATA/backups/before-rollback-<time>/``; on PostgreSQL every
    table is first dumped there (as before an upgrade), then the tables are dropped, the schema
    is made at the backup's revisions and the backup's rows are loaded.
    """
    src = Path(folder).expanduser().absolute()
    data = Path(data_dir).expanduser().absolute()
    manifest = read_manifest(src)
    verify_backup(src, manifest)
    schema = list(manifest.get("from_schema", []))
    unknown = sorted(set(schema) - known_revisions())
    if unknown:
        raise UpgradeError(f"{src}: the backup's schema {unknown} is unknown to this Hilum {__version__}")
    sqlite_target = not database_url or database_url.startswith("sqlite")
    if sqlite_target != (manifest.get("database") == "sqlite"):
        raise UpgradeError(
            f"{src} is a backup of a {manifest.get('database')} index; this data folder's index "
            f"is {'SQLite' if sqlite_target else 'PostgreSQL'}"
        )
    kept = data / BACKUPS / f"before-rollback-{_stamp()}"
    kept.mkdir(parents=True)
    if sqlite_target:
        target = Path(database_url.split("///", 1)[1]) if database_url else data / "index.sqlite"
        for p in (target, Path(f"{target}-wal"), Path(f"{target}-shm")):
            if p.exists():
                os.replace(p, kept / p.name)
        replace_sqlite_file(src / "index.sqlite", target)  # copied beside, fsynced, renamed over
    else:
        from hilum.archive.db import make_engine

        engine = make_engine(str(database_url))
        try:
            _load_dump(engine, src, kept, schema)
        finally:
            engine.dispose()
    if (src / "hilum.toml").is_file():
        config = data / "hilum.toml"
        if config.exists():
            os.replace(config, kept / "hilum.toml")
        shutil.copy2(src / "hilum.toml", config)
    log.info(
        "index of %s rolled back to schema %s from %s; what the upgrade made is in %s",
        data,
        "+".join(schema),
        src,
        kept,
    )
    return RollbackReport(str(data), str(src), schema, dict(manifest.get("counts", {})), str(kept))


def _from_json(kind: Any, v: Any) -> Any:
    """A value of a dumped row back in the type of its column (``kind``)."""
    from sqlalchemy import Date, DateTime, LargeBinary, Time

    if v is None:
        return None
    if isinstance(kind, DateTime):
        return datetime.fromisoformat(v)
    if isinstance(kind, Date):
        return date.fromisoformat(v)
    if isinstance(kind, Time):
        return dtime.fromisoformat(v)
    if isinstance(kind, LargeBinary) and isinstance(v, dict):
        return base64.b64decode(v["base64"])
    return v


def _load_dump(engine: Engine, src: Path, kept: Path, schema: list[str]) -> None:
    """The JSON-lines dump in ``src`` into the PostgreSQL database behind ``engine``, at its revisions ``schema``."""
    from alembic import command
    from sqlalchemy import text

    from hilum.archive.db import alembic_config

    with _upgrade_lock(engine, kept) as conn:
        assert conn is not None
        kept.joinpath("index").mkdir()
        _dump_tables(engine, kept / "index")  # what is there now, kept before anything is dropped
        with conn.begin():
            md = MetaData()
            md.reflect(conn)
            md.drop_all(conn)
            for revision in schema:
                command.upgrade(alembic_config(conn), revision)
            md = MetaData()
            md.reflect(conn)
            for table in md.sorted_tables:
                if table.name == "alembic_version":
                    continue
                path = src / "tables" / f"{table.name}.jsonl"
                if not path.exists():
                    continue
                kinds = {c.name: c.type for c in table.columns}
                rows: list[dict[str, Any]] = []

                with open(path, encoding="utf-8") as f:
                    for line in f:
                        rows.append({k: _from_json(kinds.get(k), v) for k, v in json.loads(line).items()})
                        if len(rows) >= 2000:
                            conn.execute(table.insert(), rows)
                            rows = []
                if rows:
                    conn.execute(table.insert(), rows)
                if "pk" in table.c:
                    conn.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{table.name}', 'pk'), "
                            f'COALESCE((SELECT MAX(pk) FROM "{table.name}"), 1), '
                            f'(SELECT MAX(pk) FROM "{table.name}") IS NOT NULL)'
                        )
                    )


# --------------------------------------------------------------------------- hilum.toml


def upgrade_config(cfg: Any, report: UpgradeReport | None = None) -> Path | None:
    """Stamp an older ``hilum.toml`` of ``cfg``'s data folder with this format (:func:`hilum.config.upgrade_config_file`).

    ``report``: the index upgrade just made, whose backup folder gets the copy of the old file
    too (it has one already, taken with the index).  A file that cannot be written is left as it
    is (its settings were understood anyway) with a warning.  Returns the copy kept beside it.
    """
    from hilum.config import upgrade_config_file

    try:
        return upgrade_config_file(cfg, backup_dir=Path(report.backup) if report else None)
    except OSError as exc:
        log.warning("could not stamp %s with this format (%s); it is read as it is", cfg.config_path, exc)
        return None
