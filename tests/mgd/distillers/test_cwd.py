"""CWD (Shu et al., ICCV 2021): the channel-wise divergence by hand and against the paper's formula in float64, float32
under CPU autocast, the distiller on feature maps (torchvision classifiers, connectors) and on a segmenter's logit
maps (DeepLabV3+ ResNet-101 -> ResNet-18)."""
import math

import pytest
import torch
import torchvision
from torch import nn

import mgd
from mgd.distillers.cwd import CWD_SETTINGS
from mgd.losses.cwd import channel_distribution, cwd_loss
from mgd.registry import command_line_options

from autocast_checks import term_under_autocast
from tiny_models import randomize_bn, tiny_resnet

DTYPES = [torch.bfloat16, torch.float16]
LN3 = math.log(3.0)


def hooks_of(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_cwd_loss_by_hand():
    student = torch.zeros(1, 1, 1, 2)  # a uniform channel: (1/2, 1/2)
    teacher = torch.tensor([[[[LN3, 0.0]]]])  # softmax (3/4, 1/4)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert cwd_loss(student, teacher, 1.0).item() == pytest.approx(kl, rel=1e-6)
    # tau 2 on twice the logits: the same distributions, times tau^2
    assert cwd_loss(student, 2 * teacher, 2.0).item() == pytest.approx(4 * kl, rel=1e-6)
    # two images of two channels, two of the four (n, c) maps differ: the sum over (n, c) divided by N * C
    teacher4 = torch.tensor([[[[LN3, 0.0]], [[0.0, 0.0]]], [[[0.0, LN3]], [[0.0, 0.0]]]])
    assert cwd_loss(torch.zeros(2, 2, 1, 2), teacher4, 1.0).item() == pytest.approx(2 * kl / 4, rel=1e-6)
    # each channel's distribution sums to one over its positions
    torch.testing.assert_close(channel_distribution(teacher4).sum(2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="channels"):
        cwd_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="tau must be positive"):
        cwd_loss(student, teacher, 0.0)


def cwd_float64(student, teacher, tau):
    """The paper's Sec. 3.2 written out per image: phi(y_c,i) = exp(y_c,i / T) / sum_i exp(y_c,i / T) over the W*H
    positions, and T^2 / C * sum_c sum_i phi(y^T_c,i) log(phi(y^T_c,i) / phi(y^S_c,i)); the images averaged. In
    float64 Python scalars, each log phi taken as y / T - log sum_i exp(y_i / T) (shifted by the channel's max, so
    that an untrained network's large logits do not overflow)."""
    def log_phi(values):
        top = max(values) / tau
        log_z = top + math.log(sum(math.exp(v / tau - top) for v in values))
        return [v / tau - log_z for v in values]
    n, c = student.shape[:2]
    s, t = student.double().flatten(2).tolist(), teacher.double().flatten(2).tolist()
    per_image = []
    for k in range(n):
        total = 0.0
        for ch in range(c):
            for log_ps, log_pt in zip(log_phi(s[k][ch]), log_phi(t[k][ch])):
                total += math.exp(log_pt) * (log_pt - log_ps)
        per_image.append(tau ** 2 / c * total)
    return sum(per_image) / n


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_loss_is_the_papers_divergence_in_float64(tau):
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 5, 4, 6, generator=gen) * 2, torch.randn(3, 5, 4, 6, generator=gen) * 3
    got = cwd_loss(student, teacher, tau)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(cwd_float64(student, teacher, tau), rel=1e-5)
    # maps of two sizes: the larger average-pooled to the smaller's
    big = torch.randn(3, 5, 8, 12, generator=gen)
    pooled = torch.nn.functional.adaptive_avg_pool2d(big, (4, 6))
    assert cwd_loss(big, teacher, tau).item() == pytest.approx(cwd_float64(pooled, teacher, tau), rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cwd_loss_under_cpu_autocast_is_float32_and_sends_half_gradients(dtype):
    gen = torch.Generator().manual_seed(1)
    student = (torch.randn(4, 16, 9, 9, generator=gen) * 4).to(dtype).requires_grad_()
    teacher = (torch.randn(4, 16, 9, 9, generator=gen) * 4).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        loss = cwd_loss(student, teacher, 4.0)
    exact = student.detach().float().requires_grad_()
    reference = cwd_loss(exact, teacher.float(), 4.0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-3)
    assert reference.item() == pytest.approx(cwd_float64(exact.detach(), teacher.float(), 4.0), rel=1e-5)
    loss.backward()
    reference.backward()
    assert student.grad.dtype == dtype and torch.isfinite(student.grad).all()
    torch.testing.assert_close(student.grad.float(), exact.grad.to(dtype).float(), rtol=1e-3, atol=1e-7)


def _pair():
    torch.manual_seed(0)
    return randomize_bn(tiny_resnet(True)), randomize_bn(tiny_resnet(False), seed=1)


def test_on_features_the_term_is_the_weighted_sum_over_stages_through_the_connectors():
    teacher, student = _pair()
    d = mgd.build_distiller("cwd", teacher, student, tau=2.0, weight=0.5)
    assert d.maps == "features" and d.needs_features and (d.tau, d.weight) == (2.0, 0.5)
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.bias is not None) for c in d.connectors] == [
        (64, 256, (1, 1), True), (128, 512, (1, 1), True), (256, 1024, (1, 1), True), (512, 2048, (1, 1), True)]
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    d.train()
    _, terms = d.forward_train(x)
    with torch.no_grad():
        t_feats, _ = d._t_src(d.t_net, x)
        s_feats, _ = d._s_src(d.s_net, x)
        expected = 0.5 * sum(cwd_float64(nn.functional.conv2d(s, c.weight, c.bias), t, 2.0)
                             for s, t, c in zip(s_feats, t_feats, d.connectors))
    assert set(terms) == {"cwd"} and d.task_weight == 1.0
    assert terms["cwd"].item() == pytest.approx(expected, rel=1e-4)
    d.close()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_term_under_autocast_is_float32_within_1e_3_of_the_float32_term(dtype, monkeypatch):
    teacher, student = _pair()
    d = mgd.build_distiller("cwd", teacher, student).train()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    term, reference = term_under_autocast(d, x, dtype, monkeypatch, "cwd")
    assert term.dtype == torch.float32 and torch.isfinite(term)
    assert term.item() == pytest.approx(reference.item(), rel=1e-3)
    d.close()


