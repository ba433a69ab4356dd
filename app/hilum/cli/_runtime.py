"""What a running ``hilum serve`` leaves for administrators: ``DATA/run/node.json`` and ``DATA/logs/hilum.log``.

``hilum serve`` writes the status file when every service is listening
(atomically: a temporary file renamed) and removes it on a clean stop; a file
whose process is gone is what a crash leaves (``hilum status`` says "stale").
It logs to stderr as before and, with ``[log] file = true`` (the default), to
``DATA/logs/hilum.log``, rotated by the process itself at ``max_mb`` megabytes
with ``keep`` old files (``hilum.log.1`` ... ``hilum.log.N``): no logrotate
needed, under systemd or anywhere else::

    [log]
    file = true     # also log to DATA/logs/hilum.log
    max_mb = 10     # rotate at this size (megabytes)
    keep = 5        # old files kept (hilum.log.1 .. hilum.log.5)

The file's lines start with the UTC time in ISO 8601 and the level, which is
what ``hilum status`` reads back for the last errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import re
import socket
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hilum import __version__
from hilum.errors import ConfigError, HilumError
from hilum.processes import pid_alive

RUN_FILE = Path("run") / "node.json"
LOG_FILE = Path("logs") / "hilum.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (CRITICAL|ERROR|WARNING) (.*)$")


@dataclass
class LogSettings:
    """``[log]`` in ``hilum.toml``."""

    file: bool = True
    max_mb: float = 10.0
    keep: int = 5

    @classmethod
    def from_config(cls, cfg: Any) -> LogSettings:
        """The settings of ``cfg.extra["log"]``; a bad value is a :class:`ConfigError` naming the setting."""
        table = (getattr(cfg, "extra", None) or {}).get("log", {})
        where = f"{cfg.config_path}: [log]" if hasattr(cfg, "config_path") else "[log]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        out = cls()
        for key, value in table.items():
            if key == "file":
                if not isinstance(value, bool):
                    raise ConfigError(f"{where} file must be true or false, not {value!r}")
                out.file = value
            elif key == "max_mb":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 100_000:
                    raise ConfigError(f"{where} max_mb must be a number of megabytes above 0, not {value!r}")
                out.max_mb = float(value)
            elif key == "keep":
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
                    raise ConfigError(f"{where} keep must be a whole number of files from 1 to 1000, not {value!r}")
                out.keep = value
            else:
                raise ConfigError(f"{where}: unknown setting {key!r} (known: file, max_mb, keep)")
        return out


class UTCFormatter(logging.Formatter):
    """``2026-12-06T18:30:01.123Z LEVEL name: message`` (UTC, ISO 8601)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def open_log_file(data_dir: Path, settings: LogSettings) -> logging.Handler | None:
    """Add the rotating log file to the root logger (None when ``[log] file = false``)."""
    if not settings.file:
        return None
    path = Path(data_dir) / LOG_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=int(settings.max_mb * 1024 * 1024), backupCount=settings.keep, encoding="utf-8"
        )
    except OSError as exc:
        raise ConfigError(f"[log] file: cannot write {path}: {exc.strerror or exc}") from exc
    handler.setFormatter(UTCFormatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)
    return handler


def last_problems(data_dir: Path, n: int = 10) -> list[dict[str, str]]:
    """The last ``n`` WARNING/ERROR/CRITICAL lines of the log file and its newest rotated copy, oldest first."""
    path = Path(data_dir) / LOG_FILE
    found: deque[dict[str, str]] = deque(maxlen=n)
    for p in (path.with_name(path.name + ".1"), path):
        try:
            with p.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    m = _LINE.match(line.rstrip("\n"))
                    if m:
                        found.append({"time": m.group(1), "level": m.group(2), "message": m.group(3)[:500]})
        except OSError:
            continue
    return list(found)


def run_file(data_dir: Path) -> Path:
    return Path(data_dir) / RUN_FILE


def read_run_file(data_dir: Path) -> dict[str, Any] | None:
    """The status file of a node on this data folder, or None (none running, or unreadable)."""
    try:
        doc = json.loads(run_file(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def refuse_if_node_running(data_dir: Path, doing: str) -> None:
    """Raise :class:`HilumError` when ``hilum serve`` runs on ``data_dir`` (its status file names a live
    process): ``doing`` (a restore, a rollback) would replace the index under it, losing what it writes."""
    doc = read_run_file(data_dir) or {}
    pid = doc.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
        raise HilumError(f"a node is running on {data_dir} (pid {pid}, AE title {doc.get('aet', '?')}): "
                         f"stop it first (e.g. systemctl stop hilum), then run {doing} again")


class RunFileService:
    """A node service that only writes ``DATA/run/node.json`` once the others listen, and removes it at stop.

    Added last to the node's services, so it starts after every listener is bound and stops first.
    """

    name = "runfile"

    def __init__(self, node: Any) -> None:
        self.node = node
        self.path = run_file(node.config.data_dir)
        self.written = False

    def document(self) -> dict[str, Any]:
        cfg = self.node.config
        ports: dict[str, Any] = {}
        for s in self.node.services:
            if s is self:
                continue
            if s.name == "dimse":
                bound = list(getattr(s, "ports", []) or [])
                ports["dicom"] = bound[0] if bound else int(cfg.dicom_port)
                if len(bound) > 1:
                    ports["dicom_tls"] = bound[1]
            elif s.name in ("dicomweb", "hl7"):
                port = getattr(s, "port", None)
                if port:
                    ports["web" if s.name == "dicomweb" else "hl7"] = int(port)
        now = time.time()
        return {
            "pid": os.getpid(),
            "started": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "started_unix": round(now, 3),
            "version": __version__,
            "aet": cfg.aet,
            "bind": cfg.bind,
            "ports": ports,
            "services": [s.name for s in self.node.services if s is not self],
            "data": str(Path(cfg.data_dir).resolve()),
            "host": socket.gethostname(),
        }

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.document(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
        self.written = True

    def stop(self) -> None:
        if not self.written:
            return
        self.written = False
        doc = read_run_file(self.path.parent.parent)
        if doc is not None and doc.get("pid") != os.getpid():
            return  # another node took the folder over since: not ours to remove
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
