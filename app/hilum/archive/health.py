"""Read-only health figures of an index: schema revision, size, queue lengths (issue 22, Part B).

Used by ``hilum selftest`` (does the schema reach this code's heads?), ``hilum
status`` (a separate process looking at a data folder, with or without a node
running on it) and the node's ``/metrics`` (cached: :class:`CachedFigures`).

Nothing here writes: :func:`open_index` makes an engine on an existing index
without migrating it (a status check must not upgrade a data folder, nor take
the pre-upgrade backup), and every query is a count over an indexed column or
one aggregate.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, func, inspect, select

from hilum.archive.db import MIGRATIONS, make_engine
from hilum.archive.schema import ai_jobs, forward_queue, hl7_outbox, instances, patients, studies

QUEUES: dict[str, tuple[Any, tuple[str, ...]]] = {
    # name: (table, states that are still waiting for work)
    "forward": (forward_queue, ("pending",)),
    "forward_unconfirmed": (forward_queue, ("sent",)),
    "forward_failed": (forward_queue, ("failed",)),
    "report_outbox": (hl7_outbox, ("pending",)),
    "report_outbox_failed": (hl7_outbox, ("failed-ae", "failed-ar")),
    "ai_jobs": (ai_jobs, ("queued", "running")),
    "ai_jobs_failed": (ai_jobs, ("failed",)),
}
"""The queues kept in the index and the states counted for each.  ``forward``: instances waiting to go to
a destination (:mod:`hilum.archive.forward`); ``forward_unconfirmed``: sent, Storage Commitment awaited;
``report_outbox``: signed reports waiting for the HIS (:mod:`hilum.hl7.outbox`); ``ai_jobs``: plugin runs
queued or running (:mod:`hilum.archive.ai_jobs`); ``*_failed``: given up, an administrator must look."""


@dataclass
class SchemaState:
    """Where an index's schema stands against this code's migrations."""

    current: list[str]
    heads: list[str]

    @property
    def up_to_date(self) -> bool:
        return set(self.current) == set(self.heads)


@dataclass
class IndexFigures:
    """Counts of an index (``queues``: name -> rows waiting; see :data:`QUEUES`)."""

    patients: int = 0
    studies: int = 0
    instances: int = 0
    bytes: int = 0
    queues: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "patients": self.patients,
            "studies": self.studies,
            "instances": self.instances,
            "bytes": self.bytes,
            "queues": dict(self.queues),
        }


def index_url(data_dir: str | Path, database_url: str | None = None) -> str:
    """The database URL of a data folder's index (as :class:`hilum.archive.Archive` opens it)."""
    return database_url or f"sqlite:///{Path(data_dir) / 'index.sqlite'}"


def open_index(data_dir: str | Path, database_url: str | None = None) -> Engine | None:
    """An engine on an existing index, not migrated; None when a SQLite data folder has no index yet."""
    if database_url is None and not (Path(data_dir) / "index.sqlite").is_file():
        return None
    return make_engine(index_url(data_dir, database_url))


def schema_state(engine: Engine) -> SchemaState:
    """The revisions the index is at and the heads of this code's migrations."""
    heads = sorted(ScriptDirectory(MIGRATIONS).get_heads())
    with engine.connect() as conn:
        current = sorted(MigrationContext.configure(conn).get_current_heads())
    return SchemaState(current=current, heads=heads)


def figures(engine: Engine) -> IndexFigures:
    """Patients, studies, instances, bytes and the queue lengths; tables an older schema lacks count 0."""
    present = set(inspect(engine).get_table_names())
    out = IndexFigures()
    with engine.connect() as conn:
        if "instances" in present:
            out.patients = int(conn.execute(select(func.count()).select_from(patients)).scalar_one())
            out.studies = int(conn.execute(select(func.count()).select_from(studies)).scalar_one())
            row = conn.execute(select(func.count(), func.coalesce(func.sum(instances.c.size), 0))).one()
            out.instances, out.bytes = int(row[0]), int(row[1])
        for name, (table, states) in QUEUES.items():
            if table.name not in present:
                out.queues[name] = 0
                continue
            out.queues[name] = int(
                conn.execute(select(func.count()).select_from(table).where(table.c.state.in_(states))).scalar_one()
            )
    return out


class CachedFigures:
    """:func:`figures` at most once per ``ttl`` seconds (a Prometheus scrape every few seconds must not
    count a large index each time); thread-safe; a failure is re-raised and retried at the next call."""

    def __init__(self, engine: Engine, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._value: IndexFigures | None = None
        self._at = -float("inf")

    def get(self) -> IndexFigures:
        with self._lock:
            now = self._clock()
            if self._value is None or now - self._at >= self.ttl:
                self._value = figures(self.engine)
                self._at = now
            return self._value