@pytest.mark.parametrize("student_arch, stages, widths", [
    ("resnet18", [0, 1, 2, 3], [64, 128, 256, 512]), ("mobilenet_v2", [1, 2, 3], [None, 192, 384, 960])])
def test_default_build_on_torchvision_pairs_distils_the_stage_features(student_arch, stages, widths):
    torch.manual_seed(0)
    teacher = randomize_bn(torchvision.models.resnet50(num_classes=4))
    student = getattr(torchvision.models, student_arch)(num_classes=4)
    d = mgd.build_distiller("cwd", teacher, student)
    assert d.maps == "features" and (d.tau, d.weight) == CWD_SETTINGS["features"] == (1.0, 5.0)
    assert d.stages == stages  # MobileNetV2's first stage (another resolution) is skipped, as for AT and OFD
    assert [getattr(c, "in_channels", None) for c in d.connectors] == widths
    assert [getattr(c, "out_channels", None) for c in d.connectors] == [w and t for w, t in
                                                                         zip(widths, [256, 512, 1024, 2048])]
    x, y = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.arange(2)
    d.train()
    logits, terms = d.forward_train(x, y)
    assert logits.shape == (2, 4) and set(terms) == {"cwd"}
    assert terms["cwd"].dtype == torch.float32 and torch.isfinite(terms["cwd"]) and terms["cwd"] > 0
    terms["cwd"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    connector_params = [p for i in stages for p in d.connectors[i].parameters()]
    assert connector_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in connector_params)
    first = student.conv1.weight if student_arch == "resnet18" else student.features[0][0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert {id(p) for p in connector_params} <= {id(p) for p in d.get_learnable_parameters()}
    d.close()


@pytest.fixture(scope="module")
def seg_pair():
    from seg.models import build_model
    torch.manual_seed(0)
    return randomize_bn(build_model("deeplabv3plus_resnet101", 3)), build_model("deeplabv3plus_resnet18", 3)


def test_on_a_segmenter_the_default_distils_the_logit_maps_with_the_authors_segmentation_setting(seg_pair):
    teacher, student = seg_pair
    d = mgd.build_distiller("cwd", teacher, student)
    assert d.maps == "logits" and not d.needs_features and (d.tau, d.weight) == CWD_SETTINGS["logits"] == (4.0, 3.0)
    assert isinstance(d.connectors[0], nn.Identity) and d.own_state_dict() == {}  # the same 3 classes
    assert hooks_of(teacher) == 0 and hooks_of(student) == 0  # no stage features captured
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    d.train()
    logits, terms = d.forward_train(x)
    assert logits.shape == (2, 3, 64, 64) and set(terms) == {"cwd"}
    with torch.no_grad():
        expected = 3.0 * cwd_float64(logits.detach(), teacher(x), 4.0)
    assert terms["cwd"].item() == pytest.approx(expected, rel=1e-4)
    terms["cwd"].backward()
    assert student.decoder.classifier.weight.grad.abs().sum() > 0
    assert student.backbone.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    student.zero_grad(set_to_none=True)
    d.close()


def test_on_a_segmenter_maps_features_distils_the_paired_positions_through_connectors(seg_pair):
    from seg.positions import pair_positions
    teacher, student = seg_pair
    _, t_specs, s_specs = pair_positions(teacher, student, "backbone", wider_teacher=False)
    d = mgd.build_distiller("cwd", teacher, student, maps="features", teacher_layers=t_specs, student_layers=s_specs)
    assert d.maps == "features" and (d.tau, d.weight) == (1.0, 5.0)
    assert [(c.in_channels, c.out_channels) for c in d.connectors] == [(64, 256), (128, 512), (256, 1024), (512, 2048)]
    d.train()
    _, terms = d.forward_train(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5)))
    assert torch.isfinite(terms["cwd"]) and terms["cwd"] > 0
    terms["cwd"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.connectors.parameters())
    student.zero_grad(set_to_none=True)
    d.close()
    assert hooks_of(teacher) == 0 and hooks_of(student) == 0


def test_options_are_checked_and_offered_as_flags():
    teacher, student = _pair()
    with pytest.raises(ValueError, match="maps='logits' needs a student whose output is one"):
        mgd.build_distiller("cwd", teacher, student, maps="logits")
    with pytest.raises(ValueError, match="maps must be"):
        mgd.build_distiller("cwd", teacher, student, maps="pixels")
    with pytest.raises(ValueError, match="tau must be positive"):
        mgd.build_distiller("cwd", teacher, student, tau=0.0)
    assert hooks_of(teacher) == 0 and hooks_of(student) == 0  # a failed construction leaves no hook
    flags = {o.option: o for o in command_line_options("cwd")}
    assert set(flags) == {"maps", "tau", "weight"} and flags["maps"].default == "auto"
    assert flags["tau"].default is None and "4 on logits, 1 on features" in flags["tau"].help
