"""Distil a student from a teacher with MGD (Matching Guided Distillation, ECCV 2020) or another method.

    python cls/main_mgd.py DATA -a mobilenet_v1 --teacher-resume r50.pth --distiller mgd --mgd-reducer amp \\
        --mgd-update-freq 2 -b 256 --lr 0.1 --multiprocessing-distributed --world-size 1 --rank 0

Every method goes through the library's one contract (mgd.build_distiller): its flags become its options,
its prepare step (MGD: the channel matching, solved before training and before every --mgd-update-freq-th
epoch from at most --mgd-update-images training images seen through the validation transforms; KD++: the
teacher's class means, once) runs when the method asks for it, and its loss terms are added to the
cross-entropy. --distiller ofd|kd|at|sp|nd trains OFD, KD, attention transfer, similarity preservation or
KD++ on the same footing (same data, schedule, checkpoints, DDP, AMP).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch import nn

import mgd
from cls.models import stage_specs
from cls.trainer import (build_student, build_teacher, check_arch, evaluate_models, fit, make_optimizer, resume,
                         start_worker, teacher_arch)
from cls.utils import accuracy, common_parser, finish_args, make_scheduler
from mgd.engine import (RunLog, UserError, WithIndices, launch, mean_terms, prepare_loader, prepare_if_due, run_cli,
                        worker_guard, wrap_for_training)
from mgd.distillers import option_default
from mgd.engine.args import (distiller_options_from_args, loss_factor, non_negative_float, positive_float,
                             positive_int)

logger = logging.getLogger("cls")


def get_parser():
    p = common_parser(__doc__.strip().splitlines()[0], nesterov=1)
    p.add_argument("--distiller", default="mgd", choices=sorted(mgd.DISTILLERS))
    g = p.add_argument_group("method options (unset: the method's paper default)")
    g.add_argument("--loss-factor", default=None, type=loss_factor, help="mgd/ofd: the distillation loss is "
                   "divided by the batch size and this factor (default 1e4, the original's value at 224 px); 'auto': "
                   "measured before training so that the distillation term starts at --loss-ratio times the "
                   "cross-entropy (kept in the checkpoint; the first step logs both terms)")
    g.add_argument("--loss-ratio", default=None, type=positive_float, help="mgd/ofd with --loss-factor auto: the "
                   "distillation term's start as a multiple of the cross-entropy (default 2)")
    g.add_argument("--mgd-reducer", default=None, choices=["amp", "rd", "sp", "sm"], help="mgd: channel reducer "
                   "(default amp)")
    g.add_argument("--mgd-update-freq", default=2, type=positive_int, help="mgd: re-solve the matching every N epochs")
    g.add_argument("--mgd-update-images", default=None, type=positive_int, help="mgd: images tracked per matching "
                   f"update (over all processes; default {option_default('mgd', 'update_images')})")
    g.add_argument("--mgd-with-kd", default=0, type=int, choices=[0, 1], help="mgd: add Hinton's KD loss (T = 1.5)")
    g.add_argument("--mgd-solver", default=None, choices=["ortools", "scipy"], help="mgd: assignment solver "
                   "(default ortools; both exact)")
    g.add_argument("--kd-alpha", default=None, type=non_negative_float, help="kd/nd: weight of the KD term; the "
                   "cross-entropy keeps 1 - alpha (default 0.9)")
    g.add_argument("--kd-temperature", default=None, type=positive_float, help="kd/nd: softmax temperature "
                   "(default 4)")
    g.add_argument("--at-beta", default=None, type=non_negative_float, help="at: beta; the loss is beta/2 * the sum "
                   "over stages (default 1000)")
    g.add_argument("--sp-gamma", default=None, type=non_negative_float, help="sp: gamma (default 3000)")
    g.add_argument("--nd-weight", default=None, type=non_negative_float, help="kd, dkd, dist, reviewkd: > 0 adds "
                   "KD++'s ND loss on the penultimate embeddings with this weight (the '++' of each method, trained "
                   "with the KD++ recipe); nd (KD++ itself): default 1")
    for method, imagenet in (("kd", "5"), ("dkd", "1"), ("reviewkd", "1")):
        g.add_argument(f"--{method}-warmup-epochs", default=None, type=non_negative_float, help=f"{method}"
                       f"{' with --nd-weight, nd' if method == 'kd' else ''}: epochs over which the term ramps in "
                       f"linearly (default 20, the authors' CIFAR setting; ImageNet {imagenet})")
    g.add_argument("--kd-weight", default=None, type=non_negative_float, help="nd, kd with --nd-weight: weight of "
                   "the KD term in the KD++ recipe (default 1)")
    g.add_argument("--dkd-alpha", default=None, type=non_negative_float, help="dkd: TCKD weight (default 1)")
    g.add_argument("--dkd-beta", default=None, type=non_negative_float, help="dkd: NCKD weight (default 8; ImageNet "
                   "R34->R18: 0.5, R50->MobileNet-V1: 2)")
    g.add_argument("--dkd-temperature", default=None, type=positive_float, help="dkd: temperature (default 4; "
                   "ImageNet 1)")
    g.add_argument("--dist-beta", default=None, type=non_negative_float, help="dist: inter-class weight (default 1)")
    g.add_argument("--dist-gamma", default=None, type=non_negative_float, help="dist: intra-class weight (default 1)")
    g.add_argument("--dist-tau", default=None, type=positive_float, help="dist: temperature (default 1)")
    g.add_argument("--dist-weight", default=None, type=non_negative_float, help="dist: weight of the DIST term "
                   "beside the cross-entropy (default 2)")
    g.add_argument("--reviewkd-weight", default=None, type=non_negative_float, help="reviewkd: HCL weight "
                   "(default 5, CIFAR; ImageNet R34->R18: 1, R50->MobileNet-V1: 8)")
    g.add_argument("--reviewkd-mid-channels", default=None, type=positive_int, help="reviewkd: ABF middle width "
                   "(default min(512, the student's widest position); 256 for R50->MobileNet-V1)")
    g.add_argument("--crd-weight", default=None, type=non_negative_float, help="crd: weight (default 0.8)")
    g.add_argument("--crd-num-negatives", default=None, type=positive_int, help="crd: negatives per sample "
                   "(default 16384)")
    g.add_argument("--crd-temperature", default=None, type=positive_float, help="crd: NCE temperature (default 0.07)")
    g.add_argument("--crd-momentum", default=None, type=non_negative_float, help="crd: memory momentum (default 0.5)")
    g.add_argument("--crd-feat-dim", default=None, type=positive_int, help="crd: embedding size (default 128)")
    g.add_argument("--crd-memory", default=None, choices=["bank", "queue"], help="crd: 'bank' (the paper's: N x "
                   "feat-dim x 2 floats, needs the samples' indices) or 'queue' (the last --crd-num-negatives "
                   "embeddings, MoCo-style)")
    g.add_argument("--ofd-teacher-train", default=None, type=int, choices=[0, 1], dest="ofd_teacher_train_mode",
                   help="ofd: keep the teacher's BN in train mode, as OFD's code did (default 0)")
    return p


def check_args(args) -> None:
    """Cheap checks in the parent process, before any worker starts."""
    check_arch(args.arch, teacher_arch(args))
    if args.dataset == "imagefolder" and not os.path.isdir(args.data):
        raise UserError(f"data directory not found: {args.data}")


def build_distiller(args, teacher: nn.Module, student: nn.Module, num_samples: int) -> mgd.Distiller:
    """--distiller's method with its flags as options, the models' stage positions and the training set's size
    (for the methods that take them); configuration errors become one-line user errors."""
    options = distiller_options_from_args(args.distiller, args, teacher_layers=stage_specs(teacher),
                                          student_layers=stage_specs(student), num_samples=num_samples)
    try:
        return mgd.build_distiller(args.distiller, teacher, student, **options)
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot distil {args.teacher_arch} into {args.arch} with {args.distiller}: {exc}") from exc


def reducer(args) -> Optional[str]:
    """MGD's channel reducer for this run (the flag or the method's default); None for other methods."""
    return distiller_options_from_args(args.distiller, args).get("reducer", option_default(args.distiller, "reducer"))


def output_tag(args) -> str:
    """The method in the default output folder's name: the original's <distiller>.<reducer> for MGD."""
    return ".".join(filter(None, [args.distiller, reducer(args)]))


@worker_guard
def worker(local_rank: int, args) -> None:
    device, precision, (train_set, valid_loader, prepare_set, num_classes) = start_worker(local_rank, args)
    teacher = build_teacher(args, num_classes).to(device)
    student = build_student(args, num_classes)
    if args.distributed and args.sync_bn:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    student.to(device)
    distiller = build_distiller(args, teacher, student, len(train_set)).to(device)
    if distiller.needs_indices:  # CRD's memory: each sample's dataset index rides along with it
        train_set = WithIndices(train_set)
    precision.prepare_model(distiller)
    optimizer = make_optimizer(distiller.get_learnable_parameters(), args)
    scheduler = make_scheduler(optimizer, args)

    def distillation_run(ckpt) -> None:
        if "method" not in ckpt or "distiller" not in ckpt:
            raise UserError(f"--resume: {args.resume} is a main_base.py checkpoint (no distillation): pass it as "
                            "--student-resume to start distilling from its weights")
        if ckpt["method"] != args.distiller:
            raise UserError(f"--resume: {args.resume} is not a {args.distiller} checkpoint but a {ckpt['method']} "
                            f"one (--distiller {ckpt['method']})")
    method_reducer = reducer(args)
    same = {"teacher_arch": args.teacher_arch, **({"mgd_reducer": method_reducer} if method_reducer else {})}
    start_epoch, best = resume(args, student, optimizer, scheduler, precision, distillation_run, distiller, **same)
    if args.evaluate:
        evaluate_models({"teacher " + args.teacher_arch: teacher, "student " + args.arch: student}, valid_loader,
                        device, args.rank)
        return

    trainable = wrap_for_training(distiller, device, args.distributed, args.gpu, precision=precision)
    criterion = nn.CrossEntropyLoss()
    log = RunLog(args.output_dir, args.rank, args.tensorboard)
    first = [True]

    def step(batch):
        images, target = precision.to_device(batch[0]), batch[1].to(device, non_blocking=True)
        output, terms = trainable(images, target, **({"indices": batch[2]} if distiller.needs_indices else {}))
        terms = mean_terms(terms)
        ce = criterion(output.float(), target)
        loss = distiller.task_weight * ce + sum(terms.values())
        parts = {"ce": ce.item(), **{k: v.item() for k, v in terms.items()}}
        if first[0] and args.rank == 0:
            first[0] = False
            logger.info("first step: cross-entropy %.4f (weight %g), %s; distillation terms far above the "
                        "cross-entropy usually hurt (--loss-factor and the method weights scale them)", parts["ce"],
                        distiller.task_weight, ", ".join(f"{k} {v:.4f}" for k, v in parts.items() if k != "ce"))
        parts["train_top1"] = accuracy(output.detach(), target, topk=(1,))[0] / images.shape[0] * 100
        return loss, parts, images.shape[0]

    def prepare(epoch: int) -> dict:  # in float32: the matching statistics come from full-precision features
        return prepare_if_due(distiller, epoch, lambda e: prepare_loader(
            prepare_set, args.per_process_batch, args.workers, e, args.seed or 0, args.rank, args.world_size,
            device.type == "cuda"), log)

    fit(args=args, device=device, precision=precision, student=student, step=step, trainable=trainable,
        optimizer=optimizer, scheduler=scheduler, train_set=train_set, valid_loader=valid_loader,
        extra_state=lambda: {"distiller": distiller.own_state_dict(), "method": args.distiller, **same},
        log=log, before_epoch=prepare, start_epoch=start_epoch, best_acc1=best,
        drop_last=distiller.needs_full_batches)


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    check_args(args)
    args = finish_args(args, tag=output_tag(args))
    launch(worker, args)


if __name__ == "__main__":
    run_cli(main)
