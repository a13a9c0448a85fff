"""instant-ngp's ``Takikawa`` encoding: learned features on a sparse octree around a surface.

After Takikawa et al. 2021 (*Neural Geometric Level of Detail*), as instant-ngp builds it for SDFs:
an octree of depth ``n_levels`` over the unit cube keeps, at level ``l`` (``2^l`` cells per axis),
the children of kept cells that touch the mesh. Every kept cell's 8 corners carry a feature vector
(``n_features_per_level``, 8 in instant-ngp), shared by the cells of that level meeting there. A point
is encoded at levels ``starting_level .. n_levels - 1`` by trilinear (or smoothstep) interpolation of
its cell's corners; at the first level whose cell is not kept, and every finer one, its features are
zero (instant-ngp stops its octree traversal there). Output ``[N, (n_levels - starting_level) * F]``,
coarsest first, or ``[N, F]``, the sum over levels, with ``sum_instead_of_concat`` (instant-ngp reads
this key but its kernel always concatenates; here it does what it says).

The octree depends on the mesh, so the encoding is built empty and :meth:`Takikawa.build_octree`
fills it from a "does this cell touch the surface?" test (:class:`ngp.sdf.model.NeuralSDF` passes one
made from its mesh). The structure is part of the state dict: a model built from a config alone
takes the octree (and the table's size) from a checkpoint. Plain PyTorch (gathers found by
``torch.searchsorted`` in each level's sorted cell keys), on any device.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ngp.config import ConfigError, require_choice, require_int, with_defaults
from ngp.encodings.base import NESTED_KEYS, Encoding, register_encoding, seeded_generator

TAKIKAWA_DEFAULTS = {
    "n_levels": 8,  # octree depth (levels 0 .. n_levels - 1)
    "starting_level": 0,  # the first level that is encoded
    "n_features_per_level": 8,  # instant-ngp's (its template default); 1, 2, 4 or 8
    "sum_instead_of_concat": False,
    "interpolation": "Linear",
}
#: Deepest supported octree: level 20 has 2^20 cells per axis, whose keys still fit in int64.
MAX_DEPTH = 20
#: Initial features are drawn from U(-INIT_SCALE, INIT_SCALE), as instant-ngp's.
INIT_SCALE = 1e-4
#: ``touches(centres [M, 3], half_size) -> bool [M]``: whether each cube touches the surface.
TouchTest = Callable[[np.ndarray, float], np.ndarray]


def cell_keys(cells: np.ndarray | torch.Tensor, resolution: int):
    """Integer cells ``[..., 3]`` of a ``resolution``-per-axis grid -> linear keys ``x + R y + R^2 z``."""
    return cells[..., 0] + resolution * (cells[..., 1] + resolution * cells[..., 2])


def build_octree_levels(touches: TouchTest, depth: int) -> list[np.ndarray]:
    """The kept cells of each level ``0 .. depth - 1``: ``int64 [n_l, 3]``, sorted by key.

    Level 0 is the unit cube; a child is kept when its parent is and ``touches`` says it meets the
    surface. ``touches`` gets cube centres in ``[0, 1]^3`` and their half edge length.

    Example:
        >>> levels = build_octree_levels(lambda c, h: np.abs(c - 0.5).max(1) <= h, 3)   # cells at the centre
        >>> [len(cells) for cells in levels]
        [1, 8, 8]
    """
    corners = np.array([[(i >> a) & 1 for a in range(3)] for i in range(8)], dtype=np.int64)
    cells = np.zeros((1, 3), dtype=np.int64)
    if not bool(touches(np.full((1, 3), 0.5), 0.5)[0]):
        raise ValueError("Takikawa octree: the surface does not touch the unit cube")
    levels = [cells]
    for level in range(1, depth):
        children = (cells[:, None, :] * 2 + corners[None]).reshape(-1, 3)
        size = 0.5**level
        keep = np.asarray(touches((children + 0.5) * size, size / 2), dtype=bool)
        cells = children[keep]
        cells = cells[np.argsort(cell_keys(cells, 2**level), kind="stable")]
        levels.append(cells)
    return levels


@register_encoding("Takikawa")
class Takikawa(Encoding):
    """See the module doc. ``n_input_dims`` must be 3; inputs are clamped to ``[0, 1]^3``.

    Example:
        >>> enc = Encoding(3, {"otype": "Takikawa", "n_levels": 6, "starting_level": 2})
        >>> enc.build_octree(lambda centres, half: np.abs(np.linalg.norm(centres - 0.5, axis=1) - 0.3)
        ...                  <= half * 3**0.5)
        >>> enc(torch.rand(4, 3)).shape
        torch.Size([4, 32])
    """

    def __init__(self, n_input_dims: int, encoding_config: Mapping[str, Any] | None = None, seed: int | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__(n_input_dims, seed=seed, dtype=dtype)
        what = "encoding 'Takikawa'"
        if n_input_dims != 3:
            raise ConfigError(f"{what} encodes 3-D points (an SDF's), got n_input_dims={n_input_dims}")
        config = with_defaults(encoding_config or {}, TAKIKAWA_DEFAULTS, what, NESTED_KEYS)
        self.depth = require_int(config["n_levels"], "n_levels", what, 1, MAX_DEPTH)
        self.starting_level = require_int(config["starting_level"], "starting_level", what, 0, self.depth - 1)
        self.n_features = require_int(config["n_features_per_level"], "n_features_per_level", what, 1, 8)
        if self.n_features not in (1, 2, 4, 8):
            raise ConfigError(f"{what}: n_features_per_level={self.n_features} not supported; expected 1, 2, 4 or 8")
        if not isinstance(config["sum_instead_of_concat"], bool):
            raise ConfigError(f"{what}: sum_instead_of_concat must be true or false")
        self.sum_levels = config["sum_instead_of_concat"]
        self.interpolation = require_choice(config["interpolation"], ("Linear", "Smoothstep"), "interpolation", what)
        self.levels = list(range(self.starting_level, self.depth))
        self.n_output_dims = self.n_features * (1 if self.sum_levels else len(self.levels))
        parameter_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.table = nn.Parameter(torch.zeros(0, self.n_features, dtype=parameter_dtype))
        for level in self.levels:  # filled by build_octree or by a checkpoint (see _load_from_state_dict)
            self.register_buffer(f"cells_{level}", torch.zeros(0, dtype=torch.int64))
            self.register_buffer(f"corners_{level}", torch.zeros(0, 8, dtype=torch.int64))

    @property
    def built(self) -> bool:
        return self.table.shape[0] > 0

    @torch.no_grad()
    def build_octree(self, touches: TouchTest) -> None:
        """Build the octree from ``touches`` (see :func:`build_octree_levels`) and (re)initialise the
        features: one row per distinct corner of each encoded level's kept cells."""
        all_levels = build_octree_levels(touches, self.depth)
        corners = np.array([[(i >> a) & 1 for a in range(3)] for i in range(8)], dtype=np.int64)
        first_row = 0
        for level in self.levels:
            cells = all_levels[level]
            vertex_keys = cell_keys(cells[:, None, :] + corners[None], 2**level + 1)  # [n, 8]
            unique, inverse = np.unique(vertex_keys, return_inverse=True)
            device = self.table.device
            setattr(self, f"cells_{level}", torch.from_numpy(cell_keys(cells, 2**level)).to(device))
            rows = torch.from_numpy(inverse.reshape(-1, 8).astype(np.int64) + first_row)
            setattr(self, f"corners_{level}", rows.to(device))
            first_row += len(unique)
        table = torch.empty(first_row, self.n_features, dtype=self.table.dtype)
        table.uniform_(-INIT_SCALE, INIT_SCALE, generator=seeded_generator(self.seed))
        self.table = nn.Parameter(table.to(self.table.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if not self.built:
            raise RuntimeError("Takikawa encoding: no octree yet; build_octree(...) from the surface first "
                               "(ngp's SDF model does it from its mesh) or load a checkpoint")
        x = x.to(self.table.dtype).clamp(0.0, 1.0)
        bits = torch.tensor([[(i >> a) & 1 for a in range(3)] for i in range(8)], dtype=torch.bool, device=x.device)
        outputs = []
        for level in self.levels:
            resolution = 2**level
            pos = x * resolution
            cell = torch.floor(pos.detach()).clamp(max=resolution - 1)
            frac = pos - cell
            w = frac * frac * (3.0 - 2.0 * frac) if self.interpolation == "Smoothstep" else frac
            keys, corners = getattr(self, f"cells_{level}"), getattr(self, f"corners_{level}")
            key = cell_keys(cell.long(), resolution)
            index = torch.searchsorted(keys, key).clamp(max=max(len(keys) - 1, 0))
            found = keys[index] == key if len(keys) else torch.zeros_like(key, dtype=torch.bool)
            rows = corners[index] if len(keys) else torch.zeros(len(key), 8, dtype=torch.int64, device=x.device)
            weights = torch.where(bits[None], w[:, None, :], 1.0 - w[:, None, :]).prod(dim=-1)  # [N, 8]
            feature = (weights[..., None] * self.table[rows]).sum(dim=1)
            outputs.append(feature * found[:, None].to(feature.dtype))
        features = sum(outputs) if self.sum_levels else torch.cat(outputs, dim=1)
        return self.output(features)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # The octree's size is the checkpoint's: resize the structure and the table before the copy.
        for level in self.levels:
            for name in (f"cells_{level}", f"corners_{level}"):
                saved = state_dict.get(prefix + name)
                if isinstance(saved, torch.Tensor):
                    setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        saved = state_dict.get(prefix + "table")
        if isinstance(saved, torch.Tensor) and saved.dim() == 2 and saved.shape[1] == self.n_features:
            self.table.data = self.table.data.new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, levels={self.starting_level}..{self.depth - 1}, features={self.n_features}, "
                f"rows={self.table.shape[0]}, interpolation={self.interpolation}, sum={self.sum_levels}")
