"""Plain-PyTorch definition of one Adam step as tiny-cuda-nn takes it.

Two details differ from ``torch.optim.Adam``:

* ``l2_reg`` adds ``l2_reg * param`` to the gradient (classic L2, not decoupled decay); the caller
  sets it to zero for hash tables, which the paper never regularises.
* with ``skip_zero_grads`` (used for hash tables), entries whose gradient is exactly zero are left
  alone, moments included: a table row no sample touched this step is not moved by stale momentum.
"""

from __future__ import annotations

import math

import torch


def adam_step_(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    l2_reg: float,
    skip_zero_grads: bool,
) -> None:
    """Update ``param``, ``exp_avg`` and ``exp_avg_sq`` in place (all the same shape). ``step`` >= 1."""
    touched = grad != 0 if skip_zero_grads else None
    g = grad + l2_reg * param if l2_reg else grad
    new_avg = beta1 * exp_avg + (1 - beta1) * g
    new_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
    new_param = param - step_size * new_avg / (new_avg_sq.sqrt() + eps)
    if touched is not None:
        new_avg = torch.where(touched, new_avg, exp_avg)
        new_avg_sq = torch.where(touched, new_avg_sq, exp_avg_sq)
        new_param = torch.where(touched, new_param, param)
    exp_avg.copy_(new_avg)
    exp_avg_sq.copy_(new_avg_sq)
    param.copy_(new_param)
