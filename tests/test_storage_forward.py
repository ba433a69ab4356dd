"""Forwarding and replication (issue 17 part 4) against real peers on 127.0.0.1.

DCMTK ``storescp`` as a C-STORE destination that is stopped and restarted in the
middle of the queue (every instance in its folder once in the end); the queue
surviving a restart of the service and of the process (``hilum forward send``);
a second Hilum node as destination with Storage Commitment (``peer:`` copies
verified) and as a STOW-RS server; an instance the destination refuses (no
presentation context: a ``storescp`` profile without its SOP class) ends
``failed`` while the others go on; rules with typos refused with their line.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom import AE

from conftest import free_port, wait_port
from hilum.archive import Archive, forward, storage
from hilum.archive.forward import ForwardRules, parse
from hilum.archive.schema import blob_copies
from hilum.archive.users import UserStore
from hilum.config import Config, Peer
from hilum.dicomweb.service import DicomWebService
from hilum.errors import ConfigError
from hilum.node import Node
from hilum.replication import ForwardService, drain
from test_dimse_scp import BIN, ENV, ROOT, _tiny

pytestmark = pytest.mark.skipif(not (BIN / "storescp").exists(), reason="DCMTK (Debian package dcmtk) is needed")

PW = "correct horse"


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def fill(archive: Archive, n_ct: int = 12, n_mr: int = 0, *, source_aet: str = "MODALITY") -> dict[str, list[str]]:
    """A CT study (and an MR one) in the archive; their SOP Instance UIDs by modality."""
    out: dict[str, list[str]] = {"CT": [], "MR": []}
    for modality, n in (("CT", n_ct), ("MR", n_mr)):
        if not n:
            continue
        cls = CTImageStorage if modality == "CT" else pydicom.uid.MRImageStorage
        for ds in _tiny(
            "Fwd^Test",
            f"FWD-{modality}",
            "20240101",
            generate_uid(ROOT),
            generate_uid(ROOT),
            modality,
            n,
            sop_class=cls,
        ):
            assert archive.ingest(_bytes(ds), origin="dimse", source_aet=source_aet).status == "stored"
            out[modality].append(str(ds.SOPInstanceUID))
    return out


def toml_rules(text: str) -> ForwardRules:
    import tomllib

    return parse(tomllib.loads(text), text, "hilum.toml")


PEERS = """
[peers.backup]
aet = "STORESCP"
host = "127.0.0.1"
port = 104
[dicomweb_sources.web]
url = "http://127.0.0.1:8042/dicom-web"
"""


class StoreSCP:
    """A DCMTK storescp on a fixed port that can be stopped and started again."""

    def __init__(self, out: Path, port: int, aet: str = "STORESCP", config: Path | None = None):
        self.out, self.port, self.aet, self.config = out, port, aet, config
        self.proc: subprocess.Popen[bytes] | None = None
        out.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        args = [str(BIN / "storescp"), "-aet", self.aet, "-od", str(self.out)]
        if self.config is not None:
            args += ["-xf", str(self.config), "Default"]
        self.proc = subprocess.Popen(
            [*args, str(self.port)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def received(self) -> list[str]:
        """The SOP Instance UID of every file in the output folder (one per file)."""
        return [
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in sorted(self.out.iterdir())
            if p.is_file()
        ]


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    s = StoreSCP(tmp_path / "received", free_port())
    try:
        yield s
    finally:
        s.stop()


def config_for(data: Path, peers: dict[str, Peer], rules_toml: str, extra: str = "") -> Config:
    """A Config with the peers, and hilum.toml holding them and the rules (as the node reads it)."""
    data.mkdir(parents=True, exist_ok=True)
    text = "".join(f'[peers.{n}]\naet = "{p.aet}"\nhost = "{p.host}"\nport = {p.port}\n' for n, p in peers.items())
    (data / "hilum.toml").write_text(text + extra + rules_toml, encoding="utf-8")
    from hilum.config import load_config

    return load_config(data)


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def by_state(archive: Archive, dest: str) -> dict[str, int]:
    return {
        k: v
        for k, v in next(
            (d for d in forward.status(archive) if d["destination"] == dest),
            {"pending": 0, "sent": 0, "committed": 0, "failed": 0},
        ).items()
        if k in forward.STATES
    }


# ------------------------------------------------------------------ rules


def test_rules_parse_and_typos_are_refused_with_their_line() -> None:
    rules = toml_rules(
        PEERS
        + """
