"""The node's configuration: data folder and ``hilum.toml``.

The data folder is the platform's user data dir for ``hilum`` unless
``--data DIR`` or the ``HILUM_DATA`` environment variable says otherwise
(../shared/DESIGN.md, "Data folder and config").  It holds the index
(``index.sqlite``), the blobs (``blobs/``) and ``hilum.toml``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
import tomli_w

from hilum.errors import ConfigError

CONFIG_NAME = "hilum.toml"


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
