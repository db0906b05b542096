"""FitNet (Romero et al., ICLR 2015): the hint loss by hand and against the paper's Eq. 3 in float64, float32 under
CPU autocast, the distiller's term through its regressor, and the default build on torchvision pairs."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import mgd
from mgd.losses.fitnet import fitnet_loss
from mgd.registry import command_line_options

from autocast_checks import term_under_autocast
from tiny_models import randomize_bn, tiny_resnet

DTYPES = [torch.bfloat16, torch.float16]


def test_fitnet_loss_by_hand():
    regressed = torch.tensor([[[[1.0, 3.0]], [[0.0, -1.0]]]])  # (1, 2, 1, 2)
    hint = torch.tensor([[[[0.0, 1.0]], [[2.0, -1.0]]]])
    # squared differences 1, 4, 4, 0 over 4 elements
    assert fitnet_loss(regressed, hint).item() == pytest.approx(9 / 4)
    # a 2x2 map against a 1x1 hint: the larger pooled to the smaller (its mean, 1.5) -> (1.5 - 0.5)^2
    big = torch.tensor([[[[1.0, 2.0], [0.0, 3.0]]]])
    assert fitnet_loss(big, torch.tensor([[[[0.5]]]])).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="channels"):
        fitnet_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))


def test_fitnet_loss_is_the_papers_hint_loss_over_half_the_element_count():
    """Eq. 3: L_HT = 1/2 ||u_h - r(v_g)||^2 (a sum), written out in float64; the code's mean times numel / 2."""
    gen = np.random.default_rng(0)
    u, r = gen.normal(size=(3, 5, 4, 6)), gen.normal(size=(3, 5, 4, 6)) * 2 + 0.5
    paper = 0.5 * sum((u[idx] - r[idx]) ** 2 for idx in np.ndindex(*u.shape))
    got = fitnet_loss(torch.tensor(r), torch.tensor(u))
    assert got.dtype == torch.float32
    assert got.item() * u.size / 2 == pytest.approx(paper, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fitnet_loss_under_cpu_autocast_is_float32_and_sends_half_gradients(dtype):
    gen = torch.Generator().manual_seed(0)
    regressed = torch.randn(4, 16, 7, 7, generator=gen).to(dtype).requires_grad_()
    hint = (torch.randn(4, 16, 7, 7, generator=gen) * 3).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        loss = fitnet_loss(regressed, hint)
    exact = regressed.detach().float().requires_grad_()
    reference = F.mse_loss(exact, hint.float())
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference.item(), rel=1e-3)
    loss.backward()
    reference.backward()
    assert regressed.grad.dtype == dtype
    torch.testing.assert_close(regressed.grad.float(), exact.grad.to(dtype).float(), rtol=1e-3, atol=1e-6)


def _pair():
    torch.manual_seed(0)
    return randomize_bn(tiny_resnet(True)), randomize_bn(tiny_resnet(False), seed=1)


def test_the_term_is_the_weighted_mse_of_the_regressed_guided_layer_to_the_hint():
    teacher, student = _pair()
    d = mgd.build_distiller("fitnet", teacher, student, weight=7.0)
    regressor = d.regressor
    assert [type(m) for m in regressor] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert (regressor[0].in_channels, regressor[0].out_channels, regressor[0].kernel_size) == (128, 512, (1, 1))
    assert regressor[0].bias is not None  # ConvReg's conv keeps its bias
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    d.train()
    _, terms = d.forward_train(x)
    with torch.no_grad():
        t_feats, _ = d._t_src(d.t_net, x)
        s_feats, _ = d._s_src(d.s_net, x)
        # by hand: conv, BN with the batch's statistics, ReLU, on the student's post-ReLU layer2 output
        z = F.conv2d(torch.relu(s_feats[1]), regressor[0].weight, regressor[0].bias)
        mean, var = z.mean((0, 2, 3), keepdim=True), z.var((0, 2, 3), unbiased=False, keepdim=True)
        bn = (z - mean) / torch.sqrt(var + regressor[1].eps) * regressor[1].weight.view(1, -1, 1, 1) \
            + regressor[1].bias.view(1, -1, 1, 1)
        expected = 7.0 * ((torch.relu(bn) - torch.relu(t_feats[1])) ** 2).mean()
    assert set(terms) == {"fitnet"} and d.task_weight == 1.0
    torch.testing.assert_close(terms["fitnet"], expected, rtol=1e-4, atol=1e-6)
    d.close()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_term_under_autocast_is_float32_within_1e_3_of_the_float32_term(dtype, monkeypatch):
    teacher, student = _pair()
    d = mgd.build_distiller("fitnet", teacher, student).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    term, reference = term_under_autocast(d, x, dtype, monkeypatch, "fitnet")
    assert term.dtype == torch.float32 and torch.isfinite(term)
    assert term.item() == pytest.approx(reference.item(), rel=1e-3)
    d.close()


@pytest.mark.parametrize("student_arch, beyond, width", [("resnet18", "layer3", 128),
                                                       ("mobilenet_v2", "features.8", 192)])
def test_default_build_on_torchvision_pairs_trains_the_guided_layers_and_the_regressor(student_arch, beyond, width):
    """ResNet-50's layer2 is the hint; the guided layer is ResNet-18's layer2 or MobileNetV2's 28x28 expansion in
    features[7] (the built-in positions)."""
    torch.manual_seed(0)
    teacher = randomize_bn(torchvision.models.resnet50(num_classes=4))
    student = getattr(torchvision.models, student_arch)(num_classes=4)
    d = mgd.build_distiller("fitnet", teacher, student)
    assert d.hint_layer == 2 and d.weight == 100.0
    assert (d.regressor[0].in_channels, d.regressor[0].out_channels) == (width, 512)  # ResNet-50's layer2
    x, y = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.arange(2)
    d.train()
    logits, terms = d.forward_train(x, y)
    assert logits.shape == (2, 4) and set(terms) == {"fitnet"}
    assert terms["fitnet"].dtype == torch.float32 and torch.isfinite(terms["fitnet"]) and terms["fitnet"] > 0
    terms["fitnet"].backward()  # the hint term alone: up to the guided layer, not beyond it
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.regressor.parameters())
    first = student.conv1.weight if student_arch == "resnet18" else student.features[0][0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.get_submodule(beyond).parameters())
    learnable = {id(p) for p in d.get_learnable_parameters()}
    assert {id(p) for p in d.regressor.parameters()} <= learnable
    assert {k.split(".")[0] for k in d.own_state_dict()} == {"regressor"}
    d.close()


def test_hint_layer_chooses_the_position_and_is_a_flag():
    teacher, student = _pair()
    d = mgd.build_distiller("fitnet", teacher, student, hint_layer=3)
    assert (d.regressor[0].in_channels, d.regressor[0].out_channels) == (256, 1024)
    d.close()
    for bad in (0, 5, 2.5):
        with pytest.raises(ValueError, match="hint_layer must be a stage position from 1 to 4"):
            mgd.build_distiller("fitnet", teacher, student, hint_layer=bad)
    flags = {o.option: o for o in command_line_options("fitnet")}
    assert set(flags) == {"weight", "hint_layer"} and flags["hint_layer"].default == 2
    assert flags["weight"].default == 100.0 and "mdistiller" in flags["weight"].help
