"""``hilum`` without a verb, and ``hilum gui``: open the workstation.

Qt is imported only when the workstation really starts, so the other verbs
(and ``hilum --help``) never load it.
"""

from __future__ import annotations

import argparse

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
    p.set_defaults(handler=run_workstation)


def run_workstation(args: argparse.Namespace) -> int:
    """Open the main window on the data folder's archive; returns the exit code."""
    from hilum.config import load_config

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
