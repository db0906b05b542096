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
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .builtin import builtin_stages
from .spec import StageSpec, implements_protocol, unwrap

__all__ = ["ProtocolFeatures", "HookFeatures", "make_feature_source"]


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
