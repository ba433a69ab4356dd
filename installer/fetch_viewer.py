"""Fetch the prebuilt OHIF viewer that ``hilum serve`` serves at ``/viewer`` (run by installer/setup.sh).

The version and the tarball's sha512 are pinned in ``installer/npm/package.json`` (``hilumViewer``).
``npm pack`` fetches exactly that tarball from the npm registry; this script checks its sha512
against the pin (and refuses anything else), then unpacks ``package/dist/`` and ``package.json``
into ``.venv/npm/node_modules/@ohif/app/``.  Only the prebuilt files are needed: no build step,
no dependencies, no CDN at run time.  A second run with the same pin does nothing.

Usage: python3 installer/fetch_viewer.py [PROJECT_ROOT]
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent)
    pin = json.loads((root / "installer/npm/package.json").read_text())["hilumViewer"]
    name, version, integrity = pin["package"], pin["version"], pin["integrity"]
    dest = root / ".venv/npm/node_modules" / name
    stamp = dest / ".hilum-integrity"
    if stamp.is_file() and stamp.read_text().strip() == integrity and (dest / "dist/index.html").is_file():
        return 0
    algo, _, want = integrity.partition("-")
    if algo != "sha512":
        print(f"fetch_viewer: pinned integrity must be sha512, not {algo}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="hilum-ohif-") as tmp:
        subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", tmp, "--loglevel=error"],
                       check=True, capture_output=True, text=True)  # fmt: skip
        tgz = next(Path(tmp).glob("*.tgz"))
        digest = hashlib.sha512()
        with tgz.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        got = base64.b64encode(digest.digest()).decode()
        if got != want:
            print(f"fetch_viewer: {name}@{version}: sha512 {got} differs from the pinned {want}", file=sys.stderr)
            return 1
        staging = Path(tmp) / "unpacked"
        with tarfile.open(tgz) as tar:
            members = [
                m
                for m in tar.getmembers()
                if (m.name == "package/package.json" or m.name.startswith("package/dist/"))
                and (m.isfile() or m.isdir())
            ]
            for m in members:  # nothing outside package/ (the "data" filter where this Python has it)
                if m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise SystemExit(f"fetch_viewer: unsafe path in the tarball: {m.name}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, members=members, filter="data")
            else:
                tar.extractall(staging, members=members)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / "package"), dest)
        stamp.write_text(integrity + "\n")
    print(f"fetch_viewer: {name}@{version} unpacked into {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
