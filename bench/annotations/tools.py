"""Annotation tools benchmark (issue 16): repaint with 50 annotations, drag-move of one.

On a generated 512 x 512 CT slice (noise-free chest phantom) shown in the real viewport widget
(:class:`hilum.ui.viewer.viewport_widget.ViewportWidget`, offscreen Qt platform, 800 x 800
canvas), with 50 annotations of every kind on that slice (arrows, texts, lengths, angles, Cobb
angles, ellipse / rectangle / freehand ROIs with their statistics, points) in the viewer's one
:class:`hilum.dicom.annotations.AnnotationSet`:

* repaint: the canvas's synchronous ``repaint()`` (image, corner text and the 50 annotations
  with their values), median ms; with no annotation as the baseline, and the first paint after
  the annotations were added (every ROI's statistics computed once, then cached);
* drag-move: a mouse press on one annotation then mouse moves (``QTest.mouseMove``) each
  followed by the repaint a person sees: ms per mouse move, median — a length (no statistics)
  and an ellipse ROI (its statistics recomputed at every move).

    .venv/bin/python bench/annotations/tools.py [--size 512] [--count 50] [--repeat 40] [--moves 150]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--moves", type=int, default=150)
    args = ap.parse_args()

    from PySide6.QtCore import QPoint, Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from hilum.dicom.annotations import Annotation, AnnotationSet
    from hilum.dicom.generator import MUELLER, iter_ct_series, make_study, write_dataset
    from hilum.dicom.generator.demo import instance_path
    from hilum.dicom.stack_load import load_series_sync
    from hilum.ui.viewer.state import ViewportState
    from hilum.ui.viewer.tools import SelectTool
    from hilum.ui.viewer.viewport_widget import ViewportWidget

    app = QApplication.instance() or QApplication(sys.argv)
    n = args.size
    with tempfile.TemporaryDirectory() as tmp:
        study = make_study(MUELLER, accession="BENCH-ANN", seed="bench-annotations")
        paths = [str(write_dataset(ds, instance_path(Path(tmp), ds)))
                 for ds in iter_ct_series(study, rows=n, columns=n, slices=3, slice_thickness=5.0, fov=360.0,
                                          noise_sigma=0.0)]  # fmt: skip
        vol = load_series_sync(paths, executor="serial")
    state = ViewportState("bench")
    aset = AnnotationSet()
    state.set_annotations(aset)
    state.set_volume(vol)
    tool = SelectTool()
    widget = ViewportWidget(state, tool_provider=lambda: tool)
    widget.resize(800 + widget.scrollbar.sizeHint().width(), 800)
    widget.show()
    app.processEvents()
    canvas = widget.canvas
    f = state.frame_info
    assert f is not None

    def repaint_ms(repeat: int) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            canvas.repaint()
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times)

    canvas.repaint()
    base = repaint_ms(args.repeat)

    # 50 annotations on the slice: a grid of cells, every kind in turn
    kinds = ["length", "angle", "cobb", "ellipse", "rect", "freehand", "point", "arrow", "text"]
    cols = math.ceil(math.sqrt(args.count))
    cell = n / cols
    made: list[Annotation] = []
    for i in range(args.count):
        kind = kinds[i % len(kinds)]
        x0, y0 = (i % cols) * cell + cell * 0.2, (i // cols) * cell + cell * 0.2
        s = cell * 0.5
        pts = {
            "length": [(x0, y0), (x0 + s, y0 + s * 0.3)],
            "arrow": [(x0, y0 + s), (x0 + s, y0)],
            "angle": [(x0 + s, y0), (x0, y0), (x0, y0 + s)],
            "cobb": [(x0, y0), (x0 + s, y0), (x0, y0 + s), (x0 + s, y0 + s * 0.7)],
            "ellipse": [(x0, y0), (x0 + s, y0 + s)],
            "rect": [(x0, y0), (x0 + s, y0 + s)],
            "freehand": [
                (x0 + s / 2 + s / 2 * math.cos(t), y0 + s / 2 + s / 2 * math.sin(t))
                for t in (k * 2 * math.pi / 40 for k in range(40))
            ],  # fmt: skip
            "point": [(x0 + s / 2, y0 + s / 2)],
            "text": [(x0, y0 + s / 2)],
        }[kind]
        made.append(
            aset.add(Annotation(kind, f.sop_instance_uid, f.frame, pts, text="Finding" if kind == "text" else ""))
        )
    t = time.perf_counter()
    canvas.repaint()
    first = (time.perf_counter() - t) * 1000
    full = repaint_ms(args.repeat)

    def drag_ms(a: Annotation, moves: int) -> float:
        """ms per mouse move while dragging *a* by its outline / line (the move and the repaint)."""
        p0, p1 = a.points[0], a.points[1]
        if a.kind == "ellipse":
            grab_at = state.image_to_canvas((p0[0] + p1[0]) / 2, p0[1])  # the top of the outline
        else:
            grab_at = state.image_to_canvas((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2)
        start = QPoint(round(grab_at[0]), round(grab_at[1]))
        QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
        assert state.selected == a.uid, f"the press did not grab the {a.kind}"
        before = list(a.points)
        times = []
        for k in range(1, moves + 1):
            pos = start + QPoint(round(20 * math.sin(k / 10)), k % 40)
            t = time.perf_counter()
            QTest.mouseMove(canvas, pos)
            canvas.repaint()
            times.append((time.perf_counter() - t) * 1000)
        QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
        assert a.points != before
        aset.undo()  # the whole drag was one step
        assert a.points == before
        return statistics.median(times)

    drag_length = drag_ms(next(a for a in made if a.kind == "length"), args.moves)
    drag_roi = drag_ms(next(a for a in made if a.kind == "ellipse"), args.moves)
    print(f"annotation tools, {n}x{n} CT slice, 800x800 canvas, {args.count} annotations "
          f"({', '.join(sorted({a.kind for a in made}))})")  # fmt: skip
    print(f"  repaint, no annotation:            {base:7.2f} ms (median of {args.repeat})")
    print(f"  repaint, {args.count} annotations:            {full:7.2f} ms (median of {args.repeat})")
    print(f"  first repaint after adding them:   {first:7.2f} ms (every ROI's statistics computed)")
    print(f"  drag-move a length:                {drag_length:7.2f} ms per mouse move (median of {args.moves})")
    print(f"  drag-move an ellipse ROI:          {drag_roi:7.2f} ms per mouse move (statistics each move)")
    widget.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
