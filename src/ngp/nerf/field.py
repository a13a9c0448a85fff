"""The radiance field of the paper (section 5.4): a hash-encoded density MLP and a colour MLP.

::

    position x [S,3] (world) --normalise to the aabb--> [0,1]^3 --HashGrid--> [S, L*F]
        --density MLP (64 neurons, 1 hidden layer)--> h [S,16];  sigma = exp(h[:, 0])
    view direction d [S,3] --(d+1)/2--> SphericalHarmonics (degree 4) [S,16]
    [SH(d), h] [S,32] --colour MLP (64 neurons, 2 hidden layers)--> sigmoid --> rgb [S,3]

Built from an instant-ngp ``configs/nerf/*.json``-shaped config with the keys ``loss``,
``optimizer``, ``encoding``, ``network``, ``dir_encoding``, ``rgb_network`` (defaults in
``ngp/configs/nerf/base.json``, see :func:`parse_nerf_config`). As instant-ngp, a grid encoding
without ``per_level_scale`` reaches the finest resolution ``2048 * aabb_scale``. instant-ngp's
``distortion_map`` and ``envmap`` sections are validated and kept (see :data:`INACTIVE_SECTIONS`).

Example::

    >>> field = NerfField(aabb=torch.tensor([[0.0] * 3, [1.0] * 3]))
    >>> sigma, rgb = field(torch.rand(8, 3), torch.nn.functional.normalize(torch.randn(8, 3), dim=-1))
    >>> sigma.shape, rgb.shape
    (torch.Size([8]), torch.Size([8, 3]))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ngp.config import ConfigError, otype_of, require_int, with_defaults
from ngp.encodings import Encoding
from ngp.losses import build_loss
from ngp.networks import PAD_ROWS_MIN, Network, pad_rows, run_layers
from ngp.optim import OPTIMIZER_OTYPES, UNSUPPORTED_OPTIMIZERS, parse_optimizer_config
from ngp.ops.rows import gather_cat
from ngp.train.settings import build_config, default_config

__all__ = ["NerfField", "DEFAULT_CONFIG", "INACTIVE_SECTIONS", "MODEL_KEYS", "check_inactive_sections", "model_config",
           "parse_nerf_config", "trunc_exp", "DESIRED_RESOLUTION"]

#: instant-ngp's finest hash-grid resolution for a unit aabb; multiplied by ``aabb_scale``.
DESIRED_RESOLUTION = 2048
#: Width of the density network's output (the first is the log-density), as instant-ngp.
N_GEOMETRY_FEATURES = 16
#: ``exp`` is clamped at this argument: keeps early, noisy steps from overflowing to inf.
MAX_LOG_DENSITY = 15.0

#: Top-level sections of a NeRF config that describe the model (besides ``training``).
MODEL_KEYS = ("loss", "optimizer", "encoding", "network", "dir_encoding", "rgb_network")
#: The model sections of ``ngp/configs/nerf/base.json``, where the defaults live (read, not copied).
DEFAULT_CONFIG: dict[str, Any] = {k: v for k, v in default_config("nerf").items() if k in MODEL_KEYS}
CONFIG_KEYS = MODEL_KEYS
#: instant-ngp sections that configure two features its training switches on with flags that are off
#: by default (``optimize_distortion``: a learned lens-distortion map; ``train_envmap``: a learned
#: environment map). With the flags off instant-ngp trains as if the sections were absent, and so does
#: ngp, which has neither feature nor the flags: the sections are validated (so a typo in one is an
#: error), kept in the run's config, and change nothing (docs/compat.md).
INACTIVE_SECTIONS = ("distortion_map", "envmap")
#: The same, under the name ``ngp.train.settings.build_config(..., ignored_sections=...)`` callers use.
IGNORED_KEYS = INACTIVE_SECTIONS
#: Grid encodings whose finest resolution follows the scene's ``aabb_scale`` when not given.
GRID_OTYPES = ("hashgrid", "densegrid", "tiledgrid", "grid")


def parse_nerf_config(source: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A complete NeRF config (model sections and ``training``) from a file or dict, deep-merged over
    ``ngp/configs/nerf/base.json`` by the one merge rule (:func:`ngp.train.settings.build_config`).

    Unknown top-level or ``training`` keys raise :class:`~ngp.config.ConfigError`; ``distortion_map``
    and ``envmap`` are checked (:func:`check_inactive_sections`). Model sections are validated when
    the field and optimizer are built from them.
    """
    config = build_config("nerf", source, ignored_sections=INACTIVE_SECTIONS)
    return check_inactive_sections(config)


