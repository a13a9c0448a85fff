"""Marching cubes, sphere tracing and metrics on an analytic SDF with known answers."""

from __future__ import annotations

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from ngp.geometry.grids import grid_shape
from ngp.io.meshes import MeshNormalization
from ngp.sdf.extract import extract_mesh
from ngp.sdf.metrics import chamfer_distance, grid_iou, iou, near_surface_agreement
from ngp.sdf.render import framing_camera, render_sdf, surface_normals, write_png
from ngp.sdf.sampling import MeshSDF, SampleGenerator


class AnalyticSphere(torch.nn.Module):
    """Stands in for NeuralSDF: a sphere of ``radius`` at the cube's centre, normalisation (c, s)."""

    def __init__(self, radius=0.3, normalization=MeshNormalization((0.5, 0.5, 0.5), 1.0)):
        super().__init__()
        self.radius, self.normalization = radius, normalization
        self.register_buffer("aabb", torch.tensor([[0.1] * 3, [0.9] * 3]))

    def unit_sdf(self, x):
        return (x - 0.5).norm(dim=-1) - self.radius

    def gradient(self, x, unit=True):
        return torch.nn.functional.normalize(x - 0.5, dim=-1)


def test_marching_cubes_recovers_the_sphere_in_mesh_units():
    norm = MeshNormalization((10.0, 0.0, -5.0), 4.0)
    vertices, faces = extract_mesh(AnalyticSphere(0.3, norm), resolution=96)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight
    radius = 0.3 * 4.0
    np.testing.assert_allclose(np.linalg.norm(vertices - [10.0, 0.0, -5.0], axis=1), radius, atol=2e-3 * radius)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.01)  # > 0: faces point outwards


def test_grid_shape_keeps_voxels_cubic():
    assert grid_shape(np.zeros(3), np.array([1.0, 0.5, 0.25]), 128) == (128, 64, 32)
    with pytest.raises(ValueError):
        grid_shape(np.zeros(3), np.ones(3), 1)


def test_iou_definition():
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 1, 0, 1], bool)
    assert iou(a, b) == pytest.approx(2 / 4)
    assert iou(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    with pytest.raises(ValueError):
        iou(a, b[:3])


@pytest.fixture(scope="module")
def sphere_gt():
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=0.3)
    mesh.apply_translation([0.5, 0.5, 0.5])
    return mesh, MeshSDF(mesh.vertices, mesh.faces)


def test_metrics_on_known_shapes(sphere_gt):
    mesh, gt = sphere_gt
    assert grid_iou(AnalyticSphere(0.3), gt, resolution=64) > 0.995
    # a sphere of radius 0.27 inside one of 0.3: IoU = (0.27 / 0.3)^3 up to tessellation
    assert grid_iou(AnalyticSphere(0.27), gt, resolution=64) == pytest.approx(0.9**3, abs=0.01)
    gen = SampleGenerator(gt, np.array([[0.1] * 3, [0.9] * 3]), np.random.default_rng(0))
    near = near_surface_agreement(AnalyticSphere(0.3), gen, n=20000)
    assert near["sign_accuracy"] > 0.96  # the inscribed icosphere sags ~2e-5 inside the sphere; sigma is 8.5e-4
    assert near_surface_agreement(AnalyticSphere(0.29), gen, n=20000)["sign_accuracy"] < 0.6
    # Chamfer distance: ~0 against itself, ~2 * 0.02 against a sphere 0.02 larger
    assert chamfer_distance(mesh.vertices, mesh.faces, mesh.vertices, mesh.faces, 5000) < 1e-9
    bigger = mesh.copy()
    bigger.apply_translation([-0.5] * 3)
    bigger.apply_scale(0.32 / 0.3)
    bigger.apply_translation([0.5] * 3)
    assert chamfer_distance(bigger.vertices, bigger.faces, mesh.vertices, mesh.faces, 5000) == pytest.approx(0.04, rel=0.03)
    assert chamfer_distance(mesh.vertices, np.zeros((0, 3), int), mesh.vertices, mesh.faces) == float("inf")


def test_normals_by_differences_and_gradient_agree():
    sdf = AnalyticSphere(0.3)
    points = 0.5 + 0.3 * torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    expected = torch.nn.functional.normalize(points - 0.5, dim=-1)
    torch.testing.assert_close(surface_normals(sdf, points), expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(surface_normals(sdf, points, "gradient"), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="normals"):
        surface_normals(sdf, points, "magic")


def test_render_sphere(tmp_path):
    sdf = AnalyticSphere(0.3)
    image = render_sdf(sdf, width=64, height=48, azimuth=0, elevation=0)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert (image[0, 0] == 255).all() and (image[-1, -1] == 255).all()  # background in the corners
    assert (image[24, 32] < 250).any()  # the sphere in the centre
    # the sphere's silhouette: pixels within its projected radius are hit, others not
    normals = render_sdf(sdf, width=64, height=48, azimuth=0, elevation=0, mode="normals")
    centre = normals[24, 32].astype(float) / 255
    np.testing.assert_allclose(centre, [0.5, 0.5, 1.0], atol=0.05)  # faces the camera on +z
    hit = (normals != 255).any(-1)
    camera = framing_camera(sdf, 64, 48, azimuth=0, elevation=0, fov_degrees=35)
    distance = np.linalg.norm(camera.centers[0].numpy() - 0.5)
    projected = float(camera.fx[0]) * 0.3 / np.sqrt(distance**2 - 0.3**2)
    assert hit.sum() == pytest.approx(math.pi * projected**2, rel=0.05)
    assert 2 * projected == pytest.approx(48 / 1.1, rel=0.08)  # framed to fill the image's height
    path = write_png(tmp_path / "r.png", image)
    np.testing.assert_array_equal(iio.imread(path), image)
    with pytest.raises(ValueError, match="png"):
        write_png(tmp_path / "r.jpg", image)
    with pytest.raises(ValueError, match="mode"):
        render_sdf(sdf, 8, 8, mode="depth")
