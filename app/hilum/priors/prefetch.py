"""Prefetch: a patient's relevant priors brought from peers before the radiologist opens the case.

Triggers (each enqueues one job per patient; a patient already waiting is not queued twice):

* an order arrives — HL7 ORM creates it (:class:`hilum.archive.orders.OrderEvent` ``created``,
  heard on the archive's event bus after the commit);
* a study arrives — the first instance of a study the node has not seen yet
  (:class:`hilum.archive.ArchiveEvent` ``stored``), except imports and what prefetch itself brings;
* the worklist is opened — the workstation calls :meth:`Prefetcher.for_orders` or
  :meth:`Prefetcher.for_patients`.

A job finds the patient's priors as the viewer does (:mod:`hilum.priors.finder`:
same patient under every ADT-merged ID, ranked), keeps those the rules allow
(``[prefetch]`` in ``hilum.toml``, :class:`hilum.config.PrefetchRules`: how
many, how old, which modalities, same body part), and retrieves the ones not
yet local from the peer that has them: C-GET or C-MOVE as the peer's
``retrieve`` setting says (PS3.4 C.4.3 / C.4.2, :mod:`hilum.dimse.scu`, as
``hilum get``/``hilum move`` do), or WADO-RS for a DICOMweb source
(PS3.18 10.4, :meth:`hilum.dicomweb.client.DicomWebClient.retrieve`).  Every
instance enters through the archive's one ingest call.

Jobs run one at a time on a background thread.  Each has a state (``queued``,
``running``, ``done``, ``failed``), a one-line message and counts; observers
hear every change (:meth:`Prefetcher.subscribe`), every change is logged, and
the recent jobs are kept in ``DATA/prefetch/jobs.json`` for ``hilum prefetch
status`` in another process.

The cache: each study prefetch brings in is recorded in the index
(``prefetched_studies``, :meth:`hilum.archive.Archive.record_prefetched`)
before its first instance arrives, and only if it was not in the archive at
all.  When the recorded studies together exceed ``cache_limit_mb``, the least
recently accessed ones that are not open (:meth:`Prefetcher.hold`) are removed
through :meth:`hilum.archive.Archive.delete`.  A study that arrived any other
way is never recorded, so never removed; a recorded one that later receives
instances from elsewhere is taken off the list (kept for good).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from hilum.archive import Archive, ArchiveEvent
from hilum.archive.orders import OrderBook, OrderEvent
from hilum.config import Config, Peer, PrefetchRules
from hilum.dicomweb.client import DicomWebClient, DicomWebSource
from hilum.dimse.scu import DimseError, peer_target, retrieve_study
from hilum.priors.finder import Prior, describe_study, local_priors_of, mark_local, rank
from hilum.priors.remote import RemotePeer, configured_peers, search_peers

log = logging.getLogger(__name__)

__all__ = ["JOB_STATES", "PrefetchJob", "Prefetcher", "read_status", "select_priors"]

JOB_STATES = ("queued", "running", "done", "failed")
KEEP_JOBS = 200
"""Finished jobs kept in memory and in ``jobs.json``."""
QUIET_ORIGINS = frozenset({"import", "repair", "demo", "compress"})
"""Ingest origins that are not "a study arrived" for prefetch: bulk imports and repairs."""
MB = 1_000_000
RECENT = 600.0
"""Seconds after a patient's prefetch during which an arriving study of the patient does not start another."""


@dataclass
class PrefetchJob:
    """One prefetch for one patient: what triggered it, where it stands, what it did.

    ``found``: priors the rules keep (local and remote); ``to_fetch``: of those, not yet
    local; ``fetched``: studies retrieved; ``instances``: instances received; ``failed``:
    studies that could not be retrieved; ``errors``: one line each (peers that did not
    answer, retrieves that failed).
    """

    id: int
    trigger: str  # order | study | worklist | manual
    patient_id: str
    issuer: str = ""
    study_uid: str = ""  # the order's or study's UID the priors are for ('' for a patient)
    state: str = "queued"
    message: str = "waiting"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    found: int = 0
    to_fetch: int = 0
    fetched: int = 0
    instances: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)  # UIDs retrieved

    def snapshot(self) -> PrefetchJob:
        return PrefetchJob(**{**vars(self), "errors": list(self.errors), "studies": list(self.studies)})

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "errors": list(self.errors), "studies": list(self.studies)}

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


