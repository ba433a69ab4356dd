"""The audit trail in the workstation (issue 21a), driven by mouse and keyboard on the real window.

Opening a study by double-click leaves one "DICOM Instances Accessed" event naming the workstation
user and the patient; Ctrl+Shift+J opens View → Audit trail, whose table lists it; a filter typed
into the patient field narrows the rows; Verify reports the chain intact, and after a row is altered
in the database, broken at that row.

Run under Xvfb (the viewer's VTK widget): ``xvfb-run -a -s "-screen 0 1920x1080x24 -nolisten tcp"``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from hilum.archive import Archive  # noqa: E402
from hilum.config import load_config  # noqa: E402
from hilum.dicom.generator import (  # noqa: E402
    YAMADA,
    generate_ct_series,
    make_study,
    write_dataset,  # noqa: E402
)
from hilum.ui.audit_view import AuditView  # noqa: E402

TIMEOUT = 30_000


def test_opening_a_study_is_audited_and_the_audit_view_shows_and_verifies_it(
    qtbot, make_main_window, data_dir: Path, tmp_path: Path
) -> None:
    study = make_study(YAMADA, accession="AUDGUI1", date="20260301", time="101500", seed="audit-gui")
    folder = tmp_path / "ct"
    folder.mkdir()
    for i, ds in enumerate(generate_ct_series(study, rows=64, columns=64, slices=4, seed=3)):
        write_dataset(ds, folder / f"{i:03d}.dcm")
    (data_dir / "hilum.toml").write_text('[workstation]\nuser = "dr.audit"\n', encoding="utf-8")
    archive = Archive(data_dir)
    assert all(r.ok for r in archive.ingest_many(sorted(folder.iterdir())))
    window = make_main_window(load_config(data_dir), archive, viewer=True)
    window.resize(1400, 900)
    window.show()
    qtbot.waitExposed(window)

    # open the study by double-click in the browser
    model, table = window.browser.model, window.browser.table
    uid = study.uid
    qtbot.waitUntil(lambda: model.find(uid) >= 0, timeout=TIMEOUT)
    rect = table.visualRect(model.index(model.find(uid), 1))
    QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    with qtbot.waitSignal(window.studyOpenRequested, timeout=TIMEOUT):
        QTest.mouseDClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: window.viewer_controller.viewer_for(uid) is not None, timeout=TIMEOUT)
    [opened] = archive.audit.search(event="DICOM Instances Accessed")
    assert opened["user"] == "dr.audit" and opened["study_uids"] == uid
    assert opened["patient_id"] == YAMADA.patient_id and opened["action"] == "R"

    # Ctrl+Shift+J: the audit view, its table listing the access
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=TIMEOUT)
    QTest.keyClick(window, Qt.Key.Key_J, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: isinstance(window.audit_view, AuditView) and window.audit_view.isVisible(), timeout=TIMEOUT)
    view: AuditView = window.audit_view
    qtbot.waitUntil(lambda: view.status.text().endswith("events"), timeout=TIMEOUT)
    events = [view.model.index(r, 2).data() for r in range(view.model.rowCount())]
    assert "DICOM Instances Accessed" in events
    # a patient filter typed into its field, Enter: only that patient's events
    QTest.mouseClick(view.patient_edit, Qt.MouseButton.LeftButton)
    QTest.keyClicks(view.patient_edit, YAMADA.patient_id)
    QTest.keyClick(view.patient_edit, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: view.search_button.isEnabled() and view.status.text().endswith("events"), timeout=TIMEOUT)
    ids = {view.model.index(r, 8).data() for r in range(view.model.rowCount())}
    assert ids == {YAMADA.patient_id}

    # Verify: intact; a row altered behind the node's back: broken at that row, in red
    QTest.mouseClick(view.verify_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "intact" in view.status.text(), timeout=TIMEOUT)
    with archive.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET user = 'nobody' WHERE pk = :pk"), {"pk": opened["pk"]})
    view.activateWindow()
    QTest.keyClick(view, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: "BROKEN" in view.status.text(), timeout=TIMEOUT)
    assert f"event {opened['pk']}" in view.status.text() and "200" in view.status.styleSheet()
