"""Backup and restore of a node's archive: the index and the online blobs, consistent while the node runs.

A backup is a folder that is itself laid out like a data folder::

    DEST/index.sqlite     a snapshot of the index (SQLite, whatever the node's database is)
    DEST/blobs/<key>      every online blob the snapshot refers to (hard links on the same file system)
    DEST/hilum.toml       the node's configuration, for reference (restore uses it only where the target has none)
    DEST/manifest.json    written last: format, schema revision, counts, sizes, checksums

**Consistency while the node receives.**  The index is taken first, as one
snapshot: on SQLite with the ``sqlite3`` backup API in a single step (one read
transaction: in WAL mode the node keeps writing meanwhile), on PostgreSQL in
one ``REPEATABLE READ`` transaction copied table by table into the backup's
SQLite file (no ``pg_dump`` whose version must match the server's).  Then the
blobs *that snapshot* refers to are linked or copied, each one checked
against the checksum in the snapshot.  Blobs are never changed in place (a
new file is renamed over, a transcode writes a new key), so a blob that no
longer matches was replaced since the snapshot: the live index is asked for
the instance's current key and checksum, the current file is taken and the
backup's row updated (so the backup holds the compressed form of an instance
transcoded during the backup, with its row saying so).  An instance deleted or
purged since the snapshot is dropped from the backup (purged: kept as an
offline row, as in the live index), and the manifest says how many.
Instances that arrived after the snapshot are not in the backup.

**What is not copied.**  Copies on other tiers (S3, a NAS) and on peers are
not copied: their ``blob_copies`` rows stay in the backup, so that a restored
node knows where its offline instances are and can recall them — provided the
tier still holds them.  Offline instances (``instances.online = false``) have
rows but no blob in the backup.

**Restore** goes into an empty data folder (or over one with ``force``, which
moves the old index and blobs aside into ``replaced-<time>/``; on PostgreSQL
it empties the tables), SQLite or PostgreSQL (``[archive] database_url`` of
the target's ``hilum.toml``).  Every blob is checked against its checksum as
it is copied; nothing is indexed unless every blob was copied intact, and the
index comes last (a restore that stops half-way leaves a marker file and is
refused as "incomplete" until it is run again with ``force``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash
from sqlalchemy import Engine, Table, delete, func, inspect, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from hilum.archive import storage
from hilum.archive.blobs import CHECKSUM_ALGORITHM, FileBlobStore, fsync_dir
from hilum.archive.db import copy_sqlite, make_engine, migrate, replace_sqlite_file
from hilum.archive.schema import blob_copies, instances, metadata, series, studies
from hilum.errors import HilumError

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger("hilum.storage")

FORMAT = "hilum-backup"
VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.sqlite"
RESTORING = "restore.incomplete"
TIER_NOTE = (
    "copies on other tiers and peers are not in the backup: their blob_copies rows are, so a restored "
    "node recalls offline instances from those tiers while they hold them"
)
CHUNK = 2000
WORKERS = 4
RETRIES = 5

Progress = Callable[[int, int], None]


class BackupError(HilumError):
    """A backup or restore that cannot be made (a non-empty target, a damaged backup, a blob that fails its checksum)."""


@dataclass
class BackupReport:
    """What a backup or a restore did (``as_dict`` is the manifest's body and the CLI's ``--json``)."""

    path: str
    manifest: dict[str, Any] = field(default_factory=dict)
    linked: int = 0
    copied: int = 0
    updated: list[str] = field(default_factory=list)  # instances replaced (transcoded) since the snapshot
    dropped: list[str] = field(default_factory=list)  # instances deleted since the snapshot
    offline: list[str] = field(default_factory=list)  # instances purged from the online store since the snapshot
    from_tiers: int = 0  # blobs not in this node's online store, fetched from a tier's verified copy
    moved_aside: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "linked": self.linked,
            "copied": self.copied,
            "from_tiers": self.from_tiers,
            "updated": self.updated,
            "dropped": self.dropped,
            "offline": self.offline,
            "moved_aside": self.moved_aside,
            "manifest": self.manifest,
        }


# --------------------------------------------------------------------------- helpers


def _checksum_of(path: Path, algo: str) -> str:
    h: Any = xxhash.xxh3_128() if algo == CHECKSUM_ALGORITHM else hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return f"{CHECKSUM_ALGORITHM}:{h.hexdigest()}" if algo == CHECKSUM_ALGORITHM else h.hexdigest()


def _checksum_of_bytes(data: bytes, algo: str) -> str:
    if algo == CHECKSUM_ALGORITHM:
        return f"{CHECKSUM_ALGORITHM}:{xxhash.xxh3_128_hexdigest(data)}"
    return hashlib.sha256(data).hexdigest()


def _algo(expected: str) -> str:
    return expected.rpartition(":")[0]


def _copy_verified(src: Path, dest: Path, expected: str) -> bool:
    """Copy ``src`` to ``dest`` (temp name, fsync, rename) while hashing; False (nothing left) when it does not match."""
    algo = _algo(expected)
    h: Any = xxhash.xxh3_128() if algo == CHECKSUM_ALGORITHM else hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".copying")
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        while chunk := fi.read(1 << 20):
            h.update(chunk)
            fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    actual = f"{CHECKSUM_ALGORITHM}:{h.hexdigest()}" if algo == CHECKSUM_ALGORITHM else h.hexdigest()
    if actual != expected:
        tmp.unlink()
        return False
    os.replace(tmp, dest)
    return True




def _fsync_tree(root: Path) -> None:
    """fsync every folder under ``root`` (and itself): the names of the blobs linked or copied there are durable."""
    for folder, _dirs, _files in os.walk(root):
        fsync_dir(Path(folder))


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _sqlite_engine(path: Path) -> Engine:
    return make_engine(f"sqlite:///{path}")


def _read_only_engine(path: Path) -> Engine:
    """The backup's index opened read-only (opening it as the archive does would switch it to WAL: a change)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(
        "sqlite://",
        poolclass=NullPool,
        creator=lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False),
    )


