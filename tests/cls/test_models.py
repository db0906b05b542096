"""Every architecture family of cls/ distils with its declared (or built-in) stage positions; the CIFAR
tables' models match their stage records and the papers' sizes."""
import pytest
import torch
from torch import nn

import mgd
from cls.models import ARCH_NAMES, build_model, default_teacher, stage_specs
from mgd.distillers import classifier_layer
from mgd.features import HookFeatures
from tiny_models import randomize_bn

#: One model per family of the CIFAR tables (the smallest depth where depth is a parameter) and the
#: side of its stage features on a 32 px input.
CIFAR_FAMILIES = [
    ("cifar_resnet20", [32, 16, 8]),
    ("cifar_resnet8x4", [32, 16, 8]),
    ("wrn_16_2", [32, 16, 8]),
    ("wrn_40_1", [32, 16, 8]),
    ("cifar_mobilenet_v2_x0_5", [16, 8, 4, 2]),
    ("cifar_shufflenet_v1", [16, 8, 4]),
    ("cifar_shufflenet_v2", [16, 8, 4]),
    ("pyramidnet8_a16", [32, 16, 8]),
    ("pyramidnet11_a24_bottleneck", [32, 16, 8]),
]
#: Every name of the tables (CRD / DKD, OFD's settings a-f).
CIFAR_TABLES = ["cifar_resnet20", "cifar_resnet32", "cifar_resnet56", "cifar_resnet110", "cifar_resnet8x4",
                "cifar_resnet32x4", "wrn_16_2", "wrn_16_4", "wrn_28_2", "wrn_28_4", "wrn_40_1", "wrn_40_2",
                "cifar_mobilenet_v2_x0_5", "cifar_shufflenet_v1", "cifar_shufflenet_v2", "pyramidnet110_a84",
                "pyramidnet200_a240_bottleneck"]


@pytest.mark.parametrize("arch,sides", CIFAR_FAMILIES)
def test_cifar_stage_features_match_their_record(arch, sides):
    """Each captured stage has the record's channels (its BN's width), is pre-ReLU, and halves in size
    from stage to stage; the classifier is the last nn.Linear, fed by the pooled embedding."""
    model = randomize_bn(build_model(arch, 10)).eval()
    specs = stage_specs(model)
    hooks = HookFeatures(model, specs)
    with torch.no_grad():
        feats, out = hooks(model, torch.randn(2, 3, 32, 32))
    hooks.close()
    assert out.shape == (2, 10)
    assert [f.shape[-1] for f in feats] == [f.shape[-2] for f in feats] == sides
    for spec, channels, f in zip(specs, hooks.channels(), feats):
        bn = model.get_submodule(spec.bn)
        assert isinstance(bn, nn.BatchNorm2d) and f.shape[1] == channels == bn.num_features, spec
        assert spec.channels in (None, channels)
        assert (f < 0).any() and (f > 0).any(), f"{spec.module} is not pre-ReLU"
    fc = model.get_submodule(classifier_layer(model))
    assert classifier_layer(model) == "fc" and fc.out_features == 10


def test_cifar_tables_models_build_with_the_papers_sizes():
    """Every model of the tables builds and classifies a 32 px batch; the sizes OFD's CIFAR-100 README
    lists (in millions, cut to two decimals) for its settings a-f."""
    sizes = {}
    for arch in CIFAR_TABLES:
        model = build_model(arch, 100).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100), arch
        sizes[arch] = int(sum(p.numel() for p in model.parameters()) / 1e4) / 100
    ofd = {"wrn_28_4": 5.87, "wrn_16_4": 2.77, "wrn_28_2": 1.47, "wrn_16_2": 0.70, "cifar_resnet56": 0.86,
           "pyramidnet200_a240_bottleneck": 26.84, "pyramidnet110_a84": 3.91}
    assert {arch: sizes[arch] for arch in ofd} == ofd
    # CRD's x4 pair: a 32-channel stem and stages 64-128-256
    model = build_model("cifar_resnet8x4", 100)
    assert (model.conv1.out_channels, model.layer1[0].conv1.out_channels, model.fc.in_features) == (32, 64, 256)


