"""``python -m mgd.plot RUN_DIR [--out DIR]``: the matching pictures of :mod:`mgd.tools.plot` (this module is only
its command name, and keeps that module's names importable from here)."""
import sys

from .tools.plot import *  # noqa: F401,F403
from .tools.plot import main

if __name__ == "__main__":
    sys.exit(main())
