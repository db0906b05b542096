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
import sys

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mgd
from cls.trainer import check_arch, teacher_arch, train_worker
from cls.utils import common_parser, finish_args
from mgd.engine import UserError, launch, run_cli, worker_guard
from mgd.engine.args import loss_factor, non_negative_float, positive_float, positive_int
from mgd.engine.args import identity_settings
from mgd.matching.update import LEGACY_MAX_IMAGES

logger = logging.getLogger("cls")


def get_parser():
    p = common_parser(__doc__.strip().splitlines()[0], nesterov=1)
    p.add_argument("--distiller", default="mgd", choices=sorted(mgd.DISTILLERS))
    g = p.add_argument_group("method options (unset: the method's paper default)")
    g.add_argument("--loss-factor", default=None, type=loss_factor, help="mgd/ofd: the distillation loss is "
                   "divided by the batch size and this factor (default 1e4, the original's value at 224 px); 'auto': "
                   "measured before training so that the distillation term starts at --loss-ratio times the "
                   "cross-entropy (kept in the checkpoint; the first step logs both terms)")
    g.add_argument("--loss-ratio", default=None, type=positive_float, help="mgd/ofd with --loss-factor auto: the "
                   "distillation term's start as a multiple of the cross-entropy (default 2)")
    g.add_argument("--mgd-reducer", default=None, choices=["amp", "rd", "sp", "sm"], help="mgd: channel reducer "
                   "(default amp)")
    g.add_argument("--mgd-update-freq", default=2, type=positive_int, help="mgd: re-solve the matching every N epochs")
    g.add_argument("--mgd-update-images", default=None, type=positive_int, help="mgd: images tracked per matching "
                   f"update (over all processes; default {LEGACY_MAX_IMAGES}, the original's)")
    g.add_argument("--mgd-with-kd", default=0, type=int, choices=[0, 1], help="mgd: add Hinton's KD loss (T = 1.5)")
    g.add_argument("--mgd-solver", default=None, choices=["ortools", "scipy"], help="mgd: assignment solver "
                   "(default ortools; both exact)")
    g.add_argument("--kd-alpha", default=None, type=non_negative_float, help="kd/nd: weight of the KD term; the "
                   "cross-entropy keeps 1 - alpha (default 0.9)")
    g.add_argument("--kd-temperature", default=None, type=positive_float, help="kd/nd: softmax temperature "
                   "(default 4)")
    g.add_argument("--at-beta", default=None, type=non_negative_float, help="at: beta; the loss is beta/2 * the sum "
                   "over stages (default 1000)")
    g.add_argument("--sp-gamma", default=None, type=non_negative_float, help="sp: gamma (default 3000)")
    g.add_argument("--nd-weight", default=None, type=non_negative_float, help="kd, dkd, dist, reviewkd: > 0 adds "
                   "KD++'s ND loss on the penultimate embeddings with this weight (the '++' of each method, trained "
                   "with the KD++ recipe); nd (KD++ itself): default 1")
    for method, also, imagenet in (("kd", " with --nd-weight, nd", "5"), ("dkd", "", "1"), ("reviewkd", "", "1")):
        g.add_argument(f"--{method}-warmup-epochs", default=None, type=non_negative_float, help=f"{method}{also}: "
                       f"epochs over which the term ramps in linearly (default 20, the authors' CIFAR setting; "
                       f"ImageNet {imagenet})")
    g.add_argument("--kd-weight", default=None, type=non_negative_float, help="nd, kd with --nd-weight: weight of "
                   "the KD term in the KD++ recipe (default 1)")
    g.add_argument("--dkd-alpha", default=None, type=non_negative_float, help="dkd: TCKD weight (default 1)")
    g.add_argument("--dkd-beta", default=None, type=non_negative_float, help="dkd: NCKD weight (default 8; ImageNet "
                   "R34->R18: 0.5, R50->MobileNet-V1: 2)")
    g.add_argument("--dkd-temperature", default=None, type=positive_float, help="dkd: temperature (default 4; "
                   "ImageNet 1)")
    g.add_argument("--dist-beta", default=None, type=non_negative_float, help="dist: inter-class weight (default 1)")
    g.add_argument("--dist-gamma", default=None, type=non_negative_float, help="dist: intra-class weight (default 1)")
    g.add_argument("--dist-tau", default=None, type=positive_float, help="dist: temperature (default 1)")
    g.add_argument("--dist-weight", default=None, type=non_negative_float, help="dist: weight of the DIST term "
                   "beside the cross-entropy (default 2)")
    g.add_argument("--reviewkd-weight", default=None, type=non_negative_float, help="reviewkd: HCL weight "
                   "(default 5, CIFAR; ImageNet R34->R18: 1, R50->MobileNet-V1: 8)")
    g.add_argument("--reviewkd-mid-channels", default=None, type=positive_int, help="reviewkd: ABF middle width "
                   "(default min(512, the student's widest position); 256 for R50->MobileNet-V1)")
    g.add_argument("--crd-weight", default=None, type=non_negative_float, help="crd: weight (default 0.8)")
    g.add_argument("--crd-num-negatives", default=None, type=positive_int, help="crd: negatives per sample "
                   "(default 16384)")
    g.add_argument("--crd-temperature", default=None, type=positive_float, help="crd: NCE temperature (default 0.07)")
    g.add_argument("--crd-momentum", default=None, type=non_negative_float, help="crd: memory momentum (default 0.5)")
    g.add_argument("--crd-feat-dim", default=None, type=positive_int, help="crd: embedding size (default 128)")
    g.add_argument("--crd-memory", default=None, choices=["bank", "queue"], help="crd: 'bank' (the paper's: N x "
                   "feat-dim x 2 floats, needs the samples' indices) or 'queue' (the last --crd-num-negatives "
                   "embeddings, MoCo-style)")
    g.add_argument("--ofd-teacher-train", default=None, type=int, choices=[0, 1], dest="ofd_teacher_train_mode",
                   help="ofd: keep the teacher's BN in train mode, as OFD's code did (default 0)")
    return p


def check_args(args) -> None:
    """Cheap checks in the parent process, before any worker starts."""
    check_arch(args.arch, teacher_arch(args))
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
