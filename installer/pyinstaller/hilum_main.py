"""The frozen program's entry point (PyInstaller): ``hilum`` with every verb, and the workstation.

``freeze_support()`` first: the viewer's decoder pool and the archive's
batch workers start ``forkserver``/``spawn`` children, which in a frozen
program re-run this executable with multiprocessing's own arguments;
PyInstaller's multiprocessing runtime hook turns those into the child's
work here.  A file path where a verb would be (``hilum study.dcm``, what a
file manager runs) is handled by :func:`hilum.cli.main` itself.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from hilum.cli import main

    sys.exit(main())
