"""Export of studies to interchange media: PS3.11 STD-GEN-CD (General Purpose CD-R / USB / DVD).

The layout is what PS3.10 and the STD-GEN-CD profile (PS3.11 Annex D) ask for: a DICOMDIR at
the root (written by pydicom's :class:`~pydicom.fileset.FileSet`, PS3.10 8 / PS3.3 F) indexing
every file as PATIENT → STUDY → SERIES → IMAGE records, File IDs of up to 8 components of up to
8 upper-case letters, digits or ``_`` (``PT000000/ST000000/SE000000/IM000000``), every instance
in Explicit VR Little Endian (the profile's one transfer syntax: compressed ones are decoded
losslessly by :mod:`hilum.dicom.transcode`, every UID kept).  Beside it a ``README.TXT``, and
with ``viewer`` an ``INDEX.HTM`` listing the contents and an ``AUTORUN.INF`` that opens it.

The medium is written as a folder (for a USB stick), a ``.zip``, or an ISO 9660 image
(``.iso``, by ``xorriso``: level 1 names without version numbers nor a trailing period, plus Joliet and Rock Ridge).
With a :class:`~hilum.dicom.deid.Deidentifier` the instances are de-identified first
(:func:`hilum.archive.deid_store.deidentified`), the mapping kept by the node.

``hilum import`` reads what this writes (DICOMDIR, folder or zip): the round trip keeps every
UID and pixel (tests/test_media.py).
"""

from __future__ import annotations

import datetime as dt
import html
import io
import shutil
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.fileset import FileSet
from pydicom.uid import ExplicitVRLittleEndian

from hilum import __version__
from hilum.dicom import transcode
from hilum.errors import HilumError

if TYPE_CHECKING:
    from hilum.archive.archive import Archive
    from hilum.archive.deid_store import DeidStore
    from hilum.dicom.deid import Deidentifier

__all__ = ["MediaError", "MediaReport", "export_media", "media_kind"]

PROFILE = "STD-GEN-CD"


class MediaError(HilumError):
    """The medium cannot be written (output exists, xorriso missing, nothing to write...)."""


@dataclass
class MediaReport:
    out: Path
    kind: str  # folder | zip | iso
    studies: int = 0
    instances: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # "SOP UID: why"
    cancelled: bool = False
    anonymised: bool = False

    def as_dict(self) -> dict[str, object]:
        return {"out": str(self.out), "kind": self.kind, "profile": PROFILE, "studies": self.studies,
                "instances": self.instances, "bytes": self.bytes, "skipped": self.skipped,
                "cancelled": self.cancelled, "anonymised": self.anonymised}  # fmt: skip


def media_kind(out: str | Path) -> str:
    suffix = Path(out).suffix.lower()
    return {".zip": "zip", ".iso": "iso"}.get(suffix, "folder")


def _instances(archive: Archive, study_uids: list[str], deid: Deidentifier | None, store: DeidStore | None,
               progress: Callable[[int, int], None] | None,
               cancel: threading.Event | None) -> Iterator[tuple[str, bytes]]:  # fmt: skip
    if deid is not None:
        from hilum.archive.deid_store import deidentified

        for data, result in deidentified(archive, study_uids, deid, store=store, progress=progress, cancel=cancel):
            yield result.original_sop_uid, data
        return
    rows = [r for uid in study_uids for r in archive.instances(study_uid=uid)]
    for i, row in enumerate(rows):
        if cancel is not None and cancel.is_set():
            return
        yield str(row["SOPInstanceUID"]), archive.read_outgoing(row)
        if progress is not None:
            progress(i + 1, len(rows))


