"""Running the project's command-line scripts from tests, one thread each."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_env(path=()):
    """The environment of a script run from a test: one thread, the repository (and ``path``) importable."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, *map(str, path)]))


def run_script(script, *argv, check=True, timeout=600, path=()):
    """Run ``python <ROOT>/<script> argv...`` (``path``: more folders for its PYTHONPATH); on failure (with check)
    show the end of its output."""
    env = script_env(path)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, argv)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc
