"""Architecture registry for the classification scripts: names -> models, stage positions, teachers.

torchvision families use the library's built-in stage positions; the models defined here say theirs in
``stage_specs()``. Names:

* torchvision: resnet18/34/50/101/152, wide_resnet50_2, mobilenet_v2, shufflenet_v2 (= _x1_0),
  shufflenet_v2_x0_5 / _x1_0 / _x1_5 / _x2_0;
* mobilenet_v1 (written here, as torchvision has none);
* small inputs (28-32 px), the models of the CIFAR distillation tables:
  cifar_resnet<depth>[_w<width>] (ResNet-20/32/56/110: cifar_resnet20 ... cifar_resnet110; cifar_resnet20_w8),
  cifar_resnet8x4 / cifar_resnet32x4 (CRD's pair), cifar_resnet50 (CRD's bottleneck ResNet-50 teacher,
  torchvision's with a 32 px stem), wrn_<depth>_<k> (e.g. wrn_16_2, wrn_28_4, wrn_40_2),
  cifar_mobilenet_v2_x0_5 (CRD's MobileNetV2 student; _x1_0 too), cifar_shufflenet_v1,
  cifar_shufflenet_v2 (= _x1_0; _x0_5 / _x1_5 / _x2_0), pyramidnet<depth>_a<alpha>[_bottleneck]
  (OFD's pyramidnet200_a240_bottleneck teacher and pyramidnet110_a84 student);
* timm/<name>: any timm CNN, created untrained; the library finds its stages (:mod:`mgd.features.discovery`).
"""
from __future__ import annotations

import os
import re
from typing import List, Optional

import torch
import torchvision
from torch import nn

from mgd.features import StageSpec

from .cifar import CifarResNet, WideResNet, cifar_bottleneck_resnet50
from .cifar_mobilenet import CifarMobileNetV2
from .cifar_shufflenet import SHUFFLENET_V2_WIDTHS, CifarShuffleNetV1, CifarShuffleNetV2
from .mobilenet_v1 import MobileNetV1
from .pyramidnet import PyramidNet

__all__ = ["build_model", "stage_specs", "default_teacher", "ARCH_NAMES", "cached_weights_path"]

_TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "mobilenet_v2",
                "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
                # transformer teachers for the logit methods and ND (224 px inputs): the KD++ ViT -> ResNet table
                "vit_b_16", "vit_b_32", "swin_t", "swin_s", "swin_b"]
_ALIASES = {"shufflenet_v2": "shufflenet_v2_x1_0", "cifar_shufflenet_v2": "cifar_shufflenet_v2_x1_0"}
_CIFAR_RESNET = re.compile(r"^cifar_resnet(\d+)(?:_w(\d+)|(x4))?$")
_WRN = re.compile(r"^wrn_(\d+)_(\d+)$")
_CIFAR_MOBILENET_V2 = re.compile(r"^cifar_mobilenet_v2_x(\d+)_(\d+)$")
_CIFAR_SHUFFLENET_V2 = re.compile(r"^cifar_shufflenet_v2_x(\d+_\d+)$")
_PYRAMIDNET = re.compile(r"^pyramidnet(\d+)_a(\d+)(_bottleneck)?$")

#: Prefix of the timm models' names (``timm/resnet50``, ``timm/mobilenetv3_large_100``).
TIMM_PREFIX = "timm/"
ARCH_NAMES = _TORCHVISION + ["shufflenet_v2", "mobilenet_v1", "cifar_resnet<depth>[_w<width>]", "cifar_resnet<depth>x4",
                             "cifar_resnet50", "wrn_<depth>_<k>", "cifar_mobilenet_v2_x0_5", "cifar_mobilenet_v2_x1_0",
                             "cifar_shufflenet_v1", "cifar_shufflenet_v2[_x0_5|_x1_0|_x1_5|_x2_0]",
                             "pyramidnet<depth>_a<alpha>[_bottleneck]", "timm/<any timm CNN>"]

