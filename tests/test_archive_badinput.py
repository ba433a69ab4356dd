"""Bad input to ``hilum import``: each problem gets a one-line reason, the rest of the import goes
on, and nothing already in the archive changes (stats, rows, blob checksums all compared).

The storage failures are real, not simulated: a blob folder the process may
not write to (the tests run as root, where ``chmod`` alone stops nothing, so
the child runs without CAP_DAC_OVERRIDE), a file size limit (RLIMIT_FSIZE:
writes past it fail with EFBIG) and, where this machine allows mounting, a
small tmpfs that fills up (ENOSPC).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pydicom
import pytest

from hilum.archive import Archive
from hilum.cli import main as cli_main
from hilum.config import Config
from hilum.dicom.generator import write_ct_set
from hilum.errors import NotFound

CLI = "import sys; from hilum.cli import main; sys.exit(main(sys.argv[1:]))"


def snapshot(data_dir: Path) -> dict[str, Any]:
    """Everything a failed import must leave alone: counts, rows, and every blob's bytes."""
    with Archive(data_dir) as a:
        rows = a.query("IMAGE", {})
        return {
            "stats": a.stats(),
            "studies": a.query("STUDY", {}),
            "series": a.query("SERIES", {}),
            "blobs": {r["SOPInstanceUID"]: hashlib.sha256(a.blobs.path(r["_blob_key"]).read_bytes()).hexdigest()
                      for r in rows},
        }


def assert_kept(before: dict[str, Any], data_dir: Path, added: int = 0) -> dict[str, Any]:
    after = snapshot(data_dir)
    for uid, digest in before["blobs"].items():
        assert after["blobs"].get(uid) == digest, uid
    assert after["stats"]["instances"] == before["stats"]["instances"] + added
    if not added:
        assert after == before
    with Archive(data_dir) as a:
        report = a.check()
        assert report.clean, report
    return after


@pytest.fixture
def existing(data_dir: Path, tmp_path: Path, pydicom_files: Path) -> dict[str, Any]:
    """An archive already holding two real files and a small generated CT series."""
    with Archive(data_dir) as a:
        for name in ("CT_small.dcm", "MR_small.dcm"):
            assert a.ingest(pydicom_files / name).status == "stored"
        for p in write_ct_set(tmp_path / "old", 3, rows=64, columns=64, seed=1):
            assert a.ingest(p).status == "stored"
    return snapshot(data_dir)


def one_line(reason: str | None) -> bool:
    return bool(reason) and "\n" not in (reason or "")


def json_import(capsys: pytest.CaptureFixture[str], data_dir: Path, *paths: Path) -> tuple[int, dict[str, Any]]:
    rc = cli_main(["import", "--data", str(data_dir), "--json", *map(str, paths)])
    return rc, json.loads(capsys.readouterr().out)


