"""Hanging protocols at open: their cost, and whether the first image shown is already the protocol's.

The real workstation window (:class:`hilum.ui.main_window.MainWindow` with the viewer installed as
``hilum gui`` does, decoder process pool included) on a data folder holding a generated chest CT
with four series — 1: axial (``--rows`` x ``--rows`` x ``--slices``), 2: coronal and 3: sagittal
reformats, 4: a localizer — and each try double-clicks the study's row in the study browser and
turns the event loop until every viewport of the layout shows its series whole; the tab is closed
between tries. Three ways, interleaved try by try (same files, same warm page cache):

* ``none`` — no protocol at all (``load_protocols`` answers nothing): what ``open()`` did before
  issue 15, the first series 1x1;
* ``ct-default`` — the shipped protocols without the chest one: the CT default hangs the first
  axial series 1x1 (the same image as ``none``, so the difference is the protocol's own cost:
  files read, scored, one header per series read for the plane);
* ``shipped`` — the shipped protocols: "CT chest with reformats" hangs 2x2 (four series load).

Printed per way (medians): ``open()`` → protocol chosen (``timings["hanging"]``: files, scoring,
headers, placement), → layout set and series assigned (``timings["hung"]``), → first image
(``timings["first_image"]``, the first preview delivered), → every viewport's series loaded; and
whether the first image each viewport's canvas PAINTED was the protocol's series (an application
event filter sees each canvas's Paint event before the canvas paints it).

    .venv/bin/python bench/priors/hanging.py [--repeat 7] [--rows 256] [--slices 100] [--platform offscreen|xcb]

The machine should otherwise be idle. Timings are never asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def write_chest(out: Path, rows: int, slices: int) -> None:
    from hilum.dicom.generator import AXIAL, CORONAL, MUELLER, SAGITTAL, iter_ct_series, make_study, write_dataset
    from hilum.dicom.generator.demo import instance_path

    study = make_study(MUELLER, accession="BENCH-HANG", seed="bench-hanging")
    reformat = max(8, slices * 6 // 10)
    for number, desc, orientation, n, thick in [(1, "Thorax 2 mm", AXIAL, slices, 2.0),
                                                (2, "Coronal MPR", CORONAL, reformat, 3.0),
                                                (3, "Sagittal MPR", SAGITTAL, reformat, 3.0),
                                                (4, "Topogram", CORONAL, 1, 5.0)]:  # fmt: skip
        for ds in iter_ct_series(study, rows=rows, columns=rows, slices=n, slice_thickness=thick, orientation=orientation,
                                 series_number=number, series_description=desc, noise_sigma=0.0):  # fmt: skip
            if number == 4:
                ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            write_dataset(ds, instance_path(out, ds))
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--platform", default="offscreen")
    args = ap.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", args.platform)

    from PySide6.QtCore import QEvent, QObject, Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    import hilum.ui.viewer.viewer_widget as vw
    from hilum.archive import Archive
    from hilum.config import load_config
    from hilum.ui.main_window import MainWindow
    from hilum.ui.viewer.hanging import load_protocols
    from hilum.ui.viewer.viewer_widget import StudyViewer
    from hilum.ui.viewer.viewport_widget import ViewportCanvas
    from hilum.ui.viewer.wiring import install_viewer

    app = QApplication.instance() or QApplication(sys.argv[:1])
    tmp = Path(tempfile.mkdtemp(prefix="hilum-bench-hanging-"))
    t = time.perf_counter()
    write_chest(tmp / "dicom", args.rows, args.slices)
    data = tmp / "data"
    archive = Archive(data)
    results = archive.ingest_many(sorted((tmp / "dicom").rglob("*.dcm")))
    assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    study_uid = archive.query("STUDY", {"AccessionNumber": "BENCH-HANG"})[0]["StudyInstanceUID"]
    print(f"data: chest CT, axial {args.rows}x{args.rows}x{args.slices} + 2 reformats + localizer, "
          f"{len(results)} instances ({time.perf_counter() - t:.1f} s to write and ingest)")  # fmt: skip

    real = load_protocols
    shipped, _ = real(None)
    ways: dict[str, Any] = {
        "none": lambda data_dir=None: ([], []),
        "ct-default": lambda data_dir=None: ([p for p in real(data_dir)[0] if p.name != "CT chest with reformats"], []),
        "shipped": real,
    }

    class FirstPaint(QObject):
        def __init__(self) -> None:
            super().__init__()
            self.first: dict[int, str] = {}

        def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802
            if event.type() == QEvent.Type.Paint and isinstance(obj, ViewportCanvas):
                st = obj.state
                if id(st) not in self.first and st.frame_info is not None:
                    self.first[id(st)] = st.series_uid
            return False

    spy = FirstPaint()
    app.installEventFilter(spy)
    window = MainWindow(load_config(data), archive)
    controller = install_viewer(window)
    window.resize(1500, 900)
    window.show()

    def spin(cond, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
        end = time.perf_counter() + timeout
        while not cond():
            if time.perf_counter() > end:
                return False
            app.processEvents()
            time.sleep(0.001)
        return True

    def loaded(v: StudyViewer) -> bool:
        for i, uid in v._assigned.items():
            vp = v.model.viewports[i]
            if i < v.model.layout.count and (vp.series_uid != uid or vp.volume is None or not vp.volume.complete):
                return False
        return True

    assert spin(lambda: window.browser.model.rowCount() >= 1 and not window.browser.searching)
    if controller.warmup is not None:
        spin(lambda: not controller.warmup.is_alive(), 60)
    table = window.browser.table
    got: dict[str, dict[str, list[float]]] = {w: {} for w in ways}
    right: dict[str, list[bool]] = {w: [] for w in ways}
    layouts: dict[str, str] = {}
    for i in range(args.repeat):
        for way, loader in ways.items():
            vw.load_protocols = loader  # type: ignore[assignment]
            controller.cache.close()  # every try loads from the files (page cache warm)
            spy.first.clear()
            row = window.browser.model.find(study_uid)
            pos = table.visualRect(table.model().index(row, 0)).center()
            QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
            app.processEvents()
            t0 = time.perf_counter()
            QTest.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
            viewer = controller.viewer_for(study_uid)
            assert isinstance(viewer, StudyViewer)
            if not spin(lambda v=viewer: loaded(v) and len(spy.first) >= v.model.layout.count):
                print(f"try {i + 1} {way}: not loaded")
                return 1
            t_all = time.perf_counter() - t0
            tm = viewer.timings
            for key, value in (("hanging", tm.get("hanging", 0.0)), ("hung", tm.get("hung", float("nan"))),
                               ("first_image", tm.get("first_image", float("nan"))), ("all_loaded", t_all)):  # fmt: skip
                got[way].setdefault(key, []).append(value)
            visible = viewer.model.visible
            right[way].append(all(spy.first.get(id(vp)) == viewer._assigned.get(k) for k, vp in enumerate(visible)))
            layouts[way] = f"{viewer.model.layout.name} ({viewer.hanging.name if viewer.hanging else 'no protocol'})"
            print(f"try {i + 1} {way:10s}: chosen {tm.get('hanging', 0) * 1000:6.1f} ms, hung {tm['hung'] * 1000:6.1f} ms, "
                  f"first image {tm['first_image'] * 1000:6.1f} ms, all {layouts[way]} loaded {t_all * 1000:7.1f} ms, "
                  f"first paints the protocol's: {right[way][-1]}")  # fmt: skip
            window.close_workspace_tab(window.tabs.indexOf(viewer))
            for _ in range(20):
                app.processEvents()
                time.sleep(0.01)
    vw.load_protocols = real  # type: ignore[assignment]

    med = statistics.median
    print(f"\nmedians of {args.repeat} fresh opens (double-click in the study browser):")
    print(f"{'':12s} {'chosen':>9s} {'hung':>9s} {'1st image':>10s} {'all loaded':>11s}  first paint right  layout")
    for way in ways:
        g = got[way]
        print(f"{way:12s} {med(g['hanging']) * 1000:7.1f}ms {med(g['hung']) * 1000:7.1f}ms "
              f"{med(g['first_image']) * 1000:8.1f}ms {med(g['all_loaded']) * 1000:9.1f}ms  "
              f"{sum(right[way])}/{len(right[way])}{'':13s}{layouts[way]}")  # fmt: skip
    base = med(got["none"]["first_image"])
    print(f"first image, ct-default / none: {med(got['ct-default']['first_image']) / base:.2f}; "
          f"shipped (2x2) / none: {med(got['shipped']['first_image']) / base:.2f}")  # fmt: skip
    window.close()
    controller.shutdown()
    archive.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
