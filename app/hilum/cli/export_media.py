"""``hilum export-media``: studies to a CD/DVD image, a zip or a USB folder (PS3.11 STD-GEN-CD, DICOMDIR)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hilum.errors import HilumError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from hilum.cli.anonymize import OPTION_HELP

    p = subparsers.add_parser(
        "export-media", help="write studies as DICOM media (DICOMDIR) to a folder, zip or ISO",
        description="Write archived studies as PS3.11 STD-GEN-CD media: a DICOMDIR indexing every instance "
        "(Explicit VR Little Endian, 8-character file IDs) and a README, to a new folder (a USB stick), a "
        "FILE.zip or a FILE.iso (ISO 9660 by xorriso, for a CD/DVD). --viewer adds INDEX.HTM listing the "
        "contents and AUTORUN.INF; --anonymise de-identifies the copies first (as hilum anonymize). "
        "`hilum import` reads what this writes.")  # fmt: skip
    p.add_argument("studies", nargs="*", metavar="STUDY", help="Study Instance UIDs")
    p.add_argument("--patient", action="append", default=[], metavar="ID", help="all studies of this Patient ID")
    p.add_argument("--out", required=True, type=Path, metavar="DIR|FILE.zip|FILE.iso")
    p.add_argument("--viewer", action="store_true", help="add INDEX.HTM (the contents as a web page) and AUTORUN.INF")
    p.add_argument("--anonymise", "--anonymize", dest="anonymise", action="store_true",
                   help="de-identify the copies (PS3.15 Annex E Basic Profile)")  # fmt: skip
    p.add_argument("--profile", action="append", default=[], metavar="OPTIONS", help="with --anonymise: " + OPTION_HELP)
    p.add_argument("--project", default="", help="with --anonymise: project name")
    p.add_argument("--label", default="HILUM", help="volume label / File-set ID (default HILUM)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(handler=run_export_media)


def run_export_media(args: argparse.Namespace) -> int:
    from hilum.archive.deid_store import DeidStore, study_uids_of
    from hilum.archive.media import export_media
    from hilum.cli._common import load, open_archive, progress_bar, quiet_pydicom, use_progress
    from hilum.cli.anonymize import _options

    quiet_pydicom(getattr(args, "verbose", 0))
    if not args.studies and not args.patient:
        raise HilumError("give at least one STUDY UID or --patient ID")
    if (args.profile or args.project) and not args.anonymise:
        raise HilumError("--profile and --project need --anonymise")
    archive = open_archive(args, must_exist=True)
    try:
        uids = study_uids_of(archive, studies=args.studies, patients=args.patient)
        store = deid = None
        if args.anonymise:
            args.allow_burned_in = False
            store = DeidStore.from_config(archive, load(args))
            deid = store.deidentifier(_options(args), project=args.project)
        with progress_bar(None, "export", enabled=use_progress(args)) as update:
            report = export_media(archive, uids, args.out, viewer=args.viewer, deid=deid, store=store,
                                  label=args.label, progress=update)  # fmt: skip
    finally:
        archive.close()
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(f"wrote {report.instances} instances of {report.studies} studies to {report.out} ({report.kind}, "
              f"{report.bytes / 1e6:.1f} MB)" + (", de-identified" if report.anonymised else ""))  # fmt: skip
        for s in report.skipped[:20]:
            print(f"  skipped {s}")
    return 3 if report.skipped else 0
