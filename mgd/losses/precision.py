"""The losses of this package compute in float32 whatever the autocast state (mixed-precision training)."""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, TypeVar, Union

import torch

__all__ = ["float32_loss", "float32_region"]

F = TypeVar("F", bound=Callable[..., torch.Tensor])


@contextlib.contextmanager
def float32_region(device: Union[torch.device, str]) -> Iterator[None]:
    """Autocast switched off: what runs inside computes in the dtype of its inputs, which the losses cast
    to float32 (the features under autocast are float16 / bfloat16; their gradients go back in that dtype)."""
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        yield


def float32_loss(fn: F) -> F:
    """Run ``fn`` with autocast off on the device of its first tensor argument; ``fn`` casts its inputs to
    float32, so under float16 / bfloat16 autocast its value is computed and summed in float32 and its
    gradients go back to the inputs in their own dtype."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), "cpu")
        with float32_region(device):
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]
