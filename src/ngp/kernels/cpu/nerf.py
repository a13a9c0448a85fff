"""Numba kernels of the NeRF ray operations (CPU): occupancy-grid marching and volume compositing.

The definitions live in :mod:`ngp.kernels.reference.nerf`; these kernels compute the same numbers
(tests compare them). The public functions take and return torch CPU tensors (passed to Numba as
zero-copy NumPy views) with the signatures documented in :mod:`ngp.ops.nerf`; the ``_``-prefixed
``@njit`` functions are the loops.

* **Marching**: two passes parallel over rays, as instant-ngp's ``generate_training_samples_nerf``:
  count the samples of every ray, exclusive scan into ``ray_offsets``, then march again and write each
  ray's samples into its own slice (no atomics, output sorted by ray). The march runs in float64 and
  *without* ``fastmath``: skipping decisions compare positions with cell boundaries and step counts
  with integers, and must agree with the reference bit for bit; the loop is branchy and gains nothing
  from reassociation anyway.
* **Compositing**: forward and backward parallel over rays (``fastmath``, float64 accumulators). The
  backward is one front-to-back sweep per ray: the suffix ``sum_{j>i} w_j g_j`` is ``total - prefix``,
  with ``total`` taken from the forward outputs (instant-ngp's ``rgb_ray - rgb_ray2`` trick).
* **Weights** without gradients (:func:`render_weight_from_density`), parallel over rays: rendering
  picks the samples worth colouring by them, one pass instead of a dozen tensor operations.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch
from numba import njit, prange

__all__ = ["march_rays", "composite_forward", "composite_backward", "render_weight_from_density", "cell_positions",
           "sort_by_ray", "samples_in_front", "decay_density_", "occupancy_from_density"]

_EXACT = dict(parallel=True, fastmath=False, cache=True)
_FAST = dict(parallel=True, fastmath=True, cache=True)

# ----------------------------------------------------------------------------------------------------
# Marching
# ----------------------------------------------------------------------------------------------------


@njit(fastmath=False, cache=True)
def _to_stepping(t, cone, min_step, max_step):
    """Scalar version of ``reference.to_stepping`` (``cone`` from :func:`_cone_tuple`)."""
    linear, log1p_c, a, b, at, bt, inv_min, inv_max, inv_log1p_c = cone
    if linear:
        return t * inv_min
    if t <= at:
        return (t - at) * inv_min + a
    if t <= bt:
        return math.log(t) * inv_log1p_c
    return (t - bt) * inv_max + b


@njit(fastmath=False, cache=True)
def _from_stepping(n, cone, min_step, max_step):
    """Scalar version of ``reference.from_stepping``."""
    linear, log1p_c, a, b, at, bt, inv_min, inv_max, inv_log1p_c = cone
    if linear:
        return n * min_step
    if n <= a:
        return (n - a) * min_step + at
    if n <= b:
        return math.exp(n * log1p_c)
    return (n - b) * max_step + bt


@njit(fastmath=False, cache=True)
def _sample_bounds(n, hi_n, hi_t, cone, min_step, max_step):
    """A sample's bounds ``from_stepping(n -/+ 0.5)`` -> ``(lower, n + 0.5, upper)``, given the previous
    sample's ``hi_n = n' + 0.5`` and ``hi_t`` (its upper bound): with cone steps each bound is an exp, and
    consecutive samples share one (``n' + 1 - 0.5`` is ``n' + 0.5`` as a rule), so the previous upper
    bound is reused when its argument is the same number: the same value as computing it."""
    lo_n = n - 0.5
    lo_t = hi_t if lo_n == hi_n else _from_stepping(lo_n, cone, min_step, max_step)
    return lo_t, n + 0.5, _from_stepping(n + 0.5, cone, min_step, max_step)


@njit(fastmath=False, cache=True)
def _lookup_mip(rx, ry, rz, dt, dt_scale, n_cascades):
    """``reference.mip_from_dt`` for one point (``r*`` = (position - center) / base_size,
    ``dt_scale = 2 * resolution / base_size``)."""
    if n_cascades == 1:
        return 0
    maxval = max(abs(rx), max(abs(ry), abs(rz)))
    mip = 0
    if maxval != 0.0:
        exponent = math.frexp(maxval)[1]
        mip = min(max(exponent + 1, 0), n_cascades - 1)
    scaled = dt * dt_scale
    if scaled >= 1.0:
        exponent = math.frexp(scaled)[1]
        mip = min(max(mip, exponent), n_cascades - 1)
    return mip


@njit(fastmath=False, cache=True)
def _exit_distance(g, d, inv_d, cell, k, n):
    """Distance along one axis to the next cell boundary (``reference.distance_to_cell_exit``; ``g`` in
    cells of side ``cell``); with ``k > 1``, to the exit of the ``2k - 1`` cells centred on the one
    holding ``g``, clipped to the grid's ``n`` cells (the marcher's cubes of empty blocks)."""
    if d == 0.0:
        return np.inf
    sign = 1.0 if d > 0.0 else -1.0
    boundary = math.floor(g + 0.5 + 0.5 * sign)
    if k > 1:
        boundary = min(boundary + (k - 1), n) if d > 0.0 else max(boundary - (k - 1), 0)
    return (boundary - g) * cell * inv_d


@njit(fastmath=False, cache=True)
def _dt_mip(dt, dt_scale):
    """The step-length part of ``mip_from_dt`` (-1 when the step is shorter than half a cell)."""
    scaled = dt * dt_scale
    return math.frexp(scaled)[1] if scaled >= 1.0 else -1


@njit(fastmath=False, cache=True)
def _march_ray(r, origins, directions, t_near, t_far, first_offsets, occupied, blocks, block, center, base_size,
               resolution, min_step, max_step, cone, max_samples, write, base, positions, ts, t_starts, t_ends,
               ray_indices, run_start, run_count, n_runs):
    """March ray ``r``; return its sample count.

    ``write``: store the samples from index ``base``. Otherwise record the runs of consecutive samples
    (``run_start[r, k]`` = stepping coordinate of the first, ``run_count[r, k]`` = length; ``n_runs[r]``
    = -1 when there are more runs than room) so that the fill pass needs no second march.

    Empty space is skipped cell by cell as instant-ngp does, and additionally in cubes of
    ``block^3``-cell blocks: ``blocks[cascade, octant]`` holds each block's skip size ``k``
    (:func:`_skip_sizes`) for rays moving towards ``octant`` (the signs of the direction), and a ray in
    an empty block jumps to the exit of the ``k^3`` empty blocks that extend from it that way. Such a
    jump lands on exactly the lattice point the cell-by-cell skips would reach (every lattice point
    inside the cube is in an empty cell of the same cascade, and the cube is convex), so the samples
    are the same; with cone stepping a cube (else the block alone) is only skipped when the step
    length cannot change the cascade before its exit. Far from the scene a ray crosses the grid in a
    few jumps: the first 4 samples of a lego frame's 640k rays took 244 ms, 429 ms with one 8^3 block
    per jump (465k of the rays hit nothing: 177 against 288 ms).
    """
    n_cascades = occupied.shape[0]
    n_blocks = resolution // block
    # the octant the ray moves towards (bit 2: -x, 1: -y, 0: -z), as _forward_cubes numbers them
    octant = (4 if directions[r, 0] < 0.0 else 0) + (2 if directions[r, 1] < 0.0 else 0) + \
        (1 if directions[r, 2] < 0.0 else 0)
    room = run_start.shape[1]
    inv_base = 1.0 / base_size  # the reference multiplies by the same reciprocals
    dt_scale = 2.0 * resolution / base_size
    cell0 = base_size / resolution
    ox, oy, oz = np.float64(origins[r, 0]), np.float64(origins[r, 1]), np.float64(origins[r, 2])
    dx, dy, dz = np.float64(directions[r, 0]), np.float64(directions[r, 1]), np.float64(directions[r, 2])
    idx = 1.0 / dx if dx != 0.0 else 0.0
    idy = 1.0 / dy if dy != 0.0 else 0.0
    idz = 1.0 / dz if dz != 0.0 else 0.0
    near, far = np.float64(t_near[r]), np.float64(t_far[r])
    cx, cy, cz = center
    linear = cone[0]
    n = _to_stepping(near, cone, min_step, max_step) + first_offsets[r]
    count = 0
    runs = 0
    previous_emitted = False
    bounds = write or (n_cascades > 1 and not linear)  # the sample's bounds are needed (_sample_bounds)
    hi_n, hi_t, lo_t = -np.inf, 0.0, 0.0
    while count < max_samples:
        t = _from_stepping(n, cone, min_step, max_step)
        if not t < far:
            break
        if bounds:
            lo_t, hi_n, hi_t = _sample_bounds(n, hi_n, hi_t, cone, min_step, max_step)
        px, py, pz = ox + t * dx, oy + t * dy, oz + t * dz
        rx, ry, rz = (px - cx) * inv_base, (py - cy) * inv_base, (pz - cz) * inv_base
        mip = 0
        if n_cascades > 1:
            dt = min_step if linear else hi_t - lo_t
            mip = _lookup_mip(rx, ry, rz, dt, dt_scale, n_cascades)
        inv_scale = math.ldexp(1.0, -mip)  # exact: the reference's division by 2**mip
        gx = (rx * inv_scale + 0.5) * resolution
        gy = (ry * inv_scale + 0.5) * resolution
        gz = (rz * inv_scale + 0.5) * resolution
        ix, iy, iz = math.floor(gx), math.floor(gy), math.floor(gz)
        inside = 0 <= ix < resolution and 0 <= iy < resolution and 0 <= iz < resolution
        occ = False
        if inside:
            occ = occupied[mip, (int(ix) * resolution + int(iy)) * resolution + int(iz)] != 0
        if occ:
            if write:
                s = base + count
                positions[s, 0], positions[s, 1], positions[s, 2] = px, py, pz
                ts[s] = t
                t_starts[s] = max(lo_t, near)
                t_ends[s] = min(hi_t, far)
                ray_indices[s] = r
            elif previous_emitted:
                if runs <= room:
                    run_count[r, runs - 1] += 1
            else:
                if runs < room:
                    run_start[r, runs] = n
                    run_count[r, runs] = 1
                runs += 1
            previous_emitted = True
            count += 1
            n += 1.0
            continue
        previous_emitted = False
        cell = cell0 * math.ldexp(1.0, mip)
        t_target = -1.0
        if block > 1:
            k = 1  # outside the grid: the block the position would be in
            if inside:
                bx, by, bz = int(ix) // block, int(iy) // block, int(iz) // block
                k = blocks[mip, octant, (bx * n_blocks + by) * n_blocks + bz]
            size = cell * block
            inv_block = 1.0 / block  # a power of two: exact
            while k > 0:
                dist = min(_exit_distance(gx * inv_block, dx, idx, size, k, n_blocks),
                           min(_exit_distance(gy * inv_block, dy, idy, size, k, n_blocks),
                               _exit_distance(gz * inv_block, dz, idz, size, k, n_blocks)))
                t_exit = t + max(dist, 0.0)
                safe = linear or mip == n_cascades - 1
                if not safe:
                    n_exit = _to_stepping(t_exit, cone, min_step, max_step)
                    dt_exit = (_from_stepping(n_exit + 0.5, cone, min_step, max_step)
                               - _from_stepping(n_exit - 0.5, cone, min_step, max_step))
                    safe = _dt_mip(dt_exit, dt_scale) <= mip
                if safe:
                    t_target = t_exit
                    break
                k = 1 if k > 1 else 0  # the step could reach a coarser cascade: try the block alone
        if t_target < 0.0:
            dist = min(_exit_distance(gx, dx, idx, cell, 1, resolution),
                       min(_exit_distance(gy, dy, idy, cell, 1, resolution),
                           _exit_distance(gz, dz, idz, cell, 1, resolution)))
            t_target = t + max(dist, 0.0)
        n += math.ceil(max(_to_stepping(t_target, cone, min_step, max_step) - n, 0.5))
    if not write:
        n_runs[r] = runs if runs <= room else -1
    return count


@njit(**_EXACT)
def _march_count(origins, directions, t_near, t_far, first_offsets, occupied, blocks, block, center, base_size,
                 resolution, min_step, max_step, cone, max_samples, counts, run_start, run_count, n_runs):
    positions = np.empty((0, 3), origins.dtype)
    ts = np.empty(0, origins.dtype)
    ray_indices = np.empty(0, np.int64)
    for r in prange(origins.shape[0]):
        counts[r] = _march_ray(r, origins, directions, t_near, t_far, first_offsets, occupied, blocks, block, center,
                               base_size, resolution, min_step, max_step, cone, max_samples, False, 0, positions, ts,
                               ts, ts, ray_indices, run_start, run_count, n_runs)


@njit(**_EXACT)
def _march_fill(origins, directions, t_near, t_far, first_offsets, occupied, blocks, block, center, base_size,
                resolution, min_step, max_step, cone, max_samples, offsets, run_start, run_count, n_runs, positions,
                ts, t_starts, t_ends, ray_indices):
    for r in prange(origins.shape[0]):
        if n_runs[r] < 0:  # more runs than recorded: march again, writing
            _march_ray(r, origins, directions, t_near, t_far, first_offsets, occupied, blocks, block, center,
                       base_size, resolution, min_step, max_step, cone, max_samples, True, offsets[r], positions, ts,
                       t_starts, t_ends, ray_indices, run_start, run_count, n_runs)
            continue
        ox, oy, oz = np.float64(origins[r, 0]), np.float64(origins[r, 1]), np.float64(origins[r, 2])
        dx, dy, dz = np.float64(directions[r, 0]), np.float64(directions[r, 1]), np.float64(directions[r, 2])
        near, far = np.float64(t_near[r]), np.float64(t_far[r])
        s = offsets[r]
        hi_n, hi_t = -np.inf, 0.0  # the previous sample's upper bound (_sample_bounds)
        for k in range(n_runs[r]):
            for j in range(run_count[r, k]):
                n = run_start[r, k] + j  # == the marcher's repeated n += 1 (integer steps round alike)
                t = _from_stepping(n, cone, min_step, max_step)
                positions[s, 0], positions[s, 1], positions[s, 2] = ox + t * dx, oy + t * dy, oz + t * dz
                ts[s] = t
                lo_t, hi_n, hi_t = _sample_bounds(n, hi_n, hi_t, cone, min_step, max_step)
                t_starts[s] = max(lo_t, near)
                t_ends[s] = min(hi_t, far)
                ray_indices[s] = r
                s += 1


@njit(**_EXACT)
def _cell_positions(flat, offset, resolution, cell_sizes, corners, lo, hi, out):
    """:func:`ngp.kernels.reference.nerf.cell_positions`, parallel over cells (``offset [N or 1, 3]``),
    the same float32 operations (no ``fastmath``: the same numbers bit for bit)."""
    per_cascade = resolution * resolution * resolution
    offset_step = np.int64(0 if offset.shape[0] == 1 else 1)  # one offset for all, or one per cell
    for i in prange(flat.shape[0]):
        c = flat[i] // per_cascade
        rest = flat[i] - c * per_cascade
        x = rest // (resolution * resolution)
        yz = rest - x * (resolution * resolution)
        y = yz // resolution
        j, size = i * offset_step, cell_sizes[c]
        p0 = corners[c, 0] + (np.float32(x) + offset[j, 0]) * size
        p1 = corners[c, 1] + (np.float32(y) + offset[j, 1]) * size
        p2 = corners[c, 2] + (np.float32(yz - y * resolution) + offset[j, 2]) * size
        out[i, 0], out[i, 1] = max(min(p0, hi[0]), lo[0]), max(min(p1, hi[1]), lo[1])
        out[i, 2] = max(min(p2, hi[2]), lo[2])


def cell_positions(flat, offset, resolution, cell_sizes, corners, lo, hi):
    """The Numba form of :func:`ngp.kernels.reference.nerf.cell_positions` (a fox grid update's 786k
    cells: 20 -> 4 ms, measured)."""
    out = torch.empty(flat.shape[0], 3, dtype=torch.float32)
    _cell_positions(_np(flat.to(torch.int64)), _np(offset.to(torch.float32)), resolution, _np(cell_sizes),
                    _np(corners), _np(lo), _np(hi), _np(out))
    return out


@njit(**_EXACT)
def _decay(density, decay):
    for i in prange(density.shape[0]):
        value = density[i]
        density[i] = value * decay if value > 0 else value


def decay_density_(density, decay):
    """The Numba form of :func:`ngp.kernels.reference.nerf.decay_density_`, the same float32 products in
    one pass where ``where`` made three (fox's 6.3M cells: 8.0-10.2 -> 0.6 ms, measured)."""
    _decay(_np(density.reshape(-1)), np.float32(decay))  # torch multiplies float32 by a Python number in float32
    torch.autograd.graph.increment_version(density)  # written through NumPy: tell whoever caches on versions
    return density


@njit(**_EXACT)
def _threshold_cells(density, valid, threshold, out):
    for i in prange(density.shape[0]):
        out[i] = (density[i] > threshold) & (valid[i] != 0)


@njit(**_EXACT)
def _pool_into_coarser(occupied, valid, resolution):
    """Each cascade's 2x2x2 cells ORed into the middle half of the next coarser one, finest first, then
    the valid mask (:func:`ngp.kernels.reference.nerf.occupancy_from_density`); parallel over x slices."""
    res, half, quarter = resolution, resolution // 2, resolution // 4
    for k in range(1, occupied.shape[0]):
        for x in prange(half):
            for y in range(half):
                for z in range(half):
                    any_occupied = 0
                    for dx in range(2):
                        for dy in range(2):
                            row = ((2 * x + dx) * res + 2 * y + dy) * res + 2 * z
                            any_occupied |= occupied[k - 1, row] | occupied[k - 1, row + 1]
                    occupied[k, ((quarter + x) * res + quarter + y) * res + quarter + z] |= any_occupied
    # as the reference: the valid mask again once all is pooled (only the pooled cells can have lost it)
    for k in range(1, occupied.shape[0]):
        for x in prange(half):
            for y in range(half):
                row = ((quarter + x) * res + quarter + y) * res + quarter
                for z in range(half):
                    occupied[k, row + z] &= valid[k, row + z]


def occupancy_from_density(density, valid, threshold):
    """The Numba form of :func:`ngp.kernels.reference.nerf.occupancy_from_density`: one pass to threshold,
    one to pool (fox's three cascades of 128^3: 5.2 -> 2.0 ms, measured)."""
    resolution = round(density.shape[1] ** (1 / 3))
    out = torch.empty(density.shape, dtype=torch.bool)
    o = _np(out).view(np.uint8)
    v = _np(valid).view(np.uint8)
    _threshold_cells(_np(density.reshape(-1)), v.reshape(-1), np.float32(threshold), o.reshape(-1))
    _pool_into_coarser(o, v, resolution)
    return out


@njit(cache=True)
def _samples_in_front(sigmas, t_starts, t_ends, ray_offsets, log_transmittance, log_threshold, keep, after):
    """:func:`ngp.kernels.reference.nerf.samples_in_front` in one pass on one thread, its running sum in
    the same order (bit for bit; no ``fastmath``); returns the number of samples kept."""
    total = 0.0  # the reference's cumulative sum over all samples
    n_kept = 0
    for r in range(ray_offsets.shape[0] - 1):
        start = total
        for j in range(ray_offsets[r], ray_offsets[r + 1]):
            tau = np.float64(sigmas[j] * (t_ends[j] - t_starts[j]))
            inclusive = total + tau
            if log_transmittance[r] - (inclusive - tau - start) > log_threshold:
                keep[n_kept] = j
                n_kept += 1
            total = inclusive
        after[r] = log_transmittance[r] - (total - start)
    return n_kept


def samples_in_front(sigmas, t_starts, t_ends, ray_offsets, log_transmittance, log_threshold):
    """The Numba form of :func:`ngp.kernels.reference.nerf.samples_in_front`: one pass instead of ~15
    tensor operations per round of the training pre-pass."""
    keep = torch.empty(sigmas.shape[0], dtype=torch.int64)
    after = torch.empty(ray_offsets.shape[0] - 1, dtype=torch.float64)
    n_kept = _samples_in_front(_np(sigmas), _np(t_starts), _np(t_ends), _np(ray_offsets),
                               _np(log_transmittance.to(torch.float64)), float(log_threshold), _np(keep), _np(after))
    return keep[:n_kept], after


@njit(cache=True)
def _sort_by_ray(ray_indices, offsets, order):
    """A counting sort: count each ray's samples, scan the counts into ``offsets``, then place every
    sample after the earlier samples of its ray. One thread: O(S + R), a few hundred microseconds for a
    training step's samples."""
    for j in range(ray_indices.shape[0]):
        offsets[ray_indices[j] + 1] += 1
    for r in range(1, offsets.shape[0]):
        offsets[r] += offsets[r - 1]
    cursor = offsets[:-1].copy()
    for j in range(ray_indices.shape[0]):
        r = ray_indices[j]
        order[cursor[r]] = j
        cursor[r] += 1


def sort_by_ray(ray_indices, n_rays):
    """The Numba form of :func:`ngp.kernels.reference.nerf.sort_by_ray` (the same permutation; a
    training step's ~110k samples: ``torch.sort`` and ``bincount`` ~1.2 ms, this ~0.2 ms)."""
    if ray_indices.numel() and not 0 <= int(ray_indices.min()) <= int(ray_indices.max()) < n_rays:
        raise ValueError(f"ray_indices must lie in [0, {n_rays}), got {int(ray_indices.min())}.."
                         f"{int(ray_indices.max())}")  # before the loops write out of bounds
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64)
    order = torch.empty(ray_indices.shape[0], dtype=torch.int64)
    _sort_by_ray(_np(ray_indices.to(torch.int64)), _np(offsets), _np(order))
    return order, offsets


