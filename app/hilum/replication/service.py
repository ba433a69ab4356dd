"""The forwarding service of a node: routes arriving instances into the queue and sends it, in the background.

One router thread scans for new instances (:func:`hilum.archive.forward.route`)
when woken by the archive's events (a burst of arrivals is one scan: the
instances above the last key it saw), and fully (from the persisted marks)
at start and every :data:`SCAN_EVERY` seconds; it never runs in the ingest
thread and adds nothing to an ingest's transaction.  One sender thread per
destination claims due rows (``[forwarding] batch`` at a time) and sends them
(:mod:`hilum.replication.send`), so a destination that is down waits out its
backoff without holding up the others, and never blocks ingest.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from typing import Any

from hilum.archive import forward
from hilum.archive.archive import Archive
from hilum.archive.forward import ForwardRule, ForwardRules
from hilum.archive.storage import utcnow
from hilum.config import Config
from hilum.dicomweb.client import DicomWebSource, load_sources
from hilum.replication.send import Outcome, send_dimse, send_stow

log = logging.getLogger("hilum.storage")

SCAN_EVERY = 60.0
"""Seconds between two routing scans when no event woke the router (another node's arrivals, a lost event)."""

SETTLE = float(os.environ.get("HILUM_FORWARD_SETTLE", "1.0"))
"""Seconds the router waits after an arrival so that one scan takes a burst (fewer, larger scans while a
modality sends: each is a read and one short write transaction beside the ingest)."""

IDLE_MAX = 30.0
"""The longest a sender sleeps without a wake (rows another node queued, due rows of a retry)."""


def rules_of(archive: Archive, config: Config) -> ForwardRules:
    """The forwarding rules the archive was configured with (``archive.policies``), else those of ``hilum.toml``."""
    policies = getattr(archive, "policies", None)
    if policies is not None and policies.get("forwarding") is not None:
        rules: ForwardRules = policies.get("forwarding")
        return rules
    from hilum.archive.policy import load_policies

    loaded = load_policies(config).get("forwarding")
    return loaded if loaded is not None else ForwardRules()


class ForwardService:
    """Forwarding and replication while the node runs (a node service: ``start()``, ``stop()``, ``wake()``)."""

    name = "forwarding"

    def __init__(self, archive: Archive, config: Config, rules: ForwardRules | None = None):
        self.archive = archive
        self.config = config
        self.rules = rules if rules is not None else rules_of(archive, config)
        self._stop = threading.Event()
        self._route = threading.Event()
        self._senders: list[_Sender] = []
        self._threads: list[threading.Thread] = []
        self._unsubscribe: Any = None
        self.scans = 0
        # a destination that is down: its senders hold off (backoff) instead of trying at each arrival
        self._holds: dict[str, tuple[float, int]] = {}  # destination -> (monotonic until, failures in a row)
        self._holds_lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self.rules.rules)

    def start(self) -> None:
        if self._threads or not self.active:
            return
        self._stop.clear()
        forward.release_dead_claims(self.archive)
        web = {s.name: s for s in load_sources(self.config)}
        for dest, rule in self.rules.destinations.items():
            self._senders += [_Sender(self, rule, web.get(dest)) for _ in range(self.rules.associations)]
        self._unsubscribe = self.archive.subscribe(self._on_event)
        self._threads.append(threading.Thread(target=self._router, name="forward-router", daemon=True))
        for s in self._senders:
            self._threads.append(threading.Thread(target=s.run, name=f"forward-{s.rule.destination}", daemon=True))
        for t in self._threads:
            t.start()
        self._route.set()
        log.info("forwarding to %s", ", ".join(self.rules.destinations))

    def stop(self) -> None:
        self._stop.set()
        self._route.set()
        for s in self._senders:
            s.wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for t in self._threads:
            t.join(timeout=60)
        self._threads = []
        self._senders = []

    def wake(self) -> None:
        """Scan and send now (new instances, a retry asked by the user): destinations held off are tried too."""
        with self._holds_lock:
            self._holds.clear()
        self._route.set()
        for s in self._senders:
            s.wake.set()

    def held(self, destination: str) -> float:
        """Seconds ``destination`` is still held off (0: not)."""
        with self._holds_lock:
            until = self._holds.get(destination, (0.0, 0))[0]
        return max(0.0, until - time.monotonic())

    def _note(self, destination: str, reached: bool) -> None:
        with self._holds_lock:
            if reached:
                self._holds.pop(destination, None)
                return
            failures = self._holds.get(destination, (0.0, 0))[1] + 1
            self._holds[destination] = (time.monotonic() + self.rules.backoff(failures), failures)

    def _on_event(self, event: Any) -> None:
        if getattr(event, "kind", "") in ("stored", "replaced"):
            self._route.set()

    def _router(self) -> None:
        last_pk: int | None = None  # the highest instance key scanned: a quick scan after an arrival starts there
        full_at = 0.0
        while not self._stop.is_set():
            self._route.wait(SCAN_EVERY)
            if self._stop.is_set():
                break
            self._stop.wait(SETTLE)
            self._route.clear()
            try:
                full = last_pk is None or time.monotonic() - full_at >= SCAN_EVERY
                report, top = forward.scan(self.archive, self.rules, after_pk=None if full else last_pk)
                last_pk = top if last_pk is None else max(last_pk, top)
                if full:
                    full_at = time.monotonic()
                self.scans += 1
            except Exception:  # noqa: BLE001 - a background thread logs and goes on
                log.exception("forwarding: routing scan failed")
                self._stop.wait(5)
                continue
            if report.instances:
                for s in self._senders:
                    s.wake.set()


