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
status=0
xvfb-run -a -s "-screen 0 1280x1024x24 -nolisten tcp" .venv/bin/python -m pytest "$@" || status=$?
# The archive, import and ingest tests once more on the index writer's other path: SQLAlchemy Core
# instead of the compiled statements (hilum.archive.sqlfast; the first run used the default, "fast").
HILUM_INDEX_WRITER=sqlalchemy xvfb-run -a -s "-screen 0 1280x1024x24 -nolisten tcp" .venv/bin/python -m pytest -q \
    tests/test_archive*.py tests/test_import*.py tests/test_check.py tests/test_orders.py tests/test_hl7.py || status=$?
exit $status
