"""AI plugins on ONNX Runtime: discovery, validation, the host that runs them, results as DICOM.

Public API (the workstation and the CLI use only this)::

    discover() -> list[PluginInfo]          # installed plugins, found WITHOUT importing them
    load(name) -> Plugin                    # validated manifest, model checksums verified
    run(plugin, series, *, progress=None, cancel=None) -> PluginResult
    store(archive, result) -> list[IngestResult]   # SEG / FRACTIONAL SEG / TID 1500 SR, via archive.ingest
    SeriesInput.from_archive(archive, series_uid) / SeriesInput.from_datasets(datasets)

A plugin is an installed package registering an entry point in the group ``hilum.plugins``
whose package holds ``hilum-plugin.toml`` (the manifest, :mod:`hilum.ai.manifest`) and its ONNX
model files. ``run`` works off the caller's thread's back (call it from a worker thread: it
blocks), reports ``progress(done, total)`` after each batch, stops between batches and inside a
session run when ``cancel`` is set (raising :class:`PluginCancelled`), and turns every failure
of the plugin into one :class:`PluginError`.
"""

from __future__ import annotations

from hilum.ai.model import (
    Code,
    Finding,
    ManifestError,
    PluginCancelled,
    PluginContext,
    PluginError,
    PluginInfo,
    PluginOutput,
    PluginResult,
    Score,
    Timings,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Code",
    "Finding",
    "Manifest",
    "ManifestError",
    "Plugin",
    "PluginCancelled",
    "PluginContext",
    "PluginError",
    "PluginInfo",
    "PluginOutput",
    "PluginResult",
    "Score",
    "SeriesInput",
    "Timings",
    "discover",
    "load",
    "run",
    "store",
]

from hilum.ai.discovery import ENTRY_POINT_GROUP, discover, load  # noqa: E402
from hilum.ai.host import Plugin, SeriesInput, run  # noqa: E402
from hilum.ai.manifest import Manifest  # noqa: E402
from hilum.ai.results import store  # noqa: E402
