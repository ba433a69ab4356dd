"""The four-corner overlay text: configurable templates filled from the header and the viewport.

Templates are ``str.format`` lines (``resources/viewer_overlay.toml``, or the
user's copy in the data folder); ``{Keyword}`` takes a DICOM attribute of the
series header (person names shown as "Family, Given", dates as YYYY-MM-DD),
lower-case fields come from :meth:`ViewportState.overlay_values`. A line whose
fields are all empty is dropped, so a missing attribute leaves no "Pos  mm".

``{study_label}`` is the date of the study the viewport shows, marked
"PRIOR 2025-10-14" when that is not the viewer's own (current) study
(:attr:`OverlayConfig.current_study`): side by side, each viewport says which
exam it is.
"""

from __future__ import annotations

import logging
import os
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from hilum.resources import resource

__all__ = ["CORNERS", "OverlayConfig", "corner_texts", "header_value", "study_label"]

logger = logging.getLogger(__name__)

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
FILE_NAME = "viewer_overlay.toml"


@dataclass(frozen=True)
class OverlayConfig:
    corners: dict[str, list[str]] = field(default_factory=dict)
    current_study: str = ""
    """The Study Instance UID of the viewer's current study: a series of another study is a prior."""

    @classmethod
    def load(cls, data_dir: str | os.PathLike[str] | None = None) -> OverlayConfig:
        """The user's copy in *data_dir* if present and valid, else the shipped one."""
        candidates = []
        if data_dir:
            candidates.append(Path(data_dir) / FILE_NAME)
        candidates.append(resource(FILE_NAME))
        for path in candidates:
            if not path.is_file():
                continue
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
                corners = {k: [str(line) for line in data.get("corners", {}).get(k, [])] for k in CORNERS}
                return cls(corners)
            except (OSError, tomllib.TOMLDecodeError, AttributeError) as exc:
                logger.warning("ignoring overlay configuration %s: %s", path, exc)
        return cls({k: [] for k in CORNERS})


def header_value(ds: Dataset | None, keyword: str) -> str:
    """An attribute as overlay text ("" when absent)."""
    if ds is None:
        return ""
    value = ds.get(keyword)
    if value is None or value == "":
        return ""
    if isinstance(value, PersonName):
        fam, given = value.family_name, value.given_name
        return f"{fam}, {given}" if fam and given else str(value).replace("^", " ").strip()
    if keyword.endswith("Date") and isinstance(value, str) and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    if keyword.endswith("Time") and isinstance(value, str) and len(value) >= 4:
        return f"{value[:2]}:{value[2:4]}"
    if not isinstance(value, (str, int, float)):
        try:
            return "\\".join(str(v) for v in value)
        except TypeError:
            return str(value)
    return str(value)


class _Fields(string.Formatter):
    def __init__(self, header: Dataset | None, values: dict[str, Any]) -> None:
        self.header, self.values = header, values
        self.filled = 0

    def get_value(self, key: Any, args: Any, kwargs: Any) -> Any:
        if isinstance(key, str) and key in self.values:
            v = self.values[key]
        elif isinstance(key, str) and key[:1].isupper():
            v = header_value(self.header, key)
        else:
            v = ""
        if v not in ("", None):
            self.filled += 1
        return "" if v is None else v


def study_label(header: Dataset | None, current_study: str) -> str:
    """The study's date as the overlay shows it: "2026-11-02", or "PRIOR 2025-10-14" for a series
    of another study than *current_study* (no date: "PRIOR")."""
    if header is None:
        return ""
    when = header_value(header, "StudyDate")
    uid = str(header.get("StudyInstanceUID", "") or "")
    if current_study and uid and uid != current_study:
        return f"PRIOR {when}".strip()
    return when


def corner_texts(config: OverlayConfig, header: Dataset | None, values: dict[str, Any]) -> dict[str, list[str]]:
    """The lines of each corner for one viewport."""
    if "study_label" not in values:
        values = {**values, "study_label": study_label(header, config.current_study)}
    out: dict[str, list[str]] = {}
    for corner in CORNERS:
        lines = []
        for template in config.corners.get(corner, []):
            fmt = _Fields(header, values)
            try:
                text = fmt.format(template)
            except (ValueError, IndexError, KeyError) as exc:
                logger.debug("bad overlay template %r: %s", template, exc)
                continue
            if fmt.filled:
                lines.append(" ".join(text.split()))
        out[corner] = lines
    return out
