"""A persistent, bounded cache of studies read from a remote DICOMweb node.

``<data>/remote-cache/`` holds the cached instances and their index
(:class:`hilum.archive.remote_cache.CacheIndex`: sizes, last open, complete).
Settings in ``hilum.toml``::

    [remote_cache]
    limit_mb = 2048      # LRU by last open; whole studies go; a study open in a viewer is pinned
    encrypt = false      # AES-GCM at rest (needs the ``cryptography`` package)
    key_env = "HILUM_CACHE_KEY"   # base64 of 32 bytes; else <data>/remote-cache/cache.key (0600)

Two storage modes behind one API:

* plain: the cache is an :class:`~hilum.archive.Archive` of its own
  (``remote-cache/archive``); :meth:`RemoteCache.open` returns it;
* encrypted: each instance is sealed (AES-GCM) in ``remote-cache/sealed/``;
  :meth:`RemoteCache.open` decrypts the study into a session archive in a
  private folder (``remote-cache/sessions/<pid>-…``, 0700) that
  :meth:`RemoteCache.release` and :meth:`RemoteCache.close` clear: plaintext
  exists only while a viewer has the study open (what a crashed process left
  is deleted by the next cache opened on the folder).

The API the prefetch (``hilum.priors.station``) and progressive viewer
(``hilum.dicomweb.progressive``) use: ``has``, ``open`` (fetch if absent;
pins), ``pin`` (pins, fetches nothing: a progressive viewer), ``release``,
``put_instance`` (+ ``mark_complete``), ``evict``, ``studies``, ``keep``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from hilum.archive import Archive, IngestResult
from hilum.archive.remote_cache import CacheIndex
from hilum.errors import ConfigError, HilumError
from hilum.processes import pid_alive

log = logging.getLogger(__name__)

CACHE_DIR = "remote-cache"
KEY_FILE = "cache.key"
MAGIC = b"HLC1"


_SHARED: dict[Path, RemoteCache] = {}
_SHARED_LOCK = threading.Lock()


class CacheError(HilumError):
    pass


@dataclass
class RemoteCacheSettings:
    """``[remote_cache]`` in ``hilum.toml``."""

    limit_mb: int = 2048
    encrypt: bool = False
    key_env: str = "HILUM_CACHE_KEY"

    @classmethod
    def from_config(cls, cfg: Any) -> RemoteCacheSettings:
        section = dict((getattr(cfg, "extra", None) or {}).get("remote_cache", {}) or {})
        s = cls()
        for key, value in section.items():
            if key == "limit_mb":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ConfigError(f"[remote_cache] limit_mb must be a number >= 0, not {value!r}")
                s.limit_mb = value  # type: ignore[assignment]
            elif key == "encrypt":
                if not isinstance(value, bool):
                    raise ConfigError(f"[remote_cache] encrypt must be true or false, not {value!r}")
                s.encrypt = value
            elif key == "key_env":
                if not isinstance(value, str) or not value:
                    raise ConfigError("[remote_cache] key_env must be the name of an environment variable")
                s.key_env = value
            else:
                raise ConfigError(f"unknown [remote_cache] setting {key!r}")
        return s


def _study_of(data: bytes) -> tuple[str, str]:
    ds = pydicom.dcmread(
        io.BytesIO(data), stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SOPInstanceUID"]
    )
    return str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))




def _hash(uid: str) -> str:
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


class _Sealer:
    """AES-GCM with a 256-bit key: ``MAGIC | nonce(12) | ciphertext+tag``, the SOP UID as associated data."""

    def __init__(self, key: bytes):
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise CacheError("[remote_cache] encrypt = true needs the 'cryptography' package") from exc
        self._aead = AESGCM(key)

    def seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if blob[:4] != MAGIC:
            raise CacheError("not a sealed cache file")
        return self._aead.decrypt(blob[4:16], blob[16:], aad)


def load_key(root: Path, env: str = "HILUM_CACHE_KEY") -> bytes:
    """The cache key: base64 in ``$env``, else ``root/cache.key`` (created 0600 on first use)."""
    value = os.environ.get(env)
    if value:
        key = base64.b64decode(value)
        if len(key) != 32:
            raise CacheError(f"${env} must be base64 of 32 bytes")
        return key
    path = root / KEY_FILE
    if path.exists():
        if os.name == "posix" and path.stat().st_mode & 0o077:
            raise CacheError(f"{path} is readable by others: chmod 600 it")
        key = base64.b64decode(path.read_bytes().strip())
        if len(key) != 32:
            raise CacheError(f"{path}: not a 32-byte key")
        return key
    root.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64encode(key))
    return key


class CacheSink:
    """``ingest`` into a :class:`RemoteCache` for one study, checked as the archive's ingest checks
    what a C-STORE request announced; refusals are answered, not raised."""

    def __init__(self, cache: RemoteCache, study: str, source: str = ""):
        self.cache = cache
        self.study = study
        self.source = source
        self.count = 0
        self.progress: Callable[[int, IngestResult | None], None] | None = None

    def ingest(
        self,
        source: Any,
        *,
        origin: str = "",
        source_aet: str = "",
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
        **_ignored: Any,
    ) -> IngestResult:
        data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source).read_bytes()
        try:
            ds = pydicom.dcmread(
                io.BytesIO(data),
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"],
            )
        except Exception as exc:  # noqa: BLE001 - whatever pydicom raises on garbage
            return IngestResult("rejected", reason=f"not DICOM: {exc}", code="not-dicom")
        sop, study = str(ds.get("SOPInstanceUID", "")), str(ds.get("StudyInstanceUID", ""))
        if expected_sop_instance and sop != expected_sop_instance:
            return IngestResult(
                "rejected", sop, study, reason="SOP Instance UID differs from the request", code="uid-mismatch"
            )
        if expected_sop_class and str(ds.get("SOPClassUID", "")) != expected_sop_class:
            return IngestResult(
                "rejected", sop, study, reason="SOP Class UID differs from the request", code="sop-class-mismatch"
            )
        if study != self.study:
            return IngestResult(
                "rejected", sop, study, reason=f"not an instance of study {self.study}", code="uid-mismatch"
            )
        try:
            res = self.cache.put_instance(self.study, data, source=self.source)
        except OSError as exc:
            return IngestResult("rejected", sop, study, reason=str(exc), code="storage-full")
        self.count += 1
        if self.progress is not None:
            self.progress(self.count, res)
        return res or IngestResult("duplicate", sop, study, size=len(data))


class RemoteCache:
    """Studies from remote nodes, kept between sessions up to ``limit_mb`` (LRU by last open).

    Thread-safe: the GUI, prefetch and a progressive loader may share one instance.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        limit_mb: float = 2048,
        encrypt: bool = False,
        *,
        key: bytes | None = None,
        key_env: str = "HILUM_CACHE_KEY",
    ):
        self.root = Path(data_dir) / CACHE_DIR
        self.root.mkdir(parents=True, exist_ok=True)
        self.limit_bytes = int(limit_mb * 1024 * 1024)
        self.encrypt = encrypt
        self.index = CacheIndex(self.root / "cache.sqlite")
        self._lock = threading.RLock()
        self._refs = 1
        self._shared_key: Path | None = None
        self._pins: dict[str, int] = {}
        self._writing: dict[str, int] = {}
        self._session_dir: Path | None = None
        self._session: Archive | None = None
        self._sealer: _Sealer | None = None
        self._plain: Archive | None = None
        if encrypt:
            self._sealer = _Sealer(key if key is not None else load_key(self.root, key_env))
            (self.root / "sealed").mkdir(exist_ok=True)
            self._sweep_sessions()
        else:
            self._plain = Archive(self.root / "archive")
        self._drop_other_mode()
        self.evict()  # the limit may have been lowered since the last session

    def _drop_other_mode(self) -> None:
        """Forget what the other mode cached (``encrypt`` was switched): switching encryption on
        deletes the plaintext cache; switching it off drops the sealed files (read with no key)."""
        stale = [
            r["study_uid"]
            for r in self.index.studies()
            if any(bool(i["file"]) != self.encrypt for i in self.index.instances(r["study_uid"]))
        ]
        for uid in stale:
            rows = self.index.remove(uid)
            for i in rows:
                if i["file"]:
                    (self.root / "sealed" / i["file"]).unlink(missing_ok=True)
        if self.encrypt and (self.root / "archive").exists():
            shutil.rmtree(self.root / "archive", ignore_errors=True)
            log.info("remote cache: encryption on; the plaintext cache was deleted")
        if not self.encrypt and (self.root / "sealed").exists():
            shutil.rmtree(self.root / "sealed", ignore_errors=True)

    @classmethod
    def from_config(cls, cfg: Any) -> RemoteCache:
        s = RemoteCacheSettings.from_config(cfg)
        return cls(cfg.data_dir, s.limit_mb, s.encrypt, key_env=s.key_env)

    @classmethod
    def shared(cls, cfg: Any) -> RemoteCache:
        """This process's cache of ``cfg.data_dir`` (made from ``[remote_cache]`` on first use): the
        study browser, the station prefetch and a progressive viewer must share one instance, or one's
        eviction would not see the other's pins.  Each caller calls :meth:`close` once; the last closes."""
        key = Path(cfg.data_dir).resolve()
        with _SHARED_LOCK:
            cache = _SHARED.get(key)
            if cache is not None:
                cache._refs += 1
                return cache
            cache = cls.from_config(cfg)
            cache._shared_key = key
            _SHARED[key] = cache
            return cache

    # ------------------------------------------------------------------ views

    @property
    def archive(self) -> Archive:
        """The archive a viewer reads cached studies from (plain: the cache; encrypted: the session)."""
        if self._plain is not None:
            return self._plain
        with self._lock:
            if self._session is None:
                sessions = self.root / "sessions"
                sessions.mkdir(mode=0o700, exist_ok=True)
                self._session_dir = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=sessions))
                os.chmod(self._session_dir, 0o700)
                self._session = Archive(self._session_dir)
            return self._session

    def _sweep_sessions(self) -> None:
        """Delete the plaintext session folders of processes that are gone (a crash left them)."""
        sessions = self.root / "sessions"
        if not sessions.is_dir():
            return
        for d in sessions.iterdir():
            try:
                pid = int(d.name.split("-", 1)[0])
            except ValueError:
                continue
            if pid == os.getpid() or pid_alive(pid):
                continue
            shutil.rmtree(d, ignore_errors=True)
            log.info("remote cache: removed the plaintext left by process %d", pid)

    def has(self, study: str, series: str | None = None) -> bool:
        """True when the whole study is cached (opening it asks nothing of the remote).

        ``series`` is accepted for the callers of the old ``StudyCache.has``: the cache holds whole
        studies, so a series is there when its study is."""
        row = self.index.study(study)
        return bool(row and row["complete"])

    def studies(self) -> list[dict[str, Any]]:
        """Cached studies, least recently opened first: ``study_uid``, ``source``, ``size_bytes``,
        ``instances``, ``complete``, ``fetched_at``, ``last_open``, ``pinned``."""
        with self._lock:
            pins = dict(self._pins)
        return [{**r, "pinned": pins.get(r["study_uid"], 0) > 0} for r in self.index.studies()]

    def total_bytes(self) -> int:
        return self.index.total_bytes()

    def pinned(self, study: str) -> bool:
        with self._lock:
            return self._pins.get(study, 0) > 0

    # ------------------------------------------------------------------ writing

    def put_instance(self, study: str, data: bytes, *, source: str = "") -> IngestResult | None:
        """Add one instance (Part 10 bytes) of ``study``; a duplicate SOP instance is ignored (None).

        Returns the viewing archive's ingest result when the instance is visible to a viewer now
        (plain mode always; encrypted mode while the study is open).  May evict other studies.
        """
        got_study, sop = _study_of(data)
        if got_study and got_study != study:
            raise CacheError(f"instance {sop} belongs to study {got_study}, not {study}")
        if not sop:
            raise CacheError("instance without a SOP Instance UID")
        if self.index.has_instance(sop):
            return None
        with self._lock:
            self._writing[study] = self._writing.get(study, 0) + 1
        try:
            res: IngestResult | None = None
            fname = ""
            if self._sealer is not None:
                d = self.root / "sealed" / _hash(study)
                d.mkdir(parents=True, exist_ok=True)
                fname = f"{_hash(study)}/{_hash(sop)}.bin"
                tmp = d / f".{_hash(sop)}.{secrets.token_hex(4)}.tmp"  # two writers of one instance do not collide
                tmp.write_bytes(self._sealer.seal(data, sop.encode()))
                os.replace(tmp, self.root / "sealed" / fname)
                if self.pinned(study):
                    res = self.archive.ingest(data, origin="dicomweb")
            else:
                assert self._plain is not None
                res = self._plain.ingest(data, origin="dicomweb")
            self.index.add_instance(study, sop, len(data), source=source, file=fname)
            if self.total_bytes() > self.limit_bytes:
                self.evict()
            return res
        finally:
            with self._lock:
                self._writing[study] -= 1
                if not self._writing[study]:
                    del self._writing[study]

    def mark_complete(self, study: str, complete: bool = True) -> None:
        """Note that every instance of ``study`` is in (``has`` then answers True)."""
        self.index.set_complete(study, complete)

    # ------------------------------------------------------------------ open / release

    def open(
        self,
        client: Any,
        study: str,
        *,
        progress: Callable[[int, IngestResult | None], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Archive:
        """The study ready to view: fetched from ``client`` (WADO-RS) unless cached, pinned until
        :meth:`release`.  Returns the archive to read it from.  ``progress(n, result)`` per instance."""
        archive = self.pin(study, progress=progress)
        try:
            if not self.has(study):
                self._fetch(client, study, progress, cancel)
            self.evict()
            return archive
        except BaseException:
            self.release(study)
            raise

    def pin(self, study: str, *, progress: Callable[[int, IngestResult | None], None] | None = None) -> Archive:
        """Pin ``study`` without fetching anything (a progressive loader that writes it with
        :meth:`put_instance` while a viewer shows it): never evicted until :meth:`release`; in
        encrypted mode what is cached of it is decrypted into the viewing archive, and what
        :meth:`put_instance` adds meanwhile goes there too.  Returns the viewing archive."""
        with self._lock:
            self._pins[study] = self._pins.get(study, 0) + 1
        try:
            if self._sealer is not None:
                self._unseal_into_session(study, progress)
            self.index.touch(study)
            return self.archive
        except BaseException:
            self.release(study)
            raise

    def sink(self, study: str, source: str = "") -> CacheSink:
        """An object with the archive's ``ingest`` call that writes into this cache for ``study`` (what
        a DIMSE C-GET store callback, :func:`hilum.dimse.scu.ingest_store`, is given)."""
        return CacheSink(self, study, source)

    def _fetch(
        self,
        client: Any,
        study: str,
        progress: Callable[[int, IngestResult | None], None] | None,
        cancel: threading.Event | None,
    ) -> None:
        n = 0
        source = getattr(getattr(client, "source", None), "name", "") or getattr(client, "name", "") or ""
        if hasattr(client, "fetch_into"):
            # Push-style sources (DIMSE C-GET): ``client.fetch_into(sink, study, progress=, cancel=)``.
            sink = self.sink(study, source)
            sink.progress = progress
            client.fetch_into(sink, study, cancel=cancel)
            if cancel is not None and cancel.is_set():
                return
            if sink.count == 0:
                raise CacheError(f"the peer sent no instances of study {study}")
            self.mark_complete(study)
            return
        for data in client.iter_instances(study):
            res = self.put_instance(study, data, source=source)
            n += 1
            if progress is not None:
                progress(n, res)
            if cancel is not None and cancel.is_set():
                client.close()  # drop the rest of the response; the study stays incomplete
                return
        if n == 0:
            raise CacheError(f"the server sent no instances of study {study}")
        self.mark_complete(study)

    def _unseal_into_session(self, study: str, progress: Callable[[int, IngestResult | None], None] | None) -> None:
        assert self._sealer is not None
        archive = self.archive
        if archive.query("STUDY", {"StudyInstanceUID": study}, limit=1):
            return
        for n, row in enumerate(self.index.instances(study), 1):
            res = archive.ingest(self._read_sealed(row), origin="dicomweb")
            if progress is not None:
                progress(n, res)

    def _read_sealed(self, row: dict[str, Any]) -> bytes:
        assert self._sealer is not None
        return self._sealer.open((self.root / "sealed" / row["file"]).read_bytes(), row["sop_uid"].encode())

    def release(self, study: str) -> None:
        """The viewer closed ``study``: unpin it (encrypted mode: its plaintext goes)."""
        with self._lock:
            n = self._pins.get(study, 0) - 1
            if n > 0:
                self._pins[study] = n
                return
            self._pins.pop(study, None)
            session = self._session
        if session is not None:
            try:
                session.delete("STUDY", study)
            except HilumError:
                pass
        self.evict()

    def read(self, study: str) -> list[bytes]:
        """The cached instances of ``study`` as Part 10 bytes (decrypted in memory)."""
        if self._sealer is not None:
            return [self._read_sealed(r) for r in self.index.instances(study)]
        assert self._plain is not None
        return [Path(r["path"]).read_bytes() for r in self._plain.instances(study_uid=study)]

    # ------------------------------------------------------------------ limit

    def evict(self, limit_bytes: int | None = None) -> list[str]:
        """Drop least recently opened whole studies until the cache fits; pinned studies and studies
        being written stay.  Returns the evicted study UIDs."""
        limit = self.limit_bytes if limit_bytes is None else limit_bytes
        gone: list[str] = []
        total = self.total_bytes()
        if total <= limit:
            return gone
        for row in self.index.studies():
            if total <= limit:
                break
            uid = row["study_uid"]
            with self._lock:
                if self._pins.get(uid) or self._writing.get(uid):
                    continue
            self.remove(uid)
            total -= int(row["size_bytes"])
            gone.append(uid)
        if gone:
            log.info("remote cache: evicted %d studies to fit %d MB", len(gone), limit // (1024 * 1024))
        return gone

    def remove(self, study: str) -> None:
        """Delete ``study`` from the cache (whatever its pins)."""
        rows = self.index.remove(study)
        if self._sealer is not None:
            for r in rows:
                (self.root / "sealed" / r["file"]).unlink(missing_ok=True)
            with self._lock:
                try:
                    (self.root / "sealed" / _hash(study)).rmdir()
                except OSError:
                    pass
        else:
            assert self._plain is not None
            try:
                self._plain.delete("STUDY", study)
            except HilumError:
                pass

    # ------------------------------------------------------------------ keep

    def keep(
        self, archive: Archive, study: str, *, progress: Callable[[int, IngestResult], None] | None = None
    ) -> list[IngestResult]:
        """Put the cached ``study`` into ``archive`` (the one ingest call, ``origin="dicomweb"``) and
        take it out of the cache."""
        results = []
        for i, data in enumerate(self.read(study), 1):
            res = archive.ingest(data, origin="dicomweb")
            results.append(res)
            if progress is not None:
                progress(i, res)
        if not self.pinned(study):
            self.remove(study)
        return results

    def close(self) -> None:
        with _SHARED_LOCK:
            self._refs -= 1
            if self._refs > 0:
                return
            if self._shared_key is not None and _SHARED.get(self._shared_key) is self:
                del _SHARED[self._shared_key]
        with self._lock:
            session, sdir = self._session, self._session_dir
            self._session = self._session_dir = None
        if session is not None:
            session.close()
        if sdir is not None:
            shutil.rmtree(sdir, ignore_errors=True)
        if self._plain is not None:
            self._plain.close()
        self.index.close()

    def __enter__(self) -> RemoteCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
