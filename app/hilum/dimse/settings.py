"""The ``[dimse]`` section of ``hilum.toml``: which engine runs the DICOM listener, and its bounds.

::

    [dimse]
    engine = "fast"          # "fast" | "pynetdicom" (the environment variable HILUM_DIMSE_ENGINE wins)
    tls_port = 2762          # optional: plain DICOM on [node] dicom_port AND TLS here
    artim_timeout = 10       # seconds a connection has to deliver its whole A-ASSOCIATE-RQ
    max_pending = 32         # connections still without a complete A-ASSOCIATE-RQ

``engine``: ``"fast"`` runs :mod:`hilum.dimse.reactor` and
:mod:`hilum.dimse.storefast` (event-driven loops, direct C-STORE and C-FIND
responses), which reach into pynetdicom's internals; ``"pynetdicom"`` runs
pynetdicom's own classes with Hilum's event handlers only.  Both run behind
the same bounds (:mod:`hilum.dimse.guard`).  ``HILUM_DIMSE_ENGINE`` overrides
the file so that a test run (``installer/test.sh``) or an operator can switch
without editing it.

``artim_timeout`` is the ARTIM timer of PS3.8 9.1.5 for the node as acceptor:
from the moment a connection is accepted until its A-ASSOCIATE-RQ has arrived
whole (also while a PDU is half-read), and while the node waits for the peer
to close after a release or abort.

``max_pending``: connections that have not yet delivered an A-ASSOCIATE-RQ
are bounded apart from ``[node] max_associations`` (which counts associations
only); when one more arrives, the oldest pending connection is dropped, so
half-open connections cannot keep real peers out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from hilum.errors import ConfigError

ENGINES = ("fast", "pynetdicom")
ENGINE_ENV = "HILUM_DIMSE_ENGINE"

MAX_PDU_CEILING = 16 << 20
"""The largest ``[node] max_pdu_size`` accepted (bytes): every PDU a peer sends
after association may be that long, so it bounds what one PDU read holds."""


@dataclass
class DimseSettings:
    engine: str = "fast"
    tls_port: int | None = None
    artim_timeout: float = 10.0
    max_pending: int = 32

    @classmethod
    def from_config(cls, cfg: Any) -> DimseSettings:
        """Read ``cfg.extra["dimse"]`` and ``HILUM_DIMSE_ENGINE``; unknown keys and bad values
        are :class:`ConfigError`, as are ``[node]`` limits the listener cannot honour."""
        section = dict((getattr(cfg, "extra", None) or {}).get("dimse", {}) or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"unknown [dimse] setting(s): {', '.join(unknown)}")
        s = cls(**section)
        env = os.environ.get(ENGINE_ENV, "").strip()
        if env:
            if env not in ENGINES:
                raise ConfigError(f"{ENGINE_ENV} must be one of {', '.join(ENGINES)}, not {env!r}")
            s.engine = env
        s.validate()
        _validate_node(cfg)
        return s

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"[dimse] engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.tls_port is not None and (not isinstance(self.tls_port, int) or not 0 <= self.tls_port < 65536):
            raise ConfigError("[dimse] tls_port must be a port number")
        if not isinstance(self.artim_timeout, (int, float)) or not 0 < self.artim_timeout <= 600:
            raise ConfigError("[dimse] artim_timeout must be between 0 and 600 seconds")
        if not isinstance(self.max_pending, int) or not 1 <= self.max_pending <= 4096:
            raise ConfigError("[dimse] max_pending must be between 1 and 4096")


def _validate_node(cfg: Any) -> None:
    max_pdu = getattr(cfg, "max_pdu_size", 0)
    if not isinstance(max_pdu, int) or not (max_pdu == 0 or 4096 <= max_pdu <= MAX_PDU_CEILING):
        raise ConfigError(f"[node] max_pdu_size must be 0 (1 MiB) or between 4096 and {MAX_PDU_CEILING} bytes")
    max_assoc = getattr(cfg, "max_associations", 32)
    if not isinstance(max_assoc, int) or not 1 <= max_assoc <= 4096:
        raise ConfigError("[node] max_associations must be between 1 and 4096")


__all__ = ["ENGINES", "ENGINE_ENV", "MAX_PDU_CEILING", "DimseSettings"]
