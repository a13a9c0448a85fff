"""Identity encoding (with tiny-cuda-nn's optional affine ``scale`` and ``offset``)."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ngp.config import require_float, with_defaults
from ngp.encodings.base import NESTED_KEYS, Encoding, register_encoding


@register_encoding("Identity")
class Identity(Encoding):
    """``x -> x * scale + offset``; output ``[N, d]``."""

    def __init__(self, n_input_dims: int, encoding_config: Mapping[str, Any] | None = None, seed: int | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(n_input_dims, seed=seed, dtype=dtype)
        what = "encoding 'Identity'"
        config = with_defaults(encoding_config or {}, {"scale": 1.0, "offset": 0.0}, what, NESTED_KEYS)
        self.scale = require_float(config["scale"], "scale", what)
        self.offset = require_float(config["offset"], "offset", what)
        self.n_output_dims = n_input_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.output(x * self.scale + self.offset if (self.scale, self.offset) != (1.0, 0.0) else x)