def _heads(conn: Connection) -> list[str]:
    try:
        return sorted(r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version")))
    except Exception:  # noqa: BLE001 - no alembic table: an empty database
        return []


def _table_counts(conn: Connection, tables: Iterable[Table]) -> dict[str, int]:
    return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in tables}


def _plain_datetimes(row: dict[str, Any], *, aware: bool) -> dict[str, Any]:
    """Datetimes of a row as UTC: naive for SQLite (as the archive writes them), aware for PostgreSQL."""
    for k, v in row.items():
        if isinstance(v, datetime):
            v = v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
            row[k] = v if aware else v.replace(tzinfo=None)
    return row


def _copy_tables(
    src: Connection, dest: Connection, tables: list[Table], *, aware: bool, progress: Progress | None = None
) -> dict[str, int]:
    """Every row of ``tables`` (parents first) from ``src`` into ``dest``; returns the counts copied."""
    counts: dict[str, int] = {}
    total = len(tables)
    for i, table in enumerate(tables):
        n = 0
        result = src.execution_options(stream_results=True, yield_per=CHUNK).execute(
            select(table).order_by(*table.primary_key.columns)
        )
        for part in result.mappings().partitions(CHUNK):
            rows = [_plain_datetimes(dict(r), aware=aware) for r in part]
            dest.execute(table.insert(), rows)
            n += len(rows)
        counts[table.name] = n
        if progress is not None:
            progress(i + 1, total)
    return counts


def _data_tables(conn: Connection) -> list[Table]:
    """The schema's tables that exist in the database behind ``conn``, parents first."""
    names = set(inspect(conn).get_table_names())
    return [t for t in metadata.sorted_tables if t.name in names]


# --------------------------------------------------------------------------- backup


