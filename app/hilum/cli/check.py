"""``hilum check``: verify the index against the blobs (missing files, orphans, checksums, temporaries).

With ``--repair`` it fixes what it found and says what it did: rows of
missing files are removed, corrupt blobs are moved to ``quarantine/`` and
their rows removed, orphan blobs are indexed again through the one ingest call
(or quarantined when they are not valid instances), stale temporaries are
deleted.  What could not be checked or repaired — a blob that cannot be read
(an I/O error, a permission), a repair that cannot be written (a full disk) —
is listed as "unchecked" and left exactly as it is (never reported corrupt,
never quarantined, its row never removed).  Exit status:
0 when the archive is clean (after repair, if asked), 1 when problems remain,
2 on usage errors.
"""

from __future__ import annotations

import argparse
from typing import Any

from hilum.cli._common import add_data_option, open_archive, print_json, progress_bar, quiet_pydicom, use_progress


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "check",
        help="verify index and blobs (missing, orphans, checksums, temporaries)",
        description="Verify that every indexed instance has its file with the recorded checksum, that "
        "every file is indexed, and that no temporary files are left; --repair fixes what it finds.",
        epilog="exit status: 0 when clean (after repair, if asked), 1 when problems remain, 2 on usage errors.",
    )
    add_data_option(p)
    p.add_argument("--repair", action="store_true", help="fix what is found and list what was done")
    p.add_argument("--no-checksums", action="store_true", help="skip reading every blob to verify its checksum")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run_check)


def _problems(report: Any) -> list[tuple[str, str]]:
    return ([("missing", u) for u in report.missing] + [("orphan", k) for k in report.orphans]
            + [("corrupt", u) for u in report.corrupt] + [("temporary", t) for t in report.temporaries]
            + [("unchecked", u) for u in report.unchecked])


def run_check(args: argparse.Namespace) -> int:
    quiet_pydicom(getattr(args, "verbose", 0))
    archive = open_archive(args, must_exist=True)
    try:
        with progress_bar(None, "Checking", enabled=use_progress(args)) as update:
            report = archive.check(repair=args.repair, verify_checksums=not args.no_checksums, progress=update)
        remaining = report
        if args.repair and not report.clean:
            # What repair could not fix shows in a quick second look (listing only).
            remaining = archive.check(repair=False, verify_checksums=False)
    finally:
        archive.close()
    found = _problems(report)
    left = _problems(remaining)
    if remaining is not report:  # what could not be checked stays a problem (the quick look reads no blob)
        left += [("unchecked", u) for u in report.unchecked if u not in remaining.unchecked]
    if args.json:
        print_json({
            "data": str(archive.data_dir),
            "instances": report.instances,
            "blobs": report.blobs,
            "checksums": not args.no_checksums,
            "missing": report.missing,
            "orphans": report.orphans,
            "corrupt": report.corrupt,
            "temporaries": report.temporaries,
            "unchecked": report.unchecked,
            "offline": report.offline,
            "repaired": report.repaired,
            "clean": not left,
        })
    else:
        what = "instances and checksums" if not args.no_checksums else "instances"
        offline = f" ({report.offline} offline, held on a tier or a peer)" if report.offline else ""
        print(f"checked {report.instances} {what}, {report.blobs} blobs{offline}: "
              + ("clean" if not found else f"{len(found)} problem{'s' if len(found) != 1 else ''}"))
        for kind, item in found:
            print(f"{kind}: {item}")
        for line in report.repaired:
            print(f"repaired: {line}")
        if args.repair and found:
            print("clean after repair" if not left else f"{len(left)} problems remain")
        elif found:
            print("run 'hilum check --repair' to fix")
    return 1 if left else 0
