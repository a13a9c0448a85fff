"""Rotated levels (``rotate_levels``) against a plain-PyTorch definition on every backend, and collision
statistics against counts made by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ngp.config import ConfigError
from ngp.encodings import Encoding
from ngp.encodings.collisions import collision_statistics, format_collisions, occupied_vertices
from ngp.encodings.grid import level_rotations
from ngp.kernels.reference.hashgrid import GridLayout, corner_indices
from ngp.kernels.reference.hashgrid import hash_grid_encode as reference_encode


def _backends():
    backends = ["reference", "numba"]
    try:
        import triton  # noqa: F401
        backends.append("triton")  # in Triton's interpreter on CPU tensors
    except ImportError:
        pass
    return backends


ROTATED = {"otype": "HashGrid", "n_levels": 3, "n_features_per_level": 2, "log2_hashmap_size": 9,
           "base_resolution": 3, "per_level_scale": 2.0, "rotate_levels": True}


def rotated_reference(x: torch.Tensor, grid) -> torch.Tensor:
    """The definition: level l encodes ``R_l (clamp(x) - 0.5) / sqrt(d) + 0.5`` with its own rows."""
    d, layout = x.shape[1], grid.layout
    rotations = level_rotations(layout.n_levels, d).to(x.dtype)
    out = []
    for level in range(layout.n_levels):
        y = (x.clamp(0, 1) - 0.5) @ rotations[level].T / math.sqrt(d) + 0.5
        rows = grid.table[layout.offsets[level]:layout.offsets[level + 1]]
        out.append(reference_encode(y, rows, layout.level(level)))
    return torch.cat(out, dim=-1)


def test_rotations_are_rotations_and_the_layout_keeps_cell_sizes():
    r = level_rotations(5, 3)
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3))
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(5, dtype=torch.float64))
    assert not torch.allclose(r[0], r[1])
    grid = Encoding(3, ROTATED)
    plain = Encoding(3, {**ROTATED, "rotate_levels": False})
    assert grid.layout.resolutions == tuple(math.ceil(math.sqrt(3) * n) for n in plain.layout.resolutions)
    assert "level_rotations" in grid.state_dict() and "level_rotations" not in plain.state_dict()
    with pytest.raises(ConfigError, match="rotate_levels"):
        Encoding(1, ROTATED)
    with pytest.raises(ConfigError, match="rotate_levels"):
        Encoding(3, {**ROTATED, "rotate_levels": "yes"})


@pytest.mark.parametrize("backend", _backends())
def test_rotated_levels_match_the_definition(backend, monkeypatch):
    monkeypatch.setenv("NGP_BACKEND", backend)
    if backend == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    grid = Encoding(3, ROTATED)
    with torch.no_grad():
        grid.table.normal_()
    x = torch.rand(64, 3) * 1.2 - 0.1  # some points outside the cube: clamped
    out = grid(x)
    torch.testing.assert_close(out, rotated_reference(x, grid), atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    expected_table = grid.table.grad.clone()
    grid.table.grad = None
    (rotated_reference(x, grid) * weights).sum().backward()
    torch.testing.assert_close(expected_table, grid.table.grad, atol=1e-5, rtol=1e-5)


def test_rotated_levels_gradcheck():
    torch.manual_seed(0)
    grid = Encoding(2, {**ROTATED, "log2_hashmap_size": 6}).double()
    x = (torch.rand(6, 2, dtype=torch.float64) * 0.8 + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, t: grid.__class__.forward(grid, x), (x, grid.table))


def test_collisions_counted_by_hand():
    # 2D, one dense level (5^2 = 25 <= 32) and one hashed (9^2 = 81 > 32 rows)
    layout = GridLayout.create(2, n_levels=2, n_features=2, log2_hashmap_size=5, base_resolution=4, per_level_scale=2.0)
    assert layout.hashed == (False, True)
    points = torch.rand(300, 2, generator=torch.Generator().manual_seed(1))
    stats = collision_statistics(layout, points)
    for level, s in enumerate(stats):
        res = layout.resolutions[level]
        cells = torch.floor(points * res).clamp(max=res - 1).long()
        vertices = {(int(i) + a, int(j) + b) for i, j in cells.tolist() for a in (0, 1) for b in (0, 1)}
        rows = corner_indices(torch.tensor(sorted(vertices)), level, layout).tolist()
        shared = sum(1 for r in rows if rows.count(r) > 1)
        assert (s.occupied_vertices, s.rows_used, s.colliding_vertices) == (len(vertices), len(set(rows)), shared)
        assert s.collision_rate == shared / len(vertices)
    assert stats[0].colliding_vertices == 0 and stats[0].random_hash_rate == 0
    assert stats[1].colliding_vertices > 0  # 81 vertices in 32 rows
    assert stats[1].random_hash_rate == pytest.approx(1 - (1 - 1 / 32) ** (stats[1].occupied_vertices - 1))
    assert "share a row" in format_collisions(stats)


def test_occupied_vertices_of_one_point():
    layout = GridLayout.create(3, n_levels=1, n_features=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=2.0)
    vertices = occupied_vertices(torch.tensor([[0.3, 0.6, 1.0]]), layout, 0)
    cell = torch.tensor([1, 2, 3])  # x = 1 lies in the last cell, as in the kernels
    assert {tuple(v) for v in vertices.tolist()} == {tuple((cell + torch.tensor([a, b, c])).tolist())
                                                     for a in (0, 1) for b in (0, 1) for c in (0, 1)}


def test_collision_statistics_refuse_bad_points():
    layout = GridLayout.create(2, 2, 2, 5, 4, 2.0)
    with pytest.raises(ValueError, match="shape"):
        collision_statistics(layout, torch.rand(4, 3))
    with pytest.raises(ValueError, match="no points"):
        collision_statistics(layout, torch.rand(0, 2))
    with pytest.raises(ValueError, match="NaN"):
        collision_statistics(layout, torch.tensor([[0.5, float("nan")]]))
