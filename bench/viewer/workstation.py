"""Workstation benchmark: open a CT study the way a reader does, through the real main window.

Each try is a fresh process running what ``hilum gui`` runs
(:func:`hilum.ui.app.application`, :class:`hilum.ui.main_window.MainWindow`,
:func:`hilum.ui.app.install_viewer` with its decoder process pool, the DICOM
node on free ports unless ``--no-node``), then:

1. **open** — a double-click on the study's row in the study browser (the
   ``studyOpenRequested`` path): time to the first image painted in the
   viewport, and to the series fully loaded (``loadFinished``);
2. **MPR** — a click on the viewer's MPR button: time until the three planes
   are rendered (and the 3D pane of the MPR layout);
3. **3D** — the MPR window closed, a click on the 3D button: time until the
   first volume-rendered frame (a quick preview), and until the full-quality one.

A watchdog (a 10 ms precise ``QTimer`` on the GUI thread) records the longest
gap between its ticks in each phase: the worst event-loop stall a user could
feel (target: none over 100 ms); also for the first second after the window
shows (the background warm-up: VTK imported for the viewer, decoder processes
started). ``--why`` also samples the Python stacks of the GUI thread and of the
other threads whenever the GUI thread is more than 50 ms late and prints the
commonest per phase (what held the event loop, or the GIL). Each try starts
with no series thumbnails cached (a study opened for the first time); Hilum's
bytecode is compiled once before the tries (``--no-bytecode``: not).

In the same run, on the same files (page cache warm for every reader):
SimpleITK's ``ImageSeriesReader`` (GDCM, C++), and the headless loader the
viewer uses (:func:`hilum.dicom.stack_load.load_series_sync` with a warm
process pool: ``bench/viewer/run.py``'s path). Figures are medians over
``--repeat`` tries; the machine should otherwise be idle.

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python bench/viewer/workstation.py
        [--slices 60 600] [--repeat 3] [--platform xcb|offscreen] [--why] [--json out.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: _common
from _common import free_port  # noqa: E402

TICK_MS = 10
STALL_SAMPLE_S = 0.05


# ---------------------------------------------------------------------------------------------- child


class Watchdog:
    """Longest gap between ticks of a GUI-thread timer, per phase (and, with *why*, what ran)."""

    def __init__(self, why: bool) -> None:
        from PySide6.QtCore import QObject, Qt, QTimer

        self._holder = QObject()
        self.timer = QTimer(self._holder)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.last = time.perf_counter()
        self.worst = 0.0
        self.phase = ""
        self.stacks: dict[str, Counter[str]] = {}
        self._gui = threading.get_ident()
        self.timer.start()
        if why:
            threading.Thread(target=self._sample, name="bench-stall-sampler", daemon=True).start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.worst = max(self.worst, now - self.last)
        self.last = now

    def start(self, phase: str) -> None:
        self.phase = phase
        self.last = time.perf_counter()
        self.worst = 0.0

    def stop(self) -> float:
        """The worst gap of the phase, in ms (counting a gap still open now)."""
        self.worst = max(self.worst, time.perf_counter() - self.last)
        self.phase = ""
        return self.worst * 1000.0

    def _sample(self) -> None:
        """While the GUI thread is late: its stack, and (this thread got the GIL: someone had it) the
        other threads' stacks, marked ``[thread name]`` — what held the GIL or the event loop."""
        names = {}
        while True:
            time.sleep(0.01)
            phase = self.phase
            if phase and time.perf_counter() - self.last > STALL_SAMPLE_S + TICK_MS / 1000:
                counter = self.stacks.setdefault(phase, Counter())
                if len(names) != threading.active_count():
                    names = {t.ident: t.name for t in threading.enumerate()}
                for ident, frame in sys._current_frames().items():
                    if ident == threading.get_ident():
                        continue
                    stack = traceback.extract_stack(frame, limit=40)
                    ours = [f for f in stack if "/site-packages/" not in f.filename or f is stack[-1]]
                    text = " <- ".join(f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(ours[-6:]))
                    if ident == self._gui:
                        counter[f"[GUI] {text}"] += 1
                    elif not text.startswith(
                        ("thread.py", "threading.py", "queues.py", "connection.py", "selectors.py")
                    ):
                        counter[f"[{names.get(ident, '?')}] {text}"] += 1