def backup(
    archive: Archive,
    dest: str | os.PathLike[str],
    *,
    link: bool = True,
    config: Path | None = None,
    progress: Progress | None = None,
) -> BackupReport:
    """Back up ``archive`` (index + online blobs) into the new or empty folder ``dest`` (module docstring).

    ``link=False`` copies every blob even on the same file system; ``config`` is the node's
    ``hilum.toml`` (default: the data folder's), kept beside the backup.  Raises
    :class:`BackupError` when ``dest`` holds anything, a blob cannot be taken, or the
    disk or the database fails (a full disk: the reason, in one line).
    """
    try:
        return _backup(archive, dest, link=link, config=config, progress=progress)
    except BackupError:
        raise
    except (OSError, sqlite3.Error, SQLAlchemyError) as exc:
        raise BackupError(f"the backup to {dest} failed: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or getattr(exc, "strerror", None) or exc)
    return (text.splitlines() or [type(exc).__name__])[0]


def _backup(
    archive: Archive,
    dest: str | os.PathLike[str],
    *,
    link: bool = True,
    config: Path | None = None,
    progress: Progress | None = None,
) -> BackupReport:
    """:func:`backup`, its errors not yet put in one line."""
    dest = Path(dest).expanduser().absolute()
    if dest == archive.data_dir.absolute() or dest.is_relative_to(archive.blobs.root.absolute()):
        raise BackupError(f"{dest} is inside the data folder's blob store: choose a folder elsewhere")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"{dest} is not an empty folder: choose a new one for the backup")
    try:
        (dest / "blobs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackupError(f"cannot write the backup to {dest}: {exc.strerror or exc}") from exc
    report = BackupReport(str(dest))
    index = dest / INDEX
    started = storage.utcnow()
    _snapshot(archive, index)
    engine = _sqlite_engine(index)
    try:
        _take_blobs(archive, engine, dest, report, link=link, progress=progress)
        with engine.connect() as conn:
            heads = _heads(conn)
            counts = _table_counts(conn, _data_tables(conn))
            online = int(
                conn.execute(
                    select(func.count()).select_from(instances).where(instances.c.online.is_(True))
                ).scalar_one()
            )
            online_bytes = int(
                conn.execute(
                    select(func.coalesce(func.sum(instances.c.size), 0)).where(instances.c.online.is_(True))
                ).scalar_one()
            )
            copies = int(conn.execute(select(func.count()).select_from(blob_copies)).scalar_one())
    finally:
        engine.dispose()
    # One file: no WAL left beside it (a backup is copied around as a folder).
    db = sqlite3.connect(index)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
    finally:
        db.close()
    config = config or archive.data_dir / "hilum.toml"
    if config.is_file():
        shutil.copy2(config, dest / "hilum.toml")
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": started.isoformat(),
        "finished_at": storage.utcnow().isoformat(),
        "source": {"data_dir": str(archive.data_dir), "database": archive.dialect, "host": socket.gethostname()},
        "schema": heads,
        "counts": counts,
        "instances": {
            "total": counts.get("instances", 0),
            "online": online,
            "offline": counts.get("instances", 0) - online,
        },
        "blobs": {
            "count": online,
            "bytes": online_bytes,
            "linked": report.linked,
            "copied": report.copied,
            "from_tiers": report.from_tiers,
            "checksum": CHECKSUM_ALGORITHM + " of each blob, in the index's instances.checksum",
        },
        "index": {"file": INDEX, "size": index.stat().st_size, "checksum": _checksum_of(index, CHECKSUM_ALGORITHM)},
        "since_snapshot": {
            "updated": len(report.updated),
            "dropped": len(report.dropped),
            "offline": len(report.offline),
        },
        "tier_copies": {"rows": copies, "objects_copied": False, "note": TIER_NOTE},
    }
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest / MANIFEST)
    fsync_dir(dest)
    report.manifest = manifest
    try:
        with archive.transaction() as conn:
            storage.log_action(
                conn,
                "backup",
                str(dest)[-64:],
                level="ARCHIVE",
                instances=online,
                bytes_before=online_bytes,
                bytes_after=online_bytes,
                detail=f"{counts.get('studies', 0)} studies; {report.linked} linked, {report.copied} copied",
            )
    except Exception:  # noqa: BLE001 - a read-only index still gets its backup
        log.warning("backup made, but it could not be noted in the policy log", exc_info=True)
    return report


