"""``hilum status`` (issue 22) against a real ``hilum serve`` subprocess and with none; the status file and the
rotated log file ``hilum serve`` leaves."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest

from _ops import BIN, ENV, hilum_cli, serving, write_ct
from hilum.archive import Archive, ai_jobs
from hilum.cli._runtime import LogSettings, last_problems, open_log_file
from hilum.config import load_config
from hilum.errors import ConfigError


def status(data: Path, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    proc = hilum_cli("status", "--data", data, "--json", *extra)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_status_without_a_node_shows_the_archive_and_exits_1(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = write_ct(tmp_path / "in", slices=4)
    assert hilum_cli("import", "--data", data, tmp_path / "in").returncode == 0
    with Archive(data) as a:
        ai_jobs.enqueue(a, "lung", "1", "1.2.3", "1.2", settle=0)
    code, doc = status(data)
    assert code == 1 and doc["healthy"] is False
    assert doc["node"]["state"] == "down" and "not running" in doc["node"]["reason"]
    arc = doc["archive"]
    assert (arc["patients"], arc["studies"], arc["instances"]) == (1, 1, 4)
    assert arc["bytes"] == sum(p.stat().st_size for p in (data / "blobs").rglob("*") if p.is_file()) > 0
    assert arc["queues"]["ai_jobs"] == 1 and arc["queues"]["forward"] == 0
    assert arc["schema"]["up_to_date"] is True and arc["disk_free_bytes"] > 0
    assert len(files) == 4
    text = hilum_cli("status", "--data", data)
    assert text.returncode == 1 and "node:      DOWN - not running" in text.stdout and "4 instances" in text.stdout


@pytest.mark.skipif(not (BIN / "storescu").exists(), reason="DCMTK is needed")
def test_status_of_a_running_node_then_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    files = write_ct(tmp_path / "in", slices=3)
    with serving(data) as node:
        code, doc = status(data)
        assert code == 0 and doc["healthy"] is True, doc
        n = doc["node"]
        assert n["state"] == "up" and n["pid"] == node.proc.pid and n["aet"] == "OPSNODE"
        assert n["ports"] == {"dicom": node.dicom, "web": node.web, "hl7": node.hl7}
        assert set(n["port_checks"].values()) == {"ok"} and n["uptime_seconds"] >= 0
        store = subprocess.run([str(BIN / "storescu"), "-aec", "OPSNODE", "127.0.0.1", str(node.dicom), *map(str, files)],
                               capture_output=True, env=ENV, timeout=60)  # fmt: skip
        assert store.returncode == 0, store.stderr
        refused = subprocess.run([str(BIN / "echoscu"), "-aec", "NOTME", "127.0.0.1", str(node.dicom)],
                                 capture_output=True, env=ENV, timeout=60)  # fmt: skip
        assert refused.returncode != 0
        code, doc = status(data)
        assert code == 0 and doc["archive"]["instances"] == 3
        problems = doc["log"]["last_problems"]
        assert problems and problems[-1]["level"] == "WARNING" and "rejected" in problems[-1]["message"]
        assert problems[-1]["time"].endswith("Z")
        text = hilum_cli("status", "--data", data)
        assert text.returncode == 0 and "node:      UP" in text.stdout and f"dicom {node.dicom} (ok)" in text.stdout
        rc, err = node.stop()
    assert rc == 0, err
    assert not (data / "run" / "node.json").exists(), "a clean stop removes the status file"
    code, doc = status(data)
    assert code == 1 and doc["node"]["state"] == "down"
    log_text = (data / "logs" / "hilum.log").read_text()
    assert "signal 15: stopping" in log_text and "OPSNODE" in log_text
    # each status probed the DICOM port from loopback: not a line each in the log (a 30 s health check)
    assert "closed without an association request" not in log_text


def test_a_stale_status_file_and_a_closed_port(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "run").mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    doc = {"pid": dead.pid, "started_unix": 0, "version": "0.1.0", "aet": "X", "bind": "127.0.0.1",
           "ports": {"dicom": 9}}  # fmt: skip
    (data / "run" / "node.json").write_text(json.dumps(doc))
    code, out = status(data)
    assert code == 1 and out["node"]["state"] == "stale" and "not running" in out["node"]["reason"]
    assert out["archive"]["index"] == "none yet"
    import os
    import socket

    with socket.socket() as s:  # a port nobody accepts on: bound, not listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        doc.update(pid=os.getpid(), ports={"dicom": port})
        (data / "run" / "node.json").write_text(json.dumps(doc))
        code, out = status(data)
    assert code == 1 and out["node"]["state"] == "degraded" and f"dicom port {port}" in out["node"]["reason"]


def test_status_usage_errors_exit_2(tmp_path: Path) -> None:
    for args in (["--timeout", "0"], ["--errors", "-1"], ["--bogus"]):
        proc = hilum_cli("status", "--data", tmp_path, *args)
        assert proc.returncode == 2, (args, proc.stderr)
    missing = hilum_cli("status", "--data", tmp_path / "nope")
    assert missing.returncode == 1 and "no data folder" in missing.stderr


def test_log_settings_and_rotation(tmp_path: Path) -> None:
    for bad, setting in (("max_mb = 0", "max_mb"), ("keep = 0", "keep"), ("file = 1", "file"), ("rotate = 1", "rotate"),
                         ("keep = true", "keep")):  # fmt: skip
        (tmp_path / "hilum.toml").write_text(f"[log]\n{bad}\n")
        with pytest.raises(ConfigError, match=setting):
            LogSettings.from_config(load_config(tmp_path))
        proc = hilum_cli("serve", "--data", tmp_path, "--dicom-port", "0")
        assert proc.returncode == 1 and setting in proc.stderr and "[log]" in proc.stderr, proc.stderr
    (tmp_path / "hilum.toml").write_text("[log]\nmax_mb = 0.01\nkeep = 2\n")
    settings = LogSettings.from_config(load_config(tmp_path))
    handler = open_log_file(tmp_path, settings)
    assert handler is not None
    log = logging.getLogger("hilum.test_status_rotation")
    try:
        for i in range(400):
            log.warning("line %d %s", i, "x" * 60)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == ["hilum.log", "hilum.log.1", "hilum.log.2"]
    assert all((tmp_path / "logs" / n).stat().st_size <= 0.01 * 1024 * 1024 + 200 for n in logs)
    last = last_problems(tmp_path, 3)
    assert [p["message"].split()[1:3] for p in last] == [["line", "397"], ["line", "398"], ["line", "399"]]
    (tmp_path / "hilum.toml").write_text("[log]\nfile = false\n")
    assert open_log_file(tmp_path, LogSettings.from_config(load_config(tmp_path))) is None


def test_prefetch_queue_from_the_running_nodes_job_file(tmp_path: Path) -> None:
    import os

    data = tmp_path / "data"
    (data / "prefetch").mkdir(parents=True)
    jobs = [{"state": s} for s in ("queued", "running", "done", "failed", "queued")]
    (data / "prefetch" / "jobs.json").write_text(json.dumps({"pid": os.getpid(), "jobs": jobs}))
    assert status(data)[1]["archive"]["queues"]["prefetch"] == 3
    dead = subprocess.Popen(["true"])
    dead.wait()
    (data / "prefetch" / "jobs.json").write_text(json.dumps({"pid": dead.pid, "jobs": jobs}))
    assert "prefetch" not in status(data)[1]["archive"].get("queues", {}), "a stopped node's jobs are not waiting"


def test_restore_and_rollback_refused_while_a_node_runs_on_the_folder(tmp_path: Path) -> None:
    """Replacing the index under a running ``hilum serve`` loses what it writes meanwhile: ``hilum restore``
    and ``hilum rollback`` read the node's status file and refuse, naming the pid; once it has stopped,
    the restore goes ahead."""
    data = tmp_path / "data"
    write_ct(tmp_path / "in", slices=2)
    assert hilum_cli("import", "--data", data, tmp_path / "in").returncode == 0
    backup = tmp_path / "backup"
    assert hilum_cli("backup", backup, "--data", data).returncode == 0
    with serving(data) as node:
        for verb in (("restore", backup, "--force"), ("rollback", tmp_path / "no-such-backup")):
            proc = hilum_cli(*verb, "--data", data)
            assert proc.returncode == 1, (verb, proc.stdout, proc.stderr)
            assert f"a node is running on {data} (pid {node.proc.pid}" in proc.stderr, proc.stderr
            assert "stop it first" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        rc, err = node.stop()
    assert rc == 0, err
    proc = hilum_cli("restore", backup, "--force", "--data", data)
    assert proc.returncode == 0, proc.stderr
