#!/usr/bin/env python
"""Merge a teacher RetinaNet checkpoint and a student initialisation into one file for MODEL.WEIGHTS.

    python d2/merge_weights.py --teacher retinanet_r50.pth --student resnet18_torchvision.pth -o mgd_init.pth

--teacher: a Detectron2 RetinaNet checkpoint ({"model": state_dict} or a plain state dict).
--student: a Detectron2 RetinaNet checkpoint, a Detectron2 ResNet backbone state dict (stem.*, res2.* ...),
           or a torchvision ResNet state dict (conv1.*, layer1.* ...), converted to Detectron2's names.
The output holds teacher.* and student.* keys, as MGDRetinaNet expects.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Dict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mgd.checkpoint import atomic_save, safe_load  # noqa: E402


def _state(path: str) -> Dict[str, torch.Tensor]:
    try:
        obj = safe_load(path)
    except (FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not state:
        raise SystemExit(f"error: {path} holds no state dict")
    return state


def torchvision_to_detectron2(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision ResNet names -> Detectron2 ResNet names (the fc layer is dropped)."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        k = re.sub(r"^layer(\d)", lambda m: f"res{int(m.group(1)) + 1}", key)
        if not k.startswith("res"):
            k = "stem." + k
        k = re.sub(r"bn(\d)", r"conv\1.norm", k)
        k = k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        out[k] = value
    return {k: v for k, v in out.items() if not k.endswith("num_batches_tracked")}


def student_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    if any(k.startswith("backbone.") or k.startswith("head.") for k in state):
        return {f"student.{k}": v for k, v in state.items()}
    if any(k.startswith("layer1.") for k in state):
        state = torchvision_to_detectron2(state)
    return {f"student.backbone.bottom_up.{k}": v for k, v in state.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", default="", help="student initialisation (omit: random student)")
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    merged = {f"teacher.{k}": v for k, v in _state(args.teacher).items()}
    if args.student:
        merged.update(student_keys(_state(args.student)))
    atomic_save({"model": merged, "__author__": "mgd merge_weights"}, args.output)
    print(f"wrote {args.output}: {sum(k.startswith('teacher.') for k in merged)} teacher and "
          f"{sum(k.startswith('student.') for k in merged)} student tensors")


if __name__ == "__main__":
    main()