def _snapshot(archive: Archive, index: Path) -> None:
    """The index as of one instant, into the SQLite file ``index``."""
    if archive.dialect == "sqlite":
        source = archive.engine.url.database
        if not source:
            raise BackupError("an in-memory index cannot be backed up")
        copy_sqlite(source, index)  # one step: one read transaction, the node keeps writing (WAL)
        return
    engine = _sqlite_engine(index)
    try:
        migrate(engine)  # the schema at this code's heads; the source was migrated to them when opened
        with archive.engine.connect() as raw:
            src = raw.execution_options(isolation_level="REPEATABLE READ")
            with src.begin(), engine.begin() as dst:
                theirs, ours = _heads(src), _heads(dst)
                if theirs != ours:
                    raise BackupError(
                        f"the index is at schema {theirs}, this program at {ours}: "
                        "back up with the program that runs the node"
                    )
                _copy_tables(src, dst, _data_tables(src), aware=False)
    finally:
        engine.dispose()


def _take_blobs(
    archive: Archive, engine: Engine, dest: Path, report: BackupReport, *, link: bool, progress: Progress | None
) -> None:
    """Link or copy every online blob the snapshot refers to, checked; follow the ones replaced since."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(instances.c.pk, instances.c.sop_uid, instances.c.blob_key, instances.c.checksum)
            .where(instances.c.online.is_(True))
            .order_by(instances.c.pk)
        ).all()
    link = link and _same_fs(archive.blobs.root, dest)
    gone: list[int] = []
    unavailable: list[str] = []

    def first(row: Any) -> str:
        return _take_one(archive.blobs.path(row[2]), dest / "blobs" / row[2], row[3], link=link)

    # A few at a time (reading, hashing, copying and fsyncs overlap), a chunk of rows after another (a
    # million instances are not a million futures at once); what was not taken as the snapshot says is
    # followed up one by one.
    def taken(pool: ThreadPoolExecutor) -> Iterator[str]:
        for start in range(0, len(rows), CHUNK):
            yield from pool.map(first, rows[start : start + CHUNK])

    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="backup") as pool:
        for i, ((pk, sop, key, checksum), how) in enumerate(zip(rows, taken(pool), strict=True)):
            if how:
                _count(report, how)
                if progress is not None:
                    progress(i + 1, len(rows))
                continue
            for attempt in range(RETRIES):
                how = _take_one(archive.blobs.path(key), dest / "blobs" / key, checksum, link=link)
                if how:
                    _count(report, how)
                    break
                live = _live_row(archive, sop)
                if live is None:  # deleted since the snapshot
                    gone.append(pk)
                    report.dropped.append(sop)
                    break
                if not live["online"]:  # purged from the online store since: an offline row, as in the index
                    with engine.begin() as conn:
                        conn.execute(update(instances).where(instances.c.pk == pk).values(online=False))
                        _refresh_copies(archive, conn, pk, sop)
                    report.offline.append(sop)
                    break
                if (live["blob_key"], live["checksum"]) != (key, checksum):  # replaced (a transcode): take the new one
                    key, checksum = live["blob_key"], live["checksum"]
                    with engine.begin() as conn:
                        conn.execute(
                            update(instances)
                            .where(instances.c.pk == pk)
                            .values(
                                blob_key=key,
                                checksum=checksum,
                                size=live["size"],
                                transfer_syntax=live["transfer_syntax"],
                            )
                        )
                        _refresh_copies(archive, conn, pk, sop)
                    if sop not in report.updated:
                        report.updated.append(sop)
                    continue
                if attempt < 2 and archive.blobs.path(key).exists():
                    time.sleep(0.05)  # an overwrite renamed into place before its row changed: look again
                    continue
                # Not here, or not what the index says: another node's file in a scale-out, or one on a tier.
                if _take_from_tier(archive, int(live["pk"]), key, checksum, dest / "blobs" / key):
                    report.from_tiers += 1
                else:
                    unavailable.append(sop)
                break
            else:
                raise BackupError(f"instance {sop}: its blob {key} keeps changing or fails its checksum")
            if progress is not None:
                progress(i + 1, len(rows))
    if report.updated:
        with engine.begin() as conn:
            _recount_sizes(conn)
    if unavailable:
        raise BackupError(
            f"{len(unavailable)} instance(s) are neither intact in this node's online store nor on a tier (first: "
            f"{unavailable[0]}): run 'hilum check' (in a scale-out, another node's instances reach this node "
            "through the write-through tier: back up again once they are there)"
        )
    if gone:
        _drop_instances(engine, dest, gone)
    _fsync_tree(dest / "blobs")


def _take_from_tier(archive: Archive, instance_pk: int, key: str, checksum: str, dest: Path) -> bool:
    """Fetch a blob that is not in the online store from a tier holding a verified copy of it (checked)."""
    tiers = getattr(archive, "tiers", None)
    if tiers is None:
        return False
    with archive.engine.connect() as conn:
        copies = storage.copies_of(conn, instance_pk)
    for c in copies:
        loc = str(c["location"])
        if not loc.startswith("tier:") or c["verified_at"] is None or (c["checksum"] and c["checksum"] != checksum):
            continue
        try:
            data = tiers.get(loc[len("tier:") :], c["key"])
        except Exception as exc:  # noqa: BLE001 - a tier that is down: try the next, then say so
            log.warning("backup: %s of %s from %s failed: %s", c["key"], key, loc, exc)
            continue
        if _checksum_of_bytes(data, _algo(checksum)) != checksum:
            log.warning("backup: the copy of %s on %s fails its checksum", key, loc)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".copying")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        return True
    return False


def _take_one(src: Path, dest: Path, checksum: str, *, link: bool) -> str:
    """Hard-link (or copy) one blob and check it: ``linked``, ``copied``, or '' when it is gone or no longer
    what ``checksum`` says."""
    try:
        if dest.exists():
            dest.unlink()
        if link:
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dest)
            except FileNotFoundError:
                return ""
            except OSError:  # no hard links here (another file system, a FAT disk...): copy
                link = False
            else:
                if _checksum_of(dest, _algo(checksum)) == checksum:
                    return "linked"
                dest.unlink()
                return ""
        return "copied" if _copy_verified(src, dest, checksum) else ""
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise BackupError(f"cannot take blob {src}: {exc.strerror or exc}") from exc


def _count(report: BackupReport, how: str) -> None:
    if how == "linked":
        report.linked += 1
    elif how == "copied":
        report.copied += 1


def _live_row(archive: Archive, sop: str) -> dict[str, Any] | None:
    c = instances.c
    with archive.engine.connect() as conn:
        row = (
            conn.execute(
                select(c.pk, c.blob_key, c.checksum, c.size, c.transfer_syntax, c.online).where(c.sop_uid == sop)
            )
            .mappings()
            .first()
        )
    return None if row is None else dict(row)


def _refresh_copies(archive: Archive, conn: Connection, pk: int, sop: str) -> None:
    """The live index's copies elsewhere of one instance, into the backup's row of it."""
    c = blob_copies.c
    with archive.engine.connect() as live:
        rows = (
            live.execute(
                select(blob_copies).join(instances, instances.c.pk == c.instance_fk).where(instances.c.sop_uid == sop)
            )
            .mappings()
            .all()
        )
    conn.execute(delete(blob_copies).where(c.instance_fk == pk))
    for r in rows:
        row = _plain_datetimes(dict(r), aware=False)
        row.pop("pk", None)
        row["instance_fk"] = pk
        conn.execute(blob_copies.insert().values(**row))


def _recount_sizes(conn: Connection) -> None:
    sizes = (
        select(func.coalesce(func.sum(instances.c.size), 0))
        .select_from(instances.join(series, series.c.pk == instances.c.series_fk))
        .where(series.c.study_fk == studies.c.pk)
        .scalar_subquery()
    )
    conn.execute(update(studies).values(size_bytes=sizes))


def _drop_instances(engine: Engine, dest: Path, pks: list[int]) -> None:
    """Remove from the backup the instances deleted since the snapshot (counters kept right, empty parents gone)."""
    from hilum.archive.index import IndexWriter
    from hilum.archive.sqlfast import resolve_mode

    writer = IndexWriter(
        engine,
        FileBlobStore(dest / "blobs"),
        duplicate_policy="ignore",
        mode=resolve_mode("sqlalchemy"),
        emit=lambda _e: None,
    )
    with writer.transaction() as conn:
        conn.execute(delete(blob_copies).where(blob_copies.c.instance_fk.in_(pks)))
        writer.delete_instances(conn, pks)


# --------------------------------------------------------------------------- restore


def read_manifest(src: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of the backup in ``src``; :class:`BackupError` when it is not a complete Hilum backup."""
    path = Path(src).expanduser() / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BackupError(f"{Path(src)} is not a complete Hilum backup (no {MANIFEST})") from exc
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path}: cannot read the manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: not a Hilum backup manifest")
    if manifest.get("version") != VERSION:
        raise BackupError(f"{path}: backup format version {manifest.get('version')!r}, this program reads {VERSION}")
    return manifest