def test_bad_files_each_rejected_the_rest_imported(existing: dict[str, Any], data_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    good = write_ct_set(src / "good", 3, rows=64, columns=64, seed=2)
    (src / "notdicom.dcm").write_bytes(b"%PDF-1.4 this is a report, not an image\n" * 20)
    data = good[0].read_bytes()
    (src / "truncated.dcm").write_bytes(data[: len(data) * 6 // 10])
    ds = pydicom.dcmread(good[1])
    ds.SOPInstanceUID = "1.2.3.4.5.999"
    del ds.SOPInstanceUID
    ds.save_as(src / "nouid.dcm")

    rc, doc = json_import(capsys, data_dir, src)
    assert rc == 1
    assert (doc["imported"], doc["duplicates"], doc["rejected"]) == (3, 0, 3)
    got = {Path(r["source"]).name: r for r in doc["rejections"]}
    assert {k: v["code"] for k, v in got.items()} == {
        "notdicom.dcm": "not-dicom", "truncated.dcm": "truncated", "nouid.dcm": "missing-uid"}
    assert all(one_line(r["reason"]) for r in doc["rejections"])
    assert got["nouid.dcm"]["reason"] == "missing SOPInstanceUID"
    assert_kept(existing, data_dir, added=3)


def test_zip_with_path_traversal_names_rejected_by_name(existing: dict[str, Any], data_dir: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ct = write_ct_set(tmp_path / "ct", 5, rows=64, columns=64, seed=3)
    zpath = tmp_path / "upload" / "evil.zip"
    zpath.parent.mkdir()
    evil = ["../evil.dcm", "../../evil2.dcm", "/tmp/hilum_abs_evil.dcm", "..\\win_evil.dcm", "ok/../../evil3.dcm"]
    with zipfile.ZipFile(zpath, "w") as z:
        z.write(ct[0], "ok/ct.dcm")
        for name, path in zip(evil, ct[1:] + ct[1:2], strict=True):
            # ZipFile.write would normalise the names; writestr keeps them as an attacker would.
            z.writestr(zipfile.ZipInfo(name), path.read_bytes())
    assert sorted(zipfile.ZipFile(zpath).namelist()) == sorted(["ok/ct.dcm", *evil])

    rc, doc = json_import(capsys, data_dir, zpath)
    assert rc == 1
    assert (doc["imported"], doc["rejected"]) == (1, 5)
    assert {r["source"] for r in doc["rejections"]} == {f"{zpath}!{n}" for n in evil}
    assert {r["code"] for r in doc["rejections"]} == {"unsafe-path"}
    assert all(one_line(r["reason"]) and "not read" in r["reason"] for r in doc["rejections"])
    for name in ("evil.dcm", "evil2.dcm", "evil3.dcm", "win_evil.dcm", "..\\win_evil.dcm"):
        for folder in (tmp_path, tmp_path.parent, zpath.parent, data_dir, data_dir.parent):
            assert not (folder / name).exists()
    assert not Path("/tmp/hilum_abs_evil.dcm").exists()
    assert_kept(existing, data_dir, added=1)


# ---------------------------------------------------------------- storage that refuses writes


def _without_dac_override() -> list[str]:
    """A command prefix running the child without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH when we are root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    pytest.skip("running as root without setpriv: cannot make a folder read-only for the child")


def _drop_dac_fallback() -> None:  # pragma: no cover - only without setpriv
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl")


def run_cli(args: list[str], prefix: list[str] | None = None, prelude: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), sys.executable, "-c", prelude + CLI, *args], capture_output=True,
                          text=True, timeout=300)


def chmod_tree(root: Path, writable: bool) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, None]:
            p = Path(dirpath) / name if name else Path(dirpath)
            mode = p.stat().st_mode
            w = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
            os.chmod(p, (mode | stat.S_IWUSR) if writable else (mode & ~w))


def test_read_only_blob_folder(existing: dict[str, Any], data_dir: Path, tmp_path: Path,
                               pydicom_files: Path) -> None:
    new = write_ct_set(tmp_path / "new", 2, rows=64, columns=64, seed=4)
    shutil.copy(pydicom_files / "CT_small.dcm", tmp_path / "new" / "dup.dcm")
    prefix = _without_dac_override()
    chmod_tree(data_dir / "blobs", writable=False)
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(data_dir / 'blobs' / 'probe')!r}, 'w')"],
                               capture_output=True, timeout=60)
        if probe.returncode == 0:
            pytest.skip("this machine lets the child write into a read-only folder")
        proc = run_cli(["import", "--data", str(data_dir), "--json", str(tmp_path / "new")], prefix)
    finally:
        chmod_tree(data_dir / "blobs", writable=True)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["imported"], doc["duplicates"], doc["rejected"]) == (0, 1, 2)
    assert {r["code"] for r in doc["rejections"]} == {"storage-full"}
    assert {Path(r["source"]) for r in doc["rejections"]} == set(new)
    for r in doc["rejections"]:
        assert one_line(r["reason"]) and "Permission denied" in r["reason"], r["reason"]
    assert_kept(existing, data_dir)


def test_read_only_data_folder_is_one_clear_error(existing: dict[str, Any], data_dir: Path, tmp_path: Path) -> None:
    new = write_ct_set(tmp_path / "new", 1, rows=64, columns=64, seed=5)
    prefix = _without_dac_override()
    chmod_tree(data_dir, writable=False)
    try:
        proc = run_cli(["import", "--data", str(data_dir), str(new[0])], prefix)
    finally:
        chmod_tree(data_dir, writable=True)
    assert proc.returncode == 1
    assert proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hilum: error: cannot open the archive in {data_dir}: "), err
    assert "readonly" in err[0] or "read-only" in err[0] or "Permission denied" in err[0]
    assert_kept(existing, data_dir)


def test_full_disk_by_file_size_limit(existing: dict[str, Any], data_dir: Path, tmp_path: Path,
                                      pydicom_files: Path) -> None:
    """RLIMIT_FSIZE 448 KiB: small instances fit, 512x512 CT slices (525 kB) fail with EFBIG."""
    limit = 448 * 1024
    assert (data_dir / "index.sqlite").stat().st_size < limit - 96 * 1024  # room for the index to grow (an empty index: 332 KB of tables and indexes)
    src = tmp_path / "new"
    big = write_ct_set(src / "big", 2, seed=6)
    assert all(p.stat().st_size > limit for p in big)
    for name in ("rtplan.dcm", "waveform_ecg.dcm"):
        shutil.copy(pydicom_files / name, src / name)
    prelude = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); ")
    proc = run_cli(["import", "--data", str(data_dir), "--json", str(src)], prelude=prelude)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["imported"], doc["rejected"]) == (2, 2)
    assert {Path(r["source"]) for r in doc["rejections"]} == set(big)
    for r in doc["rejections"]:
        assert r["code"] == "storage-full" and one_line(r["reason"]) and r["reason"].startswith("disk full")
    assert_kept(existing, data_dir, added=2)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1.5 MB tmpfs, where this machine lets us mount one (root with CAP_SYS_ADMIN)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}); the RLIMIT_FSIZE test covers the full-disk path")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True, timeout=30)


def test_full_disk_on_a_small_tmpfs(tiny_tmpfs: Path, tmp_path: Path, pydicom_files: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_tmpfs / "data"
    with Archive(data) as a:
        for name in ("CT_small.dcm", "MR_small.dcm"):
            a.ingest(pydicom_files / name)
    before = snapshot(data)
    big = write_ct_set(tmp_path / "big", 4, seed=7)  # 4 x 525 kB into what is left of 1.5 MB
    rc, doc = json_import(capsys, data, tmp_path / "big")
    assert rc == 1
    assert doc["imported"] + doc["rejected"] == len(big)
    assert doc["imported"] >= 1 and doc["rejected"] >= 1
    for r in doc["rejections"]:
        assert r["code"] == "storage-full" and one_line(r["reason"]), r
    assert_kept(before, data, added=doc["imported"])


# ---------------------------------------------------------------- a full disk under the index (issue 13 item 10)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` up to the last byte; returns the filler (delete it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for _ in range(1 << 16):  # at most 256 MiB, far more than the tiny tmpfs holds
            try:
                f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        else:
            pytest.fail("the file system did not fill up")
    for size in (512, 64, 1):  # the last partial blocks
        try:
            with open(filler, "ab", buffering=0) as f:
                while True:
                    f.write(b"\0" * size)
        except OSError:
            pass
    return filler


def leftovers(data: Path) -> list[str]:
    """Anything in the blob store's temporary folder."""
    tmp = data / "blobs" / "tmp"
    return sorted(os.listdir(tmp)) if tmp.exists() else []


@pytest.mark.parametrize("path", ["single", "batch"])
def test_full_index_is_storage_full_and_leaves_nothing(tiny_tmpfs: Path, tmp_path: Path, path: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """index.sqlite on a tiny tmpfs that fills up (the blobs have room): every refused instance is
    ``storage-full`` (retry later: 0xA7xx), no blob, no row, no temporary stays; with room again,
    the same instances go in."""
    from hilum.archive import batch

    monkeypatch.setattr(batch, "MODE", "threads")
    data = tmp_path / "data"
    url = f"sqlite:///{tiny_tmpfs / 'index.sqlite'}"
    news = write_ct_set(tmp_path / "new", 60, rows=16, columns=16, series_size=1, patients=60, seed=21)
    with Archive(data, database_url=url) as a:
        for p in write_ct_set(tmp_path / "old", 2, rows=16, columns=16, seed=20):
            assert a.ingest(p).status == "stored"
        before = a.stats()
        filler = fill(tiny_tmpfs)
        if path == "single":
            results = []
            for p in news:  # each a new patient, study and series: the index must grow
                results.append(a.ingest(p))
                if results[-1].status == "rejected":
                    break
        else:
            results = a.ingest_many(news, workers=2)
        refused = [r for r in results if r.status == "rejected"]
        assert refused, "the index never ran out of room"
        for r in refused:
            assert r.code == "storage-full" and one_line(r.reason), r
        stored = [r for r in results if r.status == "stored"]
        assert a.stats()["instances"] == before["instances"] + len(stored)
        report = a.check()
        assert report.clean, report  # no orphan blob, no temporary, nothing missing
        assert leftovers(data) == []
        for r in refused:
            with pytest.raises(NotFound):
                a.path(r.sop_instance_uid or "")
        filler.unlink()
        again = a.ingest_many([r.source for r in refused], workers=2)
        assert {r.status for r in again} == {"stored"}
        assert a.check().clean


def test_full_index_answers_c_store_out_of_resources(tiny_tmpfs: Path, tmp_path: Path) -> None:
    """Over the network: the modality hears 0xA700 (Out of Resources: it retries later), not 0xC211."""
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
    from pynetdicom import AE

    from conftest import free_port
    from hilum.node import Node

    cfg = Config(data_dir=tmp_path / "data", dicom_port=free_port(),
                 database_url=f"sqlite:///{tiny_tmpfs / 'index.sqlite'}")
    sources = write_ct_set(tmp_path / "new", 40, rows=16, columns=16, series_size=1, patients=40, seed=22)
    with Node(cfg, only=["dimse"]) as node:
        filler = fill(tiny_tmpfs)
        ae = AE("MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", cfg.dicom_port, ae_title="HILUM")
        assert assoc.is_established
        statuses = []
        try:
            for p in sources:
                statuses.append(int(assoc.send_c_store(pydicom.dcmread(p)).Status))
                if statuses[-1] != 0:
                    break
        finally:
            assoc.release()
            ae.shutdown()
        assert statuses[-1] == 0xA700, [hex(s) for s in statuses]
        assert node.archive.check().clean and leftovers(cfg.data_dir) == []
        filler.unlink()


def test_repair_on_a_full_index_leaves_the_orphan_unchecked_not_quarantined(tiny_tmpfs: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]
                                                                            ) -> None:
    """`hilum check --repair` cannot index an orphan while the index's disk is full: the orphan is
    "unchecked" (could not be checked), stays where it is, and is indexed by a later repair.  (A node
    keeps the index open meanwhile: with the disk full, SQLite could not even open it afresh.)"""
    data = tmp_path / "data"
    url = f"sqlite:///{tiny_tmpfs / 'index.sqlite'}"
    data.mkdir()
    Config(data_dir=data, database_url=url).save()
    orphans = write_ct_set(tmp_path / "orph", 8, rows=16, columns=16, series_size=1, patients=8, seed=23)
    with Archive(data, database_url=url) as node:
        assert node.ingest(write_ct_set(tmp_path / "one", 1, rows=16, columns=16, seed=24)[0]).status == "stored"
        keys = []
        for p in orphans:  # valid instances under their keys, without rows (as after a crash)
            uid = str(pydicom.dcmread(p).SOPInstanceUID)
            key = node.blobs.key_for(uid)
            node.blobs.path(key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, node.blobs.path(key))
            keys.append(key)
        filler = fill(tiny_tmpfs)
        rc = cli_main(["check", "--data", str(data), "--repair", "--json"])
        out, err = capsys.readouterr()
        assert out, err
        doc = json.loads(out)
        assert rc == 1 and not doc["clean"]
        unchecked = {u.split(":")[0] for u in doc["unchecked"]}
        assert unchecked and unchecked <= set(keys), doc["unchecked"]
        assert all("cannot re-index" in u and "full" in u for u in doc["unchecked"]), doc["unchecked"]
        assert not (data / "quarantine").exists() or not any((data / "quarantine").iterdir())
        for key in keys:
            assert node.blobs.path(key).exists(), key  # every orphan still in place
        assert leftovers(data) == []
        filler.unlink()
        rc = cli_main(["check", "--data", str(data), "--repair", "--json"])
        doc = json.loads(capsys.readouterr().out)
        assert rc == 0 and doc["clean"] and doc["unchecked"] == [], (doc["unchecked"], doc["repaired"][:3])
        assert node.stats()["instances"] == 9 and node.check().clean


def test_an_unreadable_blob_is_unchecked_not_corrupt(existing: dict[str, Any], data_dir: Path) -> None:
    """A blob the checker may not read (a permission: the child runs without CAP_DAC_OVERRIDE) is
    "could not be checked": not reported corrupt, not quarantined, its row kept — unlike a blob whose
    bytes are wrong."""
    prefix = _without_dac_override()
    with Archive(data_dir) as a:
        rows = a.query("IMAGE", {})
        locked, broken = (a.blobs.path(r["_blob_key"]) for r in rows[:2])
        locked_uid, broken_uid = rows[0]["SOPInstanceUID"], rows[1]["SOPInstanceUID"]
    blob = bytearray(broken.read_bytes())
    blob[-1] ^= 0xFF
    broken.write_bytes(bytes(blob))
    os.chmod(locked, 0)
    try:
        proc = run_cli(["check", "--data", str(data_dir), "--repair", "--json"], prefix)
    finally:
        os.chmod(locked, 0o644)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["corrupt"] == [broken_uid]
    assert [u.split(":")[0] for u in doc["unchecked"]] == [locked_uid]
    assert "Permission denied" in doc["unchecked"][0]
    assert locked.exists() and (data_dir / "quarantine" / broken.name).exists()
    with Archive(data_dir) as a:
        assert a.path(locked_uid) == locked  # its row is still there
        report = a.check()
    assert report.clean, report
