"""``hilum anonymize``: de-identified copies (PS3.15 Annex E) of archived studies or of files, to a folder or a peer.

The originals are not touched (identity is sacred): the copies get new UIDs (``2.25.`` + HMAC of the
node secret), a pseudonymous patient, and the profile's options; the node keeps the mapping, which
``--mapping`` shows (administrators only: it re-identifies).  See :mod:`hilum.dicom.deid`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from hilum.errors import HilumError

OPTION_HELP = ("comma-separated PS3.15 E.3 options on top of the Basic Profile: dates (Retain Longitudinal "
               "Temporal Information with Modified Dates), device (Retain Device Identity), descriptors (Clean "
               "Descriptors), pixels (Clean Pixel Data by resources/deid/pixel_rules.toml); UIDs are always replaced")  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "anonymize", aliases=["anonymise"], help="de-identified copies of studies or files (PS3.15 Annex E)",
        description="Write de-identified copies (PS3.15 Annex E Basic Application Level Confidentiality Profile) "
        "of archived studies (--study, --patient) or of DICOM files and folders (PATH) to a folder (--out) or "
        "to a DICOM peer (--to), or list what would change (--dry-run). New UIDs and patient pseudonyms are "
        "derived from the node's secret, so a later study of the same patient gets the same pseudonym; the "
        "node keeps the mapping (--mapping lists it: administrators only). Exit 0 when all were written, "
        "3 when some could not be, 1 on an error.")  # fmt: skip
    p.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="DICOM files or folders (instead of --study)")
    p.add_argument("--study", action="append", default=[], metavar="UID", help="Study Instance UID in the archive")
    p.add_argument("--patient", action="append", default=[], metavar="ID", help="all studies of this Patient ID")
    p.add_argument("--out", type=Path, metavar="DIR", help="write the copies under DIR")
    p.add_argument(
        "--to", metavar="PEER", help="C-STORE the copies to PEER (a [peers] name or AE title, or AET@HOST:PORT)"
    )
    p.add_argument("--profile", action="append", default=[], metavar="OPTIONS", help=OPTION_HELP)
    p.add_argument("--project", default="", help="project name: pseudonyms differ per project (default: none)")
    p.add_argument(
        "--allow-burned-in",
        action="store_true",
        help="copy images marked Burned In Annotation = YES that no pixel rule cleans (flagged)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would change; write nothing")
    p.add_argument("--mapping", action="store_true", help="list the node's mapping table (original -> replacement)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(handler=run_anonymize)


def _options(args: argparse.Namespace) -> Any:
    from hilum.dicom.deid import Options

    names = [n for spec in args.profile for n in spec.split(",") if n.strip() and n.strip().lower() != "basic"]
    if args.allow_burned_in:
        names.append("burned-in")
    try:
        return Options.from_names(names)
    except ValueError as exc:
        raise HilumError(str(exc)) from exc


def _target(cfg: Any, spec: str) -> Any:
    from hilum.dimse.scu import Target, peer_target

    peer = cfg.peers.get(spec) or next((p for p in cfg.peers.values() if p.aet == spec), None)
    if peer is not None:
        return peer_target(cfg, peer)
    if "@" in spec and ":" in spec.split("@", 1)[1]:
        aet, hostport = spec.split("@", 1)
        host, port = hostport.rsplit(":", 1)
        if port.isdigit() and 1 <= int(port) <= 65535 and aet:
            return Target(host=host, port=int(port), called_aet=aet, calling_aet=cfg.aet)
    raise HilumError(f"{spec!r} is neither a configured peer nor AET@HOST:PORT")


def run_anonymize(args: argparse.Namespace) -> int:
    from hilum.archive.deid_store import DeidStore, audit_export, deidentified, study_uids_of
    from hilum.cli._common import load, open_archive, quiet_pydicom

    quiet_pydicom(getattr(args, "verbose", 0))
    archive = open_archive(args)
    try:
        store = DeidStore.from_config(archive, load(args))
        if args.mapping:
            rows = store.mapping(project=args.project or None)
            if args.json:
                print(json.dumps([{**r, "created_at": r["created_at"].isoformat()} for r in rows]))
            else:
                for r in rows:
                    print(f"{r['project'] or '-'}\t{r['kind']}\t{r['original']}\t{r['replacement']}")
            return 0
        sources = bool(args.paths) + bool(args.study or args.patient)
        if sources != 1:
            raise HilumError("give PATHs, or --study/--patient, not both and not neither")
        if sum(bool(x) for x in (args.out, args.to, args.dry_run)) != 1:
            raise HilumError("give one of --out DIR, --to PEER or --dry-run")
        if args.out is not None and args.out.exists() and any(args.out.iterdir()):
            raise HilumError(f"{args.out} is not empty")
        deid = store.deidentifier(_options(args), project=args.project)
        target = _target(load(args), args.to) if args.to else None
        if args.paths:
            items = _from_files(args.paths, deid, args.dry_run)
        else:
            uids = study_uids_of(archive, studies=args.study, patients=args.patient)
            items = deidentified(archive, uids, deid, store=None, dry_run=args.dry_run)
        rc, summary = _write(args, store, deid, items, target)
        if (args.study or args.patient) and not args.dry_run:
            audit_export(archive, uids, destination=str(args.out or args.to), instances=summary["instances"],
                         anonymised=True, outcome=4 if summary["failed"] else 0)  # fmt: skip
        return rc
    finally:
        archive.close()


def _from_files(paths: list[Path], deid: Any, dry_run: bool) -> Any:
    from hilum.dicom.deid import DeidError
    from hilum.dimse.scu import collect_files

    for f in collect_files(paths):
        try:
            yield f, deid.deidentify_bytes(f.read_bytes(), dry_run=dry_run)
        except DeidError as exc:
            yield f, exc


def _write(args: argparse.Namespace, store: Any, deid: Any, items: Any, target: Any) -> tuple[int, dict[str, Any]]:
    from hilum.dicom.deid import DeidError
    from hilum.dimse.scu import send

    results, failures, actions = [], [], Counter()  # type: ignore[var-annotated]
    with tempfile.TemporaryDirectory(prefix="hilum-anon-") as tmp:
        out = args.out if args.out is not None else Path(tmp)
        written: list[Path] = []
        try:
            for item in items:
                source, got = item if isinstance(item, tuple) and isinstance(item[0], Path) else (None, item)
                if isinstance(got, DeidError):
                    failures.append({"path": str(source), "error": str(got)})
                    continue
                data, result = got
                results.append(result)
                actions.update(c.split(" ", 1)[1] for c in result.changed)
                if args.dry_run:
                    continue
                path = out / result.patient_id / result.study_uid / f"{result.sop_uid}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                written.append(path)
        except DeidError as exc:
            raise HilumError(str(exc)) from exc
        if not args.dry_run:
            store.record(deid.project, results)
        sent = None
        if target is not None and written:
            sent = send(target, written)
            failures += [
                {"path": i.path, "error": i.error or f"status 0x{i.status:04X}"} for i in sent.items if not i.ok
            ]
    summary = {
        "instances": len(results), "failed": len(failures), "failures": failures[:50],
        "patients": sorted({r.patient_id for r in results}), "studies": len({r.study_uid for r in results}),
        "options": deid.options.names(), "project": deid.project, "dry_run": args.dry_run,
        "out": str(args.out) if args.out else None, "to": args.to,
        "warnings": sorted({w for r in results for w in r.warnings}),
    }  # fmt: skip
    if args.dry_run:
        summary["changes"] = dict(sorted(actions.items()))
    if args.json:
        print(json.dumps(summary))
    else:
        verb = "would de-identify" if args.dry_run else "de-identified"
        where = f" to {args.out}" if args.out else (f" and sent to {args.to}" if args.to else "")
        print(f"{verb} {len(results)} instances of {summary['studies']} studies{where}")
        if args.dry_run:
            for what, n in sorted(actions.items()):
                print(f"  {what}  ({n} instances)")
        for f in failures[:20]:
            print(f"  failed {f['path']}: {f['error']}", file=sys.stderr)
    return (3 if failures else 0), summary
