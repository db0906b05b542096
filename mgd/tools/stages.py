"""Print the stages mgd would distil between two models, before any training:

    python -m mgd.inspect timm/resnet50 timm/mobilenetv3_large_100
    python -m mgd.inspect resnet50 mobilenet_v2

Names: ``timm/<name>`` for timm models, any torchvision classification model name otherwise. The models are
created untrained (nothing is downloaded). For each stage: the module captured (its input for a pre-ReLU
activation, else its output), channels, reduction, the teacher's margin BatchNorm, and how the pair is
matched (g = teacher channels // student channels per student channel).
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional, Sequence

from torch import nn

from ..features import builtin_ignore_inds, builtin_stages
from ..features.discovery import DiscoveredStage, discover_stages, locate_stages, pair_stages

__all__ = ["create_model", "stage_table", "main"]


def create_model(name: str) -> nn.Module:
    """An untrained model from a name: ``timm/<name>`` or a torchvision classification model."""
    if name.startswith("timm/"):
        try:
            import timm
        except ImportError as exc:
            raise ValueError("timm models need the timm package (pip install timm)") from exc
        if not timm.is_model(name[len("timm/"):]):
            raise ValueError(f"unknown timm model {name[len('timm/'):]!r}")
        return timm.create_model(name[len("timm/"):], pretrained=False)
    import torchvision
    try:
        return torchvision.models.get_model(name, weights=None)
    except ValueError as exc:
        raise ValueError(f"unknown model {name!r}: use timm/<name> or a torchvision model name ({exc})") from None


def _stages(model: nn.Module) -> List[DiscoveredStage]:
    table = builtin_stages(model)
    return locate_stages(model, table) if table is not None else discover_stages(model)


def _activation(model: nn.Module, stage: DiscoveredStage) -> str:
    """The class of the activation whose input is captured ("-" for a stage output)."""
    return type(model.get_submodule(stage.activation)).__name__ if stage.activation else "-"


def _cell(model: nn.Module, stage: DiscoveredStage) -> str:
    what = f"{stage.spec.module} ({stage.spec.capture})"
    return f"{what:<28} {_activation(model, stage):<9} {stage.spec.channels:>5} {stage.reduction:>4}"


def stage_table(teacher: nn.Module, student: nn.Module) -> str:
    """The stage table of a teacher/student pair as text: per distilled pair, each side's captured module
    (its input before an activation, or its output), the activation, channels and reduction, the teacher's
    margin BatchNorm and g = teacher channels // student channels; then the stages left out."""
    t_all, s_all = _stages(teacher), _stages(student)
    tables = builtin_stages(teacher) is not None and builtin_stages(student) is not None
    if tables:  # the original's stage-by-stage pairing, without the student family's ignored stages
        ignored = set(builtin_ignore_inds(student))
        pairs = [(t, s) for i, (t, s) in enumerate(zip(t_all, s_all)) if i not in ignored]
    else:
        pairs = list(zip(*pair_stages(t_all, s_all)))
    header = (f"{'teacher stage':<28} {'act':<9} {'ch':>5} {'red':>4}  {'margin BN':<16} | "
              f"{'student stage':<28} {'act':<9} {'ch':>5} {'red':>4}  g")
    lines = [header, "-" * len(header)]
    for t, s in pairs:
        lines.append(f"{_cell(teacher, t)}  {t.spec.bn or '-':<16} | {_cell(student, s)}  "
                     f"{t.spec.channels // s.spec.channels}")
    paired = {id(x) for pair in pairs for x in pair}
    for role, found in (("teacher", t_all), ("student", s_all)):
        for stage in found:
            if id(stage) not in paired:
                lines.append(f"not distilled: {role} {stage.spec.module} ({stage.spec.channels} channels, "
                             f"reduction {stage.reduction})")
    if any(t.spec.bn is None for t, _ in pairs):
        lines.append("margin BN '-': no BatchNorm + ReLU before the teacher's stage; its target is the teacher's "
                     "feature itself")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mgd.inspect", description=__doc__.strip().splitlines()[0])
    p.add_argument("teacher", help="timm/<name> or a torchvision model name")
    p.add_argument("student", help="timm/<name> or a torchvision model name")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the table says what the warnings would
    try:
        print(stage_table(create_model(args.teacher), create_model(args.student)))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
