"""MoCo-v2 unsupervised pretraining of a small student, guided by a frozen MoCo-v2 teacher through MGD.

    python unsup/main_moco_mgd.py DATA -a resnet18 --lr 0.03 --batch-size 256 --mlp --moco-t 0.2 --aug-plus \\
        --cos --teacher-resume moco_v2_200ep_pretrain.pth.tar --dist-url tcp://127.0.0.1:10001 \\
        --multiprocessing-distributed --world-size 1 --rank 0

The teacher is an official MoCo-v2 checkpoint ('state_dict' with 'module.encoder_q.*' keys): its projection
head is dropped, its ResNet backbone loaded strictly, and the margins computed from it. The student's query
encoder backbone is distilled on its four pre-ReLU stages with MGD (AMP reducer by default); the loss is
InfoNCE + the distillation loss / batch / --loss-factor.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from tqdm import tqdm

import mgd
from mgd import distributed as mdist
from mgd.checkpoint import atomic_save, safe_load, strip_prefix
from mgd.runner import UserError, launch, run_cli, seed_everything, setup_process, worker_guard
from unsup.moco import MoCo, TwoCropsTransform, moco_augmentation

logger = logging.getLogger("unsup")
ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
#: The original's log-spaced update epochs (1-based: the update runs after that epoch).
DEFAULT_UPDATE_EPOCHS = [1, 2, 3, 6, 9, 15, 26, 43, 74, 126]


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", metavar="DIR", help="DIR/train with one folder per class (labels are not used)")
    p.add_argument("-a", "--arch", default="resnet18", choices=ARCHS, help="student backbone")
    p.add_argument("-j", "--workers", default=8, type=int)
    p.add_argument("--epochs", default=200, type=int)
    p.add_argument("--start-epoch", default=0, type=int)
    p.add_argument("-b", "--batch-size", default=256, type=int, help="total over all processes")
    p.add_argument("--lr", "--learning-rate", default=0.03, type=float, dest="lr")
    p.add_argument("--schedule", default=[120, 160], nargs="*", type=int, help="LR x0.1 at these epochs (no --cos)")
    p.add_argument("--momentum", default=0.9, type=float)
    p.add_argument("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay")
    p.add_argument("-p", "--print-freq", default=10, type=int)
    p.add_argument("--resume", default="", metavar="PATH", help="a checkpoint of this script to continue")
    p.add_argument("--world-size", default=-1, type=int)
    p.add_argument("--rank", default=-1, type=int)
    p.add_argument("--dist-url", default="auto")
    p.add_argument("--dist-backend", default=None, help="nccl with CUDA, gloo otherwise")
    p.add_argument("--seed", default=None, type=int)
    p.add_argument("--gpu", default=None, type=int)
    p.add_argument("--multiprocessing-distributed", action="store_true")
    p.add_argument("--nproc-per-node", default=None, type=int, help="processes per node (default: GPUs, or 1)")
    p.add_argument("--moco-dim", default=128, type=int)
    p.add_argument("--moco-k", default=65536, type=int, help="queue length (a multiple of the batch size)")
    p.add_argument("--moco-m", default=0.999, type=float)
    p.add_argument("--moco-t", default=0.07, type=float)
    p.add_argument("--mlp", action="store_true", help="MoCo v2 projection head")
    p.add_argument("--aug-plus", action="store_true", help="MoCo v2 augmentation")
    p.add_argument("--cos", action="store_true", help="cosine learning-rate schedule")
    p.add_argument("--teacher-arch", default="resnet50", choices=ARCHS)
    p.add_argument("--teacher-resume", required=True, metavar="PATH", help="an official MoCo-v2 checkpoint")
    p.add_argument("--loss-factor", default=1e4, type=float)
    p.add_argument("--mgd-reducer", default="amp", choices=["amp", "rd", "sp", "sm"])
    p.add_argument("--mgd-update-epochs", default=DEFAULT_UPDATE_EPOCHS, nargs="*", type=int,
                   help="re-solve the matching after these epochs (1-based), besides before training")
    p.add_argument("--mgd-update-images", default=20000, type=int, help="images per update, over all processes")
    p.add_argument("--input-size", default=224, type=int)
    p.add_argument("--output-dir", default="output/moco_mgd")
    p.add_argument("--deterministic", action="store_true")
    return p


def load_teacher(args) -> nn.Module:
    """The teacher backbone from a MoCo checkpoint: encoder_q without its projection head, loaded strictly."""
    try:
        ckpt = safe_load(args.teacher_resume)
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"--teacher-resume: {exc}") from exc
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
    try:
        teacher.load_state_dict(backbone, strict=True)
    except RuntimeError as exc:
        raise UserError(f"--teacher-resume: the encoder_q backbone does not fit {args.teacher_arch} "
                        f"({str(exc).splitlines()[0][:200]})") from exc
    return teacher


class MoCoMGD(nn.Module):
    """What DDP wraps: the MoCo model and the distiller's norm layers (the frozen teacher is not registered).
    The student's query encoder runs once per step, for InfoNCE and for MGD."""

    def __init__(self, moco: MoCo, distiller: mgd.MGDistiller) -> None:
        super().__init__()
        self.moco = moco
        self.norms = distiller.BNs
        self._distiller = [distiller]

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor):
        d = self._distiller[0]
        t_feats, _ = d.teacher_features(lambda: d.t_net(im_q))
        s_feats, (logits, labels) = d.student_features(lambda: self.moco(im_q, im_k))
        return logits, labels, d.distill_loss(s_feats, t_feats)


