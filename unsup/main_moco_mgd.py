"""MoCo-v2 unsupervised pretraining of a small student, guided by a frozen MoCo-v2 teacher through MGD.

    python unsup/main_moco_mgd.py DATA -a resnet18 --lr 0.03 --batch-size 256 --mlp --moco-t 0.2 --aug-plus \\
        --cos --teacher-resume moco_v2_200ep_pretrain.pth.tar --dist-url tcp://127.0.0.1:10001 \\
        --multiprocessing-distributed --world-size 1 --rank 0

The teacher is an official MoCo-v2 checkpoint ('state_dict' with 'module.encoder_q.*' keys): its projection
head is dropped, its ResNet backbone loaded strictly, and the margins computed from it. The student's query
encoder backbone is distilled on its four pre-ReLU stages with MGD (AMP reducer by default; --distiller takes any
feature method: sm, ofd, at, sp, or another package's); the loss is InfoNCE + the method's terms (MGD's and OFD's
partial L2 / batch / --loss-factor). The matching is solved before training and again
before the epochs in --mgd-update-epochs (the original's log-spaced schedule). Launch, logs, checkpoints,
loaders, AMP and the matching step with its all-ranks-agree check come from mgd.engine, as in cls/.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from typing import List

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one word and 130, not a traceback (run_cli's next)
    signal.signal(signal.SIGINT, lambda *_: (sys.stderr.write("interrupted\n"), os._exit(130)))

import torch
import torchvision
from torch import nn

import mgd
from mgd.checkpoint import atomic_save, strip_prefix
from mgd.engine import (ArgumentParser, Precision, RunLog, SkipUnreadable, UserError, add_launch_arguments,
                        add_precision_arguments, add_run_arguments, check_output_dir, epoch_loader, image_folder,
                        launch, load_checkpoint, plain_args, resume_from, run_cli, save_checkpoints, setup_process,
                        start_output_dir, worker_guard, wrap_for_training)
from mgd.engine.loop import EpochTask, fit
from mgd.registry import registered_methods
from mgd.engine.args import (add_method_arguments, add_training_arguments, check_method_flags,
                             distiller_options_from_args, identity_settings, positive_float,
                             positive_int, unit_interval)
from mgd.engine.checkpoints import check_epochs_left, load_weights, weights_fingerprint
from unsup.moco import MoCo, TwoCropsTransform, moco_augmentation

logger = logging.getLogger("unsup")
ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
#: The original's log-spaced update epochs: it re-solved after these (1-based) epochs, i.e. before these
#: 0-based ones.
DEFAULT_UPDATE_EPOCHS = [1, 2, 3, 6, 9, 15, 26, 43, 74, 126]
#: Settings a resumed run must share with its checkpoint (the weights' shapes, the queue, the matching).
RESUME_SAME = ("arch", "teacher_arch", "moco_dim", "moco_k", "mlp")
#: The checkpoint a run continues from, and everything a run writes in its --output-dir.
LAST = ("checkpoint_last.pth.tar",)
CHECKPOINT_NAMES = ("checkpoint_*.pth.tar", "student_backbone.pth")
#: Salt of the matching pass's permutation, so it does not repeat the training order of the same epoch.
_PREPARE_SALT = 104729


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("data", metavar="DIR", help="DIR/train with one folder per class (labels are not used)")
    p.add_argument("-a", "--arch", default="resnet18", choices=ARCHS, help="student backbone")
    add_training_arguments(p, epochs=200, batch_size=256, lr=0.03, workers=8, checkpoint="checkpoint_last.pth.tar",
                           start_epoch=True)  # MoCo-v2's defaults
    p.add_argument("--schedule", default=[120, 160], nargs="*", type=int, help="LR x0.1 at these epochs (no --cos)")
    add_launch_arguments(p)
    add_precision_arguments(p)
    p.add_argument("--moco-dim", default=128, type=positive_int)
    p.add_argument("--moco-k", default=65536, type=positive_int, help="queue length (a multiple of the batch size)")
    p.add_argument("--moco-m", default=0.999, type=unit_interval, help="momentum of the key encoder, in [0, 1]")
    p.add_argument("--moco-t", default=0.07, type=positive_float)
    p.add_argument("--mlp", action="store_true", help="MoCo v2 projection head")
    p.add_argument("--aug-plus", action="store_true", help="MoCo v2 augmentation")
    p.add_argument("--cos", action="store_true", help="cosine learning-rate schedule")
    p.add_argument("--teacher-arch", default="resnet50", choices=ARCHS)
    p.add_argument("--teacher-resume", required=True, metavar="PATH", help="an official MoCo-v2 checkpoint")
    p.add_argument("--distiller", default="mgd", choices=feature_methods(), help="the method that distils the "
                   "teacher's stage features into the query encoder's (any registered feature method)")
    p.add_argument("--input-size", default=224, type=positive_int)
    add_run_arguments(p, default_output="output/moco_mgd")
    add_method_arguments(p, feature_methods(), defaults={"update_epochs": DEFAULT_UPDATE_EPOCHS},
                         exclude=("with_kd",))  # MoCo's encoders have no class logits
    return p


def load_teacher(args) -> nn.Module:
    """The teacher backbone from a MoCo checkpoint: encoder_q without its projection head, loaded strictly."""
    ckpt = load_checkpoint(args.teacher_resume, (), what="--teacher-resume")
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"--teacher-resume: {args.teacher_resume} has no 'state_dict' (expected an official "
                        "MoCo-v2 checkpoint with 'module.encoder_q.*' keys)")
    state = strip_prefix(state)
    backbone = {k[len("encoder_q."):]: v for k, v in state.items()
                if k.startswith("encoder_q.") and not k.startswith("encoder_q.fc.")}
    if not backbone:
        raise UserError(f"--teacher-resume: {args.teacher_resume} has no 'module.encoder_q.*' weights "
                        "(not a MoCo checkpoint)")
    teacher = getattr(torchvision.models, args.teacher_arch)(weights=None)
    teacher.fc = nn.Identity()
    load_weights(teacher, backbone, "--teacher-resume (its encoder_q backbone)", args.teacher_resume)
    return teacher


def feature_methods() -> List[str]:
    """The registered methods that distil stage features alone (no labels, logits or classifier embedding,
    which MoCo's encoders do not have): MGD and its sparse matching, OFD, AT, SP and any other package's."""
    return registered_methods(needs_features=True, dense_outputs=True)


class MoCoDistill(nn.Module):
    """What DDP wraps: the MoCo model and the distiller's own trainable modules (MGD's norm layers, OFD's
    connectors; the frozen teacher is not registered). The student's query encoder runs once per step, for
    InfoNCE and for the distillation; returns the InfoNCE logits and labels and the method's terms
    (normalised float32 scalars, :meth:`mgd.Distiller.compute_terms`)."""

    def __init__(self, moco: MoCo, distiller: mgd.Distiller) -> None:
        super().__init__()
        self.moco = moco
        self.distiller_parts = nn.ModuleDict({name: child for name, child in distiller.named_children()
                                              if child is not distiller.t_net and child is not distiller.s_net})
        self._distiller = [distiller]

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor):
        d = self._distiller[0]
        t_feats, _ = d.teacher_features(lambda: d.t_net(im_q))
        s_feats, (logits, labels) = d.student_features(lambda: self.moco(im_q, im_k))
        return logits, labels, d.compute_terms(student_features=s_feats, teacher_features=t_feats)


class QueryKeyPairs:
    """``(im_q, im_k)`` batches of a loader of ``((im_q, im_k), label)``; iterable again, as a DataLoader (the
    matching and the loss-factor calibration each read it from the start)."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __iter__(self):
        return ((im_q, im_k) for (im_q, im_k), _ in self.loader)


