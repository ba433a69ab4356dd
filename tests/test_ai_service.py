"""AI auto-run (hilum.ai.rules + hilum.archive.ai_jobs): settings, the persistent queue, the service in
process, and end to end through a real `hilum serve` receiving from DCMTK's storescu, with the result
series seen by C-FIND (findscu) and QIDO-RS, and the queue surviving a restart."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from _ai_support import POST_OK, POST_RAISES, make_plugin, pip_install
from _viewer_data import STUDY
from conftest import free_port
from hilum.ai.rules import AIService, AISettings, Rule, load_settings
from hilum.archive import Archive, ai_jobs
from hilum.archive.storage import utcnow
from hilum.dicom.generator import generate_ct_series
from hilum.errors import ConfigError

BIN = Path("/usr/bin")
APP = str(Path(__file__).resolve().parents[1] / "app")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("plugins")
    target = root / "site"
    pip_install([make_plugin(root / "src", "hilum-test-auto", post=POST_OK),
                 make_plugin(root / "src", "hilum-test-autofail", post=POST_RAISES)], target)  # fmt: skip
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))


@pytest.fixture(scope="module")
def ct():  # type: ignore[no-untyped-def]
    return generate_ct_series(STUDY, rows=64, columns=64, slices=8, fov=360.0, slice_thickness=5.0, noise_sigma=0.0)


def test_settings_and_rules() -> None:
    cfg = SimpleNamespace(extra={"ai": {"threads": 2, "settle_seconds": 3, "isolate": False, "rules": [
        {"plugin": "p", "modality": "CT", "body_part": "CHEST", "series_description": "ax*"}]}})  # fmt: skip
    s = load_settings(cfg)
    assert s.threads == 2 and s.settle_seconds == 3 and s.isolate is False
    (rule,) = s.rules
    assert rule.matches({"Modality": "CT", "BodyPartExamined": "chest", "SeriesDescription": "Axial 5 mm"})
    assert not rule.matches({"Modality": "MR", "BodyPartExamined": "CHEST", "SeriesDescription": "Axial"})
    assert not rule.matches({"Modality": "CT", "BodyPartExamined": "HEAD", "SeriesDescription": "Axial"})
    assert Rule("p").matches({"Modality": "US"})
    assert load_settings(SimpleNamespace(extra={})).settle_seconds == 10
    for bad, msg in (({"thread": 1}, r"\[ai\] thread: unknown key"), ({"threads": 0}, "threads: must be a positive"),
                     ({"settle_seconds": -1}, "settle_seconds"), ({"rules": [{"modality": "CT"}]}, "plugin: missing"),
                     ({"rules": [{"plugin": "p", "modalty": "CT"}]}, r"#1 modalty: unknown key")):  # fmt: skip
        with pytest.raises(ConfigError, match=msg):
            load_settings(SimpleNamespace(extra={"ai": bad}))


def test_queue_settles_claims_and_requeues(archive) -> None:  # type: ignore[no-untyped-def]
    t0 = utcnow()
    pk, created = ai_jobs.enqueue(archive, "p", "1", "1.2.3", "1.2", settle=10, now=t0)
    assert created
    # another instance of the series 5 s later: the same job, due later
    assert ai_jobs.enqueue(archive, "p", "1", "1.2.3", "1.2", settle=10, now=t0 + timedelta(seconds=5)) == (pk, False)
    assert ai_jobs.claim_due(archive, now=t0 + timedelta(seconds=11)) is None
    job = ai_jobs.claim_due(archive, now=t0 + timedelta(seconds=16))
    assert job is not None and job.pk == pk and job.state == "running" and job.attempts == 1
    # the node stops while it runs: queued again at the next start
    assert ai_jobs.requeue_interrupted(archive) == 1
    again = ai_jobs.get(archive, pk)
    assert again is not None and again.state == "queued" and again.started_at is None
    job = ai_jobs.claim_due(archive, now=t0 + timedelta(seconds=20))
    assert job is not None
    ai_jobs.finish(archive, pk, "done", results=["1.9.1", "1.9.2"])
    done = ai_jobs.get(archive, pk)
    assert done is not None and done.state == "done" and done.result_series_uids == ("1.9.1", "1.9.2")
    assert [j.pk for j in ai_jobs.jobs(archive, state="done")] == [pk]


def test_requeue_takes_only_this_hosts_dead_claims(archive) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from hilum.archive.schema import ai_jobs as table

    pks = [ai_jobs.enqueue(archive, "p", "1", f"1.2.{i}", "1.2", settle=0)[0] for i in range(3)]
    for _ in pks:
        job = ai_jobs.claim_due(archive, now=utcnow() + timedelta(seconds=1))
        assert job is not None and job.claimed_by == ai_jobs.claimer()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = ai_jobs.claimer().rpartition(".")[0]
    with archive.transaction() as conn:
        conn.execute(update(table).where(table.c.pk == pks[1]).values(claimed_by=f"{host}.{dead.stdout.strip()}"))
        conn.execute(update(table).where(table.c.pk == pks[2]).values(claimed_by="otherhost.1234"))
    # ours (this process is starting its service) and the dead process's: queued; the other host's: still running
    assert ai_jobs.requeue_interrupted(archive) == 2
    states = {j.pk: j.state for j in ai_jobs.jobs(archive)}
    assert states == {pks[0]: "queued", pks[1]: "queued", pks[2]: "running"}


def _wait(pred, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_service_in_process_runs_rules_and_survives_a_failing_plugin(archive, site, ct) -> None:  # type: ignore[no-untyped-def]
    settings = AISettings(threads=1, settle_seconds=0.5, isolate=False,
                          rules=(Rule("hilum-test-auto", modality="CT"), Rule("hilum-test-autofail", modality="CT")))  # fmt: skip
    service = AIService(archive, settings)
    service.start()
    try:
        for ds in ct:
            assert archive.ingest(ds, origin="dimse").ok
        series = ct[0].SeriesInstanceUID
        jobs = _wait(lambda: [j for j in ai_jobs.jobs(archive, series_uid=series) if j.state in ("done", "failed")]
                     if len([j for j in ai_jobs.jobs(archive, series_uid=series)
                             if j.state in ("done", "failed")]) == 2 else None)  # fmt: skip
        by = {j.plugin: j for j in jobs}
        assert by["hilum-test-auto"].state == "done" and len(by["hilum-test-auto"].result_series_uids) == 2
        assert by["hilum-test-autofail"].state == "failed"
        assert "postprocess hook failed: RuntimeError: the hook broke" in by["hilum-test-autofail"].error
        # the results (origin "ai") did not queue anything; a second arrival of nothing: no new jobs
        time.sleep(1.0)
        assert len(ai_jobs.jobs(archive, series_uid=series)) == 2
        assert len(ai_jobs.jobs(archive)) == 2
        rows = archive.query("SERIES", {"StudyInstanceUID": STUDY.uid, "SeriesDescription": "AI:*"})
        assert sorted(r["Modality"] for r in rows) == ["SEG", "SR"]
        # a job submitted by hand (the workstation's "run on this series")
        pk = service.submit("hilum-test-auto", series, STUDY.uid)
        _wait(lambda: (ai_jobs.get(archive, pk) or SimpleNamespace(state="")).state == "done")
    finally:
        service.stop()


# ---------------------------------------------------------------------------- a real hilum serve


def _serve(data: Path, site: Path, dicom: int, web: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{APP}"}
    return subprocess.Popen([sys.executable, "-m", "hilum", "serve", "--data", str(data), "--aet", "NODE",
                             "--dicom-port", str(dicom), "--web-port", str(web), "--hl7-port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def _listening(port: int, proc: subprocess.Popen[str]) -> None:
    import socket

    def up() -> bool:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    _wait(up, 60)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def _config(data: Path, settle: float) -> None:
    data.mkdir(parents=True, exist_ok=True)
    (data / "hilum.toml").write_text(f"""[ai]
