"""Triton kernels of the NeRF ray operations (GPU; CPU tensors under ``TRITON_INTERPRET=1``).

The definitions live in :mod:`ngp.kernels.reference.nerf`; these kernels compute the same numbers
(``tests/nerf/test_triton_nerf.py`` compares them). The public functions have the signatures documented
in :mod:`ngp.ops.nerf` (the same as :mod:`ngp.kernels.cpu.nerf`'s), on torch tensors of one device:

* ``march_rays(origins, directions, t_near, t_far, first_offsets, occupied, center, base_size,
  resolution, min_step, max_step, cone_angle, max_samples)
  -> (positions [S,3], ts, t_starts, t_ends [S], ray_indices [S] int64, ray_offsets [R+1] int64)``
* ``composite_forward(sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background, threshold)
  -> (color [R,C], opacity [R], depth [R], weights [S])``
* ``composite_backward(grad_color, grad_opacity, grad_depth, grad_weights, sigmas, rgbs, t_starts, t_ends,
  ray_indices, ray_offsets, background, color, opacity, depth, threshold)
  -> (grad_sigmas [S], grad_rgbs [S,C], grad_background [R,C])``

Design (as the Numba kernels, one lane per ray, ``BLOCK`` rays per program):

* **Marching**: two launches, as instant-ngp's ``generate_training_samples_nerf``: count the samples of
  every ray, exclusive scan (``torch.cumsum``) into ``ray_offsets``, then march again and write each
  ray's samples into its own slice (no atomics, output sorted by ray). A program loops until all its
  rays are done; finished lanes idle. The march runs in **float64 without FMA contraction**
  (``enable_fp_fusion=False``): skipping decisions compare positions with cell boundaries and step
  counts with integers, and must agree with the reference bit for bit. ``frexp`` is read from the
  float64 exponent bits. As the reference, it multiplies by reciprocals computed once in Python
  doubles; these travel in a float64 tensor (Triton would type Python float arguments float32).
  Integer arguments equal to 1 become compile-time constants in Triton, so no tensor methods on them.
* **Compositing**: forward and backward sweep each ray front to back in float64 (the backward gets the
  suffix ``sum_{j>i} w_j g_j`` as ``total - prefix`` with ``total`` from the forward outputs).
  ``1 - exp(-tau)`` uses a series for small ``tau`` (Triton has no portable ``expm1``).
* Kernels use Triton builtins only (no ``triton.language.standard`` ``@jit`` helpers such as ``tl.sum``,
  ``tl.max``, ``tl.zeros``), so they run in the interpreter even when ``triton`` was imported before
  ``TRITON_INTERPRET=1`` was set (see :mod:`ngp.kernels.triton`).

float64 is fast on data-centre GPUs (H100: half the float32 rate) but slow on consumer cards (1/64):
measure before relying on it there.
"""

from __future__ import annotations

import math

import torch

from ngp.kernels.triton import check_device, interpreting, kernels_for_mode

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still imports; calling a kernel raises a clear error
    triton = tl = None

__all__ = ["march_rays", "composite_forward", "composite_backward"]

#: Whether this module's kernels were decorated for Triton's interpreter (see kernels_for_mode).
INTERPRETED = interpreting()

# Slots of the float64 parameter tensor of the marching kernel (see _march_params). The reference
# multiplies by reciprocals computed once in Python (not divisions), and so do the kernels, bit for bit.
(P_CX, P_CY, P_CZ, P_MIN, P_MAX, P_LOG1P, P_A, P_B, P_AT, P_BT, P_INV_MIN, P_INV_MAX, P_INV_LOG1P, P_INV_BASE,
 P_DT_SCALE, P_CELL0) = range(16)

# Exact IEEE operations in the order the reference uses (no fused multiply-adds): the march's decisions
# must match the reference bit for bit; compositing follows for consistency (it is memory-bound).
_EXACT = dict(enable_fp_fusion=False)


def _jit(fn):
    return triton.jit(fn) if triton is not None else fn


# ----------------------------------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------------------------------


