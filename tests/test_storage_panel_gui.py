"""The workstation's Storage panel, driven as a person would: Ctrl+Shift+U opens it; it shows the online use
against capacity and watermarks (red above the high one), the space compression saved, the instances on each
tier, forwarding per destination (a failing one in red with its error), protections and the policy log; the
real Dry run button lists what the rules would do and changes nothing; Run now applies them with progress and
the log shows what was done; a rule file with a typo is shown in red with its line.

The policies and forwarding modules are other helpers' parts (issue 17): a retention policy and a forwarding
status of the test's own stand in for them, and the rows shown are made through :mod:`hilum.archive.storage`.
"""

from __future__ import annotations

import os
import sys
import types
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from hilum.archive import Archive, policy, storage
from hilum.archive.schema import instances
from hilum.config import Config
from hilum.ui.study_search import format_person_name

pytestmark = pytest.mark.gui

CTRL_SHIFT = Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier
TIMEOUT = 30_000
FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")
SHOTS = os.environ.get("HILUM_SCREENSHOTS", "")


@pytest.fixture
def stand_ins(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A retention policy (``[retention]`` watermarks, ``[[fake]]`` rules that purge-log every study) and a
    forwarding status (two destinations, one failing)."""
    calls: list[bool] = []

    class Rules:
        def __init__(self, doc: dict[str, Any]):
            ret = doc.get("retention", {})
            self.high_watermark = ret.get("high_watermark", 0)
            self.low_watermark = ret.get("low_watermark", 0)
            self.capacity_bytes = ret.get("capacity_bytes", 0)
            self.rules = [r["name"] for r in doc.get("fake", [])]

    def parse(doc: dict[str, Any], text: str, source: str) -> Rules:
        for i, r in enumerate(doc.get("fake", [])):
            for key in r:
                if key != "name":
                    raise storage.rule_error(source, text, "fake", "unknown key", key=key, index=i)
        return Rules(doc)

    def run_once(
        archive: Archive, rules: Rules, *, dry_run: bool = False, now: datetime | None = None
    ) -> storage.TaskReport:
        calls.append(dry_run)
        report = storage.TaskReport("retention", dry_run=dry_run)
        for name in rules.rules:
            for st in archive.query("STUDY", {}):
                uid = st["StudyInstanceUID"]
                report.actions.append(
                    {"uid": uid, "rule": name, "instances": 1, "bytes": 1_500_000, "reason": "idle for 400 days"}
                )
                if not dry_run:
                    with archive.transaction() as conn:
                        storage.log_action(conn, "purge", uid, rule=name, instances=1, bytes_before=1_500_000)
        return report

    ret = types.ModuleType("hilum_test_gui_retention")
    ret.parse, ret.run_once = parse, run_once  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hilum_test_gui_retention", ret)
    monkeypatch.setitem(policy.POLICIES, "retention", "hilum_test_gui_retention")
    fwd = types.ModuleType("hilum.archive.forward")
    fwd.parse = lambda doc, text, source: []  # type: ignore[attr-defined]
    fwd.status = lambda archive: [  # type: ignore[attr-defined]
        {"destination": "backup", "pending": 0, "sent": 2, "committed": 40, "failed": 0, "last_error": ""},
        {
            "destination": "cloud",
            "pending": 7,
            "sent": 0,
            "committed": 0,
            "failed": 1,
            "next_try": datetime(2026, 12, 6, 13, 0, tzinfo=UTC),
            "last_error": "association rejected: called AE title not recognised",
        },
    ]
    monkeypatch.setitem(sys.modules, "hilum.archive.forward", fwd)
    return {"calls": calls}


def _archive(data: Path, pydicom_files: Path) -> tuple[Archive, list[str]]:
    archive = Archive(data)
    for name in FILES:
        archive.ingest(pydicom_files / name)
    studies = sorted(r["StudyInstanceUID"] for r in archive.query("STUDY", {}))
    with archive.engine.connect() as conn:
        pks = [r[0] for r in conn.execute(instances.select().with_only_columns(instances.c.pk))]
    with archive.transaction() as conn:
        for pk in pks[:2]:
            storage.record_copy(conn, pk, "tier:archive", key=f"k/{pk}", checksum="xxh128:0", size=4000)
        storage.log_action(
            conn, "compress", studies[0], rule="ct", instances=1, bytes_before=3_000_000, bytes_after=1_000_000
        )
    storage.protect(archive, "STUDY", studies[1], reason="court case")
    return archive, studies


def _activate(qtbot: Any, window: Any) -> None:
    """A shortcut needs its window active (under Xvfb without a window manager: asked for)."""
    window.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is window, timeout=5000)


def _open_panel(qtbot: Any, window: Any) -> Any:
    window.show()
    qtbot.waitExposed(window)
    _activate(qtbot, window)
    QTest.keyClick(window, Qt.Key.Key_U, CTRL_SHIFT)
    controller = window.storage
    qtbot.waitUntil(lambda: controller.dock.isVisible(), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: controller.panel.status is not None, timeout=TIMEOUT)
    return controller


def _has_colour(image: Any, colour: QColor, tolerance: int = 40) -> bool:
    for y in range(0, image.height(), 2):
        for x in range(0, image.width(), 2):
            c = image.pixelColor(x, y)
            if (
                abs(c.red() - colour.red()) + abs(c.green() - colour.green()) + abs(c.blue() - colour.blue())
                < tolerance
            ):
                return True
    return False


def test_storage_panel_shows_the_figures_and_runs_the_rules(
    qtbot: Any, make_main_window: Any, data_dir: Path, pydicom_files: Path, stand_ins: dict[str, Any]
) -> None:
    archive, studies = _archive(data_dir, pydicom_files)
    size = archive.stats()["bytes"]
    # Capacity 1.25x what is stored: 80% used, above the high watermark of 75.
    (data_dir / "hilum.toml").write_text(
        f"[retention]\nhigh_watermark = 75\nlow_watermark = 60\ncapacity_bytes = {size * 5 // 4}\n\n"
        '[[fake]]\nname = "idle-cr"\n'
    )
    cfg = Config(data_dir=data_dir)
    from hilum.archive.policy import load_policies

    archive.policies = load_policies(cfg)  # type: ignore[attr-defined]  # as the node's configure_storage sets it
    window = make_main_window(cfg, archive)
    action = window.findChild(type(window.storage.show_action), "showStorageAction")
    assert action is not None and action.shortcut().toString() == "Ctrl+Shift+U"
    assert any(s.keys == "Ctrl+Shift+U" for s in window.shortcut_help())
    controller = _open_panel(qtbot, window)
    panel = controller.panel

    assert "Storage policies: on; retention 1 rule" in panel.rules_label.text()
    usage = panel.usage_label.text()
    assert "Online store: 3 instances" in usage and "3 studies" in usage
    assert "80% of" in usage and "(capacity_bytes)" in usage and "purge from 75% down to 60%" in usage
    bar = panel.usage_bar
    assert bar.value() == 800 and "80% used (purge at 75% down to 60%)" in bar.text()
    image = bar.grab().toImage()
    assert _has_colour(image, QColor("#b00020"))  # above the high watermark: red
    # The watermarks drawn across the bar where they are: low (amber) at 60%, high (dark) at 75%.
    low = image.copy(bar.mark_x(60) - 2, 0, 5, image.height())
    high = image.copy(bar.mark_x(75) - 2, 0, 5, image.height())
    assert _has_colour(low, QColor("#e08000")) and not _has_colour(high, QColor("#e08000"))
    assert _has_colour(high, QColor("#202020"), 30)
    assert panel.saved_label.text().startswith("Compression saved 2.0 MB on 1 instance")
    copies = panel.rows(panel.copies)
    assert copies[0][:3] == ["online", "3", "3"] and copies[1] == ["tier:archive", "2", "2", "8 KB"]
    fwd = panel.rows(panel.forwarding)
    assert fwd[0] == ["backup", "0", "2", "40", "0", "", ""]
    assert fwd[1][:5] == ["cloud", "7", "0", "0", "1"] and "not recognised" in fwd[1][6]
    assert fwd[1][5] == datetime(2026, 12, 6, 13, 0, tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M")
    assert panel.forwarding.item(1, 0).foreground().color() == QColor(Qt.GlobalColor.darkRed)
    assert panel.tabs.tabText(1) == "Forwarding (2)"
    assert panel.rows(panel.protections)[0][:3] == ["Study", studies[1], "court case"]
    log_rows = panel.rows(panel.log_table)
    assert [r[1] for r in log_rows] == ["compress"] and log_rows[0][2] == studies[0]
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        panel.tabs.setCurrentWidget(panel.forwarding)
        qtbot.wait(50)
        window.grab().save(str(Path(SHOTS) / "storage_panel_window.png"))
        panel.tabs.setCurrentIndex(0)

    # Dry run: the real button; the list of what the rules would do; nothing changed.
    QTest.mouseClick(panel.dry_run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not controller.running and panel.plan.rowCount() == 3, timeout=TIMEOUT)
    assert stand_ins["calls"] == [True]
    plan = panel.rows(panel.plan)
    assert sorted(r[1] for r in plan) == studies
    assert plan[0][0] == "retention" and plan[0][3:] == ["idle-cr", "1", "1.5 MB", "idle for 400 days"]
    names = {r[1]: r[2] for r in plan}
    study = archive.query("STUDY", {"StudyInstanceUID": studies[0]})[0]
    assert names[studies[0]].startswith(format_person_name(str(study["PatientName"])) + ", ")
    assert panel.tabs.currentWidget() is panel.plan and panel.tabs.tabText(4) == "Dry run (3)"
    assert panel.run_label.text() == "Dry run: the rules would act on 3 studies"
    assert len(storage.policy_history(archive)) == 1
    if SHOTS:
        qtbot.wait(50)
        controller.dock.grab().save(str(Path(SHOTS) / "storage_panel_dry_run.png"))

    # Run now: progress through the three policies, then the log shows what was done.
    seen: list[int] = []
    panel.progress.valueChanged.connect(seen.append)
    QTest.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    assert not panel.run_button.isEnabled() and panel.progress.isVisibleTo(panel)
    qtbot.waitUntil(lambda: not controller.running, timeout=TIMEOUT)
    assert stand_ins["calls"] == [True, False]
    assert seen and max(seen) == 3 and not panel.progress.isVisibleTo(panel)
    assert panel.run_label.text() == "Run: the rules acted on 3 studies."
    assert panel.tabs.tabText(4) == "Last run (3)"
    qtbot.waitUntil(lambda: panel.log_table.rowCount() == 4, timeout=TIMEOUT)  # the figures read again
    assert [r[1] for r in panel.rows(panel.log_table)][:3] == ["purge"] * 3
    assert panel.run_button.isEnabled() and panel.dry_run_button.isEnabled()

    # An instance arrives: the figures follow on their own.
    archive.ingest(pydicom_files / "MR_small.dcm")  # the same as stored: nothing new
    archive.ingest(pydicom_files / "waveform_ecg.dcm")
    qtbot.waitUntil(lambda: "Online store: 4 instances" in panel.usage_label.text(), timeout=TIMEOUT)


def test_storage_panel_shows_a_rule_file_refused(
    qtbot: Any,
    make_main_window: Any,
    data_dir: Path,
    pydicom_files: Path,
    stand_ins: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive, _ = _archive(data_dir, pydicom_files)
    monkeypatch.setattr(archive, "policies", None, raising=False)  # the workstation reads hilum.toml itself
    (data_dir / "hilum.toml").write_text('[[fake]]\nname = "a"\n\n[[fake]]\nname = "b"\nmodalites = ["CR"]\n')
    window = make_main_window(Config(data_dir=data_dir), archive)
    window.show()
    qtbot.waitExposed(window)
    _activate(qtbot, window)
    QTest.keyClick(window, Qt.Key.Key_U, CTRL_SHIFT)
    panel = window.storage.panel
    qtbot.waitUntil(lambda: "line 6" in panel.rules_label.text(), timeout=TIMEOUT)
    assert "[[fake]] #2 modalites: unknown key" in panel.rules_label.text()
    assert "#b00020" in panel.rules_label.styleSheet()
    QTest.mouseClick(panel.dry_run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.storage.running, timeout=TIMEOUT)
    assert "modalites" in panel.run_label.text() and "#b00020" in panel.run_label.styleSheet()
    assert not stand_ins["calls"]
    # Fixed: Refresh shows the rules again.
    (data_dir / "hilum.toml").write_text('[[fake]]\nname = "a"\n')
    QTest.mouseClick(panel.refresh_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "retention 1 rule" in panel.rules_label.text(), timeout=TIMEOUT)
    assert panel.rules_label.styleSheet() == ""
    # Ctrl+Shift+U again hides it.
    _activate(qtbot, window)
    QTest.keyClick(window, Qt.Key.Key_U, CTRL_SHIFT)
    qtbot.waitUntil(lambda: not window.storage.dock.isVisible(), timeout=TIMEOUT)
