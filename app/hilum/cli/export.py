"""``hilum export``: a series as an animated GIF (or MP4 with PyAV), headless.

The series is loaded like the viewer loads it (sorted by position along the
normal, :mod:`hilum.dicom.stack_load`) and every frame goes through the same
grayscale pipeline (:mod:`hilum.dicom.pixels`), so the cine shows what the
viewer shows at that window. The series comes from files/folders, or from the
archive by Series Instance UID, read as every outgoing path reads it
(:meth:`~hilum.archive.Archive.read_outgoing`).  The cine is pixels only:
no DICOM object (and no UID) is written.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

from hilum.errors import HilumError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "export",
        help="export a series as a GIF (or MP4) cine",
        description=(
            "Write one series as an animated GIF (Pillow) or MP4 (H.264, needs the 'av' package), frames in "
            "spatial order through the viewer's pixel pipeline. Give the series' files or folders, or "
            "--series UID to take it from the archive (--data)."
        ),
    )
    parser.add_argument("paths", nargs="*", type=Path, metavar="PATH", help="DICOM files or folders of one series")
    parser.add_argument("--series", metavar="UID", help="Series Instance UID in the archive instead of PATHs")
    parser.add_argument("--data", metavar="DIR", help="data folder of the archive (default: HILUM_DATA or the user's)")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.gif|OUT.mp4")
    parser.add_argument("--fps", type=float, default=10.0, help="frames per second (default 10)")
    parser.add_argument("--window", type=float, nargs=2, metavar=("CENTER", "WIDTH"),
                        help="window in modality units (default: the header's)")  # fmt: skip
    parser.add_argument("--max-size", type=int, metavar="PX", help="shrink frames to fit PX x PX")
    parser.add_argument("--invert", action="store_true", help="invert the grey levels")
    parser.set_defaults(handler=run_export)


def _files(paths: list[Path]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            out.append(str(p))
        else:
            raise HilumError(f"no such file or folder: {p}")
    return out


def _from_archive(args: argparse.Namespace, spool: Path) -> list[str]:
    """The series' instances as they leave the archive (:meth:`Archive.read_outgoing`: today's
    demographics, UIDs untouched), written one at a time into ``spool`` for the loader."""
    from hilum.archive import Archive
    from hilum.config import load_config

    archive = Archive.from_config(load_config(args.data or os.environ.get("HILUM_DATA")))
    try:
        rows = archive.instances(series_uid=args.series)
        if not rows:
            raise HilumError(f"no series {args.series!r} in the archive")
        files = []
        for i, r in enumerate(sorted(rows, key=lambda r: r.get("InstanceNumber") or 0)):
            path = spool / f"{i:06d}.dcm"
            path.write_bytes(archive.read_outgoing(r))
            files.append(str(path))
        archive.audit_export({str(r.get("StudyInstanceUID") or "") for r in rows}, destination=str(args.output),
                             instances=len(rows), detail=f"cine of series {args.series}")
        return files
    finally:
        archive.close()


def run_export(args: argparse.Namespace) -> int:
    from hilum.dicom.stack_load import decoder_pool, load_series_sync
    from hilum.ui.viewer.export import export_cine, view_frames
    from hilum.ui.viewer.state import ViewportState

    if bool(args.paths) == bool(args.series):
        raise HilumError("give either PATHs or --series UID")
    with tempfile.TemporaryDirectory(prefix="hilum-export-") as spool:
        if args.series:
            files = _from_archive(args, Path(spool))
        else:
            files = _files(list(args.paths))
            if not files:
                raise HilumError("no files to export")
        pool = decoder_pool()  # this command owns the decoder processes (started only if a long compressed series needs them)
        try:
            volume = load_series_sync(files, preview=False, pool=pool)
        except ValueError as exc:
            raise HilumError(f"cannot load the series: {exc}") from exc
        finally:
            pool.shutdown()
        state = ViewportState()
        state.set_volume(volume, 0)
        if args.window:
            center, width = args.window
            if width < 1:
                raise HilumError(f"window width must be >= 1, not {width:g}")
            state.set_window(center, width)
        if args.invert:
            state.toggle_invert()
        out = export_cine(view_frames(state), args.output, args.fps, max_size=args.max_size)
    print(f"wrote {len(volume)} frames to {out}")
    return 0
