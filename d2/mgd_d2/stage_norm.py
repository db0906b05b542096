"""The original MGD code's ``MODEL.RESNETS.ENABLE_STAGE_LAST_NORM`` (its d2 config: True for the student,
False for the teacher): the norm layers of the last residual block of res2-res5 become trainable
normalisation layers, so the student's pre-ReLU stage outputs that MGD distils are produced by norms that
training can adapt, instead of Detectron2's default FrozenBN (fixed ImageNet statistics and affine)."""
from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from detectron2.modeling.backbone.resnet import ResNet

#: MODEL.RESNETS.STAGE_LAST_NORM -> layer. NaiveSyncBatchNorm: Detectron2's SyncBN that also runs on CPU / gloo.
STAGE_LAST_NORMS: Dict[str, Callable[[int], nn.Module]] = {
    "GN": lambda channels: nn.GroupNorm(32, channels),
    "SyncBN": NaiveSyncBatchNorm,
}


def _channels(norm: nn.Module) -> int:
    if isinstance(norm, (FrozenBatchNorm2d, nn.modules.batchnorm._NormBase)):
        return norm.num_features
    if isinstance(norm, nn.GroupNorm):
        return norm.num_channels
    raise TypeError(f"unsupported norm layer {type(norm).__name__} in a ResNet block")


def enable_stage_last_norm(resnet: ResNet, kind: str) -> List[str]:
    """Replace every norm layer of the last block of each *trainable* stage (a stage frozen by
    MODEL.BACKBONE.FREEZE_AT keeps its norms) with a ``kind`` layer; returns the replaced layers' names.
    Parameter names are unchanged (``res5.1.conv2.norm.weight``), so checkpoints of the same architecture load."""
    if kind not in STAGE_LAST_NORMS:
        raise ValueError(f"MODEL.RESNETS.STAGE_LAST_NORM must be one of {', '.join(STAGE_LAST_NORMS)}, got {kind!r}")
    make = STAGE_LAST_NORMS[kind]
    replaced = []
    for stage_name in ("res2", "res3", "res4", "res5"):
        if not hasattr(resnet, stage_name):
            continue
        block = getattr(resnet, stage_name)[-1]
        if not any(p.requires_grad for p in block.parameters()):
            continue  # frozen by FREEZE_AT: stays frozen
        for conv_name, conv in block.named_children():
            norm = getattr(conv, "norm", None)
            if norm is None:
                continue
            channels = _channels(norm)
            if kind == "GN" and channels % 32:
                raise ValueError(f"GroupNorm(32) needs channels divisible by 32, {stage_name}.{conv_name} has "
                                 f"{channels}; use MODEL.RESNETS.STAGE_LAST_NORM SyncBN")
            conv.norm = make(channels)
            replaced.append(f"{stage_name}.{len(getattr(resnet, stage_name)) - 1}.{conv_name}.norm")
    return replaced
