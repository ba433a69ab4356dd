"""The plugin host: model input from the one pixel/volume pipeline, onnxruntime sessions, runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from hilum.ai.manifest import Manifest
from hilum.ai.model import PluginInfo, PluginResult

__all__ = ["Plugin", "SeriesInput", "run"]

Progress = Callable[[int, int], None]


class SeriesInput:
    """A series ready for a plugin (API stub, filled in next)."""

    @classmethod
    def from_archive(cls, archive: Any, series_uid: str) -> SeriesInput:
        raise NotImplementedError

    @classmethod
    def from_datasets(cls, datasets: Sequence[Any]) -> SeriesInput:
        raise NotImplementedError


class Plugin:
    """A loaded plugin (API stub)."""

    def __init__(self, manifest: Manifest, info: PluginInfo):
        self.manifest = manifest
        self.info = info


def run(plugin: Plugin, series: SeriesInput, *, progress: Progress | None = None,
        cancel: threading.Event | None = None) -> PluginResult:  # fmt: skip
    raise NotImplementedError
