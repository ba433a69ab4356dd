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
    parser.add_argument("--data", dest="top_data", metavar="DIR",
                        help="without a verb: the workstation's data folder (default: $HILUM_DATA or the user data folder)")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    for verb_parser in sub.choices.values():
        # DESIGN.md: the global options work after the verb too.  SUPPRESS: the verb's parser
        # leaves what was given before the verb alone unless given again after it.
        if not any("-v" in a.option_strings for a in verb_parser._actions):
            verb_parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                                     help="more log output (-vv for debug)")
        if not any("--data" in a.option_strings for a in verb_parser._actions):
            verb_parser.add_argument("--data", dest="top_data", metavar="DIR", default=argparse.SUPPRESS,
                                     help="data folder (default: $HILUM_DATA or the user data folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        from hilum.cli.workstation import run_workstation

        handler = run_workstation
        args.data = args.top_data
    elif getattr(args, "data", None) is None and args.top_data is not None:
        args.data = args.top_data  # `hilum --data DIR VERB ...`: the verb's own --data, given first
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
