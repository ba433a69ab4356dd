"""The house tools run with the test command (issue 14 item 9, STYLE.md §15): ruff on the code,
tests and benchmarks, mypy on app/ (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_ruff_is_clean() -> None:
    proc = _run(str(BIN / "ruff"), "check", "--no-cache", "app", "tests", "bench", timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_mypy_is_clean_on_app() -> None:
    proc = _run(str(BIN / "mypy"), "--no-incremental", "--cache-dir", "/dev/null", timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Success: no issues found" in proc.stdout
