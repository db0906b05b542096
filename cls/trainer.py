"""What main_base.py and main_mgd.py share: building the networks, the one worker of both scripts, and what
classification adds to the engine's epoch loop (:class:`ClassificationEpochs` for :func:`mgd.engine.loop.fit`).
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

import mgd
from mgd.checkpoint import atomic_save
from mgd.engine import (Precision, RunLog, UserError, WithIndices, eval_loader, load_backbone_weights,
                        load_checkpoint, mean_terms, plain_args, prepare_loader, read_weights, resume_from,
                        save_checkpoints, setup_process, start_output_dir, wrap_for_training)
from mgd.engine.loop import EpochTask, fit
from mgd.engine.args import distiller_options_from_args, identity_settings
from mgd.engine.checkpoints import check_epochs_left, weights_fingerprint
from mgd.features import classifier_layer

from . import data as cdata
from .models import TIMM_PREFIX, build_model, cached_weights_path, default_teacher, stage_specs
from .utils import CHECKPOINT_NAMES, accuracy, evaluate, load_classifier_weights, make_scheduler

logger = logging.getLogger("cls")

#: step((images, target)) -> (loss to back-propagate, {name: float} parts, batch size)
StepFn = Callable[[Any], Any]


def check_arch(*names: str) -> None:
    """UserError listing the valid names for an unknown architecture (cheap, before any worker starts)."""
    for name in names:
        try:
            build_model(name, 2)
        except ValueError as exc:
            raise UserError(str(exc)) from exc


def teacher_arch(args: argparse.Namespace) -> str:
    """--teacher-arch, or the original's teacher for the student."""
    if args.teacher_arch is None:
        args.teacher_arch = default_teacher(args.arch)
        if args.teacher_arch is None:
            raise UserError(f"no default teacher for {args.arch}; give --teacher-arch")
    return args.teacher_arch


def classifier(model: nn.Module) -> Tuple[str, nn.Linear]:
    """(state-dict prefix, layer) of the final linear classifier (``fc``, ``classifier.1``, ...)."""
    name = classifier_layer(model)
    return name + ".", model.get_submodule(name)


def load_backbone(model: nn.Module, state: Dict[str, torch.Tensor], what: str, path: str) -> None:
    """Every tensor of ``state`` but the classifier's, strictly; the classifier is re-initialised
    (N(0, 0.01), 0), as for a linear evaluation or fine-tuning on other classes."""
    head, layer = classifier(model)
    load_backbone_weights(model, state, what, path, skip=(head,))
    nn.init.normal_(layer.weight, 0.0, 0.01)
    nn.init.zeros_(layer.bias)


def load_pretrained(args: argparse.Namespace, model: nn.Module, num_classes: int) -> None:
    """--pretrained: torchvision's ImageNet weights from the local cache (never downloaded); on another class
    count than ImageNet's 1000, everything but the classifier, which starts afresh."""
    if args.arch.startswith(TIMM_PREFIX):
        raise UserError("--pretrained: timm weights are never downloaded here; pass a local state dict with "
                        "--student-resume FILE (e.g. timm.create_model(name, pretrained=True).state_dict() saved "
                        "on a machine with internet)")
    where = cached_weights_path(args.arch)
    if where is None or not os.path.isfile(where):
        raise UserError(f"--pretrained: no cached ImageNet weights for {args.arch}" +
                        (f" (expected {where})" if where else " (torchvision has none)") +
                        "; pass --student-resume PATH instead")
    if num_classes == 1000:
        load_classifier_weights(model, where, "--pretrained", num_classes)
    else:
        load_backbone(model, read_weights(where, "--pretrained"), "--pretrained", where)
        logger.info("--pretrained: ImageNet weights of %s, classifier re-initialised for %d classes", args.arch,
                    num_classes)


