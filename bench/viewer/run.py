"""Viewer benchmark: open a 512x512x600 CT series from the archive, load it, scroll it.

Measures, on a generated CT series ingested into a fresh archive:

* open → first image on screen (the real StudyViewer under the offscreen Qt
  platform: from ``open()`` to the first paint that drew an image), and the
  headless loader's preview time;
* full load (all slices decoded into the volume), in the GUI and headless with
  each executor (serial, threads, processes), against SimpleITK's
  ``ImageSeriesReader`` (GDCM, C++) on the same files in the same run — given
  the file list, and with GDCM's own sorting (``GetGDCMSeriesFileNames``);
* compressed series (JPEG-LS, JPEG 2000, RLE, lossless JPEG SV1) against SimpleITK, first image;
* the loaded stack handed to the MPR (the volume of the viewer's slices, no second read);
* scroll rate over the whole stack with rendering: the pipeline alone
  (stored → 8-bit), and the viewport widget's synchronous ``repaint()``;
* memory: resident-set growth per loaded series vs the raw volume size.

The same series opened through the workstation's real main window (double-click
in the study browser, MPR, 3D, event-loop stalls): ``bench/viewer/workstation.py``.

Targets of the issue: first image ≤ 0.3 s, full load no slower than SimpleITK,
scroll ≥ 60 frames/s, memory ≤ 1.3x raw. Page cache is warm for every reader
(the files were just written); run it on an otherwise idle machine.

    .venv/bin/python bench/viewer/run.py [--slices 600] [--size 512] [--json out.json] [--keep DIR]
    .venv/bin/python bench/viewer/run.py --codecs-only [--codec-slices 200] [--repeat 5] [--keep DIR]

Compressed series (issue 24 item 1): JPEG-LS, JPEG 2000, RLE and lossless JPEG (SV1) series of
``--codec-slices`` slices, each loaded by Hilum (auto executor) and by SimpleITK alternately, with
the ratio and Hilum's first image (preview) time; both volumes are checked equal.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pyside_drops_none_refs() -> bool:
    """PySide6 6.12.0 on Python 3.11 decrements None/True/False on every void call (a refcount bug
    that aborts the process after some 10^4 calls); 6.11.3 does not. True when this build has it."""
    from PySide6.QtCore import QObject

    o = QObject()
    before = sys.getrefcount(None)
    for _ in range(200):
        o.setObjectName("x")
    return sys.getrefcount(None) < before - 100


def median_time(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def memory_child(listing: str) -> int:
    """Resident-set growth of loading one series (and of SimpleITK reading it) in this fresh process."""
    paths = Path(listing).read_text().split("\n")
    from hilum.dicom.stack_load import load_series_sync

    gc.collect()
    before = rss_bytes()
    vol = load_series_sync(paths, executor="thread", header_workers="serial")
    gc.collect()
    grown = rss_bytes() - before
    nbytes = vol.nbytes
    del vol
    gc.collect()
    import SimpleITK as sitk

    b2 = rss_bytes()
    r = sitk.ImageSeriesReader()
    r.SetFileNames(paths)
    img = r.Execute()
    sitk_grown = rss_bytes() - b2
    del img
    print(json.dumps({"grown": grown, "volume": nbytes, "sitk": sitk_grown}))
    return 0


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-child":
        return memory_child(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=600)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--codec-slices", type=int, default=200, help="slices of each compressed series (0: skip)")
    ap.add_argument("--codecs-only", action="store_true", help="only the compressed series (issue 24 item 1)")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--keep", help="work in this folder and keep it (reuses a generated archive)")
    args = ap.parse_args()

    from hilum.archive import Archive
    from hilum.dicom.generator import write_ct_set
    from hilum.dicom.stack_load import load_series, load_series_sync

    try:  # the caller owns the decoder pool and hands it to each load (issue 14)
        from hilum.dicom.stack_load import decoder_pool

        pool = decoder_pool()
        pool_kw: dict[str, object] = {"pool": pool}
        shutdown_pool = pool.shutdown
    except ImportError:  # the code before issue 14 (PYTHONPATH=<old checkout>/app): dicom/ owned a global pool
        from hilum.dicom.stack_load import _process_pool, shutdown_process_pool

        pool, pool_kw, shutdown_pool = _process_pool(), {}, shutdown_process_pool

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hilum-bench-viewer-"))
    root.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"slices": args.slices, "size": args.size, "cpus": os.cpu_count()}
    try:
        if args.codecs_only:
            list(pool.map(abs, range(8)))  # start the worker processes once, as the app does
            results["compressed"] = compressed_loads(root, args, pool_kw)
            shutdown_pool()
            report_compressed(results)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
            return 0
        src = root / "src"
        data = root / "data"
        archive = Archive(data)
        if not archive.count("IMAGE", {}):
            t = time.perf_counter()
            files = write_ct_set(src, args.slices, rows=args.size, columns=args.size, series_size=args.slices,
                                 patients=1)  # fmt: skip
            print(f"generated {len(files)} files in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            t = time.perf_counter()
            res = archive.ingest_many(files)
            assert all(r.ok for r in res), [r.reason for r in res if not r.ok][:3]
            print(f"ingested in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        series_uid = archive.query("SERIES", {})[0]["SeriesInstanceUID"]
        study_uid = archive.query("SERIES", {})[0]["StudyInstanceUID"]
        rows = archive.instances(series_uid=series_uid)
        rows.sort(key=lambda r: r.get("InstanceNumber") or 0)
        paths = [str(r["path"]) for r in rows]
        raw = args.slices * args.size * args.size * 2
        results["raw_volume_mb"] = raw / 2**20
        for p in paths:  # warm the page cache equally for every reader
            with open(p, "rb") as fh:
                while fh.read(1 << 20):
                    pass

        # ---------------------------------------------------------- headless loader
        list(pool.map(abs, range(8)))  # start the worker processes once, as the app does
        loads: dict[str, float] = {}
        for ex in ("serial", "thread", "process"):
            t, _ = median_time(
                lambda ex=ex: load_series_sync(paths, executor=ex, header_workers="serial", **pool_kw), args.repeat
            )
            loads[f"{ex} (headers serial)"] = t
        t, _ = median_time(
            lambda: load_series_sync(paths, executor="thread", header_workers="process", **pool_kw), args.repeat
        )
        loads["thread (headers in processes)"] = t
        t, _ = median_time(lambda: load_series_sync(paths, **pool_kw), args.repeat)
        loads["auto"] = t
        results["load_s"] = loads
        # preview (first image, headless): time to the preview callback + its 8-bit rendering
        firsts = []
        for _ in range(args.repeat):
            box: dict[str, float] = {}
            t0 = time.perf_counter()

            def on_preview(v, t0=t0, box=box):
                f = v.stack.frames[0]
                f.pipeline.apply(v.data[0])
                box["t"] = time.perf_counter() - t0

            h = load_series(paths, on_preview=on_preview, **pool_kw)
            h.wait()
            firsts.append(box["t"])
        results["first_image_headless_s"] = statistics.median(firsts)

        # ---------------------------------------------------------- SimpleITK
        import SimpleITK as sitk

        def sitk_given() -> object:
            r = sitk.ImageSeriesReader()
            r.SetFileNames(paths)
            return r.Execute()

        def sitk_sorted() -> object:
            names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(src), series_uid, False, True)
            r = sitk.ImageSeriesReader()
            r.SetFileNames(names)
            return r.Execute()

        t_given, img = median_time(sitk_given, args.repeat)
        t_sorted, _ = median_time(sitk_sorted, args.repeat) if src.is_dir() else (float("nan"), None)
        results["sitk_s"] = {"files given": t_given, "with GDCM sort": t_sorted}
        results["sitk_pixel_type"] = img.GetPixelIDTypeAsString()
        del img

        # ---------------------------------------------------------- memory (in a fresh process)
        import subprocess

        listing = root / "paths.txt"
        listing.write_text("\n".join(paths))
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(listing)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
        mem = json.loads(out.strip().splitlines()[-1])
        results["memory"] = {
            "rss_growth_mb": mem["grown"] / 2**20,
            "volume_mb": mem["volume"] / 2**20,
            "ratio_to_raw": mem["grown"] / raw,
            "sitk_rss_growth_mb": mem["sitk"] / 2**20,
        }
        vol = load_series_sync(paths, **pool_kw)

        # ---------------------------------------------------------- scroll: pipeline only
        f0 = vol.stack.frames[0]
        t = time.perf_counter()
        for k in range(len(vol)):
            vol.stack.frames[k].pipeline.apply(vol.data[k])
        results["scroll_pipeline_fps"] = len(vol) / (time.perf_counter() - t)
        del f0

        # ---------------------------------------------------------- GUI: first image, full load, scroll
        from PySide6.QtWidgets import QApplication

        from hilum.ui.viewer.viewer_widget import StudyViewer

        app = QApplication.instance() or QApplication([])
        gui_first, gui_full, scroll = [], [], {}
        if pyside_drops_none_refs():
            print("PySide6 6.12.0 refcount bug on this Python: GUI figures skipped (install "
                  "PySide6-Essentials<6.12 or use Python >= 3.12)", file=sys.stderr)  # fmt: skip
        for rep in range(0 if pyside_drops_none_refs() else args.repeat):
            viewer = StudyViewer(archive, study_uid, data_dir=data, **pool_kw)  # as the workstation opens it
            viewer.resize(1100, 900)
            viewer.show()
            app.processEvents()
            canvas = viewer.viewport_widget(0).canvas
            done = {}
            viewer.loadFinished.connect(lambda _uid, done=done: done.setdefault("t", time.perf_counter()))
            start_paints = canvas.image_paint_count
            t0 = time.perf_counter()
            viewer.open()
            t_first = None
            while "t" not in done and time.perf_counter() - t0 < 120:
                app.processEvents()
                if t_first is None and canvas.image_paint_count > start_paints:
                    t_first = time.perf_counter() - t0
                time.sleep(0.0005)
            app.processEvents()
            gui_first.append(t_first if t_first is not None else float("nan"))
            gui_full.append(done.get("t", float("nan")) - t0)
            if rep == 0:
                vp = viewer.active_viewport()
                for size in (512, 1024):
                    viewer.resize(size + 160, size + 80)
                    app.processEvents()
                    canvas.resize(size, size)
                    n0 = canvas.image_paint_count
                    t = time.perf_counter()
                    for k in range(vp.stack_size):
                        vp.set_index(k)
                        canvas.repaint()
                    dt = time.perf_counter() - t
                    assert canvas.image_paint_count - n0 >= vp.stack_size
                    scroll[f"{size}x{size} canvas"] = vp.stack_size / dt
            viewer.close()
            viewer.deleteLater()
            app.processEvents()
        results["gui_first_image_s"] = statistics.median(gui_first) if gui_first else float("nan")
        results["gui_full_load_s"] = statistics.median(gui_full) if gui_full else float("nan")
        results["scroll_widget_fps"] = scroll

        # ---------------------------------------------------------- the loaded stack handed to the MPR (after the GUI:
        # its memory churn must not sway the figures above)
        try:  # the viewer's own order, one int16 pass per slice (issue 14)
            from hilum.dicom.volume import volume_from_series as to_mpr
        except ImportError:  # before: the viewer hook converted to float64 planes and sorted again
            from hilum.ui.mpr.viewer_hook import volume_from_series_volume as to_mpr
        t, mpr_volume = median_time(lambda: to_mpr(vol), args.repeat)
        results["mpr_from_viewer_s"] = t
        del mpr_volume

        if args.codec_slices:
            results["compressed"] = compressed_loads(root, args, pool_kw)
        shutdown_pool()
        archive.close()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


CODEC_SYNTAXES = ("jpeg-ls", "j2k", "rle", "jpeg-lossless")
"""The compressed series of issue 24 item 1; ``jpeg-lossless`` is Process 14 Selection Value 1
(1.2.840.10008.1.2.4.70), made by DCMTK's ``dcmcjpeg +e1`` (pydicom cannot encode it)."""


