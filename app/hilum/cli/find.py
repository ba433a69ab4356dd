"""``hilum find``: C-FIND against a DICOM peer (PS3.4 C.4.1), findscu-like; ``--local`` asks this node's archive."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hilum.dimse.cliargs import add_peer_arguments

    p = subparsers.add_parser(
        "find", help="query a DICOM peer (C-FIND), or this node's archive (--local)",
        description="Query a DICOM peer with C-FIND. Keys: -k Keyword=value (wildcards * ?, ranges\n"
        "20200101-20201231, UID lists a\\b); -k Keyword alone asks for it back. Common return keys\n"
        "of the level are asked for too unless --only-keys.\n\n"
        "With --local (no HOST) the archive of --data is asked instead, with the same keys and the\n"
        "same query engine, and a PatientName is matched as people type names, as the study\n"
        "browser does: a prefix, accents and case do not matter, a comma separates family and\n"
        "given name (PatientName=muller finds Müller^Hans). A peer matches names as the DICOM\n"
        "standard says.",
        epilog="examples:\n"
        "  hilum find pacs.local 104 -aec PACS -L STUDY -k PatientName='DOE*' -k StudyDate=2024-\n"
        "  hilum find --local -k PatientName='muller, h' --data DIR",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_peer_arguments(p, host_optional=True)
    p.add_argument("--local", action="store_true",
                   help="query the archive of the data folder instead of a peer (names folded: muller finds Müller)")
    p.add_argument("-L", "--level", default="STUDY", type=str.upper,
                   choices=["PATIENT", "STUDY", "SERIES", "IMAGE", "INSTANCE"], help="query level (default STUDY)")
    p.add_argument("-k", "--key", action="append", default=[], metavar="KEY[=VALUE]", help="matching or return key")
    p.add_argument("--root", default="study", choices=["study", "patient"],
                   help="information model: study root (default) or patient root")
    p.add_argument("--only-keys", action="store_true", help="ask only for the -k keys")
    p.add_argument("--limit", type=int, metavar="N", help="send C-CANCEL after N matches (--local: at most N rows)")
    p.set_defaults(handler=run_find)


def _local_name_key(value: str) -> str:
    """A name as typed for the local search: a prefix unless it has wildcards, as the study browser does."""
    from hilum.ui.study_search import name_pattern

    return name_pattern(value)


def run_find(args: argparse.Namespace) -> int:
    from hilum.dimse.scu import DEFAULT_KEYS, DimseError, dataset_to_dict, iter_find, parse_keys

    level = "IMAGE" if args.level == "INSTANCE" else args.level
    user = parse_keys(args.key)
    level = user.pop("QueryRetrieveLevel", level).upper() or level
    keys = {} if args.only_keys else {k: "" for k in DEFAULT_KEYS.get(level, [])}
    if args.root == "study":
        keys.pop("NumberOfPatientRelatedStudies", None)
    keys.update(user)
    if args.limit is not None and args.limit < 1:
        raise DimseError("--limit must be at least 1")
    if args.local:
        if args.host is not None:
            raise DimseError("--local asks this node's archive: give no HOST")
        rows = _find_local(args, level, keys)
        where = "the local archive"
    else:
        from hilum.dimse.cliargs import target_from_args

        if args.host is None:
            raise DimseError("give HOST [PORT] of a peer, or --local for this node's archive")
        target = target_from_args(args)
        rows = [dataset_to_dict(ds) for ds in iter_find(target, level, keys, root=args.root, cancel_after=args.limit)]
        where = str(target)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    for i, row in enumerate(rows, 1):
        fields = "  ".join(f"{k}={v}" for k, v in row.items() if k != "QueryRetrieveLevel")
        print(f"{i:4d}  {fields}")
    print(f"{len(rows)} match{'es' if len(rows) != 1 else ''} at {level} level from {where}")
    return 0


def _find_local(args: argparse.Namespace, level: str, keys: dict[str, str]) -> list[dict[str, Any]]:
    """The rows of the archive of ``--data`` that ``keys`` match (the one query engine, names folded),
    each with the asked keys the archive holds, as a C-FIND response would carry them."""
    from hilum.cli._common import open_archive
    from hilum.dimse.scu import DimseError

    ident = dict(keys)
    if ident.get("PatientName"):
        ident["PatientName"] = _local_name_key(ident["PatientName"])
    archive = open_archive(args, must_exist=True)
    try:
        found = archive.query(level, ident, limit=args.limit, fold_names=True)
    except ValueError as exc:
        raise DimseError(f"bad query key: {exc}") from exc
    finally:
        archive.close()
    return [{k: ("" if row[k] is None else row[k]) for k in keys if k in row} for row in found]
