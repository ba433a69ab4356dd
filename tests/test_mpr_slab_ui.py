"""A rotation drag in the MPR widget previews the turning thick slabs coarse and makes them
again at full quality on release (pytest-qt, the real canvases, Ctrl + left drag as a person
does it).  The slabs themselves are held to VTK's in tests/test_mpr_slab_fast.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from _viewer_data import mpr_ct_series  # noqa: E402
from hilum.dicom.generator import DOE, make_study  # noqa: E402
from hilum.dicom.volume import Volume, build_volume  # noqa: E402
from hilum.render.mpr import PREVIEW_PIXELS, VIEWS  # noqa: E402
from hilum.ui.mpr import MPRWidget  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def volume() -> Volume:
    return build_volume(mpr_ct_series(make_study(DOE, accession="SLABUI")))


def test_rotation_drag_previews_thick_slabs_then_refines(qtbot, volume: Volume, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    w = MPRWidget(volume, data_dir=tmp_path)
    qtbot.addWidget(w)
    w.resize(1000, 700)
    w.show()
    qtbot.waitExposed(w)
    QApplication.processEvents()
    w.set_slab(15.0, "mip")
    scene = w.scene
    assert scene is not None
    axial = w.slice_canvases["axial"]
    axial.grab()
    x, y, _ = scene["axial"].patient_to_display(scene.crosshair.centre)
    c = QPoint(int(round(x)), int(round(axial.height() - 1 - y)))
    full = {v: scene[v].image()[2] for v in VIEWS}

    QTest.mousePress(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, c + QPoint(80, 0))
    assert all(vp.interacting for vp in scene.viewports.values())
    QTest.mouseMove(axial, c + QPoint(80, 40))
    QTest.mouseMove(axial, c + QPoint(80, 80))
    for view in ("coronal", "sagittal"):  # the planes that turn: previewed coarse
        assert scene[view].image()[2] == pytest.approx(PREVIEW_PIXELS * full[view])
    assert scene["axial"].image()[2] == pytest.approx(full["axial"])  # the plane dragged in stays as it is
    QTest.mouseRelease(axial, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, c + QPoint(80, 80))

    assert scene.crosshair.oblique and not any(vp.interacting for vp in scene.viewports.values())
    for view in VIEWS:
        image, _, spacing = scene[view].image()
        assert spacing == pytest.approx(full[view]) and np.isfinite(image).all()
        assert scene[view]._geometry[7] == 15 / volume.spacing.min()  # type: ignore[index]  # every sample again
