"""AI plugin benchmark (issue 19): the example plugins on a 512x512x300 generated CT, CPU.

For each installed example plugin (``hilum-lung-seg``, ``hilum-body-masks``), on one generated
chest CT (``hilum.dicom.generator``, 512 x 512 x ``--slices``, 0.70 mm pixels, 1.25 mm slices):

* the host's run (``hilum.ai.run``, in process, ``--threads`` onnxruntime threads): total time and
  its preprocessing / inference / postprocessing shares (``PluginResult.timings``), median of
  ``--repeat`` runs;
* the same model run by plain onnxruntime on the same input in the same process, right after: the
  host's preprocessing done once beforehand outside the clock, then the bare ``session.run`` over
  the same batches (same batch size, same threads).  ``host / plain`` is the host's overhead (target
  <= 1.2x); the child-process mode (``isolate=True``: spawn, pickling the volume) is measured once;
* peak memory of one host run: tracemalloc's peak (Python and numpy allocations) and the peak
  resident set (VmHWM, reset before the run through ``/proc/self/clear_refs``) above the resident
  set before it, beside the size of the volume in float32;
* the viewer's scroll rate while a plugin runs: the real ``StudyViewer`` (the workstation's viewer
  widget) on the same series from an archive, scrolled by ``Down`` key presses sent to its canvas,
  frames painted per second, first idle, then while the plugin runs in a worker thread with the
  host's default thread count (``[ai] threads``: cores - 1), then in a child process.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python bench/ai/run.py [--slices 300] [--repeat 3]
        [--threads 2] [--plugins hilum-lung-seg,hilum-body-masks] [--no-gui] [--json out.json]

The plugins must be installed (``pip install -e plugins/<name>``).  Runs on an otherwise idle machine
give the figures of ``bench/ai/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

PLUGINS = ("hilum-lung-seg", "hilum-body-masks")


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hwm() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def make_series(slices: int):  # type: ignore[no-untyped-def]
    from hilum.dicom.generator import DOE, Phantom, generate_ct_series, make_study

    study = make_study(DOE, accession="BENCHAI", seed=2026)
    phantom = Phantom().with_lung_base(-120.0)
    return generate_ct_series(study, slices=slices, slice_thickness=1.25, phantom=phantom, seed=7)


def plain_onnxruntime(plugin: Any, series: Any, threads: int) -> tuple[float, float]:
    """(seconds of the bare session.run over the batches, seconds of the preparation done outside the clock)."""
    import onnxruntime as ort

    from hilum.ai.host import _normalise, providers

    m = plugin.manifest
    t = time.perf_counter()
    x = _normalise(series.values, m, (0.0, 1.0))[:, None]
    prep = time.perf_counter() - t
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(m.model_path(m.models[0])), sess_options=opts, providers=providers())
    spec = m.models[0]
    b = m.input.batch
    t = time.perf_counter()
    for s in range(0, x.shape[0], b):
        sess.run(list(spec.outputs), {spec.input: x[s : s + b]})
    return time.perf_counter() - t, prep


def bench_plugin(name: str, series: Any, args: argparse.Namespace) -> dict[str, Any]:
    from hilum.ai import load, run

    plugin = load(name)
    run(plugin, series, threads=args.threads)  # warm: session made, pages touched
    host, plain, pre, inf, post = [], [], [], [], []
    for _ in range(args.repeat):
        gc.collect()
        t = time.perf_counter()
        res = run(plugin, series, threads=args.threads)
        host.append(time.perf_counter() - t)
        pre.append(res.timings.pre)
        inf.append(res.timings.inference)
        post.append(res.timings.post)
        del res
        gc.collect()
        plain.append(plain_onnxruntime(plugin, series, args.threads)[0])
    out: dict[str, Any] = {
        "host_s": statistics.median(host),
        "plain_onnxruntime_s": statistics.median(plain),
        "pre_s": statistics.median(pre),
        "inference_s": statistics.median(inf),
        "post_s": statistics.median(post),
        "runs": {"host": host, "plain": plain},
    }
    out["overhead_ratio"] = out["host_s"] / out["plain_onnxruntime_s"]
    out["pre_share"] = out["pre_s"] / out["host_s"]
    out["post_share"] = out["post_s"] / out["host_s"]
    gc.collect()
    t = time.perf_counter()
    run(plugin, series, threads=args.threads, isolate=True)
    out["isolated_s"] = time.perf_counter() - t
    gc.collect()
    # memory of one run
    base = rss()
    reset_hwm()
    tracemalloc.start()
    res = run(plugin, series, threads=args.threads)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["tracemalloc_peak_mb"] = peak / 2**20
    out["rss_peak_above_start_mb"] = (hwm() - base) / 2**20
    out["volume_float32_mb"] = series.values.size * 4 / 2**20
    out["findings"] = [(f.label, dict(f.measurements)) for f in res.findings]
    return out


def scroll_while(viewer: Any, app: Any, seconds: float, busy: threading.Event | None) -> float:
    """Frames painted per second while Down keys go to the canvas for ``seconds`` (or until ``busy`` ends)."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    vp = viewer.active_viewport()
    canvas = viewer.viewport_widget(0).canvas
    viewer.window().activateWindow()  # Xvfb without a window manager: window shortcuts need an active window
    t0 = time.perf_counter()
    while not viewer.window().isActiveWindow() and time.perf_counter() - t0 < 5:
        app.processEvents()
        time.sleep(0.01)
    canvas.setFocus()
    n0 = canvas.image_paint_count
    t0 = time.perf_counter()
    keys = 0
    while time.perf_counter() - t0 < seconds and (busy is None or not busy.is_set()):
        if vp.index == 0:  # Down goes towards the feet (index 0); Home is the head (the top)
            QTest.keyClick(canvas, Qt.Key.Key_Home)
        QTest.keyClick(canvas, Qt.Key.Key_Down)
        keys += 1
        app.processEvents()
    dt = time.perf_counter() - t0
    if os.environ.get("HILUM_BENCH_DEBUG"):
        print(f"keys {keys} paints {canvas.image_paint_count - n0} index {vp.index} in {dt:.2f} s", file=sys.stderr)
    return (canvas.image_paint_count - n0) / dt


