"""`python -m sluice_fanout.cli`: the `sluice` command without its installed script."""

import sys

from sluice_fanout.cli import main

sys.exit(main())
