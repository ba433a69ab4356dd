"""``hilum serve``: run the node headless until SIGINT/SIGTERM (../shared/DESIGN.md, CLI contract)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from hilum.cli._common import quiet_pydicom
from hilum.cli._runtime import LogSettings, RunFileService, open_log_file
from hilum.errors import HilumError

if TYPE_CHECKING:
    from hilum.node import Node


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "serve",
        help="run the node headless (DICOM SCP, and the other services)",
        description="Run the Hilum node without a window: receive (C-STORE), answer queries (C-FIND), "
        "retrieve (C-MOVE/C-GET) and commit storage, until SIGTERM, SIGINT or SIGHUP: then new associations "
        "are refused, those in flight finish for up to [node] stop_timeout seconds (default 30; a second "
        "signal aborts them at once) and it exits 0. Under systemd (Type=notify) it says READY=1 once it "
        "listens. Settings come from DATA/hilum.toml; options override them.",
    )
    p.add_argument("--data", metavar="DIR", help="data folder (default: $HILUM_DATA or the user data dir)")
    p.add_argument("--aet", metavar="AET", help="the node's AE title (default from hilum.toml, else HILUM)")
    p.add_argument("--dicom-port", type=int, metavar="N", help="DICOM port (default 11112)")
    p.add_argument("--web-port", type=int, metavar="N", help="DICOMweb HTTP port (default 8042)")
    p.add_argument("--hl7-port", type=int, metavar="N", help="HL7 MLLP port (default 2575)")
    p.add_argument("--bind", metavar="ADDR", help="address to listen on (default 127.0.0.1)")
    p.set_defaults(handler=run_serve)


def _port(value: int | None, option: str) -> int | None:
    if value is not None and not 0 <= value <= 65535:
        raise HilumError(f"{option} must be between 0 and 65535, got {value}")
    return value


def run_serve(args: argparse.Namespace) -> int:
    from hilum.config import load_config
    from hilum.node import Node

    cfg = load_config(args.data)
    if args.aet is not None:
        aet = args.aet.strip()
        if not aet or len(aet) > 16 or "\\" in aet:
            raise HilumError(f"--aet must be 1 to 16 characters without a backslash, got {args.aet!r}")
        cfg.aet = aet
    for option, attr in (("--dicom-port", "dicom_port"), ("--web-port", "web_port"), ("--hl7-port", "hl7_port")):
        value = _port(getattr(args, attr), option)
        if value is not None:
            setattr(cfg, attr, value)
    if args.bind:
        cfg.bind = args.bind
    if args.verbose == 0:  # one line per association is the point of a headless node
        logging.getLogger("hilum").setLevel(logging.INFO)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if args.verbose >= 2 else logging.CRITICAL)
    # pydicom logs AND warns once per invalid value it meets while encoding or decoding: one C-MOVE
    # of an instance with 3,000 such values wrote 9,000 lines.  The node reports what matters (one
    # line per association, each refusal); -v lets pydicom speak again.
    quiet_pydicom(args.verbose)
    log_file = open_log_file(cfg.data_dir, LogSettings.from_config(cfg))  # issue 22: DATA/logs/hilum.log
    node = Node(cfg)
    _add_ai_service(node, cfg)
    _add_status(node)  # issue 22: DATA/run/node.json, last to start and first to stop
    try:
        node.serve_forever()
    except OSError as exc:
        raise HilumError(f"cannot listen on {cfg.bind}:{cfg.dicom_port}: {exc.strerror or exc}") from exc
    finally:
        if log_file is not None:
            logging.getLogger().removeHandler(log_file)
            log_file.close()
    return 0


def _add_status(node: Node) -> None:
    """The status file for ``hilum status`` (issue 22), and the prefetch queue for ``/metrics``."""
    from hilum.archive.metrics import metrics_for

    prefetcher = node.prefetcher
    if prefetcher is not None:
        metrics_for(node.archive).prefetch_queue = lambda: sum(
            1 for j in prefetcher.jobs() if j.state in ("queued", "running")
        )
    node.services.append(RunFileService(node))


def _add_ai_service(node: object, cfg: object) -> None:
    """The AI auto-run service (issue 19) joins the node's services when ``[ai]`` has rules or jobs are queued."""
    from hilum.ai.rules import AIService, load_settings
    from hilum.archive import ai_jobs

    settings = load_settings(cfg)
    archive = node.archive  # type: ignore[attr-defined]
    if (
        settings.rules
        or ai_jobs.jobs(archive, state="queued", limit=1)
        or ai_jobs.jobs(archive, state="running", limit=1)
    ):
        node.services.append(AIService(archive, settings))  # type: ignore[attr-defined]
