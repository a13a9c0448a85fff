"""Ground truth and training samples against closed-form SDFs (sphere, box); signs on open meshes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from ngp.sdf.sampling import BOUNDING_RADIUS, MeshSDF, SampleCounts, SampleGenerator, SamplePool, mesh_aabb

from .conftest import box_sdf, shared_file


def sphere_sdf(points, centre, radius):
    return np.linalg.norm(points - centre, axis=-1) - radius


@pytest.fixture
def unit_sphere():
    """An icosphere of radius 0.3 at the unit cube's centre (already normalised)."""
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=0.3)
    mesh.apply_translation([0.5, 0.5, 0.5])
    return mesh


def test_counts_follow_instant_ngp():
    assert SampleCounts.of(2**16) == SampleCounts(2**15, 3 * 2**13, 2**13)
    c = SampleCounts.of(1003)  # remainders go to the uniform samples
    assert (c.surface, c.near, c.uniform) == (500, 375, 128)


def test_box_ground_truth_is_exact(box_mesh):
    gt = MeshSDF(box_mesh.vertices, box_mesh.faces)
    points = np.random.default_rng(0).uniform(-1.5, 1.5, (5000, 3))
    np.testing.assert_allclose(gt(points), box_sdf(points, np.array([1.0, 0.5, 0.5])), atol=1e-9)


def test_sphere_ground_truth_matches_closed_form(unit_sphere):
    gt = MeshSDF(unit_sphere.vertices, unit_sphere.faces)
    points = np.random.default_rng(1).uniform(0, 1, (5000, 3))
    expected = sphere_sdf(points, 0.5, 0.3)
    # the icosphere is inscribed: its faces lie at most r (1 - cos(edge angle)) inside the sphere
    np.testing.assert_allclose(gt(points), expected, atol=1e-3)
    far = np.abs(expected) > 2e-3
    assert (np.sign(gt(points)[far]) == np.sign(expected[far])).all()


def test_generated_samples_proportions_and_distances(unit_sphere):
    aabb = mesh_aabb(unit_sphere.vertices)
    gen = SampleGenerator(MeshSDF(unit_sphere.vertices, unit_sphere.faces), aabb, np.random.default_rng(2))
    n = 2**15
    points, distances = gen.generate(n)
    counts = SampleCounts.of(n)
    assert points.shape == (n, 3) and distances.shape == (n,)
    surface = points[: counts.surface]
    near = slice(counts.surface, counts.surface + counts.near)
    uniform = points[counts.surface + counts.near :]
    assert (distances[: counts.surface] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(surface - 0.5, axis=1), 0.3, atol=2e-4)  # on the faces
    # near-surface noise: per-axis std sigma = sqrt(3)/2/1024, so the distance along the normal has std sigma
    sigma = BOUNDING_RADIUS / 1024
    assert gen.sigma == pytest.approx(math.sqrt(3) / 2 / 1024)
    assert np.std(distances[near]) == pytest.approx(sigma, rel=0.08)
    assert abs(np.mean(distances[near])) < 0.1 * sigma
    np.testing.assert_allclose(distances[near], sphere_sdf(points[near], 0.5, 0.3), atol=2e-4)
    # uniform samples fill the mesh's bounding box
    assert (uniform >= aabb[0]).all() and (uniform <= aabb[1]).all()
    assert np.ptp(uniform, axis=0) == pytest.approx(aabb[1] - aabb[0], rel=0.05)
    np.testing.assert_allclose(distances[counts.surface + counts.near :], sphere_sdf(uniform, 0.5, 0.3), atol=1e-3)


def test_sample_pool_batches_and_refresh(box_mesh):
    gt = MeshSDF(box_mesh.vertices, box_mesh.faces)
    gen = SampleGenerator(gt, np.array([[-1.1, -0.6, -0.6], [1.1, 0.6, 0.6]]), np.random.default_rng(3))
    pool = SamplePool(gen, size=4000, refresh=400)
    assert (pool.n_near, pool.n_uniform) == (3000, 1000)
    before = pool.points.copy()
    points, distances = pool.batch(800)
    assert points.shape == (800, 3) and distances.shape == (800,)
    assert str(points.dtype) == "torch.float32"
    np.testing.assert_allclose(distances.numpy(), box_sdf(points.numpy().astype(np.float64), np.array([1.0, 0.5, 0.5])),
                               atol=1e-5)
    changed = (pool.points != before).any(1)
    assert changed[:3000].sum() == 300 and changed[3000:].sum() == 100  # 3:1 like the pool
    np.testing.assert_allclose(pool.distances, box_sdf(pool.points.astype(np.float64), np.array([1.0, 0.5, 0.5])), atol=1e-5)


