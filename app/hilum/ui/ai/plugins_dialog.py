"""Tools → AI plugins…: the installed plugins, what they are for, what is wrong with them, the rules.

Read-only: a list of discovered plugins (:func:`hilum.ai.discover`; a plugin with problems is
marked), and for the selected one its name, version, licence, intended use, what it accepts
and produces, its model files, its validation problems, and the auto-run rules of
``hilum.toml`` (``[[ai.rules]]``) that name it. "Rescan" discovers again (off the GUI thread).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from hilum.ai.model import PluginInfo
from hilum.ui.icons import icon

__all__ = ["PluginsDialog", "plugin_html", "rules_of"]


def rules_of(config_extra: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``[[ai.rules]]`` tables of ``hilum.toml`` (as read, unvalidated)."""
    ai = config_extra.get("ai") if isinstance(config_extra, Mapping) else None
    rules = ai.get("rules", []) if isinstance(ai, Mapping) else []
    return [dict(r) for r in rules if isinstance(r, Mapping)] if isinstance(rules, list) else []


def _rule_text(rule: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} = {v!r}" for k, v in rule.items())


def plugin_html(info: PluginInfo, rules: Sequence[Mapping[str, Any]]) -> str:
    """The detail pane of one plugin as HTML."""
    e = html.escape
    m = info.manifest
    parts = [f"<h3>{e(info.title or info.name)}</h3>", "<table cellspacing='0' cellpadding='2'>"]

    def row(k: str, v: str) -> None:
        parts.append(f"<tr><td valign='top'><b>{e(k)}</b></td><td>{v}</td></tr>")

    row("Name", e(info.name))
    row("Version", e(info.version))
    if info.distribution:
        row("Package", e(info.distribution))
    if m is not None:
        row("Licence", e(m.licence))
        a = m.accepts
        acc = [f"modality {'/'.join(a.modalities) or 'any'}", f"body part {'/'.join(a.body_parts) or 'any'}",
               f"{a.dimensions}"]  # fmt: skip
        if a.sop_classes:
            acc.append("SOP classes " + ", ".join(a.sop_classes))
        row("Accepts", e("; ".join(acc)))
        prods = []
        for p in m.produces:
            text = p.kind
            if p.segments:
                text += " (" + ", ".join(s.name for s in p.segments) + ")"
            prods.append(text)
        row("Produces", e("; ".join(prods)))
        row(
            "Input",
            e(
                f"{m.input.layout}, normalise {m.input.normalise}"
                + (f", window centre {m.input.window[0]:g} width {m.input.window[1]:g}" if m.input.window else "")
            ),
        )
        row("Models", "<br>".join(e(f"{x.file} (sha256 {x.sha256[:12]}…)") for x in m.models))
        row("Results", e(f'Series Description "{m.series_description}"'))
    if info.path is not None:
        row("Manifest", e(str(info.path)))
    parts.append("</table>")
    if m is not None:
        parts.append(f"<p><b>Intended use</b><br>{e(m.intended_use).replace(chr(10), '<br>')}</p>")
    if info.problems:
        items = "".join(f"<li>{e(p)}</li>" for p in info.problems)
        parts.append(f"<p style='color:#b00020'><b>Problems — this plugin cannot run:</b></p><ul>{items}</ul>")
    else:
        parts.append(
            "<p style='color:#1b5e20'>Valid: the manifest follows the contract and its model files are "
            "there (their checksums are verified each time it runs).</p>"
        )
    mine = [r for r in rules if str(r.get("plugin", "")) == info.name]
    parts.append("<p><b>Auto-run rules</b> (hilum.toml, [[ai.rules]], read-only)<br>")
    if mine:
        parts.append("<br>".join(e(_rule_text(r)) for r in mine))
    else:
        parts.append("none: this plugin runs only when asked")
    parts.append("</p>")
    return "".join(parts)


class PluginsDialog(QDialog):
    """The plugin manager (non-modal). *rescan* is called with a callback taking the new list."""

    def __init__(self, plugins: Sequence[PluginInfo], rules: Sequence[Mapping[str, Any]],
                 rescan: Callable[[], None] | None = None, parent: QWidget | None = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.setObjectName("aiPluginsDialog")
        self.setWindowTitle("AI plugins")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        self.rules = list(rules)
        self.plugins: list[PluginInfo] = []
        self.list = QListWidget(self)
        self.list.setObjectName("aiPluginList")
        self.list.setMinimumWidth(220)
        self.details = QTextBrowser(self)
        self.details.setObjectName("aiPluginDetails")
        self.list.currentRowChanged.connect(self._show)
        split = QHBoxLayout()
        split.addWidget(self.list)
        split.addWidget(self.details, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.close)
        self.rescan_btn = QPushButton("Rescan", self)
        self.rescan_btn.setObjectName("aiRescan")
        self.rescan_btn.setToolTip("Look for installed plugins again")
        self.rescan_btn.setEnabled(rescan is not None)
        if rescan is not None:
            self.rescan_btn.clicked.connect(lambda _c=False: rescan())
        buttons.addButton(self.rescan_btn, QDialogButtonBox.ButtonRole.ActionRole)
        lay = QVBoxLayout(self)
        lay.addLayout(split, 1)
        lay.addWidget(buttons)
        self.resize(820, 520)
        self.set_plugins(plugins)

    def set_plugins(self, plugins: Sequence[PluginInfo]) -> None:
        keep = self.list.currentItem().text() if self.list.currentItem() is not None else ""
        self.plugins = list(plugins)
        self.list.clear()
        for p in self.plugins:
            item = QListWidgetItem(f"{p.name} {p.version}")
            item.setToolTip(p.title)
            item.setIcon(icon("mdi6.check-circle-outline" if p.ok else "mdi6.alert-circle-outline",
                              "ok" if p.ok else "!"))  # fmt: skip
            self.list.addItem(item)
        if not self.plugins:
            self.details.setHtml(
                "<p>No AI plugin is installed.</p><p>A plugin is a Python package registering an entry point "
                "in the group <code>hilum.plugins</code> (see README, “AI plugins”); install one with "
                "<code>pip install</code> and press Rescan.</p>"
            )
            return
        names = [f"{p.name} {p.version}" for p in self.plugins]
        self.list.setCurrentRow(names.index(keep) if keep in names else 0)

    def _show(self, row: int) -> None:
        if 0 <= row < len(self.plugins):
            self.details.setHtml(plugin_html(self.plugins[row], self.rules))

    def details_text(self) -> str:
        return self.details.toPlainText()
