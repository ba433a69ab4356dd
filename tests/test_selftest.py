"""``hilum selftest`` (issue 22): every check passes on a good install, with no display; a missing codec
or a Qt that cannot load fails the checks that need them (exit 1, the reason on the line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hilum
from hilum.archive import Archive

APP = str(Path(hilum.__file__).resolve().parent.parent)  # this checkout's app/, for the child processes

CHECKS = ["migrations", "generate", "ingest", "codecs", "volume", "render", "node", "qt"]

BLOCKER = """
import os, sys
_BLOCK = set(filter(None, os.environ.get("HILUM_TEST_BLOCK", "").split(",")))
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCK:
            raise ImportError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _Blocker())
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["HILUM_DATA"] = "/nonexistent/must-not-be-used"
    env["PYTHONPATH"] = APP
    env.update(extra)
    return env


def selftest(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hilum", "selftest", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env or _env(),
        cwd=cwd,
    )


def test_selftest_json_passes_without_a_display(tmp_path: Path) -> None:
    proc = selftest("--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["data"] is None
    assert [c["name"] for c in report["checks"]] == CHECKS
    assert all(c["ok"] for c in report["checks"]), report
    by_name = {c["name"]: c["detail"] for c in report["checks"]}
    assert "jpeg-lossless" in by_name["codecs"] and "rle" in by_name["codecs"]
    assert "C-ECHO" in by_name["node"] and "C-FIND 1 study (17 instances)" in by_name["node"]
    assert "platform offscreen" in by_name["qt"]
    assert not list(tmp_path.iterdir()), "the temporary data folder is not left in the working directory"


def test_selftest_lines_and_a_kept_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for run in range(2):  # the second run finds the study already there and still passes
        proc = selftest("--data", str(data), "--no-qt", env=_env(PYTHONIOENCODING="utf-8"))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert [line.split()[1] for line in lines[:-1]] == CHECKS[:-1]
        assert all(line.startswith("\u2713 ") for line in lines[:-1]), proc.stdout
        assert lines[-1].startswith("7 of 7 checks passed")
        if run == 1:
            assert "17 already there" in proc.stdout
    archive = Archive(data)
    try:
        assert archive.stats()["instances"] == 17
    finally:
        archive.close()


def test_selftest_reports_a_missing_codec_and_qt(tmp_path: Path) -> None:
    """A bundle that lost pyjpegls (JPEG-LS) and PySide6: the checks say so, the others still run."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    pythonpath = os.pathsep.join([str(site), APP])
    env = _env(HILUM_TEST_BLOCK="jpeg_ls,PySide6", PYTHONPATH=pythonpath, PYTHONIOENCODING="ascii")
    proc = selftest(env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = {line.split()[1]: line for line in proc.stdout.splitlines()[:-1]}
    assert lines["migrations"].startswith("OK ")  # ASCII stdout: OK/FAIL instead of the check marks
    assert lines["generate"].startswith("FAIL") and "jpeg-ls" in lines["generate"], lines["generate"]
    assert "skipped: generate failed" in lines["ingest"] and lines["node"].startswith("FAIL")
    assert lines["qt"].startswith("FAIL") and "PySide6" in lines["qt"], lines["qt"]
    assert "failed: generate, ingest, codecs, volume, render, node, qt" in proc.stdout


def test_selftest_refuses_a_real_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "clinic"
    Archive(data).close()
    before = sorted(p.name for p in data.iterdir())
    proc = selftest("--data", str(data), "--no-qt")
    assert proc.returncode == 1 and "not made by the self-test" in proc.stderr, proc.stdout + proc.stderr
    assert sorted(p.name for p in data.iterdir()) == before
