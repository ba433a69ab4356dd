"""``hilum send``: C-STORE files and folders to a DICOM peer (PS3.4 B), storescu-like."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hilum.dimse.cliargs import add_peer_arguments

    p = subparsers.add_parser(
        "send", help="send DICOM files to a peer (C-STORE)",
        description="Send DICOM Part 10 files (folders are walked recursively) to a DICOM peer with C-STORE, "
        "as stored when the peer accepts the transfer syntax, otherwise converted without loss (decompressed, "
        "big endian byte-swapped, inflated) with every UID kept. Each file is checked first; a file that is "
        "truncated or contradicts itself is reported and not sent, and the others go on. "
        "Exit 0 when all were stored, 3 when some failed (with --json, the summary lists each failure), "
        "1 when the peer cannot be reached or no file was given.")
    add_peer_arguments(p, port_optional=False)
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    p.set_defaults(handler=run_send)


def run_send(args: argparse.Namespace) -> int:
    from hilum.dimse.cliargs import progress_bar, target_from_args
    from hilum.dimse.scu import collect_files, send

    target = target_from_args(args)
    files = collect_files(args.paths)
    bar = progress_bar(not args.json)
    task = bar.add_task(f"C-STORE to {target.called_aet}", total=len(files)) if bar is not None else None

    def progress(item):  # type: ignore[no-untyped-def]
        if bar is not None and task is not None:
            bar.advance(task)

    if bar is not None:
        bar.start()
    try:
        result = send(target, files, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    summary = {"peer": str(target), "files": len(files), **result.as_dict()}
    if args.json:
        print(json.dumps(summary))
    else:
        rate = summary["instances_per_second"]
        print(f"sent {result.sent} of {len(files)} to {target} in {result.seconds:.2f} s"
              + (f" ({rate}/s)" if rate else ""))
        for f in summary["failures"][:20]:
            print(f"  failed {f['path']}: {f['error'] or f['status']}", file=sys.stderr)
        if len(summary["failures"]) > 20:
            print(f"  ... and {len(summary['failures']) - 20} more", file=sys.stderr)
    if not files:
        return 1
    return 0 if result.failed == 0 else 3
