"""``hilum rollback BACKUP``: put a data folder's index back as it was before an upgrade (installer/UPGRADING.md).

For going back to the older release after an upgrade: run with the new release, the node
stopped, then install the older release.  Exit status: 0 rolled back, 1 when it could not be
done (a damaged or foreign backup), 2 on usage errors.
"""

from __future__ import annotations

import argparse

from hilum.cli._common import add_data_option, load, print_json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "rollback",
        help="put the index back as a pre-upgrade backup holds it (to go back to the older release)",
        description="Put the data folder's index and hilum.toml back as BACKUP (a DATA/backups/pre-upgrade-* "
        "folder, taken when this release upgraded the folder) holds them, every file checked against the "
        "manifest's sha256. Nothing is deleted: the current index (SQLite file, or a dump of every PostgreSQL "
        "table) and hilum.toml are kept in DATA/backups/before-rollback-<time>/. Stop the node first; then "
        "install the older release and run its 'hilum check --repair' (it indexes the blobs received since).",
        epilog="example: hilum rollback /var/lib/hilum/backups/pre-upgrade-0001-to-0011_audit-20261206T182546Z "
        "--data /var/lib/hilum",
    )
    p.add_argument("backup", metavar="BACKUP", help="a DATA/backups/pre-upgrade-* folder")
    add_data_option(p)
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(handler=run_rollback)


def run_rollback(args: argparse.Namespace) -> int:
    from hilum.archive.upgrade import rollback
    from hilum.cli._runtime import refuse_if_node_running

    cfg = load(args)
    refuse_if_node_running(cfg.data_dir, "hilum rollback")
    report = rollback(args.backup, cfg.data_dir, database_url=cfg.database_url)
    if args.json:
        print_json(report.as_dict())
        return 0
    c = report.counts
    print(
        f"index of {report.data_dir} rolled back to schema {'+'.join(report.schema)} "
        f"({c.get('patients', 0)} patients, {c.get('studies', 0)} studies, {c.get('instances', 0)} instances); "
        f"what the upgrade had made is kept in {report.kept}"
    )
    print("now install the Hilum release that used that schema and run: hilum check --repair")
    return 0