def test_sample_pool_state_continues_the_same_batches(box_mesh):
    gt = MeshSDF(box_mesh.vertices, box_mesh.faces)
    aabb = np.array([[-1.1, -0.6, -0.6], [1.1, 0.6, 0.6]])
    pool = SamplePool(SampleGenerator(gt, aabb, np.random.default_rng(3)), size=800, refresh=100)
    pool.batch(64)
    tensors, cursors = pool.state()
    rng_state = pool.generator.rng.bit_generator.state
    assert tensors["points"].shape == (800, 3) and cursors == {"next_near": 75, "next_uniform": 25}
    expected = [pool.batch(64) for _ in range(3)]
    rng = np.random.default_rng(99)
    rng.bit_generator.state = rng_state
    restored = SamplePool.from_state(SampleGenerator(gt, aabb, rng), 100, tensors, cursors)
    for (points, distances), (points2, distances2) in zip(expected, (restored.batch(64) for _ in range(3))):
        assert torch.equal(points, points2) and torch.equal(distances, distances2)
    with pytest.raises(ValueError, match="saved sample pool"):
        bad = {"points": tensors["points"][:, :2], "distances": tensors["distances"]}
        SamplePool.from_state(pool.generator, 100, bad, cursors)


def test_open_box_sign_follows_winding_number(box_mesh):
    """A box with its +x face removed: libigl's winding number closes the hole with its smoothest
    spanning surface, so the sign is that of the closed box, while distances are to the remaining faces."""
    keep = ~np.isclose(box_mesh.triangles_center[:, 0], 1.0)
    assert keep.sum() == 10
    gt = MeshSDF(box_mesh.vertices, box_mesh.faces[keep])
    inside = np.array([[0.0, 0.0, 0.0], [0.5, 0.2, -0.2], [-0.9, 0.4, 0.4], [0.8, 0.0, 0.0]])
    outside = np.array([[1.5, 0.0, 0.0], [1.2, 0.3, 0.3], [0.0, 0.8, 0.0], [-1.3, 0.0, 0.0]])
    assert (gt(inside) < 0).all() and (gt(outside) > 0).all()
    # winding number at the centre = 1 - (solid angle of the missing 1x1 face at distance 1) / 4 pi
    missing = 4 * math.asin(0.25 / 1.25) / (4 * math.pi)
    np.testing.assert_allclose(gt.winding_number(np.array([[0.0, 0.0, 0.0]])), 1 - missing, atol=1e-3)
    # at the centre of the hole the distance is to the side walls, not 0 as for the closed box
    assert abs(gt(np.array([[1.0, 0.0, 0.0]]))[0]) == pytest.approx(0.5)


def test_ground_truth_rejects_bad_points(box_mesh):
    gt = MeshSDF(box_mesh.vertices, box_mesh.faces)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        gt(np.zeros((4, 2)))
    assert gt(np.zeros((0, 3))).shape == (0,)


def test_bunny_signs_match_exact_winding_number():
    """The bunny has holes: fast winding numbers (with exact fallback) must agree with the exact ones."""
    import igl

    from ngp.io.meshes import load_mesh, normalize_mesh

    mesh, _ = normalize_mesh(load_mesh(shared_file("sdf/bunny.obj")))
    gt = MeshSDF(mesh.vertices, mesh.faces)
    gen = SampleGenerator(gt, mesh_aabb(mesh.vertices), np.random.default_rng(4))
    points = np.concatenate([gen.near_points(1500), gen.uniform_points(500)])
    exact = igl.winding_number(gt.vertices, gt.faces, points) > 0.5
    assert (gt.inside(points) == exact).all()
