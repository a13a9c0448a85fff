"""Multiresolution grid encodings: ``HashGrid`` (the paper's), ``DenseGrid`` (no hashing) and
``TiledGrid`` (levels finer than the coarsest wrap around into as many rows as it has).

Config keys are tiny-cuda-nn's (``hash``: its five hash functions; ``fixed_point_pos``: accepted, no
effect, see :data:`GRID_DEFAULTS`), plus ``hash_primes`` (the factors of an xor-of-products hash, one
per axis, in place of its own: what ``ngp hash-search`` finds), ``finest_resolution``, ``reduction``
(how the levels are combined: ``"Concatenation"`` (tiny-cuda-nn's only way), ``"Sum"`` or
``"Product"``, elementwise over the levels' feature vectors) and ``storage_dtype`` (``"float32"`` or
``"float16"``: the precision the table is *read* in; tiny-cuda-nn has no such key, it stores tables in
half when built with half precision). The table parameter stays float32 either way.

Two of the paper's open questions ("filter the hash-table lookups") are ours too:

* ``filter_radius`` (default 0: off): in training mode each point is looked up at a random offset,
  uniform in ``±filter_radius`` cells of the finest level per axis, so the table learns the lookup
  averaged over that footprint (a stochastic box filter: collisions and the grid's cell structure
  are smoothed over, not memorised point by point). Evaluation looks up the point itself.
* ``rotate_levels`` (default false): each level looks the point up in its own fixed random rotation
  of the grid, ``y_l = R_l (x - 0.5) / sqrt(d) + 0.5`` (the ``1/sqrt(d)`` keeps the rotated cube inside
  ``[0, 1]^d``; the level gets ``ceil(sqrt(d) N_l)`` cells per axis, so its cells keep their size in
  ``x``). No two levels then share the grid's axes, so axis-aligned artefacts do not add up across
  levels. The rotations are drawn from a fixed seed (the same for every grid) and kept in the state
  dict (``level_rotations``). It costs one kernel call per level (the backward of one level runs on
  one thread on the CPU).
* :meth:`Grid.set_active_levels`: coarse-to-fine training (Neuralangelo), the finer levels faded in
  by a schedule the trainer owns (the SDF's ``training.coarse_to_fine``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from ngp.config import ConfigError, require_choice, require_float, require_int, with_defaults
from ngp.encodings.base import NESTED_KEYS, Encoding, register_encoding, seeded_generator
from ngp.kernels.reference.hashgrid import CONFIG_HASHES, INTERPOLATIONS, MAX_DIMS, GridLayout, check_hash_primes
from ngp.ops.hashgrid import hash_grid_encode, hash_grid_encode_as, hash_grid_encode_given

GRID_DEFAULTS = {
    "n_levels": 16,
    "n_features_per_level": 2,
    "log2_hashmap_size": 19,
    "base_resolution": 16,
    "per_level_scale": None,  # tiny-cuda-nn's default, 2.0, unless finest_resolution is given
    "finest_resolution": None,  # N_max: derives per_level_scale = (N_max / N_min)^(1 / (L - 1))
    "interpolation": "Linear",
    "hash": "CoherentPrime",  # tiny-cuda-nn's hash functions (ngp.kernels.reference.hashgrid)
    # ours: factors [P_0, P_1, ...] replacing an xor-of-products hash's own (what `ngp hash-search` finds)
    "hash_primes": None,
    # tiny-cuda-nn snaps positions to 32-bit fixed point on the GPU; accepted, no effect here: the
    # kernels compute x * N_l in the coordinates' float type, as the reference does
    "fixed_point_pos": False,
    # tiny-cuda-nn's backward-only stochastic corner choice: only its default (off) is supported
    "stochastic_interpolation": False,
    "reduction": "Concatenation",  # ours (the paper's open question): "Sum" or "Product" over levels
    "storage_dtype": None,  # our extension: "float32" or "float16"; None: the parameter's dtype
    "filter_radius": 0.0,  # ours: training-time lookup jitter, in cells of the finest level (see above)
    "rotate_levels": False,  # ours: a fixed random rotation per level (see above)
}
#: How a grid combines its levels' feature vectors.
REDUCTIONS = ("Concatenation", "Sum", "Product")
#: tiny-cuda-nn's grid types (the ``type`` key of ``otype: "Grid"``).
GRID_TYPES = ("Hash", "Dense", "Tiled")
#: ``storage_dtype`` config values.
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: Initial table values are drawn from U(-INIT_SCALE, INIT_SCALE), as in the paper.
INIT_SCALE = 1e-4
#: The seed of ``rotate_levels``' rotations: fixed, so that a config means one encoding.
ROTATION_SEED = 1337


def level_rotations(n_levels: int, n_dims: int, seed: int = ROTATION_SEED) -> torch.Tensor:
    """``[L, d, d]`` float64 random rotations (uniform: QR of Gaussian matrices, signs fixed, det +1).

    Example:
        >>> r = level_rotations(4, 3)
        >>> torch.allclose(r @ r.transpose(1, 2), torch.eye(3).double().expand(4, 3, 3))
        True
    """
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n_levels, n_dims, n_dims, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    q[:, :, 0] *= torch.sign(torch.linalg.det(q))[:, None]  # a rotation, not a reflection
    return q


def rotated_layout(layout: GridLayout, log2_hashmap_size: int, grid_type: str) -> GridLayout:
    """``layout`` with ``ceil(sqrt(d) N_l)`` cells per axis (see ``rotate_levels``), hashed by the same rule."""
    scale = math.sqrt(layout.n_dims)
    resolutions = [math.ceil(scale * res - 1e-9) for res in layout.resolutions]
    return GridLayout.from_resolutions(layout.n_dims, layout.n_features, resolutions, log2_hashmap_size,
                                       hash=grid_type == "Hash", hash_function=layout.hash_function,
                                       tiled=grid_type == "Tiled", hash_primes=layout.hash_primes)


def grid_layout_from_config(n_input_dims: int, config: Mapping[str, Any], grid_type: str, what: str) -> GridLayout:
    """Validate a grid config and compute its :class:`GridLayout` (``grid_type``: one of :data:`GRID_TYPES`)."""
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
    hash_function = require_choice(config["hash"], CONFIG_HASHES, "hash", what)
    primes = _hash_primes(config["hash_primes"], n_input_dims, hash_function, what)
    if primes and grid_type != "Hash":
        raise ConfigError(f"{what}: hash_primes apply to hashed grids, not to a {grid_type} grid")
    if not isinstance(config["fixed_point_pos"], bool):
        raise ConfigError(f"{what}: fixed_point_pos must be true or false, got {config['fixed_point_pos']!r}")
    if config["stochastic_interpolation"] is not False:
        raise ConfigError(f"{what}: stochastic_interpolation={config['stochastic_interpolation']!r} is not supported "
                          "(only false, tiny-cuda-nn's default)")
    return GridLayout.create(n_input_dims, levels, features, log2_size, base, scale, hash=grid_type == "Hash",
                             hash_function=hash_function, tiled=grid_type == "Tiled", hash_primes=primes)


def _hash_primes(value: Any, n_input_dims: int, hash_function: str, what: str) -> tuple[int, ...]:
    """The ``hash_primes`` key: ``None`` (the hash function's own factors) or one integer per axis."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{what}: hash_primes must be a list of {n_input_dims} integers (one per axis), "
                          f"got {value!r}")
    try:
        check_hash_primes(tuple(value), n_input_dims, hash_function)
    except ValueError as error:
        raise ConfigError(f"{what}: {error}") from None
    return tuple(int(p) for p in value)


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
    is zero), NaN raises. Output: ``[N, n_levels * n_features_per_level]``, coarsest level first
    (``[N, n_features_per_level]`` with ``"reduction": "Sum"`` or ``"Product"``), in the parameter's
    dtype (float16 for ``dtype=torch.float16``).

    Args:
        n_input_dims: ``d``, 1 to 4.
        encoding_config: tiny-cuda-nn keys (see :data:`GRID_DEFAULTS`), incl. ``"storage_dtype"``.
        seed: initialise the table from this seed (tiny-cuda-nn's ``seed=``); ``None``: torch's RNG.
        dtype: ``torch.float32`` (default) or ``torch.float64``: the table parameter's dtype;
            ``torch.float16`` (tiny-cuda-nn's half precision): a float32 parameter read in float16
            (``storage_dtype``) and a float16 output.
        storage_dtype: ``torch.float16`` / ``torch.float32`` (or ``"float16"`` / ``"float32"``): the
            precision the table is read in, for an absent config key; if the config also gives one,
            they must agree. Default: the parameter's dtype. With float16 the parameter stays float32
            (the master copy Adam updates); each call reads a float16 copy of it, and its gradient
            is straight-through (:func:`ngp.ops.hash_grid_encode`).

    Example:
        >>> grid = Encoding(3, {"otype": "HashGrid", "n_levels": 8, "hash": "Prime", "reduction": "Sum"})
        >>> grid(torch.rand(4, 3)).shape
        torch.Size([4, 2])
    """

    grid_type = "Hash"

    def __init__(
        self,
        n_input_dims: int,
        encoding_config: Mapping[str, Any] | None = None,
        seed: int | None = None,
        dtype: torch.dtype | None = None,
        storage_dtype: torch.dtype | str | None = None,
    ):
        super().__init__(n_input_dims, seed=seed, dtype=dtype)
        what = f"encoding {type(self).__name__!r}"
        is_generic = type(self) is Grid  # otype "Grid" picks the grid type with "type", as in tiny-cuda-nn
        defaults = {**GRID_DEFAULTS, "type": "Hash"} if is_generic else GRID_DEFAULTS
        config = with_defaults(encoding_config or {}, defaults, what, allowed=NESTED_KEYS)
        if is_generic:
            self.grid_type = require_choice(config["type"], GRID_TYPES, "type", what)
        self.interpolation = require_choice(config["interpolation"], INTERPOLATIONS, "interpolation", what)
        self.reduction = require_choice(config["reduction"], REDUCTIONS, "reduction", what)
        self.layout = grid_layout_from_config(n_input_dims, config, self.grid_type, what)
        if not isinstance(config["rotate_levels"], bool):
            raise ConfigError(f"{what}: rotate_levels must be true or false, got {config['rotate_levels']!r}")
        if config["rotate_levels"]:
            if n_input_dims < 2:
                raise ConfigError(f"{what}: rotate_levels needs at least 2 input dimensions, got {n_input_dims}")
            self.layout = rotated_layout(self.layout, config["log2_hashmap_size"], self.grid_type)
        concatenated = self.reduction == "Concatenation"
        self.n_output_dims = self.layout.n_output_dims if concatenated else self.layout.n_features
        parameter_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        half = torch.float16 if self.dtype == torch.float16 else None
        keyword = storage_dtype if storage_dtype is not None else half  # dtype=float16: read the table in half
        storage = storage_dtype_from(config["storage_dtype"], keyword, what)
        #: The dtype the table is read in; None: the parameter's (also after ``.double()``).
        self.storage_dtype = None if storage == parameter_dtype else storage
        table = torch.empty(self.layout.n_rows, self.layout.n_features, dtype=parameter_dtype)
        self.table = nn.Parameter(table.uniform_(-INIT_SCALE, INIT_SCALE, generator=seeded_generator(seed)))
        self.filter_radius = require_float(config["filter_radius"], "filter_radius", what, 0.0)
        self.rotate_levels = config["rotate_levels"]
        if self.rotate_levels:
            rotations = level_rotations(self.layout.n_levels, n_input_dims).to(parameter_dtype)
            self.register_buffer("level_rotations", rotations / math.sqrt(n_input_dims))  # R_l / sqrt(d)
        #: How many levels count (None: all) and each level's weight ``[L]``; see :meth:`set_active_levels`.
        self.active_levels: float | None = None
        self.level_weights: torch.Tensor | None = None

    @property
    def hashed(self) -> bool:
        return self.grid_type == "Hash"

    def set_active_levels(self, active: float | None) -> None:
        """Fade levels in, coarse to fine: levels ``0 .. floor(active) - 1`` count fully, the next one
        with weight ``active - floor(active)``, finer ones not at all (their features are replaced by
        the reduction's neutral value: 0, or 1 for ``"Product"``, so they get no gradient either).
        ``None`` (or ``active >= n_levels``): every level, as without a schedule.

        Example:
            >>> grid.set_active_levels(4.5)   # levels 0-3, and level 4 at half weight
        """
        levels = self.layout.n_levels
        if active is None or active >= levels:
            self.active_levels = self.level_weights = None
            return
        if not active > 0:
            raise ValueError(f"active levels must be positive (at least part of the coarsest level), got {active}")
        weights = torch.clamp(active - torch.arange(levels, dtype=torch.float64), 0.0, 1.0)
        self.active_levels = float(active)
        self.level_weights = weights.to(self.table.device, self.table.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = x.to(self.table.dtype)
        if self.training and self.filter_radius > 0:
            cell = 1.0 / self.layout.resolutions[-1]
            x = x + (torch.rand_like(x) * 2 - 1) * (self.filter_radius * cell)
        # Coordinates in the parameter's dtype (float32), never the storage's: float16 has 11
        # significant bits, too few to resolve the cells of a 2048-per-axis level.
        if self.rotate_levels:
            features = self._rotated_levels(x)
        else:
            features = hash_grid_encode(x, self.table, self.layout, self.interpolation, self.storage_dtype)
        return self.output(self._reduce(features))

    def _rotated_levels(self, x: torch.Tensor) -> torch.Tensor:
        """``rotate_levels``: each level encodes its own rotated copy of the points (one op call per level;
        ``split`` hands each level its rows, and its backward assembles the table's gradient in one piece)."""
        layout = self.layout
        sizes = [layout.offsets[level + 1] - layout.offsets[level] for level in range(layout.n_levels)]
        tables = self.table.split(sizes)
        centred = x.clamp(0.0, 1.0) - 0.5  # outside the cube: clamped (no gradient), as without rotations
        outputs = []
        for level, table in enumerate(tables):
            y = centred @ self.level_rotations[level].to(x.dtype).T + 0.5
            outputs.append(hash_grid_encode(y, table, layout.level(level), self.interpolation, self.storage_dtype))
        return torch.cat(outputs, dim=-1)

    def _reduce(self, features: torch.Tensor) -> torch.Tensor:
        if self.level_weights is not None:
            per_level = features.reshape(features.shape[0], self.layout.n_levels, self.layout.n_features)
            weights = self.level_weights.to(features.device, features.dtype)[:, None]
            neutral = 1.0 if self.reduction == "Product" else 0.0
            features = (per_level * weights + neutral * (1 - weights)).reshape(features.shape)
        return reduce_levels(features, self.layout.n_features, self.reduction)

    def _plain(self) -> bool:
        """The output is the op's features as they are (so they can be reused or rounded in the kernel)."""
        return self.reduction == "Concatenation" and self.level_weights is None and not self.rotate_levels and not (
            self.training and self.filter_radius > 0)

    def forward_as(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """See :meth:`Encoding.forward_as`: the kernels round the features as they write them
        (:func:`ngp.ops.hashgrid.hash_grid_encode_as`)."""
        if not self._plain() or self.dtype == torch.float16:
            return super().forward_as(x, dtype)
        self.check_input(x)
        return hash_grid_encode_as(x.to(self.table.dtype), self.table, self.layout, dtype, self.interpolation,
                                   self.storage_dtype)

    def forward_given(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """See :meth:`Encoding.forward_given`: the grid runs only its backward kernel on these features (also
        on features :meth:`forward_as` rounded, which it returns as they are)."""
        rounded = features.dtype.itemsize < self.table.dtype.itemsize
        if not self._plain() or not (features.dtype == self.table.dtype or rounded) or self.dtype == torch.float16:
            return self(x)
        self.check_input(x)
        return hash_grid_encode_given(x.to(self.table.dtype), self.table, self.layout, features, self.interpolation,
                                      self.storage_dtype)

    def extra_repr(self) -> str:
        l = self.layout
        stored = self.storage_dtype not in (None, self.table.dtype)
        storage = f", storage={str(self.storage_dtype).removeprefix('torch.')}" if stored else ""
        hashing = f", hash={l.hash_function}" if l.hash_function != "CoherentPrime" else ""
        hashing += f", hash_primes={list(l.hash_primes)}" if l.hash_primes else ""
        reduction = f", reduction={self.reduction}" if self.reduction != "Concatenation" else ""
        filtered = f", filter_radius={self.filter_radius:g}" if self.filter_radius else ""
        filtered += ", rotate_levels=True" if self.rotate_levels else ""
        return (
            f"{super().extra_repr()}, levels={l.n_levels}, features={l.n_features}, "
            f"resolutions={l.resolutions[0]}..{l.resolutions[-1]}, hashed_levels={sum(l.hashed)}, "
            f"rows={l.n_rows}, interpolation={self.interpolation}{hashing}{reduction}{storage}{filtered}"
        )


def reduce_levels(features: torch.Tensor, n_features: int, reduction: str) -> torch.Tensor:
    """``[N, L*F]`` level features -> the same (``"Concatenation"``) or ``[N, F]``: their elementwise
    ``"Sum"`` or ``"Product"`` over the ``L`` levels (differentiable by autograd, on every backend).

    Example:
        >>> reduce_levels(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), 2, "Sum")
        tensor([[4., 6.]])
    """
    if reduction == "Concatenation":
        return features
    per_level = features.reshape(features.shape[0], -1, n_features)
    if reduction == "Sum":
        return per_level.sum(dim=1)
    if reduction == "Product":
        return per_level.prod(dim=1)
    raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")


@register_encoding("HashGrid")
class HashGrid(Grid):
    grid_type = "Hash"


@register_encoding("DenseGrid")
class DenseGrid(Grid):
    """The same grid without hashing: every level is indexed 1:1 (memory grows as N_l^d)."""

    grid_type = "Dense"


@register_encoding("TiledGrid")
class TiledGrid(Grid):
    """tiny-cuda-nn's tiled grid: each level has at most as many rows as the coarsest level has
    vertices; a finer level's vertex goes to row ``dense index mod that size`` (the grid repeats)."""

    grid_type = "Tiled"


register_encoding("Grid")(Grid)
