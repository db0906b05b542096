"""The parts of a training loop every application shares: one epoch of steps, the distiller's prepare
step (MGD's matching, KD++'s class means) with the check that all processes agree, and how a model is
wrapped for DistributedDataParallel or DataParallel.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
from torch import nn
from tqdm import tqdm

from .. import distributed as mdist
from ..distillers.base import Distiller, TrainableDistiller
from .errors import UserError
from .logs import Meter, RunLog
from .rundir import Diverged
from .precision import Precision

__all__ = ["train_one_epoch", "prepare_if_due", "wrap_for_training", "ReplicaStep", "mean_terms"]

logger = logging.getLogger("mgd.engine")

#: step(batch) -> (loss to back-propagate, {name: float} parts to average, number of samples)
StepFn = Callable[[Any], Tuple[torch.Tensor, Dict[str, float], int]]


def train_one_epoch(step: StepFn, loader: Iterable, optimizer: torch.optim.Optimizer, precision: Precision,
                    epoch: int, device: torch.device, show_progress: bool = True, print_freq: int = 10,
                    last_good: str = "") -> Dict[str, float]:
    """One pass of ``step`` over ``loader`` with (mixed-precision) updates; returns the parts averaged
    over all processes. A non-finite loss stops the run before its update (:class:`Diverged`, one line
    that says what to change, followed by ``last_good``: where the run can be resumed from)."""
    meter = Meter()
    # disable=None: no bar where stderr is no terminal (a log file), whose carriage returns would put the next
    # line, an epoch's summary or an "error:", in the middle of a line
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=None if show_progress else True, leave=False,
               dynamic_ncols=True, mininterval=1.0, miniters=print_freq)
    with bar:
        for batch in bar:
            _train_step(step, batch, bar, meter, optimizer, precision, epoch, device, last_good)
    return meter.averages(device)


#: PyTorch's message for a BatchNorm in training mode that sees one value per channel.
_ONE_VALUE_PER_CHANNEL = "Expected more than 1 value per channel when training"


def _train_step(step: StepFn, batch: Any, bar: Any, meter: Meter, optimizer: torch.optim.Optimizer,
                precision: Precision, epoch: int, device: torch.device, last_good: str) -> None:
    try:
        with precision.autocast():
            loss, parts, count = step(batch)
    except ValueError as exc:
        if _ONE_VALUE_PER_CHANNEL not in str(exc):
            raise
        raise UserError("a BatchNorm layer sees one value per channel in training (a batch of one image per "
                        "process reaching a 1x1 feature map): raise -b (the batch size over all processes) to "
                        "at least 2 per process") from exc
    value = loss.item()
    if mdist.any_rank(not math.isfinite(value), device):  # every rank stops, not only the one that diverged
        terms = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
        where = (f"the loss is {value} ({terms})" if not math.isfinite(value)
                 else "another process's loss is not finite")
        raise Diverged(f"training diverged in epoch {epoch}: {where}; lower --lr, or raise --loss-factor if the "
                       "distillation term is the one that diverged" + (f"; {last_good}" if last_good else ""))
    precision.backward_step(loss, optimizer)
    meter.update(count, loss=value, **parts)
    bar.set_postfix(loss=f"{value:.3f}", refresh=False)


def mean_terms(losses: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """DataParallel gathers one value per replica: their mean (a no-op for scalars)."""
    return {k: v.mean() for k, v in losses.items()}


def prepare_if_due(distiller: Distiller, epoch: int, make_loader: Callable[[int], Iterable], log: RunLog
                   ) -> Dict[str, Any]:
    """Announce ``epoch`` to the distiller (``set_epoch``: warm-ups), run ``distiller.prepare`` before it when
    the method asks for it, check that every process holds the same result, and log it. Returns what to add
    to the epoch's record ({} when nothing ran)."""
    distiller.set_epoch(epoch)
    if not distiller.prepare_due(epoch):
        return {}
    start = time.time()
    try:
        distiller.prepare(make_loader(epoch), epoch=epoch)
    except ValueError as exc:  # the data or the configuration: an empty shard, a class without images, ...
        raise UserError(f"the distiller's {distiller.prepare_name} before epoch {epoch} failed: {exc}") from exc
    agree = mdist.same_on_all_ranks(distiller.prepared_state()) if distiller.prepared_state() else True
    if not agree:
        raise RuntimeError(f"the processes disagree on the distiller's {distiller.prepare_name} after prepare")
    seconds = round(time.time() - start, 1)
    summary = distiller.prepare_summary()
    log.write({"event": distiller.prepare_name, "before_epoch": epoch, "ranks": mdist.get_world_size(),
               "ranks_agree": agree, "seconds": seconds, **summary})
    _save_artifacts(distiller, epoch, log)
    logger.info("%s before epoch %d in %.1f s on %d process(es)", distiller.prepare_name, epoch, seconds,
                mdist.get_world_size())
    return {f"{distiller.prepare_name}_seconds": seconds}