def restore(
    src: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    database_url: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> BackupReport:
    """Restore the backup in ``src`` into ``data_dir`` (its index in ``database_url``, else SQLite there).

    The target must be empty (no indexed instance, no blob) unless ``force``.
    Every blob is checked against its checksum; :class:`BackupError` on any
    problem, before the index is written.
    """
    try:
        return _restore(src, data_dir, database_url=database_url, force=force, progress=progress)
    except BackupError:
        raise
    except (OSError, sqlite3.Error, SQLAlchemyError) as exc:
        raise BackupError(f"the restore into {data_dir} failed: {_reason(exc)}") from exc


def _restore(
    src: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    database_url: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> BackupReport:
    """:func:`restore`, its errors not yet put in one line."""
    src = Path(src).expanduser().absolute()
    data = Path(data_dir).expanduser().absolute()
    manifest = read_manifest(src)
    index = src / INDEX
    expected = manifest.get("index", {}).get("checksum", "")
    if not index.is_file() or _checksum_of(index, CHECKSUM_ALGORITHM) != expected:
        raise BackupError(f"{index}: the backup's index is missing or fails its checksum")
    from alembic.script import ScriptDirectory

    from hilum.archive.db import MIGRATIONS

    known = {s.revision for s in ScriptDirectory(MIGRATIONS).walk_revisions()}
    unknown = [h for h in manifest.get("schema", []) if h not in known]
    if unknown:
        raise BackupError(
            f"the backup's index is at schema {unknown}, which this program does not know: "
            "restore with the program version that made it, or a newer one"
        )
    report = BackupReport(str(data), manifest=manifest)
    data.mkdir(parents=True, exist_ok=True)
    marker = data / RESTORING
    busy = ("an earlier restore did not finish" if marker.exists() else "") or _target_in_use(data, database_url)
    if busy and not force:
        raise BackupError(
            f"{data} is not empty ({busy}): restore into an empty data folder, or use --force to replace what is there"
        )
    marker.write_text(f"restoring {src}\n", encoding="utf-8")
    if busy or force:
        report.moved_aside = _move_aside(data)

    index, manifest = _at_current_schema(index, manifest, data)
    backup_engine = _read_only_engine(index)
    try:
        with backup_engine.connect() as conn:
            rows = conn.execute(
                select(instances.c.sop_uid, instances.c.blob_key, instances.c.checksum)
                .where(instances.c.online.is_(True))
                .order_by(instances.c.pk)
            ).all()
        blobs = FileBlobStore(data / "blobs")
        blobs.ensure()
        bad: list[str] = []

        def copy(row: Any) -> bool:
            try:
                return _copy_verified(src / "blobs" / row[1], blobs.path(row[1]), row[2])
            except FileNotFoundError:
                return False

        # A few at a time: reading, hashing and each file's fsync overlap (restore is 2-3x faster on 4).
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="restore") as pool:
            copied = (ok for start in range(0, len(rows), CHUNK) for ok in pool.map(copy, rows[start : start + CHUNK]))
            for i, (row, ok) in enumerate(zip(rows, copied, strict=True)):
                if ok:
                    report.copied += 1
                else:
                    bad.append(row[0])
                if progress is not None:
                    progress(i + 1, len(rows))
        if bad:
            # Leave the target as it was: the blobs copied so far go, and so does the marker.
            for _sop, key, _checksum in rows:
                blobs.path(key).unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            raise BackupError(
                f"{len(bad)} blob(s) of the backup are missing or fail their checksum (first: "
                f"{bad[0]}); nothing was restored"
                + (f" (what was there is in {report.moved_aside})" if report.moved_aside else "")
            )
        _fsync_tree(blobs.root)
        if _is_sqlite(database_url):
            replace_sqlite_file(index, data / INDEX)
        else:
            if busy or force:
                _empty_database(str(database_url))  # only now: every blob is in place and intact
            _restore_rows(backup_engine, str(database_url), manifest)
    finally:
        backup_engine.dispose()
        if index.parent == data:  # the migrated copy of an older backup's index
            index.unlink(missing_ok=True)
    config = src / "hilum.toml"
    if config.is_file() and not (data / "hilum.toml").exists():
        _restore_config(config, data / "hilum.toml")
    marker.unlink()
    _note_restore(data, database_url, src, manifest)
    return report


def _at_current_schema(index: Path, manifest: dict[str, Any], data: Path) -> tuple[Path, dict[str, Any]]:
    """The backup's index, or for a backup made at an older schema a copy of it in ``data`` migrated to this code's
    heads (with the manifest saying so): the restore reads and writes rows of today's schema.  No pre-upgrade
    backup is taken of it (:mod:`hilum.archive.upgrade`): the backup restored from is the state before."""
    from hilum.archive.db import code_heads

    heads = sorted(code_heads())
    if sorted(manifest.get("schema", [])) == heads:
        return index, manifest
    copy = data / f".{INDEX}.restoring-migrated"
    copy.unlink(missing_ok=True)
    copy_sqlite(index, copy, read_only=True)
    engine = _sqlite_engine(copy)
    try:
        migrate(engine)
    except Exception:
        copy.unlink(missing_ok=True)
        raise
    finally:
        engine.dispose()
    db = sqlite3.connect(copy)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
    finally:
        db.close()
    log.info("restoring a backup made at schema %s: its index migrated to %s", manifest.get("schema"), heads)
    return copy, {**manifest, "schema": heads}


def _is_sqlite(database_url: str | None) -> bool:
    """Whether the target's index is the data folder's SQLite file (a database URL elsewhere is not supported)."""
    if database_url and database_url.startswith("sqlite") and not database_url.endswith(f"/{INDEX}"):
        raise BackupError("restore puts a SQLite index in the data folder: drop database_url from its hilum.toml")
    return not database_url or database_url.startswith("sqlite")


def _target_in_use(data: Path, database_url: str | None) -> str:
    """Why the target is not empty ('' when it is)."""
    blobs = data / "blobs"
    if blobs.is_dir() and any(k for k in FileBlobStore(blobs).keys(on_error=lambda *_: None)):
        return "it holds blobs"
    if _is_sqlite(database_url):
        if not (data / INDEX).exists():
            return ""
        url = f"sqlite:///{data / INDEX}"
    else:
        url = str(database_url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            for table in metadata.sorted_tables:  # any row at all (users, orders, a log...) is something to keep
                if table.name in names and conn.execute(select(1).select_from(table).limit(1)).first() is not None:
                    return f"its index has {table.name}"
    except Exception as exc:  # noqa: BLE001 - a database that cannot be reached
        raise BackupError(
            f"cannot open the target index: {str(getattr(exc, 'orig', None) or exc).splitlines()[0]}"
        ) from exc
    finally:
        engine.dispose()
    return ""


def _move_aside(data: Path) -> str:
    """Make room for the restore: the data folder's SQLite index and blobs moved into ``replaced-<time>/``."""
    aside = data / f"replaced-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    moved = False
    for name in ("blobs", INDEX, INDEX + "-wal", INDEX + "-shm"):
        p = data / name
        if p.exists():
            aside.mkdir(exist_ok=True)
            os.replace(p, aside / name)
            moved = True
    return str(aside) if moved else ""


def _empty_database(url: str) -> None:
    """Drop the archive's tables of the PostgreSQL index at ``url`` (``--force``)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            names = set(inspect(conn).get_table_names())
            for t in reversed(metadata.sorted_tables):
                if t.name in names:
                    conn.execute(text(f'DROP TABLE "{t.name}" CASCADE'))
            if "alembic_version" in names:
                conn.execute(text("DROP TABLE alembic_version"))
    finally:
        engine.dispose()


def _restore_rows(backup_engine: Engine, url: str, manifest: dict[str, Any]) -> None:
    """The backup's rows into the (empty) PostgreSQL index at ``url``, at the backup's schema, then migrated on."""
    from alembic import command

    from hilum.archive.db import alembic_config

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for head in manifest.get("schema", []):
                command.upgrade(alembic_config(conn), head)
        with backup_engine.connect() as src, engine.begin() as dst:
            tables = _data_tables(src)
            present = set(inspect(dst).get_table_names())
            missing = [t.name for t in tables if t.name not in present]
            if missing:
                raise BackupError(f"the target index lacks the tables {missing}")
            _copy_tables(src, dst, tables, aware=True)
            for t in tables:
                if "pk" in t.c:
                    dst.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('{t.name}', 'pk'), "
                            f'COALESCE((SELECT MAX(pk) FROM "{t.name}"), 1), '
                            f'(SELECT MAX(pk) FROM "{t.name}") IS NOT NULL)'
                        )
                    )
        migrate(engine)
    finally:
        engine.dispose()


def _restore_config(src: Path, dest: Path) -> None:
    """The backup's hilum.toml for a target without one, as it was, but for its database URL (the source's live
    index, never to be restored over): that line is commented out."""
    text = src.read_text(encoding="utf-8")
    line = storage.config_line(text, "archive", "database_url")
    lines = text.splitlines(keepends=True)
    if line is not None and lines[line - 1].lstrip().startswith("database_url"):
        lines[line - 1] = "# restored from a backup; the source's index was: " + lines[line - 1]
        log.warning("restored hilum.toml without [archive] database_url: the index is the data folder's SQLite")
    dest.write_text("".join(lines), encoding="utf-8")


def _note_restore(data: Path, database_url: str | None, src: Path, manifest: dict[str, Any]) -> None:
    from hilum.archive.archive import Archive

    try:
        with Archive(data, database_url=database_url) as archive, archive.transaction() as conn:
            inst = manifest.get("instances", {})
            storage.log_action(
                conn,
                "restore",
                str(src)[-64:],
                level="ARCHIVE",
                instances=int(inst.get("total", 0)),
                detail=f"backup of {manifest.get('created_at', '?')}",
            )
    except Exception:  # noqa: BLE001 - restored all the same
        log.warning("restored, but the restore could not be noted in the policy log", exc_info=True)


def manifest_counts(manifest: dict[str, Any]) -> dict[str, int]:
    """Patients, studies, series, instances of a manifest (what a restored index must count)."""
    counts = manifest.get("counts", {})
    return {k: int(counts.get(k, 0)) for k in ("patients", "studies", "series", "instances")}
