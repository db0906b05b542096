"""The MGD section of a Detectron2 config, and how the teacher's config is derived."""
from __future__ import annotations

import os
from typing import List

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from mgd.registry import DISTILLERS, distiller_options, registered_methods


def feature_methods() -> List[str]:
    """The registered methods d2 distils on the backbones' pre-ReLU C2-C5 (both meta-architectures): those that
    capture stage features and work on dense (N, C, H, W) maps (``needs_features`` and ``dense_outputs``): mgd,
    sm, ofd, at, sp, and any other package's; read from the registry at each call, never a list of names."""
    return registered_methods(needs_features=True, dense_outputs=True)


def logit_methods() -> List[str]:
    """The registered methods d2 distils on a Faster R-CNN box head's class logits of the sampled proposals:
    those with a teacher that read only the networks' outputs and the labels (``needs_features`` False): kd,
    dkd, dist, and any other package's (not nd, KD++, which needs the classifiers' embeddings, nor a method
    that reads a second student head, DeiT's)."""
    return registered_methods(needs_features=False, needs_teacher=True, student_heads=1)


def add_mgd_config(cfg: CN) -> None:
    """Add the MGD keys (with the original's defaults) to ``cfg``; call before merging a YAML file."""
    # The original's ENABLE_STAGE_LAST_NORM (its d2 config: True for the student, False for the teacher):
    # the norm layers of the last block of each trainable stage res2-res5 become trainable STAGE_LAST_NORM
    # layers ("GN": GroupNorm(32), "SyncBN": detectron2's NaiveSyncBatchNorm) instead of MODEL.RESNETS.NORM
    # (FrozenBN by default). An architecture key: the student's configs set it, and a checkpoint of such a
    # student loads only into a model built with it. Applied by the pre-ReLU backbones of mgd_d2.backbone.
    cfg.MODEL.RESNETS.ENABLE_STAGE_LAST_NORM = False
    cfg.MODEL.RESNETS.STAGE_LAST_NORM = "GN"
    # torchvision's MobileNetV2 as the bottom-up network (mgd_d2.mobilenet): width, "BN" (trainable) or "FrozenBN",
    # and a torchvision MobileNetV2 state dict to start from (e.g. its ImageNet weights; never downloaded).
    cfg.MODEL.MOBILENET_V2 = CN()
    cfg.MODEL.MOBILENET_V2.WIDTH_MULT = 1.0
    cfg.MODEL.MOBILENET_V2.NORM = "BN"
    cfg.MODEL.MOBILENET_V2.PRETRAINED = ""
    cfg.MGD = CN()
    # The method, any registered one (mgd.build_distiller), chosen by its capabilities (see feature_methods /
    # logit_methods): a method that distils stage features on dense maps works on the backbones' pre-ReLU C2-C5
    # (MGD's matching, OFD's connectors, AT, SP, another package's); with a Faster R-CNN, a method that reads
    # only the logits works on the box head's class logits of the student's sampled proposals, the teacher's
    # box head run on those same proposals (as mdistiller's detection code). `train_net.py --help` and
    # docs/applications/detection.md list the registered ones.
    cfg.MGD.DISTILLER = "mgd"
    # Channel reducer: "amp" (absolute max pooling), "sp" (max pooling), "rd" (random drop), "sm" (sparse).
    cfg.MGD.REDUCER = "amp"
    # Distilled positions are the backbone's pre-ReLU C2, C3, C4, C5 (indices 0-3; a MobileNetV2's four positions
    # inside features[4], [7], [11], [17]); list the ones to skip.
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
    # divided by SOLVER.IMS_PER_BATCH. Pick them so each level's loss starts around 0.0x. Used by every method
    # that takes stage weights.
    cfg.MGD.LOSS_FACTORS = [5e7, 5e7, 5e6, 5e6]
    # "" : the LOSS_FACTORS above are the divisors. "auto": one more, global divisor is measured at the first
    # matching (before the first step for a method without one) so that loss_distill starts at LOSS_RATIO times the sum of the
    # detector's losses; the LOSS_FACTORS then only set the levels' relative weights (the original's balance).
    # Kept in checkpoints. Only for a method with a loss factor (the partial-L2 ones: mgd, sm, ofd); the logit
    # methods have their own weights below.
    cfg.MGD.LOSS_FACTOR = ""
    cfg.MGD.LOSS_RATIO = 2.0
    # Images (over all processes) of that measurement, read from the matching's own data stream.
    cfg.MGD.CALIBRATION_IMAGES = 64
    # Assignment solver: "ortools" or "scipy" (both exact).
    cfg.MGD.SOLVER = "ortools"
    # A logit method's options: the keys of its section MGD.<NAME> (the method's flag prefixes, upper case: the
    # registry's "kd" reads MGD.KD) are its keyword options, lower case (TEMPERATURE -> temperature); a method
    # with a warm-up gets warmup_epochs 0 unless its section sets one (d2 counts iterations, not epochs). WEIGHT,
    # unless the method has an option of that name, multiplies each of its terms. The detector's losses keep
    # weight 1 whatever the method's task_weight (as mdistiller's detection code keeps them for its logit
    # methods): the registry's kd weighs a classifier's cross-entropy 1 - alpha, which d2 does not apply.
    # "kd": loss_kd = WEIGHT * ALPHA * T^2 KL(softmax(t/T) || softmax(s/T)) over the sampled proposals.
    cfg.MGD.KD = CN()
    cfg.MGD.KD.TEMPERATURE = 1.0
    # the registry's kd alpha (the share of its T^2 KL); 1: the whole term, scaled by WEIGHT alone
    cfg.MGD.KD.ALPHA = 1.0
    cfg.MGD.KD.WEIGHT = 1.0
    # "dkd": loss_dkd = mgd.losses.dkd_loss(..., ALPHA, BETA, TEMPERATURE) (the registry's dkd, no warm-up);
    # mdistiller's detection defaults (configs/DKD: alpha 1, beta 0.25, T 1), not its CIFAR ones.
    cfg.MGD.DKD = CN()
    cfg.MGD.DKD.ALPHA = 1.0
    cfg.MGD.DKD.BETA = 0.25
    cfg.MGD.DKD.TEMPERATURE = 1.0
    cfg.MGD.TEACHER = CN()
    # The teacher's Detectron2 config (the student's detector: a RetinaNet, or a GeneralizedRCNN for the
    # Faster R-CNN meta-architecture); a relative path is taken from the student config's folder.
    cfg.MGD.TEACHER.CONFIG_FILE = ""
    # Teacher weights to load at construction; leave empty when MODEL.WEIGHTS holds them (see merge_weights.py).
    cfg.MGD.TEACHER.WEIGHTS = ""
    # Extra "KEY VALUE" overrides for the teacher's config.
    cfg.MGD.TEACHER.OPTS = []
    # Folder of the student config file (set by train_net.py; resolves a relative TEACHER.CONFIG_FILE).
    cfg.MGD.CONFIG_DIR = ""


