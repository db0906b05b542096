"""Shared pieces of the classification scripts (in the spirit of torchvision's references/classification
utils): the command line, process set-up, weights loading, checkpoints, metrics and logging."""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional

import torch

from mgd import distributed as mdist
from mgd.checkpoint import atomic_save, safe_load, strip_prefix
from mgd.runner import UserError

logger = logging.getLogger("cls")


# ------------------------------------------------------------------------------------------------ CLI

def common_parser(description: str) -> argparse.ArgumentParser:
    """The original scripts' flags (so their README commands keep working) plus the new ones."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", metavar="DIR", help="DIR/train and DIR/valid (or DIR/val) image folders, "
                   "or the Fashion-MNIST folder with --dataset fashion-mnist")
    p.add_argument("--dataset", default="imagefolder", choices=["imagefolder", "fashion-mnist"])
    p.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST if missing")
    p.add_argument("-a", "--arch", default="resnet18", help="model (student) architecture")
    p.add_argument("-j", "--workers", default=4, type=int, help="data loading workers per process")
    p.add_argument("--epochs", default=100, type=int)
    p.add_argument("--start-epoch", default=0, type=int, help="first epoch (overridden by --resume)")
    p.add_argument("-b", "--batch-size", default=256, type=int, help="total batch size over all processes")
    p.add_argument("--lr", "--learning-rate", default=0.1, type=float, dest="lr")
    p.add_argument("--momentum", default=0.9, type=float)
    p.add_argument("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay")
    p.add_argument("--nesterov", default=1, type=int, choices=[0, 1], help="Nesterov momentum (the original: on)")
    p.add_argument("-p", "--print-freq", default=10, type=int, help="progress bar refresh, in iterations")
    p.add_argument("--resume", default="", metavar="PATH", help="a checkpoint of this script (last.pth) to continue")
    p.add_argument("-e", "--evaluate", action="store_true", help="evaluate on the validation set and exit")
    p.add_argument("--world-size", default=-1, type=int, help="number of nodes (with --multiprocessing-distributed) "
                   "or processes")
    p.add_argument("--rank", default=-1, type=int, help="node rank (with --multiprocessing-distributed) or rank")
    p.add_argument("--dist-url", default="auto", help="init method; 'auto': env:// under torchrun, else a free "
                   "local TCP port")
    p.add_argument("--dist-backend", default=None, help="nccl with CUDA, gloo otherwise")
    p.add_argument("--seed", default=None, type=int, help="seed: makes runs (and resumed runs) repeatable")
    p.add_argument("--gpu", default=None, type=int, help="GPU id to use (single process)")
    p.add_argument("--multiprocessing-distributed", action="store_true",
                   help="spawn --nproc-per-node processes on this node and train with DDP")
    p.add_argument("--nproc-per-node", default=None, type=int, help="processes per node (default: GPU count, or 1)")
    p.add_argument("--lr-drop-ratio", default=0.1, type=float)
    p.add_argument("--lr-drop-epochs", default=[30, 60, 90], type=int, nargs="+")
    p.add_argument("--warmup", action="store_true", help="linear warm-up (epochs are extended by its length)")
    p.add_argument("--warmup-epochs", default=5, type=int)
    p.add_argument("--use-pretrained", default=0, type=int, choices=[0, 1],
                   help="start the student from torchvision's ImageNet weights (only if cached locally)")
    p.add_argument("--input-size", default=224, type=int)
    p.add_argument("--train-subset", default=None, type=int, help="use a fixed random subset of N training images")
    p.add_argument("--val-subset", default=None, type=int, help="use a fixed random subset of N validation images")
    p.add_argument("--output-dir", default=None, help="checkpoints and logs (default: output/<data>.<arch>...)")
    p.add_argument("--tensorboard", action="store_true", help="write TensorBoard scalars to OUTPUT_DIR/tb")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm in distributed training")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower)")
    return p


def finish_args(args: argparse.Namespace, tag: Optional[str]) -> argparse.Namespace:
    """Validate and complete the arguments in the parent process (before any spawn)."""
    if args.batch_size <= 0 or args.epochs < 0 or args.workers < 0:
        raise UserError("--batch-size must be positive, --epochs and --workers non-negative")
    if args.output_dir is None:
        name = os.path.basename(os.path.normpath(args.data)) or "data"
        args.output_dir = os.path.join("output", ".".join([name, args.arch] + ([tag] if tag else [])))
    if args.warmup:
        args.epochs += args.warmup_epochs
        args.lr_drop_epochs = [e + args.warmup_epochs for e in args.lr_drop_epochs]
    return args


def plain_args(args: argparse.Namespace) -> Dict[str, Any]:
    """The arguments as plain types (what torch.load(weights_only=True) accepts)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
    return {k: plain(v) for k, v in vars(args).items()}


