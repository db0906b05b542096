"""The ND loss of KD++ (Wang et al., ICCV 2023, "Improving Knowledge Distillation via Regularizing
Feature Norm and Direction")."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .precision import float32_loss

__all__ = ["nd_loss"]


@float32_loss
def nd_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, class_means: torch.Tensor,
            labels: torch.Tensor) -> torch.Tensor:
    """mean_i [ 1 - <e_s_i, c_{y_i}/||c_{y_i}||> / max(||e_s_i||, ||e_t_i||) ].

    The student's penultimate embedding e_s is pushed along the direction of the teacher's class-mean
    embedding c_y (computed once over the training set) and toward a projection at least as long as the
    larger of the two embeddings' norms (Sec. 3 of the paper).
    """
    if student_emb.shape != teacher_emb.shape:
        raise ValueError(f"embeddings differ in shape: {tuple(student_emb.shape)} vs {tuple(teacher_emb.shape)}")
    student_emb, teacher_emb = student_emb.float(), teacher_emb.float()  # float32 whatever the autocast dtype
    direction = F.normalize(class_means[labels].float(), dim=1)
    projection = (student_emb * direction).sum(1)
    longest = torch.maximum(student_emb.norm(dim=1), teacher_emb.norm(dim=1)).clamp_min(1e-12)
    return (1.0 - projection / longest).mean()
