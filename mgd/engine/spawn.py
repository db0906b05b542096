"""Spawned DDP workers (``--multiprocessing-distributed``) and the launcher that waits for them.

A spawned job ends with one line that names its root cause, whichever way it ends: a rank killed by a
signal (the OOM killer), a user error, a programming error (its traceback, once), a collective that waited
longer than --dist-timeout, or Ctrl-C ("interrupted", exit code 130). The other ranks' consequential errors
(gloo's "Connection closed by peer") are not shown. Each worker writes how it ended to a small report file;
the launcher reads them once every worker has ended and prints the verdict.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing.connection
import multiprocessing.resource_tracker
import multiprocessing.util
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional, Sequence, Set, Tuple

import torch.distributed as dist

from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USER, UserError, ignore_sigint, interruption, user_message

__all__ = ["run_spawned", "end_worker", "WORKER", "STOP_GRACE_S", "SETTLE_S"]

#: Seconds that spawned workers get to stop on their own after Ctrl-C or another rank's failure (a checkpoint
#: being written finishes first) before they are killed.
STOP_GRACE_S = 30.0
#: Seconds that the other workers get, after one failed, to end on their own (their consequential errors
#: arrive within this time) before they are asked to stop.
SETTLE_S = 2.0


# ---------------------------------------------------------------------------------------------- worker side

class _WorkerState:
    """Per-process state of a spawned worker (module-level, so ``worker_guard`` and ``_spawned`` share it)."""
    report_path: Optional[str] = None  # where the parent reads how this worker ended
    sigint_seen: bool = False          # a SIGINT arrived: whatever error follows is a consequence of it
    ending: bool = False               # the worker is reporting its end: SIGINTs no longer raise


WORKER = _WorkerState()


def _worker_sigint(signum: int, frame: Any) -> None:
    """Only the first SIGINT raises KeyboardInterrupt: a second Ctrl-C, or the parent's forwarded one,
    arriving while the worker stops (or writes a checkpoint) would otherwise end it with a traceback."""
    first = not WORKER.sigint_seen
    WORKER.sigint_seen = True
    if first and not WORKER.ending:
        raise KeyboardInterrupt


def _spawned(index: int, worker: Callable[[int, argparse.Namespace], None], args: argparse.Namespace,
             report_dir: str) -> None:
    """Entry point of a spawned worker: run ``worker`` and, if it fails, report how to the parent.

    The worker leads a session of its own (as torchrun's workers do), so that a terminal's Ctrl-C reaches the
    launcher only: the launcher forwards it to the workers, never to their DataLoader worker processes, which
    a SIGINT in the midst of their start-up would end with a traceback. The launcher started this process
    with SIGINT blocked (a mask that fork and exec keep), so that a Ctrl-C during its imports waited; ignoring
    it here discards one that came meanwhile, before it is unblocked. The file ``INDEX.started`` then tells
    the launcher that a SIGINT stops this worker cleanly (before, it kills it: there is nothing to save)."""
    WORKER.report_path = os.path.join(report_dir, f"{index}.json")
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, _worker_sigint)
    open(os.path.join(report_dir, f"{index}.started"), "w").close()
    try:
        try:
            worker(index, args)
        except BaseException as exc:
            WORKER.ending = True
            end_worker(exc)
    except KeyboardInterrupt:  # a SIGINT that arrived between the error and the line above
        WORKER.ending = True
        end_worker(KeyboardInterrupt())
    WORKER.ending = True


_DIST = re.compile(r"gloo|nccl|c10d|ProcessGroup|TCPStore|Connection (?:closed|reset) by peer|Broken pipe", re.I)
_TIMEOUT = re.compile(r"timed out|timeout", re.I)


def _chain(exc: BaseException) -> List[BaseException]:
    """The exception and its causes / contexts (DDP and DataLoader re-raise the backend's errors)."""
    seen: List[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _worker_outcome(exc: BaseException) -> Dict[str, Any]:
    """How a worker ended: ``kind`` (interrupted, user, timeout, peer, bug), the user's message, the
    traceback. A distributed error is a collective's timeout (a root cause: another rank is stuck) or a
    lost peer (a consequence of another rank's end, which the parent reports instead)."""
    if WORKER.sigint_seen or isinstance(exc, KeyboardInterrupt):
        return {"kind": "interrupted"}
    if isinstance(exc, UserError):
        return {"kind": "user", "message": user_message(exc)}
    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    dist_errors = [e for e in _chain(exc) if isinstance(e, getattr(dist, "DistError", ())) or _DIST.search(str(e))]
    if any(_TIMEOUT.search(str(e)) for e in dist_errors):
        return {"kind": "timeout", "trace": trace}
    return {"kind": "peer" if dist_errors else "bug", "trace": trace}


def end_worker(exc: BaseException) -> NoReturn:
    """Report how this worker ended and exit at once (no interpreter shutdown: destructors of a process
    group whose peer is gone can block). Without a parent to report to, print what the parent would.
    Whatever happens meanwhile (an exception from a signal handler), the process exits."""
    WORKER.ending = True
    code = EXIT_FAILED
    try:
        outcome = _worker_outcome(exc)
        code = {"interrupted": EXIT_INTERRUPTED, "user": EXIT_USER}.get(outcome["kind"], EXIT_FAILED)
        if WORKER.report_path is not None:
            with open(WORKER.report_path, "w") as f:
                json.dump(outcome, f)
        elif outcome["kind"] == "user":
            print(f"error: {outcome['message']}", file=sys.stderr)
        elif "trace" in outcome:
            print(outcome["trace"], end="", file=sys.stderr)
        _end_children()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _end_children() -> None:
    """What multiprocessing does at a normal exit, short of waiting for anyone: end the daemonic children (the
    DataLoader's workers, which would otherwise outlive this process for seconds, or fail to start with a
    traceback) and unlink the semaphores of their queues (else the resource tracker warns of "leaked semaphore
    objects" at the job's end). SIGCHLD first: the DataLoader's handler would raise on their deaths."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = [p for p in multiprocessing.active_children() if p.daemon]
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=5)
    multiprocessing.util._run_finalizers(0)


# ---------------------------------------------------------------------------------------------- parent side

@dataclass
class _Ended:
    """How one spawned process ended, as the parent saw it."""
    rank: int                  # global rank
    exitcode: int              # negative: killed by that signal
    order: int                 # 0 for the first process to end
    stopped: bool              # the parent asked it to stop (it is no root cause)
    report: Optional[Dict[str, Any]] = None


class _ParentSigint:
    """While the job runs, SIGINT only records when it came: the join loop then stops the workers and reports
    once, instead of a KeyboardInterrupt cutting through the loop (or a second one through the clean-up)."""

    def __init__(self) -> None:
        self.first_at: Optional[float] = None
        main = threading.current_thread() is threading.main_thread()  # no SIGINT reaches other threads
        self.previous: Any = signal.getsignal(signal.SIGINT) if main else None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.first_at is None:
            self.first_at = time.monotonic()

    @contextlib.contextmanager
    def children_start_with_it_blocked(self) -> Iterator[None]:
        """Processes started inside this block start with SIGINT blocked (a mask that fork and exec keep): a
        Ctrl-C during their imports waits, and the worker discards it (see ``_spawned``). The handler is
        installed first: a SIGINT sent to this process goes to any of its threads that does not block it
        (torch's OpenMP threads: the mask is per thread), and whichever thread takes it, the handler records
        it. Nothing inside may unblock SIGINT in this thread: the caller starts multiprocessing's resource
        tracker first, whose start would."""
        if self.previous is None:
            yield
            return
        signal.signal(signal.SIGINT, self._handle)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def restore(self) -> None:
        """Give SIGINT back (on success only: after a failure the process is about to exit, and a further
        Ctrl-C must not cut its report short)."""
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def run_spawned(worker: Callable[[int, argparse.Namespace], None], args: argparse.Namespace, nprocs: int) -> None:
    """Spawn the workers, wait for them, and end the job with one line if any of them failed."""
    import torch.multiprocessing as mp

    sigint = _ParentSigint()
    _quiet_resource_tracker()
    # started now, not by the first worker's start: starting it unblocks SIGINT (resource_tracker.ensure_running
    # blocks, then unblocks it around its spawn), and the workers started after it would not start blocked
    multiprocessing.resource_tracker.ensure_running()
    report_dir = tempfile.mkdtemp(prefix="mgd-launch-")  # removed in the finally below
    try:
        with sigint.children_start_with_it_blocked():
            context = mp.start_processes(_spawned, args=(worker, args, report_dir), nprocs=nprocs, join=False,
                                         start_method="spawn")

        def started(i: int) -> bool:
            return os.path.exists(os.path.join(report_dir, f"{i}.started"))

        ended, interrupted = _join(context.processes, started, sigint)
        _kill_leftovers(context.processes, started)
        for i, e in enumerate(ended):
            e.rank = args.node_rank * nprocs + i
            e.report = _read_report(os.path.join(report_dir, f"{i}.json"))
    finally:
        shutil.rmtree(report_dir, ignore_errors=True)
    verdict = _verdict(ended, interrupted, getattr(args, "dist_timeout", 30))
    if verdict is None:
        sigint.restore()
        return
    code, text = verdict
    ignore_sigint()  # ignored, not handled: Python's shutdown would restore the default handler, and die of it
    print(text, file=sys.stderr)
    sys.stderr.flush()
    sys.exit(code)


def _kill_leftovers(processes: Sequence[Any], started: Callable[[int], bool]) -> None:
    """Kill what is left of each worker's session: the DataLoader workers of a worker killed by a signal
    live on (one in the midst of its start-up does not notice its parent's end), holding the job's stderr
    open. A session outlives its leader while it has members, so its id is not reused meanwhile."""
    for i, process in enumerate(processes):
        if started(i):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _quiet_resource_tracker() -> None:
    """A worker killed by a signal leaves its DataLoader's semaphores to multiprocessing's resource tracker,
    which removes them and then warns "There appear to be 12 leaked semaphore objects", after the job's last
    line, as if that were the problem. The tracker, started before the workers, takes its warning filters
    from this process's -W options."""
    option = "ignore:resource_tracker:UserWarning"
    if option not in sys.warnoptions:
        sys.warnoptions.append(option)


def _read_report(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _join(processes: Sequence[Any], started: Callable[[int], bool],
          sigint: _ParentSigint) -> Tuple[List[_Ended], bool]:
    """Wait until every process has ended, stopping the rest after Ctrl-C or, SETTLE_S later, after the first
    failure (see :class:`_Stopper`). Returns how each ended (rank and report left for the caller) and whether
    Ctrl-C came before any failure."""
    alive = {p.sentinel: i for i, p in enumerate(processes)}
    ended: Dict[int, _Ended] = {}
    stopper = _Stopper(processes, started)
    failed_at: Optional[float] = None
    while alive:
        for sentinel in multiprocessing.connection.wait(list(alive), timeout=0.1):
            i = alive.pop(sentinel)
            processes[i].join()
            ended[i] = _Ended(rank=i, exitcode=processes[i].exitcode, order=len(ended), stopped=i in stopper.sent)
            if processes[i].exitcode != 0 and failed_at is None:
                failed_at = time.monotonic()
        settled = failed_at is not None and time.monotonic() - failed_at >= SETTLE_S
        stopper.step(list(alive.values()), sigint.first_at is not None or settled)
    interrupted = sigint.first_at is not None and (failed_at is None or sigint.first_at <= failed_at)
    return [ended[i] for i in range(len(processes))], interrupted


class _Stopper:
    """Stops the workers still running: SIGINT to those ``started`` (they stop where they are, a checkpoint
    being written finishes first), SIGKILL to those still importing (they ignore SIGINT and have nothing to
    save); STOP_GRACE_S later, SIGKILL to those still alive, with their DataLoader workers."""

    def __init__(self, processes: Sequence[Any], started: Callable[[int], bool]) -> None:
        self.processes, self.started = processes, started
        self.sent: Set[int] = set()  # the processes signalled: their ends are no root cause
        self.asked_at: Optional[float] = None
        self.killed = False

    def step(self, alive: List[int], stop: bool) -> None:
        if alive and stop and self.asked_at is None:
            running = [i for i in alive if self.started(i)]
            self.sent |= _signal_all(self.processes, running, signal.SIGINT)
            self.sent |= _signal_all(self.processes, [i for i in alive if i not in running], signal.SIGKILL)
            self.asked_at = time.monotonic()
        elif alive and self.asked_at is not None and not self.killed and \
                time.monotonic() - self.asked_at >= STOP_GRACE_S:
            self.sent |= _signal_all(self.processes, alive, signal.SIGKILL, group=True)
            self.killed = True


def _signal_all(processes: Sequence[Any], indices: Any, signum: int, group: bool = False) -> Set[int]:
    """Send ``signum`` to the listed processes still running (with ``group``, to the process group that each
    leads, its DataLoader workers included); returns their indices."""
    sent = set()
    for i in list(indices):
        pid = processes[i].pid
        try:
            if group and os.getpgid(pid) == pid:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
            sent.add(i)
        except ProcessLookupError:
            pass
    return sent


_NATIVE_CRASH = " (a crash in native code)"
#: Why a process usually receives a signal that ends it, for the job's last line.
_SIGNAL_WHY = {"SIGKILL": " (out of memory, or killed by hand)",
               "SIGTERM": " (terminated by hand or by a job scheduler)",
               "SIGABRT": " (a crash in native code, or a collective that timed out)",
               "SIGSEGV": _NATIVE_CRASH, "SIGBUS": _NATIVE_CRASH, "SIGFPE": _NATIVE_CRASH, "SIGILL": _NATIVE_CRASH}


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _cause(e: _Ended) -> Optional[int]:
    """How strongly an ended process explains the job's end (0: most), None if it ended well or because it
    was told to: a signal from outside, an exit without a report, a user error, a programming error, a
    collective's timeout, a SIGINT to that worker alone, a lost peer (a consequence, shown only when nothing
    else explains it)."""
    if e.exitcode == 0 or e.stopped:
        return None
    if e.exitcode < 0:
        return 0
    kind = (e.report or {}).get("kind")
    return {None: 1, "user": 2, "bug": 3, "timeout": 4, "interrupted": 5, "peer": 6}.get(kind, 1)


def _verdict(ended: Sequence[_Ended], interrupted: bool, dist_timeout: float) -> Optional[Tuple[int, str]]:
    """The job's exit code and its last words on stderr, or None when every process succeeded."""
    if interrupted:
        return interruption()
    causes = [(c, e.order, e) for e in ended for c in [_cause(e)] if c is not None]
    if not causes:
        return None
    _, _, root = min(causes, key=lambda t: t[:2])
    who = f"the process of rank {root.rank}"
    if root.exitcode < 0:
        name = _signal_name(-root.exitcode)
        return EXIT_FAILED, f"error: {who} was killed by {name}{_SIGNAL_WHY.get(name, '')}; the job stopped"
    kind = (root.report or {}).get("kind")
    if kind == "user":
        return EXIT_USER, f"error: {root.report['message']}"
    if kind == "interrupted":
        return interruption()
    if kind == "timeout":
        stuck = sorted(e.rank for e in ended if e.stopped)
        waited_for = (f"rank{'s' if len(stuck) > 1 else ''} {', '.join(map(str, stuck))}" if stuck
                      else "another process")
        return EXIT_FAILED, (f"error: {who} waited more than {dist_timeout:g} minutes (--dist-timeout) for "
                             f"{waited_for}; the job stopped")
    if kind in ("bug", "peer"):
        return EXIT_FAILED, f"{root.report['trace']}error: {who} failed with the error above; the job stopped"
    return EXIT_FAILED, f"error: {who} exited with code {root.exitcode}; the job stopped"
