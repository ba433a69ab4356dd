"""The compression policy (``[[compression]]``, :mod:`hilum.archive.compress`): rules refused with their line,
CT/MR/CR and real sample files compressed with pixels and UIDs equal and ``hilum check`` clean, lossy only
where a rule says so (a new derived instance), a failing encode leaving the original, kill -9 mid-transcode."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from hilum.archive import Archive, compress, storage
from hilum.archive.policy import parse_policies, run_pass
from hilum.archive.schema import blob_trash, instances, studies
from hilum.cli import main as cli_main
from hilum.dicom import transcode
from hilum.dicom.generator.people import make_study
from hilum.dicom.generator.series import generate_ct_series, generate_mr_series
from hilum.errors import ConfigError, NotFound

JLS = "1.2.840.10008.1.2.4.80"
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
REPO = Path(__file__).resolve().parent.parent


def rules(toml: str) -> compress.CompressionRules:
    text = textwrap.dedent(toml)
    return compress.parse(tomllib.loads(text), text, "hilum.toml")


def make_cr(study, seed: int = 0) -> Dataset:  # type: ignore[no-untyped-def]
    """A CR from a CT slice's header: 12-bit unsigned MONOCHROME1 pixels (Bits Stored 12 of 16)."""
    ds = generate_ct_series(study, rows=64, columns=80, slices=1, seed=seed)[0]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    y, x = np.mgrid[0:64, 0:80]
    rng = np.random.default_rng(seed)
    arr = ((x * 40 + y * 20 + rng.integers(0, 64, (64, 80))) % 4096).astype(np.uint16)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1"
    for k in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if k in ds:
            del ds[k]
    ds.PixelData = arr.tobytes()
    return ds


@pytest.fixture(scope="module")
def study():  # type: ignore[no-untyped-def]
    from hilum.dicom.generator.people import MUELLER

    return make_study(MUELLER, accession="C-1", seed="compress")


@pytest.fixture(scope="module")
def datasets(study) -> list[Dataset]:  # type: ignore[no-untyped-def]
    ct = generate_ct_series(study, rows=64, columns=64, slices=4, seed=1)
    mr = generate_mr_series(study, rows=64, columns=64, slices=3, series_number=2, seed=2)
    return [*ct, *mr, make_cr(study)]


@pytest.fixture
def filled(archive: Archive, datasets: list[Dataset]) -> dict[str, np.ndarray]:
    """The archive with CT, MR and CR instances; SOP UID -> original pixels."""
    out = {}
    for ds in datasets:
        assert archive.ingest(ds).ok
        out[str(ds.SOPInstanceUID)] = pydicom.dcmread(io.BytesIO(archive.read(str(ds.SOPInstanceUID)))).pixel_array
    return out


def rows_of(archive: Archive) -> dict[str, tuple[str, int, str]]:
    with archive.engine.connect() as conn:
        return {
            r[0]: (r[1], int(r[2]), r[3])
            for r in conn.execute(
                select(instances.c.sop_uid, instances.c.transfer_syntax, instances.c.size, instances.c.blob_key)
            )
        }


def assert_clean(archive: Archive) -> None:
    report = archive.check()
    assert report.clean, report
    assert not report.orphans and not report.temporaries
    with archive.engine.connect() as conn:
        total = conn.execute(select(studies.c.size_bytes)).scalars().all()
        sizes = conn.execute(select(instances.c.size)).scalars().all()
    assert sum(total) == sum(sizes)  # studies.size_bytes follows the new sizes


# --------------------------------------------------------------------------- rules


def test_absent_section_does_nothing(archive: Archive) -> None:
    r = compress.parse({}, "", "hilum.toml")
    assert not r and compress.run_once(archive, r).actions == []


