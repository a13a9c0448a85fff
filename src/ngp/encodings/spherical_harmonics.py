"""Real spherical harmonics of a direction, tiny-cuda-nn's ``SphericalHarmonics`` encoding."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ngp.config import ConfigError, require_int, with_defaults
from ngp.encodings.base import NESTED_KEYS, Encoding, register_encoding
from ngp.ops.backend import backend_for


def real_spherical_harmonics(directions: torch.Tensor, degree: int) -> torch.Tensor:
    """Orthonormal real spherical harmonics (Condon-Shortley phase) of unit ``directions`` ``[N, 3]``.

    Returns ``[N, degree**2]``; band ``l`` (``l < degree``) occupies columns ``l*l .. l*l + 2l``,
    ordered ``m = -l .. l``, as in tiny-cuda-nn: the first four are
    ``0.2820948, -0.4886025 y, 0.4886025 z, -0.4886025 x``.

    Computed in Cartesian form, ``Y_l^m = sqrt(2) K_l^m Re/Im((x + i y)^|m|) Q_l^|m|(z)``, with the
    polynomial ``Q_l^m = P_l^m / sin^m`` from the standard associated-Legendre recurrence, so any
    degree works without hand-written tables.
    """
    x, y, z = directions.unbind(-1)
    # (x + i y)^m, real and imaginary parts, for m < degree
    re, im = [torch.ones_like(x)], [torch.zeros_like(x)]
    for _ in range(1, degree):
        re.append(re[-1] * x - im[-1] * y)
        im.append(re[-2] * y + im[-1] * x)
    out = [None] * degree**2
    for m in range(degree):
        # Q_m^m = (-1)^m (2m-1)!!, then Q_{l}^m from Q_{l-1}^m and Q_{l-2}^m
        q_prev, q = None, torch.full_like(x, legendre_start(m))
        for l in range(m, degree):
            if l == m + 1:
                q_prev, q = q, z * (2 * m + 1) * q
            elif l > m + 1:
                q_prev, q = q, ((2 * l - 1) * z * q - (l + m - 1) * q_prev) / (l - m)
            scale = band_scale(l, m)
            if m == 0:
                out[l * l + l] = scale * q
            else:
                out[l * l + l + m] = scale * re[m] * q
                out[l * l + l - m] = scale * im[m] * q
    return torch.stack(out, dim=-1)


def legendre_start(m: int) -> int:
    """``Q_m^m = (-1)^m (2m-1)!!``, where the recurrence for order ``m`` starts."""
    return (-1) ** m * _double_factorial(2 * m - 1)


def band_scale(l: int, m: int) -> float:
    """What band ``l``, order ``m >= 0`` is multiplied by: ``K_l^0``, or ``sqrt(2) K_l^m`` for ``m > 0``."""
    k = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))
    return k if m == 0 else math.sqrt(2) * k


def _double_factorial(n: int) -> int:
    return math.prod(range(n, 0, -2)) if n > 0 else 1


@register_encoding("SphericalHarmonics")
class SphericalHarmonics(Encoding):
    """Real spherical harmonics up to ``degree`` bands (1-8): output ``[N, degree**2]``.

    As in tiny-cuda-nn, inputs are directions mapped into ``[0, 1]^3`` (``(d + 1) / 2`` of a unit
    vector ``d``); they are mapped back with ``2 x - 1`` and used as they are (not re-normalised).
    """

    def __init__(self, n_input_dims: int, encoding_config: Mapping[str, Any] | None = None, seed: int | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(n_input_dims, seed=seed, dtype=dtype)
        what = "encoding 'SphericalHarmonics'"
        if n_input_dims != 3:
            raise ConfigError(f"{what} needs 3 input dims (a direction), got {n_input_dims}")
        config = with_defaults(encoding_config or {}, {"degree": 4}, what, NESTED_KEYS)
        self.degree = require_int(config["degree"], "degree", what, 1, 8)
        self.n_output_dims = self.degree**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.dtype == torch.float32 and backend_for(x.device) == "numba" and not (
                torch.is_grad_enabled() and x.requires_grad):
            from ngp.kernels.cpu.spherical_harmonics import spherical_harmonics

            # the same numbers in one pass (NeRF's view directions: 13k per training step 1.5 -> 0.1 ms)
            return self.output(spherical_harmonics(x, self.degree))
        return self.output(real_spherical_harmonics(x * 2.0 - 1.0, self.degree))
