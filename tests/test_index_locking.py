"""Writers of the SQLite index take the write lock at once, and a lock that outlasts the wait is retryable.

A deferred ``BEGIN`` that reads and then writes fails at once with "database is
locked" (SQLITE_BUSY_SNAPSHOT, no busy-timeout wait) when another process —
``hilum backup`` noting itself in the policy log, ``hilum protect`` — commits in
between: the node answered such a C-STORE 0xC000 "cannot understand" (CI, a
backup while storescu sent).  Writers now ``BEGIN IMMEDIATE`` and wait their turn;
a lock still held after the wait is "out of resources" (0xA7xx), which a sender
retries.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.exc import OperationalError

from hilum.archive import Archive
from hilum.archive.index import storage_failure
from hilum.archive.schema import policy_log
from hilum.archive.sqlfast import RawTransaction
from hilum.dimse.scp import INGEST_STATUS, OUT_OF_RESOURCES

NOTE = "INSERT INTO policy_log (at, action, level, uid, rule, instances, bytes_before, bytes_after, detail) " \
       "VALUES ('2026-12-06 00:00:00', 'backup', 'ARCHIVE', 'x', '', 0, 0, 0, 'other process')"  # fmt: skip


def _other_process_writes(db: Path, done: list[str], timeout: float) -> None:
    other = sqlite3.connect(db, timeout=timeout, isolation_level=None)
    try:
        other.execute(NOTE)
        done.append("written")
    except sqlite3.OperationalError as exc:
        done.append(str(exc))
    finally:
        other.close()


def test_a_writer_that_reads_first_is_not_failed_by_another_process_committing(tmp_path: Path) -> None:
    with Archive(tmp_path / "data") as archive:
        db = tmp_path / "data" / "index.sqlite"
        done: list[str] = []
        with archive.transaction() as conn:
            before = conn.execute(select(func.count()).select_from(policy_log)).scalar_one()  # reads first
            other = threading.Thread(target=_other_process_writes, args=(db, done, 30))
            other.start()
            other.join(0.5)
            assert other.is_alive() and not done, "the other writer got in while this transaction held the index"
            conn.execute(
                insert(policy_log).values(at=datetime.now(UTC), action="backup", level="ARCHIVE", uid="y", detail="me")
            )  # with a deferred BEGIN this raised "database is locked" at once
        other.join(30)
        assert done == ["written"]
        with archive.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(policy_log)).scalar_one() == before + 2


def test_the_fast_path_transaction_holds_the_write_lock_from_its_begin(tmp_path: Path) -> None:
    with Archive(tmp_path / "data") as archive:
        raw = RawTransaction(archive.engine)
        try:
            done: list[str] = []
            _other_process_writes(tmp_path / "data" / "index.sqlite", done, 0.2)
            assert done and "locked" in done[0]
        finally:
            raw.close(rollback=True)


def test_an_index_still_locked_after_the_wait_is_retryable_out_of_resources() -> None:
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorname = "SQLITE_BUSY"  # type: ignore[attr-defined]
    code, reason = storage_failure(OperationalError("INSERT ...", {}, exc))
    assert code == "storage-full" and "database is locked" in reason
    assert INGEST_STATUS[code] == OUT_OF_RESOURCES
    # the message alone (a driver that does not name the error) says the same
    code, _ = storage_failure(OperationalError("INSERT ...", {}, sqlite3.OperationalError("database is locked")))
    assert code == "storage-full"
