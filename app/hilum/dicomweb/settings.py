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
    trusted_proxies = []    # addresses of reverse proxies whose X-Forwarded-For is believed (none by default)
    log_records_per_request = 20  # log records one request may write; the rest are counted in one summary line

    # Password guessing (see hilum.dicomweb.throttle for the whole policy)
    login_user_failures = 5         # wrong passwords for one user name before it is locked
    login_address_failures = 20     # wrong passwords from one address (IPv6: /64) before it is locked
    login_lockout_seconds = 10      # first lock; each further failure doubles it ...
    login_lockout_max_seconds = 900 # ... up to this
    login_reset_seconds = 900       # failures are forgotten after this long without one
    login_trust_days = 30           # an address the user logged in from is spared the user's global lock
    login_concurrency = 2           # password hashes (argon2id, ~64 MiB each) computed at once
    login_wait_seconds = 5          # a login waits this long for a hashing slot, then gets 503

    # Connections (idle, slow and too many clients)
    max_connections = 128           # open HTTP connections; more are answered 503 and closed
    max_connections_per_client = 32 # open connections from one address (0: no limit)
    header_timeout = 20             # seconds for a request line and headers to arrive, from connect
    keep_alive_timeout = 30         # an idle keep-alive connection is closed after this
    idle_timeout = 60               # a request body or response that makes no progress this long: closed
    max_header_bytes = 16384        # request line + headers larger than this: 400 and closed

    # The web viewer (OHIF, served at /viewer; see hilum.dicomweb.viewer)
    viewer = true                   # serve it (when its files are installed)
    viewer_dir = ""                 # OHIF's prebuilt dist/ (default: .venv/npm/node_modules/@ohif/app/dist)
    session_hours = 12              # a viewer sign-in lasts this long (an HttpOnly, SameSite=Strict cookie)
    link_minutes = 1440             # default lifetime of a link to one study ("Copy link", hilum users link)

Anonymous access (``anonymous``), chosen to be safe by default:

* ``"auto"`` (default): anonymous *read* only while the node has **no users
  at all** and the server is bound to a loopback address — a fresh
  workstation on localhost stays usable; as soon as one user exists, or the
  server listens on the network, every request must authenticate.
* ``"never"``: every request must authenticate.
* ``"read"``: anyone may read (QIDO/WADO); writing always needs a user.

Writing (STOW-RS) is never anonymous.

Connection limits (what uvicorn enforces by itself and what Hilum adds, see
:mod:`.connections`): uvicorn closes a keep-alive connection idle for
``timeout_keep_alive`` and h11 refuses a request head over
``max_header_bytes`` (400); nothing in uvicorn times out a client that
connects and sends nothing, sends its headers a byte at a time (slowloris),
or stalls in the middle of a body, and uvicorn's ``limit_concurrency``
counts idle connections too (so idle connections would make real requests
get 503).  Hilum's connection guard adds ``header_timeout`` (counted from
the connection, or from the end of the previous response plus
``keep_alive_timeout``, never restarted by a trickle of bytes),
``idle_timeout`` for bodies and responses, and ``max_connections`` /
``max_connections_per_client``, refused at accept time.
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
    trusted_proxies: list[str] = field(default_factory=list)
    log_records_per_request: int = 20
    login_user_failures: int = 5
    login_address_failures: int = 20
    login_lockout_seconds: float = 10.0
    login_lockout_max_seconds: float = 900.0
    login_reset_seconds: float = 900.0
    login_trust_days: float = 30.0
    login_concurrency: int = 2
    login_wait_seconds: float = 5.0
    max_connections: int = 128
    max_connections_per_client: int = 32
    header_timeout: float = 20.0
    keep_alive_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_header_bytes: int = 16384
    viewer: bool = True
    viewer_dir: str = ""
    session_hours: float = 12.0
    link_minutes: float = 1440.0

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
        if not isinstance(self.trusted_proxies, list) or not all(isinstance(o, str) for o in self.trusted_proxies):
            raise ConfigError("[web] trusted_proxies must be a list of addresses")
        for name in ("max_results", "bulk_data_threshold", "max_upload_mb", "gzip_min_size", "log_records_per_request",
                     "login_user_failures", "login_address_failures", "login_concurrency", "max_connections",
                     "max_header_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"[web] {name} must be a positive integer")
        v = self.max_connections_per_client
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ConfigError("[web] max_connections_per_client must be 0 (no limit) or a positive integer")
        if not isinstance(self.viewer_dir, str):
            raise ConfigError("[web] viewer_dir must be a folder path")
        for name in ("token_hours", "session_hours", "link_minutes", "login_lockout_seconds", "login_lockout_max_seconds", "login_reset_seconds",
                     "login_trust_days", "login_wait_seconds", "header_timeout", "keep_alive_timeout",
                     "idle_timeout"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or v == float("inf"):
                unit = ("hours" if name.endswith("_hours") else "days" if name.endswith("_days")
                        else "minutes" if name.endswith("_minutes") else "seconds")
                raise ConfigError(f"[web] {name} must be a positive number of {unit}")

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
