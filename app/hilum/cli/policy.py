"""``hilum policy run|status|log``: the storage policies of ``hilum.toml`` by hand, where the bytes are, what was done.

``run`` applies one pass of the rules (compression, tier moves, retention —
:func:`hilum.archive.policy.run_pass`), or with ``--dry-run`` lists what
they would do and changes nothing.  ``status`` shows the online store's use
against its capacity and watermarks, the copies per tier and peer, the space
compression saved, the forwarding queue per destination, protections
(:func:`hilum.archive.storage_status.storage_status`).  ``log`` lists the
policy log, newest first.  Exit status: 0 on success, 1 when a rule file is
refused or a policy failed, 2 on usage errors.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from hilum.cli._common import load, open_archive, print_json
from hilum.errors import HilumError

PASSES = ("compression", "tiers", "retention", "forwarding")  # forwarding: dry runs only (its service sends)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "policy",
        help="storage policies: run them now (or a dry run), their status, their log",
        description="The storage rules of hilum.toml ([[compression]], [tiers.*]/[[tiering]], [retention]/[[purge]], "
        "[[forward]]): run a pass now, see where the bytes are, read what the policies did.",
    )
    sub = p.add_subparsers(dest="policy_verb", metavar="ACTION")
    sub.required = True
    run = sub.add_parser(
        "run",
        help="apply the rules once now (or list what they would do)",
        description="Apply one pass of the storage rules now: compression, then tier moves, then retention. "
        "With --dry-run nothing changes: each study a rule would act on is listed.",
        epilog="example: hilum policy run --dry-run --only retention --json",
    )
    run.add_argument("--dry-run", action="store_true", help="change nothing; list what each rule would do")
    run.add_argument(
        "--only",
        action="append",
        choices=PASSES,
        metavar="POLICY",
        help=f"run only this policy ({', '.join(PASSES)}); may be repeated",
    )
    run.add_argument("--json", action="store_true", help="JSON output")
    run.set_defaults(handler=run_policies)
    st = sub.add_parser(
        "status",
        help="online use, watermarks, tiers, compression, forwarding, protections",
        description="Where the archive's bytes are and what the policies hold: online use against "
        "capacity and the retention watermarks, copies per tier and peer, space saved by "
        "compression, the forwarding queue per destination, protections, the latest log rows.",
    )
    st.add_argument("--json", action="store_true", help="JSON output")
    st.set_defaults(handler=run_status)
    lg = sub.add_parser(
        "log",
        help="what the policies did, newest first",
        description="The policy log: compress, move, recall, purge, delete, forward, backup, "
        "restore — one row per study (or instance) and action.",
    )
    lg.add_argument("--action", metavar="A", help="only this action (compress, move, recall, purge, ...)")
    lg.add_argument("--limit", type=int, default=50, metavar="N", help="at most N rows (default 50)")
    lg.add_argument("--json", action="store_true", help="JSON output")
    lg.set_defaults(handler=run_log)


def mb(n: float) -> str:
    """Bytes for people: ``1.2 MB``, ``3.40 GB``."""
    n = float(n)
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f} GB"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} KB"


def jsonable(obj: Any) -> Any:
    """Datetimes as ISO 8601 strings, all the way down."""
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else str(value or "-")


def _policies(args: argparse.Namespace, archive: Any) -> Any:
    """The policies of the data folder's hilum.toml (a typo: one error line naming the line), set on the archive."""
    from hilum.archive.policy import load_policies

    policies = load_policies(load(args))
    configure = getattr(archive, "configure_storage", None)
    if configure is not None:
        configure(policies)
    return policies


def action_line(task: str, a: dict[str, Any], dry_run: bool) -> str:
    """One study a policy acted on (or would): ``would compress 1.2.3 (rule ct): 40 instances, 20.0 MB — reason``."""
    verb = {"compression": "compress", "tiers": "move", "retention": "purge", "forwarding": "forward"}.get(task, task)
    rule = f" (rule {a['rule']})" if a.get("rule") else ""
    reason = f" — {a['reason']}" if a.get("reason") else ""
    return (
        f"{'would ' if dry_run else ''}{verb} {a.get('uid', '?')}{rule}: {a.get('instances', 0)} instances, "
        f"{mb(a.get('bytes', 0))}{reason}"
    )


