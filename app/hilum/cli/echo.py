"""``hilum echo``: C-ECHO a DICOM peer (PS3.4 A, Verification)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hilum.dimse.cliargs import add_peer_arguments

    p = subparsers.add_parser("echo", help="check a DICOM peer answers (C-ECHO)",
                              description="Associate with a DICOM peer and send a C-ECHO (Verification). "
                              "Exit 0 when it answers with success.")
    add_peer_arguments(p)
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="send N echoes, one association each")
    p.set_defaults(handler=run_echo)


def run_echo(args: argparse.Namespace) -> int:
    from hilum.dimse.cliargs import target_from_args
    from hilum.dimse.scu import DimseError, echo

    target = target_from_args(args)
    if args.repeat < 1:
        raise DimseError("--repeat must be at least 1")
    times = [echo(target) for _ in range(args.repeat)]
    if args.json:
        print(json.dumps({"peer": str(target), "ok": True, "seconds": [round(t, 4) for t in times]}))
    else:
        for t in times:
            print(f"C-ECHO {target}: success in {t * 1000:.1f} ms")
    return 0
