"""Import from disk: files, folders (recursive), DICOMDIR file-sets and zip archives.

This module only *finds* what to offer; every instance still enters through
the archive's one ingest call (:meth:`Archive.ingest_many`, DESIGN.md "One
way in"), which validates and stores it.  Finding follows a few rules:

- A folder is walked recursively in name order; hidden entries, DICOMDIR
  files (the index of a file-set, PS3.10 7.2, not an instance) and obvious
  non-DICOM files (``README``, ``.txt``, ``.json``, images, ...) are skipped
  and counted.  A file named on the command line is always offered.
- A DICOMDIR named directly is read and the files its directory records
  reference (Referenced File ID, PS3.3 F.3.2.2) are offered.
- A zip archive (``*.zip``, or any named file that is one) is read in place:
  members are read into memory, never extracted, and a member whose name is
  absolute or climbs out with ``..`` (zip-slip) or is a symbolic link is
  rejected by its name without being read.  Zips inside zips are followed.
  A member's source reads ``archive.zip!a/b.dcm``.
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from hilum.archive.archive import IngestResult

if TYPE_CHECKING:
    from hilum.archive.archive import Archive

log = logging.getLogger(__name__)

__all__ = ["Candidate", "Collection", "ImportReport", "collect", "import_paths"]

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (PS3.4 B.5)

SKIP_SUFFIXES = frozenset({
    ".txt", ".md", ".rst", ".json", ".xml", ".html", ".htm", ".css", ".js", ".pdf", ".doc", ".docx", ".rtf",
    ".csv", ".log", ".ini", ".cfg", ".inf", ".py", ".sh", ".bat", ".cmd", ".exe", ".dll", ".so", ".dylib",
    ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".ico", ".icc", ".svg", ".dump", ".db",
    ".plist", ".lnk", ".url",
})
"""Suffixes that mark a file as plainly not DICOM when met during a walk."""

SKIP_NAMES = frozenset({"thumbs.db", "desktop.ini", "autorun.inf", "dicomdir"})
SKIP_PREFIXES = ("readme", "license", "licence", "copying", "changelog")

MAX_MEMBER_BYTES = 4 << 30
"""A zip member larger than this is rejected unread (a zip bomb, or not an instance)."""

MAX_ZIP_DEPTH = 3


@dataclass(frozen=True, slots=True)
class Candidate:
    """One thing to offer the archive: a file, or a zip member, or a rejection found while looking.

    ``source`` is what reports name it: a path, or ``outer.zip!dir/file.dcm``.
    """

    source: str
    path: Path | None = None
    zip: _Zip | None = None
    member: zipfile.ZipInfo | None = None
    code: str | None = None  # set when rejected before reading
    reason: str | None = None


@dataclass(eq=False)
class _Zip:
    """An open zip archive; members are read under a lock (one file position)."""

    label: str
    file: zipfile.ZipFile
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, info: zipfile.ZipInfo) -> bytes:
        with self.lock:
            return self.file.read(info)


@dataclass
class Collection:
    """What :func:`collect` found: candidates in order, skipped files, zips to close."""

    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    zips: list[_Zip] = field(default_factory=list)

    def close(self) -> None:
        for z in self.zips:
            z.file.close()
        self.zips.clear()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _skip_in_walk(name: str) -> bool:
    low = name.lower()
    if low.startswith(".") or low in SKIP_NAMES or low.startswith(SKIP_PREFIXES):
        return True
    return os.path.splitext(low)[1] in SKIP_SUFFIXES


def _is_zip_name(name: str) -> bool:
    return name.lower().endswith(".zip")


def _media_sop_class(path: Path) -> str | None:
    """The Media Storage SOP Class UID of a Part 10 file, read from its meta only."""
    from pydicom.filereader import read_file_meta_info

    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if head[128:132] != b"DICM":
            return None
        meta = read_file_meta_info(path)
        return str(meta.get("MediaStorageSOPClassUID", "")) or None
    except Exception:  # noqa: BLE001 - not readable as Part 10: not a DICOMDIR either
        return None


def _looks_like_dicomdir(path: Path) -> bool:
    """A DICOMDIR is named so on media (PS3.10 8.6); copies like ``DICOMDIR-old`` are checked by their meta."""
    name = path.name.upper()
    if name == "DICOMDIR":
        return True
    return name.startswith("DICOMDIR") and _media_sop_class(path) == DICOMDIR_SOP_CLASS


def unsafe_member_name(name: str) -> str | None:
    """Why a zip member's name is unsafe to honour (zip-slip), or None if it is fine."""
    if "\x00" in name:
        return "NUL character in name"
    n = name.replace("\\", "/")
    if n.startswith("/") or re.match(r"^[A-Za-z]:", n):
        return "absolute path"
    if any(part == ".." for part in n.split("/")):
        return "path traversal (..)"
    return None


