"""Hanging protocols: which layout and which series go where when a study opens (headless, no Qt).

A protocol is a TOML file: shipped in ``resources/hanging_protocols/`` and the
user's own in ``<data folder>/hanging_protocols/`` (a user file overrides a
shipped one of the same file name). It has match rules, each with a weight,
and ordered stages (the viewer's Next / Previous stage keys step through
them); each stage names a layout and, per viewport, a series selector::

    schema_version = 1
    name = "CT chest with reformats"

    [[match]]                       # every key of one rule must hold for its weight
    modality = "CT"                 # one of the study's modalities (a list: any of them)
    weight = 10
    required = true                 # the protocol does not apply without it

    [[match]]
    body_part = ["CHEST", "THORAX"] # Body Part Examined of one of its series
    weight = 5

    [[stage]]
    name = "Axial and reformats"
    layout = "2x2"                  # ROWSxCOLUMNS (hilum.ui.viewer.model.Layout)
    link_scroll = true              # optional: the stage's links (scroll, window, zoom)

    [[stage.viewport]]
    study = "current"               # or "prior 1", "prior 2", ...
    plane = "axial"                 # from Image Orientation (Patient): axial, coronal, sagittal, oblique
                                    # (a localizer only when image_type names LOCALIZER)
    image_type = ["!LOCALIZER"]     # Image Type values it must have ("!X": must not have)
    description = "(?i)lung"        # regex searched in the Series Description
    pick = "largest"                # first (lowest Series Number, the default), largest, last
    window = "Lung"                 # a window preset's name (hilum.ui.viewer.presets)
    fallback = true                 # nothing matches: the first series not yet placed
    # a viewport with no keys shows the next series not yet placed; `empty = true` leaves it empty

Match keys: ``modality``, ``body_part``, ``description`` (regex on the Study
Description), ``series_description`` (regex: some series of the study has it),
``series_plane`` (some series of the study lies in that plane), ``min_priors``
/ ``max_priors`` (local prior studies of the patient), ``min_series`` /
``max_series``, ``sex``, ``min_age`` / ``max_age`` (years at the study date).
Selector keys: ``study``, ``description``, ``plane``, ``modality``,
``image_type``, ``min_thickness`` / ``max_thickness`` (mm), ``pick``,
``fallback``, ``window``, ``empty``.

**Scoring**: a protocol applies when all its required rules hold and at least
one rule holds (or it has none: the generic fallback); its score is the sum of
the weights of the rules that hold. The best score wins; ties go to the more
specific one (more criteria held), then to the user's own, then by name. This
is the DICOM Hanging Protocol idea (PS3.3 C.23.1, Hanging Protocol Selection:
weighted selector attributes) in a form a reader edits by hand.

A file with a mistake is reported (file, line and key, reason) and skipped;
the others still apply (:func:`load_protocols`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hilum.errors import ConfigError
from hilum.resources import resource
from hilum.ui.viewer.model import Layout

__all__ = [
    "FOLDER",
    "PLANES",
    "Catalog",
    "LoadError",
    "MatchRule",
    "Placement",
    "Protocol",
    "ProtocolError",
    "SeriesFacts",
    "SeriesSelector",
    "Stage",
    "StudyFacts",
    "choose",
    "load_protocols",
    "parse_protocol",
    "place",
    "plane_of",
    "protocol_toml",
    "read_series_header",
    "save_protocol",
]

logger = logging.getLogger(__name__)

FOLDER = "hanging_protocols"
SCHEMA_VERSION = 1
PLANES = ("axial", "coronal", "sagittal", "oblique")
PICKS = ("first", "largest", "last")
OBLIQUE_COSINE = 0.8
"""A plane is axial/coronal/sagittal when its normal is within ~37° (cos 0.8) of that axis, else oblique."""


# --------------------------------------------------------------------------- facts


def plane_of(orientation: Sequence[float] | None) -> str:
    """``axial``, ``coronal``, ``sagittal`` or ``oblique`` from Image Orientation (Patient)
    (PS3.3 C.7.6.2.1.1, LPS): the patient axis the plane's normal is closest to; ``""`` unknown."""
    if orientation is None or len(orientation) != 6:
        return ""
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    n = np.cross(row, col)
    norm = float(np.linalg.norm(n))
    if not math.isfinite(norm) or norm < 1e-6:
        return ""
    a = np.abs(n / norm)
    i = int(np.argmax(a))
    if a[i] < OBLIQUE_COSINE:
        return "oblique"
    return ("sagittal", "coronal", "axial")[i]