def learning_rate(args, epoch: int) -> float:
    if args.cos:
        return args.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
    return args.lr * 0.1 ** sum(epoch >= m for m in args.schedule)


def train_set(args):
    traindir = os.path.join(args.data, "train")
    if not os.path.isdir(traindir):
        raise UserError(f"{traindir} not found: DATA must contain train/ with one folder per class")
    images = image_folder(traindir, TwoCropsTransform(moco_augmentation(args.input_size, args.aug_plus)))
    return SkipUnreadable(images) if args.skip_bad_images else images


@worker_guard
def worker(local_rank: int, args) -> None:
    device = setup_process(local_rank, args)
    precision = Precision(args.amp, args.amp_dtype, device, args.channels_last)
    dataset = train_set(args)
    args.per_process_batch = max(1, args.batch_size // args.world_size)
    if len(dataset) // args.world_size < args.per_process_batch:
        raise UserError(f"the training set ({len(dataset)} images) is smaller than one batch per process")
    if args.moco_k % (args.per_process_batch * args.world_size):
        raise UserError(f"--moco-k {args.moco_k} must be a multiple of the batch size {args.batch_size}")
    start_output_dir(args.output_dir, CHECKPOINT_NAMES, bool(args.resume), args.rank, args.overwrite)
    logger.info("MoCo-v2 %s guided by %s on %s, %d process(es), %s", args.arch, args.teacher_arch, device,
                args.world_size, precision.describe())
    teacher = load_teacher(args).to(device)
    args.teacher_weights = weights_fingerprint(teacher)  # in the checkpoint's args: a resume compares it
    moco = MoCo(getattr(torchvision.models, args.arch), args.moco_dim, args.moco_k, args.moco_m, args.moco_t,
                args.mlp).to(device)
    options = distiller_options_from_args(args.distiller, args, distributed=args.distributed,
                                          calibration_task_loss=moco.contrastive_loss)
    try:
        distiller = mgd.build_distiller(args.distiller, teacher, moco.encoder_q, **options).to(device)
    except (ValueError, TypeError) as exc:
        raise UserError(f"cannot distil {args.teacher_arch} into {args.arch} with {args.distiller}: {exc}") from exc
    model = MoCoDistill(moco, distiller)
    precision.prepare_model(moco)
    precision.prepare_model(teacher)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    start_epoch = args.start_epoch
    if not args.resume:
        check_epochs_left(start_epoch, args.epochs)
    else:
        ckpt = load_checkpoint(args.resume, ("state_dict", "optimizer", "epoch", "distiller"))
        start_epoch = resume_from(ckpt, args.resume, moco, "state_dict", optimizer, precision, distiller=distiller,
                                  epochs=args.epochs, method=args.distiller,
                                  teacher_weights=args.teacher_weights,
                                  **{k: getattr(args, k) for k in RESUME_SAME}, **identity_settings(args.distiller, args))
    trainable = wrap_for_training(model, device, args.distributed, data_parallel=False)  # MoCo needs DDP's ranks
    log = RunLog(args.output_dir, args.rank, args.tensorboard)
    criterion = nn.CrossEntropyLoss()

    def query_images(epoch: int):
        """(query, key) views of the training images, each process its own shard: the matching tracks the
        queries; --loss-factor auto weighs the distillation term against InfoNCE on both views."""
        return QueryKeyPairs(epoch_loader(dataset, args.per_process_batch, args.workers, epoch, args.seed or 0,
                                          args.rank, args.world_size, device.type == "cuda", salt=_PREPARE_SALT))

    def step(batch):
        (im_q, im_k), _ = batch
        im_q, im_k = precision.to_device(im_q), precision.to_device(im_k)
        logits, labels, terms = trainable(im_q, im_k)
        contrastive = criterion(logits.float(), labels)
        top1 = 100.0 * float((logits.argmax(1) == labels).sum()) / im_q.shape[0]
        parts = {"loss_contrastive": contrastive.item(), **{f"loss_{k}": v.item() for k, v in terms.items()},
                 "instance_top1": top1}
        return distiller.task_weight * contrastive + sum(terms.values()), parts, im_q.shape[0]

    fit(args=args, device=device, precision=precision, distiller=distiller, trainable=trainable, step=step,
        optimizer=optimizer, train_set=dataset, log=log, task=PretrainingEpochs(args, moco, distiller, optimizer,
                                                                                 precision, query_images),
        start_epoch=start_epoch)


class PretrainingEpochs(EpochTask):
    """What MoCo-v2 pretraining adds to the engine's one loop: its epoch LR (step or cosine), no evaluation, equal
    batches (MoCo's queue), and its checkpoints: checkpoint_<epoch>.pth.tar and checkpoint_last.pth.tar (the MoCo
    model, optimizer, GradScaler and the distiller's state), and student_backbone.pth (the query encoder without
    its projection head)."""

    last_names = LAST
    drop_last = True
    log_name = "unsup"

    def __init__(self, args, moco: MoCo, distiller: mgd.Distiller, optimizer, precision: Precision,
                 prepare_loader) -> None:
        self.args, self.moco, self.distiller, self.optimizer, self.precision = args, moco, distiller, optimizer, \
            precision
        self.prepare_loader = prepare_loader

    def before_epoch(self, epoch: int, loader, optimizer) -> float:
        lr = learning_rate(self.args, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_record(self, stats):
        record = {k: v for k, v in stats.items() if k != "loss"}
        updates = self.distiller.prepare_summary().get("num_updates")  # MGD's matchings so far
        return record if updates is None else {**record, "matching_updates": updates}

    def weights(self):
        return {"the MoCo model": self.moco.state_dict(), "the distiller": self.distiller.own_state_dict()}

    def save(self, epoch: int, record, is_best: bool, best: float) -> None:
        a = self.args
        state = {"epoch": epoch + 1, "arch": a.arch, "method": a.distiller, "state_dict": self.moco.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "distiller": self.distiller.own_state_dict(),
                 "scaler": self.precision.state_dict(), "args": plain_args(a)}
        backbone = {k: v for k, v in self.moco.encoder_q.state_dict().items() if not k.startswith("fc.")}
        save_checkpoints(state, a.output_dir, [f"checkpoint_{epoch:04d}.pth.tar", *LAST])
        atomic_save(backbone, os.path.join(a.output_dir, "student_backbone.pth"))

    def summary(self, epoch: int, record) -> str:
        terms = "  ".join(f"{k[len('loss_'):]} {v:.4f}" for k, v in record.items() if k.startswith("loss_"))
        updates = f"  matching updates {record['matching_updates']}" if "matching_updates" in record else ""
        return (f"{terms}  instance top-1 {record['instance_top1']:.2f}  lr {record['lr']:.4g}{updates}  "
                f"{record['seconds']:.0f} s")


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    check_method_flags(args.distiller, args, feature_methods())
    if not os.path.isdir(args.data):
        raise UserError(f"data directory not found: {args.data}")
    if not os.path.isfile(args.teacher_resume):
        raise UserError(f"--teacher-resume: checkpoint not found: {args.teacher_resume}")
    check_output_dir(args.output_dir, CHECKPOINT_NAMES, args.resume, args.overwrite,
                     {"--teacher-resume": args.teacher_resume}, args.rank)
    launch(worker, args)


if __name__ == "__main__":
    run_cli(main)
