"""Stage positions of any CNN found from the model itself: timm's ``feature_info``, or the trunk of a
torchvision network, then one traced forward that decides, per stage, what to capture and where the margins
come from.

The rule (MGD's and OFD's positions, generalised):

* a stage whose output is the output of a ReLU-family activation (ReLU, ReLU6) applied last, e.g. to the
  residual sum of a ResNet / ResNeXt / SE-ResNet / RegNet block or inside a BatchNorm+act layer: the
  *input* of that activation is captured (pre-ReLU), and the margins come from the last BatchNorm that ran
  before it outside the shortcut (``bn3`` of a bottleneck, as the original did for ResNet);
* a stage that ends without such an activation (linear bottlenecks of MobileNetV2/V3 and EfficientNet,
  ConvNeXt): the stage *output* is captured and it has no margin: the partial L2's target is then the
  teacher's feature itself (``margin = mgd.losses.ofd.NO_MARGIN``, a warning says which stages).

Stages at a reduction below 4 (the stem) are not distilled, as in the original. A teacher/student pair is
matched stage by stage on equal reduction (:func:`pair_stages`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..losses.ofd import NO_MARGIN
from .builtin import builtin_stages
from .spec import StageSpec, unwrap

__all__ = ["DiscoveredStage", "discover_stages", "locate_stages", "pair_stages", "default_positions",
           "stage_candidates", "ACTIVATIONS", "NO_MARGIN"]

logger = logging.getLogger("mgd")

#: Activations whose input is a pre-ReLU feature with OFD's margin semantics (zero below 0).
ACTIVATIONS = (nn.ReLU, nn.ReLU6)
#: Any elementwise activation that can end a stage: its input is captured (pre-activation) whatever it is;
#: margins only for :data:`ACTIVATIONS`.
ANY_ACTIVATION = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                  nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus)
#: Module names on a block's shortcut: their BatchNorm never feeds the stage's activation alone.
_SHORTCUT_WORDS = ("downsample", "shortcut", "proj", "skip")
#: The smallest reduction distilled (the stem, at 2, is not).
MIN_REDUCTION = 4
#: Side of the traced input: every reduction up to 32 leaves at least 2x2.
_TRACE_SIZE = 64


@dataclass(frozen=True)
class DiscoveredStage:
    """A stage found in a model: where to capture (``spec``), its reduction (stride) and the activation whose
    input is captured (None: the stage output, no margin)."""
    spec: StageSpec
    reduction: int
    activation: Optional[str] = None


#: The way out for models without convolutional stages (a ViT, a Swin): the methods that need none.
_LOGIT_METHODS = "or distil through the logits and embeddings only (kd, nd, dkd, dist; --nd-weight for their ++)"


def _timm_candidates(model: nn.Module) -> Optional[List[Tuple[str, int]]]:
    """(module, reduction) of each stage from timm's ``feature_info`` (a list of dicts, or FeatureInfo)."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return None
    dicts = info.get_dicts() if hasattr(info, "get_dicts") else info
    if not isinstance(dicts, (list, tuple)) or not all(isinstance(d, dict) and "module" in d for d in dicts):
        return None
    return [(d["module"], int(d["reduction"])) for d in dicts]


def _trunk(model: nn.Module, outputs: Dict[str, torch.Tensor]) -> Optional[str]:
    """Name of the nn.Sequential with a 4-D output that holds most parameters (``features`` of EfficientNet,
    MobileNetV3, ConvNeXt, DenseNet; ``trunk_output`` of RegNet), or None."""
    best, best_count = None, -1
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential) and name in outputs and len(module) > 1:
            count = sum(p.numel() for p in module.parameters())
            if count > best_count:
                best, best_count = name, count
    return best


