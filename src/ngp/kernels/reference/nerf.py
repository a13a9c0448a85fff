"""Plain-PyTorch definition of the NeRF ray operations (instant-ngp's marching, nerfacc-style packing).

This file is the *specification*: the Numba kernels (:mod:`ngp.kernels.cpu.nerf`) and the Triton
kernels (``ngp.kernels.triton.nerf``) compute the same numbers and are tested against it. Everything
is vectorised over rays or samples (no per-ray Python loops); the ray marcher advances all rays one
step per iteration.

Packed samples (nerfacc's layout)
---------------------------------
``S`` samples of ``R`` rays are stored flat and sorted by ray: the samples of ray ``r`` are
``ray_offsets[r]:ray_offsets[r + 1]`` (``ray_offsets`` is ``int64 [R + 1]``, ``ray_offsets[0] = 0``,
``ray_offsets[R] = S``) and ``ray_indices[s]`` (``int64 [S]``) is the ray of sample ``s``. Within a ray
samples are ordered front to back. Sample ``s`` covers ``[t_starts[s], t_ends[s]]`` along its ray.

Occupancy cascades (instant-ngp's density grid)
-----------------------------------------------
``occupied`` is ``bool``/``uint8 [C, res^3]``. Cascade ``k`` is the axis-aligned cube centred at
``center`` with side ``base_size * 2**k``, divided into ``res^3`` cells; the flat cell index is
``(ix * res + iy) * res + iz`` (so ``occupied.view(C, res, res, res)[k, ix, iy, iz]``). A point is
looked up in the finest cascade that contains it (``mip_from_pos``), or a coarser one when the step
at that point is larger than a cell (``mip_from_dt``), exactly as instant-ngp's
``mip_from_pos``/``mip_from_dt`` in ``testbed_nerf.cu``.

Marching (instant-ngp's ``generate_training_samples_nerf``)
-----------------------------------------------------------
Steps live in "stepping space" ``n`` (:func:`to_stepping`, :func:`from_stepping`): one unit of ``n`` is
one step. With ``cone_angle == 0`` the step is the constant ``min_step`` (``t = n * min_step``);
otherwise ``dt = clamp(t * cone_angle, min_step, max_step)`` (exponential stepping), integrated
analytically so that ``n`` stays a lattice. Sample ``j`` of a ray sits at ``t_j = from_stepping(n_j)``
with ``n_0 = to_stepping(t_near) + u`` (``u = 0.5`` deterministically, ``u ~ U[0, 1)`` when jittered)
and covers ``[from_stepping(n_j - 0.5), from_stepping(n_j + 0.5)]`` clipped to ``[t_near, t_far]``, so
with constant steps and ``u = 0.5`` the samples are at ``t_near + (k + 0.5) dt`` and the intervals
tile ``[t_near, t_far]`` exactly. At each ``t < t_far`` the marcher looks up the occupancy of the
sample position: occupied -> emit a sample and advance one step; empty -> jump to the exit of the
empty cell along the ray, rounded up to whole steps (at least one), as instant-ngp's
``advance_to_next_voxel``. A ray emits at most ``max_samples`` samples.
"""

from __future__ import annotations

import math

import torch

# ----------------------------------------------------------------------------------------------------
# Ray / box
# ----------------------------------------------------------------------------------------------------