def build_student(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The student/plain model, initialised from --student-resume or cached ImageNet weights if asked. With
    --seed, its random initialisation is drawn from the seed alone (a forked RNG): the same student starts
    every method's run of that seed, whatever the script built before it (main_mgd.py builds the teacher)."""
    with torch.random.fork_rng(devices=[]):
        if args.seed is not None:
            torch.manual_seed(args.seed)
        model = build_model(args.arch, num_classes)
    if args.student_resume:
        load_classifier_weights(model, args.student_resume, "--student-resume", num_classes)
    elif args.use_pretrained:
        load_pretrained(args, model, num_classes)
    return model


def build_teacher(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """The teacher from --teacher-resume, or torchvision's ImageNet weights if cached (never downloaded)."""
    teacher = build_model(teacher_arch(args), num_classes)
    where = cached_weights_path(args.teacher_arch)
    if args.teacher_resume:
        load_classifier_weights(teacher, args.teacher_resume, "--teacher-resume", num_classes)
    elif num_classes == 1000 and where and os.path.isfile(where):
        load_classifier_weights(teacher, where, "torchvision's cached ImageNet weights", num_classes)
    else:
        hint = f" or put torchvision's weights at {where}" if where and num_classes == 1000 else ""
        raise UserError(f"no teacher weights: pass --teacher-resume PATH (train one with cls/main_base.py){hint}")
    return teacher


def start_worker(local_rank: int, args: argparse.Namespace):
    """Process set-up shared by the scripts: (device, precision, (train set, valid loader, prepare set,
    num classes)); the prepare set is the training images through the validation transforms."""
    device = setup_process(local_rank, args)
    if not args.evaluate:
        start_output_dir(args.output_dir, CHECKPOINT_NAMES, bool(args.resume), args.rank, args.overwrite)
    train_set, valid_set, prepare_set, num_classes = cdata.build_datasets(args)
    args.per_process_batch = max(1, args.batch_size // args.world_size)
    if len(train_set) < args.world_size:
        raise UserError(f"the training set ({len(train_set)} images) has fewer images than processes")
    valid_loader = eval_loader(valid_set, args.per_process_batch, args.workers, args.rank, args.world_size,
                               device.type == "cuda")
    precision = Precision(args.amp, args.amp_dtype, device, args.channels_last)
    logger.info("%s on %s, %d process(es), %s", args.arch, device, args.world_size, precision.describe())
    return device, precision, (train_set, valid_loader, prepare_set, num_classes)


def evaluate_models(models: Dict[str, nn.Module], valid_loader, device: torch.device, rank: int) -> None:
    """--evaluate: top-1/top-5 and loss of each model, one line each (rank 0)."""
    for name, model in models.items():
        stats = evaluate(model, valid_loader, device)
        if rank == 0:
            print(f"{name}: top-1 {stats['top1']:.2f}  top-5 {stats['top5']:.2f}  loss {stats['loss']:.4f}")


class ClassificationEpochs(EpochTask):
    """What classification adds to the engine's one loop: the step-wise LR schedule (stepped after each epoch),
    top-1 / top-5 on the validation set (the best top-1 makes best.pth), and its checkpoint set: last.pth,
    best.pth (the student, optimizer, schedule, GradScaler, the distiller's state and the run's identity) and
    student.pth (the plain state dict)."""

    score = "top1"
    log_name = "cls"

    def __init__(self, args: argparse.Namespace, device: torch.device, precision: Precision, student: nn.Module,
                 distiller: mgd.Distiller, optimizer, scheduler, valid_loader, prepare_set,
                 identity: Dict[str, Any]) -> None:
        self.args, self.device, self.precision, self.student, self.distiller = args, device, precision, student, \
            distiller
        self.optimizer, self.scheduler, self.valid_loader, self.prepare_set = optimizer, scheduler, valid_loader, \
            prepare_set
        self.identity = identity

    def prepare_loader(self, epoch: int):  # the training images through the validation transforms
        a = self.args
        return prepare_loader(self.prepare_set, a.per_process_batch, a.workers, epoch, a.seed or 0, a.rank,
                              a.world_size, self.device.type == "cuda")

    def after_epoch(self, epoch: int) -> None:
        self.scheduler.step()

    def evaluate(self, epoch: int) -> Dict[str, Any]:
        val = evaluate(self.student, self.valid_loader, self.device)
        return {"top1": val["top1"], "top5": val["top5"], "val_loss": val["loss"]}

    def train_record(self, stats: Dict[str, float]) -> Dict[str, Any]:
        return {k if k.startswith("train_") else f"train_{k}": v for k, v in stats.items()}

    def weights(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return {"the student": self.student.state_dict(), "the distiller": self.distiller.own_state_dict()}

    def save(self, epoch: int, record: Dict[str, Any], is_best: bool, best: float) -> None:
        a = self.args
        state = {"epoch": epoch + 1, "arch": a.arch, "num_classes": classifier(self.student)[1].out_features,
                 "student": self.student.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "lr_scheduler": self.scheduler.state_dict(), "scaler": self.precision.state_dict(),
                 "best_acc1": best, "args": plain_args(a), "distiller": self.distiller.own_state_dict(),
                 "method": a.distiller, **self.identity}
        save_checkpoints(state, a.output_dir, ["last.pth"] + (["best.pth"] if is_best else []))
        atomic_save(self.student.state_dict(), os.path.join(a.output_dir, "student.pth"))

    def summary(self, epoch: int, record: Dict[str, Any]) -> str:
        parts = "  ".join(f"{k[len('train_'):]} {v:.4f}" for k, v in record.items()
                          if k.startswith("train_") and k != "train_top1")
        return (f"{parts}  train top-1 {record.get('train_top1', 0.0):.2f}  val top-1 {record['top1']:.2f} "
                f"top-5 {record['top5']:.2f}  lr {record['lr']:.4g}  {record['seconds']:.0f} s")


def resume(args: argparse.Namespace, student: nn.Module, optimizer, scheduler, precision: Precision,
           check: Optional[Callable[[Dict[str, Any]], None]] = None, distiller: Optional[nn.Module] = None,
           **same: Any) -> tuple:
    """Restore a --resume checkpoint of these scripts (student, optimizer, LR schedule, GradScaler, and the
    distiller's state when given): (start epoch, best top-1); without --resume, (--start-epoch, 0).
    ``check(ckpt)`` raises UserError when the checkpoint belongs to another kind of run; the architecture,
    the class count and the settings in ``same`` must be those the checkpoint was written with."""
    if not args.resume:
        if not args.evaluate:
            check_epochs_left(args.start_epoch, args.epochs)
        return args.start_epoch, 0.0
    ckpt = load_checkpoint(args.resume, ("student", "epoch", "optimizer", "lr_scheduler", "best_acc1"))
    if check is not None:
        check(ckpt)
    start = resume_from(ckpt, args.resume, student, "student", optimizer, precision, scheduler, distiller,
                        None if args.evaluate else args.epochs, arch=args.arch,
                        num_classes=classifier(student)[1].out_features, **same)
    rescale_lr(optimizer, scheduler, (ckpt.get("args") or {}).get("lr"), args.lr)
    return start, float(ckpt["best_acc1"])


def rescale_lr(optimizer: torch.optim.Optimizer, scheduler, saved_lr: Optional[float], lr: float) -> None:
    """A resumed run's --lr, where it differs from its checkpoint's: the saved schedule's rates (its base and
    its current point) rescaled by lr / saved_lr, so that the advice after a divergence ("lower --lr, resume
    from the last good checkpoint") works; logged. (--lr-drop-epochs and --warmup apply as given anyway: the
    schedule's factor is a function of the flags, not of the checkpoint.)"""
    if saved_lr is None or float(saved_lr) == lr:
        return
    ratio = lr / float(saved_lr)
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        group["initial_lr"] = group.get("initial_lr", saved_lr) * ratio
    if scheduler is not None:
        scheduler.base_lrs = [base * ratio for base in scheduler.base_lrs]
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    logger.info("--lr %g replaces the checkpoint's %g: its schedule continues at %g x its rates", lr, saved_lr,
                ratio)


def make_optimizer(params, args: argparse.Namespace) -> torch.optim.Optimizer:
    """SGD with the script's momentum, weight decay and Nesterov setting (Nesterov needs momentum)."""
    return torch.optim.SGD(params, args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                           nesterov=bool(args.nesterov) and args.momentum > 0)


# ------------------------------------------------------------------------------------------ the one worker

def _plain(method: Optional[str]) -> bool:
    """Whether a checkpoint's method is plain training (main_base.py's; its older checkpoints name none)."""
    return method is None or (method in mgd.DISTILLERS and not mgd.DISTILLERS[method].needs_teacher)


def check_checkpoint_method(args: argparse.Namespace, ckpt: Dict[str, Any]) -> None:
    """UserError when --resume names a checkpoint of another method than --distiller's, worded for the two
    scripts: plain training is main_base.py's, every other method main_mgd.py's."""
    written = ckpt.get("method")
    if written == args.distiller or (_plain(written) and _plain(args.distiller)):
        return
    if _plain(written):
        raise UserError(f"--resume: {args.resume} is a main_base.py checkpoint (no distillation): pass it as "
                        "--student-resume to start distilling from its weights")
    if _plain(args.distiller):
        raise UserError(f"--resume: {args.resume} is a main_mgd.py checkpoint (distillation with {written}): "
                        "resume it with main_mgd.py, or start from its student with --student-resume")
    raise UserError(f"--resume: {args.resume} is not a {args.distiller} checkpoint but a {written} one "
                    f"(--distiller {written})")


def build_distiller(args: argparse.Namespace, teacher: Optional[nn.Module], student: nn.Module,
                    num_samples: int) -> mgd.Distiller:
    """--distiller's method with its flags as options, the models' stage positions (for the methods that distil
    features) and the training set's size (for those that take it); configuration errors are one line."""
    given: Dict[str, Any] = {"num_samples": num_samples}
    if mgd.DISTILLERS[args.distiller].needs_features:
        given.update(teacher_layers=stage_specs(teacher), student_layers=stage_specs(student))
    options = distiller_options_from_args(args.distiller, args, **given)
    try:
        return mgd.build_distiller(args.distiller, teacher, student, **options)
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot distil {args.teacher_arch} into {args.arch} with {args.distiller}: {exc}") from exc


def identity_options(args: argparse.Namespace) -> Dict[str, Any]:
    """What a resume must keep beside the method: the teacher's architecture (when the method has a teacher) and
    the method's identity settings (MGD's ``mgd_reducer``)."""
    teacher = {"teacher_arch": args.teacher_arch} if mgd.DISTILLERS[args.distiller].needs_teacher else {}
    return {**teacher, **identity_settings(args.distiller, args)}


@torch.no_grad()
def check_takes_images(model: nn.Module, example: torch.Tensor, what: str) -> None:
    """One forward of a training image in eval mode, before any training: a network that cannot take the
    images (a ViT made for 224 px given --input-size 32) is one line, not an assertion in the first step."""
    was_training = model.training
    model.eval()
    try:
        model(example)
    except (AssertionError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{what} cannot take the training images ({'x'.join(map(str, example.shape[1:]))}): "
                        f"{first}; choose another --input-size or another architecture") from None
    finally:
        model.train(was_training)


def train_worker(local_rank: int, args: argparse.Namespace,
                 prepare_student: Optional[Callable[[nn.Module], None]] = None) -> None:
    """The training (or --evaluate) process of both scripts, whatever --distiller's method: main_base.py is
    --distiller none, plain training through the same contract. ``prepare_student(student)``: what a script
    does to the student before training (main_base.py's --pretrained-backbone, --linear-eval)."""
    device, precision, (train_set, valid_loader, prepare_set, num_classes) = start_worker(local_rank, args)
    method = mgd.DISTILLERS[args.distiller]
    teacher = build_teacher(args, num_classes).to(device) if method.needs_teacher else None
    student = build_student(args, num_classes)
    if prepare_student is not None:
        prepare_student(student)
    if args.distributed and args.sync_bn:
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
    student.to(device)
    example = prepare_set[0][0].unsqueeze(0).to(device)  # the validation transforms: no random draw
    for what, model in (("the teacher", teacher), ("the student", student)):
        if model is not None:
            check_takes_images(model, example, f"{what} {teacher_arch(args) if model is teacher else args.arch}")
    distiller = build_distiller(args, teacher, student, len(train_set)).to(device)
    if distiller.needs_indices:  # CRD's memory: each sample's dataset index rides along with it
        train_set = WithIndices(train_set)
    precision.prepare_model(distiller)
    optimizer = make_optimizer([p for p in distiller.get_learnable_parameters() if p.requires_grad], args)
    scheduler = make_scheduler(optimizer, args)
    same = identity_options(args)
    if teacher is not None:
        same["teacher_weights"] = weights_fingerprint(teacher)
    start_epoch, best = resume(args, student, optimizer, scheduler, precision,
                               lambda ckpt: check_checkpoint_method(args, ckpt), distiller, **same)
    if args.evaluate:
        if teacher is None and args.teacher_resume:  # main_base.py -e also shows the teacher it was given
            teacher = build_teacher(args, num_classes).to(device)
        models = {} if teacher is None else {"teacher " + args.teacher_arch: teacher}
        evaluate_models({**models, (f"student {args.arch}" if method.needs_teacher else args.arch): student},
                        valid_loader, device, args.rank)
        return

    trainable = wrap_for_training(distiller, device, args.distributed, args.gpu, precision=precision)
    criterion = nn.CrossEntropyLoss()
    log = RunLog(args.output_dir, args.rank, args.tensorboard)
    first = [bool(method.needs_teacher)]  # the first step's terms against the cross-entropy, when there are terms

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

    task = ClassificationEpochs(args, device, precision, student, distiller, optimizer, scheduler, valid_loader,
                                prepare_set, same)
    fit(args=args, device=device, precision=precision, distiller=distiller, trainable=trainable, step=step,
        optimizer=optimizer, train_set=train_set, log=log, task=task, start_epoch=start_epoch, best=best)
