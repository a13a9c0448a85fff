"""End to end: fitting analytic meshes, the run folder, and the `ngp sdf` command line."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ngp.cli import app
from ngp.io.meshes import Mesh, load_mesh
from ngp.sdf.metrics import grid_iou
from ngp.sdf.model import NeuralSDF
from ngp.sdf.trainer import SDFTrainer

from .conftest import SMALL_CONFIG, write_mesh

RUN_FILES = {"mesh.ply", "render.png", "loss.png", "metrics.json", "config.json", "checkpoint"}


def test_fit_box_reaches_iou_in_fixed_steps(box_mesh):
    trainer = SDFTrainer(Mesh(box_mesh.vertices, box_mesh.faces), SMALL_CONFIG, seed=0)
    with trainer.optimizer.averaged_weights():
        before = grid_iou(trainer.model, trainer.gt, 48)
    trainer.train(steps=60, progress=False)
    assert trainer.n_steps == 60 and len(trainer.history) == 60
    assert trainer.history[-1][1] < 0.5 * trainer.history[0][1]
    with trainer.optimizer.averaged_weights():
        after = grid_iou(trainer.model, trainer.gt, 48)
    assert before < 0.5 < 0.93 < after


def test_fit_in_float16_mixed_precision(box_mesh):
    # the GPU default (autocast + loss scaling), run on the CPU
    trainer = SDFTrainer(Mesh(box_mesh.vertices, box_mesh.faces), SMALL_CONFIG, seed=0, device="cpu",
                         precision="float16")
    trainer.train(steps=60, progress=False)
    assert trainer.amp.precision == "float16" and trainer.amp.skipped_steps < 5
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    with trainer.optimizer.averaged_weights():
        assert grid_iou(trainer.model, trainer.gt, 48) > 0.9


def test_fit_is_reproducible(box_mesh):
    losses = []
    for _ in range(2):
        trainer = SDFTrainer(Mesh(box_mesh.vertices, box_mesh.faces), SMALL_CONFIG, seed=7)
        trainer.train(steps=3, progress=False)
        losses.append([h[1] for h in trainer.history])
    assert losses[0] == losses[1]


def test_cli_round_trip(tmp_path, sphere_mesh):
    mesh_path = write_mesh(tmp_path / "sphere.stl", sphere_mesh)
    config = tmp_path / "small.json"
    config.write_text(json.dumps(SMALL_CONFIG))
    run = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, ["sdf", "fit", str(mesh_path), "--out", str(run), "--steps", "40", "--config",
                                 str(config), "--resolution", "48", "--render-width", "40", "--render-height", "32",
                                 "--iou-resolution", "48", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "IoU" in result.output and "Chamfer" in result.output
    assert {p.name for p in run.iterdir()} == RUN_FILES
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["iou_grid"] > 0.6 and metrics["chamfer_mesh_units"] > 0
    assert metrics["iou_grid_resolution"] == 48
    assert metrics["chamfer_mesh_units"] == pytest.approx(metrics["chamfer_unit_cube"] * (2 + 0.01 * 12**0.5), rel=1e-6)
    assert iio.imread(run / "render.png").shape == (32, 40, 3)
    assert iio.imread(run / "loss.png").ndim == 3
    fitted = load_mesh(run / "mesh.ply")  # in the input's units: overlays the sphere at (1, 2, 3)
    np.testing.assert_allclose(fitted.vertices.mean(0), [1.0, 2.0, 3.0], atol=0.1)
    sdf = NeuralSDF.from_checkpoint(run)
    with torch.no_grad():
        d = sdf(torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 5.0]]))
    assert d[0] < 0 < d[1]

    out_png = tmp_path / "views" / "side.png"
    result = runner.invoke(app, ["sdf", "render", str(run), "--out", str(out_png), "--width", "24", "--height", "16",
                                 "--azimuth", "90", "--elevation", "30", "--mode", "normals"])
    assert result.exit_code == 0, result.output
    assert iio.imread(out_png).shape == (16, 24, 3)
    out_mesh = tmp_path / "coarse.obj"
    result = runner.invoke(app, ["sdf", "mesh", str(run), "--out", str(out_mesh), "--resolution", "24"])
    assert result.exit_code == 0, result.output
    assert 0 < len(load_mesh(out_mesh).faces) < metrics["mesh_faces"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        (None, None, "not found"),
        ("empty.obj", "", "empty"),
        ("points.ply", "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                       "end_header\n0 0 0\n1 0 0\n0 1 0\n", "no faces"),
        ("nan.obj", "v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n", "NaN"),
        ("mesh.dae", "<COLLADA/>", "unsupported mesh format"),
    ],
)
def test_cli_bad_mesh_fails_cleanly(tmp_path, name, content, message):
    path = tmp_path / (name or "missing.obj")
    if content is not None:
        path.write_text(content)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["sdf", "fit", str(path), "--out", str(run), "--steps", "1"])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not run.exists()  # nothing written


def test_cli_bad_arguments(tmp_path, box_mesh):
    mesh_path = write_mesh(tmp_path / "box.obj", box_mesh)
    runner = CliRunner()
    bad_config = tmp_path / "bad.json"
    bad_config.write_text('{"encoding": {"otype": "HashGrid", "n_levls": 4}}')
    result = runner.invoke(app, ["sdf", "fit", str(mesh_path), "--out", str(tmp_path / "run"), "--config", str(bad_config)])
    assert result.exit_code == 1 and "n_levls" in result.output
    assert not (tmp_path / "run").exists()
    result = runner.invoke(app, ["sdf", "render", str(tmp_path / "nope"), "--out", str(tmp_path / "x" / "a.png")])
    assert result.exit_code == 1 and "not found" in result.output
    assert not (tmp_path / "x").exists()
    result = runner.invoke(app, ["sdf", "mesh", str(tmp_path), "--out", str(tmp_path / "a.xyz")])
    assert result.exit_code == 1 and "--out" in result.output