def test_rules_parse_in_order_with_defaults() -> None:
    r = rules("""
        [[compression]]
        name = "ct"
        modalities = ["ct", "MR"]
        syntax = "jpeg-ls-lossless"

        [[compression]]
        min_age_days = 30
        syntax = "jpeg2000-lossy"
        lossy = true
        ratio = 15
    """)
    first, second = r.rules
    assert (first.name, first.modalities, first.min_age_days, first.lossy) == ("ct", ("CT", "MR"), 0.0, False)
    assert (second.name, second.syntax, second.lossy, second.ratio) == ("compression #2", "jpeg2000-lossy", True, 15.0)
    assert r.on_arrival


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ('syntax = "jpeg-ls-lossless"\nmodalitys = ["CT"]', 4, "modalitys: unknown setting"),
        ('syntax = "jpeg-xl"', 3, "unknown syntax 'jpeg-xl'"),
        ('syntax = "jpeg2000-lossy"', 3, "allowed only with lossy = true"),
        ('syntax = "jpeg2000-lossless"\nlossy = true', 4, "lossy = true with the lossless syntax"),
        ('syntax = "jpeg-ls-lossless"\nratio = 5', 4, "a ratio is for jpeg2000-lossy only"),
        ('syntax = "jpeg2000-lossy"\nlossy = true\nratio = 0.5', 5, "must be more than 1"),
        ('syntax = "jpeg-ls-lossless"\nmin_age_days = -1', 4, "min_age_days: must be a number of days >= 0"),
        ('syntax = "jpeg-ls-lossless"\nmin_age_days = "7"', 4, "min_age_days: wrong type str"),
        ('syntax = "jpeg-ls-lossless"\nlossy = 0', 4, "lossy: wrong type int"),
        ('syntax = "jpeg-ls-lossless"\nmodalities = "CT"', 4, "modalities: wrong type str"),
        ('syntax = "jpeg-ls-lossless"\nsop_classes = ["CT image"]', 4, "not a UID"),
        ('modalities = ["CT"]', 2, "needs a syntax"),
    ],
)
def test_bad_rule_is_refused_with_its_line(body: str, line: int, words: str) -> None:
    text = f'[[compression]]\nsyntax = "jpeg-ls-lossless"\n\n[[compression]]\n{body}\n'
    # The second rule is the bad one: its lines start at 4 (line numbers in the cases count from its header - 1).
    with pytest.raises(ConfigError) as err:
        compress.parse(tomllib.loads(text), text, "/etc/hilum.toml")
    message = str(err.value)
    assert f"/etc/hilum.toml line {line + 2}" in message, message
    assert "[[compression]] #2" in message and words in message, message


def test_compression_table_instead_of_list_is_refused() -> None:
    text = '[storage]\ninterval = 60\n\n[compression]\nsyntax = "jpeg-ls-lossless"\n'
    with pytest.raises(ConfigError, match=r"line 4: \[compression\]: write \[\[compression\]\]"):
        parse_policies(tomllib.loads(text), text, "hilum.toml")


# --------------------------------------------------------------------------- lossless


@pytest.mark.parametrize("syntax", ["jpeg-ls-lossless", "jpeg2000-lossless", "htj2k-lossless"])
def test_ct_mr_cr_compressed_lossless_pixels_and_uids_equal(
    archive: Archive, filled: dict[str, np.ndarray], syntax: str
) -> None:
    if syntax not in transcode.encoders():
        pytest.skip(f"no installed encoder makes {syntax}")
    before = rows_of(archive)
    events: list[object] = []
    archive.subscribe(events.append)
    report = compress.run_once(archive, rules(f'[[compression]]\nname = "all"\nsyntax = "{syntax}"\n'))
    assert events == []  # the same instances, the same content: nothing for subscribers to act on
    after = rows_of(archive)
    assert set(after) == set(before) == set(filled)  # every UID kept
    assert report.instances == len(filled) and not report.errors
    assert report.bytes_after < report.bytes_before and report.saved > 0
    ts = transcode.COMPRESSIONS[syntax]
    for uid, pixels in filled.items():
        assert after[uid][0] == ts and after[uid][2] != before[uid][2]
        ds = pydicom.dcmread(io.BytesIO(archive.read(uid)))
        assert ds.SOPInstanceUID == uid and ds.file_meta.MediaStorageSOPInstanceUID == uid
        assert str(ds.file_meta.TransferSyntaxUID) == ts and "LossyImageCompression" not in ds
        got = ds.pixel_array
        assert got.dtype == pixels.dtype and np.array_equal(got, pixels)
        assert not archive.blobs.exists(before[uid][2])  # the original went, once the new one was indexed
    assert_clean(archive)
    log = storage.policy_history(archive, action="compress")
    assert sum(r["instances"] for r in log) == len(filled) and {r["rule"] for r in log} == {"all"}
    assert sum(r["bytes_before"] - r["bytes_after"] for r in log) == report.saved
    (action,) = report.actions  # one study
    assert action["instances"] == len(filled) and action["bytes"] > action["bytes_after"]
    # A second pass finds nothing left to do.
    again = compress.run_once(archive, rules(f'[[compression]]\nsyntax = "{syntax}"\n'))
    assert again.instances == 0 and again.actions == []


