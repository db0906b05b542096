"""The MGD section of a Detectron2 config, and how the teacher's config is derived."""
from __future__ import annotations

import os

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg


def add_mgd_config(cfg: CN) -> None:
    """Add the MGD keys (with the original's defaults) to ``cfg``; call before merging a YAML file."""
    cfg.MGD = CN()
    # Channel reducer: "amp" (absolute max pooling), "sp" (max pooling), "rd" (random drop), "sm" (sparse).
    cfg.MGD.REDUCER = "amp"
    # Distilled positions are the backbone's pre-ReLU C2, C3, C4, C5 (indices 0-3); list the ones to skip.
    # (The original also listed P3-P7 as positions 4-8 and ignored them all; they are not distilled here.)
    cfg.MGD.IGNORE_INDS = []
    # Student-side norm layers: NaiveSyncBatchNorm when True, GroupNorm(32) otherwise (the original's choice).
    cfg.MGD.SYNC_BN = False
    # Compare features before the ReLU (the method); False applies a ReLU to both sides first.
    cfg.MGD.PRERELU = True
    # Re-solve the matching every UPDATE_FREQ[0] iterations until UPDATE_SLOW_STEP[0], then every UPDATE_FREQ[1].
    cfg.MGD.UPDATE_FREQ = [5000, 31000]
    cfg.MGD.UPDATE_SLOW_STEP = [20000]
    # Batches (per process) tracked by each matching update, from a separate training-data stream.
    cfg.MGD.UPDATE_ITER = 1000
    # Divisors of the C2-C5 distillation losses (the original's RetinaNet factors); the summed loss is then
    # divided by SOLVER.IMS_PER_BATCH. Pick them so each level's loss starts around 0.0x.
    cfg.MGD.LOSS_FACTORS = [5e7, 5e7, 5e6, 5e6]
    # Assignment solver: "ortools" or "scipy" (both exact).
    cfg.MGD.SOLVER = "ortools"
    cfg.MGD.TEACHER = CN()
    # The teacher's Detectron2 config (a RetinaNet); a relative path is taken from the student config's folder.
    cfg.MGD.TEACHER.CONFIG_FILE = ""
    # Teacher weights to load at construction; leave empty when MODEL.WEIGHTS holds them (see merge_weights.py).
    cfg.MGD.TEACHER.WEIGHTS = ""
    # Extra "KEY VALUE" overrides for the teacher's config.
    cfg.MGD.TEACHER.OPTS = []
    # Folder of the student config file (set by train_net.py; resolves a relative TEACHER.CONFIG_FILE).
    cfg.MGD.CONFIG_DIR = ""


def teacher_config(cfg: CN) -> CN:
    """The teacher's config: its own file, with the student's device, classes and input format."""
    path = cfg.MGD.TEACHER.CONFIG_FILE
    if not path:
        raise ValueError("MGD.TEACHER.CONFIG_FILE is empty: name the teacher's RetinaNet config")
    if not os.path.isabs(path) and cfg.MGD.CONFIG_DIR and not os.path.isfile(path):
        path = os.path.join(cfg.MGD.CONFIG_DIR, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MGD.TEACHER.CONFIG_FILE not found: {path}")
    t_cfg = get_cfg()
    add_mgd_config(t_cfg)
    t_cfg.merge_from_file(path)
    t_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    t_cfg.MODEL.RETINANET.NUM_CLASSES = cfg.MODEL.RETINANET.NUM_CLASSES
    t_cfg.INPUT.FORMAT = cfg.INPUT.FORMAT
    t_cfg.MODEL.WEIGHTS = ""
    if cfg.MGD.TEACHER.OPTS:
        t_cfg.merge_from_list(list(cfg.MGD.TEACHER.OPTS))
    if t_cfg.MODEL.META_ARCHITECTURE != "RetinaNet":
        raise ValueError(f"the teacher must be a RetinaNet, its config says {t_cfg.MODEL.META_ARCHITECTURE}")
    return t_cfg