def select_priors(rules: PrefetchRules, current: Mapping[str, Any], priors: Iterable[Prior]) -> list[Prior]:
    """The priors the rules keep, most relevant first (at most ``rules.max_priors``).

    Ranked against ``current`` (:func:`hilum.priors.finder.rank`), then: at most
    ``max_age_years`` before the current study (0: any age); a modality of
    ``rules.modalities``, or of the current study/order when that list is empty (any, when
    the current one has none); with ``same_body_part``, a body part of the current study
    (when it has one).  Local priors count towards ``max_priors``: only what is missing is
    fetched.
    """
    ranked = rank(current, priors)
    cur_date = _date(str(current.get("study_date") or "")) or date.today()
    wanted = {m.upper() for m in rules.modalities} or {str(m).upper() for m in current.get("modalities") or ()}
    parts = {str(b).upper() for b in current.get("body_parts") or ()}
    out: list[Prior] = []
    for p in ranked:
        if len(out) >= rules.max_priors:
            break
        if rules.max_age_years:
            d = _date(p.study_date)
            if d is None or (cur_date - d).days > rules.max_age_years * 365.25:
                continue
        if wanted and not wanted & {m.upper() for m in p.modalities}:
            continue
        if rules.same_body_part and parts and not parts & {b.upper() for b in p.body_parts}:
            continue
        out.append(p)
    return out


def _date(text: str) -> date | None:
    try:
        return date(int(text[0:4]), int(text[4:6]), int(text[6:8])) if len(text) >= 8 else None
    except ValueError:
        return None


def _line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


