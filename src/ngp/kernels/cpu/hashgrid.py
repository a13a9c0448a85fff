"""Numba kernels of the multiresolution hash encoding (CPU).

The definition lives in :mod:`ngp.kernels.reference.hashgrid`; these kernels compute the same numbers
(``tests/test_hashgrid_kernels.py`` compares them). Three layers:

* the kernel-family interface of :mod:`ngp.ops.hashgrid` (torch tensors in and out):

  - ``forward(x, table, layout, interpolation, out_dtype=None) -> [N, L*F]`` in ``x.dtype`` (or
    rounded to bfloat16 as it is written: ``out_dtype=torch.bfloat16``, for rendering);
  - ``backward(grad_out, x, table, layout, interpolation, needs_table_grad, needs_x_grad)
    -> (grad_table in x.dtype or None, grad_x or None)``;

  a table stored narrower than ``x`` (float16 storage, see :func:`ngp.ops.hash_grid_encode`) is
  widened to ``x.dtype`` first: Numba has no float16 arithmetic, so float16 storage is *emulated*
  here (the same numbers as the GPU kernels, plus a cast per call: slower, it only pays off on GPUs);

* NumPy entry points writing into arrays the caller allocates (zero-copy views of CPU tensors):
  ``encode``, ``table_grad``, ``input_grad``;
* the ``@njit`` kernels.

Design, from measurements on this project's 2-core Zen 5 machine (``benchmarks/bench_encoding.py``;
``/work/shared/design.md``):

* **Level-major loops.** Random table reads dominate; visiting all points for one level before the
  next keeps that level's table (a few MB) in cache.
* **One parallel region per kernel.** Forward and input gradients: each thread takes a contiguous
  share of the points and walks all levels over it (the threads' current levels share the L3). One
  region per level instead measured 1.4x slower: every region ends in a barrier, and on a busy
  machine a barrier waits for a descheduled thread. Batches under ``PARALLEL_MIN_POINTS`` run on the
  calling thread alone.
* **Output in groups of points.** The forward writes ``[N, L*F]`` directly, one level's columns at a
  time, over groups of ``GROUP_POINTS`` (8192) points whose output rows (1 MB) stay in the core's
  cache while all levels write them. Writing the whole share level-major (``[L, N, F]``) and then
  transposing it cost a pass over 2 x 33 MB per 2^18 points: the groups measured 1.17-1.23x on a fox
  frame's samples, 1.22x on lego's, 1.03x on uniform random 3-D points, 1.22x in 2-D (old/new
  alternating in one process, same numbers bit for bit; groups of 2048-16384 alike). The backward
  kernels read ``grad_out`` level-major (``[L, N, F]``, converted once): contiguous per level, where
  ``[N, L*F]`` over a thread's whole share touches a whole cache line per point and level (measured
  +30% on input gradients).
* **Forward in blocks, vectorised, rows prefetched.** For ``STAGE_BLOCK`` (1024) points at a time the
  forward first computes every corner's row and weight into a small scratch (``[corners, block]``), in
  loops over the points with no per-point branches that LLVM vectorises (coordinates transposed to
  ``[d, N]``; the interpolation's and the level's branches are the same for every point), then reads
  the rows, prefetched (:mod:`ngp.kernels.cpu.intrinsics`) ``PREFETCH_AHEAD`` (64) points ahead so that
  the cache misses of many points are in flight together. The point-by-point forward (blocks of 64,
  rows prefetched, LLVM vectorising nothing) was bound by its instructions, not the cache: it ran as
  fast on one point repeated as on a frame's samples. Measured in 3-D (``_forward_3d`` called directly,
  old and new alternating in one process, medians of 7-9): a fox frame's samples 7.3-7.7 -> 8.9-9.6 M
  points/s, lego's 7.3 -> 10.1 M points/s, lego's in training-sized calls of 30k points 6.9 -> 9.8 M
  points/s; the same numbers bit for bit. A feature loop with a run-time trip count (``range(F)``)
  undid most of it: ``F == 2`` keeps its own unrolled loop. The table gradient stages its rows and
  weights with the same loops, then scatter-adds point by point (bit-identical; 10 calls of 65k lego
  training points 110-114 -> 83-84 ms, alternating in one process). With the earlier point-by-point
  staging it had measured *slower* in blocks (94-108 -> 149 ms, 174-244 ms with write prefetches):
  its time was the staging, not the read-modify-write. With the vectorised staging its rows are
  prefetched in 3-D as the forward's are (read prefetches, ``GRADIENT_PREFETCH_AHEAD`` points ahead),
  bit-identical (Intel Xeon, 2 cores): lego / fox training calls of 65k samples 13.0 / 13.5 -> 11.1 /
  11.4 ms, 2^18 uniform points 45 -> 43 ms (alternating in one process). The 2-D gradient measured
  slower so (2^18 uniform points 33 -> 35 ms) and keeps its loop.
* **Table gradients** (a scatter-add): each thread owns whole levels, dealt by estimated cost
  (:func:`level_schedule`), so no two threads write one row: no atomics, no private copies of the
  table (measured 2x faster than splitting points between threads with private per-level buffers).
  The owner also zeroes its levels' rows, so the gradient buffer needs no separate memset.
* **2-D and 3-D fast path:** straight-line corner code, interpolated features accumulated in
  registers, ``F == 2`` unrolled. Helpers return flat tuples of scalars only: nested tuples, or
  helpers writing into arrays, measured 1.5-2x slower. Hashed levels there must have power-of-two
  sizes (a mask, not a division), as ``GridLayout.create`` makes them; anything else takes the
  generic path.
* **Generic path** (any ``d`` in 1..4, any hashed size, any hash function): one corner loop over
  scalar code for four axes, unused axes neutral. Slower, same numbers. Hash functions other than the
  default ``CoherentPrime`` (and ``TiledGrid``'s wrapped levels) always take it: the fast paths keep
  their straight-line code.

Per-level constants are built once per layout (:func:`constants`): ``meta``, ``int64 [L, 8]`` with
columns ``RES, OFFSET, SIZE, HASHED, MASK, STRIDE1, STRIDE2, STRIDE3`` (``MASK`` is ``size - 1`` for
power-of-two sizes, else -1), and ``scales``, the resolutions as floats of the coordinates' dtype so
that ``x * N_l`` rounds exactly like the reference's.
"""

from __future__ import annotations

import contextlib
import functools

import numba as nb
import numpy as np
import torch
from numba import njit, prange

from ngp.kernels.cpu.intrinsics import float32_bits, prefetch_read
from ngp.kernels.reference.hashgrid import (
    BASE_CONVERT_FACTOR,
    HASH_FUNCTIONS,
    HASH_PRIMES,
    INTERPOLATIONS,
    MAX_DIMS,
    PRIMES,
    GridLayout,
    pcg_jump_tables,
)

# Columns of ``meta`` (see ``level_table``).
RES, OFFSET, SIZE, HASHED, MASK, STRIDE1, STRIDE2, STRIDE3 = range(8)

# Hash kinds (``hash_constants(...)[0]``).
COHERENT_PRIME, BASE_CONVERT, RNG, TILED = (HASH_FUNCTIONS[k] for k in ("CoherentPrime", "BaseConvert", "Rng", "Tiled"))
# Rng's PCG32 jump-ahead tables (uint64), read by the kernels as compile-time constants.
_PCG_MULTS, _PCG_PLUSES = (np.array(t, dtype=np.uint64) for t in pcg_jump_tables()[:2])
_PCG_STATE0 = np.uint64(pcg_jump_tables()[2])

