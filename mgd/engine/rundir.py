"""The output folder of a run: checked before any work starts, never silently overwritten, and never given a
checkpoint of a model that diverged.

A folder that holds a previous run's checkpoints is only written into when the user asks: ``--resume`` of
one of its checkpoints (the run continues), or ``--overwrite`` (the previous run's files are moved into a
``previous-<time>`` folder first, so the folder never mixes two runs and nothing is deleted). Everything
here raises :class:`~mgd.engine.errors.UserError`, which the scripts turn into one line and exit code 2.
"""
from __future__ import annotations

import atexit
import errno
import fnmatch
import json
import logging
import math
import os
import socket
import tempfile
import time
from typing import Iterable, List, Mapping, Optional, Sequence

import torch

from .. import checkpoint
from .. import distributed as mdist
from .errors import UserError

__all__ = ["previous_checkpoints", "check_output_dir", "start_output_dir", "Diverged", "LOCK_NAME", "lock_output_dir",
           "release_output_dir", "out_of_space", "no_space_error", "first_non_finite", "refuse_non_finite",
           "last_good_checkpoint"]

logger = logging.getLogger("mgd.engine")

#: What :func:`mgd.engine.train.prepare_if_due` writes (``<prepare_name>_last.pth``): moved aside with a
#: previous run, but not by itself a previous run (a run may stop before its first checkpoint).
PREPARE_ARTIFACTS = ("*_last.pth",)

#: The file a running job holds in its --output-dir (its host, process id and start), so that a second job
#: started into the same folder is refused instead of both writing there.
LOCK_NAME = "run.lock"
#: A lock file that holds nothing readable and is older than this (seconds) was left by a killed start.
_UNREADABLE_LOCK_AGE = 30.0
_held: List[str] = []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _stale(path: str) -> Optional[str]:
    """Why the lock at ``path`` is stale (its process is gone on this host, or it is unreadable and old), or
    None while it may still be held; a lock of another host is never taken as stale (its process cannot be
    asked), the error says how to remove it."""
    try:
        with open(path) as f:
            owner = json.load(f)
        host, pid = owner["host"], int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        age = time.time() - os.path.getmtime(path) if os.path.exists(path) else math.inf
        return "it is unreadable" if age > _UNREADABLE_LOCK_AGE else None
    if host == socket.gethostname() and not _alive(pid):
        return f"its process {pid} is gone"
    return None


def lock_output_dir(output_dir: str, flag: str = "--output-dir") -> None:
    """Hold ``output_dir``/run.lock for this process's lifetime (released at exit, or by
    :func:`release_output_dir`): a second job started into the same folder gets a UserError naming the job
    that holds it. A lock left by a killed job (its process gone on this host) is taken over with a warning;
    a lock of a job on another host is refused until it ends or the file is deleted. Re-entrant in a process."""
    path = os.path.join(output_dir, LOCK_NAME)
    if path in _held:
        return
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            why = _stale(path)
            if why is None or attempt:
                try:
                    with open(path) as f:
                        held = json.load(f)
                    by = f"process {held['pid']} on {held['host']}, started {held['started']}"
                except (OSError, ValueError, KeyError, TypeError):
                    by = "a job that is starting"
                raise UserError(f"{flag} {output_dir} is in use by another run ({by}): wait for it, or use "
                                f"another {flag} (if that run is gone, delete {path})") from None
            logger.warning("taking over %s: %s (a run that was killed)", path, why)
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        _held.append(path)
        if len(_held) == 1:
            atexit.register(release_output_dir)
        return


def release_output_dir() -> None:
    """Remove the locks this process holds (:func:`lock_output_dir`)."""
    while _held:
        path = _held.pop()
        try:
            os.remove(path)
        except OSError:
            pass


