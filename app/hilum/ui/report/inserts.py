"""Insert-from-study: the text the report editor inserts for measurements, key images, the comparison
study and AI findings (headless: no Qt; the editor binds one key to each).

- **Measurements** — the viewer's annotations (what is on screen, saved or not), or the study's
  measurement SRs from the archive (TID 1500 or another system's, :func:`hilum.dicom.sr.read_sr_measurements`):
  one line each, ``Length 23.4 mm (series 3, image 45)``; a labelled one ``AP diameter: Length …``;
  a region ``Area 120.5 mm², mean 35.2 HU, SD 4.1 (series 3, image 45)``.
- **Key images** — ``Key images: series 3 image 45; series 3 image 60`` (the viewer's, or the
  newest Key Object Selection of the study).
- **Comparison** — ``CT 2024-03-01 (CT chest), 1 y 2 m earlier.`` from a
  :class:`hilum.priors.Prior` (the study compared in the viewer, else the most relevant prior).
- **AI findings** — the SRs of the study whose Series Description starts ``AI:``, read with
  highdicom's TID 1500 parser (finding, tracking label, measurements, qualitative evaluations),
  one line per finding: ``AI (Lung fields 1.0.0): Lung, Volume 3400 mL (series 100)``.

Numbers use the report's language: a decimal comma in French (``23,4 mm``), and the words of
:data:`WORDS`. Series and image are the Series Number and Instance Number from the archive's index
(:func:`image_index`); a frame of a multi-frame image is ``image 45 frame 3``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "AI_PREFIX",
    "ImageRef",
    "WORDS",
    "ai_finding_lines",
    "archive_key_images",
    "archive_measurements",
    "comparison_text",
    "format_measurement",
    "image_index",
    "key_image_text",
    "measurement_lines",
    "number",
]

log = logging.getLogger(__name__)

AI_PREFIX = "AI:"
SR_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
})  # fmt: skip
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
NON_IMAGE = frozenset({"SR", "DOC", "KO", "PR", "SEG", "REG", "RWV", "AU", "ECG"})
"""Modalities of a study that are documents or derived objects, not images (left out of the comparison)."""

WORDS: dict[str, dict[str, str]] = {
    "en": {
        "length": "Length", "angle": "Angle", "cobb": "Cobb angle", "area": "Area", "mean": "mean",
        "sd": "SD", "min": "min", "max": "max", "value": "Value", "series": "series", "image": "image",
        "frame": "frame", "key_images": "Key images", "earlier": "earlier", "no_measurements": "",
        "no_description": "no description", "none": "None.", "score": "score",
    },
    "fr": {
        "length": "Longueur", "angle": "Angle", "cobb": "Angle de Cobb", "area": "Surface", "mean": "moyenne",
        "sd": "écart-type", "min": "min", "max": "max", "value": "Valeur", "series": "série", "image": "image",
        "frame": "trame", "key_images": "Images clés", "earlier": "auparavant", "no_measurements": "",
        "no_description": "sans description", "none": "Aucun.", "score": "score",
    },
}  # fmt: skip


def _w(language: str, key: str) -> str:
    return WORDS.get(language, WORDS["en"]).get(key, WORDS["en"][key])


def number(value: float, language: str = "en", digits: int = 1) -> str:
    """``23.4`` (English) or ``23,4`` (French); integers-valued numbers of 0 digits without a point."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    text = f"{value:.{digits}f}"
    return text.replace(".", ",") if language == "fr" else text


@dataclass(frozen=True)
class ImageRef:
    """Where an image is, as a reader names it: Series Number, Instance Number, Series Description."""

    series_number: int | None
    instance_number: int | None
    series_description: str = ""
    series_uid: str = ""

    def text(self, language: str = "en", frame: int = 0, frames: int = 1) -> str:
        parts = []
        if self.series_number is not None:
            parts.append(f"{_w(language, 'series')} {self.series_number}")
        if self.instance_number is not None:
            parts.append(f"{_w(language, 'image')} {self.instance_number}")
        if frames > 1:
            parts.append(f"{_w(language, 'frame')} {frame + 1}")
        return ", ".join(parts)


