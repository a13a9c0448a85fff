"""NeuralSDF: units, input gradients through the encoding vs finite differences, checkpoints, configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ngp.config import ConfigError, load_config
from ngp.io.checkpoints import CheckpointError, save_checkpoint
from ngp.io.meshes import MeshNormalization
from ngp.io.runs import RunFolder
from ngp.sdf.model import NeuralSDF
from ngp.sdf.trainer import build_sdf_task
from ngp.train.loop import train
from ngp.train.settings import LoopSettings, build_config, default_config

from .conftest import SMALL_CONFIG, small_outputs

REPO = Path(__file__).parents[2]

#: instant-ngp's configs/sdf/base.json, verbatim (tabs included): it must load as it is.
INSTANT_NGP_BASE_JSON = """{
\t"loss": {
\t\t"otype": "MAPE"
\t},
\t"optimizer": {
\t\t"otype": "Ema",
\t\t"decay": 0.95,
\t\t"nested": {
\t\t\t"otype": "ExponentialDecay",
\t\t\t"decay_start": 10000,
\t\t\t"decay_interval": 5000,
\t\t\t"decay_base": 0.33,
\t\t\t"nested": {
\t\t\t\t"otype": "Adam",
\t\t\t\t"learning_rate": 1e-4,
\t\t\t\t"beta1": 0.9,
\t\t\t\t"beta2": 0.99,
\t\t\t\t"epsilon": 1e-15,
\t\t\t\t"l2_reg": 1e-6
\t\t\t}
\t\t}
\t},
\t"encoding": {
\t\t"otype": "HashGrid",
\t\t"n_levels": 16,
\t\t"n_features_per_level": 2,
\t\t"log2_hashmap_size": 19,
\t\t"base_resolution": 16
\t},
\t"network": {
\t\t"otype": "FullyFusedMLP",
\t\t"activation": "ReLU",
\t\t"output_activation": "None",
\t\t"n_neurons": 64,
\t\t"n_hidden_layers": 2
\t}
}
"""


def small_model(normalization=None, dtype=torch.float32, seed=0) -> NeuralSDF:
    torch.manual_seed(seed)
    model = NeuralSDF(SMALL_CONFIG["encoding"], SMALL_CONFIG["network"], normalization).to(dtype)
    with torch.no_grad():  # non-trivial features, so that the gradient is dominated by the encoding
        model.field.encoding.table.uniform_(-1.0, 1.0)
    return model


def test_gradient_matches_finite_differences():
    model = small_model(dtype=torch.float64)
    x = torch.rand(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.9 + 0.05
    grad = model.gradient(x, unit=True)
    h = 1e-6  # far below the finest cell (1/27), so the trilinear pieces are smooth between x +- h
    fd = torch.stack([
        (model(x + h * e, unit=True) - model(x - h * e, unit=True)) / (2 * h) for e in torch.eye(3, dtype=torch.float64)
    ], dim=-1).detach()
    assert grad.shape == (64, 3)
    assert grad.abs().max() > 1e-2  # the test can fail: the gradient is not trivially zero
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-6)


def test_mesh_units_and_unit_cube_agree():
    norm = MeshNormalization((1.0, -2.0, 3.0), 4.0)
    model = small_model(norm)
    unit = torch.rand(100, 3)
    mesh_points = norm.to_mesh(unit)
    with torch.no_grad():
        torch.testing.assert_close(model(mesh_points), model(unit, unit=True) * 4.0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.gradient(mesh_points), model.gradient(unit, unit=True), rtol=1e-4, atol=1e-5)


def test_outside_the_cube_adds_the_distance_to_it():
    model = small_model()
    inside = torch.tensor([[1.0, 0.5, 0.5], [0.0, 0.0, 0.0]])
    outside = torch.tensor([[1.5, 0.5, 0.5], [-0.3, -0.4, 0.0]])
    with torch.no_grad():
        torch.testing.assert_close(model(outside, unit=True), model(inside, unit=True) + torch.tensor([0.5, 0.5]))
    assert torch.isfinite(model.gradient(torch.cat([inside, outside]), unit=True)).all()


def trained_task(mesh_path, run_path, steps=3, config=None):
    """An SDF task trained for ``steps`` by the shared loop into ``run_path``."""
    config = build_config("sdf", config or SMALL_CONFIG, {"data": str(mesh_path), "steps": steps})
    torch.manual_seed(0)
    task = build_sdf_task(config, torch.device("cpu"), "float32", small_outputs())
    train(task, RunFolder.create(run_path).start(), LoopSettings.from_training(config["training"]), progress=False)
    return task


def test_checkpoint_round_trip_loads_the_averaged_weights(tmp_path, sphere_file):
    task = trained_task(sphere_file, tmp_path / "run")
    x = torch.rand(50, 3) * 4 - 1  # mesh units: around the sphere at (1, 2, 3)
    for where in (tmp_path / "run", tmp_path / "run" / "checkpoint"):  # a run folder or its checkpoint
        loaded = NeuralSDF.from_checkpoint(where)
        assert not loaded.training
        with torch.no_grad(), task.optimizer.averaged_weights():
            torch.testing.assert_close(loaded(x), task.model(x))
        with torch.no_grad():
            assert (loaded(x) - task.model(x)).abs().max() > 1e-4  # the raw weights differ: EMA was applied
        assert loaded.normalization == task.model.normalization
        torch.testing.assert_close(loaded.aabb, task.model.aabb)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        NeuralSDF.from_checkpoint(tmp_path / "missing")
    save_checkpoint(tmp_path / "image_run" / "checkpoint", {}, {"primitive": "image", "config": {}})
    with pytest.raises(CheckpointError, match="not of 'sdf'"):
        NeuralSDF.from_checkpoint(tmp_path / "image_run")
    save_checkpoint(tmp_path / "bare" / "checkpoint", {}, {"primitive": "sdf", "config": SMALL_CONFIG, "task": {}})
    with pytest.raises(CheckpointError, match="normalisation"):
        NeuralSDF.from_checkpoint(tmp_path / "bare")


def test_instant_ngp_config_loads_as_it_is(tmp_path):
    path = tmp_path / "base.json"
    path.write_text(INSTANT_NGP_BASE_JSON)
    config = build_config("sdf", path)
    assert config["optimizer"]["nested"]["nested"]["learning_rate"] == 1e-4
    assert config["training"] == default_config("sdf")["training"]  # no training section: the defaults
    model = NeuralSDF(config["encoding"], config["network"])
    layout = model.field.encoding.layout
    # instant-ngp derives per_level_scale from a finest resolution of 2048 for SDFs
    assert layout.resolutions[0] == 16 and layout.resolutions[-1] == 2048 and layout.n_levels == 16
    assert model.field.encoding.n_output_dims == 32


def test_repository_config_is_instant_ngps_plus_training(tmp_path):
    path = tmp_path / "instant_ngp_base.json"
    path.write_text(INSTANT_NGP_BASE_JSON)
    defaults = load_config(REPO / "configs" / "sdf" / "base.json")
    assert {k: v for k, v in defaults.items() if k != "training"} == load_config(path)


def test_partial_sections_merge_over_the_defaults():
    config = build_config("sdf", {"encoding": {"log2_hashmap_size": 16}, "training": {"batch_size": 1024}})
    assert config["encoding"]["otype"] == "HashGrid" and config["encoding"]["log2_hashmap_size"] == 16
    assert config["training"]["batch_size"] == 1024 and config["training"]["pool_size"] == 2**18


@pytest.mark.parametrize(
    "config, message",
    [
        ({"encodings": {}}, "unknown key"),
        ({"training": {"batch": 3}}, "unknown key"),
        ({"training": {"batch_size": 0}}, "out of range"),
        ({"training": {"pool_size": "big"}}, "must be an integer"),
        ({"training": {"surface_offset_scale": -1}}, "out of range"),
    ],
)
def test_bad_configs_fail_before_the_mesh_is_read(tmp_path, config, message):
    with pytest.raises(ConfigError, match=message):
        full = build_config("sdf", config, {"data": str(tmp_path / "not_read.obj")})
        build_sdf_task(full, torch.device("cpu"), "float32")  # the mesh does not exist: checked after the config
