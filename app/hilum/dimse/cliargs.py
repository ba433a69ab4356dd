"""Command-line options shared by the SCU verbs (``hilum echo|find|move|get|send``).

DCMTK-like where it makes sense: ``HOST PORT``, ``-aet`` (calling AE
title), ``-aec`` (called AE title), ``-k key=value``, ``-L`` level.  The
peer may also be named by its name or AE title in ``hilum.toml``
(``hilum echo PACS``), which supplies host, port, AE title and TLS.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from hilum.errors import HilumError

if TYPE_CHECKING:  # the verbs' parsers are built for every ``hilum`` command: keep this import light
    from hilum.dimse.scu import Target

DEFAULT_CALLED = "ANY-SCP"


def add_peer_arguments(p: argparse.ArgumentParser, *, port_optional: bool = True, host_optional: bool = False) -> None:
    """``HOST [PORT]`` and the association options; ``port_optional=False`` where more positionals follow;
    ``host_optional`` where the verb has a mode without a peer (``hilum find --local``)."""
    if port_optional:
        p.add_argument("host", metavar="HOST", nargs="?" if host_optional else None,
                       help="peer host name or address, or a peer's name/AE title in hilum.toml")
        p.add_argument("port", metavar="PORT", nargs="?", type=int,
                       help="peer port (omit when HOST names a configured peer)")
    else:
        p.add_argument("host", metavar="HOST", help="peer host name or address")
        p.add_argument("port", metavar="PORT", type=int, help="peer port")
    p.add_argument("-aet", "--calling-aet", dest="calling_aet", metavar="AET",
                   help="our (calling) AE title (default: the node's, from hilum.toml, else HILUM)")
    p.add_argument("-aec", "--called-aet", dest="called_aet", metavar="AET",
                   help=f"the peer's (called) AE title (default {DEFAULT_CALLED}, or the configured peer's)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="connection, ACSE and DIMSE timeout in seconds (default 30)")
    p.add_argument("--max-pdu", type=int, default=1 << 20, metavar="N",
                   help="largest PDU the peer may send us, bytes (default 1 MiB; 0 = no limit)")
    p.add_argument("--data", metavar="DIR", help="data folder whose hilum.toml names our AE title and the peers")
    tls = p.add_argument_group("TLS (PS3.15 B.1)")
    tls.add_argument("--tls", action="store_true", help="connect over TLS")
    tls.add_argument("--tls-ca", metavar="FILE", help="CA certificates that sign the peer's certificate")
    tls.add_argument("--tls-cert", metavar="FILE", help="our certificate (when the peer asks for one)")
    tls.add_argument("--tls-key", metavar="FILE", help="our private key")
    tls.add_argument("--tls-no-verify", action="store_true", help="do not verify the peer's certificate")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_retrieve_arguments(p: argparse.ArgumentParser) -> None:
    """The options C-MOVE and C-GET share: level, unique keys, information model."""
    p.add_argument("-L", "--level", type=str.upper, choices=["PATIENT", "STUDY", "SERIES", "IMAGE", "INSTANCE"],
                   help="retrieve level (default: from the unique keys)")
    p.add_argument("-k", "--key", action="append", default=[], metavar="KEY=VALUE", help="unique key")
    p.add_argument("--root", default="study", choices=["study", "patient"], help="information model")


def retrieve_keys(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The retrieve level and unique keys of ``-L``/``-k``; at least one key must have a value."""
    from hilum.dimse.scu import DimseError, infer_level, parse_keys

    keys = parse_keys(args.key)
    level = keys.pop("QueryRetrieveLevel", "") or args.level or infer_level(keys)
    if not any(v for v in keys.values()):
        raise DimseError("give at least one unique key, e.g. -k StudyInstanceUID=...")
    return level, keys


def quiet_pynetdicom(args: argparse.Namespace) -> None:
    """pynetdicom logs every failure at ERROR; the verbs print one line of their own instead."""
    verbose = getattr(args, "verbose", 0)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)


def _aet(value: str, option: str) -> str:
    value = value.strip()
    if not value or len(value) > 16 or "\\" in value:
        raise HilumError(f"{option} must be 1 to 16 characters without a backslash, got {value!r}")
    return value


def target_from_args(args: argparse.Namespace) -> Target:
    """The :class:`Target` the options describe (configured peers resolved)."""
    from hilum.config import load_config
    from hilum.dimse.net import client_ssl_context
    from hilum.dimse.scu import DimseError, Target

    quiet_pynetdicom(args)
    cfg = load_config(args.data)
    host, port = args.host, args.port
    called = args.called_aet
    use_tls = args.tls
    if port is None:
        peer = cfg.peers.get(host) or next((p for p in cfg.peers.values() if p.aet == host), None)
        if peer is None:
            raise DimseError(f"{host!r} is not a configured peer: give HOST PORT")
        host, port = peer.host, peer.port
        called = called or peer.aet
        use_tls = use_tls or peer.tls
    if not 1 <= int(port) <= 65535:
        raise DimseError(f"PORT must be between 1 and 65535, got {port}")
    tls = None
    if use_tls:
        tls = client_ssl_context(args.tls_ca or cfg.tls_ca, args.tls_cert or cfg.tls_cert,
                                 args.tls_key or cfg.tls_key, verify=not args.tls_no_verify)
    if args.timeout <= 0:
        raise DimseError("--timeout must be positive")
    return Target(host=host, port=int(port), called_aet=_aet(called or DEFAULT_CALLED, "-aec"),
                  calling_aet=_aet(args.calling_aet or cfg.aet, "-aet"), tls=tls, timeout=args.timeout,
                  max_pdu=max(0, args.max_pdu))


def progress_bar(enabled: bool) -> Any:
    """A rich progress bar on stderr when it is a terminal, else None."""
    if not enabled or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), transient=True)
