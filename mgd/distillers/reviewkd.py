"""ReviewKD (Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge Review") behind the one contract.

The student's stage features (pre-activation, as the authors' ``preact=True``) and its pooled embedding
(a 1x1 map) are reviewed from the deepest up: an attention-based fusion (ABF) module per position maps the
student feature to a middle width, fuses it with the upsampled residual of the deeper position through a
2-channel sigmoid attention, and maps it to the teacher's width (Sec. 3.2, Fig. 3); the hierarchical context
loss (:func:`mgd.losses.hcl_loss`) compares each output with the teacher's feature at that position.
Loss: CE + min(epoch / warmup, 1) * weight * HCL, epochs counted from 0 as the authors' CIFAR-100
``train.py`` (and KD++'s ReviewKD++; mdistiller counts from 1), with their weight 5 and 20-epoch warm-up
(ImageNet, mdistiller's configs: weight 1 for ResNet-34 -> ResNet-18, 8 for ResNet-50 -> MobileNet-V1, whose
middle width they set to 256, and no ramp). ``nd_weight`` > 0 adds KD++'s ND term on the embeddings: ReviewKD++.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..features import StageSpec, builtin_stages, embedding_layer, embedding_spec
from ..features.discovery import default_positions
from ..losses import hcl_loss
from ..registry import register_distiller
from .base import Distiller, Layers
from .logits import linear_warmup
from .nd_term import NDTerm

__all__ = ["ABF", "ReviewKDDistiller", "review_positions"]

#: What the ABFs' widths are read from when the positions do not say: one small forward.
_EXAMPLE_INPUT = (2, 3, 64, 64)


class ABF(nn.Module):
    """Attention-based fusion: 1x1 conv + BN to ``mid``; with ``fuse``, the deeper residual upsampled
    (nearest) and mixed with the feature by a 2-channel sigmoid attention; then 3x3 conv + BN to ``out``.
    Returns (output at the teacher's size, residual for the next, shallower position)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channels * 2, 2, 1), nn.Sigmoid()) if fuse else None
        for conv in (self.conv1[0], self.conv2[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)  # as the authors' code

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor], out_size: Tuple[int, int]):
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=x.shape[-2:], mode="nearest")
            attention = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * attention[:, :1] + residual * attention[:, 1:]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def review_positions(t_net: nn.Module, s_net: nn.Module, teacher_layers: Layers, student_layers: Layers,
                     teacher_embedding: Optional[str], student_embedding: Optional[str]
                     ) -> Tuple[List[StageSpec], List[StageSpec]]:
    """The stage positions (given, discovered or built in) followed by each network's embedding. A side not
    given takes the pair's discovered positions, else its built-in ones (a student whose model names its
    stages, such as cls/'s MobileNet-V1, beside a torchvision teacher)."""
    if teacher_layers is None or student_layers is None:
        found = default_positions(t_net, s_net, wider_teacher=False) if teacher_layers is None and \
            student_layers is None else None
        if teacher_layers is None:
            teacher_layers = found[0] if found is not None else builtin_stages(t_net)
        if student_layers is None:
            student_layers = found[1] if found is not None else builtin_stages(s_net)
    if teacher_layers is None or student_layers is None:
        raise ValueError("reviewkd needs stage features the pair does not have (no stage positions found); give "
                         "teacher_layers and student_layers")
    def specs(layers: Sequence) -> List[StageSpec]:
        return [s if isinstance(s, StageSpec) else StageSpec(str(s)) for s in layers]
    return (specs(teacher_layers) + [embedding_spec(t_net, teacher_embedding)],
            specs(student_layers) + [embedding_spec(s_net, student_embedding)])