[forwarding]
retry_initial = 1
batch = 8

[[forward]]
name = "ct"
destination = "backup"
modalities = ["ct"]
source_aets = ["CT1"]

[[forward]]
destination = "web"
commitment = "never"
"""
    )
    assert [r.name for r in rules.rules] == ["ct", "forward-2"]
    assert rules.rules[0].kind == "dimse" and rules.rules[0].modalities == ("CT",)
    assert rules.rules[1].kind == "dicomweb" and rules.batch == 8
    assert rules.backoff(1) == 1 and rules.backoff(3) == 4 and rules.backoff(40) == 3600
    assert parse({}, "", "x").rules == []

    def refused(text: str) -> str:
        with pytest.raises(ConfigError) as exc:
            toml_rules(PEERS + text)
        return str(exc.value)

    msg = refused('[[forward]]\ndestination = "backup"\nmodalitys = ["CT"]\n')
    assert "line 10" in msg and "modalitys" in msg and "unknown key" in msg
    msg = refused('\n[[forward]]\ndestination = "nowhere"\n')
    assert "line 10" in msg and "no peer called 'nowhere'" in msg
    msg = refused('[[forward]]\ndestination = "backup"\ncommitment = "sometimes"\n')
    assert "line 10" in msg and "commitment" in msg
    msg = refused('[forwarding]\nretry_max = "soon"\n')
    assert "line 9" in msg and "retry_max" in msg
    msg = refused("[forwarding]\nretry_inital = 3\n")
    assert "unknown setting" in msg
    assert "must be" in refused('[[forward]]\ndestination = "backup"\nmodalities = "CT"\n')
    assert "Storage Commitment" in refused('[[forward]]\ndestination = "web"\ncommitment = "always"\n')


def test_a_rule_with_a_typo_is_refused_by_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hilum.toml").write_text('[[forward]]\ndestination = "backup"\n', encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "hilum", "--data", str(data), "forward", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert proc.returncode != 0 and "line 2" in proc.stderr and "no peer called 'backup'" in proc.stderr


# ------------------------------------------------------------------ routing


def test_routing_is_idempotent_filters_and_dry_run(archive: Archive) -> None:
    uids = fill(archive, 3, 2)
    rules = toml_rules(
        PEERS + '[[forward]]\ndestination = "backup"\nmodalities = ["CT"]\n'
        '[[forward]]\ndestination = "web"\nsource_aets = ["ELSEWHERE"]\n'
    )
    dry = forward.route(archive, rules, dry_run=True)
    assert dry.instances == 3 and [a["instances"] for a in dry.actions] == [3]
    assert dry.actions[0]["rule"] == "forward-1" and dry.actions[0]["destination"] == "backup"
    assert dry.actions[0]["bytes"] > 0 and dry.actions[0]["uid"]
    assert forward.status(archive) == []  # the dry run changed nothing
    assert forward.route(archive, rules).instances == 3
    assert forward.route(archive, rules).instances == 0  # the mark and the unique index
    assert {r["sop_uid"] for r in forward.rows(archive)} == set(uids["CT"])
    st = forward.status(archive)
    assert [(d["destination"], d["pending"]) for d in st] == [("backup", 3)]
    assert st[0]["oldest_pending"] is not None and st[0]["next_try"] is not None
    # a rule's mark is per rule: a new rule takes the instances that arrived before it
    rules2 = toml_rules(PEERS + '[[forward]]\ndestination = "web"\n')
    assert forward.route(archive, rules2).instances == 5


# ------------------------------------------------------------------ storescp


def test_storescp_stopped_and_restarted_mid_queue(tmp_path: Path, archive: Archive, storescp: StoreSCP) -> None:
    uids = fill(archive, 30)["CT"]
    cfg = config_for(
        tmp_path / "cfg",
        {"backup": Peer("STORESCP", "127.0.0.1", storescp.port)},
        '[forwarding]\nretry_initial = 0.3\nretry_max = 1\nbatch = 4\n[[forward]]\ndestination = "backup"\n',
    )
    rules = forward.parse(
        {
            "peers": {"backup": {}},
            "forwarding": {"retry_initial": 0.3, "retry_max": 1, "batch": 4},
            "forward": [{"destination": "backup"}],
        },
        "",
        "t",
    )
    storescp.start()
    svc = ForwardService(archive, cfg, rules)
    svc.start()
    try:
        wait_for(lambda: by_state(archive, "backup")["sent"] >= 6, what="a first part sent")
        storescp.stop()  # mid-queue
        wait_for(lambda: any(d["last_error"] for d in forward.status(archive)), what="an error noted")
        st = forward.status(archive)[0]
        assert st["pending"] > 0 and st["last_error"]  # cannot connect, association lost or aborted
        time.sleep(1.0)  # a few failed tries (backoff)
        storescp.start()
        svc.wake()
        wait_for(lambda: by_state(archive, "backup")["sent"] == 30, what="everything sent")
    finally:
        svc.stop()
        storescp.stop()
    got = storescp.received()
    assert sorted(got) == sorted(uids)  # every instance there, once (storescp names a file by its UID)
    st = forward.status(archive)[0]
    assert (st["pending"], st["sent"], st["committed"], st["failed"]) == (0, 30, 0, 0)
    with archive.engine.connect() as conn:
        locations = [r[0] for r in conn.execute(blob_copies.select().with_only_columns(blob_copies.c.location))]
    assert locations == ["peer:backup"] * 30  # storescp does no commitment: C-STORE success confirms
    assert archive.check().clean


def test_queue_survives_a_restart_of_the_service_and_the_process(tmp_path: Path, storescp: StoreSCP) -> None:
    data = tmp_path / "data"
    cfg = config_for(
        data,
        {"backup": Peer("STORESCP", "127.0.0.1", storescp.port)},
        '[forwarding]\nretry_initial = 0.2\nretry_max = 0.5\n[[forward]]\ndestination = "backup"\n',
    )
    archive = Archive(data)
    uids = fill(archive, 10)["CT"]
    svc = ForwardService(archive, cfg)  # rules from hilum.toml
    svc.start()
    try:  # destination down: queued, tried, not lost
        wait_for(
            lambda: by_state(archive, "backup")["pending"] == 10 and forward.status(archive)[0]["last_error"],
            what="queued and tried",
        )
    finally:
        svc.stop()
        archive.close()
    archive = Archive(data)  # a new archive object on the same data folder: the queue is there
    try:
        assert by_state(archive, "backup")["pending"] == 10
        more = fill(archive, 5)["CT"]
    finally:
        archive.close()
    storescp.start()
    env = {**ENV, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "hilum", "--data", str(data), "forward", "send", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(storescp.received()) == sorted(uids + more)
    proc = subprocess.run(
        [sys.executable, "-m", "hilum", "--data", str(data), "forward", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    import json

    st = json.loads(proc.stdout)
    assert proc.returncode == 0 and st[0]["destination"] == "backup" and st[0]["sent"] == 15 and st[0]["pending"] == 0


def test_a_refused_instance_fails_and_the_others_go_on(tmp_path: Path, archive: Archive) -> None:
    """A storescp profile that takes CT only: the MR instances have no presentation context there."""
    profile = tmp_path / "ct-only.cfg"
    profile.write_text(
        "[[TransferSyntaxes]]\n[Uncompressed]\nTransferSyntax1 = LocalEndianExplicit\n"
        "TransferSyntax2 = LittleEndianImplicit\n[[PresentationContexts]]\n[CTOnly]\n"
        "PresentationContext1 = VerificationSOPClass\\Uncompressed\n"
        "PresentationContext2 = CTImageStorage\\Uncompressed\n"
        "[[Profiles]]\n[Default]\nPresentationContexts = CTOnly\n",
        encoding="utf-8",
    )
    scp = StoreSCP(tmp_path / "received", free_port(), config=profile)
    scp.start()
    try:
        uids = fill(archive, 4, 3)
        cfg = config_for(tmp_path / "cfg", {"backup": Peer("STORESCP", "127.0.0.1", scp.port)}, "")
        rules = forward.parse({"peers": {"backup": {}}, "forward": [{"destination": "backup"}]}, "", "t")
        out = drain(archive, cfg, rules)["backup"]
        assert (out.sent, out.failed) == (4, 3)
        assert sorted(scp.received()) == sorted(uids["CT"])
        failed = forward.rows(archive, state="failed")
        assert sorted(r["sop_uid"] for r in failed) == sorted(uids["MR"])
        assert all("cannot be sent to this peer" in r["last_error"] for r in failed)
        st = forward.status(archive)[0]
        assert (st["sent"], st["failed"], st["pending"]) == (4, 3, 0) and st["last_error"]
        # failed for good: a second pass does not send them again; an explicit retry does
        assert drain(archive, cfg, rules)["backup"].failed == 0
        assert forward.retry(archive, "backup", failed_only=True) == 3
        assert by_state(archive, "backup")["pending"] == 3
    finally:
        scp.stop()


# ------------------------------------------------------------------ Hilum to Hilum


@pytest.fixture
def peer_node(tmp_path: Path) -> Iterator[Node]:
    cfg = Config(data_dir=tmp_path / "peer", aet="PEERHILUM", dicom_port=free_port(), web_port=0)
    with Node(cfg, only=["dimse", "dicomweb"]) as n:
        yield n


@pytest.mark.parametrize("commitment", ["auto", "always"])
def test_hilum_to_hilum_with_storage_commitment(
    tmp_path: Path, archive: Archive, peer_node: Node, commitment: str
) -> None:
    """Hilum's SCP does Storage Commitment: with "auto" as with "always" every instance ends committed."""
    uids = fill(archive, 9)["CT"]
    peer = Peer("PEERHILUM", "127.0.0.1", peer_node.config.dicom_port)
    cfg = config_for(
        tmp_path / "cfg",
        {"backup": peer},
        f'[forwarding]\nbatch = 4\n[[forward]]\ndestination = "backup"\ncommitment = "{commitment}"\n',
    )
    rules = forward.parse(
        {
            "peers": {"backup": {}},
            "forwarding": {"batch": 4},
            "forward": [{"destination": "backup", "commitment": commitment}],
        },
        "",
        "t",
    )
    svc = ForwardService(archive, cfg, rules)
    svc.start()
    try:
        wait_for(lambda: by_state(archive, "backup")["committed"] == 9, what="every instance committed")
    finally:
        svc.stop()
    assert sorted(r["SOPInstanceUID"] for r in peer_node.archive.query("IMAGE", {})) == sorted(uids)
    study_uid = archive.query("STUDY", {})[0]["StudyInstanceUID"]
    with archive.engine.connect() as conn:
        pk = conn.execute(_study_pk(study_uid)).scalar()
        assert storage.study_fully_held_elsewhere(conn, pk) == ["peer:backup"]
        pks = [r[0] for r in conn.execute(blob_copies.select().with_only_columns(blob_copies.c.verified_at))]
    assert len(pks) == 9 and all(pks)
    logged = storage.policy_history(archive, action="forward")
    assert len(logged) == 1 and logged[0]["uid"] == study_uid and logged[0]["instances"] == 9
    assert "storage commitment" in logged[0]["detail"]


