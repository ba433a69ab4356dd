#!/usr/bin/env bash
# Build Hilum.app for macOS (and a .dmg): the same PyInstaller spec as Linux and Windows; its BUNDLE step
# writes Info.plist with CFBundleDocumentTypes for DICOM files (.dcm, .dicom), DICOMDIR and folders, and
# argv emulation turns a Finder "open" into `hilum PATH` (import, then the study in a viewer tab).
#
#   bash installer/macos/build.sh [--python python3.11] [--no-dmg] [--sign "Developer ID Application: ..."]
#
# Needs: macOS 11+, Python 3.11 (python.org universal2 or Homebrew), Xcode command-line tools (codesign,
# hdiutil).  Not run by the project's CI (Linux only): see installer/DESKTOP.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$here"
python="python3.11"
dmg=1
identity=""
while (($#)); do
  case "$1" in
    --python) python="$2"; shift 2 ;;
    --no-dmg) dmg=0; shift ;;
    --sign) identity="$2"; shift 2 ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ "$(uname)" == Darwin ]] || { echo "build.sh: run this on macOS (Linux: installer/build_bundle.sh)" >&2; exit 1; }
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install --upgrade pip
.venv/bin/python -m pip install -e ".[test]"   # Hilum, its pins, pyinstaller==6.19.0 (test extra)
.venv/bin/python resources/icons/make_icons.py   # hilum.icns for the .app
SECONDS=0
PYTHONPATH="$here/app" .venv/bin/python -m PyInstaller --noconfirm --clean --distpath dist \
  --workpath build/pyinstaller installer/pyinstaller/hilum.spec
app="dist/Hilum.app"
"$app/Contents/MacOS/hilum" --version
"$app/Contents/MacOS/hilum" selftest
/usr/libexec/PlistBuddy -c "Print :CFBundleDocumentTypes" "$app/Contents/Info.plist" >/dev/null
if [[ -n "$identity" ]]; then
  codesign --force --deep --options runtime --timestamp --sign "$identity" "$app"
  codesign --verify --strict --verbose=2 "$app"
else
  codesign --force --deep --sign - "$app"   # ad-hoc: runs on this Mac; Gatekeeper needs a Developer ID + notarization
fi
echo "build.sh: $app built in ${SECONDS} s, $(du -sh "$app" | cut -f1)"
if ((dmg)); then
  version="$("$app/Contents/MacOS/hilum" --version | awk '{print $2}')"
  hdiutil create -volname Hilum -srcfolder "$app" -ov -format UDZO "dist/Hilum-$version.dmg"
  echo "build.sh: dist/Hilum-$version.dmg"
fi