def bench_scroll(datasets: list[Any], series: Any, names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    from PySide6.QtWidgets import QApplication

    from hilum.ai import load, run
    from hilum.ai.host import default_threads
    from hilum.archive import Archive
    from hilum.ui.viewer.viewer_widget import StudyViewer

    app = QApplication.instance() or QApplication([])
    out: dict[str, Any] = {"platform": app.platformName(), "default_threads": default_threads()}
    with tempfile.TemporaryDirectory(prefix="hilum-bench-ai-") as tmp:
        root = Path(tmp)
        files = []
        for i, ds in enumerate(datasets):
            p = root / "in" / f"{i:04d}.dcm"
            p.parent.mkdir(exist_ok=True)
            ds.save_as(p, enforce_file_format=True)
            files.append(p)
        archive = Archive(root / "data")
        try:
            archive.ingest_many(files)
            viewer = StudyViewer(archive, str(datasets[0].StudyInstanceUID), data_dir=root / "data", executor="thread")
            viewer.resize(1100, 900)
            viewer.show()
            viewer.activateWindow()
            app.processEvents()
            done = threading.Event()
            viewer.loadFinished.connect(lambda _uid: done.set())
            viewer.open()
            t0 = time.perf_counter()
            while not done.is_set() and time.perf_counter() - t0 < 300:
                app.processEvents()
                time.sleep(0.002)
            scroll_while(viewer, app, 1.0, None)  # warm-up: the first paints after loading are slow
            out["idle_fps"] = scroll_while(viewer, app, args.scroll_seconds, None)
            for name in names:
                plugin = load(name)
                for mode in ("thread", "child"):
                    finished = threading.Event()
                    box: dict[str, Any] = {}

                    def work(
                        plugin: Any = plugin,
                        mode: str = mode,
                        box: dict[str, Any] = box,
                        finished: threading.Event = finished,
                    ) -> None:
                        t = time.perf_counter()
                        try:
                            run(plugin, series, isolate=(mode == "child"))
                        except Exception as exc:  # noqa: BLE001 - reported in the figures
                            box["error"] = repr(exc)
                        box["s"] = time.perf_counter() - t
                        finished.set()

                    th = threading.Thread(target=work, daemon=True)
                    th.start()
                    time.sleep(0.3 if mode == "thread" else 2.0)  # past the start (spawn takes ~1-2 s)
                    fps = scroll_while(viewer, app, 600.0, finished)
                    th.join()
                    out[f"{name} ({mode})"] = {"fps": fps, "run_s": box.get("s"), "error": box.get("error")}
            viewer.close()
            viewer.deleteLater()
            app.processEvents()
        finally:
            archive.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads for the timed runs")
    p.add_argument("--plugins", default=",".join(PLUGINS))
    p.add_argument("--no-gui", action="store_true", help="skip the viewer scroll part")
    p.add_argument("--scroll-seconds", type=float, default=5.0, help="length of the idle scroll measurement")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    names = [n for n in args.plugins.split(",") if n]

    import onnxruntime as ort

    from hilum.ai import SeriesInput

    results: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "load_average_start": os.getloadavg(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "slices": args.slices,
        "threads": args.threads,
    }
    t = time.perf_counter()
    datasets = make_series(args.slices)
    results["generate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    series = SeriesInput.from_datasets(datasets)
    results["series_input_s"] = time.perf_counter() - t
    results["shape"] = series.shape
    for name in names:
        print(f"{name}: ...", file=sys.stderr, flush=True)
        results[name] = bench_plugin(name, series, args)
        print(json.dumps({name: {k: v for k, v in results[name].items() if k != "runs"}}, default=str), file=sys.stderr)
    if not args.no_gui:
        results["scroll"] = bench_scroll(datasets, series, names, args)
    results["load_average_end"] = os.getloadavg()
    report(results, names)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


def report(r: dict[str, Any], names: list[str]) -> None:
    print(f"CT {r['shape']} (CPU x{r['cpu_count']}, onnxruntime {r['onnxruntime']}, {r['threads']} threads); "
          f"load average {r['load_average_start'][0]:.1f} -> {r['load_average_end'][0]:.1f}")  # fmt: skip
    for n in names:
        x = r[n]
        print(f"{n}:")
        print(
            f"  host run (median)         {x['host_s']:8.2f} s  (pre {x['pre_share']:.0%}, inference {x['inference_s']:.2f} s, post {x['post_share']:.0%})"
        )
        print(
            f"  plain onnxruntime         {x['plain_onnxruntime_s']:8.2f} s  -> host overhead {x['overhead_ratio']:.2f}x (target <= 1.2x)"
        )
        print(f"  child process (isolate)   {x['isolated_s']:8.2f} s")
        print(
            f"  peak memory               tracemalloc {x['tracemalloc_peak_mb']:.0f} MB, RSS +{x['rss_peak_above_start_mb']:.0f} MB (volume float32 {x['volume_float32_mb']:.0f} MB)"
        )
    s = r.get("scroll")
    if s:
        print(f"viewer scroll ({s['platform']}): idle {s['idle_fps']:.0f} frames/s")
        for k, v in s.items():
            if isinstance(v, dict):
                print(f"  while {k:<32} {v['fps']:6.0f} frames/s (run {v['run_s']:.1f} s) {v['error'] or ''}")


if __name__ == "__main__":
    raise SystemExit(main())
