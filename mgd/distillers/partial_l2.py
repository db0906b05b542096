"""What OFD and MGD share: stage features compared with OFD's partial L2 above the teacher's margins.

Both distil pre-ReLU stage features (OFD, Heo et al., ICCV 2019, Sec. 3; MGD, Yue et al., ECCV 2020,
Sec. 3.1): the target of stage i is max(T_i, margin_i) with the margins computed from the BatchNorm that
feeds the teacher's ReLU (OFD Eq. 3), the distance is the partial L2 (OFD Eq. 4), stage i of n weighs
1 / 2^(n-i-1) (deeper stages more, as in both papers' code), and the summed loss is divided by the batch
size and a loss factor (1e4 in both codes at 224 px; 1e3 in OFD's CIFAR code). The two differ only in how
the student's feature reaches the teacher's width: OFD learns a connector, MGD matches and reduces.
This module holds what they share, once: the margin buffers that follow the teacher's weights, the
stage weights and the normalisation.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Dict, Iterable, List, Literal, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..calibration import DEFAULT_CALIBRATION_IMAGES, DEFAULT_LOSS_RATIO, Measure, TaskLoss, calibrate_loss_factor
from ..features import unwrap
from ..losses.ofd import NO_MARGIN, margin_from_bn
from .base import Distiller, Track

__all__ = ["PartialL2Distiller", "LossFactor", "halving_stage_weights"]

#: A loss factor: a number, or "auto" (measured by ``prepare``, :func:`mgd.calibrate_loss_factor`).
LossFactor = Union[float, Literal["auto"]]


def halving_stage_weights(num_stages: int) -> List[float]:
    """1 / 2^(n-i-1) for stage i of n: the last stage weighs 1, each earlier one half the next."""
    return [1.0 / 2 ** (num_stages - i - 1) for i in range(num_stages)]


def _sync_loss_factor(module: "PartialL2Distiller", keys) -> None:
    """After a state dict is loaded: a calibrated factor is used, not measured again."""
    value = float(module.calibrated_loss_factor)
    module.loss_factor = value if value > 0 else math.nan


def _recompute_margins(distiller_ref: "weakref.ReferenceType", module: nn.Module, keys) -> None:
    distiller = distiller_ref()
    if distiller is not None:
        distiller.init_margins()


class PartialL2Distiller(Distiller):
    """Base of OFD and MGD: stage channels, margins (buffers ``margin1..n``), stage weights, normalisation.

    Args (beyond :class:`~mgd.distillers.base.Distiller`'s):
        ignore_inds: stages not distilled (None: the student family's default, see ``_select_stages``).
        loss_factor: the summed loss is divided by the batch size and this factor (``normalise``); "auto":
            measured by :meth:`prepare` so that the distillation term starts at ``loss_ratio`` times the
            cross-entropy, on ``calibration_images`` images (:func:`mgd.calibrate_loss_factor`), then kept
            in the state dict (a resumed run does not measure it again).
        loss_ratio: with ``loss_factor`` "auto", the distillation term's start as a multiple of the task loss.
        calibration_task_loss: ``fn(student output, target)``, the task loss of that measurement where it is
            not the cross-entropy (e.g. a segmentation's per-pixel loss, MoCo's InfoNCE).
        stage_weights: per-stage weights (default :func:`halving_stage_weights`).
        teacher_channels, student_channels, example_input: where channel counts cannot be read off the
            named modules (see :meth:`~mgd.distillers.base.Distiller._stage_channels`).
    """

    cli_options = ("loss_factor", "loss_ratio")
    dense_outputs = True  # the partial L2 works on any (N, C, H, W) stage feature
    #: The loss terms divided by the loss factor (what :func:`mgd.calibrate_loss_factor` measures).
    factor_terms: Tuple[str, ...] = ()
    prepare_name = "loss_factor"

    def __init__(self, t_net: nn.Module, s_net: nn.Module, *, ignore_inds: Optional[Sequence[int]] = None,
                 loss_factor: LossFactor = 1e4, loss_ratio: float = DEFAULT_LOSS_RATIO,
                 calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                 calibration_task_loss: Optional[TaskLoss] = None,
                 stage_weights: Optional[Sequence[float]] = None,
                 teacher_channels: Optional[Sequence[int]] = None,
                 student_channels: Optional[Sequence[int]] = None,
                 example_input: Optional[torch.Tensor] = None, **kwargs) -> None:
        super().__init__(t_net, s_net, **kwargs)
        self.auto_loss_factor = loss_factor == "auto"
        if self.auto_loss_factor:
            if not (isinstance(loss_ratio, (int, float)) and math.isfinite(loss_ratio) and loss_ratio > 0):
                raise ValueError(f"loss_ratio must be a positive number, got {loss_ratio!r}")
            # 0 until calibrated; in the state dict, so that a resumed run keeps its factor
            self.register_buffer("calibrated_loss_factor", torch.zeros((), dtype=torch.float64))
            self.register_load_state_dict_post_hook(_sync_loss_factor)
            self.loss_factor = math.nan
        elif not (isinstance(loss_factor, (int, float)) and math.isfinite(loss_factor) and loss_factor > 0):
            raise ValueError(f"loss_factor must be a positive number or 'auto', got {loss_factor!r}")
        else:
            self.loss_factor = float(loss_factor)
        self.loss_ratio, self.calibration_images = float(loss_ratio), int(calibration_images)
        self.calibration_task_loss = calibration_task_loss
        self.t_channels, self.s_channels = self._stage_channels(teacher_channels, student_channels, example_input)
        n = len(self.t_channels)
        self._select_stages(n, ignore_inds)
        weights = list(stage_weights) if stage_weights is not None else self.default_stage_weights(n)
        if len(weights) != n:
            raise ValueError(f"stage_weights has {len(weights)} entries for {n} stages")
        self.stage_weights = [float(w) for w in weights]
        self._margin_bns = self._t_src.bns()
        if len(self._margin_bns) != n:
            raise ValueError(f"the teacher gives {len(self._margin_bns)} margin BNs for {n} stages")
        for i in range(n):
            self.register_buffer(f"margin{i + 1}", torch.zeros(self.t_channels[i]))
        self.init_margins()
        # Margins follow the teacher's weights: loading a teacher checkpoint recomputes them. (A weak
        # reference: the hook must not keep a dropped distiller alive; close() removes it.)
        self._margin_hook = unwrap(t_net).register_load_state_dict_post_hook(
            lambda module, keys, ref=weakref.ref(self): _recompute_margins(ref, module, keys))

    def default_stage_weights(self, num_stages: int) -> List[float]:
        return halving_stage_weights(num_stages)

    def init_margins(self) -> None:
        """Recompute the margins from the teacher's current BN weights (call after changing them by hand;
        ``load_state_dict`` on the teacher or the distiller does it automatically)."""
        for i, bn in enumerate(self._margin_bns):
            if bn is None:  # a linear stage: the target is the teacher itself
                getattr(self, f"margin{i + 1}").fill_(NO_MARGIN)
                continue
            margin = margin_from_bn(bn)
            if margin.numel() != self.t_channels[i]:
                raise ValueError(f"stage {i}: margin BN has {margin.numel()} channels, the feature "
                                 f"{self.t_channels[i]}")
            getattr(self, f"margin{i + 1}").copy_(margin)

    @property
    def margins(self) -> List[torch.Tensor]:
        return [getattr(self, f"margin{i + 1}") for i in range(len(self.t_channels))]

    def normalise(self, total: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The summed stage loss per image and divided by the loss factor: the term added to the task loss."""
        if math.isnan(self.loss_factor):  # "auto", not calibrated yet
            raise RuntimeError("loss_factor='auto' is not calibrated yet: call prepare(loader) before training")
        return total / batch_size / self.loss_factor

    # ------------------------------------------------------------------------------------------ loss factor
    @property
    def needs_calibration(self) -> bool:
        """True while ``loss_factor='auto'`` has not been measured (nor loaded from a checkpoint)."""
        return self.auto_loss_factor and math.isnan(self.loss_factor)

    def set_loss_factor(self, factor: float) -> None:
        """Use ``factor`` from now on (kept in the state dict with ``loss_factor='auto'``)."""
        self.loss_factor = float(factor)
        if self.auto_loss_factor:
            self.calibrated_loss_factor.fill_(self.loss_factor)

    def calibrate(self, loader: Iterable, measure: Optional[Measure] = None) -> None:
        """Measure and set the loss factor (:func:`mgd.calibrate_loss_factor` with ``calibration_task_loss``,
        cross-entropy by default, or the application's ``measure``; ``loss_ratio`` and ``calibration_images``);
        ``loader`` must be iterable again (a DataLoader)."""
        task = {} if self.calibration_task_loss is None else {"task_loss": self.calibration_task_loss}
        self.set_loss_factor(calibrate_loss_factor(self, loader, ratio=self.loss_ratio,
                                                   max_images=self.calibration_images, measure=measure, **task))

    def prepare_due(self, epoch: int) -> bool:
        return self.needs_calibration

    def prepare(self, loader: Iterable, epoch: Optional[int] = None, *, track: Optional[Track] = None,
                measure: Optional[Measure] = None) -> None:
        if self.needs_calibration:
            self.calibrate(loader, measure)

    def prepared_state(self) -> List[torch.Tensor]:
        return [self.calibrated_loss_factor] if self.auto_loss_factor else []

    def prepare_summary(self) -> Dict[str, Any]:
        return {"loss_factor": self.loss_factor} if self.auto_loss_factor else {}

    def close(self) -> None:
        super().close()
        hook = self.__dict__.get("_margin_hook")
        if hook is not None:
            hook.remove()
            self._margin_hook = None
