"""Export to media (PS3.11 STD-GEN-CD) read back by DCMTK, dicom3tools, xorriso and `hilum import`; the CLIs
`hilum export-media` and `hilum anonymize` (to a folder and to a real DCMTK storescp)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import free_port, wait_port
from hilum.archive import Archive
from hilum.archive.importer import import_paths
from hilum.archive.media import MediaError, export_media

APP = str(Path(__file__).resolve().parents[1] / "app")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hilum.dicom.generator import write_demo

    src = tmp_path_factory.mktemp("demo")
    write_demo(src, small=True)  # 5 patients, 7 studies, 94 instances incl. JPEG/J2K/JPEG-LS/RLE/big endian series
    return src


@pytest.fixture
def filled(archive: Archive, demo: Path) -> Archive:
    import_paths(archive, [demo])
    return archive


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


def _instances(archive: Archive) -> dict[str, pydicom.Dataset]:
    out = {}
    for study in archive.query("STUDY", {}):
        for row in archive.instances(study_uid=study["StudyInstanceUID"]):
            out[str(row["SOPInstanceUID"])] = pydicom.dcmread(row["path"])
    return out


def _file_ids(root: Path) -> list[str]:
    return [f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file()]


def test_folder_round_trip_through_dcmtk_and_hilum_import(filled: Archive, tmp_path: Path) -> None:
    studies = [r["StudyInstanceUID"] for r in filled.query("STUDY", {})]
    out = tmp_path / "usb"
    report = export_media(filled, studies, out, viewer=True)
    assert report.instances == 94 and report.studies == 7 and not report.skipped
    names = _file_ids(out)
    assert {"DICOMDIR", "README.TXT", "INDEX.HTM", "AUTORUN.INF"} <= set(names)
    for name in names:  # PS3.10 8.5 / PS3.11 STD-GEN-CD: components of <= 8 characters A-Z 0-9 _
        for part in name.split("/"):
            assert re.fullmatch(r"[A-Z0-9_]{1,8}(\.[A-Z]{3})?", part), name
    # every file of the medium is Explicit VR Little Endian (the profile's one transfer syntax)
    for name in names:
        if name.startswith("PT"):
            assert (
                pydicom.dcmread(out / name, stop_before_pixels=True).file_meta.TransferSyntaxUID
                == "1.2.840.10008.1.2.1"
            )
    # DCMTK reads the DICOMDIR: one IMAGE record per instance
    dump = subprocess.run(
        ["dcmdump", str(out / "DICOMDIR")], capture_output=True, text=True, encoding="latin-1", timeout=60
    )
    assert dump.returncode == 0, dump.stderr
    assert (
        dump.stdout.count("[IMAGE]") == 94 and dump.stdout.count("[STUDY]") == 7 and dump.stdout.count("[PATIENT]") == 5
    )
    if shutil.which("dciodvfy"):
        check = subprocess.run(
            ["dciodvfy", str(out / "DICOMDIR")], capture_output=True, text=True, encoding="latin-1", timeout=60
        )
        text = check.stdout + check.stderr
        assert "BasicDirectory" in text and not [ln for ln in text.splitlines() if ln.startswith("Error")], text
    # hilum import reads it back: same UIDs, same pixels
    again = Archive(tmp_path / "again")
    try:
        imported = import_paths(again, [out / "DICOMDIR"])
        assert not imported.skipped
        before, after = _instances(filled), _instances(again)
        assert set(before) == set(after)
        for uid, ds in before.items():
            b = after[uid]
            assert (b.StudyInstanceUID, b.SeriesInstanceUID) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
            assert np.array_equal(_pixels(b), _pixels(ds)), uid
    finally:
        again.close()


def test_zip_and_iso(filled: Archive, tmp_path: Path) -> None:
    study = next(r["StudyInstanceUID"] for r in filled.query("STUDY", {"PatientID": "HIL-0005"}))  # the codec study
    z = export_media(filled, [study], tmp_path / "study.zip")
    assert z.kind == "zip" and z.instances == 27
    with zipfile.ZipFile(tmp_path / "study.zip") as f:
        assert "DICOMDIR" in f.namelist()
    iso = export_media(filled, [study], tmp_path / "study.iso", viewer=True)
    assert iso.kind == "iso" and iso.instances == 27
    listing = subprocess.run(["xorriso", "-indev", str(tmp_path / "study.iso"), "-find", "/", "-type", "f"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    files = [ln.strip().strip("'") for ln in listing.stdout.splitlines() if ln.strip()]
    assert "/DICOMDIR" in files and "/INDEX.HTM" in files
    assert sum(1 for f in files if re.fullmatch(r"/PT\d{6}/ST\d{6}/SE\d{6}/IM\d{6}", f)) == 27
    # the ISO 9660 names themselves (no Joliet/Rock Ridge) are level-1 names without version numbers
    plain = subprocess.run(["xorriso", "-read_fs", "ecma119", "-indev", str(tmp_path / "study.iso"),
                            "-find", "/", "-name", "DICOMDIR"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "'/DICOMDIR'" in plain.stdout, plain.stdout + plain.stderr
    for source in (tmp_path / "study.zip",):
        again = Archive(tmp_path / "fromzip")
        try:
            assert len(import_paths(again, [source]).results) == 27
            assert again.query("STUDY", {})[0]["StudyInstanceUID"] == study
        finally:
            again.close()
    extracted = tmp_path / "fromiso"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(tmp_path / "study.iso"), "-extract", "/", str(extracted)],
                   capture_output=True, check=True, timeout=60)  # fmt: skip
    again = Archive(tmp_path / "fromiso-archive")
    try:
        assert len(import_paths(again, [extracted / "DICOMDIR"]).results) == 27
    finally:
        again.close()


def test_refuses_what_it_cannot_do(filled: Archive, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no study"):
        export_media(filled, ["1.2.3"], tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    study = filled.query("STUDY", {})[0]["StudyInstanceUID"]
    with pytest.raises(MediaError, match="not empty"):
        export_media(filled, [study], tmp_path / "full")


def test_cancel_leaves_nothing(filled: Archive, tmp_path: Path) -> None:
    import threading

    cancel = threading.Event()
    study = filled.query("STUDY", {"PatientID": "HIL-0005"})[0]["StudyInstanceUID"]

    def progress(done: int, total: int) -> None:
        if done == 3:
            cancel.set()

    report = export_media(filled, [study], tmp_path / "c", progress=progress, cancel=cancel)
    assert report.cancelled and not (tmp_path / "c").exists()


def _hilum(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": APP, "HILUM_DATA": str(data)}
    return subprocess.run([sys.executable, "-m", "hilum", *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_export_media_anonymised_iso(filled: Archive, tmp_path: Path) -> None:
    done = _hilum("export-media", "--patient", "HIL-0001", "--out", str(tmp_path / "cd.iso"), "--viewer",
                  "--anonymise", "--profile", "dates", "--project", "trial", "--json", data=filled.data_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["instances"] == 20 and summary["anonymised"] and summary["kind"] == "iso"
    extracted = tmp_path / "x"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(tmp_path / "cd.iso"), "-extract", "/", str(extracted)],
                   capture_output=True, check=True, timeout=60)  # fmt: skip
    dump = subprocess.run(
        ["dcmdump", str(extracted / "DICOMDIR")], capture_output=True, encoding="latin-1", timeout=60
    ).stdout
    assert "Müller" not in dump and "HIL-0001" not in dump and "ANON-" in dump
    html = (extracted / "INDEX.HTM").read_text()
    assert "ANON-" in html and "HIL-0001" not in html
    assert "HIL-0001" not in (extracted / "README.TXT").read_text()
    bad = _hilum("export-media", "1.2.3", "--out", str(tmp_path / "y"), data=filled.data_dir)
    assert (
        bad.returncode == 1
        and bad.stderr.strip().startswith("hilum: error:")
        and len(bad.stderr.strip().splitlines()) == 1
    )


def test_cli_anonymize_folder_dry_run_and_mapping(filled: Archive, tmp_path: Path, demo: Path) -> None:
    dry = _hilum("anonymize", "--patient", "HIL-0002", "--dry-run", "--json", data=filled.data_dir)
    assert dry.returncode == 0, dry.stderr
    summary = json.loads(dry.stdout)
    assert summary["instances"] == 26 and "PatientBirthDate: Z" in summary["changes"]
    assert not _hilum("anonymize", "--mapping", "--json", data=filled.data_dir).stdout.strip("[]\n")
    out = tmp_path / "anon"
    done = _hilum("anonymize", str(demo / "HIL-0002"), "--out", str(out), "--profile", "dates,descriptors",
                  "--project", "p1", "--json", data=filled.data_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    files = [f for f in out.rglob("*.dcm")]
    assert len(files) == 26
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.PatientIdentityRemoved == "YES" and str(ds.PatientID).startswith("ANON-")
        assert "Παπαδοπούλου" not in str(ds.PatientName)
    mapping = json.loads(_hilum("anonymize", "--mapping", "--project", "p1", "--json", data=filled.data_dir).stdout)
    assert {"kind": "patient", "original": "HIL-0002"}.items() <= next(
        r for r in mapping if r["kind"] == "patient"
    ).items()
    assert sum(1 for r in mapping if r["kind"] == "uid") > 26


@pytest.mark.skipif(not Path("/usr/bin/storescp").exists(), reason="DCMTK storescp not installed")
def test_cli_anonymize_to_a_real_peer(filled: Archive, tmp_path: Path) -> None:
    port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    scp = subprocess.Popen(["/usr/bin/storescp", "-aet", "RESEARCH", "-od", str(received), "+xa", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "TCP_NODELAY": "1"})  # fmt: skip
    try:
        wait_port(port)
        done = _hilum("anonymize", "--patient", "HIL-0004", "--to", f"RESEARCH@127.0.0.1:{port}", "--json",
                      data=filled.data_dir)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["instances"] == 10
    finally:
        scp.terminate()
        scp.wait(10)
    files = list(received.iterdir())
    assert len(files) == 10
    originals = {str(r["SOPInstanceUID"]) for r in filled.query("IMAGE", {"PatientID": "HIL-0004"})}
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.PatientIdentityRemoved == "YES" and str(ds.SOPInstanceUID) not in originals
        assert "Иванов" not in str(ds.PatientName)


def test_exports_are_audited_when_the_audit_trail_is_there(filled: Archive, tmp_path: Path) -> None:
    """With issue 21a's audit trail merged (``Archive.audit_export``), each export to media and each
    anonymised copy of archived studies is one "Export" event per patient (PS3.15 A.5.3.6)."""
    import time

    if not hasattr(filled, "audit_export"):
        pytest.skip("the audit trail (branch audit) is not merged here")
    study = filled.query("STUDY", {"PatientID": "HIL-0004"})[0]["StudyInstanceUID"]
    export_media(filled, [study], tmp_path / "usb")
    done = _hilum("anonymize", "--study", study, "--out", str(tmp_path / "anon"), data=filled.data_dir)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 10
    found: list[dict[str, object]] = []
    while time.monotonic() < deadline and len(found) < 2:
        found = filled.audit.search(event="Export", study=study)  # type: ignore[attr-defined]
        time.sleep(0.2)
    assert len(found) == 2, found
    media, anon = sorted(found, key=lambda e: str(e["role"]), reverse=True)
    assert media["role"] == "destination media" and media["patient_id"] == "HIL-0004" and media["instances"] == 10
    assert "anonymised" in str(anon["detail"]) and anon["instances"] == 10


def test_cli_anonymize_reports_bad_files_and_refuses_bad_arguments(filled: Archive, tmp_path: Path, demo: Path) -> None:
    src = tmp_path / "mixed"
    shutil.copytree(demo / "HIL-0004", src)
    (src / "notes.txt").write_text("not DICOM")
    (src / "truncated.dcm").write_bytes((demo / "HIL-0004").rglob("*.dcm").__next__().read_bytes()[:200])
    done = _hilum("anonymize", str(src), "--out", str(tmp_path / "out"), "--json", data=filled.data_dir)
    assert done.returncode == 3, done.stderr
    summary = json.loads(done.stdout)
    assert summary["instances"] == 10 and summary["failed"] == 2
    assert {Path(f["path"]).name for f in summary["failures"]} == {"notes.txt", "truncated.dcm"}
    for args, why in (
        (["--study", "1.2.3", "--out", str(tmp_path / "x")], "no study"),
        ([str(src), "--dry-run", "--profile", "nonsense"], "unknown de-identification option"),
        ([str(src)], "give one of --out DIR, --to PEER or --dry-run"),
        ([str(src), "--out", str(tmp_path / "out")], "is not empty"),
        ([str(src), "--to", "nowhere"], "neither a configured peer"),
    ):
        bad = _hilum("anonymize", *args, data=filled.data_dir)
        assert bad.returncode == 1 and why in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    bad = _hilum("export-media", "--patient", "HIL-0004", "--out", str(tmp_path / "m"), "--profile", "dates",
                 data=filled.data_dir)  # fmt: skip
    assert bad.returncode == 1 and "--anonymise" in bad.stderr
