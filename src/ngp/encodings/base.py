"""The encoding base class, which is also the factory ``Encoding(n_input_dims, config)``, and
tiny-cuda-nn's module API shared with the networks: :class:`Module`, :func:`supports_jit_fusion`,
:func:`free_temporary_memory`."""

from __future__ import annotations

import gc
from typing import Any, Mapping

import torch
from torch import nn

from ngp.config import ConfigError, otype_of
from ngp.ops.checks import has_nan

_REGISTRY: dict[str, type["Encoding"]] = {}

#: Keys of a nested encoding that belong to the enclosing ``Composite`` (every encoding accepts them).
NESTED_KEYS = frozenset({"n_dims_to_encode", "dims_to_encode_begin"})

#: ``dtype=`` values of tiny-cuda-nn's modules (its ``Encoding`` takes float32 or float16; float64 is
#: ours, for gradient checks). ``None``: float32 here (tiny-cuda-nn picks float16 on most GPUs).
MODULE_DTYPES = (torch.float32, torch.float16, torch.float64)


def register_encoding(*names: str):
    """Class decorator: make an encoding constructible from configs with ``otype`` in ``names``."""

    def decorate(cls):
        for name in names:
            _REGISTRY[name.lower()] = cls
        return cls

    return decorate


def supports_jit_fusion() -> bool:
    """tiny-cuda-nn's ``supports_jit_fusion()``: whether modules can fuse into one runtime-compiled
    CUDA kernel. Always ``False`` here: nothing is fused at run time (``jit_fusion`` may still be set
    on a module; it changes nothing)."""
    return False


def free_temporary_memory() -> None:
    """tiny-cuda-nn's ``free_temporary_memory()``: release cached scratch memory. Here that is
    Python's garbage and, when CUDA is in use, PyTorch's CUDA cache (the kernels keep no arena)."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def seeded_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator for initial parameters: ``seed`` given, the same weights every time (as
    tiny-cuda-nn's ``seed=``); ``None``, ``None`` (torch's global RNG, so ``torch.manual_seed`` decides)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer or None, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def module_dtype(dtype: torch.dtype | None, what: str) -> torch.dtype:
    """Validate a module's ``dtype=`` (``None`` means float32)."""
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in MODULE_DTYPES:
        raise TypeError(f"{what}: dtype={dtype} is not supported; expected torch.float32, torch.float16 or "
                        "torch.float64")
    return dtype


class Module(nn.Module):
    """The base of every ``ngp`` encoding and network, with tiny-cuda-nn's ``tcnn.Module`` attributes:
    ``n_input_dims``, ``n_output_dims``, ``seed`` (``None``: initialised from torch's global RNG),
    ``dtype`` (of the output) and ``jit_fusion`` (settable, no effect: see :func:`supports_jit_fusion`).

    Unlike tiny-cuda-nn, parameters are separate named tensors (``table``, ``layers.0.weight``, ...),
    not one flat ``params`` vector; ``model.parameters()`` yields them all.
    """

    n_input_dims: int
    n_output_dims: int
    seed: int | None = None
    dtype: torch.dtype = torch.float32
    jit_fusion: bool = False


class Encoding(Module):
    """An input encoding ``[N, n_input_dims] -> [N, n_output_dims]``, built from a tiny-cuda-nn config.

    Calling ``Encoding(n_input_dims, {"otype": "HashGrid", ...})`` returns the concrete subclass for
    that ``otype`` (``HashGrid``, ``DenseGrid``, ``TiledGrid``, ``Frequency``, ``TriangleWave``,
    ``OneBlob``, ``SphericalHarmonics``, ``Identity``, ``Composite``, ``Takikawa``), so
    ``isinstance(enc, Encoding)`` holds for all of them. tiny-cuda-nn's signature:
    ``Encoding(n_input_dims, encoding_config, seed=None, dtype=None)``.

    Example:
        >>> enc = Encoding(3, {"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2})
        >>> enc(torch.rand(8, 3)).shape
        torch.Size([8, 32])
    """

    def __new__(cls, n_input_dims: int | None = None, encoding_config: Mapping[str, Any] | None = None, *args, **kwargs):
        if cls is Encoding:
            otype = otype_of(encoding_config, "encoding")
            if otype.lower() not in _REGISTRY:
                raise ConfigError(f"unknown encoding otype {otype!r}; known: {sorted(_REGISTRY)}")
            cls = _REGISTRY[otype.lower()]
        return super().__new__(cls)

    def __init__(self, n_input_dims: int, encoding_config: Mapping[str, Any] | None = None, seed: int | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        if isinstance(n_input_dims, bool) or not isinstance(n_input_dims, int) or n_input_dims < 1:
            raise ConfigError(f"n_input_dims must be a positive integer, got {n_input_dims!r}")
        self.n_input_dims = n_input_dims
        seeded_generator(seed)  # a bad seed fails here, before any work
        self.seed = seed
        self.dtype = module_dtype(dtype, type(self).__name__)

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
        if x.numel() and has_nan(x):
            raise ValueError(f"{type(self).__name__}: input contains NaN coordinates")

    def forward_given(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``self(x)`` when ``features`` already holds its value (computed by this module, with these
        parameters, e.g. without gradients): equal to ``features``, differentiable as ``self(x)``.

        The hash grids skip their forward kernel (NeRF training reuses its density pre-pass this way),
        also for features :meth:`forward_as` rounded to a narrower float, which they return as they are;
        every other encoding recomputes ``self(x)``.
        """
        return self(x)

    def forward_as(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``self(x).to(dtype)`` without gradients (rendering under autocast, whose next matrix product
        rounds the features to ``dtype`` anyway). The hash grids round as they write; every other
        encoding converts its output."""
        with torch.no_grad():
            return self(x).to(dtype)

    def output(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` in the module's ``dtype`` when that is float16 (tiny-cuda-nn's half-precision
        output); otherwise unchanged (the input's floating dtype)."""
        return features.to(torch.float16) if self.dtype == torch.float16 else features

    def extra_repr(self) -> str:
        return f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}"


def build_encoding(n_input_dims: int, config: Mapping[str, Any], **kwargs) -> Encoding:
    """Same as ``Encoding(n_input_dims, config, **kwargs)``; here for readability at call sites."""
    return Encoding(n_input_dims, config, **kwargs)
