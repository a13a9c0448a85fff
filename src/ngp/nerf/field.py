"""The radiance field of the paper (section 5.4): a hash-encoded density MLP and a colour MLP.

::

    position x [S,3] (world) --normalise to the aabb--> [0,1]^3 --HashGrid--> [S, L*F]
        --density MLP (64 neurons, 1 hidden layer)--> h [S,16];  sigma = exp(h[:, 0])
    view direction d [S,3] --(d+1)/2--> SphericalHarmonics (degree 4) [S,16]
    [SH(d), h] [S,32] --colour MLP (64 neurons, 2 hidden layers)--> sigmoid --> rgb [S,3]

Built from an instant-ngp ``configs/nerf/*.json``-shaped config with the keys ``loss``,
``optimizer``, ``encoding``, ``network``, ``dir_encoding``, ``rgb_network`` (defaults in
``ngp/configs/nerf/base.json``, see :func:`parse_nerf_config`). As instant-ngp, a HashGrid
without ``per_level_scale`` reaches the finest resolution ``2048 * aabb_scale``.

Example::

    >>> field = NerfField(aabb=torch.tensor([[0.0] * 3, [1.0] * 3]))
    >>> sigma, rgb = field(torch.rand(8, 3), torch.nn.functional.normalize(torch.randn(8, 3), dim=-1))
    >>> sigma.shape, rgb.shape
    (torch.Size([8]), torch.Size([8, 3]))
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ngp.encodings import Encoding
from ngp.networks import Network
from ngp.train.settings import build_config, default_config

__all__ = ["NerfField", "DEFAULT_CONFIG", "MODEL_KEYS", "model_config", "parse_nerf_config", "trunc_exp",
           "DESIRED_RESOLUTION"]

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
#: instant-ngp sections for features this implementation does not have (learned lens distortion,
#: environment map): accepted so that instant-ngp's own configs load, and reported as ignored.
IGNORED_KEYS = ("distortion_map", "envmap")


def parse_nerf_config(source: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A complete NeRF config (model sections and ``training``) from a file or dict, deep-merged over
    ``ngp/configs/nerf/base.json`` by the one merge rule (:func:`ngp.train.settings.build_config`).

    Unknown top-level or ``training`` keys raise :class:`~ngp.config.ConfigError`; ``distortion_map``
    and ``envmap`` (instant-ngp features not implemented here) are dropped with a warning. Model
    sections are validated when the field and optimizer are built from them.
    """
    config = build_config("nerf", source, ignored_sections=IGNORED_KEYS)
    return drop_ignored_sections(config)


def drop_ignored_sections(config: dict[str, Any]) -> dict[str, Any]:
    """Remove (with a warning) the instant-ngp sections this implementation ignores."""
    ignored = [k for k in IGNORED_KEYS if k in config]
    if ignored:
        warnings.warn(f"NeRF config: section(s) {', '.join(ignored)} are ignored (not implemented)",
                      stacklevel=3)
    for key in ignored:
        del config[key]
    return config


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


def _direction_encoding_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """instant-ngp's direction encoding is ``Composite[SH(3 dims), Identity(rest)]``, where the rest
    are optional per-image latent dims. We have none, so a trailing nested encoding without
    ``n_dims_to_encode`` that would get zero dims is dropped rather than rejected."""
    config = copy.deepcopy(dict(config))
    nested = config.get("nested")
    if config.get("otype") == "Composite" and isinstance(nested, list) and len(nested) > 1:
        counted = sum(int(n.get("n_dims_to_encode", 0)) for n in nested[:-1] if isinstance(n, Mapping))
        if counted == 3 and isinstance(nested[-1], Mapping) and "n_dims_to_encode" not in nested[-1]:
            config["nested"] = nested[:-1]
    return config


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
        if encoding.get("otype") in ("HashGrid", "DenseGrid", "Grid") and \
                "per_level_scale" not in encoding and "finest_resolution" not in encoding:
            encoding["finest_resolution"] = DESIRED_RESOLUTION * aabb_scale
        self.encoding = Encoding(3, encoding)
        self.density_network = Network(self.encoding.n_output_dims, N_GEOMETRY_FEATURES, config["network"])
        self.dir_encoding = Encoding(3, _direction_encoding_config(config["dir_encoding"]))
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
        return ((positions - lo) / (hi - lo)).clamp(0.0, 1.0)

    def geometry(self, positions: torch.Tensor) -> torch.Tensor:
        """``[S, 3]`` world positions -> ``[S, 16]`` density-network outputs (log-density first)."""
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must be [S, 3], got {list(positions.shape)}")
        features = self.encoding(self.normalize(positions))
        return self.density_network(features)

    def density(self, positions: torch.Tensor) -> torch.Tensor:
        """``[S, 3]`` world positions -> ``[S]`` density sigma >= 0 (per world unit of length).

        Computes only the log-density output of the last layer (a third of the density MLP's work
        when only densities are needed: occupancy-grid updates, meshing).
        """
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must be [S, 3], got {list(positions.shape)}")
        layers = self.density_network.layers
        hidden = layers[:-2](self.encoding(self.normalize(positions)))
        # float32 before the activation: under autocast the product is float16, where exp overflows
        log_density = layers[-1]((hidden @ layers[-2].weight[:1].t()).float())
        return trunc_exp(log_density[:, 0])

    def forward(self, positions: torch.Tensor, directions: torch.Tensor,
                ray_indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Density and colour of samples.

        Args:
            positions: ``[S, 3]`` world positions.
            directions: unit view directions, ``[S, 3]`` per sample, or ``[R, 3]`` per ray together
                with ``ray_indices [S]`` (then the direction encoding runs once per ray).
            ray_indices: optional ``[S]`` int64, the ray of each sample.

        Returns:
            ``sigma [S]`` (>= 0) and ``rgb [S, 3]`` (in (0, 1)).
        """
        h = self.geometry(positions)
        sigma = trunc_exp(h[:, 0])
        # per-ray directions are encoded once per ray, then gathered (a measured split of the colour
        # network's first layer into per-ray and per-sample parts was slower on CPU: the scatter in
        # its backward costs more than the 16 columns it saves)
        dir_features = self.dir_encoding(((directions + 1.0) * 0.5).clamp(0.0, 1.0)).to(h.dtype)
        if ray_indices is not None:
            dir_features = dir_features.index_select(0, ray_indices)
        elif dir_features.shape[0] != h.shape[0]:
            raise ValueError(f"directions [{dir_features.shape[0]}, 3] do not match positions "
                             f"[{h.shape[0]}, 3]; give ray_indices for per-ray directions")
        rgb = torch.sigmoid(self.rgb_network(torch.cat([dir_features, h], dim=1)))
        return sigma, rgb

    def extra_repr(self) -> str:
        return f"aabb={self.aabb.tolist()}, aabb_scale={self.aabb_scale}"
