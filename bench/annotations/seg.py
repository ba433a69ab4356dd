"""Segmentation benchmark: brush latency on a 512² slice, and a 512×512×300 SEG with 5 segments.

* Brush latency: the real StudyViewer (offscreen Qt platform) on a generated 512×512 CT, the
  brush tool chosen by its key (Shift+B), one press, then ``--moves`` synthetic mouse-move
  events along a circle, each timed from the event sent to the canvas' synchronous
  ``repaint()`` returned (what a person sees: the label written, the overlay's dirty rectangle
  recoloured, the whole viewport painted). Median and p95, against the same moves with the
  overlay cache dropped before each (the whole-slice recolour a naïve overlay pays): the
  ratio shows what the dirty rectangle buys. Target of the issue: ≤ 16 ms.
* SEG: a 512×512×300 label map with 5 segments (spheres of 20–60 mm), saved as a DICOM SEG
  (highdicom, BINARY; ``make_seg``) and ingested through the archive's one ingest call, then
  read back from the archive (``pydicom.dcmread`` + ``read_seg`` onto the series' stack), in
  seconds; the round trip is checked voxel for voxel. Target: re-open ≤ 0.5 s on top of the
  image load.

    .venv/bin/python bench/annotations/seg.py [--slices 300] [--size 512] [--moves 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def make_series(out: Path, size: int, slices: int) -> list[Path]:
    from hilum.dicom.generator import MUELLER, iter_ct_series, make_study, write_dataset
    from hilum.dicom.generator.demo import instance_path

    study = make_study(MUELLER, accession="ACC-SEG", seed="seg-bench")
    return [write_dataset(ds, instance_path(out, ds))
            for ds in iter_ct_series(study, rows=size, columns=size, slices=slices, fov=360.0,
                                     slice_thickness=1.0, noise_sigma=0.0)]  # fmt: skip


def brush_latency(archive: object, data: Path, study_uid: str, moves: int) -> dict[str, float]:
    import math

    from PySide6.QtCore import QEvent, QPointF, Qt
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from hilum.ui.viewer.viewer_widget import StudyViewer

    app = QApplication.instance() or QApplication(sys.argv[:1])
    v = StudyViewer(archive, study_uid, data_dir=data, executor="thread")
    v.resize(1400, 900)
    v.show()
    done: list[str] = []
    v.loadFinished.connect(done.append)
    v.open()
    t_end = time.perf_counter() + 120
    while not done and time.perf_counter() < t_end:
        app.processEvents()
        time.sleep(0.005)
    canvas = v.viewport_widget(0).canvas
    vp = v.active_viewport()
    canvas.setFocus()
    QTest.keyClick(canvas, Qt.Key.Key_B, Qt.KeyboardModifier.ShiftModifier)
    assert v.tool_name == "seg_brush", v.tool_name
    v.seg.radius_mm = 8.0
    app.processEvents()
    cx, cy = canvas.width() / 2, canvas.height() / 2
    L = Qt.MouseButton.LeftButton

    def send(kind: QEvent.Type, x: float, y: float, button: Qt.MouseButton, buttons: Qt.MouseButton) -> None:
        QApplication.sendEvent(canvas, QMouseEvent(kind, QPointF(x, y), canvas.mapToGlobal(QPointF(x, y)), button,
                                                   buttons, Qt.KeyboardModifier.NoModifier))  # fmt: skip

    out: dict[str, float] = {}
    for label, drop_cache in (("dirty rectangle", False), ("whole slice recoloured", True)):
        send(QEvent.Type.MouseButtonPress, cx, cy, L, L)
        canvas.repaint()
        times = []
        for i in range(moves):
            a = 2 * math.pi * i / 60
            x, y = cx + 120 * math.cos(a) + i * 0.3, cy + 120 * math.sin(a)
            if drop_cache:
                v.seg._cache.clear()
            t0 = time.perf_counter()
            send(QEvent.Type.MouseMove, x, y, Qt.MouseButton.NoButton, L)
            canvas.repaint()
            times.append((time.perf_counter() - t0) * 1000)
        send(QEvent.Type.MouseButtonRelease, x, y, L, Qt.MouseButton.NoButton)
        app.processEvents()
        out[f"{label} median ms"] = statistics.median(times)
        out[f"{label} p95 ms"] = pct(times, 95)
        print(f"brush move → repaint done ({label}): median {statistics.median(times):.2f} ms, "
              f"p95 {pct(times, 95):.2f} ms over {moves} moves (slice {vp.frame_info.rows}², "
              f"canvas {canvas.width()}x{canvas.height()})")  # fmt: skip
    out["ratio"] = out["whole slice recoloured median ms"] / max(out["dirty rectangle median ms"], 1e-9)
    print(f"  whole-slice / dirty-rectangle: {out['ratio']:.2f}x")
    # region growing in 3D from a click on the 20 mm sphere (G, 200..400 HU): the click's time on the GUI thread
    import numpy as np

    from hilum.dicom.generator.phantom import DEFAULT_SPHERES

    sphere = DEFAULT_SPHERES[0]
    zs = [f.position[2] for f in vp.volume.stack.frames]
    vp.set_index(int(np.argmin(np.abs(np.asarray(zs) - sphere.centre[2]))))
    f, g = vp.frame_info, vp.frame_info.geometry
    d = np.asarray(sphere.centre) - np.asarray(f.position)
    gx, gy = vp.image_to_canvas(d @ np.asarray(g.row_dir) / f.spacing.column, d @ np.asarray(g.col_dir) / f.spacing.row)
    QTest.keyClick(canvas, Qt.Key.Key_G)
    v.seg.grow_3d, v.seg.lo, v.seg.hi = True, 200.0, 400.0
    n = v.seg.active_segment(vp.series_uid)
    lm = v.seg.labels[vp.series_uid]
    before = lm.voxel_count(n)
    t0 = time.perf_counter()
    send(QEvent.Type.MouseButtonPress, gx, gy, L, L)
    send(QEvent.Type.MouseButtonRelease, gx, gy, L, Qt.MouseButton.NoButton)
    canvas.repaint()
    out["grow 3d s"] = time.perf_counter() - t0
    from hilum.dicom.segmentation import GROW_BOX_MM, volume_spacing

    grown = (lm.voxel_count(n) - before) * float(np.prod(volume_spacing(vp.volume.stack))) / 1000
    true_ml = 4 / 3 * math.pi * sphere.radius**3 / 1000
    print(f"region growing 3D from a click (within ±{GROW_BOX_MM:g} mm, cap {v.seg.max_grow_voxels} voxels): {out['grow 3d s']:.2f} s, "
          f"{grown:.3f} mL grown (sphere {true_ml:.3f} mL)")  # fmt: skip
    v.close()
    return out


def seg_round_trip(archive: object, paths: list[Path]) -> dict[str, float]:
    import numpy as np
    import pydicom

    from hilum.dicom.segmentation import LabelMap, make_seg, read_seg, volume_spacing
    from hilum.dicom.stack import Stack, frames_from_dataset

    t0 = time.perf_counter()
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    frames = [f for ds, p in zip(headers, paths, strict=True) for f in frames_from_dataset(ds, str(p))]
    stack = Stack.from_frames(frames)
    order = stack.order
    by_uid = {ds.SOPInstanceUID: ds for ds in headers}
    images = [by_uid[order.items[u].sop_instance_uid] for u in order.unique]
    t_headers = time.perf_counter() - t0
    n, rows, cols = len(images), int(images[0].Rows), int(images[0].Columns)
    lm = LabelMap((n, rows, cols))
    sp = volume_spacing(stack)
    zz, yy, xx = np.ogrid[:n, :rows, :cols]
    for i, d_mm in enumerate((20, 30, 40, 50, 60)):
        seg = lm.add_segment()
        c = (n * (i + 1) // 6, rows // 2 + (i - 2) * rows // 7, cols // 2 + (i - 2) * cols // 7)
        r = d_mm / 2
        ball = ((zz - c[0]) * sp[0]) ** 2 + ((yy - c[1]) * sp[1]) ** 2 + ((xx - c[2]) * sp[2]) ** 2 <= r * r
        lm.array[ball] = seg.number
    lm.recount()
    t0 = time.perf_counter()
    ds = make_seg(images, lm)
    t_make = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = archive.ingest(ds, origin="annotation")  # type: ignore[attr-defined]
    t_ingest = time.perf_counter() - t0
    assert res.ok, res.reason
    path = archive.path(ds.SOPInstanceUID)  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    back = read_seg(pydicom.dcmread(path), stack)
    t_open = time.perf_counter() - t0
    assert np.array_equal(back.array, lm.array)
    size = os.path.getsize(path)
    print(f"SEG {n}x{rows}x{cols}, 5 segments ({len(ds.PerFrameFunctionalGroupsSequence)} frames, "
          f"{size / 1e6:.1f} MB): make {t_make:.2f} s + ingest {t_ingest:.2f} s = save {t_make + t_ingest:.2f} s; "
          f"re-open (read + map onto the stack) {t_open:.2f} s; series headers {t_headers:.2f} s")  # fmt: skip
    return {"make s": t_make, "ingest s": t_ingest, "open s": t_open}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--moves", type=int, default=200)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    from hilum.archive import Archive

    tmp = Path(tempfile.mkdtemp(prefix="hilum-segbench-"))
    try:
        t0 = time.perf_counter()
        paths = make_series(tmp / "files", args.size, args.slices)
        data = tmp / "data"
        data.mkdir()
        archive = Archive(data)
        results = archive.ingest_many(paths)
        assert all(r.ok for r in results)
        print(f"{args.slices} x {args.size}² CT generated and ingested in {time.perf_counter() - t0:.1f} s")
        import pydicom

        study_uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        brush_latency(archive, data, study_uid, args.moves)
        seg_round_trip(archive, paths)
        archive.close()
    finally:
        if args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
