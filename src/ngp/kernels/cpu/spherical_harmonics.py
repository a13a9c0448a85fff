"""Numba kernel of the ``SphericalHarmonics`` encoding's forward (CPU, float32, no gradients).

The definition is :func:`ngp.encodings.spherical_harmonics.real_spherical_harmonics`, ~50 tensor
operations per call (the Legendre recurrence, the powers of ``x + i y``, one product per output); each
is a pass over the directions, so a NeRF step's 13k ray directions took ~0.8-1.6 ms and a rendering
chunk's 2^18 ~15 ms. Here each block of directions makes the same float32 operations in the same order
(float32 constants, no fast-math, so no reassociation or fused multiply-adds): the same numbers bit for
bit (tests compare them).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from ngp.encodings.spherical_harmonics import band_scale, legendre_start

__all__ = ["spherical_harmonics"]

#: Directions per block: the recurrence's rows for a block (degree x BLOCK floats each) stay in L1.
BLOCK = 256


def _constants(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """``q0 [degree]`` (:func:`legendre_start`) and ``scale [degree, degree]`` (:func:`band_scale`, computed
    in double, then rounded to float32 as torch rounds a Python scalar for a float32 tensor)."""
    q0 = np.array([legendre_start(m) for m in range(degree)], dtype=np.float32)
    scale = np.zeros((degree, degree), dtype=np.float32)
    for m in range(degree):
        for l in range(m, degree):
            scale[l, m] = band_scale(l, m)
    return q0, scale


@njit(parallel=True, fastmath=False, cache=True)
def _encode(x, degree, q0, scale, out):
    n = x.shape[0]
    one, two, zero = np.float32(1.0), np.float32(2.0), np.float32(0.0)
    for block in prange((n + BLOCK - 1) // BLOCK):
        lo = block * BLOCK
        w = min(n, lo + BLOCK) - lo
        dx = np.empty(w, np.float32)
        dy = np.empty(w, np.float32)
        dz = np.empty(w, np.float32)
        for j in range(w):  # the encoding's input is (d + 1) / 2
            dx[j] = x[lo + j, 0] * two - one
            dy[j] = x[lo + j, 1] * two - one
            dz[j] = x[lo + j, 2] * two - one
        # (x + i y)^m, real and imaginary parts
        re = np.empty((degree, w), np.float32)
        im = np.empty((degree, w), np.float32)
        for j in range(w):
            re[0, j] = one
            im[0, j] = zero
        for m in range(1, degree):
            for j in range(w):
                re[m, j] = re[m - 1, j] * dx[j] - im[m - 1, j] * dy[j]
                im[m, j] = re[m - 1, j] * dy[j] + im[m - 1, j] * dx[j]
        q = np.empty(w, np.float32)
        q_prev = np.empty(w, np.float32)
        for m in range(degree):
            for j in range(w):
                q[j] = q0[m]
            for l in range(m, degree):
                if l == m + 1:
                    c = np.float32(2 * m + 1)
                    for j in range(w):
                        q_prev[j], q[j] = q[j], dz[j] * c * q[j]
                elif l > m + 1:
                    a, b, d = np.float32(2 * l - 1), np.float32(l + m - 1), np.float32(l - m)
                    for j in range(w):
                        q_prev[j], q[j] = q[j], (a * dz[j] * q[j] - b * q_prev[j]) / d
                s = scale[l, m]
                if m == 0:
                    for j in range(w):
                        out[lo + j, l * l + l] = s * q[j]
                else:
                    for j in range(w):
                        out[lo + j, l * l + l + m] = s * re[m, j] * q[j]
                        out[lo + j, l * l + l - m] = s * im[m, j] * q[j]


_CONSTANTS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def spherical_harmonics(x: torch.Tensor, degree: int) -> torch.Tensor:
    """``real_spherical_harmonics(x * 2 - 1, degree)`` for float32 CPU ``x [N, 3]`` (the encoding's
    input, directions mapped to ``[0, 1]^3``): ``[N, degree**2]`` float32, without gradients."""
    if degree not in _CONSTANTS:
        _CONSTANTS[degree] = _constants(degree)
    out = torch.empty(x.shape[0], degree * degree, dtype=torch.float32)
    if x.shape[0]:
        _encode(x.detach().contiguous().numpy(), degree, *_CONSTANTS[degree], out.numpy())
    return out
