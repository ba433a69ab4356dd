"""The composition root: services start and stop as a unit; ``hilum serve`` runs until
SIGTERM, finishes the association in flight, and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port
from hilum.archive import Archive
from hilum.config import Config
from hilum.node import Node, Service

BIN = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}


class Recorder:
    def __init__(self, name: str, log: list[str], fail: bool = False):
        self.name, self.log, self.fail = name, log, fail

    def start(self) -> None:
        if self.fail:
            raise OSError(f"{self.name} cannot bind")
        self.log.append(f"start {self.name}")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")


def test_services_start_in_order_and_stop_in_reverse(tmp_path: Path) -> None:
    log: list[str] = []
    cfg = Config(data_dir=tmp_path)
    with Archive(tmp_path) as archive:
        node = Node(cfg, archive, services=[Recorder("a", log), Recorder("b", log)])
        assert all(isinstance(s, Service) for s in node.services)
        with node:
            assert node.running and node.service("b").name == "b"
        assert log == ["start a", "start b", "stop b", "stop a"]
        assert not node.running


def test_a_service_that_cannot_start_stops_the_others(tmp_path: Path) -> None:
    log: list[str] = []
    with Archive(tmp_path) as archive:
        node = Node(Config(data_dir=tmp_path), archive,
                    services=[Recorder("a", log), Recorder("b", log, fail=True), Recorder("c", log)])
        with pytest.raises(OSError, match="b cannot bind"):
            node.start()
        assert log == ["start a", "stop a"]


def test_default_services_include_dimse_and_only_filters(tmp_path: Path) -> None:
    node = Node(Config(data_dir=tmp_path, dicom_port=free_port()), only=["dimse"])
    assert [s.name for s in node.services] == ["dimse"]
    with pytest.raises(ValueError, match="no such node service"):
        Node(Config(data_dir=tmp_path), node.archive, only=["gopher"])
    node.stop()


def test_node_builds_one_order_book_for_its_adapters_and_runs_the_reconciler(tmp_path: Path,
                                                                              pydicom_files: Path) -> None:
    """The composition root builds the RIS side once: the HL7 receiver and the worklist and MPPS
    services share the node's order book; the reconciler listens while the node runs, and a study
    that arrived while nobody listened is reconciled when the node starts."""
    import pydicom

    from hilum.archive.orders import OrderInfo, PatientInfo, StepInfo

    cfg = Config(data_dir=tmp_path, dicom_port=free_port(), hl7_port=free_port(), web_port=free_port())
    with Archive(tmp_path) as archive:
        node = Node(cfg, archive)
        with node.orders.transaction() as tx:
            pk = tx.upsert_patient(PatientInfo("P1", name="Doe^Jane"), "order")
            tx.create_order(pk, OrderInfo(accession_number="ACC1", steps=[StepInfo(modality="CT")]))
            tx.create_order(pk, OrderInfo(accession_number="ACC2", steps=[StepInfo(modality="CT")]))

        def arrive(accession: str) -> None:
            ds = pydicom.dcmread(pydicom_files / "CT_small.dcm")
            ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (pydicom.uid.generate_uid() for _ in "abc")
            ds.AccessionNumber, ds.PatientID = accession, "P1"
            assert archive.ingest(ds).status == "stored"

        arrive("ACC1")  # the node is not running: nobody reconciles yet
        assert node.orders.order(accession="ACC1")["images_at"] is None
        dimse = node.service("dimse")
        hl7 = node.service("hl7")
        assert {ext.book for ext in dimse.extensions} == {node.orders}  # type: ignore[attr-defined]
        assert hl7.receiver.book is node.orders  # type: ignore[attr-defined]
        with node:
            assert node.orders.order(accession="ACC1")["images_at"] is not None  # caught up at start
            arrive("ACC2")
            assert node.orders.order(accession="ACC2")["images_at"] is not None  # heard while running
        with node.orders.transaction() as tx:
            tx.create_order(pk, OrderInfo(accession_number="ACC3", steps=[StepInfo(modality="CT")]))
        arrive("ACC3")  # stopped: the reconciler listens no more
        assert node.orders.order(accession="ACC3")["images_at"] is None


def _serve(data: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hilum", "serve", "--data", str(data), "--dicom-port", str(port),
         "--web-port", str(free_port()), "--hl7-port", str(free_port()), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hilum serve exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("hilum serve did not listen")


@pytest.mark.skipif(not (BIN / "storescu").exists(), reason="DCMTK is needed")
def test_serve_finishes_the_association_in_flight_on_sigterm(tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    from test_dimse_scp import ROOT, _tiny

    files = []
    for i, ds in enumerate(_tiny("Ct^Flight", "FLIGHT", "20240101", generate_uid(ROOT), generate_uid(ROOT), "CT", 40)):
        ds.Rows = ds.Columns = 512
        ds.PixelData = os.urandom(512 * 512)
        files.append(tmp_path / f"{i:02d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    data, port = tmp_path / "data", free_port()
    serve = _serve(data, port, "--aet", "NODE")
    try:
        _wait_listening(port, serve)
        sender = subprocess.Popen([str(BIN / "storescu"), "-aet", "CT1", "-aec", "NODE", "127.0.0.1", str(port),
                                   *map(str, files)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # SIGTERM once the association is open and C-STOREs are flowing: the first blob is in place.
        blobs = data / "blobs"
        deadline = time.monotonic() + 60
        while not any(p.is_file() for d in blobs.glob("??") for p in d.rglob("*")):
            assert time.monotonic() < deadline and sender.poll() is None, "no C-STORE arrived"
            time.sleep(0.01)
        serve.send_signal(signal.SIGTERM)
        assert sender.wait(60) == 0, sender.stderr.read() if sender.stderr else ""
        _out, err = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
    assert serve.returncode == 0, err
    assert "CT1 -> NODE" in err and "C-STORE 40" in err and "released" in err, err
    with Archive(data) as a:
        assert a.stats()["instances"] == 40


def test_serve_bad_options_and_busy_port(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "hilum", "serve", "--data", str(tmp_path), "--aet", "X" * 17],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--aet" in bad.stderr, bad.stderr
    port = free_port()
    first = _serve(tmp_path / "a", port)
    try:
        _wait_listening(port, first)
        second = subprocess.run(
            [sys.executable, "-m", "hilum", "serve", "--data", str(tmp_path / "b"), "--dicom-port", str(port),
             "--web-port", str(free_port()), "--hl7-port", str(free_port())],
            capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stderr
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 0


@pytest.mark.skipif(not (BIN / "storescp").exists(), reason="DCMTK is needed")
def test_serve_log_stays_short_when_an_instance_is_full_of_invalid_values(tmp_path: Path) -> None:
    """A C-MOVE of one instance holding 3,000 values invalid for their VR, converted for a peer that
    takes Implicit VR Little Endian only: pydicom logged and warned once per value (9,000 lines).
    The node's log says what happened in a few lines."""
    import io

    import pydicom

    from test_dicomweb_attack import invalid_values_file

    data = invalid_values_file(3000)
    study = str(pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID)
    folder, received = tmp_path / "data", tmp_path / "received"
    received.mkdir()
    with Archive(folder) as a:
        assert a.ingest(data).status == "stored"
    scp_port, port = free_port(), free_port()
    (folder / "hilum.toml").write_text(f'[peers.scp]\naet = "STORESCP"\nhost = "127.0.0.1"\nport = {scp_port}\n')
    scp = subprocess.Popen([str(BIN / "storescp"), "+xi", "-aet", "STORESCP", "-od", str(received), str(scp_port)],
                           env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    serve = _serve(folder, port)
    try:
        _wait_listening(port, serve)
        move = subprocess.run([str(BIN / "movescu"), "-S", "-aet", "VIEWER", "-aec", "HILUM", "-aem", "STORESCP",
                               "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1",
                               str(port)], capture_output=True, text=True, timeout=120, env=ENV)
        assert move.returncode == 0, move.stderr
        serve.send_signal(signal.SIGTERM)
        _out, err = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
        scp.terminate()
        scp.wait(10)
    assert len(list(received.iterdir())) == 1
    lines = err.splitlines()
    assert "C-MOVE 1" in err and len(lines) < 30, f"{len(lines)} lines: {lines[:8]}"
