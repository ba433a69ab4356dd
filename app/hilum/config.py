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
    """

    aet: str
    host: str
    port: int
    tls: bool = False
    may_store: bool = True
    may_query: bool = True
    may_retrieve: bool = True
    retrieve: str = "get"


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
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None
    peers: dict[str, Peer] = field(default_factory=dict)
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
                name: {k: v for k, v in vars(p).items()} for name, p in self.peers.items()
            }
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
    for key, value in node.items():
        if not hasattr(cfg, key):
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
    cfg.extra = doc
    return cfg
