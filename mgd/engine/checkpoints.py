"""Checkpoints of the training scripts: atomic writes, ``weights_only`` reads, one-line user errors."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional, Sequence

import torch

from ..checkpoint import atomic_save, safe_load, strip_prefix
from .launch import UserError

__all__ = ["save_checkpoints", "load_checkpoint", "read_weights", "plain_args", "restore_training_state"]


def save_checkpoints(state: Dict[str, Any], output_dir: str, names: Iterable[str]) -> None:
    """Write ``state`` under each name in ``output_dir``, each atomically (a crash never leaves a torn file)."""
    for name in names:
        atomic_save(state, os.path.join(output_dir, name))


def load_checkpoint(path: str, required: Sequence[str], what: str = "--resume") -> Dict[str, Any]:
    """A checkpoint of these scripts (``weights_only=True``); UserError when unreadable or not one of ours."""
    try:
        ckpt = safe_load(path)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"{what}: {exc}") from exc
    missing = [k for k in required if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{what}: {path} is not a checkpoint written by this script (no {', '.join(missing)})")
    return ckpt


def read_weights(path: str, what: str, keys: Sequence[str] = ("state_dict", "student", "model")
                 ) -> Dict[str, torch.Tensor]:
    """A state dict from a plain state dict or a checkpoint holding one under one of ``keys``; a
    DataParallel/DDP ``module.`` prefix is stripped. UserError when unreadable."""
    try:
        obj = safe_load(path)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"{what}: {exc}") from exc
    if isinstance(obj, dict):
        for key in keys:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{what}: {path} holds no state dict")
    return strip_prefix(obj)


def plain_args(args: Any) -> Dict[str, Any]:
    """An argparse namespace as plain types (what torch.load(weights_only=True) accepts)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
    return {k: plain(v) for k, v in vars(args).items()}


def restore_training_state(ckpt: Dict[str, Any], path: str, optimizer: torch.optim.Optimizer,
                           precision: Optional[Any] = None, scheduler: Optional[Any] = None,
                           distiller: Optional[Any] = None, distiller_key: str = "distiller") -> None:
    """Load what a resumed run continues from: the optimizer, the GradScaler (``precision``), the LR
    schedule and the distiller's own state (matching, norm layers, class means...). A checkpoint written
    with other options (another reducer, teacher or mgd version) is a one-line UserError that says so."""
    if distiller is not None:
        try:
            distiller.load_own_state_dict(ckpt[distiller_key])
        except (RuntimeError, KeyError) as exc:
            first = str(exc).splitlines()[0][:300]
            raise UserError(f"--resume: the distiller state in {path} does not fit this run (written with other "
                            f"options, another teacher or another mgd version): {first}") from exc
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as exc:
        raise UserError(f"--resume: the optimizer state in {path} does not fit this run: {exc}") from exc
    if scheduler is not None:
        scheduler.load_state_dict(ckpt["lr_scheduler"])
    if precision is not None:
        precision.load_state_dict(ckpt.get("scaler", {}))
