"""mgd.features.discovery: stage positions found from any timm (or torchvision) CNN, with no forward rewrite."""
import logging

import pytest
import torch
import torchvision
from torch import nn

import mgd
from mgd.features.discovery import ACTIVATIONS, default_positions, discover_stages, pair_stages
from mgd.features import HookFeatures, builtin_stages
from mgd.tools.stages import main as inspect_main
from mgd.losses.ofd import NO_MARGIN
from tiny_models import randomize_bn

timm = pytest.importorskip("timm")

#: One model per family the README lists (created untrained: nothing is downloaded).
TIMM_FAMILIES = {"resnet18": "ResNet", "resnet26d": "ResNet-D", "resnext50_32x4d": "ResNeXt", "seresnet18": "SE-ResNet",
                 "regnetx_002": "RegNetX", "regnety_002": "RegNetY", "mobilenetv2_050": "MobileNetV2",
                 "mobilenetv3_small_050": "MobileNetV3", "efficientnet_b0": "EfficientNet",
                 "efficientnet_lite0": "EfficientNet-Lite", "densenet121": "DenseNet", "convnext_atto": "ConvNeXt"}


def _images(n=2, size=64):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", sorted(TIMM_FAMILIES))
def test_timm_stages_are_pre_activation_with_feature_infos_channels_and_strides(name):
    model = randomize_bn(timm.create_model(name, pretrained=False, num_classes=5))  # as a trained net's BNs
    stages = discover_stages(model)
    expected = [(d["num_chs"], d["reduction"]) for d in model.feature_info if d["reduction"] >= 4]
    assert [(s.spec.channels, s.reduction) for s in stages] == expected
    model.eval()
    feats, _ = HookFeatures(model, [s.spec for s in stages])(model, _images())
    for stage, feat in zip(stages, feats):
        assert feat.shape[1] == stage.spec.channels and feat.shape[-1] == 64 // stage.reduction
        if stage.activation is not None:  # the input of the activation: negative values are still there
            assert (feat < 0).any(), stage
        relu = stage.activation is not None and isinstance(model.get_submodule(stage.activation), ACTIVATIONS)
        if relu:  # margins from the BatchNorm that feeds it, in the activation's own block
            bn = model.get_submodule(stage.spec.bn)
            assert isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.num_features == stage.spec.channels
            assert stage.spec.bn.rsplit(".", 1)[0].startswith(stage.activation.rsplit(".", 2)[0])
        else:
            assert stage.spec.bn is None and not stage.spec.margin


@pytest.fixture(scope="module")
def resnet50_teacher():
    return randomize_bn(timm.create_model("resnet50", pretrained=False, num_classes=5), seed=7)


@pytest.mark.parametrize("name", sorted(TIMM_FAMILIES))
def test_one_mgd_step_from_a_resnet50_teacher_trains_the_student_only(name, resnet50_teacher):
    torch.manual_seed(0)
    teacher, student = resnet50_teacher, randomize_bn(timm.create_model(name, pretrained=False, num_classes=5))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = mgd.build_distiller("mgd", teacher, student)
    assert all(tc >= sc for tc, sc in zip(d.t_channels, d.s_channels)) and len(d.stages) >= 2
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    d.prepare([(x, y)])
    d.train()
    logits, losses = d.forward_train(x, y)
    loss = nn.functional.cross_entropy(logits, y) + sum(losses.values())
    loss.backward()
    assert torch.isfinite(loss) and losses["distill"] > 0
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())  # weights and BN statistics
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
    assert sum(p.grad is not None for p in student.parameters()) > 0
    no_margin = [i for i, s in enumerate(d._t_src.stages) if not s.margin]
    assert all(bool((d.margins[i] == NO_MARGIN).all()) for i in no_margin)
    d.close()


def test_timm_resnet50_and_torchvision_resnet50_give_the_same_positions():
    tv = torchvision.models.resnet50().eval()
    tm = timm.create_model("resnet50", pretrained=False).eval()
    tm.load_state_dict(tv.state_dict())  # the same parameter names
    found = discover_stages(tm)
    assert [s.spec.bn for s in found] == [s.bn for s in builtin_stages(tv)] == \
        [f"layer{i}.{n}.bn3" for i, n in zip(range(1, 5), (2, 3, 5, 2))]
    x = _images()
    tm_feats, _ = HookFeatures(tm, [s.spec for s in found])(tm, x)
    tv_feats, _ = HookFeatures(tv, builtin_stages(tv))(tv, x)
    for a, b in zip(tm_feats, tv_feats):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name,channels", [("regnet_x_400mf", [32, 64, 160, 400]),
                                           ("efficientnet_b0", [24, 40, 112, 320]),  # not the 1x1 head conv
                                           ("mobilenet_v3_small", [16, 24, 48, 96]),
                                           ("convnext_tiny", [96, 192, 384, 768])])
