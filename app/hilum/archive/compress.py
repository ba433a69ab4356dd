"""The compression policy: ``[[compression]]`` rules of ``hilum.toml``, applied to stored native images.

::

    [[compression]]
    name = "ct"                 # optional, shown in the log
    modalities = ["CT", "MR"]   # empty/absent: any
    sop_classes = []            # SOP Class UIDs; empty: any image
    source_aets = []            # the AE titles that sent them; empty: any
    min_age_days = 0            # 0: as soon as it arrived; N: in the background when older
    syntax = "jpeg-ls-lossless" # | "jpeg2000-lossless" | "htj2k-lossless" | "jpeg2000-lossy"
    lossy = false               # must be true for jpeg2000-lossy (a new instance), refused otherwise
    ratio = 10                  # lossy only: the target compression ratio

The first rule that matches an instance (modality, SOP class, sender, age)
decides.  Only uncompressed images are taken; what the codecs cannot take
(float pixels, odd bit depths, a codec refusing the image) is skipped with the
reason in the report, and not tried again by this process.

A replacement never loses the original (:mod:`hilum.archive.storage`, the
trash protocol): the new file is encoded into a policy work file, fsynced,
read back and verified (:func:`hilum.dicom.transcode.verify`: lossless
decodes to the same pixels bit for bit, every UID and attribute kept), its
key noted in the trash, renamed to a new key beside the old one
(``<sha>.<syntax>.<token>.dcm``), and only then adopted in one transaction
that points the row at it (:meth:`IndexWriter.replace_blob`, only if the
row's checksum is still the one that was read), notes the old key in the
trash and writes the policy log row; the trash is reaped after.  A kill at any
point leaves the original indexed and readable, and at most an unadopted new
file that the next reap (a pass, a node start, ``hilum check``) removes.

Lossy JPEG 2000 is done only where a rule says ``lossy = true``: the result is a
new instance (new SOP Instance UID, Lossy Image Compression "01", ratio and
method, Source Image Sequence pointing at the original; PS3.3 C.7.6.1.1.5)
that takes the original's place in its series; the original goes, and the log
row names both UIDs.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from hilum.archive import storage
from hilum.archive.blobs import blob_checksum
from hilum.archive.model import ArchiveEvent
from hilum.archive.schema import blob_trash, instances, patients, series, studies
from hilum.dicom import transcode
from hilum.errors import ConfigError

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger("hilum.storage")

TABLE = "compression"
NATIVE_SYNTAXES = (*transcode.NATIVE, "1.2.840.10008.1.2.2")  # Explicit/Implicit VR Little Endian, Big Endian
PAGE = 500
"""Candidate instances read from the index at a time."""
GROUP = 64
"""Instances adopted per transaction (and per policy log row)."""

_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "modalities": list,
    "sop_classes": list,
    "source_aets": list,
    "min_age_days": (int, float),
    "syntax": str,
    "lossy": bool,
    "ratio": (int, float),
}
_UID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


@dataclass(frozen=True)
class CompressionRule:
    name: str
    syntax: str
    modalities: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()
    source_aets: tuple[str, ...] = ()
    min_age_days: float = 0.0
    lossy: bool = False
    ratio: float = 10.0

    def matches(self, row: Any, now: datetime) -> bool:
        return (
            storage.matches(row.modality or "", self.modalities)
            and (not self.sop_classes or row.sop_class_uid in self.sop_classes)
            and storage.matches(row.source_aet or "", self.source_aets)
            and (self.min_age_days <= 0 or storage.age_days(row.received_at, now) >= self.min_age_days)
        )


@dataclass
class CompressionRules:
    """The ``[[compression]]`` rules in order (empty: the policy does nothing)."""

    rules: list[CompressionRule] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.rules)

    @property
    def on_arrival(self) -> bool:
        """Whether a rule acts as soon as an instance arrives (``min_age_days = 0``)."""
        return any(r.min_age_days <= 0 for r in self.rules)

    def rule_for(self, row: Any, now: datetime) -> CompressionRule | None:
        return next((r for r in self.rules if r.matches(row, now)), None)


# --------------------------------------------------------------------------- parse


def parse(doc: dict[str, Any], text: str, source: str) -> CompressionRules:
    """The ``[[compression]]`` tables of a parsed ``hilum.toml`` (``text`` for the line numbers of errors)."""
    tables = doc.get(TABLE)
    if tables is None:
        return CompressionRules()
    if isinstance(tables, dict):
        raise storage.rule_error(source, text, TABLE, "write [[compression]] (a list of rules), not [compression]")
    if not isinstance(tables, list):
        raise storage.rule_error(source, text, TABLE, "must be a list of tables ([[compression]])")
    return CompressionRules([_rule(t, i, text, source) for i, t in enumerate(tables)])


def _rule(table: Any, index: int, text: str, source: str) -> CompressionRule:
    def error(message: str, key: str | None = None) -> ConfigError:
        return storage.rule_error(source, text, TABLE, message, key=key, index=index)

    if not isinstance(table, dict):
        raise error("must be a table")
    for key, value in table.items():
        kind = _KEYS.get(key)
        if kind is None:
            raise error(f"unknown setting (known: {', '.join(_KEYS)})", key)
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
            raise error(f"wrong type {type(value).__name__} ({value!r}), want {_kind_name(kind)}", key)
    if "syntax" not in table:
        raise error(f"a rule needs a syntax ({', '.join(transcode.COMPRESSIONS)})")
    syntax = table["syntax"]
    if syntax not in transcode.COMPRESSIONS:
        raise error(f"unknown syntax {syntax!r} (known: {', '.join(transcode.COMPRESSIONS)})", "syntax")
    if syntax not in transcode.encoders():
        raise error(
            f"no installed encoder makes {syntax} here (available: {', '.join(transcode.encoders())})", "syntax"
        )
    lossy = bool(table.get("lossy", False))
    is_lossy = syntax in transcode.LOSSY_COMPRESSIONS
    if is_lossy and not lossy:
        raise error(f"{syntax} loses information and makes new instances: allowed only with lossy = true", "syntax")
    if lossy and not is_lossy:
        raise error(f"lossy = true with the lossless syntax {syntax}", "lossy")
    ratio = table.get("ratio", 10)
    if "ratio" in table and not is_lossy:
        raise error(f"a ratio is for jpeg2000-lossy only, not {syntax}", "ratio")
    if not 1 < ratio <= 1000:
        raise error(f"must be more than 1 and at most 1000, not {ratio!r}", "ratio")
    age = table.get("min_age_days", 0)
    if age < 0:
        raise error(f"must be a number of days >= 0, not {age!r}", "min_age_days")
    modalities = _strings(table, "modalities", error, upper=True, limit=16)
    sop_classes = _strings(table, "sop_classes", error, limit=64)
    for uid in sop_classes:
        if not _UID.match(uid):
            raise error(f"not a UID: {uid!r}", "sop_classes")
    aets = _strings(table, "source_aets", error, limit=16)
    name = str(table.get("name") or f"compression #{index + 1}")[:64]
    return CompressionRule(
        name=name,
        syntax=syntax,
        modalities=modalities,
        sop_classes=sop_classes,
        source_aets=aets,
        min_age_days=float(age),
        lossy=lossy,
        ratio=float(ratio),
    )


def _strings(table: dict[str, Any], key: str, error: Any, *, upper: bool = False, limit: int) -> tuple[str, ...]:
    out = []
    for v in table.get(key, []):
        if not isinstance(v, str) or not v.strip():
            raise error(f"must be a list of non-empty strings, not {v!r} in it", key)
        v = v.strip()
        if len(v) > limit:
            raise error(f"{v!r} is longer than {limit} characters", key)
        out.append(v.upper() if upper else v)
    return tuple(out)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names: dict[Any, str] = {(int, float): "a number", str: "a string", list: "a list", bool: "true or false"}
    return names.get(kind, str(kind))


# --------------------------------------------------------------------------- run


# Per archive: (SOP Instance UID, checksum) -> why it was left as it is (tried again after a restart).
_skipped: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], str]] = weakref.WeakKeyDictionary()
_skipped_lock = threading.Lock()


def _skips(archive: Archive) -> dict[tuple[str, str], str]:
    with _skipped_lock:
        found = _skipped.get(archive)
        if found is None:
            found = _skipped[archive] = {}
        return found


_SKIPPED_MAX = 200_000


def _stage(name: str) -> None:
    """A point of a replacement (tests interrupt the process here: ``written``, ``renamed``, ``adopted``)."""


@dataclass
class _Done:
    pk: int
    old_uid: str
    new_uid: str
    checksum_read: str
    key: str
    size: int
    checksum: str
    transfer_syntax: str
    size_before: int
    series_uid: str
    patient_id: str


def run_once(
    archive: Archive, rules: CompressionRules, *, dry_run: bool = False, now: datetime | None = None
) -> storage.TaskReport:
    """One compression pass over the stored native images the rules match (see the module docstring)."""
    report = storage.TaskReport("compression", dry_run=dry_run)
    if not rules:
        return report
    now = now or storage.utcnow()
    if not dry_run:
        storage.clear_stale_policy_temps(archive)
    by_study: dict[tuple[str, str], dict[str, Any]] = {}  # one action per study (and rule, when two act on it)
    for page in _candidates(archive, rules, now):
        groups: dict[tuple[str, str], list[Any]] = {}
        for row, rule in page:
            groups.setdefault((row.study_uid, rule.name), []).append((row, rule))
        for (study_uid, rule_name), items in groups.items():
            rule = items[0][1]
            action = by_study.setdefault(
                (study_uid, rule_name),
                {
                    "uid": study_uid,
                    "rule": rule_name,
                    "syntax": rule.syntax,
                    "instances": 0,
                    "bytes": 0,
                    "bytes_after": 0,
                    "reason": _reason(rule),
                    "skipped": [],
                },
            )
            if dry_run:
                action["instances"] += len(items)
                action["bytes"] += sum(int(r.size) for r, _ in items)
                continue
            for start in range(0, len(items), GROUP):
                done = []
                for row, _ in items[start : start + GROUP]:
                    result = _transcode_one(archive, row, rule)
                    if isinstance(result, str):
                        action["skipped"].append({"sop_uid": row.sop_uid, "reason": result})
                        if result.startswith("cannot"):
                            report.errors.append(f"{row.sop_uid}: {result}")
                    else:
                        done.append(result)
                if done:
                    _adopt(archive, study_uid, rule, done, action, report)
        if not dry_run:
            storage.reap_trash(archive)  # the originals just replaced
    report.actions = [a for a in by_study.values() if a["instances"] or a["skipped"]]
    return report


def _reason(rule: CompressionRule) -> str:
    what = f"{rule.syntax} at {rule.ratio:g}:1" if rule.lossy else rule.syntax
    return f"{what}" + (f", older than {rule.min_age_days:g} days" if rule.min_age_days > 0 else "")


def _candidates(
    archive: Archive, rules: CompressionRules, now: datetime
) -> Iterator[list[tuple[Any, CompressionRule]]]:
    """Pages of (row, rule) of the online native images a rule matches and this process has not given up on."""
    i, se, st = instances.c, series.c, studies.c
    stmt = (
        select(
            i.pk,
            i.sop_uid,
            i.sop_class_uid,
            i.transfer_syntax,
            i.blob_key,
            i.size,
            i.checksum,
            i.source_aet,
            i.received_at,
            se.modality,
            se.series_uid,
            st.study_uid,
            patients.c.patient_id,
        )
        .select_from(
            instances.join(series, se.pk == i.series_fk)
            .join(studies, st.pk == se.study_fk)
            .join(patients, patients.c.pk == st.patient_fk)
        )
        .where(i.transfer_syntax.in_(NATIVE_SYNTAXES), i.online.is_(True), i.rows.is_not(None))
        .order_by(i.pk)
        .limit(PAGE)
    )
    last = 0
    skips = _skips(archive)
    while True:
        with archive.engine.connect() as conn:
            rows = conn.execute(stmt.where(i.pk > last)).all()
        if not rows:
            return
        last = int(rows[-1].pk)
        page = []
        for row in rows:
            if (row.sop_uid, row.checksum) in skips:
                continue
            rule = rules.rule_for(row, now)
            if rule is not None:
                page.append((row, rule))
        if page:
            yield page


def _skip(archive: Archive, row: Any, reason: str, *, warn: bool = False) -> str:
    skips = _skips(archive)
    with _skipped_lock:
        if len(skips) > _SKIPPED_MAX:
            skips.clear()
        skips[(row.sop_uid, row.checksum)] = reason
    (log.warning if warn else log.info)("compression: left %s as it is: %s", row.sop_uid, reason)
    return reason


def _transcode_one(archive: Archive, row: Any, rule: CompressionRule) -> _Done | str:
    """Encode, write, verify and put in place one instance's new file (not yet adopted); or why not."""
    try:
        original = archive.blobs.read(row.blob_key)
    except OSError as exc:
        return f"cannot read the stored file: {exc.strerror or exc}"  # not cached: may be back later
    if blob_checksum(original) != row.checksum and not _legacy_checksum_ok(archive, row):
        return _skip(archive, row, "the stored file does not match its checksum (run hilum check)", warn=True)
    try:
        made = transcode.compress(original, rule.syntax, ratio=rule.ratio)
    except transcode.TranscodeError as exc:
        return _skip(archive, row, str(exc))
    except Exception as exc:  # noqa: BLE001 - a codec crashing on one image leaves it as it is
        log.exception("compression of %s failed", row.sop_uid)
        return _skip(archive, row, f"{type(exc).__name__}: {exc}", warn=True)
    if not made.lossy and len(made.data) >= len(original):
        return _skip(archive, row, f"{rule.syntax} is not smaller ({len(made.data)} >= {len(original)} bytes)")
    suffix = transcode.SUFFIX[rule.syntax]
    temp: Path | None = None
    try:
        temp = storage.policy_temp(archive, f".{suffix}")
        with open(temp, "wb") as f:
            f.write(made.data)
            f.flush()
            os.fsync(f.fileno())
        _stage("written")
        back = temp.read_bytes()
        checksum = blob_checksum(made.data)
        if blob_checksum(back) != checksum:
            raise transcode.TranscodeError("the written file reads back different")
        transcode.verify(original, back, lossless=not made.lossy)
        key = _new_key(row.blob_key, suffix)
        with archive.transaction() as conn:
            storage.trash_key(conn, key, "compress-new")
        archive.blobs.commit_temp(str(temp), key)
        temp = None
        _stage("renamed")
    except transcode.TranscodeError as exc:
        return _skip(archive, row, f"not verified, original kept: {exc}", warn=True)
    except OSError as exc:
        return f"cannot write the compressed file: {exc.strerror or exc}"
    except Exception as exc:  # noqa: BLE001 - StorageFull and the like: the original stays
        return f"cannot write the compressed file: {exc}"
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)
    return _Done(
        pk=int(row.pk),
        old_uid=row.sop_uid,
        new_uid=made.sop_uid,
        checksum_read=row.checksum,
        key=key,
        size=len(made.data),
        checksum=checksum,
        transfer_syntax=made.transfer_syntax,
        size_before=int(row.size),
        series_uid=row.series_uid,
        patient_id=row.patient_id,
    )


