"""``python -m mgd.inspect TEACHER STUDENT``: the stage table of :mod:`mgd.tools.stages` (this module is only its
command name, and keeps that module's names importable from here)."""
from .tools.stages import *  # noqa: F401,F403
from .tools.stages import main

if __name__ == "__main__":
    main()
