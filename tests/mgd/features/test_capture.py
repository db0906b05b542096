import pytest
import torch
import torchvision
from torch import nn

import mgd
from mgd.features import HookFeatures, ProtocolFeatures, StageSpec, builtin_stages

from tiny_models import protocol_copy, randomize_bn, tiny_resnet


@pytest.mark.parametrize("bottleneck", [False, True])
def test_hook_capture_equals_protocol_capture_and_is_pre_relu(bottleneck):
    plain = randomize_bn(tiny_resnet(bottleneck)).eval()
    proto = protocol_copy(plain).eval()
    x = torch.randn(2, 3, 64, 64)
    hooks = HookFeatures(plain, builtin_stages(plain))
    got, out = hooks(plain, x)
    expected, exp_out = ProtocolFeatures(proto)(proto, x)
    assert len(got) == 4
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
        assert (g < 0).any(), "a pre-ReLU feature must contain negative values"
    torch.testing.assert_close(out, exp_out)
    # the model's own output is unchanged by the capture (in-place ReLU switched off, math identical)
    hooks.close()
    torch.testing.assert_close(plain(x), out)
    assert plain.layer1[-1].relu.inplace  # flag restored


def test_builtin_positions_for_torchvision_families():
    r50 = builtin_stages(torchvision.models.resnet50())
    assert [s.module for s in r50] == ["layer1.2.relu", "layer2.3.relu", "layer3.5.relu", "layer4.2.relu"]
    assert [s.bn for s in r50] == ["layer1.2.bn3", "layer2.3.bn3", "layer3.5.bn3", "layer4.2.bn3"]
    assert [s.channels for s in r50] == [256, 512, 1024, 2048]
    r18 = builtin_stages(torchvision.models.resnet18())
    assert [s.bn for s in r18][-1] == "layer4.1.bn2" and [s.channels for s in r18] == [64, 128, 256, 512]
    mb = builtin_stages(torchvision.models.mobilenet_v2())
    assert [s.channels for s in mb] == [144, 192, 384, 960]  # the original's channel counts
    sh = builtin_stages(torchvision.models.shufflenet_v2_x1_0())
    assert [s.channels for s in sh] == [24, 116, 232, 464]


def test_mobilenet_v2_features_are_pre_relu6_and_at_the_original_resolutions():
    net = randomize_bn(torchvision.models.mobilenet_v2()).eval()
    x = torch.randn(1, 3, 224, 224)
    feats, _ = HookFeatures(net, builtin_stages(net))(net, x)
    assert [tuple(f.shape[1:]) for f in feats] == [(144, 28, 28), (192, 28, 28), (384, 14, 14), (960, 7, 7)]
    with torch.no_grad():
        manual = net.features[11].conv[1][1](net.features[11].conv[1][0](net.features[11].conv[0](net.features[:11](x))))
    torch.testing.assert_close(feats[2], manual)
    assert all((f < 0).any() for f in feats)


def test_output_capture_overwritten_in_place_is_an_error():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    hooks = HookFeatures(net, ["1"])
    with pytest.raises(RuntimeError, match="modified in place"):
        hooks(net, torch.randn(2, 3, 8, 8))
    ok = HookFeatures(net, [StageSpec("2", capture="input")])
    feats, _ = ok(net, torch.randn(2, 3, 8, 8))
    assert (feats[0] < 0).any()


def test_missing_layer_is_named():
    with pytest.raises(ValueError, match="'layer9' not found"):
        HookFeatures(tiny_resnet(), ["layer9"], role="teacher")


def test_any_pair_by_naming_layers_with_channels_read_from_modules():
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                            nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
    d = mgd.MGDistiller(teacher, student,
                        teacher_layers=[StageSpec("2", capture="input"), StageSpec("5", capture="input")],
                        teacher_bns=["1", "4"], student_layers=["1", "4"])
    assert d.t_channels == [8, 16] and d.s_channels == [4, 8] and d.groups == [2, 2]
    x = torch.randn(4, 3, 8, 8)
    mgd.mgd_update([x], d)
    _, loss = d(x)
    # by hand: the stage features are the BN outputs; amp keeps the larger-magnitude one of the 2 teachers
    with torch.no_grad():
        t1 = teacher[1](teacher[0](x))
        t2 = teacher[4](teacher[3](teacher[2](t1)))
    s1 = student[1](student[0](x))
    s2 = student[4](student[3](student[2](s1)))
    expected = 0.0
    for i, (t, s, w) in enumerate(((t1, s1, 0.5), (t2, s2, 1.0))):
        inds, sc = d.guided_inds[i], d.s_channels[i]
        pair = torch.stack([t[:, inds[:sc]], t[:, inds[sc:]]], 2)
        picked = pair.gather(2, pair.abs().argmax(2, keepdim=True)).squeeze(2)
        margin = torch.stack([d.margins[i][inds[:sc]], d.margins[i][inds[sc:]]]).mean(0)
        expected = expected + w * mgd.distillation_loss(d.BNs[i](s), picked, margin)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
