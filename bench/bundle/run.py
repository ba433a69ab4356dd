"""Desktop bundle benchmark (issue 22, part A): size, build time, cold start to first window, selftest.

Measures, on this machine:

* **build** — ``installer/build_bundle.sh`` into a temporary folder (PyInstaller one-folder + strip),
  wall time; or ``--bundle DIR`` to measure a bundle built before (no build time then);
* **size** — the installed folder (``du``, apparent and on disk) with a breakdown by package (the
  biggest top-level entries of ``_internal``, grouped), the ``.deb`` made by ``installer/deb/build_deb.sh``
  (xz, dpkg's default) and its build time; what the optional heavy parts (SimpleITK, numba + llvmlite)
  weigh in the folder and compressed (``xz -6`` of that part alone);
* **start to first window** — the bundled ``hilum gui --no-node`` on a fresh data folder under Xvfb,
  from ``Popen`` until ``xdotool search --onlyvisible --name Hilum`` (polled every 10 ms) sees the main
  window mapped;
  the same for ``python -m hilum gui --no-node`` from the venv beside it.  Page caches cannot be dropped
  here: the *first* start after the build (bundle) / first of this run (venv) is reported apart from the
  warm starts (median of ``--runs``, alternating bundle and venv);
* **selftest** — ``hilum selftest`` wall time from the bundle (when this tree has the verb), in a clean
  environment (``env -i``).

    .venv/bin/python bench/bundle/run.py [--bundle DIST/hilum] [--runs 5] [--json OUT.json] [--keep DIR]

Prints a report and the figures as JSON (``--json``).  Results: ``bench/bundle/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLEAN_PATH = "/usr/bin:/bin"


def du_bytes(path: Path, apparent: bool = True) -> int:
    args = ["du", "-s", "-B1"] + (["--apparent-size"] if apparent else []) + [str(path)]
    return int(subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()[0])


def xz_size(paths: list[Path], cwd: Path) -> int:
    """Bytes of ``tar | xz -6`` of ``paths`` (relative to ``cwd``): what they add to the .deb."""
    tar = subprocess.Popen(["tar", "cf", "-", *[str(p.relative_to(cwd)) for p in paths]], cwd=cwd,
                           stdout=subprocess.PIPE)  # fmt: skip
    xz = subprocess.run(["xz", "-6", "-T0", "-c"], stdin=tar.stdout, capture_output=True, check=True)
    tar.wait()
    return len(xz.stdout)


GROUPS = {  # top-level entries of _internal → the package they belong to (the rest are counted by name)
    "Qt (PySide6 + Qt libraries)": ("PySide6", "libQt6", "libicu", "libpyside6", "libshiboken6", "shiboken6"),
    "VTK": ("vtkmodules", "libvtk", "vtk-"),
    "SimpleITK": ("SimpleITK",),
    "numba + llvmlite": ("numba", "llvmlite"),
    "onnxruntime": ("onnxruntime",),
    "numpy": ("numpy",),
    "codecs (imagecodecs, pylibjpeg, pyjpegls)": (
        "imagecodecs",
        "_libjpeg",
        "_openjpeg",
        "_CharLS",
        "openjpeg",
        "libjpeg",
        "rle",
        "jpeg_ls",
        "pylibjpeg",
        "_rle",
    ),
    "boto3/botocore (S3 tier)": ("botocore", "boto3", "s3transfer"),
    "highdicom + pydicom + pynetdicom": ("highdicom", "pydicom", "pynetdicom"),
    "Pillow": ("PIL", "pillow"),
    "cryptography": ("cryptography",),
    "psycopg (PostgreSQL)": ("psycopg",),
    "Python (libpython, stdlib, base_library)": ("libpython", "base_library", "python3", "lib-dynload"),
    "Python code archive (PYZ, in the executable)": (),
}


def breakdown(bundle: Path) -> list[tuple[str, int]]:
    internal = bundle / "_internal"
    sizes: dict[str, int] = {}
    for entry in internal.iterdir():
        if entry.is_symlink():  # PyInstaller links a library found twice (e.g. libvtk*.so → vtkmodules/)
            continue
        size = du_bytes(entry) if entry.is_dir() else entry.stat().st_size
        name = next((g for g, prefixes in GROUPS.items() if any(entry.name.startswith(p) for p in prefixes)),
                    "system and other shared libraries" if ".so" in entry.name else "other data (metadata, fonts...)")  # fmt: skip
        sizes[name] = sizes.get(name, 0) + size
    sizes["the executable (bootloader + Python code archive)"] = (bundle / "hilum").stat().st_size
    return sorted(sizes.items(), key=lambda kv: -kv[1])


def optional_parts(bundle: Path) -> dict[str, dict[str, int]]:
    internal = bundle / "_internal"
    parts = {"SimpleITK": [internal / "SimpleITK"], "numba + llvmlite": [internal / "numba", internal / "llvmlite"]}
    out = {}
    for name, paths in parts.items():
        paths = [p for p in paths if p.exists()]
        if paths:
            out[name] = {"folder": sum(du_bytes(p) for p in paths), "xz": xz_size(paths, internal)}
    return out


def wait_window(display: str, timeout: float, proc: subprocess.Popen[bytes]) -> bool:
    """Poll every 10 ms until a visible window named Hilum is mapped (``xdotool search --sync``
    polls only every 0.5 s: too coarse for a start of a second or two)."""
    deadline = time.perf_counter() + timeout
    env = {"DISPLAY": display, "PATH": CLEAN_PATH}
    while time.perf_counter() < deadline and proc.poll() is None:
        r = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", "Hilum"], env=env, capture_output=True)
        if r.returncode == 0 and r.stdout.strip():
            return True
        time.sleep(0.01)
    return False


def start_to_window(cmd: list[str], env: dict[str, str], display: str, work: Path, timeout: float = 120) -> float:
    """Seconds from starting ``cmd`` on a fresh data folder until its main window is mapped."""
    data = Path(tempfile.mkdtemp(prefix="data-", dir=work))
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--data", str(data), "gui", "--no-node"], env={**env, "DISPLAY": display},
                            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        ok = wait_window(display, timeout, proc)
        elapsed = time.perf_counter() - t0
        if not ok:
            raise RuntimeError(f"no window from {cmd[0]}: {proc.stderr.read().decode()[-2000:] if proc.poll() else ''}")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        return elapsed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--bundle", type=Path, help="a built bundle folder (holding the hilum executable); default: build one"
    )
    ap.add_argument("--runs", type=int, default=5, help="warm starts of each (median reported)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--keep", type=Path, help="build into this folder and keep it (default: a temporary one)")
    ap.add_argument("--no-deb", action="store_true", help="skip the .deb (its xz compression takes minutes)")
    args = ap.parse_args()
    for tool in ("Xvfb", "xdotool", "dpkg-deb", "xz"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/bundle: {tool} is needed")
    work = Path(tempfile.mkdtemp(prefix="hilum-bench-bundle-"))
    figures: dict[str, object] = {"machine": f"{os.cpu_count()} cores, {os.uname().release}"}
    try:
        if args.bundle:
            bundle = args.bundle.resolve()
        else:
            dist = (args.keep or work / "dist").resolve()
            t0 = time.perf_counter()
            subprocess.run(["bash", str(REPO / "installer" / "build_bundle.sh"), "--dist", str(dist),
                            "--work", str(work / "build"), "--python", sys.executable], check=True)  # fmt: skip
            figures["build_s"] = round(time.perf_counter() - t0, 1)
            bundle = dist / "hilum"
        figures["folder_bytes"] = du_bytes(bundle)
        figures["folder_bytes_on_disk"] = du_bytes(bundle, apparent=False)
        figures["breakdown"] = breakdown(bundle)
        figures["optional_parts"] = optional_parts(bundle)

        # start to first window (the first start right after the build, then warm ones)
        read, write = os.pipe()  # Xvfb picks a free display number and writes it here
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1920x1080x24", "-nolisten", "tcp", "-noreset"],
                                pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(write)
        with os.fdopen(read) as f:
            display = ":" + f.readline().strip()
        try:
            home = work / "home"
            home.mkdir(exist_ok=True)
            clean = {"PATH": CLEAN_PATH, "HOME": str(home)}
            venv = {**clean, "PYTHONPATH": str(REPO / "app")}
            bundled = [str(bundle / "hilum")]
            from_venv = [sys.executable, "-m", "hilum"]
            figures["first_window_bundle_first_s"] = round(start_to_window(bundled, clean, display, work), 2)
            figures["first_window_venv_first_s"] = round(start_to_window(from_venv, venv, display, work), 2)
            warm_b, warm_v = [], []
            for _ in range(args.runs):
                warm_b.append(start_to_window(bundled, clean, display, work))
                warm_v.append(start_to_window(from_venv, venv, display, work))
            figures["first_window_bundle_warm_median_s"] = round(statistics.median(warm_b), 2)
            figures["first_window_venv_warm_median_s"] = round(statistics.median(warm_v), 2)
            figures["first_window_bundle_warm_s"] = [round(x, 2) for x in warm_b]
            figures["first_window_venv_warm_s"] = [round(x, 2) for x in warm_v]
        finally:
            xvfb.terminate()
            xvfb.wait()

        if (REPO / "app" / "hilum" / "cli" / "selftest.py").is_file():
            home = work / "home-selftest"
            home.mkdir()
            t0 = time.perf_counter()
            r = subprocess.run(["env", "-i", f"PATH={CLEAN_PATH}", f"HOME={home}", str(bundle / "hilum"), "selftest"],
                               cwd=home, capture_output=True, text=True, timeout=900)  # fmt: skip
            figures["selftest_s"] = round(time.perf_counter() - t0, 1)
            figures["selftest_exit"] = r.returncode
            figures["selftest_output"] = r.stdout.strip().splitlines()

        if not args.no_deb:
            t0 = time.perf_counter()
            subprocess.run(["bash", str(REPO / "installer" / "deb" / "build_deb.sh"), "--bundle", str(bundle),
                            "--out", str(work / "deb")], check=True)  # fmt: skip
            figures["deb_build_s"] = round(time.perf_counter() - t0, 1)
            deb = next((work / "deb").glob("*.deb"))
            figures["deb_bytes"] = deb.stat().st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mb = 1024 * 1024
    print(f"\nHilum desktop bundle — {figures['machine']}")
    if "build_s" in figures:
        print(f"  build (PyInstaller + strip)     {figures['build_s']:>8.1f} s")
    print(f"  folder                          {figures['folder_bytes'] / mb:>8.1f} MB "
          f"({figures['folder_bytes_on_disk'] / mb:.1f} MB on disk)")  # fmt: skip
    if "deb_bytes" in figures:
        print(
            f"  .deb (xz)                       {figures['deb_bytes'] / mb:>8.1f} MB, built in {figures['deb_build_s']} s"
        )
    for name, size in figures["breakdown"]:  # type: ignore[union-attr]
        print(f"    {name:<52} {size / mb:>7.1f} MB")
    for name, sizes in figures["optional_parts"].items():  # type: ignore[union-attr]
        print(f"  optional {name:<22} folder {sizes['folder'] / mb:>7.1f} MB, xz {sizes['xz'] / mb:>6.1f} MB")
    print(
        f"  first window, bundle: first start {figures['first_window_bundle_first_s']} s, "
        f"warm median {figures['first_window_bundle_warm_median_s']} s {figures['first_window_bundle_warm_s']}"
    )
    print(
        f"  first window, venv:   first start {figures['first_window_venv_first_s']} s, "
        f"warm median {figures['first_window_venv_warm_median_s']} s {figures['first_window_venv_warm_s']}"
    )
    if "selftest_s" in figures:
        print(f"  selftest from the bundle        {figures['selftest_s']:>8.1f} s (exit {figures['selftest_exit']})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
