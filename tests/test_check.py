"""``hilum check``: a deleted blob, an orphan blob, a corrupt blob and a stale temporary are each
found; ``--repair`` fixes them and says so; a second check is clean."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hilum.archive import Archive
from hilum.cli import main as cli_main

FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "waveform_ecg.dcm")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = cli_main(list(args))
    out, _ = capsys.readouterr()
    return rc, out


@pytest.fixture
def filled(data_dir: Path, pydicom_files: Path) -> dict[str, Path]:
    """An archive with five real instances; returns SOP UID -> blob path."""
    with Archive(data_dir) as a:
        uids = [a.ingest(pydicom_files / name).sop_instance_uid for name in FILES]
        return {u: a.path(u) for u in uids if u}


def damage(data_dir: Path, filled: dict[str, Path], pydicom_files: Path) -> dict[str, str]:
    """One of each problem; returns what each should be reported as."""
    uids = list(filled)
    missing, corrupt, orphaned = uids[0], uids[1], uids[2]
    filled[missing].unlink()
    blob = bytearray(filled[corrupt].read_bytes())
    blob[-1] ^= 0xFF
    filled[corrupt].write_bytes(bytes(blob))
    # An orphan: a valid instance's file under its key, but its row gone (as after a crash).
    with Archive(data_dir) as a:
        keep = filled[orphaned].read_bytes()
        a.delete("IMAGE", orphaned)
        key = a.blobs.key_for(orphaned)
    a.blobs.path(key).parent.mkdir(parents=True, exist_ok=True)
    a.blobs.path(key).write_bytes(keep)
    temp = data_dir / "blobs" / "tmp" / "stale123.part"
    temp.write_bytes(b"half a file")
    return {"missing": missing, "corrupt": corrupt, "orphan": key, "temporary": str(temp)}


def test_clean_archive_checks_clean(filled: dict[str, Path], data_dir: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run_cli(capsys, "check", "--data", str(data_dir))
    assert rc == 0
    assert out.strip() == "checked 5 instances and checksums, 5 blobs: clean"


def test_each_problem_found_repaired_then_clean(filled: dict[str, Path], data_dir: Path, pydicom_files: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    expect = damage(data_dir, filled, pydicom_files)

    rc, out = run_cli(capsys, "check", "--data", str(data_dir), "--json")
    doc = json.loads(out)
    assert rc == 1
    assert doc["missing"] == [expect["missing"]]
    assert doc["corrupt"] == [expect["corrupt"]]
    assert doc["orphans"] == [expect["orphan"]]
    assert doc["temporaries"] == [expect["temporary"]]
    assert doc["clean"] is False and doc["repaired"] == []

    # Without checksums the corrupt blob goes unnoticed; the rest is still found.
    rc, out = run_cli(capsys, "check", "--data", str(data_dir), "--no-checksums", "--json")
    assert rc == 1 and json.loads(out)["corrupt"] == []

    rc, out = run_cli(capsys, "check", "--data", str(data_dir), "--repair")
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0] == "checked 4 instances and checksums, 4 blobs: 4 problems"
    assert f"missing: {expect['missing']}" in lines and f"corrupt: {expect['corrupt']}" in lines
    repaired = [line for line in lines if line.startswith("repaired: ")]
    assert len(repaired) == 5  # two rows removed, one blob quarantined, one orphan re-indexed, one temp deleted
    assert any(f"re-indexed orphan {expect['orphan']}" in line for line in repaired)
    assert lines[-1] == "clean after repair"
    assert (data_dir / "quarantine").is_dir() and len(list((data_dir / "quarantine").iterdir())) == 1

    rc, out = run_cli(capsys, "check", "--data", str(data_dir))
    assert rc == 0
    assert out.strip() == "checked 3 instances and checksums, 3 blobs: clean"
    with Archive(data_dir) as a:
        # The orphan is back in the index; the missing and corrupt ones are gone from it.
        held = {r["SOPInstanceUID"] for r in a.query("IMAGE", {})}
        assert held == set(filled) - {expect["missing"], expect["corrupt"]}


def test_unreadable_orphan_is_quarantined(filled: dict[str, Path], data_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    junk = data_dir / "blobs" / "ab" / "cd" / ("ab" + "cd" + "0" * 36 + ".dcm")
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"not dicom at all")
    rc, out = run_cli(capsys, "check", "--data", str(data_dir), "--repair")
    assert rc == 0
    assert "quarantined unreadable orphan" in out
    assert not junk.exists()
    assert run_cli(capsys, "check", "--data", str(data_dir))[0] == 0


def test_orphan_copies_of_a_stored_instance(filled: dict[str, Path], data_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """An orphan holding a stored instance: the same one again is removed; another version of it
    (same SOP Instance UID, other content) is kept aside in quarantine; the stored one is untouched."""
    import pydicom

    uid, path = next(iter(filled.items()))
    stored = path.read_bytes()
    same = data_dir / "blobs" / "ee" / "ee" / ("ee" * 20 + ".dcm")
    other = data_dir / "blobs" / "ff" / "ff" / ("ff" * 20 + ".dcm")
    for p in (same, other):
        p.parent.mkdir(parents=True, exist_ok=True)
    same.write_bytes(stored)
    ds = pydicom.dcmread(path)
    ds.PatientName = "Other^Version"
    ds.save_as(other)
    rc, out = run_cli(capsys, "check", "--data", str(data_dir), "--repair")
    assert rc == 0, out
    assert "a copy of a stored instance" in out and "quarantined orphan ff/ff/" in out
    assert not same.exists() and not other.exists() and (data_dir / "quarantine" / other.name).exists()
    assert path.read_bytes() == stored
    assert run_cli(capsys, "check", "--data", str(data_dir))[0] == 0


def test_check_needs_an_existing_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["check", "--data", str(tmp_path / "none")])
    assert rc == 1
    assert capsys.readouterr().err.strip() == f"hilum: error: no data folder at {tmp_path / 'none'}"
    assert not (tmp_path / "none").exists()


def test_check_on_postgresql(pg_url: str, tmp_path: Path, pydicom_files: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "pgdata"
    data.mkdir()
    (data / "hilum.toml").write_text(f'[archive]\ndatabase_url = "{pg_url}"\n')
    with Archive(data, database_url=pg_url) as a:
        uid = a.ingest(pydicom_files / "CT_small.dcm").sop_instance_uid
        assert uid
        a.path(uid).unlink()
    rc, out = run_cli(capsys, "check", "--data", str(data), "--repair")
    assert rc == 0 and f"missing: {uid}" in out
    rc, out = run_cli(capsys, "check", "--data", str(data))
    assert rc == 0 and out.strip() == "checked 0 instances and checksums, 0 blobs: clean"
    shutil.rmtree(data)
