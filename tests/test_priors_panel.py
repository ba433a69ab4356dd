"""The priors panel's widget (real clicks), its texts, the overlay's study label and the series matching."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from hilum.dicom.generator import (  # noqa: E402
    CORONAL,
    MUELLER,
    generate_mr_series,
    iter_ct_series,
    make_study,
    write_dataset,  # noqa: E402
)
from hilum.dicom.generator.demo import instance_path  # noqa: E402
from hilum.ui.viewer.overlay import OverlayConfig, corner_texts, study_label  # noqa: E402
from hilum.ui.viewer.priors_panel import PriorsPanel, age_text, date_text  # noqa: E402
from hilum.ui.viewer.study import SeriesEntry, best_match  # noqa: E402


@dataclass(frozen=True)
class _Prior:
    """The fields of :class:`hilum.priors.Prior` (contract A) the panel shows."""

    study_uid: str
    study_date: str
    description: str
    modalities: tuple[str, ...]
    source: str = "local"
    local: bool = True
    score: float = 1.0
    reason: str = "same modality and body part"
    n_series: int = 1
    n_instances: int = 24
    patient_id: str = "P1"
    issuer: str = ""
    study_time: str = ""
    accession: str = ""
    body_parts: tuple[str, ...] = ()


def test_date_and_age_texts() -> None:
    assert date_text("20251014") == "2025-10-14"
    assert date_text("") == "date unknown"
    assert age_text("20251014", "20261102") == "1 y"
    assert age_text("20250901", "20261102") == "1 y 2 m"
    assert age_text("20260801", "20261102") == "3 m"
    assert age_text("20261020", "20261102") == "13 d"
    assert age_text("", "20261102") == "" and age_text("20270101", "20261102") == "later"


def test_overlay_marks_a_prior_with_its_date() -> None:
    ds = Dataset()
    ds.StudyInstanceUID = "1.2.3"
    ds.StudyDate = "20251014"
    ds.StudyTime = "141000"
    assert study_label(ds, "1.2.3") == "2025-10-14"
    assert study_label(ds, "9.9") == "PRIOR 2025-10-14"
    assert study_label(ds, "") == "2025-10-14"
    config = OverlayConfig.load()
    assert any("{study_label}" in line for line in config.corners["top_right"])
    shown = corner_texts(replace(config, current_study="9.9"), ds, {})["top_right"]
    assert "PRIOR 2025-10-14 14:10" in shown


def test_panel_rows_clicks_retrieve_and_progress(qtbot: Any) -> None:
    panel = PriorsPanel()
    qtbot.addWidget(panel)
    panel.resize(230, 500)
    panel.current_date = "20261102"
    panel.show()
    qtbot.waitExposed(panel)
    assert panel.note.text() == "Searching…"
    local = _Prior("1.1", "20251014", "CT Thorax", ("CT",), score=3.0, reason="same modality and body part, 1 y")
    remote = _Prior("1.2", "20241014", "CT Thorax alt", ("CT",), source="PACS", local=False, score=2.0)
    panel.set_priors([local], searching=True)
    assert panel.note.text() == "1 found; asking the peers…"
    panel.set_priors([local, remote])
    assert panel.note.text() == "2 earlier studies" and panel.heading.text() == "Priors (2)"
    assert panel.study_uids() == ["1.1", "1.2"]
    row_l, row_r = panel.row("1.1"), panel.row("1.2")
    assert row_l is not None and row_r is not None
    assert "2025-10-14" in row_l.title.text() and "1 y" in row_l.title.text()
    assert row_l.toolTip().startswith("same modality and body part, 1 y")
    assert not row_l.retrieve.isVisible() and row_r.retrieve.isVisible() and "PACS" in row_r.source.text()

    def click(uid: str) -> None:
        item = panel.item(uid)
        assert item is not None
        pos = panel.list.visualItemRect(item).topLeft() + QPoint(20, 8)  # on the title, not on the button
        QTest.mouseClick(panel.list.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)

    with qtbot.waitSignal(panel.priorActivated, check_params_cb=lambda u: u == "1.1", timeout=2000):
        click("1.1")
    with qtbot.assertNotEmitted(panel.priorActivated):
        click("1.2")  # remote: not openable yet
    with qtbot.waitSignal(panel.retrieveRequested, check_params_cb=lambda u: u == "1.2", timeout=2000):
        QTest.mouseClick(row_r.retrieve, Qt.MouseButton.LeftButton)
    row_r.set_state("3/24", 3, 24)
    assert row_r.progress.isVisible() and row_r.progress.value() == 3 and not row_r.retrieve.isEnabled()
    row_r.set_state("failed: association rejected", failed=True)
    assert not row_r.progress.isVisible() and row_r.retrieve.text() == "Retry" and row_r.retrieve.isEnabled()
    assert "association rejected" in row_r.source.text()
    # a new ranking: the rows follow, a retrieved prior turns local
    panel.set_priors([replace(remote, local=True, score=5.0), local])
    assert panel.study_uids() == ["1.2", "1.1"]
    row = panel.row("1.2")
    assert row is not None and not row.retrieve.isVisible() and row.source.text().startswith("local")
    panel.set_priors([])
    assert panel.note.text() == "No earlier studies" and panel.list.count() == 0


def _entry(paths: list[Path], modality: str, description: str) -> SeriesEntry:
    return SeriesEntry(series_uid=description, number=1, modality=modality, description=description,
                       paths=paths, frames=len(paths))  # fmt: skip


def test_best_match_prefers_modality_plane_description_and_thickness(tmp_path: Path) -> None:
    study = make_study(MUELLER, accession="BM", seed="best-match")

    def ct(name: str, thickness: float, description: str, **kw: Any) -> SeriesEntry:
        paths = [write_dataset(ds, instance_path(tmp_path / name, ds)) for ds in iter_ct_series(
            study, rows=16, columns=16, slices=4, slice_thickness=thickness, series_description=description, **kw)]  # fmt: skip
        return _entry(paths, "CT", description)

    current = ct("cur", 2.5, "Thorax axial 2.5")
    axial_thin = ct("ax25", 2.5, "Thorax 2.5 mm")
    axial_thick = ct("ax5", 5.0, "Thorax 5 mm")
    coronal = ct("cor", 2.5, "Thorax axial 2.5", orientation=CORONAL)
    mr_paths = [write_dataset(ds, instance_path(tmp_path / "mr", ds))
                for ds in generate_mr_series(study, rows=16, columns=16, slices=4, series_description="Thorax axial 2.5")]  # fmt: skip
    mr = _entry(mr_paths, "MR", "Thorax axial 2.5")
    assert current.hint().plane == "AX" and coronal.hint().plane == "COR"
    candidates = [mr, coronal, axial_thick, axial_thin]
    assert best_match(current, candidates) is axial_thin
    assert best_match(current, candidates, exclude={axial_thin.series_uid}) is axial_thick
    assert best_match(current, [mr, coronal]) is coronal  # same modality before same plane
    assert best_match(current, []) is None
