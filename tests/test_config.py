"""Config loading and validation: tiny-cuda-nn keys accepted, anything else named in an error."""

import json

import pytest
import torch

import ngp
from ngp.config import ConfigError, load_config

INSTANT_NGP_IMAGE_CONFIG = """{
	"loss": {
		"otype": "L2"
	},
	"optimizer": {
		// "otype": "Ema",
		// "decay": 0.95,
		// "nested": {
			"otype": "ExponentialDecay",
			"decay_start": 20000,
			"decay_interval": 10000,
			"decay_base": 0.33,
			"nested": {
				"otype": "Adam",
				"learning_rate": 1e-2,
				"beta1": 0.9,
				"beta2": 0.99,
				"epsilon": 1e-15,
				"l2_reg": 1e-6
			}
		// }
	},
	"encoding": {
		"otype": "HashGrid",
		"n_levels": 16,
		"n_features_per_level": 2,
		"log2_hashmap_size": 15,
		"base_resolution": 16
	},
	"network": {
		"otype": "FullyFusedMLP",
		"activation": "ReLU",
		"output_activation": "None",
		"n_neurons": 64,
		"n_hidden_layers": 2
	}
}
"""


def test_instant_ngp_config_with_comments_loads_and_builds(tmp_path):
    path = tmp_path / "base.json"
    path.write_text(INSTANT_NGP_IMAGE_CONFIG)
    config = load_config(path)
    assert config["optimizer"]["otype"] == "ExponentialDecay"  # the commented-out Ema is gone
    model = ngp.NetworkWithInputEncoding(2, 3, config["encoding"], config["network"])
    assert model.encoding.n_output_dims == 32
    assert model.encoding.layout.n_levels == 16
    optimizer = ngp.build_optimizer(config["optimizer"], model)
    assert optimizer.settings.decay.decay_start == 20000
    assert optimizer.settings.adam.epsilon == 1e-15
    assert ngp.build_loss(config["loss"])(torch.ones(2), torch.zeros(2)).item() == 1.0


def test_every_hashgrid_key_is_honoured():
    enc = ngp.Encoding(3, {
        "otype": "HashGrid", "n_levels": 5, "n_features_per_level": 4, "log2_hashmap_size": 12,
        "base_resolution": 8, "per_level_scale": 1.5, "interpolation": "Smoothstep",
    })
    assert enc.layout.resolutions == (8, 12, 18, 27, 40)
    assert enc.layout.n_features == 4 and enc.n_output_dims == 20
    assert enc.interpolation == "Smoothstep"
    assert all(rows <= 2**12 for rows in (b - a for a, b in zip(enc.layout.offsets, enc.layout.offsets[1:])))


def test_finest_resolution_derives_per_level_scale():
    enc = ngp.Encoding(3, {"otype": "HashGrid", "n_levels": 16, "base_resolution": 16, "finest_resolution": 2048})
    assert enc.layout.resolutions[0] == 16 and enc.layout.resolutions[-1] == 2048


def test_grid_otype_with_type_key_and_dense_grid():
    dense = ngp.Encoding(2, {"otype": "Grid", "type": "Dense", "n_levels": 2, "log2_hashmap_size": 4})
    assert not any(dense.layout.hashed)
    assert ngp.Encoding(2, {"otype": "DenseGrid", "n_levels": 2}).layout.hashed == (False, False)


@pytest.mark.parametrize(
    "config, words",
    [
        ({"otype": "HashGrid", "n_level": 16}, ["n_level"]),
        ({"otype": "HashGrid", "interpolation": "Cubic"}, ["interpolation", "Cubic"]),
        ({"otype": "HashGrid", "n_features_per_level": 3}, ["n_features_per_level"]),
        ({"otype": "NoSuchEncoding"}, ["NoSuchEncoding"]),
        ({"n_levels": 4}, ["otype"]),
        ({"otype": "HashGrid", "type": "Hash"}, ["type"]),
        ({"otype": "SphericalHarmonics", "degree": 9}, ["degree"]),
        ({"otype": "Frequency", "n_frequencies": "many"}, ["n_frequencies"]),
        ({"otype": "Composite", "nested": []}, ["nested"]),
    ],
)
def test_bad_encoding_configs_name_the_problem(config, words):
    with pytest.raises(ConfigError) as error:
        ngp.Encoding(3, config)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    "config, word",
    [
        ({"otype": "FullyFusedMLP", "n_neurons": 64, "dropout": 0.1}, "dropout"),
        ({"otype": "FullyFusedMLP", "activation": "Swish"}, "Swish"),
        ({"otype": "ResNet"}, "ResNet"),
    ],
)
def test_bad_network_configs_name_the_problem(config, word):
    with pytest.raises(ConfigError, match=word):
        ngp.Network(4, 1, config)


@pytest.mark.parametrize(
    "config, word",
    [
        ({"otype": "Adam", "learning_rate": 1e-2, "momentum": 0.9}, "momentum"),
        ({"otype": "Shampoo"}, "Shampoo"),
        ({"otype": "Ema", "decay": 0.9}, "nested"),
        ({"otype": "Adam", "relative_decay": 0.1}, "relative_decay"),
    ],
)
def test_bad_optimizer_configs_name_the_problem(config, word):
    with pytest.raises(ConfigError, match=word):
        ngp.build_optimizer(config, ngp.Network(2, 1, {"otype": "FullyFusedMLP"}))


def test_bad_loss_config():
    with pytest.raises(ConfigError, match="Cosine"):
        ngp.build_loss({"otype": "Cosine"})


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ \"otype\": ")
    with pytest.raises(ConfigError, match="bad.json"):
        load_config(bad)
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="object"):
        load_config(listed)
