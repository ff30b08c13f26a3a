"""`python -m micd ...` is the same as the `micd` console script."""

import sys

from micd.cli import main

if __name__ == "__main__":
    sys.exit(main())