NEAREST, LINEAR, SMOOTHSTEP = INTERPOLATIONS["Nearest"], INTERPOLATIONS["Linear"], INTERPOLATIONS["Smoothstep"]

_P1, _P2, _P3 = PRIMES[1], PRIMES[2], PRIMES[3]  # PRIMES[0] == 1
_MASK32 = 0xFFFFFFFF
_DEFAULT_HASHING = np.array([COHERENT_PRIME, *PRIMES], dtype=np.int64)
#: The forward kernels' blocks: corners and weights of this many points are computed by vectorised
#: loops, then read with prefetches ``PREFETCH_AHEAD`` points ahead (see the module docstring).
STAGE_BLOCK = 1024
PREFETCH_AHEAD = 64
#: The table gradients prefetch the rows they will add to this many points ahead: 16 measured best of
#: 8-64 (65k-2^18 uniform points and training's samples; 64 was slower than none on 2^18 uniform points).
GRADIENT_PREFETCH_AHEAD = 16
#: The forward kernels encode a thread's points in groups of this many, level by level within a group:
#: the group's output rows (8192 x 32 float32: 1 MB) stay in the core's cache while every level writes
#: its columns.
GROUP_POINTS = 8192
#: What :func:`forward` can round its features to as it writes them (besides x's dtype).
ROUNDED_OUTPUTS = (torch.bfloat16,)

# error_model="numpy": no ZeroDivisionError checks (and their branches) inside the loops.
_JIT = dict(fastmath=True, cache=True, error_model="numpy")


def level_table(resolutions, offsets, hashed) -> np.ndarray:
    """Per-level integer constants, ``int64 [L, 8]`` (columns: see the module docstring)."""
    meta = np.zeros((len(resolutions), 8), dtype=np.int64)
    for level, res in enumerate(resolutions):
        size = offsets[level + 1] - offsets[level]
        mask = size - 1 if size & (size - 1) == 0 else -1
        meta[level] = (res, offsets[level], size, int(hashed[level]), mask, res + 1, (res + 1) ** 2, (res + 1) ** 3)
    return meta


def level_schedule(meta: np.ndarray, row_bytes: int, n_workers: int) -> np.ndarray:
    """Deal levels to workers so that each worker's estimated cost is about equal.

    Cost model (measured per level, 3-D paper config): a level whose table fits in a core's L2 cache
    (about 2 MB; here, the small dense levels) costs about a third of one that does not. Returns
    ``int64 [n_workers, k]`` level ids, ``-1`` padded; greedy longest-first is within 4/3 of optimal.
    """
    cost = np.where(meta[:, SIZE].astype(np.float64) * row_bytes > 2**21, 1.0, 0.35)
    loads = np.zeros(n_workers)
    assigned: list[list[int]] = [[] for _ in range(n_workers)]
    for level in np.argsort(-cost, kind="stable"):
        worker = int(np.argmin(loads))
        assigned[worker].append(int(level))
        loads[worker] += cost[level]
    schedule = np.full((n_workers, max(len(a) for a in assigned)), -1, dtype=np.int64)
    for worker, levels in enumerate(assigned):
        schedule[worker, : len(levels)] = sorted(levels)
    return schedule


# ----------------------------------------------------------------------------------------------------
# Per-point helpers (small: LLVM inlines them into the kernels)
# ----------------------------------------------------------------------------------------------------


@njit(**_JIT)
def _axis(v, scale, res, interp):
    """One coordinate at one level -> (cell, upper weight, d(upper weight)/dv).

    The coordinate is clamped to [0, 1] (derivative 0 strictly outside, like ``torch.clamp``). The
    cell is clamped again as an integer so that even NaN coordinates cannot index out of bounds.
    """
    one = type(scale)(1)  # constants in the coordinates' float type (literals promote to float64)
    zero = one - one
    two = one + one
    inside = v >= zero and v <= one
    v = min(max(v, zero), one)
    pos = v * scale
    cellf = min(np.floor(pos), scale - one)  # x = 1 belongs to the last cell
    cell = min(max(np.int64(cellf), 0), res - 1)
    frac = pos - cellf
    if interp == LINEAR:
        w, dw = frac, one
    elif interp == SMOOTHSTEP:
        w, dw = frac * frac * (two + one - two * frac), (two + two + two) * frac * (one - frac)
    else:  # NEAREST: a step, no derivative
        w, dw = (one if frac + frac >= one else zero), zero
    dw = dw * scale if inside else zero
    return cell, w, dw


@njit(**_JIT)
def _hash_terms(cell, prime):
    """Hash terms of the lower and upper vertex along one axis (combined by xor)."""
    return (cell * prime) & _MASK32, ((cell + 1) * prime) & _MASK32


@njit(**_JIT)
def _rows2(c0, c1, lv):
    """Absolute table rows of the 4 corners of cell (c0, c1); corner k has bit i set = upper on axis i."""
    offset = lv[OFFSET]
    if lv[HASHED]:
        a0, b0 = c0, c0 + 1  # the first prime is 1
        a1, b1 = _hash_terms(c1, _P1)
        m = lv[MASK]
        return (offset + ((a0 ^ a1) & m), offset + ((b0 ^ a1) & m), offset + ((a0 ^ b1) & m), offset + ((b0 ^ b1) & m))
    s1 = lv[STRIDE1]
    r = offset + c0 + c1 * s1
    return (r, r + 1, r + s1, r + s1 + 1)


@njit(**_JIT)
def _rows3(c0, c1, c2, lv):
    """Absolute table rows of the 8 corners of cell (c0, c1, c2), same corner order as ``_rows2``."""
    offset = lv[OFFSET]
    if lv[HASHED]:
        a0, b0 = c0, c0 + 1
        a1, b1 = _hash_terms(c1, _P1)
        a2, b2 = _hash_terms(c2, _P2)
        m = lv[MASK]
        return (
            offset + ((a0 ^ a1 ^ a2) & m),
            offset + ((b0 ^ a1 ^ a2) & m),
            offset + ((a0 ^ b1 ^ a2) & m),
            offset + ((b0 ^ b1 ^ a2) & m),
            offset + ((a0 ^ a1 ^ b2) & m),
            offset + ((b0 ^ a1 ^ b2) & m),
            offset + ((a0 ^ b1 ^ b2) & m),
            offset + ((b0 ^ b1 ^ b2) & m),
        )
    s1, s2 = lv[STRIDE1], lv[STRIDE2]
    r = offset + c0 + c1 * s1 + c2 * s2
    return (r, r + 1, r + s1, r + s1 + 1, r + s2, r + s2 + 1, r + s1 + s2, r + s1 + s2 + 1)


@njit(**_JIT)
def _weights2(w0, w1):
    one = type(w0)(1)
    v0, v1 = one - w0, one - w1
    return (v0 * v1, w0 * v1, v0 * w1, w0 * w1)


@njit(**_JIT)
def _weights3(w0, w1, w2):
    one = type(w0)(1)
    v0, v1, v2 = one - w0, one - w1, one - w2
    q00, q10, q01, q11 = v1 * v2, w1 * v2, v1 * w2, w1 * w2
    return (v0 * q00, w0 * q00, v0 * q10, w0 * q10, v0 * q01, w0 * q01, v0 * q11, w0 * q11)


