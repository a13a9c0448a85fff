"""Plain-PyTorch definition of one Adam step as tiny-cuda-nn takes it.

Three details differ from ``torch.optim.Adam``:

* ``l2_reg`` adds ``l2_reg * param`` to the gradient (classic L2, not decoupled decay); the caller
  sets it to zero for hash tables, which the paper never regularises.
* with ``param_steps`` (an int32 counter per entry, used for hash tables), entries whose gradient is
  exactly zero are left alone, moments included — a table row no sample touched is not moved by
  stale momentum — and each entry's bias correction uses its own step count, since rows see
  different numbers of updates.
* otherwise every entry shares the global ``step`` (>= 1) for bias correction.
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
    param_steps: torch.Tensor | None = None,
) -> None:
    """Update ``param``, ``exp_avg``, ``exp_avg_sq`` (and ``param_steps``) in place; same shapes."""
    g = grad + l2_reg * param if l2_reg else grad
    new_avg = beta1 * exp_avg + (1 - beta1) * g
    new_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
    if param_steps is None:
        step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        param.sub_(step_size * new_avg / (new_avg_sq.sqrt() + eps))
        exp_avg.copy_(new_avg)
        exp_avg_sq.copy_(new_avg_sq)
        return
    touched = grad != 0
    steps = (param_steps + 1).to(torch.float64)
    step_size = lr * torch.sqrt(1 - beta2**steps) / (1 - beta1**steps)
    new_param = param - step_size.to(param.dtype) * new_avg / (new_avg_sq.sqrt() + eps)
    param.copy_(torch.where(touched, new_param, param))
    exp_avg.copy_(torch.where(touched, new_avg, exp_avg))
    exp_avg_sq.copy_(torch.where(touched, new_avg_sq, exp_avg_sq))
    param_steps.add_(touched.to(param_steps.dtype))
