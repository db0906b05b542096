"""Segmentation networks for seg/: DeepLabV3+ on torchvision backbones (the OFD code's setting) and
torchvision's own segmentation models, each returning logits at the input resolution.

DeepLabV3+ (Chen et al., ECCV 2018) as in OFD's segmentation code (clovaai/overhaul-distillation,
Segmentation/modeling): a backbone at output stride 16 (the last stride-2 stage dilated by 2), ASPP with rates
6, 12, 18 (torchvision's :class:`~torchvision.models.segmentation.deeplabv3.ASPP`), and a decoder that
reduces the stride-4 features to 48 channels, concatenates them with the upsampled ASPP output and applies two
3x3 conv + BN + ReLU (dropout 0.5, 0.1) before the 1x1 classifier. Backbones are created untrained
(``weights=None``); ImageNet weights come only from a local file (``backbone_weights``), never downloaded.

torchvision's models (``deeplabv3_resnet50`` ...) are built with ``weights=None, weights_backbone=None`` and no
auxiliary head; their forward is not rewritten: a forward hook replaces their ``{"out": logits}`` dict by the
logits, so their state dicts keep torchvision's keys (torchvision checkpoints load as they are).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP

__all__ = ["DeepLabV3Plus", "Decoder", "MODEL_NAMES", "build_model", "dilate_", "main_output"]

logger = logging.getLogger("seg")


def dilate_(module: nn.Module, dilation: int = 2) -> nn.Module:
    """Turn a stride-2 stage into a dilated one, in place: every stride-2 convolution gets stride 1 and every
    convolution larger than 1x1 gets ``dilation`` (with the padding that keeps the size). The output stride
    halves while each conv keeps its weights. (torchvision's ``replace_stride_with_dilation`` does this for
    Bottleneck ResNets only; its BasicBlock refuses dilation, which OFD's ResNet-18 students need.)"""
    for conv in module.modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        if conv.stride == (2, 2):
            conv.stride = (1, 1)
        if conv.kernel_size[0] > 1:
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation * (conv.kernel_size[0] - 1) // 2, dilation * (conv.kernel_size[1] - 1) // 2)
    return module


class Decoder(nn.Module):
    """DeepLabV3+'s decoder (OFD's Segmentation/modeling/decoder.py): low-level features -> 48 channels,
    concatenated with the upsampled ASPP output, two 3x3 conv-BN-ReLU (256 channels), 1x1 classifier.
    ``fuse.5`` / ``fuse.6`` are the BN and ReLU of the last conv: OFD's "decoder" distillation position."""

    def __init__(self, low_channels: int, num_classes: int, aspp_channels: int = 256) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(low_channels, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU())
        self.fuse = nn.Sequential(
            nn.Conv2d(aspp_channels + 48, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Dropout(0.1))
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.reduce(low)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([x, low], dim=1)))


class DeepLabV3Plus(nn.Module):
    """``backbone`` returns {"low": stride-4 features, "out": stride-16 features}; logits at input size."""

    def __init__(self, backbone: nn.Module, low_channels: int, high_channels: int, num_classes: int,
                 atrous_rates=(6, 12, 18)) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(high_channels, atrous_rates)
        self.decoder = Decoder(low_channels, num_classes)
        for m in list(self.aspp.modules()) + list(self.decoder.modules()):  # OFD's (and DeepLab's) head init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(images)
        x = self.decoder(self.aspp(feats["out"]), feats["low"])
        return F.interpolate(x, size=images.shape[-2:], mode="bilinear", align_corners=False)


def _load_backbone(net: nn.Module, path: Optional[str], strip: str = "") -> None:
    """ImageNet weights of the torchvision classifier from a local state dict (the classifier's keys are
    ignored, ``strip`` is removed from the front of the others); strict otherwise."""
    if not path:
        return
    from mgd.engine import load_backbone_weights, read_weights
    state = {k[len(strip):] if strip and k.startswith(strip) else k: v
             for k, v in read_weights(path, "--pretrained-backbone").items()}
    load_backbone_weights(net, state, "--pretrained-backbone", path, skip=("fc.", "classifier."))


def _resnet_deeplab(depth: int) -> Callable[[int, Optional[str]], nn.Module]:
    def build(num_classes: int, backbone_weights: Optional[str] = None) -> nn.Module:
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        _load_backbone(net, backbone_weights)
        dilate_(net.layer4)  # output stride 16
        backbone = IntermediateLayerGetter(net, return_layers={"layer1": "low", "layer4": "out"})
        expansion = 4 if depth >= 50 else 1
        return DeepLabV3Plus(backbone, 64 * expansion, 512 * expansion, num_classes)
    return build


def _mobilenet_v2_deeplab(num_classes: int, backbone_weights: Optional[str] = None) -> nn.Module:
    """MobileNetV2 without its last 1x1 conv (320 channels into ASPP, 24 stride-4 channels into the decoder,
    as OFD's backbone); features[14:] (the 160- and 320-channel groups) dilated for output stride 16."""
    net = torchvision.models.mobilenet_v2(weights=None)
    _load_backbone(net, backbone_weights)
    features = net.features[:-1]
    dilate_(features[14:])
    backbone = IntermediateLayerGetter(features, return_layers={"3": "low", "17": "out"})
    return DeepLabV3Plus(backbone, 24, 320, num_classes)


def main_output(module: nn.Module, inputs, output):
    """Forward hook: a torchvision segmentation model's {"out": logits, ...} becomes the logits."""
    return output["out"] if isinstance(output, dict) else output


def _torchvision(name: str) -> Callable[[int, Optional[str]], nn.Module]:
    def build(num_classes: int, backbone_weights: Optional[str] = None) -> nn.Module:
        net = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes,
                                           aux_loss=False)
        if backbone_weights:
            # the backbone is the classifier's trunk: ResNet keeps its names, MobileNetV3 loses "features."
            _load_backbone(net.backbone, backbone_weights, strip="features.")
        net.register_forward_hook(main_output)
        return net
    return build


_BUILDERS: Dict[str, Callable[[int, Optional[str]], nn.Module]] = {
    "deeplabv3plus_resnet18": _resnet_deeplab(18),
    "deeplabv3plus_resnet50": _resnet_deeplab(50),
    "deeplabv3plus_resnet101": _resnet_deeplab(101),
    "deeplabv3plus_mobilenet_v2": _mobilenet_v2_deeplab,
    **{name: _torchvision(name) for name in ("deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50",
                                             "fcn_resnet101", "lraspp_mobilenet_v3_large",
                                             "deeplabv3_mobilenet_v3_large")},
}
#: Every model name seg/ builds.
MODEL_NAMES: List[str] = sorted(_BUILDERS)


def build_model(name: str, num_classes: int, backbone_weights: Optional[str] = None) -> nn.Module:
    """The untrained model ``name`` for ``num_classes`` classes (ValueError listing the valid names);
    ``backbone_weights``: a local state dict of the ImageNet classifier the backbone comes from."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    return _BUILDERS[name](num_classes, backbone_weights)
