"""Plugin results as DICOM objects in the archive (API stub)."""

from __future__ import annotations

from typing import Any

from hilum.ai.model import PluginResult

__all__ = ["store"]


def store(archive: Any, result: PluginResult) -> list[Any]:
    raise NotImplementedError
