"""tiny-cuda-nn's ``OneBlob`` and ``TriangleWave`` encodings (fixed, no parameters; plain PyTorch).

``OneBlob`` (Müller et al. 2019, "Neural Importance Sampling"): each input dimension ``x`` in
``[0, 1]`` becomes ``n_bins`` values, the mass that a kernel centred at ``x`` puts into each of the
equal bins ``[k / n, (k + 1) / n)``. As tiny-cuda-nn, the kernel is the quartic (biweight)
``15/16 (1 - u^2)^2`` of radius one bin width instead of a Gaussian, and the domain wraps around
(the kernel is also evaluated at ``x - 1`` and ``x + 1``).

``TriangleWave`` (Müller et al. 2021, "Real-time Neural Radiance Caching"): like ``Frequency`` but
with a triangle wave instead of sine and cosine, one output per frequency.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ngp.config import ConfigError, require_int, with_defaults
from ngp.encodings.base import NESTED_KEYS, Encoding, register_encoding


def quartic_cdf(x: torch.Tensor, inv_radius: float) -> torch.Tensor:
    """CDF of the quartic kernel of radius ``1 / inv_radius`` at ``x`` (0 below, 1 above the support)."""
    u = x * inv_radius
    u2 = u * u
    return (15.0 / 16.0 * u * (1.0 - 2.0 / 3.0 * u2 + 0.2 * u2 * u2) + 0.5).clamp(0.0, 1.0)


@register_encoding("OneBlob")
class OneBlob(Encoding):
    """``[N, d] -> [N, d * n_bins]``, dimension-major (dim 0's bins first); ``n_bins`` a power of two.

    Example:
        >>> enc = Encoding(1, {"otype": "OneBlob", "n_bins": 4})
        >>> enc(torch.tensor([[0.375]])).sum().item()   # a kernel's bins add up to one
        1.0
    """

    def __init__(self, n_input_dims: int, encoding_config: Mapping[str, Any] | None = None, seed: int | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(n_input_dims, seed=seed, dtype=dtype)
        what = "encoding 'OneBlob'"
        config = with_defaults(encoding_config or {}, {"n_bins": 16}, what, NESTED_KEYS)
        self.n_bins = require_int(config["n_bins"], "n_bins", what, 1, 4096)
        if self.n_bins & (self.n_bins - 1):
            raise ConfigError(f"{what}: n_bins={self.n_bins} must be a power of two (as in tiny-cuda-nn)")
        self.n_output_dims = n_input_dims * self.n_bins
        self.register_buffer("boundaries", torch.arange(self.n_bins + 1, dtype=torch.float64) / self.n_bins,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        offsets = self.boundaries.to(x.dtype)[None, None, :] - x[:, :, None]  # [N, d, n_bins + 1]
        cdf = sum(quartic_cdf(offsets + shift, float(self.n_bins)) for shift in (-1.0, 0.0, 1.0))
        return self.output((cdf[:, :, 1:] - cdf[:, :, :-1]).reshape(x.shape[0], -1))


@register_encoding("TriangleWave")
class TriangleWave(Encoding):
    """``x -> tri(2^(k-1) x + k / 4)`` for ``k < n_frequencies``, ``tri(v) = 4 |frac(v) - 1/2| - 1``.

    Output ``[N, d * n_frequencies]``, dimension-major. The ``k / 4`` phase shift (tiny-cuda-nn's)
    keeps the frequencies from sharing their zeros.

    Example:
        >>> Encoding(1, {"otype": "TriangleWave", "n_frequencies": 2})(torch.tensor([[0.0]]))
        tensor([[1., 0.]])
    """

    def __init__(self, n_input_dims: int, encoding_config: Mapping[str, Any] | None = None, seed: int | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(n_input_dims, seed=seed, dtype=dtype)
        what = "encoding 'TriangleWave'"
        config = with_defaults(encoding_config or {}, {"n_frequencies": 12}, what, NESTED_KEYS)
        self.n_frequencies = require_int(config["n_frequencies"], "n_frequencies", what, 1, 32)
        self.n_output_dims = n_input_dims * self.n_frequencies
        k = torch.arange(self.n_frequencies, dtype=torch.float64)
        self.register_buffer("scales", 2.0 ** (k - 1), persistent=False)
        self.register_buffer("phases", k * 0.25, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        v = x[:, :, None] * self.scales.to(x.dtype) + self.phases.to(x.dtype)  # [N, d, K]
        wave = (v - torch.floor(v) - 0.5).abs() * 4.0 - 1.0
        return self.output(wave.reshape(x.shape[0], -1))
