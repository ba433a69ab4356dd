"""The index writer's fenced fast path (hilum.archive.sqlfast): the alarm when the SQLAlchemy code it
mirrors changes, its parameters held to SQLAlchemy's own, and the setting that turns it off."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import event

from hilum.archive import Archive, index
from hilum.archive.sqlfast import ENV, MIRRORED, Compiled, Unsupported, resolve_mode

ROOT = Path(__file__).resolve().parents[1]

#: sha256 (first 16 hex digits) of the source of each MIRRORED function in the pinned SQLAlchemy.
#: When one changes: read the new upstream code beside ``Compiled`` (what it does per execution
#: must still be what SQLAlchemy does), fix ``Compiled`` if needed, then update the hash here.
PINNED_SOURCES = {
    "sqlalchemy.engine.default:DefaultExecutionContext._init_compiled": "1d7824a7976a7d97",
    "sqlalchemy.sql.compiler:SQLCompiler.construct_params": "cffacc6a805f478e",
    "sqlalchemy.sql.compiler:SQLCompiler._bind_processors": "433762847b349eab",
    "sqlalchemy.sql.type_api:TypeEngine._cached_bind_processor": "5fcfb9282eff4059",
}


def _source_hash(ref: str) -> str:
    module, qualname = ref.split(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = inspect.getattr_static(obj, part)
    func = getattr(obj, "fget", None) or getattr(obj, "__func__", None) or obj
    return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]


def test_sqlalchemy_is_the_pinned_version() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [d for d in deps if d.lower().startswith("sqlalchemy")]
    assert re.fullmatch(r"SQLAlchemy==[\d.]+", pin.split(";")[0].strip()), "pin SQLAlchemy exactly: " + pin
    assert sqlalchemy.__version__ == pin.split("==")[1].strip()


def test_mirrored_upstream_code_is_unchanged() -> None:
    assert set(PINNED_SOURCES) == set(MIRRORED)
    changed = [ref for ref, digest in PINNED_SOURCES.items() if _source_hash(ref) != digest]
    assert not changed, f"SQLAlchemy code that hilum.archive.sqlfast mirrors changed: {changed}"


def _hot_statements() -> list[tuple[Any, dict[str, Any], bool]]:
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row = {"series_fk": 1, "sop_uid": "1.2.3", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "instance_number": 7,
           "transfer_syntax": "1.2.840.10008.1.2.1", "number_of_frames": None, "rows": 4, "columns": 4,
           "content_date": "20260102", "content_time": "030405.000000", "blob_key": "ab/cd/x.dcm", "size": 99,
           "checksum": "xxh128:0", "source_aet": "CT1", "origin": "dimse", "received_at": now, "patient_rev": 0}
    return [
        (index._INSTANCE, {"uid": "1.2.3"}, False),
        (index._INSERT_INSTANCE, row, True),
        (index._ADD_SERIES_INSTANCES, {"spk": 1, "n": 3}, False),
        (index._ADD_STUDY_COUNTS, {"stpk": 1, "n": 3, "size": 1234, "new": 1, "now": now}, False),
    ]


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_compiled_statements_send_what_sqlalchemy_sends(db: str, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    """Oracle: each hot statement run through SQLAlchemy Core hands the DB-API the very SQL and
    parameters that ``Compiled`` would (captured at ``before_cursor_execute``)."""
    url = request.getfixturevalue("pg_url") if db == "postgres" else None
    with Archive(tmp_path / "data", database_url=url) as a:
        seen: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
            seen.append((statement, parameters))

        with a.engine.connect() as conn:
            event.listen(conn, "before_cursor_execute", capture)
            for stmt, params, insert in _hot_statements():
                seen.clear()
                trans = conn.begin()
                try:
                    conn.execute(stmt, params)
                except sqlalchemy.exc.IntegrityError:
                    pass  # no series row 1: what was sent is what counts
                finally:
                    trans.rollback()
                compiled = Compiled(stmt, a.engine.dialect, list(params) if insert else None)
                sent = [s for s in seen if s[0] != "BEGIN"]
                assert sent[-1][0] == compiled.sql
                theirs = sent[-1][1]
                ours = compiled.parameters(params)
                assert (list(theirs) if isinstance(theirs, (list, tuple)) else dict(theirs)) == ours


def test_statements_sqlalchemy_would_prefetch_for_step_aside(tmp_path: Path) -> None:
    """An INSERT that leaves out a column with a Python-side default is refused by the fast path."""
    with Archive(tmp_path / "data") as a:
        with pytest.raises(Unsupported):
            Compiled(index._INSERT_INSTANCE, a.engine.dialect, ["sop_uid"])


def test_the_setting_and_its_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert resolve_mode(None) == "fast"
    monkeypatch.setenv(ENV, "sqlalchemy")
    assert resolve_mode(None) == "sqlalchemy"
    assert resolve_mode("fast") == "fast"  # a configured value wins over the environment's default
    with pytest.raises(ValueError):
        resolve_mode("turbo")
    from hilum.config import ConfigError, load_config

    (tmp_path / "hilum.toml").write_text('[archive]\nindex_writer = "fast"\n')
    cfg = load_config(tmp_path)
    assert cfg.index_writer == "fast"
    with Archive.from_config(cfg) as a:
        assert a.index_writer == "fast"
    with Archive(tmp_path / "other") as b:
        assert b.index_writer == "sqlalchemy"  # no setting: the environment's
    (tmp_path / "hilum.toml").write_text('[archive]\nindex_writer = "turbo"\n')
    with pytest.raises(ConfigError):
        load_config(tmp_path)


def test_a_known_series_takes_the_raw_transaction_and_steps_aside_when_it_must(tmp_path: Path) -> None:
    """``fast``: an instance of a series indexed before runs without any SQLAlchemy transaction; when
    the transaction needs more than the hot statements (here: the patient's state, not cached) it
    rolls back and runs through SQLAlchemy, with the same rows.  ``sqlalchemy``: always SQLAlchemy."""
    from pydicom.uid import generate_uid

    from test_archive import _rows, make_instance

    study, series = generate_uid(), generate_uid()
    blobs = [make_instance(study_uid=study, series_uid=series, number=i) for i in range(4)]
    rows = {}
    for mode in ("fast", "sqlalchemy"):
        with Archive(tmp_path / mode, index_writer=mode) as a:
            begins: list[int] = []
            event.listen(a.engine, "begin", lambda _conn, seen=begins: seen.append(1))
            assert a.ingest(blobs[0]).status == "stored"  # a new series: through SQLAlchemy
            assert a.ingest(blobs[1]).status == "stored"
            with a.engine.connect() as conn:
                patient = a.patients.find(conn, "P1")
            begins.pop()  # that read's own transaction
            assert patient is not None
            a.patients.forget(patient.pk)
            assert a.ingest(blobs[2]).status == "stored"  # the patient's state must be read
            assert a.ingest(blobs[3]).status == "stored"
            assert len(begins) == (2 if mode == "fast" else 4)
            rows[mode] = _rows(a)
            assert a.check().clean
    assert rows["fast"] == rows["sqlalchemy"]