@_jit
def _add(a, b):
    return a + b


@_jit
def _max(a, b):
    return tl.maximum(a, b)


@_jit
def _to_stepping(t, LINEAR: tl.constexpr, p_ptr):
    """``reference.to_stepping`` (float64; slots as in ``P_*``)."""
    inv_min = tl.load(p_ptr + 10)
    if LINEAR:
        n = t * inv_min
    else:
        a = tl.load(p_ptr + 6)
        b = tl.load(p_ptr + 7)
        at = tl.load(p_ptr + 8)
        bt = tl.load(p_ptr + 9)
        inv_max = tl.load(p_ptr + 11)
        inv_log1p_c = tl.load(p_ptr + 12)
        lo = (t - at) * inv_min + a
        mid = tl.log(tl.maximum(t, at)) * inv_log1p_c
        hi = (t - bt) * inv_max + b
        n = tl.where(t <= at, lo, tl.where(t <= bt, mid, hi))
    return n


@_jit
def _from_stepping(n, LINEAR: tl.constexpr, p_ptr):
    """``reference.from_stepping`` (float64; slots as in ``P_*``)."""
    min_step = tl.load(p_ptr + 3)
    if LINEAR:
        t = n * min_step
    else:
        max_step = tl.load(p_ptr + 4)
        log1p_c = tl.load(p_ptr + 5)
        a = tl.load(p_ptr + 6)
        b = tl.load(p_ptr + 7)
        at = tl.load(p_ptr + 8)
        bt = tl.load(p_ptr + 9)
        lo = (n - a) * min_step + at
        mid = tl.exp(tl.minimum(tl.maximum(n, a), b) * log1p_c)
        hi = (n - b) * max_step + bt
        t = tl.where(n <= a, lo, tl.where(n <= b, mid, hi))
    return t


@_jit
def _frexp_exponent(x):
    """The exponent ``e`` of ``frexp(x) = (m, e)``, ``m in [0.5, 1)``, for float64 ``x > 0`` (normal)."""
    bits = x.to(tl.int64, bitcast=True)
    return ((bits >> 52) & 0x7FF).to(tl.int32) - 1022


@_jit
def _exit_distance(g, d, cell):
    """Distance along one axis to the next cell boundary (``reference.distance_to_cell_exit``)."""
    sign = tl.where(d > 0.0, 1.0, -1.0).to(tl.float64)
    boundary = tl.floor(g + 0.5 + 0.5 * sign)
    inv_d = 1.0 / tl.where(d == 0.0, 1.0, d)  # float64 division: correctly rounded, as on the CPU
    return tl.where(d == 0.0, float("inf"), (boundary - g) * cell * inv_d)


@_jit
def _alpha(tau):
    """``1 - exp(-tau)`` without cancellation for small ``tau`` (float64)."""
    series = tau * (1.0 - tau * (0.5 - tau * (1.0 / 6.0 - tau * (1.0 / 24.0))))
    return tl.where(tl.abs(tau) < 1e-3, series, 1.0 - tl.exp(-tau))


# ----------------------------------------------------------------------------------------------------
# Marching
# ----------------------------------------------------------------------------------------------------