@njit(**_JIT)
def _dots4(table, r, g, n):
    """<table row, g[n]> of each of the 4 corners."""
    if g.shape[1] == 2:  # the common case, without the loop
        g0, g1 = g[n, 0], g[n, 1]
        return (
            table[r[0], 0] * g0 + table[r[0], 1] * g1,
            table[r[1], 0] * g0 + table[r[1], 1] * g1,
            table[r[2], 0] * g0 + table[r[2], 1] * g1,
            table[r[3], 0] * g0 + table[r[3], 1] * g1,
        )
    d0 = d1 = d2 = d3 = type(g[n, 0])(0)
    for f in range(g.shape[1]):
        go = g[n, f]
        d0 += table[r[0], f] * go
        d1 += table[r[1], f] * go
        d2 += table[r[2], f] * go
        d3 += table[r[3], f] * go
    return d0, d1, d2, d3


@njit(**_JIT)
def _dots8(table, r, g, n):
    """<table row, g[n]> of each of the 8 corners."""
    if g.shape[1] == 2:
        g0, g1 = g[n, 0], g[n, 1]
        return (
            table[r[0], 0] * g0 + table[r[0], 1] * g1,
            table[r[1], 0] * g0 + table[r[1], 1] * g1,
            table[r[2], 0] * g0 + table[r[2], 1] * g1,
            table[r[3], 0] * g0 + table[r[3], 1] * g1,
            table[r[4], 0] * g0 + table[r[4], 1] * g1,
            table[r[5], 0] * g0 + table[r[5], 1] * g1,
            table[r[6], 0] * g0 + table[r[6], 1] * g1,
            table[r[7], 0] * g0 + table[r[7], 1] * g1,
        )
    d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = type(g[n, 0])(0)
    for f in range(g.shape[1]):
        go = g[n, f]
        d0 += table[r[0], f] * go
        d1 += table[r[1], f] * go
        d2 += table[r[2], f] * go
        d3 += table[r[3], f] * go
        d4 += table[r[4], f] * go
        d5 += table[r[5], f] * go
        d6 += table[r[6], f] * go
        d7 += table[r[7], f] * go
    return d0, d1, d2, d3, d4, d5, d6, d7


@njit(**_JIT)
def _zero_level(grad_table, lv):
    """Zero one level's rows (by the thread that owns the level: in parallel, and leaves them in cache).
    A slice assignment, which Numba makes a memset: 0.6 ms for 48 MB on 2 threads, where a loop over
    ``[row, f]`` took 6-7 ms (measured)."""
    grad_table[lv[OFFSET]:lv[OFFSET] + lv[SIZE]] = 0


# ----------------------------------------------------------------------------------------------------
# 2-D and 3-D kernels. ``out`` is [N, L*F] (written in groups of points), ``grads`` level-major
# [L, N, F]. The kernels repeat a few lines rather than share helpers returning nested tuples
# (measured slower, see the module docstring).
# ``lv`` is a private copy of the level's constants: the kernels' stores cannot alias it, so LLVM
# keeps them in registers (measured +10% on the table gradient). F == 2 gets its own unrolled
# branch (+40% on the table gradient, +15% on input gradients).
# ----------------------------------------------------------------------------------------------------


@njit(**_JIT)
def bfloat16_bits(value):
    """The bfloat16 nearest ``value`` (rounded to float32 first), as its ``uint16`` bits: ties to even,
    NaN to a quiet NaN -- the rounding of ``torch.Tensor.to(torch.bfloat16)``."""
    u = np.int64(float32_bits(np.float32(value)))
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.uint16(0x7FC0 if (u & 0x7FFFFFFF) > 0x7F800000 else rounded)  # a select, not a branch


@njit(**_JIT)
def _store(out, n, column, value):
    """``out[n, column] = value``, as bfloat16 bits when ``out`` is ``uint16`` (:func:`bfloat16_bits`)."""
    if out.itemsize == 2:
        out[n, column] = bfloat16_bits(value)
    else:
        out[n, column] = value


def _pairs(table: np.ndarray) -> np.ndarray:
    """A ``[rows, 2]`` table's rows as one complex number each (a view: ``[rows]`` complex64 for float32),
    for :func:`_pair_sum` and :func:`_pair_add`; an empty array for other feature counts and for a table
    that is not C-contiguous (no view of it exists: the kernels then take their general loops)."""
    complex_dtype = np.complex64 if table.dtype == np.float32 else np.complex128
    if table.shape[1] != 2 or not table.flags.c_contiguous:
        return np.empty(0, complex_dtype)
    return table.view(complex_dtype).reshape(-1)


def _row_type(table: np.ndarray) -> np.ndarray:
    """An empty array whose dtype the staged corner rows take: ``uint32`` while every row of ``table`` has a
    32-bit index, else ``int64``. The staging's hash arithmetic is the same; stored into 32 bits, only the
    low 32 bits are kept, and LLVM narrows the vectorised multiplies, xors and adds to 32 bits (twice the
    lanes per instruction), and the scratch is half the size. Measured in one process (2 cores, same
    numbers bit for bit): staging a lego frame's samples 0.133 -> 0.092 s, their forward 4-10 % faster;
    a lego training step's encoding calls 122 -> 115 ms forward, 180 -> 166 ms table gradient."""
    return np.empty(0, np.uint32 if table.shape[0] <= 1 << 32 else np.int64)


@njit(**_JIT)
def _pair_sum(pairs, rows, weights, i, corners):
    """The two interpolated features of a block's point ``i`` from ``rows``/``weights [corners, :]`` and
    the table as :func:`_pairs`: each corner's row read as one 8-byte value (float32), half the loads of
    two ``table[r, f]``, and LLVM pairs the two features' products. The same products and sums, corners
    in :func:`_rows2`/:func:`_rows3`'s order, so the same features bit for bit; measured 1.06-1.09x on a
    lego frame's samples, 1.06x on fox's, 1.04x on training's (3-D, alternating in one process)."""
    w, z = weights[0, i], pairs[rows[0, i]]
    a, b = w * z.real, w * z.imag
    for k in range(1, corners):
        w, z = weights[k, i], pairs[rows[k, i]]
        a += w * z.real
        b += w * z.imag
    return a, b


@njit(**_JIT)
def _pair_add(pairs, row, w, g0, g1):
    """``table[row] += w * (g0, g1)`` through :func:`_pairs`' view: one 8-byte load and store per corner
    where two ``table[row, f] += ...`` made two of each; the same sums, bit for bit. The table gradient
    measured 1.04x (65k training points per call, 3-D, alternating in one process)."""
    z = pairs[row]
    pairs[row] = complex(z.real + w * g0, z.imag + w * g1)  # complex64 holds the float32 sums exactly


@njit(parallel=True, **_JIT)
def _forward_2d(x, table, pairs, meta, scales, interp, out, row_type, n_chunks):
    n_features = table.shape[1]
    xt = np.ascontiguousarray(x.T)  # [2, N]: the staging loops read each axis contiguously
    for chunk in prange(n_chunks):  # one parallel region; each thread encodes its own points
        start, stop = chunk * x.shape[0] // n_chunks, (chunk + 1) * x.shape[0] // n_chunks
        rows, weights = np.empty((4, STAGE_BLOCK), row_type.dtype), np.empty((4, STAGE_BLOCK), x.dtype)
        for group in range(start, stop, GROUP_POINTS):  # their output rows stay in cache over the levels
            group_stop = min(group + GROUP_POINTS, stop)
            for level in range(meta.shape[0]):  # level by level: this level's table stays in cache
                lv, scale, res, column = meta[level].copy(), scales[level], meta[level, RES], level * n_features
                for first in range(group, group_stop, STAGE_BLOCK):
                    count = min(STAGE_BLOCK, group_stop - first)
                    _block_rows2(xt, first, count, scale, res, lv, rows)  # vectorised
                    _block_weights2(xt, first, count, scale, interp, weights)  # vectorised
                    _prefetch_first(table, rows, count, 4, PREFETCH_AHEAD)
                    if pairs.shape[0]:  # F == 2, the common case: a constant trip count, unrolled
                        for i in range(count):
                            _prefetch_ahead(table, rows, i, count, 4, PREFETCH_AHEAD)
                            a, b = _pair_sum(pairs, rows, weights, i, 4)
                            _store(out, first + i, column, a)
                            _store(out, first + i, column + 1, b)
                    else:
                        for i in range(count):
                            _prefetch_ahead(table, rows, i, count, 4, PREFETCH_AHEAD)
                            for f in range(n_features):
                                _store(out, first + i, column + f, _sum_corners(table, rows, weights, i, f, 4))