def codec_series(root: Path, syntax: str, slices: int, size: int) -> list[str]:
    """The generated CT series in *syntax* (reused from *root* when there)."""
    from hilum.dicom.generator import write_ct_set

    d = root / f"codec-{syntax}-{slices}-{size}"
    files = sorted(str(p) for p in d.rglob("*.dcm")) if d.is_dir() else []
    if files:
        return files
    if syntax != "jpeg-lossless":
        return [str(p) for p in write_ct_set(d, slices, rows=size, columns=size, series_size=slices, patients=1,
                                             syntax=syntax)]  # fmt: skip
    import subprocess

    native = root / f"codec-explicit-{slices}-{size}"
    sources = codec_series(root, "explicit", slices, size)
    out = []
    for src in sources:
        dst = d / Path(src).relative_to(native)
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["dcmcjpeg", "+e1", src, str(dst)], check=True, capture_output=True)
        out.append(str(dst))
    return out


def compressed_loads(root: Path, args: argparse.Namespace, pool_kw: dict) -> dict:
    """Per syntax: Hilum's headless load (auto executor, the caller's pool), SimpleITK's
    ImageSeriesReader on the same files (runs alternate, medians), and the first image (preview)."""
    import numpy as np
    import SimpleITK as sitk

    from hilum.dicom.stack_load import load_series, load_series_sync

    out: dict[str, dict] = {}
    for syntax in CODEC_SYNTAXES:
        try:
            files = codec_series(root, syntax, args.codec_slices, args.size)
        except (OSError, subprocess_error()) as exc:
            print(f"cannot make the {syntax} series: {exc}", file=sys.stderr)
            continue
        for p in files:  # warm the page cache equally for every reader
            Path(p).read_bytes()

        def sitk_read(files=files) -> object:
            r = sitk.ImageSeriesReader()
            r.SetFileNames(files)
            return r.Execute()

        executor = ""

        def hilum_read(files=files) -> object:
            nonlocal executor
            h = load_series(files, **pool_kw)
            h.wait()
            if h.error is not None:
                raise h.error
            executor = h.executor
            return h.volume

        hilum_read()  # once untimed: the workers import the decoders
        th, ts, firsts = [], [], []
        for _ in range(args.repeat):
            th.append(median_time(hilum_read, 1)[0])
            try:
                ts.append(median_time(sitk_read, 1)[0])
            except RuntimeError as exc:  # GDCM may lack a codec
                print(f"SimpleITK cannot read {syntax}: {str(exc).splitlines()[0]}", file=sys.stderr)
                ts.append(float("nan"))
            box: dict[str, float] = {}
            t0 = time.perf_counter()

            def on_preview(v, t0=t0, box=box):
                v.stack.frames[0].pipeline.apply(v.data[0])
                box["t"] = time.perf_counter() - t0

            h = load_series(files, on_preview=on_preview, **pool_kw)
            h.wait()
            firsts.append(box["t"])
        vol = load_series_sync(files, **pool_kw)
        ref = sitk.GetArrayFromImage(sitk_read())  # modality values (HU), in the given file order
        hu = np.stack([vol.modality_values(k) for k in range(len(vol))])
        same = ref.shape == hu.shape and (np.array_equal(hu, ref) or np.array_equal(hu[::-1], ref))
        hilum_s, sitk_s = statistics.median(th), statistics.median(ts)
        out[syntax] = {"hilum_s": hilum_s, "sitk_s": sitk_s, "ratio": hilum_s / sitk_s,
                       "first_image_s": statistics.median(firsts), "executor": executor,
                       "hilum_all_s": th, "sitk_all_s": ts, "equal_to_sitk": same}  # fmt: skip
        if not same:
            print(f"{syntax}: Hilum's volume differs from SimpleITK's (order or values)", file=sys.stderr)
        del vol, ref
    return {"slices": args.codec_slices, "size": args.size, "repeat": args.repeat, "rows": out}


