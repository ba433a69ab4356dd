#!/usr/bin/env bash
# Set up (first time only) and run Hilum's whole test suite: layer contracts,
# unit tests, protocol tests against real DCMTK/Orthanc/PostgreSQL on loopback,
# GUI tests under Xvfb.  The tests start the servers they need themselves.
# Extra arguments go to pytest (and then only that one run happens).
#
# Without arguments (CI): the whole suite on the default settings, then the
# tests of each fenced fast path once more on the library's own path
# (../shared/DESIGN.md, "Fast paths are fenced"):
#   - the DIMSE protocol tests on pynetdicom's own engine ([dimse] engine);
#   - the archive, import and ingest tests on SQLAlchemy Core instead of the
#     compiled statements ([archive] index_writer).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash installer/setup.sh
export TCP_NODELAY=1
xvfb=(xvfb-run -a -s "-screen 0 1280x1024x24 -nolisten tcp")
if (($#)); then
  exec "${xvfb[@]}" .venv/bin/python -m pytest "$@"
fi
status=0
"${xvfb[@]}" .venv/bin/python -m pytest || status=$?
HILUM_DIMSE_ENGINE=pynetdicom "${xvfb[@]}" .venv/bin/python -m pytest -q tests/test_dimse_*.py tests/test_node.py \
    tests/test_mwl.py tests/test_identity.py tests/test_store_contradictions.py tests/test_pir_outgoing.py || status=$?
HILUM_INDEX_WRITER=sqlalchemy "${xvfb[@]}" .venv/bin/python -m pytest -q tests/test_archive*.py tests/test_import*.py \
    tests/test_check.py tests/test_orders.py tests/test_hl7.py tests/test_storage_*.py tests/test_index_locking.py || status=$?
exit $status
