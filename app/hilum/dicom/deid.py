"""De-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile, with options.

Pure (pydicom, numpy): no database, network or screen.  The table of what to
do with each attribute is PS3.15 Table E.1-1 itself, generated from the
standard's XML into :mod:`hilum.dicom.deid_profile` (``tools/gen_deid_profile.py``),
so the Basic Profile column and the option columns are the standard's, not
typed by hand.  Supported options (PS3.15 E.3):

* **Retain Longitudinal Temporal Information with Modified Dates** (E.3.6):
  dates are moved back by a whole number of weeks, the same for every study
  of one patient (so intervals and weekdays survive); times are kept;
* **Retain Device Identity** (E.3.8): the ``rtnDevIdOpt = K`` attributes stay;
* **Clean Descriptors** (E.3.5): free-text descriptions are kept with every
  identifier of the instance (names, IDs, accession, dates, institution)
  and any long digit run or date-looking text blanked out;
* **Clean Pixel Data** (E.3.1): regions of burnt-in text blacked out by the
  rules of ``resources/deid/pixel_rules.toml`` (modality / manufacturer /
  model / image type / series description), Burned In Annotation set to NO.

UIDs are never retained: every UID that is not a registered (class, syntax,
...) UID is replaced by ``2.25.<128-bit HMAC of the node secret, project and
original>`` (PS3.5 B.2), so a study, and every study of the same patient,
stays consistent across runs and machines holding the same secret; and the
patient gets a pseudonymous ID (and name) derived the same way.  Private
attributes, curves and overlays are removed.  Patient Identity Removed (0012,0062)
= YES, De-identification Method (0012,0063) and its Code Sequence (0012,0064,
CID 7050) and Longitudinal Temporal Information Modified (0028,0303) are set
as PS3.15 E.1.1 and PS3.3 C.7.1.1 require.

The mapping original → replacement is returned with each result
(:class:`DeidResult`) for the node to keep (:mod:`hilum.archive.deid_store`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import io
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, UID_dictionary

from hilum.dicom.deid_profile import ROWS
from hilum.errors import HilumError

__all__ = [
    "DeidError",
    "DeidResult",
    "Deidentifier",
    "Options",
    "PixelRule",
    "load_pixel_rules",
    "profile_action",
]


class DeidError(HilumError):
    """An instance that cannot be de-identified as asked (unreadable, burnt-in text no rule covers...)."""


@dataclass(frozen=True)
class Options:
    """The PS3.15 E.3 options applied on top of the Basic Profile (Retain UIDs is never offered)."""

    retain_dates: bool = False  # Retain Longitudinal Temporal Information with Modified Dates (E.3.6)
    retain_device: bool = False  # Retain Device Identity (E.3.8)
    clean_descriptors: bool = False  # Clean Descriptors (E.3.5)
    clean_pixels: bool = False  # Clean Pixel Data (E.3.1)
    allow_burned_in: bool = False  # de-identify Burned In Annotation = YES images no rule cleans (flagged)

    @classmethod
    def from_names(cls, names: Iterable[str]) -> Options:
        """From option names as the CLI and config give them: ``dates``, ``device``, ``descriptors``, ``pixels``."""
        known = {"dates": "retain_dates", "device": "retain_device", "descriptors": "clean_descriptors",
                 "pixels": "clean_pixels", "burned-in": "allow_burned_in"}  # fmt: skip
        kw: dict[str, bool] = {}
        for n in names:
            n = n.strip().lower()
            if not n:
                continue
            if n not in known:
                raise ValueError(f"unknown de-identification option {n!r} (known: {', '.join(known)})")
            kw[known[n]] = True
        return cls(**kw)

    def names(self) -> list[str]:
        return [n for n, on in (("dates", self.retain_dates), ("device", self.retain_device),
                                ("descriptors", self.clean_descriptors), ("pixels", self.clean_pixels)) if on]  # fmt: skip


# -- the profile table ------------------------------------------------------------------------------

_OPTION_COLUMN = {"retain_device": "rtnDevIdOpt", "retain_dates": "rtnLongModifDatesOpt",
                  "clean_descriptors": "cleanDescOpt"}  # fmt: skip
_EXACT: dict[int, tuple[str, dict[str, str]]] = {}
_PATTERNS: list[tuple[int, int, str, dict[str, str]]] = []  # (mask, value, basic, options)
for _tag, _name, _basic, _opts in ROWS:
    if _tag == "private":
        continue
    if "x" in _tag:
        _mask = int("".join("0" if c == "x" else "f" for c in _tag), 16)
        _PATTERNS.append((_mask, int(_tag.replace("x", "0"), 16), _basic, _opts))
    else:
        _EXACT[int(_tag, 16)] = (_basic, _opts)


def profile_action(tag: int, options: Options = Options()) -> str | None:
    """What PS3.15 Table E.1-1 says to do with ``tag`` under ``options``, resolved to one of
    ``X`` (remove), ``Z`` (empty), ``D`` (dummy), ``K`` (keep), ``C`` (clean), ``U`` (new UID),
    ``S`` (shift the date: Modified Dates option); None when the table does not list it.

    Compound actions resolve to the one that keeps the object conformant without
    keeping information: ``X/Z`` and ``X/Z/D`` and ``Z/D`` → Z (an empty value is valid for
    Type 2 and 3), ``X/D`` → D (those are Type 1 somewhere), ``X/Z/U*`` → U (the sequence stays,
    its UIDs are replaced).
    """
    return _resolve(tag, options)


@cache
def _resolve(tag: int, options: Options) -> str | None:
    row = _EXACT.get(tag)
    if row is None:
        for mask, value, basic, opts in _PATTERNS:
            if tag & mask == value:
                row = (basic, opts)
                break
    if row is None:
        return None
    basic, opts = row
    if options.retain_device and opts.get("rtnDevIdOpt") == "K":
        return "K"
    if options.retain_dates and opts.get("rtnLongModifDatesOpt") == "C":
        return "S"
    if options.clean_descriptors and opts.get("cleanDescOpt") == "C":
        return "C"
    if "U" in basic:
        return "U"
    if basic in ("D", "X/D"):
        return "D"
    if "Z" in basic:
        return "Z"
    return basic  # X, K, C


# -- pixel rules ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelRule:
    name: str
    criteria: Mapping[str, str]  # attribute keyword -> "a|b" (case-insensitive substrings)
    regions: tuple[tuple[int, int, int, int], ...]  # x, y, width, height

    _KEYS = {"modality": "Modality", "manufacturer": "Manufacturer", "model": "ManufacturerModelName",
             "image_type": "ImageType", "series_description": "SeriesDescription",
             "burned_in": "BurnedInAnnotation"}  # fmt: skip

    def matches(self, ds: Dataset) -> bool:
        for keyword, wanted in self.criteria.items():
            value = ds.get(keyword)
            text = (
                "\\".join(str(v) for v in value)
                if isinstance(value, (list, tuple, pydicom.multival.MultiValue))
                else str(value or "")
            )
            if not any(alt.strip().lower() in text.lower() for alt in wanted.split("|") if alt.strip()):
                return False
        return True


def load_pixel_rules(path: str | Path | None = None) -> tuple[PixelRule, ...]:
    """The burnt-in text rules of ``path`` (default: the shipped ``resources/deid/pixel_rules.toml``)."""
    if path is None:
        from hilum.resources import resource

        path = resource("deid/pixel_rules.toml")
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeidError(f"cannot read the pixel rules {path}: {exc}") from exc
    rules = []
    for i, r in enumerate(doc.get("rule", [])):
        unknown = set(r) - {"name", "regions", *PixelRule._KEYS}
        if unknown:
            raise DeidError(f"{path}: rule {i + 1}: unknown key(s) {', '.join(sorted(unknown))}")
        regions = tuple(tuple(int(v) for v in reg) for reg in r.get("regions", []))
        if not regions or any(len(reg) != 4 or reg[2] <= 0 or reg[3] <= 0 for reg in regions):
            raise DeidError(f"{path}: rule {i + 1}: regions must be [x, y, width, height] with width, height > 0")
        crit = {PixelRule._KEYS[k]: str(v) for k, v in r.items() if k in PixelRule._KEYS}
        rules.append(PixelRule(str(r.get("name", f"rule {i + 1}")), crit, regions))  # type: ignore[arg-type]
    return tuple(rules)


# -- results ----------------------------------------------------------------------------------------


@dataclass
class DeidResult:
    """What one de-identification did: the mapping for the node to keep, and anything to flag."""

    sop_uid: str  # the new SOP Instance UID
    original_sop_uid: str
    study_uid: str
    original_study_uid: str
    patient_id: str
    original_patient_id: str
    uids: dict[str, str] = field(default_factory=dict)  # original -> replacement, every UID replaced
    date_offset_days: int = 0
    pixel_rules: list[str] = field(default_factory=list)  # names of the pixel rules applied
    warnings: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # "(gggg,eeee) Keyword: action" (for --dry-run)


_CODE_MEANINGS = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113105": "Clean Descriptors Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113109": "Retain Device Identity Option",
}
_DUMMY_TEXT = "ANONYMIZED"
_DATE_RE = re.compile(r"\b(?:19|20)\d{2}[-/.]?(?:0[1-9]|1[0-2])[-/.]?(?:0[1-9]|[12]\d|3[01])\b")
_DIGITS_RE = re.compile(r"\d{6,}")
_DATE_LIKE_VR = ("DA", "DT")


class Deidentifier:
    """De-identifies datasets for one node secret, one project and one set of options.

    ``secret``: the node's key (bytes, :meth:`hilum.archive.deid_store.DeidStore.secret`); the same secret
    and project give the same UIDs, pseudonyms and date offsets on every run, so later studies of a
    patient join the earlier ones.  ``project`` separates studies: two projects' pseudonyms cannot be
    linked without the secret.  Thread-safe (no state is kept between calls).
    """

    def __init__(self, secret: bytes, options: Options = Options(), *, project: str = "",
                 pixel_rules: tuple[PixelRule, ...] | None = None) -> None:  # fmt: skip
        if len(secret) < 16:
            raise ValueError("the de-identification secret must be at least 16 bytes")
        self.options = options
        self.project = project
        self._key = hmac.new(secret, b"hilum-deid\x00" + project.encode("utf-8"), hashlib.sha256).digest()
        self.pixel_rules = (
            pixel_rules if pixel_rules is not None else (load_pixel_rules() if options.clean_pixels else ())
        )

    # -- deterministic replacements -----------------------------------------------------------------

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, kind.encode() + b"\x00" + value.encode("utf-8"), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The replacement of ``original``: ``2.25.`` and 128 bits of HMAC (PS3.5 B.2), at most 44 characters."""
        return "2.25." + str(int.from_bytes(self._digest("uid", original.strip())[:16], "big"))

    def pseudonym(self, patient_id: str, issuer: str = "") -> str:
        """The patient's new Patient ID (and name): ``ANON-`` and 12 base-32 characters."""
        d = self._digest("patient", f"{issuer}\x00{patient_id}")
        import base64

        return "ANON-" + base64.b32encode(d[:10]).decode("ascii")[:12]

    def date_offset(self, patient_id: str, issuer: str = "") -> int:
        """Days added to every date of this patient (negative: whole weeks, 1 to 520, into the past)."""
        d = self._digest("dates", f"{issuer}\x00{patient_id}")
        return -7 * (1 + int.from_bytes(d[:4], "big") % 520)

    # -- the work -----------------------------------------------------------------------------------

    def deidentify_bytes(
        self, data: bytes | bytearray | memoryview, *, dry_run: bool = False
    ) -> tuple[bytes, DeidResult]:
        """A Part 10 file de-identified; returns the new file's bytes and what was done."""
        try:
            ds = pydicom.dcmread(io.BytesIO(bytes(data)), force=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises assorted errors on bad files
            raise DeidError(f"cannot read the instance: {exc}") from exc
        result = self.deidentify(ds, dry_run=dry_run)
        buf = io.BytesIO()
        if dry_run:
            return b"", result
        ts = ds.file_meta.TransferSyntaxUID
        implicit, little = getattr(ds, "original_encoding", (None, None))
        if (implicit, little) != (ts.is_implicit_VR, ts.is_little_endian):
            for _ in ds.iterall():  # elements kept raw are re-encoded for the file's (declared) syntax
                pass
        try:
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        except Exception as exc:  # noqa: BLE001 - pydicom's encoders raise assorted errors on odd values
            raise DeidError(f"cannot write the de-identified instance: {exc}") from exc
        return buf.getvalue(), result

    def deidentify(self, ds: Dataset, *, dry_run: bool = False) -> DeidResult:
        """De-identify ``ds`` in place (a Part 10 dataset, or a bare one: file meta is made)."""
        if "SOPInstanceUID" not in ds:
            raise DeidError("the instance has no SOP Instance UID")
        opts = self.options
        pid, issuer = str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or "")
        new_pid = self.pseudonym(pid, issuer)
        offset = self.date_offset(pid, issuer) if opts.retain_dates else 0
        result = DeidResult(
            sop_uid=self.uid(str(ds.SOPInstanceUID)), original_sop_uid=str(ds.SOPInstanceUID),
            study_uid=self.uid(str(ds.get("StudyInstanceUID", ""))), original_study_uid=str(ds.get("StudyInstanceUID", "")),
            patient_id=new_pid, original_patient_id=pid, date_offset_days=offset,
        )  # fmt: skip
        if opts.clean_pixels or str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            self._pixels(ds, result, dry_run)
        scrub = self._identifiers(ds) if opts.clean_descriptors else None
        self._walk(ds, result, offset, scrub, dry_run, top=True)
        if dry_run:
            return result
        ds.PatientID = new_pid
        ds.PatientName = new_pid
        if "StudyID" in ds:  # Z allows a dummy: DICOMDIR STUDY records need one (PS3.3 F.5)
            ds.StudyID = self.pseudonym("study", str(ds.get("StudyInstanceUID", "")))[5:13]
        ds.PatientIdentityRemoved = "YES"
        codes = ["113100"]
        if opts.clean_pixels:
            codes.append("113101")
        if opts.clean_descriptors:
            codes.append("113105")
        if opts.retain_dates:
            codes.append("113107")
        if opts.retain_device:
            codes.append("113109")
        ds.DeidentificationMethod = ["Hilum PS3.15 E.1-1", *(_CODE_MEANINGS[c][:64] for c in codes[1:])]
        items = []
        for c in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = c, "DCM", _CODE_MEANINGS[c]
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if opts.retain_dates else "REMOVED"
        if self.project:  # the Clinical Trial Subject module (PS3.3 C.7.1.3) names the project and the subject
            ds.ClinicalTrialSponsorName = self.project[:64]
            ds.ClinicalTrialProtocolID = self.project[:64]
            ds.ClinicalTrialProtocolName = self.project[:64]
            ds.ClinicalTrialSiteID = ""
            ds.ClinicalTrialSiteName = ""
            ds.ClinicalTrialSubjectID = new_pid
        self._file_meta(ds, result)
        return result

    def _file_meta(self, ds: Dataset, result: DeidResult) -> None:
        meta = getattr(ds, "file_meta", None)
        if meta is None:
            meta = FileMetaDataset()
            ds.file_meta = meta
        if "TransferSyntaxUID" not in meta:
            implicit = bool(getattr(ds, "original_encoding", (False, True))[0])
            meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for kw in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle", "ReceivingApplicationEntityTitle",
                   "PrivateInformationCreatorUID", "PrivateInformation"):  # fmt: skip
            if kw in meta:
                del meta[kw]

    def _identifiers(self, ds: Dataset) -> re.Pattern[str] | None:
        """A pattern of the instance's own identifying strings, to blank them out of free text."""
        words: set[str] = set()
        for kw in ("PatientName", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
                   "NameOfPhysiciansReadingStudy", "PatientBirthName", "PatientMotherBirthName"):  # fmt: skip
            for v in _values(ds.get(kw)):
                words.update(p for p in re.split(r"[\^=\s,]+", str(v)) if len(p) >= 2)
        for kw in ("PatientID", "OtherPatientIDs", "AccessionNumber", "StudyID", "InstitutionName",
                   "InstitutionAddress", "StationName", "PatientBirthDate", "PatientAddress", "DeviceSerialNumber"):  # fmt: skip
            for v in _values(ds.get(kw)):
                if len(str(v).strip()) >= 2:
                    words.add(str(v).strip())
        if not words:
            return None
        return re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)), re.IGNORECASE)

    def _walk(self, ds: Dataset, result: DeidResult, offset: int, scrub: re.Pattern[str] | None,
              dry_run: bool, *, top: bool) -> None:  # fmt: skip
        opts = self.options
        for tag in list(ds.keys()):
            if tag.group == 0x0002:
                continue
            if tag.is_private or (tag.group & 0xFF00) in (0x5000, 0x6000):
                result.changed.append(f"{tag} {'private' if tag.is_private else keyword_for_tag(tag)}: X")
                if not dry_run:
                    del ds[tag]
                continue
            action = _resolve(int(tag), opts)
            raw = ds.get_item(tag)
            known = raw.VR not in (None, "UN")  # implicit VR or UN (a sequence sent as UN...): the dictionary's
            vr = raw.VR if known else _dictionary_vr(tag)
            if action is None and vr in _DATE_LIKE_VR:
                # a date the (2020) table does not list (Instance Creation Date...): treated as the study's dates
                action = "S" if opts.retain_dates else "Z"
            if action is None and vr not in ("SQ", "UI") and known:
                continue  # kept as read: not even decoded (the writer copies raw elements fastest)
            elem = ds[tag]
            vr = elem.VR
            if action is None:
                if vr == "SQ":
                    for item in elem.value or ():
                        self._walk(item, result, offset, scrub, dry_run, top=False)
                elif vr == "UI":
                    self._remap(elem, result, dry_run)
                continue
            if top and elem.keyword in ("PatientID", "PatientName"):
                continue  # set to the pseudonym afterwards
            if action == "K":
                if vr == "SQ":
                    for item in elem.value or ():
                        self._walk(item, result, offset, scrub, dry_run, top=False)
                continue
            result.changed.append(f"{tag} {elem.keyword}: {action}")
            if dry_run and action != "U":
                continue
            if action == "X":
                del ds[tag]
            elif action == "Z":
                elem.value = Sequence() if vr == "SQ" else ("" if vr in _STRING_VRS else None)
            elif action == "U" or (action == "D" and vr == "UI"):
                if vr == "SQ":
                    for item in elem.value or ():
                        self._walk(item, result, offset, scrub, dry_run, top=False)
                elif vr == "UI":
                    self._remap(elem, result, dry_run)
                else:
                    del ds[tag]
            elif action == "D":
                if vr == "SQ":
                    for item in elem.value or ():
                        self._walk(item, result, offset, scrub, dry_run, top=False)
                else:
                    _dummy(ds, elem)
            elif action == "S":
                if vr in _DATE_LIKE_VR:
                    _shift(elem, offset)
                elif vr == "SQ":
                    for item in elem.value or ():
                        self._walk(item, result, offset, scrub, dry_run, top=False)
                # TM (and anything else) kept: only whole days move
            elif action == "C":
                if vr == "SQ":
                    for item in elem.value or ():
                        self._walk(item, result, offset, scrub, dry_run, top=False)
                elif vr in _STRING_VRS:
                    elem.value = _clean_text(elem.value, scrub)
                else:
                    del ds[tag]

    def _remap(self, elem: DataElement, result: DeidResult, dry_run: bool) -> None:
        values = _values(elem.value)
        out = []
        for v in values:
            s = str(v).strip()
            if not s or s in UID_dictionary:
                out.append(s)
                continue
            new = result.uids.get(s) or self.uid(s)
            result.uids[s] = new
            out.append(new)
        if not dry_run and values:
            elem.value = out if len(out) > 1 else out[0]

    def _pixels(self, ds: Dataset, result: DeidResult, dry_run: bool) -> None:
        rules = [r for r in self.pixel_rules if r.matches(ds)] if self.options.clean_pixels else []
        if not rules:
            if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
                msg = "Burned In Annotation is YES and no pixel rule covers this image"
                if not self.options.allow_burned_in:
                    raise DeidError(msg + " (add a rule to resources/deid/pixel_rules.toml, or allow it)")
                result.warnings.append(msg)
            return
        result.pixel_rules = [r.name for r in rules]
        if dry_run or "PixelData" not in ds:
            return
        from hilum.dicom.transcode import to_native

        if ds.file_meta.TransferSyntaxUID.is_compressed:
            to_native(ds)  # decoded frames; the UIDs are replaced below anyway
        arr = ds.pixel_array.copy()
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        view = arr.reshape((frames, rows, cols, -1))
        bits, signed = int(ds.get("BitsStored", ds.BitsAllocated)), int(ds.get("PixelRepresentation", 0)) == 1
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        black = high if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1" else low  # darkest stored value
        for r in rules:
            for x, y, w, h in r.regions:
                view[:, max(0, y) : min(rows, y + h), max(0, x) : min(cols, x + w), :] = black
        ds.PixelData = arr.tobytes()
        if int(ds.get("SamplesPerPixel", 1)) == 3:  # pixel_array gave RGB, interleaved (YBR converted)
            ds.PhotometricInterpretation, ds.PlanarConfiguration = "RGB", 0
        ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
        ds.BurnedInAnnotation = "NO"


_STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT", "UI"}
)


@cache
def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return list(value)
    return [value]


def _dummy(ds: Dataset, elem: DataElement) -> None:
    vr = elem.VR
    dummy: Any
    if vr == "PN":
        dummy = "ANONYMOUS"
    elif vr == "DA":
        dummy = "19000101"
    elif vr == "DT":
        dummy = "19000101000000"
    elif vr == "TM":
        dummy = "000000"
    elif vr == "AS":
        dummy = "000Y"
    elif vr in ("IS", "DS"):
        dummy = "0"
    elif vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
        dummy = 0
    elif vr in ("AE", "CS", "SH", "LO", "LT", "ST", "UT", "UC"):
        dummy = _DUMMY_TEXT
    else:
        del ds[elem.tag]
        return
    elem.value = dummy


def _shift(elem: DataElement, offset: int) -> None:
    out = []
    for v in _values(elem.value):
        s = str(v).strip()
        try:
            day = _dt.date(int(s[0:4]), int(s[4:6]), int(s[6:8])) + _dt.timedelta(days=offset)
        except (ValueError, IndexError):
            continue  # not a single full date (a range, a partial date): dropped rather than kept
        out.append(day.strftime("%Y%m%d") + s[8:])
    elem.value = (out if len(out) > 1 else out[0]) if out else ""


def _clean_text(value: Any, scrub: re.Pattern[str] | None) -> Any:
    def clean(s: str) -> str:
        if scrub is not None:
            s = scrub.sub("***", s)
        s = _DATE_RE.sub("***", s)
        return _DIGITS_RE.sub("***", s)

    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [clean(str(v)) for v in value]
    return clean(str(value)) if value is not None else value


def tag_of(keyword: str) -> int:
    """The tag number of a keyword (for tests and the CLI)."""
    return int(Tag(keyword))
