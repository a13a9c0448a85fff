"""Multiresolution grid encodings: ``HashGrid`` (the paper's) and ``DenseGrid`` (no hashing).

Config keys are tiny-cuda-nn's, plus ``finest_resolution`` and ``storage_dtype`` (``"float32"`` or
``"float16"``: the precision the table is *read* in; tiny-cuda-nn has no such key, it stores tables in
half when built with half precision). The table parameter stays float32 either way.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from ngp.config import ConfigError, require_choice, require_float, require_int, with_defaults
from ngp.encodings.base import Encoding, register_encoding
from ngp.kernels.reference.hashgrid import INTERPOLATIONS, MAX_DIMS, GridLayout
from ngp.ops.hashgrid import hash_grid_encode

GRID_DEFAULTS = {
    "n_levels": 16,
    "n_features_per_level": 2,
    "log2_hashmap_size": 19,
    "base_resolution": 16,
    "per_level_scale": None,  # tiny-cuda-nn's default, 2.0, unless finest_resolution is given
    "finest_resolution": None,  # N_max: derives per_level_scale = (N_max / N_min)^(1 / (L - 1))
    "interpolation": "Linear",
    "storage_dtype": None,  # our extension: "float32" or "float16"; None: the parameter's dtype
}
#: ``storage_dtype`` config values.
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: Parameter dtypes: float16 would not survive Adam (``eps = 1e-15``, squared gradients); store in half instead.
PARAMETER_DTYPES = (torch.float32, torch.float64)
#: Initial table values are drawn from U(-INIT_SCALE, INIT_SCALE), as in the paper.
INIT_SCALE = 1e-4


def grid_layout_from_config(n_input_dims: int, config: Mapping[str, Any], hashed: bool, what: str) -> GridLayout:
    """Validate a grid config and compute its :class:`GridLayout`."""
    if not 1 <= n_input_dims <= MAX_DIMS:
        raise ConfigError(f"{what}: n_input_dims={n_input_dims} not supported (1 to {MAX_DIMS})")
    levels = require_int(config["n_levels"], "n_levels", what, 1, 64)
    features = require_int(config["n_features_per_level"], "n_features_per_level", what, 1, 8)
    if features not in (1, 2, 4, 8):
        raise ConfigError(f"{what}: n_features_per_level={features} not supported; expected 1, 2, 4 or 8")
    log2_size = require_int(config["log2_hashmap_size"], "log2_hashmap_size", what, 1, 30)
    base = require_int(config["base_resolution"], "base_resolution", what, 1)
    scale, finest = config["per_level_scale"], config["finest_resolution"]
    if scale is not None and finest is not None:
        raise ConfigError(f"{what}: give per_level_scale or finest_resolution, not both")
    if finest is not None:
        finest = require_float(finest, "finest_resolution", what, base)
        scale = math.exp(math.log(finest / base) / (levels - 1)) if levels > 1 else 1.0
    scale = require_float(2.0 if scale is None else scale, "per_level_scale", what, 1.0)
    return GridLayout.create(n_input_dims, levels, features, log2_size, base, scale, hash=hashed)


def storage_dtype_from(config_value: Any, keyword: Any, what: str) -> torch.dtype | None:
    """The table's storage dtype from the config key and the constructor keyword (``None``: not given).

    The keyword (``torch.float16``/``torch.float32`` or their names) fills in for an absent key; when
    both are given they must agree (a checkpoint records the config, so it must say what ran).
    """
    from_config = _storage_choice(config_value, "storage_dtype", what)
    from_keyword = _storage_choice(keyword, "storage_dtype (keyword)", what)
    if from_config is not None and from_keyword is not None and from_config != from_keyword:
        raise ConfigError(
            f"{what}: storage_dtype={keyword!r} (keyword) contradicts the config's storage_dtype={config_value!r}"
        )
    return from_keyword if from_keyword is not None else from_config


def _storage_choice(value: Any, key: str, what: str) -> torch.dtype | None:
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        value = str(value).removeprefix("torch.")
    return STORAGE_DTYPES[require_choice(value, STORAGE_DTYPES, key, what)]


class Grid(Encoding):
    """A multiresolution grid of learned features; see :mod:`ngp.kernels.reference.hashgrid`.

    Inputs are expected in ``[0, 1]^d``; values outside are clamped to the unit cube (their gradient
    is zero), NaN raises. Output: ``[N, n_levels * n_features_per_level]``, coarsest level first, in
    the parameter's dtype.

    Args:
        n_input_dims: ``d``, 1 to 4.
        encoding_config: tiny-cuda-nn keys (see :data:`GRID_DEFAULTS`), incl. ``"storage_dtype"``.
        dtype: the table parameter's dtype, float32 (default) or float64.
        storage_dtype: ``torch.float16`` / ``torch.float32`` (or ``"float16"`` / ``"float32"``): the
            precision the table is read in, for an absent config key; if the config also gives one,
            they must agree. Default: the parameter's dtype. With float16 the parameter stays float32
            (the master copy Adam updates); each call reads a float16 copy of it, and its gradient
            is straight-through (:func:`ngp.ops.hash_grid_encode`).
    """

    hashed = True

    def __init__(
        self,
        n_input_dims: int,
        encoding_config: Mapping[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        storage_dtype: torch.dtype | str | None = None,
    ):
        super().__init__(n_input_dims)
        what = f"encoding {type(self).__name__!r}"
        is_generic = type(self) is Grid  # otype "Grid" picks hashing with "type", as in tiny-cuda-nn
        defaults = {**GRID_DEFAULTS, "type": "Hash"} if is_generic else GRID_DEFAULTS
        config = with_defaults(encoding_config or {}, defaults, what, allowed={"n_dims_to_encode"})
        if is_generic:
            self.hashed = require_choice(config["type"], ("Hash", "Dense"), "type", what) == "Hash"
        self.interpolation = require_choice(config["interpolation"], INTERPOLATIONS, "interpolation", what)
        self.layout = grid_layout_from_config(n_input_dims, config, self.hashed, what)
        self.n_output_dims = self.layout.n_output_dims
        if dtype not in PARAMETER_DTYPES:
            raise TypeError(f"{what}: dtype={dtype} is not a parameter dtype; use float32 and storage_dtype=float16")
        storage = storage_dtype_from(config["storage_dtype"], storage_dtype, what)
        #: The dtype the table is read in; None: the parameter's (also after ``.double()``).
        self.storage_dtype = None if storage == dtype else storage
        table = torch.empty(self.layout.n_rows, self.layout.n_features, dtype=dtype)
        self.table = nn.Parameter(table.uniform_(-INIT_SCALE, INIT_SCALE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        # Coordinates in the parameter's dtype (float32), never the storage's: float16 has 11
        # significant bits, too few to resolve the cells of a 2048-per-axis level.
        return hash_grid_encode(
            x.to(self.table.dtype), self.table, self.layout, self.interpolation, self.storage_dtype
        )

    def extra_repr(self) -> str:
        l = self.layout
        stored = self.storage_dtype not in (None, self.table.dtype)
        storage = f", storage={str(self.storage_dtype).removeprefix('torch.')}" if stored else ""
        return (
            f"{super().extra_repr()}, levels={l.n_levels}, features={l.n_features}, "
            f"resolutions={l.resolutions[0]}..{l.resolutions[-1]}, hashed_levels={sum(l.hashed)}, "
            f"rows={l.n_rows}, interpolation={self.interpolation}{storage}"
        )


@register_encoding("HashGrid")
class HashGrid(Grid):
    hashed = True


@register_encoding("DenseGrid")
class DenseGrid(Grid):
    """The same grid without hashing: every level is indexed 1:1 (memory grows as N_l^d)."""

    hashed = False


register_encoding("Grid")(Grid)
