"""``hilum hl7``: send HL7 v2 messages over MLLP, list the orders the node holds.

::

    hilum hl7 send HOST PORT FILE... [--timeout S] [--json]
    hilum hl7 orders [--data DIR] [--all] [--modality CT] [--date YYYYMMDD[-YYYYMMDD]] [--json]

``send`` reads each FILE (``-`` = standard input) as one or more messages
(each starting with ``MSH``; line ends LF, CRLF or CR), sends them one by
one on one connection and prints each ACK's code; it exits 1 if any was not
accepted (AE/AR) or the peer could not be reached.  Files are sent as bytes,
so their character set must be the one their MSH-18 names.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
from pathlib import Path

from hilum.errors import HilumError


class HL7CliError(HilumError):
    """A bad ``hilum hl7`` argument or an unreachable peer."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("hl7", help="send HL7 messages (MLLP), list orders",
                              description="Send HL7 v2 messages to an MLLP listener and show the ACKs; "
                                          "list the orders (worklist) of the local node.")
    sub = p.add_subparsers(dest="hl7_command", metavar="COMMAND", required=True)
    send = sub.add_parser("send", help="send message files to HOST PORT over MLLP",
                          description="Send the HL7 v2 messages of FILE(s) one by one on one MLLP connection; "
                                      "print each ACK code; exit 1 if any was not accepted.")
    send.add_argument("host", metavar="HOST")
    send.add_argument("port", metavar="PORT", type=int)
    send.add_argument("files", metavar="FILE", nargs="+", help="message file(s), '-' for standard input")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each ACK (default 30)")
    send.add_argument("--json", action="store_true", help="print JSON")
    send.set_defaults(handler=_send)

    orders = sub.add_parser("orders", help="list the orders (scheduled procedure steps) of the local archive")
    orders.add_argument("--data", metavar="DIR", help="data folder (default: HILUM_DATA or the platform's)")
    orders.add_argument("--all", action="store_true", help="include completed, discontinued and cancelled")
    orders.add_argument("--modality", default="", help="e.g. CT")
    orders.add_argument("--date", default="", help="scheduled date or range, e.g. 20260101-20260131")
    orders.add_argument("--json", action="store_true", help="print JSON")
    orders.set_defaults(handler=_orders)


def split_messages(data: bytes) -> list[bytes]:
    """The messages of a file: each starts at a line beginning with ``MSH``; segments end with CR."""
    text = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    text = text.strip(b"\x0b\x1c\r\t ")
    parts = re.split(rb"\r(?=MSH)", text)
    return [p.strip(b"\x0b\x1c\r\t ") + b"\r" for p in parts if p.strip()]


def _send(args: argparse.Namespace) -> int:
    from hilum.hl7.message import ack_code_of
    from hilum.hl7.mllp import MLLPError, exchange

    messages: list[tuple[str, bytes]] = []
    for name in args.files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as exc:
            raise HL7CliError(f"cannot read {name}: {exc.strerror or exc}") from exc
        found = split_messages(data)
        if not found:
            raise HL7CliError(f"{name}: no HL7 message (nothing starting with MSH)")
        messages += [(name, m) for m in found]
    try:
        sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    except OSError as exc:
        raise HL7CliError(f"cannot connect to {args.host}:{args.port}: {exc.strerror or exc}") from exc
    results = []
    ok = True
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for name, msg in messages:
            try:
                ack = exchange(sock, msg)
            except (OSError, MLLPError) as exc:
                raise HL7CliError(f"{name}: {exc}") from exc
            code, text = ack_code_of(ack)
            ok = ok and code in ("AA", "CA")
            results.append({"file": name, "ack": code, "text": text, "raw": ack.decode("utf-8", "replace")})
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            print(f"{r['file']}: {r['ack'] or '?'}{' ' + r['text'] if r['text'] else ''}")
    return 0 if ok else 1


def _orders(args: argparse.Namespace) -> int:
    from hilum.archive import Archive
    from hilum.archive.orders import OrderBook
    from hilum.config import load_config

    cfg = load_config(args.data)
    ident = {"Modality": args.modality.upper(), "ScheduledProcedureStepStartDate": args.date}
    with Archive.from_config(cfg) as archive:
        try:
            rows = OrderBook(archive).worklist(ident, active_only=not args.all)
        except ValueError as exc:
            raise HL7CliError(str(exc)) from exc
    keys = ("AccessionNumber", "PatientID", "PatientName", "Modality", "ScheduledStationAETitle",
            "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime", "RequestedProcedureDescription",
            "StudyInstanceUID")
    out = [{**{k: r[k] for k in keys}, "Status": r["_status"], "ImagesArrived": r["_images_at"] is not None}
           for r in rows]
    if args.json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        for r in out:
            print(f"{r['AccessionNumber']:<16} {r['Status']:<12} {r['Modality']:<4} {r['ScheduledStationAETitle']:<16} "
                  f"{r['ScheduledProcedureStepStartDate']} {r['ScheduledProcedureStepStartTime']:<6} "
                  f"{r['PatientID']:<12} {r['PatientName']}  {r['RequestedProcedureDescription']}"
                  f"{'  [images]' if r['ImagesArrived'] else ''}")
        print(f"{len(out)} order(s)")
    return 0
