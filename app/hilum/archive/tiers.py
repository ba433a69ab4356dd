"""Storage tiers: copies of the online blobs on S3-compatible object storage or a second file system.

``[tiers.NAME]`` in ``hilum.toml`` names a tier (``type = "s3"`` or
``"filesystem"``, a NAS mount); its copies are ``blob_copies`` rows at
location ``tier:NAME``.  ``[[tiering]]`` rules move studies there by age and
last access (:func:`run_once`): every instance is written to the tier, read
back and its checksum compared, the copy recorded, and only then is the
online file dropped (``instances.online = false``).  A study on a tier is
brought back transparently when it is opened, retrieved or its pixels are
asked for (:meth:`Tiers.bring_online`, called by the archive's read paths):
the copy is fetched, its checksum checked, written to a work file, fsynced
and renamed into the online store, where it stays (a cache) until a rule
moves or purges it again.

Write-once tiers (``write_once = true``) never overwrite an object and never
delete one before its ``retain_until`` (stored + ``retention_days``; with 0
days, never): :class:`WriteOnceError`.  Hilum enforces it itself (S3
Object Lock, where the server offers it, is the bucket's business), so it
holds on any S3 server and on a NAS.

Write-through tiers (``write_through = true``) get a copy of every instance
soon after it arrives (:class:`TierService`, on every node, for the files
that node holds): a backup tier, and the shared store of a scale-out, where
several ``hilum serve`` nodes share one PostgreSQL index and each serves what
the others received by fetching it from the tier (README "Scale-out").

Object keys are the online blob key with the first 16 hex digits of the
content's checksum before ``.dcm`` (``ab/cd/<sha1>.<xxh>.dcm``), under the
tier's ``prefix``: another version of an instance (a re-sent, changed
instance) never overwrites the copy of the first, which matters on a
write-once tier.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import xxhash
from sqlalchemy import and_, exists, select
from sqlalchemy.engine import Connection

from hilum.archive import storage
from hilum.archive.blobs import CHECKSUM_ALGORITHM, file_checksum, fsync_dir
from hilum.archive.index import chunks
from hilum.archive.schema import blob_copies, instances, policy_log, series, studies
from hilum.errors import HilumError, StorageFull

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger("hilum.storage")

TYPES = ("s3", "filesystem")
TIER_KEYS: dict[str, type | tuple[type, ...]] = {
    "type": str,
    "endpoint_url": str,
    "bucket": str,
    "prefix": str,
    "region": str,
    "access_key": str,
    "secret_key": str,
    "access_key_env": str,
    "secret_key_env": str,
    "path": str,
    "write_once": bool,
    "retention_days": int,
    "write_through": bool,
}
RULE_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "to": str,
    "min_age_days": (int, float),
    "idle_days": (int, float),
    "modalities": list,
    "keep_online": bool,
}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

RECEIVING_SECONDS = 120.0
"""A study changed less than this long ago is still being received: no rule moves it yet."""

CHUNK = 1 << 20
"""Bytes read or written at a time when streaming to or from a tier (memory stays bounded by it)."""

MULTIPART_BYTES = 64 << 20
"""Files above this go to S3 in a multipart upload of parts this big."""

FETCH_THREADS = 8
"""Objects fetched (recall) or written (moves, write-through) at once: they wait on the network."""


class WriteOnceError(HilumError):
    """A write-once tier refused to overwrite an object, or to delete one before its retention date."""


class TierError(StorageFull, OSError):
    """A tier cannot be reached, or does not hold what it should (the read paths report it, never crash).

    A :class:`~hilum.errors.StorageFull` (adapters answer "out of resources" /
    503) and an :class:`OSError` (the streaming paths skip the instance).
    """


# --------------------------------------------------------------------------- rules


@dataclass
class TierConfig:
    """One ``[tiers.NAME]`` table."""

    name: str
    type: str
    endpoint_url: str = ""
    bucket: str = ""
    prefix: str = ""
    region: str = "us-east-1"
    access_key: str = ""
    secret_key: str = ""
    path: str = ""
    write_once: bool = False
    retention_days: int = 0
    write_through: bool = False

    @property
    def location(self) -> str:
        return f"tier:{self.name}"


@dataclass
class TieringRule:
    """One ``[[tiering]]`` rule: studies older than ``min_age_days`` (by arrival), idle for
    ``idle_days`` (0: ignore), of ``modalities`` (empty: any) go to the tier ``to``."""

    name: str
    to: str
    min_age_days: float = 0.0
    idle_days: float = 0.0
    modalities: list[str] = field(default_factory=list)
    keep_online: bool = False


@dataclass
class TierRules:
    tiers: dict[str, TierConfig] = field(default_factory=dict)
    rules: list[TieringRule] = field(default_factory=list)

    @property
    def write_through(self) -> list[TierConfig]:
        return [t for t in self.tiers.values() if t.write_through]


def _check_type(
    source: str, text: str, table: str, key: str, value: Any, kind: type | tuple[type, ...], index: int | None = None
) -> None:
    bad = isinstance(value, bool) != (kind is bool) or not isinstance(value, kind)
    if bad:
        want = {bool: "true or false", str: "a string", int: "a whole number", list: "a list of strings"}.get(
            kind if isinstance(kind, type) else float, "a number"
        )
        raise storage.rule_error(source, text, table, f"must be {want}, not {value!r}", key=key, index=index)


def parse(doc: dict[str, Any], text: str = "", source: str = "hilum.toml") -> TierRules:
    """The ``[tiers.*]`` tables and ``[[tiering]]`` rules of a ``hilum.toml`` (nothing: no tiers, no rules)."""
    rules = TierRules()
    tiers = doc.get("tiers", {})
    if not isinstance(tiers, dict):
        raise storage.rule_error(source, text, "tiers", "must be tables [tiers.NAME]")
    for name, table in tiers.items():
        where = f"tiers.{name}"
        if not isinstance(table, dict):
            raise storage.rule_error(source, text, "tiers", f"{name!r} must be a table [tiers.{name}]", key=name)
        if not NAME_RE.match(name):
            raise storage.rule_error(
                source, text, where, "a tier's name is letters, digits, '_', '-', '.' (at most 64)"
            )
        for key, value in table.items():
            kind = TIER_KEYS.get(key)
            if kind is None:
                raise storage.rule_error(
                    source, text, where, f"unknown setting (known: {', '.join(TIER_KEYS)})", key=key
                )
            _check_type(source, text, where, key, value, kind)
        kind_name = table.get("type")
        if kind_name not in TYPES:
            raise storage.rule_error(
                source,
                text,
                where,
                f"type must be one of {', '.join(map(repr, TYPES))}, not {kind_name!r}",
                key="type" if "type" in table else None,
            )
        cfg = TierConfig(name=name, type=kind_name)
        for key in (
            "endpoint_url",
            "bucket",
            "prefix",
            "region",
            "path",
            "write_once",
            "retention_days",
            "write_through",
        ):
            if key in table:
                setattr(cfg, key, table[key])
        if cfg.retention_days < 0:
            raise storage.rule_error(source, text, where, "must be 0 or more days", key="retention_days")
        if cfg.prefix.startswith("/") or ".." in cfg.prefix.split("/"):
            raise storage.rule_error(source, text, where, "must be a relative key prefix", key="prefix")
        if cfg.type == "s3":
            if not cfg.bucket:
                raise storage.rule_error(source, text, where, "an s3 tier needs a bucket", key="bucket")
            if "path" in table:
                raise storage.rule_error(source, text, where, "is for filesystem tiers", key="path")
            if cfg.endpoint_url and not re.match(r"^https?://[^\s/]+", cfg.endpoint_url):
                raise storage.rule_error(
                    source, text, where, f"must be an http(s) URL, not {cfg.endpoint_url!r}", key="endpoint_url"
                )
            for key in ("access_key", "secret_key"):
                if key in table and f"{key}_env" in table:
                    raise storage.rule_error(source, text, where, f"give {key} or {key}_env, not both", key=key)
                if f"{key}_env" in table:
                    env = table[f"{key}_env"]
                    if env not in os.environ:
                        raise storage.rule_error(
                            source, text, where, f"environment variable {env} is not set", key=f"{key}_env"
                        )
                    setattr(cfg, key, os.environ[env])
                elif key in table:
                    setattr(cfg, key, table[key])
        else:
            for key in (
                "endpoint_url",
                "bucket",
                "region",
                "access_key",
                "secret_key",
                "access_key_env",
                "secret_key_env",
            ):
                if key in table:
                    raise storage.rule_error(source, text, where, "is for s3 tiers", key=key)
            if not cfg.path or not os.path.isabs(cfg.path):
                raise storage.rule_error(
                    source,
                    text,
                    where,
                    "a filesystem tier needs an absolute path",
                    key="path" if "path" in table else None,
                )
        rules.tiers[name] = cfg
    entries = doc.get("tiering", [])
    if not isinstance(entries, list):
        raise storage.rule_error(source, text, "tiering", "must be an array of tables [[tiering]]")
    for i, table in enumerate(entries):
        if not isinstance(table, dict):
            raise storage.rule_error(source, text, "tiering", "must be a table", index=i)
        for key, value in table.items():
            kind = RULE_KEYS.get(key)
            if kind is None:
                raise storage.rule_error(
                    source, text, "tiering", f"unknown setting (known: {', '.join(RULE_KEYS)})", key=key, index=i
                )
            _check_type(source, text, "tiering", key, value, kind, i)
        to = table.get("to")
        if not to:
            raise storage.rule_error(source, text, "tiering", 'needs to = "TIER"', index=i)
        if to not in rules.tiers:
            known = ", ".join(rules.tiers) or "none defined"
            raise storage.rule_error(
                source, text, "tiering", f"no tier called {to!r} ([tiers.*]: {known})", key="to", index=i
            )
        rule = TieringRule(name=str(table.get("name") or f"tiering #{i + 1}"), to=to)
        for key in ("min_age_days", "idle_days"):
            value = table.get(key, 0)
            if value < 0:
                raise storage.rule_error(source, text, "tiering", f"must be 0 or more, not {value!r}", key=key, index=i)
            setattr(rule, key, float(value))
        mods = table.get("modalities", [])
        if not all(isinstance(m, str) and m.strip() for m in mods):
            raise storage.rule_error(
                source, text, "tiering", f"must be a list of modalities, not {mods!r}", key="modalities", index=i
            )
        rule.modalities = [m.strip().upper() for m in mods]
        rule.keep_online = bool(table.get("keep_online", False))
        rules.rules.append(rule)
    return rules


# --------------------------------------------------------------------------- back-ends


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _Backend:
    """What a tier back-end offers (a write-once one never overwrites in ``put``)."""

    cfg: TierConfig

    def put_file(self, key: str, path: Path, metadata: Mapping[str, str]) -> None:
        """Write the file at ``path`` as ``key``, streamed (a write-once tier refuses an existing key)."""
        raise NotImplementedError

    def fetch_to(self, key: str, out: _Sink) -> None:
        """Write the object ``key`` to ``out``, streamed."""
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        buf = io.BytesIO()
        self.fetch_to(key, buf)
        return buf.getvalue()

    def checksum(self, key: str) -> tuple[str, int]:
        """The checksum and size of the object ``key``, read back in full (streamed)."""
        h = _Hashing()
        self.fetch_to(key, h)
        return h.checksum, h.size

    def head(self, key: str) -> dict[str, str] | None:
        """The object's size and metadata; None: there is no such object."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError


