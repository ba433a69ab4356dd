"""The AI plugin host's data types: what a plugin is, what it is given and what it gives back.

Pure data (numpy + the DICOM domain's :class:`~hilum.dicom.segmentation.LabelMap`), shared by
discovery (:mod:`hilum.ai.discovery`), the host (:mod:`hilum.ai.host`), results as DICOM
(:mod:`hilum.ai.results`), the auto-run service (:mod:`hilum.ai.rules`) and the workstation.

Coordinates: every array a plugin receives or returns is on the VOLUME order of the series
(:func:`hilum.dicom.geometry.order_slices`, the order of :mod:`hilum.dicom.volume`, of
:class:`~hilum.dicom.segmentation.LabelMap` and of the MPR): index ``[m, row, column]``; a
finding's ``slice_index`` is such an ``m`` and its ``centre``/``outline``/``box`` are in pixels
``(row, column)`` of that slice (sub-pixel, pixel centres at integers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hilum.errors import HilumError

if TYPE_CHECKING:
    from hilum.ai.manifest import Manifest
    from hilum.dicom.segmentation import LabelMap

__all__ = [
    "Code",
    "Finding",
    "ManifestError",
    "PluginCancelled",
    "PluginContext",
    "PluginError",
    "PluginInfo",
    "PluginOutput",
    "PluginResult",
    "Score",
    "Timings",
]

Code = tuple[str, str, str]
"""A coded concept ``(scheme designator, code value, code meaning)``, e.g. ``("SCT", "39607008", "Lung structure")``."""


class PluginError(HilumError):
    """A plugin could not be loaded or run: ``plugin`` names it, ``reason`` says why in one sentence.

    Whatever went wrong inside (a raising hook, a bad output shape, a checksum mismatch, a crashed
    session or child process), the caller gets this and keeps running."""

    def __init__(self, plugin: str, reason: str):
        self.plugin = plugin
        self.reason = reason
        super().__init__(f"plugin {plugin!r}: {reason}" if plugin else reason)


class ManifestError(PluginError):
    """A manifest (``hilum-plugin.toml``) that does not follow the contract; ``problems`` lists
    each broken rule as ``"key: why"``."""

    def __init__(self, plugin: str, problems: Sequence[str], path: str | Path | None = None):
        self.problems = list(problems)
        self.path = str(path) if path else ""
        where = f" ({self.path})" if self.path else ""
        super().__init__(plugin, f"invalid manifest{where}: " + "; ".join(self.problems))


class PluginCancelled(PluginError):
    """The run was cancelled (the ``cancel`` event was set): nothing was produced."""

    def __init__(self, plugin: str):
        super().__init__(plugin, "cancelled")


@dataclass(frozen=True)
class Finding:
    """One thing a plugin found: what (``label``, ``code``), how sure (``score`` 0..1), where (volume
    slice ``slice_index``, ``centre`` ``(row, column)``, an ``outline`` polygon or a ``box``
    ``(row0, col0, row1, col1)`` in pixels of that slice), and its ``measurements``
    ``{name: (value, UCUM unit)}``, e.g. ``{"Volume": (1520.0, "ml")}``."""

    label: str
    code: Code | None = None
    score: float | None = None
    slice_index: int | None = None
    centre: tuple[float, float] | None = None
    outline: tuple[tuple[float, float], ...] = ()
    box: tuple[float, float, float, float] | None = None
    measurements: Mapping[str, tuple[float, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """One classification or score for the whole series (``kind = "score"``): ``label`` ("Emphysema
    likelihood"), ``value``, optional ``code`` of the concept and ``unit`` (UCUM, ``"1"`` for none)."""

    label: str
    value: float
    code: Code | None = None
    unit: str = "1"


@dataclass(frozen=True)
class Timings:
    """Seconds spent on one run: preprocessing (volume → model input), inference, postprocessing."""

    pre: float = 0.0
    inference: float = 0.0
    post: float = 0.0

    @property
    def total(self) -> float:
        return self.pre + self.inference + self.post


@dataclass(frozen=True)
class PluginInfo:
    """A discovered plugin, found without importing it: entry point ``name``, what its manifest
    says (``manifest`` is None when it could not be parsed), where the manifest is (``path``), the
    distribution that installs it, and ``problems`` (empty when it is valid and its model files
    are there)."""

    name: str
    version: str
    title: str
    manifest: Manifest | None
    path: Path | None
    distribution: str = ""
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.problems


@dataclass
class PluginContext:
    """What a postprocess hook gets beside the model outputs: the plugin's manifest, the series
    (its :class:`~hilum.ai.host.SeriesInput`: headers, modality values, spacing), the volume shape
    ``(m, rows, columns)`` the results must be on, and the model input's spacing ``(z, y, x)`` mm
    and shape (after resampling)."""

    manifest: Manifest
    series: Any
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    input_shape: tuple[int, ...] = ()
    input_spacing_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    directory: Path | None = None
    """The plugin's package folder (model files, extra data)."""


@dataclass
class PluginOutput:
    """What a postprocess hook returns; any field left None is taken from the default decoding of
    the outputs (segmentation/heatmap by the manifest's ``[[produces]]``)."""

    labels: np.ndarray | None = None
    """uint8 ``[m, row, column]`` on the volume order, values = the manifest's segment labels."""
    heatmap: np.ndarray | None = None
    """float ``[m, row, column]`` in 0..1."""
    findings: list[Finding] | None = None
    score: Score | None = None


@dataclass
class PluginResult:
    """The outcome of :func:`hilum.ai.run`, not yet stored: the plugin's manifest, the source series
    (``series_uid``; ``series`` the :class:`~hilum.ai.host.SeriesInput` it ran on), a label map on
    its volume order (``labels``, segments named and coloured per the manifest) or None, a heat map
    ``float32 [m, row, column]`` in 0..1 or None, findings, the per-series score, and timings."""

    plugin: Manifest
    series_uid: str
    series: Any
    labels: LabelMap | None = None
    heatmap: np.ndarray | None = None
    findings: list[Finding] = field(default_factory=list)
    score: Score | None = None
    timings: Timings = field(default_factory=Timings)

    @property
    def empty(self) -> bool:
        """Nothing to store: no segment painted, no heat, no finding, no score."""
        return (
            (self.labels is None or not self.labels.array.any())
            and (self.heatmap is None or not bool(np.any(self.heatmap > 0)))
            and not self.findings
            and self.score is None
        )
