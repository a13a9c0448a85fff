"""instant-ngp's cascaded occupancy grid: geometry, updates (EMA of maxima, thresholds), camera culling.

Run: ``pytest tests/nerf/test_occupancy.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

from ngp.nerf.occupancy import OccupancyGrid
from ngp.ops import nerf as ops

UNIT = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
CENTER = torch.tensor([0.5, 0.5, 0.5])
RADIUS = 0.2


def sphere_density(value=1e4, center=CENTER, radius=RADIUS):
    def fn(x):
        return torch.where((x - center).norm(dim=-1) < radius, value, 0.0)
    return fn


def test_geometry_matches_instant_ngp():
    grid = OccupancyGrid(aabb_scale=4, resolution=16)
    assert grid.n_cascades == 3 and grid.base_size == 1.0 and grid.center == (0.5, 0.5, 0.5)
    torch.testing.assert_close(grid.aabb, torch.tensor([[-1.5] * 3, [2.5] * 3]))
    assert grid.min_step_size == pytest.approx(math.sqrt(3) / 1024)
    assert grid.max_step_size == pytest.approx(math.sqrt(3) * 4 / 16)
    # cascade 2 (side 4) fits the box exactly; all cells valid. Cascade 0 = the unit cube.
    assert grid.valid.all()
    assert OccupancyGrid(aabb=UNIT, resolution=8).n_cascades == 1
    # a box smaller than the coarsest cascade: the outer cells are invalid and never occupied
    grid = OccupancyGrid(aabb=torch.tensor([[-0.5, 0.0, 0.0], [1.5, 1.0, 1.0]]), resolution=8)
    assert grid.n_cascades == 2
    assert 0 < grid.valid[1].sum() < 8**3 and grid.valid[0].all()
    assert torch.equal(grid.occupied, grid.valid)


def test_lookup_uses_finest_containing_cascade():
    grid = OccupancyGrid(aabb_scale=4, resolution=16)
    points = torch.tensor([[0.5, 0.5, 0.5], [0.9, 0.5, 0.5], [1.2, 0.5, 0.5], [2.4, 0.5, 0.5], [3.0, 0.5, 0.5]])
    idx = ops.grid_cell_index(points, grid)
    assert (idx[:4] // 16**3).tolist() == [0, 0, 1, 2]
    assert idx[4] == -1
    # the cell coordinates: (0.9 - 0.5) / 1 + 0.5 = 0.9 -> cell 14 of 16 along x in cascade 0
    assert (idx[1] % 16**3) // 256 == 14


def test_cell_positions_lie_in_their_cells_and_the_kernel_matches_the_definition():
    """grid_cell_positions inverts grid_cell_index: a jittered point of a cell is looked up in that cell
    (checked where the finest cascade holding it is the cell's own); the Numba kernel gives the
    reference's numbers bit for bit, and the aabb clamps."""
    from ngp.kernels.cpu import nerf as cpu
    from ngp.kernels.reference import nerf as ref

    grid = OccupancyGrid(aabb_scale=4, resolution=16, center=(0.25, 0.5, 0.75))
    g = torch.Generator().manual_seed(0)
    cells = torch.randint(grid.occupied.numel(), (5000,), generator=g)
    jitter = torch.rand(5000, 3, generator=g) * 0.98 + 0.01  # off the faces, where float rounding decides
    positions = ops.grid_cell_positions(cells, grid, jitter)
    idx = ops.grid_cell_index(positions, grid)
    cascade = cells // 16**3
    xyz = torch.stack([(cells % 16**3) // 256, (cells % 256) // 16, cells % 16], -1)
    own = (cascade == 0) | ((xyz < 4) | (xyz >= 12)).any(-1)  # not inside the next finer cascade
    assert own.sum() > 1000 and torch.equal(idx[own], cells[own])
    assert ((idx // 16**3) <= cascade).all()
    centres = ops.grid_cell_positions(cells, grid)
    assert torch.equal(centres, ops.grid_cell_positions(cells, grid, torch.full((5000, 3), 0.5)))

    args = (16, torch.tensor([grid.cell_size(k) for k in range(3)]), torch.randn(3, 3, generator=g),
            torch.full((3,), -0.5), torch.full((3,), 1.5))
    for offsets in (jitter, torch.full((1, 3), 0.5)):
        expected = ref.cell_positions(cells, offsets, *args)
        assert torch.equal(cpu.cell_positions(cells, offsets, *args), expected)
        assert expected.min() == -0.5 and expected.max() == 1.5  # clamped, and the clamp was needed
    clamped = ops.grid_cell_positions(cells, grid, jitter, grid.aabb * 0.5)
    assert (clamped >= grid.aabb[0] * 0.5).all() and (clamped <= grid.aabb[1] * 0.5).all()
    with pytest.raises(ValueError, match="offsets must be"):
        ops.grid_cell_positions(cells, grid, jitter[:10])
    with pytest.raises(ValueError, match="cells must be"):
        ops.grid_cell_positions(cells[:, None], grid)


def test_warmup_updates_cover_sphere_and_exclude_far_cells():
    grid = OccupancyGrid(aabb=UNIT, resolution=32)
    generator = torch.Generator().manual_seed(0)
    assert grid.update(0, sphere_density(), generator=generator)
    cell_diag = math.sqrt(3) / 32
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(20000, 3, generator=g)
    r = (pts - CENTER).norm(dim=-1)
    # one jittered sample per cell: every cell entirely inside the sphere is found at once
    assert grid.is_occupied(pts)[r < RADIUS - cell_diag].all()
    # cells the sphere only clips are found as more warm-up updates sample them elsewhere
    for step in range(16, 16 * 20, 16):
        grid.update(step, sphere_density(), generator=generator)
    occ = grid.is_occupied(pts)
    assert occ[r < RADIUS].float().mean() > 0.995
    assert not occ[r > RADIUS + cell_diag].any()
    # stored values are optical thicknesses sigma * min_step
    assert grid.density.max() == pytest.approx(1e4 * grid.min_step_size)


def test_marching_after_update_samples_only_near_the_sphere():
    grid = OccupancyGrid(aabb_scale=2, resolution=32)
    grid.update(0, sphere_density(), generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(2)
    o = torch.rand(500, 3, generator=g) * 3 - 1.0
    target = CENTER + (torch.rand(500, 3, generator=g) - 0.5) * 0.6  # half the rays miss the sphere
    d = torch.nn.functional.normalize(target - o, dim=-1)
    t_near, t_far, _ = ops.ray_aabb_intersect(o, d, grid.aabb)
    s = ops.march_rays(o, d, t_near, t_far, grid)
    assert s.n_samples > 10000
    assert ((s.positions - CENTER).norm(dim=-1) < RADIUS + math.sqrt(3) / 32).all()
    # a ray through the centre is sampled all along the chord (at least where cells lie fully inside)
    s = ops.march_rays(torch.tensor([[-0.5, 0.5, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]]),
                       torch.tensor([0.0]), torch.tensor([2.0]), grid)
    inner = RADIUS - math.sqrt(3) / 32
    x = s.positions[:, 0]
    x = x[(x > 0.5 - inner) & (x < 0.5 + inner)]
    dt = grid.min_step_size
    assert x.min() < 0.5 - inner + dt and x.max() > 0.5 + inner - dt
    torch.testing.assert_close(x.diff(), torch.full((x.shape[0] - 1,), dt), atol=1e-5, rtol=0)


def test_coarser_cascade_keeps_fine_occupancy():
    grid = OccupancyGrid(aabb_scale=2, resolution=16)
    small = sphere_density(radius=0.1)
    grid.update(0, small, generator=torch.Generator().manual_seed(3))
    fine = grid.occupied.view(2, 16, 16, 16)[0]
    coarse = grid.occupied.view(2, 16, 16, 16)[1]
    assert fine.any()
    # cascade-0 cell (x, y, z) lies in cascade-1 cell (x // 2 + 4, ...): it must be occupied there too
    for x, y, z in torch.nonzero(fine).tolist():
        assert coarse[x // 2 + 4, y // 2 + 4, z // 2 + 4]


def test_ema_decay_and_threshold():
    grid = OccupancyGrid(aabb=UNIT, resolution=8, warmup_steps=10**6)
    thickness = 0.02
    sigma = thickness / grid.min_step_size
    left = lambda x: torch.where(x[:, 0] < 0.5, sigma, 0.0)  # noqa: E731
    right = lambda x: torch.where(x[:, 0] >= 0.5, 1e4, 0.0)  # noqa: E731
    grid.update(0, left)
    left_cells = grid.occupied.view(8, 8, 8)[:4]
    assert left_cells.all() and not grid.occupied.view(8, 8, 8)[4:].any()
    torch.testing.assert_close(grid.density.view(8, 8, 8)[:4], torch.full((4, 8, 8), thickness))
    # the scene moves to the right half: old values decay by 0.95 per update, new ones take the max
    for k in range(1, 14):
        grid.update(0, right)
        expected = thickness * 0.95**k
        torch.testing.assert_close(grid.density.view(8, 8, 8)[:4], torch.full((4, 8, 8), expected))
        assert grid.occupied.view(8, 8, 8)[:4].all() == (expected > 0.01)
    assert grid.occupied.view(8, 8, 8)[4:].all()
    grid.update(0, right)  # 0.02 * 0.95**14 < 0.01: the left half is now empty
    assert not grid.occupied.view(8, 8, 8)[:4].any()
    assert int(grid.n_updates) == 15


def test_threshold_is_capped_by_mean_density():
    grid = OccupancyGrid(aabb=UNIT, resolution=8)
    faint = 1e-3 / grid.min_step_size  # optical thickness 1e-3 < 0.01 everywhere ...
    grid.update(0, lambda x: torch.where(x[:, 0] < 0.25, 2 * faint, faint))
    # ... but the threshold is min(0.01, mean), so the denser quarter stays occupied
    assert float(grid.mean_density) == pytest.approx(1.25e-3, rel=1e-5)
    occ = grid.occupied.view(8, 8, 8)
    assert occ[:2].all() and not occ[2:].any()


def test_update_schedule_and_sample_counts():
    grid = OccupancyGrid(aabb_scale=2, resolution=8, warmup_steps=32)
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        assert ((x >= grid.aabb[0]) & (x <= grid.aabb[1])).all()
        return torch.zeros(x.shape[0])

    assert not grid.update(3, fn) and not seen
    assert grid.update(16, fn)
    assert sum(seen) == 2 * 8**3  # warm-up: every cell once
    seen.clear()
    grid.update(32, fn)  # after warm-up, the occupied set is empty: only the uniform quarter
    assert sum(seen) == 2 * 8**3 // 4
    seen.clear()
    grid.density.fill_(1.0)
    grid.update(48, fn)
    assert sum(seen) == 2 * (2 * 8**3 // 4)


def test_bad_density_fn_raises():
    grid = OccupancyGrid(aabb=UNIT, resolution=4)
    with pytest.raises(ValueError, match="density_fn"):
        grid.update(0, lambda x: torch.zeros(x.shape[0], 2))
    with pytest.raises(ValueError, match="NaN"):
        grid.update(0, lambda x: torch.full((x.shape[0],), math.nan))
    with pytest.raises(ValueError, match="aabb"):
        OccupancyGrid(aabb=torch.tensor([[0.0, 0, 0], [0.0, 1, 1]]))


def test_state_dict_round_trip():
    grid = OccupancyGrid(aabb_scale=2, resolution=8)
    grid.update(0, sphere_density(), generator=torch.Generator().manual_seed(5))
    other = OccupancyGrid(aabb_scale=2, resolution=8)
    other.load_state_dict(grid.state_dict())
    assert torch.equal(other.occupied, grid.occupied) and torch.equal(other.density, grid.density)
    assert set(grid.state_dict()) == {"aabb", "density", "occupied", "mean_density", "n_updates"}
    other.mark_all()
    assert torch.equal(other.occupied, other.valid)


def test_mark_untrained_culls_unseen_cells():
    from types import SimpleNamespace

    grid = OccupancyGrid(aabb=UNIT, resolution=8)
    # one camera at z = 3 looking down -z at the box centre, a narrow field of view (half-angle ~3 deg)
    c2w = torch.tensor([[[1.0, 0, 0, 0.5], [0, 1.0, 0, 0.5], [0, 0, 1.0, 3.0]]])
    one = torch.ones(1)
    cams = SimpleNamespace(c2w=c2w, fx=100 * one, fy=100 * one, cx=5 * one, cy=5 * one, width=10 * one,
                           height=10 * one)
    n_culled = grid.mark_untrained(cams)
    occ = grid.occupied.view(8, 8, 8)
    dens = grid.density.view(8, 8, 8)
    assert 0 < n_culled < 8**3
    assert dens[0, 0, 0] == -1 and not occ[0, 0, 0]  # a corner of the box is out of view
    assert dens[4, 4, 4] == 0 and dens[3, 3, 0] == 0  # the axis through the centre is seen
    grid.update(0, lambda x: torch.full((x.shape[0],), 1e4))
    assert dens[0, 0, 0] == -1 and not occ[0, 0, 0]  # untrained cells are never evaluated or occupied
    assert occ[4, 4, 4]


def test_updates_never_evaluate_untrained_cells_however_they_were_marked():
    """The cells an update may evaluate are kept between updates: marking cells untrained through a
    loaded state (even as many as before, elsewhere) or a direct write must still keep them out (-1,
    never occupied)."""
    grid = OccupancyGrid(aabb=UNIT, resolution=8, warmup_steps=1000)  # every update evaluates every cell
    everywhere = lambda x: torch.full((x.shape[0],), 1e4)  # noqa: E731
    state = grid.state_dict()
    state["density"][0, :100] = -1.0
    grid.load_state_dict(state)
    grid.update(16, everywhere, force=True)
    assert grid.occupied[0, 100:].all() and not grid.occupied[0, :100].any()
    state = grid.state_dict()
    state["density"][0, :100], state["density"][0, 100:200] = 1.0, -1.0  # as many untrained, elsewhere
    grid.load_state_dict(state)
    grid.update(32, everywhere, force=True)
    assert (grid.density[0, 100:200] == -1).all() and not grid.occupied[0, 100:200].any()
    assert grid.occupied[0, :100].all() and grid.occupied[0, 200:].all()
    with torch.no_grad():
        grid.density[0, 200:250] = -1.0  # a direct write
    grid.update(48, everywhere, force=True)
    assert (grid.density[0, 100:250] == -1).all() and not grid.occupied[0, 100:250].any()
