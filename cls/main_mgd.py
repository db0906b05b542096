"""Distil a student from a teacher with MGD (Matching Guided Distillation, ECCV 2020) or another method.

    python cls/main_mgd.py DATA -a mobilenet_v1 --teacher-resume r50.pth --distiller mgd --mgd-reducer amp \\
        --mgd-update-freq 2 -b 256 --lr 0.1 --multiprocessing-distributed --world-size 1 --rank 0

Every method goes through the library's one contract (mgd.build_distiller): its flags become its options,
its prepare step (MGD: the channel matching, solved before training and before every --mgd-update-freq-th
epoch from at most --mgd-update-images training images seen through the validation transforms; KD++: the
teacher's class means, once) runs when the method asks for it, and its loss terms are added to the
cross-entropy. --distiller ofd|kd|at|sp|nd trains OFD, KD, attention transfer, similarity preservation or
KD++ on the same footing (same data, schedule, checkpoints, DDP, AMP).
"""
from __future__ import annotations

import logging
import os
import signal
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # a Ctrl-C during the imports below: one word and 130, not a traceback (run_cli's next)
    signal.signal(signal.SIGINT, lambda *_: (sys.stderr.write("interrupted\n"), os._exit(130)))

import mgd
from cls.trainer import check_arch, teacher_arch, train_worker
from cls.utils import common_parser, finish_args
from mgd.engine import UserError, launch, run_cli, worker_guard
from mgd.engine.args import add_method_arguments, check_method_flags, identity_settings

logger = logging.getLogger("cls")


def get_parser():
    p = common_parser(__doc__.strip().splitlines()[0], nesterov=1)
    p.add_argument("--distiller", default="mgd", choices=sorted(mgd.DISTILLERS))
    add_method_arguments(p, sorted(mgd.DISTILLERS))
    return p


def check_args(args) -> None:
    """Cheap checks in the parent process, before any worker starts."""
    check_arch(args.arch, teacher_arch(args))
    check_method_flags(args.distiller, args, sorted(mgd.DISTILLERS))
    if args.dataset == "imagefolder" and not os.path.isdir(args.data):
        raise UserError(f"data directory not found: {args.data}")


def output_tag(args) -> str:
    """The method in the default output folder's name: the original's <distiller>.<reducer> for MGD."""
    return ".".join([args.distiller, *map(str, identity_settings(args.distiller, args).values())])


@worker_guard
def worker(local_rank: int, args) -> None:
    train_worker(local_rank, args)


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    check_args(args)
    args = finish_args(args, tag=output_tag(args))
    launch(worker, args)


if __name__ == "__main__":
    run_cli(main)