def _int(v: Any) -> int | None:
    try:
        return None if v in (None, "") else int(v)
    except (TypeError, ValueError):
        return None


def image_index(archive: Any, study_uid: str) -> dict[str, ImageRef]:
    """SOP Instance UID → :class:`ImageRef` for every instance of the study (one index query)."""
    out: dict[str, ImageRef] = {}
    for r in archive.query("IMAGE", {"StudyInstanceUID": study_uid}):
        out[str(r.get("SOPInstanceUID", ""))] = ImageRef(
            _int(r.get("SeriesNumber")),
            _int(r.get("InstanceNumber")),
            str(r.get("SeriesDescription", "") or ""),
            str(r.get("SeriesInstanceUID", "") or ""),
        )
    return out


# ------------------------------------------------------------------ measurements


def format_measurement(kind: str, values: Mapping[str, Any], *, label: str = "", where: str = "",
                       language: str = "en") -> str:  # fmt: skip
    """One measurement as a line (see the module docstring); *values* as
    :meth:`hilum.dicom.annotations.Annotation.values` gives them (or an SR's numbers by key)."""
    n = lambda v, d=1: number(float(v), language, d)  # noqa: E731
    body = ""
    if kind == "length" and "length" in values:
        body = f"{_w(language, 'length')} {n(values['length'])} {values.get('unit') or 'mm'}"
    elif kind in ("angle", "cobb") and "angle" in values:
        body = f"{_w(language, kind)} {n(values['angle'])}°"
    elif "area" in values:
        unit = values.get("area_unit") or "mm²"
        body = f"{_w(language, 'area')} {n(values['area'])} {unit}"
        u = f" {values['unit']}" if values.get("unit") else ""
        if values.get("mean") is not None and not _nan(values.get("mean")):
            body += f", {_w(language, 'mean')} {n(values['mean'])}{u}"
        if values.get("sd") is not None and not _nan(values.get("sd")):
            body += f", {_w(language, 'sd')} {n(values['sd'])}"
    elif kind == "point" and "value" in values and not _nan(values["value"]):
        u = f" {values['unit']}" if values.get("unit") else ""
        body = f"{_w(language, 'value')} {n(values['value'])}{u}"
    if not body:
        return ""
    line = f"{label}{_colon(language)}{body}" if label else body
    return f"{line} ({where})" if where else line


def _colon(language: str) -> str:
    """ ": " in English, " : " in French (a space before the colon)."""
    return " : " if language == "fr" else ": "


def _nan(v: Any) -> bool:
    try:
        return math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def measurement_lines(
    items: Iterable[tuple[Any, Mapping[str, Any]]], index: Mapping[str, ImageRef], language: str = "en"
) -> list[str]:
    """Lines for ``(annotation, values)`` pairs (:class:`hilum.dicom.annotations.Annotation`), in order
    of series and image; annotations without numbers (arrows, texts) give no line."""
    rows: list[tuple[tuple[int, int, int], str]] = []
    for ann, values in items:
        ref = index.get(ann.sop_instance_uid)
        where = ref.text(language, ann.frame, 2 if ann.frame else 1) if ref is not None else ""
        label = ann.text.strip() if getattr(ann, "text", "") else ""
        line = format_measurement(ann.kind, values, label=label, where=where, language=language)
        if line:
            key = (
                ref.series_number if ref and ref.series_number is not None else 1 << 30,
                ref.instance_number if ref and ref.instance_number is not None else 1 << 30,
                ann.frame,
            )
            rows.append((key, line))
    rows.sort(key=lambda r: r[0])
    return [line for _k, line in rows]


def _study_objects(archive: Any, study_uid: str, classes: frozenset[str]) -> list[dict[str, Any]]:
    return [r for r in archive.instances(study_uid=study_uid) if str(r.get("SOPClassUID", "")) in classes]


def _is_ai(row: Mapping[str, Any]) -> bool:
    return str(row.get("SeriesDescription", "") or "").startswith(AI_PREFIX)


def _when(row: Mapping[str, Any], ds: Any = None) -> str:
    if ds is not None:
        return f"{ds.get('ContentDate', '') or ''}{ds.get('ContentTime', '') or ''}"
    return ""


