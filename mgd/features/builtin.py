"""The built-in stage positions of torchvision's ResNets, MobileNetV2 and ShuffleNetV2 (the original code's)."""
from __future__ import annotations

from typing import List, Optional, Sequence

from torch import nn

from .spec import StageSpec, unwrap

__all__ = ["residual_stages", "builtin_stages", "builtin_ignore_inds"]


def residual_stages(model: nn.Module, layers: Sequence[str] = ("layer1", "layer2", "layer3", "layer4")
                    ) -> List[StageSpec]:
    """Stages of a torchvision-style residual network: for each named ``nn.Sequential`` of BasicBlock or
    Bottleneck blocks, the input of the last block's final ReLU (the residual sum, pre-ReLU, as in the
    original ResNets), with that block's last BN for the margins. Works for CIFAR-style ResNets built
    from torchvision blocks too (e.g. ``layers=("layer1", "layer2", "layer3")``)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    specs = []
    for layer in layers:
        blocks = model.get_submodule(layer)
        last = len(blocks) - 1
        block = blocks[last]
        if not isinstance(block, (BasicBlock, Bottleneck)):
            raise TypeError(f"unsupported residual block {type(block).__name__}; name the stage layers explicitly")
        bn = "bn3" if isinstance(block, Bottleneck) else "bn2"
        specs.append(StageSpec(f"{layer}.{last}.relu", capture="input", bn=f"{layer}.{last}.{bn}",
                               channels=getattr(block, bn).num_features))
    return specs


def _mobilenet_v2_stages(model: nn.Module) -> List[StageSpec]:
    """Pre-ReLU6 BN outputs inside features[4], [7], [11], [17], as in the original MobileNetV2.

    The original swapped the strides of the 64- and 96-channel groups so that features[7]'s depthwise
    output is 28x28; torchvision keeps the paper's strides, where the same block's expansion output
    (features[7].conv[0], 192 channels) is the 28x28 tensor, so that one is used for stage 2.
    """
    positions = [(4, 1), (7, 0), (11, 1), (17, 1)]
    specs = []
    for block, part in positions:
        prefix = f"features.{block}.conv.{part}"
        bn = model.get_submodule(f"{prefix}.1")
        specs.append(StageSpec(f"{prefix}.2", capture="input", bn=f"{prefix}.1", channels=bn.num_features))
    return specs


def _shufflenet_v2_stages(model: nn.Module) -> List[StageSpec]:
    """The max-pool output and the outputs of stage2-4, the original's positions.

    torchvision's ShuffleNetV2 applies its ReLUs inside each branch before the concatenation, so no
    pre-ReLU tensor of a whole stage exists without rewriting the blocks: these features are post-ReLU,
    and the model has no BN to take margins from (use it as a student).
    """
    specs = [StageSpec("maxpool", channels=model.conv1[0].out_channels)]
    for name in ("stage2", "stage3", "stage4"):
        last = getattr(model, name)[-1]
        channels = last.branch2[-2].num_features * 2
        specs.append(StageSpec(name, channels=channels))
    return specs


def builtin_stages(model: nn.Module) -> Optional[List[StageSpec]]:
    """Stage positions for known torchvision families (ResNet 18-152 and wide/ResNeXt variants,
    MobileNetV2, ShuffleNetV2), or None."""
    from torchvision.models import MobileNetV2, ResNet, ShuffleNetV2

    m = unwrap(model)
    if isinstance(m, ResNet):
        return residual_stages(m)
    if isinstance(m, MobileNetV2):
        return _mobilenet_v2_stages(m)
    if isinstance(m, ShuffleNetV2):
        return _shufflenet_v2_stages(m)
    return None


def builtin_ignore_inds(model: nn.Module) -> List[int]:
    """Stages the original skipped for a student family: the first stage of MobileNetV2 and ShuffleNetV2
    (its resolution differs from a ResNet teacher's first stage)."""
    from torchvision.models import MobileNetV2, ShuffleNetV2

    return [0] if isinstance(unwrap(model), (MobileNetV2, ShuffleNetV2)) else []


# ----------------------------------------------------------------------------------------------------------
