"""ResNet-FPN backbones (RetinaNet's P3-P7, Faster R-CNN's P2-P6) whose residual blocks expose their pre-ReLU
output to hooks, with the original's ENABLE_STAGE_LAST_NORM (:mod:`mgd_d2.stage_norm`).

Detectron2's BasicBlock and BottleneckBlock end with a functional ``F.relu_``, so the residual sum (the
pre-ReLU stage feature MGD distils) is invisible to hooks and overwritten in place. The subclasses here
run the same computation with the last ReLU as an ``nn.ReLU`` module (not in place); parameter names and
checkpoints are unchanged, so any Detectron2 ResNet checkpoint loads.
"""
from __future__ import annotations

from typing import List

import torch.nn.functional as F
from torch import nn

from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone, build_retinanet_resnet_fpn_backbone
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock

from mgd.features import StageSpec

from .stage_norm import enable_stage_last_norm


class PreReLUBasicBlock(BasicBlock):
    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.out_relu(out + shortcut)


class PreReLUBottleneckBlock(BottleneckBlock):
    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.out_relu(out + shortcut)


_PRE_RELU = {BasicBlock: PreReLUBasicBlock, BottleneckBlock: PreReLUBottleneckBlock}


def _expose_pre_relu(resnet: nn.Module) -> None:
    for stage in resnet.stages:
        for block in stage:
            if type(block) not in _PRE_RELU:
                raise TypeError(f"unsupported ResNet block {type(block).__name__} for MGD's pre-ReLU capture")
            block.__class__ = _PRE_RELU[type(block)]
            block.add_module("out_relu", nn.ReLU(inplace=False))


def _prepare(backbone: nn.Module, cfg) -> nn.Module:
    _expose_pre_relu(backbone.bottom_up)
    if cfg.MODEL.RESNETS.get("ENABLE_STAGE_LAST_NORM", False):
        enable_stage_last_norm(backbone.bottom_up, cfg.MODEL.RESNETS.get("STAGE_LAST_NORM", "GN"))
    return backbone


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_prerelu_fpn_backbone(cfg, input_shape):
    """Detectron2's RetinaNet ResNet-FPN backbone (P3-P7), with pre-ReLU-capturable residual blocks."""
    return _prepare(build_retinanet_resnet_fpn_backbone(cfg, input_shape), cfg)


@BACKBONE_REGISTRY.register()
def build_resnet_prerelu_fpn_backbone(cfg, input_shape):
    """Detectron2's Faster R-CNN ResNet-FPN backbone (P2-P6), with pre-ReLU-capturable residual blocks."""
    return _prepare(build_resnet_fpn_backbone(cfg, input_shape), cfg)


def resnet_stage_specs(resnet: nn.Module) -> List[StageSpec]:
    """C2-C5: the input of each stage's last block's ReLU, with the norm of its last conv for the margins."""
    specs = []
    for name in ("res2", "res3", "res4", "res5"):
        stage = getattr(resnet, name)
        last = len(stage) - 1
        conv = "conv3" if isinstance(stage[last], BottleneckBlock) else "conv2"
        if not hasattr(stage[last], "out_relu"):
            raise TypeError("the backbone's blocks do not expose their pre-ReLU output; use MODEL.BACKBONE.NAME "
                            "build_retinanet_resnet_prerelu_fpn_backbone or build_resnet_prerelu_fpn_backbone")
        specs.append(StageSpec(f"{name}.{last}.out_relu", capture="input", bn=f"{name}.{last}.{conv}.norm",
                               channels=getattr(stage[last], conv).out_channels))
    return specs


def stage_specs(bottom_up: nn.Module) -> List[StageSpec]:
    """The four distilled positions of a bottom-up network: its own ``stage_specs()`` (the MobileNetV2 backbone of
    :mod:`mgd_d2.mobilenet`), else a ResNet's C2-C5 (:func:`resnet_stage_specs`)."""
    own = getattr(bottom_up, "stage_specs", None)
    return own() if callable(own) else resnet_stage_specs(bottom_up)
