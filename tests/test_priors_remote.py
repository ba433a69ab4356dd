"""Priors on remote peers: a second real ``hilum serve`` on loopback asked by C-FIND and QIDO-RS;
dead and silent peers give an error line within the timeout, never a hang."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from conftest import free_port, wait_port
from hilum.archive import Archive
from hilum.config import Peer
from hilum.dicomweb.client import DicomWebSource
from hilum.priors import find_remote_priors
from test_priors import PATIENT, small_study, store

APP = Path(__file__).resolve().parents[1] / "app"


@contextlib.contextmanager
def serve_peer(
    root: Path, aet: str, *, peers: Mapping[str, Mapping[str, Any]] | None = None, fill: Any = None
) -> Iterator[dict[str, int]]:
    """A real ``hilum serve`` process on loopback with its own data folder: ``fill(archive)`` stores
    its studies first; yields its ports ``{"dicom", "web", "hl7"}``."""
    root.mkdir(parents=True, exist_ok=True)
    if fill is not None:
        with Archive(root) as a:
            fill(a)
    ports = {"dicom": free_port(), "web": free_port(), "hl7": free_port()}
    doc: dict[str, Any] = {"node": {"aet": aet}}
    if peers:
        doc["peers"] = {k: dict(v) for k, v in peers.items()}
    (root / "hilum.toml").write_text(tomli_w.dumps(doc))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")])}
    log = open(root / "serve.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hilum",
            "serve",
            "--data",
            str(root),
            "--dicom-port",
            str(ports["dicom"]),
            "--web-port",
            str(ports["web"]),
            "--hl7-port",
            str(ports["hl7"]),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        for p in ports.values():
            try:
                wait_port(p, 60)
            except AssertionError:
                raise AssertionError(f"hilum serve did not start: {(root / 'serve.log').read_text()[-2000:]}") from None
        yield ports
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def remote_history(archive: Archive) -> dict[str, str]:
    """What the remote archive holds of the patient: two chest CTs, a head MR (and the current one)."""
    return {
        "current": store(archive, small_study(PATIENT, "ACC-CUR", "20261102", series=2)),
        "ct_1y": store(archive, small_study(PATIENT, "ACC-1Y", "20251015")),
        "ct_2y": store(archive, small_study(PATIENT, "ACC-2Y", "20241101")),
        "mr_3y": store(archive, small_study(PATIENT, "ACC-MR", "20231102", modality="MR", body_part="HEAD")),
    }


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, int], dict[str, str]]]:
    uids: dict[str, str] = {}

    def fill(a: Archive) -> None:
        uids.update(remote_history(a))

    with serve_peer(tmp_path_factory.mktemp("remote"), "REMOTE", fill=fill) as ports:
        yield ports, uids


def test_remote_priors_over_dimse_and_dicomweb(archive: Archive, remote: tuple[dict[str, int], dict[str, str]]) -> None:
    ports, uids = remote
    store(archive, small_study(PATIENT, "ACC-CUR", "20261102", series=2))  # the current study, opened here
    store(archive, small_study(PATIENT, "ACC-1Y", "20251015"))  # one prior is local already
    dimse = {"pacs": Peer("REMOTE", "127.0.0.1", ports["dicom"])}
    web = {"web": DicomWebSource("web", f"http://127.0.0.1:{ports['web']}/dicom-web")}
    for peers in (dimse, web):
        errors: dict[str, str] = {}
        found = find_remote_priors(archive, uids["current"], peers, timeout=20, errors=errors)
        assert errors == {}
        name = next(iter(peers))
        assert [p.study_uid for p in found] == [uids["ct_1y"], uids["ct_2y"], uids["mr_3y"]]
        assert all(p.source == name for p in found)
        assert [p.local for p in found] == [True, False, False]
        ct = found[1]
        assert (ct.patient_id, ct.study_date, ct.accession, ct.modalities) == (
            "PRI-0001",
            "20241101",
            "ACC-2Y",
            ("CT",),
        )
        assert ct.body_parts == ("CHEST",) and (ct.n_series, ct.n_instances) == (1, 2)
        assert ct.reason == "same modality and body part, 2 y earlier"
        assert found[2].body_parts == ("HEAD",) and found[2].reason.startswith("other modality (MR)")
    # Both peers at once: each study once, from the first peer named.
    both = find_remote_priors(archive, uids["current"], {**dimse, **web}, timeout=20)
    assert [p.source for p in both] == ["pacs"] * 3


def test_dead_and_silent_peers_give_errors_within_the_timeout(
    archive: Archive, remote: tuple[dict[str, int], dict[str, str]]
) -> None:
    ports, uids = remote
    store(archive, small_study(PATIENT, "ACC-CUR", "20261102", series=2))
    silent = socket.socket()  # accepts TCP connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closed = free_port()  # nothing listens there
    try:
        peers: dict[str, Peer | DicomWebSource] = {
            "dead": Peer("DEAD", "127.0.0.1", closed),
            "silent": Peer("SILENT", "127.0.0.1", silent.getsockname()[1]),
            "silent-web": DicomWebSource("silent-web", f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"),
            "pacs": Peer("REMOTE", "127.0.0.1", ports["dicom"]),
        }
        errors: dict[str, str] = {}
        start = time.monotonic()
        found = find_remote_priors(archive, uids["current"], peers, timeout=2.0, errors=errors)
        took = time.monotonic() - start
    finally:
        silent.close()
    assert took < 6.0, took
    assert set(errors) == {"dead", "silent", "silent-web"}
    assert "connect" in errors["dead"].lower() or "refused" in errors["dead"].lower()
    assert all(errors[k] for k in errors)
    assert {p.study_uid for p in found} == {uids["ct_1y"], uids["ct_2y"], uids["mr_3y"]}  # the live one answered
