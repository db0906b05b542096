"""The command-line convention of the training scripts: a user error is one line on stderr and exit code 2,
Ctrl-C is "interrupted" and exit code 130, anything else keeps its traceback and exits with 1."""
from __future__ import annotations

import re
import signal

__all__ = ["UserError", "user_message", "ignore_sigint", "EXIT_USER", "EXIT_FAILED", "EXIT_INTERRUPTED"]

#: Exit codes of the command line: a user error, a failed job, Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_USER, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


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
