"""One training run of a trial: the script as a child process (its own process group) into its own folder, its
``log.jsonl`` read while it runs (one value of the metric per epoch, handed to a callback that may stop the
run: Optuna's pruning), and a small record of the finished run beside the folder, so a resumed sweep reuses it
instead of training it again. A lock file beside the folder, held by the sweep and inherited by the child, keeps
any two workers (and an orphaned child of a killed sweep) out of one folder at a time."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from .errors import SweepError

__all__ = ["RunResult", "run_training", "finished_run", "metric_of", "error_line", "last_error", "alive", "stop_process",
           "stop_group", "python_command", "RUN_LOCK"]

#: how often a running trial's log is read (seconds)
POLL_SECONDS = 0.2
#: beside each run folder: held while a run trains into it
RUN_LOCK = ".lock"
#: exit codes of a script stopped by Ctrl-C or SIGTERM (the engine's convention): interrupted, not failed
STOPPED_CODES = (130, 143, -2, -15)


@dataclass
class RunResult:
    """What one run ended with: ``state`` is ``complete``, ``reused`` (finished earlier), ``pruned``, ``failed``
    or ``interrupted``."""
    state: str
    values: List[float] = field(default_factory=list)  # the metric after each epoch
    error: str = ""
    returncode: Optional[int] = None
    seconds: float = 0.0
    key: Optional[str] = None  # the metric's key in the epoch records

    @property
    def last(self) -> float:
        return self.values[-1] if self.values else float("nan")

    @property
    def best(self) -> float:
        finite = [v for v in self.values if v == v]
        return max(finite) if finite else float("nan")


def metric_of(record: Dict, metric: str) -> Optional[str]:
    """The metric's key in an epoch record: ``metric`` itself, or with ``auto`` the key ``k`` the script
    marks as its score by also writing ``best_k`` (cls: top1, seg: miou)."""
    if metric != "auto":
        return metric if metric in record else None
    for key in record:
        if key.startswith("best_") and key[5:] in record:
            return key[5:]
    return None


_ERROR = re.compile(r"[\w.]*error:", re.I)


def last_error(text: str) -> str:
    """The ``error: ...`` line of a script's output (the scripts' one-line convention) or a traceback's last
    ``SomeError: ...`` line, whole; else its last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        found = _ERROR.search(line)
        if found:
            return line[found.start():]
    return lines[-1] if lines else ""


def error_line(output_path: str) -> str:
    """:func:`last_error` of a run's output file ("" when it cannot be read)."""
    try:
        with open(output_path, errors="replace") as f:
            return last_error(f.read())
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except OSError:  # gone already
        pass


def stop_group(pid: int, grace: float = 30.0) -> None:
    """Stop the run whose process group ``pid`` leads and that is not this process's child (an orphan of a
    killed sweep): SIGTERM to the group (the run and its DataLoader workers or spawned ranks; the scripts stop
    as on Ctrl-C, the checkpoint being written finishes), SIGKILL after ``grace`` seconds; returns when it is
    gone."""
    _signal_group(pid, signal.SIGTERM)
    end = time.time() + grace
    while alive(pid) and time.time() < end:
        time.sleep(0.1)
    if alive(pid):
        _signal_group(pid, signal.SIGKILL)


def stop_process(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """The same for a child started by :func:`run_training`; returns when it has been waited for."""
    if proc.poll() is not None:
        return
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()


def _record_path(run_dir: str) -> str:
    return run_dir + ".json"


def finished_run(run_dir: str, argv: List[str]) -> Optional[RunResult]:
    """The result of an earlier run of exactly ``argv`` into ``run_dir`` that finished, or None."""
    try:
        with open(_record_path(run_dir)) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    if saved.get("argv") != argv or saved.get("state") != "complete":
        return None
    return RunResult("complete", [float("nan") if v is None else v for v in saved["values"]],
                     seconds=saved.get("seconds", 0.0), returncode=0, key=saved.get("key"))


def _save_record(run_dir: str, argv: List[str], result: RunResult) -> None:
    tmp = _record_path(run_dir) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"argv": argv, "state": result.state, "seconds": round(result.seconds, 1), "key": result.key,
                   "values": [None if v != v else v for v in result.values]}, f)
    os.replace(tmp, _record_path(run_dir))