def test_rules_match_modality_sender_age_first_wins(
    archive: Archive, filled: dict[str, np.ndarray], datasets: list[Dataset]
) -> None:
    r = rules("""
        [[compression]]
        name = "old-mr"
        modalities = ["MR"]
        min_age_days = 10
        syntax = "jpeg2000-lossless"

        [[compression]]
        name = "mr-from-elsewhere"
        modalities = ["MR"]
        source_aets = ["SCANNER9"]
        syntax = "jpeg-ls-lossless"

        [[compression]]
        name = "cr"
        sop_classes = ["1.2.840.10008.5.1.4.1.1.1"]
        syntax = "jpeg-ls-lossless"
    """)
    now = storage.utcnow()
    before = rows_of(archive)
    dry = compress.run_once(archive, r, dry_run=True, now=now)
    assert [(a["rule"], a["instances"]) for a in dry.actions] == [("cr", 1)]
    assert rows_of(archive) == before  # nothing changed by a dry run
    assert all(ts == ExplicitVRLittleEndian for ts, _, _ in rows_of(archive).values())
    later = compress.run_once(archive, r, now=now + timedelta(days=11))
    by_uid = rows_of(archive)
    modality = {str(d.SOPInstanceUID): d.Modality for d in datasets}
    for uid, (ts, _, _) in by_uid.items():
        want = {"MR": transcode.COMPRESSIONS["jpeg2000-lossless"], "CR": JLS}.get(modality[uid], ExplicitVRLittleEndian)
        assert ts == want, (modality[uid], ts)
    assert {a["rule"] for a in later.actions} == {"old-mr", "cr"}
    assert_clean(archive)


def test_dry_run_lists_and_changes_nothing(archive: Archive, filled: dict[str, np.ndarray]) -> None:
    before = rows_of(archive)
    report = compress.run_once(archive, rules('[[compression]]\nsyntax = "jpeg-ls-lossless"\n'), dry_run=True)
    assert rows_of(archive) == before and report.dry_run
    (action,) = report.actions
    assert set(action) >= {"uid", "rule", "instances", "bytes", "reason"}
    assert action["instances"] == len(filled) and action["bytes"] == sum(s for _, s, _ in before.values())
    assert storage.policy_history(archive) == []


def test_through_the_policy_pass(archive: Archive, filled: dict[str, np.ndarray]) -> None:
    text = '[storage]\ninterval = 60\n\n[[compression]]\nsyntax = "jpeg-ls-lossless"\n'
    pol = parse_policies(tomllib.loads(text), text, "hilum.toml")
    reports = run_pass(archive, pol, only=["compression"])
    assert [r.task for r in reports] == ["compression"] and reports[0].instances == len(filled)
    assert_clean(archive)


@pytest.mark.parametrize("syntax", ["jpeg-ls-lossless", "jpeg2000-lossless"])
def test_real_sample_files(archive: Archive, syntax: str) -> None:
    """Real files written by others (pydicom's and pydicom-data's): 12-bit MR, RGB US, PALETTE COLOR, signed
    CTs (693_UNCR carries group lengths, which pydicom does not write back: not a difference)."""
    from pydicom.data import get_testdata_file

    names = [
        "MR2_UNCR.dcm",
        "US1_UNCR.dcm",
        "OBXXXX1A.dcm",
        "CT_small.dcm",
        "SC_rgb.dcm",
        "693_UNCR.dcm",
        "MR_small_bigendian.dcm",
        "emri_small_big_endian.dcm",
    ]
    originals = {}
    for name in names:
        path = get_testdata_file(name, download=False)
        assert path, name
        res = archive.ingest(path)
        assert res.ok, res
        originals[res.sop_instance_uid] = pydicom.dcmread(path).pixel_array
    report = compress.run_once(archive, rules(f'[[compression]]\nsyntax = "{syntax}"\n'))
    assert report.instances == len(names), report.actions
    for uid, pixels in originals.items():
        ds = pydicom.dcmread(io.BytesIO(archive.read(uid)))
        assert str(ds.file_meta.TransferSyntaxUID) == transcode.COMPRESSIONS[syntax]
        assert np.array_equal(ds.pixel_array, pixels)
        if syntax == "jpeg2000-lossless" and ds.SamplesPerPixel == 3:
            assert ds.PhotometricInterpretation == "YBR_RCT"  # RGB through the reversible colour transform
    assert_clean(archive)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's remarks on the odd test files
