"""``hilum report``: the reports of the archive and their HL7 outbox (administration and testing).

::

    hilum report list [--study UID] [--patient ID] [--state draft|preliminary|final|amended] [--json]
    hilum report show REPORT_ID [--json]        sections, state changes, DICOM copies, outbox messages
    hilum report outbox [--state pending|sent|failed-ae|failed-ar|abandoned] [--json]
    hilum report retry PK... | --failed          send stopped messages again (never one delivered already)
    hilum report abandon PK...                   give up on a message
    hilum report send                            one outbox pass now, to the endpoints of hilum.toml

Reports are written and signed in the workstation (:mod:`hilum.archive.reports`); the outbox is sent by
``hilum serve`` and the workstation (:mod:`hilum.hl7.outbox`).  Exit status: 0 on success; 1 when a report
or message does not exist, ``outbox`` finds a stopped message (failed-ae/failed-ar), or ``send`` leaves
messages undelivered; 2 on usage errors.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Any

from hilum.cli._common import add_data_option, load, open_archive, print_json
from hilum.errors import HilumError

FAILED = ("failed-ae", "failed-ar")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "report",
        help="list reports and their HL7 outbox (administration, testing)",
        description="The radiology reports of the archive and the HL7 messages (ORU^R01, MDM^T02) of signed "
        "reports waiting for, or sent to, the hospital system.",
        epilog="exit status: 0 on success, 1 when something named does not exist, a message stopped (outbox) or "
        "stays undelivered (send), 2 on usage errors. example: hilum report outbox --state pending",
    )
    add_data_option(p)
    sub = p.add_subparsers(dest="report_verb", metavar="ACTION")
    sub.required = True

    ls = sub.add_parser("list", help="list reports, newest first")
    add_data_option(ls)
    ls.add_argument("--study", default="", metavar="UID", help="only this study")
    ls.add_argument("--patient", default="", metavar="ID", help="only this patient")
    ls.add_argument("--state", default="", choices=["", "draft", "preliminary", "final", "amended"])
    ls.add_argument("--limit", type=int, default=200, help="at most this many (default 200)")
    ls.add_argument("--json", action="store_true", help="JSON output")
    ls.set_defaults(handler=run_list)

    sh = sub.add_parser("show", help="one report: sections, state changes, DICOM copies, outbox")
    add_data_option(sh)
    sh.add_argument("report_id", metavar="REPORT_ID")
    sh.add_argument("--json", action="store_true", help="JSON output")
    sh.set_defaults(handler=run_show)

    ob = sub.add_parser("outbox", help="the HL7 outbox, newest first")
    add_data_option(ob)
    ob.add_argument("--state", default=None, choices=["pending", "sent", "failed-ae", "failed-ar", "abandoned"])
    ob.add_argument("--limit", type=int, default=200, help="at most this many (default 200)")
    ob.add_argument("--json", action="store_true", help="JSON output")
    ob.set_defaults(handler=run_outbox)

    rt = sub.add_parser("retry", help="send stopped or abandoned messages again")
    add_data_option(rt)
    rt.add_argument("pks", nargs="*", type=int, metavar="PK")
    rt.add_argument("--failed", action="store_true", help="every stopped message (failed-ae, failed-ar)")
    rt.add_argument("--json", action="store_true", help="JSON output")
    rt.set_defaults(handler=run_retry)

    ab = sub.add_parser("abandon", help="give up on messages (they are not sent)")
    add_data_option(ab)
    ab.add_argument("pks", nargs="+", type=int, metavar="PK")
    ab.add_argument("--json", action="store_true", help="JSON output")
    ab.set_defaults(handler=run_abandon)

    sd = sub.add_parser("send", help="one outbox pass now, to the endpoints of hilum.toml")
    add_data_option(sd)
    sd.add_argument("--json", action="store_true", help="JSON output")
    sd.set_defaults(handler=run_send)


def _when(dt: Any) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt is not None else ""


def _report_json(r: Any) -> dict[str, Any]:
    d = asdict(r)
    d["sections"] = [s.as_dict() for s in r.sections]
    return d


def _message_json(m: Any) -> dict[str, Any]:
    d = asdict(m)
    d["message"] = m.message.decode("utf-8", errors="replace")
    return d


def run_list(args: argparse.Namespace) -> int:
    from hilum.archive.reports import Reports

    with open_archive(args, must_exist=True) as archive:
        found = Reports(archive, store_dicom=False).search(
            study_uid=args.study, patient_id=args.patient, state=args.state, limit=args.limit
        )
    if args.json:
        print_json([_report_json(r) for r in found])
        return 0
    if not found:
        print("no reports")
        return 0
    for r in found:
        print(
            f"{r.report_id}  {r.state:<11} v{r.version}  {_when(r.updated_at)}  {r.patient_id:<12} "
            f"{r.accession_number:<16} {r.signed_by or r.created_by}  {r.study_description}"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    from hilum.archive.reports import ReportNotFound, Reports

    with open_archive(args, must_exist=True) as archive:
        rep = Reports(archive, store_dicom=False)
        try:
            r = rep.get(args.report_id)
        except ReportNotFound as exc:
            print(f"hilum report: {exc}", file=sys.stderr)
            return 1
        events = rep.events(r.report_id)
        messages = rep.outbox(report_id=r.report_id)
    if args.json:
        print_json(
            {
                "report": _report_json(r),
                "events": [asdict(e) for e in events],
                "outbox": [_message_json(m) for m in messages],
            }
        )
        return 0
    print(f"Report {r.report_id} ({r.state}, version {r.version})")
    print(f"  study {r.study_uid}  accession {r.accession_number}  patient {r.patient_id} {r.patient_name}")
    if r.parent_id:
        print(f"  addendum to {r.parent_id}")
    print(f"  created by {r.created_by} {_when(r.created_at)}; signed by {r.signed_by or '-'} {_when(r.signed_at)}")
    print(f"  SR {r.sr_sop_uid or '-'}  PDF {r.pdf_sop_uid or '-'}")
    for s in r.sections:
        if s.text.strip():
            print(f"\n{s.title}:\n{s.text}")
    print("\nState changes:")
    for e in events:
        print(f"  {_when(e.at)}  {e.user:<12} {e.from_state or '-'} -> {e.to_state}  {e.detail}")
    if messages:
        print("\nOutbox:")
        for m in messages:
            print(
                f"  #{m.pk} {m.kind} to {m.endpoint}: {m.state} (attempts {m.attempts}, ACK {m.ack_code or '-'}) "
                f"{m.last_error}"
            )
    return 0


def run_outbox(args: argparse.Namespace) -> int:
    from hilum.archive.reports import Outbox

    with open_archive(args, must_exist=True) as archive:
        box = Outbox(archive)
        msgs = box.list(states=[args.state] if args.state else None, limit=args.limit)
        counts = box.counts()
    stopped = sum(counts.get(s, 0) for s in FAILED)
    if args.json:
        print_json({"counts": counts, "messages": [_message_json(m) for m in msgs]})
        return 1 if stopped else 0
    print("outbox: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "empty"))
    for m in msgs:
        due = f" next try {_when(m.next_try_at)}" if m.state == "pending" and m.next_try_at else ""
        print(
            f"#{m.pk:<5} {m.kind} {m.endpoint:<10} {m.state:<10} attempts {m.attempts:<3} ACK {m.ack_code or '-':<3}"
            f" report {m.report_id}{due}  {m.ack_text or m.last_error}"
        )
    if stopped:
        print(
            f"{stopped} message(s) stopped by the receiver: fix the cause, then 'hilum report retry --failed'",
            file=sys.stderr,
        )
    return 1 if stopped else 0


def run_retry(args: argparse.Namespace) -> int:
    from hilum.archive.reports import Outbox

    if not args.pks and not args.failed:
        print(
            "usage: hilum report retry PK... | --failed\nhilum report retry: error: name messages or --failed",
            file=sys.stderr,
        )
        return 2
    code = 0
    done: list[int] = []
    with open_archive(args, must_exist=True) as archive:
        box = Outbox(archive)
        pks = list(args.pks) + ([m.pk for m in box.list(states=FAILED)] if args.failed else [])
        for pk in pks:
            try:
                box.retry(pk)
                done.append(pk)
            except HilumError as exc:
                print(f"hilum report retry: {exc}", file=sys.stderr)
                code = 1
    if args.json:
        print_json({"retried": done})
    else:
        print(f"{len(done)} message(s) queued again" + (": " + ", ".join(f"#{p}" for p in done) if done else ""))
    return code


def run_abandon(args: argparse.Namespace) -> int:
    from hilum.archive.reports import Outbox

    code = 0
    done: list[int] = []
    with open_archive(args, must_exist=True) as archive:
        for pk in args.pks:
            try:
                Outbox(archive).abandon(pk)
                done.append(pk)
            except HilumError as exc:
                print(f"hilum report abandon: {exc}", file=sys.stderr)
                code = 1
    if args.json:
        print_json({"abandoned": done})
    else:
        print(f"{len(done)} message(s) abandoned")
    return code


def run_send(args: argparse.Namespace) -> int:
    from hilum.archive.reports import Outbox
    from hilum.hl7.outbox import OutboxService

    cfg = load(args)
    with open_archive(args, must_exist=True) as archive:
        try:
            svc = OutboxService.from_config(archive, cfg)
        except HilumError as exc:
            print(f"hilum report send: {exc}", file=sys.stderr)
            return 2
        if not svc.endpoints:
            print(
                "hilum report send: no HIS endpoint: set [report] his (or [hl7] his_host/his_port) in hilum.toml",
                file=sys.stderr,
            )
            return 1
        claimed = 0
        while True:
            n = svc.run_once()
            claimed += n
            if n == 0:
                break
        counts = Outbox(archive).counts()
    result = {"claimed": claimed, "sent": svc.sent, "stopped": svc.failed, "counts": counts}
    if args.json:
        print_json(result)
    else:
        print(
            f"{svc.sent} sent, {svc.failed} stopped, {claimed - svc.sent - svc.failed} to retry later; "
            f"outbox: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        )
    return 0 if claimed == svc.sent else 1