def _new_records(path: str, offset: int):
    """(records, new offset) of the complete lines appended to ``path`` since ``offset``."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records, offset + end


def _lock_run_dir(run_dir: str, stop: threading.Event) -> "int | None":
    """An exclusive lock on ``run_dir``'s lock file (waiting while another worker or an orphaned run holds it);
    its file descriptor, or None when ``stop`` was set while waiting."""
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    fd = os.open(run_dir + RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if stop.wait(1.0):
                os.close(fd)
                return None


def run_training(argv: List[str], run_dir: str, metric: str, threads: int,
                 on_epoch: Callable[[str, float], bool], stop: threading.Event,
                 on_start: Callable[[int], None] = lambda pid: None) -> RunResult:
    """Run ``argv`` (a whole command line whose output folder is ``run_dir``) to its end, or reuse the record of
    the same run that finished. After each epoch record of ``run_dir/log.jsonl``, ``on_epoch(key, value)`` says
    whether to go on (False: pruned, the run is stopped). ``stop`` set (the sweep was interrupted) stops it too.
    A run that finished is recorded beside ``run_dir``; an unfinished ``run_dir`` of an earlier attempt is
    removed first (the folder is the sweep's). The child never outlives this call unless the sweep is killed."""
    fd = _lock_run_dir(run_dir, stop)
    if fd is None:
        return RunResult("interrupted", error="interrupted")
    try:
        reused = finished_run(run_dir, argv)  # e.g. a TPE point that another worker has just trained
        if reused is not None:
            reused.state = "reused"
            return reused
        return _train(argv, run_dir, metric, threads, on_epoch, stop, on_start, fd)
    finally:
        os.close(fd)


def _train(argv, run_dir, metric, threads, on_epoch, stop, on_start, lock_fd) -> RunResult:
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    output_path = run_dir + ".out"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    begin = time.time()
    with open(output_path, "w") as out:
        try:  # its own session: a Ctrl-C at the terminal reaches the sweep, which stops the run in order; the
            # lock descriptor is inherited, so an orphaned run keeps its folder locked until it ends
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                    start_new_session=True, pass_fds=(lock_fd,))
        except OSError as exc:
            raise SweepError(f"cannot run {argv[0]}: {exc.strerror}") from None
    try:
        on_start(proc.pid)
        return _follow(proc, argv, run_dir, output_path, metric, on_epoch, stop, begin)
    finally:
        stop_process(proc)


def _follow(proc, argv, run_dir, output_path, metric, on_epoch, stop, begin) -> RunResult:
    log_path = os.path.join(run_dir, "log.jsonl")
    offset, values, key, state = 0, [], None, None
    while True:
        finished = proc.poll() is not None
        records, offset = _new_records(log_path, offset)
        for record in records:
            if "epoch" not in record:
                continue
            key = key or metric_of(record, metric)
            if key is None:
                stop_process(proc)
                return RunResult("failed", values, f"error: the epoch records of {log_path} hold no "
                                 + ("score (a best_<metric> key): give --metric" if metric == "auto"
                                    else f"{metric!r}: give one of their keys as --metric"),
                                 proc.returncode, time.time() - begin)
            value = record.get(key)
            values.append(float("nan") if value is None else float(value))
            if state is None and not on_epoch(key, values[-1]):
                state = "pruned"
                stop_process(proc)
        if state is None and stop.is_set():
            state = "interrupted"
            stop_process(proc)
        if finished or state is not None:
            break
        time.sleep(POLL_SECONDS)
    proc.wait()
    seconds = time.time() - begin
    if state is None and proc.returncode in STOPPED_CODES:  # stopped from outside the sweep
        state = "interrupted"
    if state is not None:
        return RunResult(state, values, "interrupted" if state == "interrupted" else "", proc.returncode, seconds,
                         key)
    if proc.returncode != 0:
        return RunResult("failed", values, error_line(output_path) or f"exit {proc.returncode}", proc.returncode,
                         seconds, key)
    if not values:
        return RunResult("failed", values, f"error: the run wrote no epoch record to {log_path}", 0, seconds)
    result = RunResult("complete", values, returncode=0, seconds=seconds, key=key)
    _save_record(run_dir, argv, result)
    return result


def python_command(argv: List[str]) -> List[str]:
    """``python`` at the head of a command means this interpreter (the sweep's virtual environment)."""
    if argv and argv[0] in ("python", "python3"):
        return [sys.executable] + argv[1:]
    return list(argv)
