"""The frozen program's entry point (PyInstaller): ``hilum`` with every verb, and the workstation.

``freeze_support()`` first: the viewer's decoder pool and the archive's
batch workers start ``forkserver``/``spawn`` children, which in a frozen
program re-run this executable with multiprocessing's own arguments;
PyInstaller's multiprocessing runtime hook turns those into the child's
work here.  A file path where a verb would be (``hilum study.dcm``, what a
file manager runs) is handled by :func:`hilum.cli.main` itself.

Support: ``HILUM_BUNDLE_RUN=script.py hilum`` runs a Python script with the
bundle's own Python and libraries instead of the program (a frozen program
has no ``python -c``); the bundle's tests use it to look inside, and support
can use it to diagnose an installation.  It runs as the user who starts it,
with nothing more than that user can already do.
"""

import multiprocessing
import os
import runpy
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    script = os.environ.pop("HILUM_BUNDLE_RUN", "")
    if script:
        sys.argv = [script, *sys.argv[1:]]
        runpy.run_path(script, run_name="__main__")
        sys.exit(0)
    from hilum.cli import main

    sys.exit(main())