@njit(**_JIT)
def _cell(v, scale, res):
    """:func:`_axis`'s cell without its branches, for the vectorised loops."""
    one = type(scale)(1)
    return min(max(np.int64(min(np.floor(min(max(v, one - one), one) * scale), scale - one)), 0), res - 1)


@njit(**_JIT)
def _fraction(v, scale):
    """:func:`_axis`'s position within its cell (the linear weight), for the vectorised loops."""
    one = type(scale)(1)
    pos = min(max(v, one - one), one) * scale
    return pos - min(np.floor(pos), scale - one)


@njit(**_JIT)
def _block_rows2(xt, first, count, scale, res, lv, rows):
    """:func:`_block_rows3` in 2-D: :func:`_rows2`'s 4 corner rows into ``rows [4, count]``."""
    offset = lv[OFFSET]
    if lv[HASHED]:
        m = lv[MASK]
        for i in range(count):
            c0, c1 = _cell(xt[0, first + i], scale, res), _cell(xt[1, first + i], scale, res)
            a0, b0 = c0, c0 + 1  # the first prime is 1
            a1, b1 = (c1 * _P1) & _MASK32, ((c1 + 1) * _P1) & _MASK32
            rows[0, i], rows[1, i] = offset + ((a0 ^ a1) & m), offset + ((b0 ^ a1) & m)
            rows[2, i], rows[3, i] = offset + ((a0 ^ b1) & m), offset + ((b0 ^ b1) & m)
    else:
        s1 = lv[STRIDE1]
        for i in range(count):
            r = offset + _cell(xt[0, first + i], scale, res) + _cell(xt[1, first + i], scale, res) * s1
            rows[0, i], rows[1, i], rows[2, i], rows[3, i] = r, r + 1, r + s1, r + s1 + 1


@njit(**_JIT)
def _block_weights2(xt, first, count, scale, interp, weights):
    """:func:`_block_weights3` in 2-D: :func:`_weights2` into ``weights [4, count]``."""
    one = type(scale)(1)
    zero = one - one
    two = one + one
    if interp == LINEAR:
        for i in range(count):
            c = _weights2(_fraction(xt[0, first + i], scale), _fraction(xt[1, first + i], scale))
            weights[0, i], weights[1, i], weights[2, i], weights[3, i] = c[0], c[1], c[2], c[3]
    elif interp == SMOOTHSTEP:
        for i in range(count):
            f0, f1 = _fraction(xt[0, first + i], scale), _fraction(xt[1, first + i], scale)
            c = _weights2(f0 * f0 * (two + one - two * f0), f1 * f1 * (two + one - two * f1))
            weights[0, i], weights[1, i], weights[2, i], weights[3, i] = c[0], c[1], c[2], c[3]
    else:  # NEAREST
        for i in range(count):
            f0, f1 = _fraction(xt[0, first + i], scale), _fraction(xt[1, first + i], scale)
            c = _weights2(one if f0 + f0 >= one else zero, one if f1 + f1 >= one else zero)
            weights[0, i], weights[1, i], weights[2, i], weights[3, i] = c[0], c[1], c[2], c[3]


@njit(**_JIT)
def _block_rows3(xt, first, count, scale, res, lv, rows):
    """Table rows of the 8 corners of points ``first:first + count`` (coordinates ``xt [3, N]``) at one
    level into ``rows [8, count]``: :func:`_axis`'s cell and :func:`_rows3`'s rows, written as a loop
    over points without calls or per-point branches so that LLVM vectorises it."""
    offset = lv[OFFSET]
    if lv[HASHED]:
        m = lv[MASK]
        for i in range(count):
            n = first + i
            c0 = _cell(xt[0, n], scale, res)
            c1 = _cell(xt[1, n], scale, res)
            c2 = _cell(xt[2, n], scale, res)
            a0, b0 = c0, c0 + 1  # the first prime is 1
            a1, b1 = (c1 * _P1) & _MASK32, ((c1 + 1) * _P1) & _MASK32
            a2, b2 = (c2 * _P2) & _MASK32, ((c2 + 1) * _P2) & _MASK32
            rows[0, i] = offset + ((a0 ^ a1 ^ a2) & m)
            rows[1, i] = offset + ((b0 ^ a1 ^ a2) & m)
            rows[2, i] = offset + ((a0 ^ b1 ^ a2) & m)
            rows[3, i] = offset + ((b0 ^ b1 ^ a2) & m)
            rows[4, i] = offset + ((a0 ^ a1 ^ b2) & m)
            rows[5, i] = offset + ((b0 ^ a1 ^ b2) & m)
            rows[6, i] = offset + ((a0 ^ b1 ^ b2) & m)
            rows[7, i] = offset + ((b0 ^ b1 ^ b2) & m)
    else:
        s1, s2 = lv[STRIDE1], lv[STRIDE2]
        for i in range(count):
            n = first + i
            c0 = _cell(xt[0, n], scale, res)
            c1 = _cell(xt[1, n], scale, res)
            c2 = _cell(xt[2, n], scale, res)
            r = offset + c0 + c1 * s1 + c2 * s2
            rows[0, i], rows[1, i], rows[2, i], rows[3, i] = r, r + 1, r + s1, r + s1 + 1
            rows[4, i], rows[5, i], rows[6, i], rows[7, i] = r + s2, r + s2 + 1, r + s1 + s2, r + s1 + s2 + 1


@njit(**_JIT)
def _block_weights3(xt, first, count, scale, interp, weights):
    """The 8 corner weights of points ``first:first + count`` at one level into ``weights [8, count]``
    (:func:`_weights3` of :func:`_axis`'s weights), a loop LLVM vectorises as :func:`_block_rows3`;
    one loop per interpolation: with the branch inside, the same for every point, LLVM left the loop
    unvectorised (1.29x -> 1.00x, measured)."""
    one = type(scale)(1)
    zero = one - one
    two = one + one
    if interp == LINEAR:
        for i in range(count):
            c = _weights3(_fraction(xt[0, first + i], scale), _fraction(xt[1, first + i], scale),
                          _fraction(xt[2, first + i], scale))
            weights[0, i], weights[1, i], weights[2, i], weights[3, i] = c[0], c[1], c[2], c[3]
            weights[4, i], weights[5, i], weights[6, i], weights[7, i] = c[4], c[5], c[6], c[7]
    elif interp == SMOOTHSTEP:
        for i in range(count):
            f0, f1, f2 = (_fraction(xt[0, first + i], scale), _fraction(xt[1, first + i], scale),
                          _fraction(xt[2, first + i], scale))
            c = _weights3(f0 * f0 * (two + one - two * f0), f1 * f1 * (two + one - two * f1),
                          f2 * f2 * (two + one - two * f2))
            weights[0, i], weights[1, i], weights[2, i], weights[3, i] = c[0], c[1], c[2], c[3]
            weights[4, i], weights[5, i], weights[6, i], weights[7, i] = c[4], c[5], c[6], c[7]
    else:  # NEAREST
        for i in range(count):
            f0, f1, f2 = (_fraction(xt[0, first + i], scale), _fraction(xt[1, first + i], scale),
                          _fraction(xt[2, first + i], scale))
            c = _weights3(one if f0 + f0 >= one else zero, one if f1 + f1 >= one else zero,
                          one if f2 + f2 >= one else zero)
            weights[0, i], weights[1, i], weights[2, i], weights[3, i] = c[0], c[1], c[2], c[3]
            weights[4, i], weights[5, i], weights[6, i], weights[7, i] = c[4], c[5], c[6], c[7]


