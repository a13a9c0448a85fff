"""NeuralSDF: units, input gradients through the encoding vs finite differences, checkpoints, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ngp.config import ConfigError, load_config
from ngp.io.meshes import MeshNormalization
from ngp.sdf.model import NeuralSDF
from ngp.sdf.trainer import DEFAULT_CONFIG, sdf_config

from .conftest import SMALL_CONFIG

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


def test_checkpoint_round_trip(tmp_path):
    model = small_model(MeshNormalization((0.1, 0.2, 0.3), 2.5))
    model.save(tmp_path / "checkpoint")
    loaded = NeuralSDF.from_checkpoint(tmp_path)  # the run folder works too
    x = torch.rand(50, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert loaded.normalization == model.normalization
    torch.testing.assert_close(loaded.aabb, model.aabb)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        NeuralSDF.from_checkpoint(tmp_path / "missing")
    model = small_model()
    model.save(tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    (tmp_path / "ck" / "config.json").write_text(json.dumps({**config, "primitive": "image"}))
    with pytest.raises(ConfigError, match="not an SDF checkpoint"):
        NeuralSDF.from_checkpoint(tmp_path / "ck")


def test_instant_ngp_config_loads_as_it_is(tmp_path):
    path = tmp_path / "base.json"
    path.write_text(INSTANT_NGP_BASE_JSON)
    config = sdf_config(path)
    assert config["optimizer"]["nested"]["nested"]["learning_rate"] == 1e-4
    model = NeuralSDF(config["encoding"], config["network"])
    layout = model.field.encoding.layout
    # instant-ngp derives per_level_scale from a finest resolution of 2048 for SDFs
    assert layout.resolutions[0] == 16 and layout.resolutions[-1] == 2048 and layout.n_levels == 16
    assert model.field.encoding.n_output_dims == 32


def test_repository_config_is_the_default():
    assert load_config(REPO / "configs" / "sdf" / "base.json") == DEFAULT_CONFIG
    assert sdf_config(REPO / "configs" / "sdf" / "base.json") == sdf_config(None)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"encodings": {}}, "unknown key"),
        ({"training": {"batch": 3}}, "unknown key"),
        ({"training": {"batch_size": 0}}, "out of range"),
        ({"training": {"pool_size": "big"}}, "must be an integer"),
    ],
)
def test_bad_configs(config, message):
    with pytest.raises(ConfigError, match=message):
        sdf_config(config)