@dataclass(frozen=True)
class SeriesFacts:
    """What selectors look at of one series: the archive's series row, and (``header=True``)
    what one image header adds (plane, Image Type, slice thickness)."""

    series_uid: str
    study: int = 0
    """0: the current study, N: prior N."""
    modality: str = ""
    description: str = ""
    number: int | None = None
    body_part: str = ""
    images: int = 0
    header: bool = False
    plane: str = ""
    image_type: tuple[str, ...] = ()
    thickness: float | None = None


def read_series_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Plane, Image Type and Slice Thickness of one image (its header only; enhanced
    multi-frame objects through their functional groups, :mod:`hilum.dicom.geometry`)."""
    import pydicom

    from hilum.dicom.geometry import image_orientation_of, slice_thickness_of

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    try:
        orientation = image_orientation_of(ds)
    except Exception:  # noqa: BLE001 - a malformed header: the plane is unknown
        orientation = None
    try:
        thickness = slice_thickness_of(ds)
    except Exception:  # noqa: BLE001
        thickness = None
    raw = ds.get("ImageType", None)
    values = [raw] if isinstance(raw, str) else list(raw or [])
    return {
        "plane": plane_of(orientation),
        "image_type": tuple(str(v).strip().upper() for v in values if str(v).strip()),
        "thickness": thickness,
    }


class Catalog:
    """The series of the current study and its priors, with image headers read on demand (once).

    ``series[study]`` lists the :class:`SeriesFacts` of one study (0 current, N prior N);
    ``paths[series_uid]`` the image a header is read from (its middle one).
    """

    def __init__(self, series: Mapping[int, Sequence[SeriesFacts]] | None = None,
                 paths: Mapping[str, str | os.PathLike[str]] | None = None, *,
                 reader: Callable[[str | os.PathLike[str]], dict[str, Any]] = read_series_header) -> None:  # fmt: skip
        self.series: dict[int, list[SeriesFacts]] = {k: list(v) for k, v in (series or {}).items()}
        self.paths: dict[str, str | os.PathLike[str]] = dict(paths or {})
        self.reader = reader
        self.headers_read = 0

    def add(self, study: int, facts: Iterable[SeriesFacts], paths: Mapping[str, str | os.PathLike[str]]) -> None:
        self.series[study] = list(facts)
        self.paths.update(paths)

    def of(self, study: int) -> list[SeriesFacts]:
        return self.series.get(study, [])

    def full(self, facts: SeriesFacts) -> SeriesFacts:
        """*facts* with its header read (cached in the catalog)."""
        if facts.header:
            return facts
        path = self.paths.get(facts.series_uid)
        values: dict[str, Any] = {}
        if path is not None:
            try:
                values = self.reader(path)
                self.headers_read += 1
            except Exception as exc:  # noqa: BLE001 - an unreadable file: the selectors see no header facts
                logger.warning("hanging protocols: cannot read the header of %s: %s", path, exc)
        full = SeriesFacts(**{**facts.__dict__, **values, "header": True})
        lst = self.series.get(facts.study, [])
        for i, f in enumerate(lst):
            if f.series_uid == facts.series_uid:
                lst[i] = full
        return full

    def planes(self, study: int = 0) -> frozenset[str]:
        return frozenset(self.full(f).plane for f in self.of(study)) - {""}

    def has_plane(self, planes: Iterable[str], study: int = 0) -> bool:
        """Some series of *study* lies in one of *planes* (headers read until one does)."""
        wanted = set(planes)
        return any(self.full(f).plane in wanted for f in self.of(study))


@dataclass
class StudyFacts:
    """What match rules look at of the study being opened."""

    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    description: str = ""
    n_series: int = 0
    n_priors: int = 0
    sex: str = ""
    age: float | None = None
    catalog: Catalog = field(default_factory=Catalog)

    @classmethod
    def from_rows(cls, study_row: Mapping[str, Any], series: Sequence[SeriesFacts], *, n_priors: int = 0,
                  catalog: Catalog | None = None) -> StudyFacts:  # fmt: skip
        """From the archive's STUDY row and the study's series facts."""
        mods = [m for m in str(study_row.get("ModalitiesInStudy") or "").replace("\\", ",").split(",") if m.strip()]
        mods += [s.modality for s in series]
        return cls(
            modalities=tuple(dict.fromkeys(m.strip().upper() for m in mods if m.strip())),
            body_parts=tuple(dict.fromkeys(s.body_part.strip().upper() for s in series if s.body_part.strip())),
            description=str(study_row.get("StudyDescription") or ""),
            n_series=len(series),
            n_priors=n_priors,
            sex=str(study_row.get("PatientSex") or "").strip().upper(),
            age=_age(str(study_row.get("PatientBirthDate") or ""), str(study_row.get("StudyDate") or "")),
            catalog=catalog or Catalog({0: series}),
        )


def _age(birth: str, at: str) -> float | None:
    try:
        b = (int(birth[:4]), int(birth[4:6]), int(birth[6:8]))
        s = (int(at[:4]), int(at[4:6]), int(at[6:8]))
    except (ValueError, IndexError):
        return None
    years = s[0] - b[0] - ((s[1], s[2]) < (b[1], b[2]))
    return float(years) if years >= 0 else None


# --------------------------------------------------------------------------- protocol model


class ProtocolError(ConfigError):
    """A protocol file that cannot be used: *path*, *where* (line and key) and *reason*."""

    def __init__(self, path: Path | None, where: str, reason: str) -> None:
        self.path = path
        self.where = where
        self.reason = reason
        name = path.name if path is not None else "<protocol>"
        super().__init__(f"{name}: {where}: {reason}" if where else f"{name}: {reason}")


@dataclass(frozen=True)
class LoadError:
    """One protocol file skipped, and why (as the log and the viewer's status say it)."""

    path: Path
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path.name}: {self.where}: {self.reason}" if self.where else f"{self.path.name}: {self.reason}"