_DEFAULT_TEACHERS = {"mobilenet_v1": "resnet50", "mobilenet_v2": "resnet50", "resnet50": "resnet152",
                     "resnet18": "resnet34", "resnet34": "resnet50",
                     # the CIFAR tables' pairs: CRD / DKD (resnet32x4 -> resnet8x4, ShuffleNetV1/V2), OFD (e-f)
                     "cifar_resnet8x4": "cifar_resnet32x4", "cifar_shufflenet_v1": "cifar_resnet32x4",
                     "cifar_shufflenet_v2_x1_0": "cifar_resnet32x4",
                     "cifar_mobilenet_v2_x0_5": "cifar_resnet50",  # CRD's ResNet-50 -> MobileNetV2 row
                     "pyramidnet110_a84": "pyramidnet200_a240_bottleneck"}


def _canonical(arch: str) -> str:
    return _ALIASES.get(arch, arch)


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised model; ValueError listing the valid names for an unknown one."""
    arch = _canonical(arch)
    if arch in _TORCHVISION:
        return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if arch == "mobilenet_v1":
        return MobileNetV1(num_classes)
    if arch == "cifar_resnet50":  # a bottleneck ResNet (CRD's), not a 6n+2 one of basic blocks
        return cifar_bottleneck_resnet50(num_classes)
    m = _CIFAR_RESNET.match(arch)
    if m:
        if m.group(3):  # CRD's x4: a 32-channel stem, stages 64-128-256
            return CifarResNet(int(m.group(1)), 64, num_classes, stem_width=32)
        return CifarResNet(int(m.group(1)), int(m.group(2) or 16), num_classes)
    m = _WRN.match(arch)
    if m:
        return WideResNet(int(m.group(1)), int(m.group(2)), num_classes)
    m = _CIFAR_MOBILENET_V2.match(arch)
    if m:
        return CifarMobileNetV2(num_classes, width=float(f"{m.group(1)}.{m.group(2)}"))
    if arch == "cifar_shufflenet_v1":
        return CifarShuffleNetV1(num_classes)
    m = _CIFAR_SHUFFLENET_V2.match(arch)
    if m and m.group(1) in SHUFFLENET_V2_WIDTHS:
        return CifarShuffleNetV2(num_classes, width=m.group(1))
    m = _PYRAMIDNET.match(arch)
    if m:
        return PyramidNet(int(m.group(1)), int(m.group(2)), num_classes, bottleneck=bool(m.group(3)))
    if arch.startswith(TIMM_PREFIX):
        return _timm_model(arch[len(TIMM_PREFIX):], num_classes)
    raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCH_NAMES)}")


def _timm_model(name: str, num_classes: int) -> nn.Module:
    """An untrained timm model (its weights come from --student-resume / --teacher-resume files: nothing is
    downloaded); the library finds its stages from timm's feature_info."""
    try:
        import timm
    except ImportError:
        raise ValueError("timm/ models need the timm package (pip install timm)") from None
    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:8]
        raise ValueError(f"unknown timm model {name!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def stage_specs(model: nn.Module) -> Optional[List[StageSpec]]:
    """The model's own stage positions, or None to use the library's built-in ones (torchvision)."""
    return model.stage_specs() if hasattr(model, "stage_specs") else None


def default_teacher(arch: str) -> Optional[str]:
    """The original's teacher for an ImageNet student (resnet50, or resnet152 for resnet50); the CIFAR
    tables' teacher for their students (CRD's resnet32x4 for resnet8x4 and the ShuffleNets, OFD's
    PyramidNet-200 for PyramidNet-110); a 4x wider teacher of the same family for the other small-input
    ResNets and WRNs; None when there is no sensible default."""
    arch = _canonical(arch)
    if arch.startswith("shufflenet_v2"):
        return "resnet50"
    if arch in _DEFAULT_TEACHERS:
        return _DEFAULT_TEACHERS[arch]
    m = _CIFAR_RESNET.match(arch)
    if m and not m.group(3) and arch != "cifar_resnet50":
        return f"cifar_resnet{m.group(1)}_w{int(m.group(2) or 16) * 4}"
    m = _WRN.match(arch)
    if m:
        return f"wrn_{m.group(1)}_{int(m.group(2)) * 4}"
    return None


def cached_weights_path(arch: str) -> Optional[str]:
    """Where torchvision would cache ``arch``'s weights (for messages), or None."""
    arch = _canonical(arch)
    if arch not in _TORCHVISION:
        return None
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
