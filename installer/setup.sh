#!/usr/bin/env bash
# Hilum set-up on a Debian machine: system packages, a virtualenv in .venv, the
# project installed into it (editable, with its test tools).  Idempotent: a
# second run only checks.  Usage: bash installer/setup.sh [--no-system]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

# Debian packages: DCMTK and Orthanc (interop peers in tests, benchmarks), dicom3tools (dciodvfy:
# the tests hold the GSPS, SR, KOS and SEG Hilum writes to it), GDCM's tools (gdcmconv: a second decoder
# of the JPEG-LS / JPEG 2000 files compression writes, and a peer in bench/storage),
# Xvfb and the X/GL libraries Qt + VTK need without a screen, OSMesa, PostgreSQL, Chromium and its
# WebDriver (the web viewer's tests drive a real headless browser with Selenium), xorriso (ISO images of
# patient media), poppler-utils (pdftoppm renders the reports' PDF in tests).
SYSTEM_PACKAGES=(dcmtk xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxkbcommon-x11-0
  libxcb-xinerama0 libxcb-randr0 libxcb-render-util0 libxcb-image0 libxcb-shape0 libegl1 libgl1
  libopengl0 libglx0 libosmesa6 libfontconfig1 libdbus-1-3 fonts-dejavu-core
  fonts-noto-cjk orthanc orthanc-dicomweb postgresql dicom3tools libgdcm-tools chromium chromium-driver
  xorriso poppler-utils)
SYSTEM_PACKAGES+=(xdotool desktop-file-utils shared-mime-info binutils file xz-utils)  # the desktop bundle's build, .deb and tests

SYSTEM_PACKAGES+=(systemd docker-compose)  # issue 22c: systemd-analyze/-sysusers/-tmpfiles and compose's linter in tests
if [[ "${1:-}" != "--no-system" ]]; then
  missing=()
  for p in "${SYSTEM_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing+=(python3-venv); fi
  # npm (and Node.js): the S3-compatible test server below; kept as it is where one is installed already.
  if ! command -v npm >/dev/null 2>&1; then missing+=(npm); fi
  if ((${#missing[@]})); then
    echo "hilum setup: installing ${missing[*]}" >&2
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts services on install where it can; Hilum's tests start their own.
    $SUDO service orthanc stop >/dev/null 2>&1 || true
  fi
fi

python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Hilum needs Python >= 3.11")'
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
stamp=.venv/.hilum-installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip wheel setuptools >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi
# The example AI plugins (plugins/*: each its own package, found through the entry points "hilum.plugins").
plugins_stamp=.venv/.hilum-plugins-installed
if [[ ! -f $plugins_stamp ]] || [[ -n "$(find plugins -name pyproject.toml -newer "$plugins_stamp")" ]] \
    || ! .venv/bin/python -c 'import hilum_lung_seg, hilum_body_masks' 2>/dev/null; then
  args=()
  for p in plugins/*/pyproject.toml; do args+=(-e "$(dirname "$p")"); done
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "${args[@]}"
  touch "$plugins_stamp"
fi

# Test servers from npm, pinned with their checksums in installer/npm/package-lock.json (npm ci checks
# every integrity hash): s3rver, the S3-compatible object store the archive-tier tests start on loopback.
# Installed into .venv/npm (ignored by git); skipped with a note when npm is missing (those tests skip).
if command -v npm >/dev/null 2>&1; then
  npmdir=.venv/npm
  if [[ ! -x $npmdir/node_modules/.bin/s3rver || installer/npm/package-lock.json -nt $npmdir/package-lock.json ]]; then
    mkdir -p "$npmdir"
    cp installer/npm/package.json installer/npm/package-lock.json "$npmdir/"
    (cd "$npmdir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
  # The OHIF web viewer hilum serve serves at /viewer: the prebuilt @ohif/app tarball pinned (version and
  # sha512) in installer/npm/package.json, its dist/ unpacked into .venv/npm/node_modules/@ohif/app.
  python3 installer/fetch_viewer.py "$here"
else
  echo "hilum setup: npm not found: the S3 tier tests and the web viewer will be missing (apt-get install -y npm)" >&2
fi