def test_torchvision_families_beyond_the_tables_are_discovered(name, channels):
    model = torchvision.models.get_model(name, weights=None)
    assert builtin_stages(model) is None
    stages = discover_stages(model)
    assert [s.reduction for s in stages] == [4, 8, 16, 32] and [s.spec.channels for s in stages] == channels
    if name.startswith("regnet"):  # residual blocks ending in a ReLU: its input, margins from the branch's BN
        assert all(s.activation and s.spec.bn.endswith("f.c.1") for s in stages)


def test_discovery_leaves_modes_and_the_global_rng_as_they_were_and_finds_wrapped_backbones():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = timm.create_model("resnet18", pretrained=False)

        def forward(self, x):
            return self.backbone(x)
    model = Wrapper().train()
    model.backbone.bn1.eval()  # a frozen BN
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    stages = discover_stages(model)
    assert torch.equal(torch.rand(2), expected)
    assert model.training and not model.backbone.bn1.training and model.backbone.layer1.training
    assert [s.spec.module for s in stages] == [f"backbone.layer{i}.1.act2" for i in range(1, 5)]
    trunk_only = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])  # a Sequential root
    assert [s.spec.module for s in discover_stages(trunk_only)] == [f"{i}.1.relu" for i in range(4, 8)]
    with pytest.raises(ValueError, match="only backbone.layer4.1.relu"):  # one stage is no distillation plan
        class TV(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = torchvision.models.resnet18()

            def forward(self, x):
                return self.backbone(x)
        discover_stages(TV())


def test_stages_ending_in_another_activation_are_captured_before_it_without_margin():
    stages = discover_stages(timm.create_model("resnext26ts", pretrained=False))  # SiLU after each residual sum
    assert stages[0].spec.module.endswith(".act") and stages[0].spec.capture == "input"
    assert stages[0].spec.bn is None and not stages[0].spec.margin  # OFD's margin needs a ReLU


def test_a_torchvision_teacher_with_a_timm_student_pairs_on_reduction():
    t_specs, s_specs = default_positions(torchvision.models.resnet50(),
                                         timm.create_model("mobilenetv3_small_050", pretrained=False))
    assert [s.module for s in t_specs] == [s.module for s in builtin_stages(torchvision.models.resnet50())]
    assert [s.module for s in s_specs] == ["blocks.0", "blocks.1", "blocks.3", "blocks.5.0.bn1.act"]  # Hardswish
    assert default_positions(torchvision.models.resnet50(), torchvision.models.mobilenet_v2()) is None  # tables


def test_several_stages_at_one_reduction_keep_the_deepest_and_say_so(caplog):
    with caplog.at_level(logging.WARNING, logger="mgd"):
        _, student = default_positions(timm.create_model("resnet50", pretrained=False),
                                       torchvision.models.mobilenet_v2())
    assert [s.module for s in student] == ["features.7.conv.0.2", "features.11.conv.1.2", "features.17.conv.1.2"]
    assert "student features.4.conv.1.2 (a deeper stage at reduction 8)" in caplog.text


def test_only_mgd_needs_a_teacher_at_least_as_wide_as_its_student():
    narrow, wide = (timm.create_model(n, pretrained=False) for n in ("mobilenetv3_small_050", "resnet18"))
    d = mgd.build_distiller("ofd", narrow, wide)  # OFD's connector maps any widths
    assert d.s_channels == [64, 128, 256, 512] and d.t_channels == [8, 16, 24, 288]
    with pytest.raises(ValueError, match="narrower than student"):
        mgd.build_distiller("mgd", narrow, wide)


def test_stages_without_a_partner_or_narrower_than_the_student_are_dropped_with_a_warning(caplog):
    big = discover_stages(timm.create_model("resnet50", pretrained=False))
    small = discover_stages(timm.create_model("resnet18", pretrained=False))
    with caplog.at_level(logging.WARNING, logger="mgd"):
        teacher, student = pair_stages(big, small[1:])
    assert [t.reduction for t in teacher] == [s.reduction for s in student] == [8, 16, 32]
    assert "teacher layer1.2.act3 (reduction 4: no student stage)" in caplog.text
    with pytest.raises(ValueError, match="narrower than student"):
        pair_stages(small, big)


def test_inspect_prints_the_stage_table(capsys):
    inspect_main(["timm/resnet50", "timm/mobilenetv3_large_100"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["teacher", "stage", "act", "ch"]
    assert lines[2].split() == ["layer1.2.act3", "(input)", "ReLU", "256", "4", "layer1.2.bn3", "|", "blocks.1",
                                "(output)", "-", "24", "4", "10"]
    assert len(lines) == 6 and lines[-1].split()[-1] == "2"  # 2048 // 960
    with pytest.raises(SystemExit) as exit_:
        inspect_main(["timm/resnet50", "no_such_model"])
    assert exit_.value.code == 2 and "unknown model 'no_such_model'" in capsys.readouterr().err
