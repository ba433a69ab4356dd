"""Prefetch onto the reading station: the reader's remote studies and their priors, fetched before they are opened.

A teleradiologist reads from a remote node over a slow link (a ``[dicomweb_sources.NAME]``
``hilum serve`` or any DICOMweb archive).  Waiting for a 600-slice CT at 10 Mbit/s when the case
is opened wastes minutes per case; so the studies the reader is going to open — and the priors
they will be compared with — are brought into the workstation's remote-study cache
(:class:`hilum.dicomweb.cache.RemoteCache`, bounded, LRU) in the background, ahead of need.

What is fetched (the *station worklist*):

* the **remote worklist**: a QIDO-RS search (PS3.18 10.6) on each source of today's studies
  (``days`` back), per modality of ``modalities`` (empty: any), with any other matching keys of
  ``match`` (e.g. ``ReferringPhysicianName``, ``InstitutionName``), at most ``max_studies`` —
  the ``[station_prefetch]`` table of ``hilum.toml`` (:class:`StationPrefetchSettings`);
* the **orders on the worklist tab** (:meth:`StationPrefetcher.for_worklist`): each listed
  Study Instance UID looked up on the sources; those a source holds are fetched;
* the **relevant priors** of each of those, chosen by the prior-comparison rules of issue 15
  (:func:`hilum.priors.finder.rank` and :func:`hilum.priors.prefetch.select_priors` with the
  ``[prefetch]`` rules, :class:`hilum.config.PrefetchRules`): the patient's other studies on the
  same source, the most relevant ones that are not already in the local archive.

Studies already in the local archive or complete in the cache are not fetched.  Each study is one
:class:`StationJob` in a visible queue (state, images, bytes, speed), fetched one at a time in
order (a worklist study, then its priors, then the next), with:

* a **bandwidth cap** (:class:`TokenBucket`, bytes/s; ``max_rate_mbit`` in ``hilum.toml``,
  :meth:`StationPrefetcher.set_rate` at run time) around the WADO-RS reads: the response body is
  read in small pieces and each piece waits for its tokens, so the link keeps room for the
  reader's own work; TCP flow control then slows the server to the same rate;
* **pause / resume** of the whole queue (a transfer in flight stops at its next piece, its
  connection kept open, and goes on where it was), **cancel** of one job (its connection
  dropped), **retry** of a failed or cancelled one (only the instances not yet in the cache are
  asked for again).

A study is fetched series by series with WADO-RS (PS3.18 10.4, ``transfer-syntax=*``: as stored,
no transcoding), after a QIDO-RS listing of its instances; a series the cache already holds in part
is completed instance by instance.  Every instance goes into the cache with
:meth:`RemoteCache.put_instance` (bytes as received: identity is sacred), the study is marked
complete at the end when the cache keeps that mark.

The prefetch does not fight the cache's limit: a study is not started while the studies it has
brought and the reader has not opened yet fill :data:`ROOM` of ``[remote_cache] limit_mb`` (the job
fails with that reason; Retry once some are read), so it never evicts what it fetched for the next
cases.  Nothing of the queue is saved: after a restart the next look queues the worklist again,
skips what the cache holds whole, and completes what it holds in part.

``hilum.toml``::

    [station_prefetch]
    enabled = true            # look every interval_s seconds and when the worklist tab shows orders
    sources = ["clinic"]      # [dicomweb_sources] names (empty: all)
    days = 0                  # today's studies (and this many days before)
    modalities = ["CT", "MR"] # one QIDO-RS search each (empty: any)
    match = { InstitutionName = "Clinic*" }   # other matching keys
    max_rate_mbit = 8         # the cap (0: none)
    priors = true             # their relevant priors too ([prefetch] rules)

Two daemon threads: the *finder* (QIDO searches: worklist, orders, priors) and the *fetcher*
(WADO-RS downloads), so a long download never delays the next search.  No Qt: the panel
(:mod:`hilum.ui.station_prefetch_panel`) subscribes to job changes (:meth:`StationPrefetcher.subscribe`).
"""

from __future__ import annotations

import io
import logging
import threading
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import pydicom

from hilum.config import ConfigError, PrefetchRules
from hilum.dicomweb import multipart
from hilum.dicomweb.client import DicomWebClient, DicomWebError, DicomWebSource, load_sources
from hilum.dicomweb.media import DICOM, MULTIPART, parse_content_type
from hilum.priors.finder import Prior, mark_local
from hilum.priors.prefetch import select_priors
from hilum.priors.remote import search_peers

if TYPE_CHECKING:
    from hilum.dicomweb.cache import RemoteCache

log = logging.getLogger(__name__)

__all__ = [
    "JOB_STATES",
    "StationJob",
    "StationPrefetchSettings",
    "StationPrefetcher",
    "TokenBucket",
    "remote_worklist",
]

