"""``hilum audit``: search, verify and export the audit trail (:mod:`hilum.archive.audit`).

::

    hilum audit [--user U] [--patient P] [--study S] [--event E] [--since T] [--until T] [--limit N] [--json]
    hilum audit verify [--json]
    hilum audit export --format xml|json [--out FILE] [filters...]

``verify`` recomputes the hash chain and exits 1 naming the first broken
event (modified, deleted or inserted rows).  ``export --format xml`` writes
the DICOM audit messages (PS3.15 A.5.1 schema) inside one ``<AuditMessages>``
element.  Reading the trail is itself audited ("Audit Log Used", PS3.15
A.5.3.2).  Exit status: 0 on success, 1 on a broken chain, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from hilum.cli._common import add_data_option, open_archive, print_json
from hilum.errors import HilumError

_COLUMNS = (
    "pk",
    "at",
    "event",
    "event_type",
    "action",
    "outcome",
    "user",
    "ae_title",
    "peer",
    "role",
    "patient_id",
    "patient_name",
    "study_uids",
    "instances",
    "detail",
)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "audit",
        help="search, verify or export the audit trail",
        description="List audit events (who did what to which patient's data, when, from where), verify the "
        "hash chain of the trail (verify), or export it as DICOM audit messages (export --format xml).",
        epilog="exit status: 0 on success, 1 when verify finds a broken chain, 2 on usage errors. "
        "examples: hilum audit --patient MRN0042 --since 2026-01-01; hilum audit verify",
    )
    add_data_option(p)
    p.add_argument(
        "command",
        nargs="?",
        choices=("search", "verify", "export"),
        default="search",
        help="search (default), verify, or export",
    )
    p.add_argument("--user", metavar="U", help="user name or calling AE title")
    p.add_argument("--patient", metavar="P", help="Patient ID, or patient name (* wildcards)")
    p.add_argument("--study", metavar="UID", help="Study Instance UID")
    p.add_argument("--event", metavar="E", help='event id or type, e.g. "Query", "Login"')
    p.add_argument("--since", metavar="T", help="from this time (ISO 8601 date or date-time, UTC unless given)")
    p.add_argument("--until", metavar="T", help="up to this time (a date alone: to its end)")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="at most N events (the newest N)")
    p.add_argument("--format", choices=("xml", "json"), default="xml", help="export format (default xml)")
    p.add_argument("--out", metavar="FILE", help="export to FILE instead of standard output")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=run_audit)


def parse_time(text: str | None, *, end: bool = False) -> datetime | None:
    """An ISO 8601 date or date-time; a date alone is its start (or, with ``end``, its last microsecond)."""
    if not text:
        return None
    try:
        if len(text) == 10:
            d = date.fromisoformat(text)
            return datetime.combine(d, time.max if end else time.min, tzinfo=UTC)
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise HilumError(f"not a date or date-time: {text!r} (e.g. 2026-12-06 or 2026-12-06T14:30)") from exc
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def run_audit(args: argparse.Namespace) -> int:
    from hilum.archive.audit import os_user

    if args.limit < 0:
        raise HilumError("--limit must be 0 (no limit) or more")
    since, until = parse_time(args.since), parse_time(args.until, end=True)
    archive = open_archive(args, must_exist=True)
    try:
        trail = archive.audit
        if args.command == "verify":
            result = trail.verify()
            trail.record(
                "Audit Log Used",
                action="R",
                outcome=0 if result.ok else 8,
                user=os_user(),
                detail=f"hilum audit verify: {result.line()}",
            )
            if args.json:
                print_json(
                    {"ok": result.ok, "events": result.rows, "bad_event": result.bad_pk, "reason": result.reason}
                )
            else:
                print(result.line(), file=sys.stdout if result.ok else sys.stderr)
            return 0 if result.ok else 1
        rows = trail.search(
            user=args.user,
            patient=args.patient,
            study=args.study,
            event=args.event,
            since=since,
            until=until,
            limit=args.limit or None,
            newest_first=bool(args.limit),
        )
        if args.limit:
            rows.reverse()
        filters = " ".join(
            f"--{k} {v}" for k in ("user", "patient", "study", "event", "since", "until") if (v := getattr(args, k))
        )
        trail.record(
            "Audit Log Used",
            action="R",
            user=os_user(),
            detail=f"hilum audit {args.command} {filters}".strip() + f" -> {len(rows)} events",
        )
        if args.command == "export":
            if args.format == "xml":
                text = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessages>\n'
                    + "".join(trail.to_xml(r) + "\n" for r in rows)
                    + "</AuditMessages>\n"
                )
            else:
                text = json.dumps([_jsonable(r) for r in rows], ensure_ascii=False, indent=1) + "\n"
            if args.out:
                Path(args.out).write_text(text, encoding="utf-8")
                print(f"wrote {len(rows)} events to {args.out}", file=sys.stderr)
            else:
                sys.stdout.write(text)
            return 0
        if args.json:
            print_json([_jsonable(r) for r in rows])
            return 0
        if not rows:
            print("no audit events match")
            return 0
        for r in rows:
            who = r["user"] + (f" ({r['ae_title']})" if r["ae_title"] and r["ae_title"] != r["user"] else "")
            where = f" from {r['peer']}" if r["peer"] else ""
            patient = (
                f" patient {r['patient_id']}" + (f" {r['patient_name']}" if r["patient_name"] else "")
                if r["patient_id"]
                else ""
            )
            studies = f" studies {r['study_uids']}" if r["study_uids"] else ""
            n = f" {r['instances']} instances" if r["instances"] else ""
            kind = r["event"] + (f"/{r['event_type']}" if r["event_type"] else "")
            outcome = "" if r["outcome"] == 0 else f" OUTCOME {r['outcome']}"
            print(
                f"{r['pk']:>6} {r['at']:%Y-%m-%d %H:%M:%S} {kind} {r['action']}{outcome} by {who}{where}"
                f"{patient}{studies}{n}: {r['detail']}"
            )
        return 0
    finally:
        archive.close()