def export_media(archive: Archive, study_uids: Iterable[str], out: str | Path, *, viewer: bool = False,
                 deid: Deidentifier | None = None, store: DeidStore | None = None, label: str = "HILUM",
                 progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None) -> MediaReport:  # fmt: skip
    """Write the studies to ``out`` (a new folder, ``X.zip`` or ``X.iso``) as STD-GEN-CD media."""
    out = Path(out)
    kind = media_kind(out)
    uids = list(dict.fromkeys(study_uids))
    if not uids:
        raise MediaError("no study to export")
    if out.exists() and (kind != "folder" or any(out.iterdir())):
        raise MediaError(f"{out} already exists" + (" and is not empty" if kind == "folder" else ""))
    if kind == "iso" and shutil.which("xorriso") is None:
        raise MediaError("writing an ISO image needs xorriso (Debian package xorriso)")
    for uid in uids:
        if not archive.query("STUDY", {"StudyInstanceUID": uid}):
            raise MediaError(f"no study {uid} in the archive")
    report = MediaReport(out=out, kind=kind, anonymised=deid is not None)
    with tempfile.TemporaryDirectory(prefix="hilum-media-") as tmp:
        root = out if kind == "folder" else Path(tmp) / "root"
        fs = FileSet()
        fs.ID = label.upper()[:16]
        contents: dict[tuple[str, str], dict[str, object]] = {}
        studies: set[str] = set()
        for sop_uid, data in _instances(archive, uids, deid, store, progress, cancel):
            try:
                ds: pydicom.Dataset = pydicom.dcmread(_bytes_io(data), force=True)
                if str(ds.file_meta.TransferSyntaxUID) != ExplicitVRLittleEndian:
                    ds = transcode.to_native(ds, ExplicitVRLittleEndian)
                _add(fs, ds)  # staged by the FileSet in its own temporary folder
            except (transcode.TranscodeError, ValueError, KeyError, AttributeError) as exc:
                report.skipped.append(f"{sop_uid}: {exc}")
                continue
            report.instances += 1
            studies.add(str(ds.StudyInstanceUID))
            key = (str(ds.StudyInstanceUID), str(ds.get("SeriesInstanceUID", "")))
            entry = contents.setdefault(key, {"patient": str(ds.get("PatientName", "")), "pid": str(ds.get("PatientID", "")),
                                              "date": str(ds.get("StudyDate", "")), "study": str(ds.get("StudyDescription", "")),
                                              "modality": str(ds.get("Modality", "")), "series": str(ds.get("SeriesDescription", "")),
                                              "number": str(ds.get("SeriesNumber", "")), "count": 0})  # fmt: skip
            entry["count"] = int(entry["count"]) + 1  # type: ignore[call-overload]
        if cancel is not None and cancel.is_set():
            report.cancelled = True
            if kind == "folder" and root.exists():
                shutil.rmtree(root, ignore_errors=True)
            return report
        if report.instances == 0:
            raise MediaError("nothing could be written: " + "; ".join(report.skipped[:3]))
        report.studies = len(studies)
        root.mkdir(parents=True, exist_ok=True)
        fs.write(root)
        (root / "README.TXT").write_text(_readme(report, viewer), encoding="ascii", newline="\r\n")
        if viewer:
            (root / "INDEX.HTM").write_text(_index_html(contents, deid is not None), encoding="utf-8")
            (root / "AUTORUN.INF").write_text("[autorun]\r\nshellexecute=INDEX.HTM\r\nlabel=" + fs.ID + "\r\n",
                                              encoding="ascii", newline="")  # fmt: skip
        if kind == "zip":
            _zip(root, out)
        elif kind == "iso":
            _iso(root, out, fs.ID or "HILUM")
    report.bytes = (
        out.stat().st_size if kind != "folder" else sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    )
    from hilum.archive.deid_store import audit_export

    audit_export(archive, uids, destination=str(out), instances=report.instances, anonymised=report.anonymised,
                 media=True, outcome=4 if report.skipped else 0)  # fmt: skip
    return report


# Type 1 keys of the default PATIENT/STUDY/SERIES/IMAGE records (PS3.3 F.5) that an instance may
# lawfully leave empty (Type 2 in its IOD): the record gets a placeholder, the file keeps its value.
_RECORD_PLACEHOLDERS = {"PatientID": "UNKNOWN", "StudyDate": "19000101", "StudyTime": "000000", "StudyID": "0",
                        "Modality": "OT", "SeriesNumber": "0", "InstanceNumber": "0"}  # fmt: skip


