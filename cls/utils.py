"""Shared pieces of the classification scripts (in the spirit of torchvision's references/classification
utils): the command line with the original scripts' flags, weights loading, the learning-rate schedule,
metrics. What cls/ shares with the other applications (launch, logs, checkpoints, loaders, AMP) is in
:mod:`mgd.engine`."""
from __future__ import annotations

import argparse
import bisect
import logging
import os
from typing import Dict, List, Optional

import torch

from cls.data import DATASETS, default_input_size
from mgd.engine import (ArgumentParser, Meter, UserError, add_launch_arguments, add_precision_arguments,
                        add_run_arguments, check_output_dir, read_weights)
from mgd.engine.args import add_training_arguments, non_negative_int, positive_float, positive_int
from mgd.engine.checkpoints import CHECKPOINT_SET, load_weights

logger = logging.getLogger("cls")

#: What a run writes in its --output-dir (what makes a folder hold a previous run).
CHECKPOINT_NAMES = CHECKPOINT_SET


# ------------------------------------------------------------------------------------------------ CLI

def common_parser(description: str, nesterov: int) -> argparse.ArgumentParser:
    """The original scripts' flags, with their meanings (so their README commands keep working), plus
    ours. ``nesterov``: the script's default (the original main_base.py: plain momentum; main_mgd.py: Nesterov)."""
    p = ArgumentParser(description=description)
    p.add_argument("data", metavar="DIR", help="DIR/train and DIR/valid (or DIR/val) image folders, "
                   "or the Fashion-MNIST folder with --dataset fashion-mnist, or the folder that holds the CIFAR "
                   "python archive (cifar-10-batches-py/, cifar-100-python/ or its .tar.gz) with --dataset cifar10|100")
    p.add_argument("--dataset", default="imagefolder", choices=list(DATASETS))
    p.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST or CIFAR if "
                   "missing")
    p.add_argument("-a", "--arch", default="resnet18", help="model (student) architecture")
    add_training_arguments(p, epochs=100, batch_size=256, lr=0.1, workers=4, checkpoint="last.pth", start_epoch=True,
                           evaluate="evaluate on the validation set")
    p.add_argument("--nesterov", default=nesterov, type=int, choices=[0, 1], help="Nesterov momentum")
    p.add_argument("--student-resume", default="", metavar="PATH", help="initial student weights (a state dict, "
                   "or a checkpoint with 'state_dict' / 'student' / 'model')")
    p.add_argument("--teacher-resume", default="", metavar="PATH", help="teacher weights: a state dict or a "
                   "checkpoint with 'state_dict' (main_mgd.py: loaded before the margins are computed; "
                   "main_base.py: --evaluate reports the teacher too)")
    p.add_argument("--teacher-arch", default=None, help="teacher architecture (default: the original's choice "
                   "for the student: resnet50 for mobilenet/shufflenet, resnet152 for resnet50)")
    p.add_argument("--pretrained", action="store_true", help="start the student from torchvision's ImageNet "
                   "weights (only if cached locally; the same as --use-pretrained 1)")
    add_launch_arguments(p)
    add_precision_arguments(p)
    p.add_argument("--lr-drop-ratio", default=0.1, type=positive_float)
    p.add_argument("--lr-drop-epochs", default=[31, 61, 81], type=non_negative_int, nargs="+",
                   help="multiply the LR by --lr-drop-ratio at these epochs (shifted by --warmup-epochs with --warmup)")
    p.add_argument("--warmup", default=0, type=int, choices=[0, 1], help="linear warm-up from 0.1x the LR over "
                   "--warmup-epochs epochs, which are added to --epochs (the original's WarmupMultiStepLR)")
    p.add_argument("--warmup-epochs", default=10, type=non_negative_int)
    p.add_argument("--use-pretrained", default=0, type=int, choices=[0, 1],
                   help="start the student from torchvision's ImageNet weights (only if cached locally)")
    p.add_argument("--sync-bn", default=0, type=int, choices=[0, 1], help="SyncBatchNorm in distributed training "
                   "(the student's BNs and MGD's student-side norm layers)")
    p.add_argument("--input-size", default=None, type=positive_int, help="training crop; unset: 32 for CIFAR "
                   "(the images' size), 224 otherwise")
    p.add_argument("--train-subset", default=None, type=positive_int,
                   help="use a fixed random subset of N training images")
    p.add_argument("--val-subset", default=None, type=positive_int,
                   help="use a fixed random subset of N validation images")
    add_run_arguments(p)
    return p


