"""The workstation's Storage panel (issue 17): where the archive's bytes are and what the storage policies do.

View → Storage (Ctrl+Shift+U) opens a dock beside the transfers and the prefetch:

* the online store's use against its capacity, with the retention watermarks
  (purging starts at the high one and goes down to the low one) — the bar turns
  red above the high watermark;
* the space compression saved; what lies off line;
* tabs: the instances held on each tier and peer (``Copies``), the forwarding
  queue per destination (pending / sent / committed / failed, the last error),
  the protected studies and patients, the recent policy log, and the result of
  a dry run;
* **Dry run** lists, per policy, every study its rules would act on and why,
  changing nothing; **Run now** applies the passes (compression, tier moves,
  retention) one after the other with a progress bar, and can be stopped
  between passes.

Everything is read and run off the GUI thread (:class:`hilum.ui.tasks.TaskRunner`;
DESIGN.md "The GUI never waits"): the status through
:func:`hilum.archive.storage_status.storage_status`, the passes through
:func:`hilum.archive.policy.run_pass`.  The rules are the archive's
(``archive.policies``, set when the node configured its storage) or else read
from the data folder's ``hilum.toml``; a rule file that is refused shows its
error, line and reason, in red.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import (
    QDockWidget,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from hilum.ui.study_search import format_person_name
from hilum.ui.tasks import Job, TaskRunner
from hilum.ui.transfers import job_table

log = logging.getLogger(__name__)

__all__ = ["StorageController", "StoragePanel", "install_storage", "human_bytes"]

SHORTCUT = "Ctrl+Shift+U"
REFRESH_MS = 30_000
"""While the dock is shown, its figures are read again this often (and after each run)."""
AFTER_CHANGE_MS = 2_000
"""...and this long after the archive changed (instances arrived, a study deleted)."""
PASSES = ("compression", "tiers", "retention")
RED = "#b00020"
HIGH_MARK = "#202020"
LOW_MARK = "#e08000"

COPY_COLUMNS = ("Location", "Instances", "Verified", "Size")
FORWARD_COLUMNS = ("Destination", "Pending", "Sent", "Committed", "Failed", "Next try", "Last error")
PROTECT_COLUMNS = ("Level", "UID", "Reason", "Since")
LOG_COLUMNS = ("When", "Action", "UID", "Rule", "Instances", "Before", "After", "Detail")
PLAN_COLUMNS = ("Policy", "Study", "Patient, study", "Rule", "Instances", "Size", "Reason")
_VERBS = {"compression": "compress", "tiers": "move", "retention": "purge"}


def human_bytes(n: float) -> str:
    """``532 KB``, ``12.4 MB``, ``1.20 GB``, ``3.10 TB``."""
    n = float(n)
    for unit, scale in (("TB", 1e12), ("GB", 1e9)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} KB" if abs(n) >= 1e3 else f"{int(n)} B"


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M")
    return str(value or "")


def _fill(
    table: QTableWidget,
    rows: list[tuple[Any, ...]],
    *,
    red: Callable[[tuple[Any, ...]], bool] | None = None,
    tips: list[str] | None = None,
) -> None:
    table.setRowCount(0)
    table.setRowCount(len(rows))
    for r, values in enumerate(rows):
        bad = red is not None and red(values)
        for c, value in enumerate(values):
            item = QTableWidgetItem("" if value is None else str(value))
            if isinstance(value, int | float):
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if bad:
                item.setForeground(Qt.GlobalColor.darkRed)
            if tips is not None and tips[r]:
                item.setToolTip(tips[r])
            table.setItem(r, c, item)


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


class WatermarkBar(QProgressBar):
    """The online store's use (0-1000 per mille), with the low (amber) and high (dark) watermarks drawn across it."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setRange(0, 1000)
        self.setTextVisible(True)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.high = 0.0
        self.low = 0.0

    def set_watermarks(self, high: float, low: float) -> None:
        self.high, self.low = float(high), float(low)
        self.update()

    def mark_x(self, percent: float) -> int:
        return int(round(self.width() * percent / 100.0))

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802
        super().paintEvent(event)
        if not self.high:
            return
        painter = QPainter(self)
        for percent, colour in ((self.low, LOW_MARK), (self.high, HIGH_MARK)):
            if 0 < percent < 100:
                painter.setPen(QPen(QColor(colour), 3))
                x = self.mark_x(percent)
                painter.drawLine(x, 0, x, self.height())
        painter.end()


