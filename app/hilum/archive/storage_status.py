"""Where the archive's bytes are, in one read: what ``hilum policy status`` prints and the workstation's Storage panel shows.

Online store use against its capacity and the retention watermarks, what
lies off line, the copies on each tier and peer, the space compression saved
(from the policy log), the forwarding queue per destination
(:func:`hilum.archive.forward.status`), protections, the blob trash, and the
rules each policy has.  Read-only: nothing here writes the index.

The policies' own rule objects belong to their modules; this module reads
only the few settings it shows (``high_watermark``, ``low_watermark``,
``capacity_bytes`` of retention; the number of rules of each policy) and
does without them when a policy is not installed.
"""

from __future__ import annotations

import importlib
import logging
import shutil
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from hilum.archive import storage
from hilum.archive.schema import blob_copies, blob_trash, instances, policy_log, studies

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger("hilum.storage")


def setting(rules: Any, name: str, default: Any = None) -> Any:
    """``name`` of a policy's rules object (an attribute, a key, or one level down), else ``default``."""
    if rules is None:
        return default
    if isinstance(rules, dict):
        if name in rules:
            return rules[name]
        inner = [v for v in rules.values() if isinstance(v, dict) or is_dataclass(v)]
    else:
        if hasattr(rules, name):
            return getattr(rules, name)
        inner = [getattr(rules, f.name) for f in fields(rules)] if is_dataclass(rules) else []
        inner = [v for v in inner if is_dataclass(v) or isinstance(v, dict)]
    for value in inner:
        found = setting(value, name, None)
        if found is not None:
            return found
    return default


def rule_count(rules: Any) -> int:
    """How many rules a policy's rules object holds (lists of rules in it, counted)."""
    if rules is None:
        return 0
    if isinstance(rules, list | tuple):
        return len(rules)
    values = (
        list(rules.values())
        if isinstance(rules, dict)
        else (
            [getattr(rules, f.name) for f in fields(rules)]
            if is_dataclass(rules)
            else list(vars(rules).values())
            if hasattr(rules, "__dict__")
            else []
        )
    )
    return sum(len(v) for v in values if isinstance(v, list | tuple))


def forwarding_status(archive: Archive) -> list[dict[str, Any]]:
    """:func:`hilum.archive.forward.status` (empty when forwarding is not installed or fails)."""
    try:
        forward = importlib.import_module("hilum.archive.forward")
    except ModuleNotFoundError as exc:
        if exc.name == "hilum.archive.forward":
            return []
        raise
    fn = getattr(forward, "status", None)
    if fn is None:
        return []
    try:
        return list(fn(archive))
    except Exception as exc:  # noqa: BLE001 - show the rest of the status all the same
        log.warning("forwarding status failed: %s", exc)
        return [{"destination": "?", "error": f"{type(exc).__name__}: {exc}"}]


def storage_status(archive: Archive, policies: Any = None, *, log_rows: int = 20) -> dict[str, Any]:
    """Everything the Storage panel and ``hilum policy status`` show (module docstring); JSON-ready but datetimes."""
    policies = policies if policies is not None else getattr(archive, "policies", None)
    rules = getattr(policies, "rules", {}) or {}
    retention = rules.get("retention")
    i = instances.c
    with archive.engine.connect() as conn:
        on = conn.execute(select(func.count(), func.coalesce(func.sum(i.size), 0)).where(i.online.is_(True))).one()
        off = conn.execute(select(func.count(), func.coalesce(func.sum(i.size), 0)).where(i.online.is_(False))).one()
        n_studies = int(conn.execute(select(func.count()).select_from(studies)).scalar_one())
        c = blob_copies.c
        copies = conn.execute(
            select(c.location, func.count(), func.coalesce(func.sum(c.size), 0), func.count(c.verified_at))
            .group_by(c.location)
            .order_by(c.location)
        ).all()
        p = policy_log.c
        comp = conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(p.instances), 0),
                func.coalesce(func.sum(p.bytes_before - p.bytes_after), 0),
            ).where(p.action == "compress")
        ).one()
        trash = int(conn.execute(select(func.count()).select_from(blob_trash)).scalar_one())
    online_bytes = int(on[1])
    capacity = int(setting(retention, "capacity_bytes", 0) or 0)
    if capacity:
        total, used = capacity, online_bytes
    else:
        try:
            du = shutil.disk_usage(archive.blobs.root)
            total, used = du.total, du.total - du.free
        except OSError:
            total, used = 0, 0
    tier_names: list[str] = []
    tiers = getattr(archive, "tiers", None)
    if tiers is not None:
        try:
            tier_names = list(tiers.names())
        except Exception:  # noqa: BLE001
            tier_names = []
    by_location = {
        loc: {"location": loc, "instances": int(n), "bytes": int(b), "verified": int(v)} for loc, n, b, v in copies
    }
    for name in tier_names:
        by_location.setdefault(f"tier:{name}", {"location": f"tier:{name}", "instances": 0, "bytes": 0, "verified": 0})
    return {
        "node": getattr(policies, "node_name", ""),
        "policies_enabled": bool(getattr(policies, "enabled", False)),
        "interval": getattr(policies, "interval", None),
        "rules": {name: rule_count(r) for name, r in rules.items()},
        "online": {
            "instances": int(on[0]),
            "bytes": online_bytes,
            "studies": n_studies,
            "capacity_bytes": total,
            "capacity_from": "capacity_bytes" if capacity else "file system",
            "used_bytes": used,
            "used_percent": round(100.0 * used / total, 1) if total else 0.0,
            "high_watermark": float(setting(retention, "high_watermark", 0) or 0),
            "low_watermark": float(setting(retention, "low_watermark", 0) or 0),
        },
        "offline": {"instances": int(off[0]), "bytes": int(off[1])},
        "copies": sorted(by_location.values(), key=lambda r: r["location"]),
        "compression": {"studies": int(comp[0]), "instances": int(comp[1]), "saved_bytes": int(comp[2])},
        "forwarding": forwarding_status(archive),
        "protections": storage.protections_list(archive),
        "trash": trash,
        "recent": storage.policy_history(archive, limit=log_rows),
    }