class _Hashing:
    """A write-only stream that checksums what goes through it (as :func:`blob_checksum`), optionally into a file."""

    def __init__(self, out: BinaryIO | None = None):
        self._h = xxhash.xxh3_128()
        self._out = out
        self.size = 0

    def write(self, data: bytes) -> int:
        self._h.update(data)
        self.size += len(data)
        if self._out is not None:
            self._out.write(data)
        return len(data)

    @property
    def checksum(self) -> str:
        return f"{CHECKSUM_ALGORITHM}:{self._h.hexdigest()}"


class FileTier(_Backend):
    """A tier on a second file system (a NAS mount): files written to a temporary name, fsynced, renamed."""

    def __init__(self, cfg: TierConfig):
        self.cfg = cfg
        self.root = Path(cfg.path)

    def _path(self, key: str) -> Path:
        p = self.root / key
        if ".." in Path(key).parts:
            raise ValueError(f"bad tier key {key!r}")
        return p

    def put_file(self, key: str, path: Path, metadata: Mapping[str, str]) -> None:
        dest = self._path(key)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
            with open(path, "rb") as src, open(tmp, "wb") as f:
                shutil.copyfileobj(src, f, CHUNK)
                f.flush()
                os.fsync(f.fileno())
            if self.cfg.write_once:
                os.chmod(tmp, 0o444)
                try:
                    os.link(tmp, dest)  # fails if it exists: never overwrite
                except FileExistsError:
                    raise WriteOnceError(f"tier {self.cfg.name}: {key} exists (write-once)") from None
                finally:
                    tmp.unlink(missing_ok=True)
            else:
                os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except OSError as exc:
            raise TierError(f"tier {self.cfg.name} ({self.root}): cannot write {key}: {exc.strerror or exc}") from exc

    def fetch_to(self, key: str, out: _Sink) -> None:
        try:
            with open(self._path(key), "rb") as f:
                shutil.copyfileobj(f, out, CHUNK)
        except OSError as exc:
            raise TierError(f"tier {self.cfg.name} ({self.root}): cannot read {key}: {exc.strerror or exc}") from exc

    def head(self, key: str) -> dict[str, str] | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TierError(f"tier {self.cfg.name} ({self.root}): {exc.strerror or exc}") from exc
        return {"size": str(st.st_size)}

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise TierError(f"tier {self.cfg.name}: cannot delete {key}: {exc.strerror or exc}") from exc