def test_every_native_sample_file_verifies_or_is_refused() -> None:
    """Oracle over every native image the pydicom wheels ship: each compression either decodes back to the
    original pixels (verify) or is refused with TranscodeError — never a wrong file."""
    from pydicom.data import get_testdata_file

    roots = {
        Path(pydicom.__file__).parent / "data" / "test_files",
        Path(get_testdata_file("MR2_UNCR.dcm", download=False)).parent,
    }
    verified = refused = 0
    for path in sorted(p for r in roots for p in r.rglob("*.dcm") if p.stat().st_size < 2_500_000):
        try:
            head = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not every test file is a readable Part 10 file
            continue
        if str(getattr(head, "file_meta", {}).get("TransferSyntaxUID", "")) not in compress.NATIVE_SYNTAXES:
            continue
        data = path.read_bytes()
        for name in transcode.encoders():
            try:
                made = transcode.compress(data, name)
                transcode.verify(data, made.data, lossless=not made.lossy)
            except transcode.TranscodeError:
                refused += 1
                continue
            verified += 1
            if not made.lossy:
                want = pydicom.dcmread(path).pixel_array
                assert np.array_equal(pydicom.dcmread(io.BytesIO(made.data)).pixel_array, want), (path.name, name)
    assert verified > 100 and refused > 0


# --------------------------------------------------------------------------- what is left as it is


def test_what_the_codec_cannot_take_is_skipped_with_a_reason(archive: Archive, study) -> None:  # type: ignore[no-untyped-def]
    ds32 = generate_ct_series(study, rows=8, columns=8, slices=1, seed=5)[0]
    ds32.SOPInstanceUID = ds32.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds32.BitsAllocated, ds32.BitsStored, ds32.HighBit = 32, 32, 31
    ds32.PixelData = np.arange(64, dtype=np.int32).tobytes()
    assert archive.ingest(ds32).ok
    before = rows_of(archive)
    report = compress.run_once(archive, rules('[[compression]]\nsyntax = "jpeg2000-lossless"\n'))
    assert report.instances == 0 and rows_of(archive) == before
    (action,) = report.actions
    assert "bit depth the codec cannot take" in action["skipped"][0]["reason"]
    assert_clean(archive)


