"""Cross-Frame-of-Reference sync in the comparison viewer (issue 15, contracts B and C together):
the comparison patient's current CT beside its prior 2 (another Frame of Reference, the anatomy
moved by a known rigid motion), registered in the background by the viewer; real wheel and key
events: scrolling the current lands prior 2 on the same anatomy, Alt+wheel / Alt+Up re-align it by
hand, the offset shows on the prior's viewport, is kept on disk and comes back when the study is
opened again.  Needs StudyViewer.add_study / compare / alignmentReady (skipped without them)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hilum.dicom.generator import ComparisonSet, write_comparison_patient
from hilum.dicom.registration import AlignmentStore

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QImage, QWheelEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from hilum.ui.viewer.viewer_widget import StudyViewer  # noqa: E402
from hilum.ui.viewer.viewport_widget import ALIGNMENT_COLOUR  # noqa: E402

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(
        not all(hasattr(StudyViewer, n) for n in ("add_study", "compare", "alignmentReady")),
        reason="contract C (StudyViewer.add_study / compare, registration on compare) not merged",
    ),
]
SPACING = 2.5
TIMEOUT = 60_000


@pytest.fixture
def cmp_set(archive: Any, tmp_path: Path) -> ComparisonSet:
    cs = write_comparison_patient(tmp_path / "cmp", rows=64, slices=48, today=dt.date(2026, 12, 6))
    assert all(r.ok for r in archive.ingest_many(cs.paths))
    return cs


def open_compared(qtbot: Any, archive: Any, data_dir: Path, cs: ComparisonSet) -> StudyViewer:
    v = StudyViewer(archive, cs.current.study_uid, data_dir=data_dir, executor="thread")
    qtbot.addWidget(v)
    v.resize(1100, 560)
    v.show()
    qtbot.waitExposed(v)
    with qtbot.waitSignal(v.loadFinished, timeout=TIMEOUT):
        v.open()
    with qtbot.waitSignal(v.alignmentReady, timeout=TIMEOUT):
        v.compare(cs.prior2.study_uid)  # what a click on the prior in the priors panel does
    return v


def grab(widget: Any) -> np.ndarray:
    img = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    arr = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return arr[:, : w * 3].reshape(h, w, 3).copy()


def alignment_pixels(canvas: Any) -> int:
    img = grab(canvas).astype(int)
    c = ALIGNMENT_COLOUR
    return int((np.abs(img - (c.red(), c.green(), c.blue())).sum(axis=-1) < 40).sum())


def wheel(canvas: Any, notches: int, modifiers: Any = Qt.KeyboardModifier.NoModifier) -> None:
    """``notches`` wheel clicks: positive away from the user (up the stack)."""
    pos = QPointF(canvas.width() / 2, canvas.height() / 2)
    ev = QWheelEvent(pos, canvas.mapToGlobal(pos), QPoint(0, 0), QPoint(0, 120 * notches), Qt.MouseButton.NoButton,
                     modifiers, Qt.ScrollPhase.NoScrollPhase, False)  # fmt: skip
    QApplication.sendEvent(canvas, ev)


def gap(cs: ComparisonSet, current: Any, prior: Any) -> float:
    """Signed mm along the current normal from the current slice to the prior slice mapped through
    the TRUE matrix (0: the same anatomy)."""
    m = cs.matrix()
    gc, gp = current.geometry, prior.geometry
    return float((m[:3, :3] @ gp.centre + m[:3, 3] - gc.centre) @ gc.normal)


def test_prior_in_another_frame_follows_the_current_and_is_realigned_by_hand(
    qtbot: Any, archive: Any, data_dir: Path, cmp_set: ComparisonSet
) -> None:
    cs = cmp_set
    viewer = open_compared(qtbot, archive, data_dir, cs)
    current, prior = viewer.model.visible[:2]
    assert (current.series_uid, prior.series_uid) == (cs.current.series_uid, cs.prior2.series_uid)
    c0, c1 = viewer.viewport_widget(0).canvas, viewer.viewport_widget(1).canvas
    for notches in (-3, 5, -1, 4):
        wheel(c0, notches)
        assert abs(gap(cs, current, prior)) <= SPACING, notches
    qtbot.wait(200)
    plain = alignment_pixels(c1)
    assert plain > 30 and alignment_pixels(c0) == 0  # "aligned by registration" on the prior only

    ic, base = current.index, gap(cs, current, prior)
    wheel(c1, 1, Qt.KeyboardModifier.AltModifier)  # away from the user: the prior alone, one slice up
    QTest.keyClick(c1, Qt.Key.Key_Up, Qt.KeyboardModifier.AltModifier)  # and one more from the keyboard
    assert current.index == ic
    assert gap(cs, current, prior) == pytest.approx(base + 2 * SPACING, abs=0.01)
    assert viewer.model.alignment_text(prior) == "aligned by registration, +5.0 mm by hand"
    qtbot.wait(200)
    assert alignment_pixels(c1) > plain * 1.3
    wheel(c0, -2)  # the current again: the prior follows, 5 mm off as set by hand
    assert abs(gap(cs, current, prior) - 2 * SPACING) <= SPACING / 2 + 0.01
    stored = AlignmentStore(data_dir).get(cs.current.series_uid, cs.prior2.series_uid)
    assert stored is not None and stored.source == "registration+manual"
    assert np.linalg.norm(stored.manual_offset) == pytest.approx(2 * SPACING)
    viewer.close()

    # Opened again: the hand re-alignment is remembered (no new registration undoes it).
    again = open_compared(qtbot, archive, data_dir, cs)
    current, prior = again.model.visible[:2]
    assert again.model.alignment_text(prior) == "aligned by registration, +5.0 mm by hand"
    wheel(again.viewport_widget(0).canvas, 3)
    assert abs(gap(cs, current, prior) - 2 * SPACING) <= SPACING / 2 + 0.01
    again.close()
