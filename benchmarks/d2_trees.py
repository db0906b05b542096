#!/usr/bin/env python
"""Real-data detection run on this CPU, offline: a RetinaNet R50 teacher, a RetinaNet R18 student alone and the
same student with MGD (or another feature method), on the aerial tree images that ship with PyPI deepforest
(d2/mgd_d2/trees.py: 44 training tiles of 400 x 400 from three images, 12 evaluation tiles of a held-out image).

    OMP_NUM_THREADS=1 python benchmarks/d2_trees.py                     # the README's table (budget: see --help)
    python benchmarks/d2_trees.py --iters 20 --teacher-iters 20         # a smoke run

Every network is trained from scratch (no package ships ResNet weights): trainable BatchNorm in the backbones
(MODEL.RESNETS.NORM BN, FREEZE_AT 0), anchors halved for tree crowns (16-406 px). Both students start from the
same initialisation and read the same images in the same order (SEED); the MGD student's matching updates and
loss-factor calibration read their own data stream. Prints box AP / AP50 on the held-out tiles and the times.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "d2"))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import train_net  # noqa: E402
from mgd_d2 import add_mgd_config  # noqa: E402
from mgd_d2.trees import register_trees  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(HERE), "d2", "configs")
ANCHORS = [[s * 2 ** (i + 4) for s in (1.0, 1.26, 1.5875)] for i in range(5)]  # 16, 32, ... 256 (x 2^0, 1/3, 2/3)
#: A lighter head than COCO's (FPN and head 128 channels wide, 2 convs per head tower instead of 256 and 4): at
#: 320 px it takes the teacher's step from 7.1 s to 2.6 s on one thread. Teacher and students share it.
HEAD = {"MODEL.FPN.OUT_CHANNELS": 128, "MODEL.RETINANET.NUM_CONVS": 2}
#: Gradient-norm clipping: from scratch, with lr 0.01, the first attempt of the teacher diverged (NaN losses at
#: iteration 83 of its warm-up); with lr 0.005 and this clipping it trains.
CLIP = {"SOLVER.CLIP_GRADIENTS.ENABLED": True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "norm",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 5.0}


def config(path: str, out: str, iters: int, args, **extra):
    """The tree-run settings on top of ``path`` (a d2/configs file)."""
    cfg = get_cfg()
    add_mgd_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, path))
    cfg.MGD.CONFIG_DIR = CONFIGS
    opts = {
        "MODEL.DEVICE": "cpu", "MODEL.WEIGHTS": "", "MODEL.RETINANET.NUM_CLASSES": 1,
        "MODEL.RESNETS.NORM": "BN", "MODEL.BACKBONE.FREEZE_AT": 0, "MODEL.ANCHOR_GENERATOR.SIZES": ANCHORS,
        "DATASETS.TRAIN": ("trees_train",), "DATASETS.TEST": ("trees_val",),
        "INPUT.MIN_SIZE_TRAIN": (args.size,), "INPUT.MAX_SIZE_TRAIN": args.size, "INPUT.MIN_SIZE_TEST": args.size,
        "INPUT.MAX_SIZE_TEST": args.size, "DATALOADER.NUM_WORKERS": 0, **HEAD,
        "SOLVER.IMS_PER_BATCH": args.batch, "SOLVER.BASE_LR": args.lr, "SOLVER.MAX_ITER": iters,
        "SOLVER.STEPS": (int(iters * 0.8),), "SOLVER.WARMUP_ITERS": min(100, iters // 5),
        "SOLVER.CHECKPOINT_PERIOD": 10 ** 9, **CLIP, "TEST.EVAL_PERIOD": 0, "SEED": args.seed, "OUTPUT_DIR": out,
        # the matching: 4 updates over the run, each from a pass over the 44 training tiles
        "MGD.UPDATE_FREQ": [max(1, iters // 4)] * 2, "MGD.UPDATE_SLOW_STEP": [iters],
        "MGD.UPDATE_ITER": max(1, 44 // args.batch), "MGD.LOSS_FACTOR": "auto",
        "MGD.CALIBRATION_IMAGES": 44,
    }
    if args.loss_ratio is not None:
        opts["MGD.LOSS_RATIO"] = args.loss_ratio
    opts.update(extra)
    cfg.merge_from_list([item for key_value in opts.items() for item in key_value])
    cfg.freeze()
    return cfg


def train_and_test(cfg, what: str):
    """Train ``cfg`` from its seed and evaluate on trees_val; (bbox results, seconds of both)."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    seed_all_rng(cfg.SEED)
    start = time.perf_counter()
    trainer = train_net.Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # ends with the evaluation on trees_val (DefaultTrainer's EvalHook after the last iteration)
    seconds = time.perf_counter() - start
    results = trainer._last_eval_results["bbox"]  # what that evaluation returned
    print(f"{what}: AP {results['AP']:.2f}, AP50 {results['AP50']:.2f} ({seconds / 60:.1f} min)", flush=True)
    return results, seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=300, help="iterations of each student (default 300)")
    p.add_argument("--teacher-iters", type=int, default=500, help="iterations of the teacher (default 500)")
    p.add_argument("--size", type=int, default=320, help="input side of the 400 px tiles (default 320)")
    p.add_argument("--batch", type=int, default=4, help="images per iteration (default 4)")
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--method", default="mgd", choices=["mgd", "ofd"], help="the distilled student's method")
    p.add_argument("--loss-ratio", type=float, default=None, help="MGD.LOSS_RATIO (loss_distill / detector losses "
                                                                  "at the start; default: the config's, 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="output/d2_trees", help="work folder (tiles, runs)")
    args = p.parse_args(argv)
    setup_logger(name="detectron2")
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    try:
        counts = register_trees(os.path.join(args.output, "tiles"))
    except RuntimeError as exc:
        raise SystemExit(f"error: {exc}")
    print(f"trees: {counts['trees_train']['images']} training tiles ({counts['trees_train']['boxes']} boxes), "
          f"{counts['trees_val']['images']} held-out tiles ({counts['trees_val']['boxes']} boxes); "
          f"{args.iters} student / {args.teacher_iters} teacher iterations of {args.batch} images", flush=True)
    out = lambda name: os.path.join(args.output, name)  # noqa: E731
    rows = []
    teacher_cfg = config("retinanet_R50_FPN_1x_tv.yaml", out("teacher_R50"), args.teacher_iters, args)
    rows.append(("teacher R50", *train_and_test(teacher_cfg, "teacher R50")))
    student_cfg = config("retinanet_R18_FPN_1x_tv.yaml", out("student_R18"), args.iters, args)
    rows.append(("student R18 alone", *train_and_test(student_cfg, "student R18 alone")))
    method_config = {"mgd": "mgd_retinanet_R50_R18_FPN_1x.yaml", "ofd": "ofd_retinanet_R50_R18_FPN_1x.yaml"}
    distilled_cfg = config(method_config[args.method], out(f"student_R18_{args.method}"), args.iters, args,
                           **{"MGD.TEACHER.WEIGHTS": os.path.join(teacher_cfg.OUTPUT_DIR, "model_final.pth"),
                              "MGD.TEACHER.OPTS": ["MODEL.RESNETS.NORM", "BN", "MODEL.ANCHOR_GENERATOR.SIZES",
                                                   str(ANCHORS), *[str(x) for kv in HEAD.items() for x in kv]]})
    name = f"student R18 + {args.method.upper()}"
    rows.append((name, *train_and_test(distilled_cfg, name)))
    print("\n| model | iterations | box AP | AP50 | train time (min) |\n|---|---|---|---|---|")
    for (name, res, seconds), iters in zip(rows, (args.teacher_iters, args.iters, args.iters)):
        print(f"| {name} | {iters} | {res['AP']:.2f} | {res['AP50']:.2f} | {seconds / 60:.1f} |")


if __name__ == "__main__":
    main()
