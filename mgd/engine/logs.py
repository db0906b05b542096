"""Run logs of the training scripts: a JSON-lines file (strict JSON: a NaN is written as null), optional
TensorBoard scalars, metric averages that are exact across processes."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Dict

import torch

from .. import distributed as mdist
from .errors import UserError

__all__ = ["RunLog", "Meter", "json_safe"]

#: record fields that are steps, times or counts of processes rather than curves
_NOT_SCALARS = ("epoch", "before_epoch", "time", "ranks")


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None: Python's json writes them as bare ``NaN``,
    which strict JSON readers (jq, JavaScript, pandas with the C parser) reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class RunLog:
    """A JSON-lines file (one record per epoch and per event such as a matching update) and optional
    TensorBoard scalars and figures, written by rank 0 only (``output_dir``: the run folder)."""

    def __init__(self, output_dir: str, rank: int, tensorboard: bool = False) -> None:
        self.active = rank == 0
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, "log.jsonl")
        self.writer = None
        if self.active:
            os.makedirs(output_dir, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as exc:
                    raise UserError("--tensorboard needs the tensorboard package (pip install tensorboard)") from exc
                self.writer = SummaryWriter(os.path.join(output_dir, "tb"))

    def write(self, record: Dict[str, Any]) -> None:
        """Append ``record`` (plain JSON types; non-finite numbers become null) with the time. The numbers of a
        record with an ``epoch`` become TensorBoard scalars at that epoch; those of an event record (``event``
        and ``before_epoch``, e.g. a matching update) become scalars ``<event>/<name>`` at ``before_epoch``."""
        if not self.active:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        if self.writer is not None:
            self._scalars(record)

    def _scalars(self, record: Dict[str, Any]) -> None:
        epoch, event, before = record.get("epoch"), record.get("event"), record.get("before_epoch")
        if isinstance(epoch, int):
            prefix, step = "", epoch
        elif isinstance(event, str) and isinstance(before, int):
            prefix, step = f"{event}/", before
        else:
            return
        for k, v in record.items():
            if (isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_SCALARS
                    and math.isfinite(v)):
                self.writer.add_scalar(prefix + k, v, step)
        self.writer.flush()

    def add_figures(self, figures: Dict[str, Any], step: int) -> None:
        """Give matplotlib figures to TensorBoard (``add_figure``) at ``step``; nothing without a writer."""
        if self.writer is None:
            return
        for tag, figure in figures.items():
            self.writer.add_figure(tag, figure, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Meter:
    """Sums of named values weighted by sample counts; all-reduced across processes on demand."""

    def __init__(self) -> None:
        self.sums: Dict[str, float] = {}
        self.count = 0

    def update(self, n: int, **values: float) -> None:
        """Add ``n`` samples whose mean value of each name is given."""
        self.count += n
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * n

    def add_counts(self, n: int, **counts: float) -> None:
        """Add ``n`` samples whose summed value of each name is given."""
        self.count += n
        for k, v in counts.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def averages(self, device: torch.device) -> Dict[str, float]:
        """Per-sample averages over every process (the same names must be on every rank)."""
        keys = sorted(self.sums)
        t = torch.tensor([self.sums[k] for k in keys] + [self.count], dtype=torch.float64, device=device)
        mdist.all_reduce_sum(t)
        count = max(t[-1].item(), 1.0)
        return {k: t[i].item() / count for i, k in enumerate(keys)}
