"""Every architecture family of cls/ distils with its declared (or built-in) stage positions."""
import pytest
import torch

import mgd
from cls.models import ARCH_NAMES, build_model, default_teacher, stage_specs
from tiny_models import randomize_bn


@pytest.mark.parametrize("student,teacher,size", [
    ("cifar_resnet20_w8", "cifar_resnet20_w32", 32),
    ("wrn_16_1", "wrn_16_4", 32),
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
