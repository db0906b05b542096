import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from mgd.builder import distillation_loss, get_margin_from_BN


def _bn(weight, bias):
    bn = nn.BatchNorm2d(len(weight))
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(weight))
        bn.bias.copy_(torch.tensor(bias))
    return bn


def test_margin_closed_form_branch_matches_truncated_normal_mean():
    # x ~ N(m, s^2): E[x | x < 0] = m - s * pdf(m/s) / cdf(-m/s); checked against scipy's truncnorm.
    from scipy.stats import truncnorm
    weights, biases = [1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -0.3, 2.5]
    margin = get_margin_from_BN(_bn(weights, biases))
    for i, (w, b) in enumerate(zip(weights, biases)):
        s = abs(w)
        expected = truncnorm.mean(-math.inf, (0 - b) / s, loc=b, scale=s)
        assert margin[i].item() == pytest.approx(expected, rel=1e-5)
    assert margin[0].item() == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-6)  # half-normal mean


def test_margin_falls_back_to_minus_three_sigma_when_negatives_are_rare():
    # P(x < 0) = cdf(-m/s) = cdf(-4) = 3e-5 < 1e-3: margin = -3 s
    margin = get_margin_from_BN(_bn([0.5, -2.0], [2.0, 8.0]))
    assert norm.cdf(-4.0) < 1e-3
    assert margin.tolist() == pytest.approx([-1.5, -6.0])


def test_margin_rejects_non_batchnorm():
    with pytest.raises(TypeError, match="BatchNorm"):
        get_margin_from_BN(nn.Conv2d(3, 3, 1))


def test_distillation_loss_matches_hand_computation():
    source = torch.tensor([[[[0.5]], [[-1.0]], [[2.0]], [[-3.0]]]])  # (1, 4, 1, 1)
    target = torch.tensor([[[[1.0]], [[-2.0]], [[-0.5]], [[-4.0]]]])
    margin = torch.tensor([-0.2, -1.5, -1.0, -3.5])
    # effective targets max(t, m): 1.0, -1.5, -0.5, -3.5
    # ch0: target > 0 -> (0.5-1)^2 = 0.25; ch1: source -1 > -1.5 -> 0.25; ch2: 2 > -0.5 -> 6.25;
    # ch3: source -3 > -3.5 -> 0.25
    assert distillation_loss(source, target, margin).item() == pytest.approx(7.0)
    # below a non-positive target the student is free: no loss
    low = torch.tensor([[[[-5.0]], [[-5.0]], [[-5.0]], [[-5.0]]]])
    # ch0 target 1 > 0 still counts: (-5 - 1)^2 = 36
    assert distillation_loss(low, target, margin).item() == pytest.approx(36.0)


def test_distillation_loss_gradient_only_on_counted_elements():
    source = torch.tensor([[[[-5.0, 1.0]]]], requires_grad=True)
    target = torch.tensor([[[[-1.0, -1.0]]]])
    distillation_loss(source, target, torch.tensor([-2.0])).backward()
    assert source.grad.tolist() == [[[[0.0, 4.0]]]]
