#!/usr/bin/env python
"""Train / evaluate a distilled detector (MGD, OFD; KD, DKD for Faster R-CNN) with Detectron2, an external
project (detectron2 itself is unchanged).

    python d2/train_net.py --config-file d2/configs/mgd_retinanet_R50_R18_FPN_1x.yaml --num-gpus 8 \\
        MODEL.WEIGHTS output/mgd_init.pth
    python d2/train_net.py --config-file d2/configs/mgd_retinanet_R50_R18_FPN_1x.yaml --eval-only \\
        MODEL.WEIGHTS output/model_final.pth          # COCO AP of the student alone
    python d2/train_net.py --config-file ... --num-gpus 2 MODEL.DEVICE cpu    # 2 CPU processes over gloo
    python d2/train_net.py --config-file ... --register-coco trees_train trees_train.json images/ \\
        DATASETS.TRAIN "('trees_train',)"              # your own COCO-format data, no code
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup  # noqa: E402
from detectron2.evaluation import COCOEvaluator, verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from mgd.engine.errors import EXIT_FAILED, EXIT_USER, UserError  # noqa: E402
from mgd.engine.rundir import check_output_dir, start_output_dir  # noqa: E402
from mgd_d2 import DistillDetector, MGDUpdateHook, add_mgd_config, cpu_ddp, launch, register_coco_datasets  # noqa: E402
from mgd_d2.datasets import check_coco_file, check_datasets_registered  # noqa: E402


class Trainer(DefaultTrainer):
    """DefaultTrainer plus the distiller's hook (matching updates, loss-factor calibration; first, so that
    they are not timed as steps); a CPU model is wrapped in DDP without device ids."""

    def __init__(self, cfg):
        with cpu_ddp():
            super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        # use_fast_impl=False: the fast C++ COCO evaluation is not needed (and absent from pure-Python installs)
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)

    def build_hooks(self):
        hooks = super().build_hooks()
        model = self.model.module if hasattr(self.model, "module") else self.model
        if isinstance(model, DistillDetector):
            hooks.insert(0, MGDUpdateHook(self.cfg))
        return hooks


#: What a training run leaves in OUTPUT_DIR that makes the folder hold a previous run (DefaultTrainer's
#: checkpoints), and what belongs to that run and moves aside with it under --overwrite.
CHECKPOINT_NAMES = ("model_*.pth", "last_checkpoint")
RUN_FILES = ("metrics.json", "log.txt*", "events.out.tfevents.*", "mgd_updates.jsonl", "config.yaml")


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_DIR"),
                        help="register a COCO-format dataset under NAME in every process (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="start afresh in an OUTPUT_DIR that holds a "
                        "previous run: its checkpoints and logs are moved to OUTPUT_DIR/previous-<time>/ first "
                        "(without it, such a run is refused unless it is --resume'd)")
    return parser


def check_output(args, cfg) -> None:
    """OUTPUT_DIR as the other applications keep theirs (mgd.engine.rundir): a folder with a previous run's
    checkpoints is written into only with --resume (the run continues) or --overwrite (the previous run is
    moved aside, nothing is deleted), and never by two runs at once (its run.lock)."""
    if args.eval_only:
        return
    out = cfg.OUTPUT_DIR
    check_output_dir(out, CHECKPOINT_NAMES, os.path.join(out, "last_checkpoint") if args.resume else "",
                     args.overwrite, {"MODEL.WEIGHTS": cfg.MODEL.WEIGHTS}, args.machine_rank, flag="OUTPUT_DIR")
    start_output_dir(out, CHECKPOINT_NAMES, args.resume, args.machine_rank, args.overwrite, companions=RUN_FILES)


def load_config(args):
    """The merged config (not frozen, no side effects): the MGD keys, the file, the command line's opts."""
    cfg = get_cfg()
    add_mgd_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.MGD.CONFIG_DIR = os.path.dirname(os.path.abspath(args.config_file))
    cfg.merge_from_list(args.opts)
    return cfg


def setup(args):
    register_coco_datasets(args.register_coco)
    cfg = load_config(args)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)  # a distillation meta-architecture in eval mode runs the student alone
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    try:
        return trainer.train()
    except FloatingPointError as exc:  # detectron2's "Loss became infinite or NaN at iteration=N!"
        last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
        resume = "--resume continues from the last checkpoint" if os.path.isfile(last) else "no checkpoint was written"
        raise UserError(f"training diverged: {' '.join(str(exc).split())} (lower SOLVER.BASE_LR, or raise MGD.LOSS_FACTORS if "
                        f"loss_distill is the term that diverged; {resume})") from None


def run(args, main_func=main):
    """``main_func(args)`` in ``args.num_gpus`` processes: detectron2's launch on GPUs, gloo processes when
    MODEL.DEVICE is cpu (or no GPU exists). A bad config or dataset is one line and exit code 2."""
    try:
        register_coco_datasets(args.register_coco)  # checked here once, before any process starts
        for entry in args.register_coco:
            check_coco_file(*entry)
        cfg = load_config(args)
        check_datasets_registered(cfg.DATASETS.TEST, "DATASETS.TEST")
        if not args.eval_only:
            check_datasets_registered(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
        check_output(args, cfg)
    except (ValueError, FileNotFoundError, KeyError, AssertionError, UserError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER)
    device = cfg.MODEL.DEVICE
    if not torch.cuda.is_available():
        device = "cpu"
    try:
        launch(main_func, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,), device="cpu" if device == "cpu" else "cuda")
    except UserError as exc:  # a single process: main's own
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER)
    except mp.ProcessRaisedException as exc:  # a worker's error: its UserError as one line, anything else as is
        found = re.findall(r"^(?:\S+\.)?UserError: (.*)$", str(exc), re.M)
        if not found:
            raise
        print(f"error: {found[-1]}", file=sys.stderr)
        sys.exit(EXIT_USER)
    except mp.ProcessExitedException as exc:  # killed (SIGKILL: out of memory, or by hand)
        print(f"error: the process of rank {exc.error_index} {_ended(exc)}; the job stopped", file=sys.stderr)
        sys.exit(EXIT_FAILED)


def _ended(exc: "mp.ProcessExitedException") -> str:
    if exc.signal_name:
        return f"was killed by {exc.signal_name}"
    return f"exited with code {exc.exit_code}"


if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    run(args)
