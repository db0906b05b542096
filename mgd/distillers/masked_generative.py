"""``masked_generative``: Masked Generative Distillation (Yang et al., ECCV 2022), behind the one contract.

**Not this package's MGD.** ``mgd`` is *Matching Guided Distillation* (Yue, Deng, Zhou, ECCV 2020): it matches
teacher channels to student channels by an assignment problem, reduces the teacher to the student's width and
compares pre-ReLU features with OFD's partial L2; it adds nothing that is trained beside the student but its
norm layers. *Masked Generative Distillation*, the "MGD" of mmrazor, PaddleDetection and the YOLO distillers, is
this method: a random mask on the student's feature, a trained generation block that must regenerate the
teacher's full feature from what is left, and a summed squared error. Its name here is ``masked_generative``
(flags ``--masked-generative-*``; d2's ``MGD.DISTILLER masked_generative``), never ``mgd``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .. import distributed as mdist
from ..losses.masked_generative import MaskKind, masked_generative_loss, random_mask
from ..losses.spatial import match_spatial
from ..registry import register_distiller
from .base import Distiller

__all__ = ["MaskedGenerativeDistiller", "MaskedGenerativeSetting", "SETTINGS", "Task"]

Task = Literal["classification", "detection", "segmentation"]


@dataclass(frozen=True)
class MaskedGenerativeSetting:
    """The authors' (alpha, mask ratio lambda, mask kind) of one task, and the file they come from (yzd-v/MGD)."""

    alpha: float
    mask_ratio: float
    mask: MaskKind
    source: str


#: The authors' settings per task (yzd-v/MGD). Classification: ImageNet ResNet-34 -> ResNet-18 and ResNet-50 ->
#: MobileNet-V1, the last backbone feature, a channel mask (their cls loss). Detection: RetinaNet ResNeXt-101 ->
#: ResNet-50 on every FPN level, a spatial mask (their Faster R-CNN config uses alpha 5e-7, lambda 0.45: the options
#: alpha and mask_ratio; d2 does not set them yet). Segmentation: PSPNet ResNet-101 -> DeepLabV3 ResNet-18, the last backbone feature, a spatial mask.
SETTINGS: Dict[str, MaskedGenerativeSetting] = {
    "classification": MaskedGenerativeSetting(7e-5, 0.15, "channel", "cls/configs/distillers/res34_distill_res18_img.py"
                                              ", res50_distill_mv1_img.py; cls/mmcls/distillation/losses/mgd.py"),
    "detection": MaskedGenerativeSetting(2e-5, 0.65, "spatial", "det/configs/distillers/mgd/"
                                         "retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py"),
    "segmentation": MaskedGenerativeSetting(2e-5, 0.75, "spatial", "seg/configs/distillers/mgd/"
                                            "psp_r101_distill_deepv3_r18_40k_512x512_city.py"),
}

#: The stream of masks a distiller in eval mode draws (a fixed one: evaluating moves no training mask).
_EVAL_STREAM = 1


def _sync_mask_state(module: "MaskedGenerativeDistiller", keys) -> None:
    """After a state dict is loaded: the Python mirrors of the mask seed and step (read at every step without a
    device synchronisation)."""
    module._mask_seed, module._mask_step = int(module.mask_seed), int(module.mask_step)


