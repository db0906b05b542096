"""The command-line convention of the training scripts: a user error is one line on stderr and exit code 2,
Ctrl-C is "interrupted" and exit code 130, anything else keeps its traceback and exits with 1."""
from __future__ import annotations

import re
import signal

__all__ = ["UserError", "user_message", "ignore_sigint", "sigterm_stops_like_ctrl_c", "interruption",
           "EXIT_USER", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_TERMINATED"]

#: Exit codes of the command line: a user error, a failed job, Ctrl-C and SIGTERM (128 + the signal's number,
#: as a shell reports them).
EXIT_USER, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143
_terminated: list = []


def sigterm_stops_like_ctrl_c() -> None:
    """SIGTERM (a scheduler's, ``kill``'s) stops the job the way Ctrl-C does (the checkpoint being written
    finishes, the workers stop, one line is printed) instead of ending the process without a word; the line
    and the exit code then say SIGTERM (:func:`interruption`)."""
    def terminate(signum, frame):
        _terminated.append(signum)
        signal.raise_signal(signal.SIGINT)
    try:
        signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread
        pass


def interruption() -> tuple:
    """(exit code, last line) of a job stopped by Ctrl-C or by SIGTERM."""
    return (EXIT_TERMINATED, "terminated (SIGTERM)") if _terminated else (EXIT_INTERRUPTED, "interrupted")


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit code 2, no traceback."""


_WRAPPED = re.compile(r"\ACaught (?P<name>\w+) .*?\.\nOriginal Traceback \(most recent call last\):\n", re.S)


def user_message(exc: BaseException) -> str:
    """The user's one-line message, also when torch re-raised the error from a DataLoader worker process
    (``ExceptionWrapper.reraise`` builds a new exception of the same type whose text is "Caught UserError in
    DataLoader worker process 0." followed by the worker's whole traceback): its last line holds the message."""
    text = str(exc)
    while True:
        wrapped = _WRAPPED.match(text)
        last = None
        if wrapped:
            for last in re.finditer(rf"^(?:[\w.]+\.)?{wrapped['name']}: ", text, re.M):
                pass
        if last is None:
            return text
        text = text[last.end():].rstrip("\n")


def ignore_sigint() -> None:
    """SIGINT ignored from now on: a second Ctrl-C must not cut a report short with a traceback."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: no signal reaches this thread anyway
        pass