def check_inactive_sections(config: dict[str, Any]) -> dict[str, Any]:
    """Validate instant-ngp's ``distortion_map`` and ``envmap`` sections (see
    :data:`INACTIVE_SECTIONS`); returns ``config`` unchanged. Raises ConfigError naming the key.

    Example:
        >>> check_inactive_sections({"distortion_map": {"resolution": [32]}})
        ConfigError: nerf config 'distortion_map': resolution must be [width, height], got [32]
    """
    if "distortion_map" in config:
        what = "nerf config 'distortion_map'"
        section = with_defaults(_section(config, "distortion_map"), {"resolution": [32, 32], "optimizer": None}, what)
        resolution = section["resolution"]
        if not isinstance(resolution, list) or len(resolution) != 2:
            raise ConfigError(f"{what}: resolution must be [width, height], got {resolution!r}")
        for value in resolution:
            require_int(value, "resolution", what, 1)
        if section["optimizer"] is not None:
            parse_optimizer_config(section["optimizer"])
    if "envmap" in config:
        what = "nerf config 'envmap'"
        section = with_defaults(_section(config, "envmap"), {"loss": None, "optimizer": None}, what)
        if section["loss"] is not None:
            build_loss(section["loss"])
        if section["optimizer"] is not None:
            _check_optimizer_chain(section["optimizer"], f"{what} optimizer")
    return config


