"""Prefetch onto the reading station (:mod:`hilum.priors.station`), against a second real ``hilum serve``.

The remote node holds today's studies (the remote worklist), the patients' priors and a few large
studies; the station's :class:`~hilum.dicomweb.cache.RemoteCache` is real.  The client reaches the
remote through a byte-counting TCP relay on loopback (real sockets both sides), so the bandwidth
cap is measured on the wire as well as at the reader, as bytes over time within a loose bound
(no timing assertion of speed: the cap must not be exceeded by more than 50 %).
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest

from hilum.archive import Archive
from hilum.config import Config, ConfigError, PrefetchRules
from hilum.dicom.generator import Patient, iter_ct_series, make_study
from hilum.dicomweb.cache import RemoteCache
from hilum.dicomweb.client import DicomWebClient, DicomWebSource
from hilum.priors.station import StationPrefetcher, StationPrefetchSettings, TokenBucket, sources_for
from test_priors import OTHER, PATIENT, small_study, store
from test_priors_remote import serve_peer

TODAY = date.today()
BIG = Patient("Gross^Gustav", "STA-0003", "19550505", "M")
BIG_SLICES = 40  # 128x128 int16: about 1.3 MB a study
CAP = 300_000  # bytes/s


def _day(days_ago: int) -> str:
    return (TODAY - timedelta(days=days_ago)).strftime("%Y%m%d")


def _big(accession: str, days_ago: int) -> Iterator[pydicom.Dataset]:
    st = make_study(BIG, accession=accession, date=_day(days_ago), description="CT big", seed="station-big")
    return iter_ct_series(st, rows=128, columns=128, slices=BIG_SLICES, noise_sigma=20.0)


class CountingRelay:
    """A TCP relay on loopback that timestamps every piece of bytes it passes from the server to the client.

    It stands for the link: its socket towards the client has a small send buffer (a router's queue),
    so what it has passed is what has crossed the link, give or take that buffer.
    """

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.samples: list[tuple[float, int]] = []  # (monotonic time, bytes) server -> client
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while True:
                data = src.recv(16384)
                if not data:
                    break
                if count:
                    with self.lock:
                        self.samples.append((time.monotonic(), len(data)))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def bytes_between(self, t0: float, t1: float) -> int:
        with self.lock:
            return sum(n for t, n in self.samples if t0 <= t <= t1)

    def close(self) -> None:
        self.closed = True
        self.sock.close()


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    uids: dict[str, str] = {}
    files: dict[str, dict[str, bytes]] = {}

    def fill(a: Archive) -> None:
        uids["today"] = store(a, small_study(PATIENT, "STA-TODAY", _day(0), series=2))
        uids["ct_1y"] = store(a, small_study(PATIENT, "STA-1Y", _day(300)))
        uids["ct_2y"] = store(a, small_study(PATIENT, "STA-2Y", _day(700)))
        uids["mr_3y"] = store(a, small_study(PATIENT, "STA-MR", _day(1000), modality="MR", body_part="HEAD"))
        uids["other_mr"] = store(a, small_study(OTHER, "STA-OTH-MR", _day(0), modality="MR", body_part="HEAD"))
        uids["order"] = store(a, small_study(OTHER, "STA-ORDER", _day(30)))
        uids["big"] = store(a, _big("STA-BIG1", 10))
        uids["big2"] = store(a, _big("STA-BIG2", 11))
        for key, uid in uids.items():
            files[key] = {str(r["SOPInstanceUID"]): Path(r["path"]).read_bytes() for r in a.instances(study_uid=uid)}

    root = tmp_path_factory.mktemp("station-remote")
    with serve_peer(root, "REMOTE", fill=fill) as ports:
        relay = CountingRelay(ports["web"])
        try:
            yield {"uids": uids, "files": files, "relay": relay, "ports": ports}
        finally:
            relay.close()


@pytest.fixture
def station(tmp_path: Path, remote: dict[str, Any]) -> Iterator[tuple[StationPrefetcher, RemoteCache, Archive]]:
    """A station: its own archive (holding the 2-year-old chest CT already), a RemoteCache, the prefetcher."""
    local = Archive(tmp_path / "station")
    store(local, small_study(PATIENT, "STA-2Y", _day(700)))
    cache = RemoteCache(tmp_path / "station", limit_mb=200)
    source = DicomWebSource("clinic", f"http://127.0.0.1:{remote['relay'].port}/dicom-web")
    settings = StationPrefetchSettings(modalities=["CT"], timeout=30.0)
    pf = StationPrefetcher(cache, {"clinic": source}, settings, archive=local, rules=PrefetchRules(max_priors=3))
    pf.start()
    try:
        yield pf, cache, local
    finally:
        pf.stop()
        cache.close()
        local.close()


def _same_bytes(cache: RemoteCache, remote: dict[str, Any], key: str) -> None:
    """The cached instances are the remote's files byte for byte (identity is sacred)."""
    got = {
        str(pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID): b
        for b in cache.read(remote["uids"][key])
    }
    assert got == remote["files"][key]


# ------------------------------------------------------------------ settings and the bucket


def test_settings_from_hilum_toml(tmp_path: Path) -> None:
    cfg = Config(data_dir=tmp_path)
    assert StationPrefetchSettings.from_config(cfg) == StationPrefetchSettings()
    cfg.extra["station_prefetch"] = {
        "enabled": True,
        "sources": ["clinic"],
        "days": 1,
        "modalities": ["ct", " mr "],
        "match": {"InstitutionName": "Clinic*"},
        "max_rate_mbit": 8,
    }
    s = StationPrefetchSettings.from_config(cfg)
    assert s.enabled and s.sources == ["clinic"] and s.days == 1 and s.modalities == ["CT", "MR"]
    assert s.match == {"InstitutionName": "Clinic*"} and s.rate_bytes == 1_000_000
    for bad in (
        {"bogus": 1},
        {"days": -1},
        {"max_rate_mbit": "fast"},
        {"modalities": "CT"},
        {"timeout": 0},
        {"match": ["x"]},
        {"enabled": "yes"},
    ):
        with pytest.raises(ConfigError):
            StationPrefetchSettings.from_toml(bad)
    cfg.extra["dicomweb_sources"] = {"clinic": {"url": "http://a/dicom-web"}, "other": {"url": "http://b/dicom-web"}}
    assert list(sources_for(cfg, s)) == ["clinic"]
    assert list(sources_for(cfg, StationPrefetchSettings())) == ["clinic", "other"]


def test_token_bucket_spreads_bytes_over_time() -> None:
    """With a stepped clock: 1000 B/s, burst 100 B: 5000 bytes taken in 500-byte pieces take ~4.9 s."""
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    bucket = TokenBucket(1000, burst=100, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        bucket.take(500)
    assert 4.8 <= now[0] <= 5.1
    bucket.set_rate(0)  # no cap: no wait
    t = now[0]
    bucket.take(10**9)
    assert now[0] == t
    stop = TokenBucket(10, clock=lambda: now[0], sleep=sleep)
    t = now[0]
    stop.take(10**6, stop=lambda: True)  # stop() ends the wait at once
    assert now[0] == t
    assert TokenBucket(1_000_000).piece() == 64 * 1024 and TokenBucket(20_000).piece() == 2000


# ------------------------------------------------------------------ what is fetched


def test_remote_worklist_and_its_relevant_priors_land_in_the_cache(
    station: tuple[StationPrefetcher, RemoteCache, Archive], remote: dict[str, Any]
) -> None:
    pf, cache, _local = station
    u = remote["uids"]
    seen: list[str] = []
    pf.subscribe(lambda job: seen.append(job.state))
    pf.refresh()
    assert pf.wait_idle(60)
    jobs = {j.study_uid: j for j in pf.jobs()}
    # Today's CT (the worklist, modality CT) and its one relevant prior not already local;
    # not the MR of another patient (modality filter), not the MR prior, not the local 2-year CT.
    assert set(jobs) == {u["today"], u["ct_1y"]}, [(j.kind, j.description) for j in jobs.values()]
    assert jobs[u["today"]].kind == "worklist" and jobs[u["ct_1y"]].kind == "prior"
    assert jobs[u["ct_1y"]].for_study == u["today"] and "same modality" in jobs[u["ct_1y"]].reason
    assert [j.id for j in pf.jobs()] == sorted(j.id for j in pf.jobs())  # the worklist study first, then its prior
    for key in ("today", "ct_1y"):
        job = jobs[u[key]]
        assert job.state == "done", job.message
        assert job.instances == job.total == len(remote["files"][key])
        assert job.bytes >= sum(len(b) for b in remote["files"][key].values())
        assert cache.has(u[key])
        _same_bytes(cache, remote, key)
    assert "running" in seen and "done" in seen
    # A second look finds everything on the station: nothing new is queued or fetched.
    before = len(remote["relay"].samples)
    pf.refresh()
    assert pf.wait_idle(60)
    assert {j.study_uid for j in pf.jobs()} == {u["today"], u["ct_1y"]}
    assert all(j.state == "done" for j in pf.jobs())
    assert len(remote["relay"].samples) > before  # the searches went out, but no study was fetched again


def test_worklist_tab_orders_are_looked_up_on_the_source(
    station: tuple[StationPrefetcher, RemoteCache, Archive], remote: dict[str, Any]
) -> None:
    pf, cache, _local = station
    u = remote["uids"]
    n = pf.for_worklist(
        [
            {"StudyInstanceUID": u["order"], "PatientID": OTHER.patient_id, "_status": "SCHEDULED"},
            {"StudyInstanceUID": "1.2.3.999.404"},  # ordered, not acquired anywhere yet
            u["ct_2y"],  # already in the station's archive: not fetched
        ]
    )
    assert n == 3
    assert pf.wait_idle(60)
    jobs = {j.study_uid: j for j in pf.jobs()}
    assert set(jobs) == {u["order"]}  # its patient's MR is not a relevant prior of a CT
    assert jobs[u["order"]].state == "done" and cache.has(u["order"])
    _same_bytes(cache, remote, "order")


# ------------------------------------------------------------------ the cap, pause, cancel, retry


def test_bandwidth_cap_holds_on_the_wire_and_at_the_reader(
    station: tuple[StationPrefetcher, RemoteCache, Archive], remote: dict[str, Any]
) -> None:
    pf, cache, _local = station
    relay = remote["relay"]
    pf.set_rate(CAP)
    samples: list[tuple[float, int]] = []
    pf.subscribe(lambda job: samples.append((time.monotonic(), job.bytes)) if job.state == "running" else None)
    t0 = time.monotonic()
    job = pf.enqueue("clinic", remote["uids"]["big"])
    assert pf.wait_idle(120)
    t1 = time.monotonic()
    done = pf.job(job.id)
    assert done is not None and done.state == "done", done
    size = sum(len(b) for b in remote["files"]["big"].values())
    assert done.bytes >= size > 1_000_000
    assert cache.has(remote["uids"]["big"])
    _same_bytes(cache, remote, "big")
    # At the reader: bytes over the job's time.
    assert done.started is not None and done.finished is not None
    reader_rate = done.bytes / (done.finished - done.started)
    assert reader_rate <= 1.5 * CAP, reader_rate
    # On the wire: what the relay passed while the job ran, over the span of its first to last byte.
    wire = [(t, n) for t, n in relay.samples if t0 <= t <= t1]
    wire_bytes = sum(n for _t, n in wire)
    span = wire[-1][0] - wire[0][0]
    assert wire_bytes >= size
    print(f"cap {CAP} B/s: reader {reader_rate:.0f} B/s, wire {wire_bytes / span:.0f} B/s over {span:.2f} s")
    assert wire_bytes / span <= 1.5 * CAP, (wire_bytes, span)
    # And over any 2-second window of the observers' samples, not only on average.
    for i, (ta, ba) in enumerate(samples):
        later = [(t, b) for t, b in samples[i:] if t - ta >= 2.0]
        if later:
            tb, bb = later[0]
            assert (bb - ba) / (tb - ta) <= 1.5 * CAP
    assert done.speed <= 1.5 * CAP


def test_pause_resume_cancel_and_retry(
    station: tuple[StationPrefetcher, RemoteCache, Archive], remote: dict[str, Any]
) -> None:
    pf, cache, _local = station
    uid = remote["uids"]["big2"]
    size = sum(len(b) for b in remote["files"]["big2"].values())
    pf.set_rate(CAP)
    job = pf.enqueue("clinic", uid)

    def wait_for(cond: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            j = pf.job(job.id)
            if cond(j):
                return j
            time.sleep(0.02)
        raise AssertionError(f"not reached: {pf.job(job.id)}")

    wait_for(lambda j: j.bytes > 100_000)
    pf.pause()
    paused = wait_for(lambda j: j.state == "paused")
    time.sleep(1.0)
    still = pf.job(job.id)
    assert still is not None and still.state == "paused" and still.bytes == paused.bytes  # nothing read while paused
    assert pf.paused
    pf.resume()
    wait_for(lambda j: j.state == "running" and j.bytes > paused.bytes)
    wait_for(lambda j: j.bytes > size // 2)
    assert pf.cancel(job.id)
    cancelled = wait_for(lambda j: j.state == "cancelled")
    assert 0 < cancelled.instances < BIG_SLICES
    assert not cache.has(uid)  # incomplete: an open would fetch the rest
    held = cancelled.instances
    assert not pf.cancel(job.id)  # finished already
    # Retry without a cap: only the missing instances are asked for, one by one.
    pf.set_rate(0)
    relay = remote["relay"]
    t0 = time.monotonic()
    assert pf.retry(job.id)
    assert pf.wait_idle(60)
    again = pf.job(job.id)
    assert again is not None and again.state == "done", again
    assert again.instances == BIG_SLICES and cache.has(uid)
    _same_bytes(cache, remote, "big2")
    assert relay.bytes_between(t0, time.monotonic()) < size * (BIG_SLICES - held) / BIG_SLICES + 200_000
    assert not pf.retry(job.id)  # done: nothing to retry
    # A paused queue does not start the next job; cancelling a queued one drops it.
    pf.pause()
    queued = pf.enqueue("clinic", remote["uids"]["mr_3y"])
    time.sleep(0.5)
    q = pf.job(queued.id)
    assert q is not None and q.state == "queued"
    assert pf.cancel(queued.id)
    q = pf.job(queued.id)
    assert q is not None and q.state == "cancelled"
    pf.resume()
    assert pf.wait_idle(10)
    assert not cache.has(remote["uids"]["mr_3y"])
    assert len(pf.jobs()) == 2
    # The automatic looks leave a cancelled study alone; asked by hand, it is queued again.
    assert pf.enqueue("clinic", remote["uids"]["mr_3y"], kind="prior").state == "cancelled"
    assert pf.enqueue("clinic", remote["uids"]["mr_3y"]).id == queued.id
    assert pf.wait_idle(30)
    q = pf.job(queued.id)
    assert q is not None and q.state == "done" and cache.has(remote["uids"]["mr_3y"])
    # A done study evicted from the cache since is fetched again on the next look.
    cache.remove(remote["uids"]["mr_3y"])
    assert pf.enqueue("clinic", remote["uids"]["mr_3y"], kind="worklist").id == queued.id
    assert pf.wait_idle(30)
    assert cache.has(remote["uids"]["mr_3y"])
    # A study listed as a prior that is on the worklist itself is shown as a worklist study; one the
    # station's archive holds is not fetched.
    listed = pf.enqueue("clinic", remote["uids"]["ct_2y"], kind="prior")
    assert pf.enqueue("clinic", remote["uids"]["ct_2y"], kind="worklist").kind == "worklist"
    assert pf.wait_idle(30)
    local_one = pf.job(listed.id)
    assert local_one is not None and local_one.state == "done" and local_one.message == "already on this station"
    assert local_one.bytes == 0
    pf.clear_finished()
    assert all(j.state == "failed" for j in pf.jobs())


def test_a_source_that_is_down_fails_the_job_and_retry_works_once_it_is_back(
    tmp_path: Path, remote: dict[str, Any]
) -> None:
    """A dead source: the search logs its error, a queued job fails with the reason; pointing the
    source back at the live node, Retry fetches it."""
    from conftest import free_port

    cache = RemoteCache(tmp_path / "st", limit_mb=50)
    dead = DicomWebSource("clinic", f"http://127.0.0.1:{free_port()}/dicom-web")
    pf = StationPrefetcher(cache, {"clinic": dead}, StationPrefetchSettings(timeout=5.0))
    pf.start()
    try:
        pf.refresh()
        job = pf.enqueue("clinic", remote["uids"]["ct_1y"])
        assert pf.wait_idle(30)
        failed = pf.job(job.id)
        assert failed is not None and failed.state == "failed" and failed.error
        assert "clinic" in pf.errors
        pf.set_sources({"clinic": DicomWebSource("clinic", f"http://127.0.0.1:{remote['relay'].port}/dicom-web")})
        assert pf.retry(job.id)
        assert pf.wait_idle(30)
        ok = pf.job(job.id)
        assert ok is not None and ok.state == "done" and cache.has(remote["uids"]["ct_1y"])
    finally:
        pf.stop()
        cache.close()


def test_prefetch_does_not_evict_what_it_fetched_for_the_next_cases(tmp_path: Path, remote: dict[str, Any]) -> None:
    """A cache of 1.5 MB: the first big study (about 1.4 MB) fits; the next is not started while the first
    is unread (it would evict it), and goes once the first has been opened."""
    cache = RemoteCache(tmp_path / "st", limit_mb=1.5)
    source = DicomWebSource("clinic", f"http://127.0.0.1:{remote['relay'].port}/dicom-web")
    pf = StationPrefetcher(cache, {"clinic": source})
    pf.start()
    try:
        first = pf.enqueue("clinic", remote["uids"]["big"])
        second = pf.enqueue("clinic", remote["uids"]["big2"])
        assert pf.wait_idle(60)
        a, b = pf.job(first.id), pf.job(second.id)
        assert a is not None and a.state == "done" and cache.has(remote["uids"]["big"])
        assert b is not None and b.state == "failed" and "full" in b.error
        assert {r["study_uid"] for r in cache.studies()} == {remote["uids"]["big"]}
        # The reader opens the first case (from the cache: no fetch) and closes it: the second may now
        # take its place, the first going by LRU as the second arrives.
        time.sleep(0.01)
        reader = DicomWebClient(source)
        before = len(remote["relay"].samples)
        cache.open(reader, remote["uids"]["big"])
        assert len(remote["relay"].samples) == before  # opened locally
        cache.release(remote["uids"]["big"])
        reader.close_all()
        assert pf.retry(second.id)
        assert pf.wait_idle(60)
        b = pf.job(second.id)
        assert b is not None and b.state == "done" and cache.has(remote["uids"]["big2"])
    finally:
        pf.stop()
        cache.close()


def test_a_study_listed_over_several_pages_is_fetched_whole(tmp_path: Path) -> None:
    """A server that answers at most 16 rows per QIDO-RS request ([web] max_results): the listing of a
    40-instance study is read page after page, so the one instance the station lacks, listed on the
    third page, is asked for (alone) and the study is complete."""
    from hilum.dicomweb.service import DicomWebService

    server_archive = Archive(tmp_path / "server")
    st = make_study(BIG, accession="STA-PAGES", date=_day(3), description="CT two series", seed="station-pages")
    last: list[pydicom.Dataset] = []
    for n in (1, 2):
        series = list(iter_ct_series(st, rows=16, columns=16, slices=20, series_number=n))
        uid = store(server_archive, iter(series))
        last.append(series[-1])
    cfg = Config(data_dir=tmp_path / "server", web_port=0)
    cfg.extra = {"web": {"max_results": 16}}
    cache = RemoteCache(tmp_path / "st", limit_mb=50)
    try:
        with DicomWebService(cfg, server_archive) as svc:
            assert len(DicomWebClient(DicomWebSource("s", svc.url)).search_instances(uid)) == 16  # one page
            # The station holds all but the last instance of the second series (a fetch cut short): only
            # a listing read to its end shows that one is missing.
            missing = str(last[1].SOPInstanceUID)
            for r in server_archive.instances(study_uid=uid):
                if str(r["SOPInstanceUID"]) != missing:
                    cache.put_instance(uid, Path(r["path"]).read_bytes())
            assert not cache.has(uid)
            pf = StationPrefetcher(cache, {"s": DicomWebSource("s", svc.url)})
            pf.start()
            try:
                job = pf.enqueue("s", uid)
                assert pf.wait_idle(60)
                done = pf.job(job.id)
                assert done is not None and done.state == "done", done
                assert done.total == done.instances == 40 and cache.has(uid)
                assert (
                    done.bytes < 2 * len(Path(server_archive.instances(study_uid=uid)[0]["path"]).read_bytes()) + 4096
                )
                assert len({pydicom.dcmread(io.BytesIO(b)).SeriesInstanceUID for b in cache.read(uid)}) == 2
            finally:
                pf.stop()
    finally:
        cache.close()
        server_archive.close()