def _pattern(value: str) -> re.Pattern[str]:
    return re.compile(value, re.IGNORECASE)


@dataclass(frozen=True)
class MatchRule:
    """One weighted rule; every criterion it names must hold."""

    weight: float = 1.0
    required: bool = False
    modality: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    description: re.Pattern[str] | None = None
    series_description: re.Pattern[str] | None = None
    series_plane: tuple[str, ...] = ()
    min_priors: int | None = None
    max_priors: int | None = None
    min_series: int | None = None
    max_series: int | None = None
    sex: str = ""
    min_age: float | None = None
    max_age: float | None = None

    @property
    def criteria(self) -> int:
        """How many criteria the rule names (its specificity)."""
        skip = {"weight", "required"}
        return sum(1 for k, v in self.__dict__.items() if k not in skip and v not in (None, (), ""))

    def holds(self, study: StudyFacts) -> bool:
        if self.modality and not set(self.modality) & set(study.modalities):
            return False
        if self.body_part and not set(self.body_part) & set(study.body_parts):
            return False
        if self.description is not None and not self.description.search(study.description):
            return False
        if self.min_priors is not None and study.n_priors < self.min_priors:
            return False
        if self.max_priors is not None and study.n_priors > self.max_priors:
            return False
        if self.min_series is not None and study.n_series < self.min_series:
            return False
        if self.max_series is not None and study.n_series > self.max_series:
            return False
        if self.sex and study.sex != self.sex:
            return False
        if self.min_age is not None and (study.age is None or study.age < self.min_age):
            return False
        if self.max_age is not None and (study.age is None or study.age > self.max_age):
            return False
        if self.series_description is not None:
            pat = self.series_description
            if not any(pat.search(s.description) for s in study.catalog.of(0)):
                return False
        if self.series_plane and not study.catalog.has_plane(self.series_plane):
            return False  # last: the only criterion that reads image headers
        return True


