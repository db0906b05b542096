"""How stage features reach the distiller: the original model protocol, or hooks on named modules.

Two sources implement one small interface (``__call__(model, x, pre_relu) -> (features, output)``,
``bns()``, ``channels()``). The model is passed at call time, so a DataParallel replica of the distiller
runs its own replica of the network:

* :class:`ProtocolFeatures` for models written for the original code, which implement
  ``extract_feature(x, preReLU)``, ``get_bn_before_relu()`` and ``get_channel_num()``;
* :class:`HookFeatures` for any ``nn.Module``: forward hooks on named modules capture the stage tensors
  during the model's own forward, which is not rewritten.

In-place activations are the trap of hook capture: ``nn.ReLU(inplace=True)`` overwrites the tensor a hook
just stored. A stage can therefore capture the *input* of an activation module (``capture="input"``); its
``inplace`` flag is switched off while the hooks are installed, so the captured tensor stays pre-ReLU.
Every captured tensor's version counter is checked after the forward: an in-place change is an error,
never a silently wrong feature.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StageSpec", "ProtocolFeatures", "HookFeatures", "builtin_stages", "builtin_ignore_inds", "residual_stages",
           "implements_protocol", "make_feature_source", "unwrap"]


@dataclass(frozen=True)
class StageSpec:
    """One distillation position.

    module:   dotted name (as in ``model.named_modules()``) of the module whose output (or input) is the
              pre-ReLU stage feature.
    capture:  "output" (default) or "input": the input of the module's last call in a forward, e.g. the
              tensor an (in-place) ReLU receives.
    bn:       name of the BatchNorm that produces the pre-ReLU values (teacher side: the margins).
    channels: the feature's channel count, when it cannot be read off the named modules.
    margin:   False for a stage with no BatchNorm + ReLU on the teacher side (a linear output): no margin,
              the target is the teacher's feature itself (:data:`mgd.discovery.NO_MARGIN`).
    """
    module: str
    capture: str = "output"
    bn: Optional[str] = None
    channels: Optional[int] = None
    margin: bool = True

    def __post_init__(self) -> None:
        if self.capture not in ("output", "input"):
            raise ValueError(f"StageSpec.capture must be 'output' or 'input', got {self.capture!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel wrappers."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def implements_protocol(model: nn.Module) -> bool:
    """True for models written for the original MGD code."""
    m = unwrap(model)
    return all(callable(getattr(m, name, None)) for name in ("extract_feature", "get_bn_before_relu",
                                                            "get_channel_num"))


# ----------------------------------------------------------------------------------------------------------
# Built-in stage positions for torchvision families (same positions as the original's rewritten models).

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

class ProtocolFeatures:
    """Features from ``model.extract_feature(x, preReLU)`` (the original protocol)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __call__(self, model: nn.Module, x: torch.Tensor, pre_relu: bool = True
                 ) -> Tuple[List[torch.Tensor], object]:
        feats, out = unwrap(model).extract_feature(x, preReLU=pre_relu)
        return list(feats), out

    def bns(self) -> List[nn.Module]:
        return list(unwrap(self.model).get_bn_before_relu())

    def channels(self) -> List[int]:
        return [int(c) for c in unwrap(self.model).get_channel_num()]

    def close(self) -> None:
        pass


