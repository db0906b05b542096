#!/usr/bin/env python
"""Train / evaluate MGD RetinaNet with Detectron2 (an external project; detectron2 itself is unchanged).

    python d2/train_net.py --config-file d2/configs/mgd_retinanet_R50_R18_FPN_1x.yaml --num-gpus 8 \\
        MODEL.WEIGHTS output/mgd_init.pth
    python d2/train_net.py --config-file d2/configs/mgd_retinanet_R50_R18_FPN_1x.yaml --eval-only \\
        MODEL.WEIGHTS output/model_final.pth          # COCO AP of the student alone
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.evaluation import COCOEvaluator, verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from mgd_d2 import MGDUpdateHook, add_mgd_config  # noqa: E402


class Trainer(DefaultTrainer):
    """DefaultTrainer plus the MGD matching-update hook (first, so updates are not timed as steps)."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        # use_fast_impl=False: the fast C++ COCO evaluation is not needed (and absent from pure-Python installs)
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)

    def build_hooks(self):
        hooks = super().build_hooks()
        if self.cfg.MODEL.META_ARCHITECTURE == "MGDRetinaNet":
            hooks.insert(0, MGDUpdateHook(self.cfg))
        return hooks


def setup(args):
    cfg = get_cfg()
    add_mgd_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.MGD.CONFIG_DIR = os.path.dirname(os.path.abspath(args.config_file))
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)  # MGDRetinaNet in eval mode runs the student alone
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
