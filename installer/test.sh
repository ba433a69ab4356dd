#!/usr/bin/env bash
# Set up (first time only) and run Hilum's whole test suite: layer contracts,
# unit tests, protocol tests against real DCMTK/Orthanc/PostgreSQL on loopback,
# GUI tests under Xvfb.  The tests start the servers they need themselves.
# Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash installer/setup.sh
export TCP_NODELAY=1
xvfb=(xvfb-run -a -s "-screen 0 1280x1024x24 -nolisten tcp")
"${xvfb[@]}" .venv/bin/python -m pytest "$@"
# The DIMSE protocol tests once more on pynetdicom's own engine ([dimse] engine, hilum/dimse/settings.py).
HILUM_DIMSE_ENGINE=pynetdicom "${xvfb[@]}" .venv/bin/python -m pytest tests/test_dimse_*.py tests/test_node.py \
    tests/test_mwl.py
