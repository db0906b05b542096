"""``python -m mgd.inspect TEACHER STUDENT``: the stage table of :mod:`mgd.tools.stages` (this module is only its
command name)."""
from .tools.stages import main

if __name__ == "__main__":
    main()
