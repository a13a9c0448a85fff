"""Composite encoding: different encodings for consecutive slices of the input dimensions."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ngp.config import ConfigError, require_choice, require_int, with_defaults
from ngp.encodings.base import Encoding, register_encoding


@register_encoding("Composite")
class Composite(Encoding):
    """Encode input dims ``[0, n_0)`` with ``nested[0]``, the next ``n_1`` with ``nested[1]``, ...

    Each nested config gives ``n_dims_to_encode``; the last may omit it to take the remaining dims.
    Outputs are concatenated in order.

    Example (instant-ngp's NeRF direction encoding):
        >>> enc = Encoding(3, {"otype": "Composite", "nested": [
        ...     {"n_dims_to_encode": 3, "otype": "SphericalHarmonics", "degree": 4}]})
        >>> enc.n_output_dims
        16
    """

    def __init__(self, n_input_dims: int, encoding_config: Mapping[str, Any] | None = None):
        super().__init__(n_input_dims)
        what = "encoding 'Composite'"
        config = with_defaults(encoding_config or {}, {"nested": [], "reduction": "Concatenation"}, what)
        require_choice(config["reduction"], ("Concatenation",), "reduction", what)
        nested = config["nested"]
        if not isinstance(nested, list) or not nested:
            raise ConfigError(f"{what}: 'nested' must be a non-empty list of encoding configs")
        self.splits: list[int] = []
        encodings = []
        remaining = n_input_dims
        for i, sub in enumerate(nested):
            if not isinstance(sub, Mapping):
                raise ConfigError(f"{what}: nested[{i}] must be an encoding config object")
            last = i == len(nested) - 1
            if "n_dims_to_encode" in sub:
                n = require_int(sub["n_dims_to_encode"], f"nested[{i}].n_dims_to_encode", what, 1, remaining)
            elif last:
                n = remaining
            else:
                raise ConfigError(f"{what}: nested[{i}] needs n_dims_to_encode (only the last may omit it)")
            if n < 1:
                raise ConfigError(f"{what}: no input dimensions left for nested[{i}]")
            encodings.append(Encoding(n, sub))
            self.splits.append(n)
            remaining -= n
        if remaining:
            raise ConfigError(f"{what}: nested encodings cover {n_input_dims - remaining} of {n_input_dims} dims")
        self.nested = nn.ModuleList(encodings)
        self.n_output_dims = sum(e.n_output_dims for e in encodings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        parts = torch.split(x, self.splits, dim=1)
        return torch.cat([enc(part) for enc, part in zip(self.nested, parts)], dim=1)
