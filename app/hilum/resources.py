"""Where the shipped data of the top-level ``resources/`` folder is found.

In a source checkout or an editable install that is the repository's
``resources/``; an installed wheel carries it as data files under
``<prefix>/share/hilum/resources``.
"""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path


@cache
def resources_dir() -> Path:
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "resources", Path(sys.prefix) / "share" / "hilum" / "resources"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("Hilum's resources folder is missing from this installation")


def resource(name: str) -> Path:
    """The path of one shipped resource, e.g. ``resource("window_presets.toml")``."""
    return resources_dir() / name
