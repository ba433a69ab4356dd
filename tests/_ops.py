"""Helpers of the status/metrics tests (issue 22): a real ``hilum serve`` subprocess and small generated CT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hilum
from conftest import free_port

APP = str(Path(hilum.__file__).resolve().parent.parent)
BIN = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1", "PYTHONPATH": APP, "HILUM_DATA": "/nonexistent/must-not-be-used"}


def hilum_cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hilum", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)  # fmt: skip


def write_ct(out: Path, slices: int = 3, accession: str = "OPS1") -> list[Path]:
    from hilum.dicom.generator import DOE, iter_ct_series, make_study, write_dataset
    from hilum.dicom.generator.demo import instance_path

    study = make_study(DOE, accession=accession, seed=accession)
    return [write_dataset(ds, instance_path(out, ds))
            for ds in iter_ct_series(study, rows=64, columns=64, slices=slices, seed=1)]  # fmt: skip


@dataclass
class Served:
    proc: subprocess.Popen[str]
    data: Path
    dicom: int
    web: int
    hl7: int
    aet: str

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate()
        return int(self.proc.returncode), err


@contextmanager
def serving(data: Path, *extra: str, aet: str = "OPSNODE") -> Iterator[Served]:
    """``hilum serve`` on free ports until the block ends; returns once DATA/run/node.json is there."""
    s = Served(subprocess.Popen(
        [sys.executable, "-m", "hilum", "serve", "--data", str(data), "--aet", aet, "--dicom-port", str(d := free_port()),
         "--web-port", str(w := free_port()), "--hl7-port", str(h := free_port()), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV), data, d, w, h, aet)  # fmt: skip
    try:
        run = data / "run" / "node.json"
        deadline = time.monotonic() + 60
        while not run.is_file():
            if s.proc.poll() is not None:
                raise AssertionError(f"hilum serve exited {s.proc.returncode}: {s.proc.stderr.read()}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "hilum serve wrote no node.json"
            time.sleep(0.05)
        assert json.loads(run.read_text())["pid"] == s.proc.pid
        yield s
    finally:
        if s.proc.poll() is None:
            s.stop()
