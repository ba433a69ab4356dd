"""Fences for fast paths that reach into a library's inside: digests of the upstream source they mirror.

A module whose speed depends on how a library's functions are written keeps a
table ``{"package.module.function": sha256-of-its-source}`` and asks
:func:`changes` at start: any name listed has changed (or gone) since the code
was written against it, and the module falls back to the library's own path
(``hilum.dimse.reactor``, ``hilum.dicom.pixels``).  Pure standard library, so
every layer may use it.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["changes", "resolve", "source_digest"]


def resolve(name: str) -> Any:
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def source_digest(name: str) -> str:
    """SHA-256 of the source of the function, method or class ``name`` (dotted path)."""
    return hashlib.sha256(inspect.getsource(resolve(name)).encode()).hexdigest()


def changes(recorded: Mapping[str, str]) -> list[str]:
    """Names in ``recorded`` whose source differs from its digest, or cannot be found (``"name (not found)"``)."""
    changed = []
    for name, digest in recorded.items():
        try:
            if source_digest(name) != digest:
                changed.append(name)
        except (ImportError, AttributeError, OSError, TypeError):
            changed.append(f"{name} (not found)")
    return changed
