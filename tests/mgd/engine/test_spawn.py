"""mgd.engine.spawn: a spawned 2-process gloo job ends with one line naming its root cause (a killed rank, a
user error, a programming error, a collective's timeout) or "interrupted" after Ctrl-C, within a bounded time."""
import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from mgd.engine.spawn import _Ended, _verdict
from scripts import script_env

JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch_job.py")


def ended(rank, exitcode, order, kind=None, stopped=False, **report):
    return _Ended(rank=rank, exitcode=exitcode, order=order, stopped=stopped,
                  report=None if kind is None else dict(kind=kind, **report))


LOST = dict(trace="RuntimeError: [gloo/pair.cc] Connection closed by peer\n")


@pytest.mark.parametrize("outcomes, expected", [
    # the killed rank, not the survivor that lost its connection to it (even though the survivor ended first)
    ([ended(0, 1, 0, "peer", **LOST), ended(1, -9, 1)],
     (1, "error: the process of rank 1 was killed by SIGKILL (out of memory, or killed by hand); the job stopped")),
    ([ended(0, 1, 1, "peer", **LOST), ended(1, 2, 0, "user", message="no images")], (2, "error: no images")),
    ([ended(0, 1, 1, "peer", **LOST), ended(1, 1, 0, "bug", trace="Traceback ...\nKeyError: 'x'\n")],
     (1, "Traceback ...\nKeyError: 'x'\nerror: the process of rank 1 failed with the error above; the job stopped")),
    # the rank that waited, naming the one the launcher had to stop; SIGINT'd or killed ranks are no cause
    ([ended(0, 1, 0, "timeout", trace="..."), ended(1, 130, 1, "interrupted", stopped=True),
      ended(2, -9, 2, stopped=True)],
     (1, "error: the process of rank 0 waited more than 0.05 minutes (--dist-timeout) for ranks 1, 2; the job "
         "stopped")),
    ([ended(0, 1, 0, "timeout", trace="..."), ended(1, 1, 1, "peer", **LOST)],
     (1, "error: the process of rank 0 waited more than 0.05 minutes (--dist-timeout) for another process; the "
         "job stopped")),
    ([ended(0, 0, 0), ended(1, 3, 1)], (1, "error: the process of rank 1 exited with code 3; the job stopped")),
    ([ended(0, 130, 0, "interrupted"), ended(1, 1, 1, "peer", **LOST)], (130, "interrupted")),
    ([ended(0, 0, 0), ended(1, 0, 1)], None),
])
def test_the_verdict_names_the_root_cause_not_the_consequences(outcomes, expected):
    assert _verdict(outcomes, interrupted=False, dist_timeout=0.05) == expected


def test_ctrl_c_before_any_failure_is_interrupted_whatever_the_workers_report():
    outcomes = [ended(0, 1, 0, "peer", **LOST), ended(1, -9, 1, stopped=True)]
    assert _verdict(outcomes, interrupted=True, dist_timeout=30) == (130, "interrupted")


