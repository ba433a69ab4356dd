"""Prefetch of priors with real components on loopback: an HL7 ORM over MLLP to a running node makes
it C-MOVE the patient's priors from a second ``hilum serve``; C-GET and WADO-RS runs; failures in
the job state; the LRU cache removes prefetched studies only; the rules in hilum.toml; the CLI."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hl7.client import MLLPClient

from conftest import free_port
from hilum.archive import Archive
from hilum.cli import main as cli_main
from hilum.config import Config, Peer, PrefetchRules, load_config
from hilum.dicomweb.client import DicomWebSource
from hilum.errors import ConfigError
from hilum.hl7.message import ack_code_of
from hilum.node import Node
from hilum.priors.prefetch import Prefetcher, PrefetchJob, select_priors
from test_hl7 import orm
from test_priors import OTHER, PATIENT, small_study, store
from test_priors_remote import serve_peer

LOCAL_AET = "LOCAL"


def remote_priors(archive: Archive) -> dict[str, str]:
    """The patient's history on the remote PACS: chest CTs 1 and 2 years back, a head MR 3 years back."""
    return {
        "ct_1y": store(archive, small_study(PATIENT, "ACC-1Y", "20251015")),
        "ct_2y": store(archive, small_study(PATIENT, "ACC-2Y", "20241101")),
        "mr_3y": store(archive, small_study(PATIENT, "ACC-MR", "20231102", modality="MR", body_part="HEAD")),
        "other": store(archive, small_study(OTHER, "ACC-OTH", "20251102")),
    }


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, int], dict[str, str], int]]:
    """The remote ``hilum serve`` (AE REMOTE), which knows this side's node (AE LOCAL) as a C-MOVE destination."""
    local_port = free_port()
    uids: dict[str, str] = {}

    def fill(a: Archive) -> None:
        uids.update(remote_priors(a))

    peers = {"local": {"aet": LOCAL_AET, "host": "127.0.0.1", "port": local_port}}
    with serve_peer(tmp_path_factory.mktemp("pacs"), "REMOTE", peers=peers, fill=fill) as ports:
        yield ports, uids, local_port


class Recorder:
    """Every job snapshot an observer hears, for the assertions."""

    def __init__(self) -> None:
        self.seen: list[PrefetchJob] = []
        self.lock = threading.Lock()

    def __call__(self, job: PrefetchJob) -> None:
        with self.lock:
            self.seen.append(job)

    def states(self, job_id: int) -> list[str]:
        with self.lock:
            out: list[str] = []
            for j in self.seen:
                if j.id == job_id and (not out or out[-1] != j.state):
                    out.append(j.state)
            return out


def instances_of(archive: Archive, uid: str) -> int:
    rows = archive.query("STUDY", {"StudyInstanceUID": uid})
    return int(rows[0]["NumberOfStudyRelatedInstances"]) if rows else 0


def moving_node(data: Path, local_port: int, pacs_port: int, **rules: float) -> Config:
    """A node (AE LOCAL on ``local_port``) that prefetches its two most relevant priors from the PACS by C-MOVE."""
    return Config(
        data_dir=data,
        aet=LOCAL_AET,
        dicom_port=local_port,
        hl7_port=free_port(),
        web_port=free_port(),
        peers={"pacs": Peer("REMOTE", "127.0.0.1", pacs_port, retrieve="move")},
        prefetch=PrefetchRules(enabled=True, max_priors=2, timeout=15, **rules),
    )


