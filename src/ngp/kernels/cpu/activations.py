"""Numba kernel of :func:`ngp.ops.activations.relu_backward` for bfloat16 (CPU), as
:func:`ngp.kernels.reference.activations.relu_backward` defines it (tests compare them).

Numba has no bfloat16, and needs none: the kernel only copies or zeroes each gradient, choosing by the
sign and size of the ReLU's output, which its bits as ``int16`` give exactly: ``output <= 0`` holds for
``+0`` (bits 0) and for the negative numbers from ``-0`` to ``-inf`` (``0x8000..0xFF80``, as ``int16``
at most -128); the negative NaNs (``0xFF81..0xFFFF``, -127..-1) and everything positive pass the gradient.
"""

from __future__ import annotations

import torch
from numba import njit, prange

__all__ = ["relu_backward"]


@njit(parallel=True, cache=True)
def _relu_backward_bits(grad, output, out):
    for i in prange(grad.shape[0]):
        bits = output[i]
        out[i] = 0 if (bits == 0) | (bits <= -128) else grad[i]


def relu_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """The reference's result for contiguous CPU bfloat16 ``grad`` and ``output`` of one shape (checked by
    the caller)."""
    out = torch.empty_like(grad)
    _relu_backward_bits(*(t.view(torch.int16).view(-1).numpy() for t in (grad, output, out)))
    return out