def run_policies(args: argparse.Namespace) -> int:
    from hilum.archive.policy import run_pass

    reports = []
    with open_archive(args, must_exist=True) as archive:
        policies = _policies(args, archive)
        if not policies.enabled and not args.json:
            print("note: [storage] policies = false: this node applies none in the background; running them now")
        for name in PASSES:  # one at a time: each is reported as it ends (a first compression takes a while)
            if (args.only and name not in args.only) or (name == "forwarding" and not args.dry_run):
                continue
            done = run_pass(archive, policies, dry_run=args.dry_run, only=[name])
            reports += done
            if not args.json:
                for r in done:
                    _print_report(r, args.dry_run)
    failed = any(r.errors for r in reports)
    if args.json:
        print_json({"dry_run": args.dry_run, "reports": [r.as_dict() for r in reports], "ok": not failed})
    elif not reports:
        print("no storage policy to run (no rules in hilum.toml)")
    return 1 if failed else 0


def _print_report(r: Any, dry_run: bool) -> None:
    n = r.instances or sum(int(a.get("instances", 0)) for a in r.actions)
    head = f"{r.task}: {len(r.actions)} stud{'y' if len(r.actions) == 1 else 'ies'}, {n} instances"
    if r.bytes_before or r.bytes_after:
        head += f", {mb(r.bytes_before)} -> {mb(r.bytes_after)} (saved {mb(r.saved)})"
    print(head + (" (dry run: nothing changed)" if dry_run else ""), flush=True)
    for a in r.actions:
        print("  " + action_line(r.task, a, dry_run))
    for e in r.errors:
        print(f"  error: {e}", flush=True)


def run_status(args: argparse.Namespace) -> int:
    from hilum.archive.storage_status import storage_status

    with open_archive(args, must_exist=True) as archive:
        status = storage_status(archive, _policies(args, archive), log_rows=10)
    if args.json:
        print_json(jsonable(status))
        return 0
    on = status["online"]
    marks = (
        f"; purge from {on['high_watermark']:g}% down to {on['low_watermark']:g}%"
        if on["high_watermark"]
        else "; no watermark purge"
    )
    print(
        f"policies: {'on' if status['policies_enabled'] else 'off on this node'}"
        + "".join(f", {k} {n} rule{'s' if n != 1 else ''}" for k, n in status["rules"].items())
    )
    print(
        f"online: {on['instances']} instances, {mb(on['bytes'])}; {on['used_percent']:g}% of "
        f"{mb(on['capacity_bytes'])} used ({on['capacity_from']}){marks}"
    )
    off = status["offline"]
    if off["instances"]:
        print(f"off line: {off['instances']} instances, {mb(off['bytes'])} (recalled when opened)")
    for c in status["copies"]:
        print(f"  {c['location']}: {c['instances']} instances ({c['verified']} verified), {mb(c['bytes'])}")
    comp = status["compression"]
    print(f"compression: saved {mb(comp['saved_bytes'])} on {comp['instances']} instances")
    for f in status["forwarding"]:
        if "error" in f:
            print(f"  forwarding: {f['error']}")
            continue
        print(
            f"  forward to {f.get('destination')}: {f.get('pending', 0)} pending, {f.get('sent', 0)} sent, "
            f"{f.get('committed', 0)} committed, {f.get('failed', 0)} failed"
            + (f"; last error: {f['last_error']}" if f.get("last_error") else "")
        )
    prot = status["protections"]
    print(
        f"protections: {len(prot)}"
        + "".join(
            f"\n  {p['level'].lower()} {p['uid']}" + (f" ({p['reason']})" if p.get("reason") else "") for p in prot
        )
    )
    if status["trash"]:
        print(f"blob trash: {status['trash']} key(s) waiting to be reaped")
    for row in status["recent"]:
        print("  " + log_line(row))
    return 0


def log_line(row: dict[str, Any]) -> str:
    """One policy log row for people."""
    size = ""
    if row.get("bytes_before") or row.get("bytes_after"):
        size = f", {mb(row['bytes_before'])} -> {mb(row['bytes_after'])}"
    return (
        f"{_when(row.get('at'))}  {row.get('action', ''):9s} {row.get('level', '').lower()} {row.get('uid', '')}"
        + (f" (rule {row['rule']})" if row.get("rule") else "")
        + f": {row.get('instances', 0)} instances{size}"
        + (f"; {row['detail']}" if row.get("detail") else "")
    )


def run_log(args: argparse.Namespace) -> int:
    from hilum.archive.storage import policy_history

    if args.limit < 1:
        raise HilumError(f"--limit must be 1 or more, got {args.limit}")
    with open_archive(args, must_exist=True) as archive:
        rows = policy_history(archive, action=args.action, limit=args.limit)
    if args.json:
        print_json(jsonable(rows))
        return 0
    if not rows:
        print("the policy log is empty" + (f" for {args.action}" if args.action else ""))
    for row in rows:
        print(log_line(row))
    return 0