class StoragePanel(QWidget):
    """Usage, watermarks, compression, the tabs (copies, forwarding, protections, log, dry run) and the buttons."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("storagePanel")
        self.rules_label = QLabel("Storage policies: …", self)
        self.rules_label.setObjectName("storageRules")
        self.rules_label.setWordWrap(True)
        self.usage_bar = WatermarkBar(self)
        self.usage_bar.setObjectName("storageUsageBar")
        self.usage_label = QLabel("Online store: …", self)
        self.usage_label.setObjectName("storageUsage")
        self.usage_label.setWordWrap(True)
        self.saved_label = QLabel("", self)
        self.saved_label.setObjectName("storageSaved")
        self.saved_label.setWordWrap(True)

        self.tabs = QTabWidget(self)
        self.tabs.setObjectName("storageTabs")
        self.copies = job_table(COPY_COLUMNS, "storageCopiesTable", self)
        self.forwarding = job_table(FORWARD_COLUMNS, "storageForwardTable", self)
        self.protections = job_table(PROTECT_COLUMNS, "storageProtectionsTable", self)
        self.log_table = job_table(LOG_COLUMNS, "storageLogTable", self)
        self.plan = job_table(PLAN_COLUMNS, "storagePlanTable", self)
        for table, stretch in (
            (self.copies, 0),
            (self.forwarding, 6),
            (self.protections, 1),
            (self.log_table, 7),
            (self.plan, 6),
        ):
            header = table.horizontalHeader()
            header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
            header.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
        self.tabs.addTab(self.copies, "Tiers && copies")
        self.tabs.addTab(self.forwarding, "Forwarding")
        self.tabs.addTab(self.protections, "Protections")
        self.tabs.addTab(self.log_table, "Policy log")
        self.tabs.addTab(self.plan, "Dry run")

        self.refresh_button = QPushButton("Refresh", self)
        self.refresh_button.setObjectName("storageRefreshButton")
        self.refresh_button.setToolTip("Read the figures again")
        self.dry_run_button = QPushButton("Dry run", self)
        self.dry_run_button.setObjectName("storageDryRunButton")
        self.dry_run_button.setToolTip("List what the storage rules would do now, changing nothing")
        self.run_button = QPushButton("Run now", self)
        self.run_button.setObjectName("storageRunButton")
        self.run_button.setToolTip("Apply the storage rules now: compression, tier moves, retention")
        self.stop_button = QPushButton("Stop", self)
        self.stop_button.setObjectName("storageStopButton")
        self.stop_button.setToolTip("Stop after the policy being applied now")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar(self)
        self.progress.setObjectName("storageRunProgress")
        self.progress.setRange(0, len(PASSES))
        self.progress.setValue(0)
        self.progress.setFormat("%v of %m policies")
        self.progress.hide()
        self.run_label = QLabel("", self)
        self.run_label.setObjectName("storageRunState")
        self.run_label.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.refresh_button)
        buttons.addStretch(1)
        buttons.addWidget(self.dry_run_button)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.rules_label)
        layout.addWidget(self.usage_bar)
        layout.addWidget(self.usage_label)
        layout.addWidget(self.saved_label)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.run_label)
        layout.addLayout(buttons)
        self.status: dict[str, Any] | None = None

    # ------------------------------------------------------------ showing

    def text(self, table: QTableWidget, row: int, column: int) -> str:
        item = table.item(row, column)
        return item.text() if item is not None else ""

    def rows(self, table: QTableWidget) -> list[list[str]]:
        return [[self.text(table, r, c) for c in range(table.columnCount())] for r in range(table.rowCount())]

    def show_error(self, message: str) -> None:
        """The rules could not be read (a typo in hilum.toml) or the index not: said in red."""
        self.rules_label.setText(message)
        self.rules_label.setStyleSheet(f"color: {RED};")

    def show_status(self, st: dict[str, Any]) -> None:
        """Show a :func:`hilum.archive.storage_status.storage_status`."""
        self.status = st
        rules = ", ".join(f"{name} {n} rule{'s' if n != 1 else ''}" for name, n in st["rules"].items() if n)
        state = "on" if st["policies_enabled"] else "off on this node ([storage] policies = false)"
        self.rules_label.setText(f"Storage policies: {state}; " + (rules or "no rules in hilum.toml"))
        self.rules_label.setStyleSheet("")
        on = st["online"]
        high, low, used = on["high_watermark"], on["low_watermark"], on["used_percent"]
        self.usage_bar.setValue(int(round(min(used, 100.0) * 10)))
        self.usage_bar.set_watermarks(high, low)
        self.usage_bar.setFormat(f"{used:g}% used" + (f" (purge at {high:g}% down to {low:g}%)" if high else ""))
        over = bool(high) and used >= high
        self.usage_bar.setStyleSheet(
            f"QProgressBar {{ color: white; }} QProgressBar::chunk {{ background: {RED}; }}" if over else ""
        )
        self.usage_bar.setToolTip(
            f"{human_bytes(on['used_bytes'])} of {human_bytes(on['capacity_bytes'])} ({on['capacity_from']})"
        )
        marks = f"; watermarks: purge from {high:g}% down to {low:g}%" if high else "; no watermark purge"
        self.usage_label.setText(
            f"Online store: {plural(on['instances'], 'instance')}, {human_bytes(on['bytes'])} in "
            f"{on['studies']:,} stud{'y' if on['studies'] == 1 else 'ies'}; "
            f"{used:g}% of {human_bytes(on['capacity_bytes'])} used ({on['capacity_from']}){marks}"
        )
        comp, off = st["compression"], st["offline"]
        saved = (
            f"Compression saved {human_bytes(comp['saved_bytes'])} on {plural(comp['instances'], 'instance')}"
            if comp["instances"]
            else "Compression saved nothing yet"
        )
        if off["instances"]:
            saved += f"; off line: {plural(off['instances'], 'instance')}, {human_bytes(off['bytes'])} (recalled when opened)"
        if st.get("trash"):
            saved += f"; {st['trash']} blob(s) waiting to be reaped"
        self.saved_label.setText(saved)
        copies = [("online", on["instances"], on["instances"], human_bytes(on["bytes"]))]
        copies += [(c["location"], c["instances"], c["verified"], human_bytes(c["bytes"])) for c in st["copies"]]
        _fill(self.copies, copies)
        fwd = st["forwarding"]
        _fill(
            self.forwarding,
            [
                (
                    f.get("destination", "?"),
                    f.get("pending", 0),
                    f.get("sent", 0),
                    f.get("committed", 0),
                    f.get("failed", 0),
                    _when(f.get("next_try")) if f.get("pending") else "",
                    f.get("last_error") or f.get("error") or "",
                )
                for f in fwd
            ],
            red=lambda r: bool(r[4]) or bool(r[6]),
            tips=[str(f.get("last_error") or f.get("error") or "") for f in fwd],
        )
        self.tabs.setTabText(1, f"Forwarding ({len(fwd)})")
        prot = st["protections"]
        _fill(
            self.protections,
            [(p["level"].title(), p["uid"], p.get("reason", ""), _when(p.get("created_at"))) for p in prot],
        )
        self.tabs.setTabText(2, f"Protections ({len(prot)})")
        recent = st["recent"]
        _fill(
            self.log_table,
            [
                (
                    _when(r["at"]),
                    r["action"],
                    r["uid"],
                    r["rule"],
                    r["instances"],
                    human_bytes(r["bytes_before"]),
                    human_bytes(r["bytes_after"]),
                    r["detail"],
                )
                for r in recent
            ],
            tips=[r["detail"] for r in recent],
        )

    def show_plan(self, reports: list[Any], *, dry_run: bool, who: dict[str, str] | None = None) -> None:
        """What a dry run would do (or what a run did), one row per study and policy; ``who`` names each
        study's patient, date and description (by Study Instance UID)."""
        rows, errors = [], []
        who = who or {}
        for rep in reports:
            for a in rep.actions:
                rows.append(
                    (
                        rep.task,
                        a.get("uid", ""),
                        who.get(str(a.get("uid", "")), ""),
                        a.get("rule", ""),
                        int(a.get("instances", 0)),
                        human_bytes(a.get("bytes", 0)),
                        a.get("reason", ""),
                    )
                )
            errors += [f"{rep.task}: {e}" for e in rep.errors]
        _fill(self.plan, rows)
        self.tabs.setTabText(4, ("Dry run" if dry_run else "Last run") + f" ({len(rows)})")
        self.tabs.setCurrentWidget(self.plan)
        what = "would act on" if dry_run else "acted on"
        text = f"{'Dry run' if dry_run else 'Run'}: the rules {what} {len(rows)} stud{'y' if len(rows) == 1 else 'ies'}"
        if not dry_run:
            saved = sum(r.saved for r in reports)
            if saved:
                text += f", saving {human_bytes(saved)}"
        if errors:
            text += "\n" + "\n".join(errors)
        self.run_label.setText(text + ("" if dry_run else "."))
        self.run_label.setStyleSheet(f"color: {RED};" if errors else "")

    def set_running(self, running: bool, dry_run: bool = False) -> None:
        for b in (self.dry_run_button, self.run_button):
            b.setEnabled(not running)
        self.stop_button.setEnabled(running and not dry_run)
        self.progress.setVisible(running)
        if running:
            self.progress.setValue(0)
            self.run_label.setStyleSheet("")
            self.run_label.setText(
                "Dry run: looking at what the rules would do…" if dry_run else "Applying the storage rules…"
            )