@_jit
def _march_kernel(
    o_ptr, d_ptr, near_ptr, far_ptr, first_ptr, occ_ptr, p_ptr, counts_ptr, offsets_ptr,
    pos_ptr, ts_ptr, t0_ptr, t1_ptr, rays_ptr,
    n_rays, resolution, n_cascades, max_samples,
    LINEAR: tl.constexpr, WRITE: tl.constexpr, BLOCK: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = r < n_rays
    ox = tl.load(o_ptr + r * 3 + 0, mask=valid, other=0.0).to(tl.float64)
    oy = tl.load(o_ptr + r * 3 + 1, mask=valid, other=0.0).to(tl.float64)
    oz = tl.load(o_ptr + r * 3 + 2, mask=valid, other=0.0).to(tl.float64)
    dx = tl.load(d_ptr + r * 3 + 0, mask=valid, other=0.0).to(tl.float64)
    dy = tl.load(d_ptr + r * 3 + 1, mask=valid, other=0.0).to(tl.float64)
    dz = tl.load(d_ptr + r * 3 + 2, mask=valid, other=0.0).to(tl.float64)
    near = tl.load(near_ptr + r, mask=valid, other=0.0).to(tl.float64)
    far = tl.load(far_ptr + r, mask=valid, other=0.0).to(tl.float64)
    first = tl.load(first_ptr + r, mask=valid, other=0.0).to(tl.float64)
    cx = tl.load(p_ptr + 0)
    cy = tl.load(p_ptr + 1)
    cz = tl.load(p_ptr + 2)
    inv_base = tl.load(p_ptr + 13)
    dt_scale = tl.load(p_ptr + 14)  # 2 * resolution / base_size
    cell0 = tl.load(p_ptr + 15)  # base_size / resolution
    # Integer arguments equal to 1 arrive as compile-time constants (Triton specialises them), so no
    # tensor methods on them: promote by arithmetic instead.
    res_f = tl.full([], 1.0, tl.float64) * resolution
    if WRITE:
        base = tl.load(offsets_ptr + r, mask=valid, other=0)
    else:
        base = tl.full([BLOCK], 0, tl.int64)

    n = _to_stepping(near, LINEAR, p_ptr) + first
    count = tl.full([BLOCK], 0, tl.int32)
    alive = valid
    n_alive = tl.reduce(alive.to(tl.int32), 0, _add)
    while n_alive > 0:
        t = _from_stepping(n, LINEAR, p_ptr)
        alive = alive & (t < far) & (count < max_samples)
        px = ox + t * dx
        py = oy + t * dy
        pz = oz + t * dz
        rx = (px - cx) * inv_base
        ry = (py - cy) * inv_base
        rz = (pz - cz) * inv_base
        dt = _from_stepping(n + 0.5, LINEAR, p_ptr) - _from_stepping(n - 0.5, LINEAR, p_ptr)
        # cascade: reference.mip_from_dt
        maxval = tl.maximum(tl.abs(rx), tl.maximum(tl.abs(ry), tl.abs(rz)))
        mip = tl.minimum(tl.maximum(_frexp_exponent(maxval) + 1, 0), n_cascades - 1)
        mip = tl.where(maxval == 0.0, 0, mip)
        scaled = dt * dt_scale
        coarse = tl.minimum(tl.maximum(mip, _frexp_exponent(scaled)), n_cascades - 1)
        mip = tl.where(scaled >= 1.0, coarse, mip)
        scale = (tl.full([BLOCK], 1, tl.int64) << mip.to(tl.int64)).to(tl.float64)  # ldexp(1, mip)
        inv_scale = 1.0 / scale  # a power of two: exact
        # occupancy of the cell: reference.cell_index / occupied_at
        gx = (rx * inv_scale + 0.5) * res_f
        gy = (ry * inv_scale + 0.5) * res_f
        gz = (rz * inv_scale + 0.5) * res_f
        fx = tl.floor(gx)
        fy = tl.floor(gy)
        fz = tl.floor(gz)
        inside = (fx >= 0.0) & (fx < res_f) & (fy >= 0.0) & (fy < res_f) & (fz >= 0.0) & (fz < res_f)
        ix = tl.minimum(tl.maximum(fx, 0.0), res_f - 1.0).to(tl.int64)
        iy = tl.minimum(tl.maximum(fy, 0.0), res_f - 1.0).to(tl.int64)
        iz = tl.minimum(tl.maximum(fz, 0.0), res_f - 1.0).to(tl.int64)
        cell_idx = ((mip.to(tl.int64) * resolution + ix) * resolution + iy) * resolution + iz  # int64
        occ = tl.load(occ_ptr + cell_idx, mask=alive & inside, other=0) != 0
        emit = alive & occ
        if WRITE:
            s = base + count.to(tl.int64)
            t_lo = tl.maximum(_from_stepping(n - 0.5, LINEAR, p_ptr), near)
            t_hi = tl.minimum(_from_stepping(n + 0.5, LINEAR, p_ptr), far)
            tl.store(pos_ptr + s * 3 + 0, px, mask=emit)
            tl.store(pos_ptr + s * 3 + 1, py, mask=emit)
            tl.store(pos_ptr + s * 3 + 2, pz, mask=emit)
            tl.store(ts_ptr + s, t, mask=emit)
            tl.store(t0_ptr + s, t_lo, mask=emit)
            tl.store(t1_ptr + s, t_hi, mask=emit)
            tl.store(rays_ptr + s, r.to(tl.int64), mask=emit)
        count += emit.to(tl.int32)
        # empty cell: jump to its exit along the ray, in whole steps (at least one)
        cell = cell0 * scale
        dist = tl.minimum(_exit_distance(gx, dx, cell), tl.minimum(_exit_distance(gy, dy, cell),
                                                                    _exit_distance(gz, dz, cell)))
        t_target = t + tl.maximum(dist, 0.0)
        skip = tl.ceil(tl.maximum(_to_stepping(t_target, LINEAR, p_ptr) - n, 0.5))
        n = tl.where(alive, tl.where(occ, n + 1.0, n + skip), n)
        n_alive = tl.reduce(alive.to(tl.int32), 0, _add)
    if not WRITE:
        tl.store(counts_ptr + r, count, mask=valid)


def _march_params(center, base_size, resolution, min_step, max_step, cone_angle, linear, device) -> torch.Tensor:
    """The float64 constants of the march (slots ``P_*``), computed in Python doubles as the reference."""
    log1p_c = a = b = at = bt = inv_log1p_c = 0.0
    if not linear:
        log1p_c = math.log1p(cone_angle)
        a = (math.log(min_step) - math.log(log1p_c)) / log1p_c
        b = (math.log(max_step) - math.log(log1p_c)) / log1p_c
        at, bt, inv_log1p_c = math.exp(a * log1p_c), math.exp(b * log1p_c), 1.0 / log1p_c
    base_size, min_step, max_step = float(base_size), float(min_step), float(max_step)
    values = [*map(float, center), min_step, max_step, log1p_c, a, b, at, bt, 1.0 / min_step, 1.0 / max_step,
              inv_log1p_c, 1.0 / base_size, 2.0 * resolution / base_size, base_size / resolution]
    return torch.tensor(values, dtype=torch.float64, device=device)


def _block(n: int, gpu_block: int) -> int:
    # The interpreter pays per program (and per op), so it gets fewer, larger blocks.
    if interpreting():
        return max(16, min(1024, triton.next_power_of_2(max(n, 1))))
    return gpu_block


def march_rays(origins, directions, t_near, t_far, first_offsets, occupied, center, base_size, resolution,
               min_step, max_step, cone_angle, max_samples):
    """Triton version of :func:`ngp.kernels.reference.nerf.march_rays` (same arguments and results)."""
    check_device(origins, directions, t_near, t_far, first_offsets, occupied)
    device, dtype = origins.device, origins.dtype
    n_rays = origins.shape[0]
    o, d = origins.detach().contiguous(), directions.detach().contiguous()
    near, far = t_near.detach().to(dtype).contiguous(), t_far.detach().to(dtype).contiguous()
    first = first_offsets.detach().to(torch.float64).contiguous()
    occ = occupied.detach().contiguous()
    occ = occ.view(torch.uint8) if occ.dtype == torch.bool else occ.to(torch.uint8)
    linear = cone_angle <= 1e-5
    params = _march_params(center, base_size, resolution, min_step, max_step, cone_angle, linear, device)
    counts = torch.zeros(n_rays, dtype=torch.int32, device=device)
    ray_offsets = torch.zeros(n_rays + 1, dtype=torch.int64, device=device)
    if n_rays == 0:
        empty = [torch.empty(0, dtype=dtype, device=device) for _ in range(3)]
        positions = torch.empty(0, 3, dtype=dtype, device=device)
        return positions, *empty, torch.empty(0, dtype=torch.int64, device=device), ray_offsets
    kernel = kernels_for_mode(__name__)._march_kernel
    block = _block(n_rays, 64)
    grid = (triton.cdiv(n_rays, block),)
    scalars = (n_rays, int(resolution), int(occ.shape[0]), int(min(max_samples, 2**31 - 1)))
    dummy_f, dummy_i = params[:0], ray_offsets[:0]
    kernel[grid](o, d, near, far, first, occ, params, counts, ray_offsets,
                 dummy_f, dummy_f, dummy_f, dummy_f, dummy_i, *scalars,
                 LINEAR=linear, WRITE=False, BLOCK=block, **_EXACT)
    torch.cumsum(counts, 0, out=ray_offsets[1:])
    n_samples = int(ray_offsets[-1])  # the one host sync: the output size
    positions = torch.empty(n_samples, 3, dtype=dtype, device=device)
    ts, t_starts, t_ends = (torch.empty(n_samples, dtype=dtype, device=device) for _ in range(3))
    ray_indices = torch.empty(n_samples, dtype=torch.int64, device=device)
    kernel[grid](o, d, near, far, first, occ, params, counts, ray_offsets,
                 positions, ts, t_starts, t_ends, ray_indices, *scalars,
                 LINEAR=linear, WRITE=True, BLOCK=block, **_EXACT)
    return positions, ts, t_starts, t_ends, ray_indices, ray_offsets


# ----------------------------------------------------------------------------------------------------
# Compositing
# ----------------------------------------------------------------------------------------------------


@_jit
def _composite_forward_kernel(
    sig_ptr, rgb_ptr, t0_ptr, t1_ptr, off_ptr, bg_ptr, thr_ptr, color_ptr, opacity_ptr, depth_ptr, w_ptr,
    n_rays, C: tl.constexpr, CP: tl.constexpr, BLOCK: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = r < n_rays
    ch = tl.arange(0, CP)
    ch_ok = ch < C
    start = tl.load(off_ptr + r, mask=valid, other=0)
    end = tl.load(off_ptr + r + 1, mask=valid, other=0)
    length = end - start
    threshold = tl.load(thr_ptr)
    trans = tl.full([BLOCK], 1.0, tl.float64)
    acc_opacity = tl.full([BLOCK], 0.0, tl.float64)
    acc_depth = tl.full([BLOCK], 0.0, tl.float64)
    acc_color = tl.full([BLOCK, CP], 0.0, tl.float64)
    for k in range(0, tl.reduce(length, 0, _max)):
        i = start + k
        m = valid & (k < length)
        live = m & (trans >= threshold)  # early termination: the rest of the ray is invisible
        t_lo = tl.load(t0_ptr + i, mask=live, other=0.0).to(tl.float64)
        t_hi = tl.load(t1_ptr + i, mask=live, other=0.0).to(tl.float64)
        sigma = tl.load(sig_ptr + i, mask=live, other=0.0).to(tl.float64)
        tau = sigma * (t_hi - t_lo)
        w = tl.where(live, trans * _alpha(tau), 0.0)
        tl.store(w_ptr + i, w, mask=m)
        rgb = tl.load(rgb_ptr + i[:, None] * C + ch[None, :], mask=live[:, None] & ch_ok[None, :], other=0.0)
        acc_color += w[:, None] * rgb.to(tl.float64)
        acc_opacity += w
        acc_depth += w * 0.5 * (t_lo + t_hi)
        trans = tl.where(live, trans * tl.exp(-tau), trans)
    bg = tl.load(bg_ptr + r[:, None] * C + ch[None, :], mask=valid[:, None] & ch_ok[None, :], other=0.0)
    acc_color += (1.0 - acc_opacity)[:, None] * bg.to(tl.float64)
    tl.store(color_ptr + r[:, None] * C + ch[None, :], acc_color, mask=valid[:, None] & ch_ok[None, :])
    tl.store(opacity_ptr + r, acc_opacity, mask=valid)
    tl.store(depth_ptr + r, acc_depth, mask=valid)


@_jit
def _composite_backward_kernel(
    gc_ptr, go_ptr, gd_ptr, gw_ptr, sig_ptr, rgb_ptr, t0_ptr, t1_ptr, off_ptr, bg_ptr, color_ptr, opacity_ptr,
    depth_ptr, thr_ptr, gsig_ptr, grgb_ptr, gbg_ptr,
    n_rays, C: tl.constexpr, CP: tl.constexpr, HAS_GW: tl.constexpr, BLOCK: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = r < n_rays
    ch = tl.arange(0, CP)
    mask_rc = valid[:, None] & (ch < C)[None, :]
    start = tl.load(off_ptr + r, mask=valid, other=0)
    end = tl.load(off_ptr + r + 1, mask=valid, other=0)
    length = end - start
    n_steps = tl.reduce(length, 0, _max)
    threshold = tl.load(thr_ptr)
    grad_color = tl.load(gc_ptr + r[:, None] * C + ch[None, :], mask=mask_rc, other=0.0).to(tl.float64)
    grad_opacity = tl.load(go_ptr + r, mask=valid, other=0.0).to(tl.float64)
    grad_depth = tl.load(gd_ptr + r, mask=valid, other=0.0).to(tl.float64)
    bg = tl.load(bg_ptr + r[:, None] * C + ch[None, :], mask=mask_rc, other=0.0).to(tl.float64)
    color = tl.load(color_ptr + r[:, None] * C + ch[None, :], mask=mask_rc, other=0.0).to(tl.float64)
    opacity = tl.load(opacity_ptr + r, mask=valid, other=0.0).to(tl.float64)
    depth = tl.load(depth_ptr + r, mask=valid, other=0.0).to(tl.float64)
    tl.store(gbg_ptr + r[:, None] * C + ch[None, :], (1.0 - opacity)[:, None] * grad_color, mask=mask_rc)
    # total = sum_i w_i g_i, from the forward outputs (see reference.composite_backward)
    total = grad_opacity * opacity + grad_depth * depth + tl.reduce(grad_color * (color - bg), 1, _add)
    if HAS_GW:  # the only part of the total the forward outputs do not carry
        trans = tl.full([BLOCK], 1.0, tl.float64)
        for k in range(0, n_steps):
            i = start + k
            live = valid & (k < length) & (trans >= threshold)
            sigma = tl.load(sig_ptr + i, mask=live, other=0.0).to(tl.float64)
            delta = tl.load(t1_ptr + i, mask=live, other=0.0).to(tl.float64) - \
                tl.load(t0_ptr + i, mask=live, other=0.0).to(tl.float64)
            tau = sigma * delta
            gw = tl.load(gw_ptr + i, mask=live, other=0.0).to(tl.float64)
            total += tl.where(live, trans * _alpha(tau) * gw, 0.0)
            trans = tl.where(live, trans * tl.exp(-tau), trans)
    trans = tl.full([BLOCK], 1.0, tl.float64)
    prefix = tl.full([BLOCK], 0.0, tl.float64)
    for k in range(0, n_steps):
        i = start + k
        m = valid & (k < length)
        live = m & (trans >= threshold)
        t_lo = tl.load(t0_ptr + i, mask=live, other=0.0).to(tl.float64)
        t_hi = tl.load(t1_ptr + i, mask=live, other=0.0).to(tl.float64)
        sigma = tl.load(sig_ptr + i, mask=live, other=0.0).to(tl.float64)
        delta = t_hi - t_lo
        tau = sigma * delta
        w = tl.where(live, trans * _alpha(tau), 0.0)
        trans_next = trans * tl.exp(-tau)  # T_i (1 - alpha_i)
        rgb = tl.load(rgb_ptr + i[:, None] * C + ch[None, :], mask=live[:, None] & (ch < C)[None, :], other=0.0)
        g = grad_opacity + grad_depth * 0.5 * (t_lo + t_hi) + tl.reduce(grad_color * (rgb.to(tl.float64) - bg), 1, _add)
        if HAS_GW:
            g += tl.load(gw_ptr + i, mask=live, other=0.0).to(tl.float64)
        prefix += w * g
        grad_sigma = tl.where(live, delta * (trans_next * g - (total - prefix)), 0.0)
        tl.store(gsig_ptr + i, grad_sigma, mask=m)
        tl.store(grgb_ptr + i[:, None] * C + ch[None, :], w[:, None] * grad_color, mask=m[:, None] & (ch < C)[None, :])
        trans = tl.where(live, trans_next, trans)


def _channel_block(n_channels: int) -> int:
    # a power of two, at least 1: tl.arange(0, 0) does not exist, and no colour channel (densities
    # composited for their weights, opacity and depth) is a valid call; the kernels mask ch < C
    return max(triton.next_power_of_2(n_channels), 1)


def _threshold(value: float, device) -> torch.Tensor:
    # float64 like the reference's comparison (a Python float argument would become float32)
    return torch.tensor([float(value)], dtype=torch.float64, device=device)


def composite_forward(sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background, threshold):
    """Triton version of :func:`ngp.kernels.reference.nerf.composite_forward` (``ray_indices`` unused)."""
    check_device(sigmas, rgbs, t_starts, t_ends, ray_offsets, background)
    device, dtype = rgbs.device, rgbs.dtype
    n_rays, n_channels = ray_offsets.shape[0] - 1, rgbs.shape[1]
    color = torch.empty(n_rays, n_channels, dtype=dtype, device=device)
    opacity, depth = torch.empty(n_rays, dtype=dtype, device=device), torch.empty(n_rays, dtype=dtype, device=device)
    weights = torch.empty(sigmas.shape[0], dtype=dtype, device=device)
    if n_rays == 0:
        return color, opacity, depth, weights
    block = _block(n_rays, 64)
    kernels_for_mode(__name__)._composite_forward_kernel[(triton.cdiv(n_rays, block),)](
        sigmas.contiguous(), rgbs.contiguous(), t_starts.contiguous(), t_ends.contiguous(), ray_offsets.contiguous(),
        background.contiguous(), _threshold(threshold, device), color, opacity, depth, weights, n_rays,
        C=n_channels, CP=_channel_block(n_channels), BLOCK=block, **_EXACT,
    )
    return color, opacity, depth, weights


def composite_backward(grad_color, grad_opacity, grad_depth, grad_weights, sigmas, rgbs, t_starts, t_ends,
                       ray_indices, ray_offsets, background, color, opacity, depth, threshold):
    """Triton version of :func:`ngp.kernels.reference.nerf.composite_backward` (``ray_indices`` unused)."""
    check_device(grad_color, sigmas, rgbs, ray_offsets, background, color)
    device = rgbs.device
    n_rays, n_channels = ray_offsets.shape[0] - 1, rgbs.shape[1]
    grad_sigmas = torch.empty_like(sigmas, memory_format=torch.contiguous_format)
    grad_rgbs = torch.empty_like(rgbs, memory_format=torch.contiguous_format)
    grad_background = torch.empty_like(background, memory_format=torch.contiguous_format)
    if n_rays == 0:
        return grad_sigmas, grad_rgbs, grad_background
    has_gw = grad_weights.numel() > 0
    block = _block(n_rays, 64)
    kernels_for_mode(__name__)._composite_backward_kernel[(triton.cdiv(n_rays, block),)](
        grad_color.contiguous(), grad_opacity.contiguous(), grad_depth.contiguous(),
        grad_weights.contiguous() if has_gw else sigmas, sigmas.contiguous(), rgbs.contiguous(),
        t_starts.contiguous(), t_ends.contiguous(), ray_offsets.contiguous(), background.contiguous(),
        color.contiguous(), opacity.contiguous(), depth.contiguous(), _threshold(threshold, device),
        grad_sigmas, grad_rgbs, grad_background, n_rays,
        C=n_channels, CP=_channel_block(n_channels), HAS_GW=has_gw, BLOCK=block, **_EXACT,
    )
    return grad_sigmas, grad_rgbs, grad_background
