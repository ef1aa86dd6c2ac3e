"""Plugin entry point: Pulumi's Python language host runs `python provider/` for this package.

It serves ThrottledFanOut as the `sluice` package (see sluice_fanout/plugin.py). The package is
imported from this checkout, the same source the stack program and the tests run: the plugin is
used from a path or a git clone, and relying on `pip install ..` would make the result depend on
pip's working directory when Pulumi installs requirements.txt.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from sluice_fanout.plugin import COMPONENTS, PACKAGE_NAME, serve  # noqa: E402  # needs REPO_ROOT on the path

__all__ = ["COMPONENTS", "PACKAGE_NAME", "serve"]

if __name__ == "__main__":
    serve()