class StorageController(QObject):
    """The Storage dock in the main window: its figures read and its passes run off the GUI thread."""

    def __init__(self, window: Any):
        super().__init__(window)
        self.window = window
        self.archive = window.archive
        self._closed = False
        self._running = False
        self._dry = False
        self.job: Job | None = None
        self.runner = TaskRunner(max_workers=1, name="hilum-storage-status", parent=self)
        self.pass_runner = TaskRunner(max_workers=1, name="hilum-storage-run", parent=self)
        self.panel = StoragePanel()
        self.dock = QDockWidget("Storage", window)
        self.dock.setObjectName("storageDock")
        self.dock.setWidget(self.panel)
        self.dock.setAllowedAreas(Qt.DockWidgetArea.BottomDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea)
        window.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.dock)
        for other in ("prefetch", "transfers"):
            dock = getattr(getattr(window, other, None), "dock", None)
            if isinstance(dock, QDockWidget):
                window.tabifyDockWidget(dock, self.dock)
                break
        self.dock.hide()
        self.show_action = self.dock.toggleViewAction()
        self.show_action.setText("S&torage")
        self.show_action.setObjectName("showStorageAction")
        self.show_action.setShortcut(SHORTCUT)
        self.show_action.setStatusTip("Show the storage: online use and watermarks, tiers, forwarding, policy log")
        window.view_menu.addAction(self.show_action)
        window.addAction(self.show_action)
        window.add_shortcut_help("General", SHORTCUT, "Show the storage (use, tiers, forwarding, dry run, run now)")
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self.dock.visibilityChanged.connect(self._on_visible)
        # Instances arriving, a study deleted: read the figures again soon (once per burst) while shown.
        self._soon = QTimer(self)
        self._soon.setSingleShot(True)
        self._soon.setInterval(AFTER_CHANGE_MS)
        self._soon.timeout.connect(self.refresh)
        changed = getattr(window, "archive_changed", None)
        if changed is not None:
            changed.connect(self._on_archive_changed)
        self.panel.refresh_button.clicked.connect(self.refresh)
        self.panel.dry_run_button.clicked.connect(lambda: self.run(dry_run=True))
        self.panel.run_button.clicked.connect(lambda: self.run(dry_run=False))
        self.panel.stop_button.clicked.connect(self.stop)

    # ------------------------------------------------------------ the rules

    def policies(self) -> Any:
        """The rules of the data folder's hilum.toml as they are now (worker thread): a rule just edited shows in
        the next Refresh and Dry run, a typo as its error.  Without a hilum.toml, the archive's own."""
        from hilum.archive.policy import load_policies

        config = getattr(self.window, "config", None)
        if config is None or not config.config_path.exists():
            policies = getattr(self.archive, "policies", None)
            if policies is not None:
                return policies
        return load_policies(config)

    # ------------------------------------------------------------ figures

    def _on_visible(self, visible: bool) -> None:
        if self._closed:
            return
        if visible:
            self.refresh()
            self.timer.start()
        else:
            self.timer.stop()

    def _on_archive_changed(self, _events: Any) -> None:
        if not self._closed and self.dock.isVisible() and not self._soon.isActive():
            self._soon.start()

    def refresh(self) -> None:
        """Read the figures again (off the GUI thread)."""
        if self._closed:
            return
        from hilum.archive.storage_status import storage_status

        def read() -> dict[str, Any]:
            return storage_status(self.archive, self.policies())

        self.runner.submit(read, on_done=self._on_status, on_error=self._on_status_error)

    def _on_status(self, st: dict[str, Any]) -> None:
        if not self._closed:
            self.panel.show_status(st)

    def _on_status_error(self, exc: BaseException) -> None:
        if not self._closed:
            self.panel.show_error(f"Storage: {exc}")

    # ------------------------------------------------------------ running

    def run(self, *, dry_run: bool) -> None:
        """Dry run (list, change nothing) or run now, each policy in turn with progress (off the GUI thread)."""
        if self._closed or self._running:
            return
        from hilum.archive.policy import run_pass

        self._running, self._dry = True, dry_run
        job = self.job = Job(self)
        job.progressed.connect(self._on_progress)
        self.panel.set_running(True, dry_run)

        def work() -> tuple[list[Any], dict[str, str]]:
            policies = self.policies()
            reports: list[Any] = []
            for i, name in enumerate(PASSES):
                if job.cancelled:
                    break
                job.report(i, len(PASSES), name, force=True)
                reports += run_pass(self.archive, policies, dry_run=dry_run, only=[name])
                job.report(i + 1, len(PASSES), name, force=True)
            return reports, self.studies_named([str(a.get("uid", "")) for r in reports for a in r.actions])

        self.pass_runner.submit(
            work, on_done=lambda done: self._on_ran(done[0], dry_run, done[1]), on_error=self._on_run_error
        )

    def studies_named(self, uids: list[str]) -> dict[str, str]:
        """``{study UID: "Patient^Name, 2026-11-02, CT Thorax"}`` for the studies still in the archive (worker)."""
        out: dict[str, str] = {}
        wanted = sorted({u for u in uids if u})
        for start in range(0, len(wanted), 200):
            try:
                rows = self.archive.query("STUDY", {"StudyInstanceUID": "\\".join(wanted[start : start + 200])})
            except Exception as exc:  # noqa: BLE001 - the names are a courtesy
                log.warning("storage panel: naming the studies failed: %s", exc)
                break
            for r in rows:
                date = str(r.get("StudyDate") or "")
                parts = [
                    format_person_name(str(r.get("PatientName") or "")),
                    f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 else date,
                    str(r.get("StudyDescription") or ""),
                ]
                out[str(r["StudyInstanceUID"])] = ", ".join(p for p in parts if p)
        return out

    def stop(self) -> None:
        """Stop after the policy being applied now."""
        if self.job is not None:
            self.job.cancel()
            self.panel.stop_button.setEnabled(False)
            self.panel.run_label.setText("Stopping after the policy being applied now…")

    def _on_progress(self, done: int, total: int, label: str) -> None:
        if self._closed:
            return
        self.panel.progress.setMaximum(total or len(PASSES))
        self.panel.progress.setValue(done)
        if done < total:
            self.panel.run_label.setText(f"{'Dry run' if self._dry else 'Applying'}: {label} ({done + 1} of {total})…")

    def _on_ran(self, reports: list[Any], dry_run: bool, who: dict[str, str] | None = None) -> None:
        self._running = False
        if self._closed:
            return
        stopped = self.job is not None and self.job.cancelled
        self.job = None
        self.panel.set_running(False)
        self.panel.show_plan(reports, dry_run=dry_run, who=who)
        if stopped:
            self.panel.run_label.setText(self.panel.run_label.text() + " Stopped before the last policies.")
        self.refresh()

    def _on_run_error(self, exc: BaseException) -> None:
        self._running = False
        self.job = None
        if self._closed:
            return
        self.panel.set_running(False)
        self.panel.run_label.setText(f"Storage policies: {exc}")
        self.panel.run_label.setStyleSheet(f"color: {RED};")

    @property
    def running(self) -> bool:
        return self._running

    def shutdown(self) -> None:
        """The window is closing: stop a run between passes, wait for it, deliver nothing more."""
        if self._closed:
            return
        self._closed = True
        self.timer.stop()
        self._soon.stop()
        if self.job is not None:
            self.job.cancel()
        self.runner.shutdown(wait=True)
        self.pass_runner.shutdown(wait=True)


def install_storage(window: Any) -> StorageController | None:
    """Add the Storage dock (View → Storage, Ctrl+Shift+U) to *window*; never fatal."""
    try:
        return StorageController(window)
    except Exception:  # noqa: BLE001 - the workstation must open without the storage panel
        log.exception("the storage panel could not be installed")
        return None