def test_orm_over_mllp_prefetches_the_priors_by_c_move(tmp_path: Path, pacs) -> None:  # type: ignore[no-untyped-def]
    ports, uids, local_port = pacs
    cfg = moving_node(tmp_path / "node", local_port, ports["dicom"], max_age_years=5)
    node = Node(cfg)
    assert node.prefetcher is not None
    recorder = Recorder()
    node.prefetcher.subscribe(recorder)
    with node:
        with MLLPClient("127.0.0.1", cfg.hl7_port) as client:
            ack = client.send_message(
                orm("PF1", "PRI-0001", "Prior^Paula", placer="PLNEW", accession="ACC-NEW", start="202612011030")
            )
        assert ack_code_of(ack.strip(b"\x0b\x1c\r"))[0] == "AA"
        deadline = time.monotonic() + 10  # the order's event reaches the prefetcher just after the ACK
        while not node.prefetcher.jobs() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert node.prefetcher.wait_idle(60)
        [job] = node.prefetcher.jobs()
        archive = node.archive
        # The two chest CTs (same modality as the order, the two most recent) are local now, whole.
        assert instances_of(archive, uids["ct_1y"]) == 2 and instances_of(archive, uids["ct_2y"]) == 2
        assert instances_of(archive, uids["mr_3y"]) == 0  # another modality: not fetched
        assert instances_of(archive, uids["other"]) == 0  # another patient
        assert (job.trigger, job.state, job.patient_id) == ("order", "done", "PRI-0001")
        assert (job.found, job.to_fetch, job.fetched, job.instances, job.failed) == (2, 2, 2, 4, 0)
        assert set(job.studies) == {uids["ct_1y"], uids["ct_2y"]}
        assert recorder.states(job.id) == ["queued", "running", "done"]
        assert {r["study_uid"] for r in archive.prefetched()} == {uids["ct_1y"], uids["ct_2y"]}
        # The study then acquired for the order does not start another fetch (its patient was just done).
        order = node.orders.order(accession="ACC-NEW")
        assert order is not None
        for ds in small_study(PATIENT, "ACC-NEW", "20261201"):
            ds.StudyInstanceUID = order["study_uid"]
            assert archive.ingest(ds, origin="dimse").ok
        assert node.prefetcher.wait_idle(30)
        assert len(node.prefetcher.jobs()) == 1
        # The worklist opened: its orders are handed over at once, looked up by the worker.
        assert node.prefetcher.for_orders([{"StudyInstanceUID": order["study_uid"]}, {"StudyInstanceUID": ""}]) == 1
        assert node.prefetcher.wait_idle(30)
        last = node.prefetcher.jobs()[-1]
        assert (last.trigger, last.state, last.fetched, last.found) == ("worklist", "done", 0, 2), last
    saved = json.loads((cfg.data_dir / "prefetch" / "jobs.json").read_text())
    assert saved["jobs"][0]["state"] == "done"


def test_c_get_wado_and_failures_are_visible(tmp_path: Path, pacs) -> None:  # type: ignore[no-untyped-def]
    ports, uids, _local_port = pacs
    with Archive(tmp_path / "data") as archive:
        cfg = Config(data_dir=tmp_path / "data", aet="GETTER")
        rules = PrefetchRules(enabled=True, max_priors=2, max_age_years=0, timeout=10)
        # C-GET for a patient (the worklist's call): no current study, so any modality, most recent first.
        pf = Prefetcher(archive, cfg, peers={"pacs": Peer("REMOTE", "127.0.0.1", ports["dicom"])}, rules=rules)
        pf.start(listen=False)
        try:
            [job] = pf.for_patients([{"PatientID": "PRI-0001", "IssuerOfPatientID": ""}])
            assert pf.wait_idle(60)
            done = pf.job(job.id)
            assert done is not None and done.state == "done", done
            assert set(done.studies) == {uids["ct_1y"], uids["ct_2y"]}
            # Run again: nothing new to fetch (the local ones count).
            [again] = pf.for_patients(["PRI-0001"])
            assert pf.wait_idle(60)
            second = pf.job(again.id)
            assert second is not None and (second.state, second.fetched, second.found) == ("done", 0, 2)
            assert second.message == "2 relevant prior(s), all local"
        finally:
            pf.stop()
        # WADO-RS from the DICOMweb face of the same node: the MR as well (three allowed).
        web = DicomWebSource("web", f"http://127.0.0.1:{ports['web']}/dicom-web")
        rules3 = PrefetchRules(enabled=True, max_priors=3, max_age_years=0, timeout=10)
        pf = Prefetcher(archive, cfg, peers={"web": web}, rules=rules3)
        pf.start(listen=False)
        try:
            [job] = pf.for_patients(["PRI-0001"])
            assert pf.wait_idle(60)
            done = pf.job(job.id)
            assert done is not None and done.state == "done" and done.studies == [uids["mr_3y"]], done
            assert instances_of(archive, uids["mr_3y"]) == 2
        finally:
            pf.stop()
        # Failures: a C-MOVE to a destination the PACS does not know; a peer that is down.
        archive.delete("PATIENT", "PRI-0001")
        for peers, expect in (
            ({"pacs": Peer("REMOTE", "127.0.0.1", ports["dicom"], retrieve="move")}, "C-MOVE"),
            ({"dead": Peer("DEAD", "127.0.0.1", free_port())}, "no peer answered"),
        ):
            recorder = Recorder()
            pf = Prefetcher(archive, cfg, peers=peers, rules=rules)
            pf.subscribe(recorder)
            pf.start(listen=False)
            try:
                [job] = pf.for_patients(["PRI-0001"])
                assert pf.wait_idle(60)
                failed = pf.job(job.id)
            finally:
                pf.stop()
            assert failed is not None and failed.state == "failed", failed
            assert expect in failed.message and failed.errors
            assert recorder.states(job.id) == ["queued", "running", "failed"]
            assert archive.prefetched() == []  # nothing came, nothing recorded


def test_lru_cache_removes_prefetched_studies_only(tmp_path: Path, pacs) -> None:  # type: ignore[no-untyped-def]
    ports, uids, _local_port = pacs
    with Archive(tmp_path / "data") as archive:
        mine = store(archive, small_study(PATIENT, "ACC-MINE", "20261102"))  # arrived the usual way
        cfg = Config(data_dir=tmp_path / "data", aet="GETTER")
        rules = PrefetchRules(
            enabled=True, max_priors=3, max_age_years=0, timeout=10, cache_limit_mb=0, modalities=["CT", "MR"]
        )
        pf = Prefetcher(archive, cfg, peers={"pacs": Peer("REMOTE", "127.0.0.1", ports["dicom"])}, rules=rules)
        pf.start()
        try:
            job = pf.for_study(mine, trigger="manual")
            assert job is not None
            assert pf.wait_idle(60)
            assert pf.job(job.id).state == "done"  # type: ignore[union-attr]
            cached = archive.prefetched()
            assert {r["study_uid"] for r in cached} == {uids["ct_1y"], uids["ct_2y"], uids["mr_3y"]}
            size = {r["study_uid"]: r["size_bytes"] for r in cached}
            assert all(size.values())
            # Access order: ct_1y oldest, then mr (open in the viewer), then ct_2y.
            time.sleep(0.01)
            pf.touch(uids["ct_1y"])
            time.sleep(0.01)
            pf.hold(uids["mr_3y"])
            time.sleep(0.01)
            pf.touch(uids["ct_2y"])
            # Room for two: the least recently used one goes.
            rules.cache_limit_mb = (size[uids["mr_3y"]] + size[uids["ct_2y"]]) / 1e6
            assert pf.enforce_cache() == [uids["ct_1y"]]
            assert instances_of(archive, uids["ct_1y"]) == 0
            # Room for nothing: all prefetched go but the open one; the study that arrived the usual way stays.
            rules.cache_limit_mb = 1e-6
            assert pf.enforce_cache() == [uids["ct_2y"]]
            assert instances_of(archive, uids["mr_3y"]) == 2 and instances_of(archive, mine) == 2
            pf.release(uids["mr_3y"])
            # A prefetched study that then receives an instance from elsewhere is kept for good.
            extra = next(iter(small_study(PATIENT, "ACC-MR", "20231102", modality="MR", body_part="HEAD", series=2)))
            extra.SeriesInstanceUID, extra.SOPInstanceUID = extra.SeriesInstanceUID + ".9", extra.SOPInstanceUID + ".9"
            assert archive.ingest(extra, origin="dimse").ok
            assert pf.wait_idle(30)
            assert pf.enforce_cache() == []
            assert archive.prefetched() == [] and instances_of(archive, uids["mr_3y"]) == 3
            assert instances_of(archive, mine) == 2
        finally:
            pf.stop()