def finish_args(args: argparse.Namespace, tag: Optional[str]) -> argparse.Namespace:
    """Complete and check the arguments in the parent process (before any spawn)."""
    if args.input_size is None:
        args.input_size = default_input_size(args.dataset)
    if args.output_dir is None:
        name = os.path.basename(os.path.normpath(args.data)) or "data"
        args.output_dir = os.path.join("output", ".".join([name, args.arch] + ([tag] if tag else [])))
    if not args.evaluate:
        inputs = {flag: getattr(args, flag.lstrip("-").replace("-", "_"), "")
                  for flag in ("--student-resume", "--teacher-resume", "--pretrained-backbone")}
        check_output_dir(args.output_dir, CHECKPOINT_NAMES, args.resume, args.overwrite, inputs, args.rank)
    if args.pretrained:
        args.use_pretrained = 1
    if args.warmup:  # as the original: the warm-up epochs come on top, and the drops move with them
        args.epochs += args.warmup_epochs
        args.lr_drop_epochs = [e + args.warmup_epochs for e in args.lr_drop_epochs]
    return args


# ------------------------------------------------------------------------------------------ weights

def load_classifier_weights(model: torch.nn.Module, path: str, what: str, num_classes: int) -> None:
    """Load ``path`` into ``model`` strictly, a classifier of another class count named in one clear line."""
    state = read_weights(path, what)
    fc = [v for k, v in state.items() if k.endswith(("fc.weight", "classifier.1.weight", "classifier.weight"))]
    if fc and fc[-1].shape[0] != num_classes:
        raise UserError(f"{what}: {path} has {fc[-1].shape[0]} classes but the data has {num_classes}")
    load_weights(model, state, what, path)


# ------------------------------------------------------------------------------------------ training

def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1, 5)) -> List[float]:
    """Number of correct predictions in the top-k, for each k (capped at the number of classes)."""
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, 1, True, True).indices.t()
    correct = pred.eq(target.view(1, -1))
    return [float(correct[:min(k, maxk)].any(0).sum()) for k in topk]


def make_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace):
    """Per-epoch LR factor: the original's MultiStepLR (x lr_drop_ratio at each of lr_drop_epochs) and,
    with --warmup, its WarmupMultiStepLR: a linear ramp of the factor from 0.1 at epoch 0 towards 1 at
    epoch warmup_epochs (0.1 * (1 - e/W) + e/W), multiplied by the step decay."""
    warmup = args.warmup_epochs if args.warmup else 0
    drops = sorted(args.lr_drop_epochs)

    def factor(epoch: int) -> float:
        decay = args.lr_drop_ratio ** bisect.bisect_right(drops, epoch)
        if epoch < warmup:
            alpha = epoch / warmup
            return (0.1 * (1 - alpha) + alpha) * decay
        return decay
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device) -> Dict[str, float]:
    """Top-1/top-5 (%) and mean cross-entropy over the loader, exact across processes."""
    was_training = model.training
    model.eval()
    meter = Meter()
    for images, target in loader:
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = model(images)
        top1, top5 = accuracy(output, target)
        loss = torch.nn.functional.cross_entropy(output, target, reduction="sum").item()
        meter.add_counts(images.shape[0], top1=top1 * 100, top5=top5 * 100, loss=loss)
    model.train(was_training)
    return meter.averages(device)