class _Sender:
    """Sends one destination's due rows, batch after batch, then sleeps until woken or the next row is due."""

    def __init__(self, service: ForwardService, rule: ForwardRule, web: DicomWebSource | None):
        self.service = service
        self.rule = rule
        self.web = web
        self.wake = threading.Event()
        self.batches = 0
        self.last: Outcome | None = None

    def run(self) -> None:
        svc = self.service
        while not svc._stop.is_set():
            self.wake.clear()
            try:
                worked = self.send_due()
            except Exception:  # noqa: BLE001
                log.exception("forwarding to %s failed", self.rule.destination)
                worked = False
            if worked:
                continue
            self.wake.wait(self._sleep())

    def _sleep(self) -> float:
        held = self.service.held(self.rule.destination)
        if held:
            return held + 0.05
        try:
            due = forward.next_due(self.service.archive)
        except Exception:  # noqa: BLE001
            return 5.0
        if due is None:
            return IDLE_MAX
        return max(0.2, min(IDLE_MAX, (due - utcnow()).total_seconds() + 0.05))

    def send_due(self, now: datetime | None = None) -> bool:
        """Send one batch of due rows; False when none was due."""
        svc = self.service
        if svc.held(self.rule.destination):
            return False
        items = forward.claim(svc.archive, self.rule.destination, svc.rules.batch, now=now)
        if not items:
            return False
        if svc._stop.is_set():
            forward.release(svc.archive, items)
            return False
        start = time.perf_counter()
        if self.rule.kind == "dimse":
            peer = svc.config.peers.get(self.rule.destination)
            if peer is None:
                forward.mark_retry(svc.archive, svc.rules, items, f"no peer {self.rule.destination!r} in hilum.toml")
                return False
            out = send_dimse(svc.archive, svc.config, peer, svc.rules, items, mode=self.rule.commitment)
        else:
            if self.web is None:
                forward.mark_retry(
                    svc.archive, svc.rules, items, f"no DICOMweb source {self.rule.destination!r} in hilum.toml"
                )
                return False
            out = send_stow(svc.archive, self.web, svc.rules, items)
        self.batches += 1
        self.last = out
        svc._note(self.rule.destination, reached=out.sent + out.committed + out.failed > 0 or not out.retry)
        log.debug(
            "forwarding to %s: %d sent, %d committed, %d to retry, %d failed in %.2f s",
            self.rule.destination,
            out.sent,
            out.committed,
            out.retry,
            out.failed,
            time.perf_counter() - start,
        )
        # a batch that only met errors: wait for the backoff, not in a tight loop
        return out.sent + out.committed + out.failed > 0


def drain(
    archive: Archive, config: Config, rules: ForwardRules, *, destination: str | None = None, timeout: float = 300.0
) -> dict[str, Outcome]:
    """Route and send every due row now (``hilum forward send``, tests, the bench): ``[forwarding]
    associations`` threads per destination, until nothing is due; returns the totals per destination."""
    svc = ForwardService(archive, config, rules)
    forward.release_dead_claims(archive)
    forward.route(archive, rules)
    web = {s.name: s for s in load_sources(config)}
    totals: dict[str, Outcome] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + timeout

    def work(sender: _Sender, total: Outcome) -> None:
        while time.monotonic() < deadline:
            sender.last = None
            worked = sender.send_due()
            o = sender.last
            if o is not None:
                with lock:
                    total.sent += o.sent
                    total.committed += o.committed
                    total.retry += o.retry
                    total.failed += o.failed
                    total.bytes += o.bytes
                    total.errors += o.errors
            if not worked:
                break

    for dest, rule in rules.destinations.items():
        if destination and dest != destination:
            continue
        total = totals.setdefault(dest, Outcome())
        threads = [
            threading.Thread(target=work, args=(_Sender(svc, rule, web.get(dest)), total), daemon=True)
            for _ in range(rules.associations)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return totals
