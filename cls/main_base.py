"""Train or evaluate a plain classifier (no distillation): the baseline, and how teachers are made.

    python cls/main_base.py DATA -a resnet18 --epochs 100 -b 256 --lr 0.1
    python cls/main_base.py DATA --dataset fashion-mnist -a cifar_resnet20 --input-size 28 --epochs 10
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from torch import nn

from cls.engine import build_student, fit, start_worker
from cls.models import build_model
from cls.utils import common_parser, evaluate, finish_args, load_checkpoint, make_scheduler, read_weights
from mgd.runner import UserError, launch, run_cli, worker_guard


def get_parser():
    p = common_parser(__doc__.strip().splitlines()[0])
    p.add_argument("--pretrained", default="", metavar="PATH", help="initialise the backbone from a state dict "
                   "without (or ignoring) the classifier, e.g. unsup/'s student_backbone.pth")
    p.add_argument("--linear-eval", action="store_true", help="freeze everything but the final classifier "
                   "(BN statistics included): the linear evaluation of a pretrained backbone")
    return p


def classifier(model: nn.Module):
    """(state-dict prefix, layer) of the final linear classifier: ``fc`` or ``classifier``'s last Linear."""
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return "fc.", model.fc
    return "classifier.", [m for m in model.classifier.modules() if isinstance(m, nn.Linear)][-1]


def load_pretrained_backbone(model: nn.Module, path: str) -> None:
    """Every tensor but the classifier's, strictly; the classifier is re-initialised (N(0, 0.01), 0)."""
    head, layer = classifier(model)
    state = {k: v for k, v in read_weights(path, "--pretrained").items() if not k.startswith(head)}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    if missing or result.unexpected_keys:
        raise UserError(f"--pretrained: {path} does not fit {type(model).__name__} (missing {missing[:3]}, "
                        f"unexpected {result.unexpected_keys[:3]})")
    nn.init.normal_(layer.weight, 0.0, 0.01)
    nn.init.zeros_(layer.bias)


def freeze_all_but_classifier(model: nn.Module) -> None:
    """requires_grad only on the classifier; BN layers stay in eval mode (running statistics frozen)."""
    head, _ = classifier(model)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(head)

    def keep_bn_frozen(module, inputs):
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    model.register_forward_pre_hook(keep_bn_frozen)


def check_args(args) -> None:
    """Cheap checks in the parent process, before any worker starts."""
    try:
        build_model(args.arch, 2)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.dataset == "imagefolder" and not os.path.isdir(args.data):
        raise UserError(f"data directory not found: {args.data}")


@worker_guard
def worker(local_rank: int, args) -> None:
    device, (train_set, valid_loader, _, num_classes) = start_worker(local_rank, args)
    model = build_student(args, num_classes)
    if args.pretrained:
        load_pretrained_backbone(model, args.pretrained)
    if args.linear_eval:
        freeze_all_but_classifier(model)
    if args.distributed and args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=bool(args.nesterov) and args.momentum > 0)
    scheduler = make_scheduler(optimizer, args)
    start_epoch, best = args.start_epoch, 0.0
    if args.resume:
        ckpt = load_checkpoint(args.resume)
        if ckpt.get("arch") != args.arch:
            raise UserError(f"--resume: checkpoint is for {ckpt.get('arch')}, not {args.arch}")
        model.load_state_dict(ckpt["student"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        start_epoch, best = int(ckpt["epoch"]), float(ckpt["best_acc1"])
    if args.evaluate:
        stats = evaluate(model, valid_loader, device)
        print(f"{args.arch}: top-1 {stats['top1']:.2f}  top-5 {stats['top5']:.2f}  loss {stats['loss']:.4f}")
        return
    if args.distributed:
        trainable = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    elif device.type == "cuda" and torch.cuda.device_count() > 1 and args.gpu is None:
        trainable = nn.DataParallel(model)
    else:
        trainable = model
    criterion = nn.CrossEntropyLoss()

    def step(images, target):
        output = trainable(images)
        loss = criterion(output, target)
        return loss, output, {"ce": loss.item()}

    fit(args=args, device=device, student=model, step=step, trainable=trainable, optimizer=optimizer,
        scheduler=scheduler, train_set=train_set, valid_loader=valid_loader, extra_state=dict,
        start_epoch=start_epoch, best_acc1=best)


def main(argv=None) -> None:
    args = finish_args(get_parser().parse_args(argv), tag=None)
    check_args(args)
    launch(worker, args)


if __name__ == "__main__":
    run_cli(main)