@njit(**_JIT)
def _prefetch_ahead(table, rows, i, count, corners, ahead):
    """Prefetch the corner rows (``rows [corners, :]``) of the block's point ``i + ahead``, if any."""
    if i + ahead < count:
        for k in range(corners):
            prefetch_read(table, rows[k, i + ahead])


@njit(**_JIT)
def _prefetch_first(table, rows, count, corners, ahead):
    """Prefetch the corner rows of the block's first ``ahead`` points."""
    for k in range(corners):
        for i in range(min(count, ahead)):
            prefetch_read(table, rows[k, i])


@njit(**_JIT)
def _sum_corners(table, rows, weights, i, f, corners):
    """Interpolated feature ``f`` of a block's point ``i`` from ``rows``/``weights [corners, :]``, the
    corners summed in :func:`_rows2`/:func:`_rows3`'s order."""
    acc = weights[0, i] * table[rows[0, i], f]
    for k in range(1, corners):
        acc += weights[k, i] * table[rows[k, i], f]
    return acc


@njit(parallel=True, **_JIT)
def _forward_3d(x, table, pairs, meta, scales, interp, out, row_type, n_chunks):
    n_features = table.shape[1]
    xt = np.ascontiguousarray(x.T)  # [3, N]: the staging loops read each axis contiguously
    for chunk in prange(n_chunks):  # one parallel region; each thread encodes its own points
        start, stop = chunk * x.shape[0] // n_chunks, (chunk + 1) * x.shape[0] // n_chunks
        rows, weights = np.empty((8, STAGE_BLOCK), row_type.dtype), np.empty((8, STAGE_BLOCK), x.dtype)
        for group in range(start, stop, GROUP_POINTS):  # their output rows stay in cache over the levels
            group_stop = min(group + GROUP_POINTS, stop)
            for level in range(meta.shape[0]):  # level by level: this level's table stays in cache
                lv, scale, res, column = meta[level].copy(), scales[level], meta[level, RES], level * n_features
                for first in range(group, group_stop, STAGE_BLOCK):
                    count = min(STAGE_BLOCK, group_stop - first)
                    _block_rows3(xt, first, count, scale, res, lv, rows)  # vectorised
                    _block_weights3(xt, first, count, scale, interp, weights)  # vectorised
                    _prefetch_first(table, rows, count, 8, PREFETCH_AHEAD)
                    if pairs.shape[0]:  # F == 2, the common case: a constant trip count, unrolled (measured 1.2x)
                        for i in range(count):
                            _prefetch_ahead(table, rows, i, count, 8, PREFETCH_AHEAD)
                            a, b = _pair_sum(pairs, rows, weights, i, 8)
                            _store(out, first + i, column, a)
                            _store(out, first + i, column + 1, b)
                    else:
                        for i in range(count):
                            _prefetch_ahead(table, rows, i, count, 8, PREFETCH_AHEAD)
                            for f in range(n_features):
                                _store(out, first + i, column + f, _sum_corners(table, rows, weights, i, f, 8))


@njit(parallel=True, **_JIT)
def _backward_table_2d(x, grads, meta, scales, interp, schedule, grad_table, grad_pairs, row_type):
    xt = np.ascontiguousarray(x.T)  # [2, N]: the staging loops read each axis contiguously
    for worker in prange(schedule.shape[0]):  # each worker owns whole levels: no write conflicts
        rows, weights = np.empty((4, STAGE_BLOCK), row_type.dtype), np.empty((4, STAGE_BLOCK), x.dtype)
        for level in schedule[worker]:
            if level < 0:
                continue
            lv, scale, res, g = meta[level].copy(), scales[level], meta[level, RES], grads[level]
            _zero_level(grad_table, lv)
            for first in range(0, x.shape[0], STAGE_BLOCK):  # the forward's vectorised staging
                count = min(STAGE_BLOCK, x.shape[0] - first)
                _block_rows2(xt, first, count, scale, res, lv, rows)
                _block_weights2(xt, first, count, scale, interp, weights)
                if grad_pairs.shape[0]:  # F == 2, the common case: the gradient loaded once
                    for i in range(count):
                        g0, g1 = g[first + i, 0], g[first + i, 1]
                        for k in range(4):
                            _pair_add(grad_pairs, rows[k, i], weights[k, i], g0, g1)
                else:
                    for i in range(count):
                        for f in range(g.shape[1]):
                            for k in range(4):
                                grad_table[rows[k, i], f] += weights[k, i] * g[first + i, f]


@njit(parallel=True, **_JIT)
def _backward_table_3d(x, grads, meta, scales, interp, schedule, grad_table, grad_pairs, row_type):
    xt = np.ascontiguousarray(x.T)  # [3, N]: the staging loops read each axis contiguously
    for worker in prange(schedule.shape[0]):  # each worker owns whole levels: no write conflicts
        rows, weights = np.empty((8, STAGE_BLOCK), row_type.dtype), np.empty((8, STAGE_BLOCK), x.dtype)
        for level in schedule[worker]:
            if level < 0:
                continue
            lv, scale, res, g = meta[level].copy(), scales[level], meta[level, RES], grads[level]
            _zero_level(grad_table, lv)
            for first in range(0, x.shape[0], STAGE_BLOCK):  # the forward's vectorised staging
                count = min(STAGE_BLOCK, x.shape[0] - first)
                _block_rows3(xt, first, count, scale, res, lv, rows)
                _block_weights3(xt, first, count, scale, interp, weights)
                _prefetch_first(grad_table, rows, count, 8, GRADIENT_PREFETCH_AHEAD)
                if grad_pairs.shape[0]:  # F == 2, the common case: the gradient loaded once
                    for i in range(count):
                        _prefetch_ahead(grad_table, rows, i, count, 8, GRADIENT_PREFETCH_AHEAD)
                        g0, g1 = g[first + i, 0], g[first + i, 1]
                        for k in range(8):
                            _pair_add(grad_pairs, rows[k, i], weights[k, i], g0, g1)
                else:
                    for i in range(count):
                        _prefetch_ahead(grad_table, rows, i, count, 8, GRADIENT_PREFETCH_AHEAD)
                        for f in range(g.shape[1]):
                            for k in range(8):
                                grad_table[rows[k, i], f] += weights[k, i] * g[first + i, f]


@njit(parallel=True, **_JIT)
def _backward_x_2d(x, table, grads, meta, scales, interp, grad_x, n_chunks):
    for chunk in prange(n_chunks):  # one parallel region; each thread walks the levels for its points
        start, stop = chunk * x.shape[0] // n_chunks, (chunk + 1) * x.shape[0] // n_chunks
        grad_x[start:stop] = 0
        for level in range(meta.shape[0]):
            lv, scale, res, g = meta[level].copy(), scales[level], meta[level, RES], grads[level]
            for n in range(start, stop):
                c0, w0, g0 = _axis(x[n, 0], scale, res, interp)
                c1, w1, g1 = _axis(x[n, 1], scale, res, interp)
                d0, d1, d2, d3 = _dots4(table, _rows2(c0, c1, lv), g, n)
                one = type(scale)(1)
                # d/dx_i: the difference along axis i, weighted by the other axis' factors
                grad_x[n, 0] += g0 * ((one - w1) * (d1 - d0) + w1 * (d3 - d2))
                grad_x[n, 1] += g1 * ((one - w0) * (d2 - d0) + w0 * (d3 - d1))


