"""AI results the viewer shows: what a run gave, or what the archive holds for a series.

Pure logic (no widgets): :class:`ResultSet` is one plugin run's output as the viewer uses it
(label map, heat map, findings, score); :func:`archived_results` lists the AI objects of a study
in the archive that reference a series — SEG (BINARY: segments; FRACTIONAL: heat map) and SR
(findings, measurements, score) whose Series Description starts with ``"AI:"``, as
:mod:`hilum.ai.results` writes them — and :func:`load_archived` reads one of them onto the
series' volume. Findings are read from a TID 1500 SR by walking its Imaging Measurements groups:
Tracking Identifier → label, Finding (121071, DCM) → code, NUM → measurements (a NUM whose name
says probability/score/likelihood → the finding's score), an Image Region SCOORD → slice (by the
referenced SOP Instance UID) and centre; a NUM outside any group → the series' score.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from hilum.ai.model import Finding, Score
from hilum.dicom.heatmap import is_fractional, read_heatmap
from hilum.dicom.segmentation import LabelMap, read_seg, seg_references
from hilum.dicom.stack import Stack

__all__ = ["ArchivedResult", "ResultSet", "archived_results", "load_archived", "read_findings_sr", "sr_references"]

logger = logging.getLogger(__name__)

AI_PREFIX = "AI:"
SCORE_WORDS = ("probability", "score", "likelihood", "confidence")


@dataclass
class ResultSet:
    """What the viewer shows of one AI result on one series."""

    series_uid: str
    title: str = ""
    labels: LabelMap | None = None
    heatmap: np.ndarray | None = None
    findings: list[Finding] = field(default_factory=list)
    score: Score | None = None
    source: str = ""
    """Where it came from: "run" or the SOP Instance UID of the archived object."""


@dataclass(frozen=True)
class ArchivedResult:
    """An AI object in the archive that references a series (offered when the series is opened)."""

    sop_instance_uid: str
    series_uid: str
    kind: str  # "segmentation", "heatmap", "findings"
    description: str
    when: str
    path: str

    @property
    def text(self) -> str:
        what = {"segmentation": "segments", "heatmap": "heat map", "findings": "findings"}[self.kind]
        return f"{self.description} — {what} ({self.when})"


def sr_references(ds: Dataset) -> set[str]:
    """Series Instance UIDs an SR references (Current Requested Procedure Evidence / Pertinent Other)."""
    out: set[str] = set()
    for key in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(key, []) or []:
            for series in study.get("ReferencedSeriesSequence", []) or []:
                uid = str(series.get("SeriesInstanceUID", ""))
                if uid:
                    out.add(uid)
    return out


def _when(ds: Dataset) -> str:
    d = str(ds.get("ContentDate", "") or ds.get("SeriesDate", "") or "")
    t = str(ds.get("ContentTime", "") or ds.get("SeriesTime", "") or "")
    date = f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) >= 8 else d
    time = f"{t[:2]}:{t[2:4]}:{t[4:6]}" if len(t) >= 6 else t
    return f"{date} {time}".strip()


def archived_results(archive: Any, study_uid: str, series_uid: str) -> list[ArchivedResult]:
    """The study's AI objects (SEG, SR; Series Description "AI: …") that reference *series_uid*,
    oldest first. Runs queries and reads headers: call it off the GUI thread."""
    out: list[ArchivedResult] = []
    for modality in ("SEG", "SR"):
        for row in archive.query("SERIES", {"StudyInstanceUID": study_uid, "Modality": modality}):
            desc = str(row.get("SeriesDescription", "") or "")
            if not desc.startswith(AI_PREFIX):
                continue
            for inst in archive.instances(series_uid=row["SeriesInstanceUID"]):
                try:
                    ds = pydicom.dcmread(inst["path"], stop_before_pixels=True)
                except Exception as exc:  # noqa: BLE001 - one unreadable object does not hide the others
                    logger.warning("unreadable AI object %s: %s", inst.get("SOPInstanceUID"), exc)
                    continue
                if modality == "SEG":
                    if seg_references(ds)[0] != series_uid:
                        continue
                    kind = "heatmap" if is_fractional(ds) else "segmentation"
                else:
                    if series_uid not in sr_references(ds):
                        continue
                    kind = "findings"
                out.append(ArchivedResult(str(ds.SOPInstanceUID), series_uid, kind, desc, _when(ds), str(inst["path"])))
    out.sort(key=lambda r: (r.when, r.kind))
    return out


def load_archived(item: ArchivedResult, stack: Stack) -> ResultSet:
    """Read one archived AI object onto *stack*'s volume order (off the GUI thread)."""
    ds = pydicom.dcmread(item.path)
    res = ResultSet(item.series_uid, title=item.description, source=item.sop_instance_uid)
    if item.kind == "segmentation":
        res.labels = read_seg(ds, stack)
    elif item.kind == "heatmap":
        res.heatmap = read_heatmap(ds, stack)
    else:
        res.findings, res.score = read_findings_sr(ds, stack)
    return res


# --------------------------------------------------------------------------- SR


def _concept(item: Dataset) -> tuple[str, str, str]:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return ("", "", "")
    c = seq[0]
    return (str(c.get("CodingSchemeDesignator", "")), str(c.get("CodeValue", "")), str(c.get("CodeMeaning", "")))


