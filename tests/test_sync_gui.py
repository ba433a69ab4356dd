"""Linked scrolling across Frames of Reference in the real viewer (pytest-qt, real wheel and key
events): the comparison patient's current CT and its prior 2 (another Frame of Reference, the
anatomy moved by a known rigid motion) side by side, related by a registration; scrolling the
current moves the prior to the same anatomy, Alt+wheel / Alt+Up/Down re-align the prior by hand.

Until the viewer shows a prior study beside the current one (StudyViewer.add_study), prior 2's
series is filed into the current study here (its own Frame of Reference kept): a study whose
series lie in two Frames of Reference, as after a patient moved between two scans."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pydicom
import pytest

from hilum.dicom.generator import ComparisonSet, write_comparison_patient
from hilum.dicom.registration import register_rigid
from hilum.dicom.volume import volume_from_series

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QImage, QWheelEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from hilum.ui.viewer.viewer_widget import StudyViewer  # noqa: E402
from hilum.ui.viewer.viewport_widget import ALIGNMENT_COLOUR  # noqa: E402

pytestmark = pytest.mark.gui
SPACING = 2.5


@pytest.fixture
def cmp_set(tmp_path: Path) -> ComparisonSet:
    return write_comparison_patient(tmp_path / "cmp", rows=96, slices=60, today=dt.date(2026, 12, 6))


@pytest.fixture
def study(archive, cmp_set: ComparisonSet, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    paths = list(cmp_set.current.paths)
    out = tmp_path / "rescan"
    out.mkdir()
    for p in cmp_set.prior2.paths:
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID = cmp_set.current.study_uid
        ds.AccessionNumber = cmp_set.current.accession
        ds.StudyDate = cmp_set.current.study_date
        ds.SeriesNumber = 2
        ds.SeriesDescription = "Axial re-scan (other FoR)"
        paths.append(out / p.name)
        ds.save_as(paths[-1])
    assert all(r.ok for r in archive.ingest_many(paths))
    return cmp_set.current.study_uid


@pytest.fixture
def viewer(qtbot, archive, data_dir, study):  # type: ignore[no-untyped-def]
    v = StudyViewer(archive, study, data_dir=data_dir, executor="thread")
    qtbot.addWidget(v)
    v.resize(1000, 560)
    v.show()
    qtbot.waitExposed(v)
    with qtbot.waitSignal(v.loadFinished, timeout=20000):
        v.open()
    yield v
    v.close()


def grab(widget) -> np.ndarray:  # type: ignore[no-untyped-def]
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def alignment_pixels(canvas) -> int:  # type: ignore[no-untyped-def]
    """Pixels painted in the alignment line's colour."""
    img = grab(canvas).astype(int)
    c = ALIGNMENT_COLOUR
    return int((np.abs(img - (c.red(), c.green(), c.blue())).sum(axis=-1) < 40).sum())


def wheel(canvas, notches: int, modifiers=Qt.KeyboardModifier.NoModifier, horizontal: bool = False) -> None:  # type: ignore[no-untyped-def]
    """``notches`` wheel clicks over the canvas: positive away from the user (up the stack)."""
    pos = QPointF(canvas.width() / 2, canvas.height() / 2)
    delta = QPoint(120 * notches, 0) if horizontal else QPoint(0, 120 * notches)
    ev = QWheelEvent(pos, canvas.mapToGlobal(pos), QPoint(0, 0), delta, Qt.MouseButton.NoButton, modifiers,
                     Qt.ScrollPhase.NoScrollPhase, False)  # fmt: skip
    QApplication.sendEvent(canvas, ev)


def anatomy_gap(cmp_set: ComparisonSet, current, prior) -> float:  # type: ignore[no-untyped-def]
    """Signed distance (mm, along the current normal) from the current slice to the prior slice
    mapped into current coordinates through the TRUE matrix."""
    m = cmp_set.matrix()
    gc, gp = current.geometry, prior.geometry
    return float((m[:3, :3] @ gp.centre + m[:3, 3] - gc.centre) @ gc.normal)


