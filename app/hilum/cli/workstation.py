"""``hilum`` without a verb, and ``hilum gui [PATH...]``: open the workstation.

Qt is imported only when the workstation really starts, so the other verbs
(and ``hilum --help``) never load it.

Files given on the command line (what a file manager runs for a ``.dcm`` file,
a folder or a DICOMDIR: the desktop entry's ``Exec=hilum gui %F``, Windows'
and macOS' file associations) are imported through the one import path (as
``hilum import`` does) with a progress bar, and the first study is opened in
a viewer tab.  ``hilum PATH...`` — a path where a verb would be — is the same
as ``hilum gui PATH...`` (:func:`paths_mean_gui`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Sequence

from hilum.cli._common import quiet_pydicom
from hilum.errors import HilumError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "gui",
        help="open the workstation (the same as hilum without a verb)",
        description="Open the Hilum workstation: the local study browser over the archive in the data "
        "folder, with the DICOM node running in the background.",
    )
    p.add_argument("--data", metavar="DIR", help="data folder (default: $HILUM_DATA or the user data folder)")
    p.add_argument("--demo", action="store_true", help="import the generated demo studies at start, without asking")
    p.add_argument(
        "--small-demo", action="store_true", help="with --demo: tiny demo images (quick; for tests and screenshots)"
    )
    p.add_argument("--no-node", action="store_true", help="do not start the DICOM/DICOMweb/HL7 listeners")
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="DICOM files, folders or DICOMDIRs to import (as hilum import does) and open: the first study "
        "is shown in a viewer tab",
    )
    p.set_defaults(handler=run_workstation)


_VALUE_OPTIONS = frozenset({"--data"})
"""The top-level options that take a value (``--data DIR``): their value is not where a verb is."""


def paths_mean_gui(argv: Sequence[str], verbs: Collection[str]) -> list[str]:
    """``hilum [OPTIONS] PATH...`` → ``hilum [OPTIONS] gui PATH...`` when PATH is not a verb and exists.

    A file manager opens a ``.dcm`` file, a folder or a DICOMDIR with the
    program and the path(s); only an existing path counts, so a mistyped verb
    still gets argparse's "invalid choice" error.
    """
    out = list(argv)
    i = 0
    while i < len(out):
        arg = out[i]
        if arg == "--":
            break
        if arg.startswith("-"):
            i += 2 if arg in _VALUE_OPTIONS else 1
            continue
        if arg not in verbs and os.path.exists(arg):
            out.insert(i, "gui")
        break
    return out


def run_workstation(args: argparse.Namespace) -> int:
    """Open the main window on the data folder's archive; returns the exit code."""
    from hilum.config import load_config

    paths = [str(p) for p in getattr(args, "paths", None) or []]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise HilumError(f"no such file or folder: {missing[0]}")

    cfg = load_config(getattr(args, "data", None))
    quiet_pydicom(getattr(args, "verbose", 0))  # the workstation's node, as `hilum serve`
    try:
        from hilum.ui.app import run_gui
    except ImportError as exc:  # PySide6 missing or its system libraries absent
        raise HilumError(f"cannot start the workstation: {exc} (install PySide6, or use 'hilum serve')") from exc
    return run_gui(
        cfg,
        demo=bool(getattr(args, "demo", False)),
        demo_small=bool(getattr(args, "small_demo", False)),
        start_node=not getattr(args, "no_node", False),
        open_paths=paths,
    )


def _refusals_in_a_window(run):  # type: ignore[no-untyped-def]
    """Issue 22 (upgrades keep data): a data folder this Hilum will not open (written by a newer Hilum,
    or the backup before its upgrade failed) is said in a dialog too, then as the one CLI line."""

    def run_showing_refusals(args: argparse.Namespace) -> int:
        from hilum.archive.upgrade import UpgradeError
        from hilum.errors import DowngradeRefused

        try:
            return int(run(args))
        except (DowngradeRefused, UpgradeError) as exc:
            from hilum.ui.startup_error import can_show, show_startup_error

            if can_show():
                show_startup_error("Hilum cannot open this data folder", str(exc))
            raise

    return run_showing_refusals


run_workstation = _refusals_in_a_window(run_workstation)