class S3Tier(_Backend):
    """A tier on S3-compatible object storage (boto3): one PUT per object, read back to verify."""

    def __init__(self, cfg: TierConfig):
        import boto3
        from botocore.config import Config as BotoConfig

        self.cfg = cfg
        self.client = boto3.client(
            "s3",
            endpoint_url=cfg.endpoint_url or None,
            region_name=cfg.region or None,
            aws_access_key_id=cfg.access_key or None,
            aws_secret_access_key=cfg.secret_key or None,
            config=BotoConfig(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=FETCH_THREADS * 2,
                s3={"addressing_style": "path"},
            ),
        )

    def _fail(self, what: str, key: str, exc: Exception) -> TierError:
        where = self.cfg.endpoint_url or "S3"
        return TierError(f"tier {self.cfg.name} ({where}, bucket {self.cfg.bucket}): cannot {what} {key}: {exc}")

    def put_file(self, key: str, path: Path, metadata: Mapping[str, str]) -> None:
        """One PUT, or a multipart upload above :data:`MULTIPART_BYTES` (boto3's transfer manager)."""
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        if self.cfg.write_once and self.head(key) is not None:
            raise WriteOnceError(f"tier {self.cfg.name}: {key} exists (write-once)")
        try:
            self.client.upload_file(
                str(path),
                self.cfg.bucket,
                key,
                ExtraArgs={"ContentType": "application/dicom", "Metadata": dict(metadata)},
                Config=TransferConfig(
                    multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES, max_concurrency=4
                ),
            )
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise self._fail("write", key, exc) from exc

    def fetch_to(self, key: str, out: _Sink) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self.client.get_object(Bucket=self.cfg.bucket, Key=key)["Body"]
            try:
                for chunk in body.iter_chunks(CHUNK):
                    out.write(chunk)
            finally:
                body.close()
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("read", key, exc) from exc

    def head(self, key: str) -> dict[str, str] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            res = self.client.head_object(Bucket=self.cfg.bucket, Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail("look up", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("look up", key, exc) from exc
        return {"size": str(res.get("ContentLength", 0)), **{k.lower(): v for k, v in res.get("Metadata", {}).items()}}

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.cfg.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("delete", key, exc) from exc




# --------------------------------------------------------------------------- the tiers of an archive


def tier_object_key(blob_key: str, checksum: str) -> str:
    """The object key of a copy (before the tier's prefix): the blob key with the content's checksum in it."""
    digest = checksum.rpartition(":")[2][:16] or "0"
    stem = blob_key[:-4] if blob_key.endswith(".dcm") else blob_key
    return f"{stem}.{digest}.dcm"


class Tiers:
    """The tiers of an archive (``archive.tiers``; empty without ``[tiers.*]``).

    ``put``/``get``/``delete`` talk to one tier; :meth:`bring_online` brings
    instances back to the online store (the archive's read paths call it).
    """

    def __init__(self, archive: Archive, rules: TierRules | None = None):
        self.archive = archive
        self.rules = rules or TierRules()
        self._backends: dict[str, _Backend] = {}
        self._lock = threading.Lock()
        self.recall_lock = threading.RLock()
        """Held while files of the online store are brought back or dropped (recall vs a move's delete)."""

    def __bool__(self) -> bool:
        return bool(self.rules.tiers)

    def names(self) -> list[str]:
        return list(self.rules.tiers)

    def config(self, name: str) -> TierConfig:
        try:
            return self.rules.tiers[name]
        except KeyError:
            raise KeyError(f"no tier called {name!r}") from None

    def backend(self, name: str) -> _Backend:
        with self._lock:
            b = self._backends.get(name)
            if b is None:
                cfg = self.config(name)
                b = S3Tier(cfg) if cfg.type == "s3" else FileTier(cfg)
                self._backends[name] = b
            return b

    def retain_until(self, name: str, stored: datetime | None = None) -> datetime | None:
        """When a copy written now to tier ``name`` may be deleted (None: any time, or never on a write-once
        tier without a retention period)."""
        cfg = self.config(name)
        if not cfg.write_once or not cfg.retention_days:
            return None
        return (stored or storage.utcnow()) + timedelta(days=cfg.retention_days)

    def put(self, name: str, key: str, path_or_bytes: bytes | str | os.PathLike[str]) -> tuple[str, str, int]:
        """Write ``key`` (an online blob key, or any relative key) to tier ``name`` and read it back.

        Returns ``(tier_key, checksum, size)``; ``tier_key`` (the object key,
        prefix included) is what :meth:`get` and :meth:`delete` take.  On a
        write-once tier an object that exists already is left alone when its
        content is the same (a retried copy) and refused otherwise
        (:class:`WriteOnceError`).  Raises :class:`TierError` when the tier
        cannot be written or the copy read back differs.
        """
        cfg = self.config(name)
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            temp = storage.policy_temp(self.archive, ".tier")
            try:
                temp.write_bytes(path_or_bytes)
                return self.put(name, key, temp)
            finally:
                temp.unlink(missing_ok=True)
        path = Path(path_or_bytes)
        h = _Hashing()
        with open(path, "rb") as f:
            shutil.copyfileobj(f, h, CHUNK)
        checksum, size = h.checksum, h.size
        tier_key = cfg.prefix + key
        backend = self.backend(name)
        meta = {"hilum-checksum": checksum}
        if cfg.write_once:
            until = self.retain_until(name)
            meta["hilum-retain-until"] = until.isoformat() if until else "forever"
        try:
            backend.put_file(tier_key, path, meta)
        except WriteOnceError:
            if backend.checksum(tier_key)[0] != checksum:
                raise
        back, back_size = backend.checksum(tier_key)
        if back != checksum or back_size != size:
            raise TierError(f"tier {name}: the copy of {key} read back differs from what was written")
        return tier_key, checksum, size

    def get(self, name: str, tier_key: str) -> bytes:
        return self.backend(name).get(tier_key)

    def delete(self, name: str, tier_key: str, retain_until: datetime | None = None) -> None:
        """Delete a copy; on a write-once tier only after ``retain_until`` (and the date the object itself
        carries, on S3), never when there is none (:class:`WriteOnceError`)."""
        cfg = self.config(name)
        backend = self.backend(name)
        if cfg.write_once:
            now = storage.utcnow()
            dates = [storage.as_utc(retain_until)] if retain_until is not None else []
            head = backend.head(tier_key)
            if head is None:
                return
            stamp = head.get("hilum-retain-until")
            if stamp == "forever" or (stamp is None and retain_until is None):
                raise WriteOnceError(f"tier {name} is write-once: {tier_key} is kept for good")
            if stamp:
                try:
                    dates.append(storage.as_utc(datetime.fromisoformat(stamp)))
                except ValueError:
                    raise WriteOnceError(f"tier {name}: {tier_key} has an unreadable retention date") from None
            until = max(d for d in dates if d is not None)
            if until > now:
                raise WriteOnceError(f"tier {name} is write-once: {tier_key} is retained until {until.isoformat()}")
        backend.delete(tier_key)

    # ------------------------------------------------------------------ recall

    def bring_online(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Bring the instances of ``rows`` (query rows or any mapping with ``SOPInstanceUID`` / ``sop_uid``)
        back to the online store, verified: ``instances.online = true``, one ``recall`` log row per study.

        A file already in the online store with the right checksum is simply
        taken (a move or purge killed before it deleted the file).  Raises
        :class:`TierError` naming what could not be brought back (after
        bringing back all that could be).
        """
        uids = list(dict.fromkeys(str(r.get("SOPInstanceUID") or r.get("sop_uid") or "") for r in rows))
        uids = [u for u in uids if u]
        if not uids:
            return
        # One recall at a time in this process: a second reader of the same study waits, then finds it here.
        with self.recall_lock:
            found, copies = self._recall_rows(uids)
            failures: list[str] = []
            done: list[Any] = []
            todo = []
            for r in found:
                path = self.archive.blobs.path(r.blob_key)
                if path.exists() and (r.online or _intact(path, r.checksum)):
                    if not r.online:
                        done.append((r, 0))
                    continue
                todo.append(r)
            if todo:
                workers = min(FETCH_THREADS, len(todo))
                with ThreadPoolExecutor(workers, thread_name_prefix="tier-recall") as pool:
                    results = list(pool.map(lambda r: self._recall_one(r, copies.get(r.pk, [])), todo))
                for r, err in zip(todo, results, strict=True):
                    if err:
                        failures.append(f"{r.sop_uid}: {err}")
                    else:
                        done.append((r, int(r.size)))
            if done:
                self._adopt(done)
        if failures:
            raise TierError(
                f"cannot bring {len(failures)} instance(s) back online: "
                + "; ".join(failures[:3])
                + (" ..." if len(failures) > 3 else "")
            )

    def _recall_rows(self, uids: list[str]) -> tuple[list[Any], dict[int, list[tuple[str, str, str]]]]:
        """The instance rows of ``uids`` (deleted ones are left out: the caller's lookup says NotFound) and
        their verified tier copies ``{pk: [(tier, key, checksum)]}``."""
        found: list[Any] = []
        copies: dict[int, list[tuple[str, str, str]]] = {}
        with self.archive.engine.connect() as conn:
            for chunk in chunks(uids, 500):
                found += conn.execute(
                    select(
                        instances.c.pk,
                        instances.c.sop_uid,
                        instances.c.blob_key,
                        instances.c.checksum,
                        instances.c.size,
                        instances.c.online,
                        studies.c.study_uid,
                    )
                    .select_from(
                        instances.join(series, series.c.pk == instances.c.series_fk).join(
                            studies, studies.c.pk == series.c.study_fk
                        )
                    )
                    .where(instances.c.sop_uid.in_(chunk))
                ).all()
            pks = [r.pk for r in found]
            for chunk in chunks(pks, 500):
                for c in conn.execute(
                    select(blob_copies.c.instance_fk, blob_copies.c.location, blob_copies.c.key, blob_copies.c.checksum)
                    .where(
                        blob_copies.c.instance_fk.in_(chunk),
                        blob_copies.c.location.like("tier:%"),
                        blob_copies.c.verified_at.is_not(None),
                    )
                    .order_by(blob_copies.c.pk)
                ):
                    copies.setdefault(c.instance_fk, []).append((c.location[5:], c.key, c.checksum))
        return found, copies

    def _recall_one(self, row: Any, copies: Sequence[tuple[str, str, str]]) -> str:
        """Fetch one instance from the first tier that gives a good copy into the online store; '' or why not."""
        usable = [(t, k) for t, k, c in copies if c == row.checksum and t in self.rules.tiers]
        if not usable:
            known = {t for t, _, _ in copies}
            if known - set(self.rules.tiers):
                return f"its copy is on tier(s) {', '.join(sorted(known))} not configured on this node"
            return "not online here and no tier holds a verified copy" + (" (yet)" if row.online else "")
        errors = []
        for tier, key in usable:
            try:
                temp = storage.policy_temp(self.archive, ".recall")
            except OSError as exc:
                return f"cannot write the online file: {exc}"
            try:
                error = self._fetch_verified(tier, key, row.checksum, temp)
                if error:
                    errors.append(error)
                    continue
                try:
                    self.archive.blobs.commit_temp(str(temp), row.blob_key)  # an atomic rename into place
                except OSError as exc:
                    return f"cannot write the online file: {exc}"
                return ""
            finally:
                temp.unlink(missing_ok=True)
        return "; ".join(errors)

    def _fetch_verified(self, tier: str, key: str, checksum: str, temp: Path) -> str:
        """Fetch a copy into ``temp``, fsynced; '' when its checksum is ``checksum``, else why not."""
        try:
            with open(temp, "wb") as f:
                h = _Hashing(f)
                self.backend(tier).fetch_to(key, h)
                f.flush()
                os.fsync(f.fileno())
        except TierError as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot write the work file: {exc.strerror or exc}"
        if h.checksum != checksum:
            return f"tier {tier}: copy {key} has another checksum"
        return ""

    def _adopt(self, done: list[tuple[Any, int]]) -> None:
        """One transaction: the recalled instances are online again, one log row per study.

        Instances that were online already (another node's, fetched into this node's store in a
        scale-out) are a cache fill, not a recall: no log row.
        """
        per_study: dict[str, list[tuple[Any, int]]] = {}
        for r, size in done:
            if not r.online:
                per_study.setdefault(r.study_uid, []).append((r, size))
        if not per_study:
            log.debug("%d instance(s) of other nodes fetched from a tier", len(done))
            return
        node = _node_name(self.archive)
        with self.archive.transaction() as conn:
            self.archive.writer.set_online(conn, [r.pk for r, _ in done if not r.online], True)
            for uid, items in per_study.items():
                fetched = sum(s for _, s in items)
                storage.log_action(
                    conn,
                    "recall",
                    uid,
                    instances=len(items),
                    bytes_before=0,
                    bytes_after=fetched,
                    detail="brought back online from a tier",
                    node=node,
                )

    # ------------------------------------------------------------------ copies

    def copy_instances(self, name: str, rows: Sequence[Any]) -> tuple[list[tuple[Any, str, str, int]], list[str]]:
        """Write the online files of ``rows`` (``pk``, ``blob_key``, ``checksum``) to tier ``name``, in parallel.

        Returns ``([(row, tier_key, checksum, size)], [errors])``; rows whose file changed meanwhile (another
        checksum than the row's) are left out, for the next pass.
        """

        def one(r: Any) -> tuple[Any, str, str, int] | str:
            path = self.archive.blobs.path(r.blob_key)
            temp: Path | None = None
            try:
                try:
                    intact = file_checksum(path, r.checksum)
                except FileNotFoundError:
                    # Not on this node's disk (another node's, in a scale-out): from a tier that has it.
                    temp = storage.policy_temp(self.archive, ".tier")
                    error = self._from_another_tier(r, name, temp)
                    if error:
                        return error
                    path, intact = temp, True
                except OSError as exc:
                    return f"{r.blob_key}: cannot read the online file ({exc.strerror or exc})"
                if not intact:
                    return f"{r.blob_key}: online file differs from its index row (changed meanwhile?)"
                try:
                    tier_key, checksum, size = self.put(name, tier_object_key(r.blob_key, r.checksum), path)
                except (TierError, WriteOnceError) as exc:
                    return str(exc)
                except OSError as exc:
                    return f"{r.blob_key}: cannot read the online file ({exc.strerror or exc})"
                if checksum != r.checksum:
                    return f"{r.blob_key}: online file changed while it was copied"
                return (r, tier_key, checksum, size)
            finally:
                if temp is not None:
                    temp.unlink(missing_ok=True)

        ok: list[tuple[Any, str, str, int]] = []
        errors: list[str] = []
        if not rows:
            return ok, errors
        with ThreadPoolExecutor(min(FETCH_THREADS, len(rows)), thread_name_prefix="tier-put") as pool:
            for res in pool.map(one, rows):
                if isinstance(res, str):
                    errors.append(res)
                else:
                    ok.append(res)
        return ok, errors

    def _from_another_tier(self, r: Any, name: str, temp: Path) -> str:
        """Fetch instance ``r`` into ``temp`` from a tier other than ``name``, verified; '' or why not."""
        c = blob_copies.c
        with self.archive.engine.connect() as conn:
            found = conn.execute(
                select(c.location, c.key).where(
                    c.instance_fk == r.pk,
                    c.location.like("tier:%"),
                    c.location != f"tier:{name}",
                    c.checksum == r.checksum,
                    c.verified_at.is_not(None),
                )
            ).all()
        errors = [f"{r.blob_key}: not on this node's disk and on no other tier"]
        for loc, key in found:
            tier = loc[5:]
            if tier not in self.rules.tiers:
                continue
            error = self._fetch_verified(tier, key, r.checksum, temp)
            if not error:
                return ""
            errors.append(error)
        return "; ".join(errors[-2:])

    def record(self, conn: Connection, name: str, copied: Iterable[tuple[Any, str, str, int]]) -> int:
        """Record verified copies on tier ``name`` (in the caller's transaction) where the instance still has
        the checksum that was copied; how many were recorded."""
        loc = self.config(name).location
        until = self.retain_until(name)
        n = 0
        for r, tier_key, checksum, size in copied:
            now = conn.execute(select(instances.c.checksum).where(instances.c.pk == r.pk)).scalar()
            if now != checksum:
                continue
            storage.record_copy(
                conn, r.pk, loc, key=tier_key, checksum=checksum, size=size, verified=True, retain_until=until
            )
            n += 1
        return n


def _intact(path: Path, checksum: str) -> bool:
    try:
        return file_checksum(path, checksum)
    except OSError:
        return False


def _node_name(archive: Archive) -> str:
    pol = getattr(archive, "policies", None)
    return str(getattr(pol, "node_name", "") or "")


# --------------------------------------------------------------------------- the policy


def _has_copy(loc: str) -> Any:
    c = blob_copies.c
    return exists().where(
        c.instance_fk == instances.c.pk,
        c.location == loc,
        c.checksum == instances.c.checksum,
        c.verified_at.is_not(None),
    )


def _instance_cols() -> list[Any]:
    return [instances.c.pk, instances.c.sop_uid, instances.c.blob_key, instances.c.checksum, instances.c.size]


def write_through(archive: Archive, *, limit: int = 2000) -> storage.TaskReport:
    """Copy to every write-through tier the instances this node holds online that it has no copy of yet."""
    report = storage.TaskReport("write-through")
    tiers: Tiers = archive.tiers
    for cfg in tiers.rules.write_through:
        last_pk = 0
        while True:
            with archive.engine.connect() as conn:
                rows = conn.execute(
                    select(*_instance_cols())
                    .where(instances.c.pk > last_pk, instances.c.online.is_(True), ~_has_copy(cfg.location))
                    .order_by(instances.c.pk)
                    .limit(limit)
                ).all()
            if not rows:
                break
            last_pk = rows[-1].pk
            here = [r for r in rows if archive.blobs.exists(r.blob_key)]  # another node's: that node copies it
            copied, errors = tiers.copy_instances(cfg.name, here)
            report.errors += errors[:20]
            if copied:
                with archive.transaction() as conn:
                    n = tiers.record(conn, cfg.name, copied)
                report.instances += n
                report.bytes_after += sum(size for *_, size in copied)
            if errors and not copied:
                break  # the tier is down: try again on the next wake
    if report.instances:
        log.info("write-through: %d instance(s) copied (%d bytes)", report.instances, report.bytes_after)
    return report


def run_once(
    archive: Archive, rules: TierRules, *, dry_run: bool = False, now: datetime | None = None
) -> storage.TaskReport:
    """One pass: write-through copies, then each ``[[tiering]]`` rule over the studies it matches.

    A study matched by a rule: every online instance without a verified copy
    on the rule's tier is written there and read back; the copies are
    recorded, and (unless ``keep_online``) the instances marked offline and a
    ``move`` log row written, in one transaction; then the online files are
    deleted.  A study with an instance that could not be copied keeps all its
    online files.  A dry run lists the studies and changes nothing.
    """
    now = storage.as_utc(now) or storage.utcnow()
    report = storage.TaskReport("tiers", dry_run=dry_run)
    tiers: Tiers = archive.tiers
    if not dry_run and tiers.rules.write_through:
        wt = write_through(archive)
        report.errors += wt.errors
    if not dry_run and rules.rules:
        sweep_leftovers(archive)
    done: set[int] = set()
    for rule in rules.rules:
        for st in _candidates(archive, rule, now):
            if st.pk in done:
                continue
            done.add(st.pk)
            _move_study(archive, rule, st, report, dry_run=dry_run, now=now)
    return report


def _candidates(archive: Archive, rule: TieringRule, now: datetime) -> list[Any]:
    s = studies.c
    loc = archive.tiers.config(rule.to).location
    with archive.engine.connect() as conn:
        # Studies with an online instance not yet on the tier; for a move, also those already copied there
        # (a write-through tier) unless brought back from a tier once: a recalled study stays online (a
        # cache) until retention purges it again.  New instances of a moved study move it again.
        online = (
            select(instances.c.pk)
            .select_from(instances.join(series, series.c.pk == instances.c.series_fk))
            .where(series.c.study_fk == s.pk, instances.c.online.is_(True))
        )
        pending: Any = exists(online.where(~_has_copy(loc)))
        if not rule.keep_online:
            recalled = exists().where(policy_log.c.action == "recall", policy_log.c.uid == s.study_uid)
            pending = pending | (exists(online) & ~recalled)
        rows = conn.execute(
            select(
                s.pk,
                s.study_uid,
                s.created_at,
                s.updated_at,
                s.last_access,
                s.modalities,
                s.num_instances,
                s.size_bytes,
            )
            .where(pending)
            .order_by(s.created_at, s.pk)
        ).all()
    out = []
    for r in rows:
        if storage.age_days(r.created_at, now) < rule.min_age_days:
            continue
        if (now - (storage.as_utc(r.updated_at) or now)).total_seconds() < RECEIVING_SECONDS:
            continue
        if rule.idle_days and storage.age_days(r.last_access or r.created_at, now) < rule.idle_days:
            continue
        if not storage.matches(r.modalities, rule.modalities):
            continue
        out.append(r)
    return out


def _move_study(
    archive: Archive, rule: TieringRule, st: Any, report: storage.TaskReport, *, dry_run: bool, now: datetime
) -> None:
    tiers: Tiers = archive.tiers
    cfg = tiers.config(rule.to)
    with archive.engine.connect() as conn:
        rows = conn.execute(
            select(*_instance_cols(), _has_copy(cfg.location).label("has_copy"))
            .select_from(instances.join(series, series.c.pk == instances.c.series_fk))
            .where(series.c.study_fk == st.pk, instances.c.online.is_(True))
        ).all()
    if not rows:
        return
    size = sum(int(r.size) for r in rows)
    what = "copy" if rule.keep_online else "move"
    if dry_run:
        report.actions.append(
            {
                "uid": st.study_uid,
                "rule": rule.name,
                "instances": len(rows),
                "bytes": size,
                "reason": f"{what} to tier {cfg.name}: arrived {storage.age_days(st.created_at, now):.0f} day(s) ago"
                + (f", last opened {storage.age_days(st.last_access, now):.0f} day(s) ago" if st.last_access else ""),
            }
        )
        report.instances += len(rows)
        report.bytes_before += size
        return
    need = [r for r in rows if not r.has_copy]
    copied, errors = tiers.copy_instances(cfg.name, need)
    node = _node_name(archive)
    with archive.transaction() as conn:
        n = tiers.record(conn, cfg.name, copied)
        if errors or n < len(copied):
            if n:
                storage.log_action(
                    conn,
                    "copy",
                    st.study_uid,
                    rule=rule.name,
                    instances=n,
                    bytes_before=size,
                    bytes_after=size,
                    detail=f"to tier {cfg.name}; incomplete, online files kept",
                    node=node,
                )
            complete = False
        else:
            complete = True
        pks = [r.pk for r in rows]
        if complete and not rule.keep_online:
            # Only instances that still have the checksum that was copied (a transcode meanwhile: next pass).
            ok = {
                p
                for (p,) in conn.execute(select(instances.c.pk).where(instances.c.pk.in_(pks), _has_copy(cfg.location)))
            }
            if ok != set(pks):
                complete = False
            else:
                archive.writer.set_online(conn, pks, False)
                storage.log_action(
                    conn,
                    "move",
                    st.study_uid,
                    rule=rule.name,
                    instances=len(rows),
                    bytes_before=size,
                    bytes_after=0,
                    detail=f"to tier {cfg.name}",
                    node=node,
                )
        elif complete:
            storage.log_action(
                conn,
                "copy",
                st.study_uid,
                rule=rule.name,
                instances=len(rows),
                bytes_before=size,
                bytes_after=size,
                detail=f"to tier {cfg.name}, kept online",
                node=node,
            )
    report.errors += [f"study {st.study_uid}: {e}" for e in errors[:10]]
    if not complete:
        return
    report.actions.append(
        {
            "uid": st.study_uid,
            "rule": rule.name,
            "instances": len(rows),
            "bytes": size,
            "reason": f"{what} to tier {cfg.name}",
        }
    )
    report.instances += len(rows)
    report.bytes_before += size
    if not rule.keep_online:
        _drop_online(archive, rows)
    else:
        report.bytes_after += size


def _drop_online(archive: Archive, rows: Sequence[Any]) -> None:
    """Delete the online files of instances marked offline (unless a reader brought them back meanwhile)."""
    with archive.tiers.recall_lock, archive.engine.connect() as conn:
        for chunk in chunks([r.pk for r in rows], 500):
            offline = {
                r.blob_key
                for r in conn.execute(
                    select(instances.c.blob_key).where(instances.c.pk.in_(chunk), instances.c.online.is_(False))
                )
            }
            for key in offline:
                try:
                    archive.blobs.delete(key)
                except OSError as exc:
                    log.warning("could not delete the online file %s of an instance moved to a tier: %s", key, exc)


SWEEP_DAYS = 2.0
"""Studies moved in the last this many days are swept for online files left behind (see :func:`sweep_leftovers`)."""


def sweep_leftovers(archive: Archive, *, days: float = SWEEP_DAYS) -> int:
    """Delete this node's online files of offline instances with a verified tier copy, in the studies moved in
    the last ``days``: a move killed between its transaction and its deletes, or (scale-out) the other nodes'
    files of a study the policy node moved.  Offline instances without a tier copy are retention's.
    Returns how many files were deleted."""
    c = blob_copies.c
    tier_copy = exists().where(
        c.instance_fk == instances.c.pk,
        c.location.like("tier:%"),
        c.checksum == instances.c.checksum,
        c.verified_at.is_not(None),
    )
    since = storage.utcnow() - timedelta(days=days)
    moved = select(policy_log.c.uid).where(policy_log.c.action == "move", policy_log.c.at >= since)
    with archive.engine.connect() as conn:
        rows = conn.execute(
            select(instances.c.pk, instances.c.blob_key)
            .select_from(
                instances.join(series, series.c.pk == instances.c.series_fk).join(
                    studies, studies.c.pk == series.c.study_fk
                )
            )
            .where(and_(instances.c.online.is_(False), tier_copy, studies.c.study_uid.in_(moved)))
        ).all()
    present = [r for r in rows if archive.blobs.exists(r.blob_key)]
    if present:
        _drop_online(archive, present)
    return len(present)


# --------------------------------------------------------------------------- the write-through service


class TierService(storage.WokenService):
    """On every node with tiers (``[storage] policies = false`` too): copies arriving instances to the
    write-through tiers (each node copies the files it received, which only it holds), and drops this node's
    online files of studies moved to a tier lately (:func:`sweep_leftovers`; the move was made by the node
    that applies the rules, on its own disk)."""

    name = "tiers"
    thread_name = "tier-write-through"

    def __init__(self, archive: Archive, *, interval: float = 60.0, settle: float = 1.0):
        super().__init__(archive)
        self.interval = interval
        self.settle = settle
        self.last: storage.TaskReport | None = None

    def enabled(self) -> bool:
        return bool(self.archive.tiers)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            if not first:
                self._wake.wait(self.interval)
            first = False
            if self._stop.is_set():
                break
            self._stop.wait(self.settle)  # a burst of arrivals: one pass for many
            self._wake.clear()
            try:
                if self.archive.tiers.rules.write_through:
                    self.last = write_through(self.archive)
                sweep_leftovers(self.archive)
            except Exception:  # noqa: BLE001 - a tier that is down: next time
                log.exception("write-through pass failed")
            self.passes += 1