def test_select_priors_follows_the_rules(archive: Archive) -> None:
    uids = {
        "ct_1y": store(archive, small_study(PATIENT, "ACC-1Y", "20251015")),
        "abd_6m": store(archive, small_study(PATIENT, "ACC-ABD", "20260501", body_part="ABDOMEN")),
        "ct_9y": store(archive, small_study(PATIENT, "ACC-9Y", "20171101")),
        "mr_3y": store(archive, small_study(PATIENT, "ACC-MR", "20231102", modality="MR", body_part="HEAD")),
    }
    from hilum.priors.finder import local_priors_of

    priors = local_priors_of(archive, "PRI-0001")
    current = {"study_date": "20261102", "modalities": ("CT",), "body_parts": ("CHEST",)}

    def pick(**kw: object) -> list[str]:
        rules = PrefetchRules(**kw)  # type: ignore[arg-type]
        return [p.study_uid for p in select_priors(rules, current, priors)]

    assert pick(max_priors=5, max_age_years=5) == [uids["ct_1y"], uids["abd_6m"]]
    assert pick(max_priors=5, max_age_years=0) == [uids["ct_1y"], uids["ct_9y"], uids["abd_6m"]]
    assert pick(max_priors=1, max_age_years=0) == [uids["ct_1y"]]
    assert pick(max_priors=5, max_age_years=5, same_body_part=True) == [uids["ct_1y"]]
    assert pick(max_priors=5, max_age_years=5, modalities=["MR"]) == [uids["mr_3y"]]
    assert pick(max_priors=0) == []


def test_prefetch_rules_in_hilum_toml(tmp_path: Path) -> None:
    toml = tmp_path / "hilum.toml"
    toml.write_text(
        '[peers.pacs]\naet = "PACS"\nhost = "127.0.0.1"\nport = 104\n\n'
        '[prefetch]\nenabled = true\nmax_priors = 2\nmax_age_years = 3\nmodalities = ["ct", "MR"]\n'
        'same_body_part = true\ncache_limit_mb = 500\npeers = ["pacs"]\n'
    )
    cfg = load_config(tmp_path)
    assert cfg.prefetch == PrefetchRules(
        enabled=True,
        max_priors=2,
        max_age_years=3.0,
        modalities=["CT", "MR"],
        same_body_part=True,
        cache_limit_mb=500.0,
        peers=["pacs"],
    )
    cfg.save()
    assert load_config(tmp_path).prefetch == cfg.prefetch
    for bad, says in [
        ("max_priors = -1", "max_priors must be a whole number"),
        ("max_priors = 1.5", "max_priors must be a whole number"),
        ("enabled = 1", "enabled must be true or false"),
        ('modalities = "CT"', "modalities must be a list"),
        ("cache_limit_mb = -5", "cache_limit_mb must be a number >= 0"),
        ('peers = ["nobody"]', "no peer called 'nobody'"),
        ("timeout = 0", "timeout must be more than 0"),
        ("colour = 1", "unknown setting 'colour'"),
    ]:
        toml.write_text(f"[prefetch]\n{bad}\n")
        with pytest.raises(ConfigError, match=says):
            load_config(tmp_path)
    # The CLI says it in one line, exit 1.
    assert cli_main(["--data", str(tmp_path), "prefetch", "status"]) == 1