def _save_artifacts(distiller: Distiller, epoch: int, log: RunLog) -> None:
    """Rank 0 keeps the last prepare's tensors (MGD: ``matching_last.pth``, the cost matrices and indices that
    ``python -m mgd.plot`` draws) in the run folder, replaced atomically at each update, and gives their
    figures to TensorBoard when the run has a writer. A failing picture is a warning, never a failed run."""
    if not log.active:
        return
    artifacts = distiller.prepare_artifacts()
    if not artifacts:
        return
    from ..checkpoint import atomic_save
    atomic_save(artifacts, os.path.join(log.output_dir, f"{distiller.prepare_name}_last.pth"))
    if log.writer is None:
        return
    try:
        from ..tools.plot import cost_matrix_figures
        figures = cost_matrix_figures(artifacts)
    except (ImportError, RuntimeError) as exc:  # no matplotlib: the scalars still reach TensorBoard
        logger.warning("no %s figures for TensorBoard: %s", distiller.prepare_name, exc)
        return
    log.add_figures({f"{distiller.prepare_name}/{name.removeprefix('matching_')}": fig
                     for name, fig in figures.items()}, epoch)


class ReplicaStep(nn.Module):
    """What DataParallel replicates: the whole module (a distiller with its teacher, or a model) as a
    submodule, called through ``forward_train`` for a distiller, inside the run's autocast. (DataParallel's
    worker threads inherit whether autocast is on but not its dtype: bfloat16 would silently become
    float16 without a GradScaler.)"""

    def __init__(self, module: nn.Module, precision: Optional[Precision] = None) -> None:
        super().__init__()
        self.module = module
        self._precision = precision

    def train(self, mode: bool = True) -> "ReplicaStep":
        super().train(mode)
        self.module.train(mode)  # a distiller keeps its teacher in eval mode
        return self

    def forward(self, *args, **kwargs):
        call = self.module.forward_train if isinstance(self.module, Distiller) else self.module
        with self._precision.autocast() if self._precision is not None else contextlib.nullcontext():
            return call(*args, **kwargs)


def wrap_for_training(module: nn.Module, device: torch.device, distributed: bool, gpu: Any = None,
                      data_parallel: bool = True, precision: Optional[Precision] = None) -> nn.Module:
    """What the training step calls: DistributedDataParallel when distributed (for a distiller, around
    its trainable parts only: the frozen teacher is not wrapped), DataParallel over every visible GPU when
    there are several, no single GPU was asked for and ``data_parallel`` allows it, else the module itself.
    A distiller is called through ``forward_train`` in every case; ``precision`` is re-entered in each
    DataParallel replica."""
    use_dp = data_parallel and device.type == "cuda" and torch.cuda.device_count() > 1 and gpu is None
    if not distributed and use_dp:
        if not getattr(module, "replica_safe", True):
            raise UserError(f"{type(module).__name__} cannot train in DataParallel replicas (its memory moves in "
                            "the training forward); use DDP (--multiprocessing-distributed) or one GPU (--gpu 0)")
        return nn.DataParallel(ReplicaStep(module, precision))
    if isinstance(module, Distiller):
        module = TrainableDistiller(module)
    if distributed:
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                                   else None)
    return module