def _is_head_conv(module: nn.Module) -> bool:
    """A 1x1 convolution block (conv + norm + activation): the classifier-side head of EfficientNet /
    MobileNetV3 at the trunk's end, not a stage."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return len(convs) == 1 and convs[0].kernel_size == (1, 1) and not isinstance(module, nn.Conv2d)


def stage_candidates(model: nn.Module, outputs: Dict[str, torch.Tensor], size: int) -> List[Tuple[str, int]]:
    """(module, reduction) of each stage: timm's ``feature_info`` (of the model, or of a submodule that holds
    it, e.g. a wrapper's backbone), else the last child of the trunk at each reduction, a final 1x1 head
    convolution excepted (``outputs``: the traced 4-D output of every module for a ``size`` x ``size`` input)."""
    for prefix, module in model.named_modules():
        found = _timm_candidates(module)
        if found is not None:
            return [(f"{prefix}.{name}" if prefix else name, reduction) for name, reduction in found]
    trunk = _trunk(model, outputs)
    if trunk is None:
        raise ValueError(f"{type(model).__name__}: no stage positions found (no timm feature_info and no "
                         "nn.Sequential trunk to find stages in); name its pre-ReLU stage layers "
                         f"(teacher_layers=[...], student_layers=[...]), {_LOGIT_METHODS}")
    children = list(model.get_submodule(trunk).named_children())
    if len(children) > 1 and _is_head_conv(children[-1][1]):
        children = children[:-1]
    last: Dict[int, str] = {}
    for child, _ in children:
        name = f"{trunk}.{child}" if trunk else child
        if name in outputs:
            last[size // outputs[name].shape[-1]] = name
    return [(name, reduction) for reduction, name in sorted(last.items())]


def _trace(model: nn.Module, size: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, int], Dict[str, torch.Tensor]]:
    """One forward of a random image: every module's 4-D output and 4-D first input (of its last call), and
    the order in which modules started (their last call)."""
    outputs: Dict[str, torch.Tensor] = {}
    inputs_: Dict[str, torch.Tensor] = {}
    started: Dict[str, int] = {}
    counter = [0]
    handles = []
    for name, module in model.named_modules():
        def pre(mod, inputs, name=name):
            counter[0] += 1
            started[name] = counter[0]
            if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].dim() == 4:
                inputs_[name] = inputs[0].clone() if getattr(mod, "inplace", False) else inputs[0]

        def post(mod, inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                outputs[name] = output
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    first = next(iter(model.parameters()))
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 3
    image = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))  # no global RNG
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(image.to(device=first.device, dtype=first.dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():  # each module's own mode (a frozen BN stays in eval)
            m.training = mode
    return outputs, started, inputs_


def _traced(model: nn.Module, size: int):
    """:func:`_trace` at ``size``, or at 224 px for models that need larger inputs (Inception); (size, trace)."""
    for side in dict.fromkeys((size, 224)):
        try:
            return side, _trace(model, side)
        except (RuntimeError, AssertionError) as exc:  # a shape error; a ViT asserts its image size
            error = exc
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    raise ValueError(f"{type(model).__name__}: a forward of a {size} or 224 px image failed ({reason}); name the "
                     f"stage layers (teacher_layers=[...], student_layers=[...]), {_LOGIT_METHODS}") from error


def _final_activation(model: nn.Module, stage: str, outputs: Dict[str, torch.Tensor]) -> Optional[str]:
    """The activation module inside ``stage`` (or the stage itself) whose output is the stage's output."""
    out = outputs.get(stage)
    if out is None:
        return None
    for name, module in model.get_submodule(stage).named_modules():
        full = f"{stage}.{name}" if name else stage
        if isinstance(module, ANY_ACTIVATION) and outputs.get(full) is out:
            return full
    return None


def _margin_bn(model: nn.Module, activation: str, channels: int, started: Dict[str, int]) -> Optional[str]:
    """The last affine BatchNorm of ``channels`` features that started before ``activation``, off the shortcut."""
    best, best_order = None, -1
    for name, module in model.named_modules():
        if not (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine
                and module.num_features == channels and name in started):
            continue
        if any(word in part for part in name.split(".") for word in _SHORTCUT_WORDS):
            continue
        if best_order < started[name] < started[activation]:
            best, best_order = name, started[name]
    return best


def discover_stages(model: nn.Module, size: int = _TRACE_SIZE) -> List[DiscoveredStage]:
    """The distillation positions of ``model`` (a timm or torchvision CNN taking 3-channel images): one per
    stage at reduction >= 4, with its capture point and margin BatchNorm (see the module docstring)."""
    m = unwrap(model)
    size, (outputs, started, _) = _traced(m, size)
    stages = []
    for module, reduction in stage_candidates(m, outputs, size):
        if reduction < MIN_REDUCTION:
            continue
        if module not in outputs:
            raise ValueError(f"{type(m).__name__}: stage {module!r} gave no 4-D feature map")
        channels = int(outputs[module].shape[1])
        activation = _final_activation(m, module, outputs)
        relu = activation is not None and isinstance(m.get_submodule(activation), ACTIVATIONS)
        bn = _margin_bn(m, activation, channels, started) if relu else None
        if activation is None:
            spec = StageSpec(module, capture="output", channels=channels, margin=False)
        else:
            spec = StageSpec(activation, capture="input", bn=bn, channels=channels, margin=bn is not None)
        stages.append(DiscoveredStage(spec, reduction, activation))
    if len(stages) < 2:
        found = f"only {stages[0].spec.module}" if stages else "none"
        raise ValueError(f"{type(m).__name__}: no stage positions found (stages at reduction >= {MIN_REDUCTION}: "
                         f"{found}); name its pre-ReLU stage layers (teacher_layers=[...], student_layers=[...]), "
                         f"{_LOGIT_METHODS}")
    return stages