@njit(**_EXACT)
def _block_occupancy(occupied, resolution, block, out):
    """``out[c, (bx * nb + by) * nb + bz]`` = any cell of block (bx, by, bz) of cascade c is occupied."""
    n_blocks = resolution // block
    for cb in prange(occupied.shape[0] * n_blocks):
        c, bx = cb // n_blocks, cb % n_blocks
        for by in range(n_blocks):
            for bz in range(n_blocks):
                any_occupied = 0
                for x in range(bx * block, (bx + 1) * block):
                    for y in range(by * block, (by + 1) * block):
                        row = (x * resolution + y) * resolution
                        for z in range(bz * block, (bz + 1) * block):
                            any_occupied |= occupied[c, row + z]
                out[c, (bx * n_blocks + by) * n_blocks + bz] = any_occupied


@njit(**_EXACT)
def _forward_cubes(obstacle, n, cap, out):
    """``out[c, o, (x * n + y) * n + z]`` = side, in blocks, of the largest cube of blocks free of
    ``obstacle`` that has block (x, y, z) of cascade ``c`` (an ``n^3`` grid) as its corner and extends
    towards octant ``o`` (bit 2: towards -x, bit 1: -y, bit 0: -z; else +), at most ``cap``; 0 on
    obstacles; blocks outside the grid count as free. The three-dimensional "largest square" recursion,
    one sweep per octant from its far corner: a cube of side s at a block is the block and the cubes of
    side s - 1 at its 7 neighbours towards the octant."""
    for co in prange(obstacle.shape[0] * 8):
        c, o = co // 8, co % 8
        flip_x, flip_y, flip_z = o & 4, o & 2, o & 1
        # the sweep runs in coordinates flipped so that the octant is +x+y+z, over a grid padded with a
        # layer of free blocks on the far faces: the 7 neighbours need no bounds checks
        w = np.full((n + 1, n + 1, n + 1), cap, np.uint8)
        for u in range(n - 1, -1, -1):
            x = n - 1 - u if flip_x else u
            for v in range(n - 1, -1, -1):
                y = n - 1 - v if flip_y else v
                row = (x * n + y) * n
                for q in range(n - 1, -1, -1):
                    z = n - 1 - q if flip_z else q
                    if obstacle[c, row + z]:
                        w[u, v, q] = 0
                    else:
                        ahead = min(min(min(w[u + 1, v, q], w[u, v + 1, q]), min(w[u, v, q + 1], w[u + 1, v + 1, q])),
                                    min(min(w[u + 1, v, q + 1], w[u, v + 1, q + 1]), w[u + 1, v + 1, q + 1]))
                        w[u, v, q] = min(cap, 1 + np.int32(ahead))
                    out[c, o, row + z] = w[u, v, q]


