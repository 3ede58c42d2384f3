"""Pure distillation losses (Hinton et al., 2015; FitNets-style feature matching).

Example:
    >>> s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    >>> round(float(kd_loss(s, t, torch.tensor([0]), alpha=1.0, temperature=2.0)), 5)  # CE
    0.31326
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """alpha * CE(targets, student) + (1 - alpha) * T^2 * KL(teacher/T || student/T).

    The T^2 factor keeps the soft term's gradients on the scale of the hard term's as T
    changes (the soft gradients shrink as 1/T^2), so alpha means the same at any T.
    """
    loss = student_logits.new_zeros(())
    if alpha > 0:
        loss = loss + alpha * F.cross_entropy(student_logits, targets)
    if alpha < 1:
        kl = soft_kl(student_logits, teacher_logits, temperature)
        loss = loss + (1 - alpha) * temperature**2 * kl
    return loss


def feature_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (adapted) student and teacher activations."""
    return F.mse_loss(student_feature, teacher_feature.detach())