@njit(parallel=True, **_JIT)
def _backward_x_3d(x, table, grads, meta, scales, interp, grad_x, n_chunks):
    for chunk in prange(n_chunks):  # one parallel region; each thread walks the levels for its points
        start, stop = chunk * x.shape[0] // n_chunks, (chunk + 1) * x.shape[0] // n_chunks
        grad_x[start:stop] = 0
        for level in range(meta.shape[0]):
            lv, scale, res, g = meta[level].copy(), scales[level], meta[level, RES], grads[level]
            for n in range(start, stop):
                c0, w0, g0 = _axis(x[n, 0], scale, res, interp)
                c1, w1, g1 = _axis(x[n, 1], scale, res, interp)
                c2, w2, g2 = _axis(x[n, 2], scale, res, interp)
                d0, d1, d2, d3, d4, d5, d6, d7 = _dots8(table, _rows3(c0, c1, c2, lv), g, n)
                one = type(scale)(1)
                v0, v1, v2 = one - w0, one - w1, one - w2
                # d/dx_i: the differences along axis i, weighted by the other two axes' factors
                grad_x[n, 0] += g0 * (v1 * v2 * (d1 - d0) + w1 * v2 * (d3 - d2) + v1 * w2 * (d5 - d4)
                                      + w1 * w2 * (d7 - d6))
                grad_x[n, 1] += g1 * (v0 * v2 * (d2 - d0) + w0 * v2 * (d3 - d1) + v0 * w2 * (d6 - d4)
                                      + w0 * w2 * (d7 - d5))
                grad_x[n, 2] += g2 * (v0 * v1 * (d4 - d0) + w0 * v1 * (d5 - d1) + v0 * w1 * (d6 - d2)
                                      + w0 * w1 * (d7 - d3))


# ----------------------------------------------------------------------------------------------------
# Generic path, any d in 1..4: a corner loop over scalar code for 4 axes (unused axes are neutral)
# ----------------------------------------------------------------------------------------------------


@njit(**_JIT)
def _axis_terms(c, hashing, axis, lv, hashed):
    """Index terms (lower vertex, upper vertex) of one axis, combined over axes by :func:`_row`.

    Dense levels and ``Tiled``: ``c * stride`` (summed); xor-of-products hashes: ``c * P mod 2^32``
    (xored); ``BaseConvert``: ``c * m^(d - axis) mod 2^32`` (summed); ``Rng``: ``c << shift`` (xored,
    then scrambled by :func:`_pcg_output`). ``hashing`` is :func:`hash_constants`'s array.
    """
    kind = hashing[0]
    if not hashed or kind == TILED:
        stride = 1 if axis == 0 else lv[STRIDE1 + axis - 1]
        return c * stride, (c + 1) * stride
    factor = hashing[1 + axis]
    if kind == RNG:
        return c << factor, (c + 1) << factor
    return (c * factor) & _MASK32, ((c + 1) * factor) & _MASK32


@njit(**_JIT)
def _point_level(x, n, d, scale, lv, interp, hashing):
    """Index terms (lower, upper) and (w, dw/dx) of every axis for point ``n`` at one level.

    Axes ``i >= d`` get cell 0, weight 0 and zero index terms, so they change neither rows nor weights.
    """
    zero = type(scale)(0)
    res, hashed = lv[RES], lv[HASHED]
    c0, w0, g0 = _axis(x[n, 0], scale, res, interp)
    c1, w1, g1 = _axis(x[n, 1], scale, res, interp) if d > 1 else (0, zero, zero)
    c2, w2, g2 = _axis(x[n, 2], scale, res, interp) if d > 2 else (0, zero, zero)
    c3, w3, g3 = _axis(x[n, 3], scale, res, interp) if d > 3 else (0, zero, zero)
    if hashed and hashing[0] == COHERENT_PRIME:  # the default, without the generic term code
        t0, u0 = c0, c0 + 1
        t1, u1 = _hash_terms(c1, _P1)
        t2, u2 = _hash_terms(c2, _P2)
        t3, u3 = _hash_terms(c3, _P3)
    else:
        t0, u0 = _axis_terms(c0, hashing, 0, lv, hashed)
        t1, u1 = _axis_terms(c1, hashing, 1, lv, hashed) if d > 1 else (0, 0)
        t2, u2 = _axis_terms(c2, hashing, 2, lv, hashed) if d > 2 else (0, 0)
        t3, u3 = _axis_terms(c3, hashing, 3, lv, hashed) if d > 3 else (0, 0)
    return (t0, t1, t2, t3), (u0, u1, u2, u3), (w0, w1, w2, w3), (g0, g1, g2, g3)


@njit(**_JIT)
def _pcg_output(step):
    """tiny-cuda-nn's ``Rng`` hash: PCG32 seeded with 1337, advanced ``step`` (uint64 bits of an
    int64) steps, then its next 32-bit output. Jump-ahead tables: :func:`pcg_tables`."""
    s = np.uint64(step)
    acc_mult, acc_plus = np.uint64(1), np.uint64(0)
    for k in range(64):
        if (s >> np.uint64(k)) & np.uint64(1):
            acc_mult = acc_mult * _PCG_MULTS[k]
            acc_plus = acc_plus * _PCG_MULTS[k] + _PCG_PLUSES[k]
    state = acc_mult * _PCG_STATE0 + acc_plus
    xorshifted = ((state >> np.uint64(18)) ^ state) >> np.uint64(27)
    xorshifted = xorshifted & np.uint64(_MASK32)
    rot = state >> np.uint64(59)
    out = (xorshifted >> rot) | (xorshifted << ((np.uint64(32) - rot) & np.uint64(31)))
    return np.int64(out & np.uint64(_MASK32))


@njit(**_JIT)
def _row(corner, t, u, lv, kind):
    """Absolute table row of one corner: bit ``i`` of ``corner`` picks axis ``i``'s upper vertex."""
    a0 = u[0] if corner & 1 else t[0]
    a1 = u[1] if corner & 2 else t[1]
    a2 = u[2] if corner & 4 else t[2]
    a3 = u[3] if corner & 8 else t[3]
    if lv[HASHED]:
        if kind == TILED:
            h = a0 + a1 + a2 + a3
        elif kind == BASE_CONVERT:
            h = (a0 + a1 + a2 + a3) & _MASK32
        elif kind == RNG:
            h = _pcg_output(a0 ^ a1 ^ a2 ^ a3)
        else:
            h = a0 ^ a1 ^ a2 ^ a3
        return lv[OFFSET] + (h & lv[MASK] if lv[MASK] >= 0 else h % lv[SIZE])
    return lv[OFFSET] + a0 + a1 + a2 + a3


@njit(**_JIT)
def _factors(corner, w):
    """Per-axis interpolation factors of one corner: ``w`` (upper vertex) or ``1 - w`` (lower)."""
    one = type(w[0])(1)
    return (
        w[0] if corner & 1 else one - w[0],
        w[1] if corner & 2 else one - w[1],
        w[2] if corner & 4 else one - w[2],
        w[3] if corner & 8 else one - w[3],
    )


