"""Window presets: shipped in ``resources/window_presets.toml``, editable per user.

A preset is a Window Center/Width in modality units (HU for CT; PS3.3
C.11.2.1.2) for one modality. The shipped file is read-only; the first edit
writes the whole list to ``<data folder>/window_presets.toml``, which takes
precedence from then on.
"""

from __future__ import annotations

import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from hilum.errors import ConfigError
from hilum.resources import resource

__all__ = ["PresetStore", "WindowPreset", "read_presets", "write_presets"]

logger = logging.getLogger(__name__)

FILE_NAME = "window_presets.toml"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class WindowPreset:
    name: str
    center: float
    width: float
    modality: str = ""
    key: str = ""

    def applies_to(self, modality: str) -> bool:
        return not self.modality or self.modality.upper() == (modality or "").upper()


def read_presets(path: str | os.PathLike[str]) -> list[WindowPreset]:
    """Parse a presets file; raises :class:`ConfigError` with the reason when it is invalid."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read window presets {p}: {exc}") from exc
    if int(data.get("schema_version", SCHEMA_VERSION)) > SCHEMA_VERSION:
        raise ConfigError(f"{p}: schema_version {data['schema_version']} is newer than this Hilum understands")
    out = []
    for i, item in enumerate(data.get("preset", [])):
        try:
            preset = WindowPreset(
                name=str(item["name"]),
                center=float(item["center"]),
                width=float(item["width"]),
                modality=str(item.get("modality", "")),
                key=str(item.get("key", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{p}: preset #{i + 1} needs name, center and width ({exc})") from exc
        if preset.width < 1:
            raise ConfigError(f"{p}: preset {preset.name!r} has width {preset.width} (must be >= 1)")
        out.append(preset)
    return out


def write_presets(path: str | os.PathLike[str], presets: list[WindowPreset]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    items = []
    for pr in presets:
        item: dict[str, object] = {"name": pr.name, "center": pr.center, "width": pr.width}
        if pr.modality:
            item["modality"] = pr.modality
        if pr.key:
            item["key"] = pr.key
        items.append(item)
    tmp = p.with_suffix(".tmp")
    tmp.write_text("# Hilum window presets (edited copy; delete to restore the shipped ones)\n"
                   + tomli_w.dumps({"schema_version": SCHEMA_VERSION, "preset": items}), encoding="utf-8")  # fmt: skip
    os.replace(tmp, p)
    return p


class PresetStore:
    """The presets in force for one data folder (user copy, else shipped)."""

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.data_dir = Path(data_dir) if data_dir else None
        self._presets: list[WindowPreset] | None = None

    @property
    def user_path(self) -> Path | None:
        return self.data_dir / FILE_NAME if self.data_dir else None

    @property
    def path(self) -> Path:
        user = self.user_path
        return user if user is not None and user.is_file() else resource(FILE_NAME)

    @property
    def presets(self) -> list[WindowPreset]:
        if self._presets is None:
            try:
                self._presets = read_presets(self.path)
            except ConfigError as exc:
                logger.warning("%s; using the shipped presets", exc)
                self._presets = read_presets(resource(FILE_NAME))
        return list(self._presets)

    def for_modality(self, modality: str) -> list[WindowPreset]:
        return [p for p in self.presets if p.applies_to(modality)]

    def by_key(self, key: str, modality: str) -> WindowPreset | None:
        for p in self.for_modality(modality):
            if p.key == key:
                return p
        return None

    def save(self, presets: list[WindowPreset]) -> Path:
        """Write *presets* to the user copy (created on the first edit)."""
        if self.user_path is None:
            raise ConfigError("no data folder: cannot save window presets")
        self._presets = list(presets)
        return write_presets(self.user_path, self._presets)

    def add(self, preset: WindowPreset) -> Path:
        """Add or replace (by name and modality) a preset in the user copy."""
        kept = [p for p in self.presets if not (p.name == preset.name and p.modality == preset.modality)]
        return self.save([*kept, preset])

    def remove(self, name: str, modality: str = "") -> Path:
        return self.save([p for p in self.presets if not (p.name == name and (not modality or p.modality == modality))])
