"""The storage policies of ``hilum.toml``, read all at once, and the service that applies them.

Each policy is a module of ``archive/`` with two functions::

    parse(doc: dict, text: str, source: str) -> Rules     # its own tables of the TOML document
    run_once(archive, rules, *, dry_run=False, now=None) -> storage.TaskReport

:func:`load_policies` calls every ``parse`` before the node starts; a rule
with a typo raises :class:`~hilum.errors.ConfigError` naming the line and the
reason, and the node does not start with half its policies.
:class:`PolicyService` runs the passes in the background (``[storage]
interval`` seconds apart, and soon after an instance arrives when a rule acts
on ingest): trash reaping, compression, tier moves, retention.  Forwarding
sends over the network and runs in :mod:`hilum.replication`.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any

from hilum.archive.storage import TaskReport, WokenService, reap_trash, rule_error
from hilum.errors import ConfigError

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger("hilum.storage")

#: Policy name -> module; run in this order by a pass.
POLICIES = {
    "compression": "hilum.archive.compress",
    "tiers": "hilum.archive.tiers",
    "retention": "hilum.archive.retention",
    "forwarding": "hilum.archive.forward",
}
PASS_ORDER = ("compression", "tiers", "retention")

AFTER_ARRIVAL = float(os.environ.get("HILUM_POLICY_SETTLE", "5"))
"""Seconds a pass waits after being woken by an arrival, so that one pass handles a whole study."""

STORAGE_KEYS: dict[str, type | tuple[type, ...]] = {"node_name": str, "interval": (int, float), "policies": bool}


@dataclass
class Policies:
    """Every storage rule of one ``hilum.toml``; ``rules[name]`` is what that policy's ``parse`` returned."""

    node_name: str = field(default_factory=socket.gethostname)
    interval: float = 300.0
    enabled: bool = True  # [storage] policies = false: this node applies none (scale-out: one node does)
    rules: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        return self.rules.get(name)


def policy_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(POLICIES[name])
    except ModuleNotFoundError as exc:
        if exc.name == POLICIES[name]:
            return None
        raise


def parse_policies(doc: dict[str, Any], text: str = "", source: str = "hilum.toml") -> Policies:
    """The policies of a parsed TOML document (``text`` is its source, for line numbers in errors)."""
    pol = Policies()
    table = doc.get("storage", {})
    if not isinstance(table, dict):
        raise rule_error(source, text, "storage", "must be a table")
    for key, value in table.items():
        kind = STORAGE_KEYS.get(key)
        if kind is None:
            raise rule_error(source, text, "storage", f"unknown setting (known: {', '.join(STORAGE_KEYS)})", key=key)
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise rule_error(source, text, "storage", f"wrong type {type(value).__name__} ({value!r})", key=key)
    pol.node_name = str(table.get("node_name") or pol.node_name)[:64]
    pol.enabled = bool(table.get("policies", True))
    interval = table.get("interval", pol.interval)
    if interval <= 0:
        raise rule_error(source, text, "storage", f"must be more than 0 seconds, not {interval!r}", key="interval")
    pol.interval = float(interval)
    for name in POLICIES:
        mod = policy_module(name)
        if mod is not None:
            pol.rules[name] = mod.parse(doc, text, source)
    return pol


def load_policies(cfg: Any) -> Policies:
    """The policies of a :class:`hilum.config.Config`'s ``hilum.toml`` (defaults when there is none)."""
    path = cfg.config_path
    if not path.exists():
        return parse_policies({}, "", str(path))
    try:
        text = path.read_text(encoding="utf-8")
        doc = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return parse_policies(doc, text, str(path))


def run_pass(archive: Archive, policies: Policies, *, dry_run: bool = False, only: list[str] | None = None,
             now: datetime | None = None) -> list[TaskReport]:
    """One pass of every policy in order (or those in ``only``); a failing policy is reported, the others run."""
    reports: list[TaskReport] = []
    if not dry_run:
        try:
            reap_trash(archive)
        except Exception as exc:  # noqa: BLE001 - keep going with the policies
            log.exception("reaping the blob trash failed")
            reports.append(TaskReport("trash", errors=[str(exc)]))
    # Forwarding routes in its own service (hilum.replication); a dry run lists what its rules would queue.
    for name in PASS_ORDER + (("forwarding",) if dry_run else ()):
        if only and name not in only:
            continue
        mod, rules = policy_module(name), policies.get(name)
        if mod is None or rules is None:
            continue
        try:
            reports.append(mod.run_once(archive, rules, dry_run=dry_run, now=now))
        except Exception as exc:  # noqa: BLE001
            log.exception("storage policy %s failed", name)
            reports.append(TaskReport(name, dry_run=dry_run, errors=[f"{type(exc).__name__}: {exc}"]))
    return reports


class PolicyService(WokenService):
    """Applies the storage policies in the background while the node runs (a node service)."""

    name = "policies"
    thread_name = "storage-policies"

    def __init__(self, archive: Archive, policies: Policies):
        super().__init__(archive)
        self.policies = policies
        self.last: list[TaskReport] = []

    def enabled(self) -> bool:
        return self.policies.enabled

    def _run(self) -> None:
        delay = float(os.environ.get("HILUM_POLICY_FIRST_PASS", "2"))
        while not self._stop.is_set():
            self._wake.wait(delay)
            if self._stop.is_set():
                break
            # Let a burst of arrivals end (a study is many instances) before acting on them.
            self._stop.wait(min(AFTER_ARRIVAL, delay))
            if self._stop.is_set():
                break
            self._wake.clear()
            try:
                self.last = run_pass(self.archive, self.policies)
            except Exception:  # noqa: BLE001
                log.exception("storage policy pass failed")
            self.passes += 1
            delay = self.policies.interval
