"""The command-line contract (../shared/DESIGN.md): the global options ``--data`` and ``-v`` work
before or after the verb, for every verb."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hilum.cli import build_parser


def hilum(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hilum", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env or {**os.environ, "HILUM_DATA": "/nonexistent/must-not-be-used"})


@pytest.mark.parametrize("where", ["before", "after"])
def test_data_and_verbose_before_or_after_the_verb(tmp_path: Path, pydicom_files: Path, where: str) -> None:
    data = tmp_path / "data"
    sample = pydicom_files / "CT_small.dcm"
    args = (["--data", data, "-v", "import", "--json", sample] if where == "before"
            else ["import", "--json", sample, "--data", data, "-v"])
    proc = hilum(*args)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["data"] == str(data) and json.loads(proc.stdout)["imported"] == 1
    assert "INFO" in proc.stderr  # -v took effect: info lines on stderr
    assert (data / "index.sqlite").exists()


def test_every_verb_takes_the_global_options() -> None:
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    assert verbs
    for name, verb in verbs.items():
        options = {o for a in verb._actions for o in a.option_strings}
        assert {"-v", "--data"} <= options, name
