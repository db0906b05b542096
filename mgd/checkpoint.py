"""Checkpoint helpers: atomic writes and safe loads (DESIGN: conventions)."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping

import torch

__all__ = ["atomic_save", "safe_load", "strip_prefix"]


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``.

    A crash or a full disk during the write leaves the previous file intact.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def safe_load(path: str, map_location: Any = "cpu") -> Any:
    """torch.load with ``weights_only=True`` and errors that say which file and why."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "Weights only load failed" in first:
            first = "not a PyTorch file, or it holds objects other than tensors and plain containers " \
                    "(loaded with weights_only=True)"
        raise RuntimeError(f"cannot read checkpoint {path}: {first[:300]}") from exc


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict:
    """Remove a DataParallel/DDP ``module.`` prefix from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}