def check_method(cfg: CN, box_logits: bool = True) -> str:
    """MGD.DISTILLER, checked: ValueError naming the valid ones (``box_logits``: whether the detector has a box
    head whose class logits the logit methods distil, a Faster R-CNN)."""
    name = cfg.MGD.DISTILLER
    features, logits = feature_methods(), logit_methods()
    valid = features + (logits if box_logits else [])
    if name not in valid:
        more = "" if box_logits or not logits else f" ({', '.join(logits)} need a Faster R-CNN)"
        raise ValueError(f"MGD.DISTILLER {name!r} is not valid for {cfg.MODEL.META_ARCHITECTURE}; valid: "
                         f"{', '.join(valid)}{more}")
    if cfg.MGD.LOSS_FACTOR not in ("", "auto"):
        raise ValueError(f"MGD.LOSS_FACTOR must be '' (the LOSS_FACTORS as given) or 'auto', "
                         f"got {cfg.MGD.LOSS_FACTOR!r}")
    if cfg.MGD.LOSS_FACTOR and "loss_factor" not in distiller_options(name):
        own = f"MGD.{(DISTILLERS[name].flag_prefix or name).upper()}.*"
        raise ValueError(f"MGD.LOSS_FACTOR {cfg.MGD.LOSS_FACTOR!r} calibrates a method's loss factor and {name} has "
                         f"none (a logit method is weighted by {own}): leave it empty")
    return name


def teacher_config(cfg: CN, architecture: str) -> CN:
    """The teacher's config: its own file, with the student's device, classes and input format; ValueError
    unless its META_ARCHITECTURE is ``architecture`` (the student's detector)."""
    path = cfg.MGD.TEACHER.CONFIG_FILE
    if not path:
        raise ValueError(f"MGD.TEACHER.CONFIG_FILE is empty: name the teacher's {architecture} config")
    if not os.path.isabs(path) and cfg.MGD.CONFIG_DIR and not os.path.isfile(path):
        path = os.path.join(cfg.MGD.CONFIG_DIR, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MGD.TEACHER.CONFIG_FILE not found: {path}")
    t_cfg = get_cfg()
    add_mgd_config(t_cfg)
    t_cfg.merge_from_file(path)
    t_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    t_cfg.MODEL.RETINANET.NUM_CLASSES = cfg.MODEL.RETINANET.NUM_CLASSES
    t_cfg.MODEL.ROI_HEADS.NUM_CLASSES = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    t_cfg.INPUT.FORMAT = cfg.INPUT.FORMAT
    t_cfg.MODEL.WEIGHTS = ""
    if cfg.MGD.TEACHER.OPTS:
        t_cfg.merge_from_list(list(cfg.MGD.TEACHER.OPTS))
    if t_cfg.MODEL.META_ARCHITECTURE != architecture:
        raise ValueError(f"the teacher must be a {architecture} like the student, its config {path} says "
                         f"{t_cfg.MODEL.META_ARCHITECTURE}")
    return t_cfg
