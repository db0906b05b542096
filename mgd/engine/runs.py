"""Training scripts run as child processes, as the demos and benchmarks do: each with its own thread count
and log file, its per-epoch lines relayed to the console with the run's name."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import List

from .errors import UserError

__all__ = ["start_script", "wait_script"]


def start_script(name: str, script: str, argv: List[str], threads: int, log_path: str) -> subprocess.Popen:
    """Start ``python script argv`` with OMP_NUM_THREADS=threads; everything it prints goes to ``log_path``,
    and its epoch summaries and errors also to the console, prefixed with ``[name]``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, script] + [str(a) for a in argv], env=env, stdout=subprocess.PIPE,
                            stderr=log, text=True)

    def relay():
        with log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if " epoch " in line or "error" in line.lower():
                    print(f"[{name}] {line.rstrip()}", flush=True)
    proc.relay = threading.Thread(target=relay, daemon=True)
    proc.relay.start()
    return proc


def wait_script(proc: subprocess.Popen, name: str, log_path: str) -> None:
    """Wait for a run of :func:`start_script`; a UserError pointing at its log when it failed."""
    proc.wait()
    proc.relay.join()
    if proc.returncode != 0:
        raise UserError(f"{name} failed (exit {proc.returncode}); see {log_path}")