def child(data_dir: str, study_uid: str, with_node: bool, why: bool, mpr: bool = True) -> dict[str, Any]:
    """One try, in this fresh process: start the workstation, open the study, MPR, 3D."""
    t_start = time.perf_counter()
    from PySide6.QtCore import QEvent, QEventLoop, QObject, Qt, QTimer
    from PySide6.QtTest import QTest

    from hilum.archive import Archive
    from hilum.config import load_config
    from hilum.ui.app import NodeRunner, application, install_viewer
    from hilum.ui.main_window import MainWindow

    app = application()
    # a study opened for the first time: no series thumbnails cached from an earlier try
    shutil.rmtree(Path(data_dir) / "cache" / "thumbnails", ignore_errors=True)
    cfg = load_config(data_dir)
    cfg.dicom_port, cfg.web_port, cfg.hl7_port = free_port(), free_port(), free_port()
    archive = Archive.from_config(cfg)
    window = MainWindow(cfg, archive)  # as hilum.ui.app.run_gui builds it
    controller = install_viewer(window)
    window.show()
    node = None
    if with_node:
        node = NodeRunner(cfg, archive, window)
        node.start()
    dog = Watchdog(why)
    dog.start("startup")  # the window is up: the pool warm-up and background imports run from here
    out: dict[str, Any] = {"platform": app.platformName()}

    def wait_until(cond: Any, timeout: float) -> bool:
        """Run the real event loop (``QEventLoop.exec``) until *cond()* holds."""
        if cond():
            return True
        loop = QEventLoop()
        poll = QTimer()
        poll.setInterval(2)
        poll.timeout.connect(lambda: loop.quit() if cond() else None)
        QTimer.singleShot(int(timeout * 1000), loop.quit)
        poll.start()
        loop.exec()
        poll.stop()
        return bool(cond())

    class PaintWatch(QObject):
        """The time of the first paint that drew an image (checked right after each paint)."""

        def __init__(self, canvas: Any, counter: str) -> None:
            super().__init__()
            self.canvas, self.counter, self.at = canvas, counter, 0.0
            canvas.installEventFilter(self)

        def eventFilter(self, obj: Any, event: Any) -> bool:  # noqa: N802
            if event.type() == QEvent.Type.Paint and not self.at:
                QTimer.singleShot(0, self._check)
            return False

        def _check(self) -> None:
            if not self.at and getattr(self.canvas, self.counter, 0) > 0:
                self.at = time.perf_counter()

    try:
        browser = window.browser
        model = browser.model
        assert wait_until(lambda: model.find(study_uid) >= 0, 60), "the study is not in the browser"
        out["startup_s"] = time.perf_counter() - t_start
        # a reader looks at the list for a moment; the pool warms up meanwhile (as in hilum gui)
        wait_until(lambda: False, 1.0)
        out["stall_startup_ms"] = dog.stop()
        row = model.find(study_uid)
        table = browser.table
        pos = table.visualRect(model.index(row, 1)).center()
        QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
        wait_until(lambda: False, 0.3)

        # ------------------------------------------------------------------ open → first image → loaded
        finished: dict[str, float] = {}
        watches: list[PaintWatch] = []

        def hook_viewer() -> Any:
            v = controller.viewer_for(study_uid)
            if v is not None and not watches:
                v.loadFinished.connect(lambda _uid: finished.setdefault("t", time.perf_counter()))
                watches.append(PaintWatch(v.viewport_widget(0).canvas, "image_paint_count"))
            return v

        window.studyOpenRequested.connect(lambda _uid: hook_viewer(), Qt.ConnectionType.QueuedConnection)
        dog.start("open+load")
        t0 = time.perf_counter()
        QTest.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
        out["double_click_returned_s"] = time.perf_counter() - t0
        viewer = hook_viewer()
        assert viewer is not None, "the double-click opened no viewer"
        ok = wait_until(lambda: "t" in finished, 300)
        wait_until(lambda: bool(watches[0].at), 5)
        wait_until(lambda: False, 0.05)  # whatever the last signal queued
        out["stall_open_load_ms"] = dog.stop()
        out["first_image_s"] = watches[0].at - t0 if watches[0].at else float("nan")
        out["full_load_s"] = finished["t"] - t0 if ok else float("nan")
        handle = next(iter(viewer._loads.values()), None)
        if handle is not None:
            out["loader_timings_s"] = dict(handle.timings)
            out["executor"] = getattr(handle, "executor", "")
        out["slices"] = len(viewer.active_viewport().volume or ())

        # ------------------------------------------------------------------ MPR, then 3D
        def click_action(name: str) -> Any:
            act = viewer.actions_by_name[name]
            button = viewer.toolbar.widgetForAction(act)
            before = list(getattr(viewer, "_mpr_windows", []))
            if button is not None and button.isVisible():
                QTest.mouseClick(button, Qt.MouseButton.LeftButton)
            else:  # behind the toolbar's overflow: the same action from its menu
                act.trigger()
            after = [w for w in getattr(viewer, "_mpr_windows", []) if w not in before]
            return after[-1] if after else None

        def rendered(widget: Any, views: list[str], volume: bool) -> bool:
            canvases = [widget.slice_canvases.get(v) for v in views]
            if volume:
                canvases.append(widget.volume_canvas)
            return all(c is not None and c.render_count > 0 for c in canvases)

        for name, phase, views, volume in (
            ("mpr", "mpr", ["axial", "coronal", "sagittal"], False),
            ("volume_3d", "3d", [], True),
        )[: 2 if mpr else 0]:
            wait_until(lambda: False, 0.5)
            dog.start(phase)
            t0 = time.perf_counter()
            widget = click_action(name)
            if widget is None:
                out[f"{phase}_s"] = float("nan")
                dog.stop()
                continue
            got = wait_until(lambda w=widget, v=views, vol=volume: rendered(w, v, vol), 300)
            out[f"{phase}_s"] = time.perf_counter() - t0 if got else float("nan")
            if phase == "mpr":  # the MPR layout has a 3D pane as well: until it shows too
                wait_until(lambda w=widget: not w.with_3d or (w.volume_canvas is not None  # it may come later
                                                            and w.volume_canvas.render_count > 0), 300)  # fmt: skip
                out["mpr_with_3d_pane_s"] = time.perf_counter() - t0
            if phase == "3d":  # the first frame may be a quick preview: until the full-quality one
                wait_until(lambda w=widget: getattr(w.volume_canvas, "settled", lambda: True)(), 300)
                out["3d_full_s"] = time.perf_counter() - t0
            wait_until(lambda: False, 0.05)
            out[f"stall_{phase}_ms"] = dog.stop()
            widget.close()  # the window's close button (the viewer keeps the widget, hidden)
        out["why"] = {k: v.most_common(6) for k, v in dog.stacks.items()}
    finally:
        window.close()
        if node is not None:
            node.stop()
        window.deleteLater()
        app.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        archive.close()
    return out


# ---------------------------------------------------------------------------------------------- parent


def _warm(paths: list[str]) -> None:
    for p in paths:
        with open(p, "rb") as fh:
            while fh.read(1 << 20):
                pass


def _median(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def prepare(root: Path, slices: int, size: int) -> tuple[Path, str, list[str]]:
    """A data folder holding one generated CT study of *slices* slices: (folder, study UID, files)."""
    from hilum.archive import Archive
    from hilum.dicom.generator import write_ct_set

    data = root / f"data-{slices}"
    archive = Archive(data)
    try:
        if not archive.count("IMAGE", {}):
            t = time.perf_counter()
            files = write_ct_set(root / f"src-{slices}", slices, rows=size, columns=size, series_size=slices,
                                 patients=1, seed=slices)  # fmt: skip
            res = archive.ingest_many(files)
            assert all(r.ok for r in res), [r.reason for r in res if not r.ok][:3]
            shutil.rmtree(root / f"src-{slices}", ignore_errors=True)
            print(f"{slices} slices generated and ingested in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        series = archive.query("SERIES", {})[0]
        rows = archive.instances(series_uid=series["SeriesInstanceUID"])
        rows.sort(key=lambda r: r.get("InstanceNumber") or 0)
        return data, str(series["StudyInstanceUID"]), [str(r["path"]) for r in rows]
    finally:
        archive.close()


def main() -> int:
    if len(sys.argv) >= 2 and sys.argv[1] == "--child":
        data_dir, study_uid, node, why = sys.argv[2], sys.argv[3], sys.argv[4] == "node", sys.argv[5] == "why"
        print("RESULT " + json.dumps(child(data_dir, study_uid, node, why)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, nargs="+", default=[60, 600])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--platform", choices=["xcb", "offscreen"],
                    help="Qt platform (default: xcb when $DISPLAY is set, else offscreen)")  # fmt: skip
    ap.add_argument("--no-node", action="store_true", help="do not start the DICOM node (hilum gui --no-node)")
    ap.add_argument("--why", action="store_true", help="sample the GUI thread's stack during stalls")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="no bytecode of Hilum's modules: every import compiles their sources, as in a checkout "
                    "run with $PYTHONDONTWRITEBYTECODE (an installed Hilum has its bytecode; by default it is "
                    "compiled once before the tries)")  # fmt: skip
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--keep", help="work in this folder and keep it (reuses the generated archives)")
    args = ap.parse_args()
    platform = args.platform or ("xcb" if os.environ.get("DISPLAY") else "offscreen")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hilum-bench-ws-"))
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, QT_QPA_PLATFORM=platform, PYTHONFAULTHANDLER="1")
    import hilum

    package = Path(hilum.__file__).parent
    if not args.no_bytecode:  # as installed: pip compiles a package's bytecode (a compile holds the GIL)
        import compileall

        env.pop("PYTHONDONTWRITEBYTECODE", None)
        sys.dont_write_bytecode = False
        compileall.compile_dir(str(package), quiet=1)
    else:  # every import of Hilum's own modules compiles its source (ignored folders, made by Python)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        for cache in package.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
    results: dict[str, Any] = {"platform": platform, "cpus": os.cpu_count(), "size": args.size, "series": {},
                               "bytecode": not args.no_bytecode}  # fmt: skip
    try:
        import SimpleITK as sitk

        from hilum.dicom.stack_load import decoder_pool, load_series_sync

        pool = decoder_pool()
        list(pool.map(abs, range(8)))
        for n in args.slices:
            data, study_uid, paths = prepare(root, n, args.size)
            _warm(paths)

            def sitk_read(paths: list[str] = paths) -> float:
                t = time.perf_counter()
                r = sitk.ImageSeriesReader()
                r.SetFileNames(paths)
                r.Execute()
                return time.perf_counter() - t

            def headless(paths: list[str] = paths) -> float:
                t = time.perf_counter()
                load_series_sync(paths, pool=pool)
                return time.perf_counter() - t

            tries: list[dict[str, Any]] = []
            sitk_t, headless_t = [], []
            for rep in range(args.repeat):
                sitk_t.append(sitk_read())
                headless_t.append(headless())
                cmd = [sys.executable, __file__, "--child", str(data), study_uid,
                       "no-node" if args.no_node else "node", "why" if args.why else "-"]  # fmt: skip
                # output to files, and wait for the process (not for its pipes: a worker process left
                # behind by a crashed try would hold them open)
                with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
                    code = subprocess.Popen(cmd, env=env, stdout=out, stderr=err).wait(timeout=900)
                    out.seek(0)
                    err.seek(0)
                    stdout, stderr = out.read(), err.read()
                line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    print(stdout[-3000:], stderr[-6000:], file=sys.stderr)
                    raise SystemExit(f"try {rep + 1} with {n} slices failed (exit {code})")
                got = json.loads(line[7:])
                tries.append(got)
                print(f"{n} slices, try {rep + 1}: " + ", ".join(
                    f"{k} {v:.3f}" for k, v in got.items() if isinstance(v, float)), file=sys.stderr)  # fmt: skip
            keys = [k for k, v in tries[0].items() if isinstance(v, float)]
            figures = {k: _median([t.get(k, float("nan")) for t in tries]) for k in keys}
            figures["worst_of_tries"] = {k: max(t.get(k, 0.0) for t in tries) for k in keys if k.startswith("stall")}
            figures["sitk_s"] = _median(sitk_t)
            figures["headless_s"] = _median(headless_t)
            figures["executor"] = tries[0].get("executor", "")
            figures["why"] = [t.get("why", {}) for t in tries] if args.why else []
            results["series"][str(n)] = figures
        pool.shutdown()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(results, args.repeat)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def report(r: dict[str, Any], repeat: int) -> None:
    print(f"\nWorkstation benchmark: {r['size']}x{r['size']} CT through the real main window, Qt platform "
          f"{r['platform']}, {r['cpus']} CPUs, Hilum's bytecode {'cached' if r['bytecode'] else 'NOT cached'}; "
          f"medians of {repeat} fresh processes (watchdog tick {TICK_MS} ms)\n")  # fmt: skip
    for n, f in r["series"].items():
        print(f"{n} slices (executor {f['executor'] or '?'}):")
        print(f"  open → first image painted        {f['first_image_s'] * 1000:8.0f} ms")
        print(f"  open → fully loaded               {f['full_load_s']:8.2f} s    "
              f"SimpleITK/workstation = {f['sitk_s'] / f['full_load_s']:.2f}x")  # fmt: skip
        print(f"  SimpleITK ImageSeriesReader       {f['sitk_s']:8.2f} s")
        print(f"  headless loader (bench/viewer)    {f['headless_s']:8.2f} s    "
              f"workstation/headless = {f['full_load_s'] / f['headless_s']:.1f}x")  # fmt: skip
        print(f"  MPR: click → three planes         {f.get('mpr_s', float('nan')):8.2f} s    "
              f"(with the layout's 3D pane {f.get('mpr_with_3d_pane_s', float('nan')):.2f} s)")  # fmt: skip
        print(f"  3D: click → first frame           {f.get('3d_s', float('nan')):8.2f} s    "
              f"(full quality {f.get('3d_full_s', float('nan')):.2f} s)")  # fmt: skip
        worst = f["worst_of_tries"]
        for key, label in (("stall_open_load_ms", "opening + loading"), ("stall_mpr_ms", "opening MPR"),
                           ("stall_3d_ms", "opening 3D"), ("stall_startup_ms", "the first second")):  # fmt: skip
            if key in f:
                print(
                    f"  worst event-loop stall, {label:<18}{f[key]:6.0f} ms median, {worst[key]:6.0f} ms worst try"
                    + ("   (target ≤ 100 ms)" if key != "stall_startup_ms" else "   (window shown → 1 s idle)")
                )
        for i, why in enumerate(f["why"]):
            for phase, stacks in why.items():
                for text, count in stacks[:2]:
                    print(f"    try {i + 1} {phase}: {count} x 10 ms in {text}")


if __name__ == "__main__":
    sys.exit(main())