def _legacy_checksum_ok(archive: Archive, row: Any) -> bool:
    """A first-schema checksum (bare SHA-256) is checked by :func:`file_checksum`."""
    if ":" in row.checksum:
        return False
    from hilum.archive.blobs import file_checksum  # noqa: PLC0415

    try:
        return file_checksum(archive.blobs.path(row.blob_key), row.checksum)
    except OSError:
        return False


def _new_key(old: str, suffix: str) -> str:
    """A new key beside ``old``: ``ab/cd/<sha>.<suffix>.<token>.dcm`` (never one in use, even by another process)."""
    head, _, name = old.rpartition("/")
    base = name.split(".", 1)[0] or "blob"
    return (
        f"{head}/{base}.{suffix}.{secrets.token_hex(4)}.dcm" if head else f"{base}.{suffix}.{secrets.token_hex(4)}.dcm"
    )


def _adopt(
    archive: Archive,
    study_uid: str,
    rule: CompressionRule,
    done: list[_Done],
    action: dict[str, Any],
    report: storage.TaskReport,
) -> None:
    """One transaction: the rows point at their new files, the old keys go to the trash, the log row is written."""
    adopted: list[_Done] = []
    gave_up: list[str] = []
    with archive.transaction() as conn:
        for d in done:
            # The new key must still be in the trash: a reap that took it out meanwhile deletes the file.
            taken = conn.execute(delete(blob_trash).where(blob_trash.c.key == d.key)).rowcount
            old = None
            if taken:
                old = archive.writer.replace_blob(
                    conn,
                    d.pk,
                    expected_checksum=d.checksum_read,
                    key=d.key,
                    size=d.size,
                    checksum=d.checksum,
                    transfer_syntax=d.transfer_syntax,
                    sop_uid=d.new_uid if rule.lossy else None,
                )
            if old is None:
                gave_up.append(d.old_uid)
                if taken:
                    storage.trash_key(conn, d.key, "compress-stale")
                continue
            storage.trash_key(conn, old, "compressed")
            adopted.append(d)
        if adopted:
            before = sum(d.size_before for d in adopted)
            after = sum(d.size for d in adopted)
            detail = (
                rule.syntax
                if not rule.lossy
                else (
                    f"{rule.syntax} ratio {rule.ratio:g}, new instances: "
                    + "; ".join(f"{d.old_uid} -> {d.new_uid}" for d in adopted)
                )
            )
            storage.log_action(
                conn,
                "compress",
                study_uid,
                rule=rule.name,
                instances=len(adopted),
                bytes_before=before,
                bytes_after=after,
                detail=detail,
            )
    _stage("adopted")
    for uid in gave_up:
        log.info("compression: %s changed while it was being compressed; left as it is", uid)
    for d in adopted:
        action["instances"] += 1
        action["bytes"] += d.size_before
        action["bytes_after"] += d.size
        report.instances += 1
        report.bytes_before += d.size_before
        report.bytes_after += d.size
        if rule.lossy:
            action.setdefault("replaced", []).append({"original": d.old_uid, "new": d.new_uid})
    # A lossless transcode is the same instance with the same content: no event (subscribers such as the
    # prefetcher would take a "replaced" one for an arrival).  A lossy one removed an instance and made another.
    for d in adopted:
        if rule.lossy:
            for ev in (
                ArchiveEvent("deleted", "IMAGE", d.old_uid, study_uid, d.series_uid, d.patient_id, "compress"),
                ArchiveEvent("stored", "IMAGE", d.new_uid, study_uid, d.series_uid, d.patient_id, "compress"),
            ):
                archive.events.publish(ev)
