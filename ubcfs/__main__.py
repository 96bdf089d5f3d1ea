"""``python -m ubcfs``: the same as the ``ubcfs`` console script."""

import sys

from ubcfs.cli import main

if __name__ == "__main__":
    sys.exit(main())