def test_a_failing_encode_leaves_the_original(
    archive: Archive, filled: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = rows_of(archive)
    files_before = sorted(archive.blobs.keys())

    def broken(*_a, **_k):  # type: ignore[no-untyped-def]
        raise transcode.TranscodeError("codec exploded")

    monkeypatch.setattr(transcode, "compress", broken)
    report = compress.run_once(archive, rules('[[compression]]\nsyntax = "jpeg-ls-lossless"\n'))
    assert report.instances == 0 and rows_of(archive) == before and sorted(archive.blobs.keys()) == files_before
    assert {s["reason"] for a in report.actions for s in a["skipped"]} == {"codec exploded"}
    assert_clean(archive)


def test_a_file_that_does_not_verify_leaves_the_original(
    archive: Archive, filled: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = transcode.compress

    def corrupting(data, name, **kw):  # type: ignore[no-untyped-def]
        made = real(data, name, **kw)
        ds = pydicom.dcmread(io.BytesIO(made.data))
        ds.decompress(generate_instance_uid=False)
        arr = ds.pixel_array.copy()
        arr.flat[0] ^= 1  # one bit off
        ds.compress(name and transcode.COMPRESSIONS[name], arr, generate_instance_uid=False)
        return transcode.Compressed(transcode.encode(ds), made.transfer_syntax, made.sop_uid, False, made.ratio)

    monkeypatch.setattr(transcode, "compress", corrupting)
    before = rows_of(archive)
    report = compress.run_once(archive, rules('[[compression]]\nsyntax = "jpeg-ls-lossless"\n'))
    assert report.instances == 0 and rows_of(archive) == before
    reasons = {s["reason"] for a in report.actions for s in a["skipped"]}
    assert reasons and all("not verified, original kept: pixels differ" in r for r in reasons)
    assert_clean(archive)


def test_replace_blob_gives_up_when_the_row_changed(archive: Archive, filled: dict[str, np.ndarray]) -> None:
    uid = next(iter(filled))
    with archive.transaction() as conn:
        pk = conn.execute(select(instances.c.pk).where(instances.c.sop_uid == uid)).scalar_one()
        assert (
            archive.writer.replace_blob(
                conn, pk, expected_checksum="xxh128:not-it", key="x/y/z.dcm", size=1, checksum="c", transfer_syntax=JLS
            )
            is None
        )
    assert rows_of(archive)[uid][0] == ExplicitVRLittleEndian


def test_overwriting_a_compressed_instance_leaves_no_orphan(data_dir: Path, datasets: list[Dataset]) -> None:
    with Archive(data_dir, duplicate_policy="overwrite") as a:
        ds = datasets[0]
        assert a.ingest(ds).ok
        compress.run_once(a, rules('[[compression]]\nsyntax = "jpeg-ls-lossless"\n'))
        assert rows_of(a)[str(ds.SOPInstanceUID)][0] == JLS
        assert a.ingest(ds).status == "replaced"
        assert rows_of(a)[str(ds.SOPInstanceUID)][0] == ExplicitVRLittleEndian
        assert_clean(a)  # the compressed file (at its own key) went to the trash and was reaped


# --------------------------------------------------------------------------- lossy


def test_lossy_only_by_rule_makes_a_new_derived_instance(
    archive: Archive, filled: dict[str, np.ndarray], datasets: list[Dataset]
) -> None:
    ct = [str(d.SOPInstanceUID) for d in datasets if d.Modality == "CT"]
    r = rules(
        '[[compression]]\nname = "ct-lossy"\nmodalities = ["CT"]\nsyntax = "jpeg2000-lossy"\nlossy = true\nratio = 8\n'
    )
    events: list[object] = []
    archive.subscribe(events.append)
    report = compress.run_once(archive, r)
    assert report.instances == len(ct)
    assert sorted(getattr(e, "kind", "") for e in events) == ["deleted"] * len(ct) + ["stored"] * len(ct)
    (action,) = report.actions
    pairs = {p["original"]: p["new"] for p in action["replaced"]}
    assert set(pairs) == set(ct)
    after = rows_of(archive)
    assert not set(ct) & set(after) and set(pairs.values()) <= set(after)
    assert len(after) == len(filled)  # the derivative took the original's place
    for old, new in pairs.items():
        with pytest.raises(NotFound):
            archive.path(old)
        ds = pydicom.dcmread(io.BytesIO(archive.read(new)))
        assert ds.SOPInstanceUID == new != old and ds.file_meta.MediaStorageSOPInstanceUID == new
        assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_15444_1"
        assert float(ds.LossyImageCompressionRatio) > 2
        assert ds.ImageType[0] == "DERIVED"
        assert ds.DerivationCodeSequence[0].CodeValue == "113040"
        src = ds.SourceImageSequence[0]
        assert src.ReferencedSOPInstanceUID == old and src.ReferencedSOPClassUID == ds.SOPClassUID
        assert src.PurposeOfReferenceCodeSequence[0].CodeValue == "121320"
        assert ds.pixel_array.shape == filled[old].shape
        assert np.abs(ds.pixel_array.astype(int) - filled[old].astype(int)).mean() < 50
    (row,) = storage.policy_history(archive, action="compress")
    assert all(f"{o} -> {n}" in row["detail"] for o, n in pairs.items())
    assert_clean(archive)


# --------------------------------------------------------------------------- kill -9

SCRIPT = """
import os, sys, time
from hilum.archive import Archive, compress
import tomllib
stage, after = sys.argv[2], int(sys.argv[3])
seen = {"n": 0}
def hook(name):
    if name == stage:
        seen["n"] += 1
        if seen["n"] > after:
            print("AT", name, flush=True)
            time.sleep(600)
compress._stage = hook
text = '[[compression]]\\nsyntax = "jpeg-ls-lossless"\\n'
a = Archive(sys.argv[1])
compress.GROUP = 3
compress.run_once(a, compress.parse(tomllib.loads(text), text, "hilum.toml"))
print("DONE", flush=True)
"""


@pytest.mark.parametrize(("stage", "after"), [("written", 4), ("renamed", 4), ("adopted", 1)])
def test_kill_9_mid_transcode_then_check_clean_and_all_readable(
    data_dir: Path, datasets: list[Dataset], tmp_path: Path, stage: str, after: int
) -> None:
    with Archive(data_dir) as a:
        pixels = {}
        for ds in datasets:
            assert a.ingest(ds).ok
            pixels[str(ds.SOPInstanceUID)] = pydicom.dcmread(io.BytesIO(a.read(str(ds.SOPInstanceUID)))).pixel_array
    script = tmp_path / "compress_and_die.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO / "app")}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data_dir), stage, str(after)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("AT"), (line, proc.stderr.read() if proc.stderr else "")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with Archive(data_dir) as a:
        with a.engine.connect() as conn:
            pending = conn.execute(select(blob_trash.c.key)).scalars().all()
        if stage == "renamed":
            assert pending  # the unadopted new file is noted in the trash
    rc = cli_main(["check", "--data", str(data_dir)])  # reaps the trash and the dead process's work file
    assert rc == 0
    with Archive(data_dir) as a:
        assert_clean(a)
        for uid, arr in pixels.items():
            assert np.array_equal(pydicom.dcmread(io.BytesIO(a.read(uid))).pixel_array, arr)
        done = compress.run_once(a, rules('[[compression]]\nsyntax = "jpeg-ls-lossless"\n'))
        assert all(ts == JLS for ts, _, _ in rows_of(a).values()), done.actions
        assert_clean(a)
        for uid, arr in pixels.items():
            assert np.array_equal(pydicom.dcmread(io.BytesIO(a.read(uid))).pixel_array, arr)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_compression_on_postgresql(pg_url: str, data_dir: Path, datasets: list[Dataset]) -> None:
    with Archive(data_dir, database_url=pg_url) as a:
        for ds in datasets:
            assert a.ingest(ds).ok
        report = compress.run_once(a, rules('[[compression]]\nsyntax = "jpeg2000-lossless"\n'))
        assert report.instances == len(datasets)
        assert_clean(a)
        for ds in datasets:
            back = pydicom.dcmread(io.BytesIO(a.read(str(ds.SOPInstanceUID))))
            assert np.array_equal(back.pixel_array, ds.pixel_array)


# --------------------------------------------------------------------------- third-party decoders, the service


@pytest.mark.parametrize(
    ("syntax", "tool"),
    [
        ("jpeg-ls-lossless", ["dcmdjpls"]),
        ("jpeg-ls-lossless", ["gdcmconv", "--raw"]),
        ("jpeg2000-lossless", ["gdcmconv", "--raw"]),
    ],
)
def test_compressed_files_decode_to_the_original_pixels_in_dcmtk_and_gdcm(
    archive: Archive, filled: dict[str, np.ndarray], tmp_path: Path, syntax: str, tool: list[str]
) -> None:
    """Oracle: what the policy wrote is standard JPEG-LS / JPEG 2000 that DCMTK and GDCM decode to the same pixels."""
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} is not installed (DCMTK: dcmtk, GDCM: libgdcm-tools)")
    compress.run_once(archive, rules(f'[[compression]]\nsyntax = "{syntax}"\n'))
    for uid, pixels in filled.items():
        out = tmp_path / f"{uid}.dcm"
        subprocess.run([*tool, str(archive.path(uid)), str(out)], check=True, capture_output=True, timeout=60)
        back = pydicom.dcmread(out)
        assert not back.file_meta.TransferSyntaxUID.is_compressed and back.SOPInstanceUID == uid
        assert np.array_equal(back.pixel_array, pixels), (uid, tool)


def test_the_policy_service_compresses_what_arrives(
    archive: Archive, datasets: list[Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hilum.archive import policy

    monkeypatch.setenv("HILUM_POLICY_FIRST_PASS", "0.2")
    monkeypatch.setattr(policy, "AFTER_ARRIVAL", 0.2)
    text = '[storage]\ninterval = 3600\n\n[[compression]]\nmodalities = ["CT"]\nsyntax = "jpeg-ls-lossless"\n'
    service = policy.PolicyService(archive, parse_policies(tomllib.loads(text), text, "hilum.toml"))
    service.start()
    try:
        time.sleep(0.5)  # the first pass has run on an empty archive; the arrivals below wake the next
        for ds in datasets:
            assert archive.ingest(ds, origin="dimse", source_aet="CT1").ok
        ct = {str(d.SOPInstanceUID) for d in datasets if d.Modality == "CT"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = rows_of(archive)
            if all(got[u][0] == JLS for u in ct):
                break
            time.sleep(0.2)
        got = rows_of(archive)
        assert all(got[u][0] == JLS for u in ct)
        assert all(got[u][0] == ExplicitVRLittleEndian for u in got if u not in ct)
    finally:
        service.stop()
    assert_clean(archive)


# --------------------------------------------------------------------------- kill -9 of the node


def test_kill_9_of_the_node_while_it_compresses_what_arrives(tmp_path: Path) -> None:
    """``hilum serve`` compressing on arrival (``min_age_days = 0``) while DCMTK's storescu sends 12 CT
    studies is killed with SIGKILL once some are compressed and others not; after it ``hilum check`` is
    clean, every instance reads back with its original pixels, and the next pass compresses the rest."""
    import sqlite3

    from conftest import free_port
    from hilum.dicom.generator.people import DOE, MUELLER

    if shutil.which("storescu") is None:
        pytest.skip("DCMTK's storescu is not installed")
    src = tmp_path / "src"
    src.mkdir()
    pixels: dict[str, np.ndarray] = {}
    for i in range(12):
        st = make_study([MUELLER, DOE][i % 2], accession=f"K-{i}", seed=f"kill{i}")
        for ds in generate_ct_series(st, rows=256, columns=256, slices=6, seed=i):
            ds.save_as(src / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            pixels[str(ds.SOPInstanceUID)] = ds.pixel_array
    data = tmp_path / "data"
    data.mkdir()
    (data / "hilum.toml").write_text('[storage]\ninterval = 1\n[[compression]]\nsyntax = "jpeg2000-lossless"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO / "app"), "HILUM_POLICY_FIRST_PASS": "0.2",
           "HILUM_POLICY_SETTLE": "0"}
    ports = [free_port() for _ in range(3)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hilum", "serve", "--data", str(data), "--dicom-port", str(ports[0]),
         "--web-port", str(ports[1]), "--hl7-port", str(ports[2])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )
    compressed = 0
    sender: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ok = subprocess.run(["echoscu", "-aec", "HILUM", "-to", "2", "127.0.0.1", str(ports[0])], capture_output=True).returncode
            if ok == 0:
                break
            time.sleep(0.2)
        sender = subprocess.Popen(["storescu", "-aec", "HILUM", "+sd", "127.0.0.1", str(ports[0]), str(src)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True, timeout=1) as db:
                    compressed = db.execute("SELECT count(*) FROM instances WHERE transfer_syntax = ?",
                                            ("1.2.840.10008.1.2.4.90",)).fetchone()[0]
            except sqlite3.OperationalError:
                compressed = 0
            # All received first (a kill in the middle of a C-STORE leaves an ingest's temporary, which is
            # `hilum check --repair`'s business, not this test's), some compressed, not all.
            if compressed >= 6 and sender.poll() is not None:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        if sender is not None:
            sender.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert 6 <= compressed < len(pixels), f"killed after {compressed} compressed: not in the middle"
    assert cli_main(["check", "--data", str(data)]) == 0
    with Archive(data) as a:
        assert_clean(a)
        stored = rows_of(a)
        assert stored, "nothing was stored before the kill"
        for uid in stored:  # what the node acknowledged is there, with its pixels
            assert np.array_equal(pydicom.dcmread(io.BytesIO(a.read(uid))).pixel_array, pixels[uid])
        compress.run_once(a, rules('[[compression]]\nsyntax = "jpeg2000-lossless"\n'))
        assert {ts for ts, _, _ in rows_of(a).values()} == {"1.2.840.10008.1.2.4.90"}
        assert_clean(a)
        for uid in stored:
            assert np.array_equal(pydicom.dcmread(io.BytesIO(a.read(uid))).pixel_array, pixels[uid])
