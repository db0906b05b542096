"""Distil a student from a teacher with MGD (Matching Guided Distillation, ECCV 2020) or another method.

    python cls/main_mgd.py DATA -a mobilenet_v1 --teacher-resume r50.pth --distiller mgd --mgd-reducer amp \\
        --mgd-update-freq 2 -b 256 --lr 0.1 --multiprocessing-distributed --world-size 1 --rank 0

The matching is solved before training (unless resumed) and again after every --mgd-update-freq epochs,
from at most --mgd-update-images training images seen through the validation transforms. --distiller
ofd|kd|at|sp|nd trains with OFD, KD, attention transfer, similarity preservation or KD++ instead, on the
same footing (same data, schedule, checkpoints, DDP).
"""
from __future__ import annotations

import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import mgd
from mgd import distillers
from mgd import distributed as mdist
from mgd.builder import TrainableDistiller
from cls import data as cdata
from cls.engine import build_student, fit, start_worker
from cls.models import build_model, cached_weights_path, default_teacher, load_cached_pretrained, stage_specs
from cls.utils import (RunLog, common_parser, evaluate, finish_args, load_checkpoint, load_weights, logger,
                       make_scheduler)
from mgd.runner import UserError, launch, run_cli, worker_guard


def get_parser():
    p = common_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--teacher-arch", default=None, help="teacher architecture (default: the original's choice "
                   "for the student: resnet50 for mobilenet/shufflenet, resnet152 for resnet50)")
    p.add_argument("--teacher-resume", default="", metavar="PATH", help="teacher weights: a state dict or a "
                   "checkpoint with 'state_dict' (loaded before the margins are computed)")
    p.add_argument("--student-resume", default="", metavar="PATH", help="initial student weights")
    p.add_argument("--distiller", default="mgd", choices=["mgd", "ofd", "kd", "at", "sp", "nd"])
    p.add_argument("--kd-alpha", default=0.9, type=float, help="kd/nd: weight of the KD term (CE keeps 1 - alpha)")
    p.add_argument("--kd-temperature", default=4.0, type=float, help="kd/nd: softmax temperature")
    p.add_argument("--at-beta", default=1e3, type=float, help="at: beta (the loss is beta/2 * sum of stages)")
    p.add_argument("--sp-gamma", default=3e3, type=float, help="sp: gamma")
    p.add_argument("--nd-weight", default=1.0, type=float, help="nd: weight of the ND loss (KD++)")
    p.add_argument("--ofd-teacher-train", default=0, type=int, choices=[0, 1],
                   help="ofd: keep the teacher's BN in train mode, as OFD's code did")
    p.add_argument("--loss-factor", default=1e4, type=float, help="mgd/ofd: the distillation loss is divided by "
                   "the batch size and this factor (1e4 at 224 px; pick it so the distillation term starts near the "
                   "cross-entropy: the first step logs both)")
    p.add_argument("--mgd-reducer", default="amp", choices=["amp", "rd", "sp", "sm"])
    p.add_argument("--mgd-update-freq", default=2, type=int, help="re-solve the matching every N epochs")
    p.add_argument("--mgd-update-images", default=20000, type=int, help="images tracked per matching update "
                   "(over all processes)")
    p.add_argument("--mgd-with-kd", default=0, type=int, choices=[0, 1], help="add Hinton's KD loss (T = 1.5)")
    p.add_argument("--mgd-solver", default="ortools", choices=["ortools", "scipy"])
    return p


def check_args(args) -> None:
    """Cheap checks in the parent process, before any worker starts."""
    if args.teacher_arch is None:
        args.teacher_arch = default_teacher(args.arch)
        if args.teacher_arch is None:
            raise UserError(f"no default teacher for {args.arch}; give --teacher-arch")
    for name in (args.arch, args.teacher_arch):
        try:
            build_model(name, 2)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    if args.dataset == "imagefolder" and not os.path.isdir(args.data):
        raise UserError(f"data directory not found: {args.data}")
    if args.mgd_update_freq <= 0 or args.mgd_update_images <= 0 or args.loss_factor <= 0:
        raise UserError("--mgd-update-freq, --mgd-update-images and --loss-factor must be positive")