# ------------------------------------------------------------------------------------------ weights

def read_weights(path: str, what: str) -> Dict[str, torch.Tensor]:
    """A state dict from a plain state dict or a checkpoint with 'state_dict' / 'student' / 'model';
    a 'module.' prefix is stripped. UserError when unreadable."""
    try:
        obj = safe_load(path)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"{what}: {exc}") from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "student", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{what}: {path} holds no state dict")
    return strip_prefix(obj)


def load_weights(model: torch.nn.Module, path: str, what: str, num_classes: int) -> None:
    """Load ``path`` into ``model`` strictly, turning mismatches into one clear line."""
    state = read_weights(path, what)
    fc = [v for k, v in state.items() if k.endswith(("fc.weight", "classifier.1.weight", "classifier.weight"))]
    if fc and fc[-1].shape[0] != num_classes:
        raise UserError(f"{what}: {path} has {fc[-1].shape[0]} classes but the data has {num_classes}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise UserError(f"{what}: {path} does not fit the architecture ({' '.join(first[:2])[:300]})") from exc


# ------------------------------------------------------------------------------------------ training

def accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1, 5)) -> List[float]:
    """Number of correct predictions in the top-k, for each k (capped at the number of classes)."""
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, 1, True, True).indices.t()
    correct = pred.eq(target.view(1, -1))
    return [float(correct[:min(k, maxk)].any(0).sum()) for k in topk]


class Meter:
    """Sums of named values weighted by sample counts; all-reduced across processes on demand."""

    def __init__(self) -> None:
        self.sums: Dict[str, float] = {}
        self.count = 0

    def update(self, n: int, **values: float) -> None:
        self.count += n
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v) * n

    def add_counts(self, n: int, **counts: float) -> None:
        self.count += n
        for k, v in counts.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)

    def averages(self, device: torch.device) -> Dict[str, float]:
        keys = sorted(self.sums)
        t = torch.tensor([self.sums[k] for k in keys] + [self.count], dtype=torch.float64, device=device)
        mdist.all_reduce_sum(t)
        count = max(t[-1].item(), 1.0)
        return {k: t[i].item() / count for i, k in enumerate(keys)}


def make_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace):
    """Per-epoch LR: optional linear warm-up, then multiply by lr_drop_ratio at each lr_drop_epoch."""
    warmup = args.warmup_epochs if args.warmup else 0
    drops = sorted(args.lr_drop_epochs)

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / warmup
        return args.lr_drop_ratio ** sum(epoch >= d for d in drops)
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


# ------------------------------------------------------------------------------------------ outputs

def start_output_dir(output_dir: str, resume: bool, rank: int) -> None:
    """Create the output folder; a fresh (not resumed) run moves an earlier run's log.jsonl aside
    (log.<time>.jsonl) so that one log never mixes two runs, while a resumed run appends to its log."""
    if rank != 0:
        return
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "log.jsonl")
    if not resume and os.path.isfile(path):
        os.replace(path, os.path.join(output_dir, f"log.{time.strftime('%Y%m%d-%H%M%S')}.jsonl"))


class RunLog:
    """One summary line per epoch, a JSON-lines file and optional TensorBoard scalars (rank 0 only)."""

    def __init__(self, output_dir: str, rank: int, tensorboard: bool) -> None:
        self.active = rank == 0
        self.path = os.path.join(output_dir, "log.jsonl")
        self.writer = None
        if self.active:
            os.makedirs(output_dir, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError as exc:
                    raise UserError("--tensorboard needs the tensorboard package (pip install tensorboard)") from exc
                self.writer = SummaryWriter(os.path.join(output_dir, "tb"))

    def write(self, record: Dict[str, Any]) -> None:
        if not self.active:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None and "epoch" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "time"):
                    self.writer.add_scalar(k, v, record["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def save_checkpoint(state: Dict[str, Any], is_best: bool, output_dir: str) -> None:
    """last.pth always, best.pth when the accuracy improved; both written atomically."""
    atomic_save(state, os.path.join(output_dir, "last.pth"))
    if is_best:
        atomic_save(state, os.path.join(output_dir, "best.pth"))


def load_checkpoint(path: str) -> Dict[str, Any]:
    try:
        ckpt = safe_load(path)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"--resume: {exc}") from exc
    if not isinstance(ckpt, dict) or "student" not in ckpt or "epoch" not in ckpt:
        raise UserError(f"--resume: {path} is not a checkpoint written by these scripts (no 'student'/'epoch')")
    return ckpt