def archive_measurements(archive: Any, study_uid: str) -> list[tuple[Any, dict[str, Any]]]:
    """``(annotation, values)`` from the study's newest measurement SR (not the AI's, not reports:
    only SRs with measurements on images)."""
    import pydicom

    from hilum.dicom.sr import read_sr_measurements

    best: tuple[str, list[Any]] | None = None
    for row in _study_objects(archive, study_uid, SR_CLASSES):
        if _is_ai(row):
            continue
        try:
            ds = pydicom.dcmread(Path(row["path"]))
            ms = [m for m in read_sr_measurements(ds) if m.annotation is not None]
        except Exception as exc:  # noqa: BLE001 - one unreadable SR must not hide the others
            log.warning("cannot read SR %s: %s", row.get("SOPInstanceUID"), exc)
            continue
        if ms and (best is None or _when(row, ds) > best[0]):
            best = (_when(row, ds), ms)
    if best is None:
        return []
    grouped: dict[int, tuple[Any, dict[str, Any]]] = {}
    for m in best[1]:
        ann, values = grouped.setdefault(id(m.annotation), (m.annotation, {}))
        key = m.key or m.name.lower()
        if key == "area":
            values["area"], values["area_unit"] = m.value, m.unit
        elif key in ("mean", "sd", "min", "max"):
            values[key] = m.value
            values.setdefault("unit", m.unit)
        elif key == "length":
            values["length"], values["unit"] = m.value, m.unit
        elif key == "angle":
            values["angle"] = m.value
        elif ann.kind == "point":
            values["value"], values["unit"] = m.value, m.unit
    return list(grouped.values())


# ------------------------------------------------------------------ key images


def key_image_text(keys: Sequence[Any], index: Mapping[str, ImageRef], language: str = "en") -> str:
    """``Key images: series 3 image 45; series 3 image 60`` ("" without any)."""
    refs: list[tuple[tuple[int, int, int], str]] = []
    for k in keys:
        ref = index.get(k.sop_instance_uid)
        if ref is None:
            continue
        frame = int(getattr(k, "frame", 0) or 0)
        text = ref.text(language, frame, 2 if frame else 1).replace(", ", " ")
        refs.append(((ref.series_number or 0, ref.instance_number or 0, frame), text))
    if not refs:
        return ""
    refs.sort(key=lambda r: r[0])
    return f"{_w(language, 'key_images')}{_colon(language)}" + "; ".join(t for _k, t in refs) + "."


def archive_key_images(archive: Any, study_uid: str) -> list[Any]:
    """The key images of the study's newest Key Object Selection (``[]`` without one)."""
    import pydicom

    from hilum.dicom.sr import read_kos

    best: tuple[str, list[Any]] | None = None
    for row in _study_objects(archive, study_uid, frozenset({KOS_CLASS})):
        try:
            ds = pydicom.dcmread(Path(row["path"]))
            keys = list(read_kos(ds))
        except Exception as exc:  # noqa: BLE001
            log.warning("cannot read KOS %s: %s", row.get("SOPInstanceUID"), exc)
            continue
        if keys and (best is None or _when(row, ds) > best[0]):
            best = (_when(row, ds), keys)
    return best[1] if best else []


# ------------------------------------------------------------------ comparison


def comparison_text(prior: Any, current_date: str = "", language: str = "en") -> str:
    """The comparison study as one sentence (a :class:`hilum.priors.Prior` or None → "None.")."""
    from hilum.ui.viewer.priors_panel import age_text, date_text

    if prior is None:
        return _w(language, "none")
    modalities = "/".join(m for m in getattr(prior, "modalities", ()) or () if m not in NON_IMAGE) or "?"
    when = date_text(str(getattr(prior, "study_date", "") or ""))
    if language == "fr":
        when = "du " + when
    desc = str(getattr(prior, "description", "") or "") or _w(language, "no_description")
    text = f"{modalities} {when} ({desc})"
    age = age_text(str(getattr(prior, "study_date", "") or ""), current_date)
    if age and age != "later":
        if language == "fr":  # "1 y 8 m" -> "1 an 8 mois"
            units = {"y": "an", "m": "mois", "d": "j"}
            parts = age.split()
            age = " ".join(units.get(p, p) if i % 2 else p for i, p in enumerate(parts))
            age = age.replace("an", "ans") if age.split()[0] not in ("1", "0") and " an" in age else age
        text += f", {age} {_w(language, 'earlier')}"
    return text + "."


