"""``hilum forward status|retry|send``: the forwarding queue of ``[[forward]]`` rules, per destination.

* ``status`` — per destination: pending, sent, committed, failed, awaiting
  commitment, the last error, when the next try is due, the oldest pending
  instance (``--rows`` lists the rows themselves).
* ``retry [DEST]`` — failed (and waiting) rows due now, tries counted from 0.
* ``send [DEST] [--study UID...] [--again]`` — route what arrived and send
  every due row now, in this process (a running node's service does the same
  in the background); ``--study`` queues those studies for DEST by hand,
  ``--again`` even if they were sent before.

Exit status: 0 on success; 1 when ``send`` left instances to retry or failed, or hilum.toml has a typo;
2 on usage errors.
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime
from typing import Any

from hilum.cli._common import add_data_option, load, open_archive, print_json, quiet_pydicom
from hilum.errors import HilumError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "forward",
        help="forwarding queue: status, retry, send now",
        description="The forwarding queue of the [[forward]] rules in hilum.toml: per-destination status, "
        "retrying failed instances, sending what is due now.",
        epilog="exit status: 0 on success, 1 when send left instances to retry or failed, 2 on usage errors.",
    )
    sub = p.add_subparsers(dest="forward_verb", metavar="ACTION", required=True)
    st = sub.add_parser("status", help="per destination: pending, sent, committed, failed, last error, next try")
    add_data_option(st)
    st.add_argument("--rows", action="store_true", help="list the queue rows (newest change first)")
    st.add_argument("--state", choices=["pending", "sent", "committed", "failed"], help="with --rows: only these")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(handler=run_status)
    rt = sub.add_parser("retry", help="make failed (and waiting) instances due now")
    add_data_option(rt)
    rt.add_argument("destination", nargs="?", help="only this destination")
    rt.add_argument("--failed-only", action="store_true", help="only the failed ones, not those waiting to retry")
    rt.add_argument("--json", action="store_true", help="print JSON")
    rt.set_defaults(handler=run_retry)
    sd = sub.add_parser("send", help="route and send everything due now, in this process")
    add_data_option(sd)
    sd.add_argument("destination", nargs="?", help="only this destination (required with --study)")
    sd.add_argument("--study", action="append", default=[], metavar="UID", help="queue this study (repeatable)")
    sd.add_argument("--again", action="store_true", help="with --study: even instances sent before")
    sd.add_argument("--timeout", type=float, default=600.0, help="stop after this many seconds (default 600)")
    sd.add_argument("--json", action="store_true", help="print JSON")
    sd.set_defaults(handler=run_send)


def _rules(args: argparse.Namespace) -> Any:
    from hilum.archive.forward import ForwardRules
    from hilum.archive.policy import load_policies

    rules = load_policies(load(args)).get("forwarding")
    return rules if rules is not None else ForwardRules()


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def run_status(args: argparse.Namespace) -> int:
    from hilum.archive import forward

    quiet_pydicom(getattr(args, "verbose", 0))
    rules = _rules(args)
    archive = open_archive(args, must_exist=True)
    try:
        if args.rows:
            rows = forward.rows(archive, state=args.state)
            if args.json:
                print_json(rows)
            else:
                for r in rows:
                    print(
                        f"{r['destination']:<16} {r['state']:<10} {r['attempts']:>3} {r['sop_uid']}"
                        + (f"  {r['last_error']}" if r["last_error"] else "")
                    )
            return 0
        status = forward.status(archive)
    finally:
        archive.close()
    known = {d["destination"] for d in status}
    for dest in rules.destinations:  # configured destinations with nothing queued yet
        if dest not in known:
            status.append(forward.empty_status(dest))
    if args.json:
        print_json(status)
        return 0
    if not status:
        print("no forwarding: no [[forward]] rules in hilum.toml and nothing queued")
        return 0
    print(f"{'destination':<16} {'pending':>8} {'sent':>8} {'committed':>10} {'failed':>7}  next try / last error")
    for d in status:
        extra = f"next try {_when(d['next_try'])}" if d["pending"] else ""
        if d["awaiting_commitment"]:
            extra += f" {d['awaiting_commitment']} awaiting commitment"
        if d["last_error"]:
            extra += f"  last error ({_when(d['last_error_at'])}): {d['last_error']}"
        print(
            f"{d['destination']:<16} {d['pending']:>8} {d['sent']:>8} {d['committed']:>10} {d['failed']:>7}  "
            f"{extra.strip()}"
        )
    return 0


def run_retry(args: argparse.Namespace) -> int:
    from hilum.archive import forward

    rules = _rules(args)
    if args.destination and args.destination not in rules.destinations:
        archive = open_archive(args, must_exist=True)
        try:
            queued = {d["destination"] for d in forward.status(archive)}
        finally:
            archive.close()
        if args.destination not in queued:
            raise HilumError(f"no forwarding destination {args.destination!r}")
    archive = open_archive(args, must_exist=True)
    try:
        n = forward.retry(archive, args.destination, failed_only=args.failed_only)
    finally:
        archive.close()
    if args.json:
        print_json({"retried": n})
    else:
        print(
            f"{n} instance(s) due now" + ("; a running node sends them shortly, or 'hilum forward send'" if n else "")
        )
    return 0


def run_send(args: argparse.Namespace) -> int:
    from hilum.archive import forward
    from hilum.replication import drain

    verbose = getattr(args, "verbose", 0)
    quiet_pydicom(verbose)
    # pynetdicom says "Association request failed" at ERROR for a peer that is down: the summary says it once
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose >= 2 else logging.CRITICAL)
    cfg = load(args)
    rules = _rules(args)
    if args.destination and args.destination not in rules.destinations:
        raise HilumError(
            f"no [[forward]] rule sends to {args.destination!r} (known: {', '.join(rules.destinations) or 'none'})"
        )
    if args.study and not args.destination:
        raise HilumError("--study needs a DESTINATION")
    archive = open_archive(args, must_exist=True)
    try:
        queued = 0
        for uid in args.study:
            sops = [r["SOPInstanceUID"] for r in archive.query("IMAGE", {"StudyInstanceUID": uid})]
            if not sops:
                raise HilumError(f"no study {uid!r} in the archive")
            queued += forward.enqueue(archive, args.destination, sops, again=args.again)
        totals = drain(archive, cfg, rules, destination=args.destination, timeout=args.timeout)
        status = forward.status(archive)
    finally:
        archive.close()
    result: dict[str, dict[str, Any]] = {
        dest: {
            "sent": o.sent,
            "committed": o.committed,
            "retry": o.retry,
            "failed": o.failed,
            "bytes": o.bytes,
            "errors": sorted(set(o.errors))[:10],
        }
        for dest, o in totals.items()
    }
    left = sum(d["pending"] for d in status if not args.destination or d["destination"] == args.destination)
    if args.json:
        print_json({"queued": queued, "destinations": result, "pending": left})
    else:
        for dest, r in result.items():
            print(
                f"{dest}: {r['sent']} sent, {r['committed']} committed, {r['retry']} to retry, {r['failed']} failed"
                + (f" ({r['errors'][0]})" if r["errors"] else "")
            )
        if left:
            print(f"{left} instance(s) still pending (waiting for a retry)")
    bad = sum(r["retry"] + r["failed"] for r in result.values())
    return 1 if bad or left else 0
