"""Plain-PyTorch definition of :func:`ngp.ops.activations.relu_backward` (the specification its kernels match)."""

from __future__ import annotations

import torch


def relu_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """``grad`` where ``output > 0``, else 0 (also where ``output`` is NaN: ``output <= 0`` is false there),
    as autograd's backward of ``relu`` computes it from the ReLU's output."""
    return torch.ops.aten.threshold_backward(grad, output, 0)
