"""Shared fixtures: CPU, one thread, deterministic seeds, small models."""
import os
import signal

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """Every test starts with the session's SIGINT and SIGTERM handlers: the scripts' error paths ignore SIGINT
    before they exit (a second Ctrl-C must not cut their report short), and a test that catches that exit
    would otherwise leave Ctrl-C ignored for every test after it."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def _release_output_dirs():
    """A script run in this process (its main, its check_output_dir) holds its --output-dir's run.lock until it
    ends: released after each test, as a script's process would at its exit."""
    yield
    from mgd.engine.rundir import release_output_dir
    release_output_dir()
