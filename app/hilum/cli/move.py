"""``hilum move``: C-MOVE from a DICOM peer to an AE title (PS3.4 C.4.2), movescu-like."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hilum.dimse.cliargs import add_peer_arguments, add_retrieve_arguments

    p = subparsers.add_parser(
        "move", help="ask a DICOM peer to send studies to an AE title (C-MOVE)",
        description="Ask a DICOM peer (C-MOVE) to send what the unique keys select to the AE title --dest, "
        "which the peer must know. The level follows from the deepest unique key unless -L is given.",
        epilog="example: hilum move pacs.local 104 -aec PACS --dest HILUM -k StudyInstanceUID=1.2.3")
    add_peer_arguments(p)
    p.add_argument("--dest", required=True, metavar="AET", help="move destination AE title")
    add_retrieve_arguments(p)
    p.set_defaults(handler=run_move)


def run_move(args: argparse.Namespace) -> int:
    from hilum.dimse.cliargs import progress_bar, retrieve_keys, target_from_args
    from hilum.dimse.scu import move

    target = target_from_args(args)
    level, keys = retrieve_keys(args)
    bar = progress_bar(not args.json)
    task = None

    def progress(r):  # type: ignore[no-untyped-def]
        nonlocal task
        if bar is None:
            return
        total = r.completed + r.failed + r.warning + r.remaining
        if task is None:
            task = bar.add_task(f"C-MOVE to {args.dest}", total=total)
        bar.update(task, completed=r.completed + r.failed + r.warning, total=total)

    if bar is not None:
        bar.start()
    try:
        result = move(target, args.dest, level.upper(), keys, root=args.root, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    out = {"peer": str(target), "destination": args.dest, "level": level.upper(), **result.as_dict()}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"C-MOVE to {args.dest}: status {out['status']}, {result.completed} completed, {result.failed} failed, "
              f"{result.warning} warning" + (f" ({result.comment})" if result.comment else ""))
    if result.status in (0x0000,):
        return 0
    return 3 if result.status == 0xB000 else 1
