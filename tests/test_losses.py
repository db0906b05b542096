"""Each seed method's loss against a hand computation on small tensors."""
import math

import pytest
import torch

from mgd.distillers import OFDistiller, build_distiller
from mgd.losses import at_loss, attention_map, kd_loss, nd_loss, sp_loss
from tiny_models import randomize_bn, tiny_resnet


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
    with pytest.raises(ValueError, match="spatial"):
        at_loss(torch.randn(1, 2, 2, 2), torch.randn(1, 2, 4, 4))


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


def test_ofd_loss_equals_manual_partial_l2_through_the_connectors():
    torch.manual_seed(0)
    teacher, student = randomize_bn(tiny_resnet(True)), tiny_resnet(False)
    d = OFDistiller(teacher, student, loss_factor=1e3)
    assert [c[0].in_channels for c in d.connectors] == [64, 128, 256, 512]
    assert [c[0].out_channels for c in d.connectors] == [256, 512, 1024, 2048]
    x = torch.randn(4, 3, 32, 32)
    d.train()
    out, losses = d(x)
    t_feats, _ = d._t_src(d.t_net, x)
    s_feats, _ = d._s_src(d.s_net, x)
    expected = 0.0
    for i in range(4):
        target = torch.maximum(t_feats[i], d.__getattr__(f"margin{i + 1}").view(1, -1, 1, 1))
        s = d.connectors[i](s_feats[i])
        mask = (s > target) | (target > 0)
        expected = expected + ((s - target) ** 2 * mask).sum() / 2 ** (3 - i)
    torch.testing.assert_close(losses["ofd"], expected / 4 / 1e3, rtol=1e-4, atol=1e-6)
    losses["ofd"].backward()
    assert all(p.grad is None for p in d.t_net.parameters())
    assert d.connectors[0][0].weight.grad is not None


def test_nd_distiller_needs_class_means_and_labels():
    torch.manual_seed(0)
    d = build_distiller("nd", randomize_bn(tiny_resnet(True)), tiny_resnet(False), num_classes=10)
    assert isinstance(d.projection, torch.nn.Linear) and d.projection.in_features == 512
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    with pytest.raises(RuntimeError, match="compute_class_means"):
        d(x, y)
    with pytest.raises(ValueError, match="no training image"):
        d.compute_class_means([(x, y)])
    d.compute_class_means([(x, y), (torch.randn(4, 3, 32, 32), torch.tensor([6, 7, 8, 9]))])
    with torch.no_grad():
        d.t_net.eval()
        emb = torch.flatten(d.t_net.avgpool(d.t_net.layer4(d.t_net.layer3(d.t_net.layer2(d.t_net.layer1(
            d.t_net.maxpool(d.t_net.relu(d.t_net.bn1(d.t_net.conv1(x))))))))), 1)
    torch.testing.assert_close(d.class_means[:6], emb, rtol=1e-4, atol=1e-5)
    out, losses = d(x, y)
    assert set(losses) == {"kd", "nd"} and d.ce_weight == pytest.approx(0.1)
    with pytest.raises(ValueError, match="valid: at, kd, nd, ofd, sp"):
        build_distiller("fitnet", d.t_net, d.s_net)
