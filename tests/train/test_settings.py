"""One settings shape: defaults in base.json, one deep-merge rule with instant-ngp's "parent", checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ngp.config import ConfigError, load_config, merge_configs
from ngp.train.settings import PRIMITIVES, LoopSettings, build_config, check_resume_overrides, default_config

SECTIONS = {"loss", "optimizer", "encoding", "network", "training"}


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_every_primitive_has_the_same_sections_and_loop_keys(primitive):
    config = default_config(primitive)
    assert SECTIONS <= set(config)
    for key in ("data", "seconds", "steps", "seed", "checkpoint_every", "eval_at", "max_skipped_steps"):
        assert key in config["training"], key
    LoopSettings.from_training(build_config(primitive)["training"])


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_a_partial_encoding_merges_for_every_primitive(primitive):
    # the issue's example: this worked for images and raised "no 'otype'" for SDF and NeRF
    config = build_config(primitive, {"encoding": {"log2_hashmap_size": 16}})
    assert config["encoding"]["log2_hashmap_size"] == 16
    assert config["encoding"]["otype"] == default_config(primitive)["encoding"]["otype"]
    assert config["encoding"]["n_features_per_level"] == default_config(primitive)["encoding"]["n_features_per_level"]


def test_merge_is_deep_and_a_new_otype_replaces():
    base = {"a": {"otype": "HashGrid", "n_levels": 16, "nested": {"x": 1, "y": 2}}, "b": [1, 2]}
    assert merge_configs(base, {"a": {"nested": {"y": 3}}, "b": [3]}) == {
        "a": {"otype": "HashGrid", "n_levels": 16, "nested": {"x": 1, "y": 3}}, "b": [3]}
    assert merge_configs(base, {"a": {"otype": "Frequency", "n_frequencies": 4}})["a"] == {
        "otype": "Frequency", "n_frequencies": 4}
    assert merge_configs(base, {"a": {"otype": "hashgrid", "n_levels": 8}})["a"]["nested"] == {"x": 1, "y": 2}
    assert base["a"]["n_levels"] == 16  # inputs untouched


def test_parent_files_are_loaded_relative_to_the_child(tmp_path):
    (tmp_path / "base.json").write_text('{"encoding": {"otype": "HashGrid", "n_levels": 16}, "loss": {"otype": "L2"}}')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "small.json").write_text('// a comment\n{"parent": "../base.json", "encoding": {"n_levels": 4}}')
    (tmp_path / "sub" / "smaller.json").write_text('{"parent": "small.json", "loss": {"otype": "L1"}}')
    assert load_config(tmp_path / "sub" / "smaller.json") == {
        "encoding": {"otype": "HashGrid", "n_levels": 4}, "loss": {"otype": "L1"}}
    (tmp_path / "loop.json").write_text('{"parent": "loop.json"}')
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "loop.json")
    (tmp_path / "orphan.json").write_text('{"parent": "gone.json"}')
    with pytest.raises(FileNotFoundError, match="parent 'gone.json' not found"):
        load_config(tmp_path / "orphan.json")


def test_unknown_keys_are_named_at_the_top_and_in_training(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*'encodng'"):
        build_config("sdf", {"encodng": {}})
    with pytest.raises(ConfigError, match="unknown key.*'batch_sise'"):
        build_config("image", {"training": {"batch_sise": 4}})
    with pytest.raises(ConfigError, match="unknown key.*'batch_sise'"):
        build_config("image", training={"batch_sise": 4})
    with pytest.raises(ConfigError, match="seconds must be a positive number"):
        build_config("nerf", training={"seconds": -1})


def test_cuda_overrides_apply_on_cuda_only():
    assert build_config("image")["training"]["batch_size"] == 2**15
    assert build_config("image", device="cuda")["training"]["batch_size"] == 2**18
    assert "cuda" not in build_config("image")["training"]


def test_a_resumed_run_keeps_its_settings_but_not_its_budget():
    saved = build_config("image")["training"]
    check_resume_overrides(saved, {"seconds": 5, "steps": 3, "eval_at": [1.0], "seed": saved["seed"]})
    with pytest.raises(ConfigError, match="cannot resume with seed 7: the run was trained with 0"):
        check_resume_overrides(saved, {"seed": 7})
    with pytest.raises(ConfigError, match="batch-size"):
        check_resume_overrides(saved, {"batch_size": 1024})


def test_repository_configs_are_the_packaged_ones():
    root = Path(__file__).resolve().parents[2] / "configs"
    for primitive in PRIMITIVES:
        assert json.dumps(load_config(root / primitive / "base.json")) == json.dumps(default_config(primitive))
