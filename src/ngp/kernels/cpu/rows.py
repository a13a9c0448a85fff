"""Numba kernel of :func:`ngp.ops.rows.gather_cat` (CPU): rows of two tables gathered and joined in
one pass, as :func:`ngp.kernels.reference.rows.gather_cat` defines them (tests compare them).

Rows are moved as 8-byte words whatever their element type (the numbers are copied, not computed:
bfloat16, which Numba cannot name, works as well as float32), so each row must be a whole number of
words; :func:`ngp.ops.rows.gather_cat` checks and otherwise takes the reference.
"""

from __future__ import annotations

import torch
from numba import njit, prange

__all__ = ["gather_cat", "WORD_BYTES"]

#: Rows are copied in words of this many bytes.
WORD_BYTES = 8


@njit(parallel=True, fastmath=False, cache=True)
def _gather_cat(a, a_index, b, b_index, out):
    width_a = a.shape[1]
    for k in prange(out.shape[0]):
        i, j = a_index[k], b_index[k]
        for c in range(width_a):
            out[k, c] = a[i, c]
        for c in range(b.shape[1]):
            out[k, width_a + c] = b[j, c]


def gather_cat(a: torch.Tensor, a_index: torch.Tensor, b: torch.Tensor, b_index: torch.Tensor) -> torch.Tensor:
    """``torch.cat([a[a_index], b[b_index]], 1)`` for contiguous CPU ``a``, ``b`` of one dtype whose rows
    are whole words, int64 indices in range (checked by the caller)."""
    out = torch.empty(a_index.shape[0], a.shape[1] + b.shape[1], dtype=a.dtype)
    _gather_cat(_words(a), a_index.contiguous().numpy(), _words(b), b_index.contiguous().numpy(), _words(out))
    return out


def _words(t: torch.Tensor):
    """A zero-copy NumPy view of ``t``'s rows as 8-byte words."""
    return t.contiguous().view(torch.int64).numpy()
