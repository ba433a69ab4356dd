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
from hilum.dicom.generator import write_ct_set

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
    assert (data_dir / "index.sqlite").stat().st_size < limit - 160 * 1024  # room for the index to grow
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
