"""Train a segmentation network, alone or distilled from a teacher (MGD, OFD, KD, AT, SP), reporting mIoU.

    python seg/train.py DATA --dataset voc --use-sbd --model deeplabv3plus_resnet101 --epochs 50
    python seg/train.py DATA --dataset voc --use-sbd --model deeplabv3plus_resnet18 \\
        --teacher-model deeplabv3plus_resnet101 --teacher-resume r101/student.pth --distiller mgd --mgd-reducer amp

Modelled on torchvision's references/segmentation (SGD with momentum, poly LR decay per iteration with power
0.9, per-pixel cross-entropy ignoring 255, validation at the original resolution) and on cls/main_mgd.py
(the same flags, launch, checkpoints, logs and exact resume). ``--distiller none`` (the default) trains a
plain model: a teacher or a baseline. Any other method goes through the library's one contract
(``mgd.build_distiller``) at the positions of --distill-positions (seg/positions.py), with OFD's
segmentation settings: per-position weights 1/8, 1/4, 1/2, 1, 1, 1/16 and a loss factor of 1e5.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any, Dict, List

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one word and 130, not a traceback (run_cli's next)
    signal.signal(signal.SIGINT, lambda *_: (sys.stderr.write("interrupted\n"), os._exit(130)))

import torch
from torch import nn

import mgd
from mgd.checkpoint import atomic_save
from mgd.registry import registered_methods
from mgd.engine import (ArgumentParser, Precision, RunLog, UserError, add_launch_arguments, add_precision_arguments,
                        add_run_arguments, check_output_dir, eval_loader, launch, load_checkpoint, mean_terms,
                        plain_args, prepare_loader, read_weights, resume_from, run_cli, save_checkpoints,
                        setup_process, start_output_dir, worker_guard, wrap_for_training)
from mgd.engine.loop import EpochTask, fit
from mgd.engine.checkpoints import CHECKPOINT_SET, check_resume_matches, load_weights, weights_fingerprint
from mgd.engine.args import (add_method_arguments, add_training_arguments, check_method_flags,
                             distiller_options_from_args, identity_settings, positive_int)
from seg import data as sdata
from seg.evaluate import evaluate
from seg.losses import seg_cross_entropy
from seg.models import MODEL_NAMES, build_model
from seg.positions import pair_positions, resolve_positions, stage_weights

logger = logging.getLogger("seg")

#: What a run writes in its --output-dir (what makes a folder hold a previous run).
CHECKPOINT_NAMES = CHECKPOINT_SET
#: OFD's segmentation loss factor (train_with_distillation.py: loss_distill.sum() / batch_size * 1e-5).
OFD_SEG_LOSS_FACTOR = 1e5
POLY_POWER = 0.9


def dense_methods() -> List[str]:
    """The registered methods that work on dense (N, C, H, W) outputs (their ``dense_outputs``): plain training
    (``none``), the feature methods at seg/positions.py's positions, pixel-wise KD, and any other package's that
    says so. The others (nd, dkd, dist, crd, reviewkd) need image-level labels or a classifier embedding."""
    return registered_methods(dense_outputs=True)


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("data", metavar="DIR", help="the dataset's root folder (see --dataset)")
    p.add_argument("--dataset", default="voc", choices=["voc", "cityscapes", "folder"])
    p.add_argument("--use-sbd", action="store_true", help="voc: add SBD's train_noval images (DIR/SBD)")
    p.add_argument("--download", action="store_true", help="voc: let torchvision download VOC 2012 (and SBD)")
    p.add_argument("--num-classes", default=None, type=positive_int, help="folder: the class count (default: "
                   "1 + the largest label value in DIR/train/labels)")
    p.add_argument("--crop-size", default=None, type=positive_int, help="training crop (default: 513 for voc "
                   "and folder, 768 for cityscapes, as OFD's code)")
    p.add_argument("--model", default="deeplabv3plus_resnet18", choices=MODEL_NAMES, help="the student (or "
                   "the plain model)")
    p.add_argument("--pretrained-backbone", default="", metavar="PATH", help="ImageNet weights of the model's "
                   "backbone: a local state dict of the torchvision classifier (never downloaded)")
    p.add_argument("--student-resume", default="", metavar="PATH", help="initial weights of the whole model")
    p.add_argument("--teacher-model", default="deeplabv3plus_resnet101", choices=MODEL_NAMES)
    p.add_argument("--teacher-resume", default="", metavar="PATH", help="teacher weights (a state dict or a "
                   "checkpoint of this script; loaded before the margins are computed)")
    p.add_argument("--distiller", default="none", choices=dense_methods(),
                   help="the method; none (plain training, the default) trains the model alone")
    p.add_argument("--distill-positions", default="all", help="backbone, head, all, or a comma-separated list of "
                   "stage1..stage4, aspp, decoder (docs/applications/segmentation.md)")
    add_training_arguments(p, epochs=30, batch_size=8, lr=0.01, workers=4, checkpoint="last.pth",
                           evaluate="evaluate the model (and the teacher)")  # the LR decays as (1 - it / total) ** 0.9
    p.add_argument("--sync-bn", default=0, type=int, choices=[0, 1], help="SyncBatchNorm in distributed training")
    add_launch_arguments(p)
    add_precision_arguments(p)
    add_run_arguments(p)
    # no classifier embedding for KD++'s ND term, and without it KD has no KD++ weight or warm-up; a method with
    # per-task settings (an option "task") takes its segmentation ones
    add_method_arguments(p, dense_methods(), defaults={"loss_factor": OFD_SEG_LOSS_FACTOR, "task": "segmentation"},
                         exclude=("nd_weight", "kd_weight", "warmup_epochs"))
    return p


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    """Checks and defaults in the parent process, before any worker starts."""
    try:
        resolve_positions(args.distill_positions)
    except ValueError as exc:
        raise UserError(f"--distill-positions: {exc}") from None
    if not os.path.isdir(args.data):
        raise UserError(f"data directory not found: {args.data}")
    if args.dataset == "folder":
        for split in ("train", "val"):
            sdata.folder_pairs(args.data, split)
    method = mgd.DISTILLERS[args.distiller]
    if method.needs_teacher and not args.teacher_resume and not args.evaluate:
        raise UserError(f"--distiller {args.distiller} needs the teacher's weights: --teacher-resume PATH (train one "
                        "with --distiller none)")
    check_method_flags(args.distiller, args, dense_methods())
    args.crop_size = args.crop_size or sdata.DEFAULT_CROP[args.dataset]
    if args.output_dir is None:
        name = os.path.basename(os.path.normpath(args.data)) or "data"
        tag = [args.distiller, *map(str, identity_settings(args.distiller, args).values())] \
            if method.needs_teacher else []
        args.output_dir = os.path.join("output", ".".join([name, args.model] + tag))
    if not args.evaluate:
        check_output_dir(args.output_dir, CHECKPOINT_NAMES, args.resume, args.overwrite,
                         {"--student-resume": args.student_resume, "--teacher-resume": args.teacher_resume}, args.rank)
    return args


# ------------------------------------------------------------------------------------------ networks

def load_model_weights(model: nn.Module, path: str, what: str) -> None:
    """Strict load of a state dict (or a checkpoint holding one; torchvision's auxiliary-head keys ignored)."""
    state = {k: v for k, v in read_weights(path, what).items() if not k.startswith("aux_classifier.")}
    load_weights(model, state, what, path)


def build_distiller(args, teacher: nn.Module, student: nn.Module) -> mgd.Distiller:
    """--distiller's method at the paired positions (a method that distils stage features), with OFD's
    segmentation weights, loss factor and cross-entropy for the methods that take them (the options a method does
    not take are not passed); every configuration problem is a one-line UserError."""
    method = mgd.DISTILLERS[args.distiller]
    given: Dict[str, Any] = {"calibration_task_loss": seg_cross_entropy}
    if method.needs_features:
        try:
            names, t_specs, s_specs = pair_positions(teacher, student, args.distill_positions, method.wider_teacher)
        except ValueError as exc:
            raise UserError(f"cannot distil {args.teacher_model} into {args.model} with {args.distiller}: {exc}"
                            ) from None
        given.update(teacher_layers=t_specs, student_layers=s_specs, stage_weights=stage_weights(names))
        logger.info("distilling at %s", ", ".join(names))
    opts = distiller_options_from_args(args.distiller, args, **given)
    try:
        return mgd.build_distiller(args.distiller, teacher, student, **opts)
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot distil {args.teacher_model} into {args.model} with {args.distiller}: {exc}") from exc


def set_poly_lr(optimizer: torch.optim.Optimizer, base_lr: float, iteration: int, total: int) -> float:
    """torchvision's reference schedule: lr = base * (1 - it / total) ** 0.9, set before each step (a function
    of the iteration alone, so a resumed run needs no scheduler state)."""
    lr = base_lr * max(0.0, 1.0 - iteration / total) ** POLY_POWER
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def evaluate_models(models: Dict[str, nn.Module], loader, device: torch.device, num_classes: int, rank: int) -> None:
    """--evaluate: one line per model (rank 0)."""
    for name, model in models.items():
        stats = evaluate(model, loader, device, num_classes, rank == 0)
        if rank == 0:
            print(f"{name}: mIoU {stats['miou']:.2f}  pixel acc {stats['pixel_acc']:.2f}  loss {stats['loss']:.4f}  "
                  f"({stats['images']} images)")


# ------------------------------------------------------------------------------------------ worker

@worker_guard
def worker(local_rank: int, args) -> None:
    device = setup_process(local_rank, args)
    if not args.evaluate:
        start_output_dir(args.output_dir, CHECKPOINT_NAMES, bool(args.resume), args.rank, args.overwrite)
    train_set, val_set, prepare_set, num_classes = sdata.build_datasets(args)
    args.per_process_batch = max(1, args.batch_size // args.world_size)
    if len(train_set) // args.world_size < args.per_process_batch and not args.evaluate:
        raise UserError(f"the training set ({len(train_set)} images) gives no full batch of {args.per_process_batch} "
                        f"per process: lower -b")
    val_loader = eval_loader(val_set, 1, args.workers, args.rank, args.world_size, device.type == "cuda")
    precision = Precision(args.amp, args.amp_dtype, device, args.channels_last)
    logger.info("%s on %s, %d process(es), %s, %d classes", args.model, device, args.world_size,
                precision.describe(), num_classes)

    student = build_model(args.model, num_classes, args.pretrained_backbone or None)
    if args.student_resume:
        load_model_weights(student, args.student_resume, "--student-resume")
    teacher = None
    if args.teacher_resume:
        teacher = build_model(args.teacher_model, num_classes)
        load_model_weights(teacher, args.teacher_resume, "--teacher-resume")
        teacher.to(device)
    if args.evaluate:
        if args.resume:
            load_model_weights(student, args.resume, "--resume")
        evaluate_models({**({f"teacher {args.teacher_model}": teacher} if teacher is not None else {}),
                         args.model: student.to(device)}, val_loader, device, num_classes, args.rank)
        return
    if args.distributed and args.sync_bn:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    student.to(device)
    distiller = build_distiller(args, teacher, student).to(device)  # none: the student alone
    precision.prepare_model(distiller)
    optimizer = torch.optim.SGD(distiller.get_learnable_parameters(), args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)

    same = {"teacher_model": args.teacher_model, "distill_positions": args.distill_positions,
            "teacher_weights": weights_fingerprint(teacher), **identity_settings(args.distiller, args)
            } if distiller.needs_teacher else {}
    start_epoch, best = 0, 0.0
    if args.resume:
        ckpt = load_checkpoint(args.resume, ("student", "epoch", "optimizer", "best_miou", "method"))
        if ckpt["method"] != args.distiller:
            raise UserError(f"--resume: {args.resume} was written with --distiller {ckpt['method']}, this run has "
                            f"--distiller {args.distiller}")
        check_resume_matches(ckpt, args.resume, model=args.model)
        start_epoch = resume_from(ckpt, args.resume, student, "student", optimizer, precision, None, distiller,
                                  args.epochs, num_classes=num_classes, **same)
        best = float(ckpt["best_miou"])

    trainable = wrap_for_training(distiller, device, args.distributed, args.gpu, precision=precision)
    log = RunLog(args.output_dir, args.rank, args.tensorboard)
    task_weight = distiller.task_weight
    state = {"iteration": 0, "total": 1, "first": True}

    def step(batch):
        set_poly_lr(optimizer, args.lr, state["iteration"], state["total"])
        state["iteration"] += 1
        images, target = precision.to_device(batch[0]), batch[1].to(device, non_blocking=True)
        output, terms = trainable(images, target)
        terms = mean_terms(terms)
        ce = seg_cross_entropy(output, target)
        loss = task_weight * ce + sum(terms.values())
        parts = {"ce": ce.item(), **{k: v.item() for k, v in terms.items()}}
        if state["first"] and terms and args.rank == 0:
            logger.info("first step: cross-entropy %.4f (weight %g), %s; distillation terms far above the "
                        "cross-entropy usually hurt (--loss-factor scales mgd/ofd)", parts["ce"], task_weight,
                        ", ".join(f"{k} {v:.4f}" for k, v in parts.items() if k != "ce"))
        state["first"] = False
        return loss, parts, images.shape[0]

    task = SegmentationEpochs(args, device, precision, student, distiller, optimizer, val_loader, prepare_set,
                              num_classes, same, state)
    fit(args=args, device=device, precision=precision, distiller=distiller, trainable=trainable, step=step,
        optimizer=optimizer, train_set=train_set, log=log, task=task, start_epoch=start_epoch, best=best)


class SegmentationEpochs(EpochTask):
    """What segmentation adds to the engine's one loop: the poly LR per iteration, mIoU on the validation set (the best makes best.pth), and its checkpoints."""

    score = "miou"
    log_name = "seg"
    drop_last = True

    def __init__(self, args, device, precision, student, distiller, optimizer, val_loader, prepare_set,
                 num_classes: int, identity: Dict[str, Any], schedule: Dict[str, int]) -> None:
        self.args, self.device, self.precision, self.student, self.distiller = args, device, precision, student, \
            distiller
        self.optimizer, self.val_loader, self.prepare_set = optimizer, val_loader, prepare_set
        self.num_classes, self.identity, self.schedule = num_classes, identity, schedule

    def prepare_loader(self, epoch: int):
        a = self.args
        return prepare_loader(self.prepare_set, a.per_process_batch, a.workers, epoch, a.seed or 0, a.rank,
                              a.world_size, self.device.type == "cuda")

    def before_epoch(self, epoch: int, loader, optimizer) -> float:
        self.schedule["total"] = len(loader) * self.args.epochs
        self.schedule["iteration"] = len(loader) * epoch
        return set_poly_lr(optimizer, self.args.lr, self.schedule["iteration"], self.schedule["total"])

    def evaluate(self, epoch: int) -> Dict[str, Any]:
        val = evaluate(self.student, self.val_loader, self.device, self.num_classes, self.args.rank == 0)
        return {"miou": val["miou"], "pixel_acc": val["pixel_acc"], "val_loss": val["loss"], "iou": val["iou"]}

    def train_record(self, stats: Dict[str, float]) -> Dict[str, Any]:
        return {f"train_{k}": v for k, v in stats.items()}

    def weights(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return {"the student": self.student.state_dict(), "the distiller": self.distiller.own_state_dict()}

    def save(self, epoch: int, record: Dict[str, Any], is_best: bool, best: float) -> None:
        a = self.args
        ckpt = {"epoch": epoch + 1, "model": a.model, "num_classes": self.num_classes, "method": a.distiller,
                "student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.precision.state_dict(), "best_miou": best, "args": plain_args(a),
                "distiller": self.distiller.own_state_dict(), **self.identity}
        save_checkpoints(ckpt, a.output_dir, ["last.pth"] + (["best.pth"] if is_best else []))
        atomic_save(self.student.state_dict(), os.path.join(a.output_dir, "student.pth"))

    def summary(self, epoch: int, record: Dict[str, Any]) -> str:
        parts = "  ".join(f"{k[len('train_'):]} {v:.4f}" for k, v in record.items() if k.startswith("train_"))
        return (f"{parts}  val mIoU {record['miou']:.2f}  pixel acc {record['pixel_acc']:.2f}  "
                f"lr {record['lr']:.4g}  {record['seconds']:.0f} s")


def main(argv=None) -> None:
    args = finish_args(get_parser().parse_args(argv))
    launch(worker, args)


if __name__ == "__main__":
    run_cli(main)
