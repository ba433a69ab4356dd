"""Finding installed plugins WITHOUT importing them (STYLE.md §6).

A plugin registers an entry point in the group ``hilum.plugins`` whose value is its import
package: ``[project.entry-points."hilum.plugins"] hilum-lung-seg = "hilum_lung_seg"``. Its
manifest is the package data file ``<package>/hilum-plugin.toml``, found through the
distribution's file list (``Distribution.files`` / ``locate_file``, which covers regular
installs and ``--target`` folders) or, for an editable install whose file list holds no package
files, through :func:`importlib.util.find_spec` of the top-level package — which locates it
without executing it. The entry point is never ``.load()``-ed: a plugin whose ``__init__`` raises
or is slow costs discovery nothing. Plugin code runs only when the plugin runs (its
``entry.postprocess`` hook, imported by :mod:`hilum.ai.host`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hilum.ai.manifest import MANIFEST_NAME, Manifest, load_manifest
from hilum.ai.model import ManifestError, PluginError, PluginInfo

if TYPE_CHECKING:
    from hilum.ai.host import Plugin

__all__ = ["ENTRY_POINT_GROUP", "discover", "find", "load", "load_path", "sha256_of", "verify_models"]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hilum.plugins"


def _package_dir(dist: md.Distribution, package: str) -> Path | None:
    """The folder of *package* (dotted) as installed by *dist*, without importing anything."""
    rel = package.replace(".", "/")
    wanted = f"{rel}/{MANIFEST_NAME}"
    for f in dist.files or ():
        if str(f).replace("\\", "/") == wanted:
            return Path(str(dist.locate_file(f))).parent
    # editable installs (a .pth or an import hook): ask the import system where the top-level
    # package is; find_spec of a TOP-LEVEL name runs no package code (a dotted one would import
    # the parents), the sub-packages are then plain folders under it.
    top, _, rest = package.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [str(Path(spec.origin).parent)]
    for root in roots:
        d = Path(root).joinpath(*rest.split(".")) if rest else Path(root)
        if (d / MANIFEST_NAME).is_file():
            return d
    return None


def _entry_points(path: Sequence[str] | None) -> Iterable[tuple[md.Distribution, md.EntryPoint]]:
    dists = md.distributions(path=list(path)) if path is not None else md.distributions()
    seen: set[tuple[str, str]] = set()
    for dist in dists:
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            dist_name = str(dist.metadata["Name"] or "")
            key = (dist_name, ep.name)
            if key in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add(key)
            yield dist, ep


def _info(dist: md.Distribution, ep: md.EntryPoint) -> PluginInfo:
    dist_name = str(dist.metadata["Name"] or "")
    package = ep.value.split(":", 1)[0].strip()
    directory = _package_dir(dist, package) if package else None
    if directory is None:
        why = f"no {MANIFEST_NAME} in package {package!r} (is it package data?)"
        return PluginInfo(ep.name, str(dist.version or ""), ep.name, None, None, dist_name, (why,))
    path = directory / MANIFEST_NAME
    try:
        manifest = load_manifest(path)
    except ManifestError as exc:
        return PluginInfo(ep.name, str(dist.version or ""), ep.name, None, path, dist_name, tuple(exc.problems))
    problems = []
    if manifest.name != ep.name:
        problems.append(f"name: {manifest.name!r} is not the entry point's name {ep.name!r}")
    for m in manifest.models:
        if not manifest.model_path(m).is_file():
            problems.append(f"models: {m.file} is missing from the package")
    return PluginInfo(manifest.name if not problems else ep.name, manifest.version, manifest.title, manifest, path,
                      dist_name, tuple(problems))  # fmt: skip


def discover(path: Sequence[str] | None = None) -> list[PluginInfo]:
    """Every installed plugin (entry point group ``hilum.plugins``), sorted by name, each with its
    manifest and its problems; nothing is imported. ``path``: look only in these folders (a
    ``pip install --target`` folder) instead of ``sys.path``. Two distributions registering the
    same name: the first on the path is used, the second is reported with a problem."""
    found: dict[str, PluginInfo] = {}
    extra: list[PluginInfo] = []
    for dist, ep in _entry_points(path):
        info = _info(dist, ep)
        if info.name in found:
            other = found[info.name].distribution
            extra.append(PluginInfo(info.name, info.version, info.title, info.manifest, info.path,
                                    info.distribution,
                                    (*info.problems, f"name: also installed by {other!r}, which is used"),
                                    ))  # fmt: skip
            continue
        found[info.name] = info
    return sorted(found.values(), key=lambda i: i.name) + extra


def find(name: str, path: Sequence[str] | None = None) -> PluginInfo:
    """The discovered plugin called *name* (raises :class:`PluginError` naming the installed ones)."""
    infos = discover(path)
    for info in infos:
        if info.name == name:
            return info
    names = ", ".join(i.name for i in infos) or "none"
    raise PluginError(name, f"not installed (installed plugins: {names})")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_models(manifest: Manifest) -> None:
    """Check every model file against its ``sha256`` before any session is made (a changed or
    corrupted model never runs)."""
    for m in manifest.models:
        p = manifest.model_path(m)
        try:
            digest = sha256_of(p)
        except OSError as exc:
            raise PluginError(manifest.name, f"cannot read model {m.file}: {exc.strerror or exc}") from None
        if digest != m.sha256:
            raise PluginError(
                manifest.name,
                f"model {m.file} does not match its checksum (sha256 {digest[:12]}…, the manifest says "
                f"{m.sha256[:12]}…): it was changed or damaged, reinstall the plugin",
            )


def load(name: str, path: Sequence[str] | None = None) -> Plugin:
    """The installed plugin *name*, ready to run: manifest valid, model files verified."""
    from hilum.ai.host import Plugin  # noqa: F811 - the host imports onnxruntime: only when loading

    info = find(name, path)
    if info.manifest is None or info.problems:
        raise ManifestError(name, info.problems or ("manifest: cannot be read",), info.path)
    verify_models(info.manifest)
    return Plugin(info.manifest, info)


def load_path(path: str | Path) -> Plugin:
    """A plugin from its folder or manifest file (not installed: ``hilum plugins validate PATH``,
    tests): manifest valid, model files there and verified."""
    from hilum.ai.host import Plugin  # noqa: F811

    manifest = load_manifest(path)
    missing = [f"models: {m.file} is missing" for m in manifest.models if not manifest.model_path(m).is_file()]
    if missing:
        raise ManifestError(manifest.name, missing, manifest.path)
    verify_models(manifest)
    info = PluginInfo(manifest.name, manifest.version, manifest.title, manifest, manifest.path)
    return Plugin(manifest, info)
