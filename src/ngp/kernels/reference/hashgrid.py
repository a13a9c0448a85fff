"""Plain-PyTorch definition of the multiresolution hash encoding.

This file is the *specification*: every compiled kernel (Numba on the CPU, Triton on the GPU) is
tested against it. It favours clarity over speed and is fully differentiable by autograd with respect
to both the table and the input coordinates (also twice, for gradcheck and eikonal-style losses).

Conventions (Müller et al. 2022, section 3):

* Level ``l`` has resolution ``N_l = floor(N_min * b**l)``; a point ``x in [0, 1]^d`` is scaled to
  ``x * N_l`` and falls into the cell ``floor(x * N_l)`` (clamped to ``N_l - 1`` so that ``x = 1`` lies
  in the last cell). A level therefore has ``N_l + 1`` vertices per axis.
* Levels with ``(N_l + 1)^d <= T`` index their vertices 1:1 (``sum_i c_i (N_l + 1)^i``); finer levels
  use the spatial hash ``(xor_i c_i * pi_i) mod T`` with ``pi = 1, 2654435761, 805459861, ...``
  computed in 32-bit unsigned arithmetic, exactly as in the paper.
* Coordinates outside ``[0, 1]`` are clamped to it (their gradient is zero there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Hash primes of the paper / tiny-cuda-nn; the first is 1 for better cache coherence.
PRIMES = (1, 2654435761, 805459861, 3674653429)

#: Interpolation kinds, by tiny-cuda-nn name; the integer is what kernels receive.
INTERPOLATIONS = {"Nearest": 0, "Linear": 1, "Smoothstep": 2}

MAX_DIMS = len(PRIMES)


@dataclass(frozen=True)
class GridLayout:
    """Geometry of a multiresolution grid: everything a kernel needs besides the table itself.

    ``offsets[l]:offsets[l+1]`` are the table rows owned by level ``l``; ``hashed[l]`` says whether
    that level uses the spatial hash (``True``) or 1:1 indexing.
    """

    n_dims: int
    n_features: int
    resolutions: tuple[int, ...]
    offsets: tuple[int, ...]
    hashed: tuple[bool, ...]

    @property
    def n_levels(self) -> int:
        return len(self.resolutions)

    @property
    def n_rows(self) -> int:
        return self.offsets[-1]

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features

    @staticmethod
    def create(
        n_dims: int,
        n_levels: int,
        n_features: int,
        log2_hashmap_size: int,
        base_resolution: int,
        per_level_scale: float,
        hash: bool = True,
    ) -> "GridLayout":
        """Build the layout of a hash grid (``hash=True``) or a dense grid (``hash=False``)."""
        if not 1 <= n_dims <= MAX_DIMS:
            raise ValueError(f"grid encodings support 1 to {MAX_DIMS} input dimensions, got {n_dims}")
        hashmap_size = 2**log2_hashmap_size
        resolutions, offsets, hashed = [], [0], []
        for level in range(n_levels):
            # The tiny epsilon keeps e.g. 16 * 2**(log2(128)/...) from rounding down to 127.
            res = int(math.floor(base_resolution * per_level_scale**level + 1e-6))
            dense_rows = (res + 1) ** n_dims
            is_hashed = hash and dense_rows > hashmap_size
            resolutions.append(res)
            hashed.append(is_hashed)
            offsets.append(offsets[-1] + (hashmap_size if is_hashed else dense_rows))
        return GridLayout(n_dims, n_features, tuple(resolutions), tuple(offsets), tuple(hashed))


def corner_indices(cell: torch.Tensor, level: int, layout: GridLayout) -> torch.Tensor:
    """Table row (within the level) of integer grid vertices ``cell`` ([..., d] int64) -> [...]."""
    res = layout.resolutions[level]
    size = layout.offsets[level + 1] - layout.offsets[level]
    if layout.hashed[level]:
        return spatial_hash(cell, size)
    index = torch.zeros(cell.shape[:-1], dtype=torch.int64, device=cell.device)
    stride = 1
    for i in range(layout.n_dims):
        index += cell[..., i] * stride
        stride *= res + 1
    return index


def spatial_hash(cell: torch.Tensor, hashmap_size: int) -> torch.Tensor:
    """The paper's spatial hash of integer vertices ``cell`` ([..., d]) -> [...] in ``[0, T)``."""
    index = torch.zeros(cell.shape[:-1], dtype=torch.int64, device=cell.device)
    for i in range(cell.shape[-1]):
        index ^= (cell[..., i].long() * PRIMES[i]) & 0xFFFFFFFF
    return index % hashmap_size


def interpolation_weights(frac: torch.Tensor, interpolation: str) -> torch.Tensor:
    """Per-axis weight of the upper corner, from the position inside the cell (``frac`` in [0, 1])."""
    if interpolation == "Linear":
        return frac
    if interpolation == "Smoothstep":
        return frac * frac * (3.0 - 2.0 * frac)
    if interpolation == "Nearest":
        return (frac >= 0.5).to(frac.dtype)
    raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {sorted(INTERPOLATIONS)}")


def hash_grid_encode(
    x: torch.Tensor, table: torch.Tensor, layout: GridLayout, interpolation: str = "Linear"
) -> torch.Tensor:
    """Encode points with a multiresolution (hash) grid.

    Args:
        x: ``[N, d]`` coordinates in ``[0, 1]^d`` (clamped to it).
        table: ``[layout.n_rows, F]`` feature vectors of all levels, stacked.
        layout: the grid's geometry (see :class:`GridLayout`).
        interpolation: ``"Linear"`` (d-linear), ``"Smoothstep"`` or ``"Nearest"``.

    Returns:
        ``[N, L * F]`` features, level by level (level 0's ``F`` values first).

    Example:
        >>> layout = GridLayout.create(2, n_levels=4, n_features=2, log2_hashmap_size=10,
        ...                            base_resolution=4, per_level_scale=2.0)
        >>> table = torch.randn(layout.n_rows, 2)
        >>> hash_grid_encode(torch.rand(5, 2), table, layout).shape
        torch.Size([5, 8])
    """
    d = layout.n_dims
    x = x.clamp(0.0, 1.0)
    corners = torch.tensor(
        [[(c >> i) & 1 for i in range(d)] for c in range(2**d)], dtype=torch.int64, device=x.device
    )  # [2^d, d]
    outputs = []
    for level in range(layout.n_levels):
        res = layout.resolutions[level]
        pos = x * res
        cell = torch.floor(pos.detach()).clamp(max=res - 1).long()  # [N, d]
        w_upper = interpolation_weights(pos - cell.to(pos.dtype), interpolation)  # [N, d]
        vertices = cell[:, None, :] + corners[None]  # [N, 2^d, d]
        rows = corner_indices(vertices, level, layout) + layout.offsets[level]  # [N, 2^d]
        weights = torch.where(corners[None].bool(), w_upper[:, None, :], 1.0 - w_upper[:, None, :])
        weights = weights.prod(dim=-1)  # [N, 2^d]
        outputs.append((weights[..., None] * table[rows]).sum(dim=1))  # [N, F]
    return torch.cat(outputs, dim=-1)
