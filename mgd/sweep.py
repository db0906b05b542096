"""``python -m mgd.sweep SWEEP_DIR [space] -- COMMAND...``: the hyperparameter search of :mod:`mgd.tools.sweep`
(this module is only its command name)."""
import sys

from .tools.sweep import SweepError, main

__all__ = ["main", "SweepError"]

if __name__ == "__main__":
    sys.exit(main())