def collect(paths: Iterable[str | os.PathLike[str]]) -> Collection:
    """Find the candidates under ``paths`` (files, folders, DICOMDIRs, zips), in order.

    A path that does not exist becomes a rejection, so it shows in the
    summary instead of vanishing.  Each file is offered once however often
    it is reached.
    """
    col = Collection()
    seen: set[Path] = set()

    def add_file(p: Path, explicit: bool) -> None:
        try:
            key = p.resolve()
        except OSError:
            key = p.absolute()
        if key in seen:
            return
        seen.add(key)
        if _is_zip_name(p.name) or (explicit and zipfile.is_zipfile(p)):
            _add_zip(col, p)
            return
        if explicit and _looks_like_dicomdir(p):
            _add_dicomdir(col, p, add_file)
            return
        col.candidates.append(Candidate(str(p), path=p))

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    fp = Path(root) / name
                    if _skip_in_walk(name) or (name.upper().startswith("DICOMDIR") and _looks_like_dicomdir(fp)):
                        col.skipped.append(str(fp))
                        continue
                    add_file(fp, explicit=False)
        elif p.exists():
            add_file(p, explicit=True)
        else:
            col.candidates.append(Candidate(str(p), code="unreadable", reason="cannot read: no such file or folder"))
    return col


def _add_dicomdir(col: Collection, path: Path, add_file: Callable[[Path, bool], None]) -> None:
    """Offer the files a DICOMDIR references (PS3.3 F.3.2.2 Referenced File ID), relative to its folder."""
    import pydicom

    root = path.parent
    try:
        ds = pydicom.dcmread(path)
        records = list(ds.get("DirectoryRecordSequence", []))
    except Exception as exc:  # noqa: BLE001 - an unreadable DICOMDIR is one rejection
        col.candidates.append(Candidate(str(path), code="not-dicom", reason=f"unreadable DICOMDIR: {exc}"))
        return
    base = root.resolve()
    for rec in records:
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = [str(ref)] if isinstance(ref, str) else [str(x) for x in ref]
        label = f"{path}!{'/'.join(parts)}"
        if any(part in ("", ".", "..") or "/" in part or "\\" in part for part in parts):
            col.candidates.append(Candidate(label, code="unsafe-path",
                                            reason=f"DICOMDIR references an unsafe path {'/'.join(parts)!r}"))
            continue
        target = root.joinpath(*parts)
        if not target.exists():
            # File IDs are upper case on media; file systems may have lowered them.
            lowered = root.joinpath(*[x.lower() for x in parts])
            target = lowered if lowered.exists() else target
        try:
            inside = target.resolve().is_relative_to(base)
        except OSError:
            inside = False
        if not inside:
            col.candidates.append(Candidate(label, code="unsafe-path",
                                            reason="DICOMDIR references a file outside its folder"))
            continue
        if not target.exists():
            col.candidates.append(Candidate(str(target), code="unreadable",
                                            reason="cannot read: referenced by the DICOMDIR but missing"))
            continue
        add_file(target, False)


def _add_zip(col: Collection, path: Path) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        col.candidates.append(Candidate(str(path), code="unreadable", reason=f"cannot read zip: {exc}"))
        return
    z = _Zip(str(path), zf)
    col.zips.append(z)
    _add_members(col, z, depth=1)


def _add_members(col: Collection, z: _Zip, depth: int) -> None:
    for info in sorted(z.file.infolist(), key=lambda i: i.filename):
        name = info.filename
        label = f"{z.label}!{name}"
        why = unsafe_member_name(name)
        if why is not None:
            col.candidates.append(Candidate(label, code="unsafe-path",
                                            reason=f"unsafe name in zip ({why}): not read"))
            continue
        if info.is_dir():
            continue
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            col.candidates.append(Candidate(label, code="unsafe-path", reason="symbolic link in zip: not read"))
            continue
        base = PurePosixPath(name.replace("\\", "/")).name
        if base.upper().startswith("DICOMDIR") or _skip_in_walk(base) or name.startswith("__MACOSX/"):
            col.skipped.append(label)
            continue
        if info.file_size > MAX_MEMBER_BYTES:
            col.candidates.append(Candidate(label, code="unreadable",
                                            reason=f"zip member too large ({info.file_size} bytes)"))
            continue
        if _is_zip_name(base) and depth < MAX_ZIP_DEPTH:
            try:
                inner = zipfile.ZipFile(io.BytesIO(z.read(info)))
            except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as exc:
                col.candidates.append(Candidate(label, code="unreadable", reason=f"cannot read zip: {exc}"))
                continue
            iz = _Zip(label, inner)
            col.zips.append(iz)
            _add_members(col, iz, depth + 1)
            continue
        col.candidates.append(Candidate(label, zip=z, member=info))