def build_teacher(args, num_classes: int) -> nn.Module:
    teacher = build_model(args.teacher_arch, num_classes)
    if args.teacher_resume:
        load_weights(teacher, args.teacher_resume, "--teacher-resume", num_classes)
    elif not (num_classes == 1000 and load_cached_pretrained(args.teacher_arch, teacher)):
        where = cached_weights_path(args.teacher_arch)
        hint = f" or put torchvision's weights at {where}" if where and num_classes == 1000 else ""
        raise UserError(f"no teacher weights: pass --teacher-resume PATH (train one with cls/main_base.py){hint}")
    return teacher


def build_distiller(args, teacher: nn.Module, student: nn.Module, num_classes: int) -> nn.Module:
    """The --distiller's module, with the models' stage positions; configuration errors become UserError."""
    layers = {"teacher_layers": stage_specs(teacher), "student_layers": stage_specs(student)}
    try:
        if args.distiller == "mgd":
            return mgd.MGDistiller(teacher, student, ignore_inds=None, reducer=args.mgd_reducer, sync_bn=args.sync_bn,
                                   with_kd=bool(args.mgd_with_kd), preReLU=True, distributed=args.distributed,
                                   solver=args.mgd_solver, **layers)
        options = {
            "kd": {"alpha": args.kd_alpha, "temperature": args.kd_temperature},
            "at": {"beta": args.at_beta, **layers},
            "sp": {"gamma": args.sp_gamma, **layers},
            "ofd": {"loss_factor": args.loss_factor, "teacher_train_mode": bool(args.ofd_teacher_train), **layers},
            "nd": {"num_classes": num_classes, "nd_weight": args.nd_weight, "alpha": args.kd_alpha,
                   "temperature": args.kd_temperature},
        }[args.distiller]
        return distillers.build_distiller(args.distiller, teacher, student, **options)
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot distil {args.teacher_arch} into {args.arch} with {args.distiller}: {exc}") from exc


def track_loader(track_set, args, epoch: int) -> DataLoader:
    """This process's shard of the training images (validation transforms), in a seeded random order."""
    shard = cdata.shard(track_set, args.rank, args.world_size)
    generator = torch.Generator().manual_seed((args.seed or 0) * 1000 + 7919 * (epoch + 1))
    order = torch.randperm(len(shard), generator=generator).tolist()
    return DataLoader(Subset(shard, order), batch_size=args.per_process_batch, num_workers=args.workers)