def _add(fs: FileSet, ds: pydicom.Dataset) -> None:
    """Stage ``path`` in ``fs``; when a default record creator refuses an empty Type 2 value
    (an empty Study ID is common), the records are made from placeholders instead."""
    try:
        fs.add(ds)
        return
    except ValueError as exc:
        if "record creator" not in str(exc):
            raise
    from pydicom.fileset import DIRECTORY_RECORDERS, RecordNode, _four_level_record_type

    header = pydicom.Dataset()
    for elem in ds:
        if elem.tag < 0x7FE00010:
            header.add(elem)
    for kw, value in _RECORD_PLACEHOLDERS.items():
        if not str(header.get(kw, "") or "").strip():
            setattr(header, kw, value)
    parent = None
    for rtype in ("PATIENT", "STUDY", "SERIES", _four_level_record_type(ds)):
        record = DIRECTORY_RECORDERS[rtype](header)
        record.DirectoryRecordType = rtype
        if rtype not in ("PATIENT", "STUDY", "SERIES"):
            record.ReferencedSOPInstanceUIDInFile = ds.SOPInstanceUID  # the leaf's key (add_custom sets the rest)
        node = RecordNode(record)
        if parent is not None:
            node.parent = parent
        parent = node
    assert parent is not None
    fs.add_custom(ds, parent)


def _bytes_io(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


def _zip(root: Path, out: Path) -> None:
    tmp = out.with_name(out.name + ".part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(root).as_posix())
    tmp.replace(out)


def _iso(root: Path, out: Path, volume: str) -> None:
    tmp = out.with_name(out.name + ".part")
    cmd = ["xorriso", "-as", "mkisofs", "-quiet", "-iso-level", "1", "-N", "-d", "-J", "-r",
           "-V", volume[:32], "-o", str(tmp), str(root)]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        tmp.unlink(missing_ok=True)
        raise MediaError(f"xorriso failed: {exc}") from exc
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise MediaError(f"xorriso failed ({done.returncode}): {last}")
    tmp.replace(out)


def _readme(report: MediaReport, viewer: bool) -> str:
    lines = [
        "DICOM media written by Hilum " + __version__,
        f"Profile: {PROFILE} (DICOM PS3.11 General Purpose CD-R interchange)",
        f"Written: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"Studies: {report.studies}, instances: {report.instances}",
        "De-identified (DICOM PS3.15 Annex E)."
        if report.anonymised
        else "Contains patient data: handle as confidential.",
        "",
        "Open the DICOMDIR file with any DICOM viewer."
        + (" INDEX.HTM lists the contents." if viewer else ""),  # fmt: skip
    ]
    return "\n".join(lines) + "\n"


def _index_html(contents: dict[tuple[str, str], dict[str, object]], anonymised: bool) -> str:
    rows = []
    for (_study, _series), e in sorted(
        contents.items(), key=lambda kv: (str(kv[1]["pid"]), str(kv[1]["date"]), str(kv[1]["number"]))
    ):
        cells = [e["patient"], e["pid"], e["date"], e["study"], e["modality"], e["number"], e["series"], e["count"]]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    note = "<p>De-identified (DICOM PS3.15 Annex E).</p>" if anonymised else "<p>Contains patient data.</p>"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>DICOM media</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #999;padding:2px 6px}"
        "table{border-collapse:collapse}</style></head><body>"
        f"<h1>DICOM media ({PROFILE})</h1>{note}<p>Open <code>DICOMDIR</code> with a DICOM viewer.</p>"
        "<table><tr><th>Patient</th><th>ID</th><th>Study date</th><th>Study</th><th>Modality</th>"
        "<th>Series</th><th>Description</th><th>Images</th></tr>" + "".join(rows) + "</table></body></html>\n"
    )