@dataclass(frozen=True)
class SeriesSelector:
    """Which series one viewport shows (see the module docstring for the keys)."""

    study: int = 0
    description: re.Pattern[str] | None = None
    plane: str = ""
    modality: tuple[str, ...] = ()
    image_type: tuple[str, ...] = ()
    min_thickness: float | None = None
    max_thickness: float | None = None
    pick: str = "first"
    fallback: bool = False
    window: str = ""
    empty: bool = False

    @property
    def is_any(self) -> bool:
        """No criterion: the next series of its study not yet placed."""
        return (self.description is None and not self.plane and not self.modality and not self.image_type
                and self.min_thickness is None and self.max_thickness is None)  # fmt: skip

    @property
    def needs_header(self) -> bool:
        return bool(self.plane or self.image_type) or self.min_thickness is not None or self.max_thickness is not None

    def matches(self, s: SeriesFacts, catalog: Catalog | None = None) -> bool:
        if s.study != self.study:
            return False
        if self.modality and s.modality.upper() not in self.modality:
            return False
        if self.description is not None and not self.description.search(s.description):
            return False
        if not self.needs_header:
            return True
        if not s.header:
            if catalog is None:
                return False
            s = catalog.full(s)
        if self.plane and s.plane != self.plane:
            return False
        if self.plane and "LOCALIZER" in s.image_type and not any("LOCALIZER" in t for t in self.image_type):
            return False  # a scout lies in a plane too, but "coronal" means a coronal series
        for token in self.image_type:
            want = not token.startswith("!")
            if (token.lstrip("!") in s.image_type) != want:
                return False
        if self.min_thickness is not None and (s.thickness is None or s.thickness < self.min_thickness - 1e-6):
            return False
        if self.max_thickness is not None and (s.thickness is None or s.thickness > self.max_thickness + 1e-6):
            return False
        return True

    def describe(self) -> str:
        parts = ["current" if self.study == 0 else f"prior {self.study}"]
        if self.plane:
            parts.append(self.plane)
        if self.description is not None:
            parts.append(f"/{self.description.pattern}/")
        if self.modality:
            parts.append("|".join(self.modality))
        if self.image_type:
            parts.append(",".join(self.image_type))
        return " ".join(parts)


@dataclass(frozen=True)
class Stage:
    name: str
    layout: Layout
    viewports: tuple[SeriesSelector, ...]
    link_scroll: bool | None = None
    link_window: bool | None = None
    link_zoom: bool | None = None

    @property
    def priors_needed(self) -> int:
        """The highest prior number a viewport of this stage asks for (0: current study only)."""
        return max((v.study for v in self.viewports), default=0)


@dataclass(frozen=True)
class Protocol:
    name: str
    rules: tuple[MatchRule, ...]
    stages: tuple[Stage, ...]
    path: Path | None = None
    user: bool = False

    def score(self, study: StudyFacts) -> tuple[float, int] | None:
        """``(score, specificity)`` when the protocol applies to *study*, else None."""
        total, specific, held = 0.0, 0, 0
        for rule in sorted(self.rules, key=lambda r: r.series_plane != ()):  # header-reading rules last
            if rule.holds(study):
                total += rule.weight
                specific += rule.criteria
                held += 1
            elif rule.required:
                return None
        if self.rules and not held:
            return None
        return total, specific


# --------------------------------------------------------------------------- parsing

_MATCH_KEYS = {"weight", "required", "modality", "body_part", "description", "series_description", "series_plane",
               "min_priors", "max_priors", "min_series", "max_series", "sex", "min_age", "max_age"}  # fmt: skip
