"""``hilum selftest``: check this install end to end, offline and headless (issue 22; :mod:`hilum.selftest`).

One line per check with its time, ✓ or ✗ and what it found or why it failed;
exit 0 only when every check passes.  Runs in a temporary data folder (removed
afterwards) unless ``--data DIR`` names one to use (and keep).  The Qt check runs
in a child process (``--qt-child``, hidden): a Qt that cannot start aborts its
process rather than raising.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hilum.cli._common import print_json, quiet_pydicom
from hilum.errors import HilumError

QT_TIMEOUT = 120.0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "selftest",
        help="check this install end to end (offline, headless)",
        description="Check this installation offline and without a display: the index migrations, a generated "
        "CT study and one image per compressed transfer syntax (JPEG Baseline, JPEG Lossless, JPEG-LS, "
        "JPEG 2000, RLE) ingested, decoded, loaded as a volume and rendered, the node answering C-ECHO and "
        "C-FIND on a free loopback port, Qt starting offscreen. Uses a temporary data folder unless --data.",
        epilog="exit status: 0 when every check passes, 1 when one fails, 2 on usage errors.",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="use (and keep) this new or empty folder instead of a temporary one (a folder holding an archive is refused)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-qt", action="store_true", help="leave out the Qt check (a server install without Qt)")
    p.add_argument("--qt-child", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(handler=run_selftest)


def run_selftest(args: argparse.Namespace) -> int:
    if args.qt_child:
        return _qt_child()
    from hilum.selftest import CheckResult, SelfTest, format_line, timed

    quiet_pydicom(getattr(args, "verbose", 0))
    ok_mark, fail_mark = _marks()
    t0 = time.perf_counter()

    def report(result: CheckResult) -> None:
        if not args.json:
            print(format_line(result, ok_mark=ok_mark, fail_mark=fail_mark), flush=True)

    if args.data:
        _claim(Path(args.data).expanduser())
    with tempfile.TemporaryDirectory(prefix="hilum-selftest-") as tmp:
        data = Path(args.data).expanduser() if args.data else Path(tmp) / "data"
        results = SelfTest(data, Path(tmp) / "work").run(report)
        if not args.no_qt:
            qt = timed("qt", _qt_check)
            report(qt)
            results.append(qt)
    seconds = time.perf_counter() - t0
    passed = all(r.ok for r in results)
    if args.json:
        print_json(
            {
                "ok": passed,
                "seconds": round(seconds, 3),
                "data": str(data) if args.data else None,
                "checks": [r.as_dict() for r in results],
            }
        )
    else:
        failed = [r.name for r in results if not r.ok]
        print(
            f"{len(results) - len(failed)} of {len(results)} checks passed in {seconds:.1f} s"
            + (f"; failed: {', '.join(failed)}" if failed else "")
        )
    return 0 if passed else 1


MARKER = "HILUM-SELFTEST"
"""The file that marks a ``--data`` folder as the self-test's own (made by it, reusable by it)."""


def _claim(data: Path) -> None:
    """Refuse a ``--data`` folder that holds a real archive: the self-test stores a test patient there."""
    marker = data / MARKER
    if not marker.exists() and any((data / name).exists() for name in ("index.sqlite", "hilum.toml", "blobs")):
        raise HilumError(
            f"{data} holds a data folder (index, blobs or hilum.toml) not made by the self-test: it would store a "
            "test patient there; give a new or empty folder, or leave out --data"
        )
    try:
        data.mkdir(parents=True, exist_ok=True)
        marker.write_text("made by 'hilum selftest': a test data folder, safe to delete\n", encoding="utf-8")
    except OSError as exc:
        raise HilumError(f"cannot use {data}: {exc.strerror or exc}") from exc


def _marks() -> tuple[str, str]:
    """✓/✗ where stdout can write them (a clean environment may give ASCII), else OK/FAIL."""
    try:
        "\u2713\u2717".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "OK  ", "FAIL"
    return "\u2713", "\u2717"


def self_command() -> list[str]:
    """How to run this ``hilum`` again in a child process: the bundle's executable, or this Python."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "hilum"]


def _qt_check() -> str:
    from hilum.selftest import CheckFailed

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    if not getattr(sys, "frozen", False):  # the child finds this hilum the way this process did
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    try:
        proc = subprocess.run(
            [*self_command(), "selftest", "--qt-child"],
            capture_output=True,
            text=True,
            env=env,
            timeout=QT_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"Qt did not start within {QT_TIMEOUT:.0f} s") from exc
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    info = json.loads(lines[-1]) if lines else {}
    if "error" in info:
        raise CheckFailed(f"Qt offscreen: {info['error']}")
    if proc.returncode != 0 or not info:
        err = [line for line in proc.stderr.splitlines() if line.strip()]
        raise CheckFailed(f"Qt offscreen failed (exit {proc.returncode}): {err[-1] if err else 'no output'}")
    if info["width"] != 320 or info["height"] != 60:
        raise CheckFailed(f"grabbed {info['width']}x{info['height']}, expected 320x60")
    if not (info["dark"] is not None and info["dark"] < 40 and info["light"] > 160):
        raise CheckFailed(f"the grabbed widget shows no text (grey {info['dark']}..{info['light']})")
    return f"platform {info['platform']}, widget grabbed {info['width']}x{info['height']}, {info['levels']} grey levels"


def _qt_child() -> int:
    try:
        from hilum.ui.selftest_qt import offscreen_grab

        info = offscreen_grab()
    except Exception as exc:  # noqa: BLE001 - the parent shows it
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}), flush=True)
        return 1
    print(json.dumps(info), flush=True)
    return 0
