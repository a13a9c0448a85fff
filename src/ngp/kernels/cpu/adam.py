"""Numba Adam step: one parallel pass over the parameters (see the reference for the definition).

A hash table has millions of entries; the reference's chain of tensor operations reads and writes
them a dozen times per step, this loop once.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np
import torch


@nb.njit(parallel=True, fastmath=True, cache=True)
def _adam_dense(param, grad, exp_avg, exp_avg_sq, step_size, beta1, beta2, eps, l2_reg):
    for i in nb.prange(param.shape[0]):
        g = grad[i] + l2_reg * param[i]
        m = beta1 * exp_avg[i] + (1.0 - beta1) * g
        v = beta2 * exp_avg_sq[i] + (1.0 - beta2) * g * g
        exp_avg[i] = m
        exp_avg_sq[i] = v
        param[i] -= step_size * m / (math.sqrt(v) + eps)


@nb.njit(parallel=True, fastmath=True, cache=True)
def _adam_sparse(param, grad, exp_avg, exp_avg_sq, param_steps, step_sizes, beta1, beta2, eps, l2_reg, average,
                 average_weight):
    for i in nb.prange(param.shape[0]):
        # Written without a branch: every entry is computed and stored, an untouched one (zero
        # gradient: no update, no moment decay, no step, as tiny-cuda-nn) stores its old values back.
        # The loop then vectorises like the dense one: 8 ms instead of 15-21 ms over 16.8 M entries
        # with a branch that skipped untouched entries, whatever share had a gradient, and
        # bit-identical results (measured). Reading and writing every entry also keeps the state's
        # memory in use (see adam_step_).
        g = grad[i]
        touched = g != 0.0
        p, m0, v0, s0 = param[i], exp_avg[i], exp_avg_sq[i], param_steps[i]
        g += l2_reg * p
        m = beta1 * m0 + (1.0 - beta1) * g
        v = beta2 * v0 + (1.0 - beta2) * g * g
        s = s0 + 1 if touched else s0
        exp_avg[i] = m if touched else m0
        exp_avg_sq[i] = v if touched else v0
        param_steps[i] = s
        p = p - step_sizes[s] * m / (math.sqrt(v) + eps) if touched else p
        param[i] = p
        if average is not None:  # None: Numba compiles the kernel without this line
            a = average[i]
            average[i] = a + average_weight * (p - a)


def adam_step_(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, l2_reg, param_steps=None,
               average=None, average_weight=0.0) -> None:
    """Same contract as :func:`ngp.kernels.reference.adam.adam_step_`; CPU, contiguous tensors.

    ``average`` (with ``param_steps``): a tensor like ``param`` that also takes one step of an exponential
    moving average of the updated parameter, ``average += average_weight * (param - average)`` (what
    :class:`ngp.optim.ExponentialMovingAverage` does after the step), in the same pass: the separate
    ``torch._foreach_lerp_`` read the table again (12.2 M entries: 13.5 -> 11.7 ms for both, measured).
    """
    if average is not None and param_steps is None:
        raise ValueError("adam_step_: an average is moved only by the sparse step (with param_steps)")
    views = [t.detach().view(-1).numpy() for t in (param, grad, exp_avg, exp_avg_sq)]
    if param_steps is None:
        step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        _adam_dense(*views, np.float64(step_size), beta1, beta2, eps, l2_reg)
    else:
        # Bias-corrected step sizes for every count an entry can have (<= the global step): a table
        # lookup instead of two powers per entry, which cost ~9x the rest of the update.
        counts = np.arange(step + 1, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            step_sizes = lr * np.sqrt(1.0 - beta2**counts) / (1.0 - beta1**counts)
        step_sizes[0] = 0.0  # count 0 (never updated) is looked up for untouched entries: keep it finite
        # The sparse kernel also reads (and writes back) the state of the entries it leaves alone.
        # Entries that get no gradient for many steps (the masked levels of coarse-to-fine training,
        # empty space) would otherwise leave whole pages of the moments untouched; on machines whose
        # kernel reclaims cold memory (DAMON's pageout, seen on the project's 2-core VMs) such huge
        # pages were split and the step over the table went from 13 ms to 0.2-0.55 s, on the same
        # data, while a copy of the tensors took 14-28 ms.
        averages = None if average is None else average.detach().view(-1).numpy()
        _adam_sparse(*views, param_steps.view(-1).numpy(), step_sizes, beta1, beta2, eps, l2_reg, averages,
                     np.float32(average_weight) if param.dtype == torch.float32 else np.float64(average_weight))


def supports(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and t.is_contiguous()
               for t in tensors)