def _study_pk(study_uid: str) -> Any:
    from sqlalchemy import select

    from hilum.archive.schema import studies

    return select(studies.c.pk).where(studies.c.study_uid == study_uid)


def test_commitment_report_on_a_new_association_reaches_the_queue(tmp_path: Path) -> None:
    """A peer that reports later, on an association of its own (PS3.4 J.3.3.2): the node's SCP hands the
    N-EVENT-REPORT to the queue, and the rows waiting for it become committed."""
    cfg = Config(
        data_dir=tmp_path / "node",
        aet="HILUM",
        dicom_port=free_port(),
        peers={"backup": Peer("LATEPACS", "127.0.0.1", free_port())},
    )
    with Node(cfg, only=["dimse"]) as node:
        uids = fill(node.archive, 3)["CT"]
        rules = forward.parse({"peers": {"backup": {}}, "forward": [{"destination": "backup"}]}, "", "t")
        forward.route(node.archive, rules)
        items = forward.claim(node.archive, "backup", 10)
        tuid = generate_uid(ROOT)
        forward.mark_sent(node.archive, items, transaction_uid=tuid, wait=120)
        assert by_state(node.archive, "backup")["sent"] == 3
        info = Dataset()
        info.TransactionUID = tuid
        refs = []
        for it in items[:2]:
            r = Dataset()
            r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID = CTImageStorage, it.sop_uid
            refs.append(r)
        info.ReferencedSOPSequence = refs
        bad = Dataset()
        bad.ReferencedSOPClassUID, bad.ReferencedSOPInstanceUID, bad.FailureReason = (
            CTImageStorage,
            items[2].sop_uid,
            0x0110,
        )
        info.FailedSOPSequence = [bad]
        from pynetdicom import build_role
        from pynetdicom.sop_class import StorageCommitmentPushModel

        ae = AE("LATEPACS")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate(
            "127.0.0.1",
            cfg.dicom_port,
            ae_title="HILUM",
            ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)],
        )
        try:
            assert assoc.is_established
            status, _ = assoc.send_n_event_report(info, 2, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
            assert status.Status == 0x0000
        finally:
            assoc.release()
            ae.shutdown()
        st = by_state(node.archive, "backup")
        assert (st["committed"], st["pending"], st["sent"]) == (2, 1, 0)
        assert forward.rows(node.archive, state="pending")[0]["sop_uid"] == items[2].sop_uid
        assert "0x0110" in forward.rows(node.archive, state="pending")[0]["last_error"]
        assert {it.sop_uid for it in items} == set(uids)


def test_stow_rs_to_a_second_hilum_node(tmp_path: Path, archive: Archive, peer_node: Node) -> None:
    """STOW-RS to the DICOMweb of a second Hilum node, with a bearer token saved in hilum.toml (a password
    never is)."""
    users = UserStore.of(peer_node.archive)
    users.add("fwd", "radiologist", PW)
    token = users.issue_token("fwd", ttl=None, label="forwarding")
    web = peer_node.service("dicomweb")
    assert isinstance(web, DicomWebService)
    uids = fill(archive, 6, 2)
    extra = f'[dicomweb_sources.web]\nurl = "{web.url}"\ntoken = "{token}"\n'
    cfg = config_for(tmp_path / "cfg", {}, '[forwarding]\nbatch = 3\n[[forward]]\ndestination = "web"\n', extra)
    rules = forward.parse(
        {"dicomweb_sources": {"web": {}}, "forwarding": {"batch": 3}, "forward": [{"destination": "web"}]}, "", "t"
    )
    out = drain(archive, cfg, rules)["web"]
    assert (out.sent, out.failed, out.retry) == (8, 0, 0)
    assert sorted(r["SOPInstanceUID"] for r in peer_node.archive.query("IMAGE", {})) == sorted(uids["CT"] + uids["MR"])
    assert by_state(archive, "web")["sent"] == 8
    sent = archive.audit.search(event="DICOM Instances Transferred", user="forwarding")
    # one event per study per transfer (batches of 3 here), the patient filled in from the index
    assert sum(e["instances"] for e in sent) == 8 and all("STOW-RS" in e["detail"] and e["patient_id"] for e in sent)
    assert {e["study_uids"] for e in sent} == {r["StudyInstanceUID"] for r in archive.query("STUDY", {})}
    for sop in uids["CT"]:
        assert peer_node.archive.read(sop) == archive.read(sop)  # byte for byte, every UID kept
    # a wrong token: nothing is lost, the rows wait for a retry with the server's answer as the error
    (tmp_path / "cfg" / "hilum.toml").write_text(
        (tmp_path / "cfg" / "hilum.toml").read_text().replace(token, "wrong"), encoding="utf-8"
    )
    from hilum.config import load_config

    more = fill(archive, 2)["CT"]
    out = drain(archive, load_config(tmp_path / "cfg"), rules)["web"]
    assert (out.sent, out.retry) == (0, 2)
    waiting = forward.rows(archive, state="pending")
    assert sorted(r["sop_uid"] for r in waiting) == sorted(more) and "401" in waiting[0]["last_error"]


def test_a_destination_that_is_down_never_blocks_ingest(tmp_path: Path) -> None:
    port = free_port()  # nobody listens
    cfg = Config(
        data_dir=tmp_path / "node",
        aet="HILUM",
        dicom_port=free_port(),
        peers={"backup": Peer("NOBODY", "127.0.0.1", port)},
    )
    rules = forward.parse(
        {
            "peers": {"backup": {}},
            "forwarding": {"retry_initial": 0.1, "retry_max": 0.2},
            "forward": [{"destination": "backup"}],
        },
        "",
        "t",
    )
    archive = Archive(cfg.data_dir)
    svc = ForwardService(archive, cfg, rules)
    svc.start()
    try:
        done = threading.Event()

        def ingest() -> None:
            fill(archive, 20)
            done.set()

        t = threading.Thread(target=ingest)
        t.start()
        assert done.wait(60)
        wait_for(lambda: by_state(archive, "backup")["pending"] == 20, what="all queued")
        wait_for(lambda: forward.rows(archive)[0]["attempts"] >= 2, what="retried")
    finally:
        svc.stop()
        archive.close()


# ------------------------------------------------------------------ two nodes, one PostgreSQL


@pytest.mark.postgres
def test_two_nodes_on_one_postgresql_never_send_a_row_twice(tmp_path: Path, pg_url: str) -> None:
    """Two forwarding services on one PostgreSQL queue (and one blob folder, as on a NAS): both route and
    claim at once; storescp with unique file names (+uf) shows a second copy of anything sent twice."""
    scp = StoreSCP(tmp_path / "received", free_port())
    data = tmp_path / "data"
    a1 = Archive(data, database_url=pg_url)
    a2 = Archive(data, database_url=pg_url)
    services: list[ForwardService] = []
    try:
        uids = fill(a1, 40)["CT"]
        cfg = Config(data_dir=data, aet="HILUM", peers={"backup": Peer("STORESCP", "127.0.0.1", scp.port)})
        rules = forward.parse(
            {
                "peers": {"backup": {}},
                "forwarding": {"batch": 3, "associations": 2},
                "forward": [{"destination": "backup"}],
            },
            "",
            "t",
        )
        proc = subprocess.Popen(
            [str(BIN / "storescp"), "-aet", "STORESCP", "+uf", "-od", str(scp.out), str(scp.port)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(scp.port)
        services = [ForwardService(a1, cfg, rules), ForwardService(a2, cfg, rules)]
        for s in services:
            s.start()
        wait_for(lambda: by_state(a1, "backup")["sent"] == 40, what="everything sent")
        time.sleep(0.5)  # anything sent twice would be arriving now
        proc.kill()
        proc.wait(10)
        got = scp.received()
        assert sorted(got) == sorted(uids)  # 40 files: each once
        with a2.engine.connect() as conn:
            assert len(conn.execute(blob_copies.select()).all()) == 40
    finally:
        for s in services:
            s.stop()
        a1.close()
        a2.close()


def test_kill_9_in_the_middle_of_sending_loses_nothing(tmp_path: Path, storescp: StoreSCP) -> None:
    """``hilum forward send`` killed (SIGKILL) while sending: its claims are taken back at the next start (the
    process is gone), every instance ends at storescp, the queue says sent for all, ``hilum check`` is clean."""
    import signal

    data = tmp_path / "data"
    config_for(
        data,
        {"backup": Peer("STORESCP", "127.0.0.1", storescp.port)},
        '[forwarding]\nbatch = 4\nassociations = 1\n[[forward]]\ndestination = "backup"\n',
    )
    archive = Archive(data)
    try:
        uids = fill(archive, 400)["CT"]
    finally:
        archive.close()
    storescp.start()
    env = {**ENV, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "hilum", "--data", str(data), "forward", "send"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    archive = Archive(data)
    try:
        wait_for(lambda: by_state(archive, "backup")["sent"] >= 20, what="sending under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        st = by_state(archive, "backup")
        assert st["sent"] < 400, "finished before the kill: nothing was tested"
    finally:
        archive.close()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    archive = Archive(data)
    try:
        st = forward.status(archive)[0]
        assert (st["sent"], st["pending"], st["failed"]) == (400, 0, 0)
        assert not [r for r in forward.rows(archive) if r["state"] != "sent"]
        assert archive.check().clean
    finally:
        archive.close()
    assert sorted(storescp.received()) == sorted(uids)  # each once (a resent one overwrites its file)


def test_node_routes_what_storescu_sends_by_modality_and_calling_aet(tmp_path: Path, storescp: StoreSCP) -> None:
    """The node's own services: DCMTK storescu sends CT and MR to the node as MODALITY and as OTHER; the
    rule (CT from MODALITY) forwards just those, while the node keeps receiving."""
    data = tmp_path / "node"
    port = free_port()
    cfg = config_for(
        data,
        {"backup": Peer("STORESCP", "127.0.0.1", storescp.port)},
        '[[forward]]\nname = "ct-from-modality"\ndestination = "backup"\nmodalities = ["CT"]\n'
        'source_aets = ["MODALITY"]\n',
        extra=f'[node]\naet = "HILUM"\ndicom_port = {port}\n',
    )
    folder = tmp_path / "send"
    folder.mkdir()
    sent: dict[str, list[str]] = {"CT": [], "MR": []}
    for modality, cls, n in (("CT", CTImageStorage, 5), ("MR", pydicom.uid.MRImageStorage, 3)):
        for ds in _tiny(
            "Node^Route", "NR-1", "20240101", generate_uid(ROOT), generate_uid(ROOT), modality, n, sop_class=cls
        ):
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            sent[modality].append(str(ds.SOPInstanceUID))
    other = tmp_path / "other"
    other.mkdir()
    for ds in _tiny("Node^Other", "NR-2", "20240101", generate_uid(ROOT), generate_uid(ROOT), "CT", 2):
        ds.save_as(other / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    storescp.start()
    with Node(cfg, only=["dimse", "forwarding"]) as node:
        subprocess.run(
            [str(BIN / "storescu"), "-aet", "MODALITY", "-aec", "HILUM", "+sd", "127.0.0.1", str(port), str(folder)],
            check=True,
            env=ENV,
            capture_output=True,
            timeout=60,
        )
        subprocess.run(
            [str(BIN / "storescu"), "-aet", "OTHER", "-aec", "HILUM", "+sd", "127.0.0.1", str(port), str(other)],
            check=True,
            env=ENV,
            capture_output=True,
            timeout=60,
        )
        assert node.archive.count("IMAGE", {}) == 10
        wait_for(lambda: by_state(node.archive, "backup")["sent"] == 5, what="the CT instances forwarded")
        time.sleep(0.5)
        assert by_state(node.archive, "backup") == {"pending": 0, "sent": 5, "committed": 0, "failed": 0}
    assert sorted(storescp.received()) == sorted(sent["CT"])


def test_refusal_statuses_fail_for_good_and_out_of_resources_is_retried(tmp_path: Path, archive: Archive) -> None:
    """A pynetdicom storage SCP (what DCMTK cannot do on purpose): 0xA900 (data set does not match the SOP
    class) for one instance is failed at once; 0xA700 (out of resources) for another is tried again and
    sent; the rest go on."""
    from pynetdicom import AllStoragePresentationContexts, evt

    uids = fill(archive, 6)["CT"]
    refused, busy = uids[1], uids[3]
    got: list[str] = []
    busy_once: list[str] = []

    def on_store(event: Any) -> int:
        sop = str(event.request.AffectedSOPInstanceUID)
        if sop == refused:
            return 0xA900
        if sop == busy and not busy_once:
            busy_once.append(sop)
            return 0xA700
        got.append(sop)
        return 0x0000

    ae = AE("PYSCP")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        cfg = Config(data_dir=tmp_path / "cfg", aet="HILUM", peers={"backup": Peer("PYSCP", "127.0.0.1", port)})
        rules = forward.parse(
            {
                "peers": {"backup": {}},
                "forwarding": {"retry_initial": 0.1, "retry_max": 0.1},
                "forward": [{"destination": "backup"}],
            },
            "",
            "t",
        )
        out = drain(archive, cfg, rules)["backup"]
        assert (out.sent, out.failed, out.retry) == (4, 1, 1)
        time.sleep(0.2)  # the busy one's backoff
        out = drain(archive, cfg, rules)["backup"]
        assert (out.sent, out.failed, out.retry) == (1, 0, 0)
    finally:
        server.shutdown()
    assert sorted(got) == sorted(u for u in uids if u != refused)
    failed = forward.rows(archive, state="failed")
    assert [r["sop_uid"] for r in failed] == [refused] and "0xA900" in failed[0]["last_error"]
    assert by_state(archive, "backup") == {"pending": 0, "sent": 5, "committed": 0, "failed": 1}


def test_max_attempts_gives_up_and_retry_brings_them_back(tmp_path: Path, archive: Archive) -> None:
    uids = fill(archive, 3)["CT"]
    cfg = Config(data_dir=tmp_path / "cfg", aet="HILUM", peers={"backup": Peer("NOBODY", "127.0.0.1", free_port())})
    rules = forward.parse(
        {
            "peers": {"backup": {}},
            "forwarding": {"retry_initial": 0.05, "retry_max": 0.05, "max_attempts": 2},
            "forward": [{"destination": "backup"}],
        },
        "",
        "t",
    )
    assert drain(archive, cfg, rules)["backup"].retry == 3
    assert by_state(archive, "backup")["pending"] == 3
    time.sleep(0.1)
    drain(archive, cfg, rules)
    failed = forward.rows(archive, state="failed")
    assert sorted(r["sop_uid"] for r in failed) == sorted(uids) and all(r["attempts"] == 2 for r in failed)
    assert "cannot connect" in failed[0]["last_error"]
    time.sleep(0.1)
    assert drain(archive, cfg, rules)["backup"].retry == 0  # given up: not tried again by itself
    assert forward.retry(archive) == 3 and by_state(archive, "backup")["pending"] == 3
