"""THE epoch loop of every application (cls/, seg/, unsup/): seed, the distiller's prepare step, one epoch of
training steps, the application's evaluation, the refusal of non-finite weights, the atomic checkpoint set
and the run log, in that order and once. An application says only what is its own through an
:class:`EpochTask`: its learning-rate schedule, what it evaluates, which metric makes the best checkpoint,
what its checkpoint holds and which files it writes.

Exact resume: when ``--seed`` is given, everything random in epoch e (the data order, augmentations, MGD's rd
reducer) is seeded from (seed, e) at its start, so an interrupted run resumed from its last checkpoint trains
the same epochs as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Any, Dict, Iterable, Optional, Sequence

import torch
from torch import nn

from .. import distributed as mdist
from ..checkpoint import deferred_signals
from ..distillers.base import Distiller
from .data import epoch_loader
from .launch import seed_everything
from .logs import RunLog
from .precision import Precision
from .rundir import last_good_checkpoint, no_space_error, out_of_space, refuse_non_finite
from .train import StepFn, prepare_if_due, train_one_epoch

__all__ = ["EpochTask", "fit", "share_rank0_buffers"]


def share_rank0_buffers(trainable: nn.Module) -> None:
    """Every buffer of what DDP trains (BatchNorm statistics of the student and of the distiller's own layers)
    as rank 0's on every rank, after each epoch's steps. DDP broadcasts them at the start of each forward, but
    the last step leaves each rank its own update; rank 0's are what the checkpoint holds, so without this the
    next epoch's evaluation and prepare step (MGD's matching, a tracking pass in eval mode) would read other
    statistics on the other ranks than a run resumed from that checkpoint does."""
    module = trainable.module if isinstance(trainable, nn.parallel.DistributedDataParallel) else trainable
    for buffer in module.buffers():
        mdist.broadcast(buffer, 0)


class EpochTask:
    """What an application adds to :func:`fit`; every hook but :meth:`prepare_loader` (needed only when the
    distiller's ``prepare_due`` says so) has a default that does nothing.

    Attributes:
        score: the record key whose best value makes ``best`` (cls: "top1", seg: "miou"); None: no best.
        last_names: the checkpoint files a run resumes from (for the "last good checkpoint" in error lines).
        drop_last: whether the training loader drops a last, smaller batch (the distiller can ask it too).
        log_name: the logger of the epoch lines (the application's).
    """

    score: Optional[str] = None
    log_name: str = "mgd.engine"
    last_names: Sequence[str] = ("last.pth",)
    drop_last: bool = False

    def prepare_loader(self, epoch: int) -> Iterable:
        """The batches the distiller's prepare step reads before ``epoch`` (MGD's matching, KD++'s means)."""
        raise NotImplementedError

    def before_epoch(self, epoch: int, loader: Any, optimizer: torch.optim.Optimizer) -> float:
        """Set the epoch's learning rate (and anything else per epoch); returns the rate for the record."""
        return optimizer.param_groups[0]["lr"]

    def after_epoch(self, epoch: int) -> None:
        """After the epoch's steps, before the evaluation (cls: the LR scheduler; seg: BN statistics)."""

    def evaluate(self, epoch: int) -> Dict[str, Any]:
        """The epoch's validation metrics for the record ({} when the application evaluates nothing)."""
        return {}

    def train_record(self, stats: Dict[str, float]) -> Dict[str, Any]:
        """The epoch's averaged training parts as they appear in the record."""
        return dict(stats)

    def weights(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """What must be finite before it is saved, by name ("the student": its state dict, ...)."""
        return {}

    def save(self, epoch: int, record: Dict[str, Any], is_best: bool, best: float) -> None:
        """Write the epoch's checkpoint files (rank 0 only, with signals deferred until the set is written)."""

    def summary(self, epoch: int, record: Dict[str, Any]) -> str:
        """The epoch's one log line (after "epoch e/E")."""
        return "  ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float))


def fit(*, args: argparse.Namespace, device: torch.device, precision: Precision, distiller: Distiller,
        trainable: nn.Module, step: StepFn, optimizer: torch.optim.Optimizer, train_set: Any, log: RunLog,
        task: EpochTask, start_epoch: int = 0, best: float = 0.0) -> float:
    """Train epochs ``start_epoch`` .. ``args.epochs - 1`` of ``step`` over ``train_set`` (each process its
    shard), with ``distiller``'s prepare step before each, ``task``'s evaluation and checkpoints after; every
    rank refuses non-finite weights before rank 0 saves. Returns the best ``task.score`` (or ``best``)."""
    for epoch in range(start_epoch, args.epochs):
        begin = time.time()
        if args.seed is not None:
            seed_everything(args.seed * 1000 + epoch)
        before = prepare_if_due(distiller, epoch, task.prepare_loader, log)
        trainable.train()
        loader = epoch_loader(train_set, args.per_process_batch, args.workers, epoch, args.seed or 0, args.rank,
                              args.world_size, device.type == "cuda",
                              drop_last=task.drop_last or distiller.needs_full_batches)
        lr = task.before_epoch(epoch, loader, optimizer)
        stats = train_one_epoch(step, loader, optimizer, precision, epoch, device, args.rank == 0, args.print_freq,
                                last_good_checkpoint(args.output_dir, task.last_names, args.resume))
        share_rank0_buffers(trainable)
        task.after_epoch(epoch)
        val = task.evaluate(epoch)
        record: Dict[str, Any] = {"epoch": epoch, "lr": lr, **task.train_record(stats), **val, **before}
        is_best = task.score is not None and val[task.score] > best
        if task.score is not None:
            best = max(best, val[task.score])
            record[f"best_{task.score}"] = best
        record["seconds"] = round(time.time() - begin, 1)
        refuse_non_finite(task.weights(), epoch, args.output_dir, task.last_names, args.resume,  # every rank
                          **({"val_loss": val["val_loss"]} if "val_loss" in val else {}))
        with deferred_signals():  # a Ctrl-C or SIGTERM waits for the set of files and the epoch's log record
            try:
                if args.rank == 0:
                    task.save(epoch, record, is_best, best)
                log.write(record)
            except (OSError, RuntimeError) as exc:
                if not out_of_space(exc):
                    raise
                raise no_space_error(args.output_dir, epoch, task.weights(), first=epoch == start_epoch) from None
        logging.getLogger(task.log_name).info("epoch %d/%d  %s", epoch, args.epochs - 1, task.summary(epoch, record))
    log.close()
    return best
