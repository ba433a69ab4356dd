"""``hilum find``: C-FIND against a DICOM peer (PS3.4 C.4.1), findscu-like."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hilum.dimse.cliargs import add_peer_arguments

    p = subparsers.add_parser(
        "find", help="query a DICOM peer (C-FIND)",
        description="Query a DICOM peer with C-FIND. Keys: -k Keyword=value (wildcards * ?, ranges "
        "20200101-20201231, UID lists a\\b); -k Keyword alone asks for it back. Common return keys of "
        "the level are asked for too unless --only-keys.",
        epilog="example: hilum find pacs.local 104 -aec PACS -L STUDY -k PatientName='DOE*' -k StudyDate=2024-")
    add_peer_arguments(p)
    p.add_argument("-L", "--level", default="STUDY", type=str.upper,
                   choices=["PATIENT", "STUDY", "SERIES", "IMAGE", "INSTANCE"], help="query level (default STUDY)")
    p.add_argument("-k", "--key", action="append", default=[], metavar="KEY[=VALUE]", help="matching or return key")
    p.add_argument("--root", default="study", choices=["study", "patient"],
                   help="information model: study root (default) or patient root")
    p.add_argument("--only-keys", action="store_true", help="ask only for the -k keys")
    p.add_argument("--limit", type=int, metavar="N", help="send C-CANCEL after N matches")
    p.set_defaults(handler=run_find)


def run_find(args: argparse.Namespace) -> int:
    from hilum.dimse.cliargs import target_from_args
    from hilum.dimse.scu import DEFAULT_KEYS, DimseError, dataset_to_dict, iter_find, parse_keys

    target = target_from_args(args)
    level = "IMAGE" if args.level == "INSTANCE" else args.level
    user = parse_keys(args.key)
    level = user.pop("QueryRetrieveLevel", level).upper() or level
    keys = {} if args.only_keys else {k: "" for k in DEFAULT_KEYS.get(level, [])}
    if args.root == "study":
        keys.pop("NumberOfPatientRelatedStudies", None)
    keys.update(user)
    if args.limit is not None and args.limit < 1:
        raise DimseError("--limit must be at least 1")
    rows = [dataset_to_dict(ds) for ds in iter_find(target, level, keys, root=args.root, cancel_after=args.limit)]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    for i, row in enumerate(rows, 1):
        fields = "  ".join(f"{k}={v}" for k, v in row.items() if k != "QueryRetrieveLevel")
        print(f"{i:4d}  {fields}")
    print(f"{len(rows)} match{'es' if len(rows) != 1 else ''} at {level} level from {target}")
    return 0
