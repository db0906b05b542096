"""Each seed method's loss against a hand computation on small tensors."""
import math

import pytest
import torch
import torch.nn.functional as F

from mgd.losses import at_loss, attention_map, kd_loss, nd_loss, sp_loss


def test_kd_loss_by_hand():
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    T = 2.0
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    pt = [1 / (math.exp(0.5) + 1), math.exp(0.5) / (math.exp(0.5) + 1)]
    expected = sum(p * math.log(p / q) for p, q in zip(pt, ps)) * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(expected, rel=1e-6)


def test_attention_map_and_at_loss_by_hand():
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    t = torch.tensor([[[[0.0, 1.0]], [[0.0, 1.0]]]])
    # mean over channels of squares: s -> (5, 2), t -> (0, 1); L2-normalised
    qs = torch.tensor([5.0, 2.0]) / math.sqrt(29)
    qt = torch.tensor([0.0, 1.0])
    torch.testing.assert_close(attention_map(s)[0], qs)
    assert at_loss(s, t).item() == pytest.approx(((qs - qt) ** 2).mean().item(), rel=1e-6)
    small, big = torch.randn(1, 2, 2, 2), torch.randn(1, 2, 4, 4)  # the larger map pooled to 2x2 (mdistiller's)
    assert at_loss(small, big).item() == pytest.approx(at_loss(small, F.adaptive_avg_pool2d(big, 2)).item())


def test_sp_loss_by_hand():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(2, 2, 1, 1)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 2, 1)  # other shape: only the 2x2 similarities count
    g_s = torch.tensor([[1.0, 1.0], [1.0, 2.0]])
    g_s = g_s / g_s.norm(dim=1, keepdim=True)
    g_t = torch.eye(2)
    assert sp_loss(s, t).item() == pytest.approx(((g_t - g_s) ** 2).sum().item() / 4, rel=1e-6)


def test_nd_loss_by_hand():
    e_s = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    e_t = torch.tensor([[0.0, 10.0], [0.0, 0.5]])
    means = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1])
    # sample 0: direction (1, 0), projection 3, max norm max(5, 10) = 10 -> 1 - 0.3
    # sample 1: direction (0, 1), projection 1, max norm max(1, 0.5) = 1 -> 0
    assert nd_loss(e_s, e_t, means, labels).item() == pytest.approx((0.7 + 0.0) / 2)


def test_maps_of_two_sizes_are_compared_at_the_smaller_by_average_pooling():
    from mgd.losses.spatial import match_spatial
    big = torch.arange(16.0).view(1, 1, 4, 4)
    small = torch.zeros(1, 1, 2, 2)
    s, t = match_spatial(big, small)
    assert t is small and s.tolist() == [[[[2.5, 4.5], [10.5, 12.5]]]]  # each 2x2 block's mean
    t2, s2 = match_spatial(small, big)
    assert t2 is small and torch.equal(s2, s)
    same = torch.ones(1, 1, 3, 3)
    assert match_spatial(same, same)[0] is same
