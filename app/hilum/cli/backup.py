"""``hilum backup DEST`` and ``hilum restore SRC``: the index and the online blobs, consistent while the node runs.

See :mod:`hilum.archive.backup` for what a backup holds (and what it does
not: objects on other tiers) and how it stays consistent.  Exit status: 0 on
success, 1 when the backup or restore could not be made, 2 on usage errors.
"""

from __future__ import annotations

import argparse

from hilum.cli._common import add_data_option, load, open_archive, print_json, progress_bar, use_progress


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "backup",
        help="back up the index and the online blobs into a new folder (while the node runs)",
        description="Copy the index (one consistent snapshot, SQLite or PostgreSQL) and every online blob it "
        "refers to into DEST, a new or empty folder: hard links when DEST is on the blobs' file system, "
        "copies otherwise; each blob checked against its checksum; manifest.json written last. Copies on "
        "other tiers (S3, NAS) and peers are not copied: their rows are kept.",
        epilog="example: hilum backup /mnt/backup/hilum-$(date +%F) --json",
    )
    p.add_argument("dest", metavar="DEST", help="a new or empty folder")
    add_data_option(p)
    p.add_argument("--copy", action="store_true", help="copy every blob even where a hard link would do")
    p.add_argument("--json", action="store_true", help="print the manifest and what was done as JSON")
    p.set_defaults(handler=run_backup)

    r = subparsers.add_parser(
        "restore",
        help="restore a backup into an empty data folder",
        description="Restore the backup in SRC into the data folder (--data): its index into the database "
        "the folder's hilum.toml names ([archive] database_url, PostgreSQL) or into the folder's SQLite file. "
        "Every blob is checked against its checksum before anything is indexed. Stop the node first.",
        epilog="--force replaces what the data folder holds: its SQLite index and blobs are moved aside into "
        "replaced-<time>/, a PostgreSQL index is emptied.",
    )
    r.add_argument("src", metavar="SRC", help="a folder made by 'hilum backup'")
    add_data_option(r)
    r.add_argument("--force", action="store_true", help="restore over a data folder that is not empty")
    r.add_argument("--json", action="store_true", help="print what was restored as JSON")
    r.set_defaults(handler=run_restore)


def run_backup(args: argparse.Namespace) -> int:
    from hilum.archive.backup import backup

    cfg = load(args)
    with open_archive(args, must_exist=True) as archive:
        with progress_bar(None, "Backing up", enabled=use_progress(args)) as update:
            report = backup(archive, args.dest, link=not args.copy, config=cfg.config_path, progress=update)
    m = report.manifest
    if args.json:
        print_json(report.as_dict())
        return 0
    c = m["counts"]
    print(
        f"backed up {c.get('patients', 0)} patients, {c.get('studies', 0)} studies, {c.get('instances', 0)} "
        f"instances ({m['blobs']['count']} online blobs, {m['blobs']['bytes'] / 1e6:.1f} MB: {report.linked} "
        f"linked, {report.copied} copied) to {report.path}"
    )
    if report.updated or report.dropped or report.offline:
        print(
            f"since the snapshot: {len(report.updated)} replaced (taken as they are now), {len(report.dropped)} "
            f"deleted, {len(report.offline)} moved off line"
        )
    if m["tier_copies"]["rows"]:
        print(f"note: {m['tier_copies']['rows']} copies on other tiers/peers are listed, not copied")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from hilum.archive.backup import manifest_counts, restore
    from hilum.cli._runtime import refuse_if_node_running

    cfg = load(args)
    refuse_if_node_running(cfg.data_dir, "hilum restore")
    with progress_bar(None, "Restoring", enabled=use_progress(args)) as update:
        report = restore(args.src, cfg.data_dir, database_url=cfg.database_url, force=args.force, progress=update)
    if args.json:
        print_json(report.as_dict())
        return 0
    c = manifest_counts(report.manifest)
    print(
        f"restored {c['patients']} patients, {c['studies']} studies, {c['instances']} instances "
        f"({report.copied} blobs checked) into {report.path}"
        + (f" ({'PostgreSQL' if cfg.database_url and not cfg.database_url.startswith('sqlite') else 'SQLite'})")
    )
    if report.moved_aside:
        print(f"what was there before is in {report.moved_aside}")
    return 0