@njit(**_EXACT)
def _free_inner_blocks(sizes, occupied, n):
    """Skip size 1 (the block itself) for the empty blocks of each cascade above the first that lie in the
    middle half of each axis (the inner cascade's box, looked up there), in every octant."""
    q = n // 4
    for cx in prange((sizes.shape[0] - 1) * 2 * q):
        c, x = 1 + cx // (2 * q), q + cx % (2 * q)
        for y in range(q, 3 * q):
            for z in range(q, 3 * q):
                block = (x * n + y) * n + z
                if occupied[c, block] == 0:
                    for o in range(8):
                        sizes[c, o, block] = 1


def _skip_sizes(any_occupied: np.ndarray, n_blocks: int) -> np.ndarray:
    """Per block and octant of directions (``[C, 8, n_blocks^3]``, from :func:`_block_occupancy`'s
    ``[C, n_blocks^3]``), how far the marcher may skip: 0 for an occupied block, else the side ``k`` of
    the largest cube of empty blocks with this block as its corner towards the octant a ray moves in
    (:func:`_forward_cubes`, at most 255). A ray enters the block going that way, so it crosses the cube
    and may jump to its far faces. The cube the block centred before (the largest with empty blocks
    around it on every side) reached about half as far ahead: a lego frame's march took 0.35 s with
    it, 0.21 s with these (fox 1.19 -> 1.13 s, its rays mostly in occupied cells); summarising a grid
    (:func:`_blocks_for`, once per change) takes ~6 instead of 8.2 ms for lego's 64^3 blocks, ~17
    instead of 12 ms for fox's three cascades (measured, 2 cores).

    In cascades above the first, the inner cascade's box (the middle half of each axis) is looked up
    in that cascade, so its blocks count as not skippable for their neighbours and get at most 1
    (themselves) when empty (:func:`_free_inner_blocks`: fox's 3 cascades 0.07 ms, where a NumPy
    boolean-mask assignment over every size took 4.3 ms, measured)."""
    n_cascades = any_occupied.shape[0]
    occupied = any_occupied.reshape(n_cascades, n_blocks, n_blocks, n_blocks) != 0
    inner = np.zeros_like(occupied)
    q = n_blocks // 4
    if n_cascades > 1 and q > 0:
        inner[1:, q:3 * q, q:3 * q, q:3 * q] = True
    obstacle = (occupied | inner).reshape(n_cascades, -1).view(np.uint8)
    sizes = np.empty((n_cascades, 8, n_blocks ** 3), np.uint8)
    # n_blocks: the cube covers the whole grid (it is clipped to it)
    _forward_cubes(obstacle, n_blocks, min(n_blocks, 255), sizes)
    _free_inner_blocks(sizes, any_occupied, n_blocks)  # nothing to do with one cascade
    return sizes


