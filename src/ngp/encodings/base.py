"""The encoding base class, which is also the factory ``Encoding(n_input_dims, config)``."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ngp.config import ConfigError, otype_of

_REGISTRY: dict[str, type["Encoding"]] = {}


def register_encoding(*names: str):
    """Class decorator: make an encoding constructible from configs with ``otype`` in ``names``."""

    def decorate(cls):
        for name in names:
            _REGISTRY[name.lower()] = cls
        return cls

    return decorate


class Encoding(nn.Module):
    """An input encoding ``[N, n_input_dims] -> [N, n_output_dims]``, built from a tiny-cuda-nn config.

    Calling ``Encoding(n_input_dims, {"otype": "HashGrid", ...})`` returns the concrete subclass for
    that ``otype`` (``HashGrid``, ``DenseGrid``, ``Frequency``, ``SphericalHarmonics``, ``Identity``,
    ``Composite``), so ``isinstance(enc, Encoding)`` holds for all of them.

    Example:
        >>> enc = Encoding(3, {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2})
        >>> enc(torch.rand(8, 3)).shape
        torch.Size([8, 32])
    """

    n_input_dims: int
    n_output_dims: int

    def __new__(cls, n_input_dims: int | None = None, encoding_config: Mapping[str, Any] | None = None, *args, **kwargs):
        if cls is Encoding:
            otype = otype_of(encoding_config, "encoding")
            if otype.lower() not in _REGISTRY:
                raise ConfigError(f"unknown encoding otype {otype!r}; known: {sorted(_REGISTRY)}")
            cls = _REGISTRY[otype.lower()]
        return super().__new__(cls)

    def __init__(self, n_input_dims: int, encoding_config: Mapping[str, Any] | None = None):
        super().__init__()
        if isinstance(n_input_dims, bool) or not isinstance(n_input_dims, int) or n_input_dims < 1:
            raise ConfigError(f"n_input_dims must be a positive integer, got {n_input_dims!r}")
        self.n_input_dims = n_input_dims

    def check_input(self, x: torch.Tensor) -> None:
        """Reject what no encoding can handle, before any work: wrong shape or dtype, NaN."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.n_input_dims:
            raise ValueError(
                f"{type(self).__name__} expects input of shape [N, {self.n_input_dims}], got {list(x.shape)}"
            )
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} expects floating-point input, got {x.dtype}")
        if x.numel() and torch.isnan(x).any():
            raise ValueError(f"{type(self).__name__}: input contains NaN coordinates")

    def extra_repr(self) -> str:
        return f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}"


def build_encoding(n_input_dims: int, config: Mapping[str, Any]) -> Encoding:
    """Same as ``Encoding(n_input_dims, config)``; here for readability at call sites."""
    return Encoding(n_input_dims, config)
