"""The hash-grid encoding as a differentiable op (placeholder: reference only, kernels to come)."""

from __future__ import annotations

import torch

from ngp.kernels.reference import hashgrid as reference
from ngp.kernels.reference.hashgrid import GridLayout


def hash_grid_encode(
    x: torch.Tensor, table: torch.Tensor, layout: GridLayout, interpolation: str = "Linear"
) -> torch.Tensor:
    """``[N, d]`` points in ``[0, 1]^d`` -> ``[N, L*F]`` features; see the reference for the definition."""
    return reference.hash_grid_encode(x, table, layout, interpolation)
