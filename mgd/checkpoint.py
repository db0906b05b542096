"""Checkpoint helpers: atomic writes and safe loads (DESIGN: conventions)."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import stat
import tempfile
import threading
import time
import zipfile
from typing import Any, Iterator, List, Mapping

import torch

__all__ = ["atomic_save", "safe_load", "strip_prefix", "remove_stale_temporaries", "deferred_signals"]

logger = logging.getLogger("mgd")

#: atomic_save's temporary files: tempfile.mkstemp(prefix=".tmp-", suffix=".pth") names, 8 random characters.
_TMP_PREFIX, _TMP_SUFFIX = ".tmp-", ".pth"
_TMP_NAME = re.compile(r"\.tmp-[a-z0-9_]{8}\.pth")

#: The signals a user or a scheduler sends to stop a run; atomic_save defers them until the file is in place.
_DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: How a legacy (pre-1.6, or _use_new_zipfile_serialization=False) torch.save file starts: a pickle whose
#: first object is torch's magic number, as a LONG1 opcode (protocol 2 writes it at byte 2, later ones after a frame).
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_ZIP_MAGIC = b"PK\x03\x04"
_NOT_TORCH = "not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy torch.save file)"


# ------------------------------------------------------------------------------------------------ writing
#: Non-empty while a :func:`deferred_signals` block runs in the main thread (nested blocks defer nothing more).
_deferring: List[bool] = []


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM recorded, not acted on, while the block runs; then the previous handlers are
    restored and each signal that arrived is re-delivered to its previous handler (SIGINT's default raises
    KeyboardInterrupt, SIGTERM's default ends the process, an application's own handler runs as usual).

    Why: a Ctrl-C or a scheduler's SIGTERM in the middle of torch.save would otherwise abort the write (the
    checkpoint the user wanted is lost) and print a C++ stream error. Signal handlers can only be installed
    in the main thread; elsewhere the block simply runs. A handler installed outside Python (getsignal()
    is None) cannot be restored, so that signal is left alone. Nested blocks (an atomic write inside a set
    of writes) are part of the outermost one: the signal is acted on, and reported, once, after it.
    """
    if threading.current_thread() is not threading.main_thread() or _deferring:
        yield  # another thread, or inside an outer block, which defers (and reports) for both
        return
    received: List[int] = []
    previous = {}

    def record(signum: int, frame: Any) -> None:
        if signum not in received:
            received.append(signum)

    try:
        for sig in _DEFERRED_SIGNALS:
            if signal.getsignal(sig) is not None:
                previous[sig] = signal.signal(sig, record)
        _deferring.append(True)
        yield
    finally:
        _deferring.clear()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in received:
            logger.info("checkpoint written; now acting on signal %s received during the write",
                        signal.Signals(sig).name)
            signal.raise_signal(sig)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``.

    A crash or a full disk during the write leaves the previous file intact. In the main thread, SIGINT
    (Ctrl-C) and SIGTERM arriving during the write are deferred: the write and the rename finish, then the
    signal goes to the handler that was in place before (by default: KeyboardInterrupt for SIGINT, the end of
    the process for SIGTERM), so the checkpoint on disk is complete when the process stops. A process killed
    outright (SIGKILL) leaves a ``.tmp-*.pth`` file behind: see :func:`remove_stale_temporaries`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with deferred_signals():
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make checkpoints private, unlike torch.save's
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def remove_stale_temporaries(folder: str, min_age_s: float = 0.0) -> List[str]:
    """Delete the temporary files :func:`atomic_save` left in ``folder`` when a process was killed during a
    write (SIGKILL, power loss), and return their paths (sorted), for the caller's log.

    Only regular files named as atomic_save names them (``.tmp-XXXXXXXX.pth``) are touched. Call it at the
    start of a run, before anything of this run saves there; ``min_age_s`` spares files modified within that
    many seconds, for folders another live process may be writing to. A missing folder holds nothing.
    """
    if min_age_s < 0:
        raise ValueError(f"min_age_s must be >= 0 seconds, got {min_age_s}")
    if not os.path.exists(folder):
        return []
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"remove_stale_temporaries: folder {folder!r} is not a directory")
    now = time.time()
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not _TMP_NAME.fullmatch(name):
            continue
        try:
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < min_age_s:
                continue
            os.remove(path)
        except FileNotFoundError:  # removed meanwhile (its writer renamed it)
            continue
        removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------------ reading
def _format_problem(path: str) -> str:
    """Why ``path`` cannot be a torch.save file, judged from its bytes ('' when it may be one).

    torch.load's own errors for such files are misleading (a text file: "pop from empty list"; an empty
    one: "EOFError"; a truncated archive: a miniz error), so the format is checked first.
    """
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "empty file (0 bytes), " + _NOT_TORCH
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return "truncated or corrupt torch.save zip archive (its central directory is missing: " \
                   "an interrupted write or copy?)"
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            return f"corrupt zip archive ({exc})"
        if not any(name.endswith("data.pkl") for name in names):
            return "a zip archive without data.pkl, not a torch.save checkpoint"
        return ""
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head[:32]:
        return ""
    return _NOT_TORCH


def _load_problem(exc: BaseException, path: str) -> str:
    """One line that says why torch.load failed on a file that looked like a torch.save file."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "Weights only load failed" in first:
        return "not a PyTorch file, or it holds objects other than tensors and plain containers " \
               "(loaded with weights_only=True)"
    if isinstance(exc, EOFError) or first == "EOFError":
        return "truncated torch.save file (it ends early: an interrupted write or copy?)"
    with open(path, "rb") as f:
        is_zip = f.read(4) == _ZIP_MAGIC
    return f"corrupt torch.save {'zip archive' if is_zip else 'file'} ({first[:300]})"


def safe_load(path: str, map_location: Any = "cpu") -> Any:
    """torch.load with ``weights_only=True`` and errors that say which file and why, in one line.

    RuntimeError "cannot read checkpoint PATH: <reason>" for anything that is not a readable torch.save
    file (text, empty, truncated, random bytes, a plain pickle) or that holds objects other than tensors
    and plain containers; FileNotFoundError when there is no such file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    problem = _format_problem(path)
    if problem:
        raise RuntimeError(f"cannot read checkpoint {path}: {problem}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise RuntimeError(f"cannot read checkpoint {path}: {_load_problem(exc, path)}") from exc


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict:
    """Remove a DataParallel/DDP ``module.`` prefix from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}