_SELECTOR_KEYS = {"study", "description", "plane", "modality", "image_type", "min_thickness", "max_thickness", "pick",
                  "fallback", "window", "empty"}  # fmt: skip
_STAGE_KEYS = {"name", "layout", "viewport", "link_scroll", "link_window", "link_zoom"}
_TOP_KEYS = {"schema_version", "name", "match", "stage", "description"}


class _Reader:
    """Helpers that turn a TOML table into fields, raising :class:`ProtocolError` with the line."""

    def __init__(self, text: str, path: Path | None) -> None:
        self.lines = text.splitlines()
        self.path = path

    def line_of(self, table: str, key: str) -> int | None:
        """The line (1-based) of *key* in the table *table* names (``stage[2].viewport[1]``; ``""``:
        the top level), or of the table's header without a *key*: headers are counted."""
        start, prefix = -1, ""
        for name, nth in re.findall(r"(\w+)\[(\d+)\]", table):
            prefix = f"{prefix}.{name}" if prefix else name
            header = re.compile(rf"^\s*\[\[\s*{re.escape(prefix)}\s*\]\]")
            hits = [i for i in range(start + 1, len(self.lines)) if header.match(self.lines[i])]
            if len(hits) < int(nth):
                return None
            start = hits[int(nth) - 1]
        if not key:
            return start + 1 if start >= 0 else None
        pat = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i in range(start + 1, len(self.lines)):
            if re.match(r"^\s*\[", self.lines[i]):
                break  # the next table
            if pat.match(self.lines[i]):
                return i + 1
        return None

    def error(self, where: str, key: str, reason: str) -> ProtocolError:
        if key and (where == key or where.endswith(f".{key}")):
            table = where[: -len(key)].rstrip(".")
        else:
            table, key = where, ""
        line = self.line_of(table, key)
        loc = f"line {line}, {where}" if line is not None else where
        return ProtocolError(self.path, loc, reason)

    def check_keys(self, table: Mapping[str, Any], allowed: set[str], where: str) -> None:
        for k in table:
            if k not in allowed:
                raise self.error(
                    f"{where}.{k}" if where else k, k, f"unknown key {k!r} (known: {', '.join(sorted(allowed))})"
                )

    def strings(self, value: Any, where: str, key: str, *, upper: bool = True) -> tuple[str, ...]:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise self.error(where, key, "must be a text or a list of texts")
        return tuple(v.strip().upper() if upper else v.strip() for v in values if v.strip())

    def regex(self, value: Any, where: str, key: str) -> re.Pattern[str]:
        if not isinstance(value, str):
            raise self.error(where, key, "must be a text (a regular expression)")
        try:
            return _pattern(value)
        except re.error as exc:
            raise self.error(where, key, f"invalid regular expression {value!r}: {exc}") from exc

    def number(self, value: Any, where: str, key: str, *, integer: bool = False) -> float:
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if not ok or isinstance(value, bool) or value < 0:
            raise self.error(where, key, f"must be a {'whole ' if integer else ''}number >= 0, not {value!r}")
        return value

    def flag(self, value: Any, where: str, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(where, key, f"must be true or false, not {value!r}")
        return value


def _study_index(text: Any) -> int | None:
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    if not isinstance(text, str):
        return None
    t = text.strip().lower()
    if t in ("current", "this", ""):
        return 0
    m = re.fullmatch(r"prior\s*(\d+)", t)
    return int(m.group(1)) if m and int(m.group(1)) >= 1 else None


def _rule(r: _Reader, item: Any, where: str) -> MatchRule:
    if not isinstance(item, dict):
        raise r.error(where, "", "must be a table ([[match]])")
    r.check_keys(item, _MATCH_KEYS, where)
    kw: dict[str, Any] = {}
    for k, v in item.items():
        w = f"{where}.{k}"
        if k == "weight":
            kw[k] = float(r.number(v, w, k))
        elif k == "required":
            kw[k] = r.flag(v, w, k)
        elif k in ("modality", "body_part"):
            kw[k] = r.strings(v, w, k)
        elif k == "series_plane":
            planes = tuple(p.lower() for p in r.strings(v, w, k))
            bad = [p for p in planes if p not in PLANES]
            if bad:
                raise r.error(w, k, f"unknown plane {bad[0]!r} (one of {', '.join(PLANES)})")
            kw[k] = planes
        elif k in ("description", "series_description"):
            kw[k] = r.regex(v, w, k)
        elif k in ("min_priors", "max_priors", "min_series", "max_series"):
            kw[k] = int(r.number(v, w, k, integer=True))
        elif k in ("min_age", "max_age"):
            kw[k] = float(r.number(v, w, k))
        elif k == "sex":
            sex = r.strings(v, w, k)
            if len(sex) != 1 or sex[0] not in ("M", "F", "O"):
                raise r.error(w, k, "must be M, F or O")
            kw[k] = sex[0]
    rule = MatchRule(**kw)
    if not rule.criteria:
        raise r.error(where, "", "names no criterion (modality, body_part, description, …)")
    return rule


def _selector(r: _Reader, item: Any, where: str) -> SeriesSelector:
    if not isinstance(item, dict):
        raise r.error(where, "", "must be a table ([[stage.viewport]])")
    r.check_keys(item, _SELECTOR_KEYS, where)
    kw: dict[str, Any] = {}
    for k, v in item.items():
        w = f"{where}.{k}"
        if k == "study":
            index = _study_index(v)
            if index is None:
                raise r.error(w, k, f'must be "current" or "prior N" (N >= 1), not {v!r}')
            kw[k] = index
        elif k == "description":
            kw[k] = r.regex(v, w, k)
        elif k == "plane":
            if not isinstance(v, str) or v.strip().lower() not in PLANES:
                raise r.error(w, k, f"must be one of {', '.join(PLANES)}, not {v!r}")
            kw[k] = v.strip().lower()
        elif k in ("modality", "image_type"):
            kw[k] = r.strings(v, w, k)
        elif k in ("min_thickness", "max_thickness"):
            kw[k] = float(r.number(v, w, k))
        elif k == "pick":
            if v not in PICKS:
                raise r.error(w, k, f"must be one of {', '.join(PICKS)}, not {v!r}")
            kw[k] = v
        elif k in ("fallback", "empty"):
            kw[k] = r.flag(v, w, k)
        elif k == "window":
            if not isinstance(v, str):
                raise r.error(w, k, "must be a window preset's name")
            kw[k] = v.strip()
    return SeriesSelector(**kw)


def _stage(r: _Reader, item: Any, where: str, number: int) -> Stage:
    if not isinstance(item, dict):
        raise r.error(where, "", "must be a table ([[stage]])")
    r.check_keys(item, _STAGE_KEYS, where)
    if "layout" not in item:
        raise r.error(where, "", 'has no layout (e.g. layout = "2x2")')
    try:
        layout = Layout.parse(str(item["layout"]))
    except ValueError as exc:
        raise r.error(f"{where}.layout", "layout", str(exc)) from exc
    viewports = item.get("viewport", [])
    if not isinstance(viewports, list) or not viewports:
        raise r.error(where, "", "has no viewport ([[stage.viewport]] tables, one per viewport, row by row)")
    if len(viewports) > layout.count:
        raise r.error(f"{where}.layout", "layout", f"{len(viewports)} viewports do not fit layout {layout.name}")
    sels = tuple(_selector(r, v, f"{where}.viewport[{i + 1}]") for i, v in enumerate(viewports))
    links = {k: r.flag(item[k], f"{where}.{k}", k) for k in ("link_scroll", "link_window", "link_zoom") if k in item}
    name = item.get("name", f"Stage {number}")
    if not isinstance(name, str):
        raise r.error(f"{where}.name", "name", "must be a text")
    return Stage(name=name, layout=layout, viewports=sels, **links)


def parse_protocol(text: str, path: Path | None = None, *, user: bool = False) -> Protocol:
    """A protocol from its TOML text; raises :class:`ProtocolError` (file, line/key, reason)."""
    r = _Reader(text, path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"line {m.group(1)}, column {m.group(2)}" if m else ""
        raise ProtocolError(path, where, f"not valid TOML: {re.sub(r' [(]at line.*', '', str(exc))}") from exc
    r.check_keys(data, _TOP_KEYS, "")
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise r.error("schema_version", "schema_version", f"{version!r} is newer than this Hilum understands")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise r.error("name", "name", 'a protocol needs a name (name = "…")')
    matches = data.get("match", [])
    if not isinstance(matches, list):
        raise r.error("match", "match", "must be [[match]] tables")
    stages = data.get("stage", [])
    if not isinstance(stages, list) or not stages:
        raise r.error("stage", "", "a protocol needs at least one [[stage]]")
    rules = tuple(_rule(r, m, f"match[{i + 1}]") for i, m in enumerate(matches))
    st = tuple(_stage(r, s, f"stage[{i + 1}]", i + 1) for i, s in enumerate(stages))
    return Protocol(name=name.strip(), rules=rules, stages=st, path=path, user=user)


_CACHE: dict[Path, tuple[tuple[int, int], Protocol | LoadError]] = {}


def _load_file(path: Path, user: bool) -> Protocol | LoadError:
    try:
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
        hit = _CACHE.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return LoadError(path, "", f"cannot read: {exc}")
    out: Protocol | LoadError
    try:
        out = parse_protocol(text, path, user=user)
    except ProtocolError as exc:
        out = LoadError(path, exc.where, exc.reason)
    _CACHE[path] = (key, out)
    return out


def shipped_folder() -> Path:
    return resource(FOLDER)


def user_folder(data_dir: str | os.PathLike[str] | None) -> Path | None:
    return Path(data_dir) / FOLDER if data_dir else None


def load_protocols(data_dir: str | os.PathLike[str] | None = None, *,
                   shipped: Path | None = None) -> tuple[list[Protocol], list[LoadError]]:  # fmt: skip
    """The protocols in force: the shipped ones and the user's (same file name: the user's wins).

    A file that cannot be used is logged (file, line/key, reason) and returned in the errors;
    the others still apply.
    """
    files: dict[str, tuple[Path, bool]] = {}
    folders = [(shipped or shipped_folder(), False)]
    uf = user_folder(data_dir)
    if uf is not None:
        folders.append((uf, True))
    for folder, user in folders:
        if folder.is_dir():
            for p in sorted(folder.glob("*.toml")):
                files[p.name] = (p, user)
    protocols: list[Protocol] = []
    errors: list[LoadError] = []
    for _name, (p, user) in sorted(files.items()):
        got = _load_file(p, user)
        if isinstance(got, LoadError):
            logger.warning("hanging protocol skipped: %s", got)
            errors.append(got)
        else:
            protocols.append(got)
    return protocols, errors


def choose(protocols: Iterable[Protocol], study: StudyFacts) -> Protocol | None:
    """The best-scoring protocol that applies to *study* (ties: specificity, the user's, name)."""
    best: tuple[tuple[float, int, bool, str], Protocol] | None = None
    for p in protocols:
        s = p.score(study)
        if s is None:
            continue
        key = (s[0], s[1], p.user, p.name)
        if best is None or key[:3] > best[0][:3] or (key[:3] == best[0][:3] and key[3] < best[0][3]):
            best = (key, p)
    return best[1] if best is not None else None


# --------------------------------------------------------------------------- placing series


@dataclass(frozen=True)
class Placement:
    """What one viewport of a stage shows: a series (None: left empty) and why."""

    viewport: int
    selector: SeriesSelector
    series: SeriesFacts | None
    note: str = ""


def _pick(candidates: list[SeriesFacts], how: str) -> SeriesFacts:
    by_number = sorted(candidates, key=lambda s: (s.number is None, s.number or 0, s.description))
    if how == "largest":
        return max(by_number, key=lambda s: s.images)  # the first of the largest
    if how == "last":
        return by_number[-1]
    return by_number[0]


def place(stage: Stage, catalog: Catalog, *, missing_priors: Mapping[int, str] | None = None) -> list[Placement]:
    """The series of each viewport of *stage* (row by row), from the catalog's studies.

    A viewport prefers a series no earlier viewport of the stage shows; when none is left it
    shows one again (e.g. the same axial series with a lung and a mediastinal window). Nothing
    matches: the first series not yet placed when the selector has ``fallback``, else empty.
    *missing_priors* says why a prior is not in the catalog (``{1: "not found"}``).
    """
    used: list[str] = []
    out: list[Placement] = []
    for i, sel in enumerate(stage.viewports):
        if sel.empty:
            out.append(Placement(i, sel, None))
            continue
        series = catalog.of(sel.study)
        if sel.study and sel.study not in catalog.series:
            why = (missing_priors or {}).get(sel.study, "not found")
            out.append(Placement(i, sel, None, f"prior {sel.study} {why}"))
            continue
        chosen: SeriesFacts | None = None
        if sel.pick == "first":  # in Series Number order, headers read only until a series matches
            ordered = sorted(series, key=lambda s: (s.number is None, s.number or 0, s.description))
            unused = [s for s in ordered if s.series_uid not in used]
            chosen = next((s for s in unused if sel.matches(s, catalog)), None)
            if chosen is None and not sel.is_any:  # an explicit selector may show a series again
                chosen = next((s for s in ordered if s.series_uid in used and sel.matches(s, catalog)), None)
        else:
            cands = [s for s in series if sel.matches(s, catalog)]
            fresh = [s for s in cands if s.series_uid not in used]
            pool = fresh if (fresh or sel.is_any) else cands
            chosen = _pick(pool, sel.pick) if pool else None
        note = ""
        if chosen is None and sel.fallback:
            rest = [s for s in series if s.series_uid not in used]
            chosen = _pick(rest, "first") if rest else None
            note = f"no series matched ({sel.describe()}): fallback" if chosen is not None else ""
        if chosen is None and not note:
            note = f"no series matched ({sel.describe()})"
        if chosen is not None:
            used.append(chosen.series_uid)
        out.append(Placement(i, sel, chosen, note))
    return out


# --------------------------------------------------------------------------- writing


def _toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return _toml_string(str(v))


def protocol_toml(name: str, rules: Sequence[Mapping[str, Any]], stages: Sequence[Mapping[str, Any]]) -> str:
    """TOML text of a protocol (*rules*: ``[[match]]`` tables; *stages*: ``[[stage]]`` tables, their
    ``viewport`` a list of selector tables), in the layout of the shipped files."""
    out = [f"# Hilum hanging protocol (saved from the viewer; edit freely: see resources/{FOLDER}/README.md)",
           f"schema_version = {SCHEMA_VERSION}", f"name = {_toml_string(name)}", ""]  # fmt: skip
    for rule in rules:
        out.append("[[match]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in rule.items()]
        out.append("")
    for stage in stages:
        out.append("[[stage]]")
        out += [f"{k} = {_toml_value(v)}" for k, v in stage.items() if k != "viewport"]
        out.append("")
        for vp in stage.get("viewport", []):
            out.append("[[stage.viewport]]")
            out += [f"{k} = {_toml_value(v)}" for k, v in vp.items()]
            out.append("")
    text = "\n".join(out)
    parse_protocol(text)  # what we write must read back
    return text


def file_name_for(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._") or "protocol"
    return f"{slug[:60]}.toml"


def save_protocol(data_dir: str | os.PathLike[str], name: str, text: str) -> Path:
    """Write a protocol to the user's folder (atomically); replaces one of the same file name."""
    folder = user_folder(data_dir)
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name_for(name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def exact(text: str) -> str:
    """A regular expression matching exactly *text* (case-insensitively: see :func:`_pattern`)."""
    return f"^{re.escape(text)}$"
