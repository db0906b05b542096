"""Logit distillation of a Faster R-CNN's box head (KD, DKD, any registered logit method): the student's class
logits of the proposals its ROI heads sampled, against the teacher's box head run on those same proposals over
the teacher's own features, as mdistiller's detection code does (its ``forward_pure_roi_head``). The method is
the registry's (:func:`mgd.build_distiller`), its terms come from :meth:`mgd.Distiller.compute_terms`."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Tuple

import torch
from torch import nn

from detectron2.structures import Instances

import mgd
from mgd.distillers.base import Distiller
from mgd.registry import DISTILLERS, distiller_options


def method_options(cfg, name: str) -> Tuple[Dict[str, Any], float]:
    """(options, weight) of the method ``name`` from its config section MGD.<PREFIX> (its ``flag_prefix``,
    else its name, upper case): each key, lower case, is one of its keyword options; WEIGHT, where the method has
    no ``weight`` option, is d2's multiplier of its terms (1 without it). A method with a warm-up gets
    ``warmup_epochs`` 0 unless a section sets it: d2 counts iterations and announces no epoch. ValueError naming
    a key that is not an option of the method."""
    accepted = distiller_options(name)
    options: Dict[str, Any] = {}
    weight = 1.0
    prefix = DISTILLERS[name].flag_prefix or name
    section = cfg.MGD.get(prefix.upper())
    for key, value in (section.items() if hasattr(section, "items") else ()):  # no section: the defaults
        option = key.lower()
        if option == "weight" and option not in accepted:
            weight = float(value)
        elif option in accepted:
            options[option] = value
        else:
            raise ValueError(f"MGD.{prefix.upper()}.{key} is not an option of {name}; its options: "
                             f"{', '.join(o.upper() for o in sorted(accepted))}")
    if "warmup_epochs" in accepted:
        options.setdefault("warmup_epochs", 0)
    return options, weight


def build_logit_distiller(cfg, teacher: nn.Module, student: nn.Module) -> Tuple[Distiller, float]:
    """``mgd.build_distiller(MGD.DISTILLER, teacher, student, own_networks=False, **its MGD.<NAME>.* options)`` on
    the two detectors, and d2's weight of its terms (:func:`method_options`)."""
    options, weight = method_options(cfg, cfg.MGD.DISTILLER)
    return mgd.build_distiller(cfg.MGD.DISTILLER, teacher, student, own_networks=False, **options), weight


@contextlib.contextmanager
def capture_outputs(modules: Dict[str, nn.Module]) -> Iterator[Dict[str, object]]:
    """The output of each named module's last call inside the ``with`` block (forward hooks, removed after)."""
    out: Dict[str, object] = {}
    handles = [m.register_forward_hook(lambda mod, inp, res, key=key: out.__setitem__(key, res))
               for key, m in modules.items()]
    try:
        yield out
    finally:
        for h in handles:
            h.remove()


def teacher_box_logits(roi_heads: nn.Module, features: Dict[str, torch.Tensor],
                       proposals: List[Instances]) -> torch.Tensor:
    """The class logits of a StandardROIHeads' box head for ``proposals`` (no sampling, no post-processing)."""
    feats = [features[f] for f in roi_heads.box_in_features]
    boxes = roi_heads.box_head(roi_heads.box_pooler(feats, [p.proposal_boxes for p in proposals]))
    return roi_heads.box_predictor(boxes)[0]