class Prefetcher:
    """The prefetch service of one node (module docstring): triggers, a job queue, the cache limit.

    Built by :class:`hilum.node.Node` when ``[prefetch] enabled``; usable alone (tests, the
    CLI).  :meth:`start` subscribes to the archive's events and starts the worker thread;
    :meth:`stop` ends both (a retrieve in flight finishes first, within its timeouts).
    """

    def __init__(
        self,
        archive: Archive,
        config: Config,
        *,
        orders: OrderBook | None = None,
        peers: Mapping[str, RemotePeer] | None = None,
        rules: PrefetchRules | None = None,
    ):
        self.archive = archive
        self.config = config
        self.rules = rules or config.prefetch
        self.orders = orders or OrderBook(archive)
        if peers is None:
            # Peers we may not retrieve from cannot be prefetched from.
            peers = {
                n: p
                for n, p in configured_peers(config, self.rules.peers or None).items()
                if not isinstance(p, Peer) or p.may_retrieve
            }
        self.peers: dict[str, RemotePeer] = dict(peers)
        self._jobs: OrderedDict[int, PrefetchJob] = OrderedDict()
        self._queue: deque[int] = deque()
        self._events: deque[tuple[str, str]] = deque()  # ("study", uid) heard on the bus, for the worker
        self._cond = threading.Condition()
        self._next_id = 1
        self._observers: list[Callable[[PrefetchJob], None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._running_job: int | None = None
        self._incoming: set[str] = set()  # studies being prefetched right now
        self._seen: OrderedDict[str, None] = OrderedDict()  # studies already heard of (bounded)
        self._held: dict[str, int] = {}
        self._cached: set[str] = set()  # the studies listed as prefetched (mirrors prefetched_studies)
        self._saved_at = 0.0
        self.state_file = Path(config.data_dir) / "prefetch" / "jobs.json"

    # ------------------------------------------------------------ life

    def start(self, *, listen: bool = True) -> None:
        """Listen for orders and arriving studies (unless not ``listen``: jobs queued by hand only,
        as ``hilum prefetch run`` does); start the worker."""
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="prefetch", daemon=True)
            self._cached = {r["study_uid"] for r in self.archive.prefetched()}
        if listen:
            self._unsubscribe = [
                self.archive.events.subscribe(OrderEvent, self._on_order),
                self.archive.subscribe(self._on_archive),
            ]
        self._thread.start()
        if not self.peers:
            log.warning("prefetch is enabled but no peer may be asked: check [peers] and [prefetch] peers")
        log.info(
            "prefetch started: %d peer(s), at most %d prior(s) per patient, cache %s",
            len(self.peers),
            self.rules.max_priors,
            f"{self.rules.cache_limit_mb} MB" if self.rules.cache_limit_mb else "unlimited",
        )

    def stop(self, timeout: float | None = None) -> None:
        """Stop listening and end the worker after the job in flight."""
        for unsub in self._unsubscribe:
            unsub()
        self._unsubscribe = []
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        self._save(force=True)

    # ------------------------------------------------------------ observers

    def subscribe(self, callback: Callable[[PrefetchJob], None]) -> Callable[[], None]:
        """Call ``callback(job)`` (a snapshot) after each change of a job, from the worker thread
        (or the caller's, when queued); returns an unsubscribe function."""
        with self._cond:
            self._observers.append(callback)

        def unsubscribe() -> None:
            with self._cond:
                if callback in self._observers:
                    self._observers.remove(callback)

        return unsubscribe

    def _changed(self, job: PrefetchJob, *, log_it: bool = True) -> None:
        snap = job.snapshot()
        if log_it:
            lvl = logging.WARNING if job.state == "failed" else logging.INFO
            log.log(lvl, "prefetch job %d (%s): %s: %s", job.id, job.trigger, job.state, job.message)
        with self._cond:
            observers = list(self._observers)
        for cb in observers:
            try:
                cb(snap)
            except Exception:  # noqa: BLE001 - an observer must not stop the prefetch
                log.exception("prefetch observer failed")
        self._save(force=job.state in ("done", "failed", "queued"))

    # ------------------------------------------------------------ queueing

    def jobs(self) -> list[PrefetchJob]:
        """Snapshots of the jobs, oldest first (active ones and the last finished ones)."""
        with self._cond:
            return [j.snapshot() for j in self._jobs.values()]

    def job(self, job_id: int) -> PrefetchJob | None:
        with self._cond:
            j = self._jobs.get(job_id)
            return j.snapshot() if j is not None else None

    def enqueue(
        self, patient_id: str, issuer: str = "", *, study_uid: str = "", trigger: str = "manual"
    ) -> PrefetchJob:
        """Queue a job for the patient (the one already waiting for that patient, if any)."""
        if not patient_id:
            raise ValueError("a prefetch needs a patient ID")
        with self._cond:
            for j in self._jobs.values():
                if j.state == "queued" and (j.patient_id, j.issuer) == (patient_id, issuer):
                    if study_uid and not j.study_uid:
                        j.study_uid, j.trigger = study_uid, trigger
                    return j.snapshot()
            job = PrefetchJob(self._next_id, trigger, patient_id, issuer, study_uid)
            self._next_id += 1
            self._jobs[job.id] = job
            self._queue.append(job.id)
            self._trim()
            self._cond.notify_all()
        self._changed(job)
        return job.snapshot()

    def _trim(self) -> None:
        finished = [i for i, j in self._jobs.items() if not j.active]
        for i in finished[: max(0, len(finished) - KEEP_JOBS)]:
            del self._jobs[i]

    def for_study(self, study_uid: str, *, trigger: str = "study") -> PrefetchJob | None:
        """Queue the priors of a study or an ordered study UID; None when it has no patient ID.
        Raises :class:`~hilum.errors.NotFound` for a UID that is neither."""
        cur = describe_study(self.archive, study_uid)
        if not cur["patient_id"]:
            return None
        return self.enqueue(cur["patient_id"], cur["issuer"], study_uid=study_uid, trigger=trigger)

    def for_orders(self, orders: Iterable[str | Mapping[str, Any]], *, trigger: str = "worklist") -> int:
        """Queue the priors of worklist items — their Study Instance UIDs, or rows with
        ``StudyInstanceUID`` (what the worklist shows) — and return at once (safe on the GUI
        thread: the orders are looked up by the worker); returns how many were handed over.
        The jobs appear to observers as they are queued; unknown UIDs are skipped (logged)."""
        uids = []
        for o in orders:
            uid = str(o if isinstance(o, str) else (o.get("StudyInstanceUID") or o.get("study_uid") or ""))
            if uid:
                uids.append(uid)
        with self._cond:
            self._events.extend((trigger, uid) for uid in uids)
            self._cond.notify_all()
        return len(uids)

    def for_patients(
        self, patients: Iterable[str | tuple[str, str] | Mapping[str, Any]], *, trigger: str = "worklist"
    ) -> list[PrefetchJob]:
        """Queue the priors of patients: IDs, ``(ID, issuer)`` pairs, or rows with ``PatientID``
        (and ``IssuerOfPatientID``).  Without a current study the modality rule is "any" unless
        ``[prefetch] modalities`` names some; the most recent priors come first."""
        out = []
        for p in patients:
            if isinstance(p, str):
                pid, issuer = p, ""
            elif isinstance(p, tuple):
                pid, issuer = p
            else:
                pid, issuer = str(p.get("PatientID") or ""), str(p.get("IssuerOfPatientID") or "")
            if pid:
                out.append(self.enqueue(pid, issuer, trigger=trigger))
        return out

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no job is queued or running (tests, the CLI); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._running_job is not None or self._events:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    # ------------------------------------------------------------ triggers

    def _on_order(self, ev: OrderEvent) -> None:
        if ev.kind == "created" and self.rules.on_order and ev.study_uid:
            with self._cond:
                self._events.append(("order", ev.study_uid))
                self._cond.notify_all()

    def _on_archive(self, ev: ArchiveEvent) -> None:
        uid = ev.study_instance_uid
        if ev.kind not in ("stored", "replaced") or not uid:
            return
        with self._cond:
            if uid in self._incoming:
                return
            if uid in self._cached:
                if ev.origin not in QUIET_ORIGINS:
                    # A prefetched study receiving instances from elsewhere: it is kept for good.
                    self._cached.discard(uid)
                    self._events.append(("foreign", uid))
                    self._cond.notify_all()
                return
            if uid in self._seen:
                return
            self._seen[uid] = None
            while len(self._seen) > 10000:
                self._seen.popitem(last=False)
            if ev.origin in QUIET_ORIGINS:
                return
            self._events.append(("study", uid))
            self._cond.notify_all()

    def _handle_event(self, kind: str, uid: str) -> None:
        if kind == "foreign":
            self.archive.forget_prefetched(uid)
            log.info("a prefetched study received instances from elsewhere: kept out of the cache limit")
            return
        if kind == "study":
            if not self.rules.on_study:
                return
            try:
                cur = describe_study(self.archive, uid)
            except Exception as exc:  # noqa: BLE001 - deleted meanwhile
                log.debug("prefetch: arriving study gone: %s", exc)
                return
            recent = time.time() - RECENT
            with self._cond:
                if any(
                    (j.patient_id, j.issuer) == (cur["patient_id"], cur["issuer"])
                    and (j.active or (j.state == "done" and (j.finished or 0) > recent))
                    for j in self._jobs.values()
                ):
                    return  # its order's prefetch (or another study's) has just looked: nothing new to find
        try:
            self.for_study(uid, trigger=kind)
        except Exception as exc:  # noqa: BLE001 - a trigger that cannot be followed is logged
            log.warning("prefetch: cannot queue the priors of %s %s: %s", kind, uid, _line(exc))

    # ------------------------------------------------------------ the worker

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._queue and not self._events:
                    self._cond.wait()
                if self._stopping:
                    return
                event = self._events.popleft() if self._events else None
                job_id = None
                if event is None:
                    job_id = self._queue.popleft()
                    self._running_job = job_id
            try:
                if event is not None:
                    self._handle_event(*event)
                    continue
                assert job_id is not None
                self._run(self._jobs[job_id])
            except Exception:  # noqa: BLE001 - the worker outlives any one job
                log.exception("prefetch worker")
            finally:
                with self._cond:
                    self._running_job = None
                    self._cond.notify_all()

    def _run(self, job: PrefetchJob) -> None:
        job.state, job.started, job.message = "running", time.time(), "looking for priors"
        self._changed(job)
        try:
            self._prefetch(job)
        except Exception as exc:  # noqa: BLE001 - a job that fails says why
            job.errors.append(_line(exc))
            job.state = "failed"
            job.message = _line(exc)
            log.debug("prefetch job %d", job.id, exc_info=True)
        job.finished = time.time()
        self._changed(job)
        try:
            self.enforce_cache()
        except Exception:  # noqa: BLE001
            log.exception("prefetch: cache limit")

    def _prefetch(self, job: PrefetchJob) -> None:
        if job.study_uid:
            current = describe_study(self.archive, job.study_uid)
        else:
            current = {
                "patient_id": job.patient_id,
                "issuer": job.issuer,
                "study_date": date.today().strftime("%Y%m%d"),
                "modalities": (),
                "body_parts": (),
            }
        exclude = [job.study_uid] if job.study_uid else []
        local = local_priors_of(self.archive, job.patient_id, job.issuer, exclude=exclude)
        remote: list[Prior] = []
        if self.peers:
            keys = self.archive.patient_aliases(job.patient_id, job.issuer)
            found, errors = search_peers(keys, self.peers, timeout=self.rules.timeout, config=self.config)
            job.errors += [f"{name}: {why}" for name, why in errors.items()]
            held = {p.study_uid for p in local}
            remote = [p for p in mark_local(self.archive, found, exclude=exclude) if p.study_uid not in held]
            if errors and len(errors) == len(self.peers):
                raise DimseError("no peer answered: " + "; ".join(job.errors))
        chosen = select_priors(self.rules, current, [*local, *remote])
        wanted = [p for p in chosen if not p.local]
        job.found, job.to_fetch = len(chosen), len(wanted)
        job.message = f"{len(chosen)} relevant prior(s), {len(wanted)} to fetch"
        self._changed(job)
        for p in wanted:
            if self._stopping:
                job.errors.append("stopped before all were fetched")
                break
            try:
                n = self._retrieve(job, p)
            except Exception as exc:  # noqa: BLE001 - one study's failure is counted, the others go on
                job.failed += 1
                job.errors.append(f"{p.study_uid} from {p.source}: {_line(exc)}")
            else:
                job.fetched += 1
                job.instances += n
                job.studies.append(p.study_uid)
            job.message = f"fetched {job.fetched} of {len(wanted)}" + (f", {job.failed} failed" if job.failed else "")
            self._changed(job, log_it=False)
        if job.failed:
            job.state = "failed"
            job.message = f"{job.fetched} of {len(wanted)} prior(s) fetched, {job.failed} failed: " + job.errors[-1]
        else:
            job.state = "done"
            job.message = (
                f"{len(chosen)} relevant prior(s), {job.fetched} fetched ({job.instances} instances)"
                if wanted
                else f"{len(chosen)} relevant prior(s), all local"
            )
            if job.errors:
                job.message += f"; {len(job.errors)} peer(s) did not answer"

    def _retrieve(self, job: PrefetchJob, prior: Prior) -> int:
        """Bring one prior into the archive from its peer; the number of its instances now local."""
        peer = self.peers.get(prior.source)
        if peer is None:
            raise DimseError(f"peer {prior.source!r} is not configured")
        uid = prior.study_uid
        present = bool(self.archive.count("STUDY", {"StudyInstanceUID": uid}))
        with self._cond:
            self._incoming.add(uid)
        recorded = False
        try:
            if not present:
                recorded = self.archive.record_prefetched(uid, prior.source)
                with self._cond:
                    self._cached.add(uid)
            if isinstance(peer, DicomWebSource):
                self._wado(peer, uid)
            else:
                self._dimse(peer, uid)
        finally:
            with self._cond:
                self._incoming.discard(uid)
                self._seen[uid] = None
            rows = self.archive.query("STUDY", {"StudyInstanceUID": uid})
            n = int(rows[0].get("NumberOfStudyRelatedInstances") or 0) if rows else 0
            if recorded and n == 0:
                self.archive.forget_prefetched(uid)
                with self._cond:
                    self._cached.discard(uid)
        if n == 0:
            raise DimseError("no instance arrived")
        return n

    def _dimse(self, peer: Peer, uid: str) -> None:
        if not peer.may_retrieve:
            raise DimseError(f"retrieving from {peer.aet} is not allowed ([peers] may_retrieve = false)")
        target = peer_target(self.config, peer, timeout=self.rules.timeout)
        retrieve_study(self.archive, target, uid, method=peer.retrieve, destination=self.config.aet)

    def _wado(self, source: DicomWebSource, uid: str) -> None:
        from dataclasses import replace

        client = DicomWebClient(replace(source, timeout=self.rules.timeout))
        try:
            results = client.retrieve(self.archive, uid)
        finally:
            client.close_all()
        bad = [r for r in results if not r.ok]
        if bad:
            raise DimseError(f"WADO-RS from {source.name}: {len(bad)} instance(s) refused: {bad[0].reason}")

    # ------------------------------------------------------------ the cache

    def hold(self, study_uid: str) -> None:
        """A study is open (the viewer shows it): never removed while held; touched in the LRU order."""
        with self._cond:
            self._held[study_uid] = self._held.get(study_uid, 0) + 1
        self.archive.touch_prefetched(study_uid)

    def release(self, study_uid: str) -> None:
        """The study was closed (one :meth:`hold` undone); its last access is now."""
        with self._cond:
            n = self._held.get(study_uid, 0) - 1
            if n > 0:
                self._held[study_uid] = n
            else:
                self._held.pop(study_uid, None)
        self.archive.touch_prefetched(study_uid)

    def held(self) -> set[str]:
        """The studies open now (held at least once)."""
        with self._cond:
            return set(self._held)

    def touch(self, study_uid: str) -> None:
        """A prefetched study was used (opened, read): it moves to the end of the LRU order."""
        self.archive.touch_prefetched(study_uid)

    def enforce_cache(self) -> list[str]:
        """Remove the least recently accessed prefetched studies that are not open until the
        prefetched ones fit ``cache_limit_mb``; returns the UIDs removed."""
        rows = self.archive.prefetched()
        for r in rows:
            if not r["present"] and r["study_uid"] not in self._incoming:
                self.archive.forget_prefetched(r["study_uid"])
        rows = [r for r in rows if r["present"]]
        limit = self.rules.cache_limit_mb * MB
        total = sum(r["size_bytes"] for r in rows)
        removed: list[str] = []
        if not limit or total <= limit:
            return removed
        for r in rows:
            if total <= limit:
                break
            uid = r["study_uid"]
            with self._cond:
                busy = uid in self._held or uid in self._incoming
            if busy:
                continue
            try:
                self.archive.delete("STUDY", uid, user="prefetch cache", reason="least recently used fetched prior")
            except Exception as exc:  # noqa: BLE001 - gone already, or the index is busy: try the next
                log.warning("prefetch cache: cannot remove a study: %s", _line(exc))
                continue
            finally:
                self.archive.forget_prefetched(uid)
                with self._cond:
                    self._cached.discard(uid)
            total -= r["size_bytes"]
            removed.append(uid)
        if removed:
            log.info("prefetch cache: removed %d least recently used prior(s), %.1f MB left", len(removed), total / MB)
        return removed

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Rules, cache use and jobs, as ``hilum prefetch status --json`` shows them."""
        return _status(self.archive, self.rules, [j.as_dict() for j in self.jobs()], list(self.peers))

    def _save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._saved_at < 1.0:
            return
        self._saved_at = now
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(
                json.dumps({"saved": time.time(), "pid": os.getpid(), "jobs": [j.as_dict() for j in self.jobs()]}),
                encoding="utf-8",
            )
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.debug("prefetch: cannot save job states: %s", exc)


def _status(archive: Archive, rules: PrefetchRules, jobs: list[dict[str, Any]], peers: list[str]) -> dict[str, Any]:
    cached = archive.prefetched()
    present = [r for r in cached if r["present"]]
    return {
        "enabled": rules.enabled,
        "rules": rules.to_toml(),
        "peers": peers,
        "cache": {
            "studies": len(present),
            "bytes": sum(r["size_bytes"] for r in present),
            "limit_bytes": rules.cache_limit_mb * MB,
            "entries": [
                {**r, "fetched_at": str(r["fetched_at"]), "last_access": str(r["last_access"])} for r in present
            ],
        },
        "jobs": jobs,
    }


def read_status(archive: Archive, config: Config) -> dict[str, Any]:
    """The prefetch status as another process (``hilum prefetch status``) sees it: the rules of
    ``hilum.toml``, the cache in the index, and the jobs the running node last saved."""
    path = Path(config.data_dir) / "prefetch" / "jobs.json"
    jobs: list[dict[str, Any]] = []
    saved = None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        jobs, saved = list(doc.get("jobs") or []), doc.get("saved")
    except (OSError, ValueError):
        pass
    try:
        peers = list(configured_peers(config, config.prefetch.peers or None))
    except ValueError:
        peers = list(config.prefetch.peers)
    out = _status(archive, config.prefetch, jobs, peers)
    out["jobs_saved_at"] = saved
    return out
