"""Functions on grids and marching cubes, on analytic shapes with known answers; the SDF and NeRF
meshers on top of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from ngp.geometry.grids import evaluate_chunked, evaluate_grid, grid_points, grid_shape, marching_cubes

LO, HI = np.array([-1.0, 0.0, 2.0]), np.array([1.0, 1.5, 3.0])
CENTRE, RADIUS = np.array([0.0, 0.75, 2.5]), 0.4


def sphere_sdf(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.as_tensor(CENTRE, dtype=x.dtype)).norm(dim=-1) - RADIUS


def test_evaluate_grid_is_fn_on_grid_points_in_bounded_chunks():
    shape = grid_shape(LO, HI, 20)
    assert shape == (20, 15, 10)
    sizes = []

    def fn(x):
        sizes.append(len(x))
        return sphere_sdf(x)

    # chunk below one x-slice (150 points): slabs of one slice, each split into chunks of <= 64
    values = evaluate_grid(fn, LO, HI, shape, chunk=64)
    assert values.shape == shape and values.dtype == np.float32 and max(sizes) <= 64
    expected = sphere_sdf(grid_points(LO, HI, shape)).reshape(shape).numpy()
    np.testing.assert_array_equal(values, expected)
    # vertices: lo + (hi - lo) i / (n - 1), x slowest
    points = grid_points(LO, HI, shape).reshape(*shape, 3)
    torch.testing.assert_close(points[0, 0, 0], torch.tensor(LO, dtype=torch.float32))
    torch.testing.assert_close(points[-1, -1, -1], torch.tensor(HI, dtype=torch.float32))
    torch.testing.assert_close(points[1, 0, 0, 0], torch.tensor(-1.0 + 2.0 / 19))
    # several slices per slab give the same values
    np.testing.assert_array_equal(evaluate_grid(sphere_sdf, LO, HI, shape, chunk=1000), expected)


def test_evaluate_rejects_bad_shapes():
    with pytest.raises(ValueError, match="grid shape"):
        evaluate_grid(sphere_sdf, LO, HI, (10, 1, 10))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        evaluate_chunked(sphere_sdf, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="resolution"):
        grid_shape(LO, HI, 1)


@pytest.mark.parametrize("inside", ["below", "above"])
def test_marching_cubes_in_box_coordinates_pointing_out(inside):
    values = evaluate_grid(sphere_sdf, LO, HI, grid_shape(LO, HI, 64))
    if inside == "above":
        values = 3.0 - values  # a "density": high inside, level 3
    vertices, faces, normals = marching_cubes(values, LO, HI, level=0.0 if inside == "below" else 3.0, inside=inside)
    radial = vertices - CENTRE
    np.testing.assert_allclose(np.linalg.norm(radial, axis=1), RADIUS, atol=2e-3)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * RADIUS**3, rel=0.02)  # > 0: faces point out
    cosine = (normals * radial).sum(1) / np.linalg.norm(radial, axis=1)
    assert cosine.min() > 0.98  # vertex normals point out too
    assert faces.dtype == np.int64 and vertices.dtype == np.float64


def test_marching_cubes_without_a_surface_is_empty():
    values = np.random.default_rng(0).uniform(1.0, 2.0, (4, 5, 6)).astype(np.float32)
    for level in (0.5, 2.5):
        vertices, faces, normals = marching_cubes(values, LO, HI, level=level)
        assert vertices.shape == (0, 3) and faces.shape == (0, 3) and normals.shape == (0, 3)
    values[0, 0, 0] = np.nan
    assert len(marching_cubes(values, LO, HI, level=1.5).faces) == 0
    with pytest.raises(ValueError, match="inside"):
        marching_cubes(values, LO, HI, inside="outside")
    with pytest.raises(ValueError, match=r"\[X, Y, Z\]"):
        marching_cubes(values[0], LO, HI)


# ----------------------------------------------------------------------------------------------------
# The two users
# ----------------------------------------------------------------------------------------------------


class UnitSphereSDF(torch.nn.Module):
    """Stands in for NeuralSDF: a sphere of radius 0.3 at the unit cube's centre."""

    def __init__(self, normalization):
        super().__init__()
        self.normalization = normalization
        self.register_buffer("aabb", torch.tensor([[0.1, 0.15, 0.1], [0.9, 0.9, 0.85]]))

    def unit_sdf(self, x):
        return (x - 0.5).norm(dim=-1) - 0.3


def test_sdf_extract_mesh_in_mesh_units():
    from ngp.io.meshes import MeshNormalization
    from ngp.sdf.extract import extract_mesh

    norm = MeshNormalization((10.0, 0.0, -5.0), 4.0)
    vertices, faces = extract_mesh(UnitSphereSDF(norm), resolution=64)
    np.testing.assert_allclose(np.linalg.norm(vertices - [10.0, 0.0, -5.0], axis=1), 1.2, atol=5e-3)
    assert trimesh.Trimesh(vertices, faces, process=False).volume > 0
    unit_vertices, unit_faces = extract_mesh(UnitSphereSDF(norm), resolution=64, unit=True)
    np.testing.assert_allclose(np.linalg.norm(unit_vertices - 0.5, axis=1), 0.3, atol=2e-3)
    np.testing.assert_array_equal(unit_faces, faces)


def test_nerf_extract_mesh_density_ball():
    from ngp.nerf.field import NerfField
    from ngp.nerf.mesh import extract_mesh

    field = NerfField(aabb=torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
    field.density = lambda p: 10.0 * torch.relu(0.35 - (p - 0.5).norm(dim=-1))  # 2.5 on a radius-0.1 sphere
    mesh = extract_mesh(field, resolution=40, threshold=2.5, progress=False, ngp_frame=True)
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices - 0.5, axis=1), 0.1, atol=3e-3)
    assert mesh.volume > 0  # faces point out of the dense ball
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    # the data set's frame: ngp (x, y, z) = scale * data (y, z, x) + offset
    data = extract_mesh(field, resolution=40, threshold=2.5, scale=0.5, offset=(0.5, 0.5, 0.5), progress=False)
    np.testing.assert_allclose(data.vertices, (mesh.vertices[:, [2, 0, 1]] - 0.5) / 0.5)
    with pytest.raises(ValueError, match="no surface at density threshold"):
        extract_mesh(field, resolution=8, threshold=100.0, progress=False)