def test_scrolling_the_current_lands_the_prior_on_the_same_anatomy(viewer, qtbot, cmp_set: ComparisonSet) -> None:  # type: ignore[no-untyped-def]
    canvas0 = viewer.viewport_widget(0).canvas
    QTest.keyClick(canvas0, Qt.Key.Key_2, Qt.KeyboardModifier.ControlModifier)  # layout 1x2
    current, prior = viewer.model.visible[:2]
    qtbot.waitUntil(lambda: prior.volume is not None and not prior.volume.preview and prior.volume.complete
                    and current.volume.complete, timeout=20000)  # fmt: skip
    assert prior.series_uid == cmp_set.prior2.series_uid
    assert current.frame_info.frame_of_reference_uid != prior.frame_info.frame_of_reference_uid
    canvas0, canvas1 = viewer.viewport_widget(0).canvas, viewer.viewport_widget(1).canvas

    # Not linked yet: other Frames of Reference.
    before = prior.index
    wheel(canvas0, -3)
    assert prior.index == before
    assert alignment_pixels(canvas1) == 0

    # The registration the viewer runs when a prior lands beside the current series.
    found = register_rigid(volume_from_series(current.volume), volume_from_series(prior.volume))
    viewer.model.set_alignment(found)
    for notches in (-2, -2, 5, 3, -1, 4):
        wheel(canvas0, notches)
        assert abs(anatomy_gap(cmp_set, current, prior)) <= SPACING, notches
    assert current.index != prior.index  # 15 mm apart in z: not the same index, the same anatomy
    qtbot.wait(200)
    plain = alignment_pixels(canvas1)
    assert plain > 30  # "aligned by registration" on the prior
    assert alignment_pixels(canvas0) == 0

    # Alt+wheel on the prior: the prior alone moves, one slice per notch, and the offset shows.
    ic, ip = current.index, prior.index
    gap = anatomy_gap(cmp_set, current, prior)
    wheel(canvas1, -2, Qt.KeyboardModifier.AltModifier)  # towards the user: two slices down
    assert current.index == ic
    assert prior.index == ip + 2 * prior.down_step
    assert anatomy_gap(cmp_set, current, prior) == pytest.approx(gap - 2 * SPACING, abs=0.01)
    assert viewer.model.alignment_text(prior) == "aligned by registration, -5.0 mm by hand"
    # X11 hands Alt+wheel over as a horizontal wheel: the same.
    wheel(canvas1, 1, Qt.KeyboardModifier.AltModifier, horizontal=True)
    assert current.index == ic
    assert anatomy_gap(cmp_set, current, prior) == pytest.approx(gap - SPACING, abs=0.01)
    # Alt+Up / Alt+Down from the keyboard, on the focused prior viewport.
    QTest.keyClick(canvas1, Qt.Key.Key_Up, Qt.KeyboardModifier.AltModifier)
    QTest.keyClick(canvas1, Qt.Key.Key_Up, Qt.KeyboardModifier.AltModifier)
    assert current.index == ic
    assert anatomy_gap(cmp_set, current, prior) == pytest.approx(gap + SPACING, abs=0.01)
    assert viewer.model.alignment_text(prior) == "aligned by registration, +2.5 mm by hand"
    qtbot.wait(200)
    assert alignment_pixels(canvas1) > plain * 1.3  # "..., +2.5 mm by hand": a longer line
    assert alignment_pixels(canvas0) == 0
    # The prior is active now: no reference line across the current (parallel stacks, linked).
    assert viewer.model.active_viewport is prior
    img = grab(canvas0)
    assert ((img[..., 0] > 200) & (img[..., 1] > 200) & (img[..., 2] < 80)).sum() == 0

    # Scrolling the current again: the prior follows, the hand offset kept.
    for notches in (-3, 4):
        wheel(canvas0, notches)
        assert abs(anatomy_gap(cmp_set, current, prior) - SPACING) <= SPACING / 2 + 0.01
