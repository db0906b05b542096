"""The output folder of a run: checked before any work starts, never silently overwritten, and never given a
checkpoint of a model that diverged.

A folder that holds a previous run's checkpoints is only written into when the user asks: ``--resume`` of
one of its checkpoints (the run continues), or ``--overwrite`` (the previous run's files are moved into a
``previous-<time>`` folder first, so the folder never mixes two runs and nothing is deleted). Everything
here raises :class:`~mgd.engine.errors.UserError`, which the scripts turn into one line and exit code 2.
"""
from __future__ import annotations

import fnmatch
import logging
import math
import os
import tempfile
import time
from typing import Iterable, List, Mapping, Optional, Sequence

import torch

from .. import checkpoint
from .. import distributed as mdist
from .errors import UserError

__all__ = ["previous_checkpoints", "check_output_dir", "start_output_dir", "Diverged",
           "first_non_finite", "refuse_non_finite", "last_good_checkpoint"]

logger = logging.getLogger("mgd.engine")

#: What :func:`mgd.engine.train.prepare_if_due` writes (``<prepare_name>_last.pth``): moved aside with a
#: previous run, but not by itself a previous run (a run may stop before its first checkpoint).
PREPARE_ARTIFACTS = ("*_last.pth",)

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
                     inputs: Optional[Mapping[str, str]] = None) -> None:
    """Fail early (in the launching process, before any worker starts) when ``output_dir`` cannot be written
    or holds a previous run (files matching ``names``) that this run would replace without being asked.

    A resumed run may write into its own checkpoint's folder; a fresh run into a folder with a previous run
    needs ``overwrite``, which moves that run aside (:func:`start_output_dir`) and so must not move a file
    this run reads (``inputs``: {flag: path}).
    """
    probe = output_dir
    while probe and not os.path.exists(probe):  # the nearest existing ancestor must be a folder
        parent = os.path.dirname(probe)
        probe = parent if parent != probe else ""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"--output-dir {output_dir} is a file, not a folder")
    if probe and not os.path.isdir(probe):
        raise UserError(f"--output-dir {output_dir}: {probe} is a file, not a folder")
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=output_dir):
            pass
    except OSError as exc:
        raise UserError(f"--output-dir {output_dir} is not writable: {exc.strerror or exc}") from exc
    found = previous_checkpoints(output_dir, names)
    if not found or (resume and _inside(resume, output_dir)):
        return
    if overwrite:
        moved = {os.path.realpath(os.path.join(output_dir, name)) for name in found}
        for flag, path in (inputs or {}).items():
            if path and os.path.realpath(path) in moved:
                raise UserError(f"--overwrite would move {path} aside, but this run reads it ({flag}): copy it out "
                                "of --output-dir first")
        return
    last = next((n for n in found if "last" in n), found[0])
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    raise UserError(f"{output_dir} holds a previous run ({shown}): pass --resume "
                    f"{os.path.join(output_dir, last)} to continue it, --overwrite to start afresh (the previous "
                    "run is moved to a previous-<time> folder), or another --output-dir")


def start_output_dir(output_dir: str, names: Sequence[str], resume: bool, rank: int, overwrite: bool = False) -> None:
    """Prepare the folder on rank 0: delete the temporaries of writes that a killed process left; on a fresh
    run move an earlier ``log.jsonl`` aside (``log.<time>.jsonl``) so that one log never mixes two runs (a
    resumed run appends to its log), and with ``overwrite`` move the previous run's files (``names``) and its
    log into ``previous-<time>/``: nothing is deleted, and the folder never mixes two runs."""
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
        artifacts = previous_checkpoints(output_dir, PREPARE_ARTIFACTS)  # e.g. the last matching's matrices
        for name in previous + artifacts + (["log.jsonl"] if os.path.isfile(log) else []):
            os.replace(os.path.join(output_dir, name), os.path.join(aside, name))
        logger.info("--overwrite: the previous run's %s moved to %s", ", ".join(previous), aside)
    elif os.path.isfile(log):
        os.replace(log, os.path.join(output_dir, f"log.{stamp}.jsonl"))


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