def locate_stages(model: nn.Module, specs: Sequence[StageSpec], size: int = _TRACE_SIZE) -> List[DiscoveredStage]:
    """Known positions (a built-in table, named layers) with their reductions, read off one traced forward."""
    m = unwrap(model)
    size, (outputs, _, inputs) = _traced(m, size)
    located = []
    for spec in specs:
        feature = (inputs if spec.capture == "input" else outputs).get(spec.module)
        if feature is None:
            raise ValueError(f"{type(m).__name__}: stage {spec.module!r} gave no 4-D feature map")
        located.append(DiscoveredStage(spec, size // feature.shape[-1],
                                       spec.module if spec.capture == "input" else None))
    return located


def default_positions(t_net: nn.Module, s_net: nn.Module, wider_teacher: bool = True
                      ) -> Optional[Tuple[List[StageSpec], List[StageSpec]]]:
    """The paired stage positions of two models that name none: built-in tables where the library has them,
    discovery elsewhere, paired on reduction. None when both have built-in tables (they keep the original's
    stage-by-stage pairing and its ignored stages)."""
    tables = [builtin_stages(net) for net in (t_net, s_net)]
    if all(t is not None for t in tables):
        return None
    found = [locate_stages(net, table) if table is not None else discover_stages(net)
             for net, table in zip((t_net, s_net), tables)]
    teacher, student = pair_stages(*found, wider_teacher=wider_teacher)
    unbounded = [t.spec.module for t in teacher if t.spec.bn is None]
    if unbounded:
        logger.warning("teacher stages without a BatchNorm + ReLU before them: %s; their target is the teacher's "
                       "feature itself (no margin)", ", ".join(unbounded))
    return [t.spec for t in teacher], [s.spec for s in student]


def pair_stages(teacher: Sequence[DiscoveredStage], student: Sequence[DiscoveredStage],
                wider_teacher: bool = True) -> Tuple[List[DiscoveredStage], List[DiscoveredStage]]:
    """Teacher and student stages paired on equal reduction (the deepest of several stages at one
    reduction). Stages without a partner, and with ``wider_teacher`` (MGD matches several teacher channels to
    each student channel) pairs whose teacher is narrower than its student, are dropped with a warning
    naming them; ValueError when no pair remains."""
    dropped: List[str] = []

    def deepest(stages: Sequence[DiscoveredStage], role: str) -> Dict[int, DiscoveredStage]:
        kept: Dict[int, DiscoveredStage] = {}
        for stage in stages:
            if stage.reduction in kept:
                dropped.append(f"{role} {kept[stage.reduction].spec.module} (a deeper stage at reduction "
                               f"{stage.reduction})")
            kept[stage.reduction] = stage
        return kept
    by_teacher, by_student = deepest(teacher, "teacher"), deepest(student, "student")
    t_kept, s_kept = [], []
    for reduction, t in sorted(by_teacher.items()):
        s = by_student.pop(reduction, None)
        if s is None:
            dropped.append(f"teacher {t.spec.module} (reduction {t.reduction}: no student stage)")
        elif wider_teacher and t.spec.channels < s.spec.channels:
            dropped.append(f"teacher {t.spec.module} ({t.spec.channels} channels) narrower than student "
                           f"{s.spec.module} ({s.spec.channels})")
        else:
            t_kept.append(t)
            s_kept.append(s)
    dropped += [f"student {s.spec.module} (reduction {s.reduction}: no teacher stage)" for s in by_student.values()]
    if dropped:
        logger.warning("stages not distilled: %s", "; ".join(dropped))
    if not t_kept:
        raise ValueError("no teacher stage pairs with a student stage of the same reduction"
                         + (" and at most its channels" if wider_teacher else "") + f" ({'; '.join(dropped)}); "
                         "name the stage layers")
    return t_kept, s_kept
