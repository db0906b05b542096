"""Train or evaluate a plain classifier (no distillation): the baseline, and how teachers are made.

    python cls/main_base.py DATA -a resnet18 --epochs 100 -b 256 --lr 0.1
    python cls/main_base.py DATA --dataset fashion-mnist -a cifar_resnet20 --input-size 28 --epochs 10
"""
from __future__ import annotations

import os
import signal
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one word and 130, not a traceback (run_cli's next)
    signal.signal(signal.SIGINT, lambda *_: (sys.stderr.write("interrupted\n"), os._exit(130)))

from torch import nn

from cls.trainer import check_arch, classifier, load_backbone, teacher_arch, train_worker
from cls.utils import common_parser, finish_args
from mgd.engine import UserError, launch, read_weights, run_cli, worker_guard


def get_parser():
    p = common_parser(__doc__.strip().splitlines()[0], nesterov=0)
    p.set_defaults(distiller="none")  # plain training is a method too: the student alone behind the same contract
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


def prepare_student(args):
    """--pretrained-backbone and --linear-eval, applied to the student before it trains."""
    def prepare(model: nn.Module) -> None:
        if args.pretrained_backbone:
            load_backbone(model, read_weights(args.pretrained_backbone, "--pretrained-backbone"),
                          "--pretrained-backbone", args.pretrained_backbone)
        if args.linear_eval:
            freeze_all_but_classifier(model)
    return prepare


@worker_guard
def worker(local_rank: int, args) -> None:
    """Plain training through the same worker as main_mgd.py: its method is ``none`` (no teacher, no term)."""
    train_worker(local_rank, args, prepare_student(args))


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    if args.teacher_resume:
        teacher_arch(args)
    check_args(args)
    launch(worker, finish_args(args, tag=None))


if __name__ == "__main__":
    run_cli(main)