def _num(item: Dataset) -> tuple[float, str] | None:
    mv = item.get("MeasuredValueSequence")
    if not mv:
        return None
    m = mv[0]
    unit = ""
    units = m.get("MeasurementUnitsCodeSequence")
    if units:
        unit = str(units[0].get("CodeValue", ""))
    try:
        return float(m.NumericValue), ("" if unit == "1" else unit)
    except (AttributeError, TypeError, ValueError):
        return None


def _is_score(meaning: str) -> bool:
    low = meaning.lower()
    return any(w in low for w in SCORE_WORDS)


def _scoord(item: Dataset, by_uid: dict[str, int]) -> tuple[int | None, tuple[float, float] | None]:
    data = np.asarray(item.get("GraphicData", []) or [], dtype=float).reshape(-1, 2)
    m = None
    for child in item.get("ContentSequence", []) or []:
        for ref in child.get("ReferencedSOPSequence", []) or []:
            m = by_uid.get(str(ref.ReferencedSOPInstanceUID), m)
    if not len(data):
        return m, None
    if str(item.get("GraphicType", "")) == "ELLIPSE" and len(data) == 4:
        c = data.mean(axis=0)
    elif len(data) > 2 and np.allclose(data[0], data[-1]):
        c = data[:-1].mean(axis=0)
    else:
        c = data.mean(axis=0)
    # SCOORD pixels: the first pixel's top-left corner is 0\0 (PS3.3 C.18.6.1.2); ours: centres at integers
    return m, (float(c[1]) - 0.5, float(c[0]) - 0.5)


def read_findings_sr(ds: Dataset, stack: Stack | None = None) -> tuple[list[Finding], Score | None]:
    """The findings and the series score of an AI SR (TID 1500), see the module docstring."""
    by_uid: dict[str, int] = {}
    if stack is not None:
        order = stack.order
        by_uid = {order.items[u].sop_instance_uid: m for m, u in enumerate(order.unique)}
    findings: list[Finding] = []
    score: Score | None = None

    def group(items: list[Dataset]) -> Finding | Score | None:
        if any(str(it.get("ValueType", "")) == "SCOORD3D" or _concept(it)[:2] == ("DCM", "121191") for it in items):
            return None  # a segment's volume (TID 1411, referencing the SEG): shown by the SEG, not a finding
        label, code, sc = "", None, None
        m: int | None = None
        centre = None
        measurements: dict[str, tuple[float, str]] = {}
        for it in items:
            vt = str(it.get("ValueType", ""))
            scheme, value, meaning = _concept(it)
            if vt == "TEXT" and (scheme, value) == ("DCM", "112039"):
                label = label or str(it.get("TextValue", ""))
            elif vt == "CODE" and (scheme, value) == ("DCM", "121071"):
                c = it.ConceptCodeSequence[0]
                code = (str(c.CodingSchemeDesignator), str(c.CodeValue), str(c.CodeMeaning))
            elif vt == "NUM":
                num = _num(it)
                if num is None:
                    continue
                if _is_score(meaning) and sc is None:
                    sc = num[0]
                else:
                    measurements[meaning or value] = num
                for child in it.get("ContentSequence", []) or []:
                    if str(child.get("ValueType", "")) == "SCOORD" and centre is None:
                        m, centre = _scoord(child, by_uid)
            elif vt == "SCOORD" and centre is None:
                m, centre = _scoord(it, by_uid)
        if not (label or code or measurements or sc is not None):
            return None
        label = re.sub(r" \d+$", "", label)  # the Tracking Identifier is "<label> <n>"
        if code is None and centre is None and sc is None and len(measurements) == 1:
            name, (number, unit) = next(iter(measurements.items()))
            return Score(label=label or name, value=number, unit=unit or "1")  # a TID 1501 group of one score
        if code is not None and (not label or label.startswith("Finding")):
            label = code[2] or label
        return Finding(label=label or "Finding", code=code, score=sc, slice_index=m, centre=centre,
                       measurements=measurements)  # fmt: skip

    for item in ds.get("ContentSequence", []) or []:
        vt = str(item.get("ValueType", ""))
        scheme, value, meaning = _concept(item)
        if vt == "CONTAINER" and (scheme, value) == ("DCM", "126010"):  # Imaging Measurements
            for g in item.get("ContentSequence", []) or []:
                if str(g.get("ValueType", "")) == "CONTAINER":
                    f = group(list(g.get("ContentSequence", []) or []))
                    if isinstance(f, Score):
                        score = score or f
                    elif f is not None:
                        findings.append(f)
                elif str(g.get("ValueType", "")) == "NUM" and score is None:
                    num = _num(g)
                    if num is not None:
                        score = Score(label=meaning or "Score", value=num[0], unit=num[1] or "1")
        elif vt == "CONTAINER" and (scheme, value) == ("DCM", "126011"):  # Derived Imaging Measurements
            continue
        elif vt == "NUM" and score is None:
            num = _num(item)
            if num is not None:
                score = Score(label=meaning or "Score", value=num[0], unit=num[1] or "1")
    # a group that only carries the score (no place, no measurement) is the series score
    if score is None:
        for f in list(findings):
            if f.slice_index is None and f.centre is None and not f.measurements and f.score is not None:
                score = Score(label=f.label, value=f.score, code=f.code)
                findings.remove(f)
                break
    return findings, score