def ray_aabb_intersect(
    origins: torch.Tensor, directions: torch.Tensor, aabb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slab test. ``[R, 3], [R, 3], [2, 3]`` -> ``t_near [R], t_far [R], hit [R] bool``.

    ``t_near`` is clamped at 0 (a ray starting inside the box enters at 0). A ray hits when the
    clipped segment has positive length (``t_far > t_near``); grazing an edge or corner is a miss, a
    ray lying in a face plane and parallel to it counts as inside that slab. Misses get
    ``t_near = t_far = 0``. Directions need not be unit (``t`` is in units of ``|direction|``).
    """
    lo, hi = aabb[0].to(origins.dtype), aabb[1].to(origins.dtype)
    parallel = directions == 0
    inv = 1.0 / torch.where(parallel, torch.ones_like(directions), directions)
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    inside_slab = (origins >= lo) & (origins <= hi)
    inf = torch.full_like(t0, math.inf)
    t_min_axis = torch.where(parallel, torch.where(inside_slab, -inf, inf), torch.minimum(t0, t1))
    t_max_axis = torch.where(parallel, torch.where(inside_slab, inf, -inf), torch.maximum(t0, t1))
    t_near = t_min_axis.amax(-1).clamp_min(0.0)
    t_far = t_max_axis.amin(-1)
    hit = t_far > t_near
    zero = torch.zeros_like(t_near)
    return torch.where(hit, t_near, zero), torch.where(hit, t_far, zero), hit


# ----------------------------------------------------------------------------------------------------
# Stepping space (instant-ngp's to_stepping_space / from_stepping_space, with the step bounds as
# arguments instead of compile-time constants). Float64 throughout.
# ----------------------------------------------------------------------------------------------------


def _cone_constants(cone_angle: float, min_step: float, max_step: float):
    log1p_c = math.log1p(cone_angle)
    a = (math.log(min_step) - math.log(log1p_c)) / log1p_c
    b = (math.log(max_step) - math.log(log1p_c)) / log1p_c
    return log1p_c, a, b, math.exp(a * log1p_c), math.exp(b * log1p_c)


def to_stepping(t: torch.Tensor, cone_angle: float, min_step: float, max_step: float) -> torch.Tensor:
    """Distance ``t`` -> stepping coordinate ``n`` (one unit per step); inverse of :func:`from_stepping`."""
    # Multiplications by reciprocals (not divisions): the compiled kernels do the same, bit for bit.
    if cone_angle <= 1e-5:
        return t * (1.0 / min_step)
    log1p_c, a, b, at, bt = _cone_constants(cone_angle, min_step, max_step)
    linear_lo = (t - at) * (1.0 / min_step) + a
    logarithmic = torch.log(t.clamp_min(at)) * (1.0 / log1p_c)
    linear_hi = (t - bt) * (1.0 / max_step) + b
    return torch.where(t <= at, linear_lo, torch.where(t <= bt, logarithmic, linear_hi))


def from_stepping(n: torch.Tensor, cone_angle: float, min_step: float, max_step: float) -> torch.Tensor:
    """Stepping coordinate ``n`` -> distance ``t``; see :func:`to_stepping`."""
    if cone_angle <= 1e-5:
        return n * min_step
    log1p_c, a, b, at, bt = _cone_constants(cone_angle, min_step, max_step)
    linear_lo = (n - a) * min_step + at
    exponential = torch.exp(n.clamp(a, b) * log1p_c)
    linear_hi = (n - b) * max_step + bt
    return torch.where(n <= a, linear_lo, torch.where(n <= b, exponential, linear_hi))


# ----------------------------------------------------------------------------------------------------
# Cascaded occupancy grid lookups
# ----------------------------------------------------------------------------------------------------


def mip_from_pos(rel: torch.Tensor, n_cascades: int) -> torch.Tensor:
    """Finest cascade containing each point; ``rel [N, 3]`` = (position - center) / base_size."""
    maxval = rel.abs().amax(-1)
    _, exponent = torch.frexp(maxval)  # maxval = m * 2**exponent, m in [0.5, 1)
    mip = (exponent.to(torch.int64) + 1).clamp(0, n_cascades - 1)
    return torch.where(maxval == 0, torch.zeros_like(mip), mip)


def mip_from_dt(rel: torch.Tensor, dt: torch.Tensor, base_size: float, resolution: int, n_cascades: int):
    """Cascade for a step of length ``dt`` at ``rel``: coarse enough that a cell is about a step long."""
    mip = mip_from_pos(rel, n_cascades)
    scaled = dt * (2.0 * resolution / base_size)
    _, exponent = torch.frexp(scaled)
    coarse = torch.maximum(mip, exponent.to(torch.int64)).clamp_max(n_cascades - 1)
    return torch.where(scaled < 1.0, mip, coarse)


def cell_coords(rel: torch.Tensor, mip: torch.Tensor, resolution: int) -> torch.Tensor:
    """Continuous cell coordinates ``[N, 3]`` of ``rel`` in cascade ``mip`` (cell ``i`` spans ``[i, i+1)``)."""
    scale = torch.ldexp(torch.ones_like(rel[:, 0]), mip.to(torch.int32))
    return (rel / scale[:, None] + 0.5) * resolution


def cell_index(rel: torch.Tensor, mip: torch.Tensor, resolution: int) -> torch.Tensor:
    """Flat index ``int64 [N]`` into ``occupied.view(-1)`` of the cell holding each point, -1 outside."""
    g = torch.floor(cell_coords(rel, mip, resolution))
    inside = ((g >= 0) & (g < resolution)).all(-1)
    gi = g.clamp(0, resolution - 1).to(torch.int64)
    flat = mip * resolution**3 + (gi[:, 0] * resolution + gi[:, 1]) * resolution + gi[:, 2]
    return torch.where(inside, flat, torch.full_like(flat, -1))


def cell_positions(flat: torch.Tensor, offset: torch.Tensor, resolution: int, cell_sizes: torch.Tensor,
                   corners: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """World positions ``[N, 3]`` (float32) at ``offset`` (``[N, 3]`` in ``[0, 1)^3``, or ``[1, 3]``: the
    same for all) within the cells ``flat [N]`` (indices into ``occupied.view(-1)``), clamped to
    ``[lo, hi]`` (``[3]`` each): ``corners[c] + (cell + offset) * cell_sizes[c]`` for cascade ``c``
    (``cell_sizes [C]``, ``corners [C, 3]``: each cascade's lowest corner), one product then one sum."""
    cascade = torch.div(flat, resolution**3, rounding_mode="floor")
    rest = flat - cascade * resolution**3
    x = torch.div(rest, resolution * resolution, rounding_mode="floor")
    yz = rest - x * (resolution * resolution)
    y = torch.div(yz, resolution, rounding_mode="floor")
    xyz = torch.stack([x, y, yz - y * resolution], -1)
    pos = corners[cascade] + (xyz.to(torch.float32) + offset) * cell_sizes[cascade][:, None]
    return torch.maximum(torch.minimum(pos, hi), lo)


def decay_density_(density: torch.Tensor, decay: float) -> torch.Tensor:
    """Multiply the positive entries of ``density`` (float32) by ``decay`` in place (a float32 product;
    zero and negative entries, such as cells marked untrained, keep their value); returns ``density``."""
    return torch.where(density > 0, density * decay, density, out=density)


def occupancy_from_density(density: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """``bool [C, res^3]``: the cells of ``density [C, res^3]`` (float32) above ``threshold`` and
    ``valid``; each cascade's occupancy is also ORed, 2x2x2 cells into one, into the middle half of the
    next coarser cascade (the part of it the finer one covers), finest first, before the ``valid`` mask
    is applied again."""
    n_cascades, n_cells = density.shape
    res = round(n_cells ** (1 / 3))
    half, quarter = res // 2, res // 4
    occupied = (density > threshold) & valid
    grids = occupied.view(n_cascades, res, res, res)
    for k in range(1, n_cascades):
        finer = grids[k - 1]  # OR of 2x2x2 cells, one axis at a time (a 6-d amax took 4x as long)
        pairs = finer[0::2] | finer[1::2]
        pairs = pairs[:, 0::2] | pairs[:, 1::2]
        pooled = pairs[:, :, 0::2] | pairs[:, :, 1::2]
        grids[k, quarter:quarter + half, quarter:quarter + half, quarter:quarter + half] |= pooled
    return occupied & valid


def samples_in_front(sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, ray_offsets: torch.Tensor,
                     log_transmittance: torch.Tensor, log_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep [K] int64, log_transmittance_after [R] float64)``: the samples (packed, ``[S]`` each; ``R``
    rays) in front of the point where their ray's transmittance falls below ``exp(log_threshold)``,
    given each ray's log-transmittance in front of its first sample (``[R]`` float64), and the rays'
    log-transmittance behind their last sample. Optical thicknesses ``sigma * (t_end - t_start)`` are
    float32 products summed in float64 by one running sum over all samples (a ray's part is the
    difference of two of its values)."""
    tau = (sigmas * (t_ends - t_starts)).double()
    inclusive = torch.cumsum(tau, 0)
    before_ray = torch.cat([inclusive.new_zeros(1), inclusive]).index_select(0, ray_offsets)
    counts = ray_offsets[1:] - ray_offsets[:-1]
    ray_indices = torch.repeat_interleave(torch.arange(counts.shape[0], device=counts.device), counts)
    before = inclusive - tau - before_ray.index_select(0, ray_indices)  # within the ray's samples
    keep = ((log_transmittance.index_select(0, ray_indices) - before) > log_threshold).nonzero().squeeze(1)
    return keep, log_transmittance - (before_ray[1:] - before_ray[:-1])


def sort_by_ray(ray_indices: torch.Tensor, n_rays: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order [S], ray_offsets [R + 1])``: the stable permutation that sorts ``ray_indices [S]`` (each
    ray's samples keep their order) and the packed layout's offsets of the sorted samples."""
    order = torch.sort(ray_indices, stable=True)[1]
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64, device=ray_indices.device)
    torch.cumsum(torch.bincount(ray_indices, minlength=n_rays), 0, out=offsets[1:])
    return order, offsets


def occupied_at(occupied_flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``bool [N]``: the occupancy of flat cell ``index`` (False for -1 = outside every cascade)."""
    safe = index.clamp_min(0)
    return (occupied_flat[safe] != 0) & (index >= 0)


def distance_to_cell_exit(rel, directions, mip, base_size: float, resolution: int) -> torch.Tensor:
    """Distance along the ray from ``rel`` to the boundary of its cell in cascade ``mip`` (>= 0).

    As instant-ngp's ``distance_to_next_voxel``: a point exactly on a boundary and moving backwards
    across it gets 0 (the caller always advances at least half a step).
    """
    g = cell_coords(rel, mip, resolution)
    cell = (base_size / resolution) * torch.ldexp(torch.ones_like(g[:, 0]), mip.to(torch.int32))
    boundary = torch.floor(g + 0.5 + 0.5 * torch.sign(directions))
    inv_d = 1.0 / torch.where(directions == 0, torch.ones_like(directions), directions)
    dist = torch.where(directions == 0, torch.full_like(g, math.inf), (boundary - g) * cell[:, None] * inv_d)
    return dist.amin(-1).clamp_min(0.0)


# ----------------------------------------------------------------------------------------------------
# Marching
# ----------------------------------------------------------------------------------------------------


def march_rays(
    origins: torch.Tensor,
    directions: torch.Tensor,
    t_near: torch.Tensor,
    t_far: torch.Tensor,
    first_offsets: torch.Tensor,
    occupied: torch.Tensor,
    center: tuple[float, float, float],
    base_size: float,
    resolution: int,
    min_step: float,
    max_step: float,
    cone_angle: float,
    max_samples: int,
):
    """Sample rays through the occupied cells of a cascaded grid (see the module docstring).

    Args:
        origins, directions: ``[R, 3]`` float rays (directions unit length).
        t_near, t_far: ``[R]`` the segment to march (e.g. from :func:`ray_aabb_intersect`).
        first_offsets: ``[R]`` offset ``u`` of the first sample in steps (0.5: centred, ``U[0,1)``: jitter).
        occupied: ``bool``/``uint8 [C, res^3]`` occupancy (``C`` cascades of ``res^3`` cells).
        center, base_size, resolution: the grid geometry (cascade 0 = cube of side ``base_size``).
        min_step, max_step, cone_angle: step length ``clamp(t * cone_angle, min_step, max_step)``.
        max_samples: at most this many samples per ray.

    Returns:
        ``positions [S, 3]`` (origins' dtype), ``ts, t_starts, t_ends [S]`` (origins' dtype),
        ``ray_indices [S]`` int64, ``ray_offsets [R + 1]`` int64.
    """
    device, dtype = origins.device, origins.dtype
    n_rays = origins.shape[0]
    n_cascades = occupied.shape[0]
    occ_flat = occupied.reshape(-1)
    o = origins.to(torch.float64)
    d = directions.to(torch.float64)
    near = t_near.to(torch.float64)
    far = t_far.to(torch.float64)
    c = torch.tensor(center, dtype=torch.float64, device=device)
    steps = (cone_angle, min_step, max_step)

    n = to_stepping(near, *steps) + first_offsets.to(torch.float64)
    count = torch.zeros(n_rays, dtype=torch.int64, device=device)
    emitted_rays, emitted_n = [], []
    alive = torch.arange(n_rays, device=device)
    while alive.numel() > 0:
        t = from_stepping(n[alive], *steps)
        keep = (t < far[alive]) & (count[alive] < max_samples)
        alive, t = alive[keep], t[keep]
        if alive.numel() == 0:
            break
        na = n[alive]
        rel = (o[alive] + t[:, None] * d[alive] - c) * (1.0 / base_size)
        if cone_angle <= 1e-5:
            dt = torch.full_like(na, min_step)
        else:
            dt = from_stepping(na + 0.5, *steps) - from_stepping(na - 0.5, *steps)
        mip = mip_from_dt(rel, dt, base_size, resolution, n_cascades)
        occ = occupied_at(occ_flat, cell_index(rel, mip, resolution))

        emitted_rays.append(alive[occ])
        emitted_n.append(na[occ])
        count[alive[occ]] += 1

        empty = ~occ
        t_target = t[empty] + distance_to_cell_exit(rel[empty], d[alive[empty]], mip[empty], base_size, resolution)
        skip = torch.ceil(torch.clamp_min(to_stepping(t_target, *steps) - na[empty], 0.5))
        n_next = na + 1.0
        n_next[empty] = na[empty] + skip
        n[alive] = n_next

    if emitted_rays:
        rays = torch.cat(emitted_rays)
        ns = torch.cat(emitted_n)
    else:
        rays = torch.zeros(0, dtype=torch.int64, device=device)
        ns = torch.zeros(0, dtype=torch.float64, device=device)
    order = torch.argsort(rays, stable=True)  # iterations emit front to back within each ray
    rays, ns = rays[order], ns[order]
    ts = from_stepping(ns, *steps)
    t_starts = torch.maximum(from_stepping(ns - 0.5, *steps), near[rays])
    t_ends = torch.minimum(from_stepping(ns + 0.5, *steps), far[rays])
    positions = o[rays] + ts[:, None] * d[rays]
    ray_offsets = torch.zeros(n_rays + 1, dtype=torch.int64, device=device)
    ray_offsets[1:] = torch.cumsum(count, 0)
    return (positions.to(dtype), ts.to(dtype), t_starts.to(dtype), t_ends.to(dtype), rays, ray_offsets)


# ----------------------------------------------------------------------------------------------------
# Compositing
# ----------------------------------------------------------------------------------------------------


def _segment_sum(values: torch.Tensor, ray_indices: torch.Tensor, n_rays: int) -> torch.Tensor:
    out = torch.zeros((n_rays,) + values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add(0, ray_indices, values)


def transmittance(
    sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor,
    ray_offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``T_i = exp(-sum_{j<i, same ray} sigma_j delta_j)`` and ``alpha_i``, both ``[S]`` float64.

    Computed as an exclusive cumulative sum of the optical depth within each ray (one global cumsum
    in float64 minus its value at the ray's first sample), differentiable by autograd.
    """
    tau = sigmas.to(torch.float64) * (t_ends - t_starts).to(torch.float64)
    inclusive = torch.cumsum(tau, 0)
    exclusive = inclusive - tau
    first = ray_offsets[:-1][ray_indices]
    trans = torch.exp(-(exclusive - exclusive[first]))
    alpha = -torch.expm1(-tau)
    return trans, alpha


def render_weight_from_density(
    t_starts, t_ends, sigmas, ray_indices, ray_offsets, transmittance_threshold: float = 1e-4,
    transmittance_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w_i = T_i alpha_i``, 0 once ``T_i < transmittance_threshold``; ``[S]`` in ``sigmas``' dtype.
    ``transmittance_start [R]`` (optional) multiplies each ray's ``T_i``: the transmittance in front
    of its first sample."""
    trans, alpha = transmittance(sigmas, t_starts, t_ends, ray_indices, ray_offsets)
    if transmittance_start is not None:
        trans = trans * transmittance_start.to(trans.dtype)[ray_indices]
    weights = torch.where(trans >= transmittance_threshold, trans * alpha, torch.zeros_like(trans))
    return weights.to(sigmas.dtype)


def composite(
    sigmas: torch.Tensor,
    rgbs: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    ray_indices: torch.Tensor,
    ray_offsets: torch.Tensor,
    background: torch.Tensor,
    transmittance_threshold: float = 1e-4,
):
    """Volume rendering of packed samples, differentiable by autograd.

    ``sigmas [S], rgbs [S, C], t_starts [S], t_ends [S], ray_indices [S], ray_offsets [R+1],
    background [R, C]`` -> ``color [R, C], opacity [R], depth [R], weights [S]`` with
    ``w_i = T_i (1 - exp(-sigma_i delta_i))`` (0 once ``T_i < threshold``), ``opacity = sum w``,
    ``color = sum w c + (1 - opacity) background``, ``depth = sum w (t_start + t_end) / 2``.
    """
    n_rays = ray_offsets.shape[0] - 1
    weights = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, ray_offsets, transmittance_threshold)
    opacity = _segment_sum(weights, ray_indices, n_rays)
    color = _segment_sum(weights[:, None] * rgbs, ray_indices, n_rays) + (1.0 - opacity)[:, None] * background
    depth = _segment_sum(weights * 0.5 * (t_starts + t_ends), ray_indices, n_rays)
    return color, opacity, depth, weights


def composite_backward(
    grad_color, grad_opacity, grad_depth, grad_weights,
    sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background,
    color, opacity, depth, transmittance_threshold: float = 1e-4,
):
    """The gradients of :func:`composite` in closed form (the spec of the compiled backward kernels).

    With ``g_i = dL/dw_i + <dL/dcolor, c_i - bg> + dL/dopacity + dL/ddepth * t_mid_i`` (the total
    derivative of the outputs with respect to the weight ``w_i``) and the suffix
    ``S_i = sum_{j > i} w_j g_j``::

        dL/dsigma_i = delta_i (T_i (1 - alpha_i) g_i - S_i)   (0 for terminated samples)
        dL/drgb_i   = w_i dL/dcolor
        dL/dbg      = (1 - opacity) dL/dcolor

    Kernels get ``S_i`` in one front-to-back sweep as ``total - prefix``, where ``total = sum w g`` comes
    from the forward outputs (``<dL/dcolor, color - bg> + dL/dopacity opacity + dL/ddepth depth``) plus
    ``sum w dL/dw``. ``grad_weights`` may be an empty tensor (no gradient on the weights).
    Returns ``grad_sigmas [S], grad_rgbs [S, C], grad_background [R, C]``.
    """
    n_rays = ray_offsets.shape[0] - 1
    f64 = torch.float64
    trans, alpha = transmittance(sigmas, t_starts, t_ends, ray_indices, ray_offsets)
    active = trans >= transmittance_threshold
    w = torch.where(active, trans * alpha, torch.zeros_like(trans))
    r = ray_indices
    t_mid = 0.5 * (t_starts + t_ends).to(f64)
    g = (grad_color.to(f64)[r] * (rgbs.to(f64) - background.to(f64)[r])).sum(-1)
    g = g + grad_opacity.to(f64)[r] + grad_depth.to(f64)[r] * t_mid
    if grad_weights.numel():
        g = g + grad_weights.to(f64)
    wg = w * g
    inclusive = torch.cumsum(wg, 0)
    first = ray_offsets[:-1][r]
    prefix = inclusive - (inclusive - wg)[first]  # sum_{j <= i} within the ray
    suffix = _segment_sum(wg, r, n_rays)[r] - prefix
    delta = (t_ends - t_starts).to(f64)
    grad_sigmas = torch.where(active, delta * (trans * (1.0 - alpha) * g - suffix), torch.zeros_like(g))
    grad_rgbs = w[:, None] * grad_color.to(f64)[r]
    grad_background = (1.0 - opacity.to(f64))[:, None] * grad_color.to(f64)
    return grad_sigmas.to(sigmas.dtype), grad_rgbs.to(rgbs.dtype), grad_background.to(background.dtype)


def composite_forward(sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background, transmittance_threshold):
    """:func:`composite` without autograd (the kernel-level forward, same signature as the compiled ones)."""
    with torch.no_grad():
        return composite(sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background, transmittance_threshold)
