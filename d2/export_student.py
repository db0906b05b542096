#!/usr/bin/env python
"""Export the student of a distillation checkpoint (RetinaNet or Faster R-CNN) as a plain Detectron2 checkpoint.

    python d2/export_student.py output/model_final.pth -o retinanet_R18_mgd.pth

The result loads into the plain detector of the student's config, e.g. a RetinaNet built from
d2/configs/retinanet_R18_FPN_1x_tv.yaml or a GeneralizedRCNN from faster_rcnn_R18_FPN_1x_tv.yaml (with the same
MODEL.RESNETS.ENABLE_STAGE_LAST_NORM as the student; parameter names are Detectron2's).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mgd.checkpoint import atomic_save, safe_load  # noqa: E402

PREFIX = "student."


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint written by d2/train_net.py with a distillation meta-architecture")
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args(argv)
    try:
        ckpt = safe_load(args.checkpoint)
    except (FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}")
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    student = {k[len(PREFIX):]: v for k, v in (state or {}).items() if k.startswith(PREFIX)}
    if not student:
        raise SystemExit(f"error: {args.checkpoint} has no {PREFIX}* weights (not a distillation checkpoint)")
    atomic_save({"model": student, "__author__": "mgd export_student"}, args.output)
    print(f"wrote {args.output}: {len(student)} tensors")


if __name__ == "__main__":
    main()
