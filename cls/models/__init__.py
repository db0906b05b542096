"""Architecture registry for the classification scripts: names -> models, stage positions, teachers.

torchvision families use the library's built-in stage positions; the models defined here say theirs in
``stage_specs()``. Names:

* torchvision: resnet18/34/50/101/152, wide_resnet50_2, mobilenet_v2, shufflenet_v2 (= _x1_0),
  shufflenet_v2_x0_5 / _x1_0 / _x1_5 / _x2_0;
* mobilenet_v1 (written here, as torchvision has none);
* small inputs (28-32 px): cifar_resnet<depth>[_w<width>] (e.g. cifar_resnet20, cifar_resnet56,
  cifar_resnet20_w8) and wrn_<depth>_<k> (e.g. wrn_16_2, wrn_28_4, wrn_40_2);
* timm/<name>: any timm CNN, created untrained; the library finds its stages (:mod:`mgd.discovery`).
"""
from __future__ import annotations

import os
import re
from typing import List, Optional

import torch
import torchvision
from torch import nn

from mgd.features import StageSpec

from .cifar import CifarResNet, WideResNet
from .mobilenet_v1 import MobileNetV1

__all__ = ["build_model", "stage_specs", "default_teacher", "ARCH_NAMES", "cached_weights_path"]

_TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "mobilenet_v2",
                "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
_ALIASES = {"shufflenet_v2": "shufflenet_v2_x1_0"}
_CIFAR_RESNET = re.compile(r"^cifar_resnet(\d+)(?:_w(\d+))?$")
_WRN = re.compile(r"^wrn_(\d+)_(\d+)$")

#: Prefix of the timm models' names (``timm/resnet50``, ``timm/mobilenetv3_large_100``).
TIMM_PREFIX = "timm/"
ARCH_NAMES = _TORCHVISION + ["shufflenet_v2", "mobilenet_v1", "cifar_resnet<depth>[_w<width>]", "wrn_<depth>_<k>",
                             "timm/<any timm CNN>"]

_DEFAULT_TEACHERS = {"mobilenet_v1": "resnet50", "mobilenet_v2": "resnet50", "resnet50": "resnet152",
                     "resnet18": "resnet34", "resnet34": "resnet50"}


def _canonical(arch: str) -> str:
    return _ALIASES.get(arch, arch)


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised model; ValueError listing the valid names for an unknown one."""
    arch = _canonical(arch)
    if arch in _TORCHVISION:
        return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if arch == "mobilenet_v1":
        return MobileNetV1(num_classes)
    m = _CIFAR_RESNET.match(arch)
    if m:
        return CifarResNet(int(m.group(1)), int(m.group(2) or 16), num_classes)
    m = _WRN.match(arch)
    if m:
        return WideResNet(int(m.group(1)), int(m.group(2)), num_classes)
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
    """The original's teacher for an ImageNet student (resnet50, or resnet152 for resnet50); a 4x wider
    teacher of the same family for the small-input models; None when there is no sensible default."""
    arch = _canonical(arch)
    if arch.startswith("shufflenet_v2"):
        return "resnet50"
    if arch in _DEFAULT_TEACHERS:
        return _DEFAULT_TEACHERS[arch]
    m = _CIFAR_RESNET.match(arch)
    if m:
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
