"""No key of the whole workstation means two things at once.

Qt fires neither action of an ambiguous shortcut: a window-wide Ctrl+Shift+A (the audit trail) and
the report editor's Ctrl+Shift+A (addendum) made the key dead while the editor had the focus.  Every
part adds its own keys (viewer, MPR, report editor, AI, audit, de-identification, prefetch...), so
this looks at the real window with a study open in the viewer and the report editor docked: two
enabled actions (or shortcuts) on one key conflict when both can be live at once — both window-wide,
or one window-wide and one bound to a widget of that window, or both bound to widgets one of which
holds the other.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QAction, QKeySequence, QShortcut  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QWidget  # noqa: E402

from _viewer_data import STUDY, write_ct  # noqa: E402
from hilum.archive import Archive  # noqa: E402
from hilum.config import load_config  # noqa: E402

TIMEOUT = 30_000
WINDOW_WIDE = (Qt.ShortcutContext.WindowShortcut, Qt.ShortcutContext.ApplicationShortcut)


def _bindings(win: Any) -> list[tuple[str, str, Qt.ShortcutContext, list[QWidget]]]:
    """(key, what, context, the widgets it is bound to) of every action and shortcut (enabled or not: an
    action off now, e.g. Addendum before signing, is on later)."""
    out = []
    for action in win.findChildren(QAction):
        widgets = [w for w in action.associatedObjects() if isinstance(w, QWidget)]
        parent = action.parent()
        if not widgets and isinstance(parent, QWidget):
            widgets = [parent]
        for seq in action.shortcuts():
            if not seq.isEmpty():
                name = action.objectName() or action.text().replace("&", "")
                out.append((seq.toString(), name, action.shortcutContext(), widgets))
    for sc in win.findChildren(QShortcut):
        if not sc.key().isEmpty():
            parent = sc.parent()
            out.append((sc.key().toString(), f"shortcut of {type(parent).__name__}", sc.context(),
                        [parent] if isinstance(parent, QWidget) else []))  # fmt: skip
    return out


def _holds(a: QWidget, b: QWidget) -> bool:
    return a is b or a.isAncestorOf(b)


def _clash(x: tuple[Any, ...], y: tuple[Any, ...]) -> bool:
    _, _, cx, wx = x
    _, _, cy, wy = y
    if cx in WINDOW_WIDE or cy in WINDOW_WIDE:
        return True  # one of them is live wherever the focus is in the window
    if cx == Qt.ShortcutContext.WidgetWithChildrenShortcut or cy == Qt.ShortcutContext.WidgetWithChildrenShortcut:
        return any(_holds(a, b) or _holds(b, a) for a in wx for b in wy)
    return any(a is b for a in wx for b in wy)


def test_no_key_of_the_workstation_is_ambiguous(qtbot: Any, make_main_window: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    archive = Archive(data)
    assert all(r.ok for r in archive.ingest_many(write_ct(tmp_path / "src", rows=32, slices=4, thickness=5.0)))
    win = make_main_window(load_config(data), archive, viewer=True)
    win.resize(1400, 900)
    win.show()
    qtbot.waitExposed(win)
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: win.browser.model.rowCount() == 1 and not win.browser.searching, timeout=TIMEOUT)
    win.browser.table.setFocus()
    win.browser.table.selectRow(win.browser.model.find(STUDY.uid))
    # the study open in the viewer and its report editor docked, as a reader has them: Ctrl+Shift+D
    QTest.keyClick(win, Qt.Key.Key_D, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: win.reporting is not None and win.reporting.dock.isVisible(), timeout=TIMEOUT)
    qtbot.waitUntil(lambda: win.tabs.count() > 1, timeout=TIMEOUT)
    qtbot.waitUntil(lambda: any(a.objectName() == "report_addendum" for a in win.findChildren(QAction)),
                    timeout=TIMEOUT)  # fmt: skip  # the editor is made once the study's reports are read

    bindings = _bindings(win)
    assert len(bindings) > 80  # the whole workstation: browser, viewer, report, AI, audit, export...
    by_key: dict[str, list[tuple[Any, ...]]] = {}
    for b in bindings:
        by_key.setdefault(QKeySequence(b[0]).toString(), []).append(b)
    clashes = []
    for key, group in by_key.items():
        for i, x in enumerate(group):
            for y in group[i + 1 :]:
                if x[1] != y[1] and _clash(x, y):
                    clashes.append(f"{key}: {x[1]!r} and {y[1]!r}")
    assert not clashes, "ambiguous shortcuts:\n" + "\n".join(sorted(set(clashes)))