@njit(parallel=True, **_JIT)
def _forward_nd(x, table, meta, scales, interp, d, out, n_chunks, hashing):
    n_features = table.shape[1]
    for chunk in prange(n_chunks):  # one parallel region; each thread encodes its own points
        start, stop = chunk * x.shape[0] // n_chunks, (chunk + 1) * x.shape[0] // n_chunks
        acc = np.empty(n_features, x.dtype)
        for group in range(start, stop, GROUP_POINTS):  # their output rows stay in cache over the levels
            group_stop = min(group + GROUP_POINTS, stop)
            for level in range(meta.shape[0]):
                lv, scale, column = meta[level], scales[level], level * n_features
                for n in range(group, group_stop):
                    t, u, w, _ = _point_level(x, n, d, scale, lv, interp, hashing)
                    acc[:] = 0
                    for corner in range(1 << d):
                        row = _row(corner, t, u, lv, hashing[0])
                        f0, f1, f2, f3 = _factors(corner, w)
                        for f in range(n_features):
                            acc[f] += f0 * f1 * f2 * f3 * table[row, f]
                    for f in range(n_features):
                        _store(out, n, column + f, acc[f])


@njit(parallel=True, **_JIT)
def _backward_table_nd(x, grads, meta, scales, interp, schedule, grad_table, d, hashing):
    for worker in prange(schedule.shape[0]):  # each worker owns whole levels: no write conflicts
        for level in schedule[worker]:
            if level < 0:
                continue
            lv, scale, g = meta[level], scales[level], grads[level]
            _zero_level(grad_table, lv)
            for n in range(x.shape[0]):
                t, u, w, _ = _point_level(x, n, d, scale, lv, interp, hashing)
                for corner in range(1 << d):
                    row = _row(corner, t, u, lv, hashing[0])
                    f0, f1, f2, f3 = _factors(corner, w)
                    for f in range(g.shape[1]):
                        grad_table[row, f] += f0 * f1 * f2 * f3 * g[n, f]


@njit(parallel=True, **_JIT)
def _backward_x_nd(x, table, grads, meta, scales, interp, grad_x, d, n_chunks, hashing):
    for chunk in prange(n_chunks):  # one parallel region; each thread walks the levels for its points
        start, stop = chunk * x.shape[0] // n_chunks, (chunk + 1) * x.shape[0] // n_chunks
        grad_x[start:stop] = 0
        for level in range(meta.shape[0]):
            lv, scale, g = meta[level], scales[level], grads[level]
            for n in range(start, stop):
                t, u, w, dw = _point_level(x, n, d, scale, lv, interp, hashing)
                s0 = s1 = s2 = s3 = type(scale)(0)
                for corner in range(1 << d):
                    row = _row(corner, t, u, lv, hashing[0])
                    dot = type(scale)(0)
                    for f in range(g.shape[1]):
                        dot += table[row, f] * g[n, f]
                    f0, f1, f2, f3 = _factors(corner, w)
                    # d(weight)/d(w_i) = +-(product of the other axes' factors): + for the upper vertex
                    s0 += dot * (f1 * f2 * f3 if corner & 1 else -(f1 * f2 * f3))
                    s1 += dot * (f0 * f2 * f3 if corner & 2 else -(f0 * f2 * f3))
                    s2 += dot * (f0 * f1 * f3 if corner & 4 else -(f0 * f1 * f3))
                    s3 += dot * (f0 * f1 * f2 if corner & 8 else -(f0 * f1 * f2))
                grad_x[n, 0] += s0 * dw[0]
                if d > 1:
                    grad_x[n, 1] += s1 * dw[1]
                if d > 2:
                    grad_x[n, 2] += s2 * dw[2]
                if d > 3:
                    grad_x[n, 3] += s3 * dw[3]


# ----------------------------------------------------------------------------------------------------
# Layout conversion from [N, L*F] (the op's) to level-major [L, N, F] (the backward kernels')
# ----------------------------------------------------------------------------------------------------


#: :func:`_to_level_major` moves the gradients of this many points at a time.
LEVEL_MAJOR_BLOCK = 512


@njit(parallel=True, **_JIT)
def _to_level_major(a, out, n_chunks):
    """``out[level, n, f] = a[n, level * F + f]``, a block of points at a time: the block's rows of ``a``
    stay in the cache while each level's part of ``out`` is written as one contiguous run. Point by
    point (every point writing to all L runs) took 3.7 ms for 65k x 32 float32, blocks 1.3 ms (one
    process, 2 cores). Bfloat16 gradients come as their bits (``a`` ``uint16``, ``out`` a ``uint32`` view
    of float32): widened exactly (the bits shifted up), where a separate conversion made a pass more."""
    n_levels, n_features = out.shape[0], out.shape[2]
    n_points = a.shape[0]
    for chunk in prange(n_chunks):
        start, stop = chunk * n_points // n_chunks, (chunk + 1) * n_points // n_chunks
        for first in range(start, stop, LEVEL_MAJOR_BLOCK):
            last = min(stop, first + LEVEL_MAJOR_BLOCK)
            for level in range(n_levels):
                for n in range(first, last):
                    for f in range(n_features):
                        if a.itemsize == 2:  # bfloat16 bits (resolved at compile time)
                            out[level, n, f] = np.uint32(a[n, level * n_features + f]) << 16
                        else:
                            out[level, n, f] = a[n, level * n_features + f]


# ----------------------------------------------------------------------------------------------------
# NumPy entry points (outputs allocated by the caller, overwritten)
# ----------------------------------------------------------------------------------------------------


#: Below this many points the kernels run on the calling thread only: waking the other threads costs
#: more than it saves, and on a busy machine a parallel region can wait milliseconds for a descheduled
#: worker (measured: 48 ms vs 3 us for a 6-point call under load).
PARALLEL_MIN_POINTS = 4096


@contextlib.contextmanager
def _threads_for(n_points: int):
    if n_points >= PARALLEL_MIN_POINTS or nb.get_num_threads() == 1:
        yield
        return
    previous = nb.get_num_threads()
    nb.set_num_threads(1)  # per calling thread in Numba, so other threads are unaffected
    try:
        yield
    finally:
        nb.set_num_threads(previous)


def _fast_dims(x, meta, hashing):
    """2 or 3 when the straight-line kernels apply (the default hash, power-of-two hashed levels), else 0."""
    pow2 = bool(np.all((meta[:, HASHED] == 0) | (meta[:, MASK] >= 0)))
    default_hash = hashing[0] == COHERENT_PRIME or not meta[:, HASHED].any()
    return x.shape[1] if x.shape[1] in (2, 3) and pow2 and default_hash else 0


def encode(x, table, meta, scales, interp, out, hashing=None):
    """Encode ``x [N, d]`` with ``table [rows, F]`` into ``out [N, L*F]``: in ``x``'s dtype, or as
    bfloat16 bits when ``out`` is ``uint16`` (rounded as the features are written).

    ``hashing``: :func:`hash_constants` of the layout's hash function (default: ``CoherentPrime``).
    """
    hashing = _DEFAULT_HASHING if hashing is None else hashing
    if out.dtype not in (x.dtype, np.uint16):
        raise TypeError(f"encode writes {x.dtype} or bfloat16 bits (uint16), not {out.dtype}")
    d = _fast_dims(x, meta, hashing)
    with _threads_for(x.shape[0]):
        n_chunks = nb.get_num_threads()
        if d == 3:
            _forward_3d(x, table, _pairs(table), meta, scales, interp, out, _row_type(table), n_chunks)
        elif d == 2:
            _forward_2d(x, table, _pairs(table), meta, scales, interp, out, _row_type(table), n_chunks)
        else:
            _forward_nd(x, table, meta, scales, interp, x.shape[1], out, n_chunks, hashing)


