"""mgd.discovery: stage positions found from any timm (or torchvision) CNN, with no forward rewrite."""
import logging

import pytest
import torch
import torchvision
from torch import nn

import mgd
from mgd.discovery import default_positions, discover_stages, pair_stages
from mgd.features import HookFeatures, builtin_stages
from mgd.inspect import main as inspect_main
from mgd.margin import NO_MARGIN
from tiny_models import randomize_bn

timm = pytest.importorskip("timm")

#: One model per family the README lists (created untrained: nothing is downloaded).
TIMM_FAMILIES = {"resnet18": "ResNet", "resnet26d": "ResNet-D", "resnext26ts": "ResNeXt", "seresnet18": "SE-ResNet",
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
        if stage.activation is not None:  # the input of a ReLU: negative values are still there
            assert (feat < 0).any(), stage
            bn = model.get_submodule(stage.spec.bn)
            assert isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.num_features == stage.spec.channels
        else:
            assert stage.spec.bn is None and not stage.spec.margin


@pytest.mark.parametrize("name", sorted(TIMM_FAMILIES))
def test_one_mgd_step_on_a_timm_pair_trains_the_student_only(name):
    torch.manual_seed(0)
    teacher, student = (randomize_bn(timm.create_model(name, pretrained=False, num_classes=5), seed)
                        for seed in range(2))
    d = mgd.build_distiller("mgd", teacher, student)
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    d.prepare([(x, y)])
    d.train()
    logits, losses = d.forward_train(x, y)
    loss = nn.functional.cross_entropy(logits, y) + sum(losses.values())
    loss.backward()
    assert torch.isfinite(loss) and losses["distill"] > 0
    assert all(p.grad is None for p in teacher.parameters())
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


@pytest.mark.parametrize("name", ["regnet_x_400mf", "efficientnet_b0", "mobilenet_v3_small", "convnext_tiny"])
def test_torchvision_families_beyond_the_tables_are_discovered(name):
    model = torchvision.models.get_model(name, weights=None)
    assert builtin_stages(model) is None
    stages = discover_stages(model)
    assert [s.reduction for s in stages] == [4, 8, 16, 32]
    if name.startswith("regnet"):  # residual blocks ending in a ReLU: its input, margins from the branch's BN
        assert all(s.activation and s.spec.bn.endswith("f.c.1") for s in stages)


def test_a_torchvision_teacher_with_a_timm_student_pairs_on_reduction():
    t_specs, s_specs = default_positions(torchvision.models.resnet50(),
                                         timm.create_model("mobilenetv3_small_050", pretrained=False))
    assert [s.module for s in t_specs] == [s.module for s in builtin_stages(torchvision.models.resnet50())]
    assert [s.module for s in s_specs] == ["blocks.0", "blocks.1", "blocks.3", "blocks.5"]
    assert default_positions(torchvision.models.resnet50(), torchvision.models.mobilenet_v2()) is None  # tables


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
    assert lines[0].split()[:3] == ["teacher", "stage", "ch"]
    assert lines[2].split() == ["layer1.2.act3", "(input)", "256", "4", "layer1.2.bn3", "|", "blocks.1", "(output)",
                                "24", "4", "10"]
    assert len(lines) == 6 and lines[-1].split()[-1] == "2"  # 2048 // 960
    with pytest.raises(SystemExit) as exit_:
        inspect_main(["timm/resnet50", "no_such_model"])
    assert exit_.value.code == 2 and "unknown model 'no_such_model'" in capsys.readouterr().err
