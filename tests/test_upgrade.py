"""Upgrades keep data: a data folder made by the first release is backed up, then migrated; no downgrade.

The old folder is generated here from the oldest migration (``0001`` only: patients, studies,
series, instances, with real CT blobs and the first schema's SHA-256 checksums, and a hilum.toml
without the format stamp, with comments) and opened by today's code in a real ``hilum``
subprocess.  Checked: the backup folder and its readable 0001 index, the migrated index at heads,
the instance found and its blob read back pixel-equal, no second backup on a second start; a
newer index or hilum.toml refused with one line and the folder unchanged; a backup that fails
leaves the index as it was; two processes at once take one backup; the same on PostgreSQL.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from sqlalchemy import text

from _old_release import OLD_CONFIG, insert_0001, make_old_folder, schema_0001
from conftest import free_port, wait_port
from hilum.archive import Archive, upgrade
from hilum.archive import backup as bk
from hilum.archive.db import code_heads, current_heads, make_engine
from hilum.config import CONFIG_FORMAT, load_config
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study
from hilum.errors import DowngradeRefused

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "app")}
HEADS = "+".join(sorted(code_heads()))


@pytest.fixture(scope="module")
def ct() -> list[pydicom.Dataset]:
    return generate_ct_series(make_study(MUELLER, accession="UP-1", seed="upgrade"), rows=64, columns=64, slices=3)


def hilum(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hilum", *args], env=ENV, capture_output=True, text=True, timeout=timeout
    )


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (the folder's state): its data, not ``hilum serve``'s own log
    (``logs/``) or run files (``run/``), which a refused start may open."""
    return {
        str(p.relative_to(root)): sha(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in ("logs", "run")
    }


def backups(data: Path) -> list[Path]:
    return sorted((data / "backups").glob("pre-upgrade-*")) if (data / "backups").is_dir() else []


def revisions_of(index: Path) -> set[str]:
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT version_num FROM alembic_version")}
    finally:
        db.close()


def heads_of(data: Path) -> set[str]:
    engine = make_engine(f"sqlite:///{data / 'index.sqlite'}")
    try:
        with engine.connect() as conn:
            return current_heads(conn)
    finally:
        engine.dispose()


def pixels(data: bytes) -> np.ndarray:
    return pydicom.dcmread(DicomBytesIO(data)).pixel_array


# ---------------------------------------------------------------------------------------------- SQLite


def test_a_first_release_folder_is_backed_up_then_migrated_and_keeps_its_instances(tmp_path: Path, ct) -> None:
    data = tmp_path / "data"
    sops = make_old_folder(data, ct)
    assert revisions_of(data / "index.sqlite") == {"0001"}
    before_index = tmp_path / "before.sqlite"
    src = sqlite3.connect(data / "index.sqlite")
    dst = sqlite3.connect(before_index)
    src.backup(dst)
    src.close()
    dst.close()

    run = hilum("check", "--data", str(data), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["instances"] == len(ct)
    lines = [line for line in run.stderr.splitlines() if "upgraded from schema" in line]
    assert len(lines) == 1 and f"from schema 0001 to {HEADS}" in lines[0], run.stderr
    [folder] = backups(data)
    assert folder.name.startswith(f"pre-upgrade-0001-to-{HEADS}-") and str(folder) in lines[0]

    # The backup: a readable index at 0001 with the old rows, its checksum in the manifest, the old config.
    manifest = upgrade.read_manifest(folder)
    assert manifest["from_schema"] == ["0001"] and manifest["to_schema"] == sorted(code_heads())
    assert manifest["blobs"]["copied"] is False and not (folder / "blobs").exists()
    assert manifest["index"]["sha256"] == sha(folder / "index.sqlite")
    assert manifest["counts"]["instances"] == len(ct) and manifest["counts"]["patients"] == 1
    assert manifest["upgrade"]["backup_seconds"] >= 0 and manifest["upgrade"]["migrate_seconds"] > 0
    assert revisions_of(folder / "index.sqlite") == {"0001"}
    db = sqlite3.connect(f"file:{folder / 'index.sqlite'}?mode=ro", uri=True)
    assert sorted(r[0] for r in db.execute("SELECT sop_uid FROM instances")) == sorted(sops)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()
    assert (folder / "hilum.toml").read_text() == OLD_CONFIG

    # The live index: at heads, the instances found, their blobs read back pixel-equal.
    assert heads_of(data) == code_heads()
    with Archive(data) as a:
        assert a.upgraded is None
        for ds in ct:
            [row] = a.query("IMAGE", {"SOPInstanceUID": ds.SOPInstanceUID})
            assert np.array_equal(pixels(a.read_outgoing(row)), ds.pixel_array)
        assert a.check().clean

    # hilum.toml: stamped by appending (comments kept), the old one kept beside.
    stamped = (data / "hilum.toml").read_text()
    assert stamped.startswith(OLD_CONFIG) and "# our AE title" in stamped
    assert tomllib.loads(stamped)["hilum"]["config_format"] == CONFIG_FORMAT
    [kept] = data.glob("hilum.toml.pre-upgrade-*")
    assert kept.read_text() == OLD_CONFIG
    assert load_config(data).aet == "OLDPACS" and load_config(data).config_format == CONFIG_FORMAT

    # A second start: no second backup, no second copy, nothing said.
    again = hilum("check", "--data", str(data))
    assert again.returncode == 0, again.stderr
    assert "upgraded" not in again.stderr
    assert backups(data) == [folder] and len(list(data.glob("hilum.toml.pre-upgrade-*"))) == 1

    # Rolling back as installer/UPGRADING.md says (the backup's index over the live one) gives the 0001 rows back.
    assert revisions_of(folder / "index.sqlite") == revisions_of(before_index)


def test_hilum_serve_on_a_first_release_folder_answers_findscu_after_the_upgrade(tmp_path: Path, ct) -> None:
    data = tmp_path / "data"
    make_old_folder(data, ct)
    dicom, web, hl7 = free_port(), free_port(), free_port()
    err = tmp_path / "serve.err"
    with open(err, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hilum", "serve", "--data", str(data), "--aet", "NODE", "--dicom-port", str(dicom),
             "--web-port", str(web), "--hl7-port", str(hl7)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=f,
        )  # fmt: skip
    try:
        wait_port(dicom, 60)
        found = subprocess.run(
            ["/usr/bin/findscu", "-S", "-aec", "NODE", "-k", "QueryRetrieveLevel=IMAGE",
             "-k", f"StudyInstanceUID={ct[0].StudyInstanceUID}", "-k", f"SeriesInstanceUID={ct[0].SeriesInstanceUID}",
             "-k", "SOPInstanceUID", "127.0.0.1", str(dicom)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        text = found.stdout + found.stderr
        for ds in ct:
            assert ds.SOPInstanceUID in text, text
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    said = err.read_text()
    assert said.count("upgraded from schema 0001") == 1, said
    assert len(backups(data)) == 1 and heads_of(data) == code_heads()


def test_a_new_empty_data_folder_takes_no_backup(tmp_path: Path) -> None:
    data = tmp_path / "new"
    run = hilum("check", "--data", str(tmp_path / "new"))
    assert run.returncode == 1  # no data folder there yet: check refuses (it does not create one)
    with Archive(data) as a:
        assert a.upgraded is None
    assert heads_of(data) == code_heads() and backups(data) == [] and not (data / "backups").exists()


def test_an_index_from_a_newer_hilum_is_refused_and_left_as_it_is(tmp_path: Path, ct) -> None:
    data = tmp_path / "data"
    make_old_folder(data, ct[:1])
    assert hilum("check", "--data", str(data)).returncode == 0  # upgraded once: a pre-upgrade backup exists
    [folder] = backups(data)
    engine = make_engine(f"sqlite:///{data / 'index.sqlite'}")
    with engine.begin() as conn:  # what a newer Hilum leaves: a revision this code does not know
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    engine.dispose()
    state = tree(data)

    for verb in (["check"], ["serve", "--dicom-port", "0", "--web-port", "0", "--hl7-port", "0"]):
        run = hilum(*verb, "--data", str(data), timeout=60)
        assert run.returncode != 0, run.stderr
        errors = [line for line in run.stderr.splitlines() if line.strip()]
        assert len(errors) == 1, run.stderr
        line = errors[0]
        assert line.startswith("hilum: error: ") and str(data) in line and "0099_future" in line, line
        assert "newer Hilum" in line and HEADS in line and "install that newer release again" in line
        assert str(folder) in line  # the backup taken before that upgrade is listed
        assert tree(data) == state  # nothing written, nothing migrated, no backup taken

    with pytest.raises(DowngradeRefused) as info:
        Archive(data)
    assert info.value.found == ["0099_future"] and info.value.backups == [str(folder)]

    # The command the line names puts the index back as that backup holds it; this release then opens it.
    command = line.split("): ", 1)[1].split()
    assert command[:2] == ["hilum", "rollback"] and command[2] == str(folder)
    back = hilum(*command[1:])
    assert back.returncode == 0, back.stderr
    assert revisions_of(data / "index.sqlite") == {"0001"}
    assert hilum("check", "--data", str(data)).returncode == 0 and heads_of(data) == code_heads()


def test_a_hilum_toml_from_a_newer_hilum_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    Archive(data).close()
    (data / "hilum.toml").write_text('[hilum]\nconfig_format = 7\nwritten_by = "9.0.0"\n\n[node]\naet = "X"\n')
    state = tree(data)
    run = hilum("check", "--data", str(data))
    assert run.returncode == 1
    [line] = [x for x in run.stderr.splitlines() if x.strip()]
    assert "config format 7 written by Hilum 9.0.0" in line and "install that newer release again" in line
    assert tree(data) == state
    (data / "hilum.toml").write_text('[hilum]\nconfig_format = "one"\n')
    with pytest.raises(Exception, match="config_format must be a whole number"):
        load_config(data)


def test_a_hilum_toml_written_by_this_code_is_stamped(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    cfg.aet = "NEWNODE"
    cfg.save()
    doc = tomllib.loads((tmp_path / "hilum.toml").read_text())
    assert doc["hilum"]["config_format"] == CONFIG_FORMAT and "hilum" not in load_config(tmp_path).extra
    with Archive.from_config(load_config(tmp_path)):
        pass
    assert not list(tmp_path.glob("hilum.toml.pre-upgrade-*"))  # already current: not touched


def test_a_backup_that_fails_stops_the_upgrade_before_any_migration(tmp_path: Path, ct) -> None:
    data = tmp_path / "data"
    make_old_folder(data, ct[:1])
    (data / "backups").write_text("not a folder\n")  # the backup cannot be written there
    index = sha(data / "index.sqlite")
    run = hilum("check", "--data", str(data))
    assert run.returncode == 1
    [line] = [x for x in run.stderr.splitlines() if x.startswith("hilum: error:")]
    assert "the backup before upgrading the index from schema 0001" in line and "nothing was migrated" in line
    assert revisions_of(data / "index.sqlite") == {"0001"} and sha(data / "index.sqlite") == index
    assert (data / "hilum.toml").read_text() == OLD_CONFIG and not list(data.glob("hilum.toml.pre-upgrade-*"))


def test_a_full_disk_during_the_backup_stops_the_upgrade(tmp_path: Path, ct) -> None:
    """A write that fails half-way (RLIMIT_FSIZE: the kernel refuses to grow a file, as on a full disk)."""
    data = tmp_path / "data"
    make_old_folder(data, ct[:1])
    index = sha(data / "index.sqlite")
    limit = (data / "index.sqlite").stat().st_size // 2
    assert limit > 32768  # SQLite's -shm file of the live index is written; the copy is what must fail
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "from hilum.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "check", "--data", str(data)], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1, run.stderr
    assert "nothing was migrated" in run.stderr, run.stderr
    assert revisions_of(data / "index.sqlite") == {"0001"} and sha(data / "index.sqlite") == index
    assert (
        backups(data) == [] and not [p for p in (data / "backups").iterdir()] if (data / "backups").exists() else True
    )
    assert hilum("check", "--data", str(data)).returncode == 0  # with room again, the upgrade goes through
    assert len(backups(data)) == 1 and heads_of(data) == code_heads()


def test_a_migration_that_fails_is_undone_and_said(tmp_path: Path, ct) -> None:
    data = tmp_path / "data"
    make_old_folder(data, ct[:1])
    db = sqlite3.connect(data / "index.sqlite")
    db.execute("CREATE TABLE users (note TEXT)")  # in the way of migration 0003_users
    db.commit()
    schema_before = sorted(db.execute("SELECT type, name FROM sqlite_master"))
    db.close()
    run = hilum("check", "--data", str(data))
    assert run.returncode == 1
    [line] = [x for x in run.stderr.splitlines() if x.startswith("hilum: error:")]
    assert "the migration of the index from schema 0001" in line and "it was undone" in line, line
    [folder] = backups(data)
    assert str(folder) in line
    db = sqlite3.connect(data / "index.sqlite")
    assert sorted(db.execute("SELECT type, name FROM sqlite_master")) == schema_before  # nothing half-made
    db.close()
    assert revisions_of(data / "index.sqlite") == {"0001"}


def _wait_for(path: Path, needle: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if needle in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not in {path}: {path.read_text(errors='replace')}")


def test_two_processes_at_once_take_one_backup_and_migrate_once(tmp_path: Path, ct) -> None:
    data = tmp_path / "data"
    make_old_folder(data, ct)
    # Hold the upgrade lock while both start, so that both really find the index behind at once.
    holder = os.open(data / upgrade.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX)
    procs = []
    try:
        for i in range(2):
            err = tmp_path / f"err{i}"
            with open(err, "w") as f:
                procs.append(
                    (
                        subprocess.Popen(
                            [sys.executable, "-m", "hilum", "check", "--data", str(data)],
                            env=ENV,
                            stdout=subprocess.DEVNULL,
                            stderr=f,
                        ),
                        err,
                    )
                )
        for _p, err in procs:
            _wait_for(err, "another process is upgrading the index; waiting")
        assert backups(data) == [] and revisions_of(data / "index.sqlite") == {"0001"}
    finally:
        os.close(holder)
    for p, _err in procs:
        assert p.wait(timeout=120) == 0
    said = [err.read_text() for _p, err in procs]
    assert sum("upgraded from schema 0001" in s for s in said) == 1, said
    assert sum("upgraded by another process" in s for s in said) == 1, said
    assert len(backups(data)) == 1 and heads_of(data) == code_heads()


def test_restore_of_an_older_backup_migrates_what_it_restores(tmp_path: Path, ct) -> None:
    """A `hilum backup` made by the first release (its index at 0001) restores with today's code, migrated."""
    old = tmp_path / "old"
    sops = make_old_folder(old, ct[:2])
    src = tmp_path / "backup"
    (src / "blobs").mkdir(parents=True)
    db = sqlite3.connect(old / "index.sqlite")
    copy = sqlite3.connect(src / "index.sqlite")
    db.backup(copy)
    copy.execute("PRAGMA journal_mode=DELETE")
    copy.close()
    db.close()
    for p in (old / "blobs").rglob("*.dcm"):
        target = src / "blobs" / p.relative_to(old / "blobs")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(p.read_bytes())
    manifest = {
        "format": bk.FORMAT,
        "version": bk.VERSION,
        "created_at": "2025-01-02T03:04:05+00:00",
        "schema": ["0001"],
        "counts": {"instances": 2, "patients": 1, "studies": 1, "series": 1},
        "instances": {"total": 2},
        "index": {"file": "index.sqlite", "checksum": bk._checksum_of(src / "index.sqlite", "xxh128")},
    }
    (src / "manifest.json").write_text(json.dumps(manifest))
    target = tmp_path / "restored"
    run = hilum("restore", str(src), "--data", str(target))
    assert run.returncode == 0, run.stderr
    assert heads_of(target) == code_heads() and backups(target) == []  # the backup restored is the old state
    with Archive(target) as a:
        for ds in ct[:2]:
            [row] = a.query("IMAGE", {"SOPInstanceUID": ds.SOPInstanceUID})
            assert np.array_equal(pixels(a.read_outgoing(row)), ds.pixel_array)
    assert sorted(sops) == sorted(ds.SOPInstanceUID for ds in ct[:2])


# ---------------------------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_a_first_release_postgresql_index_is_dumped_then_migrated(tmp_path: Path, pg_url: str, ct) -> None:
    engine = make_engine(pg_url)
    try:
        schema_0001(engine)
        data = tmp_path / "data"
        sops = insert_0001(engine, data / "blobs", ct)
    finally:
        engine.dispose()
    (data / "hilum.toml").write_text(
        OLD_CONFIG.replace('duplicate_policy = "ignore"', f'duplicate_policy = "ignore"\ndatabase_url = "{pg_url}"')
    )
    run = hilum("check", "--data", str(data), "--json")
    assert run.returncode == 0, run.stderr
    assert "upgraded from schema 0001" in run.stderr
    [folder] = backups(data)
    manifest = upgrade.read_manifest(folder)
    assert manifest["database"] == "postgresql" and manifest["from_schema"] == ["0001"]
    assert manifest["counts"] == {"alembic_version": 1, "patients": 1, "studies": 1, "series": 1, "instances": len(ct)}
    assert manifest["index"]["schema"] == ["0001"]
    for name, digest in manifest["index"]["sha256"].items():
        assert sha(folder / name) == digest
    rows = [json.loads(line) for line in (folder / "tables" / "instances.jsonl").read_text().splitlines()]
    assert sorted(r["sop_uid"] for r in rows) == sorted(sops)
    assert rows[0]["received_at"].startswith("2025-01-02T03:04:05")
    schema = json.loads((folder / "schema.json").read_text())
    assert "checksum" in [c["name"] for c in schema["instances"]["columns"]]
    assert [json.loads(x) for x in (folder / "tables" / "alembic_version.jsonl").read_text().splitlines()] == [
        {"version_num": "0001"}
    ]

    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert current_heads(conn) == code_heads()
    finally:
        engine.dispose()
    with Archive(data, database_url=pg_url) as a:
        assert a.upgraded is None
        for ds in ct:
            [row] = a.query("IMAGE", {"SOPInstanceUID": ds.SOPInstanceUID})
            assert np.array_equal(pixels(a.read_outgoing(row)), ds.pixel_array)
    again = hilum("check", "--data", str(data))
    assert again.returncode == 0 and len(backups(data)) == 1


@pytest.mark.postgres
def test_two_nodes_on_one_postgresql_take_one_backup(tmp_path: Path, pg_url: str, ct) -> None:
    import psycopg

    engine = make_engine(pg_url)
    try:
        schema_0001(engine)
        insert_0001(engine, tmp_path / "node0" / "blobs", ct[:1])
    finally:
        engine.dispose()
    folders = []
    for i in range(2):
        d = tmp_path / f"node{i}"
        d.mkdir(exist_ok=True)
        if i:  # one blob store for both (as an S3 tier would be in a scale-out)
            (d / "blobs").symlink_to(tmp_path / "node0" / "blobs")
        (d / "hilum.toml").write_text(f'[archive]\ndatabase_url = "{pg_url}"\n')
        folders.append(d)
    plain = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as holder:  # hold the lock while both nodes start
        holder.execute("SELECT pg_advisory_lock(7461636)")
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "hilum", "check", "--data", str(d)],
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for d in folders
        ]
        end = time.monotonic() + 60
        while time.monotonic() < end:  # both wait on the lock
            waiting = holder.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            if waiting.fetchone()[0] == 2:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the two nodes did not both wait for the upgrade lock")
        holder.execute("SELECT pg_advisory_unlock(7461636)")
    said = []
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        said.append(err)
    assert sum("upgraded from schema 0001" in s for s in said) == 1, said
    assert sum(len(backups(d)) for d in folders) == 1


# ---------------------------------------------------------------------------------------------- workstation


@pytest.mark.gui
def test_the_workstation_shows_the_refusal_in_a_dialog(tmp_path: Path, qtbot, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    from hilum.cli.workstation import run_workstation

    data = tmp_path / "data"
    Archive(data).close()
    engine = make_engine(f"sqlite:///{data / 'index.sqlite'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    engine.dispose()
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    shown: list[str] = []

    def close_the_box() -> None:
        boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
        if not boxes:
            QTimer.singleShot(50, close_the_box)
            return
        shown.append(boxes[0].text())
        boxes[0].done(0)

    QTimer.singleShot(50, close_the_box)
    args = argparse.Namespace(data=str(data), demo=False, small_demo=False, no_node=True, verbose=0)
    with pytest.raises(DowngradeRefused) as info:
        run_workstation(args)
    assert shown == [str(info.value)] and "0099_future" in shown[0] and "newer Hilum" in shown[0]


# ---------------------------------------------------------------------------------------------- rolling back


def test_rollback_puts_the_first_release_index_back(tmp_path: Path, ct) -> None:
    data = tmp_path / "data"
    sops = make_old_folder(data, ct[:2])
    assert hilum("check", "--data", str(data)).returncode == 0
    [folder] = backups(data)
    with Archive(data) as a:  # the new release receives one more instance after the upgrade
        assert a.ingest(pixels_file(tmp_path, ct[2])).status == "stored"
    run = hilum("rollback", str(folder), "--data", str(data), "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["schema"] == ["0001"] and revisions_of(data / "index.sqlite") == {"0001"}
    db = sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True)
    assert sorted(r[0] for r in db.execute("SELECT sop_uid FROM instances")) == sorted(sops)
    db.close()
    assert (data / "hilum.toml").read_text() == OLD_CONFIG
    kept = Path(report["kept"])
    assert revisions_of(kept / "index.sqlite") == code_heads() and "[hilum]" in (kept / "hilum.toml").read_text()
    # A damaged backup is refused before anything is touched.
    with open(folder / "index.sqlite", "r+b") as f:
        f.seek(200)
        f.write(b"\xff")
    state = tree(data)
    bad = hilum("rollback", str(folder), "--data", str(data))
    assert bad.returncode == 1 and "fails its sha256" in bad.stderr and tree(data) == state


def pixels_file(tmp_path: Path, ds: pydicom.Dataset) -> Path:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.postgres
def test_rollback_of_a_postgresql_index_loads_the_dump(tmp_path: Path, pg_url: str, ct) -> None:
    engine = make_engine(pg_url)
    try:
        schema_0001(engine)
        data = tmp_path / "data"
        sops = insert_0001(engine, data / "blobs", ct[:2])
    finally:
        engine.dispose()
    (data / "hilum.toml").write_text(f'[archive]\ndatabase_url = "{pg_url}"\n')
    assert hilum("check", "--data", str(data)).returncode == 0
    [folder] = backups(data)
    with Archive(data, database_url=pg_url) as a:
        assert a.ingest(pixels_file(tmp_path, ct[2])).status == "stored"
    run = hilum("rollback", str(folder), "--data", str(data), "--json")
    assert run.returncode == 0, run.stderr
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert current_heads(conn) == {"0001"}
            assert sorted(r[0] for r in conn.execute(text("SELECT sop_uid FROM instances"))) == sorted(sops)
            received = conn.execute(text("SELECT received_at FROM instances LIMIT 1")).scalar_one()
            assert received.isoformat().startswith("2025-01-02T03:04:05")
            # the sequences moved on: a new row gets a new key
            nxt = conn.execute(text("SELECT nextval(pg_get_serial_sequence('instances', 'pk'))")).scalar_one()
            assert nxt > max(r[0] for r in conn.execute(text("SELECT pk FROM instances")))
    finally:
        engine.dispose()
    kept = Path(json.loads(run.stdout)["kept"])
    rows = (kept / "index" / "tables" / "instances.jsonl").read_text().splitlines()
    assert len(rows) == 3  # what the upgraded index held, dumped before the tables were dropped
    # Opened again by this release: upgraded again (a new backup), every instance there.
    with Archive(data, database_url=pg_url) as a:
        assert a.upgraded is not None
        assert {r["SOPInstanceUID"] for r in a.query("IMAGE", {})} == set(sops)