def _block_size(resolution: int, n_cascades: int) -> int:
    """Blocks of 2^3 cells where they tile the grid and, with several cascades, also the inner
    cascade's box (which starts at cell ``resolution / 4``), so that no block straddles two cascades;
    else 1 (no blocks). Small blocks skip closer to the occupied cells: with the cubes of the time
    (centred on the block, before :func:`_forward_cubes`) the first round of a frame's march (lego at
    800x800 / fox at 540x960, 2 cores) took 229 / 433 ms with 2-cell blocks, 246 / 466 ms with 4 and
    368 / 585 ms with 8 (whose radii were mostly 1 on lego: scattered occupied cells leave few empty
    8^3 blocks beside each other)."""
    for block in (2,):
        if resolution % block == 0 and (n_cascades == 1 or (resolution // 4) % block == 0):
            return block
    return 1


def _cone_tuple(cone_angle: float, min_step: float, max_step: float):
    inv_min, inv_max = 1.0 / min_step, 1.0 / max_step
    if cone_angle <= 1e-5:
        return (True, 0.0, 0.0, 0.0, 0.0, 0.0, inv_min, inv_max, 0.0)
    log1p_c = math.log1p(cone_angle)
    a = (math.log(min_step) - math.log(log1p_c)) / log1p_c
    b = (math.log(max_step) - math.log(log1p_c)) / log1p_c
    return (False, log1p_c, a, b, math.exp(a * log1p_c), math.exp(b * log1p_c), inv_min, inv_max, 1.0 / log1p_c)


#: Runs of consecutive samples remembered per ray between the two passes (more: the ray is re-marched).
RUNS_PER_RAY = 8


#: The last block summaries built, by (grid tensor, its version, resolution): marching in segments
#: (NeRF training and rendering) calls march_rays several times per step on one unchanged grid, and
#: summarising 2M cells per cascade costs about a millisecond each time.
_BLOCKS_CACHE: list = []  # [(weakref to the grid tensor, (address, shape, version, resolution, block), blocks)]


def _blocks_for(occupied: torch.Tensor, occ: np.ndarray, resolution: int, block: int) -> np.ndarray:
    """The skip sizes of each ``block^3`` block of each cascade (:func:`_skip_sizes`); reused while the
    same grid tensor (by identity, not address; a view counts as its base, e.g. the uint8 view of a bool
    grid made per call) is unchanged (in-place updates bump the version counter a base shares with its
    views)."""
    base = occupied._base if occupied._base is not None else occupied
    try:
        key = (occupied.data_ptr(), tuple(occupied.shape), occupied._version, resolution, block)
    except RuntimeError:  # an inference tensor keeps no version counter: not cached
        key = None
    if key is not None and _BLOCKS_CACHE:
        ref, cached_key, blocks = _BLOCKS_CACHE[0]
        if ref() is base and cached_key == key:
            return blocks
    if block > 1:
        any_occupied = np.zeros((occ.shape[0], (resolution // block) ** 3), np.uint8)
        _block_occupancy(occ, resolution, block, any_occupied)
        blocks = _skip_sizes(any_occupied, resolution // block)
    else:  # no blocks: the marcher never reads them
        blocks = np.zeros((occ.shape[0], 8, 0), np.uint8)
    if key is not None:
        _BLOCKS_CACHE[:] = [(weakref.ref(base), key, blocks)]
    return blocks


def march_rays(origins, directions, t_near, t_far, first_offsets, occupied, center, base_size, resolution,
               min_step, max_step, cone_angle, max_samples):
    """Numba version of :func:`ngp.kernels.reference.nerf.march_rays` (same arguments and results)."""
    dtype = origins.dtype
    n_rays = origins.shape[0]
    o, d = origins.detach().contiguous().numpy(), directions.detach().contiguous().numpy()
    near, far = t_near.detach().contiguous().numpy(), t_far.detach().contiguous().numpy()
    first = first_offsets.detach().to(torch.float64).contiguous().numpy()
    occ = occupied.detach().contiguous()
    occ = (occ.view(torch.uint8) if occ.dtype == torch.bool else (occ != 0).to(torch.uint8)).numpy()
    resolution = int(resolution)
    block = _block_size(resolution, occ.shape[0])
    blocks = _blocks_for(occupied, occ, resolution, block)
    center = tuple(float(c) for c in center)
    cone = _cone_tuple(float(cone_angle), float(min_step), float(max_step))
    scalars = (blocks, block, center, float(base_size), resolution, float(min_step), float(max_step), cone,
               int(max_samples))

    counts = np.empty(n_rays, dtype=np.int64)
    run_start = np.empty((n_rays, RUNS_PER_RAY), np.float64)
    run_count = np.empty((n_rays, RUNS_PER_RAY), np.int64)
    n_runs = np.empty(n_rays, np.int64)
    _march_count(o, d, near, far, first, occ, *scalars, counts, run_start, run_count, n_runs)
    ray_offsets = torch.zeros(n_rays + 1, dtype=torch.int64)
    torch.cumsum(torch.from_numpy(counts), 0, out=ray_offsets[1:])
    n_samples = int(ray_offsets[-1])
    positions = torch.empty(n_samples, 3, dtype=dtype)
    ts, t_starts, t_ends = (torch.empty(n_samples, dtype=dtype) for _ in range(3))
    ray_indices = torch.empty(n_samples, dtype=torch.int64)
    _march_fill(o, d, near, far, first, occ, *scalars, ray_offsets.numpy(), run_start, run_count, n_runs,
                positions.numpy(), ts.numpy(), t_starts.numpy(), t_ends.numpy(), ray_indices.numpy())
    return positions, ts, t_starts, t_ends, ray_indices, ray_offsets


# ----------------------------------------------------------------------------------------------------
# Compositing
# ----------------------------------------------------------------------------------------------------


@njit(**_FAST)
def _composite_forward(sigmas, rgbs, t_starts, t_ends, offsets, background, threshold, color, opacity, depth,
                       weights):
    n_channels = rgbs.shape[1]
    for r in prange(offsets.shape[0] - 1):
        trans = 1.0
        acc_opacity = 0.0
        acc_depth = 0.0
        for c in range(n_channels):
            color[r, c] = 0.0
        for i in range(offsets[r], offsets[r + 1]):
            if trans < threshold:  # early termination: the rest of the ray is invisible
                weights[i] = 0.0
                continue
            delta = t_ends[i] - t_starts[i]
            tau = np.float64(sigmas[i]) * np.float64(delta)
            w = trans * -math.expm1(-tau)
            weights[i] = w
            for c in range(n_channels):
                color[r, c] += w * rgbs[i, c]
            acc_opacity += w
            acc_depth += w * 0.5 * (np.float64(t_starts[i]) + np.float64(t_ends[i]))
            trans *= math.exp(-tau)
        for c in range(n_channels):
            color[r, c] += (1.0 - acc_opacity) * background[r, c]
        opacity[r] = acc_opacity
        depth[r] = acc_depth


@njit(**_EXACT)
def _render_weights(sigmas, t_starts, t_ends, offsets, start, threshold, weights):
    for r in prange(offsets.shape[0] - 1):
        # one expm1 per sample: T_{i+1} = T_i (1 - alpha_i), against the reference's exp of a sum
        # (a rounding error per sample, ~1e-16 relative; a scalar exp is slower than torch's vector one)
        trans = np.float64(start[r]) if start.shape[0] else 1.0
        end = offsets[r + 1]
        for i in range(offsets[r], end):
            if trans < threshold:  # the ray has terminated: the rest weighs nothing
                weights[i:end] = 0.0
                break
            e = math.expm1(-np.float64(sigmas[i]) * np.float64(t_ends[i] - t_starts[i]))
            weights[i] = trans * -e
            trans *= 1.0 + e


@njit(**_FAST)
def _composite_backward(grad_color, grad_opacity, grad_depth, grad_weights, sigmas, rgbs, t_starts, t_ends, offsets,
                        background, color, opacity, depth, threshold, grad_sigmas, grad_rgbs, grad_background):
    n_channels = rgbs.shape[1]
    has_grad_weights = grad_weights.shape[0] > 0
    for r in prange(offsets.shape[0] - 1):
        start, end = offsets[r], offsets[r + 1]
        # total = sum_i w_i g_i from the forward outputs (see reference.composite_backward)
        total = grad_opacity[r] * np.float64(opacity[r]) + grad_depth[r] * np.float64(depth[r])
        for c in range(n_channels):
            total += grad_color[r, c] * (np.float64(color[r, c]) - background[r, c])
            grad_background[r, c] = (1.0 - opacity[r]) * grad_color[r, c]
        if has_grad_weights:  # the only part of the total the forward outputs do not carry
            trans = 1.0
            for i in range(start, end):
                if trans < threshold:
                    break
                tau = np.float64(sigmas[i]) * np.float64(t_ends[i] - t_starts[i])
                total += trans * -math.expm1(-tau) * grad_weights[i]
                trans *= math.exp(-tau)
        trans = 1.0
        prefix = 0.0
        for i in range(start, end):
            if trans < threshold:
                grad_sigmas[i] = 0.0
                for c in range(n_channels):
                    grad_rgbs[i, c] = 0.0
                continue
            delta = np.float64(t_ends[i] - t_starts[i])
            tau = np.float64(sigmas[i]) * delta
            w = trans * -math.expm1(-tau)
            trans_next = trans * math.exp(-tau)  # T_i (1 - alpha_i)
            g = grad_opacity[r] + grad_depth[r] * 0.5 * (np.float64(t_starts[i]) + np.float64(t_ends[i]))
            for c in range(n_channels):
                g += grad_color[r, c] * (np.float64(rgbs[i, c]) - background[r, c])
                grad_rgbs[i, c] = w * grad_color[r, c]
            if has_grad_weights:
                g += grad_weights[i]
            prefix += w * g
            grad_sigmas[i] = delta * (trans_next * g - (total - prefix))
            trans = trans_next


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def composite_forward(sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background, threshold):
    """Numba version of :func:`ngp.kernels.reference.nerf.composite_forward` (``ray_indices`` unused)."""
    n_rays = ray_offsets.shape[0] - 1
    dtype = rgbs.dtype
    color = torch.empty(n_rays, rgbs.shape[1], dtype=dtype)
    opacity, depth = torch.empty(n_rays, dtype=dtype), torch.empty(n_rays, dtype=dtype)
    weights = torch.empty(sigmas.shape[0], dtype=dtype)
    _composite_forward(_np(sigmas), _np(rgbs), _np(t_starts), _np(t_ends), _np(ray_offsets), _np(background),
                       float(threshold), color.numpy(), opacity.numpy(), depth.numpy(), weights.numpy())
    return color, opacity, depth, weights


def render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, ray_offsets, threshold, transmittance_start):
    """Numba version of :func:`ngp.kernels.reference.nerf.render_weight_from_density`, without
    gradients (``ray_indices`` unused; ``transmittance_start`` may be None)."""
    weights = torch.empty_like(sigmas)
    start = _np(transmittance_start) if transmittance_start is not None else np.empty(0, np.float32)
    _render_weights(_np(sigmas), _np(t_starts), _np(t_ends), _np(ray_offsets), start, float(threshold),
                    weights.numpy())
    return weights


def composite_backward(grad_color, grad_opacity, grad_depth, grad_weights, sigmas, rgbs, t_starts, t_ends,
                       ray_indices, ray_offsets, background, color, opacity, depth, threshold):
    """Numba version of :func:`ngp.kernels.reference.nerf.composite_backward` (``ray_indices`` unused)."""
    grad_sigmas = torch.empty_like(sigmas)
    grad_rgbs = torch.empty_like(rgbs)
    grad_background = torch.empty_like(background, memory_format=torch.contiguous_format)
    dtype = rgbs.dtype
    _composite_backward(_np(grad_color.to(dtype)), _np(grad_opacity.to(dtype)), _np(grad_depth.to(dtype)),
                        _np(grad_weights.to(dtype)), _np(sigmas), _np(rgbs), _np(t_starts), _np(t_ends),
                        _np(ray_offsets), _np(background), _np(color), _np(opacity), _np(depth), float(threshold),
                        grad_sigmas.numpy(), grad_rgbs.numpy(), grad_background.numpy())
    return grad_sigmas, grad_rgbs, grad_background
