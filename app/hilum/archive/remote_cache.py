"""The remote-study cache's own index: which studies and instances it holds, their sizes, and the
LRU order (last open).  SQL lives in ``hilum.archive``; :mod:`hilum.dicomweb.cache` is the logic.

A small SQLite file beside the cache's files (``<data>/remote-cache/cache.sqlite``), separate from
the node's archive: evicting or deleting the cache never touches the archive's index.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    func,
    insert,
    select,
    update,
)

metadata = MetaData()

cache_studies = Table(
    "cache_studies",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("source", String(64), nullable=False, default=""),
    Column("size_bytes", Integer, nullable=False, default=0),
    Column("instances", Integer, nullable=False, default=0),
    Column("complete", Boolean, nullable=False, default=False),
    Column("fetched_at", DateTime(timezone=True), nullable=False),
    Column("last_open", DateTime(timezone=True), nullable=False),
)

cache_instances = Table(
    "cache_instances",
    metadata,
    Column("sop_uid", String(64), primary_key=True),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("size_bytes", Integer, nullable=False),
    Column("file", String(255), nullable=False, default=""),
)


class CacheIndex:
    """Bookkeeping of :class:`hilum.dicomweb.cache.RemoteCache` (thread-safe)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(f"sqlite:///{self.path}", connect_args={"check_same_thread": False})
        metadata.create_all(self.engine)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.engine.dispose()

    def add_instance(self, study_uid: str, sop_uid: str, size: int, *, source: str = "", file: str = "") -> bool:
        """Count an instance in ``study_uid`` (created if new); False if it was there already."""
        now = datetime.now(UTC)
        with self._lock, self.engine.begin() as conn:
            if conn.execute(select(cache_instances.c.sop_uid).where(cache_instances.c.sop_uid == sop_uid)).first():
                return False
            row = conn.execute(select(cache_studies.c.study_uid).where(cache_studies.c.study_uid == study_uid)).first()
            if row is None:
                conn.execute(
                    insert(cache_studies).values(
                        study_uid=study_uid,
                        source=source[:64],
                        size_bytes=0,
                        instances=0,
                        complete=False,
                        fetched_at=now,
                        last_open=now,
                    )
                )
            conn.execute(
                insert(cache_instances).values(sop_uid=sop_uid, study_uid=study_uid, size_bytes=int(size), file=file)
            )
            conn.execute(
                update(cache_studies)
                .where(cache_studies.c.study_uid == study_uid)
                .values(size_bytes=cache_studies.c.size_bytes + int(size), instances=cache_studies.c.instances + 1)
            )
        return True

    def has_instance(self, sop_uid: str) -> bool:
        with self.engine.connect() as conn:
            return (
                conn.execute(select(cache_instances.c.sop_uid).where(cache_instances.c.sop_uid == sop_uid)).first()
                is not None
            )

    def set_complete(self, study_uid: str, complete: bool = True) -> bool:
        with self._lock, self.engine.begin() as conn:
            res = conn.execute(
                update(cache_studies).where(cache_studies.c.study_uid == study_uid).values(complete=complete)
            )
        return bool(res.rowcount)

    def touch(self, study_uid: str) -> bool:
        """Mark ``study_uid`` as just opened (its place in the LRU order)."""
        with self._lock, self.engine.begin() as conn:
            res = conn.execute(
                update(cache_studies).where(cache_studies.c.study_uid == study_uid).values(last_open=datetime.now(UTC))
            )
        return bool(res.rowcount)

    def study(self, study_uid: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(cache_studies).where(cache_studies.c.study_uid == study_uid)).mappings().first()
        return dict(row) if row is not None else None

    def studies(self) -> list[dict[str, Any]]:
        """All cached studies, least recently opened first."""
        with self.engine.connect() as conn:
            rows = (
                conn.execute(select(cache_studies).order_by(cache_studies.c.last_open, cache_studies.c.fetched_at))
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def instances(self, study_uid: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(cache_instances)
                    .where(cache_instances.c.study_uid == study_uid)
                    .order_by(cache_instances.c.file, cache_instances.c.sop_uid)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def total_bytes(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.coalesce(func.sum(cache_studies.c.size_bytes), 0))).scalar() or 0)

    def remove(self, study_uid: str) -> list[dict[str, Any]]:
        """Forget ``study_uid``; returns its instance rows (the caller deletes the files)."""
        with self._lock, self.engine.begin() as conn:
            rows = (
                conn.execute(select(cache_instances).where(cache_instances.c.study_uid == study_uid)).mappings().all()
            )
            conn.execute(delete(cache_instances).where(cache_instances.c.study_uid == study_uid))
            conn.execute(delete(cache_studies).where(cache_studies.c.study_uid == study_uid))
        return [dict(r) for r in rows]
