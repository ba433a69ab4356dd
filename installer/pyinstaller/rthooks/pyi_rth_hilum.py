"""Runtime hook of the frozen Hilum (runs before the program's own code).

* numba caches compiled functions next to their source by default; in an
  installed bundle that folder is read-only (``/opt/hilum``, Program Files),
  so ``NUMBA_CACHE_DIR`` points to the user's cache folder.  (Measured: for
  functions compiled from the frozen archive — ``hilum.render._reslice_jit`` —
  numba's own frozen-aware locator already picks the user-wide cache,
  ``~/.cache/numba``, keyed on the executable; this setting covers any numba
  code loaded from a file.  Neither writes into the install.)
* Qt finds its plugins (xcb, offscreen) through PyInstaller's own hook;
  nothing to set here.
"""

import os
import sys


def _user_cache() -> str:
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~\\AppData\\Local")
        return os.path.join(base, "Hilum", "Cache")
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/Hilum")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hilum")


if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(_user_cache(), "numba")