@worker_guard
def worker(local_rank: int, args) -> None:
    device, (train_set, valid_loader, track_set, num_classes) = start_worker(local_rank, args)
    teacher = build_teacher(args, num_classes).to(device)
    student = build_student(args, num_classes)
    if args.distributed and args.sync_bn:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    student.to(device)
    distiller = build_distiller(args, teacher, student, num_classes).to(device)
    params = distiller.get_learnable_parameters()
    optimizer = torch.optim.SGD(params, args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                nesterov=bool(args.nesterov) and args.momentum > 0)
    scheduler = make_scheduler(optimizer, args)
    start_epoch, best, ckpt = args.start_epoch, 0.0, {}
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        if ckpt.get("arch") != args.arch or ckpt.get("method", "mgd") != args.distiller or "distiller" not in ckpt:
            raise UserError(f"--resume: {args.resume} is not a {args.distiller} checkpoint for {args.arch}")
        student.load_state_dict(ckpt["student"])
        distiller.load_own_state_dict(ckpt["distiller"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        start_epoch, best = int(ckpt["epoch"]), float(ckpt["best_acc1"])
        logger.info("resumed from %s at epoch %d", args.resume, start_epoch)
    if args.evaluate:
        for name, model in (("teacher " + args.teacher_arch, teacher), ("student " + args.arch, student)):
            stats = evaluate(model, valid_loader, device)
            if args.rank == 0:
                print(f"{name}: top-1 {stats['top1']:.2f}  top-5 {stats['top5']:.2f}  loss {stats['loss']:.4f}")
        return

    view = TrainableDistiller(distiller)
    if args.distributed:  # only the student and its norm layers are synchronised; the teacher is not wrapped
        trainable = nn.parallel.DistributedDataParallel(view, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    elif device.type == "cuda" and torch.cuda.device_count() > 1 and args.gpu is None:
        trainable = nn.DataParallel(distiller)  # replicas of the whole distiller, each running its own copies
    else:
        trainable = view
    criterion = nn.CrossEntropyLoss()
    log = RunLog(args.output_dir, args.rank, False)
    is_mgd = args.distiller == "mgd"
    matching_epoch = [int(ckpt.get("matching_epoch", -1)) if args.resume else -1]

    def before_epoch(epoch: int) -> dict:
        """Re-solve the matching before epochs 0, f, 2f, ... (the original: after every f-th epoch)."""
        if not is_mgd or epoch % args.mgd_update_freq or matching_epoch[0] == epoch:
            return {}
        start = time.time()
        mgd.mgd_update(track_loader(track_set, args, epoch), distiller, max_images=args.mgd_update_images)
        agree = mdist.same_on_all_ranks(distiller.guided_inds)
        if not agree:
            raise RuntimeError("the ranks disagree on the channel matching after an update")
        matching_epoch[0] = epoch
        log.write({"event": "matching", "before_epoch": epoch, "num_updates": int(distiller.num_updates),
                   "ranks": args.world_size, "ranks_agree": agree, "seconds": round(time.time() - start, 1)})
        return {"matching_updates": int(distiller.num_updates)}

    if is_mgd and start_epoch % args.mgd_update_freq and int(distiller.num_updates) == 0:
        before_epoch(start_epoch - start_epoch % args.mgd_update_freq)  # a fresh run started mid-way
    if args.distiller == "nd" and not bool(distiller.class_means_ready):
        start = time.time()
        distiller.compute_class_means(cdata.eval_loader(track_set, args.per_process_batch, args.workers, args.rank,
                                                        args.world_size, device.type == "cuda"), device)
        log.write({"event": "class_means", "classes": num_classes, "seconds": round(time.time() - start, 1)})

    first = [True]

    def step(images, target):
        if is_mgd:
            output, losses = trainable(images)
            loss_distill, loss_kd = (losses if args.mgd_with_kd else (losses, None))
            terms = {"distill": loss_distill.sum() / images.shape[0] / args.loss_factor}
            if loss_kd is not None:
                terms["kd"] = loss_kd.mean()
            ce_weight = 1.0
        else:
            output, terms = trainable(images, target)
            terms = {k: v.mean() for k, v in terms.items()}  # DataParallel gathers one value per replica
            ce_weight = distiller.ce_weight
        ce = criterion(output, target)
        loss = ce_weight * ce + sum(terms.values())
        parts = {"ce": ce.item(), **{k: v.item() for k, v in terms.items()}}
        if first[0] and args.rank == 0:
            first[0] = False
            logger.info("first step: cross-entropy %.4f (weight %g), %s; distillation terms far above the "
                        "cross-entropy usually hurt (--loss-factor and the method weights scale them)", parts["ce"],
                        ce_weight, ", ".join(f"{k} {v:.4f}" for k, v in parts.items() if k != "ce"))
        return loss, output, parts

    fit(args=args, device=device, student=student, step=step, trainable=trainable, optimizer=optimizer,
        scheduler=scheduler, train_set=train_set, valid_loader=valid_loader,
        extra_state=lambda: {"distiller": distiller.own_state_dict(), "method": args.distiller,
                             "teacher_arch": args.teacher_arch, "matching_epoch": matching_epoch[0]},
        before_epoch=before_epoch, start_epoch=start_epoch, best_acc1=best)


def main(argv=None) -> None:
    parser = get_parser()
    args = parser.parse_args(argv)
    check_args(args)
    args = finish_args(args, tag=f"{args.distiller}.{args.mgd_reducer}" if args.distiller == "mgd" else args.distiller)
    launch(worker, args)


if __name__ == "__main__":
    run_cli(main)