class HookFeatures:
    """Stage features captured by forward hooks during the model's unchanged forward.

    Storage is thread-local, so nn.DataParallel replicas (which share the hooks and run in threads)
    never mix their captures.
    """

    def __init__(self, model: nn.Module, stages: Sequence[Union[str, StageSpec]], role: str = "model") -> None:
        self.role = role
        self.stages = [s if isinstance(s, StageSpec) else StageSpec(str(s)) for s in stages]
        if not self.stages:
            raise ValueError(f"{role}: no stage layers given")
        inner = unwrap(model)
        modules = dict(inner.named_modules())
        self._local = threading.local()
        self._handles = []
        self._inplace_restore: List[nn.Module] = []
        self._modules: List[nn.Module] = []
        for i, spec in enumerate(self.stages):
            if spec.module not in modules:
                raise ValueError(f"{role}: layer {spec.module!r} not found in {type(inner).__name__}; "
                                 f"e.g. {', '.join(list(modules)[1:6])}, ...")
            if spec.bn is not None and spec.bn not in modules:
                raise ValueError(f"{role}: margin layer {spec.bn!r} not found in {type(inner).__name__}")
            module = modules[spec.module]
            self._modules.append(module)
            if spec.capture == "input":
                if getattr(module, "inplace", False):
                    module.inplace = False
                    self._inplace_restore.append(module)
                self._handles.append(module.register_forward_pre_hook(self._make_hook(i, from_input=True)))
            else:
                self._handles.append(module.register_forward_hook(self._make_hook(i, from_input=False)))
        self._named = modules

    def _store(self) -> Dict[int, Tuple[torch.Tensor, int]]:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = {}
        return store

    def _make_hook(self, index: int, from_input: bool):
        def pre_hook(module, inputs):
            t = inputs[0]
            self._store()[index] = (t, t._version)

        def hook(module, inputs, output):
            t = output[0] if isinstance(output, (tuple, list)) else output
            self._store()[index] = (t, t._version)

        return pre_hook if from_input else hook

    def __call__(self, model: nn.Module, x: torch.Tensor, pre_relu: bool = True
                 ) -> Tuple[List[torch.Tensor], object]:
        return self.run(lambda: model(x), pre_relu)

    def run(self, forward: Callable[[], object], pre_relu: bool = True) -> Tuple[List[torch.Tensor], object]:
        """Call ``forward()`` (anything that runs the hooked modules, e.g. a detector's full forward)
        and return the stage features it produced, with its result."""
        store = self._store()
        store.clear()
        out = forward()
        feats = []
        for i, spec in enumerate(self.stages):
            if i not in store:
                raise RuntimeError(f"{self.role}: layer {spec.module!r} did not run during the forward")
            t, version = store[i]
            if t._version != version:
                raise RuntimeError(
                    f"{self.role}: the captured {spec.capture} of {spec.module!r} was modified in place after "
                    "capture (an in-place op follows it). Capture the input of the activation instead: "
                    f"StageSpec('<activation name>', capture='input')"
                )
            feats.append(t if pre_relu else F.relu(t))
        store.clear()
        return feats, out

    def bns(self) -> List[Optional[nn.Module]]:
        """The margin BatchNorm of each stage; None for a stage declared without margin."""
        missing = [s.module for s in self.stages if s.bn is None and s.margin]
        if missing:
            raise ValueError(f"{self.role}: no margin BatchNorm named for stage(s) {missing}; give teacher_bns=[...]"
                             " (the BN whose output feeds each stage's ReLU)")
        return [self._named[s.bn] if s.bn is not None else None for s in self.stages]

    def channels(self) -> List[Optional[int]]:
        out = []
        for spec, module in zip(self.stages, self._modules):
            c = spec.channels
            if c is None and spec.capture == "output":
                c = getattr(module, "num_features", None) or getattr(module, "out_channels", None)
            if c is None and spec.bn is not None:
                c = getattr(self._named[spec.bn], "num_features", None)
            out.append(int(c) if c is not None else None)
        return out

    def close(self) -> None:
        """Remove the hooks and restore the in-place flags."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for m in self._inplace_restore:
            m.inplace = True
        self._inplace_restore = []


def make_feature_source(model: nn.Module, layers: Optional[Sequence[Union[str, StageSpec]]],
                        bns: Optional[Sequence[str]], role: str):
    """Pick the feature source: named layers, then the original protocol, then built-in positions."""
    if layers is not None:
        specs = [s if isinstance(s, StageSpec) else StageSpec(str(s)) for s in layers]
        if bns is not None:
            if len(bns) != len(specs):
                raise ValueError(f"{role}: {len(bns)} margin layers given for {len(specs)} stages")
            specs = [StageSpec(s.module, s.capture, b, s.channels, s.margin) for s, b in zip(specs, bns)]
        return HookFeatures(model, specs, role)
    if bns is not None:
        raise ValueError(f"{role}: margin layers given without the stage layers they belong to")
    if implements_protocol(model):
        return ProtocolFeatures(model)
    specs = builtin_stages(model)
    if specs is None:
        raise ValueError(
            f"{role}: {type(unwrap(model)).__name__} has no built-in stage positions and does not implement "
            "extract_feature/get_bn_before_relu/get_channel_num; name its pre-ReLU stage layers "
            f"({role}_layers=[...])"
        )
    return HookFeatures(model, specs, role)
