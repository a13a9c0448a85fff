"""Triton Adam step: one pass over the parameters on the GPU (the definition is
:func:`ngp.kernels.reference.adam.adam_step_`; the Numba twin is :mod:`ngp.kernels.cpu.adam`).

The reference's chain of tensor operations reads and writes a hash table of millions of entries about
a dozen times per step (and, for tables, evaluates two float64 powers per entry); this kernel reads
each of param, grad and the two moments once and writes them once.

Tables (``param_steps`` given): entries whose gradient is exactly zero are left alone, the others
advance their own step count and take the bias correction of that count from a small lookup table
``sqrt(1 - beta2^t) / (1 - beta1^t)`` computed in float64 on the host, kept on the device and grown
by doubling (a step's table is at most the global step count long).

float32 parameters only (``supports``); others fall back to the reference.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ngp.kernels.triton import check_device, interpreting, kernels_for_mode

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still imports; calling the kernel raises a clear error
    triton = tl = None

#: Whether this module's kernels were decorated for Triton's interpreter (see kernels_for_mode).
INTERPRETED = interpreting()
BLOCK = 1024


def _jit(fn):
    return triton.jit(fn) if triton is not None else fn


@_jit
def _adam_kernel(param_ptr, grad_ptr, m_ptr, v_ptr, steps_ptr, corrections_ptr, n, lr, beta1, beta2, eps,
                 l2_reg, SPARSE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0)
    if SPARSE:
        # untouched table entries: no update, no moment decay, no step (tiny-cuda-nn)
        mask = mask & (g != 0.0)
    p = tl.load(param_ptr + offs, mask=mask, other=0.0)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    g = g + l2_reg * p
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    if SPARSE:
        count = tl.load(steps_ptr + offs, mask=mask, other=0) + 1
        tl.store(steps_ptr + offs, count, mask=mask)
        size = lr * tl.load(corrections_ptr + count, mask=mask, other=0.0)
    else:
        size = lr  # the host folded the bias correction in
    tl.store(m_ptr + offs, m, mask=mask)
    tl.store(v_ptr + offs, v, mask=mask)
    tl.store(param_ptr + offs, p - size * m / (tl.sqrt(v) + eps), mask=mask)


_corrections: dict[tuple[float, float, torch.device], torch.Tensor] = {}


def bias_corrections(beta1: float, beta2: float, count: int, device: torch.device) -> torch.Tensor:
    """float32 ``[>= count + 1]``: ``sqrt(1 - beta2^t) / (1 - beta1^t)`` for ``t = 0..`` (t = 0 unused),
    computed in float64, cached per device and grown by doubling."""
    key = (float(beta1), float(beta2), torch.device(device))
    table = _corrections.get(key)
    if table is None or table.numel() <= count:
        size = 1 << max(10, int(count).bit_length())
        t = np.arange(size, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        table = torch.from_numpy(np.nan_to_num(values).astype(np.float32)).to(device)
        _corrections[key] = table
    return table


def adam_step_(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, l2_reg, param_steps=None) -> None:
    """Same contract as :func:`ngp.kernels.reference.adam.adam_step_`; float32, contiguous, one device."""
    tensors = (param, grad, exp_avg, exp_avg_sq) + ((param_steps,) if param_steps is not None else ())
    check_device(*tensors)
    if not supports(*tensors[:4]):
        raise ValueError("the Triton Adam kernel takes contiguous float32 tensors")
    n = param.numel()
    if n == 0:
        return
    if param_steps is None:
        # one step size for all entries: a scalar argument (in float64 here, float32 in the kernel)
        lr = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        steps = corrections = param  # pointers the dense variant never reads
    else:
        if param_steps.dtype != torch.int32 or not param_steps.is_contiguous():
            raise ValueError(f"param_steps must be contiguous int32, got {param_steps.dtype}")
        corrections = bias_corrections(beta1, beta2, step, param.device)
        steps = param_steps
    grid = (triton.cdiv(n, BLOCK),)
    kernels_for_mode(__name__)._adam_kernel[grid](
        param, grad, exp_avg, exp_avg_sq, steps, corrections, n, float(lr), float(beta1), float(beta2),
        float(eps), float(l2_reg), SPARSE=param_steps is not None, BLOCK=BLOCK,
        enable_fp_fusion=True,  # explicit: Triton 3.9 warns when left to its changing default
    )


def supports(*tensors: torch.Tensor) -> bool:
    """Whether the kernel takes these tensors: float32, contiguous (device checked when launching)."""
    return all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
