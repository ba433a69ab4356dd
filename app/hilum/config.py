"""The node's configuration: data folder and ``hilum.toml``.

The data folder is the platform's user data dir for ``hilum`` unless
``--data DIR`` or the ``HILUM_DATA`` environment variable says otherwise
(../shared/DESIGN.md, "Data folder and config").  It holds the index
(``index.sqlite``), the blobs (``blobs/``) and ``hilum.toml``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import platformdirs
import tomli_w

from hilum import __version__
from hilum.errors import ConfigError, DowngradeRefused

CONFIG_NAME = "hilum.toml"
log = logging.getLogger(__name__)

# ---------------------------------------------------------------- the format stamp (installer/UPGRADING.md)
STAMP_TABLE = "hilum"
"""``[hilum]``: ``config_format`` (the format of the file) and ``written_by`` (the Hilum version that
stamped or wrote it).  No setting lives in a table of that name (sections are node, archive, peers,
prefetch, storage, tiers, web, dimse, hl7, ai, audit...), so it cannot clash."""
CONFIG_FORMAT = 1
"""The format this code reads and writes.  A file without the stamp is format 0 (every release
before the stamp); a file with a higher number was written by a newer Hilum and is refused."""


def _format_0_to_1(doc: dict[str, Any]) -> dict[str, Any]:
    """Format 0 (no stamp) to 1: only the stamp.  No setting was renamed or changed meaning since the
    first release (``git log -p`` of config.py and the settings modules: settings were only added;
    ``[prefetch] cache_limit_mb`` took fractions too), so there is nothing else to move."""
    return doc


CONFIG_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _format_0_to_1}
"""``n -> f``: ``f`` turns a parsed file of format ``n`` into format ``n + 1`` (in memory)."""


@dataclass
class Peer:
    """A remote DICOM application entity the node knows by AE title.

    ``retrieve`` is how the workstation opens a study from this peer: ``"get"``
    (C-GET, the instances come back on the same association) or ``"move"``
    (C-MOVE to this node's AE title, which the peer must know).
    ``tls``: associations to the peer use TLS (PS3.15 B.1), its certificate
    checked against ``ca_file`` (a clinic CA trusted explicitly for this peer)
    or else ``[node] tls_ca`` / the system's CAs.
    ``open_into``: where a study opened from the peer in the workstation goes:
    ``"cache"`` (the bounded remote cache, :mod:`hilum.dicomweb.cache`; C-GET
    only), ``"archive"``, or ``""``: the cache for a TLS peer retrieved from by
    C-GET (a PACS afar), the archive otherwise.
    """

    aet: str
    host: str
    port: int
    tls: bool = False
    ca_file: str = ""
    open_into: str = ""
    may_store: bool = True
    may_query: bool = True
    may_retrieve: bool = True
    retrieve: str = "get"


@dataclass
class PrefetchRules:
    """``[prefetch]`` in ``hilum.toml``: which priors are fetched ahead of need (:mod:`hilum.priors.prefetch`).

    When an order arrives (HL7 ORM), a study arrives, or the worklist opens,
    the patient's priors on ``peers`` are looked up and the most relevant
    ``max_priors`` of them (ranked as the viewer ranks them) that are not yet
    local are retrieved, if they are at most ``max_age_years`` old (0: any
    age), of one of ``modalities`` (empty: the modality of the order or
    study), and, with ``same_body_part``, of its body part when known.
    Studies brought in this way are kept in a cache of at most
    ``cache_limit_mb`` megabytes (0: no limit), least recently used ones
    removed first; nothing that arrived another way is ever removed.
    ``peers`` names the ``[peers]`` / ``[dicomweb_sources]`` to ask (empty:
    every peer that may be queried); ``timeout`` is the seconds each remote
    request may take.
    """

    enabled: bool = False
    max_priors: int = 3
    max_age_years: float = 5.0
    modalities: list[str] = field(default_factory=list)
    same_body_part: bool = False
    cache_limit_mb: float = 2048.0
    peers: list[str] = field(default_factory=list)
    timeout: float = 30.0
    on_order: bool = True
    on_study: bool = True

    def to_toml(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in vars(self).items()}

    @classmethod
    def from_toml(cls, table: Any, where: str = "[prefetch]") -> PrefetchRules:
        """Rules from a ``[prefetch]`` table; raises :class:`ConfigError` naming the bad setting."""
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table")
        rules = cls()
        for key, value in table.items():
            if key not in vars(rules):
                raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(vars(rules))})")
            default = getattr(rules, key)
            if isinstance(default, bool):
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")
            elif isinstance(default, list):
                if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                    raise ConfigError(f"{where}: {key} must be a list of names, e.g. [\"CT\", \"MR\"], "
                                      f"not {value!r}")
                value = [v.strip().upper() if key == "modalities" else v.strip() for v in value]
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ConfigError(f"{where}: {key} must be a number >= 0, not {value!r}")
                if key == "timeout" and value == 0:
                    raise ConfigError(f"{where}: timeout must be more than 0 seconds")
                value = float(value)
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigError(f"{where}: {key} must be a whole number >= 0, not {value!r}")
            setattr(rules, key, value)
        return rules


@dataclass
class Config:
    data_dir: Path
    aet: str = "HILUM"
    bind: str = "127.0.0.1"
    dicom_port: int = 11112
    web_port: int = 8042
    hl7_port: int = 2575
    database_url: str | None = None
    duplicate_policy: str = "ignore"  # "ignore" | "overwrite"
    index_writer: str | None = None  # "fast" | "sqlalchemy"; None: $HILUM_INDEX_WRITER, else "fast"
    require_known_peers: bool = False
    max_associations: int = 32
    max_pdu_size: int = 0  # 0 = unlimited
    stop_timeout: float = 30.0  # seconds in-flight associations may take to finish once a stop begins (node.py)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    peers: dict[str, Peer] = field(default_factory=dict)
    prefetch: PrefetchRules = field(default_factory=PrefetchRules)
    extra: dict[str, Any] = field(default_factory=dict)
    config_format: int = CONFIG_FORMAT
    """The format ``hilum.toml`` was found in (0: no stamp, an older release's); this code writes :data:`CONFIG_FORMAT`."""

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_NAME

    def to_toml(self) -> dict[str, Any]:
        node: dict[str, Any] = {
            "aet": self.aet,
            "bind": self.bind,
            "dicom_port": self.dicom_port,
            "web_port": self.web_port,
            "hl7_port": self.hl7_port,
            "require_known_peers": self.require_known_peers,
            "max_associations": self.max_associations,
            "max_pdu_size": self.max_pdu_size,
            "stop_timeout": self.stop_timeout,
        }
        for key in ("tls_cert", "tls_key", "tls_ca"):
            if getattr(self, key):
                node[key] = getattr(self, key)
        doc: dict[str, Any] = {
            STAMP_TABLE: {"config_format": CONFIG_FORMAT, "written_by": __version__},
            "node": node,
            "archive": {"duplicate_policy": self.duplicate_policy},
        }
        if self.database_url:
            doc["archive"]["database_url"] = self.database_url
        if self.index_writer:
            doc["archive"]["index_writer"] = self.index_writer
        if self.peers:
            doc["peers"] = {
                name: {k: v for k, v in vars(p).items() if not (k in ("ca_file", "open_into") and not v)}
                for name, p in self.peers.items()
            }
        if self.prefetch != PrefetchRules():
            doc["prefetch"] = self.prefetch.to_toml()
        doc.update(self.extra)
        return doc

    def save(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".toml.tmp")
        tmp.write_bytes(tomli_w.dumps(self.to_toml()).encode())
        os.replace(tmp, self.config_path)


def default_data_dir() -> Path:
    env = os.environ.get("HILUM_DATA")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("hilum", appauthor=False))


def load_config(data_dir: str | os.PathLike[str] | None = None) -> Config:
    """Read ``hilum.toml`` from the data folder (defaults where absent)."""
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    cfg = Config(data_dir=root)
    path = cfg.config_path
    if not path.exists():
        return cfg
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    cfg.config_format = config_format(doc, path)
    doc.pop(STAMP_TABLE, None)
    for n in range(cfg.config_format, CONFIG_FORMAT):
        doc = CONFIG_MIGRATIONS[n](doc)
    node = doc.pop("node", {})
    archive = doc.pop("archive", {})
    peers = doc.pop("peers", {})
    if "prefetch" in doc:
        cfg.prefetch = PrefetchRules.from_toml(doc.pop("prefetch"), f"{path}: [prefetch]")
    for key, value in node.items():
        if not hasattr(cfg, key) or key == "prefetch":
            raise ConfigError(f"{path}: unknown [node] setting {key!r}")
        setattr(cfg, key, value)
    if "database_url" in archive:
        cfg.database_url = archive["database_url"]
    if "duplicate_policy" in archive:
        if archive["duplicate_policy"] not in ("ignore", "overwrite"):
            raise ConfigError(f"{path}: duplicate_policy must be 'ignore' or 'overwrite'")
        cfg.duplicate_policy = archive["duplicate_policy"]
    if "index_writer" in archive:
        if archive["index_writer"] not in ("fast", "sqlalchemy"):
            raise ConfigError(f"{path}: index_writer must be 'fast' or 'sqlalchemy'")
        cfg.index_writer = archive["index_writer"]
    for name, spec in peers.items():
        try:
            cfg.peers[name] = Peer(**spec)
        except TypeError as exc:
            raise ConfigError(f"{path}: peer {name!r}: {exc}") from exc
        if cfg.peers[name].retrieve not in ("get", "move"):
            raise ConfigError(f"{path}: peer {name!r}: retrieve must be 'get' or 'move'")
        if cfg.peers[name].open_into not in ("", "cache", "archive"):
            raise ConfigError(f"{path}: peer {name!r}: open_into must be 'cache' or 'archive'")
    cfg.extra = doc
    known = set(cfg.peers) | set((doc.get("dicomweb_sources") or {}) if isinstance(doc.get("dicomweb_sources"), dict)
                                 else ())
    unknown = [n for n in cfg.prefetch.peers if n not in known]
    if unknown:
        raise ConfigError(f"{path}: [prefetch] peers: no peer called {', '.join(map(repr, unknown))} in [peers] "
                          f"or [dicomweb_sources]")
    return cfg


def config_format(doc: dict[str, Any], path: Path) -> int:
    """The format stamp of a parsed ``hilum.toml`` (0 when it has none); refuses a newer one or a bad stamp."""
    stamp = doc.get(STAMP_TABLE)
    if stamp is None:
        return 0
    if not isinstance(stamp, dict) or not isinstance(stamp.get("config_format"), int) or isinstance(
        stamp.get("config_format"), bool
    ) or stamp["config_format"] < 1:
        raise ConfigError(f"{path}: [{STAMP_TABLE}] config_format must be a whole number >= 1 (written by Hilum)")
    found = stamp["config_format"]
    if found > CONFIG_FORMAT:
        by = stamp.get("written_by")
        copies = sorted(path.parent.glob(f"{path.name}.pre-upgrade-*"), reverse=True)
        hint = f"; or put back the copy kept before that upgrade: {copies[0]}" if copies else ""
        raise DowngradeRefused(
            f"{path}: config format {found}"
            + (f" written by Hilum {by}" if isinstance(by, str) else "")
            + f"; this is Hilum {__version__}, which reads format {CONFIG_FORMAT} and older and will not use it: "
            f"install that newer release again{hint}",
            data_dir=str(path.parent),
            found=[f"config_format {found}"],
            backups=[str(c) for c in copies],
        )
    return found


def upgrade_config_file(cfg: Config, *, backup_dir: Path | None = None) -> Path | None:
    """Bring the data folder's ``hilum.toml`` to :data:`CONFIG_FORMAT` on disk, if it is older; returns the copy kept.

    The old file is kept beside it as ``hilum.toml.pre-upgrade-<UTC time>`` (and copied into
    ``backup_dir``, the index's pre-upgrade backup, when there is one and it lacks it).  When the
    migration changes nothing but the stamp (0 -> 1), the ``[hilum]`` table is appended to the file
    as text, so the user's comments and layout stay; a migration that changes settings rewrites the
    file (comments are lost then: the copy keeps them).
    """
    path = cfg.config_path
    if cfg.config_format >= CONFIG_FORMAT or not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    doc = tomllib.loads(text)
    found = config_format(doc, path)
    if found >= CONFIG_FORMAT:  # another process did it meanwhile
        cfg.config_format = found
        return None
    migrated = dict(doc)
    migrated.pop(STAMP_TABLE, None)
    before = tomli_w.dumps(migrated)
    for n in range(found, CONFIG_FORMAT):
        migrated = CONFIG_MIGRATIONS[n](migrated)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    keep = path.with_name(f"{path.name}.pre-upgrade-{stamp}")
    shutil.copy2(path, keep)
    if backup_dir is not None and backup_dir.is_dir() and not (backup_dir / CONFIG_NAME).exists():
        shutil.copy2(path, backup_dir / CONFIG_NAME)
    if tomli_w.dumps(migrated) == before and STAMP_TABLE not in doc:
        new = text + ("" if text.endswith("\n") or not text else "\n") + (
            f"\n# Written by Hilum {__version__} on upgrade (installer/UPGRADING.md); the file before: {keep.name}\n"
            f"[{STAMP_TABLE}]\nconfig_format = {CONFIG_FORMAT}\nwritten_by = \"{__version__}\"\n"
        )
    else:
        migrated = {STAMP_TABLE: {"config_format": CONFIG_FORMAT, "written_by": __version__}, **migrated}
        new = tomli_w.dumps(migrated)
    tomllib.loads(new)  # never write a file this code could not read back
    tmp = path.with_name(path.name + ".upgrading")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)
    cfg.config_format = CONFIG_FORMAT
    log.info("%s stamped with config format %d (from %d); the file before is %s", path, CONFIG_FORMAT, found, keep)
    return keep