threads = 1
settle_seconds = {settle}
isolate = true

[[ai.rules]]
plugin = "hilum-test-auto"
modality = "CT"
body_part = "CHEST"
series_description = "*"
""")


def _jobs(data: Path) -> list[ai_jobs.AIJob]:
    with Archive(data) as a:
        return ai_jobs.jobs(a)


@pytest.mark.skipif(not (BIN / "storescu").exists(), reason="DCMTK (Debian package dcmtk) is needed")
def test_auto_run_through_a_real_node_and_a_restart(tmp_path: Path, site: Path, ct) -> None:  # type: ignore[no-untyped-def]
    files = tmp_path / "in"
    files.mkdir()
    for i, ds in enumerate(ct):
        ds.save_as(files / f"{i:03}.dcm", enforce_file_format=True)
    data = tmp_path / "data"
    _config(data, settle=4)
    dicom, web = free_port(), free_port()
    proc = _serve(data, site, dicom, web)
    try:
        _listening(dicom, proc)
        sent = subprocess.run([str(BIN / "storescu"), "-aec", "NODE", "+sd", "127.0.0.1", str(dicom), str(files)],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "TCP_NODELAY": "1"})  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        (job,) = _wait(lambda: _jobs(data) or None, 30)
        assert job.state == "queued" and job.plugin == "hilum-test-auto" and job.plugin_version == "1.2.3"
    finally:
        err = _stop(proc)  # stopped before the series settled: the job must wait for the next start
    (job,) = _jobs(data)
    assert job.state == "queued", err[-2000:]

    proc = _serve(data, site, dicom, web)
    try:
        _listening(dicom, proc)
        done = _wait(lambda: [j for j in _jobs(data) if j.state in ("done", "failed")] or None, 120)
        assert [j.state for j in done] == ["done"], done[0].error
        (job,) = done
        assert len(job.result_series_uids) == 2  # SEG and SR
        # C-FIND (DCMTK findscu) sees the new series
        found = subprocess.run([str(BIN / "findscu"), "-S", "-aec", "NODE", "-k", "QueryRetrieveLevel=SERIES",
                                "-k", f"StudyInstanceUID={STUDY.uid}", "-k", "SeriesInstanceUID", "-k", "Modality",
                                "-k", "SeriesDescription", "127.0.0.1", str(dicom)],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        text = found.stdout + found.stderr
        for uid in job.result_series_uids:
            assert uid in text
        assert "[AI: Body mask (test) 1.2.3]" in text
        assert re.search(r"CS \[SEG ?\]", text) and re.search(r"CS \[SR ?\]", text)
        # QIDO-RS too
        url = f"http://127.0.0.1:{web}/dicom-web/studies/{STUDY.uid}/series?SeriesDescription=AI*"
        with urllib.request.urlopen(url, timeout=30) as resp:
            rows = json.loads(resp.read())
        uids = {r["0020000E"]["Value"][0] for r in rows}
        assert uids == set(job.result_series_uids)
        # the CLI lists the job
        env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{APP}"}
        out = subprocess.run([sys.executable, "-m", "hilum", "plugins", "jobs", "--data", str(data), "--json"],
                             capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
        assert out.returncode == 0 and json.loads(out.stdout)[0]["state"] == "done"
    finally:
        _stop(proc)
