import sys

from hilum.cli import main

sys.exit(main())
