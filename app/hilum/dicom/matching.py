"""Attribute matching for queries, as PS3.4 C.2.2.2 defines it.

One parser turns a query key's value into a :class:`Matcher`; the matcher
both answers ``matches(value)`` in pure Python (used for in-memory filtering
and as the reference in tests) and describes itself precisely enough for the
archive to compile it into an index query.  C-FIND, QIDO-RS, the study
browser and the CLI all go through here, so they share one semantics:

* Universal matching (C.2.2.2.3): an empty value matches everything.
* Single value matching (C.2.2.2.1).
* Wild card matching (C.2.2.2.4): ``*`` any run of characters, ``?`` one
  character.  Not allowed on DA/TM/DT/UI (there a ``*`` alone means universal).
* Range matching (C.2.2.2.5) for DA, TM and DT, open-ended on either side;
  a combined date + time range (C.2.2.2.5.2) is supported by the archive.
* List of UID matching (C.2.2.2.2): ``uid1\\uid2``.
* Person names: compared case-insensitively and with trailing empty
  components ignored, per component group (alphabetic, ideographic,
  phonetic; PS3.5 6.2.1).  A value of one group (``Yamada*``, ``山田*``)
  matches a name when it matches any of its groups.  A value that names its
  groups with ``=`` (``*=山田*``, ``Yamada^Tarou=山田^太郎``) constrains each
  group it gives: every non-empty group must match the same group of the
  name, and an empty or ``*`` group constrains nothing (PS3.4 C.2.2.2.1.1,
  C.2.2.2.4).  So ``*=山田*`` asks for an ideographic name starting with 山田,
  not for everyone.  PS3.4 C.2.2.2.1.1 leaves case-sensitivity of PN to the
  implementation; most PACS, Orthanc and dcm4chee included, ignore case for
  names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "Matcher",
    "Universal",
    "Single",
    "Wildcard",
    "Range",
    "UidList",
    "AllOf",
    "parse_key",
    "normalize_pn",
    "pn_groups",
    "normalize_date",
    "normalize_time",
    "normalize_datetime",
    "vr_of",
]

# VRs of the keys the query engine knows.  Kept here (not looked up in the
# dictionary each time) because the engine needs it on every key of every query.
_KEY_VR: dict[str, str] = {
    "PatientName": "PN",
    "PatientID": "LO",
    "IssuerOfPatientID": "LO",
    "PatientBirthDate": "DA",
    "PatientSex": "CS",
    "StudyInstanceUID": "UI",
    "StudyDate": "DA",
    "StudyTime": "TM",
    "AccessionNumber": "SH",
    "StudyID": "SH",
    "StudyDescription": "LO",
    "ReferringPhysicianName": "PN",
    "ModalitiesInStudy": "CS",
    "SeriesInstanceUID": "UI",
    "Modality": "CS",
    "SeriesNumber": "IS",
    "SeriesDescription": "LO",
    "BodyPartExamined": "CS",
    "SeriesDate": "DA",
    "SeriesTime": "TM",
    "PerformedProcedureStepStartDate": "DA",
    "PerformedProcedureStepStartTime": "TM",
    "SOPInstanceUID": "UI",
    "SOPClassUID": "UI",
    "InstanceNumber": "IS",
    "ContentDate": "DA",
    "ContentTime": "TM",
    "NumberOfFrames": "IS",
    "SOPClassesInStudy": "UI",
}


def vr_of(keyword: str) -> str:
    """The VR of a query key (from the data dictionary when not a common one)."""
    vr = _KEY_VR.get(keyword)
    if vr is not None:
        return vr
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {keyword!r}")
    return str(dictionary_VR(tag))


# --------------------------------------------------------------------------- normalisation


def normalize_date(value: str) -> str:
    """A DA value as ``YYYYMMDD`` (accepts the old ``YYYY.MM.DD`` form too)."""
    v = value.strip().replace(".", "").replace("-", "")
    if not re.fullmatch(r"\d{8}", v):
        raise ValueError(f"invalid date {value!r}: expected YYYYMMDD")
    return v


def normalize_time(value: str, *, upper: bool = False) -> str:
    """A TM value as a fixed-width ``HHMMSS.FFFFFF`` so strings compare as times.

    A partial time (``14``, ``1430``) stands for the whole span it names
    (PS3.5 6.2, TM): padded with zeros as a lower bound, or with the largest
    value (``upper=True``) as an upper bound of a range.
    """
    v = value.strip().replace(":", "")
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", v)
    if not m:
        raise ValueError(f"invalid time {value!r}: expected HHMMSS.FFFFFF")
    hh, mm, ss, frac = m.groups()
    fill_mm, fill_ss, fill_frac = ("59", "59", "999999") if upper else ("00", "00", "000000")
    if frac is not None:
        frac = frac.ljust(6, "9" if upper else "0")
    return f"{hh}{mm or fill_mm}{ss or fill_ss}.{frac or fill_frac}"


def normalize_datetime(value: str, *, upper: bool = False) -> str:
    """A DT value (offset dropped) as ``YYYYMMDDHHMMSS.FFFFFF``."""
    v = value.strip()
    v = re.sub(r"[+-]\d{4}$", "", v)
    m = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?", v)
    if not m:
        raise ValueError(f"invalid datetime {value!r}")
    yyyy, mo, dd, t = m.groups()
    mo = mo or ("12" if upper else "01")
    dd = dd or ("31" if upper else "01")
    time = normalize_time(t, upper=upper) if t else ("235959.999999" if upper else "000000.000000")
    return f"{yyyy}{mo}{dd}{time}"


def pn_groups(value: str) -> tuple[str, str, str]:
    """The alphabetic, ideographic and phonetic groups of a PN, normalised for matching.

    Normalised: upper case (``str.upper``, so non-ASCII letters too),
    trailing empty components and spaces dropped (``Smith^John^^^`` is
    ``SMITH^JOHN``), PS3.5 6.2.1.
    """
    parts = (value or "").split("=")
    parts = (parts + ["", "", ""])[:3]
    return tuple(normalize_pn(p) for p in parts)  # type: ignore[return-value]


def normalize_pn(group: str) -> str:
    comps = [c.strip() for c in group.split("^")]
    while comps and not comps[-1]:
        comps.pop()
    return "^".join(comps).upper()


# --------------------------------------------------------------------------- matchers


@dataclass(frozen=True)
class Matcher:
    """How one query key selects values."""

    keyword: str
    vr: str
    kind: ClassVar[str] = "abstract"

    def matches(self, value: object) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Universal(Matcher):
    kind: ClassVar[str] = "universal"

    def matches(self, value: object) -> bool:
        return True


def _pn_candidates(value: object, group: int | None) -> list[str]:
    """The normalised component groups of a PN value a matcher looks at: all, or the one it names."""
    groups = pn_groups(str(value))
    return [g for g in (groups if group is None else (groups[group],)) if g]


@dataclass(frozen=True)
class Single(Matcher):
    """Single value matching; for PN ``value`` is a normalised group and ``group`` which
    component group it is for (0 alphabetic, 1 ideographic, 2 phonetic; None: any)."""

    value: str = ""
    group: int | None = None
    kind: ClassVar[str] = "single"

    def matches(self, value: object) -> bool:
        if value is None:
            return False
        if self.vr == "PN":
            return any(g == self.value for g in _pn_candidates(value, self.group))
        if self.vr in ("IS", "DS"):
            try:
                return float(str(value)) == float(self.value)
            except ValueError:
                return False
        if self.vr in _MULTI_VALUED:
            return self.value in _split_multi(value)
        return str(value).strip() == self.value


@dataclass(frozen=True)
class Wildcard(Matcher):
    """``*``/``?`` matching; ``pattern`` is the (normalised, for PN) query value."""

    pattern: str = "*"
    group: int | None = None  # PN: the component group it is for (None: any), as for Single
    kind: ClassVar[str] = "wildcard"

    @property
    def regex(self) -> re.Pattern[str]:
        body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in self.pattern)
        return re.compile(body, re.DOTALL)

    def like(self, escape: str = "\\") -> str:
        """The pattern as an SQL LIKE pattern with ``escape`` as escape character."""
        out = []
        for c in self.pattern:
            if c == "*":
                out.append("%")
            elif c == "?":
                out.append("_")
            elif c in ("%", "_", escape):
                out.append(escape + c)
            else:
                out.append(c)
        return "".join(out)

    def matches(self, value: object) -> bool:
        if value is None:
            return False
        rx = self.regex
        if self.vr == "PN":
            return any(rx.fullmatch(g) for g in _pn_candidates(value, self.group))
        if self.vr in _MULTI_VALUED:
            return any(rx.fullmatch(v) for v in _split_multi(value))
        return rx.fullmatch(str(value).strip()) is not None


@dataclass(frozen=True)
class Range(Matcher):
    """Range matching on DA/TM/DT; bounds are normalised, ``None`` is open."""

    low: str | None = None
    high: str | None = None
    kind: ClassVar[str] = "range"

    def matches(self, value: object) -> bool:
        if value is None or str(value).strip() == "":
            return False
        v = _normalize_for_vr(self.vr, str(value))
        if self.low is not None and v < self.low:
            return False
        if self.high is not None and v > self.high:
            return False
        return True


@dataclass(frozen=True)
class UidList(Matcher):
    """List of UID matching (C.2.2.2.2)."""

    values: tuple[str, ...] = ()
    kind: ClassVar[str] = "uids"

    def matches(self, value: object) -> bool:
        if value is None:
            return False
        if self.vr in _MULTI_VALUED:
            return bool(set(_split_multi(value)) & set(self.values))
        return str(value).strip() in self.values


@dataclass(frozen=True)
class AllOf(Matcher):
    """Several constraints on one key that must all hold: the component groups a PN value
    names (``Yamada*=山田*``), each a :class:`Single` or :class:`Wildcard` with its ``group``."""

    parts: tuple[Matcher, ...] = ()
    kind: ClassVar[str] = "all"

    def matches(self, value: object) -> bool:
        return all(p.matches(value) for p in self.parts)


# Keys whose stored value is itself multi-valued (``CT\MR``): a query value
# matches when it matches any one of the values.
_MULTI_VALUED = {"CS_MULTI"}


def _split_multi(value: object) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v for v in str(value).split("\\") if v]


def _normalize_for_vr(vr: str, value: str) -> str:
    if vr == "DA":
        return normalize_date(value)
    if vr == "TM":
        return normalize_time(value)
    if vr == "DT":
        return normalize_datetime(value)
    return value


def parse_key(keyword: str, value: object, *, vr: str | None = None) -> Matcher:
    """Parse one query key and its value into a :class:`Matcher`.

    ``value`` is the key's value in DICOM string form (``None``/``""`` is
    universal).  Lists (e.g. from a QIDO ``StudyInstanceUID=a,b`` or a
    multi-valued UI element) become a UID list.  Raises ``ValueError`` on a
    malformed date/time/range, so adapters can answer 0xA900/400.
    """
    vr = vr or vr_of(keyword)
    if keyword == "ModalitiesInStudy":
        vr_eff = "CS_MULTI"
    else:
        vr_eff = vr
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value if v is not None and str(v).strip()]
        if not items:
            return Universal(keyword, vr_eff)
        if len(items) == 1:
            value = items[0]
        elif vr == "UI":
            return UidList(keyword, vr_eff, values=tuple(items))
        else:
            # Multiple values on a non-UID key: matches any (PS3.4 C.2.2.2.2
            # allows lists for UI only; QIDO's comma lists are treated alike).
            return UidList(keyword, vr_eff, values=tuple(items))
    text = "" if value is None else str(value)
    text = text.strip() if vr not in ("PN",) else text.strip(" ")
    if text == "" or text == "*":
        return Universal(keyword, vr_eff)
    if vr_eff in _MULTI_VALUED and "\\" in text:
        # Several ModalitiesInStudy values: any of them (PS3.4 C.6.2.1.2).
        return parse_key(keyword, text.split("\\"), vr=vr)
    if vr == "UI":
        if "\\" in text:
            return UidList(keyword, vr_eff, values=tuple(v.strip() for v in text.split("\\") if v.strip()))
        return Single(keyword, vr_eff, value=text)
    if vr in ("DA", "TM", "DT"):
        if "-" in text and not (vr == "DT" and re.fullmatch(r"[^-]*[+-]\d{4}", text)):
            low_s, _, high_s = text.partition("-")
            low = _normalize_for_vr(vr, low_s) if low_s.strip() else None
            high = _normalize_bound(vr, high_s) if high_s.strip() else None
            if low is None and high is None:
                return Universal(keyword, vr_eff)
            if low is not None and high is not None and low > high:
                raise ValueError(f"{keyword}: empty range {text!r}")
            return Range(keyword, vr_eff, low=low, high=high)
        if vr == "DA":
            return Single(keyword, vr_eff, value=normalize_date(text))
        # A single TM/DT value names a span (e.g. "14" is 14:00-14:59): a range.
        return Range(keyword, vr_eff, low=_normalize_for_vr(vr, text), high=_normalize_bound(vr, text))
    if vr == "PN":
        if "=" not in text:
            norm = normalize_pn(text)
            return _pn_matcher(keyword, vr_eff, norm, None) if norm else Universal(keyword, vr_eff)
        parts = []
        for group, raw in enumerate(text.split("=")[:3]):
            norm = normalize_pn(raw)
            if norm.strip("*"):  # an empty or all-"*" group constrains nothing
                parts.append(_pn_matcher(keyword, vr_eff, norm, group))
        if not parts:
            return Universal(keyword, vr_eff)
        return parts[0] if len(parts) == 1 else AllOf(keyword, vr_eff, parts=tuple(parts))
    if "*" in text or "?" in text:
        return Wildcard(keyword, vr_eff, pattern=text)
    return Single(keyword, vr_eff, value=text)


def _pn_matcher(keyword: str, vr: str, norm: str, group: int | None) -> Matcher:
    if "*" in norm or "?" in norm:
        return Wildcard(keyword, vr, pattern=norm, group=group)
    return Single(keyword, vr, value=norm, group=group)


def _normalize_bound(vr: str, value: str) -> str:
    if vr == "DA":
        return normalize_date(value)
    if vr == "TM":
        return normalize_time(value, upper=True)
    return normalize_datetime(value, upper=True)
