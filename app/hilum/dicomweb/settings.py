"""The ``[web]`` section of ``hilum.toml``: the DICOMweb server's settings.

::

    [node]
    bind = "127.0.0.1"      # the address the HTTP server listens on (shared with DIMSE/HL7)
    web_port = 8042

    [web]
    enabled = true
    anonymous = "auto"      # "auto" | "never" | "read"
    tls_cert = ""           # PEM certificate (chain): HTTPS when set together with tls_key
    tls_key = ""
    cors_origins = []       # e.g. ["https://viewer.example.org"]; "*" allows any origin
    public_url = ""         # base URL seen by clients behind a proxy (for RetrieveURL/BulkDataURI)
    max_results = 1000      # QIDO-RS cap on one response (a Warning header says when more exist)
    bulk_data_threshold = 1024  # binary values larger than this become BulkDataURI in metadata
    token_hours = 12        # lifetime of tokens from POST /auth/token
    max_upload_mb = 4096    # largest STOW-RS request body
    gzip_min_size = 1024    # JSON responses larger than this are gzipped for clients that accept it

Anonymous access (``anonymous``), chosen to be safe by default:

* ``"auto"`` (default): anonymous *read* only while the node has **no users
  at all** and the server is bound to a loopback address — a fresh
  workstation on localhost stays usable; as soon as one user exists, or the
  server listens on the network, every request must authenticate.
* ``"never"``: every request must authenticate.
* ``"read"``: anyone may read (QIDO/WADO); writing always needs a user.

Writing (STOW-RS) is never anonymous.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any

from hilum.errors import ConfigError

ANONYMOUS_MODES = ("auto", "never", "read")


@dataclass
class WebSettings:
    enabled: bool = True
    anonymous: str = "auto"
    tls_cert: str = ""
    tls_key: str = ""
    cors_origins: list[str] = field(default_factory=list)
    public_url: str = ""
    max_results: int = 1000
    bulk_data_threshold: int = 1024
    token_hours: float = 12.0
    max_upload_mb: int = 4096
    gzip_min_size: int = 1024

    @classmethod
    def from_config(cls, cfg: Any) -> WebSettings:
        """Read ``cfg.extra["web"]`` (unknown keys and bad values are :class:`ConfigError`)."""
        section = dict((getattr(cfg, "extra", None) or {}).get("web", {}) or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"unknown [web] setting(s): {', '.join(unknown)}")
        s = cls(**section)
        s.validate()
        return s

    def validate(self) -> None:
        if self.anonymous not in ANONYMOUS_MODES:
            raise ConfigError(f"[web] anonymous must be one of {', '.join(ANONYMOUS_MODES)}, not {self.anonymous!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("[web] tls_cert and tls_key go together")
        if not isinstance(self.cors_origins, list) or not all(isinstance(o, str) for o in self.cors_origins):
            raise ConfigError("[web] cors_origins must be a list of origins")
        for name in ("max_results", "bulk_data_threshold", "max_upload_mb", "gzip_min_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"[web] {name} must be a positive integer")
        if not isinstance(self.token_hours, (int, float)) or self.token_hours <= 0:
            raise ConfigError("[web] token_hours must be positive")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert and self.tls_key)


def is_loopback(host: str) -> bool:
    """Whether a bind address only accepts local connections."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
