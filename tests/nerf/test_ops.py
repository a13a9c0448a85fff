"""NeRF ray ops: box intersection, marching, compositing (Numba kernels against the PyTorch reference).

Run: ``pytest tests/nerf/test_ops.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from ngp.kernels.cpu import nerf as cpu
from ngp.kernels.reference import nerf as ref
from ngp.nerf.occupancy import OccupancyGrid
from ngp.ops import nerf as ops

UNIT = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
BACKENDS = ["reference", "numba"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("NGP_BACKEND", request.param)
    return request.param


def _unit(v):
    v = torch.tensor(v, dtype=torch.float32)
    return v / v.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------------
# ray_aabb_intersect
# ----------------------------------------------------------------------------------------------------


def test_ray_aabb_hand_cases():
    o = torch.tensor([
        [-1.0, 0.5, 0.5],   # enters the +x face from outside
        [0.5, 0.5, 0.5],    # starts inside
        [-1.0, 2.0, 0.5],   # passes beside the box
        [2.0, 0.5, 0.5],    # box behind the origin
        [-1.0, 0.0, 0.5],   # parallel to the y = 0 face, lying in it
        [-1.0, -0.1, 0.5],  # parallel to the y = 0 face, just outside
        [0.0, 2.0, 0.5],    # grazes the edge x = 1, y = 1
        [0.0, 0.0, -2.0],   # diagonal, through two opposite corners' edges
    ])
    d = torch.cat([_unit([[1.0, 0, 0]]), _unit([[0, 1.0, 0]]), _unit([[1.0, 0, 0]]), _unit([[1.0, 0, 0]]),
                   _unit([[1.0, 0, 0]]), _unit([[1.0, 0, 0]]), _unit([[1.0, -1.0, 0]]), _unit([[0.5, 0.5, 2.0]])])
    t_near, t_far, hit = ops.ray_aabb_intersect(o, d, UNIT)
    assert hit.tolist() == [True, True, False, False, True, False, False, True]
    assert t_near[0] == pytest.approx(1.0) and t_far[0] == pytest.approx(2.0)
    assert t_near[1] == 0.0 and t_far[1] == pytest.approx(0.5)
    assert t_near[4] == pytest.approx(1.0) and t_far[4] == pytest.approx(2.0)
    n8 = math.sqrt(0.25 + 0.25 + 4.0)
    assert t_near[7] == pytest.approx(n8, rel=1e-6) and t_far[7] == pytest.approx(1.5 * n8, rel=1e-6)
    assert (t_near[~hit] == 0).all() and (t_far[~hit] == 0).all()


def test_ray_aabb_random_agrees_with_point_tests():
    g = torch.Generator().manual_seed(0)
    o = torch.rand(4000, 3, generator=g) * 4 - 1.5
    d = torch.nn.functional.normalize(torch.randn(4000, 3, generator=g), dim=-1)
    t_near, t_far, hit = ops.ray_aabb_intersect(o, d, UNIT)
    mid = o + 0.5 * (t_near + t_far)[:, None] * d
    assert ((mid[hit] >= -1e-5) & (mid[hit] <= 1 + 1e-5)).all()
    # a miss never has a point inside the box on a fine sweep of t
    ts = torch.linspace(0, 6, 600)
    pts = o[~hit, None] + ts[None, :, None] * d[~hit, None]
    inside = ((pts > 1e-4) & (pts < 1 - 1e-4)).all(-1).any(-1)
    assert not inside.any()


def test_ray_aabb_rejects_bad_input():
    with pytest.raises(ValueError, match="origins"):
        ops.ray_aabb_intersect(torch.zeros(3), torch.zeros(3), UNIT)
    with pytest.raises(ValueError, match="NaN"):
        ops.ray_aabb_intersect(torch.full((1, 3), math.nan), torch.ones(1, 3), UNIT)
    with pytest.raises(ValueError, match="aabb"):
        ops.ray_aabb_intersect(torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(3))


# ----------------------------------------------------------------------------------------------------
# march_rays
# ----------------------------------------------------------------------------------------------------


def _rays(n, seed, lo=-1.5, hi=2.5):
    g = torch.Generator().manual_seed(seed)
    o = torch.rand(n, 3, generator=g) * (hi - lo) + lo
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return o, d


def test_march_full_grid_even_spacing(backend):
    grid = OccupancyGrid(aabb=UNIT, resolution=16)
    o, d = _rays(64, 1)
    t_near, t_far, hit = ops.ray_aabb_intersect(o, d, UNIT)
    s = ops.march_rays(o, d, t_near, t_far, grid, max_samples_per_ray=100000)
    dt = grid.min_step_size
    counts = s.samples_per_ray
    assert (counts[~hit] == 0).all() and (counts[hit] > 0).all()
    k = torch.arange(s.n_samples) - s.ray_offsets[s.ray_indices]
    expected = t_near[s.ray_indices].double() + (k.double() + 0.5) * dt
    torch.testing.assert_close(s.ts.double(), expected, atol=1e-5, rtol=0)
    # exactly the samples with t < t_far, and the intervals tile [t_near, t_far]
    expected_counts = torch.ceil((t_far - t_near).double() / dt - 0.5).long().clamp_min(0)
    assert torch.equal(counts[hit], expected_counts[hit])
    tiled = torch.zeros(64, dtype=torch.float64).index_add(0, s.ray_indices, s.deltas.double())
    torch.testing.assert_close(tiled, (t_far - t_near).double(), atol=1e-4, rtol=0)
    torch.testing.assert_close(s.positions, o[s.ray_indices] + s.ts[:, None] * d[s.ray_indices], atol=1e-5, rtol=0)
    assert torch.equal(s.directions, d[s.ray_indices])
    assert (s.ray_indices[1:] >= s.ray_indices[:-1]).all()


def test_march_empty_grid_gives_no_samples(backend):
    grid = OccupancyGrid(aabb=UNIT, resolution=16)
    grid.occupied.zero_()
    o, d = _rays(50, 2)
    t_near, t_far, _ = ops.ray_aabb_intersect(o, d, UNIT)
    s = ops.march_rays(o, d, t_near, t_far, grid)
    assert s.n_samples == 0 and s.positions.shape == (0, 3)
    assert torch.equal(s.ray_offsets, torch.zeros(51, dtype=torch.int64))


def test_march_half_grid_only_samples_occupied_cells(backend):
    grid = OccupancyGrid(aabb=UNIT, resolution=16)
    grid.occupied.view(1, 16, 16, 16)[:, 8:] = False  # x >= 0.5 is empty
    o, d = _rays(300, 3)
    t_near, t_far, hit = ops.ray_aabb_intersect(o, d, UNIT)
    s = ops.march_rays(o, d, t_near, t_far, grid)
    assert s.n_samples > 1000
    assert (s.positions[:, 0] < 0.5).all()
    assert grid.is_occupied(s.positions).all()
    # every point of a ray inside the occupied half is sampled: compare with the full grid
    full = OccupancyGrid(aabb=UNIT, resolution=16)
    s_full = ops.march_rays(o, d, t_near, t_far, full)
    in_half = s_full.positions[:, 0] < 0.5
    assert s.n_samples == int(in_half.sum())
    torch.testing.assert_close(s.ts, s_full.ts[in_half])


@pytest.mark.parametrize("cone_angle", [0.0, 1.0 / 256])
def test_march_cascades_respect_occupancy(backend, cone_angle):
    grid = OccupancyGrid(aabb_scale=4, resolution=16)  # 3 cascades around the unit cube
    assert grid.n_cascades == 3
    g = torch.Generator().manual_seed(4)
    grid.occupied.copy_((torch.rand(grid.occupied.shape, generator=g) < 0.2) & grid.valid)
    o, d = _rays(200, 5, -3.0, 4.0)
    t_near, t_far, _ = ops.ray_aabb_intersect(o, d, grid.aabb)
    s = ops.march_rays(o, d, t_near, t_far, grid, cone_angle=cone_angle, jitter=g)
    assert s.n_samples > 500
    # samples not clipped by t_near / t_far have the marcher's step as their length
    interior = (s.t_starts > t_near[s.ray_indices]) & (s.t_ends < t_far[s.ray_indices])
    assert grid.is_occupied(s.positions[interior], dt=s.deltas[interior]).all()
    if cone_angle == 0:
        assert grid.is_occupied(s.positions).all()
    assert ((s.positions >= grid.aabb[0] - 1e-5) & (s.positions <= grid.aabb[1] + 1e-5)).all()
    assert (s.t_starts >= t_near[s.ray_indices]).all() and (s.t_ends <= t_far[s.ray_indices]).all()
    assert (s.t_starts <= s.ts).all() and (s.ts <= s.t_ends).all()
    if cone_angle > 0:
        dt = s.deltas
        expect = (s.ts * cone_angle).clamp(grid.min_step_size, grid.max_step_size)
        torch.testing.assert_close(dt[interior], expect[interior], rtol=0.01, atol=1e-6)


def test_march_max_samples_and_jitter():
    grid = OccupancyGrid(aabb=UNIT, resolution=8)
    o, d = _rays(100, 6)
    t_near, t_far, hit = ops.ray_aabb_intersect(o, d, UNIT)
    s = ops.march_rays(o, d, t_near, t_far, grid, max_samples_per_ray=7)
    assert s.samples_per_ray.max() == 7
    j1 = ops.march_rays(o, d, t_near, t_far, grid, jitter=torch.Generator().manual_seed(0))
    j2 = ops.march_rays(o, d, t_near, t_far, grid, jitter=torch.Generator().manual_seed(0))
    assert torch.equal(j1.ts, j2.ts)
    first = j1.ts[j1.ray_offsets[:-1][hit]]
    offset = (first - t_near[hit]) / grid.min_step_size
    assert (offset >= -1e-3).all() and (offset < 1 + 1e-3).all() and offset.std() > 0.2


def test_march_numba_matches_reference_exactly():
    grid = OccupancyGrid(aabb_scale=4, resolution=16)
    g = torch.Generator().manual_seed(7)
    occupied = ((torch.rand(grid.occupied.shape, generator=g) < 0.3) & grid.valid).to(torch.uint8)
    o, d = _rays(400, 8, -3.0, 4.0)
    d[:10, 0] = 0.0  # axis-parallel rays exercise the infinite exit distances
    d = torch.nn.functional.normalize(d, dim=-1)
    _assert_numba_marches_as_reference(grid, occupied, o, d, torch.rand(400, generator=g, dtype=torch.float64),
                                       max_samples=300, at_least=1000)


def _assert_numba_marches_as_reference(grid, occupied, o, d, first, max_samples, at_least):
    """The Numba marcher's samples equal the reference's bit for bit, with constant and cone steps."""
    t_near, t_far, _ = ops.ray_aabb_intersect(o, d, grid.aabb)
    for cone in (0.0, 1.0 / 256):
        args = (o, d, t_near, t_far, first, occupied, grid.center, grid.base_size, grid.resolution,
                grid.min_step_size, grid.max_step_size, cone, max_samples)
        expected, got = ref.march_rays(*args), cpu.march_rays(*args)
        assert expected[0].shape[0] > at_least
        for e, g_ in zip(expected, got):
            assert torch.equal(e, g_)


@pytest.mark.parametrize("room", [1, 2])
def test_march_numba_rays_with_more_runs_than_recorded_march_again_exactly(room, monkeypatch):
    """A ray with more runs of consecutive samples than the count pass records (``RUNS_PER_RAY``) is
    marched a second time, writing its samples: those must equal the reference's too, with constant and
    cone steps (the fill pass and the writing march compute the samples' bounds each their own way)."""
    monkeypatch.setattr(cpu, "RUNS_PER_RAY", room)
    grid = OccupancyGrid(aabb_scale=4, resolution=16)
    g = torch.Generator().manual_seed(9)
    occupied = ((torch.rand(grid.occupied.shape, generator=g) < 0.3) & grid.valid).to(torch.uint8)
    o, d = _rays(300, 10, -3.0, 4.0)
    d = torch.nn.functional.normalize(d, dim=-1)
    _assert_numba_marches_as_reference(grid, occupied, o, d, torch.rand(300, generator=g, dtype=torch.float64),
                                       max_samples=300, at_least=1000)


def test_march_numba_sees_every_change_of_the_grid():
    """The Numba marcher reuses its block summary of a grid tensor while that tensor is unchanged: an
    in-place update, and a new grid (even at a freed one's address), must be seen."""
    grid = OccupancyGrid(aabb=UNIT, resolution=64)
    o, d = _rays(300, 3, -1.0, 2.0)
    d = torch.nn.functional.normalize(d, dim=-1)
    t_near, t_far, _ = ops.ray_aabb_intersect(o, d, grid.aabb)
    first = torch.full((300,), 0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)

    def both(occupied):
        args = (o, d, t_near, t_far, first, occupied, grid.center, grid.base_size, grid.resolution,
                grid.min_step_size, grid.max_step_size, 0.0, 500)
        return ref.march_rays(*args)[0], cpu.march_rays(*args)[0]

    occupied = torch.zeros(grid.occupied.shape, dtype=torch.bool)
    occupied[:, : occupied.shape[1] // 3] = True
    for change in range(4):
        expected, got = both(occupied)
        assert torch.equal(expected, got), f"after change {change}"
        if change == 1:  # in place, as OccupancyGrid.update does
            occupied.copy_(torch.rand(occupied.shape, generator=g) < 0.05)
        else:  # a new tensor
            occupied = torch.rand(occupied.shape, generator=g) < 0.02 * (change + 1)
    assert expected.shape[0] > 100


def test_samples_in_front_keeps_what_is_visible_and_the_kernel_matches_the_definition():
    """The kept samples are those with transmittance above the threshold in front of them, counting
    what the ray crossed in earlier segments; each ray's log-transmittance carries over. The Numba
    kernel gives the reference's numbers bit for bit."""
    g = torch.Generator().manual_seed(1)
    counts = torch.randint(0, 12, (40,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    n = int(offsets[-1])
    t_starts = torch.rand(n, generator=g)
    t_ends = t_starts + 0.01 + 0.05 * torch.rand(n, generator=g)
    sigmas = torch.rand(n, generator=g) ** 4 * 200.0  # some rays turn opaque within their segment
    before = -torch.rand(40, dtype=torch.float64, generator=g) * 3.0
    before[:5] = -20.0  # already opaque: nothing kept
    keep, after = ops.samples_in_front(sigmas, t_starts, t_ends, offsets, before, 1e-4)
    expected_keep, expected_after = [], []
    for r in range(40):  # one ray at a time, in float64
        log_t = float(before[r])
        for j in range(int(offsets[r]), int(offsets[r + 1])):
            if log_t > math.log(1e-4):
                expected_keep.append(j)
            log_t -= float(sigmas[j]) * (float(t_ends[j]) - float(t_starts[j]))
        expected_after.append(log_t)
    assert keep.tolist() == expected_keep and 0 < len(expected_keep) < n
    torch.testing.assert_close(after, torch.tensor(expected_after, dtype=torch.float64), rtol=1e-5, atol=1e-9)
    ref_keep, ref_after = ref.samples_in_front(sigmas, t_starts, t_ends, offsets, before, math.log(1e-4))
    cpu_keep, cpu_after = cpu.samples_in_front(sigmas, t_starts, t_ends, offsets, before, math.log(1e-4))
    assert torch.equal(cpu_keep, ref_keep) and torch.equal(cpu_after, ref_after)
    with pytest.raises(ValueError, match="log_transmittance must be"):
        ops.samples_in_front(sigmas, t_starts, t_ends, offsets, before[:3])
    with pytest.raises(ValueError, match="t_ends must have"):
        ops.samples_in_front(sigmas, t_starts, t_ends[:-1], offsets, before)


def test_sort_by_ray_is_stable_and_the_kernel_matches_the_definition():
    """Segments of rays concatenated round after round come back packed by ray, each ray's samples in
    the order they had (a stable sort), with the packed offsets; the Numba counting sort gives the
    reference's permutation. Ray indices outside [0, n_rays) are refused before anything is written."""
    g = torch.Generator().manual_seed(0)
    rounds = [torch.sort(torch.randint(0, 50, (n,), generator=g))[0] for n in (300, 120, 40)]  # each sorted
    ray_indices = torch.cat(rounds)
    tags = torch.arange(ray_indices.numel())  # the position in marching order
    for order, offsets in (ops.sort_by_ray(ray_indices, 60), ref.sort_by_ray(ray_indices, 60),
                           cpu.sort_by_ray(ray_indices, 60)):
        assert torch.equal(order, ref.sort_by_ray(ray_indices, 60)[0])
        packed, packed_tags = ray_indices[order], tags[order]
        assert (packed[1:] >= packed[:-1]).all()
        same_ray = packed[1:] == packed[:-1]
        assert (packed_tags[1:][same_ray] > packed_tags[:-1][same_ray]).all()  # marching order kept
        assert offsets[0] == 0 and offsets[-1] == ray_indices.numel() and offsets.shape == (61,)
        for r in (0, 17, 49, 55):
            assert (packed[offsets[r]:offsets[r + 1]] == r).all()
            assert offsets[r + 1] - offsets[r] == (ray_indices == r).sum()
    empty = ops.sort_by_ray(torch.zeros(0, dtype=torch.long), 4)
    assert empty[0].numel() == 0 and torch.equal(empty[1], torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ray_indices must lie in \[0, 40\)"):
        cpu.sort_by_ray(ray_indices, 40)
    with pytest.raises(ValueError, match="ray_indices must be"):
        ops.sort_by_ray(ray_indices[:, None], 60)


def test_march_without_grid_and_bad_input():
    o, d = _rays(10, 9)
    t_near, t_far, hit = ops.ray_aabb_intersect(o, d, UNIT)
    s = ops.march_rays(o, d, t_near, t_far, None, step_size=0.01)
    assert s.n_samples == int(torch.ceil((t_far - t_near) / 0.01 - 0.5).clamp_min(0).sum())
    with pytest.raises(ValueError, match="step_size"):
        ops.march_rays(o, d, t_near, t_far, None)
    with pytest.raises(ValueError, match="t_near"):
        ops.march_rays(o, d, t_near[:3], t_far, None, step_size=0.01)


# ----------------------------------------------------------------------------------------------------
# composite
# ----------------------------------------------------------------------------------------------------


def _packed(n_rays=300, max_per_ray=40, seed=0, dtype=torch.float32, saturate=True):
    """Random packed samples: some rays empty, some dense enough to terminate early."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_per_ray, (n_rays,), generator=g)
    counts[:3] = 0
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    n = int(offsets[-1])
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    deltas = torch.rand(n, generator=g, dtype=dtype) * 0.05 + 1e-3
    ends = torch.cumsum(deltas, 0)
    t_ends = ends - torch.cat([torch.zeros(1, dtype=dtype), ends])[offsets[:-1]][ray_indices] + 0.5
    t_starts = t_ends - deltas
    scale = torch.rand(n_rays, generator=g, dtype=dtype)[ray_indices] * (400 if saturate else 10)
    sigmas = torch.rand(n, generator=g, dtype=dtype) * scale
    rgbs = torch.rand(n, 3, generator=g, dtype=dtype)
    return sigmas, rgbs, t_starts, t_ends, ray_indices, offsets


def _run(inputs, background, grads):
    sigmas, rgbs, t_starts, t_ends, ray_indices, offsets = inputs
    sigmas, rgbs = sigmas.clone().requires_grad_(), rgbs.clone().requires_grad_()
    bg = None if background is None else background.clone().requires_grad_()
    out = ops.composite(sigmas, rgbs, t_starts, t_ends, ray_indices, offsets, bg)
    loss = sum((o * g).sum() for o, g in zip(out, grads) if g is not None)
    loss.backward()
    return out, sigmas.grad, rgbs.grad, None if bg is None else bg.grad


@pytest.mark.parametrize("bg_kind", ["none", "per_channel", "per_ray"])
def test_composite_numba_matches_reference(monkeypatch, bg_kind):
    inputs = _packed()
    n_rays, n = inputs[-1].shape[0] - 1, inputs[0].shape[0]
    g = torch.Generator().manual_seed(1)
    background = {"none": None, "per_channel": torch.rand(3, generator=g),
                  "per_ray": torch.rand(n_rays, 3, generator=g)}[bg_kind]
    grads = (torch.randn(n_rays, 3, generator=g), torch.randn(n_rays, generator=g),
             torch.randn(n_rays, generator=g), torch.randn(n, generator=g))
    monkeypatch.setenv("NGP_BACKEND", "reference")
    expected = _run(inputs, background, grads)
    monkeypatch.setenv("NGP_BACKEND", "numba")
    got = _run(inputs, background, grads)
    assert (expected[0].opacity > 0.9999).sum() > 20, "test data must contain early-terminated rays"
    for e, g_ in zip(expected[0], got[0]):
        torch.testing.assert_close(g_, e, atol=2e-6, rtol=1e-5)
    for e, g_ in zip(expected[1:], got[1:]):
        if e is None:
            assert g_ is None
        else:
            torch.testing.assert_close(g_, e, atol=2e-5, rtol=1e-4)


def test_composite_unused_outputs_and_closed_form_backward(monkeypatch):
    """Only the colour used (others get None grads), and the reference closed form equals autograd."""
    inputs = _packed(seed=3)
    n_rays = inputs[-1].shape[0] - 1
    grads = (torch.randn(n_rays, 3), None, None, None)
    monkeypatch.setenv("NGP_BACKEND", "reference")
    expected = _run(inputs, None, grads)
    monkeypatch.setenv("NGP_BACKEND", "numba")
    got = _run(inputs, None, grads)
    torch.testing.assert_close(got[1], expected[1], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got[2], expected[2], atol=2e-5, rtol=1e-4)
    sigmas, rgbs, t_starts, t_ends, ray_indices, offsets = inputs
    bg = torch.zeros(n_rays, 3)
    color, opacity, depth, weights = ref.composite(sigmas, rgbs, t_starts, t_ends, ray_indices, offsets, bg)
    closed = ref.composite_backward(grads[0], torch.zeros(n_rays), torch.zeros(n_rays), torch.zeros(0), sigmas, rgbs,
                                    t_starts, t_ends, ray_indices, offsets, bg, color, opacity, depth)
    torch.testing.assert_close(closed[0], expected[1], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(closed[1], expected[2], atol=1e-6, rtol=1e-5)


def test_composite_hand_computed(backend):
    sigmas = torch.tensor([1.0, 2.0, 3.0])
    rgbs = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    t_starts = torch.tensor([0.0, 0.5, 0.0])
    t_ends = torch.tensor([0.5, 1.0, 1.0])
    ray_indices = torch.tensor([0, 0, 1])
    offsets = torch.tensor([0, 2, 3, 3])  # ray 2 has no samples
    out = ops.composite(sigmas, rgbs, t_starts, t_ends, ray_indices, offsets, torch.tensor([0.0, 0.0, 1.0]))
    a0, a1, a2 = 1 - math.exp(-0.5), 1 - math.exp(-1.0), 1 - math.exp(-3.0)
    w = [a0, (1 - a0) * a1, a2]
    torch.testing.assert_close(out.weights, torch.tensor(w))
    torch.testing.assert_close(out.opacity, torch.tensor([w[0] + w[1], w[2], 0.0]))
    torch.testing.assert_close(out.color, torch.tensor([[w[0], w[1], 1 - w[0] - w[1]], [0, 0, 1.0], [0, 0, 1.0]]))
    torch.testing.assert_close(out.depth, torch.tensor([0.25 * w[0] + 0.75 * w[1], 0.5 * w[2], 0.0]))


def test_composite_early_termination(backend):
    # sigma * dt = 10 on the first sample: T = exp(-10) ~ 4.5e-5 after it, below the default 1e-4
    # threshold but far above float32's smallest numbers, so the tail's weights are not zero by
    # underflow: only the threshold can zero them.
    sigmas = torch.tensor([100.0, 1.0, 1.0, 0.1])
    rgbs = torch.rand(4, 3)
    t_starts = torch.tensor([0.0, 0.1, 0.2, 0.0])
    t_ends = t_starts + 0.1
    ray_indices, offsets = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 3, 4])
    out = ops.composite(sigmas, rgbs, t_starts, t_ends, ray_indices, offsets)
    assert out.weights[1] == 0 and out.weights[2] == 0  # T < 1e-4 after the first sample
    assert out.weights[3] == pytest.approx(1 - math.exp(-0.01), rel=1e-5)
    assert out.opacity[0] == pytest.approx(1 - math.exp(-10), rel=1e-6)
    kept = ops.composite(sigmas, rgbs, t_starts, t_ends, ray_indices, offsets, transmittance_threshold=0.0)
    # with no threshold the tail keeps its (small) weights, w_i = T_i (1 - exp(-sigma_i dt))
    alpha = 1 - math.exp(-0.1)
    expected = [1 - math.exp(-10), math.exp(-10) * alpha, math.exp(-10.1) * alpha]
    torch.testing.assert_close(kept.weights[:3], torch.tensor(expected), rtol=1e-4, atol=0)
    assert kept.opacity[0] == pytest.approx(1 - math.exp(-10.2), rel=1e-6)


def test_weights_sum_to_opacity(backend):
    sigmas, rgbs, t_starts, t_ends, ray_indices, offsets = _packed(seed=5)
    out = ops.composite(sigmas, rgbs, t_starts, t_ends, ray_indices, offsets)
    n_rays = offsets.shape[0] - 1
    total = torch.zeros(n_rays).index_add(0, ray_indices, out.weights)
    torch.testing.assert_close(total, out.opacity)
    assert (out.opacity <= 1 + 1e-6).all() and (out.weights >= 0).all()
    w = ops.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, offsets)
    torch.testing.assert_close(w, out.weights, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ops.accumulate_along_rays(w, None, ray_indices, n_rays), out.opacity,
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 1e-4, 0.3])
def test_render_weights_kernel_continues_rays_as_the_reference(dtype, threshold):
    """The Numba kernel (no gradients) against the plain definition: with and without each ray's
    transmittance in front of its samples, which is the weights of the whole ray cut in two."""
    sigmas, _, t_starts, t_ends, ray_indices, offsets = _packed(seed=8, dtype=dtype)
    start = torch.rand(offsets.shape[0] - 1, dtype=dtype, generator=torch.Generator().manual_seed(3))
    start[4] = 0.0  # a ray that has already terminated
    for given in (None, start):
        with torch.no_grad():
            ours = ops.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, offsets, threshold, given)
        plain = ref.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, offsets,
                                                          threshold, given)
        assert ours.dtype == dtype and ((ours > 0) == (plain > 0)).all()
        # the reference's one float64 sum over every ray's samples is the less exact of the two
        torch.testing.assert_close(ours, plain, rtol=1e-8 if dtype == torch.float64 else 1e-6, atol=0)
    if dtype != torch.float64:
        return
    # a ray's second half, given the transmittance its first half leaves, weighs as in the whole ray
    whole = ops.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, offsets, 0.0)
    head = offsets[:-1] + (offsets[1:] - offsets[:-1]) // 2  # each ray's first sample of its second half
    in_tail = torch.arange(sigmas.shape[0]) >= head[ray_indices]
    head_weight = torch.zeros(offsets.shape[0] - 1, dtype=dtype).index_add(0, ray_indices[~in_tail], whole[~in_tail])
    tail_offsets = torch.cat([offsets.new_zeros(1), torch.bincount(ray_indices[in_tail],
                                                                   minlength=offsets.shape[0] - 1).cumsum(0)])
    with torch.no_grad():
        tail = ops.render_weight_from_density(t_starts[in_tail], t_ends[in_tail], sigmas[in_tail],
                                              ray_indices[in_tail], tail_offsets, 0.0, 1.0 - head_weight)
    torch.testing.assert_close(tail, whole[in_tail], rtol=1e-9, atol=1e-15)


def test_render_weights_with_gradients_and_bad_input():
    sigmas, _, t_starts, t_ends, ray_indices, offsets = _packed(n_rays=6, max_per_ray=6, seed=2,
                                                                dtype=torch.float64, saturate=False)
    start = torch.rand(6, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda s: ops.render_weight_from_density(t_starts, t_ends, s, ray_indices, offsets, 1e-4, start),
        (sigmas.clone().requires_grad_(),), eps=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"transmittance_start must be \[6\]"):
        ops.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, offsets, 1e-4, start[:5])


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_composite_gradcheck_float64(monkeypatch, backend_name):
    monkeypatch.setenv("NGP_BACKEND", backend_name)
    sigmas, rgbs, t_starts, t_ends, ray_indices, offsets = _packed(n_rays=6, max_per_ray=6, seed=2,
                                                                   dtype=torch.float64, saturate=False)
    bg = torch.rand(6, 3, dtype=torch.float64)

    def fn(s, c, b):
        return tuple(ops.composite(s, c, t_starts, t_ends, ray_indices, offsets, b))

    inputs = (sigmas.requires_grad_(), rgbs.requires_grad_(), bg.requires_grad_())
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


def test_composite_rejects_bad_input():
    sigmas, rgbs, t_starts, t_ends, ray_indices, offsets = _packed(n_rays=5, seed=6)
    with pytest.raises(ValueError, match="rgbs"):
        ops.composite(sigmas, rgbs[:-1], t_starts, t_ends, ray_indices, offsets)
    with pytest.raises(ValueError, match="ray_offsets"):
        ops.composite(sigmas, rgbs, t_starts, t_ends, ray_indices, offsets.int())
    with pytest.raises(ValueError, match="background"):
        ops.composite(sigmas, rgbs, t_starts, t_ends, ray_indices, offsets, torch.zeros(4))


@pytest.mark.parametrize("aabb_scale", [1, 4])
def test_march_numba_skipping_far_empty_space_matches_reference_exactly(aabb_scale):
    """A sparse scene (a few occupied clusters, as a trained grid: most blocks far from any occupied
    cell), so that the Numba marcher jumps across cubes of several empty blocks at once; the samples
    must be those of the reference's cell-by-cell march, bit for bit, with and without cone steps."""
    grid = OccupancyGrid(aabb_scale=aabb_scale, resolution=64)
    g = torch.Generator().manual_seed(11)
    occupied = torch.zeros(grid.n_cascades, 64, 64, 64, dtype=torch.bool)
    for c in range(grid.n_cascades):
        for _ in range(3):
            lo = torch.randint(0, 56, (3,), generator=g)
            x, y, z = lo.tolist()
            occupied[c, x:x + 6, y:y + 6, z:z + 6] = torch.rand(6, 6, 6, generator=g) < 0.6
    occupied = (occupied.reshape(grid.n_cascades, -1) & grid.valid).to(torch.uint8)
    radii = cpu._blocks_for(occupied, occupied.numpy(), 64, cpu._block_size(64, grid.n_cascades))
    assert radii.max() >= 3  # the test exercises jumps over several blocks
    o, _ = _rays(600, 12, -3.0, 4.0)
    cells = occupied[0].view(64, 64, 64).nonzero()  # aim at occupied cells of cascade 0 (the unit cube)
    cells = cells[torch.randint(0, cells.shape[0], (600,), generator=g)]
    targets = (cells.float() + torch.rand(600, 3, generator=g)) / 64
    d = torch.nn.functional.normalize(targets - o, dim=-1)
    d[:10, 1] = 0.0  # axis-parallel rays exercise the infinite exit distances
    d = torch.nn.functional.normalize(d, dim=-1)
    _assert_numba_marches_as_reference(grid, occupied, o, d, torch.rand(600, generator=g, dtype=torch.float64),
                                       max_samples=400, at_least=500)


def test_skip_sizes_are_the_largest_empty_cubes_towards_each_octant():
    """Each block's skip size for an octant is the side of the largest cube of obstacle-free blocks that
    has the block as its corner and extends that way (blocks outside the grid count as free), at most
    the cap: what the marcher may jump across. Brute force over every block and octant of a small grid."""
    import numpy as np

    n, cap = 6, 5
    g = torch.Generator().manual_seed(3)
    obstacle = (torch.rand(2, n ** 3, generator=g) < 0.15).to(torch.uint8).numpy()
    out = np.empty((2, 8, n ** 3), np.uint8)
    cpu._forward_cubes(obstacle, n, cap, out)
    grid = obstacle.reshape(2, n, n, n)
    for c in range(2):
        for o in range(8):
            signs = [-1 if o & bit else 1 for bit in (4, 2, 1)]
            for x in range(n):
                for y in range(n):
                    for z in range(n):
                        side = 0
                        while side < cap:  # grow the cube while the next one is free
                            bounds = [range(max(p - side, 0), p + 1) if sg < 0 else range(p, min(p + side + 1, n))
                                      for p, sg in zip((x, y, z), signs)]
                            if grid[c][np.ix_(*bounds)].any():
                                break
                            side += 1
                        assert out[c, o, (x * n + y) * n + z] == side, (c, o, x, y, z)
    assert out.max() == cap and (out == 0).sum() == 8 * obstacle.sum()


def test_march_without_per_sample_directions_leaves_them_empty(backend):
    grid = OccupancyGrid(aabb=UNIT, resolution=16)
    o, d = _rays(64, 13)
    t_near, t_far, _ = ops.ray_aabb_intersect(o, d, UNIT)
    full = ops.march_rays(o, d, t_near, t_far, grid)
    lean = ops.march_rays(o, d, t_near, t_far, grid, sample_directions=False)
    assert full.n_samples > 100 and torch.equal(full.directions, d[full.ray_indices])
    assert lean.directions.shape == (0, 3)
    for name in ("positions", "ts", "t_starts", "t_ends", "ray_indices", "ray_offsets"):
        assert torch.equal(getattr(lean, name), getattr(full, name)), name


# ----------------------------------------------------------------------------------------------------
# Occupancy-grid updates: decay, thresholding and pooling (Numba against the reference)
# ----------------------------------------------------------------------------------------------------


def _grid_densities(n_cascades: int, res: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Densities with untrained cells (-1), zeros, NaN and values at the float32 rounding of 0.1 (whose
    comparisons and products differ in float64), and a random valid mask."""
    g = torch.Generator().manual_seed(seed)
    density = torch.rand(n_cascades, res ** 3, generator=g) * 0.3
    flat = density.view(-1)
    pick = torch.randperm(flat.numel(), generator=g)
    flat[pick[:40]] = -1.0
    flat[pick[40:80]] = 0.0
    flat[pick[80:120]] = torch.tensor(0.1, dtype=torch.float32)
    flat[pick[120:124]] = float("nan")
    valid = torch.rand(n_cascades, res ** 3, generator=g) > 0.1
    return density, valid


def test_decay_density_kernel_is_the_reference_bit_for_bit():
    """float32 products, NaN and non-positive cells kept; a float64 product differs (checked)."""
    density, _ = _grid_densities(3, 12, 0)
    for decay in (0.95, 0.1, 1 / 3):
        expected = ref.decay_density_(density.clone(), decay)
        got = density.clone()
        version = got._version
        assert cpu.decay_density_(got, decay) is got
        assert torch.equal(got.nan_to_num(7.0), expected.nan_to_num(7.0)), decay
        assert got._version > version  # written through NumPy: the version still moves (caches key on it)
    in_float64 = (density.double() * (1 / 3)).float()
    assert not torch.equal(torch.where(density > 0, in_float64, density).nan_to_num(7.0),
                           ref.decay_density_(density.clone(), 1 / 3).nan_to_num(7.0))


def test_decay_density_op_falls_back_for_strided_densities():
    density, _ = _grid_densities(2, 8, 1)
    strided = density.t()  # not contiguous: the kernel would write a copy
    expected = ref.decay_density_(density.clone(), 0.5).t()
    ops.decay_density_(strided, 0.5)
    assert torch.equal(strided.nan_to_num(7.0), expected.nan_to_num(7.0))


@pytest.mark.parametrize("n_cascades,res", [(3, 8), (2, 16), (1, 6)])
@pytest.mark.parametrize("threshold", [0.1, 0.01, 0.0])
def test_occupancy_from_density_kernel_is_the_reference(n_cascades, res, threshold):
    density, valid = _grid_densities(n_cascades, res, res + n_cascades)
    expected = ref.occupancy_from_density(density, valid, threshold)
    got = cpu.occupancy_from_density(density, valid, threshold)
    assert got.dtype == torch.bool and torch.equal(got, expected)
    if n_cascades > 1:  # the pooling did something
        assert not torch.equal(expected, (density > threshold) & valid)


def test_occupancy_from_density_compares_in_float32():
    """A density of float32(0.1) is not above a threshold of 0.1 (torch compares in float32; in float64
    it would be)."""
    density = torch.full((1, 8), 0.1)
    valid = torch.ones(1, 8, dtype=torch.bool)
    assert not ops.occupancy_from_density(density, valid, 0.1).any()
    assert ops.occupancy_from_density(density, valid, 0.0999).all()


def test_occupancy_from_density_names_bad_shapes():
    with pytest.raises(ValueError, match=r"\[C, res\^3\]"):
        ops.occupancy_from_density(torch.zeros(2, 100), torch.ones(2, 100, dtype=torch.bool), 0.01)
    with pytest.raises(ValueError, match="bool valid mask"):
        ops.occupancy_from_density(torch.zeros(1, 8), torch.ones(1, 8), 0.01)


def test_skip_sizes_mark_the_inner_cascades_empty_blocks_one():
    """In cascades above the first, the empty blocks of the middle half (looked up in the finer cascade)
    skip only themselves (1) in every octant, the occupied ones 0; the others are the cubes' sides."""
    import numpy as np

    n = 8
    g = torch.Generator().manual_seed(5)
    occupied = (torch.rand(3, n ** 3, generator=g) < 0.2).to(torch.uint8).numpy()
    sizes = cpu._skip_sizes(occupied, n)
    grid = occupied.reshape(3, n, n, n)
    inner = np.zeros((3, n, n, n), bool)
    inner[1:, 2:6, 2:6, 2:6] = True
    obstacle = (grid != 0) | inner
    cubes = np.empty((3, 8, n ** 3), np.uint8)
    cpu._forward_cubes(obstacle.reshape(3, -1).view(np.uint8), n, n, cubes)
    expected = np.where((inner & (grid == 0)).reshape(3, 1, -1), 1, cubes)
    assert np.array_equal(sizes, expected)
    assert (sizes[1:, :, inner[1].reshape(-1)] == 1).any() and (sizes[0] > 1).any()
