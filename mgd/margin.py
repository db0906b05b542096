"""OFD's margin and partial L2 distance (Heo et al., ICCV 2019), the loss MGD builds on.

The teacher's pre-ReLU response of a channel is modelled as x ~ N(beta, gamma^2), the affine output of
the BatchNorm that feeds the ReLU. Negative teacher values carry no information after the ReLU, so the
student is only asked to stay below the expected negative response, the *margin*
E[x | x < 0] = beta - |gamma| * phi(beta/|gamma|) / Phi(-beta/|gamma|)  (OFD, Eq. 3).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["get_margin_from_BN", "margin_from_bn", "distillation_loss", "partial_l2", "is_batchnorm"]

#: Below this probability of a negative response the closed form is numerically meaningless;
#: OFD then uses -3 standard deviations instead.
_MIN_NEGATIVE_PROBABILITY = 1e-3


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


def distillation_loss(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """OFD's partial L2 distance (OFD Eq. 4), summed over all elements.

    ``target = max(target, margin)``; an element counts when the student is above the target, or when the
    target is positive (the teacher's response survives its ReLU). ``margin`` broadcasts against
    ``target`` (shape (1, C, 1, 1) or (C, 1, 1)); a 1-D margin of length C is taken per channel.
    """
    if margin.dim() == 1 and target.dim() == 4:
        margin = margin.view(1, -1, 1, 1)
    target = torch.max(target, margin)
    diff = source - target
    return partial_l2(diff, target > 0)


def partial_l2(diff: torch.Tensor, target_positive: torch.Tensor) -> torch.Tensor:
    """sum(diff^2) over elements where diff > 0 or the target is positive, in three passes.

    Written as ``max(diff, floor)^2`` with floor = -inf where the target is positive and 0 elsewhere:
    one comparison and one reduction instead of two masks, a product and a where.
    """
    floor = torch.where(target_positive, float("-inf"), 0.0).to(diff.dtype)
    kept = torch.maximum(diff, floor)
    return torch.sum(kept * kept)
