"""Lossless compression for the archive: ratio, encode and decode speed, beside DCMTK and GDCM; the entropy bound.

Inputs, all native (uncompressed) grayscale unless said:

* the generated CT set (``iter_ct_series``: 512x512, ``--slices`` slices, int16, CT numbers + 1024 in
  0..~3000, i.e. 12 significant bits in 16 allocated);
* real sample files written by others (pydicom's and pydicom-data's, MIT): a 512x512 14-bit CT
  (693_UNCR), a 1024x1024 12-bit MR (MR2_UNCR), two CR radiographs (RG1_UNCR 15-bit 1955x1841,
  RG3_UNCR 10-bit 1760x1760), a 10-frame 12-bit MR (emri_small) and an RGB ultrasound (US1_UNCR).

Measured, same files, same run:

* Hilum's path (:func:`hilum.dicom.transcode.compress`, pydicom's encoders pyjpegls / pylibjpeg-openjpeg,
  HTJ2K through imagecodecs' OpenJPH) for JPEG-LS lossless, JPEG 2000 lossless and HTJ2K lossless:
  ratio (native pixel bytes / compressed pixel bytes), encode MB/s (native pixel MB per second,
  reading and writing the Part 10 bytes included), decode frames/s (``pixel_array`` of the compressed
  file); the bare codecs (imagecodecs) beside, to show what pydicom's wrapping costs;
* the peers as separate processes, one per file: DCMTK ``dcmcjpls`` / ``dcmdjpls`` (JPEG-LS; DCMTK
  3.6.7 has no JPEG 2000) and GDCM ``gdcmconv --jpegls`` / ``--j2k`` / ``--raw`` (when ``libgdcm-tools``
  is installed).  Each process's start and file I/O is measured by a plain copy with the same tool
  (``dcmconv``, ``gdcmconv``) and subtracted ("net"); every peer output is decoded by pydicom and
  checked equal to the original pixels;
* the whole policy pass (:func:`hilum.archive.compress.run_once` on an archive holding the CT set:
  read, encode, write + fsync, read back, decode and compare, rename, index) in instances/s and MB/s;
* the zero-order entropy of the CT pixels: of the values, of the differences to the left neighbour,
  and of the residuals of JPEG-LS's median edge detector (MED) predictor, in bits/pixel; the "bound"
  ratio is 16 allocated bits / that entropy.  A memoryless coder of those symbols cannot beat it;
  context-modelling coders (JPEG-LS's 365 contexts, EBCOT) may, so it is the classical reference
  figure, not a hard limit.

    .venv/bin/python bench/storage/compress.py [--slices 32] [--repeat 3] [--no-peers]

The machine is shared: figures vary run to run; ratios between tools in one run are what count.
Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from hilum.dicom import transcode

SAMPLES = ["693_UNCR.dcm", "MR2_UNCR.dcm", "RG1_UNCR.dcm", "RG3_UNCR.dcm", "emri_small.dcm", "US1_UNCR.dcm"]
CODECS = ["jpeg-ls-lossless", "jpeg2000-lossless", "htj2k-lossless"]


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pixel_bytes(ds: Any) -> int:
    return int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8 * frames(ds)


def frames(ds: Any) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def encapsulated_bytes(data: bytes) -> int:
    from pydicom.encaps import generate_fragments

    ds = pydicom.dcmread(io.BytesIO(data))
    return sum(len(f) for f in generate_fragments(ds.PixelData))


# --------------------------------------------------------------------------- inputs


def ct_set(out: Path, slices: int) -> list[Path]:
    from hilum.dicom.generator import MUELLER, iter_ct_series, make_study
    from hilum.dicom.generator.syntaxes import write_dataset

    study = make_study(MUELLER, accession="BENCH-CMP", seed="bench-compress")
    out.mkdir(parents=True, exist_ok=True)
    return [write_dataset(ds, out / f"ct{i:04d}.dcm") for i, ds in enumerate(iter_ct_series(study, slices=slices))]


def samples(out: Path) -> dict[str, Path]:
    from pydicom.data import get_testdata_file

    found = {}
    for name in SAMPLES:
        path = get_testdata_file(name, download=False)
        if path:
            found[name] = Path(shutil.copy(path, out / name))
    return found


# --------------------------------------------------------------------------- entropy


def entropy(values: np.ndarray) -> float:
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def med_residuals(img: np.ndarray) -> np.ndarray:
    """Residuals of the LOCO-I / JPEG-LS median edge detector (ITU-T T.87 A.4.1) over the image interior."""
    x = img.astype(np.int64)
    a, b, c = x[1:, :-1], x[:-1, 1:], x[:-1, :-1]  # left, above, above-left
    pred = np.where(
        c >= np.maximum(a, b), np.minimum(a, b), np.where(c <= np.minimum(a, b), np.maximum(a, b), a + b - c)
    )
    return x[1:, 1:] - pred


def entropy_figures(paths: list[Path]) -> dict[str, float]:
    imgs = [pydicom.dcmread(p).pixel_array for p in paths]
    values = np.concatenate([i.ravel() for i in imgs])
    diffs = np.concatenate([np.diff(i.astype(np.int64), axis=1).ravel() for i in imgs])
    med = np.concatenate([med_residuals(i).ravel() for i in imgs])
    return {
        "min": int(values.min()),
        "max": int(values.max()),
        "values": entropy(values),
        "left-diff": entropy(diffs),
        "MED": entropy(med),
    }


# --------------------------------------------------------------------------- Hilum's path


def ours(files: list[Path], codec: str, repeat: int) -> dict[str, float]:
    datas = [p.read_bytes() for p in files]
    dss = [pydicom.dcmread(io.BytesIO(d)) for d in datas]
    native = sum(pixel_bytes(d) for d in dss)
    nframes = sum(frames(d) for d in dss)
    made: list[bytes] = []

    def enc() -> None:
        made.clear()
        made.extend(transcode.compress(d, codec).data for d in datas)

    t_enc = median_time(enc, repeat)
    comp = sum(encapsulated_bytes(m) for m in made)
    for orig, m in zip(datas, made, strict=True):
        transcode.verify(orig, m, lossless=True)
    t_dec = median_time(lambda: [pydicom.dcmread(io.BytesIO(m)).pixel_array for m in made], repeat)
    return {
        "ratio": native / comp,
        "enc_MBps": native / t_enc / 1e6,
        "dec_fps": nframes / t_dec,
        "enc_ms_frame": 1000 * t_enc / nframes,
    }


def bare(files: list[Path], codec: str, repeat: int) -> dict[str, float] | None:
    """The codec alone (imagecodecs), on the decoded arrays, one frame at a time."""
    try:
        import imagecodecs
    except ImportError:
        return None
    arrays = []
    for p in files:
        ds = pydicom.dcmread(p)
        a = ds.pixel_array
        arrays.extend(a if frames(ds) > 1 else [a])
    # JPEG-LS codecs take unsigned samples: signed images shifted to start at 0 (same information).
    arrays = [
        np.ascontiguousarray(
            a
            if a.dtype.kind == "u" or codec != "jpeg-ls-lossless"
            else (a.astype(np.int32) - int(a.min())).astype(np.uint16 if a.itemsize > 1 else np.uint8)
        )
        for a in arrays
    ]
    enc, dec = {
        "jpeg-ls-lossless": (lambda a: imagecodecs.jpegls_encode(a, level=0), imagecodecs.jpegls_decode),
        "jpeg2000-lossless": (
            lambda a: imagecodecs.jpeg2k_encode(a, level=0, reversible=True),
            imagecodecs.jpeg2k_decode,
        ),
        "htj2k-lossless": (lambda a: imagecodecs.htj2k_encode(a, reversible=True), imagecodecs.htj2k_decode),
    }[codec]
    if codec == "htj2k-lossless" and any(a.ndim == 3 for a in arrays):
        arrays = [a for a in arrays if a.ndim == 2]
    if not arrays:
        return None
    try:
        streams = [enc(a) for a in arrays]
    except Exception as exc:  # noqa: BLE001
        print(f"  (bare {codec}: {exc})", file=sys.stderr)
        return None
    native = sum(a.nbytes for a in arrays)
    t_enc = median_time(lambda: [enc(a) for a in arrays], repeat)
    t_dec = median_time(lambda: [dec(s) for s in streams], repeat)
    return {
        "ratio": native / sum(len(s) for s in streams),
        "enc_MBps": native / t_enc / 1e6,
        "dec_fps": len(arrays) / t_dec,
    }


# --------------------------------------------------------------------------- peers


def run_each(cmd: list[str], files: list[Path], outdir: Path, suffix: str) -> tuple[float, list[Path]]:
    outdir.mkdir(parents=True, exist_ok=True)
    outs = []
    t0 = time.perf_counter()
    for p in files:
        out = outdir / f"{p.stem}.{suffix}.dcm"
        subprocess.run([*cmd, str(p), str(out)], check=True, capture_output=True)
        outs.append(out)
    return time.perf_counter() - t0, outs


def peer(
    name: str, enc_cmd: list[str], dec_cmd: list[str], copy_cmd: list[str], files: list[Path], work: Path, repeat: int
) -> dict[str, float] | None:
    if not shutil.which(enc_cmd[0]):
        return None
    dss = [pydicom.dcmread(p) for p in files]
    native = sum(pixel_bytes(d) for d in dss)
    nframes = sum(frames(d) for d in dss)
    t_copy = statistics.median(run_each(copy_cmd, files, work / f"{name}-copy", "copy")[0] for _ in range(repeat))
    runs = [run_each(enc_cmd, files, work / f"{name}-enc", "enc") for _ in range(repeat)]
    t_enc = statistics.median(r[0] for r in runs)
    outs = runs[-1][1]
    comp = 0
    for orig, out in zip(dss, outs, strict=True):
        back = pydicom.dcmread(out)
        if not back.file_meta.TransferSyntaxUID.is_compressed:
            raise SystemExit(f"{name} did not compress {out}")
        comp += sum(len(f) for f in pydicom.encaps.generate_fragments(back.PixelData))
        if not np.array_equal(back.pixel_array, orig.pixel_array):
            raise SystemExit(f"{name}: {out} does not decode to the original pixels")
    t_dec = statistics.median(run_each(dec_cmd, outs, work / f"{name}-dec", "dec")[0] for _ in range(repeat))
    out = {
        "ratio": native / comp,
        "enc_MBps": native / t_enc / 1e6,
        "dec_fps": nframes / t_dec,
        "copy_ms_file": 1000 * t_copy / len(files),
    }
    # "net" only where the work stands out of the process start and file I/O (else it is noise).
    if t_enc - t_copy > 0.25 * t_enc:
        out["enc_MBps_net"] = native / (t_enc - t_copy) / 1e6
    if t_dec - t_copy > 0.25 * t_dec:
        out["dec_fps_net"] = nframes / (t_dec - t_copy)
    return out


# --------------------------------------------------------------------------- the policy pass


def policy_pass(files: list[Path], codec: str, work: Path) -> dict[str, float]:
    import tomllib

    from hilum.archive import Archive, compress

    data = work / f"archive-{codec}"
    with Archive(data) as a:
        for p in files:
            assert a.ingest(p).ok
        text = f'[[compression]]\nsyntax = "{codec}"\n'
        rules = compress.parse(tomllib.loads(text), text, "bench")
        t0 = time.perf_counter()
        report = compress.run_once(a, rules)
        t = time.perf_counter() - t0
        assert report.instances == len(files), report.as_dict()
        assert a.check().clean
    shutil.rmtree(data, ignore_errors=True)
    native = sum(pixel_bytes(pydicom.dcmread(p, stop_before_pixels=True)) for p in files)
    return {"inst_s": len(files) / t, "MBps": native / t / 1e6, "saved_pct": 100 * report.saved / report.bytes_before}


# --------------------------------------------------------------------------- main


def fmt(row: dict[str, float] | None, keys: list[str]) -> str:
    if row is None:
        return "  (not available)"
    return "  ".join(f"{k}={row[k]:8.2f}" for k in keys if k in row)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    print(f"encoders here: {', '.join(transcode.encoders())}")
    print(f"peers: dcmcjpls={shutil.which('dcmcjpls') or 'missing'}  gdcmconv={shutil.which('gdcmconv') or 'missing'}")
    with tempfile.TemporaryDirectory(prefix="hilum-bench-compress-") as tmp:
        work = Path(tmp)
        sets: dict[str, list[Path]] = {f"generated CT 512x512 x{args.slices}": ct_set(work / "ct", args.slices)}
        sample = samples(work)
        for name, path in sample.items():
            sets[name] = [path]
        sets["all real samples (gray)"] = [p for n, p in sample.items() if n != "US1_UNCR.dcm"]

        ct_files = next(iter(sets.values()))
        for label, files in (("the generated CT", ct_files), ("693_UNCR (real CT)", sets.get("693_UNCR.dcm", []))):
            if not files:
                continue
            e = entropy_figures(files)
            print(f"\n== entropy of {label} (values {e['min']}..{e['max']}, 16 bits allocated) ==")
            for k in ("values", "left-diff", "MED"):
                print(f"  zero-order entropy of {k:9s}: {e[k]:6.3f} bits/pixel -> bound ratio {16 / e[k]:6.3f}")

        for label, files in sets.items():
            print(f"\n== {label} ==")
            for codec in CODECS:
                if codec not in transcode.encoders():
                    print(f"  {codec:18s} (no encoder here)")
                    continue
                if codec == "htj2k-lossless" and label == "US1_UNCR.dcm":
                    continue
                fl = [p for p in files if transcode.compressible(pydicom.dcmread(p), codec) is None]
                if not fl:
                    continue
                r = ours(fl, codec, args.repeat)
                print(f"  hilum {codec:18s} {fmt(r, ['ratio', 'enc_MBps', 'dec_fps', 'enc_ms_frame'])}")
                print(f"  bare  {codec:18s} {fmt(bare(fl, codec, args.repeat), ['ratio', 'enc_MBps', 'dec_fps'])}")
            if args.no_peers:
                continue
            keys = ["ratio", "enc_MBps", "enc_MBps_net", "dec_fps", "dec_fps_net", "copy_ms_file"]
            r = peer(
                "dcmtk-jls", ["dcmcjpls"], ["dcmdjpls"], ["dcmconv"], files, work / "peers" / label[:8], args.repeat
            )
            print(f"  DCMTK dcmcjpls/dcmdjpls  {fmt(r, keys)}")
            r = peer(
                "gdcm-jls",
                ["gdcmconv", "--jpegls"],
                ["gdcmconv", "--raw"],
                ["gdcmconv"],
                files,
                work / "peers" / label[:8],
                args.repeat,
            )
            print(f"  GDCM gdcmconv --jpegls   {fmt(r, keys)}")
            r = peer(
                "gdcm-j2k",
                ["gdcmconv", "--j2k"],
                ["gdcmconv", "--raw"],
                ["gdcmconv"],
                files,
                work / "peers" / label[:8],
                args.repeat,
            )
            print(f"  GDCM gdcmconv --j2k      {fmt(r, keys)}")

        print(f"\n== the policy pass (compress.run_once) on the generated CT, {len(ct_files)} instances ==")
        for codec in CODECS:
            if codec in transcode.encoders():
                print(f"  {codec:18s} {fmt(policy_pass(ct_files, codec, work), ['inst_s', 'MBps', 'saved_pct'])}")


if __name__ == "__main__":
    main()
