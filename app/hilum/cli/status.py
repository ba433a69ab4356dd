"""``hilum status``: is the node up, on which ports, how big is the archive, what waits, what went wrong.

Reads, never writes: ``DATA/run/node.json`` (written by ``hilum serve`` once it
listens, removed on a clean stop), a TCP connection to each port it names, the
index (counts and queue lengths, not migrated: a status check never upgrades a
data folder), the free disk of the data folder, ``DATA/prefetch/jobs.json``, and
the last WARNING/ERROR lines of ``DATA/logs/hilum.log``.  Works with no node
running (the archive figures still show).  Container health checks and
monitoring scripts use ``--json`` and the exit status.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from hilum.cli._common import print_json
from hilum.cli._runtime import LogSettings, last_problems, pid_alive, read_run_file, run_file
from hilum.errors import HilumError

EPILOG = """\
exit status:
  0  the node is up and healthy: its process runs and every port it listens on accepts connections
  1  the node is down (not running, a stale status file left by a crash, a port not accepting,
     an unreadable configuration)
  2  usage error
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "status",
        help="is the node up: ports, archive size, queues, last errors",
        description="Show whether the node (hilum serve) on this data folder is up — its process alive and "
        "each of its ports accepting — its AE title, version and uptime, the archive's size and the disk "
        "free, the queues waiting in the index, and the last warnings and errors of its log file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data", metavar="DIR", default=None, help="data folder (default: $HILUM_DATA or the user data folder)"
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--errors", type=_count, default=10, metavar="N", help="last N warnings/errors to show (default 10)")
    p.add_argument(
        "--timeout", type=_seconds, default=2.0, metavar="S", help="seconds to wait for each port (default 2)"
    )
    p.set_defaults(handler=run_status)


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def _seconds(text: str) -> float:
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < s <= 60:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 60 seconds, got {text}")
    return s


def _connect_host(bind: str) -> str:
    """Where to connect to reach a listener bound to ``bind`` (a wildcard address: this machine's loopback)."""
    if bind in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind in ("::", "[::]"):
        return "::1"
    return bind.strip("[]")


