"""``cwd``: channel-wise distillation (Shu et al., ICCV 2021, "Channel-wise Knowledge Distillation for Dense
Prediction"): each channel's map as a distribution over its positions (a spatial softmax at temperature tau), the
student's pulled to the teacher's by KL(teacher || student), on the output logit maps of a segmenter (the authors'
segmentation setting) or on stage features through 1x1 connectors (their detection setting; here also
classification)."""
from __future__ import annotations

import logging
from typing import Any, List, Literal, Optional, Sequence

import torch
from torch import nn

from ..features import unwrap
from ..losses.cwd import cwd_loss
from ..registry import register_distiller
from .base import Distiller

__all__ = ["CWDistiller", "CWD_SETTINGS", "dense_output_channels"]

logger = logging.getLogger("mgd")

#: maps -> (tau, weight): the authors' settings. Logit maps: TorchDistiller ``SemSeg-distill/README.md``
#: (``bash exp_cwd.sh channel kl 3 4``: weight 3, temperature 4, PSPNet R-101 -> R-18 on Cityscapes); feature maps:
#: pppppM/mmdetection-distiller ``configs/distillers/cwd/cwd_retina_rx101_64x4d_distill_retina_r50_fpn_2x_coco.py``
#: (tau 1, weight 5 on each FPN level). mmrazor: tau 1, weight 5 on the logits (PSPNet), 10 on each FPN level
#: (RetinaNet, Faster R-CNN R-101 -> R-50).
CWD_SETTINGS = {"logits": (4.0, 3.0), "features": (1.0, 5.0)}
#: The input of the probe forward that tells a segmenter (a dense output map) from a classifier or a backbone.
_PROBE_SIZE = 64


def dense_output_channels(net: nn.Module) -> Optional[int]:
    """The channel count of ``net``'s output when it is one (N, C, H, W) tensor (a segmenter's logit map), from one
    eval-mode forward of a small zero batch without gradients; None when it is anything else (a classifier's
    (N, C) logits, a backbone's dict of features) or the forward fails. Every module's mode is restored."""
    model = unwrap(net)
    params = next(iter(model.parameters()), None)
    if params is None:
        return None
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 3
    probe = torch.zeros(2, channels, _PROBE_SIZE, _PROBE_SIZE, device=params.device, dtype=params.dtype)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            out = model(probe)
    except (RuntimeError, AssertionError, ValueError, TypeError):  # e.g. a model made for larger images
        return None
    finally:
        for m, mode in modes.items():
            m.training = mode
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 4 else None


def _connector(student_channels: int, teacher_channels: int) -> nn.Module:
    """The authors' detection code's align layer: a 1x1 convolution (with bias) where the widths differ, else none."""
    if student_channels == teacher_channels:
        return nn.Identity()
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)


@register_distiller("cwd")
class CWDistiller(Distiller):
    """CWD: CE + weight * sum over the distilled maps of tau^2 / (N C) sum_{n,c} KL(phi(T_nc / tau) || phi(S_nc /
    tau)) (:func:`mgd.losses.cwd_loss`; the paper's Sec. 3.2, normalised by channels and images as the authors'
    code), phi the softmax over a channel's H * W positions.

    What is distilled (``maps``): a segmenter's output logit maps, as the authors' segmentation code (the classifier
    conv's output, ``decode_head.conv_seg`` in mmrazor; here the models' output, which seg/ gives at the input
    resolution), or the stage features at the distiller's positions, each through a 1x1 convolution to the
    teacher's width where the widths differ (the authors' detection code, ``align``), the levels summed with equal
    weight. ``"auto"`` (default) tells them apart by one probe forward of the student: a dense (N, C, H, W) output
    is a segmenter's (logit maps), anything else (a classifier's logits, a detector backbone's features) means the
    stage features. ``tau`` and ``weight`` default to the authors' setting of what is distilled
    (:data:`CWD_SETTINGS`): tau 4, weight 3 on logit maps (segmentation, TorchDistiller ``SemSeg-distill``); tau
    1, weight 5 on feature maps (detection, the authors' RetinaNet config); mmrazor's are tau 1 and weight 5
    (segmentation) or 10 per FPN level (detection).

    Args:
        maps: what is distilled: "logits" (the output maps), "features" (the stage features, 1x1 connectors where
            widths differ) or "auto" (logits when the student's output is a dense map, as a segmenter's, else
            features).
        tau: the softmax temperature (None: the authors' setting of the maps, 4 on logits, 1 on features).
        weight: the weight of the summed term (None: the authors' setting of the maps, 3 on logits, 5 on features;
            mmrazor: 5 on logits, 10 per FPN level).
    """

    cli_options = ("maps", "tau", "weight")
    dense_outputs = True  # a segmenter's logit maps, or any stage features

    def __init__(self, t_net: nn.Module, s_net: nn.Module, maps: Literal["auto", "logits", "features"] = "auto",
                 tau: Optional[float] = None, weight: Optional[float] = None,
                 ignore_inds: Optional[List[int]] = None, teacher_channels: Optional[Sequence[int]] = None,
                 student_channels: Optional[Sequence[int]] = None, example_input: Optional[torch.Tensor] = None,
                 **kwargs: Any) -> None:
        if maps not in ("auto", "logits", "features"):
            raise ValueError(f"cwd maps must be 'auto', 'logits' or 'features', got {maps!r}")
        out_channels = None
        if maps != "features":
            out_channels = dense_output_channels(s_net)
            if out_channels is None and maps == "logits":
                raise ValueError("cwd maps='logits' needs a student whose output is one (N, C, H, W) map (a "
                                 "segmenter's); this one's is not: use maps='features'")
        self.maps = "logits" if out_channels is not None else "features"
        self.needs_features = self.maps == "features"  # the logit maps need no stage features (nor hooks)
        super().__init__(t_net, s_net, **kwargs)
        default_tau, default_weight = CWD_SETTINGS[self.maps]
        self.tau = float(default_tau if tau is None else tau)
        self.weight = float(default_weight if weight is None else weight)
        if not self.tau > 0:
            raise ValueError(f"cwd tau must be positive, got {tau}")
        if not self.weight >= 0:
            raise ValueError(f"cwd weight must be >= 0, got {weight}")
        if self.maps == "logits":
            t_out = dense_output_channels(t_net)
            if t_out is None:
                raise ValueError("cwd on logit maps: the student's output is a dense map but the teacher's is not")
            self.connectors = nn.ModuleList([_connector(out_channels, t_out)])
            logger.info("cwd: distilling the output logit maps (%d channels), tau %g, weight %g", out_channels,
                        self.tau, self.weight)
            return
        if example_input is None and (teacher_channels is None or student_channels is None):
            example_input = torch.zeros(2, 3, _PROBE_SIZE, _PROBE_SIZE, device=next(iter(s_net.parameters())).device)
        self.t_channels, self.s_channels = self._stage_channels(teacher_channels, student_channels, example_input)
        self._select_stages(len(self.t_channels), ignore_inds)
        # none (an Identity) for an ignored stage: no unused parameters
        self.connectors = nn.ModuleList([
            _connector(s, t) if i in self.stages else nn.Identity()
            for i, (s, t) in enumerate(zip(self.s_channels, self.t_channels))])

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        if self.maps == "logits":
            return {"cwd": self.weight * cwd_loss(self.connectors[0](s_out.float()), t_out, self.tau)}
        total = sum(cwd_loss(self.connectors[i](s_feats[i].float()), t_feats[i], self.tau) for i in self.stages)
        return {"cwd": self.weight * total}
