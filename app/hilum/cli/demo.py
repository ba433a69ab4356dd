"""``hilum demo``: write the generated demo data set (patients, CT/MR studies, a prior,
a multi-frame object and one series per transfer syntax) to a folder."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hilum.errors import HilumError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "demo",
        help="write a synthetic demo data set",
        description="Write synthetic DICOM studies (phantom CT, MR with an oblique series, a prior, "
        "Enhanced CT, compressed copies) to DIR, one file per instance.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--small", action="store_true", help="tiny images for tests (CT 128x128x10)")
    p.add_argument("--ct-slices", type=int, metavar="N", help="slices per CT series (default 60, 10 with --small)")
    p.add_argument("--seed", type=int, default=0, help="seed of UIDs and noise (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from hilum.dicom.generator import write_demo

    if args.ct_slices is not None and args.ct_slices < 1:
        raise HilumError(f"--ct-slices must be at least 1, got {args.ct_slices}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise HilumError(f"--out {out} exists and is not a folder")
    start = time.perf_counter()
    try:
        paths = write_demo(out, ct_slices=args.ct_slices, small=args.small, seed=args.seed)
    except OSError as exc:
        raise HilumError(f"cannot write to {out}: {exc.strerror or exc}") from exc
    seconds = time.perf_counter() - start
    # Layout: OUT/<patient>/<study>/<series>/<instance>.dcm
    rel = [p.relative_to(out).parts for p in paths]
    summary: dict[str, Any] = {
        "out": str(out),
        "files": len(paths),
        "patients": len({r[0] for r in rel}),
        "studies": len({r[:2] for r in rel}),
        "series": len({r[:3] for r in rel}),
        "bytes": sum(p.stat().st_size for p in paths),
        "seconds": round(seconds, 2),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"wrote {summary['files']} files ({summary['patients']} patients, {summary['studies']} studies, "
            f"{summary['series']} series, {summary['bytes'] / 1e6:.1f} MB) to {out} in {seconds:.1f} s"
        )
    return 0
