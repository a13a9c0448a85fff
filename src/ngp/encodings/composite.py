"""Composite encoding: different encodings for slices of the input dimensions."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ngp.config import ConfigError, require_choice, require_int, with_defaults
from ngp.encodings.base import NESTED_KEYS, Encoding, register_encoding
from ngp.encodings.grid import REDUCTIONS, reduce_levels


@register_encoding("Composite")
class Composite(Encoding):
    """Encode input dims ``[0, n_0)`` with ``nested[0]``, the next ``n_1`` with ``nested[1]``, ...

    As tiny-cuda-nn:

    * each nested config gives ``n_dims_to_encode``; one may omit it to take the dims the others
      leave (none may when any gives ``dims_to_encode_begin``);
    * ``dims_to_encode_begin`` starts a nested encoding's slice at that dim (slices may overlap);
    * a nested encoding left with zero dims is skipped (instant-ngp's direction encoding ends with an
      ``Identity`` for optional extra dims, usually none);
    * ``reduction``: ``"Concatenation"`` (default) of the nested outputs in order, or their
      elementwise ``"Sum"`` / ``"Product"`` (all nested outputs then need the same width).

    Without ``dims_to_encode_begin``, dims no nested encoding covers are an error. A slice that runs
    past the last input dim wraps around to dim 0: tiny-cuda-nn does not check, and reads whatever
    follows the input in memory (in instant-ngp's NeRF, the sample's step size after x, y, z), so
    instant-ngp's ``configs/nerf/tensor.json`` planes ``(0, 1), (1, 2), (2, 3)`` are ``xy, yz, zx`` here.

    Example (instant-ngp's NeRF direction encoding):
        >>> enc = Encoding(3, {"otype": "Composite", "nested": [
        ...     {"n_dims_to_encode": 3, "otype": "SphericalHarmonics", "degree": 4}, {"otype": "Identity"}]})
        >>> enc.n_output_dims
        16
    """

    def __init__(self, n_input_dims: int, encoding_config: Mapping[str, Any] | None = None, seed: int | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(n_input_dims, seed=seed, dtype=dtype)
        what = "encoding 'Composite'"
        config = with_defaults(encoding_config or {}, {"nested": [], "reduction": "Concatenation"}, what, NESTED_KEYS)
        self.reduction = require_choice(config["reduction"], REDUCTIONS, "reduction", what)
        nested = config["nested"]
        if not isinstance(nested, list) or not nested or not all(isinstance(n, Mapping) for n in nested):
            raise ConfigError(f"{what}: 'nested' must be a non-empty list of encoding configs")
        encodings, self.dims = [], []
        for i, (begin, n) in enumerate(self._slices(nested, n_input_dims, what)):
            if n == 0:
                continue
            nested_seed = None if seed is None else seed + i
            encodings.append(Encoding(n, nested[i], seed=nested_seed, dtype=dtype))
            self.dims.append([(begin + k) % n_input_dims for k in range(n)])
        if not encodings:
            raise ConfigError(f"{what}: no nested encoding has any input dims")
        self.nested = nn.ModuleList(encodings)
        widths = [e.n_output_dims for e in encodings]
        if self.reduction != "Concatenation" and len(set(widths)) > 1:
            raise ConfigError(f"{what}: reduction={self.reduction!r} needs nested outputs of one width, got {widths}")
        self.n_output_dims = sum(widths) if self.reduction == "Concatenation" else widths[0]
        self._contiguous = [d == list(range(d[0], d[0] + len(d))) for d in self.dims]

    @staticmethod
    def _slices(nested: list[Mapping[str, Any]], n_input_dims: int, what: str) -> list[tuple[int, int]]:
        """``(first dim, number of dims)`` of each nested config, by tiny-cuda-nn's rules (class doc)."""
        positioned = any("dims_to_encode_begin" in sub for sub in nested)
        counts = [require_int(sub["n_dims_to_encode"], f"nested[{i}].n_dims_to_encode", what, 0, n_input_dims)
                  if "n_dims_to_encode" in sub else None for i, sub in enumerate(nested)]
        open_ended = [i for i, n in enumerate(counts) if n is None]
        if len(open_ended) > 1 or (open_ended and positioned):
            raise ConfigError(f"{what}: only one nested encoding may omit n_dims_to_encode (none may when "
                              f"dims_to_encode_begin is used); nested {open_ended} do")
        given = sum(n for n in counts if n is not None)
        if not positioned and given > n_input_dims:
            raise ConfigError(f"{what}: nested encodings take {given} dims, the input has {n_input_dims}")
        if not positioned and not open_ended and given < n_input_dims:
            raise ConfigError(f"{what}: nested encodings cover {given} of {n_input_dims} dims")
        slices, offset = [], 0
        for i, (sub, n) in enumerate(zip(nested, counts)):
            n = n_input_dims - given if n is None else n
            if "dims_to_encode_begin" in sub:
                offset = require_int(sub["dims_to_encode_begin"], f"nested[{i}].dims_to_encode_begin", what, 0,
                                     n_input_dims - 1)
            slices.append((offset, n))
            offset += n
        return slices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        outputs = []
        for enc, dims, contiguous in zip(self.nested, self.dims, self._contiguous):
            part = x[:, dims[0]:dims[0] + len(dims)] if contiguous else x[:, dims]
            outputs.append(enc(part))
        features = torch.cat(outputs, dim=1)
        if self.reduction == "Concatenation":
            return features
        return reduce_levels(features, self.n_output_dims, self.reduction)
