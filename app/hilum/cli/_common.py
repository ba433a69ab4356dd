"""Helpers shared by CLI verbs: the ``--data`` option, opening the archive, progress, JSON.

Kept small and stable: other verbs import it.  Not a verb itself (the
leading underscore keeps the verb discovery in ``hilum.cli`` away).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hilum.errors import HilumError

if TYPE_CHECKING:
    from hilum.archive import Archive
    from hilum.config import Config

__all__ = ["add_data_option", "load", "open_archive", "progress_bar", "print_json", "quiet_pydicom", "use_progress"]


def add_data_option(parser: argparse.ArgumentParser) -> None:
    """``--data DIR``: the data folder (default: $HILUM_DATA or the platform's user data folder)."""
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="data folder (default: $HILUM_DATA or the user data folder)")


def load(args: argparse.Namespace) -> Config:
    """The configuration of the data folder named by ``args.data``."""
    from hilum.config import load_config

    return load_config(getattr(args, "data", None))


def open_archive(args: argparse.Namespace, *, must_exist: bool = False) -> Archive:
    """Open the archive that ``--data`` (and its ``hilum.toml``) describes.

    Any failure — a read-only or unusable folder, a database that cannot be
    reached — becomes one :class:`HilumError` line.  ``must_exist`` refuses
    to create a data folder that is not there (for verbs that only inspect).
    """
    from hilum.archive import Archive

    cfg = load(args)
    if must_exist and not Path(cfg.data_dir).is_dir():
        raise HilumError(f"no data folder at {cfg.data_dir}")
    try:
        return Archive.from_config(cfg)
    except HilumError:
        raise
    except Exception as exc:  # SQLAlchemy/driver/OS errors: say it in one line
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise HilumError(f"cannot open the archive in {cfg.data_dir}: {detail}") from exc


def quiet_pydicom(verbose: int = 0) -> None:
    """Keep pydicom's per-file warnings about lenient parsing off the terminal unless ``-v``.

    The import summary reports what matters (each rejection, one line).
    """
    if verbose:
        return
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")


def use_progress(args: argparse.Namespace) -> bool:
    """A progress bar only on a terminal, and never with ``--json``."""
    return not getattr(args, "json", False) and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(total: int | None, description: str, *, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr; yields ``update(done, total)``.  A no-op when not ``enabled``."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def print_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (UTF-8, as is), one document."""
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
