"""``hilum protect`` / ``hilum unprotect``: studies and patients that no retention rule may purge.

::

    hilum protect STUDY 1.2.3.4 --reason "litigation hold"
    hilum protect PATIENT MRN0042 [--issuer HOSP]
    hilum protect --list [--json]
    hilum unprotect STUDY 1.2.3.4

A protected study, or any study of a protected patient, is never purged
(online or everywhere, by a rule or by the disk watermarks); see
:mod:`hilum.archive.retention`.  Exit status: 0 on success (protecting what
is protected already included), 1 when the study or patient is not in the
archive (``--force`` protects it ahead of its arrival) or, for
``unprotect``, when it was not protected; 2 on usage errors.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from hilum.cli._common import add_data_option, open_archive, print_json
from hilum.errors import HilumError

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "protect",
        help="protect a study or patient from every purge, or list protections",
        description="Protect a study (by Study Instance UID) or a patient (by Patient ID) from every retention "
        "purge; --list shows what is protected.",
        epilog="exit status: 0 on success, 1 when the study or patient is not in the archive (see --force), "
        "2 on usage errors. example: hilum protect STUDY 1.2.840.113619.2.55.3 --reason 'litigation hold'",
    )
    add_data_option(p)
    p.add_argument("level", nargs="?", metavar="STUDY|PATIENT", help="what to protect")
    p.add_argument("uid", nargs="?", metavar="UID", help="Study Instance UID or Patient ID")
    p.add_argument("--reason", default="", help="why (kept with the protection, shown by --list)")
    p.add_argument("--issuer", default="", metavar="ISSUER", help="Issuer of Patient ID (PATIENT only)")
    p.add_argument("--force", action="store_true", help="protect a study or patient not in the archive yet")
    p.add_argument("--list", action="store_true", help="list the protections")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(handler=run_protect)

    u = subparsers.add_parser(
        "unprotect",
        help="take a study's or patient's protection away",
        description="Take away the protection of a study or patient (hilum protect): retention rules may "
        "purge it again.",
        epilog="exit status: 0 on success, 1 when it was not protected, 2 on usage errors.",
    )
    add_data_option(u)
    u.add_argument("level", metavar="STUDY|PATIENT", help="what to unprotect")
    u.add_argument("uid", metavar="UID", help="Study Instance UID or Patient ID")
    u.add_argument("--issuer", default="", metavar="ISSUER", help="Issuer of Patient ID (PATIENT only)")
    u.add_argument("--json", action="store_true", help="JSON output")
    u.set_defaults(handler=run_unprotect)


def _usage(args: argparse.Namespace, message: str) -> int:
    verb = "unprotect" if args.handler is run_unprotect else "protect"
    print(f"usage: hilum {verb} STUDY|PATIENT UID ...\nhilum {verb}: error: {message}", file=sys.stderr)
    return 2


def _target(args: argparse.Namespace) -> tuple[str, str, str] | str:
    """``(level, uid, issuer)`` from the arguments, or a usage error message."""
    level = (args.level or "").strip().upper()
    uid = (args.uid or "").strip()
    issuer = (args.issuer or "").strip()
    if level not in ("STUDY", "PATIENT"):
        return f"say STUDY or PATIENT, not {args.level!r}" if args.level else "say STUDY or PATIENT, and a UID"
    if not uid:
        return "missing the Study Instance UID" if level == "STUDY" else "missing the Patient ID"
    if len(uid) > 64:
        return f"{'UID' if level == 'STUDY' else 'Patient ID'} too long ({len(uid)} characters, at most 64)"
    if level == "STUDY":
        if not _UID.match(uid):
            return f"not a UID (digits and dots): {uid!r}"
        if issuer:
            return "--issuer goes with PATIENT"
    elif any(c in uid for c in "\\*?") or not uid.isprintable():
        return f"not a Patient ID (no wildcards, backslashes or control characters): {uid!r}"
    if len(issuer) > 64 or not issuer.isprintable():
        return "--issuer: at most 64 printable characters"
    return level, uid, issuer


def run_protect(args: argparse.Namespace) -> int:
    from hilum.archive import storage
    from hilum.archive.retention import protection_target

    if args.list:
        if args.level or args.uid or args.reason or args.force or args.issuer:
            return _usage(args, "--list takes no other argument")
        with open_archive(args, must_exist=True) as archive:
            rows = storage.protections_list(archive)
            for r in rows:
                r["present"] = protection_target(archive, r["level"], r["uid"], r["issuer"])
        if args.json:
            print_json([_plain(r) for r in rows])
        elif not rows:
            print("nothing is protected")
        else:
            for r in rows:
                present = r["present"]
                held = (
                    "not in the archive"
                    if present is None
                    else f"{present['studies']} stud{'y' if present['studies'] == 1 else 'ies'}, "
                    f"{present['instances']} instances"
                )
                who = r["uid"] + (f" (issuer {r['issuer']})" if r["issuer"] else "")
                print(
                    f"{r['level']:7s}  {who}  {r['created_at']:%Y-%m-%d %H:%M}  {held}"
                    + (f"  {r['reason']}" if r["reason"] else "")
                )
        return 0
    target = _target(args)
    if isinstance(target, str):
        return _usage(args, target)
    level, uid, issuer = target
    if len(args.reason) > 255:
        return _usage(args, f"--reason too long ({len(args.reason)} characters, at most 255)")
    with open_archive(args, must_exist=True) as archive:
        present = protection_target(archive, level, uid, issuer)
        if present is None and not args.force:
            raise HilumError(f"no {level.lower()} {uid} in the archive (--force protects it ahead of its arrival)")
        changed = storage.protect(archive, level, uid, issuer=issuer, reason=args.reason)
    if args.json:
        print_json(
            {
                "level": level,
                "uid": uid,
                "issuer": issuer,
                "reason": args.reason,
                "protected": True,
                "changed": changed,
                "present": present,
            }
        )
    else:
        what = f"{level.lower()} {uid}" + (f" (issuer {issuer})" if issuer else "")
        print(f"protected {what}" if changed else f"{what} was protected already")
    return 0


def run_unprotect(args: argparse.Namespace) -> int:
    from hilum.archive import storage

    target = _target(args)
    if isinstance(target, str):
        return _usage(args, target)
    level, uid, issuer = target
    with open_archive(args, must_exist=True) as archive:
        changed = storage.unprotect(archive, level, uid, issuer=issuer)
    what = f"{level.lower()} {uid}" + (f" (issuer {issuer})" if issuer else "")
    if args.json:
        print_json({"level": level, "uid": uid, "issuer": issuer, "protected": False, "changed": changed})
    elif changed:
        print(f"unprotected {what}")
    if not changed:
        if not args.json:
            print(f"hilum: error: {what} is not protected", file=sys.stderr)
        return 1
    return 0


def _plain(r: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
