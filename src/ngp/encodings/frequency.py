"""Frequency (positional) encoding, as in NeRF and tiny-cuda-nn."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ngp.config import require_int, with_defaults
from ngp.encodings.base import NESTED_KEYS, Encoding, register_encoding


@register_encoding("Frequency")
class Frequency(Encoding):
    """``x -> [sin(2^k pi x_i), cos(2^k pi x_i)]`` for ``k < n_frequencies``.

    Output ``[N, d * n_frequencies * 2]``, ordered by input dimension, then frequency, then
    (sin, cos) — tiny-cuda-nn's order.
    """

    def __init__(self, n_input_dims: int, encoding_config: Mapping[str, Any] | None = None, seed: int | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(n_input_dims, seed=seed, dtype=dtype)
        what = "encoding 'Frequency'"
        config = with_defaults(encoding_config or {}, {"n_frequencies": 12}, what, NESTED_KEYS)
        self.n_frequencies = require_int(config["n_frequencies"], "n_frequencies", what, 1, 32)
        self.n_output_dims = n_input_dims * self.n_frequencies * 2
        self.register_buffer("scales", math.pi * 2.0 ** torch.arange(self.n_frequencies, dtype=torch.float64), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        phase = x[:, :, None] * self.scales.to(x.dtype)  # [N, d, K]
        return self.output(torch.stack((phase.sin(), phase.cos()), dim=-1).reshape(x.shape[0], -1))
