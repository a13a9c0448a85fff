"""The options against the hash grid's surface microstructure (coarse-to-fine levels, jittered lookups,
eikonal and curvature terms by central differences) and the normal-angle metrics that measure them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from ngp.config import ConfigError
from ngp.encodings import Encoding
from ngp.kernels.reference.hashgrid import hash_grid_encode as reference_encode
from ngp.sdf.metrics import angle_degrees, exact_sdf_mesh, field_normal_angle, mesh_normal_angle
from ngp.sdf.model import NeuralSDF
from ngp.sdf.regularization import (active_levels, check_coarse_to_fine, check_surface_regularization,
                                    finite_difference_points, finite_difference_step, surface_terms)
from ngp.sdf.sampling import MeshSDF
from ngp.sdf.trainer import build_sdf_task, fit_sdf
from ngp.train.settings import build_config

from .conftest import SMALL_CONFIG, small_outputs, write_mesh

GRID = {"otype": "HashGrid", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 10,
        "base_resolution": 4, "per_level_scale": 2.0}


# -- central differences ----------------------------------------------------------------------------
def test_surface_terms_of_known_functions():
    points = torch.rand(200, 3, dtype=torch.float64) * 0.4 + 0.3
    h = 1e-4
    plane = lambda q: 0.6 * q[:, 0] + 0.8 * q[:, 2]  # noqa: E731  unit gradient, no curvature
    eikonal, curvature = surface_terms(plane(points), plane(finite_difference_points(points, h)), h)
    assert float(eikonal) < 1e-12 and float(curvature) < 1e-6
    steep = lambda q: 2.0 * q[:, 1]  # noqa: E731  |grad| = 2 -> (2 - 1)^2
    assert float(surface_terms(steep(points), steep(finite_difference_points(points, h)), h)[0]) == pytest.approx(1.0)
    # a sphere's distance: Laplacian 2 / r
    sphere = lambda q: (q - 0.5).norm(dim=-1) - 0.2  # noqa: E731
    far = points[(points - 0.5).norm(dim=-1) > 0.05]
    _, curvature = surface_terms(sphere(far), sphere(finite_difference_points(far, h)), h)
    assert float(curvature) == pytest.approx(float((2 / (far - 0.5).norm(dim=-1)).mean()), rel=1e-4)


def test_eikonal_by_differences_matches_autograd_on_a_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    f = lambda q: net(q)[:, 0]  # noqa: E731
    points = torch.rand(64, 3, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(f(points).sum(), points)
    expected = (gradient.norm(dim=-1) - 1).square().mean()
    h = 1e-5
    eikonal, _ = surface_terms(f(points), f(finite_difference_points(points.detach(), h)), h)
    assert float(eikonal.detach()) == pytest.approx(float(expected), rel=1e-6)


def test_finite_difference_points_order():
    shifted = finite_difference_points(torch.zeros(2, 3), 0.5).reshape(6, 2, 3)
    expected = torch.tensor([[0.5, 0, 0], [-0.5, 0, 0], [0, 0.5, 0], [0, -0.5, 0], [0, 0, 0.5], [0, 0, -0.5]])
    torch.testing.assert_close(shifted, expected[:, None].expand(6, 2, 3))


def test_schedules():
    section = {"step_start": 4e-3, "step_end": 1e-3, "step_steps": 100}
    assert finite_difference_step(section, 0) == pytest.approx(4e-3)
    assert finite_difference_step(section, 50) == pytest.approx(2e-3)  # geometric
    assert finite_difference_step(section, 100) == finite_difference_step(section, 10**6) == pytest.approx(1e-3)
    assert finite_difference_step({**section, "step_steps": 0}, 0) == pytest.approx(1e-3)
    c2f = {"start_levels": 4, "steps": 120}
    assert active_levels(c2f, 16, 0) == 4 and active_levels(c2f, 16, 60) == 10
    assert active_levels(c2f, 16, 120) is None and active_levels({**c2f, "steps": 0}, 16, 0) is None


def test_bad_sections_name_the_key():
    with pytest.raises(ConfigError, match="'stepz'"):
        check_coarse_to_fine({"stepz": 3})
    with pytest.raises(ConfigError, match="eikonal"):
        check_surface_regularization({"eikonal": -1})
    with pytest.raises(ConfigError, match="must be a JSON object"):
        check_surface_regularization(0.1)
    with pytest.raises(ConfigError, match="'stepz'"):  # before the mesh is read
        build_sdf_task(build_config("sdf", SMALL_CONFIG, {"data": "missing.obj", "coarse_to_fine": {"stepz": 10}}),
                       torch.device("cpu"), "float32")


def test_coarse_to_fine_leaves_encodings_without_grid_levels_whole(tmp_path, box_mesh):
    path = write_mesh(tmp_path / "box.obj", box_mesh)
    config = build_config("sdf", {**SMALL_CONFIG, "encoding": {"otype": "Frequency", "n_frequencies": 4}},
                          {"data": str(path), "coarse_to_fine": {"steps": 10}})
    task = build_sdf_task(config, torch.device("cpu"), "float32")
    assert task.grid is None
    assert torch.isfinite(task.training_batch(0).loss)  # no level to fade: trains whole


# -- the grid's options -----------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["Concatenation", "Sum", "Product"])
def test_active_levels_weight_the_levels(reduction):
    torch.manual_seed(0)
    grid = Encoding(3, {**GRID, "reduction": reduction}).double()
    x = torch.rand(50, 3, dtype=torch.float64)
    per_level = reference_encode(x, grid.table, grid.layout).reshape(50, 4, 2)
    grid.set_active_levels(2.25)
    weights = torch.tensor([1.0, 1.0, 0.25, 0.0], dtype=torch.float64)[:, None]
    neutral = 1.0 if reduction == "Product" else 0.0
    weighted = per_level * weights + neutral * (1 - weights)
    expected = {"Concatenation": weighted.reshape(50, 8), "Sum": weighted.sum(1), "Product": weighted.prod(1)}
    out = grid(x)
    torch.testing.assert_close(out, expected[reduction])
    out.sum().backward()
    finest = slice(grid.layout.offsets[3], grid.layout.offsets[4])
    assert grid.table.grad[finest].abs().max() == 0 and grid.table.grad[: grid.layout.offsets[1]].abs().max() > 0
    grid.set_active_levels(None)
    torch.testing.assert_close(grid(x), {"Concatenation": per_level.reshape(50, 8), "Sum": per_level.sum(1),
                                         "Product": per_level.prod(1)}[reduction])
    with pytest.raises(ValueError, match="positive"):
        grid.set_active_levels(0)


def test_filter_radius_jitters_training_lookups_only():
    torch.manual_seed(0)
    grid = Encoding(3, {**GRID, "filter_radius": 0.5}).double()
    plain = Encoding(3, GRID).double()
    plain.load_state_dict(grid.state_dict())
    x = torch.rand(40, 3, dtype=torch.float64) * 0.8 + 0.1
    grid.eval()
    torch.testing.assert_close(grid(x), plain(x))
    grid.train()
    torch.manual_seed(3)
    jittered = grid(x)
    torch.manual_seed(3)  # the same draw, made by hand: U(-r, r) finest cells per axis
    cell = 1.0 / grid.layout.resolutions[-1]
    offsets = (torch.rand_like(x) * 2 - 1) * 0.5 * cell
    torch.testing.assert_close(jittered, reference_encode(x + offsets, grid.table, grid.layout))
    assert not torch.allclose(jittered, plain(x))
    assert offsets.abs().max() <= 0.5 * cell


def test_coarse_to_fine_survives_the_checkpoint(tmp_path, box_mesh):
    path = write_mesh(tmp_path / "box.obj", box_mesh)
    config = {**SMALL_CONFIG, "training": {**SMALL_CONFIG["training"], "coarse_to_fine": {"start_levels": 2,
                                                                                           "steps": 40}}}
    metrics = fit_sdf(path, tmp_path / "run", steps=10, config=config, progress=False, outputs=small_outputs())
    model = NeuralSDF.from_checkpoint(tmp_path / "run")
    # stopped at step 10 of 40: 2 + (6 - 2) * 9 / 40 levels were active in the last step
    assert model.field.encoding.active_levels == pytest.approx(2 + 4 * 9 / 40)
    assert metrics["iou_grid"] > 0


def test_regularised_fit_lowers_the_eikonal_term(tmp_path, sphere_file):
    def fit(name, weight):
        training = {**SMALL_CONFIG["training"],
                    "surface_regularization": {"eikonal": weight, "points": 1024, "step_start": 0.01, "step_end": 0.01}}
        fit_sdf(sphere_file, tmp_path / name, steps=60, config={**SMALL_CONFIG, "training": training}, seed=0,
                progress=False, outputs=small_outputs())
        from ngp.io.checkpoints import load_checkpoint

        return load_checkpoint(tmp_path / name)[1]["loop"]["history"]["eikonal"]

    free, regularised = fit("free", 1e-9), fit("regularised", 1.0)  # a negligible weight still records the term
    assert len(free) == len(regularised) == 60
    assert np.mean(regularised[-10:]) < 0.5 * np.mean(free[-10:])


# -- the metrics ------------------------------------------------------------------------------------
def tilted_square(degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """A unit square in the plane z = 0.5 rotated about the x axis by ``degrees``, normal ~ +z."""
    a = math.radians(degrees)
    corners = np.array([[-0.4, -0.4, 0], [0.4, -0.4, 0], [0.4, 0.4, 0], [-0.4, 0.4, 0]])
    rotation = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    return corners @ rotation.T + 0.5, np.array([[0, 1, 2], [0, 2, 3]])


def test_mesh_normal_angle():
    flat = tilted_square(0)
    assert mesh_normal_angle(*flat, *flat, 2000) == pytest.approx(0.0, abs=1e-6)
    assert mesh_normal_angle(*tilted_square(7.0), *flat, 2000) == pytest.approx(7.0, abs=1e-6)
    flipped = (flat[0], flat[1][:, ::-1])
    assert mesh_normal_angle(*flipped, *flat, 2000) == pytest.approx(180.0)
    assert math.isnan(mesh_normal_angle(flat[0], np.zeros((0, 3), int), *flat))
    assert angle_degrees(np.array([[1.0, 0, 0]]), np.array([[0.0, 0, 0]]))[0] == 90.0


def test_field_normal_angle_and_the_exact_floor():
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    mesh.apply_translation([0.5] * 3)

    class Sphere(torch.nn.Module):  # the exact SDF's gradient, or one tilted towards +x
        def __init__(self, tilt=0.0):
            super().__init__()
            self.tilt = tilt

        def gradient(self, x, unit=True):
            n = torch.nn.functional.normalize(x - 0.5, dim=-1)
            return n + self.tilt * torch.nn.functional.normalize(torch.cross(n, torch.tensor([[0.0, 0, 1]]).expand_as(n), dim=-1), dim=-1)

    # the icosphere's flat faces differ from the round sphere by about a degree
    exact = field_normal_angle(Sphere(), mesh.vertices, mesh.faces, 4000)
    assert 0 < exact < 2
    tilted = field_normal_angle(Sphere(math.tan(math.radians(10))), mesh.vertices, mesh.faces, 4000)
    assert tilted == pytest.approx(10, abs=2)
    gt = MeshSDF(mesh.vertices, mesh.faces)
    box = np.array([[0.15] * 3, [0.85] * 3])
    coarse, fine = exact_sdf_mesh(gt, box, 12), exact_sdf_mesh(gt, box, 40)
    angles = [mesh_normal_angle(*m, mesh.vertices, mesh.faces, 4000) for m in (coarse, fine)]
    assert angles[1] < angles[0]  # the floor falls with the resolution


def test_collisions_of_an_sdf_run(tmp_path, sphere_file):
    import json

    from typer.testing import CliRunner

    from ngp.cli import app

    fit_sdf(sphere_file, tmp_path / "run", steps=2, config=SMALL_CONFIG, progress=False, outputs=small_outputs())
    out = tmp_path / "collisions.json"
    result = CliRunner().invoke(app, ["collisions", str(tmp_path / "run"), "--points", "50000", "--json", str(out)])
    assert result.exit_code == 0, result.output
    levels = json.loads(out.read_text())["levels"]
    assert [s["hashed"] for s in levels] == [False, False, False, True, True, True]  # (8 * 1.5^l + 1)^3 > 2^14
    assert all(s["colliding_vertices"] == 0 for s in levels[:3])
    # finer levels occupy more vertices (a surface: ~ resolution^2), and the finest shares rows
    occupied = [s["occupied_vertices"] for s in levels]
    assert occupied == sorted(occupied) and levels[-1]["colliding_vertices"] > 0
    assert CliRunner().invoke(app, ["collisions", str(tmp_path / "nothing")]).exit_code != 0


def test_a_config_from_before_the_options_keeps_them_off():
    # a checkpoint's config written before these sections existed: its run resumes as it trained
    from ngp.sdf.trainer import check_training

    old = {k: v for k, v in build_config("sdf", SMALL_CONFIG)["training"].items()
           if k not in ("coarse_to_fine", "surface_regularization")}
    checked = check_training(old)
    assert checked["coarse_to_fine"]["steps"] == 0
    assert checked["surface_regularization"]["eikonal"] == checked["surface_regularization"]["curvature"] == 0
    new = check_training(build_config("sdf", SMALL_CONFIG)["training"])  # while a new run gets the defaults
    assert new["coarse_to_fine"]["steps"] > 0 and new["surface_regularization"]["eikonal"] > 0
