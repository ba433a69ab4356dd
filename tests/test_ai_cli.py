"""`hilum plugins list|validate|run|jobs` as a user runs them (subprocesses, a real data folder,
plugins installed with pip into an isolated folder): output, exit codes, Ctrl+C cancels cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _ai_support import POST_OK, make_plugin, pip_install
from _viewer_data import STUDY
from hilum.archive import Archive
from hilum.dicom.generator import generate_ct_series

APP = str(Path(__file__).resolve().parents[1] / "app")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    target = root / "site"
    good = make_plugin(root / "src", "hilum-test-cli", post=POST_OK, heat=True, score=True)
    slow = make_plugin(root / "src", "hilum-test-clislow", slow_ms=6000, batch=1)
    pip_install([good, slow], target)
    return {**os.environ, "PYTHONPATH": f"{target}{os.pathsep}{APP}", "HILUM_DATA": str(root / "data")}


@pytest.fixture(scope="module")
def series_uid(env: dict[str, str]) -> str:
    ct = generate_ct_series(STUDY, rows=64, columns=64, slices=10, fov=360.0, slice_thickness=5.0, noise_sigma=0.0)
    with Archive(env["HILUM_DATA"]) as a:
        for ds in ct:
            assert a.ingest(ds).ok
    return str(ct[0].SeriesInstanceUID)


def hilum(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hilum", *args], env=env, capture_output=True, text=True, timeout=300)


def test_list_and_validate(env: dict[str, str], tmp_path: Path) -> None:
    r = hilum(env, "plugins", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {p["name"]: p for p in json.loads(r.stdout)}
    assert rows["hilum-test-cli"]["ok"] and rows["hilum-test-cli"]["produces"] == [
        "segmentation", "heatmap", "score", "findings"]  # fmt: skip
    r = hilum(env, "plugins", "list")
    assert r.returncode == 0 and "hilum-test-cli" in r.stdout and "Body mask (test)" in r.stdout
    r = hilum(env, "plugins", "validate", "hilum-test-cli")
    assert r.returncode == 0 and "hilum-test-cli 1.2.3: valid" in r.stdout
    # a folder that is not installed, with two broken rules
    dist = make_plugin(tmp_path, "hilum-test-bad")
    m = dist / "hilum_test_bad" / "hilum-plugin.toml"
    m.write_text(m.read_text().replace("batch = 4", "batch = 0").replace('dtype = "float32"', 'dtype = "int8"'))
    r = hilum(env, "plugins", "validate", str(dist / "hilum_test_bad"))
    assert r.returncode == 1
    assert "input.batch: must be an integer 1..1024" in r.stdout and "input.dtype: must be one of" in r.stdout
    # its distribution folder (the package one level down) is read through that package
    r = hilum(env, "plugins", "validate", str(dist))
    assert r.returncode == 1 and "input.batch: must be an integer 1..1024" in r.stdout, r.stdout
    # a model that does not match its checksum
    dist2 = make_plugin(tmp_path, "hilum-test-sum")
    (dist2 / "hilum_test_sum" / "model.onnx").write_bytes(b"x")
    r = hilum(env, "plugins", "validate", str(dist2 / "hilum_test_sum"), "--json")
    assert r.returncode == 1 and "does not match its checksum" in json.loads(r.stdout)["problems"][0]


def test_run_stores_and_reports(env: dict[str, str], series_uid: str) -> None:
    r = hilum(env, "plugins", "run", "hilum-test-cli", "--series", series_uid, "--no-store", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["stored"] == [] and out["segments"][0]["name"] == "Body" and out["segments"][0]["voxels"] > 0
    assert out["findings"][0]["measurements"]["Volume"][1] == "ml" and out["score"]["label"] == "Body fraction"
    r = hilum(env, "plugins", "run", "hilum-test-cli", "--series", series_uid, "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "segment 1: Body" in r.stdout and r.stdout.count("stored ") == 3
    with Archive(env["HILUM_DATA"]) as a:
        rows = a.query("SERIES", {"StudyInstanceUID": STUDY.uid, "SeriesDescription": "AI:*"})
    assert sorted(r["Modality"] for r in rows) == ["SEG", "SEG", "SR"]
    r = hilum(env, "plugins", "run", "no-such", "--series", series_uid)
    assert r.returncode == 1 and "not installed" in r.stderr
    r = hilum(env, "plugins", "run", "hilum-test-cli", "--series", "1.2.3")
    assert r.returncode == 1 and "no series '1.2.3'" in r.stderr
    r = hilum(env, "plugins", "jobs")
    assert r.returncode == 0 and "no AI jobs" in r.stdout


def test_ctrl_c_cancels_cleanly(env: dict[str, str], series_uid: str) -> None:
    with Archive(env["HILUM_DATA"]) as a:
        before = a.count("SERIES", {"StudyInstanceUID": STUDY.uid})
    proc = subprocess.Popen([sys.executable, "-m", "hilum", "plugins", "run", "hilum-test-clislow", "--series",
                             series_uid, "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stderr is not None
    lines = []
    while "Ctrl+C cancels" not in (line := proc.stderr.readline()):  # the run has started
        lines.append(line)
        assert line, lines
    time.sleep(0.5)  # inside the first batch (10 batches of 1 s or more each)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "cancelled: nothing stored" in out and "Traceback" not in err, err
    with Archive(env["HILUM_DATA"]) as a:
        assert a.count("SERIES", {"StudyInstanceUID": STUDY.uid}) == before
