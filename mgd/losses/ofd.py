"""OFD's margin and partial L2 distance (Heo et al., ICCV 2019), the loss MGD builds on.

The teacher's pre-ReLU response of a channel is modelled as x ~ N(beta, gamma^2), the affine output of
the BatchNorm that feeds the ReLU. Negative teacher values carry no information after the ReLU, so the
student is only asked to stay below the expected negative response, the *margin*
E[x | x < 0] = beta - |gamma| * phi(beta/|gamma|) / Phi(-beta/|gamma|)  (OFD, Eq. 3).

The target is max(teacher, margin) and the partial L2 counts an element when the student is above the
target or the target is positive (OFD, Eq. 4). Both are written here once, for OFD, MGD and every
application; the distance is always computed and summed in float32 (a summed partial L2 of one ordinary
stage overflows float16, and bfloat16 keeps only about three significant digits).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

from .precision import float32_region

__all__ = ["NO_MARGIN", "get_margin_from_BN", "margin_from_bn", "distillation_loss", "margin_target", "partial_l2",
           "relu_floor", "is_batchnorm"]

#: Below this probability of a negative response the closed form is numerically meaningless;
#: OFD then uses -3 standard deviations instead.
_MIN_NEGATIVE_PROBABILITY = 1e-3
#: The margin of a stage with no BatchNorm + ReLU on the teacher side (a linear output): below any feature,
#: so that ``max(teacher, margin)`` is the teacher itself; finite, so that states and checkpoints stay finite.
NO_MARGIN = -1e30


def is_batchnorm(module: nn.Module) -> bool:
    """True for torch BatchNorm layers (incl. SyncBatchNorm) and frozen BNs with affine weight/bias."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.affine
    # Detectron2's FrozenBatchNorm2d and similar keep weight/bias as buffers.
    return "BatchNorm" in type(module).__name__ and all(
        isinstance(getattr(module, n, None), torch.Tensor) for n in ("weight", "bias")
    )


def margin_from_bn(bn: nn.Module) -> torch.Tensor:
    """Per-channel margin E[x | x < 0] for x ~ N(bn.bias, bn.weight^2) (OFD Eq. 3), float32, on bn's device.

    Computed in float64 and vectorized; where the probability of a negative response is at most 1e-3
    the margin is -3 |gamma|, exactly as in the reference implementation.
    """
    if not is_batchnorm(bn):
        raise TypeError(
            f"margin layer must be an affine BatchNorm (the BN whose output feeds the ReLU), got {type(bn).__name__}"
        )
    s = bn.weight.detach().double().abs()
    m = bn.bias.detach().double()
    p_negative = torch.special.ndtr(-m / s)
    pdf = torch.exp(-0.5 * (m / s) ** 2) / math.sqrt(2 * math.pi)
    closed_form = m - s * pdf / p_negative
    margin = torch.where(p_negative > _MIN_NEGATIVE_PROBABILITY, closed_form, -3 * s)
    return margin.float()


def get_margin_from_BN(bn: nn.Module) -> torch.Tensor:  # noqa: N802 - the original public name
    """Original name of :func:`margin_from_bn`."""
    return margin_from_bn(bn)


def margin_target(teacher: torch.Tensor, margin: torch.Tensor, inplace: bool = False
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(target, floor) of OFD Eq. 4 without gradient: ``target = max(teacher, margin)`` in float32 and its
    :func:`relu_floor`. ``margin`` broadcasts against ``teacher``; a 1-D margin of length C is per channel.
    ``inplace=True`` lets a float32 ``teacher`` that nobody else uses be overwritten (saves one copy).
    """
    with torch.no_grad():
        if margin.dim() == 1 and teacher.dim() == 4:
            margin = margin.view(1, -1, 1, 1)
        teacher = teacher.detach()
        margin = margin.to(torch.float32)
        if inplace and teacher.dtype == torch.float32:
            target = torch.maximum(teacher, margin, out=teacher)
        else:
            target = torch.maximum(teacher.float(), margin)
        return target, relu_floor(target)


def distillation_loss(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's partial L2 distance (OFD Eq. 4), summed over all elements, in float32.

    ``target = max(target, margin)``; an element counts when the student is above the target, or when the
    target is positive (the teacher's response survives its ReLU). ``margin`` broadcasts against
    ``target`` (shape (1, C, 1, 1) or (C, 1, 1)); a 1-D margin of length C is taken per channel.
    """
    target, floor = margin_target(target, margin)
    return partial_l2(source, target, floor)


def relu_floor(target: torch.Tensor) -> torch.Tensor:
    """A very negative number where the target is positive, 0 elsewhere: ``max(source - target, floor)``
    is then the difference where it counts for the partial L2 and 0 where it does not.

    Built from sign, clamp and a multiply: boolean masks (masked_fill, where) and heaviside are several
    times slower on CPU than these vectorized kernels.
    """
    return torch.sign(target).clamp_(min=0).mul_(torch.finfo(target.dtype).min)


class _PartialL2(torch.autograd.Function):
    """sum(max(source - target, floor)^2) in float32, with one saved tensor and a one-multiply backward.

    Autograd over the plain expression would keep masks for max and the square and run four
    elementwise backward kernels; the gradient is simply 2 * max(source - target, floor), computed in
    float32 (autograd hands it to the source in the source's dtype, float16 / bfloat16 under autocast).
    """

    @staticmethod
    def forward(ctx, source, target, floor):  # type: ignore[override]
        with float32_region(source.device):
            kept = source.float() - target.float()
            torch.maximum(kept, floor.float(), out=kept)
            ctx.save_for_backward(kept)
            flat = kept.reshape(-1)
            return torch.dot(flat, flat)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        (kept,) = ctx.saved_tensors
        return kept * (2 * grad_output), None, None


def partial_l2(source: torch.Tensor, target: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """Partial L2 given the (margin-clamped) target and its :func:`relu_floor`; differentiable in source,
    a float32 scalar whatever the inputs' dtype."""
    return _PartialL2.apply(source, target, floor)