def _level_major_grads(grad_out, meta, n_features, dtype=None):
    """``grad_out [N, L*F]`` as ``[L, N, F]``; ``grad_out`` may be bfloat16 bits (``uint16``), widened to
    ``dtype`` (float32)."""
    bits = grad_out.dtype == np.uint16
    grads = np.empty((meta.shape[0], grad_out.shape[0], n_features), dtype=dtype if bits else grad_out.dtype)
    if bits and grads.dtype != np.float32:
        raise TypeError(f"bfloat16 gradients widen to float32, not {grads.dtype}")
    with _threads_for(grad_out.shape[0]):
        _to_level_major(grad_out, grads.view(np.uint32) if bits else grads, nb.get_num_threads())
    return grads


def table_grad(x, grad_out, meta, scales, interp, grad_table, grads=None, hashing=None):
    """d(loss)/d(table) into ``grad_table [rows, F]`` given ``grad_out [N, L*F]`` (or its level-major
    copy ``grads [L, N, F]``)."""
    hashing = _DEFAULT_HASHING if hashing is None else hashing
    if grads is None:
        grads = _level_major_grads(grad_out, meta, grad_table.shape[1])
    d = _fast_dims(x, meta, hashing)
    with _threads_for(x.shape[0]):
        schedule = level_schedule(meta, grad_table.shape[1] * grad_table.itemsize, nb.get_num_threads())
        if d == 3:
            _backward_table_3d(x, grads, meta, scales, interp, schedule, grad_table, _pairs(grad_table),
                               _row_type(grad_table))
        elif d == 2:
            _backward_table_2d(x, grads, meta, scales, interp, schedule, grad_table, _pairs(grad_table),
                               _row_type(grad_table))
        else:
            _backward_table_nd(x, grads, meta, scales, interp, schedule, grad_table, x.shape[1], hashing)


def input_grad(x, table, grad_out, meta, scales, interp, grad_x, grads=None, hashing=None):
    """d(loss)/d(x) into ``grad_x [N, d]`` given ``grad_out [N, L*F]`` (or ``grads [L, N, F]``)."""
    hashing = _DEFAULT_HASHING if hashing is None else hashing
    if grads is None:
        grads = _level_major_grads(grad_out, meta, table.shape[1])
    d = _fast_dims(x, meta, hashing)
    with _threads_for(x.shape[0]):
        n_chunks = nb.get_num_threads()
        if d == 3:
            _backward_x_3d(x, table, grads, meta, scales, interp, grad_x, n_chunks)
        elif d == 2:
            _backward_x_2d(x, table, grads, meta, scales, interp, grad_x, n_chunks)
        else:
            _backward_x_nd(x, table, grads, meta, scales, interp, grad_x, x.shape[1], n_chunks, hashing)


# ----------------------------------------------------------------------------------------------------
# Kernel-family interface (torch tensors), used by ngp.ops.hashgrid
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def constants(layout: GridLayout, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(meta, scales)`` of a layout, built once: per-level integers and float resolutions."""
    return level_table(layout.resolutions, layout.offsets, layout.hashed), np.asarray(layout.resolutions, dtype=dtype)


@functools.lru_cache(maxsize=64)
def hash_constants(hash_function: str, n_dims: int, primes: tuple[int, ...] = ()) -> np.ndarray:
    """``int64 [5]``: the hash kind (:data:`HASH_FUNCTIONS`), then one constant per axis: the prime
    (xor-of-products hashes), ``m^(d - axis) mod 2^32`` (``BaseConvert``, whose sequential
    ``k = (k + c_i) * m`` unrolls into a sum of such terms) or the bit shift (``Rng``).

    ``primes`` (a layout's ``hash_primes``) replace an xor-of-products hash's factors; the kind is then
    ``Prime``'s, the generic path's xor-of-products code. (The 2-D/3-D fast paths keep CoherentPrime's
    primes as compile-time constants: reading factors at run time there cost the 3-D forward kernel
    5-15 %, measured, so searched hashes take the generic path.)
    """
    kind = HASH_FUNCTIONS[hash_function]
    factors = [0] * MAX_DIMS
    if primes:
        kind = HASH_FUNCTIONS["Prime"]
        factors = list(primes) + [0] * (MAX_DIMS - len(primes))
    elif hash_function in HASH_PRIMES:
        factors = list(HASH_PRIMES[hash_function])
    elif hash_function == "BaseConvert":
        factors[:n_dims] = [pow(BASE_CONVERT_FACTOR, n_dims - axis, 2**32) for axis in range(n_dims)]
    elif hash_function == "Rng":
        factors[:n_dims] = [axis * (64 // n_dims) for axis in range(n_dims)]
    return np.array([kind, *factors], dtype=np.int64)


def _numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"the Numba hash-grid kernels support float32 and float64 tensors, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"the Numba hash-grid kernels need CPU tensors, got {t.device}")
    return t.detach().contiguous().numpy()


def _widened(table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The table in ``x``'s dtype when it is stored narrower (float16): the kernels read one dtype."""
    if table.is_floating_point() and table.element_size() < x.element_size():
        return table.to(x.dtype)
    return table


def forward(x: torch.Tensor, table: torch.Tensor, layout: GridLayout, interpolation: int,
            out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x [N, d]``, ``table [rows, F]`` (CPU; x's dtype or narrower) -> ``[N, L*F]`` features in x.dtype,
    or ``out_dtype=torch.bfloat16``: the same features rounded to bfloat16 as they are written (the
    values of ``.to(torch.bfloat16)``, without the float32 array and the pass over it)."""
    xs, ts = _numpy(x), _numpy(_widened(table, x))
    meta, scales = constants(layout, xs.dtype)
    out_dtype = out_dtype or x.dtype
    if out_dtype not in (x.dtype, torch.bfloat16):
        raise TypeError(f"the Numba hash-grid forward writes {x.dtype} or torch.bfloat16, not {out_dtype}")
    out = torch.empty(x.shape[0], layout.n_levels * table.shape[1], dtype=out_dtype)
    hashing = hash_constants(layout.hash_function, layout.n_dims, layout.hash_primes)
    out_np = out.view(torch.int16).numpy().view(np.uint16) if out_dtype == torch.bfloat16 else out.numpy()
    encode(xs, ts, meta, scales, interpolation, out_np, hashing)
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
    """Gradients of the loss w.r.t. ``table`` (in ``x.dtype``) and ``x`` (each ``None`` unless asked for).
    ``grad_out`` in ``x.dtype``, or bfloat16 with float32 ``x`` (widened as it is read)."""
    table = _widened(table, x)
    xs, ts = _numpy(x), _numpy(table)
    if grad_out.dtype == torch.bfloat16 and x.dtype == torch.float32 and grad_out.device.type == "cpu":
        gs = grad_out.detach().contiguous().view(torch.int16).numpy().view(np.uint16)
    else:
        gs = _numpy(grad_out)
    meta, scales = constants(layout, xs.dtype)
    hashing = hash_constants(layout.hash_function, layout.n_dims, layout.hash_primes)
    grads = _level_major_grads(gs, meta, table.shape[1], xs.dtype)
    grad_table = grad_x = None
    if needs_table_grad:
        grad_table = torch.empty(table.shape, dtype=x.dtype)  # zeroed level by level in the kernel
        table_grad(xs, gs, meta, scales, interpolation, grad_table.numpy(), grads, hashing)
    if needs_x_grad:
        grad_x = torch.empty(x.shape, dtype=x.dtype)
        input_grad(xs, ts, gs, meta, scales, interpolation, grad_x.numpy(), grads, hashing)
    return grad_table, grad_x
