"""Scale-out: two ``hilum serve`` nodes, one PostgreSQL index, one S3 tier with write-through (README "Scale-out").

Each node has its own data folder (its online store); both receive (DCMTK
storescu to each), both serve what the other received — C-FIND, C-GET (DCMTK
getscu) and WADO-RS of a study stored on the other node, fetched from the
shared tier — and ``hilum check`` is clean on both, with the right counts.
Only node A applies the storage policies (``[storage] policies = false`` on B).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from conftest import free_port
from hilum.archive import Archive
from hilum.archive.schema import blob_copies, instances
from hilum.dicom.generator import IVANOV, MUELLER, generate_ct_series, make_study, write_dataset

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="DCMTK is needed"),
]
BIN = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def _node_toml(
    name: str, aet: str, ports: tuple[int, int, int], pg_url: str, endpoint: str, bucket: str, policies: bool
) -> str:
    return (
        f'[node]\naet = "{aet}"\ndicom_port = {ports[0]}\nweb_port = {ports[1]}\nhl7_port = {ports[2]}\n\n'
        f'[archive]\ndatabase_url = "{pg_url}"\n\n'
        f'[storage]\nnode_name = "{name}"\npolicies = {str(policies).lower()}\n\n'
        f'[tiers.shared]\ntype = "s3"\nendpoint_url = "{endpoint}"\nbucket = "{bucket}"\nprefix = "scale-out/"\n'
        'access_key = "S3RVER"\nsecret_key = "S3RVER"\nwrite_through = true\n'
    )


def _study(folder: Path, patient, accession: str, n: int) -> tuple[str, list[Path]]:  # type: ignore[no-untyped-def]
    study = make_study(patient, accession=accession, seed=accession)
    folder.mkdir(parents=True)
    files = [
        write_dataset(ds, folder / f"{i}.dcm")
        for i, ds in enumerate(generate_ct_series(study, rows=64, columns=64, slices=n))
    ]
    return study.uid, files


def _serve(data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hilum", "serve", "--data", str(data)],
        env=ENV,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=open(data / "serve.log", "w"),
    )


def _wait(port: int, proc: subprocess.Popen[str], data: Path) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (data / "serve.log").read_text()[-3000:]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("hilum serve did not listen")


def _send(aet: str, called: str, port: int, files: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN / "storescu"), "-aet", aet, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        env=ENV,
        stderr=subprocess.PIPE,
    )


def _getscu(called: str, port: int, study_uid: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "getscu"),
            "-aet",
            "WS",
            "-aec",
            called,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "-od",
            str(out),
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )


def _pixels(paths: Iterable[Path]) -> dict[str, bytes]:
    out = {}
    for p in paths:
        ds = pydicom.dcmread(p)
        out[str(ds.SOPInstanceUID)] = bytes(ds.PixelData)
    return out


def _check(data: Path) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(
        [sys.executable, "-m", "hilum", "check", "--data", str(data), "--json"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = json.loads(proc.stdout)
    assert proc.returncode == (0 if out["clean"] else 1), proc.stderr
    return out


TOTAL = 6 + 5 + 8


def test_two_nodes_share_one_index_and_one_tier(pg_url: str, s3_server: tuple[str, str], tmp_path: Path) -> None:
    endpoint, bucket = s3_server
    a_data, b_data = tmp_path / "a", tmp_path / "b"
    a_ports = (free_port(), free_port(), free_port())
    b_ports = (free_port(), free_port(), free_port())
    for data, name, aet, ports, policies in (
        (a_data, "a", "NODEA", a_ports, True),
        (b_data, "b", "NODEB", b_ports, False),
    ):
        data.mkdir()
        (data / "hilum.toml").write_text(_node_toml(name, aet, ports, pg_url, endpoint, bucket, policies))
    s1, files1 = _study(tmp_path / "s1", MUELLER, "SCALE1", 6)
    s2, files2 = _study(tmp_path / "s2", IVANOV, "SCALE2", 5)
    s3, files3 = _study(tmp_path / "s3", IVANOV, "SCALE3", 8)

    a = _serve(a_data)
    b = None
    try:
        _wait(a_ports[0], a, a_data)  # A first: it makes the schema; B finds it made
        b = _serve(b_data)
        _wait(b_ports[0], b, b_data)
        # Both receive, at the same time.
        # Both receive at the same time: a study each, and a third study half to each node.
        senders = [
            _send("MOD1", "NODEA", a_ports[0], files1 + files3[:4]),
            _send("MOD2", "NODEB", b_ports[0], files2 + files3[4:]),
        ]
        for s in senders:
            assert s.wait(120) == 0, s.stderr.read() if s.stderr else ""
        # Each node writes what it received through to the shared tier.
        index = Archive(tmp_path / "observer", database_url=pg_url)
        try:
            deadline = time.monotonic() + 90
            while True:
                with index.engine.connect() as conn:
                    n_inst = conn.execute(select(func.count()).select_from(instances)).scalar_one()
                    n_copy = conn.execute(
                        select(func.count())
                        .select_from(blob_copies)
                        .where(blob_copies.c.location == "tier:shared", blob_copies.c.verified_at.is_not(None))
                    ).scalar_one()
                if n_inst == TOTAL and n_copy == TOTAL:
                    break
                assert time.monotonic() < deadline, f"{n_inst} instances, {n_copy} copies on the tier"
                time.sleep(0.3)
        finally:
            index.close()

        # A answers C-FIND for B's study and C-GET gives it (fetched from the tier)...
        find = subprocess.run(
            [
                str(BIN / "findscu"),
                "-S",
                "-aet",
                "WS",
                "-aec",
                "NODEA",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={s2}",
                "-k",
                "NumberOfStudyRelatedInstances",
                "127.0.0.1",
                str(a_ports[0]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
        )
        assert find.returncode == 0 and s2 in find.stderr + find.stdout
        out = tmp_path / "got-from-a"
        out.mkdir()
        get = _getscu("NODEA", a_ports[0], s2, out)
        assert get.returncode == 0, get.stderr
        assert _pixels(out.iterdir()) == _pixels(files2)
        # ... and B serves A's study over WADO-RS.
        req = urllib.request.Request(
            f"http://127.0.0.1:{b_ports[1]}/dicom-web/studies/{s1}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert resp.status == 200
            body = resp.read()
        assert all(px in body for px in _pixels(files1).values())
        # The study received half by each node is one study of 8, whole from either node.
        for port, called in ((a_ports[0], "NODEA"), (b_ports[0], "NODEB")):
            got = tmp_path / f"split-from-{called}"
            got.mkdir()
            res = _getscu(called, port, s3, got)
            assert res.returncode == 0, res.stderr
            assert _pixels(got.iterdir()) == _pixels(files3)
        index = Archive(tmp_path / "observer", database_url=pg_url)
        try:
            (row,) = index.query("STUDY", {"StudyInstanceUID": s3})
            assert int(row["NumberOfStudyRelatedInstances"]) == 8 and int(row["NumberOfStudyRelatedSeries"]) == 1
        finally:
            index.close()
    finally:
        for proc in (b, a):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (b, a):
            if proc is not None:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # Neither corrupted the other: both clean, the same instances in the one index.
    for data in (a_data, b_data):
        report = _check(data)
        assert report["clean"], report
        assert report["instances"] == TOTAL
    assert (a.returncode, b.returncode if b else 0) == (0, 0)
