"""``hilum import PATH...``: files, folders, DICOMDIR and zip archives into the archive.

(The module is ``imports`` because ``import`` is a Python keyword; the verb is ``import``.)

Everything goes through the archive's one ingest call (DESIGN.md "One way
in"), on every core.  Exit status: 0 when nothing was rejected, 1 when some
input was rejected (each rejection is printed, one line each) or the archive
cannot be used, 2 on usage errors.
"""

from __future__ import annotations

import argparse

from hilum.cli._common import add_data_option, open_archive, print_json, progress_bar, quiet_pydicom, use_progress

EPILOG = """\
exit status: 0 when nothing was rejected; 1 when some input was rejected
(each rejection is listed, one line each) or the archive cannot be opened;
2 on usage errors.  Hidden files, DICOMDIR files and obvious non-DICOM files
(README, *.txt, *.json, images...) met in folders and zips are skipped and
counted; files named on the command line are always tried."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "import",
        help="import DICOM files, folders, DICOMDIR file-sets and zip archives",
        description="Import DICOM instances into the archive: files, folders (recursively), "
        "a DICOMDIR (the files it references) and zip archives (read in place, never extracted).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="file, folder, DICOMDIR or zip archive")
    add_data_option(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON (counts and rejections)")
    p.add_argument("--workers", type=_positive, metavar="N", default=None,
                   help="parallel workers (default: two threads per core; one process per core "
                        "for 200+ files on 4+ cores)")
    p.set_defaults(handler=run_import)


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def run_import(args: argparse.Namespace) -> int:
    from hilum.archive.importer import import_paths

    quiet_pydicom(args.verbose if hasattr(args, "verbose") else 0)
    archive = open_archive(args)
    try:
        with progress_bar(None, "Importing", enabled=use_progress(args)) as update:
            report = import_paths(archive, args.paths, workers=args.workers, progress=update)
    finally:
        archive.close()
    if args.json:
        print_json({"data": str(archive.data_dir), **report.as_dict()})
    else:
        rate = (report.imported + report.replaced) / report.seconds if report.seconds > 0 else 0.0
        parts = [f"imported {report.imported}"]
        if report.replaced:
            parts.append(f"replaced {report.replaced}")
        parts += [f"duplicates {report.duplicates}", f"rejected {report.rejected}"]
        if report.skipped:
            parts.append(f"skipped {len(report.skipped)}")
        if report.cancelled:
            parts.append(f"not done {report.cancelled}")
        print(f"{', '.join(parts)}: {_size(report.bytes)} in {report.seconds:.1f} s ({rate:.0f} instances/s)")
        for r in report.rejections:
            print(f"rejected {r.source}: {r.reason} [{r.code}]")
    return 1 if report.rejections or report.cancelled else 0