JOB_STATES = ("queued", "running", "paused", "done", "failed", "cancelled")
MBIT = 1_000_000 / 8
"""Bytes per second in one Mbit/s."""
PIECE = 64 * 1024
"""At most this many bytes read at a time from a response (less under a low cap: a tenth of a second's worth)."""
NOTIFY_S = 0.25
"""At most this often a running job's byte counts are announced to observers."""
SPEED_WINDOW_S = 3.0
"""The speed shown is over the last this many seconds."""
ROOM = 0.8
"""Share of the cache's limit that prefetched, not yet opened studies may fill before no more is started."""
KEEP_FINISHED = 300
"""Finished jobs kept in the list."""


# ---------------------------------------------------------------- settings


@dataclass
class StationPrefetchSettings:
    """``[station_prefetch]`` in ``hilum.toml`` (module docstring).

    ``enabled`` starts the automatic prefetch (every ``interval_s`` seconds, and whenever the
    worklist tab shows orders, with ``from_worklist``); the queue can be filled by hand without it.
    ``sources`` names ``[dicomweb_sources]`` (empty: all); ``days``: studies of today and this many
    days before; ``modalities``: one search per modality (empty: any); ``match``: other QIDO-RS
    matching keys; ``max_studies`` per source and search; ``priors``: fetch the relevant priors
    (``[prefetch]`` rules); ``max_rate_mbit``: the bandwidth cap in Mbit/s (0: none);
    ``timeout``: seconds each request may take.
    """

    enabled: bool = False
    sources: list[str] = field(default_factory=list)
    days: int = 0
    modalities: list[str] = field(default_factory=list)
    match: dict[str, str] = field(default_factory=dict)
    max_studies: int = 50
    priors: bool = True
    from_worklist: bool = True
    max_rate_mbit: float = 0.0
    interval_s: float = 300.0
    timeout: float = 60.0

    @property
    def rate_bytes(self) -> float:
        """The cap in bytes per second (0: none)."""
        return self.max_rate_mbit * MBIT

    def to_toml(self) -> dict[str, Any]:
        return {
            k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
            for k, v in vars(self).items()
        }

    @classmethod
    def from_toml(cls, table: Any, where: str = "[station_prefetch]") -> StationPrefetchSettings:
        """Settings from the table; raises :class:`~hilum.config.ConfigError` naming the bad setting."""
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table")
        out = cls()
        for key, value in table.items():
            if key not in vars(out):
                raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(vars(out))})")
            default = getattr(out, key)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")
            elif isinstance(default, list):
                if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                    raise ConfigError(f"{where}: {key} must be a list of names, not {value!r}")
                value = [v.strip().upper() if key == "modalities" else v.strip() for v in value]
            elif isinstance(default, dict):
                if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
                    raise ConfigError(f"{where}: {key} must be a table of DICOM keywords and values, not {value!r}")
                value = {str(k): str(v) for k, v in value.items()}
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ConfigError(f"{where}: {key} must be a number >= 0, not {value!r}")
                if key in ("timeout", "interval_s") and value == 0:
                    raise ConfigError(f"{where}: {key} must be more than 0 seconds")
                value = float(value)
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigError(f"{where}: {key} must be a whole number >= 0, not {value!r}")
            setattr(out, key, value)
        return out

    @classmethod
    def from_config(cls, config: Any) -> StationPrefetchSettings:
        """The ``[station_prefetch]`` table of a loaded :class:`hilum.config.Config` (defaults without one)."""
        table = (getattr(config, "extra", None) or {}).get("station_prefetch")
        if table is None:
            return cls()
        return cls.from_toml(table, f"{getattr(config, 'config_path', 'hilum.toml')}: [station_prefetch]")


# ---------------------------------------------------------------- the bandwidth cap


class TokenBucket:
    """A token bucket of ``rate`` bytes per second holding at most ``burst`` bytes (thread-safe).

    :meth:`take` spends tokens for bytes just read and waits while the bucket is in debt, so over
    any span of ``T`` seconds at most ``rate * T + burst`` (plus the last piece) pass.  ``rate`` 0
    means no cap.  The clock and sleep are injectable (unit tests step time instead of sleeping).
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._rate = 0.0
        self._burst = 0.0
        self._fixed_burst = burst
        self._tokens = 0.0
        self._stamp = clock()
        self.set_rate(rate)

    @property
    def rate(self) -> float:
        return self._rate

    def set_rate(self, rate: float) -> None:
        """Change the cap (bytes/s, 0: none) at once; the bucket starts empty under the new rate."""
        if rate < 0:
            raise ValueError("a rate must be >= 0 bytes per second")
        with self._lock:
            self._rate = float(rate)
            self._burst = float(self._fixed_burst) if self._fixed_burst is not None else max(4096.0, rate * 0.1)
            self._tokens = 0.0
            self._stamp = self._clock()

    def piece(self) -> int:
        """A good read size under this cap: a tenth of a second's worth, between 1 KiB and :data:`PIECE`."""
        return PIECE if not self._rate else int(min(PIECE, max(1024.0, self._rate / 10)))

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def take(self, n: int, stop: Callable[[], bool] | None = None) -> None:
        """Spend ``n`` bytes' tokens, then wait (in steps of at most 0.1 s) until the bucket is out of
        debt; returns early when ``stop()`` says so."""
        with self._lock:
            if not self._rate:
                return
            self._refill()
            self._tokens -= n
        while True:
            with self._lock:
                if not self._rate:
                    return
                self._refill()
                wait = -self._tokens / self._rate
            if wait <= 1e-6 or (stop is not None and stop()):
                return
            self._sleep(min(wait, 0.1))


