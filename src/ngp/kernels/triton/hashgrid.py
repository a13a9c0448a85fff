"""Triton kernels of the multiresolution hash encoding (GPU; CPU tensors under ``TRITON_INTERPRET=1``).

The definition lives in :mod:`ngp.kernels.reference.hashgrid`; these kernels compute the same numbers
(``tests/test_triton_kernels.py`` compares them). The module mirrors the Numba module
:mod:`ngp.kernels.cpu.hashgrid`, with torch tensors (on a CUDA device, or the CPU under the
interpreter) instead of NumPy arrays:

* the kernel-family interface of :mod:`ngp.ops.hashgrid`:

  - ``forward(x, table, layout, interpolation) -> [N, L*F]`` in ``x.dtype`` (the compute dtype);
  - ``backward(grad_out, x, table, layout, interpolation, needs_table_grad, needs_x_grad)
    -> (grad_table [rows, F] in the float32 accumulator (float64 for float64) or None,
    grad_x [N, d] or None)``;

* the launchers, writing into tensors the caller allocates:

  - ``encode(x, table, meta, scales, interp, out)``: ``out [N, L*F]`` (overwritten);
  - ``table_grad(x, grad_out, meta, scales, interp, grad_table)``: ``grad_table [rows, F]``
    (overwritten; float32 or float64, see below);
  - ``input_grad(x, table, grad_out, meta, scales, interp, grad_x)``: ``grad_x [N, d]`` (overwritten);

  ``meta`` is the per-level ``int64 [L, 8]`` table of :func:`level_table` (columns ``RES, OFFSET,
  SIZE, HASHED, MASK, STRIDE1..3``, the Numba module's), ``scales`` the float resolutions ``[L]``;
  :func:`constants` builds both once per layout and device.

Precision: the table may be stored in float16, float32 or float64. Positions, weights and sums are
computed in float32 (float64 when ``x`` or the table is float64) whatever the storage, so float16
tables are best used with float32 ``x`` (float16 coordinates cannot resolve a cell of a 2048^3 grid).
The table gradient is accumulated in a float32 (float64) buffer: atomic adds of many points into one
row would lose most of their bits in float16. ``backward`` returns that buffer as it is: it is the
gradient of the float32 master parameter whose float16 copy the op passed in (straight-through, see
:func:`ngp.ops.hash_grid_encode` and its ``storage_dtype``).

GPU layout:

* forward and table gradient: a 2-D launch grid ``(point blocks, levels)``; point blocks vary fastest,
  so the blocks running at one time mostly read one level's table (it stays in L2);
* table gradient: ``tl.atomic_add`` of float32 values into the float32 buffer;
* input gradient: one program per point block loops over the levels (no atomics, deterministic);
* ``d`` (1 to 4), ``F`` (1, 2, 4, 8) and the interpolation are compile-time constants; the ``2**d``
  corner loop is unrolled.
* Kernels use Triton *builtins* only, none of ``triton.language.standard``'s ``@jit`` helpers
  (``tl.sum``, ``tl.zeros``, ``tl.cdiv``, ...): those are decorated when ``triton`` is imported, so
  they would stay compiled-mode functions, unusable by the interpreter, whenever ``triton`` was
  imported before ``TRITON_INTERPRET=1`` was set.

Hashing is the reference's, for every hash function (``HASH``, a compile-time constant: the default
``CoherentPrime``, ``(xor_i c_i * pi_i) mod 2^32``, compiles to the same code as before the others
existed): uint32 arithmetic (wrapping multiplication; uint64 for ``Rng``'s PCG32), then ``& (T - 1)``
when every hashed level has a power-of-two size ``T``, else ``% T`` (``POW2``, also compile-time).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ngp.kernels.reference.hashgrid import (
    HASH_FUNCTIONS,
    HASH_PRIMES,
    INTERPOLATIONS,
    PRIMES,
    GridLayout,
    check_hash_primes,
)
from ngp.kernels.triton import check_device, interpreting, kernels_for_mode

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still imports; calling a kernel raises a clear error
    triton = tl = None

# Columns of the per-level constant table (the same as ngp.kernels.cpu.hashgrid's).
RES, OFFSET, SIZE, HASHED, MASK, STRIDE1, STRIDE2, STRIDE3 = range(8)
N_META = 8

NEAREST, LINEAR, SMOOTHSTEP = INTERPOLATIONS["Nearest"], INTERPOLATIONS["Linear"], INTERPOLATIONS["Smoothstep"]

#: Whether this module's kernels were decorated for Triton's interpreter (see kernels_for_mode).
INTERPRETED = interpreting()


# No fused multiply-adds: ``x * N_l`` is rounded before ``floor`` and the subtraction, as in the
# reference, so cells and fractions agree exactly (the kernels are bound by table gathers, not FLOPs).
_LAUNCH = dict(enable_fp_fusion=False)


def _jit(fn):
    return triton.jit(fn) if triton is not None else fn


# ----------------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------------


@_jit
def _axis(x_ptr, offs, mask, AXIS: tl.constexpr, D: tl.constexpr, scale, res, INTERP: tl.constexpr):
    """One coordinate of a block of points at one level -> (cell, upper weight, d(weight)/dx).

    Coordinates are clamped to [0, 1] (derivative 0 strictly outside, like torch.clamp); the integer
    cell is clamped again so that even NaN cannot index out of bounds.
    """
    v = tl.load(x_ptr + offs * D + AXIS, mask=mask, other=0.0).to(scale.dtype)
    inside = (v >= 0.0) & (v <= 1.0)
    v = tl.minimum(tl.maximum(v, 0.0), 1.0)
    pos = v * scale
    cellf = tl.minimum(tl.floor(pos), scale - 1.0)  # x = 1 belongs to the last cell
    cell = tl.minimum(tl.maximum(cellf.to(tl.int32), 0), res - 1)
    frac = pos - cellf
    if INTERP == 1:  # Linear
        w = frac
        dw = tl.full(frac.shape, 1.0, frac.dtype)
    elif INTERP == 2:  # Smoothstep
        w = frac * frac * (3.0 - 2.0 * frac)
        dw = 6.0 * frac * (1.0 - frac)
    else:  # Nearest: a step, no derivative
        w = tl.where(frac >= 0.5, 1.0, 0.0).to(frac.dtype)
        dw = tl.full(frac.shape, 0.0, frac.dtype)
    g = tl.where(inside, dw * scale, 0.0).to(frac.dtype)
    return cell, w, g


@_jit
def _level_axes(x_ptr, offs, mask, D: tl.constexpr, scale, res, INTERP: tl.constexpr):
    """Cells, weights and weight derivatives of all (up to 4) axes; unused axes get 0 (neutral)."""
    c0, w0, g0 = _axis(x_ptr, offs, mask, 0, D, scale, res, INTERP)
    zero_c = tl.full(c0.shape, 0, c0.dtype)
    zero_w = tl.full(w0.shape, 0.0, w0.dtype)
    c1, w1, g1 = zero_c, zero_w, zero_w
    c2, w2, g2 = zero_c, zero_w, zero_w
    c3, w3, g3 = zero_c, zero_w, zero_w
    if D > 1:
        c1, w1, g1 = _axis(x_ptr, offs, mask, 1, D, scale, res, INTERP)
    if D > 2:
        c2, w2, g2 = _axis(x_ptr, offs, mask, 2, D, scale, res, INTERP)
    if D > 3:
        c3, w3, g3 = _axis(x_ptr, offs, mask, 3, D, scale, res, INTERP)
    return c0, c1, c2, c3, w0, w1, w2, w3, g0, g1, g2, g3


@_jit
def _axis_hash(h, v, AXIS: tl.constexpr, D: tl.constexpr, HASH: tl.constexpr, P: tl.constexpr):
    """Fold one axis' vertex coordinate ``v`` (uint32) into the running hash ``h`` (see the reference's
    module doc). xor-of-products hashes: ``h ^ v * P`` (``P``: this axis' factor, the layout's
    ``primes``); ``BaseConvert``: ``(h + v) * m``; ``Rng``: ``h ^ (v << shift)`` in uint64 (scrambled
    afterwards by :func:`_pcg_output`); uint32 products wrap mod 2^32 like the reference's ``& 0xFFFFFFFF``."""
    if HASH == 3:  # BaseConvert
        h = (h + v) * 2531011
    elif HASH == 4:  # Rng
        h = h ^ (v.to(tl.uint64) << (AXIS * (64 // D)))
    elif AXIS == 0:
        if P == 1:  # CoherentPrime's first factor: no multiplication
            h = v
        else:
            h = v * P
    else:
        h = h ^ (v * P)
    return h


@_jit
def _pcg_output(step):
    """tiny-cuda-nn's ``Rng`` hash of a uint64 ``step``: PCG32 seeded with 1337 (stream 1), advanced by
    ``step`` (jump-ahead over its 64 bits), then its next 32-bit output."""
    mult = tl.full(step.shape, 0x5851F42D4C957F2D, tl.uint64)
    plus = tl.full(step.shape, 3, tl.uint64)
    acc_mult = tl.full(step.shape, 1, tl.uint64)
    acc_plus = tl.full(step.shape, 0, tl.uint64)
    for k in tl.static_range(64):
        bit = ((step >> k) & 1) != 0
        acc_mult = tl.where(bit, acc_mult * mult, acc_mult)
        acc_plus = tl.where(bit, acc_plus * mult + plus, acc_plus)
        plus = (mult + 1) * plus
        mult = mult * mult
    # the state right after seeding: one step from 0 (state = inc = 3), plus the seed, one more step
    state0 = tl.full(step.shape, 1340, tl.uint64) * 0x5851F42D4C957F2D + 3
    state = acc_mult * state0 + acc_plus
    xorshifted = (((state >> 18) ^ state) >> 27).to(tl.uint32)
    rot = (state >> 59).to(tl.uint32)
    return (xorshifted >> rot) | (xorshifted << ((32 - rot) & 31))


@_jit
def _corner(C: tl.constexpr, D: tl.constexpr, c0, c1, c2, c3, w0, w1, w2, w3, st1, st2, st3, hashed, hmask, hsize,
            offset, HASH: tl.constexpr, POW2: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
            P3: tl.constexpr):
    """Table row and interpolation weight of corner ``C`` (bit i set: upper vertex along axis i).

    The row is computed both ways (hash and 1:1) and the level's flag picks one: cheaper on a GPU than
    a branch, and both are a few integer operations. ``HASH`` is the hash function's code (0, the
    default ``CoherentPrime``, compiles to the same instructions as before hash functions were
    configurable); ``POW2``: every hashed level has a power-of-two size (``& mask`` instead of ``%``);
    ``P0..P3``: the xor-of-products hash's factors (the layout's ``primes``; compile-time constants).
    """
    one = tl.full([], 1, tl.uint32)
    v0 = c0.to(tl.uint32) + one if C & 1 else c0.to(tl.uint32)
    if HASH == 3:
        h = tl.full(v0.shape, 0, tl.uint32)
    elif HASH == 4:
        h = tl.full(v0.shape, 0, tl.uint64)
    else:
        h = v0
    h = _axis_hash(h, v0, 0, D, HASH, P0)
    r = c0 + 1 if C & 1 else c0
    wc = w0 if C & 1 else 1.0 - w0
    if D > 1:
        v1 = c1.to(tl.uint32) + one if (C >> 1) & 1 else c1.to(tl.uint32)
        h = _axis_hash(h, v1, 1, D, HASH, P1)
        r = r + (c1 + 1 if (C >> 1) & 1 else c1) * st1
        wc = wc * (w1 if (C >> 1) & 1 else 1.0 - w1)
    if D > 2:
        v2 = c2.to(tl.uint32) + one if (C >> 2) & 1 else c2.to(tl.uint32)
        h = _axis_hash(h, v2, 2, D, HASH, P2)
        r = r + (c2 + 1 if (C >> 2) & 1 else c2) * st2
        wc = wc * (w2 if (C >> 2) & 1 else 1.0 - w2)
    if D > 3:
        v3 = c3.to(tl.uint32) + one if (C >> 3) & 1 else c3.to(tl.uint32)
        h = _axis_hash(h, v3, 3, D, HASH, P3)
        r = r + (c3 + 1 if (C >> 3) & 1 else c3) * st3
        wc = wc * (w3 if (C >> 3) & 1 else 1.0 - w3)
    if HASH == 4:
        h = _pcg_output(h)
    elif HASH == 5:  # Tiled: the dense index, wrapped
        h = r.to(tl.uint32)
    if POW2:
        wrapped = (h & hmask).to(tl.int32)
    else:
        wrapped = (h % hsize).to(tl.int32)
    row = offset + tl.where(hashed != 0, wrapped, r)
    return row, wc


@_jit
def _corner_dweights(C: tl.constexpr, D: tl.constexpr, w0, w1, w2, w3):
    """d(weight of corner C)/d(w_i) for each axis: +-(product of the other axes' factors)."""
    f0 = w0 if C & 1 else 1.0 - w0
    f1 = w1 if (C >> 1) & 1 else 1.0 - w1
    f2 = w2 if (C >> 2) & 1 else 1.0 - w2
    f3 = w3 if (C >> 3) & 1 else 1.0 - w3
    # Unused axes have w = 0 and bit 0, so their factor is exactly 1.
    d0 = f1 * f2 * f3
    d1 = f0 * f2 * f3
    d2 = f0 * f1 * f3
    d3 = f0 * f1 * f2
    d0 = d0 if C & 1 else -d0
    d1 = d1 if (C >> 1) & 1 else -d1
    d2 = d2 if (C >> 2) & 1 else -d2
    d3 = d3 if (C >> 3) & 1 else -d3
    return d0, d1, d2, d3


@_jit
def _add(a, b):
    return a + b


@_jit
def _level_constants(meta_ptr, scales_ptr, level, POW2: tl.constexpr):
    base = meta_ptr + level * 8
    res = tl.load(base + 0).to(tl.int32)
    offset = tl.load(base + 1).to(tl.int32)
    hashed = tl.load(base + 3).to(tl.int32)
    hmask = tl.load(base + 4).to(tl.uint32)
    if POW2:
        hsize = hmask  # unused: hashed levels are masked
    else:
        hsize = tl.load(base + 2).to(tl.uint32)
    st1 = tl.load(base + 5).to(tl.int32)
    st2 = tl.load(base + 6).to(tl.int32)
    st3 = tl.load(base + 7).to(tl.int32)
    scale = tl.load(scales_ptr + level)
    return res, offset, hashed, hmask, hsize, st1, st2, st3, scale


# ----------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------


@_jit
def _forward_kernel(
    x_ptr, table_ptr, meta_ptr, scales_ptr, out_ptr, n_points, out_stride,
    D: tl.constexpr, F: tl.constexpr, INTERP: tl.constexpr, BLOCK: tl.constexpr, HASH: tl.constexpr,
    POW2: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr,
):
    level = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_points
    feats = tl.arange(0, F)
    res, offset, hashed, hmask, hsize, st1, st2, st3, scale = _level_constants(meta_ptr, scales_ptr, level, POW2)
    c0, c1, c2, c3, w0, w1, w2, w3, g0, g1, g2, g3 = _level_axes(x_ptr, offs, mask, D, scale, res, INTERP)
    acc = tl.full([BLOCK, F], 0.0, scale.dtype)
    for C in tl.static_range(1 << D):
        row, wc = _corner(C, D, c0, c1, c2, c3, w0, w1, w2, w3, st1, st2, st3, hashed, hmask, hsize, offset, HASH,
                           POW2, P0, P1, P2, P3)
        values = tl.load(table_ptr + row[:, None] * F + feats[None, :], mask=mask[:, None], other=0.0)
        acc += wc[:, None] * values.to(scale.dtype)
    out = out_ptr + offs[:, None] * out_stride + level * F + feats[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask[:, None])


@_jit
def _backward_table_kernel(
    x_ptr, grad_out_ptr, meta_ptr, scales_ptr, grad_table_ptr, n_points, out_stride,
    D: tl.constexpr, F: tl.constexpr, INTERP: tl.constexpr, BLOCK: tl.constexpr, HASH: tl.constexpr,
    POW2: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr,
):
    level = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_points
    feats = tl.arange(0, F)
    res, offset, hashed, hmask, hsize, st1, st2, st3, scale = _level_constants(meta_ptr, scales_ptr, level, POW2)
    c0, c1, c2, c3, w0, w1, w2, w3, g0, g1, g2, g3 = _level_axes(x_ptr, offs, mask, D, scale, res, INTERP)
    grad_ptrs = grad_out_ptr + offs[:, None] * out_stride + level * F + feats[None, :]
    grad = tl.load(grad_ptrs, mask=mask[:, None], other=0.0).to(scale.dtype)
    acc_ty = grad_table_ptr.dtype.element_ty
    for C in tl.static_range(1 << D):
        row, wc = _corner(C, D, c0, c1, c2, c3, w0, w1, w2, w3, st1, st2, st3, hashed, hmask, hsize, offset, HASH,
                           POW2, P0, P1, P2, P3)
        contrib = (wc[:, None] * grad).to(acc_ty)
        tl.atomic_add(grad_table_ptr + row[:, None] * F + feats[None, :], contrib, mask=mask[:, None], sem="relaxed")


@_jit
def _backward_x_kernel(
    x_ptr, table_ptr, grad_out_ptr, meta_ptr, scales_ptr, grad_x_ptr, n_points, n_levels, out_stride,
    D: tl.constexpr, F: tl.constexpr, INTERP: tl.constexpr, BLOCK: tl.constexpr, HASH: tl.constexpr,
    POW2: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_points
    feats = tl.arange(0, F)
    first = tl.load(scales_ptr)
    s0 = tl.full([BLOCK], 0.0, first.dtype)
    s1 = tl.full([BLOCK], 0.0, first.dtype)
    s2 = tl.full([BLOCK], 0.0, first.dtype)
    s3 = tl.full([BLOCK], 0.0, first.dtype)
    for level in range(n_levels):
        res, offset, hashed, hmask, hsize, st1, st2, st3, scale = _level_constants(meta_ptr, scales_ptr, level, POW2)
        c0, c1, c2, c3, w0, w1, w2, w3, g0, g1, g2, g3 = _level_axes(x_ptr, offs, mask, D, scale, res, INTERP)
        grad = tl.load(
            grad_out_ptr + offs[:, None] * out_stride + level * F + feats[None, :], mask=mask[:, None], other=0.0
        ).to(scale.dtype)
        # sum over corners of (table row . grad) * d(weight)/d(w_i), per axis
        t0 = tl.full([BLOCK], 0.0, first.dtype)
        t1 = tl.full([BLOCK], 0.0, first.dtype)
        t2 = tl.full([BLOCK], 0.0, first.dtype)
        t3 = tl.full([BLOCK], 0.0, first.dtype)
        for C in tl.static_range(1 << D):
            row, wc = _corner(C, D, c0, c1, c2, c3, w0, w1, w2, w3, st1, st2, st3, hashed, hmask, hsize, offset, HASH,
                           POW2, P0, P1, P2, P3)
            values = tl.load(table_ptr + row[:, None] * F + feats[None, :], mask=mask[:, None], other=0.0)
            dot = tl.reduce(values.to(scale.dtype) * grad, 1, _add)
            d0, d1, d2, d3 = _corner_dweights(C, D, w0, w1, w2, w3)
            t0 += dot * d0
            t1 += dot * d1
            t2 += dot * d2
            t3 += dot * d3
        s0 += t0 * g0
        s1 += t1 * g1
        s2 += t2 * g2
        s3 += t3 * g3
    out_ty = grad_x_ptr.dtype.element_ty
    tl.store(grad_x_ptr + offs * D, s0.to(out_ty), mask=mask)
    if D > 1:
        tl.store(grad_x_ptr + offs * D + 1, s1.to(out_ty), mask=mask)
    if D > 2:
        tl.store(grad_x_ptr + offs * D + 2, s2.to(out_ty), mask=mask)
    if D > 3:
        tl.store(grad_x_ptr + offs * D + 3, s3.to(out_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------
# Entry points (tensors in, tensors out), mirroring ngp.kernels.cpu.hashgrid
# ----------------------------------------------------------------------------------------------------


def level_table(resolutions, offsets, hashed) -> np.ndarray:
    """Per-level integer constants, ``int64 [L, 8]`` (columns as in the module docstring)."""
    n_levels = len(resolutions)
    meta = np.zeros((n_levels, N_META), dtype=np.int64)
    for level in range(n_levels):
        res, size = resolutions[level], offsets[level + 1] - offsets[level]
        is_pow2 = size & (size - 1) == 0
        meta[level] = (res, offsets[level], size, int(hashed[level]), size - 1 if is_pow2 else -1,
                       res + 1, (res + 1) ** 2, (res + 1) ** 3)
    return meta


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any tensor is float64, else float32 (float16 storage is computed in float32)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@functools.lru_cache(maxsize=64)
def constants(layout: GridLayout, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(meta, scales)`` of a layout on ``device``, built once (no host-to-device copy per call).

    ``dtype`` is the compute dtype (:func:`compute_dtype`): ``x * N_l`` is rounded in it, as the
    reference rounds it in ``x``'s dtype.
    """
    table = level_table(layout.resolutions, layout.offsets, layout.hashed)
    meta = torch.as_tensor(table, device=device)
    scales = torch.tensor(layout.resolutions, dtype=dtype, device=device)
    return meta, scales


def _block(n_points: int) -> int:
    # The interpreter pays per program (and per op), so it gets fewer, larger blocks.
    if interpreting():
        return max(16, min(1024, triton.next_power_of_2(max(n_points, 1))))
    return 128


def _prepare(x, table, meta, scales, interp, *others):
    """Check arguments; return (meta, scales) as tensors on the device and the launch constants."""
    check_device(x, table, *others)
    if x.dim() != 2 or not 1 <= x.shape[1] <= len(PRIMES):
        raise ValueError(f"x must be [N, d] with d in 1..{len(PRIMES)}, got {tuple(x.shape)}")
    for name, t in (("x", x), ("table", table), *((f"argument {i}", o) for i, o in enumerate(others))):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    n_features = table.shape[1]
    if n_features not in (1, 2, 4, 8):
        raise ValueError(f"n_features must be 1, 2, 4 or 8, got {n_features}")
    if interp not in (NEAREST, LINEAR, SMOOTHSTEP):
        raise ValueError(f"unknown interpolation code {interp}; expected one of {sorted(INTERPOLATIONS.values())}")
    meta = torch.as_tensor(meta, dtype=torch.int64, device=x.device)
    if meta.dim() != 2 or meta.shape[1] != N_META:
        raise ValueError(f"meta must be int64 [L, {N_META}], got {tuple(meta.shape)}")
    n_levels = meta.shape[0]
    if table.shape[0] * n_features >= 2**31 or x.shape[0] * max(n_levels * n_features, x.shape[1]) >= 2**31:
        raise ValueError("table or batch too large for 32-bit indexing; split the batch")
    scales = torch.as_tensor(scales, dtype=compute_dtype(x, table), device=x.device)
    return meta.contiguous(), scales.contiguous(), n_levels, n_features


def _hash_constexprs(meta: torch.Tensor, hash_code: int, pow2: bool | None, primes: tuple[int, ...] = ()
                     ) -> dict[str, int]:
    """The kernels' ``HASH``, ``POW2`` and ``P0..P3`` compile-time constants (see :func:`_corner`).
    ``pow2`` is read from ``meta`` when not given (a device-to-host copy: :func:`forward` and
    :func:`backward` pass it from the layout instead); ``primes``: an xor-of-products hash's factors
    in place of its own (a layout's ``hash_primes``)."""
    if hash_code not in HASH_FUNCTIONS.values():
        raise ValueError(f"unknown hash code {hash_code}; expected one of {HASH_FUNCTIONS}")
    if pow2 is None:
        pow2 = not bool(((meta[:, HASHED] == 1) & (meta[:, MASK] < 0)).any())
    name = _HASH_NAMES[hash_code]
    if primes:
        check_hash_primes(primes, 1, name)
    factors = tuple(primes) or HASH_PRIMES.get(name, ())
    factors = factors + PRIMES[len(factors):]  # unused axes (and the other hash functions) read PRIMES
    return {"HASH": int(hash_code), "POW2": int(pow2), **{f"P{i}": int(p) for i, p in enumerate(factors)}}


_HASH_NAMES = {code: name for name, code in HASH_FUNCTIONS.items()}


@functools.lru_cache(maxsize=64)
def hashed_sizes_are_powers_of_two(layout: GridLayout) -> bool:
    """Whether every hashed level of ``layout`` has a power-of-two size (then rows are masked)."""
    sizes = [b - a for a, b, h in zip(layout.offsets, layout.offsets[1:], layout.hashed) if h]
    return all(size & (size - 1) == 0 for size in sizes)


def encode(x, table, meta, scales, interp: int, out: torch.Tensor, hash_code: int = 0,
           pow2: bool | None = None, primes: tuple[int, ...] = ()) -> None:
    """Encode ``x [N, d]`` with ``table [rows, F]`` into ``out [N, L*F]`` (overwritten).

    ``hash_code``: the layout's hash function, ``HASH_FUNCTIONS[layout.hash_function]`` (0: CoherentPrime);
    ``primes``: the layout's ``hash_primes`` (empty: the function's own factors).
    """
    meta, scales, n_levels, n_features = _prepare(x, table, meta, scales, interp, out)
    n_points = x.shape[0]
    if n_points == 0:
        return
    block = _block(n_points)
    grid = (triton.cdiv(n_points, block), n_levels)
    kernels_for_mode(__name__)._forward_kernel[grid](
        x, table, meta, scales, out, n_points, out.shape[1],
        D=x.shape[1], F=n_features, INTERP=interp, BLOCK=block, **_hash_constexprs(meta, hash_code, pow2, primes),
        **_LAUNCH,
    )


def table_grad(x, grad_out, meta, scales, interp: int, grad_table: torch.Tensor, hash_code: int = 0,
               pow2: bool | None = None, primes: tuple[int, ...] = ()) -> None:
    """Write d(loss)/d(table) into ``grad_table [rows, F]`` (float32/64, overwritten) given ``grad_out [N, L*F]``."""
    meta, scales, n_levels, n_features = _prepare(x, grad_table, meta, scales, interp, grad_out)
    if grad_table.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"grad_table must be a float32 or float64 buffer (atomic adds), got {grad_table.dtype}")
    grad_table.zero_()
    n_points = x.shape[0]
    if n_points == 0:
        return
    block = _block(n_points)
    grid = (triton.cdiv(n_points, block), n_levels)
    kernels_for_mode(__name__)._backward_table_kernel[grid](
        x, grad_out, meta, scales, grad_table, n_points, grad_out.shape[1],
        D=x.shape[1], F=n_features, INTERP=interp, BLOCK=block, **_hash_constexprs(meta, hash_code, pow2, primes),
        **_LAUNCH,
    )


def input_grad(x, table, grad_out, meta, scales, interp: int, grad_x: torch.Tensor, hash_code: int = 0,
               pow2: bool | None = None, primes: tuple[int, ...] = ()) -> None:
    """Write d(loss)/d(x) into ``grad_x [N, d]`` (overwritten) given ``grad_out [N, L*F]``."""
    meta, scales, n_levels, n_features = _prepare(x, table, meta, scales, interp, grad_out, grad_x)
    n_points = x.shape[0]
    if n_points == 0:
        return
    block = _block(n_points)
    grid = (triton.cdiv(n_points, block),)
    kernels_for_mode(__name__)._backward_x_kernel[grid](
        x, table, grad_out, meta, scales, grad_x, n_points, n_levels, grad_out.shape[1],
        D=x.shape[1], F=n_features, INTERP=interp, BLOCK=block, **_hash_constexprs(meta, hash_code, pow2, primes),
        **_LAUNCH,
    )


# ----------------------------------------------------------------------------------------------------
# The kernel-family interface of ngp.ops.hashgrid
# ----------------------------------------------------------------------------------------------------


def forward(x: torch.Tensor, table: torch.Tensor, layout: GridLayout, interpolation: int) -> torch.Tensor:
    """``x [N, d]``, ``table [rows, F]`` (one device; float16 storage allowed) -> ``[N, L*F]`` in ``x.dtype``.

    Example::

        >>> layout = GridLayout.create(3, 16, 2, 19, 16, 1.38)
        >>> forward(torch.rand(2**18, 3, device="cuda"), table, layout, INTERPOLATIONS["Linear"]).shape
        torch.Size([262144, 32])
    """
    meta, scales = constants(layout, x.device, compute_dtype(x, table))
    out = torch.empty(x.shape[0], layout.n_levels * table.shape[1], dtype=x.dtype, device=x.device)
    encode(x.contiguous(), table.contiguous(), meta, scales, interpolation, out, HASH_FUNCTIONS[layout.hash_function],
           hashed_sizes_are_powers_of_two(layout), layout.hash_primes)
    return out


def backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    table: torch.Tensor,
    layout: GridLayout,
    interpolation: int,
    needs_table_grad: bool,
    needs_x_grad: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the loss w.r.t. ``table`` and ``x`` (each ``None`` unless asked for).

    ``grad_table [rows, F]`` is the float32 accumulator (float64 when ``x`` or the table is float64),
    not cast to a float16 table's dtype: it is the gradient of the float32 master parameter.
    """
    x, table, grad_out = x.contiguous(), table.contiguous(), grad_out.contiguous()
    accumulator = compute_dtype(x, table)
    meta, scales = constants(layout, x.device, accumulator)
    grad_table = grad_x = None
    if needs_table_grad:
        grad_table = torch.empty(table.shape, dtype=accumulator, device=x.device)
        table_grad(x, grad_out, meta, scales, interpolation, grad_table, HASH_FUNCTIONS[layout.hash_function],
                   hashed_sizes_are_powers_of_two(layout), layout.hash_primes)
    if needs_x_grad:
        grad_x = torch.empty_like(x)
        input_grad(x, table, grad_out, meta, scales, interpolation, grad_x, HASH_FUNCTIONS[layout.hash_function],
                   hashed_sizes_are_powers_of_two(layout), layout.hash_primes)
    return grad_table, grad_x
