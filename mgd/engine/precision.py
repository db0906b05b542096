"""Mixed precision for the training scripts: autocast around the forward, a GradScaler for float16.

As in torchvision's references (``--amp``): the networks run under ``torch.autocast``; with float16 the loss
is scaled before the backward pass so small gradients do not flush to zero, and a step whose gradients
overflowed is skipped. bfloat16 has float32's range and needs no scaler (the CPU default). The
distillation losses themselves are always computed and summed in float32 by the library.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Dict, Optional

import torch

__all__ = ["Precision"]

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class Precision:
    """``autocast()`` for the forward, ``backward_step(loss, optimizer)`` for the update, and the scaler's
    state for checkpoints (exact resume)."""

    def __init__(self, enabled: bool, dtype: Optional[str], device: torch.device,
                 channels_last: bool = False) -> None:
        self.device = torch.device(device)
        self.enabled = bool(enabled)
        if dtype is None:
            dtype = "float16" if self.device.type == "cuda" else "bfloat16"
        if dtype not in _DTYPES:
            raise ValueError(f"unknown autocast dtype {dtype!r}; valid: {', '.join(_DTYPES)}")
        self.dtype_name = dtype
        self.dtype = _DTYPES[dtype]
        self.channels_last = bool(channels_last)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.enabled and self.dtype == torch.float16)

    def describe(self) -> str:
        if not self.enabled:
            return "float32"
        return f"autocast {self.dtype_name}" + (" with GradScaler" if self.scaler.is_enabled() else "")

    def autocast(self) -> ContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """An input batch on the device, in channels-last layout when asked."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model in channels-last layout when asked (in place)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """zero_grad, (scaled) backward, optimizer step (skipped by the scaler after an overflow), update."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state:
            self.scaler.load_state_dict(state)