def _section(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    if not isinstance(config[key], Mapping):
        raise ConfigError(f"nerf config: {key!r} must be a JSON object, got {config[key]!r}")
    return config[key]


def _check_optimizer_chain(config: Any, what: str) -> None:
    """Every ``otype`` of a nested optimizer config is one of tiny-cuda-nn's. Only the types: instant-ngp's
    envmap optimizer carries Shampoo's keys on its Adam, which tiny-cuda-nn's Adam ignores."""
    while config is not None:
        otype = otype_of(config, what)
        known = OPTIMIZER_OTYPES + UNSUPPORTED_OPTIMIZERS
        if otype.lower() not in (name.lower() for name in known):
            raise ConfigError(f"{what}: unknown optimizer otype {otype!r}; known: {list(known)}")
        config = config.get("nested")


def drop_ignored_sections(config: dict[str, Any]) -> dict[str, Any]:
    """The former name of :func:`check_inactive_sections` (which validates and keeps the sections)."""
    return check_inactive_sections(config)


def model_config(config: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """Only the model sections of a (possibly partial) NeRF config, merged over the defaults; a
    ``training`` section is neither needed nor checked here."""
    if isinstance(config, Mapping):
        config = {k: v for k, v in config.items() if k != "training"}
    full = parse_nerf_config(config)
    return {k: full[k] for k in MODEL_KEYS}


class _TruncExp(torch.autograd.Function):
    """``exp(min(x, 15))`` forward; gradient ``exp(min(x, 15))`` everywhere (not 0 above the cap),
    so a sample whose density overshoots can still be pulled back down."""

    @staticmethod
    def forward(ctx, x):
        y = torch.exp(x.clamp(max=MAX_LOG_DENSITY))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * y


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """Density activation: ``exp`` with its argument clamped at 15 (see :class:`_TruncExp`)."""
    return _TruncExp.apply(x)


class NerfField(nn.Module):
    """Density and colour at points in the box ``aabb``.

    Args:
        aabb: ``[2, 3]`` (min corner, max corner) in world units; positions are mapped from it to
            ``[0, 1]^3`` for the hash grid (outside points are clamped to the box's faces).
        aabb_scale: instant-ngp's scene scale; sets the finest grid resolution ``2048 * aabb_scale``
            unless the encoding config gives ``per_level_scale`` or ``finest_resolution``.
        config: a NeRF config (see :func:`parse_nerf_config`); only the model sections are used.
    """

    def __init__(self, aabb: torch.Tensor, aabb_scale: int = 1, config: Mapping[str, Any] | None = None):
        super().__init__()
        config = model_config(config)
        encoding = dict(config["encoding"])
        if otype_of(encoding, "encoding").lower() == "takikawa":
            raise ConfigError("nerf config 'encoding': otype 'Takikawa' is an SDF encoding (its octree is built "
                              "around a mesh); a NeRF has no mesh to build it from")
        if str(encoding.get("otype")).lower() in GRID_OTYPES and \
                "per_level_scale" not in encoding and "finest_resolution" not in encoding:
            encoding["finest_resolution"] = DESIRED_RESOLUTION * aabb_scale
        self.encoding = Encoding(3, encoding)
        self.density_network = Network(self.encoding.n_output_dims, N_GEOMETRY_FEATURES, config["network"])
        # instant-ngp's direction encoding ends with an Identity for optional per-image latent dims;
        # there are none here, and Composite skips a nested encoding left with zero dims
        self.dir_encoding = Encoding(3, config["dir_encoding"])
        self.rgb_network = Network(self.dir_encoding.n_output_dims + N_GEOMETRY_FEATURES, 3,
                                   config["rgb_network"])
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        if not (aabb[1] > aabb[0]).all():
            raise ValueError(f"aabb must be [min corner, max corner] with max > min, got {aabb.tolist()}")
        self.register_buffer("aabb", aabb.clone(), persistent=False)
        self.aabb_scale = int(aabb_scale)
        self.config = config

    def normalize(self, positions: torch.Tensor) -> torch.Tensor:
        """``[S, 3]`` world positions -> ``[S, 3]`` in ``[0, 1]^3`` (the aabb's unit cube)."""
        lo, hi = self.aabb[0], self.aabb[1]
        return torch.sub(positions, lo).div_(hi - lo).clamp_(0.0, 1.0)  # one new tensor, not three

    def _check_positions(self, positions: torch.Tensor) -> None:
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must be [S, 3], got {list(positions.shape)}")

    def encode(self, positions: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[S, 3]`` world positions -> ``[S, n]`` position features (the hash grid's output); with
        ``dtype``, without gradients, rounded to it as they are written (:meth:`Encoding.forward_as`)."""
        self._check_positions(positions)
        x = self.normalize(positions)
        return self.encoding(x) if dtype is None else self.encoding.forward_as(x, dtype)

    def geometry(self, positions: torch.Tensor, features: torch.Tensor | None = None,
                 dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[S, 3]`` world positions -> ``[S, 16]`` density-network outputs (log-density first).

        ``features``: :meth:`encode` of ``positions`` when already computed with the current
        parameters (without gradients): its value is reused and only the encoding's backward runs.
        ``dtype``: rendering without gradients under autocast: the encoding's features and the
        result in the autocast dtype (the numbers float32 would hold, which autocast rounds to it
        anyway: the same colours) without float32 copies and conversions: a fox frame (540x960)
        8.84 -> 8.29 s (medians of 5, alternating in one process, 2 cores).
        """
        self._check_positions(positions)
        x = self.normalize(positions)
        if dtype is not None:
            if features is not None or torch.is_grad_enabled():
                raise ValueError("geometry(dtype=...) is for rendering: without gradients, and without features")
            return self.density_network(self.encoding.forward_as(x, dtype), out_dtype=dtype)
        features = self.encoding(x) if features is None else self.encoding.forward_given(x, features)
        return self.density_network(features)

    def density(self, positions: torch.Tensor) -> torch.Tensor:
        """``[S, 3]`` world positions -> ``[S]`` density sigma >= 0 (per world unit of length)."""
        return self.density_from_features(self.encode(positions))

    def density_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """``[S, n]`` position features (:meth:`encode`) -> ``[S]`` density sigma >= 0.

        Computes only the log-density output of the last layer (a third of the density MLP's work
        when only densities are needed: occupancy-grid updates, meshing, the training pre-pass).
        """
        layers = self.density_network.layers
        n = features.shape[0]
        # rows padded (small calls, such as the pre-pass's last rounds, to PAD_ROWS_MIN): oneDNN's kernels
        # are reused (see pad_rows) where each new row count built one (~1.2-1.9 ms)
        hidden = run_layers(layers[:-2], pad_rows(features, minimum=PAD_ROWS_MIN))
        # float32 before the activation: under autocast the product is float16, where exp overflows
        log_density = layers[-1]((hidden @ layers[-2].weight[:1].t())[:n].float())
        return trunc_exp(log_density[:, 0])

    def forward(self, positions: torch.Tensor, directions: torch.Tensor,
                ray_indices: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Density and colour of samples.

        Args:
            positions: ``[S, 3]`` world positions.
            directions: unit view directions, ``[S, 3]`` per sample, or ``[R, 3]`` per ray together
                with ``ray_indices [S]`` (then the direction encoding runs once per ray).
            ray_indices: optional ``[S]`` int64, the ray of each sample.
            features: optional ``[S, n]``, :meth:`encode` of ``positions`` already computed with the
                current parameters (see :meth:`geometry`).

        Returns:
            ``sigma [S]`` (>= 0) and ``rgb [S, 3]`` (in (0, 1)).
        """
        h = self.geometry(positions, features)
        return trunc_exp(h[:, 0]), self.color(h, directions, ray_indices)

    def direction_features(self, directions: torch.Tensor) -> torch.Tensor:
        """``[R, 3]`` unit view directions -> ``[R, n]`` their encoding, the colour network's first inputs
        (renderers encode a chunk's rays once and hand the result to :meth:`color` round after round)."""
        return self.dir_encoding(((directions + 1.0) * 0.5).clamp(0.0, 1.0))

    def color(self, h: torch.Tensor, directions: torch.Tensor | None, ray_indices: torch.Tensor | None = None,
              rows: torch.Tensor | None = None, direction_features: torch.Tensor | None = None) -> torch.Tensor:
        """``[S, 3]`` colour in (0, 1) from the density network's outputs ``h [S, 16]`` (:meth:`geometry`)
        and the view directions (per sample, or per ray with ``ray_indices``, as :meth:`forward`).

        ``rows [V]`` (with ``ray_indices``): the colour of those samples only, ``[V, 3]``, equal to
        ``color(h[rows], directions, ray_indices[rows])`` without its copies (rendering colours only
        the samples that show). ``direction_features``: :meth:`direction_features` of the directions,
        given instead of them (``directions=None``)."""
        # per-ray directions are encoded once per ray, then gathered (a measured split of the colour
        # network's first layer into per-ray and per-sample parts was slower on CPU: the scatter in
        # its backward costs more than the 16 columns it saves)
        if (directions is None) == (direction_features is None):
            raise ValueError("color() takes either directions or direction_features")
        dir_features = self.direction_features(directions) if direction_features is None else direction_features
        dir_features = dir_features.to(h.dtype)
        if rows is not None:
            if ray_indices is None:
                raise ValueError("color(rows=...) needs ray_indices (per-ray directions)")
            x = gather_cat(dir_features, ray_indices.index_select(0, rows), h, rows)
        elif ray_indices is not None:
            x = torch.cat([dir_features.index_select(0, ray_indices), h], dim=1)
        elif dir_features.shape[0] != h.shape[0]:
            raise ValueError(f"directions [{dir_features.shape[0]}, 3] do not match positions "
                             f"[{h.shape[0]}, 3]; give ray_indices for per-ray directions")
        else:
            x = torch.cat([dir_features, h], dim=1)
        return torch.sigmoid(self.rgb_network(x))

    def extra_repr(self) -> str:
        return f"aabb={self.aabb.tolist()}, aabb_scale={self.aabb_scale}"