def run_job(tmp_path, scenario, *flags, signals=0, to="group", when="ready"):
    """Run launch_job.py's 2-process gloo job and return its exit code, its stderr and the seconds from its
    start (or from the first SIGINT) to its end. With ``signals``, send that many SIGINTs, 0.3 s apart, to
    its process group (``to="group"``, as a terminal's Ctrl-C does), to the launcher alone ("launcher") or to
    rank 1's worker ("rank1"), once both ranks train (``when="ready"``) or once the launcher has started its
    workers, which are still importing ("start")."""
    proc = subprocess.Popen([sys.executable, JOB, scenario, str(tmp_path), "--multiprocessing-distributed",
                             "--nproc-per-node", "2", "--dist-backend", "gloo", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    start = time.monotonic()
    try:
        if signals:
            while not (all((tmp_path / f"ready-{r}").exists() for r in (0, 1)) if when == "ready"
                       else len(workers_of(proc.pid)) == 2):
                assert proc.poll() is None and time.monotonic() - start < 50, proc.communicate()[1]
                time.sleep(0.01)
            start = time.monotonic()
            for _ in range(signals):
                if to == "rank1":
                    os.kill(int((tmp_path / "ready-1").read_text()), signal.SIGINT)
                else:
                    (os.killpg if to == "group" else os.kill)(proc.pid, signal.SIGINT)
                time.sleep(0.3)
        _, err = proc.communicate(timeout=55)
    finally:
        if proc.poll() is None:  # the workers lead sessions of their own: the launcher's group misses them
            for pid in workers_of(proc.pid) + [proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
    return proc.returncode, err, time.monotonic() - start


def workers_of(pid):
    """The launcher's worker processes (its other child is multiprocessing's resource tracker)."""
    children = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            children += f.read().split()
    workers = []
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline") as f:
                if "spawn_main" in f.read():
                    workers.append(int(child))
        except FileNotFoundError:
            pass
    return workers


@pytest.mark.parametrize("scenario", ["user", "loader-user"])
def test_a_user_error_in_a_spawned_worker_is_one_line_and_exit_code_2(tmp_path, scenario):
    """Raised in the worker or in its DataLoader's worker process; rank 0's lost connection stays silent,
    and so does the resource tracker (the DataLoader's semaphores are released)."""
    code, err, seconds = run_job(tmp_path, scenario)
    assert (code, err) == (2, "error: rank 1 found no images\n") and seconds < 45


def test_a_killed_worker_is_named_with_its_signal_and_exit_code_1(tmp_path):
    code, err, seconds = run_job(tmp_path, "kill")
    assert (code, err) == (1, "error: the process of rank 1 was killed by SIGKILL (out of memory, or killed by "
                              "hand); the job stopped\n")
    assert seconds < 45


def test_a_programming_error_in_a_worker_shows_its_traceback_once_then_names_the_rank(tmp_path):
    code, err, seconds = run_job(tmp_path, "bug")
    assert code == 1 and err.count("Traceback") == 1 and err.startswith("Traceback (most recent call last):")
    assert err.endswith("KeyError: 'missing key'\nerror: the process of rank 1 failed with the error above; the "
                        "job stopped\n")
    assert "Connection closed" not in err and seconds < 45


def test_a_frozen_worker_stops_the_job_after_dist_timeout(tmp_path):
    """Rank 1 sleeps for two minutes before an all-reduce; --dist-timeout 0.1 (6 s) ends the job."""
    code, err, seconds = run_job(tmp_path, "freeze", "--dist-timeout", "0.1")
    assert (code, err) == (1, "error: the process of rank 0 waited more than 0.1 minutes (--dist-timeout) for "
                              "rank 1; the job stopped\n")
    assert seconds < 45


@pytest.mark.parametrize("scenario, to, when", [("train", "group", "ready"), ("train", "launcher", "ready"),
                                                ("train-loader", "group", "ready"), ("train", "group", "start")])
def test_ctrl_c_stops_a_ddp_job_with_one_word_and_exit_code_130(tmp_path, scenario, to, when):
    """Ranks in all-reduces (the one interrupted first closes its connection under the other), reading a
    DataLoader with worker processes, or still importing torch."""
    code, err, seconds = run_job(tmp_path, scenario, signals=1, to=to, when=when)
    assert (code, err) == (130, "interrupted\n") and seconds < 10


def test_a_ctrl_c_while_the_workers_start_is_not_lost(tmp_path):
    """Nothing (not multiprocessing's resource tracker starting with the first worker) unblocks SIGINT in the
    thread that starts the workers: the SIGINT waits for the launcher's handler; the job would otherwise
    train on."""
    code, err, seconds = run_job(tmp_path, "train", "--sigint-while-starting")
    assert (code, err) == (130, "interrupted\n") and seconds < 45


RECORDS_A_SIGINT_TAKEN_BY_ANOTHER_THREAD = """
import os, signal, threading, time
from mgd.engine.spawn import _ParentSigint
threading.Thread(target=time.sleep, args=(2,), daemon=True).start()  # as torch's OpenMP threads: not blocking it
sigint = _ParentSigint()
with sigint.children_start_with_it_blocked():
    os.kill(os.getpid(), signal.SIGINT)  # the main thread blocks it: the other thread takes it
    time.sleep(0.3)
time.sleep(0.1)
print(sigint.first_at is not None)
"""


def test_a_ctrl_c_that_another_thread_of_the_launcher_takes_while_the_workers_start_is_recorded():
    """The mask is per thread: a SIGINT sent to the process goes to a thread that does not block it, and the
    launcher's handler (not an ignored disposition) must be what it finds there."""
    out = subprocess.run([sys.executable, "-c", RECORDS_A_SIGINT_TAKEN_BY_ANOTHER_THREAD], capture_output=True,
                         text=True, timeout=60, env=script_env())
    assert (out.returncode, out.stdout) == (0, "True\n"), out.stderr


@pytest.mark.parametrize("to", ["group", "launcher", "rank1"])
def test_a_second_ctrl_c_while_workers_save_is_silent_and_the_saves_finish(tmp_path, to):
    """Each worker takes 1 s to 'save' after its first SIGINT; the second arrives 0.3 s into it. Sent to
    rank 1 alone, the launcher stops rank 0 (which saves too) and reports the interruption."""
    code, err, seconds = run_job(tmp_path, "save", signals=2, to=to)
    assert (code, err) == (130, "interrupted\n") and seconds < 10
    assert (tmp_path / "saved-0").exists() and (tmp_path / "saved-1").exists()


def test_workers_that_ignore_ctrl_c_are_killed_after_the_grace_period(tmp_path):
    code, err, seconds = run_job(tmp_path, "deaf", "--stop-grace", "2", signals=1)
    assert (code, err) == (130, "interrupted\n") and 2 <= seconds < 10
