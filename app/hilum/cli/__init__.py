"""The ``hilum`` command line (contract in ../shared/DESIGN.md).

Each verb lives in its own module of this package and exposes
``register(subparsers)``; verbs are discovered here, so adding one touches no
other file.  A verb's handler returns an exit code (0 = success).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from hilum import __version__
from hilum.errors import HilumError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hilum",
        description="Hilum DICOM workstation and mini-PACS. Without a verb, opens the workstation.",
    )
    parser.add_argument("--version", action="version", version=f"hilum {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument(
        "--data", metavar="DIR", default=None, help="data folder (default: $HILUM_DATA or the user data folder)"
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    for verb_parser in sub.choices.values():
        _add_global_options(verb_parser)
    return parser


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    """Accept ``--data`` and ``-v`` in ``parser`` and in every command nested below it.

    argparse copies everything a subcommand's parser sets into the namespace
    of the parser above it, defaults included: a subcommand's ``--data``
    defaulting to None would undo ``hilum --data DIR users add ...``.  So in
    every parser below the top one the global options default to SUPPRESS
    (set only when given there), with the one ``dest`` the top parser uses;
    whichever is given last on the line wins.  ``-v`` after the verb counts
    on its own (``hilum -v VERB -v`` is ``-v`` once more than the verb's),
    see :func:`main`.
    """
    actions = {opt: a for a in parser._actions for opt in a.option_strings}
    data = actions.get("--data")
    if data is None:
        parser.add_argument(
            "--data",
            metavar="DIR",
            default=argparse.SUPPRESS,
            help="data folder (default: $HILUM_DATA or the user data folder)",
        )
    else:
        if data.dest != "data":
            raise TypeError(f"{parser.prog}: --data must store to args.data, not args.{data.dest}")
        data.default = argparse.SUPPRESS
    if "-v" not in actions and "--verbose" not in actions:
        parser.add_argument(
            "-v",
            "--verbose",
            dest="verbose_after",
            action="count",
            default=argparse.SUPPRESS,
            help="more log output (-vv for debug)",
        )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for nested in action.choices.values():
                _add_global_options(nested)


def _verbs(parser: argparse.ArgumentParser) -> set[str]:
    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    if argv is None:
        argv = sys.argv[1:]
    from hilum.cli.workstation import paths_mean_gui  # `hilum study.dcm` (a file manager) = `hilum gui study.dcm`

    argv = paths_mean_gui(argv, _verbs(parser))
    args = parser.parse_args(argv)
    args.verbose += getattr(args, "verbose_after", 0)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        from hilum.cli.workstation import run_workstation

        handler = run_workstation
    try:
        return int(handler(args) or 0)
    except HilumError as exc:
        print(f"hilum: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hilum: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
