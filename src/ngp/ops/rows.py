"""Row operations on plain tensors, backed by a compiled kernel where one pays.

Example::

    >>> x = gather_cat(dir_features, ray_indices, h, torch.arange(h.shape[0]))  # [S, 16 + 16]
"""

from __future__ import annotations

import torch

from ngp.kernels.reference import rows as reference
from ngp.ops.backend import backend_for

__all__ = ["gather_cat"]


def gather_cat(a: torch.Tensor, a_index: torch.Tensor, b: torch.Tensor, b_index: torch.Tensor) -> torch.Tensor:
    """Rows of two tables gathered and joined: ``torch.cat([a[a_index], b[b_index]], dim=1)``.

    Args:
        a: ``[Na, Ca]``; b: ``[Nb, Cb]``, the same dtype.
        a_index, b_index: ``int64 [M]`` row numbers into ``a`` and ``b``.

    Returns ``[M, Ca + Cb]``. Without gradients on the CPU (Numba backend) one pass writes the result:
    building a colour network's inputs from a fox frame's bfloat16 features and direction
    encodings took 0.79 ms per 170k rows against 2.5 ms for the indexing and ``cat`` (one process, 2
    cores). Differentiable (plain PyTorch) when an input requires gradients.

    Example:
        >>> gather_cat(torch.eye(2), torch.tensor([1, 1]), torch.ones(3, 1), torch.tensor([0, 2]))
        tensor([[0., 1., 1.],
                [0., 1., 1.]])
    """
    for name, t in (("a", a), ("b", b)):
        if t.ndim != 2:
            raise ValueError(f"{name} must be a [rows, columns] table, got {tuple(t.shape)}")
    for name, index in (("a_index", a_index), ("b_index", b_index)):
        if index.ndim != 1 or index.dtype != torch.int64:
            raise ValueError(f"{name} must be int64 [M], got {index.dtype} {tuple(index.shape)}")
    if a_index.shape != b_index.shape:
        raise ValueError(f"a_index {tuple(a_index.shape)} and b_index {tuple(b_index.shape)} must match")
    if a.dtype != b.dtype:
        raise ValueError(f"a ({a.dtype}) and b ({b.dtype}) must have one dtype")
    wants_grad = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    if wants_grad or backend_for(a.device) != "numba" or not _whole_words(a, b) or not a_index.numel():
        return reference.gather_cat(a, a_index, b, b_index)
    for name, index, n in (("a_index", a_index, a.shape[0]), ("b_index", b_index, b.shape[0])):
        low, high = torch.aminmax(index)
        if int(low) < 0 or int(high) >= n:  # the kernel does not check
            raise IndexError(f"{name} holds rows {int(low)}..{int(high)} outside 0..{n - 1}")
    from ngp.kernels.cpu import rows as kernels

    return kernels.gather_cat(a, a_index, b, b_index)


def _whole_words(a: torch.Tensor, b: torch.Tensor) -> bool:
    from ngp.kernels.cpu.rows import WORD_BYTES

    return all(t.shape[1] * t.element_size() % WORD_BYTES == 0 for t in (a, b))
