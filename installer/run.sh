#!/usr/bin/env bash
# Set up (first time only) and open the Hilum workstation on the embedded
# default: a SQLite archive in the default data folder (override with --data DIR
# or HILUM_DATA).  Extra arguments go to `hilum`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/installer/setup.sh"
if [[ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" && -z "${QT_QPA_PLATFORM:-}" ]]; then
  echo "hilum: no display found; starting under Xvfb (set DISPLAY to use your screen)" >&2
  exec xvfb-run -a -s "-screen 0 1600x1000x24" "$here/.venv/bin/hilum" "$@"
fi
exec "$here/.venv/bin/hilum" "$@"