# ---------------------------------------------------------------- jobs


@dataclass
class StationJob:
    """One study to bring onto the station: where from, why, and where it stands.

    ``kind``: ``worklist`` (the remote worklist or the worklist tab), ``prior`` (a relevant prior of
    ``for_study``, ``reason`` says why), ``manual``.  ``instances`` of ``total`` (0: not known yet)
    and ``bytes`` received so far; ``speed`` in bytes/s over the last seconds while it runs.
    """

    id: int
    source: str
    study_uid: str
    kind: str = "manual"
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    description: str = ""
    modalities: tuple[str, ...] = ()
    for_study: str = ""
    reason: str = ""
    state: str = "queued"
    message: str = "waiting"
    instances: int = 0
    total: int = 0
    bytes: int = 0
    speed: float = 0.0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str = ""

    def snapshot(self) -> StationJob:
        return replace(self)

    def as_dict(self) -> dict[str, Any]:
        return {**vars(self), "modalities": list(self.modalities)}

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running", "paused")


class _Stopped(Exception):
    """A transfer interrupted by cancel or by the prefetcher stopping."""


def _line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _q(uid: str) -> str:
    return urllib.parse.quote(uid, safe=".")


def _sop_uid(data: bytes) -> str:
    """The SOP Instance UID of Part 10 bytes (the header only is parsed)."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"], force=True)
    uid = ds.get("SOPInstanceUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPInstanceUID", "")
    return str(uid or "")


# ---------------------------------------------------------------- the remote worklist


def remote_worklist(
    client: DicomWebClient, settings: StationPrefetchSettings, *, today: date | None = None
) -> list[dict[str, Any]]:
    """The studies of the remote worklist on one source (module docstring): QIDO-RS rows, oldest
    first (the order they are read in), without repeats."""
    day = today or date.today()
    span = f"{(day - timedelta(days=settings.days)).strftime('%Y%m%d')}-{day.strftime('%Y%m%d')}"
    fields = ["PatientID", "IssuerOfPatientID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "StudyTime"]
    rows: dict[str, dict[str, Any]] = {}
    for modality in settings.modalities or [""]:
        query: dict[str, Any] = {**settings.match, "StudyDate": span}
        if modality:
            query["ModalitiesInStudy"] = modality
        for row in client.search_studies(query, limit=settings.max_studies or None, includefield=fields):
            uid = str(row.get("StudyInstanceUID") or "")
            if uid and uid not in rows:
                rows[uid] = row
    out = sorted(rows.values(), key=lambda r: (str(r.get("StudyDate") or ""), str(r.get("StudyTime") or "")))
    return out[: settings.max_studies] if settings.max_studies else out


def _split(value: Any) -> tuple[str, ...]:
    items = value.split("\\") if isinstance(value, str) else [str(v) for v in (value or [])]
    return tuple(v.strip().upper() for v in items if v and v.strip())


# ---------------------------------------------------------------- the prefetcher


class StationPrefetcher:
    """The queue of studies to bring onto this station, its finder and fetcher threads (module docstring).

    ``cache`` is the workstation's :class:`hilum.dicomweb.cache.RemoteCache`; ``sources`` the
    DICOMweb sources by name (with their credentials); ``archive`` the local archive (studies it
    holds are not fetched; priors it holds count as local); ``rules`` the prior rules
    (``[prefetch]``).  Usable without Qt (tests, a script); :meth:`start` then :meth:`stop`.
    """

    def __init__(
        self,
        cache: RemoteCache,
        sources: Mapping[str, DicomWebSource],
        settings: StationPrefetchSettings | None = None,
        *,
        archive: Any = None,
        rules: PrefetchRules | None = None,
    ):
        self.cache = cache
        self.settings = settings or StationPrefetchSettings()
        self.sources: dict[str, DicomWebSource] = dict(sources)
        self.archive = archive
        self.rules = rules or PrefetchRules()
        self.bucket = TokenBucket(self.settings.rate_bytes)
        self._cond = threading.Condition()
        self._jobs: OrderedDict[int, StationJob] = OrderedDict()
        self._queue: deque[int] = deque()
        self._looks: deque[tuple[str, Any]] = deque()  # finder's work: ("worklist", None) / ("orders", rows)
        self._cancel: dict[int, threading.Event] = {}
        self._observers: list[Callable[[StationJob], None]] = []
        self._next_id = 1
        self._paused = False
        self._stopping = False
        self._running: int | None = None
        self._looking = False
        self._threads: list[threading.Thread] = []
        self._clients: dict[str, DicomWebClient] = {}
        self.errors: dict[str, str] = {}  # source name -> the last search's failure, for the panel

    # ------------------------------------------------------------ life

    def start(self) -> None:
        """Start the finder and fetcher threads."""
        with self._cond:
            if self._threads:
                return
            self._stopping = False
            self._threads = [
                threading.Thread(target=self._find_loop, name="station-prefetch-find", daemon=True),
                threading.Thread(target=self._fetch_loop, name="station-prefetch-fetch", daemon=True),
            ]
        for t in self._threads:
            t.start()
        log.info(
            "station prefetch started: %d source(s), cap %s",
            len(self.sources),
            f"{self.bucket.rate * 8 / 1e6:g} Mbit/s" if self.bucket.rate else "none",
        )

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop both threads (a transfer in flight is dropped; what it brought stays in the cache)."""
        with self._cond:
            self._stopping = True
            for ev in self._cancel.values():
                ev.set()
            self._cond.notify_all()
            threads, self._threads = self._threads, []
        for t in threads:
            t.join(timeout)
        for client in list(self._clients.values()):
            client.close_all()
        self._clients.clear()

    def set_sources(self, sources: Mapping[str, DicomWebSource]) -> None:
        """New sources (added in the workstation, a password typed): used from the next request on."""
        with self._cond:
            self.sources = dict(sources)
            clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close_all()

    # ------------------------------------------------------------ observers

    def subscribe(self, callback: Callable[[StationJob], None]) -> Callable[[], None]:
        """Call ``callback(job)`` (a snapshot) after each change of a job, from the prefetch threads
        (or the caller's); returns an unsubscribe function."""
        with self._cond:
            self._observers.append(callback)

        def unsubscribe() -> None:
            with self._cond:
                if callback in self._observers:
                    self._observers.remove(callback)

        return unsubscribe

    def _changed(self, job: StationJob) -> None:
        with self._cond:
            snap = job.snapshot()
            observers = list(self._observers)
        for cb in observers:
            try:
                cb(snap)
            except Exception:  # noqa: BLE001 - an observer must not stop the prefetch
                log.exception("station prefetch observer failed")

    # ------------------------------------------------------------ the queue

    def jobs(self) -> list[StationJob]:
        """Snapshots of the jobs, in queue order of creation."""
        with self._cond:
            return [j.snapshot() for j in self._jobs.values()]

    def job(self, job_id: int) -> StationJob | None:
        with self._cond:
            j = self._jobs.get(job_id)
            return j.snapshot() if j is not None else None

    def job_of(self, study_uid: str) -> StationJob | None:
        """The latest job of a study (any state), or None."""
        with self._cond:
            for j in reversed(self._jobs.values()):
                if j.study_uid == study_uid:
                    return j.snapshot()
        return None

    def enqueue(
        self,
        source: str,
        study_uid: str,
        *,
        kind: str = "manual",
        row: Mapping[str, Any] | None = None,
        for_study: str = "",
        reason: str = "",
    ) -> StationJob:
        """Queue a study of ``source``; a study listed already keeps its one job:

        * waiting or being fetched: that job;
        * done: that job, unless the cache no longer holds the study whole (evicted since): queued again;
        * failed or cancelled: that job as it is for the automatic looks (the person's Cancel stands,
          a failure waits for Retry, no new row each look); queued again when asked by hand
          (``kind="manual"``).
        """
        if source not in self.sources:
            raise ValueError(f"no DICOMweb source called {source!r}")
        if not study_uid:
            raise ValueError("a study to prefetch needs its Study Instance UID")
        r = row or {}
        existing = self.job_of(study_uid)
        if existing is not None:
            again = (existing.state == "done" and not self._cached(study_uid)) or (
                existing.state in ("failed", "cancelled") and kind == "manual"
            )
            if again:
                self._requeue(existing.id, "waiting (again)")
            if kind == "worklist" and existing.kind == "prior":
                with self._cond:  # a prior that is on the worklist itself: it is listed as such
                    listed = self._jobs.get(existing.id)
                    if listed is not None:
                        listed.kind = "worklist"
                if listed is not None:
                    self._changed(listed)
            return self.job(existing.id) or existing
        with self._cond:
            for j in self._jobs.values():
                if j.study_uid == study_uid:  # listed meanwhile by another thread
                    return j.snapshot()
            job = StationJob(
                self._next_id,
                source,
                study_uid,
                kind,
                patient_id=str(r.get("PatientID") or ""),
                patient_name=str(r.get("PatientName") or ""),
                study_date=str(r.get("StudyDate") or ""),
                description=str(r.get("StudyDescription") or ""),
                modalities=_split(r.get("ModalitiesInStudy") or ""),
                for_study=for_study,
                reason=reason,
                total=int(r.get("NumberOfStudyRelatedInstances") or 0),
            )
            self._next_id += 1
            self._jobs[job.id] = job
            self._queue.append(job.id)
            self._trim()
            self._cond.notify_all()
        log.info("station prefetch: job %d queued (%s, %s)", job.id, kind, source)
        self._changed(job)
        return job.snapshot()

    def _trim(self) -> None:
        finished = [i for i, j in self._jobs.items() if not j.active]
        for i in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[i]

    def refresh(self) -> None:
        """Search the remote worklist of every source now (on the finder thread); returns at once."""
        with self._cond:
            if ("worklist", None) not in self._looks:
                self._looks.append(("worklist", None))
            self._cond.notify_all()

    def for_worklist(self, rows: Iterable[Mapping[str, Any] | str]) -> int:
        """Look for the studies of worklist rows (rows with ``StudyInstanceUID``, or UIDs) on the
        sources and queue those found, with their priors; returns how many were handed over, at once."""
        uids: list[dict[str, Any]] = []
        for r in rows:
            row = {"StudyInstanceUID": r} if isinstance(r, str) else dict(r)
            if row.get("StudyInstanceUID"):
                uids.append(row)
        if uids:
            with self._cond:
                self._looks.append(("orders", uids))
                self._cond.notify_all()
        return len(uids)

    def bump(self, study_uid: str) -> bool:
        """Move a queued study to the front of the queue (the reader is about to open it)."""
        with self._cond:
            for jid in self._queue:
                if self._jobs[jid].study_uid == study_uid:
                    self._queue.remove(jid)
                    self._queue.appendleft(jid)
                    return True
        return False

    # ------------------------------------------------------------ controls

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Hold the queue: no job starts, the transfer in flight stops at its next piece."""
        with self._cond:
            self._paused = True
            self._cond.notify_all()
        log.info("station prefetch paused")

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()
        log.info("station prefetch resumed")

    def set_rate(self, bytes_per_s: float) -> None:
        """The bandwidth cap from now on (bytes/s, 0: none), the transfer in flight included."""
        self.bucket.set_rate(bytes_per_s)
        log.info("station prefetch cap: %s", f"{bytes_per_s * 8 / 1e6:g} Mbit/s" if bytes_per_s else "none")

    def cancel(self, job_id: int) -> bool:
        """Cancel a queued, running or paused job (a running transfer is dropped); False if it was finished."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or not job.active:
                return False
            if job_id in self._queue:
                self._queue.remove(job_id)
                job.state, job.message, job.finished = "cancelled", "cancelled", time.time()
            ev = self._cancel.get(job_id)
            if ev is not None:
                ev.set()  # the fetcher marks it cancelled when the transfer has stopped
            self._cond.notify_all()
        self._changed(job)
        return True

    def retry(self, job_id: int) -> bool:
        """Queue a failed or cancelled job again (only the instances the cache lacks are asked for)."""
        return self._requeue(job_id, "waiting (retry)", states=("failed", "cancelled"))

    def _requeue(self, job_id: int, message: str, states: tuple[str, ...] = ("failed", "cancelled", "done")) -> bool:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None or job.state not in states:
                return False
            job.state, job.message, job.error = "queued", message, ""
            job.speed, job.started, job.finished = 0.0, None, None
            self._queue.append(job_id)
            self._cond.notify_all()
        self._changed(job)
        return True

    def clear_finished(self) -> None:
        """Forget the jobs that are done or cancelled (failed ones stay, for Retry)."""
        with self._cond:
            for jid in [i for i, j in self._jobs.items() if j.state in ("done", "cancelled")]:
                del self._jobs[jid]

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until nothing is being searched, queued or fetched (tests, scripts); False on timeout.
        A paused queue with jobs waiting is not idle."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._looks or self._looking or self._queue or self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        out = dict.fromkeys(JOB_STATES, 0)
        with self._cond:
            for j in self._jobs.values():
                out[j.state] = out.get(j.state, 0) + 1
        return out

    # ------------------------------------------------------------ the finder

    def _client(self, name: str) -> DicomWebClient:
        client = self._clients.get(name)
        if client is None:
            client = DicomWebClient(replace(self.sources[name], timeout=self.settings.timeout))
            self._clients[name] = client
        return client

    def _find_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._looks:
                    self._cond.wait()
                if self._stopping:
                    return
                kind, payload = self._looks.popleft()
                self._looking = True
            try:
                if kind == "worklist":
                    self._look_worklist()
                else:
                    self._look_orders(payload)
            except Exception:  # noqa: BLE001 - the finder outlives any one search
                log.exception("station prefetch: search")
            finally:
                with self._cond:
                    self._looking = False
                    self._cond.notify_all()

    def _local(self, study_uid: str, n_remote: int = 0) -> bool:
        """The local archive holds the study (at least as many instances as the source said)."""
        if self.archive is None:
            return False
        rows = self.archive.query("STUDY", {"StudyInstanceUID": study_uid}, limit=1)
        held = int(rows[0].get("NumberOfStudyRelatedInstances") or 0) if rows else 0
        return held > 0 and (not n_remote or held >= n_remote)

    def _cached(self, study_uid: str) -> bool:
        try:
            return bool(self.cache.has(study_uid))
        except Exception as exc:  # noqa: BLE001 - a cache that cannot answer: fetch
            log.warning("station prefetch: the cache cannot say whether it holds a study: %s", _line(exc))
            return False

    def _look_worklist(self) -> None:
        for name in list(self.sources):
            try:
                rows = remote_worklist(self._client(name), self.settings)
            except Exception as exc:  # noqa: BLE001 - one source down: the others go on
                self.errors[name] = _line(exc)
                log.warning("station prefetch: worklist of %s: %s", name, _line(exc))
                continue
            self.errors.pop(name, None)
            log.info("station prefetch: %d study(ies) on the worklist of %s", len(rows), name)
            for row in rows:
                if self._stopping:
                    return
                self._take(name, row)

    def _look_orders(self, rows: list[dict[str, Any]]) -> None:
        wanted = {str(r["StudyInstanceUID"]): r for r in rows}
        wanted = {u: r for u, r in wanted.items() if not self._local(u)}
        for name in list(self.sources):
            if not wanted:
                return
            uids = list(wanted)
            found: list[dict[str, Any]] = []
            try:
                client = self._client(name)
                for i in range(0, len(uids), 50):  # UID list matching (PS3.4 C.2.2.2.2), 50 at a time
                    found += client.search_studies(
                        {"StudyInstanceUID": ",".join(uids[i : i + 50])},
                        includefield=["IssuerOfPatientID", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"],
                    )
            except Exception as exc:  # noqa: BLE001
                self.errors[name] = _line(exc)
                log.warning("station prefetch: looking for worklist studies on %s: %s", name, _line(exc))
                continue
            self.errors.pop(name, None)
            for row in found:
                uid = str(row.get("StudyInstanceUID") or "")
                if uid in wanted:
                    wanted.pop(uid)
                    self._take(name, row)

    def _take(self, name: str, row: Mapping[str, Any]) -> None:
        """A worklist study on ``name``: queue it unless local or cached, then its relevant priors."""
        uid = str(row.get("StudyInstanceUID") or "")
        n = int(row.get("NumberOfStudyRelatedInstances") or 0)
        if not uid:
            return
        if not self._local(uid, n) and not self._cached(uid):
            self.enqueue(name, uid, kind="worklist", row=row)
        if self.settings.priors and row.get("PatientID"):
            try:
                self._take_priors(name, row)
            except Exception as exc:  # noqa: BLE001 - the priors are a bonus: log and go on
                log.warning("station prefetch: priors on %s: %s", name, _line(exc))

    def _take_priors(self, name: str, row: Mapping[str, Any]) -> None:
        uid = str(row["StudyInstanceUID"])
        pid, issuer = str(row.get("PatientID") or ""), str(row.get("IssuerOfPatientID") or "")
        keys = [(pid, issuer)]
        if self.archive is not None:
            keys = list(dict.fromkeys([*keys, *self.archive.patient_aliases(pid, issuer)]))
        found, errors = search_peers(keys, {name: self.sources[name]}, timeout=self.settings.timeout)
        if errors:
            raise DicomWebError(0, "; ".join(errors.values()))
        mine = next((p for p in found if p.study_uid == uid), None)
        current = {
            "study_uid": uid,
            "patient_id": pid,
            "issuer": issuer,
            "study_date": str(row.get("StudyDate") or "") or date.today().strftime("%Y%m%d"),
            "modalities": mine.modalities if mine is not None else _split(row.get("ModalitiesInStudy") or ""),
            "body_parts": mine.body_parts if mine is not None else (),
        }
        others: list[Prior] = [p for p in found if p.study_uid != uid]
        if self.archive is not None:
            others = mark_local(self.archive, others, exclude=[uid])
        for p in select_priors(self.rules, current, others):
            if p.local or self._cached(p.study_uid):
                continue
            self.enqueue(
                name,
                p.study_uid,
                kind="prior",
                for_study=uid,
                reason=p.reason,
                row={
                    "PatientID": p.patient_id,
                    "StudyDate": p.study_date,
                    "StudyDescription": p.description,
                    "ModalitiesInStudy": "\\".join(p.modalities),
                    "NumberOfStudyRelatedInstances": p.n_instances,
                    "PatientName": row.get("PatientName") or "",
                },
            )

    # ------------------------------------------------------------ the fetcher

    def _fetch_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (self._paused or not self._queue):
                    self._cond.wait()
                if self._stopping:
                    return
                job_id = self._queue.popleft()
                job = self._jobs[job_id]
                self._running = job_id
                cancel = self._cancel[job_id] = threading.Event()
            try:
                self._fetch(job, cancel)
            except Exception:  # noqa: BLE001 - the fetcher outlives any one job
                log.exception("station prefetch: fetch")
            finally:
                with self._cond:
                    self._running = None
                    self._cancel.pop(job_id, None)
                    self._cond.notify_all()

    def _gate(self, job: StationJob, cancel: threading.Event) -> None:
        """Between two pieces: stop on cancel; wait while the queue is paused (the job shows ``paused``)."""
        if cancel.is_set() or self._stopping:
            raise _Stopped
        if not self._paused:
            return
        with self._cond:
            job.state, job.message, job.speed = "paused", "paused", 0.0
        self._changed(job)
        with self._cond:
            while self._paused and not cancel.is_set() and not self._stopping:
                self._cond.wait(0.2)
            if cancel.is_set() or self._stopping:
                raise _Stopped
            job.state, job.message = "running", "fetching"
        self._changed(job)

    def _fetch(self, job: StationJob, cancel: threading.Event) -> None:
        with self._cond:
            job.state, job.message, job.started, job.speed = "running", "listing the instances", time.time(), 0.0
            start_instances, start_bytes = job.instances, job.bytes
        self._changed(job)
        client = self._client(job.source)
        try:
            if self._cached(job.study_uid) or self._local(job.study_uid, job.total):
                job.message = "already on this station"
            elif not self._room(job.study_uid):
                raise DicomWebError(
                    0,
                    "the remote cache is full of prefetched studies not opened yet "
                    "([remote_cache] limit_mb): Retry once some are read",
                )
            else:
                self._transfer(client, job, cancel)
                self.cache.mark_complete(job.study_uid)
                job.message = f"{job.instances} image(s), {job.bytes / 1e6:.1f} MB"
            job.state = "done"
        except _Stopped:
            client.close()  # the rest of the response is unread: the connection cannot be reused
            job.state = "cancelled"
            job.message = f"cancelled after {job.instances - start_instances} image(s)"
        except Exception as exc:  # noqa: BLE001 - a job that fails says why; the next goes on
            client.close()
            job.state, job.error = "failed", _line(exc)
            job.message = job.error
            log.warning("station prefetch: job %d failed: %s", job.id, job.error)
        job.finished, job.speed = time.time(), 0.0
        if job.state == "done" and job.started and job.bytes > start_bytes:
            job.speed = (job.bytes - start_bytes) / max(1e-6, job.finished - job.started)
        log.info("station prefetch: job %d %s: %s", job.id, job.state, job.message)
        self._changed(job)

    def _room(self, study_uid: str) -> bool:
        """The cache has room for another study without evicting prefetched ones not opened yet."""
        limit = int(getattr(self.cache, "limit_bytes", 0) or 0)
        if not limit:
            return True
        with self._cond:
            mine = {j.study_uid for j in self._jobs.values() if j.state == "done" and j.study_uid != study_uid}
        try:
            unopened = sum(
                int(r["size_bytes"])
                for r in self.cache.studies()
                if r["study_uid"] in mine and not r.get("pinned") and r["last_open"] <= r["fetched_at"]
            )
        except Exception as exc:  # noqa: BLE001 - a cache that cannot answer: go on
            log.debug("station prefetch: cache studies: %s", exc)
            return True
        return unopened < ROOM * limit

    def _has_instance(self, sop_uid: str) -> bool:
        """The cache holds this instance already (a retry, or a study half-fetched by a viewer)."""
        try:
            return bool(self.cache.index.has_instance(sop_uid))
        except Exception as exc:  # noqa: BLE001 - a cache that cannot answer: ask for it again
            log.debug("station prefetch: has_instance: %s", exc)
            return False

    def _transfer(self, client: DicomWebClient, job: StationJob, cancel: threading.Event) -> None:
        """Series by series (whole series, or the missing instances one by one), into the cache."""
        got: set[str] = set()
        plan: list[tuple[str | None, str | None]] = [(None, None)]
        try:
            listing = self._listing(client, job.study_uid)
        except DicomWebError as exc:
            log.info("station prefetch: no instance listing (%s): the whole study is asked for", _line(exc))
            listing = []
        if listing:
            by_series: dict[str, list[str]] = {}
            for r in listing:
                ser, inst = str(r.get("SeriesInstanceUID") or ""), str(r.get("SOPInstanceUID") or "")
                if ser and inst:
                    by_series.setdefault(ser, []).append(inst)
            job.total = sum(len(v) for v in by_series.values())
            plan = []
            held = 0
            for ser, sops in by_series.items():
                missing = [s for s in sops if not self._has_instance(s)]
                held += len(sops) - len(missing)
                if len(missing) == len(sops):
                    plan.append((ser, None))
                else:
                    plan += [(ser, s) for s in missing]
            job.instances = held
        with self._cond:
            job.message = "fetching"
        self._changed(job)
        samples: deque[tuple[float, int]] = deque([(time.monotonic(), job.bytes)])
        last = [0.0]

        def on_bytes(n: int) -> None:
            now = time.monotonic()
            with self._cond:
                job.bytes += n
                samples.append((now, job.bytes))
                while len(samples) > 2 and now - samples[0][0] > SPEED_WINDOW_S:
                    samples.popleft()
                span = now - samples[0][0]
                job.speed = (job.bytes - samples[0][1]) / span if span > 0.05 else job.speed
            if now - last[0] >= NOTIFY_S:
                last[0] = now
                self._changed(job)

        for series, sop in plan:
            for data in self._stream(client, job, series, sop, cancel, on_bytes):
                uid = _sop_uid(data)
                if uid and uid in got:
                    continue
                self.cache.put_instance(job.study_uid, data, source=job.source)
                got.add(uid)
                with self._cond:
                    job.instances += 1
                    if job.total and job.instances > job.total:
                        job.total = job.instances
        if not got and not job.instances:
            raise DicomWebError(404, f"the source sent no instance of study {job.study_uid}")
        if job.total and job.instances < job.total:
            raise DicomWebError(0, f"{job.instances} of {job.total} instances arrived")

    @staticmethod
    def _listing(client: DicomWebClient, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study (QIDO-RS, PS3.18 10.6), page after page: a server caps one answer
        (Hilum's ``[web] max_results``, 1000), and a series missing from a cut listing would be missed."""
        rows: list[dict[str, Any]] = []
        for _ in range(1000):
            page = client.search_instances(study_uid, offset=len(rows), limit=1000)
            if not page:
                break
            rows += page
        return rows

    def _stream(
        self,
        client: DicomWebClient,
        job: StationJob,
        series: str | None,
        sop: str | None,
        cancel: threading.Event,
        on_bytes: Callable[[int], None],
    ) -> Iterator[bytes]:
        """WADO-RS of a study, series or instance, read in pieces under the cap; each instance's bytes."""
        path = f"/studies/{_q(job.study_uid)}"
        if series:
            path += f"/series/{_q(series)}"
            if sop:
                path += f"/instances/{_q(sop)}"
        self._gate(job, cancel)
        resp = client.request("GET", path, headers={"Accept": f'{MULTIPART}; type="{DICOM}"; transfer-syntax=*'})
        stop = lambda: cancel.is_set() or self._stopping or self._paused  # noqa: E731

        def pieces() -> Iterator[bytes]:
            while True:
                self._gate(job, cancel)
                data = resp.read1(self.bucket.piece())
                if not data:
                    return
                on_bytes(len(data))
                self.bucket.take(len(data), stop)
                yield data

        ctype, params = parse_content_type(resp.getheader("Content-Type", ""))
        if ctype != MULTIPART:
            body = b"".join(pieces())
            resp.read()
            if body:
                yield body
            return
        reader = multipart.MultipartReader(params.get("boundary", ""))
        chunks: list[bytes] = []
        for data in pieces():
            for kind, value in reader.feed(data):
                if kind == multipart.HEADERS:
                    chunks = []
                elif kind == multipart.DATA:
                    chunks.append(value)  # type: ignore[arg-type]
                elif kind == multipart.END:
                    yield b"".join(chunks)
                    chunks = []
        resp.read()  # lets http.client mark the response done
        reader.finish()


def sources_for(
    config: Any, settings: StationPrefetchSettings, known: Iterable[DicomWebSource] = ()
) -> dict[str, DicomWebSource]:
    """The sources the settings name, taken from ``known`` (the workstation's, with the passwords
    typed in this session) or else from ``hilum.toml``."""
    have = {s.name: s for s in known} or {s.name: s for s in load_sources(config)}
    names = settings.sources or list(have)
    return {n: have[n] for n in names if n in have}
