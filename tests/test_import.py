"""``hilum import`` and :mod:`hilum.archive.importer`: files, folders, DICOMDIR, zip archives.

Real third-party files (the sample files pydicom ships) and generated CT
slices go through the real CLI and the archive's one ingest call; counts are
asserted per known file, not just "no exception".
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest

from hilum.archive import Archive
from hilum.archive.importer import collect, import_paths, unsafe_member_name
from hilum.cli import main as cli_main

# Known pydicom sample files and what a fresh archive makes of each, in name order.
KNOWN = {
    "CT_small.dcm": ("stored", None),
    "MR_small.dcm": ("stored", None),
    "MR_small_RLE.dcm": ("duplicate", None),  # same SOP Instance UID as MR_small.dcm
    "MR_small_bigendian.dcm": ("duplicate", None),
    "MR_truncated.dcm": ("rejected", "truncated"),
    "rtplan.dcm": ("stored", None),
    "rtplan_truncated.dcm": ("rejected", "truncated"),
    "no_meta.dcm": ("rejected", "not-dicom"),
    "UN_sequence.dcm": ("rejected", "missing-uid"),
    "JPEG2000.dcm": ("stored", None),
    "waveform_ecg.dcm": ("stored", None),
    "test-SR.dcm": ("stored", None),
}


def run_cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def known_folder(tmp_path: Path, pydicom_files: Path) -> Path:
    """A folder of the KNOWN sample files, a README and a nested folder with one more copy."""
    d = tmp_path / "in"
    (d / "sub" / "deeper").mkdir(parents=True)
    for name in KNOWN:
        shutil.copy(pydicom_files / name, d / name)
    (d / "README.txt").write_text("not DICOM\n")
    (d / ".hidden.dcm").write_bytes((pydicom_files / "CT_small.dcm").read_bytes())
    shutil.copy(pydicom_files / "CT_small.dcm", d / "sub" / "deeper" / "IM0001")  # a duplicate, found recursively
    return d


def test_folder_import_counts_per_known_file(known_folder: Path, data_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli("import", "--data", str(data_dir), "--json", str(known_folder), capsys=capsys)
    doc = json.loads(out)
    assert rc == 1  # some input was rejected
    assert (doc["imported"], doc["duplicates"], doc["rejected"]) == (6, 3, 4)
    assert doc["skipped"] == 2 and sorted(Path(p).name for p in doc["skipped_files"]) == [".hidden.dcm",
                                                                                          "README.txt"]
    by_name = {Path(r["source"]).name: r for r in doc["rejections"]}
    for name, (status, code) in KNOWN.items():
        if status == "rejected":
            assert by_name[name]["code"] == code, name
            assert "\n" not in by_name[name]["reason"] and by_name[name]["reason"]
    assert set(by_name) == {n for n, (s, _) in KNOWN.items() if s == "rejected"}
    with Archive(data_dir) as a:
        assert a.stats()["instances"] == 6
        assert doc["bytes"] == a.stats()["bytes"]
        assert a.check().clean


def test_importer_api_reports_in_order_with_sources(known_folder: Path, archive: Archive) -> None:
    seen: list[tuple[int, int]] = []
    report = import_paths(archive, [known_folder], progress=lambda d, t: seen.append((d, t)))
    names = [Path(r.source or "").name for r in report.results]
    assert names == sorted(KNOWN) + ["IM0001"]
    for r in report.results[: len(KNOWN)]:
        assert (r.status, r.code) == KNOWN[Path(r.source or "").name], r.source
    assert report.results[-1].status == "duplicate"
    assert seen[-1] == (len(KNOWN) + 1, len(KNOWN) + 1) and len(seen) == len(KNOWN) + 1


def test_second_import_is_all_duplicates_and_exit_zero(known_folder: Path, data_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    good = known_folder / "good"
    good.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        shutil.copy(known_folder / name, good / name)
    assert run_cli("import", "--data", str(data_dir), str(good), capsys=capsys)[0] == 0
    rc, out, _ = run_cli("import", "--data", str(data_dir), str(good), capsys=capsys)
    assert rc == 0
    assert out.splitlines()[0].startswith("imported 0, duplicates 3, rejected 0")


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # pydicom reading its own odd samples
def test_whole_pydicom_sample_folder(pydicom_files: Path, archive: Archive) -> None:
    """Every file pydicom ships, recursively: each one accounted for, known ones as expected."""
    report = import_paths(archive, [pydicom_files])
    by_name = {}
    for r in report.results:
        by_name.setdefault(Path(r.source or "").name, r)
    # Walked in name order, "JPEG2000-embedded-sequence-delimiter.dcm" (same SOP Instance UID) comes first.
    # Their pixel data bytes differ (COMMON.md: such a duplicate is reported "duplicate-differs").
    expected = KNOWN | {"JPEG2000.dcm": ("duplicate", "duplicate-differs"),
                        "JPEG2000-embedded-sequence-delimiter.dcm": ("stored", None)}
    for name, (status, code) in expected.items():
        assert (by_name[name].status, by_name[name].code) == (status, code), name
    assert "README.txt" not in by_name and any(s.endswith("README.txt") for s in report.skipped)
    assert not any(Path(s).name == "DICOMDIR" for s in (r.source for r in report.results))
    assert report.imported + report.duplicates + report.rejected == len(report.results)
    assert report.imported >= 100  # 118 with pydicom 3.0
    stats = archive.stats()
    assert stats["instances"] == report.imported and stats["bytes"] == report.bytes
    assert archive.check().clean


def test_dicomdir_imports_the_files_it_references(pydicom_files: Path, archive: Archive) -> None:
    dicomdir = pydicom_files / "dicomdirtests" / "DICOMDIR"
    refs = [r for r in pydicom.dcmread(dicomdir).DirectoryRecordSequence if "ReferencedFileID" in r]
    report = import_paths(archive, [dicomdir])
    assert len(report.results) == len(refs) == 31
    assert report.rejected == 0
    assert report.imported + report.duplicates == 31
    assert archive.stats()["instances"] == report.imported
    assert all("dicomdirtests" in (r.source or "") and not (r.source or "").endswith("DICOMDIR")
               for r in report.results)
    # The same file-set by folder: the DICOMDIRs are skipped, everything else found.
    again = import_paths(archive, [pydicom_files / "dicomdirtests"])
    assert any(Path(s).name == "DICOMDIR" for s in again.skipped)
    assert again.imported + again.duplicates + again.rejected == len(again.results)


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_dicomdir_with_unsafe_or_missing_references(tmp_path: Path, pydicom_files: Path, archive: Archive) -> None:
    ds = pydicom.dcmread(pydicom_files / "dicomdirtests" / "DICOMDIR")
    images = [r for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r]
    images[0].ReferencedFileID = ["..", "secret"]
    images[1].ReferencedFileID = ["NOPE", "GONE"]
    d = tmp_path / "media"
    shutil.copytree(pydicom_files / "dicomdirtests", d)
    ds.save_as(d / "DICOMDIR")
    (tmp_path / "secret").write_bytes((pydicom_files / "CT_small.dcm").read_bytes())
    report = import_paths(archive, [d / "DICOMDIR"])
    codes = [r.code for r in report.rejections]
    assert sorted(codes) == ["unreadable", "unsafe-path"]
    assert report.imported + report.duplicates == 29
    assert archive.stats()["instances"] == report.imported


def test_zip_read_in_place_with_member_sources(tmp_path: Path, pydicom_files: Path, data_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.write(pydicom_files / "rtplan.dcm", "plans/rtplan.dcm")
    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(pydicom_files / "CT_small.dcm", "a/ct.dcm")
        z.write(pydicom_files / "MR_small.dcm", "b/mr.dcm")
        z.write(pydicom_files / "MR_small_RLE.dcm", "b/mr_rle.dcm")
        z.write(pydicom_files / "MR_truncated.dcm", "b/cut.dcm")
        z.writestr("README.txt", "hello")
        z.write(pydicom_files / "dicomdirtests" / "DICOMDIR", "DICOMDIR")
        z.writestr("notes.bin", b"\x00" * 300)
        z.writestr("nested.zip", inner.getvalue())
    before = zpath.read_bytes()
    rc, out, _ = run_cli("import", "--data", str(data_dir), "--json", str(zpath), capsys=capsys)
    doc = json.loads(out)
    assert rc == 1
    assert (doc["imported"], doc["duplicates"], doc["rejected"], doc["skipped"]) == (3, 1, 2, 2)
    assert {(r["source"], r["code"]) for r in doc["rejections"]} == {
        (f"{zpath}!b/cut.dcm", "truncated"),
        (f"{zpath}!notes.bin", "not-dicom"),
    }
    assert zpath.read_bytes() == before
    # Nothing was extracted anywhere next to the zip.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "study.zip"]
    with Archive(data_dir) as a:
        assert {r["SOPClassUID"] for r in a.query("IMAGE", {})} == {
            "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.481.5"}


def test_zip_member_names_checked_for_traversal() -> None:
    assert unsafe_member_name("a/b.dcm") is None
    assert unsafe_member_name("a..b/c.dcm") is None
    for bad in ("../evil.dcm", "a/../../evil.dcm", "/etc/evil.dcm", "..\\evil.dcm", "C:/evil.dcm", "C:\\x.dcm"):
        assert unsafe_member_name(bad), bad


def test_collect_offers_named_files_and_reports_missing_paths(tmp_path: Path, pydicom_files: Path) -> None:
    readme = tmp_path / "README.txt"
    readme.write_text("x")
    ct = pydicom_files / "CT_small.dcm"
    with collect([readme, ct, ct, tmp_path / "nope"]) as col:
        assert [c.source for c in col.candidates] == [str(readme), str(ct), str(tmp_path / "nope")]
        assert col.candidates[2].code == "unreadable"


def test_generated_ct_series_by_cli(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hilum.dicom.generator import write_ct_set

    paths = write_ct_set(tmp_path / "ct", 12, rows=64, columns=64, series_size=6, patients=2)
    rc, out, err = run_cli("import", "--data", str(data_dir), "--workers", "2", str(tmp_path / "ct"), capsys=capsys)
    assert rc == 0, out
    assert out.startswith("imported 12, duplicates 0, rejected 0")
    assert err == ""  # no progress bar when stderr is not a terminal
    with Archive(data_dir) as a:
        assert a.stats() | {"bytes": 0} == {"patients": 2, "studies": 2, "series": 2, "instances": 12, "bytes": 0}
        rows = a.query("STUDY", {})
        assert sorted(r["NumberOfStudyRelatedInstances"] for r in rows) == [6, 6]
        assert {r["ModalitiesInStudy"] for r in rows} == {"CT"}
        assert sum(p.stat().st_size for p in paths) == a.stats()["bytes"]


def test_usage_errors_exit_2(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["import"], ["import", "--workers", "0", "x"], ["import", "--bogus", "x"]):
        with pytest.raises(SystemExit) as exc:
            cli_main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def test_missing_path_is_a_rejection_not_a_crash(data_dir: Path, tmp_path: Path, pydicom_files: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli("import", "--data", str(data_dir), str(tmp_path / "nope.dcm"),
                         str(pydicom_files / "CT_small.dcm"), capsys=capsys)
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].startswith("imported 1, duplicates 0, rejected 1")
    assert lines[1] == f"rejected {tmp_path / 'nope.dcm'}: cannot read: no such file or folder [unreadable]"


def test_progress_bar_on_a_terminal_only(tmp_path: Path, pydicom_files: Path) -> None:
    """A real pseudo-terminal on stderr shows the rich bar; --json suppresses it."""
    import pty

    data = tmp_path / "data"

    def run(*extra: str) -> tuple[int, str, bytes]:
        master, slave = pty.openpty()
        try:
            proc = subprocess.run([sys.executable, "-m", "hilum", "import", "--data", str(data), *extra,
                                   str(pydicom_files / "CT_small.dcm")], stdout=subprocess.PIPE, stderr=slave,
                                  timeout=120, env={**os.environ, "COLUMNS": "100", "TERM": "xterm"})
        finally:
            os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        return proc.returncode, proc.stdout.decode(), b"".join(chunks)

    rc, out, tty = run()
    assert rc == 0 and out.startswith("imported 1")
    assert b"Importing" in tty
    rc, out, tty = run("--json")
    assert rc == 0 and json.loads(out)["duplicates"] == 1
    assert b"Importing" not in tty


def test_big_endian_data_set_without_meta_imports_like_its_little_endian_twin(
        pydicom_files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pydicom's ExplVR_BigEndNoMeta.dcm (a bare Explicit VR Big Endian data set, PS3.5 A.3) is read as
    ExplVR_LitEndNoMeta.dcm is: the same instance, indexed alike, stored with its own encoding."""
    rows = {}
    for twin in ("BigEnd", "LitEnd"):
        data = tmp_path / twin
        rc, out, _ = run_cli("import", "--data", str(data), "--json",
                             str(pydicom_files / f"ExplVR_{twin}NoMeta.dcm"), capsys=capsys)
        doc = json.loads(out)
        assert rc == 0 and doc["imported"] == 1, doc
        with Archive(data) as a:
            [rows[twin]] = a.query("IMAGE", {})
            stored = pydicom.dcmread(a.path(rows[twin]["SOPInstanceUID"]))
        assert stored.SOPInstanceUID == "1.2.333.4444.5.6.7.8"
        assert stored.file_meta.MediaStorageSOPInstanceUID == stored.SOPInstanceUID
    assert rows["BigEnd"]["TransferSyntaxUID"] == "1.2.840.10008.1.2.2"  # as it came, with a meta in front
    assert rows["LitEnd"]["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    same = {k: v for k, v in rows["BigEnd"].items() if not k.startswith("_") and k != "TransferSyntaxUID"}
    assert same == {k: v for k, v in rows["LitEnd"].items() if not k.startswith("_") and k != "TransferSyntaxUID"}
