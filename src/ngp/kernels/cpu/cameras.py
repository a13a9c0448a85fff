"""Numba kernel of :func:`ngp.geometry.cameras.undistort` for float32 (CPU), the same numbers as
:func:`ngp.kernels.reference.cameras.undistort` (tests compare them bit for bit).

The reference is ~40 tensor operations per Newton iteration: on a fox training step's ~1,300 rays,
ten iterations cost ~2 ms of operation overhead, and a 540x960 frame's rays ~0.15 s. Here each ray
iterates in registers. Every operation is the reference's, in its order and in float32 (constants as
float32, no fast-math: nothing reassociated or fused), so each rounding is the same.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

__all__ = ["undistort"]

_ONE, _TWO, _SIX = np.float32(1.0), np.float32(2.0), np.float32(6.0)
_TINY = np.float32(1e-12)  # the reference's ``det.abs() < 1e-12`` compares in float32


@njit(parallel=True, fastmath=False, cache=True)
def _undistort(xd, yd, k1s, k2s, p1s, p2s, iterations, x_out, y_out):
    stride = 1 if k1s.shape[0] > 1 else 0  # per-ray coefficients, or one set for all
    for r in prange(xd.shape[0]):
        c = r * stride
        k1, k2, p1, p2 = k1s[c], k2s[c], p1s[c], p2s[c]
        x0, y0 = xd[r], yd[r]
        x, y = x0, y0
        for _ in range(iterations):
            r2 = x * x + y * y
            radial = _ONE + r2 * (k1 + r2 * k2)
            d_radial = k1 + _TWO * k2 * r2
            fx_ = x * radial + _TWO * p1 * x * y + p2 * (r2 + _TWO * x * x) - x0
            fy_ = y * radial + p1 * (r2 + _TWO * y * y) + _TWO * p2 * x * y - y0
            fx_x = radial + _TWO * x * x * d_radial + _TWO * p1 * y + _SIX * p2 * x
            fx_y = _TWO * x * y * d_radial + _TWO * p1 * x + _TWO * p2 * y
            fy_x = _TWO * x * y * d_radial + _TWO * p1 * x + _TWO * p2 * y
            fy_y = radial + _TWO * y * y * d_radial + _SIX * p1 * y + _TWO * p2 * x
            det = fx_x * fy_y - fx_y * fy_x
            if abs(det) < _TINY:
                det = _ONE
            x, y = x - (fx_ * fy_y - fy_ * fx_y) / det, y - (fy_ * fx_x - fx_ * fy_x) / det
        x_out[r], y_out[r] = x, y


def undistort(xd: torch.Tensor, yd: torch.Tensor, coefficients: list[torch.Tensor],
              iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's result for contiguous float32 CPU ``xd``, ``yd [R]`` and ``coefficients`` (k1, k2,
    p1, p2) each float32 ``[R]`` or ``[1]`` (checked by the caller)."""
    x, y = torch.empty_like(xd), torch.empty_like(yd)
    _undistort(xd.numpy(), yd.numpy(), *(c.numpy() for c in coefficients), int(iterations), x.numpy(), y.numpy())
    return x, y