def port_accepts(host: str, port: int, timeout: float) -> str:
    """ "" when ``host:port`` accepts a TCP connection, else why not."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return ""
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _uptime(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def node_state(data_dir: Path, timeout: float) -> dict[str, Any]:
    """``state``: ``up``, ``down``, ``stale`` (a status file whose process is gone) or ``degraded``
    (the process runs but a port does not accept), with what the status file says."""
    doc = read_run_file(data_dir)
    if doc is None:
        if run_file(data_dir).exists():
            return {"state": "down", "reason": f"{run_file(data_dir)} cannot be read"}
        return {"state": "down", "reason": "not running (no status file)"}
    pid = int(doc.get("pid") or 0)
    out: dict[str, Any] = {
        "pid": pid,
        "version": doc.get("version"),
        "aet": doc.get("aet"),
        "bind": doc.get("bind"),
        "ports": doc.get("ports") or {},
        "started": doc.get("started"),
    }
    if not pid_alive(pid):
        out.update(state="stale", reason=f"status file left by process {pid}, which is not running (a crash?)")
        return out
    started = doc.get("started_unix")
    if isinstance(started, (int, float)):
        out["uptime_seconds"] = round(time.time() - float(started), 1)
    host = _connect_host(str(doc.get("bind") or "127.0.0.1"))
    checks = {name: port_accepts(host, int(port), timeout) for name, port in out["ports"].items()}
    out["port_checks"] = {name: (why or "ok") for name, why in checks.items()}
    closed = [f"{name} port {out['ports'][name]}: {why}" for name, why in checks.items() if why]
    if closed:
        out.update(state="degraded", reason="; ".join(closed))
    else:
        out.update(state="up", reason="")
    return out


def archive_state(cfg: Any) -> dict[str, Any]:
    """Counts, bytes and queues of the index (not migrated), and the disk free of the data folder."""
    from hilum.archive.health import figures, open_index, schema_state

    out: dict[str, Any] = {}
    try:
        usage = shutil.disk_usage(cfg.data_dir)
        out["disk_free_bytes"], out["disk_total_bytes"] = usage.free, usage.total
    except OSError as exc:
        out["disk_error"] = exc.strerror or str(exc)
    engine = None
    try:
        engine = open_index(cfg.data_dir, cfg.database_url)
        if engine is None:
            out["index"] = "none yet"
            return out
        schema = schema_state(engine)
        out["schema"] = {"current": schema.current, "heads": schema.heads, "up_to_date": schema.up_to_date}
        out.update(figures(engine).as_dict())
    except Exception as exc:  # noqa: BLE001 - a database that cannot be read is a finding, not a crash
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        out["index_error"] = detail[0] if detail else type(exc).__name__
    finally:
        if engine is not None:
            engine.dispose()
    return out


def prefetch_queue(data_dir: Path) -> int | None:
    """Prefetch jobs queued or running, from the node's ``DATA/prefetch/jobs.json`` (None: no running node's)."""
    try:
        doc = json.loads((Path(data_dir) / "prefetch" / "jobs.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not pid_alive(int(doc.get("pid") or 0)):
        return None
    return sum(1 for j in doc.get("jobs", []) if isinstance(j, dict) and j.get("state") in ("queued", "running"))


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def run_status(args: argparse.Namespace) -> int:
    from hilum.config import load_config

    cfg = load_config(args.data)
    data = Path(cfg.data_dir)
    if not data.is_dir():
        raise HilumError(f"no data folder at {data}")
    node = node_state(data, args.timeout)
    archive = archive_state(cfg)
    prefetch = prefetch_queue(data)
    if prefetch is not None:
        archive.setdefault("queues", {})["prefetch"] = prefetch
    settings = LogSettings.from_config(cfg)
    problems = last_problems(data, args.errors) if args.errors else []
    healthy = node["state"] == "up"
    doc = {
        "healthy": healthy,
        "data": str(data),
        "node": node,
        "archive": archive,
        "log": {"file": str(data / "logs" / "hilum.log") if settings.file else None, "last_problems": problems},
    }
    if args.json:
        print_json(doc)
    else:
        _print(doc)
    return 0 if healthy else 1


def _print(doc: dict[str, Any]) -> None:
    node, archive = doc["node"], doc["archive"]
    state = node["state"]
    head = {"up": "UP", "down": "DOWN", "stale": "DOWN (stale)", "degraded": "DOWN (degraded)"}[state]
    print(f"node:      {head}" + (f" - {node['reason']}" if node.get("reason") else ""))
    if "pid" in node:
        print(f"process:   pid {node['pid']}, Hilum {node.get('version')}, started {node.get('started')}"
              + (f", up {_uptime(node['uptime_seconds'])}" if "uptime_seconds" in node else ""))  # fmt: skip
        print(f"AE title:  {node.get('aet')} on {node.get('bind')}")
        checks = node.get("port_checks", {})
        ports = ", ".join(f"{name} {port}" + (f" ({checks[name]})" if name in checks else "")
                          for name, port in node["ports"].items())  # fmt: skip
        print(f"ports:     {ports or 'none'}")
    print(f"data:      {doc['data']}")
    if "index_error" in archive:
        print(f"archive:   cannot read the index: {archive['index_error']}")
    elif archive.get("index") == "none yet":
        print("archive:   empty (no index yet)")
    else:
        print(f"archive:   {archive['patients']} patients, {archive['studies']} studies, "
              f"{archive['instances']} instances, {_size(archive['bytes'])}")  # fmt: skip
        schema = archive.get("schema", {})
        if schema and not schema.get("up_to_date"):
            print(f"schema:    {', '.join(schema['current']) or 'none'} (this Hilum: {', '.join(schema['heads'])})")
    if "disk_free_bytes" in archive:
        print(f"disk free: {_size(archive['disk_free_bytes'])} of {_size(archive['disk_total_bytes'])}")
    queues = archive.get("queues") or {}
    if queues:
        print("queues:    " + ", ".join(f"{k} {v}" for k, v in queues.items()))
    problems = doc["log"]["last_problems"]
    if doc["log"]["file"] is None:
        print("log:       [log] file = false: no log file to read")
    elif problems:
        print(f"last {len(problems)} warnings/errors ({doc['log']['file']}):")
        for p in problems:
            print(f"  {p['time']} {p['level']} {p['message']}")
    else:
        print("log:       no warnings or errors")