@register_distiller("reviewkd")
class ReviewKDDistiller(NDTerm, Distiller):
    """ReviewKD (and ReviewKD++ with ``nd_weight`` > 0). ``mid_channels``: the ABFs' middle width (default
    mdistiller's min(512, the student's widest position)); ``example_input``: a batch to read the positions'
    widths from when the layers do not say (default a 2x3x64x64 zero batch).

    Args:
        weight: weight of the HCL term (5, CIFAR; ImageNet ResNet-34 -> ResNet-18: 1, ResNet-50 -> MobileNet-V1: 8).
        warmup_epochs: epochs over which the term ramps in linearly, counted from epoch 0 as the authors' code
            (20, CIFAR; ImageNet 0: mdistiller's WARMUP_EPOCHS 1, counted from epoch 1, is no ramp).
        mid_channels: the ABFs' middle width (None: min(512, the student's widest position); 256 for ResNet-50
            -> MobileNet-V1).
        nd_weight: > 0 adds KD++'s ND loss on the penultimate embeddings with this weight (ReviewKD++).
        student_preact: 1 reviews the student's pre-ReLU stage features (mdistiller's ImageNet configs,
            STU_PREACT True); 0 their ReLU, as the authors' CIFAR code and mdistiller's CIFAR configs do.
    """

    cli_options = ("weight", "warmup_epochs", "mid_channels", "nd_weight", "student_preact")
    needs_full_batches = True  # the deepest ABF's BatchNorm sees 1x1 maps: a batch of one cannot train it

    def __init__(self, t_net: nn.Module, s_net: nn.Module, weight: float = 5.0, warmup_epochs: float = 20,
                 mid_channels: Optional[int] = None, nd_weight: float = 0.0, num_classes: Optional[int] = None,
                 teacher_layers: Layers = None, student_layers: Layers = None,
                 teacher_embedding: Optional[str] = None, student_embedding: Optional[str] = None,
                 example_input: Optional[torch.Tensor] = None, student_preact: bool = True, **kwargs) -> None:
        self.student_preact = bool(student_preact)
        teacher_layers, student_layers = review_positions(t_net, s_net, teacher_layers, student_layers,
                                                          teacher_embedding, student_embedding)
        super().__init__(t_net, s_net, teacher_layers=teacher_layers, student_layers=student_layers, **kwargs)
        self.weight, self.warmup_epochs = float(weight), float(warmup_epochs)
        if example_input is None:
            example_input = torch.zeros(_EXAMPLE_INPUT, device=next(iter(s_net.parameters())).device)
        t_ch, s_ch = self._stage_channels(example_input=example_input)
        mid = int(mid_channels or min(512, s_ch[-1]))
        deepest_first = list(zip(s_ch, t_ch))[::-1]
        self.abfs = nn.ModuleList([ABF(s, mid, t, fuse=i > 0) for i, (s, t) in enumerate(deepest_first)])
        self._init_nd(nd_weight, embedding_layer(t_net, teacher_embedding), embedding_layer(s_net, student_embedding),
                      num_classes)

    @staticmethod
    def _as_map(feature: torch.Tensor) -> torch.Tensor:
        return feature[:, :, None, None] if feature.dim() == 2 else feature

    def review(self, s_feats: Sequence[torch.Tensor], t_feats: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The ABF outputs, shallowest first, each at its teacher feature's size."""
        outputs, residual = [], None
        if not self.student_preact:  # the stages' post-ReLU outputs (the embedding is one already)
            s_feats = [torch.relu(s) for s in s_feats[:-1]] + [s_feats[-1]]
        for abf, s, t in zip(self.abfs, reversed(s_feats), reversed(t_feats)):
            out, residual = abf(self._as_map(s).float(), residual, self._as_map(t).shape[-2:])
            outputs.insert(0, out)
        return outputs

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        teacher = [self._as_map(t) for t in t_feats]
        # mdistiller counts the epochs from 1; KD++'s ReviewKD++/train_reviewkd.py from 0
        ramp = linear_warmup(self.epoch, self.warmup_epochs, one_based=False)  # the authors' and KD++'s count
        out = {"reviewkd": ramp * self.weight * hcl_loss(self.review(s_feats, t_feats), teacher)}
        if self.nd_weight > 0:
            out["nd"] = self.nd_term(s_feats[-1], t_feats[-1], target)
        return out
