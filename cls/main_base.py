"""Train or evaluate a plain classifier (no distillation): the baseline, and how teachers are made.

    python cls/main_base.py DATA -a resnet18 --epochs 100 -b 256 --lr 0.1
    python cls/main_base.py DATA --dataset fashion-mnist -a cifar_resnet20 --input-size 28 --epochs 10
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch import nn

from cls.trainer import (build_student, build_teacher, check_arch, classifier, evaluate_models, fit, load_backbone,
                         make_optimizer, resume, start_worker, teacher_arch)
from cls.utils import accuracy, common_parser, finish_args, make_scheduler
from mgd.engine import RunLog, UserError, launch, read_weights, run_cli, worker_guard, wrap_for_training


def get_parser():
    p = common_parser(__doc__.strip().splitlines()[0], nesterov=0)
    p.add_argument("--pretrained-backbone", default="", metavar="PATH", help="initialise the backbone from a "
                   "state dict without (or ignoring) the classifier, e.g. unsup/'s student_backbone.pth")
    p.add_argument("--linear-eval", action="store_true", help="freeze everything but the final classifier "
                   "(BN statistics included): the linear evaluation of a pretrained backbone")
    return p


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
    check_arch(args.arch, *([args.teacher_arch] if args.teacher_arch else []))
    if args.dataset == "imagefolder" and not os.path.isdir(args.data):
        raise UserError(f"data directory not found: {args.data}")


@worker_guard
def worker(local_rank: int, args) -> None:
    device, precision, (train_set, valid_loader, _, num_classes) = start_worker(local_rank, args)
    model = build_student(args, num_classes)
    if args.pretrained_backbone:
        load_backbone(model, read_weights(args.pretrained_backbone, "--pretrained-backbone"), "--pretrained-backbone",
                      args.pretrained_backbone)
    if args.linear_eval:
        freeze_all_but_classifier(model)
    if args.distributed and args.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    precision.prepare_model(model.to(device))
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], args)
    scheduler = make_scheduler(optimizer, args)

    def plain_run(ckpt) -> None:
        if "method" in ckpt:
            raise UserError(f"--resume: {args.resume} is a main_mgd.py checkpoint (distillation with "
                            f"{ckpt['method']}): resume it with main_mgd.py, or start from its student with "
                            "--student-resume")
    start_epoch, best = resume(args, model, optimizer, scheduler, precision, plain_run)
    if args.evaluate:
        models = {}
        if args.teacher_resume:
            models["teacher " + args.teacher_arch] = build_teacher(args, num_classes).to(device)
        evaluate_models({**models, args.arch: model}, valid_loader, device, args.rank)
        return
    trainable = wrap_for_training(model, device, args.distributed, args.gpu, precision=precision)
    criterion = nn.CrossEntropyLoss()

    def step(batch):
        images, target = precision.to_device(batch[0]), batch[1].to(device, non_blocking=True)
        output = trainable(images)
        loss = criterion(output.float(), target)
        top1 = accuracy(output.detach(), target, topk=(1,))[0] / images.shape[0] * 100
        return loss, {"ce": loss.item(), "train_top1": top1}, images.shape[0]

    fit(args=args, device=device, precision=precision, student=model, step=step, trainable=trainable,
        optimizer=optimizer, scheduler=scheduler, train_set=train_set, valid_loader=valid_loader, extra_state=dict,
        log=RunLog(args.output_dir, args.rank, args.tensorboard), start_epoch=start_epoch, best_acc1=best)


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    if args.teacher_resume:
        teacher_arch(args)
    check_args(args)
    launch(worker, finish_args(args, tag=None))


if __name__ == "__main__":
    run_cli(main)
