"""`python -m localcloud`: the embedded AWS's command line (localcloud/cli.py)."""

import sys

from localcloud.cli import main

if __name__ == "__main__":
    sys.exit(main())