def learning_rate(args, epoch: int) -> float:
    if args.cos:
        return args.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
    return args.lr * 0.1 ** sum(epoch >= m for m in args.schedule)


def train_set(args):
    traindir = os.path.join(args.data, "train")
    if not os.path.isdir(traindir):
        raise UserError(f"{traindir} not found: DATA must contain train/ with one folder per class")
    try:
        return datasets.ImageFolder(traindir, TwoCropsTransform(moco_augmentation(args.input_size, args.aug_plus)))
    except (FileNotFoundError, RuntimeError) as exc:
        raise UserError(f"cannot read images from {traindir}: {exc}") from exc


def epoch_loader(dataset, args, epoch: int, salt: int = 0) -> DataLoader:
    """This rank's share of a permutation that depends only on (seed, epoch): repeatable, resumable."""
    g = torch.Generator().manual_seed((args.seed or 0) * 1000 + epoch + salt)
    order = torch.randperm(len(dataset), generator=g).tolist()
    per_rank = len(order) // args.world_size
    mine = order[args.rank * per_rank:(args.rank + 1) * per_rank]
    return DataLoader(Subset(dataset, mine), batch_size=args.per_process_batch, num_workers=args.workers,
                      drop_last=True, pin_memory=torch.cuda.is_available())


@worker_guard
def worker(local_rank: int, args) -> None:
    device = setup_process(local_rank, args)
    dataset = train_set(args)
    args.per_process_batch = max(1, args.batch_size // args.world_size)
    if len(dataset) // args.world_size < args.per_process_batch:
        raise UserError(f"the training set ({len(dataset)} images) is smaller than one batch per process")
    if args.moco_k % (args.per_process_batch * args.world_size):
        raise UserError(f"--moco-k {args.moco_k} must be a multiple of the batch size {args.batch_size}")
    teacher = load_teacher(args).to(device).eval()
    moco = MoCo(getattr(torchvision.models, args.arch), args.moco_dim, args.moco_k, args.moco_m, args.moco_t,
                args.mlp).to(device)
    distiller = mgd.MGDistiller(teacher, moco.encoder_q, ignore_inds=[], reducer=args.mgd_reducer,
                                distributed=args.distributed).to(device)
    model = MoCoMGD(moco, distiller)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    start_epoch = args.start_epoch
    if args.resume:
        try:
            ckpt = safe_load(args.resume)
        except (FileNotFoundError, RuntimeError) as exc:
            raise UserError(f"--resume: {exc}") from exc
        if not isinstance(ckpt, dict) or not {"state_dict", "optimizer", "epoch", "distiller"} <= set(ckpt):
            raise UserError(f"--resume: {args.resume} is not a checkpoint of this script")
        moco.load_state_dict(ckpt["state_dict"])
        distiller.load_matching_state_dict(ckpt["distiller"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt["epoch"])
        logger.info("resumed from %s at epoch %d", args.resume, start_epoch)
    trainable = model
    if args.distributed:
        trainable = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    log_path = os.path.join(args.output_dir, "log.jsonl")
    if args.rank == 0:
        os.makedirs(args.output_dir, exist_ok=True)
        if not args.resume and os.path.isfile(log_path):  # one log per run; a resumed run appends
            os.replace(log_path, os.path.join(args.output_dir, f"log.{time.strftime('%Y%m%d-%H%M%S')}.jsonl"))

    def log(record: dict) -> None:
        if args.rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def update_matching(after_epoch: int) -> None:
        start = time.time()
        # the training images through the training (query) augmentation, each rank its own shard
        loader = epoch_loader(dataset, args, after_epoch, salt=104729)

        def track(d: mgd.MGDistiller, batch) -> int:
            (im_q, _), _ = batch
            d.extract_feature(im_q.to(device))
            return im_q.shape[0]

        mgd.mgd_update(loader, distiller, max_images=args.mgd_update_images, track=track)
        agree = mdist.same_on_all_ranks(distiller.guided_inds)
        if not agree:
            raise RuntimeError("the ranks disagree on the channel matching")
        log({"event": "matching", "after_epoch": after_epoch, "num_updates": int(distiller.num_updates),
             "ranks": args.world_size, "ranks_agree": agree, "seconds": round(time.time() - start, 1)})

    if int(distiller.num_updates) == 0:
        update_matching(start_epoch)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(start_epoch, args.epochs):
        begin = time.time()
        if args.seed is not None:
            seed_everything(args.seed * 1000 + epoch)
        lr = learning_rate(args, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        trainable.train()
        teacher.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # contrastive, distill, top-1 hits, images
        bar = tqdm(epoch_loader(dataset, args, epoch), desc=f"epoch {epoch}", disable=args.rank != 0, leave=False,
                   mininterval=1.0, miniters=args.print_freq)
        for (im_q, im_k), _ in bar:
            im_q, im_k = im_q.to(device, non_blocking=True), im_k.to(device, non_blocking=True)
            logits, labels, loss_distill = trainable(im_q, im_k)
            contrastive = criterion(logits, labels)
            distill = loss_distill / im_q.shape[0] / args.loss_factor
            loss = contrastive + distill
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"loss is {loss.item()} at epoch {epoch}: lower --lr or raise --loss-factor")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = im_q.shape[0]
            sums += torch.tensor([contrastive.item() * n, distill.item() * n,
                                  float((logits.argmax(1) == labels).sum()), n], dtype=torch.float64, device=device)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        mdist.all_reduce_sum(sums)
        stats = {"epoch": epoch, "lr": lr, "loss_contrastive": sums[0].item() / sums[3].item(),
                 "loss_distill": sums[1].item() / sums[3].item(), "instance_top1": 100 * sums[2].item() / sums[3].item()}
        if epoch + 1 in args.mgd_update_epochs:
            update_matching(epoch + 1)
        stats["matching_updates"] = int(distiller.num_updates)
        stats["seconds"] = round(time.time() - begin, 1)
        logger.info("epoch %d/%d  contrastive %.4f  distill %.4f  instance top-1 %.2f  lr %.4g  matching updates %d"
                    "  %.0f s", epoch, args.epochs - 1, stats["loss_contrastive"], stats["loss_distill"],
                    stats["instance_top1"], lr, stats["matching_updates"], stats["seconds"])
        log(stats)
        if args.rank == 0:
            state = {"epoch": epoch + 1, "arch": args.arch, "state_dict": moco.state_dict(),
                     "optimizer": optimizer.state_dict(), "distiller": distiller.matching_state_dict(),
                     "args": {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list))}}
            atomic_save(state, os.path.join(args.output_dir, f"checkpoint_{epoch:04d}.pth.tar"))
            atomic_save(state, os.path.join(args.output_dir, "checkpoint_last.pth.tar"))
            backbone = {k: v for k, v in moco.encoder_q.state_dict().items() if not k.startswith("fc.")}
            atomic_save(backbone, os.path.join(args.output_dir, "student_backbone.pth"))


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    if args.batch_size <= 0 or args.epochs < 0 or args.loss_factor <= 0:
        raise UserError("--batch-size and --loss-factor must be positive, --epochs non-negative")
    if not os.path.isdir(args.data):
        raise UserError(f"data directory not found: {args.data}")
    if not os.path.isfile(args.teacher_resume):
        raise UserError(f"--teacher-resume: checkpoint not found: {args.teacher_resume}")
    launch(worker, args)


if __name__ == "__main__":
    run_cli(main)
