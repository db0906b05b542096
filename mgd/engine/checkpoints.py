"""Checkpoints of the training scripts: atomic writes, ``weights_only`` reads, one-line user errors."""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Dict, Iterable, Optional, Sequence

import torch
from torch import nn

from ..checkpoint import atomic_save, safe_load, strip_prefix
from .errors import UserError

logger = logging.getLogger("mgd.engine")

__all__ = ["save_checkpoints", "load_checkpoint", "read_weights", "plain_args", "restore_training_state",
           "check_resume_matches", "check_epochs_left", "resume_from", "load_backbone_weights", "load_weights",
           "weights_fingerprint", "CHECKPOINT_SET"]

#: What cls/ and seg/ write in an --output-dir: the checkpoint to continue from, the best one, the plain weights.
CHECKPOINT_SET = ("last.pth", "best.pth", "student.pth")


def save_checkpoints(state: Dict[str, Any], output_dir: str, names: Iterable[str]) -> None:
    """Write ``state`` under each name in ``output_dir``, each atomically (a crash never leaves a torn file;
    a Ctrl-C waits for the write to finish). The caller checks first that the model is finite
    (:func:`mgd.engine.rundir.refuse_non_finite`)."""
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


def load_weights(model: nn.Module, state: Dict[str, torch.Tensor], what: str, path: str) -> None:
    """``model.load_state_dict(state)``, strict; UserError naming ``what``, the file and the first lines of
    PyTorch's message when it does not fit (missing or unexpected keys, other shapes)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).strip().splitlines()[:2])[:300]
        raise UserError(f"{what}: {path} does not fit {type(model).__name__} ({first})") from exc


def load_backbone_weights(model: nn.Module, state: Dict[str, torch.Tensor], what: str, path: str,
                          skip: Sequence[str] = ()) -> None:
    """Every tensor of ``state`` whose key does not start with one of ``skip`` (a classifier's), into ``model``;
    the model's own ``skip`` keys may stay unloaded, every other one must be loaded with its shape. UserError
    naming ``what``, the file and the first mismatches otherwise (an ImageNet classifier's weights into a
    backbone, for cls/, seg/ and d2/ alike)."""
    skip = tuple(skip)
    kept = {k: v for k, v in state.items() if not (skip and k.startswith(skip))}
    try:
        result = model.load_state_dict(kept, strict=False)
    except RuntimeError as exc:  # shapes that differ
        raise UserError(f"{what}: {path} does not fit {type(model).__name__} "
                        f"({' '.join(str(exc).strip().splitlines()[:2])[:300]})") from None
    missing = [k for k in result.missing_keys if not (skip and k.startswith(skip))]
    if missing or result.unexpected_keys:
        raise UserError(f"{what}: {path} does not fit {type(model).__name__} (missing {missing[:3]}, "
                        f"unexpected {result.unexpected_keys[:3]})")


_MISSING = object()


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(x) for x in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def plain_args(args: Any) -> Dict[str, Any]:
    """An argparse namespace as plain types (what torch.load(weights_only=True) accepts)."""
    return {k: _plain(v) for k, v in vars(args).items()}


def _describe(key: str, value: Any) -> str:
    if key == "num_classes":
        return f"{value} classes"
    if key == "method":  # a checkpoint's method, chosen with --distiller
        return f"--distiller {value}"
    if key == "teacher_weights":
        return f"the teacher weights of fingerprint {value}"
    if isinstance(value, bool):
        return f"--{key.replace('_', '-')}" if value else f"no --{key.replace('_', '-')}"
    shown = " ".join(map(str, value)) if isinstance(value, list) else value
    return f"--{key.replace('_', '-')} {shown}"


def weights_fingerprint(module: nn.Module) -> str:
    """A short hash of ``module``'s state (names, shapes, dtypes and values): what a resume compares to refuse
    other teacher weights of the same architecture, which would load and silently change the target."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_resume_matches(ckpt: Dict[str, Any], path: str, **expected: Any) -> None:
    """UserError when the checkpoint was written with another value of a setting that a resumed run cannot
    change (the architecture, the class count, MoCo's queue length, ...): its weights or state would not fit,
    or would fit and silently mean something else. A setting is looked up at the checkpoint's top level, then
    in its recorded ``args``; one it does not record (an older checkpoint) is not compared."""
    recorded_args = ckpt.get("args") if isinstance(ckpt.get("args"), dict) else {}
    for key, value in expected.items():
        recorded = ckpt[key] if key in ckpt else recorded_args.get(key, _MISSING)
        if recorded is _MISSING or recorded is None or recorded == _plain(value):  # None: a default, unrecorded
            continue
        raise UserError(f"--resume: {path} was written with {_describe(key, recorded)}, this run has "
                        f"{_describe(key, _plain(value))}: resume with the same setting, or start a new run")


def check_epochs_left(start_epoch: int, epochs: int, path: Optional[str] = None) -> None:
    """UserError when a run would train nothing: the checkpoint it resumes (``path``), or --start-epoch, is at
    or past ``--epochs``."""
    if start_epoch < epochs:
        return
    if path is None:
        raise UserError(f"--start-epoch {start_epoch} is at or past --epochs {epochs}: nothing to train")
    raise UserError(f"--resume: {path} has already trained {start_epoch} epochs and --epochs is {epochs}: "
                    f"nothing left to train (raise --epochs to train longer)")


def restore_training_state(ckpt: Dict[str, Any], path: str, optimizer: torch.optim.Optimizer,
                           precision: Optional[Any] = None, scheduler: Optional[Any] = None,
                           distiller: Optional[Any] = None, distiller_key: str = "distiller") -> None:
    """Load what a resumed run continues from: the optimizer, the GradScaler (``precision``), the LR
    schedule and the distiller's own state (matching, norm layers, class means...). A checkpoint written
    with other options (another reducer, teacher or mgd version) is a one-line UserError that says so."""
    if distiller is not None:
        try:
            distiller.load_own_state_dict(ckpt.get(distiller_key, {}))  # none before the 'none' method: {}
        except (RuntimeError, KeyError) as exc:
            first = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])[:300]  # not only "...for X:"
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


def resume_from(ckpt: Dict[str, Any], path: str, model: torch.nn.Module, model_key: str,
                optimizer: torch.optim.Optimizer, precision: Optional[Any] = None, scheduler: Optional[Any] = None,
                distiller: Optional[Any] = None, epochs: Optional[int] = None, **same: Any) -> int:
    """Continue a run from ``ckpt`` (read from ``path``): check that it was written with the settings in
    ``same`` and that epochs are left (``epochs``: None skips, as for an evaluation), load ``ckpt[model_key]``
    into ``model`` and restore the training state. Returns the epoch to start from."""
    check_resume_matches(ckpt, path, **same)
    if epochs is not None:
        check_epochs_left(int(ckpt["epoch"]), epochs, path)
    load_weights(model, ckpt[model_key], "--resume", path)
    restore_training_state(ckpt, path, optimizer, precision, scheduler, distiller)
    logger.info("resumed from %s at epoch %d", path, int(ckpt["epoch"]))
    return int(ckpt["epoch"])
