"""The training loop shared by main_base.py and main_mgd.py: flat and explicit, as in torchvision's
references (``train_one_epoch``, ``evaluate``, a ``fit`` loop), with exact resume.

Exact resume: when ``--seed`` is given, everything random in epoch e (the data order, augmentations, the
rd reducer) is seeded from (seed, e) at the start of the epoch, so an interrupted run resumed from its
last checkpoint computes the same epochs as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Optional

import torch
from tqdm import tqdm

from mgd.checkpoint import atomic_save

from . import data as cdata
from .models import build_model, cached_weights_path, load_cached_pretrained
from mgd.runner import UserError, seed_everything, setup_process

from .utils import (Meter, RunLog, accuracy, evaluate, load_weights, plain_args, save_checkpoint,
                    start_output_dir)

logger = logging.getLogger("cls")

#: step(images, target) -> (loss to back-propagate, logits, {name: float} loss parts)
StepFn = Callable[[torch.Tensor, torch.Tensor], Any]


def build_student(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    """The student/plain model, initialised from --student-resume or cached ImageNet weights if asked."""
    try:
        model = build_model(args.arch, num_classes)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if getattr(args, "student_resume", ""):
        load_weights(model, args.student_resume, "--student-resume", num_classes)
    elif args.use_pretrained:
        if not load_cached_pretrained(args.arch, model):
            where = cached_weights_path(args.arch)
            raise UserError(f"--use-pretrained: no cached ImageNet weights for {args.arch}"
                            + (f" (expected {where})" if where else "") + "; pass --student-resume PATH instead")
    return model


def make_loaders(args: argparse.Namespace, device: torch.device):
    """(train dataset, valid loader, track dataset, num_classes) for this process."""
    train_set, valid_set, track_set, num_classes = cdata.build_datasets(args)
    args.per_process_batch = max(1, args.batch_size // args.world_size)
    if len(train_set) // args.world_size < args.per_process_batch:
        raise UserError(f"the training set ({len(train_set)} images) is smaller than one batch per process "
                        f"({args.per_process_batch}); lower --batch-size")
    pin = device.type == "cuda"
    valid_loader = cdata.eval_loader(valid_set, args.per_process_batch, args.workers, args.rank, args.world_size, pin)
    return train_set, valid_loader, track_set, num_classes


def start_worker(local_rank: int, args: argparse.Namespace):
    """Process set-up shared by the scripts: (device, (train set, valid loader, track set, num classes))."""
    device = setup_process(local_rank, args)
    if not args.evaluate:
        start_output_dir(args.output_dir, bool(args.resume), args.rank)
    return device, make_loaders(args, device)


def train_one_epoch(step: StepFn, parameters_owner: torch.nn.Module, train_set, optimizer, epoch: int,
                    args: argparse.Namespace, device: torch.device) -> Dict[str, float]:
    """One pass over this process's shard of the epoch's permutation; returns averaged loss parts and
    training top-1 over all processes."""
    loader = cdata.train_loader(train_set, args.per_process_batch, args.workers, epoch, args.seed or 0,
                                args.rank, args.world_size, device.type == "cuda")
    parameters_owner.train()
    meter = Meter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=args.rank != 0, leave=False, dynamic_ncols=True,
               mininterval=1.0, miniters=args.print_freq)
    for images, target in bar:
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        loss, output, parts = step(images, target)
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"loss is {loss.item()} at epoch {epoch}: lower --lr or raise --loss-factor")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        top1 = accuracy(output.detach(), target, topk=(1,))[0] / images.shape[0] * 100
        meter.update(images.shape[0], loss=loss.item(), train_top1=top1, **parts)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return meter.averages(device)


def fit(*, args: argparse.Namespace, device: torch.device, student: torch.nn.Module, step: StepFn,
        trainable: torch.nn.Module, optimizer, scheduler, train_set, valid_loader,
        extra_state: Callable[[], Dict[str, Any]], before_epoch: Optional[Callable[[int], Dict[str, Any]]] = None,
        start_epoch: int = 0, best_acc1: float = 0.0) -> float:
    """Epoch loop: ``before_epoch`` (matching updates), train, step the LR, evaluate, checkpoint, log.

    ``trainable`` is what gets train mode (the DDP-wrapped module); ``extra_state()`` adds to checkpoints
    (e.g. the distiller's matching state). Returns the best top-1.
    """
    log = RunLog(args.output_dir, args.rank, args.tensorboard)
    for epoch in range(start_epoch, args.epochs):
        start = time.time()
        if args.seed is not None:
            seed_everything(args.seed * 1000 + epoch)
        before = before_epoch(epoch) if before_epoch is not None else {}
        lr = optimizer.param_groups[0]["lr"]
        train_stats = train_one_epoch(step, trainable, train_set, optimizer, epoch, args, device)
        scheduler.step()
        val = evaluate(student, valid_loader, device)
        record: Dict[str, Any] = {"epoch": epoch, "lr": lr, **{f"train_{k}" if not k.startswith("train_") else k: v
                                                               for k, v in train_stats.items()},
                                  "top1": val["top1"], "top5": val["top5"], "val_loss": val["loss"], **before}
        is_best = val["top1"] > best_acc1
        best_acc1 = max(best_acc1, val["top1"])
        record["best_top1"] = best_acc1
        record["seconds"] = round(time.time() - start, 1)
        if args.rank == 0:
            state = {"epoch": epoch + 1, "arch": args.arch, "student": student.state_dict(),
                     "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
                     "best_acc1": best_acc1, "args": plain_args(args), **extra_state()}
            save_checkpoint(state, is_best, args.output_dir)
            atomic_save(student.state_dict(), os.path.join(args.output_dir, "student.pth"))
        parts = "  ".join(f"{k} {v:.4f}" for k, v in train_stats.items() if k not in ("train_top1",))
        logger.info("epoch %d/%d  %s  train top-1 %.2f  val top-1 %.2f top-5 %.2f  lr %.4g  %.0f s",
                    epoch, args.epochs - 1, parts, train_stats.get("train_top1", 0.0), val["top1"], val["top5"],
                    lr, record["seconds"])
        log.write(record)
    log.close()
    return best_acc1
