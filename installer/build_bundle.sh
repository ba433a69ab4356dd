#!/usr/bin/env bash
# Build Hilum's desktop bundle: a PyInstaller one-folder program (DIST/hilum/hilum + DIST/hilum/_internal).
#
#   bash installer/build_bundle.sh [--dist DIR] [--work DIR] [--without numba,simpleitk] [--python PY] [--no-strip]
#
# Defaults: --dist dist, --work build/pyinstaller, the project's .venv/bin/python (PyInstaller 6.19.0 is
# in the test extra).  Prints the build time and the folder's size; exit non-zero on failure.  The same spec
# builds on Windows (installer/windows/build.ps1) and macOS (installer/macos/build.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dist="$here/dist"
work="$here/build/pyinstaller"
python="$here/.venv/bin/python"
strip=1
without="${HILUM_BUNDLE_WITHOUT:-}"
while (($#)); do
  case "$1" in
    --dist) dist="$2"; shift 2 ;;
    --work) work="$2"; shift 2 ;;
    --without) without="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --no-strip) strip=0; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_bundle.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
"$python" -c 'import PyInstaller' 2>/dev/null || {
  echo "build_bundle.sh: PyInstaller is not installed in $python (pip install pyinstaller==6.19.0)" >&2; exit 1; }
cd "$here"
SECONDS=0
HILUM_BUNDLE_WITHOUT="$without" PYTHONPATH="$here/app" "$python" -m PyInstaller --noconfirm --clean \
  --log-level "${HILUM_BUNDLE_LOG:-WARN}" --distpath "$dist" --workpath "$work" installer/pyinstaller/hilum.spec
if ((strip)) && command -v strip >/dev/null 2>&1; then
  # Strip the debugging symbols that are left (not the executable: its archive is appended), except from libraries auditwheel repaired (patchelf'd:
  # files in a wheel's *.libs folder or named lib*-<hash>.so*): stripped, they no longer load.
  while IFS= read -r -d '' f; do
    case "$f" in */*.libs/*) continue ;; esac
    [[ "$(basename "$f")" =~ -[0-9a-f]{8}\.so ]] && continue
    file -b "$f" | grep -q 'ELF.*not stripped' || continue
    strip --strip-unneeded "$f"
  done < <(find "$dist/hilum" -type f \( -name '*.so' -o -name '*.so.*' \) -print0)
fi
took=$SECONDS
"$dist/hilum/hilum" --version >/dev/null
printf 'build_bundle.sh: %s/hilum built in %s s, %s MB (without: %s)\n' "$dist" \
  "$took" "$(du -sm "$dist/hilum" | cut -f1)" "${without:-nothing}"
