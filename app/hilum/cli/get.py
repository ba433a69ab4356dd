"""``hilum get``: C-GET from a DICOM peer (PS3.4 C.4.3), getscu-like.

Received instances go into the local archive through its one ingest call,
or as files into ``--out DIR``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hilum.dimse.cliargs import add_peer_arguments, add_retrieve_arguments

    p = subparsers.add_parser(
        "get", help="retrieve studies from a DICOM peer on the same association (C-GET)",
        description="Retrieve (C-GET) what the unique keys select. Instances are stored in the local "
        "archive (--data) unless --out DIR is given.",
        epilog="example: hilum get pacs.local 104 -aec PACS -k StudyInstanceUID=1.2.3 --out ./study")
    add_peer_arguments(p)
    add_retrieve_arguments(p)
    p.add_argument("--out", metavar="DIR", help="write files here instead of storing into the archive")
    p.set_defaults(handler=run_get)


def run_get(args: argparse.Namespace) -> int:
    from hilum.dimse.cliargs import progress_bar, retrieve_keys, target_from_args
    from hilum.dimse.scu import get, ingest_store

    target = target_from_args(args)
    level, keys = retrieve_keys(args)
    archive = None
    out_dir: Path | None = None
    rejected: list[str] = []
    if args.out:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        from hilum.archive import Archive
        from hilum.config import load_config

        archive = Archive.from_config(load_config(args.data))

    ingest = ingest_store(archive, target.called_aet, rejected) if archive is not None else None

    def store(event: Any) -> int:
        if ingest is not None:
            return ingest(event)
        assert out_dir is not None
        uid = str(event.request.AffectedSOPInstanceUID)
        path = out_dir / f"{uid}.dcm"
        tmp = path.with_suffix(".part")
        tmp.write_bytes(event.encoded_dataset())
        tmp.replace(path)
        return 0x0000

    bar = progress_bar(not args.json)
    task = None

    def progress(r):  # type: ignore[no-untyped-def]
        nonlocal task
        if bar is None:
            return
        total = r.completed + r.failed + r.warning + r.remaining
        if task is None:
            task = bar.add_task("C-GET", total=total)
        bar.update(task, completed=r.completed + r.failed + r.warning, total=total)

    if bar is not None:
        bar.start()
    try:
        result = get(target, level.upper(), keys, store, root=args.root, progress=progress)
    finally:
        if bar is not None:
            bar.stop()
        if archive is not None:
            archive.close()
    out = {"peer": str(target), "level": level.upper(), "stored_in": str(out_dir) if out_dir else "archive",
           **result.as_dict(), "rejected": rejected}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"C-GET from {target}: status {out['status']}, {result.received} received, {result.completed} completed, "
              f"{result.failed} failed, {result.warning} warning" + (f" ({result.comment})" if result.comment else ""))
        for line in rejected:
            print(f"  rejected {line}")
    if result.status == 0x0000:
        return 0
    return 3 if result.status == 0xB000 else 1
