"""VTK from several threads at once: MPR / 3D windows opened and closed quickly (their volumes and
first frames prepared on build threads, their 3D views rendered on render threads) while another
MPR window is scrolled and its 3D view rotated with the mouse on the GUI thread.

Before the process-wide VTK lock (:mod:`hilum.render.gl`) this crashed the interpreter now and
then (native backtraces: ``glXMakeCurrent`` on the GUI thread while a build thread was in
``glXChooseFBConfig``); the checks here are that everything still renders, that windows closed
before or while their volume was built are torn down, and that nothing waits on a closed scene.
No timings are asserted."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QImage, QWheelEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from hilum.dicom.generator import DOE, generate_ct_series, make_study  # noqa: E402
from hilum.dicom.volume import Volume, build_volume  # noqa: E402
from hilum.render import gl  # noqa: E402
from hilum.ui.mpr import MPRWidget  # noqa: E402

pytestmark = pytest.mark.gui
STUDY = make_study(DOE, accession="MPRSTRESS")


@pytest.fixture(scope="module")
def volume() -> Volume:
    return build_volume(
        generate_ct_series(STUDY, rows=64, columns=64, slices=40, fov=200.0, slice_thickness=2.0, noise_sigma=0.0)
    )


def grab(widget) -> np.ndarray:  # type: ignore[no-untyped-def]
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def wheel(widget, steps: int) -> None:  # type: ignore[no-untyped-def]
    centre = QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(
        centre, widget.mapToGlobal(centre), QPoint(0, 0), QPoint(0, 120 * steps),
        Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False,
    )  # fmt: skip
    QApplication.sendEvent(widget, event)


def rotate_3d(canvas, steps: int) -> None:  # type: ignore[no-untyped-def]
    """A left drag across the 3D view, as a person rotates it."""
    y = canvas.height() // 2
    x0 = canvas.width() // 4
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(x0, y))
    for i in range(1, steps + 1):
        QTest.mouseMove(canvas, QPoint(x0 + 8 * i, y + (i % 3)))
        QApplication.processEvents()
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(x0 + 8 * steps, y))


def wait_settled(qtbot, canvas) -> None:  # type: ignore[no-untyped-def]
    """Wait for the 3D view's full-quality frame; on a timeout, say what the view was doing."""
    try:
        qtbot.waitUntil(canvas.settled, timeout=60000)
    except Exception as exc:
        with canvas._cv:
            state = {
                "requested": canvas._requested,
                "busy": canvas._busy,
                "dirty": canvas._dirty,
                "last_still": canvas._last_still,
                "ops": len(canvas._ops),
            }
        state |= {
            "interacting": canvas.scene._interacting,
            "rendering": canvas.scene.rendering,
            "worker_alive": canvas._thread.is_alive(),
            "lock_free": gl.VTK_LOCK.acquire(timeout=1.0) and (gl.VTK_LOCK.release() or True),
            "lock_owner": gl._owner,
            "gui_thread": threading.get_ident(),
            "threads": sorted(t.name for t in threading.enumerate()),
        }
        raise AssertionError(f"the 3D view did not settle: {state}") from exc


def builds_running() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "hilum-mpr-build" and t.is_alive())


def test_windows_opened_and_closed_quickly_while_another_is_scrolled_and_rotated(
    qtbot, volume: Volume, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    main = MPRWidget(volume, data_dir=tmp_path)
    qtbot.addWidget(main)
    main.resize(900, 650)
    main.show()
    qtbot.waitExposed(main)
    assert main.volume_canvas is not None
    wait_settled(qtbot, main.volume_canvas)
    axial = main.slice_canvases["axial"]
    start = main.scene.crosshair.centre.copy() if main.scene is not None else None

    opened: list[MPRWidget] = []
    closed_early: list[MPRWidget] = []
    for round_ in range(6):
        layout = "3d" if round_ % 3 == 2 else "mpr"
        w = MPRWidget(layout=layout, data_dir=tmp_path)
        qtbot.addWidget(w)
        w.resize(500, 400)
        w.show()
        w.build_async(lambda: volume)  # prepared (windows made, first frames rendered) on a build thread
        # meanwhile the person scrolls the open window and turns its 3D view
        wheel(axial, 1 if round_ % 2 == 0 else -1)
        rotate_3d(main.volume_canvas, 4)
        for other in opened[-2:]:  # and the windows opened before render their 3D views too
            if other.volume_canvas is not None:
                other.volume_canvas.request_render()
        if round_ % 2 == 1:
            w.close()  # closed while (or just after) its volume is built
            closed_early.append(w)
        else:
            qtbot.waitUntil(lambda w=w: w.volume is not None, timeout=60000)
            opened.append(w)
            wheel(axial, 2)
        if len(opened) > 2:  # close the oldest while its 3D view may be rendering
            opened.pop(0).close()

    qtbot.waitUntil(lambda: builds_running() == 0, timeout=60000)
    QApplication.processEvents()
    for w in closed_early:  # built after its window was closed: nothing shown, its scenes freed
        assert w.scene is None and w.volume_scene is None and w.volume_canvas is None
    for w in opened:
        assert w.volume_canvas is not None
        wait_settled(qtbot, w.volume_canvas)
        assert grab(w.volume_canvas).max() > 100  # the bone preset shows the spine
        w.close()
        assert w.scene is None and w.volume_scene is None

    # the window used all along still renders what its model says
    assert main.scene is not None and start is not None
    assert not np.allclose(main.scene.crosshair.centre, start)  # the wheel moved through the axial plane
    for view, canvas in main.slice_canvases.items():
        assert grab(canvas).mean() > 10, view
    wait_settled(qtbot, main.volume_canvas)
    assert grab(main.volume_canvas).max() > 100
    main.close()
    assert main.volume_scene is None
    assert gl.VTK_LOCK.acquire(timeout=30)  # nobody kept the VTK lock
    gl.VTK_LOCK.release()