@register_distiller("masked_generative")
class MaskedGenerativeDistiller(Distiller):
    """Masked Generative Distillation (:func:`mgd.losses.masked_generative.masked_generative_loss` per distilled
    stage, summed): per stage a 1x1 align conv (student -> teacher channels, where they differ; with a bias, as
    the authors'), a random mask, and a generation block (3x3 conv, ReLU, 3x3 conv at the teacher's width, the
    PyTorch default initialisation as the authors'); the align convs and generation blocks are trained with the
    student and are not deployed.

    Defaults are the authors' for the ``task`` (:data:`SETTINGS`): classification (alpha 7e-5, lambda 0.15, a
    channel mask), detection (``det=True``, as d2 passes it, or task "detection": alpha 2e-5, lambda 0.65, a
    spatial mask) or segmentation (alpha 2e-5, lambda 0.75, a spatial mask; seg/train.py's default task).

    Stages: the authors distil the backbone's last feature map in classification and segmentation and every FPN
    level in detection. ``ignore_inds`` None distils the last of the stage positions only (cls/: the last stage;
    seg/: the last of --distill-positions, so ``--distill-positions backbone`` gives the authors' stage4);
    d2 passes MGD.IGNORE_INDS (empty: every one of C2-C5, its stage positions, where the authors use the FPN
    outputs). Features are the stage outputs (a ReLU on the captured pre-ReLU tensors, ``relu``), as the
    authors' backbone features; maps of two sizes are average-pooled to the smaller (as OFD's and AT's here).

    The masks are reproducible and resume exactly: each training step draws them from a generator seeded by
    (``mask_seed``, the step count, the process's rank), and the seed and count are buffers of the distiller's
    own state; ``mask_seed`` None draws the seed from torch's global generator at construction, which the
    applications seed with --seed. In eval mode one fixed mask stream is used and the count does not move.

    Args:
        alpha: weight of the summed squared error per image (None: the task's, classification 7e-5).
        mask_ratio: the share lambda of the student's feature masked (None: the task's, classification 0.15).
        mask: "spatial" (whole positions, the paper and the authors' detection / segmentation code) or "channel"
            (whole channels, the authors' classification code) (None: the task's, classification "channel").
        task: whose defaults: "classification", "detection" or "segmentation" (None: detection with det=1, else
            classification).
        relu: 1 compares the stage outputs (a ReLU on both captured pre-ReLU features, the authors' backbone
            features); 0 the pre-ReLU features as captured.
    """

    cli_options = ("alpha", "mask_ratio", "mask", "task", "relu")
    flag_prefix = "masked_generative"  # --masked-generative-alpha
    dense_outputs = True  # any (N, C, H, W) stage feature: classifiers, segmenters, detectors' backbones
    replica_safe = False  # the mask count moves in the training forward: DistributedDataParallel, not DataParallel

    def __init__(self, t_net: nn.Module, s_net: nn.Module, alpha: Optional[float] = None,
                 mask_ratio: Optional[float] = None, mask: Optional[MaskKind] = None, task: Optional[Task] = None,
                 relu: bool = True, det: bool = False, ignore_inds: Optional[Sequence[int]] = None,
                 mask_seed: Optional[int] = None, teacher_channels: Optional[Sequence[int]] = None,
                 student_channels: Optional[Sequence[int]] = None, example_input: Optional[torch.Tensor] = None,
                 **kwargs) -> None:
        if task is None:
            task = "detection" if det else "classification"
        if task not in SETTINGS:
            raise ValueError(f"masked_generative task must be one of {', '.join(SETTINGS)}, got {task!r}")
        setting = SETTINGS[task]
        self.task = task
        self.alpha = float(setting.alpha if alpha is None else alpha)
        self.mask_ratio = float(setting.mask_ratio if mask_ratio is None else mask_ratio)
        self.mask = setting.mask if mask is None else mask
        if not (self.alpha >= 0 and np.isfinite(self.alpha)):
            raise ValueError(f"masked_generative alpha must be a number >= 0, got {alpha}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"masked_generative mask_ratio must be in [0, 1), got {mask_ratio}")
        if self.mask not in ("spatial", "channel"):
            raise ValueError(f"masked_generative mask must be 'spatial' or 'channel', got {mask!r}")
        super().__init__(t_net, s_net, **kwargs)
        self.preReLU = not bool(relu)  # the base's capture applies a ReLU when False
        self.t_channels, self.s_channels = self._stage_channels(teacher_channels, student_channels, example_input)
        n = len(self.t_channels)
        self._select_stages(n, list(range(n - 1)) if ignore_inds is None else ignore_inds)
        self.align = nn.ModuleList([
            nn.Conv2d(s, t, kernel_size=1) if i in self.stages and s != t else nn.Identity()
            for i, (s, t) in enumerate(zip(self.s_channels, self.t_channels))])
        self.generation = nn.ModuleList([
            nn.Sequential(nn.Conv2d(t, t, kernel_size=3, padding=1), nn.ReLU(),
                          nn.Conv2d(t, t, kernel_size=3, padding=1)) if i in self.stages else nn.Identity()
            for i, t in enumerate(self.t_channels)])
        if mask_seed is None:  # from the global generator: the applications seed it with --seed
            mask_seed = int(torch.randint(0, 2 ** 62, ()).item())
        self.register_buffer("mask_seed", torch.tensor(int(mask_seed), dtype=torch.int64))
        self.register_buffer("mask_step", torch.zeros((), dtype=torch.int64))
        self._mask_seed, self._mask_step = int(mask_seed), 0
        self.register_load_state_dict_post_hook(_sync_mask_state)

    def mask_generator(self, step: int, stream: int = 0) -> torch.Generator:
        """The CPU generator of the masks of training step ``step`` (``stream`` 1: evaluation's) on this process:
        seeded by (mask_seed, step, stream, rank), well mixed (numpy's SeedSequence)."""
        entropy = [self._mask_seed, int(step), int(stream), mdist.get_rank()]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) % (2 ** 63)
        return torch.Generator().manual_seed(seed)

    def _next_generator(self) -> torch.Generator:
        if not self.training:
            return self.mask_generator(0, _EVAL_STREAM)
        generator = self.mask_generator(self._mask_step)
        self._mask_step += 1
        self.mask_step.fill_(self._mask_step)
        return generator

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        generator = self._next_generator()
        total: Optional[torch.Tensor] = None
        for i in self.stages:
            student, teacher = match_spatial(s_feats[i].float(), t_feats[i].float())
            mask = random_mask(teacher.shape, self.mask_ratio, self.mask, generator)
            term = masked_generative_loss(self.align[i](student), teacher, mask, self.generation[i], self.alpha)
            total = term if total is None else total + term
        return {"masked_generative": total}

    def stage_masks(self, shapes: Sequence[Sequence[int]], step: int, stream: int = 0) -> List[torch.Tensor]:
        """The masks that training step ``step`` draws for teacher features of these (N, C, H, W) ``shapes`` (one
        per distilled stage, in order): what :meth:`losses` multiplies the aligned student features by."""
        generator = self.mask_generator(step, stream)
        return [random_mask(shape, self.mask_ratio, self.mask, generator) for shape in shapes]
