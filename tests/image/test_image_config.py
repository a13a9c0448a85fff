"""The image task's config: defaults, merging, the shipped base.json, and unknown keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ngp.config import ConfigError
from ngp.image.model import build_image_model, image_config, resolve_for_image

BASE_JSON = Path(__file__).resolve().parents[2] / "configs" / "image" / "base.json"


def test_the_repository_configs_folder_is_the_packaged_defaults():
    # configs/ at the root is what the package ships (ngp/configs): one file per primitive, no copy
    assert BASE_JSON.resolve() == Path(__import__("ngp").__file__).parent.joinpath("configs/image/base.json")
    assert image_config(BASE_JSON) == image_config(None)


def test_partial_config_is_merged_over_defaults():
    given = {"encoding": {"log2_hashmap_size": 12}, "optimizer": {"nested": {"nested": {"learning_rate": 0.05}}}}
    cfg = image_config(given)
    assert cfg["encoding"]["log2_hashmap_size"] == 12 and cfg["encoding"]["n_levels"] == "auto"
    adam = cfg["optimizer"]["nested"]["nested"]
    assert adam["learning_rate"] == 0.05 and adam["epsilon"] == 1e-15
    assert cfg["optimizer"]["decay"] == 0.95 and cfg["optimizer"]["nested"]["decay_start"] == 20000
    # instant-ngp's own base.json (ExponentialDecay at the top) replaces the default optimizer whole.
    optimizer = {"otype": "ExponentialDecay", "decay_start": 20000, "nested": {"otype": "Adam"}}
    assert image_config({"optimizer": optimizer})["optimizer"] == optimizer


def test_component_with_another_otype_replaces_the_default():
    cfg = image_config(
        {"optimizer": {"otype": "Adam", "learning_rate": 0.02}, "encoding": {"otype": "Frequency", "n_frequencies": 4}}
    )
    assert cfg["optimizer"] == {"otype": "Adam", "learning_rate": 0.02}
    model = build_image_model(cfg, 3)
    assert model(torch.rand(5, 2)).shape == (5, 3)


def test_unknown_top_level_key_is_named():
    with pytest.raises(ConfigError, match="unknown key.*'learning_rat'"):
        image_config({"learning_rat": 1})


def test_unknown_component_key_is_named():
    cfg = resolve_for_image(image_config({"encoding": {"n_levelz": 4}}), 64, 64)
    with pytest.raises(ConfigError, match="n_levelz"):
        build_image_model(cfg, 3)


def test_component_must_be_an_object():
    with pytest.raises(ConfigError, match="'loss' must be a JSON object"):
        image_config({"loss": "L2"})


@pytest.mark.parametrize(
    "size, levels",
    [((1024, 1024), 8), ((512, 300), 7), ((64, 64), 4), ((8, 4), 1), ((56000, 20000), 14), ((10**7, 1), 16)],
)
def test_auto_levels_reach_twice_the_longer_side(size, levels):
    cfg = resolve_for_image(image_config(), *size)
    assert cfg["encoding"]["n_levels"] == levels
    finest = 16 * 2.0 ** (levels - 1)
    assert finest >= min(2 * max(size), 16 * 2**15)
    assert levels == 1 or finest / 2 < 2 * max(size)


def test_auto_must_be_resolved_and_explicit_levels_are_kept():
    with pytest.raises(ConfigError, match="auto"):
        build_image_model(image_config(), 3)
    cfg = resolve_for_image(image_config({"encoding": {"n_levels": 12, "per_level_scale": 1.5}}), 1024, 1024)
    assert cfg["encoding"]["n_levels"] == 12
    finer = resolve_for_image(image_config({"encoding": {"per_level_scale": 1.5}}), 1024, 1024)
    assert finer["encoding"]["n_levels"] == 13
    cfg = image_config({"encoding": {"n_levels": 8, "finest_resolution": 2048}})
    assert build_image_model(cfg, 3).encoding.layout.resolutions[-1] == 2048
