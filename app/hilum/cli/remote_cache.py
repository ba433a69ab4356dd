"""``hilum remote-cache``: the workstation's cache of studies opened from remote sources — list, clear."""

from __future__ import annotations

import argparse
from typing import Any

from hilum.cli._common import load, print_json
from hilum.errors import HilumError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "remote-cache",
        help="the cache of studies opened from remote sources: list, clear",
        description="Studies the workstation opened from a DICOMweb source or a DIMSE-TLS peer are kept in "
        "<data>/remote-cache (hilum.toml [remote_cache]: limit_mb, encrypt), least recently opened removed "
        "first. 'list' shows them; 'clear' removes them (all, or --study): run it while no workstation "
        "has the data folder open.",
    )
    sub = p.add_subparsers(dest="cache_verb", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser("list", help="cached studies, least recently opened first")
    ls.add_argument("--json", action="store_true", help="JSON output")
    ls.set_defaults(handler=run_list)
    cl = sub.add_parser("clear", help="remove cached studies (all, or one with --study)")
    cl.add_argument("--study", metavar="UID", help="only this Study Instance UID")
    cl.set_defaults(handler=run_clear)


def _open(args: argparse.Namespace) -> Any:
    from hilum.dicomweb.cache import RemoteCache

    cfg = load(args)
    if not (cfg.data_dir / "remote-cache").is_dir():
        raise HilumError(f"no remote cache in {cfg.data_dir}")
    return RemoteCache.from_config(cfg)


def run_list(args: argparse.Namespace) -> int:
    with _open(args) as cache:
        rows = cache.studies()
        total, limit = cache.total_bytes(), cache.limit_bytes
        encrypted = cache.encrypt
    if args.json:
        print_json({"studies": rows, "bytes": total, "limit_bytes": limit, "encrypted": encrypted})
        return 0
    print(
        f"remote cache: {len(rows)} stud{'y' if len(rows) == 1 else 'ies'}, {total / 1e6:.1f} MB of "
        f"{limit / 1e6:.1f} MB" + (", encrypted" if encrypted else "")
    )
    for r in rows:
        state = "complete" if r["complete"] else "partial"
        print(
            f"  {r['study_uid']}  {r['instances']:5d} images  {r['size_bytes'] / 1e6:8.1f} MB  "
            f"{state:8s}  opened {r['last_open']:%Y-%m-%d %H:%M}  from {r['source'] or '-'}"
        )
    return 0


def run_clear(args: argparse.Namespace) -> int:
    with _open(args) as cache:
        uids = [args.study] if args.study else [r["study_uid"] for r in cache.studies()]
        if args.study and args.study not in {r["study_uid"] for r in cache.studies()}:
            raise HilumError(f"study {args.study} is not in the remote cache")
        for uid in uids:
            cache.remove(uid)
    print(f"removed {len(uids)} stud{'y' if len(uids) == 1 else 'ies'} from the remote cache")
    return 0