def previous_checkpoints(output_dir: str, names: Sequence[str]) -> List[str]:
    """The files a previous run of this script left in ``output_dir``: those matching the ``names`` patterns
    the script writes (``last.pth``, ``checkpoint_*.pth.tar``, ...); sorted, [] if there is no folder."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir)
                  if any(fnmatch.fnmatchcase(name, pattern) for pattern in names)
                  and os.path.isfile(os.path.join(output_dir, name)))


def _inside(path: str, folder: str) -> bool:
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(folder)


def check_output_dir(output_dir: str, names: Sequence[str], resume: str = "", overwrite: bool = False,
                     inputs: Optional[Mapping[str, str]] = None, rank: int = -1, flag: str = "--output-dir") -> None:
    """Fail early (in the launching process, before any worker starts) when ``output_dir`` cannot be written,
    is in use by another run, or holds a previous run (files matching ``names``) that this run would replace
    without being asked. The job's first process (``rank``: --rank, the process's or the node's, -1 or 0; and
    rank 0 under torchrun) holds the folder's run.lock from now until it ends (:func:`lock_output_dir`).
    ``flag``: how the messages name the folder (d2: OUTPUT_DIR).

    A resumed run may write into its own checkpoint's folder; a fresh run into a folder with a previous run
    needs ``overwrite``, which moves that run aside (:func:`start_output_dir`) and so must not move a file
    this run reads (``inputs``: {its option: path}).
    """
    lock = rank <= 0 and os.environ.get("RANK", "0") == "0"
    if not output_dir:
        raise UserError(f"{flag} is empty: name a folder")
    probe = output_dir
    while probe and not os.path.exists(probe):  # the nearest existing ancestor must be a folder
        parent = os.path.dirname(probe)
        probe = parent if parent != probe else ""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"{flag} {output_dir} is a file, not a folder")
    if probe and not os.path.isdir(probe):
        raise UserError(f"{flag} {output_dir}: {probe} is a file, not a folder")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as exc:
        raise UserError(f"{flag} {output_dir} is not writable: {exc.strerror or exc}") from exc
    if lock:
        lock_output_dir(output_dir, flag)  # before the look for a previous run: two starts cannot both find none
    found = previous_checkpoints(output_dir, names)
    if not found or (resume and _inside(resume, output_dir)):
        return
    if overwrite:
        moved = {os.path.realpath(os.path.join(output_dir, name)) for name in found}
        for option, path in (inputs or {}).items():
            if path and os.path.realpath(path) in moved:
                raise UserError(f"--overwrite would move {path} aside, but this run reads it ({option}): copy it "
                                f"out of {flag} first")
        return
    last = next((n for n in found if "last" in n), found[0])
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    raise UserError(f"{output_dir} holds a previous run ({shown}): pass --resume "
                    f"{os.path.join(output_dir, last)} to continue it, --overwrite to start afresh (the previous "
                    f"run is moved to a previous-<time> folder), or another {flag}")


def start_output_dir(output_dir: str, names: Sequence[str], resume: bool, rank: int, overwrite: bool = False,
                     companions: Sequence[str] = ()) -> None:
    """Prepare the folder on rank 0: delete the temporaries of writes that a killed process left; on a fresh
    run move an earlier ``log.jsonl`` aside (``log.<time>.jsonl``) so that one log never mixes two runs (a
    resumed run appends to its log), and with ``overwrite`` move the previous run's files (``names``, and the
    ``companions`` patterns that belong to it: d2's log.txt and metrics) and its log into ``previous-<time>/``:
    nothing is deleted, and the folder never mixes two runs."""
    if rank != 0:
        return
    os.makedirs(output_dir, exist_ok=True)
    for path in checkpoint.remove_stale_temporaries(output_dir):
        logger.info("removed %s, left by a write that was killed", path)
    if resume:
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    previous = previous_checkpoints(output_dir, names) if overwrite else []
    log = os.path.join(output_dir, "log.jsonl")
    if previous:
        aside = os.path.join(output_dir, f"previous-{stamp}")
        os.makedirs(aside, exist_ok=True)
        artifacts = previous_checkpoints(output_dir, (*PREPARE_ARTIFACTS, *companions))  # e.g. the last matching
        for name in previous + artifacts + (["log.jsonl"] if os.path.isfile(log) else []):
            os.replace(os.path.join(output_dir, name), os.path.join(aside, name))
        logger.info("--overwrite: the previous run's %s moved to %s", ", ".join(previous), aside)
    elif os.path.isfile(log):
        os.replace(log, os.path.join(output_dir, f"log.{stamp}.jsonl"))


def out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a full disk or an exhausted quota: torch.save reports
    one as a RuntimeError of its stream writer, raised from the OSError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def no_space_error(output_dir: str, epoch: int, weights: Mapping[str, Mapping[str, torch.Tensor]],
                   first: bool = False) -> UserError:
    """The one line for a save that found the disk full: what was kept, and how much an epoch's files need
    (``first``: the run's first save, so nothing of it is on disk)."""
    size = sum(t.numel() * t.element_size() for tensors in weights.values() for t in tensors.values()
               if isinstance(t, torch.Tensor))
    need = f"about {5 * size / 2 ** 20:.1f} MB" if size else "the size of the previous epoch's files"
    kept = ("no checkpoint of this run is on disk yet" if first else
            "the checkpoints of the epoch before are kept as they were")
    return UserError(f"no space left in {output_dir} to save epoch {epoch}: {kept} (each file is written to a "
                     f"temporary file first, and the temporary was removed); an epoch's checkpoints need {need} "
                     "(last.pth and best.pth: the weights and the optimizer's state each; student.pth: the "
                     "weights): free some space or use another --output-dir" + ("" if first else ", then --resume"))


class Diverged(UserError):
    """Training produced a non-finite loss or non-finite weights: the run stops and nothing is saved."""


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            return name
    return None


def last_good_checkpoint(output_dir: str, names: Iterable[str] = ("last.pth",), resumed_from: str = "") -> str:
    """Where a diverged run can be resumed from, as the end of its error message: this run's last checkpoint,
    else the checkpoint it was resumed from."""
    for name in names:
        path = os.path.join(output_dir, name)
        if os.path.isfile(path):
            return f"the last good checkpoint is {path}"
    if resumed_from:
        return f"the last good checkpoint is {resumed_from}"
    return f"no checkpoint was written to {output_dir}"


def refuse_non_finite(parts: Mapping[str, Mapping[str, torch.Tensor]], epoch: int, output_dir: str,
                      last_names: Iterable[str] = ("last.pth",), resumed_from: str = "", **metrics: float) -> None:
    """Raise :class:`Diverged` before a save when a weight or buffer of one of ``parts`` ({"the student":
    its state dict, ...}) or one of ``metrics`` (such as the validation loss) is not finite: a checkpoint of a
    diverged model would replace the last good one. Every process runs it and they agree (BN statistics
    may differ between ranks), so every rank stops together."""
    where = next((f"{what}'s {bad}" for what, tensors in parts.items()
                  for bad in [first_non_finite(tensors)] if bad is not None), None)
    if where is None:
        where = next((f"the {k.replace('_', ' ')}" for k, v in metrics.items() if not math.isfinite(v)), None)
    device = next((t.device for tensors in parts.values() for t in tensors.values()), torch.device("cpu"))
    if not mdist.any_rank(where is not None, device):
        return
    where = where or "another process's model"
    raise Diverged(f"training diverged in epoch {epoch}: {where} is not finite, so "
                   f"nothing was saved; {last_good_checkpoint(output_dir, last_names, resumed_from)} (lower --lr, "
                   "or raise --loss-factor if the distillation term diverged)")
