"""De-identification and media export throughput, beside a plain copy of the same files (same run).

Inputs: the generated CT set (``write_ct_set``: 512x512 int16, Explicit VR Little Endian, ``--instances``
instances over 4 patients), and the real sample files of pydicom and pydicom-data (MIT; ~200 files of
every kind: CT/MR/US/RT/SR, compressed, big endian...).

Measured per input set, each ``--repeat`` times, median reported, instances/s (files read from the page
cache, written to a fresh folder each time, no fsync):

* ``copy``: ``shutil.copyfile`` of every file (the floor: what any copy costs);
* ``pydicom read+write``: ``dcmread`` + ``dcmwrite`` of every file, unchanged (the floor of any
  pydicom-based tool);
* ``hilum basic``: :meth:`hilum.dicom.deid.Deidentifier.deidentify_bytes` (PS3.15 Basic Profile, UIDs
  remapped) + write;
* ``hilum dates+descriptors+device``: the same with the three options;
* ``dicognito``: ``dicognito.anonymizer.Anonymizer().anonymize`` + write, the peer library (installed
  for comparison, not used by Hilum);
* and on the CT set only, ``export-media``: :func:`hilum.archive.media.export_media` of the whole
  archive to a folder (DICOMDIR, STD-GEN-CD), plain and ``--anonymise``, beside ``copy``.

    PYTHONPATH=app .venv/bin/python bench/deid/run.py [--instances 200] [--repeat 3]

The machine is shared (2 cores, 8 helpers): ratios within one run are what count.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom


def _files_of(root: Path) -> list[Path]:
    out = []
    for f in sorted(root.rglob("*")):
        if not f.is_file() or f.stat().st_size < 132:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            if "SOPInstanceUID" in ds and "file_meta" in dir(ds) and "TransferSyntaxUID" in ds.file_meta:
                out.append(f)
        except Exception:  # noqa: BLE001, S112 - not a DICOM file
            continue
    return out


def _time(files: list[Path], work: Callable[[Path, Path], None], repeat: int) -> tuple[float, int]:
    """Median instances/s of ``work(src, out_dir)`` over the files; and how many it handled (no exception)."""
    rates, handled = [], 0
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
            out = Path(tmp)
            ok = 0
            t0 = time.perf_counter()
            for f in files:
                try:
                    work(f, out)
                    ok += 1
                except Exception:  # noqa: BLE001 - a file a tool cannot handle is counted out, not fatal
                    pass
            rates.append(ok / (time.perf_counter() - t0))
            handled = ok
    return statistics.median(rates), handled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    from dicognito.anonymizer import Anonymizer

    from hilum.archive import Archive
    from hilum.archive.deid_store import DeidStore
    from hilum.archive.media import export_media
    from hilum.dicom.deid import Deidentifier, Options
    from hilum.dicom.generator import write_ct_set

    secret = b"bench-secret-0123456789abcdef012"
    basic = Deidentifier(secret, Options(allow_burned_in=True))
    full = Deidentifier(secret, Options(retain_dates=True, clean_descriptors=True, retain_device=True,
                                        allow_burned_in=True))  # fmt: skip

    def copy(f: Path, out: Path) -> None:
        shutil.copyfile(f, out / f.name)

    def plain(f: Path, out: Path) -> None:
        ds = pydicom.dcmread(f, force=True)
        ds.save_as(out / f.name, enforce_file_format=True)

    def hilum_with(d: Deidentifier) -> Callable[[Path, Path], None]:
        def work(f: Path, out: Path) -> None:
            data, _ = d.deidentify_bytes(f.read_bytes())
            (out / f.name).write_bytes(data)

        return work

    def dicognito(f: Path, out: Path) -> None:
        ds = pydicom.dcmread(f, force=True)
        Anonymizer(seed="bench").anonymize(ds)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        (out / f.name).write_bytes(buf.getvalue())

    with tempfile.TemporaryDirectory(prefix="bench-deid-src-") as src:
        ct = write_ct_set(Path(src) / "ct", args.instances)
        samples = _files_of(Path(pydicom.__file__).parent / "data" / "test_files")
        try:
            import data_store

            samples += _files_of(Path(data_store.__file__).parent / "data")
        except ImportError:
            pass
        sets = {f"generated CT 512x512 ({len(ct)} files, {sum(f.stat().st_size for f in ct) / 1e6:.0f} MB)": ct,
                f"pydicom + pydicom-data samples ({len(samples)} files)": samples}  # fmt: skip
        tools = [("copy", copy), ("pydicom read+write", plain), ("hilum basic", hilum_with(basic)),
                 ("hilum dates+descriptors+device", hilum_with(full)), ("dicognito", dicognito)]  # fmt: skip
        print(f"repeat {args.repeat}, medians; instances/s (x copy)")
        for name, files in sets.items():
            print(f"\n## {name}")
            base = None
            for tool, work in tools:
                for f in files[:5]:  # warm the page cache and the imports
                    try:
                        work(f, Path(src))
                    except Exception:  # noqa: BLE001, S110
                        pass
                rate, ok = _time(files, work, args.repeat)
                base = base or rate
                print(f"| {tool} | {rate:8.1f}/s | {rate / base:6.3f} | {ok}/{len(files)} handled |")

        print("\n## export-media of the CT set from an archive (folder, DICOMDIR)")
        with tempfile.TemporaryDirectory(prefix="bench-deid-arch-") as adir:
            archive = Archive(Path(adir) / "data", index_writer="fast")
            try:
                assert all(r.ok for r in archive.ingest_many(ct))
                studies = [str(r["StudyInstanceUID"]) for r in archive.query("STUDY", {})]
                store = DeidStore(archive)
                copy_rate, _ = _time(ct, copy, args.repeat)
                rows = []
                for label, deid in (("export-media", None), ("export-media --anonymise", store.deidentifier())):
                    rates = []
                    for i in range(args.repeat):
                        t0 = time.perf_counter()
                        r = export_media(archive, studies, Path(adir) / f"out-{label[-4:]}-{i}", deid=deid, store=store)
                        rates.append(r.instances / (time.perf_counter() - t0))
                        shutil.rmtree(Path(adir) / f"out-{label[-4:]}-{i}")
                    rows.append((label, statistics.median(rates)))
                print(f"| copy | {copy_rate:8.1f}/s | 1.000 |")
                for label, rate in rows:
                    print(f"| {label} | {rate:8.1f}/s | {rate / copy_rate:6.3f} |")
            finally:
                archive.close()


if __name__ == "__main__":
    main()
