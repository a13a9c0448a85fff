"""Differentiable operations backed by compiled kernels, each with a plain-PyTorch reference.

Every op takes and returns plain tensors and picks its implementation from the tensor's device
(see :mod:`ngp.ops.backend`).
"""

from ngp.ops.backend import backend_for
from ngp.ops.hashgrid import hash_grid_encode

__all__ = ["backend_for", "hash_grid_encode"]
