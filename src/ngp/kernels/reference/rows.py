"""Plain-PyTorch definition of :func:`ngp.ops.rows.gather_cat` (the specification its kernels match)."""

from __future__ import annotations

import torch


def gather_cat(a: torch.Tensor, a_index: torch.Tensor, b: torch.Tensor, b_index: torch.Tensor) -> torch.Tensor:
    """``[M, Ca + Cb]``: row ``a_index[k]`` of ``a [Na, Ca]`` joined to row ``b_index[k]`` of ``b [Nb, Cb]``."""
    return torch.cat([a.index_select(0, a_index), b.index_select(0, b_index)], dim=1)