def subprocess_error() -> type[Exception]:
    import subprocess

    return subprocess.CalledProcessError


def report(r: dict) -> None:
    sitk_best = min(v for v in r["sitk_s"].values() if v == v)
    print(
        f"\nViewer benchmark: {r['slices']} x {r['size']}x{r['size']} CT (int16), {r['cpus']} CPUs, raw volume "
        f"{r['raw_volume_mb']:.0f} MB\n"
    )
    print(f"first image, GUI (open → painted)   {r['gui_first_image_s'] * 1000:7.0f} ms   (target ≤ 300 ms)")
    print(f"first image, headless preview       {r['first_image_headless_s'] * 1000:7.0f} ms")
    print(
        f"full load, GUI                      {r['gui_full_load_s']:7.2f} s    "
        f"SimpleITK/Hilum = {sitk_best / r['gui_full_load_s']:.2f}x"
    )
    for name, t in r["load_s"].items():
        print(f"full load, headless {name:<30} {t:7.2f} s    SimpleITK/Hilum = {sitk_best / t:.2f}x")
    for name, t in r["sitk_s"].items():
        print(f"SimpleITK ImageSeriesReader, {name:<20} {t:7.2f} s   ({r['sitk_pixel_type']})")
    print(f"MPR volume from the loaded stack    {r['mpr_from_viewer_s']:7.2f} s")
    print(f"scroll, pipeline only               {r['scroll_pipeline_fps']:7.0f} frames/s")
    for name, fps in r["scroll_widget_fps"].items():
        print(f"scroll, viewport repaint {name:<12}{fps:7.0f} frames/s (target ≥ 60)")
    m = r["memory"]
    print(
        f"memory per loaded series            {m['rss_growth_mb']:7.0f} MB = {m['ratio_to_raw']:.2f}x raw "
        f"(volume {m['volume_mb']:.0f} MB; target ≤ 1.3x); SimpleITK {m['sitk_rss_growth_mb']:.0f} MB"
    )
    report_compressed(r)


def report_compressed(r: dict) -> None:
    c = r.get("compressed")
    if not c:
        return
    print(f"\nCompressed series, {c['slices']} x {c['size']}x{c['size']} CT (int16), headless load with the "
          f"caller's process pool, median of {c['repeat']} (SimpleITK runs alternate with Hilum's):")  # fmt: skip
    print(f"{'syntax':<15}{'Hilum':>9}{'SimpleITK':>11}{'Hilum/SITK':>12}{'first image':>13}  decoded on")
    for syntax, row in c["rows"].items():
        print(f"{syntax:<15}{row['hilum_s']:8.2f}s{row['sitk_s']:10.2f}s{row['ratio']:11.2f}x"
              f"{row['first_image_s'] * 1000:10.0f} ms  {row['executor']}   (targets ≤ 1.0x, ≤ 100 ms)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
