"""Auto-run of plugins on arrival: ``[[ai.rules]]`` in ``hilum.toml`` and the background service.

```toml
[ai]
threads = 3              # onnxruntime intra-op threads (default: cores - 1)
settle_seconds = 10      # a series has "arrived" when no instance came for this long
isolate = true           # run each job in a child process (a crashing plugin cannot stop the node)

[[ai.rules]]
plugin = "hilum-lung-seg"
modality = "CT"                 # optional; DICOM matching: case-insensitive, * and ? wildcards
body_part = "CHEST"             # optional
series_description = "*"        # optional
```

:class:`AIService` hears the archive's arrivals (``stored`` events; never the AI's own results,
``origin = "ai"``), and for every series a rule matches queues a job in the persistent table
``ai_jobs`` (:mod:`hilum.archive.ai_jobs`), due once the series has been quiet for
``settle_seconds`` — each new instance pushes it back. One worker thread runs due jobs one at a
time (a plugin already uses the cores), stores the results through ``archive.ingest`` and
records them; a failing plugin marks its job failed with the reason and the service goes on.
Jobs a stopped node left running are queued again when it starts: the queue survives restarts.
``hilum serve`` starts the service when rules exist; the workstation may start one on its node
and use :meth:`AIService.submit` for "run on this series" jobs.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hilum.ai.discovery import discover, load
from hilum.ai.host import Plugin, SeriesInput, default_threads, run
from hilum.ai.model import PluginCancelled, PluginError
from hilum.ai.results import store
from hilum.archive import ai_jobs
from hilum.archive.storage import WokenService
from hilum.errors import ConfigError, HilumError

__all__ = ["AIService", "AISettings", "Rule", "load_settings"]

logger = logging.getLogger(__name__)

DEFAULT_SETTLE = 10.0
_RULE_KEYS = ("plugin", "modality", "body_part", "series_description", "name", "enabled")
_AI_KEYS = ("threads", "settle_seconds", "isolate", "rules")


@dataclass(frozen=True)
class Rule:
    """One ``[[ai.rules]]`` entry: run ``plugin`` on series matching every given attribute."""

    plugin: str
    modality: str = ""
    body_part: str = ""
    series_description: str = ""
    name: str = ""
    enabled: bool = True

    def matches(self, series: Mapping[str, Any]) -> bool:
        """Whether a series (an index row: Modality, BodyPartExamined, SeriesDescription) matches."""
        if not self.enabled:
            return False
        for pattern, key in ((self.modality, "Modality"), (self.body_part, "BodyPartExamined"),
                             (self.series_description, "SeriesDescription")):  # fmt: skip
            if pattern and pattern != "*":
                value = str(series.get(key) or "")
                if not fnmatch.fnmatchcase(value.upper(), pattern.upper()):
                    return False
        return True

    @property
    def label(self) -> str:
        return self.name or f"{self.plugin} on {self.modality or '*'}/{self.body_part or '*'}"


@dataclass(frozen=True)
class AISettings:
    threads: int = field(default_factory=default_threads)
    settle_seconds: float = DEFAULT_SETTLE
    isolate: bool = True
    rules: tuple[Rule, ...] = ()


def load_settings(cfg: Any) -> AISettings:
    """``[ai]`` of a :class:`hilum.config.Config` (its ``extra``), validated: a wrong key or value
    is a :class:`ConfigError` naming it."""
    extra = getattr(cfg, "extra", None) or {}
    section = extra.get("ai", {})
    if not isinstance(section, Mapping):
        raise ConfigError("[ai] must be a table")
    for k in section:
        if k not in _AI_KEYS:
            raise ConfigError(f"[ai] {k}: unknown key (allowed: {', '.join(_AI_KEYS)})")
    threads = section.get("threads", default_threads())
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"[ai] threads: must be a positive integer, got {threads!r}")
    settle = section.get("settle_seconds", DEFAULT_SETTLE)
    if not isinstance(settle, (int, float)) or isinstance(settle, bool) or settle < 0:
        raise ConfigError(f"[ai] settle_seconds: must be a number ≥ 0, got {settle!r}")
    isolate = section.get("isolate", True)
    if not isinstance(isolate, bool):
        raise ConfigError(f"[ai] isolate: must be true or false, got {isolate!r}")
    raw = section.get("rules", [])
    if not isinstance(raw, list):
        raise ConfigError("[ai] rules: must be [[ai.rules]] tables")
    rules = []
    for i, r in enumerate(raw):
        where = f"[[ai.rules]] #{i + 1}"
        if not isinstance(r, Mapping):
            raise ConfigError(f"{where}: must be a table")
        for k in r:
            if k not in _RULE_KEYS:
                raise ConfigError(f"{where} {k}: unknown key (allowed: {', '.join(_RULE_KEYS)})")
        if not isinstance(r.get("plugin"), str) or not r["plugin"].strip():
            raise ConfigError(f"{where} plugin: missing (the name of an installed plugin)")
        for k in ("modality", "body_part", "series_description", "name"):
            if not isinstance(r.get(k, ""), str):
                raise ConfigError(f"{where} {k}: must be a string")
        if not isinstance(r.get("enabled", True), bool):
            raise ConfigError(f"{where} enabled: must be true or false")
        rules.append(Rule(plugin=r["plugin"].strip(), modality=r.get("modality", ""), body_part=r.get("body_part", ""),
                          series_description=r.get("series_description", ""), name=r.get("name", ""),
                          enabled=r.get("enabled", True)))  # fmt: skip
    return AISettings(threads=int(threads), settle_seconds=float(settle), isolate=isolate, rules=tuple(rules))


class AIService(WokenService):
    """Queues plugin runs for arriving series by the rules and runs them one at a time (see module)."""

    name = "ai"
    thread_name = "hilum-ai-jobs"
    POLL = 1.0  # seconds between looks at the queue when nothing wakes the service

    def __init__(self, archive: Any, settings: AISettings, *, plugin_path: Sequence[str] | None = None):
        super().__init__(archive)
        self.settings = settings
        self.plugin_path = list(plugin_path) if plugin_path is not None else None
        self._arrived: set[str] = set()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._plugins: dict[str, Plugin] = {}
        self._versions: dict[str, str] = {}
        self._versions_at = 0.0
        self.current: ai_jobs.AIJob | None = None
        self.done = 0
        self.failed = 0

    @classmethod
    def from_config(cls, archive: Any, cfg: Any) -> AIService:
        return cls(archive, load_settings(cfg))

    def enabled(self) -> bool:
        return True  # queued jobs (submitted, or left by a previous run) are run even without rules

    def start(self) -> None:
        if self._thread is None:
            n = ai_jobs.requeue_interrupted(self.archive)
            if n:
                logger.info("ai: %d interrupted job(s) queued again", n)
            self._cancel.clear()
        super().start()

    def stop(self) -> None:
        self._stop.set()  # first: a job cancelled now goes back to the queue rather than to 'cancelled'
        self._cancel.set()  # a running job stops at its next batch (or inside it)
        super().stop()

    def submit(self, plugin: str, series_uid: str, study_uid: str = "", *, delay: float = 0.0) -> int:
        """Queue *plugin* on *series_uid* now (or after *delay* seconds); returns the job's key."""
        pk, _ = ai_jobs.enqueue(self.archive, plugin, self._version(plugin), series_uid, study_uid, settle=delay,
                                rule="submitted")  # fmt: skip
        self.wake()
        return pk

    # ------------------------------------------------------------------ arrivals

    def _on_event(self, event: Any) -> None:
        if getattr(event, "kind", "") not in ("stored", "replaced") or getattr(event, "origin", "") == "ai":
            return
        series = getattr(event, "series_instance_uid", None)
        if series and self.settings.rules:
            with self._lock:
                self._arrived.add(series)
            self._wake.set()

    def _version(self, plugin: str) -> str:
        now = time.monotonic()
        if now - self._versions_at > 30 or plugin not in self._versions:
            self._versions = {i.name: i.version for i in discover(self.plugin_path)}
            self._versions_at = now
        return self._versions.get(plugin, "")

    def _queue_arrivals(self) -> None:
        with self._lock:
            arrived, self._arrived = self._arrived, set()
        for series_uid in arrived:
            rows = self.archive.query("SERIES", {"SeriesInstanceUID": series_uid})
            if not rows:
                continue
            row = rows[0]
            for rule in self.settings.rules:
                if rule.matches(row):
                    pk, created = ai_jobs.enqueue(self.archive, rule.plugin, self._version(rule.plugin), series_uid,
                                                  str(row.get("StudyInstanceUID", "")),
                                                  settle=self.settings.settle_seconds, rule=rule.label)  # fmt: skip
                    if created:
                        logger.info("ai: job %d queued: %s on series %s (rule %s)", pk, rule.plugin, series_uid,
                                    rule.label)  # fmt: skip

    # ------------------------------------------------------------------ jobs

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._queue_arrivals()
                job = ai_jobs.claim_due(self.archive)
            except Exception:  # noqa: BLE001 - a database hiccup must not end the service
                logger.exception("ai: queue pass failed")
                job = None
            if job is not None:
                self._do(job)
                self.passes += 1
                continue
            self._wake.wait(self.POLL)
            self._wake.clear()

    def _plugin(self, name: str) -> Plugin:
        p = self._plugins.get(name)
        if p is None:
            p = load(name, self.plugin_path)
            self._plugins[name] = p
        return p

    def _do(self, job: ai_jobs.AIJob) -> None:
        self.current = job
        t0 = time.perf_counter()
        try:
            plugin = self._plugin(job.plugin)
            series = SeriesInput.from_archive(self.archive, job.series_uid)
            result = run(plugin, series, cancel=self._cancel, threads=self.settings.threads,
                         isolate=self.settings.isolate)  # fmt: skip
            stored = store(self.archive, result)
            uids = list(dict.fromkeys(r.series_instance_uid for r in stored if r.series_instance_uid))
            ai_jobs.finish(self.archive, job.pk, "done", results=uids)
            self.done += 1
            logger.info("ai: job %d done in %.1f s: %s on %s -> %d object(s)", job.pk, time.perf_counter() - t0,
                        job.plugin, job.series_uid, len(stored))  # fmt: skip
        except PluginCancelled:
            state = "queued" if self._stop.is_set() else "cancelled"
            ai_jobs.finish(self.archive, job.pk, state, error="cancelled")
            logger.info("ai: job %d %s", job.pk, "interrupted, queued again" if state == "queued" else "cancelled")
        except (PluginError, HilumError) as exc:
            self.failed += 1
            ai_jobs.finish(self.archive, job.pk, "failed", error=str(exc))
            logger.warning("ai: job %d failed: %s", job.pk, exc)
        except Exception as exc:  # noqa: BLE001 - the service outlives any one job
            self.failed += 1
            logger.exception("ai: job %d failed", job.pk)
            ai_jobs.finish(self.archive, job.pk, "failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.current = None