# ---------------------------------------------------------------- import


@dataclass
class ImportReport:
    """What an import did: one result per candidate (in order) and the files skipped."""

    results: list[IngestResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def imported(self) -> int:
        return self.count("stored")

    @property
    def replaced(self) -> int:
        return self.count("replaced")

    @property
    def duplicates(self) -> int:
        return self.count("duplicate")

    @property
    def rejections(self) -> list[IngestResult]:
        return [r for r in self.results if r.status == "rejected" and r.code != "cancelled"]

    @property
    def cancelled(self) -> int:
        return sum(1 for r in self.results if r.code == "cancelled")

    @property
    def rejected(self) -> int:
        return len(self.rejections)

    @property
    def bytes(self) -> int:
        """Bytes stored by this import (new and replaced instances)."""
        return sum(r.size for r in self.results if r.status in ("stored", "replaced"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "replaced": self.replaced,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "skipped": len(self.skipped),
            "cancelled": self.cancelled,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "rejections": [{"source": r.source, "code": r.code, "reason": r.reason} for r in self.rejections],
            "skipped_files": list(self.skipped),
        }


def _audit_import(archive: Archive, report: ImportReport, paths: list[str], user: str | None) -> None:
    audit = getattr(archive, "audit", None)
    if audit is None:
        return
    from hilum.archive.audit import os_user

    per_study: dict[str, list[int]] = {}
    for r in report.results:
        if r.study_instance_uid and r.code != "cancelled":
            per_study.setdefault(r.study_instance_uid, [0, 0])[0 if r.ok else 1] += 1
    where = ", ".join(paths)[:300]
    for uid, (ok, failed) in per_study.items():
        audit("Import", action="C", outcome=0 if not failed else (4 if ok else 8), user=user or os_user(),
              role="source media", study_uids=(uid,), instances=ok,
              detail=f"from {where or 'files'}" + (f", {failed} refused" if failed else ""))


def import_paths(archive: Archive, paths: Iterable[str | os.PathLike[str]], *, origin: str = "import",
                 workers: int | None = None, progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None, user: str | None = None) -> ImportReport:
    """Import files, folders, DICOMDIRs and zips into ``archive`` through its one ingest call.

    Audited: one "Import" event per study that came in (PS3.15 A.5.3.7), ``user`` (default: the OS
    user) the one who imported, the paths in ``detail``.

    ``progress(done, total)`` is called as results come in; ``cancel`` stops
    before the next instance.  Never raises for bad input: every problem is a
    rejection with a ``source``, a ``code`` and a one-line ``reason``.
    """
    start = time.perf_counter()
    with collect(paths) as col:
        total = len(col.candidates)
        done = 0
        early: dict[int, IngestResult] = {}
        to_ingest: list[int] = []
        for i, cand in enumerate(col.candidates):
            if cand.code is not None:
                early[i] = IngestResult("rejected", reason=cand.reason, code=cand.code, source=cand.source)
            else:
                to_ingest.append(i)
        read_errors: dict[int, str] = {}

        def tick(_res: IngestResult | None = None) -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        for _ in early:
            tick()

        def sources() -> Iterator[Any]:
            for i in to_ingest:
                cand = col.candidates[i]
                if cand.path is not None:
                    yield cand.path
                    continue
                assert cand.zip is not None and cand.member is not None
                try:
                    yield cand.zip.read(cand.member)
                except Exception as exc:  # noqa: BLE001 - a bad member is one rejection
                    read_errors[i] = f"cannot read zip member: {exc}"
                    yield b""

        results = archive.ingest_many(sources(), origin=origin, workers=workers, progress=tick, cancel=cancel)
        merged: list[IngestResult] = []
        by_index = dict(zip(to_ingest, results, strict=True))
        by_index.update(early)
        for i in range(total):
            res = by_index[i]
            res.source = col.candidates[i].source
            if i in read_errors:
                res.status, res.code, res.reason = "rejected", "unreadable", read_errors[i]
            merged.append(res)
        report = ImportReport(merged, list(col.skipped), time.perf_counter() - start)
    _audit_import(archive, report, [str(p) for p in paths] if isinstance(paths, (list, tuple)) else [], user)
    log.info("import: %d stored, %d duplicates, %d rejected, %d skipped in %.1f s", report.imported,
             report.duplicates, report.rejected, len(report.skipped), report.seconds)
    return report