@pytest.mark.parametrize("student,teacher,size", [
    ("cifar_resnet20_w8", "cifar_resnet20_w32", 32),
    ("wrn_16_1", "wrn_16_4", 32),
    ("cifar_resnet8x4", "cifar_resnet32x4", 32),
    ("pyramidnet8_a16", "pyramidnet11_a24_bottleneck", 32),
    ("mobilenet_v1", "resnet50", 64),
    ("shufflenet_v2_x0_5", "resnet50", 64),
])
def test_pairs_distil_with_pre_relu_features(student, teacher, size):
    torch.manual_seed(0)
    t = randomize_bn(build_model(teacher, 10)).eval()
    s = build_model(student, 10)
    d = mgd.MGDistiller(t, s, teacher_layers=stage_specs(t), student_layers=stage_specs(s))
    x = torch.randn(4, 3, size, size)
    mgd.mgd_update([x], d)
    feats, _ = d.teacher_features(lambda: t(x))
    assert all((f < 0).any() for f in feats), "teacher stage features must be pre-ReLU"
    d.train()
    out, loss = d(x)
    assert out.shape == (4, 10) and torch.isfinite(loss)
    loss.backward()  # every distilled stage contributes: its student-side norm layer receives a gradient
    for i in d.stages:
        assert d.BNs[i].weight.grad is not None and d.BNs[i].weight.grad.abs().sum() > 0, f"stage {i}"


def test_names_defaults_and_errors():
    assert default_teacher("mobilenet_v1") == "resnet50" and default_teacher("resnet50") == "resnet152"
    assert default_teacher("cifar_resnet20_w8") == "cifar_resnet20_w32" and default_teacher("wrn_16_2") == "wrn_16_8"
    assert build_model("shufflenet_v2", 10).fc.out_features == 10
    with pytest.raises(ValueError, match="valid: resnet18"):
        build_model("vgg16", 10)
    with pytest.raises(ValueError, match="6n\\+2"):
        build_model("cifar_resnet21", 10)
    assert "mobilenet_v1" in ARCH_NAMES
    assert default_teacher("cifar_resnet8x4") == "cifar_resnet32x4" and default_teacher("cifar_resnet32x4") is None
    assert default_teacher("cifar_shufflenet_v2") == default_teacher("cifar_shufflenet_v1") == "cifar_resnet32x4"
    assert default_teacher("pyramidnet110_a84") == "pyramidnet200_a240_bottleneck"
    assert default_teacher("cifar_mobilenet_v2_x0_5") == "cifar_resnet50" and default_teacher("cifar_resnet50") is None
    for bad, match in (("pyramidnet12_a84", "6n\\+2"), ("pyramidnet100_a84_bottleneck", "9n\\+2"),
                       ("cifar_shufflenet_v2_x3_0", "valid:"), ("cifar_resnet8x2", "valid:")):
        with pytest.raises(ValueError, match=match):
            build_model(bad, 10)


def test_crd_cifar_resnet50_is_torchvisions_with_a_32px_stem():
    """CRD's ResNet-50 teacher of the ResNet-50 -> MobileNetV2 row: 23.71M parameters at 100 classes (CRD's
    table), four stages at 32-16-8-4 px on a 32 px input, found by the library's torchvision positions."""
    from mgd.features.builtin import builtin_stages
    model = randomize_bn(build_model("cifar_resnet50", 100)).eval()
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 23.71
    hooks = HookFeatures(model, builtin_stages(model))
    with torch.no_grad():
        feats, out = hooks(model, torch.randn(2, 3, 32, 32))
    hooks.close()
    assert out.shape == (2, 100) and [f.shape[-1] for f in feats] == [32, 16, 8, 4]
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048] and all((f < 0).any() for f in feats)
