"""``hilum report`` (list, show, outbox, send, retry, abandon) and a real ``hilum serve`` sending the ORU of a
report signed by another process on the same data folder, its report series visible to DCMTK's findscu."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from tests._report_support import Receiver
from tests.conftest import free_port, wait_port

from hilum.archive import Archive
from hilum.archive.reports import Outbox, Reports, Section
from hilum.archive.users import UserStore
from hilum.cli import main as cli_main
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study

STUDY = make_study(MUELLER, accession="ACC-CLI", seed="report-cli")
PASSWORD = "correct horse 1"
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "app")}
FINDSCU = Path("/usr/bin/findscu")


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = cli_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _fill(data: Path, *, store_dicom: bool = False, endpoint: str | None = "his") -> str:
    with Archive(data) as archive:
        for ds in generate_ct_series(STUDY, rows=16, columns=16, slices=2, noise_sigma=0.0):
            assert archive.ingest(ds).ok
        users = UserStore.of(archive, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        users.add("drhouse", "radiologist", PASSWORD)
        rep = Reports(archive, users=users, endpoints=[endpoint] if endpoint else None, store_dicom=store_dicom)
        r = rep.create(STUDY.uid, user="drhouse", sections=[Section("findings", "Findings", "Rien à signaler.")])
        rep.sign(r.report_id, user="drhouse", password=PASSWORD)
        return r.report_id


def test_report_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    report_id = _fill(data)
    rc, out, _ = cli(capsys, "report", "list", "--data", str(data), "--json")
    assert rc == 0 and [r["report_id"] for r in json.loads(out)] == [report_id]
    rc, out, _ = cli(capsys, "report", "show", report_id, "--data", str(data))
    assert rc == 0 and "Rien à signaler." in out and "draft -> final" in out
    assert cli(capsys, "report", "show", "nope", "--data", str(data))[0] == 1
    rc, out, _ = cli(capsys, "report", "outbox", "--data", str(data), "--json")
    assert rc == 0 and json.loads(out)["counts"] == {"pending": 1}
    # no endpoint configured
    rc, _, err = cli(capsys, "report", "send", "--data", str(data))
    assert rc == 1 and "no HIS endpoint" in err
    port = free_port()
    (data / "hilum.toml").write_text(
        f'[report]\nhis = [{{ name = "his", host = "127.0.0.1", port = {port} }}]\nretry_base = 0.05\n'
    )
    rc, out, _ = cli(capsys, "report", "send", "--data", str(data), "--json")  # receiver down
    assert rc == 1 and json.loads(out)["counts"] == {"pending": 1}
    rx = Receiver(port, code="AE").start()
    try:
        time.sleep(0.1)
        rc, out, _ = cli(capsys, "report", "send", "--data", str(data), "--json")
        assert rc == 1 and json.loads(out)["stopped"] == 1
        rc, out, err = cli(capsys, "report", "outbox", "--data", str(data))
        assert rc == 1 and "failed-ae" in out and "retry --failed" in err
        rx.code = "AA"
        assert cli(capsys, "report", "retry", "--failed", "--data", str(data))[0] == 0
        rc, out, _ = cli(capsys, "report", "send", "--data", str(data), "--json")
        assert rc == 0 and json.loads(out)["sent"] == 1
    finally:
        rx.stop()
    assert len(rx.messages) == 2 and rx.messages[0] == rx.messages[1]
    pk = json.loads(cli(capsys, "report", "outbox", "--data", str(data), "--json")[1])["messages"][0]["pk"]
    rc, _, err = cli(capsys, "report", "retry", str(pk), "--data", str(data))
    assert rc == 1 and "delivered already" in err
    assert cli(capsys, "report", "abandon", str(pk), "--data", str(data))[0] == 1


def test_serve_sends_a_report_signed_elsewhere_and_findscu_sees_the_report_series(tmp_path: Path) -> None:
    data = tmp_path / "data"
    hl7_port, dicom_port, web_port = free_port(), free_port(), free_port()
    data.mkdir()
    (data / "hilum.toml").write_text(
        f'[report]\nhis = [{{ name = "ris", host = "127.0.0.1", port = {hl7_port}, timeout = 5 }}]\n'
        "poll_seconds = 0.3\nretry_base = 0.1\nretry_max = 0.5\n"
    )
    rx = Receiver(hl7_port).start()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hilum",
            "serve",
            "--data",
            str(data),
            "--dicom-port",
            str(dicom_port),
            "--aet",
            "NODE",
            "--web-port",
            str(web_port),
            "--hl7-port",
            str(free_port()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        wait_port(dicom_port, 60)
        report_id = _fill(data, store_dicom=True, endpoint=None)  # the endpoints of hilum.toml
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not rx.messages:
            time.sleep(0.1)
        assert len(rx.messages) == 1, proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
        assert f"|{MUELLER.patient_id}|".encode() in rx.messages[0]
        with Archive(data) as archive:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Outbox(archive).list()[0].state != "sent":
                time.sleep(0.1)
            assert Outbox(archive).list()[0].state == "sent" and Outbox(archive).list()[0].report_id == report_id
        # QIDO-RS (the node has users now: HTTP Basic as the radiologist)
        token = base64.b64encode(f"drhouse:{PASSWORD}".encode()).decode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{web_port}/dicom-web/studies/{STUDY.uid}/series",
            headers={"Authorization": f"Basic {token}", "Accept": "application/dicom+json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            listed = json.loads(resp.read())
        assert {s["00080060"]["Value"][0] for s in listed} == {"CT", "SR", "DOC"}
        if FINDSCU.exists() and shutil.which("dcmdump"):
            out = subprocess.run(
                [
                    str(FINDSCU),
                    "-S",
                    "-aec",
                    "NODE",
                    "-k",
                    "QueryRetrieveLevel=SERIES",
                    "-k",
                    f"StudyInstanceUID={STUDY.uid}",
                    "-k",
                    "Modality",
                    "-k",
                    "SeriesDescription",
                    "127.0.0.1",
                    str(dicom_port),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            text = out.stdout + out.stderr
            assert "CS [SR]" in text and "CS [DOC ]" in text and "LO [Report (PDF)]" in text, text
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        rx.stop()
