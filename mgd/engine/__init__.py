"""Application support shared by the training scripts of mgd (cls/, unsup/, seg/): process launch, the
one-line user-error convention, common flags, mixed precision, run logs, checkpoints, seeded sharded
loaders, one training epoch and the distiller's prepare step.

``import mgd`` does not import this package (as detectron2.engine is apart from detectron2.modeling):
the library stays free of argparse, printing and ``sys.exit``.
"""
from .args import ArgumentParser, add_launch_arguments, add_precision_arguments, add_run_arguments
from .checkpoints import (load_backbone_weights, load_checkpoint, plain_args, read_weights, restore_training_state, resume_from,
                          save_checkpoints)
from .data import (SkipUnreadable, UnreadableImage, WithIndices, epoch_loader, eval_loader, image_folder,
                   prepare_loader, read_rgb_image, shard)
from .errors import UserError
from .launch import launch, run_cli, seed_everything, setup_logging, setup_process, worker_guard
from .logs import Meter, RunLog
from .precision import Precision
from .rundir import Diverged, check_output_dir, last_good_checkpoint, refuse_non_finite, start_output_dir
from .shipped import package_file, shipped_mobilenet_v2_weights
from .train import ReplicaStep, mean_terms, prepare_if_due, train_one_epoch, wrap_for_training

__all__ = ["UserError", "launch", "run_cli", "worker_guard", "setup_process", "setup_logging", "seed_everything",
           "ArgumentParser", "add_launch_arguments", "add_precision_arguments", "add_run_arguments", "Precision",
           "RunLog", "Meter", "check_output_dir", "start_output_dir", "Diverged", "refuse_non_finite",
           "last_good_checkpoint", "save_checkpoints", "load_checkpoint", "load_backbone_weights", "read_weights", "plain_args", "shard",
           "epoch_loader", "eval_loader", "prepare_loader", "read_rgb_image", "image_folder", "UnreadableImage",
           "SkipUnreadable", "WithIndices",
           "train_one_epoch", "prepare_if_due", "wrap_for_training", "ReplicaStep", "mean_terms",
           "restore_training_state", "resume_from", "package_file", "shipped_mobilenet_v2_weights"]
