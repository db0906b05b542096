"""Where seg/ distils: named positions of every model of :mod:`seg.models`, each a pre-activation tensor.

Names, shared by every model so that a teacher and a student pair by name:

* ``stage1`` .. ``stage4`` (``--distill-positions backbone``, OFD's and the model-zoo page's "backbone
  mimic"): the backbone's features at strides 4, 8, 16, 16 (DeepLabV3+, output stride 16) or 4, 8, 8, 8
  (torchvision's ResNet DeepLabV3/FCN, output stride 8). ResNets: the residual sum of each stage's last block
  before its ReLU (:func:`mgd.features.residual_stages`, as in cls/). MobileNetV2: OFD's positions, the
  expansion conv's BN output before ReLU6 in features[4], [7], [14], and features[17]'s linear output (no
  activation follows it: no margin). MobileNetV3: the same places (features[4], [7], [13] expansions and the
  final 960-channel conv), before their ReLU or Hardswish (margins only before a ReLU).
* ``aspp`` and ``decoder`` (``--distill-positions head``, "head mimic"): the ASPP projection's BN output
  before its ReLU, and the last 3x3 conv's BN output before its ReLU (DeepLabV3+'s decoder; the conv after
  the ASPP in torchvision's DeepLabV3 head; FCN's and LR-ASPP's head conv, which have no ASPP position).

OFD's segmentation code distils the six DeepLabV3+ positions with divisors 8, 4, 2, 1, 1, 16
(:data:`OFD_DIVISORS`; Segmentation/distiller.py ``loss_divider``).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from torch import nn
from torchvision.models import segmentation as tvseg

from mgd.features.discovery import locate_stages
from mgd.features import StageSpec, residual_stages

from .models import DeepLabV3Plus

__all__ = ["GROUPS", "POSITION_NAMES", "OFD_DIVISORS", "model_positions", "located_positions",
           "resolve_positions", "pair_positions", "stage_weights"]

GROUPS: Dict[str, Tuple[str, ...]] = {"backbone": ("stage1", "stage2", "stage3", "stage4"),
                                      "head": ("aspp", "decoder")}
GROUPS["all"] = GROUPS["backbone"] + GROUPS["head"]
POSITION_NAMES = GROUPS["all"]
#: OFD's per-position divisors of the partial L2 (the stage weight is 1 / divisor).
OFD_DIVISORS = {"stage1": 8, "stage2": 4, "stage3": 2, "stage4": 1, "aspp": 1, "decoder": 16}


def _prefixed(prefix: str, spec: StageSpec) -> StageSpec:
    return StageSpec(f"{prefix}{spec.module}", spec.capture, f"{prefix}{spec.bn}" if spec.bn else None,
                     spec.channels, spec.margin)


def _before_activation(model: nn.Module, block: str) -> StageSpec:
    """The input of ``block``'s activation (``block.2``) with ``block.1``'s BN for margins when that
    activation is a ReLU/ReLU6 (a conv-BN-activation triple, as torchvision's Conv2dNormActivation)."""
    bn = model.get_submodule(f"{block}.1")
    relu = isinstance(model.get_submodule(f"{block}.2"), (nn.ReLU, nn.ReLU6))
    return StageSpec(f"{block}.2", capture="input", bn=f"{block}.1" if relu else None, channels=bn.num_features,
                     margin=relu)


def _backbone_positions(model: nn.Module, prefix: str) -> List[StageSpec]:
    backbone = model.get_submodule(prefix.rstrip("."))
    if hasattr(backbone, "layer4"):
        return [_prefixed(prefix, s) for s in residual_stages(backbone)]
    if hasattr(backbone, "17"):  # MobileNetV2 features[:18]
        last = backbone.get_submodule("17.conv.3")
        return [_before_activation(model, f"{prefix}{i}.conv.0") for i in (4, 7, 14)] + [
            StageSpec(f"{prefix}17.conv.3", channels=last.num_features, margin=False)]
    if hasattr(backbone, "16"):  # MobileNetV3-Large features
        return [_before_activation(model, f"{prefix}{i}.block.0") for i in (4, 7, 13)] + [
            _before_activation(model, f"{prefix}16")]
    raise ValueError(f"{type(backbone).__name__}: no known backbone positions")


def _head_positions(model: nn.Module) -> Dict[str, StageSpec]:
    if isinstance(model, DeepLabV3Plus):
        return {"aspp": _before_activation(model, "aspp.project"), "decoder": StageSpec(
            "decoder.fuse.6", capture="input", bn="decoder.fuse.5", channels=model.decoder.fuse[5].num_features)}
    if isinstance(model, tvseg.DeepLabV3):
        return {"aspp": _before_activation(model, "classifier.0.project"),  # DeepLabHead: ASPP, conv, BN, ReLU
                "decoder": StageSpec("classifier.3", capture="input", bn="classifier.2",
                                     channels=model.classifier[2].num_features)}
    if isinstance(model, tvseg.FCN):
        return {"decoder": _before_activation(model, "classifier")}
    if isinstance(model, tvseg.LRASPP):
        return {"decoder": _before_activation(model, "classifier.cbr")}
    raise ValueError(f"{type(model).__name__}: no known head positions")


def model_positions(model: nn.Module) -> Dict[str, StageSpec]:
    """Every position of ``model`` (a model of :mod:`seg.models`), by name, in forward order."""
    stages = _backbone_positions(model, "backbone.")
    return {**{f"stage{i + 1}": s for i, s in enumerate(stages)}, **_head_positions(model)}


def located_positions(model: nn.Module) -> Dict[str, Tuple[StageSpec, int]]:
    """:func:`model_positions` with each position's reduction (stride), read off one traced forward."""
    positions = model_positions(model)
    located = locate_stages(model, list(positions.values()))
    return {name: (spec, stage.reduction) for (name, spec), stage in zip(positions.items(), located)}


def resolve_positions(request: str) -> Tuple[Tuple[str, ...], bool]:
    """``--distill-positions``: a group (backbone, head, all) or comma-separated names -> (names, explicit)."""
    if request in GROUPS:
        return GROUPS[request], False
    names = tuple(n.strip() for n in request.split(",") if n.strip())
    bad = [n for n in names if n not in POSITION_NAMES]
    if bad or not names:
        raise ValueError(f"unknown position(s) {', '.join(bad) or repr(request)}; valid: {', '.join(GROUPS)} or a "
                         f"comma-separated list of {', '.join(POSITION_NAMES)}")
    return names, True


def pair_positions(teacher: nn.Module, student: nn.Module, request: str, wider_teacher: bool,
                   same_size: bool = True) -> Tuple[List[str], List[StageSpec], List[StageSpec]]:
    """(names, teacher specs, student specs) of the positions to distil: the requested ones both models have
    (a group keeps the ones both have; a named position that one model lacks is an error). ValueError, naming
    the positions to drop, when a pair differs in resolution (``same_size``: feature methods compare maps
    element by element) or, with ``wider_teacher`` (MGD's matching), when the teacher is narrower."""
    names, explicit = resolve_positions(request)
    t_pos, s_pos = located_positions(teacher), located_positions(student)
    missing = [n for n in names if n not in t_pos or n not in s_pos]
    if explicit and missing:
        raise ValueError(f"position(s) {', '.join(missing)} not in both models (teacher: {', '.join(t_pos)}; "
                         f"student: {', '.join(s_pos)})")
    names = [n for n in names if n not in missing]
    if not names:
        raise ValueError(f"the teacher and the student share no {request} position (teacher: {', '.join(t_pos)}; "
                         f"student: {', '.join(s_pos)})")
    bad = []
    for n in names:
        (t, t_red), (s, s_red) = t_pos[n], s_pos[n]
        if same_size and t_red != s_red:
            bad.append(f"{n} (teacher stride {t_red}, student {s_red})")
        elif wider_teacher and t.channels < s.channels:
            bad.append(f"{n} (teacher {t.channels} channels < student {s.channels})")
    if bad:
        keep = [n for n in names if not any(b.startswith(n + " ") for b in bad)]
        hint = f"--distill-positions {','.join(keep)}" if keep else "another teacher or method"
        what = "the teacher must be at least as wide as the student and " if wider_teacher else ""
        raise ValueError(f"cannot distil at {'; '.join(bad)}: {what}both maps must have the same resolution; "
                         f"drop them with {hint}")
    return names, [t_pos[n][0] for n in names], [s_pos[n][0] for n in names]


def stage_weights(names: Sequence[str]) -> List[float]:
    """OFD's per-position weights, 1 / divisor (:data:`OFD_DIVISORS`)."""
    return [1.0 / OFD_DIVISORS[n] for n in names]