# ------------------------------------------------------------------ AI findings


def _meaning(code: Any) -> str:
    return str(getattr(code, "meaning", "") or getattr(code, "CodeMeaning", "") or "")


def _ai_groups(ds: Any) -> list[tuple[str, list[str]]]:
    """(finding, [measurement/evaluation texts]) of a TID 1500 SR, read with highdicom."""
    import highdicom as hd

    report = hd.sr.MeasurementReport.from_sequence([_root_item(ds)], is_root=True)
    out: list[tuple[str, list[str]]] = []
    groups: list[Any] = [
        *report.get_planar_roi_measurement_groups(),
        *report.get_volumetric_roi_measurement_groups(),
        *report.get_image_measurement_groups(),
    ]
    for g in groups:
        name = ""
        try:
            ft = g.finding_type
            name = _meaning(ft) if ft is not None else ""
        except (AttributeError, ValueError):
            pass
        label = str(getattr(g, "tracking_identifier", "") or "")
        title = name or label
        if name and label and label.lower() != name.lower():
            title = f"{name} ({label})"
        parts: list[str] = []
        for m in g.get_measurements():
            unit = _unit_text(m.unit)
            parts.append(f"{_meaning(m.name)} {float(m.value):.4g}" + (f" {unit}" if unit else ""))
        for q in g.get_qualitative_evaluations():
            parts.append(f"{_meaning(q.name)}: {_meaning(q.value)}")
        out.append((title, parts))
    return out


def _unit_text(code: Any) -> str:
    """A UCUM unit as its code (``mL``, ``mm2``), anything else by its meaning; "" for no units."""
    if code is None:
        return ""
    scheme = str(getattr(code, "scheme_designator", "") or "")
    text = str(getattr(code, "value", "") or "") if scheme == "UCUM" else _meaning(code)
    return "" if text in ("1", "no units", "{}") else text


def _root_item(ds: Any) -> Any:
    from pydicom.dataset import Dataset

    root = Dataset()
    for kw in ("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent", "ContentTemplateSequence",
               "ContentSequence"):  # fmt: skip
        if kw in ds:
            setattr(root, kw, ds[kw].value)
    return root


def ai_finding_lines(archive: Any, study_uid: str, language: str = "en") -> list[str]:
    """One line per finding of the study's AI SRs (Series Description ``AI: …``), oldest run first."""
    import pydicom

    found: list[tuple[str, list[str]]] = []
    for row in _study_objects(archive, study_uid, SR_CLASSES):
        if not _is_ai(row):
            continue
        source = str(row.get("SeriesDescription", ""))[len(AI_PREFIX) :].strip()
        series = _int(row.get("SeriesNumber"))
        where = f" ({_w(language, 'series')} {series})" if series is not None else ""
        ds = None
        try:
            ds = pydicom.dcmread(Path(row["path"]))
            groups = _ai_groups(ds)
        except Exception as exc:  # noqa: BLE001 - an SR highdicom cannot read: its numbers, walked
            log.info("AI SR %s is not TID 1500 for highdicom (%s): reading its numbers", row.get("SOPInstanceUID"), exc)
            try:
                from hilum.dicom.sr import read_sr_measurements

                ms = read_sr_measurements(pydicom.dcmread(Path(row["path"])))
                groups = [("", [f"{m.name} {m.value:.4g}" + (f" {m.unit}" if m.unit else "") for m in ms])]
            except Exception as exc2:  # noqa: BLE001
                log.warning("cannot read AI SR %s: %s", row.get("SOPInstanceUID"), exc2)
                continue
        when = _when(row, ds)
        lines = []
        for title, parts in groups:
            text = ", ".join(p for p in [title, *parts] if p)
            if text:
                lines.append(f"AI ({source}): {text}{where}")
        found.append((when, lines))
    found.sort(key=lambda f: f[0])
    return [line for _w_, lines in found for line in lines]