def test_cli_priors_and_prefetch_status(tmp_path: Path, pacs, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    ports, uids, _local_port = pacs
    data = tmp_path / "data"
    with Archive(data) as archive:
        current = store(archive, small_study(PATIENT, "ACC-CUR", "20261102", series=2))
        store(archive, small_study(PATIENT, "ACC-1Y", "20251015"))
    cfg = Config(
        data_dir=data,
        peers={"pacs": Peer("REMOTE", "127.0.0.1", ports["dicom"])},
        prefetch=PrefetchRules(enabled=True, max_priors=1),
    )
    cfg.save()
    assert cli_main(["priors", current, "--data", str(data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [p["study_uid"] for p in out["priors"]] == [uids["ct_1y"]] and out["errors"] == {}
    assert cli_main(["--data", str(data), "priors", current, "--remote", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(p["study_uid"], p["local"]) for p in out["priors"]] == [
        (uids["ct_1y"], True),
        (uids["ct_2y"], False),
        (uids["mr_3y"], False),
    ]
    assert cli_main(["priors", current, "--data", str(data)]) == 0
    text = capsys.readouterr().out
    assert "same modality and body part, 1 y earlier" in text and "1 prior of patient PRI-0001" in text
    # Errors: one line, non-zero.
    assert cli_main(["priors", "1.2.3", "--data", str(data)]) == 1
    assert "error" in capsys.readouterr().err
    assert cli_main(["priors", current, "--data", str(data), "--peer", "nobody"]) == 1
    assert "no queryable peer called 'nobody'" in capsys.readouterr().err
    assert cli_main(["priors", current, "--data", str(tmp_path / "none")]) == 1
    capsys.readouterr()
    assert cli_main(["prefetch", "run", "--data", str(data)]) == 1
    assert "--study UID or --patient ID" in capsys.readouterr().err
    # A run by hand, then the status.
    assert cli_main(["prefetch", "run", "--study", current, "--data", str(data), "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["state"] == "done" and job["studies"] == [] and job["found"] == 1  # the one allowed is local
    assert cli_main(["prefetch", "status", "--data", str(data), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["enabled"] is True and status["rules"]["max_priors"] == 1 and status["peers"] == ["pacs"]
    assert status["cache"]["studies"] == 0
    assert cli_main(["prefetch", "status", "--data", str(data)]) == 0
    assert "prefetch: enabled" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli_main(["prefetch", "--data", str(data)])
    assert exc.value.code == 2


def test_comparison_patient_found_locally_remotely_and_prefetched_on_orm(tmp_path: Path) -> None:
    """The issue's patient (a current CT, prior 1 same FoR, prior 2 another FoR, prior 3 a head MR):
    ranked locally, found on a remote ``hilum serve``, its CT priors fetched there on an ORM."""
    import datetime as dt

    from hilum.dicom.generator.demo import write_comparison_patient
    from hilum.priors import find_local_priors, find_remote_priors

    cmp = write_comparison_patient(tmp_path / "files", rows=32, slices=6, today=dt.date(2026, 11, 2))
    with Archive(tmp_path / "all") as everything:
        assert all(r.ok for r in everything.ingest_many(cmp.paths))
        ranked = find_local_priors(everything, cmp.current.study_uid)
    assert [p.study_uid for p in ranked] == [cmp.prior1.study_uid, cmp.prior2.study_uid, cmp.prior3.study_uid]
    assert [p.reason for p in ranked] == [
        "same modality and body part, 1 y earlier",
        "same modality and body part, 2 y earlier",
        "other modality (MR), 3 y earlier",
    ]
    local_port = free_port()

    def fill(a: Archive) -> None:
        assert all(r.ok for r in a.ingest_many([p for s in cmp.studies[1:] for p in s.paths]))

    peers = {"local": {"aet": LOCAL_AET, "host": "127.0.0.1", "port": local_port}}
    with serve_peer(tmp_path / "pacs", "REMOTE", peers=peers, fill=fill) as ports:
        cfg = moving_node(tmp_path / "node", local_port, ports["dicom"])
        with Node(cfg) as node:
            archive = node.archive
            assert node.prefetcher is not None
            # The current CT arrives from the modality: its two most relevant priors are fetched.
            assert all(archive.ingest(p.read_bytes(), origin="dimse").ok for p in cmp.current.paths)
            deadline = time.monotonic() + 10
            while not node.prefetcher.jobs() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert node.prefetcher.wait_idle(60)
            [job] = node.prefetcher.jobs()
            assert (job.trigger, job.state, job.found, job.fetched) == ("study", "done", 2, 2), job
            assert [instances_of(archive, s.study_uid) for s in cmp.studies] == [6, 6, 6, 0]
            errors: dict[str, str] = {}
            remote = find_remote_priors(archive, cmp.current.study_uid, cfg.peers, timeout=15, errors=errors)
            assert errors == {} and [p.study_uid for p in remote] == [s.study_uid for s in cmp.studies[1:]]
            assert [p.local for p in remote] == [True, True, False]
            # An order for tomorrow: today's CT (local) and prior 1 are its two; prior 1 is fetched again.
            for s in (cmp.prior1, cmp.prior2):
                archive.delete("STUDY", s.study_uid)
            with MLLPClient("127.0.0.1", cfg.hl7_port) as client:
                client.send_message(
                    orm(
                        "CMP1",
                        "CMP-0001",
                        "Vergleich^Carla",
                        placer="PLCMP",
                        accession="CMP-ACC-9",
                        start="202611031000",
                    )
                )
            deadline = time.monotonic() + 10
            while len(node.prefetcher.jobs()) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert node.prefetcher.wait_idle(60)
            job = node.prefetcher.jobs()[-1]
            assert (job.trigger, job.state, job.found, job.fetched) == ("order", "done", 2, 1), job
            assert job.studies == [cmp.prior1.study_uid]
            assert [instances_of(archive, s.study_uid) for s in cmp.studies] == [6, 6, 0, 0]
            assert {r["study_uid"] for r in archive.prefetched() if r["present"]} == {cmp.prior1.study_uid}
